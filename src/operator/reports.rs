//! Policy reports, as a pure function of the operator's indexes ([`super::index::Snapshot`]): for
//! every namespace Reaper governs, the content of one namespaced report in the format platform
//! tools read (Policy Reporter, Kyverno's CLI and UI): an Open Reports `openreports.io/v1alpha1`
//! `Report`, or a `wgpolicyk8s.io/v1alpha2` `PolicyReport` where only that CRD is served. Both
//! kinds share one schema for `results` and `summary`; [`to_object`] adds what differs.
//!
//! One report per namespace (named [`keys::POLICY_REPORT_NAME`]), not one per resource as Kyverno
//! writes: Reaper has two rules, so a report per workload would multiply objects (and writes) for
//! a few results each; Policy Reporter reads either shape. Each result is scoped to the workload
//! its pods belong to ([`super::index::report_scope`]: Deployment through its ReplicaSet,
//! StatefulSet, DaemonSet, CronJob through its Job, or the bare pod) in `resources`, so findings
//! sit beside Kyverno's for the same object.
//!
//! Results per (workload, governing policy):
//! - [`keys::RULE_PID1_IS_INIT`]: `pass` when the webhook protected the pods (`share`, `inject:…`)
//!   or every container already runs an init (`skipped:already-init`); `fail` when not (no
//!   `reaper.dev/injected` annotation: created before the namespace opted in or while the webhook
//!   was down; `audit:…`: the policy only audits); `skip` with the reason for pods the webhook
//!   skipped (`skipped:<reason>`) or that are out of scope (opted out, static pods, mode `off`).
//!   Pods of one workload in different states (a rollout): the worst wins (fail, pass, skip).
//! - [`keys::RULE_ZOMBIES`]: `fail` with the count, the zombie parents' process names and the pods
//!   holding them, `pass` when none; only for pods in scope (the ones policies count).
//!
//! Results are sorted (resource, policy, rule) and a result keeps its `timestamp` while it stays
//! the same, so an unchanged cluster builds an identical report and the writer
//! ([`super::report_writer`]) writes nothing.
use super::index::{PodInfo, PodZombies, ResourceRef, Snapshot};
use super::status::Settings;
use crate::crd::{Enforcement, Mode, ReaperPolicy};
use crate::keys;
use crate::scope::{Exclusion, NamespaceScope};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// `policy` of results about pods no ReaperPolicy selects (the webhook's `--default-mode`
/// applies). Not a valid object name, so it never collides with a ReaperPolicy's.
pub const POLICY_NONE: &str = "(default)";
/// `category` of every result.
pub const CATEGORY: &str = "PID 1";
/// How many pod names a result's message or properties list before `…`.
const NAMED_PODS: usize = 10;

/// `--policy-reports`: which report API to write, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyReports {
    /// Write no reports.
    #[default]
    Off,
    /// `openreports.io` if served, else `wgpolicyk8s.io`, else none (re-checked periodically).
    Auto,
    /// `openreports.io/v1alpha1` Report only.
    #[value(name = "openreports")]
    OpenReports,
    /// `wgpolicyk8s.io/v1alpha2` PolicyReport only.
    #[value(name = "wgpolicyk8s")]
    WgPolicyK8s,
}

/// A report API the operator can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReportApi {
    OpenReports,
    WgPolicyK8s,
}

impl ReportApi {
    pub const ALL: [ReportApi; 2] = [ReportApi::OpenReports, ReportApi::WgPolicyK8s];

    pub fn group(self) -> &'static str {
        match self {
            ReportApi::OpenReports => "openreports.io",
            ReportApi::WgPolicyK8s => "wgpolicyk8s.io",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            ReportApi::OpenReports => "v1alpha1",
            ReportApi::WgPolicyK8s => "v1alpha2",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            ReportApi::OpenReports => "Report",
            ReportApi::WgPolicyK8s => "PolicyReport",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            ReportApi::OpenReports => "reports",
            ReportApi::WgPolicyK8s => "policyreports",
        }
    }

    /// `group/version`.
    pub fn api_version(self) -> String {
        format!("{}/{}", self.group(), self.version())
    }

    pub fn resource(self) -> kube::api::ApiResource {
        kube::api::ApiResource {
            group: self.group().into(),
            version: self.version().into(),
            api_version: self.api_version(),
            kind: self.kind().into(),
            plural: self.plural().into(),
        }
    }
}

impl std::fmt::Display for ReportApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.api_version(), self.kind())
    }
}

/// The API to write given what the API server serves: `auto` prefers Open Reports (the successor
/// Policy Reporter and Kyverno move to), an explicit choice is used only when served.
pub fn choose(mode: PolicyReports, served: &BTreeSet<ReportApi>) -> Option<ReportApi> {
    let wanted: &[ReportApi] = match mode {
        PolicyReports::Off => &[],
        PolicyReports::Auto => &ReportApi::ALL,
        PolicyReports::OpenReports => &[ReportApi::OpenReports],
        PolicyReports::WgPolicyK8s => &[ReportApi::WgPolicyK8s],
    };
    wanted.iter().copied().find(|a| served.contains(a))
}

/// `result` of a policy report result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Warn,
    Error,
    Skip,
}

/// A result's `timestamp` (protobuf Timestamp form, as both CRDs declare it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultTime {
    pub seconds: i64,
    pub nanos: i32,
}

/// An object a result is about (`resources[]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultResource {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// One entry of `results`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportResult {
    pub policy: String,
    pub rule: String,
    pub result: Verdict,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub severity: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub scored: bool,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub resources: Vec<ResultResource>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    #[serde(default)]
    pub timestamp: ResultTime,
}

impl ReportResult {
    /// Equal apart from `timestamp`.
    fn same_finding(&self, other: &ReportResult) -> bool {
        ReportResult {
            timestamp: other.timestamp,
            ..self.clone()
        } == *other
    }

    /// Report order: by resource kind and name, then policy and rule.
    fn key(&self) -> (Option<(&str, &str, &str)>, &str, &str) {
        let resource = self
            .resources
            .first()
            .map(|r| (r.kind.as_str(), r.name.as_str(), r.api_version.as_str()));
        (resource, &self.policy, &self.rule)
    }
}

/// `summary`: results per verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(default)]
    pub pass: u32,
    #[serde(default)]
    pub fail: u32,
    #[serde(default)]
    pub warn: u32,
    #[serde(default)]
    pub error: u32,
    #[serde(default)]
    pub skip: u32,
}

/// What the operator owns of one namespace's report (either kind).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportBody {
    #[serde(default)]
    pub results: Vec<ReportResult>,
    #[serde(default)]
    pub summary: Summary,
}

/// The object to server-side apply: `body` in `namespace` as `api`'s kind.
pub fn to_object(api: ReportApi, namespace: &str, body: &ReportBody) -> serde_json::Value {
    let mut object = serde_json::json!({
        "apiVersion": api.api_version(),
        "kind": api.kind(),
        "metadata": {
            "name": keys::POLICY_REPORT_NAME,
            "namespace": namespace,
            "labels": {keys::LABEL_MANAGED_BY: keys::MANAGER_OPERATOR},
        },
        "results": body.results,
        "summary": body.summary,
    });
    // Open Reports names the producer on the report too; wgpolicyk8s.io v1alpha2 only per result
    // (a field its schema lacks would be pruned, and reported as unknown).
    if api == ReportApi::OpenReports {
        object["source"] = keys::POLICY_REPORT_SOURCE.into();
    }
    object
}

/// The [`ReportBody`] of a stored report (either kind); `None` when it does not parse (then it
/// differs from anything the operator would write, and is rewritten).
pub fn body_of(object: &serde_json::Value) -> Option<ReportBody> {
    serde_json::from_value(serde_json::json!({
        "results": object.get("results").cloned().unwrap_or_else(|| serde_json::json!([])),
        "summary": object.get("summary").cloned().unwrap_or_else(|| serde_json::json!({})),
    }))
    .ok()
}

/// What one pod contributes to its workload's `pid1-is-init` result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFinding {
    pub verdict: Verdict,
    pub message: String,
}

/// The `pid1-is-init` finding for one pod: out of scope and mode `off` are skips; otherwise the
/// webhook's `reaper.dev/injected` says what happened. `policy` is the governing policy, if any;
/// `governed` is the scope rule's verdict on the pod ([`PodInfo::governed`]).
pub fn pid1_finding(
    pod: &PodInfo,
    policy: Option<&ReaperPolicy>,
    governed: Result<(), Exclusion>,
) -> PodFinding {
    let f = |verdict, message: String| PodFinding { verdict, message };
    if let Err(why) = governed {
        return f(Verdict::Skip, why.describe());
    }
    // The agents' evidence: an init already reaps for every container.
    if !super::index::is_protected(pod.injected.as_deref())
        && let Some(init) = &pod.init
    {
        return f(
            Verdict::Pass,
            format!("every container already runs an init ({init}), as the node's agent sees it"),
        );
    }
    let Some(injected) = pod.injected.as_deref() else {
        let policy_mode = policy.map_or(Mode::Auto, |p| p.spec.mode);
        if crate::scope::effective_mode(pod.mode.as_deref(), policy_mode) == Ok(Mode::Off) {
            let whose = match (pod.mode.as_deref(), policy) {
                (Some(_), _) => format!("annotation {}", keys::ANNOTATION_MODE),
                (None, Some(p)) => format!("ReaperPolicy {}", name_of(p)),
                (None, None) => "default".into(),
            };
            return f(Verdict::Skip, format!("mode off ({whose})"));
        }
        return f(
            Verdict::Fail,
            format!(
                "not protected: no {} annotation (created before its namespace opted in, or while \
                 the webhook was unreachable); recreate it (kubectl rollout restart) to get a \
                 reaping PID 1",
                keys::ANNOTATION_INJECTED
            ),
        );
    };
    if injected == "share" {
        return f(
            Verdict::Pass,
            "PID namespace shared: the pause container is PID 1 and reaps".into(),
        );
    }
    if let Some(containers) = injected.strip_prefix("inject:") {
        return f(
            Verdict::Pass,
            format!("reaper is PID 1 of container(s) {containers}"),
        );
    }
    if let Some(what) = injected.strip_prefix("audit:") {
        let enforcement = match policy {
            Some(p) if p.spec.enforcement == Enforcement::Audit => {
                format!("ReaperPolicy {} is in Audit enforcement", name_of(p))
            }
            _ => "audited when created".into(),
        };
        return f(
            Verdict::Fail,
            format!("not protected: {enforcement}; the webhook would have applied {what}"),
        );
    }
    if let Some(reason) = injected.strip_prefix("skipped:") {
        if reason == "already-init" {
            return f(
                Verdict::Pass,
                "every target container already runs an init as PID 1".into(),
            );
        }
        let why = match reason {
            "windows" => "a Windows pod",
            "no-targets" => "no container left after the policy's and the pod's container filters",
            "not-wrappable" => {
                "no container's entrypoint is known and the PID namespace could not be shared \
                 (set the policy's entrypoint, or allow the share fallback)"
            }
            other => other,
        };
        return f(Verdict::Skip, format!("skipped by the webhook: {why}"));
    }
    f(
        Verdict::Fail,
        format!(
            "not protected: unrecognised {} value {injected:?}",
            keys::ANNOTATION_INJECTED
        ),
    )
}

fn name_of(p: &ReaperPolicy) -> &str {
    p.metadata.name.as_deref().unwrap_or_default()
}

/// Pods of one workload under one policy.
#[derive(Default)]
struct Group<'a> {
    /// Pod name → its pid1 finding, sorted by name.
    pods: BTreeMap<&'a str, PodFinding>,
    /// Pods in scope (counted by policies) and their zombies.
    in_scope: BTreeMap<&'a str, Option<&'a PodZombies>>,
}

/// The desired report of every governed namespace (opted in and not excluded; one with no pods
/// gets an empty report). `previous(namespace)` is the report stored there, whose unchanged
/// results keep their timestamps.
pub fn build<'p>(
    snapshot: Snapshot<'_>,
    settings: &Settings,
    previous: impl Fn(&str) -> Option<&'p ReportBody>,
    now: Timestamp,
) -> BTreeMap<String, ReportBody> {
    let scope = &settings.scope;
    let governed = settings.governed_namespaces(snapshot.namespaces);
    // namespace → (scope, policy) → pods. A namespace governed whole gets a report even without
    // pods; one where only pods opt in gets one when such a pod exists, about those pods only.
    let mut groups: BTreeMap<&str, BTreeMap<(&ResourceRef, &str), Group<'_>>> = governed
        .iter()
        .filter(|(_, (_, how))| *how == NamespaceScope::All)
        .map(|(ns, _)| (*ns, BTreeMap::new()))
        .collect();
    for pod in snapshot.pods {
        let Some((ns_labels, how)) = governed.get(pod.namespace.as_str()) else {
            continue;
        };
        let governed = pod.governed(scope, ns_labels);
        let in_scope = governed.is_ok();
        if *how != NamespaceScope::All && !in_scope {
            continue;
        }
        let policy = snapshot
            .policies
            .matching(ns_labels, &pod.labels)
            .next()
            .map(|p| p.as_ref());
        let policy_name = policy.map_or(POLICY_NONE, name_of);
        let group = groups
            .entry(pod.namespace.as_str())
            .or_default()
            .entry((&pod.scope, policy_name))
            .or_default();
        group
            .pods
            .insert(pod.name.as_str(), pid1_finding(pod, policy, governed));
        if in_scope {
            group
                .in_scope
                .insert(pod.name.as_str(), snapshot.zombies.get(&pod.uid));
        }
    }
    let stamp = ResultTime {
        seconds: now.as_second(),
        nanos: 0,
    };
    groups
        .into_iter()
        .map(|(ns, groups)| {
            let mut results: Vec<ReportResult> = Vec::new();
            for ((scope, policy), group) in groups {
                let resource = ResultResource {
                    api_version: scope.api_version.clone(),
                    kind: scope.kind.clone(),
                    namespace: ns.to_string(),
                    name: scope.name.clone(),
                    uid: scope.uid.clone(),
                };
                let result =
                    |rule: &str, verdict, severity: &str, message, properties| ReportResult {
                        policy: policy.to_string(),
                        rule: rule.to_string(),
                        result: verdict,
                        message,
                        severity: severity.to_string(),
                        category: CATEGORY.to_string(),
                        scored: true,
                        source: keys::POLICY_REPORT_SOURCE.to_string(),
                        resources: vec![resource.clone()],
                        properties,
                        timestamp: stamp,
                    };
                let (verdict, message, properties) = pid1_of(&group.pods);
                results.push(result(
                    keys::RULE_PID1_IS_INIT,
                    verdict,
                    "medium",
                    message,
                    properties,
                ));
                if !group.in_scope.is_empty() {
                    let (verdict, message, properties) = zombies_of(&group.in_scope);
                    results.push(result(
                        keys::RULE_ZOMBIES,
                        verdict,
                        "high",
                        message,
                        properties,
                    ));
                }
            }
            results.sort_by(|a, b| a.key().cmp(&b.key()));
            if let Some(before) = previous(ns) {
                for r in &mut results {
                    if let Some(old) = before.results.iter().find(|o| o.same_finding(r)) {
                        r.timestamp = old.timestamp;
                    }
                }
            }
            let mut summary = Summary::default();
            for r in &results {
                *match r.result {
                    Verdict::Pass => &mut summary.pass,
                    Verdict::Fail => &mut summary.fail,
                    Verdict::Warn => &mut summary.warn,
                    Verdict::Error => &mut summary.error,
                    Verdict::Skip => &mut summary.skip,
                } += 1;
            }
            (ns.to_string(), ReportBody { results, summary })
        })
        .collect()
}

/// `a, b, c` (at most [`NAMED_PODS`], then `…`).
fn names<'a>(pods: impl IntoIterator<Item = &'a str>) -> String {
    let pods: Vec<&str> = pods.into_iter().collect();
    let mut out = pods
        .iter()
        .take(NAMED_PODS)
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    if pods.len() > NAMED_PODS {
        out.push_str(",…");
    }
    out
}

/// One workload's `pid1-is-init`: the worst verdict of its pods (fail, then pass, then skip).
fn pid1_of(pods: &BTreeMap<&str, PodFinding>) -> (Verdict, String, BTreeMap<String, String>) {
    let verdict = [Verdict::Fail, Verdict::Pass, Verdict::Skip]
        .into_iter()
        .find(|v| pods.values().any(|f| f.verdict == *v))
        .unwrap_or(Verdict::Skip);
    let with: Vec<(&str, &PodFinding)> = pods
        .iter()
        .filter(|(_, f)| f.verdict == verdict)
        .map(|(n, f)| (*n, f))
        .collect();
    let messages: BTreeSet<&str> = with.iter().map(|(_, f)| f.message.as_str()).collect();
    let messages = messages.into_iter().collect::<Vec<_>>().join("; ");
    let message = match (pods.len(), with.len()) {
        (1, _) => messages,
        (n, k) if k == n => format!("all {n} pods: {messages}"),
        (n, k) => format!("{k} of {n} pods: {messages}"),
    };
    let mut properties = BTreeMap::from([("pods".to_string(), pods.len().to_string())]);
    if verdict == Verdict::Fail {
        properties.insert(
            "unprotectedPods".into(),
            names(with.iter().map(|(n, _)| *n)),
        );
    }
    (verdict, message, properties)
}

/// One workload's `zombies`: fail with the count, the parents' process names (most zombies
/// first) and the pods holding them; pass when there are none.
fn zombies_of(
    pods: &BTreeMap<&str, Option<&PodZombies>>,
) -> (Verdict, String, BTreeMap<String, String>) {
    let total: u32 = pods
        .values()
        .map(|z| z.map_or(0, |z| z.total))
        .fold(0, u32::saturating_add);
    if total == 0 {
        let message = match pods.len() {
            1 => "no zombie processes".to_string(),
            n => format!("no zombie processes in its {n} pods"),
        };
        return (Verdict::Pass, message, BTreeMap::new());
    }
    let mut parents: BTreeMap<&str, u32> = BTreeMap::new();
    for c in pods.values().flatten().flat_map(|z| &z.containers) {
        if c.parents.is_empty() {
            let comm = if c.parent_comm.is_empty() {
                "unknown"
            } else {
                c.parent_comm.as_str()
            };
            *parents.entry(comm).or_default() += c.count;
        }
        for (comm, count) in &c.parents {
            *parents.entry(comm.as_str()).or_default() += count;
        }
    }
    let mut parents: Vec<(&str, u32)> = parents.into_iter().collect();
    parents.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let holding: Vec<(&str, u32)> = pods
        .iter()
        .filter_map(|(name, z)| Some((*name, z.map(|z| z.total).filter(|t| *t > 0)?)))
        .collect();
    let held_by = parents
        .iter()
        .map(|(comm, count)| format!("{comm} ({count})"))
        .collect::<Vec<_>>()
        .join(", ");
    let in_pods = holding
        .iter()
        .take(NAMED_PODS)
        .map(|(name, count)| format!("{name}: {count}"))
        .collect::<Vec<_>>()
        .join(", ");
    let message = format!(
        "{total} zombie process{} in {} of {} pod{} ({in_pods}{}); not reaped by: {held_by}",
        if total == 1 { "" } else { "es" },
        holding.len(),
        pods.len(),
        if pods.len() == 1 { "" } else { "s" },
        if holding.len() > NAMED_PODS {
            ", …"
        } else {
            ""
        },
    );
    let properties = BTreeMap::from([
        ("zombies".to_string(), total.to_string()),
        (
            "parents".to_string(),
            parents
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("pods".to_string(), names(holding.iter().map(|(n, _)| *n))),
    ]);
    (Verdict::Fail, message, properties)
}

#[cfg(test)]
mod tests {
    use super::super::index::{Owner, index_zombies};
    use super::*;
    use crate::crd::{
        ContainerZombies, PolicySet, ReaperPolicySpec, ZombieParent, ZombieReportSpec,
    };
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

    fn policy(name: &str, f: impl FnOnce(&mut ReaperPolicySpec)) -> Arc<ReaperPolicy> {
        let mut spec = ReaperPolicySpec::default();
        f(&mut spec);
        Arc::new(ReaperPolicy::new(name, spec))
    }

    fn scope(api_version: &str, kind: &str, name: &str) -> ResourceRef {
        ResourceRef {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("{name}-uid"),
        }
    }

    fn pod(ns: &str, name: &str, injected: Option<&str>, scope: ResourceRef) -> PodInfo {
        PodInfo {
            init: None,
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{ns}-{name}"),
            labels: labels(&[("app", "web")]),
            injected: injected.map(String::from),
            mode: None,
            mirror: false,
            restarted_at: None,
            owner: Owner::Bare,
            scope,
        }
    }

    fn deployment(name: &str) -> ResourceRef {
        scope("apps/v1", "Deployment", name)
    }

    fn bare(name: &str) -> ResourceRef {
        scope("v1", "Pod", name)
    }

    /// (pod, container, count, parents' (comm, count))
    type Entry<'a> = (&'a PodInfo, &'a str, u32, &'a [(&'a str, u32)]);

    fn zombies(entries: &[Entry<'_>]) -> HashMap<String, PodZombies> {
        let report = ZombieReportSpec {
            node_name: "n1".into(),
            containers: entries
                .iter()
                .map(|(p, c, count, parents)| ContainerZombies {
                    pod_uid: p.uid.clone(),
                    container_id: "f".repeat(64),
                    container: Some(c.to_string()),
                    count: *count,
                    parents: parents
                        .iter()
                        .map(|(comm, n)| ZombieParent {
                            pid: 42,
                            comm: comm.to_string(),
                            count: *n,
                            oldest_age_seconds: 0,
                        })
                        .collect(),
                    ..Default::default()
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
                labels(&[("reaper.dev/inject", "enabled")]),
            ),
            (
                "empty".to_string(),
                labels(&[("reaper.dev/inject", "enabled")]),
            ),
            ("legacy".to_string(), labels(&[])),
            (
                "kube-system".to_string(),
                labels(&[("reaper.dev/inject", "enabled")]),
            ),
        ])
    }

    fn run(
        policies: &PolicySet,
        pods: &[PodInfo],
        zombies: &HashMap<String, PodZombies>,
        previous: &BTreeMap<String, ReportBody>,
        at: Timestamp,
    ) -> BTreeMap<String, ReportBody> {
        run_with(&Settings::default(), policies, pods, zombies, previous, at)
    }

    fn run_with(
        settings: &Settings,
        policies: &PolicySet,
        pods: &[PodInfo],
        zombies: &HashMap<String, PodZombies>,
        previous: &BTreeMap<String, ReportBody>,
        at: Timestamp,
    ) -> BTreeMap<String, ReportBody> {
        build(
            Snapshot {
                policies,
                namespaces: &namespaces(),
                pods,
                zombies,
            },
            settings,
            |ns: &str| previous.get(ns),
            at,
        )
    }

    /// Pod opt-in: an unlabelled namespace gets a report about its opted-in pods only, and none
    /// without them; under opt-out every namespace not excluded is reported whole.
    #[test]
    fn reports_follow_the_selection() {
        let policies = PolicySet::new([policy("web", |_| {})]);
        let mut joined = pod("legacy", "joined", None, bare("joined"));
        joined
            .labels
            .insert(keys::LABEL_INJECT.into(), keys::INJECT_ENABLED.into());
        let plain = pod("legacy", "plain", None, bare("plain"));
        let system = pod("kube-system", "dns", None, bare("dns"));
        let pods = vec![joined, plain.clone(), system];
        let none = HashMap::new();
        let prev = BTreeMap::new();
        let reports = run(&policies, &pods, &none, &prev, now());
        assert_eq!(
            reports.keys().collect::<Vec<_>>(),
            ["empty", "legacy", "shop"]
        );
        let names = |body: &ReportBody| {
            body.results
                .iter()
                .map(|r| r.resources[0].name.clone())
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(
            names(&reports["legacy"]),
            BTreeSet::from(["joined".to_string()])
        );
        // Without pod opt-in the unlabelled namespace takes no part; nor without opted-in pods.
        let mut no_pods = Settings::default();
        no_pods.scope.pod_opt_in = false;
        let reports = run_with(&no_pods, &policies, &pods, &none, &prev, now());
        assert_eq!(reports.keys().collect::<Vec<_>>(), ["empty", "shop"]);
        let reports = run(&policies, &[plain], &none, &prev, now());
        assert_eq!(reports.keys().collect::<Vec<_>>(), ["empty", "shop"]);
        // Opt-out: legacy is reported whole; kube-system stays excluded.
        let mut opt_out = Settings::default();
        opt_out.scope.selection = crate::scope::Selection::OptOut;
        let reports = run_with(&opt_out, &policies, &pods, &none, &prev, now());
        assert_eq!(
            reports.keys().collect::<Vec<_>>(),
            ["empty", "legacy", "shop"]
        );
        assert_eq!(
            names(&reports["legacy"]),
            BTreeSet::from(["joined".to_string(), "plain".to_string()])
        );
    }

    /// (kind/name, policy, rule, result) of every result, in report order.
    fn summary_rows(body: &ReportBody) -> Vec<(String, String, String, Verdict)> {
        body.results
            .iter()
            .map(|r| {
                (
                    format!("{}/{}", r.resources[0].kind, r.resources[0].name),
                    r.policy.clone(),
                    r.rule.clone(),
                    r.result,
                )
            })
            .collect()
    }

    fn find<'a>(body: &'a ReportBody, name: &str, rule: &str) -> &'a ReportResult {
        body.results
            .iter()
            .find(|r| r.resources[0].name == name && r.rule == rule)
            .unwrap_or_else(|| panic!("no {rule} result for {name}: {body:#?}"))
    }

    #[test]
    fn findings_per_annotation_scope_and_mode() {
        let scope = Settings::default().scope;
        let shop = namespaces()["shop"].clone();
        let p = |injected: Option<&str>| pod("shop", "p", injected, bare("p"));
        let v = |pod: &PodInfo, policy: Option<&ReaperPolicy>| {
            pid1_finding(pod, policy, pod.governed(&scope, &shop))
        };
        // Not mutated, but the agent sees an init in every container: protected.
        let mut with_init = pod("shop", "p", None, bare("p"));
        with_init.init = Some("tini".into());
        let f = v(&with_init, None);
        assert_eq!(f.verdict, Verdict::Pass, "{f:?}");
        assert!(f.message.contains("already runs an init (tini)"), "{f:?}");
        for (injected, verdict, needle) in [
            (Some("share"), Verdict::Pass, "PID namespace shared"),
            (Some("inject:app,sidecar"), Verdict::Pass, "app,sidecar"),
            (
                Some("skipped:already-init"),
                Verdict::Pass,
                "already runs an init",
            ),
            (Some("skipped:windows"), Verdict::Skip, "Windows"),
            (
                Some("skipped:no-targets"),
                Verdict::Skip,
                "container filters",
            ),
            (Some("skipped:not-wrappable"), Verdict::Skip, "entrypoint"),
            (
                Some("audit:share"),
                Verdict::Fail,
                "would have applied share",
            ),
            (Some("audit:inject:app"), Verdict::Fail, "inject:app"),
            (None, Verdict::Fail, "no reaper.dev/injected annotation"),
            (Some("bogus"), Verdict::Fail, "unrecognised"),
        ] {
            let f = v(&p(injected), None);
            assert_eq!(f.verdict, verdict, "{injected:?}: {f:?}");
            assert!(f.message.contains(needle), "{injected:?}: {f:?}");
        }
        let audit = policy("audit", |s| s.enforcement = Enforcement::Audit);
        assert!(
            v(&p(Some("audit:share")), Some(&audit))
                .message
                .contains("ReaperPolicy audit is in Audit enforcement")
        );
        // Out of scope and mode off: skips with the reason, whatever the annotation.
        let mut out = p(Some("share"));
        out.labels
            .insert(keys::LABEL_INJECT.into(), keys::INJECT_DISABLED.into());
        let f = v(&out, None);
        assert_eq!(
            (f.verdict, f.message.as_str()),
            (
                Verdict::Skip,
                "opted out (label reaper.dev/inject=disabled)"
            )
        );
        let mut mirror = p(None);
        mirror.mirror = true;
        assert!(v(&mirror, None).message.contains("static (mirror) pod"));
        let mut off = p(None);
        off.mode = Some("off".into());
        assert_eq!(
            v(&off, None),
            PodFinding {
                verdict: Verdict::Skip,
                message: "mode off (annotation reaper.dev/mode)".into()
            }
        );
        let off_policy = policy("quiet", |s| s.mode = Mode::Off);
        assert_eq!(
            v(&p(None), Some(&off_policy)).message,
            "mode off (ReaperPolicy quiet)"
        );
        // An annotation on the pod overrides the policy's off.
        let mut on = p(None);
        on.mode = Some("share".into());
        assert_eq!(v(&on, Some(&off_policy)).verdict, Verdict::Fail);
    }

    #[test]
    fn results_are_scoped_to_workloads_with_zombies_named_and_summed() {
        let policies = PolicySet::new([policy("web", |_| {})]);
        let web1 = pod("shop", "web-1", None, deployment("web"));
        let web2 = pod("shop", "web-2", None, deployment("web"));
        let safe = pod("shop", "safe-1", Some("share"), deployment("safe"));
        let solo = pod("shop", "solo", Some("inject:app"), bare("solo"));
        let cron = pod(
            "shop",
            "nightly-28000000-x",
            Some("skipped:windows"),
            scope("batch/v1", "CronJob", "nightly"),
        );
        let mut opted_out = pod("shop", "manual", None, bare("manual"));
        opted_out
            .labels
            .insert(keys::LABEL_INJECT.into(), keys::INJECT_DISABLED.into());
        let legacy = pod("legacy", "old", None, bare("old"));
        let system = pod("kube-system", "dns", None, bare("dns"));
        let z = zombies(&[
            (&web1, "app", 3, &[("php-fpm", 2), ("sh", 1)]),
            (&web2, "app", 2, &[("php-fpm", 2)]),
            (&opted_out, "app", 9, &[("java", 9)]),
            (&legacy, "app", 9, &[("java", 9)]),
        ]);
        let pods = vec![
            web2.clone(),
            safe,
            solo,
            web1,
            cron,
            opted_out,
            legacy,
            system,
        ];
        let reports = run(&policies, &pods, &z, &BTreeMap::new(), now());
        assert_eq!(
            reports.keys().collect::<Vec<_>>(),
            ["empty", "shop"],
            "opted-in namespaces only, kube-system excluded"
        );
        assert_eq!(reports["empty"], ReportBody::default());
        let shop = &reports["shop"];
        // Sorted by resource (kind, then name), policy, rule.
        let rows: Vec<(String, String, String, Verdict)> = [
            ("CronJob/nightly", "pid1-is-init", Verdict::Skip),
            ("CronJob/nightly", "zombies", Verdict::Pass),
            ("Deployment/safe", "pid1-is-init", Verdict::Pass),
            ("Deployment/safe", "zombies", Verdict::Pass),
            ("Deployment/web", "pid1-is-init", Verdict::Fail),
            ("Deployment/web", "zombies", Verdict::Fail),
            ("Pod/manual", "pid1-is-init", Verdict::Skip),
            ("Pod/solo", "pid1-is-init", Verdict::Pass),
            ("Pod/solo", "zombies", Verdict::Pass),
        ]
        .into_iter()
        .map(|(r, rule, v)| (r.to_string(), "web".to_string(), rule.to_string(), v))
        .collect();
        assert_eq!(summary_rows(shop), rows);
        assert_eq!(
            shop.summary,
            Summary {
                pass: 5,
                fail: 2,
                warn: 0,
                error: 0,
                skip: 2
            }
        );

        let pid1 = find(shop, "web", keys::RULE_PID1_IS_INIT);
        assert_eq!(
            pid1.resources,
            [ResultResource {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                namespace: "shop".into(),
                name: "web".into(),
                uid: "web-uid".into(),
            }]
        );
        assert!(
            pid1.message
                .starts_with("all 2 pods: not protected: no reaper.dev/injected annotation"),
            "{}",
            pid1.message
        );
        assert_eq!(pid1.properties["unprotectedPods"], "web-1,web-2");
        assert_eq!(pid1.properties["pods"], "2");
        assert_eq!(
            (
                pid1.source.as_str(),
                pid1.category.as_str(),
                pid1.severity.as_str(),
                pid1.scored
            ),
            ("reaper", CATEGORY, "medium", true)
        );
        assert_eq!(pid1.timestamp.seconds, now().as_second());

        let zombies = find(shop, "web", keys::RULE_ZOMBIES);
        assert_eq!(
            zombies.message,
            "5 zombie processes in 2 of 2 pods (web-1: 3, web-2: 2); not reaped by: php-fpm (4), sh (1)"
        );
        assert_eq!(zombies.properties["zombies"], "5");
        assert_eq!(zombies.properties["parents"], "php-fpm,sh");
        assert_eq!(zombies.properties["pods"], "web-1,web-2");
        assert_eq!(zombies.severity, "high");
        assert_eq!(
            find(shop, "solo", keys::RULE_ZOMBIES).message,
            "no zombie processes"
        );
        assert!(
            !shop
                .results
                .iter()
                .any(|r| r.resources[0].name == "manual" && r.rule == keys::RULE_ZOMBIES),
            "out-of-scope pods get no zombies result (policies do not count them)"
        );
        // Input order does not matter.
        let mut reversed = pods.clone();
        reversed.reverse();
        assert_eq!(
            run(&policies, &reversed, &z, &BTreeMap::new(), now()),
            reports
        );
    }

    #[test]
    fn a_rollout_reports_the_worst_and_policies_split_a_workload() {
        let policies = PolicySet::new([policy("canary", |s| {
            s.priority = 5;
            s.pod_selector = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some(labels(&[("track", "canary")])),
                    ..Default::default()
                },
            )
        })]);
        let old = pod("shop", "web-old", None, deployment("web"));
        let new = pod("shop", "web-new", Some("share"), deployment("web"));
        let skipped = pod(
            "shop",
            "web-win",
            Some("skipped:windows"),
            deployment("web"),
        );
        let mut canary = pod("shop", "web-canary", Some("share"), deployment("web"));
        canary.labels.insert("track".into(), "canary".into());
        let none = HashMap::new();
        let shop = &run(
            &policies,
            &[old, new.clone(), skipped.clone(), canary],
            &none,
            &BTreeMap::new(),
            now(),
        )["shop"];
        let pid1: Vec<(&str, Verdict, &str)> = shop
            .results
            .iter()
            .filter(|r| r.rule == keys::RULE_PID1_IS_INIT)
            .map(|r| (r.policy.as_str(), r.result, r.message.as_str()))
            .collect();
        assert_eq!(pid1.len(), 2, "{pid1:#?}");
        assert_eq!(pid1[0].0, POLICY_NONE, "no ReaperPolicy selects web-old");
        assert_eq!(pid1[0].1, Verdict::Fail);
        assert!(
            pid1[0].2.starts_with("1 of 3 pods: not protected"),
            "{}",
            pid1[0].2
        );
        assert_eq!((pid1[1].0, pid1[1].1), ("canary", Verdict::Pass));
        // Rolled out: the pass wins over the skip.
        let shop = &run(&policies, &[new, skipped], &none, &BTreeMap::new(), now())["shop"];
        let r = find(shop, "web", keys::RULE_PID1_IS_INIT);
        assert_eq!(r.result, Verdict::Pass);
        assert_eq!(
            r.message,
            "1 of 2 pods: PID namespace shared: the pause container is PID 1 and reaps"
        );
        assert!(!r.properties.contains_key("unprotectedPods"));
    }

    #[test]
    fn unchanged_results_keep_their_timestamp_and_the_body_round_trips() {
        let policies = PolicySet::new([policy("web", |_| {})]);
        let web = pod("shop", "web-1", None, deployment("web"));
        let solo = pod("shop", "solo", Some("share"), bare("solo"));
        let pods = vec![web.clone(), solo];
        let first = run(
            &policies,
            &pods,
            &zombies(&[(&web, "app", 2, &[("sh", 2)])]),
            &BTreeMap::new(),
            now(),
        );
        let later = now() + jiff::SignedDuration::from_mins(10);
        // Same cluster later: identical report (nothing to write).
        let again = run(
            &policies,
            &pods,
            &zombies(&[(&web, "app", 2, &[("sh", 2)])]),
            &first,
            later,
        );
        assert_eq!(again, first);
        // The zombies go: only that result changes, and gets the new time.
        let reaped = run(&policies, &pods, &HashMap::new(), &first, later);
        assert_ne!(reaped, first);
        let z = find(&reaped["shop"], "web", keys::RULE_ZOMBIES);
        assert_eq!(
            (z.result, z.timestamp.seconds),
            (Verdict::Pass, later.as_second())
        );
        let p = find(&reaped["shop"], "web", keys::RULE_PID1_IS_INIT);
        assert_eq!(p.timestamp.seconds, now().as_second());
        assert_eq!(reaped["shop"].summary.fail, 1);

        // What the API server stores parses back to the same body, for both kinds.
        for api in ReportApi::ALL {
            let object = to_object(api, "shop", &first["shop"]);
            assert_eq!(object["apiVersion"], api.api_version());
            assert_eq!(object["kind"], api.kind());
            assert_eq!(object["metadata"]["name"], keys::POLICY_REPORT_NAME);
            assert_eq!(object["metadata"]["namespace"], "shop");
            assert_eq!(
                object["metadata"]["labels"][keys::LABEL_MANAGED_BY],
                keys::MANAGER_OPERATOR
            );
            assert_eq!(
                object.get("source").and_then(|s| s.as_str()),
                (api == ReportApi::OpenReports).then_some("reaper")
            );
            assert_eq!(object["results"][0]["timestamp"]["nanos"], 0);
            assert_eq!(body_of(&object).as_ref(), Some(&first["shop"]));
        }
        assert_eq!(
            body_of(&serde_json::json!({"results": [{"policy": "x", "result": "nope"}]})),
            None
        );
        assert_eq!(body_of(&serde_json::json!({})), Some(ReportBody::default()));
    }

    #[test]
    fn choice_of_api() {
        use PolicyReports::*;
        let served = |apis: &[ReportApi]| apis.iter().copied().collect::<BTreeSet<_>>();
        let both = served(&ReportApi::ALL);
        let wg = served(&[ReportApi::WgPolicyK8s]);
        let none = served(&[]);
        assert_eq!(choose(Auto, &both), Some(ReportApi::OpenReports));
        assert_eq!(choose(Auto, &wg), Some(ReportApi::WgPolicyK8s));
        assert_eq!(choose(Auto, &none), None);
        assert_eq!(choose(WgPolicyK8s, &both), Some(ReportApi::WgPolicyK8s));
        assert_eq!(choose(OpenReports, &wg), None);
        assert_eq!(choose(Off, &both), None);
        assert_eq!(
            ReportApi::WgPolicyK8s.resource().api_version,
            "wgpolicyk8s.io/v1alpha2"
        );
    }
}
