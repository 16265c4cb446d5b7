//! `make release-dry-run`: the release workflow (.github/workflows/release.yml) as far as this
//! machine allows, ending where a new user starts. Both images are built from the Dockerfile's
//! source stages (`BINARIES=build`, amd64) on a base image made here from Debian packages
//! (e2e/release/build-base.sh: nothing is pulled), pushed with the packaged chart (OCI) to the
//! node's registry standing in for ghcr.io, and then the README's three install commands run
//! against it on a real node: `helm install ... oci://...`, `kubectl label namespace`, `check`.
//! A pod in the labelled namespace must come up wrapped (PID 1 `reaper`) under Pod Security
//! `restricted`, and the chart's `helm test` must pass.
//!
//! Skipped (loudly) where no node can run, like the node suite; never in CI.
use reaper_test_support as support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::node::{self, Node};
use support::process::run;

const NS: &str = "reaper-system";
const APP_NS: &str = "release-demo";
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`, panicking with its output on failure; stdout.
fn ok(what: &str, cmd: Command, timeout: Duration) -> String {
    let started = Instant::now();
    let (success, out, err) = run(cmd, timeout);
    assert!(success, "{what} failed:\n{out}{err}");
    eprintln!("release: {what}: {:.1} s", started.elapsed().as_secs_f64());
    out
}

fn podman(args: &[&str]) -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(args).current_dir(repo());
    cmd
}

/// The Dockerfile's `target` stage built from source on `base`, pushed as `image`.
fn build_and_push(base: &str, target: &str, image: &str) {
    let local = format!("localhost/reaper-release/{target}:{VERSION}");
    ok(
        &format!("podman build --target {target} (BINARIES=build)"),
        podman(&[
            "build",
            "--pull=never",
            // This machine's runc and rlimits (see ../shared/NOTES.md); a CI runner needs neither.
            "--runtime",
            "/usr/sbin/runc",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1000:1000",
            "--build-arg",
            &format!("RUST_IMAGE={base}"),
            "--build-arg",
            "BINARIES=build",
            "--build-arg",
            &format!("VERSION={VERSION}"),
            "--target",
            target,
            "-t",
            &local,
            ".",
        ]),
        Duration::from_secs(3600),
    );
    ok(
        &format!("podman push {image}"),
        podman(&[
            "push",
            "-q",
            "--tls-verify=false",
            &local,
            &format!("docker://{image}"),
        ]),
        Duration::from_secs(300),
    );
}

fn kubectl(node: &Node, what: &str, args: &[&str]) -> String {
    let mut cmd = node.kubectl();
    cmd.args(args);
    ok(what, cmd, Duration::from_secs(300))
}

fn helm(node: &Node, what: &str, args: &[&str]) -> String {
    let mut cmd = node.helm();
    cmd.args(args);
    ok(what, cmd, Duration::from_secs(600))
}

#[test]
fn release_dry_run_installs_from_oci_and_wraps_a_pod() {
    let Some(node) = node::shared() else { return };
    let registry = &node.registry;

    // The workflow's `images` job, for amd64, into the stand-in registry.
    let base = ok(
        "e2e/release/build-base.sh",
        Command::new(repo().join("e2e/release/build-base.sh")),
        Duration::from_secs(1200),
    );
    let base = base.trim();
    let reaper_repo = format!("{registry}/reaper-dev/release/reaper");
    let controller_repo = format!("{registry}/reaper-dev/release/reaper-controller");
    build_and_push(base, "reaper", &format!("{reaper_repo}:{VERSION}"));
    build_and_push(base, "controller", &format!("{controller_repo}:{VERSION}"));

    // The `chart` job: package and push as an OCI artifact.
    let dist = tempfile::tempdir().unwrap();
    let dist_dir = dist.path().to_str().unwrap();
    helm(
        node,
        "helm package",
        &[
            "package",
            repo().join("charts/reaper").to_str().unwrap(),
            "--destination",
            dist_dir,
        ],
    );
    let tgz = format!("{dist_dir}/reaper-{VERSION}.tgz");
    let charts = format!("oci://{registry}/reaper-dev/charts");
    let pushed = helm(node, "helm push", &["push", &tgz, &charts, "--plain-http"]);
    eprintln!("{pushed}");

    // The README's install, pointed at the stand-in registry (images by repository: the
    // published chart's defaults name ghcr.io; the tag is the chart's appVersion).
    helm(
        node,
        "helm install oci://",
        &[
            "install",
            "reaper",
            &format!("{charts}/reaper"),
            "--version",
            VERSION,
            "--plain-http",
            "--namespace",
            NS,
            "--create-namespace",
            "--set",
            &format!("image.controller.repository={controller_repo}"),
            "--set",
            &format!("image.reaper.repository={reaper_repo}"),
            "--set",
            &format!("registry.insecureRegistries={{{registry}}}"),
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    let deployed = kubectl(
        node,
        "images in use",
        &[
            "get",
            "pods",
            "-n",
            NS,
            "-o",
            "jsonpath={range .items[*]}{.spec.containers[*].image}{\"\\n\"}{end}",
        ],
    );
    assert!(
        deployed
            .lines()
            .all(|l| l == format!("{controller_repo}:{VERSION}")),
        "every component runs the image built from source:\n{deployed}"
    );

    kubectl(node, "create namespace", &["create", "namespace", APP_NS]);
    kubectl(
        node,
        "kubectl label namespace",
        &[
            "label",
            "namespace",
            APP_NS,
            &format!(
                "{}={}",
                reaper::keys::LABEL_INJECT,
                reaper::keys::INJECT_ENABLED
            ),
            "pod-security.kubernetes.io/enforce=restricted",
        ],
    );
    // The third command: `kubectl reaper check` is the same binary as a kubectl plugin.
    let mut check = Command::new(support::control_plane::reaper_controller_bin());
    check
        .env("KUBECONFIG", node.cp().kubeconfig())
        .args(["--log-level", "warn", "check"]);
    eprintln!(
        "{}",
        ok("reaper-controller check", check, Duration::from_secs(120))
    );

    // Pod Security `restricted`, as the namespace enforces.
    let pod = support::scenarios::restricted_pod(
        "app",
        &node.images.workload,
        Some(&["sleep", "3600"]),
        &[],
        &[],
    );
    let manifest = dist.path().join("pod.json");
    std::fs::write(&manifest, serde_json::to_string(&pod).unwrap()).unwrap();
    kubectl(
        node,
        "create pod",
        &["create", "-n", APP_NS, "-f", manifest.to_str().unwrap()],
    );
    kubectl(
        node,
        "pod Ready",
        &[
            "wait",
            "-n",
            APP_NS,
            "--for=condition=Ready",
            "pod/app",
            "--timeout=180s",
        ],
    );
    let annotation = kubectl(
        node,
        "injected annotation",
        &[
            "get",
            "pod",
            "app",
            "-n",
            APP_NS,
            "-o",
            "jsonpath={.metadata.annotations.reaper\\.dev/injected}",
        ],
    );
    assert!(annotation.starts_with("inject"), "{annotation:?}");
    let pid1 = kubectl(
        node,
        "PID 1 of the app container",
        &["exec", "-n", APP_NS, "app", "--", "cat", "/proc/1/cmdline"],
    );
    let argv: Vec<&str> = pid1.split('\0').filter(|a| !a.is_empty()).collect();
    assert_eq!(
        argv.first().map(|a| a.rsplit('/').next().unwrap_or(a)),
        Some("reaper"),
        "{argv:?}"
    );
    assert_eq!(argv[argv.len() - 2..], ["sleep", "3600"], "{argv:?}");

    let tested = helm(
        node,
        "helm test",
        &[
            "test",
            "reaper",
            "--namespace",
            NS,
            "--logs",
            "--timeout",
            "180s",
        ],
    );
    assert!(tested.contains("Phase:          Succeeded"), "{tested}");

    kubectl(
        node,
        "delete pod",
        &["delete", "-n", APP_NS, "pod/app", "--wait=true"],
    );
    helm(
        node,
        "helm uninstall",
        &["uninstall", "reaper", "--namespace", NS, "--wait"],
    );
}
