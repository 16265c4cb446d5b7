//! The I/O side of policy reports ([`super::reports`]): which report API the API server serves,
//! what the operator's reports hold now, and writing only the ones that changed.
//!
//! - **Discovery** (`GET /apis/openreports.io/v1alpha1`, `/apis/wgpolicyk8s.io/v1alpha2`: allowed
//!   to every authenticated user) at the first batch, every [`Settings::report_resync`] and after
//!   a failed write (a CRD removed, RBAC missing); [`choose`] picks the API.
//! - **Re-list** with each discovery: the operator's reports (label
//!   `app.kubernetes.io/managed-by=reaper-operator`, name `reaper`) of the chosen kind are what it
//!   compares against, so a report edited or deleted by hand is repaired within one resync, and a
//!   new leader starts from what is stored, not from nothing. With `auto`, its reports of a
//!   served kind it no longer writes (switching to Open Reports when that CRD appears) are
//!   deleted, so no finding shows twice.
//! - **Writes**: a server-side apply (field manager `reaper-operator`, forced) of a namespace's
//!   report only when its content differs from the stored one; a delete for namespaces no longer
//!   governed. An unchanged cluster costs no request.
//!
//! [`Settings::report_resync`]: super::status::Settings::report_resync
use super::metrics::{OperatorMetrics, ReportWriteLabels};
use super::reports::{self, PolicyReports, ReportApi, ReportBody, choose};
use crate::keys;
use jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("discovering the policy report APIs ({api}): {source}")]
    Discovery { api: String, source: kube::Error },
    #[error(
        "listing {api} objects: {source} (does the operator's role allow list on {plural}.{group}?)"
    )]
    List {
        api: ReportApi,
        plural: &'static str,
        group: &'static str,
        source: kube::Error,
    },
    #[error(
        "writing {api} {namespace}/{name}: {source} (does the operator's role allow patch and create on {plural}.{group}?)",
        name = keys::POLICY_REPORT_NAME
    )]
    Write {
        api: ReportApi,
        namespace: String,
        plural: &'static str,
        group: &'static str,
        source: kube::Error,
    },
    #[error(
        "deleting {api} {namespace}/{name}: {source} (does the operator's role allow delete on {plural}.{group}?)",
        name = keys::POLICY_REPORT_NAME
    )]
    Delete {
        api: ReportApi,
        namespace: String,
        plural: &'static str,
        group: &'static str,
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operator's reports as it knows them, and when to look again.
pub struct ReportWriter {
    mode: PolicyReports,
    resync: Duration,
    api: Option<ReportApi>,
    /// Last discovery; `None`: due now (never done, or a write failed).
    discovered_at: Option<Timestamp>,
    /// Namespace → the stored report of `api` (`None`: present but not in a form the operator
    /// writes, so rewritten).
    stored: BTreeMap<String, Option<ReportBody>>,
}

impl ReportWriter {
    pub fn new(mode: PolicyReports, resync: Duration) -> Self {
        Self {
            mode,
            resync,
            api: None,
            discovered_at: None,
            stored: BTreeMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.mode != PolicyReports::Off
    }

    /// The API written to, once discovered.
    pub fn api(&self) -> Option<ReportApi> {
        self.api
    }

    /// The stored report of `namespace`, as far as the operator knows.
    pub fn stored(&self, namespace: &str) -> Option<&ReportBody> {
        self.stored.get(namespace)?.as_ref()
    }

    /// When the next discovery and re-list are due.
    pub fn next_resync(&self) -> Option<Timestamp> {
        if !self.enabled() {
            return None;
        }
        Some(match self.discovered_at {
            Some(at) => super::actions::add(at, self.resync),
            None => Timestamp::UNIX_EPOCH,
        })
    }

    /// Discovers the served APIs and re-lists the stored reports when due (see the module docs).
    pub async fn refresh_if_due(
        &mut self,
        client: &Client,
        metrics: &OperatorMetrics,
        now: Timestamp,
    ) -> Result<()> {
        if !self.enabled() || self.next_resync().is_some_and(|due| due > now) {
            return Ok(());
        }
        let mut served = BTreeSet::new();
        for api in ReportApi::ALL {
            match client.list_api_group_resources(&api.api_version()).await {
                Ok(list) if list.resources.iter().any(|r| r.name == api.plural()) => {
                    served.insert(api);
                }
                Ok(_) => {}
                // Not served: a plain-text `404 page not found`, not a Status.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(Error::Discovery {
                        api: api.api_version(),
                        source,
                    });
                }
            }
        }
        let chosen = choose(self.mode, &served);
        if chosen != self.api || self.discovered_at.is_none() {
            match chosen {
                Some(api) => tracing::info!(%api, "writing policy reports"),
                None => tracing::warn!(
                    mode = ?self.mode,
                    served = ?served.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "no policy report API to write to: install the openreports.io (or wgpolicyk8s.io) \
                     CRDs, e.g. with Policy Reporter or Kyverno; checking again every {}",
                    humantime::format_duration(self.resync)
                ),
            }
        }
        // `auto`: ours of a served kind no longer written are deleted, so no finding shows twice
        // (an explicit kind is granted no rights on the other).
        let others = served
            .iter()
            .copied()
            .filter(|a| self.mode == PolicyReports::Auto && Some(*a) != chosen);
        for other in others {
            for namespace in list(client, other).await?.into_keys() {
                delete(client, metrics, other, &namespace).await?;
                tracing::info!(api = %other, %namespace, "policy report of the kind no longer written deleted");
            }
        }
        self.stored = match chosen {
            Some(api) => list(client, api).await?,
            None => BTreeMap::new(),
        };
        self.api = chosen;
        self.discovered_at = Some(now);
        Ok(())
    }

    /// Applies the reports that differ from the stored ones and deletes those of namespaces not
    /// in `desired`. Every namespace is tried; the first error is returned, and the next batch
    /// discovers again.
    pub async fn write(
        &mut self,
        client: &Client,
        metrics: &OperatorMetrics,
        desired: BTreeMap<String, ReportBody>,
    ) -> Result<()> {
        let Some(api) = self.api else {
            return Ok(());
        };
        let mut first_error = None;
        for (namespace, body) in desired.iter() {
            if self.stored(namespace) == Some(body) {
                continue;
            }
            match apply(client, metrics, api, namespace, body).await {
                Ok(()) => {
                    tracing::info!(%api, %namespace, pass = body.summary.pass, fail = body.summary.fail, skip = body.summary.skip, "policy report written");
                    self.stored.insert(namespace.clone(), Some(body.clone()));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let gone: Vec<String> = self
            .stored
            .keys()
            .filter(|ns| !desired.contains_key(*ns))
            .cloned()
            .collect();
        for namespace in gone {
            match delete(client, metrics, api, &namespace).await {
                Ok(()) => {
                    tracing::info!(%api, %namespace, "namespace no longer governed: policy report deleted");
                    self.stored.remove(&namespace);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => {
                self.discovered_at = None;
                Err(e)
            }
            None => Ok(()),
        }
    }
}

/// The operator's reports of `api`, by namespace.
async fn list(client: &Client, api: ReportApi) -> Result<BTreeMap<String, Option<ReportBody>>> {
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &api.resource());
    let selector = format!("{}={}", keys::LABEL_MANAGED_BY, keys::MANAGER_OPERATOR);
    let list = all
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::List {
            api,
            plural: api.plural(),
            group: api.group(),
            source,
        })?;
    Ok(list
        .items
        .iter()
        .filter(|o| o.name_any() == keys::POLICY_REPORT_NAME)
        .filter_map(|o| Some((o.namespace()?, reports::body_of(&o.data))))
        .collect())
}

async fn apply(
    client: &Client,
    metrics: &OperatorMetrics,
    api: ReportApi,
    namespace: &str,
    body: &ReportBody,
) -> Result<()> {
    let object = reports::to_object(api, namespace, body);
    Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &api.resource())
        .patch(
            keys::POLICY_REPORT_NAME,
            &PatchParams::apply(keys::MANAGER_OPERATOR).force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(|source| Error::Write {
            api,
            namespace: namespace.to_string(),
            plural: api.plural(),
            group: api.group(),
            source,
        })?;
    count(metrics, "apply", api);
    Ok(())
}

/// Deletes the operator's report in `namespace`; one already gone (or its namespace) is fine.
async fn delete(
    client: &Client,
    metrics: &OperatorMetrics,
    api: ReportApi,
    namespace: &str,
) -> Result<()> {
    match Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &api.resource())
        .delete(keys::POLICY_REPORT_NAME, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(source) => {
            return Err(Error::Delete {
                api,
                namespace: namespace.to_string(),
                plural: api.plural(),
                group: api.group(),
                source,
            });
        }
    }
    count(metrics, "delete", api);
    Ok(())
}

fn count(metrics: &OperatorMetrics, operation: &str, api: ReportApi) {
    metrics
        .report_writes
        .get_or_create(&ReportWriteLabels {
            operation: operation.to_string(),
            kind: api.kind().to_string(),
        })
        .inc();
}
