//! YAML for the generated CRDs that every Kubernetes client reads the same way.
//!
//! kubectl and Helm read YAML through `sigs.k8s.io/yaml`, whose parser follows YAML 1.1: there a
//! plain `Off`, `on`, `y` or `no` is a boolean, `1_000` and `1:20` are numbers and `~` is null.
//! Serializers that follow YAML 1.2 (serde's included) write those strings unquoted, so the enum
//! value `Off` reached the API server as `false`. This emitter writes a string plain only when it
//! is a string under both versions, and double-quoted (JSON escapes, valid YAML) otherwise.
use serde::Serialize;
use serde_json::Value;

/// Block-style YAML for `value` (one document, no `---`), ending in a newline.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = String::new();
    if is_block(&value) {
        block(&mut out, &value, 0, true);
    } else {
        scalar(&mut out, &value, 0);
    }
    out.push('\n');
    Ok(out)
}

/// Non-empty mappings and sequences are written as blocks; everything else inline.
fn is_block(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

/// A block collection at column `indent`; `inline` when its first line continues the current one
/// (after `- ` or at the start of the document).
fn block(out: &mut String, v: &Value, indent: usize, inline: bool) {
    let mut first = inline;
    let mut start = |out: &mut String| {
        if !std::mem::take(&mut first) {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', indent));
        }
    };
    match v {
        Value::Object(map) => {
            for (key, item) in map {
                start(out);
                string(out, key, indent, false);
                out.push(':');
                match item {
                    // Sequences under a key sit at the key's column, as kubectl writes them.
                    Value::Array(_) if is_block(item) => block(out, item, indent, false),
                    _ if is_block(item) => block(out, item, indent + 2, false),
                    _ => {
                        out.push(' ');
                        scalar(out, item, indent + 2);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                start(out);
                out.push_str("- ");
                if is_block(item) {
                    block(out, item, indent + 2, true);
                } else {
                    scalar(out, item, indent + 2);
                }
            }
        }
        _ => scalar(out, v, indent),
    }
}

fn scalar(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => string(out, s, indent, true),
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
}

/// A string: plain when unambiguous, a literal block for readable multi-line text (not for
/// keys), double-quoted otherwise.
fn string(out: &mut String, s: &str, indent: usize, blocks_allowed: bool) {
    if is_plain_safe(s) {
        out.push_str(s);
    } else if blocks_allowed && is_literal_safe(s) {
        out.push_str(if s.ends_with('\n') { "|" } else { "|-" });
        for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
            out.push('\n');
            if !line.is_empty() {
                out.extend(std::iter::repeat_n(' ', indent));
                out.push_str(line);
            }
        }
    } else {
        // JSON string escapes are YAML double-quoted escapes.
        out.push_str(&serde_json::to_string(s).expect("a string serializes"));
    }
}

/// Words a YAML 1.1 or 1.2 parser reads as a boolean or null (compared ignoring case, which is
/// stricter than either specification).
const NOT_STRINGS: &[&str] = &[
    "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~",
];

/// True when `s` reads back as this string under YAML 1.1 and 1.2 alike, written plain.
pub fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    // Letters, `_`, `/`, `(` and `$` start no number, indicator, tag, anchor or special float.
    let starts_well = first.is_alphabetic() || matches!(first, '_' | '/' | '(' | '$');
    starts_well
        && !s.ends_with([' ', ':'])
        && !s.chars().any(char::is_control)
        && !s.contains(": ")
        && !s.contains(" #")
        && !NOT_STRINGS.iter().any(|w| w.eq_ignore_ascii_case(s))
}

/// Multi-line text that a literal block (`|` / `|-`) reproduces exactly: no tabs or other control
/// characters but newlines, no line ending in a space, a first line that does not start with a
/// space (that would need an indentation indicator) and at most one final newline.
fn is_literal_safe(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\n'])
        && !s.ends_with("\n\n")
        && !s.chars().any(|c| c.is_control() && c != '\n')
        && s.split('\n').all(|line| !line.ends_with(' '))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What YAML-1.1 readers turn into something else; all must be quoted and read back equal.
    const AMBIGUOUS: &[&str] = &[
        "Off",
        "off",
        "OFF",
        "On",
        "y",
        "Y",
        "n",
        "No",
        "yes",
        "True",
        "false",
        "null",
        "Null",
        "~",
        "",
        "1_000",
        "1:20",
        "0x1F",
        "012",
        "-1",
        "+1",
        ".inf",
        ".NaN",
        "1e3",
        "1h",
        "<<",
        "=",
        "- a",
        "a: b",
        "a #b",
        "x:",
        "#c",
        "`code`",
        "'q'",
        "\"q\"",
        "*alias",
        "&anchor",
        "!tag",
        "%dir",
        "@at",
        "?",
        "|",
        ">",
        "[a]",
        "{a}",
        " lead",
        "trail ",
        "tab\there",
        "cr\rlf",
        "@{}",
        "-",
        "---",
        "...",
    ];

    fn round_trip(v: &Value) -> Value {
        let text = to_string(v).unwrap();
        yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
    }

    #[test]
    fn ambiguous_strings_are_quoted_and_read_back_as_strings() {
        for s in AMBIGUOUS {
            assert!(!is_plain_safe(s), "{s:?} would be written plain");
            let v = json!({ "enum": [s], "key": s, *s: 1 });
            assert_eq!(round_trip(&v), v, "{s:?}");
        }
        assert_eq!(to_string(&json!(["Off"])).unwrap(), "- \"Off\"\n");
    }

    #[test]
    fn ordinary_strings_stay_plain() {
        for s in [
            "Auto",
            "reaper.dev/inject",
            "ReaperPolicy",
            "apiextensions.k8s.io/v1",
            "Only these containers (empty = every target container).",
            "offset",
            "yesterday",
            "$ref",
            "x-kubernetes-preserve-unknown-fields",
        ] {
            assert!(is_plain_safe(s), "{s:?}");
            assert_eq!(to_string(&json!({ "k": s })).unwrap(), format!("k: {s}\n"));
        }
    }

    #[test]
    fn layout_matches_kubectl() {
        let v = json!({
            "spec": {"names": {"shortNames": ["rp"]}, "versions": [{"name": "v1", "served": true,
                "columns": [[1, 2], []], "empty": {}}]},
            "text": "line one\nline two\n\nlast",
            "nl": "ends\n",
        });
        assert_eq!(
            to_string(&v).unwrap(),
            "nl: |\n  ends\n\
             spec:\n  names:\n    shortNames:\n    - rp\n  versions:\n  - columns:\n    - - 1\n      - 2\n    - []\n    empty: {}\n    name: v1\n    served: true\n\
             text: |-\n  line one\n  line two\n\n  last\n"
        );
        assert_eq!(round_trip(&v), v);
    }

    #[test]
    fn scalars_and_tricky_text_round_trip() {
        for v in [
            json!(null),
            json!(1.5),
            json!(-3),
            json!("plain"),
            json!({}),
            json!([]),
            json!({"a": " leading space\nsecond"}),
            json!({"a": "trailing \nsecond"}),
            json!({"a": "two\n\n"}),
            json!({"a": "\nstarts with newline"}),
            json!({"a": "ünïcödé: \u{1F600} and \\ back\"slash"}),
            json!({"a": [{"b": [{"c": "Off"}]}]}),
        ] {
            assert_eq!(round_trip(&v), v, "{v}");
        }
    }

    /// The generated CRDs hold no string a YAML 1.1 reader could take for something else.
    #[test]
    fn every_crd_reads_back_identically() {
        let mut texts = String::new();
        for crd in super::super::all() {
            let v = serde_json::to_value(&crd).unwrap();
            assert_eq!(round_trip(&v), v);
            texts.push_str(&to_string(&crd).unwrap());
        }
        assert!(texts.contains("- \"Off\"\n"), "the Off mode must be quoted");
    }
}
