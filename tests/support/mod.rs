//! Shared helpers for the integration tests (`mod support;` in a `tests/*.rs` file).
// Each test binary uses a different part of the support code.
#![allow(dead_code)]

pub mod control_plane;
pub mod node;
pub mod podman;
pub mod registry;
