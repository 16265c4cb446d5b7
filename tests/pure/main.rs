//! Tests that need nothing but this process: webhook planning and routing, property tests, the
//! policy sources against a mocked API server, the agent's parsers over recorded /proc fixtures,
//! the docs' generated references and links.
//!
//! `cargo test --test pure` runs them all; `cargo test --test pure <suite>::` one suite.

mod agent_fixtures;
mod compatibility;
mod docs;
mod webhook_cluster;
mod webhook_plan;
mod webhook_props;
mod webhook_router;
