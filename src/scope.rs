//! Which pods Reaper governs: one rule for the webhook (what it mutates), the operator (what it
//! counts and acts on) and the CLI (`explain`, `check`), so they can never disagree. The chart
//! writes the same rule into the webhook registration's selectors and the admission policies'
//! match rules, which is where the API server applies it.
//!
//! A pod is out of scope when its namespace is excluded (`--excluded-namespaces`, always with
//! Reaper's own), when it is a mirror (static) pod, when it carries `reaper.dev/inject=disabled`,
//! or when it or its namespace fails `--object-selector` / `--namespace-selector`. Otherwise its
//! namespace decides ([`Scope::namespace`]): one labelled `reaper.dev/inject=disabled` takes no
//! part; under `--selection=opt-in` (the default) one labelled `reaper.dev/inject=enabled` takes
//! part with all its pods, and in any other namespace only pods labelled
//! `reaper.dev/inject=enabled` do (`--pod-opt-in`, on by default); under `--selection=opt-out`
//! every other namespace takes part. Within scope, the pod's `reaper.dev/mode` annotation
//! overrides the policy's mode ([`effective_mode`]); mode `off` leaves the pod alone.
use crate::crd::Mode;
use crate::crd::selector::{matches_valid, validate_selector};
use crate::keys;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::{BTreeMap, BTreeSet};

/// The namespaces excluded by default (`--excluded-namespaces` of webhook and operator).
pub const DEFAULT_EXCLUDED_NAMESPACES: &str = "kube-system,kube-public,kube-node-lease";

/// How namespaces take part (`--selection`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Selection {
    /// Namespaces labelled `reaper.dev/inject=enabled` (and, with `--pod-opt-in`, pods labelled so
    /// elsewhere).
    #[default]
    OptIn,
    /// Every namespace except the excluded ones and those labelled `reaper.dev/inject=disabled`.
    OptOut,
}

/// The scope flags, the same for webhook, operator, `explain` and `check` (flattened into their
/// `Args`; the chart passes each component the same values).
#[derive(clap::Args, Clone, Debug)]
pub struct ScopeArgs {
    /// Namespaces never mutated nor governed (comma-separated). The component's own namespace
    /// (`POD_NAMESPACE`, or the operator's `--namespace`) is always added.
    #[arg(
        long,
        env = "REAPER_EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = DEFAULT_EXCLUDED_NAMESPACES
    )]
    pub excluded_namespaces: Vec<String>,
    /// `opt-in`: namespaces labelled reaper.dev/inject=enabled take part; `opt-out`: every
    /// namespace not excluded nor labelled reaper.dev/inject=disabled.
    #[arg(long, env = "REAPER_SELECTION", value_enum, default_value = "opt-in")]
    pub selection: Selection,
    /// Under `--selection=opt-in`, pods labelled reaper.dev/inject=enabled take part in
    /// namespaces without the label (not in excluded ones, nor those labelled disabled).
    #[arg(
        long,
        env = "REAPER_POD_OPT_IN",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub pod_opt_in: bool,
    /// A further namespace label selector every governed namespace must match, as JSON
    /// (`{"matchLabels":{"env":"prod"}}`); the chart's `webhook.namespaceSelector`.
    #[arg(long, env = "REAPER_NAMESPACE_SELECTOR", value_parser = parse_selector)]
    pub namespace_selector: Option<LabelSelector>,
    /// A further pod label selector every governed pod must match, as JSON; the chart's
    /// `webhook.objectSelector`.
    #[arg(long, env = "REAPER_OBJECT_SELECTOR", value_parser = parse_selector)]
    pub object_selector: Option<LabelSelector>,
}

impl Default for ScopeArgs {
    fn default() -> Self {
        Self {
            excluded_namespaces: DEFAULT_EXCLUDED_NAMESPACES
                .split(',')
                .map(String::from)
                .collect(),
            selection: Selection::OptIn,
            pod_opt_in: true,
            namespace_selector: None,
            object_selector: None,
        }
    }
}

impl ScopeArgs {
    /// The rule these flags describe, with the component's own namespace excluded.
    pub fn scope(&self, own: Option<&str>) -> Scope {
        Scope {
            excluded: excluded_namespaces(&self.excluded_namespaces, own),
            selection: self.selection,
            pod_opt_in: self.pod_opt_in,
            namespace_selector: self.namespace_selector.clone(),
            object_selector: self.object_selector.clone(),
        }
    }
}

/// A label selector flag: JSON, checked as the API server checks selectors.
fn parse_selector(raw: &str) -> Result<LabelSelector, String> {
    let selector: LabelSelector = serde_json::from_str(raw).map_err(|e| {
        format!("not a label selector as JSON ({e}); e.g. {{\"matchLabels\":{{\"env\":\"prod\"}}}}")
    })?;
    validate_selector(&selector).map_err(|e| e.to_string())?;
    Ok(selector)
}

/// Why a pod is out of scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusion {
    ExcludedNamespace,
    MirrorPod,
    OptedOut,
    /// The namespace is labelled `reaper.dev/inject=disabled`.
    NamespaceOptedOut,
    /// Under opt-in, neither the namespace nor (with `--pod-opt-in`) the pod opted in.
    NotOptedIn,
    /// The pod or its namespace fails `--object-selector` / `--namespace-selector`.
    NotSelected,
}

impl Exclusion {
    /// For people: why the pod is not governed.
    pub fn describe(self) -> String {
        match self {
            Exclusion::ExcludedNamespace => "namespace excluded from Reaper".into(),
            Exclusion::MirrorPod => "static (mirror) pod: never mutated by the webhook".into(),
            Exclusion::OptedOut => format!(
                "opted out (label {}={})",
                keys::LABEL_INJECT,
                keys::INJECT_DISABLED
            ),
            Exclusion::NamespaceOptedOut => format!(
                "namespace opted out (label {}={})",
                keys::LABEL_INJECT,
                keys::INJECT_DISABLED
            ),
            Exclusion::NotOptedIn => format!(
                "not opted in (label the namespace, or the pod, {}={})",
                keys::LABEL_INJECT,
                keys::INJECT_ENABLED
            ),
            Exclusion::NotSelected => {
                "outside the installation's namespace or object selector".into()
            }
        }
    }
}

/// How a namespace takes part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceScope {
    /// Every pod not opted out.
    All,
    /// Only pods labelled `reaper.dev/inject=enabled` (opt-in with `--pod-opt-in`).
    PodsOptingIn,
    /// None.
    None(Exclusion),
}

/// What the rule reads of a pod.
#[derive(Clone, Copy, Debug)]
pub struct PodFacts<'a> {
    pub namespace: &'a str,
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub annotations: Option<&'a BTreeMap<String, String>>,
}

/// The scope rule of one installation.
#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    /// `--excluded-namespaces` plus the component's own.
    pub excluded: BTreeSet<String>,
    pub selection: Selection,
    pub pod_opt_in: bool,
    pub namespace_selector: Option<LabelSelector>,
    pub object_selector: Option<LabelSelector>,
}

impl Default for Scope {
    fn default() -> Self {
        ScopeArgs::default().scope(None)
    }
}

fn inject_label(labels: Option<&BTreeMap<String, String>>) -> Option<&str> {
    labels
        .and_then(|l| l.get(keys::LABEL_INJECT))
        .map(String::as_str)
}

impl Scope {
    /// Labels that make a new namespace, and a pod in it, governed (`check`'s dry-run pod): the
    /// namespace opted in plus what satisfies `--namespace-selector`, the pod what satisfies
    /// `--object-selector`. `Err` names a selector that no labels satisfy.
    pub fn governed_labels(&self) -> Result<[BTreeMap<String, String>; 2], String> {
        let satisfying = |s: &Option<LabelSelector>, what: &str| match s {
            None => Ok(BTreeMap::new()),
            Some(s) => labels_satisfying(s).ok_or_else(|| {
                format!("no labels satisfy the {what} selector: nothing is governed")
            }),
        };
        let mut namespace = satisfying(&self.namespace_selector, "namespace")?;
        namespace.insert(keys::LABEL_INJECT.into(), keys::INJECT_ENABLED.into());
        Ok([namespace, satisfying(&self.object_selector, "object")?])
    }

    /// How the namespace `name` with these labels takes part.
    pub fn namespace(&self, name: &str, labels: &BTreeMap<String, String>) -> NamespaceScope {
        if self.excluded.contains(name) {
            return NamespaceScope::None(Exclusion::ExcludedNamespace);
        }
        if self
            .namespace_selector
            .as_ref()
            .is_some_and(|s| !matches_valid(s, labels))
        {
            return NamespaceScope::None(Exclusion::NotSelected);
        }
        match (inject_label(Some(labels)), self.selection) {
            (Some(keys::INJECT_DISABLED), _) => NamespaceScope::None(Exclusion::NamespaceOptedOut),
            (Some(keys::INJECT_ENABLED), _) | (_, Selection::OptOut) => NamespaceScope::All,
            _ if self.pod_opt_in => NamespaceScope::PodsOptingIn,
            _ => NamespaceScope::None(Exclusion::NotOptedIn),
        }
    }

    /// Why `pod` is out of scope without looking at its namespace's labels: what the webhook
    /// checks itself (the registration's selectors applied the rest before it was called).
    pub fn pod_exclusion(&self, pod: PodFacts<'_>) -> Option<Exclusion> {
        if self.excluded.contains(pod.namespace) {
            return Some(Exclusion::ExcludedNamespace);
        }
        if pod
            .annotations
            .is_some_and(|a| a.contains_key(keys::ANNOTATION_MIRROR))
        {
            return Some(Exclusion::MirrorPod);
        }
        if inject_label(pod.labels) == Some(keys::INJECT_DISABLED) {
            return Some(Exclusion::OptedOut);
        }
        let empty = BTreeMap::new();
        self.object_selector
            .as_ref()
            .is_some_and(|s| !matches_valid(s, pod.labels.unwrap_or(&empty)))
            .then_some(Exclusion::NotSelected)
    }

    /// Why `pod`, in a namespace with `namespace_labels`, is out of scope, if it is.
    pub fn governs(
        &self,
        pod: PodFacts<'_>,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Result<(), Exclusion> {
        if let Some(why) = self.pod_exclusion(pod) {
            return Err(why);
        }
        match self.namespace(pod.namespace, namespace_labels) {
            NamespaceScope::All => Ok(()),
            NamespaceScope::PodsOptingIn
                if inject_label(pod.labels) == Some(keys::INJECT_ENABLED) =>
            {
                Ok(())
            }
            NamespaceScope::PodsOptingIn => Err(Exclusion::NotOptedIn),
            NamespaceScope::None(why) => Err(why),
        }
    }
}

/// Labels that satisfy `selector` when it can be satisfied by adding labels (`matchLabels`, the
/// first value of `In`, `Exists` as "true"; `NotIn` and `DoesNotExist` hold by absence). `None`
/// when these labels do not satisfy it (contradictory terms).
fn labels_satisfying(selector: &LabelSelector) -> Option<BTreeMap<String, String>> {
    let mut labels: BTreeMap<String, String> = selector.match_labels.clone().unwrap_or_default();
    for req in selector.match_expressions.iter().flatten() {
        let first = req.values.as_ref().and_then(|v| v.first());
        match (req.operator.as_str(), first) {
            ("In", Some(v)) => {
                labels.entry(req.key.clone()).or_insert_with(|| v.clone());
            }
            ("Exists", _) => {
                labels
                    .entry(req.key.clone())
                    .or_insert_with(|| "true".to_string());
            }
            _ => {}
        }
    }
    matches_valid(selector, &labels).then_some(labels)
}

/// The excluded namespaces from a flag's comma-separated entries plus Reaper's own namespace.
fn excluded_namespaces(flag: &[String], own: Option<&str>) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = flag
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(own) = own.filter(|n| !n.is_empty()) {
        out.insert(own.to_string());
    }
    out
}

/// The mode that applies: the pod's `reaper.dev/mode` annotation over the policy's. `Err`
/// carries the policy's mode when the annotation is not a mode (the caller warns).
pub fn effective_mode(annotation: Option<&str>, policy_mode: Mode) -> Result<Mode, Mode> {
    match annotation {
        None => Ok(policy_mode),
        Some(raw) => raw.parse::<Mode>().map_err(|_| policy_mode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(json: &str) -> LabelSelector {
        parse_selector(json).unwrap()
    }

    #[test]
    fn exclusions_in_order() {
        let excluded = excluded_namespaces(
            &DEFAULT_EXCLUDED_NAMESPACES
                .split(',')
                .map(String::from)
                .collect::<Vec<_>>(),
            Some("reaper-system"),
        );
        assert!(excluded.contains("kube-system") && excluded.contains("reaper-system"));
        let scope = Scope {
            excluded,
            ..Scope::default()
        };
        let none = BTreeMap::new();
        let mirror = map(&[(keys::ANNOTATION_MIRROR, "x")]);
        let out = map(&[(keys::LABEL_INJECT, keys::INJECT_DISABLED)]);
        let pod = |ns, labels, annotations| PodFacts {
            namespace: ns,
            labels,
            annotations,
        };
        for (facts, want) in [
            (
                pod("kube-system", Some(&out), Some(&mirror)),
                Some(Exclusion::ExcludedNamespace),
            ),
            (
                pod("reaper-system", None, None),
                Some(Exclusion::ExcludedNamespace),
            ),
            (
                pod("app", Some(&out), Some(&mirror)),
                Some(Exclusion::MirrorPod),
            ),
            (pod("app", Some(&out), None), Some(Exclusion::OptedOut)),
            (pod("app", Some(&none), Some(&none)), None),
            (pod("app", None, None), None),
        ] {
            assert_eq!(scope.pod_exclusion(facts), want, "{facts:?}");
        }
    }

    /// Every combination of namespace label, pod label and selection, against the table a user
    /// reads in docs/install.md#choosing-what-reaper-governs.
    #[test]
    fn selection_and_pod_opt_in() {
        use Exclusion::*;
        let (on, off) = (keys::INJECT_ENABLED, keys::INJECT_DISABLED);
        // (selection, pod_opt_in, namespace label, pod label, verdict)
        type Case<'a> = (
            Selection,
            bool,
            Option<&'a str>,
            Option<&'a str>,
            Result<(), Exclusion>,
        );
        let cases: &[Case] = &[
            (Selection::OptIn, true, Some(on), None, Ok(())),
            (Selection::OptIn, true, Some(on), Some(on), Ok(())),
            (Selection::OptIn, true, Some(on), Some(off), Err(OptedOut)),
            (Selection::OptIn, true, None, None, Err(NotOptedIn)),
            (Selection::OptIn, true, None, Some(on), Ok(())),
            (Selection::OptIn, true, Some("yes"), Some(on), Ok(())),
            (Selection::OptIn, true, None, Some(off), Err(OptedOut)),
            (
                Selection::OptIn,
                true,
                Some(off),
                Some(on),
                Err(NamespaceOptedOut),
            ),
            (Selection::OptIn, false, None, Some(on), Err(NotOptedIn)),
            (Selection::OptIn, false, Some(on), None, Ok(())),
            (Selection::OptOut, false, None, None, Ok(())),
            (Selection::OptOut, true, Some(on), None, Ok(())),
            (
                Selection::OptOut,
                true,
                Some(off),
                None,
                Err(NamespaceOptedOut),
            ),
            (
                Selection::OptOut,
                true,
                Some(off),
                Some(on),
                Err(NamespaceOptedOut),
            ),
            (Selection::OptOut, true, None, Some(off), Err(OptedOut)),
        ];
        for &(selection, pod_opt_in, ns, pod, want) in cases {
            let scope = Scope {
                selection,
                pod_opt_in,
                ..Scope::default()
            };
            let label = |v: Option<&str>| {
                v.map(|v| map(&[(keys::LABEL_INJECT, v)]))
                    .unwrap_or_default()
            };
            let (ns_labels, pod_labels) = (label(ns), label(pod));
            let facts = PodFacts {
                namespace: "app",
                labels: Some(&pod_labels),
                annotations: None,
            };
            assert_eq!(
                scope.governs(facts, &ns_labels),
                want,
                "{selection:?} pod-opt-in={pod_opt_in} namespace {ns:?} pod {pod:?}"
            );
            // Excluded namespaces stay out whatever the labels.
            let system = PodFacts {
                namespace: "kube-system",
                ..facts
            };
            assert_eq!(scope.governs(system, &ns_labels), Err(ExcludedNamespace));
        }
    }

    #[test]
    fn selectors_narrow_the_scope() {
        let scope = Scope {
            selection: Selection::OptOut,
            namespace_selector: Some(selector(r#"{"matchLabels":{"env":"prod"}}"#)),
            object_selector: Some(selector(
                r#"{"matchExpressions":[{"key":"legacy","operator":"DoesNotExist"}]}"#,
            )),
            ..Scope::default()
        };
        let prod = map(&[("env", "prod")]);
        let dev = map(&[("env", "dev")]);
        let plain = BTreeMap::new();
        let legacy = map(&[("legacy", "true")]);
        let pod = |labels| PodFacts {
            namespace: "app",
            labels: Some(labels),
            annotations: None,
        };
        assert_eq!(scope.governs(pod(&plain), &prod), Ok(()));
        assert_eq!(
            scope.governs(pod(&plain), &dev),
            Err(Exclusion::NotSelected)
        );
        assert_eq!(
            scope.governs(pod(&legacy), &prod),
            Err(Exclusion::NotSelected)
        );
        assert_eq!(
            scope.pod_exclusion(pod(&legacy)),
            Some(Exclusion::NotSelected)
        );
        assert_eq!(
            scope.namespace("app", &dev),
            NamespaceScope::None(Exclusion::NotSelected)
        );
        assert_eq!(scope.namespace("app", &prod), NamespaceScope::All);
        let [ns_labels, pod_labels] = scope.governed_labels().unwrap();
        assert_eq!(scope.governs(pod(&pod_labels), &ns_labels), Ok(()));
    }

    #[test]
    fn labels_that_satisfy_a_selector() {
        let s = selector(
            r#"{"matchLabels":{"env":"prod"},"matchExpressions":[
                {"key":"tier","operator":"In","values":["a","b"]},
                {"key":"team","operator":"Exists"},
                {"key":"legacy","operator":"DoesNotExist"},
                {"key":"zone","operator":"NotIn","values":["x"]}]}"#,
        );
        let labels = labels_satisfying(&s).unwrap();
        assert_eq!(
            labels,
            map(&[("env", "prod"), ("team", "true"), ("tier", "a")])
        );
        assert!(matches_valid(&s, &labels));
        let contradiction = selector(
            r#"{"matchLabels":{"env":"prod"},"matchExpressions":[{"key":"env","operator":"NotIn","values":["prod"]}]}"#,
        );
        assert_eq!(labels_satisfying(&contradiction), None);
    }

    #[test]
    fn selector_flags_are_checked_json() {
        assert!(parse_selector(r#"{"matchLabels":{"env":"prod"}}"#).is_ok());
        let err = parse_selector("env=prod").unwrap_err();
        assert!(err.contains("not a label selector as JSON"), "{err}");
        let err = parse_selector(
            r#"{"matchExpressions":[{"key":"env","operator":"Near","values":["x"]}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("unknown operator"), "{err}");
    }

    #[test]
    fn flags_default_to_namespace_opt_in_with_pod_opt_in() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            scope: ScopeArgs,
        }
        use clap::Parser;
        let s = Cli::try_parse_from(["x"])
            .unwrap()
            .scope
            .scope(Some("reaper"));
        assert_eq!(s.selection, Selection::OptIn);
        assert!(
            s.pod_opt_in && s.excluded.contains("reaper") && s.excluded.contains("kube-system")
        );
        assert_eq!(
            ScopeArgs::default().scope(None),
            Cli::try_parse_from(["x"]).unwrap().scope.scope(None)
        );
        let s = Cli::try_parse_from([
            "x",
            "--selection=opt-out",
            "--pod-opt-in=false",
            "--namespace-selector",
            r#"{"matchLabels":{"env":"prod"}}"#,
        ])
        .unwrap()
        .scope
        .scope(None);
        assert_eq!(s.selection, Selection::OptOut);
        assert!(!s.pod_opt_in && s.namespace_selector.is_some() && s.object_selector.is_none());
        assert!(Cli::try_parse_from(["x", "--object-selector", "{"]).is_err());
    }

    #[test]
    fn annotation_overrides_the_policy_mode() {
        assert_eq!(effective_mode(None, Mode::Inject), Ok(Mode::Inject));
        assert_eq!(effective_mode(Some("off"), Mode::Inject), Ok(Mode::Off));
        assert_eq!(effective_mode(Some(" Share "), Mode::Auto), Ok(Mode::Share));
        assert_eq!(
            effective_mode(Some("sometimes"), Mode::Auto),
            Err(Mode::Auto)
        );
    }
}
