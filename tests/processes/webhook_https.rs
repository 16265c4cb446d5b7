//! The webhook as a whole on real sockets: HTTPS with certificates made by rcgen, the admin
//! port, certificate rotation under load, bad inputs, graceful shutdown.
use async_trait::async_trait;
use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use reaper::image::{ImageIndex, ImageResolver, NoImageResolver};
use reaper::webhook::{Args, run_with};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REVIEW: &str = include_str!("../fixtures/pods/reviews/deployment-3-containers.json");
const POLICIES: &str = r#"
apiVersion: reaper.dev/v1alpha1
kind: ReaperPolicy
metadata: {name: apps}
spec:
  namespaceSelector:
    matchLabels: {kubernetes.io/metadata.name: apps}
  reaper: {grace: 5s}
"#;

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "reaper test CA");
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Self {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A serving pair for localhost / 127.0.0.1 signed by the CA: (cert PEM, key PEM, cert DER).
    fn leaf(&self) -> (String, String, Vec<u8>) {
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// A client certificate signed by the CA, as one PEM (certificate then key) for reqwest.
    fn client_identity(&self, cn: &str) -> reqwest::Identity {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        reqwest::Identity::from_pem(pem.as_bytes()).unwrap()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Webhook {
    dir: tempfile::TempDir,
    port: u16,
    admin: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<reaper::webhook::Result<()>>>,
}

impl Webhook {
    async fn start(pki: &Pki, resolver: Arc<dyn ImageResolver>) -> Self {
        Self::start_with(pki, resolver, Default::default()).await
    }

    async fn start_with(
        pki: &Pki,
        resolver: Arc<dyn ImageResolver>,
        exposure: reaper::webhook::exposure::Args,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = pki.leaf();
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        std::fs::write(dir.path().join("policies.yaml"), POLICIES).unwrap();
        let (port, admin) = (free_port(), free_port());
        let args = Args {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            tls_cert: dir.path().join("tls.crt"),
            tls_key: dir.path().join("tls.key"),
            admin: reaper::component::AdminArgs {
                admin_listen: format!("127.0.0.1:{admin}").parse().unwrap(),
            },
            reaper_image: "registry.example.com/reaper:0.1.0".into(),
            mount_path: "/.reaper".into(),
            default_mode: reaper::crd::Mode::Auto,
            image_volumes: Default::default(),
            scope: reaper::scope::ScopeArgs {
                excluded_namespaces: vec!["kube-system".into()],
                ..Default::default()
            },
            policies: Some(dir.path().join("policies.yaml")),
            install_run_as_user: Some(65532),
            install_cpu_request: "10m".into(),
            install_memory_request: "16Mi".into(),
            install_cpu_limit: "100m".into(),
            install_memory_limit: "64Mi".into(),
            volume_size_limit: "8Mi".into(),
            pin_digests: false,
            events: true,
            registry: Default::default(),
            exposure,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_with(args, resolver, async move {
            let _ = rx.await;
        }));
        let w = Self {
            dir,
            port,
            admin,
            stop: Some(tx),
            task: Some(task),
        };
        w.wait_ready().await;
        w
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let url = format!("http://127.0.0.1:{}/readyz", self.admin);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "webhook not ready within 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/mutate", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stop (as on SIGTERM) and wait for `run_with` to return.
    async fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let r = tokio::time::timeout(Duration::from_secs(15), self.task.take().unwrap())
            .await
            .expect("webhook stops within 15 s")
            .unwrap();
        r.unwrap();
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

fn client(pki: &Pki, reuse_connections: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10));
    if !reuse_connections {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().unwrap()
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

fn check_review_answer(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["response"]["uid"], "0f4e9d8c-7b6a-4f5e-9d3c-2b1a0f9e8d7c");
    assert_eq!(v["response"]["allowed"], true);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
    let mut pod: Value =
        serde_json::from_str::<Value>(REVIEW).unwrap()["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

#[tokio::test]
async fn admission_review_round_trip_over_https() {
    let pki = Pki::new();
    let mut w = Webhook::start(&pki, Arc::new(NoImageResolver)).await;
    let (status, body) = post(&client(&pki, true), &w.url(), REVIEW.as_bytes().to_vec()).await;
    assert_eq!(status, 200);
    let pod = check_review_answer(&body);
    // The file policy's reaper options reach the wrapped argv.
    assert_eq!(
        pod["spec"]["containers"][0]["command"],
        json!(["/.reaper/reaper", "--grace=5s", "--", "/web"])
    );
    assert_eq!(
        pod["metadata"]["annotations"]["reaper.dev/injected"],
        "inject:web,metrics-proxy,log-forwarder"
    );
    serde_json::from_value::<Pod>(pod).unwrap();

    let metrics = w.metrics().await;
    assert!(
        metrics.contains(
            r#"reaper_webhook_requests_total{result="inject",mode="auto",reason="none",namespace="apps"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"reaper_webhook_certificate_reloads_total{result="success"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("reaper_webhook_policies 1"), "{metrics}");
    assert!(
        metrics.contains("reaper_webhook_certificate_expiry_timestamp_seconds "),
        "{metrics}"
    );
    w.stop().await;
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn() {
    use http_body_util::{BodyExt, Full};
    let pki = Pki::new();
    let mut w = Webhook::start(&pki, Arc::new(NoImageResolver)).await;
    let tls = tls_connect(&pki, w.port, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("https://localhost:{}/mutate", w.port))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from_static(REVIEW.as_bytes())))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    check_review_answer(&res.into_body().collect().await.unwrap().to_bytes());
    w.stop().await;
}

/// A TLS connection to the webhook trusting only the test CA, offering `alpn`.
async fn tls_connect(
    pki: &Pki,
    port: u16,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    try_tls_connect(pki, port, alpn).await.unwrap()
}

async fn try_tls_connect(
    pki: &Pki,
    port: u16,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    let ca: rustls_pki_types::CertificateDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(pki.ca_pem.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
}

/// The DER of the certificate the server presents to a fresh connection.
async fn served_cert(pki: &Pki, port: u16) -> Vec<u8> {
    let tls = tls_connect(pki, port, &[]).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_for_cert(pki: &Pki, port: u16, der: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cert(pki, port).await != der {
        assert!(
            Instant::now() < deadline,
            "new certificate not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let pki = Pki::new();
    let mut w = Webhook::start(&pki, Arc::new(NoImageResolver)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for i in 0..4 {
        // Half the workers open a new connection (a new handshake) per request.
        let c = client(&pki, i % 2 == 0);
        let (url, stop, ok, failed) = (w.url(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match c.post(&url).body(REVIEW).send().await {
                    Ok(r) if r.status() == 200 => match r.bytes().await {
                        Ok(b) => {
                            check_review_answer(&b);
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failed.lock().unwrap().push(format!("body: {e}")),
                    },
                    Ok(r) => failed
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failed.lock().unwrap().push(format!("{e:?}")),
                }
            }
        }));
    }
    let (crt, key) = (w.path("tls.crt"), w.path("tls.key"));
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (c, k, der) = pki.leaf();
        if round % 2 == 0 {
            // What a Secret volume does (both change at once).
            write_atomically(&key, &k);
            write_atomically(&crt, &c);
        } else {
            // A careless writer: the cert lands well before its key; the mismatched pair in
            // between is rejected and the previous one stays in use.
            std::fs::write(&crt, &c).unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            std::fs::write(&key, &k).unwrap();
        }
        wait_for_cert(&pki, w.port, &der).await;
    }
    // Garbage: rejected, the last good pair stays.
    let before = served_cert(&pki, w.port).await;
    std::fs::write(&crt, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(served_cert(&pki, w.port).await, before);
    stop.store(true, Ordering::Relaxed);
    for t in workers {
        t.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests went through");
    let metrics = w.metrics().await;
    assert!(
        metrics.contains(r#"reaper_webhook_certificate_reloads_total{result="success"} 7"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"reaper_webhook_certificate_reloads_total{result="error"}"#),
        "{metrics}"
    );
    w.stop().await;
}

#[tokio::test]
async fn bad_inputs_get_the_stated_4xx_and_the_server_keeps_serving() {
    let pki = Pki::new();
    let mut w = Webhook::start(&pki, Arc::new(NoImageResolver)).await;
    let c = client(&pki, true);
    let mut non_utf8 = REVIEW.as_bytes().to_vec();
    non_utf8[100] = 0xc3;
    non_utf8[101] = 0x28;
    let mut wrong_kind: Value = serde_json::from_str(REVIEW).unwrap();
    wrong_kind["kind"] = json!("ConversionReview");
    let mut no_uid: Value = serde_json::from_str(REVIEW).unwrap();
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let mut big = REVIEW.as_bytes().to_vec();
    big.resize(5 * 1024 * 1024, b' ');
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "truncated",
            REVIEW.as_bytes()[..5000].to_vec(),
            400,
            "not valid JSON",
        ),
        ("non-UTF-8", non_utf8, 400, "not valid UTF-8"),
        (
            "wrong kind",
            serde_json::to_vec(&wrong_kind).unwrap(),
            400,
            "kind is \"ConversionReview\"",
        ),
        (
            "missing uid",
            serde_json::to_vec(&no_uid).unwrap(),
            400,
            "no uid",
        ),
        ("5 MiB", big, 413, "exceeds 4 MiB"),
    ];
    for (name, body, status, text) in cases {
        let (got, body) = post(&c, &w.url(), body).await;
        let body = String::from_utf8(body).unwrap();
        assert_eq!(got, status, "{name}: {body}");
        assert!(body.contains(text), "{name}: {body:?}");
        assert_eq!(body.trim_end().lines().count(), 1, "{name}");
    }
    // A request whose body ends early (Content-Length promises more): answered or closed,
    // never a crash.
    raw_truncated_request(&pki, w.port).await;
    let (status, body) = post(&c, &w.url(), REVIEW.as_bytes().to_vec()).await;
    assert_eq!(status, 200);
    check_review_answer(&body);
    w.stop().await;
}

async fn raw_truncated_request(pki: &Pki, port: u16) {
    let mut tls = tls_connect(pki, port, &[b"http/1.1"]).await;
    tls.write_all(b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"apiVersion\":")
        .await
        .unwrap();
    tls.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
        .await
        .expect("the server answers or closes within 10 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "unexpected answer: {text}"
    );
}

/// A resolver that takes a while, so a request is in flight when the webhook is stopped.
struct Slow;

#[async_trait]
impl ImageResolver for Slow {
    async fn resolve(&self, _pod: &Pod, _ns: &str, _images: &[String]) -> ImageIndex {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        ImageIndex::default()
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let pki = Pki::new();
    let mut w = Webhook::start(&pki, Arc::new(Slow)).await;
    let c = client(&pki, true);
    // nginx without a command: the resolver is consulted (and is slow).
    let mut review: Value = serde_json::from_str(REVIEW).unwrap();
    let c0 = review["request"]["object"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap();
    c0.remove("command");
    c0.remove("args");
    let url = w.url();
    let body = serde_json::to_vec(&review).unwrap();
    let in_flight = tokio::spawn(async move { post(&c, &url, body).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    w.stop().await;
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["allowed"], true);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The port is closed afterwards.
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", w.port))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn policies_file_is_reloaded() {
    let pki = Pki::new();
    let mut w = Webhook::start(&pki, Arc::new(NoImageResolver)).await;
    let c = client(&pki, true);
    std::fs::write(
        w.path("policies.yaml"),
        POLICIES.replace("reaper: {grace: 5s}", "mode: Share"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = post(&c, &w.url(), REVIEW.as_bytes().to_vec()).await;
        let pod = check_review_answer(&body);
        if pod["spec"]["shareProcessNamespace"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "policy change not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An invalid file keeps the last good policies.
    std::fs::write(w.path("policies.yaml"), "kind: [").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, body) = post(&c, &w.url(), REVIEW.as_bytes().to_vec()).await;
    assert_eq!(
        check_review_answer(&body)["spec"]["shareProcessNamespace"],
        true
    );
    w.stop().await;
}

fn limits(f: impl FnOnce(&mut reaper::webhook::exposure::Args)) -> reaper::webhook::exposure::Args {
    let mut a = reaper::webhook::exposure::Args::default();
    f(&mut a);
    a
}

/// The review with its first container's command removed, so the (slow) resolver is asked.
fn review_needing_lookup() -> Vec<u8> {
    let mut review: Value = serde_json::from_str(REVIEW).unwrap();
    let c0 = review["request"]["object"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap();
    c0.remove("command");
    c0.remove("args");
    serde_json::to_vec(&review).unwrap()
}

/// Beyond `--max-in-flight`, a request is refused at once with 503 and Retry-After (the API
/// server then applies the failure policy instead of waiting out its timeout), and counted.
#[tokio::test]
async fn saturated_webhook_refuses_at_once_and_recovers() {
    let pki = Pki::new();
    let mut w = Webhook::start_with(&pki, Arc::new(Slow), limits(|a| a.max_in_flight = 1)).await;
    let (c, url) = (client(&pki, false), w.url());
    let busy = tokio::spawn(async move { post(&c, &url, review_needing_lookup()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let r = client(&pki, false)
        .post(w.url())
        .header("content-type", "application/json")
        .body(REVIEW)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "not at once"
    );
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(r.text().await.unwrap().contains("overloaded"));

    let (status, _) = busy.await.unwrap();
    assert_eq!(status, 200, "the request in flight is not disturbed");
    let (status, body) = post(&client(&pki, false), &w.url(), REVIEW.into()).await;
    assert_eq!(status, 200);
    check_review_answer(&body);
    let metrics = w.metrics().await;
    assert!(
        metrics.contains(
            r#"reaper_webhook_requests_total{result="overloaded",mode="none",reason="none",namespace=""} 1"#
        ),
        "{metrics}"
    );
    w.stop().await;
}

/// Beyond `--max-connections`, a connection is closed before any TLS work; closing one frees a
/// slot.
#[tokio::test]
async fn connections_beyond_the_cap_are_closed_on_accept() {
    let pki = Pki::new();
    let mut w = Webhook::start_with(
        &pki,
        Arc::new(NoImageResolver),
        limits(|a| a.max_connections = 2),
    )
    .await;
    let held = [
        tls_connect(&pki, w.port, &[b"http/1.1"]).await,
        tls_connect(&pki, w.port, &[b"http/1.1"]).await,
    ];
    assert!(
        try_tls_connect(&pki, w.port, &[b"http/1.1"]).await.is_err(),
        "a third connection completes its handshake"
    );
    let metrics = w.metrics().await;
    assert!(
        metrics.contains("reaper_webhook_connections_refused_total 1"),
        "{metrics}"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client(&pki, false)
            .post(w.url())
            .header("content-type", "application/json")
            .body(REVIEW)
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed after closing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.stop().await;
}

/// Read what the server sends until it closes, or fail after `within`.
async fn read_until_closed(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    within: Duration,
) -> String {
    let mut answer = Vec::new();
    // A reset instead of a clean close is as good: the server let go.
    let _ = tokio::time::timeout(within, tls.read_to_end(&mut answer))
        .await
        .expect("the server holds the connection open");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client that sends its request head or body slowly (slowloris) is cut off after
/// `--request-timeout`, instead of holding a connection and a worker for ever.
#[tokio::test]
async fn slow_clients_are_cut_off_by_the_request_timeout() {
    let pki = Pki::new();
    let timeout = Duration::from_millis(500);
    let mut w = Webhook::start_with(
        &pki,
        Arc::new(NoImageResolver),
        limits(|a| a.request_timeout = timeout),
    )
    .await;
    // Half a request head, then nothing: closed without an answer.
    let mut tls = tls_connect(&pki, w.port, &[b"http/1.1"]).await;
    tls.write_all(b"POST /mutate HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let text = read_until_closed(&mut tls, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() >= timeout / 2,
        "closed before the timeout"
    );
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected answer: {text}"
    );

    // The whole head but half the body: 408.
    let mut tls = tls_connect(&pki, w.port, &[b"http/1.1"]).await;
    tls.write_all(b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"apiVersion\":")
        .await
        .unwrap();
    let text = read_until_closed(&mut tls, Duration::from_secs(5)).await;
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "unexpected answer: {text}"
    );
    let metrics = w.metrics().await;
    assert!(
        metrics.contains(
            r#"reaper_webhook_requests_total{result="timeout",mode="none",reason="none",namespace=""} 1"#
        ),
        "{metrics}"
    );
    // Prompt clients are unaffected.
    let (status, body) = post(&client(&pki, false), &w.url(), REVIEW.into()).await;
    assert_eq!(status, 200);
    check_review_answer(&body);
    w.stop().await;
}

/// The server announces its HTTP/2 stream limit, so one connection cannot open Go's default of
/// 250 concurrent streams (or thousands).
#[tokio::test]
async fn http2_streams_per_connection_are_limited() {
    let pki = Pki::new();
    let mut w = Webhook::start(&pki, Arc::new(NoImageResolver)).await;
    let tls = tls_connect(&pki, w.port, &[b"h2"]).await;
    let (mut h2, mut conn) = h2::client::handshake(tls).await.unwrap();
    let req = http::Request::post(w.url())
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (response, mut body) = h2.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(REVIEW.as_bytes()), true)
        .unwrap();
    let response = tokio::select! {
        r = response => r.unwrap(),
        r = &mut conn => panic!("connection ended: {r:?}"),
    };
    assert_eq!(response.status(), 200);
    assert_eq!(
        conn.max_concurrent_send_streams(),
        reaper::webhook::exposure::MAX_H2_STREAMS as usize
    );
    w.stop().await;
}

/// With `--client-ca-file`, only clients presenting a certificate from that CA are served
/// (the API server, configured as docs/security.md says); others fail the TLS handshake.
#[tokio::test]
async fn client_certificates_are_required_with_a_client_ca() {
    let pki = Pki::new();
    let (api_server_ca, stranger_ca) = (Pki::new(), Pki::new());
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &api_server_ca.ca_pem).unwrap();
    let mut w = Webhook::start_with(
        &pki,
        Arc::new(NoImageResolver),
        limits(|a| a.client_ca_file = Some(ca_file.path().to_path_buf())),
    )
    .await;
    let with = |identity: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(10));
        if let Some(id) = identity {
            b = b.identity(id);
        }
        b.build().unwrap()
    };
    let send = |c: reqwest::Client| {
        let url = w.url();
        async move {
            c.post(url)
                .header("content-type", "application/json")
                .body(REVIEW)
                .send()
                .await
        }
    };
    assert!(
        send(with(None)).await.is_err(),
        "served without a certificate"
    );
    assert!(
        send(with(Some(stranger_ca.client_identity("kube-apiserver"))))
            .await
            .is_err(),
        "served a certificate from another CA"
    );
    let r = send(with(Some(api_server_ca.client_identity("kube-apiserver"))))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    check_review_answer(&r.bytes().await.unwrap());
    w.stop().await;
}
