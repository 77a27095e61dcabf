//! Admin lists, a page at a time: `?limit=&cursor=` parsed and checked, and the page they get.
//!
//! KV lists in its own order and resumes only from its own cursor, so ours wraps that one,
//! tagged with the list it pages (the KV prefix) and a checksum: a cursor of another list, or
//! one cut short or mistyped, is the caller's 400 here, never the store's failure later.

use crate::core::error::GatewayError;
use crate::core::keys::{base64url, base64url_decode};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
/// Longer than any cursor the gateway gives out.
const MAX_CURSOR_LEN: usize = 4096;
const TAG_LEN: usize = 6;

/// What a caller asked of a list: how many, and from where (KV's cursor, unwrapped).
#[derive(Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<String>,
}

/// A page of the list under `prefix`, continued (if KV has more) from `store_cursor`:
/// `{"object":"list","data":[...],"has_more":bool,"next_cursor":string|null}`. (Built as a
/// map, not a derived `Serialize`: the bundle already carries the map code.)
pub fn page(prefix: &str, data: Vec<Value>, store_cursor: Option<&str>) -> Value {
    let next = store_cursor.map(|c| cursor(prefix, c));
    let mut body = Map::new();
    body.insert("object".into(), "list".into());
    body.insert("data".into(), data.into());
    body.insert("has_more".into(), next.is_some().into());
    body.insert("next_cursor".into(), next.into());
    body.into()
}

fn bad(why: &str) -> GatewayError {
    GatewayError::InvalidRequest(why.to_string())
}

fn tag(payload: &[u8]) -> [u8; TAG_LEN] {
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&Sha256::digest(payload)[..TAG_LEN]);
    t
}

/// The cursor handed out for resuming the list under `prefix` at KV's `store_cursor`.
pub fn cursor(prefix: &str, store_cursor: &str) -> String {
    let payload = format!("{prefix}\n{store_cursor}");
    let mut raw = tag(payload.as_bytes()).to_vec();
    raw.extend_from_slice(payload.as_bytes());
    base64url(&raw)
}

/// KV's cursor inside one of ours, if it is one this list gave out.
fn unwrap_cursor(prefix: &str, given: &str) -> Option<String> {
    if given.len() > MAX_CURSOR_LEN {
        return None;
    }
    let raw = base64url_decode(given)?;
    let (t, payload) = raw.split_at_checked(TAG_LEN)?;
    if t != tag(payload) {
        return None;
    }
    let rest = std::str::from_utf8(payload).ok()?.strip_prefix(prefix)?.strip_prefix('\n')?;
    (!rest.is_empty()).then(|| rest.to_string())
}

/// The query of a raw request URL (the runtime's string: parsing it with the `url` crate
/// would pull its IDNA tables into the bundle for two parameters).
///
/// ```
/// use hf_gate::core::listing::query;
/// assert_eq!(query("https://gw.example/admin/keys?limit=5#top"), "limit=5");
/// assert_eq!(query("https://gw.example/admin/keys"), "");
/// ```
pub fn query(url: &str) -> &str {
    let q = url.split_once('?').map_or("", |(_, q)| q);
    q.split_once('#').map_or(q, |(q, _)| q)
}

/// Reads `limit` (1 to 1000, default 100) and `cursor` from a raw query string, for the list
/// under `prefix`; other parameters are left to others. Neither needs percent-decoding: a
/// limit is digits, and a cursor is base64url.
///
/// ```
/// use hf_gate::core::listing::{cursor, page_request, PageRequest};
/// assert_eq!(page_request("", "id:"), Ok(PageRequest { limit: 100, after: None }));
/// let next = cursor("id:", "kv-cursor");
/// let asked = page_request(&format!("limit=20&cursor={next}"), "id:");
/// assert_eq!(asked, Ok(PageRequest { limit: 20, after: Some("kv-cursor".into()) }));
/// assert!(page_request(&format!("cursor={next}"), "org:").is_err());
/// ```
pub fn page_request(query: &str, prefix: &str) -> Result<PageRequest, GatewayError> {
    let (mut limit, mut after) = (None, None);
    for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
        match name {
            "limit" if limit.is_some() => return Err(bad("limit: give it once")),
            "limit" => {
                let n = value
                    .parse()
                    .ok()
                    .filter(|n| value.bytes().all(|b| b.is_ascii_digit()) && (1..=MAX_LIMIT).contains(n));
                limit = Some(n.ok_or_else(|| bad("limit: a whole number from 1 to 1000"))?);
            }
            "cursor" if after.is_some() => return Err(bad("cursor: give it once")),
            "cursor" => {
                let c = unwrap_cursor(prefix, value);
                after = Some(c.ok_or_else(|| bad("cursor: not one this list gave out; start again without it"))?);
            }
            _ => {}
        }
    }
    Ok(PageRequest { limit: limit.unwrap_or(DEFAULT_LIMIT), after })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(q: &str) -> Result<u32, GatewayError> {
        page_request(q, "id:").map(|p| p.limit)
    }

    #[test]
    fn limit_defaults_to_100_and_takes_1_to_1000() {
        assert_eq!(limit(""), Ok(100));
        assert_eq!(limit("foo=bar&limit=1"), Ok(1));
        assert_eq!(limit("limit=1000"), Ok(1000));
        assert_eq!(limit("limit"), Ok(100), "a bare name with no value is not a limit");
    }

    #[test]
    fn a_bad_limit_is_an_invalid_request() {
        for q in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=+5",
            "limit=",
            "limit=1e3",
            "limit=99999999999",
            "limit=5&limit=5",
        ] {
            let e = limit(q).expect_err(q);
            assert_eq!((e.status(), e.code()), (400, "invalid_request"), "{q}");
            assert!(e.to_string().contains("limit"), "{q}: {e}");
        }
    }

    #[test]
    fn a_cursor_resumes_the_list_that_gave_it_and_no_other() {
        let c = cursor("ok:acme:", "opaque/kv+cursor==");
        assert!(c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "needs no URL escaping");
        let back = page_request(&format!("cursor={c}"), "ok:acme:").map(|p| p.after);
        assert_eq!(back, Ok(Some("opaque/kv+cursor==".into())));
        for other in ["ok:acme2:", "ok:", "id:", "org:"] {
            assert!(page_request(&format!("cursor={c}"), other).is_err(), "{other}");
        }
    }

    #[test]
    fn a_cursor_cut_short_or_altered_is_refused() {
        let c = cursor("id:", "AAAAAAAAAAAAAAAAAAAA");
        let mut altered = c.clone().into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'B' { b'C' } else { b'B' };
        let altered = String::from_utf8(altered).unwrap();
        for q in [
            format!("cursor={}", &c[..c.len() - 1]),
            format!("cursor={}", &c[..c.len() - 4]),
            format!("cursor={altered}"),
            "cursor=".into(),
            "cursor=%2Fx".into(),
            format!("cursor={}", cursor("id:", "")),
            format!("cursor={}", "A".repeat(MAX_CURSOR_LEN + 4)),
            format!("cursor={c}&cursor={c}"),
        ] {
            let e = page_request(&q, "id:").expect_err(&q);
            assert_eq!(e.code(), "invalid_request", "{q}");
            assert!(e.to_string().contains("cursor"), "{q}: {e}");
        }
    }

    #[test]
    fn a_page_has_more_exactly_when_it_hands_out_a_cursor() {
        let last = page("id:", vec![1.into(), 2.into()], None);
        assert_eq!(last, serde_json::json!({"object": "list", "data": [1, 2], "has_more": false, "next_cursor": null}));
        let more = page("id:", vec![1.into()], Some("kv"));
        assert_eq!(more["has_more"], true);
        let next = more["next_cursor"].as_str().unwrap();
        assert_eq!(page_request(&format!("cursor={next}"), "id:").unwrap().after.as_deref(), Some("kv"));
    }
}
