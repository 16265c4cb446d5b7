//! The agent's scan over hand-made /proc trees (tests/fixtures/proc/*): every supported cgroup
//! layout, hostile names and broken files, checked down to the report the agent would publish.

use k8s_openapi::api::core::v1::Pod;
use reaper::agent::report::{self, FirstSeen, PodIndex, ReportInput};
use reaper::agent::scan::{self, Parent, Pids, Scan, ScanErrors};
use reaper::crd::{PodPids, ZombieParent, ZombieReportSpec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const A: &str = "0f3c5a2e-7b1d-4c9e-8a6f-1d2e3f4a5b6c";
const B: &str = "5e1d9c7a-2b3f-4a6e-9c8d-7f6e5d4c3b2a";
const C: &str = "a1b2c3d4-e5f6-4789-8abc-def012345678";
const D: &str = "d4c3b2a1-0f9e-4d8c-b7a6-958473625140";
const HASH: &str = "6b4ee2a7e4e0a3e0d6a4c2c7c5d0e8b1";
const MIRROR: &str = "99999999-8888-7777-6666-555555555555";

fn cid(digit: char, pair: &str) -> String {
    format!("{}{}", digit.to_string().repeat(8), pair.repeat(28))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/proc")
        .join(name)
}

fn scan_fixture(name: &str) -> Scan {
    let dir = fixture(name);
    scan::scan(&dir.join("proc"), &dir.join("cgroup")).unwrap()
}

fn spec(scan: &Scan, index: &PodIndex) -> ZombieReportSpec {
    let now = Instant::now();
    let mut fs = FirstSeen::default();
    fs.update(&scan.zombies, now);
    report::build_spec(&ReportInput {
        node_name: "fixture-node",
        scan,
        first_seen: &fs,
        index,
        now,
        observed_at: None,
    })
}

fn parent(pid: i32, comm: &str, count: u32) -> ZombieParent {
    ZombieParent {
        pid,
        comm: comm.into(),
        count,
        oldest_age_seconds: 0,
    }
}

#[test]
fn v1_cgroupfs_containerd_crio_docker() {
    let scan = scan_fixture("v1-cgroupfs");
    assert_eq!(scan.pid_max, Some(32768));
    assert_eq!(
        scan.processes, 18,
        "601 (garbage stat) and 600 (vanished) are not counted"
    );
    assert_eq!(scan.kernel_threads, 2);
    assert_eq!(
        scan.errors,
        ScanErrors {
            vanished: 1,
            unreadable: 0,
            malformed: 3
        },
        "java's status is garbage"
    );
    let pids: Vec<i32> = scan.zombies.iter().map(|z| z.pid).collect();
    assert_eq!(pids, [201, 202, 203, 211, 401, 500, 700]);
    // A v1 zombie reads `/`: attributed through its parent, whose hostile comm survives.
    let z = &scan.zombies[0];
    assert_eq!(z.pod_uid.as_deref(), Some(A));
    assert_eq!(z.container_id.as_deref(), Some(cid('1', "a1").as_str()));
    assert_eq!(
        z.parent,
        Some(Parent {
            pid: 200,
            comm: "my app) (x".into()
        })
    );
    let orphan = scan.zombies.iter().find(|z| z.pid == 700).unwrap();
    assert_eq!(
        (orphan.parent.clone(), orphan.pod_uid.clone()),
        (None, None)
    );

    assert_eq!(scan.pods.len(), 3);
    assert_eq!(scan.pods[A].processes, 3);
    assert_eq!(
        scan.pods[A].pids,
        Some(Pids {
            current: 7,
            limit: Some(1024)
        })
    );
    assert_eq!(
        scan.pods[C].pids,
        Some(Pids {
            current: 2,
            limit: None
        })
    );

    let spec = spec(&scan, &PodIndex::default());
    assert_eq!(spec.zombies, 7);
    assert_eq!(spec.unattributed_zombies, 2);
    assert_eq!(spec.containers.len(), 2);
    let a = &spec.containers[0];
    assert_eq!((a.pod_uid.as_str(), a.count), (A, 4));
    assert_eq!(
        a.parents,
        [parent(200, "my app) (x", 3), parent(210, "worker", 1)]
    );
    let c = &spec.containers[1];
    assert_eq!(
        (c.pod_uid.as_str(), c.container_id.as_str()),
        (C, cid('3', "c3").as_str())
    );
    assert_eq!(c.parents, [parent(400, "java", 1)]);
    assert_eq!(
        spec.pods,
        [
            PodPids {
                pod_uid: A.into(),
                namespace: None,
                pod: None,
                current: 7,
                limit: Some(1024),
                zombies: 4
            },
            // No zombies, but 95 of 100 tasks.
            PodPids {
                pod_uid: B.into(),
                namespace: None,
                pod: None,
                current: 95,
                limit: Some(100),
                zombies: 0
            },
            PodPids {
                pod_uid: C.into(),
                namespace: None,
                pod: None,
                current: 2,
                limit: None,
                zombies: 1
            },
        ]
    );
}

fn fixture_pods() -> Vec<Pod> {
    let text = std::fs::read_to_string(fixture("v2-systemd").join("pods.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn v2_systemd_every_runtime_with_names() {
    let scan = scan_fixture("v2-systemd");
    assert_eq!((scan.processes, scan.kernel_threads), (18, 1));
    assert_eq!(scan.errors.total(), 0, "{:?}", scan.errors);
    assert_eq!(scan.zombies.len(), 8);
    // The private-namespace path (`/../../...`) still finds the pod's pids files.
    assert_eq!(
        scan.pods[D].pids,
        Some(Pids {
            current: 9,
            limit: Some(10)
        })
    );
    // The static pod's cgroup carries its config hash.
    assert_eq!(scan.pods[HASH].processes, 2);
    // conmon's zombie belongs to the pod, not to a container.
    let conmon_child = scan.zombies.iter().find(|z| z.pid == 210).unwrap();
    assert_eq!(
        (
            conmon_child.pod_uid.as_deref(),
            conmon_child.container_id.as_deref()
        ),
        (Some(B), None)
    );

    let pods = fixture_pods();
    let index = PodIndex::from_pods(&pods);
    let spec = spec(&scan, &index);
    assert_eq!((spec.zombies, spec.unattributed_zombies), (8, 1));
    let by_id = |id: &str| {
        spec.containers
            .iter()
            .find(|c| c.container_id == id)
            .unwrap_or_else(|| panic!("no container {id} in {:#?}", spec.containers))
    };
    let web = by_id(&cid('1', "a1"));
    assert_eq!(web.count, 2);
    assert_eq!(
        (
            web.namespace.as_deref(),
            web.pod.as_deref(),
            web.container.as_deref()
        ),
        (Some("shop"), Some("web-0"), Some("app"))
    );
    assert_eq!(web.parents, [parent(100, "python3", 2)]);
    // An ephemeral container, named from ephemeralContainerStatuses.
    let dbg = by_id(&cid('2', "b2"));
    assert_eq!(dbg.container.as_deref(), Some("debugger"));
    assert_eq!(dbg.parents, [parent(201, "bash", 1)]);
    // docker scope in a guaranteed pod, unknown to the index.
    let redis = by_id(&cid('3', "c3"));
    assert_eq!((redis.pod_uid.as_str(), redis.pod.as_deref()), (C, None));
    assert_eq!(redis.parents, [parent(300, "redis-server", 1)]);
    assert_eq!(by_id(&cid('4', "d4")).pod_uid, D);
    // The static pod: its cgroup says the config hash, the report says the mirror pod's uid.
    let etcd = by_id(&cid('5', "e5"));
    assert_eq!(
        (etcd.pod_uid.as_str(), etcd.pod.as_deref()),
        (MIRROR, Some("etcd-node1"))
    );

    let summary: Vec<(&str, u64, Option<u64>, u32)> = spec
        .pods
        .iter()
        .map(|p| (p.pod_uid.as_str(), p.current, p.limit, p.zombies))
        .collect();
    assert_eq!(
        summary,
        [
            (A, 4, Some(512), 2),
            (B, 4, None, 2),
            (MIRROR, 2, None, 1),
            (C, 2, Some(2), 1),
            (D, 9, Some(10), 1),
        ]
    );
}

#[test]
fn v1_systemd_docker_pod_at_its_limit() {
    let scan = scan_fixture("v1-systemd");
    let spec = spec(&scan, &PodIndex::default());
    assert_eq!(spec.processes, 7);
    assert_eq!(spec.containers.len(), 1);
    let c = &spec.containers[0];
    assert_eq!(
        (c.pod_uid.as_str(), c.container_id.as_str(), c.count),
        (A, cid('1', "a1").as_str(), 4)
    );
    assert_eq!(c.parents, [parent(100, "node", 4)]);
    assert_eq!(
        spec.pods,
        [PodPids {
            pod_uid: A.into(),
            namespace: None,
            pod: None,
            current: 5,
            limit: Some(5),
            zombies: 4
        }]
    );
}

#[test]
fn rescans_age_zombies_without_changing_content() {
    let scan1 = scan_fixture("v1-cgroupfs");
    let scan2 = scan_fixture("v1-cgroupfs");
    assert_eq!(scan1, scan2);
    let t0 = Instant::now();
    let mut fs = FirstSeen::default();
    fs.update(&scan1.zombies, t0);
    let later = t0 + Duration::from_secs(90);
    fs.update(&scan2.zombies, later);
    let index = PodIndex::default();
    let input = |scan, now| ReportInput {
        node_name: "n",
        scan,
        first_seen: &fs,
        index: &index,
        now,
        observed_at: None,
    };
    let first = report::build_spec(&input(&scan1, t0));
    let second = report::build_spec(&input(&scan2, later));
    assert_eq!(second.containers[0].oldest_age_seconds, 90);
    assert_eq!(second.containers[0].parents[0].oldest_age_seconds, 90);
    assert!(report::same_content(&first, &second));
}

/// The top process of each container (parent outside the container: the shim, conmon, dockerd)
/// and what its `status` says; only their `status` files exist in the trees, so reading any other
/// process's would show up as an error.
#[test]
fn container_tops_and_their_pid1_evidence() {
    let tops = |scan: &Scan| -> Vec<(String, i32, String, u32, u32)> {
        scan.tops
            .iter()
            .map(|t| {
                (
                    t.pod_uid.clone(),
                    t.pid,
                    t.comm.clone(),
                    t.children,
                    t.zombies,
                )
            })
            .collect()
    };
    let v1 = scan_fixture("v1-cgroupfs");
    // worker (210) is a child of 200 in the same container; conmon (301) is in no container;
    // java (400) is a top process with a garbage status (counted as malformed, left out).
    assert_eq!(
        tops(&v1),
        [
            (A.into(), 200, "my app) (x".into(), 4, 3),
            (A.into(), 220, "pause".into(), 0, 0),
            (B.into(), 300, "nginx".into(), 0, 0),
        ]
    );
    assert_eq!(v1.tops[0].zombie_comms, [("sh".to_string(), 3)].into());
    let report = spec(&v1, &PodIndex::default());
    // The sandbox is left out of the report.
    let pid1s: Vec<(&str, Option<&str>, bool, bool)> = report
        .pid1s
        .iter()
        .map(|c| {
            (
                c.comm.as_str(),
                c.init.as_deref(),
                c.pid1,
                c.handles_sigterm,
            )
        })
        .collect();
    assert_eq!(
        pid1s,
        [
            ("my app) (x", None, true, false),
            ("nginx", None, true, true)
        ]
    );
    assert!(report.pid1s[0].unprotected() && !report.pid1s[1].unprotected());
    assert_eq!(report.pid1s[0].zombie_comms[0].comm, "sh");

    let v1s = scan_fixture("v1-systemd");
    assert_eq!(tops(&v1s), [(A.into(), 100, "node".into(), 4, 4)]);
    assert_eq!(v1s.errors.total(), 0);

    let v2 = scan_fixture("v2-systemd");
    assert_eq!(v2.errors.total(), 0, "{:?}", v2.errors);
    let index = PodIndex::from_pods(&fixture_pods());
    let report = spec(&v2, &index);
    let by_comm = |comm: &str| report.pid1s.iter().find(|c| c.comm == comm).unwrap();
    // bash ignores SIGTERM (SigIgn): no handler, the grace period is waited out.
    let bash = by_comm("bash");
    assert!(bash.unprotected(), "{bash:?}");
    assert_eq!(bash.container.as_deref(), Some("debugger"));
    let python = by_comm("python3");
    assert!(python.unprotected());
    assert_eq!(
        (
            python.namespace.as_deref(),
            python.pod.as_deref(),
            python.zombies
        ),
        (Some("shop"), Some("web-0"), 2)
    );
    let redis = by_comm("redis-server");
    assert_eq!((redis.pid1, redis.protected_by()), (false, Some("pause")));
    let node = by_comm("node");
    assert!(node.host_pid && !node.pid1 && !node.unprotected());
    let etcd = by_comm("etcd");
    assert_eq!(etcd.pod_uid, MIRROR);
    assert!(etcd.handles_sigterm && !etcd.unprotected() && etcd.protected_by().is_none());
    // Unprotected ones first.
    assert!(report.pid1s[0].unprotected() && report.pid1s[1].unprotected());
    assert_eq!(report.pid1s.len(), 5);
}

/// The binary's `--once --output json` over a fixture: the object as it would be applied.
#[test]
fn once_output_json_over_a_fixture() {
    let dir = fixture("v1-cgroupfs");
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_reaper-controller"))
        .args([
            "agent",
            "--once",
            "--output",
            "json",
            "--node-name",
            "fixture-node",
        ])
        .arg("--proc-root")
        .arg(dir.join("proc"))
        .arg("--cgroup-root")
        .arg(dir.join("cgroup"))
        // No cluster: nothing to find, so names and ownerReference are left out.
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["apiVersion"], "reaper.dev/v1alpha1");
    assert_eq!(v["kind"], "ZombieReport");
    assert_eq!(v["metadata"]["name"], "fixture-node");
    assert!(v["metadata"].get("ownerReferences").is_none());
    let spec: ZombieReportSpec = serde_json::from_value(v["spec"].clone()).unwrap();
    assert!(spec.observed_at.is_some());
    let expected = {
        let scan = scan_fixture("v1-cgroupfs");
        spec_for(&scan)
    };
    assert!(report::same_content(&spec, &expected), "{spec:#?}");
    assert_eq!(
        v["spec"]["containers"][0]["parents"][0]["comm"],
        "my app) (x"
    );
}

fn spec_for(scan: &Scan) -> ZombieReportSpec {
    spec(scan, &PodIndex::default())
}
