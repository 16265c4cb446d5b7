//! `--registry-auth=pull-secrets`: the pod's `imagePullSecrets`, then its ServiceAccount's, read
//! through the API server (RBAC: `get` on secrets and serviceaccounts) and remembered for a short
//! while so that admissions of a busy namespace do not each cost API round trips.
use super::auth::{self, Keyring, ParsedConfig};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::Api;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a secret or ServiceAccount read is reused (a rotated secret is seen after this).
pub const SECRET_TTL: Duration = Duration::from_secs(30);
const CAPACITY: usize = 4096;

pub const TYPE_DOCKERCONFIGJSON: &str = "kubernetes.io/dockerconfigjson";
pub const TYPE_DOCKERCFG: &str = "kubernetes.io/dockercfg";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Secret(String, String),
    ServiceAccount(String, String),
}

#[derive(Clone)]
enum Value {
    Secret(Option<Arc<ParsedConfig>>),
    ServiceAccount(Vec<String>),
}

pub struct PullSecrets {
    client: kube::Client,
    cache: Mutex<LruCache<Key, (Instant, Value)>>,
}

type Parser = fn(&[u8]) -> Result<ParsedConfig, auth::ConfigError>;

/// The credentials a secret holds, or why it holds none (for a debug log).
pub fn parse_secret(secret: &Secret) -> Result<ParsedConfig, String> {
    let ty = secret.type_.as_deref().unwrap_or_default();
    let data = secret.data.as_ref();
    let (field, parse): (&str, Parser) = match ty {
        TYPE_DOCKERCONFIGJSON => (".dockerconfigjson", auth::parse_dockerconfigjson),
        TYPE_DOCKERCFG => (".dockercfg", auth::parse_dockercfg),
        other => {
            return Err(format!(
                "type {other:?} is not {TYPE_DOCKERCONFIGJSON} or {TYPE_DOCKERCFG}"
            ));
        }
    };
    let bytes = data
        .and_then(|d| d.get(field))
        .ok_or_else(|| format!("no {field} in its data"))?;
    parse(&bytes.0).map_err(|e| e.to_string())
}

/// Names of the pull secrets to read for `pod`, pod's first; and its ServiceAccount's name.
pub fn pod_secret_names(pod: &Pod) -> (Vec<String>, String) {
    let spec = pod.spec.as_ref();
    let names = spec
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .filter(|r| !r.name.is_empty())
        .map(|r| r.name.clone())
        .collect();
    #[allow(deprecated)]
    let sa = spec
        .and_then(|s| {
            s.service_account_name
                .clone()
                .or_else(|| s.service_account.clone())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    (names, sa)
}

impl PullSecrets {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    fn cached(&self, key: &Key) -> Option<Value> {
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match c.get(key) {
            Some((at, v)) if at.elapsed() < SECRET_TTL => Some(v.clone()),
            _ => None,
        }
    }

    fn remember(&self, key: Key, value: Value) {
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        c.put(key, (Instant::now(), value));
    }

    /// The keyring for `pod` in `namespace`: its own pull secrets, then its ServiceAccount's
    /// (the ServiceAccount admission plugin only copies those when the pod has none; they are
    /// added here in any case, after the pod's). Unreadable secrets are skipped with a log line.
    pub async fn keyring_for(&self, pod: &Pod, namespace: &str) -> Keyring {
        let (mut names, sa) = pod_secret_names(pod);
        for n in self.service_account_secrets(namespace, &sa).await {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let configs =
            futures::future::join_all(names.iter().map(|n| self.secret(namespace, n))).await;
        Keyring::new(configs.iter().flatten().map(|c| c.as_ref()))
    }

    async fn service_account_secrets(&self, namespace: &str, name: &str) -> Vec<String> {
        let key = Key::ServiceAccount(namespace.to_string(), name.to_string());
        if let Some(Value::ServiceAccount(v)) = self.cached(&key) {
            return v;
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let names: Vec<String> = match api.get_opt(name).await {
            Ok(sa) => sa
                .and_then(|sa| sa.image_pull_secrets)
                .into_iter()
                .flatten()
                .map(|r| r.name)
                .filter(|n| !n.is_empty())
                .collect(),
            Err(e) => {
                tracing::warn!(namespace, serviceaccount = name, error = %e, "cannot read the ServiceAccount's imagePullSecrets (RBAC: get serviceaccounts)");
                // Not remembered: the next admission tries again.
                return Vec::new();
            }
        };
        self.remember(key, Value::ServiceAccount(names.clone()));
        names
    }

    async fn secret(&self, namespace: &str, name: &str) -> Option<Arc<ParsedConfig>> {
        let key = Key::Secret(namespace.to_string(), name.to_string());
        if let Some(Value::Secret(v)) = self.cached(&key) {
            return v;
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let parsed = match api.get_opt(name).await {
            Ok(Some(s)) => match parse_secret(&s) {
                Ok(p) => {
                    if !p.ignored_helpers.is_empty() {
                        tracing::debug!(namespace, secret = name, helpers = ?p.ignored_helpers, "credential helpers in a pull secret are never run");
                    }
                    Some(Arc::new(p))
                }
                Err(why) => {
                    tracing::debug!(namespace, secret = name, %why, "pull secret holds no usable registry credentials");
                    None
                }
            },
            Ok(None) => {
                tracing::debug!(namespace, secret = name, "pull secret does not exist");
                None
            }
            Err(e) => {
                tracing::warn!(namespace, secret = name, error = %e, "cannot read pull secret (RBAC: get secrets)");
                return None;
            }
        };
        self.remember(key, Value::Secret(parsed.clone()));
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{LocalObjectReference, PodSpec};
    use std::collections::BTreeMap;

    fn secret(ty: &str, field: &str, body: &str) -> Secret {
        Secret {
            type_: Some(ty.to_string()),
            data: Some(BTreeMap::from([(
                field.to_string(),
                ByteString(body.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn secret_types() {
        let ok = secret(
            TYPE_DOCKERCONFIGJSON,
            ".dockerconfigjson",
            r#"{"auths":{"r:5000":{"username":"u","password":"p"}}}"#,
        );
        assert_eq!(parse_secret(&ok).unwrap().entries.len(), 1);
        let legacy = secret(
            TYPE_DOCKERCFG,
            ".dockercfg",
            r#"{"r:5000":{"auth":"dTpw"}}"#,
        );
        assert_eq!(parse_secret(&legacy).unwrap().entries[0].1.username, "u");
        let opaque = secret("Opaque", ".dockerconfigjson", "{}");
        assert!(parse_secret(&opaque).unwrap_err().contains("Opaque"));
        let empty = secret(TYPE_DOCKERCONFIGJSON, "other", "{}");
        assert!(
            parse_secret(&empty)
                .unwrap_err()
                .contains("no .dockerconfigjson")
        );
    }

    #[test]
    fn names_from_the_pod() {
        let mut pod = Pod {
            spec: Some(PodSpec {
                image_pull_secrets: Some(vec![
                    LocalObjectReference { name: "a".into() },
                    LocalObjectReference {
                        name: String::new(),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            pod_secret_names(&pod),
            (vec!["a".to_string()], "default".to_string())
        );
        pod.spec.as_mut().unwrap().service_account_name = Some("builder".into());
        assert_eq!(pod_secret_names(&pod).1, "builder");
    }
}
