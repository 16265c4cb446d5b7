//! 60 s of pod creations through the API server at 100 pods/s, a third of them naming an image
//! whose argv the webhook must look up in a registry, against two webhook replicas behind a TCP
//! balancer (what a Service and kube-proxy are to the API server). The registration uses
//! `failurePolicy: Fail`, so any admission that does not get an answer is a rejected pod. Meanwhile:
//! - t = 10 s: the serving certificate is rotated (new pair, same CA: what the operator does);
//! - t = 20 s: one replica is stopped as the kubelet stops a pod (SIGTERM), t = 25 s started again;
//! - t = 35–45 s: the registry stalls (every byte to it waits 20 s) while pods name new tags.
//!
//! Done when 0 pods are rejected, every pod is mutated (annotated `inject:` or, for lookups cut
//! short by the stall, the policy's fallback `share`), and 100 pods/s were sustained; prints
//! p50/p99/max create latency (client side: API server, etcd and the webhook together).
use crate::parts::{Replica, injected, write_pair};
use crate::{HEAVY, private_control_plane};
use reaper_test_support as support;
use support::stats::{ms, percentile};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::control_plane::{self, TestCa};
use support::registry::{DelayProxy, ImageSpec, TestRegistry};
use tokio::net::{TcpListener, TcpStream};

const RATE: u64 = 100;
const LOAD: Duration = Duration::from_secs(60);
/// Tags pushed for the stall window, one per second of it: each is a lookup nobody made before.
const STALL_TAGS: u64 = 10;
const STALL_FROM: Duration = Duration::from_secs(35);

/// Each connection goes to the next backend that accepts one: kube-proxy with endpoints that
/// leave as soon as a replica stops listening.
async fn balancer(backends: Vec<u16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let next = Arc::new(AtomicUsize::new(0));
        while let Ok((mut client, _)) = listener.accept().await {
            let (backends, next) = (backends.clone(), next.clone());
            tokio::spawn(async move {
                let first = next.fetch_add(1, Ordering::Relaxed);
                for i in 0..backends.len() {
                    let port = backends[(first + i) % backends.len()];
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                }
            });
        }
    });
    port
}

/// What happened to one pod create.
struct Outcome {
    at: Duration,
    latency: Duration,
    result: Result<String, String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_at_100_pods_per_second_survives_rotation_replica_loss_and_a_stalled_registry() {
    let _heavy = HEAVY.lock().await;
    let Some(cp) = private_control_plane() else {
        return;
    };
    let client = cp.client().await;
    cp.install_crds(&client).await;

    let registry = TestRegistry::start();
    let image = ImageSpec::new(Some(&["/app"]), Some(&["--serve"]));
    registry.push_image("app", "warm", &image);
    for t in 0..STALL_TAGS {
        registry.push_image("app", &format!("stall-{t}"), &image);
    }
    let proxy = DelayProxy::start(&registry.addr).await;

    let ca = TestCa::new("reaper load test CA");
    let certs = cp.dir().join("webhook-certs");
    std::fs::create_dir_all(&certs).unwrap();
    write_pair(&ca, &certs);
    let mut a = Replica::start(&cp, &certs, &proxy.addr, "webhook-a").await;
    let b = Replica::start(&cp, &certs, &proxy.addr, "webhook-b").await;
    let port = balancer(vec![a.port, b.port]).await;
    let mwc = control_plane::webhook_registration(
        "reaper-load",
        &format!("https://127.0.0.1:{port}/mutate"),
        &ca.cert_pem(),
        &[("reaper.dev/inject", "enabled")],
        "Fail",
    );
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mwc)
        .await
        .unwrap();
    let ns = cp
        .ns_with_labels(&client, "load", &[("reaper.dev/inject", "enabled")])
        .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // The registration is live once a pod comes back mutated; the warm tag is then cached.
    let warm = proxy.image("app", "warm");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "probe-"},
            "spec": {"containers": [{"name": "app", "image": warm}]}
        }))
        .unwrap();
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        if let Ok(p) = pods.create(&dry, &p).await
            && injected(&p).starts_with("inject:")
        {
            break;
        }
        assert!(Instant::now() < deadline, "webhook registration not live");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The faults, on their own schedule.
    let started = Instant::now();
    let faults = {
        let (proxy, certs) = (proxy.clone(), certs.clone());
        let at = move |t: u64| tokio::time::sleep_until((started + Duration::from_secs(t)).into());
        async move {
            at(10).await;
            write_pair(&ca, &certs);
            at(20).await;
            let stop = a.stop().await;
            at(25).await;
            a.spawn().await;
            at(35).await;
            proxy.set_delay(Duration::from_secs(20));
            at(45).await;
            proxy.set_delay(Duration::ZERO);
            (a, stop)
        }
    };
    let faults = tokio::spawn(faults);

    // Open loop: one create every 10 ms whatever the answers do, at most 512 outstanding.
    let total = RATE * LOAD.as_secs();
    let outstanding = Arc::new(tokio::sync::Semaphore::new(512));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..total {
        tick.tick().await;
        let at = started.elapsed();
        let image = if i % 3 != 0 {
            None
        } else if at >= STALL_FROM && at < STALL_FROM + Duration::from_secs(STALL_TAGS) {
            let t = (at - STALL_FROM).as_secs();
            Some(proxy.image("app", &format!("stall-{t}")))
        } else {
            Some(warm.clone())
        };
        let container = match image {
            Some(image) => json!({"name": "app", "image": image}),
            None => json!({"name": "app", "image": "ghcr.io/acme/app:1", "command": ["/app"]}),
        };
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p-{i}")},
            "spec": {"containers": [container]}
        }))
        .unwrap();
        let permit = outstanding.clone().acquire_owned().await.unwrap();
        let pods = pods.clone();
        creates.spawn(async move {
            let _permit = permit;
            let sent = Instant::now();
            let result = pods
                .create(&PostParams::default(), &pod)
                .await
                .map(|p| injected(&p).to_string())
                .map_err(|e| e.to_string());
            Outcome {
                at,
                latency: sent.elapsed(),
                result,
            }
        });
    }
    let scheduled_in = started.elapsed();
    let outcomes: Vec<Outcome> = creates.join_all().await;
    let finished_in = started.elapsed();
    let (_a, stop_took) = faults.await.unwrap();
    drop(b);

    let rejected: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    let share = outcomes
        .iter()
        .filter(|o| o.result.as_deref() == Ok("share"))
        .count();
    let unmutated: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| {
            o.result
                .as_ref()
                .is_ok_and(|a| !(a.starts_with("inject:") || a == "share"))
        })
        .collect();
    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    latencies.sort();
    let window = |from: u64, to: u64| {
        let mut l: Vec<Duration> = outcomes
            .iter()
            .filter(|o| o.at >= Duration::from_secs(from) && o.at < Duration::from_secs(to))
            .map(|o| o.latency)
            .collect();
        l.sort();
        percentile(&l, 0.99)
    };
    println!(
        "FIGURE admission-load pods={} rejected={} unmutated={} share-fallbacks={share} \
         rate={:.1}/s (scheduled in {:.1} s, all answered in {:.1} s) \
         latency p50={:.1}ms p99={:.1}ms max={:.1}ms; p99 by window: steady(0-10s)={:.1}ms \
         rotation(10-15s)={:.1}ms replica-stop(20-30s)={:.1}ms stall(35-45s)={:.1}ms; \
         replica stopped in {:.2} s",
        outcomes.len(),
        rejected.len(),
        unmutated.len(),
        outcomes.len() as f64 / finished_in.as_secs_f64(),
        scheduled_in.as_secs_f64(),
        finished_in.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
        ms(window(0, 10)),
        ms(window(10, 15)),
        ms(window(20, 30)),
        ms(window(35, 45)),
        stop_took.as_secs_f64(),
    );
    let sample = |v: &[&Outcome]| -> Vec<String> {
        v.iter()
            .take(5)
            .map(|o| format!("t={:.1}s {:?}", o.at.as_secs_f64(), o.result))
            .collect()
    };
    assert!(rejected.is_empty(), "rejected: {:?}", sample(&rejected));
    assert!(
        unmutated.is_empty(),
        "not mutated: {:?}",
        sample(&unmutated)
    );
    assert!(share > 0, "no lookup was cut short by the stalled registry");
    assert!(
        scheduled_in < LOAD + Duration::from_secs(3),
        "could not keep {RATE} pods/s: {total} creates took {scheduled_in:?} to send"
    );
}
