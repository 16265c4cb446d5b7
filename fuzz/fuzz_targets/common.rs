//! Helpers shared by the fuzz targets (`mod common;` in each target that needs them).
#![allow(dead_code)]

use std::time::Duration;

/// The most one call of a matcher may cost. The glob matchers are O(pattern × text) with both
/// bounded by `glob::MAX_LEN`; the recursive matcher they replaced backtracked exponentially
/// (seconds to minutes on a 100-byte key).
pub const BOUND: Duration = Duration::from_millis(100);

/// CPU time of the calling thread: unlike wall time, it does not count the time this process
/// waits for a core (the fuzzers run niced, beside other work).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f` and panics (a libFuzzer crash) if it took more than [`BOUND`] of CPU time.
pub fn bounded<T>(what: &dyn std::fmt::Debug, f: impl FnOnce() -> T) -> T {
    let start = thread_cpu();
    let out = f();
    let spent = thread_cpu().saturating_sub(start);
    assert!(
        spent <= BOUND,
        "{what:?} took {spent:?} of CPU (bound {BOUND:?})"
    );
    out
}

/// Splits at the first `\n`: (before, after). No newline: (all, "").
pub fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// A byte of the input read as an index into a range of `n` (0 when `n` is 0).
pub fn pick(b: u8, n: usize) -> usize {
    if n == 0 { 0 } else { usize::from(b) % n }
}
