//! Pure parsers for the `/proc` and cgroup files the agent reads. Every function takes the file's
//! content as `&str` and never touches the filesystem, so all of them are unit- and fuzz-tested.
//!
//! Kubernetes pod cgroups come in several shapes (kubelet cgroup driver × runtime × QoS class ×
//! cgroup version); all of these are recognised, anywhere in the path (kind and nested kubelets
//! put a prefix before `kubepods`):
//!
//! | driver   | pod segment                                   | container segment |
//! |----------|-----------------------------------------------|-------------------|
//! | cgroupfs | `kubepods[/burstable\|/besteffort]/pod<uid>`  | `<id>` (containerd, docker), `crio-<id>` |
//! | systemd  | `kubepods[-burstable\|-besteffort]-pod<uid_with_underscores>.slice` | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` |

use std::fmt;

/// `PF_KTHREAD` in the `flags` field of `/proc/<pid>/stat` (include/linux/sched.h).
const PF_KTHREAD: u32 = 0x0020_0000;

/// Why a file's content was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("stat line has no `(comm)` part")]
    NoComm,
    #[error("stat line ends before field {0}")]
    MissingField(&'static str),
    #[error("stat field {field} is not a number: {value:?}")]
    BadNumber { field: &'static str, value: String },
    #[error("stat state {0:?} is not a process state letter")]
    BadState(String),
    #[error("cgroup line is not `hierarchy:controllers:path`: {0:?}")]
    BadCgroupLine(String),
    #[error("pids file holds {0:?}, expected a number or `max`")]
    BadPids(String),
    #[error("status file has no {0} line")]
    MissingStatusLine(&'static str),
    #[error("status line {line} is not {expected}: {value:?}")]
    BadStatusLine {
        line: &'static str,
        expected: &'static str,
        value: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn excerpt(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat<'a> {
    pub pid: i32,
    /// Executable name as the kernel keeps it (at most 15 bytes, any bytes but NUL).
    pub comm: &'a str,
    /// State letter: `R`, `S`, `D`, `Z` (zombie), `T`, `t`, `X`, `I`, ...
    pub state: char,
    pub ppid: i32,
    /// Kernel `PF_*` flags.
    pub flags: u32,
    /// Start time in clock ticks after boot: with the pid, it tells a reused pid apart.
    pub starttime: u64,
}

impl Stat<'_> {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }

    /// Kernel threads (children of kthreadd, pid 2) have no cgroup worth reading and belong to
    /// no pod. `PF_KTHREAD` decides: in another PID namespace pid 2 may be an ordinary process.
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0 || (self.pid == 2 && self.ppid == 0)
    }
}

fn number<T: std::str::FromStr>(field: &'static str, value: Option<&str>) -> Result<T> {
    let value = value.ok_or(Error::MissingField(field))?;
    value.parse().map_err(|_| Error::BadNumber {
        field,
        value: excerpt(value),
    })
}

/// Parse one `/proc/<pid>/stat` line.
///
/// `comm` may hold spaces, parentheses and newlines (`prctl(PR_SET_NAME)` takes any bytes), so it
/// runs from the first `(` to the *last* `)`: every field after it is a number or a state letter.
pub fn parse_stat(line: &str) -> Result<Stat<'_>> {
    let open = line.find('(').ok_or(Error::NoComm)?;
    let close = line.rfind(')').ok_or(Error::NoComm)?;
    if close < open {
        return Err(Error::NoComm);
    }
    let pid = number("pid", Some(line[..open].trim()))?;
    let comm = &line[open + 1..close];
    // Fields 3.. (state is field 3 in proc(5) numbering).
    let mut rest = line[close + 1..].split_ascii_whitespace();
    let state_field = rest.next().ok_or(Error::MissingField("state"))?;
    let mut chars = state_field.chars();
    let state = match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => c,
        _ => return Err(Error::BadState(excerpt(state_field))),
    };
    let ppid = number("ppid", rest.next())?;
    // pgrp, session, tty_nr, tpgid
    let mut rest = rest.skip(4);
    let flags = number("flags", rest.next())?;
    // minflt cminflt majflt cmajflt utime stime cutime cstime priority nice num_threads itrealvalue
    let mut rest = rest.skip(12);
    let starttime = number("starttime", rest.next())?;
    Ok(Stat {
        pid,
        comm,
        state,
        ppid,
        flags,
        starttime,
    })
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-ID:controller-list:path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLine<'a> {
    /// `0` for the unified (v2) hierarchy.
    pub hierarchy: u32,
    /// Comma-separated controllers (v1), `name=systemd`, or empty (v2).
    pub controllers: &'a str,
    pub path: &'a str,
}

impl CgroupLine<'_> {
    /// The v1 hierarchy holding the `pids` controller.
    pub fn is_v1_pids(&self) -> bool {
        self.hierarchy != 0 && self.controllers.split(',').any(|c| c == "pids")
    }
    /// The unified (v2) hierarchy.
    pub fn is_unified(&self) -> bool {
        self.hierarchy == 0 && self.controllers.is_empty()
    }
}

/// Parse one line of `/proc/<pid>/cgroup`.
pub fn parse_cgroup_line(line: &str) -> Result<CgroupLine<'_>> {
    let bad = || Error::BadCgroupLine(excerpt(line));
    let mut parts = line.splitn(3, ':');
    let hierarchy = parts.next().and_then(|h| h.parse().ok()).ok_or_else(bad)?;
    let controllers = parts.next().ok_or_else(bad)?;
    let path = parts.next().ok_or_else(bad)?;
    if !path.starts_with('/') {
        return Err(bad());
    }
    Ok(CgroupLine {
        hierarchy,
        controllers,
        path,
    })
}

/// Kubernetes QoS class, as encoded in the pod's cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qos {
    /// Pod cgroup directly under `kubepods`.
    Guaranteed,
    Burstable,
    BestEffort,
}

/// The kubelet cgroup driver that named a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    /// Plain directories: `kubepods/burstable/pod<uid>/<id>`.
    Cgroupfs,
    /// systemd slices and scopes: `kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`.
    Systemd,
}

/// A cgroup path that belongs to a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeCgroup<'a> {
    /// `metadata.uid` in dashed form (static pods: the kubelet's 32-hex config hash).
    pub pod_uid: String,
    pub qos: Qos,
    pub driver: Driver,
    /// Bare hex container ID; `None` for a process in the pod cgroup itself or a runtime helper
    /// (CRI-O's `crio-conmon-<id>`).
    pub container_id: Option<&'a str>,
    /// The path up to and including the pod segment, as written in the file (it may start with
    /// `/..` components when the reader sits in another cgroup namespace).
    pub pod_cgroup: &'a str,
}

impl KubeCgroup<'_> {
    /// The pod cgroup's path from the root of its hierarchy, where `pids.current` lives.
    ///
    /// A path read from inside a private cgroup namespace (the agent's own container on cgroup
    /// v2) starts with `/..`. systemd slice names spell out their ancestry
    /// (`a-b-c.slice` sits in `a.slice/a-b.slice`), so the full path is rebuilt from the pod
    /// slice; for cgroupfs the standard `/kubepods[/<qos>]` parents are assumed.
    pub fn pod_cgroup_from_root(&self) -> String {
        if !self.pod_cgroup.split('/').any(|s| s == "..") {
            return self.pod_cgroup.to_string();
        }
        let pod_segment = self.pod_cgroup.rsplit('/').next().unwrap_or_default();
        match self.driver {
            Driver::Systemd => systemd_slice_path(pod_segment),
            Driver::Cgroupfs => match self.qos {
                Qos::Guaranteed => format!("/kubepods/{pod_segment}"),
                Qos::Burstable => format!("/kubepods/burstable/{pod_segment}"),
                Qos::BestEffort => format!("/kubepods/besteffort/{pod_segment}"),
            },
        }
    }
}

/// `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice` (systemd.slice(5) naming).
pub fn systemd_slice_path(slice: &str) -> String {
    let stem = slice.strip_suffix(".slice").unwrap_or(slice);
    let mut out = String::with_capacity(stem.len() * 3);
    for (i, _) in stem.match_indices('-') {
        out.push('/');
        out.push_str(&stem[..i]);
        out.push_str(".slice");
    }
    out.push('/');
    out.push_str(stem);
    out.push_str(".slice");
    out
}

/// A pod UID as it appears in a cgroup segment: 36 chars dashed (cgroupfs) or underscored
/// (systemd), or the 32-hex config hash of a static pod. Returns the dashed form.
fn pod_uid(raw: &str) -> Option<String> {
    let ok = match raw.len() {
        36 => raw.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-' || c == '_',
            _ => c.is_ascii_hexdigit(),
        }),
        32 => raw.chars().all(|c| c.is_ascii_hexdigit()),
        _ => false,
    };
    ok.then(|| raw.replace('_', "-").to_ascii_lowercase())
}

/// Pod segment of a cgroupfs path (`pod<uid>`).
fn cgroupfs_pod(segment: &str) -> Option<String> {
    pod_uid(segment.strip_prefix("pod")?)
}

/// Pod segment of a systemd path (`<prefix>kubepods[-qos]-pod<uid>.slice`), with its QoS.
fn systemd_pod(segment: &str) -> Option<(String, Qos)> {
    let stem = segment.strip_suffix(".slice")?;
    let at = stem.rfind("-pod")?;
    let uid = pod_uid(&stem[at + 4..])?;
    let parent = &stem[..at];
    let qos = if parent.ends_with("kubepods-burstable") {
        Qos::Burstable
    } else if parent.ends_with("kubepods-besteffort") {
        Qos::BestEffort
    } else if parent.ends_with("kubepods") {
        Qos::Guaranteed
    } else {
        return None;
    };
    Some((uid, qos))
}

/// A container ID in a segment after the pod's: the runtime prefixes and `.scope` are stripped.
/// IDs are hex (64 chars from containerd, CRI-O and docker; shorter ones are accepted).
fn container_id(segment: &str) -> Option<&str> {
    let stem = segment.strip_suffix(".scope").unwrap_or(segment);
    // conmon is CRI-O's per-container monitor: it sits in the pod but is not the container.
    if stem.starts_with("crio-conmon-") {
        return None;
    }
    let id = ["cri-containerd-", "crio-", "docker-", "containerd-"]
        .iter()
        .find_map(|p| stem.strip_prefix(p))
        .unwrap_or(stem);
    (id.len() >= 12 && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Recognise a pod (and container) in a cgroup path of any supported shape. `None` for every
/// path outside `kubepods` (host processes, the root `/` a zombie's v1 cgroup reads as).
pub fn parse_kube_path(path: &str) -> Option<KubeCgroup<'_>> {
    let mut offset = 0;
    let mut seen_kubepods = false;
    let mut qos = Qos::Guaranteed;
    let mut segments = path.split('/').peekable();
    while let Some(segment) = segments.next() {
        let end = offset + segment.len();
        let found = if let Some((uid, q)) = systemd_pod(segment) {
            Some((uid, q, Driver::Systemd))
        } else if seen_kubepods {
            cgroupfs_pod(segment).map(|uid| (uid, qos, Driver::Cgroupfs))
        } else {
            None
        };
        if let Some((pod_uid, qos, driver)) = found {
            return Some(KubeCgroup {
                pod_uid,
                qos,
                driver,
                container_id: segments.peek().and_then(|s| container_id(s)),
                pod_cgroup: &path[..end],
            });
        }
        match segment {
            "kubepods" => seen_kubepods = true,
            "burstable" if seen_kubepods => qos = Qos::Burstable,
            "besteffort" if seen_kubepods => qos = Qos::BestEffort,
            _ => {}
        }
        offset = end + 1;
    }
    None
}

/// Which cgroup hierarchy holds a pod's `pids` controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hierarchy {
    /// The v1 `pids` hierarchy (`<cgroup root>/pids`).
    V1Pids,
    /// The unified hierarchy (`<cgroup root>` on pure v2, `<cgroup root>/unified` on hybrid).
    Unified,
}

/// What `/proc/<pid>/cgroup` says about a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCgroup<'a> {
    /// The pod and container: from the `pids` line, else the unified line, else any other line.
    pub kube: Option<KubeCgroup<'a>>,
    /// Where the pod's `pids.current` lives: the v1 `pids` line if there is one, else the
    /// unified line (pure v2). `None` when that line is not inside a pod.
    pub pids: Option<(Hierarchy, KubeCgroup<'a>)>,
}

/// Parse a whole `/proc/<pid>/cgroup` file. Any malformed line makes the file malformed (the
/// kernel never writes one, so the content is not a cgroup file). An empty file is valid and
/// attributes nothing.
pub fn parse_cgroup_file(content: &str) -> Result<ProcCgroup<'_>> {
    let mut pids_line = None;
    let mut unified = None;
    let mut other = None;
    let mut has_v1_pids = false;
    for line in content.lines().filter(|l| !l.is_empty()) {
        let line = parse_cgroup_line(line)?;
        let kube = parse_kube_path(line.path);
        if line.is_v1_pids() {
            has_v1_pids = true;
            pids_line = kube;
        } else if line.is_unified() {
            unified = kube;
        } else if other.is_none() {
            other = kube;
        }
    }
    let pids = if has_v1_pids {
        pids_line.clone().map(|k| (Hierarchy::V1Pids, k))
    } else {
        unified.clone().map(|k| (Hierarchy::Unified, k))
    };
    Ok(ProcCgroup {
        kube: pids_line.or(unified).or(other),
        pids,
    })
}

/// `pids.current`.
pub fn parse_pids_current(content: &str) -> Result<u64> {
    let v = content.trim();
    v.parse().map_err(|_| Error::BadPids(excerpt(v)))
}

/// `pids.max`: `max` (no limit) is `None`.
pub fn parse_pids_max(content: &str) -> Result<Option<u64>> {
    match content.trim() {
        "max" => Ok(None),
        v => v.parse().map(Some).map_err(|_| Error::BadPids(excerpt(v))),
    }
}

/// `/proc/sys/kernel/pid_max`.
pub fn parse_pid_max(content: &str) -> Result<u64> {
    parse_pids_current(content)
}

/// `SIGTERM` (the signal the kubelet's stop sends first; bit `15 - 1` of a signal mask).
pub const SIGTERM: u32 = 15;

/// The fields of `/proc/<pid>/status` the agent reads for a container's top process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// `NSpid:`: the pid in each PID namespace the process is in, outermost first; the agent
    /// keeps the innermost and how many there are. `None` on kernels before 4.1 (no `NSpid:`).
    pub ns_pid: Option<(i32, usize)>,
    /// `SigBlk:`: signals the (main thread of the) process blocks.
    pub sig_blk: u64,
    /// `SigIgn:`: signals set to `SIG_IGN`.
    pub sig_ign: u64,
    /// `SigCgt:`: signals with a handler.
    pub sig_cgt: u64,
}

fn signal_bit(sig: u32) -> u64 {
    match sig {
        1..=64 => 1 << (sig - 1),
        _ => 0,
    }
}

impl Status {
    /// PID 1 of its (innermost) PID namespace: the process the kernel protects from signals it
    /// has no handler for, and the one orphans are re-parented to.
    pub fn is_namespace_init(&self) -> bool {
        matches!(self.ns_pid, Some((1, depth)) if depth >= 2)
    }

    /// In the PID namespace of the proc root it was read from (a `hostPID` pod's process, seen
    /// by the agent in the host's namespace): `NSpid:` has one field.
    pub fn in_reader_namespace(&self) -> bool {
        matches!(self.ns_pid, Some((_, 1)))
    }

    /// A handler is installed for `sig`.
    pub fn catches(&self, sig: u32) -> bool {
        self.sig_cgt & signal_bit(sig) != 0
    }

    /// `sig` is set to `SIG_IGN`.
    pub fn ignores(&self, sig: u32) -> bool {
        self.sig_ign & signal_bit(sig) != 0
    }

    /// `sig` is blocked: it stays pending for a signalfd (how catatonit waits for signals), and
    /// the kernel queues it even for a namespace init. A process sleeping in `sigtimedwait` or
    /// `sigwait` (reaper, tini, dumb-init) shows the waited signals *unblocked* for as long as it
    /// waits: the kernel keeps the real mask aside, where `status` does not show it.
    pub fn blocks(&self, sig: u32) -> bool {
        self.sig_blk & signal_bit(sig) != 0
    }

    /// The process takes `SIGTERM`: it has a handler, or blocks it to wait for it (and is not
    /// set to ignore it). A namespace init that does neither drops the kubelet's `SIGTERM` (the
    /// kernel discards signals with the default action sent to a namespace init, and `SIG_IGN`
    /// discards them anywhere), so its container is only stopped by `SIGKILL` at the end of the
    /// grace period. A process that blocks `SIGTERM` and never waits for it cannot be told apart;
    /// one that waits for it in `sigtimedwait` reads `false` while it waits.
    pub fn handles_sigterm(&self) -> bool {
        self.catches(SIGTERM) || (self.blocks(SIGTERM) && !self.ignores(SIGTERM))
    }
}

fn status_mask(line: &'static str, value: Option<&str>) -> Result<u64> {
    let value = value.ok_or(Error::MissingStatusLine(line))?.trim();
    let bad = || Error::BadStatusLine {
        line,
        expected: "a hex signal mask",
        value: excerpt(value),
    };
    if value.is_empty() || value.len() > 16 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u64::from_str_radix(value, 16).map_err(|_| bad())
}

/// Parse `/proc/<pid>/status`. A key counts only at the start of a line, and the last line with
/// a key wins: `Name:` comes first and the kernel escapes newlines in it, so a hostile comm can
/// neither start a line nor override the lines that follow it.
pub fn parse_status(content: &str) -> Result<Status> {
    let (mut ns_pid, mut sig_blk, mut sig_ign, mut sig_cgt) = (None, None, None, None);
    for line in content.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "NSpid" => ns_pid = Some(value),
            "SigBlk" => sig_blk = Some(value),
            "SigIgn" => sig_ign = Some(value),
            "SigCgt" => sig_cgt = Some(value),
            _ => {}
        }
    }
    let ns_pid = match ns_pid {
        None => None,
        Some(value) => {
            let bad = || Error::BadStatusLine {
                line: "NSpid",
                expected: "one or more pids",
                value: excerpt(value),
            };
            let mut depth = 0;
            let mut last = None;
            for field in value.split_ascii_whitespace() {
                let pid: i32 = field.parse().map_err(|_| bad())?;
                if pid < 1 {
                    return Err(bad());
                }
                depth += 1;
                last = Some(pid);
            }
            Some((last.ok_or_else(bad)?, depth))
        }
    };
    Ok(Status {
        ns_pid,
        sig_blk: status_mask("SigBlk", sig_blk)?,
        sig_ign: status_mask("SigIgn", sig_ign)?,
        sig_cgt: status_mask("SigCgt", sig_cgt)?,
    })
}

impl fmt::Display for Qos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3c5a2e-7b1d-4c9e-8a6f-1d2e3f4a5b6c";
    const UID_: &str = "0f3c5a2e_7b1d_4c9e_8a6f_1d2e3f4a5b6c";
    const ID: &str = "9b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff001";

    fn stat_line(pid: i32, comm: &str, state: char, ppid: i32, flags: u32) -> String {
        format!(
            "{pid} ({comm}) {state} {ppid} {pid} {pid} 0 -1 {flags} 96 0 0 0 0 0 0 0 20 0 1 0 100682 0 0 \
             18446744073709551615 0 0 0 0 0 0 0 6 0 1 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0"
        )
    }

    #[test]
    fn stat_of_a_real_zombie() {
        // Captured on this machine.
        let line = "17135 (sleep) Z 17131 17087 15198 0 -1 4227084 96 0 0 0 0 0 0 0 20 0 1 0 100682 0 0 18446744073709551615 0 0 0 0 0 0 0 6 0 1 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            Stat {
                pid: 17135,
                comm: "sleep",
                state: 'Z',
                ppid: 17131,
                flags: 4227084,
                starttime: 100682
            }
        );
        assert!(s.is_zombie());
        assert!(!s.is_kernel_thread());
    }

    #[test]
    fn hostile_comms_split_on_the_last_paren() {
        for comm in [
            "a) (b",
            "a b c",
            ") Z 1 2 3",
            "((((",
            "))))",
            "x\ny",
            "",
            "we) S 1 (",
            "ünï ☃",
        ] {
            let line = stat_line(4242, comm, 'Z', 7, 0);
            let s = parse_stat(&line).unwrap_or_else(|e| panic!("{comm:?}: {e}"));
            assert_eq!(s.comm, comm);
            assert_eq!(
                (s.pid, s.state, s.ppid, s.starttime),
                (4242, 'Z', 7, 100682)
            );
        }
    }

    #[test]
    fn kernel_threads() {
        let kthread = |pid, comm, ppid, flags| {
            parse_stat(&stat_line(pid, comm, 'S', ppid, flags))
                .unwrap()
                .is_kernel_thread()
        };
        assert!(kthread(2, "kthreadd", 0, 0x208040));
        assert!(kthread(57, "kworker/0:1-events", 2, 0x4208060));
        // A kernel thread re-parented elsewhere is still recognised by PF_KTHREAD.
        assert!(kthread(99, "kthread", 1, PF_KTHREAD));
        assert!(!kthread(1, "systemd", 0, 0x400100));
        // Pid 2 of a container's PID namespace and its children are ordinary processes.
        assert!(!kthread(2, "sh", 1, 0x400100));
        assert!(!kthread(7, "sleep", 2, 0x400000));
        let idle = stat_line(58, "kworker/u4:2", 'I', 2, 0x4208060);
        assert_eq!(parse_stat(&idle).unwrap().state, 'I');
    }

    #[test]
    fn garbage_stat_is_an_error_not_a_panic() {
        for garbage in [
            "",
            "\n",
            "hello",
            "12 (x",
            "12 x)",
            ") (",
            "abc (x) S 1 2 3 4 5 6",
            "12 (x) S",
            "12 (x) S 1",
            "12 (x) SS 1 1 1 0 -1 0",
            "12 (x) 5 1 1 1 0 -1 0",
            "12 (x) S one 1 1 0 -1 0",
            "12 (x) S 1 1 1 0 -1 notflags 0 0 0 0 0 0 0 0 0 0 0 0 7",
            "12 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 0 0 0 0 -7",
            "99999999999999999999 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 0 0 0 0 7",
        ] {
            assert!(parse_stat(garbage).is_err(), "{garbage:?} parsed");
        }
    }

    #[test]
    fn cgroup_lines() {
        assert_eq!(
            parse_cgroup_line("12:pids:/kubepods/x").unwrap(),
            CgroupLine {
                hierarchy: 12,
                controllers: "pids",
                path: "/kubepods/x"
            }
        );
        let l = parse_cgroup_line("0::/a:b").unwrap();
        assert!(l.is_unified());
        assert_eq!(l.path, "/a:b");
        assert!(
            parse_cgroup_line("4:cpu,cpuacct,pids:/")
                .unwrap()
                .is_v1_pids()
        );
        assert!(!parse_cgroup_line("1:name=systemd:/").unwrap().is_v1_pids());
        for bad in ["", "x:pids:/", "12:pids", "12:pids:relative", "-1::/"] {
            assert!(parse_cgroup_line(bad).is_err(), "{bad:?}");
        }
    }

    fn kube(path: &str) -> KubeCgroup<'_> {
        parse_kube_path(path).unwrap_or_else(|| panic!("{path} not recognised"))
    }

    #[test]
    fn cgroupfs_paths_v1_and_v2() {
        // containerd / docker with the cgroupfs driver (v1 lines and the same path on v2).
        for (path, qos) in [
            (format!("/kubepods/burstable/pod{UID}/{ID}"), Qos::Burstable),
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                Qos::BestEffort,
            ),
            (format!("/kubepods/pod{UID}/{ID}"), Qos::Guaranteed),
            // kind / nested kubelet: a prefix before kubepods.
            (
                format!("/kubelet/kubepods/burstable/pod{UID}/{ID}"),
                Qos::Burstable,
            ),
        ] {
            let k = kube(&path);
            assert_eq!(k.pod_uid, UID);
            assert_eq!(k.qos, qos, "{path}");
            assert_eq!(k.driver, Driver::Cgroupfs);
            assert_eq!(k.container_id, Some(ID));
            assert_eq!(k.pod_cgroup, &path[..path.len() - ID.len() - 1]);
            assert_eq!(k.pod_cgroup_from_root(), k.pod_cgroup);
        }
        // CRI-O with cgroupfs.
        let p = format!("/kubepods/burstable/pod{UID}/crio-{ID}");
        assert_eq!(kube(&p).container_id, Some(ID));
        let p = format!("/kubepods/burstable/pod{UID}/crio-conmon-{ID}");
        assert_eq!(kube(&p).container_id, None);
        // A process in the pod cgroup itself.
        let p = format!("/kubepods/besteffort/pod{UID}");
        let k = kube(&p);
        assert_eq!((k.container_id, k.pod_cgroup), (None, p.as_str()));
    }

    #[test]
    fn systemd_paths_every_runtime() {
        for (prefix, runtime) in [
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("docker-", "docker"),
        ] {
            for (slices, qos) in [
                (
                    format!(
                        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
                    ),
                    Qos::Burstable,
                ),
                (
                    format!(
                        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
                    ),
                    Qos::BestEffort,
                ),
                (
                    format!("/kubepods.slice/kubepods-pod{UID_}.slice"),
                    Qos::Guaranteed,
                ),
            ] {
                let path = format!("{slices}/{prefix}{ID}.scope");
                let k = kube(&path);
                assert_eq!(k.pod_uid, UID, "{runtime} {path}");
                assert_eq!(k.qos, qos);
                assert_eq!(k.driver, Driver::Systemd);
                assert_eq!(k.container_id, Some(ID), "{runtime}");
                assert_eq!(k.pod_cgroup, slices);
                assert_eq!(k.pod_cgroup_from_root(), slices);
            }
        }
        // crun/podman-style sub-cgroup inside the scope: still that container.
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope/container"
        );
        assert_eq!(kube(&p).container_id, Some(ID));
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
        );
        assert_eq!(kube(&p).container_id, None);
    }

    #[test]
    fn private_cgroup_namespace_paths_are_rebuilt() {
        // Read from inside another pod's cgroup namespace on v2.
        let p = format!(
            "/../../../kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        let k = kube(&p);
        assert_eq!(k.pod_uid, UID);
        assert_eq!(
            k.pod_cgroup_from_root(),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
            )
        );
        // kind: the node's own slice prefix is part of every name.
        let p = format!("/../kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope");
        assert_eq!(
            kube(&p).pod_cgroup_from_root(),
            format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice"
            )
        );
        let p = format!("/../../kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(
            kube(&p).pod_cgroup_from_root(),
            format!("/kubepods/besteffort/pod{UID}")
        );
    }

    #[test]
    fn static_pod_hash_uids() {
        let hash = "6b4ee2a7e4e0a3e0d6a4c2c7c5d0e8b1";
        let p = format!("/kubepods/burstable/pod{hash}/{ID}");
        assert_eq!(kube(&p).pod_uid, hash);
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(kube(&p).pod_uid, hash);
    }

    #[test]
    fn not_a_pod() {
        for p in [
            "/",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/containerd.service",
            "/kubepods",
            "/kubepods/burstable",
            "/kubepods.slice/kubepods-burstable.slice",
            // `pod<uid>` outside kubepods is somebody else's directory.
            &format!("/docker/pod{UID}/{ID}"),
            "/kubepods/burstable/podnot-a-uid/x",
            &format!("/kubepods/burstable/pod{}/x", &UID[..35]),
            "/machine.slice/libpod-0123456789ab.scope",
            &format!("/system.slice/foo-pod{UID_}.slice"),
        ] {
            assert_eq!(parse_kube_path(p), None, "{p}");
        }
    }

    #[test]
    fn short_or_odd_container_segments() {
        let p = format!("/kubepods/pod{UID}/not-hex-at-all");
        assert_eq!(kube(&p).container_id, None);
        let p = format!("/kubepods/pod{UID}/abc");
        assert_eq!(kube(&p).container_id, None);
    }

    #[test]
    fn whole_files_v1_hybrid_and_v2() {
        // cgroup v1 (hybrid), cgroupfs, containerd: every controller agrees.
        let v1 = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{ID}\n\
             11:memory:/kubepods/burstable/pod{UID}/{ID}\n\
             3:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n\
             0::/\n"
        );
        let c = parse_cgroup_file(&v1).unwrap();
        let k = c.kube.unwrap();
        assert_eq!((k.pod_uid.as_str(), k.container_id), (UID, Some(ID)));
        let (h, p) = c.pids.unwrap();
        assert_eq!(h, Hierarchy::V1Pids);
        assert_eq!(p.pod_cgroup, format!("/kubepods/burstable/pod{UID}"));

        // cgroup v2, systemd, CRI-O: one line.
        let v2 = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope\n"
        );
        let c = parse_cgroup_file(&v2).unwrap();
        assert_eq!(c.kube.as_ref().unwrap().container_id, Some(ID));
        assert_eq!(c.pids.unwrap().0, Hierarchy::Unified);

        // A zombie on v1: every line reads `/`. Nothing to attribute, not an error.
        let zombie = "12:pids:/\n11:memory:/\n1:name=systemd:/\n0::/\n";
        assert_eq!(parse_cgroup_file(zombie).unwrap(), ProcCgroup::default());
        assert_eq!(parse_cgroup_file("").unwrap(), ProcCgroup::default());

        // Hybrid where only the unified line names the pod: identity from it, but the pids
        // controller is on v1 (at `/`), so no pids location.
        let hybrid =
            format!("8:pids:/\n0::/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope\n");
        let c = parse_cgroup_file(&hybrid).unwrap();
        assert_eq!(c.kube.unwrap().qos, Qos::Guaranteed);
        assert_eq!(c.pids, None);

        // Only name=systemd names the pod (v1 without pids in the pod): identity still found.
        let named = format!("1:name=systemd:/kubepods/pod{UID}/{ID}\n");
        assert_eq!(
            parse_cgroup_file(&named)
                .unwrap()
                .kube
                .unwrap()
                .container_id,
            Some(ID)
        );

        assert!(parse_cgroup_file("12:pids:/\ngarbage\n").is_err());
    }

    #[test]
    fn pids_files() {
        assert_eq!(parse_pids_current("1806\n"), Ok(1806));
        assert_eq!(parse_pids_max("max\n"), Ok(None));
        assert_eq!(parse_pids_max("4096\n"), Ok(Some(4096)));
        assert_eq!(parse_pid_max("4194304\n"), Ok(4194304));
        for bad in ["", "-1", "many", "12 13"] {
            assert!(parse_pids_current(bad).is_err());
            assert!(parse_pids_max(bad).is_err());
        }
    }

    #[test]
    fn slice_paths() {
        assert_eq!(systemd_slice_path("a.slice"), "/a.slice");
        assert_eq!(
            systemd_slice_path("a-b-c.slice"),
            "/a.slice/a-b.slice/a-b-c.slice"
        );
    }

    /// A busybox `sleep` as PID 1 of a container (host view): no handlers at all.
    const SLEEP_PID1: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t48213\n\
        Ngid:\t0\nPid:\t48213\nPPid:\t48190\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n\
        FDSize:\t64\nGroups:\t10 \nNStgid:\t48213\t1\nNSpid:\t48213\t1\nNSpgid:\t48213\t1\n\
        NSsid:\t48213\t1\nVmPeak:\t    1080 kB\nThreads:\t1\nSigQ:\t0/63460\n\
        SigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\n\
        SigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\nCapInh:\t0000000000000000\n\
        Seccomp:\t2\nvoluntary_ctxt_switches:\t3\nnonvoluntary_ctxt_switches:\t1\n";

    #[test]
    fn status_of_an_unprotected_pid1_and_of_inits() {
        let s = parse_status(SLEEP_PID1).unwrap();
        assert_eq!(s.ns_pid, Some((1, 2)));
        assert!(s.is_namespace_init() && !s.in_reader_namespace());
        assert!(!s.handles_sigterm() && !s.ignores(SIGTERM));
        // reaper, tini, catatonit: signals blocked and waited for with sigtimedwait/signalfd,
        // no handler at all.
        let tini = SLEEP_PID1.replace("SigBlk:\t0000000000000000", "SigBlk:\tfffffffe7ffbfeff");
        let s = parse_status(&tini).unwrap();
        assert!(s.handles_sigterm() && s.blocks(1) && !s.blocks(9) && s.blocks(64));
        assert!(!s.catches(SIGTERM));
        // Blocked but also ignored: dropped when unblocked.
        let both = tini.replace("SigIgn:\t0000000000000000", "SigIgn:\t0000000000004000");
        assert!(!parse_status(&both).unwrap().handles_sigterm());
        // A handler (Go, the JVM, nginx, the pause process): bit 14 of SigCgt.
        let caught = SLEEP_PID1.replace("SigCgt:\t0000000000000000", "SigCgt:\tfffffffe7ffbfeff");
        let s = parse_status(&caught).unwrap();
        assert!(s.handles_sigterm() && s.catches(1) && !s.catches(9) && s.catches(64));
        // SIGTERM (bit 14) ignored: still no handler, the grace period is waited out.
        let ign = SLEEP_PID1.replace("SigIgn:\t0000000000000000", "SigIgn:\t0000000000004000");
        let s = parse_status(&ign).unwrap();
        assert!(s.ignores(SIGTERM) && !s.handles_sigterm());
        // Only SIGTERM caught (a Go or JVM program catches it among others).
        let term = SLEEP_PID1.replace("SigCgt:\t0000000000000000", "SigCgt:\t0000000000004000");
        assert!(parse_status(&term).unwrap().handles_sigterm());
        // shareProcessNamespace: the app's process is pid 7 of the pod's namespace.
        let shared = SLEEP_PID1.replace("NSpid:\t48213\t1", "NSpid:\t48213\t7");
        let s = parse_status(&shared).unwrap();
        assert!(!s.is_namespace_init() && !s.in_reader_namespace());
        // hostPID: one namespace, the agent's.
        let host = SLEEP_PID1.replace("NSpid:\t48213\t1", "NSpid:\t48213");
        let s = parse_status(&host).unwrap();
        assert!(!s.is_namespace_init() && s.in_reader_namespace());
        // The host's own init is PID 1 of the reader's namespace, not a container's.
        let systemd = SLEEP_PID1.replace("NSpid:\t48213\t1", "NSpid:\t1");
        assert!(!parse_status(&systemd).unwrap().is_namespace_init());
        // Nested (a kind node): three levels.
        let nested = SLEEP_PID1.replace("NSpid:\t48213\t1", "NSpid:\t48213\t3012\t1");
        assert_eq!(parse_status(&nested).unwrap().ns_pid, Some((1, 3)));
        // Kernels before 4.1 have no NSpid line.
        let old = SLEEP_PID1.replace("NSpid:\t48213\t1\n", "");
        let s = parse_status(&old).unwrap();
        assert_eq!(s.ns_pid, None);
        assert!(!s.is_namespace_init());
        // The real thing.
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(parse_status(&own).is_ok());
    }

    #[test]
    fn status_keys_count_only_at_line_start_and_the_last_wins() {
        // A comm cannot hold a raw newline in `Name:` (the kernel escapes it), but a status
        // line that looks like one must still not be taken for a mask.
        let hostile = SLEEP_PID1.replace(
            "Name:\tsleep",
            "Name:\tx SigCgt:\tffffffffffffffff NSpid:\t1",
        );
        let s = parse_status(&hostile).unwrap();
        assert!(!s.handles_sigterm());
        assert_eq!(s.ns_pid, Some((1, 2)));
        let spoof = format!("SigCgt:\tffffffffffffffff\n{SLEEP_PID1}");
        assert!(!parse_status(&spoof).unwrap().handles_sigterm());
    }

    #[test]
    fn odd_status_files_are_errors_not_panics() {
        for (from, to) in [
            ("SigCgt:\t0000000000000000\n", ""),
            ("SigIgn:\t0000000000000000\n", ""),
            ("SigBlk:\t0000000000000000\n", ""),
            ("SigCgt:\t0000000000000000", "SigCgt:\t"),
            ("SigCgt:\t0000000000000000", "SigCgt:\tnothex"),
            ("SigCgt:\t0000000000000000", "SigCgt:\t-000000000000001"),
            ("SigCgt:\t0000000000000000", "SigCgt:\t+000000000000001"),
            ("SigCgt:\t0000000000000000", "SigCgt:\t10000000000000000"),
            ("SigCgt:\t0000000000000000", "SigCgt:\t00 00"),
            ("NSpid:\t48213\t1", "NSpid:\t"),
            ("NSpid:\t48213\t1", "NSpid:\t48213\tone"),
            ("NSpid:\t48213\t1", "NSpid:\t48213\t0"),
            ("NSpid:\t48213\t1", "NSpid:\t48213\t-1"),
            ("NSpid:\t48213\t1", "NSpid:\t99999999999"),
        ] {
            let text = SLEEP_PID1.replace(from, to);
            assert_ne!(text, SLEEP_PID1, "{from:?}");
            assert!(parse_status(&text).is_err(), "{to:?} parsed");
        }
        for garbage in [
            "",
            "\n",
            ":",
            "SigCgt",
            "SigBlk:\nSigCgt:\nSigIgn:\n",
            "\u{0}\u{0}",
        ] {
            assert!(parse_status(garbage).is_err(), "{garbage:?} parsed");
        }
        // Signal numbers outside 1..=64 are never set.
        let all = Status {
            ns_pid: None,
            sig_blk: u64::MAX,
            sig_ign: u64::MAX,
            sig_cgt: u64::MAX,
        };
        assert!(!all.catches(0) && !all.catches(65) && !all.ignores(u32::MAX));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any comm (the kernel allows every byte but NUL) survives a round trip.
            #[test]
            fn stat_round_trips_any_comm(comm in "[^\\x00]{0,16}", pid in 1i32..4_194_304, ppid in 0i32..4_194_304, start in any::<u64>()) {
                let line = format!(
                    "{pid} ({comm}) Z {ppid} 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0"
                );
                let s = parse_stat(&line).unwrap();
                prop_assert_eq!((s.pid, s.comm, s.state, s.ppid, s.starttime), (pid, comm.as_str(), 'Z', ppid, start));
            }

            /// Arbitrary text never panics any parser.
            #[test]
            fn garbage_never_panics(text in any::<String>()) {
                let _ = parse_stat(&text);
                let _ = parse_cgroup_file(&text);
                if let Some(k) = parse_kube_path(&text) {
                    let _ = k.pod_cgroup_from_root();
                }
                let _ = parse_pids_max(&text);
                let _ = parse_status(&text);
            }

            /// Every generated kubelet path is recognised, whatever the driver, QoS and runtime.
            #[test]
            fn generated_kube_paths(uid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                                    id in "[0-9a-f]{64}", qos in 0usize..3, runtime in 0usize..3,
                                    systemd in any::<bool>(), prefix in "(/[a-z]{1,8}){0,2}") {
                let path = if systemd {
                    let q = ["", "-burstable", "-besteffort"][qos];
                    let parent = if q.is_empty() { String::new() } else { format!("/kubepods{q}.slice") };
                    let scope = ["cri-containerd-", "crio-", "docker-"][runtime];
                    format!("{prefix}/kubepods.slice{parent}/kubepods{q}-pod{}.slice/{scope}{id}.scope", uid.replace('-', "_"))
                } else {
                    let q = ["", "/burstable", "/besteffort"][qos];
                    let c = ["", "crio-", ""][runtime];
                    format!("{prefix}/kubepods{q}/pod{uid}/{c}{id}")
                };
                let k = parse_kube_path(&path).unwrap();
                prop_assert_eq!(k.pod_uid, uid);
                prop_assert_eq!(k.container_id, Some(id.as_str()));
                prop_assert_eq!(k.qos, [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort][qos]);
            }
        }
    }
}
