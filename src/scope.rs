//! Which pods Reaper governs: one rule for the webhook (what it mutates) and the operator (what
//! it counts and acts on), so the two can never disagree.
//!
//! A pod is out of scope when its namespace is excluded (`--excluded-namespaces`, always with
//! Reaper's own), when it is a mirror (static) pod, or when it carries `reaper.dev/inject=disabled`.
//! A namespace takes part when labelled `reaper.dev/inject=enabled` and not excluded. Within
//! scope, the pod's `reaper.dev/mode` annotation overrides the policy's mode ([`effective_mode`]);
//! mode `off` leaves the pod alone.
use crate::crd::Mode;
use crate::keys;
use std::collections::{BTreeMap, BTreeSet};

/// The namespaces excluded by default (`--excluded-namespaces` of webhook and operator).
pub const DEFAULT_EXCLUDED_NAMESPACES: &str = "kube-system,kube-public,kube-node-lease";

/// `--excluded-namespaces`, the same flag for webhook and operator (flattened into their `Args`).
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
}

impl ScopeArgs {
    /// The excluded set, with the component's own namespace.
    pub fn excluded(&self, own: Option<&str>) -> BTreeSet<String> {
        excluded_namespaces(&self.excluded_namespaces, own)
    }
}

/// Why a pod is out of scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusion {
    ExcludedNamespace,
    MirrorPod,
    OptedOut,
}

/// What the rule reads of a pod.
#[derive(Clone, Copy, Debug)]
pub struct PodFacts<'a> {
    pub namespace: &'a str,
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub annotations: Option<&'a BTreeMap<String, String>>,
}

/// The excluded namespaces from a flag's comma-separated entries plus Reaper's own namespace.
pub fn excluded_namespaces(flag: &[String], own: Option<&str>) -> BTreeSet<String> {
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

/// Why `pod` is out of scope, if it is.
pub fn exclusion(pod: PodFacts<'_>, excluded: &BTreeSet<String>) -> Option<Exclusion> {
    if excluded.contains(pod.namespace) {
        return Some(Exclusion::ExcludedNamespace);
    }
    if pod
        .annotations
        .is_some_and(|a| a.contains_key(keys::ANNOTATION_MIRROR))
    {
        return Some(Exclusion::MirrorPod);
    }
    if pod
        .labels
        .and_then(|l| l.get(keys::LABEL_INJECT))
        .is_some_and(|v| v == keys::INJECT_DISABLED)
    {
        return Some(Exclusion::OptedOut);
    }
    None
}

/// Whether a namespace with these labels takes part (opted in and not excluded).
pub fn namespace_opted_in(
    name: &str,
    labels: &BTreeMap<String, String>,
    excluded: &BTreeSet<String>,
) -> bool {
    labels.get(keys::LABEL_INJECT).map(String::as_str) == Some(keys::INJECT_ENABLED)
        && !excluded.contains(name)
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
            assert_eq!(exclusion(facts, &excluded), want, "{facts:?}");
        }
    }

    #[test]
    fn namespaces_opt_in_by_label_unless_excluded() {
        let excluded = excluded_namespaces(&["kube-system".into()], None);
        let on = map(&[(keys::LABEL_INJECT, keys::INJECT_ENABLED)]);
        assert!(namespace_opted_in("app", &on, &excluded));
        assert!(!namespace_opted_in("kube-system", &on, &excluded));
        assert!(!namespace_opted_in(
            "app",
            &map(&[(keys::LABEL_INJECT, "yes")]),
            &excluded
        ));
        assert!(!namespace_opted_in("app", &BTreeMap::new(), &excluded));
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
