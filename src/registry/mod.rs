//! Image ENTRYPOINT/CMD resolution from OCI registries, for containers whose pod sets no
//! `command`.
//!
//! - [`auth`]: docker config parsing and kubelet-style credential matching (pure)
//! - [`cache`]: digest → config, tag → digest with TTLs, failures (pure, time passed in)
//! - [`guard`]: what an (untrusted) registry may make the webhook do: token realms, redirects,
//!   text shown to users (pure)
//! - [`client`]: the distribution API over reqwest: capped bodies, verified digests, bearer and
//!   basic auth, at most 16 requests at once (I/O)
//! - [`fetch`]: a reference resolved through the client: tag → digest, manifest or index,
//!   config blobs
//! - [`secrets`]: pull secrets through the API server (`--registry-auth=pull-secrets`)
//! - [`warmup`]: prefetch for workload templates (cluster mode)
//!
//! [`Registry`] ties them together and is the webhook's [`ImageResolver`]: every lookup is
//! bounded by `--lookup-timeout`; a lookup that runs out of time is abandoned for that request
//! only (its fetch goes on in a task of its own and fills the cache); concurrent lookups of the
//! same reference share one fetch.
pub mod auth;
pub mod cache;
pub mod client;
pub mod fetch;
pub mod guard;
pub mod secrets;
pub mod warmup;

use crate::image::{ImageConfig, ImageIndex, ImageResolver};
use crate::metrics::Metrics;
use async_trait::async_trait;
use auth::{Credential, Identity, Keyring};
use cache::{Cache, Cached, LookupKey, RepoKey};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::core::v1::Pod;
use oci_client::Reference;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tag TTL for references that are expected to move: `:latest`, untagged, or pulled with
/// `imagePullPolicy: Always` (`--tag-ttl` when that is shorter).
pub const MUTABLE_TAG_TTL: Duration = Duration::from_secs(30);
/// A fetch that outlives its request is still bounded (then it counts as an error).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest accepted `--lookup-timeout`: the API server's webhook timeout is at most 30 s and the
/// rest of the request needs some of it.
pub const MAX_LOOKUP_TIMEOUT: Duration = Duration::from_secs(25);

/// Where registry credentials come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum AuthMode {
    /// No credentials: public images only (no access to secrets needed).
    #[default]
    Anonymous,
    /// The pod's imagePullSecrets, then its ServiceAccount's (RBAC: get secrets, serviceaccounts).
    PullSecrets,
}

/// Registry flags of `reaper-controller webhook`.
#[derive(clap::Args, Clone, Debug)]
// Flattened into the webhook's own `Args`: a group of the same name would clash.
#[group(id = "registry_args")]
pub struct Args {
    /// Registry credentials: `anonymous`, or `pull-secrets` (the pod's and its ServiceAccount's
    /// imagePullSecrets, read through the API server).
    #[arg(
        long,
        env = "REAPER_REGISTRY_AUTH",
        value_enum,
        default_value = "anonymous"
    )]
    pub registry_auth: AuthMode,
    /// Registries spoken to over plain HTTP (`host:port`, comma-separated).
    #[arg(long, env = "REAPER_INSECURE_REGISTRIES", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// PEM file of extra CA certificates trusted for registries (on top of the system roots).
    #[arg(long, env = "REAPER_REGISTRY_CA_FILE")]
    pub registry_ca_file: Option<PathBuf>,
    /// How long a tag's digest is reused (`:latest`, untagged references and
    /// `imagePullPolicy: Always` use at most 30s).
    #[arg(long, env = "REAPER_TAG_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub tag_ttl: Duration,
    /// How long a failed lookup is remembered before the registry is asked again.
    #[arg(long, env = "REAPER_NEGATIVE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub negative_ttl: Duration,
    /// Time an admission waits for image lookups; a slower one is planned without (auto → share,
    /// inject → that container skipped) while the lookup finishes in the background.
    #[arg(long, env = "REAPER_LOOKUP_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub lookup_timeout: Duration,
    /// Look up the images of Deployment, StatefulSet, DaemonSet, Job and CronJob templates in
    /// opted-in namespaces ahead of their pods (default: on in cluster mode, off with --policies).
    #[arg(long, env = "REAPER_WARM_UP", num_args = 0..=1, default_missing_value = "true")]
    pub warm_up: Option<bool>,
    /// Image configs kept in memory (LRU; tags and failures are bounded alike).
    #[arg(long, env = "REAPER_IMAGE_CACHE_SIZE", default_value_t = 4096)]
    pub image_cache_size: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            registry_auth: AuthMode::Anonymous,
            insecure_registries: Vec::new(),
            registry_ca_file: None,
            tag_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            lookup_timeout: Duration::from_secs(2),
            warm_up: None,
            image_cache_size: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "--lookup-timeout {0:?} must be between 1ms and 25s (keep it well below the webhook's timeoutSeconds)"
    )]
    LookupTimeout(Duration),
    #[error("--image-cache-size must be at least 1")]
    CacheSize,
    #[error("--insecure-registries entry {0:?} is not host[:port]")]
    Insecure(String),
    #[error("reading --registry-ca-file {path}: {source}")]
    CaRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--registry-ca-file {0}: no PEM certificate in it")]
    CaEmpty(PathBuf),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The validated settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub auth: AuthMode,
    pub fetch: fetch::Settings,
    pub tag_ttl: Duration,
    pub negative_ttl: Duration,
    pub lookup_timeout: Duration,
    pub cache_size: NonZeroUsize,
}

impl Args {
    pub fn settings(&self) -> Result<Settings> {
        if self.lookup_timeout.is_zero() || self.lookup_timeout > MAX_LOOKUP_TIMEOUT {
            return Err(Error::LookupTimeout(self.lookup_timeout));
        }
        let cache_size = NonZeroUsize::new(self.image_cache_size).ok_or(Error::CacheSize)?;
        let mut insecure = Vec::new();
        for r in &self.insecure_registries {
            let r = r.trim();
            if r.is_empty() {
                continue;
            }
            if r.contains(['/', ' ']) || r.starts_with(':') {
                return Err(Error::Insecure(r.to_string()));
            }
            insecure.push(r.to_string());
        }
        let mut extra_roots = Vec::new();
        if let Some(path) = &self.registry_ca_file {
            use rustls_pki_types::pem::PemObject;
            let pem = std::fs::read(path).map_err(|source| Error::CaRead {
                path: path.clone(),
                source,
            })?;
            for der in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
                extra_roots.push(der.to_vec());
            }
            if extra_roots.is_empty() {
                return Err(Error::CaEmpty(path.clone()));
            }
        }
        Ok(Settings {
            auth: self.registry_auth,
            fetch: fetch::Settings {
                insecure,
                extra_roots,
            },
            tag_ttl: self.tag_ttl,
            negative_ttl: self.negative_ttl,
            lookup_timeout: self.lookup_timeout,
            cache_size,
        })
    }
}

/// Kinds of failed lookups (the `result` label of `reaper_registry_lookups_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// 404, unknown manifest or repository.
    NotFound,
    /// 401/403, refused credentials.
    Unauthorized,
    /// Connection refused, TLS, DNS, timeouts.
    Unreachable,
    /// Not a usable image (bad reference, manifest or config).
    Invalid,
    /// Anything else (5xx, rate limits).
    Error,
}

impl FailureKind {
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::NotFound => "not_found",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Invalid => "invalid",
            FailureKind::Error => "error",
        }
    }
}

/// A failed lookup and what to tell the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// `reaper_registry_*` metric families.
#[derive(Clone)]
pub struct RegistryMetrics {
    lookups: Family<ResultLabel, Counter>,
    hits: Counter,
    duration: Histogram,
}

impl RegistryMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let m = Self {
            lookups: Family::default(),
            hits: Counter::default(),
            // 1 ms .. ~33 s
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        };
        metrics.register(|r| {
            r.register(
                "reaper_registry_lookups",
                "Registry round trips (one per reference and credential fetched) by result (success, not_found, unauthorized, unreachable, invalid, error)",
                m.lookups.clone(),
            );
            r.register(
                "reaper_registry_cache_hits",
                "Lookups answered without a registry round trip of their own (cached config or failure, or joined an in-flight fetch)",
                m.hits.clone(),
            );
            r.register(
                "reaper_registry_lookup_duration_seconds",
                "Time of registry round trips",
                m.duration.clone(),
            );
        });
        m
    }

    fn fetched(&self, result: &'static str, elapsed: Duration) {
        self.lookups.get_or_create(&ResultLabel { result }).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// The tag TTL a lookup accepts: `--tag-ttl`, at most [`MUTABLE_TAG_TTL`] for references that move.
pub fn tag_ttl_for(reference: &Reference, pull_always: bool, tag_ttl: Duration) -> Duration {
    let mutable = pull_always || matches!(reference.tag(), None | Some("latest"));
    if mutable && reference.digest().is_none() {
        tag_ttl.min(MUTABLE_TAG_TTL)
    } else {
        tag_ttl
    }
}

/// Whether some container of the pod pulls `image` with `imagePullPolicy: Always`.
fn pulled_always(pod: &Pod, image: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.image.as_deref() == Some(image) && c.image_pull_policy.as_deref() == Some("Always")
        })
}

/// A successful lookup: the config, and the digest of the manifest or index it was read from
/// (for a tag, its digest at the time: `image@digest` runs exactly the image whose argv this is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub digest: String,
    pub config: Arc<ImageConfig>,
}

type Flight = Shared<BoxFuture<'static, Result<Resolved, Failure>>>;

struct Inner {
    settings: Settings,
    cache: Mutex<Cache>,
    flights: Mutex<HashMap<LookupKey, Flight>>,
    fetcher: fetch::Fetcher,
    secrets: Option<secrets::PullSecrets>,
    metrics: RegistryMetrics,
}

/// The registry-backed image resolver. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    /// `client` is needed for `--registry-auth=pull-secrets` (ignored otherwise).
    pub fn new(settings: Settings, client: Option<kube::Client>, metrics: &Metrics) -> Self {
        let secrets = match settings.auth {
            AuthMode::PullSecrets => client.map(secrets::PullSecrets::new),
            AuthMode::Anonymous => None,
        };
        Self {
            inner: Arc::new(Inner {
                cache: Mutex::new(Cache::new(settings.cache_size)),
                flights: Mutex::new(HashMap::new()),
                fetcher: fetch::Fetcher::new(settings.fetch.clone()),
                secrets,
                metrics: RegistryMetrics::new(metrics),
                settings,
            }),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.inner.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Look `reference` up as `credential` (anonymous when `None`), from the cache or by joining
    /// or starting a fetch. The fetch runs in a task of its own: dropping this future (the
    /// request's time ran out) does not stop it.
    pub async fn lookup(
        &self,
        reference: &Reference,
        credential: Option<&Credential>,
        tag_ttl: Duration,
    ) -> Result<Resolved, Failure> {
        let s = &self.inner.settings;
        let key = LookupKey {
            repo: RepoKey {
                registry: reference.registry().to_string(),
                repository: reference.repository().to_string(),
                identity: credential.map_or(Identity::Anonymous, Credential::identity),
            },
            tag: reference.tag().map(String::from),
            digest: reference.digest().map(String::from),
        };
        let cached = |this: &Self| {
            this.cache()
                .get(&key, Instant::now(), tag_ttl, s.negative_ttl)
        };
        if let Some(c) = cached(self) {
            self.inner.metrics.hits.inc();
            return match c {
                Cached::Config(c) => Ok(c),
                Cached::Failed(f) => Err(f),
            };
        }
        let flight = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = flights.get(&key) {
                self.inner.metrics.hits.inc();
                f.clone()
            } else if let Some(c) = cached(self) {
                // A fetch finished between the first look and taking the lock (it writes the
                // cache before leaving `flights`).
                self.inner.metrics.hits.inc();
                return match c {
                    Cached::Config(c) => Ok(c),
                    Cached::Failed(f) => Err(f),
                };
            } else {
                let f = self.start_fetch(key.clone(), reference.clone(), credential.cloned());
                flights.insert(key, f.clone());
                f
            }
        };
        flight.await
    }

    fn start_fetch(
        &self,
        key: LookupKey,
        reference: Reference,
        credential: Option<Credential>,
    ) -> Flight {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let repo = key.repo.clone();
            let fetched = tokio::time::timeout(
                FETCH_TIMEOUT,
                this.inner
                    .fetcher
                    .fetch(&reference, credential.as_ref(), |d| {
                        this.cache().config(&repo, d)
                    }),
            )
            .await
            .unwrap_or_else(|_| {
                let busy = if this.inner.fetcher.saturated() {
                    format!(
                        " (all {} registry request slots are busy)",
                        client::MAX_CONCURRENT_REQUESTS
                    )
                } else {
                    String::new()
                };
                Err(Failure::new(
                    FailureKind::Unreachable,
                    format!(
                        "registry {} did not answer within {}s{busy}",
                        reference.registry(),
                        FETCH_TIMEOUT.as_secs()
                    ),
                ))
            });
            let label = fetched
                .as_ref()
                .map_or_else(|f| f.kind.label(), |_| "success");
            this.inner.metrics.fetched(label, started.elapsed());
            let result = {
                let mut cache = this.cache();
                let now = Instant::now();
                match fetched {
                    Ok(f) => {
                        for (digest, config) in f.manifests {
                            cache.put_config(&repo, &digest, Arc::new(config));
                        }
                        let config = Arc::new(f.config);
                        cache.put_success(&key, &f.digest, config.clone(), now);
                        tracing::debug!(image = %reference, digest = %f.digest, identity = %repo.identity.short(), "image config read from the registry");
                        Ok(Resolved {
                            digest: f.digest,
                            config,
                        })
                    }
                    Err(failure) => {
                        cache.put_failure(&key, failure.clone(), now);
                        tracing::debug!(image = %reference, identity = %repo.identity.short(), error = %failure.message, "registry lookup failed");
                        Err(failure)
                    }
                }
            };
            this.inner
                .flights
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            result
        });
        task.map(|joined| {
            joined.unwrap_or_else(|e| {
                Err(Failure::new(
                    FailureKind::Error,
                    format!("registry lookup task failed: {e}"),
                ))
            })
        })
        .boxed()
        .shared()
    }

    /// The credentials to try for `reference`, in order; `[None]` means anonymous.
    fn candidates(keyring: &Keyring, reference: &Reference) -> Vec<Option<Credential>> {
        let creds = keyring.lookup(&format!(
            "{}/{}",
            reference.registry(),
            reference.repository()
        ));
        if creds.is_empty() {
            vec![None]
        } else {
            creds.into_iter().map(Some).collect()
        }
    }

    /// Resolve one image as the kubelet would pull it: each matching credential in turn (the
    /// first success wins), anonymously when none matches.
    async fn resolve_image(
        &self,
        image: &str,
        keyring: &Keyring,
        pull_always: bool,
    ) -> Result<Resolved, Failure> {
        let reference: Reference = image.parse().map_err(|e| {
            Failure::new(
                FailureKind::Invalid,
                format!("{image:?} is not a valid image reference: {e}"),
            )
        })?;
        let ttl = tag_ttl_for(&reference, pull_always, self.inner.settings.tag_ttl);
        let candidates = Self::candidates(keyring, &reference);
        let tried = candidates.len();
        let mut first_failure = None;
        for cred in candidates {
            match self.lookup(&reference, cred.as_ref(), ttl).await {
                Ok(c) => return Ok(c),
                Err(f) => {
                    first_failure.get_or_insert(f);
                }
            }
        }
        let mut f =
            first_failure.unwrap_or_else(|| Failure::new(FailureKind::Error, "no lookup was made"));
        if tried > 1 {
            f.message = format!("{} ({tried} matching pull secrets tried)", f.message);
        }
        Err(f)
    }

    async fn keyring(&self, pod: &Pod, namespace: &str) -> Keyring {
        match &self.inner.secrets {
            Some(s) => s.keyring_for(pod, namespace).await,
            None => Keyring::default(),
        }
    }

    /// Look images up with no time limit but the fetch's own (warm-up).
    pub async fn prefetch(&self, pod: &Pod, namespace: &str, images: &[String]) {
        let keyring = self.keyring(pod, namespace).await;
        let lookups = images
            .iter()
            .map(|i| self.resolve_image(i, &keyring, pulled_always(pod, i)));
        futures::future::join_all(lookups).await;
    }
}

#[async_trait]
impl ImageResolver for Registry {
    async fn resolve(&self, pod: &Pod, namespace: &str, images: &[String]) -> ImageIndex {
        let budget = self.inner.settings.lookup_timeout;
        let deadline = tokio::time::Instant::now() + budget;
        let late = || {
            format!(
                "its registry did not answer within --lookup-timeout {}; the lookup goes on in the background and later pods use its result",
                humantime::format_duration(budget)
            )
        };
        let Ok(keyring) = tokio::time::timeout_at(deadline, self.keyring(pod, namespace)).await
        else {
            tracing::warn!(images = ?images, "reading pull secrets exceeded --lookup-timeout");
            return images.iter().map(|i| (i.clone(), Err(late()))).collect();
        };
        let lookups = images.iter().map(|image| {
            let keyring = &keyring;
            async move {
                let r = tokio::time::timeout_at(
                    deadline,
                    self.resolve_image(image, keyring, pulled_always(pod, image)),
                )
                .await;
                let answer = match r {
                    Ok(Ok(resolved)) => Ok(resolved),
                    Ok(Err(f)) => {
                        tracing::warn!(image = %image, result = f.kind.label(), error = %f.message, "image lookup failed");
                        Err(f.message)
                    }
                    Err(_) => {
                        tracing::warn!(image = %image, timeout = ?budget, "image lookup exceeded --lookup-timeout; planning without it");
                        Err(late())
                    }
                };
                (image.clone(), answer)
            }
        });
        let mut index = ImageIndex::new();
        for (image, answer) in futures::future::join_all(lookups).await {
            match answer {
                Ok(r) => {
                    index.set_digest(image.clone(), r.digest);
                    index.insert(image, Ok((*r.config).clone()));
                }
                Err(why) => index.insert(image, Err(why)),
            }
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        crate::component::parse_flags(argv)
    }

    #[test]
    fn flags_and_defaults() {
        let a = parse(&[]).unwrap();
        let d = Args::default();
        assert_eq!(a.tag_ttl, d.tag_ttl);
        assert_eq!(a.negative_ttl, d.negative_ttl);
        assert_eq!(a.lookup_timeout, d.lookup_timeout);
        assert_eq!(a.image_cache_size, d.image_cache_size);
        assert_eq!(a.registry_auth, AuthMode::Anonymous);
        assert_eq!(a.warm_up, None);
        let a = parse(&[
            "--registry-auth",
            "pull-secrets",
            "--insecure-registries",
            "127.0.0.1:5000, reg.local",
            "--tag-ttl",
            "1s",
            "--lookup-timeout",
            "500ms",
            "--warm-up",
        ])
        .unwrap();
        assert_eq!(a.warm_up, Some(true));
        let s = a.settings().unwrap();
        assert_eq!(s.auth, AuthMode::PullSecrets);
        assert_eq!(s.fetch.insecure, ["127.0.0.1:5000", "reg.local"]);
        assert_eq!(s.lookup_timeout, Duration::from_millis(500));
        assert_eq!(parse(&["--warm-up=false"]).unwrap().warm_up, Some(false));
        assert!(parse(&["--registry-auth", "helpers"]).is_err());
    }

    #[test]
    fn bad_settings_say_what_to_do() {
        for (argv, want) in [
            (&["--lookup-timeout", "0s"][..], "between 1ms and 25s"),
            (&["--lookup-timeout", "1m"][..], "between 1ms and 25s"),
            (&["--image-cache-size", "0"][..], "at least 1"),
            (&["--insecure-registries", "http://x/"][..], "host[:port]"),
            (
                &["--registry-ca-file", "/nonexistent/ca.pem"][..],
                "reading --registry-ca-file",
            ),
        ] {
            let err = parse(argv).unwrap().settings().unwrap_err().to_string();
            assert!(err.contains(want), "{argv:?}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let err = parse(&["--registry-ca-file", empty.to_str().unwrap()])
            .unwrap()
            .settings()
            .unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn tag_ttls() {
        let long = Duration::from_secs(300);
        let r = |s: &str| s.parse::<Reference>().unwrap();
        assert_eq!(tag_ttl_for(&r("r.io/a:1.2"), false, long), long);
        assert_eq!(tag_ttl_for(&r("r.io/a:1.2"), true, long), MUTABLE_TAG_TTL);
        assert_eq!(
            tag_ttl_for(&r("r.io/a:latest"), false, long),
            MUTABLE_TAG_TTL
        );
        assert_eq!(tag_ttl_for(&r("r.io/a"), false, long), MUTABLE_TAG_TTL);
        // A shorter --tag-ttl applies to everything.
        let short = Duration::from_secs(1);
        assert_eq!(tag_ttl_for(&r("r.io/a"), false, short), short);
        // Digests do not expire anyway.
        let d = "r.io/a@sha256:0123456789012345678901234567890123456789012345678901234567890123";
        assert_eq!(tag_ttl_for(&r(d), true, long), long);
    }

    #[test]
    fn pull_policy_is_read_per_image() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "a", "image": "x:1", "imagePullPolicy": "Always"},
                {"name": "b", "image": "y:1", "imagePullPolicy": "IfNotPresent"}
            ]}
        }))
        .unwrap();
        assert!(pulled_always(&pod, "x:1"));
        assert!(!pulled_always(&pod, "y:1"));
        assert!(!pulled_always(&pod, "z:1"));
    }
}
