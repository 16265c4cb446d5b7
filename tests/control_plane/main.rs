//! Tests on a real kube-apiserver + etcd (reaper_test_support::control_plane; one per suite):
//! CRDs, webhook, operator, agent, registry credentials, chart, RBAC, `make demo`.
//!
//! `cargo test --test control_plane` runs them all; `cargo test --test control_plane <suite>::` one suite.

mod admission_policy;
mod agent;
mod chart;
mod chart_crds;
mod cli;
mod crds;
mod demo;
mod operator;
mod rbac;
mod registry;
mod scope;
mod webhook;
