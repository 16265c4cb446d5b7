//! Signal names and numbers (`reaper_init::signals::parse_signal`, `--pdeathsig`) and the
//! `--rewrite` lists built on it (`Rewrite::add_list`), plus the small helpers they use.
//!
//! Checked: no panic; a parsed signal is 1..=64; case does not matter; a `SIG` prefix does not
//! matter; a signal's log name parses back to it; numbers parse to themselves; `trim` is
//! idempotent and trims; a rewrite list that was accepted once is accepted again with the same
//! table, maps every signal into 0..=64 and leaves the signals it does not name alone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reaper_init::signals::{self, MAX_SIGNAL, Rewrite};

fuzz_target!(|data: &[u8]| {
    let got = signals::parse_signal(data);
    if let Some(n) = got {
        assert!((1..=MAX_SIGNAL).contains(&n), "{n}");
        if let Some(name) = signals::signal_name(n) {
            assert_eq!(signals::parse_signal(name.as_bytes()), Some(n), "{name}");
        }
        assert_eq!(signals::parse_signal(n.to_string().as_bytes()), Some(n));
    }
    assert_eq!(signals::parse_signal(&data.to_ascii_lowercase()), got);
    assert_eq!(signals::parse_signal(&data.to_ascii_uppercase()), got);
    let numeric = !data.is_empty() && data.iter().all(u8::is_ascii_digit);
    let prefixed = data.len() >= 3 && data[..3].eq_ignore_ascii_case(b"SIG");
    if !numeric && !prefixed {
        assert_eq!(signals::parse_signal(&[b"SIG", data].concat()), got);
    }

    if let Some(n) = signals::parse_small(data) {
        assert!((0..=999).contains(&n));
        assert!(data.len() <= 3);
    }

    let t = signals::trim(data);
    assert_eq!(signals::trim(t), t);
    assert!(t.first().is_none_or(|b| !b.is_ascii_whitespace()));
    assert!(t.last().is_none_or(|b| !b.is_ascii_whitespace()));

    let mut r = Rewrite::default();
    if r.add_list(data).is_ok() {
        let once = r.clone();
        r.add_list(data).expect("accepted once, accepted again");
        assert_eq!(r, once, "not idempotent");
        // Signals the list names as FROM (every entry has a `:` once accepted).
        let named: Vec<i32> = data
            .split(|&b| b == b',')
            .filter_map(|e| {
                let from = signals::trim(e).split(|&b| b == b':').next()?;
                signals::parse_signal(signals::trim(from))
            })
            .collect();
        for sig in -1..=MAX_SIGNAL + 1 {
            let to = r.apply(sig);
            if named.contains(&sig) {
                assert!((0..=MAX_SIGNAL).contains(&to), "{sig} -> {to}");
            } else {
                assert_eq!(to, sig, "{sig} changed without being named");
            }
        }
    }
});
