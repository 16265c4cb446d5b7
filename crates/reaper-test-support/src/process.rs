//! Safe wrappers for the few raw process calls tests make, and running a command with a deadline.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Runs a command to completion with a deadline; (success, stdout, stderr).
pub fn run(mut cmd: Command, timeout: Duration) -> (bool, String, String) {
    use std::io::Read as _;
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (false, String::new(), format!("spawning {cmd:?}: {e}")),
    };
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    let (out, mut err) = (t1.join().unwrap_or_default(), t2.join().unwrap_or_default());
    if status.is_none() {
        err.push_str(&format!("\n(killed after {timeout:?})"));
    }
    (status.is_some_and(|s| s.success()), out, err)
}
