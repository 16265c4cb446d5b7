//! `--registry-auth=pull-secrets` and warm-up through a real kube-apiserver: the
//! `reaper-controller webhook` binary in cluster mode reads the pod's and its ServiceAccount's
//! imagePullSecrets (dockerconfigjson and legacy dockercfg) from the API server and uses them
//! against a registry that requires htpasswd basic auth; AdmissionReviews are posted to its
//! `/mutate` over HTTPS. Warm-up watches a Deployment's template and looks its image up before
//! any pod exists.
use reaper_test_support as support;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LocalObjectReference, Secret, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::control_plane;
use support::registry::{ImageSpec, TestRegistry, Webhook};

const SUCCESS: &str = "reaper_registry_lookups_total{result=\"success\"}";
const UNAUTHORIZED: &str = "reaper_registry_lookups_total{result=\"unauthorized\"}";
const HITS: &str = "reaper_registry_cache_hits_total";

fn secret(name: &str, ty: &str, field: &str, json: Value) -> Secret {
    let mut s = Secret {
        type_: Some(ty.into()),
        data: Some(BTreeMap::from([(
            field.to_string(),
            ByteString(serde_json::to_vec(&json).unwrap()),
        )])),
        ..Default::default()
    };
    s.metadata.name = Some(name.into());
    s
}

fn auth(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

fn pod(name: &str, image: &str, extra: Value) -> Value {
    let mut spec = json!({"containers": [{"name": "app", "image": image}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": spec,
    })
}

fn injected(p: &Value) -> &str {
    p["metadata"]["annotations"]["reaper.dev/injected"]
        .as_str()
        .unwrap_or_default()
}

fn command(p: &Value) -> Value {
    p["spec"]["containers"][0]["command"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_secrets_of_the_pod_and_its_service_account() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let reg = TestRegistry::start_basic("alice", "s3cret");
    reg.push_image("private", "1", &ImageSpec::new(Some(&["/private"]), None));
    reg.push_image("warm", "1", &ImageSpec::new(Some(&["/warm"]), None));
    let ns = cp
        .ns_with_labels(&client, "reg", &[("reaper.dev/inject", "enabled")])
        .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let host = reg.addr.clone();
    for s in [
        // dockerconfigjson with `auth`, keyed by a URL as `docker login` writes it.
        secret(
            "good",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            json!({"auths": {format!("http://{host}/v2/"): {"auth": auth("alice", "s3cret")}}}),
        ),
        secret(
            "wrong",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            json!({"auths": {host.clone(): {"username": "alice", "password": "nope"}}}),
        ),
        // Legacy dockercfg, for the ServiceAccount; a credential helper entry is ignored.
        secret(
            "legacy",
            "kubernetes.io/dockercfg",
            ".dockercfg",
            json!({host.clone(): {"username": "alice", "password": "s3cret", "email": "a@x"}}),
        ),
        secret(
            "helper",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            json!({"credHelpers": {host.clone(): "evil"}, "credsStore": "evil"}),
        ),
    ] {
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("builder".into());
    sa.image_pull_secrets = Some(vec![LocalObjectReference {
        name: "legacy".into(),
    }]);
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();

    let w = Webhook::start_with(
        None,
        Some(cp.kubeconfig()),
        &[
            "--registry-auth",
            "pull-secrets",
            "--insecure-registries",
            &host,
            "--warm-up=false",
        ],
    )
    .await;
    let image = reg.image("private", "1");
    let refs = |names: &[&str]| json!(names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>());

    // No credentials at all: refused, the pod falls back to a shared PID namespace.
    let (p, warnings) = w.admit(&ns, pod("anon", &image, json!({}))).await;
    assert!(injected(&p).starts_with("share"), "{p}\n{}", w.logs());
    assert!(
        warnings.iter().any(|w| w.contains("refused access")),
        "{warnings:?}"
    );
    // Wrong credentials (and a helper that is never run): refused too.
    let (p, warnings) = w
        .admit(
            &ns,
            pod(
                "wrong",
                &image,
                json!({"imagePullSecrets": refs(&["helper", "wrong"])}),
            ),
        )
        .await;
    assert!(injected(&p).starts_with("share"), "{p}");
    assert!(
        warnings.iter().any(|w| w.contains("refused access")),
        "{warnings:?}"
    );
    // The pod's own secret.
    let (p, _) = w
        .admit(
            &ns,
            pod("own", &image, json!({"imagePullSecrets": refs(&["good"])})),
        )
        .await;
    assert_eq!(
        command(&p),
        json!(["/.reaper/reaper", "--", "/private"]),
        "{p}\n{}",
        w.logs()
    );
    // Several secrets match: tried in order, the first that works wins; the failure cached for
    // the wrong one does not hide the good one.
    let (p, _) = w
        .admit(
            &ns,
            pod(
                "both",
                &image,
                json!({"imagePullSecrets": refs(&["wrong", "good"])}),
            ),
        )
        .await;
    assert_eq!(command(&p), json!(["/.reaper/reaper", "--", "/private"]));
    // The ServiceAccount's secret (legacy dockercfg).
    let (p, _) = w
        .admit(
            &ns,
            pod("sa", &image, json!({"serviceAccountName": "builder"})),
        )
        .await;
    assert_eq!(command(&p), json!(["/.reaper/reaper", "--", "/private"]));
    // One round trip for the good credential (both secrets hold the same one), one refused
    // for anonymous and one for the wrong password; the rest came from the cache.
    assert_eq!(w.metric(SUCCESS).await, 1.0, "{}", w.metrics().await);
    assert_eq!(w.metric(UNAUTHORIZED).await, 2.0, "{}", w.metrics().await);
    assert!(w.metric(HITS).await >= 3.0, "{}", w.metrics().await);
    assert!(
        !w.logs().contains("s3cret"),
        "credentials must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_looks_up_workload_templates_before_their_pods() {
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let reg = TestRegistry::start_basic("bob", "pw");
    reg.push_image("warm", "1", &ImageSpec::new(Some(&["/warm"]), None));
    let ns = cp
        .ns_with_labels(&client, "warm", &[("reaper.dev/inject", "enabled")])
        .await;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &secret(
                "pull",
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                json!({"auths": {reg.addr.clone(): {"username": "bob", "password": "pw"}}}),
            ),
        )
        .await
        .unwrap();
    let w = Webhook::start_with(
        None,
        Some(cp.kubeconfig()),
        &[
            "--registry-auth",
            "pull-secrets",
            "--insecure-registries",
            &reg.addr,
        ],
    )
    .await;
    let image = reg.image("warm", "1");
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "imagePullSecrets": [{"name": "pull"}],
                    "containers": [{"name": "app", "image": image}]
                }
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    // No controller manager: no pod is created; the webhook's warm-up alone makes the lookup.
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.metric(SUCCESS).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "warm-up did not look the template's image up:\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hits = w.metric(HITS).await;
    let (p, _) = w
        .admit(
            &ns,
            pod(
                "web-1",
                &image,
                json!({"imagePullSecrets": [{"name": "pull"}]}),
            ),
        )
        .await;
    assert_eq!(command(&p), json!(["/.reaper/reaper", "--", "/warm"]));
    assert_eq!(
        w.metric(SUCCESS).await,
        1.0,
        "the pod was served from the cache"
    );
    assert_eq!(w.metric(HITS).await, hits + 1.0);
}
