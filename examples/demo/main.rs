//! `make demo`: the whole system on a real node built here (kubelet + containerd + runc, the same
//! harness as the node scenarios), showing an unprotected and a protected copy of the same pod
//! side by side. Where no node can run (not root, no cgroups) it says why and falls back to the
//! API-server-only demo (admission without execution). `DEMO_MODE=api` picks that one;
//! `DEMO_EXIT=1` exits 0 right after printing instead of waiting for Ctrl-C.
use reaper_test_support as support;

mod api;
mod node;

use anyhow::Result;

/// The sample policy, shown to the user as a file they can edit and re-apply.
pub const SAMPLE_POLICY: &str = include_str!("../demo-policy.yaml");

/// Waits for Ctrl-C or SIGTERM.
pub async fn stop_requested() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// `DEMO_EXIT=1`: print and exit, for unattended runs.
pub fn exit_after_printing() -> bool {
    std::env::var("DEMO_EXIT").is_ok_and(|v| v == "1")
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::var("DEMO_MODE").is_ok_and(|v| v == "api") {
        return api::run().await;
    }
    match support::node::unavailable() {
        None => node::run().await,
        Some(why) => {
            println!("No node can run here ({why}): falling back to the API-server-only demo.");
            api::run().await
        }
    }
}
