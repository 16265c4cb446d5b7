//! Live tests on this machine (root, cgroup v1 hybrid): real zombies held by a real parent that
//! never waits, inside real cgroup directories shaped like kubelet pod cgroups; the agent scans
//! the real /proc and must attribute them to the right pod and container.
//! Helpers (cgroup trees, zombie parents, cleanup) are in `reaper_test_support::agent`.

use reaper_test_support::agent as agent_common;

use agent_common::{
    CGROUP_ROOT, CgroupTree, DEADLINE, PARENT_COMM, Reaped, V1Pod, ids, output_within_deadline,
    v1_pod, zombie_parent,
};
use reaper::agent::report::{self, FirstSeen, PodIndex, ReportInput};
use reaper::agent::scan::{self, Pids};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn live_v1_cgroupfs_zombies_are_attributed_to_pod_and_container() {
    const N: u32 = 5;
    let pod = v1_pod(N, 77);
    let parent_pid = pod.parent.0.id() as i32;
    // The kernel's own count, for the record: the parent plus its zombies.
    let current: u64 = fs::read_to_string(pod.pod_dir.join("pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(current, N as u64 + 1);

    let scan = scan::scan(Path::new("/proc"), Path::new(CGROUP_ROOT)).unwrap();
    let ours: Vec<_> = scan
        .zombies
        .iter()
        .filter(|z| z.pod_uid.as_deref() == Some(pod.uid.as_str()))
        .collect();
    assert_eq!(ours.len(), N as usize, "{:#?}", scan.zombies);
    for z in &ours {
        assert_eq!(z.container_id.as_deref(), Some(pod.cid.as_str()));
        let parent = z.parent.as_ref().unwrap();
        assert_eq!(
            (parent.pid, parent.comm.as_str()),
            (parent_pid, PARENT_COMM)
        );
        assert_eq!(z.comm, "sh");
    }
    let usage = &scan.pods[&pod.uid];
    assert_eq!(
        usage.pids,
        Some(Pids {
            current: N as u64 + 1,
            limit: Some(77)
        })
    );
    assert_eq!(usage.processes, 1, "only the parent is alive");

    let now = Instant::now();
    let mut first_seen = FirstSeen::default();
    first_seen.update(&scan.zombies, now);
    let spec = report::build_spec(&ReportInput {
        node_name: "live",
        scan: &scan,
        first_seen: &first_seen,
        index: &PodIndex::default(),
        now,
        observed_at: None,
    });
    let c = spec
        .containers
        .iter()
        .find(|c| c.pod_uid == pod.uid)
        .expect("our container is in the report");
    assert_eq!((c.container_id.as_str(), c.count), (pod.cid.as_str(), N));
    assert_eq!(c.parents.len(), 1);
    assert_eq!(
        (
            c.parents[0].pid,
            c.parents[0].comm.as_str(),
            c.parents[0].count
        ),
        (parent_pid, PARENT_COMM, N)
    );
    let p = spec.pods.iter().find(|p| p.pod_uid == pod.uid).unwrap();
    assert_eq!((p.current, p.limit, p.zombies), (N as u64 + 1, Some(77), N));
}

#[test]
fn live_pids_limit_holds_and_zombies_count_against_it() {
    // At the limit: the parent plus 3 zombies fill pids.max = 4.
    let pod = v1_pod(3, 4);
    let scan = scan::scan(Path::new("/proc"), Path::new(CGROUP_ROOT)).unwrap();
    assert_eq!(
        scan.pods[&pod.uid].pids,
        Some(Pids {
            current: 4,
            limit: Some(4)
        })
    );
    let now = Instant::now();
    let spec = report::build_spec(&ReportInput {
        node_name: "live",
        scan: &scan,
        first_seen: &FirstSeen::default(),
        index: &PodIndex::default(),
        now,
        observed_at: None,
    });
    let p = spec.pods.iter().find(|p| p.pod_uid == pod.uid).unwrap();
    assert_eq!((p.current, p.limit, p.zombies), (4, Some(4), 3));
}

#[test]
fn live_v2_systemd_path_in_the_unified_hierarchy() {
    let unified = Path::new(CGROUP_ROOT).join("unified");
    let unified = if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        PathBuf::from(CGROUP_ROOT)
    } else {
        unified
    };
    let (uid, cid, top) = ids();
    let slice_uid = uid.replace('-', "_");
    let tree = CgroupTree::create(
        &unified,
        &format!(
            "{top}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{slice_uid}.slice/cri-containerd-{cid}.scope"
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let parent = zombie_parent(&[tree.leaf()], 2, work.path());
    let scan = scan::scan(Path::new("/proc"), Path::new(CGROUP_ROOT)).unwrap();
    let ours: Vec<_> = scan
        .zombies
        .iter()
        .filter(|z| z.pod_uid.as_deref() == Some(uid.as_str()))
        .collect();
    assert_eq!(ours.len(), 2, "{:#?}", scan.zombies);
    for z in ours {
        assert_eq!(z.container_id.as_deref(), Some(cid.as_str()));
        assert_eq!(z.parent.as_ref().unwrap().pid, parent.0.id() as i32);
    }
    drop(parent);
    drop(tree);
}

/// Run `reaper-controller agent --once --output json` (optionally under a wrapper such as
/// setpriv) with no cluster reachable, and parse what it prints.
fn once_json(wrapper: &[&str]) -> serde_json::Value {
    let home = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_reaper-controller");
    let mut argv: Vec<&str> = wrapper.to_vec();
    argv.extend([
        bin,
        "agent",
        "--once",
        "--output",
        "json",
        "--proc-root",
        "/proc",
        "--cgroup-root",
        CGROUP_ROOT,
        "--node-name",
        "live-node",
    ]);
    let out = output_within_deadline(
        Command::new(argv[0])
            .args(&argv[1..])
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", home.path()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The report must name the pod's container, its zombies' parent and the pod's pids usage.
fn assert_names_pod(v: &serde_json::Value, pod: &V1Pod, zombies: u32, limit: u64) {
    let containers = v["spec"]["containers"].as_array().unwrap();
    let c = containers
        .iter()
        .find(|c| c["podUid"] == pod.uid.as_str())
        .unwrap_or_else(|| panic!("pod {} not in {}", pod.uid, v));
    assert_eq!(c["containerId"], pod.cid.as_str());
    assert_eq!(c["count"], zombies);
    assert_eq!(c["parents"][0]["pid"], pod.parent.0.id());
    assert_eq!(c["parents"][0]["comm"], PARENT_COMM);
    let p = v["spec"]["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podUid"] == pod.uid.as_str())
        .unwrap();
    assert_eq!(p["current"], zombies + 1);
    assert_eq!(p["limit"], limit);
    assert_eq!(p["zombies"], zombies);
    // Its top process's status was read too (world-readable: no privilege needed): the parent,
    // in the agent's own PID namespace, holding the zombies.
    let pid1 = v["spec"]["pid1s"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["podUid"] == pod.uid.as_str())
        .unwrap_or_else(|| panic!("pod {} not in pid1s of {}", pod.uid, v));
    assert_eq!(pid1["comm"], PARENT_COMM);
    assert_eq!(
        (pid1["pid1"].as_bool(), pid1["hostPid"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(pid1["zombies"], zombies);
    assert_eq!(pid1["zombieComms"][0]["comm"], "sh");
}

/// `reaper-controller agent --once --output json --proc-root /proc` names the test's pod and
/// container, its zombies' parent and its pids usage.
#[test]
fn live_once_output_json_names_the_pod() {
    const N: u32 = 4;
    let pod = v1_pod(N, 50);
    let v = once_json(&[]);
    assert_eq!(v["kind"], "ZombieReport");
    assert_eq!(v["apiVersion"], "reaper.dev/v1alpha1");
    assert_eq!(v["metadata"]["name"], "live-node");
    assert_eq!(v["spec"]["nodeName"], "live-node");
    assert_names_pod(&v, &pod, N, 50);
}

/// The DaemonSet runs as non-root without capabilities: /proc/<pid>/{stat,cgroup} and the pids
/// files are world-readable, so an unprivileged agent sees the same.
#[test]
fn live_unprivileged_agent_without_capabilities_sees_the_zombies() {
    const N: u32 = 2;
    let pod = v1_pod(N, 40);
    let v = once_json(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
    ]);
    assert_names_pod(&v, &pod, N, 40);
}

/// GET a path from the admin port (plain HTTP/1.1, connection closed by the server).
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Poll `/metrics` until `pred` holds.
fn wait_metrics(addr: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let body = http_get(addr, "/metrics").unwrap_or_default();
        if pred(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen; last /metrics:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The long-running agent (`--report=false`, no cluster): metrics per container and pod appear,
/// disappear when the zombies are reaped, and SIGTERM stops it cleanly.
#[test]
fn live_agent_loop_serves_metrics_and_stops_on_sigterm() {
    const N: u32 = 3;
    let pod = v1_pod(N, 64);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let home = tempfile::tempdir().unwrap();
    let agent = Reaped(
        Command::new(env!("CARGO_BIN_EXE_reaper-controller"))
            .args(["agent", "--report=false", "--interval", "200ms"])
            .args(["--admin-listen", &addr, "--node-name", "live-node"])
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let series = format!(
        r#"reaper_agent_zombie_processes{{namespace="",pod="{}",container="{}"}} {N}"#,
        pod.uid, pod.cid
    );
    let pids = format!(
        r#"reaper_agent_pod_pids{{namespace="",pod="{}"}} {}"#,
        pod.uid,
        N + 1
    );
    let limit = format!(
        r#"reaper_agent_pod_pids_limit{{namespace="",pod="{}"}} 64"#,
        pod.uid
    );
    let body = wait_metrics(&addr, &series, |b| b.contains(&series));
    assert!(body.contains(&pids), "{body}");
    assert!(body.contains(&limit), "{body}");
    for family in [
        "reaper_node_pid_max ",
        "reaper_node_processes ",
        "reaper_node_zombies ",
        "reaper_agent_scan_duration_seconds_count ",
    ] {
        assert!(body.contains(family), "{family} missing:\n{body}");
    }
    assert!(http_get(&addr, "/readyz").unwrap().contains("200 OK"));

    // Kill the parent: its zombies go to init and are reaped; the series must go away.
    let V1Pod {
        uid,
        parent,
        tree: _tree,
        ..
    } = pod;
    drop(parent);
    let gone = format!(r#"pod="{uid}",container="#);
    wait_metrics(&addr, "removal of the container series", |b| {
        b.contains("reaper_node_processes ") && !b.contains(&gone)
    });

    let pid = agent.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut agent = agent;
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = agent.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "agent ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// The only child of `pid` (what `unshare --fork` started), once it has exec'd `comm`.
fn child_named(pid: u32, comm: &str) -> u32 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = Command::new("ps")
            .args(["-o", "pid=,comm=", "--ppid", &pid.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(child) = text.lines().find_map(|l| {
            let (p, c) = l.trim().split_once(char::is_whitespace)?;
            (c.trim() == comm).then(|| p.parse().ok())?
        }) {
            return child;
        }
        assert!(
            Instant::now() < deadline,
            "no {comm} child of {pid}: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Real PID namespaces as runc makes them: the container's process is PID 1 of a new namespace
/// and its parent (here `unshare`, in the node's place the shim) sits outside the container's
/// cgroup. The agent finds each container's top process and reads its status: a plain `sleep`
/// has no SIGTERM handler (unprotected), a shell that traps TERM has one; a process in the
/// agent's own PID namespace (the zombie parent) is not a namespace init.
#[test]
fn live_container_pid1s_and_their_sigterm_handlers() {
    let (uid, cid_sleep, top) = ids();
    let (_, cid_trap, _) = ids();
    let pod_rel = format!("{top}/kubepods/besteffort/pod{uid}");
    let pids_root = Path::new(CGROUP_ROOT).join("pids");
    let pod_tree = CgroupTree::create(&pids_root, &pod_rel);
    let sleep_tree = CgroupTree::create(pod_tree.leaf(), &cid_sleep);
    let trap_tree = CgroupTree::create(pod_tree.leaf(), &cid_trap);
    let (_, cid_host, _) = ids();
    let host_tree = CgroupTree::create(pod_tree.leaf(), &cid_host);
    let work = tempfile::tempdir().unwrap();

    let unshare = |argv: &[&str]| {
        Reaped(
            Command::new("unshare")
                .args(["--pid", "--kill-child"])
                .args(argv)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let sleep_ns = unshare(&["sleep", "600"]);
    let sleep_pid = child_named(sleep_ns.0.id(), "sleep");
    fs::write(
        sleep_tree.leaf().join("cgroup.procs"),
        sleep_pid.to_string(),
    )
    .unwrap();
    let trap_ns = unshare(&[
        "/bin/sh",
        "-c",
        "trap 'exit 0' TERM; while :; do sleep 1; done",
    ]);
    let trap_pid = child_named(trap_ns.0.id(), "sh");
    fs::write(trap_tree.leaf().join("cgroup.procs"), trap_pid.to_string()).unwrap();
    let host = zombie_parent(&[host_tree.leaf()], 2, work.path());
    // The trap is set once the shell runs its loop (a `sleep 1` child exists).
    child_named(trap_pid, "sleep");

    let scan = scan::scan(Path::new("/proc"), Path::new(CGROUP_ROOT)).unwrap();
    let find = |cid: &str| {
        scan.tops
            .iter()
            .find(|t| t.container_id == cid)
            .unwrap_or_else(|| panic!("no top process in {cid}: {:#?}", scan.tops))
    };
    let s = find(&cid_sleep);
    assert_eq!(
        (s.pod_uid.as_str(), s.pid, s.comm.as_str()),
        (uid.as_str(), sleep_pid as i32, "sleep")
    );
    assert!(s.status.is_namespace_init(), "{:?}", s.status);
    assert!(!s.status.handles_sigterm());
    let t = find(&cid_trap);
    assert_eq!((t.pid, t.comm.as_str()), (trap_pid as i32, "sh"));
    assert!(
        t.status.is_namespace_init() && t.status.handles_sigterm(),
        "{:?}",
        t.status
    );
    let h = find(&cid_host);
    assert_eq!((h.pid, h.comm.as_str()), (host.0.id() as i32, PARENT_COMM));
    assert!(h.status.in_reader_namespace() && !h.status.is_namespace_init());
    assert_eq!((h.children, h.zombies), (2, 2));
    assert_eq!(h.zombie_comms, [("sh".to_string(), 2)].into());

    let spec = report::build_spec(&ReportInput {
        node_name: "live",
        scan: &scan,
        first_seen: &FirstSeen::default(),
        index: &PodIndex::default(),
        now: Instant::now(),
        observed_at: None,
    });
    let ours: Vec<(&str, bool)> = spec
        .pid1s
        .iter()
        .filter(|c| c.pod_uid == uid)
        .map(|c| (c.comm.as_str(), c.unprotected()))
        .collect();
    assert_eq!(ours.len(), 3, "{:#?}", spec.pid1s);
    assert_eq!(ours[0], ("sleep", true), "unprotected first: {ours:?}");
    assert!(ours[1..].iter().all(|(_, u)| !u), "{ours:?}");
    drop((sleep_ns, trap_ns, host));
    drop((sleep_tree, trap_tree, host_tree, pod_tree));
}
