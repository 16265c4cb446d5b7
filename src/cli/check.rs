//! `reaper-controller check`: is Reaper installed and working, and where are the problems it
//! exists for? Cluster-wide: the install's health (CRDs as this binary defines them, the webhook
//! registered with a CA that matches its certificate and answering a dry-run pod create, the
//! certificate's days left, an agent report from every Linux node, no invalid or conflicting
//! policy), the namespaces opted in, the containers holding zombies, and every container whose
//! PID 1 is unprotected (no init, no `SIGTERM` handler) with the agent's evidence.
//!
//! [`assess`] is pure: it turns what [`gather`] read from the cluster into findings. Exit code 1
//! when any finding is a problem.
use crate::crd::{ReaperPolicy, ZombieReport};
use crate::keys;
use jiff::Timestamp;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use serde::Serialize;
use serde_json::json;
use std::time::Duration;

/// Flags of `reaper-controller check`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Namespace Reaper is installed in (the chart's release namespace).
    #[arg(
        long,
        env = "REAPER_RELEASE_NAMESPACE",
        default_value = "reaper-system"
    )]
    pub release_namespace: String,
    /// The MutatingWebhookConfiguration of the install (the chart's `<fullname>-webhook`).
    #[arg(long, env = "REAPER_WEBHOOK_CONFIG", default_value = "reaper-webhook")]
    pub webhook_config: String,
    /// The serving certificate Secret in the release namespace (`certs.secretName`); unreadable
    /// or absent: the certificate checks are skipped.
    #[arg(long, env = "REAPER_CERT_SECRET", default_value = "reaper-webhook-tls")]
    pub cert_secret: String,
    /// Create a pod in a throw-away namespace labelled `reaper.dev/inject=enabled` with
    /// `dryRun=All`, and expect the webhook's annotation back (needs create/delete namespaces).
    #[arg(long, env = "REAPER_CHECK_DRY_RUN_POD", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub dry_run_pod: bool,
    /// Expect a current report from an agent on every Linux node (the chart's `agent.enabled`).
    #[arg(long, env = "REAPER_CHECK_AGENTS", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub agents: bool,
    /// Only the install's health (no zombies list): what `helm test` runs.
    #[arg(long, env = "REAPER_CHECK_INSTALL_ONLY")]
    pub install_only: bool,
    /// A report older than this counts as missing (agents write at least every heartbeat).
    #[arg(long, env = "REAPER_CHECK_REPORT_MAX_AGE", default_value = "15m", value_parser = humantime::parse_duration)]
    pub report_max_age: Duration,
    /// Fewer days left on the serving certificate is a problem.
    #[arg(long, env = "REAPER_CHECK_CERT_DAYS", default_value_t = 14)]
    pub cert_days: i64,
    /// Output: `text` or `json`.
    #[arg(short = 'o', long, env = "REAPER_OUTPUT", default_value = "text")]
    pub output: super::explain::Output,
    /// Which pods the installation governs, as the installed webhook's flags (the chart passes
    /// its values).
    #[command(flatten)]
    pub scope: crate::scope::ScopeArgs,
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Info,
    Problem,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    /// `crds`, `webhook`, `certificate`, `agents`, `policies`, `namespaces`, `pods`, `zombies`,
    /// `pid1`.
    pub area: String,
    pub message: String,
}

fn finding(level: Level, area: &str, message: impl Into<String>) -> Finding {
    Finding {
        level,
        area: area.to_string(),
        message: message.into(),
    }
}

/// What [`gather`] read.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The served CRDs of Reaper's group (`None`: the API could not be read).
    pub crds: Vec<CustomResourceDefinition>,
    pub webhook: Option<MutatingWebhookConfiguration>,
    /// `ca.crt` and `tls.crt` of the serving Secret, when readable.
    pub serving_ca: Option<String>,
    pub serving_cert: Option<String>,
    /// What the dry-run pod came back annotated with (`Err`: why it failed; `None`: not tried).
    pub dry_run: Option<Result<Option<String>, String>>,
    /// Linux nodes.
    pub nodes: Vec<String>,
    pub reports: Vec<ZombieReport>,
    pub policies: Vec<ReaperPolicy>,
    /// Namespaces governed whole ([`crate::scope::NamespaceScope::All`]): labelled
    /// `reaper.dev/inject=enabled`, or every one not opted out under `--selection=opt-out`.
    pub opted_in: Vec<String>,
    /// Pods wrapped by each release (`reaper.dev/version`), when `--install-only` is not set.
    pub wrapped_by: std::collections::BTreeMap<String, usize>,
}

/// The findings, problems first within each area, in a fixed area order.
pub fn assess(f: &Facts, args: &Args, now: Timestamp) -> Vec<Finding> {
    let mut out = Vec::new();
    // CRDs: the served ones must be this binary's.
    for want in crate::crd::all() {
        let name = want.metadata.name.clone().unwrap_or_default();
        match f.crds.iter().find(|c| c.metadata.name.as_deref() == Some(&name)) {
            None => out.push(finding(
                Level::Problem,
                "crds",
                format!("{name} is not installed (kubectl apply --server-side -f crds/)"),
            )),
            Some(have) if same_versions(have, &want) => out.push(finding(
                Level::Ok,
                "crds",
                format!("{name} matches this release"),
            )),
            Some(_) => out.push(finding(
                Level::Problem,
                "crds",
                format!(
                    "{name} differs from this release's (upgrade: kubectl apply --server-side -f crds/)"
                ),
            )),
        }
    }
    // The webhook registration and its CA.
    match &f.webhook {
        None => out.push(finding(
            Level::Problem,
            "webhook",
            format!(
                "MutatingWebhookConfiguration {} not found (--webhook-config)",
                args.webhook_config
            ),
        )),
        Some(mwc) => {
            let bundles: Vec<String> = mwc
                .webhooks
                .iter()
                .flatten()
                .map(|w| {
                    w.client_config
                        .ca_bundle
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        .unwrap_or_default()
                })
                .collect();
            if bundles.iter().any(String::is_empty) {
                out.push(finding(
                    Level::Problem,
                    "webhook",
                    "a webhook of the configuration has no caBundle yet: the API server cannot call it",
                ));
            } else if let Some(ca) = &f.serving_ca {
                if bundles.iter().all(|b| b.contains(ca.trim())) {
                    out.push(finding(
                        Level::Ok,
                        "webhook",
                        "caBundle trusts the serving certificate's CA",
                    ));
                } else {
                    out.push(finding(
                        Level::Problem,
                        "webhook",
                        "caBundle does not contain the CA of the serving certificate: admission calls fail TLS",
                    ));
                }
            }
        }
    }
    if let Some(cert) = &f.serving_cert {
        match not_after(cert) {
            Some(at) => {
                let days = (at - now.as_second()) / 86_400;
                let level = if days < args.cert_days {
                    Level::Problem
                } else {
                    Level::Ok
                };
                out.push(finding(
                    level,
                    "certificate",
                    format!("serving certificate expires in {days} days"),
                ));
            }
            None => out.push(finding(
                Level::Problem,
                "certificate",
                "the serving certificate Secret holds no readable certificate",
            )),
        }
    }
    match &f.dry_run {
        None => {}
        Some(Ok(Some(a))) => out.push(finding(
            Level::Ok,
            "webhook",
            format!("answers: a dry-run pod came back {}={a}", keys::ANNOTATION_INJECTED),
        )),
        Some(Ok(None)) => out.push(finding(
            Level::Problem,
            "webhook",
            "a dry-run pod in an opted-in namespace came back unchanged: the webhook is not called or failed open (failurePolicy Ignore)",
        )),
        Some(Err(e)) => out.push(finding(
            Level::Problem,
            "webhook",
            format!("the dry-run pod create failed: {e}"),
        )),
    }
    // Agents: a fresh report per Linux node.
    let fresh = |r: &ZombieReport| {
        r.spec.observed_at.as_ref().is_some_and(|t| {
            now.duration_since(t.0).as_secs() <= args.report_max_age.as_secs() as i64
        })
    };
    let missing: Vec<&String> = f
        .nodes
        .iter()
        .filter(|n| {
            !f.reports
                .iter()
                .any(|r| &r.spec.node_name == *n && fresh(r))
        })
        .collect();
    if !args.agents {
        // Installed without the agent: nothing to expect.
    } else if missing.is_empty() {
        out.push(finding(
            Level::Ok,
            "agents",
            format!(
                "a current report from each of {} Linux nodes",
                f.nodes.len()
            ),
        ));
    } else {
        out.push(finding(
            Level::Problem,
            "agents",
            format!(
                "{} of {} Linux nodes have no report newer than {}: {}",
                missing.len(),
                f.nodes.len(),
                humantime::format_duration(args.report_max_age),
                names(&missing)
            ),
        ));
    }
    // Policies: every one Ready.
    for p in &f.policies {
        let name = p.metadata.name.clone().unwrap_or_default();
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        match ready {
            Some(c) if c.status == "True" => {}
            Some(c) => out.push(finding(
                Level::Problem,
                "policies",
                format!("ReaperPolicy {name}: {} ({})", c.reason, c.message),
            )),
            None => out.push(finding(
                Level::Info,
                "policies",
                format!("ReaperPolicy {name} has no status yet (is the operator running?)"),
            )),
        }
    }
    if args.scope.selection == crate::scope::Selection::OptOut {
        out.push(finding(
            Level::Info,
            "namespaces",
            format!(
                "every namespace takes part (--selection=opt-out) but the excluded ones and those labelled {}={}: {} governed",
                keys::LABEL_INJECT,
                keys::INJECT_DISABLED,
                f.opted_in.len()
            ),
        ));
    } else if f.opted_in.is_empty() {
        out.push(finding(
            Level::Info,
            "namespaces",
            "no namespace is opted in yet (kubectl label namespace NS reaper.dev/inject=enabled)",
        ));
    } else {
        out.push(finding(
            Level::Info,
            "namespaces",
            format!(
                "opted in: {}",
                names(&f.opted_in.iter().collect::<Vec<_>>())
            ),
        ));
    }
    if !args.install_only {
        for (version, pods) in &f.wrapped_by {
            if version != crate::webhook::decide::RELEASE {
                out.push(finding(
                    Level::Info,
                    "pods",
                    format!(
                        "{pods} pods were wrapped by release {version} (this is {}): they run its reaper until they are recreated",
                        crate::webhook::decide::RELEASE
                    ),
                ));
            }
        }
        let mut held: Vec<(String, u32, String)> = f
            .reports
            .iter()
            .flat_map(|r| r.spec.containers.iter())
            .map(|c| {
                let who = match (&c.namespace, &c.pod, &c.container) {
                    (Some(ns), Some(pod), Some(ct)) => format!("{ns}/{pod} container {ct}"),
                    _ => format!("pod uid {} container {}", c.pod_uid, c.container_id),
                };
                let parents = c
                    .parents
                    .iter()
                    .map(|p| p.comm.clone())
                    .collect::<Vec<_>>()
                    .join(", ");
                (who, c.count, parents)
            })
            .collect();
        held.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (who, count, parents) in held {
            out.push(finding(
                Level::Info,
                "zombies",
                format!("{who}: {count} zombies (held by {parents})"),
            ));
        }
        out.extend(pid1_findings(f));
    }
    out
}

/// Most containers named in one namespace's "protected" finding.
const PROTECTED_NAMES: usize = 10;

/// Every container's PID 1 as the agents found it: each unprotected one (no known init, no
/// `SIGTERM` handler) with the evidence, and per namespace the containers an init protects.
/// Info, not problems: a namespace that is not opted in is the user's choice, and in an opted-in
/// one the pod was left alone on purpose (`reaper.dev/inject: disabled`) or with an Event saying
/// why.
fn pid1_findings(f: &Facts) -> Vec<Finding> {
    let mut unprotected = Vec::new();
    let mut protected: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for c in f.reports.iter().flat_map(|r| r.spec.pid1s.iter()) {
        let (ns, pod) = match (&c.namespace, &c.pod) {
            (Some(ns), Some(pod)) => (ns.as_str(), pod.clone()),
            _ => ("", format!("pod uid {}", c.pod_uid)),
        };
        let container = c.container.as_deref().unwrap_or(&c.container_id);
        if c.unprotected() {
            let mut m = format!(
                "{}{pod} container {container}: PID 1 {:?} is not an init and does not handle SIGTERM (deletion waits the grace period)",
                if ns.is_empty() {
                    String::new()
                } else {
                    format!("{ns}/")
                },
                c.comm
            );
            if c.zombies > 0 {
                let names = c
                    .zombie_comms
                    .iter()
                    .map(|z| format!("{} {}", z.comm, z.count))
                    .collect::<Vec<_>>()
                    .join(", ");
                m.push_str(&format!("; it holds {} zombies ({names})", c.zombies));
            }
            if f.opted_in.iter().any(|o| o == ns) {
                m.push_str("; its namespace is opted in but the webhook left it alone (see the pod's events)");
            }
            unprotected.push(m);
        } else if let Some(init) = c.protected_by() {
            protected
                .entry(ns)
                .or_default()
                .push(format!("{pod}/{container} ({init})"));
        }
    }
    unprotected.sort();
    let mut out: Vec<Finding> = unprotected
        .into_iter()
        .map(|m| finding(Level::Info, "pid1", m))
        .collect();
    for (ns, mut who) in protected {
        who.sort();
        let n = who.len();
        let more = n.saturating_sub(PROTECTED_NAMES);
        who.truncate(PROTECTED_NAMES);
        let mut m = format!(
            "{}: {n} containers protected by an init: {}",
            if ns.is_empty() {
                "pods not known yet"
            } else {
                ns
            },
            who.join(", ")
        );
        if more > 0 {
            m.push_str(&format!(" and {more} more"));
        }
        out.push(finding(Level::Info, "pid1", m));
    }
    for r in &f.reports {
        if r.spec.truncated_pid1s > 0 {
            out.push(finding(
                Level::Info,
                "pid1",
                format!(
                    "node {}: {} more containers not in its report (the list is bounded)",
                    r.spec.node_name, r.spec.truncated_pid1s
                ),
            ));
        }
    }
    out
}

fn names(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// Same version names and schemas (what `kubectl apply -f crds/` of this release would leave).
fn same_versions(have: &CustomResourceDefinition, want: &CustomResourceDefinition) -> bool {
    let versions = |c: &CustomResourceDefinition| {
        c.spec
            .versions
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    serde_json::to_value(&v.schema).unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>()
    };
    versions(have) == versions(want)
}

fn not_after(pem: &str) -> Option<i64> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(block.parse_x509().ok()?.validity().not_after.timestamp())
}

/// Reads the cluster; each part that cannot be read is left empty and shows up as a finding.
pub async fn gather(client: &kube::Client, args: &Args) -> Result<Facts, kube::Error> {
    let mut f = Facts::default();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for c in crate::crd::all() {
        if let Some(name) = c.metadata.name.as_deref()
            && let Some(have) = crds.get_opt(name).await?
        {
            f.crds.push(have);
        }
    }
    f.webhook = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(&args.webhook_config)
        .await?;
    // Reading the Secret needs a right `check` may not have: then the certificate is not judged.
    if let Ok(Some(secret)) = Api::<Secret>::namespaced(client.clone(), &args.release_namespace)
        .get_opt(&args.cert_secret)
        .await
    {
        let text = |k: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(k))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .filter(|s| !s.is_empty())
        };
        f.serving_ca = text(keys::SECRET_KEY_CA);
        f.serving_cert = text("tls.crt");
    }
    f.nodes = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|n| {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/os"))
                .is_none_or(|os| os == "linux")
        })
        .filter_map(|n| n.metadata.name)
        .collect();
    f.reports = Api::<ZombieReport>::all(client.clone())
        .list(&Default::default())
        .await?
        .items;
    f.policies = Api::<ReaperPolicy>::all(client.clone())
        .list(&Default::default())
        .await?
        .items;
    let scope = args.scope.scope(Some(&args.release_namespace));
    f.opted_in = Api::<Namespace>::all(client.clone())
        .list_metadata(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| {
            let name = n.metadata.name?;
            let labels = n.metadata.labels.unwrap_or_default();
            (scope.namespace(&name, &labels) == crate::scope::NamespaceScope::All).then_some(name)
        })
        .collect();
    if !args.install_only {
        let pods = Api::<Pod>::all(client.clone())
            .list_metadata(&Default::default())
            .await?;
        for p in pods.items {
            if let Some(v) = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(keys::ANNOTATION_VERSION))
            {
                *f.wrapped_by.entry(v.clone()).or_default() += 1;
            }
        }
    }
    if args.dry_run_pod {
        f.dry_run = Some(dry_run_pod(client, &scope).await);
    }
    Ok(f)
}

/// A pod created with `dryRun=All` in a throw-away opted-in namespace (with labels that satisfy
/// `--namespace-selector`, and the pod `--object-selector`): what did the webhook answer? The
/// namespace is deleted afterwards.
async fn dry_run_pod(
    client: &kube::Client,
    scope: &crate::scope::Scope,
) -> Result<Option<String>, String> {
    let [ns_labels, pod_labels] = scope.governed_labels()?;
    let namespaces = Api::<Namespace>::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"generateName": "reaper-check-", "labels": ns_labels}
    }))
    .map_err(|e| e.to_string())?;
    let ns = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|e| format!("creating a throw-away namespace: {e}"))?;
    let name = ns.metadata.name.clone().unwrap_or_default();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "reaper-check", "labels": pod_labels},
        "spec": {"containers": [{
            "name": "check", "image": "busybox:1.36", "command": ["sleep", "3600"],
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
        }]}
    }))
    .map_err(|e| e.to_string())?;
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let result = Api::<Pod>::namespaced(client.clone(), &name)
        .create(&dry, &pod)
        .await
        .map(|p| {
            p.metadata
                .annotations
                .and_then(|a| a.get(keys::ANNOTATION_INJECTED).cloned())
        })
        .map_err(|e| e.to_string());
    let _ = namespaces.delete(&name, &DeleteParams::default()).await;
    result
}

/// Gathers, assesses, prints; `Ok(false)` when there are problems.
pub async fn run(args: Args) -> anyhow::Result<bool> {
    let client = kube::Client::try_default().await?;
    let facts = gather(&client, &args).await?;
    let findings = assess(&facts, &args, Timestamp::now());
    let problems = findings
        .iter()
        .filter(|f| f.level == Level::Problem)
        .count();
    match args.output {
        super::explain::Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({"problems": problems, "findings": findings}))?
        ),
        super::explain::Output::Text => {
            for f in &findings {
                let mark = match f.level {
                    Level::Ok => "ok     ",
                    Level::Info => "info   ",
                    Level::Problem => "PROBLEM",
                };
                println!("{mark} {:<12} {}", f.area, f.message);
            }
            println!(
                "{}",
                if problems == 0 {
                    "no problems found".to_string()
                } else {
                    format!("{problems} problem(s)")
                }
            );
        }
    }
    Ok(problems == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args() -> Args {
        Cli::parse_from(["check"]).args
    }

    fn report(node: &str, at: &str) -> ZombieReport {
        serde_json::from_value(json!({
            "apiVersion": "reaper.dev/v1alpha1", "kind": "ZombieReport",
            "metadata": {"name": node},
            "spec": {"nodeName": node, "observedAt": at, "zombies": 3, "containers": [
                {"podUid": "u1", "containerId": "c1", "namespace": "shop", "pod": "web-0",
                 "container": "app", "count": 3, "parents": [{"pid": 7, "comm": "php-fpm", "count": 3}]}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn a_healthy_install_has_no_problem_and_lists_the_zombies() {
        let now: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let webhook = serde_json::from_value(json!({
            "metadata": {"name": "reaper-webhook"},
            "webhooks": [{"name": "pods.reaper.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                          "clientConfig": {"caBundle": "LS0tQ0EtLS0K"}}]
        }))
        .unwrap();
        let f = Facts {
            crds: crate::crd::all(),
            webhook: Some(webhook),
            serving_ca: Some("---CA---".into()),
            dry_run: Some(Ok(Some("inject:check".into()))),
            nodes: vec!["n1".into()],
            reports: vec![report("n1", "2026-12-07T09:59:00Z")],
            opted_in: vec!["shop".into()],
            wrapped_by: [
                ("0.0.1".to_string(), 2),
                (crate::webhook::decide::RELEASE.to_string(), 5),
            ]
            .into(),
            ..Default::default()
        };
        let found = assess(&f, &args(), now);
        assert!(
            found.iter().all(|f| f.level != Level::Problem),
            "{found:#?}"
        );
        let older: Vec<&Finding> = found.iter().filter(|f| f.area == "pods").collect();
        assert_eq!(older.len(), 1, "{found:#?}");
        assert!(
            older[0]
                .message
                .starts_with("2 pods were wrapped by release 0.0.1")
        );
        assert!(found.iter().any(|f| f.area == "zombies"
            && f.message == "shop/web-0 container app: 3 zombies (held by php-fpm)"));
    }

    #[test]
    fn unprotected_pid1s_are_listed_with_evidence_and_inits_count_as_protected() {
        let now: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let mut r = report("n1", "2026-12-07T09:59:00Z");
        r.spec.pid1s = serde_json::from_value(json!([
            {"podUid": "u1", "containerId": "c1", "namespace": "shop", "pod": "web-0",
             "container": "app", "comm": "sleep", "pid1": true, "children": 4, "zombies": 3,
             "zombieComms": [{"comm": "sh", "count": 2}, {"comm": "curl", "count": 1}]},
            {"podUid": "u2", "containerId": "c2", "namespace": "batch", "pod": "job-1",
             "container": "run", "comm": "sleep", "pid1": true},
            // Wrapped by the webhook, or the image's own init.
            {"podUid": "u3", "containerId": "c3", "namespace": "shop", "pod": "web-1",
             "container": "app", "comm": "reaper", "init": "reaper", "handlesSigterm": true, "pid1": true},
            {"podUid": "u4", "containerId": "c4", "namespace": "shop", "pod": "db-0",
             "container": "db", "comm": "tini", "init": "tini", "handlesSigterm": true, "pid1": true},
            // shareProcessNamespace: pause is the init.
            {"podUid": "u5", "containerId": "c5", "namespace": "batch", "pod": "shared",
             "container": "app", "comm": "sleep", "pid1": false},
            // Handles SIGTERM: stops in time, not listed either way.
            {"podUid": "u6", "containerId": "c6", "namespace": "shop", "pod": "api-0",
             "container": "api", "comm": "java", "handlesSigterm": true, "pid1": true},
            // hostPID: not a namespace init.
            {"podUid": "u7", "containerId": "c7", "namespace": "kube-system", "pod": "agent",
             "container": "agent", "comm": "sleep", "pid1": false, "hostPid": true},
            // Not known yet.
            {"podUid": "u8", "containerId": "c8", "comm": "sh", "pid1": true}
        ]))
        .unwrap();
        r.spec.truncated_pid1s = 2;
        let f = Facts {
            reports: vec![r],
            opted_in: vec!["shop".into()],
            ..Default::default()
        };
        let found = assess(&f, &args(), now);
        let pid1: Vec<(&Level, &str)> = found
            .iter()
            .filter(|f| f.area == "pid1")
            .map(|f| (&f.level, f.message.as_str()))
            .collect();
        assert_eq!(
            pid1,
            [
                (
                    &Level::Info,
                    "batch/job-1 container run: PID 1 \"sleep\" is not an init and does not handle SIGTERM (deletion waits the grace period)"
                ),
                (
                    &Level::Info,
                    "pod uid u8 container c8: PID 1 \"sh\" is not an init and does not handle SIGTERM (deletion waits the grace period)"
                ),
                (
                    &Level::Info,
                    "shop/web-0 container app: PID 1 \"sleep\" is not an init and does not handle SIGTERM (deletion waits the grace period); it holds 3 zombies (sh 2, curl 1); its namespace is opted in but the webhook left it alone (see the pod's events)"
                ),
                (
                    &Level::Info,
                    "batch: 1 containers protected by an init: shared/app (pause)"
                ),
                (
                    &Level::Info,
                    "shop: 2 containers protected by an init: db-0/db (tini), web-1/app (reaper)"
                ),
                (
                    &Level::Info,
                    "node n1: 2 more containers not in its report (the list is bounded)"
                ),
            ],
            "{found:#?}"
        );
        // Only the install with --install-only.
        let mut install_only = args();
        install_only.install_only = true;
        assert!(
            assess(&f, &install_only, now)
                .iter()
                .all(|f| f.area != "pid1")
        );
    }

    #[test]
    fn each_broken_part_is_a_problem() {
        let now: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let mut old_crd = crate::crd::all();
        old_crd[0].spec.versions[0].name = "v1alpha0".into();
        let f = Facts {
            crds: old_crd,
            webhook: None,
            dry_run: Some(Ok(None)),
            nodes: vec!["n1".into(), "n2".into()],
            reports: vec![report("n1", "2026-12-07T09:00:00Z")],
            ..Default::default()
        };
        let found = assess(&f, &args(), now);
        let problems: Vec<&str> = found
            .iter()
            .filter(|f| f.level == Level::Problem)
            .map(|f| f.area.as_str())
            .collect();
        assert_eq!(
            problems,
            ["crds", "webhook", "webhook", "agents"],
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|f| f.message.starts_with("2 of 2 Linux nodes have no report")),
            "{found:#?}"
        );
    }
}
