//! What the resolver remembers, with time passed in (no clock inside, so the rules are unit-tested).
//!
//! - digest → config: content-addressed, kept until evicted (bounded LRU);
//! - tag → digest: fresh for a TTL chosen by the *reader* (`--tag-ttl`, shorter for mutable
//!   references), so a pod with `imagePullPolicy: Always` never gets a digest older than its TTL
//!   even when an earlier lookup stored it;
//! - failures: fresh for `--negative-ttl`.
//!
//! Every key holds the registry, the repository and the [`Identity`] the registry was asked as: an
//! answer obtained with one credential is never given to a lookup made with another, and a failure
//! with bad credentials does not hide a success with good ones.
use super::auth::Identity;
use super::{Failure, Resolved};
use crate::image::ImageConfig;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where an image lives and who asks for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoKey {
    /// As written in references (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// `library/nginx`
    pub repository: String,
    pub identity: Identity,
}

/// A lookup: a repository plus a tag or a digest (a digest wins when both are given, as in the
/// kubelet).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LookupKey {
    pub repo: RepoKey,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl LookupKey {
    fn version(&self) -> Version {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Version::Digest(d.clone()),
            (None, Some(t)) => Version::Tag(t.clone()),
            (None, None) => Version::Tag("latest".into()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Version {
    Tag(String),
    Digest(String),
}

/// What a cache read found.
#[derive(Clone, Debug)]
pub enum Cached {
    /// The config and the digest it was read from (the tag's digest for a tag).
    Config(Resolved),
    Failed(Failure),
}

struct TagEntry {
    digest: String,
    at: Instant,
}

struct FailureEntry {
    failure: Failure,
    at: Instant,
}

/// The three maps, each bounded to `capacity` entries.
pub struct Cache {
    configs: LruCache<(RepoKey, String), Arc<ImageConfig>>,
    tags: LruCache<(RepoKey, String), TagEntry>,
    failures: LruCache<(RepoKey, Version), FailureEntry>,
}

impl Cache {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            configs: LruCache::new(capacity),
            tags: LruCache::new(capacity),
            failures: LruCache::new(capacity),
        }
    }

    /// A fresh answer for `key`: a recent failure, or the config of the digest (given, or the
    /// tag's digest younger than `tag_ttl`).
    pub fn get(
        &mut self,
        key: &LookupKey,
        now: Instant,
        tag_ttl: Duration,
        negative_ttl: Duration,
    ) -> Option<Cached> {
        let version = key.version();
        let fk = (key.repo.clone(), version.clone());
        if let Some(f) = self.failures.get(&fk) {
            if now.saturating_duration_since(f.at) < negative_ttl {
                return Some(Cached::Failed(f.failure.clone()));
            }
            self.failures.pop(&fk);
        }
        let digest = match version {
            Version::Digest(d) => d,
            Version::Tag(t) => {
                let entry = self.tags.get(&(key.repo.clone(), t))?;
                if now.saturating_duration_since(entry.at) >= tag_ttl {
                    return None;
                }
                entry.digest.clone()
            }
        };
        let config = self.config(&key.repo, &digest)?;
        Some(Cached::Config(Resolved { digest, config }))
    }

    /// The config stored for a manifest or index digest.
    pub fn config(&mut self, repo: &RepoKey, digest: &str) -> Option<Arc<ImageConfig>> {
        self.configs
            .get(&(repo.clone(), digest.to_string()))
            .cloned()
    }

    /// Remember a config by digest (also the per-platform manifests of an index).
    pub fn put_config(&mut self, repo: &RepoKey, digest: &str, config: Arc<ImageConfig>) {
        self.configs.put((repo.clone(), digest.to_string()), config);
    }

    /// Remember a successful lookup: the tag's digest (as of `now`) and the digest's config.
    /// Clears an earlier failure.
    pub fn put_success(
        &mut self,
        key: &LookupKey,
        digest: &str,
        config: Arc<ImageConfig>,
        now: Instant,
    ) {
        if let Version::Tag(t) = key.version() {
            self.tags.put(
                (key.repo.clone(), t),
                TagEntry {
                    digest: digest.to_string(),
                    at: now,
                },
            );
        }
        self.put_config(&key.repo, digest, config);
        self.failures.pop(&(key.repo.clone(), key.version()));
    }

    /// Remember a failed lookup as of `now`.
    pub fn put_failure(&mut self, key: &LookupKey, failure: Failure, now: Instant) {
        self.failures.put(
            (key.repo.clone(), key.version()),
            FailureEntry { failure, at: now },
        );
    }

    /// Entries held: (configs, tags, failures).
    pub fn len(&self) -> (usize, usize, usize) {
        (self.configs.len(), self.tags.len(), self.failures.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::FailureKind;
    use super::*;

    fn repo(id: Identity) -> RepoKey {
        RepoKey {
            registry: "r:5000".into(),
            repository: "team/app".into(),
            identity: id,
        }
    }

    fn key(id: Identity, tag: Option<&str>, digest: Option<&str>) -> LookupKey {
        LookupKey {
            repo: repo(id),
            tag: tag.map(String::from),
            digest: digest.map(String::from),
        }
    }

    fn cfg(e: &str) -> Arc<ImageConfig> {
        Arc::new(ImageConfig::new(vec![e.into()], vec![]))
    }

    const TTL: Duration = Duration::from_secs(300);
    const NEG: Duration = Duration::from_secs(30);

    fn entry(c: &Option<Cached>) -> Option<String> {
        match c {
            Some(Cached::Config(c)) => Some(c.config.entrypoint[0].clone()),
            Some(Cached::Failed(f)) => Some(format!("failed: {}", f.message)),
            None => None,
        }
    }

    #[test]
    fn tags_expire_digests_do_not() {
        let mut c = Cache::new(NonZeroUsize::new(8).unwrap());
        let t0 = Instant::now();
        let k = key(Identity::Anonymous, Some("1"), None);
        c.put_success(&k, "sha256:a", cfg("/a"), t0);
        assert_eq!(
            entry(&c.get(&k, t0 + TTL / 2, TTL, NEG)).as_deref(),
            Some("/a")
        );
        // The reader's TTL decides: a short one sees the entry as stale already.
        assert!(
            c.get(
                &k,
                t0 + Duration::from_secs(31),
                Duration::from_secs(30),
                NEG
            )
            .is_none()
        );
        assert!(c.get(&k, t0 + TTL, TTL, NEG).is_none());
        // By digest: forever.
        let d = key(Identity::Anonymous, Some("1"), Some("sha256:a"));
        assert_eq!(
            entry(&c.get(&d, t0 + TTL * 100, TTL, NEG)).as_deref(),
            Some("/a")
        );
        // A moved tag: the new digest replaces the old one, and is the one answered.
        c.put_success(&k, "sha256:b", cfg("/b"), t0 + TTL);
        assert_eq!(entry(&c.get(&k, t0 + TTL, TTL, NEG)).as_deref(), Some("/b"));
        let Some(Cached::Config(r)) = c.get(&k, t0 + TTL, TTL, NEG) else {
            panic!("cached")
        };
        assert_eq!(r.digest, "sha256:b");
        // Untagged means latest.
        let latest = key(Identity::Anonymous, None, None);
        c.put_success(
            &key(Identity::Anonymous, Some("latest"), None),
            "sha256:a",
            cfg("/a"),
            t0,
        );
        assert_eq!(entry(&c.get(&latest, t0, TTL, NEG)).as_deref(), Some("/a"));
    }

    #[test]
    fn identities_do_not_share_entries() {
        let mut c = Cache::new(NonZeroUsize::new(8).unwrap());
        let t0 = Instant::now();
        let good = Identity::Credential([1; 32]);
        let bad = Identity::Credential([2; 32]);
        c.put_success(
            &key(good.clone(), Some("1"), None),
            "sha256:a",
            cfg("/a"),
            t0,
        );
        c.put_failure(
            &key(bad.clone(), Some("1"), None),
            Failure::new(FailureKind::Unauthorized, "401"),
            t0,
        );
        assert_eq!(
            entry(&c.get(&key(good.clone(), Some("1"), None), t0, TTL, NEG)).as_deref(),
            Some("/a")
        );
        assert_eq!(
            entry(&c.get(&key(bad.clone(), Some("1"), None), t0, TTL, NEG)).as_deref(),
            Some("failed: 401")
        );
        assert!(
            c.get(
                &key(Identity::Anonymous, Some("1"), Some("sha256:a")),
                t0,
                TTL,
                NEG
            )
            .is_none()
        );
    }

    #[test]
    fn failures_expire_and_successes_clear_them() {
        let mut c = Cache::new(NonZeroUsize::new(8).unwrap());
        let t0 = Instant::now();
        let k = key(Identity::Anonymous, Some("1"), None);
        c.put_failure(&k, Failure::new(FailureKind::NotFound, "404"), t0);
        assert!(matches!(
            c.get(&k, t0 + NEG / 2, TTL, NEG),
            Some(Cached::Failed(_))
        ));
        assert!(c.get(&k, t0 + NEG, TTL, NEG).is_none());
        c.put_failure(&k, Failure::new(FailureKind::NotFound, "404"), t0);
        c.put_success(&k, "sha256:a", cfg("/a"), t0 + Duration::from_secs(1));
        assert_eq!(
            entry(&c.get(&k, t0 + Duration::from_secs(1), TTL, NEG)).as_deref(),
            Some("/a")
        );
    }

    #[test]
    fn bounded() {
        let mut c = Cache::new(NonZeroUsize::new(2).unwrap());
        let t0 = Instant::now();
        for i in 0..5 {
            c.put_success(
                &key(Identity::Anonymous, Some(&i.to_string()), None),
                &format!("sha256:{i}"),
                cfg("/x"),
                t0,
            );
        }
        assert_eq!(c.len(), (2, 2, 0));
        assert!(
            c.get(&key(Identity::Anonymous, Some("0"), None), t0, TTL, NEG)
                .is_none()
        );
        assert!(
            c.get(&key(Identity::Anonymous, Some("4"), None), t0, TTL, NEG)
                .is_some()
        );
    }
}
