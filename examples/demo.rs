//! `make demo`: Reaper on a local control plane (etcd + kube-apiserver from `make tools`, the same
//! harness the integration tests use). Runs the steps below in order, prints what each did, then
//! keeps everything up until Ctrl-C (or exits at once with `DEMO_EXIT=1`).
//!
//! Adding a step: add a variant to [`Step`], its title, and its function in [`Demo::run`].
#[path = "../tests/support/control_plane.rs"]
mod control_plane;

use anyhow::{Context, Result};
use control_plane::ControlPlane;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use reaper::crd::ReaperPolicy;
use serde_json::Value;
use std::time::Instant;

/// Field manager for what the demo applies.
const MANAGER: &str = "reaper-demo";
/// The sample policy, shown to the user as a file they can edit and re-apply.
const SAMPLE_POLICY: &str = include_str!("demo-policy.yaml");

/// The demo, in order. Steps marked pending print what they will do once their component lands.
#[derive(Clone, Copy, Debug)]
enum Step {
    ControlPlane,
    Crds,
    Policy,
    Webhook,
    Operator,
    Agent,
    Pods,
}

impl Step {
    const ALL: [Step; 7] = [
        Step::ControlPlane,
        Step::Crds,
        Step::Policy,
        Step::Webhook,
        Step::Operator,
        Step::Agent,
        Step::Pods,
    ];

    fn title(self) -> &'static str {
        match self {
            Step::ControlPlane => "control plane (etcd + kube-apiserver on loopback)",
            Step::Crds => "CRDs (crds/*.yaml)",
            Step::Policy => "sample ReaperPolicy (examples/demo-policy.yaml)",
            Step::Webhook => "webhook (reaper-controller webhook + MutatingWebhookConfiguration)",
            Step::Operator => "operator (reaper-controller operator)",
            Step::Agent => "node agent (reaper-controller agent)",
            Step::Pods => "sample pods in an opted-in namespace: spec diff, annotation, status",
        }
    }
}

struct Demo {
    cp: ControlPlane,
    client: Client,
}

impl Demo {
    async fn run(&mut self, step: Step) -> Result<()> {
        match step {
            Step::ControlPlane => self.control_plane().await,
            Step::Crds => self.crds().await,
            Step::Policy => self.policy().await,
            Step::Webhook | Step::Operator | Step::Agent | Step::Pods => {
                println!("   (pending: added when this component lands)");
                Ok(())
            }
        }
    }

    async fn control_plane(&mut self) -> Result<()> {
        let v = self
            .client
            .apiserver_version()
            .await
            .context("GET /version")?;
        println!(
            "   Kubernetes {} ({}/{}), ready in {:.1} s",
            v.git_version,
            v.platform,
            v.go_version,
            self.cp.startup.as_secs_f64()
        );
        println!("   server     {}", self.cp.server);
        println!("   kubeconfig {}", self.cp.kubeconfig().display());
        Ok(())
    }

    async fn crds(&mut self) -> Result<()> {
        let files = read_crds()?;
        control_plane::install_crds(&self.client, files.clone()).await;
        let api = Api::<CustomResourceDefinition>::all(self.client.clone());
        for crd in files {
            let name = crd.metadata.name.unwrap_or_default();
            let live = api
                .get(&name)
                .await
                .with_context(|| format!("get {name}"))?;
            let established = live
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            let versions: Vec<String> = live.spec.versions.iter().map(|v| v.name.clone()).collect();
            println!(
                "   {name:<28} kind {:<13} scope {:<8} versions {} established {established}",
                live.spec.names.kind,
                live.spec.scope,
                versions.join(",")
            );
        }
        Ok(())
    }

    async fn policy(&mut self) -> Result<()> {
        let policy: ReaperPolicy =
            serde_yaml::from_str(SAMPLE_POLICY).context("parsing examples/demo-policy.yaml")?;
        let name = policy.metadata.name.clone().unwrap_or_default();
        Api::<ReaperPolicy>::all(self.client.clone())
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&policy),
            )
            .await
            .with_context(|| format!("applying ReaperPolicy {name}"))?;
        print_table(&self.client, "/apis/reaper.dev/v1alpha1/reaperpolicies").await
    }
}

/// The CRDs as `crds/*.yaml` holds them.
fn read_crds() -> Result<Vec<CustomResourceDefinition>> {
    let dir = control_plane::repo_root().join("crds");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {} (run `make crds`)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)?;
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        })
        .collect()
}

/// Prints a list the way `kubectl get` does, from the apiserver's Table representation.
async fn print_table(client: &Client, path: &str) -> Result<()> {
    let req = http::Request::get(path)
        .header(
            http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .body(Vec::new())?;
    let table: Value = serde_json::from_str(&client.request_text(req).await?)?;
    let mut rows: Vec<Vec<String>> = vec![
        table["columnDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap_or("").to_uppercase())
            .collect(),
    ];
    for row in table["rows"].as_array().into_iter().flatten() {
        rows.push(
            row["cells"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| match c {
                    Value::String(s) => s.clone(),
                    Value::Null => "<none>".into(),
                    other => other.to_string(),
                })
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("   {}", line.join("   ").trim_end());
    }
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
async fn stop_requested() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let began = Instant::now();
    println!("Reaper demo: {} steps", Step::ALL.len());
    println!("== 1. {}", Step::ControlPlane.title());
    // Blocking start (a few seconds); stopped (processes killed, temp dir removed) when `demo` drops.
    let cp = ControlPlane::start().map_err(anyhow::Error::msg)?;
    let client = cp.client().await;
    let mut demo = Demo { cp, client };
    for (i, step) in Step::ALL.into_iter().enumerate() {
        if i > 0 {
            println!("== {}. {}", i + 1, step.title());
        }
        demo.run(step)
            .await
            .with_context(|| format!("demo step {:?}", step))?;
    }
    // Quick check that the cluster answers what the steps set up.
    let policies = Api::<ReaperPolicy>::all(demo.client.clone())
        .list(&ListParams::default())
        .await?;
    println!(
        "Demo ready in {:.1} s: {} ReaperPolicy object(s).",
        began.elapsed().as_secs_f64(),
        policies.items.len()
    );
    if std::env::var("DEMO_EXIT").is_ok_and(|v| v == "1") {
        return Ok(());
    }
    println!(
        "Try: kubectl --kubeconfig {} get reaperpolicies,crds",
        demo.cp.kubeconfig().display()
    );
    println!("Ctrl-C stops everything.");
    stop_requested().await?;
    println!("stopping");
    drop(demo);
    Ok(())
}
