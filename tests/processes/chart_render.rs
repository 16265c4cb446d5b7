//! The Helm chart without a cluster: `helm lint` (also `--strict`), `helm template` for the default
//! values and every certificate mode, and what the rendered objects must say (security contexts,
//! the MutatingWebhookConfiguration, least-privilege RBAC, flags the binary accepts), plus the
//! generated files kept in sync: the chart's CRDs and `deploy/reaper.yaml`.
//! Needs `bin/helm` (`make tools`).
use reaper_test_support::chart as chart_common;

use chart_common::{Objects, V, allows, certs_modes, flag, render, strings, template_text};
use clap::Parser;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const NS: &str = "reaper-system";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn default_render() -> Objects {
    render("reaper", NS, &[])
}

#[test]
fn helm_lint_is_clean_also_strict_for_every_certs_mode() {
    for (mode, values) in certs_modes() {
        let mut args = vec![
            "lint".to_string(),
            chart_common::chart_dir().display().to_string(),
        ];
        for v in &values {
            args.extend(v.helm_args());
        }
        for strict in [false, true] {
            let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
            if strict {
                a.push("--strict");
            }
            let out = chart_common::helm_run(&a).unwrap_or_else(|e| panic!("{mode}: {e}"));
            assert!(
                out.contains("1 chart(s) linted, 0 chart(s) failed"),
                "{mode}: {out}"
            );
            assert!(
                !out.contains("[WARNING]") && !out.contains("[ERROR]"),
                "{mode} (strict {strict}): {out}"
            );
        }
    }
}

#[test]
fn renders_for_default_values_and_every_certs_mode() {
    for (mode, values) in certs_modes() {
        let objs = render("reaper", NS, &values);
        for (kind, name) in [
            ("Deployment", "reaper-webhook"),
            ("Deployment", "reaper-operator"),
            ("DaemonSet", "reaper-agent"),
            ("Service", "reaper-webhook"),
            ("PodDisruptionBudget", "reaper-webhook"),
            ("MutatingWebhookConfiguration", "reaper-webhook"),
            ("ServiceAccount", "reaper-webhook"),
            ("ServiceAccount", "reaper-operator"),
            ("ServiceAccount", "reaper-agent"),
            ("ClusterRole", "reaper-webhook"),
            ("ClusterRole", "reaper-operator"),
            ("ClusterRole", "reaper-agent"),
            ("ClusterRoleBinding", "reaper-webhook"),
            ("ClusterRoleBinding", "reaper-operator"),
            ("ClusterRoleBinding", "reaper-agent"),
        ] {
            objs.get(kind, name);
        }
        // Namespaced objects are in the release namespace.
        for o in objs.all() {
            let cluster_scoped = matches!(
                o["kind"].as_str(),
                Some(
                    "ClusterRole"
                        | "ClusterRoleBinding"
                        | "MutatingWebhookConfiguration"
                        | "ValidatingAdmissionPolicy"
                        | "ValidatingAdmissionPolicyBinding"
                        | "CustomResourceDefinition"
                )
            );
            assert_eq!(
                o["metadata"]["namespace"].as_str(),
                (!cluster_scoped).then_some(NS),
                "{mode}: {}/{}",
                o["kind"],
                o["metadata"]["name"]
            );
        }
        let mwc = objs.get("MutatingWebhookConfiguration", "reaper-webhook");
        let secret = &objs.get("Deployment", "reaper-webhook")["spec"]["template"]["spec"]["volumes"]
            [0]["secret"]["secretName"];
        let operator = objs.args("Deployment", "reaper-operator");
        let inject_ca = &mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"];
        let ca_bundle = &mwc["webhooks"][0]["clientConfig"]["caBundle"];
        match mode {
            "self-managed" => {
                assert_eq!(secret, "reaper-webhook-tls");
                assert_eq!(flag(&operator, "cert-secret"), Some("reaper-webhook-tls"));
                assert_eq!(flag(&operator, "webhook-config"), Some("reaper-webhook"));
                assert!(inject_ca.is_null() && ca_bundle.is_null());
                assert!(objs.of_kind("Certificate").is_empty());
            }
            "cert-manager" => {
                assert_eq!(secret, "reaper-webhook-tls");
                let cert = objs.get("Certificate", "reaper-webhook");
                assert_eq!(cert["spec"]["secretName"], "reaper-webhook-tls");
                let dns = strings(&cert["spec"]["dnsNames"]);
                assert!(
                    dns.contains(&"reaper-webhook.reaper-system.svc".to_string()),
                    "{dns:?}"
                );
                // A CA chain: self-signed Issuer -> CA Certificate -> CA Issuer -> serving
                // certificate, so renewing the serving certificate keeps the caBundle valid.
                assert_eq!(cert["spec"]["issuerRef"]["name"], "reaper-ca");
                assert_ne!(cert["spec"]["isCA"], true);
                let ca_issuer = objs.get("Issuer", "reaper-ca");
                assert_eq!(ca_issuer["spec"]["ca"]["secretName"], "reaper-ca");
                let ca = objs.get("Certificate", "reaper-ca");
                assert_eq!(ca["spec"]["isCA"], true);
                assert_eq!(ca["spec"]["secretName"], "reaper-ca");
                assert_eq!(ca["spec"]["issuerRef"]["name"], "reaper-selfsigned");
                assert!(objs.get("Issuer", "reaper-selfsigned")["spec"]["selfSigned"].is_object());
                assert_eq!(objs.of_kind("Certificate").len(), 2);
                assert_eq!(inject_ca, "reaper-system/reaper-webhook");
                assert!(ca_bundle.is_null());
                assert_eq!(
                    flag(&operator, "cert-secret"),
                    None,
                    "cert-manager owns the Secret"
                );
                assert_eq!(flag(&operator, "webhook-config"), None);
            }
            "provided" => {
                assert_eq!(secret, "my-webhook-tls");
                assert_eq!(ca_bundle, "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==");
                assert!(inject_ca.is_null());
                assert!(
                    objs.of_kind("Certificate").is_empty() && objs.of_kind("Issuer").is_empty()
                );
                assert_eq!(flag(&operator, "cert-secret"), None);
            }
            _ => unreachable!(),
        }
    }
    // An issuer of the user's: no chain of our own.
    let objs = render(
        "reaper",
        NS,
        &[
            V::Set("certs.mode", "cert-manager"),
            V::Set("certs.certManager.issuerRef.kind", "ClusterIssuer"),
            V::Set("certs.certManager.issuerRef.name", "corp-ca"),
        ],
    );
    assert!(objs.of_kind("Issuer").is_empty());
    assert_eq!(objs.of_kind("Certificate").len(), 1);
    let issuer = &objs.get("Certificate", "reaper-webhook")["spec"]["issuerRef"];
    assert_eq!(
        (&issuer["kind"], &issuer["name"]),
        (&Value::from("ClusterIssuer"), &Value::from("corp-ca"))
    );
}

/// Pod Security "restricted" for every container (the agent's hostPID and hostPath aside), a
/// numeric non-root UID, read-only root, resources set.
#[test]
fn every_pod_is_locked_down_with_resources_set() {
    for (mode, values) in certs_modes() {
        let objs = render("reaper", NS, &values);
        let pods = objs.pod_specs();
        assert_eq!(pods.len(), 3, "{mode}: {pods:?}");
        for (what, spec) in pods {
            let psc = &spec["securityContext"];
            assert_eq!(psc["runAsNonRoot"], true, "{what}");
            assert_eq!(psc["runAsUser"], 65532, "{what}: numeric UID");
            assert_eq!(psc["runAsGroup"], 65532, "{what}");
            assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
            assert!(
                spec["hostNetwork"].is_null() && spec["hostIPC"].is_null(),
                "{what}"
            );
            assert_eq!(
                spec["hostPID"].as_bool().unwrap_or(false),
                what.starts_with("DaemonSet/"),
                "{what}"
            );
            let containers: Vec<&Value> = ["initContainers", "containers"]
                .iter()
                .flat_map(|k| spec[*k].as_array().into_iter().flatten())
                .collect();
            assert!(!containers.is_empty());
            for c in containers {
                let sc = &c["securityContext"];
                let name = format!("{what} container {}", c["name"]);
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(sc["privileged"], false, "{name}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(sc["runAsNonRoot"], true, "{name}");
                assert_eq!(sc["runAsUser"], 65532, "{name}");
                assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{name}");
                assert!(sc["capabilities"]["add"].is_null(), "{name}");
                assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
                for k in ["requests", "limits"] {
                    for r in ["cpu", "memory"] {
                        assert!(
                            !c["resources"][k][r].is_null(),
                            "{name}: resources.{k}.{r} unset"
                        );
                    }
                }
                assert_eq!(c["imagePullPolicy"], "IfNotPresent", "{name}");
                // Probes on the admin port.
                assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez", "{name}");
                assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
                assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin", "{name}");
                let admin = c["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == "admin")
                    .unwrap_or_else(|| panic!("{name}: no admin port"));
                let args = strings(&c["args"]);
                assert_eq!(
                    flag(&args, "admin-listen"),
                    Some(format!("0.0.0.0:{}", admin["containerPort"]).as_str()),
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn webhook_runs_two_spread_replicas_with_a_budget_and_its_certificate() {
    let objs = default_render();
    let dep = objs.get("Deployment", "reaper-webhook");
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    let selector = &dep["spec"]["selector"]["matchLabels"];
    let tsc = &pod["topologySpreadConstraints"][0];
    assert_eq!(tsc["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(tsc["maxSkew"], 1);
    assert_eq!(&tsc["labelSelector"]["matchLabels"], selector);
    let pdb = objs.get("PodDisruptionBudget", "reaper-webhook");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    // The pod template carries the selector's labels.
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&dep["spec"]["template"]["metadata"]["labels"][k], v);
    }
    assert_eq!(pod["serviceAccountName"], "reaper-webhook");
    let c = &pod["containers"][0];
    let args = strings(&c["args"]);
    assert_eq!(args[0], "webhook");
    let mount = &c["volumeMounts"][0];
    assert_eq!(mount["readOnly"], true);
    let dir = mount["mountPath"].as_str().unwrap();
    assert_eq!(
        flag(&args, "tls-cert"),
        Some(format!("{dir}/tls.crt").as_str())
    );
    assert_eq!(
        flag(&args, "tls-key"),
        Some(format!("{dir}/tls.key").as_str())
    );
    assert_eq!(pod["volumes"][0]["name"], mount["name"]);
    assert_eq!(
        flag(&args, "reaper-image"),
        Some("ghcr.io/reaper-dev/reaper:0.1.0")
    );
    assert_eq!(
        flag(&args, "excluded-namespaces"),
        Some("kube-system,kube-public,kube-node-lease")
    );
    assert_eq!(c["env"][0]["name"], "POD_NAMESPACE");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    // The Service: 443 -> the https container port, selecting the webhook pods.
    let svc = objs.get("Service", "reaper-webhook");
    assert_eq!(&svc["spec"]["selector"], selector);
    let https = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "https")
        .unwrap();
    assert_eq!(https["port"], 443);
    assert_eq!(https["targetPort"], "https");
    let port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "https")
        .unwrap();
    assert_eq!(
        flag(&args, "listen"),
        Some(format!("0.0.0.0:{}", port["containerPort"]).as_str())
    );
}

#[test]
fn mutating_webhook_configuration_is_exactly_as_specified() {
    let objs = default_render();
    let mwc = objs.get("MutatingWebhookConfiguration", "reaper-webhook");
    let hooks = mwc["webhooks"].as_array().unwrap();
    let names: Vec<&str> = hooks.iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pods.reaper.dev", "opted-in-pods.reaper.dev"]);
    let excluded = serde_json::json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                      "values": [NS, "kube-system", "kube-public", "kube-node-lease"]});
    for w in hooks {
        assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(w["failurePolicy"], "Ignore");
        assert_eq!(w["timeoutSeconds"], 5);
        assert_eq!(w["reinvocationPolicy"], "IfNeeded");
        assert_eq!(
            w["clientConfig"]["service"],
            serde_json::json!({"name": "reaper-webhook", "namespace": NS, "path": "/mutate", "port": 443})
        );
        assert_eq!(
            w["rules"],
            serde_json::json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                "resources": ["pods"], "scope": "Namespaced"}])
        );
        assert_eq!(
            w["matchConditions"],
            serde_json::json!([{"name": "not-a-mirror-pod", "expression":
                "!has(object.metadata.annotations) || !('kubernetes.io/config.mirror' in object.metadata.annotations)"}])
        );
    }
    // Opted-in namespaces, without the pods opted out...
    assert_eq!(
        hooks[0]["namespaceSelector"],
        serde_json::json!({"matchLabels": {"reaper.dev/inject": "enabled"}, "matchExpressions": [excluded]})
    );
    assert_eq!(
        hooks[0]["objectSelector"],
        serde_json::json!({"matchExpressions": [{"key": "reaper.dev/inject", "operator": "NotIn",
                                                 "values": ["disabled"]}]})
    );
    // ...and, disjoint from them, pods opted in where the namespace says nothing.
    assert_eq!(
        hooks[1]["namespaceSelector"],
        serde_json::json!({"matchExpressions": [excluded, {"key": "reaper.dev/inject", "operator": "NotIn",
                                                           "values": ["enabled", "disabled"]}]})
    );
    assert_eq!(
        hooks[1]["objectSelector"],
        serde_json::json!({"matchLabels": {"reaper.dev/inject": "enabled"}})
    );
    // The release namespace follows the release.
    let other = render(
        "reaper",
        "platform",
        &[V::Set("webhook.failurePolicy", "Fail")],
    );
    for w in other.get("MutatingWebhookConfiguration", "reaper-webhook")["webhooks"]
        .as_array()
        .unwrap()
    {
        assert_eq!(
            w["namespaceSelector"]["matchExpressions"][0]["values"][0],
            "platform"
        );
        assert_eq!(w["failurePolicy"], "Fail");
    }
}

/// The selectors the chart gives the API server (webhook entries, admission policy bindings)
/// select exactly the pods src/scope.rs governs with the flags the chart gives the webhook and
/// operator, for every combination of namespace and pod labels and for each way to configure the
/// scope. The operator's restart guard (a ValidatingAdmissionPolicy) says the same in CEL; its
/// shape is checked here, its verdicts on a real API server (tests/control_plane/rbac.rs).
#[test]
fn scope_selectors_agree_with_the_scope_rule() {
    use reaper::crd::selector::matches_valid;
    use std::collections::BTreeMap;
    let selector = |v: &Value| -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        serde_json::from_value(v.clone()).unwrap()
    };
    let inject = [None, Some("enabled"), Some("disabled"), Some("other")];
    for (name, values) in chart_common::scope_configs() {
        let objs = render("reaper", NS, &{
            let mut v = values.to_vec();
            v.push(V::Set("admission.engine", "both"));
            v
        });
        // The rule, from the flags the chart passes (the webhook's and the operator's agree).
        let webhook_args = objs.args("Deployment", "reaper-webhook");
        let operator_args = objs.args("Deployment", "reaper-operator");
        assert_eq!(
            chart_common::scope_flags(&webhook_args),
            chart_common::scope_flags(&operator_args),
            "{name}"
        );
        let rule = chart_common::scope_rule(&operator_args, NS);
        let hooks = objs.get("MutatingWebhookConfiguration", "reaper-webhook")["webhooks"]
            .as_array()
            .unwrap()
            .clone();
        let bindings = objs.of_kind("MutatingAdmissionPolicyBinding");
        for ns in ["shop", "kube-public", NS] {
            for ns_inject in inject {
                for env in [None, Some("prod"), Some("dev")] {
                    let mut ns_labels = BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        ns.to_string(),
                    )]);
                    if let Some(v) = ns_inject {
                        ns_labels.insert("reaper.dev/inject".into(), v.into());
                    }
                    if let Some(e) = env {
                        ns_labels.insert("env".into(), e.into());
                    }
                    for pod_inject in inject {
                        for extra in [None, Some(("legacy", "1")), Some(("tier", "web"))] {
                            let mut pod_labels = BTreeMap::new();
                            if let Some(v) = pod_inject {
                                pod_labels.insert("reaper.dev/inject".to_string(), v.to_string());
                            }
                            if let Some((k, v)) = extra {
                                pod_labels.insert(k.to_string(), v.to_string());
                            }
                            let want = rule
                                .governs(
                                    reaper::scope::PodFacts {
                                        namespace: ns,
                                        labels: Some(&pod_labels),
                                        annotations: None,
                                    },
                                    &ns_labels,
                                )
                                .is_ok();
                            let selects = |ns_sel: &Value, obj_sel: &Value| {
                                matches_valid(&selector(ns_sel), &ns_labels)
                                    && matches_valid(&selector(obj_sel), &pod_labels)
                            };
                            let calls = hooks
                                .iter()
                                .filter(|w| selects(&w["namespaceSelector"], &w["objectSelector"]))
                                .count();
                            let case = format!(
                                "{name}: namespace {ns} {ns_labels:?}, pod {pod_labels:?}: governed {want}"
                            );
                            assert_eq!(calls, usize::from(want), "webhook entries; {case}");
                            for policy in objs.of_kind("MutatingAdmissionPolicy") {
                                let c = &policy["spec"]["matchConstraints"];
                                let applied = bindings
                                    .iter()
                                    .filter(|b| {
                                        b["spec"]["policyName"] == policy["metadata"]["name"]
                                    })
                                    .filter(|b| {
                                        let m = &b["spec"]["matchResources"];
                                        selects(&c["namespaceSelector"], &c["objectSelector"])
                                            && selects(
                                                &m["namespaceSelector"],
                                                &m["objectSelector"],
                                            )
                                    })
                                    .count();
                                assert_eq!(
                                    applied,
                                    usize::from(want),
                                    "{}; {case}",
                                    policy["metadata"]["name"]
                                );
                            }
                        }
                    }
                }
            }
        }
        // The restart guard follows the selection and pod opt-in.
        let guard = render("reaper", NS, &{
            let mut v = values.to_vec();
            v.push(V::Set("operator.restart.enabled", "true"));
            v
        });
        let vap = serde_json::to_string(
            &guard.get("ValidatingAdmissionPolicy", "reaper-operator-restart")["spec"]["validations"][0],
        )
        .unwrap();
        assert!(
            vap.contains("kube-node-lease") && vap.contains(NS),
            "{name}: {vap}"
        );
        assert_eq!(
            vap.contains("variables.namespaceInject == 'enabled'"),
            rule.selection == reaper::scope::Selection::OptIn,
            "{name}: {vap}"
        );
        assert_eq!(
            vap.contains("variables.templateInject == 'enabled'"),
            rule.selection == reaper::scope::Selection::OptIn && rule.pod_opt_in,
            "{name}: {vap}"
        );
    }
}

/// `webhook.imageVolumes=detect` (the default) adds list/watch on nodes and `create` on
/// podtemplates in the release namespace only (the dry-run); never pods; `true`/`false` neither.
#[test]
fn image_volume_detection_rbac_is_least_privilege() {
    let probe = "reaper-webhook-image-volume-probe";
    let objs = default_render();
    assert_eq!(
        flag(&objs.args("Deployment", "reaper-webhook"), "image-volumes"),
        Some("detect")
    );
    let webhook = objs.rules("ClusterRole", "reaper-webhook");
    assert!(allows(&webhook, "", "nodes", "list", None));
    assert!(allows(&webhook, "", "nodes", "watch", None));
    assert!(!allows(&webhook, "", "nodes", "get", Some("any")));
    assert!(!allows(&webhook, "", "podtemplates", "create", None));
    let role = objs.get("Role", probe);
    assert_eq!(role["metadata"]["namespace"], NS);
    let rules = objs.rules("Role", probe);
    assert!(
        rules.len() == 1
            && rules[0].groups == [""]
            && rules[0].resources == ["podtemplates"]
            && rules[0].verbs == ["create"],
        "{rules:?}"
    );
    let binding = objs.get("RoleBinding", probe);
    assert_eq!(binding["subjects"][0]["name"], "reaper-webhook");
    assert_eq!(binding["roleRef"]["name"], probe);
    for kind in ["ClusterRole", "Role"] {
        for role in objs.of_kind(kind) {
            let name = role["metadata"]["name"].as_str().unwrap();
            if name.starts_with("reaper-webhook") {
                assert!(
                    !allows(&objs.rules(kind, name), "", "pods", "create", None),
                    "{kind} {name} creates pods"
                );
            }
        }
    }
    for value in ["false", "true"] {
        let objs = render("reaper", NS, &[V::Set("webhook.imageVolumes", value)]);
        assert_eq!(
            flag(&objs.args("Deployment", "reaper-webhook"), "image-volumes"),
            Some(value)
        );
        let webhook = objs.rules("ClusterRole", "reaper-webhook");
        assert!(!allows(&webhook, "", "nodes", "list", None), "{value}");
        assert!(
            !objs
                .of_kind("Role")
                .iter()
                .any(|r| r["metadata"]["name"] == probe),
            "{value}"
        );
    }
}

#[test]
fn rbac_is_least_privilege_and_secrets_only_with_pull_secrets() {
    let check_no_wildcards = |objs: &Objects| {
        for kind in ["ClusterRole", "Role"] {
            for role in objs.of_kind(kind) {
                let name = role["metadata"]["name"].as_str().unwrap();
                // `helm test`'s own role is checked on its own below.
                if role["metadata"]["annotations"]["helm.sh/hook"] == "test" {
                    continue;
                }
                for r in objs.rules(kind, name) {
                    for list in [&r.groups, &r.resources, &r.verbs] {
                        assert!(
                            !list.iter().any(|x| x == "*"),
                            "{kind} {name}: wildcard in {r:?}"
                        );
                    }
                    assert!(
                        !r.verbs
                            .iter()
                            .any(|v| v == "delete" || v == "deletecollection"),
                        "{name}: {r:?}"
                    );
                }
            }
        }
    };
    let objs = default_render();
    check_no_wildcards(&objs);
    let webhook = objs.rules("ClusterRole", "reaper-webhook");
    assert!(allows(
        &webhook,
        "reaper.dev",
        "reaperpolicies",
        "watch",
        None
    ));
    assert!(allows(&webhook, "", "namespaces", "list", None));
    assert!(
        !allows(&webhook, "", "secrets", "get", Some("any")),
        "{webhook:?}"
    );
    assert!(!allows(&webhook, "", "serviceaccounts", "get", Some("any")));
    // It writes nothing but Events (webhook.events, on by default).
    assert!(allows(&webhook, "events.k8s.io", "events", "create", None));
    assert!(allows(&webhook, "events.k8s.io", "events", "patch", None));
    assert!(!allows(&webhook, "", "events", "create", None));
    for r in &webhook {
        assert!(
            r.verbs.iter().all(|v| v == "list" || v == "watch")
                || r.groups == ["events.k8s.io"] && r.resources == ["events"],
            "the webhook writes only Events: {r:?}"
        );
    }
    assert_eq!(
        flag(&objs.args("Deployment", "reaper-webhook"), "events"),
        Some("true")
    );
    let objs = render("reaper", NS, &[V::Set("webhook.events", "false")]);
    let webhook = objs.rules("ClusterRole", "reaper-webhook");
    assert!(
        webhook
            .iter()
            .all(|r| r.verbs.iter().all(|v| v == "list" || v == "watch")),
        "webhook.events=false: read-only: {webhook:?}"
    );
    assert_eq!(
        flag(&objs.args("Deployment", "reaper-webhook"), "events"),
        Some("false")
    );
    let agent = objs.rules("ClusterRole", "reaper-agent");
    assert!(allows(&agent, "", "nodes", "get", None));
    assert!(allows(&agent, "", "pods", "watch", None));
    assert!(allows(&agent, "reaper.dev", "zombiereports", "patch", None));
    assert!(
        !agent
            .iter()
            .any(|r| r.resources.contains(&"secrets".to_string()))
    );
    let op = objs.rules("ClusterRole", "reaper-operator");
    assert!(allows(
        &op,
        "reaper.dev",
        "reaperpolicies/status",
        "patch",
        None
    ));
    assert!(allows(&op, "events.k8s.io", "events", "create", None));
    assert!(allows(
        &op,
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "patch",
        Some("reaper-webhook")
    ));
    assert!(!allows(
        &op,
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "patch",
        Some("other")
    ));
    assert!(
        !allows(&op, "", "secrets", "get", Some("reaper-webhook-tls")),
        "secrets only through the Role"
    );
    let role = objs.rules("Role", "reaper-operator");
    assert!(allows(
        &role,
        "",
        "secrets",
        "get",
        Some("reaper-webhook-tls")
    ));
    assert!(!allows(&role, "", "secrets", "get", Some("someone-elses")));
    assert!(allows(
        &role,
        "coordination.k8s.io",
        "leases",
        "create",
        None
    ));
    let rb = objs.get("RoleBinding", "reaper-operator");
    assert_eq!(rb["metadata"]["namespace"], NS);
    assert_eq!(rb["subjects"][0]["name"], "reaper-operator");

    // pull-secrets: the webhook reads secrets and serviceaccounts (get only).
    let objs = render("reaper", NS, &[V::Set("registry.auth", "pull-secrets")]);
    check_no_wildcards(&objs);
    let webhook = objs.rules("ClusterRole", "reaper-webhook");
    assert!(allows(&webhook, "", "secrets", "get", Some("any")));
    assert!(allows(&webhook, "", "serviceaccounts", "get", Some("any")));
    assert!(!allows(&webhook, "", "secrets", "list", None));
    assert_eq!(
        flag(&objs.args("Deployment", "reaper-webhook"), "registry-auth"),
        Some("pull-secrets")
    );

    // Certificates not managed by the operator: no Secret or webhook-configuration rights.
    for (mode, values) in certs_modes().into_iter().skip(1) {
        let objs = render("reaper", NS, &values);
        let op = objs.rules("ClusterRole", "reaper-operator");
        assert!(
            !op.iter().any(|r| r
                .resources
                .iter()
                .any(|x| x == "mutatingwebhookconfigurations")),
            "{mode}"
        );
        let role = objs.rules("Role", "reaper-operator");
        assert!(
            !role
                .iter()
                .any(|r| r.resources.iter().any(|x| x == "secrets")),
            "{mode}: {role:?}"
        );
    }
    // Without leader election and self-managed certificates the operator needs no Role at all
    // (the webhook's image volume probe has its own, see
    // `image_volume_detection_rbac_is_least_privilege`).
    let objs = render(
        "reaper",
        NS,
        &[
            V::Set("certs.mode", "cert-manager"),
            V::Set("operator.leaderElection", "false"),
        ],
    );
    let not_test = |kind: &str| {
        objs.of_kind(kind)
            .into_iter()
            .filter(|o| o["metadata"]["annotations"]["helm.sh/hook"] != "test")
            .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] != "webhook")
            .count()
    };
    assert!(not_test("Role") == 0 && not_test("RoleBinding") == 0);
    // Warm-up off: no workload reads.
    let objs = render("reaper", NS, &[V::Set("registry.warmup", "false")]);
    // ... and the webhook is told so (it warms up by default in cluster mode).
    assert_eq!(
        flag(&objs.args("Deployment", "reaper-webhook"), "warm-up"),
        Some("false")
    );
    let webhook = objs.rules("ClusterRole", "reaper-webhook");
    assert!(
        !allows(&webhook, "apps", "deployments", "list", None),
        "{webhook:?}"
    );
}

#[test]
fn agent_daemonset_sees_the_host_and_tolerates_everything() {
    let objs = default_render();
    let ds = objs.get("DaemonSet", "reaper-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let c = &pod["containers"][0];
    let env = &c["env"][0];
    assert_eq!(env["name"], "REAPER_NODE_NAME");
    assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let args = strings(&c["args"]);
    assert_eq!(args[0], "agent");
    let mount = &c["volumeMounts"][0];
    assert_eq!(mount["readOnly"], true);
    assert_eq!(flag(&args, "cgroup-root"), mount["mountPath"].as_str());
    assert_eq!(flag(&args, "proc-root"), Some("/proc"));
    let vol = &pod["volumes"][0];
    assert_eq!(vol["name"], mount["name"]);
    assert_eq!(vol["hostPath"]["path"], "/sys/fs/cgroup");
    assert_eq!(
        pod["volumes"].as_array().unwrap().len(),
        1,
        "no other host access"
    );
    let objs = render("reaper", NS, &[V::Set("agent.enabled", "false")]);
    assert!(objs.find("DaemonSet", "reaper-agent").is_none());
    assert!(objs.find("ClusterRole", "reaper-agent").is_none());
}

#[test]
fn image_tags_default_to_the_app_version() {
    let chart: Value = yaml_serde::from_str(
        &std::fs::read_to_string(chart_common::chart_dir().join("Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml appVersion must be the crate version (the images are tagged with it)"
    );
    let objs = default_render();
    let want = format!(
        "ghcr.io/reaper-dev/reaper-controller:{}",
        env!("CARGO_PKG_VERSION")
    );
    for (what, spec) in objs.pod_specs() {
        assert_eq!(
            spec["containers"][0]["image"].as_str(),
            Some(want.as_str()),
            "{what}"
        );
    }
    let digest = format!("sha256:{}", "ab".repeat(32));
    let objs = render(
        "reaper",
        NS,
        &[
            V::Set("image.controller.tag", "e2e"),
            V::Set("image.reaper.digest", &digest),
        ],
    );
    assert_eq!(
        objs.get("Deployment", "reaper-operator")["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/reaper-dev/reaper-controller:e2e"
    );
    assert_eq!(
        flag(&objs.args("Deployment", "reaper-webhook"), "reaper-image"),
        Some(format!("ghcr.io/reaper-dev/reaper@{digest}").as_str())
    );
}

/// `reaper-controller`'s command line, as src/main.rs declares it.
#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    _log: reaper::telemetry::LogArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    Webhook(Box<reaper::webhook::Args>),
    Operator(Box<reaper::operator::Args>),
    Agent(reaper::agent::Args),
    Check(reaper::cli::check::Args),
}

/// The rendered container args are flags the binary knows, with values it accepts.
#[test]
fn rendered_flags_are_accepted_by_reaper_controller() {
    let variants: Vec<Vec<V>> = vec![
        vec![],
        vec![
            V::Set("logFormat", "json"),
            V::Set("webhook.defaultMode", "share"),
            V::Set("agent.interval", "1m30s"),
            V::Set("operator.leaderElection", "false"),
        ],
        vec![V::Set("certs.mode", "cert-manager")],
        vec![
            V::Str(
                "webhook.clientAuth.caBundle",
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            ),
            V::Set("webhook.requestTimeout", "2500ms"),
            V::Set("webhook.pinDigests", "true"),
            V::Set("webhook.events", "false"),
        ],
    ];
    for values in variants {
        let objs = render("reaper", NS, &values);
        for (kind, name) in [
            ("Deployment", "reaper-webhook"),
            ("Deployment", "reaper-operator"),
            ("DaemonSet", "reaper-agent"),
        ] {
            let args = objs.args(kind, name);
            let cli = Cli::try_parse_from(
                std::iter::once("reaper-controller".to_string()).chain(args.clone()),
            )
            .unwrap_or_else(|e| panic!("{kind}/{name} args {args:?} rejected:\n{e}"));
            if let Cmd::Webhook(w) = cli.command {
                let config = w
                    .config(Some(NS))
                    .unwrap_or_else(|e| panic!("webhook flags {args:?}: {e}"));
                // webhook.pinDigests reaches the planner (off by default).
                let pin = values
                    .iter()
                    .any(|v| matches!(v, V::Set("webhook.pinDigests", "true")));
                assert_eq!(config.pin_digests, pin, "{args:?}");
            }
        }
    }
}

#[test]
fn invalid_values_are_rejected_with_the_reason() {
    let cases: Vec<(Vec<V>, &str)> = vec![
        (
            vec![V::Set("webhook.replica", "3")],
            "additional properties 'replica' not allowed",
        ),
        (vec![V::Set("certs.mode", "vault")], "certs/mode"),
        (
            vec![V::Set("webhook.defaultMode", "always")],
            "webhook/defaultMode",
        ),
        (
            vec![V::Set("webhook.failurePolicy", "ignore")],
            "webhook/failurePolicy",
        ),
        (vec![V::Set("registry.auth", "basic")], "registry/auth"),
        (
            vec![V::Set("webhook.resources.limits.cpu", "lots")],
            "webhook/resources/limits/cpu",
        ),
        (vec![V::Set("agent.interval", "15")], "agent/interval"),
        (
            vec![V::Set("webhook.install.runAsUser", "0")],
            "webhook/install/runAsUser",
        ),
        (
            vec![V::Set("certs.mode", "provided")],
            "certs.provided.secretName",
        ),
        (
            vec![V::Set("webhook.networkPolicy.enabled", "true")],
            "webhook.networkPolicy.apiServer",
        ),
        (
            vec![V::Str("webhook.clientAuth.caBundle", "not a PEM")],
            "webhook/clientAuth/caBundle",
        ),
        (
            vec![V::Set("webhook.maxInFlight", "0")],
            "webhook/maxInFlight",
        ),
        (
            vec![
                V::Set("certs.mode", "provided"),
                V::Set("certs.provided.secretName", "s"),
            ],
            "certs.provided.caBundle",
        ),
    ];
    for (values, want) in cases {
        let err = template_text("reaper", NS, &values).expect_err(&format!("{values:?} rendered"));
        assert!(
            err.contains(want),
            "{values:?}: expected {want:?} in:\n{err}"
        );
    }
}

#[test]
fn service_monitor_is_optional_and_scrapes_all_three() {
    assert!(default_render().of_kind("ServiceMonitor").is_empty());
    let objs = render(
        "reaper",
        NS,
        &[
            V::Set("serviceMonitor.enabled", "true"),
            V::Set("serviceMonitor.labels.release", "kps"),
        ],
    );
    // `reaper` scrapes the webhook and the operator, `reaper-agent` the agents (honorLabels:
    // tests/processes/monitoring.rs); each Service is selected by exactly one of them.
    let mut components = Vec::new();
    for sm in objs.of_kind("ServiceMonitor") {
        assert_eq!(sm["metadata"]["labels"]["release"], "kps");
        let selector = &sm["spec"]["selector"];
        let port = sm["spec"]["endpoints"][0]["port"].as_str().unwrap();
        for svc in objs.of_kind("Service") {
            let labels = svc["metadata"]["labels"].as_object().unwrap();
            let matched = selector["matchLabels"]
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
                && selector["matchExpressions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .all(|e| {
                        assert_eq!(e["operator"], "In", "{e}");
                        labels
                            .get(e["key"].as_str().unwrap())
                            .is_some_and(|v| e["values"].as_array().unwrap().contains(v))
                    });
            if matched {
                assert!(
                    svc["spec"]["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == port)
                );
                components.push(
                    svc["spec"]["selector"]["app.kubernetes.io/component"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
        }
    }
    components.sort();
    assert_eq!(components, ["agent", "operator", "webhook"]);
}

/// charts/reaper/files/crds/ holds the generated CRDs (`make crds` writes both places), which
/// templates/crds.yaml renders.
#[test]
fn chart_crds_match_the_rust_types() {
    let dir = chart_common::chart_dir().join("files/crds");
    let want = reaper::crd::render_files().unwrap();
    let mut have: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make crds`)", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    have.sort();
    let mut names: Vec<String> = want.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(
        have,
        names,
        "{} has other files than the CRDs: run `make crds`",
        dir.display()
    );
    for (name, content) in want {
        let got = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(
            got == content,
            "{}/{name} is stale: run `make crds`",
            dir.display()
        );
    }
}

/// The CRDs are templates: by default both render, equal to the Rust types apart from the
/// release's labels and Helm's keep policy; `crds.keep=false` drops the policy and
/// `crds.enabled=false` the CRDs.
#[test]
fn crds_render_as_templates_with_labels_and_keep() {
    let want: Vec<Value> = reaper::crd::all()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    let crds = |values: &[V<'_>]| -> Vec<Value> {
        render("r", "reaper-system", values)
            .of_kind("CustomResourceDefinition")
            .into_iter()
            .cloned()
            .collect()
    };
    let got = crds(&[]);
    assert_eq!(got.len(), want.len());
    for (mut crd, want) in got.into_iter().zip(want) {
        let meta = crd["metadata"].as_object_mut().unwrap();
        let labels = meta.remove("labels").unwrap();
        assert_eq!(labels["app.kubernetes.io/instance"], "r");
        assert_eq!(labels["app.kubernetes.io/part-of"], "reaper");
        let annotations = meta.remove("annotations").unwrap();
        assert_eq!(
            annotations,
            serde_json::json!({"helm.sh/resource-policy": "keep"})
        );
        assert_eq!(crd, want, "a rendered CRD differs from the Rust types");
    }
    for crd in crds(&[V::Set("crds.keep", "false")]) {
        assert!(crd["metadata"].get("annotations").is_none(), "{crd}");
    }
    assert!(crds(&[V::Set("crds.enabled", "false")]).is_empty());
}

/// deploy/reaper.yaml is what `make deploy` (deploy/render.sh) prints now.
#[test]
fn deploy_manifest_is_up_to_date() {
    chart_common::helm(); // a clear message when helm is missing
    let out = Command::new(repo().join("deploy/render.sh"))
        .output()
        .expect("running deploy/render.sh");
    assert!(
        out.status.success(),
        "deploy/render.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = String::from_utf8(out.stdout).unwrap();
    let committed =
        std::fs::read_to_string(repo().join("deploy/reaper.yaml")).expect("deploy/reaper.yaml");
    assert!(
        fresh == committed,
        "deploy/reaper.yaml is stale: run `make deploy` and commit it"
    );
    // It is the default rendering (without `helm test`'s objects and the CRDs, which are
    // crds/) plus the Namespace, labelled for the agent's hostPID.
    let objs = chart_common::parse_stream(&committed);
    let installed = default_render()
        .all()
        .iter()
        .filter(|o| o["metadata"]["annotations"]["helm.sh/hook"] != "test")
        .filter(|o| o["kind"] != "CustomResourceDefinition")
        .count();
    assert_eq!(objs.len(), installed + 1);
    let ns = &objs[0];
    assert_eq!(
        (&ns["kind"], &ns["metadata"]["name"]),
        (&Value::from("Namespace"), &Value::from(NS))
    );
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

/// Leaf paths of values.yaml: maps are walked, except where a map is itself the value
/// (free-form maps such as nodeSelector, and resources).
fn leaf_paths(prefix: &str, v: &yaml_serde::Value, out: &mut Vec<String>) {
    const OPAQUE: &[&str] = &[
        "nodeSelector",
        "affinity",
        "podAnnotations",
        "podLabels",
        "labels",
        "issuerRef",
        "resources",
        "podSecurityContext",
        "securityContext",
    ];
    match v {
        yaml_serde::Value::Mapping(m)
            if !m.is_empty() && !OPAQUE.iter().any(|o| prefix.ends_with(o)) =>
        {
            for (k, v) in m {
                let k = k.as_str().unwrap();
                let p = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_paths(&p, v, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

fn schema_has(schema: &Value, path: &str) -> bool {
    let mut node = schema;
    for part in path.split('.') {
        let mut here = node;
        if let Some(r) = here["$ref"].as_str() {
            here = &schema["definitions"][r.trim_start_matches("#/definitions/")];
        }
        match here["properties"].get(part) {
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}

/// values.schema.json and the generated values reference (docs/reference/values.md, kept fresh
/// by `cargo test --test pure docs::`) cover every value of values.yaml.
#[test]
fn schema_and_values_reference_cover_every_value() {
    let dir = chart_common::chart_dir();
    let values: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap()).unwrap();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("values.schema.json")).unwrap())
            .unwrap();
    let reference = std::fs::read_to_string(repo().join("docs/reference/values.md")).unwrap();
    let mut paths = Vec::new();
    leaf_paths("", &values, &mut paths);
    assert!(paths.len() > 40, "{paths:?}");
    let mut missing_schema = Vec::new();
    let mut missing_reference = Vec::new();
    for p in &paths {
        if !schema_has(&schema, p) {
            missing_schema.push(p.clone());
        }
        if !reference.contains(&format!("| `{p}` |")) {
            missing_reference.push(p.clone());
        }
    }
    assert!(
        missing_schema.is_empty(),
        "values.schema.json lacks {missing_schema:?}"
    );
    assert!(
        missing_reference.is_empty(),
        "docs/reference/values.md lacks {missing_reference:?}: run `make docs`"
    );
    // additionalProperties: false on every object of the schema that has fixed properties.
    fn closed(v: &Value, at: &str) {
        if let Some(obj) = v.as_object() {
            if obj.contains_key("properties") {
                assert_eq!(
                    v["additionalProperties"], false,
                    "schema object at {at} is open"
                );
            }
            for (k, child) in obj {
                closed(child, &format!("{at}/{k}"));
            }
        }
    }
    closed(&schema, "");
}

/// The admission endpoint's bounds reach the webhook's flags; a client CA becomes a ConfigMap
/// mounted for `--client-ca-file` (a change rolls the replicas); the NetworkPolicy admits the
/// HTTPS port only from the API server's peers. None of it is rendered by default.
#[test]
fn webhook_exposure_renders_bounds_client_ca_and_network_policy() {
    let objs = default_render();
    let args = objs.args("Deployment", "reaper-webhook");
    assert_eq!(flag(&args, "max-in-flight"), Some("256"));
    assert_eq!(flag(&args, "max-connections"), Some("1024"));
    assert_eq!(flag(&args, "request-timeout"), Some("10s"));
    assert_eq!(flag(&args, "client-ca-file"), None);
    assert!(objs.of_kind("NetworkPolicy").is_empty());
    assert!(objs.find("ConfigMap", "reaper-webhook-client-ca").is_none());

    let ca = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n";
    let objs = render(
        "reaper",
        NS,
        &[
            V::Str("webhook.clientAuth.caBundle", ca),
            V::Set("webhook.networkPolicy.enabled", "true"),
            V::Set(
                "webhook.networkPolicy.apiServer[0].ipBlock.cidr",
                "172.18.0.2/32",
            ),
            V::Set("webhook.maxInFlight", "32"),
        ],
    );
    let args = objs.args("Deployment", "reaper-webhook");
    assert_eq!(flag(&args, "max-in-flight"), Some("32"));
    let ca_file = flag(&args, "client-ca-file").expect("--client-ca-file");
    let cm = objs.get("ConfigMap", "reaper-webhook-client-ca");
    assert_eq!(cm["data"]["ca.crt"].as_str().unwrap().trim(), ca.trim());
    let pod = &objs.get("Deployment", "reaper-webhook")["spec"]["template"];
    assert!(
        pod["metadata"]["annotations"]["checksum/client-ca"]
            .as_str()
            .is_some_and(|s| s.len() == 64),
        "{pod}"
    );
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == "reaper-webhook-client-ca")
        .expect("client CA volume");
    let mount = pod["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("client CA mount");
    assert_eq!(
        Path::new(mount["mountPath"].as_str().unwrap()).join("ca.crt"),
        Path::new(ca_file)
    );

    let np = objs.get("NetworkPolicy", "reaper-webhook");
    let webhook_labels = &pod["metadata"]["labels"];
    for (k, v) in np["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &webhook_labels[k], v,
            "podSelector selects the webhook pods"
        );
    }
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 2);
    assert_eq!(ingress[0]["ports"][0]["port"], 8443);
    assert_eq!(ingress[0]["from"][0]["ipBlock"]["cidr"], "172.18.0.2/32");
    assert_eq!(ingress[1]["ports"][0]["port"], 8080);
    assert!(
        ingress[1].get("from").is_none(),
        "metrics from anywhere by default"
    );
}

/// Artifact Hub metadata stays true: the images are this release's (tag = appVersion, repository
/// = the values' defaults), the CRDs listed are the chart's, and the examples are valid objects
/// of the Rust types.
#[test]
fn artifact_hub_metadata_matches_the_chart() {
    let dir = chart_common::chart_dir();
    let chart: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(dir.join("Chart.yaml")).unwrap()).unwrap();
    let values: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap()).unwrap();
    let app_version = chart["appVersion"].as_str().unwrap();
    let annotation = |key: &str| -> yaml_serde::Value {
        let text = chart["annotations"][key]
            .as_str()
            .unwrap_or_else(|| panic!("Chart.yaml lacks {key}"));
        yaml_serde::from_str(text).unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    for home in ["home", "icon"] {
        assert!(
            chart[home]
                .as_str()
                .is_some_and(|u| u.starts_with("https://")),
            "Chart.yaml {home}"
        );
    }
    assert!(
        chart["maintainers"]
            .as_sequence()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(
        chart["annotations"]["artifacthub.io/license"].as_str(),
        Some("Apache-2.0")
    );
    let images: Vec<String> = annotation("artifacthub.io/images")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|i| i["image"].as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = ["controller", "reaper"]
        .iter()
        .map(|k| {
            format!(
                "{}:{app_version}",
                values["image"][*k]["repository"].as_str().unwrap()
            )
        })
        .collect();
    want.sort();
    let mut got = images.clone();
    got.sort();
    assert_eq!(got, want);
    let crds: BTreeSet<String> = annotation("artifacthub.io/crds")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(dir.join("files/crds"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".yaml")
                .to_string()
        })
        .collect();
    assert_eq!(crds, files);
    for example in annotation("artifacthub.io/crdsExamples")
        .as_sequence()
        .unwrap()
    {
        let v: Value = serde_json::to_value(example).unwrap();
        let _: reaper::crd::ReaperPolicy = serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("crdsExamples entry is not a ReaperPolicy: {e}\n{v}"));
    }
}

/// The security contexts are values: keys can be overridden, and dropped with null (platforms
/// that assign UIDs per namespace), for every component at once.
#[test]
fn security_contexts_are_overridable() {
    let objs = render(
        "reaper",
        NS,
        &[
            V::Set("podSecurityContext.runAsUser", "null"),
            V::Set("podSecurityContext.runAsGroup", "null"),
            V::Set("securityContext.runAsUser", "null"),
            V::Set("securityContext.runAsGroup", "null"),
            V::Set("podSecurityContext.fsGroup", "2000"),
        ],
    );
    for (kind, name) in [
        ("Deployment", "reaper-webhook"),
        ("Deployment", "reaper-operator"),
        ("DaemonSet", "reaper-agent"),
    ] {
        let pod = &objs.get(kind, name)["spec"]["template"]["spec"];
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsUser"], Value::Null, "{kind}/{name}: {psc}");
        assert_eq!(psc["fsGroup"], 2000);
        assert_eq!(psc["runAsNonRoot"], true, "the rest stays");
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["runAsUser"], Value::Null, "{kind}/{name}: {sc}");
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        }
    }
}

/// `operator.policyReports`: off by default (no flag, no report or Job rights); otherwise the flag
/// the binary accepts and create/patch/get/list/delete on exactly the report kinds it may write
/// (both for `auto`), list/watch on Jobs, and never more.
#[test]
fn policy_reports_are_opt_in_with_rights_on_the_chosen_kinds_only() {
    let reports = [
        ("openreports.io", "reports"),
        ("wgpolicyk8s.io", "policyreports"),
    ];
    let objs = default_render();
    let op = objs.rules("ClusterRole", "reaper-operator");
    assert_eq!(
        flag(
            &objs.args("Deployment", "reaper-operator"),
            "policy-reports"
        ),
        None
    );
    for (group, resource) in reports {
        assert!(
            !op.iter().any(|r| r.groups.iter().any(|g| g == group)),
            "{op:?}"
        );
        assert!(!allows(&op, group, resource, "list", None));
    }
    assert!(!allows(&op, "batch", "jobs", "watch", None));
    for (value, kinds) in [
        ("auto", &reports[..]),
        ("openreports", &reports[..1]),
        ("wgpolicyk8s", &reports[1..]),
    ] {
        let objs = render("reaper", NS, &[V::Set("operator.policyReports", value)]);
        let args = objs.args("Deployment", "reaper-operator");
        assert_eq!(flag(&args, "policy-reports"), Some(value));
        Cli::try_parse_from(std::iter::once("reaper-controller".to_string()).chain(args.clone()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let op = objs.rules("ClusterRole", "reaper-operator");
        for (group, resource) in reports {
            let granted = kinds.contains(&(group, resource));
            for verb in ["create", "patch", "get", "list", "delete"] {
                assert_eq!(
                    allows(&op, group, resource, verb, None),
                    granted,
                    "{value}: {verb} {resource}.{group}"
                );
            }
            assert!(!allows(&op, group, resource, "watch", None));
            assert!(!allows(&op, group, resource, "deletecollection", None));
        }
        assert!(allows(&op, "batch", "jobs", "list", None));
        assert!(allows(&op, "batch", "jobs", "watch", None));
        assert!(!allows(&op, "batch", "jobs", "get", None));
        for r in &op {
            for list in [&r.groups, &r.resources, &r.verbs] {
                assert!(!list.iter().any(|x| x == "*"), "{value}: wildcard in {r:?}");
            }
        }
    }
    // An unquoted YAML `off` arrives as false: off.
    let objs = render("reaper", NS, &[V::Set("operator.policyReports", "false")]);
    assert_eq!(
        flag(
            &objs.args("Deployment", "reaper-operator"),
            "policy-reports"
        ),
        None
    );
    let err = template_text("reaper", NS, &[V::Set("operator.policyReports", "kyverno")])
        .expect_err("an unknown report kind rendered");
    assert!(err.contains("operator/policyReports"), "{err}");
}

/// `helm test` runs `reaper-controller check --install-only` with RBAC that exists only while it
/// runs (hook-delete-policy hook-succeeded), reads only what `check` reads, and writes only its throw-away
/// namespace and a dry-run pod; `deploy/reaper.yaml` carries none of it.
#[test]
fn helm_test_runs_check_with_rbac_that_lives_only_for_the_test() {
    let objs = default_render();
    let hooked: Vec<&Value> = objs
        .all()
        .iter()
        .filter(|o| o["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .collect();
    let kinds: BTreeSet<&str> = hooked.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Pod"
        ])
    );
    for o in &hooked {
        let policy = o["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
            .as_str()
            .unwrap_or_default();
        // RBAC goes when the test succeeds; the finished pod stays for `helm test --logs`.
        let want = if o["kind"] == "Pod" {
            "before-hook-creation"
        } else {
            "before-hook-creation,hook-succeeded"
        };
        assert_eq!(policy, want, "{o}");
    }
    let pod = hooked.iter().find(|o| o["kind"] == "Pod").unwrap();
    let args = strings(&pod["spec"]["containers"][0]["args"]);
    assert_eq!(
        args[..2],
        ["check".to_string(), "--install-only".to_string()]
    );
    assert_eq!(flag(&args, "webhook-config"), Some("reaper-webhook"));
    assert_eq!(flag(&args, "cert-secret"), Some("reaper-webhook-tls"));
    let cli =
        Cli::try_parse_from(std::iter::once("reaper-controller".to_string()).chain(args.clone()));
    assert!(cli.is_ok(), "{args:?} rejected");
    let rules = objs.rules("ClusterRole", "reaper-test");
    for (group, resource, verb) in [
        ("", "namespaces", "create"),
        ("", "pods", "create"),
        ("", "nodes", "list"),
    ] {
        assert!(
            allows(&rules, group, resource, verb, None),
            "{resource} {verb}"
        );
    }
    for (group, resource, verb) in [
        ("", "secrets", "get"),
        ("", "pods", "delete"),
        ("apps", "deployments", "get"),
    ] {
        assert!(
            !allows(&rules, group, resource, verb, None),
            "cluster-wide {resource} {verb}"
        );
    }
    let role = objs.rules("Role", "reaper-test");
    assert!(allows(
        &role,
        "",
        "secrets",
        "get",
        Some("reaper-webhook-tls")
    ));
    assert!(!allows(&role, "", "secrets", "get", Some("other")));
    let deploy = std::fs::read_to_string(repo().join("deploy/reaper.yaml")).unwrap();
    assert!(
        !deploy.contains("helm.sh/hook"),
        "deploy/reaper.yaml carries test hooks"
    );
}

/// `admission.engine` (#17): `webhook` (default) renders no MutatingAdmissionPolicy; `policy`
/// renders the share and wrap policies, each bound, and nothing of the webhook (no registration,
/// Deployment, Service, certificates, nor the operator's certificate flags and rights); `both`
/// renders the policies next to the complete webhook install. The policies select what the
/// webhook registration selects, plus every excluded namespace. Another value is refused.
#[test]
fn admission_engine_renders_policies_instead_of_or_before_the_webhook() {
    let kinds = |objs: &Objects, kind: &str| objs.of_kind(kind).len();
    let webhook_parts = |objs: &Objects| {
        objs.all()
            .iter()
            .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] == "webhook")
            .count()
    };
    let default = default_render();
    assert_eq!(kinds(&default, "MutatingAdmissionPolicy"), 0);
    assert_eq!(kinds(&default, "MutatingAdmissionPolicyBinding"), 0);
    let with_webhook = webhook_parts(&default);
    assert!(with_webhook >= 5, "{with_webhook} webhook objects");

    for mode in certs_modes() {
        let mut values = mode.1.clone();
        values.push(V::Set("admission.engine", "policy"));
        let objs = render("reaper", NS, &values);
        assert_eq!(kinds(&objs, "MutatingAdmissionPolicy"), 2, "{}", mode.0);
        // One binding per policy and webhook entry (scope_selectors_agree_with_the_scope_rule).
        assert_eq!(kinds(&objs, "MutatingAdmissionPolicyBinding"), 4);
        assert_eq!(kinds(&objs, "MutatingWebhookConfiguration"), 0);
        assert_eq!(
            webhook_parts(&objs),
            0,
            "{}: webhook objects rendered",
            mode.0
        );
        assert!(
            objs.of_kind("Certificate").is_empty() && objs.of_kind("Issuer").is_empty(),
            "{}",
            mode.0
        );
        let operator = objs.args("Deployment", "reaper-operator");
        assert_eq!(flag(&operator, "cert-secret"), None, "{}", mode.0);
        assert_eq!(flag(&operator, "webhook-config"), None, "{}", mode.0);
        let rules = objs.rules("ClusterRole", "reaper-operator");
        assert!(!allows(
            &rules,
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "patch",
            Some("reaper-webhook")
        ));
        for b in objs.of_kind("MutatingAdmissionPolicyBinding") {
            assert!(
                objs.find(
                    "MutatingAdmissionPolicy",
                    b["spec"]["policyName"].as_str().unwrap()
                )
                .is_some(),
                "{b}"
            );
        }
    }

    let both = render("reaper", NS, &[V::Set("admission.engine", "both")]);
    assert_eq!(kinds(&both, "MutatingAdmissionPolicy"), 2);
    assert_eq!(kinds(&both, "MutatingWebhookConfiguration"), 1);
    assert_eq!(webhook_parts(&both), with_webhook);
    let mwc = &both.of_kind("MutatingWebhookConfiguration")[0]["webhooks"][0];
    // The webhook is called only for what the policies leave; engine webhook calls it for all.
    let conditions = |mwc: &Value| -> Vec<String> {
        mwc["matchConditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    for hook in both.of_kind("MutatingWebhookConfiguration")[0]["webhooks"]
        .as_array()
        .unwrap()
    {
        assert_eq!(
            conditions(hook),
            ["not-a-mirror-pod", "left-by-the-admission-policies"]
        );
    }
    assert_eq!(
        conditions(&default.of_kind("MutatingWebhookConfiguration")[0]["webhooks"][0]),
        ["not-a-mirror-pod"]
    );
    for p in both.of_kind("MutatingAdmissionPolicy") {
        let spec = &p["spec"];
        let c = &spec["matchConstraints"];
        assert_eq!(c["objectSelector"], mwc["objectSelector"]);
        let excluded = strings(&c["namespaceSelector"]["matchExpressions"][0]["values"]);
        for ns in [NS, "kube-system", "kube-public", "kube-node-lease"] {
            assert!(
                excluded.iter().any(|e| e == ns),
                "{ns} not excluded: {excluded:?}"
            );
        }
        assert_eq!(spec["failurePolicy"], "Ignore");
        assert_eq!(spec["reinvocationPolicy"], "Never");
        assert_eq!(spec["mutations"][0]["patchType"], "JSONPatch");
        // The chart's values reach the CEL.
        let text = serde_json::to_string(p).unwrap();
        assert!(text.contains("/.reaper/reaper"), "{text}");
    }
    let wrap = both.get("MutatingAdmissionPolicy", "reaper-wrap");
    let text = serde_json::to_string(wrap).unwrap();
    for want in [
        "ghcr.io/reaper-dev/reaper:0.1.0",
        "reaper-install",
        "8Mi",
        "65532",
        "16Mi",
    ] {
        assert!(text.contains(want), "wrap policy lacks {want}");
    }
    let custom = render(
        "reaper",
        NS,
        &[
            V::Set("admission.engine", "policy"),
            V::Set("webhook.mountPath", "/opt/r"),
            V::Set("webhook.defaultMode", "share"),
            V::Set("webhook.install.runAsUser", "null"),
        ],
    );
    let text = serde_json::to_string(custom.get("MutatingAdmissionPolicy", "reaper-wrap")).unwrap();
    assert!(
        text.contains("/opt/r/reaper") && !text.contains("/.reaper"),
        "{text}"
    );
    assert!(
        text.contains(r#": \"share\""#),
        "default mode not in the CEL"
    );
    assert!(!text.contains("runAsUser"), "runAsUser null still set");

    let err = template_text("reaper", NS, &[V::Set("admission.engine", "cel")])
        .expect_err("engine cel rendered");
    assert!(err.contains("admission/engine"), "{err}");
}
