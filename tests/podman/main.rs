//! Tests with real containers (rootful podman, runc): the reaper as PID 1 of containers and pods,
//! the entrypoint rewrite replayed by hand, the Dockerfile's images.
//!
//! `cargo test --test podman` runs them all; `cargo test --test podman <suite>::` one suite.

mod images;
mod inject;
mod pod;
mod stop;
mod zombies;
