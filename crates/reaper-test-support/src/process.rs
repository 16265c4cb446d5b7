//! Safe wrappers for the few raw process calls tests make.

/// Sends `sig` to `pid` (a negative pid: to that process group); true when delivered.
#[allow(unsafe_code)]
pub fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions; a stale pid only fails with ESRCH.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Clock ticks per second (the unit of utime/stime in /proc/<pid>/stat).
#[allow(unsafe_code)]
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).unwrap_or(100)
}

/// Whether this process runs as root.
#[allow(unsafe_code)]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
