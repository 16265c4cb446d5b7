//! The commands for people against a real kube-apiserver and a real registry:
//! `reaper-controller explain` reads the object, its namespace, the cluster's policies and the
//! image config (as the webhook would) and says what the webhook does with it.
use reaper_test_support as support;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::control_plane::{self, ControlPlane, reaper_controller_bin};
use support::registry::{ImageSpec, TestRegistry};

fn explain(cp: &ControlPlane, registry: &str, ns: &str, object: &str) -> Value {
    let out = std::process::Command::new(reaper_controller_bin())
        .env("KUBECONFIG", cp.kubeconfig())
        .args([
            "--log-level",
            "warn",
            "explain",
            "-n",
            ns,
            object,
            "-o",
            "json",
        ])
        .args([
            "--insecure-registries",
            registry,
            "--reaper-image",
            "r.example/reaper:1",
        ])
        .output()
        .expect("running reaper-controller explain");
    assert!(
        out.status.success(),
        "explain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_reads_the_cluster_and_the_registry_like_the_webhook() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let registry = TestRegistry::start();
    registry.push_image(
        "app",
        "1",
        &ImageSpec::new(Some(&["/app"]), Some(&["--serve"])),
    );
    let image = registry.image("app", "1");
    let deployment = |ns: &str| -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [
                        {"name": "app", "image": image},
                        {"name": "side", "image": "busybox:1.36", "command": ["sleep", "1d"]},
                        {"name": "tini", "image": "acme/t:1", "command": ["/sbin/tini", "--", "run"]}
                    ]}
                }
            }
        }))
        .unwrap()
    };
    let opted = cp
        .ns_with_labels(&client, "explain", &[("reaper.dev/inject", "enabled")])
        .await;
    let plain = cp.ns(&client, "explain-plain").await;
    for ns in [&opted, &plain] {
        Api::<Deployment>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &deployment(ns))
            .await
            .unwrap();
    }

    let e = explain(cp, &registry.addr, &opted, "deploy/web");
    assert_eq!(e["namespace_opted_in"], true, "{e:#}");
    assert_eq!(e["outcome"], "inject:app,side", "{e:#}");
    let c = |name: &str| {
        e["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(c("app")["argv_source"], "registry");
    assert_eq!(c("app")["argv"], json!(["/app", "--serve"]));
    assert_eq!(
        c("app")["wrapped"],
        json!(["/.reaper/reaper", "--", "/app", "--serve"])
    );
    assert_eq!(c("side")["argv_source"], "pod");
    assert_eq!(c("tini")["init"], "tini");
    assert_eq!(c("tini")["wrapped"], Value::Null);
    assert!(e["patch"].as_array().is_some_and(|p| !p.is_empty()));

    // As a kubectl plugin: `kubectl reaper ...` runs `kubectl-reaper` from PATH.
    let plugin_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        reaper_controller_bin(),
        plugin_dir.path().join("kubectl-reaper"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        plugin_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new(control_plane::tool("kubectl").unwrap())
        .env("PATH", path)
        .env("KUBECONFIG", cp.kubeconfig())
        .args([
            "reaper",
            "--log-level",
            "warn",
            "explain",
            "-n",
            &opted,
            "deploy/web",
            "-o",
            "json",
        ])
        .args([
            "--insecure-registries",
            &registry.addr,
            "--reaper-image",
            "r.example/reaper:1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let via_kubectl: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        via_kubectl, e,
        "kubectl reaper explain differs from reaper-controller explain"
    );

    let e = explain(cp, &registry.addr, &plain, "deploy/web");
    assert_eq!(
        (&e["namespace_opted_in"], &e["in_scope"]),
        (&json!(false), &json!(false))
    );
    assert!(
        e["outcome"].as_str().unwrap().starts_with(
            "not be called: not opted in (label the namespace, or the pod, reaper.dev/inject=enabled); once in scope: inject:app,side"
        ),
        "{e:#}"
    );
    // The pod template opts in itself (pod opt-in, on by default): the webhook is called.
    let mut joined = deployment(&plain);
    joined.metadata.name = Some("joined".into());
    support::scenarios::opt_in_template(&mut joined);
    Api::<Deployment>::namespaced(client.clone(), &plain)
        .create(&PostParams::default(), &joined)
        .await
        .unwrap();
    let e = explain(cp, &registry.addr, &plain, "deploy/joined");
    assert_eq!(e["in_scope"], true, "{e:#}");
    assert_eq!(e["scope"], "pod opted in (reaper.dev/inject=enabled)");
    assert_eq!(e["outcome"], "inject:app,side", "{e:#}");
}
