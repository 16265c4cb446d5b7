//! `make bench-node`: what Reaper costs and saves on a real node (tests/support/node.rs), all
//! series in one run, interleaved round by round so drift hits each alike:
//! - create→Running and create→Ready of the same pod unmutated, with an emptyDir mounted (the
//!   control for what any volume costs: the kubelet's volume manager), with a no-op init container added
//!   by hand (the control: what one extra container start costs here), in share mode, wrapped with
//!   a declared command (inject: the `reaper-install` init container copies the binary), wrapped
//!   the same way with the reaper image mounted as an image volume (image: no init container),
//!   and wrapped after a registry lookup (auto, warm cache; on this node the webhook detects image
//!   volumes, so auto mounts the image too);
//! - `delete` duration of each series (PID 1 `sleep`, grace period 30 s; a series' pods deleted
//!   at once, as a rollout or a namespace deletion does);
//! - the agent's CPU and RSS on the node while 50 pods run.
//!
//! Prints a Markdown table and ends with one summary line:
//! `bench-node: delete-s unmutated=A share=B inject=C image=D auto=E; running-p50-ms unmutated=F volume=G noop-init=H share=I inject=J image=K auto=L`
//! `BENCH_PODS` sets the pods per series (default 20).
use reaper_test_support as support;
use reaper_test_support::stats::{count_from_env, ms, percentile};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::control_plane;
use support::node::{Chart, Node};

const GRACE_SECONDS: u64 = 30;
const LOAD_PODS: usize = 50;
const AGENT_SAMPLE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Series {
    Unmutated,
    /// Unmutated, with an emptyDir mounted: the pod waits for the kubelet's volume manager (it
    /// polls every 300 ms) as every mutated pod with a volume does (the control for `image`).
    Volume,
    NoopInit,
    Share,
    Inject,
    Image,
    Auto,
}

impl Series {
    const ALL: [Series; 7] = [
        Series::Unmutated,
        Series::Volume,
        Series::NoopInit,
        Series::Share,
        Series::Inject,
        Series::Image,
        Series::Auto,
    ];

    fn name(self) -> &'static str {
        match self {
            Series::Unmutated => "unmutated",
            Series::Volume => "volume",
            Series::NoopInit => "noop-init",
            Series::Share => "share",
            Series::Inject => "inject",
            Series::Image => "image",
            Series::Auto => "auto",
        }
    }

    /// Opted-in namespace (the webhook mutates) or not.
    fn opted_in(self) -> bool {
        !matches!(self, Series::Unmutated | Series::Volume | Series::NoopInit)
    }
}

struct Sample {
    running: Duration,
    ready: Duration,
}

fn pod(series: Series, name: &str, node: &Node) -> Result<Pod> {
    let security = json!({"runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": false,
                          "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}});
    // No probes: an exec probe per pod per second would load the node more than what is measured.
    let mut app =
        json!({"name": "app", "image": node.images.workload, "securityContext": security});
    if series != Series::Auto {
        app["command"] = json!(["sleep", "3600"]);
    }
    let mut spec = json!({"containers": [app], "terminationGracePeriodSeconds": GRACE_SECONDS,
                          "automountServiceAccountToken": false});
    if series == Series::Volume {
        spec["containers"][0]["volumeMounts"] = json!([{"name": "v", "mountPath": "/v"}]);
        spec["volumes"] = json!([{"name": "v", "emptyDir": {}}]);
    }
    if series == Series::NoopInit {
        // The same image and shape as the injected installer, doing nothing.
        spec["initContainers"] = json!([{
            "name": "noop", "image": node.images.reaper(), "command": ["/reaper", "--version"],
            "securityContext": security, "volumeMounts": [{"name": "noop", "mountPath": "/noop"}]
        }]);
        spec["volumes"] = json!([{"name": "noop", "emptyDir": {}}]);
    }
    let mode = match series {
        Series::Share => Some("share"),
        Series::Inject => Some("inject"),
        Series::Image => Some("image"),
        Series::Auto => Some("auto"),
        _ => None,
    };
    let annotations = mode.map_or(json!({}), |m| json!({"reaper.dev/mode": m}));
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations}, "spec": spec
    }))?)
}

fn condition_true(p: &Pod, t: &str) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
}

/// Creates the pod and polls it (every 20 ms) until Running and until Ready.
async fn create_and_time(api: &Api<Pod>, p: &Pod, expect_mutated: bool) -> Result<Sample> {
    let t = Instant::now();
    let stored = api.create(&PostParams::default(), p).await?;
    let mutated = stored.annotations().contains_key("reaper.dev/injected");
    if mutated != expect_mutated {
        bail!(
            "{}: mutated={mutated}, expected {expect_mutated}",
            p.name_any()
        );
    }
    let mut running = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = api.get(&p.name_any()).await?;
        let phase = now.status.as_ref().and_then(|s| s.phase.clone());
        if running.is_none() && phase.as_deref() == Some("Running") {
            running = Some(t.elapsed());
        }
        if let Some(running) = running
            && condition_true(&now, "Ready")
        {
            return Ok(Sample {
                running,
                ready: t.elapsed(),
            });
        }
        if Instant::now() > deadline {
            bail!("{} not Ready within 120 s: {:?}", p.name_any(), now.status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deletes every pod at once; seconds until each is gone.
async fn delete_all(api: &Api<Pod>, names: &[String]) -> Result<Vec<Duration>> {
    let one = |name: String| {
        let api = api.clone();
        async move {
            let t = Instant::now();
            api.delete(&name, &DeleteParams::default()).await?;
            let deadline = Instant::now() + Duration::from_secs(GRACE_SECONDS + 60);
            while api.get_opt(&name).await?.is_some() {
                if Instant::now() > deadline {
                    bail!("{name} still there after {:?}", t.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, anyhow::Error>(t.elapsed())
        }
    };
    futures::future::try_join_all(names.iter().cloned().map(one)).await
}

/// A random duration below `max`.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let r = RandomState::new().hash_one(Instant::now());
    Duration::from_nanos(r % max.as_nanos().max(1) as u64)
}

async fn namespace(client: &Client, name: &str, opted_in: bool) -> Result<()> {
    let labels = if opted_in {
        json!({"reaper.dev/inject": "enabled"})
    } else {
        json!({})
    };
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let sas = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), name);
    while sas.get_opt("default").await?.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// utime + stime (clock ticks) and VmRSS (kB) of a process.
fn cpu_and_rss(pid: i32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks, rss))
}

/// The agent's `reaper-controller agent` process on the node.
async fn agent_pid(node: &Node, client: &Client) -> Result<i32> {
    let pods = Api::<Pod>::namespaced(client.clone(), "reaper-system")
        .list(&ListParams::default().labels("app.kubernetes.io/component=agent"))
        .await?;
    for p in &pods.items {
        for pid in node.pod_pids(&p.uid().unwrap_or_default()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("reaper-controller")
                && cmdline.contains("agent")
                && !cmdline.starts_with("/reaper\0")
            {
                return Ok(pid);
            }
        }
    }
    bail!("no agent process found on the node")
}

async fn bench(node: &Node) -> Result<()> {
    let client = node.client().await;
    Chart::default().install(node, &client, &[]).await;
    let per_series = count_from_env("BENCH_PODS", 20);
    let mut namespaces = Vec::new();
    for s in Series::ALL {
        let name = control_plane::unique_name(&format!("bench-{}", s.name()));
        namespace(&client, &name, s.opted_in()).await?;
        namespaces.push(name);
    }
    support::node::wait_webhook_answers(&client).await;
    // Warm-up: the images are on the node and the webhook's image cache holds the lookup.
    for (s, ns) in Series::ALL.iter().zip(&namespaces) {
        let api = Api::<Pod>::namespaced(client.clone(), ns);
        let warm = pod(*s, "warm", node)?;
        create_and_time(&api, &warm, s.opted_in()).await?;
        let stored = api.get("warm").await?;
        let spec = stored.spec.unwrap_or_default();
        let image_volume = spec.volumes.iter().flatten().any(|v| v.image.is_some());
        let init = spec.init_containers.iter().flatten().count();
        eprintln!(
            "bench-node: {} pods: image volume {image_volume}, init containers {init}",
            s.name()
        );
        if *s == Series::Image && (!image_volume || init > 0)
            || *s == Series::Inject && (image_volume || init != 1)
        {
            bail!("{} pods are not wrapped as the series says", s.name());
        }
    }
    let mut samples: Vec<Vec<Sample>> = Series::ALL.iter().map(|_| Vec::new()).collect();
    eprintln!(
        "bench-node: {per_series} pods per series, {} series",
        Series::ALL.len()
    );
    for round in 0..per_series {
        for (i, s) in Series::ALL.iter().enumerate() {
            // The kubelet notices exited (init) containers on its 1 s relist: a random phase per
            // pod, so a fixed cadence does not put one series always early or late in it.
            tokio::time::sleep(jitter(Duration::from_secs(1))).await;
            let api = Api::<Pod>::namespaced(client.clone(), &namespaces[i]);
            let p = pod(*s, &format!("p{round}"), node)?;
            samples[i].push(
                create_and_time(&api, &p, s.opted_in())
                    .await
                    .with_context(|| format!("{} round {round}", s.name()))?,
            );
        }
    }
    let mut deletes = Vec::new();
    for (i, s) in Series::ALL.iter().enumerate() {
        let api = Api::<Pod>::namespaced(client.clone(), &namespaces[i]);
        let mut names: Vec<String> = (0..per_series).map(|r| format!("p{r}")).collect();
        names.push("warm".into());
        eprintln!("bench-node: deleting the {} pods", s.name());
        let mut d = delete_all(&api, &names).await?;
        d.sort();
        deletes.push(d);
    }

    // The agent under load: 50 pods (half of them leaving zombies), one minute of scans.
    let load_ns = control_plane::unique_name("bench-load");
    namespace(&client, &load_ns, false).await?;
    let api = Api::<Pod>::namespaced(client.clone(), &load_ns);
    for i in 0..LOAD_PODS {
        let mut p: Value =
            serde_json::to_value(pod(Series::Unmutated, &format!("load-{i}"), node)?)?;
        if i % 2 == 0 {
            p["spec"]["containers"][0]["command"] = json!([
                "sh",
                "-c",
                "i=0; while [ $i -lt 5 ]; do sh -c 'sleep 1 &'; i=$((i+1)); done; exec sleep 3600"
            ]);
        }
        p["spec"]["terminationGracePeriodSeconds"] = json!(0);
        api.create(&PostParams::default(), &serde_json::from_value(p)?)
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let list = api.list(&ListParams::default()).await?;
        let running = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running == LOAD_PODS {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {running}/{LOAD_PODS} load pods Running within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let agent = agent_pid(node, &client).await?;
    let (t0, _) = cpu_and_rss(agent).context("agent /proc")?;
    let began = Instant::now();
    let mut peak_rss = 0;
    while began.elapsed() < AGENT_SAMPLE {
        if let Some((_, rss)) = cpu_and_rss(agent) {
            peak_rss = peak_rss.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (t1, rss) = cpu_and_rss(agent).context("agent /proc")?;
    let hz = support::process::clock_ticks_per_second() as f64;
    let cpu_ms_per_s = (t1 - t0) as f64 / hz * 1e3 / began.elapsed().as_secs_f64();
    let mut processes = 0;
    for p in api.list(&ListParams::default()).await?.items {
        processes += node.pod_pids(&p.uid().unwrap_or_default()).len();
    }
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&load_ns, &DeleteParams::default())
        .await;

    // Report.
    println!(
        "\n| series ({per_series} pods) | create→Running p50 | p90 | create→Ready p50 | p90 | delete p50 ({per_series} at once) | max |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut running_p50 = Vec::new();
    for (i, s) in Series::ALL.iter().enumerate() {
        let mut run: Vec<Duration> = samples[i].iter().map(|x| x.running).collect();
        let mut ready: Vec<Duration> = samples[i].iter().map(|x| x.ready).collect();
        run.sort();
        ready.sort();
        running_p50.push(percentile(&run, 0.5));
        println!(
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} s | {:.2} s |",
            s.name(),
            ms(percentile(&run, 0.5)),
            ms(percentile(&run, 0.9)),
            ms(percentile(&ready, 0.5)),
            ms(percentile(&ready, 0.9)),
            percentile(&deletes[i], 0.5).as_secs_f64(),
            deletes[i].last().unwrap().as_secs_f64()
        );
    }
    let at = |s: Series| Series::ALL.iter().position(|x| *x == s).unwrap();
    let p50 = |s: Series| running_p50[at(s)];
    let base = p50(Series::Unmutated);
    let adds = |s: Series| p50(s).saturating_sub(base);
    let noop_adds = adds(Series::NoopInit);
    let inject_adds = adds(Series::Inject);
    let ratio = ms(inject_adds) / ms(noop_adds).max(1.0);
    println!(
        "\nAdded to create→Running p50 over unmutated: a volume +{:.0} ms, no-op init container +{:.0} ms, \
         share +{:.0} ms, inject +{:.0} ms, image +{:.0} ms, auto +{:.0} ms. inject / no-op init = {ratio:.2} \
         (target ≤ 1.10: {}).",
        ms(adds(Series::Volume)),
        ms(noop_adds),
        ms(adds(Series::Share)),
        ms(inject_adds),
        ms(adds(Series::Image)),
        ms(adds(Series::Auto)),
        if ratio <= 1.10 { "met" } else { "NOT met" }
    );
    println!("\n| series | create→Running p50 / unmutated |\n|---|---|");
    for (i, s) in Series::ALL.iter().enumerate() {
        println!(
            "| {} | {:.2} |",
            s.name(),
            ms(running_p50[i]) / ms(base).max(1.0)
        );
    }
    // Image volumes: what the image-volume wrap adds, against what the init container adds; and
    // the same over the pod with a volume (what any volume costs at the kubelet here).
    let image_share = ms(adds(Series::Image)) / ms(inject_adds).max(1.0);
    let over_volume = |s: Series| p50(s).saturating_sub(p50(Series::Volume));
    let image_share_vol = ms(over_volume(Series::Image)) / ms(over_volume(Series::Inject)).max(1.0);
    let met = |r: f64| if r <= 1.0 / 3.0 { "met" } else { "NOT met" };
    println!(
        "image adds {:.0} ms, inject (init container) adds {:.0} ms: image / inject = {image_share:.2} \
         (target ≤ 0.33: {}). Over the pod with a volume: image +{:.0} ms, inject +{:.0} ms, ratio \
         {image_share_vol:.2} ({}).",
        ms(adds(Series::Image)),
        ms(inject_adds),
        met(image_share),
        ms(over_volume(Series::Image)),
        ms(over_volume(Series::Inject)),
        met(image_share_vol)
    );
    println!(
        "Agent with {LOAD_PODS} pods running ({processes} processes in them, 25 pods holding 5 zombies each), \
         scanning every 2 s for {} s: {cpu_ms_per_s:.1} ms CPU per second ({:.2}% of a core), RSS {} kB (peak {} kB).",
        AGENT_SAMPLE.as_secs(),
        cpu_ms_per_s / 10.0,
        rss,
        peak_rss
    );
    let d = |s: Series| percentile(&deletes[at(s)], 0.5).as_secs_f64();
    let r = |s: Series| ms(p50(s));
    println!(
        "bench-node: delete-s unmutated={:.2} share={:.2} inject={:.2} image={:.2} auto={:.2}; \
         running-p50-ms unmutated={:.0} volume={:.0} noop-init={:.0} share={:.0} inject={:.0} image={:.0} auto={:.0}",
        d(Series::Unmutated),
        d(Series::Share),
        d(Series::Inject),
        d(Series::Image),
        d(Series::Auto),
        r(Series::Unmutated),
        r(Series::Volume),
        r(Series::NoopInit),
        r(Series::Share),
        r(Series::Inject),
        r(Series::Image),
        r(Series::Auto)
    );
    for ns in namespaces {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(&ns, &DeleteParams::default())
            .await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    if let Some(why) = support::node::unavailable() {
        bail!("bench-node needs a node: {why}");
    }
    let owner = control_plane::owner_thread("bench-node").map_err(anyhow::Error::msg)?;
    let node = tokio::task::spawn_blocking(move || Node::start(owner))
        .await?
        .map_err(anyhow::Error::msg)?;
    let result = bench(&node).await;
    tokio::task::spawn_blocking(move || node.shutdown()).await?;
    result
}
