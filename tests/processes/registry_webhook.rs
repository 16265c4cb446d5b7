//! End to end: the `reaper-controller webhook` binary (file mode: `--policies`) answering
//! AdmissionReviews on `/mutate` over HTTPS, its image lookups going to a real registry (Debian's
//! docker-registry on loopback, images pushed with skopeo), sometimes behind a delaying proxy that
//! counts requests. The multi-arch case then runs the dev `reaper` binary with the
//! `REAPER_PLATFORM_ARGV` the webhook produced.
use reaper_test_support as support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::registry::{DelayProxy, ImageSpec, TestRegistry, Webhook, kube_expand};

const POLICIES: &str = r#"
apiVersion: reaper.dev/v1alpha1
kind: ReaperPolicy
metadata: {name: apps}
spec:
  namespaceSelector:
    matchLabels: {kubernetes.io/metadata.name: apps}
  entrypoints:
  - image: "*/overridden:*"
    command: ["/from-policy"]
    args: ["p"]
"#;

fn pod(containers: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "apps"},
        "spec": {"containers": containers}
    })
}

fn container(name: &str, image: &str) -> Value {
    json!({"name": name, "image": image})
}

fn injected(p: &Value) -> &str {
    p["metadata"]["annotations"]["reaper.dev/injected"]
        .as_str()
        .unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn v(x: &[&str]) -> Vec<String> {
    x.iter().map(|s| s.to_string()).collect()
}

/// `command` and `args` of container `i` (args empty when absent).
fn argv(p: &Value, i: usize) -> (Vec<String>, Vec<String>) {
    let c = &p["spec"]["containers"][i];
    (strings(&c["command"]), strings(&c["args"]))
}

const SUCCESS: &str = "reaper_registry_lookups_total{result=\"success\"}";
const HITS: &str = "reaper_registry_cache_hits_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_without_command_run_their_image_argv_under_reaper() {
    let reg = TestRegistry::start();
    reg.push_image(
        "both",
        "1",
        &ImageSpec::new(Some(&["/entry", "--flag"]), Some(&["serve"])),
    );
    reg.push_image(
        "cmd-only",
        "1",
        &ImageSpec::new(None, Some(&["nginx", "-g", "daemon off;"])),
    );
    reg.push_image("ep-only", "1", &ImageSpec::new(Some(&["/bin/app"]), None));
    reg.push_image(
        "dollars",
        "1",
        &ImageSpec::new(Some(&["/bin/sh", "-c", "echo $(HOME) $$"]), Some(&["$(X)"])),
    );
    reg.push_image("neither", "1", &ImageSpec::new(None, None));
    reg.push_image("overridden", "1", &ImageSpec::new(Some(&["/image"]), None));
    let w = Webhook::start(POLICIES, &["--insecure-registries", &reg.addr]).await;

    let (p, warnings) = w
        .admit(
            "apps",
            pod(json!([
                container("a", &reg.image("both", "1")),
                container("b", &reg.image("cmd-only", "1")),
                container("c", &reg.image("ep-only", "1")),
                container("d", &reg.image("dollars", "1")),
                // Pod args replace the image's CMD.
                {"name": "e", "image": reg.image("both", "1"), "args": ["$(POD_ARG)"]},
                // A pod command makes the image irrelevant.
                {"name": "f", "image": reg.image("both", "1"), "command": ["/mine"]},
                // The policy's entrypoint wins over the registry's.
                container("g", &reg.image("overridden", "1")),
            ])),
        )
        .await;
    assert_eq!(injected(&p), "inject:a,b,c,d,e,f,g", "{p}\n{warnings:?}");
    let r = "/.reaper/reaper";
    assert_eq!(
        argv(&p, 0),
        (v(&[r, "--", "/entry", "--flag"]), v(&["serve"]))
    );
    assert_eq!(
        argv(&p, 1),
        (v(&[r, "--"]), v(&["nginx", "-g", "daemon off;"]))
    );
    assert_eq!(argv(&p, 2), (v(&[r, "--", "/bin/app"]), vec![]));
    // Image strings are escaped: the kubelet's `$(VAR)` expansion gives them back unchanged.
    let (cmd, args) = argv(&p, 3);
    assert_eq!(
        (cmd.clone(), args.clone()),
        (
            v(&[r, "--", "/bin/sh", "-c", "echo $$(HOME) $$$$"]),
            v(&["$$(X)"])
        )
    );
    let expanded: Vec<String> = cmd
        .iter()
        .chain(&args)
        .map(|s| kube_expand(s, &[("HOME", "/root"), ("X", "x")]))
        .collect();
    assert_eq!(
        expanded,
        v(&[r, "--", "/bin/sh", "-c", "echo $(HOME) $$", "$(X)"])
    );
    assert_eq!(
        argv(&p, 4),
        (v(&[r, "--", "/entry", "--flag"]), v(&["$(POD_ARG)"]))
    );
    assert_eq!(argv(&p, 5), (v(&[r, "--", "/mine"]), vec![]));
    assert_eq!(argv(&p, 6), (v(&[r, "--", "/from-policy"]), v(&["p"])));
    // `overridden` was never looked up; the others once each.
    assert_eq!(w.metric(SUCCESS).await, 4.0, "{}", w.metrics().await);

    // An image with neither ENTRYPOINT nor CMD cannot be wrapped: auto mode shares the PID
    // namespace instead, and says why.
    let (p, warnings) = w
        .admit(
            "apps",
            pod(json!([container("n", &reg.image("neither", "1"))])),
        )
        .await;
    assert!(injected(&p).starts_with("share"), "{p}");
    assert_eq!(p["spec"]["shareProcessNamespace"], true);
    assert!(warnings.iter().any(|w| w.contains("\"n\"")), "{warnings:?}");

    // Admitted again: every answer from the cache, no new round trip.
    let (p, _) = w
        .admit(
            "apps",
            pod(json!([container("a", &reg.image("both", "1"))])),
        )
        .await;
    assert_eq!(injected(&p), "inject:a");
    assert_eq!(w.metric(SUCCESS).await, 5.0);
    assert!(w.metric(HITS).await >= 1.0);
    let m = w.metrics().await;
    assert!(
        m.contains("reaper_registry_lookup_duration_seconds_count 5"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_images_and_the_reaper_picks_its_platform() {
    let reg = TestRegistry::start();
    let same = ImageSpec::new(Some(&["/app"]), Some(&["run"]));
    reg.push_index("same", "1", &[same.clone(), same.on("arm64/v8")], true);
    // Each platform prints its name and its argument (a `$(` that must survive both the
    // webhook's escaping and the kubelet's expansion).
    let script = |arch: &str| format!("echo {arch} \"$0\"");
    let (amd, arm) = (script("amd64"), script("arm64"));
    // As written into the pod (Kubernetes would expand `$(...)`).
    let (amd_esc, arm_esc) = (amd.replace('$', "$$"), arm.replace('$', "$$"));
    reg.push_index(
        "differ",
        "1",
        &[
            ImageSpec::new(Some(&["/bin/sh", "-c", &arm]), Some(&["$(HOME)"])).on("arm64/v8"),
            ImageSpec::new(Some(&["/bin/sh", "-c", &amd]), Some(&["$(HOME)"])),
        ],
        true,
    );
    let w = Webhook::start(POLICIES, &["--insecure-registries", &reg.addr]).await;

    let (p, _) = w
        .admit(
            "apps",
            pod(json!([container("s", &reg.image("same", "1"))])),
        )
        .await;
    assert_eq!(
        argv(&p, 0),
        (v(&["/.reaper/reaper", "--", "/app"]), v(&["run"]))
    );
    assert!(p["spec"]["containers"][0]["env"].is_null(), "{p}");

    let (p, _) = w
        .admit(
            "apps",
            pod(json!([{
                "name": "d", "image": reg.image("differ", "1"),
                "env": [{"name": "KEEP", "value": "1"}]
            }])),
        )
        .await;
    let c = &p["spec"]["containers"][0];
    let (cmd, args) = argv(&p, 0);
    assert_eq!(
        cmd,
        v(&["/.reaper/reaper", "--", "/bin/sh", "-c", &amd_esc])
    );
    assert_eq!(args, v(&["$$(HOME)"]));
    let env = c["env"].as_array().unwrap();
    assert_eq!(env[0], json!({"name": "KEEP", "value": "1"}));
    assert_eq!(env[1]["name"], "REAPER_PLATFORM_ARGV");
    let raw = env[1]["value"].as_str().unwrap();
    let map: Value = serde_json::from_str(raw).unwrap();
    assert_eq!(
        map,
        json!({
            "linux/amd64": ["/bin/sh", "-c", amd_esc, "$$(HOME)"],
            "linux/arm64/v8": ["/bin/sh", "-c", arm_esc, "$$(HOME)"],
        })
    );

    // Run the container's argv as the kubelet would (after `$(VAR)` expansion) with the dev
    // reaper in place of the mounted one.
    let expand = |s: &String| kube_expand(s, &[("KEEP", "1")]);
    let run = |argv: Vec<String>, platform_argv: &str| {
        let out = std::process::Command::new(support::control_plane::reaper_bin())
            .args(&argv[1..])
            .env("REAPER_PLATFORM_ARGV", platform_argv)
            .env("REAPER_VERBOSE", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let full: Vec<String> = cmd.iter().chain(&args).map(expand).collect();
    let env_value = expand(&raw.to_string());
    let this = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    let (stdout, stderr) = run(full, &env_value);
    assert_eq!(stdout, format!("{this} $(HOME)"), "{stderr}");
    assert!(
        stderr.contains("REAPER_PLATFORM_ARGV: running the argv for linux/"),
        "{stderr}"
    );
    // The variable decides, not what follows `--`.
    let (stdout, _) = run(
        v(&["reaper", "--", "/bin/echo", "after-dashes"]),
        &env_value,
    );
    assert_eq!(stdout, format!("{this} $(HOME)"));

    // A pod pinned to arm64 by its nodeSelector only considers that platform: no table.
    let (p, _) = w
        .admit(
            "apps",
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "apps"},
                "spec": {
                    "nodeSelector": {"kubernetes.io/arch": "arm64"},
                    "containers": [container("d", &reg.image("differ", "1"))]
                }
            }),
        )
        .await;
    assert_eq!(
        argv(&p, 0).0,
        v(&["/.reaper/reaper", "--", "/bin/sh", "-c", &arm_esc])
    );
    assert!(p["spec"]["containers"][0]["env"].is_null(), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_lookups_fall_back_without_blocking_admission() {
    let reg = TestRegistry::start();
    let private = TestRegistry::start_basic("alice", "s3cret");
    private.push_image("app", "1", &ImageSpec::new(Some(&["/app"]), None));
    let w = Webhook::start(
        POLICIES,
        &[
            "--insecure-registries",
            &format!("{},{}", reg.addr, private.addr),
            "--negative-ttl",
            "1h",
        ],
    )
    .await;
    for (image, why) in [
        (reg.image("missing", "1"), "has no such image"),
        (private.image("app", "1"), "refused access"),
        ("127.0.0.1:1/gone:1".to_string(), "cannot reach registry"),
    ] {
        let (p, warnings) = w.admit("apps", pod(json!([container("c", &image)]))).await;
        assert!(injected(&p).starts_with("share"), "{image}: {p}");
        assert!(
            warnings.iter().any(|w| w.contains(why)),
            "{image}: {warnings:?}"
        );
    }
    let m = w.metrics().await;
    for result in ["not_found", "unauthorized", "unreachable"] {
        assert!(
            m.contains(&format!(
                "reaper_registry_lookups_total{{result=\"{result}\"}} 1"
            )),
            "{result}: {m}"
        );
    }
    // inject mode (pod annotation): the container that cannot be resolved is skipped.
    let mut p = pod(json!([container("c", &reg.image("missing", "1"))]));
    p["metadata"]["annotations"] = json!({"reaper.dev/mode": "inject"});
    let (p, warnings) = w.admit("apps", p).await;
    assert!(injected(&p).starts_with("skipped:"), "{p}");
    assert!(!warnings.is_empty());
    // Failures are cached (--negative-ttl): no new round trip for the second admission.
    assert_eq!(w.metric(HITS).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_registry_costs_one_budget_and_warms_the_cache() {
    let reg = TestRegistry::start();
    reg.push_image("slow", "1", &ImageSpec::new(Some(&["/slow"]), None));
    let proxy = DelayProxy::start(&reg.addr).await;
    proxy.set_delay(Duration::from_millis(700));
    let w = Webhook::start(
        POLICIES,
        &[
            "--insecure-registries",
            &proxy.addr,
            "--lookup-timeout",
            "400ms",
        ],
    )
    .await;
    let image = proxy.image("slow", "1");
    let started = Instant::now();
    let (p, warnings) = w.admit("apps", pod(json!([container("c", &image)]))).await;
    let took = started.elapsed();
    assert!(injected(&p).starts_with("share"), "{p}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("--lookup-timeout 400ms")),
        "{warnings:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "admission took {took:?} with a 400ms budget"
    );
    // The lookup finishes in the background...
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.metric(SUCCESS).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "background lookup did not finish:\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and the next pod is wrapped from the cache, well within the budget.
    let started = Instant::now();
    let (p, _) = w.admit("apps", pod(json!([container("c", &image)]))).await;
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(
        argv(&p, 0),
        (v(&["/.reaper/reaper", "--", "/slow"]), vec![])
    );
    assert_eq!(w.metric(SUCCESS).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admissions_of_one_image_make_one_fetch() {
    let reg = TestRegistry::start();
    reg.push_image("popular", "1", &ImageSpec::new(Some(&["/pop"]), None));
    let proxy = DelayProxy::start(&reg.addr).await;
    proxy.set_delay(Duration::from_millis(150));
    let w = std::sync::Arc::new(
        Webhook::start(
            POLICIES,
            &[
                "--insecure-registries",
                &proxy.addr,
                "--lookup-timeout",
                "10s",
            ],
        )
        .await,
    );
    let image = proxy.image("popular", "1");
    const N: usize = 10;
    let admissions: Vec<_> = (0..N)
        .map(|_| {
            let (w, image) = (w.clone(), image.clone());
            tokio::spawn(async move { w.admit("apps", pod(json!([container("c", &image)]))).await })
        })
        .collect();
    for a in admissions {
        let (p, _) = a.await.unwrap();
        assert_eq!(argv(&p, 0).0, v(&["/.reaper/reaper", "--", "/pop"]));
    }
    let manifests: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|l| l.contains("/manifests/"))
        .collect();
    assert_eq!(manifests.len(), 2, "one HEAD, one GET: {manifests:?}");
    assert_eq!(w.metric(SUCCESS).await, 1.0);
    assert_eq!(w.metric(HITS).await, (N - 1) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_followed_after_tag_ttl() {
    let reg = TestRegistry::start();
    reg.push_image("moving", "v1", &ImageSpec::new(Some(&["/one"]), None));
    let w = Webhook::start(
        POLICIES,
        &["--insecure-registries", &reg.addr, "--tag-ttl", "1s"],
    )
    .await;
    let image = reg.image("moving", "v1");
    let entry = |p: &Value| argv(p, 0).0[2].clone();
    let (p, _) = w.admit("apps", pod(json!([container("c", &image)]))).await;
    assert_eq!(entry(&p), "/one");
    reg.push_image("moving", "v1", &ImageSpec::new(Some(&["/two"]), None));
    let (p, _) = w.admit("apps", pod(json!([container("c", &image)]))).await;
    assert_eq!(
        entry(&p),
        "/one",
        "the tag's digest is reused within the TTL"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (p, _) = w.admit("apps", pod(json!([container("c", &image)]))).await;
    assert_eq!(entry(&p), "/two");
    // Digest-pinned references need no tag step at all.
    let digest = reg.push_image("moving", "v1", &ImageSpec::new(Some(&["/three"]), None));
    let pinned = format!("{}/moving@{digest}", reg.addr);
    let (p, _) = w.admit("apps", pod(json!([container("c", &pinned)]))).await;
    assert_eq!(entry(&p), "/three");
}

/// Pod annotation recording the digest each image-resolved container's argv was read from.
const DIGESTS: &str = reaper::keys::ANNOTATION_IMAGE_DIGESTS;

/// The image of container `i`.
fn image_of(p: &Value, i: usize) -> &str {
    p["spec"]["containers"][i]["image"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_images_record_their_digest_and_pin_it_with_pin_digests() {
    let reg = TestRegistry::start();
    let digest = reg.push_image("app", "1", &ImageSpec::new(Some(&["/app"]), Some(&["run"])));
    let same = ImageSpec::new(Some(&["/multi"]), None);
    let index_digest = reg.push_index("multi", "1", &[same.clone(), same.on("arm64/v8")], true);
    reg.push_image("overridden", "1", &ImageSpec::new(Some(&["/image"]), None));
    let by_digest = format!("{}/app@{digest}", reg.addr);
    // inject mode, so the container whose lookup fails is skipped rather than the pod shared.
    let mut admitted = pod(json!([
        container("a", &reg.image("app", "1")),
        // A pod command: no lookup, nothing to pin.
        {"name": "b", "image": reg.image("app", "1"), "command": ["/mine"]},
        // A policy entrypoint: no lookup.
        container("c", &reg.image("overridden", "1")),
        // Already pinned by its author.
        container("d", &by_digest),
        container("e", &reg.image("multi", "1")),
        // The lookup fails: not wrapped, nothing recorded.
        container("f", &reg.image("missing", "1")),
    ]));
    admitted["metadata"]["annotations"] = json!({"reaper.dev/mode": "inject"});
    let recorded = format!("a={digest},e={index_digest}");

    // Off (the default): the digests are recorded, the images left as written.
    let w = Webhook::start(POLICIES, &["--insecure-registries", &reg.addr]).await;
    let (p, warnings) = w.admit("apps", admitted.clone()).await;
    assert_eq!(injected(&p), "inject:a,b,c,d,e", "{p}\n{warnings:?}");
    assert_eq!(p["metadata"]["annotations"][DIGESTS], recorded, "{p}");
    for i in 0..6 {
        assert_eq!(image_of(&p, i), image_of(&admitted, i), "container {i}");
    }
    drop(w);

    // On: the resolved tags become tag@digest, the digest the registry serves for them.
    let w = Webhook::start(
        POLICIES,
        &["--insecure-registries", &reg.addr, "--pin-digests"],
    )
    .await;
    let (p, warnings) = w.admit("apps", admitted.clone()).await;
    assert_eq!(injected(&p), "inject:a,b,c,d,e", "{p}\n{warnings:?}");
    assert_eq!(p["metadata"]["annotations"][DIGESTS], recorded, "{p}");
    assert_eq!(
        image_of(&p, 0),
        format!("{}/app:1@{digest}", reg.addr),
        "{p}"
    );
    assert_eq!(
        image_of(&p, 4),
        format!("{}/multi:1@{index_digest}", reg.addr)
    );
    for i in [1, 2, 3, 5] {
        assert_eq!(image_of(&p, i), image_of(&admitted, i), "container {i}");
    }
    // The argv is the one read from that digest.
    assert_eq!(
        argv(&p, 0),
        (v(&["/.reaper/reaper", "--", "/app"]), v(&["run"]))
    );
    // Admitted again (a reinvocation): nothing more changes.
    let (again, _) = w.admit("apps", p.clone()).await;
    assert_eq!(again, p);
}
