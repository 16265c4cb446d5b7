//! Arbitrary bytes as a Pod: when they decode, the plan's patch must apply to the same JSON,
//! give a Pod again, and planning that Pod must change nothing (idempotence).
#![no_main]
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use reaper::crd::PolicySet;
use reaper::image::{ImageConfig, ImageIndex};
use reaper::webhook::decide::{Config, Scope, plan};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::OnceLock;

struct Setup {
    config: Config,
    policies: PolicySet,
    images: ImageIndex,
    labels: BTreeMap<String, String>,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let policies = reaper::webhook::sources::parse_policies(include_str!("policies.yaml"))
            .expect("valid fuzz policies");
        let mut images = ImageIndex::new();
        images.insert(
            "nginx:1.27",
            Ok(ImageConfig::new(
                vec!["/docker-entrypoint.sh".into()],
                vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            )),
        );
        images.insert("private.example.com/app:1", Err("401".into()));
        Setup {
            config: Config::new("registry.example.com/reaper:0.1.0"),
            policies: PolicySet::new(policies.into_iter().map(std::sync::Arc::new)),
            images,
            labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "apps".to_string(),
            )]),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut doc) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(pod) = serde_json::from_value::<Pod>(doc.clone()) else {
        return;
    };
    let s = setup();
    let scope = Scope {
        namespace: "apps",
        namespace_labels: &s.labels,
    };
    let first = plan(&pod, scope, &s.policies, &s.images, &s.config);
    let patch = first.patch();
    json_patch::patch(&mut doc, &patch).expect("the patch applies to the pod it was planned for");
    let patched: Pod = serde_json::from_value(doc).expect("the patched pod is a Pod");
    let second = plan(&patched, scope, &s.policies, &s.images, &s.config);
    assert!(
        second.patch().0.is_empty(),
        "not idempotent: {:?} then {:?}",
        patch,
        second.patch()
    );
    assert_eq!(first.annotation(), second.annotation());
});
