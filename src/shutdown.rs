//! How every `reaper-controller` role learns it should stop: SIGTERM (the kubelet) or SIGINT
//! (Ctrl-C when run by hand).
use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first SIGTERM or SIGINT. If SIGTERM cannot be watched (it always can on
/// Linux, short of a broken runtime), only SIGINT stops `role`, and a warning says so.
pub async fn requested(role: &str) {
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!(role, "SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!(role, "SIGINT received"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the {role}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
