//! Scenarios 1 and 2 in real containers (podman + runc): stop latency, clean shutdown and exit
//! codes, each against a control without an init that shows the problem.
//!
//! The reaper runs two ways: as the image's entrypoint (`ENTRYPOINT ["/reaper", "--"]`, copied
//! from the reaper image) and through `podman run --init --init-path target/reaper/reaper`
//! (podman bind-mounts it as /run/podman-init and runs `/run/podman-init -- CMD`).

mod podman_common;

use podman_common::{Podman, WAIT_TIMEOUT, podman, repo, tree, wait_until};
use std::fs;
use std::time::Duration;

/// `podman stop -t 5` of a PID 1 that ignores SIGTERM ends in SIGKILL after the 5 s.
const STOP_TIMEOUT: u32 = 5;
/// The control's floor, a little under the 5 s (podman's own clock starts before ours ends).
const SIGKILL_PATH: Duration = Duration::from_millis(4500);
/// "Stops promptly": the whole `podman stop` command, CLI start-up and cleanup included.
/// Typically 0.2–0.4 s here; the bound leaves room for a loaded 2-core machine.
const PROMPT: Duration = Duration::from_millis(2500);

const SLEEP: &[&str] = &["sleep", "1000000"];

/// The three ways the tests run a command.
#[derive(Debug, Clone, Copy)]
enum Init {
    /// No init: the command is PID 1.
    None,
    /// `ENTRYPOINT ["/reaper", "--"]` in the image.
    Entrypoint,
    /// `--init --init-path target/reaper/reaper`.
    InitPath,
}

struct Images {
    workload: String,
    wrapped: String,
}

fn images(pm: &Podman) -> Images {
    let workload = pm.build_workload_image();
    let reaper = pm.build_reaper_image();
    let wrapped = pm.build_wrapped_image(&workload, &reaper);
    Images { workload, wrapped }
}

/// `podman run -d` of `cmd` the given way; returns the host pid of the container's PID 1 once
/// the command itself is running (under an init: once it has been exec'd as the init's child).
fn start(pm: &Podman, img: &Images, how: Init, name: &str, opts: &[&str], cmd: &[&str]) -> i32 {
    let init_path = repo().join("target/reaper/reaper");
    let init_path = init_path.to_str().unwrap();
    let mut argv = vec!["run", "-d", "--name", name, "--network", "none"];
    argv.extend_from_slice(opts);
    match how {
        Init::None | Init::Entrypoint => {}
        Init::InitPath => argv.extend(["--init", "--init-path", init_path]),
    }
    argv.push(match how {
        Init::Entrypoint => &img.wrapped,
        Init::None | Init::InitPath => &img.workload,
    });
    argv.extend_from_slice(cmd);
    pm.ok(&argv);
    let pid = pm.wait_running(name);
    let first = cmdline(pid);
    match how {
        Init::None => {}
        Init::Entrypoint => assert!(first.starts_with("/reaper --"), "PID 1 is {first:?}"),
        Init::InitPath => assert!(
            first.starts_with("/run/podman-init --"),
            "PID 1 is {first:?}"
        ),
    }
    if !matches!(how, Init::None) {
        wait_until(WAIT_TIMEOUT, "the init's child to start", || {
            (tree(&[pid]).len() >= 2).then_some(())
        });
    }
    pid
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn stop_latency_sigterm_ignoring_pid1() {
    let Some(pm) = podman("stop_latency_sigterm_ignoring_pid1") else {
        return;
    };
    let img = images(&pm);

    // Control: `sleep` as PID 1 has no SIGTERM handler, so the kernel drops the signal; podman
    // waits out the timeout and kills it (137 = 128 + SIGKILL).
    let c = pm.container("stop-noinit");
    start(&pm, &img, Init::None, &c, &[], SLEEP);
    let took = pm.stop(&c, STOP_TIMEOUT);
    eprintln!("no init: podman stop took {took:?}");
    assert!(took >= SIGKILL_PATH, "no init stopped in {took:?}");
    assert_eq!(pm.exit_code(&c), 137);

    // The reaper forwards SIGTERM to `sleep` (not PID 1, default action: exit), then exits with
    // its status, 143 = 128 + SIGTERM.
    for how in [Init::Entrypoint, Init::InitPath] {
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
    for how in [Init::Entrypoint, Init::InitPath] {
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
        Init::None,
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
        Init::Entrypoint,
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
    start(&pm, &img, Init::Entrypoint, &c, &[], SLEEP);
    pm.ok(&["kill", "-s", "USR1", &c]);
    assert_eq!(pm.wait_exit(&c), 138, "{}", pm.logs(&c));

    // The child killed directly (from the host, SIGKILL = 9): 137, from the reaper's exit.
    for how in [Init::Entrypoint, Init::InitPath] {
        let c = pm.container(&format!("kill9-{how:?}").to_lowercase());
        let pid = start(&pm, &img, how, &c, &[], SLEEP);
        let child = tree(&[pid])
            .into_iter()
            .find(|p| p.ppid == pid)
            .expect("the init's child");
        // SAFETY: plain kill(2) of a pid we just read from /proc.
        assert_eq!(unsafe { libc::kill(child.pid, libc::SIGKILL) }, 0);
        assert_eq!(pm.wait_exit(&c), 137, "reaper ({how:?}): {}", pm.logs(&c));
    }

    // Control: without an init, SIGUSR1 to `sleep` as PID 1 is dropped (no handler); the
    // container keeps running and only SIGKILL ends it.
    let c = pm.container("usr1-noinit");
    start(&pm, &img, Init::None, &c, &[], SLEEP);
    pm.ok(&["kill", "-s", "USR1", &c]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pm.status(&c), "running", "SIGUSR1 to PID 1 without an init");
    pm.ok(&["kill", "-s", "KILL", &c]);
    assert_eq!(pm.wait_exit(&c), 137);
}
