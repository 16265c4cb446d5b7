//! The `reaper` init: signal forwarding (as PID 1 and as subreaper), rewriting, process groups,
//! the signal state the child inherits, signal storms, the parent-death signal, job control and the
//! terminal hand-over.

// These tests signal the init and re-wire its file descriptors and signal state.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const FORWARDED: [(&str, i32); 8] = [
    ("TERM", libc::SIGTERM),
    ("INT", libc::SIGINT),
    ("HUP", libc::SIGHUP),
    ("QUIT", libc::SIGQUIT),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("WINCH", libc::SIGWINCH),
    ("CONT", libc::SIGCONT),
];

/// A bash child that logs every trapped signal to `log` and exits 0 once `stop` exists.
fn trapping_child(dir: &Path) -> String {
    let log = dir.join("log");
    let mut s = String::new();
    for (name, _) in FORWARDED {
        s.push_str(&format!("trap 'echo {name} >> {}' {name}; ", log.display()));
    }
    s.push_str(&format!(
        "echo ready >> {log}; while [ ! -e {stop} ]; do sleep 0.05; done; exit 0",
        log = log.display(),
        stop = dir.join("stop").display()
    ));
    s
}

fn forwards_every_signal(how: As) {
    let dir = tempdir();
    let script = trapping_child(dir.path());
    let running = start(
        init_command(reaper(), how, &["--", "bash", "-c", &script]),
        how,
    );
    let pid = running.init_pid();
    let log = dir.path().join("log");
    wait_for_line(&log, "ready", TIMEOUT);
    for (name, sig) in FORWARDED {
        assert!(kill(pid, sig), "kill {name}");
        wait_for_line(&log, name, TIMEOUT);
    }
    fs::write(dir.path().join("stop"), "").unwrap();
    let out = running.wait(TIMEOUT);
    assert_eq!(out.code(), 0, "{how:?}: {out:?}");
    let seen: Vec<String> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let want: Vec<&str> = std::iter::once("ready")
        .chain(FORWARDED.iter().map(|(n, _)| *n))
        .collect();
    assert_eq!(seen, want, "each signal forwarded exactly once, in order");
}

#[test]
fn forwards_signals_as_pid1() {
    forwards_every_signal(As::Pid1);
}

#[test]
fn forwards_signals_as_subreaper() {
    forwards_every_signal(As::Subreaper);
}

#[test]
fn sigterm_ends_a_default_disposition_child_when_pid1() {
    // `sleep` has no handler: as PID 1 of the namespace it would ignore TERM; the reaper's child
    // does not.
    let running = start(
        init_command(reaper(), As::Pid1, &["--", "sleep", "1000"]),
        As::Pid1,
    );
    let pid = running.init_pid();
    wait_until(TIMEOUT, "sleep to start", || {
        (!children(pid).is_empty()).then_some(())
    });
    assert!(kill(pid, libc::SIGTERM));
    let out = running.wait(TIMEOUT);
    assert_eq!(out.code(), 143, "{out:?}");
}

#[test]
fn rewrites_signals() {
    let dir = tempdir();
    let log = dir.path().join("log");
    let script = format!(
        "trap 'echo USR1 >> {l}' USR1; trap 'echo TERM >> {l}' TERM; echo ready >> {l}; \
         while [ ! -e {s} ]; do sleep 0.05; done",
        l = log.display(),
        s = dir.path().join("stop").display()
    );
    let mut cmd = init_command(
        reaper(),
        As::Pid1,
        &[
            "--rewrite=TERM:USR1",
            "--rewrite",
            "HUP:0",
            "--",
            "bash",
            "-c",
            &script,
        ],
    );
    cmd.env("REAPER_REWRITE", "USR1:TERM"); // ignored: the command line wins
    let running = start(cmd, As::Pid1);
    let pid = running.init_pid();
    wait_for_line(&log, "ready", TIMEOUT);
    kill(pid, libc::SIGHUP); // dropped: would kill bash (no trap)
    kill(pid, libc::SIGTERM);
    wait_for_line(&log, "USR1", TIMEOUT);
    kill(pid, libc::SIGUSR1);
    thread::sleep(Duration::from_millis(200));
    fs::write(dir.path().join("stop"), "").unwrap();
    let out = running.wait(TIMEOUT);
    assert_eq!(out.code(), 0, "HUP was dropped, so bash lived: {out:?}");
    let seen = fs::read_to_string(&log).unwrap();
    assert_eq!(
        seen, "ready\nUSR1\nUSR1\n",
        "TERM arrived as USR1, USR1 unchanged"
    );
}

#[test]
fn process_group_option_signals_the_whole_group() {
    let dir = tempdir();
    let log = dir.path().join("log");
    // A grandchild in the same group traps USR1 too.
    let script = format!(
        "bash -c 'trap \"echo grandchild >> {l}\" USR1; echo gc-ready >> {l}; while :; do sleep 0.05; done' & \
         trap 'echo child >> {l}' USR1; echo ready >> {l}; while [ ! -e {s} ]; do sleep 0.05; done; kill $!",
        l = log.display(),
        s = dir.path().join("stop").display()
    );
    for (flag, want_grandchild) in [("-g", true), ("-v", false)] {
        let _ = fs::remove_file(&log);
        let _ = fs::remove_file(dir.path().join("stop"));
        let running = start(
            init_command(reaper(), As::Pid1, &[flag, "--", "bash", "-c", &script]),
            As::Pid1,
        );
        let pid = running.init_pid();
        wait_for_line(&log, "ready", TIMEOUT);
        wait_for_line(&log, "gc-ready", TIMEOUT);
        kill(pid, libc::SIGUSR1);
        wait_for_line(&log, "child", TIMEOUT);
        if want_grandchild {
            wait_for_line(&log, "grandchild", TIMEOUT);
        } else {
            thread::sleep(Duration::from_millis(300));
        }
        fs::write(dir.path().join("stop"), "").unwrap();
        let out = running.wait(TIMEOUT);
        assert_eq!(out.code(), 0, "{flag}: {out:?}");
        let seen = fs::read_to_string(&log).unwrap();
        assert_eq!(
            seen.contains("grandchild"),
            want_grandchild,
            "{flag}: {seen}"
        );
    }
}

/// Makes `cmd` start the way `nohup` and friends start programs: some signals ignored (glibc's
/// reserved 32 too, through the raw call its wrapper refuses), some blocked.
fn with_inherited_signal_state(cmd: &mut Command) {
    // SAFETY: signal/sigprocmask between fork and exec are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGPIPE, libc::SIGHUP, libc::SIGUSR1, libc::SIGTTOU] {
                libc::signal(sig, libc::SIG_IGN);
            }
            let ign: [u64; 4] = [1, 0, 0, 0]; // SIG_IGN, no flags, empty mask
            libc::syscall(
                libc::SYS_rt_sigaction,
                32,
                ign.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8,
            );
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [
                libc::SIGUSR2,
                libc::SIGTERM,
                libc::SIGTSTP,
                libc::SIGRTMIN() + 3,
            ] {
                libc::sigaddset(&mut set, sig);
            }
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// The SigBlk, SigIgn and SigCgt lines of a `cat /proc/self/status` output.
fn signal_state(out: &Output) -> Vec<String> {
    assert_eq!(out.code(), 0, "{out:?}");
    ["SigBlk", "SigIgn", "SigCgt"]
        .iter()
        .map(|field| {
            out.stdout
                .lines()
                .find(|l| l.starts_with(field))
                .unwrap_or_else(|| panic!("no {field}: {out:?}"))
                .to_string()
        })
        .collect()
}

/// POSIX exec semantics, as with tini: the child gets the mask and the ignored signals the reaper
/// inherited (what it would have had without an init), and nothing the reaper set for itself.
#[test]
fn child_gets_the_signal_state_the_reaper_inherited() {
    for how in [As::Pid1, As::Subreaper] {
        for inherited in [false, true] {
            let mut with = init_command(reaper(), how, &["--", "cat", "/proc/self/status"]);
            let mut without = init_command("cat", how, &["/proc/self/status"]);
            if inherited {
                with_inherited_signal_state(&mut with);
                with_inherited_signal_state(&mut without);
            }
            let got = signal_state(&start(with, how).wait(TIMEOUT));
            let want = signal_state(&start(without, how).wait(TIMEOUT));
            // Equal to the baseline: nothing the reaper blocked for itself leaked (its caught set
            // is never all blocked by the test's parent), nothing inherited was lost.
            assert_eq!(got, want, "{how:?}, inherited state: {inherited}");
            let zero = |l: &String| l.ends_with("\t0000000000000000");
            if inherited {
                // The set-up took effect: something is blocked and ignored.
                assert!(!zero(&got[0]) && !zero(&got[1]), "{how:?}: {got:?}");
            }
        }
    }
}

/// Under `nohup reaper -- cmd` the command survives SIGHUP, as it would under plain `nohup cmd`.
#[test]
fn nohup_still_protects_the_child() {
    for how in [As::Pid1, As::Subreaper] {
        let mut cmd = init_command(
            reaper(),
            how,
            &["--", "sh", "-c", "kill -HUP $$; echo survived"],
        );
        // SAFETY: signal between fork and exec is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                Ok(())
            });
        }
        let out = start(cmd, how).wait(TIMEOUT);
        assert_eq!(
            (out.code(), out.stdout.trim()),
            (0, "survived"),
            "{how:?}: {out:?}"
        );
    }
}

#[test]
fn signal_storm_loses_neither_child_nor_exit_code() {
    // The child ignores the storm's signals and exits 42 after a while; thousands of signals per
    // second must not make the reaper lose SIGCHLD or the status.
    let dir = tempdir();
    let ready = dir.path().join("ready");
    // The storm starts only once the child ignores its signals (before that, a forwarded HUP
    // would kill it, which is correct but not what this test is about).
    let script = format!(
        "trap '' USR1 USR2 WINCH HUP 36; echo ok > {}; sleep 1.5; exit 42",
        ready.display()
    );
    let running = start(
        init_command(reaper(), As::Pid1, &["--", "sh", "-c", &script]),
        As::Pid1,
    );
    let pid = running.init_pid();
    wait_for_file(&ready, TIMEOUT);
    let storm = thread::spawn(move || {
        let mut sent = 0u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        let sigs = [
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGWINCH,
            libc::SIGHUP,
            36,
        ];
        while Instant::now() < deadline {
            for sig in sigs {
                // Stop when the init is gone (ESRCH) or already a zombie.
                if !kill(pid, sig) || state(pid) == Some('Z') {
                    return sent;
                }
                sent += 1;
            }
        }
        sent
    });
    let out = running.wait(TIMEOUT);
    let sent = storm.join().unwrap();
    assert_eq!(out.code(), 42, "{out:?}");
    assert!(
        sent > 1000,
        "the storm was too weak to mean anything: {sent} signals"
    );
}

#[test]
fn parent_death_signal_reaches_the_child() {
    let dir = tempdir();
    let mark = dir.path().join("got-term");
    let ready = dir.path().join("ready");
    let child = format!(
        "trap 'echo term > {}; exit 0' TERM; echo ok > {}; while :; do sleep 0.05; done",
        mark.display(),
        ready.display()
    );
    // An intermediate shell starts the reaper in the background and exits once the child is up
    // (the reaper sets its parent-death signal before starting the child): the reaper gets
    // SIGTERM (-p) and forwards it.
    let outer = format!(
        "{} -p TERM -- bash -c \"{child}\" & while [ ! -s {r} ]; do sleep 0.05; done; exit 0",
        reaper(),
        r = ready.display()
    );
    let status = Command::new("sh")
        .args(["-c", &outer])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(wait_for_file(&mark, TIMEOUT), "term\n");
}

/// The child of `pid` once it runs `name`. Until its exec the child is in the reaper's vfork
/// window (the reaper waits for it), so a test must not stop it before then.
fn exec_d_child(pid: i32, name: &str) -> Option<i32> {
    children(pid).first().copied().filter(|&c| {
        fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|comm| comm.trim() == name)
    })
}

#[test]
fn follows_the_child_into_job_control_stops_on_a_terminal() {
    // Under a shell with a terminal (script(1) gives one), when the child stops the reaper stops
    // too, so the shell sees the job stop; the shell's SIGCONT is forwarded and both run again.
    let dir = tempdir();
    let pidfile = dir.path().join("pid");
    let inner = format!(
        "echo $$ > {}; exec {} -- sleep 1000",
        pidfile.display(),
        reaper()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let running = start(cmd, As::Subreaper);
    let pid: i32 = wait_until(TIMEOUT, "the reaper's pid", || {
        fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    let child = wait_until(TIMEOUT, "sleep to start", || exec_d_child(pid, "sleep"));
    kill(child, libc::SIGSTOP);
    wait_until(TIMEOUT, "the reaper to stop", || {
        (state(pid) == Some('T')).then_some(())
    });
    // script(1) behaves like a job-control shell: it sees the reaper stop, stops itself, and
    // when continued (the user's `fg`) sends SIGCONT to the reaper, which forwards it.
    let script = running.child.id() as i32;
    wait_until(TIMEOUT, "script to stop with its job", || {
        (state(script) == Some('T')).then_some(())
    });
    kill(script, libc::SIGCONT);
    wait_until(TIMEOUT, "both to run again", || {
        (state(child).is_some_and(|s| s != 'T') && state(pid).is_some_and(|s| s != 'T'))
            .then_some(())
    });
    kill(pid, libc::SIGTERM);
    let out = running.wait(TIMEOUT);
    assert!(state(pid).is_none(), "the reaper exited: {out:?}");
}

#[test]
fn never_stops_without_a_terminal() {
    // No terminal (a container, a debugger stopping the child): the reaper keeps running and
    // reaping while its child is stopped.
    let running = start(
        init_command(reaper(), As::Subreaper, &["--", "sleep", "1000"]),
        As::Subreaper,
    );
    let pid = running.init_pid();
    let child = wait_until(TIMEOUT, "sleep to start", || exec_d_child(pid, "sleep"));
    kill(child, libc::SIGSTOP);
    wait_until(TIMEOUT, "the child to stop", || {
        (state(child) == Some('T')).then_some(())
    });
    thread::sleep(Duration::from_millis(300));
    assert_ne!(state(pid), Some('T'), "the reaper did not stop");
    // A forwarded SIGCONT resumes the child; TERM then ends it.
    kill(pid, libc::SIGCONT);
    wait_until(TIMEOUT, "the child to resume", || {
        state(child).is_some_and(|s| s != 'T').then_some(())
    });
    kill(pid, libc::SIGTERM);
    let out = running.wait(TIMEOUT);
    assert_eq!(out.code(), 143, "{out:?}");
}

#[test]
fn hands_the_terminal_to_the_child() {
    // script(1) runs the reaper on a pseudo-terminal as its controlling terminal, in the
    // foreground: the child must get its own group and the terminal's foreground.
    let inner = format!(
        "{} -- sh -c 'read -r pid _ _ _ pg _ _ tp _ < /proc/$$/stat; echo \"pid=$pid pgrp=$pg tpgid=$tp\"'",
        reaper()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = start(cmd, As::Subreaper).wait(TIMEOUT);
    assert_eq!(out.code(), 0, "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("pid="))
        .unwrap_or_else(|| panic!("{out:?}"));
    let field = |k: &str| {
        line.trim_end_matches('\r')
            .split(' ')
            .find_map(|kv| kv.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {line}"))
            .to_owned()
    };
    assert_eq!(field("pid="), field("pgrp="), "own process group: {line}");
    assert_eq!(
        field("pgrp="),
        field("tpgid="),
        "foreground of the terminal: {line}"
    );
}

#[test]
fn own_sigpipe_is_not_forwarded() {
    // stderr is a pipe nobody reads: every log line the reaper writes raises SIGPIPE for the
    // reaper itself. That one is not the child's business.
    let dir = tempdir();
    let log = dir.path().join("log");
    let script = format!(
        "trap 'echo PIPE >> {l}' PIPE; trap 'echo USR1 >> {l}' USR1; echo ready >> {l}; \
         while [ ! -e {s} ]; do sleep 0.05; done",
        l = log.display(),
        s = dir.path().join("stop").display()
    );
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = Command::new(reaper());
    cmd.args(["-vv", "--", "bash", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(writer);
    let running = start_without_stderr(cmd);
    let pid = running.child.id() as i32;
    wait_for_line(&log, "ready", TIMEOUT);
    kill(pid, libc::SIGUSR1);
    wait_for_line(&log, "USR1", TIMEOUT);
    thread::sleep(Duration::from_millis(200));
    fs::write(dir.path().join("stop"), "").unwrap();
    let out = running.wait(TIMEOUT);
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "ready\nUSR1\n",
        "no PIPE forwarded"
    );
}
