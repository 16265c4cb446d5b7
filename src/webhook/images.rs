//! What the planner knows about container images: their ENTRYPOINT and CMD.
//!
//! The planner never does I/O. The handler asks an [`ImageResolver`] for the images whose argv the
//! pod does not spell out (see [`super::plan::images_to_resolve`]) and passes the answers in as an
//! [`ImageIndex`]. Until registry lookup exists, [`NoImageResolver`] knows nothing, so such
//! containers can only be wrapped through a policy's `entrypoints`.
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use std::collections::HashMap;

/// The parts of an OCI image config that decide what a container runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `config.Entrypoint` (empty when the image has none).
    pub entrypoint: Vec<String>,
    /// `config.Cmd` (empty when the image has none).
    pub cmd: Vec<String>,
}

impl ImageConfig {
    /// Build from the raw config fields. `ENTRYPOINT [""]` means "no entrypoint" to container
    /// runtimes (containerd and CRI-O drop it), so it is normalised away here.
    pub fn new(entrypoint: Vec<String>, cmd: Vec<String>) -> Self {
        let entrypoint = if entrypoint.len() == 1 && entrypoint[0].is_empty() {
            Vec::new()
        } else {
            entrypoint
        };
        Self { entrypoint, cmd }
    }
}

/// Answers of a resolver for one pod: image reference (as written in the pod spec) → its config,
/// or the reason it could not be read (shown to the user in a warning). An image absent from the
/// index is simply unknown.
#[derive(Clone, Debug, Default)]
pub struct ImageIndex {
    images: HashMap<String, Result<ImageConfig, String>>,
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

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

impl FromIterator<(String, Result<ImageConfig, String>)> for ImageIndex {
    fn from_iter<T: IntoIterator<Item = (String, Result<ImageConfig, String>)>>(iter: T) -> Self {
        Self {
            images: iter.into_iter().collect(),
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

/// The resolver used until registry lookup exists: knows no image.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoImageResolver;

#[async_trait]
impl ImageResolver for NoImageResolver {
    async fn resolve(&self, _pod: &Pod, _namespace: &str, _images: &[String]) -> ImageIndex {
        ImageIndex::default()
    }
}

/// `*` matches any run of characters (including none and `/`); everything else is literal.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` seen and the text position it currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last star absorb one more character and retry.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The fully qualified form of an image reference, as registries and `crictl` show it:
/// `nginx` → `docker.io/library/nginx:latest`, `team/app:1` → `docker.io/team/app:1`.
pub fn normalize_image_reference(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    // A tag is a `:` after the last `/` (a `:` before it belongs to a registry port).
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    let first = repo.split('/').next().unwrap_or_default();
    let has_registry =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut out = if has_registry {
        repo.to_string()
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    match (tag, digest) {
        (Some(tag), _) => {
            out.push(':');
            out.push_str(tag);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    out
}

/// Whether an image reference matches a policy's `image` glob, as written in the pod or in its
/// fully qualified form (so `*/library/nginx:*` and `nginx:*` both catch `nginx:1.27`).
pub fn image_matches(pattern: &str, image: &str) -> bool {
    glob_matches(pattern, image) || glob_matches(pattern, &normalize_image_reference(image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "anything/at:all", true),
            ("nginx", "nginx", true),
            ("nginx", "nginx:1", false),
            ("nginx:*", "nginx:1.27", true),
            ("*/nginx:*", "docker.io/library/nginx:1.27", true),
            (
                "registry.example.com/team/*",
                "registry.example.com/team/app:v1",
                true,
            ),
            (
                "registry.example.com/team/*",
                "registry.example.com/other/app:v1",
                false,
            ),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*a", "banana", true),
            ("*an*an*", "banana", true),
            ("**", "x", true),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob_matches(p, t), want, "{p:?} vs {t:?}");
        }
    }

    #[test]
    fn glob_is_not_exponential() {
        let text = "a".repeat(5000);
        let pattern = format!("{}b", "*a".repeat(50));
        assert!(!glob_matches(&pattern, &text));
    }

    #[test]
    fn normalize() {
        for (i, want) in [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.27", "docker.io/library/nginx:1.27"),
            ("team/app", "docker.io/team/app:latest"),
            ("ghcr.io/o/app:v1", "ghcr.io/o/app:v1"),
            ("localhost/app", "localhost/app:latest"),
            ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
            ("127.0.0.1:5000/app:2", "127.0.0.1:5000/app:2"),
            ("nginx@sha256:abc", "docker.io/library/nginx@sha256:abc"),
            ("nginx:1@sha256:abc", "docker.io/library/nginx:1@sha256:abc"),
        ] {
            assert_eq!(normalize_image_reference(i), want, "{i}");
        }
        assert!(image_matches("*/library/nginx:*", "nginx:1.27"));
        assert!(image_matches("nginx:*", "nginx:1.27"));
        assert!(!image_matches("redis:*", "nginx:1.27"));
    }

    #[test]
    fn empty_entrypoint_string_means_none() {
        let c = ImageConfig::new(vec![String::new()], vec!["sh".into()]);
        assert!(c.entrypoint.is_empty());
        assert_eq!(c.cmd, ["sh"]);
    }
}
