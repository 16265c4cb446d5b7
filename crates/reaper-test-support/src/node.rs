//! A real single-node Kubernetes cluster on this machine, for the node scenarios, `make demo` and
//! `make bench-node`: the control plane of [`super::control_plane`] serving on the pod bridge's
//! gateway address, plus kube-controller-manager, kube-scheduler, containerd (runc, CNI bridge),
//! kubelet and kube-proxy as plain processes, and a local OCI registry (Debian's
//! `docker-registry`) that containerd pulls from like any registry. Nothing comes from the
//! internet: the pause, reaper, controller and workload images are built here with podman (the
//! reaper and controller images from the Dockerfile's stages) and pushed to that registry.
//!
//! ```text
//!   host (root netns)                                     pods (10.244.0.0/24 on bridge reaper0)
//!   kube-apiserver   10.244.0.1:<port>  <-- 10.96.0.1:443 (kube-proxy DNAT) --  in-cluster clients
//!   docker-registry  10.244.0.1:<port>  <-- containerd pulls, the webhook's registry lookups
//!   kubelet          10.244.0.1:<port>  <-- exec, logs, port-forward (TLS from the test CA)
//!   webhook Service  10.96.x.y:443      <-- kube-apiserver (ClusterIP through kube-proxy)
//! ```
//!
//! One node per machine (cgroups under `/kubepods`, containerd's shim sockets and the bridge
//! are machine-wide): a lock file serialises test binaries and the demo. Whatever a run killed
//! with SIGKILL left behind (pods' processes, mounts, cgroups, iptables rules, the bridge) is
//! cleaned up by the next start. Settings that this machine needs (cgroup v1 without systemd,
//! no CAP_SYS_RESOURCE): kubelet `cgroupDriver: cgroupfs` + `failCgroupV1: false`, containerd
//! `restrict_oom_score_adj = true`.

use super::control_plane::{self, ControlPlane, Options, block_on, free_port, free_port_on, tool};
use super::podman;
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod, ServiceAccount};
use kube::api::Api;
use kube::{Client, ResourceExt};
use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Set to `1` to skip the node tests (a quick local loop only; refused when `CI=true`).
pub const SKIP_ENV: &str = "REAPER_SKIP_NODE";
/// The Node's name.
pub const NODE_NAME: &str = "reaper-node";
/// The pod bridge (created here; the CNI bridge plugin attaches pods to it).
pub const BRIDGE: &str = "reaper0";
/// Pod subnet on the bridge, and the gateway address the node's services listen on.
pub const POD_SUBNET: &str = "10.244.0.0/24";
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The CNI network's name (libcni keys its cache under /var/lib/cni by it).
const CNI_NETWORK: &str = "reaper-node";
/// Where Debian's containernetworking-plugins are (override: `REAPER_CNI_BIN`).
const CNI_BIN_DEFAULT: &str = "/usr/lib/cni";
const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback"];

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const LOCK_TIMEOUT: Duration = Duration::from_secs(900);
const CMD_TIMEOUT: Duration = Duration::from_secs(300);

/// The images pushed to the node's registry.
#[derive(Clone, Debug)]
pub struct Images {
    /// `<registry>/kubernetes/pause:<kube version>`: containerd's sandbox image (pinned).
    pub pause: String,
    /// `<registry>/reaper-dev/reaper` (repository without tag).
    pub reaper_repo: String,
    /// `<registry>/reaper-dev/reaper-controller`.
    pub controller_repo: String,
    /// The tag both carry (the crate version).
    pub tag: String,
    /// busybox (every applet) + e2e/podman/scripts, `ENTRYPOINT ["/bin/sleep"] CMD ["3600"]`:
    /// a PID 1 that ignores SIGTERM and never reaps, also when the pod declares no command.
    pub workload: String,
}

impl Images {
    pub fn reaper(&self) -> String {
        format!("{}:{}", self.reaper_repo, self.tag)
    }
    pub fn controller(&self) -> String {
        format!("{}:{}", self.controller_repo, self.tag)
    }
}

/// How long each start step took (printed, and kept for the benchmark).
#[derive(Clone, Debug, Default)]
pub struct StartTimes {
    pub control_plane: Duration,
    pub images: Duration,
    pub node_ready: Duration,
    pub total: Duration,
}

/// A running node and its control plane.
pub struct Node {
    cp: ControlPlane,
    /// State dir: containerd root/state, kubelet root, CNI, registry data, configs.
    dir: PathBuf,
    /// `10.244.0.1:<port>`, plain HTTP.
    pub registry: String,
    pub images: Images,
    pub times: StartTimes,
    _lock: fs::File,
    stopped: Mutex<bool>,
    chart: tokio::sync::OnceCell<()>,
}

/// Why this machine cannot run a node (not root, no cgroups, a missing binary), if it cannot.
pub fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("a node needs root (cgroups, mounts, network namespaces)".into());
    }
    if !Path::new("/sys/fs/cgroup/pids").is_dir()
        && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        return Some("no cgroup filesystem at /sys/fs/cgroup".into());
    }
    for t in [
        "kubelet",
        "kube-scheduler",
        "kube-proxy",
        "kube-controller-manager",
        "kubectl",
        "containerd",
        "containerd-shim-runc-v2",
        "pause",
        "helm",
    ] {
        if let Err(e) = tool(t) {
            return Some(e);
        }
    }
    for (bin, pkg) in [
        ("runc", "runc"),
        ("podman", "podman"),
        ("docker-registry", "docker-registry"),
        ("ip", "iproute2"),
        ("iptables", "iptables"),
    ] {
        if which(bin).is_none() {
            return Some(format!(
                "{bin} not found: apt-get install {pkg} (.ci/run does)"
            ));
        }
    }
    let cni = cni_bin();
    for p in CNI_PLUGINS {
        if !cni.join(p).is_file() {
            return Some(format!(
                "CNI plugin {} missing: apt-get install containernetworking-plugins (.ci/run does) \
                 or set REAPER_CNI_BIN",
                cni.join(p).display()
            ));
        }
    }
    None
}

pub use crate::process::is_root;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn cni_bin() -> PathBuf {
    std::env::var_os("REAPER_CNI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CNI_BIN_DEFAULT))
}

/// The node's state dir (fixed: the next start must find what a killed run left).
pub fn state_dir() -> PathBuf {
    std::env::temp_dir().join("reaper-node")
}

static SHARED: OnceLock<Result<&'static Node, String>> = OnceLock::new();

/// The node shared by the tests of this test binary, started on first use. `None` (with a loud
/// notice) when skipped on purpose or when the machine cannot run a node — never in CI, where
/// both are failures. Panics with the reason when the node does not start.
pub fn shared() -> Option<&'static Node> {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        assert!(
            !in_ci(),
            "{SKIP_ENV}=1 is set in CI: the node tests must run there"
        );
        eprintln!(
            "\n!!! {SKIP_ENV}=1: SKIPPING a node test. This proves nothing; never set it in CI. !!!\n"
        );
        return None;
    }
    if let Some(why) = unavailable() {
        assert!(
            !in_ci(),
            "CI=true and this machine cannot run a node: {why}"
        );
        eprintln!("\n!!! SKIPPING a node test: this machine cannot run a node: {why} !!!\n");
        return None;
    }
    let shared = SHARED.get_or_init(|| {
        let owner = control_plane::owner_thread("node-owner")?;
        let node: &'static Node = Box::leak(Box::new(Node::start(owner)?));
        register_exit_cleanup();
        Ok(node)
    });
    match shared {
        Ok(n) => Some(n),
        Err(e) => panic!("the node did not start: {e}"),
    }
}

#[allow(unsafe_code)]
fn register_exit_cleanup() {
    extern "C" fn stop_shared() {
        if let Some(Ok(n)) = SHARED.get() {
            n.shutdown();
        }
    }
    // SAFETY: registers a plain `extern "C" fn` with no arguments; it only touches statics.
    unsafe {
        libc::atexit(stop_shared);
    }
}

impl Node {
    /// Starts a node owned by the caller (stopped by [`Self::shutdown`]); `owner` spawns every
    /// long-lived process. Blocking.
    pub fn start(owner: control_plane::Owner) -> Result<Self, String> {
        let began = Instant::now();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = state_dir();
        let lock = lock_machine(&dir)?;
        cleanup(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let _ = fs::write(dir.join("owner.pid"), std::process::id().to_string());
        setup_network()?;

        let cp = ControlPlane::start_owned(
            Some(owner),
            &Options {
                address: Some(NODE_IP),
            },
        )?;
        let control_plane = began.elapsed();

        let t = Instant::now();
        let registry = start_registry(&cp, &dir)?;
        let images = build_images(&dir, &registry)?;
        let images_took = t.elapsed();

        let t = Instant::now();
        let mut node = Node {
            cp,
            dir,
            registry,
            images,
            times: StartTimes::default(),
            _lock: lock,
            stopped: Mutex::new(false),
            chart: tokio::sync::OnceCell::new(),
        };
        let started = node.start_components();
        if let Err(e) = started {
            let msg = format!("{e}\n{}", node.cp.log_tails());
            node.shutdown();
            return Err(msg);
        }
        node.times = StartTimes {
            control_plane,
            images: images_took,
            node_ready: t.elapsed(),
            total: began.elapsed(),
        };
        eprintln!(
            "node: {NODE_NAME} Ready in {:.1} s (control plane {:.1} s, images {:.1} s, \
             containerd + kubelet + scheduler + controller-manager + kube-proxy {:.1} s); \
             API server {}, registry {}, logs in {}",
            node.times.total.as_secs_f64(),
            control_plane.as_secs_f64(),
            images_took.as_secs_f64(),
            node.times.node_ready.as_secs_f64(),
            node.cp.server,
            node.registry,
            node.cp.dir().display()
        );
        Ok(node)
    }

    fn start_components(&self) -> Result<(), String> {
        let bin = control_plane::bin_dir();
        let containerd_sock = self.dir.join("containerd.sock");
        self.write_containerd_config(&containerd_sock)?;
        let mut cmd = Command::new(tool("containerd")?);
        cmd.arg("--config").arg(self.dir.join("containerd.toml"));
        // containerd finds containerd-shim-runc-v2 on its PATH.
        cmd.env("PATH", path_with(&bin));
        self.cp.spawn("containerd", cmd)?;
        self.wait_for("containerd socket", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&containerd_sock).is_ok()
        })?;

        // kubelet: client certificate for the Node authorizer, serving certificate from the
        // control plane's CA (the API server verifies it: --kubelet-certificate-authority).
        let kubelet_kc = self.cp.write_cert_kubeconfig(
            "kubelet",
            &format!("system:node:{NODE_NAME}"),
            &["system:nodes"],
        );
        let serving = self
            .cp
            .ca()
            .issue_server(&[&NODE_IP.to_string(), NODE_NAME, "localhost"]);
        let pki = self.dir.join("pki");
        fs::create_dir_all(&pki).map_err(|e| e.to_string())?;
        write(&pki.join("kubelet.crt"), &serving.cert_pem)?;
        write(&pki.join("kubelet.key"), &serving.key_pem)?;
        write(&pki.join("ca.crt"), self.cp.ca_pem())?;
        let (kubelet_port, healthz_port) = (free_port_on(&NODE_IP.to_string()), free_port());
        write(
            &self.dir.join("kubelet.yaml"),
            &self.kubelet_config(&containerd_sock, kubelet_port, healthz_port),
        )?;
        let mut cmd = Command::new(tool("kubelet")?);
        cmd.arg(format!(
            "--config={}",
            self.dir.join("kubelet.yaml").display()
        ))
        .arg(format!("--kubeconfig={}", kubelet_kc.display()))
        .arg(format!("--root-dir={}", self.dir.join("kubelet").display()))
        .arg(format!("--hostname-override={NODE_NAME}"))
        .arg(format!("--node-ip={NODE_IP}"))
        .arg("--v=1");
        cmd.env("PATH", path_with(&bin));
        self.cp.spawn("kubelet", cmd)?;

        let sched_kc =
            self.cp
                .write_cert_kubeconfig("kube-scheduler", "system:kube-scheduler", &[]);
        let mut cmd = Command::new(tool("kube-scheduler")?);
        cmd.args([
            format!("--kubeconfig={}", sched_kc.display()),
            format!("--authentication-kubeconfig={}", sched_kc.display()),
            format!("--authorization-kubeconfig={}", sched_kc.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()),
            "--profiling=false".into(),
        ]);
        self.cp.spawn("kube-scheduler", cmd)?;

        let proxy_kc = self
            .cp
            .write_cert_kubeconfig("kube-proxy", "system:kube-proxy", &[]);
        let proxy_healthz = free_port();
        write(
            &self.dir.join("kube-proxy.yaml"),
            &kube_proxy_config(&proxy_kc, proxy_healthz),
        )?;
        let mut cmd = Command::new(tool("kube-proxy")?);
        cmd.arg(format!(
            "--config={}",
            self.dir.join("kube-proxy.yaml").display()
        ));
        cmd.env("PATH", path_with(&bin));
        self.cp.spawn("kube-proxy", cmd)?;

        let cp = &self.cp;
        block_on(async {
            let client = cp.client().await;
            // Namespace deletion, ServiceAccounts, kube-root-ca.crt, workload controllers.
            cp.ensure_controller_manager(&client).await;
            wait_node_ready(cp, &client).await?;
            // Pods are admissible once the controller-manager made `default`'s ServiceAccount.
            let sas = Api::<ServiceAccount>::namespaced(client.clone(), "default");
            let deadline = Instant::now() + READY_TIMEOUT;
            while !matches!(sas.get_opt("default").await, Ok(Some(_))) {
                if Instant::now() > deadline {
                    return Err("no default ServiceAccount from the controller-manager".into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok::<(), String>(())
        })?;
        // kube-proxy answers /healthz once it has programmed the rules at least once.
        self.wait_for("kube-proxy healthz", READY_TIMEOUT, || {
            http_get_ok("127.0.0.1", proxy_healthz, "/healthz")
        })
    }

    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut ok: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if ok() {
                return Ok(());
            }
            self.cp.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!("{what}: not within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn write_containerd_config(&self, sock: &Path) -> Result<(), String> {
        let d = &self.dir;
        let certs = d.join("certs.d");
        // containerd pulls from the local registry over plain HTTP, like any insecure mirror.
        let host_dir = certs.join(&self.registry);
        fs::create_dir_all(&host_dir).map_err(|e| e.to_string())?;
        write(
            &host_dir.join("hosts.toml"),
            &format!(
                "server = \"http://{r}\"\n\n[host.\"http://{r}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                r = self.registry
            ),
        )?;
        let cni_conf = d.join("cni/net.d");
        fs::create_dir_all(&cni_conf).map_err(|e| e.to_string())?;
        write(
            &cni_conf.join("10-reaper-node.conflist"),
            &serde_json::json!({
                "cniVersion": "1.0.0", "name": CNI_NETWORK,
                "plugins": [{
                    "type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {"type": "host-local", "dataDir": d.join("cni/ipam"),
                             "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP.to_string()}]],
                             "routes": [{"dst": "0.0.0.0/0"}]}
                }]
            })
            .to_string(),
        )?;
        let runc = which("runc").ok_or("runc not found")?;
        let config = format!(
            r#"version = 3
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[metrics]
  address = ""
[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{pause}"
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = "{certs}"
  [plugins.'io.containerd.cri.v1.runtime']
    # Root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj (pause gets -998) fails every
    # sandbox in runc ("can't get final child's PID from pipe: EOF"). Clamp to containerd's own.
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          Root = "{runc_root}"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["{cni_bin}"]
      conf_dir = "{cni_conf}"
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
"#,
            root = d.join("containerd/root").display(),
            state = d.join("containerd/state").display(),
            sock = sock.display(),
            pause = self.images.pause,
            certs = certs.display(),
            runc = runc.display(),
            runc_root = d.join("runc").display(),
            cni_bin = cni_bin().display(),
            cni_conf = cni_conf.display(),
        );
        let _ = fs::remove_file(sock);
        write(&d.join("containerd.toml"), &config)
    }

    fn kubelet_config(&self, sock: &Path, port: u16, healthz_port: u16) -> String {
        let d = &self.dir;
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 hybrid without systemd: cgroupfs, and kubelet >= 1.35 refuses v1 unless told.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{sock}
address: {ip}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
tlsCertFile: {pki}/kubelet.crt
tlsPrivateKeyFile: {pki}/kubelet.key
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {pki}/ca.crt}}
authorization:
  mode: Webhook
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
podLogsDir: {logs}
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
# The default (-999) needs CAP_SYS_RESOURCE, which root lacks here.
oomScoreAdj: 0
# One node runs everything (`make bench-node` keeps 6 series of 21 pods at once); the pod subnet
# is a /24.
maxPods: 200
"#,
            sock = sock.display(),
            ip = NODE_IP,
            pki = d.join("pki").display(),
            logs = d.join("pod-logs").display(),
        )
    }

    /// The control plane (client, kubeconfig, logs).
    pub fn cp(&self) -> &ControlPlane {
        &self.cp
    }

    /// An admin client bound to the calling runtime.
    pub async fn client(&self) -> Client {
        self.cp.client().await
    }

    /// `kubectl` (built with the node, same version as the API server) with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let kubectl = tool("kubectl").unwrap_or_else(|e| panic!("{e}"));
        self.cp.command(kubectl)
    }

    /// Runs `kubectl ARGS`; (exit success, stdout, stderr).
    pub fn kubectl_out(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = self.kubectl();
        cmd.args(args);
        run(cmd, CMD_TIMEOUT)
    }

    /// `helm` with the admin kubeconfig.
    pub fn helm(&self) -> Command {
        let helm = tool("helm").unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = self.cp.command(helm);
        // helm keeps caches and its registry config under HOME; keep them out of the user's.
        cmd.env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        cmd
    }

    /// Builds the Dockerfile's `reaper` stage with another VERSION label and pushes it as
    /// `<reaper repo>:<tag>` (a new image digest, for upgrade scenarios).
    pub fn push_reaper_image(&self, tag: &str) -> Result<String, String> {
        let image = format!("{}:{tag}", self.images.reaper_repo);
        build_and_push(
            &self.dir,
            &image,
            &podman::repo().join("Dockerfile"),
            podman::repo(),
            &[
                "--target",
                "reaper",
                "--build-arg",
                "BINARIES=prebuilt",
                "--build-arg",
                &format!("VERSION={tag}"),
            ],
        )?;
        Ok(image)
    }

    /// Host pids of the processes in a pod's cgroup (all its containers, sandbox included).
    pub fn pod_pids(&self, pod_uid: &str) -> Vec<i32> {
        pod_cgroup_dirs(pod_uid)
            .iter()
            .flat_map(|d| cgroup_procs_recursive(d))
            .collect()
    }

    /// What is recorded about the node for a failed scenario: pods, events, component logs.
    pub fn diagnose(&self, namespaces: &[&str]) -> String {
        let mut out = String::new();
        for ns in namespaces {
            for args in [
                vec!["get", "pods", "-o", "wide", "-n", ns],
                vec!["get", "events", "--sort-by=.lastTimestamp", "-n", ns],
            ] {
                let (_, so, se) = self.kubectl_out(&args);
                let _ = writeln!(out, "$ kubectl {}\n{so}{se}", args.join(" "));
            }
        }
        for component in ["webhook", "operator", "agent"] {
            let args = [
                "logs",
                "-n",
                "reaper-system",
                "-l",
                &format!("app.kubernetes.io/component={component}"),
                "--tail=40",
                "--prefix",
            ];
            let (_, so, se) = self.kubectl_out(&args);
            let _ = writeln!(out, "$ kubectl {}\n{so}{se}", args.join(" "));
        }
        let _ = writeln!(out, "{}", self.cp.log_tails());
        out
    }

    /// Stops every process of the node and removes what it left on the machine. Idempotent.
    pub fn shutdown(&self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if *stopped {
            return;
        }
        *stopped = true;
        // The kubelet first, so nothing restarts what is killed next.
        for name in ["kubelet", "kube-proxy", "kube-scheduler", "containerd"] {
            self.cp.kill(name, libc::SIGTERM);
        }
        cleanup(&self.dir);
        self.cp.shutdown();
    }

    /// Installs the chart (`helm install` from charts/reaper, images from the node's registry)
    /// once per test binary as release `reaper` in `reaper-system`, and waits until it admits.
    pub async fn ensure_chart(&self) {
        self.chart
            .get_or_init(|| async {
                let client = self.client().await;
                let chart = Chart::default();
                chart.install(self, &client, &[]).await;
            })
            .await;
    }
}

/// A Helm release of charts/reaper on the node.
#[derive(Clone, Debug)]
pub struct Chart {
    pub release: String,
    pub namespace: String,
}

impl Default for Chart {
    fn default() -> Self {
        Chart {
            release: "reaper".into(),
            namespace: "reaper-system".into(),
        }
    }
}

impl Chart {
    /// `--set` values pointing the chart at the node's images and registry, plus `extra`.
    pub fn values(node: &Node, extra: &[(&str, &str)]) -> Vec<String> {
        let i = &node.images;
        let mut v = vec![
            format!("image.controller.repository={}", i.controller_repo),
            format!("image.controller.tag={}", i.tag),
            format!("image.reaper.repository={}", i.reaper_repo),
            format!("image.reaper.tag={}", i.tag),
            // The webhook resolves ENTRYPOINT/CMD from the local (plain HTTP) registry.
            format!("registry.insecureRegistries={{{}}}", node.registry),
            // Scenarios wait for zombies to be reported: scan often.
            "agent.interval=2s".into(),
            "agent.heartbeat=30s".into(),
            // The restart scenario needs the opt-in Restart action (and its admission fence).
            "operator.restart.enabled=true".into(),
        ];
        v.extend(extra.iter().map(|(k, val)| format!("{k}={val}")));
        v
    }

    /// `helm upgrade --install --wait`, then waits until the webhook's configuration carries
    /// its CA (self-managed certificates: the operator writes it) and a dry-run pod create in an
    /// opted-in namespace comes back mutated.
    pub async fn install(&self, node: &Node, client: &Client, extra: &[(&str, &str)]) {
        self.ensure_namespace(client).await;
        self.helm_upgrade(node, extra, true);
        wait_webhook_answers(client).await;
    }

    /// `helm upgrade --install` with the node's values; panics with helm's output on failure.
    pub fn helm_upgrade(&self, node: &Node, extra: &[(&str, &str)], wait: bool) {
        let mut cmd = node.helm();
        cmd.args([
            "upgrade",
            "--install",
            &self.release,
            podman::repo().join("charts/reaper").to_str().unwrap(),
            "--namespace",
            &self.namespace,
        ]);
        if wait {
            cmd.args(["--wait", "--timeout", "5m"]);
        }
        for v in Self::values(node, extra) {
            cmd.args(["--set", &v]);
        }
        let (ok, so, se) = run(cmd, Duration::from_secs(400));
        assert!(
            ok,
            "helm upgrade --install {}: {so}{se}\n{}",
            self.release,
            node.diagnose(&[&self.namespace])
        );
    }

    /// `helm uninstall --wait`.
    pub fn uninstall(&self, node: &Node) {
        let mut cmd = node.helm();
        cmd.args([
            "uninstall",
            &self.release,
            "--namespace",
            &self.namespace,
            "--wait",
            "--timeout",
            "3m",
        ]);
        let (ok, so, se) = run(cmd, Duration::from_secs(240));
        assert!(ok, "helm uninstall {}: {so}{se}", self.release);
    }

    /// The release namespace, labelled for Pod Security `privileged` (the agent uses hostPID).
    async fn ensure_namespace(&self, client: &Client) {
        let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": self.namespace,
                         "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}
        }))
        .unwrap();
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .patch(
                &self.namespace,
                &kube::api::PatchParams::apply("reaper-tests").force(),
                &kube::api::Patch::Apply(&ns),
            )
            .await
            .unwrap_or_else(|e| panic!("namespace {}: {e}", self.namespace));
    }
}

/// Waits until the MutatingWebhookConfiguration has a caBundle and a dry-run pod create in a
/// throw-away opted-in namespace is mutated (the webhook Service answers through kube-proxy).
pub async fn wait_webhook_answers(client: &Client) {
    use k8s_openapi::api::core::v1::Namespace;
    let ns_name = control_plane::unique_name("reaper-probe");
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns_name, "labels": {reaper_contract::keys::LABEL_INJECT: reaper_contract::keys::INJECT_ENABLED}}
    }))
    .unwrap();
    let nss = Api::<Namespace>::all(client.clone());
    nss.create(&Default::default(), &ns).await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns_name);
    let probe: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "example.invalid/probe:1", "command": ["/probe"]}]}
    }))
    .unwrap();
    let dry = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut in_a_row = 0;
    let mut last;
    while in_a_row < 3 {
        match pods.create(&dry, &probe).await {
            Ok(p)
                if p.annotations()
                    .contains_key(reaper_contract::keys::ANNOTATION_INJECTED) =>
            {
                in_a_row += 1;
                continue;
            }
            Ok(_) => last = "admitted unmutated".into(),
            // No ServiceAccount yet in the new namespace.
            Err(e) => last = e.to_string(),
        }
        in_a_row = 0;
        assert!(
            Instant::now() < deadline,
            "the webhook does not mutate pods within 180 s (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = nss.delete(&ns_name, &Default::default()).await;
}

async fn wait_node_ready(cp: &ControlPlane, client: &Client) -> Result<(), String> {
    let nodes = Api::<KubeNode>::all(client.clone());
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(n)) = nodes.get_opt(NODE_NAME).await {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                return Ok(());
            }
        }
        cp.check_alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "node {NODE_NAME} not Ready within {READY_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn kube_proxy_config(kubeconfig: &Path, healthz_port: u16) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kc}
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {POD_SUBNET}
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:{healthz_port}
metricsBindAddress: 127.0.0.1:{metrics}
# Leave the host's conntrack and route_localnet sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
  syncPeriod: 30s
  minSyncPeriod: 0s
"#,
        kc = kubeconfig.display(),
        metrics = free_port(),
    )
}

/// The pod bridge with the node's address (the API server, registry and kubelet listen there
/// before the first pod exists), forwarding on, bridged traffic through iptables (a pod reaching
/// a Service backed by a pod on the same bridge needs kube-proxy's DNAT undone on the way back).
fn setup_network() -> Result<(), String> {
    let ip = |args: &[&str]| -> Result<(), String> {
        let (ok, so, se) = run_cmd("ip", args);
        if ok {
            Ok(())
        } else {
            Err(format!("ip {}: {so}{se}", args.join(" ")))
        }
    };
    let _ = run_cmd("ip", &["link", "del", BRIDGE]);
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    // Services are reached through the bridge (kube-proxy DNATs them to pods or to the API
    // server), also on a machine without a default route.
    ip(&[
        "route",
        "add",
        control_plane::SERVICE_CIDR,
        "dev",
        BRIDGE,
        "src",
        &NODE_IP.to_string(),
    ])?;
    for (path, want) in [
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
    ] {
        if fs::read_to_string(path).is_ok_and(|v| v.trim() != want) {
            fs::write(path, want).map_err(|e| format!("writing {path}: {e}"))?;
        }
    }
    Ok(())
}

/// docker-registry on the node address (pods and containerd reach it there), data in `dir`.
fn start_registry(cp: &ControlPlane, dir: &Path) -> Result<String, String> {
    let addr = format!("{NODE_IP}:{}", free_port_on(&NODE_IP.to_string()));
    let data = dir.join("registry");
    fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let config = dir.join("registry.yml");
    write(
        &config,
        &format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: reaper-node\n",
            data.display()
        ),
    )?;
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(&config);
    cp.spawn("docker-registry", cmd)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        cp.check_alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "docker-registry not listening on {addr} within 20 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(addr)
}

/// Builds the node's images with podman and pushes them to `registry`.
fn build_images(dir: &Path, registry: &str) -> Result<Images, String> {
    let repo = podman::repo();
    let tag = env!("CARGO_PKG_VERSION").to_string();
    podman::reaper_binary();
    podman::controller_binary();
    let ctx = dir.join("images");
    let _ = fs::remove_dir_all(&ctx);

    // Kubernetes' pause (bin/pause, built by `make tools`), as the sandbox image.
    let pause_ctx = ctx.join("pause");
    fs::create_dir_all(&pause_ctx).map_err(|e| e.to_string())?;
    fs::copy(tool("pause")?, pause_ctx.join("pause")).map_err(|e| format!("copy pause: {e}"))?;
    let kube_version = kube_version();
    let pause = format!("{registry}/kubernetes/pause:{kube_version}");
    build_and_push(
        dir,
        &pause,
        &repo.join("e2e/node/pause.Containerfile"),
        &pause_ctx,
        &[],
    )?;

    let reaper_repo = format!("{registry}/reaper-dev/reaper");
    let controller_repo = format!("{registry}/reaper-dev/reaper-controller");
    for (image, stage) in [(&reaper_repo, "reaper"), (&controller_repo, "controller")] {
        build_and_push(
            dir,
            &format!("{image}:{tag}"),
            &repo.join("Dockerfile"),
            repo,
            &[
                "--target",
                stage,
                "--build-arg",
                "BINARIES=prebuilt",
                "--build-arg",
                &format!("VERSION={tag}"),
            ],
        )?;
    }

    let wl_ctx = ctx.join("workload");
    fs::create_dir_all(&wl_ctx).map_err(|e| e.to_string())?;
    podman::stage_busybox_context(&wl_ctx, &[]);
    let scripts = wl_ctx.join("scripts");
    fs::create_dir_all(&scripts).map_err(|e| e.to_string())?;
    for entry in fs::read_dir(repo.join("e2e/podman/scripts")).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        fs::copy(entry.path(), scripts.join(entry.file_name())).map_err(|e| e.to_string())?;
    }
    let workload = format!("{registry}/e2e/workload:1");
    build_and_push(
        dir,
        &workload,
        &repo.join("e2e/node/workload.Containerfile"),
        &wl_ctx,
        &[],
    )?;
    Ok(Images {
        pause,
        reaper_repo,
        controller_repo,
        tag,
        workload,
    })
}

/// `v1.36.3` from e2e/control-plane/versions.env.
pub fn kube_version() -> String {
    let env = fs::read_to_string(podman::repo().join("e2e/control-plane/versions.env"))
        .unwrap_or_default();
    env.lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VERSION="))
        .unwrap_or("v0.0.0")
        .trim()
        .to_string()
}

/// `podman build` (untagged, never pulls) then `podman push` to `image`, then drops the local
/// copy: the registry holds the only one.
fn build_and_push(
    dir: &Path,
    image: &str,
    containerfile: &Path,
    context: &Path,
    extra: &[&str],
) -> Result<(), String> {
    let iid = dir.join(format!("iid-{}", control_plane::unique_name("img")));
    let mut cmd = Command::new("podman");
    cmd.args(["build", "-q", "--pull=never", "--layers=false"])
        .arg("--iidfile")
        .arg(&iid)
        .arg("-f")
        .arg(containerfile)
        .args(extra)
        .arg(context);
    let (ok, so, se) = run(cmd, CMD_TIMEOUT);
    if !ok {
        return Err(format!("podman build for {image}: {so}{se}"));
    }
    let id = fs::read_to_string(&iid).map_err(|e| e.to_string())?;
    let id = id.trim();
    let mut cmd = Command::new("podman");
    cmd.args(["push", "-q", "--tls-verify=false", id])
        .arg(format!("docker://{image}"));
    let (ok, so, se) = run(cmd, CMD_TIMEOUT);
    let _ = run_cmd("podman", &["rmi", "-f", id]);
    if !ok {
        return Err(format!("podman push {image}: {so}{se}"));
    }
    Ok(())
}

/// Holds the machine-wide node lock (flock on `<state dir>.lock`), waiting for another holder
/// (a demo, another test binary) up to [`LOCK_TIMEOUT`].
fn lock_machine(dir: &Path) -> Result<fs::File, String> {
    let path = dir.with_extension("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    let mut told = false;
    loop {
        // SAFETY: flock on a file descriptor we own.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(file);
        }
        if !told {
            eprintln!(
                "node: another node runs on this machine ({} is locked: a demo or another test \
                 binary); waiting",
                path.display()
            );
            told = true;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} still locked after {LOCK_TIMEOUT:?}",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Removes everything a node (this one, or one whose run was killed) leaves on the machine:
/// its processes and its pods' processes, mounts under `dir`, pod cgroups, kube-proxy's rules,
/// the bridge, libcni's cache, kubelet's log symlinks, then `dir`. Idempotent; best effort.
pub fn cleanup(dir: &Path) {
    if !dir.exists() && !Path::new("/sys/fs/cgroup/pids/kubepods").exists() {
        return;
    }
    let marker = dir.to_string_lossy().into_owned();
    // The node's daemons and containerd's shims (their command lines name the state dir).
    kill_matching(|cmdline| cmdline.contains(&marker));
    // Every process in a pod cgroup.
    for _ in 0..50 {
        let pids: Vec<i32> = kubepods_dirs()
            .iter()
            .flat_map(|d| cgroup_procs_recursive(d))
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid read from a cgroup; a reused pid is not possible while
            // it is listed there.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Sandbox ids, for libcni's cache entries (containerd's loopback network keys them by id).
    let sandboxes: Vec<String> =
        fs::read_dir(dir.join("containerd/root/io.containerd.grpc.v1.cri/sandboxes"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
    unmount_below(dir);
    for root in kubepods_dirs() {
        remove_cgroup_tree(&root);
    }
    if let Ok(kp) = tool("kube-proxy") {
        let mut cmd = Command::new(kp);
        cmd.arg("--cleanup");
        let _ = run(cmd, Duration::from_secs(60));
    }
    remove_kubelet_chains();
    let _ = run_cmd("ip", &["link", "del", BRIDGE]);
    if let Ok(entries) = fs::read_dir("/var/lib/cni/results") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(CNI_NETWORK)
                || sandboxes.iter().any(|id| name.contains(id.as_str()))
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    remove_dead_shim_sockets();
    if let Ok(entries) = fs::read_dir("/var/log/containers") {
        for e in entries.flatten() {
            let target = fs::read_link(e.path()).unwrap_or_default();
            if target.starts_with(dir) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir_all(dir)
        && dir.exists()
    {
        eprintln!("node cleanup: removing {}: {e}", dir.display());
    }
}

/// The kubelet's own iptables chains (KUBE-FIREWALL guards 127.0.0.0/8 from outside; the
/// canaries detect flushes): kube-proxy's `--cleanup` leaves them.
fn remove_kubelet_chains() {
    for tool in ["iptables", "ip6tables"] {
        let ipt = |args: &[&str]| {
            let _ = run_cmd(tool, args);
        };
        ipt(&["-D", "INPUT", "-j", "KUBE-FIREWALL"]);
        ipt(&["-D", "OUTPUT", "-j", "KUBE-FIREWALL"]);
        ipt(&["-F", "KUBE-FIREWALL"]);
        ipt(&["-X", "KUBE-FIREWALL"]);
        for table in ["filter", "nat", "mangle"] {
            for chain in ["KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"] {
                ipt(&["-t", table, "-X", chain]);
            }
        }
    }
}

/// containerd's shims listen in /run/containerd/s (a fixed path); a socket file no process
/// listens on any more is a leftover.
fn remove_dead_shim_sockets() {
    let live: std::collections::HashSet<String> = fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7).map(str::to_owned))
        .collect();
    if let Ok(entries) = fs::read_dir("/run/containerd/s") {
        for e in entries.flatten() {
            let path = e.path().to_string_lossy().into_owned();
            if !live.contains(&path) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// SIGKILL every process whose command line matches (not this process), until none is left.
fn kill_matching(matches: impl Fn(&str) -> bool) {
    let me = std::process::id() as i32;
    for _ in 0..50 {
        let mut found = false;
        for pid in all_pids() {
            if pid == me {
                continue;
            }
            let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if !cmdline.is_empty() && matches(&cmdline) && !is_zombie(pid) {
                found = true;
                // SAFETY: kill(2) on a pid just read from /proc.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// State `Z` (this VM's PID 1 reaps orphans only every second or two: a killed daemon lingers).
fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// `kubepods` in every mounted cgroup hierarchy (v1 controllers, named ones, unified).
fn kubepods_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let p = e.path().join("kubepods");
            if p.is_dir() {
                out.push(p);
            }
        }
    }
    let v2 = PathBuf::from("/sys/fs/cgroup/kubepods");
    if v2.is_dir() && !out.contains(&v2) {
        out.push(v2);
    }
    out
}

/// The pod's cgroup dirs in the pids hierarchy (QoS classes tried in turn), or v2's.
fn pod_cgroup_dirs(pod_uid: &str) -> Vec<PathBuf> {
    let seg = format!("pod{pod_uid}");
    let roots = ["/sys/fs/cgroup/pids/kubepods", "/sys/fs/cgroup/kubepods"];
    let mut out = Vec::new();
    for root in roots {
        for qos in ["", "burstable/", "besteffort/"] {
            let p = PathBuf::from(format!("{root}/{qos}{seg}"));
            if p.is_dir() {
                out.push(p);
            }
        }
        if !out.is_empty() {
            break;
        }
    }
    out
}

/// Pids in `dir`'s `cgroup.procs` and in every cgroup below it.
fn cgroup_procs_recursive(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_procs_recursive(&e.path()));
            }
        }
    }
    out
}

/// rmdir depth-first (cgroup dirs hold only pseudo-files, removed with the dir).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Lazily unmounts every mount point at or below `dir`, deepest first (kubelet bind-mounts its
/// root dir on itself; volumes, overlay rootfs, netns and shm mounts live below).
fn unmount_below(dir: &Path) {
    for _ in 0..5 {
        let mut points: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(unescape_mountinfo))
            .filter(|p| Path::new(p).starts_with(dir))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        points.dedup();
        for p in points {
            let c = std::ffi::CString::new(p).unwrap();
            // SAFETY: umount2 with a valid C string; MNT_DETACH never blocks.
            #[allow(unsafe_code)]
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    for extra in ["/usr/sbin", "/sbin"] {
        paths.push(PathBuf::from(extra));
    }
    std::env::join_paths(paths).expect("PATH entries without ':'")
}

fn write(path: &Path, content: &str) -> Result<(), String> {
    fs::write(path, content).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A plain-HTTP GET answering 200.
fn http_get_ok(host: &str, port: u16, path: &str) -> bool {
    crate::wait::http_ok(&format!("{host}:{port}"), path)
}

fn run_cmd(program: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run(cmd, CMD_TIMEOUT)
}

pub use crate::process::run;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
    }

    #[test]
    fn kube_proxy_config_leaves_sysctls_alone() {
        let c = kube_proxy_config(Path::new("/k.kubeconfig"), 1234);
        assert!(c.contains("maxPerCore: 0"), "{c}");
        assert!(c.contains("localhostNodePorts: false"), "{c}");
        assert!(c.contains("healthzBindAddress: 127.0.0.1:1234"), "{c}");
    }
}
