//! The registry round trip, through oci-client: tag → digest (HEAD), manifest or index, config
//! blobs. One oci-client `Client` per [`Identity`]: the client remembers the first credential it
//! sees for a registry and caches tokens per repository, so sharing one between credentials could
//! hand a token obtained with one secret to a pod that has another.
use super::auth::{Credential, Identity};
use super::{Failure, FailureKind};
use crate::image::{ImageConfig, PlatformConfig};
use futures::future::join_all;
use lru::LruCache;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{ImageIndexEntry, OciImageIndex, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// Largest config blob read (real ones are a few KB; history-heavy ones some hundred KB).
const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;
/// Credentials (and so oci-client clients) remembered at once.
const MAX_CLIENTS: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(15);
const USER_AGENT: &str = concat!("reaper-controller/", env!("CARGO_PKG_VERSION"));
/// Why no registry client can be built here, and what to do.
pub const NO_ROOTS: &str = "cannot build the registry client: no CA certificates on this system \
     (the controller image carries /etc/ssl/certs/ca-certificates.crt; a custom image needs one, \
     or SSL_CERT_FILE pointing at a PEM bundle)";
/// Index annotation BuildKit puts on attestation manifests (platform `unknown/unknown`).
const REFERENCE_TYPE: &str = "vnd.docker.reference.type";

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// `host:port` of registries spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Extra trusted CA certificates (DER), on top of the system roots.
    pub extra_roots: Vec<Vec<u8>>,
}

/// A resolved reference: the digest it points at, its config, and the configs of the platform
/// manifests of an index (for the digest cache).
#[derive(Debug)]
pub struct Fetched {
    pub digest: String,
    pub config: ImageConfig,
    pub manifests: Vec<(String, ImageConfig)>,
}

pub struct Fetcher {
    settings: Settings,
    clients: Mutex<LruCache<Identity, Client>>,
}

/// One platform of an index worth reading: its key (`os/arch[/variant]`) and manifest digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformEntry {
    pub platform: String,
    pub digest: String,
}

/// The linux platforms of an index, in index order. Left out: entries without a platform, other
/// operating systems, BuildKit attestations (`unknown/unknown`, or annotated as such) and nested
/// indexes.
pub fn linux_platforms(index: &OciImageIndex) -> Vec<PlatformEntry> {
    index
        .manifests
        .iter()
        .filter(|e| !is_attestation(e) && !is_index_media_type(&e.media_type))
        .filter_map(|e| {
            let p = e.platform.as_ref()?;
            let (os, arch) = (p.os.to_string(), p.architecture.to_string());
            if os != "linux" || arch == "unknown" || arch.is_empty() {
                return None;
            }
            let platform = match p.variant.as_deref().filter(|v| !v.is_empty()) {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            };
            Some(PlatformEntry {
                platform,
                digest: e.digest.clone(),
            })
        })
        .collect()
}

fn is_attestation(e: &ImageIndexEntry) -> bool {
    e.annotations
        .as_ref()
        .and_then(|a| a.get(REFERENCE_TYPE))
        .is_some_and(|t| t == "attestation-manifest")
}

fn is_index_media_type(m: &str) -> bool {
    m == oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE
        || m == oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE
}

/// ENTRYPOINT and CMD from a config blob (OCI image config / Docker container config).
pub fn parse_config(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let c: oci_spec::image::ImageConfiguration = serde_json::from_slice(bytes)
        .map_err(|e| format!("config blob is not an image config: {e}"))?;
    let (ep, cmd) = match c.config() {
        Some(cfg) => (
            cfg.entrypoint().clone().unwrap_or_default(),
            cfg.cmd().clone().unwrap_or_default(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    Ok((ep, cmd))
}

/// The error and its causes on one line (reqwest's own message hides the interesting part).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// What an oci-client error means for the user.
pub fn classify(e: &OciDistributionError, registry: &str, repository: &str) -> Failure {
    use FailureKind::*;
    let denied = || {
        Failure::new(
            Unauthorized,
            format!(
                "registry {registry} refused access to {repository}; give the pod an imagePullSecret for it (webhook flag --registry-auth=pull-secrets) or set a ReaperPolicy entrypoint"
            ),
        )
    };
    let missing = || {
        Failure::new(
            NotFound,
            format!("registry {registry} has no such image ({repository})"),
        )
    };
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => denied(),
        OciDistributionError::ImageManifestNotFoundError(_) => missing(),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                denied()
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                missing()
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                Failure::new(
                    Error,
                    format!(
                        "registry {registry} is rate-limiting lookups (429); set a ReaperPolicy entrypoint for busy images"
                    ),
                )
            } else {
                Failure::new(Error, format!("registry {registry}: {envelope}"))
            }
        }
        OciDistributionError::ServerError { code, message, .. } => match code {
            401 | 403 => denied(),
            404 => missing(),
            _ => Failure::new(
                Error,
                format!(
                    "registry {registry} answered HTTP {code}: {}",
                    message.chars().take(200).collect::<String>().trim()
                ),
            ),
        },
        OciDistributionError::RequestError(r) => Failure::new(
            Unreachable,
            format!("cannot reach registry {registry}: {}", chain(r)),
        ),
        other => Failure::new(
            Invalid,
            format!("registry {registry}, {repository}: {}", chain(other)),
        ),
    }
}

/// An AsyncWrite into memory that refuses to grow past a limit.
struct Capped {
    buf: Vec<u8>,
    limit: usize,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.buf.len() + data.len() > self.limit {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "config blob larger than {} bytes",
                self.limit
            ))));
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Fetcher {
    pub fn new(settings: Settings) -> Self {
        // reqwest is built without a bundled crypto provider; use ring like the rest of the
        // process (a no-op when main already installed it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            settings,
            clients: Mutex::new(LruCache::new(
                NonZeroUsize::new(MAX_CLIENTS).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    fn client(&self, identity: &Identity) -> Result<Client, Failure> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(identity) {
            return Ok(c.clone());
        }
        let config = ClientConfig {
            protocol: if self.settings.insecure.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(self.settings.insecure.clone())
            },
            extra_root_certificates: self
                .settings
                .extra_roots
                .iter()
                .map(|der| Certificate {
                    encoding: CertificateEncoding::Der,
                    data: der.clone(),
                })
                .collect(),
            // Indexes are walked here, platform by platform.
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..Default::default()
        };
        // oci-client builds a default reqwest client as well, which panics instead of failing
        // when the system has no CA certificates (an image without /etc/ssl/certs): say so.
        let built =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Client::try_from(config)))
                .map_err(|_| Failure::new(FailureKind::Error, NO_ROOTS.to_string()))?;
        let client = built.map_err(|e| {
            Failure::new(
                FailureKind::Error,
                format!("cannot build the registry client: {}", chain(&e)),
            )
        })?;
        clients.put(identity.clone(), client.clone());
        Ok(client)
    }

    /// Resolve `reference` as `credential` (anonymous when `None`). `known` answers from the
    /// digest cache, so a moved tag or a re-tagged index only fetches what is new.
    pub async fn fetch(
        &self,
        reference: &Reference,
        credential: Option<&Credential>,
        known: impl Fn(&str) -> Option<Arc<ImageConfig>>,
    ) -> Result<Fetched, Failure> {
        let identity = credential.map_or(Identity::Anonymous, Credential::identity);
        let client = self.client(&identity)?;
        let auth = match credential {
            Some(c) if identity != Identity::Anonymous => {
                RegistryAuth::Basic(c.username.clone(), c.password.clone())
            }
            _ => RegistryAuth::Anonymous,
        };
        let registry = reference.registry().to_string();
        let repository = reference.repository().to_string();
        let fail = |e: OciDistributionError| classify(&e, &registry, &repository);
        // Tag → digest with a HEAD (Docker Hub does not count HEADs against its pull limits).
        let digest = match reference.digest() {
            Some(d) => d.to_string(),
            None => client
                .fetch_manifest_digest(reference, &auth)
                .await
                .map_err(fail)?,
        };
        if let Some(c) = known(&digest) {
            return Ok(Fetched {
                digest,
                config: (*c).clone(),
                manifests: Vec::new(),
            });
        }
        let pinned = Reference::with_digest(registry.clone(), repository.clone(), digest.clone());
        let (manifest, _) = client.pull_manifest(&pinned, &auth).await.map_err(fail)?;
        match manifest {
            OciManifest::Image(m) => {
                let (ep, cmd) = self.config_of(&client, &pinned, &m).await?;
                Ok(Fetched {
                    digest,
                    config: ImageConfig::new(ep, cmd),
                    manifests: Vec::new(),
                })
            }
            OciManifest::ImageIndex(index) => {
                let entries = linux_platforms(&index);
                if entries.is_empty() {
                    return Err(Failure::new(
                        FailureKind::Invalid,
                        format!("image index {repository}@{digest} has no linux platform"),
                    ));
                }
                let reads = entries.iter().map(|e| {
                    let client = client.clone();
                    let (registry, repository, auth) =
                        (registry.clone(), repository.clone(), auth.clone());
                    let known = known(&e.digest);
                    async move {
                        if let Some(c) = known {
                            return Ok((e, (*c).clone(), false));
                        }
                        let r = Reference::with_digest(
                            registry.clone(),
                            repository.clone(),
                            e.digest.clone(),
                        );
                        let (m, _) = client
                            .pull_manifest(&r, &auth)
                            .await
                            .map_err(|x| classify(&x, &registry, &repository))?;
                        let OciManifest::Image(m) = m else {
                            return Err(Failure::new(
                                FailureKind::Invalid,
                                format!(
                                    "{repository}@{}: platform {} points at another index",
                                    e.digest, e.platform
                                ),
                            ));
                        };
                        let (ep, cmd) = self.config_of(&client, &r, &m).await?;
                        Ok((e, ImageConfig::new(ep, cmd), true))
                    }
                });
                let mut platforms = Vec::with_capacity(entries.len());
                let mut manifests = Vec::new();
                for r in join_all(reads).await {
                    let (e, config, fresh) = r?;
                    platforms.push(PlatformConfig::new(
                        e.platform.clone(),
                        config.entrypoint.clone(),
                        config.cmd.clone(),
                    ));
                    if fresh {
                        manifests.push((e.digest.clone(), config));
                    }
                }
                let config = ImageConfig::from_platforms(platforms).ok_or_else(|| {
                    Failure::new(
                        FailureKind::Invalid,
                        format!("image index {repository}@{digest} is empty"),
                    )
                })?;
                Ok(Fetched {
                    digest,
                    config,
                    manifests,
                })
            }
        }
    }

    async fn config_of(
        &self,
        client: &Client,
        reference: &Reference,
        manifest: &OciImageManifest,
    ) -> Result<(Vec<String>, Vec<String>), Failure> {
        let registry = reference.registry();
        let repository = reference.repository();
        if manifest.config.size < 0 || manifest.config.size as usize > MAX_CONFIG_BYTES {
            return Err(Failure::new(
                FailureKind::Invalid,
                format!(
                    "{repository}: config blob of {} bytes (limit {MAX_CONFIG_BYTES})",
                    manifest.config.size
                ),
            ));
        }
        let mut out = Capped {
            buf: Vec::with_capacity(manifest.config.size as usize),
            limit: MAX_CONFIG_BYTES,
        };
        client
            .pull_blob(reference, &manifest.config, &mut out)
            .await
            .map_err(|e| classify(&e, registry, repository))?;
        parse_config(&out.buf).map_err(|why| {
            Failure::new(
                FailureKind::Invalid,
                format!("{registry}/{repository}: {why}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_builds_with_plain_http_registries() {
        let fetcher = Fetcher::new(Settings {
            insecure: vec!["10.0.0.1:5000".into()],
            extra_roots: Vec::new(),
        });
        assert!(fetcher.client(&Identity::Anonymous).is_ok());
    }

    #[test]
    fn platforms_of_an_index() {
        let index: OciImageIndex = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:1", "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:2", "size": 1,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:3", "size": 1,
                 "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:4", "size": 1,
                 "platform": {"os": "windows", "architecture": "amd64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:5", "size": 1},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:6", "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
                {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:7", "size": 1,
                 "platform": {"os": "linux", "architecture": "s390x"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:8", "size": 1,
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}
            ]
        }))
        .unwrap();
        let got: Vec<(String, String)> = linux_platforms(&index)
            .into_iter()
            .map(|p| (p.platform, p.digest))
            .collect();
        assert_eq!(
            got,
            [
                ("linux/amd64".to_string(), "sha256:1".to_string()),
                ("linux/arm64/v8".to_string(), "sha256:2".to_string()),
                ("linux/arm/v7".to_string(), "sha256:8".to_string()),
            ]
        );
    }

    #[test]
    fn config_blobs() {
        let blob =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Entrypoint":["/e"],"Cmd":["a","$(X)"]}}"#;
        assert_eq!(
            parse_config(blob).unwrap(),
            (
                vec!["/e".to_string()],
                vec!["a".to_string(), "$(X)".to_string()]
            )
        );
        let none =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Entrypoint":null}}"#;
        assert_eq!(parse_config(none).unwrap(), (vec![], vec![]));
        let no_config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert_eq!(parse_config(no_config).unwrap(), (vec![], vec![]));
        assert!(
            parse_config(b"[]")
                .unwrap_err()
                .contains("not an image config")
        );
    }

    #[test]
    fn errors_say_what_to_do() {
        let f = classify(
            &OciDistributionError::UnauthorizedError { url: "u".into() },
            "r:5000",
            "team/app",
        );
        assert_eq!(f.kind, FailureKind::Unauthorized);
        assert!(f.message.contains("imagePullSecret"), "{}", f.message);
        let f = classify(
            &OciDistributionError::ServerError {
                code: 404,
                url: "u".into(),
                message: String::new(),
            },
            "r:5000",
            "team/app",
        );
        assert_eq!(f.kind, FailureKind::NotFound);
        let f = classify(
            &OciDistributionError::ServerError {
                code: 503,
                url: "u".into(),
                message: "  busy ".into(),
            },
            "r",
            "a",
        );
        assert_eq!(f.kind, FailureKind::Error);
        assert!(f.message.ends_with("503: busy"), "{}", f.message);
        let env: oci_client::errors::OciEnvelope = serde_json::from_str(
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
        .unwrap();
        let f = classify(
            &OciDistributionError::RegistryError {
                envelope: env,
                url: "u".into(),
            },
            "r",
            "a",
        );
        assert_eq!(f.kind, FailureKind::NotFound);
    }
}
