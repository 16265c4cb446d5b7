//! The seed's problem and Reaper's fix on a real node: kubelet + containerd + runc run the pods,
//! the chart is installed with `helm install` from charts/reaper (images from the node's local
//! registry, the webhook reached through its Service by kube-proxy), and every scenario has a
//! control showing the problem without Reaper. See tests/support/node.rs for the node and
//! reaper_test_support::scenarios for the scenarios the kind suite shares.
//!
//! The scenarios share one node and one release. Most run side by side (a read lock); the ones
//! that take the webhook away (fail-open, upgrade/uninstall) run alone (the write lock).
use reaper_test_support as support;
use reaper_test_support::scenarios as e2e_scenarios;

use e2e_scenarios::{Env, create, injected, restricted_pod, wait_for, wait_running};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use std::time::{Duration, Instant};
use support::node::{self, Chart, Node};
use tokio::sync::RwLock;

/// Readers: scenarios that need the release as installed. Writers: scenarios that change it.
static RELEASE: RwLock<()> = RwLock::const_new(());

/// Runs a scenario; when it fails, prints what the node knows (pods, events, component logs)
/// before failing the test.
async fn scenario(node: &Node, f: impl std::future::Future<Output = ()>) {
    scenario_then(node, f, async {}).await;
}

/// [`scenario`], then `restore` (whether it passed or failed) before a failure fails the test.
async fn scenario_then(
    node: &Node,
    f: impl std::future::Future<Output = ()>,
    restore: impl std::future::Future<Output = ()>,
) {
    use futures::FutureExt;
    let outcome = std::panic::AssertUnwindSafe(f).catch_unwind().await;
    if outcome.is_err() {
        eprintln!(
            "--- scenario failed; node diagnostics:\n{}",
            node.diagnose(&[])
        );
    }
    restore.await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The node with the chart installed, or None when skipped (see `node::shared`).
async fn ready() -> Option<&'static Node> {
    let node = node::shared()?;
    node.ensure_chart().await;
    Some(node)
}

async fn env(node: &Node) -> Env {
    Env {
        client: node.client().await,
        release_ns: Chart::default().namespace,
        fullname: "reaper".into(),
        image: node.images.workload.clone(),
        ns_labels: Vec::new(),
        // The workload image's own ENTRYPOINT/CMD is `sleep 3600`, looked up in the registry.
        entrypoint_image: Some(node.images.workload.clone()),
        // The chart runs the agent every 2 s here: a few scans.
        settle: Duration::from_secs(10),
        kubectl: support::control_plane::tool("kubectl").unwrap(),
        kubeconfig: Some(node.cp().kubeconfig().to_path_buf()),
    }
}

#[tokio::test]
async fn s1_stop_latency_unprotected_vs_share_inject_auto() {
    let Some(node) = ready().await else { return };
    let _r = RELEASE.read().await;
    scenario(node, async {
        e2e_scenarios::stop_latency(&env(node).await).await;
    })
    .await;
}

#[tokio::test]
async fn s2_probe_and_exec_orphans_become_zombies_only_without_reaper() {
    let Some(node) = ready().await else { return };
    let _r = RELEASE.read().await;
    let env = env(node).await;
    scenario(node, async {
        e2e_scenarios::probe_and_exec_zombies(&env).await;
        // The kind suite's orphan scenario too (PID 1 a shell that leaves orphans at start).
        e2e_scenarios::orphans_are_reaped_only_when_protected(&env).await;
    })
    .await;
}

#[tokio::test]
async fn s3_restart_policy_rolls_a_leaky_deployment_into_wrapped_pods() {
    let Some(node) = ready().await else { return };
    let _r = RELEASE.read().await;
    scenario(node, async {
        e2e_scenarios::restart_loop(&env(node).await).await;
    })
    .await;
}

#[tokio::test]
async fn s4_mutated_pods_run_under_pod_security_restricted() {
    let Some(node) = ready().await else { return };
    let _r = RELEASE.read().await;
    let env = env(node).await;
    scenario(node, async {
        e2e_scenarios::restricted_pods_run(&env).await;
        e2e_scenarios::every_mode_runs_under_restricted(&env, true).await;
    })
    .await;
}

/// Image-volume mode (#17) on the real kubelet and containerd: the reaper image mounted as a
/// volume runs, stops in under 3 s and leaves no zombies; `auto` picks it because the webhook
/// detected that this node's runtime mounts image volumes; Pod Security "restricted" admits it.
#[tokio::test]
async fn s11_image_volume_pods_run_stop_fast_and_reap() {
    let Some(node) = ready().await else { return };
    let _r = RELEASE.read().await;
    let env = env(node).await;
    scenario(node, async {
        e2e_scenarios::image_volume_pods(&env).await;
        e2e_scenarios::image_mode_runs_under_restricted(&env, true).await;
    })
    .await;
}

#[tokio::test]
async fn s7_app_native_sidecar_and_init_container_run_and_stop_wrapped() {
    let Some(node) = ready().await else { return };
    let _r = RELEASE.read().await;
    scenario(node, async {
        e2e_scenarios::sidecars_run_and_stop(&env(node).await).await;
    })
    .await;
}

#[tokio::test]
async fn s8_metrics_endpoints_of_every_component_answer() {
    let Some(node) = ready().await else { return };
    let _r = RELEASE.read().await;
    scenario(node, async {
        e2e_scenarios::metrics_endpoints_answer(&env(node).await).await;
    })
    .await;
}

/// `reaper-controller check` against the installed release on the real node: no problem
/// (CRDs, webhook and its CA, certificate days, the node's agent report, the dry-run pod the
/// webhook answers), exit code 0; a problem (exit code 1) when asked about a webhook
/// configuration that does not exist; and `helm test` runs the same check in a pod.
#[tokio::test]
async fn s9_check_finds_the_install_healthy() {
    let Some(node) = ready().await else { return };
    let _r = RELEASE.read().await;
    let env = env(node).await;
    scenario(node, async {
        let run = |extra: &[&str]| {
            std::process::Command::new(support::control_plane::reaper_controller_bin())
                .env("KUBECONFIG", node.cp().kubeconfig())
                .args(["--log-level", "warn", "check", "-o", "json"])
                .args(["--release-namespace", &env.release_ns])
                .args(extra)
                .output()
                .expect("running reaper-controller check")
        };
        // The agent writes its first report within a few scans of a fresh install.
        let deadline = Instant::now() + Duration::from_secs(60);
        let healthy = loop {
            let out = run(&[]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
            if out.status.success() || Instant::now() > deadline {
                break (out.status, v);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        assert!(healthy.0.success(), "check found problems: {:#}", healthy.1);
        let findings = healthy.1["findings"].as_array().unwrap();
        let has = |area: &str, text: &str| {
            findings.iter().any(|f| {
                f["area"] == area && f["message"].as_str().is_some_and(|m| m.contains(text))
            })
        };
        assert!(
            has("webhook", "answers: a dry-run pod came back"),
            "{findings:#?}"
        );
        assert!(has("webhook", "caBundle trusts"), "{findings:#?}");
        assert!(has("certificate", "expires in"), "{findings:#?}");
        assert!(
            has("agents", "a current report from each of 1 Linux nodes"),
            "{findings:#?}"
        );
        let broken = run(&["--webhook-config", "no-such-webhook", "--dry-run-pod=false"]);
        assert_eq!(broken.status.code(), Some(1));
        // `helm test`: the chart's hook runs the same check in a pod, as its own ServiceAccount.
        let out = support::chart::cluster::helm(
            node.cp(),
            &env.release_ns,
            &["test", "reaper", "--logs", "--timeout", "180s"],
        );
        assert!(out.contains("Phase:          Succeeded"), "{out}");
        assert!(out.contains("no problems found"), "{out}");
    })
    .await;
}

/// The agent's PID 1 evidence, end to end: the same busybox `sleep 3600` pod in a namespace that
/// is not opted in (PID 1 `sleep`, no SIGTERM handler: `check` lists it as unprotected with that
/// evidence) and in an opted-in one (wrapped by the webhook: PID 1 `reaper`, listed as protected,
/// never as unprotected). The node's ZombieReport carries both entries.
#[tokio::test]
async fn s10_check_lists_unprotected_pid1s_with_evidence() {
    let Some(node) = ready().await else { return };
    let _r = RELEASE.read().await;
    let env = env(node).await;
    scenario(node, async {
        let off = env.namespace_with("pid1-off", &[], false).await;
        let on = env.namespace("pid1-on", &[]).await;
        let sleeper = restricted_pod("sleeper", &env.image, Some(&["sleep", "3600"]), &[], &[]);
        for ns in [&off, &on] {
            create(&env, ns, &sleeper).await;
        }
        let wrapped = wait_running(&env, &on, "sleeper").await;
        assert!(
            injected(&wrapped).is_some_and(|i| i.starts_with("inject")),
            "{:?}",
            wrapped.metadata.annotations
        );
        let plain = wait_running(&env, &off, "sleeper").await;
        assert_eq!(injected(&plain), None);
        // Pod opt-in (the chart's default): in the namespace that says nothing, a pod labelled
        // reaper.dev/inject=enabled is sent to the webhook through the registration's second
        // entry, wrapped, and runs under reaper on the kubelet.
        let joined = restricted_pod(
            "joined",
            &env.image,
            Some(&["sleep", "3600"]),
            &[(reaper::keys::LABEL_INJECT, reaper::keys::INJECT_ENABLED)],
            &[],
        );
        create(&env, &off, &joined).await;
        let joined = wait_running(&env, &off, "joined").await;
        assert!(
            injected(&joined).is_some_and(|i| i.starts_with("inject")),
            "{:?}",
            joined.metadata.annotations
        );

        let unprotected = format!(
            "{off}/sleeper container app: PID 1 \"sleep\" is not an init and does not handle SIGTERM"
        );
        let protected = "sleeper/app (reaper)";
        let check = || {
            let out = std::process::Command::new(support::control_plane::reaper_controller_bin())
                .env("KUBECONFIG", node.cp().kubeconfig())
                .args(["--log-level", "warn", "check", "-o", "json", "--dry-run-pod=false"])
                .args(["--release-namespace", &env.release_ns])
                .output()
                .expect("running reaper-controller check");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
            v["findings"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["area"] == "pid1")
                .filter_map(|f| f["message"].as_str().map(str::to_string))
                .collect::<Vec<String>>()
        };
        // The agent scans every 2 s and writes when PID 1 facts change.
        let findings = wait_for(Duration::from_secs(90), "check lists both sleepers", || async {
            let f = check();
            let listed = f.iter().any(|m| m.starts_with(&unprotected))
                && f.iter().any(|m| m.starts_with(&format!("{on}: ")) && m.contains(protected))
                && f.iter().any(|m| m.starts_with(&format!("{off}: ")) && m.contains("joined/app (reaper)"));
            listed.then_some(f)
        })
        .await;
        assert!(
            !findings.iter().any(|m| m.starts_with(&format!("{on}/sleeper"))
                || m.starts_with(&format!("{off}/joined"))),
            "a wrapped pod is listed as unprotected: {findings:#?}"
        );

        // The evidence in the node's report.
        let report = kube::Api::<reaper::crd::ZombieReport>::all(env.client.clone())
            .get(&plain.spec.as_ref().unwrap().node_name.clone().unwrap())
            .await
            .unwrap();
        let entry = |ns: &str| {
            report
                .spec
                .pid1s
                .iter()
                .find(|c| c.namespace.as_deref() == Some(ns) && c.pod.as_deref() == Some("sleeper"))
                .unwrap_or_else(|| panic!("no {ns}/sleeper in {:#?}", report.spec.pid1s))
        };
        let p = entry(&off);
        assert_eq!(
            (p.comm.as_str(), p.init.as_deref(), p.pid1, p.handles_sigterm, p.container.as_deref()),
            ("sleep", None, true, false, Some("app"))
        );
        let w = entry(&on);
        assert_eq!(
            (w.comm.as_str(), w.init.as_deref(), w.pid1, w.handles_sigterm),
            ("reaper", Some("reaper"), true, true),
            "{w:#?}"
        );
        assert!(w.protected_by().is_some() && !w.unprotected());
        for ns in [&off, &on] {
            env.delete_namespace(ns).await;
        }
    })
    .await;
}

/// Median of pod-create round trips (the API call only) in `ns`.
async fn create_latency(env: &Env, ns: &str, prefix: &str, n: usize) -> (Duration, Vec<Pod>) {
    let api = Api::<Pod>::namespaced(env.client.clone(), ns);
    let mut times = Vec::new();
    let mut pods = Vec::new();
    for i in 0..n {
        let pod = restricted_pod(
            &format!("{prefix}-{i}"),
            &env.image,
            Some(&["sleep", "3600"]),
            &[],
            &[],
        );
        let t = Instant::now();
        let stored = api
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("creating {prefix}-{i}: {e}"));
        times.push(t.elapsed());
        pods.push(stored);
    }
    times.sort();
    (times[times.len() / 2], pods)
}

/// Host pids of the webhook's `reaper-controller` processes (not their PID 1 reaper).
fn webhook_processes(node: &Node, webhook_pods: &[Pod]) -> Vec<i32> {
    webhook_pods
        .iter()
        .flat_map(|p| node.pod_pids(&p.uid().unwrap()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("reaper-controller")
                    && c.contains("webhook")
                    && !c.starts_with("/reaper\0")
            })
        })
        .collect()
}

fn signal_all(pids: &[i32], sig: i32) {
    for pid in pids {
        support::process::signal(*pid, sig);
    }
}

/// Scenario 5: with the webhook scaled to 0, pods are created and run unchanged, and creating
/// them costs what a pod the webhook never sees costs plus a refused connection; with the webhook
/// hung (processes stopped: connections accepted by the kernel, never answered), pods are still
/// created within the webhook's timeout, unchanged, and run.
#[tokio::test]
async fn s5_fail_open_when_the_webhook_is_down_or_hung() {
    let Some(node) = ready().await else { return };
    let _w = RELEASE.write().await;
    let env = env(node).await;
    // The delivery suite's scenario: down, unchanged, and mutation resumes after scaling back.
    e2e_scenarios::pods_are_created_when_the_webhook_is_down(&env).await;

    let opted_in = env.namespace("e2e-down", &[]).await;
    let plain = env.namespace_with("e2e-plain", &[], false).await;
    // Warm both paths, then measure with the webhook running, down, and the control.
    create_latency(&env, &plain, "warm", 2).await;
    let (up, _) = create_latency(&env, &opted_in, "up", 5).await;
    e2e_scenarios::scale_webhook(&env, 0).await;
    let (down, down_pods) = create_latency(&env, &opted_in, "down", 5).await;
    let (control, _) = create_latency(&env, &plain, "control", 5).await;
    for p in &down_pods {
        assert_eq!(
            injected(p),
            None,
            "{} mutated while the webhook was down",
            p.name_any()
        );
    }
    wait_running(&env, &opted_in, &down_pods[0].name_any()).await;
    eprintln!(
        "fail-open: pod create p50 with the webhook up {:.1} ms, scaled to 0 {:.1} ms, \
         namespace not opted in {:.1} ms",
        up.as_secs_f64() * 1e3,
        down.as_secs_f64() * 1e3,
        control.as_secs_f64() * 1e3
    );
    // A refused connection (kube-proxy rejects a Service without endpoints) costs the API
    // server next to nothing: nowhere near the webhook's 5 s timeout.
    assert!(
        down < control + Duration::from_millis(500),
        "webhook down: {down:?} per pod vs {control:?} without the webhook"
    );
    e2e_scenarios::scale_webhook(&env, 2).await;
    // Ready replicas are not yet routed to: kube-proxy programs the new endpoints a moment later.
    node::wait_webhook_answers(&env.client).await;

    // Hung: SIGSTOP the webhook processes. TCP connects still succeed (the kernel accepts into
    // the backlog), the TLS handshake never answers: the API server gives up at timeoutSeconds.
    let webhook_pods = Api::<Pod>::namespaced(env.client.clone(), &env.release_ns)
        .list(&ListParams::default().labels("app.kubernetes.io/component=webhook"))
        .await
        .unwrap()
        .items;
    let pids = webhook_processes(node, &webhook_pods);
    assert!(!pids.is_empty(), "no webhook processes found on the node");
    signal_all(&pids, libc::SIGSTOP);
    let t = Instant::now();
    let created = Api::<Pod>::namespaced(env.client.clone(), &opted_in)
        .create(
            &PostParams::default(),
            &restricted_pod("while-hung", &env.image, Some(&["sleep", "3600"]), &[], &[]),
        )
        .await;
    let took = t.elapsed();
    signal_all(&pids, libc::SIGCONT);
    let pod = created.unwrap_or_else(|e| panic!("pod refused while the webhook hung: {e}"));
    eprintln!(
        "fail-open: pod create with the webhook hung took {:.2} s (timeoutSeconds 5)",
        took.as_secs_f64()
    );
    assert_eq!(injected(&pod), None, "mutated by a stopped webhook?");
    // It did wait for the hung webhook (not a refused connection), and not much longer.
    assert!(
        took > Duration::from_millis(4500) && took < Duration::from_secs(5 + 2),
        "pod creation with a hung webhook took {took:?} (timeoutSeconds 5)"
    );
    wait_running(&env, &opted_in, "while-hung").await;
    // And it answers again.
    node::wait_webhook_answers(&env.client).await;
    env.delete_namespace(&opted_in).await;
    env.delete_namespace(&plain).await;
}

/// Scenario 6: `helm upgrade` to a new reaper image keeps wrapped pods running and wraps new
/// pods with the new image; `helm uninstall` leaves running pods running and new pods unchanged.
/// The release is installed again at the end.
#[tokio::test]
async fn s6_upgrade_and_uninstall_leave_running_pods_alone() {
    let Some(node) = ready().await else { return };
    let _w = RELEASE.write().await;
    let env = env(node).await;
    let chart = Chart::default();
    let ns = env.namespace("e2e-lifecycle", &[]).await;
    let sleep: &[&str] = &["sleep", "3600"];
    // The reaper image a pod was wrapped with: its installer's, or (auto where the node runs
    // image volumes) its image volume's.
    let install_image = |p: &Pod| -> Option<String> {
        let spec = p.spec.as_ref()?;
        let installer = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == "reaper-install")
            .and_then(|c| c.image.clone());
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find_map(|v| v.image.as_ref()?.reference.clone());
        installer.or(volume)
    };
    let before = create(
        &env,
        &ns,
        &restricted_pod("before", &env.image, Some(sleep), &[], &[]),
    )
    .await;
    assert_eq!(install_image(&before), Some(node.images.reaper()));
    let before = wait_running(&env, &ns, "before").await;

    let next_tag = format!("{}-next", node.images.tag);
    let next = node.push_reaper_image(&next_tag).unwrap();
    chart.helm_upgrade(node, &[("image.reaper.tag", &next_tag)], true);
    // Replicas roll one by one: wait until every answer carries the new image.
    let probe = restricted_pod("after-upgrade", &env.image, Some(sleep), &[], &[]);
    let pods = Api::<Pod>::namespaced(env.client.clone(), &ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let mut in_a_row = 0;
    while in_a_row < 3 {
        let p = wait_for(Duration::from_secs(120), "a dry-run create", || async {
            pods.create(&dry, &probe).await.ok()
        })
        .await;
        in_a_row = if install_image(&p).as_deref() == Some(next.as_str()) {
            in_a_row + 1
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            0
        };
    }
    let after = create(&env, &ns, &probe).await;
    assert_eq!(install_image(&after).as_deref(), Some(next.as_str()));
    let after = wait_running(&env, &ns, "after-upgrade").await;
    let still = |p: &Pod| {
        let env = env.clone();
        let (ns, name, uid) = (ns.clone(), p.name_any(), p.uid());
        async move {
            let now = Api::<Pod>::namespaced(env.client.clone(), &ns)
                .get(&name)
                .await
                .unwrap_or_else(|e| panic!("{name} gone: {e}"));
            assert_eq!(now.uid(), uid, "{name} was replaced");
            let status = now.status.unwrap();
            assert_eq!(status.phase.as_deref(), Some("Running"), "{name}");
            let restarts: i32 = status
                .container_statuses
                .unwrap_or_default()
                .iter()
                .map(|c| c.restart_count)
                .sum();
            assert_eq!(restarts, 0, "{name} restarted");
        }
    };
    still(&before).await;

    chart.uninstall(node);
    still(&before).await;
    still(&after).await;
    let plain = create(
        &env,
        &ns,
        &restricted_pod("after-uninstall", &env.image, Some(sleep), &[], &[]),
    )
    .await;
    assert_eq!(injected(&plain), None, "mutated after helm uninstall");
    assert!(install_image(&plain).is_none());
    wait_running(&env, &ns, "after-uninstall").await;
    eprintln!(
        "lifecycle: upgrade to {next} kept {} running and wrapped {} with it; uninstall kept both \
         running and left after-uninstall unchanged",
        before.name_any(),
        after.name_any()
    );
    // Back to the release the other scenarios expect.
    chart.install(node, &env.client, &[]).await;
    env.delete_namespace(&ns).await;
}

/// The MutatingAdmissionPolicy install (#17, `admission.engine=policy`: no webhook at all) on the
/// real kubelet: the seed's scenarios for the pods the policies can decide (opted-in namespace,
/// containers that declare `command`) — share and inject pods stop in under 3 s where the
/// unprotected control waits out its grace period, and a PID 1 that leaves orphans keeps none as
/// zombies while its opted-out copy does. Pods that need a registry lookup (the `auto` case
/// without `command`) are the webhook's, so the scenario leaves them out.
#[tokio::test]
async fn s12_policy_engine_runs_the_scenarios_it_can_decide() {
    let Some(node) = ready().await else { return };
    let _w = RELEASE.write().await;
    let env = env(node).await;
    let chart = Chart::default();
    let run = async {
        chart.helm_upgrade(node, &[("admission.engine", "policy")], true);
        let webhooks: Api<
            k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
        > = Api::all(env.client.clone());
        assert!(
            webhooks
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty(),
            "engine policy left a webhook registered"
        );
        // A new policy takes effect a moment after it is stored: wait until a dry-run create in
        // an opted-in namespace comes back wrapped (no webhook is left to do it).
        let probe_ns = env.namespace("e2e-policy-probe", &[]).await;
        let probe = restricted_pod("probe", &env.image, Some(&["sleep", "1"]), &[], &[]);
        let pods = env.pods(&probe_ns);
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        wait_for(
            Duration::from_secs(60),
            "the admission policies wrap a dry-run pod",
            || async {
                let stored = pods.create(&dry_run, &probe).await.ok()?;
                injected(&stored).filter(|i| i.starts_with("inject:"))
            },
        )
        .await;
        let without_lookups = e2e_scenarios::Env {
            entrypoint_image: None,
            ..env.clone()
        };
        let times = e2e_scenarios::stop_latency(&without_lookups).await;
        e2e_scenarios::orphans_are_reaped_only_when_protected(&without_lookups).await;
        eprintln!(
            "policy engine on the node: delete unprotected {:.2} s, share {:.2} s, inject {:.2} s",
            times.unprotected.as_secs_f64(),
            times.share.as_secs_f64(),
            times.inject.as_secs_f64()
        );
        env.delete_namespace(&probe_ns).await;
    };
    // Back to the webhook the other scenarios expect, passed or not.
    scenario_then(node, run, chart.install(node, &env.client, &[])).await;
}
