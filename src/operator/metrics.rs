//! The operator's Prometheus metric families.
use crate::crd::ReaperPolicyStatus;
use crate::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PolicyStateLabels {
    pub policy: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportWriteLabels {
    /// `apply` or `delete`.
    pub operation: String,
    /// The report kind (`Report`, `PolicyReport`).
    pub kind: String,
}

/// Handles to every operator metric.
#[derive(Clone)]
pub struct OperatorMetrics {
    pub reconcile_total: Family<ResultLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub policy_pods: Family<PolicyStateLabels, Gauge>,
    pub policy_zombies: Family<PolicyLabels, Gauge>,
    pub leader: Gauge,
    pub restarts: Counter,
    pub cert_steps: Family<StepLabels, Counter>,
    pub cert_expiry: Gauge,
    pub report_writes: Family<ReportWriteLabels, Counter>,
    policies: Arc<Mutex<BTreeSet<String>>>,
}

impl OperatorMetrics {
    /// Create and register the families.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self {
            reconcile_total: Family::default(),
            // 1 ms .. ~8 s
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            policy_pods: Family::default(),
            policy_zombies: Family::default(),
            leader: Gauge::default(),
            restarts: Counter::default(),
            cert_steps: Family::default(),
            cert_expiry: Gauge::default(),
            report_writes: Family::default(),
            policies: Arc::default(),
        };
        metrics.register(|r| {
            r.register(
                "reaper_operator_reconcile",
                "ReaperPolicy reconciles by result (ok, or the error kind)",
                m.reconcile_total.clone(),
            );
            r.register(
                "reaper_operator_reconcile_duration_seconds",
                "Time one ReaperPolicy reconcile takes",
                m.reconcile_duration.clone(),
            );
            r.register(
                "reaper_policy_pods",
                "Pods a policy governs, by state (protected, unprotected)",
                m.policy_pods.clone(),
            );
            r.register(
                "reaper_policy_zombies",
                "Zombie processes in the pods a policy governs",
                m.policy_zombies.clone(),
            );
            r.register(
                "reaper_operator_leader",
                "1 while this operator replica holds the leader Lease",
                m.leader.clone(),
            );
            r.register(
                "reaper_operator_restarts",
                "Workloads rolled out because of zombies",
                m.restarts.clone(),
            );
            r.register(
                "reaper_operator_cert_steps",
                "Webhook certificate changes by step (new_ca, bundle_repaired, serving_issued, old_cas_dropped, error)",
                m.cert_steps.clone(),
            );
            r.register(
                "reaper_operator_webhook_cert_expiry_timestamp_seconds",
                "Expiry of the webhook serving certificate (self-managed mode)",
                m.cert_expiry.clone(),
            );
            r.register(
                "reaper_operator_policy_report_writes",
                "Policy report writes by operation (apply, delete) and kind (Report, PolicyReport)",
                m.report_writes.clone(),
            );
        });
        m
    }

    pub fn reconciled(&self, result: &str) {
        self.reconcile_total
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Sets the per-policy gauges; removes the series of policies that are gone.
    pub fn set_policies(&self, statuses: &BTreeMap<String, ReaperPolicyStatus>) {
        let mut known = self.policies.lock().unwrap_or_else(|e| e.into_inner());
        for gone in known.iter().filter(|p| !statuses.contains_key(*p)) {
            for state in ["protected", "unprotected"] {
                self.policy_pods.remove(&PolicyStateLabels {
                    policy: gone.clone(),
                    state: state.to_string(),
                });
            }
            self.policy_zombies.remove(&PolicyLabels {
                policy: gone.clone(),
            });
        }
        *known = statuses.keys().cloned().collect();
        for (policy, s) in statuses {
            for (state, n) in [
                ("protected", s.protected_pods),
                ("unprotected", s.unprotected_pods),
            ] {
                self.policy_pods
                    .get_or_create(&PolicyStateLabels {
                        policy: policy.clone(),
                        state: state.to_string(),
                    })
                    .set(n.into());
            }
            self.policy_zombies
                .get_or_create(&PolicyLabels {
                    policy: policy.clone(),
                })
                .set(s.zombies.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_series_follow_the_policies() {
        let metrics = Metrics::new();
        let m = OperatorMetrics::register(&metrics);
        let status = |p: u32, u: u32, z: u32| ReaperPolicyStatus {
            protected_pods: p,
            unprotected_pods: u,
            zombies: z,
            ..Default::default()
        };
        m.set_policies(&BTreeMap::from([
            ("a".to_string(), status(3, 1, 7)),
            ("b".to_string(), status(0, 0, 0)),
        ]));
        m.reconciled("ok");
        let text = metrics.encode();
        for line in [
            "reaper_policy_pods{policy=\"a\",state=\"protected\"} 3",
            "reaper_policy_pods{policy=\"a\",state=\"unprotected\"} 1",
            "reaper_policy_zombies{policy=\"a\"} 7",
            "reaper_policy_zombies{policy=\"b\"} 0",
            "reaper_operator_reconcile_total{result=\"ok\"} 1",
            "reaper_operator_reconcile_duration_seconds_count 0",
            "reaper_operator_leader 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        m.set_policies(&BTreeMap::from([("b".to_string(), status(1, 0, 0))]));
        let text = metrics.encode();
        assert!(!text.contains("policy=\"a\""), "{text}");
        assert!(text.contains("reaper_policy_pods{policy=\"b\",state=\"protected\"} 1"));
    }
}
