//! docs/compatibility.md states the versions the code and the tests use: the image-volume
//! minimums of the webhook's capability check, the chart's kubeVersion, and the pinned
//! Kubernetes, containerd, helm and kind versions the suites run.

use reaper::webhook::capability::{MIN_CONTAINERD, MIN_CRIO, MIN_KUBERNETES_MINOR};
use std::path::Path;

fn read(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `KEY=value` from e2e/control-plane/versions.env.
fn pinned(key: &str) -> String {
    read("e2e/control-plane/versions.env")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("versions.env has no {key}"))
        .trim()
        .to_string()
}

#[test]
fn compatibility_table_matches_code_chart_and_pins() {
    let doc = read("docs/compatibility.md");
    let chart = read("charts/reaper/Chart.yaml");
    let kube_version = chart
        .lines()
        .find_map(|l| l.strip_prefix("kubeVersion: "))
        .expect("Chart.yaml kubeVersion");
    let kind = read(".github/workflows/e2e-kind.yml");
    let kind = kind
        .split("sigs.k8s.io/kind@")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("e2e-kind.yml installs kind@<version>");
    let mut wanted = vec![
        format!("chart `kubeVersion: {kube_version}`"),
        format!("≥ 1.{MIN_KUBERNETES_MINOR} (`ImageVolume` on by default"),
        format!(
            "containerd ≥ {}.{} or CRI-O ≥ {}.{}",
            MIN_CONTAINERD.0, MIN_CONTAINERD.1, MIN_CRIO.0, MIN_CRIO.1
        ),
        format!("| {} |", pinned("KUBERNETES_VERSION")),
        format!("| {} |", pinned("CONTAINERD_VERSION")),
        format!("| {} |", pinned("HELM_VERSION")),
        format!("| {kind} |"),
    ];
    // The chart's minimum is the table's first row.
    let min = kube_version
        .trim_matches('"')
        .trim_start_matches(">=")
        .trim_end_matches(".0-0");
    wanted.push(format!("| ≥ {min} (chart"));
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !doc.contains(w.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/compatibility.md is stale; it lacks {missing:?}"
    );
}
