//! `make bench-engines`: what each admission engine (`admission.engine`, #17) adds to pod
//! creation, end to end through a real kube-apiserver (etcd + kube-apiserver from `make tools`).
//!
//! One run, four series of the same pod (it sets `command`, so every engine wraps it and no
//! registry lookup happens), created in four namespaces, interleaved and rotated so that all see
//! the same API server and etcd conditions:
//! - none: a namespace no engine governs;
//! - webhook: the chart's webhook (`reaper-controller webhook`, `REAPER_CONTROLLER_BIN`, default
//!   target/debug/reaper-controller, with the args of the rendered Deployment) and its
//!   registration (`engine=webhook`), called by URL;
//! - policy: the rendered MutatingAdmissionPolicies and bindings of `engine=policy`;
//! - both: the policies and the registration of `engine=both` (whose matchCondition keeps this
//!   pod from the webhook once the policies wrapped it).
//!
//! - floor: a MutatingAdmissionPolicy that only sets the same annotation (one JSONPatch op, no
//!   variables): what any JSONPatch policy costs before its CEL does anything (the series checks
//!   that annotation instead).
//!
//! Every install is the chart's, scoped to its namespace by one extra label. Each create must come
//! back wrapped (none: unchanged). Prints p50/p90/p99/max/mean per series, the deltas over none
//! and their ratios; nothing is asserted (target: the policy install adds at most 1 ms at p50).
//!
//! `ENGINE_PODS` (default 300) creations per series.
use reaper_test_support::chart::{self as chart_common, V, cluster};
use reaper_test_support::control_plane;

use anyhow::{Context, Result, bail};
use control_plane::{ChildGuard, ControlPlane, TestCa, free_port, unique_name};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const WARMUP: usize = 30;
const RELEASE_NS: &str = "reaper-system";
const LABEL: &str = "reaper.dev/bench-engine";

fn webhook_bin() -> PathBuf {
    std::env::var_os("REAPER_CONTROLLER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| control_plane::repo_root().join("target/debug/reaper-controller"))
}

fn render(engine: &str) -> chart_common::Objects {
    chart_common::render("r", RELEASE_NS, &[V::Set("admission.engine", engine)])
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{
            "name": "app", "image": "registry.example.com/team/app:1.2.3",
            "command": ["/app", "serve", "--port=8080"],
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
        }]}
    }))
    .expect("pod")
}

/// Creates one pod; its wall time and whether it came back wrapped.
async fn create(api: &Api<Pod>) -> Result<(Duration, bool)> {
    let p = pod(&unique_name("eng"));
    let t = Instant::now();
    let stored = api
        .create(&PostParams::default(), &p)
        .await
        .context("pod create")?;
    let took = t.elapsed();
    let wrapped = stored
        .annotations()
        .get(reaper::keys::ANNOTATION_INJECTED)
        .is_some_and(|v| v == "inject:app");
    Ok((took, wrapped))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn scope(selector: &mut Value, id: &str) {
    if !selector["matchLabels"].is_object() {
        selector["matchLabels"] = json!({});
    }
    selector["matchLabels"][LABEL] = json!(id);
}

/// The chart's webhook with the args of its rendered Deployment; (process, port, CA).
async fn start_webhook(
    cp: &ControlPlane,
    objs: &chart_common::Objects,
) -> Result<(ChildGuard, u16, String)> {
    let bin = webhook_bin();
    if !bin.is_file() {
        bail!(
            "{} is missing: `cargo build --bin reaper-controller` (or set REAPER_CONTROLLER_BIN)",
            bin.display()
        );
    }
    let dir = cp.dir().join(unique_name("engines"));
    std::fs::create_dir_all(&dir)?;
    let ca = TestCa::new("engines bench CA");
    let pair = ca.issue_server(&["127.0.0.1"]);
    std::fs::write(dir.join("tls.crt"), &pair.cert_pem)?;
    std::fs::write(dir.join("tls.key"), &pair.key_pem)?;
    let (port, admin) = (free_port(), free_port());
    let deployment = objs
        .of_kind("Deployment")
        .into_iter()
        .find(|d| {
            d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-webhook"))
        })
        .context("no webhook Deployment rendered")?;
    let args: Vec<String> =
        chart_common::strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"])
            .into_iter()
            .map(|a| match a.split_once('=').map(|(k, _)| k) {
                Some("--listen") => format!("--listen=127.0.0.1:{port}"),
                Some("--admin-listen") => format!("--admin-listen=127.0.0.1:{admin}"),
                Some("--tls-cert") => format!("--tls-cert={}", dir.join("tls.crt").display()),
                Some("--tls-key") => format!("--tls-key={}", dir.join("tls.key").display()),
                Some("--log-level") => "--log-level=warn".to_string(),
                _ => a,
            })
            .collect();
    let mut cmd = cp.command(&bin);
    cmd.args(&args)
        .env("POD_NAMESPACE", RELEASE_NS)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("webhook.log"))?);
    let child = ChildGuard::spawn(&mut cmd).context("spawning the webhook")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = format!("http://127.0.0.1:{admin}/readyz");
    while !reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
        if Instant::now() > deadline {
            bail!(
                "webhook not ready within 60 s: {}",
                std::fs::read_to_string(dir.join("webhook.log"))?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((child, port, ca.cert_pem()))
}

/// The rendered webhook registration, by URL, for namespaces labelled `id`.
async fn register(
    client: &Client,
    objs: &chart_common::Objects,
    id: &str,
    port: u16,
    ca_pem: &str,
) -> Result<()> {
    let mut mwc = objs.of_kind("MutatingWebhookConfiguration")[0].clone();
    mwc["metadata"] = json!({"name": id});
    for hook in mwc["webhooks"].as_array_mut().unwrap() {
        hook["clientConfig"] = json!({
            "url": format!("https://127.0.0.1:{port}/mutate"),
            "caBundle": k8s_openapi::ByteString(ca_pem.as_bytes().to_vec()),
        });
        scope(&mut hook["namespaceSelector"], id);
    }
    cluster::apply(client, &mwc, false)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

/// The rendered policies and bindings, renamed `<name>-<id>`, for namespaces labelled `id`.
async fn install_policies(client: &Client, objs: &chart_common::Objects, id: &str) -> Result<()> {
    for kind in ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"] {
        for p in objs.of_kind(kind) {
            let mut p = p.clone();
            let name = format!("{}-{id}", p["metadata"]["name"].as_str().unwrap());
            p["metadata"]["name"] = json!(name);
            if kind == "MutatingAdmissionPolicy" {
                scope(&mut p["spec"]["matchConstraints"]["namespaceSelector"], id);
            } else {
                let policy = format!("{}-{id}", p["spec"]["policyName"].as_str().unwrap());
                p["spec"]["policyName"] = json!(policy);
            }
            cluster::apply(client, &p, false)
                .await
                .map_err(anyhow::Error::msg)?;
        }
    }
    Ok(())
}

/// The floor: one policy, one JSONPatch op setting the annotation the other series check.
async fn install_floor(client: &Client, id: &str) -> Result<()> {
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": id},
        "spec": {
            "failurePolicy": "Fail", "reinvocationPolicy": "Never",
            "matchConstraints": {
                "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                   "operations": ["CREATE"], "resources": ["pods"]}],
                "namespaceSelector": {"matchLabels": {LABEL: id}}
            },
            "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression":
                "[JSONPatch{op: 'add', path: '/metadata/annotations', value: {'reaper.dev/injected': 'inject:app'}}]"}}]
        }
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": id}, "spec": {"policyName": id}
    });
    for o in [policy, binding] {
        cluster::apply(client, &o, false)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let n: usize = std::env::var("ENGINE_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let cp = ControlPlane::start().map_err(anyhow::Error::msg)?;
    let client = cp.client().await;
    cp.install_crds(&client).await;

    let webhook_objs = render("webhook");
    let (_webhook, port, ca) = start_webhook(&cp, &webhook_objs).await?;
    let (wh, pol, both) = (unique_name("wh"), unique_name("pol"), unique_name("both"));
    register(&client, &webhook_objs, &wh, port, &ca).await?;
    install_policies(&client, &render("policy"), &pol).await?;
    let both_objs = render("both");
    install_policies(&client, &both_objs, &both).await?;
    register(&client, &both_objs, &both, port, &ca).await?;

    let floor = unique_name("floor");
    install_floor(&client, &floor).await?;

    let mut series: Vec<(&str, Api<Pod>, Vec<Duration>)> = Vec::new();
    for (name, id) in [
        ("none", None),
        ("webhook", Some(&wh)),
        ("policy", Some(&pol)),
        ("both", Some(&both)),
        ("floor", Some(&floor)),
    ] {
        let ns = match id {
            Some(id) => {
                cp.ns_with_labels(
                    &client,
                    name,
                    &[("reaper.dev/inject", "enabled"), (LABEL, id.as_str())],
                )
                .await
            }
            None => cp.ns(&client, name).await,
        };
        series.push((
            name,
            Api::namespaced(client.clone(), &ns),
            Vec::with_capacity(n),
        ));
    }

    // Warm-up: connections, the webhook's TLS session, admission caches, and until every
    // registration and policy is in effect.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, api, _) in &series[1..] {
        while !create(api).await?.1 {
            if Instant::now() > deadline {
                bail!("{name}: no pod came back wrapped within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for _ in 0..WARMUP {
        for (_, api, _) in &series {
            create(api).await?;
        }
    }

    let k = series.len();
    for i in 0..n {
        // Rotate which goes first, so no series always follows another.
        for j in 0..k {
            let s = &mut series[(i + j) % k];
            let (d, wrapped) = create(&s.1).await?;
            if wrapped != (s.0 != "none") {
                bail!("{}: pod {i} wrapped: {wrapped}", s.0);
            }
            s.2.push(d);
        }
    }
    for s in &mut series {
        s.2.sort();
    }
    println!(
        "pod create through kube-apiserver, {n} pods per series (warm: {WARMUP} each before), \
         webhook {}",
        webhook_bin().display()
    );
    println!(
        "{:<10}{:>9}{:>9}{:>9}{:>9}{:>9}{:>11}{:>11}",
        "", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms", "p50 +ms", "p99 +ms"
    );
    let mean = |v: &[Duration]| ms(v.iter().sum::<Duration>()) / v.len() as f64;
    let base = series[0].2.clone();
    let delta = |v: &[Duration], p| ms(percentile(v, p)) - ms(percentile(&base, p));
    for (name, _, v) in &series {
        println!(
            "{name:<10}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>+11.2}{:>+11.2}",
            ms(percentile(v, 0.50)),
            ms(percentile(v, 0.90)),
            ms(percentile(v, 0.99)),
            ms(*v.last().unwrap()),
            mean(v),
            delta(v, 0.50),
            delta(v, 0.99),
        );
    }
    let of = |name: &str| &series.iter().find(|s| s.0 == name).unwrap().2;
    for p in [0.50, 0.99] {
        let (w, pl, b, f) = (of("webhook"), of("policy"), of("both"), of("floor"));
        println!(
            "p{:.0}: policy/none {:.2}x, webhook/none {:.2}x, both/none {:.2}x, floor/none {:.2}x; \
             policy's delta / webhook's delta {:.2}; policy's delta over the floor {:+.2} ms",
            p * 100.0,
            ms(percentile(pl, p)) / ms(percentile(&base, p)),
            ms(percentile(w, p)) / ms(percentile(&base, p)),
            ms(percentile(b, p)) / ms(percentile(&base, p)),
            ms(percentile(f, p)) / ms(percentile(&base, p)),
            delta(pl, p) / delta(w, p),
            delta(pl, p) - delta(f, p),
        );
    }
    println!("target: the policy install adds <= 1 ms at p50");
    cp.shutdown();
    Ok(())
}
