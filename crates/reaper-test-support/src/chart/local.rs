//! The chart's admission parts run here against a control plane, from `helm template` output: the
//! webhook as a process with the args of its rendered Deployment, its registration pointed at
//! that process, and the rendered MutatingAdmissionPolicies. Each install is scoped to the
//! namespaces carrying one label value, so several share an API server. Used by the engine tests
//! (tests/control_plane/admission_policy.rs) and `make bench-engines`.
use super::{Objects, strings};
use crate::control_plane::{
    self, ChildGuard, ControlPlane, TestCa, reaper_controller_bin, unique_name,
};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// The chart's webhook, running here (stopped on drop).
pub struct LocalWebhook {
    _child: ChildGuard,
    /// Admin (metrics, probes) port, plain HTTP.
    pub admin: u16,
    /// HTTPS port of `/mutate`.
    pub port: u16,
    /// The CA of its serving certificate.
    pub ca_pem: String,
    log: PathBuf,
}

impl LocalWebhook {
    /// `reaper-controller` with the args of the rendered webhook Deployment, listen addresses and
    /// certificate paths replaced, and `overrides` (`--flag=value`) replacing flags of the same
    /// name; `POD_NAMESPACE` is `release_ns`. Returns once `/readyz` answers 200; panics with
    /// its log when it does not within a minute.
    pub async fn start(
        cp: &ControlPlane,
        objs: &Objects,
        release_ns: &str,
        overrides: &[&str],
    ) -> Self {
        let deployment = objs
            .of_kind("Deployment")
            .into_iter()
            .find(|d| {
                d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-webhook"))
            })
            .expect("no webhook Deployment rendered");
        let dir = cp.dir().join(unique_name("local-webhook"));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::new("reaper local webhook CA");
        let pair = ca.issue_server(&["127.0.0.1"]);
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, &pair.cert_pem).unwrap();
        std::fs::write(&key, &pair.key_pem).unwrap();
        let (port, admin) = (control_plane::free_port(), control_plane::free_port());
        let flag = |a: &str| a.split_once('=').map(|(k, _)| k.to_string());
        let args: Vec<String> =
            strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"])
                .into_iter()
                .map(|a| match flag(&a).as_deref() {
                    Some("--listen") => format!("--listen=127.0.0.1:{port}"),
                    Some("--admin-listen") => format!("--admin-listen=127.0.0.1:{admin}"),
                    Some("--tls-cert") => format!("--tls-cert={}", cert.display()),
                    Some("--tls-key") => format!("--tls-key={}", key.display()),
                    f => overrides
                        .iter()
                        .find(|o| f.is_some() && flag(o).as_deref() == f)
                        .map_or(a, |o| o.to_string()),
                })
                .collect();
        let log = dir.join("webhook.log");
        let file = |p: PathBuf| std::fs::File::create(p).unwrap();
        let mut cmd = cp.command(reaper_controller_bin());
        cmd.args(&args)
            .env("POD_NAMESPACE", release_ns)
            .stdout(file(dir.join("webhook.out")))
            .stderr(file(log.clone()));
        let child = ChildGuard::spawn(&mut cmd).expect("spawning the webhook");
        crate::wait::ready("the chart's webhook", admin, &log, Duration::from_secs(60)).await;
        Self {
            _child: child,
            admin,
            port,
            ca_pem: ca.cert_pem(),
            log,
        }
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Adds `label: id` to a selector's matchLabels.
pub fn scope_selector(selector: &mut Value, label: &str, id: &str) {
    if !selector["matchLabels"].is_object() {
        selector["matchLabels"] = json!({});
    }
    selector["matchLabels"][label] = json!(id);
}

/// The rendered MutatingWebhookConfiguration named `name`, calling `w` by URL, for the
/// namespaces labelled `label: id`.
pub fn registration(objs: &Objects, name: &str, w: &LocalWebhook, label: &str, id: &str) -> Value {
    let mut mwc = objs.of_kind("MutatingWebhookConfiguration")[0].clone();
    mwc["metadata"] = json!({ "name": name });
    for hook in mwc["webhooks"].as_array_mut().unwrap() {
        hook["clientConfig"] = json!({
            "url": format!("https://127.0.0.1:{}/mutate", w.port),
            "caBundle": k8s_openapi::ByteString(w.ca_pem.as_bytes().to_vec()),
        });
        scope_selector(&mut hook["namespaceSelector"], label, id);
    }
    mwc
}

/// The rendered MutatingAdmissionPolicies, then their bindings, renamed `<name>-<id>` and scoped
/// to the namespaces labelled `label: id`.
pub fn policies(objs: &Objects, label: &str, id: &str) -> Vec<Value> {
    let renamed = |v: &Value| json!(format!("{}-{id}", v.as_str().unwrap()));
    let mut out = Vec::new();
    for kind in ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"] {
        for p in objs.of_kind(kind) {
            let mut p = p.clone();
            p["metadata"]["name"] = renamed(&p["metadata"]["name"]);
            if kind == "MutatingAdmissionPolicy" {
                scope_selector(
                    &mut p["spec"]["matchConstraints"]["namespaceSelector"],
                    label,
                    id,
                );
            } else {
                p["spec"]["policyName"] = renamed(&p["spec"]["policyName"]);
            }
            out.push(p);
        }
    }
    out
}
