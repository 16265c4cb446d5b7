//! The images of the top-level Dockerfile, built with podman from the binaries built here
//! (`--build-arg BINARIES=prebuilt`: `make reaper` and `make controller-static`), run FROM
//! scratch: the `reaper` image holds only `/reaper`; the `controller` image runs
//! `/reaper-controller` under `/reaper` as PID 1, as UID 65532.
//!
//! A scratch image has no NSS modules. Static glibc (>= 2.34 has `files` and `dns` built in)
//! still resolves names, which these tests prove with the controller itself: the webhook, in
//! the image, reaches a real kube-apiserver (tests/support/control_plane.rs) as the chart's
//! ServiceAccount through (1) the in-cluster config (`KUBERNETES_SERVICE_HOST`, an IP, and the
//! mounted token), (2) a kubeconfig naming `kubernetes.default.svc`, answered by a DNS responder
//! of this test (`--dns`), and (3) a name from `/etc/hosts` (`--add-host`, no resolv.conf).
//! Readiness needs its ReaperPolicy and Namespace reflectors synced, so "ready" means the API
//! answered.
//!
//! Root and podman (see tests/support/podman.rs); skipped like the podman scenarios otherwise.
use reaper_test_support::chart as chart_common;

use reaper_test_support as support;

use base64::Engine as _;
use chart_common::{V, cluster, render};
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::control_plane::{self, TestCa, free_port, unique_name};
use support::podman::{Podman, controller_binary, podman, reaper_binary, wait_until};

const UID: &str = "65532";
/// A stop of a ready webhook: SIGTERM forwarded by the reaper, the webhook drains and exits 0.
const STOP_BOUND: Duration = Duration::from_secs(8);

/// Makes `dir` and its files readable by the image's user (65532).
fn open_up(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    for e in fs::read_dir(dir).unwrap() {
        fs::set_permissions(e.unwrap().path(), fs::Permissions::from_mode(0o644)).unwrap();
    }
}

fn inspect(pm: &Podman, image: &str, field: &str) -> String {
    pm.ok(&["image", "inspect", "--format", field, image])
}

/// Paths in the image's filesystem (from `podman export` of a created container).
fn image_files(pm: &Podman, image: &str) -> BTreeSet<String> {
    let c = pm.container("files");
    pm.ok(&["create", "--name", &c, image]);
    let tar = pm.scratch_dir("export").join("fs.tar");
    pm.ok(&["export", "-o", tar.to_str().unwrap(), &c]);
    let out = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tar)
        .output()
        .expect("tar");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != ".")
        .collect()
}

#[test]
fn reaper_image_holds_only_the_static_init() {
    let Some(pm) = podman("image reaper") else {
        return;
    };
    let image = pm.build_reaper_image();
    assert_eq!(
        inspect(&pm, &image, "{{.Config.User}}"),
        format!("{UID}:{UID}")
    );
    assert_eq!(
        inspect(&pm, &image, "{{json .Config.Entrypoint}}"),
        r#"["/reaper"]"#
    );
    assert_eq!(
        inspect(
            &pm,
            &image,
            "{{index .Config.Labels \"org.opencontainers.image.title\"}}"
        ),
        "reaper"
    );
    assert_eq!(
        image_files(&pm, &image),
        BTreeSet::from(["reaper".to_string()])
    );
    let out = pm.ok(&["run", "--rm", "--network", "none", &image, "--version"]);
    assert_eq!(out, format!("reaper {}", env!("CARGO_PKG_VERSION")));
    // The same bytes as the binary it was built from.
    let c = pm.container("copy");
    pm.ok(&["create", "--name", &c, &image]);
    let dest = pm.scratch_dir("copy").join("reaper");
    pm.ok(&["cp", &format!("{c}:/reaper"), dest.to_str().unwrap()]);
    assert!(
        fs::read(&dest).unwrap() == fs::read(reaper_binary()).unwrap(),
        "/reaper differs from target/reaper/reaper"
    );
}

#[test]
fn controller_image_runs_the_controller_under_reaper() {
    let Some(pm) = podman("image controller") else {
        return;
    };
    let image = pm.build_controller_image();
    assert_eq!(
        inspect(&pm, &image, "{{.Config.User}}"),
        format!("{UID}:{UID}")
    );
    assert_eq!(
        inspect(&pm, &image, "{{json .Config.Entrypoint}}"),
        r#"["/reaper","--","/reaper-controller"]"#
    );
    assert_eq!(
        image_files(&pm, &image),
        [
            "etc",
            "etc/ssl",
            "etc/ssl/certs",
            "etc/ssl/certs/ca-certificates.crt",
            "reaper",
            "reaper-controller"
        ]
        .into_iter()
        .map(String::from)
        .collect::<BTreeSet<_>>()
    );
    let help = pm.ok(&["run", "--rm", "--network", "none", &image, "--help"]);
    for sub in ["webhook", "operator", "agent", "crds"] {
        assert!(help.contains(sub), "--help lacks {sub}:\n{help}");
    }
    let version = pm.ok(&["run", "--rm", "--network", "none", &image, "--version"]);
    assert_eq!(
        version,
        format!("reaper-controller {}", env!("CARGO_PKG_VERSION"))
    );
    // A usage error passes through the reaper with the controller's exit code (clap: 2).
    let out = pm.exec(&[
        "run",
        "--rm",
        "--network",
        "none",
        &image,
        "no-such-command",
    ]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(controller_binary().exists());
}

/// A DNS server for one name on a loopback address of its own (port 53: resolv.conf has no port),
/// answering A queries for `name` with 127.0.0.1, nothing else. Records every name asked.
struct DnsResponder {
    addr: Ipv4Addr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsResponder {
    fn start(name: &'static str) -> Self {
        // 127.53.x.y: any 127/8 address is local on Linux; a per-process one avoids collisions.
        let pid = std::process::id();
        let addr = Ipv4Addr::new(127, 53, (pid >> 8) as u8, pid as u8 | 1);
        let sock = UdpSocket::bind((addr, 53)).unwrap_or_else(|e| panic!("binding {addr}:53: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (asked.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some((qname, answer)) = dns_answer(&buf[..n], name) {
                    a.lock().unwrap().push(qname);
                    let _ = sock.send_to(&answer, peer);
                }
            }
        });
        DnsResponder {
            addr,
            asked,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for DnsResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to a DNS query: A 127.0.0.1 for `name`, an empty NOERROR for its other types,
/// NXDOMAIN for other names. None for what is not a one-question query.
fn dns_answer(q: &[u8], name: &str) -> Option<(String, Vec<u8>)> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    while *q.get(i)? != 0 {
        let len = q[i] as usize;
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + len)?).to_ascii_lowercase());
        i += 1 + len;
    }
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let question_end = i + 5;
    q.get(..question_end)?;
    let qname = labels.join(".");
    let known = qname == name;
    let a = known && qtype == 1;
    let mut r = Vec::with_capacity(question_end + 16);
    r.extend_from_slice(&q[0..2]);
    r.extend_from_slice(&(if known { 0x8180u16 } else { 0x8183 }).to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(a as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..question_end]);
    if a {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some((qname, r))
}

#[test]
fn dns_answers_are_well_formed() {
    // A query for kubernetes.default.svc, type A, id 0x1234.
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in ["kubernetes", "default", "svc"] {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let (name, a) = dns_answer(&q, "kubernetes.default.svc").unwrap();
    assert_eq!(name, "kubernetes.default.svc");
    assert_eq!(&a[0..2], &[0x12, 0x34]);
    assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1, "one answer");
    assert_eq!(&a[a.len() - 4..], &[127, 0, 0, 1]);
    let (_, nx) = dns_answer(&q, "other.example").unwrap();
    assert_eq!(nx[3] & 0x0f, 3, "NXDOMAIN");
    assert_eq!(u16::from_be_bytes([nx[6], nx[7]]), 0);
    assert!(dns_answer(&q[..14], "x").is_none());
}

/// `GET /readyz` on a plain-HTTP port: the status code, if anything answered.
fn readyz(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// What the controller container is given to reach the API server.
struct Scene {
    image: String,
    namespace: String,
    api_port: u16,
    token: String,
    ca_pem: String,
    tls_dir: String,
}

/// How the webhook in the container finds the API server.
enum Reach {
    /// In-cluster config: KUBERNETES_SERVICE_HOST=127.0.0.1 and the token/CA mounted where
    /// kubelet mounts them.
    InCluster,
    /// A kubeconfig naming `host`, resolved through the given podman flags.
    Named {
        host: &'static str,
        podman: Vec<String>,
    },
}

fn token_kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\n\
         current-context: c\nusers:\n- name: u\n  user:\n    token: {token}\n"
    )
}

/// Runs the webhook in the controller image until ready, checks PID 1 and the user, stops it.
fn run_webhook(pm: &Podman, scene: &Scene, what: &str, how: Reach) {
    let (listen, admin) = (free_port(), free_port());
    let name = pm.container(what);
    let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", "host"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["-e".into(), format!("POD_NAMESPACE={}", scene.namespace)]);
    args.extend(["-v".into(), format!("{}:/tls:ro", scene.tls_dir)]);
    match &how {
        Reach::InCluster => {
            let sa = pm.scratch_dir("sa");
            fs::write(sa.join("token"), &scene.token).unwrap();
            fs::write(sa.join("ca.crt"), &scene.ca_pem).unwrap();
            fs::write(sa.join("namespace"), &scene.namespace).unwrap();
            open_up(&sa);
            args.extend([
                "-v".into(),
                format!(
                    "{}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
                    sa.display()
                ),
                "-e".into(),
                "KUBERNETES_SERVICE_HOST=127.0.0.1".into(),
                "-e".into(),
                format!("KUBERNETES_SERVICE_PORT={}", scene.api_port),
            ]);
        }
        Reach::Named { host, podman } => {
            let kc = pm.scratch_dir("kubeconfig");
            let server = format!("https://{host}:{}", scene.api_port);
            fs::write(
                kc.join("config"),
                token_kubeconfig(&server, &scene.ca_pem, &scene.token),
            )
            .unwrap();
            open_up(&kc);
            args.extend(["-v".into(), format!("{}:/kube:ro", kc.display())]);
            args.extend(["-e".into(), "KUBECONFIG=/kube/config".into()]);
            args.extend(podman.iter().cloned());
        }
    }
    args.push(scene.image.clone());
    args.extend([
        "webhook".to_string(),
        format!("--listen=127.0.0.1:{listen}"),
        format!("--admin-listen=127.0.0.1:{admin}"),
        "--tls-cert=/tls/tls.crt".into(),
        "--tls-key=/tls/tls.key".into(),
        "--reaper-image=example.com/reaper:test".into(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    pm.ok(&refs);
    let pid = pm.wait_running(&name);
    let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            Duration::from_secs(60),
            "webhook ready in the container",
            || (readyz(admin) == Some(200)).then_some(()),
        )
    }));
    if ready.is_err() {
        panic!(
            "the webhook in the image never became ready; its log:\n{}",
            pm.logs(&name)
        );
    }
    // PID 1 of the container is the reaper, running the controller, as 65532.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(
        argv[..3],
        ["/reaper", "--", "/reaper-controller"],
        "{argv:?}"
    );
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == UID),
        "{uid_line}"
    );
    let logs = pm.logs(&name);
    assert!(
        // kube's 403 errors say "forbidden" (a bare "403" also shows up in timestamps).
        !logs.contains("code: 403") && !logs.to_lowercase().contains("forbidden"),
        "{logs}"
    );
    // SIGTERM reaches the webhook through the reaper: it drains and exits 0, promptly.
    let took = pm.stop(&name, 20);
    assert!(took < STOP_BOUND, "stop took {took:?}\n{}", pm.logs(&name));
    assert_eq!(pm.exit_code(&name), 0, "{}", pm.logs(&name));
}

#[test]
fn controller_in_the_image_reaches_the_api_server_by_ip_dns_and_hosts() {
    let Some(pm) = podman("image controller api") else {
        return;
    };
    let Some(cp) = control_plane::shared(module_path!()) else {
        return;
    };
    let image = pm.build_controller_image();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The chart's webhook ServiceAccount and RBAC, for real, in a namespace of this test.
    let (namespace, token) = rt.block_on(async {
        let client = cp.client().await;
        cp.install_crds(&client).await;
        let ns = cp.ns(&client, "image").await;
        let release = unique_name("img");
        let objs = render(&release, &ns, &[V::Set("agent.enabled", "false")]);
        let rbac: Vec<_> = cluster::rbac(objs.all())
            .into_iter()
            .filter(|o| {
                o["metadata"]["name"].as_str().is_some_and(|n| {
                    n.ends_with("-webhook") || n.ends_with("-webhook-image-volume-probe")
                })
            })
            .collect();
        assert_eq!(
            rbac.len(),
            5,
            "SA, ClusterRole, ClusterRoleBinding, and the image-volume probe's Role and RoleBinding"
        );
        let errors = cluster::apply_all(&client, &rbac, false).await;
        assert!(errors.is_empty(), "{errors:#?}");
        let sa = format!("{release}-reaper-webhook");
        objs.get("ServiceAccount", &sa);
        let token = cp
            .service_account_token(&client, &ns, &sa, Duration::from_secs(3600))
            .await;
        (ns, token)
    });
    let api_port: u16 = cp.server.rsplit(':').next().unwrap().parse().unwrap();
    let tls = pm.scratch_dir("tls");
    let pair = TestCa::new("image-test-ca").issue_server(&["127.0.0.1"]);
    fs::write(tls.join("tls.crt"), &pair.cert_pem).unwrap();
    fs::write(tls.join("tls.key"), &pair.key_pem).unwrap();
    open_up(&tls);
    let scene = Scene {
        image,
        namespace,
        api_port,
        token,
        ca_pem: cp.ca_pem().to_string(),
        tls_dir: tls.display().to_string(),
    };

    // 1. In-cluster config: an IP from the environment, no name to resolve.
    run_webhook(&pm, &scene, "in-cluster", Reach::InCluster);

    // 2. DNS: the apiserver's certificate names kubernetes.default.svc.
    let dns = DnsResponder::start("kubernetes.default.svc");
    run_webhook(
        &pm,
        &scene,
        "dns",
        Reach::Named {
            host: "kubernetes.default.svc",
            podman: vec!["--dns".into(), dns.addr.to_string()],
        },
    );
    let asked = dns.asked.lock().unwrap().clone();
    assert!(
        asked.iter().any(|n| n == "kubernetes.default.svc"),
        "no DNS query seen: {asked:?}"
    );
    drop(dns);

    // 3. /etc/hosts only (no resolv.conf at all): the certificate also names `kubernetes`.
    run_webhook(
        &pm,
        &scene,
        "hosts",
        Reach::Named {
            host: "kubernetes",
            podman: vec![
                "--dns".into(),
                "none".into(),
                "--add-host".into(),
                "kubernetes:127.0.0.1".into(),
            ],
        },
    );
}
