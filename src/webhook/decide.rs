//! The webhook's decision, as a pure function: pod + policies + resolved images → [`Plan`].
//! `super::patch` turns a plan into an RFC 6902 JSONPatch and `super::install` describes the
//! injected init container and volume. No I/O here; the handler decodes, calls [`plan`], and
//! encodes.
//!
//! The planner is *convergent*: it recognises every piece of its own earlier work (a container
//! whose `command[0]` is the reaper path, the install init container and its volume, the reaper's
//! image volume, a shared PID namespace, the annotation) and only adds what is missing. A pod
//! that already gets the reaper one way (init container or image volume) keeps it, whatever the
//! mode of this admission says, so a pod never gets both. So `mutate(mutate(p)) == mutate(p)`,
//! and a reinvocation after another webhook added a container wraps just that container.
use super::argv::{Argv, ImageArgv, plan_argv, platform_argv};
use super::capability::{self, Delivery};
use super::install::{self, InstallSettings};
use super::pin;
use crate::crd::{Enforcement, Fallback, Mode, PolicySet, ReaperPolicy, ReaperPolicySpec};
use crate::image::{ImageIndex, image_matches};
use crate::keys;
use crate::scope::Exclusion;
use k8s_openapi::api::core::v1::{Container, Pod, Volume, VolumeMount};
use std::collections::{BTreeMap, BTreeSet};

/// Warnings past this many are summarised (the API server truncates long warning lists anyway).
const MAX_WARNINGS: usize = 12;

/// This build's release, written to `reaper.dev/version` (the `reaper-controller` version, which
/// the chart's images share; the reaper image is named in the pod's install container anyway).
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// Settings that shape every plan (from the webhook's flags).
#[derive(Clone, Debug)]
pub struct Config {
    /// Image whose `/reaper` is the static init (`--reaper-image`).
    pub reaper_image: String,
    /// Where the volume is mounted in wrapped containers (`--mount-path`), absolute, no trailing `/`.
    pub mount_path: String,
    /// Mode when no policy matches (`--default-mode`).
    pub default_mode: Mode,
    /// Which pods the installation governs ([`crate::scope`]). The registration's selectors
    /// applied the namespace side before the webhook was called; the planner checks the rest
    /// (excluded namespaces, mirror pods, opt-out, `--object-selector`).
    pub scope: crate::scope::Scope,
    /// The injected init container and volume.
    pub install: InstallSettings,
    /// Rewrite the image of a container wrapped with an argv read from the registry to
    /// `image@digest`, the digest that argv was read from (`--pin-digests`). The digest is
    /// recorded in `reaper.dev/image-digests` either way.
    pub pin_digests: bool,
    /// Written to `reaper.dev/version` on pods this webhook protects first ([`RELEASE`]; tests
    /// fix it so snapshots do not change with every release).
    pub release: String,
    /// Whether the cluster runs pods with image volumes (kept up to date by the webhook's
    /// detection, see [`capability`]; read once per plan): `auto` then mounts the reaper image
    /// instead of injecting the `reaper-install` init container.
    pub image_volumes: capability::Support,
}

impl Config {
    /// A config with defaults for everything but the image (tests, benchmarks, fuzzing).
    pub fn new(reaper_image: impl Into<String>) -> Self {
        Self {
            reaper_image: reaper_image.into(),
            mount_path: "/.reaper".into(),
            default_mode: Mode::Auto,
            scope: crate::scope::Scope::default(),
            install: InstallSettings::default(),
            pin_digests: false,
            release: RELEASE.to_string(),
            image_volumes: capability::Support::default(),
        }
    }

    /// `<mount-path>/reaper`: argv[0] of every wrapped container.
    pub fn reaper_path(&self) -> String {
        format!("{}/reaper", self.mount_path)
    }
}

/// Where the pod is being created.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// The request's namespace (a pod's own `metadata.namespace` may be empty at CREATE).
    pub namespace: &'a str,
    /// Labels of that namespace (only `kubernetes.io/metadata.name` in `--policies` mode).
    pub namespace_labels: &'a BTreeMap<String, String>,
}

/// Why a pod is left alone without even an annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgnoreReason {
    /// No `spec`, or neither `metadata.name` nor `metadata.generateName`: the API server rejects
    /// such a pod after admission anyway, and a patch could not rely on those fields existing.
    Incomplete,
    ExcludedNamespace,
    MirrorPod,
    OptedOut,
    /// Outside `--object-selector` (the registration's `objectSelector` normally keeps such pods
    /// from the webhook).
    NotSelected,
    ModeOff,
}

/// Why an in-scope pod is left alone (recorded as `skipped:<reason>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// `spec.os.name: windows` (or a `kubernetes.io/os: windows` node selector).
    Windows,
    /// The filters (policy containers, `initContainers`, `reaper.dev/containers`) left nothing.
    NoTargets,
    /// Every target container already runs an init.
    AlreadyInit,
    /// No target container could be wrapped (unknown argv, mount path taken) and sharing the PID
    /// namespace was not an option; or, under `Auto` with `fallback: None`, not all of them.
    NotWrappable,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Windows => "windows",
            SkipReason::NoTargets => "no-targets",
            SkipReason::AlreadyInit => "already-init",
            SkipReason::NotWrappable => "not-wrappable",
        }
    }
}

/// How a protected pod's protection differs from the one asked for (`reason` label, Events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackReason {
    /// `auto`: not every target container can be wrapped, so the PID namespace is shared.
    AutoShare,
    /// `share` asked for, impossible with `hostPID`: the containers are wrapped instead.
    HostPidInject,
    /// Some target containers could not be wrapped and run without reaper (`inject` mode, or
    /// `auto`/`share` with `hostPID`).
    PartialInject,
}

impl FallbackReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::AutoShare => "auto-share",
            FallbackReason::HostPidInject => "hostpid-inject",
            FallbackReason::PartialInject => "partial-inject",
        }
    }
}

/// A change of one pod annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnnotationEdit {
    Set(String),
    Remove,
}

/// What the webhook decided for a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ignored(IgnoreReason),
    Skipped(SkipReason),
    /// `shareProcessNamespace: true`.
    Share,
    /// These containers run under reaper (newly wrapped or already), in spec order.
    Inject(Vec<String>),
}

/// A container's position in the pod spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot {
    pub list: List,
    pub index: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum List {
    Init,
    Regular,
}

impl List {
    /// The pod spec field holding this list.
    pub fn field(self) -> &'static str {
        match self {
            List::Init => "initContainers",
            List::Regular => "containers",
        }
    }
}

/// One container's rewrite.
#[derive(Clone, Debug, PartialEq)]
pub struct Wrap {
    pub slot: Slot,
    /// New `command` (`None`: already wrapped, only the mount may be missing).
    pub command: Option<Vec<String>>,
    /// New `args` (`None`: keep the pod's).
    pub args: Option<Vec<String>>,
    /// Mount to add (`None`: already there).
    pub mount: Option<VolumeMount>,
    /// `REAPER_PLATFORM_ARGV` to add: the image's platforms run different argvs (JSON object).
    pub platform_argv: Option<String>,
    /// New `image`: the reference pinned to the digest its argv was read from (`--pin-digests`).
    pub image: Option<String>,
    /// Whether the container already has a `volumeMounts` list.
    pub(super) had_mounts: bool,
    /// Whether the container already has an `env` list.
    pub(super) had_env: bool,
}

/// The injected volume and init container, when the pod does not have them yet.
#[derive(Clone, Debug, PartialEq)]
pub struct Install {
    /// The emptyDir the init container fills, or the reaper's image volume.
    pub volume: Volume,
    /// The `reaper-install` init container (`None` with an image volume).
    pub container: Option<Container>,
}

/// Spec changes of a plan (all empty for ignored, skipped and audited pods).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub share_process_namespace: bool,
    pub install: Option<Install>,
    /// Index of our existing install container, to move to the front of `initContainers` because
    /// a wrapped init container now runs before it.
    pub move_install_from: Option<usize>,
    pub wraps: Vec<Wrap>,
    pub(super) had_volumes: bool,
    pub(super) had_init_containers: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.share_process_namespace
            && self.install.is_none()
            && self.move_install_from.is_none()
            && self.wraps.is_empty()
    }
}

/// The decision for one pod and everything needed to turn it into a patch.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub outcome: Outcome,
    /// The mode asked for (annotation, else policy, else `--default-mode`); `None` when the pod
    /// was ignored before a mode was chosen.
    pub mode: Option<Mode>,
    /// Name of the governing policy, if any.
    pub policy: Option<String>,
    /// `Audit` enforcement: annotate only.
    pub audit: bool,
    /// Set when the pod is protected otherwise than asked, or only partly.
    pub fallback: Option<FallbackReason>,
    /// Shown by `kubectl` (AdmissionResponse `warnings`).
    pub warnings: Vec<String>,
    pub changes: Changes,
    /// New value of `reaper.dev/injected`, when it differs from the pod's.
    pub set_annotation: Option<String>,
    /// New value of `reaper.dev/image-digests` (the pod's entries plus this pass's), when it
    /// differs from the pod's.
    pub set_image_digests: Option<String>,
    /// New value of `reaper.dev/version` (see [`finish`] for when it is written).
    pub set_version: Option<String>,
    /// Change of `reaper.dev/policy`, when it differs from the governing policy.
    pub set_policy: Option<AnnotationEdit>,
    pub(super) had_annotations: bool,
}

impl Plan {
    fn ignored(reason: IgnoreReason, mode: Option<Mode>, policy: Option<String>) -> Self {
        Self {
            outcome: Outcome::Ignored(reason),
            mode,
            policy,
            audit: false,
            fallback: None,
            warnings: Vec::new(),
            changes: Changes::default(),
            set_annotation: None,
            set_image_digests: None,
            set_version: None,
            set_policy: None,
            had_annotations: false,
        }
    }

    /// The `reaper.dev/injected` value this outcome stands for (`None` for ignored pods).
    pub fn annotation(&self) -> Option<String> {
        let what = match &self.outcome {
            Outcome::Ignored(_) => return None,
            Outcome::Skipped(r) => return Some(format!("skipped:{}", r.as_str())),
            Outcome::Share => "share".to_string(),
            Outcome::Inject(names) => format!("inject:{}", names.join(",")),
        };
        Some(if self.audit {
            format!("audit:{what}")
        } else {
            what
        })
    }

    /// Why the pod was skipped, or how its protection fell back (`none` otherwise): the `reason`
    /// label of `reaper_webhook_requests_total`.
    pub fn reason_label(&self) -> &'static str {
        match (&self.outcome, self.fallback) {
            (Outcome::Skipped(r), _) => r.as_str(),
            (_, Some(f)) => f.as_str(),
            _ => "none",
        }
    }

    /// Short name of the outcome for metrics and logs.
    pub fn result_label(&self) -> &'static str {
        match (&self.outcome, self.audit) {
            (Outcome::Ignored(_), _) => "ignored",
            (Outcome::Skipped(_), _) => "skipped",
            (_, true) => "audit",
            (Outcome::Share, false) => "share",
            (Outcome::Inject(_), false) => "inject",
        }
    }
}

/// What the planner found out before looking at images.
struct Prepared<'a> {
    spec: std::borrow::Cow<'a, ReaperPolicySpec>,
    policy: Option<String>,
    mode: Mode,
    audit: bool,
    targets: Vec<(Slot, &'a Container)>,
    install: Option<install::ExistingInstall>,
    /// Our image volume from an earlier pass (ignored when `install` is there).
    image_volume: Option<String>,
    warnings: Vec<String>,
}

enum Stage<'a> {
    Done(Box<Plan>),
    Go(Box<Prepared<'a>>),
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn is_windows(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let by_os = spec
        .os
        .as_ref()
        .is_some_and(|os| os.name.eq_ignore_ascii_case("windows"));
    let by_selector = spec
        .node_selector
        .as_ref()
        .and_then(|s| s.get("kubernetes.io/os"))
        .is_some_and(|os| os.eq_ignore_ascii_case("windows"));
    by_os || by_selector
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// Steps common to [`images_to_resolve`] and [`plan`]: scope, policy, mode, targets.
fn prepare<'a>(pod: &'a Pod, scope: Scope<'_>, policies: &'a PolicySet, cfg: &Config) -> Stage<'a> {
    let named = |n: &Option<String>| n.as_deref().is_some_and(|n| !n.is_empty());
    if pod.spec.is_none() || !(named(&pod.metadata.name) || named(&pod.metadata.generate_name)) {
        return Stage::Done(Box::new(Plan::ignored(
            IgnoreReason::Incomplete,
            None,
            None,
        )));
    }
    let facts = crate::scope::PodFacts {
        namespace: scope.namespace,
        labels: pod.metadata.labels.as_ref(),
        annotations: pod.metadata.annotations.as_ref(),
    };
    if let Some(why) = cfg.scope.pod_exclusion(facts) {
        let reason = match why {
            Exclusion::ExcludedNamespace => IgnoreReason::ExcludedNamespace,
            Exclusion::MirrorPod => IgnoreReason::MirrorPod,
            Exclusion::OptedOut => IgnoreReason::OptedOut,
            // pod_exclusion reads no namespace labels: only the object selector gets here.
            Exclusion::NotSelected | Exclusion::NotOptedIn | Exclusion::NamespaceOptedOut => {
                IgnoreReason::NotSelected
            }
        };
        return Stage::Done(Box::new(Plan::ignored(reason, None, None)));
    }
    let empty = BTreeMap::new();
    let pod_labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let mut warnings = Vec::new();
    let winner: Option<&'a ReaperPolicy> = policies
        .winner(scope.namespace_labels, pod_labels)
        .map(|p| p.as_ref());
    let policy_name = winner.map(|p| p.metadata.name.clone().unwrap_or_default());
    let spec = match winner {
        Some(p) => std::borrow::Cow::Borrowed(&p.spec),
        None => std::borrow::Cow::Owned(ReaperPolicySpec {
            mode: cfg.default_mode,
            ..Default::default()
        }),
    };
    let raw_mode = annotation(pod, keys::ANNOTATION_MODE);
    let mode = match crate::scope::effective_mode(raw_mode, spec.mode) {
        Ok(m) => m,
        Err(fallback) => {
            let source = match &policy_name {
                Some(p) => format!("policy {p}"),
                None => "--default-mode".to_string(),
            };
            warnings.push(format!(
                "reaper: annotation {} {:?} is not auto, inject, image, share or off; using {fallback} from {source}",
                keys::ANNOTATION_MODE,
                raw_mode.unwrap_or_default(),
            ));
            fallback
        }
    };
    if mode == Mode::Off {
        return Stage::Done(Box::new(Plan::ignored(
            IgnoreReason::ModeOff,
            Some(mode),
            policy_name,
        )));
    }
    let audit = spec.enforcement == Enforcement::Audit;
    if is_windows(pod) {
        warnings.push("reaper: Windows pod left unchanged".to_string());
        return Stage::Done(Box::new(finish(
            pod,
            cfg,
            Verdict {
                outcome: Outcome::Skipped(SkipReason::Windows),
                mode: Some(mode),
                policy: policy_name,
                audit,
                fallback: None,
                warnings,
                changes: Changes::default(),
            },
        )));
    }
    let install = install::find_install(pod, cfg);
    let image_volume = install::find_image_volume(pod, cfg);
    let only: Option<BTreeSet<&str>> = annotation(pod, keys::ANNOTATION_CONTAINERS).map(|raw| {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    });
    let spec_ref = pod.spec.as_ref();
    let init = spec_ref
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let regular = spec_ref
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    if let Some(only) = &only {
        for name in only {
            if !init.iter().chain(regular).any(|c| c.name == *name) {
                warnings.push(format!(
                    "reaper: annotation {} names {name:?}, which is not a container of this pod",
                    keys::ANNOTATION_CONTAINERS
                ));
            }
        }
    }
    let wanted = |c: &Container| {
        spec.containers.allows(&c.name) && only.as_ref().is_none_or(|o| o.contains(c.name.as_str()))
    };
    let mut targets = Vec::new();
    for (index, c) in init.iter().enumerate() {
        let ours = install.as_ref().is_some_and(|i| i.index == index);
        if !ours && (is_sidecar(c) || spec.init_containers) && wanted(c) {
            targets.push((
                Slot {
                    list: List::Init,
                    index,
                },
                c,
            ));
        }
    }
    for (index, c) in regular.iter().enumerate() {
        if wanted(c) {
            targets.push((
                Slot {
                    list: List::Regular,
                    index,
                },
                c,
            ));
        }
    }
    Stage::Go(Box::new(Prepared {
        spec,
        policy: policy_name,
        mode,
        audit,
        targets,
        install,
        image_volume,
        warnings,
    }))
}

/// How the governing policy's `entrypoints` (first glob match wins) or else the image index
/// describe a container's image.
pub fn image_argv<'a>(
    c: &Container,
    spec: &'a ReaperPolicySpec,
    images: &'a ImageIndex,
) -> ImageArgv<'a> {
    let image = c.image.as_deref().unwrap_or_default();
    if let Some(e) = spec
        .entrypoints
        .iter()
        .find(|e| image_matches(&e.image, image))
    {
        return ImageArgv::Policy(e);
    }
    match images.get(image) {
        Some(Ok(config)) => ImageArgv::Resolved(config),
        Some(Err(why)) => ImageArgv::Failed(why),
        None => ImageArgv::Unknown,
    }
}

/// Images the planner would like to know the config of: those of target containers without a
/// `command` and without a matching policy entrypoint. Empty for ignored pods.
pub fn images_to_resolve(
    pod: &Pod,
    scope: Scope<'_>,
    policies: &PolicySet,
    cfg: &Config,
) -> Vec<String> {
    let Stage::Go(p) = prepare(pod, scope, policies, cfg) else {
        return Vec::new();
    };
    let shared = pod.spec.as_ref().and_then(|s| s.share_process_namespace) == Some(true);
    if (p.mode == Mode::Share || p.mode == Mode::Auto && shared) && !host_pid(pod) {
        // The outcome is share whatever the images say.
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for (_, c) in &p.targets {
        let has_command = c.command.as_ref().is_some_and(|v| !v.is_empty());
        let Some(image) = c.image.as_deref().filter(|i| !i.is_empty()) else {
            continue;
        };
        if !has_command
            && !p
                .spec
                .entrypoints
                .iter()
                .any(|e| image_matches(&e.image, image))
            && !out.iter().any(|i| i == image)
        {
            out.push(image.to_string());
        }
    }
    out
}

fn host_pid(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_pid) == Some(true)
}

/// Decide what to do with `pod`.
pub fn plan(
    pod: &Pod,
    scope: Scope<'_>,
    policies: &PolicySet,
    images: &ImageIndex,
    cfg: &Config,
) -> Plan {
    let p = match prepare(pod, scope, policies, cfg) {
        Stage::Done(plan) => return *plan,
        Stage::Go(p) => *p,
    };
    let Prepared {
        spec,
        policy,
        mode,
        audit,
        targets,
        install,
        image_volume,
        mut warnings,
    } = p;
    // How the reaper gets into the pod: what an earlier pass set up, else per mode and policy.
    let existing = match (install, image_volume) {
        (Some(i), _) => Some(Existing::InitContainer(i)),
        (None, Some(v)) => Some(Existing::ImageVolume(v)),
        (None, None) => None,
    };
    let (delivery, delivery_warning) =
        capability::delivery(mode, spec.image_volume, cfg.image_volumes.get());
    let already_shared = pod.spec.as_ref().and_then(|s| s.share_process_namespace) == Some(true);
    let host_pid = host_pid(pod);
    // Multi-platform images: only the architectures the pod can be scheduled on count.
    let narrowed;
    let images = if images.has_platforms() {
        narrowed = images.narrowed(|arch| arch_allowed(pod, arch));
        &narrowed
    } else {
        images
    };

    let share = |warnings: Vec<String>, fallback: Option<FallbackReason>| {
        let changes = Changes {
            share_process_namespace: !already_shared && !audit,
            ..Default::default()
        };
        finish(
            pod,
            cfg,
            Verdict {
                outcome: Outcome::Share,
                mode: Some(mode),
                policy: policy.clone(),
                audit,
                fallback,
                warnings,
                changes,
            },
        )
    };
    // A pod whose PID namespace is already shared (by its author or an earlier pass) is protected
    // by the pause container; `auto` leaves it at that.
    if mode == Mode::Share && !host_pid || mode == Mode::Auto && already_shared {
        return share(warnings, None);
    }

    let reaper_path = cfg.reaper_path();
    let flags = spec.reaper.to_flags();
    // Classify every target.
    let mut wrapped: Vec<Target> = Vec::new();
    let mut unwrappable: Vec<String> = Vec::new();
    let mut with_init: Vec<(String, String)> = Vec::new();
    let install_volume = existing.as_ref().map(Existing::volume);
    for (slot, c) in &targets {
        let image = image_argv(c, &spec, images);
        let argv = plan_argv(c, image, &reaper_path, &flags);
        match argv {
            Argv::Wrapped => wrapped.push(Target {
                slot: *slot,
                container: c,
                argv: None,
                platform_argv: None,
                digest: None,
            }),
            Argv::HasInit(init) => with_init.push((c.name.clone(), init)),
            Argv::Unknown(why) => {
                unwrappable.push(format!("container {:?}: cannot wrap, {why}", c.name))
            }
            wrap @ Argv::Wrap { .. } => {
                match install::mount_conflict(c, &cfg.mount_path, install_volume) {
                    Some(other) => unwrappable.push(format!(
                        "container {:?}: cannot wrap, its volumeMount {other:?} already uses {}",
                        c.name, cfg.mount_path
                    )),
                    None => {
                        let per_platform = platform_argv(c, image).and_then(|m| {
                        if has_env(c, keys::ENV_PLATFORM_ARGV) {
                            warnings.push(format!(
                                "reaper: container {:?} sets {} itself; the image's per-platform argv was not added",
                                c.name,
                                keys::ENV_PLATFORM_ARGV
                            ));
                            return None;
                        }
                        // A map of string vectors always serialises.
                        serde_json::to_string(&m).ok()
                    });
                        wrapped.push(Target {
                            slot: *slot,
                            container: c,
                            argv: Some(wrap),
                            platform_argv: per_platform,
                            digest: pin::digest_to_record(c, image, images).map(String::from),
                        })
                    }
                }
            }
        }
    }

    let reasons =
        |w: &mut Vec<String>| w.extend(unwrappable.iter().map(|u| format!("reaper: {u}")));
    let init_notes =
        |w: &mut Vec<String>| {
            w.extend(with_init.iter().map(|(c, init)| {
                format!("reaper: container {c:?} already runs {init}; left as is")
            }))
        };
    let skipped = |mut warnings: Vec<String>, reason: SkipReason| {
        warnings.push(match reason {
            SkipReason::NoTargets => {
                "reaper: no container left to wrap after the policy and reaper.dev/containers filters; pod unchanged".to_string()
            }
            SkipReason::AlreadyInit => {
                "reaper: every target container already runs an init; pod unchanged".to_string()
            }
            _ => "reaper: no container could be wrapped; pod unchanged".to_string(),
        });
        finish(
            pod,
            cfg,
            Verdict {
                outcome: Outcome::Skipped(reason),
                mode: Some(mode),
                policy: policy.clone(),
                audit,
                fallback: None,
                warnings,
                changes: Changes::default(),
            },
        )
    };

    if mode == Mode::Share {
        // Only reached with hostPID.
        warnings.push(
            "reaper: shareProcessNamespace cannot be combined with hostPID; injecting reaper instead"
                .to_string(),
        );
    } else if mode == Mode::Auto && !unwrappable.is_empty() {
        if !host_pid {
            reasons(&mut warnings);
            if spec.fallback == Fallback::None {
                init_notes(&mut warnings);
                warnings.push(
                    "reaper: not every container can be wrapped and the policy's fallback is None; pod unchanged"
                        .to_string(),
                );
                return finish(
                    pod,
                    cfg,
                    Verdict {
                        outcome: Outcome::Skipped(SkipReason::NotWrappable),
                        mode: Some(mode),
                        policy,
                        audit,
                        fallback: None,
                        warnings,
                        changes: Changes::default(),
                    },
                );
            }
            warnings.push(
                "reaper: falling back to shareProcessNamespace because not every container can be wrapped"
                    .to_string(),
            );
            return share(warnings, Some(FallbackReason::AutoShare));
        }
        warnings.push(
            "reaper: shareProcessNamespace is impossible with hostPID; wrapping the containers that can be"
                .to_string(),
        );
    }
    reasons(&mut warnings);
    if wrapped.is_empty() {
        let reason = if targets.is_empty() {
            SkipReason::NoTargets
        } else if unwrappable.is_empty() {
            SkipReason::AlreadyInit
        } else {
            init_notes(&mut warnings);
            SkipReason::NotWrappable
        };
        return skipped(warnings, reason);
    }
    init_notes(&mut warnings);
    if existing.is_none() {
        warnings.extend(delivery_warning);
    }
    let names: Vec<String> = wrapped.iter().map(|t| t.container.name.clone()).collect();
    let (changes, digests) = if audit {
        (Changes::default(), BTreeMap::new())
    } else {
        let digests = wrapped
            .iter()
            .filter_map(|t| Some((t.container.name.clone(), t.digest.clone()?)))
            .collect();
        (
            inject_changes(pod, cfg, existing.as_ref(), delivery, &wrapped),
            digests,
        )
    };
    // Some targets run without reaper: that outweighs how the mode was reached.
    let fallback = if !unwrappable.is_empty() {
        Some(FallbackReason::PartialInject)
    } else if mode == Mode::Share {
        Some(FallbackReason::HostPidInject)
    } else {
        None
    };
    let mut plan = finish(
        pod,
        cfg,
        Verdict {
            outcome: Outcome::Inject(names),
            mode: Some(mode),
            policy,
            audit,
            fallback,
            warnings,
            changes,
        },
    );
    plan.set_image_digests =
        pin::annotation_update(annotation(pod, keys::ANNOTATION_IMAGE_DIGESTS), &digests);
    plan
}

/// How an earlier pass got the reaper into the pod.
enum Existing {
    InitContainer(install::ExistingInstall),
    /// Our image volume, by name.
    ImageVolume(String),
}

impl Existing {
    /// The volume wrapped containers mount.
    fn volume(&self) -> &str {
        match self {
            Existing::InitContainer(i) => &i.volume,
            Existing::ImageVolume(v) => v,
        }
    }
}

/// A container to run under reaper.
struct Target<'a> {
    slot: Slot,
    container: &'a Container,
    /// Its new argv (`None`: wrapped by an earlier pass).
    argv: Option<Argv>,
    /// Its `REAPER_PLATFORM_ARGV` value, if any.
    platform_argv: Option<String>,
    /// The digest its new argv was read from (see [`pin::digest_to_record`]).
    digest: Option<String>,
}

fn has_env(c: &Container, name: &str) -> bool {
    c.env.iter().flatten().any(|e| e.name == name)
}

/// Whether the pod may be scheduled on nodes of CPU architecture `arch` (GOARCH name), judging by
/// `kubernetes.io/arch` in its `nodeSelector` and in its required node affinity (terms are ORed,
/// expressions ANDed; `In`, `NotIn`, `Exists`, `DoesNotExist`; other keys are ignored).
pub fn arch_allowed(pod: &Pod, arch: &str) -> bool {
    let Some(spec) = &pod.spec else { return true };
    let is_arch_key = |k: &str| k == keys::LABEL_ARCH || k == keys::LABEL_ARCH_BETA;
    if let Some(selector) = &spec.node_selector
        && selector
            .iter()
            .any(|(k, v)| is_arch_key(k) && v.as_str() != arch)
    {
        return false;
    }
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default();
    if terms.is_empty() {
        return true;
    }
    terms.iter().any(|term| {
        term.match_expressions
            .iter()
            .flatten()
            .filter(|e| is_arch_key(&e.key))
            .all(|e| {
                let listed = e.values.iter().flatten().any(|v| v == arch);
                match e.operator.as_str() {
                    "In" => listed,
                    "NotIn" => !listed,
                    "DoesNotExist" => false,
                    _ => true,
                }
            })
    })
}

fn inject_changes(
    pod: &Pod,
    cfg: &Config,
    existing: Option<&Existing>,
    delivery: Delivery,
    wrapped: &[Target<'_>],
) -> Changes {
    let spec = pod.spec.as_ref();
    let init = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let mut changes = Changes {
        had_volumes: spec.is_some_and(|s| s.volumes.is_some()),
        had_init_containers: spec.is_some_and(|s| s.init_containers.is_some()),
        ..Default::default()
    };
    let volume_name = match existing {
        Some(e) => e.volume().to_string(),
        None => {
            // Names mounted by containers count as taken even without a volume (an invalid
            // pod), or a user's mount could end up pointing at our volume.
            let volumes: BTreeSet<&str> = spec
                .and_then(|s| s.volumes.as_deref())
                .unwrap_or_default()
                .iter()
                .map(|v| v.name.as_str())
                .chain(spec.iter().flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                        .flat_map(|c| c.volume_mounts.iter().flatten())
                        .map(|m| m.name.as_str())
                }))
                .collect();
            let containers: BTreeSet<&str> = spec
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                        .map(|c| c.name.as_str())
                        .chain(
                            s.ephemeral_containers
                                .iter()
                                .flatten()
                                .map(|c| c.name.as_str()),
                        )
                })
                .collect();
            let volume = install::free_name(install::VOLUME_NAME, &volumes);
            changes.install = Some(match delivery {
                Delivery::ImageVolume => Install {
                    volume: install::image_volume(cfg, &volume),
                    container: None,
                },
                Delivery::InitContainer => {
                    let container =
                        install::free_name(install::INSTALL_CONTAINER_NAME, &containers);
                    Install {
                        volume: install::volume(cfg, &volume),
                        container: Some(install::container(
                            cfg,
                            &container,
                            &volume,
                            install::qos_class(pod),
                        )),
                    }
                }
            });
            volume
        }
    };
    let mount = VolumeMount {
        name: volume_name.clone(),
        mount_path: cfg.mount_path.clone(),
        read_only: Some(true),
        ..Default::default()
    };
    for Target {
        slot,
        container: c,
        argv,
        platform_argv: per_platform,
        digest,
    } in wrapped
    {
        let mount = if install::has_our_mount(c, &cfg.mount_path, &volume_name)
            || (argv.is_none() && install::has_mount_at(c, &cfg.mount_path))
        {
            None
        } else {
            Some(mount.clone())
        };
        let (command, args) = match argv {
            Some(Argv::Wrap { command, args }) => (Some(command.clone()), args.clone()),
            _ => (None, None),
        };
        if command.is_none() && mount.is_none() {
            continue;
        }
        // Only a container wrapped now has a digest to pin (see `pin::digest_to_record`).
        let image = digest
            .as_deref()
            .filter(|_| cfg.pin_digests && command.is_some())
            .and_then(|d| Some(pin::pinned(c.image.as_deref()?, d)));
        changes.wraps.push(Wrap {
            slot: *slot,
            command,
            args,
            mount,
            platform_argv: per_platform.clone(),
            image,
            had_mounts: c.volume_mounts.is_some(),
            had_env: c.env.is_some(),
        });
    }
    // Our install container must run before every wrapped init container.
    if let Some(Existing::InitContainer(e)) = existing {
        let first_wrapped_init = wrapped
            .iter()
            .filter(|t| t.slot.list == List::Init)
            .map(|t| t.slot.index)
            .min();
        if e.index > 0 && first_wrapped_init.is_some_and(|i| i < e.index) && e.index < init.len() {
            changes.move_install_from = Some(e.index);
        }
    }
    changes
}

/// What was decided, before the annotation and warnings are settled by [`finish`].
struct Verdict {
    outcome: Outcome,
    mode: Option<Mode>,
    policy: Option<String>,
    audit: bool,
    fallback: Option<FallbackReason>,
    warnings: Vec<String>,
    changes: Changes,
}

/// Settles the annotations and warnings of a verdict.
///
/// `reaper.dev/version` and `reaper.dev/policy` are written on pods the webhook protects
/// (`share`, `inject:`; not audited or skipped ones, whose spec it leaves alone):
/// - the version only when the pod carries none: an existing one is kept, because a pod
///   re-created from a manifest that an older release wrapped (a copied pod, a template
///   `reaper-controller inject` wrote) still runs that release's wrapping, and `check` is to find
///   it. A pod that already runs our install container but carries no version was wrapped by a
///   release older than the annotation, and gets none either;
/// - the policy always follows the policy governing this admission (removed when none does).
///
/// Both are then stable on re-admission: `mutate(mutate(p)) == mutate(p)`.
fn finish(pod: &Pod, cfg: &Config, verdict: Verdict) -> Plan {
    let Verdict {
        outcome,
        mode,
        policy,
        audit,
        fallback,
        mut warnings,
        changes,
    } = verdict;
    let had_annotations = pod.metadata.annotations.is_some();
    let mut plan = Plan {
        outcome,
        mode,
        policy,
        audit,
        fallback,
        warnings: Vec::new(),
        changes,
        set_annotation: None,
        set_image_digests: None,
        set_version: None,
        set_policy: None,
        had_annotations,
    };
    let protects = !audit && matches!(plan.outcome, Outcome::Share | Outcome::Inject(_));
    if protects {
        // Not audited, so an inject plan without a new install container found ours in the pod.
        let wrapped_before =
            matches!(plan.outcome, Outcome::Inject(_)) && plan.changes.install.is_none();
        if annotation(pod, keys::ANNOTATION_VERSION).is_none() && !wrapped_before {
            plan.set_version = Some(cfg.release.clone());
        }
        let current = annotation(pod, keys::ANNOTATION_POLICY);
        plan.set_policy = match (plan.policy.as_deref(), current) {
            (Some(p), c) if c != Some(p) => Some(AnnotationEdit::Set(p.to_string())),
            (None, Some(_)) => Some(AnnotationEdit::Remove),
            _ => None,
        };
    }
    if audit {
        let what = match &plan.outcome {
            Outcome::Share => Some("set shareProcessNamespace".to_string()),
            Outcome::Inject(names) => Some(format!("inject reaper into {}", names.join(","))),
            _ => None,
        };
        if let Some(what) = what {
            let by = plan.policy.as_deref().unwrap_or("--default-mode");
            warnings.push(format!(
                "reaper: audit ({by}): would {what}; pod not changed"
            ));
        }
    }
    let desired = plan.annotation();
    if desired.as_deref() != annotation(pod, keys::ANNOTATION_INJECTED) {
        plan.set_annotation = desired;
    }
    if warnings.len() > MAX_WARNINGS {
        let more = warnings.len() - (MAX_WARNINGS - 1);
        warnings.truncate(MAX_WARNINGS - 1);
        warnings.push(format!("reaper: {more} more warnings not shown"));
    }
    plan.warnings = warnings;
    plan
}

#[cfg(test)]
mod tests {
    use super::arch_allowed;
    use super::{Config, Plan, Scope, plan};
    use crate::crd::{EntrypointOverride, Mode, PolicySet, ReaperPolicy, ReaperPolicySpec};
    use crate::image::{ImageConfig, ImageIndex};
    use crate::keys;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// Containers `a`..`f`, one per case; `f` is a native sidecar (an init container, resolved).
    fn digest_pod(annotations: Value) -> Value {
        json!({
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {
                "initContainers": [
                    {"name": "f", "image": "sidecar:1", "restartPolicy": "Always"}
                ],
                "containers": [
                    // Resolved from the registry.
                    {"name": "a", "image": "app:1"},
                    // The pod's command: the image's argv is not used.
                    {"name": "b", "image": "app:1", "command": ["/mine"]},
                    // The policy's entrypoint: not looked up.
                    {"name": "c", "image": "redis:7"},
                    // Already pinned by its author.
                    {"name": "d", "image": format!("app@{D1}")},
                    // The lookup failed.
                    {"name": "e", "image": "private:1"}
                ]
            }
        })
    }

    fn digest_images() -> ImageIndex {
        let config = || Ok(ImageConfig::new(vec!["/entry".into()], vec!["run".into()]));
        let mut images = ImageIndex::new();
        for (image, digest) in [("app:1", D1), ("sidecar:1", D2), ("redis:7", D2)] {
            images.insert(image, config());
            images.set_digest(image, digest);
        }
        images.insert(format!("app@{D1}"), config());
        images.set_digest(format!("app@{D1}"), D1);
        images.insert("private:1", Err("401".into()));
        images
    }

    fn plan_with(pod: &Value, images: &ImageIndex, pin: bool) -> Plan {
        let mut cfg = Config::new("reaper:1");
        cfg.pin_digests = pin;
        let policy = ReaperPolicy::new(
            "p",
            ReaperPolicySpec {
                // inject: the failed lookup skips that container instead of sharing the pod.
                mode: Mode::Inject,
                init_containers: false,
                entrypoints: vec![EntrypointOverride {
                    image: "redis:*".into(),
                    command: vec!["redis-server".into()],
                    args: vec![],
                }],
                ..Default::default()
            },
        );
        let set = PolicySet::new([Arc::new(policy)]);
        let labels = BTreeMap::from([(keys::LABEL_NAMESPACE_NAME.to_string(), "ns".to_string())]);
        let scope = Scope {
            namespace: "ns",
            namespace_labels: &labels,
        };
        let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
        plan(&pod, scope, &set, images, &cfg)
    }

    fn apply(pod: &Value, plan: &Plan) -> Value {
        let mut out = pod.clone();
        json_patch::patch(&mut out, &plan.patch()).unwrap();
        out
    }

    fn images_of(pod: &Value) -> Vec<String> {
        let spec = &pod["spec"];
        spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(spec["containers"].as_array().unwrap())
            .filter(|c| c["name"] != "reaper-install")
            .map(|c| c["image"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn digests_are_recorded_for_registry_read_argvs_only_and_pinned_on_request() {
        let pod = digest_pod(json!({}));
        let images = digest_images();
        let recorded = format!("a={D1},f={D2}");
        for pin in [false, true] {
            let p = plan_with(&pod, &images, pin);
            assert_eq!(p.annotation().as_deref(), Some("inject:f,a,b,c,d"), "{p:?}");
            assert_eq!(p.set_image_digests.as_deref(), Some(recorded.as_str()));
            let pinned: Vec<(String, Option<&str>)> = p
                .changes
                .wraps
                .iter()
                .map(|w| (w.slot.list.field().to_string(), w.image.as_deref()))
                .collect();
            let patched = apply(&pod, &p);
            assert_eq!(
                patched["metadata"]["annotations"][keys::ANNOTATION_IMAGE_DIGESTS],
                recorded.as_str()
            );
            let want: Vec<String> = if pin {
                assert_eq!(
                    pinned.iter().filter(|(_, i)| i.is_some()).count(),
                    2,
                    "{pinned:?}"
                );
                vec![
                    format!("sidecar:1@{D2}"),
                    format!("app:1@{D1}"),
                    "app:1".into(),
                    "redis:7".into(),
                    format!("app@{D1}"),
                    "private:1".into(),
                ]
            } else {
                assert!(pinned.iter().all(|(_, i)| i.is_none()), "{pinned:?}");
                images_of(&pod)
            };
            assert_eq!(images_of(&patched), want, "pin {pin}");
            // Converged: the mutated pod is left as it is, annotation included.
            let again = plan_with(&patched, &images, pin);
            assert!(again.patch().0.is_empty(), "{:?}", again.patch());
            // Even when the registry is unknown by then (the images are not looked up again).
            let again = plan_with(&patched, &ImageIndex::new(), pin);
            assert!(again.patch().0.is_empty(), "{:?}", again.patch());
        }
    }

    #[test]
    fn digest_annotation_keeps_other_entries_and_nothing_without_a_lookup() {
        let images = digest_images();
        // Entries of earlier passes are kept; the pod's other annotations too.
        let pod = digest_pod(json!({
            "team": "x",
            keys::ANNOTATION_IMAGE_DIGESTS: format!("late={D2},a={D2}")
        }));
        let p = plan_with(&pod, &images, true);
        let patched = apply(&pod, &p);
        let a = &patched["metadata"]["annotations"];
        assert_eq!(
            a[keys::ANNOTATION_IMAGE_DIGESTS],
            format!("a={D1},f={D2},late={D2}")
        );
        assert_eq!(a["team"], "x");
        assert_eq!(a[keys::ANNOTATION_INJECTED], "inject:f,a,b,c,d");
        // No resolver (NoImageResolver) or only failures: nothing recorded, nothing pinned.
        let pod = digest_pod(json!({}));
        let bare = json!({"metadata": {"name": "p"}, "spec": pod["spec"].clone()});
        for images in [ImageIndex::new(), {
            let mut i = ImageIndex::new();
            i.insert("app:1", Err("timed out".into()));
            i
        }] {
            let p = plan_with(&bare, &images, true);
            assert_eq!(p.set_image_digests, None);
            assert!(p.changes.wraps.iter().all(|w| w.image.is_none()));
            let patched = apply(&bare, &p);
            assert!(
                patched["metadata"]["annotations"]
                    .get(keys::ANNOTATION_IMAGE_DIGESTS)
                    .is_none()
            );
            assert_eq!(images_of(&patched), images_of(&bare));
        }
    }

    #[test]
    fn audit_and_share_record_and_pin_nothing() {
        let images = digest_images();
        for mode in ["share", "auto"] {
            // auto: the failed lookup makes the pod fall back to share.
            let pod = digest_pod(json!({keys::ANNOTATION_MODE: mode}));
            let p = plan_with(&pod, &images, true);
            assert!(p.annotation().unwrap().starts_with("share"), "{p:?}");
            assert_eq!(p.set_image_digests, None);
            assert_eq!(images_of(&apply(&pod, &p)), images_of(&pod));
        }
    }

    /// Plans `pod` with `--default-mode auto`, or under policy `gov` in `mode` when given.
    fn plan_under(pod: &Value, policy: Option<(Mode, bool)>) -> Plan {
        let mut cfg = Config::new("reaper:1");
        cfg.release = "9.9.9".into();
        let set = PolicySet::new(policy.map(|(mode, audit)| {
            Arc::new(ReaperPolicy::new(
                "gov",
                ReaperPolicySpec {
                    mode,
                    enforcement: if audit {
                        crate::crd::Enforcement::Audit
                    } else {
                        crate::crd::Enforcement::Enforce
                    },
                    ..Default::default()
                },
            ))
        }));
        let labels = BTreeMap::new();
        let scope = Scope {
            namespace: "ns",
            namespace_labels: &labels,
        };
        let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
        plan(&pod, scope, &set, &ImageIndex::new(), &cfg)
    }

    fn annotations_of(pod: &Value) -> (Option<&str>, Option<&str>) {
        let a = &pod["metadata"]["annotations"];
        (
            a[keys::ANNOTATION_VERSION].as_str(),
            a[keys::ANNOTATION_POLICY].as_str(),
        )
    }

    #[test]
    fn protected_pods_name_the_release_and_the_policy_and_keep_them() {
        let app = |annotations: Value| {
            json!({"metadata": {"name": "p", "annotations": annotations},
                   "spec": {"containers": [{"name": "a", "image": "x", "command": ["/a"]}]}})
        };
        let unknown = json!({"metadata": {"name": "p"},
                             "spec": {"containers": [{"name": "a", "image": "nginx"}]}});
        for (what, pod, policy, want) in [
            (
                "injected, no policy",
                app(json!({})),
                None,
                (Some("9.9.9"), None),
            ),
            (
                "injected by policy",
                app(json!({})),
                Some((Mode::Inject, false)),
                (Some("9.9.9"), Some("gov")),
            ),
            (
                "shared by policy",
                app(json!({})),
                Some((Mode::Share, false)),
                (Some("9.9.9"), Some("gov")),
            ),
            (
                "auto fell back to share",
                unknown.clone(),
                None,
                (Some("9.9.9"), None),
            ),
            (
                "an older release's wrap is kept, the policy follows this admission",
                app(json!({keys::ANNOTATION_VERSION: "0.0.1", keys::ANNOTATION_POLICY: "old"})),
                Some((Mode::Inject, false)),
                (Some("0.0.1"), Some("gov")),
            ),
            (
                "a policy no longer governing is removed",
                app(json!({keys::ANNOTATION_POLICY: "old"})),
                None,
                (Some("9.9.9"), None),
            ),
            (
                "audited: not changed",
                app(json!({})),
                Some((Mode::Inject, true)),
                (None, None),
            ),
            (
                "skipped: not changed",
                unknown.clone(),
                Some((Mode::Inject, false)),
                (None, None),
            ),
            (
                "ignored: not changed",
                app(json!({keys::ANNOTATION_MODE: "off", keys::ANNOTATION_POLICY: "old"})),
                None,
                (None, Some("old")),
            ),
        ] {
            let p = plan_under(&pod, policy);
            let patched = apply(&pod, &p);
            assert_eq!(annotations_of(&patched), want, "{what}: {p:?}");
            // Stable on re-admission.
            let again = plan_under(&patched, policy);
            assert!(again.patch().0.is_empty(), "{what}: {:?}", again.patch());
        }
    }

    #[test]
    fn a_pod_wrapped_before_the_version_annotation_is_not_given_one() {
        let pod = json!({"metadata": {"name": "p"},
                         "spec": {"containers": [{"name": "a", "image": "x", "command": ["/a"]}]}});
        let first = apply(&pod, &plan_under(&pod, None));
        assert_eq!(annotations_of(&first).0, Some("9.9.9"));
        // The same pod as a release without the annotation left it.
        let mut older = first.clone();
        older["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(keys::ANNOTATION_VERSION);
        // A container added since is wrapped, but the install container is the older one's.
        older["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "late", "image": "y", "command": ["/late"]}));
        let p = plan_under(&older, None);
        assert_eq!(p.annotation().as_deref(), Some("inject:a,late"));
        let patched = apply(&older, &p);
        assert_eq!(annotations_of(&patched), (None, None));
        assert!(plan_under(&patched, None).patch().0.is_empty());
    }

    /// Plans `pod` under a policy of `mode` and `image_volume`, with image volumes supported or not.
    fn plan_image(
        pod: &Value,
        mode: Mode,
        image_volume: crate::crd::ImageVolume,
        supported: bool,
    ) -> Plan {
        let mut cfg = Config::new("reaper:1");
        cfg.image_volumes = super::capability::Support::fixed(supported);
        let set = PolicySet::new([Arc::new(ReaperPolicy::new(
            "gov",
            ReaperPolicySpec {
                mode,
                image_volume,
                ..Default::default()
            },
        ))]);
        let labels = BTreeMap::new();
        let scope = Scope {
            namespace: "ns",
            namespace_labels: &labels,
        };
        let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
        plan(&pod, scope, &set, &ImageIndex::new(), &cfg)
    }

    fn app_pod() -> Value {
        json!({"metadata": {"name": "p"},
               "spec": {"containers": [
                   {"name": "a", "image": "x", "command": ["/a"], "args": ["-v"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
               ], "volumes": [{"name": "data", "emptyDir": {}}]}})
    }

    /// `(image volumes, emptyDirs named reaper-bin*, init containers)` of a pod.
    fn delivery_of(pod: &Value) -> (usize, usize, usize) {
        let vols = pod["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let image = vols.iter().filter(|v| v.get("image").is_some()).count();
        let empty = vols
            .iter()
            .filter(|v| {
                v.get("emptyDir").is_some() && v["name"].as_str().unwrap().starts_with("reaper-bin")
            })
            .count();
        let inits = pod["spec"]["initContainers"].as_array().map_or(0, Vec::len);
        (image, empty, inits)
    }

    #[test]
    fn image_mode_mounts_the_reaper_image_and_wraps_as_inject_does() {
        use crate::crd::ImageVolume::Allowed;
        let pod = app_pod();
        let p = plan_image(&pod, Mode::Image, Allowed, false);
        assert_eq!(p.annotation().as_deref(), Some("inject:a"), "{p:?}");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let out = apply(&pod, &p);
        assert_eq!(delivery_of(&out), (1, 0, 0), "{out:#}");
        assert_eq!(
            out["spec"]["volumes"][1],
            json!({"name": "reaper-bin", "image": {"reference": "reaper:1", "pullPolicy": "IfNotPresent"}})
        );
        let c = &out["spec"]["containers"][0];
        assert_eq!(c["command"], json!(["/.reaper/reaper", "--", "/a"]));
        assert_eq!(c["args"], json!(["-v"]));
        assert_eq!(
            c["volumeMounts"][1],
            json!({"name": "reaper-bin", "mountPath": "/.reaper", "readOnly": true})
        );
        // The same argv as inject mode; only the delivery differs.
        let injected = apply(&pod, &plan_image(&pod, Mode::Inject, Allowed, false));
        assert_eq!(delivery_of(&injected), (0, 1, 1));
        assert_eq!(injected["spec"]["containers"][0], *c);
        // Converged, in every mode that wraps.
        for mode in [Mode::Image, Mode::Inject, Mode::Auto] {
            for supported in [false, true] {
                let again = plan_image(&out, mode, Allowed, supported);
                assert!(
                    again.patch().0.is_empty(),
                    "{mode} {supported}: {:?}",
                    again.patch()
                );
            }
        }
    }

    #[test]
    fn auto_prefers_image_volumes_where_supported_and_a_policy_decides() {
        use crate::crd::ImageVolume::{Allowed, Forbidden, Required};
        let pod = app_pod();
        for (mode, policy, supported, want, warns) in [
            (Mode::Auto, Allowed, true, (1, 0, 0), false),
            (Mode::Auto, Allowed, false, (0, 1, 1), false),
            (Mode::Inject, Allowed, true, (0, 1, 1), false),
            (Mode::Auto, Required, false, (1, 0, 0), false),
            (Mode::Inject, Required, false, (1, 0, 0), false),
            (Mode::Auto, Forbidden, true, (0, 1, 1), false),
            (Mode::Image, Forbidden, true, (0, 1, 1), true),
        ] {
            let p = plan_image(&pod, mode, policy, supported);
            let out = apply(&pod, &p);
            assert_eq!(delivery_of(&out), want, "{mode} {policy:?} {supported}");
            assert_eq!(
                p.warnings.iter().any(|w| w.contains("Forbidden")),
                warns,
                "{:?}",
                p.warnings
            );
            assert!(
                plan_image(&out, mode, policy, supported)
                    .patch()
                    .0
                    .is_empty()
            );
        }
        // Share stays share: image volumes only change how wrapping is done.
        let p = plan_image(&pod, Mode::Share, Allowed, true);
        assert_eq!(p.annotation().as_deref(), Some("share"));
    }

    #[test]
    fn a_pod_keeps_the_delivery_it_was_wrapped_with() {
        use crate::crd::ImageVolume::{Allowed, Required};
        let late = json!({"name": "late", "image": "y", "command": ["/late"]});
        // Injected with the init container, re-admitted under image mode (or with image volumes
        // required): nothing changes; a container added since mounts the emptyDir.
        let pod = app_pod();
        let injected = apply(&pod, &plan_image(&pod, Mode::Inject, Allowed, false));
        for (mode, policy) in [(Mode::Image, Allowed), (Mode::Auto, Required)] {
            assert!(
                plan_image(&injected, mode, policy, true)
                    .patch()
                    .0
                    .is_empty()
            );
            let mut grown = injected.clone();
            grown["spec"]["containers"]
                .as_array_mut()
                .unwrap()
                .push(late.clone());
            let p = plan_image(&grown, mode, policy, true);
            assert_eq!(p.annotation().as_deref(), Some("inject:a,late"));
            let out = apply(&grown, &p);
            assert_eq!(delivery_of(&out), (0, 1, 1), "{out:#}");
            assert_eq!(
                out["spec"]["containers"][1]["volumeMounts"][0]["name"],
                "reaper-bin"
            );
            assert!(plan_image(&out, mode, policy, true).patch().0.is_empty());
        }
        // Wrapped with the image volume, re-admitted under inject mode: the same the other way.
        let imaged = apply(&pod, &plan_image(&pod, Mode::Image, Allowed, false));
        let mut grown = imaged.clone();
        grown["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(late.clone());
        let out = apply(&grown, &plan_image(&grown, Mode::Inject, Allowed, false));
        assert_eq!(delivery_of(&out), (1, 0, 0), "{out:#}");
        assert_eq!(
            out["spec"]["containers"][1]["command"][0],
            "/.reaper/reaper"
        );
        // An image volume of an older reaper image is still ours: it is what the wrapped
        // containers mount.
        let mut older = imaged.clone();
        older["spec"]["volumes"][1]["image"]["reference"] = json!("reaper:0.9");
        assert!(
            plan_image(&older, Mode::Image, Allowed, false)
                .patch()
                .0
                .is_empty()
        );
        // A user's own image volume is not: ours is added beside it, under a free name.
        let mut theirs = app_pod();
        theirs["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "reaper-bin", "image": {"reference": "models:1"}}));
        let out = apply(&theirs, &plan_image(&theirs, Mode::Image, Allowed, false));
        assert_eq!(out["spec"]["volumes"][2]["name"], "reaper-bin-1");
        assert_eq!(
            out["spec"]["containers"][0]["volumeMounts"][1]["name"],
            "reaper-bin-1"
        );
        assert!(
            plan_image(&out, Mode::Image, Allowed, false)
                .patch()
                .0
                .is_empty()
        );
    }

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = serde_json::json!([{"name": "c", "image": "i"}]);
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": spec}))
            .unwrap()
    }

    fn affinity(terms: serde_json::Value) -> Pod {
        pod(serde_json::json!({"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }}}))
    }

    #[test]
    fn architecture_constraints() {
        let free = pod(serde_json::json!({}));
        assert!(arch_allowed(&free, "arm64") && arch_allowed(&free, "amd64"));
        let sel =
            pod(serde_json::json!({"nodeSelector": {"kubernetes.io/arch": "arm64", "zone": "a"}}));
        assert!(arch_allowed(&sel, "arm64") && !arch_allowed(&sel, "amd64"));
        let beta = pod(serde_json::json!({"nodeSelector": {"beta.kubernetes.io/arch": "amd64"}}));
        assert!(!arch_allowed(&beta, "arm64"));
        // Terms are ORed, expressions ANDed; other keys do not matter.
        let a = affinity(serde_json::json!([
            {"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64", "s390x"]},
                {"key": "kubernetes.io/arch", "operator": "NotIn", "values": ["s390x"]}
            ]},
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["ppc64le"]}]}
        ]));
        assert!(arch_allowed(&a, "arm64") && arch_allowed(&a, "ppc64le"));
        assert!(!arch_allowed(&a, "s390x") && !arch_allowed(&a, "amd64"));
        let other = affinity(serde_json::json!([
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
        ]));
        assert!(arch_allowed(&other, "amd64"));
        let none = affinity(serde_json::json!([
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "DoesNotExist"}]}
        ]));
        assert!(!arch_allowed(&none, "amd64"));
    }
}
