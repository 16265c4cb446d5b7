//! Every system call the reaper makes, and its only `unsafe` code.
//!
//! Thin, safe wrappers: no policy lives here, so the rest of the binary reads as plain Rust.

use std::ffi::CStr;
use std::ptr;
use std::time::Duration;

use libc::{c_char, c_int, pid_t};

use crate::log::Line;
use crate::signals;
use crate::status;

/// What the binary's C `main` runs (src/main.rs): `#![no_main]` skips std's runtime setup (it
/// would install handlers and ignore SIGPIPE, which the child must not inherit, and it costs
/// pages at every start). Never returns.
///
/// # Safety
/// `argv` must hold `argc` pointers to NUL-terminated strings that live until the process exits
/// (what the C runtime passes to `main`).
pub unsafe fn entry(argc: c_int, argv: *const *const c_char) -> c_int {
    let n = usize::try_from(argc).unwrap_or(0);
    // The usual start allocates nothing: malloc never initialises and no heap page is touched.
    let mut stack: [&'static CStr; STACK_ARGS] = [c""; STACK_ARGS];
    let mut heap: Vec<&'static CStr> = Vec::new();
    let mut len = 0;
    for i in 0..n {
        // SAFETY: the C runtime passes `argc` pointers to NUL-terminated strings that live until
        // the process exits; a NULL ends the list early if argc lies.
        let p = unsafe { *argv.add(i) };
        if p.is_null() {
            break;
        }
        // SAFETY: non-NULL, NUL-terminated, lives for the whole process (see above).
        let arg = unsafe { CStr::from_ptr(p) };
        if i < STACK_ARGS {
            stack[i] = arg;
        } else {
            if heap.is_empty() {
                heap.extend_from_slice(&stack);
            }
            heap.push(arg);
        }
        len += 1;
    }
    let args = if heap.is_empty() {
        &stack[..len]
    } else {
        &heap[..]
    };
    exit(crate::run(args))
}

/// Ends the process at once: the reaper has no buffers to flush and no atexit work.
pub fn exit(code: u8) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(c_int::from(code)) }
}

/// Arguments kept on the stack before falling back to the heap.
const STACK_ARGS: usize = 32;

/// The calling thread's errno.
pub fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Appends `strerror(e)` to a log line.
pub fn push_errno(line: &mut Line, e: c_int) {
    // SAFETY: strerror returns a valid NUL-terminated string; the reaper is single-threaded, so
    // nothing overwrites it before it is copied into the line.
    let text = unsafe { CStr::from_ptr(libc::strerror(e)) };
    line.bytes(text.to_bytes());
}

unsafe extern "C" {
    /// The process environment (POSIX). Read and edited in place instead of through
    /// getenv/unsetenv: those glibc wrappers sit on pages the reaper otherwise never touches.
    static mut environ: *mut *mut c_char;
}

/// Index and value of `name` in the environment.
fn find_env(name: &str) -> Option<(usize, &'static [u8])> {
    // SAFETY: `environ` is a NULL-terminated array of NUL-terminated strings that live as long as
    // the process; the reaper is single-threaded and only edits it through `remove_env`.
    unsafe {
        let env = environ;
        if env.is_null() {
            return None;
        }
        let mut i = 0;
        loop {
            let entry = *env.add(i);
            if entry.is_null() {
                return None;
            }
            let bytes = CStr::from_ptr(entry).to_bytes();
            if let Some(value) = bytes
                .strip_prefix(name.as_bytes())
                .and_then(|r| r.strip_prefix(b"="))
            {
                return Some((i, value));
            }
            i += 1;
        }
    }
}

/// Looks up an environment variable. The value lives as long as the process: environment
/// strings are never freed, only unlinked from the array.
pub fn getenv(name: &str) -> Option<&'static [u8]> {
    find_env(name).map(|(_, v)| v)
}

/// Removes every `name=` entry from the environment the child inherits (what unsetenv does).
pub fn remove_env(name: &str) {
    while let Some((i, _)) = find_env(name) {
        // SAFETY: `i` indexes a live entry of the NULL-terminated array; shifting the tail (NULL
        // included) down by one stays inside it.
        unsafe {
            let env = environ;
            let mut j = i;
            loop {
                let next = *env.add(j + 1);
                *env.add(j) = next;
                if next.is_null() {
                    break;
                }
                j += 1;
            }
        }
    }
}

pub fn getpid() -> pid_t {
    // SAFETY: no preconditions.
    unsafe { libc::getpid() }
}

pub fn getpgrp() -> pid_t {
    // SAFETY: no preconditions.
    unsafe { libc::getpgrp() }
}

/// Moves `pid` into process group `pgid`; failures are harmless where it is used.
pub fn setpgid(pid: pid_t, pgid: pid_t) {
    // SAFETY: no memory involved.
    unsafe { libc::setpgid(pid, pgid) };
}

/// Registers as child subreaper: orphans below re-parent to the reaper instead of to PID 1.
pub fn set_child_subreaper() -> bool {
    // SAFETY: plain prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) == 0 }
}

/// Asks for `sig` when the parent dies.
pub fn set_pdeathsig(sig: c_int) -> bool {
    // SAFETY: plain prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) == 0 }
}

/// Sends a signal; `pid` follows kill(2) (negative: process group, -1: everyone visible).
pub fn kill(pid: pid_t, sig: c_int) -> bool {
    // SAFETY: no memory involved. Raw syscall: see `SigSet`.
    unsafe { libc::syscall(libc::SYS_kill, pid, sig) == 0 }
}

/// Stops the reaper itself (job control: the shell that started it sees the job stop).
pub fn stop_self() {
    kill(getpid(), libc::SIGSTOP);
}

/// The terminal's foreground process group, if stdin is the controlling terminal.
pub fn foreground_group() -> Option<pid_t> {
    // SAFETY: ioctl on fd 0; fails with ENOTTY when stdin is not our controlling terminal.
    let pg = unsafe { libc::tcgetpgrp(0) };
    (pg > 0).then_some(pg)
}

/// Gives the terminal (stdin) to `pgrp`. SIGTTOU is blocked, so a background caller may do it.
pub fn set_foreground_group(pgrp: pid_t) -> bool {
    // SAFETY: ioctl on fd 0.
    unsafe { libc::tcsetpgrp(0, pgrp) == 0 }
}

/// Writes the whole buffer to `fd`, retrying on EINTR; gives up silently on other errors.
pub fn write_all(fd: c_int, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid slice.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n > 0 {
            buf = buf.get(n as usize..).unwrap_or(&[]);
        } else if n < 0 && errno() == libc::EINTR {
            continue;
        } else {
            if n < 0 && errno() == libc::EPIPE {
                discard_own_sigpipe();
            }
            return;
        }
    }
}

/// A set of signals in the kernel's layout (one bit per signal, `_NSIG / 8` bytes).
///
/// The loop talks to the kernel directly (rt_sigprocmask, rt_sigtimedwait, kill): fewer
/// instructions per forwarded signal and reaped orphan, and none of glibc's signal wrappers'
/// pages become resident.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SigSet(u64);

/// `sigsetsize` argument of the rt_sig* system calls.
const KERNEL_SIGSET_SIZE: usize = std::mem::size_of::<u64>();

impl SigSet {
    /// The signals the reaper blocks and waits for (see [`signals::is_caught`]).
    pub fn caught() -> Self {
        let mut bits = 0u64;
        for sig in 1..=signals::MAX_SIGNAL {
            if signals::is_caught(sig) {
                bits |= 1 << (sig - 1);
            }
        }
        Self(bits)
    }

    /// Blocks the set so its signals queue up for [`wait_signal`] instead of being delivered.
    /// Blocked signals reach even a PID 1 (the kernel drops only unblocked, default-action ones).
    /// Returns the mask in force before: the one the child gets back.
    pub fn block(&self) -> SigSet {
        let mut before = 0u64;
        // SAFETY: valid pointers to kernel sigsets of the size passed.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_BLOCK,
                &self.0 as *const u64,
                &mut before as *mut u64,
                KERNEL_SIGSET_SIZE,
            )
        };
        SigSet(before)
    }
}

/// Waits for one of `set` (which must be blocked) and returns its number; `None` on timeout or
/// interruption (e.g. after being stopped and continued). No siginfo is asked for: the loop
/// needs only the number, and skipping the copy shaves every reaped orphan and forwarded signal.
pub fn wait_signal(set: &SigSet, timeout: Option<Duration>) -> Option<c_int> {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: valid set pointer, NULL siginfo (allowed), timeout NULL = wait forever.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigtimedwait,
            &set.0 as *const u64,
            ptr::null_mut::<libc::siginfo_t>(),
            ts_ptr,
            KERNEL_SIGSET_SIZE,
        )
    };
    (r > 0).then_some(r as c_int)
}

/// Discards a pending SIGPIPE raised by the reaper's own write (stderr closed): it is not a
/// signal for the child, and a blocked SIGPIPE would otherwise queue up and be forwarded.
fn discard_own_sigpipe() {
    let set = 1u64 << (libc::SIGPIPE - 1);
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointers; a zero timeout only polls.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigtimedwait,
            &set as *const u64,
            ptr::null_mut::<libc::siginfo_t>(),
            &zero as *const libc::timespec,
            KERNEL_SIGSET_SIZE,
        )
    };
}

/// One result of `waitpid(-1, WNOHANG)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    /// A child ended; `status` is the raw wait status.
    Exited { pid: pid_t, status: c_int },
    /// A child stopped (reported only with `untraced`).
    Stopped { pid: pid_t },
    /// Children exist, none has changed state.
    Running,
    /// No children at all.
    NoChildren,
}

pub fn reap_one(untraced: bool) -> Reaped {
    let flags = libc::WNOHANG | if untraced { libc::WUNTRACED } else { 0 };
    loop {
        let mut status: c_int = 0;
        // SAFETY: valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, flags) };
        if pid > 0 {
            return if libc::WIFSTOPPED(status) {
                Reaped::Stopped { pid }
            } else {
                Reaped::Exited { pid, status }
            };
        }
        if pid == 0 {
            return Reaped::Running;
        }
        // waitpid fails only with EINTR (retry), ECHILD or EINVAL (flags are constant).
        if errno() != libc::EINTR {
            return Reaped::NoChildren;
        }
    }
}

/// How to start the child.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpawnOptions {
    /// Put the child in a process group of its own.
    pub new_group: bool,
    /// Also make that group the terminal's foreground group.
    pub take_terminal: bool,
    /// The signal mask the reaper inherited, which the child gets back.
    pub mask: SigSet,
}

/// Why the child could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    /// clone/mmap failed (errno).
    Fork(c_int),
    /// execvp failed (errno); the child has been reaped already.
    Exec(c_int),
}

/// Starts `argv` (PATH search like a shell) with the signal state the reaper inherited: its
/// `opts.mask`, and the dispositions exec leaves (inherited SIG_IGN stays, as it would without an
/// init; the reaper itself installs no handler and ignores nothing, so nothing of its own leaks).
///
/// vfork-style (`CLONE_VM | CLONE_VFORK` on a small stack of its own, as glibc's posix_spawn
/// does): no page tables are copied and no copy-on-write faults follow, which is most of what a
/// fork costs the reaper at start. The parent sleeps until the child has exec'd, and an exec
/// error comes back through the shared memory, so the reaper reports it itself.
pub fn spawn(argv: &[&CStr], opts: SpawnOptions) -> Result<pid_t, SpawnError> {
    let Some(first) = argv.first() else {
        return Err(SpawnError::Exec(libc::ENOENT));
    };
    // execvp wants a NULL-terminated array; small ones live on the stack (no malloc at start).
    let mut stack: [*const c_char; STACK_ARGS + 1] = [ptr::null(); STACK_ARGS + 1];
    let heap: Vec<*const c_char>;
    let ptrs: &[*const c_char] = if argv.len() <= STACK_ARGS {
        for (slot, a) in stack.iter_mut().zip(argv) {
            *slot = a.as_ptr();
        }
        &stack[..=argv.len()]
    } else {
        heap = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([ptr::null()])
            .collect();
        &heap
    };
    let mut ctx = ChildContext {
        file: first.as_ptr(),
        argv: ptrs.as_ptr(),
        opts,
        exec_errno: 0,
    };
    // Room for execvp's own buffers (PATH + name, and a copy of argv for the script fallback);
    // untouched pages cost nothing.
    let size = (CHILD_STACK + argv.len() * 2 * std::mem::size_of::<usize>() + 4095) & !4095;
    // SAFETY: anonymous private mapping; checked below.
    let child_stack = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if child_stack == libc::MAP_FAILED {
        return Err(SpawnError::Fork(errno()));
    }
    // SAFETY: the stack is ours and large enough; `ctx` outlives the child's use of it because
    // CLONE_VFORK suspends us until the child has exec'd or exited. The child runs no signal
    // handlers (the reaper installs none), so sharing our memory is safe.
    let pid = unsafe {
        let top = child_stack.cast::<u8>().add(size).cast::<libc::c_void>();
        libc::clone(
            exec_child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut ctx as *mut ChildContext).cast(),
        )
    };
    let clone_errno = errno();
    // SAFETY: the child no longer uses the stack (it has exec'd or exited).
    unsafe { libc::munmap(child_stack, size) };
    if pid < 0 {
        return Err(SpawnError::Fork(clone_errno));
    }
    if ctx.exec_errno != 0 {
        // SAFETY: reaps the child we just started (it has called _exit).
        unsafe { libc::waitpid(pid, ptr::null_mut(), 0) };
        return Err(SpawnError::Exec(ctx.exec_errno));
    }
    Ok(pid)
}

/// What the vfork child needs; it writes `exec_errno` back when exec fails.
struct ChildContext {
    file: *const c_char,
    argv: *const *const c_char,
    opts: SpawnOptions,
    exec_errno: c_int,
}

/// Stack for the vfork child.
const CHILD_STACK: usize = 64 * 1024;

extern "C" fn exec_child(arg: *mut libc::c_void) -> c_int {
    // SAFETY: `arg` is the parent's ChildContext, alive while the parent is suspended; the
    // calls below only change the child's own process state. `argv` is NULL-terminated.
    unsafe {
        let ctx = &mut *arg.cast::<ChildContext>();
        if ctx.opts.new_group {
            libc::setpgid(0, 0);
            if ctx.opts.take_terminal {
                // SIGTTOU is still blocked here, so a background group may take the terminal.
                libc::tcsetpgrp(0, libc::getpid());
            }
        }
        // Back to the inherited mask (POSIX exec semantics, as tini does): what the reaper
        // blocked for itself must not leak, what its parent blocked must not be lost.
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &ctx.opts.mask.0 as *const u64,
            ptr::null_mut::<u64>(),
            KERNEL_SIGSET_SIZE,
        );
        libc::execvp(ctx.file, ctx.argv);
        // Read by the parent once we have exited (the memory is shared).
        ctx.exec_errno = errno().max(1);
        libc::_exit(c_int::from(status::NOT_FOUND))
    }
}
