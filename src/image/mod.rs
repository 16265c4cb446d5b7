//! What Reaper knows about container images, shared by the webhook (which plans with it) and the
//! registry client (which fills it in): image configs' ENTRYPOINT and CMD ([`ImageConfig`],
//! [`ImageIndex`]), the [`ImageResolver`] seam between them, and image references ([`reference`]).
//!
//! The planner never does I/O. The handler asks an [`ImageResolver`] for the images whose argv the
//! pod does not spell out (see `webhook::decide::images_to_resolve`) and passes the answers in as an
//! [`ImageIndex`]. [`NoImageResolver`] knows nothing (tests, fuzzing, `--registry-auth` off), so
//! such containers can then only be wrapped through a policy's `entrypoints`.

pub mod glob;
pub mod reference;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
pub use reference::{glob_matches, image_matches, normalize_image_reference};
use std::collections::HashMap;

/// The parts of an OCI image config that decide what a container runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `config.Entrypoint` (empty when the image has none).
    pub entrypoint: Vec<String>,
    /// `config.Cmd` (empty when the image has none).
    pub cmd: Vec<String>,
    /// A multi-platform image whose platforms do not all have the same ENTRYPOINT and CMD: every
    /// platform's own config, in index order. `entrypoint` and `cmd` are then linux/amd64's (else
    /// the first platform's). Empty for a single-platform image and when all platforms agree.
    pub platforms: Vec<PlatformConfig>,
}

/// ENTRYPOINT and CMD of one platform of an image index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlatformConfig {
    /// `os/arch` or `os/arch/variant`, spelled as in the index (`linux/arm64/v8`).
    pub platform: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// `ENTRYPOINT [""]` means "no entrypoint" to container runtimes (containerd and CRI-O drop it).
fn normalize_entrypoint(entrypoint: Vec<String>) -> Vec<String> {
    if entrypoint.len() == 1 && entrypoint[0].is_empty() {
        Vec::new()
    } else {
        entrypoint
    }
}

impl PlatformConfig {
    pub fn new(platform: impl Into<String>, entrypoint: Vec<String>, cmd: Vec<String>) -> Self {
        Self {
            platform: platform.into(),
            entrypoint: normalize_entrypoint(entrypoint),
            cmd,
        }
    }

    /// The CPU architecture (second part of the platform key).
    pub fn arch(&self) -> &str {
        self.platform.split('/').nth(1).unwrap_or_default()
    }
}

impl ImageConfig {
    /// Build from the raw config fields (`ENTRYPOINT [""]` is normalised to none).
    pub fn new(entrypoint: Vec<String>, cmd: Vec<String>) -> Self {
        Self {
            entrypoint: normalize_entrypoint(entrypoint),
            cmd,
            platforms: Vec::new(),
        }
    }

    /// The config of a multi-platform image from its platforms' configs (`unknown/unknown`
    /// attestations already left out); `None` for an empty list. When every platform has the same
    /// ENTRYPOINT and CMD, the result is a plain single config.
    pub fn from_platforms(platforms: Vec<PlatformConfig>) -> Option<Self> {
        let d = platforms.get(default_platform(&platforms)?)?;
        let agree = platforms
            .iter()
            .all(|p| p.entrypoint == d.entrypoint && p.cmd == d.cmd);
        Some(Self {
            entrypoint: d.entrypoint.clone(),
            cmd: d.cmd.clone(),
            platforms: if agree { Vec::new() } else { platforms },
        })
    }

    /// The config as seen by a pod that only runs on the CPU architectures `allowed` accepts (its
    /// `kubernetes.io/arch` node constraints). When no platform is allowed, nothing is narrowed
    /// (the pod cannot pull the image anyway).
    pub fn narrowed(&self, allowed: impl Fn(&str) -> bool) -> Self {
        if self.platforms.is_empty() {
            return self.clone();
        }
        let kept: Vec<PlatformConfig> = self
            .platforms
            .iter()
            .filter(|p| allowed(p.arch()))
            .cloned()
            .collect();
        if kept.len() == self.platforms.len() || kept.is_empty() {
            return self.clone();
        }
        Self::from_platforms(kept).unwrap_or_else(|| self.clone())
    }
}

/// Which platform's argv goes after `--`: `linux/amd64`, else another amd64 variant, else the first.
fn default_platform(platforms: &[PlatformConfig]) -> Option<usize> {
    platforms
        .iter()
        .position(|p| p.platform == "linux/amd64")
        .or_else(|| platforms.iter().position(|p| p.arch() == "amd64"))
        .or((!platforms.is_empty()).then_some(0))
}

/// Answers of a resolver for one pod: image reference (as written in the pod spec) → its config,
/// or the reason it could not be read (shown to the user in a warning). An image absent from the
/// index is simply unknown.
#[derive(Clone, Debug, Default)]
pub struct ImageIndex {
    images: HashMap<String, Result<ImageConfig, String>>,
    /// Digest of the manifest or index each resolved image's config was read from.
    digests: HashMap<String, String>,
}

impl ImageIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, image: impl Into<String>, config: Result<ImageConfig, String>) {
        self.images.insert(image.into(), config);
    }

    pub fn get(&self, image: &str) -> Option<&Result<ImageConfig, String>> {
        self.images.get(image)
    }

    /// Record the digest (`sha256:...`, verified against the content read) of the manifest or
    /// index `image` resolved to: what pinning `image` to `image@digest` would run.
    pub fn set_digest(&mut self, image: impl Into<String>, digest: impl Into<String>) {
        self.digests.insert(image.into(), digest.into());
    }

    /// The digest `image` resolved to, when the resolver read one (never for failures).
    pub fn digest(&self, image: &str) -> Option<&str> {
        self.digests.get(image).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether some image has per-platform configs (see [`ImageConfig::platforms`]).
    pub fn has_platforms(&self) -> bool {
        self.images
            .values()
            .any(|c| c.as_ref().is_ok_and(|c| !c.platforms.is_empty()))
    }

    /// Every config [`ImageConfig::narrowed`] to the architectures `allowed` accepts.
    pub fn narrowed(&self, allowed: impl Fn(&str) -> bool) -> Self {
        Self {
            images: self
                .images
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_ref()
                            .map(|c| c.narrowed(&allowed))
                            .map_err(Clone::clone),
                    )
                })
                .collect(),
            digests: self.digests.clone(),
        }
    }
}

impl FromIterator<(String, Result<ImageConfig, String>)> for ImageIndex {
    fn from_iter<T: IntoIterator<Item = (String, Result<ImageConfig, String>)>>(iter: T) -> Self {
        Self {
            images: iter.into_iter().collect(),
            digests: HashMap::new(),
        }
    }
}

/// Looks image configs up (from registries, a cache, ...) before a pod is planned.
///
/// Implementations must not fail as a whole and must answer promptly: the handler bounds the call
/// with a timeout and plans with whatever came back (unknown images are then not wrapped).
#[async_trait]
pub trait ImageResolver: Send + Sync + 'static {
    /// Resolve `images` (distinct references from the pod's containers) for `pod` in `namespace`.
    /// The pod is given for its `imagePullSecrets`, service account and node constraints
    /// (platform).
    async fn resolve(&self, pod: &Pod, namespace: &str, images: &[String]) -> ImageIndex;
}

/// A resolver that knows no image (tests, and the planner's fuzzing).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoImageResolver;

#[async_trait]
impl ImageResolver for NoImageResolver {
    async fn resolve(&self, _pod: &Pod, _namespace: &str, _images: &[String]) -> ImageIndex {
        ImageIndex::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc(platform: &str, e: &[&str], cmd: &[&str]) -> PlatformConfig {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        PlatformConfig::new(platform, v(e), v(cmd))
    }

    #[test]
    fn platforms_that_agree_collapse() {
        let c = ImageConfig::from_platforms(vec![
            pc("linux/arm64/v8", &["/app"], &["run"]),
            pc("linux/amd64", &["/app"], &["run"]),
        ])
        .unwrap();
        assert_eq!(c, ImageConfig::new(vec!["/app".into()], vec!["run".into()]));
        assert!(ImageConfig::from_platforms(vec![]).is_none());
    }

    #[test]
    fn default_platform_is_amd64_else_first() {
        let arm = pc("linux/arm64/v8", &["/arm"], &[]);
        let amd = pc("linux/amd64", &["/amd"], &[]);
        let amd3 = pc("linux/amd64/v3", &["/amd3"], &[]);
        let s390 = pc("linux/s390x", &["/s390"], &[]);
        let c = ImageConfig::from_platforms(vec![arm.clone(), amd3.clone(), amd.clone()]).unwrap();
        assert_eq!(c.entrypoint, ["/amd"]);
        assert_eq!(c.platforms.len(), 3);
        let c = ImageConfig::from_platforms(vec![arm.clone(), amd3.clone()]).unwrap();
        assert_eq!(c.entrypoint, ["/amd3"]);
        let c = ImageConfig::from_platforms(vec![s390.clone(), arm.clone()]).unwrap();
        assert_eq!(c.entrypoint, ["/s390"]);
        assert_eq!(arm.arch(), "arm64");
    }

    #[test]
    fn narrowing_by_architecture() {
        let c = ImageConfig::from_platforms(vec![
            pc("linux/amd64", &["/amd"], &["x"]),
            pc("linux/arm64/v8", &["/arm"], &["x"]),
            pc("linux/arm/v7", &["/arm"], &["x"]),
        ])
        .unwrap();
        // arm64 only: one platform, no per-platform table left.
        let n = c.narrowed(|a| a == "arm64");
        assert_eq!(n, ImageConfig::new(vec!["/arm".into()], vec!["x".into()]));
        // The two arm platforms agree.
        let n = c.narrowed(|a| a != "amd64");
        assert!(n.platforms.is_empty() && n.entrypoint == ["/arm"]);
        // Nothing allowed or everything allowed: unchanged.
        assert_eq!(c.narrowed(|_| false), c);
        assert_eq!(c.narrowed(|_| true), c);
        let mut idx = ImageIndex::new();
        idx.insert("img", Ok(c));
        idx.set_digest("img", "sha256:1");
        idx.insert("bad", Err("401".into()));
        assert!(idx.has_platforms());
        let n = idx.narrowed(|a| a == "amd64");
        assert!(!n.has_platforms());
        assert_eq!(n.get("img").unwrap().as_ref().unwrap().entrypoint, ["/amd"]);
        assert_eq!(n.get("bad").unwrap().as_ref().unwrap_err(), "401");
        // Narrowing keeps the digest the config was read from (the index's).
        assert_eq!(n.digest("img"), Some("sha256:1"));
        assert_eq!(n.digest("bad"), None);
    }

    #[test]
    fn empty_entrypoint_string_means_none() {
        let c = ImageConfig::new(vec![String::new()], vec!["sh".into()]);
        assert!(c.entrypoint.is_empty());
        assert_eq!(c.cmd, ["sh"]);
    }
}
