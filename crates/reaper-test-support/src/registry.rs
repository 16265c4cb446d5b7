//! A real OCI registry for tests: Debian's `docker-registry` (CNCF distribution) on 127.0.0.1 with
//! a random port and a temp storage dir, optionally behind htpasswd basic auth or a token server
//! (a small JWT issuer written here); images are OCI layouts written by test code and pushed with
//! `skopeo copy` (an implementation independent of the one under test); a delaying TCP proxy
//! that counts the HTTP requests passing through.

use super::control_plane::{ChildGuard, TestCa, free_port};
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `--reaper-image` of the webhooks started here.
pub const REAPER_IMAGE: &str = "registry.example.com/reaper/reaper:0.1.0";
const START_TIMEOUT: Duration = Duration::from_secs(20);
const PUSH_TIMEOUT: Duration = Duration::from_secs(60);

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// How clients authenticate to a test registry.
pub enum Auth {
    None,
    /// htpasswd basic auth with one user.
    Basic {
        user: String,
        password: String,
    },
    /// Bearer tokens from [`TokenServer`].
    Token(TokenConfig),
}

/// What the registry needs to trust a token server.
#[derive(Clone)]
pub struct TokenConfig {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub cert_pem: String,
}

/// A running `docker-registry serve`.
pub struct TestRegistry {
    _child: ChildGuard,
    dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`
    pub addr: String,
    /// Credentials for pushing (`user:password`), when the registry requires auth.
    pub push_creds: Option<String>,
}

impl TestRegistry {
    /// An open registry.
    pub fn start() -> Self {
        Self::start_with(Auth::None, None, None)
    }

    /// An open registry serving HTTPS with this certificate and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_with(Auth::None, None, Some((cert_pem, key_pem)))
    }

    /// A registry requiring basic auth (htpasswd, bcrypt via `htpasswd -Bbn`).
    pub fn start_basic(user: &str, password: &str) -> Self {
        Self::start_with(
            Auth::Basic {
                user: user.into(),
                password: password.into(),
            },
            Some(format!("{user}:{password}")),
            None,
        )
    }

    /// A registry requiring bearer tokens from `token`'s server; `push_creds` for skopeo.
    pub fn start_token(token: TokenConfig, push_creds: &str) -> Self {
        Self::start_with(Auth::Token(token), Some(push_creds.to_string()), None)
    }

    fn start_with(auth: Auth, push_creds: Option<String>, tls: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the registry");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let auth_yaml = match &auth {
            Auth::None => String::new(),
            Auth::Basic { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd (apache2-utils) is installed");
                assert!(out.status.success(), "htpasswd: {out:?}");
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, &out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: reaper-test\n    path: {}\n",
                    path.display()
                )
            }
            Auth::Token(t) => {
                let path = dir.path().join("token-issuer.pem");
                std::fs::write(&path, &t.cert_pem).unwrap();
                format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    t.realm,
                    t.service,
                    t.issuer,
                    path.display()
                )
            }
        };
        let tls_yaml = match tls {
            None => String::new(),
            Some((cert, key)) => {
                let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
                std::fs::write(&c, cert).unwrap();
                std::fs::write(&k, key).unwrap();
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    c.display(),
                    k.display()
                )
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  secret: reaper-test-secret\n{tls_yaml}{auth_yaml}",
            data.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("registry.log");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("registry.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = ChildGuard::spawn(&mut cmd)
            .expect("docker-registry is installed (apt-get install docker-registry)");
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("msg=\"listening on ").nth(1) {
                break rest
                    .split(['"', ','])
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start within {START_TIMEOUT:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            _child: child,
            dir,
            addr,
            push_creds,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:<port>/<name>:<tag>`
    pub fn image(&self, name: &str, tag: &str) -> String {
        format!("{}/{name}:{tag}", self.addr)
    }

    /// Push an OCI layout's `tag` (with all its platforms) to `<name>:<tag>`; returns the
    /// pushed digest (the layout's own: `--preserve-digests`).
    pub fn push(&self, layout: &Layout, name: &str, tag: &str) -> String {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if let Some(c) = &self.push_creds {
            cmd.arg(format!("--dest-creds={c}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.dir.display()))
            .arg(format!("docker://{}/{name}:{tag}", self.addr));
        let out = run(cmd, PUSH_TIMEOUT);
        assert!(
            out.0,
            "skopeo copy to {}/{name}:{tag} failed:\n{}\nregistry log:\n{}",
            self.addr,
            out.1,
            self.log()
        );
        layout.digest(tag).expect("tag in layout")
    }

    /// Push a single-platform image and return its digest.
    pub fn push_image(&self, name: &str, tag: &str, image: &ImageSpec) -> String {
        let layout = Layout::new();
        layout.add_image(tag, image);
        self.push(&layout, name, tag)
    }

    /// Push a multi-platform index (plus a BuildKit-style attestation entry when asked).
    pub fn push_index(
        &self,
        name: &str,
        tag: &str,
        platforms: &[ImageSpec],
        attestation: bool,
    ) -> String {
        let layout = Layout::new();
        layout.add_index(tag, platforms, attestation);
        self.push(&layout, name, tag)
    }
}

/// Run a command with a timeout; (success, stdout+stderr).
fn run(cmd: Command, timeout: Duration) -> (bool, String) {
    let (ok, out, err) = crate::process::run(cmd, timeout);
    (ok, format!("{out}{err}"))
}

/// An image's platform and the config fields that matter here.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
}

impl ImageSpec {
    /// linux/amd64 with this ENTRYPOINT and CMD (`None`: the field is absent).
    pub fn new(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> Self {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        Self {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
            entrypoint: entrypoint.map(v),
            cmd: cmd.map(v),
        }
    }

    /// The same image for another platform (`arm64/v8`, `arm/v7`, `s390x`).
    pub fn on(mut self, platform: &str) -> Self {
        let mut parts = platform.split('/');
        self.arch = parts.next().unwrap_or_default().to_string();
        self.variant = parts.next().map(String::from);
        self
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// An OCI image layout directory (`oci:DIR:tag` for skopeo).
pub struct Layout {
    tmp: tempfile::TempDir,
    pub dir: PathBuf,
    refs: Mutex<Vec<Value>>,
}

impl Default for Layout {
    fn default() -> Self {
        Self::new()
    }
}

impl Layout {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let l = Self {
            tmp,
            dir,
            refs: Mutex::new(Vec::new()),
        };
        l.write_index();
        l
    }

    /// Store a blob; its descriptor.
    fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = sha256(bytes);
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(self.dir.join("blobs/sha256").join(hex), bytes).unwrap();
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    /// One image manifest (config + one empty tar layer); its descriptor.
    fn manifest(&self, image: &ImageSpec) -> Value {
        // An empty tar archive: two zero blocks.
        let layer_bytes = vec![0u8; 1024];
        let layer = self.blob(MT_LAYER, &layer_bytes);
        let mut config = serde_json::Map::new();
        if let Some(e) = &image.entrypoint {
            config.insert("Entrypoint".into(), json!(e));
        }
        if let Some(c) = &image.cmd {
            config.insert("Cmd".into(), json!(c));
        }
        config.insert("Env".into(), json!(["PATH=/usr/bin:/bin"]));
        let mut cfg = json!({
            "architecture": image.arch,
            "os": image.os,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [sha256(&layer_bytes)]},
        });
        if let Some(v) = &image.variant {
            cfg["variant"] = json!(v);
        }
        let config = self.blob(MT_CONFIG, &serde_json::to_vec(&cfg).unwrap());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": config,
            "layers": [layer],
        });
        self.blob(MT_MANIFEST, &serde_json::to_vec(&manifest).unwrap())
    }

    fn write_index(&self) {
        let refs = self.refs.lock().unwrap();
        let index = json!({"schemaVersion": 2, "manifests": *refs});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }

    fn tag(&self, tag: &str, mut desc: Value) {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.refs.lock().unwrap().push(desc);
        self.write_index();
    }

    /// Tag a single-platform image.
    pub fn add_image(&self, tag: &str, image: &ImageSpec) {
        let desc = self.manifest(image);
        self.tag(tag, desc);
    }

    /// Tag an index of these platforms; with `attestation`, each platform gets a BuildKit-style
    /// attestation entry (`unknown/unknown`) whose config has an ENTRYPOINT of its own, so a
    /// resolver that reads it gives itself away.
    pub fn add_index(&self, tag: &str, platforms: &[ImageSpec], attestation: bool) {
        let mut entries = Vec::new();
        for p in platforms {
            let mut desc = self.manifest(p);
            let mut platform = json!({"os": p.os, "architecture": p.arch});
            if let Some(v) = &p.variant {
                platform["variant"] = json!(v);
            }
            desc["platform"] = platform;
            let digest = desc["digest"].clone();
            entries.push(desc);
            if attestation {
                let mut att = self.manifest(&ImageSpec {
                    os: "unknown".into(),
                    arch: "unknown".into(),
                    variant: None,
                    entrypoint: Some(vec!["/attestation-must-be-skipped".into()]),
                    cmd: None,
                });
                att["platform"] = json!({"os": "unknown", "architecture": "unknown"});
                att["annotations"] = json!({
                    "vnd.docker.reference.type": "attestation-manifest",
                    "vnd.docker.reference.digest": digest,
                });
                entries.push(att);
            }
        }
        let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries});
        let desc = self.blob(MT_INDEX, &serde_json::to_vec(&index).unwrap());
        self.tag(tag, desc);
    }

    /// Digest of a tag in this layout.
    pub fn digest(&self, tag: &str) -> Option<String> {
        self.refs
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .and_then(|d| d["digest"].as_str().map(String::from))
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
}

/// A TCP proxy in front of a registry that delays every client→registry chunk by an adjustable
/// time and records the HTTP request lines it sees. Runs on the test's runtime.
#[derive(Clone)]
pub struct DelayProxy {
    /// `127.0.0.1:<port>`
    pub addr: String,
    delay_ms: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl DelayProxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let p = Self {
            addr,
            delay_ms: Arc::new(AtomicU64::new(0)),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        let (upstream, delay, requests) =
            (upstream.to_string(), p.delay_ms.clone(), p.requests.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, delay, requests) =
                    (upstream.clone(), delay.clone(), requests.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            record(&requests, &buf[..n]);
                            let d = delay.load(Ordering::Relaxed);
                            if d > 0 {
                                tokio::time::sleep(Duration::from_millis(d)).await;
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        p
    }

    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Request lines seen so far (`GET /v2/x/manifests/1 HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests for manifests (`HEAD` or `GET .../manifests/...`) seen so far.
    pub fn manifest_requests(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.contains("/manifests/"))
            .count()
    }

    /// `127.0.0.1:<proxy port>/<name>:<tag>`
    pub fn image(&self, name: &str, tag: &str) -> String {
        format!("{}/{name}:{tag}", self.addr)
    }
}

fn record(requests: &Mutex<Vec<String>>, chunk: &[u8]) {
    let text = String::from_utf8_lossy(chunk);
    let mut r = requests.lock().unwrap();
    for line in text.split("\r\n") {
        if ["GET /", "HEAD /", "POST /", "PUT /", "PATCH /"]
            .iter()
            .any(|m| line.starts_with(m))
            && line.ends_with("HTTP/1.1")
        {
            r.push(line.to_string());
        }
    }
}

/// A Docker-style token server: `GET /token?service=..&scope=repository:NAME:ACTIONS` with basic
/// auth answers a JWT (ES256, `x5c` with a self-signed certificate the registry trusts) granting
/// the requested actions when the credentials are right, 401 otherwise. Anonymous requests get a
/// token without access (so anonymous pulls of a token-protected registry are refused, as on a
/// private Docker Hub repository).
pub struct TokenServer {
    pub config: TokenConfig,
    /// Token requests seen: (user or "", scope).
    pub seen: Arc<Mutex<Vec<(String, String)>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl TokenServer {
    pub async fn start(user: &str, password: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "reaper test token issuer");
        let cert = params.self_signed(&key).unwrap();
        let signer = Arc::new(
            ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
                &ring::rand::SystemRandom::new(),
            )
            .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = TokenConfig {
            realm: format!("http://{addr}/token"),
            service: "reaper-test-registry".into(),
            issuer: "reaper-test-issuer".into(),
            cert_pem: cert.pem(),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(TokenState {
            user: user.into(),
            password: password.into(),
            signer,
            cert_der: cert.der().to_vec(),
            config: config.clone(),
            seen: seen.clone(),
        });
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            config,
            seen,
            _task: task,
        }
    }
}

struct TokenState {
    user: String,
    password: String,
    signer: Arc<ring::signature::EcdsaKeyPair>,
    cert_der: Vec<u8>,
    config: TokenConfig,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn token(
    axum::extract::State(s): axum::extract::State<Arc<TokenState>>,
    headers: axum::http::HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let scopes: Vec<String> = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.strip_prefix("scope="))
        .map(|v| {
            v.replace("%3A", ":")
                .replace("%2F", "/")
                .replace("%2C", ",")
        })
        .collect();
    let user = match &basic {
        Some(b) => {
            if *b != format!("{}:{}", s.user, s.password) {
                s.seen.lock().unwrap().push((b.clone(), scopes.join(" ")));
                return (axum::http::StatusCode::UNAUTHORIZED, "bad credentials").into_response();
            }
            s.user.clone()
        }
        None => String::new(),
    };
    s.seen
        .lock()
        .unwrap()
        .push((user.clone(), scopes.join(" ")));
    let access: Vec<Value> = if user.is_empty() {
        Vec::new()
    } else {
        scopes
            .iter()
            .filter_map(|sc| {
                let mut parts = sc.splitn(3, ':');
                let (ty, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(json!({"type": ty, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&s.cert_der)],
    });
    let claims = json!({
        "iss": s.config.issuer,
        "sub": user,
        "aud": s.config.service,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now - 10,
        "jti": format!("{now}-{}", rand_u32()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header).unwrap()),
        b64url(&serde_json::to_vec(&claims).unwrap())
    );
    let sig = s
        .signer
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .unwrap();
    let jwt = format!("{signing_input}.{}", b64url(sig.as_ref()));
    axum::Json(json!({"token": jwt, "access_token": jwt, "expires_in": 300})).into_response()
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}

/// The kubelet's `$(VAR)` expansion of command, args and env values: `$$` → `$`, `$(NAME)` →
/// the variable's value when defined, otherwise kept as written.
pub fn kube_expand(s: &str, vars: &[(&str, &str)]) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                if let Some((_, v)) = vars.iter().find(|(k, _)| *k == name) {
                    out.push_str(v);
                    i += end + 3;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Write `bytes` to a new file in `dir` (helper for CA bundles and kubeconfigs).
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(bytes).unwrap();
    p
}

/// A running `reaper-controller webhook` (the binary under test) with its own CA and ports.
pub struct Webhook {
    _child: ChildGuard,
    _dir: tempfile::TempDir,
    pub port: u16,
    pub admin: u16,
    log: PathBuf,
    http: reqwest::Client,
}

impl Webhook {
    /// File mode with `policies` (YAML), or cluster mode with `policies: None` (then `KUBECONFIG`
    /// must be set through `kubeconfig`).
    pub async fn start_with(
        policies: Option<&str>,
        kubeconfig: Option<&Path>,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("reaper registry test CA");
        let pair = ca.issue_server(&["127.0.0.1", "localhost"]);
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("tls.crt"), &pair.cert_pem).unwrap();
        std::fs::write(p("tls.key"), &pair.key_pem).unwrap();
        let (port, admin) = (free_port(), free_port());
        let log = p("webhook.err");
        let mut cmd = std::process::Command::new(super::control_plane::reaper_controller_bin());
        cmd.args(["--log-level", "info,reaper=debug", "webhook"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--tls-cert", p("tls.crt").to_str().unwrap()])
            .args(["--tls-key", p("tls.key").to_str().unwrap()])
            .args(["--reaper-image", REAPER_IMAGE])
            .args(extra)
            .env("POD_NAMESPACE", "reaper-system")
            .stdout(std::fs::File::create(p("webhook.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(policies) = policies {
            std::fs::write(p("policies.yaml"), policies).unwrap();
            cmd.args(["--policies", p("policies.yaml").to_str().unwrap()]);
        }
        if let Some(k) = kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        let child = ChildGuard::spawn(&mut cmd).expect("spawning reaper-controller webhook");
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let w = Self {
            _child: child,
            _dir: dir,
            port,
            admin,
            log,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{admin}/readyz")).await
                && r.status() == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "webhook not ready within 60 s:\n{}",
                w.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        w
    }

    /// File mode with these policies.
    pub async fn start(policies: &str, extra: &[&str]) -> Self {
        Self::start_with(Some(policies), None, extra).await
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Admit `pod` (a CREATE) in `namespace`: (the pod as patched, the warnings).
    pub async fn admit(&self, namespace: &str, pod: Value) -> (Value, Vec<String>) {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "7e1f0c2a-0000-4000-8000-000000000001",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace, "operation": "CREATE",
                "userInfo": {"username": "test"},
                "object": pod.clone(), "oldObject": null, "dryRun": false
            }
        });
        let r = self
            .http
            .post(format!("https://localhost:{}/mutate", self.port))
            .json(&review)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /mutate: {e}\n{}", self.logs()));
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["response"]["allowed"], true, "{v}");
        let mut patched = pod;
        if let Some(p) = v["response"]["patch"].as_str() {
            let raw = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
            let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
            json_patch::patch(&mut patched, &patch).unwrap();
        }
        let warnings = v["response"]["warnings"]
            .as_array()
            .map(|w| {
                w.iter()
                    .map(|s| s.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        (patched, warnings)
    }
}
