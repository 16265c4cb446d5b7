//! `REAPER_PLATFORM_ARGV` (`reaper_init::platform::parse_map`, the init's hand-written JSON
//! parser) and `platform::select` on what it returns.
//!
//! Checked against serde_json (reading the object as a list of pairs, duplicates kept): parse_map
//! accepts exactly the objects whose values are all non-empty arrays of strings without NUL, and
//! returns the same pairs in the same order. A parsed map written back as JSON parses to the same
//! map. Errors point inside the input. `select` returns the first entry for `os/arch/variant`,
//! else the first for `os/arch`, else nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reaper_init::platform::{self, Platform, PlatformMap};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// A JSON object as its pairs in document order, duplicate keys kept (serde_json's `Map` keeps
/// only the last).
struct Pairs(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = m.next_entry::<String, Value>()? {
                    pairs.push(pair);
                }
                Ok(Pairs(pairs))
            }
        }
        d.deserialize_map(V)
    }
}

const PLATFORMS: &[Platform] = &[
    platform::CURRENT,
    Platform {
        os: "linux",
        arch: "amd64",
        variant: None,
    },
    Platform {
        os: "linux",
        arch: "arm64",
        variant: Some("v8"),
    },
    Platform {
        os: "linux",
        arch: "arm",
        variant: Some("v7"),
    },
    Platform {
        os: "",
        arch: "",
        variant: Some(""),
    },
];

/// The argv as serde_json strings; parse_map only yields UTF-8 (its input is UTF-8).
fn strings(argv: &[std::ffi::CString]) -> Vec<Value> {
    argv.iter()
        .map(|a| Value::String(a.to_str().expect("argv is UTF-8").to_owned()))
        .collect()
}

fn to_json(map: &PlatformMap) -> String {
    let entries: Vec<String> = map
        .iter()
        .map(|(k, argv)| {
            format!(
                "{}:{}",
                serde_json::to_string(k).unwrap(),
                serde_json::to_string(&strings(argv)).unwrap()
            )
        })
        .collect();
    format!("{{{}}}", entries.join(","))
}

fuzz_target!(|data: &[u8]| {
    let ours = platform::parse_map(data);
    let theirs = serde_json::from_slice::<Pairs>(data).ok();
    let shaped = theirs.as_ref().is_some_and(|Pairs(pairs)| {
        pairs.iter().all(|(_, v)| {
            v.as_array().is_some_and(|a| {
                !a.is_empty()
                    && a.iter()
                        .all(|s| s.as_str().is_some_and(|s| !s.contains('\0')))
            })
        })
    });
    match &ours {
        Err(e) => {
            assert!(e.offset <= data.len(), "{e:?}");
            assert!(!e.what.is_empty());
            assert!(
                !shaped,
                "refused what serde_json reads as the right shape: {e:?}"
            );
        }
        Ok(map) => {
            let Some(Pairs(pairs)) = &theirs else {
                panic!("accepted what serde_json refuses: {map:?}");
            };
            let as_json: Vec<(String, Value)> = map
                .iter()
                .map(|(k, argv)| (k.clone(), Value::Array(strings(argv))))
                .collect();
            assert_eq!(&as_json, pairs);
            assert_eq!(
                &platform::parse_map(to_json(map).as_bytes()),
                &ours,
                "round trip"
            );

            for p in PLATFORMS {
                let short = format!("{}/{}", p.os, p.arch);
                let long = p.variant.map(|v| format!("{short}/{v}"));
                let first = |key: &str| map.iter().find(|(k, _)| k == key);
                let want = long
                    .as_deref()
                    .and_then(first)
                    .or_else(|| first(&short))
                    .map(|(k, v)| (k.as_str(), v.as_slice()));
                let got = platform::select(map, p);
                assert_eq!(got, want, "{p:?}");
                if let (Some((_, a)), Some((_, b))) = (got, want) {
                    // The very entry, not an equal one further on.
                    assert_eq!(a.as_ptr(), b.as_ptr());
                }
            }
        }
    }
});
