//! The operator's view of the cluster, as plain data: pods with what decides their fate (owner
//! workload, labels, the webhook's annotation), zombies per pod from the nodes' reports, and the
//! [`Snapshot`] that [`super::status::compute`] works on. Built by [`super::controller`] from its
//! reflectors once per batch.
use crate::crd::{PolicySet, ZombieReportSpec};
use crate::keys;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use std::collections::{BTreeMap, HashMap};

/// Workload kinds the operator may roll out (`kubectl rollout restart` supports exactly these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }

    fn from_owner(o: &OwnerReference) -> Option<Self> {
        if o.api_version != "apps/v1" {
            return None;
        }
        match o.kind.as_str() {
            "Deployment" => Some(WorkloadKind::Deployment),
            "StatefulSet" => Some(WorkloadKind::StatefulSet),
            "DaemonSet" => Some(WorkloadKind::DaemonSet),
            _ => None,
        }
    }
}

/// A restartable workload.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// Who controls a pod, as far as restarts are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A Deployment (through its ReplicaSet), StatefulSet or DaemonSet.
    Workload(WorkloadRef),
    /// No controller: a bare pod (deleting it would lose it).
    Bare,
    /// Something never restarted: a Job, a ReplicaSet without a Deployment, any other kind, or a
    /// ReplicaSet the index does not know yet.
    Other { kind: String, name: String },
}

/// Resolves a pod's controller. `replica_set_owners(namespace, name)` gives a ReplicaSet's
/// ownerReferences (`None` when the ReplicaSet is not indexed).
pub fn resolve_owner(
    namespace: &str,
    owner_references: &[OwnerReference],
    replica_set_owners: impl Fn(&str, &str) -> Option<Vec<OwnerReference>>,
) -> Owner {
    let Some(controller) = controller_of(owner_references) else {
        return Owner::Bare;
    };
    let other = |o: &OwnerReference| Owner::Other {
        kind: o.kind.clone(),
        name: o.name.clone(),
    };
    if let Some(kind) = WorkloadKind::from_owner(controller) {
        return Owner::Workload(WorkloadRef {
            kind,
            namespace: namespace.to_string(),
            name: controller.name.clone(),
        });
    }
    if controller.api_version == "apps/v1" && controller.kind == "ReplicaSet" {
        let Some(rs_owners) = replica_set_owners(namespace, &controller.name) else {
            return other(controller);
        };
        return match controller_of(&rs_owners) {
            Some(d) if WorkloadKind::from_owner(d) == Some(WorkloadKind::Deployment) => {
                Owner::Workload(WorkloadRef {
                    kind: WorkloadKind::Deployment,
                    namespace: namespace.to_string(),
                    name: d.name.clone(),
                })
            }
            _ => other(controller),
        };
    }
    other(controller)
}

fn controller_of(refs: &[OwnerReference]) -> Option<&OwnerReference> {
    refs.iter().find(|o| o.controller == Some(true))
}

/// An object a policy report result is about (`resources[]` of a result; the namespace is the
/// pod's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// The workload a pod's findings are reported against: its controller, seen through a
/// ReplicaSet to its Deployment and through a Job to its CronJob (the objects users manage, and
/// the scope Kyverno's reports use); the pod itself when it has no controller. A ReplicaSet or Job
/// the index does not know (yet), or that has no such owner, is the scope itself.
/// `owners_of(kind, namespace, name)` gives the ownerReferences of an indexed ReplicaSet or Job.
pub fn report_scope(
    namespace: &str,
    pod_name: &str,
    pod_uid: &str,
    owner_references: &[OwnerReference],
    owners_of: impl Fn(&str, &str, &str) -> Option<Vec<OwnerReference>>,
) -> ResourceRef {
    let of = |o: &OwnerReference| ResourceRef {
        api_version: o.api_version.clone(),
        kind: o.kind.clone(),
        name: o.name.clone(),
        uid: o.uid.clone(),
    };
    let Some(controller) = controller_of(owner_references) else {
        return ResourceRef {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod_name.to_string(),
            uid: pod_uid.to_string(),
        };
    };
    let parent = match (controller.api_version.as_str(), controller.kind.as_str()) {
        ("apps/v1", "ReplicaSet") => Some(("apps/v1", "Deployment")),
        ("batch/v1", "Job") => Some(("batch/v1", "CronJob")),
        _ => None,
    };
    if let Some((api_version, kind)) = parent
        && let Some(refs) = owners_of(&controller.kind, namespace, &controller.name)
        && let Some(p) = controller_of(&refs)
        && p.api_version == api_version
        && p.kind == kind
    {
        return of(p);
    }
    of(controller)
}

/// What the operator knows about one pod (from a metadata-only reflector).
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// `reaper.dev/injected`, as the webhook wrote it.
    pub injected: Option<String>,
    /// `reaper.dev/mode`, raw.
    pub mode: Option<String>,
    /// A static pod's mirror (the webhook never mutates those).
    pub mirror: bool,
    /// `kubectl.kubernetes.io/restartedAt` inherited from the pod template.
    pub restarted_at: Option<Timestamp>,
    pub owner: Owner,
    /// What policy report results about this pod name ([`report_scope`]).
    pub scope: ResourceRef,
    /// The init that reaps for every container of the pod, as the agents report it (`pid1s`:
    /// its own PID 1 is a known init, or `pause` of a shared PID namespace); set per batch from
    /// the reports ([`index_inits`]), never from the pod's metadata.
    pub init: Option<String>,
}

impl PodInfo {
    /// Protected: the webhook shared the PID namespace or wrapped containers with reaper, or the
    /// agents see an init already reaping for every container.
    pub fn protected(&self) -> bool {
        is_protected(self.injected.as_deref()) || self.init.is_some()
    }

    /// The shared scope rule ([`crate::scope`]) applied to what the index keeps of the pod, in a
    /// namespace with `namespace_labels`.
    pub fn governed(
        &self,
        scope: &crate::scope::Scope,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Result<(), crate::scope::Exclusion> {
        let mirror: BTreeMap<String, String> = self
            .mirror
            .then(|| (keys::ANNOTATION_MIRROR.to_string(), String::new()))
            .into_iter()
            .collect();
        scope.governs(
            crate::scope::PodFacts {
                namespace: &self.namespace,
                labels: Some(&self.labels),
                annotations: Some(&mirror),
            },
            namespace_labels,
        )
    }

    /// What the index keeps of a pod's metadata (`None` without namespace or name).
    /// `owners_of(kind, namespace, name)` gives an indexed ReplicaSet's or Job's own owners, to
    /// see through them to their Deployment or CronJob.
    pub fn from_meta(
        meta: &kube::api::ObjectMeta,
        owners_of: &impl Fn(&str, &str, &str) -> Option<Vec<OwnerReference>>,
    ) -> Option<PodInfo> {
        let namespace = meta.namespace.clone()?;
        let name = meta.name.clone()?;
        let uid = meta.uid.clone().unwrap_or_default();
        let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k)).cloned();
        let owner_references = meta.owner_references.as_deref().unwrap_or_default();
        Some(PodInfo {
            owner: resolve_owner(&namespace, owner_references, |ns, n| {
                owners_of("ReplicaSet", ns, n)
            }),
            scope: report_scope(&namespace, &name, &uid, owner_references, owners_of),
            namespace,
            name,
            uid,
            labels: meta.labels.clone().unwrap_or_default(),
            injected: annotation(keys::ANNOTATION_INJECTED),
            mode: annotation(keys::ANNOTATION_MODE),
            mirror: annotation(keys::ANNOTATION_MIRROR).is_some(),
            restarted_at: annotation(keys::ANNOTATION_RESTARTED_AT).and_then(|s| s.parse().ok()),
            init: None,
        })
    }

    pub fn reference(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }
}

/// `share` and `inject:<containers>` protect a pod; `skipped:…`, `audit:…` and no annotation do not.
pub fn is_protected(injected: Option<&str>) -> bool {
    matches!(injected, Some(v) if v == "share" || v.starts_with("inject:"))
}

/// Zombies of one container, from the ZombieReports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerZombieCount {
    /// Container name, or the first 12 characters of its ID when the agent did not know the name.
    pub container: String,
    pub count: u32,
    /// `comm` of the worst parent.
    pub parent_comm: String,
    /// `comm` and zombie count of every parent the report names, worst first.
    pub parents: Vec<(String, u32)>,
    pub age_seconds: u64,
}

/// Zombies of one pod, summed over the reports that mention it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodZombies {
    /// The pod's zombies (containers and the pod's own cgroup).
    pub total: u32,
    pub containers: Vec<ContainerZombieCount>,
}

/// Pod UID → the init that protects every one of its containers the agents report on (the
/// first such init by container). A pod with any container whose PID 1 is neither a known init
/// nor under a shared namespace's `pause` is left out: it is not protected.
pub fn index_inits<'a>(
    reports: impl IntoIterator<Item = &'a ZombieReportSpec>,
) -> HashMap<String, String> {
    let mut seen: HashMap<&str, Option<&str>> = HashMap::new();
    for report in reports {
        for c in &report.pid1s {
            let entry = seen.entry(c.pod_uid.as_str()).or_insert(c.protected_by());
            if c.protected_by().is_none() {
                *entry = None;
            }
        }
    }
    seen.into_iter()
        .filter_map(|(uid, init)| Some((uid.to_string(), init?.to_string())))
        .collect()
}

/// Zombies per pod UID over every node's report.
pub fn index_zombies<'a>(
    reports: impl IntoIterator<Item = &'a ZombieReportSpec>,
) -> HashMap<String, PodZombies> {
    let mut out: HashMap<String, PodZombies> = HashMap::new();
    let mut pod_level: HashMap<String, u32> = HashMap::new();
    for report in reports {
        for c in &report.containers {
            let entry = out.entry(c.pod_uid.clone()).or_default();
            entry.containers.push(ContainerZombieCount {
                container: c
                    .container
                    .clone()
                    .unwrap_or_else(|| c.container_id.chars().take(12).collect()),
                count: c.count,
                parent_comm: c
                    .parents
                    .first()
                    .map(|p| p.comm.clone())
                    .unwrap_or_default(),
                parents: c
                    .parents
                    .iter()
                    .map(|p| (p.comm.clone(), p.count))
                    .collect(),
                age_seconds: c.oldest_age_seconds,
            });
        }
        for p in &report.pods {
            *pod_level.entry(p.pod_uid.clone()).or_default() += p.zombies;
        }
    }
    for (uid, zombies) in pod_level {
        if zombies > 0 {
            out.entry(uid).or_default().total = zombies;
        } else if let Some(entry) = out.get_mut(&uid) {
            entry.total = zombies;
        }
    }
    for entry in out.values_mut() {
        // `pods[].zombies` includes zombies outside containers; a report without the pod entry
        // still has its containers.
        let in_containers = entry
            .containers
            .iter()
            .fold(0u32, |sum, c| sum.saturating_add(c.count));
        entry.total = entry.total.max(in_containers);
    }
    out
}

/// The indexed state [`compute`] works on.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    pub policies: &'a PolicySet,
    /// Namespace name → labels.
    pub namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
    pub pods: &'a [PodInfo],
    /// Pod UID → zombies ([`index_zombies`]).
    pub zombies: &'a HashMap<String, PodZombies>,
}

/// A pod named in an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}
