//! Pieces the fault tests share: a webhook replica process, certificate files, annotations.
use reaper_test_support as support;

use k8s_openapi::api::core::v1::Pod;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::control_plane::{ChildGuard, ControlPlane, TestCa, free_port, reaper_controller_bin};

pub const REAPER_IMAGE: &str = "registry.example.com/reaper/reaper:0.1.0";

/// One `reaper-controller webhook` process; the certificate directory is shared, as one Secret
/// is mounted into every replica.
pub struct Replica {
    pub child: Option<ChildGuard>,
    kubeconfig: PathBuf,
    pub port: u16,
    pub admin: u16,
    certs: PathBuf,
    pub log: PathBuf,
    registry: String,
}

impl Replica {
    /// Whether the process is still the one started (never exited or restarted).
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.0.try_wait(), Ok(None)))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn start(cp: &ControlPlane, certs: &Path, registry: &str, name: &str) -> Self {
        let mut r = Self {
            child: None,
            kubeconfig: cp.kubeconfig().to_path_buf(),
            port: free_port(),
            admin: free_port(),
            certs: certs.to_path_buf(),
            log: cp.dir().join(format!("{name}.log")),
            registry: registry.to_string(),
        };
        r.spawn().await;
        r
    }

    pub async fn spawn(&mut self) {
        let mut cmd = std::process::Command::new(reaper_controller_bin());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        cmd.args(["--log-level", "warn", "webhook"])
            .arg(format!("--listen=127.0.0.1:{}", self.port))
            .arg(format!("--admin-listen=127.0.0.1:{}", self.admin))
            .arg(format!(
                "--tls-cert={}",
                self.certs.join("tls.crt").display()
            ))
            .arg(format!(
                "--tls-key={}",
                self.certs.join("tls.key").display()
            ))
            .arg(format!("--reaper-image={REAPER_IMAGE}"))
            .arg(format!("--insecure-registries={}", self.registry))
            .env("POD_NAMESPACE", "reaper-system")
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(ChildGuard::spawn(&mut cmd).expect("spawning a webhook replica"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://127.0.0.1:{}/readyz", self.admin);
        while !reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
            assert!(
                Instant::now() < deadline,
                "replica not ready within 60 s:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then wait for the process to end (it drains its connections first).
    pub async fn stop(&mut self) -> Duration {
        let mut guard = self.child.take().expect("running");
        let started = Instant::now();
        // SAFETY: kill(2) on our own unreaped child.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(guard.0.id() as i32, libc::SIGTERM);
        }
        while matches!(guard.0.try_wait(), Ok(None)) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "replica did not stop within 20 s of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = guard.0.wait().unwrap();
        assert!(status.success(), "replica exited {status} on SIGTERM");
        started.elapsed()
    }
}

pub fn write_pair(ca: &TestCa, dir: &Path) {
    let pair = ca.issue_server(&["127.0.0.1", "localhost"]);
    // Key first, each file replaced atomically: the replicas may read a new certificate with
    // the old key for one poll, reject that pair and keep serving the previous one.
    for (name, pem) in [("tls.key", &pair.key_pem), ("tls.crt", &pair.cert_pem)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// The `reaper.dev/injected` annotation, or "".
pub fn injected(p: &Pod) -> &str {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("reaper.dev/injected"))
        .map_or("", String::as_str)
}
