//! Registry key matching (`reaper::registry::auth::url_matches`, the kubelet's `URLsMatchStr`): a
//! docker config key is tenant input, and each of its host labels is a glob.
//!
//! Input: `<key glob>\n<target>`.
//!
//! Checked: every call within the CPU bound (`common::BOUND`; the recursive matcher this replaced
//! backtracked exponentially); a key without glob characters matches itself and any path below
//! it; a different port never matches; a key whose labels are all `*` matches any target with as
//! many labels, the same port and a path below the key's.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use reaper::image::glob::MAX_LEN;
use reaper::registry::auth::url_matches;

fn matches(glob: &str, target: &str) -> bool {
    common::bounded(&(glob, target), || url_matches(glob, target))
}

/// host[:port] and /path, split as url_matches documents it.
fn parts(s: &str) -> (&str, &str, &str) {
    let (hostport, path) = s.split_at(s.find('/').unwrap_or(s.len()));
    let after = hostport.rfind(']').map_or(0, |i| i + 1);
    let (host, port) = match hostport[after..].rfind(':') {
        Some(i) => (&hostport[..after + i], &hostport[after + i + 1..]),
        None => (hostport, ""),
    };
    (host, port, path)
}

fuzz_target!(|data: &[u8]| {
    let (glob, target) = common::split2(data);
    let (glob, target) = (
        String::from_utf8_lossy(glob),
        String::from_utf8_lossy(target),
    );
    let got = matches(&glob, &target);

    let (g_host, g_port, g_path) = parts(&glob);
    let (t_host, t_port, t_path) = parts(&target);
    if g_port != t_port || !t_path.starts_with(g_path) {
        assert!(!got, "port or path differ");
    }
    let labels_fit = |h: &str| h.split('.').all(|l| l.len() <= MAX_LEN);

    let plain = !glob.contains(['*', '?', '[', '\\']);
    if plain && labels_fit(g_host) {
        assert!(matches(&glob, &glob), "{glob:?} does not match itself");
        assert!(matches(&glob, &format!("{glob}/below")));
    }

    // The same target's host with every label made `*`.
    if !t_host.starts_with('[') && labels_fit(t_host) {
        let stars = t_host.split('.').map(|_| "*").collect::<Vec<_>>().join(".");
        let port = if t_port.is_empty() && !t_host.contains(':') {
            String::new()
        } else {
            format!(":{t_port}")
        };
        let key = format!("{stars}{port}");
        if parts(&key).1 == t_port {
            assert!(matches(&key, &target), "{key:?} vs {target:?}");
        }
    }
});
