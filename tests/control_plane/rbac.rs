//! Each component runs on a real kube-apiserver (tests/support/control_plane.rs) as its chart
//! ServiceAccount, with a token of that ServiceAccount and only the RBAC the chart renders
//! (applied for real under a release name of the test), and does its job with no 403:
//! - the webhook: ready (its ReaperPolicy and Namespace reflectors listed and watch), then mutates a
//!   pod through the chart's own MutatingWebhookConfiguration (pointed at the process by URL);
//! - the agent: ready, and its ZombieReport for the Node applied;
//! - Secrets: the webhook's ServiceAccount cannot read them unless `registry.auth=pull-secrets`.
//!
//! The operator is checked the same way once `reaper-controller operator` exists in main (its
//! branch is being written in parallel).
use reaper_test_support as support;
use reaper_test_support::chart as chart_common;
use reaper_test_support::scenarios as e2e_scenarios;

use chart_common::{Objects, V, cluster, local, render};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use reaper::crd::ZombieReport;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::control_plane::{
    self, ChildGuard, ControlPlane, TestCa, free_port, reaper_controller_bin, unique_name,
};

const WAIT: Duration = Duration::from_secs(60);

/// A release of the chart's RBAC in a fresh namespace: the rendering and the namespace.
async fn install_rbac(
    cp: &ControlPlane,
    client: &Client,
    values: &[V<'_>],
) -> (Objects, String, String) {
    cp.install_crds(client).await;
    let ns = cp.ns(client, "rbac").await;
    let release = unique_name("rb");
    let objs = render(&release, &ns, values);
    let rbac = cluster::rbac(objs.all());
    assert!(rbac.len() >= 9, "{} RBAC objects", rbac.len());
    let errors = cluster::apply_all(client, &rbac, false).await;
    assert!(errors.is_empty(), "{errors:#?}");
    (objs, ns, release)
}

/// The ServiceAccount of `component` in the rendering, and a kubeconfig with its token.
async fn identity(
    cp: &ControlPlane,
    client: &Client,
    objs: &Objects,
    ns: &str,
    component: &str,
) -> (String, PathBuf) {
    let sa = objs
        .of_kind("ServiceAccount")
        .into_iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .find(|n| n.ends_with(&format!("-{component}")))
        .unwrap_or_else(|| panic!("no ServiceAccount for {component}"));
    let token = cp
        .service_account_token(client, ns, &sa, Duration::from_secs(3600))
        .await;
    let kc = cp.write_token_kubeconfig(&sa, &token);
    (sa, kc)
}

async fn client_from(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// A process of `reaper-controller` as a ServiceAccount (its stderr in `log`).
fn spawn(kubeconfig: &Path, log: &Path, args: &[String]) -> ChildGuard {
    spawn_in("reaper-system", kubeconfig, log, args)
}

/// [`spawn`] as if deployed in `namespace` (`POD_NAMESPACE`).
fn spawn_in(namespace: &str, kubeconfig: &Path, log: &Path, args: &[String]) -> ChildGuard {
    let mut cmd = Command::new(reaper_controller_bin());
    cmd.env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("POD_NAMESPACE", namespace)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    ChildGuard::spawn(&mut cmd).expect("spawning reaper-controller")
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// No authorization failure in a component's log (kube's 403 errors say "forbidden"; a bare
/// "403" also shows up in timestamps).
fn assert_no_403(what: &str, log: &Path) {
    let text = read(log);
    let lower = text.to_lowercase();
    assert!(
        !lower.contains("forbidden") && !text.contains("code: 403"),
        "{what} was refused something by the API server:\n{text}"
    );
}

async fn wait_ready(what: &str, admin: u16, log: &Path) {
    let url = format!("http://127.0.0.1:{admin}/readyz");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = reqwest::get(&url).await
            && r.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not ready within {WAIT:?}; its log:\n{}",
            read(log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scenario 5 of the kind suite, locally: the admin port's `/metrics` answers with the
/// component's own metrics (`reaper_<component>_*`).
async fn assert_metrics(component: &str, admin: u16) {
    let url = format!("http://127.0.0.1:{admin}/metrics");
    let r = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(r.status(), 200, "GET {url}");
    let text = r.text().await.unwrap();
    let prefix = format!("reaper_{component}_");
    assert!(
        text.contains(&prefix),
        "{component} /metrics has no {prefix}*:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_works_as_its_chart_service_account() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let admin = cp.client().await;
    let (objs, release_ns, release) = install_rbac(cp, &admin, &[]).await;
    let (_, kubeconfig) = identity(cp, &admin, &objs, &release_ns, "webhook").await;

    let dir = cp.dir().join(&release);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::new("rbac test webhook CA");
    let pair = ca.issue_server(&["127.0.0.1"]);
    std::fs::write(dir.join("tls.crt"), &pair.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &pair.key_pem).unwrap();
    let (port, admin_port) = (free_port(), free_port());
    // The chart's own flags, with local ports and files.
    let mut args: Vec<String> = objs
        .args("Deployment", &format!("{release}-reaper-webhook"))
        .into_iter()
        .filter(|a| {
            !["--listen=", "--admin-listen=", "--tls-cert=", "--tls-key="]
                .iter()
                .any(|f| a.starts_with(f))
        })
        .collect();
    assert_eq!(args[0], "webhook");
    args.extend([
        format!("--listen=127.0.0.1:{port}"),
        format!("--admin-listen=127.0.0.1:{admin_port}"),
        format!("--tls-cert={}", dir.join("tls.crt").display()),
        format!("--tls-key={}", dir.join("tls.key").display()),
    ]);
    let log = dir.join("webhook.log");
    // In the release namespace, where the chart lets it dry-run its image volume probe.
    let _child = spawn_in(&release_ns, &kubeconfig, &log, &args);
    wait_ready("webhook", admin_port, &log).await;
    assert_metrics("webhook", admin_port).await;

    // The chart's MutatingWebhookConfiguration, reaching this process by URL, limited to the
    // namespaces of this test, failing closed so a broken call fails the create.
    let mut mwc = objs.of_kind("MutatingWebhookConfiguration")[0].clone();
    for hook in mwc["webhooks"].as_array_mut().unwrap() {
        hook["clientConfig"] = json!({
            "url": format!("https://127.0.0.1:{port}/mutate"),
            "caBundle": base64_encode(ca.cert_pem().as_bytes()),
        });
        hook["failurePolicy"] = json!("Fail");
        local::scope_selector(
            &mut hook["namespaceSelector"],
            "reaper.dev/test-rbac",
            &release,
        );
    }
    cluster::apply(&admin, &mwc, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let labels = [
        ("reaper.dev/inject", "enabled"),
        ("reaper.dev/test-rbac", release.as_str()),
    ];
    let app_ns = cp.ns_with_labels(&admin, "rbac-app", &labels).await;
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app"},
        "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1", "command": ["/app", "serve"]}]}
    }))
    .unwrap();
    // The new registration takes a moment to reach the API server's admission chain.
    let deadline = Instant::now() + WAIT;
    let stored = loop {
        let name = unique_name("app");
        let mut p = pod.clone();
        p.metadata.name = Some(name);
        let created = Api::<Pod>::namespaced(admin.clone(), &app_ns)
            .create(&PostParams::default(), &p)
            .await
            .unwrap_or_else(|e| panic!("pod create failed: {e}\nwebhook log:\n{}", read(&log)));
        if created
            .annotations()
            .contains_key(reaper::keys::ANNOTATION_INJECTED)
        {
            break created;
        }
        assert!(
            Instant::now() < deadline,
            "no pod mutated within {WAIT:?}; webhook log:\n{}",
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let spec = stored.spec.unwrap();
    assert!(
        spec.init_containers
            .unwrap_or_default()
            .iter()
            .any(|c| c.image.as_deref().is_some_and(|i| i.contains("/reaper"))),
        "no reaper init container"
    );
    // Its Events are recorded with the chart's RBAC: a pod that runs its own init is skipped,
    // and a bare pod's Event regards the pod by name.
    let tini: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "own-init"},
        "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1",
                                 "command": ["tini", "--", "/app"]}]}
    }))
    .unwrap();
    let created = Api::<Pod>::namespaced(admin.clone(), &app_ns)
        .create(&PostParams::default(), &tini)
        .await
        .unwrap();
    assert_eq!(
        created
            .annotations()
            .get(reaper::keys::ANNOTATION_INJECTED)
            .map(String::as_str),
        Some("skipped:already-init")
    );
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), &app_ns);
    let deadline = Instant::now() + WAIT;
    loop {
        let found = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .any(|e| {
                e.reporting_controller.as_deref() == Some(reaper::keys::EVENT_REPORTER_WEBHOOK)
                    && e.reason.as_deref() == Some(reaper::keys::REASON_PROTECTION_NOT_NEEDED)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("own-init")
            });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Event from the webhook within {WAIT:?}; webhook log:\n{}",
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The release namespace is excluded by the chart's selector, even when labelled.
    for (k, v) in labels {
        let patch = json!({"metadata": {"labels": {k: v}}});
        Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
            .patch(
                &release_ns,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
    }
    let mut p = pod.clone();
    p.metadata.name = Some("own".into());
    let own = Api::<Pod>::namespaced(admin.clone(), &release_ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    assert!(
        !own.annotations()
            .contains_key(reaper::keys::ANNOTATION_INJECTED),
        "own namespace mutated"
    );
    // Scenario 3 of the kind suite at the API level: inject, share and auto pods are mutated and,
    // as mutated, admitted by Pod Security "restricted" (it checks the pod after mutation).
    let env = e2e_scenarios::Env {
        client: admin.clone(),
        release_ns: release_ns.clone(),
        fullname: format!("{release}-reaper"),
        image: "registry.example.com/library/busybox:1.36".into(),
        ns_labels: vec![("reaper.dev/test-rbac".into(), release.clone())],
        entrypoint_image: None,
        settle: std::time::Duration::ZERO,
        kubectl: "kubectl".into(),
        kubeconfig: None,
    };
    e2e_scenarios::every_mode_runs_under_restricted(&env, false).await;
    // Mode image: the reaper image as a volume, admitted by "restricted" as mutated.
    e2e_scenarios::image_mode_runs_under_restricted(&env, false).await;
    // Its detection ran with the chart's RBAC (nodes watched, the dry-run answered) and, with no
    // node that runs image volumes here, left auto on the init container.
    wait_for_log(&log, "image volumes not supported").await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("reaper_webhook_image_volumes_supported 0"),
        "{metrics}"
    );
    assert_no_403("webhook", &log);
    Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
        admin.clone(),
    )
    .delete(
        mwc["metadata"]["name"].as_str().unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
}

async fn wait_for_log(log: &Path, needle: &str) {
    let start = Instant::now();
    while !read(log).contains(needle) {
        assert!(
            start.elapsed() < WAIT,
            "no {needle:?} in the log within {WAIT:?}:\n{}",
            read(log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The image volume probe: a dry-run PodTemplate create the API server answers with the image
/// volume kept (1.36, gate on); as the webhook's ServiceAccount it works in the release
/// namespace only, and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_probes_image_volumes_in_its_namespace_only() {
    use k8s_openapi::api::core::v1::PodTemplate;
    use reaper::webhook::capability::{DryRun, server_facts};
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let admin = cp.client().await;
    let (objs, ns, _) = install_rbac(cp, &admin, &[]).await;
    let other = cp.ns(&admin, "probe-other").await;
    let (sa, kc) = identity(cp, &admin, &objs, &ns, "webhook").await;
    let as_webhook = client_from(&kc).await;
    let image = "registry.example.com/reaper/reaper:0.1.0";
    let (version, dry_run) = server_facts(&as_webhook, Some(&ns), image).await;
    assert!(
        version.as_deref().is_some_and(|v| v.starts_with("v1.")),
        "{version:?}"
    );
    assert_eq!(dry_run, DryRun::Kept, "{sa} in {ns}");
    assert_eq!(
        server_facts(&as_webhook, Some(&other), image).await.1,
        DryRun::Unknown,
        "{sa} may create podtemplates outside its namespace"
    );
    let stored = Api::<PodTemplate>::namespaced(admin.clone(), &ns)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(
        stored.items.is_empty(),
        "the dry-run stored {:?}",
        stored.items
    );
    let denied = Api::<Pod>::namespaced(as_webhook, &ns)
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &Pod::default(),
        )
        .await;
    assert!(
        matches!(denied, Err(kube::Error::Api(ref s)) if s.code == 403),
        "{sa} may create pods: {denied:?}"
    );
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Secrets: refused to the webhook's ServiceAccount by default, `get` (only) with pull-secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_reads_secrets_only_with_pull_secrets() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let admin = cp.client().await;
    let other = cp.ns(&admin, "secrets").await;
    let mut secret = Secret::default();
    secret.metadata.name = Some("pull".into());
    secret.string_data = Some([(".dockerconfigjson".to_string(), "{}".to_string())].into());
    Api::<Secret>::namespaced(admin.clone(), &other)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let (objs, ns, _) = install_rbac(cp, &admin, &[]).await;
    let (sa, kc) = identity(cp, &admin, &objs, &ns, "webhook").await;
    let as_webhook = client_from(&kc).await;
    let secrets = Api::<Secret>::namespaced(as_webhook.clone(), &other);
    match secrets.get("pull").await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{sa} (anonymous registry auth) read a Secret: {other:?}"),
    }

    let (objs, ns, _) = install_rbac(cp, &admin, &[V::Set("registry.auth", "pull-secrets")]).await;
    let (sa, kc) = identity(cp, &admin, &objs, &ns, "webhook").await;
    let as_webhook = client_from(&kc).await;
    let secrets = Api::<Secret>::namespaced(as_webhook.clone(), &other);
    secrets
        .get("pull")
        .await
        .unwrap_or_else(|e| panic!("{sa} with pull-secrets: {e}"));
    let sas = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(as_webhook, &other);
    sas.get("default")
        .await
        .unwrap_or_else(|e| panic!("{sa} with pull-secrets, serviceaccounts: {e}"));
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{sa} may list Secrets: {:?}", other.map(|l| l.items.len())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_works_as_its_chart_service_account() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let admin = cp.client().await;
    let (objs, ns, release) = install_rbac(cp, &admin, &[]).await;
    let (_, kubeconfig) = identity(cp, &admin, &objs, &ns, "agent").await;
    let node_name = unique_name("node");
    let node: Node = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name}}),
    )
    .unwrap();
    let node = Api::<Node>::all(admin.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();

    let admin_port = free_port();
    // The chart's flags, with the node name the downward API gives and a local admin port.
    let mut args: Vec<String> = objs
        .args("DaemonSet", &format!("{release}-reaper-agent"))
        .into_iter()
        .filter(|a| !a.starts_with("--admin-listen="))
        .collect();
    assert_eq!(args[0], "agent");
    args.extend([
        format!("--admin-listen=127.0.0.1:{admin_port}"),
        format!("--node-name={node_name}"),
    ]);
    let log = cp.dir().join(format!("{release}-agent.log"));
    let _child = spawn(&kubeconfig, &log, &args);
    wait_ready("agent", admin_port, &log).await;
    assert_metrics("agent", admin_port).await;
    let reports = Api::<ZombieReport>::all(admin.clone());
    let deadline = Instant::now() + WAIT;
    let report = loop {
        if let Some(r) = reports.get_opt(&node_name).await.unwrap() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no ZombieReport within {WAIT:?}; agent log:\n{}",
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let owner: Value = serde_json::to_value(&report.metadata.owner_references.unwrap()[0]).unwrap();
    assert_eq!(
        (owner["kind"].as_str(), owner["uid"].as_str()),
        (Some("Node"), node.metadata.uid.as_deref())
    );
    assert_no_403("agent", &log);
    Api::<Node>::all(admin.clone())
        .delete(&node_name, &Default::default())
        .await
        .unwrap();
}

/// The operator binary: `REAPER_OPERATOR_BIN` (e.g. another build), else this package's
/// `reaper-controller`.
fn operator_bin() -> PathBuf {
    std::env::var_os("REAPER_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(reaper_controller_bin)
}

/// The operator with the chart's flags (self-managed certificates, leader election): takes the
/// Lease, writes the certificate Secrets and the caBundle of the chart's webhook configuration,
/// and patches a ReaperPolicy's status, with no 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_works_as_its_chart_service_account() {
    let bin = operator_bin();
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let admin = cp.client().await;
    let (objs, ns, release) = install_rbac(cp, &admin, &[]).await;
    let (sa, kubeconfig) = identity(cp, &admin, &objs, &ns, "operator").await;
    // The chart's webhook configuration, for real, matching no namespace of other tests.
    let mut mwc = objs.of_kind("MutatingWebhookConfiguration")[0].clone();
    for hook in mwc["webhooks"].as_array_mut().unwrap() {
        local::scope_selector(
            &mut hook["namespaceSelector"],
            "reaper.dev/test-rbac",
            &release,
        );
    }
    cluster::apply(&admin, &mwc, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mwc_name = mwc["metadata"]["name"].as_str().unwrap().to_string();

    let admin_port = free_port();
    let deployment = objs.get("Deployment", &format!("{release}-reaper-operator"));
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        sa.as_str()
    );
    let mut args: Vec<String> = objs
        .args("Deployment", &format!("{release}-reaper-operator"))
        .into_iter()
        .filter(|a| !a.starts_with("--admin-listen="))
        .collect();
    assert_eq!(args[0], "operator");
    args.push(format!("--admin-listen=127.0.0.1:{admin_port}"));
    let secret = chart_common::flag(&args, "cert-secret")
        .expect("--cert-secret")
        .to_string();
    let log = cp.dir().join(format!("{release}-operator.log"));
    let mut cmd = Command::new(&bin);
    cmd.env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("POD_NAMESPACE", &ns)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let _child = ChildGuard::spawn(&mut cmd).expect("spawning the operator");
    wait_ready("operator", admin_port, &log).await;
    assert_metrics("operator", admin_port).await;

    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    let mwcs =
        Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
            admin.clone(),
        );
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin.clone(), &ns);
    let deadline = Instant::now() + WAIT;
    loop {
        let tls = secrets.get_opt(&secret).await.unwrap();
        let ca = secrets.get_opt(&format!("{secret}-ca")).await.unwrap();
        let bundle = mwcs
            .get(&mwc_name)
            .await
            .unwrap()
            .webhooks
            .unwrap_or_default()[0]
            .client_config
            .ca_bundle
            .clone();
        let lease = leases.get_opt(reaper::keys::LEASE_OPERATOR).await.unwrap();
        let held = lease
            .and_then(|l| l.spec?.holder_identity)
            .is_some_and(|h| !h.is_empty());
        let has = |s: &Option<Secret>, k: &str| {
            s.as_ref()
                .and_then(|s| s.data.as_ref())
                .is_some_and(|d| d.contains_key(k))
        };
        if held
            && has(&tls, "tls.crt")
            && has(&tls, "ca.crt")
            && has(&ca, "tls.key")
            && bundle.is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "operator: Lease held {held}, Secret {secret} {}, CA Secret {}, caBundle {} within {WAIT:?}; log:\n{}",
            tls.is_some(),
            ca.is_some(),
            bundle.is_some(),
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A policy's status is written (reflectors over policies, namespaces, pods, replicasets and
    // reports all listed and watching).
    let name = unique_name("rbac-policy");
    let policy: reaper::crd::ReaperPolicy = serde_json::from_value(json!({
        "apiVersion": "reaper.dev/v1alpha1", "kind": "ReaperPolicy", "metadata": {"name": name},
        "spec": {"mode": "Auto", "namespaceSelector": {"matchLabels": {"reaper.dev/test-rbac": release}}}
    }))
    .unwrap();
    let policies = Api::<reaper::crd::ReaperPolicy>::all(admin.clone());
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let p = policies.get(&name).await.unwrap();
        if p.status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no status on {name} within {WAIT:?}; log:\n{}",
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_no_403("operator", &log);
    policies.delete(&name, &Default::default()).await.unwrap();
    mwcs.delete(&mwc_name, &Default::default()).await.unwrap();
}

/// The Restart action is an install-time opt-in: by default the operator's ClusterRole grants no
/// write on workloads at all. Enabled, the chart's ValidatingAdmissionPolicy (checked here on the
/// real API server) lets the operator's ServiceAccount change only the pod template's
/// `restartedAt` annotation, and only of workloads Reaper governs (opted-in namespaces, or a pod
/// template that opts in where the namespace says nothing; never an excluded namespace or one
/// opted out); anyone else is unaffected.
#[tokio::test]
async fn restart_is_opt_in_and_fenced_by_an_admission_policy() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let admin = cp.client().await;
    let default = render("rb-default", "reaper-system", &[]);
    let rules = default.rules("ClusterRole", "rb-default-reaper-operator");
    for workload in ["deployments", "statefulsets", "daemonsets"] {
        assert!(
            !chart_common::allows(&rules, "apps", workload, "patch", None),
            "{workload} patchable by default"
        );
    }
    let restart_fence = |objs: &chart_common::Objects| -> Vec<Value> {
        [
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ]
        .iter()
        .flat_map(|k| objs.of_kind(k))
        .filter(|o| {
            o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-restart"))
        })
        .cloned()
        .collect()
    };
    assert!(restart_fence(&default).is_empty());

    let (objs, ns, release) =
        install_rbac(cp, &admin, &[V::Set("operator.restart.enabled", "true")]).await;
    let fence = restart_fence(&objs);
    assert_eq!(fence.len(), 2);
    let errors = cluster::apply_all(&admin, &fence, false).await;
    assert!(errors.is_empty(), "{errors:#?}");
    let (_sa, kubeconfig) = identity(cp, &admin, &objs, &ns, "operator").await;
    let operator = client_from(&kubeconfig).await;

    let governed = cp
        .ns_with_labels(&admin, "governed", &[("reaper.dev/inject", "enabled")])
        .await;
    let other = cp.ns(&admin, "ungoverned").await;
    let opted_out = cp
        .ns_with_labels(&admin, "opted-out", &[("reaper.dev/inject", "disabled")])
        .await;
    let deployment = |name: &str| -> k8s_openapi::api::apps::v1::Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}, "annotations": {"team": "a"}},
                                  "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]}}}
        }))
        .unwrap()
    };
    for n in [&governed, &other] {
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), n)
            .create(&PostParams::default(), &deployment("web"))
            .await
            .unwrap();
    }
    // Pod templates that opt in: governed where the namespace says nothing, not where it opted
    // out, nor in the release namespace (always excluded) even when labelled enabled.
    let mut joined = deployment("joined");
    e2e_scenarios::opt_in_template(&mut joined);
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .patch(
            &ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"labels": {"reaper.dev/inject": "enabled"}}}),
            ),
        )
        .await
        .unwrap();
    for n in [&other, &opted_out, &ns] {
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), n)
            .create(&PostParams::default(), &joined)
            .await
            .unwrap();
    }
    let patch_named = |ns: &str, name: &str, body: Value| {
        let client = operator.clone();
        let (ns, name) = (ns.to_string(), name.to_string());
        async move {
            Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client, &ns)
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Strategic(&body),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    let patch = |ns: &str, body: Value| patch_named(ns, "web", body);
    let restart = |at: &str| json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": at}}}}});
    // The policy takes a moment to be enforced after it is created; each try is a real change
    // (an applied one would make the next identical patch a no-op).
    let image = |tag: u32| json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": format!("evil.example/x:{tag}")}]}}}});
    let deadline = Instant::now() + WAIT;
    for tag in 0.. {
        match patch(&governed, image(tag)).await {
            Err(e) if e.contains("restartedAt annotation") => break,
            other => assert!(
                Instant::now() < deadline,
                "an image change by the operator was not refused within {WAIT:?}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    patch(&governed, restart("2026-12-07T10:00:00Z"))
        .await
        .expect("a restart in a governed namespace is allowed");
    let refused = patch(&other, restart("2026-12-07T10:00:00Z"))
        .await
        .unwrap_err();
    assert!(
        refused.contains("restarts only workloads Reaper governs"),
        "{refused}"
    );
    patch_named(&other, "joined", restart("2026-12-07T10:00:00Z"))
        .await
        .expect("a restart of a pod template that opts in is allowed");
    for n in [&opted_out, &ns] {
        let refused = patch_named(n, "joined", restart("2026-12-07T10:00:00Z"))
            .await
            .unwrap_err();
        assert!(refused.contains("Reaper governs"), "{n}: {refused}");
    }
    let label = json!({"spec": {"template": {"metadata": {"labels": {"x": "y"}}}}});
    assert!(
        patch(&governed, label)
            .await
            .unwrap_err()
            .contains("restartedAt")
    );
    let other_annotation =
        json!({"spec": {"template": {"metadata": {"annotations": {"team": "b"}}}}});
    assert!(patch(&governed, other_annotation).await.is_err());
    // Nobody else is fenced.
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), &governed)
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&image(u32::MAX)),
        )
        .await
        .expect("the admin is not bound by the operator's policy");
    let _ = release;
}

/// An agent's token (bound to its pod, hence to the pod's node) may write that node's
/// ZombieReport and no other: the chart's ValidatingAdmissionPolicy, on the real API server.
#[tokio::test]
async fn an_agent_may_write_only_its_own_nodes_report() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let admin = cp.client().await;
    let (objs, ns, _release) = install_rbac(cp, &admin, &[]).await;
    let fence: Vec<Value> = [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    .iter()
    .flat_map(|k| objs.of_kind(k))
    .filter(|o| {
        o["metadata"]["name"]
            .as_str()
            .unwrap()
            .ends_with("-own-report")
    })
    .cloned()
    .collect();
    assert_eq!(fence.len(), 2);
    let errors = cluster::apply_all(&admin, &fence, false).await;
    assert!(errors.is_empty(), "{errors:#?}");
    let sa = objs
        .of_kind("ServiceAccount")
        .into_iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .find(|n| n.ends_with("-agent"))
        .unwrap();
    // Two nodes, and an agent pod bound to the first (no kubelet: the objects are enough).
    let (mine, theirs) = (unique_name("node-a"), unique_name("node-b"));
    for n in [&mine, &theirs] {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}),
        )
        .unwrap();
        Api::<k8s_openapi::api::core::v1::Node>::all(admin.clone())
            .create(&PostParams::default(), &node)
            .await
            .unwrap();
    }
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent"},
        "spec": {"serviceAccountName": sa, "nodeName": mine, "automountServiceAccountToken": false,
                 "containers": [{"name": "agent", "image": "example.com/agent:1"}]}
    }))
    .unwrap();
    let pod = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let token = cp
        .service_account_token_for(
            &admin,
            &ns,
            &sa,
            Duration::from_secs(600),
            Some(("agent", pod.metadata.uid.as_deref().unwrap())),
        )
        .await;
    let agent = client_from(&cp.write_token_kubeconfig("agent-bound", &token)).await;
    let reports = Api::<reaper::crd::ZombieReport>::all(agent);
    let report = |node: &str| {
        reaper::crd::ZombieReport::new(
            node,
            reaper::crd::ZombieReportSpec {
                node_name: node.to_string(),
                ..Default::default()
            },
        )
    };
    let apply = |node: String| {
        let reports = reports.clone();
        let body = report(&node);
        async move {
            reports
                .patch(
                    &node,
                    &kube::api::PatchParams::apply("reaper-agent").force(),
                    &kube::api::Patch::Apply(&body),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    // Another node's report is refused (once the policy is in force)...
    let deadline = Instant::now() + WAIT;
    loop {
        match apply(theirs.clone()).await {
            Err(e) if e.contains("only write the ZombieReport of its own node") => {
                assert!(e.contains(&mine), "{e}");
                break;
            }
            other => {
                // Written before the policy was enforced: remove it and try again.
                let _ = Api::<reaper::crd::ZombieReport>::all(admin.clone())
                    .delete(&theirs, &Default::default())
                    .await;
                assert!(
                    Instant::now() < deadline,
                    "another node's report was not refused within {WAIT:?}: {other:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // ...its own is written.
    apply(mine.clone())
        .await
        .expect("an agent writes its own node's report");
    // A token bound to no pod (so to no node) writes none.
    let (_, unbound) = identity(cp, &admin, &objs, &ns, "agent").await;
    let unbound = Api::<reaper::crd::ZombieReport>::all(client_from(&unbound).await);
    let err = unbound
        .patch(
            &mine,
            &kube::api::PatchParams::apply("reaper-agent").force(),
            &kube::api::Patch::Apply(&report(&mine)),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no node in its token"), "{err}");
}

/// People get Reaper's resources through Kubernetes' built-in roles: the chart's aggregated
/// ClusterRoles make `view` read ReaperPolicies and ZombieReports, and (opt-in) `edit` write
/// ReaperPolicies; `view` never writes.
#[tokio::test]
async fn built_in_view_and_edit_roles_cover_reaper_resources() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    use reaper::crd::ReaperPolicy;
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let admin = cp.client().await;
    // Aggregation is kube-controller-manager's clusterrole-aggregation controller.
    cp.ensure_controller_manager(&admin).await;
    let (_, ns, release) = install_rbac(cp, &admin, &[V::Set("rbac.aggregate.edit", "true")]).await;
    let mut clients = Vec::new();
    for role in ["view", "edit"] {
        let sa = format!("{release}-{role}er");
        Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap(),
            )
            .await
            .unwrap();
        Api::<ClusterRoleBinding>::all(admin.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": sa},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        clients.push(cp.client_as_service_account(&admin, &ns, &sa).await);
    }
    let (viewer, editor) = (&clients[0], &clients[1]);
    let policy = |name: &str| -> ReaperPolicy {
        serde_json::from_value(json!({
            "apiVersion": "reaper.dev/v1alpha1", "kind": "ReaperPolicy",
            "metadata": {"name": name},
            "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": format!("{release}-none")}}}
        }))
        .unwrap()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let read = Api::<ReaperPolicy>::all(viewer.clone())
            .list(&Default::default())
            .await
            .is_ok()
            && Api::<ZombieReport>::all(viewer.clone())
                .list(&Default::default())
                .await
                .is_ok();
        let wrote = Api::<ReaperPolicy>::all(editor.clone())
            .create(
                &PostParams::default(),
                &policy(&format!("{release}-by-editor")),
            )
            .await
            .is_ok();
        if read && wrote {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "view/edit never aggregated the chart's rules (read {read}, write {wrote})"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let refused = Api::<ReaperPolicy>::all(viewer.clone())
        .create(
            &PostParams::default(),
            &policy(&format!("{release}-by-viewer")),
        )
        .await
        .expect_err("a viewer created a ReaperPolicy");
    assert!(refused.to_string().contains("forbidden"), "{refused}");
}

/// `operator.policyReports=auto` grants what the operator needs to write policy reports: with
/// both report CRDs served (real ones, tests/fixtures/crds), it lists its PolicyReports, watches
/// Jobs and applies a Report into an opted-in namespace, as its chart ServiceAccount with no 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_writes_policy_reports_with_its_chart_rbac() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let admin = cp.client().await;
    for dir in ["openreports", "wgpolicyk8s"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/crds")
            .join(dir);
        let crds = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| yaml_serde::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap())
            .collect();
        control_plane::install_crds(&admin, crds).await;
    }
    let (objs, ns, release) = install_rbac(
        cp,
        &admin,
        &[
            V::Set("operator.policyReports", "auto"),
            V::Set("operator.leaderElection", "false"),
            V::Set("certs.mode", "cert-manager"),
        ],
    )
    .await;
    let (_sa, kubeconfig) = identity(cp, &admin, &objs, &ns, "operator").await;
    let app = cp
        .ns_with_labels(
            &admin,
            "rbac-reports",
            &[(reaper::keys::LABEL_INJECT, reaper::keys::INJECT_ENABLED)],
        )
        .await;
    Api::<Pod>::namespaced(admin.clone(), &app)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "app", "annotations": {reaper::keys::ANNOTATION_INJECTED: "share"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    let admin_port = free_port();
    let mut args: Vec<String> = objs
        .args("Deployment", &format!("{release}-reaper-operator"))
        .into_iter()
        .filter(|a| !a.starts_with("--admin-listen="))
        .collect();
    assert_eq!(
        chart_common::flag(&args, "policy-reports"),
        Some("auto"),
        "{args:?}"
    );
    args.push(format!("--admin-listen=127.0.0.1:{admin_port}"));
    let log = cp.dir().join(format!("{release}-operator-reports.log"));
    let _child = spawn(&kubeconfig, &log, &args);
    wait_ready("operator", admin_port, &log).await;
    let reports: Api<kube::api::DynamicObject> = Api::namespaced_with(
        admin.clone(),
        &app,
        &kube::api::ApiResource {
            group: "openreports.io".into(),
            version: "v1alpha1".into(),
            api_version: "openreports.io/v1alpha1".into(),
            kind: "Report".into(),
            plural: "reports".into(),
        },
    );
    let deadline = Instant::now() + WAIT;
    let report = loop {
        if let Some(r) = reports
            .get_opt(reaper::keys::POLICY_REPORT_NAME)
            .await
            .unwrap()
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no Report in {app} within {WAIT:?}; log:\n{}",
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(report.data["summary"]["pass"], 2, "{:#}", report.data);
    assert_no_403("operator", &log);
}
