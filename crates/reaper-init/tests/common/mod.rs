//! Helpers shared by the `reaper_*` integration tests: run the init (directly, i.e. as a
//! subreaper, or as PID 1 of a new PID namespace), wait with timeouts, send signals.
//!
//! Every wait here has a deadline; on timeout the process tree is killed and the test fails
//! with what was seen so far.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Generous: the suite runs beside other builds on a loaded 2-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The dev build of the init (behaviour tests).
pub fn reaper() -> &'static str {
    env!("CARGO_BIN_EXE_reaper")
}

/// How the init runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum As {
    /// PID 1 of a fresh PID namespace (`unshare --pid --fork --mount-proc`).
    Pid1,
    /// A plain child of the test (registers itself as child subreaper).
    Subreaper,
}

/// A command line for the init with `args`, run the given way. stdin is /dev/null (a terminal
/// on stdin would make the init hand it to the child).
pub fn init_command(bin: &str, how: As, args: &[&str]) -> Command {
    let mut cmd = match how {
        As::Pid1 => {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--mount-proc", bin]);
            c
        }
        As::Subreaper => Command::new(bin),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// What a finished run produced.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }
}

/// A started init with its output collected in the background.
pub struct Running {
    pub child: Child,
    pub how: As,
    started: Instant,
    out: Option<thread::JoinHandle<String>>,
    err: Option<thread::JoinHandle<String>>,
}

fn drain_pipe(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Like [`start`] for a command whose stderr is set up by the caller (not collected).
pub fn start_without_stderr(mut cmd: Command) -> Running {
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let out = drain_pipe(child.stdout.take().expect("stdout piped"));
    Running {
        child,
        how: As::Subreaper,
        started,
        out: Some(out),
        err: None,
    }
}

fn join(h: Option<thread::JoinHandle<String>>) -> String {
    h.and_then(|h| h.join().ok()).unwrap_or_default()
}

pub fn start(mut cmd: Command, how: As) -> Running {
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let out = drain_pipe(child.stdout.take().expect("stdout piped"));
    let err = drain_pipe(child.stderr.take().expect("stderr piped"));
    Running {
        child,
        how,
        started,
        out: Some(out),
        err: Some(err),
    }
}

impl Drop for Running {
    /// A failing test must not leave its init (and the init's children) running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id() as i32;
            for c in children(pid) {
                kill(c, libc::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    /// The pid to signal: the init itself (PID 1 inside, a normal pid here).
    pub fn init_pid(&self) -> i32 {
        let pid = self.child.id() as i32;
        match self.how {
            As::Subreaper => pid,
            As::Pid1 => wait_until(TIMEOUT, "unshare to fork the namespace init", || {
                children(pid).first().copied()
            }),
        }
    }

    /// Waits for the exit; on timeout kills everything and panics with the output so far.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Output {
                    status,
                    stdout: join(self.out.take()),
                    stderr: join(self.err.take()),
                    elapsed: self.started.elapsed(),
                };
            }
            if Instant::now() >= deadline {
                let pid = self.child.id() as i32;
                for c in children(pid) {
                    kill(c, libc::SIGKILL);
                }
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = join(self.err.take());
                let stdout = join(self.out.take());
                panic!("timed out after {timeout:?}\nstdout: {stdout}\nstderr: {stderr}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs to completion (with the default timeout).
pub fn run(bin: &str, how: As, args: &[&str]) -> Output {
    start(init_command(bin, how, args), how).wait(TIMEOUT)
}

/// Runs with extra environment variables.
pub fn run_env(how: As, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = init_command(reaper(), how, args);
    cmd.envs(env.iter().copied());
    start(cmd, how).wait(TIMEOUT)
}

/// Polls `f` every 10 ms until it yields a value; panics naming `what` after `timeout`.
pub use reaper_test_support::wait::until as wait_until;

/// Direct children of `pid` (from /proc; empty when it is gone).
pub fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The state letter of a process (`R`, `S`, `T`, `Z`...), None when gone.
pub fn state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

pub fn kill(pid: i32, sig: i32) -> bool {
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid, sig) == 0 }
}

/// A fresh temporary directory (removed on drop).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Waits until `path` exists and returns its content.
pub fn wait_for_file(path: &Path, timeout: Duration) -> String {
    wait_until(timeout, &format!("{}", path.display()), || {
        fs::read_to_string(path).ok()
    })
}

/// Waits until the file at `path` contains `needle`.
pub fn wait_for_line(path: &Path, needle: &str, timeout: Duration) -> String {
    wait_until(
        timeout,
        &format!("{needle:?} in {}", path.display()),
        || {
            fs::read_to_string(path)
                .ok()
                .filter(|s| s.lines().any(|l| l == needle))
        },
    )
}

/// `target/reaper/reaper`, built by `make reaper` (which `make test` runs first).
pub fn static_reaper() -> PathBuf {
    let p = reaper_test_support::control_plane::repo_root().join("target/reaper/reaper");
    assert!(
        p.exists(),
        "{} is missing: run `make reaper` (or `make test`, which builds it first)",
        p.display()
    );
    p
}
