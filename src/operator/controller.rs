//! kube-runtime wiring: reflectors over ReaperPolicies, ZombieReports, and Namespaces, Pods and
//! ReplicaSets (metadata only), and one batch loop: any change marks the state dirty, and at most
//! once per `--batch-window` [`reconcile`] turns the indexes into an [`index::Snapshot`], calls
//! [`status::compute`] once for every policy (precedence and conflicts are cluster-wide), writes
//! the statuses that changed, and carries out the actions (Events, restarts). Actions that become
//! due later (the next Event interval, a restart cooldown) wake the loop without a change.
//! With `--policy-reports`, the same batch also builds every governed namespace's policy report
//! ([`reports::build`]) and writes those that changed ([`ReportWriter`]); Jobs are then indexed
//! too (metadata only), so results about a CronJob's pods name the CronJob.
use super::actions::{self, Action, ActionLog};
use super::index::{self, PodInfo, Snapshot};
use super::metrics::OperatorMetrics;
use super::report_writer::{self, ReportWriter};
use super::reports::{self, PolicyReports};
use super::status::{self, Settings};
use crate::crd::{PolicySet, ReaperPolicy, ReaperPolicyStatus, ZombieReport};
use crate::keys;
use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Retry delay after a failed batch.
const ERROR_REQUEUE: Duration = Duration::from_secs(10);
/// Restarts are remembered in memory this long (the live `restartedAt` covers longer cooldowns).
const RESTART_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// Pods in these phases never hold zombies and are no longer governed by anything.
const POD_FIELD_SELECTOR: &str = "status.phase!=Succeeded,status.phase!=Failed";
/// Pod annotations the operator reads; every other annotation is dropped from the index.
const POD_ANNOTATIONS: [&str; 4] = [
    keys::ANNOTATION_INJECTED,
    keys::ANNOTATION_MODE,
    keys::ANNOTATION_MIRROR,
    keys::ANNOTATION_RESTARTED_AT,
];

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the {0} reflector stopped before its first list completed")]
    StoreNotReady(&'static str),
    #[error(
        "writing status of ReaperPolicy {policy}: {source} (does the operator's role allow patch on reaperpolicies/status?)"
    )]
    Status { policy: String, source: kube::Error },
    #[error(
        "recording an Event on {object}: {source} (does the role allow create/patch on events.k8s.io events?)"
    )]
    Event { object: String, source: kube::Error },
    #[error(
        "restarting {workload}: {source} (does the role allow get/patch on it, and list on events?)"
    )]
    Restart {
        workload: String,
        source: kube::Error,
    },
    #[error(transparent)]
    Report(#[from] report_writer::Error),
}

impl Error {
    /// Label for `reaper_operator_reconcile_total{result}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::StoreNotReady(_) => "not_ready",
            Error::Status { .. } => "status_error",
            Error::Event { .. } => "event_error",
            Error::Restart { .. } => "restart_error",
            Error::Report(_) => "report_error",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The indexes the operator reconciles from.
#[derive(Clone)]
pub struct Stores {
    pub policies: Store<ReaperPolicy>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub pods: Store<PartialObjectMeta<Pod>>,
    pub replica_sets: Store<PartialObjectMeta<ReplicaSet>>,
    pub reports: Store<ZombieReport>,
    /// Jobs (metadata only), to see through a Job to its CronJob; with `--policy-reports` only.
    pub jobs: Option<Store<PartialObjectMeta<Job>>>,
}

impl Stores {
    async fn wait_until_ready(&self) -> Result<()> {
        macro_rules! ready {
            ($store:expr, $name:literal) => {
                $store
                    .wait_until_ready()
                    .await
                    .map_err(|_| Error::StoreNotReady($name))?
            };
        }
        // The controller starts reconciling while its own store is still being listed: a
        // policy computed against a partial policy set would miss conflicts (or itself).
        ready!(self.policies, "reaperpolicy");
        ready!(self.namespaces, "namespace");
        ready!(self.pods, "pod");
        ready!(self.replica_sets, "replicaset");
        ready!(self.reports, "zombiereport");
        if let Some(jobs) = &self.jobs {
            ready!(jobs, "job");
        }
        Ok(())
    }

    fn pods(&self) -> Vec<PodInfo> {
        // Only ownerReferences are cloned, for the ReplicaSets and Jobs that own pods.
        let owners_of = |kind: &str, ns: &str, name: &str| match kind {
            "ReplicaSet" => self
                .replica_sets
                .get(&ObjectRef::new(name).within(ns))
                .map(|o| o.metadata.owner_references.clone().unwrap_or_default()),
            "Job" => self
                .jobs
                .as_ref()?
                .get(&ObjectRef::new(name).within(ns))
                .map(|o| o.metadata.owner_references.clone().unwrap_or_default()),
            _ => None,
        };
        self.pods
            .state()
            .iter()
            .filter_map(|p| PodInfo::from_meta(&p.metadata, &owners_of))
            .collect()
    }

    /// Namespaces being deleted (no report is written into them).
    fn terminating_namespaces(&self) -> BTreeSet<String> {
        self.namespaces
            .state()
            .iter()
            .filter(|n| n.metadata.deletion_timestamp.is_some())
            .map(|n| n.name_any())
            .collect()
    }

    fn namespaces(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.namespaces
            .state()
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect()
    }
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub settings: Settings,
    pub log: Mutex<ActionLog>,
    pub recorder: Recorder,
    pub metrics: OperatorMetrics,
    /// Policy reports as stored, and the API they go to (`--policy-reports`). Held across the
    /// writes of a batch (one batch at a time anyway).
    pub reports: tokio::sync::Mutex<ReportWriter>,
    /// Set once every store has completed its first list.
    ready: tokio::sync::OnceCell<()>,
    /// Injectable for tests.
    pub clock: Box<dyn Fn() -> Timestamp + Send + Sync>,
}

impl Context {
    pub fn new(
        client: Client,
        stores: Stores,
        settings: Settings,
        metrics: OperatorMetrics,
        reporting_instance: String,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: keys::EVENT_REPORTER_OPERATOR.to_string(),
                instance: Some(reporting_instance),
            },
        );
        let reports = ReportWriter::new(settings.policy_reports, settings.report_resync);
        Self {
            client,
            stores,
            reports: tokio::sync::Mutex::new(reports),
            settings,
            log: Mutex::default(),
            recorder,
            metrics,
            ready: tokio::sync::OnceCell::new(),
            clock: Box::new(Timestamp::now),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, ActionLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One batch: every policy's status, then every action. `Ok(Some(d))`: run again after `d` even
/// without a change (an action may become due); `Ok(None)`: only when something changes.
pub async fn reconcile(ctx: Arc<Context>) -> Result<Option<Duration>> {
    let started = Instant::now();
    let result = reconcile_inner(&ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.metric_label(),
    };
    ctx.metrics.reconciled(label);
    result
}

async fn reconcile_inner(ctx: &Context) -> Result<Option<Duration>> {
    // One waiter only: kube-runtime's `Store::wait_until_ready` keeps a single waker, so two
    // reconciles waiting on it at once can lose the wake-up and hang. The OnceCell lets one
    // task wait while the others queue on the cell.
    ctx.ready
        .get_or_try_init(|| ctx.stores.wait_until_ready())
        .await?;
    let now = (ctx.clock)();
    let policy_objects = ctx.stores.policies.state();
    let policies = PolicySet::new(policy_objects.clone());
    let namespaces = ctx.stores.namespaces();
    let mut pods = ctx.stores.pods();
    let reports = ctx.stores.reports.state();
    let zombies = index::index_zombies(reports.iter().map(|r| &r.spec));
    // Pods whose containers already run an init count as protected (the agents' evidence).
    let inits = index::index_inits(reports.iter().map(|r| &r.spec));
    for p in &mut pods {
        p.init = inits.get(&p.uid).cloned();
    }
    let snapshot = Snapshot {
        policies: &policies,
        namespaces: &namespaces,
        pods: &pods,
        zombies: &zombies,
    };
    let outcome = {
        let mut log = ctx.log();
        let live: BTreeSet<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        log.prune(&live, now, RESTART_MEMORY);
        status::compute(snapshot, &ctx.settings, &log, now)
    };
    ctx.metrics.set_policies(&outcome.statuses);

    // A failed status write holds up that policy's actions only (as a per-policy reconcile
    // did); the batch is retried.
    let mut first_error = None;
    let mut unwritten: BTreeSet<String> = BTreeSet::new();
    for policy in &policy_objects {
        let name = policy.name_any();
        let Some(desired) = outcome.statuses.get(&name) else {
            continue;
        };
        let current = policy.status.clone().unwrap_or_default();
        if !status::same_status(&current, desired)
            && let Err(e) = write_status(ctx, &name, desired, now).await
        {
            tracing::warn!(policy = %name, error = %e, "status write failed; retrying later");
            first_error.get_or_insert(e);
            unwritten.insert(name);
        }
    }
    for (pod, why) in &outcome.not_restarted {
        tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), reason = ?why, "not restarting");
    }
    let mut next_due = outcome.next_due;
    for action in outcome
        .actions
        .iter()
        .filter(|a| !unwritten.contains(a.policy()))
    {
        let name = action.policy();
        match execute(ctx, action, now).await {
            // Look again when the same action may be due next (zombies that stay are reported
            // again after the interval, restarted again after the cooldown).
            Ok(()) => {
                let again = match action {
                    Action::Event { .. } => ctx.settings.event_interval,
                    Action::Restart { cooldown, .. } => *cooldown,
                };
                let at = now
                    .checked_add(
                        jiff::SignedDuration::try_from(again).unwrap_or(jiff::SignedDuration::MAX),
                    )
                    .unwrap_or(Timestamp::MAX);
                next_due = Some(next_due.map_or(at, |d| d.min(at)));
            }
            Err(e) => {
                tracing::warn!(policy = %name, error = %e, "action failed; retrying later");
                first_error.get_or_insert(e);
            }
        }
    }
    if ctx.settings.policy_reports != PolicyReports::Off {
        if let Err(e) = write_reports(ctx, snapshot, now).await {
            tracing::warn!(error = %e, "policy report write failed; retrying later");
            first_error.get_or_insert(e);
        }
        let resync = ctx.reports.lock().await.next_resync();
        if let Some(at) = resync {
            next_due = Some(next_due.map_or(at, |d| d.min(at)));
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(next_due.map(|at| {
        let wait: Duration = at.duration_since(now).try_into().unwrap_or_default();
        wait.max(Duration::from_secs(1))
    }))
}

/// The policy reports of this batch: discovery and re-list when due, then the reports that changed.
async fn write_reports(ctx: &Context, snapshot: Snapshot<'_>, now: Timestamp) -> Result<()> {
    let mut writer = ctx.reports.lock().await;
    writer
        .refresh_if_due(&ctx.client, &ctx.metrics, now)
        .await?;
    if writer.api().is_none() {
        return Ok(());
    }
    let mut desired = reports::build(snapshot, &ctx.settings, |ns| writer.stored(ns), now);
    let terminating = ctx.stores.terminating_namespaces();
    desired.retain(|ns, _| !terminating.contains(ns));
    writer.write(&ctx.client, &ctx.metrics, desired).await?;
    Ok(())
}

/// Server-side applies the status subresource (field manager `reaper-operator`): fields left out
/// (an emptied `topOffenders`) are removed, which a merge patch would not do.
async fn write_status(
    ctx: &Context,
    name: &str,
    desired: &ReaperPolicyStatus,
    now: Timestamp,
) -> Result<()> {
    let status = ReaperPolicyStatus {
        last_updated: Some(Time(Timestamp::from_second(now.as_second()).unwrap_or(now))),
        ..desired.clone()
    };
    let patch = serde_json::json!({
        "apiVersion": ReaperPolicy::api_version(&()),
        "kind": ReaperPolicy::kind(&()),
        "status": status,
    });
    Api::<ReaperPolicy>::all(ctx.client.clone())
        .patch_status(
            name,
            &PatchParams::apply(keys::MANAGER_OPERATOR).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| Error::Status {
            policy: name.to_string(),
            source,
        })?;
    tracing::info!(policy = %name, matched = desired.matched_pods, protected = desired.protected_pods, zombies = desired.zombies, "status updated");
    Ok(())
}

async fn execute(ctx: &Context, action: &Action, now: Timestamp) -> Result<()> {
    match action {
        Action::Event { pod, note, .. } => {
            let reference = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                uid: Some(pod.uid.clone()),
                ..Default::default()
            };
            publish(
                ctx,
                keys::REASON_ZOMBIES_DETECTED,
                "DetectZombies",
                note,
                &reference,
            )
            .await?;
            ctx.log().events.insert(pod.uid.clone(), now);
            tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), "{note}");
            Ok(())
        }
        Action::Restart {
            workload,
            pod,
            zombies,
            cooldown,
            ..
        } => restart(ctx, workload, pod, *zombies, *cooldown, now).await,
    }
}

async fn publish(
    ctx: &Context,
    reason: &str,
    action: &str,
    note: &str,
    reference: &ObjectReference,
) -> Result<()> {
    ctx.recorder
        .publish(
            &Event {
                type_: EventType::Warning,
                reason: reason.to_string(),
                note: Some(note.to_string()),
                action: action.to_string(),
                secondary: None,
            },
            reference,
        )
        .await
        .map_err(|source| Error::Event {
            object: format!(
                "{} {}/{}",
                reference.kind.as_deref().unwrap_or_default(),
                reference.namespace.as_deref().unwrap_or_default(),
                reference.name.as_deref().unwrap_or_default()
            ),
            source,
        })
}

fn workload_resource(kind: index::WorkloadKind) -> ApiResource {
    match kind {
        index::WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
        index::WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        index::WorkloadKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
    }
}

/// `kubectl rollout restart`: a strategic-merge patch of the pod template's `restartedAt`
/// annotation (RFC 3339, seconds), after checking the live annotation against the cooldown.
///
/// Exactly once across leaders: the `ZombieRestart` Event is recorded *before* the patch, unless
/// one about this workload already exists within the cooldown. A leader that dies between the two
/// leaves an Event and no restart; its successor finds the cooldown elapsed, finds the Event,
/// and only patches. A leader that dies after the patch leaves a live `restartedAt` that blocks a
/// second restart. Neither the restart nor its Event is ever lost or doubled.
async fn restart(
    ctx: &Context,
    workload: &index::WorkloadRef,
    pod: &index::PodRef,
    zombies: u32,
    cooldown: Duration,
    now: Timestamp,
) -> Result<()> {
    let resource = workload_resource(workload.kind);
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &workload.namespace, &resource);
    let err = |source| Error::Restart {
        workload: workload.to_string(),
        source,
    };
    let Some(live) = api.get_opt(&workload.name).await.map_err(err)? else {
        tracing::info!(%workload, "workload gone; nothing to restart");
        return Ok(());
    };
    let restarted_at = live.data["spec"]["template"]["metadata"]["annotations"]
        [keys::ANNOTATION_RESTARTED_AT]
        .as_str();
    if !actions::cooldown_elapsed(restarted_at, now, cooldown) {
        if let Some(at) = restarted_at.and_then(|s| s.parse().ok()) {
            ctx.log().restarts.insert(workload.clone(), at);
        }
        tracing::info!(%workload, restarted_at, "restarted recently; waiting for the cooldown");
        return Ok(());
    }
    let uid = live.metadata.uid.clone().unwrap_or_default();
    if restart_event_since(ctx, &workload.namespace, &uid, now, cooldown).await? {
        tracing::info!(%workload, "a restart Event is already recorded (an earlier leader); restarting without another");
    } else {
        let note = format!(
            "rolling out because pod {}/{} holds {zombies} zombie processes and is not protected by Reaper; \
             its new pods get PID 1 fixed by the webhook; next restart for zombies at most after {}",
            pod.namespace,
            pod.name,
            humantime::format_duration(cooldown)
        );
        tracing::warn!(%workload, "{note}");
        let reference = ObjectReference {
            api_version: Some(resource.api_version.clone()),
            kind: Some(resource.kind.clone()),
            name: Some(workload.name.clone()),
            namespace: Some(workload.namespace.clone()),
            uid: live.metadata.uid.clone(),
            ..Default::default()
        };
        publish(
            ctx,
            keys::REASON_ZOMBIE_RESTART,
            "Restart",
            &note,
            &reference,
        )
        .await?;
    }
    let stamp = Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string();
    let patch = serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {keys::ANNOTATION_RESTARTED_AT: stamp}}}}
    });
    api.patch(
        &workload.name,
        &PatchParams {
            field_manager: Some(keys::MANAGER_OPERATOR.to_string()),
            ..Default::default()
        },
        &Patch::Strategic(&patch),
    )
    .await
    .map_err(err)?;
    ctx.log().restarts.insert(workload.clone(), now);
    ctx.metrics.restarts.inc();
    Ok(())
}

/// Whether a `ZombieRestart` Event about the workload with `uid` was created within `cooldown`
/// before `now` (core Events: their field selectors on the involved object are served by every
/// API server version).
async fn restart_event_since(
    ctx: &Context,
    namespace: &str,
    uid: &str,
    now: Timestamp,
    cooldown: Duration,
) -> Result<bool> {
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!(
        "involvedObject.uid={uid},reason={}",
        keys::REASON_ZOMBIE_RESTART
    );
    let list = events
        .list(&kube::api::ListParams::default().fields(&selector))
        .await
        .map_err(|source| Error::Restart {
            workload: format!("events of {namespace}/{uid}"),
            source,
        })?;
    Ok(list.items.iter().any(|e| {
        e.metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| actions::elapsed(t.0, now) < cooldown)
    }))
}

/// A reflector over `api` (objects trimmed by `trim` before they are stored) and the stream of
/// its changes, which must be polled for the store to stay current.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff().modify(trim))
        .touched_objects();
    (store, stream)
}

/// Runs the reflectors and the policy controller until `stop` fires (leadership lost or shutdown).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: OperatorMetrics,
    identity: String,
    batch_window: Duration,
    stop: CancellationToken,
) {
    let wc = watcher::Config::default().any_semantic();
    let (namespaces, ns_stream) = reflect(
        Api::all(client.clone()),
        wc.clone(),
        |n: &mut PartialObjectMeta<Namespace>| {
            n.metadata.managed_fields = None;
            n.metadata.annotations = None;
        },
    );
    let (pods, pod_stream) = reflect(
        Api::all(client.clone()),
        wc.clone().fields(POD_FIELD_SELECTOR),
        |p: &mut PartialObjectMeta<Pod>| {
            p.metadata.managed_fields = None;
            if let Some(a) = p.metadata.annotations.as_mut() {
                a.retain(|k, _| POD_ANNOTATIONS.contains(&k.as_str()));
            }
        },
    );
    let (replica_sets, rs_stream) = reflect(
        Api::all(client.clone()),
        wc.clone(),
        |r: &mut PartialObjectMeta<ReplicaSet>| {
            r.metadata.managed_fields = None;
            r.metadata.annotations = None;
            r.metadata.labels = None;
        },
    );
    let (reports, report_stream) = reflect(
        Api::all(client.clone()),
        wc.clone(),
        |r: &mut ZombieReport| {
            r.metadata.managed_fields = None;
        },
    );
    let (policies, policy_stream) = reflect(
        Api::all(client.clone()),
        wc.clone(),
        |p: &mut ReaperPolicy| {
            p.metadata.managed_fields = None;
        },
    );
    let (jobs, job_stream) = if settings.policy_reports != PolicyReports::Off {
        let (store, stream) = reflect(
            Api::all(client.clone()),
            wc,
            |j: &mut PartialObjectMeta<Job>| {
                j.metadata.managed_fields = None;
                j.metadata.annotations = None;
                j.metadata.labels = None;
            },
        );
        (Some(store), Some(stream))
    } else {
        (None, None)
    };
    let ctx = Arc::new(Context::new(
        client,
        Stores {
            policies,
            namespaces,
            pods,
            replica_sets,
            reports,
            jobs,
        },
        settings,
        metrics,
        identity,
    ));
    // Every change, of any kind, only marks the state dirty; polling the streams is also what
    // keeps the reflectors' stores current.
    fn changes<K, E: std::fmt::Display>(
        s: impl Stream<Item = Result<K, E>> + Send + 'static,
    ) -> futures::stream::BoxStream<'static, ()> {
        s.map(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "watch error (retrying with backoff)");
            }
        })
        .boxed()
    }
    let all = futures::stream::select_all(
        [
            Some(changes(policy_stream)),
            Some(changes(ns_stream)),
            Some(changes(pod_stream)),
            Some(changes(rs_stream)),
            Some(changes(report_stream)),
            job_stream.map(changes),
        ]
        .into_iter()
        .flatten(),
    );
    tracing::info!("policy controller starting");
    batch_loop(ctx, all, batch_window, stop).await;
    tracing::info!("policy controller stopped");
}

/// Runs [`reconcile`] when something changed (at most once per `window`), when an action falls
/// due, and again after [`ERROR_REQUEUE`] when a batch failed; until `stop` fires (a batch in
/// flight finishes first). `changes` is drained by a task of its own, so the reflectors behind it
/// keep their stores current while a batch runs (a batch first waits for their initial lists).
pub async fn batch_loop(
    ctx: Arc<Context>,
    changes: impl Stream<Item = ()> + Send + 'static,
    window: Duration,
    stop: CancellationToken,
) {
    use tokio::time::Instant as At;
    let changed = Arc::new(tokio::sync::Notify::new());
    let drain = {
        let changed = changed.clone();
        tokio::spawn(async move {
            let mut changes = std::pin::pin!(changes);
            while changes.next().await.is_some() {
                // Stores one permit at most: a burst is one wake-up.
                changed.notify_one();
            }
        })
    };
    let mut dirty = true;
    let mut not_before = At::now();
    let mut due: Option<At> = None;
    loop {
        let wake = if dirty { Some(not_before) } else { due };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = changed.notified() => dirty = true,
            _ = tokio::time::sleep_until(wake.unwrap_or_else(At::now)), if wake.is_some() => {
                dirty = false;
                not_before = At::now() + window;
                match reconcile(ctx.clone()).await {
                    Ok(next) => due = next.map(|d| At::now() + d),
                    Err(e) => {
                        tracing::warn!(error = %e, "batch failed; retrying");
                        dirty = true;
                        not_before = At::now() + ERROR_REQUEUE;
                    }
                }
            }
        }
    }
    drain.abort();
}

/// Reconcile against a mocked API server (`tower_test::mock::pair`): which calls are made, in
/// which order, with which bodies. Scenarios: status written only when it changed; Events at the
/// threshold and not again within the interval; a restart patches the Deployment template once
/// per cooldown and records an Event; a live `restartedAt` within the cooldown blocks it.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ContainerZombies, ReaperPolicySpec, ZombieAction, ZombieReportSpec};
    use http::{Method, Request, Response};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;
    use kube::client::Body;
    use kube::core::PartialObjectMetaExt;
    use reflector::store::Writer;
    use serde_json::{Value, json};
    use std::pin::pin;
    use tower_test::mock;

    type Handle = mock::Handle<Request<Body>, Response<Body>>;

    const NOW: &str = "2026-03-01T12:00:00Z";

    fn fill<K>(items: Vec<K>) -> (Store<K>, Writer<K>)
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for i in items {
            writer.apply_watcher_event(&watcher::Event::InitApply(i));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        (reader, writer)
    }

    struct Scene {
        policy: ReaperPolicy,
        pod_owner: Option<OwnerReference>,
        zombies: u32,
    }

    fn policy(action: ZombieAction, status: Option<ReaperPolicyStatus>) -> ReaperPolicy {
        let mut p = ReaperPolicy::new(
            "web",
            ReaperPolicySpec {
                zombies: crate::crd::ZombiePolicy {
                    threshold: 3,
                    action,
                    cooldown: "1h".into(),
                },
                ..Default::default()
            },
        );
        p.metadata.generation = Some(2);
        p.metadata.resource_version = Some("7".into());
        p.status = status;
        p
    }

    /// The context for a scene, and the writers that must outlive it.
    fn context(scene: &Scene, client: Client) -> (Arc<Context>, impl Sized + use<>) {
        context_with(scene, client, Settings::default())
    }

    /// [`context`] with these settings; the writers are (policies, namespaces, pods, replica
    /// sets, reports).
    #[allow(clippy::type_complexity)]
    fn context_with(
        scene: &Scene,
        client: Client,
        settings: Settings,
    ) -> (
        Arc<Context>,
        (
            Writer<ReaperPolicy>,
            Writer<PartialObjectMeta<Namespace>>,
            Writer<PartialObjectMeta<Pod>>,
            Writer<PartialObjectMeta<ReplicaSet>>,
            Writer<ZombieReport>,
        ),
    ) {
        let ns = ObjectMeta {
            name: Some("shop".into()),
            labels: Some(BTreeMap::from([(
                keys::LABEL_INJECT.to_string(),
                keys::INJECT_ENABLED.to_string(),
            )])),
            ..Default::default()
        }
        .into_response_partial::<Namespace>();
        let pod = ObjectMeta {
            name: Some("web-1".into()),
            namespace: Some("shop".into()),
            uid: Some("pod-uid-1".into()),
            owner_references: scene.pod_owner.clone().map(|o| vec![o]),
            ..Default::default()
        }
        .into_response_partial::<Pod>();
        let rs = ObjectMeta {
            name: Some("web-7d9f".into()),
            namespace: Some("shop".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "web".into(),
                uid: "deploy-uid".into(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..Default::default()
        }
        .into_response_partial::<ReplicaSet>();
        let report = zombie_report(scene.zombies);
        let (policies, w1) = fill(vec![scene.policy.clone()]);
        let (namespaces, w2) = fill(vec![ns]);
        let (pods, w3) = fill(vec![pod]);
        let (replica_sets, w4) = fill(vec![rs]);
        let (reports, w5) = fill(vec![report]);
        let mut ctx = Context::new(
            client,
            Stores {
                policies,
                namespaces,
                pods,
                replica_sets,
                reports,
                jobs: None,
            },
            settings,
            OperatorMetrics::register(&crate::metrics::Metrics::new()),
            "test-operator".into(),
        );
        ctx.clock = Box::new(|| NOW.parse().unwrap());
        (Arc::new(ctx), (w1, w2, w3, w4, w5))
    }

    /// node-1's report: `zombies` in container `app` of web-1, held by `php-fpm`.
    fn zombie_report(zombies: u32) -> ZombieReport {
        ZombieReport::new(
            "node-1",
            ZombieReportSpec {
                node_name: "node-1".into(),
                zombies: zombies.into(),
                containers: vec![ContainerZombies {
                    pod_uid: "pod-uid-1".into(),
                    container_id: "a".repeat(64),
                    container: Some("app".into()),
                    count: zombies,
                    parents: vec![crate::crd::ZombieParent {
                        pid: 7,
                        comm: "php-fpm".into(),
                        count: zombies,
                        oldest_age_seconds: 60,
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    fn rs_owner() -> Option<OwnerReference> {
        Some(OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web-7d9f".into(),
            uid: "rs-uid".into(),
            controller: Some(true),
            block_owner_deletion: None,
        })
    }

    /// The next request, which must be `method` on `path` (query included); returns its JSON body.
    async fn expect(
        handle: &mut std::pin::Pin<&mut Handle>,
        method: Method,
        path: &str,
        respond: impl FnOnce(&Value) -> Value,
    ) -> Value {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request; expected {method} {path}"))
            .expect("client dropped");
        assert_eq!(req.method(), method, "{}", req.uri());
        assert_eq!(req.uri().to_string(), path);
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let response = respond(&body);
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&response).unwrap()))
                .unwrap(),
        );
        body
    }

    /// A batch that only rewrites the (stale) status: no Event, no restart, nothing else.
    async fn status_only_pass(ctx: &Arc<Context>, handle: &mut std::pin::Pin<&mut Handle>) {
        let run = tokio::spawn(reconcile(ctx.clone()));
        expect(handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        run.await.unwrap().unwrap();
        no_more_requests(handle).await;
    }

    async fn no_more_requests(handle: &mut std::pin::Pin<&mut Handle>) {
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
        {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }

    fn echo_policy(body: &Value) -> Value {
        let mut p = serde_json::to_value(policy(ZombieAction::Event, None)).unwrap();
        p["status"] = body["status"].clone();
        p
    }

    fn echo(body: &Value) -> Value {
        let mut b = body.clone();
        if b["metadata"].is_object() {
            b["metadata"]["resourceVersion"] = json!("1");
        }
        b
    }

    const STATUS_PATH: &str = "/apis/reaper.dev/v1alpha1/reaperpolicies/web/status?&force=true&fieldManager=reaper-operator";
    const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/shop/events?";
    const DEPLOY_PATH: &str = "/apis/apps/v1/namespaces/shop/deployments/web";
    const RESTART_EVENTS_PATH: &str = "/api/v1/namespaces/shop/events?&fieldSelector=involvedObject.uid%3Ddeploy-uid%2Creason%3DZombieRestart";

    /// A core EventList holding Events created at `created`.
    fn events(created: &[&str]) -> Value {
        let items: Vec<Value> = created
            .iter()
            .map(|at| {
                json!({
                    "metadata": {"name": format!("web.{at}"), "namespace": "shop", "creationTimestamp": at},
                    "involvedObject": {"kind": "Deployment", "name": "web", "uid": "deploy-uid"},
                    "reason": "ZombieRestart"
                })
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items})
    }

    fn deployment(restarted_at: Option<&str>) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "deploy-uid"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}}}
        });
        if let Some(at) = restarted_at {
            d["spec"]["template"]["metadata"]["annotations"] =
                json!({keys::ANNOTATION_RESTARTED_AT: at});
        }
        d
    }

    /// A mocked API server (`handle`), a scene (one policy without status, one pod with that
    /// many zombies and that owner) and its context (`ctx`, with the writers `w` it needs).
    macro_rules! start {
        ($handle:ident, $ctx:ident, $w:ident, $scene:ident = $action:expr, $owner:expr, $zombies:expr) => {
            let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
            let mut $handle = pin!(handle);
            let $scene = Scene {
                policy: policy($action, None),
                pod_owner: $owner,
                zombies: $zombies,
            };
            let ($ctx, $w) = context(&$scene, Client::new(service, "default"));
        };
    }

    #[tokio::test]
    async fn status_is_applied_when_it_changes_and_left_alone_when_not() {
        start!(handle, ctx, _w, scene = ZombieAction::Event, rs_owner(), 1);
        let run = tokio::spawn(reconcile(ctx.clone()));
        let body = expect(&mut handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        assert_eq!(body["apiVersion"], "reaper.dev/v1alpha1");
        assert_eq!(body["kind"], "ReaperPolicy");
        let status = &body["status"];
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(status["matchedNamespaces"], 1);
        assert_eq!(status["matchedPods"], 1);
        assert_eq!(status["unprotectedPods"], 1);
        assert_eq!(status["zombies"], 1);
        assert_eq!(status["lastUpdated"], NOW);
        assert_eq!(status["conditions"][0]["type"], "Ready");
        assert_eq!(status["conditions"][0]["reason"], "Reconciled");
        assert_eq!(status["topOffenders"][0]["pod"], "web-1");
        let action = run.await.unwrap().unwrap();
        assert_eq!(action, None);
        no_more_requests(&mut handle).await;

        // Same state, status already written (with an older lastUpdated): no API call at all.
        let mut written: ReaperPolicyStatus = serde_json::from_value(status.clone()).unwrap();
        written.last_updated = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        let scene = Scene {
            policy: policy(ZombieAction::Event, Some(written)),
            ..scene
        };
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let mut handle = pin!(handle);
        let (ctx, _w) = context(&scene, Client::new(service, "default"));
        reconcile(ctx.clone()).await.unwrap();
        no_more_requests(&mut handle).await;
        let text = {
            let m = crate::metrics::Metrics::new();
            let om = OperatorMetrics::register(&m);
            om.set_policies(&BTreeMap::from([(
                "web".to_string(),
                ReaperPolicyStatus::default(),
            )]));
            m.encode()
        };
        assert!(text.contains("reaper_policy_zombies{policy=\"web\"} 0"));
    }

    #[tokio::test]
    async fn threshold_records_one_event_per_interval() {
        start!(handle, ctx, _w, scene = ZombieAction::Event, rs_owner(), 4);
        let run = tokio::spawn(reconcile(ctx.clone()));
        expect(&mut handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        let event = expect(&mut handle, Method::POST, EVENTS_PATH, echo).await;
        assert_eq!(event["reason"], keys::REASON_ZOMBIES_DETECTED);
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reportingController"], keys::EVENT_REPORTER_OPERATOR);
        assert_eq!(event["reportingInstance"], "test-operator");
        assert_eq!(
            event["regarding"],
            json!({"apiVersion": "v1", "kind": "Pod", "name": "web-1", "namespace": "shop", "uid": "pod-uid-1"})
        );
        let note = event["note"].as_str().unwrap();
        assert!(
            note.starts_with("4 zombie processes (threshold 3, policy web)"),
            "{note}"
        );
        // Requeued for when the next Event would be allowed.
        let action = run.await.unwrap().unwrap();
        assert_eq!(action, Some(Duration::from_secs(15 * 60)));

        // Again (e.g. triggered by a report update): the status is stale in this scene's
        // policy object, but no second Event within the interval.
        status_only_pass(&ctx, &mut handle).await;
    }

    #[tokio::test]
    async fn restart_patches_the_deployment_template_once_per_cooldown() {
        start!(
            handle,
            ctx,
            _w,
            scene = ZombieAction::Restart,
            rs_owner(),
            3
        );
        let run = tokio::spawn(reconcile(ctx.clone()));
        expect(&mut handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        expect(&mut handle, Method::POST, EVENTS_PATH, echo).await;
        expect(&mut handle, Method::GET, DEPLOY_PATH, |_| deployment(None)).await;
        // The restart's Event first (none recorded yet), then the patch.
        expect(&mut handle, Method::GET, RESTART_EVENTS_PATH, |_| {
            events(&[])
        })
        .await;
        let event = expect(&mut handle, Method::POST, EVENTS_PATH, echo).await;
        let patch = expect(
            &mut handle,
            Method::PATCH,
            &format!("{DEPLOY_PATH}?&fieldManager=reaper-operator"),
            |_| deployment(Some(NOW)),
        )
        .await;
        assert_eq!(
            patch,
            json!({"spec": {"template": {"metadata": {"annotations": {keys::ANNOTATION_RESTARTED_AT: NOW}}}}})
        );
        assert_eq!(event["reason"], keys::REASON_ZOMBIE_RESTART);
        assert_eq!(
            event["regarding"],
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": "shop", "uid": "deploy-uid"})
        );
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains("pod shop/web-1 holds 3 zombie processes")
        );
        run.await.unwrap().unwrap();
        assert_eq!(ctx.metrics.restarts.get(), 1);

        // Right after: neither a restart (cooldown) nor an Event (interval).
        status_only_pass(&ctx, &mut handle).await;
    }

    #[tokio::test]
    async fn live_restarted_at_within_cooldown_blocks_the_restart() {
        start!(
            handle,
            ctx,
            _w,
            scene = ZombieAction::Restart,
            rs_owner(),
            5
        );
        let run = tokio::spawn(reconcile(ctx.clone()));
        expect(&mut handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        expect(&mut handle, Method::POST, EVENTS_PATH, echo).await;
        // Someone ran `kubectl rollout restart` 10 minutes ago.
        expect(&mut handle, Method::GET, DEPLOY_PATH, |_| {
            deployment(Some("2026-03-01T11:50:00Z"))
        })
        .await;
        run.await.unwrap().unwrap();
        no_more_requests(&mut handle).await;
        let log = ctx.log();
        let remembered = log.restarts.values().next().copied();
        assert_eq!(remembered, Some("2026-03-01T11:50:00Z".parse().unwrap()));
    }

    /// A leader that recorded the restart's Event and died before patching: its successor
    /// restarts without a second Event; an Event older than the cooldown does not count.
    #[tokio::test]
    async fn an_earlier_leaders_restart_event_is_not_repeated() {
        start!(
            handle,
            ctx,
            _w,
            scene = ZombieAction::Restart,
            rs_owner(),
            5
        );
        let run = tokio::spawn(reconcile(ctx.clone()));
        expect(&mut handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        expect(&mut handle, Method::POST, EVENTS_PATH, echo).await;
        expect(&mut handle, Method::GET, DEPLOY_PATH, |_| deployment(None)).await;
        expect(&mut handle, Method::GET, RESTART_EVENTS_PATH, |_| {
            events(&["2026-03-01T10:00:00Z", "2026-03-01T11:59:58Z"])
        })
        .await;
        // No POST of another Event: straight to the patch.
        expect(
            &mut handle,
            Method::PATCH,
            &format!("{DEPLOY_PATH}?&fieldManager=reaper-operator"),
            |_| deployment(Some(NOW)),
        )
        .await;
        run.await.unwrap().unwrap();
        no_more_requests(&mut handle).await;
        assert_eq!(ctx.metrics.restarts.get(), 1);
    }

    #[tokio::test]
    async fn an_old_restart_event_does_not_stop_a_new_one() {
        start!(
            handle,
            ctx,
            _w,
            scene = ZombieAction::Restart,
            rs_owner(),
            5
        );
        let run = tokio::spawn(reconcile(ctx.clone()));
        expect(&mut handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        expect(&mut handle, Method::POST, EVENTS_PATH, echo).await;
        expect(&mut handle, Method::GET, DEPLOY_PATH, |_| deployment(None)).await;
        // Two hours old: outside the 1 h cooldown.
        expect(&mut handle, Method::GET, RESTART_EVENTS_PATH, |_| {
            events(&["2026-03-01T10:00:00Z"])
        })
        .await;
        let event = expect(&mut handle, Method::POST, EVENTS_PATH, echo).await;
        assert_eq!(event["reason"], keys::REASON_ZOMBIE_RESTART);
        expect(
            &mut handle,
            Method::PATCH,
            &format!("{DEPLOY_PATH}?&fieldManager=reaper-operator"),
            |_| deployment(Some(NOW)),
        )
        .await;
        run.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn bare_pods_get_events_but_no_restart_and_api_errors_surface() {
        start!(handle, ctx, _w, scene = ZombieAction::Restart, None, 9);
        let run = tokio::spawn(reconcile(ctx.clone()));
        // The status write is refused: the reconcile fails with an actionable error.
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::PATCH);
        send.send_response(
            Response::builder()
                .status(403)
                .body(Body::from(
                    serde_json::to_vec(&json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "forbidden", "reason": "Forbidden", "code": 403
                    }))
                    .unwrap(),
                ))
                .unwrap(),
        );
        let err = run.await.unwrap().unwrap_err();
        assert_eq!(err.metric_label(), "status_error");
        assert!(err.to_string().contains("reaperpolicies/status"), "{err}");

        let run = tokio::spawn(reconcile(ctx.clone()));
        expect(&mut handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        let event = expect(&mut handle, Method::POST, EVENTS_PATH, echo).await;
        assert_eq!(event["regarding"]["kind"], "Pod");
        run.await.unwrap().unwrap();
        no_more_requests(&mut handle).await;
    }

    /// Batches run per window, not per change: a burst of changes costs one batch at once and
    /// one at the window's end; a failed batch is retried; `stop` ends the loop.
    #[tokio::test(start_paused = true)]
    async fn the_batch_loop_coalesces_changes_and_retries_failures() {
        start!(handle, ctx, _w, scene = ZombieAction::Event, rs_owner(), 1);
        let batches = |ctx: &Context, result: &str| {
            ctx.metrics
                .reconcile_total
                .get_or_create(&crate::operator::metrics::ResultLabels {
                    result: result.into(),
                })
                .get()
        };
        let (tx, rx) = futures::channel::mpsc::unbounded::<()>();
        let stop = CancellationToken::new();
        let run = tokio::spawn(batch_loop(
            ctx.clone(),
            rx,
            Duration::from_secs(1),
            stop.clone(),
        ));
        // The first batch runs at once; its status write fails.
        let (req, send) = handle.next_request().await.expect("a status write");
        assert_eq!(req.method(), Method::PATCH);
        send.send_response(Response::builder().status(500).body(Body::empty()).unwrap());
        // Retried after ERROR_REQUEUE, and changes meanwhile do not bring it forward.
        let failed_at = tokio::time::Instant::now();
        for _ in 0..5 {
            tx.unbounded_send(()).unwrap();
        }
        tokio::time::sleep(ERROR_REQUEUE - Duration::from_secs(1)).await;
        no_more_requests(&mut handle).await;
        expect(&mut handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        assert!(failed_at.elapsed() >= ERROR_REQUEUE);
        assert_eq!(batches(&ctx, "status_error"), 1);
        // A burst of 100 changes: one batch, at the end of the window (the status in the store is
        // still the stale one, so the batch writes it again).
        for _ in 0..100 {
            tx.unbounded_send(()).unwrap();
        }
        expect(&mut handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(batches(&ctx, "ok"), 2);
        stop.cancel();
        run.await.unwrap();
        no_more_requests(&mut handle).await;
    }

    /// Answers the next request, which must be `method` on `path`, with an API error `code`.
    async fn refuse(
        handle: &mut std::pin::Pin<&mut Handle>,
        method: Method,
        path: &str,
        code: u16,
    ) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request; expected {method} {path}"))
            .expect("client dropped");
        assert_eq!(req.method(), method, "{}", req.uri());
        assert_eq!(req.uri().to_string(), path);
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "refused by the test", "reason": if code == 404 { "NotFound" } else { "InternalError" },
            "code": code
        });
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
    }

    const OPENREPORTS_DISCOVERY: &str = "/apis/openreports.io/v1alpha1";
    const WGPOLICY_DISCOVERY: &str = "/apis/wgpolicyk8s.io/v1alpha2";
    const WGPOLICY_LIST: &str = "/apis/wgpolicyk8s.io/v1alpha2/policyreports?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dreaper-operator";
    const WGPOLICY_APPLY: &str = "/apis/wgpolicyk8s.io/v1alpha2/namespaces/shop/policyreports/reaper?&force=true&fieldManager=reaper-operator";

    /// Discovery as an API server with only the wgpolicyk8s.io CRD answers it, then the list of
    /// the operator's PolicyReports (`stored`).
    async fn discover_wgpolicyk8s(handle: &mut std::pin::Pin<&mut Handle>, stored: Vec<Value>) {
        // An unserved group version: the API server answers in plain text, not with a Status.
        let (req, send) = handle.next_request().await.expect("a discovery request");
        assert_eq!(req.uri().to_string(), OPENREPORTS_DISCOVERY);
        send.send_response(
            Response::builder()
                .status(404)
                .header("content-type", "text/plain; charset=utf-8")
                .body(Body::from(b"404 page not found\n".to_vec()))
                .unwrap(),
        );
        expect(handle, Method::GET, WGPOLICY_DISCOVERY, |_| {
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "wgpolicyk8s.io/v1alpha2",
                   "resources": [{"name": "policyreports", "singularName": "policyreport", "namespaced": true,
                                  "kind": "PolicyReport", "verbs": ["create", "delete", "get", "list", "patch"]}]})
        })
        .await;
        expect(handle, Method::GET, WGPOLICY_LIST, |_| {
            json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReportList",
                   "metadata": {"resourceVersion": "5"}, "items": stored})
        })
        .await;
    }

    /// `--policy-reports=auto` with only wgpolicyk8s.io served: the PolicyReport is applied once,
    /// an unchanged batch sends nothing, a changed one applies again; a failed write fails the
    /// batch and the next one discovers again; a report already stored as desired is not rewritten.
    #[tokio::test]
    async fn policy_reports_are_discovered_and_applied_only_when_they_change() {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let mut handle = pin!(handle);
        let scene = Scene {
            policy: policy(ZombieAction::Event, None),
            pod_owner: rs_owner(),
            zombies: 2,
        };
        let settings = Settings {
            policy_reports: PolicyReports::Auto,
            ..Settings::default()
        };
        let (ctx, mut w) = context_with(&scene, Client::new(service, "default"), settings.clone());
        let run = tokio::spawn(reconcile(ctx.clone()));
        expect(&mut handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        discover_wgpolicyk8s(&mut handle, vec![]).await;
        let report = expect(&mut handle, Method::PATCH, WGPOLICY_APPLY, echo).await;
        assert_eq!(
            (&report["apiVersion"], &report["kind"]),
            (&json!("wgpolicyk8s.io/v1alpha2"), &json!("PolicyReport"))
        );
        assert_eq!(
            report["metadata"]["labels"][keys::LABEL_MANAGED_BY],
            keys::MANAGER_OPERATOR
        );
        assert!(report.get("source").is_none(), "not in the v1alpha2 schema");
        assert_eq!(
            report["summary"],
            json!({"pass": 0, "fail": 2, "warn": 0, "error": 0, "skip": 0})
        );
        let zombies = &report["results"][1];
        assert_eq!(
            (&zombies["rule"], &zombies["result"], &zombies["policy"]),
            (&json!(keys::RULE_ZOMBIES), &json!("fail"), &json!("web"))
        );
        assert_eq!(
            zombies["resources"],
            json!([{"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop", "name": "web", "uid": "deploy-uid"}])
        );
        assert_eq!(zombies["properties"]["parents"], "php-fpm");
        assert_eq!(
            zombies["timestamp"],
            json!({"seconds": NOW.parse::<Timestamp>().unwrap().as_second(), "nanos": 0})
        );
        // Requeued for the next discovery.
        assert_eq!(run.await.unwrap().unwrap(), Some(Duration::from_secs(300)));
        let writes = |ctx: &Context| {
            ctx.metrics
                .report_writes
                .get_or_create(&crate::operator::metrics::ReportWriteLabels {
                    operation: "apply".into(),
                    kind: "PolicyReport".into(),
                })
                .get()
        };
        assert_eq!(writes(&ctx), 1);

        // Nothing changed: the (stale) status again, no report request.
        status_only_pass(&ctx, &mut handle).await;

        // The zombies go, and the write fails: the batch fails; the next discovers again.
        w.4.apply_watcher_event(&watcher::Event::Apply(zombie_report(0)));
        let run = tokio::spawn(reconcile(ctx.clone()));
        expect(&mut handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        refuse(&mut handle, Method::PATCH, WGPOLICY_APPLY, 500).await;
        let err = run.await.unwrap().unwrap_err();
        assert_eq!(err.metric_label(), "report_error");
        assert!(
            err.to_string()
                .contains("patch and create on policyreports.wgpolicyk8s.io"),
            "{err}"
        );
        let run = tokio::spawn(reconcile(ctx.clone()));
        expect(&mut handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        discover_wgpolicyk8s(&mut handle, vec![report.clone()]).await;
        let fixed = expect(&mut handle, Method::PATCH, WGPOLICY_APPLY, echo).await;
        assert_eq!(fixed["results"][1]["result"], "pass");
        assert_eq!(fixed["summary"]["fail"], 1);
        run.await.unwrap().unwrap();
        assert_eq!(writes(&ctx), 2);

        // A new leader finds the report stored as it would write it: no write.
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let mut handle = pin!(handle);
        let (ctx, _w) = context_with(
            &Scene {
                zombies: 0,
                ..scene
            },
            Client::new(service, "default"),
            settings,
        );
        let run = tokio::spawn(reconcile(ctx.clone()));
        expect(&mut handle, Method::PATCH, STATUS_PATH, echo_policy).await;
        discover_wgpolicyk8s(&mut handle, vec![fixed]).await;
        run.await.unwrap().unwrap();
        no_more_requests(&mut handle).await;
    }
}
