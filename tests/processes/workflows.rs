//! The GitHub workflows (.github/workflows) pass actionlint (bin/actionlint, built by
//! `make tools`), which also runs shellcheck on their `run:` scripts; the release workflow
//! publishes what the chart's defaults and the README's install command name.

use reaper_test_support::control_plane::tool;
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn workflows_pass_actionlint() {
    let actionlint = tool("actionlint").unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(actionlint)
        .current_dir(repo())
        .output()
        .expect("running actionlint");
    assert!(
        out.status.success(),
        "actionlint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn release_publishes_where_the_chart_points() {
    let release = std::fs::read_to_string(repo().join(".github/workflows/release.yml")).unwrap();
    let values = std::fs::read_to_string(repo().join("charts/reaper/values.yaml")).unwrap();
    let registry = release
        .lines()
        .find_map(|l| l.trim().strip_prefix("REGISTRY: "))
        .expect("release.yml sets env REGISTRY");
    for image in ["reaper", "reaper-controller"] {
        assert!(
            values.contains(&format!("repository: {registry}/{image}\n")),
            "values.yaml's default repository for {image} is not under {registry}"
        );
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let chart = format!("oci://{registry}/charts/reaper --version ");
    assert!(
        readme.contains(&format!("helm install reaper {chart}")),
        "README's install command does not use the published chart {chart}"
    );
    // Every image and the chart are signed; both architectures ship a static reaper.
    for needle in [
        "platforms: linux/amd64,linux/arm64",
        "cosign sign --yes \"$IMAGE\"",
        "cosign sign --yes \"$REGISTRY/charts/reaper@$digest\"",
        "arch: [amd64, arm64]",
        "sbom: true",
        "format: spdx-json",
    ] {
        assert!(release.contains(needle), "release.yml lacks {needle:?}");
    }
}
