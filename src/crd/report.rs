// kube-derive repeats `type_ = "..."` across printcolumns, which clippy mistakes for duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Zombie facts of one node, written by that node's agent. Named after the node and owned by
/// its Node object, so it is garbage-collected with it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "reaper.dev",
    version = "v1alpha1",
    kind = "ZombieReport",
    plural = "zombiereports",
    shortname = "zr",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Zombies", type_ = "integer", json_path = ".spec.zombies"),
    printcolumn(name = "Processes", type_ = "integer", json_path = ".spec.processes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ZombieReportSpec {
    /// The node scanned.
    pub node_name: String,
    /// When the scan ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
    /// The node's `/proc/sys/kernel/pid_max`.
    #[serde(default)]
    pub pid_max: u64,
    /// Tasks (processes) on the node, zombies included.
    #[serde(default)]
    pub processes: u64,
    /// Zombies on the node.
    #[serde(default)]
    pub zombies: u64,
    /// Zombies that belong to no pod (host processes, or whose parent vanished mid-scan).
    #[serde(default)]
    pub unattributed_zombies: u64,
    /// Containers holding zombies, most zombies first (at most [`MAX_CONTAINERS`]; the rest are
    /// counted in `truncatedContainers`). Zombies in a pod's own cgroup (outside any container)
    /// are only counted in `pods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500))]
    pub containers: Vec<ContainerZombies>,
    /// Containers holding zombies that did not fit in `containers`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub truncated_containers: u32,
    /// Pods that hold zombies or use at least 80% of their `pids.max` limit (at most
    /// [`MAX_PODS`]; the rest are counted in `truncatedPods`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500))]
    pub pods: Vec<PodPids>,
    /// Pods that did not fit in `pods`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub truncated_pods: u32,
    /// The top process of each container on the node (PID 1 of its PID namespace unless the pod
    /// shares one), in every namespace, opted in or not: unprotected ones first (at most
    /// [`MAX_PID1S`]; the rest are counted in `truncatedPid1s`). Pod sandboxes (`pause`) are
    /// left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500))]
    pub pid1s: Vec<ContainerInit>,
    /// Containers that did not fit in `pid1s`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub truncated_pid1s: u32,
}

/// Longest `containers` list of a report (the schema's `maxItems`): a node reports the worst.
pub const MAX_CONTAINERS: usize = 500;
/// Longest `pods` list of a report (the schema's `maxItems`).
pub const MAX_PODS: usize = 500;
/// Longest `parents` list of one container entry.
pub const MAX_PARENTS: usize = 16;
/// Longest `pid1s` list of a report (the schema's `maxItems`).
pub const MAX_PID1S: usize = 500;
/// Longest `zombieComms` list of one `pid1s` entry.
pub const MAX_ZOMBIE_COMMS: usize = 5;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A container's top process, as the agent found it: the evidence whether the container's PID
/// namespace has an init that reaps zombies and stops on `SIGTERM`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInit {
    /// `metadata.uid` of the pod (dashed form).
    pub pod_uid: String,
    /// Container runtime ID (bare hex).
    pub container_id: String,
    /// Pod namespace, once the agent knows the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Container name, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `comm` of the process (its executable's name, at most 15 bytes).
    pub comm: String,
    /// The known init `comm` names (`reaper`, `tini`, `dumb-init`, `catatonit`, `s6-svscan`,
    /// `pause`, ...); absent for any other program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// It takes `SIGTERM`: a known init (they all do), a handler (`SigCgt` in
    /// `/proc/<pid>/status`), or `SIGTERM` blocked to be read from a signalfd (`SigBlk`). A PID 1
    /// that does none of these (or ignores `SIGTERM`) does not stop on the kubelet's `SIGTERM`:
    /// every deletion waits the whole grace period. A program that waits in `sigwait` shows no
    /// mask while it waits, so it reads `false` unless it is a known init.
    #[serde(default)]
    pub handles_sigterm: bool,
    /// It is PID 1 of its PID namespace. `false` with `hostPid` false: the pod shares one PID
    /// namespace (`shareProcessNamespace`), whose init is the pod's `pause` process.
    #[serde(default)]
    pub pid1: bool,
    /// It runs in the node's PID namespace (`hostPID: true`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_pid: bool,
    /// Its children, zombies included, as of `observedAt` (a change alone does not rewrite the
    /// report).
    #[serde(default)]
    pub children: u32,
    /// Its zombie children.
    #[serde(default)]
    pub zombies: u32,
    /// Its zombie children by name (which probe, exec or script left them), most first (at most
    /// [`MAX_ZOMBIE_COMMS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub zombie_comms: Vec<CommCount>,
}

impl ContainerInit {
    /// The init that reaps for this container, if any: its own PID 1 when that is a known init,
    /// or `pause` when the pod shares its PID namespace.
    pub fn protected_by(&self) -> Option<&str> {
        if self.pid1 {
            self.init.as_deref()
        } else if !self.host_pid {
            Some("pause")
        } else {
            None
        }
    }

    /// PID 1 of its namespace, no known init, and no `SIGTERM` handler: zombies pile up and every
    /// deletion waits the grace period.
    pub fn unprotected(&self) -> bool {
        self.pid1 && self.init.is_none() && !self.handles_sigterm
    }
}

/// Processes of one name.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommCount {
    /// `comm` (as in `/proc/<pid>/stat`).
    pub comm: String,
    pub count: u32,
}

/// Zombies of one container.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerZombies {
    /// `metadata.uid` of the pod (dashed form).
    pub pod_uid: String,
    /// Container runtime ID (bare hex, no `containerd://` prefix).
    pub container_id: String,
    /// Pod namespace, once the agent knows the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Container name, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Zombies in this container.
    pub count: u32,
    /// Seconds since the oldest of them was first seen, as of `observedAt` (the report is not
    /// rewritten just because ages grow).
    #[serde(default)]
    pub oldest_age_seconds: u64,
    /// The processes that fail to reap them, worst first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub parents: Vec<ZombieParent>,
}

/// A process whose children are zombies.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZombieParent {
    /// PID as seen from the host PID namespace.
    pub pid: i32,
    /// `comm` of the parent (as in `/proc/<pid>/stat`).
    pub comm: String,
    /// Zombies it holds.
    pub count: u32,
    /// Seconds since the oldest of them was first seen.
    #[serde(default)]
    pub oldest_age_seconds: u64,
}

/// Task usage of one pod.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodPids {
    /// `metadata.uid` of the pod (dashed form).
    pub pod_uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `pids.current` of the pod cgroup (zombies count too). Where the pod cgroup's pids files
    /// cannot be read, the number of processes the agent found in the pod instead.
    pub current: u64,
    /// `pids.max` of the pod cgroup; absent when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Zombies in the pod.
    #[serde(default)]
    pub zombies: u32,
}
