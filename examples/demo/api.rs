//! The API-server-only demo (where no node can run: not root, no cgroups): Reaper on a local
//! control plane (etcd + kube-apiserver from `make tools`, the same harness the integration tests
//! use), its components as local processes. Shows admission, not execution. Runs the steps below
//! in order, prints what each did, then keeps everything up until Ctrl-C (or exits at once with
//! `DEMO_EXIT=1`).
//!
//! Adding a step: add a variant to [`Step`], its title, and its function in [`Demo::run`].
use crate::support::control_plane::{
    self, ChildGuard, ControlPlane, TestCa, free_port, reaper_controller_bin,
};
use crate::{SAMPLE_POLICY, stop_requested};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use reaper::crd::{ReaperPolicy, ZombieReport};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Field manager for what the demo applies.
const MANAGER: &str = "reaper-demo";
/// Namespace the sample pods go to (opted in with `reaper.dev/inject=enabled`).
const DEMO_NAMESPACE: &str = "demo";
/// The operator's namespace (Lease), as in the chart.
const OPERATOR_NAMESPACE: &str = "reaper-system";
/// The node name the local agent reports as (this machine stands in for one node).
const DEMO_NODE: &str = "demo-node";
/// What the injected init container would pull: no kubelet runs here, so it is never pulled.
const DEMO_REAPER_IMAGE: &str = "localhost/reaper/reaper:dev";

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
    /// Components run as local processes, killed when the demo ends.
    children: Vec<ChildGuard>,
}

impl Demo {
    async fn run(&mut self, step: Step) -> Result<()> {
        match step {
            Step::ControlPlane => self.control_plane().await,
            Step::Crds => self.crds().await,
            Step::Policy => self.policy().await,
            Step::Webhook => self.webhook().await,
            Step::Agent => self.agent().await,
            Step::Pods => self.pods().await,
            Step::Operator => self.operator().await,
        }
    }

    /// Starts `reaper-controller <args>` with the admin kubeconfig, logging to the demo dir, and
    /// waits for its `/readyz`.
    async fn component(&mut self, name: &str, args: &[String]) -> Result<u16> {
        let admin = free_port();
        let log = self.cp.dir().join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let mut cmd: Command = self.cp.command(reaper_controller_bin());
        cmd.arg(name)
            .args(args)
            .arg(format!("--admin-listen=127.0.0.1:{admin}"))
            .env("POD_NAMESPACE", "reaper-system")
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = ChildGuard::spawn(&mut cmd).with_context(|| {
            format!(
                "starting {} (run `make build`)",
                cmd.get_program().display()
            )
        })?;
        self.children.push(child);
        wait_ready(admin, &log).await?;
        println!(
            "   {name:<8} admin http://127.0.0.1:{admin}/metrics   log {}",
            log.display()
        );
        Ok(admin)
    }

    /// The webhook as a local process, registered the way the chart registers it (but by URL).
    async fn webhook(&mut self) -> Result<()> {
        let dir = self.cp.dir().join("webhook");
        std::fs::create_dir_all(&dir)?;
        let ca = TestCa::new("reaper demo webhook CA");
        let pair = ca.issue_server(&["127.0.0.1", "localhost"]);
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, &pair.cert_pem)?;
        std::fs::write(&key, &pair.key_pem)?;
        let port = free_port();
        let args = [
            format!("--listen=127.0.0.1:{port}"),
            format!("--tls-cert={}", cert.display()),
            format!("--tls-key={}", key.display()),
            format!("--reaper-image={DEMO_REAPER_IMAGE}"),
        ];
        self.component("webhook", &args).await?;
        // The chart's registration, by URL.
        let mwc = control_plane::webhook_registration(
            "reaper",
            &format!("https://127.0.0.1:{port}/mutate"),
            &ca.cert_pem(),
            &[("reaper.dev/inject", "enabled")],
            "Ignore",
        );
        Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .patch(
                "reaper",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&mwc),
            )
            .await
            .context("applying the MutatingWebhookConfiguration")?;
        println!("   MutatingWebhookConfiguration reaper -> https://127.0.0.1:{port}/mutate");
        println!(
            "   (namespaceSelector reaper.dev/inject=enabled, failurePolicy Ignore, pods CREATE)"
        );
        Ok(())
    }

    /// The agent scanning this machine's /proc as if it were a node, publishing its report.
    async fn agent(&mut self) -> Result<()> {
        // No kubelet registers a node here; the report's ownerReference needs a Node object.
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": DEMO_NODE, "labels": {"kubernetes.io/hostname": DEMO_NODE}},
        }))?;
        Api::<Node>::all(self.client.clone())
            .patch(
                DEMO_NODE,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&node),
            )
            .await
            .context("applying Node demo-node")?;
        let args = [
            format!("--node-name={DEMO_NODE}"),
            "--interval=5s".to_string(),
            "--report=true".to_string(),
        ];
        self.component("agent", &args).await?;
        let api = Api::<ZombieReport>::all(self.client.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        while api.get_opt(DEMO_NODE).await?.is_none() {
            if Instant::now() > deadline {
                bail!("no ZombieReport {DEMO_NODE} within 60 s (see the agent log)");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        print_table(&self.client, "/apis/reaper.dev/v1alpha1/zombiereports").await
    }

    /// The operator as a local process with leader election on (Lease `reaper-operator` in
    /// `reaper-system`); certificates stay with the webhook step's CA (no `--cert-secret`).
    async fn operator(&mut self) -> Result<()> {
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}
        }))?;
        Api::<Namespace>::all(self.client.clone())
            .patch(
                OPERATOR_NAMESPACE,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&ns),
            )
            .await
            .with_context(|| format!("applying Namespace {OPERATOR_NAMESPACE}"))?;
        self.component("operator", &["--batch-window=500ms".to_string()])
            .await?;
        let leases = Api::<Lease>::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        let policies = Api::<ReaperPolicy>::all(self.client.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let holder = leases
                .get_opt("reaper-operator")
                .await?
                .and_then(|l| l.spec?.holder_identity);
            let observed = policies
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .all(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.observed_generation)
                        .is_some()
                });
            if let (Some(holder), true) = (holder, observed) {
                println!("   leader     {holder} (Lease {OPERATOR_NAMESPACE}/reaper-operator)");
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the operator did not lead and write policy status within 60 s (see its log)"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        print_table(&self.client, "/apis/reaper.dev/v1alpha1/reaperpolicies").await
    }

    /// After the sample pods: the policy status the operator computed (`kubectl get rp -o yaml`).
    async fn policy_status(&mut self) -> Result<()> {
        let policies = Api::<ReaperPolicy>::all(self.client.clone());
        let pods = Api::<Pod>::namespaced(self.client.clone(), DEMO_NAMESPACE)
            .list(&ListParams::default())
            .await?
            .items
            .len() as u32;
        // The operator batches changes (--batch-window); give it a moment to count the pods.
        let deadline = Instant::now() + Duration::from_secs(30);
        let policy = loop {
            let p = policies
                .get("demo")
                .await
                .context("get ReaperPolicy demo")?;
            let s = p.status.clone().unwrap_or_default();
            if s.matched_pods + skipped_or_opted_out(&self.client).await? >= pods
                || Instant::now() > deadline
            {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        print_table(&self.client, "/apis/reaper.dev/v1alpha1/reaperpolicies").await?;
        println!("   status of ReaperPolicy demo:");
        let status = yaml_serde::to_string(&policy.status)?;
        for line in status.lines() {
            println!("     {line}");
        }
        Ok(())
    }

    /// Sample pods through the real admission chain. No kubelet runs, so they stay Pending; what
    /// matters here is the spec the API server stored after the webhook.
    async fn pods(&mut self) -> Result<()> {
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(DEMO_NAMESPACE.into()),
                labels: Some(BTreeMap::from([(
                    "reaper.dev/inject".to_string(),
                    "enabled".to_string(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .patch(
                DEMO_NAMESPACE,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&ns),
            )
            .await
            .context("applying namespace demo")?;
        // What kube-controller-manager's ServiceAccount controller would create.
        let sa: ServiceAccount = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"},
        }))?;
        Api::<ServiceAccount>::namespaced(self.client.clone(), DEMO_NAMESPACE)
            .patch(
                "default",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&sa),
            )
            .await
            .context("applying ServiceAccount demo/default")?;
        let api = Api::<Pod>::namespaced(self.client.clone(), DEMO_NAMESPACE);
        for (name, labels, container) in sample_pods() {
            let pod: Pod = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": labels},
                "spec": {"containers": [container]},
            }))?;
            let before = pod.clone();
            let _ = api.delete(name, &Default::default()).await;
            let stored = create_when_gone(&api, &pod).await?;
            describe(&before, &stored);
        }
        Ok(())
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
            yaml_serde::from_str(SAMPLE_POLICY).context("parsing examples/demo-policy.yaml")?;
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

/// The sample pods: (name, labels, the one container).
fn sample_pods() -> Vec<(&'static str, Value, Value)> {
    let restricted = json!({
        "runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
    });
    vec![
        // argv known from the spec: wrapped with the reaper.
        (
            "with-command",
            json!({}),
            json!({"name": "app", "image": "busybox:1.37", "securityContext": restricted,
                   "command": ["sh", "-c", "while true; do (sleep 1 &); sleep 5; done"]}),
        ),
        // argv only in the image: resolved from its registry, or shareProcessNamespace when the
        // registry cannot be reached (as here: no network).
        (
            "image-entrypoint",
            json!({}),
            json!({"name": "web", "image": "nginx:1.27", "securityContext": restricted}),
        ),
        // opted out by label: left alone.
        (
            "opted-out",
            json!({"reaper.dev/inject": "disabled"}),
            json!({"name": "app", "image": "busybox:1.37", "securityContext": restricted,
                   "command": ["sleep", "infinity"]}),
        ),
    ]
}

/// Creates `pod`, retrying while a previous run's pod of the same name is still being deleted.
async fn create_when_gone(api: &Api<Pod>, pod: &Pod) -> Result<Pod> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.create(&PostParams::default(), pod).await {
            Ok(p) => return Ok(p),
            Err(kube::Error::Api(e)) if e.code == 409 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => return Err(e).context("creating a sample pod"),
        }
    }
}

/// Prints what admission changed: the annotation, shareProcessNamespace, init containers, argv.
fn describe(before: &Pod, after: &Pod) {
    let name = after.metadata.name.as_deref().unwrap_or_default();
    let injected = after
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("reaper.dev/injected"))
        .map_or("<none>", String::as_str);
    println!("   pod {name}: reaper.dev/injected={injected}");
    let (b, a) = (
        before.spec.clone().unwrap_or_default(),
        after.spec.clone().unwrap_or_default(),
    );
    if a.share_process_namespace != b.share_process_namespace {
        println!(
            "     shareProcessNamespace: {:?} -> {:?}",
            b.share_process_namespace, a.share_process_namespace
        );
    }
    for c in a.init_containers.iter().flatten() {
        println!(
            "     + initContainer {} ({}) {:?}",
            c.name,
            c.image.as_deref().unwrap_or(""),
            c.command
                .iter()
                .flatten()
                .chain(c.args.iter().flatten())
                .collect::<Vec<_>>()
        );
    }
    for (cb, ca) in b.containers.iter().zip(&a.containers) {
        if cb.command != ca.command {
            println!(
                "     {}: command {:?}",
                ca.name,
                cb.command.as_deref().unwrap_or_default()
            );
            println!(
                "     {}:      -> {:?}",
                ca.name,
                ca.command.as_deref().unwrap_or_default()
            );
        } else {
            println!("     {}: command unchanged", ca.name);
        }
    }
}

/// Polls a component's `/readyz` (60 s), showing its log when it never gets ready.
async fn wait_ready(admin: u16, log: &Path) -> Result<()> {
    let url = format!("http://127.0.0.1:{admin}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(&url).await
            && r.status() == 200
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            bail!(
                "{url} not ready within 60 s; log {}:\n{tail}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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
            yaml_serde::from_str(&text).with_context(|| format!("parsing {}", p.display()))
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

/// Pods of the demo namespace no policy governs: opted out with `reaper.dev/inject=disabled`.
async fn skipped_or_opted_out(client: &Client) -> Result<u32> {
    let lp = ListParams::default().labels("reaper.dev/inject=disabled");
    Ok(Api::<Pod>::namespaced(client.clone(), DEMO_NAMESPACE)
        .list(&lp)
        .await?
        .items
        .len() as u32)
}

/// Runs the API-server-only demo.
pub async fn run() -> Result<()> {
    let began = Instant::now();
    println!("Reaper demo (API server only): {} steps", Step::ALL.len());
    println!("== 1. {}", Step::ControlPlane.title());
    // Blocking start (a few seconds); stopped (processes killed, temp dir removed) when `demo` drops.
    let cp = ControlPlane::start().map_err(anyhow::Error::msg)?;
    let client = cp.client().await;
    let mut demo = Demo {
        cp,
        client,
        children: Vec::new(),
    };
    for (i, step) in Step::ALL.into_iter().enumerate() {
        if i > 0 {
            println!("== {}. {}", i + 1, step.title());
        }
        demo.run(step)
            .await
            .with_context(|| format!("demo step {:?}", step))?;
    }
    println!("== policy status (operator)");
    demo.policy_status().await.context("demo: policy status")?;
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
        "Try: kubectl --kubeconfig {} get reaperpolicies,zombiereports,pods -A",
        demo.cp.kubeconfig().display()
    );
    println!("Ctrl-C stops everything.");
    stop_requested().await?;
    println!("stopping");
    drop(demo);
    Ok(())
}
