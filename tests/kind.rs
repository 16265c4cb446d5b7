//! The kind end-to-end scenarios (reaper_test_support::scenarios, also run on the local node by
//! tests/node_scenarios.rs): ignored by default, they need a cluster
//! with the chart installed and running pods. e2e/kind.sh creates one and runs them in order:
//!   cargo test --test e2e_kind -- --ignored --test-threads=1
//! `make test` compiles them.
use reaper_test_support::scenarios as e2e_scenarios;

use e2e_scenarios::Env;

#[tokio::test]
#[ignore = "needs a kind cluster with the chart installed: e2e/kind.sh"]
async fn s1_orphans_are_reaped_only_when_protected() {
    e2e_scenarios::orphans_are_reaped_only_when_protected(&Env::from_env().await).await;
}

#[tokio::test]
#[ignore = "needs a kind cluster with the chart installed: e2e/kind.sh"]
async fn s2_sigterm_ignoring_pid1_stops_fast_only_when_protected() {
    e2e_scenarios::sigterm_ignoring_pid1_stops_fast_only_when_protected(&Env::from_env().await)
        .await;
}

#[tokio::test]
#[ignore = "needs a kind cluster with the chart installed: e2e/kind.sh"]
async fn s3_every_mode_runs_under_restricted() {
    e2e_scenarios::every_mode_runs_under_restricted(&Env::from_env().await, true).await;
}

#[tokio::test]
#[ignore = "needs a kind cluster with the chart installed: e2e/kind.sh"]
async fn s4_pods_are_created_when_the_webhook_is_down() {
    e2e_scenarios::pods_are_created_when_the_webhook_is_down(&Env::from_env().await).await;
}

#[tokio::test]
#[ignore = "needs a kind cluster with the chart installed: e2e/kind.sh"]
async fn s5_metrics_endpoints_answer() {
    e2e_scenarios::metrics_endpoints_answer(&Env::from_env().await).await;
}

#[tokio::test]
#[ignore = "needs a kind cluster with the chart installed: e2e/kind.sh"]
async fn s6_stop_latency_unprotected_vs_share_inject() {
    e2e_scenarios::stop_latency(&Env::from_env().await).await;
}

#[tokio::test]
#[ignore = "needs a kind cluster with the chart installed: e2e/kind.sh"]
async fn s7_probe_and_exec_orphans_become_zombies_only_without_reaper() {
    e2e_scenarios::probe_and_exec_zombies(&Env::from_env().await).await;
}

#[tokio::test]
#[ignore = "needs a kind cluster with the chart installed: e2e/kind.sh"]
async fn s8_restart_policy_rolls_a_leaky_deployment_into_wrapped_pods() {
    e2e_scenarios::restart_loop(&Env::from_env().await).await;
}

#[tokio::test]
#[ignore = "needs a kind cluster with the chart installed: e2e/kind.sh"]
async fn s9_mutated_pods_run_under_pod_security_restricted() {
    e2e_scenarios::restricted_pods_run(&Env::from_env().await).await;
}

#[tokio::test]
#[ignore = "needs a kind cluster with the chart installed: e2e/kind.sh"]
async fn s10_app_native_sidecar_and_init_container_run_and_stop_wrapped() {
    e2e_scenarios::sidecars_run_and_stop(&Env::from_env().await).await;
}
