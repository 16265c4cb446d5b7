//! Scenarios 1 and 2 in real containers (podman + runc): stop latency, clean shutdown and exit
//! codes, each against a control without an init that shows the problem.
//!
//! The reaper runs two ways: as the image's entrypoint (`ENTRYPOINT ["/reaper", "--"]`, copied
//! from the reaper image) and through `podman run --init --init-path target/reaper/reaper`
//! (podman bind-mounts it as /run/podman-init and runs `/run/podman-init -- CMD`).

use reaper_test_support as support;

use std::time::Duration;
use support::podman::{
    PROMPT, Pid1, SIGKILL_PATH, SLEEP, STOP_TIMEOUT, WAIT_TIMEOUT, images, podman, start, tree,
    wait_until,
};

#[test]
fn stop_latency_sigterm_ignoring_pid1() {
    let Some(pm) = podman("stop_latency_sigterm_ignoring_pid1") else {
        return;
    };
    let img = images(&pm);

    // Control: `sleep` as PID 1 has no SIGTERM handler, so the kernel drops the signal; podman
    // waits out the timeout and kills it (137 = 128 + SIGKILL).
    let c = pm.container("stop-noinit");
    start(&pm, &img, Pid1::NoInit, &c, &[], SLEEP);
    let took = pm.stop(&c, STOP_TIMEOUT);
    eprintln!("no init: podman stop took {took:?}");
    assert!(took >= SIGKILL_PATH, "no init stopped in {took:?}");
    assert_eq!(pm.exit_code(&c), 137);

    // The reaper forwards SIGTERM to `sleep` (not PID 1, default action: exit), then exits with
    // its status, 143 = 128 + SIGTERM.
    for how in [Pid1::Entrypoint, Pid1::InitPath] {
        let c = pm.container(&format!("stop-{how:?}").to_lowercase());
        start(&pm, &img, how, &c, &[], SLEEP);
        let took = pm.stop(&c, STOP_TIMEOUT);
        eprintln!("reaper ({how:?}): podman stop took {took:?}");
        assert!(took < PROMPT, "reaper ({how:?}) stopped in {took:?}");
        assert_eq!(pm.exit_code(&c), 143, "reaper ({how:?})");
    }
}

#[test]
fn clean_shutdown_marker_and_exit_code() {
    let Some(pm) = podman("clean_shutdown_marker_and_exit_code") else {
        return;
    };
    let img = images(&pm);

    // The app traps SIGTERM, writes /data/marker and exits 0. Under the reaper (either way) the
    // signal reaches it at once and its 0 is the container's exit code.
    for how in [Pid1::Entrypoint, Pid1::InitPath] {
        let c = pm.container(&format!("graceful-{how:?}").to_lowercase());
        let vol = pm.volume(&format!("graceful-{how:?}").to_lowercase());
        let mount = format!("{}:/data", vol.name);
        start(
            &pm,
            &img,
            how,
            &c,
            &["-v", &mount],
            &["/scripts/graceful.sh"],
        );
        wait_until(WAIT_TIMEOUT, "graceful.sh ready", || vol.read("ready"));
        let took = pm.stop(&c, STOP_TIMEOUT);
        eprintln!("reaper ({how:?}) + graceful app: podman stop took {took:?}");
        assert_eq!(
            vol.read("marker").as_deref(),
            Some("cleaned\n"),
            "{}",
            pm.logs(&c)
        );
        assert_eq!(pm.exit_code(&c), 0, "reaper ({how:?})");
        assert!(took < PROMPT, "reaper ({how:?}) stopped in {took:?}");
    }

    // Control: the same app behind the usual entrypoint script (launcher.sh runs it as a child,
    // no exec). The script is PID 1 without a handler: SIGTERM is dropped, the app never hears
    // of it, SIGKILL after 5 s, no cleanup.
    let c = pm.container("launcher-noinit");
    let vol = pm.volume("launcher-noinit");
    let mount = format!("{}:/data", vol.name);
    start(
        &pm,
        &img,
        Pid1::NoInit,
        &c,
        &["-v", &mount],
        &["/scripts/launcher.sh"],
    );
    wait_until(WAIT_TIMEOUT, "graceful.sh ready", || vol.read("ready"));
    let took = pm.stop(&c, STOP_TIMEOUT);
    eprintln!("no init + launcher script: podman stop took {took:?}");
    assert!(took >= SIGKILL_PATH, "no init stopped in {took:?}");
    assert_eq!(vol.read("marker"), None, "no cleanup without an init");
    assert_eq!(pm.exit_code(&c), 137);

    // The same launcher under the reaper: SIGTERM reaches the script, which dies of it (no
    // handler, not PID 1), so the container's code is 128 + 15 = 143; the app, left over, gets
    // SIGTERM from the reaper's drain and still cleans up.
    let c = pm.container("launcher-reaper");
    let vol = pm.volume("launcher-reaper");
    let mount = format!("{}:/data", vol.name);
    start(
        &pm,
        &img,
        Pid1::Entrypoint,
        &c,
        &["-v", &mount],
        &["/scripts/launcher.sh"],
    );
    wait_until(WAIT_TIMEOUT, "graceful.sh ready", || vol.read("ready"));
    let took = pm.stop(&c, STOP_TIMEOUT);
    eprintln!("reaper + launcher script: podman stop took {took:?}");
    assert_eq!(pm.exit_code(&c), 143);
    assert_eq!(
        vol.read("marker").as_deref(),
        Some("cleaned\n"),
        "{}",
        pm.logs(&c)
    );
    assert!(took < PROMPT, "reaper + launcher stopped in {took:?}");
}

#[test]
fn child_killed_by_signal_gives_128_plus_n() {
    let Some(pm) = podman("child_killed_by_signal_gives_128_plus_n") else {
        return;
    };
    let img = images(&pm);

    // A signal sent to the container reaches the reaper, which forwards it: `sleep` dies of
    // SIGUSR1 (10) and the container exits 138.
    let c = pm.container("usr1-reaper");
    start(&pm, &img, Pid1::Entrypoint, &c, &[], SLEEP);
    pm.ok(&["kill", "-s", "USR1", &c]);
    assert_eq!(pm.wait_exit(&c), 138, "{}", pm.logs(&c));

    // The child killed directly (from the host, SIGKILL = 9): 137, from the reaper's exit.
    for how in [Pid1::Entrypoint, Pid1::InitPath] {
        let c = pm.container(&format!("kill9-{how:?}").to_lowercase());
        let pid = start(&pm, &img, how, &c, &[], SLEEP);
        let child = tree(&[pid])
            .into_iter()
            .find(|p| p.ppid == pid)
            .expect("the init's child");
        assert!(support::process::signal(child.pid, libc::SIGKILL));
        assert_eq!(pm.wait_exit(&c), 137, "reaper ({how:?}): {}", pm.logs(&c));
    }

    // Control: without an init, SIGUSR1 to `sleep` as PID 1 is dropped (no handler); the
    // container keeps running and only SIGKILL ends it.
    let c = pm.container("usr1-noinit");
    start(&pm, &img, Pid1::NoInit, &c, &[], SLEEP);
    pm.ok(&["kill", "-s", "USR1", &c]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pm.status(&c), "running", "SIGUSR1 to PID 1 without an init");
    pm.ok(&["kill", "-s", "KILL", &c]);
    assert_eq!(pm.wait_exit(&c), 137);
}
