//! Shared by the agent's live and control-plane tests: real zombies held by a real parent that
//! never waits, inside real cgroup directories shaped like kubelet pod cgroups.
//!
//! Every cgroup tree lives under a unique top directory (`reaper-agent-test-<pid>-<n>-<nanos>`),
//! so parallel tests never collide, and is removed on drop (also on panic) after killing what is
//! left in it. Every wait has a deadline.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The name the zombies' parent runs under (a symlink to `sleep`: comm comes from the file name).
pub const PARENT_COMM: &str = "zombie-parent";
pub const DEADLINE: Duration = Duration::from_secs(15);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique pod UID and container ID per call.
pub fn ids() -> (String, String, String) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let pid = std::process::id();
    let seed = nanos ^ ((pid as u64) << 32) ^ n as u64;
    let uid = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        pid,
        n & 0xffff,
        (seed >> 8) & 0xfff,
        (seed >> 20) & 0xfff,
        seed & 0xffff_ffff_ffff
    );
    let cid = format!(
        "{:016x}{:016x}{:016x}{:016x}",
        seed,
        seed.rotate_left(17),
        seed.rotate_left(31) ^ 0x5bd1e995,
        (pid as u64) << 16 | n as u64
    );
    let top = format!("reaper-agent-test-{pid}-{n}-{nanos}");
    (uid, cid, top)
}

/// Cgroup directories created by a test, removed (deepest first) on drop.
pub struct CgroupTree {
    pub dirs: Vec<PathBuf>,
}

impl CgroupTree {
    /// Create `base/rel` one level at a time.
    pub fn create(base: &Path, rel: &str) -> Self {
        let mut tree = Self { dirs: Vec::new() };
        let mut dir = base.to_path_buf();
        for segment in rel.split('/').filter(|s| !s.is_empty()) {
            dir.push(segment);
            fs::create_dir(&dir).unwrap_or_else(|e| {
                panic!(
                    "cannot create {} ({e}): these tests need root and a cgroup v1 pids hierarchy at {CGROUP_ROOT}/pids",
                    dir.display()
                )
            });
            tree.dirs.push(dir.clone());
        }
        tree
    }

    pub fn leaf(&self) -> &Path {
        self.dirs.last().unwrap()
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        for dir in self.dirs.iter().rev() {
            loop {
                // Anything still inside is ours: kill it so the directory can go.
                if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs.split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                }
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() > deadline => {
                        eprintln!("could not remove {}: {e}", dir.display());
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

/// A process killed and waited for on drop.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a parent in `cgroup_dirs` (it moves itself in before forking) that makes `n` children,
/// then becomes `zombie-parent` (sleep) and never waits: `n` real zombies. The children exit only
/// once the parent has exec'd (dash would reap children that exit earlier).
pub fn zombie_parent(cgroup_dirs: &[&Path], n: u32, workdir: &Path) -> Reaped {
    let parent_exe = workdir.join(PARENT_COMM);
    if !parent_exe.exists() {
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sleep(1) is installed");
        std::os::unix::fs::symlink(sleep, &parent_exe).unwrap();
    }
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(
            r#"for d in $DIRS; do echo $$ > "$d/cgroup.procs" || exit 97; done
               i=0; while [ $i -lt "$N" ]; do
                 (until read c < /proc/$$/comm && [ "$c" = "$COMM" ]; do :; done) &
                 i=$((i+1))
               done
               exec "$PARENT" 600"#,
        )
        .env(
            "DIRS",
            cgroup_dirs
                .iter()
                .map(|d| d.to_str().unwrap())
                .collect::<Vec<_>>()
                .join(" "),
        )
        .env("N", n.to_string())
        .env("PARENT", &parent_exe)
        .env("COMM", PARENT_COMM)
        .stdin(Stdio::null());
    let child = Reaped(cmd.spawn().unwrap());
    let pid = child.0.id();
    // Wait until the parent has exec'd and holds all n zombies.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let zombies = zombie_children(pid);
        if comm.trim() == PARENT_COMM && zombies == n {
            return child;
        }
        assert!(
            Instant::now() < deadline,
            "parent {pid} ({}) holds {zombies} of {n} zombies after {DEADLINE:?}",
            comm.trim()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Zombie children of `pid`, counted by ps(1) (independent of the agent's parser).
pub fn zombie_children(pid: u32) -> u32 {
    let out = Command::new("ps")
        .args(["-o", "stat=", "--ppid", &pid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with('Z'))
        .count() as u32
}

/// A burstable pod with a containerd container, cgroupfs driver, under the v1 pids hierarchy.
pub struct V1Pod {
    pub uid: String,
    pub cid: String,
    pub pod_dir: PathBuf,
    // Field order is drop order: kill the parent before removing its cgroups.
    pub parent: Reaped,
    pub tree: CgroupTree,
    pub work: tempfile::TempDir,
}

/// A pod with a fresh UID and container ID holding `zombies` zombies, `pids.max` set.
pub fn v1_pod(zombies: u32, pids_max: u64) -> V1Pod {
    let (uid, cid, _) = ids();
    v1_pod_with(&uid, &cid, zombies, pids_max)
}

/// [`v1_pod`] for a given pod UID and container ID (e.g. a Pod created on an API server).
pub fn v1_pod_with(uid: &str, cid: &str, zombies: u32, pids_max: u64) -> V1Pod {
    let (_, _, top) = ids();
    let pids_root = Path::new(CGROUP_ROOT).join("pids");
    let tree = CgroupTree::create(
        &pids_root,
        &format!("{top}/kubepods/burstable/pod{uid}/{cid}"),
    );
    let pod_dir = tree.dirs[tree.dirs.len() - 2].clone();
    fs::write(pod_dir.join("pids.max"), pids_max.to_string()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let parent = zombie_parent(&[tree.leaf()], zombies, work.path());
    V1Pod {
        uid: uid.to_string(),
        cid: cid.to_string(),
        pod_dir,
        parent,
        tree,
        work,
    }
}

/// Run `cmd` to completion within [`DEADLINE`] (killed after it), stdout and stderr captured
/// through files so a large output can never block the child.
pub fn output_within_deadline(cmd: &mut Command) -> std::process::Output {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let mut child = cmd
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |mut f: fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    std::process::Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}
