//! The chart on a real kube-apiserver (tests/support/control_plane.rs): `helm template` output of
//! every certificate mode, and `deploy/reaper.yaml`, accepted by server-side dry-run apply (the
//! API server runs schema validation, defaulting and admission, stores nothing); the pods the
//! chart's workloads create pass Pod Security admission at the level NOTES.txt asks for.
//!
//! cert-manager and prometheus-operator are not installed here: their types (Issuer,
//! Certificate, ServiceMonitor) are served by stand-in CRDs with an open schema, so for those
//! objects the dry run checks the group/version/kind and the metadata only.
use reaper_test_support as support;
use reaper_test_support::chart as chart_common;

use chart_common::{V, certs_modes, cluster, parse_stream, render};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::control_plane::{self, unique_name};

/// A CRD with an open schema for a third-party kind the chart renders.
fn stand_in_crd(group: &str, kind: &str, plural: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    })
}

/// The project's CRDs plus the stand-ins, installed and served (discovery sees them).
async fn install_types(cp: &control_plane::ControlPlane, client: &Client) {
    cp.install_crds(client).await;
    let crds = [
        stand_in_crd("cert-manager.io", "Issuer", "issuers"),
        stand_in_crd("cert-manager.io", "Certificate", "certificates"),
        stand_in_crd("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
    ];
    for crd in &crds {
        cluster::apply(client, crd, false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // Wait until discovery serves them (a fresh CRD takes a moment to be Established).
    let deadline = Instant::now() + Duration::from_secs(30);
    for crd in &crds {
        let probe = json!({
            "apiVersion": format!("{}/v1", crd["spec"]["group"].as_str().unwrap()),
            "kind": crd["spec"]["names"]["kind"],
            "metadata": {"name": "probe", "namespace": "default"},
        });
        loop {
            match cluster::apply(client, &probe, true).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "stand-in CRD not served within 30 s: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Values that also render the optional objects (ServiceMonitor), for each certificate mode.
fn modes_with_everything() -> Vec<(&'static str, Vec<V<'static>>)> {
    certs_modes()
        .into_iter()
        .map(|(mode, mut values)| {
            values.push(V::Set("serviceMonitor.enabled", "true"));
            (mode, values)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_certs_mode_is_accepted_by_server_side_dry_run_apply() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    install_types(cp, &client).await;
    for (mode, values) in modes_with_everything() {
        // Namespaced objects need their namespace to exist, even for a dry run.
        let ns = cp.ns(&client, "chart").await;
        let release = unique_name("r");
        let objs = render(&release, &ns, &values);
        assert!(
            objs.all().len() >= 20,
            "{mode}: {} objects",
            objs.all().len()
        );
        // What `helm install` creates: `helm test`'s hook objects come later, with their
        // ServiceAccount created first (the node suite runs `helm test` for real).
        let installed: Vec<Value> = objs
            .all()
            .iter()
            .filter(|o| o["metadata"]["annotations"]["helm.sh/hook"] != "test")
            .cloned()
            .collect();
        let errors = cluster::apply_all(&client, &installed, true).await;
        assert!(
            errors.is_empty(),
            "{mode}: rejected by the API server:\n{errors:#?}"
        );
        // Nothing was stored.
        let mwc = objs.of_kind("MutatingWebhookConfiguration")[0]["metadata"]["name"]
            .as_str()
            .unwrap();
        let api: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
            Api::all(client.clone());
        assert!(
            api.get_opt(mwc).await.unwrap().is_none(),
            "{mode}: dry run stored {mwc}"
        );
    }
}

/// The dry run is a real check: a value the schema lets through but the API server refuses
/// (timeoutSeconds above 30) is reported against the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_rejects_what_the_api_server_refuses() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    install_types(cp, &client).await;
    let ns = cp.ns(&client, "chart-bad").await;
    let objs = render(&unique_name("r"), &ns, &[]);
    let mut mwc = objs.of_kind("MutatingWebhookConfiguration")[0].clone();
    mwc["webhooks"][0]["timeoutSeconds"] = json!(31);
    let err = cluster::apply(&client, &mwc, true)
        .await
        .expect_err("timeoutSeconds 31 accepted");
    assert!(err.contains("timeoutSeconds"), "{err}");
    let mut dep = objs.of_kind("Deployment")[0].clone();
    dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!("lots");
    let err = cluster::apply(&client, &dep, true)
        .await
        .expect_err("cpu 'lots' accepted");
    assert!(err.to_lowercase().contains("quantit"), "{err}");
}

/// deploy/reaper.yaml as users apply it: the Namespace for real, then every object (dry run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_manifest_is_accepted() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    install_types(cp, &client).await;
    let text =
        std::fs::read_to_string(control_plane::repo_root().join("deploy/reaper.yaml")).unwrap();
    let objs = parse_stream(&text);
    assert_eq!(objs[0]["kind"], "Namespace");
    cluster::apply(&client, &objs[0], false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let errors = cluster::apply_all(&client, &objs[1..], true).await;
    assert!(
        errors.is_empty(),
        "deploy/reaper.yaml rejected:\n{errors:#?}"
    );
}

/// A pod as the workload controller would create it from `workload`'s template.
fn pod_of(workload: &Value, ns: &str) -> Pod {
    let template = &workload["spec"]["template"];
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": unique_name(workload["metadata"]["name"].as_str().unwrap()),
            "namespace": ns,
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    }))
    .expect("a pod from the template")
}

/// Dry-run creates of `pod`: Ok or the API server's message.
async fn admit(client: &Client, ns: &str, pod: &Pod) -> Result<(), String> {
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&pp, pod)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The webhook's and operator's pods pass Pod Security "restricted"; the agent's (hostPID,
/// hostPath) only "privileged", which is what NOTES.txt and deploy/reaper.yaml label the release
/// namespace with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_pods_pass_pod_security_at_the_documented_levels() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    install_types(cp, &client).await;
    let mut namespaces = Vec::new();
    for level in ["restricted", "baseline", "privileged"] {
        let ns = cp
            .ns_with_labels(
                &client,
                &format!("psa-{level}"),
                &[("pod-security.kubernetes.io/enforce", level)],
            )
            .await;
        namespaces.push((level, ns));
    }
    for (level, ns) in &namespaces {
        let objs = render(&unique_name("r"), ns, &[]);
        // Pods name their ServiceAccount: the ServiceAccount admission plugin wants it to exist.
        for sa in objs.of_kind("ServiceAccount") {
            cluster::apply(&client, sa, false)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for workload in objs
            .of_kind("Deployment")
            .into_iter()
            .chain(objs.of_kind("DaemonSet"))
        {
            let name = cluster::id(workload);
            let got = admit(&client, ns, &pod_of(workload, ns)).await;
            let is_agent = workload["kind"] == "DaemonSet";
            match (is_agent, *level) {
                (false, _) | (true, "privileged") => {
                    got.unwrap_or_else(|e| panic!("{name} refused at {level}: {e}"))
                }
                (true, _) => {
                    let e = got.expect_err(&format!("{name} admitted at {level}"));
                    assert!(e.contains("hostPID"), "{name} at {level}: {e}");
                }
            }
        }
    }
}

/// `helm install` for real (pods never run here: no scheduler), the NOTES it prints, and
/// `helm uninstall`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_and_uninstall_on_the_api_server() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    // The CRDs first, as the other tests of this suite install them concurrently with kubectl;
    // Helm would refuse to adopt them, so this release leaves them out (`crds.enabled=false`;
    // chart_crds.rs installs them with Helm on a control plane of its own).
    cp.install_crds(&client).await;
    let ns = cp.ns(&client, "helm").await;
    let release = unique_name("h");
    let out = cluster::install(cp, "install", &release, &ns, &[], &[]);
    for want in [
        "STATUS: deployed",
        &format!("kubectl label namespace {ns} \\"),
        "pod-security.kubernetes.io/enforce=privileged",
        "kubectl label namespace <your-namespace> reaper.dev/inject=enabled",
        "Or opt a single pod in where its namespace is not labelled: pod label reaper.dev/inject=enabled.",
        "Certificates: self-managed",
    ] {
        assert!(out.contains(want), "NOTES lack {want:?}:\n{out}");
    }
    // What it created is there, as rendered.
    let mwc_name = format!("{release}-reaper-webhook");
    let mwcs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    let mwc = mwcs
        .get(&mwc_name)
        .await
        .expect("the MutatingWebhookConfiguration");
    let hook = &mwc.webhooks.unwrap()[0];
    assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), &ns);
    deps.get(&format!("{release}-reaper-webhook"))
        .await
        .expect("the webhook Deployment");
    // The certificate Secrets belong to the release, empty until the operator fills them; what
    // the operator writes survives `helm upgrade` (three-way merge: the chart never changes them).
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let names = [
        format!("{release}-reaper-webhook-tls"),
        format!("{release}-reaper-webhook-tls-ca"),
    ];
    for name in &names {
        let s = secrets.get(name).await.expect("a certificate Secret");
        assert_eq!(s.data, None, "{name} comes with data");
    }
    let filled = json!({"data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5", "ca.crt": "Y2E="}});
    secrets
        .patch(
            &names[0],
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&filled),
        )
        .await
        .unwrap();
    let out = cluster::install(cp, "upgrade", &release, &ns, &[], &[]);
    assert!(out.contains("has been upgraded"), "{out}");
    let kept = secrets.get(&names[0]).await.unwrap();
    assert_eq!(
        serde_json::to_value(&kept.data).unwrap(),
        filled["data"],
        "helm upgrade reset the operator's certificate"
    );
    let out = cluster::helm(
        cp,
        &ns,
        &["uninstall", &release, "--wait", "--timeout", "60s"],
    );
    assert!(out.contains("uninstalled"), "{out}");
    assert!(
        mwcs.get_opt(&mwc_name).await.unwrap().is_none(),
        "uninstall left {mwc_name}"
    );
    for name in &names {
        assert!(
            secrets.get_opt(name).await.unwrap().is_none(),
            "uninstall left the Secret {name}"
        );
    }
}
