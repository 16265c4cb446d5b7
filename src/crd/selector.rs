//! Kubernetes label selectors (`matchLabels` + `matchExpressions`), evaluated without an API
//! server. Shared by the webhook (which policy governs a pod) and the operator (which reports an
//! invalid selector as `InvalidSelector`). Semantics follow `metav1.LabelSelectorAsSelector`:
//! every term must hold; an empty selector matches everything.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use std::collections::BTreeMap;

/// Why a selector cannot be evaluated. An invalid selector matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error(
        "matchExpressions key {key:?}: unknown operator {operator:?} (use In, NotIn, Exists or DoesNotExist)"
    )]
    UnknownOperator { key: String, operator: String },
    #[error("matchExpressions key {key:?}: operator {operator} needs at least one value")]
    ValuesRequired { key: String, operator: String },
    #[error("matchExpressions key {key:?}: operator {operator} takes no values (remove them)")]
    ValuesForbidden { key: String, operator: String },
    #[error("label key {key:?} is invalid: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error(
        "label value {value:?} for key {key:?} is invalid: at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
    )]
    InvalidValue { key: String, value: String },
}

pub type Result<T, E = SelectorError> = std::result::Result<T, E>;

/// Whether `labels` satisfy `selector`. Errors when the selector itself is invalid.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool> {
    validate_selector(selector)?;
    Ok(matches_valid(selector, labels))
}

/// Check a selector the way the API server would before using it.
pub fn validate_selector(selector: &LabelSelector) -> Result<()> {
    for (key, value) in selector.match_labels.iter().flatten() {
        validate_key(key)?;
        validate_value(key, value)?;
    }
    for req in selector.match_expressions.iter().flatten() {
        validate_key(&req.key)?;
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(SelectorError::ValuesRequired {
                    key: req.key.clone(),
                    operator: req.operator.clone(),
                });
            }
            "In" | "NotIn" => {
                for v in values {
                    validate_value(&req.key, v)?;
                }
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(SelectorError::ValuesForbidden {
                    key: req.key.clone(),
                    operator: req.operator.clone(),
                });
            }
            "Exists" | "DoesNotExist" => {}
            other => {
                return Err(SelectorError::UnknownOperator {
                    key: req.key.clone(),
                    operator: other.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Evaluate a selector already checked by [`validate_selector`] (unknown operators never match).
pub fn matches_valid(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|req| requirement_matches(req, labels))
}

fn requirement_matches(req: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let value = labels.get(&req.key);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// A qualified name: `[prefix/]name`, prefix a DNS-1123 subdomain (≤ 253), name ≤ 63 characters.
fn validate_key(key: &str) -> Result<()> {
    let bad = |reason| {
        Err(SelectorError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || prefix.len() > 253 || !is_dns_subdomain(prefix))
    {
        return bad("the prefix before '/' must be a DNS subdomain of at most 253 characters");
    }
    if name.is_empty() || name.len() > 63 || !is_label_token(name) {
        return bad(
            "the name must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric",
        );
    }
    Ok(())
}

fn validate_value(key: &str, value: &str) -> Result<()> {
    if value.is_empty() || (value.len() <= 63 && is_label_token(value)) {
        Ok(())
    } else {
        Err(SelectorError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_label_token(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Lower-case DNS-1123 labels joined by dots.
fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn sel(ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!me.is_empty()).then_some(me),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])).unwrap());
        assert!(selector_matches(&sel(&[], vec![]), &labels(&[("a", "b")])).unwrap());
    }

    #[test]
    fn table() {
        let l = labels(&[
            ("team", "web"),
            ("tier", "front"),
            ("reaper.dev/inject", "enabled"),
        ]);
        let cases: Vec<(LabelSelector, bool)> = vec![
            (sel(&[("team", "web")], vec![]), true),
            (sel(&[("team", "web"), ("tier", "back")], vec![]), false),
            (sel(&[("absent", "")], vec![]), false),
            (sel(&[], vec![expr("team", "In", &["web", "db"])]), true),
            (sel(&[], vec![expr("team", "In", &["db"])]), false),
            (sel(&[], vec![expr("absent", "In", &["x"])]), false),
            (sel(&[], vec![expr("team", "NotIn", &["db"])]), true),
            (sel(&[], vec![expr("team", "NotIn", &["web"])]), false),
            // NotIn holds when the key is absent (Kubernetes semantics).
            (sel(&[], vec![expr("absent", "NotIn", &["x"])]), true),
            (sel(&[], vec![expr("tier", "Exists", &[])]), true),
            (sel(&[], vec![expr("absent", "Exists", &[])]), false),
            (sel(&[], vec![expr("absent", "DoesNotExist", &[])]), true),
            (sel(&[], vec![expr("tier", "DoesNotExist", &[])]), false),
            (
                sel(
                    &[("reaper.dev/inject", "enabled")],
                    vec![expr("team", "In", &["web"]), expr("tier", "Exists", &[])],
                ),
                true,
            ),
            (
                sel(
                    &[("team", "web")],
                    vec![expr("tier", "In", &["front"]), expr("x", "Exists", &[])],
                ),
                false,
            ),
        ];
        for (i, (s, want)) in cases.into_iter().enumerate() {
            assert_eq!(selector_matches(&s, &l).unwrap(), want, "case {i}: {s:?}");
        }
    }

    #[test]
    fn invalid_selectors_are_errors() {
        let l = labels(&[("team", "web")]);
        let bad: Vec<(LabelSelector, &str)> = vec![
            (
                sel(&[], vec![expr("team", "Equals", &["web"])]),
                "unknown operator",
            ),
            (
                sel(&[], vec![expr("team", "In", &[])]),
                "at least one value",
            ),
            (
                sel(&[], vec![expr("team", "NotIn", &[])]),
                "at least one value",
            ),
            (
                sel(&[], vec![expr("team", "Exists", &["web"])]),
                "takes no values",
            ),
            (
                sel(&[], vec![expr("team", "DoesNotExist", &["x"])]),
                "takes no values",
            ),
            (sel(&[("bad key", "x")], vec![]), "label key"),
            (sel(&[("Bad.Prefix/k", "x")], vec![]), "prefix"),
            (sel(&[("/k", "x")], vec![]), "prefix"),
            (sel(&[("-k", "x")], vec![]), "label key"),
            (sel(&[("team", "not valid")], vec![]), "label value"),
            (sel(&[("team", &"x".repeat(64))], vec![]), "label value"),
            (sel(&[], vec![expr("team", "In", &["-x"])]), "label value"),
        ];
        for (s, msg) in bad {
            let err = selector_matches(&s, &l).unwrap_err().to_string();
            assert!(err.contains(msg), "{err:?} should mention {msg:?}");
        }
        // Valid edge cases.
        for s in [
            sel(&[("team", "")], vec![]),
            sel(&[("example.com/team", "a.b-c_d")], vec![]),
            sel(&[("a", &"x".repeat(63))], vec![]),
        ] {
            validate_selector(&s).unwrap();
        }
    }
}
