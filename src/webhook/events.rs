//! Skips and fallbacks as Kubernetes Events, for the people who never see admission warnings
//! (pods made by a ReplicaSet, Job, StatefulSet or DaemonSet controller).
//!
//! The pure part decides *whether* and *what*: [`notice`] turns an admission (pod, plan, dry-run
//! flag) into a [`Notice`] regarding the pod's controller owner, and [`Limiter`] lets at most one
//! through per owner and reason per [`INTERVAL`] (a bounded map, clock passed in). The shell,
//! [`EventSink`] and [`send_all`], hands admitted notices over a bounded queue to one background
//! task that records them with kube-runtime's `Recorder` (events.k8s.io/v1): admission never waits
//! for, nor fails because of, an Event.
use super::decide::{FallbackReason, Outcome, Plan, SkipReason};
use crate::keys;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::{Event, EventType, Recorder};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// At most one Event per owner and reason this often (per webhook replica).
pub const INTERVAL: Duration = Duration::from_secs(600);
/// Owners and reasons remembered at most; beyond, expired entries are dropped, then the oldest.
pub const MAX_TRACKED: usize = 4096;
/// Events waiting to be sent at most; beyond, new ones are dropped (and counted).
pub const QUEUE: usize = 256;
/// How long one Event may take to be recorded.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// `note` is limited to 1 KiB by the API server.
const NOTE_LIMIT: usize = 1024;
/// `action` of every Event the webhook records.
const ACTION: &str = "Admit";

/// What an Event is about, as the limiter tells them apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub reason: &'static str,
}

/// An Event to record.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub regarding: ObjectReference,
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

impl Notice {
    pub fn key(&self) -> Key {
        let r = &self.regarding;
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        Key {
            namespace: s(&r.namespace),
            kind: s(&r.kind),
            name: s(&r.name),
            uid: s(&r.uid),
            reason: self.reason,
        }
    }
}

/// Event type and reason of an outcome, if it deserves an Event: `Warning` when containers are
/// left without a reaping PID 1, `Normal` when the pod needs no reaper or is protected another
/// way than asked.
pub fn classify(plan: &Plan) -> Option<(EventType, &'static str)> {
    use EventType::{Normal, Warning};
    match (&plan.outcome, plan.fallback) {
        (Outcome::Skipped(SkipReason::NotWrappable | SkipReason::NoTargets), _) => {
            Some((Warning, keys::REASON_POD_NOT_PROTECTED))
        }
        (Outcome::Skipped(SkipReason::Windows | SkipReason::AlreadyInit), _) => {
            Some((Normal, keys::REASON_PROTECTION_NOT_NEEDED))
        }
        (_, Some(FallbackReason::PartialInject)) => {
            Some((Warning, keys::REASON_PROTECTION_FALLBACK))
        }
        (_, Some(FallbackReason::AutoShare | FallbackReason::HostPidInject)) => {
            Some((Normal, keys::REASON_PROTECTION_FALLBACK))
        }
        _ => None,
    }
}

/// What an Event about `pod` is recorded on. At admission the pod has no UID yet, so not the
/// pod itself but its controller owner (ReplicaSet, StatefulSet, DaemonSet, Job, or any other
/// `controller: true` ownerReference), which `kubectl describe` shows it on and which outlives
/// the pod. A bare pod with a name: that pod, by name only (its creator also got the admission
/// warnings). A bare pod with only `generateName`: nothing (no object to name).
pub fn regarding(pod: &Pod, namespace: &str) -> Option<ObjectReference> {
    let meta = &pod.metadata;
    if let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && !o.name.is_empty())
    {
        return Some(ObjectReference {
            api_version: Some(owner.api_version.clone()),
            kind: Some(owner.kind.clone()),
            name: Some(owner.name.clone()),
            namespace: Some(namespace.to_string()),
            uid: Some(owner.uid.clone()).filter(|u| !u.is_empty()),
            ..Default::default()
        });
    }
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        ..Default::default()
    })
}

/// The pod as people know it at admission: its name, or `generateName*`.
pub fn pod_display_name(pod: &Pod) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(n), _) if !n.is_empty() => n.clone(),
        (_, Some(g)) => format!("{g}*"),
        _ => String::new(),
    }
}

/// The Event an admission deserves, if any. Dry-run requests never get one: nothing was created.
pub fn notice(pod: &Pod, namespace: &str, plan: &Plan, dry_run: bool) -> Option<Notice> {
    if dry_run {
        return None;
    }
    let (type_, reason) = classify(plan)?;
    let regarding = regarding(pod, namespace)?;
    let note = note(pod, plan, reason, &regarding);
    Some(Notice {
        regarding,
        type_,
        reason,
        note,
    })
}

/// `Pod <name> <what happened> (reaper.dev/injected=<value>): <the warnings>. <repeat notice>`,
/// the warnings cut to keep the whole within the API server's 1 KiB.
fn note(pod: &Pod, plan: &Plan, reason: &str, regarding: &ObjectReference) -> String {
    let what = match reason {
        keys::REASON_POD_NOT_PROTECTED => "admitted without a PID 1 that reaps zombies",
        keys::REASON_PROTECTION_NOT_NEEDED => "admitted unchanged, needs no reaper",
        _ => "protected by a fallback",
    };
    let audit = if plan.audit {
        match &plan.policy {
            Some(p) => format!(" (audit by policy {p}: not changed)"),
            None => " (audit: not changed)".to_string(),
        }
    } else {
        String::new()
    };
    let head = format!(
        "Pod {} {what}{audit} ({}={}): ",
        pod_display_name(pod),
        keys::ANNOTATION_INJECTED,
        plan.annotation().unwrap_or_default()
    );
    let tail = match regarding.kind.as_deref() {
        Some("Pod") | None => ".".to_string(),
        Some(kind) => format!(
            ". Pods of {kind} {} with the same outcome are reported again after {}.",
            regarding.name.as_deref().unwrap_or_default(),
            humantime::format_duration(INTERVAL)
        ),
    };
    let details: Vec<&str> = plan
        .warnings
        .iter()
        .map(|w| w.strip_prefix("reaper: ").unwrap_or(w))
        .collect();
    let details = details.join("; ");
    let budget = NOTE_LIMIT.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", truncate(&details, budget))
}

/// At most `max` bytes of `s`, cut at a character boundary and marked with `…` when cut.
fn truncate(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let ellipsis = "…";
    let mut end = max.saturating_sub(ellipsis.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &s[..end]).into()
}

/// At most one notice per [`Key`] per interval, remembering at most `capacity` keys.
#[derive(Debug)]
pub struct Limiter {
    interval: Duration,
    capacity: usize,
    last: HashMap<Key, Instant>,
}

impl Limiter {
    pub fn new(interval: Duration, capacity: usize) -> Self {
        Self {
            interval,
            capacity: capacity.max(1),
            last: HashMap::new(),
        }
    }

    /// Whether a notice with `key` may go out at `now` (and, if so, remember that it did).
    pub fn admit(&mut self, key: &Key, now: Instant) -> bool {
        let fresh = |t: &Instant| now.saturating_duration_since(*t) < self.interval;
        if self.last.get(key).is_some_and(fresh) {
            return false;
        }
        if !self.last.contains_key(key) && self.last.len() >= self.capacity {
            let interval = self.interval;
            self.last
                .retain(|_, t| now.saturating_duration_since(*t) < interval);
            if self.last.len() >= self.capacity {
                // Full of recent keys: the oldest may be reported again early, never suppressed
                // for longer.
                if let Some(oldest) = self
                    .last
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(k, _)| k.clone())
                {
                    self.last.remove(&oldest);
                }
            }
        }
        self.last.insert(key.clone(), now);
        true
    }

    /// Forget `key` (its notice could not be queued after all).
    pub fn forget(&mut self, key: &Key) {
        self.last.remove(key);
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// What became of a notice offered to the sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// Queued for the sender.
    Queued,
    /// An Event with the same owner and reason went out less than an interval ago.
    Suppressed,
    /// The queue was full (the API server is slow or unreachable); the next pod may try again.
    Dropped,
}

impl Offered {
    pub fn as_str(self) -> &'static str {
        match self {
            Offered::Queued => "queued",
            Offered::Suppressed => "suppressed",
            Offered::Dropped => "dropped",
        }
    }
}

/// The request path's end of the Event pipeline: rate limit, then a non-blocking hand-over.
#[derive(Clone)]
pub struct EventSink {
    limiter: Arc<Mutex<Limiter>>,
    tx: mpsc::Sender<Notice>,
}

impl EventSink {
    /// A sink and the receiving end for [`send_all`].
    pub fn new(limiter: Limiter, queue: usize) -> (Self, mpsc::Receiver<Notice>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        (
            Self {
                limiter: Arc::new(Mutex::new(limiter)),
                tx,
            },
            rx,
        )
    }

    /// Offer a notice at `now`; never waits.
    pub fn offer(&self, notice: Notice, now: Instant) -> Offered {
        let key = notice.key();
        let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        if !limiter.admit(&key, now) {
            return Offered::Suppressed;
        }
        match self.tx.try_send(notice) {
            Ok(()) => Offered::Queued,
            Err(_) => {
                limiter.forget(&key);
                Offered::Dropped
            }
        }
    }
}

/// Records queued notices one at a time until `stop`; `counted` gets `sent` or `error` for each.
/// A failure is logged and never retried (the next pod of the owner after the interval is).
pub async fn send_all(
    mut rx: mpsc::Receiver<Notice>,
    recorder: Recorder,
    counted: impl Fn(&'static str) + Send,
    stop: CancellationToken,
) {
    loop {
        let notice = tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv() => match n {
                Some(n) => n,
                // Every sink is gone: nothing more will come.
                None => return stop.cancelled().await,
            },
        };
        let event = Event {
            type_: notice.type_,
            reason: notice.reason.to_string(),
            note: Some(notice.note.clone()),
            action: ACTION.to_string(),
            secondary: None,
        };
        let r = &notice.regarding;
        let object = format!(
            "{} {}/{}",
            r.kind.as_deref().unwrap_or_default(),
            r.namespace.as_deref().unwrap_or_default(),
            r.name.as_deref().unwrap_or_default()
        );
        match tokio::time::timeout(SEND_TIMEOUT, recorder.publish(&event, r)).await {
            Ok(Ok(())) => {
                counted("sent");
                tracing::debug!(%object, reason = notice.reason, "Event recorded");
            }
            // The namespace was deleted after the pod was admitted: nobody is left to tell.
            Ok(Err(kube::Error::Api(s)))
                if s.code == 403 && s.message.contains("being terminated") =>
            {
                counted("error");
                tracing::debug!(%object, reason = notice.reason, "namespace is being deleted; Event not recorded");
            }
            Ok(Err(e)) => {
                counted("error");
                tracing::warn!(%object, reason = notice.reason, error = %e, "recording an Event failed (its ServiceAccount needs create and patch on events.k8s.io events; or --events=false)");
            }
            Err(_) => {
                counted("error");
                tracing::warn!(%object, reason = notice.reason, timeout = ?SEND_TIMEOUT, "recording an Event timed out");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PolicySet;
    use crate::image::ImageIndex;
    use crate::webhook::decide::{Config, Scope, plan};
    use serde_json::{Value, json};
    use std::collections::BTreeMap;

    fn pod(metadata: Value, containers: Value) -> Pod {
        serde_json::from_value(json!({"metadata": metadata, "spec": {"containers": containers}}))
            .unwrap()
    }

    fn owner(kind: &str, name: &str, controller: Option<bool>) -> Value {
        json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("uid-{name}"),
               "controller": controller})
    }

    fn plan_of(p: &Pod) -> Plan {
        let labels = BTreeMap::new();
        let scope = Scope {
            namespace: "apps",
            namespace_labels: &labels,
        };
        plan(
            p,
            scope,
            &PolicySet::default(),
            &ImageIndex::new(),
            &Config::new("r:1"),
        )
    }

    /// No command, image unknown: auto falls back to share.
    fn unknown() -> Value {
        json!([{"name": "app", "image": "nginx:1"}])
    }

    #[test]
    fn the_controller_owner_is_regarded_else_the_named_pod() {
        let p = pod(
            json!({"generateName": "web-5d-", "ownerReferences": [
                owner("Deployment", "not-controller", Some(false)),
                owner("ReplicaSet", "web-5d", Some(true)),
            ]}),
            unknown(),
        );
        let r = regarding(&p, "apps").unwrap();
        assert_eq!(
            (
                r.api_version.as_deref(),
                r.kind.as_deref(),
                r.name.as_deref(),
                r.namespace.as_deref(),
                r.uid.as_deref()
            ),
            (
                Some("apps/v1"),
                Some("ReplicaSet"),
                Some("web-5d"),
                Some("apps"),
                Some("uid-web-5d")
            )
        );
        // Only non-controller owners, a name: the pod by name (no UID before it is stored).
        let p = pod(
            json!({"name": "solo", "ownerReferences": [owner("Thing", "t", None)]}),
            unknown(),
        );
        let r = regarding(&p, "apps").unwrap();
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (Some("Pod"), Some("solo"), None)
        );
        // Bare and only generateName: nothing to name.
        assert_eq!(
            regarding(&pod(json!({"generateName": "x-"}), unknown()), "apps"),
            None
        );
    }

    #[test]
    fn skips_and_fallbacks_are_classified() {
        use EventType::{Normal, Warning};
        let cases = [
            // auto, argv unknown: share instead.
            (
                json!({}),
                unknown(),
                Some((Normal, keys::REASON_PROTECTION_FALLBACK)),
            ),
            // inject asked for, argv unknown: nothing wrapped.
            (
                json!({keys::ANNOTATION_MODE: "inject"}),
                unknown(),
                Some((Warning, keys::REASON_POD_NOT_PROTECTED)),
            ),
            // inject, one of two wrapped: partly protected.
            (
                json!({keys::ANNOTATION_MODE: "inject"}),
                json!([{"name": "a", "image": "x", "command": ["/a"]}, {"name": "b", "image": "y"}]),
                Some((Warning, keys::REASON_PROTECTION_FALLBACK)),
            ),
            // Runs its own init.
            (
                json!({}),
                json!([{"name": "a", "image": "x", "command": ["tini", "--", "/a"]}]),
                Some((Normal, keys::REASON_PROTECTION_NOT_NEEDED)),
            ),
            // Wrapped as asked: nothing to say.
            (
                json!({}),
                json!([{"name": "a", "image": "x", "command": ["/a"]}]),
                None,
            ),
            // Shared as asked.
            (json!({keys::ANNOTATION_MODE: "share"}), unknown(), None),
            // Turned off: nothing to say either.
            (json!({keys::ANNOTATION_MODE: "off"}), unknown(), None),
        ];
        for (annotations, containers, want) in cases {
            let p = pod(
                json!({"name": "p", "annotations": annotations}),
                containers.clone(),
            );
            let plan = plan_of(&p);
            assert_eq!(
                classify(&plan),
                want,
                "{annotations} {containers}: {plan:?}"
            );
        }
    }

    #[test]
    fn hostpid_share_is_a_normal_fallback_to_inject() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": {keys::ANNOTATION_MODE: "share"}},
            "spec": {"hostPID": true, "containers": [{"name": "a", "image": "x", "command": ["/a"]}]}
        }))
        .unwrap();
        let plan = plan_of(&p);
        assert_eq!(plan.reason_label(), "hostpid-inject");
        assert_eq!(
            classify(&plan),
            Some((EventType::Normal, keys::REASON_PROTECTION_FALLBACK))
        );
    }

    #[test]
    fn a_notice_names_the_pod_and_why_and_dry_runs_get_none() {
        let p = pod(
            json!({"generateName": "web-5d-", "ownerReferences": [owner("ReplicaSet", "web-5d", Some(true))]}),
            unknown(),
        );
        let plan = plan_of(&p);
        assert_eq!(notice(&p, "apps", &plan, true), None, "dry run");
        let n = notice(&p, "apps", &plan, false).unwrap();
        assert_eq!(n.reason, keys::REASON_PROTECTION_FALLBACK);
        assert_eq!(n.type_, EventType::Normal);
        assert!(n.note.starts_with("Pod web-5d-* protected by a fallback (reaper.dev/injected=share): container \"app\": cannot wrap"), "{}", n.note);
        assert!(
            n.note.contains("falling back to shareProcessNamespace"),
            "{}",
            n.note
        );
        assert!(
            n.note.ends_with(
                "Pods of ReplicaSet web-5d with the same outcome are reported again after 10m."
            ),
            "{}",
            n.note
        );
        assert!(!n.note.contains("reaper: "), "{}", n.note);
        assert_eq!(
            n.key(),
            Key {
                namespace: "apps".into(),
                kind: "ReplicaSet".into(),
                name: "web-5d".into(),
                uid: "uid-web-5d".into(),
                reason: keys::REASON_PROTECTION_FALLBACK,
            }
        );
    }

    #[test]
    fn notes_stay_within_one_kib() {
        // 20 containers with unknown argvs, multi-byte names: many long warnings.
        let containers: Vec<Value> = (0..20)
            .map(|i| json!({"name": format!("ç{i}-{}", "x".repeat(40)), "image": "nginx:1"}))
            .collect();
        let p = pod(
            json!({"generateName": "w-", "ownerReferences": [owner("Job", "w", Some(true))]}),
            json!(containers),
        );
        let n = notice(&p, "apps", &plan_of(&p), false).unwrap();
        assert!(n.note.len() <= NOTE_LIMIT, "{}", n.note.len());
        assert!(n.note.contains("…. Pods of Job w"), "{}", n.note);
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("aéb", 4), "aéb");
        assert_eq!(truncate("aébcd", 5), "a…");
    }

    fn key(name: &str, reason: &'static str) -> Key {
        Key {
            namespace: "ns".into(),
            kind: "ReplicaSet".into(),
            name: name.into(),
            uid: format!("u-{name}"),
            reason,
        }
    }

    #[test]
    fn one_per_owner_and_reason_per_interval() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut l = Limiter::new(Duration::from_secs(600), 100);
        let a = key("a", "X");
        assert!(l.admit(&a, at(0)));
        assert!(!l.admit(&a, at(1)));
        assert!(!l.admit(&a, at(599)));
        // Another reason or owner is another Event.
        assert!(l.admit(&key("a", "Y"), at(1)));
        assert!(l.admit(&key("b", "X"), at(1)));
        // After the interval, again (and then quiet for another interval).
        assert!(l.admit(&a, at(600)));
        assert!(!l.admit(&a, at(1199)));
        assert!(l.admit(&a, at(1200)));
        // A clock that goes backwards suppresses rather than floods.
        assert!(!l.admit(&a, at(5)));
    }

    #[test]
    fn the_limiter_is_bounded() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut l = Limiter::new(Duration::from_secs(600), 3);
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            assert!(l.admit(&key(n, "X"), at(i as u64)));
        }
        // Full of fresh keys: the oldest (a) is forgotten for the newcomer.
        assert!(l.admit(&key("d", "X"), at(10)));
        assert_eq!(l.len(), 3);
        assert!(!l.admit(&key("b", "X"), at(11)), "b is still remembered");
        assert!(l.admit(&key("a", "X"), at(12)), "a was forgotten");
        // Expired keys go first: at 605, c (2) has expired; d (10) and a (12) have not.
        assert!(l.admit(&key("e", "X"), at(605)));
        assert_eq!(l.len(), 3);
        assert!(!l.admit(&key("d", "X"), at(606)));
        assert!(!l.admit(&key("e", "X"), at(607)));
    }

    #[tokio::test]
    async fn the_sink_never_waits_and_a_full_queue_suppresses_nothing_later() {
        let (sink, mut rx) = EventSink::new(Limiter::new(Duration::from_secs(600), 100), 1);
        let n = |name: &str| Notice {
            regarding: ObjectReference {
                kind: Some("ReplicaSet".into()),
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            type_: EventType::Warning,
            reason: "X",
            note: String::new(),
        };
        let now = Instant::now();
        assert_eq!(sink.offer(n("a"), now), Offered::Queued);
        assert_eq!(sink.offer(n("a"), now), Offered::Suppressed);
        assert_eq!(
            sink.offer(n("b"), now),
            Offered::Dropped,
            "queue of one is full"
        );
        assert_eq!(rx.recv().await.unwrap(), n("a"));
        // b was not remembered: the next pod of b reports it.
        assert_eq!(sink.offer(n("b"), now), Offered::Queued);
        assert_eq!(rx.recv().await.unwrap(), n("b"));
    }
}
