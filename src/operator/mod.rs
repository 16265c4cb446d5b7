//! Operator: ReaperPolicy status from node ZombieReports, Events, opt-in restarts of unprotected
//! workloads, leader election, and self-managed webhook certificates.
//!
//! - [`index`]: the cluster as plain data (pods, owners, zombies per pod)
//! - [`status`]: the pure decision, once per batch (indexes → desired status of every policy)
//! - [`actions`]: Events and restarts a batch decides, and the log that rate-limits them
//! - [`reports`]: the policy report of every governed namespace (pure); [`report_writer`] discovers
//!   the served report API and writes the reports that changed
//! - [`controller`]: reflectors, the batch loop, status writes, Events, restarts
//! - [`leader`]: Lease-based leader election; only the leader reconciles and manages certificates
//! - [`certs`]: CA + serving certificate rotation (pure) and its Secret/MWC shell
pub mod actions;
pub mod certs;
pub mod controller;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod report_writer;
pub mod reports;
pub mod status;

use crate::component::Component;
use crate::{keys, metrics::Metrics};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use metrics::{OperatorMetrics, StepLabels};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long the leader's controller gets to finish in-flight reconciles when stepping down.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry delays of the certificate loop after an error.
const CERT_MIN_RETRY: Duration = Duration::from_secs(1);
const CERT_MAX_RETRY: Duration = Duration::from_secs(60);
/// Longest sleep of the certificate loop (a safety net next to the Secret/MWC watches).
const CERT_MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Flags of `reaper-controller operator`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub admin: crate::component::AdminArgs,
    /// Elect a leader on the Lease `reaper-operator` (only the leader reconciles and manages
    /// certificates); `--leader-election=false` for a single replica.
    #[arg(long, env = "REAPER_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub leader_election: bool,
    /// The operator's own namespace (Lease, certificate Secrets). Default: `POD_NAMESPACE`.
    #[arg(long, env = "REAPER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Lease validity after each renewal; a dead leader is replaced within this time.
    #[arg(long, env = "REAPER_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// The leader renews this long before the Lease expires (whole seconds, < --lease-duration).
    #[arg(long, env = "REAPER_LEASE_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_grace: Duration,
    /// MutatingWebhookConfiguration whose webhooks get the `caBundle` (self-managed certificates,
    /// with --cert-secret).
    #[arg(long, env = "REAPER_WEBHOOK_CONFIG")]
    pub webhook_config: Option<String>,
    /// Secret (kubernetes.io/tls + ca.crt) the webhook pods mount; the CA lives in `<name>-ca`.
    #[arg(long, env = "REAPER_CERT_SECRET")]
    pub cert_secret: Option<String>,
    /// Webhook Service name: the serving certificate is for `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`
    /// and `<svc>.<ns>.svc.cluster.local`.
    #[arg(long, env = "REAPER_WEBHOOK_SERVICE", default_value = "reaper-webhook")]
    pub webhook_service: String,
    /// Lifetime of a self-managed CA.
    #[arg(long, env = "REAPER_CA_VALIDITY", default_value = "365d", value_parser = humantime::parse_duration)]
    pub ca_validity: Duration,
    /// Start replacing the CA when it has less than this left.
    #[arg(long, env = "REAPER_CA_RENEW_BEFORE", default_value = "60d", value_parser = humantime::parse_duration)]
    pub ca_renew_before: Duration,
    /// Lifetime of a serving certificate (never past its CA's).
    #[arg(long, env = "REAPER_CERT_VALIDITY", default_value = "90d", value_parser = humantime::parse_duration)]
    pub cert_validity: Duration,
    /// Renew the serving certificate when it has less than this left.
    #[arg(long, env = "REAPER_CERT_RENEW_BEFORE", default_value = "30d", value_parser = humantime::parse_duration)]
    pub cert_renew_before: Duration,
    /// Wait between adding a new CA to the bundle and serving a certificate it signed, and between
    /// that switch and dropping the old CA (API server and webhook pods catch up meanwhile).
    #[arg(long, env = "REAPER_CERT_OVERLAP", default_value = "10m", value_parser = humantime::parse_duration)]
    pub cert_overlap: Duration,
    #[command(flatten)]
    pub scope: crate::scope::ScopeArgs,
    /// Length of `status.topOffenders`.
    #[arg(long, env = "REAPER_TOP_OFFENDERS", default_value_t = 5)]
    pub top_offenders: usize,
    /// Minimum time between two `ZombiesDetected` Events on one pod.
    #[arg(long, env = "REAPER_EVENT_INTERVAL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub event_interval: Duration,
    /// Allow the Restart action (`kubectl rollout restart` of the Deployment, StatefulSet or
    /// DaemonSet of a pod with zombies). Needs `patch` on those workloads; off, policies asking
    /// for it get Events only.
    #[arg(long, env = "REAPER_RESTART_WORKLOADS", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub restart_workloads: bool,
    /// Write a policy report per governed namespace (rules `pid1-is-init` and `zombies`, for
    /// Policy Reporter and Kyverno's tooling): `auto` writes `openreports.io/v1alpha1` Reports if
    /// that CRD is served, else `wgpolicyk8s.io/v1alpha2` PolicyReports, else none (checked at
    /// start, every 5 minutes and after a failed write); `openreports` or `wgpolicyk8s` write only
    /// that kind. Needs create/patch/get/list/delete on the report kind and list/watch on Jobs.
    #[arg(long, env = "REAPER_POLICY_REPORTS", value_enum, default_value_t = reports::PolicyReports::Off)]
    pub policy_reports: reports::PolicyReports,
    /// Pod, namespace and report changes within this window are reconciled together.
    #[arg(long, env = "REAPER_BATCH_WINDOW", default_value = "1s", value_parser = humantime::parse_duration)]
    pub batch_window: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the operator's namespace is unknown: set --namespace or POD_NAMESPACE (downward API metadata.namespace)"
    )]
    NoNamespace,
    #[error("{0}")]
    Flags(String),
    #[error(
        "--cert-secret and --webhook-config go together (self-managed certificates); set both or neither"
    )]
    HalfCertFlags,
    #[error("connecting to the Kubernetes API: {0} (run in a cluster or set KUBECONFIG)")]
    Kube(#[source] kube::Error),
    #[error(transparent)]
    Component(#[from] crate::component::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub settings: status::Settings,
    pub leader: Option<leader::LeaderSettings>,
    /// Self-managed certificates: settings, `--cert-secret`, `--webhook-config`.
    pub certs: Option<(certs::CertSettings, String, String)>,
    pub identity: String,
}

impl Args {
    /// Checks the flags; `pod_namespace` is `POD_NAMESPACE`.
    pub fn config(&self, pod_namespace: Option<&str>) -> Result<Config> {
        let namespace = self
            .namespace
            .as_deref()
            .or(pod_namespace)
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from);
        let identity = leader::identity(std::env::var("POD_NAME").ok().as_deref());
        let leader = match (self.leader_election, &namespace) {
            (false, _) => None,
            (true, None) => return Err(Error::NoNamespace),
            (true, Some(ns)) => {
                let s = leader::LeaderSettings {
                    namespace: ns.clone(),
                    lease_name: keys::LEASE_OPERATOR.to_string(),
                    identity: identity.clone(),
                    duration: self.lease_duration,
                    grace: self.lease_grace,
                };
                s.validate().map_err(Error::Flags)?;
                Some(s)
            }
        };
        let certs = match (&self.cert_secret, &self.webhook_config) {
            (None, None) => None,
            (Some(secret), Some(mwc)) => {
                let ns = namespace.clone().ok_or(Error::NoNamespace)?;
                let s = certs::CertSettings {
                    service: self.webhook_service.trim().to_string(),
                    namespace: ns,
                    ca_validity: self.ca_validity,
                    ca_renew_before: self.ca_renew_before,
                    cert_validity: self.cert_validity,
                    cert_renew_before: self.cert_renew_before,
                    overlap: self.cert_overlap,
                };
                s.validate().map_err(|e| Error::Flags(e.to_string()))?;
                Some((s, secret.clone(), mwc.clone()))
            }
            _ => return Err(Error::HalfCertFlags),
        };
        if self.batch_window.is_zero() || self.event_interval.is_zero() {
            return Err(Error::Flags(
                "--batch-window and --event-interval must be positive".into(),
            ));
        }
        let scope = self.scope.scope(namespace.as_deref());
        Ok(Config {
            namespace: namespace.unwrap_or_default(),
            settings: status::Settings {
                scope,
                top_offenders: self.top_offenders,
                event_interval: self.event_interval,
                restart_workloads: self.restart_workloads,
                policy_reports: self.policy_reports,
                ..status::Settings::default()
            },
            leader,
            certs,
            identity,
        })
    }
}

/// Run until SIGTERM/SIGINT.
pub async fn run(args: Args) -> Result<()> {
    let config = args.config(std::env::var("POD_NAMESPACE").ok().as_deref())?;
    let client = kube::Client::try_default().await.map_err(Error::Kube)?;
    run_with(args, config, client, crate::shutdown::requested("operator")).await
}

/// Run with a given client until `stop` resolves.
pub async fn run_with(
    args: Args,
    config: Config,
    client: kube::Client,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let registry = Metrics::new();
    let metrics = OperatorMetrics::register(&registry);
    let component = Component::start("operator", &args.admin, registry).await?;
    let tasks = component.tasks();
    let shutdown = component.shutdown();

    // Ready (leader or not) once the API server answers; this task ends by design.
    let (c, r, s) = (client.clone(), component.ready.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut retry = Duration::from_millis(500);
        loop {
            match c.apiserver_version().await {
                Ok(v) => {
                    tracing::info!(server = %v.git_version, "API server reachable; ready");
                    r.set(true);
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "API server not reachable yet"),
            }
            tokio::select! {
                _ = s.cancelled() => return,
                _ = tokio::time::sleep(leader::jittered(retry)) => {}
            }
            retry = (retry * 2).min(Duration::from_secs(30));
        }
    });

    let (leader_tx, leader_rx) = watch::channel(false);
    match config.leader.clone() {
        Some(settings) => {
            tracing::info!(lease = %settings.lease_name, namespace = %settings.namespace, identity = %settings.identity, "leader election on");
            tasks.spawn(
                "leader election",
                leader::run(client.clone(), settings, leader_tx, shutdown.clone()),
            );
        }
        None => {
            tracing::info!("leader election off: this replica leads");
            leader_tx.send_replace(true);
            // Keep the sender alive for the whole run.
            let s = shutdown.clone();
            tokio::spawn(async move {
                s.cancelled().await;
                drop(leader_tx);
            });
        }
    };

    tasks.spawn(
        "leader work",
        lead(
            client.clone(),
            config.clone(),
            args.batch_window,
            metrics.clone(),
            leader_rx,
            shutdown.clone(),
        ),
    );
    Ok(component.run_until(stop, STOP_TIMEOUT).await?)
}

/// Runs the controller (and the certificate loop) whenever this replica leads.
async fn lead(
    client: kube::Client,
    config: Config,
    batch_window: Duration,
    metrics: OperatorMetrics,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = leader.wait_for(|l| *l) => if r.is_err() { return },
        }
        tracing::info!(identity = %config.identity, "leading: starting the policy controller");
        metrics.leader.set(1);
        let term = shutdown.child_token();
        let mut tasks = vec![tokio::spawn(controller::run(
            client.clone(),
            config.settings.clone(),
            metrics.clone(),
            config.identity.clone(),
            batch_window,
            term.clone(),
        ))];
        if let Some((settings, secret, mwc)) = config.certs.clone() {
            let manager = certs::CertManager::new(client.clone(), settings, secret, mwc);
            tasks.push(tokio::spawn(cert_loop(
                client.clone(),
                manager,
                metrics.clone(),
                term.clone(),
            )));
        }
        // A term task that ends on its own (its watches gone, a panic) ends this task too, which
        // the component supervisor turns into a restart.
        let early = tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = leader.wait_for(|l| !*l) => false,
            _ = futures::future::select_all(tasks.iter_mut()) => true,
        };
        if early {
            tracing::error!("a leader task stopped on its own");
            term.cancel();
            return;
        }
        tracing::info!("no longer leading: stopping");
        metrics.leader.set(0);
        term.cancel();
        for t in tasks {
            if tokio::time::timeout(STOP_TIMEOUT, t).await.is_err() {
                tracing::warn!("a leader task did not stop within {STOP_TIMEOUT:?}");
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Keeps the webhook certificates current: runs [`certs::CertManager::reconcile`] when due,
/// and at once when the Secrets or the MWC change (deleted by hand, reset by a chart upgrade).
async fn cert_loop(
    client: kube::Client,
    manager: certs::CertManager,
    metrics: OperatorMetrics,
    stop: CancellationToken,
) {
    let ns = manager.settings.namespace.clone();
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    let (secret, mwc) = (
        manager.cert_secret().to_string(),
        manager.webhook_config().to_string(),
    );
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let changes = futures::stream::select_all([
        watcher(secrets.clone(), by_name(&secret))
            .default_backoff()
            .map(|e| e.is_ok())
            .boxed(),
        watcher(
            secrets,
            by_name(&certs::CertSettings::ca_secret_name(&secret)),
        )
        .default_backoff()
        .map(|e| e.is_ok())
        .boxed(),
        watcher(
            Api::<MutatingWebhookConfiguration>::all(client),
            by_name(&mwc),
        )
        .default_backoff()
        .map(|e| e.is_ok())
        .boxed(),
    ])
    .filter(|ok| futures::future::ready(*ok));
    let mut changes = std::pin::pin!(changes);
    let mut retry = CERT_MIN_RETRY;
    loop {
        let now = Timestamp::now();
        let wait = match manager.reconcile(now).await {
            Ok(rotation) => {
                retry = CERT_MIN_RETRY;
                for step in &rotation.steps {
                    tracing::info!(secret = %secret, webhook_config = %mwc, ?step, "webhook certificates changed");
                    let label = match step {
                        certs::Step::NewCa { .. } => "new_ca",
                        certs::Step::BundleRepaired => "bundle_repaired",
                        certs::Step::ServingIssued { .. } => "serving_issued",
                        certs::Step::OldCasDropped => "old_cas_dropped",
                    };
                    metrics
                        .cert_steps
                        .get_or_create(&StepLabels {
                            step: label.to_string(),
                        })
                        .inc();
                }
                if let Some(expiry) = certs::cert_expiry(&rotation.stored.cert) {
                    metrics.cert_expiry.set(expiry);
                }
                let wait: Duration = rotation
                    .next_check
                    .duration_since(now)
                    .try_into()
                    .unwrap_or_default();
                tracing::debug!(next_check = %rotation.next_check, "webhook certificates checked");
                wait.clamp(Duration::from_secs(1), CERT_MAX_SLEEP)
            }
            Err(e) => {
                tracing::warn!(error = %e, "managing webhook certificates failed; retrying");
                metrics
                    .cert_steps
                    .get_or_create(&StepLabels {
                        step: "error".to_string(),
                    })
                    .inc();
                let d = leader::jittered(retry);
                retry = (retry * 2).min(CERT_MAX_RETRY);
                d
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = changes.next() => {
                // Coalesce the burst our own writes cause.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Args {
        crate::component::parse_flags(argv).unwrap()
    }

    #[test]
    fn defaults_and_validation() {
        let a = parse(&[]);
        assert!(a.leader_election);
        assert_eq!(a.lease_duration, Duration::from_secs(15));
        assert!(matches!(a.config(None), Err(Error::NoNamespace)));
        let c = a.config(Some("reaper-system")).unwrap();
        assert_eq!(c.namespace, "reaper-system");
        assert!(c.certs.is_none());
        assert!(c.settings.scope.excluded.contains("reaper-system"));
        assert!(c.settings.scope.excluded.contains("kube-system"));
        let l = c.leader.unwrap();
        assert_eq!(l.lease_name, "reaper-operator");

        assert_eq!(c.settings.policy_reports, reports::PolicyReports::Off);

        let a = parse(&["--leader-election=false"]);
        let c = a.config(None).unwrap();
        assert!(c.leader.is_none());
        for (value, want) in [
            ("auto", reports::PolicyReports::Auto),
            ("openreports", reports::PolicyReports::OpenReports),
            ("wgpolicyk8s", reports::PolicyReports::WgPolicyK8s),
            ("off", reports::PolicyReports::Off),
        ] {
            let a = parse(&[&format!("--policy-reports={value}")]);
            assert_eq!(a.config(Some("ns")).unwrap().settings.policy_reports, want);
        }
        assert!(crate::component::parse_flags::<Args>(&["--policy-reports=kyverno"]).is_err());

        let a = parse(&["--cert-secret", "reaper-webhook-tls"]);
        assert!(matches!(a.config(Some("ns")), Err(Error::HalfCertFlags)));
        let a = parse(&[
            "--cert-secret",
            "reaper-webhook-tls",
            "--webhook-config",
            "reaper",
            "--namespace",
            "other",
        ]);
        let c = a.config(Some("ns")).unwrap();
        let (s, secret, mwc) = c.certs.unwrap();
        assert_eq!(
            (secret.as_str(), mwc.as_str()),
            ("reaper-webhook-tls", "reaper")
        );
        assert_eq!(s.namespace, "other", "--namespace wins over POD_NAMESPACE");
        assert_eq!(s.dns_names()[2], "reaper-webhook.other.svc");

        let a = parse(&[
            "--cert-secret=s",
            "--webhook-config=m",
            "--cert-overlap=20d",
        ]);
        let err = a.config(Some("ns")).unwrap_err().to_string();
        assert!(err.contains("--ca-renew-before"), "{err}");
        let a = parse(&["--lease-grace=20s"]);
        assert!(a.config(Some("ns")).is_err());
    }
}
