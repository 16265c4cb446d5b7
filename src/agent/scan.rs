//! One pass over a proc root: every process's state, parent and pod/container, the zombies with
//! who holds them, each pod's task usage from its `pids` cgroup, and each container's top
//! process (its PID 1, unless the pod shares one PID namespace) with its signal handlers.
//!
//! Processes come and go while the scan runs, and `/proc` of a foreign node or a fixture may hold
//! anything: a vanished process, an unreadable file or garbage content is skipped and counted in
//! [`ScanErrors`], never fatal. Only an unreadable proc root fails the scan.

use super::procfs::{self, Hierarchy};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot list processes in {path}: {source} (the agent needs the host's /proc: run it with hostPID, or point --proc-root at a proc mount)"
    )]
    ProcRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with individual files during a scan (the `kind` label of
/// `reaper_agent_scan_errors_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanErrors {
    /// The process exited between listing and reading.
    pub vanished: u64,
    /// Permission denied or another I/O error.
    pub unreadable: u64,
    /// The content did not parse.
    pub malformed: u64,
}

impl ScanErrors {
    /// `(kind, count)` pairs, for metrics and logs.
    pub fn by_kind(&self) -> [(&'static str, u64); 3] {
        [
            ("vanished", self.vanished),
            ("unreadable", self.unreadable),
            ("malformed", self.malformed),
        ]
    }

    pub fn total(&self) -> u64 {
        self.vanished + self.unreadable + self.malformed
    }

    fn io(&mut self, e: &io::Error) {
        if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) {
            self.vanished += 1;
        } else {
            self.unreadable += 1;
        }
    }
}

/// The process that fails to reap a zombie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub pid: i32,
    pub comm: String,
}

/// A zombie and where it belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zombie {
    pub pid: i32,
    /// With `pid`, identifies this zombie across scans (pids are reused).
    pub starttime: u64,
    pub comm: String,
    /// `None` when the parent vanished mid-scan (or lives outside the proc root's namespace).
    pub parent: Option<Parent>,
    /// Dashed pod UID, from the zombie's own cgroup or else its parent's.
    pub pod_uid: Option<String>,
    /// Bare hex container ID, when the process sits in a container cgroup.
    pub container_id: Option<String>,
}

/// Task usage of a pod cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pids {
    /// `pids.current` (zombies count too).
    pub current: u64,
    /// `pids.max`; `None` for `max`.
    pub limit: Option<u64>,
}

/// One pod seen in the scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodUsage {
    /// Processes (not threads) found in the pod's cgroups.
    pub processes: u64,
    /// From the pod cgroup in the `pids` controller; `None` when it could not be read.
    pub pids: Option<Pids>,
}

/// A container's top process: the one in the container's cgroup whose parent is not (the
/// runtime's shim or monitor is its parent, in the host's view). Of several (`kubectl exec`
/// sessions and exec probes are started the same way) the oldest, the container's own process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerTop {
    /// Dashed pod UID as in the cgroup path (a static pod's config hash).
    pub pod_uid: String,
    /// Bare hex container ID.
    pub container_id: String,
    /// Host pid.
    pub pid: i32,
    pub comm: String,
    /// From its `/proc/<pid>/status`: PID namespace position and signal dispositions.
    pub status: procfs::Status,
    /// Its children, zombies included.
    pub children: u32,
    /// Its zombie children.
    pub zombies: u32,
    /// Its zombie children by `comm` (which probe or script left them).
    pub zombie_comms: BTreeMap<String, u32>,
}

/// The result of one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// `<proc root>/sys/kernel/pid_max`, if readable.
    pub pid_max: Option<u64>,
    /// Processes read, kernel threads and zombies included.
    pub processes: u64,
    pub kernel_threads: u64,
    /// Sorted by pid.
    pub zombies: Vec<Zombie>,
    /// By dashed pod UID.
    pub pods: BTreeMap<String, PodUsage>,
    /// One per container with a live top process, sorted by pod UID and container ID.
    pub tops: Vec<ContainerTop>,
    pub errors: ScanErrors,
}

/// Where cgroup hierarchies are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot {
    /// The v1 `pids` hierarchy (`<root>/pids`).
    pub v1_pids: PathBuf,
    /// The unified hierarchy: `<root>` on a pure v2 host, `<root>/unified` on a hybrid one.
    pub unified: PathBuf,
}

impl CgroupRoot {
    /// Lay out hierarchies under a cgroup filesystem root (normally `/sys/fs/cgroup`).
    pub fn detect(root: &Path) -> Self {
        let unified = if root.join("cgroup.controllers").exists() {
            root.to_path_buf()
        } else {
            root.join("unified")
        };
        Self {
            v1_pids: root.join("pids"),
            unified,
        }
    }

    fn dir(&self, hierarchy: Hierarchy, cgroup: &str) -> PathBuf {
        let base = match hierarchy {
            Hierarchy::V1Pids => &self.v1_pids,
            Hierarchy::Unified => &self.unified,
        };
        base.join(cgroup.trim_start_matches('/'))
    }
}

/// Read a proc or cgroup file. These are generated whole on each read, so a short read is the
/// end: stopping there saves the EOF `read(2)` that `read_to_end` makes (a third of the
/// syscalls per file, which is most of a scan's cost).
fn read_whole(f: &mut File, buf: &mut Vec<u8>) -> io::Result<()> {
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let start = buf.len();
        let end = buf.capacity();
        buf.resize(end, 0);
        match f.read(&mut buf[start..]) {
            Ok(n) => {
                buf.truncate(start + n);
                if n == 0 || start + n < end {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(start),
            Err(e) => {
                buf.truncate(start);
                return Err(e);
            }
        }
    }
}

/// Per-process facts kept between the two passes.
struct Proc {
    ppid: i32,
    zombie: bool,
    starttime: u64,
    comm: Box<str>,
    /// Index into `Walk::owners`.
    owner: Option<u32>,
}

#[derive(Default)]
struct Walk {
    buf: Vec<u8>,
    procs: HashMap<i32, Proc>,
    /// (pod UID, container ID) of the cgroups seen, interned.
    owners: Vec<(String, Option<String>)>,
    owner_ids: HashMap<(String, Option<String>), u32>,
    /// First pids location seen for each pod.
    pids_dirs: HashMap<String, (Hierarchy, String)>,
    scan: Scan,
}

impl Walk {
    /// Read a whole file into `self.buf`; errors are counted.
    fn read(&mut self, path: &Path) -> Option<()> {
        self.buf.clear();
        let res = File::open(path).and_then(|mut f| read_whole(&mut f, &mut self.buf));
        match res {
            Ok(_) => Some(()),
            Err(e) => {
                self.scan.errors.io(&e);
                None
            }
        }
    }

    fn process(&mut self, dir: &mut PathBuf) {
        dir.push("stat");
        if self.read(dir).is_none() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buf);
        let stat = match procfs::parse_stat(&text) {
            Ok(s) => s,
            Err(_) => {
                self.scan.errors.malformed += 1;
                return;
            }
        };
        let (pid, ppid, zombie, starttime) =
            (stat.pid, stat.ppid, stat.is_zombie(), stat.starttime);
        let comm: Box<str> = stat.comm.into();
        let kernel = stat.is_kernel_thread();
        drop(text);
        self.scan.processes += 1;
        if kernel {
            self.scan.kernel_threads += 1;
            return;
        }
        dir.set_file_name("cgroup");
        let owner = if self.read(dir).is_some() {
            self.owner_of()
        } else {
            None
        };
        self.procs.insert(
            pid,
            Proc {
                ppid,
                zombie,
                starttime,
                comm,
                owner,
            },
        );
    }

    /// Attribute the cgroup file in `self.buf`.
    fn owner_of(&mut self) -> Option<u32> {
        let text = String::from_utf8_lossy(&self.buf);
        let cg = match procfs::parse_cgroup_file(&text) {
            Ok(cg) => cg,
            Err(_) => {
                self.scan.errors.malformed += 1;
                return None;
            }
        };
        let kube = cg.kube?;
        let pod = self.scan.pods.entry(kube.pod_uid.clone()).or_default();
        pod.processes += 1;
        if let Some((hierarchy, at)) = &cg.pids
            && !self.pids_dirs.contains_key(&at.pod_uid)
        {
            self.pids_dirs
                .insert(at.pod_uid.clone(), (*hierarchy, at.pod_cgroup_from_root()));
        }
        let key = (kube.pod_uid, kube.container_id.map(str::to_string));
        if let Some(id) = self.owner_ids.get(&key) {
            return Some(*id);
        }
        let id = self.owners.len() as u32;
        self.owners.push(key.clone());
        self.owner_ids.insert(key, id);
        Some(id)
    }

    /// Find each container's top process and read its `status` (one file per container, not
    /// per process), then count its children.
    fn tops(&mut self, proc_root: &Path) {
        // Owner index → (starttime, pid) of the oldest top process found so far.
        let mut oldest: HashMap<u32, (u64, i32)> = HashMap::new();
        for (&pid, p) in &self.procs {
            let Some(owner) = p.owner else { continue };
            if p.zombie || self.owners[owner as usize].1.is_none() {
                continue;
            }
            if self.procs.get(&p.ppid).and_then(|pp| pp.owner) == Some(owner) {
                continue;
            }
            let key = (p.starttime, pid);
            oldest
                .entry(owner)
                .and_modify(|k| *k = (*k).min(key))
                .or_insert(key);
        }
        let mut tops = Vec::with_capacity(oldest.len());
        let mut dir = PathBuf::from(proc_root);
        for (owner, (_, pid)) in oldest {
            dir.push(pid.to_string());
            dir.push("status");
            let read = self.read(&dir);
            dir.pop();
            dir.pop();
            if read.is_none() {
                continue;
            }
            let Some(status) = self.parse_buf(procfs::parse_status) else {
                continue;
            };
            let (pod_uid, container_id) = &self.owners[owner as usize];
            tops.push(ContainerTop {
                pod_uid: pod_uid.clone(),
                container_id: container_id.clone().unwrap_or_default(),
                pid,
                comm: self.procs[&pid].comm.to_string(),
                status,
                children: 0,
                zombies: 0,
                zombie_comms: BTreeMap::new(),
            });
        }
        if tops.is_empty() {
            return;
        }
        let by_pid: HashMap<i32, usize> =
            tops.iter().enumerate().map(|(i, t)| (t.pid, i)).collect();
        for p in self.procs.values() {
            let Some(&i) = by_pid.get(&p.ppid) else {
                continue;
            };
            let top = &mut tops[i];
            top.children += 1;
            if p.zombie {
                top.zombies += 1;
                *top.zombie_comms.entry(p.comm.to_string()).or_default() += 1;
            }
        }
        tops.sort_by(|a, b| (&a.pod_uid, &a.container_id).cmp(&(&b.pod_uid, &b.container_id)));
        self.scan.tops = tops;
    }

    fn pod_pids(&mut self, root: &CgroupRoot) {
        let dirs = std::mem::take(&mut self.pids_dirs);
        for (uid, (hierarchy, cgroup)) in dirs {
            let dir = root.dir(hierarchy, &cgroup);
            let current = self
                .read(&dir.join("pids.current"))
                .and_then(|_| self.parse_buf(procfs::parse_pids_current));
            let limit = self
                .read(&dir.join("pids.max"))
                .and_then(|_| self.parse_buf(procfs::parse_pids_max));
            if let (Some(current), Some(limit)) = (current, limit)
                && let Some(pod) = self.scan.pods.get_mut(&uid)
            {
                pod.pids = Some(Pids { current, limit });
            }
        }
    }

    fn parse_buf<T>(&mut self, parse: fn(&str) -> procfs::Result<T>) -> Option<T> {
        let parsed = parse(&String::from_utf8_lossy(&self.buf)).ok();
        if parsed.is_none() {
            self.scan.errors.malformed += 1;
        }
        parsed
    }

    fn zombies(&mut self) {
        let mut zombies: Vec<Zombie> = self
            .procs
            .iter()
            .filter(|(_, p)| p.zombie)
            .map(|(&pid, p)| {
                let parent = self.procs.get(&p.ppid);
                // On cgroup v1 a zombie's own cgroup reads `/`: its parent tells where it is.
                let owner = p.owner.or_else(|| parent.and_then(|pp| pp.owner));
                let (pod_uid, container_id) = match owner {
                    Some(i) => self.owners[i as usize].clone(),
                    None => (String::new(), None),
                };
                Zombie {
                    pid,
                    starttime: p.starttime,
                    comm: p.comm.to_string(),
                    parent: parent.map(|pp| Parent {
                        pid: p.ppid,
                        comm: pp.comm.to_string(),
                    }),
                    pod_uid: owner.map(|_| pod_uid),
                    container_id,
                }
            })
            .collect();
        zombies.sort_by_key(|z| z.pid);
        self.scan.zombies = zombies;
    }
}

/// Scan every process under `proc_root` (the host's `/proc` with hostPID) and read pod task usage
/// under `cgroup_root` (normally `/sys/fs/cgroup`).
pub fn scan(proc_root: &Path, cgroup_root: &Path) -> Result<Scan> {
    let entries = std::fs::read_dir(proc_root).map_err(|source| Error::ProcRoot {
        path: proc_root.to_path_buf(),
        source,
    })?;
    let mut walk = Walk {
        buf: Vec::with_capacity(4096),
        ..Walk::default()
    };
    for entry in entries {
        let Ok(entry) = entry else {
            walk.scan.errors.unreadable += 1;
            continue;
        };
        let name = entry.file_name();
        if !name
            .as_encoded_bytes()
            .first()
            .is_some_and(u8::is_ascii_digit)
            || !name.as_encoded_bytes().iter().all(u8::is_ascii_digit)
        {
            continue;
        }
        let mut dir = proc_root.join(&name);
        walk.process(&mut dir);
    }
    walk.zombies();
    walk.tops(proc_root);
    walk.pod_pids(&CgroupRoot::detect(cgroup_root));
    if walk.read(&proc_root.join("sys/kernel/pid_max")).is_some() {
        walk.scan.pid_max = walk.parse_buf(procfs::parse_pid_max);
    }
    Ok(walk.scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_proc_root_is_an_error_that_says_what_to_do() {
        let e = scan(Path::new("/nonexistent/proc"), Path::new("/nonexistent")).unwrap_err();
        assert!(e.to_string().contains("hostPID"), "{e}");
    }

    #[test]
    fn reads_files_larger_than_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let content: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let mut buf = Vec::with_capacity(16);
        read_whole(&mut File::open(&path).unwrap(), &mut buf).unwrap();
        assert_eq!(buf, content);
        // Real procfs files, read twice with the same buffer.
        for _ in 0..2 {
            buf.clear();
            read_whole(&mut File::open("/proc/self/stat").unwrap(), &mut buf).unwrap();
            assert!(super::procfs::parse_stat(&String::from_utf8_lossy(&buf)).is_ok());
        }
    }

    #[test]
    fn cgroup_root_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let hybrid = CgroupRoot::detect(dir.path());
        assert_eq!(hybrid.unified, dir.path().join("unified"));
        assert_eq!(
            hybrid.dir(Hierarchy::V1Pids, "/kubepods/podx"),
            dir.path().join("pids/kubepods/podx")
        );
        std::fs::write(dir.path().join("cgroup.controllers"), "pids\n").unwrap();
        let v2 = CgroupRoot::detect(dir.path());
        assert_eq!(
            v2.dir(Hierarchy::Unified, "/kubepods.slice"),
            dir.path().join("kubepods.slice")
        );
    }
}
