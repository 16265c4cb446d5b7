//! Agent scan cost against `ps -eo pid,stat,cgroup`, over the same live processes, in one run.
//!
//! ```sh
//! make bench-agent            # or:
//! cargo build --release --bin reaper-controller
//! cargo run --release --example agent_scan -- 1000 10000
//! ```
//!
//! For each count N it spawns N extra processes (sleepers plus 1% zombies) spread over 20 pods'
//! cgroups shaped like `kubepods/burstable/pod<uid>/<id>` in the v1 pids hierarchy (when it can:
//! root and `/sys/fs/cgroup/pids`), then times, interleaved, the agent's pass (scan of the whole
//! `/proc` + report) in-process and `ps -eo pid,stat,cgroup` (output read in full), and prints
//! medians and their ratio. It also runs the release agent (`--report=false --interval 1s`)
//! for a few scans and reads its peak RSS (VmHWM). Targets: scan <= 0.5x ps, RSS <= 20 MB.

use reaper::agent::report::{self, FirstSeen, PodIndex, ReportInput};
use reaper::agent::scan;
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PODS: usize = 20;
const REPS: usize = 9;
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The processes spawned for one count, killed (and their cgroups removed) on drop.
struct Load {
    spawners: Vec<Child>,
    cgroups: Vec<PathBuf>,
}

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.spawners {
            // Each spawner leads its own process group (sleepers and zombie-makers included).
            let pgid = c.id() as libc::pid_t;
            if pgid > 1 {
                reaper_test_support::process::signal(-pgid, libc::SIGKILL);
            }
            let _ = c.wait();
        }
        // Anything left in the bench's cgroups is the bench's.
        for dir in &self.cgroups {
            for pid in fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
            {
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    reaper_test_support::process::signal(pid, libc::SIGKILL);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for dir in self.cgroups.iter().rev() {
            while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn spawn_load(n: usize) -> Load {
    let pids_root = Path::new(CGROUP_ROOT).join("pids");
    let top = pids_root.join(format!("reaper-agent-bench-{}", std::process::id()));
    let use_cgroups = fs::create_dir(&top).is_ok();
    let mut load = Load {
        spawners: Vec::new(),
        cgroups: Vec::new(),
    };
    if use_cgroups {
        load.cgroups.push(top.clone());
    } else {
        eprintln!(
            "note: cannot create cgroups under {}: processes stay in the bench's cgroup",
            pids_root.display()
        );
    }
    let per_pod = n / PODS;
    for p in 0..PODS {
        let mut dir = String::new();
        if use_cgroups {
            let uid = format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), p);
            let id = format!("{:064x}", p + 1);
            for rel in [
                "kubepods",
                "kubepods/burstable",
                &format!("kubepods/burstable/pod{uid}"),
                &format!("kubepods/burstable/pod{uid}/{id}"),
            ] {
                let d = top.join(rel);
                if !d.exists() {
                    fs::create_dir(&d).expect("create bench cgroup");
                    load.cgroups.push(d.clone());
                }
                dir = d.to_string_lossy().into_owned();
            }
        }
        let zombies = (per_pod / 100).max(1);
        let sleepers = per_pod - zombies - 1;
        // Sleepers first; then children that exit once the spawner has exec'd (zombies); then
        // the spawner becomes a sleeper that never waits.
        let script = r#"[ -n "$DIR" ] && echo $$ > "$DIR/cgroup.procs"
            i=0; while [ $i -lt "$S" ]; do sleep 100000 & i=$((i+1)); done
            i=0; while [ $i -lt "$Z" ]; do
              (until read c < /proc/$$/comm && [ "$c" = sleep ]; do :; done) &
              i=$((i+1))
            done
            exec sleep 100000"#;
        let child = Command::new("/bin/sh")
            .args(["-c", script])
            .env("DIR", &dir)
            .env("S", sleepers.to_string())
            .env("Z", zombies.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn /bin/sh");
        load.spawners.push(child);
    }
    let want = PODS * per_pod;
    let pgids: Vec<String> = load.spawners.iter().map(|c| c.id().to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        // pgrep -g selects by process group.
        let out = Command::new("pgrep")
            .args(["-g", &pgids.join(",")])
            .output()
            .expect("pgrep(1)");
        let now = out.stdout.iter().filter(|b| **b == b'\n').count();
        if now >= want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {now} of {want} processes after 300 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the zombie-makers finish spinning.
    std::thread::sleep(Duration::from_millis(500));
    load
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn agent_pass() -> (Duration, u64, usize) {
    let t = Instant::now();
    let s = scan::scan(Path::new("/proc"), Path::new(CGROUP_ROOT)).expect("scan /proc");
    let now = Instant::now();
    let mut fs = FirstSeen::default();
    fs.update(&s.zombies, now);
    let spec = report::build_spec(&ReportInput {
        node_name: "bench",
        scan: &s,
        first_seen: &fs,
        index: &PodIndex::default(),
        now,
        observed_at: None,
    });
    (t.elapsed(), spec.processes, spec.containers.len())
}

fn ps_pass() -> (Duration, usize) {
    let t = Instant::now();
    let mut child = Command::new("ps")
        .args(["-eo", "pid,stat,cgroup"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ps(1) is installed (procps)");
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    child.wait().unwrap();
    let lines = out.iter().filter(|b| **b == b'\n').count();
    (t.elapsed(), lines)
}

/// Peak and current RSS (kB) of the release agent after a few scans.
fn agent_rss(bin: &Path) -> Option<(u64, u64)> {
    let mut child = Command::new(bin)
        .args([
            "agent",
            "--report=false",
            "--interval",
            "1s",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--node-name", "bench"])
        .env_remove("KUBECONFIG")
        .env("HOME", "/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(4500));
    let status = fs::read_to_string(format!("/proc/{}/status", child.id())).ok();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let status = status?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

fn main() {
    let counts: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if args.is_empty() {
            vec![1000, 10000]
        } else {
            args
        }
    };
    let bin = std::env::var_os("REAPER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/reaper-controller")
        });
    println!(
        "ulimit -u: {}, kernel.pid_max: {}",
        String::from_utf8_lossy(
            &Command::new("bash")
                .args(["-c", "ulimit -u"])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .trim(),
        fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap_or_default()
            .trim()
    );
    // The bench's own pids cgroup and its limit cap what it can spawn.
    let own_pids = fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctl, path) = (parts.next()?, parts.next()?, parts.next()?);
            (ctl == "pids").then(|| path.to_string())
        })
        .map(|p| {
            let max = fs::read_to_string(
                Path::new(CGROUP_ROOT)
                    .join("pids")
                    .join(p.trim_start_matches('/'))
                    .join("pids.max"),
            );
            let max = max.map_or_else(
                |_| "none (root cgroup)".to_string(),
                |m| m.trim().to_string(),
            );
            format!("{p}, pids.max {max}")
        })
        .unwrap_or_else(|| "n/a".into());
    println!("bench's pids cgroup: {own_pids}");
    println!();
    println!(
        "| extra processes | /proc entries | agent scan+report (median) | ps -eo pid,stat,cgroup (median) | ratio | agent peak RSS |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in counts {
        let load = spawn_load(n);
        // Warm up both (dentry caches), then interleave.
        let _ = agent_pass();
        let _ = ps_pass();
        let (mut agent, mut ps) = (Vec::new(), Vec::new());
        let (mut procs, mut lines, mut containers) = (0, 0, 0);
        for _ in 0..REPS {
            let (d, p, c) = agent_pass();
            agent.push(d);
            procs = p;
            containers = c;
            let (d, l) = ps_pass();
            ps.push(d);
            lines = l;
        }
        let (a, p) = (median(agent), median(ps));
        let rss = agent_rss(&bin)
            .map(|(hwm, _)| format!("{:.1} MB", hwm as f64 / 1024.0))
            .unwrap_or_else(|| format!("n/a (build {})", bin.display()));
        println!(
            "| {n} | {procs} | {:.1} ms | {:.1} ms | {:.2}x | {rss} |",
            a.as_secs_f64() * 1e3,
            p.as_secs_f64() * 1e3,
            a.as_secs_f64() / p.as_secs_f64(),
        );
        eprintln!("  (ps printed {lines} lines; report held {containers} containers with zombies)");
        drop(load);
    }
}
