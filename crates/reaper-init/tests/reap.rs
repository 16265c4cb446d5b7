//! The `reaper` init: reaping orphans (hundreds, as PID 1 and as subreaper), draining leftovers
//! after the main child exits, `--pause`, and the static build from `make reaper`.

// These tests signal the init and re-wire its file descriptors and signal state.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const ORPHANS: usize = 300;

/// Makes `n` orphans (double fork), then waits until every other process in view is gone, i.e.
/// reaped: a zombie would stay visible and the script would exit 9 after its deadline.
fn orphan_maker(n: usize, count_proc: bool) -> String {
    let mut s = format!("i=0; while [ $i -lt {n} ]; do (sleep 0.01 &); i=$((i+1)); done; ");
    if count_proc {
        // Shell builtins only, so the count does not see its own helpers.
        s.push_str(
            "tries=0; while :; do others=0; \
             for d in /proc/[0-9]*; do p=${d#/proc/}; [ \"$p\" = 1 ] || [ \"$p\" = $$ ] || others=$((others+1)); done; \
             [ $others -eq 0 ] && exit 0; tries=$((tries+1)); [ $tries -ge 300 ] && { echo \"left: $others\" >&2; exit 9; }; \
             sleep 0.1; done",
        );
    } else {
        s.push_str("sleep 1; exit 0");
    }
    s
}

#[test]
fn reaps_hundreds_of_orphans_as_pid1() {
    let out = run(
        reaper(),
        As::Pid1,
        &["-w", "--", "sh", "-c", &orphan_maker(ORPHANS, true)],
    );
    assert_eq!(
        out.code(),
        0,
        "zombies left in the namespace: {}",
        out.stderr
    );
    let reaped = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("reaper: reaped orphan "))
        .count();
    assert_eq!(reaped, ORPHANS, "{}", out.stderr);
}

#[test]
fn reaps_hundreds_of_orphans_as_subreaper() {
    let out = run(
        reaper(),
        As::Subreaper,
        &["-w", "--", "sh", "-c", &orphan_maker(ORPHANS, false)],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    // Every orphan was re-parented to the reaper (not to the machine's init) and reaped by it,
    // during the run or in the drain.
    let reaped = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("reaper: reaped orphan "))
        .count();
    assert_eq!(reaped, ORPHANS, "{}", out.stderr);
}

/// The main child starts two background grandchildren and exits 7: one traps TERM (and needs a
/// moment to write a file), one ignores TERM (and must be killed after the grace).
fn drain_script(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "bash -c 'trap \"sleep 0.3; echo trapped > {d}/term; exit 0\" TERM; echo $$ > {d}/p1; while :; do sleep 0.05; done' & \
         bash -c 'trap \"\" TERM; echo $$ > {d}/p2; while :; do sleep 0.05; done' & \
         while [ ! -s {d}/p1 ] || [ ! -s {d}/p2 ]; do sleep 0.05; done; exit 7"
    )
}

fn drains(how: As) {
    let dir = tempdir();
    let out = run(
        reaper(),
        how,
        &[
            "--grace",
            "3s",
            "--",
            "bash",
            "-c",
            &drain_script(dir.path()),
        ],
    );
    assert_eq!(out.code(), 7, "the main child's status: {out:?}");
    assert_eq!(
        fs::read_to_string(dir.path().join("term")).unwrap(),
        "trapped\n",
        "TERM and time to handle it"
    );
    assert!(
        out.elapsed >= Duration::from_millis(2500),
        "the TERM-ignoring process held the drain for the grace: {out:?}"
    );
    assert!(
        out.stderr.contains("grace period over: sent SIGKILL"),
        "{out:?}"
    );
    // The TERM-ignoring process is gone (not left behind re-parented to the machine's init).
    let p2: i32 = fs::read_to_string(dir.path().join("p2"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if how == As::Subreaper {
        wait_until(TIMEOUT, "the TERM-ignoring process to be gone", || {
            (state(p2).is_none_or(|s| s == 'Z')).then_some(())
        });
        assert!(
            state(p2).is_none(),
            "reaped by the reaper itself, not left as a zombie"
        );
    }
}

#[test]
fn drains_leftovers_as_pid1() {
    drains(As::Pid1);
}

#[test]
fn drains_leftovers_as_subreaper() {
    drains(As::Subreaper);
}

#[test]
fn drain_ends_early_when_leftovers_exit() {
    // Only a TERM-trapping leftover: the drain ends as soon as it is reaped, well before the grace.
    let dir = tempdir();
    let d = dir.path().display();
    let script = format!(
        "bash -c 'trap \"echo trapped > {d}/term; exit 0\" TERM; echo $$ > {d}/p1; while :; do sleep 0.05; done' & \
         while [ ! -s {d}/p1 ]; do sleep 0.05; done; exit 3"
    );
    let out = run(
        reaper(),
        As::Pid1,
        &["--grace", "60s", "--", "bash", "-c", &script],
    );
    assert_eq!(out.code(), 3, "{out:?}");
    assert!(out.elapsed < Duration::from_secs(30), "{out:?}");
    assert!(!out.stderr.contains("SIGKILL"), "{out:?}");
}

/// A signal that arrives while draining goes to the leftovers (the main child is gone): here it
/// ends a TERM-ignoring leftover long before the grace would.
fn forwards_signals_while_draining(how: As) {
    let dir = tempdir();
    let d = dir.path().display();
    // USR1, not INT: background jobs of a non-interactive shell start with INT ignored.
    let script = format!(
        "bash -c 'trap \"\" TERM; trap \"echo usr1 > {d}/usr1; exit 0\" USR1; echo $$ > {d}/p1; while :; do sleep 0.05; done' & \
         while [ ! -s {d}/p1 ] || [ ! -e {d}/go ]; do sleep 0.05; done; exit 5"
    );
    let run = start(
        init_command(
            reaper(),
            how,
            &["-vv", "--grace", "60s", "--", "bash", "-c", &script],
        ),
        how,
    );
    let init = run.init_pid();
    wait_for_file(&dir.path().join("p1"), TIMEOUT);
    let main = wait_until(TIMEOUT, "the main child", || {
        children(init).first().copied()
    });
    fs::write(dir.path().join("go"), "").unwrap();
    // Reaped (not merely a zombie): the init has seen the exit and started draining.
    wait_until(TIMEOUT, "the main child to be reaped", || {
        state(main).is_none().then_some(())
    });
    assert!(kill(init, libc::SIGUSR1));
    let out = run.wait(Duration::from_secs(30));
    assert_eq!(out.code(), 5, "the main child's status: {out:?}");
    assert_eq!(
        fs::read_to_string(dir.path().join("usr1")).unwrap(),
        "usr1\n",
        "{out:?}"
    );
    assert!(
        out.stderr.contains("while draining, forwarded SIGUSR1"),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains("SIGKILL"),
        "ended by the signal, not the grace: {out:?}"
    );
}

#[test]
fn forwards_signals_while_draining_as_pid1() {
    forwards_signals_while_draining(As::Pid1);
}

#[test]
fn forwards_signals_while_draining_as_subreaper() {
    forwards_signals_while_draining(As::Subreaper);
}

#[test]
fn grace_zero_exits_at_once() {
    let out = run(
        reaper(),
        As::Pid1,
        &["--grace=0", "--", "sh", "-c", "sleep 1000 & exit 5"],
    );
    assert_eq!(out.code(), 5, "{out:?}");
    assert!(
        out.elapsed < Duration::from_secs(20),
        "did not wait for the leftover: {out:?}"
    );
}

#[test]
fn pause_reaps_and_exits_0_on_term() {
    let running = start(
        init_command(reaper(), As::Pid1, &["--pause", "-w"]),
        As::Pid1,
    );
    let pid = running.init_pid();
    // Orphans entering the namespace are re-parented to the pausing init and reaped.
    let status = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-p",
            "-m",
            "sh",
            "-c",
            "(sleep 0.1 &); (sleep 0.1 &); exit 0",
        ])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    wait_until(TIMEOUT, "the orphans to be reaped", || {
        children(pid).is_empty().then_some(())
    });
    assert!(matches!(state(pid), Some('S' | 'R')), "still up");
    kill(pid, libc::SIGUSR1); // ignored
    kill(pid, libc::SIGTERM);
    let out = running.wait(TIMEOUT);
    assert_eq!(out.code(), 0, "{out:?}");
    let reaped = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("reaper: reaped orphan "))
        .count();
    assert_eq!(reaped, 2, "{out:?}");

    let running = start(
        init_command(reaper(), As::Subreaper, &["--pause"]),
        As::Subreaper,
    );
    let pid = running.init_pid();
    // Signal only once it waits in rt_sigtimedwait (its signals are blocked by then).
    wait_until(TIMEOUT, "the reaper to wait for signals", || {
        let syscall = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
        let nr: i64 = syscall.split_whitespace().next()?.parse().ok()?;
        (nr == libc::SYS_rt_sigtimedwait).then_some(())
    });
    kill(pid, libc::SIGINT);
    assert_eq!(running.wait(TIMEOUT).code(), 0);
}

#[test]
fn static_build_is_static_and_works_as_pid1() {
    let bin = static_reaper();
    let file = Command::new("file")
        .arg(&bin)
        .output()
        .expect("file(1) is installed");
    let desc = String::from_utf8_lossy(&file.stdout);
    assert!(
        desc.contains("statically linked"),
        "{}: {desc}",
        bin.display()
    );
    let bin = bin.to_str().unwrap();
    let out = run(
        bin,
        As::Pid1,
        &["-w", "--", "sh", "-c", &orphan_maker(20, true)],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.starts_with("reaper: reaped orphan "))
            .count(),
        20
    );
    let out = run(bin, As::Pid1, &["--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.code(), 143);
    let out = run(bin, As::Subreaper, &["--", "no-such-command-xyz"]);
    assert_eq!(out.code(), 127);
}
