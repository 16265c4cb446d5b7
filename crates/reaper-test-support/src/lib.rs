//! What Reaper's tests, `make demo` and the benchmarks run against, in one place:
//! - [`control_plane`]: etcd + kube-apiserver (+ controller-manager) from `make tools`, own PKI;
//! - [`node`]: that control plane plus scheduler, containerd, kubelet, kube-proxy, a CNI bridge
//!   and a local registry: a real single-node cluster;
//! - [`registry`]: Debian's docker-registry with OCI layouts pushed by skopeo, auth variants;
//! - [`podman`]: podman sessions, FROM-scratch images, process trees from the host's /proc;
//! - [`scenarios`]: the end-to-end scenarios, written once against a kube `Client` (node, kind,
//!   control plane);
//! - [`chart`]: `helm template`/`lint` of charts/reaper and applying its rendering;
//! - [`agent`]: cgroup trees and zombie-holding processes shaped like a kubelet's pods;
//! - [`churn`]: tens of thousands of short-lived processes (and brief zombies) for load tests;
//! - [`wait`]: the one polling helper; [`process`]: signals and the like, safely wrapped;
//!   [`stats`]: the benchmarks' percentiles.
//!
//! It depends on the controller library (the scenarios speak its types) while the controller
//! dev-depends on it: a cycle through dev-dependencies, which Cargo allows.

pub mod agent;
pub mod chart;
pub mod churn;
pub mod control_plane;
pub mod node;
pub mod podman;
pub mod process;
pub mod registry;
pub mod scenarios;
pub mod stats;
pub mod wait;
