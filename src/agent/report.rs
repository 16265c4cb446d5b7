//! From a scan to a `ZombieReport` spec: pure functions over the scan, the first-seen tracker
//! and the index of this node's pods.

use super::scan::{ContainerTop, Scan, Zombie};
use crate::crd::{
    CommCount, ContainerInit, ContainerZombies, PodPids, ZombieParent, ZombieReportSpec,
};
use crate::webhook::argv::{PAUSE_COMM, known_init_comm};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::keys::ANNOTATION_CONFIG_HASH;

/// Names of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    /// `metadata.uid`.
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

/// Names of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerName {
    pub pod: PodName,
    pub container: String,
}

/// Container ID → names, pod cgroup UID → names, for the pods on this node.
#[derive(Debug, Clone, Default)]
pub struct PodIndex {
    pods: HashMap<String, PodName>,
    containers: HashMap<String, ContainerName>,
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`.
pub fn bare_container_id(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, bare)| bare)
}

impl PodIndex {
    /// Index pods (normally the reflector's store over `spec.nodeName=<node>`). Regular, init
    /// and ephemeral container statuses all map their runtime ID to the container's name.
    pub fn from_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Self {
        let mut index = Self::default();
        for pod in pods {
            let meta = &pod.metadata;
            let (Some(uid), Some(namespace), Some(name)) = (&meta.uid, &meta.namespace, &meta.name)
            else {
                continue;
            };
            let names = PodName {
                uid: uid.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
            };
            index.pods.insert(uid.clone(), names.clone());
            if let Some(hash) = meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_CONFIG_HASH))
            {
                index.pods.insert(hash.clone(), names.clone());
            }
            let Some(status) = &pod.status else { continue };
            let statuses: [&Option<Vec<ContainerStatus>>; 3] = [
                &status.container_statuses,
                &status.init_container_statuses,
                &status.ephemeral_container_statuses,
            ];
            for cs in statuses.into_iter().flatten().flatten() {
                if let Some(id) = cs.container_id.as_deref().map(bare_container_id)
                    && !id.is_empty()
                {
                    index.containers.insert(
                        id.to_string(),
                        ContainerName {
                            pod: names.clone(),
                            container: cs.name.clone(),
                        },
                    );
                }
            }
        }
        index
    }

    /// The pod whose cgroup carries this UID (its `metadata.uid`, or a static pod's config hash).
    pub fn pod(&self, cgroup_uid: &str) -> Option<&PodName> {
        self.pods.get(cgroup_uid)
    }

    /// The container with this bare runtime ID.
    pub fn container(&self, id: &str) -> Option<&ContainerName> {
        self.containers.get(id)
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

/// When each zombie was first seen. A zombie is `(pid, starttime)`: a reused pid is a new one.
#[derive(Debug, Clone, Default)]
pub struct FirstSeen {
    seen: HashMap<(i32, u64), Instant>,
}

impl FirstSeen {
    /// Record this scan's zombies at `now` and forget the ones that are gone.
    pub fn update(&mut self, zombies: &[Zombie], now: Instant) {
        let mut next = HashMap::with_capacity(zombies.len());
        for z in zombies {
            let key = (z.pid, z.starttime);
            next.insert(key, self.seen.get(&key).copied().unwrap_or(now));
        }
        self.seen = next;
    }

    /// How long this zombie has been seen (zero if never).
    pub fn age(&self, z: &Zombie, now: Instant) -> Duration {
        self.seen
            .get(&(z.pid, z.starttime))
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t))
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Pods at or above this fraction of their `pids.max` are listed in a report even without zombies.
pub const NEAR_LIMIT_RATIO: f64 = 0.8;

/// Everything a report is made of.
pub struct ReportInput<'a> {
    pub node_name: &'a str,
    pub scan: &'a Scan,
    pub first_seen: &'a FirstSeen,
    pub index: &'a PodIndex,
    /// The instant of the scan (ages are measured to it).
    pub now: Instant,
    pub observed_at: Option<Time>,
}

/// The names a zombie's pod and container are known by: (pod UID as reported, namespace, pod,
/// container). The pod UID is the API's `metadata.uid` once the pod is known (static pods'
/// cgroups carry the config hash instead).
fn names<'a>(
    index: &'a PodIndex,
    cgroup_uid: &'a str,
    container_id: Option<&str>,
) -> (&'a str, Option<&'a PodName>, Option<&'a str>) {
    let by_container = container_id.and_then(|id| index.container(id));
    let pod = by_container
        .map(|c| &c.pod)
        .or_else(|| index.pod(cgroup_uid));
    let uid = pod.map_or(cgroup_uid, |p| p.uid.as_str());
    (uid, pod, by_container.map(|c| c.container.as_str()))
}

#[derive(Default)]
struct ParentAgg {
    comm: String,
    count: u32,
    oldest: Duration,
}

#[derive(Default)]
struct ContainerAgg {
    count: u32,
    oldest: Duration,
    parents: BTreeMap<i32, ParentAgg>,
}

/// Build the spec of this node's `ZombieReport`.
pub fn build_spec(input: &ReportInput<'_>) -> ZombieReportSpec {
    let ReportInput {
        node_name,
        scan,
        first_seen,
        index,
        now,
        ..
    } = input;
    let mut containers: BTreeMap<(&str, &str), ContainerAgg> = BTreeMap::new();
    let mut pod_zombies: HashMap<&str, u32> = HashMap::new();
    let mut unattributed = 0u64;
    for z in &scan.zombies {
        let Some(uid) = z.pod_uid.as_deref() else {
            unattributed += 1;
            continue;
        };
        *pod_zombies.entry(uid).or_default() += 1;
        let Some(cid) = z.container_id.as_deref() else {
            continue;
        };
        let age = first_seen.age(z, *now);
        let c = containers.entry((uid, cid)).or_default();
        c.count += 1;
        c.oldest = c.oldest.max(age);
        let (ppid, pcomm) = z
            .parent
            .as_ref()
            .map_or((0, ""), |p| (p.pid, p.comm.as_str()));
        let p = c.parents.entry(ppid).or_default();
        p.comm = pcomm.to_string();
        p.count += 1;
        p.oldest = p.oldest.max(age);
    }

    let mut container_list: Vec<ContainerZombies> = containers
        .into_iter()
        .map(|((cgroup_uid, cid), agg)| {
            let (uid, pod, container) = names(index, cgroup_uid, Some(cid));
            let mut parents: Vec<ZombieParent> = agg
                .parents
                .into_iter()
                .map(|(pid, p)| ZombieParent {
                    pid,
                    comm: p.comm,
                    count: p.count,
                    oldest_age_seconds: p.oldest.as_secs(),
                })
                .collect();
            parents.sort_by_key(|p| (Reverse(p.count), p.pid));
            parents.truncate(crate::crd::MAX_PARENTS);
            ContainerZombies {
                pod_uid: uid.to_string(),
                container_id: cid.to_string(),
                namespace: pod.map(|p| p.namespace.clone()),
                pod: pod.map(|p| p.name.clone()),
                container: container.map(str::to_string),
                count: agg.count,
                oldest_age_seconds: agg.oldest.as_secs(),
                parents,
            }
        })
        .collect();
    container_list.sort_by(|a, b| {
        (Reverse(a.count), &a.pod_uid, &a.container_id).cmp(&(
            Reverse(b.count),
            &b.pod_uid,
            &b.container_id,
        ))
    });

    let mut pods: Vec<PodPids> = scan
        .pods
        .iter()
        .filter_map(|(cgroup_uid, usage)| {
            let zombies = pod_zombies.get(cgroup_uid.as_str()).copied().unwrap_or(0);
            let near = usage.pids.is_some_and(|p| {
                p.limit
                    .is_some_and(|l| p.current as f64 >= l as f64 * NEAR_LIMIT_RATIO)
            });
            if zombies == 0 && !near {
                return None;
            }
            let (uid, pod, _) = names(index, cgroup_uid, None);
            Some(PodPids {
                pod_uid: uid.to_string(),
                namespace: pod.map(|p| p.namespace.clone()),
                pod: pod.map(|p| p.name.clone()),
                current: usage.pids.map_or(usage.processes, |p| p.current),
                limit: usage.pids.and_then(|p| p.limit),
                zombies,
            })
        })
        .collect();
    // Bounded, so one node cannot grow its report without limit: the most zombies first, the
    // rest counted.
    let truncated_containers = container_list
        .len()
        .saturating_sub(crate::crd::MAX_CONTAINERS);
    container_list.truncate(crate::crd::MAX_CONTAINERS);
    pods.sort_by(|a, b| (Reverse(a.zombies), &a.pod_uid).cmp(&(Reverse(b.zombies), &b.pod_uid)));
    let truncated_pods = pods.len().saturating_sub(crate::crd::MAX_PODS);
    pods.truncate(crate::crd::MAX_PODS);
    pods.sort_by(|a, b| a.pod_uid.cmp(&b.pod_uid));
    let (pid1s, truncated_pid1s) = pid1s(scan, index);

    ZombieReportSpec {
        node_name: node_name.to_string(),
        observed_at: input.observed_at.clone(),
        pid_max: scan.pid_max.unwrap_or(0),
        processes: scan.processes,
        zombies: scan.zombies.len() as u64,
        unattributed_zombies: unattributed,
        containers: container_list,
        truncated_containers: truncated_containers as u32,
        pods,
        truncated_pods: truncated_pods as u32,
        pid1s,
        truncated_pid1s,
    }
}

/// Whether a top process is a pod's sandbox (the pause container: never in the pod's container
/// statuses) rather than one of its containers.
pub fn is_sandbox(top: &ContainerTop, index: &PodIndex) -> bool {
    top.comm == PAUSE_COMM && index.container(&top.container_id).is_none()
}

/// The evidence about one container's top process, with names from the index.
pub fn container_init(top: &ContainerTop, index: &PodIndex) -> ContainerInit {
    let (uid, pod, container) = names(index, &top.pod_uid, Some(&top.container_id));
    let mut zombie_comms: Vec<CommCount> = top
        .zombie_comms
        .iter()
        .map(|(comm, &count)| CommCount {
            comm: comm.clone(),
            count,
        })
        .collect();
    zombie_comms.sort_by(|a, b| (Reverse(a.count), &a.comm).cmp(&(Reverse(b.count), &b.comm)));
    zombie_comms.truncate(crate::crd::MAX_ZOMBIE_COMMS);
    let init = known_init_comm(&top.comm);
    ContainerInit {
        pod_uid: uid.to_string(),
        container_id: top.container_id.clone(),
        namespace: pod.map(|p| p.namespace.clone()),
        pod: pod.map(|p| p.name.clone()),
        container: container.map(str::to_string),
        comm: top.comm.clone(),
        init: init.map(str::to_string),
        // Every known init takes SIGTERM, but reaper, tini and dumb-init wait for it in
        // sigtimedwait/sigwait, and while they wait the kernel unblocks the waited signals
        // (the real mask is kept where `status` does not show it): their masks say nothing.
        handles_sigterm: init.is_some() || top.status.handles_sigterm(),
        pid1: top.status.is_namespace_init(),
        host_pid: top.status.in_reader_namespace(),
        children: top.children,
        zombies: top.zombies,
        zombie_comms,
    }
}

/// Every container's top process but the sandboxes': unprotected first, then those without a
/// known init, then the most zombies; at most [`crate::crd::MAX_PID1S`], the rest counted.
fn pid1s(scan: &Scan, index: &PodIndex) -> (Vec<ContainerInit>, u32) {
    let mut list: Vec<ContainerInit> = scan
        .tops
        .iter()
        .filter(|t| !is_sandbox(t, index))
        .map(|t| container_init(t, index))
        .collect();
    let rank = |c: &ContainerInit| {
        (
            !c.unprotected(),
            c.protected_by().is_some(),
            Reverse(c.zombies),
        )
    };
    list.sort_by(|a, b| {
        (rank(a), &a.pod_uid, &a.container_id).cmp(&(rank(b), &b.pod_uid, &b.container_id))
    });
    let truncated = list.len().saturating_sub(crate::crd::MAX_PID1S);
    list.truncate(crate::crd::MAX_PID1S);
    (list, truncated as u32)
}

/// The part of a spec whose change is worth a write. `observedAt`, the node's process count,
/// ages, `pods[].current` and `pid1s[].children` move on every scan; they are refreshed by the
/// heartbeat instead, so a node writes only when its zombies, pids-limit pressure set, pid_max
/// or containers' PID 1 facts (started, gone, a handler installed) change.
fn material(spec: &ZombieReportSpec) -> ZombieReportSpec {
    let mut s = spec.clone();
    s.observed_at = None;
    s.processes = 0;
    for c in &mut s.containers {
        c.oldest_age_seconds = 0;
        for p in &mut c.parents {
            p.oldest_age_seconds = 0;
        }
    }
    for p in &mut s.pods {
        p.current = 0;
    }
    for p in &mut s.pid1s {
        p.children = 0;
    }
    s
}

/// Whether two specs say the same thing (see [`material`] for what is ignored).
pub fn same_content(a: &ZombieReportSpec, b: &ZombieReportSpec) -> bool {
    material(a) == material(b)
}

/// Whether to write `next` given the last written spec and when it was written.
pub fn should_write(
    last: Option<(&ZombieReportSpec, Instant)>,
    next: &ZombieReportSpec,
    now: Instant,
    heartbeat: Duration,
) -> bool {
    match last {
        None => true,
        Some((spec, at)) => {
            !same_content(spec, next) || now.saturating_duration_since(at) >= heartbeat
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::scan::{Parent, Pids, PodUsage};
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const UID_A: &str = "0f3c5a2e-7b1d-4c9e-8a6f-1d2e3f4a5b6c";
    const UID_B: &str = "11111111-2222-3333-4444-555555555555";
    const HASH: &str = "6b4ee2a7e4e0a3e0d6a4c2c7c5d0e8b1";
    const MIRROR_UID: &str = "99999999-8888-7777-6666-555555555555";
    const C1: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const C2: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C3: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn status(name: &str, id: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            container_id: Some(id.into()),
            ..Default::default()
        }
    }

    fn pods() -> Vec<Pod> {
        vec![
            Pod {
                metadata: ObjectMeta {
                    uid: Some(UID_A.into()),
                    namespace: Some("shop".into()),
                    name: Some("web-0".into()),
                    ..Default::default()
                },
                status: Some(PodStatus {
                    container_statuses: Some(vec![status("app", &format!("containerd://{C1}"))]),
                    init_container_statuses: Some(vec![status(
                        "init",
                        &format!("containerd://{C2}"),
                    )]),
                    ephemeral_container_statuses: Some(vec![ContainerStatus {
                        name: "debugger".into(),
                        container_id: None,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            // A mirror pod: its cgroup is named after the config hash.
            Pod {
                metadata: ObjectMeta {
                    uid: Some(MIRROR_UID.into()),
                    namespace: Some("kube-system".into()),
                    name: Some("etcd-node1".into()),
                    annotations: Some(
                        [(ANNOTATION_CONFIG_HASH.to_string(), HASH.to_string())].into(),
                    ),
                    ..Default::default()
                },
                status: Some(PodStatus {
                    container_statuses: Some(vec![status("etcd", &format!("cri-o://{C3}"))]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]
    }

    fn zombie(pid: i32, uid: Option<&str>, cid: Option<&str>, parent: (i32, &str)) -> Zombie {
        Zombie {
            pid,
            starttime: 1000 + pid as u64,
            comm: "sh".into(),
            parent: Some(Parent {
                pid: parent.0,
                comm: parent.1.into(),
            }),
            pod_uid: uid.map(str::to_string),
            container_id: cid.map(str::to_string),
        }
    }

    fn sample_scan() -> Scan {
        Scan {
            pid_max: Some(4194304),
            processes: 321,
            kernel_threads: 40,
            zombies: vec![
                zombie(100, Some(UID_A), Some(C1), (10, "app")),
                zombie(101, Some(UID_A), Some(C1), (10, "app")),
                zombie(102, Some(UID_A), Some(C1), (11, "worker")),
                zombie(200, Some(HASH), Some(C3), (20, "etcd")),
                // Unknown pod: names stay empty.
                zombie(
                    300,
                    Some(UID_B),
                    Some(C2.replace('b', "d").as_str()),
                    (30, "x"),
                ),
                // In the pod cgroup itself (no container).
                zombie(400, Some(UID_B), None, (40, "pause")),
                // A host process.
                zombie(500, None, None, (1, "systemd")),
            ],
            pods: [
                (
                    UID_A.to_string(),
                    PodUsage {
                        processes: 3,
                        pids: Some(Pids {
                            current: 6,
                            limit: Some(100),
                        }),
                    },
                ),
                (
                    HASH.to_string(),
                    PodUsage {
                        processes: 1,
                        pids: Some(Pids {
                            current: 2,
                            limit: None,
                        }),
                    },
                ),
                (
                    UID_B.to_string(),
                    PodUsage {
                        processes: 4,
                        pids: None,
                    },
                ),
                // No zombies, but at 90% of its limit.
                (
                    "22222222-2222-3333-4444-555555555555".to_string(),
                    PodUsage {
                        processes: 90,
                        pids: Some(Pids {
                            current: 90,
                            limit: Some(100),
                        }),
                    },
                ),
                // No zombies, far from any limit: not listed.
                (
                    "33333333-2222-3333-4444-555555555555".to_string(),
                    PodUsage {
                        processes: 2,
                        pids: Some(Pids {
                            current: 2,
                            limit: None,
                        }),
                    },
                ),
            ]
            .into(),
            tops: vec![
                top(UID_A, C1, 10, "sleep", (1, 2), 0, [("sh", 3), ("curl", 1)]),
                // The sandbox: left out.
                top(UID_A, &"e".repeat(64), 9, "pause", (1, 2), 1 << 14, []),
                top(HASH, C3, 20, "etcd", (20, 1), 1 << 14, []),
                // reaper waiting in sigtimedwait: no mask shows SIGTERM, the init is known to take it.
                top(UID_B, &"d".repeat(64), 30, "reaper", (1, 2), 0, []),
                // shareProcessNamespace: pid 7 of the pod's namespace.
                top(UID_B, &"f".repeat(64), 31, "nginx", (7, 2), 0, []),
            ],
            errors: Default::default(),
        }
    }

    fn top<const N: usize>(
        uid: &str,
        cid: &str,
        pid: i32,
        comm: &str,
        ns_pid: (i32, usize),
        sig_cgt: u64,
        zombies: [(&str, u32); N],
    ) -> ContainerTop {
        ContainerTop {
            pod_uid: uid.into(),
            container_id: cid.into(),
            pid,
            comm: comm.into(),
            status: crate::agent::procfs::Status {
                ns_pid: Some(ns_pid),
                sig_blk: 0,
                sig_ign: 0,
                sig_cgt,
            },
            children: zombies.iter().map(|z| z.1).sum::<u32>() + 1,
            zombies: zombies.iter().map(|z| z.1).sum(),
            zombie_comms: zombies.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn index_maps_every_status_kind_and_static_pods() {
        let pods = pods();
        let index = PodIndex::from_pods(&pods);
        let c = index.container(C1).unwrap();
        assert_eq!(
            (c.pod.name.as_str(), c.container.as_str()),
            ("web-0", "app")
        );
        assert_eq!(index.container(C2).unwrap().container, "init");
        assert_eq!(index.container(C3).unwrap().pod.uid, MIRROR_UID);
        assert_eq!(index.pod(HASH).unwrap().name, "etcd-node1");
        assert_eq!(index.pod(UID_A).unwrap().namespace, "shop");
        assert!(index.pod(UID_B).is_none());
        assert_eq!(bare_container_id("docker://abc"), "abc");
        assert_eq!(bare_container_id("abc"), "abc");
    }

    #[test]
    fn first_seen_keeps_ages_and_forgets_reaped_or_reused_pids() {
        let t0 = Instant::now();
        let mut fs = FirstSeen::default();
        let z = zombie(100, None, None, (1, "init"));
        fs.update(std::slice::from_ref(&z), t0);
        let t1 = t0 + Duration::from_secs(30);
        fs.update(std::slice::from_ref(&z), t1);
        assert_eq!(fs.age(&z, t1), Duration::from_secs(30));
        // Same pid, new process (different starttime): a new zombie.
        let reused = Zombie {
            starttime: 9,
            ..z.clone()
        };
        fs.update(std::slice::from_ref(&reused), t1);
        assert_eq!(
            fs.age(&reused, t1 + Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(fs.age(&z, t1), Duration::ZERO);
        fs.update(&[], t1);
        assert!(fs.is_empty());
    }

    #[test]
    /// A node's report is bounded (the CRD says so too): the containers with the most zombies
    /// are listed, the rest counted; likewise pods and each container's parents.
    fn reports_are_bounded_and_say_how_much_was_left_out() {
        let n = crate::crd::MAX_CONTAINERS + 7;
        let mut scan = sample_scan();
        scan.zombies = (0..n)
            .flat_map(|i| {
                let cid = format!("{i:064x}");
                let uid = format!("00000000-0000-0000-0000-{i:012x}");
                // Container i holds i % 3 + 1 zombies, from 20 parents in the first one.
                (0..(i % 3 + 1 + if i == 0 { 20 } else { 0 })).map(move |k| {
                    zombie(
                        (i * 100 + k) as i32,
                        Some(&uid),
                        Some(&cid),
                        (100_000 + k as i32, "p"),
                    )
                })
            })
            .collect();
        scan.pods = (0..n)
            .map(|i| {
                (
                    format!("00000000-0000-0000-0000-{i:012x}"),
                    PodUsage {
                        processes: 2,
                        pids: None,
                    },
                )
            })
            .collect();
        let spec = build_spec(&ReportInput {
            node_name: "node1",
            scan: &scan,
            first_seen: &FirstSeen::default(),
            index: &PodIndex::default(),
            now: Instant::now(),
            observed_at: None,
        });
        assert_eq!(spec.containers.len(), crate::crd::MAX_CONTAINERS);
        assert_eq!(spec.truncated_containers, 7);
        assert_eq!(spec.pods.len(), crate::crd::MAX_PODS);
        assert_eq!(spec.truncated_pods, 7);
        // The worst are kept: every container with two or more zombies made it.
        let heavy = (0..n).filter(|i| i % 3 + 1 >= 2 || *i == 0).count();
        assert_eq!(
            spec.containers.iter().filter(|c| c.count >= 2).count(),
            heavy
        );
        assert!(
            spec.containers
                .iter()
                .all(|c| c.parents.len() <= crate::crd::MAX_PARENTS)
        );
    }

    #[test]
    fn spec_groups_by_container_and_parent_with_names() {
        let scan = sample_scan();
        let index = PodIndex::from_pods(&pods());
        let t0 = Instant::now();
        let mut fs = FirstSeen::default();
        fs.update(&scan.zombies[..2], t0);
        let now = t0 + Duration::from_secs(120);
        fs.update(&scan.zombies, now);
        let spec = build_spec(&ReportInput {
            node_name: "node1",
            scan: &scan,
            first_seen: &fs,
            index: &index,
            now,
            observed_at: None,
        });
        assert_eq!(spec.node_name, "node1");
        assert_eq!(spec.pid_max, 4194304);
        assert_eq!(spec.processes, 321);
        assert_eq!(spec.zombies, 7);
        assert_eq!(spec.unattributed_zombies, 1);
        assert_eq!(spec.containers.len(), 3);

        let web = &spec.containers[0];
        assert_eq!(web.pod_uid, UID_A);
        assert_eq!(web.container_id, C1);
        assert_eq!(
            (
                web.namespace.as_deref(),
                web.pod.as_deref(),
                web.container.as_deref()
            ),
            (Some("shop"), Some("web-0"), Some("app"))
        );
        assert_eq!(web.count, 3);
        assert_eq!(web.oldest_age_seconds, 120);
        assert_eq!(
            web.parents,
            vec![
                ZombieParent {
                    pid: 10,
                    comm: "app".into(),
                    count: 2,
                    oldest_age_seconds: 120
                },
                ZombieParent {
                    pid: 11,
                    comm: "worker".into(),
                    count: 1,
                    oldest_age_seconds: 0
                },
            ]
        );
        // The static pod is reported under its API uid, not the cgroup's config hash.
        let etcd = spec
            .containers
            .iter()
            .find(|c| c.container_id == C3)
            .unwrap();
        assert_eq!(etcd.pod_uid, MIRROR_UID);
        assert_eq!(etcd.container.as_deref(), Some("etcd"));
        let unknown = spec.containers.iter().find(|c| c.pod_uid == UID_B).unwrap();
        assert_eq!(
            (unknown.namespace.clone(), unknown.pod.clone()),
            (None, None)
        );

        let uids: Vec<_> = spec.pods.iter().map(|p| p.pod_uid.as_str()).collect();
        assert_eq!(
            uids,
            [
                UID_A,
                UID_B,
                "22222222-2222-3333-4444-555555555555",
                MIRROR_UID
            ]
        );
        let a = &spec.pods[0];
        assert_eq!((a.current, a.limit, a.zombies), (6, Some(100), 3));
        assert_eq!(a.pod.as_deref(), Some("web-0"));
        // pids unreadable: falls back to the processes counted.
        let b = &spec.pods[1];
        assert_eq!((b.current, b.limit, b.zombies), (4, None, 2));
        assert_eq!(spec.pods[2].zombies, 0);
        assert_eq!(spec.pods[3].limit, None);
    }

    #[test]
    fn pid1s_carry_the_evidence_unprotected_first_without_sandboxes() {
        let mut scan = sample_scan();
        // Seven zombie names: the five most frequent are kept.
        scan.tops[0].zombie_comms = [
            ("sh", 3),
            ("curl", 1),
            ("wget", 4),
            ("a", 1),
            ("b", 1),
            ("grep", 2),
            ("c", 1),
        ]
        .into_iter()
        .map(|(c, n)| (c.to_string(), n))
        .collect();
        let index = PodIndex::from_pods(&pods());
        let spec = build_spec(&ReportInput {
            node_name: "n",
            scan: &scan,
            first_seen: &FirstSeen::default(),
            index: &index,
            now: Instant::now(),
            observed_at: None,
        });
        let order: Vec<(&str, Option<&str>)> = spec
            .pid1s
            .iter()
            .map(|c| (c.comm.as_str(), c.protected_by()))
            .collect();
        assert_eq!(
            order,
            [
                ("sleep", None),
                ("etcd", None),
                ("reaper", Some("reaper")),
                ("nginx", Some("pause")),
            ],
            "{:#?}",
            spec.pid1s
        );
        let app = &spec.pid1s[0];
        assert!(app.unprotected() && app.pid1 && !app.host_pid && !app.handles_sigterm);
        assert_eq!(
            (
                app.namespace.as_deref(),
                app.pod.as_deref(),
                app.container.as_deref(),
                app.init.as_deref()
            ),
            (Some("shop"), Some("web-0"), Some("app"), None)
        );
        let comms: Vec<(&str, u32)> = app
            .zombie_comms
            .iter()
            .map(|c| (c.comm.as_str(), c.count))
            .collect();
        assert_eq!(
            comms,
            [("wget", 4), ("sh", 3), ("grep", 2), ("a", 1), ("b", 1)]
        );
        // hostPID etcd (static pod, named by its mirror pod): handles SIGTERM, not PID 1.
        let etcd = &spec.pid1s[1];
        assert_eq!(etcd.pod_uid, MIRROR_UID);
        assert!(etcd.host_pid && !etcd.pid1 && etcd.handles_sigterm && !etcd.unprotected());
        assert_eq!(spec.pid1s[2].init.as_deref(), Some("reaper"));
        assert!(spec.pid1s[2].handles_sigterm);
        assert_eq!(spec.pid1s[3].init, None);
        assert_eq!(spec.truncated_pid1s, 0);

        // Bounded like the other lists.
        let mut many = scan.clone();
        many.tops = (0..crate::crd::MAX_PID1S + 3)
            .map(|i| top(UID_A, &format!("{i:064x}"), i as i32, "tini", (1, 2), 0, []))
            .collect();
        let spec = build_spec(&ReportInput {
            node_name: "n",
            scan: &many,
            first_seen: &FirstSeen::default(),
            index: &index,
            now: Instant::now(),
            observed_at: None,
        });
        assert_eq!(spec.pid1s.len(), crate::crd::MAX_PID1S);
        assert_eq!(spec.truncated_pid1s, 3);
    }

    #[test]
    fn pid1_changes_are_written_but_child_counts_are_not() {
        let scan = sample_scan();
        let index = PodIndex::default();
        let fs = FirstSeen::default();
        let input = ReportInput {
            node_name: "n",
            scan: &scan,
            first_seen: &fs,
            index: &index,
            now: Instant::now(),
            observed_at: None,
        };
        let a = build_spec(&input);
        let mut b = a.clone();
        b.pid1s[0].children += 7;
        assert!(same_content(&a, &b));
        for change in [
            |c: &mut ContainerInit| c.handles_sigterm = !c.handles_sigterm,
            |c: &mut ContainerInit| c.zombies += 1,
            |c: &mut ContainerInit| c.comm = "reaper".into(),
            |c: &mut ContainerInit| c.zombie_comms.clear(),
        ] {
            let mut c = a.clone();
            change(&mut c.pid1s[0]);
            assert!(!same_content(&a, &c));
        }
        let mut gone = a.clone();
        gone.pid1s.pop();
        assert!(!same_content(&a, &gone));
    }

    #[test]
    fn change_detection_ignores_moving_numbers_but_not_zombies() {
        let scan = sample_scan();
        let index = PodIndex::default();
        let fs = FirstSeen::default();
        let now = Instant::now();
        let input = ReportInput {
            node_name: "n",
            scan: &scan,
            first_seen: &fs,
            index: &index,
            now,
            observed_at: None,
        };
        let a = build_spec(&input);
        let mut b = a.clone();
        b.observed_at = Some(Time(jiff::Timestamp::now()));
        b.processes += 10;
        b.containers[0].oldest_age_seconds += 15;
        b.containers[0].parents[0].oldest_age_seconds += 15;
        b.pods[0].current += 1;
        assert!(same_content(&a, &b));
        let hb = Duration::from_secs(300);
        assert!(!should_write(
            Some((&a, now)),
            &b,
            now + Duration::from_secs(15),
            hb
        ));
        assert!(should_write(Some((&a, now)), &b, now + hb, hb));
        assert!(should_write(None, &b, now, hb));

        let mut c = b.clone();
        c.containers[0].count += 1;
        assert!(!same_content(&a, &c));
        let mut d = b.clone();
        d.containers[0].parents[0].comm = "other".into();
        assert!(!same_content(&a, &d));
        let mut e = b.clone();
        e.unattributed_zombies = 0;
        assert!(!same_content(&a, &e));
        let mut f = b;
        f.pods.pop();
        assert!(should_write(Some((&a, now)), &f, now, hb));
    }
}
