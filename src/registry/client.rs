//! The distribution API over HTTP(S): manifests by tag or digest, blobs, and the registry's own
//! auth (bearer tokens from the realm of its `WWW-Authenticate` challenge, or basic). Written on
//! reqwest rather than through oci-client because everything a registry sends is untrusted input
//! and oci-client hides the knobs that handles it: here bodies are read incrementally up to a cap,
//! digests are verified, realms and redirects go through [`guard`], at most
//! [`MAX_CONCURRENT_REQUESTS`] requests run at once, and errors carry only sanitized text.
//!
//! `registry_http` is reqwest 0.13 under another name (the tests' dev-dependency `reqwest` is 0.12).
use super::auth::{Credential, Identity};
use super::guard::{self, sanitize_reason};
use super::{Failure, FailureKind};
use hickory_resolver::TokioResolver;
use lru::LruCache;
use registry_http::header::{ACCEPT, HeaderValue, WWW_AUTHENTICATE};
use registry_http::{Method, StatusCode, Url};
use serde::Deserialize;
use sha2::{Digest as _, Sha256, Sha512};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest manifest or index read (containerd's limit).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest config blob read (containerd's limit; real ones are a few KB).
pub const MAX_CONFIG_BYTES: usize = 8 * 1024 * 1024;
/// Registry requests in flight at once, admissions and background fetches together: bounds the
/// sockets and the memory of bodies being read (at most this many capped bodies).
pub const MAX_CONCURRENT_REQUESTS: usize = 16;
/// Largest token response read (JWTs are a few KB).
const MAX_TOKEN_BYTES: usize = 1024 * 1024;
/// What is read of an error body (only a short sanitized reason is kept).
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// Tokens remembered (per identity, registry and repository).
const MAX_GRANTS: usize = 1024;
/// Token lifetime when the token server gives none (the distribution spec's default).
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Tokens are not reused longer than this, whatever the server says.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(3600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(15);
const USER_AGENT: &str = concat!("reaper-controller/", env!("CARGO_PKG_VERSION"));
/// Header carrying a manifest's digest.
const CONTENT_DIGEST: &str = "docker-content-digest";
/// Manifest media types asked for: OCI and Docker v2, single-platform and index.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// `host:port` of registries spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Extra trusted CA certificates (DER), on top of the system roots.
    pub extra_roots: Vec<Vec<u8>>,
}

/// One repository, asked as one identity.
#[derive(Clone, Copy, Debug)]
pub struct Repo<'a> {
    /// As written in the image reference (`docker.io`), for messages.
    pub registry: &'a str,
    /// The host contacted (`index.docker.io` for Docker Hub).
    pub host: &'a str,
    pub repository: &'a str,
    /// `None` (or empty user and password) is anonymous.
    pub credential: Option<&'a Credential>,
}

impl Repo<'_> {
    /// The credential sent, if any.
    fn presented(&self) -> Option<&Credential> {
        self.credential
            .filter(|c| c.identity() != Identity::Anonymous)
    }
}

/// A manifest or index as read, with its verified digest.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub digest: String,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct GrantKey {
    identity: Identity,
    host: String,
    repository: String,
}

/// How requests to a repository are authorized after a challenge.
#[derive(Clone)]
enum Grant {
    Bearer { token: String, until: Instant },
    Basic,
}

/// A response and the request slot it holds until its body is read.
struct Answer {
    resp: registry_http::Response,
    _slot: OwnedSemaphorePermit,
}

pub struct Client {
    /// Registries, and token realms on their registry's own host.
    http: registry_http::Client,
    /// Token realms on other hosts: names resolve only to addresses [`guard`] allows.
    guarded: registry_http::Client,
    insecure: Vec<String>,
    grants: Mutex<LruCache<GrantKey, Grant>>,
    slots: Arc<Semaphore>,
}

impl Client {
    pub fn new(settings: &Settings) -> Result<Self, String> {
        let mut roots = Vec::new();
        for der in &settings.extra_roots {
            roots.push(registry_http::Certificate::from_der(der).map_err(|e| chain(&e))?);
        }
        let builder = || {
            registry_http::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .user_agent(USER_AGENT)
                .tls_certs_merge(roots.clone())
                .redirect(registry_http::redirect::Policy::custom(|attempt| {
                    match guard::check_redirect(attempt.previous(), attempt.url()) {
                        Ok(()) => attempt.follow(),
                        Err(why) => attempt.error(why),
                    }
                }))
        };
        let http = builder().build().map_err(|e| chain(&e))?;
        let guarded = builder()
            .dns_resolver(GuardedResolver::default())
            .build()
            .map_err(|e| chain(&e))?;
        Ok(Self {
            http,
            guarded,
            insecure: settings.insecure.clone(),
            grants: Mutex::new(LruCache::new(
                NonZeroUsize::new(MAX_GRANTS).unwrap_or(NonZeroUsize::MIN),
            )),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS)),
        })
    }

    /// Whether every request slot is taken (for messages about slow lookups).
    pub fn saturated(&self) -> bool {
        self.slots.available_permits() == 0
    }

    fn insecure(&self, host: &str) -> bool {
        self.insecure.iter().any(|i| i == host)
    }

    fn url(&self, repo: &Repo<'_>, kind: &str, reference: &str) -> Result<Url, Failure> {
        // Digests come from manifests (untrusted): only well-formed ones make it into a path.
        if !(valid_digest(reference) || (kind == "manifests" && valid_tag(reference))) {
            return Err(Failure::new(
                FailureKind::Invalid,
                format!(
                    "{}/{}: {:?} is not a valid digest",
                    repo.registry,
                    repo.repository,
                    sanitize_reason(reference)
                ),
            ));
        }
        let scheme = if self.insecure(repo.host) {
            "http"
        } else {
            "https"
        };
        Url::parse(&format!(
            "{scheme}://{}/v2/{}/{kind}/{reference}",
            repo.host, repo.repository
        ))
        .map_err(|e| {
            Failure::new(
                FailureKind::Invalid,
                format!("{}/{}: {e}", repo.registry, repo.repository),
            )
        })
    }

    async fn slot(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the request semaphore is never closed"))
    }

    fn grant(&self, key: &GrantKey) -> Option<Grant> {
        let mut grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        match grants.get(key) {
            Some(Grant::Bearer { until, .. }) if *until <= Instant::now() => {
                grants.pop(key);
                None
            }
            g => g.cloned(),
        }
    }

    fn store(&self, key: GrantKey, grant: Grant) {
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(key, grant);
    }

    /// One request, answering the registry's challenge once (a token from its realm, or basic
    /// credentials) when it says 401.
    async fn exchange(
        &self,
        repo: &Repo<'_>,
        method: Method,
        url: &Url,
    ) -> Result<Answer, Failure> {
        let key = GrantKey {
            identity: repo
                .presented()
                .map_or(Identity::Anonymous, Credential::identity),
            host: repo.host.to_string(),
            repository: repo.repository.to_string(),
        };
        let mut challenged = false;
        loop {
            let grant = self.grant(&key);
            let slot = self.slot().await;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header(ACCEPT, MANIFEST_ACCEPT);
            req = match (&grant, repo.presented()) {
                (Some(Grant::Bearer { token, .. }), _) => req.bearer_auth(token),
                (Some(Grant::Basic), Some(c)) => req.basic_auth(&c.username, Some(&c.password)),
                _ => req,
            };
            let resp = req.send().await.map_err(|e| transport_failure(repo, &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || challenged {
                return Ok(Answer { resp, _slot: slot });
            }
            let challenge = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(parse_challenge);
            let basic_again = matches!(grant, Some(Grant::Basic));
            let next = match challenge {
                Some(Challenge::Bearer { realm, service }) => Some((realm, service)),
                Some(Challenge::Basic) if repo.presented().is_some() && !basic_again => None,
                // Nothing else to try: the caller reports the 401.
                _ => return Ok(Answer { resp, _slot: slot }),
            };
            drop((resp, slot));
            challenged = true;
            match next {
                Some((realm, service)) => {
                    let (token, ttl) = self.token(repo, &realm, service.as_deref()).await?;
                    let until = Instant::now() + ttl;
                    self.store(key.clone(), Grant::Bearer { token, until });
                }
                None => self.store(key.clone(), Grant::Basic),
            }
        }
    }

    /// A pull token for `repo` from `realm` (checked first: see [`guard::check_realm`]).
    async fn token(
        &self,
        repo: &Repo<'_>,
        realm: &str,
        service: Option<&str>,
    ) -> Result<(String, Duration), Failure> {
        let realm = guard::check_realm(realm, repo.host, self.insecure(repo.host)).map_err(|why| {
            Failure::new(
                FailureKind::Error,
                format!(
                    "registry {} asked for a token but {why}; it is not asked (a registry may not send the webhook to its own network)",
                    repo.registry
                ),
            )
        })?;
        let mut url = realm.url;
        url.query_pairs_mut()
            .append_pair("scope", &format!("repository:{}:pull", repo.repository));
        if let Some(s) = service {
            url.query_pairs_mut().append_pair("service", s);
        }
        let client = if realm.same_host {
            &self.http
        } else {
            &self.guarded
        };
        let slot = self.slot().await;
        let mut req = client.get(url);
        if let Some(c) = repo.presented() {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let cannot_reach = |e: &registry_http::Error| {
            Failure::new(
                FailureKind::Unreachable,
                format!(
                    "cannot get a token for registry {} from its token server: {}",
                    repo.registry,
                    sanitize_reason(&chain(&e.without_url_ref()))
                ),
            )
        };
        let resp = req.send().await.map_err(|e| cannot_reach(&e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(denied(repo));
        }
        if status != StatusCode::OK {
            return Err(Failure::new(
                FailureKind::Error,
                format!(
                    "the token server of registry {} answered HTTP {}",
                    repo.registry,
                    status.as_u16()
                ),
            ));
        }
        let body = read_capped(resp, MAX_TOKEN_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => Failure::new(
                    FailureKind::Invalid,
                    format!(
                        "the token server of registry {} sent more than {} bytes",
                        repo.registry, MAX_TOKEN_BYTES
                    ),
                ),
                ReadError::Transport(e) => cannot_reach(&e),
            })?;
        drop(slot);
        parse_token(&body).map_err(|why| {
            Failure::new(
                FailureKind::Invalid,
                format!("the token server of registry {}: {why}", repo.registry),
            )
        })
    }

    /// A tag's digest from a HEAD (Docker Hub does not count HEADs against its pull limits);
    /// `None` when the registry does not say (then the manifest is read by tag).
    pub async fn manifest_digest(
        &self,
        repo: &Repo<'_>,
        tag: &str,
    ) -> Result<Option<String>, Failure> {
        let url = self.url(repo, "manifests", tag)?;
        let answer = self.exchange(repo, Method::HEAD, &url).await?;
        match answer.resp.status() {
            StatusCode::OK => Ok(answer
                .resp
                .headers()
                .get(CONTENT_DIGEST)
                .and_then(|v| v.to_str().ok())
                .filter(|d| valid_digest(d))
                .map(String::from)),
            // Some registries do not answer HEAD: read the manifest.
            StatusCode::METHOD_NOT_ALLOWED => Ok(None),
            _ => Err(failure_of(repo, answer).await),
        }
    }

    /// A manifest or index by tag or digest, at most [`MAX_MANIFEST_BYTES`], its digest verified
    /// (by digest: the content must hash to it; by tag: the registry's digest header must match
    /// the content, else the content's sha256 is the digest).
    pub async fn manifest(&self, repo: &Repo<'_>, reference: &str) -> Result<Manifest, Failure> {
        let url = self.url(repo, "manifests", reference)?;
        let answer = self.exchange(repo, Method::GET, &url).await?;
        if answer.resp.status() != StatusCode::OK {
            return Err(failure_of(repo, answer).await);
        }
        let header = answer
            .resp
            .headers()
            .get(CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let bytes = read_capped(answer.resp, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => Failure::new(
                    FailureKind::Invalid,
                    format!(
                        "{}/{}: manifest {} is larger than {} MiB (the limit containerd applies too)",
                        repo.registry,
                        repo.repository,
                        reference,
                        MAX_MANIFEST_BYTES >> 20
                    ),
                ),
                ReadError::Transport(e) => transport_failure(repo, &e),
            })?;
        let mismatch = |claimed: &str| {
            Failure::new(
                FailureKind::Invalid,
                format!(
                    "{}/{}: the manifest read for {reference} does not match the digest {}",
                    repo.registry,
                    repo.repository,
                    sanitize_reason(claimed)
                ),
            )
        };
        let digest = if valid_digest(reference) {
            if !digest_matches(reference, &bytes) {
                return Err(mismatch(reference));
            }
            reference.to_string()
        } else {
            match header.filter(|h| valid_digest(h)) {
                Some(h) if digest_matches(&h, &bytes) => h,
                Some(h) => return Err(mismatch(&h)),
                None => sha256_digest(&bytes),
            }
        };
        Ok(Manifest { digest, bytes })
    }

    /// A blob by digest, at most `cap` bytes, verified against its digest.
    pub async fn blob(
        &self,
        repo: &Repo<'_>,
        digest: &str,
        cap: usize,
    ) -> Result<Vec<u8>, Failure> {
        let url = self.url(repo, "blobs", digest)?;
        let answer = self.exchange(repo, Method::GET, &url).await?;
        if answer.resp.status() != StatusCode::OK {
            return Err(failure_of(repo, answer).await);
        }
        let bytes = read_capped(answer.resp, cap).await.map_err(|e| match e {
            ReadError::TooLarge => Failure::new(
                FailureKind::Invalid,
                format!(
                    "{}/{}: config blob {digest} is larger than {} MiB (the limit containerd applies too)",
                    repo.registry,
                    repo.repository,
                    cap >> 20
                ),
            ),
            ReadError::Transport(e) => transport_failure(repo, &e),
        })?;
        if !digest_matches(digest, &bytes) {
            return Err(Failure::new(
                FailureKind::Invalid,
                format!(
                    "{}/{}: blob {digest} does not match its digest",
                    repo.registry, repo.repository
                ),
            ));
        }
        Ok(bytes)
    }
}

enum ReadError {
    TooLarge,
    Transport(registry_http::Error),
}

/// The body, chunk by chunk, refused as soon as it passes `cap` (a Content-Length above it is
/// refused before reading; a missing or lying one changes nothing).
async fn read_capped(mut resp: registry_http::Response, cap: usize) -> Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(ReadError::TooLarge);
    }
    let hint = resp.content_length().unwrap_or(0).min(64 * 1024) as usize;
    let mut buf = Vec::with_capacity(hint);
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Transport)? {
        if buf.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// What a registry's error answer means for the user (its body only as a sanitized reason).
async fn failure_of(repo: &Repo<'_>, answer: Answer) -> Failure {
    let status = answer.resp.status().as_u16();
    let mut resp = answer.resp;
    let mut body = Vec::new();
    // Best effort: the start of the body is enough for a reason.
    while body.len() < MAX_ERROR_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c[..c.len().min(MAX_ERROR_BYTES - body.len())]),
            _ => break,
        }
    }
    classify_status(status, &body, repo.registry, repo.repository)
}

fn denied(repo: &Repo<'_>) -> Failure {
    denied_message(repo.registry, repo.repository)
}

fn denied_message(registry: &str, repository: &str) -> Failure {
    Failure::new(
        FailureKind::Unauthorized,
        format!(
            "registry {registry} refused access to {repository}; give the pod an imagePullSecret for it (webhook flag --registry-auth=pull-secrets) or set a ReaperPolicy entrypoint"
        ),
    )
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    errors: Vec<EnvelopeError>,
}

#[derive(Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: Option<String>,
}

/// What a registry's non-200 answer means for the user. The body (an OCI error envelope, or
/// anything) only contributes a reason through [`sanitize_reason`].
pub fn classify_status(code: u16, body: &[u8], registry: &str, repository: &str) -> Failure {
    use FailureKind::*;
    let envelope = serde_json::from_slice::<Envelope>(body)
        .ok()
        .filter(|e| !e.errors.is_empty());
    let codes: Vec<&str> = envelope
        .iter()
        .flat_map(|e| e.errors.iter().map(|e| e.code.as_str()))
        .collect();
    let has = |list: &[&str]| codes.iter().any(|c| list.contains(c));
    if code == 401 || code == 403 || has(&["UNAUTHORIZED", "DENIED"]) {
        return denied_message(registry, repository);
    }
    if code == 404
        || has(&[
            "MANIFEST_UNKNOWN",
            "NAME_UNKNOWN",
            "NOT_FOUND",
            "BLOB_UNKNOWN",
        ])
    {
        return Failure::new(
            NotFound,
            format!("registry {registry} has no such image ({repository})"),
        );
    }
    if code == 429 || has(&["TOOMANYREQUESTS"]) {
        return Failure::new(
            Error,
            format!(
                "registry {registry} is rate-limiting lookups (429); set a ReaperPolicy entrypoint for busy images"
            ),
        );
    }
    let reason = match &envelope {
        Some(e) => {
            let first = &e.errors[0];
            sanitize_reason(&match &first.message {
                Some(m) if !m.trim().is_empty() => format!("{}: {m}", first.code),
                _ => first.code.clone(),
            })
        }
        None => sanitize_reason(&String::from_utf8_lossy(body)),
    };
    let mut message = format!("registry {registry} answered HTTP {code}");
    if !reason.is_empty() {
        message.push_str(": ");
        message.push_str(&reason);
    }
    Failure::new(Error, message)
}

/// A failed request or body read (connection, TLS, DNS, timeout, refused redirect).
fn transport_failure(repo: &Repo<'_>, e: &registry_http::Error) -> Failure {
    let why = sanitize_reason(&chain(&e.without_url_ref()));
    if e.is_redirect() {
        Failure::new(
            FailureKind::Error,
            format!("registry {}: {why}", repo.registry),
        )
    } else {
        Failure::new(
            FailureKind::Unreachable,
            format!("cannot reach registry {}: {why}", repo.registry),
        )
    }
}

/// reqwest's error without its URL (the registry is named already; redirect targets are the
/// registry's text), as an owned error that still has its sources.
trait WithoutUrl {
    fn without_url_ref(&self) -> ErrorWithoutUrl<'_>;
}

impl WithoutUrl for registry_http::Error {
    fn without_url_ref(&self) -> ErrorWithoutUrl<'_> {
        ErrorWithoutUrl(self)
    }
}

#[derive(Debug)]
struct ErrorWithoutUrl<'a>(&'a registry_http::Error);

impl std::fmt::Display for ErrorWithoutUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.0;
        let what = if e.is_redirect() {
            "following a redirect"
        } else if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "cannot connect"
        } else if e.is_body() || e.is_decode() {
            "reading the answer"
        } else {
            "request failed"
        };
        f.write_str(what)
    }
}

impl std::error::Error for ErrorWithoutUrl<'_> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(self.0)
    }
}

/// The error and its causes on one line (reqwest's own message hides the interesting part).
pub fn chain(e: &dyn std::error::Error) -> String {
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

/// A registry's authentication challenge, as far as it matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
    },
    Basic,
}

/// The challenge to answer from one `WWW-Authenticate` value (which may hold several): Bearer
/// with a realm first, else Basic.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let challenges = parse_challenges(header);
    let bearer = challenges.iter().find_map(|(scheme, params)| {
        if scheme != "bearer" {
            return None;
        }
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
        })
    });
    bearer.or_else(|| {
        challenges
            .iter()
            .any(|(s, _)| s == "basic")
            .then_some(Challenge::Basic)
    })
}

type Params = Vec<(String, String)>;

/// RFC 9110 challenges: `scheme param=value, param="quoted", scheme2 ...` (scheme lowercased).
fn parse_challenges(header: &str) -> Vec<(String, Params)> {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let mut out: Vec<(String, Params)> = Vec::new();
    let mut s = header;
    loop {
        s = s.trim_start_matches([' ', '\t', ',']);
        let end = s.find(|c| !is_tchar(c)).unwrap_or(s.len());
        if end == 0 {
            return out;
        }
        let token = &s[..end];
        let rest = s[end..].trim_start_matches([' ', '\t']);
        match (rest.strip_prefix('='), out.last_mut()) {
            (Some(value), Some((_, params))) if !value.starts_with('=') => {
                let value = value.trim_start_matches([' ', '\t']);
                let (v, after) = if let Some(q) = value.strip_prefix('"') {
                    let mut v = String::new();
                    let mut chars = q.char_indices();
                    let mut end = None;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, e)) = chars.next() {
                                    v.push(e);
                                }
                            }
                            '"' => {
                                end = Some(i + 1);
                                break;
                            }
                            c => v.push(c),
                        }
                    }
                    let Some(end) = end else { return out };
                    (v, &q[end..])
                } else {
                    let end = value.find(|c| !is_tchar(c)).unwrap_or(value.len());
                    (value[..end].to_string(), &value[end..])
                };
                params.push((token.to_ascii_lowercase(), v));
                s = after;
            }
            (Some(_), _) => {
                // token68 (`Negotiate abc==`) or a parameter before any scheme: skip it.
                s = rest.trim_start_matches('=');
                s = s.find(',').map_or("", |i| &s[i..]);
            }
            (None, _) => {
                out.push((token.to_ascii_lowercase(), Vec::new()));
                s = rest;
            }
        }
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A token server's answer: the token (`token`, or OAuth's `access_token`) and how long to use it.
pub fn parse_token(body: &[u8]) -> Result<(String, Duration), String> {
    let t: TokenAnswer =
        serde_json::from_slice(body).map_err(|_| "its answer is not a token (JSON)".to_string())?;
    let token = t
        .token
        .filter(|t| !t.is_empty())
        .or(t.access_token)
        .filter(|t| !t.is_empty())
        .ok_or("its answer holds no token")?;
    // It goes into an Authorization header.
    if HeaderValue::from_str(&token).is_err() || token.contains(' ') {
        return Err("its token is not a header-safe string".into());
    }
    let ttl = t
        .expires_in
        .map_or(DEFAULT_TOKEN_TTL, Duration::from_secs)
        .min(MAX_TOKEN_TTL);
    // Renew a little before the server's deadline.
    Ok((token, ttl.saturating_sub(ttl / 10)))
}

/// `sha256:<64 hex>` or `sha512:<128 hex>` (lowercase), the digests verified here.
pub fn valid_digest(d: &str) -> bool {
    let hex = |h: &str, n: usize| {
        h.len() == n
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match d.split_once(':') {
        Some(("sha256", h)) => hex(h, 64),
        Some(("sha512", h)) => hex(h, 128),
        _ => false,
    }
}

/// A tag as the distribution spec allows it: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let mut bytes = t.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && t.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Whether `bytes` hash to `digest` (a [`valid_digest`]).
pub fn digest_matches(digest: &str, bytes: &[u8]) -> bool {
    match digest.split_once(':') {
        Some(("sha256", _)) => sha256_digest(bytes) == digest,
        Some(("sha512", _)) => format!("sha512:{}", hex(&Sha512::digest(bytes))) == digest,
        _ => false,
    }
}

/// Resolves token realm host names (realms on another host than their registry) keeping only
/// the addresses [`guard::forbidden_address`] allows: checked when connecting, so a name that
/// resolves to 127.0.0.1 or 169.254.169.254 (or is rebound to it) is not reached.
#[derive(Clone, Default)]
struct GuardedResolver {
    resolver: Arc<tokio::sync::OnceCell<TokioResolver>>,
}

impl registry_http::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: registry_http::dns::Name) -> registry_http::dns::Resolving {
        let cell = self.resolver.clone();
        Box::pin(async move {
            let resolver = cell
                .get_or_try_init(|| async {
                    let mut b = TokioResolver::builder_tokio()?;
                    b.options_mut().ip_strategy =
                        hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
                    b.build()
                })
                .await?;
            let host = name.as_str();
            let found = resolver.lookup_ip(host).await?;
            let (allowed, refused): (Vec<IpAddr>, Vec<IpAddr>) = found
                .iter()
                .partition(|ip| guard::forbidden_address(*ip).is_none());
            if allowed.is_empty() {
                let mut kinds: Vec<&str> = refused
                    .iter()
                    .filter_map(|ip| guard::forbidden_address(*ip))
                    .collect();
                kinds.sort_unstable();
                kinds.dedup();
                return Err(format!(
                    "{host} resolves to {} addresses only: a registry may not send the webhook there",
                    if kinds.is_empty() {
                        "no".to_string()
                    } else {
                        kinds.join("/")
                    }
                )
                .into());
            }
            let addrs: registry_http::dns::Addrs =
                Box::new(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        // Several challenges in one value; Bearer wins; case and spacing vary.
        assert_eq!(
            parse_challenge(
                r#"Basic realm="x", BEARER Realm = "https://a/t" , service=svc, Negotiate abc=="#
            ),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: Some("svc".into()),
            })
        );
        // Escapes in quoted strings.
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://a/t?q=\"x\",y""#),
            Some(Challenge::Bearer {
                realm: r#"https://a/t?q="x",y"#.into(),
                service: None,
            })
        );
        // Bearer without a realm, unterminated quotes, garbage: nothing to answer.
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge(r#"Bearer realm="https://a"#), None);
        assert_eq!(parse_challenge("\"\"\"=,,,"), None);
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn tokens() {
        let (t, ttl) = parse_token(br#"{"token":"abc.def","expires_in":300}"#).unwrap();
        assert_eq!((t.as_str(), ttl), ("abc.def", Duration::from_secs(270)));
        let (t, ttl) = parse_token(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!((t.as_str(), ttl), ("xyz", Duration::from_secs(54)));
        let (_, ttl) = parse_token(br#"{"token":"a","expires_in":99999999}"#).unwrap();
        assert_eq!(ttl, Duration::from_secs(3240));
        assert!(parse_token(br#"{"token":""}"#).is_err());
        assert!(parse_token(br#"{"token":"a\r\nX-Evil: 1"}"#).is_err());
        assert!(parse_token(br#"{"token":"a b"}"#).is_err());
        assert!(parse_token(b"<html>").is_err());
    }

    #[test]
    fn digests_and_tags() {
        let d = sha256_digest(b"hello");
        assert_eq!(
            d,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(valid_digest(&d) && digest_matches(&d, b"hello"));
        assert!(!digest_matches(&d, b"hello!"));
        let d512 = format!("sha512:{}", hex(&Sha512::digest(b"x")));
        assert!(valid_digest(&d512) && digest_matches(&d512, b"x"));
        for bad in [
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha256:abc",
            "sha256:../../../../etc/passwd",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256",
            "",
        ] {
            assert!(!valid_digest(bad), "{bad}");
        }
        for ok in ["latest", "1.2.3", "_x", "v1-rc.2_b"] {
            assert!(valid_tag(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "a?b", &"x".repeat(129)] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }

    #[test]
    fn error_answers_say_what_to_do_and_never_echo_bodies() {
        let f = classify_status(401, b"", "r:5000", "team/app");
        assert_eq!(f.kind, FailureKind::Unauthorized);
        assert!(f.message.contains("imagePullSecret"), "{}", f.message);
        let f = classify_status(
            400,
            br#"{"errors":[{"code":"DENIED","message":"no"}]}"#,
            "r",
            "a",
        );
        assert_eq!(f.kind, FailureKind::Unauthorized);
        assert_eq!(
            classify_status(404, b"", "r", "a").kind,
            FailureKind::NotFound
        );
        let f = classify_status(
            400,
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            "r",
            "a",
        );
        assert_eq!(f.kind, FailureKind::NotFound);
        assert!(f.message.contains("has no such image"), "{}", f.message);
        assert!(
            classify_status(429, b"", "r", "a")
                .message
                .contains("rate-limiting")
        );
        let f = classify_status(503, b"  busy ", "r", "a");
        assert_eq!(f.kind, FailureKind::Error);
        assert!(f.message.ends_with("503: busy"), "{}", f.message);
        let f = classify_status(
            500,
            br#"{"errors":[{"code":"UNKNOWN","message":"\u001b[2J<script>x</script>disk full"}]}"#,
            "r",
            "a",
        );
        assert_eq!(
            f.message,
            "registry r answered HTTP 500: UNKNOWN: [2J disk full"
        );
        // An HTML error page of any size: a short plain-text reason.
        let page = format!(
            "<html><body><h1>502 Bad Gateway</h1>{}</body></html>",
            "<p>\x07filler</p>".repeat(10_000)
        );
        let f = classify_status(502, page.as_bytes(), "r", "a");
        assert!(
            f.message
                .starts_with("registry r answered HTTP 502: 502 Bad Gateway filler")
        );
        let reason = f.message.split_once(": ").unwrap().1;
        assert!(
            reason.chars().count() <= guard::MAX_REASON_CHARS,
            "{reason}"
        );
        assert!(!f.message.contains('<') && !f.message.contains('\x07'));
        assert_eq!(
            classify_status(500, b"", "r", "a").message,
            "registry r answered HTTP 500"
        );
    }

    #[test]
    fn a_client_builds_with_plain_http_registries_and_extra_roots() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let c = Client::new(&Settings {
            insecure: vec!["10.0.0.1:5000".into()],
            extra_roots: vec![ca.der().to_vec()],
        })
        .unwrap();
        let repo = Repo {
            registry: "10.0.0.1:5000",
            host: "10.0.0.1:5000",
            repository: "team/app",
            credential: None,
        };
        assert_eq!(
            c.url(&repo, "manifests", "1").unwrap().as_str(),
            "http://10.0.0.1:5000/v2/team/app/manifests/1"
        );
        let other = Repo {
            host: "reg.example.com",
            ..repo
        };
        assert!(
            c.url(&other, "manifests", "1")
                .unwrap()
                .as_str()
                .starts_with("https://")
        );
        // Digests from manifests never make paths of their own.
        let e = c.url(&repo, "blobs", "sha256:../../x").unwrap_err();
        assert_eq!(e.kind, FailureKind::Invalid);
        assert!(c.url(&repo, "blobs", "latest").is_err());
    }
}
