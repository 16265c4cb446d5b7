//! Whether the cluster can run pods with image volumes (`volumes[].image`, KEP-4639), and how a
//! wrapped container gets the reaper binary ([`delivery`]).
//!
//! Support is a pure function of what the webhook learns at start and from its node watch
//! ([`ClusterFacts`] → [`image_volumes_supported`]):
//! - the API server keeps `volumes[].image`: a server-side dry-run create of a PodTemplate with an
//!   image volume in the webhook's own namespace says so for sure (a disabled `ImageVolume` gate
//!   drops the field); without it (no permission, an error), the server version must be ≥ 1.35
//!   (beta on by default in 1.35, GA in 1.36);
//! - every node's kubelet is ≥ 1.35 and its runtime (`status.nodeInfo.containerRuntimeVersion`)
//!   mounts image volumes: containerd ≥ 2.1, CRI-O ≥ 1.31; any other runtime counts as not
//!   supporting them, and so does a cluster without nodes.
//!
//! A PodTemplate, not a Pod: its registry drops disabled pod fields the same way, and nothing acts
//! on a PodTemplate, so the permission it takes (`create podtemplates` in one namespace) lets the
//! webhook run nothing.
use crate::crd::{ImageVolume, Mode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// First Kubernetes minor (1.x) where `ImageVolume` is on by default (beta in 1.35, GA in 1.36).
pub const MIN_KUBERNETES_MINOR: u32 = 35;
/// containerd mounts image volumes since 2.1.
pub const MIN_CONTAINERD: (u32, u32) = (2, 1);
/// CRI-O mounts image volumes since 1.31.
pub const MIN_CRIO: (u32, u32) = (1, 31);

/// How a wrapped container gets `<mount-path>/reaper`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The `reaper-install` init container copies it into an emptyDir.
    InitContainer,
    /// The reaper image itself is mounted read-only (an image volume).
    ImageVolume,
}

/// How a pod wrapped under `mode` gets the reaper, given the governing policy's `imageVolume` and
/// whether the cluster supports image volumes; with a warning when the mode asked for an image
/// volume and the policy forbids it.
pub fn delivery(mode: Mode, policy: ImageVolume, supported: bool) -> (Delivery, Option<String>) {
    match (policy, mode) {
        (ImageVolume::Forbidden, Mode::Image) => (
            Delivery::InitContainer,
            Some(
                "reaper: mode image, but the policy's imageVolume is Forbidden; the reaper-install init container is used"
                    .to_string(),
            ),
        ),
        (ImageVolume::Forbidden, _) => (Delivery::InitContainer, None),
        (ImageVolume::Required, _) | (ImageVolume::Allowed, Mode::Image) => {
            (Delivery::ImageVolume, None)
        }
        // `auto`, and `share` turned into wrapping by hostPID.
        (ImageVolume::Allowed, Mode::Auto | Mode::Share) if supported => {
            (Delivery::ImageVolume, None)
        }
        (ImageVolume::Allowed, _) => (Delivery::InitContainer, None),
    }
}

/// What the API server did with the dry-run create of a PodTemplate with an image volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DryRun {
    /// The returned object still has the volume's `image`.
    Kept,
    /// The field was dropped (or the object rejected as a volume without a source): the
    /// `ImageVolume` feature gate is off on the API server.
    Dropped,
    /// Not run or no answer (forbidden, an error): the server version decides.
    Unknown,
}

/// One node's versions, from `status.nodeInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeVersions {
    pub name: String,
    /// `containerRuntimeVersion`, e.g. `containerd://2.3.7`, `cri-o://1.31.2`.
    pub runtime: String,
    /// `kubeletVersion`, e.g. `v1.36.3`.
    pub kubelet: String,
}

/// What [`image_volumes_supported`] decides from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFacts {
    /// `gitVersion` of the API server (`/version`), e.g. `v1.36.3`; `None` when unknown.
    pub server_version: Option<String>,
    pub dry_run: DryRun,
    pub nodes: Vec<NodeVersions>,
}

/// `Ok` when pods with image volumes run anywhere in the cluster; otherwise why not.
pub fn image_volumes_supported(facts: &ClusterFacts) -> Result<(), String> {
    match facts.dry_run {
        DryRun::Kept => {}
        DryRun::Dropped => {
            return Err(
                "the API server drops volumes[].image (ImageVolume feature gate off)".to_string(),
            );
        }
        DryRun::Unknown => {
            let v = facts.server_version.as_deref().unwrap_or("unknown");
            if !kubernetes_at_least(v, MIN_KUBERNETES_MINOR) {
                return Err(format!(
                    "API server {v} (image volumes are on by default from 1.{MIN_KUBERNETES_MINOR}) and no dry-run answer"
                ));
            }
        }
    }
    if facts.nodes.is_empty() {
        return Err("no nodes".to_string());
    }
    for n in &facts.nodes {
        if !kubernetes_at_least(&n.kubelet, MIN_KUBERNETES_MINOR) {
            return Err(format!(
                "node {} runs kubelet {:?} (image volumes need 1.{MIN_KUBERNETES_MINOR} or later)",
                n.name, n.kubelet
            ));
        }
        if !runtime_supports_image_volumes(&n.runtime) {
            return Err(format!(
                "node {} runs {:?} (image volumes need containerd ≥ {}.{} or CRI-O ≥ {}.{})",
                n.name, n.runtime, MIN_CONTAINERD.0, MIN_CONTAINERD.1, MIN_CRIO.0, MIN_CRIO.1
            ));
        }
    }
    Ok(())
}

/// `major.minor` of a version string such as `v1.36.3+k3s1`, `2.1.0-rc.1`, `1.31`.
pub fn major_minor(v: &str) -> Option<(u32, u32)> {
    let v = v.trim().trim_start_matches('v');
    let mut parts = v.split('.');
    let digits = |s: &str| -> Option<u32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let major = digits(parts.next()?)?;
    let minor = digits(parts.next()?)?;
    Some((major, minor))
}

fn kubernetes_at_least(v: &str, minor: u32) -> bool {
    major_minor(v).is_some_and(|(ma, mi)| ma > 1 || ma == 1 && mi >= minor)
}

/// Whether a `containerRuntimeVersion` (`<runtime>://<version>`) mounts image volumes.
pub fn runtime_supports_image_volumes(runtime: &str) -> bool {
    let Some((name, version)) = runtime.split_once("://") else {
        return false;
    };
    let Some(v) = major_minor(version) else {
        return false;
    };
    match name.to_ascii_lowercase().as_str() {
        "containerd" => v >= MIN_CONTAINERD,
        "cri-o" | "crio" => v >= MIN_CRIO,
        _ => false,
    }
}

/// The webhook's current answer, shared between the detection task and the planner (which reads
/// it once per pod). Starts unsupported: until detection says otherwise `auto` uses the init
/// container, which runs everywhere.
#[derive(Clone, Debug, Default)]
pub struct Support(Arc<AtomicBool>);

impl Support {
    /// A handle that says `supported` (tests, the offline `inject` command).
    pub fn fixed(supported: bool) -> Self {
        Self(Arc::new(AtomicBool::new(supported)))
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    /// Sets the answer; whether it changed.
    pub fn set(&self, supported: bool) -> bool {
        self.0.swap(supported, Ordering::Relaxed) != supported
    }
}

/// `--image-volumes` of the webhook and `explain`: whether `auto` may mount the reaper image.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Setting {
    /// Ask the cluster (server version, a dry-run, the nodes' runtimes) and follow its nodes.
    #[default]
    Detect,
    /// Take image volumes as supported.
    True,
    /// Take them as unsupported.
    False,
}

/// Name prefix of the dry-run PodTemplate (never stored).
pub const PROBE_NAME: &str = "reaper-image-volume-probe-";

/// What the API server says about image volumes: its version and, when `namespace` is given,
/// a server-side dry-run create of a PodTemplate with an image volume of `image` there.
pub async fn server_facts(
    client: &kube::Client,
    namespace: Option<&str>,
    image: &str,
) -> (Option<String>, DryRun) {
    let version = match client.apiserver_version().await {
        Ok(info) => Some(info.git_version),
        Err(e) => {
            tracing::warn!(error = %e, "reading the API server version");
            None
        }
    };
    let Some(namespace) = namespace else {
        return (version, DryRun::Unknown);
    };
    let probe: k8s_openapi::api::core::v1::PodTemplate = match serde_json::from_value(
        serde_json::json!({
            "metadata": {"generateName": PROBE_NAME},
            "template": {"spec": {
                "containers": [{"name": "probe", "image": image}],
                "volumes": [{"name": "probe", "image": {"reference": image, "pullPolicy": "IfNotPresent"}}]
            }}
        }),
    ) {
        Ok(p) => p,
        Err(_) => return (version, DryRun::Unknown),
    };
    let api =
        kube::Api::<k8s_openapi::api::core::v1::PodTemplate>::namespaced(client.clone(), namespace);
    let params = kube::api::PostParams {
        dry_run: true,
        field_manager: None,
    };
    let dry_run = match api.create(&params, &probe).await {
        Ok(created) => {
            let kept = created
                .template
                .and_then(|t| t.spec)
                .and_then(|s| s.volumes)
                .is_some_and(|v| v.iter().any(|v| v.image.is_some()));
            if kept { DryRun::Kept } else { DryRun::Dropped }
        }
        // The field dropped leaves a volume without a source, which does not validate.
        Err(kube::Error::Api(s)) if s.code == 422 => DryRun::Dropped,
        Err(e) => {
            tracing::info!(error = %e, namespace, "image volume dry-run not answered; the server version decides");
            DryRun::Unknown
        }
    };
    (version, dry_run)
}

/// A node's versions as [`image_volumes_supported`] reads them.
pub fn node_versions(node: &k8s_openapi::api::core::v1::Node) -> NodeVersions {
    let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
    NodeVersions {
        name: node.metadata.name.clone().unwrap_or_default(),
        runtime: info
            .map(|i| i.container_runtime_version.clone())
            .unwrap_or_default(),
        kubelet: info.map(|i| i.kubelet_version.clone()).unwrap_or_default(),
    }
}

/// Everything at once (`explain`): server facts and the nodes listed now.
pub async fn gather(client: &kube::Client, namespace: &str, image: &str) -> ClusterFacts {
    let (server_version, dry_run) = server_facts(client, Some(namespace), image).await;
    let nodes = match kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list(&Default::default())
        .await
    {
        Ok(list) => list.items.iter().map(node_versions).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing nodes");
            Vec::new()
        }
    };
    ClusterFacts {
        server_version,
        dry_run,
        nodes,
    }
}

/// How often the server facts are asked again (an upgraded API server turns the gate on).
pub const SERVER_RECHECK: std::time::Duration = std::time::Duration::from_secs(600);

/// The webhook's detection: server facts at start and every [`SERVER_RECHECK`], and a watch of
/// the nodes (only their names and versions are kept); `support` follows every change (logged
/// with the reason when unsupported), and `on_change` hears each new answer.
pub fn detect(
    client: kube::Client,
    namespace: Option<String>,
    image: String,
    support: Support,
    tasks: &crate::component::Tasks,
    on_change: impl Fn(bool) + Send + 'static,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let stop = tasks.shutdown();
    tasks.spawn("image volume detection", async move {
        let nodes_api = kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone());
        let stream = watcher(nodes_api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut facts = ClusterFacts {
            server_version: None,
            dry_run: DryRun::Unknown,
            nodes: Vec::new(),
        };
        let mut nodes: std::collections::BTreeMap<String, NodeVersions> = Default::default();
        let mut pending: std::collections::BTreeMap<String, NodeVersions> = Default::default();
        let mut nodes_synced = false;
        let mut recheck = tokio::time::interval(SERVER_RECHECK);
        let mut last: Option<Result<(), String>> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = recheck.tick() => {
                    let (v, d) = server_facts(&client, namespace.as_deref(), &image).await;
                    facts.server_version = v;
                    facts.dry_run = d;
                }
                event = stream.next() => match event {
                    Some(Ok(watcher::Event::Init)) => pending.clear(),
                    Some(Ok(watcher::Event::InitApply(n))) => {
                        let v = node_versions(&n);
                        pending.insert(v.name.clone(), v);
                        continue;
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        nodes = std::mem::take(&mut pending);
                        nodes_synced = true;
                    }
                    Some(Ok(watcher::Event::Apply(n))) => {
                        let v = node_versions(&n);
                        if nodes.get(&v.name) == Some(&v) {
                            continue;
                        }
                        nodes.insert(v.name.clone(), v);
                    }
                    Some(Ok(watcher::Event::Delete(n))) => {
                        nodes.remove(&node_versions(&n).name);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching nodes (retrying)");
                        continue;
                    }
                    None => return,
                },
            }
            if !nodes_synced {
                continue;
            }
            facts.nodes = nodes.values().cloned().collect();
            let verdict = image_volumes_supported(&facts);
            if last.as_ref() != Some(&verdict) {
                match &verdict {
                    Ok(()) => tracing::info!(
                        server = facts.server_version.as_deref().unwrap_or("unknown"),
                        dry_run = ?facts.dry_run,
                        nodes = facts.nodes.len(),
                        "image volumes supported: auto mounts the reaper image"
                    ),
                    Err(why) => tracing::info!(
                        reason = %why,
                        "image volumes not supported: auto uses the reaper-install init container"
                    ),
                }
                support.set(verdict.is_ok());
                on_change(verdict.is_ok());
                last = Some(verdict);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, runtime: &str, kubelet: &str) -> NodeVersions {
        NodeVersions {
            name: name.into(),
            runtime: runtime.into(),
            kubelet: kubelet.into(),
        }
    }

    fn facts(server: &str, dry_run: DryRun, nodes: Vec<NodeVersions>) -> ClusterFacts {
        ClusterFacts {
            server_version: Some(server.into()),
            dry_run,
            nodes,
        }
    }

    #[test]
    fn runtimes() {
        for (rt, want) in [
            ("containerd://2.3.7", true),
            ("containerd://2.1.0", true),
            ("containerd://2.1.0-rc.1", true),
            ("containerd://2.0.5-k3s1", false),
            ("containerd://1.7.27", false),
            ("containerd://v2.2.0", true),
            ("cri-o://1.31.0", true),
            ("cri-o://1.30.9", false),
            ("cri-o://1.34.1", true),
            ("docker://28.0.1", false),
            ("remote://1.0", false),
            ("containerd", false),
            ("containerd://", false),
            ("", false),
        ] {
            assert_eq!(runtime_supports_image_volumes(rt), want, "{rt}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(major_minor("v1.36.3"), Some((1, 36)));
        assert_eq!(major_minor("v1.35.0-gke.1"), Some((1, 35)));
        assert_eq!(major_minor("v1.36.3+k3s1"), Some((1, 36)));
        assert_eq!(major_minor("1.31"), Some((1, 31)));
        assert_eq!(major_minor("v1"), None);
        assert_eq!(major_minor("x.y"), None);
    }

    #[test]
    fn support_needs_the_api_server_and_every_node() {
        let good = || node("a", "containerd://2.3.7", "v1.36.3");
        for (what, f, ok) in [
            (
                "dry-run kept, good node",
                facts("v1.36.3", DryRun::Kept, vec![good()]),
                true,
            ),
            (
                "no dry-run, 1.35 server",
                facts("v1.35.1", DryRun::Unknown, vec![good()]),
                true,
            ),
            (
                "no dry-run, 1.34 server",
                facts("v1.34.2", DryRun::Unknown, vec![good()]),
                false,
            ),
            (
                "dry-run kept on 1.34 (gate turned on)",
                facts(
                    "v1.34.2",
                    DryRun::Kept,
                    vec![node("a", "cri-o://1.34.0", "v1.35.0")],
                ),
                true,
            ),
            (
                "gate off on a 1.36 server",
                facts("v1.36.0", DryRun::Dropped, vec![good()]),
                false,
            ),
            ("no nodes", facts("v1.36.0", DryRun::Kept, vec![]), false),
            (
                "one old containerd",
                facts(
                    "v1.36.0",
                    DryRun::Kept,
                    vec![good(), node("b", "containerd://1.7.27", "v1.36.0")],
                ),
                false,
            ),
            (
                "one old kubelet",
                facts(
                    "v1.36.0",
                    DryRun::Kept,
                    vec![good(), node("b", "containerd://2.1.1", "v1.34.9")],
                ),
                false,
            ),
            (
                "unknown runtime",
                facts(
                    "v1.36.0",
                    DryRun::Kept,
                    vec![node("a", "docker://28.0.1", "v1.36.0")],
                ),
                false,
            ),
        ] {
            let got = image_volumes_supported(&f);
            assert_eq!(got.is_ok(), ok, "{what}: {got:?}");
        }
        let unknown = ClusterFacts {
            server_version: None,
            dry_run: DryRun::Unknown,
            nodes: vec![good()],
        };
        assert!(image_volumes_supported(&unknown).is_err());
    }

    #[test]
    fn delivery_by_mode_policy_and_support() {
        use Delivery::{ImageVolume as Volume, InitContainer};
        use ImageVolume::{Allowed, Forbidden, Required};
        for (mode, policy, supported, want, warns) in [
            (Mode::Auto, Allowed, true, Volume, false),
            (Mode::Auto, Allowed, false, InitContainer, false),
            (Mode::Share, Allowed, true, Volume, false),
            (Mode::Inject, Allowed, true, InitContainer, false),
            (Mode::Image, Allowed, false, Volume, false),
            (Mode::Auto, Required, false, Volume, false),
            (Mode::Inject, Required, false, Volume, false),
            (Mode::Auto, Forbidden, true, InitContainer, false),
            (Mode::Image, Forbidden, true, InitContainer, true),
        ] {
            let (got, warning) = delivery(mode, policy, supported);
            assert_eq!(
                (got, warning.is_some()),
                (want, warns),
                "{mode} {policy:?} {supported}"
            );
        }
    }

    #[test]
    fn support_handle() {
        let s = Support::default();
        assert!(!s.get());
        let t = s.clone();
        assert!(t.set(true));
        assert!(!t.set(true));
        assert!(s.get());
        assert!(Support::fixed(true).get());
    }
}
