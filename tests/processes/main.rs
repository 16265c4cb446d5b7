//! Tests with real processes and sockets on this machine (no cluster): the agent on the real
//! /proc, `helm template` of the chart, a real OCI registry (docker-registry, skopeo) and fake
//! misbehaving ones, the webhook over HTTPS.
//!
//! `cargo test --test processes` runs them all; `cargo test --test processes <suite>::` one suite.

mod agent_live;
mod chart_render;
mod monitoring;
mod registry_hardening;
mod registry_lookup;
mod registry_webhook;
mod webhook_https;
mod workflows;
