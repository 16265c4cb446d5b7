//! `make bench-latency`: what the webhook adds to pod creation, end to end through a real
//! kube-apiserver (etcd + kube-apiserver from `make tools`, tests/support/control_plane.rs).
//!
//! One webhook process (`reaper-controller webhook`, `REAPER_CONTROLLER_BIN`, default
//! target/debug/reaper-controller) registered with the chart's settings for one opted-in
//! namespace; the same pods are created in it and in a namespace that is not opted in,
//! interleaved (so both see the same API server and etcd conditions), after a warm-up. The pods
//! set `command`, so no registry lookup happens (warm cache). A third series goes through the
//! webhook with `reaper.dev/mode: off` (called, answers without a patch), which splits the delta
//! into the cost of a webhook call as such and the cost of the mutation. Prints p50/p90/p99/max
//! of each and the deltas; nothing is asserted (target: at most +3 ms at p99).
//!
//! `LATENCY_PODS` (default 300) creations per side.
use reaper_test_support::control_plane;
use reaper_test_support::stats::{Summary, command_pod, count_from_env, timed_create};

use anyhow::{Context, Result, bail};
use control_plane::{ChildGuard, ControlPlane, TestCa, free_port, unique_name};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::time::{Duration, Instant};

const WARMUP: usize = 30;

/// Creates one pod (`reaper.dev/mode: off` with `off`); its wall time and whether the webhook
/// mutated it.
async fn create(api: &Api<Pod>, off: bool) -> Result<(Duration, bool)> {
    let annotations = if off {
        json!({reaper::keys::ANNOTATION_MODE: "off"})
    } else {
        json!({})
    };
    let (took, stored) = timed_create(api, &command_pod(&unique_name("lat"), annotations))
        .await
        .context("pod create")?;
    Ok((
        took,
        stored
            .annotations()
            .contains_key(reaper::keys::ANNOTATION_INJECTED),
    ))
}

/// The webhook's own `reaper_webhook_request_duration_seconds` (sum, count) from its /metrics.
async fn handler_time(admin: u16) -> Result<(f64, f64)> {
    let text = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await?
        .text()
        .await?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    match (
        value("reaper_webhook_request_duration_seconds_sum"),
        value("reaper_webhook_request_duration_seconds_count"),
    ) {
        (Some(sum), Some(count)) => Ok((sum, count)),
        _ => bail!("no reaper_webhook_request_duration_seconds in /metrics"),
    }
}

async fn start_webhook(cp: &ControlPlane, client: &Client) -> Result<(ChildGuard, String, u16)> {
    let dir = cp.dir().join(unique_name("latency"));
    std::fs::create_dir_all(&dir)?;
    let ca = TestCa::new("latency bench CA");
    let pair = ca.issue_server(&["127.0.0.1"]);
    std::fs::write(dir.join("tls.crt"), &pair.cert_pem)?;
    std::fs::write(dir.join("tls.key"), &pair.key_pem)?;
    let (port, admin) = (free_port(), free_port());
    let bin = control_plane::reaper_controller_bin();
    if !bin.is_file() {
        bail!(
            "{} is missing: `cargo build --bin reaper-controller` (or set REAPER_CONTROLLER_BIN)",
            bin.display()
        );
    }
    let mut cmd = cp.command(&bin);
    cmd.args([
        "--log-level",
        "warn",
        "webhook",
        &format!("--listen=127.0.0.1:{port}"),
        &format!("--admin-listen=127.0.0.1:{admin}"),
        &format!("--tls-cert={}", dir.join("tls.crt").display()),
        &format!("--tls-key={}", dir.join("tls.key").display()),
        "--reaper-image=ghcr.io/reaper-dev/reaper:0.1.0",
    ])
    .env("POD_NAMESPACE", "reaper-system")
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
    // The chart's registration (failurePolicy Ignore, timeout 5 s, CEL mirror-pod condition),
    // by URL, for the bench's namespace label only.
    let id = unique_name("bench");
    let mwc = control_plane::webhook_registration(
        &id,
        &format!("https://127.0.0.1:{port}/mutate"),
        &ca.cert_pem(),
        &[("reaper.dev/inject", "enabled"), ("reaper.dev/bench", &id)],
        "Ignore",
    );
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mwc)
        .await
        .context("registering the webhook")?;
    Ok((child, id, admin))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let n = count_from_env("LATENCY_PODS", 300);
    let cp = ControlPlane::start().map_err(anyhow::Error::msg)?;
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let (_webhook, id, admin) = start_webhook(&cp, &client).await?;
    let with_ns = cp
        .ns_with_labels(
            &client,
            "with",
            &[("reaper.dev/inject", "enabled"), ("reaper.dev/bench", &id)],
        )
        .await;
    let without_ns = cp.ns(&client, "without").await;
    let with: Api<Pod> = Api::namespaced(client.clone(), &with_ns);
    let without: Api<Pod> = Api::namespaced(client.clone(), &without_ns);

    // Warm-up: connections, the webhook's TLS session, the API server's admission caches, and
    // until the registration is in effect.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !create(&with, false).await?.1 {
        if Instant::now() > deadline {
            bail!("the webhook never mutated a pod");
        }
    }
    for _ in 0..WARMUP {
        create(&with, false).await?;
        create(&with, true).await?;
        create(&without, false).await?;
    }

    let (sum0, count0) = handler_time(admin).await?;
    let (mut a, mut b, mut c) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for i in 0..n {
        // Rotate which goes first, so no series always follows another.
        for k in 0..3 {
            match (i + k) % 3 {
                0 => {
                    let (d, mutated) = create(&with, false).await?;
                    if !mutated {
                        bail!(
                            "pod {i} in the opted-in namespace was not mutated (webhook failed open?)"
                        );
                    }
                    a.push(d);
                }
                1 => {
                    let (d, mutated) = create(&with, true).await?;
                    if mutated {
                        bail!("pod {i} with reaper.dev/mode=off was mutated");
                    }
                    c.push(d);
                }
                _ => {
                    let (d, mutated) = create(&without, false).await?;
                    if mutated {
                        bail!("pod {i} in the plain namespace was mutated");
                    }
                    b.push(d);
                }
            }
        }
    }
    a.sort();
    b.sort();
    c.sort();
    println!(
        "pod create through kube-apiserver, {n} pods each (warm: {WARMUP} each before), webhook {}",
        control_plane::reaper_controller_bin().display()
    );
    println!(
        "{:<16}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"
    );
    for (name, v) in [
        ("with webhook", &a),
        ("called, mode off", &c),
        ("without", &b),
    ] {
        let s = Summary::of(v);
        println!(
            "{name:<16}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
            s.p50, s.p90, s.p99, s.max, s.mean
        );
    }
    let without = Summary::of(&b);
    for (name, v) in [("delta", &a), ("delta (off)", &c)] {
        let s = Summary::of(v);
        println!(
            "{name:<16}{:>+10.2}{:>+10.2}{:>+10.2}{:>10}{:>+10.2}",
            s.p50 - without.p50,
            s.p90 - without.p90,
            s.p99 - without.p99,
            "",
            s.mean - without.mean
        );
    }
    let (sum1, count1) = handler_time(admin).await?;
    println!(
        "webhook handler (its own histogram, decode + plan + encode): mean {:.3} ms over {} requests \
         ({:.2} per pod through the webhook); the rest of the delta is the API server's side of the calls (TLS, HTTP, \
         patch application, re-running admission)",
        (sum1 - sum0) / (count1 - count0).max(1.0) * 1e3,
        count1 - count0,
        (count1 - count0) / (2 * n) as f64
    );
    println!("target: p99 delta <= +3 ms");
    cp.shutdown();
    Ok(())
}
