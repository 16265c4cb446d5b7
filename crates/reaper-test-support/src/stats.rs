//! The benchmarks' arithmetic on measured durations, and the pod the API-server benchmarks time.
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};

/// The API-server benchmarks' pod: Pod Security `restricted`, one container that declares its
/// `command` (so every engine wraps it without a registry lookup), with these annotations.
pub fn command_pod(name: &str, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{
            "name": "app", "image": "registry.example.com/team/app:1.2.3",
            "command": ["/app", "serve", "--port=8080"],
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
        }]}
    }))
    .expect("pod")
}

/// Creates `pod`: the round trip's wall time and the stored pod.
pub async fn timed_create(api: &Api<Pod>, pod: &Pod) -> kube::Result<(Duration, Pod)> {
    let t = Instant::now();
    let stored = api.create(&PostParams::default(), pod).await?;
    Ok((t.elapsed(), stored))
}

/// The `p` quantile (0.0..=1.0, nearest rank) of `sorted`; zero when it is empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50, p90, p99, max and mean of sorted durations, in milliseconds (a benchmark table's row).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Of `sorted`; all zero when it is empty.
    pub fn of(sorted: &[Duration]) -> Self {
        let mean = if sorted.is_empty() {
            0.0
        } else {
            ms(sorted.iter().sum::<Duration>()) / sorted.len() as f64
        };
        Self {
            p50: ms(percentile(sorted, 0.50)),
            p90: ms(percentile(sorted, 0.90)),
            p99: ms(percentile(sorted, 0.99)),
            max: ms(percentile(sorted, 1.0)),
            mean,
        }
    }
}

/// A benchmark's count from the environment variable `var`, or `default`.
pub fn count_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_and_bounds() {
        let xs: Vec<Duration> = (1..=5).map(Duration::from_millis).collect();
        assert_eq!(percentile(&xs, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&xs, 0.5), Duration::from_millis(3));
        assert_eq!(percentile(&xs, 1.0), Duration::from_millis(5));
        assert_eq!(percentile(&xs, 2.0), Duration::from_millis(5));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        assert_eq!(ms(Duration::from_micros(1500)), 1.5);
        let s = Summary::of(&xs);
        assert_eq!((s.p50, s.max, s.mean), (3.0, 5.0, 3.0));
        assert_eq!(Summary::of(&[]).mean, 0.0);
    }
}
