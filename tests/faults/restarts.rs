//! kube-apiserver, then etcd, restarted under a running webhook, operator and agent (one process
//! each, started once). After each restart every component must follow a change made after it —
//! the webhook a policy's new mode, the agent a pod's new zombies (or their end), the operator the
//! report in the policy's status — without any of the three processes restarting.
use crate::parts::{Replica, injected, write_pair};
use crate::{HEAVY, private_control_plane};
use reaper_test_support as support;
use reaper_test_support::agent as agent_common;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use reaper::crd::{ReaperPolicy, ZombieReport};
use serde_json::json;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::control_plane::{self, ChildGuard, ControlPlane, TestCa, free_port};

const WAIT: Duration = Duration::from_secs(60);
const POLICY: &str = "restarts";

/// A `reaper-controller` process of some role, its log in the control plane's dir.
struct Component {
    child: ChildGuard,
    log: std::path::PathBuf,
}

impl Component {
    fn spawn(cp: &ControlPlane, name: &str, args: &[&str]) -> Self {
        let log = cp.dir().join(format!("{name}.log"));
        let mut cmd = cp.command(control_plane::reaper_controller_bin());
        cmd.env_remove("KUBERNETES_SERVICE_HOST")
            .args(["--log-level", "info,kube=warn"])
            .args(args)
            .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Self {
            child: ChildGuard::spawn(&mut cmd).expect("spawning reaper-controller"),
            log,
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A pod on `node` whose container `app` holds `zombies` real zombies (cgroup v1 `pids`,
/// named after the pod's UID and container ID, as on a kubelet's node).
async fn pod_with_zombies(
    admin: &Client,
    ns: &str,
    node: &str,
    name: &str,
    zombies: u32,
) -> agent_common::V1Pod {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.example/app:1"}]}
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let (_, cid, _) = agent_common::ids();
    let status = json!({"status": {
        "phase": "Running",
        "containerStatuses": [{
            "name": "app", "containerID": format!("containerd://{cid}"),
            "image": "registry.example/app:1", "imageID": "", "ready": true,
            "restartCount": 0, "started": true, "state": {"running": {}}
        }]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let uid = pod.uid().unwrap();
    tokio::task::spawn_blocking(move || agent_common::v1_pod_with(&uid, &cid, zombies, 100))
        .await
        .unwrap()
}

/// Polls until `check` returns Some; panics with `what` and the components' logs after WAIT.
async fn converge<T>(
    what: &str,
    logs: &dyn Fn() -> String,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> (T, Duration) {
    let began = Instant::now();
    loop {
        if let Some(v) = check().await {
            return (v, began.elapsed());
        }
        assert!(
            began.elapsed() < WAIT,
            "{what}: not within {WAIT:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_zombies(admin: &Client) -> Option<u64> {
    let p = Api::<ReaperPolicy>::all(admin.clone())
        .get(POLICY)
        .await
        .ok()?;
    let s = serde_json::to_value(p.status?).ok()?;
    s["zombies"].as_u64()
}

async fn report_zombies(admin: &Client, node: &str, uid: &str) -> Option<u32> {
    let r = Api::<ZombieReport>::all(admin.clone())
        .get_opt(node)
        .await
        .ok()??;
    Some(
        r.spec
            .containers
            .iter()
            .filter(|c| c.pod_uid == uid)
            .map(|c| c.count)
            .sum(),
    )
}

/// The annotation a new pod in `ns` gets (dry-run create through the API server).
async fn admitted_as(admin: &Client, ns: &str) -> String {
    let p: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "probe-"},
        "spec": {"containers": [{"name": "app", "image": "ghcr.io/acme/app:1", "command": ["/app"]}]}
    }))
    .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Pod>::namespaced(admin.clone(), ns)
        .create(&dry, &p)
        .await
        .map(|p| injected(&p).to_string())
        .unwrap_or_else(|e| format!("error: {e}"))
}

async fn set_mode(admin: &Client, mode: &str) {
    Api::<ReaperPolicy>::all(admin.clone())
        .patch(
            POLICY,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mode": mode}})),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_and_etcd_restarts_are_survived_by_webhook_operator_and_agent() {
    let _heavy = HEAVY.lock().await;
    let Some(cp) = private_control_plane() else {
        return;
    };
    let admin = cp.client().await;
    cp.install_crds(&admin).await;
    let ns = cp
        .ns_with_labels(&admin, "apps", &[("reaper.dev/inject", "enabled")])
        .await;
    let home = cp.ns(&admin, "reaper").await;
    let node = format!("node-{}", control_plane::unique_name("r"));
    Api::<Node>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let policy: ReaperPolicy = serde_json::from_value(json!({
        "apiVersion": "reaper.dev/v1alpha1", "kind": "ReaperPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "mode": "Inject",
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "zombies": {"threshold": 1000, "action": "Event"}
        }
    }))
    .unwrap();
    Api::<ReaperPolicy>::all(admin.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();

    // The three components, started once.
    let ca = TestCa::new("reaper restarts test CA");
    let certs = cp.dir().join("webhook-certs");
    std::fs::create_dir_all(&certs).unwrap();
    write_pair(&ca, &certs);
    let mut webhook = Replica::start(&cp, &certs, "127.0.0.1:1", "webhook").await;
    let mwc = control_plane::webhook_registration(
        "reaper-restarts",
        &format!("https://127.0.0.1:{}/mutate", webhook.port),
        &ca.cert_pem(),
        &[("reaper.dev/inject", "enabled")],
        "Ignore",
    );
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &mwc)
        .await
        .unwrap();
    let mut operator = Component::spawn(
        &cp,
        "operator",
        &[
            "operator",
            "--namespace",
            &home,
            "--batch-window",
            "200ms",
            "--leader-election=false",
        ],
    );
    let mut agent = Component::spawn(
        &cp,
        "agent",
        &["agent", "--node-name", &node, "--interval", "300ms"],
    );
    let logs = || {
        format!(
            "--- webhook ---\n{}\n--- operator ---\n{}\n--- agent ---\n{}",
            webhook.logs(),
            operator.logs(),
            agent.logs()
        )
    };

    // Before any restart: all three at work.
    let first = pod_with_zombies(&admin, &ns, &node, "web-0", 3).await;
    converge("3 zombies in the report", &logs, async || {
        (report_zombies(&admin, &node, &first.uid).await == Some(3)).then_some(())
    })
    .await;
    converge("3 zombies in the policy status", &logs, async || {
        (status_zombies(&admin).await == Some(3)).then_some(())
    })
    .await;
    converge("pods injected", &logs, async || {
        admitted_as(&admin, &ns)
            .await
            .starts_with("inject:")
            .then_some(())
    })
    .await;

    let mut figures = Vec::new();
    let mut held = Some(first);
    for (round, restarted) in ["kube-apiserver", "etcd"].into_iter().enumerate() {
        let took = cp
            .restart(restarted)
            .unwrap_or_else(|e| panic!("restarting {restarted}: {e}"));
        // Changes made after the restart, one for each component to follow.
        let (mode, want) = if round == 0 {
            ("Share", "share")
        } else {
            ("Inject", "inject:")
        };
        set_mode(&admin, mode).await;
        drop(held.take()); // web-0's zombies end (parent killed, cgroup removed)
        let second = pod_with_zombies(&admin, &ns, &node, &format!("web-{}", round + 1), 2).await;

        // Measured together from the change: how long each component takes to follow it.
        let what = |w: &str| format!("after the {restarted} restart: {w}");
        let (w1, w2, w3) = (
            what("the policy's new mode"),
            what("the new zombies in the report"),
            what("the status"),
        );
        let (webhook_t, agent_t, operator_t) = tokio::join!(
            converge(&w1, &logs, async || {
                admitted_as(&admin, &ns)
                    .await
                    .starts_with(want)
                    .then_some(())
            }),
            converge(&w2, &logs, async || {
                (report_zombies(&admin, &node, &second.uid).await == Some(2)).then_some(())
            }),
            converge(&w3, &logs, async || {
                (status_zombies(&admin).await == Some(2)).then_some(())
            }),
        );
        let (webhook_t, agent_t, operator_t) = (webhook_t.1, agent_t.1, operator_t.1);
        held = Some(second);
        figures.push(format!(
            "{restarted}: back in {:.1} s; webhook followed in {:.1} s, agent {:.1} s, operator {:.1} s",
            took.as_secs_f64(),
            webhook_t.as_secs_f64(),
            agent_t.as_secs_f64(),
            operator_t.as_secs_f64(),
        ));
    }
    println!("FIGURE restarts {}", figures.join("; "));
    let all_logs = logs();
    assert!(webhook.alive(), "webhook exited\n{all_logs}");
    assert!(operator.alive(), "operator exited\n{all_logs}");
    assert!(agent.alive(), "agent exited\n{all_logs}");
    for (who, text) in [
        ("webhook", webhook.logs()),
        ("operator", operator.logs()),
        ("agent", agent.logs()),
    ] {
        assert!(!text.contains("panicked"), "{who} panicked:\n{text}");
    }
}
