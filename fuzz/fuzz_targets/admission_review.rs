//! Arbitrary bytes as a `POST /mutate` body: decode + plan + encode must never panic, and every
//! answer must be a well-formed AdmissionReview whose patch applies to the request's object.
#![no_main]
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use reaper::crd::PolicySet;
use reaper::webhook::decide::Config;
use reaper::webhook::server::answer_sync;
use reaper::webhook::sources::Sources;
use serde_json::Value;
use std::sync::OnceLock;

fn setup() -> &'static (Config, Sources) {
    static S: OnceLock<(Config, Sources)> = OnceLock::new();
    S.get_or_init(|| {
        let policies = reaper::webhook::sources::parse_policies(include_str!("policies.yaml"))
            .expect("valid fuzz policies");
        (
            Config::new("registry.example.com/reaper:0.1.0"),
            Sources::fixed(PolicySet::new(policies.into_iter().map(std::sync::Arc::new))),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (config, sources) = setup();
    let Ok(answer) = answer_sync(data, config, sources) else {
        return;
    };
    let review: Value = serde_json::from_slice(&answer.body).expect("the answer is JSON");
    assert_eq!(review["kind"], "AdmissionReview");
    let response = &review["response"];
    assert!(response["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert_eq!(response["allowed"], true, "the webhook never denies");
    if let Some(patch) = response["patch"].as_str() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("base64 patch");
        let patch: json_patch::Patch = serde_json::from_slice(&raw).expect("a JSONPatch");
        // serde_json's Value refuses some inputs the typed decoder skips (e.g. 1e400 in an
        // unknown field); those cannot be checked this way.
        let Ok(input) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let mut object = input["request"]["object"].clone();
        json_patch::patch(&mut object, &patch).expect("the patch applies to the request object");
    }
});
