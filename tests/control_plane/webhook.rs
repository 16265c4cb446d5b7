//! Integration suite, part 3: the webhook binary registered with a real kube-apiserver through a
//! MutatingWebhookConfiguration (tests/support/control_plane.rs). Pods are created through the API
//! (no kubelet: they stay Pending, which is all admission needs) and read back as stored.
//!
//! Each test starts its own `reaper-controller webhook` (cluster mode: reflectors over
//! ReaperPolicies and Namespaces) and its own registration, scoped by a per-test namespace label,
//! so tests run in parallel without seeing each other's pods.
use reaper_test_support as support;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use reaper::crd::{
    Enforcement, EntrypointOverride, Mode, ReaperOptions, ReaperPolicy, ReaperPolicySpec,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::control_plane::{
    self, ChildGuard, ControlPlane, TestCa, reaper_controller_bin, unique_name,
};

const REAPER_IMAGE: &str = "registry.example.com/reaper/reaper:0.1.0";
const TEST_LABEL: &str = "reaper.dev/test-webhook";

/// A running webhook process and its registration.
struct Webhook {
    child: ChildGuard,
    id: String,
    failure_policy: String,
    admin: u16,
    log: PathBuf,
    client: Client,
    mwc: String,
    port: u16,
    /// The CA of the webhook's serving certificate.
    ca_pem: String,
}

impl Webhook {
    async fn start(cp: &ControlPlane, client: &Client) -> Self {
        Self::start_with(cp, client, "Fail").await
    }

    /// `failure_policy`: `Fail` makes a broken webhook show up as a failed create; the chart
    /// ships `Ignore`, which the fail-open test uses.
    async fn start_with(cp: &ControlPlane, client: &Client, failure_policy: &str) -> Self {
        Self::start_args(cp, client, failure_policy, &[]).await
    }

    /// [`Self::start_with`] with extra `webhook` flags.
    async fn start_args(
        cp: &ControlPlane,
        client: &Client,
        failure_policy: &str,
        extra: &[&str],
    ) -> Self {
        cp.install_crds(client).await;
        let id = unique_name("wh");
        let dir = cp.dir().join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::new("reaper webhook test CA");
        let pair = ca.issue_server(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.join("tls.crt"), &pair.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &pair.key_pem).unwrap();
        let (port, admin) = (control_plane::free_port(), control_plane::free_port());
        let log = dir.join("webhook.log");
        let mut cmd = cp.command(reaper_controller_bin());
        cmd.args([
            "--log-level",
            "info,reaper=debug",
            "webhook",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--tls-cert",
            dir.join("tls.crt").to_str().unwrap(),
            "--tls-key",
            dir.join("tls.key").to_str().unwrap(),
            "--reaper-image",
            REAPER_IMAGE,
        ])
        .args(extra)
        .env("POD_NAMESPACE", "reaper-system")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("webhook.err")).unwrap());
        let child = ChildGuard::spawn(&mut cmd).expect("spawning reaper-controller webhook");
        let mut w = Self {
            child,
            id: id.clone(),
            failure_policy: failure_policy.to_string(),
            admin,
            log: dir.join("webhook.err"),
            client: client.clone(),
            mwc: format!("reaper-{id}"),
            port: 0,
            ca_pem: String::new(),
        };
        w.wait_ready().await;
        w.register(port, &ca.cert_pem()).await;
        w.port = port;
        w.ca_pem = ca.cert_pem();
        w
    }

    /// Admission requests answered so far (`reaper_webhook_requests_total`, all labels).
    async fn admissions(&self) -> u64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin);
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with("reaper_webhook_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://127.0.0.1:{}/readyz", self.admin);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "webhook not ready within 60 s; its log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The registration the chart will ship, scoped to this test's namespaces.
    async fn register(&self, port: u16, ca_pem: &str) {
        let mwc = control_plane::webhook_registration(
            &self.mwc,
            &format!("https://127.0.0.1:{port}/mutate"),
            ca_pem,
            &[("reaper.dev/inject", "enabled"), (TEST_LABEL, &self.id)],
            &self.failure_policy,
        );
        Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .create(&PostParams::default(), &mwc)
            .await
            .expect("creating the MutatingWebhookConfiguration");
    }

    /// An opted-in namespace for this webhook, with extra labels.
    async fn namespace(&self, cp: &ControlPlane, prefix: &str, extra: &[(&str, &str)]) -> String {
        let mut labels = vec![
            ("reaper.dev/inject", "enabled"),
            (TEST_LABEL, self.id.as_str()),
        ];
        labels.extend_from_slice(extra);
        cp.ns_with_labels(&self.client, prefix, &labels).await
    }

    async fn stop(self) {
        let _ = Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .delete(&self.mwc, &DeleteParams::default())
            .await;
    }
}

fn pod(name: &str, spec: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// A container that passes Pod Security "restricted" on its own.
fn restricted(name: &str, image: &str, command: Option<&[&str]>) -> Value {
    let mut c = json!({
        "name": name, "image": image,
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
        }
    });
    if let Some(cmd) = command {
        c["command"] = json!(cmd);
    }
    c
}

async fn create(client: &Client, ns: &str, p: &Pod, dry_run: bool) -> Pod {
    let pp = PostParams {
        dry_run,
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&pp, p)
        .await
        .unwrap_or_else(|e| panic!("creating pod in {ns}: {e}"))
}

fn annotation(p: &Pod) -> Option<&str> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("reaper.dev/injected"))
        .map(String::as_str)
}

fn container<'a>(p: &'a Pod, name: &str) -> &'a k8s_openapi::api::core::v1::Container {
    let spec = p.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Create (dry-run) until the webhook's reflector has caught up with a policy change.
async fn eventually_annotated(client: &Client, ns: &str, p: &Pod, want: &str) -> Pod {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = create(client, ns, p, true).await;
        if annotation(&got) == Some(want) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "still {:?} instead of {want:?} after 30 s",
            annotation(&got)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn apply_policy(client: &Client, name: &str, spec: ReaperPolicySpec) {
    let p = ReaperPolicy::new(name, spec);
    Api::<ReaperPolicy>::all(client.clone())
        .create(&PostParams::default(), &p)
        .await
        .expect("creating a ReaperPolicy");
}

fn only_namespace(ns: &str) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            ns.to_string(),
        )])),
        match_expressions: None,
    })
}

#[tokio::test]
async fn wrapped_pod_passes_pod_security_restricted() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    let w = Webhook::start(cp, &client).await;
    let ns = w
        .namespace(
            cp,
            "restricted",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;
    let mut proxy = restricted("proxy", "envoyproxy/envoy:v1.30", Some(&["envoy"]));
    proxy["restartPolicy"] = json!("Always");
    let spec = json!({
        "containers": [restricted("app", "ghcr.io/acme/app:1", Some(&["/app", "--serve"]))],
        "initContainers": [
            restricted("migrate", "ghcr.io/acme/app:1", Some(&["/app", "migrate"])),
            proxy,
        ]
    });
    // Stored for real: Pod Security admission checked the mutated pod.
    let got = create(&client, &ns, &pod("web", spec), false).await;
    assert_eq!(annotation(&got), Some("inject:proxy,app"), "{}", w.logs());
    let s = got.spec.as_ref().unwrap();
    let init: Vec<&str> = s
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["reaper-install", "migrate", "proxy"]);
    let install = container(&got, "reaper-install");
    assert_eq!(install.image.as_deref(), Some(REAPER_IMAGE));
    assert_eq!(
        install.command.as_deref().unwrap(),
        ["/reaper", "--install", "/.reaper/reaper"]
    );
    assert_eq!(
        container(&got, "app").command.as_deref().unwrap(),
        ["/.reaper/reaper", "--", "/app", "--serve"]
    );
    assert_eq!(
        container(&got, "proxy").command.as_deref().unwrap(),
        ["/.reaper/reaper", "--", "envoy"]
    );
    assert_eq!(
        container(&got, "migrate").command.as_deref().unwrap(),
        ["/app", "migrate"]
    );
    let vol = s
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "reaper-bin")
        .expect("reaper-bin volume");
    assert!(vol.empty_dir.is_some());
    // The service account token volume the API server added is still there, for the app...
    assert!(
        s.volumes
            .iter()
            .flatten()
            .any(|v| v.name.starts_with("kube-api-access-"))
    );
    assert!(has_token(container(&got, "app")));
    // ...but not in the installer, which copies a file and needs no API access.
    assert!(!has_token(install), "{:?}", install.volume_mounts);
    // So the ServiceAccount plugin left the mutated pod alone, and the API server did not call
    // the webhook a second time (reinvocationPolicy IfNeeded).
    assert_eq!(w.admissions().await, 1, "admission requests for one pod");
    w.stop().await;
}

fn has_token(c: &k8s_openapi::api::core::v1::Container) -> bool {
    c.volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name.starts_with("kube-api-access-"))
}

#[tokio::test]
async fn auto_shares_when_argv_is_unknown_and_respects_opt_outs() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    let w = Webhook::start(cp, &client).await;
    let ns = w.namespace(cp, "auto", &[]).await;

    let got = create(
        &client,
        &ns,
        &pod(
            "nginx",
            json!({"containers": [{"name": "nginx", "image": "nginx:1.27"}]}),
        ),
        false,
    )
    .await;
    assert_eq!(annotation(&got), Some("share"), "{}", w.logs());
    assert_eq!(
        got.spec.as_ref().unwrap().share_process_namespace,
        Some(true)
    );

    // Opted out by label: the objectSelector keeps the webhook out entirely.
    let mut out = pod(
        "out",
        json!({"containers": [{"name": "a", "image": "x:1", "command": ["/a"]}]}),
    );
    out.metadata.labels = Some(BTreeMap::from([(
        "reaper.dev/inject".to_string(),
        "disabled".to_string(),
    )]));
    let got = create(&client, &ns, &out, false).await;
    assert_eq!(annotation(&got), None);
    assert_eq!(container(&got, "a").command.as_deref().unwrap(), ["/a"]);

    // hostPID + share asked by annotation: injected instead.
    let mut hp = pod(
        "hostpid",
        json!({"hostPID": true, "containers": [{"name": "a", "image": "x:1", "command": ["/a"]}]}),
    );
    hp.metadata.annotations = Some(BTreeMap::from([(
        "reaper.dev/mode".to_string(),
        "share".to_string(),
    )]));
    let got = create(&client, &ns, &hp, false).await;
    assert_eq!(annotation(&got), Some("inject:a"));
    assert_eq!(got.spec.as_ref().unwrap().share_process_namespace, None);

    // A namespace that is not opted in is never sent to the webhook.
    let plain = cp.ns(&client, "plain").await;
    let got = create(
        &client,
        &plain,
        &pod(
            "p",
            json!({"containers": [{"name": "a", "image": "x:1", "command": ["/a"]}]}),
        ),
        false,
    )
    .await;
    assert_eq!(annotation(&got), None);
    w.stop().await;
}

#[tokio::test]
async fn policies_from_the_cluster_are_followed() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    let w = Webhook::start(cp, &client).await;
    let ns = w.namespace(cp, "policy", &[]).await;
    let nginx = pod(
        "nginx",
        json!({"containers": [{"name": "nginx", "image": "nginx:1.27", "args": ["-g", "daemon off;"]}]}),
    );
    // No policy yet: auto shares (argv unknown).
    assert_eq!(
        annotation(&create(&client, &ns, &nginx, true).await),
        Some("share")
    );

    let policy = unique_name("entrypoints");
    apply_policy(
        &client,
        &policy,
        ReaperPolicySpec {
            namespace_selector: only_namespace(&ns),
            mode: Mode::Inject,
            reaper: ReaperOptions {
                grace: Some("5s".into()),
                ..Default::default()
            },
            entrypoints: vec![EntrypointOverride {
                image: "nginx:*".into(),
                command: vec!["/docker-entrypoint.sh".into()],
                args: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            }],
            ..Default::default()
        },
    )
    .await;
    eventually_annotated(&client, &ns, &nginx, "inject:nginx").await;
    let got = create(&client, &ns, &nginx, false).await;
    let c = container(&got, "nginx");
    assert_eq!(
        c.command.as_deref().unwrap(),
        [
            "/.reaper/reaper",
            "--grace=5s",
            "--",
            "/docker-entrypoint.sh"
        ]
    );
    assert_eq!(c.args.as_deref().unwrap(), ["-g", "daemon off;"]);

    // A higher-priority Audit policy for the same namespace wins: annotate only.
    let audit = unique_name("audit");
    apply_policy(
        &client,
        &audit,
        ReaperPolicySpec {
            priority: 100,
            namespace_selector: only_namespace(&ns),
            enforcement: Enforcement::Audit,
            ..Default::default()
        },
    )
    .await;
    let app = pod(
        "app",
        json!({"containers": [{"name": "app", "image": "x:1", "command": ["/app"]}]}),
    );
    eventually_annotated(&client, &ns, &app, "audit:inject:app").await;
    let got = create(&client, &ns, &app, false).await;
    assert_eq!(container(&got, "app").command.as_deref().unwrap(), ["/app"]);
    assert!(got.spec.as_ref().unwrap().init_containers.is_none());

    for name in [policy, audit] {
        let _ = Api::<ReaperPolicy>::all(client.clone())
            .delete(&name, &DeleteParams::default())
            .await;
    }
    w.stop().await;
}

/// Annotation of a corpus fixture naming the `reaper.dev/injected` value the webhook must produce.
const EXPECT: &str = "test.reaper.dev/expect";
const REAPER_PATH: &str = "/.reaper/reaper";

/// `tests/fixtures/corpus/*.yaml`, sorted by file name.
fn corpus() -> Vec<(String, Pod)> {
    let dir = control_plane::repo_root().join("tests/fixtures/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let pod: Pod = yaml_serde::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not a Pod: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), pod)
        })
        .collect()
}

fn all_containers(p: &Pod) -> Vec<&k8s_openapi::api::core::v1::Container> {
    let spec = p.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect()
}

/// What the stored pod must look like given the `reaper.dev/injected` value: wrapped containers
/// run `/.reaper/reaper -- <original command>` with args untouched and the binary mounted
/// read-only; every other container keeps its command; `share` sets shareProcessNamespace.
fn check_mutation(original: &Pod, stored: &Pod, injected: &str) -> Result<(), String> {
    let wrapped: Vec<&str> = injected
        .strip_prefix("inject:")
        .map(|l| l.split(',').collect())
        .unwrap_or_default();
    let spec = stored.spec.as_ref().unwrap();
    let shared = spec.share_process_namespace == Some(true);
    if injected == "share" && !shared {
        return Err("annotated share but shareProcessNamespace is not true".into());
    }
    for before in all_containers(original) {
        let after = container(stored, &before.name);
        if wrapped.contains(&before.name.as_str()) {
            let orig = before
                .command
                .as_ref()
                .ok_or_else(|| format!("{}: wrapped without a known command", before.name))?;
            let mut want = vec![REAPER_PATH.to_string(), "--".to_string()];
            want.extend(orig.iter().cloned());
            if after.command.as_ref() != Some(&want) {
                return Err(format!(
                    "{}: command {:?}, want {want:?}",
                    before.name, after.command
                ));
            }
            if after.args != before.args {
                return Err(format!("{}: args changed to {:?}", before.name, after.args));
            }
            let mounted = after
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/.reaper" && m.read_only == Some(true));
            if !mounted {
                return Err(format!("{}: no read-only mount at /.reaper", before.name));
            }
        } else if after.command != before.command || after.args != before.args {
            return Err(format!(
                "{}: not listed in {injected:?} but its argv changed",
                before.name
            ));
        }
    }
    if !wrapped.is_empty() {
        let first = spec
            .init_containers
            .iter()
            .flatten()
            .next()
            .map(|c| c.image.clone());
        if first != Some(Some(REAPER_IMAGE.to_string())) {
            return Err("the reaper install container is not first".into());
        }
    }
    Ok(())
}

/// The stored pod as a user would re-submit it (`kubectl get -o yaml | kubectl create -f -`).
fn resubmittable(stored: &Pod) -> Pod {
    let mut p = stored.clone();
    let m = &mut p.metadata;
    m.name = None;
    m.generate_name = Some("resubmit-".into());
    m.uid = None;
    m.resource_version = None;
    m.creation_timestamp = None;
    m.managed_fields = None;
    p.status = None;
    p
}

/// The parts of a pod the webhook may touch, for comparing two admissions.
fn mutable_shape(p: &Pod) -> Value {
    let spec = p.spec.as_ref().unwrap();
    json!({
        "annotation": annotation(p),
        "share": spec.share_process_namespace,
        "volumes": spec.volumes.iter().flatten().map(|v| &v.name).collect::<Vec<_>>(),
        "containers": all_containers(p).iter().map(|c| json!({
            "name": c.name, "command": c.command, "args": c.args,
            "mounts": c.volume_mounts.iter().flatten()
                .map(|m| (&m.name, &m.mount_path)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[tokio::test]
async fn real_world_corpus_is_mutated_accepted_and_idempotent() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    let w = Webhook::start(cp, &client).await;
    let ns = w.namespace(cp, "corpus", &[]).await;
    let pods = corpus();
    assert!(
        pods.len() >= 20,
        "the corpus needs at least 20 pods, has {}",
        pods.len()
    );
    let mut failures = Vec::new();
    for (file, original) in &pods {
        let want = original
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EXPECT));
        let want = want.unwrap_or_else(|| panic!("{file}: no {EXPECT} annotation"));
        // A real create: the API server validates the mutated pod and stores it.
        let stored = create(&client, &ns, original, false).await;
        let got = annotation(&stored).unwrap_or("<none>");
        if got != want {
            failures.push(format!(
                "{file}: reaper.dev/injected = {got:?}, want {want:?}"
            ));
            continue;
        }
        if let Err(e) = check_mutation(original, &stored, got) {
            failures.push(format!("{file}: {e}"));
            continue;
        }
        let again = create(&client, &ns, &resubmittable(&stored), false).await;
        if mutable_shape(&again) != mutable_shape(&stored) {
            failures.push(format!(
                "{file}: re-submitting the mutated pod changed it:\n first {}\n again {}",
                mutable_shape(&stored),
                mutable_shape(&again)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus pods failed:\n{}\nwebhook log:\n{}",
        failures.len(),
        pods.len(),
        failures.join("\n"),
        w.logs()
    );
    w.stop().await;
}

/// Sets (or with `None` removes) the opt-in labels of an existing namespace.
async fn label_namespace(client: &Client, name: &str, id: Option<&str>) {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    use kube::api::{Patch, PatchParams};
    let labels = match id {
        Some(id) => json!({"reaper.dev/inject": "enabled", TEST_LABEL: id}),
        None => json!({"reaper.dev/inject": null, TEST_LABEL: null}),
    };
    let namespaces = Api::<Namespace>::all(client.clone());
    if id.is_some() && namespaces.get_opt(name).await.unwrap().is_none() {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.into());
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    namespaces
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await
        .unwrap_or_else(|e| panic!("labelling namespace {name}: {e}"));
    if id.is_some() {
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some("default".into());
        match Api::<ServiceAccount>::namespaced(client.clone(), name)
            .create(&PostParams::default(), &sa)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating {name}/default ServiceAccount: {e}"),
        }
    }
}

#[tokio::test]
async fn kube_system_and_its_own_namespace_are_never_touched() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    let w = Webhook::start(cp, &client).await;
    let app = pod(
        "app",
        json!({"containers": [{"name": "app", "image": "x:1", "command": ["/app"]}]}),
    );
    // The same pod is injected in an ordinary opted-in namespace...
    let ns = w.namespace(cp, "control", &[]).await;
    assert_eq!(
        annotation(&create(&client, &ns, &app, true).await),
        Some("inject:app")
    );
    // ...but not in kube-system or the webhook's own namespace (POD_NAMESPACE), even when their
    // labels send the request to the webhook (the chart's namespaceSelector would not).
    for excluded in ["kube-system", "reaper-system"] {
        label_namespace(&client, excluded, Some(&w.id)).await;
        let got = create(&client, excluded, &app, true).await;
        label_namespace(&client, excluded, None).await;
        assert_eq!(annotation(&got), None, "{excluded} was mutated");
        assert_eq!(container(&got, "app").command.as_deref().unwrap(), ["/app"]);
        assert!(got.spec.as_ref().unwrap().init_containers.is_none());
    }
    w.stop().await;
}

#[tokio::test]
async fn pods_are_still_created_when_the_webhook_is_down() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    let mut w = Webhook::start_with(cp, &client, "Ignore").await;
    let ns = w.namespace(cp, "failopen", &[]).await;
    let app = pod(
        "app",
        json!({"containers": [{"name": "app", "image": "x:1", "command": ["/app"]}]}),
    );
    assert_eq!(
        annotation(&create(&client, &ns, &app, true).await),
        Some("inject:app")
    );

    w.child.0.kill().expect("killing the webhook");
    w.child.0.wait().expect("reaping the webhook");
    let started = Instant::now();
    let got = create(&client, &ns, &app, false).await;
    assert_eq!(annotation(&got), None);
    assert_eq!(container(&got, "app").command.as_deref().unwrap(), ["/app"]);
    // Connection refused fails fast; the registration's 10 s timeout is the upper bound.
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "took {:?}",
        started.elapsed()
    );
    w.stop().await;
}

/// Injection never changes a pod's QoS class: the API server computes `status.qosClass` of the
/// same Guaranteed, Burstable and BestEffort pods equally with and without the webhook (an
/// installer with requests below its limits used to turn Guaranteed pods Burstable, and give
/// BestEffort pods requests).
#[tokio::test]
async fn injection_keeps_every_qos_class() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    let w = Webhook::start(cp, &client).await;
    let wrapped_ns = w.namespace(cp, "qos", &[]).await;
    let plain_ns = cp.ns(&client, "qos-plain").await;
    let with = |resources: Value| {
        let mut c = restricted("app", "ghcr.io/acme/app:1", Some(&["/app"]));
        c["resources"] = resources;
        c
    };
    let exact = json!({"requests": {"cpu": "250m", "memory": "128Mi"},
                       "limits": {"cpu": "250m", "memory": "128Mi"}});
    for (name, spec, want) in [
        (
            "guaranteed",
            json!({"containers": [with(exact.clone())]}),
            "Guaranteed",
        ),
        (
            "guaranteed-limits-only",
            json!({"containers": [with(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))]}),
            "Guaranteed",
        ),
        (
            "burstable",
            json!({"containers": [with(json!({"requests": {"cpu": "100m"}}))]}),
            "Burstable",
        ),
        (
            "besteffort",
            json!({"containers": [with(json!({}))]}),
            "BestEffort",
        ),
    ] {
        let p = pod(name, spec);
        let plain = create(&client, &plain_ns, &p, false).await;
        let wrapped = create(&client, &wrapped_ns, &p, false).await;
        assert_eq!(
            annotation(&wrapped),
            Some("inject:app"),
            "{name}: {}",
            w.logs()
        );
        let qos = |p: &Pod| p.status.as_ref().and_then(|s| s.qos_class.clone());
        assert_eq!(
            qos(&plain).as_deref(),
            Some(want),
            "{name} without the webhook"
        );
        assert_eq!(
            qos(&wrapped),
            qos(&plain),
            "{name}: the webhook changed its QoS class"
        );
    }
    w.stop().await;
}

/// With `--client-ca-file`, the webhook serves the API server (which presents the client
/// certificate of its admission configuration, as docs/security.md describes) and refuses every other
/// client at the TLS handshake: a pod in the cluster cannot call /mutate itself.
#[tokio::test]
async fn only_the_api_server_may_call_the_webhook_with_client_auth() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    let ca_file = cp.webhook_client_ca_file();
    let w = Webhook::start_args(
        cp,
        &client,
        "Fail",
        &["--client-ca-file", ca_file.to_str().unwrap()],
    )
    .await;
    let ns = w.namespace(cp, "client-auth", &[]).await;
    let spec = json!({"containers": [restricted("app", "ghcr.io/acme/app:1", Some(&["/app"]))]});
    let got = create(&client, &ns, &pod("web", spec), false).await;
    assert_eq!(annotation(&got), Some("inject:app"), "{}", w.logs());
    let served = w.admissions().await;
    assert!(served >= 1);

    // Any other client: the handshake fails, whatever certificate it brings.
    let direct = |identity: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(w.ca_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(5));
        if let Some(id) = identity {
            b = b.identity(id);
        }
        b.build().unwrap()
    };
    let review = include_str!("../fixtures/pods/reviews/deployment-3-containers.json");
    // A client certificate the API server itself trusts (the cluster CA), but not the webhook.
    let cluster_user = cp.ca().issue_client("system:admin", &["system:masters"]);
    let cluster_identity = reqwest::Identity::from_pem(
        format!("{}{}", cluster_user.cert_pem, cluster_user.key_pem).as_bytes(),
    )
    .unwrap();
    for (what, identity) in [
        ("no certificate", None),
        ("a cluster-CA certificate", Some(cluster_identity)),
    ] {
        let r = direct(identity)
            .post(format!("https://127.0.0.1:{}/mutate", w.port))
            .header("content-type", "application/json")
            .body(review)
            .send()
            .await;
        assert!(r.is_err(), "served a client with {what}: {r:?}");
    }
    assert_eq!(
        w.admissions().await,
        served,
        "a refused client was answered"
    );
    w.stop().await;
}

/// `reaper-controller inject` applied offline and the webhook through the API server agree on
/// every corpus pod: the pod `inject` prints, created in a namespace the webhook does not
/// touch, is stored exactly as the original created in an opted-in namespace.
#[tokio::test]
async fn inject_offline_agrees_with_the_webhook_on_the_corpus() {
    use reaper::cli::inject;
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    let w = Webhook::start(cp, &client).await;
    let ns = w.namespace(cp, "agree", &[]).await;
    let plain = cp.ns(&client, "plain").await;
    // The same policies the webhook sees (other tests' are scoped to their own namespaces).
    let policies = Api::<ReaperPolicy>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    let namespace_labels: Vec<String> = [
        ("reaper.dev/inject", "enabled"),
        (TEST_LABEL, w.id.as_str()),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={v}"))
    .collect();
    let args = inject::Args {
        file: "-".into(),
        policies: None,
        reaper_image: REAPER_IMAGE.into(),
        mount_path: "/.reaper".into(),
        default_mode: Mode::Auto,
        image_volumes: false,
        namespace: ns.clone(),
        namespace_labels,
    };
    let opts = inject::options(&args, policies).unwrap();
    let mut failures = Vec::new();
    let pods = corpus();
    for (file, original) in &pods {
        let by_webhook = create(&client, &ns, original, true).await;
        let mut offline = serde_json::to_value(original).unwrap();
        inject::inject_object(&mut offline, &opts).unwrap();
        let offline: Pod = serde_json::from_value(offline).unwrap();
        let by_inject = create(&client, &plain, &offline, true).await;
        if support::chart::cluster::comparable_pod(&by_webhook)
            != support::chart::cluster::comparable_pod(&by_inject)
        {
            failures.push(format!(
                "{file}:\n webhook {}\n inject  {}",
                support::chart::cluster::comparable_pod(&by_webhook),
                support::chart::cluster::comparable_pod(&by_inject)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus pods differ:\n{}",
        failures.len(),
        pods.len(),
        failures.join("\n")
    );
    w.stop().await;
}

/// `/metrics` of the webhook as text.
async fn metrics_text(w: &Webhook) -> String {
    let url = format!("http://127.0.0.1:{}/metrics", w.admin);
    reqwest::get(&url).await.unwrap().text().await.unwrap()
}

/// events.k8s.io/v1 Events in `ns` regarding the object with `uid`.
async fn events_regarding(
    client: &Client,
    ns: &str,
    uid: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid))
        .collect()
}

/// A ReplicaSet that never runs (`replicas: 0`; its controller-made pods are made here).
async fn replica_set(client: &Client, ns: &str, name: &str) -> (String, String) {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    let rs: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}
            }
        }
    }))
    .unwrap();
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &rs)
        .await
        .expect("creating a ReplicaSet");
    (name.to_string(), rs.metadata.uid.unwrap())
}

/// A pod as the ReplicaSet controller makes it: `generateName`, no name, a controller owner.
fn owned_pod(rs: &(String, String), annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-", rs.0),
            "labels": {"app": rs.0},
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs.0, "uid": rs.1,
                "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}
    }))
    .unwrap()
}

fn annotation_of<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Skips and fallbacks reach people: a Deployment-shaped pod (owned by a ReplicaSet) that falls
/// back to `share` gives one `Normal` `ProtectionFallback` Event on its ReplicaSet however many
/// such pods are created; one that is left unprotected a `Warning` `PodNotProtected`; dry-run
/// creates give none. `reaper_webhook_requests_total` names the reason and the namespace, and
/// mutated pods carry the release that wrapped them and their policy.
#[tokio::test]
async fn skips_and_fallbacks_become_one_event_per_owner_and_reason() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    let w = Webhook::start(cp, &client).await;
    let ns = w.namespace(cp, "events", &[]).await;
    let web = replica_set(&client, &ns, "web").await;
    let dry = replica_set(&client, &ns, "dry").await;

    // Dry runs first: had they produced an Event, it would be there before the real ones.
    for _ in 0..2 {
        let got = create(&client, &ns, &owned_pod(&dry, json!({})), true).await;
        assert_eq!(annotation(&got), Some("share"), "{}", w.logs());
    }
    // nginx's argv is unknown (no registry here): auto falls back to share, three times.
    for _ in 0..3 {
        let got = create(&client, &ns, &owned_pod(&web, json!({})), false).await;
        assert_eq!(annotation(&got), Some("share"), "{}", w.logs());
        assert_eq!(
            annotation_of(&got, "reaper.dev/version"),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(annotation_of(&got, "reaper.dev/policy"), None, "no policy");
    }
    // inject asked for, argv unknown: left unprotected, twice.
    for _ in 0..2 {
        let got = create(
            &client,
            &ns,
            &owned_pod(&web, json!({"reaper.dev/mode": "inject"})),
            false,
        )
        .await;
        assert_eq!(annotation(&got), Some("skipped:not-wrappable"));
        assert_eq!(annotation_of(&got, "reaper.dev/version"), None);
    }
    // Sent in the background: wait for both, then make sure no third one follows.
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = events_regarding(&client, &ns, &web.1).await;
        if events.len() >= 2 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            break events_regarding(&client, &ns, &web.1).await;
        }
        assert!(
            Instant::now() < deadline,
            "Events regarding ReplicaSet {}: {events:#?}\nwebhook log:\n{}",
            web.0,
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut seen: Vec<(String, String)> = events
        .iter()
        .map(|e| (e.reason.clone().unwrap(), e.type_.clone().unwrap()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("PodNotProtected".to_string(), "Warning".to_string()),
            ("ProtectionFallback".to_string(), "Normal".to_string()),
        ],
        "{events:#?}"
    );
    for e in &events {
        let r = e.regarding.as_ref().unwrap();
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref(), r.namespace.as_deref()),
            (Some("ReplicaSet"), Some("web"), Some(ns.as_str()))
        );
        assert_eq!(
            e.reporting_controller.as_deref(),
            Some("reaper.dev/webhook")
        );
        let note = e.note.as_deref().unwrap_or_default();
        assert!(note.contains("web-"), "the note names the pod: {note}");
    }
    let fallback = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("ProtectionFallback"))
        .unwrap();
    assert!(
        fallback
            .note
            .as_deref()
            .unwrap()
            .contains("shareProcessNamespace"),
        "{fallback:?}"
    );
    assert_eq!(
        events_regarding(&client, &ns, &dry.1).await.len(),
        0,
        "a dry run produced an Event"
    );

    // The metric names the reason and the namespace.
    let text = metrics_text(&w).await;
    for line in [
        format!(
            r#"reaper_webhook_requests_total{{result="share",mode="auto",reason="auto-share",namespace="{ns}"}} 5"#
        ),
        format!(
            r#"reaper_webhook_requests_total{{result="skipped",mode="inject",reason="not-wrappable",namespace="{ns}"}} 2"#
        ),
    ] {
        assert!(text.contains(&line), "no {line} in\n{text}");
    }

    // Under a policy, a wrapped pod names it (and the release).
    let pns = w.namespace(cp, "events-policy", &[]).await;
    let policy = unique_name("governing");
    apply_policy(
        &client,
        &policy,
        ReaperPolicySpec {
            namespace_selector: only_namespace(&pns),
            mode: Mode::Inject,
            ..Default::default()
        },
    )
    .await;
    let app = pod(
        "app",
        json!({"containers": [{"name": "app", "image": "x:1", "command": ["/app"]}]}),
    );
    eventually_annotated(&client, &pns, &app, "inject:app").await;
    let got = create(&client, &pns, &app, false).await;
    assert_eq!(
        annotation_of(&got, "reaper.dev/version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        annotation_of(&got, "reaper.dev/policy"),
        Some(policy.as_str())
    );
    let _ = Api::<ReaperPolicy>::all(client.clone())
        .delete(&policy, &DeleteParams::default())
        .await;
    w.stop().await;
}
