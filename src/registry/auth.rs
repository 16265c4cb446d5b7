//! Registry credentials from pull secrets, matched to images the way the kubelet does.
//!
//! Pure: docker config JSON in, an ordered list of credentials for an image out. The kubelet's
//! rules (pkg/credentialprovider): a config key is a host with an optional port and path prefix
//! (`https://`, `http://` and a `/v1/` or `/v2/` path are dropped; `https://index.docker.io/v1/`
//! becomes `index.docker.io`); a key matches an image when the port is the same, the host has the
//! same number of dot-separated parts and each part matches as a glob (`*.example.com`), and the
//! key's path is a prefix of the image's repository path. Keys are tried most specific first
//! (reverse lexical order); several entries under one key are all tried, in secret order. Docker
//! Hub images (`nginx`, `docker.io/...`) also use credentials stored for `index.docker.io`.
//! Credential helpers (`credHelpers`, `credsStore`) are never executed.
use crate::image::glob;
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// Docker Hub's host in docker configs.
const DOCKER_HUB_KEY: &str = "index.docker.io";

/// A username and password for one registry (basic auth, also what a token server receives).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Who a registry request is made as; part of every cache key, so an answer obtained with one
/// credential is only given to pods presenting the same credential (or to anonymous lookups when
/// it was anonymous).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    Anonymous,
    /// SHA-256 of username and password (the secret's name plays no part, so the same
    /// credential in many namespaces shares cache entries).
    Credential([u8; 32]),
}

impl Identity {
    /// Short printable form for logs (never the credential itself).
    pub fn short(&self) -> String {
        match self {
            Identity::Anonymous => "anonymous".to_string(),
            Identity::Credential(h) => format!("cred-{}", hex8(h)),
        }
    }
}

fn hex8(h: &[u8; 32]) -> String {
    h.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

impl Credential {
    /// Empty username and password mean anonymous (the kubelet sends no authorization then).
    pub fn identity(&self) -> Identity {
        if self.username.is_empty() && self.password.is_empty() {
            return Identity::Anonymous;
        }
        let mut h = Sha256::new();
        h.update(self.username.as_bytes());
        h.update([0u8]);
        h.update(self.password.as_bytes());
        Identity::Credential(h.finalize().into())
    }
}

/// Why a pull secret contributed nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("not valid docker config JSON: {0}")]
    Json(String),
    #[error("entry {key:?}: `auth` is not base64 of user:password")]
    Auth { key: String },
}

#[derive(Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, serde_json::Value>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct Entry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
}

/// What a docker config said, after parsing.
#[derive(Debug, Default)]
pub struct ParsedConfig {
    /// `(raw key, credential)` in key order.
    pub entries: Vec<(String, Credential)>,
    /// Registries whose credentials would come from a helper program (ignored).
    pub ignored_helpers: Vec<String>,
}

fn entry_credential(key: &str, e: Entry) -> Result<Credential, ConfigError> {
    // As in the kubelet, a non-empty `auth` wins over `username`/`password`.
    if let Some(auth) = e.auth.filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| ConfigError::Auth { key: key.into() })?;
        let text = String::from_utf8(raw).map_err(|_| ConfigError::Auth { key: key.into() })?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| ConfigError::Auth { key: key.into() })?;
        return Ok(Credential {
            username: u.to_string(),
            password: p.to_string(),
        });
    }
    Ok(Credential {
        username: e.username.unwrap_or_default(),
        password: e.password.unwrap_or_default(),
    })
}

fn collect(
    auths: BTreeMap<String, Entry>,
    helpers: Vec<String>,
) -> Result<ParsedConfig, ConfigError> {
    let mut entries = Vec::with_capacity(auths.len());
    for (key, e) in auths {
        let cred = entry_credential(&key, e)?;
        entries.push((key, cred));
    }
    Ok(ParsedConfig {
        entries,
        ignored_helpers: helpers,
    })
}

/// Parse the `.dockerconfigjson` of a `kubernetes.io/dockerconfigjson` secret.
pub fn parse_dockerconfigjson(bytes: &[u8]) -> Result<ParsedConfig, ConfigError> {
    let c: DockerConfigJson =
        serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?;
    let mut helpers: Vec<String> = c.cred_helpers.into_keys().collect();
    if c.creds_store.is_some() {
        helpers.push("credsStore (all registries)".to_string());
    }
    collect(c.auths, helpers)
}

/// Parse the `.dockercfg` of a legacy `kubernetes.io/dockercfg` secret (the `auths` map itself).
pub fn parse_dockercfg(bytes: &[u8]) -> Result<ParsedConfig, ConfigError> {
    let auths: BTreeMap<String, Entry> =
        serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?;
    collect(auths, Vec::new())
}

/// The kubelet's normalised key: host[:port][/path], no scheme, no `/v1/` or `/v2/`.
fn normalize_key(raw: &str) -> String {
    let s = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))
        .unwrap_or(raw);
    let (host, path) = match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let path = if path.starts_with("/v1/") || path.starts_with("/v2/") {
        &path[3..]
    } else {
        path
    };
    if path.is_empty() || path == "/" {
        host.to_string()
    } else {
        format!("{host}{path}")
    }
}

/// Registry keys kept from one pod's pull secrets (the kubelet has no such bound; a lookup costs
/// at most this many glob matches).
pub const MAX_KEYS: usize = 256;

/// Credentials from pull secrets, in the order the kubelet would try them for an image.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    /// Normalised key → credentials (secret order), keys reverse-sorted (most specific first).
    keys: Vec<(String, Vec<Credential>)>,
}

impl Keyring {
    /// Build from parsed configs, in secret order.
    pub fn new<'a>(configs: impl IntoIterator<Item = &'a ParsedConfig>) -> Self {
        let mut map: BTreeMap<String, Vec<Credential>> = BTreeMap::new();
        let mut entries = 0;
        for c in configs {
            for (key, cred) in &c.entries {
                // Pull secrets are tenant input: bound the work one lookup can cost.
                if entries == MAX_KEYS {
                    tracing::warn!(
                        max = MAX_KEYS,
                        "pull secrets hold more registry keys; the rest are ignored"
                    );
                    break;
                }
                entries += 1;
                map.entry(normalize_key(key))
                    .or_default()
                    .push(cred.clone());
            }
        }
        Self {
            keys: map.into_iter().rev().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Credentials to try, in order, for `image`: `registry/repository` without tag or digest
    /// (`docker.io/library/nginx`). Empty: pull anonymously.
    pub fn lookup(&self, image: &str) -> Vec<Credential> {
        let mut out: Vec<Credential> = Vec::new();
        for (key, creds) in &self.keys {
            if url_matches(key, image) {
                add_unique(&mut out, creds);
            }
        }
        if out.is_empty()
            && crate::image::reference::is_docker_hub(image)
            && let Some((_, creds)) = self.keys.iter().find(|(k, _)| k == DOCKER_HUB_KEY)
        {
            // Several secrets (or `index.docker.io` spelled two ways) may hold the same one.
            add_unique(&mut out, creds);
        }
        out
    }
}

fn add_unique(out: &mut Vec<Credential>, creds: &[Credential]) {
    for c in creds {
        if !out.contains(c) {
            out.push(c.clone());
        }
    }
}

fn split_host(hostport: &str) -> (&str, &str) {
    // IPv6 literals keep their brackets; a port is what follows the last `:` after them.
    let after = hostport.rfind(']').map_or(0, |i| i + 1);
    match hostport[after..].rfind(':') {
        Some(i) => (&hostport[..after + i], &hostport[after + i + 1..]),
        None => (hostport, ""),
    }
}

/// The kubelet's `URLsMatchStr(glob, target)` on schemeless `host[:port][/path]` strings; each
/// host label is a Go `filepath.Match` pattern ([`glob::Syntax::Path`]).
pub fn url_matches(glob: &str, target: &str) -> bool {
    let (g_hostport, g_path) = glob.split_at(glob.find('/').unwrap_or(glob.len()));
    let (t_hostport, t_path) = target.split_at(target.find('/').unwrap_or(target.len()));
    let (g_host, g_port) = split_host(g_hostport);
    let (t_host, t_port) = split_host(t_hostport);
    if g_port != t_port || !t_path.starts_with(g_path) {
        return false;
    }
    if g_host.starts_with('[') && g_host.ends_with(']') {
        // An IPv6 literal: no globbing.
        return g_host == t_host;
    }
    let g_parts: Vec<&str> = g_host.split('.').collect();
    let t_parts: Vec<&str> = t_host.split('.').collect();
    g_parts.len() == t_parts.len()
        && g_parts
            .iter()
            .zip(&t_parts)
            .all(|(g, t)| glob::matches(g, glob::Syntax::Path, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(u: &str, p: &str) -> Credential {
        Credential {
            username: u.into(),
            password: p.into(),
        }
    }

    fn keyring(json: &str) -> Keyring {
        Keyring::new([&parse_dockerconfigjson(json.as_bytes()).unwrap()])
    }

    #[test]
    fn keys_are_normalised_like_the_kubelet() {
        for (raw, want) in [
            ("https://index.docker.io/v1/", "index.docker.io"),
            ("index.docker.io", "index.docker.io"),
            ("http://reg.example.com:5000/v2/", "reg.example.com:5000"),
            ("reg.example.com/team", "reg.example.com/team"),
            (
                "https://reg.example.com/v2/team/app",
                "reg.example.com/team/app",
            ),
            ("reg.example.com/", "reg.example.com"),
        ] {
            assert_eq!(normalize_key(raw), want, "{raw}");
        }
    }

    #[test]
    fn url_matching() {
        for (glob, target, want) in [
            ("reg.example.com", "reg.example.com/team/app", true),
            ("reg.example.com", "reg.example.com:5000/team/app", false),
            ("reg.example.com:5000", "reg.example.com:5000/app", true),
            ("reg.example.com:5000", "reg.example.com/app", false),
            ("*.example.com", "reg.example.com/app", true),
            ("*.example.com", "a.b.example.com/app", false),
            ("*.example.com", "example.com/app", false),
            ("*.*.example.com", "a.b.example.com/app", true),
            ("reg.example.com/team", "reg.example.com/team/app", true),
            ("reg.example.com/team", "reg.example.com/other/app", false),
            // A string prefix, as in the kubelet.
            ("reg.example.com/team", "reg.example.com/teamx/app", true),
            ("re?.example.com", "reg.example.com/x", true),
            ("[a-r]eg.example.com", "reg.example.com/x", true),
            ("[^r]eg.example.com", "reg.example.com/x", false),
            ("127.0.0.1:5000", "127.0.0.1:5000/app", true),
            ("127.0.0.1", "127.0.0.1:5000/app", false),
            ("[::1]:5000", "[::1]:5000/app", true),
        ] {
            assert_eq!(url_matches(glob, target), want, "{glob} vs {target}");
        }
    }

    /// A dockerconfigjson key is tenant input. The old recursive label matcher backtracked
    /// exponentially on keys with several `*` (minutes of a webhook worker for one lookup).
    #[test]
    fn hostile_keys_cost_little() {
        let started = std::time::Instant::now();
        let host = format!("{}.example.com/app", "a".repeat(63));
        let key = format!("{}b.example.com", "*a".repeat(30));
        assert!(!url_matches(&key, &host));
        let config = format!(
            r#"{{"auths": {{{}}}}}"#,
            (0..2 * MAX_KEYS)
                .map(|i| format!(r#""{key}{i}": {{"auth": "dTpw"}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let parsed = parse_dockerconfigjson(config.as_bytes()).unwrap();
        let ring = Keyring::new([&parsed]);
        assert_eq!(ring.keys.len(), MAX_KEYS);
        assert!(ring.lookup(&host).is_empty());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn most_specific_first_and_several_per_key() {
        let a = parse_dockerconfigjson(
            br#"{"auths": {
                "quay.io": {"username": "org", "password": "1"},
                "quay.io/coreos": {"username": "coreos", "password": "2"},
                "*.example.com": {"username": "wild", "password": "3"},
                "reg.example.com": {"username": "exact", "password": "4"}
            }}"#,
        )
        .unwrap();
        let b = parse_dockerconfigjson(
            br#"{"auths": {"quay.io": {"auth": "c2Vjb25kOnNlY3JldDpjb2xvbg=="}}}"#,
        )
        .unwrap();
        let k = Keyring::new([&a, &b]);
        assert_eq!(
            k.lookup("quay.io/coreos/etcd"),
            [
                cred("coreos", "2"),
                cred("org", "1"),
                cred("second", "secret:colon")
            ]
        );
        assert_eq!(
            k.lookup("quay.io/other/x"),
            [cred("org", "1"), cred("second", "secret:colon")]
        );
        assert_eq!(
            k.lookup("reg.example.com/app"),
            [cred("exact", "4"), cred("wild", "3")]
        );
        assert!(k.lookup("ghcr.io/x/y").is_empty());
    }

    #[test]
    fn docker_hub_default_key() {
        let k = keyring(
            r#"{"auths": {"https://index.docker.io/v1/": {"username": "hub", "password": "p"}}}"#,
        );
        for image in [
            "docker.io/library/nginx",
            "nginx",
            "team/app",
            "index.docker.io/team/app",
        ] {
            assert_eq!(k.lookup(image), [cred("hub", "p")], "{image}");
        }
        assert!(k.lookup("ghcr.io/team/app").is_empty());
        assert!(k.lookup("localhost:5000/app").is_empty());
        let k = keyring(r#"{"auths": {"docker.io": {"username": "d", "password": "p"}}}"#);
        assert_eq!(k.lookup("docker.io/library/nginx"), [cred("d", "p")]);
    }

    /// Found by fuzz/fuzz_targets/registry_auth.rs: the Docker Hub fallback returned the key's
    /// credentials as stored, so one credential under `index.docker.io` and
    /// `https://index.docker.io/v1/` (or in two pull secrets) was tried twice.
    #[test]
    fn docker_hub_fallback_has_no_duplicates() {
        let c = parse_dockerconfigjson(
            br#"{"auths": {"index.docker.io": {"username": "a", "password": "b"},
                           "https://index.docker.io/v1/": {"auth": "YTpi"}}}"#,
        )
        .unwrap();
        for k in [Keyring::new([&c]), Keyring::new([&c, &c])] {
            for image in ["nginx", "docker.io/library/nginx", "team/app"] {
                assert_eq!(k.lookup(image), [cred("a", "b")], "{image}");
            }
        }
    }

    #[test]
    fn auth_field_wins_and_bad_input_is_reported() {
        let c = parse_dockerconfigjson(
            br#"{"auths": {"r.io": {"username": "u", "password": "p", "auth": "YTpi"}}}"#,
        )
        .unwrap();
        assert_eq!(c.entries, [("r.io".to_string(), cred("a", "b"))]);
        assert!(matches!(
            parse_dockerconfigjson(br#"{"auths": {"r.io": {"auth": "!!"}}}"#),
            Err(ConfigError::Auth { .. })
        ));
        assert!(matches!(
            parse_dockerconfigjson(br#"{"auths": {"r.io": {"auth": "bm9jb2xvbg=="}}}"#),
            Err(ConfigError::Auth { .. })
        ));
        assert!(matches!(
            parse_dockerconfigjson(b"[1]"),
            Err(ConfigError::Json(_))
        ));
    }

    #[test]
    fn helpers_are_listed_never_used() {
        let c = parse_dockerconfigjson(
            br#"{"auths": {}, "credHelpers": {"gcr.io": "gcloud"}, "credsStore": "desktop"}"#,
        )
        .unwrap();
        assert!(c.entries.is_empty());
        assert_eq!(c.ignored_helpers.len(), 2);
        assert!(Keyring::new([&c]).is_empty());
    }

    #[test]
    fn legacy_dockercfg() {
        let c =
            parse_dockercfg(br#"{"r.io:5000": {"username": "u", "password": "p", "email": "e"}}"#)
                .unwrap();
        assert_eq!(Keyring::new([&c]).lookup("r.io:5000/a"), [cred("u", "p")]);
    }

    #[test]
    fn identities() {
        assert_eq!(cred("", "").identity(), Identity::Anonymous);
        assert_eq!(cred("u", "p").identity(), cred("u", "p").identity());
        assert_ne!(cred("u", "p").identity(), cred("u", "q").identity());
        // The separator keeps "ab"+"c" apart from "a"+"bc".
        assert_ne!(cred("ab", "c").identity(), cred("a", "bc").identity());
        assert!(!format!("{:?}", cred("u", "hunter2")).contains("hunter2"));
        assert!(cred("u", "p").identity().short().starts_with("cred-"));
    }
}
