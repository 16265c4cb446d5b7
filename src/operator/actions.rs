//! What the operator does about zombies: the actions a batch decides ([`Action`]: an Event on
//! the pod, or a rollout of its workload), whether a pod's workload may be restarted
//! ([`restart_decision`]), and the in-memory [`ActionLog`] that rate-limits both.
use super::index::{Owner, PodInfo, PodRef, PodZombies, WorkloadRef};
use crate::crd::{Enforcement, Mode, ReaperPolicy, ZombieAction};
use crate::keys;
use jiff::{SignedDuration, Timestamp};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Cooldown used when a policy's `zombies.cooldown` cannot be parsed (the CRD schema prevents it).
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(3600);
/// What the operator did recently, kept in memory to rate-limit actions. Restarts also leave
/// `kubectl.kubernetes.io/restartedAt` on the workload, which survives a new leader.
#[derive(Clone, Debug, Default)]
pub struct ActionLog {
    /// Last `ZombiesDetected` Event per pod UID.
    pub events: HashMap<String, Timestamp>,
    /// Last restart per workload.
    pub restarts: HashMap<WorkloadRef, Timestamp>,
}

impl ActionLog {
    /// Drops entries of pods that no longer exist and restarts older than `keep` (bounds memory).
    pub fn prune(&mut self, live_pods: &BTreeSet<&str>, now: Timestamp, keep: Duration) {
        self.events
            .retain(|uid, _| live_pods.contains(uid.as_str()));
        self.restarts.retain(|_, at| elapsed(*at, now) < keep);
    }
}

/// Something to do against the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Record a `ZombiesDetected` Warning on the pod.
    Event {
        policy: String,
        pod: PodRef,
        note: String,
    },
    /// Roll out the workload (`kubectl.kubernetes.io/restartedAt` on its pod template), then
    /// record an Event on it.
    Restart {
        policy: String,
        workload: WorkloadRef,
        pod: PodRef,
        zombies: u32,
        cooldown: Duration,
    },
}

impl Action {
    pub fn policy(&self) -> &str {
        match self {
            Action::Event { policy, .. } | Action::Restart { policy, .. } => policy,
        }
    }
}

/// Why a pod at the threshold is not restarted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoRestart {
    /// `zombies.action` is `Event`.
    EventOnly,
    /// The webhook already protects it: restarting would not help.
    Protected,
    /// The webhook would not protect new pods either (mode `off`, or `Audit` enforcement).
    NotEnforced,
    /// No controller; deleting it would lose it.
    BarePod,
    /// Jobs, ReplicaSets without a Deployment, unknown controllers: never restarted.
    NotRestartable { kind: String, name: String },
    /// The installation does not allow restarts (`--restart-workloads=false`).
    Disabled,
    /// Restarted less than `cooldown` ago; possible again at `until`.
    CoolingDown { until: Timestamp },
}

/// Whether a pod at or above its policy's threshold gets its workload restarted.
pub fn restart_decision(
    pod: &PodInfo,
    policy: &ReaperPolicy,
    log: &ActionLog,
    now: Timestamp,
) -> Result<WorkloadRef, NoRestart> {
    let spec = &policy.spec;
    if spec.zombies.action != ZombieAction::Restart {
        return Err(NoRestart::EventOnly);
    }
    if pod.protected() {
        return Err(NoRestart::Protected);
    }
    // An unparseable annotation falls back to the policy's mode, as the webhook does.
    let mode = crate::scope::effective_mode(pod.mode.as_deref(), spec.mode)
        .unwrap_or_else(|fallback| fallback);
    if mode == Mode::Off || spec.enforcement == Enforcement::Audit {
        return Err(NoRestart::NotEnforced);
    }
    let workload = match &pod.owner {
        Owner::Workload(w) => w.clone(),
        Owner::Bare => return Err(NoRestart::BarePod),
        Owner::Other { kind, name } => {
            return Err(NoRestart::NotRestartable {
                kind: kind.clone(),
                name: name.clone(),
            });
        }
    };
    let cooldown = cooldown_of(policy);
    // The pod's inherited restartedAt covers restarts by an earlier leader or by hand.
    let last = [log.restarts.get(&workload).copied(), pod.restarted_at]
        .into_iter()
        .flatten()
        .max();
    if let Some(last) = last
        && elapsed(last, now) < cooldown
    {
        return Err(NoRestart::CoolingDown {
            until: add(last, cooldown),
        });
    }
    Ok(workload)
}

/// Whether a workload whose pod template says `restartedAt` may be restarted again now
/// (checked against the live object right before patching it).
pub fn cooldown_elapsed(restarted_at: Option<&str>, now: Timestamp, cooldown: Duration) -> bool {
    match restarted_at.and_then(|s| s.parse::<Timestamp>().ok()) {
        Some(at) => elapsed(at, now) >= cooldown,
        None => true,
    }
}

/// A policy's `zombies.cooldown` (`30s`, `15m`, `1h`, ...).
pub fn cooldown_of(policy: &ReaperPolicy) -> Duration {
    humantime::parse_duration(policy.spec.zombies.cooldown.trim()).unwrap_or(DEFAULT_COOLDOWN)
}

/// Time from `since` to `now` (zero when `since` is in the future).
pub(super) fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    now.duration_since(since)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

pub(super) fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

pub(super) fn event_note(
    pod: &PodInfo,
    zombies: Option<&PodZombies>,
    total: u32,
    threshold: u32,
    policy: &str,
) -> String {
    let worst = zombies.and_then(|z| z.containers.iter().max_by_key(|c| c.count));
    let whom = match worst {
        Some(c) if !c.parent_comm.is_empty() => {
            format!(
                "; worst: container {} ({} held by {})",
                c.container, c.count, c.parent_comm
            )
        }
        Some(c) => format!("; worst: container {} ({})", c.container, c.count),
        None => String::new(),
    };
    let protection = match (pod.injected.as_deref(), &pod.init) {
        (v, _) if super::index::is_protected(v) => "protected by Reaper".to_string(),
        (_, Some(init)) => format!("protected by its init ({init})"),
        (Some(other), None) => format!("not protected ({} {other})", keys::ANNOTATION_INJECTED),
        (None, None) => "not protected (created before Reaper or not mutated)".to_string(),
    };
    // The API server caps notes at 1 kB. The note carries the pod's own annotation and process
    // names: cut on a character boundary, never inside one.
    truncated(
        format!(
            "{total} zombie processes (threshold {threshold}, policy {policy}){whom}; pod {protection}"
        ),
        NOTE_MAX,
    )
}

/// Longest Event note the API server accepts.
pub const NOTE_MAX: usize = 1000;

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::index::Owner;

    /// A pod's own `reaper.dev/injected` annotation ends up in the note: multi-byte characters
    /// across byte 1000 used to panic the operator (`String::truncate` inside a character).
    #[test]
    fn notes_are_cut_on_character_boundaries() {
        let pod = PodInfo {
            init: None,
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: "u".into(),
            labels: Default::default(),
            injected: Some("é".repeat(700)),
            mode: None,
            mirror: false,
            restarted_at: None,
            owner: Owner::Bare,
            scope: Default::default(),
        };
        let note = event_note(&pod, None, 9, 3, "p");
        assert!(note.len() <= NOTE_MAX, "{}", note.len());
        assert!(note.ends_with('é'));
        for max in 0..12 {
            let t = truncated("aé€😀b".to_string(), max);
            assert!(t.len() <= max && "aé€😀b".starts_with(&t), "{max}: {t:?}");
        }
    }
}
