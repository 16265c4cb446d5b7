//! `make demo` is the README's main job (one of its two commands): run it unattended (`DEMO_EXIT=1`) and check that every
//! step did what it prints. On the real node (tests/support/node.rs) where one can run, and the
//! API-server-only fallback (`DEMO_MODE=api`, tests/support/control_plane.rs).
use reaper_test_support as support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::control_plane::{self, SKIP_ENV};
use support::node;

/// Runs `target/debug/examples/demo` with `DEMO_EXIT=1` (and `extra` environment); its stdout.
fn run_demo(extra: &[(&str, &str)]) -> String {
    // What `make demo` runs after building the tools and reaper-controller. `make test` builds the
    // example first (`cargo test` only builds examples as test harnesses); a nested `cargo run`
    // would rebuild under the test's environment and make the next `cargo test` rebuild again.
    let demo = control_plane::repo_root().join("target/debug/examples/demo");
    assert!(
        demo.is_file(),
        "{} is missing: run `cargo build --example demo` (`make test` does)",
        demo.display()
    );
    let mut cmd = Command::new(&demo);
    cmd.current_dir(control_plane::repo_root())
        .env("DEMO_EXIT", "1")
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting target/debug/examples/demo");
    let deadline = Instant::now() + Duration::from_secs(600);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not finish within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stdout}\n{stderr}");
    assert!(
        !stdout.contains("pending"),
        "a step is still pending:\n{stdout}\n{stderr}"
    );
    stdout
}

/// A `ps` line with this PID, PPID, state and command (STAT may carry flags such as `N` when
/// the test runs niced).
fn has_ps_line(stdout: &str, pid: &str, ppid: &str, state: char, command: &str) -> bool {
    stdout.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() == 4 && (f[0], f[1], f[3]) == (pid, ppid, command) && f[2].starts_with(state)
    })
}

fn assert_contains(stdout: &str, wants: &[&str]) {
    for want in wants {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

/// `make demo` on this machine: the real node, the same pod unprotected and protected.
#[test]
fn make_demo_runs_on_the_node_and_exits_0() {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        // Same rule as every control-plane test (refused in CI).
        assert!(control_plane::shared(module_path!()).is_none());
        return;
    }
    if let Some(why) = node::unavailable() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI=true and no node can run: {why}"
        );
        eprintln!(
            "!!! no node here ({why}): the demo falls back to the API-only one, tested below"
        );
        return;
    }
    let stdout = run_demo(&[]);
    // PID 1 of each copy, and the unprotected one's zombies.
    assert!(has_ps_line(&stdout, "1", "0", 'S', "sleep"), "{stdout}");
    assert!(has_ps_line(&stdout, "1", "0", 'S', "reaper"), "{stdout}");
    assert!(
        stdout.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 4 && f[1] == "1" && f[2].starts_with('Z') && f[3] == "sleep"
        }),
        "{stdout}"
    );
    assert_contains(
        &stdout,
        &[
            "== 1. node",
            "reaper-node   Ready",
            "containerd://",
            "== 2. helm install",
            "reaper-webhook-",
            // The node runs image volumes, so `auto` mounts the reaper image (no init container).
            "protected: reaper.dev/injected=inject:app, init containers [], image volumes [\"",
            "/reaper-dev/reaper:",
            "unprotected: 5 zombies   protected: 0 zombies",
            "protectedPods: 1",
            "unprotectedPods: 1",
            "Demo ready in",
        ],
    );
    // The delete times, as measured: the grace period vs well under it.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Demo ready in"))
        .unwrap();
    let secs: Vec<f64> = line
        .split("delete ")
        .nth(1)
        .unwrap()
        .split(" vs ")
        .take(2)
        .map(|s| {
            s.trim_end_matches(|c: char| !c.is_ascii_digit())
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(secs[0] >= 25.0 && secs[1] < 3.0, "{line}");
}

/// `DEMO_MODE=api make demo`: admission on the API server only (the fallback without a node).
#[test]
fn api_only_demo_runs_every_step_and_exits_0() {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        assert!(control_plane::shared(module_path!()).is_none());
        return;
    }
    let stdout = run_demo(&[("DEMO_MODE", "api")]);
    assert_contains(
        &stdout,
        &[
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
        ],
    );
}
