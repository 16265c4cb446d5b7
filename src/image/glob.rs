//! The one glob matcher: policy `image` patterns and pull-secret registry keys both use it.
//!
//! A pattern is a list of tokens — `*` (any run, also empty), `?` (one byte), `[...]` classes
//! (`^` negation, `a-z` ranges), `\x` escapes, literals — matched with the two-pointer method
//! that only ever backtracks to the last `*`: O(pattern × text) at worst, never exponential.
//! Patterns and texts longer than [`MAX_LEN`] do not match at all (a tenant writes these keys).

/// Longest pattern or text matched (a registry host, an image reference are far shorter).
pub const MAX_LEN: usize = 512;

/// One pattern token; each but `Star` consumes exactly one byte.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Star,
    Any,
    Byte(u8),
    Class { ranges: Vec<(u8, u8)>, negate: bool },
}

impl Token {
    fn matches(&self, c: u8) -> bool {
        match self {
            Token::Star => true,
            Token::Any => true,
            Token::Byte(b) => *b == c,
            Token::Class { ranges, negate } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negate
            }
        }
    }
}

/// Which syntax a pattern uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// Only `*` is special (policy `image` globs).
    Star,
    /// Go's `filepath.Match`: `*`, `?`, `[...]`, `\` (the kubelet's registry keys).
    Path,
}

/// A compiled pattern; `None` from [`Pattern::new`] means it can match nothing (an unclosed
/// class, or too long).
#[derive(Clone, Debug)]
pub struct Pattern {
    tokens: Vec<Token>,
}

impl Pattern {
    pub fn new(pattern: &str, syntax: Syntax) -> Option<Self> {
        let p = pattern.as_bytes();
        if p.len() > MAX_LEN {
            return None;
        }
        let mut tokens = Vec::with_capacity(p.len());
        let mut i = 0;
        while i < p.len() {
            let token = match (syntax, p[i]) {
                (_, b'*') => {
                    // `**` is `*`: collapsing keeps the backtracking single.
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                    i += 1;
                    continue;
                }
                (Syntax::Path, b'?') => Token::Any,
                (Syntax::Path, b'\\') if i + 1 < p.len() => {
                    i += 1;
                    Token::Byte(p[i])
                }
                (Syntax::Path, b'[') => {
                    let (token, end) = class(p, i)?;
                    i = end;
                    token
                }
                (_, c) => Token::Byte(c),
            };
            tokens.push(token);
            i += 1;
        }
        Some(Self { tokens })
    }

    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        let (p, t) = (&self.tokens, text.as_bytes());
        if t.len() > MAX_LEN {
            return false;
        }
        let (mut pi, mut ti) = (0, 0);
        // The last `*` seen and the text position it currently stands for.
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(Token::Star) => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(tok) if tok.matches(t[ti]) => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    // Let the last star absorb one more byte and retry.
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|t| *t == Token::Star)
    }
}

/// The class starting at `p[start] == b'['`: its token and the index of its `]`.
fn class(p: &[u8], start: usize) -> Option<(Token, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut ranges = Vec::new();
    // A `]` right after `[` or `[^` is a member, as in Go.
    let first = i;
    loop {
        let c = *p.get(i)?;
        if c == b']' && i > first {
            return Some((Token::Class { ranges, negate }, i));
        }
        let c = if c == b'\\' {
            i += 1;
            *p.get(i)?
        } else {
            c
        };
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&e| e != b']') {
            let hi = p[i + 2];
            ranges.push((c, hi));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
}

/// `pattern` in `syntax` matches `text` (a pattern that cannot match anything does not).
pub fn matches(pattern: &str, syntax: Syntax, text: &str) -> bool {
    Pattern::new(pattern, syntax).is_some_and(|p| p.matches(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn star_syntax() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "anything/at:all", true),
            ("nginx", "nginx", true),
            ("nginx", "nginx:1", false),
            ("nginx:*", "nginx:1.27", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*an*an*", "banana", true),
            ("**", "x", true),
            ("", "", true),
            ("", "x", false),
            // `?` and `[` are literal here.
            ("a?c", "abc", false),
            ("a?c", "a?c", true),
            ("[ab]", "[ab]", true),
        ] {
            assert_eq!(matches(p, Syntax::Star, t), want, "{p:?} vs {t:?}");
        }
    }

    #[test]
    fn path_syntax_is_gos_filepath_match() {
        for (p, t, want) in [
            ("*.example.com", "registry.example.com", true),
            ("reg?stry", "registry", true),
            ("reg?stry", "regstry", false),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("[^a-c]x", "dx", true),
            ("[^a-c]x", "ax", false),
            ("[]a]", "]", true),
            ("[ab", "a", false),
            (r"a\*b", "a*b", true),
            (r"a\*b", "axb", false),
            ("[\\]]", "]", true),
        ] {
            assert_eq!(matches(p, Syntax::Path, t), want, "{p:?} vs {t:?}");
        }
    }

    /// The old recursive matcher took exponential time on these (a tenant-controlled key).
    #[test]
    fn hostile_patterns_stay_cheap() {
        let started = Instant::now();
        let text = "a".repeat(MAX_LEN);
        for pattern in [
            format!("{}b", "*a".repeat(100)),
            format!("{}b", "*?".repeat(100)),
            format!("{}b", "*[a-z]".repeat(80)),
        ] {
            assert!(!matches(&pattern, Syntax::Path, &text));
        }
        assert!(!matches(&"*".repeat(MAX_LEN + 1), Syntax::Path, "x"));
        assert!(!matches("*", Syntax::Path, &"a".repeat(MAX_LEN + 1)));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }
}
