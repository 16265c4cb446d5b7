//! Cluster mode of the policy sources against a mocked API server (`tower_test::mock::pair`):
//! the reflectors list and watch ReaperPolicies and Namespace metadata, the webhook becomes
//! synced, and watch events change the policies it plans with, without a request-path API call.
use bytes::Bytes;
use futures::channel::mpsc;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use reaper::webhook::sources::{Sources, from_cluster};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

type MockBody = UnsyncBoxBody<Bytes, Infallible>;
type Events = mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

fn once(v: Value) -> MockBody {
    http_body_util::Full::new(Bytes::from(serde_json::to_vec(&v).unwrap()))
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn policy(name: &str, priority: i32, mode: &str) -> Value {
    json!({
        "apiVersion": "reaper.dev/v1alpha1", "kind": "ReaperPolicy",
        "metadata": {"name": name, "resourceVersion": "2", "uid": format!("uid-{name}")},
        "spec": {"priority": priority, "mode": mode,
                 "namespaceSelector": {"matchLabels": {"team": "web"}}}
    })
}

/// Answers lists with fixed objects and holds watches open, handing their event senders out.
async fn api_server(
    mut handle: tower_test::mock::Handle<Request<kube::client::Body>, Response<MockBody>>,
    watches: Arc<Mutex<Vec<(String, Events)>>>,
) {
    while let Some((req, send)) = handle.next_request().await {
        let path = req.uri().path().to_string();
        let watching = req.uri().query().unwrap_or_default().contains("watch=true");
        let body = if watching {
            let (tx, rx) = mpsc::unbounded();
            watches.lock().unwrap().push((path.clone(), tx));
            StreamBody::new(rx).boxed_unsync()
        } else if path == "/apis/reaper.dev/v1alpha1/reaperpolicies" {
            once(json!({
                "apiVersion": "reaper.dev/v1alpha1", "kind": "ReaperPolicyList",
                "metadata": {"resourceVersion": "1"},
                "items": [policy("web", 1, "Share")]
            }))
        } else if path == "/api/v1/namespaces" {
            let accept = req
                .headers()
                .get("accept")
                .and_then(|a| a.to_str().ok())
                .unwrap_or_default();
            assert!(
                accept.contains("PartialObjectMetadataList"),
                "namespaces are watched as metadata only: {accept}"
            );
            once(json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                "metadata": {"resourceVersion": "1"},
                "items": [{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                           "metadata": {"name": "apps", "resourceVersion": "1",
                                        "labels": {"team": "web", "kubernetes.io/metadata.name": "apps"}}}]
            }))
        } else {
            panic!("unexpected API call {} {}", req.method(), req.uri());
        };
        send.send_response(Response::builder().status(200).body(body).unwrap());
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn winner(s: &Sources, ns: &str) -> Option<String> {
    let labels = s.namespace_labels(ns).labels;
    s.policies()
        .winner(&labels, &Default::default())
        .and_then(|p| p.metadata.name.clone())
}

#[tokio::test]
async fn reflectors_feed_the_planner() {
    let (service, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    let client = kube::Client::new(service, "default");
    let watches = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(api_server(handle, watches.clone()));
    let counts = Arc::new(Mutex::new(Vec::new()));
    let c = counts.clone();
    let token = CancellationToken::new();
    let tasks = reaper::component::Tasks::detached(token.clone());
    let sources = from_cluster(client, &tasks, move |n| c.lock().unwrap().push(n));

    eventually("sync", || sources.is_synced()).await;
    eventually("the listed policy", || sources.policies().len() == 1).await;
    assert_eq!(winner(&sources, "apps").as_deref(), Some("web"));
    let apps = sources.namespace_labels("apps");
    assert_eq!(apps.labels.get("team").map(String::as_str), Some("web"));
    assert!(apps.warning.is_none());
    let unknown = sources.namespace_labels("new-ns");
    assert!(unknown.warning.unwrap().contains("not yet known"));
    assert_eq!(winner(&sources, "new-ns"), None);

    // A higher-priority policy arrives through the watch and wins.
    eventually("the policy watch", || {
        watches
            .lock()
            .unwrap()
            .iter()
            .any(|(p, _)| p.ends_with("/reaperpolicies"))
    })
    .await;
    let send = |event: Value| {
        let w = watches.lock().unwrap();
        let (_, tx) = w
            .iter()
            .rev()
            .find(|(p, _)| p.ends_with("/reaperpolicies"))
            .unwrap();
        let mut line = serde_json::to_vec(&event).unwrap();
        line.push(b'\n');
        tx.unbounded_send(Ok(Frame::data(Bytes::from(line))))
            .unwrap();
    };
    send(json!({"type": "ADDED", "object": policy("web-strict", 10, "Inject")}));
    eventually("the added policy", || {
        winner(&sources, "apps").as_deref() == Some("web-strict")
    })
    .await;
    send(json!({"type": "DELETED", "object": policy("web-strict", 10, "Inject")}));
    eventually("the deletion", || {
        winner(&sources, "apps").as_deref() == Some("web")
    })
    .await;
    assert_eq!(*counts.lock().unwrap().last().unwrap(), 1);
    token.cancel();
}
