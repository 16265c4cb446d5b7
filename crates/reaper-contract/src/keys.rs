//! Every name users and tests rely on: API group, labels, annotations, field managers.
//! Keep them here so no literal is repeated (and docs/reference/contracts.md, generated from this file, has one source).

/// API group of the Reaper CRDs.
pub const API_GROUP: &str = "reaper.dev";
/// API version of the Reaper CRDs.
pub const API_VERSION: &str = "v1alpha1";

/// Namespace label (`=enabled`) that opts a namespace in, pod label (`=disabled`) that opts a pod
/// out; `=enabled` on a pod opts it in where its namespace carries no such label (`--pod-opt-in`),
/// and `=disabled` on a namespace opts it out (the only way out under `--selection=opt-out`).
pub const LABEL_INJECT: &str = "reaper.dev/inject";
pub const INJECT_ENABLED: &str = "enabled";
pub const INJECT_DISABLED: &str = "disabled";

/// Pod annotation overriding the policy's mode: one of [`MODES`].
pub const ANNOTATION_MODE: &str = "reaper.dev/mode";
/// The values of `reaper.dev/mode` and `--default-mode` (any case): `image` wraps with the
/// reaper mounted from its image (an image volume), `inject` with it copied in by an init
/// container.
pub const MODES: [&str; 5] = ["auto", "inject", "image", "share", "off"];
/// Pod annotation limiting injection to some containers: `"a,b"`.
pub const ANNOTATION_CONTAINERS: &str = "reaper.dev/containers";
/// Pod annotation recording what the webhook did.
pub const ANNOTATION_INJECTED: &str = "reaper.dev/injected";
/// Pod annotation the webhook writes for containers it wrapped with an argv read from the registry:
/// `<container>=<digest>` pairs joined by `,`, sorted by container name
/// (`app=sha256:...,sidecar=sha256:...`), the digest of the manifest or index that argv was read
/// from. Entries are only added; with `--pin-digests` those images also become `image@digest`.
pub const ANNOTATION_IMAGE_DIGESTS: &str = "reaper.dev/image-digests";
/// Pod annotation the webhook writes on pods it protects (`share`, `inject:`): the Reaper release
/// (`reaper-controller` version) that set the protection up. Kept when the pod already carries
/// one, so a pod re-created from a manifest wrapped by an older release still names that release.
pub const ANNOTATION_VERSION: &str = "reaper.dev/version";
/// Pod annotation the webhook writes on pods it protects: the name of the governing ReaperPolicy
/// (absent when none matched and `--default-mode` applied).
pub const ANNOTATION_POLICY: &str = "reaper.dev/policy";

/// Annotation set on a mirror (static) pod by the kubelet.
pub const ANNOTATION_MIRROR: &str = "kubernetes.io/config.mirror";
/// Annotation the kubelet sets on a mirror pod: the static pod's internal UID (its config hash),
/// which is what the pod's cgroup is named after.
pub const ANNOTATION_CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// Label every namespace carries with its own name (used for `--policies` file mode).
pub const LABEL_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";
/// Annotation `kubectl rollout restart` sets on a pod template.
pub const ANNOTATION_RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Node label with the CPU architecture (GOARCH names); its deprecated beta spelling is still
/// honoured in node selectors.
pub const LABEL_ARCH: &str = "kubernetes.io/arch";
pub const LABEL_ARCH_BETA: &str = "beta.kubernetes.io/arch";

/// Env var of a wrapped container whose image's platforms run different argvs (see [`crate::init`]).
pub const ENV_PLATFORM_ARGV: &str = crate::init::ENV_PLATFORM_ARGV;

/// Server-side apply field managers.
pub const MANAGER_AGENT: &str = "reaper-agent";
pub const MANAGER_OPERATOR: &str = "reaper-operator";

/// Label on the objects the operator creates (value [`MANAGER_OPERATOR`]); its policy reports
/// are listed by it.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Policy reports (operator `--policy-reports`): one per governed namespace, named
/// [`POLICY_REPORT_NAME`], each result with `source` [`POLICY_REPORT_SOURCE`] and one of the rules
/// [`RULE_PID1_IS_INIT`] and [`RULE_ZOMBIES`].
pub const POLICY_REPORT_NAME: &str = "reaper";
pub const POLICY_REPORT_SOURCE: &str = "reaper";
/// Rule: the pod's PID 1 reaps (the webhook shared the PID namespace, wrapped the containers with
/// reaper, or found an init already).
pub const RULE_PID1_IS_INIT: &str = "pid1-is-init";
/// Rule: the workload's pods hold no zombie processes (from the nodes' ZombieReports).
pub const RULE_ZOMBIES: &str = "zombies";

/// Lease used for operator leader election.
pub const LEASE_OPERATOR: &str = "reaper-operator";

/// Event reason the operator records on a pod whose zombies reached its policy's threshold.
pub const REASON_ZOMBIES_DETECTED: &str = "ZombiesDetected";
/// Event reason the operator records on a workload it rolled out because of zombies.
pub const REASON_ZOMBIE_RESTART: &str = "ZombieRestart";
/// `reportingController` of the operator's Events.
pub const EVENT_REPORTER_OPERATOR: &str = "reaper.dev/operator";
/// Event reason the webhook records on a pod's owner when it left the pod without a reaping
/// PID 1 (`skipped:not-wrappable`, `skipped:no-targets`; type Warning).
pub const REASON_POD_NOT_PROTECTED: &str = "PodNotProtected";
/// Event reason the webhook records on a pod's owner when the pod needs no reaper
/// (`skipped:already-init`, `skipped:windows`; type Normal).
pub const REASON_PROTECTION_NOT_NEEDED: &str = "ProtectionNotNeeded";
/// Event reason the webhook records on a pod's owner when it protected the pod otherwise than
/// asked (auto fell back to share, share impossible with hostPID: Normal) or only partly (some
/// containers could not be wrapped: Warning).
pub const REASON_PROTECTION_FALLBACK: &str = "ProtectionFallback";
/// `reportingController` of the webhook's Events.
pub const EVENT_REPORTER_WEBHOOK: &str = "reaper.dev/webhook";

/// Secret key holding the CA bundle next to `tls.crt`/`tls.key` (self-managed webhook certificates).
pub const SECRET_KEY_CA: &str = "ca.crt";
/// Suffix of the Secret holding the self-managed CA's own certificate and key (`<cert-secret>-ca`).
pub const CA_SECRET_SUFFIX: &str = "-ca";
/// Annotation on the serving Secret: when `ca.crt` (the CA bundle) last changed (RFC 3339).
pub const ANNOTATION_BUNDLE_CHANGED_AT: &str = "reaper.dev/bundle-changed-at";
/// Annotation on the serving Secret: when `tls.crt` last changed (RFC 3339).
pub const ANNOTATION_SERVING_CHANGED_AT: &str = "reaper.dev/serving-changed-at";
