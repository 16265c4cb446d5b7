//! Resolving a reference through [`client`]: tag → digest (HEAD), the manifest or index, the
//! config blobs of its linux platforms (at most [`MAX_PLATFORMS`]). The pure parts (which
//! platforms, what a config says) are here too.
use super::auth::Credential;
use super::client::{self, Client, MAX_CONFIG_BYTES, Repo};
use super::{Failure, FailureKind};
use crate::image::{ImageConfig, PlatformConfig};
use futures::{StreamExt, TryStreamExt};
use oci_client::Reference;
use oci_client::manifest::{ImageIndexEntry, OciImageIndex, OciImageManifest, OciManifest};
use std::sync::Arc;

pub use client::Settings;

/// Why no registry client can be built here, and what to do.
pub const NO_ROOTS: &str = "cannot build the registry client: no CA certificates on this system \
     (the controller image carries /etc/ssl/certs/ca-certificates.crt; a custom image needs one, \
     or SSL_CERT_FILE pointing at a PEM bundle)";
/// Index annotation BuildKit puts on attestation manifests (platform `unknown/unknown`).
const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// Platform manifests read per index: real indexes list a handful of linux platforms; a
/// registry listing thousands must not make the webhook fetch thousands.
pub const MAX_PLATFORMS: usize = 16;
/// Platform manifests of one index read at once.
const PLATFORM_READS: usize = 4;

/// A resolved reference: the digest it points at, its config, and the configs of the platform
/// manifests of an index (for the digest cache).
#[derive(Debug)]
pub struct Fetched {
    pub digest: String,
    pub config: ImageConfig,
    pub manifests: Vec<(String, ImageConfig)>,
}

pub struct Fetcher {
    client: Result<Client, Failure>,
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

/// At most `max` of an index's platforms, in index order: linux/amd64 and linux/arm64 (any
/// variant) first, the architectures nodes run almost everywhere (and amd64 is the default
/// argv), then the others in index order.
pub fn select_platforms(entries: Vec<PlatformEntry>, max: usize) -> Vec<PlatformEntry> {
    if entries.len() <= max {
        return entries;
    }
    let rank = |p: &PlatformEntry| match p.platform.split('/').nth(1) {
        Some("amd64") => 0,
        Some("arm64") => 1,
        _ => 2,
    };
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (rank(&entries[i]), i));
    order.truncate(max);
    order.sort_unstable();
    order.into_iter().map(|i| entries[i].clone()).collect()
}

/// A manifest or index from its bytes.
pub fn parse_manifest(bytes: &[u8]) -> Result<OciManifest, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Versioned {
        schema_version: i64,
    }
    let v: Versioned = serde_json::from_slice(bytes)
        .map_err(|_| "the manifest is not JSON with a schemaVersion".to_string())?;
    if v.schema_version != 2 {
        return Err(format!(
            "manifest schemaVersion {} is not supported (2 is)",
            v.schema_version
        ));
    }
    serde_json::from_slice(bytes).map_err(|_| "not an image manifest or index".to_string())
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

impl Fetcher {
    pub fn new(settings: Settings) -> Self {
        // reqwest is built without a bundled crypto provider; use ring like the rest of the
        // process (a no-op when main already installed it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Building the TLS setup has panicked on systems without CA certificates: say so.
        let built = std::panic::catch_unwind(|| Client::new(&settings));
        let client = match built {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(why)) => Err(Failure::new(
                FailureKind::Error,
                format!("cannot build the registry client: {why}"),
            )),
            Err(_) => Err(Failure::new(FailureKind::Error, NO_ROOTS.to_string())),
        };
        if let Err(f) = &client {
            tracing::error!(error = %f.message, "image lookups will fail");
        }
        Self { client }
    }

    /// Whether every registry request slot is taken.
    pub fn saturated(&self) -> bool {
        self.client.as_ref().is_ok_and(Client::saturated)
    }

    /// Resolve `reference` as `credential` (anonymous when `None`). `known` answers from the
    /// digest cache, so a moved tag or a re-tagged index only fetches what is new.
    pub async fn fetch(
        &self,
        reference: &Reference,
        credential: Option<&Credential>,
        known: impl Fn(&str) -> Option<Arc<ImageConfig>>,
    ) -> Result<Fetched, Failure> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let repo = Repo {
            registry: reference.registry(),
            host: reference.resolve_registry(),
            repository: reference.repository(),
            credential,
        };
        let repository = repo.repository;
        let mut read_by_tag = None;
        let digest = match reference.digest() {
            Some(d) => d.to_string(),
            None => {
                let tag = reference.tag().unwrap_or("latest");
                match client.manifest_digest(&repo, tag).await? {
                    Some(d) => d,
                    None => {
                        let m = client.manifest(&repo, tag).await?;
                        let d = m.digest.clone();
                        read_by_tag = Some(m);
                        d
                    }
                }
            }
        };
        if let Some(c) = known(&digest) {
            return Ok(Fetched {
                digest,
                config: (*c).clone(),
                manifests: Vec::new(),
            });
        }
        let manifest = match read_by_tag {
            Some(m) => m,
            None => client.manifest(&repo, &digest).await?,
        };
        let invalid = |why: String| {
            Failure::new(
                FailureKind::Invalid,
                format!("{}/{repository}@{digest}: {why}", repo.registry),
            )
        };
        match parse_manifest(&manifest.bytes).map_err(invalid)? {
            OciManifest::Image(m) => {
                let (ep, cmd) = config_of(client, &repo, &m).await?;
                Ok(Fetched {
                    digest,
                    config: ImageConfig::new(ep, cmd),
                    manifests: Vec::new(),
                })
            }
            OciManifest::ImageIndex(index) => {
                let all = linux_platforms(&index);
                if all.is_empty() {
                    return Err(invalid("the image index has no linux platform".into()));
                }
                let listed = all.len();
                let entries = select_platforms(all, MAX_PLATFORMS);
                // Collected first: a lazy `map` keeps a closure over `&PlatformEntry` in the
                // future's type, which the spawned (Send) fetch cannot prove general enough.
                let reads: Vec<_> = entries
                    .into_iter()
                    .map(|e| {
                        let known = known(&e.digest);
                        async move {
                            if let Some(c) = known {
                                return Ok((e, (*c).clone(), false));
                            }
                            let m = client.manifest(&repo, &e.digest).await?;
                            let Ok(OciManifest::Image(m)) = parse_manifest(&m.bytes) else {
                                return Err(Failure::new(
                                    FailureKind::Invalid,
                                    format!(
                                        "{}/{repository}@{}: platform {} is not an image manifest",
                                        repo.registry, e.digest, e.platform
                                    ),
                                ));
                            };
                            let (ep, cmd) = config_of(client, &repo, &m).await?;
                            Ok((e, ImageConfig::new(ep, cmd), true))
                        }
                    })
                    .collect();
                let read: Vec<_> = futures::stream::iter(reads)
                    .buffered(PLATFORM_READS)
                    .try_collect()
                    .await?;
                let mut platforms = Vec::with_capacity(read.len());
                let mut manifests = Vec::new();
                for (e, config, fresh) in read {
                    platforms.push(PlatformConfig::new(
                        e.platform,
                        config.entrypoint.clone(),
                        config.cmd.clone(),
                    ));
                    if fresh {
                        manifests.push((e.digest, config));
                    }
                }
                let config = ImageConfig::from_platforms(platforms)
                    .ok_or_else(|| invalid("the image index is empty".into()))?;
                // Platforms left unread are assumed to agree with the read ones only when those
                // all agree; otherwise the argv of an unread platform would be a guess.
                if listed > MAX_PLATFORMS && !config.platforms.is_empty() {
                    return Err(invalid(format!(
                        "the image index lists {listed} linux platforms whose ENTRYPOINT/CMD differ; only {MAX_PLATFORMS} are read: set a ReaperPolicy entrypoint for this image"
                    )));
                }
                Ok(Fetched {
                    digest,
                    config,
                    manifests,
                })
            }
        }
    }
}

/// ENTRYPOINT and CMD of an image manifest's config blob (at most [`MAX_CONFIG_BYTES`]).
async fn config_of(
    client: &Client,
    repo: &Repo<'_>,
    manifest: &OciImageManifest,
) -> Result<(Vec<String>, Vec<String>), Failure> {
    let config = &manifest.config;
    if config.size < 0 || config.size as u64 > MAX_CONFIG_BYTES as u64 {
        return Err(Failure::new(
            FailureKind::Invalid,
            format!(
                "{}/{}: config blob of {} bytes (limit {} MiB, as containerd)",
                repo.registry,
                repo.repository,
                config.size,
                MAX_CONFIG_BYTES >> 20
            ),
        ));
    }
    let bytes = client.blob(repo, &config.digest, MAX_CONFIG_BYTES).await?;
    parse_config(&bytes).map_err(|why| {
        Failure::new(
            FailureKind::Invalid,
            format!("{}/{}: {why}", repo.registry, repo.repository),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn entry(platform: &str, digest: &str) -> PlatformEntry {
        PlatformEntry {
            platform: platform.into(),
            digest: digest.into(),
        }
    }

    #[test]
    fn at_most_max_platforms_amd64_and_arm64_first() {
        let few: Vec<PlatformEntry> = (0..3)
            .map(|i| entry("linux/s390x", &format!("sha256:{i}")))
            .collect();
        assert_eq!(select_platforms(few.clone(), 16), few);
        // 20 platforms, amd64 and arm64 near the end: kept, and index order kept.
        let mut many: Vec<PlatformEntry> = (0..18)
            .map(|i| entry(&format!("linux/arch{i}"), &format!("sha256:{i}")))
            .collect();
        many.push(entry("linux/arm64/v8", "sha256:arm64"));
        many.push(entry("linux/amd64", "sha256:amd64"));
        let kept = select_platforms(many, 16);
        let names: Vec<&str> = kept.iter().map(|p| p.platform.as_str()).collect();
        assert_eq!(names.len(), 16);
        assert_eq!(
            &names[..14],
            (0..14)
                .map(|i| format!("linux/arch{i}"))
                .collect::<Vec<_>>()
        );
        assert_eq!(&names[14..], ["linux/arm64/v8", "linux/amd64"]);
    }

    #[test]
    fn manifests_parse_only_as_schema_2() {
        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:1","size":2},
            "layers":[]}"#;
        assert!(matches!(parse_manifest(image), Ok(OciManifest::Image(_))));
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_manifest(index),
            Ok(OciManifest::ImageIndex(_))
        ));
        assert!(
            parse_manifest(br#"{"schemaVersion":1,"fsLayers":[]}"#)
                .unwrap_err()
                .contains("schemaVersion 1")
        );
        assert!(parse_manifest(b"<html>").is_err());
        assert!(parse_manifest(br#"{"schemaVersion":2}"#).is_err());
    }
}
