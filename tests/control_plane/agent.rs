//! The agent against a real kube-apiserver (tests/support/control_plane.rs) and real zombies in
//! kubepods-shaped cgroups (reaper_test_support::agent): it publishes its node's ZombieReport by
//! server-side apply, owned by the Node, with names from the pod reflector, under the RBAC
//! docs/security.md documents; writes on change and on heartbeat only; the report is garbage-collected
//! with its Node.

use reaper_test_support as support;
use reaper_test_support::agent as agent_common;

use agent_common::{PARENT_COMM, V1Pod, ids, output_within_deadline, v1_pod_with};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use reaper::crd::{ContainerZombies, ZombieReport};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::control_plane::{self, ChildGuard, ControlPlane, free_port, unique_name};

const API_WAIT: Duration = Duration::from_secs(60);

async fn create<K>(api: &Api<K>, value: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).unwrap();
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating {}: {e}", obj.name_any()))
}

/// A Node, a Pod bound to it whose status names container `cid`, and real zombies in the pod's
/// cgroup (named after the API's pod uid).
struct Scene {
    node: Node,
    ns: String,
    zombies: V1Pod,
}

async fn scene(cp: &ControlPlane, admin: &Client, zombies: u32) -> Scene {
    let node_name = unique_name("agent-node");
    let node: Node = create(
        &Api::all(admin.clone()),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name}}),
    )
    .await;
    let ns = cp.ns(admin, "agent").await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let pod: Pod = create(
        &pods,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": ns},
            "spec": {"nodeName": node_name, "containers": [{"name": "app", "image": "registry.example/app:1"}]}
        }),
    )
    .await;
    let (_, cid, _) = ids();
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
        .expect("pod status with a containerID");
    let uid = pod.uid().unwrap();
    let zombies = tokio::task::spawn_blocking(move || v1_pod_with(&uid, &cid, zombies, 100))
        .await
        .unwrap();
    Scene { node, ns, zombies }
}

/// The permissions docs/security.md lists for the agent, bound to a ServiceAccount; returns a
/// kubeconfig file for it.
async fn agent_identity(cp: &ControlPlane, admin: &Client, ns: &str) -> std::path::PathBuf {
    let sa_name = "reaper-agent";
    create::<ServiceAccount>(
        &Api::namespaced(admin.clone(), ns),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa_name, "namespace": ns}}),
    )
    .await;
    let role = unique_name("reaper-agent");
    create::<ClusterRole>(
        &Api::all(admin.clone()),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": role},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
                {"apiGroups": ["reaper.dev"], "resources": ["zombiereports"], "verbs": ["get", "create", "patch"]}
            ]
        }),
    )
    .await;
    create::<ClusterRoleBinding>(
        &Api::all(admin.clone()),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": ns}]
        }),
    )
    .await;
    let token = cp
        .service_account_token(admin, ns, sa_name, Duration::from_secs(3600))
        .await;
    cp.write_token_kubeconfig(sa_name, &token)
}

fn ours<'a>(report: &'a ZombieReport, uid: &str) -> Option<&'a ContainerZombies> {
    report.spec.containers.iter().find(|c| c.pod_uid == uid)
}

/// Poll the node's report until `pred` holds.
async fn wait_report(
    api: &Api<ZombieReport>,
    name: &str,
    what: &str,
    pred: impl Fn(&ZombieReport) -> bool,
) -> ZombieReport {
    let deadline = Instant::now() + API_WAIT;
    loop {
        let got = api.get_opt(name).await.expect("GET zombiereport");
        if let Some(r) = &got
            && pred(r)
        {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {API_WAIT:?}; last: {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn agent_command(kubeconfig: &std::path::Path, node: &str) -> Command {
    let mut cmd = Command::new(control_plane::reaper_controller_bin());
    cmd.env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .args(["agent", "--node-name", node, "--log-level", "info"])
        .stdin(Stdio::null());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_publishes_owned_report_with_names_on_change_and_heartbeat() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let admin = cp.client().await;
    cp.install_crds(&admin).await;
    cp.ensure_controller_manager(&admin).await;
    let Scene { node, ns, zombies } = scene(cp, &admin, 3).await;
    let node_name = node.name_any();
    let kubeconfig = agent_identity(cp, &admin, &ns).await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = agent_command(&kubeconfig, &node_name);
    cmd.args(["--interval", "300ms", "--heartbeat", "3s"])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap());
    let agent = ChildGuard::spawn(&mut cmd).unwrap();
    let logs = || std::fs::read_to_string(log.path()).unwrap_or_default();

    let reports: Api<ZombieReport> = Api::all(admin.clone());
    let uid = zombies.uid.clone();
    let report = wait_report(&reports, &node_name, "our container with names", |r| {
        ours(r, &uid).is_some_and(|c| c.container.is_some())
    })
    .await;
    let c = ours(&report, &uid).unwrap();
    assert_eq!(c.container_id, zombies.cid);
    assert_eq!(
        (
            c.namespace.as_deref(),
            c.pod.as_deref(),
            c.container.as_deref()
        ),
        (Some(ns.as_str()), Some("web-0"), Some("app"))
    );
    assert_eq!(c.count, 3);
    assert_eq!(c.parents.len(), 1);
    assert_eq!(c.parents[0].pid, zombies.parent.0.id() as i32);
    assert_eq!(c.parents[0].comm, PARENT_COMM);
    let p = report
        .spec
        .pods
        .iter()
        .find(|p| p.pod_uid == uid)
        .expect("pod in report");
    assert_eq!(
        (p.current, p.limit, p.zombies, p.pod.as_deref()),
        (4, Some(100), 3, Some("web-0"))
    );
    assert_eq!(report.spec.node_name, node_name);
    assert!(report.spec.observed_at.is_some());

    // Owned by the Node, written by server-side apply under the agent's field manager.
    let owners = report.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (
            owners[0].api_version.as_str(),
            owners[0].kind.as_str(),
            owners[0].name.as_str()
        ),
        ("v1", "Node", node_name.as_str())
    );
    assert_eq!(Some(owners[0].uid.clone()), node.uid());
    let managers: Vec<_> = report
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| (m.manager.clone(), m.operation.clone()))
        .collect();
    assert!(
        managers.contains(&(Some("reaper-agent".into()), Some("Apply".into()))),
        "{managers:?}"
    );

    // Unchanged content is not rewritten every scan: over ~2 s (about 7 scans) every write either
    // carries a material change (the agent scans the whole machine, where other tests make and
    // reap zombies meanwhile) or is the one heartbeat that may fall in.
    let mut last = report.clone();
    let mut unchanged_writes = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = reports.get(&node_name).await.unwrap();
        if now.resource_version() != last.resource_version() {
            if reaper::agent::report::same_content(&last.spec, &now.spec) {
                unchanged_writes.push(now.resource_version());
            }
            last = now;
        }
    }
    assert!(
        unchanged_writes.len() <= 1,
        "rewritten without change: {unchanged_writes:?}\n{}",
        logs()
    );
    // ... but the heartbeat refreshes observedAt.
    let first_seen = report.spec.observed_at.clone();
    wait_report(&reports, &node_name, "a heartbeat write", |r| {
        r.spec.observed_at != first_seen
    })
    .await;

    // A change is written at once: the zombies are reaped when their parent dies.
    let V1Pod {
        parent,
        tree: _tree,
        ..
    } = zombies;
    drop(parent);
    wait_report(&reports, &node_name, "our container gone", |r| {
        ours(r, &uid).is_none()
    })
    .await;
    assert!(
        !logs().contains("not written"),
        "apply errors under the documented RBAC:\n{}",
        logs()
    );

    // Garbage collection follows the ownerReference once the Node goes.
    drop(agent);
    Api::<Node>::all(admin.clone())
        .delete(&node_name, &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + API_WAIT;
    while reports.get_opt(&node_name).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "report outlived its Node by {API_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `--once --output json` with a cluster prints names and the ownerReference and writes
/// nothing; `--once` alone applies the same object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_prints_with_cluster_facts_then_applies() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let admin = cp.client().await;
    cp.install_crds(&admin).await;
    let Scene { node, ns, zombies } = scene(cp, &admin, 2).await;
    let node_name = node.name_any();
    let kubeconfig = agent_identity(cp, &admin, &ns).await;
    let reports: Api<ZombieReport> = Api::all(admin.clone());

    let run = |extra: &'static [&'static str]| {
        let mut cmd = agent_command(&kubeconfig, &node_name);
        cmd.arg("--once").args(extra);
        async move {
            let out = tokio::task::spawn_blocking(move || output_within_deadline(&mut cmd))
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }
    };

    let out = run(&["--output", "json"]).await;
    let printed: ZombieReport = serde_json::from_slice(&out.stdout).unwrap();
    let owner = &printed.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(owner.uid.clone())),
        ("Node", node.uid())
    );
    let c = ours(&printed, &zombies.uid).expect("our container printed");
    assert_eq!(
        (c.pod.as_deref(), c.container.as_deref(), c.count),
        (Some("web-0"), Some("app"), 2)
    );
    assert!(
        reports.get_opt(&node_name).await.unwrap().is_none(),
        "--output json must not write"
    );

    run(&[]).await;
    let applied = reports
        .get(&node_name)
        .await
        .expect("--once applied the report");
    assert_eq!(
        applied.metadata.owner_references,
        printed.metadata.owner_references
    );
    assert_eq!(
        ours(&applied, &zombies.uid).map(|c| c.count),
        Some(2),
        "{applied:#?}"
    );
}
