//! `--grace` / `REAPER_GRACE` (`reaper_init::args::parse_duration`): any bytes.
//!
//! Checked: no panic (no overflow: built with `-a`); what parses has the documented shape
//! (`<digits>[.<digits>][s|ms|m|h]`); the value prints back as `<secs>.<nanos>s` and parses to
//! the same duration; the same number in every unit (none = seconds) gives exactly what decimal
//! arithmetic gives (nanoseconds truncated), or is refused exactly when that exceeds u64
//! nanoseconds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reaper_init::args::parse_duration;
use std::time::Duration;

fn shape_ok(s: &[u8]) -> bool {
    let num_end = s
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(num_end);
    let mut parts = num.split(|&b| b == b'.');
    let int = parts.next().unwrap_or_default();
    let frac = parts.next();
    !int.is_empty()
        && parts.next().is_none()
        && frac.is_none_or(|f| !f.is_empty())
        && matches!(unit, b"" | b"s" | b"ms" | b"m" | b"h")
}

fuzz_target!(|data: &[u8]| {
    let Some(d) = parse_duration(data) else {
        return;
    };
    assert!(
        shape_ok(data),
        "accepted {:?}",
        String::from_utf8_lossy(data)
    );

    let printed = format!("{}.{:09}s", d.as_secs(), d.subsec_nanos());
    assert_eq!(parse_duration(printed.as_bytes()), Some(d), "{printed}");

    // The number alone, in each unit, against exact arithmetic: int and frac digits as
    // nanoseconds of a second (u128: at most 12 + 9 digits, as parse_duration allows).
    let num_end = data
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.'))
        .unwrap_or(data.len());
    let num = &data[..num_end];
    let (int, frac) = match num.iter().position(|&b| b == b'.') {
        Some(dot) => (&num[..dot], &num[dot + 1..]),
        None => (num, &b""[..]),
    };
    let digits = |d: &[u8]| d.iter().fold(0u128, |a, b| a * 10 + u128::from(b - b'0'));
    let nanos_of_one =
        digits(int) * 1_000_000_000 + digits(frac) * 10u128.pow(9 - frac.len() as u32);
    for (unit, mul, div) in [
        ("", 1u128, 1u128),
        ("s", 1, 1),
        ("ms", 1, 1000),
        ("m", 60, 1),
        ("h", 3600, 1),
    ] {
        let want = u64::try_from(nanos_of_one * mul / div)
            .ok()
            .map(Duration::from_nanos);
        let got = parse_duration(&[num, unit.as_bytes()].concat());
        assert_eq!(got, want, "{:?} in {unit:?}", String::from_utf8_lossy(num));
    }
});
