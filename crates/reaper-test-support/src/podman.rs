//! Helpers of the podman suites (and the node's image builds): drive the podman CLI with
//! e2e/podman/containers.conf, build the FROM-scratch images from local files, remove everything a test
//! created (also when it fails), and read the containers' processes from the host's /proc.
//!
//! Every podman command and every wait has a deadline. Names are unique per test run
//! (`reaper-e2e-<pid>-<n>-<what>`), so parallel tests and parallel runs do not collide.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Upper bound for one podman command (image builds included). Generous: the suite runs beside
/// other builds on a loaded 2-core machine.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(180);
/// Upper bound for waiting on a container-side event (a file, a process, an exit).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(60);
/// `podman stop -t 5` of a PID 1 that ignores SIGTERM ends in SIGKILL after the 5 s.
pub const STOP_TIMEOUT: u32 = 5;
/// The control's floor, a little under the 5 s (podman's own clock starts before ours ends).
pub const SIGKILL_PATH: Duration = Duration::from_millis(4500);
/// "Stops promptly": the whole `podman stop` command, CLI start-up and cleanup included.
/// Typically 0.2–0.4 s here; the bound leaves room for a loaded 2-core machine.
pub const PROMPT: Duration = Duration::from_millis(2500);

/// A command that ignores SIGTERM as PID 1 (no handler) and dies of it otherwise.
pub const SLEEP: &[&str] = &["sleep", "1000000"];

/// Set to `1` to skip the podman tests (local loop only; refused when `CI=true`).
pub const SKIP_ENV: &str = "REAPER_SKIP_PODMAN";

/// busybox applets linked into the workload image's /bin (the scripts use only these).
const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "ps", "kill", "true", "false", "ls", "touch", "id", "test", "[",
];

/// The project root.
pub fn repo() -> &'static Path {
    crate::control_plane::repo_root()
}

/// `target/reaper/reaper`, the static init built by `make reaper` (which `make test` runs first).
pub fn reaper_binary() -> PathBuf {
    built("target/reaper/reaper", "reaper")
}

/// `target/controller-static/reaper-controller`, the static controller built by
/// `make controller-static` (which `make test` runs first).
pub fn controller_binary() -> PathBuf {
    built(
        "target/controller-static/reaper-controller",
        "controller-static",
    )
}

/// A file `make <target>` builds, or a panic saying to run it.
fn built(path: &str, target: &str) -> PathBuf {
    let p = repo().join(path);
    assert!(
        p.exists(),
        "{} is missing: run `make {target}` (or `make test`, which builds it first)",
        p.display()
    );
    p
}

/// Debian's busybox-static (a static binary runs in a FROM-scratch image).
pub fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox not found: install busybox-static (.ci/run does)")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// What one podman command produced.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

fn drain_pipe(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` to completion; kills it and panics after `timeout`.
fn run_with_timeout(cmd: Command, timeout: Duration) -> Out {
    try_run(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` to completion; kills it after `timeout` and says so in the error.
fn try_run(mut cmd: Command, timeout: Duration) -> Result<Out, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let out = drain_pipe(child.stdout.take().expect("stdout piped"));
    let err = drain_pipe(child.stderr.take().expect("stderr piped"));
    loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("wait {cmd:?}: {e}"))? {
            let elapsed = started.elapsed();
            return Ok(Out {
                code: status.code(),
                stdout: out.join().unwrap_or_default(),
                stderr: err.join().unwrap_or_default(),
                elapsed,
            });
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "timed out after {timeout:?}: {cmd:?}\nstdout: {}\nstderr: {}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Container,
    Pod,
    Volume,
    Image,
}

/// A podman session for one test: e2e/podman/containers.conf, unique names, and a guard that
/// removes every container, pod, volume and image the test created when it is dropped.
pub struct Podman {
    dir: tempfile::TempDir,
    conf: PathBuf,
    prefix: String,
    created: Mutex<Vec<(Kind, String)>>,
}

/// A podman named volume and where its data lives on the host.
pub struct Volume {
    pub name: String,
    pub host_path: PathBuf,
}

impl Volume {
    pub fn file(&self, name: &str) -> PathBuf {
        self.host_path.join(name)
    }
    /// The content of a file in the volume, None while it does not exist.
    pub fn read(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.file(name)).ok()
    }
}

/// Starts a podman session for `test`, or None when podman cannot run on this machine (a clear
/// message says why; never in CI, where that is a failure).
pub fn podman(test: &str) -> Option<Podman> {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        assert!(
            !in_ci(),
            "{SKIP_ENV}=1 is set in CI: the podman tests must run there"
        );
        eprintln!(
            "\n!!! {SKIP_ENV}=1: SKIPPING podman test {test}. This proves nothing; never set it in CI. !!!\n"
        );
        return None;
    }
    let problem = if !crate::node::is_root() {
        Some("the podman tests need root (rootful podman, host /proc of the containers)".to_owned())
    } else {
        match Command::new("podman").arg("--version").output() {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!(
                "`podman --version` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Some(format!(
                "podman not found ({e}): install podman, runc and busybox-static (.ci/run does)"
            )),
        }
    };
    if let Some(problem) = problem {
        assert!(!in_ci(), "CI=true and podman cannot run: {problem}");
        eprintln!("\n!!! SKIPPING podman test {test}: {problem} !!!\n");
        return None;
    }
    // From here on, anything that does not work is a failure, not a skip.
    reaper_binary();
    busybox();
    let pm = Podman::new();
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| pm.sweep_dead_runs());
    Some(pm)
}

/// The pid in a name made by an earlier run (`reaper-e2e-<pid>-...`, images under
/// `localhost/`), if that run's process is gone.
fn dead_run(name: &str) -> bool {
    let name = name.strip_prefix("localhost/").unwrap_or(name);
    name.strip_prefix("reaper-e2e-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        })
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Podman {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("reaper-podman-")
            .tempdir()
            .expect("tempdir");
        // runc and explicit rlimits (see the file): what podman needs on these machines.
        let conf = repo().join("e2e/podman/containers.conf");
        let prefix = format!(
            "reaper-e2e-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        Podman {
            dir,
            conf,
            prefix,
            created: Mutex::new(Vec::new()),
        }
    }

    /// Removes what test runs killed before their guards ran (SIGKILL, a CI timeout) left
    /// behind: names of this suite whose process is gone. Best effort, once per test binary.
    fn sweep_dead_runs(&self) {
        let list = |args: &[&str]| -> Vec<String> {
            let mut c = self.command();
            c.args(args);
            try_run(c, CMD_TIMEOUT)
                .map(|o| {
                    o.stdout
                        .lines()
                        .map(str::to_owned)
                        .filter(|n| dead_run(n))
                        .collect()
                })
                .unwrap_or_default()
        };
        let steps: [(&[&str], &[&str]); 4] = [
            (
                &["ps", "-a", "--format", "{{.Names}}"],
                &["rm", "-f", "-i", "-t", "0"],
            ),
            (
                &["pod", "ps", "--format", "{{.Name}}"],
                &["pod", "rm", "-f", "-i", "-t", "0"],
            ),
            (
                &["volume", "ls", "--format", "{{.Name}}"],
                &["volume", "rm", "-f"],
            ),
            (
                &["images", "--format", "{{.Repository}}:{{.Tag}}"],
                &["rmi", "-f", "-i"],
            ),
        ];
        for (ls, rm) in steps {
            let stale = list(ls);
            if stale.is_empty() {
                continue;
            }
            eprintln!("removing leftovers of earlier podman test runs: {stale:?}");
            let mut c = self.command();
            c.args(rm).args(&stale);
            let _ = try_run(c, CMD_TIMEOUT);
        }
    }

    /// A `podman` command using this session's containers.conf.
    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf);
        c
    }

    /// Runs `podman ARGS` (with the default timeout), whatever its exit code.
    pub fn exec(&self, args: &[&str]) -> Out {
        let mut c = self.command();
        c.args(args);
        run_with_timeout(c, CMD_TIMEOUT)
    }

    /// Runs `podman ARGS`; panics with its stderr unless it exits 0. Returns stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.success(),
            "podman {} failed ({:?}):\n{}{}",
            args.join(" "),
            out.code,
            out.stdout,
            out.stderr
        );
        out.stdout.trim().to_owned()
    }

    fn register(&self, kind: Kind, name: String) -> String {
        self.created.lock().unwrap().push((kind, name.clone()));
        name
    }

    /// A unique container name (removed when the session ends).
    pub fn container(&self, what: &str) -> String {
        self.register(Kind::Container, format!("{}-{what}", self.prefix))
    }

    /// A unique pod name (removed with its containers when the session ends).
    pub fn pod(&self, what: &str) -> String {
        self.register(Kind::Pod, format!("{}-{what}", self.prefix))
    }

    /// Creates a named volume (removed when the session ends).
    pub fn volume(&self, what: &str) -> Volume {
        let name = self.register(Kind::Volume, format!("{}-{what}", self.prefix));
        self.ok(&["volume", "create", &name]);
        let host_path =
            PathBuf::from(self.ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", &name]));
        assert!(host_path.is_dir(), "volume path {host_path:?} missing");
        Volume { name, host_path }
    }

    /// A fresh directory inside the session's temp dir (for build contexts).
    pub fn scratch_dir(&self, what: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let d = self.dir.path().join(format!("{what}-{n}"));
        fs::create_dir_all(&d).expect("mkdir");
        d
    }

    /// `podman build` of `containerfile` in `context`, tagged uniquely; never pulls.
    pub fn build(
        &self,
        what: &str,
        containerfile: &Path,
        context: &Path,
        args: &[(&str, &str)],
    ) -> String {
        let tag = self.register(
            Kind::Image,
            format!("localhost/{}-{what}:test", self.prefix),
        );
        let file = containerfile.to_str().expect("utf-8 path");
        let ctx = context.to_str().expect("utf-8 path");
        let mut argv = vec![
            "build",
            "-q",
            "--pull=never",
            "--layers=false",
            "-f",
            file,
            "-t",
            &tag,
        ];
        let build_args: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for a in &build_args {
            argv.extend(["--build-arg", a]);
        }
        argv.push(ctx);
        self.ok(&argv);
        tag
    }

    /// A final stage of the project's Dockerfile (`reaper` or `controller`) built from the binaries
    /// built on this machine (`--build-arg BINARIES=prebuilt`: the `prebuilt` stage copies
    /// `target/reaper/reaper` and `target/controller-static/reaper-controller` from the repository,
    /// the context; `.dockerignore` keeps the rest of `target/` out). Nothing is pulled.
    pub fn build_dockerfile_stage(&self, what: &str, stage: &str) -> String {
        let tag = self.register(
            Kind::Image,
            format!("localhost/{}-{what}:test", self.prefix),
        );
        let dockerfile = repo().join("Dockerfile");
        self.ok(&[
            "build",
            "-q",
            "--pull=never",
            "--layers=false",
            "-f",
            dockerfile.to_str().expect("utf-8 path"),
            "--target",
            stage,
            "--build-arg",
            "BINARIES=prebuilt",
            "-t",
            &tag,
            repo().to_str().expect("utf-8 path"),
        ]);
        tag
    }

    /// The `reaper` image: the Dockerfile's `reaper` stage (only `/reaper`, entrypoint `/reaper`,
    /// user 65532) with the prebuilt static init. The one place the tests make it.
    pub fn build_reaper_image(&self) -> String {
        reaper_binary();
        self.build_dockerfile_stage("reaper", "reaper")
    }

    /// The `controller` image: the Dockerfile's `controller` stage (`/reaper-controller` run by
    /// `/reaper` as PID 1), from `target/controller-static/reaper-controller`.
    pub fn build_controller_image(&self) -> String {
        reaper_binary();
        controller_binary();
        self.build_dockerfile_stage("controller", "controller")
    }

    /// The workload image: busybox-static with applet symlinks in /bin, the scenario scripts
    /// (e2e/podman/scripts) in /scripts, PATH=/bin. No init.
    pub fn build_workload_image(&self) -> String {
        let ctx = self.scratch_dir("workload-ctx");
        stage_workload_context(&ctx);
        self.build(
            "workload",
            &repo().join("e2e/podman/workload.Containerfile"),
            &ctx,
            &[],
        )
    }

    /// `workload` with `/reaper` copied from `reaper` and `ENTRYPOINT ["/reaper", "--"]`.
    pub fn build_wrapped_image(&self, workload: &str, reaper: &str) -> String {
        let ctx = self.scratch_dir("wrapped-ctx");
        self.build(
            "wrapped",
            &repo().join("e2e/podman/wrapped.Containerfile"),
            &ctx,
            &[("REAPER_IMAGE", reaper), ("WORKLOAD_IMAGE", workload)],
        )
    }

    /// The host pid of the container's first process (0 when it is not running).
    pub fn pid(&self, container: &str) -> i32 {
        self.ok(&["inspect", "--format", "{{.State.Pid}}", container])
            .parse()
            .expect("pid")
    }

    /// `{{.State.Status}}` (`running`, `exited`, ...).
    pub fn status(&self, container: &str) -> String {
        self.ok(&["inspect", "--format", "{{.State.Status}}", container])
    }

    /// Exit code of a stopped container.
    pub fn exit_code(&self, container: &str) -> i32 {
        self.ok(&["inspect", "--format", "{{.State.ExitCode}}", container])
            .parse()
            .expect("exit code")
    }

    /// Waits for the container to exit (bounded) and returns its exit code.
    pub fn wait_exit(&self, container: &str) -> i32 {
        self.ok(&["wait", container]).parse().expect("exit code")
    }

    /// Waits until the container is running with a pid.
    pub fn wait_running(&self, container: &str) -> i32 {
        wait_until(WAIT_TIMEOUT, &format!("{container} running"), || {
            (self.status(container) == "running")
                .then(|| self.pid(container))
                .filter(|p| *p > 0)
        })
    }

    /// Runs `podman ARGS` like [`Podman::ok`] and returns its wall time.
    pub fn ok_timed(&self, args: &[&str]) -> Duration {
        let out = self.exec(args);
        assert!(
            out.success(),
            "podman {} failed ({:?}):\n{}{}",
            args.join(" "),
            out.code,
            out.stdout,
            out.stderr
        );
        out.elapsed
    }

    /// `podman stop -t SECS` and its wall time.
    pub fn stop(&self, container: &str, secs: u32) -> Duration {
        self.ok_timed(&["stop", "-t", &secs.to_string(), container])
    }

    /// The container's log (stdout and stderr), for failure messages.
    pub fn logs(&self, container: &str) -> String {
        let out = self.exec(&["logs", container]);
        format!("{}{}", out.stdout, out.stderr)
    }
}

impl Drop for Podman {
    /// Removes what the test created, failures included. Containers first (volumes and images
    /// in use cannot be removed), then pods, volumes, images.
    fn drop(&mut self) {
        let created = std::mem::take(&mut *self.created.lock().unwrap_or_else(|e| e.into_inner()));
        let of = |k: Kind| -> Vec<&str> {
            created
                .iter()
                .filter(|(kind, _)| *kind == k)
                .map(|(_, n)| n.as_str())
                .collect()
        };
        let steps: [(Kind, &[&str]); 4] = [
            (Kind::Container, &["rm", "-f", "-i", "-t", "0"]),
            (Kind::Pod, &["pod", "rm", "-f", "-i", "-t", "0"]),
            (Kind::Volume, &["volume", "rm", "-f"]),
            (Kind::Image, &["rmi", "-f", "-i"]),
        ];
        for (kind, cmd) in steps {
            let names = of(kind);
            if names.is_empty() {
                continue;
            }
            let mut c = self.command();
            c.args(cmd).args(&names);
            // Never panic in drop (a second panic would abort and hide the first one).
            match try_run(c, CMD_TIMEOUT) {
                Ok(out) if out.success() => {}
                Ok(out) => eprintln!("cleanup {cmd:?} {names:?}: {}", out.stderr.trim()),
                Err(e) => eprintln!("cleanup {cmd:?} {names:?}: {e}"),
            }
        }
    }
}

/// Stages the workload image's build context in `ctx`: bin/busybox, one symlink per applet,
/// scripts/ from e2e/podman/scripts. Shared with bench/podman.sh's layout.
pub fn stage_workload_context(ctx: &Path) {
    stage_busybox_context(ctx, APPLETS);
}

/// [`stage_workload_context`] with the given applets linked into bin/ (every applet of this
/// busybox when empty: the node's workload image).
pub fn stage_busybox_context(ctx: &Path, applets: &[&str]) {
    let bin = ctx.join("bin");
    fs::create_dir_all(&bin).expect("mkdir bin");
    fs::copy(busybox(), bin.join("busybox")).expect("copy busybox");
    let all: Vec<String> = if applets.is_empty() {
        let out = Command::new(busybox())
            .arg("--list")
            .output()
            .expect("busybox --list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|a| *a != "busybox")
            .map(str::to_owned)
            .collect()
    } else {
        applets.iter().map(|a| a.to_string()).collect()
    };
    for applet in &all {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("symlink applet");
    }
    let scripts = ctx.join("scripts");
    fs::create_dir_all(&scripts).expect("mkdir scripts");
    for entry in fs::read_dir(repo().join("e2e/podman/scripts")).expect("e2e/podman/scripts") {
        let entry = entry.expect("dir entry");
        fs::copy(entry.path(), scripts.join(entry.file_name())).expect("copy script");
    }
}

/// What is PID 1 of the container: the three ways the tests run a command.
#[derive(Debug, Clone, Copy)]
pub enum Pid1 {
    /// No init: the command itself.
    NoInit,
    /// `ENTRYPOINT ["/reaper", "--"]` in the image.
    Entrypoint,
    /// `--init --init-path target/reaper/reaper`.
    InitPath,
}

pub struct Images {
    pub workload: String,
    pub wrapped: String,
}

pub fn images(pm: &Podman) -> Images {
    let workload = pm.build_workload_image();
    let reaper = pm.build_reaper_image();
    let wrapped = pm.build_wrapped_image(&workload, &reaper);
    Images { workload, wrapped }
}

/// `podman run -d` of `cmd` the given way; returns the host pid of the container's PID 1 once
/// the command itself is running (under an init: once it has been exec'd as the init's child).
pub fn start(pm: &Podman, img: &Images, how: Pid1, name: &str, opts: &[&str], cmd: &[&str]) -> i32 {
    let init_path = repo().join("target/reaper/reaper");
    let init_path = init_path.to_str().unwrap();
    let mut argv = vec!["run", "-d", "--name", name, "--network", "none"];
    argv.extend_from_slice(opts);
    match how {
        Pid1::NoInit | Pid1::Entrypoint => {}
        Pid1::InitPath => argv.extend(["--init", "--init-path", init_path]),
    }
    argv.push(match how {
        Pid1::Entrypoint => &img.wrapped,
        Pid1::NoInit | Pid1::InitPath => &img.workload,
    });
    argv.extend_from_slice(cmd);
    pm.ok(&argv);
    let pid = pm.wait_running(name);
    let first = cmdline(pid);
    match how {
        Pid1::NoInit => {}
        Pid1::Entrypoint => assert!(first.starts_with("/reaper --"), "PID 1 is {first:?}"),
        Pid1::InitPath => assert!(
            first.starts_with("/run/podman-init --"),
            "PID 1 is {first:?}"
        ),
    }
    if !matches!(how, Pid1::NoInit) {
        wait_until(WAIT_TIMEOUT, "the init's child to start", || {
            (tree(&[pid]).len() >= 2).then_some(())
        });
    }
    pid
}

pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

pub use crate::wait::until as wait_until;

/// One process as the host's /proc shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub state: char,
}

/// Parses `/proc/PID/stat` (the command name may hold spaces and parentheses).
fn parse_stat(s: &str) -> Option<Proc> {
    let pid = s.split_whitespace().next()?.parse().ok()?;
    let mut rest = s[s.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(Proc { pid, ppid, state })
}

/// Every process on the host (a snapshot; processes that exit meanwhile are skipped).
pub fn host_processes() -> Vec<Proc> {
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| parse_stat(&s))
        .collect()
}

/// `roots` and all their descendants, by parent pid. The container's processes are the
/// descendants of its first process on the host: orphans inside a PID namespace are
/// re-parented to the namespace's PID 1, so they stay in that tree. (A zombie's own
/// /proc/PID/cgroup and ns links are not reliable on cgroup v1, its parent link is.)
pub fn tree(roots: &[i32]) -> Vec<Proc> {
    let procs = host_processes();
    let mut by_parent: HashMap<i32, Vec<Proc>> = HashMap::new();
    for p in &procs {
        by_parent.entry(p.ppid).or_default().push(*p);
    }
    let mut out: Vec<Proc> = procs
        .iter()
        .filter(|p| roots.contains(&p.pid))
        .copied()
        .collect();
    let mut queue: VecDeque<i32> = roots.iter().copied().collect();
    while let Some(pid) = queue.pop_front() {
        for c in by_parent.get(&pid).into_iter().flatten() {
            out.push(*c);
            queue.push_back(c.pid);
        }
    }
    out
}

/// The processes of `procs` (one snapshot) that are `roots` or below them.
pub fn subtree(procs: &[Proc], roots: &[i32]) -> Vec<Proc> {
    let mut keep: HashSet<i32> = roots.iter().copied().collect();
    // A snapshot is in pid order, and a re-parented orphan can have a lower pid than its new
    // parent's child: iterate until nothing changes.
    loop {
        let before = keep.len();
        for p in procs {
            if keep.contains(&p.ppid) {
                keep.insert(p.pid);
            }
        }
        if keep.len() == before {
            break;
        }
    }
    procs
        .iter()
        .filter(|p| keep.contains(&p.pid))
        .copied()
        .collect()
}

/// The pids of the zombies in `procs`.
pub fn zombie_pids(procs: &[Proc]) -> Vec<i32> {
    procs
        .iter()
        .filter(|p| p.state == 'Z')
        .map(|p| p.pid)
        .collect()
}

/// The zombies among `roots` and their descendants.
pub fn zombies(roots: &[i32]) -> Vec<i32> {
    tree(roots)
        .into_iter()
        .filter(|p| p.state == 'Z')
        .map(|p| p.pid)
        .collect()
}

/// Snapshots of `roots` and their descendants every `every` for `total`, with the time of
/// each snapshot.
pub fn sample_trees(roots: &[i32], total: Duration, every: Duration) -> Vec<(Duration, Vec<Proc>)> {
    let start = Instant::now();
    let mut samples = Vec::new();
    loop {
        samples.push((start.elapsed(), tree(roots)));
        if start.elapsed() >= total {
            return samples;
        }
        thread::sleep(every);
    }
}

/// Zombies that stayed: pids seen in one sample and again in a sample taken at least `min_age`
/// later. An init reaps within microseconds, so a pid that is still a zombie hundreds of
/// milliseconds later was never going to be reaped.
pub fn lingering_zombies(samples: &[(Duration, Vec<i32>)], min_age: Duration) -> Vec<i32> {
    let mut first_seen: HashMap<i32, Duration> = HashMap::new();
    let mut lingering = Vec::new();
    for (at, pids) in samples {
        for pid in pids {
            let first = *first_seen.entry(*pid).or_insert(*at);
            if *at - first >= min_age && !lingering.contains(pid) {
                lingering.push(*pid);
            }
        }
    }
    lingering
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_runs_only() {
        assert!(!dead_run(&format!("reaper-e2e-{}-0-x", std::process::id())));
        assert!(!dead_run("reaper-e2e-1-0-x")); // pid 1 is alive
        assert!(!dead_run("someone-else"));
        assert!(dead_run("localhost/reaper-e2e-4000000-3-reaper:test")); // above pid_max
    }

    #[test]
    fn stat_with_odd_command_name() {
        let p = parse_stat("42 (a) b (c)) Z 7 42 42 0 -1").unwrap();
        assert_eq!(
            p,
            Proc {
                pid: 42,
                ppid: 7,
                state: 'Z'
            }
        );
    }

    #[test]
    fn lingering_needs_the_same_pid_twice_far_enough_apart() {
        let ms = Duration::from_millis;
        let samples = vec![
            (ms(0), vec![10]),
            (ms(100), vec![11]),
            (ms(400), vec![11, 12]),
            (ms(500), vec![12]),
        ];
        assert_eq!(lingering_zombies(&samples, ms(250)), vec![11]);
    }
}
