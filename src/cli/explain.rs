//! `reaper-controller explain -n NS KIND/NAME`: why the webhook does (or did) what it does with a
//! pod or a workload's pod template — the policy that governs it, the mode, each container's argv
//! (looked up in its registry as the webhook would), init detection, and the patch the webhook
//! would apply, or why it would leave the pod alone.
//!
//! The decision is the webhook's own ([`decide::plan`] and [`decide::images_to_resolve`]); this
//! module only gathers the inputs from the cluster ([`run`]) and lays the result out
//! ([`Explanation`], pure).
use super::template_pod;
use crate::crd::{Mode, PolicySet, ReaperPolicy, ReaperPolicySpec};
use crate::image::{ImageIndex, ImageResolver};
use crate::keys;
use crate::webhook::argv::{self, ImageArgv};
use crate::webhook::decide::{self, Plan, Scope};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod};
use kube::api::{Api, ApiResource, DynamicObject};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Flags of `reaper-controller explain`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The object: `pod/NAME`, `deploy/NAME` (also `sts`, `ds`, `rs`, `job`, `cronjob` and their
    /// long forms).
    pub object: String,
    /// Its namespace.
    #[arg(short = 'n', long, env = "REAPER_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Output: `text` or `json`.
    #[arg(short = 'o', long, env = "REAPER_OUTPUT", default_value = "text")]
    pub output: Output,
    /// As the installed webhook's `--reaper-image`.
    #[arg(long, env = "REAPER_REAPER_IMAGE", default_value = concat!("ghcr.io/reaper-dev/reaper:", env!("CARGO_PKG_VERSION")))]
    pub reaper_image: String,
    /// As the installed webhook's `--mount-path`.
    #[arg(long, env = "REAPER_MOUNT_PATH", default_value = "/.reaper")]
    pub mount_path: String,
    /// As the installed webhook's `--default-mode`.
    #[arg(long, env = "REAPER_DEFAULT_MODE", default_value = "auto")]
    pub default_mode: Mode,
    /// Whether `auto` may use image volumes, as the installed webhook decides: `detect` asks the
    /// cluster as the webhook does (server version, a dry-run, the nodes' runtimes), `true` or
    /// `false` say it.
    #[arg(long, env = "REAPER_IMAGE_VOLUMES", default_value = "detect")]
    pub image_volumes: crate::webhook::capability::Setting,
    /// Image lookup, as the webhook's (the pod's pull secrets with `--registry-auth=pull-secrets`).
    #[command(flatten)]
    pub registry: crate::registry::Args,
    /// Which pods the installation governs, as the installed webhook's flags.
    #[command(flatten)]
    pub scope: crate::scope::ScopeArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0:?}: expected KIND/NAME, e.g. pod/web-0 or deploy/web")]
    Object(String),
    #[error("kind {0:?}: one of pod, deploy, sts, ds, rs, job, cronjob")]
    Kind(String),
    #[error("{what}: {source}")]
    Kube { what: String, source: kube::Error },
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    #[error("{0}")]
    Other(String),
}

/// `(kind, group, version, plural)` for the short and long names `kubectl` accepts.
fn resource(kind: &str) -> Option<(&'static str, &'static str, &'static str, &'static str)> {
    Some(match kind.to_ascii_lowercase().as_str() {
        "pod" | "pods" | "po" => ("Pod", "", "v1", "pods"),
        "deploy" | "deployment" | "deployments" => ("Deployment", "apps", "v1", "deployments"),
        "sts" | "statefulset" | "statefulsets" => ("StatefulSet", "apps", "v1", "statefulsets"),
        "ds" | "daemonset" | "daemonsets" => ("DaemonSet", "apps", "v1", "daemonsets"),
        "rs" | "replicaset" | "replicasets" => ("ReplicaSet", "apps", "v1", "replicasets"),
        "job" | "jobs" => ("Job", "batch", "v1", "jobs"),
        "cj" | "cronjob" | "cronjobs" => ("CronJob", "batch", "v1", "cronjobs"),
        _ => return None,
    })
}

/// One container as the webhook sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerView {
    pub name: String,
    /// `containers` or `initContainers`.
    pub list: String,
    pub image: String,
    /// Where the argv comes from: `pod` (command), `policy`, `registry`, `lookup failed: ...`,
    /// `unknown`.
    pub argv_source: String,
    /// The argv it runs today, when known.
    pub argv: Option<Vec<String>>,
    /// A known init as argv[0] (`tini`, `dumb-init`, the reaper, ...).
    pub init: Option<String>,
    /// `command` + `args` after the webhook's patch, when it wraps this container.
    pub wrapped: Option<Vec<String>>,
}

/// Everything `explain` says about one pod (template).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub object: String,
    pub namespace: String,
    /// Whether the namespace carries `reaper.dev/inject=enabled`.
    pub namespace_opted_in: bool,
    /// Whether the installation governs the pod ([`crate::scope`]): the API server calls the
    /// webhook for it.
    pub in_scope: bool,
    /// Why it is, or is not, governed.
    pub scope: String,
    pub policy: Option<String>,
    pub mode: Option<String>,
    /// What the webhook would record in `reaper.dev/injected` (`ignored` when it would not touch
    /// the pod at all, with the reason).
    pub outcome: String,
    /// The pod's current `reaper.dev/injected`, for a pod admitted earlier.
    pub current: Option<String>,
    pub warnings: Vec<String>,
    pub containers: Vec<ContainerView>,
    /// The JSONPatch the webhook would send (empty: nothing to change).
    pub patch: Value,
}

/// The pure part: the webhook's plan for `pod` and what it means per container.
pub fn explain(
    object: &str,
    pod: &Pod,
    scope: Scope<'_>,
    policies: &PolicySet,
    images: &ImageIndex,
    cfg: &decide::Config,
) -> Explanation {
    let plan: Plan = decide::plan(pod, scope, policies, images, cfg);
    let default_spec = ReaperPolicySpec::default();
    let spec: &ReaperPolicySpec = plan
        .policy
        .as_deref()
        .and_then(|name| {
            policies
                .entries()
                .iter()
                .find(|e| e.policy.metadata.name.as_deref() == Some(name))
        })
        .map_or(&default_spec, |e| &e.policy.spec);
    let spec_pod = pod.spec.clone().unwrap_or_default();
    let lists: [(&str, &[Container]); 2] = [
        (
            "initContainers",
            spec_pod.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", &spec_pod.containers),
    ];
    let mut containers = Vec::new();
    for (list, items) in lists {
        for (i, c) in items.iter().enumerate() {
            let image_argv = decide::image_argv(c, spec, images);
            let has_command = c.command.as_ref().is_some_and(|v| !v.is_empty());
            let argv_source = match image_argv {
                _ if has_command => "pod".to_string(),
                ImageArgv::Policy(_) => "policy".to_string(),
                ImageArgv::Resolved(_) => "registry".to_string(),
                ImageArgv::Failed(why) => format!("lookup failed: {why}"),
                ImageArgv::Unknown => "unknown".to_string(),
            };
            let argv = argv::effective_argv(c, image_argv);
            let init = argv
                .as_ref()
                .and_then(|a| a.first())
                .and_then(|a0| argv::known_init(a0))
                .map(str::to_string);
            let wrapped = plan
                .changes
                .wraps
                .iter()
                .find(|w| w.slot.list.field() == list && w.slot.index == i)
                .map(|w| {
                    let mut v = w
                        .command
                        .clone()
                        .or_else(|| c.command.clone())
                        .unwrap_or_default();
                    v.extend(
                        w.args
                            .clone()
                            .or_else(|| c.args.clone())
                            .unwrap_or_default(),
                    );
                    v
                });
            containers.push(ContainerView {
                name: c.name.clone(),
                list: list.to_string(),
                image: c.image.clone().unwrap_or_default(),
                argv_source,
                argv,
                init,
                wrapped,
            });
        }
    }
    let planned = match (&plan.outcome, plan.annotation()) {
        (decide::Outcome::Ignored(why), _) => format!("leave it alone ({why:?})"),
        (_, Some(a)) => a,
        (_, None) => "nothing".to_string(),
    };
    let namespace_opted_in = scope
        .namespace_labels
        .get(keys::LABEL_INJECT)
        .map(String::as_str)
        == Some(keys::INJECT_ENABLED);
    let facts = crate::scope::PodFacts {
        namespace: scope.namespace,
        labels: pod.metadata.labels.as_ref(),
        annotations: pod.metadata.annotations.as_ref(),
    };
    use crate::scope::Exclusion;
    // The registration's selectors keep what the namespace side excludes from the webhook; the
    // webhook itself ignores the rest (excluded namespaces, mirror pods, opt-out).
    let (in_scope, why, outcome) = match cfg.scope.governs(facts, scope.namespace_labels) {
        Ok(()) => {
            let why = if namespace_opted_in {
                format!(
                    "namespace opted in ({}={})",
                    keys::LABEL_INJECT,
                    keys::INJECT_ENABLED
                )
            } else if cfg.scope.selection == crate::scope::Selection::OptOut {
                "every namespace takes part (--selection=opt-out)".to_string()
            } else {
                format!(
                    "pod opted in ({}={})",
                    keys::LABEL_INJECT,
                    keys::INJECT_ENABLED
                )
            };
            (true, why, planned)
        }
        Err(
            why @ (Exclusion::NotOptedIn | Exclusion::NamespaceOptedOut | Exclusion::NotSelected),
        ) => (
            false,
            why.describe(),
            format!(
                "not be called: {}; once in scope: {planned}",
                why.describe()
            ),
        ),
        Err(why) => (false, why.describe(), planned),
    };
    Explanation {
        object: object.to_string(),
        namespace: scope.namespace.to_string(),
        namespace_opted_in,
        in_scope,
        scope: why,
        policy: plan.policy.clone(),
        mode: plan.mode.map(|m| format!("{m:?}")),
        outcome,
        current: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(keys::ANNOTATION_INJECTED))
            .cloned(),
        warnings: plan.warnings.clone(),
        containers,
        patch: serde_json::to_value(plan.patch()).unwrap_or(Value::Null),
    }
}

impl Explanation {
    /// The human-readable form.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "{} in namespace {}", self.object, self.namespace);
        let _ = writeln!(
            s,
            "  in scope: {}, {}",
            if self.in_scope { "yes" } else { "no" },
            self.scope
        );
        let _ = writeln!(
            s,
            "  policy: {}",
            self.policy
                .as_deref()
                .unwrap_or("none (the webhook's --default-mode)")
        );
        let _ = writeln!(s, "  mode: {}", self.mode.as_deref().unwrap_or("-"));
        let _ = writeln!(s, "  the webhook would: {}", self.outcome);
        if let Some(c) = &self.current {
            let _ = writeln!(s, "  admitted earlier as: {c}");
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        let _ = writeln!(s, "  containers:");
        for c in &self.containers {
            let argv = c
                .argv
                .as_ref()
                .map_or_else(|| "unknown".to_string(), |a| format!("{a:?}"));
            let _ = writeln!(s, "    {} ({}) {}", c.name, c.list, c.image);
            let _ = writeln!(s, "      argv: {argv} (from {})", c.argv_source);
            if let Some(i) = &c.init {
                let _ = writeln!(s, "      runs an init already: {i}");
            }
            match &c.wrapped {
                Some(w) => {
                    let _ = writeln!(s, "      wrapped as: {w:?}");
                }
                None => {
                    let _ = writeln!(s, "      not wrapped");
                }
            }
        }
        let ops = self.patch.as_array().map_or(0, Vec::len);
        if ops == 0 {
            let _ = writeln!(s, "  patch: none");
        } else {
            let _ = writeln!(
                s,
                "  patch ({ops} operations):\n{}",
                serde_json::to_string_pretty(&self.patch).unwrap_or_default()
            );
        }
        s
    }
}

/// Fetches the object, its namespace's labels, the cluster's policies and (like the webhook) the
/// image configs the planner asks for; prints the explanation.
pub async fn run(args: Args) -> Result<(), Error> {
    let (kind, name) = args
        .object
        .split_once('/')
        .ok_or_else(|| Error::Object(args.object.clone()))?;
    let (kind, group, version, plural) =
        resource(kind).ok_or_else(|| Error::Kind(kind.to_string()))?;
    let client = kube::Client::try_default()
        .await
        .map_err(|source| Error::Kube {
            what: "connecting to the cluster (KUBECONFIG)".into(),
            source,
        })?;
    let kube_err = |what: String| move |source| Error::Kube { what, source };
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    };
    let obj = Api::<DynamicObject>::namespaced_with(client.clone(), &args.namespace, &ar)
        .get(name)
        .await
        .map_err(kube_err(format!(
            "getting {kind} {}/{name}",
            args.namespace
        )))?;
    let obj = serde_json::to_value(&obj).map_err(|e| Error::Other(e.to_string()))?;
    let pod_value = template_pod(&obj)
        .ok_or_else(|| Error::Other(format!("{kind} {name} has no pod template")))?;
    let pod: Pod = serde_json::from_value(pod_value).map_err(|e| Error::Other(e.to_string()))?;
    let ns = Api::<Namespace>::all(client.clone())
        .get(&args.namespace)
        .await
        .map_err(kube_err(format!("getting namespace {}", args.namespace)))?;
    let labels: BTreeMap<String, String> = ns.metadata.labels.unwrap_or_default();
    let policies: Vec<ReaperPolicy> = Api::<ReaperPolicy>::all(client.clone())
        .list(&Default::default())
        .await
        .map_err(kube_err("listing ReaperPolicies".into()))?
        .items;
    let policies = PolicySet::new(policies.into_iter().map(Arc::new));
    let mut cfg = decide::Config::new(args.reaper_image.clone());
    cfg.scope = args.scope.scope(None);
    cfg.mount_path = args.mount_path.trim_end_matches('/').to_string();
    cfg.default_mode = args.default_mode;
    use crate::webhook::capability::Setting;
    let supported = match args.image_volumes {
        Setting::True => true,
        Setting::False => false,
        Setting::Detect => {
            let facts =
                crate::webhook::capability::gather(&client, &args.namespace, &args.reaper_image)
                    .await;
            crate::webhook::capability::image_volumes_supported(&facts).is_ok()
        }
    };
    cfg.image_volumes = crate::webhook::capability::Support::fixed(supported);
    let scope = Scope {
        namespace: &args.namespace,
        namespace_labels: &labels,
    };
    let wanted = decide::images_to_resolve(&pod, scope, &policies, &cfg);
    let images = if wanted.is_empty() {
        ImageIndex::default()
    } else {
        let metrics = crate::metrics::Metrics::new();
        let registry =
            crate::registry::Registry::new(args.registry.settings()?, Some(client), &metrics);
        registry.resolve(&pod, &args.namespace, &wanted).await
    };
    let e = explain(
        &format!("{kind}/{name}"),
        &pod,
        scope,
        &policies,
        &images,
        &cfg,
    );
    match args.output {
        Output::Text => print!("{}", e.text()),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&e).map_err(|e| Error::Other(e.to_string()))?
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageConfig;
    use serde_json::json;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn labels(opted_in: bool) -> BTreeMap<String, String> {
        let mut l = BTreeMap::from([(keys::LABEL_NAMESPACE_NAME.to_string(), "shop".to_string())]);
        if opted_in {
            l.insert(keys::LABEL_INJECT.into(), keys::INJECT_ENABLED.into());
        }
        l
    }

    #[test]
    fn says_per_container_where_argv_comes_from_and_what_it_becomes() {
        let p = pod(json!({
            "metadata": {"name": "web-0"},
            "spec": {"containers": [
                {"name": "app", "image": "ghcr.io/acme/app:1", "command": ["/app"], "args": ["--serve"]},
                {"name": "proxy", "image": "nginx:1.27"},
                {"name": "tini", "image": "acme/tini:1", "command": ["/sbin/tini", "--", "run"]}
            ]}
        }));
        let mut images = ImageIndex::default();
        images.insert(
            "nginx:1.27",
            Ok(ImageConfig {
                entrypoint: vec!["/docker-entrypoint.sh".into()],
                cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
                platforms: vec![],
            }),
        );
        let l = labels(true);
        let e = explain(
            "Pod/web-0",
            &p,
            Scope {
                namespace: "shop",
                namespace_labels: &l,
            },
            &PolicySet::default(),
            &images,
            &decide::Config::new("r:1"),
        );
        assert!(e.namespace_opted_in);
        assert_eq!(e.outcome, "inject:app,proxy");
        let by = |n: &str| e.containers.iter().find(|c| c.name == n).unwrap();
        assert_eq!(by("app").argv_source, "pod");
        assert_eq!(
            by("app").wrapped.as_deref().unwrap(),
            ["/.reaper/reaper", "--", "/app", "--serve"]
        );
        assert_eq!(by("proxy").argv_source, "registry");
        assert_eq!(
            by("proxy").argv.as_deref().unwrap(),
            ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
        );
        assert!(by("proxy").wrapped.is_some());
        assert_eq!(by("tini").init.as_deref(), Some("tini"));
        assert_eq!(by("tini").wrapped, None);
        assert!(e.patch.as_array().is_some_and(|p| !p.is_empty()));
        assert!(
            e.text().contains("runs an init already: tini"),
            "{}",
            e.text()
        );
    }

    /// Mode image, and auto where image volumes are supported: the same wrap, the patch mounts
    /// the reaper image instead of adding the installer.
    #[test]
    fn image_volume_wraps_show_in_the_patch() {
        let l = labels(true);
        let scope = Scope {
            namespace: "shop",
            namespace_labels: &l,
        };
        for (annotations, supported) in [
            (json!({keys::ANNOTATION_MODE: "image"}), false),
            (json!({}), true),
        ] {
            let p = pod(
                json!({"metadata": {"name": "p", "annotations": annotations},
                "spec": {"containers": [{"name": "a", "image": "busybox", "command": ["sleep", "3600"]}]}}),
            );
            let mut cfg = decide::Config::new("r:1");
            cfg.image_volumes = crate::webhook::capability::Support::fixed(supported);
            let e = explain(
                "Pod/p",
                &p,
                scope,
                &PolicySet::default(),
                &ImageIndex::default(),
                &cfg,
            );
            assert_eq!(e.outcome, "inject:a");
            let ops = e.patch.as_array().unwrap();
            let volume = ops.iter().find(|o| o["path"] == "/spec/volumes").unwrap();
            assert_eq!(volume["value"][0]["image"]["reference"], "r:1", "{ops:?}");
            assert!(!ops.iter().any(|o| {
                o["path"]
                    .as_str()
                    .unwrap()
                    .starts_with("/spec/initContainers")
            }));
            assert_eq!(
                e.containers[0].wrapped.as_deref().unwrap(),
                ["/.reaper/reaper", "--", "sleep", "3600"]
            );
        }
    }

    #[test]
    fn a_namespace_not_opted_in_is_said_so_and_the_pod_is_ignored() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "busybox", "command": ["sleep", "3600"]}]}}));
        let l = labels(false);
        let e = explain(
            "Pod/p",
            &p,
            Scope {
                namespace: "shop",
                namespace_labels: &l,
            },
            &PolicySet::default(),
            &ImageIndex::default(),
            &decide::Config::new("r:1"),
        );
        assert!(!e.namespace_opted_in && !e.in_scope);
        assert!(
            e.text().contains("in scope: no, not opted in"),
            "{}",
            e.text()
        );
        assert!(
            e.outcome.starts_with("not be called: not opted in"),
            "{}",
            e.outcome
        );
        // The pod opts in itself (--pod-opt-in, the default); not with --pod-opt-in=false, and
        // every pod takes part with --selection=opt-out.
        let mut joined = p.clone();
        joined.metadata.labels = Some(BTreeMap::from([(
            keys::LABEL_INJECT.to_string(),
            keys::INJECT_ENABLED.to_string(),
        )]));
        let run = |pod: &Pod, cfg: &decide::Config| {
            explain(
                "Pod/p",
                pod,
                Scope {
                    namespace: "shop",
                    namespace_labels: &l,
                },
                &PolicySet::default(),
                &ImageIndex::default(),
                cfg,
            )
        };
        let mut cfg = decide::Config::new("r:1");
        let e = run(&joined, &cfg);
        assert!(e.in_scope, "{e:?}");
        assert_eq!(e.scope, "pod opted in (reaper.dev/inject=enabled)");
        assert!(!e.outcome.starts_with("not be called"), "{}", e.outcome);
        cfg.scope.pod_opt_in = false;
        assert!(!run(&joined, &cfg).in_scope);
        cfg.scope.selection = crate::scope::Selection::OptOut;
        let e = run(&p, &cfg);
        assert!(
            e.in_scope && e.scope.contains("--selection=opt-out"),
            "{e:?}"
        );
    }
}
