//! Scenario 5 in real containers: a podman pod sharing one PID namespace
//! (`podman pod create --share pid`) whose infra container runs `reaper --pause` from the
//! reaper image, the way Kubernetes' `shareProcessNamespace` makes the pause container PID 1.
//! The control is the same pod without `pid` in `--share`: the app is then PID 1 of its own
//! namespace, as in a pod without `shareProcessNamespace`.

use reaper_test_support as support;

use std::collections::HashSet;
use std::fs;
use std::time::Duration;
use support::podman::{
    PROMPT, Podman, SIGKILL_PATH, STOP_TIMEOUT, lingering_zombies, podman, sample_trees, subtree,
    zombie_pids,
};

const WATCH: Duration = Duration::from_secs(4);
const EVERY: Duration = Duration::from_millis(100);
const LINGER: Duration = Duration::from_millis(500);

struct Pod {
    name: String,
    infra_pid: i32,
    app: String,
    app_pid: i32,
}

/// Creates and starts a pod sharing `share` with the reaper image as infra (`reaper --pause`),
/// then runs the orphan-making app (scripts/orphans.sh) in it.
fn pod_with_app(pm: &Podman, what: &str, share: &str, reaper: &str, workload: &str) -> Pod {
    let name = pm.pod(what);
    pm.ok(&[
        "pod",
        "create",
        "--name",
        &name,
        "--share",
        share,
        "--network",
        "none",
        "--infra-image",
        reaper,
        // podman 4.3 splits this string on spaces into the infra container's entrypoint.
        "--infra-command",
        "/reaper --pause",
    ]);
    pm.ok(&["pod", "start", &name]);
    let infra = pm.ok(&["pod", "inspect", "--format", "{{.InfraContainerID}}", &name]);
    let infra_pid = pm.wait_running(&infra);
    let argv = fs::read(format!("/proc/{infra_pid}/cmdline")).unwrap_or_default();
    assert_eq!(argv, b"/reaper\0--pause\0", "infra runs {argv:?}");

    let app = pm.container(&format!("{what}-app"));
    pm.ok(&[
        "run",
        "-d",
        "--pod",
        &name,
        "--name",
        &app,
        workload,
        "/scripts/orphans.sh",
    ]);
    let app_pid = pm.wait_running(&app);
    Pod {
        name,
        infra_pid,
        app,
        app_pid,
    }
}

/// The pid of a host process inside its own (innermost) PID namespace.
fn pid_in_namespace(host_pid: i32) -> i32 {
    let status = fs::read_to_string(format!("/proc/{host_pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid line");
    line.split_whitespace()
        .last()
        .and_then(|p| p.parse().ok())
        .expect("NSpid value")
}

#[test]
fn shared_pid_pod_with_reaper_pause_reaps_orphans_and_stops_promptly() {
    let Some(pm) = podman("shared_pid_pod_with_reaper_pause_reaps_orphans_and_stops_promptly")
    else {
        return;
    };
    let reaper = pm.build_reaper_image();
    let workload = pm.build_workload_image();

    let shared = pod_with_app(&pm, "shared", "pid,ipc,uts", &reaper, &workload);
    let control = pod_with_app(&pm, "control", "ipc,uts", &reaper, &workload);

    // In the shared namespace the reaper is PID 1 and the app is not; in the control the app
    // is PID 1 of its own namespace.
    assert_eq!(pid_in_namespace(shared.infra_pid), 1);
    assert_ne!(pid_in_namespace(shared.app_pid), 1);
    assert_eq!(pid_in_namespace(control.app_pid), 1);

    let roots = [shared.infra_pid, shared.app_pid, control.app_pid];
    let samples = sample_trees(&roots, WATCH, EVERY);
    let in_tree = |roots: &[i32]| -> Vec<(Duration, Vec<i32>)> {
        samples
            .iter()
            .map(|(at, procs)| (*at, zombie_pids(&subtree(procs, roots))))
            .collect()
    };
    let shared_z = in_tree(&[shared.infra_pid, shared.app_pid]);
    let control_z = in_tree(&[control.app_pid]);
    let counts = |z: &[(Duration, Vec<i32>)]| z.iter().map(|(_, v)| v.len()).collect::<Vec<_>>();
    eprintln!(
        "shared pid + reaper --pause: zombies {:?}",
        counts(&shared_z)
    );
    eprintln!("control (app is PID 1): zombies {:?}", counts(&control_z));

    // The orphans do reach the infra's reaper (re-parented to the namespace's PID 1) ...
    let reparented: HashSet<i32> = samples
        .iter()
        .flat_map(|(_, t)| t.iter())
        .filter(|p| p.ppid == shared.infra_pid)
        .map(|p| p.pid)
        .collect();
    assert!(
        reparented.len() >= 5,
        "only {} orphans ever re-parented to the infra reaper",
        reparented.len()
    );
    // ... which reaps them; without the shared namespace they pile up under the app.
    let lingering = lingering_zombies(&shared_z, LINGER);
    assert!(lingering.is_empty(), "not reaped: {lingering:?}");
    assert!(*counts(&shared_z).last().unwrap() <= 1);
    let control_last = *counts(&control_z).last().unwrap();
    assert!(control_last >= 10, "control: only {control_last} zombies");

    // Stop: in the shared namespace the app is not PID 1, so SIGTERM ends it at once, and the
    // reaper exits 0 on SIGTERM. The control's app is PID 1 and ignores it: SIGKILL after 5 s.
    let t = STOP_TIMEOUT.to_string();
    let took = pm.ok_timed(&["pod", "stop", "-t", &t, &shared.name]);
    eprintln!("shared pid pod: podman pod stop took {took:?}");
    assert!(took < PROMPT, "shared pod stopped in {took:?}");
    let infra = pm.ok(&[
        "pod",
        "inspect",
        "--format",
        "{{.InfraContainerID}}",
        &shared.name,
    ]);
    assert_eq!(pm.exit_code(&infra), 0, "reaper --pause exit code");
    // The app dies of SIGTERM (143), or of the kernel's SIGKILL (137) when podman stopped the
    // infra first: PID 1's exit ends the namespace. podman stops the pod's containers without
    // a fixed order (the kubelet stops the sandbox last). Either way it was prompt.
    let app_code = pm.exit_code(&shared.app);
    eprintln!("shared pid pod: app exit code {app_code}");
    assert!([143, 137].contains(&app_code), "app exit code {app_code}");

    let took = pm.ok_timed(&["pod", "stop", "-t", &t, &control.name]);
    eprintln!("control pod: podman pod stop took {took:?}");
    assert!(took >= SIGKILL_PATH, "control pod stopped in {took:?}");
    assert_eq!(pm.exit_code(&control.app), 137);
}
