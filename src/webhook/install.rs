//! What wrapping adds to a pod: the `reaper-install` init container that copies the reaper
//! into an emptyDir and that volume (modes `inject`, `auto`), or an image volume of the reaper
//! image (mode `image`, and `auto` where the cluster supports it); the read-only mount of the
//! volume in wrapped containers; and how a later pass recognises its own earlier work. Specs
//! only; the decision is `super::decide`'s.
use super::decide::Config;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, ImageVolumeSource, Pod, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
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
    /// `None`: the image's USER applies.
    pub run_as_user: Option<i64>,
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
            run_as_user: Some(65532),
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

/// Our image volume from an earlier pass: a volume with an `image` source that is the reaper
/// image, or that a wrapped container (argv[0] the reaper path) mounts at the mount path (an
/// older reaper image, or `--reaper-image` changed since).
pub fn find_image_volume(pod: &Pod, cfg: &Config) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let reaper = cfg.reaper_path();
    let mounted_by_wrapped = |name: &str| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .filter(|c| {
                c.command
                    .as_ref()
                    .and_then(|v| v.first())
                    .is_some_and(|a| *a == reaper)
            })
            .any(|c| has_our_mount(c, &cfg.mount_path, name))
    };
    let images: Vec<(&str, &str)> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            let reference = v.image.as_ref()?.reference.as_deref().unwrap_or_default();
            Some((v.name.as_str(), reference))
        })
        .collect();
    images
        .iter()
        .find(|(_, r)| *r == cfg.reaper_image)
        .or_else(|| images.iter().find(|(n, _)| mounted_by_wrapped(n)))
        .map(|(n, _)| n.to_string())
}

/// The image volume holding the reaper: `--reaper-image` itself, whose `/reaper` wrapped
/// containers run as `<mount-path>/reaper`. `IfNotPresent`: the kubelet pulls it once per node
/// (the image is tagged by release; a moving tag is the operator's choice, as for the
/// installer's image).
pub fn image_volume(cfg: &Config, name: &str) -> Volume {
    Volume {
        name: name.to_string(),
        image: Some(ImageVolumeSource {
            reference: Some(cfg.reaper_image.clone()),
            pull_policy: Some("IfNotPresent".to_string()),
        }),
        ..Default::default()
    }
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
/// Its resources keep the pod's QoS class ([`qos_class`]): requests equal to the limits in a
/// Guaranteed pod, none at all in a BestEffort pod, the configured requests and limits otherwise.
pub fn container(cfg: &Config, name: &str, volume: &str, qos: Qos) -> Container {
    let s = &cfg.install;
    let q = |v: &str| Quantity(v.to_string());
    let limits = BTreeMap::from([
        ("cpu".to_string(), q(&s.cpu_limit)),
        ("memory".to_string(), q(&s.memory_limit)),
    ]);
    let resources = match qos {
        Qos::BestEffort => None,
        Qos::Guaranteed => Some(ResourceRequirements {
            requests: Some(limits.clone()),
            limits: Some(limits),
            ..Default::default()
        }),
        Qos::Burstable => Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), q(&s.cpu_request)),
                ("memory".to_string(), q(&s.memory_request)),
            ])),
            limits: Some(limits),
            ..Default::default()
        }),
    };
    Container {
        name: name.to_string(),
        image: Some(cfg.reaper_image.clone()),
        command: Some(install_command(cfg)),
        volume_mounts: Some(install_mounts(cfg, volume)),
        resources,
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: s.run_as_user,
            run_as_group: s.run_as_user,
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

/// A pod's Quality of Service class, as the API server computes `status.qosClass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// The QoS class of `pod` (Kubernetes' own rule): pod-level `spec.resources` decide when set;
/// otherwise BestEffort when no container (init containers included) requests or limits cpu or
/// memory, Guaranteed when every container limits both and the summed requests equal the
/// summed limits, Burstable in between.
pub fn qos_class(pod: &Pod) -> Qos {
    let Some(spec) = pod.spec.as_ref() else {
        return Qos::BestEffort;
    };
    const KINDS: [&str; 2] = ["cpu", "memory"];
    let nonzero = |m: Option<&BTreeMap<String, Quantity>>| -> BTreeMap<&'static str, f64> {
        KINDS
            .iter()
            .filter_map(|k| {
                let v = quantity_value(&m?.get(*k)?.0)?;
                (v != 0.0).then_some((*k, v))
            })
            .collect()
    };
    if let Some(r) = spec.resources.as_ref()
        && (r.requests.is_some() || r.limits.is_some())
    {
        let (req, lim) = (nonzero(r.requests.as_ref()), nonzero(r.limits.as_ref()));
        let guaranteed = KINDS.iter().all(|k| lim.contains_key(k))
            && KINDS
                .iter()
                .all(|k| req.get(k).is_none_or(|v| Some(v) == lim.get(k)));
        return if guaranteed {
            Qos::Guaranteed
        } else {
            Qos::Burstable
        };
    }
    let mut requests: BTreeMap<&str, f64> = BTreeMap::new();
    let mut limits: BTreeMap<&str, f64> = BTreeMap::new();
    let mut every_container_limited = true;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let r = c.resources.as_ref();
        for (k, v) in nonzero(r.and_then(|r| r.requests.as_ref())) {
            *requests.entry(k).or_default() += v;
        }
        let lim = nonzero(r.and_then(|r| r.limits.as_ref()));
        every_container_limited &= KINDS.iter().all(|k| lim.contains_key(k));
        for (k, v) in lim {
            *limits.entry(k).or_default() += v;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return Qos::BestEffort;
    }
    let sums_equal = requests
        .iter()
        .all(|(k, v)| limits.get(k).is_some_and(|l| (l - v).abs() < 1e-9));
    if every_container_limited && sums_equal {
        Qos::Guaranteed
    } else {
        Qos::Burstable
    }
}

/// A Kubernetes quantity's value (e.g. `10m` → 0.01, `16Mi` → 16777216), or `None` if malformed.
pub fn quantity_value(q: &str) -> Option<f64> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.matches('.').count() > 1 {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        _ => return None,
    };
    Some(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: &[serde_json::Value], pod_level: Option<serde_json::Value>) -> Pod {
        let containers: Vec<_> = resources
            .iter()
            .enumerate()
            .map(
                |(i, r)| serde_json::json!({"name": format!("c{i}"), "image": "x", "resources": r}),
            )
            .collect();
        let mut spec = serde_json::json!({"containers": containers});
        if let Some(p) = pod_level {
            spec["resources"] = p;
        }
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn qos_classes_as_kubernetes_computes_them() {
        use serde_json::json;
        let g = json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "0.1", "memory": "64Mi"}});
        let lim_only = json!({"limits": {"cpu": "1", "memory": "1Gi"}});
        let b = json!({"requests": {"cpu": "10m"}});
        let none = json!({});
        for (containers, pod_level, want) in [
            (vec![g.clone()], None, Qos::Guaranteed),
            (vec![g.clone(), g.clone()], None, Qos::Guaranteed),
            // Requests default to the limits (the API server's defaulting does the same).
            (vec![lim_only.clone()], None, Qos::Guaranteed),
            (vec![g.clone(), none.clone()], None, Qos::Burstable),
            (vec![b.clone()], None, Qos::Burstable),
            (vec![none.clone(), none.clone()], None, Qos::BestEffort),
            (
                vec![json!({"requests": {"cpu": "0"}})],
                None,
                Qos::BestEffort,
            ),
            (
                vec![none.clone()],
                Some(json!({"limits": {"cpu": "1", "memory": "1Gi"}})),
                Qos::Guaranteed,
            ),
            (
                vec![g.clone()],
                Some(json!({"requests": {"cpu": "1"}})),
                Qos::Burstable,
            ),
        ] {
            let mut p = pod(&containers, pod_level.clone());
            // Requests absent for a limited resource default to its limit, as on the API server.
            for c in &mut p.spec.as_mut().unwrap().containers {
                if let Some(r) = c.resources.as_mut()
                    && let Some(l) = r.limits.clone()
                {
                    let req = r.requests.get_or_insert_with(BTreeMap::new);
                    for (k, v) in l {
                        req.entry(k).or_insert(v);
                    }
                }
            }
            assert_eq!(qos_class(&p), want, "{containers:?} {pod_level:?}");
        }
    }

    #[test]
    fn the_installer_keeps_the_pods_class() {
        let cfg = Config::new("r:1");
        let mut p = pod(
            &[
                serde_json::json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
            ],
            None,
        );
        for qos in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
            let c = container(&cfg, INSTALL_CONTAINER_NAME, VOLUME_NAME, qos);
            let spec = p.spec.as_mut().unwrap();
            spec.init_containers = Some(vec![c]);
            // With the matching app containers, the class is unchanged.
            spec.containers[0].resources = match qos {
                Qos::Guaranteed => spec.containers[0].resources.clone(),
                Qos::Burstable => Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([("cpu".into(), Quantity("1".into()))])),
                    ..Default::default()
                }),
                Qos::BestEffort => None,
            };
            assert_eq!(qos_class(&p), qos, "{qos:?}");
        }
    }
}
