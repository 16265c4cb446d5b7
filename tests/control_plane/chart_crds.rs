//! The chart's CRDs are templates (templates/crds.yaml, files/crds/), so they follow the release:
//! `helm install` creates them with the release's labels and Helm's keep policy, `helm upgrade`
//! upgrades them (a chart whose ReaperPolicy schema predates mode `Image` is upgraded to this
//! one's, which a chart `crds/` directory never does), `helm uninstall` leaves them by default
//! (`crds.keep`: users' policies survive), a new install adopts them, and after an upgrade to
//! `crds.keep=false` uninstalling deletes them.
//!
//! A suite of its own: its control plane has no CRDs installed by kubectl, which Helm would refuse
//! to adopt.
use reaper_test_support as support;
use reaper_test_support::chart as chart_common;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use support::control_plane;

const CRDS: [&str; 2] = ["reaperpolicies.reaper.dev", "zombiereports.reaper.dev"];

/// The `mode` enum of the stored ReaperPolicy schema.
async fn modes(crds: &Api<CustomResourceDefinition>) -> Vec<String> {
    let crd = serde_json::to_value(crds.get(CRDS[0]).await.unwrap()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["mode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// A copy of the chart as an earlier release shipped it: ReaperPolicy without mode `Image`.
fn older_chart(dir: &Path) -> String {
    let chart = chart_common::chart_dir();
    let ok = std::process::Command::new("cp")
        .arg("-r")
        .arg(&chart)
        .arg(dir.join("reaper"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "copying the chart");
    let file = dir.join("reaper/files/crds/reaperpolicies.reaper.dev.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let older = text.replacen("                - Image\n", "", 1);
    assert_ne!(
        older, text,
        "the ReaperPolicy CRD has no `- Image` enum line to remove"
    );
    std::fs::write(&file, older).unwrap();
    dir.join("reaper").display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_upgrades_and_keeps_the_crds() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ns = cp.ns(&client, "crds").await;
    let helm = |args: &[&str]| chart_common::cluster::helm(cp, &ns, args);
    let tmp = tempfile::tempdir().unwrap();
    let older = older_chart(tmp.path());
    let chart = chart_common::chart_dir().display().to_string();

    helm(&["install", "r", &older]);
    for name in CRDS {
        let crd = serde_json::to_value(crds.get(name).await.unwrap()).unwrap();
        let meta = &crd["metadata"];
        assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "Helm");
        assert_eq!(meta["labels"]["app.kubernetes.io/instance"], "r");
        assert_eq!(meta["annotations"]["meta.helm.sh/release-name"], "r");
        assert_eq!(meta["annotations"]["helm.sh/resource-policy"], "keep");
    }
    assert!(!modes(&crds).await.contains(&"Image".to_string()));

    helm(&["upgrade", "r", &chart]);
    assert_eq!(
        modes(&crds).await,
        ["Auto", "Inject", "Image", "Share", "Off"],
        "helm upgrade did not upgrade the ReaperPolicy CRD"
    );

    helm(&["uninstall", "r", "--wait", "--timeout", "60s"]);
    for name in CRDS {
        crds.get(name)
            .await
            .unwrap_or_else(|e| panic!("{name} gone after helm uninstall with crds.keep: {e}"));
    }

    // The kept CRDs still name the release: installing it again adopts them. To remove Reaper for
    // good, `helm upgrade --set crds.keep=false` drops the keep policy (an adopting install
    // would not: Helm leaves fields it did not set) and `helm uninstall` then deletes them.
    helm(&["install", "r", &chart]);
    helm(&["upgrade", "r", &chart, "--set", "crds.keep=false"]);
    let crd = serde_json::to_value(crds.get(CRDS[0]).await.unwrap()).unwrap();
    assert_eq!(
        crd["metadata"]["annotations"]
            .get("helm.sh/resource-policy")
            .cloned(),
        None::<Value>
    );
    helm(&["uninstall", "r", "--wait", "--timeout", "60s"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in CRDS {
        while crds.get_opt(name).await.unwrap().is_some() {
            assert!(
                Instant::now() < deadline,
                "{name} still there after helm uninstall with crds.keep=false"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
