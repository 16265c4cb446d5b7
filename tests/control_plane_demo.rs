//! `make demo` is the README's main job: run it unattended (`DEMO_EXIT=1`) and check that every
//! step did what it prints. The demo starts its own control plane (tests/support/control_plane.rs).
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::control_plane::{self, SKIP_ENV};

#[test]
fn make_demo_runs_every_step_and_exits_0() {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        // Same rule as every control-plane test (refused in CI).
        assert!(control_plane::shared().is_none());
        return;
    }
    // What `make demo` runs after building the tools and reaper-controller. `make test` builds the
    // example first (`cargo test` only builds examples as test harnesses); a nested `cargo run`
    // would rebuild under the test's environment and make the next `cargo test` rebuild again.
    let demo = control_plane::repo_root().join("target/debug/examples/demo");
    assert!(
        demo.is_file(),
        "{} is missing: run `cargo build --example demo` (`make test` does)",
        demo.display()
    );
    let mut child = Command::new(&demo)
        .current_dir(control_plane::repo_root())
        .env("DEMO_EXIT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting target/debug/examples/demo");
    let deadline = Instant::now() + Duration::from_secs(600);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not finish within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stdout}\n{stderr}");
    for want in [
        "== 7. sample pods",
        // webhook: wrapped, fallback to share, opt-out untouched
        "pod with-command: reaper.dev/injected=inject:app",
        "+ initContainer reaper-install",
        r#"-> ["/.reaper/reaper", "--grace=5s", "--", "sh", "-c""#,
        "pod image-entrypoint: reaper.dev/injected=share",
        "shareProcessNamespace: None -> Some(true)",
        "pod opted-out: reaper.dev/injected=<none>",
        // agent: this machine's report
        "demo-node   demo-node",
        // operator: the policy governs the two protected pods
        "reason: Reconciled",
        "protectedPods: 2",
        "Demo ready in",
    ] {
        assert!(
            stdout.contains(want),
            "missing {want:?} in:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        !stdout.contains("pending"),
        "a step is still pending:\n{stdout}"
    );
}
