//! `ENDPOINTS`: dedicated Inference Endpoints the gateway reaches at `/endpoints/{name}/...`.
//!
//! A dedicated endpoint is the operator's own deployment, with its own URL, often its own
//! token and its own price (by the hour of hardware, or per token). Naming each one in a
//! setting keeps the gateway no open proxy: a caller names an endpoint, never a URL.
//!
//! Shape: `{"mine": {"url": "https://xyz.endpoints.huggingface.cloud", "token_secret":
//! "MY_ENDPOINT_TOKEN", "price": {"per_hour": 1.8}}}`; `token_secret` and `price` are
//! optional, `price` is `{"per_hour": USD}` or `{"input": USD, "output": USD}` per 1M tokens,
//! and unknown fields are refused so a typo cannot silently make an endpoint free.

use crate::core::keys::valid_slug;
use crate::core::paths::check_path;
use crate::core::pricing::{ComputePrice, Price};
use crate::core::setting_json::{kind, Fields};
use serde_json::Value;

/// Endpoint names are slugs of at most this many bytes.
pub use crate::core::paths::MAX_ENDPOINT_NAME_LEN;
/// The dearest hourly price accepted, in USD.
pub const MAX_USD_PER_HOUR: f64 = 10_000.0;
/// The dearest token price accepted, in USD per 1M tokens (as `PRICES` allows).
pub const MAX_USD_PER_MILLION: f64 = 1e6;
/// Secrets of the gateway itself, never sent to an endpoint: a `token_secret` naming one is
/// most likely a slip, and would hand the admin token (or the key that seals provider keys)
/// to whoever runs the endpoint.
pub const RESERVED_SECRETS: &[&str] = &["ADMIN_TOKEN", "PROVIDER_KEY_SECRET", "ALERT_WEBHOOK_SECRET"];

/// What a call to an endpoint costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointPrice {
    /// No price configured: calls are metered at nothing.
    Free,
    /// Hardware time, in nano-USD per second (`per_hour / 3600`), billed by elapsed time.
    PerHour(ComputePrice),
    /// Per token, like a model in `PRICES`.
    Tokens(Price),
}

/// One configured endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    /// The base URL, `http(s)://host[:port][/path]`, without a trailing `/`.
    pub url: String,
    /// The environment variable holding its token; `None` means the gateway's `HF_TOKEN`.
    pub token_secret: Option<String>,
    pub price: EndpointPrice,
}

/// The parsed `ENDPOINTS` setting.
///
/// ```
/// use hf_gate::core::endpoints::{EndpointPrice, Endpoints};
/// use hf_gate::core::pricing::ComputePrice;
/// let e = Endpoints::parse(r#"{"mine": {"url": "https://xyz.endpoints.huggingface.cloud",
///   "token_secret": "MY_ENDPOINT_TOKEN", "price": {"per_hour": 1.8}}}"#).unwrap();
/// let mine = e.get("mine").unwrap();
/// assert_eq!(mine.token_secret.as_deref(), Some("MY_ENDPOINT_TOKEN"));
/// assert_eq!(mine.price, EndpointPrice::PerHour(ComputePrice(500_000))); // $0.0005 a second
/// assert!(e.get("yours").is_none());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Sorted by name, searched by halves: a handful of entries, where a map of its own
    /// would be one more BTreeMap instance in the bundle.
    by_name: Vec<Endpoint>,
}

/// A `price` as given: `{"per_hour": USD}` or `{"input": USD, "output": USD}`.
struct RawPrice {
    per_hour: Option<f64>,
    input: Option<f64>,
    output: Option<f64>,
}

impl Endpoints {
    /// Parses the `ENDPOINTS` JSON object. Every error names the endpoint it is about.
    pub fn parse(json: &str) -> Result<Endpoints, String> {
        let shape = "expected {\"name\": {\"url\": \"https://...\", ...}}";
        let raw = match serde_json::from_slice(json.as_bytes()).map_err(|e| format!("{shape}: {e}"))? {
            Value::Object(map) => map,
            other => return Err(format!("{shape}: invalid type: {}, expected a map", kind(&other))),
        };
        // a Map iterates in name order, so `by_name` comes out sorted
        let mut by_name = Vec::with_capacity(raw.len());
        for (name, value) in raw {
            if !valid_slug(&name, MAX_ENDPOINT_NAME_LEN) {
                return Err(format!("endpoint name {name:?} must be 1 to {MAX_ENDPOINT_NAME_LEN} of [A-Za-z0-9._-]"));
            }
            let raw = raw_endpoint(&value).map_err(|e| {
                format!("endpoint {name}: expected {{\"url\": \"https://...\", \"token_secret\"?, \"price\"?}}: {e}")
            })?;
            let url = parse_base_url(raw.url).map_err(|e| format!("endpoint {name}: url {e}"))?;
            let token_secret = raw.token_secret.map(|s| check_secret_name(&name, s.to_string())).transpose()?;
            let price = raw.price.map_or(Ok(EndpointPrice::Free), |p| parse_price(&name, p))?;
            by_name.push(Endpoint { name, url, token_secret, price });
        }
        Ok(Endpoints { by_name })
    }

    /// No endpoints configured.
    pub fn empty() -> Self {
        Endpoints::default()
    }

    pub fn get(&self, name: &str) -> Option<&Endpoint> {
        self.by_name.binary_search_by(|e| e.name.as_str().cmp(name)).ok().and_then(|at| self.by_name.get(at))
    }
}

/// One endpoint's object as given, refused whole if it has a field it should not.
struct RawEndpoint<'v> {
    url: &'v str,
    token_secret: Option<&'v str>,
    price: Option<RawPrice>,
}

fn raw_endpoint(v: &Value) -> Result<RawEndpoint<'_>, String> {
    let fields = Fields::of(v, &["url", "token_secret", "price"])?;
    let url = fields.text("url")?.ok_or("missing field `url`")?;
    let price = match fields.get("price") {
        None => None,
        Some(p) => {
            let p = Fields::of(p, &["per_hour", "input", "output"]).map_err(|e| format!("price: {e}"))?;
            let number = |name| p.number(name).map_err(|e| format!("price: {e}"));
            Some(RawPrice { per_hour: number("per_hour")?, input: number("input")?, output: number("output")? })
        }
    };
    Ok(RawEndpoint { url, token_secret: fields.text("token_secret")?, price })
}

/// Checks a base URL a call may be sent to: `http` or `https`, a host (`name` or `[v6]`,
/// with an optional port), an optional path that passes `paths::check_path`, and no query,
/// fragment, user info or backslash. Returns it with trailing `/`s trimmed.
///
/// ```
/// use hf_gate::core::endpoints::parse_base_url;
/// assert_eq!(parse_base_url(" https://h.example:8443/base/ ").as_deref(), Ok("https://h.example:8443/base"));
/// assert!(parse_base_url("https://user@h.example").is_err());
/// assert!(parse_base_url("ftp://h.example").is_err());
/// ```
pub fn parse_base_url(v: &str) -> Result<String, String> {
    let base = v.trim().trim_end_matches('/');
    let rest = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"))
        .ok_or_else(|| "must be an http(s) URL".to_string())?;
    if !rest.bytes().all(|b| b.is_ascii_graphic()) || rest.contains(['?', '#', '@', '\\']) {
        return Err("must have no spaces, query, fragment or user info".into());
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
    if !valid_authority(authority) {
        return Err("must have a host name (and optionally a port)".into());
    }
    if !path.is_empty() && check_path(path).is_err() {
        return Err("has a path that is not plain".into());
    }
    Ok(base.to_string())
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, with a port of 1 to 65535.
fn valid_authority(authority: &str) -> bool {
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let Some((addr, after)) = v6.split_once(']') else { return false };
            let addr_ok = !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return false,
                },
            };
            (addr_ok, port)
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            let host_ok = !host.is_empty()
                && !host.starts_with(['.', '-'])
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            (host_ok, port)
        }
    };
    let port_ok = |p: &str| {
        (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65_535).contains(&n))
    };
    host_ok && port.is_none_or(port_ok)
}

/// An environment variable name `[A-Z][A-Z0-9_]{0,63}`, not one of the gateway's own secrets.
fn check_secret_name(endpoint: &str, s: String) -> Result<String, String> {
    let mut bytes = s.bytes();
    let well_formed = s.len() <= 64
        && bytes.next().is_some_and(|b| b.is_ascii_uppercase())
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !well_formed {
        return Err(format!("endpoint {endpoint}: token_secret {s:?} must be a variable name like MY_ENDPOINT_TOKEN"));
    }
    if RESERVED_SECRETS.contains(&s.as_str()) {
        return Err(format!("endpoint {endpoint}: token_secret may not be the gateway's own {s}"));
    }
    Ok(s)
}

fn parse_price(endpoint: &str, p: RawPrice) -> Result<EndpointPrice, String> {
    let in_range = |v: f64, max: f64| -> Result<f64, String> {
        if v.is_finite() && (0.0..=max).contains(&v) {
            Ok(v)
        } else {
            Err(format!("endpoint {endpoint}: a price must be between 0 and {max} USD"))
        }
    };
    match (p.per_hour, p.input, p.output) {
        (Some(h), None, None) => {
            let per_hour = in_range(h, MAX_USD_PER_HOUR)?;
            Ok(EndpointPrice::PerHour(ComputePrice((per_hour * 1e9 / 3600.0).round() as u64)))
        }
        (None, Some(i), Some(o)) => {
            let micro = |v: f64| in_range(v, MAX_USD_PER_MILLION).map(|v| (v * 1e6).round() as u64);
            Ok(EndpointPrice::Tokens(Price { input: micro(i)?, output: micro(o)? }))
        }
        _ => Err(format!(
            "endpoint {endpoint}: price must be {{\"per_hour\": USD}} or {{\"input\": USD, \"output\": USD}} per 1M tokens"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_their_defaults() {
        let e = Endpoints::parse(
            r#"{"b-tokens": {"url": "http://10.0.0.1:8080/", "price": {"input": 0.2, "output": 0.6}},
                "a-free": {"url": "https://a.endpoints.huggingface.cloud", "price": null}}"#,
        )
        .unwrap();
        let a = e.get("a-free").unwrap();
        assert_eq!(a.url, "https://a.endpoints.huggingface.cloud");
        assert_eq!(a.token_secret, None);
        assert_eq!(a.price, EndpointPrice::Free);
        let b = e.get("b-tokens").unwrap();
        assert_eq!(b.url, "http://10.0.0.1:8080");
        assert_eq!(b.price, EndpointPrice::Tokens(Price { input: 200_000, output: 600_000 }));
        assert_eq!(Endpoints::parse("{}").unwrap(), Endpoints::empty());
        assert_eq!(Endpoints::empty().get("a-free"), None);
    }

    #[test]
    fn an_hourly_price_becomes_nano_usd_per_second() {
        let e = Endpoints::parse(r#"{"gpu": {"url": "https://g.example", "price": {"per_hour": 3.6}}}"#).unwrap();
        let EndpointPrice::PerHour(p) = e.get("gpu").unwrap().price else { panic!() };
        assert_eq!(p, ComputePrice(1_000_000));
        assert_eq!(p.cost_ms(3_600_000).0, 3_600_000, "an hour costs the hourly price");
    }

    #[test]
    fn every_bad_entry_is_refused_naming_its_endpoint() {
        for json in [
            r#"{"e1": {}}"#,
            r#"{"e1": {"url": "https://x.example", "extra": 1}}"#,
            r#"{"e1": {"url": "https://x.example", "price": {}}}"#,
            r#"{"e1": {"url": "https://x.example", "price": {"per_hour": 1, "input": 1, "output": 1}}}"#,
            r#"{"e1": {"url": "https://x.example", "price": {"input": 1}}}"#,
            r#"{"e1": {"url": "https://x.example", "price": {"per_hour": -1}}}"#,
            r#"{"e1": {"url": "https://x.example", "price": {"per_hour": 10001}}}"#,
            r#"{"e1": {"url": "https://x.example", "price": {"per_second": 1}}}"#,
            r#"{"e1": {"url": "https://x.example", "token_secret": "lower_case"}}"#,
            r#"{"e1": {"url": "https://x.example", "token_secret": "9LIVES"}}"#,
            r#"{"e1": {"url": "https://x.example", "token_secret": ""}}"#,
            r#"{"e1": {"url": "https://x.example", "token_secret": "ADMIN_TOKEN"}}"#,
            r#"{"e1": {"url": "https://x.example", "token_secret": 7}}"#,
            r#"{"e1": {"url": "ftp://x.example"}}"#,
            r#"{"e1": "https://x.example"}"#,
        ] {
            let e = Endpoints::parse(json).unwrap_err();
            assert!(e.contains("endpoint e1"), "{json}: {e}");
        }
        let long = format!(r#"{{"e1": {{"url": "https://x.example", "token_secret": "A{}"}}}}"#, "B".repeat(64));
        assert!(Endpoints::parse(&long).is_err());
        let e = Endpoints::parse(r#"{"bad/name": {"url": "https://x.example"}}"#).unwrap_err();
        assert!(e.contains("bad/name"), "{e}");
        assert!(Endpoints::parse("[]").is_err());
    }

    #[test]
    fn hf_token_and_long_names_are_allowed_as_token_secrets() {
        let max = format!("A{}", "B".repeat(63));
        let json = format!(
            r#"{{"a": {{"url": "https://x.example", "token_secret": "HF_TOKEN"}},
                 "b": {{"url": "https://x.example", "token_secret": "{max}"}}}}"#
        );
        let e = Endpoints::parse(&json).unwrap();
        assert_eq!(e.get("a").unwrap().token_secret.as_deref(), Some("HF_TOKEN"));
        assert_eq!(e.get("b").unwrap().token_secret.as_deref(), Some(max.as_str()));
    }

    #[test]
    fn only_plain_base_urls_are_accepted() {
        for ok in [
            "https://xyz.endpoints.huggingface.cloud",
            "https://xyz.endpoints.huggingface.cloud///",
            "http://localhost:8080",
            "http://[::1]:8080/v1",
            "http://[::1]",
            "https://h.example/some/base",
        ] {
            assert!(parse_base_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "https://",
            "https:///path",
            "xyz.endpoints.huggingface.cloud",
            "HTTPS://x.example",
            "https://x.example?x=1",
            "https://x.example/#frag",
            "https://user:pw@x.example",
            "https://x.example\\@evil.example",
            "https://x y.example",
            "https://x.example:0",
            "https://x.example:65536",
            "https://x.example:port",
            "https://x.example:",
            "https://.x.example",
            "https://x_y.example",
            "https://x.example/../admin",
            "https://x.example/a//b",
            "https://x.example/%2e%2e/b",
            "https://[zz]:80",
            "https://[::1",
            "https://[::1]x",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }
}
