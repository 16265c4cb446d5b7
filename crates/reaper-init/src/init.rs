//! The init loop: start the child, forward signals, reap everything, drain leftovers.

use std::ffi::CStr;
use std::time::{Duration, Instant};

use libc::{c_int, pid_t};

use crate::args::Config;
use crate::log::Part::{Bytes, Errno, Num, Sig, Str};
use crate::log::say;
use crate::status;
use crate::sys::{self, Reaped, SigSet, SpawnError, SpawnOptions};

/// After SIGKILL, how long to wait for the kernel to finish off the leftovers (a process in
/// uninterruptible sleep can take a moment) before exiting anyway.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// Runs `argv` as the main child and returns the reaper's exit code.
#[inline(never)]
pub fn supervise(cfg: &Config, argv: &[&CStr]) -> u8 {
    let me = setup(cfg);
    let set = SigSet::caught();
    let inherited = set.block();
    // Hand the terminal over only when we hold it: a background `reaper cmd &` must not steal it.
    let foreground = sys::foreground_group();
    let take_terminal = foreground.is_some_and(|fg| fg == sys::getpgrp());
    let opts = SpawnOptions {
        new_group: cfg.process_group || take_terminal,
        take_terminal,
        mask: inherited,
    };
    let child = match sys::spawn(argv, opts) {
        Ok(pid) => pid,
        Err(SpawnError::Fork(e)) => {
            say(&[Str("cannot start a process: "), Errno(e)]);
            return status::FAILURE;
        }
        Err(SpawnError::Exec(e)) => {
            let name = argv.first().map_or(&b""[..], |a| a.to_bytes());
            say(&[Str("cannot run '"), Bytes(name), Str("': "), Errno(e)]);
            return status::exec_failure_code(e);
        }
    };
    if opts.new_group {
        // Also from the parent, so a signal to the group cannot race the child's own setpgid
        // (EACCES once the child has exec'd is expected and harmless).
        sys::setpgid(child, child);
    }
    if cfg.verbosity >= 1 {
        let name = argv.first().map_or(&b""[..], |a| a.to_bytes());
        say(&[
            Str("started '"),
            Bytes(name),
            Str("' as pid "),
            Num(child.into()),
        ]);
    }
    let mut sup = Supervisor {
        cfg,
        me,
        pid1: me == 1,
        // A controlling terminal and a parent that is not the namespace's init: a shell doing
        // job control. Only then does a stopped child stop the reaper (see `reap_all`).
        job_control: me != 1 && foreground.is_some(),
        child,
        target: if cfg.process_group { -child } else { child },
        terminal: take_terminal,
        main_status: None,
    };
    sup.run(&set)
}

/// `--pause`: no child; reap whatever is re-parented here until SIGTERM or SIGINT.
#[inline(never)]
pub fn pause(cfg: &Config) -> u8 {
    let me = setup(cfg);
    let set = SigSet::caught();
    set.block();
    let mut sup = Supervisor {
        cfg,
        me,
        pid1: me == 1,
        job_control: false,
        child: 0,
        target: 0,
        terminal: false,
        main_status: None,
    };
    loop {
        match sys::wait_signal(&set, None) {
            Some(sig) if sig == libc::SIGTERM || sig == libc::SIGINT => {
                if cfg.verbosity >= 1 {
                    say(&[Str("pause: "), Sig(sig), Str(" received, exiting")]);
                }
                return 0;
            }
            Some(libc::SIGCHLD) => {
                sup.reap_all();
            }
            _ => {}
        }
    }
}

/// Subreaper registration and parent-death signal; returns our pid.
fn setup(cfg: &Config) -> pid_t {
    let me = sys::getpid();
    // Not PID 1: orphans of our subtree would escape to the real init without this.
    if (cfg.subreaper || me != 1) && !sys::set_child_subreaper() {
        say(&[
            Str("cannot register as child subreaper ("),
            Errno(sys::errno()),
            Str("); orphans will not be reaped here"),
        ]);
    }
    if let Some(sig) = cfg.pdeathsig
        && !sys::set_pdeathsig(sig)
    {
        say(&[Str("cannot set the parent-death signal "), Sig(sig)]);
    }
    me
}

struct Supervisor<'c> {
    cfg: &'c Config,
    me: pid_t,
    pid1: bool,
    /// Mirror the child's job-control stops (interactive use under a shell).
    job_control: bool,
    /// The main child (0 in pause mode).
    child: pid_t,
    /// Where forwarded signals go: the child, or its group with `--process-group`.
    target: pid_t,
    /// The child was given the terminal's foreground.
    terminal: bool,
    /// The main child's wait status once it has been reaped.
    main_status: Option<c_int>,
}

/// Draining leftovers after the main child exited.
struct Drain {
    deadline: Instant,
    killed: bool,
}

impl Supervisor<'_> {
    fn run(&mut self, set: &SigSet) -> u8 {
        let mut drain: Option<Drain> = None;
        loop {
            let timeout = drain
                .as_ref()
                .map(|d| d.deadline.saturating_duration_since(Instant::now()));
            let woke = sys::wait_signal(set, timeout);
            if let Some(sig) = woke
                && sig != libc::SIGCHLD
            {
                if drain.is_none() {
                    self.forward(sig);
                    continue;
                }
                // Draining: the main child is gone, so the leftovers are who the signal is for
                // (a second Ctrl-C or a TERM from the runtime must not wait out the grace).
                self.forward_to_leftovers(sig);
            }
            // SIGCHLD, a timeout or an interruption: reap whatever is ready.
            let others_left = self.reap_all();
            let Some(main) = self.main_status else {
                continue;
            };
            let code = self.cfg.remap_exit.apply(status::exit_code(main));
            if !others_left {
                return code;
            }
            match &mut drain {
                None if self.cfg.grace.is_zero() => return code,
                None => {
                    if self.cfg.verbosity >= 1 {
                        say(&[Str("main child exited, draining leftovers: SIGTERM")]);
                    }
                    self.signal_leftovers(libc::SIGTERM);
                    // A stopped process would hold its TERM until continued.
                    self.signal_leftovers(libc::SIGCONT);
                    drain = Some(Drain {
                        deadline: Instant::now() + self.cfg.grace,
                        killed: false,
                    });
                }
                Some(d) if Instant::now() >= d.deadline => {
                    if d.killed {
                        say(&[Str("leftover processes survived SIGKILL; exiting anyway")]);
                        return code;
                    }
                    let n = self.signal_leftovers(libc::SIGKILL);
                    if self.pid1 {
                        say(&[Str(
                            "grace period over: sent SIGKILL to all leftover processes",
                        )]);
                    } else {
                        say(&[
                            Str("grace period over: sent SIGKILL to "),
                            Num(n as i64),
                            Str(" leftover processes"),
                        ]);
                    }
                    d.killed = true;
                    d.deadline = Instant::now() + KILL_WAIT;
                }
                Some(_) => {}
            }
        }
    }

    /// Forwards a signal received while draining (after `--rewrite`) to every leftover.
    fn forward_to_leftovers(&mut self, sig: c_int) {
        let to = self.cfg.rewrite.apply(sig);
        if to == 0 {
            return;
        }
        self.signal_leftovers(to);
        if self.cfg.verbosity >= 2 {
            say(&[
                Str("received "),
                Sig(sig),
                Str(" while draining, forwarded "),
                Sig(to),
                Str(" to the leftover processes"),
            ]);
        }
    }

    /// Forwards a received signal (after `--rewrite`) to the child or its group.
    fn forward(&mut self, sig: c_int) {
        // Once the main child is reaped its pid may be reused: never signal it again.
        if self.main_status.is_some() || self.child == 0 {
            return;
        }
        let to = self.cfg.rewrite.apply(sig);
        if self.cfg.verbosity >= 2 {
            if to == 0 {
                say(&[Str("received "), Sig(sig), Str(", dropped (--rewrite)")]);
            } else {
                say(&[
                    Str("received "),
                    Sig(sig),
                    Str(", forwarding "),
                    Sig(to),
                    Str(" to "),
                    Num(self.target.into()),
                ]);
            }
        }
        if to == 0 {
            return;
        }
        // Job control: resumed in the foreground, give the terminal back to the child first.
        if sig == libc::SIGCONT && self.terminal && sys::foreground_group() == Some(sys::getpgrp())
        {
            sys::set_foreground_group(self.child);
        }
        sys::kill(self.target, to);
    }

    /// Reaps until nothing is ready; returns whether any children remain.
    fn reap_all(&mut self) -> bool {
        // Under a job-control shell, watch for the child stopping. Elsewhere (a container, a
        // debugger stopping the child) the reaper must keep reaping and never stop itself.
        let untraced = self.job_control && self.child != 0;
        loop {
            match sys::reap_one(untraced && self.main_status.is_none()) {
                Reaped::Exited { pid, status }
                    if pid == self.child && self.main_status.is_none() =>
                {
                    self.main_status = Some(status);
                    if self.cfg.verbosity >= 1 {
                        report_exit("main child ", pid, status);
                    }
                }
                Reaped::Exited { pid, status } => {
                    if self.cfg.warn_reap || self.cfg.verbosity >= 2 {
                        report_exit("reaped orphan ", pid, status);
                    }
                }
                Reaped::Stopped { pid } => {
                    if pid == self.child {
                        // Mirror the child's stop so the shell that started us sees the job stop;
                        // its SIGCONT resumes us and is forwarded to the child.
                        if self.cfg.verbosity >= 1 {
                            say(&[Str("main child stopped; stopping too (job control)")]);
                        }
                        sys::stop_self();
                    }
                }
                Reaped::Running => return true,
                Reaped::NoChildren => return false,
            }
        }
    }

    /// Signals every process left: the whole PID namespace as PID 1, our descendants otherwise.
    /// Returns how many were signalled (not counted as PID 1).
    #[inline(never)]
    fn signal_leftovers(&self, sig: c_int) -> usize {
        if self.pid1 {
            // kill(-1) from a namespace's init reaches every other process in the namespace.
            sys::kill(-1, sig);
            return 0;
        }
        let pids = descendants_of(self.me, &process_table());
        for &pid in &pids {
            sys::kill(pid, sig);
        }
        pids.len()
    }
}

/// `WHAT PID exited with code N` or `WHAT PID was killed by SIGX`.
fn report_exit(what: &str, pid: pid_t, status: c_int) {
    if libc::WIFSIGNALED(status) {
        say(&[
            Str(what),
            Num(pid.into()),
            Str(" was killed by "),
            Sig(libc::WTERMSIG(status)),
        ]);
    } else {
        let code = status::exit_code(status);
        say(&[
            Str(what),
            Num(pid.into()),
            Str(" exited with code "),
            Num(code.into()),
        ]);
    }
}

/// (pid, ppid) of every process in /proc; empty when /proc is unreadable.
fn process_table() -> Vec<(pid_t, pid_t)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut table = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = parse_pid(name.as_encoded_bytes()) else {
            continue;
        };
        let mut path = entry.path();
        path.push("stat");
        if let Ok(stat) = std::fs::read(&path)
            && let Some(ppid) = parse_stat_ppid(&stat)
        {
            table.push((pid, ppid));
        }
    }
    table
}

fn parse_pid(s: &[u8]) -> Option<pid_t> {
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = s.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    pid_t::try_from(n).ok()
}

/// The ppid field of /proc/PID/stat: `pid (comm) state ppid ...`; comm may hold spaces and
/// parentheses, so parse from the last `)`.
fn parse_stat_ppid(stat: &[u8]) -> Option<pid_t> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let mut fields = stat
        .get(close + 1..)?
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    let _state = fields.next()?;
    parse_pid(fields.next()?)
}

/// Every process below `root` in the (pid, ppid) table, breadth first.
fn descendants_of(root: pid_t, table: &[(pid_t, pid_t)]) -> Vec<pid_t> {
    let mut out: Vec<pid_t> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in table {
            if ppid == parent && pid != root && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines() {
        assert_eq!(parse_stat_ppid(b"42 (sh) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parse_stat_ppid(b"42 (a) b) (c) R 1 42"), Some(1));
        assert_eq!(parse_stat_ppid(b"42 (we ird) Z 0 0"), Some(0));
        assert_eq!(parse_stat_ppid(b"42 (sh"), None);
        assert_eq!(parse_stat_ppid(b"42 (sh) S"), None);
        assert_eq!(parse_stat_ppid(b"42 (sh) S x"), None);
        assert_eq!(parse_stat_ppid(b""), None);
    }

    #[test]
    fn parses_pids() {
        assert_eq!(parse_pid(b"1"), Some(1));
        assert_eq!(parse_pid(b"4194304"), Some(4_194_304));
        assert_eq!(parse_pid(b"self"), None);
        assert_eq!(parse_pid(b""), None);
        assert_eq!(parse_pid(b"99999999999"), None);
    }

    #[test]
    fn finds_descendants_only() {
        // 10 is us; 11, 12 children; 13 under 11; 14 under 13; 20 and 21 elsewhere.
        let table = [
            (1, 0),
            (10, 1),
            (11, 10),
            (12, 10),
            (13, 11),
            (14, 13),
            (20, 1),
            (21, 20),
        ];
        let mut d = descendants_of(10, &table);
        d.sort_unstable();
        assert_eq!(d, [11, 12, 13, 14]);
        assert!(descendants_of(14, &table).is_empty());
        // A cycle (pid reuse mid-scan) terminates.
        let cyclic = [(10, 1), (11, 10), (12, 11), (11, 12)];
        let mut d = descendants_of(10, &cyclic);
        d.sort_unstable();
        assert_eq!(d, [11, 12]);
    }
}
