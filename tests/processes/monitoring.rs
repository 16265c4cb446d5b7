//! The monitoring the chart ships: the alert rules (charts/reaper/files/alerts.yaml) checked and
//! unit-tested by the real `promtool` (tests/promtool/alerts_test.yaml), the PrometheusRule and
//! the Grafana dashboard ConfigMap the chart renders from those files, the runbook of every alert,
//! and every metric name the rules and the dashboard query is one the components export.
//!
//! The exported names come from the components' own metric registries, built in-process with
//! their constructors, made to record a series of every family and encoded as `/metrics` encodes
//! them; the `register(` calls in src/ are read too, so a family added later is known even before
//! this test records a series of it.
//! Needs `bin/promtool` and `bin/helm` (`make tools`).
use reaper_test_support::chart as chart_common;

use chart_common::{Objects, V, render};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const NS: &str = "reaper-system";
const RUNBOOKS: &str = "https://github.com/reaper-dev/reaper/blob/main/docs/runbooks.md#";

/// Metrics the rules and the dashboard read from other exporters, and why.
const EXTERNAL: &[(&str, &str)] = &[
    (
        "kube_node_info",
        "kube-state-metrics: the nodes an agent should report from",
    ),
    (
        "kube_pod_owner",
        "kube-state-metrics: the workload of a pod",
    ),
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(text: &str) -> Value {
    yaml_serde::from_str(text).unwrap_or_else(|e| panic!("YAML does not parse: {e}\n{text}"))
}

fn promtool() -> PathBuf {
    let path = reaper_test_support::control_plane::bin_dir().join("promtool");
    assert!(
        path.is_file(),
        "{} is missing: run make tools (builds promtool from Go modules)",
        path.display()
    );
    path
}

/// Runs promtool; panics with its output unless it succeeds.
fn promtool_ok(args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("running promtool: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// The alerting rules of a rule-group document: (group, rule).
fn alert_rules(groups: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for g in groups["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            assert!(r["alert"].is_string(), "a rule that is not an alert: {r}");
            out.push((g["name"].as_str().unwrap().to_string(), r.clone()));
        }
    }
    out
}

fn alerts_file() -> Value {
    yaml(&read("charts/reaper/files/alerts.yaml"))
}

fn alert_names() -> BTreeSet<String> {
    alert_rules(&alerts_file())
        .into_iter()
        .map(|(_, r)| r["alert"].as_str().unwrap().to_string())
        .collect()
}

/// Every sample name the components expose: each family of the webhook, registry, operator and
/// agent registries with its type's suffixes (prometheus-client appends `_total` to counters;
/// histograms expose `_bucket`, `_sum`, `_count`). A family is encoded once it has a series, so
/// each component is made to record one of each through its own code paths where they are
/// public (an admission request through the webhook's router, a registry lookup that fails).
fn exported_names() -> BTreeSet<String> {
    use reaper::agent::metrics::{ContainerLabels, KindLabels, PodLabels, ResultLabels};
    use reaper::image::ImageResolver;
    use tower::ServiceExt;

    let metrics = reaper::metrics::Metrics::new();
    let webhook = reaper::webhook::server::WebhookMetrics::new(&metrics);
    webhook.cert_loaded(Ok(Some(1)));
    let state = reaper::webhook::server::AppState::new(
        reaper::webhook::decide::Config::new("registry.example.com/reaper:0.1.0"),
        reaper::webhook::sources::Sources::unsynced(),
        Arc::new(reaper::image::NoImageResolver),
        webhook,
    );
    let registry = reaper::registry::Registry::new(
        reaper::registry::Args {
            insecure_registries: vec!["127.0.0.1:1".into()],
            ..Default::default()
        }
        .settings()
        .unwrap(),
        None,
        &metrics,
    );
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let request = axum::http::Request::post("/mutate")
            .header("content-type", "application/json")
            .body(axum::body::Body::from("not an AdmissionReview"))
            .unwrap();
        let response = reaper::webhook::server::router(state)
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        // Nothing listens on port 1: an `unreachable` lookup.
        let pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "c", "image": "127.0.0.1:1/x:1"}]}
        }))
        .unwrap();
        registry
            .resolve(&pod, "ns", &["127.0.0.1:1/x:1".to_string()])
            .await;
    });

    let operator = reaper::operator::metrics::OperatorMetrics::register(&metrics);
    operator.reconciled("ok");
    operator.set_policies(&BTreeMap::from([("p".to_string(), Default::default())]));
    operator
        .cert_steps
        .get_or_create(&reaper::operator::metrics::StepLabels {
            step: "new_ca".into(),
        })
        .inc();

    let agent = reaper::agent::metrics::AgentMetrics::register(&metrics);
    let pod = PodLabels {
        namespace: "ns".into(),
        pod: "p".into(),
    };
    agent
        .zombie_processes
        .get_or_create(&ContainerLabels {
            namespace: "ns".into(),
            pod: "p".into(),
            container: "c".into(),
        })
        .set(1);
    agent.pod_pids.get_or_create(&pod).set(2);
    agent.pod_pids_limit.get_or_create(&pod).set(3);
    agent
        .scan_errors
        .get_or_create(&KindLabels {
            kind: "vanished".into(),
        })
        .inc();
    agent
        .report_writes
        .get_or_create(&ResultLabels {
            result: "applied".into(),
        })
        .inc();

    let text = metrics.encode();
    let mut families = BTreeSet::new();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        families.insert(name.to_string());
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "gauge" => &[""],
            "histogram" => &["_bucket", "_sum", "_count"],
            other => panic!("{name}: type {other} not handled here"),
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    // Families registered in src/ (outside tests). Those the registries above expose have their
    // exact sample names; one registered since, by code this test does not drive (or by a
    // component it does not build), is allowed under any suffix its type could give it.
    let registered = registered_in_source(&repo().join("src"));
    assert!(
        families.is_subset(&registered) && registered.len() > 20,
        "the scan of src/ misses registrations: {:?}",
        families.difference(&registered).collect::<Vec<_>>()
    );
    for f in registered.difference(&families) {
        eprintln!("{f}: registered in src/, no series recorded here; any suffix accepted");
        for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
            names.insert(format!("{f}{suffix}"));
        }
    }
    names
}

/// Names passed as a string literal to `register(` in the non-test code of the .rs files below `dir`.
fn registered_in_source(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(registered_in_source(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            for (i, _) in code.match_indices("register(") {
                let rest = code[i + "register(".len()..].trim_start();
                if let Some(lit) = rest.strip_prefix('"') {
                    out.insert(lit[..lit.find('"').unwrap()].to_string());
                }
            }
        }
    }
    out
}

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Metric names a PromQL expression selects: identifiers that are not functions, keywords,
/// label names (in `{...}`, `by (...)`, `on (...)`, ...), strings, numbers, durations, comments
/// or Grafana variables (`$x`, `${x}`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Index just past the string literal starting at `i`.
    let skip_string = |mut i: usize| {
        let q = b[i];
        i += 1;
        while i < b.len() && b[i] != q {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        i + 1
    };
    // Index just past the bracket group opening at `i` (strings inside skipped).
    let skip_group = |mut i: usize, open: u8, close: u8| {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                b'"' | b'\'' | b'`' => {
                    i = skip_string(i);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced {} in {expr}", open as char)
    };
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => i = skip_string(i),
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'{' => i = skip_group(i, b'{', b'}'),
            b'[' => i = skip_group(i, b'[', b']'),
            b'$' => {
                i += 1;
                if i < b.len() && b[i] == b'{' {
                    i = skip_group(i, b'{', b'}');
                } else {
                    while i < b.len() && ident(b[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == b'.' => {
                while i < b.len() && (ident(b[i]) || b[i] == b'.') {
                    i += 1;
                }
            }
            c if ident(c) => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let call = j < b.len() && b[j] == b'(';
                if matches!(
                    word,
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    if call {
                        i = skip_group(j, b'(', b')');
                    }
                } else if !call && !KEYWORDS.contains(&word) {
                    names.insert(word.to_string());
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    let expr = r#"sum by (namespace, workload) (
  rate(reaper_webhook_requests_total{result=~"error|x}"}[$__rate_interval] offset 5m)
  * on (namespace, pod) group_left (workload)
  max by (namespace, pod, workload) (label_replace(kube_pod_owner{namespace=~"$namespace"}, "w", "$1", "owner_name", "^(.*)$"))
) / ignoring (le) histogram_quantile(0.99, x_bucket) > 1e+06 # threshold
  and ${var} unless foo:bar_ratio"#;
    assert_eq!(
        metric_names(expr),
        BTreeSet::from(
            [
                "reaper_webhook_requests_total",
                "kube_pod_owner",
                "x_bucket",
                "foo:bar_ratio"
            ]
            .map(String::from)
        )
    );
}

/// Every name must be one the components export, or one of [`EXTERNAL`].
fn assert_known(what: &str, names: &BTreeSet<String>, exported: &BTreeSet<String>) {
    let unknown: Vec<_> = names
        .iter()
        .filter(|n| !exported.contains(*n) && !EXTERNAL.iter().any(|(e, _)| e == n))
        .collect();
    assert!(
        unknown.is_empty(),
        "{what} queries {unknown:?}, which no component exports (exported: {exported:?})"
    );
}

#[test]
fn alerts_pass_promtool_check_and_unit_tests() {
    let out = promtool_ok(&["check", "rules", "charts/reaper/files/alerts.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool_ok(&["test", "rules", "tests/promtool/alerts_test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Each alert has a case where it fires and one where it must not.
#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    let tests = yaml(&read("tests/promtool/alerts_test.yaml"));
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for t in tests["tests"].as_array().unwrap() {
        for case in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().unwrap().to_string();
            match case["exp_alerts"].as_array() {
                Some(a) if !a.is_empty() => firing.insert(name),
                _ => silent.insert(name),
            };
        }
    }
    let names = alert_names();
    assert_eq!(firing, names, "alerts with a case where they fire");
    assert_eq!(silent, names, "alerts with a case where they do not fire");
}

#[test]
fn alerts_are_complete_and_have_a_runbook_section() {
    let runbooks = read("docs/runbooks.md");
    let sections: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_string())
        .collect();
    let exported = exported_names();
    for (group, rule) in alert_rules(&alerts_file()) {
        let name = rule["alert"].as_str().unwrap();
        assert!(name.starts_with("Reaper"), "{name}");
        assert!(
            ["info", "warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap()),
            "{name}: severity"
        );
        assert!(rule["for"].is_string(), "{name}: for");
        for a in ["summary", "description"] {
            assert!(
                rule["annotations"][a]
                    .as_str()
                    .is_some_and(|s| s.len() > 20),
                "{name}: {a}"
            );
        }
        assert_eq!(
            rule["annotations"]["runbook_url"],
            format!("{RUNBOOKS}{}", name.to_lowercase()),
            "{name}"
        );
        assert!(
            sections.contains(name),
            "docs/runbooks.md has no section `## {name}`"
        );
        let expr = rule["expr"].as_str().unwrap();
        assert!(
            expr.matches("# threshold").count() <= 1,
            "{name}: one threshold at most"
        );
        assert_known(
            &format!("alert {name} (group {group})"),
            &metric_names(expr),
            &exported,
        );
    }
    let names = alert_names();
    let extra: Vec<_> = sections
        .iter()
        .filter(|s| s.starts_with("Reaper") && !names.contains(*s))
        .collect();
    assert!(
        extra.is_empty(),
        "runbook sections without an alert: {extra:?}"
    );
}

/// values.schema.json names exactly the alerts of the file as overridable.
#[test]
fn schema_lists_every_alert_for_overrides() {
    let schema: Value = serde_json::from_str(&read("charts/reaper/values.schema.json")).unwrap();
    let listed: BTreeSet<String> =
        schema["properties"]["prometheusRule"]["properties"]["alerts"]["properties"]
            .as_object()
            .expect("prometheusRule.alerts.properties")
            .keys()
            .cloned()
            .collect();
    assert_eq!(listed, alert_names());
}

fn prometheus_rule(objs: &Objects) -> &Value {
    objs.get("PrometheusRule", "reaper")
}

/// Writes the rendered rule groups to a file and has promtool check them.
fn promtool_checks_rendered(spec: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rendered.yaml");
    std::fs::write(&path, yaml_serde::to_string(spec).unwrap()).unwrap();
    promtool_ok(&["check", "rules", path.to_str().unwrap()]);
}

#[test]
fn prometheus_rule_renders_the_file_with_overrides() {
    let default = render("reaper", NS, &[]);
    assert!(default.of_kind("PrometheusRule").is_empty());

    // Without overrides: exactly the file's groups.
    let objs = render(
        "reaper",
        NS,
        &[
            V::Set("prometheusRule.enabled", "true"),
            V::Set("prometheusRule.labels.release", "kps"),
        ],
    );
    let rule = prometheus_rule(&objs);
    assert_eq!(rule["metadata"]["namespace"], NS);
    assert_eq!(rule["metadata"]["labels"]["release"], "kps");
    assert_eq!(rule["spec"], alerts_file());
    promtool_checks_rendered(&rule["spec"]);

    // Overrides: threshold, for, severity, enabled.
    let objs = render(
        "reaper",
        NS,
        &[
            V::Set("prometheusRule.enabled", "true"),
            V::Set(
                "prometheusRule.alerts.ReaperPodZombiesAccumulating.threshold",
                "12",
            ),
            V::Set(
                "prometheusRule.alerts.ReaperPodPidsNearLimit.threshold",
                "0.75",
            ),
            V::Set("prometheusRule.alerts.ReaperWebhookErrors.for", "1h"),
            V::Str(
                "prometheusRule.alerts.ReaperWebhookErrors.severity",
                "critical",
            ),
            V::Set(
                "prometheusRule.alerts.ReaperUnprotectedPods.enabled",
                "false",
            ),
        ],
    );
    let spec = &prometheus_rule(&objs)["spec"];
    let rules: BTreeMap<String, Value> = alert_rules(spec)
        .into_iter()
        .map(|(_, r)| (r["alert"].as_str().unwrap().to_string(), r))
        .collect();
    let expr = |name: &str| rules[name]["expr"].as_str().unwrap().to_string();
    assert!(
        expr("ReaperPodZombiesAccumulating").contains(">= 12 # threshold"),
        "{}",
        expr("ReaperPodZombiesAccumulating")
    );
    assert!(expr("ReaperPodPidsNearLimit").contains(">= 0.75 # threshold"));
    assert_eq!(rules["ReaperWebhookErrors"]["for"], "1h");
    assert_eq!(
        rules["ReaperWebhookErrors"]["labels"]["severity"],
        "critical"
    );
    assert!(!rules.contains_key("ReaperUnprotectedPods"));
    // Untouched alerts stay as in the file.
    let file: BTreeMap<String, Value> = alert_rules(&alerts_file())
        .into_iter()
        .map(|(_, r)| (r["alert"].as_str().unwrap().to_string(), r))
        .collect();
    assert_eq!(
        rules["ReaperWebhookLatencyHigh"],
        file["ReaperWebhookLatencyHigh"]
    );
    assert_eq!(rules.len(), file.len() - 1);
    promtool_checks_rendered(spec);

    // Without the agent there are no agent alerts (they could only say the agent is missing).
    let objs = render(
        "reaper",
        NS,
        &[
            V::Set("prometheusRule.enabled", "true"),
            V::Set("agent.enabled", "false"),
        ],
    );
    let groups: Vec<String> = alert_rules(&prometheus_rule(&objs)["spec"])
        .into_iter()
        .map(|(g, _)| g)
        .collect();
    assert!(!groups.is_empty() && !groups.iter().any(|g| g == "reaper-agent"));

    // A threshold for an alert that has none is refused.
    let err = chart_common::template_text(
        "reaper",
        NS,
        &[
            V::Set("prometheusRule.enabled", "true"),
            V::Set("prometheusRule.alerts.ReaperAgentMissing.threshold", "3"),
        ],
    )
    .unwrap_err();
    assert!(err.contains("ReaperAgentMissing.threshold"), "{err}");
}

fn dashboard() -> Value {
    serde_json::from_str(&read("charts/reaper/files/dashboard.json"))
        .expect("dashboard.json is JSON")
}

#[test]
fn dashboard_is_valid_and_queries_only_exported_metrics() {
    let d = dashboard();
    assert_eq!(d["uid"], "reaper-overview");
    assert!(d["title"].is_string() && d["schemaVersion"].as_u64().unwrap() >= 36);
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let exported = exported_names();
    let mut used = BTreeSet::new();
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map(|(m, _)| m)
            .unwrap_or_else(|| panic!("variable {}: {q}", v["name"]));
        used.extend(metric_names(inner));
    }
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && g["h"].as_u64().unwrap() > 0,
            "{title}: gridPos {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(titles.insert(title), "duplicate title {title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let names = metric_names(t["expr"].as_str().unwrap());
            assert!(!names.is_empty(), "{title}: {}", t["expr"]);
            assert_known(&format!("panel {title:?}"), &names, &exported);
            used.extend(names);
        }
    }
    // What the dashboard is for.
    for m in [
        "reaper_agent_zombie_processes",
        "kube_pod_owner",
        "reaper_agent_pod_pids",
        "reaper_agent_pod_pids_limit",
        "reaper_node_pid_max",
        "reaper_policy_pods",
        "reaper_webhook_requests_total",
        "reaper_webhook_request_duration_seconds_bucket",
        "reaper_webhook_certificate_expiry_timestamp_seconds",
    ] {
        assert!(used.contains(m), "the dashboard shows no {m}");
    }
}

#[test]
fn dashboard_config_map_is_optional_and_carries_the_file() {
    assert!(
        render("reaper", NS, &[])
            .find("ConfigMap", "reaper-dashboard")
            .is_none()
    );
    let objs = render(
        "reaper",
        NS,
        &[
            V::Set("grafanaDashboard.enabled", "true"),
            V::Set("grafanaDashboard.namespace", "monitoring"),
            V::Set("grafanaDashboard.labels.team", "sre"),
            V::Set("grafanaDashboard.annotations.grafana_folder", "Reaper"),
        ],
    );
    let cm = objs.get("ConfigMap", "reaper-dashboard");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["labels"]["team"], "sre");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Reaper");
    let embedded: Value = serde_json::from_str(cm["data"]["reaper.json"].as_str().unwrap())
        .expect("the ConfigMap's dashboard is JSON");
    assert_eq!(embedded, dashboard());
    // Without a namespace: the release's.
    let objs = render("reaper", NS, &[V::Set("grafanaDashboard.enabled", "true")]);
    assert_eq!(
        objs.get("ConfigMap", "reaper-dashboard")["metadata"]["namespace"],
        NS
    );
}

/// The agent's ServiceMonitor keeps the workload's namespace/pod/container (honorLabels) and drops
/// the agent pod's own target labels, as kube-state-metrics' does, adding the node; the
/// webhook's and operator's drops only the target's namespace.
#[test]
fn agent_service_monitor_keeps_the_workload_labels() {
    let objs = render("reaper", NS, &[V::Set("serviceMonitor.enabled", "true")]);
    let agent = objs.get("ServiceMonitor", "reaper-agent");
    let endpoints = agent["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    let ep = &endpoints[0];
    assert_eq!(ep["honorLabels"], true);
    let relabelings = ep["relabelings"].as_array().unwrap();
    let drop = relabelings
        .iter()
        .find(|r| r["action"] == "labeldrop")
        .expect("a labeldrop");
    // Prometheus anchors relabel regexes.
    let dropped: BTreeSet<&str> = drop["regex"]
        .as_str()
        .unwrap()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split('|')
        .collect();
    assert_eq!(
        dropped,
        BTreeSet::from(["container", "endpoint", "namespace", "pod", "service"])
    );
    assert!(relabelings.iter().any(|r| r["targetLabel"] == "node"
        && r["sourceLabels"][0] == "__meta_kubernetes_pod_node_name"
        && r["action"] == "replace"));
    assert_eq!(
        agent["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "agent"
    );

    // The webhook's and operator's: a `namespace` label is a workload's there too (the webhook's
    // per-request labels); the replica stays in `pod`.
    let main = objs.get("ServiceMonitor", "reaper");
    let ep = &main["spec"]["endpoints"][0];
    assert_eq!(ep["honorLabels"], true);
    assert_eq!(
        ep["relabelings"],
        serde_json::json!([{"action": "labeldrop", "regex": "namespace"}])
    );
    assert_eq!(
        main["spec"]["selector"]["matchExpressions"][0],
        serde_json::json!({"key": "app.kubernetes.io/component", "operator": "In", "values": ["webhook", "operator"]})
    );

    // Without the agent, no agent ServiceMonitor.
    let objs = render(
        "reaper",
        NS,
        &[
            V::Set("serviceMonitor.enabled", "true"),
            V::Set("agent.enabled", "false"),
        ],
    );
    assert!(objs.find("ServiceMonitor", "reaper-agent").is_none());
}
