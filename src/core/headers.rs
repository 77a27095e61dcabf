//! Which headers cross the gateway. The caller's credentials, cookies, hop-by-hop and
//! Cloudflare headers never go upstream; upstream's cookies and framing headers never come back.

/// Request headers that are never forwarded upstream.
const DROP_UPSTREAM: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "origin",
    "referer",
    "x-api-key",
    "api-key",
    // billing is the gateway's decision, never the caller's
    "x-hf-bill-to",
    "content-length",
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    // hop-by-hop (RFC 9110 section 7.6.1)
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Response headers from upstream that the gateway does not pass back.
const DROP_DOWNSTREAM: &[&str] = &[
    "set-cookie",
    "content-length",
    "content-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "alt-svc",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-max-age",
];

/// Whether a caller's request header may go upstream. `connection_tokens` are the names listed
/// in the caller's `Connection` header, which are hop-by-hop too.
///
/// ```
/// use hf_gate::core::headers::forward_upstream;
/// assert!(forward_upstream("content-type", &[]));
/// assert!(!forward_upstream("Authorization", &[]));
/// assert!(!forward_upstream("cf-connecting-ip", &[]));
/// assert!(!forward_upstream("x-secret-hop", &["x-secret-hop".into()]));
/// ```
pub fn forward_upstream(name: &str, connection_tokens: &[String]) -> bool {
    let n = name.to_ascii_lowercase();
    !(DROP_UPSTREAM.contains(&n.as_str())
        || n.starts_with("cf-")
        || n.starts_with("x-forwarded-")
        || n.starts_with("proxy-")
        || connection_tokens.iter().any(|t| t.eq_ignore_ascii_case(&n)))
}

/// The header names listed in a `Connection` header.
pub fn connection_tokens(value: Option<&str>) -> Vec<String> {
    value.unwrap_or("").split(',').map(|t| t.trim().to_ascii_lowercase()).filter(|t| !t.is_empty()).collect()
}

/// Whether an upstream response header is passed back to the caller.
pub fn forward_downstream(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    !(DROP_DOWNSTREAM.contains(&n.as_str()) || n.starts_with("cf-"))
}

/// A header value the gateway will echo or forward: printable ASCII and tabs, bounded length.
/// (The runtime refuses CR/LF itself; this keeps odd bytes out of logs and ids too.)
pub fn safe_value(v: &str, max: usize) -> bool {
    v.len() <= max && v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Header edits written as one text, for the runtime to apply in one call
/// (`edge::header_edits`) instead of one call per header with both strings decoded each
/// time: three lines per edit, its kind (`d`elete, `s`et, `a`ppend), the name and the value.
/// An edit whose name or value holds a line break is left out, as the runtime would refuse
/// it (so no value can break the framing).
#[derive(Debug, Default)]
pub struct Edits(String);

impl Edits {
    pub fn delete(&mut self, name: &str) {
        self.push("d", name, "");
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.push("s", name, value);
    }

    pub fn append(&mut self, name: &str, value: &str) {
        self.push("a", name, value);
    }

    fn push(&mut self, kind: &str, name: &str, value: &str) {
        let breaks = |t: &str| t.bytes().any(|b| b == b'\n' || b == b'\r');
        if breaks(name) || breaks(value) {
            return;
        }
        for part in [kind, name, value] {
            self.0.push_str(part);
            self.0.push('\n');
        }
    }

    pub fn text(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_are_three_lines_each_and_line_breaks_never_pass() {
        let mut e = Edits::default();
        e.delete("set-cookie");
        e.set("x-request-id", "abc");
        e.append("vary", "Origin");
        e.set("x-evil", "a\r\nset-cookie: b");
        e.set("bad\nname", "v");
        assert_eq!(e.text(), "d\nset-cookie\n\ns\nx-request-id\nabc\na\nvary\nOrigin\n");
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_behind() {
        for h in [
            "authorization",
            "Cookie",
            "X-HF-Bill-To",
            "cf-ray",
            "CF-Connecting-IP",
            "x-forwarded-for",
            "Transfer-Encoding",
            "Host",
        ] {
            assert!(!forward_upstream(h, &[]), "{h} must not go upstream");
        }
        for h in ["content-type", "accept", "user-agent", "x-stainless-retry-count", "x-wait-for-model"] {
            assert!(forward_upstream(h, &[]), "{h} should go upstream");
        }
        let tokens = connection_tokens(Some("keep-alive, X-Private"));
        assert!(!forward_upstream("x-private", &tokens));
    }

    #[test]
    fn upstream_cookies_and_cors_do_not_come_back() {
        assert!(!forward_downstream("Set-Cookie"));
        assert!(!forward_downstream("access-control-allow-origin"));
        assert!(forward_downstream("x-request-id"));
        assert!(forward_downstream("content-type"));
    }

    #[test]
    fn unsafe_values_are_spotted() {
        assert!(safe_value("abc-123", 64));
        assert!(!safe_value("a\r\nb", 64));
        assert!(!safe_value(&"a".repeat(65), 64));
    }
}
