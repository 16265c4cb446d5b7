//! `reaper-controller operator` against a real kube-apiserver (tests/support/control_plane.rs):
//! - two operators elect one leader on the Lease, and the other takes over within the lease
//!   duration when the leader is killed; a clean shutdown releases the Lease;
//! - ReaperPolicy status (counts, conditions, observedGeneration) from pods created through the
//!   API, written only when it changes;
//! - ZombieReports published by a real `reaper-controller agent` (real zombies in kubepods-shaped
//!   cgroups) become status and one rate-limited `ZombiesDetected` Event;
//! - the Restart action patches a Deployment's pod template once per cooldown, never for bare or
//!   protected pods;
//! - self-managed certificates land in the Secret and the MWC `caBundle`, and a full CA rotation
//!   (short validity through the flags) keeps a running `reaper-controller webhook` serving with
//!   no failed handshake;
//! - `--policy-reports=auto` on the real report CRDs (tests/fixtures/crds): a wgpolicyk8s.io
//!   PolicyReport while only that CRD is served, an openreports.io Report once it is, with the
//!   expected results, rewritten only when the cluster changes, deleted when the namespace opts out.
//!
//! Operators reconcile every ReaperPolicy in the cluster, so these tests take turns (`SERIAL`)
//! and every policy selects only its own test's namespace (a unique label).

use reaper_test_support as support;
use reaper_test_support::agent as agent_common;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use reaper::crd::{ReaperPolicy, ZombieReport};
use reaper::keys;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::control_plane::{self, ChildGuard, ControlPlane, free_port, unique_name};

const API_WAIT: Duration = Duration::from_secs(60);
/// Label every policy of a test selects its namespace by.
const TEST_LABEL: &str = "reaper.dev/test-operator";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running `reaper-controller operator`.
struct Operator {
    child: ChildGuard,
    log: tempfile::NamedTempFile,
    admin: u16,
    name: String,
}

impl Operator {
    /// Runs as the ServiceAccount of `identity` (kubeconfig), in `namespace`.
    fn spawn(
        cp: &ControlPlane,
        identity: &Path,
        name: &str,
        namespace: &str,
        args: &[&str],
    ) -> Self {
        let admin = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let log_level = std::env::var("REAPER_TEST_OPERATOR_LOG")
            .unwrap_or_else(|_| "info,kube=warn".to_string());
        let mut cmd = cp.command(control_plane::reaper_controller_bin());
        cmd.env("KUBECONFIG", identity)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("POD_NAME", name)
            .args(["--log-level", &log_level, "operator"])
            .args(["--namespace", namespace, "--batch-window", "200ms"])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap());
        let child = ChildGuard::spawn(&mut cmd).expect("spawning reaper-controller operator");
        Self {
            child,
            log,
            admin,
            name: name.to_string(),
        }
    }

    fn logs(&self) -> String {
        format!(
            "--- operator {} log ---\n{}",
            self.name,
            std::fs::read_to_string(self.log.path()).unwrap_or_default()
        )
    }

    async fn metrics(&self) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin);
        reqwest::get(url).await.ok()?.text().await.ok()
    }

    async fn ready(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin);
        reqwest::get(url).await.is_ok_and(|r| r.status() == 200)
    }

    /// SIGTERM, then the exit status (killed after 15 s).
    async fn terminate(&mut self) -> std::process::ExitStatus {
        support::process::signal(self.child.0.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "operator did not stop on SIGTERM\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// No line of its log reports a refused API call or a failed reconcile.
    fn assert_clean_log(&self) {
        let logs = self.logs();
        let lower = logs.to_lowercase();
        for bad in [
            "forbidden",
            "reconcile failed",
            "failed; retrying",
            "panicked",
        ] {
            assert!(!lower.contains(bad), "{bad:?} in the log\n{logs}");
        }
    }
}

/// The operator's minimal permissions, exactly as docs/security.md's RBAC table lists them, bound to
/// ServiceAccount `reaper-operator` in `home`; returns a kubeconfig with its token. With
/// `webhook_config`, the certificate rules (that MWC by name, Secrets in `home`) are included.
async fn operator_identity(
    cp: &ControlPlane,
    admin: &Client,
    home: &str,
    webhook_config: Option<&str>,
) -> PathBuf {
    let sa = "reaper-operator";
    create::<k8s_openapi::api::core::v1::ServiceAccount>(
        &Api::namespaced(admin.clone(), home),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": home}}),
    )
    .await;
    let mut cluster_rules = vec![
        json!({"apiGroups": ["reaper.dev"], "resources": ["reaperpolicies"], "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": ["reaper.dev"], "resources": ["reaperpolicies/status"], "verbs": ["patch"]}),
        json!({"apiGroups": ["reaper.dev"], "resources": ["zombiereports"], "verbs": ["list", "watch"]}),
        json!({"apiGroups": [""], "resources": ["namespaces", "pods"], "verbs": ["list", "watch"]}),
        json!({"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list", "watch"]}),
        json!({"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"], "verbs": ["get", "patch"]}),
        json!({"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}),
        json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}),
        json!({"apiGroups": ["openreports.io"], "resources": ["reports"], "verbs": ["create", "patch", "get", "list", "delete"]}),
        json!({"apiGroups": ["wgpolicyk8s.io"], "resources": ["policyreports"], "verbs": ["create", "patch", "get", "list", "delete"]}),
        json!({"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch"]}),
    ];
    let mut ns_rules = vec![json!({
        "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
        "verbs": ["get", "create", "patch"]
    })];
    if let Some(mwc) = webhook_config {
        cluster_rules.push(json!({
            "apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [mwc], "verbs": ["get", "list", "watch", "patch"]
        }));
        ns_rules.push(json!({
            "apiGroups": [""], "resources": ["secrets"],
            "verbs": ["get", "list", "watch", "create", "update"]
        }));
    }
    let role = unique_name("reaper-operator");
    let subjects = json!([{"kind": "ServiceAccount", "name": sa, "namespace": home}]);
    create::<ClusterRole>(
        &Api::all(admin.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": role}, "rules": cluster_rules}),
    )
    .await;
    create::<ClusterRoleBinding>(
        &Api::all(admin.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": role},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
               "subjects": subjects}),
    )
    .await;
    create::<Role>(
        &Api::namespaced(admin.clone(), home),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "reaper-operator", "namespace": home}, "rules": ns_rules}),
    )
    .await;
    create::<RoleBinding>(
        &Api::namespaced(admin.clone(), home),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "reaper-operator", "namespace": home},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reaper-operator"},
               "subjects": subjects}),
    )
    .await;
    let token = cp
        .service_account_token(admin, home, sa, Duration::from_secs(3600))
        .await;
    cp.write_token_kubeconfig(sa, &token)
}

/// Polls `probe` until it returns `Some`, failing with `what` and `context()` after [`API_WAIT`].
async fn eventually<T>(
    what: &str,
    context: impl Fn() -> String,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + API_WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {API_WAIT:?}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create<K>(api: &Api<K>, value: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).unwrap();
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating {}: {e}", obj.name_any()))
}

/// A namespace opted in to Reaper and tagged for this test's policies; returns (namespace, tag).
async fn app_namespace(cp: &ControlPlane, admin: &Client, prefix: &str) -> (String, String) {
    let tag = unique_name(prefix);
    let ns = cp
        .ns_with_labels(
            admin,
            prefix,
            &[
                (keys::LABEL_INJECT, keys::INJECT_ENABLED),
                (TEST_LABEL, tag.as_str()),
            ],
        )
        .await;
    (ns, tag)
}

/// A ReaperPolicy for the namespaces labelled `tag` and pods matching `pod_selector`.
async fn policy(
    admin: &Client,
    name: &str,
    tag: &str,
    priority: i32,
    pod_selector: Value,
    zombies: Value,
) {
    create::<ReaperPolicy>(
        &Api::all(admin.clone()),
        json!({
            "apiVersion": "reaper.dev/v1alpha1", "kind": "ReaperPolicy",
            "metadata": {"name": name},
            "spec": {
                "priority": priority,
                "namespaceSelector": {"matchLabels": {TEST_LABEL: tag}},
                "podSelector": pod_selector,
                "zombies": zombies,
            }
        }),
    )
    .await;
}

fn pod_json(
    ns: &str,
    name: &str,
    labels: Value,
    annotations: Value,
    owner: Option<Value>,
) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
    });
    if let Some(o) = owner {
        pod["metadata"]["ownerReferences"] = json!([o]);
    }
    pod
}

fn status_of(p: &ReaperPolicy) -> Value {
    serde_json::to_value(p.status.clone().unwrap_or_default()).unwrap()
}

fn ready_condition(status: &Value) -> (String, String) {
    let c = &status["conditions"][0];
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// Waits until policy `name`'s status satisfies `pred`; returns the policy.
async fn wait_policy(
    admin: &Client,
    name: &str,
    what: &str,
    context: impl Fn() -> String,
    pred: impl Fn(&Value) -> bool,
) -> ReaperPolicy {
    let api: Api<ReaperPolicy> = Api::all(admin.clone());
    let last = std::sync::Mutex::new(Value::Null);
    eventually(
        what,
        || {
            format!(
                "last status of {name}: {:#}\n{}",
                last.lock().unwrap(),
                context()
            )
        },
        async || {
            let p = api.get(name).await.ok()?;
            let s = status_of(&p);
            let ok = pred(&s);
            *last.lock().unwrap() = s;
            ok.then_some(p)
        },
    )
    .await
}

async fn holder_of(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(keys::LEASE_OPERATOR)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

async fn events_with_reason(admin: &Client, ns: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(admin.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("listing events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_failover_within_the_lease_duration() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let admin = cp.client().await;
    cp.install_crds(&admin).await;
    let ns = cp.ns(&admin, "op-lease").await;
    const LEASE: Duration = Duration::from_secs(4);
    let lease_args = ["--lease-duration", "4s", "--lease-grace", "2s"];
    let identity = operator_identity(cp, &admin, &ns, None).await;
    let mut ops = [
        Operator::spawn(cp, &identity, "op-a", &ns, &lease_args),
        Operator::spawn(cp, &identity, "op-b", &ns, &lease_args),
    ];
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &ns);
    let both_logs = |ops: &[Operator; 2]| format!("{}\n{}", ops[0].logs(), ops[1].logs());
    let holder = eventually(
        "a Lease holder",
        || both_logs(&ops),
        async || holder_of(&leases).await,
    )
    .await;
    // Identities are `<POD_NAME>_<random>`.
    let leader = ops
        .iter()
        .position(|o| holder.starts_with(&format!("{}_", o.name)))
        .unwrap_or_else(|| panic!("holder {holder} is neither operator"));
    let follower = 1 - leader;
    eventually(
        "leader gauge 1 on the leader, 0 on the other, both ready",
        || both_logs(&ops),
        async || {
            let l = ops[leader].metrics().await?;
            let f = ops[follower].metrics().await?;
            (l.contains("reaper_operator_leader 1")
                && f.contains("reaper_operator_leader 0")
                && ops[leader].ready().await
                && ops[follower].ready().await)
                .then_some(())
        },
    )
    .await;
    // The leader renews: still the holder after more than a lease duration.
    tokio::time::sleep(LEASE + Duration::from_secs(2)).await;
    assert_eq!(
        holder_of(&leases).await.as_deref(),
        Some(holder.as_str()),
        "{}",
        both_logs(&ops)
    );

    // The follower stayed idle: it never started the policy controller.
    assert!(
        !ops[follower]
            .logs()
            .contains("starting the policy controller"),
        "follower reconciled\n{}",
        both_logs(&ops)
    );
    assert!(
        ops[leader]
            .logs()
            .contains("starting the policy controller")
    );

    // SIGKILL (no release): the other takes over once the Lease expires.
    let killed = Instant::now();
    ops[leader].child.0.kill().unwrap();
    ops[leader].child.0.wait().unwrap();
    let prefix = format!("{}_", ops[follower].name);
    let new_holder = eventually(
        "takeover by the follower",
        || both_logs(&ops),
        async || holder_of(&leases).await.filter(|h| h.starts_with(&prefix)),
    )
    .await;
    let took = killed.elapsed();
    eprintln!("takeover {took:?} after the leader was killed (lease 4 s)");
    // The Lease expires at most one lease duration after the leader's last renewal (before the
    // kill); kube-lease-manager then clears it and waits a random 0.1-1 s before taking it (so
    // followers do not collide); plus this test's polling and a loaded machine's slack.
    assert!(
        took <= LEASE + Duration::from_secs(3),
        "takeover took {took:?}"
    );
    eventually(
        "new leader's gauge",
        || both_logs(&ops),
        async || {
            ops[follower]
                .metrics()
                .await?
                .contains("reaper_operator_leader 1")
                .then_some(())
        },
    )
    .await;

    // A clean shutdown releases the Lease at once, so a successor need not wait it out.
    let status = ops[follower].terminate().await;
    assert!(
        status.success(),
        "exit {status:?}\n{}",
        ops[follower].logs()
    );
    let lease = leases.get(keys::LEASE_OPERATOR).await.unwrap();
    let after = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert_ne!(
        after,
        new_holder,
        "Lease not released\n{}",
        ops[follower].logs()
    );
    ops[follower].assert_clean_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_status_counts_conditions_and_observed_generation() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let admin = cp.client().await;
    cp.install_crds(&admin).await;
    let (ns, tag) = app_namespace(cp, &admin, "op-status").await;
    let home = cp.ns(&admin, "op-home").await;
    let (web, api_a, api_b, broken) = (
        format!("{tag}-web"),
        format!("{tag}-api-a"),
        format!("{tag}-api-b"),
        format!("{tag}-broken"),
    );
    let zombies = json!({"threshold": 3, "action": "Event", "cooldown": "1h"});
    policy(
        &admin,
        &web,
        &tag,
        10,
        json!({"matchLabels": {"app": "web"}}),
        zombies.clone(),
    )
    .await;
    policy(
        &admin,
        &api_a,
        &tag,
        5,
        json!({"matchLabels": {"app": "api"}}),
        zombies.clone(),
    )
    .await;
    policy(
        &admin,
        &api_b,
        &tag,
        5,
        json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["api"]}]}),
        zombies.clone(),
    )
    .await;
    policy(
        &admin,
        &broken,
        &tag,
        1,
        json!({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}),
        zombies,
    )
    .await;

    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    // As the webhook leaves them: `share` protects, `skipped:...` does not.
    create(
        &pods,
        pod_json(
            &ns,
            "web-1",
            json!({"app": "web"}),
            json!({keys::ANNOTATION_INJECTED: "share"}),
            None,
        ),
    )
    .await;
    create(
        &pods,
        pod_json(
            &ns,
            "web-2",
            json!({"app": "web"}),
            json!({keys::ANNOTATION_INJECTED: "skipped:no-command"}),
            None,
        ),
    )
    .await;
    create(
        &pods,
        pod_json(&ns, "api-1", json!({"app": "api"}), json!({}), None),
    )
    .await;
    create(
        &pods,
        pod_json(&ns, "other-1", json!({"app": "other"}), json!({}), None),
    )
    .await;

    let identity = operator_identity(cp, &admin, &home, None).await;
    let op = Operator::spawn(
        cp,
        &identity,
        "op-status",
        &home,
        &["--leader-election=false"],
    );
    let logs = || op.logs();
    let p = wait_policy(&admin, &web, "web status", logs, |s| {
        s["matchedPods"] == 2 && s["protectedPods"] == 1
    })
    .await;
    let s = status_of(&p);
    assert_eq!(s["observedGeneration"], 1);
    assert_eq!(s["matchedNamespaces"], 1);
    assert_eq!(s["unprotectedPods"], 1);
    assert_eq!(s["zombies"], 0);
    assert!(s["lastUpdated"].is_string(), "{s:#}");
    assert_eq!(
        ready_condition(&s),
        ("True".into(), "Reconciled".into()),
        "{s:#}"
    );
    assert_eq!(s["conditions"][0]["observedGeneration"], 1);

    // Equal priority over the same pod: Conflicting on both, the pod counted once (name order).
    for (name, matched) in [(&api_a, 1), (&api_b, 0)] {
        let p = wait_policy(&admin, name, "Conflicting", logs, |s| {
            ready_condition(s).1 == "Conflicting"
        })
        .await;
        let s = status_of(&p);
        assert_eq!(s["conditions"][0]["status"], "False");
        assert_eq!(s["matchedPods"], matched, "{name}: {s:#}");
        let msg = s["conditions"][0]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("{ns}/api-1")), "{msg}");
    }
    let p = wait_policy(&admin, &broken, "InvalidSelector", logs, |s| {
        ready_condition(s).1 == "InvalidSelector"
    })
    .await;
    assert_eq!(status_of(&p)["matchedPods"], 0);

    // A spec change: observedGeneration follows.
    Api::<ReaperPolicy>::all(admin.clone())
        .patch(
            &web,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"zombies": {"threshold": 7}}})),
        )
        .await
        .unwrap();
    wait_policy(&admin, &web, "observedGeneration 2", logs, |s| {
        s["observedGeneration"] == 2 && s["conditions"][0]["observedGeneration"] == 2
    })
    .await;

    // Pod changes re-trigger the reconcile (watches, no polling).
    create(
        &pods,
        pod_json(
            &ns,
            "web-3",
            json!({"app": "web"}),
            json!({keys::ANNOTATION_INJECTED: "inject:app"}),
            None,
        ),
    )
    .await;
    pods.patch(
        "web-2",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {keys::ANNOTATION_INJECTED: "share"}}})),
    )
    .await
    .unwrap();
    wait_policy(&admin, &web, "3 protected pods", logs, |s| {
        s["matchedPods"] == 3 && s["protectedPods"] == 3 && s["unprotectedPods"] == 0
    })
    .await;
    eventually("policy gauges", logs, async || {
        let m = op.metrics().await?;
        (m.contains(&format!(
            "reaper_policy_pods{{policy=\"{web}\",state=\"protected\"}} 3"
        )) && m.contains(&format!(
            "reaper_policy_pods{{policy=\"{web}\",state=\"unprotected\"}} 0"
        )) && m.contains(&format!("reaper_policy_zombies{{policy=\"{web}\"}} 0"))
            && m.contains("reaper_operator_reconcile_total{result=\"ok\"}")
            && m.contains("reaper_operator_reconcile_duration_seconds_count"))
        .then_some(())
    })
    .await;

    // Pod opt-in (on by default): in a namespace that says nothing, the pod labelled
    // reaper.dev/inject=enabled is governed and counted with its namespace; its neighbour is not.
    let plain = cp
        .ns_with_labels(&admin, "op-status-plain", &[(TEST_LABEL, tag.as_str())])
        .await;
    let plain_pods: Api<Pod> = Api::namespaced(admin.clone(), &plain);
    create(
        &plain_pods,
        pod_json(
            &plain,
            "joined",
            json!({"app": "web", keys::LABEL_INJECT: keys::INJECT_ENABLED}),
            json!({keys::ANNOTATION_INJECTED: "share"}),
            None,
        ),
    )
    .await;
    create(
        &plain_pods,
        pod_json(&plain, "bystander", json!({"app": "web"}), json!({}), None),
    )
    .await;
    let p = wait_policy(&admin, &web, "the opted-in pod counted", logs, |s| {
        s["matchedPods"] == 4 && s["protectedPods"] == 4 && s["matchedNamespaces"] == 2
    })
    .await;
    let message = status_of(&p)["conditions"][0]["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .starts_with("governs 4 pods in 2 governed namespaces"),
        "{message}"
    );

    // A change that alters no status: reconciled, but nothing written.
    let rv = p.resource_version();
    create(
        &pods,
        pod_json(&ns, "other-2", json!({"app": "other"}), json!({}), None),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = Api::<ReaperPolicy>::all(admin.clone())
        .get(&web)
        .await
        .unwrap();
    assert_eq!(
        again.resource_version(),
        rv,
        "status rewritten without a change\n{}",
        op.logs()
    );
    op.assert_clean_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reports_become_status_and_one_zombies_detected_event() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let admin = cp.client().await;
    cp.install_crds(&admin).await;
    let (ns, tag) = app_namespace(cp, &admin, "op-zombies").await;
    let home = cp.ns(&admin, "op-home").await;
    let name = format!("{tag}-zombies");
    policy(
        &admin,
        &name,
        &tag,
        0,
        json!({}),
        json!({"threshold": 2, "action": "Event", "cooldown": "1h"}),
    )
    .await;

    let node_name = unique_name("op-node");
    create::<Node>(
        &Api::all(admin.clone()),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let mut pod = pod_json(&ns, "web-0", json!({"app": "web"}), json!({}), None);
    pod["spec"]["nodeName"] = json!(node_name);
    let pod: Pod = create(&pods, pod).await;
    let (_, cid, _) = agent_common::ids();
    let status = json!({"status": {
        "phase": "Running",
        "containerStatuses": [{
            "name": "app", "containerID": format!("containerd://{cid}"),
            "image": "registry.example/app:1", "imageID": "", "ready": true,
            "restartCount": 0, "started": true, "state": {"running": {}}
        }]
    }});
    pods.patch_status("web-0", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let uid = pod.uid().unwrap();
    let zombies =
        tokio::task::spawn_blocking(move || agent_common::v1_pod_with(&uid, &cid, 3, 100))
            .await
            .unwrap();

    let agent_log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = cp.command(control_plane::reaper_controller_bin());
    cmd.env_remove("KUBERNETES_SERVICE_HOST")
        .args([
            "agent",
            "--node-name",
            &node_name,
            "--interval",
            "300ms",
            "--heartbeat",
            "1h",
        ])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(agent_log.reopen().unwrap());
    let _agent = ChildGuard::spawn(&mut cmd).unwrap();
    let identity = operator_identity(cp, &admin, &home, None).await;
    let op = Operator::spawn(
        cp,
        &identity,
        "op-zombies",
        &home,
        &["--leader-election=false", "--event-interval", "1h"],
    );
    let logs = || {
        format!(
            "{}\n--- agent log ---\n{}",
            op.logs(),
            std::fs::read_to_string(agent_log.path()).unwrap_or_default()
        )
    };

    let p = wait_policy(&admin, &name, "3 zombies in status", logs, |s| {
        s["zombies"] == 3
    })
    .await;
    let s = status_of(&p);
    let top = &s["topOffenders"][0];
    assert_eq!(top["namespace"], ns.as_str(), "{s:#}");
    assert_eq!(top["pod"], "web-0");
    assert_eq!(top["container"], "app");
    assert_eq!(top["count"], 3);
    assert_eq!(top["parentComm"], agent_common::PARENT_COMM);
    assert_eq!(
        (s["matchedPods"].clone(), s["unprotectedPods"].clone()),
        (json!(1), json!(1))
    );

    let event = eventually("a ZombiesDetected Event", logs, async || {
        events_with_reason(&admin, &ns, keys::REASON_ZOMBIES_DETECTED)
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.reporting_controller.as_deref(),
        Some(keys::EVENT_REPORTER_OPERATOR)
    );
    let regarding = event.regarding.clone().unwrap();
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("Pod"), Some("web-0"))
    );
    let note = event.note.clone().unwrap_or_default();
    assert!(
        note.starts_with(&format!("3 zombie processes (threshold 2, policy {name})")),
        "{note}"
    );
    assert!(note.contains(agent_common::PARENT_COMM), "{note}");
    eventually("zombie gauge", logs, async || {
        op.metrics()
            .await?
            .contains(&format!("reaper_policy_zombies{{policy=\"{name}\"}} 3"))
            .then_some(())
    })
    .await;

    // More reconciles within the interval (pod updates): still one Event, no series.
    for i in 0..3 {
        pods.patch(
            "web-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touch": i.to_string()}}})),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = events_with_reason(&admin, &ns, keys::REASON_ZOMBIES_DETECTED).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert!(events[0].series.is_none(), "{events:#?}");

    // The zombies are reaped (their parent dies): the status goes back to zero.
    let agent_common::V1Pod {
        parent,
        tree: _tree,
        ..
    } = zombies;
    drop(parent);
    let p = wait_policy(&admin, &name, "zombies gone", logs, |s| s["zombies"] == 0).await;
    assert!(
        status_of(&p)["topOffenders"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{:#}",
        status_of(&p)
    );
    op.assert_clean_log();
}

/// A Deployment (its template's `restartedAt` optional), its ReplicaSet and one pod, as the
/// controllers would leave them (no controller manager runs here); returns the pod's uid.
async fn workload(
    admin: &Client,
    ns: &str,
    name: &str,
    restarted_at: Option<&str>,
    injected: Option<&str>,
) -> String {
    let labels = json!({"app": name});
    let template_annotations = match restarted_at {
        Some(at) => json!({keys::ANNOTATION_RESTARTED_AT: at}),
        None => json!({}),
    };
    let template = json!({
        "metadata": {"labels": labels, "annotations": template_annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
    });
    let deploy: Deployment = create(
        &Api::namespaced(admin.clone(), ns),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template}
        }),
    )
    .await;
    let rs: ReplicaSet = create(
        &Api::namespaced(admin.clone(), ns),
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": format!("{name}-5d8f"), "namespace": ns, "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                "uid": deploy.uid().unwrap(), "controller": true
            }]},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template}
        }),
    )
    .await;
    let annotations = match injected {
        Some(v) => json!({keys::ANNOTATION_INJECTED: v}),
        None => json!({}),
    };
    let owner = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs.name_any(),
        "uid": rs.uid().unwrap(), "controller": true
    });
    let pod: Pod = create(
        &Api::namespaced(admin.clone(), ns),
        pod_json(
            ns,
            &format!("{name}-5d8f-x1"),
            labels,
            annotations,
            Some(owner),
        ),
    )
    .await;
    pod.uid().unwrap()
}

fn restarted_at(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(keys::ANNOTATION_RESTARTED_AT)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_patches_the_deployment_template_once_per_cooldown() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let admin = cp.client().await;
    cp.install_crds(&admin).await;
    let (ns, tag) = app_namespace(cp, &admin, "op-restart").await;
    let home = cp.ns(&admin, "op-home").await;
    let name = format!("{tag}-restart");
    policy(
        &admin,
        &name,
        &tag,
        0,
        json!({}),
        json!({"threshold": 2, "action": "Restart", "cooldown": "1h"}),
    )
    .await;

    let now = jiff::Timestamp::now();
    let two_hours_ago = (now - jiff::SignedDuration::from_hours(2))
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string();
    let ten_minutes_ago = (now - jiff::SignedDuration::from_mins(10))
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string();
    // `stale`: restarted 2 h ago (cooldown over); `recent`: 10 min ago; `guarded`: protected pod.
    let stale = workload(&admin, &ns, "stale", Some(&two_hours_ago), None).await;
    let recent = workload(&admin, &ns, "recent", Some(&ten_minutes_ago), None).await;
    let guarded = workload(&admin, &ns, "guarded", None, Some("share")).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let bare: Pod = create(
        &pods,
        pod_json(&ns, "bare", json!({"app": "bare"}), json!({}), None),
    )
    .await;
    let bare = bare.uid().unwrap();

    // A report as the agent writes it (the agent itself is exercised in the test above).
    let report_name = unique_name("op-restart-node");
    let report = |count: u32| {
        let containers: Vec<Value> = [&stale, &recent, &guarded, &bare]
            .iter()
            .enumerate()
            .map(|(i, uid)| {
                json!({
                    "podUid": uid, "containerId": format!("{:064x}", i + 1),
                    "container": "app", "count": count
                })
            })
            .collect();
        json!({
            "apiVersion": "reaper.dev/v1alpha1", "kind": "ZombieReport",
            "metadata": {"name": report_name},
            "spec": {"nodeName": report_name, "zombies": count * 4, "containers": containers}
        })
    };
    let reports: Api<ZombieReport> = Api::all(admin.clone());
    create(&reports, report(3)).await;

    let identity = operator_identity(cp, &admin, &home, None).await;
    let op = Operator::spawn(
        cp,
        &identity,
        "op-restart",
        &home,
        &["--leader-election=false", "--restart-workloads"],
    );
    let logs = || op.logs();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let first = eventually("stale restarted", logs, async || {
        restarted_at(&deployments.get("stale").await.ok()?).filter(|at| *at != two_hours_ago)
    })
    .await;
    let at: jiff::Timestamp = first.parse().expect("restartedAt is RFC 3339");
    assert!(
        at >= now.round(jiff::Unit::Second).unwrap() - jiff::SignedDuration::from_secs(1),
        "{first}"
    );
    let event = eventually("a ZombieRestart Event", logs, async || {
        events_with_reason(&admin, &ns, keys::REASON_ZOMBIE_RESTART)
            .await
            .into_iter()
            .next()
    })
    .await;
    let regarding = event.regarding.clone().unwrap();
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("Deployment"), Some("stale"))
    );
    // Every pod over the threshold still gets its ZombiesDetected Event.
    eventually("4 ZombiesDetected Events", logs, async || {
        (events_with_reason(&admin, &ns, keys::REASON_ZOMBIES_DETECTED)
            .await
            .len()
            == 4)
            .then_some(())
    })
    .await;

    // More reconciles (the report changes): no second restart within the cooldown.
    let rv = reports.get(&report_name).await.unwrap().resource_version();
    let mut updated = report(5);
    updated["metadata"]["resourceVersion"] = json!(rv);
    reports
        .replace(
            &report_name,
            &PostParams::default(),
            &serde_json::from_value(updated).unwrap(),
        )
        .await
        .unwrap();
    wait_policy(&admin, &name, "20 zombies", logs, |s| s["zombies"] == 20).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = deployments.get("stale").await.unwrap();
    assert_eq!(
        restarted_at(&d).as_deref(),
        Some(first.as_str()),
        "restarted twice\n{}",
        op.logs()
    );
    assert_eq!(d.metadata.generation, Some(2), "one template change");
    assert_eq!(
        restarted_at(&deployments.get("recent").await.unwrap()).as_deref(),
        Some(ten_minutes_ago.as_str()),
        "restarted within the cooldown"
    );
    assert_eq!(
        restarted_at(&deployments.get("guarded").await.unwrap()),
        None,
        "protected pod's workload restarted"
    );
    let restarts = events_with_reason(&admin, &ns, keys::REASON_ZOMBIE_RESTART).await;
    assert_eq!(restarts.len(), 1, "{restarts:#?}");
    let m = op.metrics().await.unwrap();
    assert!(m.contains("reaper_operator_restarts_total 1"), "{m}");
    op.assert_clean_log();
}

/// The restart's Events about Deployment `name`.
async fn restart_events_of(admin: &Client, ns: &str, name: &str) -> Vec<Event> {
    events_with_reason(admin, ns, keys::REASON_ZOMBIE_RESTART)
        .await
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// Two operators; the leader is SIGKILLed as soon as it starts restarting a workload (`live`),
/// and a second workload (`crashed`) carries what a leader leaves when it dies between the
/// restart's Event and its patch (the Event, no `restartedAt`). The survivor takes over: each
/// workload is rolled out exactly once and has exactly one `ZombieRestart` Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_restart_neither_loses_nor_doubles_a_restart_or_its_event() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let admin = cp.client().await;
    cp.install_crds(&admin).await;
    let (ns, tag) = app_namespace(cp, &admin, "op-failover").await;
    let home = cp.ns(&admin, "op-failover-home").await;
    let name = format!("{tag}-failover");
    policy(
        &admin,
        &name,
        &tag,
        0,
        json!({}),
        json!({"threshold": 2, "action": "Restart", "cooldown": "1h"}),
    )
    .await;
    let crashed = workload(&admin, &ns, "crashed", None, None).await;
    let live = workload(&admin, &ns, "live", None, None).await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let crashed_uid = deployments.get("crashed").await.unwrap().uid().unwrap();
    let micro_now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    create::<Event>(
        &Api::namespaced(admin.clone(), &ns),
        json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "crashed.by-a-dead-leader", "namespace": ns},
            "eventTime": micro_now, "type": "Warning",
            "reason": keys::REASON_ZOMBIE_RESTART, "action": "Restart",
            "reportingController": keys::EVENT_REPORTER_OPERATOR, "reportingInstance": "op-dead",
            "note": "rolling out because pod ... (recorded by a leader that died before patching)",
            "regarding": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "crashed",
                          "namespace": ns, "uid": crashed_uid}
        }),
    )
    .await;
    let report_name = unique_name("op-failover-node");
    let report = |count: u32| {
        json!({
            "apiVersion": "reaper.dev/v1alpha1", "kind": "ZombieReport",
            "metadata": {"name": report_name},
            "spec": {"nodeName": report_name, "zombies": count * 2, "containers": [
                {"podUid": crashed, "containerId": format!("{:064x}", 1), "container": "app", "count": count},
                {"podUid": live, "containerId": format!("{:064x}", 2), "container": "app", "count": count}
            ]}
        })
    };
    let reports: Api<ZombieReport> = Api::all(admin.clone());
    create(&reports, report(3)).await;

    let identity = operator_identity(cp, &admin, &home, None).await;
    let args = [
        "--lease-duration",
        "4s",
        "--lease-grace",
        "2s",
        "--restart-workloads",
    ];
    let mut ops = [
        Operator::spawn(cp, &identity, "op-fo-a", &home, &args),
        Operator::spawn(cp, &identity, "op-fo-b", &home, &args),
    ];
    let both_logs = |ops: &[Operator; 2]| format!("{}\n{}", ops[0].logs(), ops[1].logs());
    // The moment the leader has begun restarting `live` (its Event comes first, the patch a
    // moment later), kill it: the kill lands between the two or just after.
    eventually(
        "the leader starting to restart `live`",
        || both_logs(&ops),
        async || {
            let begun = !restart_events_of(&admin, &ns, "live").await.is_empty()
                || restarted_at(&deployments.get("live").await.ok()?).is_some();
            begun.then_some(())
        },
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &home);
    let holder = holder_of(&leases).await.expect("a leader");
    let leader = ops
        .iter()
        .position(|o| holder.starts_with(&format!("{}_", o.name)))
        .unwrap_or_else(|| panic!("holder {holder} is neither operator"));
    ops[leader].child.0.kill().unwrap();
    ops[leader].child.0.wait().unwrap();
    let survivor = 1 - leader;
    let prefix = format!("{}_", ops[survivor].name);
    eventually(
        "takeover",
        || both_logs(&ops),
        async || holder_of(&leases).await.filter(|h| h.starts_with(&prefix)),
    )
    .await;
    // The survivor reconciles (a report change it must see in the status), then has its chance
    // to restart anything again.
    let rv = reports.get(&report_name).await.unwrap().resource_version();
    let mut updated = report(4);
    updated["metadata"]["resourceVersion"] = json!(rv);
    reports
        .replace(
            &report_name,
            &PostParams::default(),
            &serde_json::from_value(updated).unwrap(),
        )
        .await
        .unwrap();
    wait_policy(
        &admin,
        &name,
        "the survivor's status",
        || both_logs(&ops),
        |s| s["zombies"] == 8,
    )
    .await;
    for workload in ["crashed", "live"] {
        eventually(
            &format!("{workload} restarted"),
            || both_logs(&ops),
            async || restarted_at(&deployments.get(workload).await.ok()?),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for workload in ["crashed", "live"] {
        let d = deployments.get(workload).await.unwrap();
        assert_eq!(
            d.metadata.generation,
            Some(2),
            "{workload}: rolled out more than once\n{}",
            both_logs(&ops)
        );
        let events = restart_events_of(&admin, &ns, workload).await;
        assert_eq!(
            events.len(),
            1,
            "{workload}: {events:#?}\n{}",
            both_logs(&ops)
        );
    }
    assert_eq!(
        restart_events_of(&admin, &ns, "crashed").await[0].name_any(),
        "crashed.by-a-dead-leader",
        "the dead leader's Event was repeated"
    );
    ops[survivor].assert_clean_log();
}

/// A StatefulSet or DaemonSet owning one pod directly (no ReplicaSet in between); the pod's UID.
async fn direct_workload(admin: &Client, ns: &str, kind: &str, name: &str) -> String {
    let labels = json!({"app": name});
    let template = json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
    });
    let mut spec = json!({"selector": {"matchLabels": labels}, "template": template});
    if kind == "StatefulSet" {
        spec["serviceName"] = json!(name);
    }
    let object = json!({
        "apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    });
    let uid = match kind {
        "StatefulSet" => create::<StatefulSet>(&Api::namespaced(admin.clone(), ns), object)
            .await
            .uid(),
        _ => create::<DaemonSet>(&Api::namespaced(admin.clone(), ns), object)
            .await
            .uid(),
    };
    let owner = json!({
        "apiVersion": "apps/v1", "kind": kind, "name": name,
        "uid": uid.unwrap(), "controller": true
    });
    let pod: Pod = create(
        &Api::namespaced(admin.clone(), ns),
        pod_json(ns, &format!("{name}-0"), labels, json!({}), Some(owner)),
    )
    .await;
    pod.uid().unwrap()
}

/// The template annotation of a StatefulSet or DaemonSet, as `kubectl rollout restart` sets it.
async fn template_restarted_at(admin: &Client, ns: &str, kind: &str, name: &str) -> Option<String> {
    let template = match kind {
        "StatefulSet" => {
            Api::<StatefulSet>::namespaced(admin.clone(), ns)
                .get(name)
                .await
                .ok()?
                .spec?
                .template
        }
        _ => {
            Api::<DaemonSet>::namespaced(admin.clone(), ns)
                .get(name)
                .await
                .ok()?
                .spec?
                .template
        }
    };
    template
        .metadata?
        .annotations?
        .get(keys::ANNOTATION_RESTARTED_AT)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_also_rolls_statefulsets_and_daemonsets() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let admin = cp.client().await;
    cp.install_crds(&admin).await;
    let (ns, tag) = app_namespace(cp, &admin, "op-restart-kinds").await;
    let home = cp.ns(&admin, "op-home").await;
    let name = format!("{tag}-restart-kinds");
    policy(
        &admin,
        &name,
        &tag,
        0,
        json!({}),
        json!({"threshold": 1, "action": "Restart"}),
    )
    .await;
    let sts = direct_workload(&admin, &ns, "StatefulSet", "db").await;
    let ds = direct_workload(&admin, &ns, "DaemonSet", "node-agent").await;
    let report_name = unique_name("op-restart-kinds-node");
    let containers: Vec<Value> = [&sts, &ds]
        .iter()
        .enumerate()
        .map(|(i, uid)| {
            json!({"podUid": uid, "containerId": format!("{:064x}", i + 11),
                   "container": "app", "count": 2})
        })
        .collect();
    let reports: Api<ZombieReport> = Api::all(admin.clone());
    create(
        &reports,
        json!({
            "apiVersion": "reaper.dev/v1alpha1", "kind": "ZombieReport",
            "metadata": {"name": report_name},
            "spec": {"nodeName": report_name, "zombies": 4, "containers": containers}
        }),
    )
    .await;

    let identity = operator_identity(cp, &admin, &home, None).await;
    let op = Operator::spawn(
        cp,
        &identity,
        "op-restart-kinds",
        &home,
        &["--leader-election=false", "--restart-workloads"],
    );
    let logs = || op.logs();
    for (kind, workload) in [("StatefulSet", "db"), ("DaemonSet", "node-agent")] {
        let at = eventually(&format!("{kind} {workload} restarted"), logs, async || {
            template_restarted_at(&admin, &ns, kind, workload).await
        })
        .await;
        at.parse::<jiff::Timestamp>()
            .unwrap_or_else(|e| panic!("{kind} restartedAt {at:?} is not RFC 3339: {e}"));
    }
    let kinds = eventually("two ZombieRestart Events", logs, async || {
        let mut kinds: Vec<String> = events_with_reason(&admin, &ns, keys::REASON_ZOMBIE_RESTART)
            .await
            .iter()
            .filter_map(|e| e.regarding.as_ref()?.kind.clone())
            .collect();
        kinds.sort();
        (kinds.len() == 2).then_some(kinds)
    })
    .await;
    assert_eq!(kinds, ["DaemonSet", "StatefulSet"]);
    op.assert_clean_log();
}

fn secret_text(s: &Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

/// The MWC's bundles, one per webhook (empty when unset).
async fn ca_bundles(api: &Api<MutatingWebhookConfiguration>, name: &str) -> Vec<String> {
    api.get(name)
        .await
        .unwrap()
        .webhooks
        .unwrap_or_default()
        .iter()
        .map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_managed_certificates_rotate_without_failed_handshakes() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let admin = cp.client().await;
    cp.install_crds(&admin).await;
    let home = cp.ns(&admin, "op-certs").await;
    let mwc_name = unique_name("reaper-op-certs");
    let never = json!({"matchLabels": {TEST_LABEL: "never"}});
    let hook = |name: &str| {
        json!({
            "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore", "timeoutSeconds": 2, "namespaceSelector": never,
            "clientConfig": {"url": "https://127.0.0.1:1/mutate"},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
        })
    };
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    create(
        &mwcs,
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": mwc_name},
            "webhooks": [hook("pods.reaper.dev"), hook("pods-again.reaper.dev")]
        }),
    )
    .await;

    // Short lifetimes: CA 30 s (replaced with 20 s left), serving 12 s (renewed with 4 s left),
    // 3 s overlap. A whole CA rotation (add, switch, drop) happens within ~20 s.
    let secret_name = "reaper-webhook-tls";
    let identity = operator_identity(cp, &admin, &home, Some(&mwc_name)).await;
    let op = Operator::spawn(
        cp,
        &identity,
        "op-certs",
        &home,
        &[
            "--leader-election=false",
            "--cert-secret",
            secret_name,
            "--webhook-config",
            &mwc_name,
            "--webhook-service",
            "reaper-webhook",
            "--ca-validity",
            "30s",
            "--ca-renew-before",
            "20s",
            "--cert-validity",
            "12s",
            "--cert-renew-before",
            "4s",
            "--cert-overlap",
            "3s",
        ],
    );
    let logs = || op.logs();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &home);
    let secret = eventually("the serving Secret and both caBundles", logs, async || {
        let s = secrets.get_opt(secret_name).await.ok()??;
        let ca = secret_text(&s, "ca.crt");
        let bundles = ca_bundles(&mwcs, &mwc_name).await;
        (!ca.is_empty() && bundles.iter().all(|b| *b == ca)).then_some(s)
    })
    .await;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let (crt, key, ca) = (
        secret_text(&secret, "tls.crt"),
        secret_text(&secret, "tls.key"),
        secret_text(&secret, "ca.crt"),
    );
    assert!(key.contains("PRIVATE KEY"), "no key");
    assert!(
        reaper::operator::certs::issued_by(&crt, &ca),
        "serving cert not issued by the bundle's CA"
    );
    let first_ca = reaper::operator::certs::bundle_certs(&ca);
    assert_eq!(first_ca.len(), 1);

    // A webhook serving the Secret's files (copied like a kubelet volume update), and a client
    // that trusts exactly the MWC's current caBundle, as the API server does.
    let dir = tempfile::tempdir().unwrap();
    let write_files = |s: &Secret| {
        for k in ["tls.crt", "tls.key"] {
            let tmp = dir.path().join(format!(".{k}.tmp"));
            std::fs::write(&tmp, secret_text(s, k)).unwrap();
            std::fs::rename(&tmp, dir.path().join(k)).unwrap();
        }
    };
    write_files(&secret);
    let (port, wh_admin) = (free_port(), free_port());
    let wh_log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = cp.command(control_plane::reaper_controller_bin());
    cmd.env_remove("KUBERNETES_SERVICE_HOST")
        .env("POD_NAMESPACE", &home)
        .args([
            "webhook",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{wh_admin}"),
        ])
        .args(["--tls-cert", dir.path().join("tls.crt").to_str().unwrap()])
        .args(["--tls-key", dir.path().join("tls.key").to_str().unwrap()])
        .args(["--reaper-image", "registry.example/reaper:test"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(wh_log.reopen().unwrap());
    let _webhook = ChildGuard::spawn(&mut cmd).unwrap();
    let all_logs = || {
        format!(
            "{}\n--- webhook ---\n{}",
            op.logs(),
            std::fs::read_to_string(wh_log.path()).unwrap_or_default()
        )
    };
    eventually("webhook ready", all_logs, async || {
        reqwest::get(format!("http://127.0.0.1:{wh_admin}/readyz"))
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await;
    let host = format!("reaper-webhook.{home}.svc");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let started = Instant::now();
    let (mut ok, mut failures) = (0u32, Vec::new());
    let mut cas_seen = std::collections::BTreeSet::new();
    let mut bundle_sizes = Vec::new();
    let mut last_rv = secret.resource_version();
    // Until the first CA has been replaced and dropped (plus a serving renewal), ≤ 45 s.
    while started.elapsed() < Duration::from_secs(45) {
        // Mount-like: copy the Secret's files when it changed.
        if let Ok(s) = secrets.get(secret_name).await
            && s.resource_version() != last_rv
        {
            last_rv = s.resource_version();
            write_files(&s);
        }
        let bundle = ca_bundles(&mwcs, &mwc_name).await.remove(0);
        let cas = reaper::operator::certs::bundle_certs(&bundle);
        if bundle_sizes.last() != Some(&cas.len()) {
            bundle_sizes.push(cas.len());
        }
        cas_seen.extend(cas.iter().cloned());
        assert!(!cas.is_empty(), "caBundle emptied\n{}", all_logs());
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(cas[0].as_bytes()).unwrap());
        let client = cas[1..]
            .iter()
            .fold(client, |c, pem| {
                c.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            })
            .resolve(&host, addr)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        // Any HTTP answer means the handshake succeeded.
        match client
            .post(format!("https://{host}:{port}/mutate"))
            .body("{}")
            .send()
            .await
        {
            Ok(_) => ok += 1,
            Err(e) => failures.push(format!("{:?}: {e:?}", started.elapsed())),
        }
        if cas_seen.len() >= 2 && bundle_sizes.ends_with(&[2, 1]) && !cas.contains(&first_ca[0]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        failures.is_empty(),
        "{} failed handshakes of {}: {failures:#?}\n{}",
        failures.len(),
        ok + failures.len() as u32,
        all_logs()
    );
    assert!(
        cas_seen.len() >= 2,
        "no CA rotation within 45 s; bundle sizes {bundle_sizes:?}\n{}",
        all_logs()
    );
    assert!(
        bundle_sizes.ends_with(&[2, 1]),
        "old CA never dropped: {bundle_sizes:?}\n{}",
        all_logs()
    );
    // The Secret follows the MWC (written right after it in the same pass).
    let s = eventually(
        "the first CA gone from the Secret too",
        all_logs,
        async || {
            let s = secrets.get(secret_name).await.ok()?;
            (!secret_text(&s, "ca.crt").contains(&first_ca[0])).then_some(s)
        },
    )
    .await;
    let bundle = secret_text(&s, "ca.crt");
    assert_eq!(reaper::operator::certs::bundle_certs(&bundle).len(), 1);
    assert!(reaper::operator::certs::issued_by(
        &secret_text(&s, "tls.crt"),
        &bundle
    ));
    assert!(ok > 20, "only {ok} requests");
    eprintln!(
        "{ok} handshakes, none failed, over a CA rotation in {:?} (bundle sizes {bundle_sizes:?})",
        started.elapsed()
    );
    let m = op.metrics().await.unwrap();
    for step in ["new_ca", "serving_issued", "old_cas_dropped"] {
        assert!(
            m.contains(&format!(
                "reaper_operator_cert_steps_total{{step=\"{step}\"}}"
            )),
            "{step}: {m}"
        );
    }
    op.assert_clean_log();
}

/// The report CRDs copied from their Go modules into tests/fixtures/crds/`dir`
/// (tests/fixtures/crds/README.md says from where).
fn report_crds(dir: &str) -> Vec<CustomResourceDefinition> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crds")
        .join(dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no CRD in {}", dir.display());
    paths
        .iter()
        .map(|p| {
            yaml_serde::from_str(&std::fs::read_to_string(p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

fn report_api(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap();
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// The result of `rule` about `kind`/`name` in a stored report.
fn report_result<'a>(report: &'a DynamicObject, kind: &str, name: &str, rule: &str) -> &'a Value {
    report.data["results"]
        .as_array()
        .and_then(|rs| {
            rs.iter().find(|r| {
                r["rule"] == rule
                    && r["resources"][0]["kind"] == kind
                    && r["resources"][0]["name"] == name
            })
        })
        .unwrap_or_else(|| panic!("no {rule} result for {kind} {name}: {:#}", report.data))
}

/// What the scene's report says: the protected bare pod passes, the Deployment's unprotected pod
/// fails `pid1-is-init`, and its zombies fail with their parent's name.
fn assert_scene_report(report: &DynamicObject, policy: &str, ns: &str, deployment_uid: &str) {
    let data = &report.data;
    assert_eq!(
        report
            .labels()
            .get(keys::LABEL_MANAGED_BY)
            .map(String::as_str),
        Some(keys::MANAGER_OPERATOR)
    );
    assert_eq!(
        data["summary"],
        json!({"pass": 2, "fail": 2, "warn": 0, "error": 0, "skip": 0}),
        "{data:#}"
    );
    let web = report_result(report, "Deployment", "web", keys::RULE_PID1_IS_INIT);
    assert_eq!(web["result"], "fail", "{web:#}");
    assert_eq!(web["policy"], policy);
    assert_eq!(web["source"], keys::POLICY_REPORT_SOURCE);
    assert_eq!(
        web["resources"],
        json!([{"apiVersion": "apps/v1", "kind": "Deployment", "namespace": ns, "name": "web", "uid": deployment_uid}])
    );
    assert!(
        web["message"]
            .as_str()
            .unwrap()
            .contains("no reaper.dev/injected annotation"),
        "{web:#}"
    );
    assert_eq!(web["properties"]["unprotectedPods"], "web-5d8f-x1");
    let zombies = report_result(report, "Deployment", "web", keys::RULE_ZOMBIES);
    assert_eq!(zombies["result"], "fail", "{zombies:#}");
    assert_eq!(zombies["properties"]["zombies"], "3");
    assert_eq!(zombies["properties"]["parents"], "php-fpm");
    assert!(
        zombies["message"].as_str().unwrap().contains("php-fpm (3)"),
        "{zombies:#}"
    );
    let solo = report_result(report, "Pod", "solo", keys::RULE_PID1_IS_INIT);
    assert_eq!(solo["result"], "pass", "{solo:#}");
    assert_eq!(
        report_result(report, "Pod", "solo", keys::RULE_ZOMBIES)["result"],
        "pass"
    );
}

/// `--policy-reports=auto` against the real report CRDs, each phase with its own operator
/// (discovery at start): only wgpolicyk8s.io served → a PolicyReport; openreports.io installed →
/// a Report, and the PolicyReport deleted; no rewrite while nothing that matters changes; the
/// zombies going away change it; the namespace opting out deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reports_follow_the_served_api_and_change_only_with_the_cluster() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let admin = cp.client().await;
    cp.install_crds(&admin).await;
    assert!(
        Api::<CustomResourceDefinition>::all(admin.clone())
            .get_opt("reports.openreports.io")
            .await
            .unwrap()
            .is_none(),
        "this suite's control plane must start without the openreports.io CRD (this test installs it)"
    );
    control_plane::install_crds(&admin, report_crds("wgpolicyk8s")).await;
    let (ns, tag) = app_namespace(cp, &admin, "op-reports").await;
    let home = cp.ns(&admin, "op-reports-home").await;
    let name = format!("{tag}-reports");
    policy(
        &admin,
        &name,
        &tag,
        0,
        json!({}),
        json!({"threshold": 5, "action": "Event", "cooldown": "1h"}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    create(
        &pods,
        pod_json(
            &ns,
            "solo",
            json!({"app": "solo"}),
            json!({keys::ANNOTATION_INJECTED: "share"}),
            None,
        ),
    )
    .await;
    let web = workload(&admin, &ns, "web", None, None).await;
    let deployment_uid = Api::<Deployment>::namespaced(admin.clone(), &ns)
        .get("web")
        .await
        .unwrap()
        .uid()
        .unwrap();

    // The node's report, as the agent writes it once it knows the pod.
    let node = unique_name("op-reports-node");
    let zombie_report = |count: u32| {
        let containers = if count == 0 {
            json!([])
        } else {
            json!([{
                "podUid": web, "containerId": format!("{:064x}", 7), "namespace": ns,
                "pod": "web-5d8f-x1", "container": "app", "count": count, "oldestAgeSeconds": 60,
                "parents": [{"pid": 4242, "comm": "php-fpm", "count": count, "oldestAgeSeconds": 60}]
            }])
        };
        json!({
            "apiVersion": "reaper.dev/v1alpha1", "kind": "ZombieReport",
            "metadata": {"name": node},
            "spec": {"nodeName": node, "zombies": count, "containers": containers,
                     "pods": [{"podUid": web, "namespace": ns, "pod": "web-5d8f-x1", "current": 4 + count, "zombies": count}]}
        })
    };
    let zombie_reports: Api<ZombieReport> = Api::all(admin.clone());
    create(&zombie_reports, zombie_report(3)).await;

    let identity = operator_identity(cp, &admin, &home, None).await;
    let args = ["--leader-election=false", "--policy-reports=auto"];

    // Only wgpolicyk8s.io is served: a PolicyReport.
    let polr: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        &ns,
        &report_api("wgpolicyk8s.io/v1alpha2", "PolicyReport", "policyreports"),
    );
    let mut op = Operator::spawn(cp, &identity, "op-reports-wg", &home, &args);
    let report = eventually(
        "a PolicyReport with the scene's results",
        || op.logs(),
        async || {
            let r = polr.get_opt(keys::POLICY_REPORT_NAME).await.ok()??;
            (r.data["summary"]["fail"] == 2).then_some(r)
        },
    )
    .await;
    assert_scene_report(&report, &name, &ns, &deployment_uid);
    assert!(
        report.data.get("source").is_none(),
        "v1alpha2 has no report-level source"
    );
    assert!(op.terminate().await.success(), "{}", op.logs());
    op.assert_clean_log();

    // openreports.io installed: a Report instead, and the PolicyReport goes.
    control_plane::install_crds(&admin, report_crds("openreports")).await;
    let reports: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        &ns,
        &report_api("openreports.io/v1alpha1", "Report", "reports"),
    );
    let op = Operator::spawn(cp, &identity, "op-reports-or", &home, &args);
    let logs = || op.logs();
    let report = eventually("a Report with the scene's results", logs, async || {
        let r = reports.get_opt(keys::POLICY_REPORT_NAME).await.ok()??;
        (r.data["summary"]["fail"] == 2).then_some(r)
    })
    .await;
    assert_scene_report(&report, &name, &ns, &deployment_uid);
    assert_eq!(report.data["source"], keys::POLICY_REPORT_SOURCE);
    eventually("the PolicyReport deleted", logs, async || {
        polr.get_opt(keys::POLICY_REPORT_NAME)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    // Batches that change nothing the report says (a label on a pod, the agent's heartbeat with
    // the same zombies): no write.
    let written = report.resource_version();
    pods.patch(
        "solo",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "1"}}})),
    )
    .await
    .unwrap();
    let mut again = zombie_report(3);
    again["metadata"]["resourceVersion"] =
        json!(zombie_reports.get(&node).await.unwrap().resource_version());
    again["spec"]["observedAt"] = json!(jiff::Timestamp::now().to_string());
    zombie_reports
        .replace(
            &node,
            &PostParams::default(),
            &serde_json::from_value(again).unwrap(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        reports
            .get(keys::POLICY_REPORT_NAME)
            .await
            .unwrap()
            .resource_version(),
        written,
        "rewritten without a change\n{}",
        op.logs()
    );

    // The zombies go: the zombies result passes; the pid1-is-init result keeps its timestamp.
    let mut reaped = zombie_report(0);
    reaped["metadata"]["resourceVersion"] =
        json!(zombie_reports.get(&node).await.unwrap().resource_version());
    zombie_reports
        .replace(
            &node,
            &PostParams::default(),
            &serde_json::from_value(reaped).unwrap(),
        )
        .await
        .unwrap();
    let changed = eventually("the zombies result passing", logs, async || {
        let r = reports.get(keys::POLICY_REPORT_NAME).await.ok()?;
        (report_result(&r, "Deployment", "web", keys::RULE_ZOMBIES)["result"] == "pass")
            .then_some(r)
    })
    .await;
    assert_eq!(changed.data["summary"]["fail"], 1, "{:#}", changed.data);
    assert_eq!(
        report_result(&changed, "Deployment", "web", keys::RULE_PID1_IS_INIT)["timestamp"],
        report_result(&report, "Deployment", "web", keys::RULE_PID1_IS_INIT)["timestamp"]
    );

    // The namespace opts out: its report is deleted.
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {keys::LABEL_INJECT: null}}})),
        )
        .await
        .unwrap();
    eventually("the Report deleted", logs, async || {
        reports
            .get_opt(keys::POLICY_REPORT_NAME)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    op.assert_clean_log();
}
