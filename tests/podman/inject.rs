//! Scenario 4, the inject mechanics without Kubernetes: the webhook's planner turns a sample pod
//! into a JSONPatch, the patch is applied with the json-patch crate, and the patched pod is played
//! the way the kubelet would play it with podman: one podman volume per emptyDir, the injected
//! init container first (its securityContext: user 65532, read-only root, no capabilities, no
//! privilege escalation), then the app containers as a non-root UID with the reaper volume
//! mounted read-only and exactly the rewritten command/args (after the kubelet's `$(VAR)`
//! expansion). They must run, reap and stop as in scenarios 1-3; the unpatched pod, played the
//! same way, is the control.

use reaper_test_support as support;

use k8s_openapi::api::core::v1::{Container, Pod};
use reaper::crd::PolicySet;
use reaper::image::{ImageConfig, ImageIndex};
use reaper::keys;
use reaper::webhook::decide::{Config, Scope, plan};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;
use support::podman::{
    PROMPT, Podman, SIGKILL_PATH, STOP_TIMEOUT, WAIT_TIMEOUT, cmdline, lingering_zombies, podman,
    reaper_binary, repo, sample_trees, subtree, tree, wait_until, zombie_pids,
};

const NAMESPACE: &str = "default";
/// The app containers' UID and GID: arbitrary, non-root, in neither image.
const APP_UID: i64 = 4321;
const WATCH: Duration = Duration::from_secs(4);
const EVERY: Duration = Duration::from_millis(100);
const LINGER: Duration = Duration::from_millis(500);

/// The sample pod as a user writes it: restricted security settings, two containers, one
/// relying on its image's ENTRYPOINT/CMD (`app`), one with an explicit command (`worker`).
fn sample_pod(app_image: &str, workload_image: &str) -> Pod {
    let restricted = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    });
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sample", "namespace": NAMESPACE},
        "spec": {
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": APP_UID,
                "runAsGroup": APP_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "app",
                    "image": app_image,
                    "securityContext": restricted,
                    "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
                },
                {
                    "name": "worker",
                    "image": workload_image,
                    "command": ["/scripts/graceful.sh"],
                    "securityContext": restricted,
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                },
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }))
    .expect("sample pod")
}

/// The image's ENTRYPOINT and CMD as podman stores them (what a registry lookup would give).
fn image_config(pm: &Podman, image: &str) -> ImageConfig {
    let get = |field: &str| -> Vec<String> {
        let raw = pm.ok(&[
            "image",
            "inspect",
            "--format",
            &format!("{{{{json .Config.{field}}}}}"),
            image,
        ]);
        serde_json::from_str::<Option<Vec<String>>>(&raw)
            .unwrap_or_else(|e| panic!("{field} of {image}: {e}: {raw}"))
            .unwrap_or_default()
    };
    ImageConfig::new(get("Entrypoint"), get("Cmd"))
}

/// The pod the webhook returns: planner + JSONPatch, applied with json-patch.
fn mutate(pod: &Pod, images: &ImageIndex, cfg: &Config) -> (Pod, String) {
    let labels = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_string(),
        NAMESPACE.to_string(),
    )]);
    let scope = Scope {
        namespace: NAMESPACE,
        namespace_labels: &labels,
    };
    let plan = plan(pod, scope, &PolicySet::default(), images, cfg);
    let patch = plan.patch();
    let patch_json = serde_json::to_string_pretty(&patch).expect("patch json");
    let mut doc = serde_json::to_value(pod).expect("pod json");
    json_patch::patch(&mut doc, &patch).unwrap_or_else(|e| panic!("{e}: {patch_json}"));
    let patched: Pod = serde_json::from_value(doc).expect("patched pod");
    (patched, patch_json)
}

/// The kubelet's `$(VAR)` expansion of command and args: `$$` is a literal `$`, `$(NAME)` is
/// NAME's value when the container defines it (else left as written), any other `$` stays.
fn expand(s: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            match env.get(&inner[..end]) {
                Some(v) => out.push_str(v),
                None => out.push_str(&rest[i..i + 2 + end + 1]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `podman run` arguments (after `run`, before nothing) for container `c` of `pod`, as the
/// kubelet would ask a runtime for it. `volumes` maps pod volume names to podman volumes.
/// Refuses what it does not know how to play, so nothing is silently dropped.
fn podman_run_args(
    pod: &Pod,
    c: &Container,
    volumes: &HashMap<String, String>,
) -> Result<Vec<String>, String> {
    let spec = pod.spec.as_ref().ok_or("pod without spec")?;
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let mut a: Vec<String> = vec!["--network".into(), "none".into()];

    let uid = sc.run_as_user.or(pod_sc.run_as_user);
    let gid = sc.run_as_group.or(pod_sc.run_as_group);
    let non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true);
    match (uid, gid) {
        (Some(u), Some(g)) => a.extend(["--user".into(), format!("{u}:{g}")]),
        (Some(u), None) => a.extend(["--user".into(), u.to_string()]),
        (None, _) => {
            return Err(format!(
                "{}: no runAsUser (images here have no USER)",
                c.name
            ));
        }
    }
    if non_root && uid == Some(0) {
        return Err(format!("{}: runAsNonRoot with runAsUser 0", c.name));
    }
    if sc.privileged == Some(true) {
        return Err(format!("{}: privileged is not played", c.name));
    }
    if sc.read_only_root_filesystem == Some(true) {
        // The kubelet adds no tmpfs; podman's --read-only would (unless told not to).
        a.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    if sc.allow_privilege_escalation == Some(false) {
        a.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    if let Some(caps) = &sc.capabilities {
        for d in caps.drop.iter().flatten() {
            a.push(format!("--cap-drop={}", d.to_lowercase()));
        }
        for add in caps.add.iter().flatten() {
            a.push(format!("--cap-add={}", add.to_lowercase()));
        }
    }
    let seccomp = sc.seccomp_profile.or(pod_sc.seccomp_profile);
    match seccomp.as_ref().map(|s| s.type_.as_str()) {
        // podman's default profile is the runtime default.
        None | Some("RuntimeDefault") => {}
        Some("Unconfined") => a.extend(["--security-opt".into(), "seccomp=unconfined".into()]),
        Some(other) => return Err(format!("{}: seccomp {other} is not played", c.name)),
    }
    for m in c.volume_mounts.iter().flatten() {
        let vol = volumes.get(&m.name).ok_or_else(|| {
            format!(
                "{}: volume {} is not an emptyDir of the pod",
                c.name, m.name
            )
        })?;
        let ro = if m.read_only == Some(true) { ":ro" } else { "" };
        a.extend(["-v".into(), format!("{vol}:{}{ro}", m.mount_path)]);
    }
    let mut env = HashMap::new();
    for e in c.env.iter().flatten() {
        let v = e
            .value
            .clone()
            .ok_or_else(|| format!("{}: env {} valueFrom is not played", c.name, e.name))?;
        a.extend(["-e".into(), format!("{}={v}", e.name)]);
        env.insert(e.name.clone(), v);
    }
    if let Some(wd) = &c.working_dir {
        a.extend(["-w".into(), wd.clone()]);
    }
    if let Some(limits) = c.resources.as_ref().and_then(|r| r.limits.as_ref()) {
        for (k, q) in limits {
            match k.as_str() {
                "memory" => a.extend(["--memory".into(), memory_bytes(&q.0)?.to_string()]),
                "cpu" => a.extend(["--cpus".into(), cpus(&q.0)?]),
                other => return Err(format!("{}: limit {other} is not played", c.name)),
            }
        }
    }
    // command replaces the image ENTRYPOINT and drops its CMD (podman's --entrypoint does the
    // same); args replace the CMD. `[]` counts as unset.
    let set = |v: &Option<Vec<String>>| v.as_ref().filter(|v| !v.is_empty()).cloned();
    let command = set(&c.command).map(|v| v.iter().map(|s| expand(s, &env)).collect::<Vec<_>>());
    let args = set(&c.args).map(|v| v.iter().map(|s| expand(s, &env)).collect::<Vec<_>>());
    if let Some(command) = &command {
        a.extend([
            "--entrypoint".into(),
            serde_json::to_string(command).expect("json"),
        ]);
    }
    a.push(
        c.image
            .clone()
            .ok_or_else(|| format!("{}: no image", c.name))?,
    );
    a.extend(args.into_iter().flatten());
    Ok(a)
}

fn memory_bytes(q: &str) -> Result<u64, String> {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n
                .parse::<u64>()
                .map(|n| n * mult)
                .map_err(|e| format!("memory {q}: {e}"));
        }
    }
    q.parse().map_err(|e| format!("memory {q}: {e}"))
}

fn cpus(q: &str) -> Result<String, String> {
    match q.strip_suffix('m') {
        Some(milli) => milli
            .parse::<u64>()
            .map(|m| format!("{}", m as f64 / 1000.0))
            .map_err(|e| format!("cpu {q}: {e}")),
        None => q
            .parse::<f64>()
            .map(|c| c.to_string())
            .map_err(|e| format!("cpu {q}: {e}")),
    }
}

/// A pod played with podman: its emptyDirs as volumes, its init containers run to completion.
struct Played {
    volumes: HashMap<String, support::podman::Volume>,
    names: HashMap<String, String>,
}

/// Creates one podman volume per emptyDir (mode 0777, as the kubelet makes an emptyDir, so any
/// UID can write it), runs the init containers in order (each must exit 0), then starts the
/// regular containers detached. Returns container name → podman name.
fn play(pm: &Podman, pod: &Pod, what: &str) -> Played {
    let spec = pod.spec.as_ref().expect("spec");
    let mut volumes = HashMap::new();
    for v in spec.volumes.iter().flatten() {
        assert!(
            v.empty_dir.is_some(),
            "volume {} is not an emptyDir",
            v.name
        );
        let vol = pm.volume(&format!("{what}-{}", v.name));
        fs::set_permissions(&vol.host_path, fs::Permissions::from_mode(0o777)).expect("chmod");
        volumes.insert(v.name.clone(), vol);
    }
    let by_name: HashMap<String, String> = volumes
        .iter()
        .map(|(k, v)| (k.clone(), v.name.clone()))
        .collect();
    let mut names = HashMap::new();
    for c in spec.init_containers.iter().flatten() {
        let name = pm.container(&format!("{what}-{}", c.name));
        let args = podman_run_args(pod, c, &by_name).unwrap_or_else(|e| panic!("{e}"));
        let mut argv = vec!["run", "--name", &name];
        argv.extend(args.iter().map(String::as_str));
        let out = pm.exec(&argv);
        assert_eq!(
            out.code,
            Some(0),
            "init container {} failed:\npodman {}\n{}{}",
            c.name,
            argv.join(" "),
            out.stdout,
            out.stderr
        );
        names.insert(c.name.clone(), name);
    }
    for c in &spec.containers {
        let name = pm.container(&format!("{what}-{}", c.name));
        let args = podman_run_args(pod, c, &by_name).unwrap_or_else(|e| panic!("{e}"));
        let mut argv = vec!["run", "-d", "--name", &name];
        argv.extend(args.iter().map(String::as_str));
        pm.ok(&argv);
        pm.wait_running(&name);
        names.insert(c.name.clone(), name);
    }
    Played { volumes, names }
}

fn uid_of(pid: i32) -> u32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .expect("effective uid")
}

#[test]
fn injected_pod_runs_reaps_and_stops_under_podman() {
    let Some(pm) = podman("injected_pod_runs_reaps_and_stops_under_podman") else {
        return;
    };
    let reaper_image = pm.build_reaper_image();
    let workload = pm.build_workload_image();
    let app_image = pm.build(
        "app",
        &repo().join("e2e/podman/app.Containerfile"),
        &pm.scratch_dir("app-ctx"),
        &[("WORKLOAD_IMAGE", &workload)],
    );

    // The webhook's answer for the sample pod (default mode auto, no policy).
    let pod = sample_pod(&app_image, &workload);
    let app_config = image_config(&pm, &app_image);
    let mut images = ImageIndex::new();
    images.insert(app_image.clone(), Ok(app_config.clone()));
    let cfg = Config::new(reaper_image.clone());
    let (patched, patch_json) = mutate(&pod, &images, &cfg);
    eprintln!("patch:\n{patch_json}");
    let annotations = patched.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get(keys::ANNOTATION_INJECTED)
            .map(String::as_str),
        Some("inject:app,worker"),
        "{patch_json}"
    );
    let spec = patched.spec.as_ref().unwrap();
    let install = &spec.init_containers.as_ref().expect("init container")[0];
    assert_eq!(install.image.as_deref(), Some(reaper_image.as_str()));
    let install_sc = install.security_context.as_ref().expect("securityContext");
    assert_eq!(install_sc.run_as_user, Some(65532));
    assert_eq!(install_sc.read_only_root_filesystem, Some(true));
    let reaper_path = cfg.reaper_path();
    let app = &spec.containers[0];
    let app_command = app.command.clone().expect("app command");
    assert_eq!(app_command[0], reaper_path);
    // The image's `$` arrive escaped for the kubelet's expansion.
    assert!(
        app_command.iter().any(|s| s.contains("$$0")),
        "{app_command:?}"
    );

    // Play it: the install container copies the reaper into the emptyDir as UID 65532 with a
    // read-only root, then the apps start as APP_UID with it mounted read-only.
    let played = play(&pm, &patched, "injected");
    let bin_volume = &played.volumes[&install.volume_mounts.as_ref().unwrap()[0].name];
    let installed = bin_volume.file("reaper");
    let meta = fs::metadata(&installed).expect("reaper installed into the emptyDir");
    assert_eq!(meta.uid(), 65532, "written by the install container's user");
    assert_eq!(meta.mode() & 0o7777, 0o555);
    assert_eq!(
        fs::read(&installed).unwrap(),
        fs::read(reaper_binary()).unwrap(),
        "installed binary differs from target/reaper/reaper"
    );
    // Control: the unpatched pod, same player.
    let control = play(&pm, &pod, "control");

    let app_c = &played.names["app"];
    let worker_c = &played.names["worker"];
    let app_pid = pm.pid(app_c);
    let worker_pid = pm.pid(worker_c);
    let control_pid = pm.pid(&control.names["app"]);
    for pid in [app_pid, worker_pid] {
        assert_eq!(uid_of(pid), APP_UID as u32, "PID 1 runs as the pod's user");
    }
    // PID 1 is the reaper, running the image's ENTRYPOINT + CMD verbatim after `--` (the
    // escaped `$$0` came back as `$0`).
    let mut expected = vec![reaper_path.clone(), "--".to_string()];
    expected.extend(app_config.entrypoint.iter().cloned());
    expected.extend(app_config.cmd.iter().cloned());
    let argv: Vec<String> = fs::read(format!("/proc/{app_pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    assert_eq!(argv, expected);
    assert_eq!(
        cmdline(worker_pid),
        format!("{reaper_path} -- /scripts/graceful.sh")
    );
    wait_until(WAIT_TIMEOUT, "worker ready", || {
        played.volumes["data"].read("ready")
    });

    // Reap: the app makes orphans; under the injected reaper none stays a zombie, in the
    // control they pile up.
    let samples = sample_trees(&[app_pid, control_pid], WATCH, EVERY);
    let zombies_of = |root: i32| -> Vec<(Duration, Vec<i32>)> {
        samples
            .iter()
            .map(|(at, procs)| (*at, zombie_pids(&subtree(procs, &[root]))))
            .collect()
    };
    let counts = |z: &[(Duration, Vec<i32>)]| z.iter().map(|(_, v)| v.len()).collect::<Vec<_>>();
    let injected_z = zombies_of(app_pid);
    let control_z = zombies_of(control_pid);
    eprintln!("injected app: zombies {:?}", counts(&injected_z));
    eprintln!("control app: zombies {:?}", counts(&control_z));
    let reparented: HashSet<i32> = samples
        .iter()
        .flat_map(|(_, t)| t.iter())
        .filter(|p| p.ppid == app_pid && p.state != 'Z')
        .map(|p| p.pid)
        .collect();
    assert!(
        reparented.len() >= 5,
        "only {} children of the reaper seen",
        reparented.len()
    );
    let lingering = lingering_zombies(&injected_z, LINGER);
    assert!(lingering.is_empty(), "not reaped: {lingering:?}");
    assert!(*counts(&injected_z).last().unwrap() <= 1);
    assert!(*counts(&control_z).last().unwrap() >= 10);
    assert!(tree(&[app_pid]).len() >= 2);

    // Stop: prompt, with the apps' own status passed on.
    let took = pm.stop(app_c, STOP_TIMEOUT);
    eprintln!("injected app: podman stop took {took:?}");
    assert!(took < PROMPT, "injected app stopped in {took:?}");
    assert_eq!(pm.exit_code(app_c), 143);
    let took = pm.stop(worker_c, STOP_TIMEOUT);
    eprintln!("injected worker: podman stop took {took:?}");
    assert!(took < PROMPT, "injected worker stopped in {took:?}");
    assert_eq!(pm.exit_code(worker_c), 0);
    assert_eq!(
        played.volumes["data"].read("marker").as_deref(),
        Some("cleaned\n")
    );
    let took = pm.stop(&control.names["app"], STOP_TIMEOUT);
    eprintln!("control app: podman stop took {took:?}");
    assert!(took >= SIGKILL_PATH, "control app stopped in {took:?}");
    assert_eq!(pm.exit_code(&control.names["app"]), 137);
}

#[test]
fn kubelet_expansion() {
    let env = HashMap::from([("A".to_string(), "x".to_string())]);
    assert_eq!(expand("$$0 \"$$@\"", &env), "$0 \"$@\"");
    assert_eq!(expand("$(A)-$(B)-$", &env), "x-$(B)-$");
    assert_eq!(expand("$$(A)", &env), "$(A)");
    assert_eq!(expand("a$b", &env), "a$b");
}

#[test]
fn podman_args_follow_the_container_spec() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 2000, "runAsNonRoot": true},
            "containers": [{
                "name": "c",
                "image": "img",
                "command": ["/r", "--", "sh", "-c", "echo $$HOME $(X)"],
                "args": ["a"],
                "env": [{"name": "X", "value": "y"}],
                "securityContext": {
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "runAsUser": 65532,
                },
                "volumeMounts": [{"name": "bin", "mountPath": "/.reaper", "readOnly": true}],
                "resources": {"limits": {"memory": "64Mi", "cpu": "100m"}},
            }],
        },
    }))
    .unwrap();
    let c = &pod.spec.as_ref().unwrap().containers[0];
    let vols = HashMap::from([("bin".to_string(), "vol-1".to_string())]);
    let args = podman_run_args(&pod, c, &vols).unwrap();
    let expected: Vec<String> = [
        "--network",
        "none",
        "--user",
        "65532:2000",
        "--read-only",
        "--read-only-tmpfs=false",
        "--security-opt",
        "no-new-privileges",
        "--cap-drop=all",
        "-v",
        "vol-1:/.reaper:ro",
        "-e",
        "X=y",
        "--cpus",
        "0.1",
        "--memory",
        "67108864",
        "--entrypoint",
        r#"["/r","--","sh","-c","echo $HOME y"]"#,
        "img",
        "a",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(args, expected);

    let mut root = pod.clone();
    root.spec.as_mut().unwrap().containers[0]
        .security_context
        .as_mut()
        .unwrap()
        .run_as_user = Some(0);
    let c = &root.spec.as_ref().unwrap().containers[0];
    assert!(
        podman_run_args(&root, c, &vols)
            .unwrap_err()
            .contains("runAsNonRoot")
    );
}
