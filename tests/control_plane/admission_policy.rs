//! The MutatingAdmissionPolicy install (`admission.engine: policy | both`, #17) on a real
//! kube-apiserver, against the webhook as the chart installs it.
//!
//! Everything comes from `helm template`: the policies and bindings of `engine=policy` are applied
//! as rendered; the webhook runs here as a process with the args of the chart's Deployment and is
//! registered with the chart's MutatingWebhookConfiguration (its `clientConfig` pointed at that
//! process). Each install is scoped to its own namespaces by one extra namespace label, and made
//! to fail closed, so a CEL error shows up as a failed create instead of an unchanged pod.
//!
//! Every pod of both fixture corpora (`tests/fixtures/pods/*.json`, the planner's table, and
//! `tests/fixtures/corpus/*.yaml`) is created for real in a namespace of each install and in one
//! that none governs. The stored pods must be equal, byte for byte, wherever the policies decide;
//! where they cannot (a container without `command` needs a registry lookup, ...) they must have
//! left the pod exactly as the ungoverned namespace stores it. With `both` (the policies first,
//! then the webhook) every stored pod must equal the webhook's alone: the webhook converges on
//! what the policies did and decides the rest.
use reaper_test_support as support;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::chart::local::{self, LocalWebhook};
use support::chart::{self as chart_common, V, cluster};
use support::control_plane::{self, ControlPlane, unique_name};

/// Namespace label that scopes one install of a test.
pub(super) const TEST_LABEL: &str = "reaper.dev/test-engine";
/// Release namespace of the renderings (excluded by both engines; never created).
const RELEASE_NS: &str = "reaper-system";
const INJECTED: &str = reaper::keys::ANNOTATION_INJECTED;

pub(super) fn render(engine: &str, extra: &[V<'_>]) -> chart_common::Objects {
    let mut values = vec![V::Set("admission.engine", engine)];
    values.extend_from_slice(extra);
    chart_common::render("r", RELEASE_NS, &values)
}

/// The chart's webhook running here, and what it counted.
pub(super) struct ChartWebhook(LocalWebhook);

impl ChartWebhook {
    pub(super) async fn start(
        cp: &ControlPlane,
        client: &Client,
        objs: &chart_common::Objects,
    ) -> Self {
        cp.install_crds(client).await;
        Self(LocalWebhook::start(cp, objs, RELEASE_NS, &[]).await)
    }

    pub(super) fn logs(&self) -> String {
        self.0.logs()
    }

    /// [`Self::admissions_in`] once it stops moving: the webhook counts a request after its
    /// answer (and after recording an Event for a fallback), which can land after the create
    /// returned.
    pub(super) async fn settled_admissions_in(&self, ns: &str) -> u64 {
        let mut last = self.admissions_in(ns).await;
        loop {
            tokio::time::sleep(Duration::from_millis(40)).await;
            let now = self.admissions_in(ns).await;
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// Requests the webhook answered for namespace `ns` (`reaper_webhook_requests_total`).
    async fn admissions_in(&self, ns: &str) -> u64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.0.admin);
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let label = format!("namespace=\"{ns}\"");
        text.lines()
            .filter(|l| l.starts_with("reaper_webhook_requests_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// Registers the chart's MutatingWebhookConfiguration for the namespaces labelled `id`, calling
/// `w` directly, failing closed. Returns its name.
pub(super) async fn register_webhook(
    client: &Client,
    objs: &chart_common::Objects,
    w: &ChartWebhook,
    id: &str,
) -> String {
    let name = format!("engine-{id}");
    let mut mwc = local::registration(objs, &name, &w.0, TEST_LABEL, id);
    for hook in mwc["webhooks"].as_array_mut().unwrap() {
        hook["failurePolicy"] = json!("Fail");
    }
    cluster::apply(client, &mwc, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    name
}

/// Applies the rendered MutatingAdmissionPolicies and bindings for the namespaces labelled
/// `id` (renamed `<name>-<id>`), failing closed. Returns (kind, name) of what it created.
pub(super) async fn install_policies(
    client: &Client,
    objs: &chart_common::Objects,
    id: &str,
) -> Vec<(String, String)> {
    let objects = local::policies(objs, TEST_LABEL, id);
    let count = |kind: &str| objects.iter().filter(|p| p["kind"] == kind).count();
    let policies = count("MutatingAdmissionPolicy");
    assert_eq!(policies, 2, "share and wrap");
    assert!(
        count("MutatingAdmissionPolicyBinding") >= policies,
        "each bound, once per webhook entry"
    );
    let mut created = Vec::new();
    for mut p in objects {
        if p["kind"] == "MutatingAdmissionPolicy" {
            p["spec"]["failurePolicy"] = json!("Fail");
        }
        cluster::apply(client, &p, false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let name = p["metadata"]["name"].as_str().unwrap().to_string();
        created.push((p["kind"].as_str().unwrap().to_string(), name));
    }
    created
}

pub(super) async fn remove_policies(client: &Client, created: &[(String, String)]) {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding,
    };
    for (kind, name) in created {
        let dp = DeleteParams::default();
        let _ = if kind == "MutatingAdmissionPolicy" {
            Api::<MutatingAdmissionPolicy>::all(client.clone())
                .delete(name, &dp)
                .await
                .map(|_| ())
        } else {
            Api::<MutatingAdmissionPolicyBinding>::all(client.clone())
                .delete(name, &dp)
                .await
                .map(|_| ())
        };
    }
}

/// A pod every engine wraps: it declares its command.
pub(super) fn probe_pod() -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "probe-"},
        "spec": {"containers": [{"name": "app", "image": "x:1", "command": ["/app"]}]}
    }))
    .unwrap()
}

pub(super) async fn create(
    client: &Client,
    ns: &str,
    p: &Pod,
    dry_run: bool,
) -> Result<Pod, String> {
    let pp = PostParams {
        dry_run,
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&pp, p)
        .await
        .map_err(|e| e.to_string())
}

pub(super) fn injected(p: &Pod) -> Option<&str> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECTED))
        .map(String::as_str)
}

/// Waits until the API server applies what was just registered in `ns` (policies are loaded by
/// an informer, so the first creates after applying them may still miss them).
pub(super) async fn wait_active(client: &Client, ns: &str) {
    wait_active_with(client, ns, &probe_pod()).await;
}

/// [`wait_active`] with this probe pod (which must be governed and declare its command).
pub(super) async fn wait_active_with(client: &Client, ns: &str, probe: &Pod) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = create(client, ns, probe, true).await;
        if got
            .as_ref()
            .is_ok_and(|p| injected(p) == Some("inject:app"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ns}: probe pod still {got:?} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every pod of both corpora: (file name, pod), namespace and status dropped.
fn corpora() -> Vec<(String, Value)> {
    let root = control_plane::repo_root().join("tests/fixtures");
    let mut out = Vec::new();
    for (dir, ext) in [("pods", "json"), ("corpus", "yaml")] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let mut pod: Value = if ext == "json" {
                let fixture: Value = serde_json::from_str(&text).unwrap();
                fixture["pod"].clone()
            } else {
                yaml_serde::from_str(&text).unwrap()
            };
            // Fixtures share names: each create gets a generated one.
            let meta = pod["metadata"].as_object_mut().unwrap();
            meta.remove("namespace");
            if let Some(name) = meta.remove("name") {
                meta.insert(
                    "generateName".into(),
                    json!(format!("{}-", name.as_str().unwrap())),
                );
            }
            pod.as_object_mut().unwrap().remove("status");
            out.push((
                format!("{dir}/{}", f.file_name().unwrap().to_string_lossy()),
                pod,
            ));
        }
    }
    out
}

/// The stored pod as a user would create it again (`kubectl get -o yaml | kubectl create -f -`),
/// in any namespace.
fn resubmittable(stored: &Pod) -> Pod {
    let mut p = stored.clone();
    let m = &mut p.metadata;
    if m.generate_name.is_none() {
        m.generate_name = m.name.as_ref().map(|n| format!("{n}-"));
    }
    m.name = None;
    m.namespace = None;
    m.uid = None;
    m.resource_version = None;
    m.creation_timestamp = None;
    m.managed_fields = None;
    p.status = None;
    p
}

/// Why the policies may leave `pod` to the webhook (the chart's templates/_admission-policy.tpl
/// `decision == "webhook"`), or None when they must decide it: a target container without
/// `command` (its argv is in the registry), a mount at the mount path, or an install container
/// from an earlier pass.
fn left_to_the_webhook(pod: &Value) -> Option<String> {
    let spec = &pod["spec"];
    let empty = vec![];
    let init = spec["initContainers"].as_array().unwrap_or(&empty);
    let regular = spec["containers"].as_array().unwrap_or(&empty);
    let targets = init
        .iter()
        .filter(|c| c["restartPolicy"] == "Always")
        .chain(regular);
    for c in targets {
        if c["command"].as_array().is_none_or(|a| a.is_empty()) {
            return Some(format!("container {} has no command", c["name"]));
        }
        let mounts = c["volumeMounts"].as_array().unwrap_or(&empty);
        if mounts.iter().any(|m| {
            m["mountPath"]
                .as_str()
                .unwrap_or("")
                .starts_with("/.reaper")
        }) {
            return Some(format!("container {} mounts at /.reaper", c["name"]));
        }
    }
    if init.iter().any(|c| c["command"][1] == "--install") {
        return Some("an install container".into());
    }
    let mode = pod["metadata"]["annotations"]["reaper.dev/mode"]
        .as_str()
        .map(|m| m.trim().to_ascii_lowercase());
    // Nothing to decide for either engine.
    (mode.as_deref() == Some("off")).then(|| "mode off".into())
}

/// A namespace whose labels put it under the installs with these ids.
async fn namespace(cp: &ControlPlane, client: &Client, prefix: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => {
            cp.ns_with_labels(
                client,
                prefix,
                &[("reaper.dev/inject", "enabled"), (TEST_LABEL, id)],
            )
            .await
        }
        None => cp.ns(client, prefix).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_install_stores_what_the_webhook_stores_where_it_decides() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let d = engines_agree(cp, &[]).await;
    // imageVolumes detect, no nodes: image volumes only where the pod asks (mode image).
    assert!(d.image_volume >= 1 && d.init_container >= 15, "{d:?}");
}

/// The same with `webhook.imageVolumes: "true"`: `auto` mounts the reaper image instead of the
/// init container, in the webhook and in the policies alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_image_volumes_the_policy_install_still_stores_what_the_webhook_stores() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let d = engines_agree(cp, &[V::Str("webhook.imageVolumes", "true")]).await;
    // auto mounts the image; only mode inject still uses the init container.
    assert!(d.image_volume >= 15 && d.init_container <= 2, "{d:?}");
}

/// Every corpus pod under `webhook`, `policy`, `both` and no engine, rendered with `values`.
async fn engines_agree(cp: &ControlPlane, values: &[V<'_>]) -> Delivered {
    let client = cp.client().await;
    let webhook_objs = render("webhook", values);
    let policy_objs = render("policy", values);
    let both_objs = render("both", values);
    assert!(
        policy_objs
            .of_kind("MutatingWebhookConfiguration")
            .is_empty()
            && !policy_objs
                .of_kind("Deployment")
                .iter()
                .any(|d| d["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .ends_with("-webhook")),
        "engine=policy renders no webhook"
    );
    let w = ChartWebhook::start(cp, &client, &webhook_objs).await;
    let (wh_id, pol_id, both_id) = (unique_name("wh"), unique_name("pol"), unique_name("both"));
    let mut mwcs = vec![register_webhook(&client, &webhook_objs, &w, &wh_id).await];
    mwcs.push(register_webhook(&client, &both_objs, &w, &both_id).await);
    let mut policies = install_policies(&client, &policy_objs, &pol_id).await;
    policies.extend(install_policies(&client, &both_objs, &both_id).await);

    let ns_wh = namespace(cp, &client, "eng-wh", Some(&wh_id)).await;
    let ns_pol = namespace(cp, &client, "eng-pol", Some(&pol_id)).await;
    let ns_both = namespace(cp, &client, "eng-both", Some(&both_id)).await;
    let ns_plain = namespace(cp, &client, "eng-plain", None).await;
    for ns in [&ns_wh, &ns_pol, &ns_both] {
        wait_active(&client, ns).await;
    }
    // In `both` the webhook wraps the probe too: wait until the policies do, and the webhook is
    // no longer asked (policies take effect a moment after they are created).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let calls = w.settled_admissions_in(&ns_both).await;
        let probe = create(&client, &ns_both, &probe_pod(), true).await;
        if probe.is_ok() && w.settled_admissions_in(&ns_both).await == calls {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "engine both: the webhook still wraps the probe after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let pods = corpora();
    assert!(pods.len() >= 50, "both corpora: {} pods", pods.len());
    let (mut decided, mut left, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    let mut refused = Vec::new();
    let mut delivered = Delivered::default();
    for (file, raw) in &pods {
        let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
        let mut stored = Vec::new();
        let calls = w.settled_admissions_in(&ns_both).await;
        for ns in [&ns_wh, &ns_pol, &ns_both, &ns_plain] {
            stored.push(create(&client, ns, &pod, false).await);
        }
        let sent = w.settled_admissions_in(&ns_both).await > calls;
        let [by_webhook, by_policy, by_both, plain] = <[_; 4]>::try_from(stored).unwrap();
        let (by_webhook, by_policy, by_both, plain) = match (by_webhook, by_policy, by_both, plain)
        {
            (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
            // A fixture the API server refuses whatever mutates it (a mirror pod with a
            // ServiceAccount): refused alike everywhere.
            (Err(a), Err(b), Err(c), Err(d)) if [&b, &c, &d].iter().all(|e| **e == a) => {
                refused.push(format!("{file}: {a}"));
                continue;
            }
            other => {
                failures.push(format!(
                    "{file}: created in some namespaces only: {other:?}"
                ));
                continue;
            }
        };
        let (wh, pol, both, plain) = (
            cluster::comparable_pod(&by_webhook),
            cluster::comparable_pod(&by_policy),
            cluster::comparable_pod(&by_both),
            cluster::comparable_pod(&plain),
        );
        if both != wh {
            failures.push(format!(
                "{file}: engine both differs from the webhook:\n both    {both}\n webhook {wh}"
            ));
        }
        let volumes = pol["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let installers = pol["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["command"][1] == "--install")
            .count();
        if volumes.iter().any(|v| v["image"].is_object()) {
            delivered.image_volume += 1;
        }
        delivered.init_container += installers;
        if pol == wh {
            if pol != plain {
                let what = injected(&by_policy).unwrap_or("-");
                // With `both`, the registration keeps what the policies wrapped from the webhook.
                if sent && what.starts_with("inject:") {
                    failures.push(format!(
                        "{file}: wrapped by the policies, yet sent to the webhook"
                    ));
                }
                // The webhook converges on what the policies did: their pod, created again where
                // only the webhook mutates, is stored unchanged.
                match create(&client, &ns_wh, &resubmittable(&by_policy), false).await {
                    Ok(again) if cluster::comparable_pod(&again) == pol => {}
                    Ok(again) => failures.push(format!(
                        "{file}: the webhook changed the policies' pod:\n policy  {pol}\n webhook {}",
                        cluster::comparable_pod(&again)
                    )),
                    Err(e) => failures.push(format!("{file}: the policies' pod, created again: {e}")),
                }
                decided.push(format!(
                    "{file} ({what}){}",
                    if sent { ", sent to the webhook" } else { "" }
                ));
            }
        } else if pol == plain {
            match left_to_the_webhook(raw) {
                Some(why) if !sent => failures.push(format!(
                    "{file}: left by the policies ({why}) but not sent to the webhook"
                )),
                Some(why) => left.push(format!("{file}: {why}")),
                None => failures.push(format!(
                    "{file}: the policies left it unchanged, the webhook stored {:?}",
                    injected(&by_webhook)
                )),
            }
        } else {
            failures.push(format!(
                "{file}: the policies and the webhook differ:\n policy  {pol}\n webhook {wh}"
            ));
        }
    }
    eprintln!(
        "decided by the policies ({}):\n  {}\nleft to the webhook ({}):\n  {}",
        decided.len(),
        decided.join("\n  "),
        left.len(),
        left.join("\n  ")
    );
    assert!(
        failures.is_empty(),
        "{} of {} corpus pods failed:\n{}\nwebhook log:\n{}",
        failures.len(),
        pods.len(),
        failures.join("\n"),
        w.logs()
    );
    // Only the mirror pod (a ServiceAccount is refused on mirror pods) is refused.
    assert!(
        refused.len() <= 1,
        "refused everywhere:\n{}",
        refused.join("\n")
    );
    assert!(
        decided.len() >= 25,
        "the policies decided only {} pods",
        decided.len()
    );
    for name in &mwcs {
        let _ =
            Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
                client.clone(),
            )
            .delete(name, &DeleteParams::default())
            .await;
    }
    remove_policies(&client, &policies).await;
    delivered
}

/// How many pods the policies gave the reaper with an image volume, and with the init container.
#[derive(Debug, Default)]
struct Delivered {
    image_volume: usize,
    init_container: usize,
}

/// Pods that pass Pod Security `restricted` still pass it after the policies mutated them: every
/// corpus pod the `restricted` level admits in a namespace no install governs is admitted in a
/// `restricted` namespace of the policy install too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_pass_restricted_still_pass_under_the_policies() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    // With the init container, and with the image volume (imageVolumes "true").
    for values in [vec![], vec![V::Str("webhook.imageVolumes", "true")]] {
        restricted_still_pass(cp, &values).await;
    }
}

async fn restricted_still_pass(cp: &ControlPlane, values: &[V<'_>]) {
    let client = cp.client().await;
    let id = unique_name("psa");
    let policies = install_policies(&client, &render("policy", values), &id).await;
    let restricted = [
        ("pod-security.kubernetes.io/enforce", "restricted"),
        ("pod-security.kubernetes.io/enforce-version", "latest"),
    ];
    let plain = cp.ns_with_labels(&client, "psa-plain", &restricted).await;
    let mut labels = vec![("reaper.dev/inject", "enabled"), (TEST_LABEL, id.as_str())];
    labels.extend(restricted);
    let governed = cp.ns_with_labels(&client, "psa-pol", &labels).await;

    // A pod that passes `restricted` on its own and that the policies wrap.
    let secure = json!({
        "runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
    });
    let mut pods = corpora();
    pods.push((
        "restricted-app".into(),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "restricted-app"},
               "spec": {"containers": [{"name": "app", "image": "x:1", "command": ["/app"],
                                        "securityContext": secure}]}}),
    ));
    // The probe is no restricted pod: wait with a restricted one.
    let probe: Pod = serde_json::from_value(pods.last().unwrap().1.clone()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !create(&client, &governed, &probe, true)
        .await
        .is_ok_and(|p| injected(&p) == Some("inject:app"))
    {
        assert!(Instant::now() < deadline, "policies not active after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (mut passing, mut mutated, mut failures) = (0, 0, Vec::new());
    for (file, raw) in &pods {
        let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
        if create(&client, &plain, &pod, true).await.is_err() {
            continue;
        }
        passing += 1;
        match create(&client, &governed, &pod, true).await {
            Ok(p) => mutated += usize::from(injected(&p).is_some()),
            Err(e) => failures.push(format!("{file}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{values:?}: restricted pods refused once the policies mutated them:\n{}",
        failures.join("\n")
    );
    assert!(
        passing >= 2 && mutated >= 1,
        "{values:?}: {passing} pods pass restricted, {mutated} of them mutated"
    );
    remove_policies(&client, &policies).await;
}

/// The whole chart with `policy` and with `both` is accepted by server-side dry-run apply (the
/// API server compiles the policies' CEL and the registration's matchCondition), and
/// `helm install --dry-run=server` prints the NOTES of the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_engine_is_accepted_by_the_api_server_and_explained_by_the_notes() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    cp.install_crds(&client).await;
    for engine in ["policy", "both"] {
        let ns = cp.ns(&client, "engine-chart").await;
        let release = unique_name("e");
        let objs = chart_common::render(&release, &ns, &[V::Set("admission.engine", engine)]);
        let installed: Vec<Value> = objs
            .all()
            .iter()
            .filter(|o| o["metadata"]["annotations"]["helm.sh/hook"] != "test")
            .cloned()
            .collect();
        let errors = cluster::apply_all(&client, &installed, true).await;
        assert!(errors.is_empty(), "{engine}: rejected:\n{errors:#?}");

        let out = cluster::install(
            cp,
            "install",
            &release,
            &ns,
            &["--dry-run=server"],
            &[V::Set("admission.engine", engine)],
        );
        for want in [
            "Admission: MutatingAdmissionPolicies",
            "--command -- sleep 3600",
            "docs/engines.md",
        ] {
            assert!(out.contains(want), "{engine}: NOTES lack {want:?}:\n{out}");
        }
        assert_eq!(
            out.contains("Certificates:"),
            engine == "both",
            "{engine}: certificate notes:\n{out}"
        );
    }
}
