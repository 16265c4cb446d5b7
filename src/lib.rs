//! Reaper: PID 1 done right for every Pod.
//!
//! One module per role; the `reaper-controller` binary (`src/main.rs`) only parses flags and
//! dispatches. The `reaper` init is its own crate (crates/reaper-init); the names both share
//! live in crates/reaper-contract ([`keys`] is re-exported from there).
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod cli;
pub mod component;
pub mod crd;
pub mod image;
pub use reaper_contract::keys;
pub mod metrics;
pub mod operator;
pub mod registry;
pub mod scope;
pub mod shutdown;
pub mod telemetry;
pub mod webhook;
