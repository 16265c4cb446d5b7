//! Putting rendered chart objects on a real API server (tests/support/control_plane.rs).
use kube::Client;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{Scope, pinned_kind};
use serde_json::Value;

/// Field manager of what the chart tests apply.
pub const MANAGER: &str = "reaper-chart-tests";

/// `kind/name` of an object, for messages.
pub fn id(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Server-side applies one object (`dry_run`: the API server runs validation and admission but
/// stores nothing).
pub async fn apply(client: &Client, obj: &Value, dry_run: bool) -> Result<DynamicObject, String> {
    let api_version = obj["apiVersion"].as_str().ok_or("no apiVersion")?;
    let kind = obj["kind"].as_str().ok_or("no kind")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = pinned_kind(client, &gvk).await.map_err(|e| {
        format!(
            "{}: the API server does not serve {api_version} {kind}: {e}",
            id(obj)
        )
    })?;
    let name = obj["metadata"]["name"].as_str().ok_or("no metadata.name")?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &ar),
        Scope::Namespaced => {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .ok_or_else(|| format!("{}: namespaced without metadata.namespace", id(obj)))?;
            Api::namespaced_with(client.clone(), ns, &ar)
        }
    };
    let mut pp = PatchParams::apply(MANAGER).force();
    pp.dry_run = dry_run;
    api.patch(name, &pp, &Patch::Apply(obj))
        .await
        .map_err(|e| format!("{}: {e}", id(obj)))
}

/// Applies every object; the errors, one per failing object.
pub async fn apply_all(client: &Client, objs: &[Value], dry_run: bool) -> Vec<String> {
    let mut errors = Vec::new();
    for o in objs {
        if let Err(e) = apply(client, o, dry_run).await {
            errors.push(e);
        }
    }
    errors
}

/// The ServiceAccounts, (Cluster)Roles and (Cluster)RoleBindings of a rendering.
pub fn rbac(objs: &[Value]) -> Vec<Value> {
    objs.iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .cloned()
        .collect()
}

/// A stored pod as JSON without what differs between two API server admissions of the same pod:
/// identity, namespace, a generated name's suffix, and the ServiceAccount token volume (its name
/// has a random suffix too). Compares what the webhook, the admission policies and offline
/// `inject` store.
pub fn comparable_pod(p: &k8s_openapi::api::core::v1::Pod) -> Value {
    let mut v = serde_json::to_value(p).unwrap();
    for k in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
        "namespace",
    ] {
        v["metadata"].as_object_mut().unwrap().remove(k);
    }
    v.as_object_mut().unwrap().remove("status");
    if v["metadata"]["generateName"].is_string() {
        v["metadata"].as_object_mut().unwrap().remove("name");
    }
    let token = |name: &Value| {
        name.as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-"))
    };
    if let Some(vols) = v["spec"]["volumes"].as_array_mut() {
        vols.retain(|vol| !token(&vol["name"]));
    }
    for list in ["initContainers", "containers"] {
        for c in v["spec"][list].as_array_mut().into_iter().flatten() {
            if let Some(m) = c["volumeMounts"].as_array_mut() {
                m.retain(|m| !token(&m["name"]));
            }
        }
    }
    v
}

/// `helm ARGS --kubeconfig <cp's> --namespace NAMESPACE`: what Helm prints. Panics with Helm's
/// output when it fails.
pub fn helm(cp: &crate::control_plane::ControlPlane, namespace: &str, args: &[&str]) -> String {
    let kubeconfig = cp.kubeconfig().display().to_string();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", &kubeconfig, "--namespace", namespace]);
    super::helm_run(&all).unwrap_or_else(|e| panic!("{e}"))
}

/// `helm install` (or `upgrade`, `args[0]`) of the chart on `cp` with `extra` flags and
/// `values`, the CRDs left to the caller (`crds.enabled=false`: Helm would refuse to adopt CRDs
/// applied with kubectl): what Helm prints, NOTES included.
pub fn install(
    cp: &crate::control_plane::ControlPlane,
    verb: &str,
    release: &str,
    namespace: &str,
    extra: &[&str],
    values: &[super::V<'_>],
) -> String {
    let chart = super::chart_dir().display().to_string();
    let mut args: Vec<String> = [verb, release, &chart].map(String::from).to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(super::V::Set("crds.enabled", "false").helm_args());
    for v in values {
        args.extend(v.helm_args());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    helm(cp, namespace, &refs)
}
