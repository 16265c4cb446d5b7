//! Prometheus registry shared by a process's components, encoded on the admin port.
use prometheus_client::{encoding::text::encode, registry::Registry};
use std::sync::{Arc, Mutex};

/// A cloneable handle to the process-wide registry. Components register their metric families
/// at construction; the admin server encodes it on `/metrics`.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register metric families. The closure gets the registry under its lock.
    pub fn register<F: FnOnce(&mut Registry)>(&self, f: F) {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut registry);
    }

    /// Prometheus text exposition of everything registered.
    pub fn encode(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn encodes_registered_families() {
        let m = Metrics::new();
        let c: Counter = Counter::default();
        m.register(|r| r.register("reaper_test_things", "Things", c.clone()));
        c.inc();
        let text = m.encode();
        assert!(text.contains("reaper_test_things_total 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
