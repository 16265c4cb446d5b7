//! Warm-up (cluster mode): watch the pod templates of Deployments, StatefulSets, DaemonSets, Jobs
//! and CronJobs and look their images up ahead of time, so that the admission of their pods finds
//! the image configs cached. Which images of a template are wanted (opted-in namespace, policy,
//! containers without `command`) is the caller's decision, made when the item is processed.
//!
//! RBAC: `list` and `watch` on those five kinds, cluster-wide.
use super::Registry;
use crate::component::Tasks;
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Templates whose images are looked up at the same time.
pub const CONCURRENCY: usize = 4;

/// Which images of a (template) pod in a namespace to look up; empty for none.
pub type Wanted = Arc<dyn Fn(&Pod, &str) -> Vec<String> + Send + Sync>;

/// A workload kind with a pod template.
trait Workload:
    kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    fn template(&self) -> Option<&PodTemplateSpec>;
}

impl Workload for Deployment {
    const KIND: &'static str = "Deployment";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}
impl Workload for StatefulSet {
    const KIND: &'static str = "StatefulSet";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}
impl Workload for DaemonSet {
    const KIND: &'static str = "DaemonSet";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}
impl Workload for Job {
    const KIND: &'static str = "Job";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}
impl Workload for CronJob {
    const KIND: &'static str = "CronJob";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.job_template.spec.as_ref().map(|s| &s.template)
    }
}

/// The container fields the planner and the resolver read.
fn slim_container(c: &Container) -> Container {
    Container {
        name: c.name.clone(),
        image: c.image.clone(),
        command: c.command.clone(),
        args: c.args.clone(),
        image_pull_policy: c.image_pull_policy.clone(),
        restart_policy: c.restart_policy.clone(),
        ..Default::default()
    }
}

/// The pod a template stands for, reduced to what image lookup needs (selection by the planner,
/// pull secrets, ServiceAccount, architecture constraints).
pub fn template_pod(owner: &str, template: &PodTemplateSpec) -> Option<Pod> {
    let spec = template.spec.as_ref()?;
    let meta = template.metadata.clone().unwrap_or_default();
    #[allow(deprecated)]
    let spec = PodSpec {
        containers: spec.containers.iter().map(slim_container).collect(),
        init_containers: spec
            .init_containers
            .as_ref()
            .map(|v| v.iter().map(slim_container).collect()),
        image_pull_secrets: spec.image_pull_secrets.clone(),
        service_account_name: spec.service_account_name.clone(),
        service_account: spec.service_account.clone(),
        node_selector: spec.node_selector.clone(),
        affinity: spec
            .affinity
            .as_ref()
            .map(|a| k8s_openapi::api::core::v1::Affinity {
                node_affinity: a.node_affinity.clone(),
                ..Default::default()
            }),
        os: spec.os.clone(),
        host_pid: spec.host_pid,
        share_process_namespace: spec.share_process_namespace,
        ..Default::default()
    };
    Some(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{owner}-")),
            labels: meta.labels,
            annotations: meta.annotations,
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })
}

type Key = (&'static str, String, String);

#[derive(Default)]
struct Queue {
    items: HashMap<Key, Arc<Pod>>,
    dirty: VecDeque<Key>,
    queued: HashSet<Key>,
}

impl Queue {
    fn mark(&mut self, key: Key) {
        if self.queued.insert(key.clone()) {
            self.dirty.push_back(key);
        }
    }
}

struct State {
    queue: Mutex<Queue>,
    wake: Notify,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Start the watchers, the workers and the periodic refresh (every `refresh`, so entries whose tag
/// TTL ran out are looked up again before pods need them). Runs until `stop`.
pub fn spawn(
    client: kube::Client,
    registry: Registry,
    wanted: Wanted,
    refresh: Duration,
    tasks: &Tasks,
) {
    let stop = tasks.shutdown();
    let state = Arc::new(State {
        queue: Mutex::new(Queue::default()),
        wake: Notify::new(),
    });
    watch::<Deployment>(&client, &state, tasks);
    watch::<StatefulSet>(&client, &state, tasks);
    watch::<DaemonSet>(&client, &state, tasks);
    watch::<Job>(&client, &state, tasks);
    watch::<CronJob>(&client, &state, tasks);
    for _ in 0..CONCURRENCY {
        let (state, registry, wanted, stop) = (
            state.clone(),
            registry.clone(),
            wanted.clone(),
            stop.clone(),
        );
        tasks.spawn("warm-up worker", async move {
            loop {
                let next = {
                    let mut q = state.lock();
                    let key = q.dirty.pop_front();
                    key.and_then(|k| {
                        q.queued.remove(&k);
                        q.items.get(&k).cloned().map(|pod| (k, pod))
                    })
                };
                let Some(((kind, ns, name), pod)) = next else {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = state.wake.notified() => continue,
                        // A wake-up between pop and wait is not lost for long.
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                };
                let images = wanted(&pod, &ns);
                if images.is_empty() {
                    continue;
                }
                tracing::debug!(kind, namespace = %ns, name = %name, ?images, "warm-up lookup");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = registry.prefetch(&pod, &ns, &images) => {}
                }
            }
        });
    }
    tasks.spawn("warm-up refresh", async move {
        let mut tick = tokio::time::interval(refresh);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            {
                let mut q = state.lock();
                let keys: Vec<Key> = q.items.keys().cloned().collect();
                for k in keys {
                    q.mark(k);
                }
            }
            state.wake.notify_waiters();
        }
    });
}

fn watch<K: Workload>(client: &kube::Client, state: &Arc<State>, tasks: &Tasks) {
    let api: Api<K> = Api::all(client.clone());
    let (state, stop) = (state.clone(), tasks.shutdown());
    tasks.spawn("warm-up watch", async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = stream.next() => e,
            };
            let key_of = |o: &K| {
                (
                    K::KIND,
                    o.meta().namespace.clone().unwrap_or_default(),
                    o.meta().name.clone().unwrap_or_default(),
                )
            };
            match event {
                Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => {
                    let key = key_of(&o);
                    let pod = o.template().and_then(|t| template_pod(&key.2, t));
                    let mut q = state.lock();
                    match pod {
                        Some(pod) => {
                            q.items.insert(key.clone(), Arc::new(pod));
                            q.mark(key);
                        }
                        None => {
                            q.items.remove(&key);
                        }
                    }
                    drop(q);
                    state.wake.notify_one();
                }
                Some(Ok(watcher::Event::Delete(o))) => {
                    state.lock().items.remove(&key_of(&o));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(kind = K::KIND, error = %e, "warm-up: watching workloads (retrying; RBAC: list/watch)")
                }
                None => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_pods_keep_what_lookup_needs() {
        let t: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "x"}, "annotations": {"reaper.dev/mode": "inject"}},
            "spec": {
                "serviceAccountName": "builder",
                "imagePullSecrets": [{"name": "reg"}],
                "nodeSelector": {"kubernetes.io/arch": "arm64"},
                "containers": [{"name": "app", "image": "r/app:1", "imagePullPolicy": "Always",
                                "env": [{"name": "A", "value": "1"}], "args": ["x"]}],
                "volumes": [{"name": "v", "emptyDir": {}}]
            }
        }))
        .unwrap();
        let pod = template_pod("web", &t).unwrap();
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(pod.metadata.labels.unwrap()["app"], "x");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("builder"));
        assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "reg");
        assert_eq!(spec.node_selector.unwrap()["kubernetes.io/arch"], "arm64");
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("r/app:1"));
        assert_eq!(c.args.as_deref(), Some(&["x".to_string()][..]));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        assert!(c.env.is_none() && spec.volumes.is_none());
        assert!(template_pod("x", &PodTemplateSpec::default()).is_none());
    }
}
