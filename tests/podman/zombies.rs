//! Scenario 3 in real containers (podman + runc): zombies and the drain of leftovers, each
//! against a control without an init.
//!
//! Zombies are counted from the host's /proc: the container's processes are its first
//! process (the host pid `podman inspect` reports) and everything below it by parent pid.

use reaper_test_support as support;

use std::collections::HashSet;
use std::time::Duration;
use support::podman::{
    Images, Pid1, Podman, Proc, images, lingering_zombies, podman, sample_trees, start, subtree,
    zombie_pids,
};

/// How long the orphan maker runs before the counts are compared (about 20 orphans a second).
const WATCH: Duration = Duration::from_secs(4);
const EVERY: Duration = Duration::from_millis(100);
/// A zombie still there this long after it was first seen is not going to be reaped.
const LINGER: Duration = Duration::from_millis(500);

#[test]
fn orphans_become_zombies_without_init_and_are_reaped_by_the_reaper() {
    let Some(pm) = podman("orphans_become_zombies_without_init_and_are_reaped_by_the_reaper")
    else {
        return;
    };
    let img = images(&pm);

    // The three containers make orphans side by side and are watched over the same window.
    let cmd = ["/scripts/orphans.sh"];
    let started: Vec<(Pid1, String, i32)> = [Pid1::NoInit, Pid1::Entrypoint, Pid1::InitPath]
        .into_iter()
        .map(|how| {
            let c = pm.container(&format!("orphans-{how:?}").to_lowercase());
            let pid = start(&pm, &img, how, &c, &[], &cmd);
            (how, c, pid)
        })
        .collect();
    let roots: Vec<i32> = started.iter().map(|(_, _, pid)| *pid).collect();
    let samples = sample_trees(&roots, WATCH, EVERY);

    for (how, c, pid) in &started {
        let mine = per_container(&samples, *pid);
        let counts: Vec<usize> = mine.iter().map(|(_, t)| zombie_count(t)).collect();
        eprintln!("{how:?}: zombies over {WATCH:?} every {EVERY:?}: {counts:?}");
        let zombie_pids: Vec<(Duration, Vec<i32>)> =
            mine.iter().map(|(at, t)| (*at, zombie_pids(t))).collect();
        match how {
            Pid1::NoInit => {
                // `sleep` as PID 1 never calls wait(): every orphan stays a zombie.
                let last = *counts.last().unwrap();
                assert!(last >= 10, "{how:?}: only {last} zombies: {counts:?}");
                assert!(
                    counts[counts.len() / 2] < last,
                    "{how:?}: zombie count did not grow: {counts:?}"
                );
                assert!(!lingering_zombies(&zombie_pids, LINGER).is_empty());
            }
            Pid1::Entrypoint | Pid1::InitPath => {
                // The orphans do reach PID 1 (the reaper) ...
                let orphans: HashSet<i32> = mine
                    .iter()
                    .flat_map(|(_, t)| t.iter())
                    .filter(|p| p.ppid == *pid && p.state != 'Z')
                    .map(|p| p.pid)
                    .collect();
                // (one of them is the main child, `sleep`)
                assert!(
                    orphans.len() >= 5,
                    "{how:?}: only {} processes ever seen under the reaper",
                    orphans.len()
                );
                // ... and none of them stays a zombie.
                let lingering = lingering_zombies(&zombie_pids, LINGER);
                assert!(
                    lingering.is_empty(),
                    "{how:?}: zombies not reaped: {lingering:?} (counts {counts:?})\n{}",
                    pm.logs(c)
                );
                assert!(
                    *counts.last().unwrap() <= 1,
                    "{how:?}: zombies at the end: {counts:?}"
                );
            }
        }
    }
}

/// The samples restricted to one container's tree.
fn per_container(samples: &[(Duration, Vec<Proc>)], root: i32) -> Vec<(Duration, Vec<Proc>)> {
    samples
        .iter()
        .map(|(at, procs)| (*at, subtree(procs, &[root])))
        .collect()
}

fn zombie_count(procs: &[Proc]) -> usize {
    zombie_pids(procs).len()
}

/// Runs drain.sh (the main process leaves leftover.sh behind and exits 0) the given way and
/// returns the container's exit code and what the leftover recorded.
fn run_drain(pm: &Podman, img: &Images, how: Pid1) -> (i32, Option<String>) {
    let name = format!("drain-{how:?}").to_lowercase();
    let c = pm.container(&name);
    let vol = pm.volume(&name);
    let mount = format!("{}:/data", vol.name);
    // Detached, then `podman wait`: the container may finish before `start` looks at it.
    let mut argv = vec!["run", "-d", "--name", &c, "--network", "none", "-v", &mount];
    let init_path = support::podman::reaper_binary();
    if let Pid1::InitPath = how {
        argv.extend(["--init", "--init-path", init_path.to_str().unwrap()]);
    }
    argv.push(match how {
        Pid1::Entrypoint => &img.wrapped,
        Pid1::NoInit | Pid1::InitPath => &img.workload,
    });
    argv.push("/scripts/drain.sh");
    pm.ok(&argv);
    let code = pm.wait_exit(&c);
    assert!(
        vol.read("leftover-ready").is_some(),
        "{how:?}: the leftover never started: {}",
        pm.logs(&c)
    );
    (code, vol.read("leftover"))
}

#[test]
fn drain_leftover_gets_sigterm_before_the_container_exits() {
    let Some(pm) = podman("drain_leftover_gets_sigterm_before_the_container_exits") else {
        return;
    };
    let img = images(&pm);

    // The main process exits 0; the reaper sends SIGTERM to what is left, the leftover records
    // it and exits, and the container exits with the main process's 0.
    for how in [Pid1::Entrypoint, Pid1::InitPath] {
        let (code, leftover) = run_drain(&pm, &img, how);
        assert_eq!(code, 0, "{how:?}");
        assert_eq!(leftover.as_deref(), Some("got TERM\n"), "{how:?}");
    }

    // Control: without an init, PID 1's exit makes the kernel SIGKILL the rest of the PID
    // namespace: the leftover never hears SIGTERM and records nothing.
    let (code, leftover) = run_drain(&pm, &img, Pid1::NoInit);
    assert_eq!(code, 0);
    assert_eq!(leftover, None, "no init, yet the leftover got SIGTERM");
}
