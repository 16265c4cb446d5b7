//! The operator's cost per batch of changes, before and after it computed once per batch:
//! 10,000 pods (Deployment pods behind ReplicaSets) in 200 namespaces, 100 policies, 200 nodes'
//! ZombieReports. One batch is what the operator does after a burst of watch events:
//! - after (now): build the pod index once, index the reports once, `status::compute` once;
//! - before: the same work once per policy (each policy's reconcile rebuilt the index and
//!   computed every policy's status, keeping its own).
//!
//! Prints time (median of rounds) and heap allocated per batch for both, and their ratio, in one
//! run. `cargo bench --bench operator_batch` (`make bench-operator`).
// A counting global allocator is the one unsafe thing here.
#![allow(unsafe_code)]
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::core::PartialObjectMetaExt;
use reaper::crd::{ContainerZombies, PolicySet, ReaperPolicy, ZombieReportSpec};
use reaper::keys;
use reaper::operator::actions::ActionLog;
use reaper::operator::index::{self, PodInfo, Snapshot};
use reaper::operator::status::{self, Settings};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counts bytes allocated (not freed) and the peak of live bytes.
struct Counting;
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const PODS: usize = 10_000;
const NAMESPACES: usize = 200;
const POLICIES: usize = 100;
const NODES: usize = 200;
const ROUNDS: usize = 5;

struct Cluster {
    policies: Vec<Arc<ReaperPolicy>>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: Vec<PartialObjectMeta<Pod>>,
    replica_sets: HashMap<(String, String), Vec<OwnerReference>>,
    reports: Vec<ZombieReportSpec>,
}

fn owner(kind: &str, api: &str, name: &str) -> OwnerReference {
    OwnerReference {
        api_version: api.into(),
        kind: kind.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

fn cluster() -> Cluster {
    let ns_name = |i: usize| format!("team-{i}");
    // Half the namespaces opted in; each belongs to one of 100 teams a policy selects.
    let namespaces = (0..NAMESPACES)
        .map(|i| {
            let mut labels = BTreeMap::from([("team".to_string(), format!("{}", i % POLICIES))]);
            if i % 2 == 0 {
                labels.insert(keys::LABEL_INJECT.into(), keys::INJECT_ENABLED.into());
            }
            (ns_name(i), labels)
        })
        .collect();
    let policies = (0..POLICIES)
        .map(|i| {
            let p: ReaperPolicy = serde_json::from_value(serde_json::json!({
                "apiVersion": "reaper.dev/v1alpha1", "kind": "ReaperPolicy",
                "metadata": {"name": format!("policy-{i}"), "generation": 1},
                "spec": {"priority": i % 3,
                         "namespaceSelector": {"matchLabels": {"team": format!("{i}")}},
                         "zombies": {"threshold": 5, "action": "Event"}}
            }))
            .expect("a valid policy");
            Arc::new(p)
        })
        .collect();
    let mut replica_sets = HashMap::new();
    let pods = (0..PODS)
        .map(|i| {
            let ns = ns_name(i % NAMESPACES);
            let deploy = format!("app-{}", i % 1000);
            let rs = format!("{deploy}-5d4f8");
            replica_sets
                .entry((ns.clone(), rs.clone()))
                .or_insert_with(|| vec![owner("Deployment", "apps/v1", &deploy)]);
            let mut annotations = BTreeMap::new();
            if i % 3 == 0 {
                annotations.insert(
                    keys::ANNOTATION_INJECTED.to_string(),
                    "inject:app".to_string(),
                );
            }
            ObjectMeta {
                name: Some(format!("{rs}-{i}")),
                namespace: Some(ns),
                uid: Some(format!("pod-{i}")),
                labels: Some(BTreeMap::from([("app".to_string(), deploy)])),
                annotations: Some(annotations),
                owner_references: Some(vec![owner("ReplicaSet", "apps/v1", &rs)]),
                ..Default::default()
            }
            .into_response_partial::<Pod>()
        })
        .collect();
    // Every node reports; one pod in 20 holds zombies.
    let reports = (0..NODES)
        .map(|n| ZombieReportSpec {
            node_name: format!("node-{n}"),
            containers: (n..PODS)
                .step_by(NODES)
                .filter(|i| i % 20 == 0)
                .map(|i| ContainerZombies {
                    pod_uid: format!("pod-{i}"),
                    container_id: format!("{i:064x}"),
                    namespace: Some(ns_name(i % NAMESPACES)),
                    pod: Some(format!("pod-{i}")),
                    container: Some("app".into()),
                    count: 7,
                    oldest_age_seconds: 60,
                    parents: Vec::new(),
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    Cluster {
        policies,
        namespaces,
        pods,
        replica_sets,
        reports,
    }
}

/// One pass as the operator makes it: pod index, zombie index, every policy's status.
fn pass(c: &Cluster, settings: &Settings, now: Timestamp) -> usize {
    let rs_owners = |kind: &str, ns: &str, name: &str| {
        (kind == "ReplicaSet")
            .then(|| {
                c.replica_sets
                    .get(&(ns.to_string(), name.to_string()))
                    .cloned()
            })
            .flatten()
    };
    let pods: Vec<PodInfo> = c
        .pods
        .iter()
        .filter_map(|p| PodInfo::from_meta(&p.metadata, &rs_owners))
        .collect();
    let zombies = index::index_zombies(c.reports.iter());
    let policies = PolicySet::new(c.policies.clone());
    let outcome = status::compute(
        Snapshot {
            policies: &policies,
            namespaces: &c.namespaces,
            pods: &pods,
            zombies: &zombies,
        },
        settings,
        &ActionLog::default(),
        now,
    );
    outcome.statuses.len() + outcome.actions.len()
}

/// Median time and heap per batch of `passes` passes.
fn measure(c: &Cluster, passes: usize) -> (Duration, usize, usize) {
    let settings = Settings::default();
    let now: Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
    let mut times = Vec::new();
    let mut allocated = 0;
    let mut peak = 0;
    for _ in 0..ROUNDS {
        let base_live = LIVE.load(Ordering::Relaxed);
        PEAK.store(base_live, Ordering::Relaxed);
        let before = ALLOCATED.load(Ordering::Relaxed);
        let t = Instant::now();
        let mut sink = 0;
        for _ in 0..passes {
            sink += pass(c, &settings, now);
        }
        times.push(t.elapsed());
        std::hint::black_box(sink);
        allocated = ALLOCATED.load(Ordering::Relaxed) - before;
        peak = PEAK.load(Ordering::Relaxed) - base_live;
    }
    times.sort();
    (times[times.len() / 2], allocated, peak)
}

fn main() {
    let c = cluster();
    let (after_t, after_alloc, after_peak) = measure(&c, 1);
    let (before_t, before_alloc, before_peak) = measure(&c, POLICIES);
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "operator batch: {PODS} pods in {NAMESPACES} namespaces, {POLICIES} policies, {NODES} nodes' reports (median of {ROUNDS})"
    );
    println!("| | time per batch | heap allocated per batch | peak live heap |");
    println!("|---|---|---|---|");
    println!(
        "| before (one pass per policy) | {:.1} ms | {:.1} MiB | {:.1} MiB |",
        before_t.as_secs_f64() * 1e3,
        mib(before_alloc),
        mib(before_peak)
    );
    println!(
        "| after (one pass per batch) | {:.1} ms | {:.1} MiB | {:.1} MiB |",
        after_t.as_secs_f64() * 1e3,
        mib(after_alloc),
        mib(after_peak)
    );
    println!(
        "before/after: time {:.0}x, allocated {:.0}x",
        before_t.as_secs_f64() / after_t.as_secs_f64(),
        before_alloc as f64 / after_alloc.max(1) as f64
    );
}
