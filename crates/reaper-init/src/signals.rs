//! Signal names and numbers, which signals the reaper catches, and the `--rewrite` table.
//!
//! Pure: no system calls, so everything here is unit-tested.

use libc::c_int;

/// Highest signal number on Linux (`_NSIG - 1`); real-time signals run up to it.
pub const MAX_SIGNAL: c_int = 64;

/// Names without the `SIG` prefix. The first name of a number is the one logs use.
const NAMES: &[(&str, c_int)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// Signals that report a fault of the process itself. The reaper leaves them unblocked (a blocked
/// fault signal is fatal anyway) and therefore never forwards them.
pub const FAULT_SIGNALS: [c_int; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// glibc's SIGRTMIN: it keeps the kernel's first two real-time signals (32, 33) for its threads.
/// A constant rather than `libc::SIGRTMIN()`, a call into a glibc page nothing else needs (a
/// unit test pins the value).
pub const RTMIN: c_int = 34;
/// The kernel's (and glibc's) SIGRTMAX.
pub const RTMAX: c_int = MAX_SIGNAL;

/// glibc's reserved signals cannot be blocked or sent through the libc wrappers, so the reaper
/// neither catches nor resets them.
fn reserved_by_libc(sig: c_int) -> bool {
    (32..RTMIN).contains(&sig)
}

/// True for signals the reaper blocks and waits for: everything except SIGKILL, SIGSTOP, the fault
/// signals and glibc's reserved ones.
pub fn is_caught(sig: c_int) -> bool {
    (1..=MAX_SIGNAL).contains(&sig)
        && sig != libc::SIGKILL
        && sig != libc::SIGSTOP
        && !FAULT_SIGNALS.contains(&sig)
        && !reserved_by_libc(sig)
}

/// Parses `TERM`, `SIGTERM`, `sigterm`, `15`, `RTMIN+2`, `SIGRTMAX-1`.
pub fn parse_signal(s: &[u8]) -> Option<c_int> {
    if s.is_empty() {
        return None;
    }
    if s.iter().all(u8::is_ascii_digit) {
        let n = parse_small(s)?;
        return (1..=MAX_SIGNAL).contains(&n).then_some(n);
    }
    // Upper-case on the stack: signal names are short, and the start path stays malloc-free.
    let mut buf = [0u8; 16];
    let upper = buf.get_mut(..s.len())?;
    for (u, c) in upper.iter_mut().zip(s) {
        *u = c.to_ascii_uppercase();
    }
    let name = upper.strip_prefix(b"SIG").unwrap_or(upper);
    if let Some(&(_, n)) = NAMES.iter().find(|(nm, _)| nm.as_bytes() == name) {
        return Some(n);
    }
    let (min, max) = (RTMIN, RTMAX);
    let rt = if let Some(rest) = name.strip_prefix(b"RTMIN") {
        match rest {
            [] => Some(min),
            [b'+', off @ ..] => parse_small(off).map(|o| min + o),
            _ => None,
        }
    } else if let Some(rest) = name.strip_prefix(b"RTMAX") {
        match rest {
            [] => Some(max),
            [b'-', off @ ..] => parse_small(off).map(|o| max - o),
            _ => None,
        }
    } else {
        None
    };
    rt.filter(|n| (min..=max).contains(n))
}

/// A decimal number of at most three digits (enough for signal numbers and exit codes).
pub fn parse_small(s: &[u8]) -> Option<c_int> {
    if s.is_empty() || s.len() > 3 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |acc, d| acc * 10 + c_int::from(d - b'0')))
}

/// `TERM` for `SIGTERM` (logs add the prefix); `None` for numbers without a name (real-time).
pub fn signal_name(sig: c_int) -> Option<&'static str> {
    NAMES
        .iter()
        .find(|&&(_, n)| n == sig)
        .map(|&(name, _)| name)
}

/// Why a `--rewrite` entry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteError {
    /// Not of the form `FROM:TO`.
    Shape,
    /// FROM is not a signal name or number.
    BadFrom,
    /// TO is not a signal name or number (or 0).
    BadTo,
    /// FROM is a signal the reaper never receives (KILL, STOP, CHLD, fault signals).
    NotForwarded,
}

impl RewriteError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Shape => "expected FROM:TO (e.g. TERM:QUIT), comma-separated",
            Self::BadFrom => "FROM is not a signal name or number",
            Self::BadTo => "TO is not a signal name or number (0 drops the signal)",
            Self::NotForwarded => "FROM is never forwarded (KILL, STOP, CHLD and fault signals)",
        }
    }
}

/// Maps each received signal to the one that is forwarded; 0 means "drop it".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    map: [u8; MAX_SIGNAL as usize + 1],
}

impl Default for Rewrite {
    fn default() -> Self {
        let mut map = [0u8; MAX_SIGNAL as usize + 1];
        for (i, m) in map.iter_mut().enumerate() {
            *m = i as u8;
        }
        Self { map }
    }
}

impl Rewrite {
    /// The signal to forward for `sig` (0: drop).
    pub fn apply(&self, sig: c_int) -> c_int {
        usize::try_from(sig)
            .ok()
            .and_then(|i| self.map.get(i))
            .map_or(sig, |&m| c_int::from(m))
    }

    /// Adds `FROM:TO[,FROM:TO...]` entries; later entries for the same FROM win.
    pub fn add_list(&mut self, list: &[u8]) -> Result<(), RewriteError> {
        for entry in list.split(|&b| b == b',') {
            let entry = trim(entry);
            let mut parts = entry.splitn(2, |&b| b == b':');
            let (Some(from), Some(to)) = (parts.next(), parts.next()) else {
                return Err(RewriteError::Shape);
            };
            let from = parse_signal(trim(from)).ok_or(RewriteError::BadFrom)?;
            let to = trim(to);
            let to = if to == b"0" {
                0
            } else {
                parse_signal(to).ok_or(RewriteError::BadTo)?
            };
            if !is_caught(from) || from == libc::SIGCHLD {
                return Err(RewriteError::NotForwarded);
            }
            self.map[from as usize] = to as u8;
        }
        Ok(())
    }
}

/// Strips ASCII spaces around a list element (`REAPER_REWRITE="15:3, 2:3"`).
pub fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_numbers_and_realtime() {
        let cases: &[(&str, Option<c_int>)] = &[
            ("TERM", Some(libc::SIGTERM)),
            ("SIGTERM", Some(libc::SIGTERM)),
            ("sigterm", Some(libc::SIGTERM)),
            ("term", Some(libc::SIGTERM)),
            ("15", Some(15)),
            ("3", Some(3)),
            ("64", Some(64)),
            ("65", None),
            ("0", None),
            ("", None),
            ("SIG", None),
            ("TERMX", None),
            ("-15", None),
            ("WINCH", Some(libc::SIGWINCH)),
            ("CLD", Some(libc::SIGCHLD)),
            ("IOT", Some(libc::SIGABRT)),
            ("RTMIN", Some(libc::SIGRTMIN())),
            ("SIGRTMIN+2", Some(libc::SIGRTMIN() + 2)),
            ("RTMAX-1", Some(libc::SIGRTMAX() - 1)),
            ("RTMAX+1", None),
            ("RTMIN+99", None),
            ("RTMIN-1", None),
            ("1000", None),
            ("SIGVERYLONGNAMEINDEED", None),
        ];
        for &(s, want) in cases {
            assert_eq!(parse_signal(s.as_bytes()), want, "{s:?}");
        }
    }

    #[test]
    fn realtime_range_matches_glibc() {
        assert_eq!(RTMIN, libc::SIGRTMIN());
        assert_eq!(RTMAX, libc::SIGRTMAX());
    }

    #[test]
    fn names_round_trip() {
        for sig in 1..=31 {
            let name = signal_name(sig).unwrap_or_else(|| panic!("no name for {sig}"));
            assert_eq!(parse_signal(name.as_bytes()), Some(sig), "{name}");
            assert!(!name.starts_with("SIG"));
        }
        assert_eq!(signal_name(libc::SIGRTMIN() + 1), None);
        assert_eq!(signal_name(libc::SIGABRT), Some("ABRT"));
        assert_eq!(signal_name(libc::SIGCHLD), Some("CHLD"));
    }

    #[test]
    fn caught_set_excludes_uncatchable_fault_and_reserved() {
        for sig in [
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGSEGV,
            libc::SIGBUS,
            32,
            33,
            0,
            65,
        ] {
            assert!(!is_caught(sig), "{sig}");
        }
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGCHLD,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGPIPE,
            libc::SIGABRT,
            34,
            64,
        ] {
            assert!(is_caught(sig), "{sig}");
        }
    }

    #[test]
    fn rewrite_lists() {
        let mut r = Rewrite::default();
        assert_eq!(r, Rewrite::default());
        r.add_list(b"TERM:QUIT").unwrap();
        assert_eq!(r.apply(libc::SIGTERM), libc::SIGQUIT);
        assert_eq!(r.apply(libc::SIGINT), libc::SIGINT);
        r.add_list(b"15:3, 2:3 ,WINCH:0").unwrap();
        assert_eq!(r.apply(15), 3);
        assert_eq!(r.apply(2), 3);
        assert_eq!(r.apply(libc::SIGWINCH), 0);
        assert_ne!(r, Rewrite::default());
        r.add_list(b"SIGTERM:SIGKILL").unwrap();
        assert_eq!(r.apply(15), libc::SIGKILL);
        // Out of range stays itself (never indexes out of bounds).
        assert_eq!(r.apply(99), 99);
        assert_eq!(r.apply(-1), -1);
    }

    #[test]
    fn rewrite_errors() {
        let cases: &[(&str, RewriteError)] = &[
            ("TERM", RewriteError::Shape),
            ("", RewriteError::Shape),
            ("TERM:QUIT,", RewriteError::Shape),
            ("NOPE:QUIT", RewriteError::BadFrom),
            ("TERM:NOPE", RewriteError::BadTo),
            ("TERM:", RewriteError::BadTo),
            ("KILL:TERM", RewriteError::NotForwarded),
            ("CHLD:TERM", RewriteError::NotForwarded),
            ("SEGV:TERM", RewriteError::NotForwarded),
        ];
        for &(s, want) in cases {
            assert_eq!(
                Rewrite::default().add_list(s.as_bytes()),
                Err(want),
                "{s:?}"
            );
            assert!(!want.reason().is_empty());
        }
    }

    #[test]
    fn small_numbers() {
        assert_eq!(parse_small(b"0"), Some(0));
        assert_eq!(parse_small(b"255"), Some(255));
        assert_eq!(parse_small(b"1234"), None);
        assert_eq!(parse_small(b"1a"), None);
        assert_eq!(parse_small(b""), None);
    }

    #[test]
    fn trims() {
        assert_eq!(trim(b"  a b "), b"a b");
        assert_eq!(trim(b"   "), b"");
        assert_eq!(trim(b""), b"");
    }
}
