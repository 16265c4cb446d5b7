//! Faults and load on a real control plane (reaper_test_support::control_plane, a private one per
//! test): admission at 100 pods/s while the certificate rotates, a webhook replica goes away and
//! the registry stalls; the API server and etcd restarted under the running webhook, operator and
//! agent. And without a control plane: the agent scanning a node where 30,000 processes come and
//! go (`agent_churn`). Each test prints its figures as `FIGURE` lines (the table of
//! docs/development.md, "Faults and load").
//!
//! The tests take [`HEAVY`] so that they run one at a time: their figures are about the product,
//! not about a neighbour test competing for the same two cores.
//!
//! `cargo test --test faults -- --nocapture` shows the figures.
use reaper_test_support as support;

mod admission_load;
mod agent_churn;
mod parts;
mod restarts;

/// Held for the whole of each test in this binary.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A control plane of the test's own (restarted and loaded, so never shared), or `None` when
/// control-plane tests are skipped (as `support::control_plane::shared` does).
fn private_control_plane() -> Option<support::control_plane::ControlPlane> {
    use support::control_plane::SKIP_ENV;
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "{SKIP_ENV}=1 is set in CI: the fault tests must run there"
        );
        eprintln!("\n!!! {SKIP_ENV}=1: SKIPPING a fault test. This proves nothing. !!!\n");
        return None;
    }
    Some(
        support::control_plane::ControlPlane::start()
            .unwrap_or_else(|e| panic!("control plane did not start: {e}")),
    )
}
