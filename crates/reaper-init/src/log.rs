//! One-line messages on stderr without the `fmt` machinery (it would add pages to every start).
//!
//! A line is assembled in a stack buffer and written with a single `write(2)`, so lines from the
//! reaper and its child never interleave mid-line. Call sites use [`say`] with a few [`Part`]s:
//! the buffer then lives only in `say`'s own (cold, never inlined) frame, which keeps the
//! reaper's stack, and so its resident pages, small.

use crate::signals;
use crate::sys;

const CAP: usize = 256;
const PREFIX: &[u8] = b"reaper: ";

/// One piece of a log line.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    Str(&'a str),
    Bytes(&'a [u8]),
    Num(i64),
    /// `SIGTERM`, or `signal 40`.
    Sig(libc::c_int),
    /// `strerror(errno)`.
    Errno(libc::c_int),
}

/// Writes `reaper: ` and the parts as one line on stderr.
#[cold]
#[inline(never)]
pub fn say(parts: &[Part]) {
    let mut line = Line::new();
    for part in parts {
        match *part {
            Part::Str(s) => line.str(s),
            Part::Bytes(b) => line.bytes(b),
            Part::Num(n) => line.num(n),
            Part::Sig(s) => line.signal(s),
            Part::Errno(e) => {
                sys::push_errno(&mut line, e);
                &mut line
            }
        };
    }
    line.emit();
}

/// A log line under construction: `Line::new().str("reaped ").num(pid).emit()`.
pub struct Line {
    buf: [u8; CAP],
    len: usize,
    truncated: bool,
}

impl Line {
    /// A line starting with `reaper: `.
    #[allow(clippy::new_without_default)] // a new line carries the `reaper: ` prefix: not a neutral default
    pub fn new() -> Self {
        let mut l = Self::bare();
        l.bytes(PREFIX);
        l
    }

    /// A line without the prefix (usage text continuation).
    pub fn bare() -> Self {
        Self {
            buf: [0; CAP],
            len: 0,
            truncated: false,
        }
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        // Keep room for "...\n".
        let room = CAP - 4 - self.len;
        let n = b.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        self.truncated |= n < b.len();
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn num(&mut self, n: i64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if n < 0 {
            self.bytes(b"-");
        }
        self.bytes(&digits[i..])
    }

    /// `SIGTERM`, or `signal 40` for a number without a name.
    pub fn signal(&mut self, sig: libc::c_int) -> &mut Self {
        match signals::signal_name(sig) {
            Some(name) => self.str("SIG").str(name),
            None => self.str("signal ").num(i64::from(sig)),
        }
    }

    /// The finished line, newline included.
    pub fn finish(&mut self) -> &[u8] {
        if self.truncated {
            self.buf[self.len..self.len + 3].copy_from_slice(b"...");
            self.len += 3;
            self.truncated = false;
        }
        self.buf[self.len] = b'\n';
        &self.buf[..=self.len]
    }

    /// Writes the line to stderr. Errors are ignored: a PID 1 must not die because nobody reads.
    pub fn emit(&mut self) {
        sys::write_all(2, self.finish());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_lines() {
        let mut l = Line::new();
        l.str("reaped ")
            .num(42)
            .str(" ")
            .num(-7)
            .str(" ")
            .num(0)
            .str(" by ")
            .signal(15);
        assert_eq!(l.finish(), b"reaper: reaped 42 -7 0 by SIGTERM\n");
        let mut l = Line::bare();
        l.signal(40).str(" ").num(i64::MIN);
        assert_eq!(l.finish(), b"signal 40 -9223372036854775808\n");
    }

    #[test]
    fn truncates_long_lines() {
        let mut l = Line::new();
        l.bytes(&[b'x'; 1000]).str("tail");
        let out = l.finish().to_vec();
        assert_eq!(out.len(), CAP);
        assert!(out.len() <= 256, "lines stay small: they live on the stack");
        assert!(out.ends_with(b"x...\n"));
        assert!(out.starts_with(PREFIX));
    }
}
