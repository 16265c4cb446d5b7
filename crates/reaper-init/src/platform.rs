//! `REAPER_PLATFORM_ARGV`: one image, several architectures, a different argv for each.
//!
//! The webhook resolves an image index and cannot know which node the pod lands on, so it passes
//! `{"linux/amd64": ["/app"], "linux/arm64/v8": ["/app-arm"]}` and the reaper picks its own
//! platform at start. A small hand-written parser for exactly this shape (an object of arrays of
//! strings) keeps serde out of the init. Pure.

use std::ffi::CString;

/// An OCI platform (`os/arch[/variant]`, as in an image index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    pub os: &'static str,
    pub arch: &'static str,
    pub variant: Option<&'static str>,
}

/// The platform this binary was compiled for, in OCI names.
pub const CURRENT: Platform = Platform {
    os: OS,
    arch: ARCH,
    variant: VARIANT,
};

/// `linux` on Linux: Rust's and OCI's OS names agree.
const OS: &str = std::env::consts::OS;

#[cfg(target_arch = "x86_64")]
const ARCH: &str = "amd64";
#[cfg(target_arch = "aarch64")]
const ARCH: &str = "arm64";
#[cfg(target_arch = "arm")]
const ARCH: &str = "arm";
#[cfg(target_arch = "x86")]
const ARCH: &str = "386";
#[cfg(target_arch = "riscv64")]
const ARCH: &str = "riscv64";
#[cfg(all(target_arch = "powerpc64", target_endian = "little"))]
const ARCH: &str = "ppc64le";
#[cfg(target_arch = "s390x")]
const ARCH: &str = "s390x";
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "x86",
    target_arch = "riscv64",
    all(target_arch = "powerpc64", target_endian = "little"),
    target_arch = "s390x"
)))]
const ARCH: &str = std::env::consts::ARCH;

#[cfg(target_arch = "aarch64")]
const VARIANT: Option<&str> = Some("v8");
#[cfg(all(target_arch = "arm", target_feature = "v7"))]
const VARIANT: Option<&str> = Some("v7");
#[cfg(all(target_arch = "arm", not(target_feature = "v7")))]
const VARIANT: Option<&str> = Some("v6");
#[cfg(not(any(target_arch = "aarch64", target_arch = "arm")))]
const VARIANT: Option<&str> = None;

/// Keys in document order with their argv.
pub type PlatformMap = Vec<(String, Vec<CString>)>;

/// Where and why the JSON was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset into the variable's value.
    pub offset: usize,
    pub what: &'static str,
}

/// Parses `{"os/arch[/variant]": ["arg0", "arg1", ...], ...}`.
pub fn parse_map(input: &[u8]) -> Result<PlatformMap, JsonError> {
    if let Err(e) = std::str::from_utf8(input) {
        return Err(JsonError {
            offset: e.valid_up_to(),
            what: "not valid UTF-8",
        });
    }
    let mut p = Parser { s: input, pos: 0 };
    let map = p.object()?;
    p.ws();
    if p.pos != input.len() {
        return Err(p.err("unexpected text after the object"));
    }
    Ok(map)
}

/// The argv for `platform`: the most specific key first (`os/arch/variant`, then `os/arch`).
pub fn select<'m>(map: &'m PlatformMap, platform: &Platform) -> Option<(&'m str, &'m [CString])> {
    let short = [platform.os, platform.arch].join("/");
    let long = platform.variant.map(|v| [short.as_str(), v].join("/"));
    let find = |key: &str| {
        map.iter()
            .find(|(k, _)| k == key)
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    };
    long.as_deref().and_then(find).or_else(|| find(&short))
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError {
            offset: self.pos,
            what,
        }
    }

    fn ws(&mut self) {
        while matches!(self.s.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Skips whitespace, then consumes `b` if it is next.
    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.s.get(self.pos) == Some(&b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn object(&mut self) -> Result<PlatformMap, JsonError> {
        if !self.eat(b'{') {
            return Err(self.err("expected an object like {\"linux/amd64\": [\"/app\"]}"));
        }
        let mut map = PlatformMap::new();
        if self.eat(b'}') {
            return Ok(map);
        }
        loop {
            self.ws();
            let key = self.string()?;
            let key = String::from_utf8(key).map_err(|_| self.err("key is not valid UTF-8"))?;
            if !self.eat(b':') {
                return Err(self.err("expected ':' after the key"));
            }
            let argv = self.argv()?;
            map.push((key, argv));
            if self.eat(b',') {
                continue;
            }
            if self.eat(b'}') {
                return Ok(map);
            }
            return Err(self.err("expected ',' or '}'"));
        }
    }

    fn argv(&mut self) -> Result<Vec<CString>, JsonError> {
        if !self.eat(b'[') {
            return Err(self.err("expected an argv array of strings"));
        }
        let mut argv = Vec::new();
        if self.eat(b']') {
            return Err(self.err("an argv needs at least one string"));
        }
        loop {
            self.ws();
            let start = self.pos;
            let arg = self.string()?;
            let arg = CString::new(arg).map_err(|_| JsonError {
                offset: start,
                what: "argv strings cannot contain NUL",
            })?;
            argv.push(arg);
            if self.eat(b',') {
                continue;
            }
            if self.eat(b']') {
                return Ok(argv);
            }
            return Err(self.err("expected ',' or ']'"));
        }
    }

    /// A JSON string at the current position, unescaped.
    fn string(&mut self) -> Result<Vec<u8>, JsonError> {
        if self.s.get(self.pos) != Some(&b'"') {
            return Err(self.err("expected a string"));
        }
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.pos) else {
                return Err(self.err("unterminated string"));
            };
            self.pos += 1;
            match b {
                b'"' => return Ok(out),
                b'\\' => {
                    let Some(&e) = self.s.get(self.pos) else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.pos += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => {
                            self.pos -= 1;
                            return Err(self.err("unknown escape"));
                        }
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => {
                    self.pos -= 1;
                    return Err(self.err("control character in string (escape it)"));
                }
                _ => out.push(b),
            }
        }
    }

    /// After `\u`: four hex digits, or a surrogate pair `\uD83D\uDE00`.
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let hi = self.hex4()?;
        let code = match hi {
            0xD800..=0xDBFF => {
                if self.s.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    return Err(self.err("unpaired surrogate in \\u escape"));
                }
                self.pos += 2;
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(self.err("unpaired surrogate in \\u escape"));
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.err("unpaired surrogate in \\u escape")),
            _ => hi,
        };
        char::from_u32(code).ok_or(self.err("invalid \\u escape"))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .s
            .get(self.pos..self.pos + 4)
            .ok_or(self.err("short \\u escape"))?;
        let mut v = 0u32;
        for &d in digits {
            let n = (d as char)
                .to_digit(16)
                .ok_or(self.err("bad hex digit in \\u escape"))?;
            v = v * 16 + n;
        }
        self.pos += 4;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv_of(map: &PlatformMap, key: &str) -> Vec<String> {
        let (_, argv) = map
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no {key}"));
        argv.iter()
            .map(|a| a.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn parses_the_documented_shape() {
        let map = parse_map(
            br#" {
                "linux/amd64": ["/app", "--port", "80"],
                "linux/arm64/v8":["/app-arm"] ,
                "linux/arm/v7" : [ "/app-v7" , "x" ]
            } "#,
        )
        .unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(argv_of(&map, "linux/amd64"), ["/app", "--port", "80"]);
        assert_eq!(argv_of(&map, "linux/arm64/v8"), ["/app-arm"]);
        assert_eq!(argv_of(&map, "linux/arm/v7"), ["/app-v7", "x"]);
        assert!(parse_map(b"{}").unwrap().is_empty());
        assert!(parse_map(b"\t\r\n{ }\n").unwrap().is_empty());
    }

    #[test]
    fn unescapes_strings() {
        let map = parse_map(
            br#"{"k": ["a\"b", "c\\d", "e\/f", "\b\f\n\r\t", "\u00e9\u20AC", "\ud83d\ude00", "$(X) $$ 'q'", "caf\u00c3"]}"#,
        )
        .unwrap();
        assert_eq!(
            argv_of(&map, "k"),
            [
                "a\"b",
                "c\\d",
                "e/f",
                "\u{8}\u{c}\n\r\t",
                "é€",
                "😀",
                "$(X) $$ 'q'",
                "cafÃ"
            ]
        );
        // Raw UTF-8 passes through unchanged.
        let map = parse_map("{\"k\": [\"héllo wörld ✓\"]}".as_bytes()).unwrap();
        assert_eq!(argv_of(&map, "k"), ["héllo wörld ✓"]);
        // Escapes in keys too.
        let map = parse_map(br#"{"linux\/amd64": ["x"]}"#).unwrap();
        assert_eq!(argv_of(&map, "linux/amd64"), ["x"]);
    }

    #[test]
    fn refuses_garbage_with_a_position() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "expected an object"),
            (b"   ", "expected an object"),
            (b"[]", "expected an object"),
            (b"null", "expected an object"),
            (b"{", "expected a string"),
            (b"{\"k\"}", "expected ':'"),
            (b"{\"k\":}", "expected an argv array"),
            (b"{\"k\":\"x\"}", "expected an argv array"),
            (b"{\"k\":[]}", "at least one string"),
            (b"{\"k\":[1]}", "expected a string"),
            (b"{\"k\":[\"a\",]}", "expected a string"),
            (b"{\"k\":[\"a\"] \"j\":[\"b\"]}", "expected ',' or '}'"),
            (b"{\"k\":[\"a\" \"b\"]}", "expected ',' or ']'"),
            (b"{\"k\":[\"a\"]} x", "unexpected text"),
            (b"{\"k\":[\"a\"]}{}", "unexpected text"),
            (b"{\"k\":[\"a", "unterminated string"),
            (b"{\"k\":[\"a\\", "unterminated escape"),
            (b"{\"k\":[\"\\x\"]}", "unknown escape"),
            (b"{\"k\":[\"\\u12\"]}", "bad hex digit"),
            (b"{\"k\":[\"\\u12", "short"),
            (b"{\"k\":[\"\\uzzzz\"]}", "bad hex digit"),
            (b"{\"k\":[\"\\ud83d\"]}", "unpaired surrogate"),
            (b"{\"k\":[\"\\ud83dx\"]}", "unpaired surrogate"),
            (b"{\"k\":[\"\\ud83d\\u0041\"]}", "unpaired surrogate"),
            (b"{\"k\":[\"\\ude00\"]}", "unpaired surrogate"),
            (b"{\"k\":[\"a\\u0000b\"]}", "cannot contain NUL"),
            (b"{\"k\":[\"tab\there\"]}", "control character"),
            (b"{\"k\":[\"\xff\"]}", "not valid UTF-8"),
            (b"{'k':['a']}", "expected a string"),
            (b"{k:[\"a\"]}", "expected a string"),
        ];
        for &(input, want) in cases {
            match parse_map(input) {
                Ok(m) => panic!("{:?}: accepted as {m:?}", String::from_utf8_lossy(input)),
                Err(e) => {
                    assert!(
                        e.what.contains(want),
                        "{:?}: got {e:?}, want {want:?}",
                        String::from_utf8_lossy(input)
                    );
                    assert!(e.offset <= input.len());
                }
            }
        }
        let e = parse_map(b"{\"k\":[\"a\"] x}").unwrap_err();
        assert_eq!(e.offset, 11);
    }

    #[test]
    fn selects_the_most_specific_key() {
        let map = parse_map(
            br#"{"linux/arm64": ["generic"], "linux/arm64/v8": ["v8"], "linux/amd64": ["amd"], "linux/arm/v7": ["v7"], "linux/arm": ["arm"]}"#,
        )
        .unwrap();
        let p = |arch, variant| Platform {
            os: "linux",
            arch,
            variant,
        };
        let pick = |pl: Platform| {
            select(&map, &pl).map(|(k, a)| (k.to_owned(), a[0].to_str().unwrap().to_owned()))
        };
        assert_eq!(
            pick(p("arm64", Some("v8"))),
            Some(("linux/arm64/v8".into(), "v8".into()))
        );
        assert_eq!(
            pick(p("arm64", None)),
            Some(("linux/arm64".into(), "generic".into()))
        );
        assert_eq!(
            pick(p("amd64", None)),
            Some(("linux/amd64".into(), "amd".into()))
        );
        // An unknown variant falls back to the plain os/arch key.
        assert_eq!(
            pick(p("amd64", Some("v3"))),
            Some(("linux/amd64".into(), "amd".into()))
        );
        assert_eq!(
            pick(p("arm", Some("v6"))),
            Some(("linux/arm".into(), "arm".into()))
        );
        assert_eq!(
            pick(p("arm", Some("v7"))),
            Some(("linux/arm/v7".into(), "v7".into()))
        );
        assert_eq!(pick(p("s390x", None)), None);
        assert_eq!(
            pick(Platform {
                os: "windows",
                arch: "amd64",
                variant: None
            }),
            None
        );
        // Duplicate keys: the first one wins.
        let dup = parse_map(br#"{"linux/amd64": ["first"], "linux/amd64": ["second"]}"#).unwrap();
        let pl = p("amd64", None);
        assert_eq!(select(&dup, &pl).unwrap().1[0].to_str().unwrap(), "first");
    }

    #[test]
    fn current_platform_uses_oci_names() {
        assert_eq!(CURRENT.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!((CURRENT.arch, CURRENT.variant), ("amd64", None));
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!((CURRENT.arch, CURRENT.variant), ("arm64", Some("v8")));
        }
    }
}
