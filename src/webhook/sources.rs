//! Where policies and namespace labels come from: a YAML file (`--policies`, no API server) or
//! kube-runtime reflectors over ReaperPolicy objects and Namespace metadata. Either way the
//! request path only reads in-memory snapshots; it never calls the API server.
use super::{Error, Result};
use crate::component::Tasks;
use crate::crd::{PolicySet, ReaperPolicy};
use crate::keys;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Read-only view of the current policies and namespace labels, cheap to clone.
#[derive(Clone)]
pub struct Sources {
    policies: watch::Receiver<Arc<PolicySet>>,
    namespaces: Namespaces,
    synced: Arc<AtomicBool>,
}

#[derive(Clone)]
enum Namespaces {
    /// `--policies` mode: a namespace is known by its name only.
    NameOnly,
    Store(Store<PartialObjectMeta<Namespace>>),
}

/// Labels of a namespace as the planner sees them.
pub struct NamespaceLabels {
    pub labels: BTreeMap<String, String>,
    /// Set when the namespace is not (yet) in the reflector's store.
    pub warning: Option<String>,
}

impl Sources {
    /// Fixed policies, namespaces known by name (tests, benchmarks, fuzzing).
    pub fn fixed(policies: PolicySet) -> Self {
        let (_tx, rx) = watch::channel(Arc::new(policies));
        Self {
            policies: rx,
            namespaces: Namespaces::NameOnly,
            synced: Arc::new(AtomicBool::new(true)),
        }
    }

    /// No policies and not synced: what the cluster mode looks like before its first list.
    pub fn unsynced() -> Self {
        let s = Self::fixed(PolicySet::default());
        s.synced.store(false, Ordering::Release);
        s
    }

    /// The current policy set.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.borrow().clone()
    }

    /// Whether the first full list of policies (and namespaces) has been received.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn namespace_labels(&self, namespace: &str) -> NamespaceLabels {
        let name_only = || {
            BTreeMap::from([(
                keys::LABEL_NAMESPACE_NAME.to_string(),
                namespace.to_string(),
            )])
        };
        match &self.namespaces {
            Namespaces::NameOnly => NamespaceLabels {
                labels: name_only(),
                warning: None,
            },
            Namespaces::Store(store) => match store.get(&ObjectRef::new(namespace)) {
                Some(ns) => NamespaceLabels {
                    labels: ns.metadata.labels.clone().unwrap_or_default(),
                    warning: None,
                },
                None => NamespaceLabels {
                    labels: name_only(),
                    warning: Some(format!(
                        "reaper: namespace {namespace:?} is not yet known to the webhook; policies were matched by its name only"
                    )),
                },
            },
        }
    }
}

/// Parse a YAML stream of ReaperPolicy objects (`---` separated; empty documents skipped).
pub fn parse_policies(yaml: &str) -> Result<Vec<ReaperPolicy>> {
    let mut out: Vec<ReaperPolicy> = Vec::new();
    let mut names = BTreeSet::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(yaml).enumerate() {
        let value = yaml_serde::Value::deserialize(doc).map_err(|e| Error::Policies {
            document: i + 1,
            reason: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let bad = |reason: String| Error::Policies {
            document: i + 1,
            reason,
        };
        let api_version = value.get("apiVersion").and_then(|v| v.as_str());
        let expected = format!("{}/{}", keys::API_GROUP, keys::API_VERSION);
        if api_version != Some(expected.as_str())
            || value.get("kind").and_then(|v| v.as_str()) != Some("ReaperPolicy")
        {
            return Err(bad(format!(
                "expected apiVersion {expected} and kind ReaperPolicy, found {:?} {:?}",
                api_version.unwrap_or_default(),
                value
                    .get("kind")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
            )));
        }
        let policy: ReaperPolicy = yaml_serde::from_value(value).map_err(|e| bad(e.to_string()))?;
        let name = policy
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("metadata.name is missing".to_string()))?;
        if !names.insert(name.clone()) {
            return Err(bad(format!("a second policy is named {name:?}")));
        }
        out.push(policy);
    }
    Ok(out)
}

fn load_file(path: &Path, contents: &[u8]) -> Result<PolicySet> {
    let text = std::str::from_utf8(contents).map_err(|_| Error::Policies {
        document: 0,
        reason: format!("{} is not UTF-8 text", path.display()),
    })?;
    let policies = parse_policies(text)?;
    Ok(PolicySet::new(policies.into_iter().map(Arc::new)))
}

/// `--policies FILE`: load now (an invalid file is a startup error), then reload on change
/// (an invalid new version is logged and the previous policies stay).
pub async fn from_file(
    path: PathBuf,
    tasks: &Tasks,
    on_reload: impl Fn(usize) + Send + 'static,
) -> Result<Sources> {
    let shutdown = tasks.shutdown();
    let contents = tokio::fs::read(&path)
        .await
        .map_err(|source| Error::PoliciesRead {
            path: path.clone(),
            source,
        })?;
    let set = load_file(&path, &contents)?;
    tracing::info!(path = %path.display(), policies = set.len(), "policies loaded");
    on_reload(set.len());
    let (tx, rx) = watch::channel(Arc::new(set));
    let watched = path.clone();
    tasks.spawn("policies file watch", async move {
        let mut first = true;
        super::files::watch(vec![watched.clone()], Duration::from_secs(1), shutdown, move |c| {
            // The first read is what was just loaded.
            if std::mem::take(&mut first) && c[0] == contents {
                return;
            }
            match load_file(&watched, &c[0]) {
                Ok(set) => {
                    tracing::info!(path = %watched.display(), policies = set.len(), "policies reloaded");
                    on_reload(set.len());
                    tx.send_replace(Arc::new(set));
                }
                Err(e) => tracing::error!(path = %watched.display(), error = %e, "invalid policies file; keeping the previous policies"),
            }
        })
        .await;
    });
    Ok(Sources {
        policies: rx,
        namespaces: Namespaces::NameOnly,
        synced: Arc::new(AtomicBool::new(true)),
    })
}

/// Cluster mode: reflectors over ReaperPolicies and Namespace metadata. The returned sources
/// report synced once both initial lists arrived.
pub fn from_cluster(
    client: kube::Client,
    tasks: &Tasks,
    on_reload: impl Fn(usize) + Send + 'static,
) -> Sources {
    let shutdown = tasks.shutdown();
    let (tx, rx) = watch::channel(Arc::new(PolicySet::default()));
    let synced = Arc::new(AtomicBool::new(false));
    let (policy_store, policy_writer) = reflector::store::<ReaperPolicy>();
    let (ns_store, ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();

    let policy_stream = reflector::reflector(
        policy_writer,
        watcher(
            Api::<ReaperPolicy>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    let store = policy_store.clone();
    let stop = shutdown.clone();
    tasks.spawn("ReaperPolicy watch", async move {
        let mut stream = std::pin::pin!(policy_stream);
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = stream.next() => e,
            };
            match event {
                Some(Ok(
                    watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_),
                )) => {
                    let set = PolicySet::new(store.state());
                    for e in set.entries() {
                        if let Some(err) = &e.invalid {
                            tracing::warn!(policy = e.policy.metadata.name.as_deref().unwrap_or_default(), error = %err, "policy has an invalid selector and matches nothing");
                        }
                    }
                    on_reload(set.len());
                    tx.send_replace(Arc::new(set));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "watching ReaperPolicies (retrying)"),
                None => return,
            }
        }
    });

    let ns_stream = reflector::reflector(
        ns_writer,
        // A metadata-only watch: namespaces' labels are all the planner needs.
        watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    let stop = shutdown.clone();
    tasks.spawn("Namespace watch", async move {
        let mut stream = std::pin::pin!(ns_stream);
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = stream.next() => e,
            };
            match event {
                Some(Err(e)) => tracing::warn!(error = %e, "watching Namespaces (retrying)"),
                Some(Ok(_)) => {}
                None => return,
            }
        }
    });

    let flag = synced.clone();
    let (p, n) = (policy_store, ns_store.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            r = async { p.wait_until_ready().await?; n.wait_until_ready().await } => {
                if r.is_ok() {
                    tracing::info!("policies and namespaces synced");
                    flag.store(true, Ordering::Release);
                }
            }
        }
    });

    Sources {
        policies: rx,
        namespaces: Namespaces::Store(ns_store),
        synced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stream() {
        let yaml = r#"
---
apiVersion: reaper.dev/v1alpha1
kind: ReaperPolicy
metadata: {name: web}
spec:
  priority: 10
  mode: Inject
  namespaceSelector:
    matchLabels: {kubernetes.io/metadata.name: web}
---
---
apiVersion: reaper.dev/v1alpha1
kind: ReaperPolicy
metadata: {name: all}
spec: {}
"#;
        let p = parse_policies(yaml).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].spec.priority, 10);
        let set = PolicySet::new(p.into_iter().map(Arc::new));
        let s = Sources::fixed(set);
        let web = s.namespace_labels("web").labels;
        assert_eq!(
            s.policies()
                .winner(&web, &BTreeMap::new())
                .unwrap()
                .metadata
                .name
                .as_deref(),
            Some("web")
        );
        let other = s.namespace_labels("other").labels;
        assert_eq!(
            s.policies()
                .winner(&other, &BTreeMap::new())
                .unwrap()
                .metadata
                .name
                .as_deref(),
            Some("all")
        );
    }

    #[test]
    fn rejects_bad_files() {
        for (yaml, want) in [
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
                "expected apiVersion",
            ),
            (
                "apiVersion: reaper.dev/v1alpha1\nkind: ReaperPolicy\nmetadata: {}\nspec: {}\n",
                "metadata.name",
            ),
            (
                "apiVersion: reaper.dev/v1alpha1\nkind: ReaperPolicy\nmetadata: {name: a}\nspec: {mode: Sometimes}\n",
                "Sometimes",
            ),
            (
                "apiVersion: reaper.dev/v1alpha1\nkind: ReaperPolicy\nmetadata: {name: a}\nspec: {}\n---\napiVersion: reaper.dev/v1alpha1\nkind: ReaperPolicy\nmetadata: {name: a}\nspec: {}\n",
                "second policy",
            ),
            ("a: [", "document 1"),
        ] {
            let err = parse_policies(yaml).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }
}
