//! Node agent: zombies per pod and container from /proc.
//!
//! `procfs` parses files, `scan` walks a proc root, `report` turns a scan into a `ZombieReport`
//! spec, `metrics` into Prometheus series. This module is the I/O shell: flags, the reflector
//! over this node's pods, the scan loop, server-side apply and shutdown.

pub mod metrics;
pub mod procfs;
pub mod report;
pub mod scan;

use crate::admin::Readiness;
use crate::component::{Component, Tasks};
use crate::crd::{ZombieReport, ZombieReportSpec};
use crate::keys;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use metrics::AgentMetrics;
use report::{FirstSeen, PodIndex, ReportInput};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a `--once` run waits for the API server before printing without names.
const ONCE_API_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the first scan waits for the pod reflector's initial list.
const STORE_SYNC_WAIT: Duration = Duration::from_secs(10);
/// Timeout of one ZombieReport apply or Node GET in the loop.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Output format of `--once`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The ZombieReport object as it would be applied, pretty-printed JSON on stdout.
    Json,
}

/// Flags of `reaper-controller agent`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// This node's name (set it from the downward API: `spec.nodeName`). Names the ZombieReport
    /// and selects the pods to index. Required when reporting; otherwise defaults to the hostname.
    #[arg(long, env = "REAPER_NODE_NAME")]
    pub node_name: Option<String>,
    /// The host's proc filesystem (the agent runs with hostPID, so `/proc` is the host's).
    #[arg(long, env = "REAPER_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Root of the cgroup filesystems, where pods' `pids.current` / `pids.max` are read
    /// (`<root>/pids/...` on cgroup v1, `<root>/...` on v2, `<root>/unified/...` on hybrid).
    #[arg(long, env = "REAPER_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Time between scans.
    #[arg(long, env = "REAPER_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Write the ZombieReport at least this often even when nothing changed (ages, process
    /// counts and `observedAt` are refreshed then).
    #[arg(long, env = "REAPER_HEARTBEAT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    #[command(flatten)]
    pub admin: crate::component::AdminArgs,
    /// Publish this node's ZombieReport (server-side apply). `--report=false` only serves metrics
    /// (pod names are still resolved when the API server is reachable).
    #[arg(long, env = "REAPER_REPORT", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub report: bool,
    /// Scan once and exit: with `--output json` print the report, otherwise apply it (when
    /// `--report`) and log a summary.
    #[arg(long, env = "REAPER_ONCE")]
    pub once: bool,
    /// With `--once`: print the ZombieReport exactly as it would be applied, and write nothing.
    /// No API server needed: without one, names and the ownerReference are left out.
    #[arg(long, env = "REAPER_OUTPUT", value_enum, requires = "once")]
    pub output: Option<Output>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Scan(#[from] scan::Error),
    #[error(
        "no node name: set --node-name (REAPER_NODE_NAME) from the downward API (fieldRef spec.nodeName)"
    )]
    NodeName,
    #[error(
        "no Kubernetes client ({0}); run in a pod with a service account or set KUBECONFIG, or use --report=false"
    )]
    Client(#[source] kube::Error),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Component(#[from] crate::component::Error),
    #[error("cannot write the report to stdout: {0}")]
    Stdout(#[source] std::io::Error),
    #[error("scan task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `ZombieReport` object as applied: named after the node, owned by its Node when the Node's
/// uid is known (so it is garbage-collected with the node).
pub fn report_object(
    node_name: &str,
    node_uid: Option<&str>,
    spec: ZombieReportSpec,
) -> ZombieReport {
    let mut report = ZombieReport::new(node_name, spec);
    if let Some(uid) = node_uid {
        report.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node_name.into(),
            uid: uid.into(),
            ..Default::default()
        }]);
    }
    report
}

fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// The node name from the flag, else (only where the report is not published) the hostname.
fn node_name(args: &Args) -> Result<String> {
    if let Some(n) = args.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Ok(n.to_string());
    }
    let publishes = args.report && args.output.is_none();
    if publishes {
        return Err(Error::NodeName);
    }
    let host = std::fs::read_to_string(args.proc_root.join("sys/kernel/hostname"))
        .or_else(|_| std::fs::read_to_string("/proc/sys/kernel/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    Ok(if host.is_empty() {
        "unknown".into()
    } else {
        host
    })
}

async fn run_scan(proc_root: &Path, cgroup_root: &Path) -> Result<(scan::Scan, Duration)> {
    let (proc_root, cgroup_root) = (proc_root.to_path_buf(), cgroup_root.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let s = scan::scan(&proc_root, &cgroup_root)?;
        Ok((s, t.elapsed()))
    })
    .await?
}

async fn node_uid(client: &Client, node: &str) -> Result<String> {
    let api: Api<Node> = Api::all(client.clone());
    let n = tokio::time::timeout(API_TIMEOUT, api.get(node))
        .await
        .map_err(|_| Error::Timeout(API_TIMEOUT))?
        .map_err(|source| Error::Api {
            what: format!(
                "cannot read Node {node} for the report's ownerReference (RBAC: get nodes)"
            ),
            source,
        })?;
    Ok(n.uid().unwrap_or_default())
}

async fn apply(client: &Client, report: &ZombieReport) -> Result<()> {
    let api: Api<ZombieReport> = Api::all(client.clone());
    let name = report.name_any();
    let pp = PatchParams::apply(keys::MANAGER_AGENT).force();
    tokio::time::timeout(API_TIMEOUT, api.patch(&name, &pp, &Patch::Apply(report)))
        .await
        .map_err(|_| Error::Timeout(API_TIMEOUT))?
        .map_err(|source| Error::Api {
            what: format!(
                "cannot apply ZombieReport {name} (are the CRDs installed? `reaper-controller crds | kubectl apply -f -`; RBAC: patch zombiereports)"
            ),
            source,
        })?;
    Ok(())
}

/// Run until SIGTERM/SIGINT (or one scan with `--once`).
pub async fn run(args: Args) -> Result<()> {
    let node = node_name(&args)?;
    if args.once {
        return run_once(&args, &node).await;
    }
    run_loop(args, node).await
}

/// `--once`: one scan; print it (`--output json`) or apply it.
async fn run_once(args: &Args, node: &str) -> Result<()> {
    let client = Client::try_default().await;
    let (index, uid) = match &client {
        Ok(client) => {
            let facts = async {
                let pods: Api<Pod> = Api::all(client.clone());
                let lp = ListParams::default().fields(&node_selector(node));
                let list = pods.list(&lp).await;
                let uid = node_uid(client, node).await;
                (list, uid)
            };
            match tokio::time::timeout(ONCE_API_TIMEOUT, facts).await {
                Ok((list, uid)) => {
                    let index = match list {
                        Ok(list) => PodIndex::from_pods(&list.items),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot list this node's pods: names left out");
                            PodIndex::default()
                        }
                    };
                    let uid = uid
                        .inspect_err(|e| tracing::warn!(error = %e, "ownerReference left out"))
                        .ok();
                    (index, uid)
                }
                Err(_) => {
                    tracing::warn!(timeout = ?ONCE_API_TIMEOUT, "API server unreachable: names and ownerReference left out");
                    (PodIndex::default(), None)
                }
            }
        }
        Err(e) => {
            tracing::info!(error = %e, "no Kubernetes client: names and ownerReference left out");
            (PodIndex::default(), None)
        }
    };
    let (scan, took) = run_scan(&args.proc_root, &args.cgroup_root).await?;
    log_scan(&scan, took);
    let now = Instant::now();
    let mut first_seen = FirstSeen::default();
    first_seen.update(&scan.zombies, now);
    let spec = report::build_spec(&ReportInput {
        node_name: node,
        scan: &scan,
        first_seen: &first_seen,
        index: &index,
        now,
        observed_at: Some(Time(jiff::Timestamp::now())),
    });
    let object = report_object(node, uid.as_deref(), spec);
    if args.output == Some(Output::Json) {
        use std::io::Write;
        let json = serde_json::to_string_pretty(&object).expect("a ZombieReport serializes");
        let mut out = std::io::stdout().lock();
        writeln!(out, "{json}").map_err(Error::Stdout)?;
        return out.flush().map_err(Error::Stdout);
    }
    if args.report {
        let client = client.map_err(Error::Client)?;
        if uid.is_none() {
            // Never write an unowned report: it would outlive its node.
            node_uid(&client, node).await?;
        }
        apply(&client, &object).await?;
        tracing::info!(report = node, "ZombieReport applied");
    }
    Ok(())
}

fn log_scan(scan: &scan::Scan, took: Duration) {
    tracing::debug!(
        processes = scan.processes,
        zombies = scan.zombies.len(),
        pods = scan.pods.len(),
        skipped = scan.errors.total(),
        took_ms = took.as_secs_f64() * 1e3,
        "scan done"
    );
}

/// Start the reflector over this node's pods. Only what the index needs is kept: status
/// container IDs and the static-pod config hash (no spec, no managed fields).
fn pod_store(client: Client, node: &str, tasks: &Tasks) -> Store<Pod> {
    let shutdown = tasks.shutdown();
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&node_selector(node));
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, config)
            .modify(|pod| {
                pod.managed_fields_mut().clear();
                pod.labels_mut().clear();
                pod.annotations_mut()
                    .retain(|k, _| k == keys::ANNOTATION_CONFIG_HASH);
                pod.spec = None;
            })
            .default_backoff(),
    );
    tasks.spawn("Pod watch", async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = stream.next() => match ev {
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed (retrying): names may be stale"),
                    Some(Ok(_)) => {}
                    None => break,
                },
            }
        }
    });
    reader
}

/// What the loop remembers between scans.
struct LoopState {
    first_seen: FirstSeen,
    node_uid: Option<String>,
    last_written: Option<(ZombieReportSpec, Instant)>,
    /// The first scan waited for the pod reflector's initial list (once).
    store_synced: bool,
}

async fn run_loop(args: Args, node: String) -> Result<()> {
    let registry = crate::metrics::Metrics::new();
    let metrics = AgentMetrics::register(&registry);
    let component = Component::start("agent", &args.admin, registry).await?;
    let tasks = component.tasks();
    let client = match Client::try_default().await {
        Ok(c) => Some(c),
        Err(e) if args.report => return Err(Error::Client(e)),
        Err(e) => {
            tracing::info!(error = %e, "no Kubernetes client: metrics use pod UIDs and container IDs");
            None
        }
    };
    let store = client.clone().map(|c| pod_store(c, &node, &tasks));
    tracing::info!(%node, interval = ?args.interval, report = args.report, "agent started");
    tasks.spawn(
        "scan loop",
        scan_loop(
            args,
            node,
            client,
            store,
            metrics,
            component.ready.clone(),
            tasks.shutdown(),
        ),
    );
    component
        .run_until(crate::shutdown::requested("agent"), API_TIMEOUT)
        .await?;
    tracing::info!("agent stopped");
    Ok(())
}

/// Scans every `--interval` until `shutdown`: metrics, and the report when it changed.
async fn scan_loop(
    args: Args,
    node: String,
    client: Option<Client>,
    store: Option<Store<Pod>>,
    metrics: AgentMetrics,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    let mut state = LoopState {
        first_seen: FirstSeen::default(),
        node_uid: None,
        last_written: None,
        store_synced: false,
    };
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (scan, took) = match run_scan(&args.proc_root, &args.cgroup_root).await {
            Ok(r) => r,
            Err(e) => {
                // The proc root is gone or unreadable: not ready until it comes back.
                tracing::error!(error = %e, "scan failed");
                ready.set(false);
                continue;
            }
        };
        metrics.scan_duration.observe(took.as_secs_f64());
        log_scan(&scan, took);
        if let (Some(store), false) = (&store, state.store_synced) {
            // Give the first pod list a moment so the first report already carries names.
            let synced = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(STORE_SYNC_WAIT, store.wait_until_ready()) => r,
            };
            if !synced.is_ok_and(|r| r.is_ok()) {
                tracing::warn!(wait = ?STORE_SYNC_WAIT, "pods not listed yet: reporting UIDs and IDs until they are");
            }
            state.store_synced = true;
        }
        let index = store
            .as_ref()
            .map(|s| PodIndex::from_pods(s.state().iter().map(|p| p.as_ref())))
            .unwrap_or_default();
        metrics.update(&scan, &index);
        let now = Instant::now();
        state.first_seen.update(&scan.zombies, now);
        let spec = report::build_spec(&ReportInput {
            node_name: &node,
            scan: &scan,
            first_seen: &state.first_seen,
            index: &index,
            now,
            observed_at: Some(Time(jiff::Timestamp::now())),
        });
        ready.set(true);

        if let (true, Some(client)) = (args.report, &client) {
            let last = state.last_written.as_ref().map(|(s, t)| (s, *t));
            if report::should_write(last, &spec, now, args.heartbeat) {
                publish(client, &node, spec, now, &mut state, &metrics).await;
            }
        }
    }
}

async fn publish(
    client: &Client,
    node: &str,
    spec: ZombieReportSpec,
    now: Instant,
    state: &mut LoopState,
    metrics: &AgentMetrics,
) {
    let result = async {
        if state.node_uid.is_none() {
            state.node_uid = Some(node_uid(client, node).await?);
        }
        let object = report_object(node, state.node_uid.as_deref(), spec.clone());
        apply(client, &object).await
    }
    .await;
    let label = match &result {
        Ok(()) => {
            state.last_written = Some((spec, now));
            "applied"
        }
        Err(e) => {
            tracing::warn!(error = %e, "ZombieReport not written (retrying next scan)");
            "error"
        }
    };
    metrics
        .report_writes
        .get_or_create(&metrics::ResultLabels {
            result: label.into(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> std::result::Result<Args, clap::Error> {
        crate::component::parse_flags(argv)
    }

    #[test]
    fn flag_defaults_and_forms() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.proc_root, PathBuf::from("/proc"));
        assert_eq!(a.cgroup_root, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(a.interval, Duration::from_secs(15));
        assert_eq!(a.heartbeat, Duration::from_secs(300));
        assert_eq!(a.admin.admin_listen, "0.0.0.0:8080".parse().unwrap());
        assert!(a.report && !a.once && a.output.is_none());
        assert!(!parse(&["--report=false"]).unwrap().report);
        assert!(parse(&["--report"]).unwrap().report);
        let a = parse(&["--once", "--output", "json", "--interval", "500ms"]).unwrap();
        assert_eq!(a.output, Some(Output::Json));
        assert_eq!(a.interval, Duration::from_millis(500));
        assert!(
            parse(&["--output", "json"]).is_err(),
            "--output needs --once"
        );
        assert!(parse(&["--interval", "soon"]).is_err());
    }

    #[test]
    fn node_name_is_required_only_when_publishing() {
        let a = parse(&[]).unwrap();
        assert!(matches!(node_name(&a), Err(Error::NodeName)));
        assert!(Error::NodeName.to_string().contains("spec.nodeName"));
        assert_eq!(
            node_name(&parse(&["--node-name", "n1"]).unwrap()).unwrap(),
            "n1"
        );
        assert!(
            !node_name(&parse(&["--once", "--output", "json"]).unwrap())
                .unwrap()
                .is_empty()
        );
        assert!(
            !node_name(&parse(&["--report=false"]).unwrap())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn report_object_is_owned_by_its_node() {
        let r = report_object("n1", Some("uid-1"), ZombieReportSpec::default());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["apiVersion"], "reaper.dev/v1alpha1");
        assert_eq!(v["kind"], "ZombieReport");
        assert_eq!(v["metadata"]["name"], "n1");
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let r = report_object("n1", None, ZombieReportSpec::default());
        assert!(r.metadata.owner_references.is_none());
    }
}
