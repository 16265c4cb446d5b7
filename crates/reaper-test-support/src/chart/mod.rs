//! Rendering the Helm chart (`charts/reaper`) with `bin/helm` (built by `make tools`) and reading
//! the objects: shared by the chart, control-plane chart/RBAC and image tests.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// The chart directory.
pub fn chart_dir() -> PathBuf {
    crate::control_plane::repo_root().join("charts/reaper")
}

/// `bin/helm`, or a panic telling how to build it.
pub fn helm() -> PathBuf {
    let path = crate::control_plane::bin_dir().join("helm");
    assert!(
        path.is_file(),
        "{} is missing: run `make tools` (builds helm from Go modules)",
        path.display()
    );
    path
}

/// Runs helm with `args`; Ok(stdout) or Err(stderr + stdout).
pub fn helm_run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running helm: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "helm {args:?} failed ({}):\n{stderr}{stdout}",
            out.status
        ))
    }
}

/// A value to pass with `--set` (`Set`), `--set-string` (`Str`) or `--set-json` (`Json`).
#[derive(Clone, Copy, Debug)]
pub enum V<'a> {
    Set(&'a str, &'a str),
    Str(&'a str, &'a str),
    Json(&'a str, &'a str),
}

impl V<'_> {
    /// The helm flag and its argument.
    pub fn helm_args(&self) -> [String; 2] {
        let (flag, k, val) = match self {
            V::Set(k, val) => ("--set", k, val),
            V::Str(k, val) => ("--set-string", k, val),
            V::Json(k, val) => ("--set-json", k, val),
        };
        [flag.to_string(), format!("{k}={val}")]
    }
}

/// `helm template RELEASE charts/reaper --namespace NS` with values; the YAML text.
pub fn template_text(release: &str, namespace: &str, values: &[V<'_>]) -> Result<String, String> {
    template_text_with(release, namespace, values, &[])
}

/// [`template_text`] with extra helm flags (e.g. `--include-crds`).
pub fn template_text_with(
    release: &str,
    namespace: &str,
    values: &[V<'_>],
    extra: &[&str],
) -> Result<String, String> {
    let chart = chart_dir();
    let mut args: Vec<String> = vec![
        "template".into(),
        release.into(),
        chart.display().to_string(),
        "--namespace".into(),
        namespace.into(),
    ];
    for v in values {
        args.extend(v.helm_args());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    helm_run(&refs)
}

/// Every object of a YAML stream (empty documents skipped).
pub fn parse_stream(text: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(text)
        .filter_map(|doc| {
            let v: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{text}"));
            (!v.is_null()).then_some(v)
        })
        .collect()
}

/// The rendered objects, or a panic with helm's message.
pub fn render(release: &str, namespace: &str, values: &[V<'_>]) -> Objects {
    let text = template_text(release, namespace, values).unwrap_or_else(|e| panic!("{e}"));
    Objects(parse_stream(&text))
}

/// The certificate modes and the values each needs.
pub fn certs_modes() -> Vec<(&'static str, Vec<V<'static>>)> {
    vec![
        ("self-managed", vec![]),
        ("cert-manager", vec![V::Set("certs.mode", "cert-manager")]),
        (
            "provided",
            vec![
                V::Set("certs.mode", "provided"),
                V::Set("certs.provided.secretName", "my-webhook-tls"),
                // base64 of a (dummy) PEM header: the API server only checks it is base64.
                V::Str(
                    "certs.provided.caBundle",
                    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
                ),
            ],
        ),
    ]
}

/// The objects of one rendering.
#[derive(Clone, Debug)]
pub struct Objects(pub Vec<Value>);

impl Objects {
    pub fn all(&self) -> &[Value] {
        &self.0
    }

    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|o| o["kind"] == kind).collect()
    }

    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    pub fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name).unwrap_or_else(|| {
            let have: Vec<String> = self
                .0
                .iter()
                .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name} in the rendering; have {have:?}")
        })
    }

    /// The pod templates: (kind/name, pod spec).
    pub fn pod_specs(&self) -> Vec<(String, &Value)> {
        self.0
            .iter()
            .filter(|o| matches!(o["kind"].as_str(), Some("Deployment" | "DaemonSet")))
            .map(|o| {
                (
                    format!(
                        "{}/{}",
                        o["kind"].as_str().unwrap(),
                        o["metadata"]["name"].as_str().unwrap()
                    ),
                    &o["spec"]["template"]["spec"],
                )
            })
            .collect()
    }

    /// The container args of a workload's first container.
    pub fn args(&self, kind: &str, name: &str) -> Vec<String> {
        strings(&self.get(kind, name)["spec"]["template"]["spec"]["containers"][0]["args"])
    }

    /// The rules of a ClusterRole or Role.
    pub fn rules(&self, kind: &str, name: &str) -> Vec<Rule> {
        self.get(kind, name)["rules"]
            .as_array()
            .map(|rules| rules.iter().map(Rule::from).collect())
            .unwrap_or_default()
    }
}

/// One RBAC rule, flattened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub names: Vec<String>,
    pub verbs: Vec<String>,
}

impl From<&Value> for Rule {
    fn from(v: &Value) -> Self {
        Rule {
            groups: strings(&v["apiGroups"]),
            resources: strings(&v["resources"]),
            names: strings(&v["resourceNames"]),
            verbs: strings(&v["verbs"]),
        }
    }
}

/// Whether `rules` grant `verb` on `group`/`resource` (for any name when `name` is None).
pub fn allows(rules: &[Rule], group: &str, resource: &str, verb: &str, name: Option<&str>) -> bool {
    rules.iter().any(|r| {
        r.groups.iter().any(|g| g == group || g == "*")
            && r.resources.iter().any(|x| x == resource || x == "*")
            && r.verbs.iter().any(|v| v == verb || v == "*")
            && (r.names.is_empty() || name.is_some_and(|n| r.names.iter().any(|x| x == n)))
    })
}

/// A JSON array of strings as a Vec (empty when absent).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The value of `--flag=value` in args.
pub fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("--{flag}=");
    args.iter().find_map(|a| a.strip_prefix(&prefix))
}

pub mod cluster;
pub mod local;

/// Ways to configure which pods Reaper governs (docs/install.md#choosing-what-reaper-governs),
/// each named: the default, without pod opt-in, opt-out, and each with further selectors.
pub fn scope_configs() -> Vec<(&'static str, Vec<V<'static>>)> {
    let prod = V::Json(
        "webhook.namespaceSelector",
        r#"{"matchLabels":{"env":"prod"}}"#,
    );
    let not_legacy = V::Json(
        "webhook.objectSelector",
        r#"{"matchExpressions":[{"key":"legacy","operator":"DoesNotExist"}]}"#,
    );
    vec![
        ("opt-in with pod opt-in", vec![]),
        (
            "opt-in without pod opt-in",
            vec![V::Set("webhook.podOptIn", "false")],
        ),
        ("opt-out", vec![V::Set("webhook.selection", "opt-out")]),
        ("opt-in with selectors", vec![prod, not_legacy]),
        (
            "opt-out with selectors",
            vec![
                V::Set("webhook.selection", "opt-out"),
                V::Json(
                    "webhook.namespaceSelector",
                    r#"{"matchExpressions":[{"key":"env","operator":"In","values":["prod","staging"]}]}"#,
                ),
                V::Json(
                    "webhook.objectSelector",
                    r#"{"matchLabels":{"tier":"web"}}"#,
                ),
            ],
        ),
    ]
}

/// The scope flags among a component's rendered args (`--excluded-namespaces`, `--selection`,
/// ...), in order.
pub fn scope_flags(args: &[String]) -> Vec<String> {
    const FLAGS: [&str; 5] = [
        "--excluded-namespaces=",
        "--selection=",
        "--pod-opt-in=",
        "--namespace-selector=",
        "--object-selector=",
    ];
    args.iter()
        .filter(|a| FLAGS.iter().any(|f| a.starts_with(f)))
        .cloned()
        .collect()
}

/// The scope rule a component's rendered args describe (src/scope.rs), with its own namespace
/// `own` excluded as the component does.
pub fn scope_rule(args: &[String], own: &str) -> reaper::scope::Scope {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        scope: reaper::scope::ScopeArgs,
    }
    use clap::Parser;
    let flags = scope_flags(args);
    Flags::try_parse_from(std::iter::once("scope".to_string()).chain(flags.clone()))
        .unwrap_or_else(|e| panic!("{flags:?}: {e}"))
        .scope
        .scope(Some(own))
}
