//! Integration suite, part 1: the CRDs on a real kube-apiserver (tests/support/control_plane.rs).
//! The files under `crds/` are what gets installed; a unit test in src/crd keeps them in sync.
use reaper_test_support as support;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use reaper::crd::{
    CommCount, ContainerFilter, ContainerInit, ContainerZombies, Enforcement, EntrypointOverride,
    Fallback, Mode, ReaperOptions, ReaperPolicy, ReaperPolicySpec, SignalRewrite, ZombieAction,
    ZombieParent, ZombiePolicy, ZombieReport, ZombieReportSpec,
};
use serde_json::{Value, json};
use support::control_plane::{self, ControlPlane, unique_name};

/// The CRDs as `crds/*.yaml` holds them (sorted by file name).
fn crds_from_files() -> Vec<CustomResourceDefinition> {
    let dir = control_plane::repo_root().join("crds");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e} (run `make crds`)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

/// `kubectl ARGS` as the cluster admin, with `stdin` piped in; stdout, or the error output.
fn kubectl(cp: &ControlPlane, args: &[&str], stdin: &str) -> Result<String, String> {
    use std::io::Write;
    let kubectl = control_plane::tool("kubectl").unwrap_or_else(|e| panic!("{e}"));
    let mut child = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("kubectl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            text
        ))
    }
}

/// Admin client with the CRDs from `crds/` installed the way users install them,
/// `kubectl apply -f crds/` (server-side, so concurrent tests do not conflict).
async fn setup() -> Option<(&'static ControlPlane, Client)> {
    let cp = control_plane::shared(module_path!())?;
    let client = cp.client().await;
    let dir = control_plane::repo_root().join("crds");
    kubectl(
        cp,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=reaper-tests",
            "-f",
            &dir.display().to_string(),
        ],
        "",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in reaper::crd::all() {
        control_plane::wait_crd_established(&api, crd.metadata.name.as_deref().unwrap()).await;
    }
    Some((cp, client))
}

/// The objects of kind `kind` in `kubectl ... -o json` output (one JSON document per object, or
/// a List).
fn objects_of_kind(json_text: &str, kind: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(json_text)
        .into_iter::<Value>()
        .map(|v| v.unwrap_or_else(|e| panic!("{e}: {json_text}")))
        .flat_map(|v| match v["kind"].as_str() {
            Some("List") => v["items"].as_array().cloned().unwrap_or_default(),
            _ => vec![v],
        })
        .filter(|o| o["kind"] == kind)
        .collect()
}

/// The first place where two JSON values differ, as a path, or `None` when equal: a whole-CRD
/// `assert_eq!` is unreadable.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(l), Some(r)) => first_difference(l, r, &format!("{path}.{k}")),
                (l, r) => Some(format!("{path}.{k}: {l:?} vs {r:?}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, &format!("{path}[{i}]"))),
        // JSON has one number type: 3 and 3.0 are the same bound.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

fn assert_same(got: &[Value], want: &[Value], what: &str) {
    let (got, want) = (Value::from(got.to_vec()), Value::from(want.to_vec()));
    if let Some(d) = first_difference(&got, &want, "") {
        panic!("{what}: first difference at {d}");
    }
}

/// kubectl and Helm read YAML with `sigs.k8s.io/yaml` (YAML 1.1: a plain `Off` is `false`).
/// What they read from `crds/`, and from the chart as `helm install` sends it (Helm builds its
/// objects with the same reader), must be exactly the Rust types.
#[tokio::test]
async fn kubectl_and_helm_read_the_crd_files_as_generated() {
    let Some((cp, _client)) = setup().await else {
        return;
    };
    let want: Vec<Value> = reaper::crd::all()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    let dir = control_plane::repo_root().join("crds");
    let from_files = kubectl(
        cp,
        &[
            "create",
            "--dry-run=client",
            "-o",
            "json",
            "-f",
            &dir.display().to_string(),
        ],
        "",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_same(
        &objects_of_kind(&from_files, "CustomResourceDefinition"),
        &want,
        "kubectl reads crds/ differently from the Rust types",
    );
    let chart = reaper_test_support::chart::chart_dir()
        .display()
        .to_string();
    let rendered =
        reaper_test_support::chart::helm_run(&["template", "r", &chart, "--include-crds"])
            .unwrap_or_else(|e| panic!("{e}"));
    // Documents are separated by lines that are exactly `---`.
    let mut docs = vec![String::new()];
    for line in rendered.lines() {
        if line == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    let crd_docs: String = docs
        .iter()
        .filter(|d| d.lines().any(|l| l == "kind: CustomResourceDefinition"))
        .map(|d| format!("---\n{d}"))
        .collect();
    let from_chart = kubectl(
        cp,
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        &crd_docs,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // The chart adds the release's labels and Helm's keep policy (templates/crds.yaml).
    let from_chart: Vec<Value> = objects_of_kind(&from_chart, "CustomResourceDefinition")
        .into_iter()
        .map(|mut crd| {
            let meta = crd["metadata"].as_object_mut().unwrap();
            assert!(meta.remove("labels").is_some(), "no release labels");
            assert_eq!(
                meta.remove("annotations"),
                Some(json!({"helm.sh/resource-policy": "keep"}))
            );
            crd
        })
        .collect();
    assert_same(
        &from_chart,
        &want,
        "helm sends the chart's CRDs differently from the Rust types",
    );
}

/// After `kubectl apply -f crds/`, a ReaperPolicy with each enum value applies with kubectl and
/// reads back as that value (the served schema lists `"Off"`, not `false`).
#[tokio::test]
async fn every_enum_value_applies_with_kubectl() {
    let Some((cp, client)) = setup().await else {
        return;
    };
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let live = serde_json::to_value(crds.get("reaperpolicies.reaper.dev").await.unwrap()).unwrap();
    let spec = &live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["properties"]["mode"]["enum"],
        json!(["Auto", "Inject", "Image", "Share", "Off"])
    );
    assert_eq!(
        spec["properties"]["imageVolume"]["enum"],
        json!(["Allowed", "Required", "Forbidden"])
    );
    let api = Api::<ReaperPolicy>::all(client);
    let cases = [
        (
            "Auto",
            Mode::Auto,
            "Enforce",
            Enforcement::Enforce,
            "Event",
            ZombieAction::Event,
        ),
        (
            "Inject",
            Mode::Inject,
            "Audit",
            Enforcement::Audit,
            "Restart",
            ZombieAction::Restart,
        ),
        (
            "Image",
            Mode::Image,
            "Enforce",
            Enforcement::Enforce,
            "Event",
            ZombieAction::Event,
        ),
        (
            "Share",
            Mode::Share,
            "Enforce",
            Enforcement::Enforce,
            "Restart",
            ZombieAction::Restart,
        ),
        (
            "Off",
            Mode::Off,
            "Audit",
            Enforcement::Audit,
            "Event",
            ZombieAction::Event,
        ),
    ];
    for (mode, want_mode, enforcement, want_enforcement, action, want_action) in cases {
        let name = unique_name(&format!("enum-{}", mode.to_lowercase()));
        // Quoted as the docs write them: a plain Off is a boolean to kubectl.
        let yaml = format!(
            "apiVersion: reaper.dev/v1alpha1\nkind: ReaperPolicy\nmetadata:\n  name: {name}\n\
             spec:\n  mode: \"{mode}\"\n  enforcement: \"{enforcement}\"\n\
             \x20 zombies:\n    action: \"{action}\"\n"
        );
        kubectl(cp, &["apply", "-f", "-"], &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let got = api.get(&name).await.unwrap();
        assert_eq!(
            (got.spec.mode, got.spec.enforcement, got.spec.zombies.action),
            (want_mode, want_enforcement, want_action),
            "{yaml}"
        );
        api.delete(&name, &Default::default()).await.unwrap();
    }
}

#[tokio::test]
async fn control_plane_serves_version_and_namespaces() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    let version = client.apiserver_version().await.expect("GET /version");
    assert_eq!(version.git_version, "v1.36.3", "{version:?}");
    let ns = cp.ns(&client, "smoke").await;
    let got = Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .expect("namespace exists");
    assert_eq!(got.metadata.name.as_deref(), Some(ns.as_str()));
}

#[tokio::test]
async fn crds_from_files_are_established_with_structural_schemas() {
    let Some((_cp, client)) = setup().await else {
        return;
    };
    let files = crds_from_files();
    assert_eq!(
        files,
        reaper::crd::all(),
        "crds/ differs from reaper::crd::all(): run `make crds`"
    );
    let api = Api::<CustomResourceDefinition>::all(client);
    for crd in &files {
        let name = crd.metadata.name.as_deref().unwrap();
        let live = control_plane::wait_crd_established(&api, name).await;
        let conditions = live.status.unwrap().conditions.unwrap_or_default();
        let status_of = |t: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| (c.status.clone(), c.message.clone()))
        };
        assert_eq!(
            status_of("NamesAccepted").map(|s| s.0).as_deref(),
            Some("True"),
            "{name}: {conditions:?}"
        );
        // The apiserver sets NonStructuralSchema only when a schema is not structural.
        assert_eq!(
            status_of("NonStructuralSchema"),
            None,
            "{name} has a non-structural schema"
        );
        assert_ne!(live.spec.preserve_unknown_fields, Some(true), "{name}");
        assert_eq!(live.spec.scope, "Cluster", "{name}");
    }
}

fn sample_policy(name: &str) -> ReaperPolicy {
    let selector = serde_json::from_value(json!({
        "matchLabels": {"team": "payments"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]
    }))
    .unwrap();
    ReaperPolicy::new(
        name,
        ReaperPolicySpec {
            priority: 10,
            namespace_selector: Some(selector),
            pod_selector: None,
            mode: Mode::Inject,
            image_volume: reaper::crd::ImageVolume::Forbidden,
            fallback: Fallback::None,
            enforcement: Enforcement::Audit,
            containers: ContainerFilter {
                include: vec![],
                exclude: vec!["istio-proxy".into()],
            },
            init_containers: true,
            reaper: ReaperOptions {
                grace: Some("500ms".into()),
                process_group: true,
                rewrite: vec![SignalRewrite("TERM:QUIT".into())],
                verbosity: 2,
            },
            entrypoints: vec![EntrypointOverride {
                image: "registry.example.com/team/*".into(),
                command: vec!["/app/server".into()],
                args: vec!["--port=8080".into()],
            }],
            zombies: ZombiePolicy {
                threshold: 3,
                action: ZombieAction::Restart,
                cooldown: "30m".into(),
            },
        },
    )
}

#[tokio::test]
async fn reaper_policy_round_trips_and_status_is_a_subresource() {
    let Some((_cp, client)) = setup().await else {
        return;
    };
    let api = Api::<ReaperPolicy>::all(client);
    let name = unique_name("roundtrip");
    let mut policy = sample_policy(&name);
    // Status is a subresource: whatever a create carries there is dropped.
    policy.status = Some(serde_json::from_value(json!({"matchedPods": 99})).unwrap());
    let created = api
        .create(&PostParams::default(), &policy)
        .await
        .expect("create");
    assert_eq!(created.spec, policy.spec);
    assert_eq!(created.status, None, "status must be ignored on create");
    let got = api.get(&name).await.expect("get");
    assert_eq!(got.spec, policy.spec);

    // Defaults come from the schema: an empty spec reads back with them filled in.
    let empty_name = unique_name("defaults");
    let empty = api
        .create(
            &PostParams::default(),
            &ReaperPolicy::new(&empty_name, serde_json::from_value(json!({})).unwrap()),
        )
        .await
        .expect("create empty policy");
    assert_eq!(empty.spec.zombies, ZombiePolicy::default());

    let status = json!({
        "status": {
            "observedGeneration": got.metadata.generation,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "Reconciled",
                "message": "3 pods matched", "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": got.metadata.generation
            }],
            "matchedNamespaces": 1, "matchedPods": 3, "protectedPods": 2, "unprotectedPods": 1,
            "zombies": 4,
            "topOffenders": [{"namespace": "shop", "pod": "web-1", "container": "app", "count": 4,
                              "parentComm": "node", "ageSeconds": 120}]
        }
    });
    let patched = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch status");
    let s = patched.status.expect("status after patch");
    assert_eq!(
        (
            s.matched_pods,
            s.protected_pods,
            s.unprotected_pods,
            s.zombies
        ),
        (3, 2, 1, 4)
    );
    assert_eq!(s.observed_generation, got.metadata.generation);
    assert_eq!(s.conditions[0].reason, "Reconciled");
    assert_eq!(s.top_offenders[0].parent_comm, "node");
    // A status write does not bump the generation (the operator's observedGeneration relies on it).
    assert_eq!(patched.metadata.generation, got.metadata.generation);
    // And a spec write through the main resource leaves status alone.
    let mut changed = api.get(&name).await.unwrap();
    changed.spec.priority = 11;
    changed.status = None;
    let replaced = api
        .replace(&name, &PostParams::default(), &changed)
        .await
        .expect("replace");
    assert_eq!(replaced.status.map(|s| s.matched_pods), Some(3));
    assert!(replaced.metadata.generation > got.metadata.generation);
}

fn sample_report(name: &str) -> ZombieReport {
    ZombieReport::new(
        name,
        ZombieReportSpec {
            node_name: name.into(),
            observed_at: Some(serde_json::from_value(json!("2026-01-02T03:04:05Z")).unwrap()),
            pid_max: 4_194_304,
            processes: 812,
            zombies: 7,
            unattributed_zombies: 1,
            containers: vec![ContainerZombies {
                pod_uid: "0b6f6e4e-2a4d-4f7e-9b9e-6f0c1d2e3f40".into(),
                container_id: "4f0c1d2e3f405b6f6e4e2a4d4f7e9b9e".into(),
                namespace: Some("shop".into()),
                pod: Some("web-1".into()),
                container: Some("app".into()),
                count: 6,
                oldest_age_seconds: 300,
                parents: vec![ZombieParent {
                    pid: 4242,
                    comm: "node".into(),
                    count: 6,
                    oldest_age_seconds: 300,
                }],
            }],
            truncated_containers: 2,
            pods: vec![],
            truncated_pods: 0,
            pid1s: vec![ContainerInit {
                pod_uid: "0b6f6e4e-2a4d-4f7e-9b9e-6f0c1d2e3f40".into(),
                container_id: "4f0c1d2e3f405b6f6e4e2a4d4f7e9b9e".into(),
                namespace: Some("shop".into()),
                pod: Some("web-1".into()),
                container: Some("app".into()),
                comm: "node".into(),
                init: None,
                handles_sigterm: false,
                pid1: true,
                host_pid: false,
                children: 9,
                zombies: 6,
                zombie_comms: vec![CommCount {
                    comm: "sh".into(),
                    count: 6,
                }],
            }],
            truncated_pid1s: 1,
        },
    )
}

#[tokio::test]
async fn zombie_report_round_trips() {
    let Some((_cp, client)) = setup().await else {
        return;
    };
    let api = Api::<ZombieReport>::all(client);
    let name = unique_name("node");
    let report = sample_report(&name);
    api.create(&PostParams::default(), &report)
        .await
        .expect("create");
    let got = api.get(&name).await.expect("get");
    assert_eq!(got.spec, report.spec);
    // Agents publish with server-side apply: the same object applied again is a no-op update.
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(reaper::keys::MANAGER_AGENT).force(),
            &Patch::Apply(&report),
        )
        .await
        .expect("server-side apply");
    assert_eq!(applied.spec, report.spec);
}

/// The status error of a rejected create, with its field causes.
async fn rejected(api: &Api<DynamicObject>, obj: Value) -> kube::core::Status {
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => panic!(
            "{name} was accepted: {}",
            serde_json::to_string(&obj.data).unwrap()
        ),
        Err(kube::Error::Api(status)) => *status,
        Err(e) => panic!("{name}: unexpected error {e}"),
    }
}

fn dynamic_api<K: Resource<DynamicType = ()>>(
    client: &Client,
) -> (Api<DynamicObject>, ApiResource) {
    let ar = ApiResource::erase::<K>(&());
    (Api::all_with(client.clone(), &ar), ar)
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_field_errors() {
    let Some((_cp, client)) = setup().await else {
        return;
    };
    let (policies, policy_ar) = dynamic_api::<ReaperPolicy>(&client);
    let (reports, report_ar) = dynamic_api::<ZombieReport>(&client);
    // (case, which API, spec, field the error must name)
    let cases: Vec<(&str, bool, Value, &str)> = vec![
        (
            "unknown mode",
            true,
            json!({"mode": "Sometimes"}),
            "spec.mode",
        ),
        (
            "unknown enforcement",
            true,
            json!({"enforcement": "Maybe"}),
            "spec.enforcement",
        ),
        (
            "grace not a duration",
            true,
            json!({"reaper": {"grace": "5 parsecs"}}),
            "spec.reaper.grace",
        ),
        (
            "verbosity above 3",
            true,
            json!({"reaper": {"verbosity": 7}}),
            "spec.reaper.verbosity",
        ),
        (
            "rewrite without target",
            true,
            json!({"reaper": {"rewrite": ["TERM"]}}),
            "spec.reaper.rewrite[0]",
        ),
        (
            "threshold 0",
            true,
            json!({"zombies": {"threshold": 0}}),
            "spec.zombies.threshold",
        ),
        (
            "cooldown not a duration",
            true,
            json!({"zombies": {"cooldown": "soon"}}),
            "spec.zombies.cooldown",
        ),
        (
            "unknown zombie action",
            true,
            json!({"zombies": {"action": "Explode"}}),
            "spec.zombies.action",
        ),
        (
            "entrypoint without image",
            true,
            json!({"entrypoints": [{"command": ["/app"]}]}),
            "spec.entrypoints[0].image",
        ),
        (
            "priority not an integer",
            true,
            json!({"priority": "high"}),
            "spec.priority",
        ),
        (
            "report without nodeName",
            false,
            json!({"zombies": 1}),
            "spec.nodeName",
        ),
        (
            "negative zombie count",
            false,
            json!({"nodeName": "n1", "zombies": -1}),
            "spec.zombies",
        ),
        (
            "container entry without count",
            false,
            json!({"nodeName": "n1", "containers": [{"podUid": "u", "containerId": "c"}]}),
            "spec.containers[0].count",
        ),
    ];
    let mut failures = Vec::new();
    for (case, is_policy, spec, field) in cases {
        let (api, ar) = if is_policy {
            (&policies, &policy_ar)
        } else {
            (&reports, &report_ar)
        };
        let name = unique_name("invalid");
        let status = rejected(
            api,
            json!({
                "apiVersion": ar.api_version, "kind": ar.kind,
                "metadata": {"name": name}, "spec": spec
            }),
        )
        .await;
        let causes: Vec<String> = status
            .details
            .as_ref()
            .map(|d| d.causes.iter().map(|c| c.field.clone()).collect())
            .unwrap_or_default();
        let ok = status.code == 422
            && status.reason == "Invalid"
            && causes.iter().any(|c| c == field)
            && status.message.contains(field);
        if !ok {
            failures.push(format!(
                "{case}: expected a 422 naming {field}, got {} {} causes={causes:?}: {}",
                status.code, status.reason, status.message
            ));
        }
        // Nothing was stored.
        assert!(
            api.get_opt(&name).await.unwrap().is_none(),
            "{case}: {name} exists"
        );
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// `kubectl get` columns: the Table representation the apiserver builds from additionalPrinterColumns.
async fn table(client: &Client, path: &str) -> Value {
    let req = http::Request::get(path)
        .header(
            http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(req).await.expect("GET table");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kind"], "Table", "{text}");
    v
}

fn column_names(table: &Value) -> Vec<String> {
    table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn printer_columns_show_in_table_output() {
    let Some((_cp, client)) = setup().await else {
        return;
    };
    let policies = Api::<ReaperPolicy>::all(client.clone());
    let name = unique_name("columns");
    policies
        .create(&PostParams::default(), &sample_policy(&name))
        .await
        .unwrap();
    policies
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"matchedPods": 3, "protectedPods": 2, "zombies": 1}})),
        )
        .await
        .unwrap();
    let t = table(
        &client,
        &format!("/apis/reaper.dev/v1alpha1/reaperpolicies/{name}"),
    )
    .await;
    assert_eq!(
        column_names(&t),
        [
            "Name",
            "Mode",
            "Enforcement",
            "Matched",
            "Protected",
            "Zombies",
            "Age"
        ]
    );
    let cells = &t["rows"][0]["cells"];
    assert_eq!(cells[0], json!(name));
    assert_eq!(cells[1], "Inject");
    assert_eq!(cells[2], "Audit");
    assert_eq!(cells[3], 3);
    assert_eq!(cells[4], 2);
    assert_eq!(cells[5], 1);
    assert!(cells[6].is_string(), "Age: {cells}");

    let reports = Api::<ZombieReport>::all(client.clone());
    let node = unique_name("node");
    reports
        .create(&PostParams::default(), &sample_report(&node))
        .await
        .unwrap();
    let t = table(
        &client,
        &format!("/apis/reaper.dev/v1alpha1/zombiereports/{node}"),
    )
    .await;
    assert_eq!(
        column_names(&t),
        ["Name", "Node", "Zombies", "Processes", "Age"]
    );
    let cells = &t["rows"][0]["cells"];
    assert_eq!(cells[1], json!(node));
    assert_eq!(cells[2], 7);
    assert_eq!(cells[3], 812);
}

#[tokio::test]
async fn service_account_token_client_is_subject_to_rbac() {
    let Some((cp, admin)) = setup().await else {
        return;
    };
    let ns = cp.ns(&admin, "rbac").await;
    let sa_client = cp.client_as_service_account(&admin, &ns, "default").await;
    // Authenticated (the token verifies against the SA key), but RBAC grants nothing yet.
    let err = Api::<ReaperPolicy>::all(sa_client.clone())
        .list(&Default::default())
        .await
        .expect_err("a bare ServiceAccount may not list policies");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message
                    .contains(&format!("system:serviceaccount:{ns}:default")),
                "{s:?}"
            );
        }
        e => panic!("expected 403, got {e}"),
    }
    // Grant read access and the same client succeeds.
    let rbac = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": format!("{ns}-view-policies")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{ns}-view-policies")},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]
    });
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": format!("{ns}-view-policies")},
        "rules": [{"apiGroups": ["reaper.dev"], "resources": ["reaperpolicies"], "verbs": ["list"]}]
    });
    let pp = PatchParams::apply("reaper-tests");
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin.clone())
        .patch(
            &format!("{ns}-view-policies"),
            &pp,
            &Patch::Apply(
                serde_json::from_value::<k8s_openapi::api::rbac::v1::ClusterRole>(role).unwrap(),
            ),
        )
        .await
        .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
        .patch(
            &format!("{ns}-view-policies"),
            &pp,
            &Patch::Apply(
                serde_json::from_value::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(rbac)
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    // RBAC changes reach the authorizer through an informer: allow it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Api::<ReaperPolicy>::all(sa_client.clone())
            .list(&Default::default())
            .await
        {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still denied after the binding: {e}"),
        }
    }
}

#[tokio::test]
async fn controller_manager_on_demand_runs_namespace_controllers() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    let started = std::time::Instant::now();
    cp.ensure_controller_manager(&client).await;
    eprintln!(
        "kube-controller-manager working after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A bare namespace gets its `default` ServiceAccount and root CA from the controllers.
    let name = unique_name("kcm");
    let namespaces = Api::<Namespace>::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.clone());
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let sas = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &name);
    let cms = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &name);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while sas.get_opt("default").await.unwrap().is_none()
        || cms.get_opt("kube-root-ca.crt").await.unwrap().is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no default ServiceAccount / kube-root-ca.crt in {name} after 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Deletion completes (the namespace controller empties it and removes the finalizer).
    namespaces.delete(&name, &Default::default()).await.unwrap();
    while namespaces.get_opt(&name).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "namespace {name} still there after 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn child_processes_reach_the_cluster_through_kubeconfigs() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let admin = cp.client().await;
    let helm = control_plane::tool("helm").unwrap_or_else(|e| panic!("{e}"));
    // Admin kubeconfig: helm (built by `make tools`) lists releases (none yet).
    let out = cp
        .command(&helm)
        .args(["list", "--all-namespaces", "--output", "json"])
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    // A ServiceAccount token kubeconfig: authenticated as the SA, and RBAC denies it.
    let ns = cp.ns(&admin, "child").await;
    let token = cp
        .service_account_token(&admin, &ns, "default", std::time::Duration::from_secs(600))
        .await;
    let kubeconfig = cp.write_token_kubeconfig("child", &token);
    let out = cp
        .command(&helm)
        .env("KUBECONFIG", &kubeconfig)
        .args(["list", "--namespace", &ns])
        .output()
        .expect("run helm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a bare ServiceAccount may not list secrets"
    );
    assert!(
        stderr.contains("forbidden")
            && stderr.contains(&format!("system:serviceaccount:{ns}:default")),
        "{stderr}"
    );
}
