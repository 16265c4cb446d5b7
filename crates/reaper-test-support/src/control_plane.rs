//! A real Kubernetes control plane for integration tests and `make demo`: etcd and kube-apiserver
//! (built from Go modules by `make tools` into `bin/`) on free loopback ports, certificates made
//! here with rcgen, admin access through a client certificate in `system:masters`.
//!
//! Tests share one instance per test binary ([`shared`]); each test builds its own
//! [`kube::Client`] ([`ControlPlane::client`]: clients are bound to the runtime that made them and
//! every `#[tokio::test]` has its own) and gets its own namespace ([`ControlPlane::ns`]).
//! The processes die with the test process: SIGKILL on exit (atexit), and PR_SET_PDEATHSIG in case
//! the process dies without running exit handlers.
//!
//! Used by `tests/*.rs` through `mod support;` and by `examples/demo.rs` through `#[path]`.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// Set to `1` to skip every control-plane test (quick local loop only; never set in CI).
pub const SKIP_ENV: &str = "REAPER_SKIP_CONTROL_PLANE";
/// Set to `1` to keep the temp dir (certificates, kubeconfig, logs, etcd data) after exit.
pub const KEEP_ENV: &str = "REAPER_KEEP_CONTROL_PLANE";
/// Directory holding kube-apiserver, etcd, ... (default: `bin/` at the repo root).
pub const BIN_DIR_ENV: &str = "REAPER_TOOLS_BIN";

const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const CONTROLLER_MANAGER_TIMEOUT: Duration = Duration::from_secs(90);
/// How often a start is retried when a port picked as free was taken meanwhile.
const PORT_RETRIES: usize = 3;
/// Service CIDR handed to the apiserver. Only a node's kube-proxy routes it (tests/support/node.rs).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The `kubernetes` Service's ClusterIP (the first address of [`SERVICE_CIDR`]).
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

const DIR_PREFIX: &str = "reaper-control-plane-";
/// Holds the PID of the process that owns a control-plane dir.
const OWNER_FILE: &str = "owner.pid";

/// Removes the dirs of control planes whose owner died without running exit handlers (SIGKILL);
/// dirs kept on purpose (`REAPER_KEEP_CONTROL_PLANE=1`) have no owner file and stay.
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = entry.file_name().to_string_lossy().starts_with(DIR_PREFIX);
        let owner = fs::read_to_string(path.join(OWNER_FILE)).ok();
        let owner_alive = owner
            .as_deref()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if is_ours && owner.is_some() && !owner_alive {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// The repository root (where `bin/` and `crds/` live): this crate sits in `crates/`.
pub fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = here.join("../..");
        root.canonicalize().unwrap_or(root)
    })
}

/// Where the Go-built tools are.
pub fn bin_dir() -> PathBuf {
    std::env::var_os(BIN_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("bin"))
}

/// Path of one tool in [`bin_dir`], or an error telling how to build it.
pub fn tool(name: &str) -> Result<PathBuf, String> {
    tool_in(&bin_dir(), name)
}

fn tool_in(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: run `make tools` (builds kube-apiserver, kube-controller-manager, etcd \
             and helm from Go modules, cached by version; a cold build takes several minutes). \
             For a quick local loop only, {SKIP_ENV}=1 skips the control-plane tests.",
            path.display()
        ))
    }
}

/// The `reaper-controller` binary: `REAPER_CONTROLLER_BIN`, or the one beside the running test
/// or example (`target/<profile>/deps/<test>` and `target/<profile>/examples/<x>` both have it
/// two levels up; cargo builds it before running integration tests, `make demo` before the demo).
pub fn reaper_controller_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REAPER_CONTROLLER_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("reaper-controller")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| repo_root().join("target/debug/reaper-controller"))
}

/// The `reaper` init's dev build beside the running test (`cargo test --workspace` builds it),
/// or `REAPER_BIN`.
pub fn reaper_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REAPER_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("reaper")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| repo_root().join("target/debug/reaper"))
}

/// A CA for tests: the control plane's own PKI, and webhook serving certificates.
pub struct TestCa {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(common_name: &str) -> Self {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign CA");
        Self { issuer }
    }

    /// The CA certificate (what goes into a `caBundle` or a kubeconfig).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A TLS server certificate for these names (IP addresses become IP SANs).
    pub fn issue_server(&self, sans: &[&str]) -> CertPair {
        let names: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("valid SANs");
        params.distinguished_name.push(
            DnType::CommonName,
            sans.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.issue(params)
    }

    /// A client certificate: Kubernetes reads the user from CN and groups from O.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> CertPair {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> CertPair {
        let key = KeyPair::generate().expect("generate key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// How a control plane is reached.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Serve (and advertise, for the `kubernetes` Service) on this address instead of 127.0.0.1:
    /// a node's pods reach the API server there through kube-proxy. Also makes the API server
    /// talk to kubelets (client certificate, kubelet serving CA, InternalIP first).
    pub address: Option<std::net::Ipv4Addr>,
}

/// A running etcd + kube-apiserver (+ kube-controller-manager on demand).
pub struct ControlPlane {
    dir: PathBuf,
    /// `https://127.0.0.1:<port>`
    pub server: String,
    etcd_url: String,
    kubeconfig: PathBuf,
    ca_pem: String,
    /// Signs the serving and client certificates (also those of a node's components).
    ca: TestCa,
    config: Config,
    procs: Mutex<Vec<Proc>>,
    /// Spawns on the thread that owns the children (PR_SET_PDEATHSIG fires when the spawning
    /// *thread* exits, so the shared instance spawns everything from one long-lived thread).
    owner: Option<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    controller_manager: tokio::sync::OnceCell<()>,
    /// How etcd and kube-apiserver were started, for [`Self::restart`].
    recipes: Mutex<BTreeMap<&'static str, (PathBuf, Vec<String>)>>,
    etcd_port: u16,
    /// Time from spawning etcd to `/readyz` answering 200.
    pub startup: Duration,
    stopped: Mutex<bool>,
}

impl ControlPlane {
    /// Starts a private control plane owned by the caller (stopped on drop). Blocking; callable
    /// from sync code or from inside a runtime.
    pub fn start() -> Result<Self, String> {
        Self::start_owned(None, &Options::default())
    }

    /// [`Self::start`] with [`Options`], spawning every process from `owner` (see [`owner_thread`]).
    pub fn start_owned(owner: Option<Owner>, opts: &Options) -> Result<Self, String> {
        let apiserver = tool("kube-apiserver")?;
        let etcd = tool("etcd")?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut last = String::new();
        for attempt in 1..=PORT_RETRIES {
            match Self::try_start(&apiserver, &etcd, owner.clone(), opts) {
                Ok(cp) => return Ok(cp),
                Err(StartError::PortTaken(e)) => {
                    eprintln!("control plane: port taken (attempt {attempt}), retrying: {e}");
                    last = e;
                }
                Err(StartError::Failed(e)) => {
                    return Err(format!(
                        "{e}\n({KEEP_ENV}=1 keeps the temp dir with all logs)"
                    ));
                }
            }
        }
        Err(last)
    }

    fn try_start(
        apiserver: &Path,
        etcd: &Path,
        owner: Option<Owner>,
        opts: &Options,
    ) -> Result<Self, StartError> {
        let began = Instant::now();
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .map_err(|e| StartError::Failed(format!("creating temp dir: {e}")))?
            .keep();
        let _ = fs::write(dir.join(OWNER_FILE), std::process::id().to_string());
        let (pki, ca) = Pki::write(&dir, opts.address)
            .map_err(|e| StartError::Failed(format!("writing PKI: {e}")))?;
        let (etcd_port, peer_port) = (free_port(), free_port());
        let api_ip = opts
            .address
            .map_or("127.0.0.1".to_string(), |a| a.to_string());
        let api_port = free_port_on(&api_ip);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let server = format!("https://{api_ip}:{api_port}");
        let kubeconfig = dir.join("admin.kubeconfig");
        fs::write(
            &kubeconfig,
            kubeconfig_yaml(
                &server,
                &pki.ca,
                Credentials::Cert(&pki.admin_cert, &pki.admin_key),
            ),
        )
        .map_err(|e| StartError::Failed(format!("writing kubeconfig: {e}")))?;
        let config = block_on(async {
            let kc = Kubeconfig::read_from(&kubeconfig).map_err(|e| e.to_string())?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| e.to_string())
        })
        .map_err(|e| StartError::Failed(format!("loading {}: {e}", kubeconfig.display())))?;

        let mut cp = ControlPlane {
            ca_pem: fs::read_to_string(&pki.ca).unwrap_or_default(),
            ca,
            dir: dir.clone(),
            server,
            etcd_url: etcd_url.clone(),
            kubeconfig,
            config,
            procs: Mutex::new(Vec::new()),
            owner,
            controller_manager: tokio::sync::OnceCell::new(),
            startup: Duration::ZERO,
            stopped: Mutex::new(false),
            recipes: Mutex::default(),
            etcd_port,
        };

        let etcd_args = vec![
            "--name=default".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
            // Test data: durability buys nothing and fsync dominates write latency.
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        cp.spawn_recipe("etcd", etcd, etcd_args)
            .map_err(StartError::Failed)?;
        cp.wait_port("etcd", etcd_port, ETCD_TIMEOUT)?;

        let api_args = apiserver_args(&dir, &pki, &etcd_url, &api_ip, api_port);
        cp.spawn_recipe("kube-apiserver", apiserver, api_args)
            .map_err(StartError::Failed)?;
        cp.wait_ready()?;
        cp.startup = began.elapsed();
        eprintln!(
            "control plane: {} ready in {:.1} s (dir {})",
            cp.server,
            cp.startup.as_secs_f64(),
            cp.dir.display()
        );
        Ok(cp)
    }

    /// Spawns a process whose output goes to `<dir>/<name>.log`, dying with its owner thread;
    /// returns its pid. [`Self::shutdown`] kills it (also a node's processes spawned here).
    pub fn spawn(&self, name: &'static str, mut cmd: Command) -> Result<u32, String> {
        let log = self.dir.join(format!("{name}.log"));
        // Appended: a restarted process keeps its first run's log.
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        die_with_parent(&mut cmd);
        let mut spawn = move || cmd.spawn();
        let child = match &self.owner {
            None => spawn(),
            Some(owner) => {
                let (tx, rx) = mpsc::channel();
                owner
                    .send(Box::new(move || {
                        let _ = tx.send(spawn());
                    }))
                    .map_err(|_| "control-plane owner thread is gone".to_string())?;
                rx.recv()
                    .map_err(|_| "control-plane owner thread is gone".to_string())?
            }
        }
        .map_err(|e| format!("starting {name}: {e}"))?;
        let pid = child.id();
        self.procs.lock().unwrap().push(Proc { name, child, log });
        Ok(pid)
    }

    fn spawn_recipe(
        &self,
        name: &'static str,
        program: &Path,
        args: Vec<String>,
    ) -> Result<u32, String> {
        let mut cmd = Command::new(program);
        cmd.args(&args);
        self.recipes
            .lock()
            .unwrap()
            .insert(name, (program.to_path_buf(), args));
        self.spawn(name, cmd)
    }

    /// Stops `name` (`etcd` or `kube-apiserver`) with SIGTERM and starts it again with the same
    /// flags and data, as an upgrade or a crash-restart does; returns once the API server is
    /// ready again, with the time that took. Call it from the thread that started the control
    /// plane (its processes die with their spawning thread).
    pub fn restart(&self, name: &'static str) -> Result<Duration, String> {
        let (program, args) = self
            .recipes
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| format!("{name} is not a process this control plane can restart"))?;
        let began = Instant::now();
        self.kill(name, libc::SIGTERM);
        self.spawn_recipe(name, &program, args)?;
        let ready = |r: Result<(), StartError>| {
            r.map_err(|e| match e {
                StartError::PortTaken(m) | StartError::Failed(m) => m,
            })
        };
        if name == "etcd" {
            ready(self.wait_port("etcd", self.etcd_port, ETCD_TIMEOUT))?;
        }
        ready(self.wait_ready())?;
        Ok(began.elapsed())
    }

    /// Kills and reaps the processes named `name` (spawned by [`Self::spawn`]); true if any.
    pub fn kill(&self, name: &str, signal: i32) -> bool {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = false;
        for p in procs.iter_mut().filter(|p| p.name == name) {
            found = true;
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet (no reuse).
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(p.child.id() as i32, signal);
            }
            if signal != libc::SIGKILL {
                let deadline = Instant::now() + Duration::from_secs(10);
                while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        procs.retain(|p| p.name != name);
        found
    }

    /// Err with the log tail when a process has exited.
    pub fn check_alive(&self) -> Result<(), String> {
        self.check_alive_start().map_err(|e| match e {
            StartError::PortTaken(m) | StartError::Failed(m) => m,
        })
    }

    fn check_alive_start(&self) -> Result<(), StartError> {
        let mut procs = self.procs.lock().unwrap();
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                let tail = tail(&p.log, 40);
                let msg = format!(
                    "{} exited ({status}); last lines of {}:\n{tail}",
                    p.name,
                    p.log.display()
                );
                return Err(if tail.contains("address already in use") {
                    StartError::PortTaken(msg)
                } else {
                    StartError::Failed(msg)
                });
            }
        }
        Ok(())
    }

    fn wait_port(&self, name: &str, port: u16, timeout: Duration) -> Result<(), StartError> {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            self.check_alive_start()?;
            if Instant::now() > deadline {
                return Err(StartError::Failed(format!(
                    "{name} did not listen on port {port} within {timeout:?}\n{}",
                    self.log_tails()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ready(&self) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let config = self.config.clone();
        loop {
            let cfg = config.clone();
            let answer = block_on(async move {
                let client = Client::try_from(cfg).map_err(|e| e.to_string())?;
                let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
                tokio::time::timeout(Duration::from_secs(5), client.request_text(req))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())
            });
            let last = match answer {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            self.check_alive_start()?;
            if Instant::now() > deadline {
                return Err(StartError::Failed(format!(
                    "kube-apiserver not ready within {READY_TIMEOUT:?} (last /readyz: {last})\n{}",
                    self.log_tails()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of every process log (for failure messages).
    pub fn log_tails(&self) -> String {
        let procs = self.procs.lock().unwrap();
        let mut out = String::new();
        for p in procs.iter() {
            let _ = writeln!(
                out,
                "--- {} ({}):\n{}",
                p.name,
                p.log.display(),
                tail(&p.log, 40)
            );
        }
        out
    }

    /// An admin client (`system:masters`) bound to the calling runtime.
    pub async fn client(&self) -> Client {
        Client::try_from(self.config.clone()).expect("admin client from the control plane's config")
    }

    /// The admin `kube::Config` (to build clients with other settings).
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// Admin kubeconfig file, for kubectl, helm and child processes (`KUBECONFIG=...`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A command for `program` with `KUBECONFIG` set to the admin kubeconfig, dying with the
    /// spawning thread (wrap the child in [`ChildGuard`] to also kill it on drop). For a
    /// ServiceAccount identity, set `KUBECONFIG` to [`Self::write_token_kubeconfig`]'s file.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        die_with_parent(&mut cmd);
        cmd
    }

    /// The CA that signed the apiserver's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA of the client certificate the API server presents to webhooks that ask for one
    /// (a webhook's `--client-ca-file`).
    pub fn webhook_client_ca_file(&self) -> PathBuf {
        self.dir.join("pki").join("webhook-client-ca.crt")
    }

    /// The CA itself: clients it signs are trusted by the API server (`--client-ca-file`).
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// A kubeconfig file for a client certificate of user `user` in `groups` (a node's kubelet,
    /// kube-proxy, scheduler), written as `<dir>/<file>.kubeconfig`.
    pub fn write_cert_kubeconfig(&self, file: &str, user: &str, groups: &[&str]) -> PathBuf {
        let pair = self.ca.issue_client(user, groups);
        let pki = self.dir.join("pki");
        let (cert, key) = (
            pki.join(format!("{file}.crt")),
            pki.join(format!("{file}.key")),
        );
        let path = self.dir.join(format!("{file}.kubeconfig"));
        fs::write(&cert, &pair.cert_pem)
            .and_then(|()| fs::write(&key, &pair.key_pem))
            .and_then(|()| {
                fs::write(
                    &path,
                    kubeconfig_yaml(
                        &self.server,
                        &pki.join("ca.crt"),
                        Credentials::Cert(&cert, &key),
                    ),
                )
            })
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// The temp dir holding certificates, kubeconfigs and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// etcd's client URL (plain HTTP on loopback).
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// Creates a namespace `<prefix>-<random>` and its `default` ServiceAccount (pod admission
    /// needs it; the serviceaccount controller is not running unless the controller manager is).
    pub async fn ns(&self, client: &Client, prefix: &str) -> String {
        self.ns_with_labels(client, prefix, &[]).await
    }

    /// [`Self::ns`] with labels (opt-in labels, `pod-security.kubernetes.io/enforce`, ...).
    pub async fn ns_with_labels(
        &self,
        client: &Client,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> String {
        let name = unique_name(prefix);
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some("default".into());
        match Api::<ServiceAccount>::namespaced(client.clone(), &name)
            .create(&PostParams::default(), &sa)
            .await
        {
            Ok(_) => {}
            // The controller manager got there first.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating ServiceAccount {name}/default: {e}"),
        }
        name
    }

    /// A token for a ServiceAccount (TokenRequest), valid for `ttl`.
    pub async fn service_account_token(
        &self,
        client: &Client,
        ns: &str,
        name: &str,
        ttl: Duration,
    ) -> String {
        self.service_account_token_for(client, ns, name, ttl, None)
            .await
    }

    /// A token for a ServiceAccount bound to a pod (`(name, uid)`), as the kubelet gets for the
    /// pod's projected volume: it carries the pod's node (`authentication.kubernetes.io/node-name`
    /// in the user's extra) when the pod is bound to one.
    pub async fn service_account_token_for(
        &self,
        client: &Client,
        ns: &str,
        name: &str,
        ttl: Duration,
        pod: Option<(&str, &str)>,
    ) -> String {
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![SERVICE_ACCOUNT_ISSUER.to_string()]),
                expiration_seconds: Some(ttl.as_secs() as i64),
                bound_object_ref: pod.map(|(pod, uid)| {
                    k8s_openapi::api::authentication::v1::BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(pod.into()),
                        uid: Some(uid.into()),
                    }
                }),
            }),
            ..Default::default()
        };
        let answer = Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .create_token_request(name, &PostParams::default(), &req)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{name}: {e}"));
        answer
            .status
            .and_then(|s| s.token)
            .unwrap_or_else(|| panic!("TokenRequest for {ns}/{name} returned no token"))
    }

    /// A kubeconfig file authenticating with `token` (for child processes running as a
    /// ServiceAccount). `name` distinguishes files in the temp dir.
    pub fn write_token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("{}.kubeconfig", unique_name(name)));
        let ca = self.dir.join("pki/ca.crt");
        fs::write(
            &path,
            kubeconfig_yaml(&self.server, &ca, Credentials::Token(token)),
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// A client acting as ServiceAccount `ns/name` (token from TokenRequest, one hour).
    pub async fn client_as_service_account(&self, admin: &Client, ns: &str, name: &str) -> Client {
        let token = self
            .service_account_token(admin, ns, name, Duration::from_secs(3600))
            .await;
        let path = self.write_token_kubeconfig(&format!("{ns}-{name}"), &token);
        let kc = Kubeconfig::read_from(&path).expect("read token kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("config from token kubeconfig");
        Client::try_from(config).expect("client from token kubeconfig")
    }

    /// Server-side applies the project's CRDs (the generated `crds/*.yaml`, which a test keeps
    /// equal to the Rust types) and waits until they are Established. Idempotent; safe from
    /// concurrent tests.
    pub async fn install_crds(&self, client: &Client) {
        install_crds(client, project_crds()).await
    }

    /// Starts kube-controller-manager once (namespace deletion, garbage collection, service
    /// account and root-CA controllers, workload controllers) and waits until it works.
    pub async fn ensure_controller_manager(&self, client: &Client) {
        self.controller_manager
            .get_or_init(|| async {
                let kcm = tool("kube-controller-manager").unwrap_or_else(|e| panic!("{e}"));
                let mut cmd = Command::new(kcm);
                cmd.args([
                    format!("--kubeconfig={}", self.kubeconfig.display()),
                    format!("--authentication-kubeconfig={}", self.kubeconfig.display()),
                    format!("--authorization-kubeconfig={}", self.kubeconfig.display()),
                    "--leader-elect=false".into(),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={}", free_port()),
                    format!("--root-ca-file={}", self.dir.join("pki/ca.crt").display()),
                    format!("--service-account-private-key-file={}", self.dir.join("pki/sa.key").display()),
                    format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                    "--use-service-account-credentials=false".into(),
                ]);
                self.spawn("kube-controller-manager", cmd)
                    .unwrap_or_else(|e| panic!("{e}"));
                // The root-CA publisher writes kube-root-ca.crt into every namespace: seeing it in
                // `default` means the controllers run.
                let cms = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), "default");
                let deadline = Instant::now() + CONTROLLER_MANAGER_TIMEOUT;
                loop {
                    if let Ok(Some(_)) = cms.get_opt("kube-root-ca.crt").await {
                        break;
                    }
                    if let Err(e) = self.check_alive() {
                        panic!("{e}");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "kube-controller-manager not working within {CONTROLLER_MANAGER_TIMEOUT:?}\n{}",
                        self.log_tails()
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
            .await;
    }

    /// Kills every process and removes the temp dir (unless `REAPER_KEEP_CONTROL_PLANE=1`).
    /// Idempotent.
    pub fn shutdown(&self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if *stopped {
            return;
        }
        *stopped = true;
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        // Reverse start order: apiserver (and controller manager) before etcd.
        for p in procs.iter_mut().rev() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        procs.clear();
        if std::env::var(KEEP_ENV).is_ok_and(|v| v == "1") {
            // Without an owner file the dir is never taken for a stale one.
            let _ = fs::remove_file(self.dir.join(OWNER_FILE));
            eprintln!("control plane: kept {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum StartError {
    /// A port picked as free was taken before the process bound it: worth another try.
    PortTaken(String),
    Failed(String),
}

/// The CRDs users install: every `crds/*.yaml` of the repository.
pub fn project_crds() -> Vec<CustomResourceDefinition> {
    let dir = repo_root().join("crds");
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

/// Server-side applies CRDs and waits until each is Established.
pub async fn install_crds(client: &Client, crds: Vec<CustomResourceDefinition>) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let pp = PatchParams::apply("reaper-tests").force();
    for crd in &crds {
        let name = crd.metadata.name.clone().expect("CRD has a name");
        api.patch(&name, &pp, &Patch::Apply(crd))
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
    }
    for crd in &crds {
        let name = crd.metadata.name.as_deref().unwrap();
        wait_crd_established(&api, name).await;
    }
}

/// Waits (30 s at most) for a CRD's `Established` condition.
pub async fn wait_crd_established(
    api: &Api<CustomResourceDefinition>,
    name: &str,
) -> CustomResourceDefinition {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crd = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("getting CRD {name}: {e}"));
        let established = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return crd;
        }
        assert!(
            Instant::now() < deadline,
            "CRD {name} not Established within 30 s: {:?}",
            crd.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One suite's control plane, started on first use (or why it did not start).
type SharedCell = OnceLock<Result<&'static ControlPlane, String>>;
/// Control planes shared by the tests of a suite, by suite.
static SHARED: OnceLock<Mutex<BTreeMap<String, &'static SharedCell>>> = OnceLock::new();

/// The control plane shared by the tests of one suite (`suite` is the caller's
/// `module_path!()`; its first two segments name the suite, e.g. `control_plane::operator`), started
/// on first use. Suites of one test binary get separate control planes: cluster-scoped objects
/// (policies, webhook configurations, CRD versions) of one never leak into another's assertions.
/// `None` (with a loud notice) when `REAPER_SKIP_CONTROL_PLANE=1`; panics with the reason when it
/// cannot start (binaries missing: run `make tools`).
pub fn shared(suite: &str) -> Option<&'static ControlPlane> {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "{SKIP_ENV}=1 is set in CI: the control-plane tests must run there"
        );
        eprintln!(
            "\n!!! {SKIP_ENV}=1: SKIPPING a control-plane test. This proves nothing; never set it in CI. !!!\n"
        );
        return None;
    }
    let key: String = suite.split("::").take(2).collect::<Vec<_>>().join("::");
    let cell: &'static SharedCell = SHARED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_insert_with(|| Box::leak(Box::new(OnceLock::new())));
    let shared = cell.get_or_init(|| {
        let owner = owner_thread("control-plane-owner")?;
        let cp: &'static ControlPlane = Box::leak(Box::new(ControlPlane::start_owned(
            Some(owner),
            &Options::default(),
        )?));
        register_exit_cleanup();
        Ok(cp)
    });
    match shared {
        Ok(cp) => Some(cp),
        Err(e) => panic!("control plane did not start: {e}"),
    }
}

/// Runs closures on one thread.
pub type Owner = mpsc::Sender<Box<dyn FnOnce() + Send>>;

/// A long-lived thread that spawns (and so owns) processes shared by many tests:
/// PR_SET_PDEATHSIG fires when the spawning *thread* ends, and test threads end after each test.
pub fn owner_thread(name: &str) -> Result<Owner, String> {
    let (jobs_tx, jobs_rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for job in jobs_rx {
                job();
            }
            // The sender lives in a leaked static: never reached before exit.
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("spawning the {name} thread: {e}"))?;
    Ok(jobs_tx)
}

/// Statics are never dropped: stop the shared control plane from an exit handler (libtest ends
/// with `process::exit`, which runs them, also after failed tests).
#[allow(unsafe_code)]
fn register_exit_cleanup() {
    extern "C" fn stop_shared() {
        let Some(all) = SHARED.get() else { return };
        let all = all.lock().unwrap_or_else(|e| e.into_inner());
        for cell in all.values() {
            if let Some(Ok(cp)) = cell.get() {
                cp.shutdown();
            }
        }
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn` with no arguments; it only touches statics.
        unsafe {
            libc::atexit(stop_shared);
        }
    });
}

/// Makes a child get SIGKILL when the thread that spawned it ends (test or owner thread), so no
/// process outlives a crashed test run.
#[allow(unsafe_code)]
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// [`die_with_parent`] for tokio's Command (combine with `kill_on_drop(true)`).
#[allow(unsafe_code)]
pub fn die_with_parent_tokio(cmd: &mut tokio::process::Command) {
    // SAFETY: as in `die_with_parent`.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A child process killed (and reaped) on drop, also when a test panics.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Spawns `cmd` with [`die_with_parent`] (harmless if already set by [`ControlPlane::command`]).
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        die_with_parent(cmd);
        cmd.spawn().map(Self)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `<prefix>-<8 hex>`, a valid DNS label (prefix cut to fit, lower-cased).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = RandomState::new().hash_one((n, std::process::id(), Instant::now()));
    let clean: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(50)
        .collect();
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "t" } else { clean };
    format!("{clean}-{:08x}", random as u32)
}

/// A free TCP port on loopback (bound then released: a small race that `PORT_RETRIES` covers).
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A free TCP port on `ip` (a local address).
pub fn free_port_on(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("binding an ephemeral port on {ip}: {e}"))
}

/// Runs a future to completion on a private runtime in a scoped thread, so it works from sync
/// code and from inside another runtime alike.
pub fn block_on<F: std::future::Future + Send>(f: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a runtime")
                .block_on(f)
        })
        .join()
        .expect("control-plane helper thread panicked")
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// File paths of the control plane's PKI (under `<dir>/pki`).
struct Pki {
    ca: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    sa_pub: PathBuf,
    sa_key: PathBuf,
    kubelet_client_cert: PathBuf,
    kubelet_client_key: PathBuf,
    /// The API server's identity towards admission webhooks (its admission configuration), and
    /// the dedicated CA that signed it: what a webhook's `--client-ca-file` trusts.
    webhook_client_ca: PathBuf,
    admission_config: PathBuf,
}

impl Pki {
    fn write(dir: &Path, address: Option<std::net::Ipv4Addr>) -> io::Result<(Self, TestCa)> {
        let pki = dir.join("pki");
        fs::create_dir_all(&pki)?;
        let ca = TestCa::new("reaper-test-ca");
        let address = address.map(|a| a.to_string());
        let mut sans = vec![
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            // What pods dial (the `kubernetes` Service) and where the server listens for them.
            KUBERNETES_SERVICE_IP,
        ];
        sans.extend(address.as_deref());
        let serving = ca.issue_server(&sans);
        // The API server's identity towards kubelets (exec, logs, port-forward, proxy).
        let kubelet_client = ca.issue_client("kube-apiserver-kubelet-client", &["system:masters"]);
        let admin = ca.issue_client("reaper-test-admin", &["system:masters"]);
        // ServiceAccount tokens are signed with this key (ES256) and verified with its public half.
        let sa = KeyPair::generate().expect("generate service-account key");
        let p = Pki {
            ca: pki.join("ca.crt"),
            serving_cert: pki.join("apiserver.crt"),
            serving_key: pki.join("apiserver.key"),
            admin_cert: pki.join("admin.crt"),
            admin_key: pki.join("admin.key"),
            sa_pub: pki.join("sa.pub"),
            sa_key: pki.join("sa.key"),
            kubelet_client_cert: pki.join("apiserver-kubelet-client.crt"),
            kubelet_client_key: pki.join("apiserver-kubelet-client.key"),
            webhook_client_ca: pki.join("webhook-client-ca.crt"),
            admission_config: dir.join("admission.yaml"),
        };
        fs::write(&p.ca, ca.cert_pem())?;
        fs::write(&p.serving_cert, &serving.cert_pem)?;
        fs::write(&p.serving_key, &serving.key_pem)?;
        fs::write(&p.admin_cert, &admin.cert_pem)?;
        fs::write(&p.admin_key, &admin.key_pem)?;
        fs::write(&p.sa_pub, sa.public_key_pem())?;
        fs::write(&p.sa_key, sa.serialize_pem())?;
        fs::write(&p.kubelet_client_cert, &kubelet_client.cert_pem)?;
        fs::write(&p.kubelet_client_key, &kubelet_client.key_pem)?;
        Self::write_webhook_client(dir, &p)?;
        Ok((p, ca))
    }
}

impl Pki {
    /// A client certificate the API server presents to every webhook that asks for one (a
    /// webhook that does not ask never sees it), as docs/security.md tells users to configure it:
    /// an AdmissionConfiguration pointing both webhook plugins at a kubeconfig whose user `*`
    /// holds the certificate.
    fn write_webhook_client(dir: &Path, p: &Pki) -> io::Result<()> {
        let ca = TestCa::new("reaper-test webhook client CA");
        let pair = ca.issue_client("kube-apiserver", &[]);
        let pki = dir.join("pki");
        let (cert, key) = (
            pki.join("webhook-client.crt"),
            pki.join("webhook-client.key"),
        );
        fs::write(&p.webhook_client_ca, ca.cert_pem())?;
        fs::write(&cert, &pair.cert_pem)?;
        fs::write(&key, &pair.key_pem)?;
        let kubeconfig = dir.join("webhook-client.kubeconfig");
        fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nusers:\n- name: \"*\"\n  user:\n    \
                 client-certificate: {}\n    client-key: {}\n",
                cert.display(),
                key.display()
            ),
        )?;
        let plugin = |name: &str| {
            format!(
                "- name: {name}\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    \
                 kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
                kubeconfig.display()
            )
        };
        fs::write(
            &p.admission_config,
            format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n{}{}",
                plugin("MutatingAdmissionWebhook"),
                plugin("ValidatingAdmissionWebhook")
            ),
        )
    }
}

fn apiserver_args(dir: &Path, pki: &Pki, etcd_url: &str, ip: &str, port: u16) -> Vec<String> {
    let p = |path: &Path| path.display().to_string();
    vec![
        format!("--etcd-servers={etcd_url}"),
        format!("--bind-address={ip}"),
        format!("--advertise-address={ip}"),
        format!("--secure-port={port}"),
        format!("--cert-dir={}", dir.join("apiserver-certs").display()),
        format!("--tls-cert-file={}", p(&pki.serving_cert)),
        format!("--tls-private-key-file={}", p(&pki.serving_key)),
        format!("--client-ca-file={}", p(&pki.ca)),
        format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
        format!("--service-account-key-file={}", p(&pki.sa_pub)),
        format!("--service-account-signing-key-file={}", p(&pki.sa_key)),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--authorization-mode=Node,RBAC".into(),
        // On top of the defaults (which already hold most of these): the ones the suites rely on.
        "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,NodeRestriction,PodSecurity,\
         MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota"
            .into(),
        // The agent DaemonSet (hostPID, privileged) must be admissible, as on real clusters.
        "--allow-privileged=true".into(),
        format!(
            "--admission-control-config-file={}",
            p(&pki.admission_config)
        ),
        "--profiling=false".into(),
        // Towards kubelets (only a node has any): verify their serving certificates (signed by
        // the same CA), authenticate with a client certificate, dial the InternalIP first.
        format!(
            "--kubelet-client-certificate={}",
            p(&pki.kubelet_client_cert)
        ),
        format!("--kubelet-client-key={}", p(&pki.kubelet_client_key)),
        format!("--kubelet-certificate-authority={}", p(&pki.ca)),
        "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
    ]
}

enum Credentials<'a> {
    Cert(&'a Path, &'a Path),
    Token(&'a str),
}

fn kubeconfig_yaml(server: &str, ca: &Path, creds: Credentials<'_>) -> String {
    let user = match creds {
        Credentials::Cert(cert, key) => format!(
            "    client-certificate: {}\n    client-key: {}\n",
            cert.display(),
            key.display()
        ),
        Credentials::Token(token) => format!("    token: {token}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: reaper-test\n  cluster:\n    server: {server}\n    \
         certificate-authority: {}\ncontexts:\n- name: reaper-test\n  context:\n    cluster: reaper-test\n    \
         user: reaper-test\ncurrent-context: reaper-test\nusers:\n- name: reaper-test\n  user:\n{user}",
        ca.display()
    )
}

/// The chart's MutatingWebhookConfiguration (failurePolicy, timeout, reinvocation, opt-out
/// objectSelector, CEL mirror-pod condition, pods CREATE), pointing at a local `url` instead of
/// the webhook Service and matching namespaces with all of `namespace_labels`.
pub fn webhook_registration(
    name: &str,
    url: &str,
    ca_pem: &str,
    namespace_labels: &[(&str, &str)],
    failure_policy: &str,
) -> k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration {
    let labels: BTreeMap<&str, &str> = namespace_labels.iter().copied().collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "pods.reaper.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": failure_policy, "timeoutSeconds": 5, "reinvocationPolicy": "IfNeeded",
            "clientConfig": {"url": url, "caBundle": k8s_openapi::ByteString(ca_pem.as_bytes().to_vec())},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": labels},
            "objectSelector": {"matchExpressions": [
                {"key": "reaper.dev/inject", "operator": "NotIn", "values": ["disabled"]}]},
            "matchConditions": [{"name": "not-a-mirror-pod", "expression":
                "!has(object.metadata.annotations) || !('kubernetes.io/config.mirror' in object.metadata.annotations)"}]
        }]
    }))
    .expect("a valid MutatingWebhookConfiguration")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_says_how_to_build_it() {
        let err = tool_in(Path::new("/nonexistent/bin"), "kube-apiserver").unwrap_err();
        assert!(
            err.contains("/nonexistent/bin/kube-apiserver is missing"),
            "{err}"
        );
        assert!(err.contains("run `make tools`"), "{err}");
    }

    #[test]
    fn unique_names_are_dns_labels() {
        let a = unique_name("Webhook_Idempotent!");
        let b = unique_name("Webhook_Idempotent!");
        assert_ne!(a, b);
        assert!(a.starts_with("webhook-idempotent-"), "{a}");
        assert!(a.len() <= 63);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert!(unique_name(&"x".repeat(100)).len() <= 63);
        assert!(unique_name("--").starts_with("t-"));
    }

    #[test]
    fn kubeconfig_parses_with_cert_and_token_credentials() {
        let ca = Path::new("/pki/ca.crt");
        let cert = kubeconfig_yaml(
            "https://127.0.0.1:6443",
            ca,
            Credentials::Cert(Path::new("/pki/a.crt"), Path::new("/pki/a.key")),
        );
        let kc: Kubeconfig = yaml_serde::from_str(&cert).unwrap();
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.client_certificate.as_deref(), Some("/pki/a.crt"));
        assert_eq!(
            kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://127.0.0.1:6443")
        );
        let token = kubeconfig_yaml("https://127.0.0.1:6443", ca, Credentials::Token("abc.def"));
        let kc: Kubeconfig = yaml_serde::from_str(&token).unwrap();
        assert!(kc.auth_infos[0].auth_info.as_ref().unwrap().token.is_some());
    }
}
