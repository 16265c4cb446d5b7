//! Mutating admission webhook: fixes PID 1 of opted-in pods by sharing the PID namespace or by
//! wrapping container entrypoints with the `reaper` init.
//!
//! - [`plan`]: the pure decision (pod + policies + images → plan → JSONPatch)
//! - [`argv`]: effective argv and wrapping rules; [`images`]: image configs and the resolver trait
//! - [`pin`]: the digests argvs were read from (`reaper.dev/image-digests`, `--pin-digests`)
//! - [`review`]: AdmissionReview decoding/encoding; [`server`]: the axum router and handler
//! - [`events`]: skips and fallbacks as Events on the pod's owner (rate-limited, in the background)
//! - [`tls`]: reloading certificate resolver and the HTTPS accept loop; [`sources`]: policies
//!   and namespace labels from a file or the cluster
pub mod argv;
pub mod capability;
pub mod files;

pub mod decide;
pub mod events;
pub mod exposure;
pub mod install;
mod patch;
pub mod pin;
pub mod review;
pub mod server;
pub mod sources;
pub mod tls;

use crate::component::Component;
use crate::crd::Mode;
use crate::registry::{self, Registry};
use crate::{keys, metrics::Metrics};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long in-flight requests get to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate pair (and `--policies` file) are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Flags of `reaper-controller webhook`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// HTTPS address for AdmissionReview requests (`POST /mutate`).
    #[arg(long, env = "REAPER_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate (chain) for the HTTPS port; reloaded when it changes.
    #[arg(long, env = "REAPER_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key for the HTTPS port; reloaded when it changes.
    #[arg(long, env = "REAPER_TLS_KEY")]
    pub tls_key: PathBuf,
    #[command(flatten)]
    pub admin: crate::component::AdminArgs,
    /// Image whose `/reaper` is the static init: copied into pods by the injected init container
    /// (`inject`), or mounted read-only as an image volume (`image`, and `auto` where supported).
    #[arg(long, env = "REAPER_REAPER_IMAGE")]
    pub reaper_image: String,
    /// Where wrapped containers see the reaper binary (`<mount-path>/reaper`).
    #[arg(long, env = "REAPER_MOUNT_PATH", default_value = "/.reaper")]
    pub mount_path: String,
    /// Mode for pods no ReaperPolicy matches: auto, inject, image, share or off.
    #[arg(long, env = "REAPER_DEFAULT_MODE", default_value = "auto")]
    pub default_mode: Mode,
    /// Whether `auto` mounts the reaper image as an image volume instead of injecting the
    /// `reaper-install` init container: `detect` (the API server keeps `volumes[].image` in a
    /// dry-run PodTemplate create in the webhook's namespace, or is ≥ 1.35, and every node runs
    /// kubelet ≥ 1.35 with containerd ≥ 2.1 or CRI-O ≥ 1.31; followed as nodes change; needs
    /// list/watch on nodes and create on podtemplates; `false` in `--policies` mode), `true`,
    /// `false`. Mode `image` and a policy's `imageVolume` decide regardless.
    #[arg(long, env = "REAPER_IMAGE_VOLUMES", default_value = "detect")]
    pub image_volumes: capability::Setting,
    #[command(flatten)]
    pub scope: crate::scope::ScopeArgs,
    /// YAML stream of ReaperPolicy objects; with it the webhook needs no API server
    /// (namespaceSelector then sees only the `kubernetes.io/metadata.name` label).
    #[arg(long, env = "REAPER_POLICIES")]
    pub policies: Option<PathBuf>,
    /// UID (and GID) of the injected `reaper-install` init container; `image` leaves them unset,
    /// so the reaper image's own non-root USER applies (or a platform that assigns UIDs per
    /// namespace picks one); `runAsNonRoot: true` holds either way.
    #[arg(long, env = "REAPER_INSTALL_RUN_AS_USER", default_value = "65532", value_parser = parse_run_as_user)]
    pub install_run_as_user: RunAsUser,
    /// CPU request of the injected init container.
    #[arg(long, env = "REAPER_INSTALL_CPU_REQUEST", default_value = "10m")]
    pub install_cpu_request: String,
    /// Memory request of the injected init container.
    #[arg(long, env = "REAPER_INSTALL_MEMORY_REQUEST", default_value = "16Mi")]
    pub install_memory_request: String,
    /// CPU limit of the injected init container.
    #[arg(long, env = "REAPER_INSTALL_CPU_LIMIT", default_value = "100m")]
    pub install_cpu_limit: String,
    /// Memory limit of the injected init container.
    #[arg(long, env = "REAPER_INSTALL_MEMORY_LIMIT", default_value = "64Mi")]
    pub install_memory_limit: String,
    /// sizeLimit of the `reaper-bin` emptyDir.
    #[arg(long, env = "REAPER_VOLUME_SIZE_LIMIT", default_value = "8Mi")]
    pub volume_size_limit: String,
    /// Rewrite the image of a container wrapped with an argv read from its registry to
    /// `image@digest` (the tag kept), so the kubelet runs exactly the image that argv was read
    /// from. The digest is recorded in the `reaper.dev/image-digests` annotation either way.
    #[arg(long, env = "REAPER_PIN_DIGESTS", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub pin_digests: bool,
    /// Record skips and fallbacks as Events on the pod's controller (ReplicaSet, Job, ...), at
    /// most one per owner and reason every 10 minutes (cluster mode only; needs `create` and
    /// `patch` on `events.k8s.io` events).
    #[arg(long, env = "REAPER_EVENTS", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub events: bool,
    /// Image lookup in registries (ENTRYPOINT/CMD of containers without `command`).
    #[command(flatten)]
    pub registry: registry::Args,
    #[command(flatten)]
    pub exposure: exposure::Args,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "--mount-path {0:?} must be an absolute path other than / without '..' (e.g. /.reaper)"
    )]
    MountPath(String),
    #[error("--{flag} {value:?} is not a Kubernetes quantity (e.g. 10m, 0.5, 16Mi, 1Gi)")]
    Quantity { flag: &'static str, value: String },
    #[error("--{limit_flag} {limit} is below --{request_flag} {request}; raise the limit")]
    LimitBelowRequest {
        limit_flag: &'static str,
        limit: String,
        request_flag: &'static str,
        request: String,
    },
    #[error("--reaper-image is empty: name the image that holds /reaper")]
    NoImage,
    #[error("--install-run-as-user must be a non-zero UID (Pod Security \"restricted\")")]
    RootInstall,
    #[error("reading policies file {path}: {source}")]
    PoliciesRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policies file, document {document}: {reason}")]
    Policies { document: usize, reason: String },
    #[error("binding {addr}: {source} (is another process using the port?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "connecting to the Kubernetes API: {0} (run in a cluster, set KUBECONFIG, or use --policies FILE)"
    )]
    Kube(#[source] kube::Error),
    #[error(transparent)]
    Component(#[from] crate::component::Error),
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error("--warm-up needs cluster mode: drop --policies, or --warm-up=false")]
    WarmUpNeedsCluster,
    #[error(transparent)]
    Exposure(#[from] exposure::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Args {
    /// The planner's configuration; `own_namespace` is `POD_NAMESPACE`, always excluded.
    pub fn config(&self, own_namespace: Option<&str>) -> Result<decide::Config> {
        let mount = self.mount_path.trim_end_matches('/');
        if !mount.starts_with('/') || mount.is_empty() || mount.split('/').any(|p| p == "..") {
            return Err(Error::MountPath(self.mount_path.clone()));
        }
        if self.reaper_image.trim().is_empty() {
            return Err(Error::NoImage);
        }
        if self.install_run_as_user.is_some_and(|u| u <= 0) {
            return Err(Error::RootInstall);
        }
        let check = |flag: &'static str, value: &str| {
            install::quantity_value(value).ok_or_else(|| Error::Quantity {
                flag,
                value: value.to_string(),
            })
        };
        for (req_flag, req, lim_flag, lim) in [
            (
                "install-cpu-request",
                &self.install_cpu_request,
                "install-cpu-limit",
                &self.install_cpu_limit,
            ),
            (
                "install-memory-request",
                &self.install_memory_request,
                "install-memory-limit",
                &self.install_memory_limit,
            ),
        ] {
            if check(lim_flag, lim)? < check(req_flag, req)? {
                return Err(Error::LimitBelowRequest {
                    limit_flag: lim_flag,
                    limit: lim.clone(),
                    request_flag: req_flag,
                    request: req.clone(),
                });
            }
        }
        check("volume-size-limit", &self.volume_size_limit)?;
        Ok(decide::Config {
            reaper_image: self.reaper_image.trim().to_string(),
            mount_path: mount.to_string(),
            default_mode: self.default_mode,
            scope: self.scope.scope(own_namespace),
            install: install::InstallSettings {
                run_as_user: self.install_run_as_user,
                cpu_request: self.install_cpu_request.clone(),
                memory_request: self.install_memory_request.clone(),
                cpu_limit: self.install_cpu_limit.clone(),
                memory_limit: self.install_memory_limit.clone(),
                volume_size_limit: self.volume_size_limit.clone(),
            },
            pin_digests: self.pin_digests,
            release: decide::RELEASE.to_string(),
            image_volumes: capability::Support::default(),
        })
    }
}

/// A UID, or none (the image's USER). An alias, so clap does not take the flag for optional.
pub type RunAsUser = Option<i64>;

/// `--install-run-as-user`: a UID, or `image` (also empty) for none.
fn parse_run_as_user(v: &str) -> std::result::Result<Option<i64>, String> {
    match v.trim() {
        "" | "image" => Ok(None),
        n => n
            .parse()
            .map(Some)
            .map_err(|_| format!("{n:?} is neither a UID nor `image`")),
    }
}

/// Run until SIGTERM/SIGINT, resolving images from their registries.
pub async fn run(args: Args) -> Result<()> {
    serve(args, None, crate::shutdown::requested("webhook")).await
}

/// Run with a given image resolver (instead of the registries) until `stop` resolves.
pub async fn run_with(
    args: Args,
    resolver: Arc<dyn crate::image::ImageResolver>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    serve(args, Some(resolver), stop).await
}

/// The webhook; `resolver: None` means the registry resolver built from the flags.
async fn serve(
    args: Args,
    resolver: Option<Arc<dyn crate::image::ImageResolver>>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let own_namespace = std::env::var("POD_NAMESPACE").ok();
    let config = args.config(own_namespace.as_deref())?;
    let lookup = args.registry.settings()?;
    let cluster_mode = args.policies.is_none();
    let warm_up = args.registry.warm_up.unwrap_or(cluster_mode);
    if warm_up && !cluster_mode {
        return Err(Error::WarmUpNeedsCluster);
    }
    args.exposure.validate()?;
    let client_roots = match &args.exposure.client_ca_file {
        None => None,
        Some(path) => {
            let bad = |reason: String| exposure::Error::ClientCa {
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            Some(tls::client_roots(&pem).map_err(bad)?)
        }
    };
    let metrics = Metrics::new();
    let wm = server::WebhookMetrics::new(&metrics);
    let component = Component::start("webhook", &args.admin, metrics.clone()).await?;
    let shutdown = component.shutdown();
    let tasks = component.tasks();
    let ready = component.ready.clone();

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.listen,
            source,
        })?;

    let needs_client =
        cluster_mode || (resolver.is_none() && lookup.auth == registry::AuthMode::PullSecrets);
    let client = if needs_client {
        Some(kube::Client::try_default().await.map_err(Error::Kube)?)
    } else {
        None
    };
    let sources = match (&args.policies, &client) {
        (Some(path), _) => {
            let m = wm.clone();
            sources::from_file(path.clone(), &tasks, move |n| m.set_policies(n)).await?
        }
        (None, Some(client)) => {
            let m = wm.clone();
            sources::from_cluster(client.clone(), &tasks, move |n| m.set_policies(n))
        }
        (None, None) => unreachable!("cluster mode always has a client"),
    };
    let resolve_timeout = lookup.lookup_timeout + server::RESOLVE_GRACE;
    let resolver: Arc<dyn crate::image::ImageResolver> = match resolver {
        Some(r) => r,
        None => {
            tracing::info!(
                auth = ?lookup.auth,
                insecure = ?lookup.fetch.insecure,
                tag_ttl = ?lookup.tag_ttl,
                lookup_timeout = ?lookup.lookup_timeout,
                warm_up,
                "image lookup in registries"
            );
            let tag_ttl = lookup.tag_ttl;
            let reg = Registry::new(lookup, client.clone(), &metrics);
            if let (true, Some(client)) = (warm_up, &client) {
                start_warm_up(
                    client.clone(),
                    reg.clone(),
                    &sources,
                    &config,
                    tag_ttl,
                    &tasks,
                );
            }
            Arc::new(reg)
        }
    };

    let certs = Arc::new(tls::CertStore::new());
    let m = wm.clone();
    tasks.spawn(
        "certificate reload",
        tls::watch_pair(
            certs.clone(),
            args.tls_cert.clone(),
            args.tls_key.clone(),
            RELOAD_INTERVAL,
            shutdown.clone(),
            move |r| m.cert_loaded(r),
        ),
    );

    // Ready once a certificate pair is loaded and policies are synced.
    let (c, s, r, stop_ready) = (
        certs.clone(),
        sources.clone(),
        ready.clone(),
        shutdown.clone(),
    );
    tokio::spawn(async move {
        loop {
            if c.is_loaded() && s.is_synced() {
                r.set(true);
                tracing::info!("ready");
                return;
            }
            tokio::select! {
                _ = stop_ready.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });

    let limits = &args.exposure;
    let tls_config = tls::server_config(certs, client_roots.clone()).map_err(|reason| {
        exposure::Error::ClientCa {
            path: limits.client_ca_file.clone().unwrap_or_default(),
            reason,
        }
    })?;
    match (args.image_volumes, &client) {
        (capability::Setting::True, _) => {
            config.image_volumes.set(true);
            wm.set_image_volumes(true);
        }
        (capability::Setting::Detect, Some(client)) if cluster_mode => {
            let m = wm.clone();
            capability::detect(
                client.clone(),
                own_namespace.clone(),
                config.reaper_image.clone(),
                config.image_volumes.clone(),
                &tasks,
                move |supported| m.set_image_volumes(supported),
            )
        }
        (capability::Setting::Detect, _) => tracing::info!(
            "image volumes: no detection in --policies mode; auto uses the init container (--image-volumes=true to change)"
        ),
        (capability::Setting::False, _) => {}
    }
    let mut state = server::AppState::new(config, sources, resolver, wm.clone())
        .with_resolve_timeout(resolve_timeout)
        .with_limits(limits.max_in_flight, limits.request_timeout);
    match (&client, args.events && cluster_mode) {
        (Some(client), true) => {
            let limiter = events::Limiter::new(events::INTERVAL, events::MAX_TRACKED);
            let (sink, rx) = events::EventSink::new(limiter, events::QUEUE);
            // The instance is the hostname: the pod's name in a cluster.
            let recorder = kube::runtime::events::Recorder::new(
                client.clone(),
                keys::EVENT_REPORTER_WEBHOOK.into(),
            );
            let m = wm.clone();
            tasks.spawn(
                "event sender",
                events::send_all(rx, recorder, move |r| m.event(r), shutdown.clone()),
            );
            state = state.with_events(sink);
            tracing::info!(interval = ?events::INTERVAL, "Events on the owners of skipped and fallen-back pods");
        }
        _ if args.events => {
            tracing::info!("no Events in --policies mode (no API server)")
        }
        _ => tracing::info!("Events off (--events=false)"),
    }
    tracing::info!(
        addr = %args.listen,
        client_certificates = client_roots.is_some(),
        max_in_flight = limits.max_in_flight,
        max_connections = limits.max_connections,
        request_timeout = ?limits.request_timeout,
        "webhook listening (HTTPS)"
    );
    tasks.spawn(
        "https server",
        tls::serve(
            listener,
            tls_config,
            server::router(state),
            shutdown.clone(),
            DRAIN_TIMEOUT,
            tls::ConnLimits {
                max_connections: limits.max_connections,
                header_read_timeout: limits.request_timeout,
            },
            move || wm.connection_refused(),
        ),
    );
    // The HTTPS server drains its connections within DRAIN_TIMEOUT; a little more for the rest.
    Ok(component
        .run_until(stop, DRAIN_TIMEOUT + Duration::from_secs(1))
        .await?)
}

/// Prefetch the images of the workload templates the installation governs ([`crate::scope`])
/// once policies and namespace labels are synced (before that every template would look out of
/// scope).
fn start_warm_up(
    client: kube::Client,
    reg: Registry,
    sources: &sources::Sources,
    config: &decide::Config,
    tag_ttl: Duration,
    tasks: &crate::component::Tasks,
) {
    let (s, cfg) = (sources.clone(), config.clone());
    let wanted: registry::warmup::Wanted = Arc::new(move |pod, namespace| {
        let ns = s.namespace_labels(namespace);
        let facts = crate::scope::PodFacts {
            namespace,
            labels: pod.metadata.labels.as_ref(),
            annotations: pod.metadata.annotations.as_ref(),
        };
        if cfg.scope.governs(facts, &ns.labels).is_err() {
            return Vec::new();
        }
        let policies = s.policies();
        let scope = decide::Scope {
            namespace,
            namespace_labels: &ns.labels,
        };
        decide::images_to_resolve(pod, scope, &policies, &cfg)
    });
    // Re-checked a few times per TTL so entries are looked up again soon after they expire.
    let refresh = (tag_ttl / 4).max(Duration::from_secs(5));
    let (s, stop, tasks) = (sources.clone(), tasks.shutdown(), tasks.clone());
    // Waits for the sources, starts the supervised warm-up tasks, and ends.
    tokio::spawn(async move {
        while !s.is_synced() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        tracing::info!(refresh = ?refresh, "warm-up: watching workload templates");
        registry::warmup::spawn(client, reg, wanted, refresh, &tasks);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Args {
        let mut argv = vec![
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--reaper-image",
            "r:1",
        ];
        argv.extend_from_slice(extra);
        crate::component::parse_flags(&argv).unwrap()
    }

    #[test]
    fn defaults_and_own_namespace() {
        let a = parse(&[]);
        assert_eq!(a.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(a.admin.admin_listen.to_string(), "0.0.0.0:8080");
        let c = a.config(Some("reaper-system")).unwrap();
        assert_eq!(c.mount_path, "/.reaper");
        assert_eq!(c.default_mode, Mode::Auto);
        assert_eq!(
            c.scope
                .excluded
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            [
                "kube-node-lease",
                "kube-public",
                "kube-system",
                "reaper-system"
            ]
        );
        let c = parse(&[
            "--excluded-namespaces",
            "a, b",
            "--default-mode",
            "SHARE",
            "--mount-path",
            "/x/",
        ])
        .config(None)
        .unwrap();
        assert_eq!(c.scope.excluded.len(), 2);
        assert_eq!(c.default_mode, Mode::Share);
        assert_eq!(c.reaper_path(), "/x/reaper");
    }

    #[test]
    fn events_are_on_unless_turned_off_and_the_release_is_this_build() {
        assert!(parse(&[]).events);
        assert!(!parse(&["--events=false"]).events);
        assert!(parse(&["--events"]).events);
        assert_eq!(
            parse(&[]).config(None).unwrap().release,
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(
            decide::Config::new("r:1").release,
            env!("CARGO_PKG_VERSION")
        );
    }

    #[test]
    fn pin_digests_is_off_unless_asked_for() {
        assert!(!parse(&[]).config(None).unwrap().pin_digests);
        for (flag, want) in [
            ("--pin-digests", true),
            ("--pin-digests=true", true),
            ("--pin-digests=false", false),
        ] {
            assert_eq!(
                parse(&[flag]).config(None).unwrap().pin_digests,
                want,
                "{flag}"
            );
        }
        let required = ["--tls-cert", "c", "--tls-key", "k", "--reaper-image", "r"];
        let with = |flag| crate::component::parse_flags::<Args>(&[&required[..], &[flag]].concat());
        assert!(with("--pin-digests=true").is_ok());
        assert!(with("--pin-digests=sometimes").is_err());
    }

    #[test]
    fn the_installer_uid_can_be_left_to_the_image() {
        let c = parse(&["--install-run-as-user", "image"])
            .config(None)
            .unwrap();
        assert_eq!(c.install.run_as_user, None);
        let c = parse(&["--install-run-as-user="]).config(None).unwrap();
        assert_eq!(c.install.run_as_user, None);
        let c = parse(&[]).config(None).unwrap();
        assert_eq!(c.install.run_as_user, Some(65532));
        let installer = install::container(&c, "i", "v", install::Qos::Burstable);
        let sc = installer.security_context.unwrap();
        assert_eq!(
            (sc.run_as_user, sc.run_as_non_root),
            (Some(65532), Some(true))
        );
        let c = parse(&["--install-run-as-user", "image"])
            .config(None)
            .unwrap();
        let sc = install::container(&c, "i", "v", install::Qos::Burstable)
            .security_context
            .unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_group), (None, None));
        assert_eq!(sc.run_as_non_root, Some(true), "restricted still holds");
        assert!(crate::component::parse_flags::<Args>(&["--install-run-as-user", "root"]).is_err());
    }

    #[test]
    fn bad_flags_say_what_to_do() {
        for (extra, want) in [
            (&["--mount-path", "rel"][..], "absolute"),
            (&["--mount-path", "/"][..], "absolute"),
            (&["--mount-path", "/a/../b"][..], "absolute"),
            (
                &["--install-cpu-limit", "lots"][..],
                "not a Kubernetes quantity",
            ),
            (&["--install-memory-limit", "8Mi"][..], "raise the limit"),
            (&["--install-run-as-user", "0"][..], "non-zero UID"),
            (&["--volume-size-limit", "1Zi"][..], "quantity"),
        ] {
            let err = parse(extra).config(None).unwrap_err().to_string();
            assert!(err.contains(want), "{extra:?}: {err}");
        }
        assert!(
            crate::component::parse_flags::<Args>(&[
                "--tls-cert",
                "c",
                "--tls-key",
                "k",
                "--reaper-image",
                "r",
                "--default-mode",
                "sometimes"
            ])
            .is_err()
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(install::quantity_value("10m"), Some(0.01));
        assert_eq!(
            install::quantity_value("16Mi"),
            Some(16.0 * 1024.0 * 1024.0)
        );
        assert_eq!(install::quantity_value("0.5"), Some(0.5));
        assert_eq!(install::quantity_value("1"), Some(1.0));
        for bad in ["", "m", ".5", "1.2.3", "5x", "-1"] {
            assert_eq!(install::quantity_value(bad), None, "{bad}");
        }
    }
}
