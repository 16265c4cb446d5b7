//! Which pods Reaper governs (`webhook.selection`, `webhook.podOptIn`, the further selectors;
//! src/scope.rs, docs/install.md#choosing-what-reaper-governs), on a real kube-apiserver.
//!
//! For each way to configure it, the chart is rendered; the webhook runs here with the args of
//! the rendered Deployment and is registered with the rendered MutatingWebhookConfiguration, and
//! the rendered MutatingAdmissionPolicies and bindings are applied as a second install. Pods with
//! every combination of the opt-in labels are then created (dry-run) in namespaces with every
//! combination of theirs: the API server must call the webhook for exactly the pods the rule
//! governs (its request counter says so) and both installs must mutate exactly those.
use super::admission_policy::{
    ChartWebhook, TEST_LABEL, create, injected, install_policies, probe_pod, register_webhook,
    remove_policies, render, wait_active_with,
};
use reaper_test_support as support;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use reaper::keys::{INJECT_DISABLED, INJECT_ENABLED, LABEL_INJECT};
use std::collections::BTreeMap;
use support::chart::V;
use support::control_plane::{self, ControlPlane, unique_name};

/// The release namespace of the renderings (src/scope.rs always excludes it).
const RELEASE_NS: &str = "reaper-system";

/// The rule the rendered webhook Deployment's flags describe.
fn rule_of(objs: &support::chart::Objects) -> reaper::scope::Scope {
    let name = objs
        .of_kind("Deployment")
        .into_iter()
        .filter_map(|d| d["metadata"]["name"].as_str())
        .find(|n| n.ends_with("-webhook"))
        .expect("no webhook Deployment rendered")
        .to_string();
    support::chart::scope_rule(&objs.args("Deployment", &name), RELEASE_NS)
}

/// The engines' probe pod (it declares its command) with these labels.
fn pod(labels: &BTreeMap<String, String>) -> Pod {
    let mut p = probe_pod();
    p.metadata.labels = Some(labels.clone());
    p
}

/// One namespace of the grid: its name and labels (the test label included).
struct Ns {
    name: String,
    labels: BTreeMap<String, String>,
}

async fn scope_is_applied_by_the_api_server(cp: &ControlPlane, what: &str, values: &[V<'_>]) {
    let client = cp.client().await;
    let webhook_objs = render("webhook", values);
    let policy_objs = render("policy", values);
    let rule = rule_of(&webhook_objs);
    let w = ChartWebhook::start(cp, &client, &webhook_objs).await;
    let (wh_id, pol_id) = (unique_name("scope-wh"), unique_name("scope-pol"));
    let mwc = register_webhook(&client, &webhook_objs, &w, &wh_id).await;
    let policies = install_policies(&client, &policy_objs, &pol_id).await;

    // Namespaces: the opt-in label (none, enabled, disabled) × env (prod, dev), per install.
    let mut grid: Vec<(String, Ns)> = Vec::new();
    for id in [&wh_id, &pol_id] {
        for inject in [None, Some(INJECT_ENABLED), Some(INJECT_DISABLED)] {
            for env in ["prod", "dev"] {
                let mut labels = vec![(TEST_LABEL, id.as_str()), ("env", env)];
                if let Some(v) = inject {
                    labels.push((LABEL_INJECT, v));
                }
                let name = cp.ns_with_labels(&client, "scope", &labels).await;
                let mut labels: BTreeMap<String, String> = labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                labels.insert("kubernetes.io/metadata.name".into(), name.clone());
                grid.push((id.clone(), Ns { name, labels }));
            }
        }
    }
    // Wait until each install acts: a pod that satisfies the object selector, in a namespace
    // that is opted in and satisfies the namespace selector (every configuration here governs it).
    let [_, probe_labels] = rule.governed_labels().expect("satisfiable selectors");
    for id in [&wh_id, &pol_id] {
        let (_, ns) = grid
            .iter()
            .find(|(i, ns)| {
                i == id
                    && ns.labels.get(LABEL_INJECT).map(String::as_str) == Some(INJECT_ENABLED)
                    && ns.labels["env"] == "prod"
            })
            .unwrap();
        wait_active_with(&client, &ns.name, &pod(&probe_labels)).await;
    }

    let mut governed_total = 0;
    for (id, ns) in &grid {
        let before = w.settled_admissions_in(&ns.name).await;
        let mut governed_here = 0;
        for inject in [None, Some(INJECT_ENABLED), Some(INJECT_DISABLED)] {
            for extra in [None, Some(("legacy", "1")), Some(("tier", "web"))] {
                let mut labels = BTreeMap::new();
                if let Some(v) = inject {
                    labels.insert(LABEL_INJECT.to_string(), v.to_string());
                }
                if let Some((k, v)) = extra {
                    labels.insert(k.to_string(), v.to_string());
                }
                let want = rule
                    .governs(
                        reaper::scope::PodFacts {
                            namespace: &ns.name,
                            labels: Some(&labels),
                            annotations: None,
                        },
                        &ns.labels,
                    )
                    .is_ok();
                let stored = create(&client, &ns.name, &pod(&labels), true)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {}: {e}\n{}", ns.name, w.logs()));
                let engine = if *id == wh_id { "webhook" } else { "policy" };
                assert_eq!(
                    injected(&stored).is_some(),
                    want,
                    "{what}, engine {engine}: namespace {:?}, pod {labels:?}: governed {want}, annotation {:?}",
                    ns.labels,
                    injected(&stored)
                );
                if want {
                    assert_eq!(injected(&stored), Some("inject:app"), "{what}, {engine}");
                    governed_here += 1;
                }
            }
        }
        // The API server called the webhook for the governed pods of its install only.
        let calls = w.settled_admissions_in(&ns.name).await - before;
        let expected = if *id == wh_id { governed_here } else { 0 };
        assert_eq!(
            calls,
            expected,
            "{what}: webhook calls in {:?}\n{}",
            ns.labels,
            w.logs()
        );
        governed_total += governed_here;
    }
    assert!(governed_total > 0, "{what}: nothing governed at all");

    remove_policies(&client, &policies).await;
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(&mwc, &DeleteParams::default())
        .await;
}

/// Every way to configure it: the default (opted-in namespaces, and pods that opt in where the
/// namespace says nothing), without pod opt-in, opt-out, and each with further selectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scope_configuration_is_applied_by_the_api_server() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    for (what, values) in support::chart::scope_configs() {
        scope_is_applied_by_the_api_server(cp, what, &values).await;
    }
}

/// What `helm install` prints says how pods come in, for each selection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notes_say_how_pods_take_part() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.ns(&client, "scope-notes").await;
    let pod_opt_in = "Or opt a single pod in where its namespace is not labelled";
    for (values, want, not) in [
        (
            vec![],
            vec![
                "kubectl label namespace <your-namespace> reaper.dev/inject=enabled",
                pod_opt_in,
            ],
            vec!["webhook.selection=opt-out"],
        ),
        (
            vec!["webhook.podOptIn=false"],
            vec!["kubectl label namespace <your-namespace> reaper.dev/inject=enabled"],
            vec![pod_opt_in],
        ),
        (
            vec!["webhook.selection=opt-out"],
            vec![
                "Every namespace takes part (webhook.selection=opt-out) except",
                "kube-system, kube-public, kube-node-lease",
                "kubectl label namespace <namespace> reaper.dev/inject=disabled",
            ],
            vec![pod_opt_in, "reaper.dev/inject=enabled\n"],
        ),
    ] {
        let sets: Vec<V<'_>> = values
            .iter()
            .map(|v| {
                let (k, val) = v.split_once('=').unwrap();
                V::Set(k, val)
            })
            .collect();
        let out = support::chart::cluster::install(
            cp,
            "install",
            &unique_name("notes"),
            &ns,
            &["--dry-run=server"],
            &sets,
        );
        for w in want {
            assert!(out.contains(w), "{values:?}: NOTES lack {w:?}:\n{out}");
        }
        assert!(
            out.contains(&format!("except {ns}, kube-system"))
                == values.contains(&"webhook.selection=opt-out"),
            "{values:?}: the release namespace is named among the excluded:\n{out}"
        );
        for n in not {
            assert!(!out.contains(n), "{values:?}: NOTES say {n:?}:\n{out}");
        }
    }
}
