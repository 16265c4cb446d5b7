//! The resolver against registries that misbehave (fakes on 127.0.0.1, plain and TLS, written
//! here since a real registry cannot be made to): token realms pointing at the webhook's own
//! network, https→http redirects and redirect loops, oversized manifests, configs and indexes,
//! error pages meant for browsers, and more lookups at once than the request bound.
use reaper_test_support as support;

use axum::body::Body;
use axum::response::Response;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use reaper::image::{ImageIndex, ImageResolver};
use reaper::metrics::Metrics;
use reaper::registry::{Args, Registry};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::control_plane::TestCa;
use support::registry::{MT_CONFIG, MT_INDEX, MT_MANIFEST, sha256};

/// One request as the fake saw it.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    query: String,
    authorization: Option<String>,
}

type Handler = Arc<dyn Fn(Req) -> BoxFuture<'static, Response> + Send + Sync>;

/// A fake registry (or token server, or plain web server) on 127.0.0.1.
struct Fake {
    /// `127.0.0.1:<port>`
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Fake {
    /// Serve `handler`, over TLS with `tls` (certificate and key PEM) when given.
    async fn start(tls: Option<(&str, &str)>, handler: Handler) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let (l, now, max) = (log.clone(), in_flight.clone(), max_in_flight.clone());
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (handler, log, now, max) = (handler.clone(), l.clone(), now.clone(), max.clone());
            async move {
                let r = Req {
                    method: req.method().to_string(),
                    path: req.uri().path().to_string(),
                    query: req.uri().query().unwrap_or_default().to_string(),
                    authorization: req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(String::from),
                };
                log.lock()
                    .unwrap()
                    .push(format!("{} {}?{}", r.method, r.path, r.query));
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(n, Ordering::SeqCst);
                let resp = handler(r).await;
                now.fetch_sub(1, Ordering::SeqCst);
                resp
            }
        });
        match tls {
            None => {
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                });
            }
            Some((cert, key)) => {
                use rustls_pki_types::pem::PemObject;
                let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
                let config = rustls::ServerConfig::builder()
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                tokio::spawn(async move {
                    while let Ok((tcp, _)) = listener.accept().await {
                        let (acceptor, app) = (acceptor.clone(), app.clone());
                        tokio::spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let _ = hyper_util::server::conn::auto::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(
                                hyper_util::rt::TokioIo::new(tls),
                                hyper_util::service::TowerToHyperService::new(app),
                            )
                            .await;
                        });
                    }
                });
            }
        }
        Self {
            addr,
            log,
            max_in_flight,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn image(&self, name: &str, tag: &str) -> String {
        format!("{}/{name}:{tag}", self.addr)
    }
}

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    Arc::new(move |r| Box::pin(f(r)))
}

fn answer(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
    let mut b = axum::http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body.into()).unwrap()
}

/// Manifests and blobs by path (`/v2/<name>/manifests/<tag or digest>`, `/v2/<name>/blobs/<d>`).
#[derive(Clone, Default)]
struct Store(Arc<Mutex<HashMap<String, Content>>>);

/// Media type and bytes.
type Content = (String, Vec<u8>);

impl Store {
    fn put(&self, path: String, media_type: &str, bytes: Vec<u8>) {
        self.0
            .lock()
            .unwrap()
            .insert(path, (media_type.to_string(), bytes));
    }

    /// Store an image under `name:tag` (and its digest); returns the manifest digest.
    fn image(&self, name: &str, tag: &str, config: Vec<u8>) -> String {
        let manifest = manifest_json(&config);
        self.put(
            format!("/v2/{name}/blobs/{}", sha256(&config)),
            MT_CONFIG,
            config,
        );
        self.manifest(name, tag, MT_MANIFEST, manifest)
    }

    fn manifest(&self, name: &str, tag: &str, media_type: &str, bytes: Vec<u8>) -> String {
        let digest = sha256(&bytes);
        self.put(
            format!("/v2/{name}/manifests/{digest}"),
            media_type,
            bytes.clone(),
        );
        self.put(format!("/v2/{name}/manifests/{tag}"), media_type, bytes);
        digest
    }

    fn serve(&self, r: &Req) -> Response {
        let found = self.0.lock().unwrap().get(&r.path).cloned();
        match found {
            Some((mt, bytes)) => {
                let digest = sha256(&bytes);
                let headers = [
                    ("content-type", mt.as_str()),
                    ("docker-content-digest", digest.as_str()),
                ];
                if r.method == "HEAD" {
                    answer(200, &headers, Body::empty())
                } else {
                    answer(200, &headers, bytes)
                }
            }
            None => answer(
                404,
                &[("content-type", "application/json")],
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            ),
        }
    }
}

fn config_json(entrypoint: &str, padding: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Entrypoint": [entrypoint]},
        "comment": "x".repeat(padding),
    }))
    .unwrap()
}

fn manifest_json(config: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": sha256(config), "size": config.len()},
        "layers": [],
    }))
    .unwrap()
}

fn resolver(insecure: &[&str], tweak: impl FnOnce(&mut Args)) -> Registry {
    let mut args = Args {
        insecure_registries: insecure.iter().map(|s| s.to_string()).collect(),
        lookup_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    tweak(&mut args);
    Registry::new(args.settings().unwrap(), None, &Metrics::new())
}

async fn resolve(r: &Registry, images: &[&str]) -> ImageIndex {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": images.iter().enumerate()
            .map(|(i, im)| json!({"name": format!("c{i}"), "image": im}))
            .collect::<Vec<_>>()}
    }))
    .unwrap();
    let list: Vec<String> = images.iter().map(|s| s.to_string()).collect();
    r.resolve(&pod, "ns", &list).await
}

fn entrypoint(idx: &ImageIndex, image: &str) -> Vec<String> {
    match idx.get(image) {
        Some(Ok(c)) => c.entrypoint.clone(),
        other => panic!("{image}: {other:?}"),
    }
}

fn err(idx: &ImageIndex, image: &str) -> String {
    match idx.get(image) {
        Some(Err(e)) => e.clone(),
        other => panic!("{image}: expected a failure, got {other:?}"),
    }
}

/// A registry serving `store` to requests bearing token `t`, and challenging the others with
/// `realm` (whatever the path: clients may probe `/v2/` first).
async fn token_registry(store: &Store, realm: String) -> Fake {
    let s = store.clone();
    Fake::start(
        None,
        handler(move |r: Req| {
            let (s, realm) = (s.clone(), realm.clone());
            async move {
                if r.authorization.as_deref() == Some("Bearer t") {
                    return s.serve(&r);
                }
                let challenge = format!(r#"Bearer realm="{realm}",service="fake""#);
                answer(401, &[("www-authenticate", challenge.as_str())], "")
            }
        }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_realms_on_the_webhooks_own_network_are_not_asked() {
    let tokens = Fake::start(
        None,
        handler(|_| async { answer(200, &[], r#"{"token":"t"}"#) }),
    )
    .await;
    let port = tokens.addr.rsplit(':').next().unwrap().to_string();
    let store = Store::default();
    store.image("app", "1", config_json("/app", 0));
    let realms = [
        // Cloud metadata, and another loopback address: refused before any request.
        "http://169.254.169.254/latest/meta-data/iam/".to_string(),
        format!("http://127.0.0.2:{port}/token"),
        // A name is checked where it resolves: localhost is loopback, refused at connect time.
        format!("http://localhost:{port}/token"),
        // The registry's own host (any port) vouches for itself.
        format!("http://127.0.0.1:{port}/token"),
    ];
    let mut regs = Vec::new();
    for realm in realms {
        regs.push(token_registry(&store, realm).await);
    }
    let addrs: Vec<&str> = regs.iter().map(|r| r.addr.as_str()).collect();
    let r = resolver(&addrs, |_| {});
    let images: Vec<String> = regs.iter().map(|r| r.image("app", "1")).collect();
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let idx = resolve(&r, &refs).await;
    let e = err(&idx, &images[0]);
    assert!(
        e.contains("cloud metadata") && e.contains("is not asked"),
        "{e}"
    );
    let e = err(&idx, &images[1]);
    assert!(e.contains("loopback address on another host"), "{e}");
    let e = err(&idx, &images[2]);
    assert!(e.contains("localhost resolves to loopback"), "{e}");
    assert_eq!(entrypoint(&idx, &images[3]), ["/app"]);
    // Only the registry on the token server's own host had it asked.
    let asked = tokens.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].contains("scope=repository%3Aapp%3Apull"),
        "{asked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_registries_are_not_redirected_to_plain_http_nor_sent_to_http_realms() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = TestCa::new("reaper hardening test CA");
    let pair = ca.issue_server(&["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    // Plain http on the same host: whatever reaches it is a downgrade.
    let store = Store::default();
    let s = store.clone();
    let plain = Fake::start(
        None,
        handler(move |r: Req| {
            let s = s.clone();
            async move {
                if r.path.ends_with("/token") {
                    return answer(200, &[], r#"{"token":"t"}"#);
                }
                s.serve(&r)
            }
        }),
    )
    .await;
    store.image("redirect", "1", config_json("/downgraded", 0));
    let plain_addr = plain.addr.clone();
    let s = store.clone();
    let hops = Arc::new(AtomicUsize::new(0));
    let h = hops.clone();
    let tls = Fake::start(
        Some((&pair.cert_pem, &pair.key_pem)),
        handler(move |r: Req| {
            let (s, plain, h) = (s.clone(), plain_addr.clone(), h.clone());
            async move {
                let name = r.path.split('/').nth(2).unwrap_or_default().to_string();
                match name.as_str() {
                    "redirect" => {
                        let to = format!("http://{plain}{}", r.path);
                        answer(307, &[("location", to.as_str())], "")
                    }
                    "httprealm" => {
                        let c = format!(r#"Bearer realm="http://{plain}/token",service="x""#);
                        answer(401, &[("www-authenticate", c.as_str())], "")
                    }
                    "loop" => {
                        let n = h.fetch_add(1, Ordering::SeqCst);
                        let to = format!("{}?hop={n}", r.path);
                        answer(302, &[("location", to.as_str())], "")
                    }
                    _ => s.serve(&r),
                }
            }
        }),
    )
    .await;
    let r = resolver(&[], |a| a.registry_ca_file = Some(ca_file.clone()));
    let images: Vec<String> = ["redirect", "httprealm", "loop"]
        .iter()
        .map(|n| tls.image(n, "1"))
        .collect();
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let idx = resolve(&r, &refs).await;
    let e = err(&idx, &images[0]);
    assert!(e.contains("from https to plain http"), "{e}");
    let e = err(&idx, &images[1]);
    assert!(
        e.contains("plain http while the registry is not in --insecure-registries"),
        "{e}"
    );
    let e = err(&idx, &images[2]);
    assert!(e.contains("more than 5 redirects"), "{e}");
    // The original request and 5 redirects, then no more.
    assert_eq!(hops.load(Ordering::SeqCst), 6);
    assert_eq!(plain.requests(), Vec::<String>::new());
}

/// A body of `total` bytes sent in 64 KiB chunks without Content-Length; `sent` counts the bytes
/// the server got to hand over before the client hung up.
fn endless(total: usize, sent: Arc<AtomicUsize>) -> Response {
    let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
    let stream = futures::stream::unfold(0usize, move |done| {
        let (chunk, sent) = (chunk.clone(), sent.clone());
        async move {
            if done >= total {
                return None;
            }
            sent.fetch_add(chunk.len(), Ordering::SeqCst);
            Some((Ok::<_, std::io::Error>(chunk.clone()), done + chunk.len()))
        }
    });
    answer(200, &[], Body::from_stream(stream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_manifests_and_configs_are_refused_while_read() {
    const MIB: usize = 1024 * 1024;
    let store = Store::default();
    let sent_manifest = Arc::new(AtomicUsize::new(0));
    let sent_config = Arc::new(AtomicUsize::new(0));
    // A valid digest for the endless bodies (they never match it: the cap hits first).
    let fake_digest = sha256(b"endless");
    let (s, sm, sc, fd) = (
        store.clone(),
        sent_manifest.clone(),
        sent_config.clone(),
        fake_digest.clone(),
    );
    let reg = Fake::start(
        None,
        handler(move |r: Req| {
            let (s, sm, sc, fd) = (s.clone(), sm.clone(), sc.clone(), fd.clone());
            async move {
                if r.path == "/v2/bigmanifest/manifests/1" && r.method == "HEAD" {
                    return answer(
                        200,
                        &[("docker-content-digest", fd.as_str())],
                        Body::empty(),
                    );
                }
                if r.path.starts_with("/v2/bigmanifest/manifests/") {
                    return endless(256 * MIB, sm);
                }
                if r.path == format!("/v2/bigconfig/blobs/{fd}") {
                    return endless(256 * MIB, sc);
                }
                s.serve(&r)
            }
        }),
    )
    .await;
    // A manifest whose config says 1 KiB but is endless.
    let lying = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": fake_digest, "size": 1024},
        "layers": [],
    }))
    .unwrap();
    store.manifest("bigconfig", "1", MT_MANIFEST, lying);
    // A manifest announcing a 9 MiB config: not even asked for.
    let announced = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": sha256(b"big"), "size": 9 * MIB},
        "layers": [],
    }))
    .unwrap();
    store.manifest("announced", "1", MT_MANIFEST, announced);
    // A real config just under 8 MiB (containerd's limit) is fine.
    store.image("large", "1", config_json("/large", 8 * MIB - 4096));
    let r = resolver(&[&reg.addr], |_| {});
    let images: Vec<String> = ["bigmanifest", "bigconfig", "announced", "large"]
        .iter()
        .map(|n| reg.image(n, "1"))
        .collect();
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let idx = resolve(&r, &refs).await;
    let e = err(&idx, &images[0]);
    assert!(e.contains("larger than 4 MiB"), "{e}");
    let e = err(&idx, &images[1]);
    assert!(
        e.contains("config blob") && e.contains("larger than 8 MiB"),
        "{e}"
    );
    let e = err(&idx, &images[2]);
    assert!(e.contains("config blob of 9437184 bytes"), "{e}");
    assert!(
        !reg.requests().iter().any(|l| l.contains(&sha256(b"big"))),
        "the announced config is not fetched"
    );
    assert_eq!(entrypoint(&idx, &images[3]), ["/large"]);
    // Reading stopped at the cap: the rest of the 256 MiB was never taken (socket buffers
    // aside).
    let (m, c) = (
        sent_manifest.load(Ordering::SeqCst),
        sent_config.load(Ordering::SeqCst),
    );
    assert!(m < 32 * MIB, "manifest: {m} bytes sent");
    assert!(c < 32 * MIB, "config: {c} bytes sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_read_at_most_16_platforms_amd64_and_arm64_included() {
    let store = Store::default();
    let s = store.clone();
    let reg = Fake::start(
        None,
        handler(move |r: Req| {
            let s = s.clone();
            async move { s.serve(&r) }
        }),
    )
    .await;
    // 40 linux platforms, amd64 and arm64 last; `differ` gives each its own ENTRYPOINT.
    let index = |name: &str, differ: bool| {
        let mut entries = Vec::new();
        let archs: Vec<String> = (0..38)
            .map(|i| format!("arch{i}"))
            .chain(["arm64".to_string(), "amd64".to_string()])
            .collect();
        for (i, arch) in archs.iter().enumerate() {
            let e = if differ {
                format!("/{arch}")
            } else {
                "/same".into()
            };
            // Padding of its own: every platform has its own digest.
            let config = config_json(&e, i);
            let manifest = manifest_json(&config);
            store.put(
                format!("/v2/{name}/blobs/{}", sha256(&config)),
                MT_CONFIG,
                config,
            );
            let digest = store.manifest(name, &format!("p-{arch}"), MT_MANIFEST, manifest.clone());
            entries.push(
                json!({"mediaType": MT_MANIFEST, "digest": digest, "size": manifest.len(),
                "platform": {"os": "linux", "architecture": arch}}),
            );
        }
        let idx = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries}),
        )
        .unwrap();
        store.manifest(name, "1", MT_INDEX, idx);
    };
    index("agree", false);
    index("differ", true);
    let r = resolver(&[&reg.addr], |_| {});
    let (agree, differ) = (reg.image("agree", "1"), reg.image("differ", "1"));
    let idx = resolve(&r, &[&agree, &differ]).await;
    assert_eq!(entrypoint(&idx, &agree), ["/same"]);
    let e = err(&idx, &differ);
    assert!(
        e.contains("lists 40 linux platforms whose ENTRYPOINT/CMD differ; only 16 are read"),
        "{e}"
    );
    let platform_reads: Vec<String> = reg
        .requests()
        .into_iter()
        .filter(|l| l.starts_with("GET /v2/agree/manifests/sha256:"))
        .collect();
    assert_eq!(platform_reads.len(), 1 + 16, "{platform_reads:?}");
    let digest_of = |arch: &str| {
        let bytes = store.0.lock().unwrap()[&format!("/v2/agree/manifests/p-{arch}")]
            .1
            .clone();
        sha256(&bytes)
    };
    for arch in ["amd64", "arm64"] {
        let d = digest_of(arch);
        assert!(
            platform_reads.iter().any(|l| l.contains(&d)),
            "{arch} is read"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_error_bodies_reach_users_short_and_plain() {
    let page = format!(
        "<html><head><style>h1 {{ color: red }}</style></head><body><h1>Service \x1b[31mUnavailable</h1>{}</body></html>",
        "<p>\u{202e}padding\x07</p>\n".repeat(5_000)
    );
    let reg = Fake::start(
        None,
        handler(move |r: Req| {
            let page = page.clone();
            async move {
                // The tag resolves; reading the manifest fails with a body.
                if r.method == "HEAD" {
                    let d = sha256(b"m");
                    return answer(200, &[("docker-content-digest", d.as_str())], Body::empty());
                }
                if r.path.contains("/envelope/") {
                    let long = format!("<b>disk</b>\r\nfull {}", "y".repeat(10_000));
                    let body = json!({"errors": [{"code": "UNKNOWN", "message": long}]});
                    return answer(500, &[], body.to_string());
                }
                answer(503, &[("content-type", "text/html")], page)
            }
        }),
    )
    .await;
    let r = resolver(&[&reg.addr], |_| {});
    let (html, envelope) = (reg.image("html", "1"), reg.image("envelope", "1"));
    let idx = resolve(&r, &[&html, &envelope]).await;
    for image in [&html, &envelope] {
        let e = err(&idx, image);
        assert!(
            e.chars().count() < 300,
            "{image}: {} chars: {e}",
            e.chars().count()
        );
        assert!(
            !e.contains('<') && !e.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{image}: {e:?}"
        );
    }
    let e = err(&idx, &html);
    assert!(
        e.contains("answered HTTP 503: Service [31mUnavailable padding padding"),
        "{e}"
    );
    let e = err(&idx, &envelope);
    assert!(
        e.contains("answered HTTP 500: UNKNOWN: disk full yyy"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_requests_are_bounded() {
    let reg = Fake::start(
        None,
        handler(|_| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            answer(404, &[], "")
        }),
    )
    .await;
    let r = resolver(&[&reg.addr], |_| {});
    let images: Vec<String> = (0..40)
        .map(|i| reg.image(&format!("app{i}"), "1"))
        .collect();
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let started = Instant::now();
    let idx = resolve(&r, &refs).await;
    // 16 at a time (reaper::registry::client::MAX_CONCURRENT_REQUESTS): three waves of 300ms.
    assert_eq!(reg.max_in_flight.load(Ordering::SeqCst), 16);
    for image in &images {
        assert!(err(&idx, image).contains("has no such image"), "{idx:?}");
    }
    assert_eq!(reg.requests().len(), 40);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}
