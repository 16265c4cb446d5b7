//! Property tests of the planner over generated pods:
//! - the JSONPatch applies cleanly to the original pod (json-patch crate) and yields a valid Pod;
//! - mutating is idempotent: planning the patched pod gives an empty patch and the same annotation;
//! - every container wrapped in this pass has effective argv `[reaper, opts…, "--", original…]`;
//!   every other container keeps its command and args;
//! - names stay unique and every reaper mount points at an emptyDir;
//! - exactly the containers wrapped with an argv read from the registry (no `command`, no policy
//!   entrypoint, no `@digest` in the reference) get their digest in `reaper.dev/image-digests` and,
//!   with `--pin-digests`, the image `<as written>@<digest>`; every other image is kept;
//! - protected pods (`share`, `inject:`, not audited) carry `reaper.dev/version` (the one they
//!   came with — a pod an older release wrapped keeps naming it — else this release) and
//!   `reaper.dev/policy` (the governing policy, a stale one replaced or removed); other pods keep
//!   whatever they came with.
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EmptyDirVolumeSource, Pod, PodSpec, Volume, VolumeMount,
};
use proptest::prelude::*;
use reaper::crd::{
    ContainerFilter, Enforcement, EntrypointOverride, Mode, PolicySet, ReaperOptions, ReaperPolicy,
    ReaperPolicySpec, SignalRewrite,
};
use reaper::image::{ImageConfig, ImageIndex, PlatformConfig};
use reaper::webhook::argv::{Argv, effective_argv, plan_argv};
use reaper::webhook::decide::{Config, Outcome, Scope, image_argv, plan};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const IMAGES: &[&str] = &[
    "nginx:1.27",
    "ghcr.io/acme/app:1",
    "redis:7",
    "private.example.com/x:2",
    "busybox",
    "ghcr.io/acme/pinned:1@sha256:00000000000000000000000000000000000000000000000000000000000000ff",
];

/// The digest the resolver read for `IMAGES[i]` (the one in the reference when it has one).
fn digest_of(i: usize) -> String {
    match IMAGES[i].split_once('@') {
        Some((_, d)) => d.to_string(),
        None => format!("sha256:{:064x}", i + 1),
    }
}

/// The image of [`IMAGES`] that is multi-platform when known.
const MULTI_ARCH: &str = "ghcr.io/acme/app:1";

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z/._=-]{1,12}",
        Just("$(VAR)".to_string()),
        Just("$HOME".to_string()),
        Just("$$literal".to_string()),
        Just("a b".to_string()),
        Just("/sbin/tini".to_string()),
        Just("/.reaper/reaper".to_string()),
        Just(String::new()),
    ]
}

fn argv_list() -> impl Strategy<Value = Option<Vec<String>>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(vec![])),
        4 => prop::collection::vec(word(), 1..4).prop_map(Some),
    ]
}

fn mount() -> impl Strategy<Value = VolumeMount> {
    (
        prop::sample::select(vec!["data", "reaper-bin", "cfg"]),
        prop::sample::select(vec!["/data", "/.reaper", "/.reaper/sub", "/etc/cfg"]),
    )
        .prop_map(|(name, path)| VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..Default::default()
        })
}

fn container() -> impl Strategy<Value = Container> {
    (
        prop::sample::select(IMAGES.to_vec()),
        argv_list(),
        argv_list(),
        prop::option::of(prop::collection::vec(mount(), 0..2)),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(image, command, args, volume_mounts, sidecar)| Container {
            name: String::new(),
            image: Some(image.into()),
            command,
            args,
            volume_mounts,
            restart_policy: sidecar.then(|| "Always".to_string()),
            ..Default::default()
        })
}

#[derive(Debug, Clone)]
struct Input {
    pod: Pod,
    policy: Option<ReaperPolicy>,
    images: ImageIndex,
    pin_digests: bool,
    /// Whether the cluster runs image volumes (`auto` then mounts the reaper image).
    image_volumes: bool,
}

fn input() -> impl Strategy<Value = Input> {
    let names = prop::sample::select(vec![
        "app",
        "web",
        "sidecar",
        "reaper-install",
        "proxy",
        "db",
        "x",
        "y",
    ]);
    (
        prop::collection::vec(container(), 1..4),
        prop::collection::vec(container(), 0..3),
        prop::collection::vec(names, 8),
        (
            any::<bool>(),
            any::<bool>(),
            prop::option::of(any::<bool>()),
        ),
        prop::option::of(prop::sample::select(vec![
            "auto", "inject", "image", "share", "off", "bogus",
        ])),
        prop::option::of(prop::sample::select(vec!["app", "web,proxy", "ghost"])),
        prop::option::of((
            prop::sample::select(vec![Mode::Auto, Mode::Inject, Mode::Image, Mode::Share]),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0u8..3,
        )),
        prop::collection::vec(any::<bool>(), IMAGES.len()),
        (
            any::<bool>(),
            prop::option::of(Just("0.0.1")),
            prop::option::of(prop::sample::select(vec!["p", "stale"])),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                regular,
                init,
                mut names,
                (host_pid, vol_clash, shared),
                mode,
                only,
                pol,
                known,
                (pin_digests, old_version, old_policy, image_volumes),
            )| {
                // Unique container names.
                let init_len = init.len();
                let mut all: Vec<Container> = init.into_iter().chain(regular).collect();
                names.sort();
                names.dedup();
                for (i, c) in all.iter_mut().enumerate() {
                    c.name = names.get(i).map_or(format!("c{i}"), |n| n.to_string());
                }
                let regular = all.split_off(init_len);
                let mut volumes = vec![Volume {
                    name: "data".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                }];
                if vol_clash {
                    volumes.push(Volume {
                        name: "reaper-bin".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: "x".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }
                let mut annotations = BTreeMap::new();
                if let Some(m) = mode {
                    annotations.insert("reaper.dev/mode".to_string(), m.to_string());
                }
                if let Some(o) = only {
                    annotations.insert("reaper.dev/containers".to_string(), o.to_string());
                }
                // As a manifest copied from a pod an earlier release admitted would carry them.
                if let Some(v) = old_version {
                    annotations.insert("reaper.dev/version".to_string(), v.to_string());
                }
                if let Some(p) = old_policy {
                    annotations.insert("reaper.dev/policy".to_string(), p.to_string());
                }
                let pod = Pod {
                    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                        generate_name: Some("gen-".into()),
                        annotations: (!annotations.is_empty()).then_some(annotations),
                        ..Default::default()
                    },
                    spec: Some(PodSpec {
                        containers: regular,
                        init_containers: (!all.is_empty()).then_some(all),
                        volumes: Some(volumes),
                        host_pid: host_pid.then_some(true),
                        share_process_namespace: shared,
                        ..Default::default()
                    }),
                    status: None,
                };
                let policy = pol.map(|(mode, audit, inits, flags, exclude)| {
                    let mut p = ReaperPolicy::new(
                        "p",
                        ReaperPolicySpec {
                            mode,
                            enforcement: if audit {
                                Enforcement::Audit
                            } else {
                                Enforcement::Enforce
                            },
                            init_containers: inits,
                            containers: ContainerFilter {
                                include: vec![],
                                exclude: if exclude == 1 {
                                    vec!["proxy".to_string()]
                                } else {
                                    vec![]
                                },
                            },
                            reaper: if flags {
                                ReaperOptions {
                                    grace: Some("5s".into()),
                                    process_group: true,
                                    rewrite: vec![SignalRewrite("TERM:QUIT".into())],
                                    verbosity: 2,
                                }
                            } else {
                                ReaperOptions::default()
                            },
                            entrypoints: vec![EntrypointOverride {
                                image: "redis:*".into(),
                                command: vec!["docker-entrypoint.sh".into()],
                                args: vec!["redis-server".into(), "$X".into()],
                            }],
                            ..Default::default()
                        },
                    );
                    p.metadata.name = Some("p".into());
                    p
                });
                let mut images = ImageIndex::new();
                for (i, (img, k)) in IMAGES.iter().zip(known).enumerate() {
                    if k {
                        images.set_digest(*img, digest_of(i));
                    }
                    if k && *img == MULTI_ARCH {
                        // An index whose platforms disagree: amd64's argv goes after `--`,
                        // the rest into REAPER_PLATFORM_ARGV.
                        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
                        images.insert(
                            *img,
                            Ok(ImageConfig::from_platforms(vec![
                                PlatformConfig::new("linux/arm64/v8", v(&["/arm$"]), v(&["$(X)"])),
                                PlatformConfig::new(
                                    "linux/amd64",
                                    v(&["/entry$"]),
                                    v(&["run", "$(X)"]),
                                ),
                            ])
                            .unwrap()),
                        );
                    } else if k {
                        images.insert(
                            *img,
                            Ok(ImageConfig::new(
                                vec!["/entry$".into()],
                                vec!["run".into(), "$(X)".into()],
                            )),
                        );
                    } else if img.starts_with("private") {
                        images.insert(*img, Err("401".into()));
                    }
                }
                Input {
                    pod,
                    policy,
                    images,
                    pin_digests,
                    image_volumes,
                }
            },
        )
}

fn unique(names: impl Iterator<Item = String>) -> bool {
    let v: Vec<String> = names.collect();
    let s: BTreeSet<&String> = v.iter().collect();
    s.len() == v.len()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn patch_applies_is_idempotent_and_preserves_argv(inp in input()) {
        let mut cfg = Config::new("reaper:1");
        cfg.pin_digests = inp.pin_digests;
        cfg.release = "9.9.9".into();
        cfg.image_volumes = reaper::webhook::capability::Support::fixed(inp.image_volumes);
        let set = PolicySet::new(inp.policy.clone().map(Arc::new));
        let labels = BTreeMap::from([("kubernetes.io/metadata.name".to_string(), "ns".to_string())]);
        let scope = Scope { namespace: "ns", namespace_labels: &labels };
        let p = plan(&inp.pod, scope, &set, &inp.images, &cfg);
        let patch = p.patch();

        let original = serde_json::to_value(&inp.pod).unwrap();
        let mut doc = original.clone();
        json_patch::patch(&mut doc, &patch).map_err(|e| TestCaseError::fail(format!("{e}: {patch:?}")))?;
        let patched: Pod = serde_json::from_value(doc.clone()).unwrap();

        // Idempotent.
        let p2 = plan(&patched, scope, &set, &inp.images, &cfg);
        prop_assert!(p2.patch().0.is_empty(), "second pass: {:?}\nfirst: {:?}", p2.patch(), patch);
        prop_assert_eq!(p2.annotation(), p.annotation());

        let spec = inp.policy.as_ref().map(|p| p.spec.clone()).unwrap_or_default();
        let reaper = cfg.reaper_path();
        let mut head = vec![reaper.clone()];
        head.extend(spec.reaper.to_flags());
        head.push("--".into());

        let wrapped: Vec<String> = match (&p.outcome, p.audit) {
            (Outcome::Inject(names), false) => names.clone(),
            _ => vec![],
        };
        let mut recorded = BTreeMap::new();
        let before = |list: &Option<Vec<Container>>| list.clone().unwrap_or_default();
        let ps = inp.pod.spec.as_ref().unwrap();
        let qs = patched.spec.as_ref().unwrap();
        let orig: Vec<Container> = before(&ps.init_containers).into_iter().chain(ps.containers.clone()).collect();
        let now: Vec<Container> = before(&qs.init_containers).into_iter().chain(qs.containers.clone()).collect();
        for o in &orig {
            let n = now.iter().find(|c| c.name == o.name).expect("container kept");
            let image = image_argv(o, &spec, &inp.images);
            let fresh = wrapped.contains(&o.name)
                && plan_argv(o, image, &reaper, &[]) != Argv::Wrapped;
            if fresh {
                let want: Vec<String> = head.iter().cloned()
                    .chain(effective_argv(o, image).expect("wrapped containers have a known argv"))
                    .collect();
                let got = effective_argv(n, reaper::webhook::argv::ImageArgv::Unknown).unwrap();
                prop_assert_eq!(got, want, "container {}", o.name);
                // A multi-platform image whose platforms differ carries every platform's argv.
                let platform_env = n.env.iter().flatten().find(|e| e.name == "REAPER_PLATFORM_ARGV");
                let image_decides = o.command.as_ref().is_none_or(|c| c.is_empty());
                let multi = image_decides
                    && o.image.as_deref() == Some(MULTI_ARCH)
                    && matches!(image, reaper::webhook::argv::ImageArgv::Resolved(c) if !c.platforms.is_empty());
                if multi && !o.env.iter().flatten().any(|e| e.name == "REAPER_PLATFORM_ARGV") {
                    let raw = platform_env.and_then(|e| e.value.clone()).expect("REAPER_PLATFORM_ARGV added");
                    let table: BTreeMap<String, Vec<String>> = serde_json::from_str(&raw).unwrap();
                    let after_dashes = effective_argv(o, image).unwrap();
                    prop_assert_eq!(&table["linux/amd64"], &after_dashes);
                    prop_assert!(table["linux/arm64/v8"][0] == "/arm$$");
                } else if !multi {
                    prop_assert_eq!(platform_env, o.env.iter().flatten().find(|e| e.name == "REAPER_PLATFORM_ARGV"));
                }
                // Read from the registry: digest recorded, and pinned when asked for.
                let written = o.image.clone().unwrap_or_default();
                let read = image_decides
                    && matches!(image, reaper::webhook::argv::ImageArgv::Resolved(_))
                    && !written.contains('@');
                let digest = IMAGES.iter().position(|i| *i == written).map(digest_of);
                match digest.filter(|_| read) {
                    Some(d) => {
                        let want = if inp.pin_digests { format!("{written}@{d}") } else { written.clone() };
                        prop_assert_eq!(n.image.clone().unwrap_or_default(), want, "container {}", o.name);
                        recorded.insert(o.name.clone(), d);
                    }
                    None => prop_assert_eq!(&n.image, &o.image, "container {}", o.name),
                }
                let m = n.volume_mounts.iter().flatten().find(|m| m.mount_path == "/.reaper").expect("mounted");
                prop_assert_eq!(m.read_only, Some(true));
                let vol = qs.volumes.iter().flatten().find(|v| v.name == m.name).expect("volume exists");
                // Copied into an emptyDir, or mounted from the reaper image.
                prop_assert!(vol.empty_dir.is_some() || vol.image.is_some());
            } else {
                prop_assert_eq!(&n.command, &o.command, "container {}", o.name);
                prop_assert_eq!(&n.args, &o.args, "container {}", o.name);
                prop_assert_eq!(&n.image, &o.image, "container {}", o.name);
            }
        }
        let annotation = |pod: &Pod, key: &str| {
            pod.metadata.annotations.as_ref().and_then(|a| a.get(key)).cloned()
        };
        let digests = annotation(&patched, "reaper.dev/image-digests");
        if recorded.is_empty() {
            prop_assert_eq!(digests, None);
        } else {
            let want: Vec<String> = recorded.iter().map(|(c, d)| format!("{c}={d}")).collect();
            prop_assert_eq!(digests, Some(want.join(",")));
        }
        // The release that set the protection up, and the policy that governs it.
        let given = |key: &str| annotation(&inp.pod, key);
        let protects = !p.audit && matches!(p.outcome, Outcome::Share | Outcome::Inject(_));
        if protects {
            let want = given("reaper.dev/version").unwrap_or_else(|| "9.9.9".into());
            prop_assert_eq!(annotation(&patched, "reaper.dev/version"), Some(want));
            prop_assert_eq!(annotation(&patched, "reaper.dev/policy"), p.policy.clone());
        } else {
            prop_assert_eq!(annotation(&patched, "reaper.dev/version"), given("reaper.dev/version"));
            prop_assert_eq!(annotation(&patched, "reaper.dev/policy"), given("reaper.dev/policy"));
        }
        // Never both ways of getting the reaper in: an image volume of ours and our installer.
        let ours_image = qs.volumes.iter().flatten().filter(|v| v.image.as_ref().and_then(|i| i.reference.as_deref()) == Some("reaper:1")).count();
        let installers = qs.init_containers.iter().flatten().filter(|c| c.image.as_deref() == Some("reaper:1")).count();
        prop_assert!(ours_image + installers <= 1, "{ours_image} image volumes, {installers} installers");
        // Unique names; shareProcessNamespace never together with hostPID.
        prop_assert!(unique(now.iter().map(|c| c.name.clone())));
        prop_assert!(unique(qs.volumes.iter().flatten().map(|v| v.name.clone())));
        if qs.host_pid == Some(true) {
            prop_assert_eq!(qs.share_process_namespace, ps.share_process_namespace);
        }
        // Audit and non-inject outcomes change nothing but the annotation and sharing.
        if p.audit {
            let mut a = doc.clone();
            let mut b = original.clone();
            for v in [&mut a, &mut b] {
                if let Some(m) = v.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
                    m.remove("reaper.dev/injected");
                    if m.is_empty() { v["metadata"].as_object_mut().unwrap().remove("annotations"); }
                }
            }
            prop_assert_eq!(a, b);
        }
        // Every warning is attributed.
        for w in &p.warnings { prop_assert!(w.starts_with("reaper: ")); }
    }
}
