//! Leader election on the coordination.k8s.io Lease `reaper-operator` in the operator's own
//! namespace, through `kube-lease-manager` (maintained, kube 5). The crate acquires an expired or
//! released Lease with a server-side apply that conflicts when another replica applied first,
//! and renews `grace` before expiry.
//!
//! What this module adds: leadership published on a `watch` channel; stepping down at once when
//! the Lease cannot be read or renewed (a leader that cannot prove it holds the Lease must stop
//! acting before another replica's takeover); a jittered, growing retry; and releasing the Lease on
//! shutdown so a successor takes over without waiting out the lease duration.
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// First retry delay after an API error; doubles up to [`MAX_RETRY`].
const MIN_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Lease parameters (from the operator's flags).
#[derive(Clone, Debug)]
pub struct LeaderSettings {
    pub namespace: String,
    pub lease_name: String,
    /// Unique per process: `<pod name>_<random>`.
    pub identity: String,
    /// How long a Lease stays valid after its last renewal (`leaseDurationSeconds`).
    pub duration: Duration,
    /// The holder renews this long before expiry (also the tolerated clock skew).
    pub grace: Duration,
}

impl LeaderSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.duration.as_secs() < 2 || self.grace.as_secs() < 1 {
            return Err(
                "--lease-duration must be at least 2s and --lease-grace at least 1s (whole seconds)"
                    .into(),
            );
        }
        if self.grace >= self.duration {
            return Err(format!(
                "--lease-grace {} must be shorter than --lease-duration {}",
                humantime::format_duration(self.grace),
                humantime::format_duration(self.duration)
            ));
        }
        Ok(())
    }
}

/// A process-unique identity: the pod name (`HOSTNAME` in a pod) plus a random suffix, so a
/// restarted container never mistakes its predecessor's Lease for its own.
pub fn identity(pod_name: Option<&str>) -> String {
    let base = pod_name
        .filter(|n| !n.is_empty())
        .map(String::from)
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "reaper-operator".to_string());
    format!("{base}_{:08x}", random_u64() as u32)
}

fn random_u64() -> u64 {
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// `base` ± 20 %, so replicas that failed together do not retry together.
pub fn jittered(base: Duration) -> Duration {
    let frac = (random_u64() % 1000) as f64 / 1000.0; // 0 ..< 1
    base.mul_f64(0.8 + 0.4 * frac)
}

/// Runs the election until `shutdown`; `leader` carries whether this process leads. On shutdown
/// the Lease is released (when held) before returning.
pub async fn run(
    client: kube::Client,
    settings: LeaderSettings,
    leader: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut retry = MIN_RETRY;
    loop {
        match build(&client, &settings).await {
            Ok(manager) => {
                retry = MIN_RETRY;
                if follow(&manager, &settings, &leader, &shutdown).await {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(lease = %settings.lease_name, error = %e, "cannot use the leader Lease; retrying");
            }
        }
        leader.send_replace(false);
        let delay = jittered(retry);
        retry = (retry * 2).min(MAX_RETRY);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn build(
    client: &kube::Client,
    s: &LeaderSettings,
) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
    LeaseManagerBuilder::new(client.clone(), &s.lease_name)
        .with_namespace(&s.namespace)
        .with_identity(&s.identity)
        .with_duration(s.duration.as_secs())
        .with_grace(s.grace.as_secs())
        .build()
        .await
}

/// Follows one manager until an error (returns false: rebuild) or shutdown (returns true).
async fn follow(
    manager: &LeaseManager,
    s: &LeaderSettings,
    leader: &watch::Sender<bool>,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let was_leader = leader.send_replace(false);
                if was_leader {
                    match manager.release().await {
                        Ok(()) => tracing::info!(lease = %s.lease_name, identity = %s.identity, "released the leader Lease"),
                        Err(e) => tracing::warn!(lease = %s.lease_name, error = %e, "could not release the leader Lease; it expires on its own"),
                    }
                }
                return true;
            }
            changed = manager.changed() => match changed {
                Ok(is_leader) => {
                    tracing::info!(lease = %s.lease_name, identity = %s.identity, leader = is_leader, "leadership changed");
                    leader.send_replace(is_leader);
                }
                Err(e) => {
                    // Cannot prove we still hold the Lease: stop acting now, retry afresh.
                    if leader.send_replace(false) {
                        tracing::warn!(lease = %s.lease_name, error = %e, "lost contact with the leader Lease; stepping down");
                    } else {
                        tracing::warn!(lease = %s.lease_name, error = %e, "leader election error");
                    }
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds() {
        for _ in 0..200 {
            let d = jittered(Duration::from_secs(10));
            assert!(
                (Duration::from_secs(8)..=Duration::from_secs(12)).contains(&d),
                "{d:?}"
            );
        }
    }

    #[test]
    fn identities_are_unique_and_named_after_the_pod() {
        let a = identity(Some("reaper-operator-7d9f-abcde"));
        let b = identity(Some("reaper-operator-7d9f-abcde"));
        assert!(a.starts_with("reaper-operator-7d9f-abcde_"));
        assert_ne!(a, b);
    }

    #[test]
    fn settings_validation() {
        let s = |d: u64, g: u64| LeaderSettings {
            namespace: "ns".into(),
            lease_name: "l".into(),
            identity: "i".into(),
            duration: Duration::from_secs(d),
            grace: Duration::from_secs(g),
        };
        s(15, 5).validate().unwrap();
        assert!(s(5, 5).validate().is_err());
        assert!(s(1, 1).validate().is_err());
        assert!(s(15, 0).validate().is_err());
    }
}
