//! The one glob matcher (`reaper::image::glob`): policy `image` patterns (`Syntax::Star`) and
//! pull-secret registry key labels (`Syntax::Path`, Go's `filepath.Match`), both tenant input.
//!
//! Input: `<syntax byte><pattern>\n<text>`; an even first byte is `Path`, an odd one `Star`.
//!
//! Checked: `Pattern::new` + `matches` and `glob::matches` within the CPU bound
//! (`common::BOUND`) and in agreement; `Path` agrees with a line-by-line port of Go's
//! `filepath.Match` (go1.26 path/filepath/match.go, `ErrBadPattern` = no match, as in the kubelet)
//! on texts without `/` (Go's `*` and `?` stop there) that are ASCII or whose pattern has no `*`
//! (Go's `*` may stop inside a multi-byte character); `Star` agrees with a dynamic-programming
//! matcher (`*` any run, everything else literal); a text matches itself as a pattern (escaped
//! for `Path`).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use reaper::image::glob::{self, MAX_LEN, Pattern, Syntax};

/// Go's `filepath.Match` (`Err`: `ErrBadPattern`), on bytes as Go's strings are.
fn go_match(mut pattern: &[u8], mut name: &[u8]) -> Result<bool, ()> {
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains(&b'/'));
        }
        let first = match_chunk(chunk, name);
        if let Ok(Some(t)) = first
            && (t.is_empty() || !pattern.is_empty())
        {
            name = t;
            continue;
        }
        first?;
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                if let Some(t) = match_chunk(chunk, &name[i + 1..])? {
                    if !(pattern.is_empty() && !t.is_empty()) {
                        name = t;
                        continue 'pattern;
                    }
                }
                i += 1;
            }
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while let [b'*', rest @ ..] = pattern {
        pattern = rest;
        star = true;
    }
    let mut inrange = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => inrange = true,
            b']' => inrange = false,
            b'*' if !inrange => return (star, &pattern[..i], &pattern[i..]),
            _ => {}
        }
        i += 1;
    }
    (star, pattern, &[])
}

fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> Result<Option<&'a [u8]>, ()> {
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        failed = failed || s.is_empty();
        match c {
            b'[' => {
                let mut r = '\0';
                if !failed {
                    let n;
                    (r, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if chunk.first() == Some(&b'^') {
                    negated = true;
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut nrange = 0;
                loop {
                    if chunk.first() == Some(&b']') && nrange > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let lo;
                    (lo, chunk) = get_esc(chunk)?;
                    let mut hi = lo;
                    if chunk[0] == b'-' {
                        (hi, chunk) = get_esc(&chunk[1..])?;
                    }
                    matched = matched || (lo <= r && r <= hi);
                    nrange += 1;
                }
                failed = failed || matched == negated;
            }
            b'?' => {
                if !failed {
                    failed = s[0] == b'/';
                    s = &s[decode_rune(s).1..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                if c == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(());
                    }
                }
                if !failed {
                    failed = chunk[0] != s[0];
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok((!failed).then_some(s))
}

fn get_esc(mut chunk: &[u8]) -> Result<(char, &[u8]), ()> {
    if matches!(chunk.first(), None | Some(b'-' | b']')) {
        return Err(());
    }
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
        if chunk.is_empty() {
            return Err(());
        }
    }
    // The pattern is UTF-8 and a member starts on a character.
    let len = match chunk[0] {
        0..0x80 => 1,
        0xc0..0xe0 => 2,
        0xe0..0xf0 => 3,
        _ => 4,
    };
    let r = std::str::from_utf8(chunk.get(..len).ok_or(())?).map_err(|_| ())?;
    let r = r.chars().next().ok_or(())?;
    let rest = &chunk[len..];
    if rest.is_empty() {
        return Err(());
    }
    Ok((r, rest))
}

/// Go's `utf8.DecodeRune` on a non-empty slice: an invalid sequence is `(U+FFFD, 1)`.
fn decode_rune(s: &[u8]) -> (char, usize) {
    let len = match s[0] {
        0..0x80 => 1,
        0xc2..0xe0 => 2,
        0xe0..0xf0 => 3,
        0xf0..0xf5 => 4,
        _ => return ('\u{fffd}', 1),
    };
    match s.get(..len).and_then(|b| std::str::from_utf8(b).ok()) {
        Some(c) => (c.chars().next().unwrap_or('\u{fffd}'), len),
        None => ('\u{fffd}', 1),
    }
}

/// dp[i][j]: pattern[i..] (`*` any run, other bytes literal) matches text[j..].
fn star_dp(pattern: &[u8], text: &[u8]) -> bool {
    let (n, m) = (pattern.len(), text.len());
    let mut dp = vec![vec![false; m + 1]; n + 1];
    dp[n][m] = true;
    for i in (0..n).rev() {
        for j in (0..=m).rev() {
            dp[i][j] = if pattern[i] == b'*' {
                dp[i + 1][j] || (j < m && dp[i][j + 1])
            } else {
                j < m && pattern[i] == text[j] && dp[i + 1][j + 1]
            };
        }
    }
    dp[0][0]
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let syntax = if first % 2 == 0 {
        Syntax::Path
    } else {
        Syntax::Star
    };
    let (pattern, text) = common::split2(rest);
    let (pattern, text) = (
        String::from_utf8_lossy(pattern),
        String::from_utf8_lossy(text),
    );

    let compiled = common::bounded(&(&pattern, syntax), || Pattern::new(&pattern, syntax));
    let got = match &compiled {
        Some(p) => common::bounded(&(&pattern, &text), || p.matches(&text)),
        None => false,
    };
    let direct = common::bounded(&(&pattern, &text), || {
        glob::matches(&pattern, syntax, &text)
    });
    assert_eq!(got, direct);

    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let fits = p.len() <= MAX_LEN && t.len() <= MAX_LEN;
    match syntax {
        Syntax::Path if !t.contains(&b'/') && (t.is_ascii() || !p.contains(&b'*')) => {
            let want = fits && go_match(p, t) == Ok(true);
            assert_eq!(
                got,
                want,
                "{pattern:?} vs {text:?}: Go {:?}",
                go_match(p, t)
            );
        }
        Syntax::Path => {}
        Syntax::Star => {
            if (p.len() + 1) * (t.len() + 1) <= 1 << 16 {
                assert_eq!(got, fits && star_dp(p, t), "{pattern:?} vs {text:?}");
            }
        }
    }

    let own = match syntax {
        Syntax::Path => escape(&text),
        Syntax::Star => text.to_string(),
    };
    if own.len() <= MAX_LEN {
        assert!(glob::matches(&own, syntax, &text), "{own:?} vs {text:?}");
    }
});
