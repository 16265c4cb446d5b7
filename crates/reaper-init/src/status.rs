//! From a `waitpid` status to the reaper's exit code. Pure.

use libc::c_int;

/// Exit code when the command is not found (shell convention).
pub const NOT_FOUND: u8 = 127;
/// Exit code when the command exists but cannot be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// Exit code for usage errors (no command, unknown option, bad value).
pub const USAGE: u8 = 2;
/// Exit code when the reaper itself fails (fork, `--install` I/O).
pub const FAILURE: u8 = 1;

/// The shell's view of a wait status: the exit code, or 128+N when killed by signal N.
pub fn exit_code(status: c_int) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        // Signal numbers stop at 64, so this never exceeds 192.
        (128 + libc::WTERMSIG(status)).clamp(0, 255) as u8
    } else {
        FAILURE
    }
}

/// Exit code for an `execvp` errno: not found (ENOENT, ENOTDIR) or cannot execute (the rest).
pub fn exec_failure_code(errno: c_int) -> u8 {
    match errno {
        libc::ENOENT | libc::ENOTDIR => NOT_FOUND,
        _ => CANNOT_EXECUTE,
    }
}

/// The `--remap-exit` set: codes that become 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemapExit([u64; 4]);

impl RemapExit {
    pub fn insert(&mut self, code: u8) {
        self.0[usize::from(code / 64)] |= 1 << (code % 64);
    }

    pub fn contains(&self, code: u8) -> bool {
        self.0[usize::from(code / 64)] & (1 << (code % 64)) != 0
    }

    /// The reaper's final exit code for the main child's `code`.
    pub fn apply(&self, code: u8) -> u8 {
        if self.contains(code) { 0 } else { code }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes statuses the way Linux does (exit code in bits 8-15, signal in the low 7 bits).
    fn exited(code: c_int) -> c_int {
        (code & 0xff) << 8
    }
    fn signaled(sig: c_int, core: bool) -> c_int {
        sig | if core { 0x80 } else { 0 }
    }

    #[test]
    fn maps_exit_and_signal_statuses() {
        let cases = [
            (exited(0), 0),
            (exited(3), 3),
            (exited(255), 255),
            (exited(127), 127),
            (signaled(libc::SIGTERM, false), 143),
            (signaled(libc::SIGKILL, false), 137),
            (signaled(libc::SIGSEGV, true), 139),
            (signaled(64, false), 192),
            // A stopped status (0x7f in the low byte) is not an exit: report a failure.
            ((libc::SIGSTOP << 8) | 0x7f, 1),
        ];
        for (status, want) in cases {
            assert_eq!(exit_code(status), want, "status {status:#x}");
        }
    }

    #[test]
    fn exec_errors() {
        assert_eq!(exec_failure_code(libc::ENOENT), 127);
        assert_eq!(exec_failure_code(libc::ENOTDIR), 127);
        assert_eq!(exec_failure_code(libc::EACCES), 126);
        assert_eq!(exec_failure_code(libc::ENOEXEC), 126);
        assert_eq!(exec_failure_code(libc::ETXTBSY), 126);
    }

    #[test]
    fn remap_set() {
        let mut r = RemapExit::default();
        assert_eq!(r.apply(3), 3);
        for c in [0, 3, 63, 64, 143, 255] {
            r.insert(c);
        }
        for c in [0, 3, 63, 64, 143, 255] {
            assert!(r.contains(c));
            assert_eq!(r.apply(c), 0);
        }
        for c in [1, 2, 62, 65, 142, 254] {
            assert!(!r.contains(c));
            assert_eq!(r.apply(c), c);
        }
    }
}
