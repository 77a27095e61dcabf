//! Which headers cross the gateway. The caller's credentials, cookies, hop-by-hop and
//! Cloudflare headers never go upstream; upstream's cookies and framing headers never come back.

/// Request headers that are never forwarded upstream (a name ending in `*` stands for every
/// name it begins), dropped by the runtime (`edge::header_edits`); the names a caller's
/// `Connection` header lists go too (`connection_tokens`).
pub const DROP_UPSTREAM: &[&str] = &[
    "cf-*",
    "x-forwarded-*",
    "proxy-*",
    "authorization",
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
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Response headers from upstream that the gateway does not pass back (a name ending in `*`
/// stands for every name it begins), dropped by the runtime (`edge::header_edits`).
pub const DROP_DOWNSTREAM: &[&str] = &[
    "cf-*",
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

/// The header names listed in a `Connection` header.
pub fn connection_tokens(value: Option<&str>) -> Vec<String> {
    value.unwrap_or("").split(',').map(|t| t.trim().to_ascii_lowercase()).filter(|t| !t.is_empty()).collect()
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
    fn connection_lists_hop_by_hop_names() {
        assert_eq!(connection_tokens(Some("keep-alive, X-Private,")), ["keep-alive", "x-private"]);
        assert!(connection_tokens(None).is_empty());
    }

    #[test]
    fn unsafe_values_are_spotted() {
        assert!(safe_value("abc-123", 64));
        assert!(!safe_value("a\r\nb", 64));
        assert!(!safe_value(&"a".repeat(65), 64));
    }
}
