//! Table tests of the planner over real-world pod shapes in `tests/fixtures/pods/*.json`.
//!
//! Each fixture holds the pod, the namespace, optional policies, resolved images and config, and
//! hand-written expectations (`expect`). The full outcome (patch ops, patched pod, warnings) is
//! also compared with a reviewed insta snapshot in `tests/fixtures/pods/expected/`; after a
//! deliberate change, `INSTA_UPDATE=always cargo test --test pure webhook_plan::` rewrites them
//! (or `cargo insta review`), and the diff is reviewed like code. CI never writes snapshots.
use json_patch::Patch;
use k8s_openapi::api::core::v1::{Container, Pod};
use reaper::crd::{Mode, PolicySet, ReaperPolicy};
use reaper::image::{ImageConfig, ImageIndex};
use reaper::webhook::decide::{Config, Plan, Scope, plan};
use reaper::webhook::install::{Qos, qos_class};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const REAPER_IMAGE: &str = "registry.example.com/reaper/reaper:0.1.0";
/// `reaper.dev/version` in the snapshots: fixed, so they do not change with every release
/// (that the webhook writes its own version is a unit test of `webhook::Args::config`).
const RELEASE: &str = "0.0.0-fixture";

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pods")
}

struct Case {
    name: String,
    namespace: String,
    config: Config,
    policies: PolicySet,
    images: ImageIndex,
    pod_json: Value,
    pod: Pod,
    expect: Value,
}

fn load(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap();
    let f: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut config = Config::new(REAPER_IMAGE);
    if let Some(m) = f["config"]["defaultMode"].as_str() {
        config.default_mode = m.parse::<Mode>().unwrap();
    }
    config.pin_digests = f["config"]["pinDigests"] == true;
    config.image_volumes =
        reaper::webhook::capability::Support::fixed(f["config"]["imageVolumes"] == true);
    config.release = RELEASE.to_string();
    let policies: Vec<ReaperPolicy> = f
        .get("policies")
        .map(|p| serde_json::from_value(p.clone()).unwrap())
        .unwrap_or_default();
    let mut images = ImageIndex::new();
    for (image, c) in f["images"].as_object().into_iter().flatten() {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        let entry = match c.get("error") {
            Some(e) => Err(e.as_str().unwrap().to_string()),
            None => Ok(ImageConfig::new(
                strings(&c["entrypoint"]),
                strings(&c["cmd"]),
            )),
        };
        images.insert(image.clone(), entry);
        if let Some(d) = c.get("digest") {
            images.set_digest(image.clone(), d.as_str().unwrap());
        }
    }
    let pod_json = f["pod"].clone();
    Case {
        name: path.file_stem().unwrap().to_string_lossy().into_owned(),
        namespace: f["namespace"].as_str().unwrap_or("apps").to_string(),
        config,
        policies: PolicySet::new(policies.into_iter().map(Arc::new)),
        images,
        pod: serde_json::from_value(pod_json.clone()).unwrap(),
        pod_json,
        expect: f["expect"].clone(),
    }
}

fn plan_case(c: &Case, pod: &Pod) -> Plan {
    let labels = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_string(),
        c.namespace.clone(),
    )]);
    let scope = Scope {
        namespace: &c.namespace,
        namespace_labels: &labels,
    };
    plan(pod, scope, &c.policies, &c.images, &c.config)
}

fn apply(doc: &Value, patch: &Patch) -> Value {
    let mut out = doc.clone();
    json_patch::patch(&mut out, patch).unwrap_or_else(|e| panic!("patch does not apply: {e}"));
    out
}

fn all_containers(pod: &Value) -> Vec<&Value> {
    let spec = &pod["spec"];
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().into_iter().flatten())
        .collect()
}

fn find<'a>(pod: &'a Value, name: &str) -> &'a Value {
    all_containers(pod)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// PSS "restricted" for a container (pod-level settings are not relied upon), with the install
/// container's resources for a pod of QoS class `qos` (which they must not change).
fn assert_restricted(c: &Value, qos: Qos) {
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert!(sc["runAsUser"].as_i64().unwrap() > 0);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(sc["capabilities"].get("add").is_none());
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    let limits = json!({"cpu": "100m", "memory": "64Mi"});
    let (requests, limits) = match qos {
        Qos::BestEffort => (Value::Null, Value::Null),
        Qos::Burstable => (json!({"cpu": "10m", "memory": "16Mi"}), limits),
        Qos::Guaranteed => (limits.clone(), limits),
    };
    assert_eq!(c["resources"]["requests"], requests, "{qos:?}");
    assert_eq!(c["resources"]["limits"], limits, "{qos:?}");
}

fn check(c: &Case) {
    let e = &c.expect;
    let p = plan_case(c, &c.pod);
    let patch = p.patch();
    let patched = apply(&c.pod_json, &patch);
    let ctx = &c.name;

    assert_eq!(
        p.result_label(),
        e["result"].as_str().unwrap(),
        "{ctx}: result"
    );
    let want_annotation = e["annotation"].as_str();
    assert_eq!(
        p.annotation().as_deref(),
        want_annotation,
        "{ctx}: annotation"
    );
    assert_eq!(
        patched["metadata"]["annotations"]["reaper.dev/injected"].as_str(),
        want_annotation,
        "{ctx}: annotation in the patched pod"
    );
    assert_eq!(
        patched["metadata"]["annotations"]["reaper.dev/image-digests"].as_str(),
        e["imageDigests"].as_str(),
        "{ctx}: image digests annotation"
    );
    // Pods the webhook protects name the release and the governing policy; others get neither.
    let protects = !p.audit && ["inject", "share"].contains(&p.result_label());
    let given = |key: &str| c.pod_json["metadata"]["annotations"][key].as_str();
    assert_eq!(
        patched["metadata"]["annotations"]["reaper.dev/version"].as_str(),
        if protects {
            given("reaper.dev/version").or(Some(RELEASE))
        } else {
            given("reaper.dev/version")
        },
        "{ctx}: version annotation"
    );
    assert_eq!(
        patched["metadata"]["annotations"]["reaper.dev/policy"].as_str(),
        if protects {
            p.policy.as_deref()
        } else {
            given("reaper.dev/policy")
        },
        "{ctx}: policy annotation"
    );
    for (name, image) in e["images"].as_object().into_iter().flatten() {
        assert_eq!(
            &find(&patched, name)["image"],
            image,
            "{ctx}: image of {name}"
        );
    }
    if e["noPatch"] == true {
        assert!(
            patch.0.is_empty(),
            "{ctx}: expected no patch, got {patch:?}"
        );
        assert!(p.warnings.is_empty(), "{ctx}: {:?}", p.warnings);
    }
    for w in e["warnings"].as_array().into_iter().flatten() {
        let w = w.as_str().unwrap();
        assert!(
            p.warnings.iter().any(|x| x.contains(w)),
            "{ctx}: no warning contains {w:?}: {:#?}",
            p.warnings
        );
    }
    for w in &p.warnings {
        assert!(w.starts_with("reaper: "), "{ctx}: {w}");
    }
    if let Some(share) = e.get("shareProcessNamespace") {
        assert_eq!(
            patched["spec"]
                .get("shareProcessNamespace")
                .unwrap_or(&Value::Null),
            share,
            "{ctx}: shareProcessNamespace"
        );
    }
    let reaper = c.config.reaper_path();
    for (name, argv) in e["argv"].as_object().into_iter().flatten() {
        let pc = find(&patched, name);
        let container: Container = serde_json::from_value(pc.clone()).unwrap();
        let eff = reaper::webhook::argv::effective_argv(
            &container,
            reaper::webhook::argv::ImageArgv::Unknown,
        )
        .unwrap();
        assert_eq!(&json!(eff), argv, "{ctx}: effective argv of {name}");
        assert_eq!(eff[0], reaper, "{ctx}");
        let mount = pc["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/.reaper")
            .unwrap_or_else(|| panic!("{ctx}: {name} has no mount at /.reaper"));
        assert_eq!(mount["readOnly"], true, "{ctx}");
    }
    for name in e["unchanged"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap();
        assert_eq!(
            find(&patched, name),
            find(&c.pod_json, name),
            "{ctx}: {name} changed"
        );
    }
    for name in e["args_unchanged"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap();
        assert_eq!(
            find(&patched, name)["args"],
            find(&c.pod_json, name)["args"],
            "{ctx}: args of {name}"
        );
    }
    let injected = p.result_label() == "inject";
    if injected && e["delivery"] == "imageVolume" {
        // The reaper image mounted as a volume: no installer, no emptyDir.
        let volume_name = e["volumeName"].as_str().unwrap_or("reaper-bin");
        let volume = patched["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume_name)
            .unwrap_or_else(|| panic!("{ctx}: no volume {volume_name}"));
        assert_eq!(
            volume["image"],
            json!({"reference": REAPER_IMAGE, "pullPolicy": "IfNotPresent"}),
            "{ctx}"
        );
        let installers = patched["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["image"] == REAPER_IMAGE)
            .count();
        assert_eq!(installers, 0, "{ctx}: no installer with an image volume");
        assert_eq!(
            qos_class(&serde_json::from_value(patched.clone()).unwrap()),
            qos_class(&c.pod),
            "{ctx}: QoS class changed"
        );
    } else if injected {
        let init = patched["spec"]["initContainers"].as_array().unwrap();
        let install = &init[0];
        let install_name = e["installName"].as_str().unwrap_or("reaper-install");
        assert_eq!(
            install["name"], install_name,
            "{ctx}: install container first"
        );
        assert_eq!(install["image"], REAPER_IMAGE);
        assert_eq!(
            install["command"],
            json!(["/reaper", "--install", "/.reaper/reaper"])
        );
        let qos = qos_class(&c.pod);
        assert_restricted(install, qos);
        assert_eq!(
            qos_class(&serde_json::from_value(patched.clone()).unwrap()),
            qos,
            "{ctx}: QoS class changed"
        );
        let volume_name = e["volumeName"].as_str().unwrap_or("reaper-bin");
        let volume = patched["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume_name)
            .unwrap_or_else(|| panic!("{ctx}: no volume {volume_name}"));
        assert_eq!(volume["emptyDir"], json!({"sizeLimit": "8Mi"}), "{ctx}");
        assert_eq!(install["volumeMounts"][0]["name"], volume_name);
    } else {
        // Nothing but the annotations (and shareProcessNamespace) may change.
        let mut a = patched.clone();
        let mut b = c.pod_json.clone();
        for v in [&mut a, &mut b] {
            if let Some(m) = v
                .pointer_mut("/metadata/annotations")
                .and_then(Value::as_object_mut)
            {
                for key in [
                    "reaper.dev/injected",
                    "reaper.dev/version",
                    "reaper.dev/policy",
                ] {
                    m.remove(key);
                }
                if m.is_empty() {
                    v["metadata"].as_object_mut().unwrap().remove("annotations");
                }
            }
            v["spec"]
                .as_object_mut()
                .unwrap()
                .remove("shareProcessNamespace");
        }
        assert_eq!(
            a, b,
            "{ctx}: only the annotations and shareProcessNamespace may change"
        );
    }
    if let Some(order) = e.get("initOrder") {
        let names: Vec<&Value> = patched["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["name"])
            .collect();
        assert_eq!(json!(names), *order, "{ctx}: init container order");
    }

    // Idempotent: planning the patched pod again changes nothing and says the same.
    let again: Pod = serde_json::from_value(patched.clone()).unwrap();
    let p2 = plan_case(c, &again);
    assert!(
        p2.patch().0.is_empty(),
        "{ctx}: second pass patched {:?}",
        p2.patch()
    );
    assert_eq!(
        p2.annotation(),
        p.annotation(),
        "{ctx}: second pass annotation"
    );

    golden(c, &p, &patch, &patched);
}

fn golden(c: &Case, p: &Plan, patch: &Patch, patched: &Value) {
    let got = json!({
        "result": p.result_label(),
        "annotation": p.annotation(),
        "policy": p.policy,
        "warnings": p.warnings,
        "patch": patch,
        "patched": patched,
    });
    insta::with_settings!({
        snapshot_path => fixtures_dir().join("expected"),
        prepend_module_to_snapshot => false,
        omit_expression => true,
        description => format!("tests/fixtures/pods/{}.json", c.name),
    }, {
        insta::assert_json_snapshot!(c.name.clone(), got);
    });
}

#[test]
fn fixtures() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 25, "fixtures went missing: {}", paths.len());
    for path in &paths {
        let case = load(path);
        check(&case);
    }
}

/// The reinvocation scenario: another webhook added a container after our first pass. The second
/// pass wraps just the new one and updates the annotation.
#[test]
fn reinvocation_wraps_a_container_added_later() {
    let case = load(&fixtures_dir().join("command-only.json"));
    let first = apply(&case.pod_json, &plan_case(&case, &case.pod).patch());
    let mut later = first.clone();
    later["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "late", "image": "ghcr.io/acme/late:1", "command": ["/late"]}));
    let pod: Pod = serde_json::from_value(later.clone()).unwrap();
    let p = plan_case(&case, &pod);
    assert_eq!(p.annotation().as_deref(), Some("inject:api,late"));
    let patched = apply(&later, &p.patch());
    // No second install container or volume.
    assert_eq!(
        patched["spec"]["initContainers"].as_array().unwrap().len(),
        1
    );
    assert_eq!(
        find(&patched, "late")["command"],
        json!(["/.reaper/reaper", "--", "/late"])
    );
    assert_eq!(find(&patched, "api"), find(&first, "api"));
}

/// Another webhook inserted a native sidecar before our install container: the install
/// container moves back to the front so the sidecar finds the binary.
#[test]
fn install_container_moves_before_a_wrapped_sidecar_inserted_ahead_of_it() {
    let case = load(&fixtures_dir().join("command-only.json"));
    let first = apply(&case.pod_json, &plan_case(&case, &case.pod).patch());
    let mut later = first.clone();
    later["spec"]["initContainers"].as_array_mut().unwrap().insert(
        0,
        json!({"name": "proxy", "image": "envoy:1", "command": ["envoy"], "restartPolicy": "Always"}),
    );
    let pod: Pod = serde_json::from_value(later.clone()).unwrap();
    let p = plan_case(&case, &pod);
    let patched = apply(&later, &p.patch());
    let names: Vec<&Value> = patched["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["name"])
        .collect();
    assert_eq!(json!(names), json!(["reaper-install", "proxy"]));
    assert_eq!(
        find(&patched, "proxy")["command"],
        json!(["/.reaper/reaper", "--", "envoy"])
    );
    let again: Pod = serde_json::from_value(patched).unwrap();
    assert!(plan_case(&case, &again).patch().0.is_empty());
}

/// The `reason` label (and Event) of each fixture: why it was skipped, or how its protection
/// fell back; `none` for everything else.
#[test]
fn reasons_of_skips_and_fallbacks() {
    let mut want = BTreeMap::from([
        ("already-tini", "already-init"),
        ("args-only-unknown-image", "auto-share"),
        ("auto-fallback-none", "not-wrappable"),
        ("failed-lookup", "auto-share"),
        ("hostpid-auto-partial", "partial-inject"),
        ("hostpid-share-requested", "hostpid-inject"),
        // inject: the container mounting something at /.reaper is left as is.
        ("name-and-path-collisions", "partial-inject"),
        ("neither-unknown-image", "auto-share"),
        ("neither-unknown-image-inject-mode", "not-wrappable"),
        ("windows", "windows"),
    ]);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for path in &paths {
        let case = load(path);
        let got = plan_case(&case, &case.pod).reason_label();
        let expected = want.remove(case.name.as_str()).unwrap_or("none");
        assert_eq!(got, expected, "{}", case.name);
    }
    assert!(want.is_empty(), "fixtures went missing: {want:?}");
}
