//! Pull-secret docker configs (`reaper::registry::auth::parse_dockerconfigjson`,
//! `parse_dockercfg`), the keyring built from them (`Keyring::new`) and `Keyring::lookup`.
//!
//! Input: `<image>\n<config JSON>`; the JSON is parsed both as `.dockerconfigjson` and as the
//! legacy `.dockercfg`. The image and a few fixed ones are looked up in a keyring of each
//! accepted config, and in one of the config twice.
//!
//! Checked: no panic; building and each lookup within the CPU bound (`common::BOUND`); lookups
//! return no duplicates and only credentials of the configs; a key without glob characters finds
//! its credential for `<normalised key>/x` (while the keyring is within `MAX_KEYS`); the Docker
//! Hub key serves Docker Hub images; two copies of a config give the same answers as one.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use reaper::image::glob::MAX_LEN;
use reaper::registry::auth::{self, Credential, Identity, Keyring, ParsedConfig};

/// The kubelet's normalised key, written again from the module's documentation: no scheme,
/// no `/v1/` or `/v2/` path, no lone `/`.
fn normalize(raw: &str) -> String {
    let s = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))
        .unwrap_or(raw);
    let (host, path) = s.split_at(s.find('/').unwrap_or(s.len()));
    let path = ["/v1/", "/v2/"]
        .iter()
        .find(|p| path.starts_with(**p))
        .map_or(path, |_| &path[3..]);
    if path.is_empty() || path == "/" {
        host.to_string()
    } else {
        format!("{host}{path}")
    }
}

fn check(ring: &Keyring, configs: &[&ParsedConfig], image: &str) -> Vec<Credential> {
    let found = common::bounded(&("lookup", image), || ring.lookup(image));
    for (i, c) in found.iter().enumerate() {
        assert!(
            !found[..i].contains(c),
            "duplicate credential for {image:?}"
        );
        assert!(
            configs
                .iter()
                .any(|p| p.entries.iter().any(|(_, e)| e == c)),
            "{c:?} is in no config"
        );
        assert_eq!(
            c.identity() == Identity::Anonymous,
            c.username.is_empty() && c.password.is_empty()
        );
    }
    found
}

fuzz_target!(|data: &[u8]| {
    // The reference parser compiles its regex on first use (~0.3 s under ASan): not per lookup.
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| drop(reaper::image::reference::parse("nginx")));
    let (image, json) = common::split2(data);
    let image = String::from_utf8_lossy(image);
    let json_config = auth::parse_dockerconfigjson(json);
    let legacy_config = auth::parse_dockercfg(json);
    for r in [&json_config, &legacy_config] {
        if let Err(e) = r {
            assert!(!e.to_string().is_empty());
        }
    }
    for parsed in [json_config, legacy_config].into_iter().flatten() {
        check_config(&image, &parsed);
    }
});

fn check_config(image: &str, parsed: &ParsedConfig) {
    assert!(!format!("{parsed:?}").is_empty());

    let ring = common::bounded(&"Keyring::new", || Keyring::new([parsed]));
    let twice = common::bounded(&"Keyring::new twice", || Keyring::new([parsed, parsed]));
    assert_eq!(ring.is_empty(), parsed.entries.is_empty());
    let within_max = parsed.entries.len() <= auth::MAX_KEYS;

    for img in [
        image,
        "nginx",
        "docker.io/library/nginx",
        "ghcr.io/o/app",
        "localhost:5000/app",
    ] {
        let one = check(&ring, &[parsed], img);
        if within_max {
            // The copy only repeats credentials under keys the first one has.
            assert_eq!(check(&twice, &[parsed], img), one, "{img:?}");
        }
    }
    if within_max {
        let hub = parsed
            .entries
            .iter()
            .any(|(k, _)| normalize(k) == "index.docker.io");
        if hub {
            assert!(!check(&ring, &[parsed], "docker.io/library/nginx").is_empty());
            assert!(!check(&ring, &[parsed], "nginx").is_empty());
        }
        for (key, cred) in &parsed.entries {
            let norm = normalize(key);
            let host = norm.split('/').next().unwrap_or_default();
            let plain = !norm.contains(['*', '?', '[', '\\'])
                && host.split('.').all(|label| label.len() <= MAX_LEN);
            if plain {
                let img = format!("{norm}/x");
                assert!(
                    check(&ring, &[parsed], &img).contains(cred),
                    "key {key:?} does not serve {img:?}"
                );
            }
        }
    }
}
