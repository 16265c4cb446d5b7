//! The end-to-end scenarios, written once against a kube `Client`: the local node
//! (tests/node_scenarios.rs, in `make test`) and a kind cluster (tests/e2e_kind.rs, run by
//! e2e/kind.sh) run them with the chart installed; the API-level ones (3 without running pods, 4)
//! need only an API server and a webhook.
//!
//! Delivery scenarios:
//! 1. PID 1 a shell that leaves orphans: protected → no zombies after a minute; opted out →
//!    zombies, seen in the node's ZombieReport.
//! 2. PID 1 ignoring SIGTERM: protected → `delete` completes in under 3 s; opted out → it waits
//!    for the grace period.
//! 3. inject, share and auto-fallback pods run in a namespace enforcing Pod Security "restricted"
//!    ([`image_mode_runs_under_restricted`]: image-volume pods too, where the runtime mounts them).
//! 4. Webhook scaled to 0 → pods are still created (fail-open), unchanged.
//! 5. The metrics endpoints of all three components answer.
//!
//! The seed's problem on real pods (each with its control, the same pod without Reaper):
//! - [`stop_latency`]: `delete` of a SIGTERM-deaf PID 1 with a 30 s grace period, unprotected
//!   vs share, inject (declared command) and auto (argv looked up in the registry).
//! - [`probe_and_exec_zombies`]: exec-probe and `kubectl exec` orphans become zombies only
//!   without Reaper; the ZombieReport attributes them, the operator counts them and raises its
//!   Event.
//! - [`restart_loop`]: a Deployment made before opting in is restarted by a Restart policy and
//!   comes back wrapped, without zombies.
//! - [`restricted_pods_run`]: mutated pods run under Pod Security `restricted`, the installer as
//!   its non-root UID, the wrapped app as an arbitrary UID.
//! - [`sidecars_run_and_stop`]: app + native sidecar + plain init container, wrapped.
//! - [`image_volume_pods`]: mode `image` and `auto` with image volumes detected: the reaper
//!   mounted from its image; no zombies, `delete` in under 3 s, against an opted-out control.

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
    /// An image whose own ENTRYPOINT/CMD is a PID 1 that ignores SIGTERM (busybox `sleep`), in a
    /// registry the webhook can read: pods without `command` are wrapped after a lookup. `None`
    /// skips those cases.
    pub entrypoint_image: Option<String>,
    /// How long a scenario watches a pod for zombies (several agent scan intervals).
    pub settle: Duration,
    /// `kubectl` for exec sessions, and the kubeconfig it uses (`None`: `KUBECONFIG`).
    pub kubectl: std::path::PathBuf,
    pub kubeconfig: Option<std::path::PathBuf>,
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
            entrypoint_image: std::env::var("REAPER_E2E_ENTRYPOINT_IMAGE").ok(),
            settle: Duration::from_secs(60),
            kubectl: "kubectl".into(),
            kubeconfig: None,
        }
    }

    /// A fresh namespace opted in (`reaper.dev/inject=enabled`) with extra labels.
    pub async fn namespace(&self, prefix: &str, labels: &[(&str, &str)]) -> String {
        self.namespace_with(prefix, labels, true).await
    }

    /// A fresh namespace with extra labels, opted in or not.
    pub async fn namespace_with(
        &self,
        prefix: &str,
        labels: &[(&str, &str)],
        opt_in: bool,
    ) -> String {
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
        if opt_in {
            all.insert(
                reaper::keys::LABEL_INJECT.into(),
                reaper::keys::INJECT_ENABLED.into(),
            );
        }
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
        if opt_in {
            self.wait_webhook_knows(&name).await;
        }
        name
    }

    /// A fresh opted-in namespace enforcing Pod Security `restricted`.
    pub async fn restricted_namespace(&self, prefix: &str) -> String {
        self.namespace(
            prefix,
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await
    }

    /// Labels an existing namespace opted in and waits until the webhook mutates there.
    pub async fn opt_in(&self, ns: &str) {
        Api::<Namespace>::all(self.client.clone())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {
                    reaper::keys::LABEL_INJECT: reaper::keys::INJECT_ENABLED}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("labelling namespace {ns}: {e}"));
        self.wait_webhook_knows(ns).await;
    }

    /// `kubectl ARGS` with this environment's kubeconfig: (success, stdout, stderr).
    pub async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = tokio::process::Command::new(&self.kubectl);
        cmd.args(args).kill_on_drop(true);
        if let Some(kc) = &self.kubeconfig {
            cmd.env("KUBECONFIG", kc);
        }
        match tokio::time::timeout(Duration::from_secs(60), cmd.output()).await {
            Ok(Ok(o)) => (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ),
            Ok(Err(e)) => (
                false,
                String::new(),
                format!("running {:?}: {e}", self.kubectl),
            ),
            Err(_) => (
                false,
                String::new(),
                format!("kubectl {} timed out", args.join(" ")),
            ),
        }
    }

    /// `kubectl exec -n NS POD -c CONTAINER -- ARGV`; panics unless it succeeds. Stdout.
    pub async fn exec(&self, ns: &str, pod: &str, container: &str, argv: &[&str]) -> String {
        let mut args = vec!["exec", "-n", ns, pod, "-c", container, "--"];
        args.extend_from_slice(argv);
        let (ok, out, err) = self.kubectl(&args).await;
        assert!(ok, "kubectl {}: {out}{err}", args.join(" "));
        out
    }

    /// The webhook matches a pod by its namespace's labels from a reflector: a pod created before
    /// the new namespace reaches it is matched by name only (not opted in). Dry-run creates
    /// (admission runs, nothing is stored) until several in a row are mutated, so every replica
    /// has most likely seen it.
    pub async fn wait_webhook_knows(&self, ns: &str) {
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

    pub fn pods(&self, ns: &str) -> Api<Pod> {
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

/// Polls every 500 ms until `f` gives a value, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    crate::wait::eventually_every(timeout, Duration::from_millis(500), what, f).await
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
    let ns = env.restricted_namespace("e2e-restricted").await;
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

/// Mode `image` (the annotation) under Pod Security "restricted": the stored pod mounts the
/// reaper image (an image volume, `IfNotPresent`) read-only at `/.reaper` in the wrapped
/// container and has no init container nor emptyDir; Pod Security admits it as mutated; with
/// `wait_for_running` it runs (a kubelet and runtime that mount image volumes). Returns nothing;
/// panics with the stored pod on a mismatch.
pub async fn image_mode_runs_under_restricted(env: &Env, wait_for_running: bool) {
    let ns = env.restricted_namespace("e2e-image").await;
    let cmd: &[&str] = &["sleep", "3600"];
    let mode = reaper::keys::ANNOTATION_MODE;
    let pod = restricted_pod("image", &env.image, Some(cmd), &[], &[(mode, "image")]);
    let stored = create(env, &ns, &pod).await;
    assert_image_volume_wrapped(&stored);
    if wait_for_running {
        wait_running(env, &ns, "image").await;
    }
    env.delete_namespace(&ns).await;
}

/// A pod wrapped with the reaper mounted from its image: `inject:` recorded, argv[0] the reaper,
/// an image volume mounted read-only at `/.reaper`, no init container, no emptyDir.
pub fn assert_image_volume_wrapped(stored: &Pod) {
    let v = serde_json::to_value(stored).unwrap();
    let got = injected(stored).unwrap_or_default();
    assert!(got.starts_with("inject:"), "image: {got}\n{v:#}");
    let spec = &v["spec"];
    let app = &spec["containers"][0];
    assert_eq!(app["command"][0], "/.reaper/reaper", "{v:#}");
    let mount = app["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == "/.reaper")
        .unwrap_or_else(|| panic!("no mount at /.reaper: {v:#}"));
    assert_eq!(mount["readOnly"], true);
    let volume = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|vol| vol["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}: {v:#}", mount["name"]));
    assert_eq!(volume["image"]["pullPolicy"], "IfNotPresent", "{v:#}");
    assert!(volume.get("emptyDir").is_none(), "{v:#}");
    assert!(spec.get("initContainers").is_none(), "{v:#}");
}

fn webhook_deployment(env: &Env) -> (Api<Deployment>, String) {
    (
        Api::namespaced(env.client.clone(), &env.release_ns),
        format!("{}-webhook", env.fullname),
    )
}

/// Scales the webhook Deployment and waits until exactly that many replicas are ready.
pub async fn scale_webhook(env: &Env, replicas: i32) {
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
    // And mutation resumes once the Service routes to the new replicas again.
    env.wait_webhook_knows(&ns).await;
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

// ---- The seed's problem on real pods -------------------------------------------------------

/// A container that passes Pod Security "restricted" (as in [`restricted_pod`]).
pub fn restricted_container(name: &str, image: &str, command: Option<&[&str]>) -> Value {
    let mut c = json!({
        "name": name, "image": image,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    });
    if let Some(cmd) = command {
        c["command"] = json!(cmd);
    }
    c
}

/// Applies `f` to a pod's JSON form.
pub fn edit_pod(pod: Pod, f: impl FnOnce(&mut Value)) -> Pod {
    let mut v = serde_json::to_value(pod).unwrap();
    f(&mut v);
    serde_json::from_value(v).expect("still a Pod")
}

/// An exec-probe command (and `kubectl exec` session) that leaves an orphan: the subshell forks
/// `sleep` and exits, so `sleep` is re-parented to the container's PID 1 and becomes a zombie
/// 0.2 s later unless PID 1 reaps.
pub const LEAVE_ORPHAN: &str = "(sleep 0.2 &); exit 0";

/// A cluster-scoped ReaperPolicy governing only namespace `ns` (named after it).
pub async fn policy_for_namespace(env: &Env, ns: &str, zombies: Value) -> String {
    let policy: reaper::crd::ReaperPolicy = serde_json::from_value(json!({
        "apiVersion": "reaper.dev/v1alpha1", "kind": "ReaperPolicy",
        "metadata": {"name": ns},
        "spec": {"priority": 100, "mode": "Auto",
                 "namespaceSelector": {"matchLabels": {reaper::keys::LABEL_NAMESPACE_NAME: ns}},
                 "zombies": zombies}
    }))
    .expect("a valid ReaperPolicy");
    Api::<reaper::crd::ReaperPolicy>::all(env.client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap_or_else(|e| panic!("creating ReaperPolicy {ns}: {e}"));
    ns.to_string()
}

pub async fn delete_policy(env: &Env, name: &str) {
    let _ = Api::<reaper::crd::ReaperPolicy>::all(env.client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// Waits until the policy's status satisfies `ok` (the operator writes it); returns it.
pub async fn wait_policy_status(
    env: &Env,
    name: &str,
    what: &str,
    ok: impl Fn(&reaper::crd::ReaperPolicyStatus) -> bool,
) -> reaper::crd::ReaperPolicyStatus {
    let api = Api::<reaper::crd::ReaperPolicy>::all(env.client.clone());
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = api.get(name).await.ok().and_then(|p| p.status);
        if let Some(s) = status.as_ref().filter(|s| ok(s)) {
            return s.clone();
        }
        last = status.or(last);
        assert!(
            Instant::now() < deadline,
            "policy {name}: {what}: not within 120 s; last status: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `events.k8s.io` Events with `reason` about object `name` in `ns`.
pub async fn events_about(env: &Env, ns: &str, name: &str, reason: &str) -> Vec<String> {
    let api = Api::<k8s_openapi::api::events::v1::Event>::namespaced(env.client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

/// `/proc/1/comm` of a container: which process is its PID 1.
pub async fn pid1_comm(env: &Env, ns: &str, pod: &str, container: &str) -> String {
    env.exec(ns, pod, container, &["cat", "/proc/1/comm"])
        .await
        .trim()
        .to_string()
}

/// `delete` durations of the same SIGTERM-deaf pod without and with Reaper.
#[derive(Clone, Debug)]
pub struct StopTimes {
    pub unprotected: Duration,
    pub share: Duration,
    pub inject: Duration,
    /// `None` without [`Env::entrypoint_image`].
    pub auto: Option<Duration>,
}

/// Grace period of the stop-latency pods: an unprotected PID 1 waits it out.
pub const STOP_GRACE_SECONDS: i64 = 30;

/// PID 1 is busybox `sleep` (no SIGTERM handler: as a namespace init it ignores SIGTERM). The
/// same pod opted out, in share mode, wrapped with a declared command, and wrapped after a
/// registry lookup (no `command`); all deleted at once, each timed until the object is gone.
pub async fn stop_latency(env: &Env) -> StopTimes {
    let ns = env.namespace("e2e-stop", &[]).await;
    let sleep: &[&str] = &["sleep", "3600"];
    let mode = reaper::keys::ANNOTATION_MODE;
    let grace = |p: Pod| {
        edit_pod(p, |v| {
            v["spec"]["terminationGracePeriodSeconds"] = json!(STOP_GRACE_SECONDS);
            v["spec"]["restartPolicy"] = json!("Always");
        })
    };
    let opted_out = [(reaper::keys::LABEL_INJECT, reaper::keys::INJECT_DISABLED)];
    let mut cases = vec![
        (
            "unprotected",
            restricted_pod("unprotected", &env.image, Some(sleep), &opted_out, &[]),
            None,
            "sleep",
        ),
        (
            "share",
            restricted_pod("share", &env.image, Some(sleep), &[], &[(mode, "share")]),
            Some("share"),
            "pause",
        ),
        (
            "inject",
            restricted_pod("inject", &env.image, Some(sleep), &[], &[(mode, "inject")]),
            Some("inject:app"),
            "reaper",
        ),
    ];
    if let Some(image) = &env.entrypoint_image {
        cases.push((
            "auto",
            restricted_pod("auto", image, None, &[], &[(mode, "auto")]),
            Some("inject:app"),
            "reaper",
        ));
    }
    for (name, pod, want, _) in &cases {
        let stored = create(env, &ns, &grace(pod.clone())).await;
        assert_eq!(
            injected(&stored).as_deref(),
            *want,
            "{name}: reaper.dev/injected"
        );
    }
    for (name, _, _, pid1) in &cases {
        wait_running(env, &ns, name).await;
        let comm = pid1_comm(env, &ns, name, "app").await;
        // busybox applets show as the applet's name; the share pod's PID 1 is the sandbox.
        assert_eq!(comm, *pid1, "{name}: PID 1 of the app container");
    }
    let times = futures::future::join_all(
        cases
            .iter()
            .map(|(name, ..)| time_delete_within(env, &ns, name, Duration::from_secs(90))),
    )
    .await;
    let by_name = |n: &str| cases.iter().position(|c| c.0 == n).map(|i| times[i]);
    let out = StopTimes {
        unprotected: by_name("unprotected").unwrap(),
        share: by_name("share").unwrap(),
        inject: by_name("inject").unwrap(),
        auto: by_name("auto"),
    };
    eprintln!(
        "stop latency (grace {STOP_GRACE_SECONDS} s): unprotected {:.2} s, share {:.2} s, \
         inject {:.2} s, auto {}",
        out.unprotected.as_secs_f64(),
        out.share.as_secs_f64(),
        out.inject.as_secs_f64(),
        out.auto
            .map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
    );
    assert!(
        out.unprotected >= Duration::from_secs(STOP_GRACE_SECONDS as u64 - 5),
        "the unprotected pod took only {:?}: its PID 1 should ignore SIGTERM",
        out.unprotected
    );
    for (name, d) in [
        ("share", Some(out.share)),
        ("inject", Some(out.inject)),
        ("auto", out.auto),
    ] {
        if let Some(d) = d {
            assert!(d < Duration::from_secs(3), "{name}: delete took {d:?}");
        }
    }
    env.delete_namespace(&ns).await;
    out
}

/// What [`image_volume_pods`] measured.
#[derive(Clone, Debug)]
pub struct ImageVolumeTimes {
    /// `delete` of the opted-out control (PID 1 `sleep`, SIGTERM-deaf): the grace period.
    pub unprotected: Duration,
    /// `delete` of the `reaper.dev/mode: image` pod.
    pub image: Duration,
    /// `delete` of the pod `auto` wrapped with an image volume (the webhook detected support).
    pub auto: Duration,
    /// Zombies counted for the control, and for the two image-volume pods.
    pub zombies: (u32, u32, u32),
}

/// Image-volume pods on a node whose runtime mounts them (the same steps as the inject-mode
/// scenarios): a `reaper.dev/mode: image` pod and an `auto` pod (the webhook detected that the
/// cluster runs image volumes, so `auto` mounts the reaper image too), both PID 1 `sleep` wrapped
/// with the reaper from the image volume, no init container, with an exec probe and `kubectl
/// exec` sessions leaving orphans; the control is the same pod opted out. The control's zombies
/// show up in the node's ZombieReport, the image-volume pods have none; on `delete` the control
/// waits out its grace period, the image-volume pods are gone in under 3 s.
pub async fn image_volume_pods(env: &Env) -> ImageVolumeTimes {
    let ns = env.namespace("e2e-imagevol", &[]).await;
    let mode = reaper::keys::ANNOTATION_MODE;
    let opted_out = [(reaper::keys::LABEL_INJECT, reaper::keys::INJECT_DISABLED)];
    let probed = |name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]| {
        edit_pod(orphan_probed(env, name, labels, annotations), |v| {
            v["spec"]["terminationGracePeriodSeconds"] = json!(STOP_GRACE_SECONDS);
            v["spec"]["restartPolicy"] = json!("Always");
        })
    };
    // Every webhook replica has finished its detection: dry-runs of the auto pod come back with
    // the image volume, several in a row.
    let auto = probed("auto", &[], &[]);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let pods = env.pods(&ns);
    let has_image_volume = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|vs| vs.iter().any(|v| v.image.is_some()))
    };
    let mut in_a_row = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while in_a_row < 4 {
        let p = pods.create(&dry, &auto).await;
        in_a_row = match p {
            Ok(p) if has_image_volume(&p) => in_a_row + 1,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "auto never mounted the reaper image within 120 s (detection): {p:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                0
            }
        };
    }
    let cases = [
        probed("unprotected", &opted_out, &[]),
        probed("image", &[], &[(mode, "image")]),
        auto,
    ];
    for p in &cases {
        let stored = create(env, &ns, p).await;
        if p.name_any() == "unprotected" {
            assert_eq!(injected(&stored), None);
        } else {
            assert_image_volume_wrapped(&stored);
        }
    }
    let mut running = Vec::new();
    for (name, pid1) in [
        ("unprotected", "sleep"),
        ("image", "reaper"),
        ("auto", "reaper"),
    ] {
        running.push(wait_running(env, &ns, name).await);
        assert_eq!(
            pid1_comm(env, &ns, name, "app").await,
            pid1,
            "{name}: PID 1 of the app container"
        );
    }
    for name in ["unprotected", "image", "auto"] {
        for _ in 0..3 {
            env.exec(&ns, name, "app", &["sh", "-c", LEAVE_ORPHAN])
                .await;
        }
    }
    tokio::time::sleep(env.settle).await;
    let control = reported_entry(env, &running[0], 5).await.count;
    let image = reported_zombies(env, &running[1]).await.unwrap_or(0);
    let auto = reported_zombies(env, &running[2]).await.unwrap_or(0);
    assert_eq!((image, auto), (0, 0), "image-volume pods hold zombies");
    let times = futures::future::join_all(
        ["unprotected", "image", "auto"]
            .map(|name| time_delete_within(env, &ns, name, Duration::from_secs(90))),
    )
    .await;
    let out = ImageVolumeTimes {
        unprotected: times[0],
        image: times[1],
        auto: times[2],
        zombies: (control, image, auto),
    };
    eprintln!("image-volume pods (grace {STOP_GRACE_SECONDS} s): {out:?}");
    assert!(
        out.unprotected >= Duration::from_secs(STOP_GRACE_SECONDS as u64 - 5),
        "the control took only {:?}: its PID 1 should ignore SIGTERM",
        out.unprotected
    );
    for (name, d) in [("image", out.image), ("auto", out.auto)] {
        assert!(d < Duration::from_secs(3), "{name}: delete took {d:?}");
    }
    env.delete_namespace(&ns).await;
    out
}

async fn time_delete_within(env: &Env, ns: &str, name: &str, timeout: Duration) -> Duration {
    let api = env.pods(ns);
    let t = Instant::now();
    api.delete(name, &DeleteParams::default()).await.unwrap();
    crate::wait::eventually_every(
        timeout,
        Duration::from_millis(50),
        &format!("pod {ns}/{name} gone"),
        || async { matches!(api.get_opt(name).await, Ok(None)).then_some(()) },
    )
    .await;
    t.elapsed()
}

/// Zombies per pod at the end of [`probe_and_exec_zombies`].
#[derive(Clone, Debug)]
pub struct ProbeZombies {
    pub unprotected: u32,
    pub opted_out: u32,
    pub inject: u32,
    pub share: u32,
}

/// The ZombieReport entry of `pod`'s container once it counts at least `min` zombies.
async fn reported_entry(env: &Env, pod: &Pod, min: u32) -> reaper::crd::ContainerZombies {
    let uid = pod.uid().unwrap();
    wait_for(
        Duration::from_secs(120),
        &format!(
            "{} zombies of pod {} in the ZombieReport",
            min,
            pod.name_any()
        ),
        || async {
            let node = pod.spec.as_ref()?.node_name.clone()?;
            let report = Api::<ZombieReport>::all(env.client.clone())
                .get_opt(&node)
                .await
                .ok()??;
            report
                .spec
                .containers
                .into_iter()
                .find(|c| c.pod_uid == uid && c.count >= min)
        },
    )
    .await
}

/// A restricted `sleep 3600` pod whose exec liveness probe leaves an orphan every second (a
/// zombie under a PID 1 that does not reap).
fn orphan_probed(
    env: &Env,
    name: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> Pod {
    edit_pod(
        restricted_pod(
            name,
            &env.image,
            Some(&["sleep", "3600"]),
            labels,
            annotations,
        ),
        |v| {
            v["spec"]["containers"][0]["livenessProbe"] = json!({
                "exec": {"command": ["sh", "-c", LEAVE_ORPHAN]},
                "periodSeconds": 1, "timeoutSeconds": 5, "failureThreshold": 30
            });
        },
    )
}

/// Pods whose exec liveness probe (every second) and three `kubectl exec` sessions leave
/// orphans. Controls: a pod created before its namespace was opted in (governed by the policy,
/// unprotected) and one opted out by label: zombies pile up under PID 1, the node's ZombieReport
/// attributes them to pod and container, the operator counts the governed one in the policy
/// status and raises `ZombiesDetected` on it (opted-out pods are left alone by design). Wrapped
/// (inject) or sharing the sandbox's PID 1 (share): no zombies over the same period.
pub async fn probe_and_exec_zombies(env: &Env) -> ProbeZombies {
    let ns = env.namespace_with("e2e-probes", &[], false).await;
    let policy = policy_for_namespace(
        env,
        &ns,
        json!({"threshold": 3, "action": "Event", "cooldown": "1h"}),
    )
    .await;
    let mode = reaper::keys::ANNOTATION_MODE;
    let before = create(env, &ns, &orphan_probed(env, "unprotected", &[], &[])).await;
    assert_eq!(
        injected(&before),
        None,
        "mutated before the namespace opted in"
    );
    env.opt_in(&ns).await;
    let opted_out = [(reaper::keys::LABEL_INJECT, reaper::keys::INJECT_DISABLED)];
    let pods = [
        orphan_probed(env, "opted-out", &opted_out, &[]),
        orphan_probed(env, "inject", &[], &[(mode, "inject")]),
        orphan_probed(env, "share", &[], &[(mode, "share")]),
    ];
    for p in &pods {
        create(env, &ns, p).await;
    }
    let names = ["unprotected", "opted-out", "inject", "share"];
    let mut running = Vec::new();
    for name in names {
        running.push(wait_running(env, &ns, name).await);
    }
    for name in names {
        for _ in 0..3 {
            env.exec(&ns, name, "app", &["sh", "-c", LEAVE_ORPHAN])
                .await;
        }
    }
    tokio::time::sleep(env.settle).await;
    // Attributed to the pod and container by name, through the node's cgroup paths.
    for pod in &running[..2] {
        let entry = reported_entry(env, pod, 5).await;
        assert_eq!(entry.namespace.as_deref(), Some(ns.as_str()));
        assert_eq!(entry.pod, Some(pod.name_any()));
        assert_eq!(entry.container.as_deref(), Some("app"));
        assert!(
            entry.parents.iter().any(|p| p.comm == "sleep"),
            "the zombies' parent should be PID 1 `sleep`: {:?}",
            entry.parents
        );
    }
    let inject = reported_zombies(env, &running[2]).await.unwrap_or(0);
    let share = reported_zombies(env, &running[3]).await.unwrap_or(0);
    assert_eq!(inject, 0, "the wrapped pod has zombies");
    assert_eq!(share, 0, "the share-mode pod has zombies");
    let status = wait_policy_status(env, &policy, "zombies counted", |s| {
        s.zombies >= 5 && s.matched_pods == 3 && s.protected_pods == 2
    })
    .await;
    assert_eq!(
        status.top_offenders.first().map(|o| o.pod.as_str()),
        Some("unprotected"),
        "{status:?}"
    );
    let notes = wait_for(
        Duration::from_secs(60),
        "a ZombiesDetected Event on the unprotected pod",
        || async {
            let n = events_about(
                env,
                &ns,
                "unprotected",
                reaper::keys::REASON_ZOMBIES_DETECTED,
            )
            .await;
            (!n.is_empty()).then_some(n)
        },
    )
    .await;
    let out = ProbeZombies {
        unprotected: reported_zombies(env, &running[0]).await.unwrap_or(0),
        opted_out: reported_zombies(env, &running[1]).await.unwrap_or(0),
        inject,
        share,
    };
    eprintln!(
        "probe/exec zombies after {:?}: {out:?}; policy status: {} zombies, {}/{} protected; \
         Event: {}",
        env.settle, status.zombies, status.protected_pods, status.matched_pods, notes[0]
    );
    delete_policy(env, &policy).await;
    env.delete_namespace(&ns).await;
    out
}

/// A Deployment created before its namespace was opted in accumulates zombies; once the
/// namespace is opted in, a policy with `action: Restart` makes the operator restart it; the
/// controller-manager and scheduler roll it, the new pod is wrapped and has no zombies.
pub async fn restart_loop(env: &Env) {
    let ns = env.namespace_with("e2e-restart", &[], false).await;
    let template = edit_pod(
        restricted_pod(
            "x",
            &env.image,
            Some(&["sh", "-c", ORPHANS]),
            &[("app", "leaky")],
            &[],
        ),
        |v| {
            v["spec"]["restartPolicy"] = json!("Always");
            v["spec"]["terminationGracePeriodSeconds"] = json!(2);
        },
    );
    let mut template = serde_json::to_value(&template).unwrap();
    template["metadata"] = json!({"labels": {"app": "leaky"}});
    let deploy: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "leaky"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "leaky"}},
                 "template": {"metadata": template["metadata"], "spec": template["spec"]}}
    }))
    .unwrap();
    let deployments = Api::<Deployment>::namespaced(env.client.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap_or_else(|e| panic!("creating deployment {ns}/leaky: {e}"));
    let pods = env.pods(&ns);
    let live = || async {
        pods.list(&ListParams::default().labels("app=leaky"))
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let first = wait_for(
        Duration::from_secs(120),
        "the first leaky pod Running",
        || async {
            live()
                .await
                .into_iter()
                .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        },
    )
    .await;
    assert_eq!(
        injected(&first),
        None,
        "mutated before the namespace opted in"
    );
    wait_for(
        Duration::from_secs(120),
        "zombies of the first pod reported",
        || async { reported_zombies(env, &first).await.filter(|n| *n >= 5) },
    )
    .await;

    env.opt_in(&ns).await;
    let policy = policy_for_namespace(
        env,
        &ns,
        json!({"threshold": 3, "action": "Restart", "cooldown": "1h"}),
    )
    .await;
    let replaced = wait_for(
        Duration::from_secs(180),
        "the Deployment rolled to a wrapped pod",
        || async {
            let now = live().await;
            let all_new = !now.is_empty() && now.iter().all(|p| p.uid() != first.uid());
            let running = now.iter().find(|p| {
                injected(p).is_some_and(|v| v.starts_with("inject:"))
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            });
            let gone = matches!(pods.get_opt(&first.name_any()).await, Ok(None));
            (all_new && gone).then(|| running.cloned()).flatten()
        },
    )
    .await;
    let restarted_at = deployments
        .get("leaky")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|a| a.get(reaper::keys::ANNOTATION_RESTARTED_AT).cloned());
    assert!(restarted_at.is_some(), "no restartedAt on the pod template");
    tokio::time::sleep(env.settle).await;
    assert_eq!(
        reported_zombies(env, &replaced).await.unwrap_or(0),
        0,
        "the wrapped replacement has zombies"
    );
    let status = wait_policy_status(env, &policy, "the replacement counted as protected", |s| {
        s.matched_pods == 1 && s.protected_pods == 1 && s.zombies == 0
    })
    .await;
    let notes = wait_for(Duration::from_secs(60), "a ZombieRestart Event", || async {
        let api = Api::<k8s_openapi::api::events::v1::Event>::namespaced(env.client.clone(), &ns);
        let n: Vec<String> = api
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reaper::keys::REASON_ZOMBIE_RESTART))
            .map(|e| e.note.unwrap_or_default())
            .collect();
        (!n.is_empty()).then_some(n)
    })
    .await;
    eprintln!(
        "restart loop: {} rolled at {} ({}); now {}/{} protected, {} zombies",
        first.name_any(),
        restarted_at.unwrap_or_default(),
        notes[0],
        status.protected_pods,
        status.matched_pods,
        status.zombies
    );
    delete_policy(env, &policy).await;
    env.delete_namespace(&ns).await;
}

/// Under Pod Security `restricted`, mutated pods are admitted and run: the `reaper-install` init
/// container ran as its non-root UID (it owns the copied binary) with a read-only root, and a
/// wrapped container running as an arbitrary UID executes the reaper from the shared volume.
pub async fn restricted_pods_run(env: &Env) {
    let ns = env.restricted_namespace("e2e-psa").await;
    let sleep: &[&str] = &["sleep", "3600"];
    let mode = reaper::keys::ANNOTATION_MODE;
    let any_uid = edit_pod(
        restricted_pod("any-uid", &env.image, Some(sleep), &[], &[(mode, "inject")]),
        |v| {
            v["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(4242);
            v["spec"]["containers"][0]["securityContext"]["runAsGroup"] = json!(4343);
        },
    );
    let mut pods = vec![
        restricted_pod("inject", &env.image, Some(sleep), &[], &[(mode, "inject")]),
        any_uid,
        restricted_pod("share", &env.image, Some(sleep), &[], &[(mode, "share")]),
    ];
    if let Some(image) = &env.entrypoint_image {
        pods.push(restricted_pod("auto", image, None, &[], &[(mode, "auto")]));
    }
    for p in &pods {
        let stored = create(env, &ns, p).await;
        assert!(injected(&stored).is_some(), "{}: not mutated", p.name_any());
    }
    for p in &pods {
        let name = p.name_any();
        let pod = wait_running(env, &ns, &name).await;
        let spec = pod.spec.clone().unwrap();
        if injected(&pod).as_deref() == Some("share") {
            assert_eq!(pid1_comm(env, &ns, &name, "app").await, "pause");
            continue;
        }
        let reaper = spec.containers[0].command.as_ref().unwrap()[0].clone();
        if spec.init_containers.is_none() {
            // `auto` where the webhook detected image volumes: the reaper comes from its image,
            // read-only, and runs as the app's UID.
            assert_image_volume_wrapped(&pod);
            assert_eq!(pid1_comm(env, &ns, &name, "app").await, "reaper", "{name}");
            continue;
        }
        let install = spec
            .init_containers
            .as_ref()
            .and_then(|ics| ics.iter().find(|c| c.name == "reaper-install"))
            .unwrap_or_else(|| panic!("{name}: no reaper-install init container"))
            .clone();
        let sc = install.security_context.clone().unwrap_or_default();
        let install_uid = sc.run_as_user.expect("the installer's runAsUser");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}: {sc:?}");
        assert_ne!(install_uid, 0);
        let state = pod
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .and_then(|ss| ss.iter().find(|s| s.name == "reaper-install"))
            .and_then(|s| s.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code);
        assert_eq!(state, Some(0), "{name}: reaper-install did not complete");
        // The copy belongs to the installer's UID: it really ran as that non-root user.
        let owner = env
            .exec(&ns, &name, "app", &["stat", "-c", "%u %a", &reaper])
            .await;
        let mut it = owner.split_whitespace();
        assert_eq!(
            it.next(),
            Some(install_uid.to_string().as_str()),
            "{name}: {owner}"
        );
        assert_eq!(pid1_comm(env, &ns, &name, "app").await, "reaper", "{name}");
        let uid = env.exec(&ns, &name, "app", &["id", "-u"]).await;
        let want = spec.containers[0]
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .unwrap();
        assert_eq!(uid.trim(), want.to_string(), "{name}: app UID");
        // PID 1 (the reaper) runs as the app's UID too.
        let status = env
            .exec(&ns, &name, "app", &["cat", "/proc/1/status"])
            .await;
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap_or_default();
        assert!(
            uid_line.split_whitespace().nth(1) == Some(want.to_string().as_str()),
            "{name}: PID 1 {uid_line}"
        );
    }
    env.delete_namespace(&ns).await;
}

/// App + second container + native sidecar (`restartPolicy: Always` init container) + a plain
/// init container, wrapped: it runs (the plain init container ran to completion first), every
/// long-running container has the reaper as PID 1, and `delete` is prompt.
pub async fn sidecars_run_and_stop(env: &Env) -> Duration {
    let ns = env.restricted_namespace("e2e-sidecars").await;
    let sleep: &[&str] = &["sleep", "3600"];
    let mut setup = restricted_container(
        "setup",
        &env.image,
        Some(&["sh", "-c", "echo ready > /work/ready"]),
    );
    setup["volumeMounts"] = json!([{"name": "work", "mountPath": "/work"}]);
    let mut sidecar = restricted_container("sidecar", &env.image, Some(sleep));
    sidecar["restartPolicy"] = json!("Always");
    let mut app = restricted_container(
        "app",
        &env.image,
        Some(&["sh", "-c", "cat /work/ready && exec sleep 3600"]),
    );
    app["volumeMounts"] = json!([{"name": "work", "mountPath": "/work"}]);
    let helper = restricted_container("helper", &env.image, Some(sleep));
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "multi"},
        "spec": {"initContainers": [setup, sidecar], "containers": [app, helper],
                 "volumes": [{"name": "work", "emptyDir": {}}],
                 "terminationGracePeriodSeconds": STOP_GRACE_SECONDS}
    }))
    .unwrap();
    let stored = create(env, &ns, &pod).await;
    let value = injected(&stored).unwrap_or_default();
    for c in ["app", "helper", "sidecar"] {
        assert!(value.contains(c), "{c} not wrapped: {value}");
    }
    assert!(
        !value.contains("setup"),
        "plain init container wrapped: {value}"
    );
    wait_for(Duration::from_secs(180), "pod multi Ready", || async {
        let p = env.pods(&ns).get("multi").await.ok()?;
        p.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
    for c in ["app", "helper", "sidecar"] {
        assert_eq!(pid1_comm(env, &ns, "multi", c).await, "reaper", "{c}");
    }
    let took = time_delete_within(env, &ns, "multi", Duration::from_secs(90)).await;
    eprintln!(
        "app + sidecar + helper, wrapped: delete took {:.2} s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(3), "delete took {took:?}");
    env.delete_namespace(&ns).await;
    took
}

/// Labels a Deployment's pod template `reaper.dev/inject=enabled`: its pods opt in themselves
/// (pod opt-in, where their namespace says nothing).
pub fn opt_in_template(d: &mut Deployment) {
    d.spec
        .get_or_insert_default()
        .template
        .metadata
        .get_or_insert_default()
        .labels
        .get_or_insert_default()
        .insert(
            reaper::keys::LABEL_INJECT.into(),
            reaper::keys::INJECT_ENABLED.into(),
        );
}
