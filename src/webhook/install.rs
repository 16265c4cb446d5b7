//! What `inject` adds to a pod: the `reaper-install` init container that copies the reaper
//! into an emptyDir, that volume, and the read-only mount of it in wrapped containers; and how a
//! later pass recognises its own earlier work. Specs only; the decision is `super::decide`'s.
use super::decide::Config;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, Pod, ResourceRequirements, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use reaper_contract::init as init_cli;
use std::collections::{BTreeMap, BTreeSet};

/// Base name of the emptyDir holding the reaper binary (suffixed `-1`, `-2`, ... when taken).
pub const VOLUME_NAME: &str = "reaper-bin";
/// Base name of the init container that copies the reaper binary into the volume.
pub const INSTALL_CONTAINER_NAME: &str = "reaper-install";
/// Path of the static init inside `--reaper-image`.
pub const IMAGE_REAPER_PATH: &str = "/reaper";

/// Resources and identity of the injected `reaper-install` container and its volume.
#[derive(Clone, Debug)]
pub struct InstallSettings {
    pub run_as_user: i64,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
    /// `sizeLimit` of the `reaper-bin` emptyDir.
    pub volume_size_limit: String,
}

impl Default for InstallSettings {
    fn default() -> Self {
        Self {
            run_as_user: 65532,
            cpu_request: "10m".into(),
            memory_request: "16Mi".into(),
            cpu_limit: "100m".into(),
            memory_limit: "64Mi".into(),
            // The static reaper is ~1 MB; 8Mi leaves room for a larger build without letting the
            // volume become scratch space.
            volume_size_limit: "8Mi".into(),
        }
    }
}

/// The exact command of the install container; also how a later pass recognises it.
pub fn install_command(cfg: &Config) -> Vec<String> {
    vec![
        IMAGE_REAPER_PATH.to_string(),
        format!("--{}", init_cli::OPT_INSTALL),
        cfg.reaper_path(),
    ]
}

/// Our install container and volume from an earlier pass.
pub struct ExistingInstall {
    pub index: usize,
    pub volume: String,
}

/// Our install container: the exact install command, mounting an emptyDir of the pod at the
/// mount path.
pub fn find_install(pod: &Pod, cfg: &Config) -> Option<ExistingInstall> {
    let spec = pod.spec.as_ref()?;
    let command = install_command(cfg);
    spec.init_containers
        .iter()
        .flatten()
        .enumerate()
        .find_map(|(index, c)| {
            if c.command.as_ref() != Some(&command) {
                return None;
            }
            let mount = c
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path.trim_end_matches('/') == cfg.mount_path)?;
            let is_empty_dir = spec
                .volumes
                .iter()
                .flatten()
                .any(|v| v.name == mount.name && v.empty_dir.is_some());
            is_empty_dir.then(|| ExistingInstall {
                index,
                volume: mount.name.clone(),
            })
        })
}

/// A mount of this container at or under the mount path that is not our volume.
pub fn mount_conflict<'a>(
    c: &'a Container,
    mount_path: &str,
    ours: Option<&str>,
) -> Option<&'a str> {
    c.volume_mounts.iter().flatten().find_map(|m| {
        let path = m.mount_path.trim_end_matches('/');
        let under = path == mount_path
            || path
                .strip_prefix(mount_path)
                .is_some_and(|rest| rest.starts_with('/'));
        let is_ours = path == mount_path && Some(m.name.as_str()) == ours;
        (under && !is_ours).then_some(m.name.as_str())
    })
}

pub fn has_our_mount(c: &Container, mount_path: &str, volume: &str) -> bool {
    c.volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == volume && m.mount_path.trim_end_matches('/') == mount_path)
}

pub fn has_mount_at(c: &Container, mount_path: &str) -> bool {
    c.volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path.trim_end_matches('/') == mount_path)
}

/// First of `base`, `base-1`, `base-2`, ... not in `taken`.
pub fn free_name(base: &str, taken: &BTreeSet<&str>) -> String {
    if !taken.contains(base) {
        return base.to_string();
    }
    (1..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken.contains(n.as_str()))
        .unwrap_or_else(|| base.to_string())
}

/// The emptyDir the reaper is copied into.
pub fn volume(cfg: &Config, name: &str) -> Volume {
    Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity(cfg.install.volume_size_limit.clone())),
        }),
        ..Default::default()
    }
}

/// Where the ServiceAccount admission plugin mounts the API token in every container.
const SERVICE_ACCOUNT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The installer's mounts: our volume, and the same volume read-only over the API token path.
/// The plugin skips containers that already mount something there, so the installer (which
/// copies a file) gets no token, and the plugin does not change the pod after us: without this,
/// each wrapped pod's admission re-runs the plugin and calls this webhook a second time
/// (`reinvocationPolicy: IfNeeded`).
fn install_mounts(cfg: &Config, volume: &str) -> Vec<VolumeMount> {
    let mut mounts = vec![VolumeMount {
        name: volume.to_string(),
        mount_path: cfg.mount_path.clone(),
        ..Default::default()
    }];
    if cfg.mount_path != SERVICE_ACCOUNT_TOKEN_PATH {
        mounts.push(VolumeMount {
            name: volume.to_string(),
            mount_path: SERVICE_ACCOUNT_TOKEN_PATH.to_string(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    mounts
}

/// The init container that copies reaper into the volume. It passes Pod Security "restricted".
pub fn container(cfg: &Config, name: &str, volume: &str) -> Container {
    let s = &cfg.install;
    let q = |v: &str| Quantity(v.to_string());
    Container {
        name: name.to_string(),
        image: Some(cfg.reaper_image.clone()),
        command: Some(install_command(cfg)),
        volume_mounts: Some(install_mounts(cfg, volume)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), q(&s.cpu_request)),
                ("memory".to_string(), q(&s.memory_request)),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".to_string(), q(&s.cpu_limit)),
                ("memory".to_string(), q(&s.memory_limit)),
            ])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(s.run_as_user),
            run_as_group: Some(s.run_as_user),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    }
}
