//! Process churn for load and fault tests: tens of thousands of short-lived processes that exit
//! on their own schedule and are replaced at once, each a zombie until its parent's next reap.
//!
//! A [`Spawner`] is a `fork` of the test process that makes its children with
//! `clone(CLONE_VM | SIGCHLD)`: a child shares the spawner's memory (no page tables to copy), runs
//! on a stack slot of its own, sleeps its lifetime and exits. Each costs the kernel a task and
//! the spawner one touched stack page, no exec: 30,000 start in under a second on 2 cores
//! (0.4–0.8 s measured), where `/bin/sleep` would pay a fork of the test process and an exec
//! with its dynamic loader for each.
//!
//! The test process is multi-threaded, so after `fork` the spawner makes system calls only (no
//! allocation, no locks, no panics) on memory it maps itself; it shares its counters and the stop
//! flag with the test through one `MAP_SHARED` page. Stopping (on drop, also on panic) makes the
//! spawner kill and reap every child itself before it exits; if it does not within
//! [`STOP_DEADLINE`], its process group gets SIGKILL. If the test process dies, the spawner gets
//! SIGKILL (`PR_SET_PDEATHSIG`), and so do its children.

use std::ffi::CString;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The name (comm) of spawners and their children, as `ps` shows it.
pub const COMM: &std::ffi::CStr = c"reaper-churn";
/// How long a stopped spawner may take to kill and reap its children.
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// Stack slot of one child: it uses well under a page (the clone trampoline, one nanosleep).
const STACK_SLOT: usize = 16 * 1024;
/// `PID_MAX_LIMIT` on 64-bit Linux: the spawner's pid → stack slot table covers every pid.
const PID_LIMIT: usize = 1 << 22;

/// What one spawner keeps up.
#[derive(Debug, Clone)]
pub struct ChurnSpec {
    /// Children kept alive (replaced at each reap).
    pub processes: usize,
    /// A child lives a uniformly random time in `[min, max]`.
    pub lifetime: (Duration, Duration),
    /// How often the spawner reaps and replaces: an exited child is a zombie until then.
    pub reap_every: Duration,
    /// A `cgroup.procs` file the spawner moves itself into before its first child (children
    /// inherit the cgroup), e.g. a kubepods-shaped cgroup from [`crate::agent::CgroupTree`].
    pub cgroup_procs: Option<std::path::PathBuf>,
    /// Seed of the lifetimes.
    pub seed: u64,
}

/// Counters of one spawner (or the sum over several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChurnStats {
    /// Children started.
    pub spawned: u64,
    /// Children that exited and were reaped.
    pub reaped: u64,
    /// `clone` failures (EAGAIN when the node runs out of pids).
    pub clone_failures: u64,
}

impl ChurnStats {
    /// Children alive or zombies right now.
    pub fn alive(&self) -> u64 {
        self.spawned - self.reaped
    }
}

impl std::ops::Add for ChurnStats {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            spawned: self.spawned + o.spawned,
            reaped: self.reaped + o.reaped,
            clone_failures: self.clone_failures + o.clone_failures,
        }
    }
}

/// The page a spawner shares with the test.
#[repr(C)]
struct Shared {
    stop: AtomicU32,
    /// Set once the first `processes` children are started.
    filled: AtomicU32,
    /// errno of a setup failure in the spawner (then it exits).
    setup_errno: AtomicU32,
    spawned: AtomicU64,
    reaped: AtomicU64,
    clone_failures: AtomicU64,
}

struct SharedPage(NonNull<Shared>);

// SAFETY: the page is only accessed through atomics, and unmapped only in `Drop` of its owner.
#[allow(unsafe_code)]
unsafe impl Send for SharedPage {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for SharedPage {}

impl SharedPage {
    #[allow(unsafe_code)]
    fn new() -> io::Result<Self> {
        // SAFETY: a fresh anonymous shared mapping; zeroed memory is a valid `Shared` (atomics).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(NonNull::new(p.cast()).expect("mmap returned null")))
    }

    fn get(&self) -> &Shared {
        // SAFETY: mapped for the lifetime of `self`, initialised (zeroed atomics).
        #[allow(unsafe_code)]
        unsafe {
            self.0.as_ref()
        }
    }
}

impl Drop for SharedPage {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: mapped by `new` with this size; no reference outlives `self`.
        unsafe {
            libc::munmap(self.0.as_ptr().cast(), page_size());
        }
    }
}

#[allow(unsafe_code)]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// One forked spawner and its children; stopped (every child killed and reaped) on drop.
pub struct Spawner {
    pid: libc::pid_t,
    shared: SharedPage,
    exited: bool,
}

/// Everything the spawner needs, prepared before `fork`.
struct Plan {
    processes: usize,
    min_ms: u64,
    span_ms: u64,
    reap_every: libc::timespec,
    cgroup_procs: Option<CString>,
    parent: libc::pid_t,
    seed: u64,
}

impl Spawner {
    /// Fork a spawner that starts `spec.processes` children and keeps that many alive. Returns
    /// at once; see [`Spawner::filled`].
    #[allow(unsafe_code)]
    pub fn start(spec: &ChurnSpec) -> io::Result<Self> {
        let (min, max) = spec.lifetime;
        assert!(min <= max && spec.processes > 0, "bad churn spec {spec:?}");
        let plan = Plan {
            processes: spec.processes,
            min_ms: min.as_millis() as u64,
            span_ms: (max - min).as_millis() as u64 + 1,
            reap_every: timespec(spec.reap_every),
            cgroup_procs: spec
                .cgroup_procs
                .as_deref()
                .map(|p| CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL in path")),
            // SAFETY: getpid has no preconditions.
            parent: unsafe { libc::getpid() },
            seed: spec.seed | 1,
        };
        let shared = SharedPage::new()?;
        // SAFETY: the child runs `spawner_main` only, which never returns and makes system calls
        // only (see the module docs): what a child of a multi-threaded process may do.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(io::Error::last_os_error()),
            0 => spawner_main(&plan, shared.get()),
            pid => {
                // Also here, so that the group exists before `start` returns (no race with a
                // kill of the group).
                // SAFETY: setpgid on our own child.
                unsafe { libc::setpgid(pid, pid) };
                Ok(Self {
                    pid,
                    shared,
                    exited: false,
                })
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// The first `processes` children are started.
    pub fn filled(&self) -> bool {
        self.shared.get().filled.load(Ordering::Acquire) == 1
    }

    /// An error if the spawner failed to set up (cgroup move, mappings) or is gone.
    pub fn check(&mut self) -> io::Result<()> {
        let errno = self.shared.get().setup_errno.load(Ordering::Acquire);
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(errno as i32));
        }
        if self.reap(false) {
            return Err(io::Error::other(format!(
                "churn spawner {} exited",
                self.pid
            )));
        }
        Ok(())
    }

    pub fn stats(&self) -> ChurnStats {
        let s = self.shared.get();
        ChurnStats {
            spawned: s.spawned.load(Ordering::Relaxed),
            reaped: s.reaped.load(Ordering::Relaxed),
            clone_failures: s.clone_failures.load(Ordering::Relaxed),
        }
    }

    /// Ask the spawner to kill and reap its children and exit (see [`Spawner::stop`]).
    fn request_stop(&self) {
        self.shared.get().stop.store(1, Ordering::Release);
    }

    /// Reap the spawner if it exited (`block`: wait for it). True once it is reaped.
    #[allow(unsafe_code)]
    fn reap(&mut self, block: bool) -> bool {
        if !self.exited {
            let mut status = 0;
            let flags = if block { 0 } else { libc::WNOHANG };
            // SAFETY: waitpid on our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            // -1 other than EINTR: not (or no longer) a child of ours.
            self.exited = r == self.pid || (r == -1 && !interrupted());
        }
        self.exited
    }

    /// Stop: the spawner kills and reaps every child, then exits; after [`STOP_DEADLINE`] its
    /// whole process group gets SIGKILL (orphans are then reaped by init). Idempotent.
    pub fn stop(&mut self) {
        self.request_stop();
        self.wait_stopped(Instant::now() + STOP_DEADLINE);
    }

    fn wait_stopped(&mut self, deadline: Instant) {
        while !self.reap(false) {
            if Instant::now() > deadline {
                crate::process::signal(-self.pid, libc::SIGKILL);
                self.reap(true);
                eprintln!("churn spawner {} killed after {STOP_DEADLINE:?}", self.pid);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn interrupted() -> bool {
    io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Several spawners, stopped together on drop.
pub struct ProcessChurn {
    pub spawners: Vec<Spawner>,
}

impl ProcessChurn {
    /// Start one spawner per spec (stopping those already started if one fails).
    pub fn start(specs: &[ChurnSpec]) -> io::Result<Self> {
        let mut churn = Self {
            spawners: Vec::new(),
        };
        for spec in specs {
            churn.spawners.push(Spawner::start(spec)?);
        }
        Ok(churn)
    }

    pub fn stats(&self) -> ChurnStats {
        self.spawners
            .iter()
            .map(Spawner::stats)
            .fold(ChurnStats::default(), |a, b| a + b)
    }

    /// Wait until every spawner started its first children; an error if one failed or `timeout`
    /// passed.
    pub fn wait_filled(&mut self, timeout: Duration) -> io::Result<Duration> {
        let began = Instant::now();
        loop {
            for s in &mut self.spawners {
                s.check()?;
            }
            if self.spawners.iter().all(Spawner::filled) {
                return Ok(began.elapsed());
            }
            if began.elapsed() > timeout {
                return Err(io::Error::other(format!(
                    "churn not filled within {timeout:?}: {:?}",
                    self.stats()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop every spawner (in parallel: all are asked first); returns how long it took.
    pub fn stop(&mut self) -> Duration {
        let began = Instant::now();
        for s in &self.spawners {
            s.request_stop();
        }
        let deadline = began + STOP_DEADLINE;
        for s in &mut self.spawners {
            s.wait_stopped(deadline);
        }
        began.elapsed()
    }
}

impl Drop for ProcessChurn {
    fn drop(&mut self) {
        self.stop();
    }
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

/// A child: sleep `arg` milliseconds, then return (the clone trampoline calls `exit`). Runs on
/// a stack slot in the spawner's memory: raw system calls only.
#[allow(unsafe_code)]
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    let ms = arg as usize as u64;
    let ts = timespec(Duration::from_millis(ms));
    // SAFETY: plain system calls with valid pointers into this stack frame.
    unsafe {
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL,
            0,
            0,
            0,
        );
        libc::syscall(
            libc::SYS_nanosleep,
            &ts as *const libc::timespec,
            std::ptr::null_mut::<libc::timespec>(),
        );
    }
    0
}

/// Map `len` bytes of private anonymous memory (lazily backed), or exit with the error.
#[allow(unsafe_code)]
fn map_or_exit(shared: &Shared, len: usize, extra: libc::c_int) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | extra,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        setup_failed(shared);
    }
    p.cast()
}

/// Record errno for the test and exit the spawner.
#[allow(unsafe_code)]
fn setup_failed(shared: &Shared) -> ! {
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    shared.setup_errno.store(errno as u32, Ordering::Release);
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(97) }
}

/// The spawner, after `fork`. System calls and atomics only; never returns.
#[allow(unsafe_code)]
fn spawner_main(plan: &Plan, shared: &Shared) -> ! {
    // SAFETY (whole function): system calls on memory mapped here or prepared before the fork;
    // every raw pointer access is bounds-checked against the mapping it points into.
    unsafe {
        libc::setpgid(0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != plan.parent {
            libc::_exit(1);
        }
        libc::prctl(libc::PR_SET_NAME, COMM.as_ptr());
        // The test process's descriptors (sockets, pipes, epoll) are none of the spawner's.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        // Default dispositions, nothing blocked: neither the spawner nor a child may run one of
        // the test process's signal handlers, and SIGCHLD must not be ignored (zombies stay).
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if let Some(path) = &plan.cgroup_procs {
            // `0`: the writing process itself.
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                setup_failed(shared);
            }
            libc::close(fd);
        }

        let n = plan.processes;
        let stacks = map_or_exit(shared, n * STACK_SLOT, libc::MAP_STACK);
        // pid → slot + 1 (0: not ours).
        let slot_of = map_or_exit(shared, PID_LIMIT * 4, 0).cast::<u32>();
        // Free slots, a stack.
        let free = map_or_exit(shared, n * 4, 0).cast::<u32>();
        for i in 0..n {
            *free.add(i) = (n - 1 - i) as u32;
        }
        let mut nfree = n;
        let mut rng = plan.seed;
        let mut spawned = 0u64;
        let mut reaped = 0u64;
        loop {
            // Reap what exited since the last round.
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if pid <= 0 {
                    break;
                }
                let pid = pid as usize;
                if pid < PID_LIMIT {
                    let slot = *slot_of.add(pid);
                    if slot != 0 && nfree < n {
                        *slot_of.add(pid) = 0;
                        *free.add(nfree) = slot - 1;
                        nfree += 1;
                    }
                }
                reaped += 1;
            }
            shared.reaped.store(reaped, Ordering::Relaxed);

            if shared.stop.load(Ordering::Acquire) == 1 {
                for pid in 1..PID_LIMIT {
                    if *slot_of.add(pid) != 0 {
                        libc::kill(pid as libc::pid_t, libc::SIGKILL);
                    }
                }
                loop {
                    let mut status = 0;
                    if libc::waitpid(-1, &mut status, 0) > 0 {
                        reaped += 1;
                        shared.reaped.store(reaped, Ordering::Relaxed);
                    } else if *libc::__errno_location() != libc::EINTR {
                        break; // ECHILD: all reaped
                    }
                }
                libc::_exit(0);
            }

            // Replace them.
            while nfree > 0 {
                let slot = *free.add(nfree - 1) as usize;
                // xorshift64
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let ms = plan.min_ms + rng % plan.span_ms;
                let top = stacks.add((slot + 1) * STACK_SLOT);
                let pid = libc::clone(
                    child_main,
                    top.cast(),
                    libc::CLONE_VM | libc::SIGCHLD,
                    ms as usize as *mut libc::c_void,
                );
                if pid < 0 {
                    shared.clone_failures.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                nfree -= 1;
                spawned += 1;
                let pid = pid as usize;
                if pid < PID_LIMIT {
                    *slot_of.add(pid) = slot as u32 + 1;
                } else {
                    // Cannot be tracked (never on Linux): the slot stays taken.
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
            shared.spawned.store(spawned, Ordering::Relaxed);
            if nfree == 0 {
                shared.filled.store(1, Ordering::Release);
            }
            libc::nanosleep(&plan.reap_every, std::ptr::null_mut());
        }
    }
}

/// `kernel.pid_max` raised for a test and restored on drop.
pub struct PidMax {
    before: u64,
    raised: bool,
}

const PID_MAX: &str = "/proc/sys/kernel/pid_max";

impl PidMax {
    /// Raise `kernel.pid_max` to `at_least` if it is lower (needs root).
    pub fn at_least(at_least: u64) -> io::Result<Self> {
        let before: u64 = std::fs::read_to_string(PID_MAX)?
            .trim()
            .parse()
            .map_err(io::Error::other)?;
        let raised = before < at_least;
        if raised {
            std::fs::write(PID_MAX, at_least.to_string())?;
        }
        Ok(Self { before, raised })
    }

    /// The value before (and after) the test.
    pub fn before(&self) -> u64 {
        self.before
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        if self.raised
            && let Err(e) = std::fs::write(PID_MAX, self.before.to_string())
        {
            eprintln!("could not restore {PID_MAX} to {}: {e}", self.before);
        }
    }
}
