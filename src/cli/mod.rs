//! Commands for people (not long-running roles): they reuse the webhook's planner and policy
//! matcher and reimplement neither.
use serde_json::{Value, json};

pub mod app;
pub mod check;
pub mod explain;
pub mod inject;

/// Where a kind keeps its pod template, as a JSON path.
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// The Pod an object is (a Pod) or creates (a workload's template, as the API server will see it
/// at CREATE: controllers name their pods `<name>-<suffix>`, so a nameless template gets that
/// `generateName`); `None` for other kinds.
pub fn template_pod(obj: &Value) -> Option<Value> {
    let kind = obj["kind"].as_str()?;
    if kind == "Pod" {
        return Some(obj.clone());
    }
    let mut t = obj;
    for p in template_path(kind)? {
        t = t.get(*p)?;
    }
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": t.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "spec": t.get("spec").cloned().unwrap_or_else(|| json!({})),
    });
    let named = pod["metadata"]["name"].is_string() || pod["metadata"]["generateName"].is_string();
    if !named {
        let name = obj["metadata"]["name"].as_str().unwrap_or("pod");
        pod["metadata"]["generateName"] = json!(format!("{name}-"));
    }
    Some(pod)
}
