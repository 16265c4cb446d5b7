//! Polling watch over a few small files (certificate pair, policies file).
//!
//! Polling content rather than inotify: Secret and ConfigMap volumes are updated by swapping a
//! `..data` symlink, which inotify on the file paths misses, and comparing two small files once a
//! second costs nothing. All files are read together so a pair is only applied as a pair.
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Read `paths` now and then every `interval`; call `apply` with their contents each time any of
/// them changed (and first as soon as all are readable). Unreadable files are logged once per
/// distinct error and retried. Returns when `shutdown` fires.
pub async fn watch<F>(
    paths: Vec<PathBuf>,
    interval: Duration,
    shutdown: CancellationToken,
    mut apply: F,
) where
    F: FnMut(&[Vec<u8>]) + Send,
{
    let mut last: Option<Vec<Vec<u8>>> = None;
    let mut last_error: Option<String> = None;
    loop {
        match read_all(&paths).await {
            Ok(contents) => {
                last_error = None;
                if last.as_ref() != Some(&contents) {
                    apply(&contents);
                    last = Some(contents);
                }
            }
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "cannot read watched file; retrying every {interval:?}");
                    last_error = Some(e);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        out.push(
            tokio::fs::read(p)
                .await
                .map_err(|e| format!("{}: {e}", p.display()))?,
        );
    }
    Ok(out)
}
