//! Reaper: PID 1 done right for every Pod.
//!
//! One module per role; the `reaper-controller` binary (`src/main.rs`) only parses flags and
//! dispatches. The `reaper` init (`src/bin/reaper.rs`) is deliberately *not* part of this library.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod crd;
pub mod keys;
pub mod metrics;
pub mod operator;
pub mod registry;
pub mod shutdown;
pub mod telemetry;
pub mod webhook;
