//! The one glob matcher: policy `image` patterns and pull-secret registry keys both use it.
//!
//! A pattern is a list of tokens — `*` (any run, also empty), `?` (one character), `[...]`
//! classes (`^` negation, `a-z` ranges), `\x` escapes, literals — matched with the two-pointer
//! method that only ever backtracks to the last `*`: O(pattern × text) at worst, never
//! exponential. Patterns and texts longer than [`MAX_LEN`] bytes do not match at all (a tenant
//! writes these keys). Unlike Go's `filepath.Match`, `*` and `?` also match `/` (registry host
//! labels have none, policy globs want it), and a `*` never stops inside a multi-byte character
//! (Go's can, and then reads the rest of it as `U+FFFD`s).

/// Longest pattern or text matched (a registry host, an image reference are far shorter).
pub const MAX_LEN: usize = 512;

/// One pattern token; each but `Star` consumes exactly one character.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Star,
    Any,
    Char(char),
    Class {
        ranges: Vec<(char, char)>,
        negate: bool,
    },
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Star => true,
            Token::Any => true,
            Token::Char(x) => *x == c,
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

/// A compiled pattern; `None` from [`Pattern::new`] means it can match nothing: too long, or
/// (`Path`) malformed where Go's `filepath.Match` returns `ErrBadPattern`, which the kubelet
/// treats as no match (an unclosed class, a class member `-` or `]` without `\`, a trailing `\`).
#[derive(Clone, Debug)]
pub struct Pattern {
    tokens: Vec<Token>,
}

impl Pattern {
    pub fn new(pattern: &str, syntax: Syntax) -> Option<Self> {
        if pattern.len() > MAX_LEN {
            return None;
        }
        let p: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::with_capacity(p.len());
        let mut i = 0;
        while i < p.len() {
            let token = match (syntax, p[i]) {
                (_, '*') => {
                    // `**` is `*`: collapsing keeps the backtracking single.
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                    i += 1;
                    continue;
                }
                (Syntax::Path, '?') => Token::Any,
                (Syntax::Path, '\\') => {
                    i += 1;
                    Token::Char(*p.get(i)?)
                }
                (Syntax::Path, '[') => {
                    let (token, end) = class(&p, i)?;
                    i = end;
                    token
                }
                (_, c) => Token::Char(c),
            };
            tokens.push(token);
            i += 1;
        }
        Some(Self { tokens })
    }

    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        if text.len() > MAX_LEN {
            return false;
        }
        let (p, t) = (&self.tokens, text.chars().collect::<Vec<char>>());
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
                    // Let the last star absorb one more character and retry.
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

/// The class starting at `p[start] == '['`: its token and the index of its `]`. Go's grammar:
/// `[` `^`? then one or more members `c` or `c-c` up to `]`, where a `c` that is `-` or `]` must
/// be escaped (`[]a]`, `[a-]`, `[-a]` are malformed, as is a class the pattern ends in).
fn class(p: &[char], start: usize) -> Option<(Token, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if p.get(i) == Some(&']') && !ranges.is_empty() {
            return Some((Token::Class { ranges, negate }, i));
        }
        let lo;
        (lo, i) = class_char(p, i)?;
        let mut hi = lo;
        if p.get(i) == Some(&'-') {
            (hi, i) = class_char(p, i + 1)?;
        }
        ranges.push((lo, hi));
    }
}

/// A class member at `p[i]` (after a `\`, the next character) and the index after it; `None`
/// for Go's `ErrBadPattern` (`-` or `]` unescaped, or the pattern ends).
fn class_char(p: &[char], i: usize) -> Option<(char, usize)> {
    match *p.get(i)? {
        '-' | ']' => None,
        '\\' => p.get(i + 1).map(|&c| (c, i + 2)),
        c => Some((c, i + 1)),
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
            ("[ab", "a", false),
            (r"a\*b", "a*b", true),
            (r"a\*b", "axb", false),
            ("[\\]]", "]", true),
            (r"[\]a]", "a", true),
            (r"[a\-]", "-", true),
            (r"[\]-a]", "^", true),
            (r"[\]-a]", "b", false),
            ("[^^]", "a", true),
            ("[[]", "[", true),
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

    /// Found by comparing with Go's `filepath.Match` (go1.26) on 143,000 random patterns: these
    /// are `ErrBadPattern` there, which the kubelet's `URLsMatch` treats as no match; they matched
    /// here (a first `]` or a `-` next to `]` was a member, a trailing `\` a literal).
    #[test]
    fn malformed_path_patterns_match_nothing_as_in_go() {
        for (p, t) in [
            ("[]a]", "]"),
            ("[]b]*^", "]^"),
            ("[^]]*", "a^-"),
            ("[-ab]", "-"),
            ("[a-]", "a"),
            ("*[*?-]", "?"),
            ("*[^^-]", "z"),
            ("[]", "]"),
            ("[^]", "a"),
            ("[a", "a"),
            ("[a-", "a"),
            ("[a\\", "a"),
            ("\\", "\\"),
            ("*\\", "a\\"),
            ("-\\", "-\\"),
        ] {
            assert!(Pattern::new(p, Syntax::Path).is_none(), "{p:?}");
            assert!(!matches(p, Syntax::Path, t), "{p:?} vs {t:?}");
        }
        // The same bytes are literal in policy globs.
        assert!(matches("[]a]", Syntax::Star, "[]a]"));
        assert!(matches("a\\", Syntax::Star, "a\\"));
    }

    /// Found by fuzz/fuzz_targets/image_glob.rs against its port of Go's `filepath.Match`: `?`
    /// and classes took one byte, so `[é-é-a]` (malformed in Go: a `-` after a range) read as
    /// byte ranges and matched, and `?` did not match `é`. Expectations from go1.26.
    #[test]
    fn path_patterns_take_characters_as_in_go() {
        for (p, t, want) in [
            ("[é-é-a]", "a", false),
            ("[é-é-a]", "é", false),
            ("?", "é", true),
            ("??", "é", false),
            ("[^a]", "é", true),
            ("[à-ê]", "é", true),
            ("[é]", "é", true),
            ("a?c", "aéc", true),
            ("*[é-ê]", "xê", true),
        ] {
            assert_eq!(matches(p, Syntax::Path, t), want, "{p:?} vs {t:?}");
        }
        assert!(Pattern::new("[é-é-a]", Syntax::Path).is_none());
    }
}
