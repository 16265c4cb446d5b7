//! The end-to-end scenarios of the delivery issue, written once against a kube `Client`: a kind
//! cluster with the chart installed (tests/e2e_kind.rs, run by e2e/kind.sh) runs all five; the
//! API-level ones (3 without running pods, 4) need only an API server and a webhook.
//!
//! 1. PID 1 a shell that leaves orphans: protected → no zombies after a minute; opted out →
//!    zombies, seen in the node's ZombieReport.
//! 2. PID 1 ignoring SIGTERM: protected → `delete` completes in under 3 s; opted out → it waits
//!    for the grace period.
//! 3. inject, share and auto-fallback pods run in a namespace enforcing Pod Security "restricted".
//! 4. Webhook scaled to 0 → pods are still created (fail-open), unchanged.
//! 5. The metrics endpoints of all three components answer.
// Each test binary uses a different part.
#![allow(dead_code)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use reaper::crd::ZombieReport;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Where the scenarios run.
#[derive(Clone)]
pub struct Env {
    pub client: Client,
    /// The chart's release namespace.
    pub release_ns: String,
    /// Name prefix of the chart's objects (`reaper` for release `reaper`).
    pub fullname: String,
    /// A small image with `sh` and `sleep` (busybox).
    pub image: String,
    /// Extra labels of every namespace a scenario creates (a local control-plane test scopes
    /// its webhook registration with one).
    pub ns_labels: Vec<(String, String)>,
}

impl Env {
    /// From the environment: `REAPER_E2E_NAMESPACE` (default reaper-system),
    /// `REAPER_E2E_FULLNAME` (default reaper), `REAPER_E2E_IMAGE` (default busybox:1.36).
    pub async fn from_env() -> Self {
        let client = Client::try_default()
            .await
            .expect("a kube client from KUBECONFIG (e2e/kind.sh sets it)");
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        Env {
            client,
            release_ns: var("REAPER_E2E_NAMESPACE", "reaper-system"),
            fullname: var("REAPER_E2E_FULLNAME", "reaper"),
            image: var("REAPER_E2E_IMAGE", "docker.io/library/busybox:1.36"),
            ns_labels: Vec::new(),
        }
    }

    /// A fresh namespace opted in (`reaper.dev/inject=enabled`) with extra labels.
    pub async fn namespace(&self, prefix: &str, labels: &[(&str, &str)]) -> String {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let name = format!(
            "{prefix}-{:08x}",
            nanos ^ std::process::id().rotate_left(16) ^ n
        );
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.extend(self.ns_labels.iter().cloned());
        all.insert(
            reaper::keys::LABEL_INJECT.into(),
            reaper::keys::INJECT_ENABLED.into(),
        );
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": all}
        }))
        .unwrap();
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        // Pods need the `default` ServiceAccount: a cluster's controller manager creates it, a
        // bare API server does not (conflict: it got there first).
        let sa: k8s_openapi::api::core::v1::ServiceAccount = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
        )
        .unwrap();
        match Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
            self.client.clone(),
            &name,
        )
        .create(&PostParams::default(), &sa)
        .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating ServiceAccount {name}/default: {e}"),
        }
        self.wait_webhook_knows(&name).await;
        name
    }

    /// The webhook matches a pod by its namespace's labels from a reflector: a pod created before
    /// the new namespace reaches it is matched by name only (not opted in). Dry-run creates
    /// (admission runs, nothing is stored) until several in a row are mutated, so every replica
    /// has most likely seen it.
    async fn wait_webhook_knows(&self, ns: &str) {
        let probe = restricted_pod(
            "probe",
            "registry.example.com/probe:1",
            Some(&["/probe"]),
            &[],
            &[],
        );
        let pp = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let api = self.pods(ns);
        let mut in_a_row = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while in_a_row < 3 {
            let got = api.create(&pp, &probe).await;
            let mutated = got.as_ref().ok().and_then(injected).is_some();
            in_a_row = if mutated { in_a_row + 1 } else { 0 };
            assert!(
                Instant::now() < deadline,
                "the webhook does not mutate pods in {ns} within 60 s; last: {:?}",
                got.map(|p| p.metadata.annotations)
            );
            if !mutated {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    pub async fn delete_namespace(&self, name: &str) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(name, &DeleteParams::default())
            .await;
    }

    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }
}

/// A pod that passes Pod Security "restricted", running `command` in `image`.
pub fn restricted_pod(
    name: &str,
    image: &str,
    command: Option<&[&str]>,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> Pod {
    let mut c = json!({
        "name": "app", "image": image,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    });
    if let Some(cmd) = command {
        c["command"] = json!(cmd);
    }
    let map = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
    };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": map(labels), "annotations": map(annotations)},
        "spec": {"containers": [c], "terminationGracePeriodSeconds": 10, "restartPolicy": "Never"}
    }))
    .unwrap()
}

pub async fn create(env: &Env, ns: &str, pod: &Pod) -> Pod {
    env.pods(ns)
        .create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {ns}/{}: {e}", pod.name_any()))
}

/// Polls until `f` gives a value, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn wait_running(env: &Env, ns: &str, name: &str) -> Pod {
    let api = env.pods(ns);
    wait_for(
        Duration::from_secs(180),
        &format!("pod {ns}/{name} Running"),
        || async {
            let p = api.get(name).await.ok()?;
            let phase = p.status.as_ref()?.phase.clone()?;
            assert_ne!(phase, "Failed", "pod {ns}/{name} failed: {:?}", p.status);
            (phase == "Running").then_some(p)
        },
    )
    .await
}

/// The `reaper.dev/injected` annotation of a stored pod.
pub fn injected(pod: &Pod) -> Option<String> {
    pod.annotations()
        .get(reaper::keys::ANNOTATION_INJECTED)
        .cloned()
}

/// Zombies the node's ZombieReport counts for `pod` (0 when not listed).
pub async fn reported_zombies(env: &Env, pod: &Pod) -> Option<u32> {
    let node = pod.spec.as_ref()?.node_name.clone()?;
    let uid = pod.uid()?;
    let report = Api::<ZombieReport>::all(env.client.clone())
        .get_opt(&node)
        .await
        .ok()??;
    Some(
        report
            .spec
            .containers
            .iter()
            .filter(|c| c.pod_uid == uid)
            .map(|c| c.count)
            .sum(),
    )
}

/// PID 1 forks children that outlive their parent, then execs `sleep`, which never waits: the
/// orphans, re-parented to PID 1, stay zombies unless a real init is PID 1.
pub const ORPHANS: &str =
    "i=0; while [ $i -lt 5 ]; do sh -c 'sleep 1 &'; i=$((i+1)); done; exec sleep 3600";

/// Scenario 1.
pub async fn orphans_are_reaped_only_when_protected(env: &Env) {
    let ns = env.namespace("e2e-orphans", &[]).await;
    let cmd: &[&str] = &["sh", "-c", ORPHANS];
    let protected = create(
        env,
        &ns,
        &restricted_pod("protected", &env.image, Some(cmd), &[], &[]),
    )
    .await;
    assert!(
        injected(&protected).is_some_and(|v| v.starts_with("inject:")),
        "{:?}",
        injected(&protected)
    );
    let opted_out = restricted_pod(
        "opted-out",
        &env.image,
        Some(cmd),
        &[(reaper::keys::LABEL_INJECT, reaper::keys::INJECT_DISABLED)],
        &[],
    );
    let opted_out = create(env, &ns, &opted_out).await;
    assert_eq!(injected(&opted_out), None);
    let protected = wait_running(env, &ns, "protected").await;
    let opted_out = wait_running(env, &ns, "opted-out").await;
    // The unprotected pod's zombies reach the report (the agent scans every 15 s by default).
    let n = wait_for(
        Duration::from_secs(120),
        "zombies of the opted-out pod in the ZombieReport",
        || async { reported_zombies(env, &opted_out).await.filter(|n| *n >= 5) },
    )
    .await;
    assert_eq!(n, 5);
    // A minute on, the protected pod still has none (its report entry, if any, is 0).
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(reported_zombies(env, &protected).await.unwrap_or(0), 0);
    // The policy status, once an operator aggregates it, names the zombies too.
    let policies = Api::<reaper::crd::ReaperPolicy>::all(env.client.clone());
    for p in policies.list(&ListParams::default()).await.unwrap().items {
        if let Some(status) = p.status.as_ref().filter(|s| s.last_updated.is_some()) {
            eprintln!(
                "policy {}: zombies {} unprotected {}",
                p.name_any(),
                status.zombies,
                status.unprotected_pods
            );
        }
    }
    env.delete_namespace(&ns).await;
}

/// Seconds from `delete` until the pod is gone.
async fn time_delete(env: &Env, ns: &str, name: &str) -> Duration {
    let api = env.pods(ns);
    let t = Instant::now();
    api.delete(name, &DeleteParams::default()).await.unwrap();
    wait_for(
        Duration::from_secs(60),
        &format!("pod {ns}/{name} gone"),
        || async { matches!(api.get_opt(name).await, Ok(None)).then_some(()) },
    )
    .await;
    t.elapsed()
}

/// Scenario 2.
pub async fn sigterm_ignoring_pid1_stops_fast_only_when_protected(env: &Env) {
    let ns = env.namespace("e2e-sigterm", &[]).await;
    let cmd: &[&str] = &["sleep", "3600"];
    create(
        env,
        &ns,
        &restricted_pod("protected", &env.image, Some(cmd), &[], &[]),
    )
    .await;
    let opted_out = restricted_pod(
        "opted-out",
        &env.image,
        Some(cmd),
        &[(reaper::keys::LABEL_INJECT, reaper::keys::INJECT_DISABLED)],
        &[],
    );
    create(env, &ns, &opted_out).await;
    wait_running(env, &ns, "protected").await;
    wait_running(env, &ns, "opted-out").await;
    let fast = time_delete(env, &ns, "protected").await;
    let slow = time_delete(env, &ns, "opted-out").await;
    assert!(
        fast < Duration::from_secs(3),
        "protected pod took {fast:?} to delete"
    );
    assert!(
        slow >= Duration::from_secs(9),
        "unprotected pod took only {slow:?} (grace period 10 s)"
    );
    env.delete_namespace(&ns).await;
}

/// Scenario 3: inject (command known), share (annotation) and auto without a command (the image
/// config from the registry, or the shareProcessNamespace fallback) all run under "restricted".
pub async fn every_mode_runs_under_restricted(env: &Env, wait_for_running: bool) {
    let ns = env
        .namespace(
            "e2e-restricted",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;
    let cmd: &[&str] = &["sleep", "3600"];
    let mode = reaper::keys::ANNOTATION_MODE;
    let cases = [
        (
            "inject",
            restricted_pod("inject", &env.image, Some(cmd), &[], &[(mode, "inject")]),
            "inject:",
        ),
        (
            "share",
            restricted_pod("share", &env.image, Some(cmd), &[], &[(mode, "share")]),
            "share",
        ),
        (
            "auto",
            restricted_pod("auto", &env.image, None, &[], &[(mode, "auto")]),
            "",
        ),
    ];
    for (name, pod, want) in &cases {
        let stored = create(env, &ns, pod).await;
        let got = injected(&stored).unwrap_or_else(|| panic!("{name}: not handled by the webhook"));
        assert!(
            got.starts_with(want) && !got.starts_with("skipped"),
            "{name}: {got}"
        );
    }
    if wait_for_running {
        for (name, _, _) in &cases {
            wait_running(env, &ns, name).await;
        }
    }
    env.delete_namespace(&ns).await;
}

fn webhook_deployment(env: &Env) -> (Api<Deployment>, String) {
    (
        Api::namespaced(env.client.clone(), &env.release_ns),
        format!("{}-webhook", env.fullname),
    )
}

async fn scale_webhook(env: &Env, replicas: i32) {
    let (api, name) = webhook_deployment(env);
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .unwrap_or_else(|e| panic!("scaling {name}: {e}"));
    let pods = env.pods(&env.release_ns);
    let selector = "app.kubernetes.io/component=webhook";
    wait_for(
        Duration::from_secs(180),
        &format!("{name} at {replicas} ready replicas"),
        || async {
            let ready = pods
                .list(&ListParams::default().labels(selector))
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .count();
            let all = pods
                .list(&ListParams::default().labels(selector))
                .await
                .ok()?
                .items
                .len();
            (ready == replicas as usize && all == replicas as usize).then_some(())
        },
    )
    .await;
}

/// Scenario 4.
pub async fn pods_are_created_when_the_webhook_is_down(env: &Env) {
    let ns = env.namespace("e2e-failopen", &[]).await;
    scale_webhook(env, 0).await;
    let result = env
        .pods(&ns)
        .create(
            &PostParams::default(),
            &restricted_pod("while-down", &env.image, Some(&["sleep", "3600"]), &[], &[]),
        )
        .await;
    scale_webhook(env, 2).await;
    let pod = result.unwrap_or_else(|e| panic!("pod refused while the webhook was down: {e}"));
    assert_eq!(injected(&pod), None, "mutated with no webhook running?");
    // And mutation resumes.
    let back = create(
        env,
        &ns,
        &restricted_pod("after", &env.image, Some(&["sleep", "3600"]), &[], &[]),
    )
    .await;
    assert!(injected(&back).is_some(), "not mutated after scaling back");
    env.delete_namespace(&ns).await;
}

/// Scenario 5: `/metrics` of every component's pods, through the API server's pod proxy.
pub async fn metrics_endpoints_answer(env: &Env) {
    let pods = env.pods(&env.release_ns);
    for (component, metric) in [
        ("webhook", "reaper_webhook_"),
        ("operator", "reaper_operator_"),
        ("agent", "reaper_agent_"),
    ] {
        let list = pods
            .list(
                &ListParams::default().labels(&format!("app.kubernetes.io/component={component}")),
            )
            .await
            .unwrap();
        assert!(
            !list.items.is_empty(),
            "no {component} pods in {}",
            env.release_ns
        );
        for p in list.items {
            let port = admin_port(&p).unwrap_or_else(|| panic!("{}: no admin port", p.name_any()));
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}:{port}/proxy/metrics",
                env.release_ns,
                p.name_any()
            );
            let req = http::Request::get(&path).body(Vec::new()).unwrap();
            let text = env
                .client
                .request_text(req)
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert!(
                text.contains(metric),
                "{path} has no {metric}* metric:\n{text}"
            );
        }
    }
}

fn admin_port(pod: &Pod) -> Option<i32> {
    let v: Value = serde_json::to_value(pod.spec.as_ref()?).ok()?;
    v["containers"][0]["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "admin")?["containerPort"]
        .as_i64()
        .map(|p| p as i32)
}
