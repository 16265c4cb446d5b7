//! The demo on a real node: the chart installed with `helm install`, the sample policy, and two
//! copies of the same pod — one created before its namespace was opted in (unprotected), one
//! after (wrapped by the webhook) — compared side by side: PID 1, zombies from the node's
//! ZombieReport, the policy status, and how long `kubectl delete` takes for each.
use crate::support::control_plane;
use crate::support::node::{Chart, Node};
use crate::{SAMPLE_POLICY, exit_after_printing, stop_requested};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use reaper::crd::{ReaperPolicy, ZombieReport};
use serde_json::json;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "demo";
const MANAGER: &str = "reaper-demo";
/// Grace period of the sample pods: what an unprotected PID 1 waits out on every delete.
const GRACE_SECONDS: u64 = 30;
/// PID 1 forks five children that outlive their parent (orphans, re-parented to PID 1), then
/// execs `sleep`, which never reaps them and ignores SIGTERM as a namespace init.
const LEAKY: &str =
    "i=0; while [ $i -lt 5 ]; do sh -c 'sleep 1 &'; i=$((i+1)); done; exec sleep 3600";

fn sample_pod(name: &str, image: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "leaky"}},
        "spec": {
            "terminationGracePeriodSeconds": GRACE_SECONDS,
            "containers": [{
                "name": "app", "image": image, "command": ["sh", "-c", LEAKY],
                "securityContext": {"runAsNonRoot": true, "runAsUser": 1000,
                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"}}
            }]
        }
    }))?)
}

fn step(n: u32, title: &str) {
    println!("== {n}. {title}");
}

/// Runs the node demo.
pub async fn run() -> Result<()> {
    let began = Instant::now();
    println!(
        "Reaper demo on a real node (kubelet + containerd + runc, built here by `make tools`)"
    );
    step(
        1,
        "node: etcd, kube-apiserver, controller-manager, scheduler, containerd, kubelet, kube-proxy",
    );
    let owner = control_plane::owner_thread("demo-node").map_err(anyhow::Error::msg)?;
    // Blocking start; images are built with podman and pushed to the node's local registry.
    let node = tokio::task::spawn_blocking(move || Node::start(owner))
        .await?
        .map_err(anyhow::Error::msg)?;
    let result = show(&node, began).await;
    if result.is_ok() && !exit_after_printing() {
        println!(
            "Try: kubectl --kubeconfig {} get pods,reaperpolicies,zombiereports -A",
            node.cp().kubeconfig().display()
        );
        println!("Ctrl-C stops everything.");
        stop_requested().await?;
        println!("stopping");
    }
    tokio::task::spawn_blocking(move || node.shutdown()).await?;
    result
}

async fn show(node: &Node, began: Instant) -> Result<()> {
    let kubectl = |args: &[&str]| -> Result<String> {
        let (ok, out, err) = node.kubectl_out(args);
        if !ok {
            bail!("kubectl {}: {out}{err}", args.join(" "));
        }
        Ok(out)
    };
    let indent = |text: &str| {
        for l in text.lines() {
            println!("   {l}");
        }
    };
    indent(&kubectl(&["get", "nodes", "-o", "wide"])?);
    println!(
        "   images in the node's registry {}: {}, {}, {}",
        node.registry,
        node.images.reaper(),
        node.images.controller(),
        node.images.workload
    );

    step(
        2,
        "helm install reaper charts/reaper (webhook, operator, agent)",
    );
    let client = node.client().await;
    Chart::default().install(node, &client, &[]).await;
    indent(&kubectl(&[
        "-n",
        "reaper-system",
        "get",
        "pods",
        "-o",
        "wide",
    ])?);

    step(3, "sample ReaperPolicy (examples/demo-policy.yaml)");
    let policy: ReaperPolicy =
        yaml_serde::from_str(SAMPLE_POLICY).context("parsing examples/demo-policy.yaml")?;
    Api::<ReaperPolicy>::all(client.clone())
        .patch(
            "demo",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&policy),
        )
        .await
        .context("applying the sample policy")?;
    indent(&kubectl(&["get", "reaperpolicies"])?);

    step(
        4,
        "the same pod twice: `unprotected` created before namespace demo opted in, `protected` after",
    );
    let namespaces = Api::<Namespace>::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}
    }))?;
    namespaces
        .patch(
            NAMESPACE,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&ns),
        )
        .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    wait_service_account(&client).await?;
    let image = &node.images.workload;
    pods.create(&PostParams::default(), &sample_pod("unprotected", image)?)
        .await
        .context("creating pod unprotected")?;
    namespaces
        .patch(
            NAMESPACE,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"reaper.dev/inject": "enabled"}}})),
        )
        .await?;
    println!("   kubectl label namespace demo reaper.dev/inject=enabled");
    let protected = create_mutated(&pods, &sample_pod("protected", image)?).await?;
    let spec = protected.spec.clone().unwrap_or_default();
    println!(
        "   protected: reaper.dev/injected={}, init containers {:?}, image volumes {:?}, command {:?}",
        protected
            .annotations()
            .get("reaper.dev/injected")
            .map_or("<none>", String::as_str),
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        // `auto` mounts the reaper image where the node runs image volumes (this one does),
        // else copies it in with the reaper-install init container.
        spec.volumes
            .iter()
            .flatten()
            .filter_map(|v| v.image.as_ref()?.reference.as_deref())
            .collect::<Vec<_>>(),
        spec.containers[0].command.clone().unwrap_or_default()
    );
    for name in ["unprotected", "protected"] {
        wait_running(&pods, name).await?;
    }
    indent(&kubectl(&["-n", NAMESPACE, "get", "pods", "-o", "wide"])?);

    // The orphans exit after a second: wait until the agent has seen their zombies, so `ps` shows
    // them too.
    let (unprotected_z, protected_z) = zombies(&client, &pods).await?;
    step(5, "PID 1 of each (kubectl exec ... ps)");
    for name in ["unprotected", "protected"] {
        println!("   -- {name}");
        indent(&kubectl(&[
            "exec",
            "-n",
            NAMESPACE,
            name,
            "--",
            "ps",
            "-o",
            "pid,ppid,stat,comm",
        ])?);
    }

    step(6, "zombies in the node's ZombieReport (agent)");
    println!("   unprotected: {unprotected_z} zombies   protected: {protected_z} zombies");
    indent(&kubectl(&["get", "zombiereports"])?);

    step(7, "policy status (operator)");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = Api::<ReaperPolicy>::all(client.clone()).get("demo").await?;
        if p.status
            .as_ref()
            .is_some_and(|s| s.matched_pods == 2 && s.zombies >= unprotected_z.min(3))
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the operator did not count the demo pods within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    indent(&kubectl(&["get", "reaperpolicies"])?);
    let status = kubectl(&["get", "reaperpolicy", "demo", "-o", "jsonpath={.status}"])?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    indent(&yaml_serde::to_string(&status)?);

    step(8, "kubectl delete, timed (both at once; grace period 30 s)");
    let (unprotected_t, protected_t) = tokio::join!(
        timed_delete(node, "unprotected"),
        timed_delete(node, "protected")
    );
    let (unprotected_t, protected_t) = (unprotected_t?, protected_t?);
    println!(
        "   unprotected: {:.1} s (SIGTERM ignored by PID 1, SIGKILL after the grace period)",
        unprotected_t.as_secs_f64()
    );
    println!(
        "   protected:   {:.1} s (the reaper forwards SIGTERM, sleep exits)",
        protected_t.as_secs_f64()
    );
    println!(
        "Demo ready in {:.1} s: delete {:.1} s vs {:.1} s, zombies {unprotected_z} vs {protected_z}.",
        began.elapsed().as_secs_f64(),
        unprotected_t.as_secs_f64(),
        protected_t.as_secs_f64()
    );
    Ok(())
}

/// The ServiceAccount admission needs `default` in the new namespace (controller-manager).
async fn wait_service_account(client: &Client) -> Result<()> {
    let sas =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sas.get_opt("default").await?.is_none() {
        if Instant::now() > deadline {
            bail!("no ServiceAccount {NAMESPACE}/default within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Creates `pod` once the webhook mutates in the namespace (it learns the new label from a
/// watch): dry runs until one comes back mutated.
async fn create_mutated(pods: &Api<Pod>, pod: &Pod) -> Result<Pod> {
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = pods.create(&dry, pod).await?;
        if p.annotations().contains_key("reaper.dev/injected") {
            return Ok(pods.create(&PostParams::default(), pod).await?);
        }
        if Instant::now() > deadline {
            bail!("the webhook did not mutate pods in {NAMESPACE} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn wait_running(pods: &Api<Pod>, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let p = pods.get(name).await?;
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pod {name} not Running within 180 s: {:?}", p.status);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Zombies of (unprotected, protected) once the unprotected one's five are reported.
async fn zombies(client: &Client, pods: &Api<Pod>) -> Result<(u32, u32)> {
    let uids: Vec<String> = [pods.get("unprotected").await?, pods.get("protected").await?]
        .iter()
        .map(|p| p.uid().unwrap_or_default())
        .collect();
    let reports = Api::<ZombieReport>::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let count = |uid: &str, r: &Option<ZombieReport>| -> u32 {
            r.iter()
                .flat_map(|r| &r.spec.containers)
                .filter(|c| c.pod_uid == uid)
                .map(|c| c.count)
                .sum()
        };
        let report = reports.get_opt(crate::support::node::NODE_NAME).await?;
        let (u, p) = (count(&uids[0], &report), count(&uids[1], &report));
        if u >= 5 {
            return Ok((u, p));
        }
        if Instant::now() > deadline {
            bail!("the unprotected pod's zombies were not reported within 120 s (saw {u})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `kubectl delete pod NAME` (which waits until the pod is gone), timed.
async fn timed_delete(node: &Node, name: &str) -> Result<Duration> {
    let mut cmd = tokio::process::Command::from(node.kubectl());
    cmd.args(["delete", "pod", "-n", NAMESPACE, name])
        .stdout(std::process::Stdio::null());
    let t = Instant::now();
    let status = cmd.status().await?;
    let took = t.elapsed();
    if !status.success() {
        bail!("kubectl delete pod {name} failed");
    }
    Ok(took)
}
