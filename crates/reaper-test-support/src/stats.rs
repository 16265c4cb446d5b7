//! The benchmarks' arithmetic on measured durations.
use std::time::Duration;

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
    }
}
