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
use reaper_test_support::chart::local::{self, LocalWebhook};
use reaper_test_support::chart::{self as chart_common, V, cluster};
use reaper_test_support::control_plane::{ControlPlane, reaper_controller_bin, unique_name};
use reaper_test_support::stats::{
    Summary, command_pod, count_from_env, ms, percentile, timed_create,
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde_json::json;
use std::time::{Duration, Instant};

const WARMUP: usize = 30;
const RELEASE_NS: &str = "reaper-system";
const LABEL: &str = "reaper.dev/bench-engine";

fn render(engine: &str) -> chart_common::Objects {
    chart_common::render("r", RELEASE_NS, &[V::Set("admission.engine", engine)])
}

/// Creates one pod; its wall time and whether it came back wrapped.
async fn create(api: &Api<Pod>) -> Result<(Duration, bool)> {
    let (took, stored) = timed_create(api, &command_pod(&unique_name("eng"), json!({})))
        .await
        .context("pod create")?;
    let wrapped = stored
        .annotations()
        .get(reaper::keys::ANNOTATION_INJECTED)
        .is_some_and(|v| v == "inject:app");
    Ok((took, wrapped))
}

/// The chart's webhook running here (its Deployment's args, logging at warn).
async fn start_webhook(cp: &ControlPlane, objs: &chart_common::Objects) -> Result<LocalWebhook> {
    let bin = reaper_controller_bin();
    if !bin.is_file() {
        bail!(
            "{} is missing: `cargo build --bin reaper-controller` (or set REAPER_CONTROLLER_BIN)",
            bin.display()
        );
    }
    Ok(LocalWebhook::start(cp, objs, RELEASE_NS, &["--log-level=warn"]).await)
}

/// The rendered webhook registration, by URL, for namespaces labelled `id`.
async fn register(
    client: &Client,
    objs: &chart_common::Objects,
    id: &str,
    w: &LocalWebhook,
) -> Result<()> {
    let mwc = local::registration(objs, id, w, LABEL, id);
    cluster::apply(client, &mwc, false)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

/// The rendered policies and bindings, renamed `<name>-<id>`, for namespaces labelled `id`.
async fn install_policies(client: &Client, objs: &chart_common::Objects, id: &str) -> Result<()> {
    for p in local::policies(objs, LABEL, id) {
        cluster::apply(client, &p, false)
            .await
            .map_err(anyhow::Error::msg)?;
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
    let n = count_from_env("ENGINE_PODS", 300);
    let cp = ControlPlane::start().map_err(anyhow::Error::msg)?;
    let client = cp.client().await;
    cp.install_crds(&client).await;

    let webhook_objs = render("webhook");
    let webhook = start_webhook(&cp, &webhook_objs).await?;
    let (wh, pol, both) = (unique_name("wh"), unique_name("pol"), unique_name("both"));
    register(&client, &webhook_objs, &wh, &webhook).await?;
    install_policies(&client, &render("policy"), &pol).await?;
    let both_objs = render("both");
    install_policies(&client, &both_objs, &both).await?;
    register(&client, &both_objs, &both, &webhook).await?;

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
        reaper_controller_bin().display()
    );
    println!(
        "{:<10}{:>9}{:>9}{:>9}{:>9}{:>9}{:>11}{:>11}",
        "", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms", "p50 +ms", "p99 +ms"
    );
    let base = series[0].2.clone();
    let delta = |v: &[Duration], p| ms(percentile(v, p)) - ms(percentile(&base, p));
    for (name, _, v) in &series {
        let s = Summary::of(v);
        println!(
            "{name:<10}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>+11.2}{:>+11.2}",
            s.p50,
            s.p90,
            s.p99,
            s.max,
            s.mean,
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
