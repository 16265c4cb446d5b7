//! What a registry may make the webhook do (pure): a registry is untrusted input, since any pod may
//! name any registry. It chooses where tokens come from (the `WWW-Authenticate` realm), where
//! requests are redirected, and what text comes back; these rules keep that from reaching the
//! webhook's own network (loopback, link-local, cloud metadata), from downgrading https to plain
//! http, and from reaching users as anything but a short, plain-text reason.
use registry_http::Url;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Redirects followed per request (registries send one, to blob storage).
pub const MAX_REDIRECTS: usize = 5;
/// Longest upstream text (error bodies, header values) put in a message a user sees.
pub const MAX_REASON_CHARS: usize = 200;

/// Cloud metadata services (AWS IPv6 IMDS; Alibaba Cloud). The common one, 169.254.169.254, is
/// link-local anyway.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
const METADATA_ALIBABA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Why the webhook must not be sent to `ip` by a registry, if it must not: the addresses that
/// reach the webhook's own pod or node, or cloud credentials.
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        // `::ffff:127.0.0.1` reaches 127.0.0.1.
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            if v4 == METADATA_V4 || v4 == METADATA_ALIBABA {
                Some("cloud metadata")
            } else if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.octets()[0] == 0 {
                // 0.0.0.0/8: Linux connects 0.0.0.0 to the local host.
                Some("unspecified")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6 == METADATA_V6 {
                Some("cloud metadata")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unicast_link_local() {
                Some("link-local")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else {
                None
            }
        }
    }
}

/// The literal IP address of a URL's host, if it is one.
fn literal_ip(url: &Url) -> Option<IpAddr> {
    // The URL parser normalises hosts (`0x7f.1` is 127.0.0.1, IPv6 in brackets), so a literal
    // address always serialises as one.
    let h = url.host_str()?;
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    h.parse().ok()
}

/// Whether two URLs name the same host (ports aside), compared as parsed (case, IPv6 spelling).
fn same_host(a: &Url, b: &Url) -> bool {
    a.host_str().is_some() && a.host_str() == b.host_str()
}

/// The URL of a registry (`host[:port]` as in image references) for host comparisons.
fn registry_url(registry: &str) -> Option<Url> {
    Url::parse(&format!("http://{registry}/")).ok()
}

/// A token realm the webhook may ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Realm {
    pub url: Url,
    /// On the registry's own host (any port): the registry vouches for its own host, so the
    /// address rules do not apply (a registry on loopback with its token server next to it).
    pub same_host: bool,
}

/// Check the realm a registry's `WWW-Authenticate: Bearer realm="..."` sends the webhook to:
/// https unless the registry is one of `--insecure-registries`; on another host than the
/// registry, never a literal loopback, link-local, unspecified or metadata address (host names
/// are checked when they are resolved, see `client`). The error says why, for the user.
pub fn check_realm(realm: &str, registry: &str, insecure: bool) -> Result<Realm, String> {
    let shown = sanitize_reason(realm);
    let url = Url::parse(realm).map_err(|_| format!("its token realm {shown:?} is not a URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if insecure => {}
        "http" => {
            return Err(format!(
                "its token realm {shown:?} is plain http while the registry is not in --insecure-registries"
            ));
        }
        _ => return Err(format!("its token realm {shown:?} is not an http(s) URL")),
    }
    if url.host().is_none() {
        return Err(format!("its token realm {shown:?} names no host"));
    }
    let same_host = registry_url(registry).is_some_and(|r| same_host(&r, &url));
    if !same_host
        && let Some(ip) = literal_ip(&url)
        && let Some(kind) = forbidden_address(ip)
    {
        return Err(format!(
            "its token realm {shown:?} is a {kind} address on another host than the registry"
        ));
    }
    Ok(Realm { url, same_host })
}

/// Whether to follow a redirect from the last of `previous` (the first is the URL asked for) to
/// `next`: at most [`MAX_REDIRECTS`], never from https to anything else, and never to a literal
/// loopback, link-local or metadata address on another host than the one first asked.
pub fn check_redirect(previous: &[Url], next: &Url) -> Result<(), String> {
    if previous.len() > MAX_REDIRECTS {
        return Err(format!("more than {MAX_REDIRECTS} redirects"));
    }
    let shown = sanitize_reason(next.as_str());
    if !matches!(next.scheme(), "http" | "https") {
        return Err(format!("refused a redirect to {shown:?}: not http(s)"));
    }
    if previous.last().is_some_and(|p| p.scheme() == "https") && next.scheme() != "https" {
        return Err(format!(
            "refused a redirect from https to plain http ({shown:?})"
        ));
    }
    let origin_host = previous.first().is_some_and(|o| same_host(o, next));
    if !origin_host
        && let Some(ip) = literal_ip(next)
        && let Some(kind) = forbidden_address(ip)
    {
        return Err(format!(
            "refused a redirect to a {kind} address ({shown:?})"
        ));
    }
    Ok(())
}

/// Upstream text (an error body, a header value) made fit for a message a user sees: HTML tags
/// (and script/style contents) dropped, control and bidi/format characters turned into spaces,
/// whitespace collapsed, at most [`MAX_REASON_CHARS`] characters (ending in `…` when cut).
pub fn sanitize_reason(raw: &str) -> String {
    // Only the start can be shown: bound the work on a large body.
    let raw = &raw[..raw.floor_char_boundary(MAX_SCANNED_BYTES)];
    let text = strip_tags(raw);
    let mut out = String::new();
    let mut chars = 0;
    let separators = |c: char| c.is_whitespace() || c.is_control() || is_format(c);
    for word in text.split(separators).filter(|w| !w.is_empty()) {
        if chars > 0 {
            out.push(' ');
            chars += 1;
        }
        out.push_str(word);
        chars += word.chars().count();
        if chars > MAX_REASON_CHARS {
            break;
        }
    }
    if chars <= MAX_REASON_CHARS {
        return out;
    }
    let mut cut: String = out.chars().take(MAX_REASON_CHARS - 1).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// Bytes of upstream text looked at by [`sanitize_reason`].
const MAX_SCANNED_BYTES: usize = 64 * 1024;

/// Unicode format characters that reorder or hide text (bidi controls, zero-width characters).
fn is_format(c: char) -> bool {
    matches!(c, '\u{00ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// Text outside `<...>` tags, without the contents of `<script>` and `<style>` elements. A `<`
/// not followed by a tag-like character is kept (`a < b`).
fn strip_tags(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(4096));
    let mut rest = raw;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let tagish = after
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '/' | '!' | '?'));
        if !tagish {
            out.push('<');
            rest = after;
            continue;
        }
        let Some(end) = after.find('>') else {
            // An unterminated tag: drop the rest.
            return out;
        };
        let name: String = after[..end]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        out.push(' ');
        rest = &after[end + 1..];
        if name == "script" || name == "style" {
            let close = format!("</{name}");
            match find_ignore_case(rest, &close) {
                Some(j) => rest = &rest[j..],
                None => return out,
            }
        }
    }
    out.push_str(rest);
    out
}

/// Byte offset of `needle` (ASCII) in `hay`, ignoring ASCII case; linear in what it skips.
fn find_ignore_case(hay: &str, needle: &str) -> Option<usize> {
    hay.as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forbidden_addresses() {
        for (a, want) in [
            ("127.0.0.1", Some("loopback")),
            ("127.9.9.9", Some("loopback")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("169.254.169.254", Some("cloud metadata")),
            ("::ffff:169.254.169.254", Some("cloud metadata")),
            ("fd00:ec2::254", Some("cloud metadata")),
            ("100.100.100.200", Some("cloud metadata")),
            ("169.254.1.2", Some("link-local")),
            ("fe80::1", Some("link-local")),
            ("febf::1", Some("link-local")),
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("unspecified")),
            ("::", Some("unspecified")),
            // Cluster and public addresses are fine: registries live there.
            ("10.0.0.1", None),
            ("192.168.1.1", None),
            ("100.100.100.201", None),
            ("8.8.8.8", None),
            ("fd00:ec2::253", None),
            ("fec0::1", None),
            ("2001:db8::1", None),
        ] {
            assert_eq!(forbidden_address(ip(a)), want, "{a}");
        }
    }

    #[test]
    fn realms() {
        let ok = |realm: &str, registry: &str, insecure: bool| {
            check_realm(realm, registry, insecure).unwrap_or_else(|e| panic!("{realm}: {e}"))
        };
        let refused = |realm: &str, registry: &str, insecure: bool, why: &str| {
            let e = check_realm(realm, registry, insecure).unwrap_err();
            assert!(e.contains(why), "{realm} from {registry}: {e}");
        };
        let r = ok("https://auth.docker.io/token", "index.docker.io", false);
        assert!(!r.same_host);
        assert_eq!(r.url.host_str(), Some("auth.docker.io"));
        // Plain http only for --insecure-registries.
        refused(
            "http://auth.example.com/token",
            "reg.example.com",
            false,
            "plain http",
        );
        ok(
            "http://auth.example.com/token",
            "reg.example.com:5000",
            true,
        );
        refused(
            "ftp://x/token",
            "reg.example.com",
            true,
            "not an http(s) URL",
        );
        refused("file:///etc/passwd", "r", true, "not an http(s) URL");
        refused("/token", "r", true, "not a URL");
        // Loopback, link-local and metadata literals on another host: refused.
        for realm in [
            "https://127.0.0.1/token",
            "https://[::1]:8443/token",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/",
            "http://[::ffff:127.0.0.1]/t",
            "http://0.0.0.0:5001/token",
            "http://[fe80::1]/t",
            // Other spellings of 127.0.0.1 are normalised by the URL parser.
            "http://0x7f.1/t",
            "http://2130706433/t",
        ] {
            refused(realm, "10.1.2.3:5000", true, "address on another host");
        }
        // The registry's own host (any port) is allowed, whatever it is.
        let r = ok("http://127.0.0.1:5001/token", "127.0.0.1:5000", true);
        assert!(r.same_host);
        assert!(ok("https://LOCALHOST:9/t", "localhost:5000", false).same_host);
        assert!(ok("https://[::1]:9/t", "[0:0::1]:5000", false).same_host);
        // But another loopback spelling is another host.
        refused(
            "http://127.0.0.2:5001/token",
            "127.0.0.1:5000",
            true,
            "loopback",
        );
        // A name is not resolved here (the guarded client does it at connect time).
        assert!(!ok("http://localhost:1/t", "127.0.0.1:5000", true).same_host);
        // What the registry wrote is shown sanitized.
        let e = check_realm("http://x/\u{1b}[31m<b>evil</b>", "r", false).unwrap_err();
        assert!(!e.contains('\u{1b}') && !e.contains("<b>"), "{e}");
    }

    fn urls(list: &[&str]) -> Vec<Url> {
        list.iter().map(|u| Url::parse(u).unwrap()).collect()
    }

    #[test]
    fn redirects() {
        let next = |u: &str| Url::parse(u).unwrap();
        let from = urls(&["https://reg.example.com/v2/a/blobs/sha256:1"]);
        check_redirect(&from, &next("https://cdn.example.net/blob?sig=1")).unwrap();
        let e = check_redirect(&from, &next("http://cdn.example.net/blob")).unwrap_err();
        assert!(e.contains("from https to plain http"), "{e}");
        // Plain http registries (--insecure-registries) may redirect to http, and to https.
        let plain = urls(&["http://10.0.0.1:5000/v2/a/blobs/sha256:1"]);
        check_redirect(&plain, &next("http://10.0.0.2:9000/b")).unwrap();
        check_redirect(&plain, &next("https://s3.example.com/b")).unwrap();
        // Once on https, no way back.
        let up = urls(&[
            "http://10.0.0.1:5000/v2/a/blobs/sha256:1",
            "https://s3.example.com/b",
        ]);
        assert!(check_redirect(&up, &next("http://s3.example.com/c")).is_err());
        // Loopback/metadata literals only on the host first asked.
        let e =
            check_redirect(&from, &next("https://169.254.169.254/latest/meta-data")).unwrap_err();
        assert!(e.contains("cloud metadata"), "{e}");
        assert!(check_redirect(&plain, &next("http://127.0.0.1:9000/b")).is_err());
        let local = urls(&["http://127.0.0.1:5000/v2/a/blobs/sha256:1"]);
        check_redirect(&local, &next("http://127.0.0.1:9000/b")).unwrap();
        assert!(check_redirect(&from, &next("file:///etc/passwd")).is_err());
        // At most MAX_REDIRECTS.
        let mut chain = vec!["http://10.0.0.1/0".to_string()];
        for i in 1..=MAX_REDIRECTS {
            let prev = urls(&chain.iter().map(String::as_str).collect::<Vec<_>>());
            check_redirect(&prev, &next(&format!("http://10.0.0.1/{i}"))).unwrap();
            chain.push(format!("http://10.0.0.1/{i}"));
        }
        let prev = urls(&chain.iter().map(String::as_str).collect::<Vec<_>>());
        let e = check_redirect(&prev, &next("http://10.0.0.1/x")).unwrap_err();
        assert!(e.contains("more than 5 redirects"), "{e}");
    }

    #[test]
    fn reasons_are_short_plain_text() {
        assert_eq!(sanitize_reason("  busy \n"), "busy");
        assert_eq!(sanitize_reason(""), "");
        assert_eq!(sanitize_reason("a < b and c>d"), "a < b and c>d");
        let page = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title>\
            <style>body { color: red }</style><script>alert(1)</script></head>\
            <body><h1>502 Bad Gateway</h1><hr><center>nginx</center></body></html>";
        assert_eq!(
            sanitize_reason(page),
            "502 Bad Gateway 502 Bad Gateway nginx"
        );
        // Terminal escapes, bidi overrides, NULs: gone.
        assert_eq!(
            sanitize_reason("red\u{1b}[31m\u{0}x\u{202e}gnp.exe\r\nnext"),
            "red [31m x gnp.exe next"
        );
        // Unterminated tags do not leak what follows.
        assert_eq!(sanitize_reason("oops <script src=x"), "oops");
        // Long text is cut to MAX_REASON_CHARS characters, on a character boundary.
        let long = "é".repeat(10_000);
        let s = sanitize_reason(&long);
        assert_eq!(s.chars().count(), MAX_REASON_CHARS);
        assert!(s.ends_with('…'));
        let exact = "x".repeat(MAX_REASON_CHARS);
        assert_eq!(sanitize_reason(&exact), exact);
        let over = format!("{exact} y");
        let s = sanitize_reason(&over);
        assert_eq!(s.chars().count(), MAX_REASON_CHARS);
        assert!(s.ends_with("x…"), "{s}");
        // Many spaces do not count.
        let spaced = format!("a{}b", " \t".repeat(5000));
        assert_eq!(sanitize_reason(&spaced), "a b");
    }
}
