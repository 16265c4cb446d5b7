//! The HTTP contract through the axum router (`tower::ServiceExt::oneshot`, no socket).
use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use reaper::crd::PolicySet;
use reaper::image::{ImageConfig, ImageIndex, ImageResolver, NoImageResolver};
use reaper::metrics::Metrics;
use reaper::webhook::decide::Config;
use reaper::webhook::server::{AppState, WebhookMetrics, router};
use reaper::webhook::sources::Sources;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::ServiceExt;

const REVIEW: &str = include_str!("../fixtures/pods/reviews/deployment-3-containers.json");

fn app_with(resolver: Arc<dyn ImageResolver>, metrics: &Metrics) -> axum::Router {
    let state = AppState::new(
        Config::new("registry.example.com/reaper:0.1.0"),
        Sources::fixed(PolicySet::default()),
        resolver,
        WebhookMetrics::new(metrics),
    )
    .with_resolve_timeout(Duration::from_millis(300));
    router(state)
}

fn app() -> axum::Router {
    app_with(Arc::new(NoImageResolver), &Metrics::new())
}

async fn send(app: axum::Router, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let res = app
        .oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status();
    (
        status,
        res.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
}

fn review_with(f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(REVIEW).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

fn response(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    v["response"].clone()
}

fn patched(body: &[u8]) -> Value {
    let r = response(body);
    let mut pod: Value =
        serde_json::from_str::<Value>(REVIEW).unwrap()["request"]["object"].clone();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(r["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

#[tokio::test]
async fn a_deployment_pod_is_wrapped() {
    let (status, body) = send(app(), "POST", "/mutate", REVIEW.as_bytes().to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    let r = response(&body);
    assert_eq!(r["uid"], "0f4e9d8c-7b6a-4f5e-9d3c-2b1a0f9e8d7c");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    let pod = patched(&body);
    assert_eq!(
        pod["metadata"]["annotations"]["reaper.dev/injected"],
        "inject:web,metrics-proxy,log-forwarder"
    );
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "reaper-install");
    assert_eq!(
        pod["spec"]["containers"][0]["command"],
        json!(["/.reaper/reaper", "--", "/web"])
    );
    serde_json::from_value::<Pod>(pod).unwrap();
}

#[tokio::test]
async fn other_paths_and_methods() {
    let (status, body) = send(app(), "POST", "/validate", REVIEW.as_bytes().to_vec()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8(body).unwrap().starts_with("not found"));
    let (status, _) = send(app(), "GET", "/", vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(app(), "GET", "/mutate", vec![]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn bad_bodies_get_a_one_line_400() {
    let truncated = REVIEW.as_bytes()[..REVIEW.len() / 2].to_vec();
    let mut non_utf8 = REVIEW.as_bytes().to_vec();
    non_utf8[200] = 0xff;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (truncated, "not valid JSON"),
        (non_utf8, "not valid UTF-8"),
        (vec![], "not valid JSON"),
        (
            review_with(|v| v["kind"] = json!("Pod")),
            "kind is \"Pod\", expected \"AdmissionReview\"",
        ),
        (
            review_with(|v| v["apiVersion"] = json!("admission.k8s.io/v1beta1")),
            "apiVersion is \"admission.k8s.io/v1beta1\"",
        ),
        (
            review_with(|v| {
                v["request"].as_object_mut().unwrap().remove("uid");
            }),
            "no uid",
        ),
        (
            review_with(|v| {
                v.as_object_mut().unwrap().remove("request");
            }),
            "no request",
        ),
    ];
    for (body, want) in cases {
        let (status, text) = send(app(), "POST", "/mutate", body).await;
        let text = String::from_utf8(text).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(want), "{text:?} should contain {want:?}");
        assert_eq!(text.trim_end().lines().count(), 1, "{text:?}");
    }
}

#[tokio::test]
async fn bodies_over_4_mib_get_413() {
    let mut big = REVIEW.as_bytes().to_vec();
    big.resize(5 * 1024 * 1024, b' ');
    let (status, text) = send(app(), "POST", "/mutate", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        String::from_utf8(text).unwrap(),
        "request body exceeds 4 MiB\n"
    );
    // Just under the limit is fine (whitespace after the JSON value).
    let mut ok = REVIEW.as_bytes().to_vec();
    ok.resize(4 * 1024 * 1024 - 1, b' ');
    let (status, _) = send(app(), "POST", "/mutate", ok).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn non_pods_and_non_creates_are_allowed_unchanged() {
    for body in [
        review_with(|v| v["request"]["operation"] = json!("UPDATE")),
        review_with(|v| v["request"]["operation"] = json!("DELETE")),
        review_with(|v| {
            v["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
            v["request"]["object"] = json!({"spec": {"replicas": 1}});
        }),
    ] {
        let (status, body) = send(app(), "POST", "/mutate", body).await;
        assert_eq!(status, StatusCode::OK);
        let r = response(&body);
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none(), "{r}");
        assert!(r.get("warnings").is_none(), "{r}");
    }
}

#[tokio::test]
async fn an_unreadable_pod_is_admitted_with_a_warning() {
    let body = review_with(|v| v["request"]["object"]["spec"]["containers"] = json!("oops"));
    let (status, body) = send(app(), "POST", "/mutate", body).await;
    assert_eq!(status, StatusCode::OK);
    let r = response(&body);
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("could not be read")
    );
}

/// A resolver that knows one image and counts its calls.
struct OneImage(AtomicUsize);

#[async_trait]
impl ImageResolver for OneImage {
    async fn resolve(&self, _pod: &Pod, namespace: &str, images: &[String]) -> ImageIndex {
        self.0.fetch_add(1, Ordering::SeqCst);
        assert_eq!(namespace, "apps");
        images
            .iter()
            .filter(|i| i.as_str() == "nginx:1.27")
            .map(|i| {
                (
                    i.clone(),
                    Ok(ImageConfig::new(
                        vec!["/docker-entrypoint.sh".into()],
                        vec!["nginx".into(), "-g".into(), "daemon off;".into()],
                    )),
                )
            })
            .collect()
    }
}

fn nginx_without_command() -> Vec<u8> {
    review_with(|v| {
        let c = &mut v["request"]["object"]["spec"]["containers"];
        c.as_array_mut().unwrap().truncate(1);
        c[0]["image"] = json!("nginx:1.27");
        let c0 = c[0].as_object_mut().unwrap();
        c0.remove("command");
        c0.remove("args");
    })
}

#[tokio::test]
async fn the_resolver_is_asked_about_images_without_command() {
    let resolver = Arc::new(OneImage(AtomicUsize::new(0)));
    let app = app_with(resolver.clone(), &Metrics::new());
    let (status, body) = send(app.clone(), "POST", "/mutate", nginx_without_command()).await;
    assert_eq!(status, StatusCode::OK);
    let pod = patched(&body);
    assert_eq!(
        pod["spec"]["containers"][0]["command"],
        json!(["/.reaper/reaper", "--", "/docker-entrypoint.sh"])
    );
    assert_eq!(
        pod["spec"]["containers"][0]["args"],
        json!(["nginx", "-g", "daemon off;"])
    );
    assert_eq!(resolver.0.load(Ordering::SeqCst), 1);
    // A pod whose containers all have a command needs no lookup.
    send(app, "POST", "/mutate", REVIEW.as_bytes().to_vec()).await;
    assert_eq!(resolver.0.load(Ordering::SeqCst), 1);
}

/// A resolver that never answers in time.
struct Stuck;

#[async_trait]
impl ImageResolver for Stuck {
    async fn resolve(&self, _pod: &Pod, _ns: &str, _images: &[String]) -> ImageIndex {
        tokio::time::sleep(Duration::from_secs(30)).await;
        ImageIndex::default()
    }
}

#[tokio::test]
async fn a_slow_resolver_does_not_hold_the_pod() {
    let started = std::time::Instant::now();
    let (status, body) = send(
        app_with(Arc::new(Stuck), &Metrics::new()),
        "POST",
        "/mutate",
        nginx_without_command(),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status, StatusCode::OK);
    // Unknown argv in auto mode: shared instead.
    assert_eq!(patched(&body)["spec"]["shareProcessNamespace"], true);
}

#[tokio::test]
async fn requests_are_counted() {
    let metrics = Metrics::new();
    let app = app_with(Arc::new(NoImageResolver), &metrics);
    send(app.clone(), "POST", "/mutate", REVIEW.as_bytes().to_vec()).await;
    send(app.clone(), "POST", "/mutate", b"{".to_vec()).await;
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"reaper_webhook_requests_total{result="inject",mode="auto",reason="none",namespace="apps"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"reaper_webhook_requests_total{result="invalid",mode="none",reason="none",namespace=""} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("reaper_webhook_request_duration_seconds_count 2"),
        "{text}"
    );
}

/// Found by fuzzing: a pod object without `metadata` (or without spec / any name) decodes to a
/// default Pod, but a patch adding `/metadata/annotations` would not apply to it. The API server
/// rejects such pods anyway, so they are admitted untouched.
#[tokio::test]
async fn incomplete_pods_are_left_alone() {
    for body in [
        review_with(|v| {
            v["request"]["object"]
                .as_object_mut()
                .unwrap()
                .remove("metadata");
        }),
        review_with(|v| {
            v["request"]["object"]
                .as_object_mut()
                .unwrap()
                .remove("spec");
        }),
        review_with(|v| {
            v["request"]["object"]["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("generateName");
        }),
    ] {
        let (status, body) = send(app(), "POST", "/mutate", body).await;
        assert_eq!(status, StatusCode::OK);
        let r = response(&body);
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none(), "{r}");
    }
}

/// A skipped or fallen-back pod is offered as an Event on its owner, once per owner and reason
/// within the interval, never for a dry run, and the request is counted with its reason.
#[tokio::test]
async fn skips_and_fallbacks_become_one_event_and_dry_runs_none() {
    use reaper::webhook::events::{EventSink, Limiter};
    let metrics = Metrics::new();
    let (sink, mut rx) = EventSink::new(Limiter::new(Duration::from_secs(600), 100), 16);
    let state = AppState::new(
        Config::new("registry.example.com/reaper:0.1.0"),
        Sources::fixed(PolicySet::default()),
        Arc::new(NoImageResolver),
        WebhookMetrics::new(&metrics),
    )
    .with_events(sink);
    let app = router(state);
    let dry_run = review_with(|v| {
        let c = &mut v["request"]["object"]["spec"]["containers"];
        c.as_array_mut().unwrap().truncate(1);
        c[0]["image"] = json!("nginx:1.27");
        c[0].as_object_mut().unwrap().remove("command");
        v["request"]["dryRun"] = json!(true);
    });
    let (status, body) = send(app.clone(), "POST", "/mutate", dry_run).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched(&body)["spec"]["shareProcessNamespace"], true);
    assert!(rx.try_recv().is_err(), "a dry run was offered as an Event");
    for _ in 0..3 {
        send(app.clone(), "POST", "/mutate", nginx_without_command()).await;
    }
    let notice = rx.try_recv().expect("one Event");
    assert!(rx.try_recv().is_err(), "more than one Event");
    assert_eq!(notice.reason, reaper::keys::REASON_PROTECTION_FALLBACK);
    let r = &notice.regarding;
    assert_eq!(
        (r.kind.as_deref(), r.name.as_deref(), r.namespace.as_deref()),
        (Some("ReplicaSet"), Some("web-7d9c8b6f5"), Some("apps"))
    );
    assert_eq!(
        r.uid.as_deref(),
        Some("3f1d7c52-8a4e-4d36-9b1f-2f0c6f8e1a11")
    );
    assert!(
        notice
            .note
            .starts_with("Pod web-7d9c8b6f5-* protected by a fallback"),
        "{}",
        notice.note
    );
    let text = metrics.encode();
    for line in [
        r#"reaper_webhook_requests_total{result="share",mode="auto",reason="auto-share",namespace="apps"} 4"#,
        r#"reaper_webhook_events_total{result="suppressed"} 2"#,
    ] {
        assert!(text.contains(line), "no {line} in\n{text}");
    }
}
