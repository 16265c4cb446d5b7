//! The agent's Prometheus metric families and how a scan updates them.
//!
//! Pods and containers not (yet) known by name are labelled `namespace=""`, `pod=<pod UID>`,
//! `container=<container ID>`; zombies in a pod's own cgroup (outside any container) carry
//! `container=""`. Series of containers without zombies and of pods gone from the node are removed.
//! `reaper_agent_pid1_info` has one series per container (pod sandboxes left out), removed when
//! the container goes or its labels change.

use super::report::{self, PodIndex};
use super::scan::Scan;
use crate::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ContainerLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
}

/// A container's top process: `init` is the known init it is (empty for any other program),
/// `handles_sigterm` and `pid1` are `true` or `false`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct Pid1Labels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub comm: String,
    pub init: String,
    pub handles_sigterm: String,
    pub pid1: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Default)]
struct Seen {
    containers: HashSet<ContainerLabels>,
    pods: HashSet<PodLabels>,
    limits: HashSet<PodLabels>,
    pid1s: HashSet<Pid1Labels>,
}

/// Handles to every agent metric.
#[derive(Clone)]
pub struct AgentMetrics {
    pub zombie_processes: Family<ContainerLabels, Gauge>,
    pub pod_pids: Family<PodLabels, Gauge>,
    pub pod_pids_limit: Family<PodLabels, Gauge>,
    pub pid1_info: Family<Pid1Labels, Gauge>,
    pub node_pid_max: Gauge,
    pub node_processes: Gauge,
    pub node_zombies: Gauge,
    pub scan_duration: Histogram,
    pub scan_errors: Family<KindLabels, Counter>,
    pub report_writes: Family<ResultLabels, Counter>,
    seen: Arc<Mutex<Seen>>,
}

impl AgentMetrics {
    /// Create and register the families.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self {
            zombie_processes: Family::default(),
            pod_pids: Family::default(),
            pod_pids_limit: Family::default(),
            pid1_info: Family::default(),
            node_pid_max: Gauge::default(),
            node_processes: Gauge::default(),
            node_zombies: Gauge::default(),
            // 1 ms .. ~16 s
            scan_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            scan_errors: Family::default(),
            report_writes: Family::default(),
            seen: Arc::default(),
        };
        metrics.register(|r| {
            r.register(
                "reaper_agent_zombie_processes",
                "Zombie processes per container (pod and container labels fall back to UID/ID until the pod is known)",
                m.zombie_processes.clone(),
            );
            r.register(
                "reaper_agent_pod_pids",
                "Tasks in use by the pod (pids.current of its cgroup; zombies count)",
                m.pod_pids.clone(),
            );
            r.register(
                "reaper_agent_pod_pids_limit",
                "pids.max of the pod cgroup (absent when unlimited)",
                m.pod_pids_limit.clone(),
            );
            r.register(
                "reaper_agent_pid1_info",
                "1 per container: its top process's comm, the known init it is (init, empty for \
                 none), whether it takes SIGTERM (a known init, a handler, or blocked for a signalfd), and whether it is PID 1 of its PID \
                 namespace (false: hostPID, or the pod shares one namespace under pause)",
                m.pid1_info.clone(),
            );
            r.register(
                "reaper_node_pid_max",
                "The node's kernel.pid_max",
                m.node_pid_max.clone(),
            );
            r.register(
                "reaper_node_processes",
                "Processes on the node, zombies and kernel threads included",
                m.node_processes.clone(),
            );
            r.register(
                "reaper_node_zombies",
                "Zombie processes on the node, in pods or not",
                m.node_zombies.clone(),
            );
            r.register(
                "reaper_agent_scan_duration_seconds",
                "Time one /proc scan takes",
                m.scan_duration.clone(),
            );
            r.register(
                "reaper_agent_scan_errors",
                "Files skipped during scans, by kind (vanished, unreadable, malformed)",
                m.scan_errors.clone(),
            );
            r.register(
                "reaper_agent_report_writes",
                "ZombieReport server-side applies, by result (applied, error)",
                m.report_writes.clone(),
            );
        });
        m
    }

    /// Set every gauge from a scan and drop series that no longer exist.
    pub fn update(&self, scan: &Scan, index: &PodIndex) {
        self.node_pid_max.set(scan.pid_max.map_or(0, |v| v as i64));
        self.node_processes.set(scan.processes as i64);
        self.node_zombies.set(scan.zombies.len() as i64);
        for (kind, n) in scan.errors.by_kind() {
            if n > 0 {
                self.scan_errors
                    .get_or_create(&KindLabels {
                        kind: kind.to_string(),
                    })
                    .inc_by(n);
            }
        }

        let (containers, pods, limits) = series(scan, index);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for (labels, n) in &containers {
            self.zombie_processes.get_or_create(labels).set(*n);
        }
        for gone in seen
            .containers
            .iter()
            .filter(|l| !containers.contains_key(*l))
        {
            self.zombie_processes.remove(gone);
        }
        seen.containers = containers.into_keys().collect();

        for (labels, n) in &pods {
            self.pod_pids.get_or_create(labels).set(*n);
        }
        for gone in seen.pods.iter().filter(|l| !pods.contains_key(*l)) {
            self.pod_pids.remove(gone);
        }
        seen.pods = pods.into_keys().collect();

        for (labels, n) in &limits {
            self.pod_pids_limit.get_or_create(labels).set(*n);
        }
        for gone in seen.limits.iter().filter(|l| !limits.contains_key(*l)) {
            self.pod_pids_limit.remove(gone);
        }
        seen.limits = limits.into_keys().collect();

        let pid1s = pid1_series(scan, index);
        for labels in &pid1s {
            self.pid1_info.get_or_create(labels).set(1);
        }
        for gone in seen.pid1s.iter().filter(|l| !pid1s.contains(*l)) {
            self.pid1_info.remove(gone);
        }
        seen.pid1s = pid1s;
    }
}

type Series<L> = BTreeMap<L, i64>;

/// One `reaper_agent_pid1_info` series per container top process, sandboxes left out.
fn pid1_series(scan: &Scan, index: &PodIndex) -> HashSet<Pid1Labels> {
    scan.tops
        .iter()
        .filter(|t| !report::is_sandbox(t, index))
        .map(|t| {
            let c = report::container_init(t, index);
            Pid1Labels {
                namespace: c.namespace.unwrap_or_default(),
                pod: c.pod.unwrap_or(c.pod_uid),
                container: c.container.unwrap_or(c.container_id),
                comm: c.comm,
                init: c.init.unwrap_or_default(),
                handles_sigterm: c.handles_sigterm.to_string(),
                pid1: c.pid1.to_string(),
            }
        })
        .collect()
}

/// The per-container and per-pod series a scan stands for.
fn series(
    scan: &Scan,
    index: &PodIndex,
) -> (
    Series<ContainerLabels>,
    Series<PodLabels>,
    Series<PodLabels>,
) {
    let pod_labels = |uid: &str| match index.pod(uid) {
        Some(p) => PodLabels {
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
        },
        None => PodLabels {
            namespace: String::new(),
            pod: uid.to_string(),
        },
    };
    let mut containers = Series::new();
    for z in &scan.zombies {
        let Some(uid) = z.pod_uid.as_deref() else {
            continue;
        };
        let cid = z.container_id.as_deref().unwrap_or("");
        let labels = match index.container(cid) {
            Some(c) => ContainerLabels {
                namespace: c.pod.namespace.clone(),
                pod: c.pod.name.clone(),
                container: c.container.clone(),
            },
            None => {
                let p = pod_labels(uid);
                ContainerLabels {
                    namespace: p.namespace,
                    pod: p.pod,
                    container: cid.to_string(),
                }
            }
        };
        *containers.entry(labels).or_default() += 1;
    }
    let mut pods = Series::new();
    let mut limits = Series::new();
    for (uid, usage) in &scan.pods {
        let Some(pids) = usage.pids else { continue };
        let labels = pod_labels(uid);
        pods.insert(labels.clone(), pids.current as i64);
        if let Some(limit) = pids.limit {
            limits.insert(labels, limit as i64);
        }
    }
    (containers, pods, limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::procfs::Status;
    use crate::agent::scan::{ContainerTop, Parent, Pids, PodUsage, Zombie};

    fn z(pid: i32, uid: &str, cid: &str) -> Zombie {
        Zombie {
            pid,
            starttime: 1,
            comm: "x".into(),
            parent: Some(Parent {
                pid: 1,
                comm: "p".into(),
            }),
            pod_uid: Some(uid.into()),
            container_id: Some(cid.into()),
        }
    }

    #[test]
    fn series_appear_and_disappear() {
        let metrics = Metrics::new();
        let m = AgentMetrics::register(&metrics);
        let mut scan = Scan {
            pid_max: Some(32768),
            processes: 10,
            zombies: vec![
                z(5, "uid-a", "c1"),
                z(6, "uid-a", "c1"),
                z(7, "uid-b", "c2"),
            ],
            pods: [(
                "uid-a".to_string(),
                PodUsage {
                    processes: 3,
                    pids: Some(Pids {
                        current: 5,
                        limit: Some(64),
                    }),
                },
            )]
            .into(),
            ..Default::default()
        };
        scan.errors.vanished = 2;
        m.update(&scan, &PodIndex::default());
        let text = metrics.encode();
        for line in [
            r#"reaper_agent_zombie_processes{namespace="",pod="uid-a",container="c1"} 2"#,
            r#"reaper_agent_zombie_processes{namespace="",pod="uid-b",container="c2"} 1"#,
            r#"reaper_agent_pod_pids{namespace="",pod="uid-a"} 5"#,
            r#"reaper_agent_pod_pids_limit{namespace="",pod="uid-a"} 64"#,
            "reaper_node_pid_max 32768",
            "reaper_node_processes 10",
            "reaper_node_zombies 3",
            r#"reaper_agent_scan_errors_total{kind="vanished"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        scan.zombies.truncate(2);
        scan.pods.clear();
        scan.errors = Default::default();
        m.update(&scan, &PodIndex::default());
        let text = metrics.encode();
        assert!(!text.contains(r#"pod="uid-b""#), "{text}");
        assert!(!text.contains("reaper_agent_pod_pids{"), "{text}");
        assert!(!text.contains("reaper_agent_pod_pids_limit{"), "{text}");
        assert!(text.contains(r#"reaper_agent_scan_errors_total{kind="vanished"} 2"#));
    }

    fn top(cid: &str, comm: &str, sig_cgt: u64) -> ContainerTop {
        ContainerTop {
            pod_uid: "uid-a".into(),
            container_id: cid.into(),
            pid: 10,
            comm: comm.into(),
            status: Status {
                ns_pid: Some((1, 2)),
                sig_blk: 0,
                sig_ign: 0,
                sig_cgt,
            },
            children: 0,
            zombies: 0,
            zombie_comms: Default::default(),
        }
    }

    #[test]
    fn one_pid1_series_per_container_sandboxes_left_out() {
        let metrics = Metrics::new();
        let m = AgentMetrics::register(&metrics);
        let mut scan = Scan {
            tops: vec![
                top("c1", "sleep", 0),
                top("c2", "reaper", 1 << 14),
                top("sandbox", "pause", 1 << 14),
            ],
            ..Default::default()
        };
        m.update(&scan, &PodIndex::default());
        let text = metrics.encode();
        for line in [
            r#"reaper_agent_pid1_info{namespace="",pod="uid-a",container="c1",comm="sleep",init="",handles_sigterm="false",pid1="true"} 1"#,
            r#"reaper_agent_pid1_info{namespace="",pod="uid-a",container="c2",comm="reaper",init="reaper",handles_sigterm="true",pid1="true"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(!text.contains(r#"comm="pause""#), "{text}");
        // c1 wrapped (a new container): the old series goes.
        scan.tops.remove(0);
        m.update(&scan, &PodIndex::default());
        let text = metrics.encode();
        assert!(!text.contains(r#"container="c1""#), "{text}");
        assert!(text.contains(r#"container="c2""#), "{text}");
    }
}
