//! `reaper-controller inject`: the webhook's mutation applied offline to manifests, for GitOps
//! repositories that forbid mutating webhooks or want the result reviewed.
//!
//! Every Pod and pod template of the input (Pods, Deployments, StatefulSets, DaemonSets,
//! ReplicaSets, Jobs, CronJobs) goes through the webhook's own planner ([`decide::plan`]) and
//! patch ([`Plan::patch`]) as if it were created in its namespace, opted in; everything else
//! passes through unchanged. No registry is asked: a container without `command` is handled as
//! when the webhook's lookup fails (`auto` falls back to the policy's fallback), unless a policy
//! names its argv in `entrypoints`. Nor is the cluster: `auto` uses the `reaper-install` init
//! container unless `--image-volumes` says the cluster runs image volumes (mode `image` mounts
//! the reaper image either way).
use super::{template_path, template_pod};
use crate::crd::{Mode, PolicySet, ReaperPolicy};
use crate::image::ImageIndex;
use crate::keys;
use crate::webhook::decide::{self, Plan, Scope};
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

/// Flags of `reaper-controller inject`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Manifests to mutate (a YAML stream); `-` reads standard input.
    #[arg(
        short = 'f',
        long = "filename",
        env = "REAPER_INJECT_FILE",
        default_value = "-"
    )]
    pub file: PathBuf,
    /// ReaperPolicy objects (YAML stream) to decide with, as the webhook's `--policies`.
    #[arg(long, env = "REAPER_POLICIES")]
    pub policies: Option<PathBuf>,
    /// Image whose `/reaper` is the static init (as the webhook's `--reaper-image`).
    #[arg(long, env = "REAPER_REAPER_IMAGE")]
    pub reaper_image: String,
    /// Where wrapped containers see the binary (as the webhook's `--mount-path`).
    #[arg(long, env = "REAPER_MOUNT_PATH", default_value = "/.reaper")]
    pub mount_path: String,
    /// Mode for objects no policy matches (as the webhook's `--default-mode`).
    #[arg(long, env = "REAPER_DEFAULT_MODE", default_value = "auto")]
    pub default_mode: Mode,
    /// Take the target cluster as running image volumes (as the webhook would detect it), so
    /// `auto` mounts the reaper image instead of adding the `reaper-install` init container.
    /// Off by default: offline there is no cluster to ask; mode `image` (a policy, the
    /// `reaper.dev/mode` annotation, `--default-mode image`) uses an image volume either way.
    #[arg(long, env = "REAPER_IMAGE_VOLUMES", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub image_volumes: bool,
    /// Namespace of objects whose manifest names none.
    #[arg(short = 'n', long, env = "REAPER_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Labels of the target namespaces, for policies' namespaceSelectors (`key=value`,
    /// repeatable; `kubernetes.io/metadata.name` and `reaper.dev/inject=enabled` are implied).
    #[arg(
        long = "namespace-label",
        env = "REAPER_NAMESPACE_LABELS",
        value_delimiter = ','
    )]
    pub namespace_labels: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("document {document}: {reason}")]
    Document { document: usize, reason: String },
    #[error("--namespace-label {0:?}: expected key=value")]
    Label(String),
    #[error("--policies: {0}")]
    Policies(String),
    #[error("--mount-path {0:?} must be an absolute path")]
    MountPath(String),
}

/// Settings of one run, without I/O.
pub struct Options {
    pub config: decide::Config,
    pub policies: PolicySet,
    pub namespace: String,
    pub namespace_labels: BTreeMap<String, String>,
}

/// What happened to one pod (template) of the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// `Kind/name` of the document and, for templates, `(template)`.
    pub object: String,
    /// The `reaper.dev/injected` value (`inject:...`, `share`, `skipped:...`), or `ignored`.
    pub outcome: String,
    pub warnings: Vec<String>,
}

/// Runs the command: reads, mutates, prints the YAML stream; notes go to standard error.
pub fn run(args: &Args) -> Result<(), Error> {
    let read = |path: &PathBuf| -> Result<String, Error> {
        let err = |source| Error::Read {
            path: path.display().to_string(),
            source,
        };
        if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(err)?;
            Ok(s)
        } else {
            std::fs::read_to_string(path).map_err(err)
        }
    };
    let input = read(&args.file)?;
    let policies = match &args.policies {
        None => Vec::new(),
        Some(p) => crate::webhook::sources::parse_policies(&read(p)?)
            .map_err(|e| Error::Policies(e.to_string()))?,
    };
    let opts = options(args, policies)?;
    let (out, notes) = inject_stream(&input, &opts)?;
    for n in &notes {
        eprintln!("{}: {}", n.object, n.outcome);
        for w in &n.warnings {
            eprintln!("  warning: {w}");
        }
    }
    print!("{out}");
    Ok(())
}

/// [`Options`] from the flags and parsed policies.
pub fn options(args: &Args, policies: Vec<ReaperPolicy>) -> Result<Options, Error> {
    let mount = args.mount_path.trim_end_matches('/');
    if !mount.starts_with('/') {
        return Err(Error::MountPath(args.mount_path.clone()));
    }
    let mut config = decide::Config::new(args.reaper_image.clone());
    config.mount_path = mount.to_string();
    config.default_mode = args.default_mode;
    config.image_volumes = crate::webhook::capability::Support::fixed(args.image_volumes);
    let mut namespace_labels = BTreeMap::new();
    for l in &args.namespace_labels {
        let (k, v) = l.split_once('=').ok_or_else(|| Error::Label(l.clone()))?;
        namespace_labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(Options {
        config,
        policies: PolicySet::new(policies.into_iter().map(Arc::new)),
        namespace: args.namespace.clone(),
        namespace_labels,
    })
}

/// Mutates every pod and pod template of a YAML stream; returns the new stream and a note per
/// pod (template). Documents are re-emitted as YAML (comments are not kept).
pub fn inject_stream(input: &str, opts: &Options) -> Result<(String, Vec<Note>), Error> {
    let mut out = String::new();
    let mut notes = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(input).enumerate() {
        let bad = |reason: String| Error::Document {
            document: i + 1,
            reason,
        };
        let yaml = yaml_serde::Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
        if yaml.is_null() {
            continue;
        }
        let mut obj: Value = serde_json::to_value(&yaml).map_err(|e| bad(e.to_string()))?;
        if let Some(note) = inject_object(&mut obj, opts).map_err(bad)? {
            notes.push(note);
        }
        out.push_str("---\n");
        out.push_str(&yaml_serde::to_string(&obj).map_err(|e| bad(e.to_string()))?);
    }
    Ok((out, notes))
}

/// Mutates one object in place if it is or holds a pod; `None` for other kinds.
pub fn inject_object(obj: &mut Value, opts: &Options) -> Result<Option<Note>, String> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let name = obj["metadata"]["name"]
        .as_str()
        .or(obj["metadata"]["generateName"].as_str())
        .unwrap_or_default()
        .to_string();
    let namespace = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or(&opts.namespace)
        .to_string();
    let object = format!("{kind}/{name}");
    if kind == "Pod" {
        let note = mutate_pod(obj, &namespace, opts).map_err(|e| format!("{object}: {e}"))?;
        return Ok(Some(Note { object, ..note }));
    }
    let Some(path) = template_path(&kind) else {
        return Ok(None);
    };
    let mut pod = template_pod(obj)
        .ok_or_else(|| format!("{object}: no pod template at .{}", path.join(".")))?;
    let named = obj_named(obj, path);
    let mut template = obj;
    for p in path {
        template = &mut template[*p];
    }
    let note = mutate_pod(&mut pod, &namespace, opts).map_err(|e| format!("{object}: {e}"))?;
    if !named && let Some(m) = pod["metadata"].as_object_mut() {
        m.remove("generateName");
    }
    let metadata = pod["metadata"].take();
    if metadata.as_object().is_some_and(|m| !m.is_empty()) {
        template["metadata"] = metadata;
    }
    template["spec"] = pod["spec"].take();
    Ok(Some(Note {
        object: format!("{object} (template)"),
        ..note
    }))
}

/// Plans and applies the webhook's patch to a Pod object.
fn mutate_pod(pod: &mut Value, namespace: &str, opts: &Options) -> Result<Note, String> {
    let typed: Pod = serde_json::from_value(pod.clone()).map_err(|e| e.to_string())?;
    let mut labels = opts.namespace_labels.clone();
    labels.insert(
        keys::LABEL_NAMESPACE_NAME.to_string(),
        namespace.to_string(),
    );
    labels
        .entry(keys::LABEL_INJECT.to_string())
        .or_insert_with(|| keys::INJECT_ENABLED.to_string());
    let plan: Plan = decide::plan(
        &typed,
        Scope {
            namespace,
            namespace_labels: &labels,
        },
        &opts.policies,
        &ImageIndex::default(),
        &opts.config,
    );
    json_patch::patch(pod, &plan.patch()).map_err(|e| format!("applying the plan: {e}"))?;
    Ok(Note {
        object: String::new(),
        outcome: plan.annotation().unwrap_or_else(|| "ignored".into()),
        warnings: plan.warnings.clone(),
    })
}

/// Whether the template at `path` names its pods (else [`template_pod`] gave it a generateName).
fn obj_named(obj: &Value, path: &[&str]) -> bool {
    let mut t = obj;
    for p in path {
        t = &t[*p];
    }
    t["metadata"]["name"].is_string() || t["metadata"]["generateName"].is_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts() -> Options {
        Options {
            config: decide::Config::new("ghcr.io/reaper-dev/reaper:0.1.0"),
            policies: PolicySet::default(),
            namespace: "shop".into(),
            namespace_labels: BTreeMap::new(),
        }
    }

    #[test]
    fn deployment_templates_and_pods_are_wrapped_other_kinds_pass_through() {
        let input = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {a: "1"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: app, image: ghcr.io/acme/app:1, command: [/app, --serve]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: batch}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - {name: job, image: ghcr.io/acme/job:1, command: [/job]}
"#;
        let (out, notes) = inject_stream(input, &opts()).unwrap();
        let docs: Vec<Value> = yaml_serde::Deserializer::from_str(&out)
            .map(|d| serde_json::to_value(yaml_serde::Value::deserialize(d).unwrap()).unwrap())
            .collect();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0]["data"]["a"], "1");
        let web = &docs[1]["spec"]["template"];
        assert_eq!(
            web["spec"]["containers"][0]["command"],
            json!(["/.reaper/reaper", "--", "/app", "--serve"])
        );
        assert_eq!(web["spec"]["initContainers"][0]["name"], "reaper-install");
        assert_eq!(web["metadata"]["labels"]["app"], "web");
        assert_eq!(
            web["metadata"]["annotations"][keys::ANNOTATION_INJECTED],
            "inject:app"
        );
        let job = &docs[2]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(
            job["containers"][0]["command"],
            json!(["/.reaper/reaper", "--", "/job"])
        );
        assert_eq!(
            notes.iter().map(|n| n.object.as_str()).collect::<Vec<_>>(),
            ["Deployment/web (template)", "CronJob/nightly (template)"]
        );
    }

    /// Offline there is no cluster to ask: `auto` keeps the init container unless
    /// `--image-volumes` says the target runs image volumes; mode `image` mounts the image anyway.
    #[test]
    fn image_volumes_only_when_asked() {
        let pod = |annotations: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{annotations}}}\nspec:\n  containers:\n  - {{name: a, image: busybox, command: [sleep, '1']}}\n"
            )
        };
        let delivery = |out: &str| {
            let v: Value = serde_json::to_value(
                yaml_serde::from_str::<yaml_serde::Value>(out.trim_start_matches("---\n")).unwrap(),
            )
            .unwrap();
            let image = v["spec"]["volumes"][0]["image"]["reference"].clone();
            let init = v["spec"]["initContainers"][0]["name"].clone();
            (image, init)
        };
        let args = |flags: &[&str]| {
            let mut argv = vec![
                "inject",
                "--reaper-image",
                "ghcr.io/reaper-dev/reaper:0.1.0",
            ];
            argv.extend_from_slice(flags);
            let args: Args = crate::component::parse_flags(&argv[1..]).unwrap();
            options(&args, Vec::new()).unwrap()
        };
        let image = json!("ghcr.io/reaper-dev/reaper:0.1.0");
        for (flags, annotations, want) in [
            (&[][..], "", (Value::Null, json!("reaper-install"))),
            (&["--image-volumes"][..], "", (image.clone(), Value::Null)),
            (
                &["--image-volumes=false"][..],
                ", annotations: {reaper.dev/mode: image}",
                (image.clone(), Value::Null),
            ),
            (
                &["--default-mode", "image"][..],
                "",
                (image.clone(), Value::Null),
            ),
        ] {
            let (out, notes) = inject_stream(&pod(annotations), &args(flags)).unwrap();
            assert_eq!(notes[0].outcome, "inject:a", "{flags:?}");
            assert_eq!(delivery(&out), want, "{flags:?} {annotations}");
            // A fixed point either way.
            assert_eq!(inject_stream(&out, &args(flags)).unwrap().0, out);
        }
    }

    #[test]
    fn output_is_a_fixed_point() {
        let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: busybox, command: [sleep, '1']}\n";
        let (once, _) = inject_stream(input, &opts()).unwrap();
        let (twice, notes) = inject_stream(&once, &opts()).unwrap();
        assert_eq!(once, twice);
        assert_eq!(notes[0].outcome, "inject:a");
    }

    #[test]
    fn without_command_auto_shares_and_off_leaves_alone() {
        let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: nginx}\n";
        let (out, notes) = inject_stream(input, &opts()).unwrap();
        assert_eq!(notes[0].outcome, "share");
        assert!(out.contains("shareProcessNamespace: true"), "{out}");
        let off = input.replace(
            "metadata: {name: p}",
            "metadata: {name: p, annotations: {reaper.dev/mode: \"off\"}}",
        );
        let (out, notes) = inject_stream(&off, &opts()).unwrap();
        assert!(!out.contains("shareProcessNamespace"), "{out}");
        assert_ne!(notes[0].outcome, "share");
    }

    #[test]
    fn bad_documents_say_which() {
        let err = inject_stream("kind: Pod\nspec: {containers: 3}\n", &opts()).unwrap_err();
        assert!(err.to_string().starts_with("document 1: Pod/"), "{err}");
    }
}
