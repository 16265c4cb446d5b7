//! The operator's decision, as a pure function of its in-memory indexes ([`super::index`]): for
//! every ReaperPolicy the status it should have, and the actions to take ([`super::actions`]).
//! Computed once per batch for all policies; [`super::controller`] writes the statuses that
//! changed and carries out the actions.
//!
//! Which policy governs a pod is the webhook's rule ([`PolicySet::matching`]: highest priority,
//! ties by name), so the operator counts exactly the pods the webhook mutates.
use super::actions::{
    Action, ActionLog, NoRestart, add, cooldown_of, elapsed, event_note, restart_decision,
};
use super::index::{PodInfo, PodRef, Snapshot, WorkloadRef};
use crate::crd::selector::matches_valid;
use crate::crd::{Offender, ReaperPolicy, ReaperPolicyStatus};
use crate::scope::{NamespaceScope, Scope};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The one condition type a ReaperPolicy carries.
pub const CONDITION_READY: &str = "Ready";
/// `Ready=True`: the status reflects the cluster.
pub const REASON_RECONCILED: &str = "Reconciled";
/// `Ready=False`: a selector cannot be evaluated; the policy matches nothing.
pub const REASON_INVALID_SELECTOR: &str = "InvalidSelector";
/// `Ready=False`: another policy of equal priority matches some of the same pods.
pub const REASON_CONFLICTING: &str = "Conflicting";
/// How many pods a `Conflicting` message names.
const CONFLICT_EXAMPLES: usize = 3;

/// Operator-wide settings (flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which pods the installation governs (`--excluded-namespaces` plus the operator's own
    /// namespace, `--selection`, `--pod-opt-in`, the selectors): the webhook's rule.
    pub scope: Scope,
    /// Length of `status.topOffenders`.
    pub top_offenders: usize,
    /// Minimum time between two `ZombiesDetected` Events on one pod.
    pub event_interval: Duration,
    /// The Restart action is enabled at install (`--restart-workloads`); otherwise policies
    /// asking for it only get Events, and their status says why.
    pub restart_workloads: bool,
    /// Which policy report API to write (`--policy-reports`).
    pub policy_reports: super::reports::PolicyReports,
    /// How often the served report APIs are discovered again and the written reports re-listed.
    pub report_resync: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            scope: Scope::default(),
            top_offenders: 5,
            event_interval: Duration::from_secs(15 * 60),
            restart_workloads: true,
            policy_reports: super::reports::PolicyReports::Off,
            report_resync: Duration::from_secs(5 * 60),
        }
    }
}

impl Settings {
    /// The namespaces that take part, whole or through pods that opt in, with their labels.
    pub fn governed_namespaces<'a>(
        &self,
        namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
    ) -> BTreeMap<&'a str, (&'a BTreeMap<String, String>, NamespaceScope)> {
        namespaces
            .iter()
            .map(|(name, labels)| (name.as_str(), (labels, self.scope.namespace(name, labels))))
            .filter(|(_, (_, how))| !matches!(how, NamespaceScope::None(_)))
            .collect()
    }
}

/// Everything [`compute`] decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Desired status per policy name (`lastUpdated` unset: the writer stamps it).
    pub statuses: BTreeMap<String, ReaperPolicyStatus>,
    pub actions: Vec<Action>,
    /// Earliest time a rate-limited Event or a cooling-down restart becomes due.
    pub next_due: Option<Timestamp>,
    /// Restarts not done, per pod (for logs).
    pub not_restarted: Vec<(PodRef, NoRestart)>,
}

#[derive(Default)]
struct Tally<'a> {
    matched_pods: u32,
    protected: u32,
    zombies: u32,
    offenders: Vec<Offender>,
    /// Other policy name → (shared pods, examples).
    conflicts: BTreeMap<String, (u32, Vec<String>)>,
    /// Namespaces of the matched pods.
    namespaces: BTreeSet<&'a str>,
}

/// Desired status of every policy and the actions due now. `log` is read, not updated: the caller
/// records what it actually did.
pub fn compute(
    snapshot: Snapshot<'_>,
    settings: &Settings,
    log: &ActionLog,
    now: Timestamp,
) -> Outcome {
    let governed = settings.governed_namespaces(snapshot.namespaces);

    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut out = Outcome::default();
    let mut restarting: BTreeSet<WorkloadRef> = BTreeSet::new();
    let due = |out: &mut Outcome, at: Timestamp| {
        out.next_due = Some(out.next_due.map_or(at, |d| d.min(at)));
    };

    let mut pods: Vec<&PodInfo> = snapshot.pods.iter().collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for pod in pods {
        let Some((ns_labels, _)) = governed.get(pod.namespace.as_str()) else {
            continue;
        };
        if pod.governed(&settings.scope, ns_labels).is_err() {
            continue;
        }
        let matching: Vec<&ReaperPolicy> = snapshot
            .policies
            .matching(ns_labels, &pod.labels)
            .map(|p| p.as_ref())
            .collect();
        let Some(winner) = matching.first().copied() else {
            continue;
        };
        let winner_name = name_of(winner);
        let tied: Vec<&str> = matching
            .iter()
            .take_while(|p| p.spec.priority == winner.spec.priority)
            .map(|p| name_of(p))
            .collect();
        if tied.len() > 1 {
            for a in &tied {
                let tally = tallies.entry(a).or_default();
                for b in tied.iter().filter(|b| *b != a) {
                    let (count, examples) = tally.conflicts.entry(b.to_string()).or_default();
                    *count += 1;
                    if examples.len() < CONFLICT_EXAMPLES {
                        examples.push(format!("{}/{}", pod.namespace, pod.name));
                    }
                }
            }
        }

        let zombies = snapshot.zombies.get(&pod.uid);
        let total = zombies.map_or(0, |z| z.total);
        let tally = tallies.entry(winner_name).or_default();
        tally.matched_pods += 1;
        tally.namespaces.insert(&pod.namespace);
        if pod.protected() {
            tally.protected += 1;
        }
        tally.zombies = tally.zombies.saturating_add(total);
        for c in zombies.iter().flat_map(|z| &z.containers) {
            tally.offenders.push(Offender {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                container: c.container.clone(),
                count: c.count,
                parent_comm: c.parent_comm.clone(),
                age_seconds: c.age_seconds,
            });
        }

        let threshold = winner.spec.zombies.threshold.max(1);
        if total < threshold {
            continue;
        }
        match log.events.get(&pod.uid) {
            Some(last) if elapsed(*last, now) < settings.event_interval => {
                due(&mut out, add(*last, settings.event_interval));
            }
            _ => out.actions.push(Action::Event {
                policy: winner_name.to_string(),
                pod: pod.reference(),
                note: event_note(pod, zombies, total, threshold, winner_name),
            }),
        }
        let decision = if !settings.restart_workloads
            && winner.spec.zombies.action == crate::crd::ZombieAction::Restart
        {
            Err(NoRestart::Disabled)
        } else {
            restart_decision(pod, winner, log, now)
        };
        match decision {
            Ok(workload) => {
                if restarting.insert(workload.clone()) {
                    out.actions.push(Action::Restart {
                        policy: winner_name.to_string(),
                        workload,
                        pod: pod.reference(),
                        zombies: total,
                        cooldown: cooldown_of(winner),
                    });
                }
            }
            Err(NoRestart::EventOnly) => {}
            Err(why) => {
                if let NoRestart::CoolingDown { until } = &why {
                    due(&mut out, *until);
                }
                out.not_restarted.push((pod.reference(), why));
            }
        }
    }

    for entry in snapshot.policies.entries() {
        let policy = entry.policy.as_ref();
        let name = name_of(policy);
        let tally = tallies.remove(name).unwrap_or_default();
        let matched_namespaces = match entry.invalid {
            Some(_) => 0,
            // Governed namespaces the policy selects, whole or (pod opt-in) through a pod.
            None => governed
                .iter()
                .filter(|(ns, (labels, how))| {
                    let whole = *how == NamespaceScope::All
                        && policy
                            .spec
                            .namespace_selector
                            .as_ref()
                            .is_none_or(|s| matches_valid(s, labels));
                    whole || tally.namespaces.contains(*ns)
                })
                .count() as u32,
        };
        let (status, reason, message) = if let Some(err) = &entry.invalid {
            (
                "False",
                REASON_INVALID_SELECTOR,
                format!("{err}; this policy matches no pod until the selector is fixed"),
            )
        } else if !tally.conflicts.is_empty() {
            (
                "False",
                REASON_CONFLICTING,
                conflict_message(name, policy.spec.priority, &tally.conflicts),
            )
        } else {
            let mut message = format!(
                "governs {} in {}: {} protected, {} unprotected",
                plural(u64::from(tally.matched_pods), "pod"),
                plural(u64::from(matched_namespaces), "governed namespace"),
                tally.protected,
                tally.matched_pods - tally.protected
            );
            if !settings.restart_workloads
                && policy.spec.zombies.action == crate::crd::ZombieAction::Restart
            {
                message.push_str(
                    "; zombies.action Restart is disabled in this installation (Helm value \
                     operator.restart.enabled, flag --restart-workloads): Events only",
                );
            }
            ("True", REASON_RECONCILED, message)
        };
        let generation = policy.metadata.generation;
        let previous = policy
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        let ready = condition(
            previous,
            CONDITION_READY,
            status,
            reason,
            message,
            generation,
            now,
        );
        let mut offenders = tally.offenders;
        offenders.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(b.age_seconds.cmp(&a.age_seconds))
                .then_with(|| {
                    (&a.namespace, &a.pod, &a.container).cmp(&(&b.namespace, &b.pod, &b.container))
                })
        });
        offenders.truncate(settings.top_offenders);
        out.statuses.insert(
            name.to_string(),
            ReaperPolicyStatus {
                observed_generation: generation,
                conditions: vec![ready],
                matched_namespaces,
                matched_pods: tally.matched_pods,
                protected_pods: tally.protected,
                unprotected_pods: tally.matched_pods - tally.protected,
                zombies: tally.zombies,
                top_offenders: offenders,
                last_updated: None,
            },
        );
    }
    out
}

fn name_of(p: &ReaperPolicy) -> &str {
    p.metadata.name.as_deref().unwrap_or_default()
}

fn conflict_message(
    name: &str,
    priority: i32,
    conflicts: &BTreeMap<String, (u32, Vec<String>)>,
) -> String {
    let parts: Vec<String> = conflicts
        .iter()
        .map(|(other, (count, examples))| {
            let winner = if name < other.as_str() { name } else { other };
            format!(
                "{other} (also priority {priority}) matches {count} of the same pods (e.g. {}); {winner} governs them by name order",
                examples.join(", ")
            )
        })
        .collect();
    format!(
        "{}; give the policies different priorities or disjoint selectors",
        parts.join("; ")
    )
}

/// A condition carrying over `lastTransitionTime` when its status did not change.
fn condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Equal apart from `lastUpdated` (which only records when the rest changed).
pub fn same_status(a: &ReaperPolicyStatus, b: &ReaperPolicyStatus) -> bool {
    let strip = |s: &ReaperPolicyStatus| ReaperPolicyStatus {
        last_updated: None,
        ..s.clone()
    };
    strip(a) == strip(b)
}

/// `1 pod`, `2 pods`.
fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    // The decision as a whole: statuses (here), with the index and actions it uses.
    use super::super::actions::*;
    use super::super::index::*;
    use super::*;
    use crate::crd::{
        ContainerZombies, Enforcement, PodPids, PolicySet, ReaperPolicySpec, ZombieAction,
        ZombieParent, ZombiePolicy, ZombieReportSpec,
    };
    use jiff::SignedDuration;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use std::collections::HashMap;
    use std::sync::Arc;

    fn now() -> Timestamp {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn policy(
        name: &str,
        priority: i32,
        f: impl FnOnce(&mut ReaperPolicySpec),
    ) -> Arc<ReaperPolicy> {
        let mut spec = ReaperPolicySpec {
            priority,
            ..Default::default()
        };
        f(&mut spec);
        let mut p = ReaperPolicy::new(name, spec);
        p.metadata.generation = Some(3);
        Arc::new(p)
    }

    fn app_selector(app: &str) -> Option<LabelSelector> {
        Some(LabelSelector {
            match_labels: Some(labels(&[("app", app)])),
            ..Default::default()
        })
    }

    fn deployment(ns: &str, name: &str) -> Owner {
        Owner::Workload(WorkloadRef {
            kind: WorkloadKind::Deployment,
            namespace: ns.into(),
            name: name.into(),
        })
    }

    fn pod(ns: &str, name: &str, app: &str, injected: Option<&str>, owner: Owner) -> PodInfo {
        PodInfo {
            init: None,
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{ns}-{name}"),
            labels: labels(&[("app", app)]),
            injected: injected.map(String::from),
            mode: None,
            mirror: false,
            restarted_at: None,
            scope: ResourceRef {
                api_version: "apps/v1".into(),
                kind: match &owner {
                    Owner::Workload(w) => w.kind.as_str().to_string(),
                    Owner::Other { kind, .. } => kind.clone(),
                    Owner::Bare => "Pod".into(),
                },
                name: match &owner {
                    Owner::Workload(w) => w.name.clone(),
                    Owner::Other { name, .. } => name.clone(),
                    Owner::Bare => name.into(),
                },
                uid: String::new(),
            },
            owner,
        }
    }

    fn zombies(entries: &[(&PodInfo, &str, u32, &str, u64)]) -> HashMap<String, PodZombies> {
        let report = ZombieReportSpec {
            node_name: "n1".into(),
            containers: entries
                .iter()
                .map(|(p, c, count, comm, age)| ContainerZombies {
                    pod_uid: p.uid.clone(),
                    container_id: "f".repeat(64),
                    namespace: Some(p.namespace.clone()),
                    pod: Some(p.name.clone()),
                    container: Some(c.to_string()),
                    count: *count,
                    oldest_age_seconds: *age,
                    parents: vec![ZombieParent {
                        pid: 42,
                        comm: comm.to_string(),
                        count: *count,
                        oldest_age_seconds: *age,
                    }],
                })
                .collect(),
            ..Default::default()
        };
        index_zombies([&report])
    }

    fn namespaces() -> BTreeMap<String, BTreeMap<String, String>> {
        BTreeMap::from([
            (
                "shop".to_string(),
                labels(&[("reaper.dev/inject", "enabled"), ("team", "shop")]),
            ),
            (
                "blog".to_string(),
                labels(&[("reaper.dev/inject", "enabled"), ("team", "blog")]),
            ),
            ("legacy".to_string(), labels(&[("team", "legacy")])),
            (
                "kube-system".to_string(),
                labels(&[("reaper.dev/inject", "enabled")]),
            ),
        ])
    }

    /// A policy for namespaces of team shop and pods nothing has.
    fn shop_only() -> Arc<ReaperPolicy> {
        policy("shop-only", 0, |s| {
            s.namespace_selector = Some(LabelSelector {
                match_labels: Some(labels(&[("team", "shop")])),
                ..Default::default()
            });
            s.pod_selector = app_selector("nothing-has-this");
        })
    }

    struct World {
        policies: PolicySet,
        namespaces: BTreeMap<String, BTreeMap<String, String>>,
        pods: Vec<PodInfo>,
        zombies: HashMap<String, PodZombies>,
    }

    impl World {
        fn compute(&self, log: &ActionLog, at: Timestamp) -> Outcome {
            self.compute_with(&Settings::default(), log, at)
        }

        fn compute_with(&self, settings: &Settings, log: &ActionLog, at: Timestamp) -> Outcome {
            compute(
                Snapshot {
                    policies: &self.policies,
                    namespaces: &self.namespaces,
                    pods: &self.pods,
                    zombies: &self.zombies,
                },
                settings,
                log,
                at,
            )
        }
    }

    /// Pods that opt in count, with their namespace, wherever the namespace is not labelled;
    /// opt-out governs every namespace not excluded; both act on the pods they govern only.
    #[test]
    fn counts_follow_the_selection() {
        let mut joined = pod(
            "legacy",
            "joined",
            "web",
            None,
            deployment("legacy", "joined"),
        );
        joined
            .labels
            .insert("reaper.dev/inject".into(), "enabled".into());
        let plain = pod(
            "legacy",
            "plain",
            "web",
            None,
            deployment("legacy", "plain"),
        );
        let shop = pod("shop", "web-1", "web", Some("share"), Owner::Bare);
        let world = World {
            policies: PolicySet::new([
                policy("all", 0, |s| {
                    s.zombies.action = crate::crd::ZombieAction::Restart
                }),
                shop_only(),
            ]),
            namespaces: namespaces(),
            zombies: zombies(&[
                (&joined, "app", 9, "java", 1),
                (&plain, "app", 9, "java", 1),
            ]),
            pods: vec![joined, plain, shop],
        };
        let restarted = |out: &Outcome| -> Vec<String> {
            out.actions
                .iter()
                .filter_map(|a| match a {
                    Action::Restart { workload, .. } => Some(workload.name.clone()),
                    _ => None,
                })
                .collect()
        };
        // Default: opt-in with pod opt-in.
        let out = world.compute(&ActionLog::default(), now());
        let all = &out.statuses["all"];
        assert_eq!(
            (all.matched_namespaces, all.matched_pods, all.zombies),
            (3, 2, 9),
            "shop and blog whole, legacy through its opted-in pod"
        );
        assert_eq!(restarted(&out), ["joined"]);
        assert!(
            all.conditions[0]
                .message
                .contains("in 3 governed namespaces"),
            "{}",
            all.conditions[0].message
        );
        assert_eq!(out.statuses["shop-only"].matched_namespaces, 1);
        // Without pod opt-in, legacy takes no part.
        let mut settings = Settings::default();
        settings.scope.pod_opt_in = false;
        let out = world.compute_with(&settings, &ActionLog::default(), now());
        let all = &out.statuses["all"];
        assert_eq!((all.matched_namespaces, all.matched_pods), (2, 1));
        assert!(restarted(&out).is_empty());
        // Opt-out: legacy whole; kube-system stays excluded.
        settings.scope.selection = crate::scope::Selection::OptOut;
        let out = world.compute_with(&settings, &ActionLog::default(), now());
        let all = &out.statuses["all"];
        assert_eq!(
            (all.matched_namespaces, all.matched_pods, all.zombies),
            (3, 3, 18)
        );
        let mut both = restarted(&out);
        both.sort();
        assert_eq!(both, ["joined", "plain"]);
    }

    #[test]
    fn counts_offenders_and_namespaces() {
        let web = pod(
            "shop",
            "web-1",
            "web",
            Some("inject:app"),
            deployment("shop", "web"),
        );
        let web2 = pod(
            "shop",
            "web-2",
            "web",
            Some("share"),
            deployment("shop", "web"),
        );
        let api = pod(
            "shop",
            "api-1",
            "api",
            Some("skipped:not-wrappable"),
            Owner::Bare,
        );
        let audit = pod("blog", "blog-1", "blog", Some("audit:share"), Owner::Bare);
        let legacy = pod("legacy", "old-1", "web", None, Owner::Bare);
        let system = pod("kube-system", "dns", "web", None, Owner::Bare);
        let mut opted_out = pod("shop", "manual", "web", None, Owner::Bare);
        opted_out
            .labels
            .insert("reaper.dev/inject".into(), "disabled".into());
        let mut mirror = pod("shop", "static", "web", None, Owner::Bare);
        mirror.mirror = true;
        let zombies = zombies(&[
            (&api, "api", 7, "node", 30),
            (&web, "app", 2, "python3", 100),
            (&audit, "blog", 2, "ruby", 500),
            (&legacy, "old", 50, "java", 1),
        ]);
        let world = World {
            policies: PolicySet::new([policy("all", 0, |_| {}), shop_only()]),
            namespaces: namespaces(),
            pods: vec![web, web2, api, audit, legacy, system, opted_out, mirror],
            zombies,
        };
        let out = world.compute(&ActionLog::default(), now());
        let all = &out.statuses["all"];
        assert_eq!(
            all.matched_namespaces, 2,
            "shop and blog; legacy is not opted in, kube-system excluded"
        );
        assert_eq!(all.matched_pods, 4);
        assert_eq!(all.protected_pods, 2);
        assert_eq!(all.unprotected_pods, 2);
        assert_eq!(
            all.zombies, 11,
            "legacy's 50 are not in an opted-in namespace"
        );
        assert_eq!(all.observed_generation, Some(3));
        let offenders: Vec<(&str, &str, u32, &str, u64)> = all
            .top_offenders
            .iter()
            .map(|o| {
                (
                    o.pod.as_str(),
                    o.container.as_str(),
                    o.count,
                    o.parent_comm.as_str(),
                    o.age_seconds,
                )
            })
            .collect();
        // Most zombies first; equal counts: the oldest first.
        assert_eq!(
            offenders,
            [
                ("api-1", "api", 7, "node", 30),
                ("blog-1", "blog", 2, "ruby", 500),
                ("web-1", "app", 2, "python3", 100),
            ]
        );
        let ready = &all.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", REASON_RECONCILED)
        );
        assert_eq!(ready.observed_generation, Some(3));
        let shop = &out.statuses["shop-only"];
        assert_eq!((shop.matched_namespaces, shop.matched_pods), (1, 0));
        // Threshold 5 (default): only api-1 (7) reaches it; it is bare, so only an Event.
        let events: Vec<&str> = out
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { pod, .. } => Some(pod.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(events, ["api-1"]);
    }

    #[test]
    fn top_offenders_are_capped() {
        let pods: Vec<PodInfo> = (0..9)
            .map(|i| pod("shop", &format!("p{i}"), "web", None, Owner::Bare))
            .collect();
        let entries: Vec<(&PodInfo, &str, u32, &str, u64)> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p, "c", i as u32 + 1, "sh", 0))
            .collect();
        let world = World {
            policies: PolicySet::new([policy("all", 0, |_| {})]),
            namespaces: namespaces(),
            zombies: zombies(&entries),
            pods,
        };
        let status = &world.compute(&ActionLog::default(), now()).statuses["all"];
        let counts: Vec<u32> = status.top_offenders.iter().map(|o| o.count).collect();
        assert_eq!(counts, [9, 8, 7, 6, 5]);
        assert_eq!(status.zombies, 45);
    }

    #[test]
    fn equal_priority_overlap_is_conflicting_on_both() {
        let world = World {
            policies: PolicySet::new([
                policy("beta", 5, |s| s.pod_selector = app_selector("web")),
                policy("alpha", 5, |_| {}),
                policy("higher", 9, |s| s.pod_selector = app_selector("api")),
                policy("lower", 1, |_| {}),
            ]),
            namespaces: namespaces(),
            pods: vec![
                pod("shop", "web-1", "web", None, Owner::Bare),
                pod("shop", "api-1", "api", None, Owner::Bare),
                pod("blog", "db-1", "db", None, Owner::Bare),
            ],
            zombies: HashMap::new(),
        };
        let out = world.compute(&ActionLog::default(), now());
        let reason = |n: &str| out.statuses[n].conditions[0].reason.clone();
        assert_eq!(reason("alpha"), REASON_CONFLICTING);
        assert_eq!(reason("beta"), REASON_CONFLICTING);
        // A higher or lower priority overlapping is precedence, not a conflict.
        assert_eq!(reason("higher"), REASON_RECONCILED);
        assert_eq!(reason("lower"), REASON_RECONCILED);
        let beta = &out.statuses["beta"].conditions[0];
        assert_eq!(beta.status, "False");
        assert!(
            beta.message
                .contains("alpha (also priority 5) matches 1 of the same pods (e.g. shop/web-1)"),
            "{}",
            beta.message
        );
        assert!(
            beta.message.contains("alpha governs them"),
            "{}",
            beta.message
        );
        // The tie goes to the alphabetically first name: alpha counts web-1 and db-1.
        assert_eq!(out.statuses["alpha"].matched_pods, 2);
        assert_eq!(out.statuses["beta"].matched_pods, 0);
        assert_eq!(out.statuses["higher"].matched_pods, 1);
    }

    #[test]
    fn invalid_selector_is_reported_and_matches_nothing() {
        let world = World {
            policies: PolicySet::new([policy("broken", 100, |s| {
                s.pod_selector = Some(LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "app".into(),
                        operator: "Equals".into(),
                        values: Some(vec!["web".into()]),
                    }]),
                    ..Default::default()
                })
            })]),
            namespaces: namespaces(),
            pods: vec![pod("shop", "web-1", "web", None, Owner::Bare)],
            zombies: HashMap::new(),
        };
        let status = &world.compute(&ActionLog::default(), now()).statuses["broken"];
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", REASON_INVALID_SELECTOR)
        );
        assert!(
            ready.message.contains("unknown operator \"Equals\""),
            "{}",
            ready.message
        );
        assert_eq!((status.matched_namespaces, status.matched_pods), (0, 0));
    }

    #[test]
    fn threshold_crossing_and_event_rate_limit() {
        let p = pod("shop", "web-1", "web", None, deployment("shop", "web"));
        let mk = |count: u32| World {
            policies: PolicySet::new([policy("all", 0, |s| s.zombies.threshold = 3)]),
            namespaces: namespaces(),
            zombies: zombies(&[(&p, "app", count, "python3", 60)]),
            pods: vec![p.clone()],
        };
        let mut log = ActionLog::default();
        assert!(
            mk(2).compute(&log, now()).actions.is_empty(),
            "below the threshold"
        );
        let out = mk(3).compute(&log, now());
        match out.actions.as_slice() {
            [Action::Event { pod, note, policy }] => {
                assert_eq!((pod.name.as_str(), policy.as_str()), ("web-1", "all"));
                assert!(note.starts_with("3 zombie processes (threshold 3, policy all); worst: container app (3 held by python3); pod not protected"), "{note}");
            }
            other => panic!("one Event expected: {other:?}"),
        }
        // Recorded: no second Event within the interval, and a requeue when it ends.
        log.events.insert(p.uid.clone(), now());
        let later = now() + SignedDuration::from_mins(5);
        let out = mk(9).compute(&log, later);
        assert!(out.actions.is_empty(), "{:?}", out.actions);
        assert_eq!(out.next_due, Some(now() + SignedDuration::from_mins(15)));
        let out = mk(9).compute(&log, now() + SignedDuration::from_mins(15));
        assert!(matches!(out.actions.as_slice(), [Action::Event { .. }]));
    }

    #[test]
    fn restart_decisions() {
        let restart_policy = policy("r", 0, |s| {
            s.zombies = ZombiePolicy {
                threshold: 1,
                action: ZombieAction::Restart,
                cooldown: "30m".into(),
            }
        });
        let log = ActionLog::default();
        let d = |p: &PodInfo| restart_decision(p, &restart_policy, &log, now());
        let web = pod("shop", "web-1", "web", None, deployment("shop", "web"));
        assert_eq!(d(&web).unwrap().name, "web");
        // Skipped by the webhook last time: a new pod may be wrappable, so restart.
        let mut skipped = web.clone();
        skipped.injected = Some("skipped:not-wrappable".into());
        assert!(d(&skipped).is_ok());
        for injected in ["share", "inject:app,sidecar"] {
            let mut p = web.clone();
            p.injected = Some(injected.into());
            assert_eq!(d(&p), Err(NoRestart::Protected));
        }
        assert_eq!(
            d(&pod("shop", "b", "web", None, Owner::Bare)),
            Err(NoRestart::BarePod)
        );
        let job = Owner::Other {
            kind: "Job".into(),
            name: "migrate".into(),
        };
        assert!(matches!(
            d(&pod("shop", "j", "web", None, job)),
            Err(NoRestart::NotRestartable { kind, .. }) if kind == "Job"
        ));
        let mut off = web.clone();
        off.mode = Some("off".into());
        assert_eq!(d(&off), Err(NoRestart::NotEnforced));
        let audit = policy("a", 0, |s| {
            s.enforcement = Enforcement::Audit;
            s.zombies.action = ZombieAction::Restart;
        });
        assert_eq!(
            restart_decision(&web, &audit, &log, now()),
            Err(NoRestart::NotEnforced)
        );
        let event_only = policy("e", 0, |_| {});
        assert_eq!(
            restart_decision(&web, &event_only, &log, now()),
            Err(NoRestart::EventOnly)
        );
        // Cooldown from the log, and from the restartedAt the pod inherited (a previous leader).
        let mut log = ActionLog::default();
        let ten_min_ago = now() - SignedDuration::from_mins(10);
        log.restarts.insert(d(&web).unwrap(), ten_min_ago);
        assert_eq!(
            restart_decision(&web, &restart_policy, &log, now()),
            Err(NoRestart::CoolingDown {
                until: now() + SignedDuration::from_mins(20)
            })
        );
        assert!(
            restart_decision(
                &web,
                &restart_policy,
                &log,
                now() + SignedDuration::from_mins(20)
            )
            .is_ok()
        );
        let mut inherited = web.clone();
        inherited.restarted_at = Some(ten_min_ago);
        assert!(matches!(
            restart_decision(&inherited, &restart_policy, &ActionLog::default(), now()),
            Err(NoRestart::CoolingDown { .. })
        ));
        assert!(cooldown_elapsed(None, now(), DEFAULT_COOLDOWN));
        assert!(cooldown_elapsed(Some("garbage"), now(), DEFAULT_COOLDOWN));
        assert!(!cooldown_elapsed(
            Some("2026-03-01T11:30:00Z"),
            now(),
            DEFAULT_COOLDOWN
        ));
        assert!(cooldown_elapsed(
            Some("2026-03-01T11:00:00Z"),
            now(),
            DEFAULT_COOLDOWN
        ));
    }

    /// The agents' evidence: a pod whose every container runs a known init (or shares a PID
    /// namespace with `pause`) counts as protected in status and is never restarted, whatever its
    /// annotation says; one unprotected container makes the whole pod unprotected.
    #[test]
    fn pods_already_running_an_init_count_as_protected() {
        let init = |pod: &PodInfo, container: &str, comm: &str, init: Option<&str>| {
            crate::crd::ContainerInit {
                pod_uid: pod.uid.clone(),
                container_id: format!("{container:0>64}"),
                comm: comm.into(),
                init: init.map(String::from),
                handles_sigterm: init.is_some(),
                pid1: true,
                ..Default::default()
            }
        };
        let mut pods = vec![
            pod("shop", "tini-1", "web", None, deployment("shop", "tini")),
            pod("shop", "mixed-1", "web", None, deployment("shop", "mixed")),
        ];
        let report = ZombieReportSpec {
            node_name: "n1".into(),
            pid1s: vec![
                init(&pods[0], "a", "tini", Some("tini")),
                init(&pods[1], "b", "tini", Some("tini")),
                init(&pods[1], "c", "sleep", None),
            ],
            ..Default::default()
        };
        let inits = index_inits([&report]);
        assert_eq!(inits.len(), 1, "{inits:?}");
        for p in &mut pods {
            p.init = inits.get(&p.uid).cloned();
        }
        assert_eq!(pods[0].init.as_deref(), Some("tini"));
        let entries: Vec<_> = pods.iter().map(|p| (p, "a", 4, "sh", 0)).collect();
        let world = World {
            policies: PolicySet::new([policy("r", 0, |s| {
                s.zombies.threshold = 4;
                s.zombies.action = ZombieAction::Restart;
            })]),
            namespaces: namespaces(),
            zombies: zombies(&entries),
            pods,
        };
        let out = world.compute(&ActionLog::default(), now());
        let status = &out.statuses["r"];
        assert_eq!((status.protected_pods, status.unprotected_pods), (1, 1));
        let why: BTreeMap<&str, &NoRestart> = out
            .not_restarted
            .iter()
            .map(|(p, w)| (p.name.as_str(), w))
            .collect();
        assert_eq!(why["tini-1"], &NoRestart::Protected);
        let notes: Vec<&str> = out
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { note, pod, .. } if pod.name == "tini-1" => Some(note.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            notes[0].ends_with("pod protected by its init (tini)"),
            "{notes:?}"
        );
    }

    #[test]
    fn one_restart_per_workload_and_none_for_protected_bare_or_jobs() {
        let p = |name: &str, injected: Option<&str>, owner: Owner| {
            pod("shop", name, "web", injected, owner)
        };
        let pods = vec![
            p("web-1", None, deployment("shop", "web")),
            p("web-2", None, deployment("shop", "web")),
            p("safe-1", Some("share"), deployment("shop", "safe")),
            p("bare", None, Owner::Bare),
            p(
                "job-1",
                None,
                Owner::Other {
                    kind: "Job".into(),
                    name: "j".into(),
                },
            ),
        ];
        let entries: Vec<_> = pods.iter().map(|p| (p, "c", 4, "sh", 0)).collect();
        let world = World {
            policies: PolicySet::new([policy("r", 0, |s| {
                s.zombies.threshold = 4;
                s.zombies.action = ZombieAction::Restart;
            })]),
            namespaces: namespaces(),
            zombies: zombies(&entries),
            pods: pods.clone(),
        };
        let out = world.compute(&ActionLog::default(), now());
        let restarts: Vec<&WorkloadRef> = out
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Restart {
                    workload, cooldown, ..
                } => {
                    assert_eq!(*cooldown, DEFAULT_COOLDOWN);
                    Some(workload)
                }
                _ => None,
            })
            .collect();
        assert_eq!(restarts.len(), 1, "{:?}", out.actions);
        assert_eq!(restarts[0].to_string(), "Deployment shop/web");
        let events = out
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Event { .. }))
            .count();
        assert_eq!(events, 5, "every pod at the threshold gets its Event");
        let why: BTreeMap<&str, &NoRestart> = out
            .not_restarted
            .iter()
            .map(|(p, w)| (p.name.as_str(), w))
            .collect();
        assert_eq!(why["safe-1"], &NoRestart::Protected);
        assert_eq!(why["bare"], &NoRestart::BarePod);
        assert!(matches!(why["job-1"], NoRestart::NotRestartable { .. }));
    }

    #[test]
    fn owners_resolve_through_replica_sets() {
        let oref = |kind: &str, name: &str, controller: bool| OwnerReference {
            api_version: if kind == "Job" { "batch/v1" } else { "apps/v1" }.into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("{name}-uid"),
            controller: Some(controller),
            block_owner_deletion: None,
        };
        let rs_index = |_: &str, name: &str| match name {
            "web-7d9f" => Some(vec![oref("Deployment", "web", true)]),
            "orphan-rs" => Some(vec![]),
            _ => None,
        };
        let r = |refs: Vec<OwnerReference>| resolve_owner("shop", &refs, rs_index);
        assert_eq!(
            r(vec![oref("ReplicaSet", "web-7d9f", true)]),
            deployment("shop", "web")
        );
        assert!(
            matches!(r(vec![oref("ReplicaSet", "orphan-rs", true)]), Owner::Other { kind, .. } if kind == "ReplicaSet")
        );
        assert!(matches!(
            r(vec![oref("ReplicaSet", "unknown", true)]),
            Owner::Other { .. }
        ));
        assert!(
            matches!(r(vec![oref("StatefulSet", "db", true)]), Owner::Workload(w) if w.kind == WorkloadKind::StatefulSet)
        );
        assert!(
            matches!(r(vec![oref("DaemonSet", "agent", true)]), Owner::Workload(w) if w.kind == WorkloadKind::DaemonSet)
        );
        assert!(
            matches!(r(vec![oref("Job", "migrate", true)]), Owner::Other { kind, .. } if kind == "Job")
        );
        // Non-controller owners do not count.
        assert_eq!(r(vec![oref("StatefulSet", "db", false)]), Owner::Bare);
        assert_eq!(r(vec![]), Owner::Bare);

        // Policy reports name what users manage: the Deployment, the CronJob, or the pod.
        let cron = OwnerReference {
            api_version: "batch/v1".into(),
            kind: "CronJob".into(),
            ..oref("Job", "nightly", true)
        };
        let owners = |kind: &str, ns: &str, name: &str| match (kind, name) {
            ("Job", "nightly-28000000") => Some(vec![cron.clone()]),
            ("Job", _) => Some(vec![]),
            _ => rs_index(ns, name),
        };
        let scope = |refs: Vec<OwnerReference>| {
            let s = report_scope("shop", "p-1", "p-uid", &refs, owners);
            (s.api_version, s.kind, s.name, s.uid)
        };
        let s = |v: &str, k: &str, n: &str, u: &str| (v.into(), k.into(), n.into(), u.into());
        assert_eq!(
            scope(vec![oref("ReplicaSet", "web-7d9f", true)]),
            s("apps/v1", "Deployment", "web", "web-uid")
        );
        assert_eq!(
            scope(vec![oref("ReplicaSet", "orphan-rs", true)]),
            s("apps/v1", "ReplicaSet", "orphan-rs", "orphan-rs-uid")
        );
        assert_eq!(
            scope(vec![oref("Job", "nightly-28000000", true)]),
            s("batch/v1", "CronJob", "nightly", "nightly-uid")
        );
        assert_eq!(
            scope(vec![oref("Job", "migrate", true)]),
            s("batch/v1", "Job", "migrate", "migrate-uid")
        );
        assert_eq!(
            scope(vec![oref("StatefulSet", "db", true)]),
            s("apps/v1", "StatefulSet", "db", "db-uid")
        );
        assert_eq!(
            scope(vec![oref("StatefulSet", "db", false)]),
            s("v1", "Pod", "p-1", "p-uid")
        );
    }

    #[test]
    fn zombie_index_sums_pod_level_zombies() {
        let report = ZombieReportSpec {
            node_name: "n".into(),
            containers: vec![ContainerZombies {
                pod_uid: "u1".into(),
                container_id: "abcdef0123456789abcdef".into(),
                count: 2,
                ..Default::default()
            }],
            pods: vec![
                PodPids {
                    pod_uid: "u1".into(),
                    current: 10,
                    zombies: 3,
                    ..Default::default()
                },
                PodPids {
                    pod_uid: "u2".into(),
                    current: 900,
                    limit: Some(1000),
                    zombies: 0,
                    ..Default::default()
                },
                PodPids {
                    pod_uid: "u3".into(),
                    current: 5,
                    zombies: 4,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let idx = index_zombies([&report]);
        assert_eq!(idx["u1"].total, 3, "one zombie outside the container");
        assert_eq!(
            idx["u1"].containers[0].container, "abcdef012345",
            "short ID when unnamed"
        );
        assert!(!idx.contains_key("u2"), "pids pressure without zombies");
        assert_eq!(idx["u3"].total, 4);
    }

    #[test]
    fn transition_time_survives_unchanged_status() {
        let mut p = (*policy("all", 0, |_| {})).clone();
        let earlier = now() - SignedDuration::from_hours(2);
        p.status = Some(ReaperPolicyStatus {
            conditions: vec![condition(
                &[],
                CONDITION_READY,
                "True",
                REASON_RECONCILED,
                "x".into(),
                Some(1),
                earlier,
            )],
            ..Default::default()
        });
        let world = World {
            policies: PolicySet::new([Arc::new(p)]),
            namespaces: namespaces(),
            pods: vec![],
            zombies: HashMap::new(),
        };
        let out = world.compute(&ActionLog::default(), now());
        let status = &out.statuses["all"];
        assert_eq!(status.conditions[0].last_transition_time, Time(earlier));
        let mut stamped = status.clone();
        stamped.last_updated = Some(Time(now()));
        assert!(same_status(status, &stamped));
        stamped.matched_pods += 1;
        assert!(!same_status(status, &stamped));
    }

    #[test]
    fn prune_bounds_the_log() {
        let mut log = ActionLog::default();
        log.events.insert("gone".into(), now());
        log.events.insert("live".into(), now());
        let w = WorkloadRef {
            kind: WorkloadKind::Deployment,
            namespace: "a".into(),
            name: "b".into(),
        };
        log.restarts
            .insert(w.clone(), now() - SignedDuration::from_hours(30));
        log.prune(
            &BTreeSet::from(["live"]),
            now(),
            Duration::from_secs(24 * 3600),
        );
        assert!(log.events.contains_key("live") && !log.events.contains_key("gone"));
        assert!(log.restarts.is_empty());
    }
}
