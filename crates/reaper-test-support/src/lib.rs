//! What Reaper's tests, `make demo` and the benchmarks run against, in one place:
//! - [`control_plane`]: etcd + kube-apiserver (+ controller-manager) from `make tools`, own PKI;
//! - [`node`]: that control plane plus scheduler, containerd, kubelet, kube-proxy, a CNI bridge
//!   and a local registry: a real single-node cluster;
//! - [`registry`]: Debian's docker-registry with OCI layouts pushed by skopeo, auth variants;
//! - [`podman`]: podman sessions, FROM-scratch images, process trees from the host's /proc;
//! - [`wait`]: the one polling helper; [`process`]: signals and the like, safely wrapped.
//!
//! Independent of the controller library (CRDs come from the generated `crds/*.yaml`), so the
//! controller's integration tests can depend on it without a cycle.

pub mod control_plane;
pub mod node;
pub mod podman;
pub mod process;
pub mod registry;
pub mod wait;
