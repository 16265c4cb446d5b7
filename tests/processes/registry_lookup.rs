//! The registry resolver against a real registry (Debian's docker-registry on loopback, images
//! pushed with skopeo from OCI layouts written here): single-platform configs, image indexes,
//! digests, failures and their cache, basic and token auth, the time budget, tag TTLs and
//! coalescing (counted at a delaying proxy and in the metrics).
use reaper_test_support as support;

use k8s_openapi::api::core::v1::Pod;
use reaper::image::{ImageConfig, ImageIndex, ImageResolver, PlatformConfig};
use reaper::metrics::Metrics;
use reaper::registry::auth::Credential;
use reaper::registry::{Args, Registry};
use std::time::{Duration, Instant};
use support::control_plane::TestCa;
use support::registry::{DelayProxy, ImageSpec, TestRegistry, TokenServer};

fn v(x: &[&str]) -> Vec<String> {
    x.iter().map(|s| s.to_string()).collect()
}

fn resolver(insecure: &[&str], tweak: impl FnOnce(&mut Args)) -> (Registry, Metrics) {
    let mut args = Args {
        insecure_registries: insecure.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    tweak(&mut args);
    let metrics = Metrics::new();
    let r = Registry::new(args.settings().unwrap(), None, &metrics);
    (r, metrics)
}

fn pod(images: &[&str]) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": images.iter().enumerate()
            .map(|(i, im)| serde_json::json!({"name": format!("c{i}"), "image": im}))
            .collect::<Vec<_>>()}
    }))
    .unwrap()
}

async fn resolve(r: &Registry, images: &[&str]) -> ImageIndex {
    let list: Vec<String> = images.iter().map(|s| s.to_string()).collect();
    r.resolve(&pod(images), "ns", &list).await
}

fn ok<'a>(idx: &'a ImageIndex, image: &str) -> &'a ImageConfig {
    match idx.get(image) {
        Some(Ok(c)) => c,
        other => panic!("{image}: {other:?}"),
    }
}

fn err<'a>(idx: &'a ImageIndex, image: &str) -> &'a str {
    match idx.get(image) {
        Some(Err(e)) => e,
        other => panic!("{image}: expected a failure, got {other:?}"),
    }
}

/// Value of one sample line of the Prometheus text (0 when absent).
fn metric(m: &Metrics, sample: &str) -> f64 {
    m.encode()
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

const SUCCESS: &str = "reaper_registry_lookups_total{result=\"success\"}";
const HITS: &str = "reaper_registry_cache_hits_total";

/// Image name, ENTRYPOINT, CMD.
type Case<'a> = (&'a str, Option<&'a [&'a str]>, Option<&'a [&'a str]>);

#[tokio::test]
async fn single_platform_entrypoint_and_cmd() {
    let reg = TestRegistry::start();
    let cases: &[Case] = &[
        ("both", Some(&["/entry", "--flag"]), Some(&["serve", "-v"])),
        ("cmd-only", None, Some(&["nginx", "-g", "daemon off;"])),
        ("entrypoint-only", Some(&["/bin/app"]), None),
        ("neither", None, None),
        ("empty-entrypoint", Some(&[""]), Some(&["sh"])),
        (
            "dollars",
            Some(&["/bin/sh", "-c", "echo $(HOME) $$ ${X}"]),
            Some(&["$(ARG)"]),
        ),
    ];
    let mut images = Vec::new();
    for (name, e, c) in cases {
        reg.push_image(name, "1", &ImageSpec::new(*e, *c));
        images.push(reg.image(name, "1"));
    }
    let (r, m) = resolver(&[&reg.addr], |_| {});
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let idx = resolve(&r, &refs).await;
    let want = [
        (v(&["/entry", "--flag"]), v(&["serve", "-v"])),
        (vec![], v(&["nginx", "-g", "daemon off;"])),
        (v(&["/bin/app"]), vec![]),
        (vec![], vec![]),
        (vec![], v(&["sh"])),
        (
            v(&["/bin/sh", "-c", "echo $(HOME) $$ ${X}"]),
            v(&["$(ARG)"]),
        ),
    ];
    for (image, (e, c)) in images.iter().zip(want) {
        assert_eq!(*ok(&idx, image), ImageConfig::new(e, c), "{image}");
    }
    assert_eq!(metric(&m, SUCCESS), cases.len() as f64);
    // Asked again: all from the cache.
    let again = resolve(&r, &refs).await;
    assert_eq!(ok(&again, &images[0]).entrypoint, ["/entry", "--flag"]);
    assert_eq!(metric(&m, SUCCESS), cases.len() as f64);
    assert_eq!(metric(&m, HITS), cases.len() as f64);
}

#[tokio::test]
async fn image_indexes_skip_attestations_and_keep_differing_platforms() {
    let reg = TestRegistry::start();
    let same = ImageSpec::new(Some(&["/app"]), Some(&["run"]));
    reg.push_index(
        "same",
        "1",
        &[same.clone(), same.clone().on("arm64/v8")],
        true,
    );
    reg.push_index(
        "differ",
        "1",
        &[
            ImageSpec::new(Some(&["/arm64"]), Some(&["run"])).on("arm64/v8"),
            ImageSpec::new(Some(&["/amd64"]), Some(&["run"])),
            ImageSpec::new(Some(&["/armv7"]), None).on("arm/v7"),
        ],
        true,
    );
    reg.push_index(
        "no-amd64",
        "1",
        &[
            ImageSpec::new(Some(&["/s390x"]), None).on("s390x"),
            ImageSpec::new(Some(&["/arm64"]), None).on("arm64"),
        ],
        false,
    );
    let (r, _) = resolver(&[&reg.addr], |_| {});
    let (same_i, differ_i, no_amd) = (
        reg.image("same", "1"),
        reg.image("differ", "1"),
        reg.image("no-amd64", "1"),
    );
    let idx = resolve(&r, &[&same_i, &differ_i, &no_amd]).await;
    // All platforms agree: one config, whatever the attestations say.
    assert_eq!(
        *ok(&idx, &same_i),
        ImageConfig::new(v(&["/app"]), v(&["run"]))
    );
    let d = ok(&idx, &differ_i);
    assert_eq!(d.entrypoint, ["/amd64"], "linux/amd64 goes after --");
    assert_eq!(
        d.platforms,
        [
            PlatformConfig::new("linux/arm64/v8", v(&["/arm64"]), v(&["run"])),
            PlatformConfig::new("linux/amd64", v(&["/amd64"]), v(&["run"])),
            PlatformConfig::new("linux/arm/v7", v(&["/armv7"]), vec![]),
        ]
    );
    let n = ok(&idx, &no_amd);
    assert_eq!(n.entrypoint, ["/s390x"], "no amd64: the first platform");
    assert_eq!(n.platforms.len(), 2);
}

#[tokio::test]
async fn digests_skip_the_tag_step_and_are_cached() {
    let reg = TestRegistry::start();
    let proxy = DelayProxy::start(&reg.addr).await;
    let digest = reg.push_image("app", "1", &ImageSpec::new(Some(&["/app"]), None));
    let (r, _) = resolver(&[&proxy.addr], |_| {});
    let pinned = format!("{}/app@{digest}", proxy.addr);
    let idx = resolve(&r, &[&pinned]).await;
    assert_eq!(ok(&idx, &pinned).entrypoint, ["/app"]);
    assert_eq!(idx.digest(&pinned), Some(digest.as_str()));
    let reqs = proxy.requests();
    assert!(
        !reqs.iter().any(|l| l.contains("/manifests/1 ")),
        "no tag request for a digest: {reqs:?}"
    );
    assert!(
        reqs.iter()
            .any(|l| l.starts_with(&format!("GET /v2/app/manifests/{digest}")))
    );
    // Tag and digest together: the digest wins, as in the kubelet.
    let both = format!("{}/app:nope@{digest}", proxy.addr);
    assert_eq!(ok(&resolve(&r, &[&both]).await, &both).entrypoint, ["/app"]);
    // By tag: one HEAD for the digest, whose config is known already.
    let before = proxy.requests().len();
    let tagged = proxy.image("app", "1");
    let idx = resolve(&r, &[&tagged]).await;
    assert_eq!(ok(&idx, &tagged).entrypoint, ["/app"]);
    // The digest the tag resolved to is carried for pinning (`image:tag@digest`).
    assert_eq!(idx.digest(&tagged), Some(digest.as_str()));
    let new: Vec<String> = proxy.requests()[before..]
        .iter()
        .filter(|l| l.contains("/manifests/") || l.contains("/blobs/"))
        .cloned()
        .collect();
    assert_eq!(new, ["HEAD /v2/app/manifests/1 HTTP/1.1"], "{new:?}");
}

#[tokio::test]
async fn missing_images_fail_and_failures_are_cached_briefly() {
    let reg = TestRegistry::start();
    let proxy = DelayProxy::start(&reg.addr).await;
    let (r, m) = resolver(&[&proxy.addr], |a| {
        a.negative_ttl = Duration::from_millis(800)
    });
    let image = proxy.image("later", "1");
    let idx = resolve(&r, &[&image]).await;
    assert!(err(&idx, &image).contains("has no such image"), "{idx:?}");
    assert_eq!(
        metric(&m, "reaper_registry_lookups_total{result=\"not_found\"}"),
        1.0
    );
    let seen = proxy.manifest_requests();
    // Within --negative-ttl: the failure comes from the cache.
    assert!(err(&resolve(&r, &[&image]).await, &image).contains("has no such image"));
    assert_eq!(proxy.manifest_requests(), seen);
    assert_eq!(metric(&m, HITS), 1.0);
    // Pushed meanwhile: found once the failure expired.
    reg.push_image("later", "1", &ImageSpec::new(Some(&["/later"]), None));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        ok(&resolve(&r, &[&image]).await, &image).entrypoint,
        ["/later"]
    );
    // An invalid reference and an unreachable registry say so.
    let idx = resolve(&r, &["UPPER/Case:1", "127.0.0.1:1/x:1"]).await;
    assert!(err(&idx, "UPPER/Case:1").contains("not a valid image reference"));
    assert!(err(&idx, "127.0.0.1:1/x:1").contains("cannot reach registry 127.0.0.1:1"));
}

fn cred(u: &str, p: &str) -> Credential {
    Credential {
        username: u.into(),
        password: p.into(),
    }
}

#[tokio::test]
async fn basic_auth_and_credentials_do_not_share_answers() {
    let reg = TestRegistry::start_basic("alice", "s3cret");
    reg.push_image("private", "1", &ImageSpec::new(Some(&["/private"]), None));
    let (r, m) = resolver(&[&reg.addr], |_| {});
    let reference = reg.image("private", "1").parse().unwrap();
    let ttl = Duration::from_secs(60);
    let good = cred("alice", "s3cret");
    let bad = cred("alice", "wrong");
    let c = r.lookup(&reference, Some(&good), ttl).await.unwrap();
    assert_eq!(c.config.entrypoint, ["/private"]);
    // The good answer is not served to other credentials.
    let e = r.lookup(&reference, Some(&bad), ttl).await.unwrap_err();
    assert!(e.message.contains("refused access"), "{e:?}");
    assert!(e.message.contains("imagePullSecret"), "{e:?}");
    let e = r.lookup(&reference, None, ttl).await.unwrap_err();
    assert_eq!(e.kind.label(), "unauthorized");
    // And the failures of others do not hide it.
    assert!(r.lookup(&reference, Some(&good), ttl).await.is_ok());
    assert_eq!(metric(&m, SUCCESS), 1.0);
    assert_eq!(
        metric(&m, "reaper_registry_lookups_total{result=\"unauthorized\"}"),
        2.0
    );
    assert_eq!(metric(&m, HITS), 1.0);
}

// The token server runs on the runtime's workers while skopeo blocks the test thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow() {
    let tokens = TokenServer::start("bob", "pw").await;
    let reg = TestRegistry::start_token(tokens.config.clone(), "bob:pw");
    reg.push_image(
        "team/app",
        "2",
        &ImageSpec::new(Some(&["/tok"]), Some(&["x"])),
    );
    let (r, _) = resolver(&[&reg.addr], |_| {});
    let reference = reg.image("team/app", "2").parse().unwrap();
    let ttl = Duration::from_secs(60);
    let c = r
        .lookup(&reference, Some(&cred("bob", "pw")), ttl)
        .await
        .unwrap();
    assert_eq!(
        (c.config.entrypoint.clone(), c.config.cmd.clone()),
        (v(&["/tok"]), v(&["x"]))
    );
    assert!(
        tokens
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|(u, scope)| u == "bob" && scope == "repository:team/app:pull"),
        "{:?}",
        tokens.seen.lock().unwrap()
    );
    // Anonymous tokens grant nothing here; wrong credentials get no token at all.
    let e = r.lookup(&reference, None, ttl).await.unwrap_err();
    assert_eq!(e.kind.label(), "unauthorized", "{e:?}");
    let e = r
        .lookup(&reference, Some(&cred("bob", "nope")), ttl)
        .await
        .unwrap_err();
    assert_eq!(e.kind.label(), "unauthorized", "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_registry_times_out_within_budget_and_warms_the_cache() {
    let reg = TestRegistry::start();
    reg.push_image("slow", "1", &ImageSpec::new(Some(&["/slow"]), None));
    let proxy = DelayProxy::start(&reg.addr).await;
    // Each request waits 400ms at the proxy: the lookup (HEAD, manifest, config) needs >= 1.2s.
    proxy.set_delay(Duration::from_millis(400));
    let budget = Duration::from_millis(300);
    let (r, m) = resolver(&[&proxy.addr], |a| a.lookup_timeout = budget);
    let image = proxy.image("slow", "1");
    let started = Instant::now();
    let idx = resolve(&r, &[&image]).await;
    let took = started.elapsed();
    assert!(
        err(&idx, &image).contains("--lookup-timeout 300ms"),
        "{idx:?}"
    );
    assert!(
        took >= budget && took < budget + Duration::from_millis(600),
        "answered after {took:?} for a {budget:?} budget"
    );
    // The fetch goes on in the background and fills the cache.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&m, SUCCESS) < 1.0 {
        assert!(Instant::now() < deadline, "background fetch did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let idx = resolve(&r, &[&image]).await;
    assert_eq!(ok(&idx, &image).entrypoint, ["/slow"]);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(metric(&m, SUCCESS), 1.0);
    assert_eq!(metric(&m, HITS), 1.0);
}

#[tokio::test]
async fn a_moved_tag_is_seen_after_the_ttl() {
    let reg = TestRegistry::start();
    reg.push_image("moving", "v1", &ImageSpec::new(Some(&["/one"]), None));
    let (r, _) = resolver(&[&reg.addr], |a| a.tag_ttl = Duration::from_secs(1));
    let image = reg.image("moving", "v1");
    assert_eq!(
        ok(&resolve(&r, &[&image]).await, &image).entrypoint,
        ["/one"]
    );
    reg.push_image("moving", "v1", &ImageSpec::new(Some(&["/two"]), None));
    assert_eq!(
        ok(&resolve(&r, &[&image]).await, &image).entrypoint,
        ["/one"],
        "within the TTL the cached digest is used"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        ok(&resolve(&r, &[&image]).await, &image).entrypoint,
        ["/two"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_share_one_fetch() {
    let reg = TestRegistry::start();
    reg.push_image("popular", "1", &ImageSpec::new(Some(&["/pop"]), None));
    let proxy = DelayProxy::start(&reg.addr).await;
    proxy.set_delay(Duration::from_millis(100));
    let (r, m) = resolver(&[&proxy.addr], |a| {
        a.lookup_timeout = Duration::from_secs(10)
    });
    let image = proxy.image("popular", "1");
    const N: usize = 8;
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (r, image) = (r.clone(), image.clone());
            tokio::spawn(async move { resolve(&r, &[&image]).await })
        })
        .collect();
    for t in tasks {
        let idx = t.await.unwrap();
        assert_eq!(ok(&idx, &image).entrypoint, ["/pop"]);
    }
    let manifests: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|l| l.contains("/manifests/"))
        .collect();
    assert_eq!(manifests.len(), 2, "one HEAD and one GET: {manifests:?}");
    assert_eq!(metric(&m, SUCCESS), 1.0);
    assert_eq!(metric(&m, HITS), (N - 1) as f64);
}

#[tokio::test]
async fn https_registries_need_their_ca_and_names_resolve_without_nss() {
    let ca = TestCa::new("reaper test registry CA");
    let pair = ca.issue_server(&["localhost", "127.0.0.1"]);
    let reg = TestRegistry::start_tls(&pair.cert_pem, &pair.key_pem);
    reg.push_image("tls", "1", &ImageSpec::new(Some(&["/tls"]), None));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    // By name: hickory resolves `localhost` (from /etc/hosts) and rustls checks it.
    let port = reg.addr.rsplit(':').next().unwrap();
    let image = format!("localhost:{port}/tls:1");
    let (r, _) = resolver(&[], |a| a.registry_ca_file = Some(ca_file.clone()));
    let idx = resolve(&r, &[&image]).await;
    assert_eq!(ok(&idx, &image).entrypoint, ["/tls"]);
    // Without the CA the certificate is refused (system roots only).
    let (r, m) = resolver(&[], |_| {});
    let idx = resolve(&r, &[&image]).await;
    let e = err(&idx, &image);
    assert!(
        e.contains("cannot reach registry") && e.contains("certificate"),
        "{e}"
    );
    assert_eq!(
        metric(&m, "reaper_registry_lookups_total{result=\"unreachable\"}"),
        1.0
    );
}
