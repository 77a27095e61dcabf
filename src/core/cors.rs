//! CORS decisions for browser frontends.
//!
//! An origin is allowed if the `CORS_ORIGINS` setting lists it (or is `*`), or if a browser
//! key lists it in `allowed_origins`. Preflights are answered before authentication; the
//! actual request of a browser key is then pinned to that key's own origins.

/// Methods a page may use.
pub const ALLOW_METHODS: &str = "GET, POST, PATCH, DELETE, OPTIONS";

/// Request headers a page may send: what the `openai` and `@huggingface/inference` browser
/// builds send, plus the HF options headers.
pub const ALLOW_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "accept",
    "user-agent",
    "x-hf-bill-to",
    "x-request-id",
    "x-use-cache",
    "x-wait-for-model",
    "openai-organization",
    "openai-project",
    "idempotency-key",
    "x-stainless-arch",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
    "x-stainless-helper-method",
    "x-stainless-poll-helper",
];

/// Response headers a page script may read.
pub const EXPOSE_HEADERS: &str =
    "retry-after, retry-after-ms, ratelimit, ratelimit-policy, x-request-id, x-should-retry, x-upstream, server-timing, x-hfgate-max-tokens";

pub const MAX_AGE_SECS: &str = "86400";

/// The `CORS_ORIGINS` setting.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Origins {
    #[default]
    None,
    Any,
    List(Vec<String>),
}

impl Origins {
    /// Parses `*`, or a comma-separated list of origins (`https://app.example`,
    /// `http://localhost:5173`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Origins::None);
        }
        if s == "*" {
            return Ok(Origins::Any);
        }
        let list = s
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(normalise_origin)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Origins::List(list))
    }

    pub fn contains(&self, origin: &str) -> bool {
        match self {
            Origins::None => false,
            Origins::Any => true,
            Origins::List(l) => l.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

/// Checks an origin's shape (`scheme://host[:port]`, nothing after) and lowercases it.
///
/// ```
/// use hf_gate::core::cors::normalise_origin;
/// assert_eq!(normalise_origin("https://App.Example").unwrap(), "https://app.example");
/// assert!(normalise_origin("https://app.example/path").is_err());
/// assert!(normalise_origin("app.example").is_err());
/// ```
pub fn normalise_origin(o: &str) -> Result<String, String> {
    let lower = o.trim().to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| format!("origin {o:?} must start with http:// or https://"))?;
    let ok = !rest.is_empty()
        && rest.len() <= 253
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !ok {
        return Err(format!("origin {o:?} must be scheme://host[:port] with nothing after"));
    }
    Ok(lower)
}

/// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed by
/// the global setting or by `extra` (a browser key's own origins).
pub fn allow_origin(global: &Origins, extra: &[String], origin: Option<&str>) -> Option<String> {
    let origin = origin?;
    let allowed = global.contains(origin) || extra.iter().any(|o| o.eq_ignore_ascii_case(origin));
    allowed.then(|| origin.to_string())
}

/// Whether a browser key may be used for this request: only with an `Origin` it lists.
pub fn key_permits(allowed_origins: &[String], origin: Option<&str>) -> bool {
    allowed_origins.is_empty() || origin.is_some_and(|o| allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o)))
}

/// `Access-Control-Allow-Headers` for a preflight: the known list, plus whatever else the page
/// asked for that is a plain header name (so new SDK headers do not break pages).
pub fn allow_headers(requested: Option<&str>) -> String {
    let mut out: Vec<String> = ALLOW_HEADERS.iter().map(|h| h.to_string()).collect();
    for h in requested.unwrap_or("").split(',').map(|h| h.trim().to_ascii_lowercase()) {
        let token = !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if token && !out.contains(&h) && out.len() < 64 {
            out.push(h);
        }
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_key_origins_both_allow() {
        let g = Origins::parse("https://a.example, http://localhost:5173").unwrap();
        assert_eq!(allow_origin(&g, &[], Some("https://a.example")), Some("https://a.example".into()));
        assert_eq!(allow_origin(&g, &[], Some("https://b.example")), None);
        assert_eq!(
            allow_origin(&g, &["https://b.example".into()], Some("https://b.example")),
            Some("https://b.example".into())
        );
        assert_eq!(allow_origin(&Origins::Any, &[], Some("https://z.example")), Some("https://z.example".into()));
        assert_eq!(allow_origin(&Origins::Any, &[], None), None);
    }

    #[test]
    fn browser_keys_need_their_own_origin() {
        let mine = vec!["https://app.example".to_string()];
        assert!(key_permits(&mine, Some("https://app.example")));
        assert!(!key_permits(&mine, Some("https://evil.example")));
        assert!(!key_permits(&mine, None));
        assert!(key_permits(&[], None));
    }

    #[test]
    fn preflight_headers_cover_the_sdks_and_refuse_junk() {
        let h = allow_headers(Some("X-Stainless-OS, x-new-thing, bad header, a\r\nb"));
        assert!(h.contains("authorization") && h.contains("x-stainless-os") && h.contains("x-new-thing"));
        assert!(!h.contains("bad header"));
        assert!(!h.contains('\r'));
    }

    #[test]
    fn bad_origin_settings_say_what_is_wrong() {
        assert!(Origins::parse("https://ok.example,ftp://x").unwrap_err().contains("ftp://x"));
        assert_eq!(Origins::parse("").unwrap(), Origins::None);
    }
}
