// kube-derive repeats `type_ = "..."` across printcolumns, which clippy mistakes for duplicates.
#![allow(clippy::duplicated_attributes)]

use super::selector::{SelectorError, matches_valid, validate_selector};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// What Reaper does for the pods a policy matches.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "reaper.dev",
    version = "v1alpha1",
    kind = "ReaperPolicy",
    plural = "reaperpolicies",
    shortname = "rp",
    status = "ReaperPolicyStatus",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Enforcement",
        type_ = "string",
        json_path = ".spec.enforcement"
    ),
    printcolumn(name = "Matched", type_ = "integer", json_path = ".status.matchedPods"),
    printcolumn(
        name = "Protected",
        type_ = "integer",
        json_path = ".status.protectedPods"
    ),
    printcolumn(name = "Zombies", type_ = "integer", json_path = ".status.zombies"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ReaperPolicySpec {
    /// When several policies match a pod, the highest priority wins; ties go to the
    /// alphabetically first name (and are reported as `Conflicting` in status).
    #[serde(default)]
    pub priority: i32,
    /// Namespaces this policy applies to (among the opted-in ones). Empty or absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods this policy applies to. Empty or absent: all pods of the matched namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// How PID 1 is fixed: `Auto` (wrap when every target container's argv is known, else
    /// share), `Inject` (wrap entrypoints with reaper, copied in by an init container), `Image`
    /// (wrap entrypoints with reaper, mounted from its image as an image volume), `Share`
    /// (shareProcessNamespace), `Off`.
    #[serde(default)]
    pub mode: Mode,
    /// Whether wrapped containers may get the reaper from an image volume (`volumes[].image`,
    /// Kubernetes ≥ 1.35 and containerd ≥ 2.1 or CRI-O ≥ 1.31) instead of the `reaper-install`
    /// init container: `Allowed` (`Image` uses one; `Auto` uses one when the webhook found that
    /// the cluster supports them; `Inject` keeps the init container), `Required` (every wrap of
    /// this policy uses one, detected or not), `Forbidden` (never; `Image` then falls back to the
    /// init container, with a warning).
    #[serde(default)]
    pub image_volume: ImageVolume,
    /// What `Auto` does with a pod whose target containers cannot all be wrapped (an image whose
    /// argv is unknown, e.g. its registry did not answer in time): `Share` sets
    /// shareProcessNamespace (every container then sees the others' processes, environment and
    /// files through `/proc/<pid>/root`, and clusters that forbid it reject the pod); `None`
    /// admits the pod unchanged with a warning (use `Inject` for pods that must always be wrapped).
    #[serde(default)]
    pub fallback: Fallback,
    /// `Enforce` mutates pods; `Audit` only annotates `reaper.dev/injected: audit:<plan>` and warns.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Which containers to wrap (by name). Regular containers and native sidecars are targets by default.
    #[serde(default, skip_serializing_if = "ContainerFilter::is_empty")]
    pub containers: ContainerFilter,
    /// Also wrap ordinary (run-to-completion) init containers.
    #[serde(default)]
    pub init_containers: bool,
    /// Options passed to the injected reaper on its command line (before `--`).
    #[serde(default, skip_serializing_if = "ReaperOptions::is_default")]
    pub reaper: ReaperOptions,
    /// Explicit argv for images whose config cannot be read from their registry. These win over
    /// registry lookups. The first entry whose `image` glob matches the container image is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoints: Vec<EntrypointOverride>,
    /// What the operator does about zombies in matched pods.
    #[serde(default)]
    pub zombies: ZombiePolicy,
}

/// How PID 1 is fixed. In annotations and flags the same values are written in lower case.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Mode {
    /// Inject when every target container's argv is known, otherwise share the PID namespace.
    #[default]
    Auto,
    /// Wrap each target container's entrypoint with `reaper --` (the binary copied into an
    /// emptyDir by the `reaper-install` init container).
    Inject,
    /// Wrap as `Inject` does, the binary mounted read-only from the reaper image (an image
    /// volume): no init container, no emptyDir.
    Image,
    /// Set `shareProcessNamespace: true` so the pause container is PID 1 and reaps.
    Share,
    /// Leave pods alone.
    Off,
}

impl Mode {
    /// Lower-case form used by the `reaper.dev/mode` annotation and the `--default-mode` flag.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Inject => "inject",
            Mode::Image => "image",
            Mode::Share => "share",
            Mode::Off => "off",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Accepts `auto|inject|image|share|off` in any case.
impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Mode::Auto),
            "inject" => Ok(Mode::Inject),
            "image" => Ok(Mode::Image),
            "share" => Ok(Mode::Share),
            "off" => Ok(Mode::Off),
            other => Err(format!(
                "unknown mode {other:?}: expected auto, inject, image, share or off"
            )),
        }
    }
}

/// Whether a policy's wrapped containers get the reaper from an image volume.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ImageVolume {
    /// Mode `Image` uses one; `Auto` uses one where the cluster supports them (detected by the
    /// webhook); `Inject` keeps the init container.
    #[default]
    Allowed,
    /// Every wrap uses one (`Auto`, `Inject` and `Image` alike), whatever the detection says.
    Required,
    /// None: the `reaper-install` init container always (`Image` falls back to it, warning).
    Forbidden,
}

/// What `Auto` falls back to when not every target container can be wrapped.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Fallback {
    /// Share the pod's PID namespace (the pause container reaps).
    #[default]
    Share,
    /// Leave the pod unchanged, with a warning.
    None,
}

/// Whether a policy changes pods or only reports what it would do.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Enforcement {
    /// Mutate pods.
    #[default]
    Enforce,
    /// Annotate `audit:<plan>` and warn; change nothing else.
    Audit,
}

/// Container names to include or exclude.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerFilter {
    /// Only these containers (empty: every target container).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Never these containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

impl ContainerFilter {
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
    /// Whether a container of this name passes the filter.
    pub fn allows(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|n| n == name))
            && !self.exclude.iter().any(|n| n == name)
    }
}

/// Command-line options for the injected reaper.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReaperOptions {
    /// Drain time after the main process exits (`--grace`), e.g. `5s`, `500ms`; `0` exits at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(0|[0-9]+(ms|s|m))$"))]
    pub grace: Option<String>,
    /// Run the app in its own process group and signal the whole group (`--process-group`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub process_group: bool,
    /// Signal rewrites `FROM:TO` (`--rewrite`), e.g. `TERM:QUIT` or `15:3`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewrite: Vec<SignalRewrite>,
    /// Log verbosity of the reaper (number of `-v`).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0, max = 3))]
    pub verbosity: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

impl ReaperOptions {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// The reaper flags these options stand for, in a stable order (placed before `--`).
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(grace) = &self.grace {
            flags.push(format!("--grace={grace}"));
        }
        if self.process_group {
            flags.push("--process-group".to_string());
        }
        for r in &self.rewrite {
            flags.push(format!("--rewrite={}", r.0));
        }
        if self.verbosity > 0 {
            flags.push(format!("-{}", "v".repeat(self.verbosity.min(3) as usize)));
        }
        flags
    }
}

/// A signal rewrite `FROM:TO`; signals by name (`TERM`, `SIGTERM`) or number.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct SignalRewrite(
    #[schemars(regex(pattern = r"^(SIG)?[A-Z0-9+]+:(SIG)?[A-Z0-9+]+$"))] pub String,
);

/// An explicit argv for images matching a glob.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntrypointOverride {
    /// Glob over the full image reference (`*` matches any run of characters), e.g.
    /// `registry.example.com/team/*` or `*/nginx:*`.
    pub image: String,
    /// The image's ENTRYPOINT.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The image's CMD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// Zombie handling by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZombiePolicy {
    /// Zombies in one pod at which the operator records a `ZombiesDetected` Event (and acts).
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 1))]
    pub threshold: u32,
    /// `Event` (default) only records Events; `Restart` also restarts the owning workload of an
    /// unprotected pod so the webhook protects its new pods.
    #[serde(default)]
    pub action: ZombieAction,
    /// Minimum time between two restarts of one workload (`Restart` action), e.g. `1h`.
    #[serde(default = "default_cooldown")]
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub cooldown: String,
}

fn default_threshold() -> u32 {
    5
}
fn default_cooldown() -> String {
    "1h".to_string()
}

impl Default for ZombiePolicy {
    fn default() -> Self {
        Self {
            threshold: default_threshold(),
            action: ZombieAction::default(),
            cooldown: default_cooldown(),
        }
    }
}

/// What to do when a pod reaches the zombie threshold.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ZombieAction {
    /// Record a `ZombiesDetected` Event on the pod.
    #[default]
    Event,
    /// Record the Event and roll out the owning Deployment, StatefulSet or DaemonSet (unprotected pods only).
    Restart,
}

/// Written by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReaperPolicyStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (reasons: `Reconciled`, `InvalidSelector`, `Conflicting`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Governed namespaces this policy selects: whole (opted in, or any under opt-out) or through
    /// a pod that opts in.
    #[serde(default)]
    pub matched_namespaces: u32,
    /// Pods this policy governs (it is their winning policy).
    #[serde(default)]
    pub matched_pods: u32,
    /// Matched pods carrying `reaper.dev/injected: share` or `inject:...`.
    #[serde(default)]
    pub protected_pods: u32,
    /// Matched pods without protection.
    #[serde(default)]
    pub unprotected_pods: u32,
    /// Zombies currently reported in matched pods.
    #[serde(default)]
    pub zombies: u32,
    /// The containers with the most zombies, worst first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_offenders: Vec<Offender>,
    /// When this status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<Time>,
}

/// A container holding zombies.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Offender {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// Zombies in this container.
    pub count: u32,
    /// `comm` of the process that fails to reap them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent_comm: String,
    /// Age in seconds of the oldest of them.
    #[serde(default)]
    pub age_seconds: u64,
}

fn policy_selects(
    spec: &ReaperPolicySpec,
    namespace_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
) -> bool {
    spec.namespace_selector
        .as_ref()
        .is_none_or(|s| matches_valid(s, namespace_labels))
        && spec
            .pod_selector
            .as_ref()
            .is_none_or(|s| matches_valid(s, pod_labels))
}

/// Every policy a component knows, in precedence order: highest `priority` first, ties broken by
/// name. Selectors are checked once here; a policy with an invalid selector never matches (the
/// operator reports it as `InvalidSelector`).
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    entries: Vec<PolicyEntry>,
}

/// One policy of a [`PolicySet`] and, when one of its selectors is invalid, why.
#[derive(Clone, Debug)]
pub struct PolicyEntry {
    pub policy: std::sync::Arc<ReaperPolicy>,
    pub invalid: Option<SelectorError>,
}

impl PolicySet {
    pub fn new(policies: impl IntoIterator<Item = std::sync::Arc<ReaperPolicy>>) -> Self {
        let mut entries: Vec<PolicyEntry> = policies
            .into_iter()
            .map(|policy| {
                let invalid = [&policy.spec.namespace_selector, &policy.spec.pod_selector]
                    .into_iter()
                    .flatten()
                    .find_map(|s| validate_selector(s).err());
                PolicyEntry { policy, invalid }
            })
            .collect();
        entries.sort_by(|a, b| {
            b.policy
                .spec
                .priority
                .cmp(&a.policy.spec.priority)
                .then_with(|| a.policy.metadata.name.cmp(&b.policy.metadata.name))
        });
        Self { entries }
    }

    /// All policies in precedence order.
    pub fn entries(&self) -> &[PolicyEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Policies selecting a pod with these labels in a namespace with these labels, winner first.
    pub fn matching<'a>(
        &'a self,
        namespace_labels: &'a BTreeMap<String, String>,
        pod_labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a std::sync::Arc<ReaperPolicy>> + 'a {
        self.entries
            .iter()
            .filter(|e| e.invalid.is_none())
            .filter(move |e| policy_selects(&e.policy.spec, namespace_labels, pod_labels))
            .map(|e| &e.policy)
    }

    /// The policy governing a pod: the first of [`PolicySet::matching`].
    pub fn winner(
        &self,
        namespace_labels: &BTreeMap<String, String>,
        pod_labels: &BTreeMap<String, String>,
    ) -> Option<&std::sync::Arc<ReaperPolicy>> {
        self.entries
            .iter()
            .filter(|e| e.invalid.is_none())
            .find(|e| policy_selects(&e.policy.spec, namespace_labels, pod_labels))
            .map(|e| &e.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parses_any_case_and_prints_lower() {
        for (s, m) in [
            ("auto", Mode::Auto),
            ("Inject", Mode::Inject),
            ("IMAGE", Mode::Image),
            ("SHARE", Mode::Share),
            ("off", Mode::Off),
        ] {
            assert_eq!(s.parse::<Mode>().unwrap(), m);
            assert_eq!(m.to_string(), s.to_ascii_lowercase());
        }
        assert!("sometimes".parse::<Mode>().is_err());
    }

    #[test]
    fn spec_defaults_from_empty_object() {
        let spec: ReaperPolicySpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.mode, Mode::Auto);
        assert_eq!(spec.image_volume, ImageVolume::Allowed);
        assert_eq!(spec.enforcement, Enforcement::Enforce);
        assert_eq!(spec.zombies.threshold, 5);
        assert_eq!(spec.zombies.cooldown, "1h");
    }

    #[test]
    fn reaper_options_to_flags() {
        let o = ReaperOptions {
            grace: Some("5s".into()),
            process_group: true,
            rewrite: vec![SignalRewrite("TERM:QUIT".into())],
            verbosity: 2,
        };
        assert_eq!(
            o.to_flags(),
            [
                "--grace=5s",
                "--process-group",
                "--rewrite=TERM:QUIT",
                "-vv"
            ]
        );
        assert!(ReaperOptions::default().to_flags().is_empty());
    }

    fn named(
        name: &str,
        priority: i32,
        pod_selector: Option<LabelSelector>,
    ) -> std::sync::Arc<ReaperPolicy> {
        let mut p = ReaperPolicy::new(
            name,
            ReaperPolicySpec {
                priority,
                pod_selector,
                ..Default::default()
            },
        );
        p.metadata.name = Some(name.to_string());
        std::sync::Arc::new(p)
    }

    #[test]
    fn policy_set_precedence() {
        let app = |v: &str| LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_string(), v.to_string())])),
            ..Default::default()
        };
        let invalid = LabelSelector {
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "app".into(),
                    operator: "Maybe".into(),
                    values: None,
                },
            ]),
            ..Default::default()
        };
        let set = PolicySet::new([
            named("zeta", 5, None),
            named("alpha", 5, None),
            named("web-only", 10, Some(app("web"))),
            named("broken", 100, Some(invalid)),
            named("low", -1, None),
        ]);
        let names: Vec<_> = set
            .entries()
            .iter()
            .map(|e| e.policy.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["broken", "web-only", "alpha", "zeta", "low"]);
        assert!(set.entries()[0].invalid.is_some());
        let ns = BTreeMap::new();
        let web = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let db = BTreeMap::from([("app".to_string(), "db".to_string())]);
        let winner = |l| set.winner(&ns, l).unwrap().metadata.name.clone().unwrap();
        assert_eq!(winner(&web), "web-only");
        // Ties go to the alphabetically first name; the invalid policy never matches.
        assert_eq!(winner(&db), "alpha");
        let all: Vec<_> = set
            .matching(&ns, &db)
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(all, ["alpha", "zeta", "low"]);
        assert!(PolicySet::default().winner(&ns, &web).is_none());
    }

    #[test]
    fn container_filter() {
        let f = ContainerFilter {
            include: vec![],
            exclude: vec!["istio-proxy".into()],
        };
        assert!(f.allows("app"));
        assert!(!f.allows("istio-proxy"));
        let f = ContainerFilter {
            include: vec!["app".into()],
            exclude: vec![],
        };
        assert!(f.allows("app"));
        assert!(!f.allows("sidecar"));
    }
}
