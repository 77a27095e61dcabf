//! Which route a path is, and whether it may go upstream at all.
//!
//! The gateway is no open proxy: the upstream host is fixed, only known providers are reachable,
//! and paths with `..`, `.`, empty segments, backslashes or encoded slashes and dots are refused
//! rather than normalised into something else.
//!
//! A path is classified after percent-decoding, and the decoded path is the one sent upstream:
//! upstream decodes `/v1/chat/%63ompletions` into a chat call, so the gateway must read it as
//! one too, or it would price a token-metered call as something else.

use crate::core::error::GatewayError;
use crate::core::keys::valid_slug;

/// Inference Providers reachable as `/{provider}/...`.
pub const PROVIDERS: &[&str] = &[
    "black-forest-labs",
    "cerebras",
    "cohere",
    "fal-ai",
    "featherless-ai",
    "fireworks-ai",
    "groq",
    "hf-inference",
    "hyperbolic",
    "nebius",
    "novita",
    "nscale",
    "openai",
    "ovhcloud",
    "publicai",
    "replicate",
    "sambanova",
    "scaleway",
    "together",
    "wavespeed",
    "zai-org",
];

pub const MAX_PATH_LEN: usize = 2048;
/// The longest name an `ENDPOINTS` entry, and so an `/endpoints/{name}` path, may have.
pub const MAX_ENDPOINT_NAME_LEN: usize = 64;

/// The token-priced API a path speaks, decided once where paths are parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// `/v1/chat/completions`: `messages`, `max_tokens` / `max_completion_tokens`, `n`.
    Chat,
    /// `/v1/completions`: `prompt` (one or a batch), `max_tokens`, `n`, `best_of`.
    Completions,
    /// `/v1/responses`: `input`, `instructions`, `max_output_tokens`.
    Responses,
    /// `/{provider}/v1/embeddings`: `input` (one text or a batch), no output tokens. Billed
    /// by the provider per input token, however many texts the batch holds.
    Embeddings,
}

impl Api {
    /// The field written when the body carries no output limit at all; none for an API
    /// that generates no tokens.
    pub fn limit_field(self) -> Option<&'static str> {
        match self {
            Api::Chat | Api::Completions => Some("max_tokens"),
            Api::Responses => Some("max_output_tokens"),
            Api::Embeddings => None,
        }
    }

    /// Whether the API generates tokens (billed as output, bounded by a limit field).
    pub fn generates(self) -> bool {
        self.limit_field().is_some()
    }

    /// Where the prompt is.
    pub(crate) fn prompt_field(self) -> &'static str {
        match self {
            Api::Chat => "messages",
            Api::Completions => "prompt",
            Api::Responses | Api::Embeddings => "input",
        }
    }

    /// Whether a stream reports usage only when asked (`stream_options.include_usage`); the
    /// responses API always reports it in its final event.
    pub fn usage_on_request(self) -> bool {
        matches!(self, Api::Chat | Api::Completions)
    }
}

/// How a proxied call is paid for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metering {
    /// Priced per token from `usage`; the model is named in the body, which speaks `Api`.
    Tokens(Api),
    /// Priced by elapsed time (`COMPUTE_USD_PER_SECOND`).
    Time,
    /// Costs nothing (model listings); still authenticated and throttled.
    Unmetered,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRoute {
    /// The caller's path percent-decoded, without a trailing slash: what the gateway
    /// classified and what it requests upstream, so both read the same path.
    pub path: String,
    /// The provider named by the path, if any (`/together/...`).
    pub provider: Option<String>,
    pub metering: Metering,
    /// For `/hf-inference/models/{model}` (and its `/v1/chat/completions`) and
    /// `/v1/models/{model}`, the model in the path.
    pub path_model: Option<String>,
    /// For `/endpoints/{name}/...`: the dedicated endpoint it goes to (`ENDPOINTS`).
    pub endpoint: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Playground,
    AdminPage,
    Health,
    Usage,
    Proxy(ProxyRoute),
    AdminKeys,
    AdminKey(String),
    AdminOrgs,
    AdminOrg(String),
    /// The keys of one org.
    AdminOrgKeys(String),
    /// Per-isolate counters.
    AdminStats,
    /// The caller's own request log.
    UsageRequests,
    /// A key's, and an org's, request log.
    AdminKeyRequests(String),
    AdminOrgRequests(String),
    /// The live price book (`GET`), refreshed on demand (`POST .../refresh`).
    AdminPrices,
    AdminPricesRefresh,
}

impl Route {
    /// The methods a route answers (besides `OPTIONS`, which is CORS preflight everywhere).
    pub fn allows(&self, method: &str) -> bool {
        match self {
            Route::Playground | Route::AdminPage | Route::Health | Route::Usage | Route::AdminStats => {
                method == "GET" || method == "HEAD"
            }
            Route::AdminOrgKeys(_) | Route::AdminPrices => method == "GET",
            Route::UsageRequests | Route::AdminKeyRequests(_) | Route::AdminOrgRequests(_) => {
                method == "GET" || method == "HEAD"
            }
            Route::AdminPricesRefresh => method == "POST",
            Route::AdminKeys | Route::AdminOrgs => method == "GET" || method == "POST",
            Route::AdminKey(_) => matches!(method, "GET" | "PATCH" | "DELETE"),
            Route::AdminOrg(_) => matches!(method, "GET" | "PATCH"),
            Route::Proxy(p) => match p.metering {
                Metering::Unmetered => method == "GET",
                Metering::Tokens(_) => method == "POST",
                // PUT: a queued job's cancel
                Metering::Time => matches!(method, "POST" | "GET" | "PUT"),
            },
        }
    }
}

/// Checks a raw request path (no query) and refuses anything that is not plainly what it says.
pub fn check_path(path: &str) -> Result<(), GatewayError> {
    let bad = |why: &str| Err(GatewayError::InvalidRequest(format!("path {why}")));
    if !path.starts_with('/') {
        return bad("must start with '/'");
    }
    if path.len() > MAX_PATH_LEN {
        return bad("is too long");
    }
    if !path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return bad("has characters that are not allowed");
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%2e") || lower.contains("%00") {
        return bad("has encoded separators");
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, s) in segments.iter().enumerate() {
        if *s == "." || *s == ".." {
            return bad("has dot segments");
        }
        if s.is_empty() && i != last && path != "/" {
            return bad("has empty segments");
        }
    }
    Ok(())
}

/// Decodes a raw request path (no query) into the path upstream will read: every `%XX` is
/// decoded, after `check_path` has refused the raw path's tricks (encoded `/`, `\`, `.` and
/// NUL among them). An escape that is malformed, decodes to something that is not UTF-8, or
/// yields a character that is not ASCII graphic or is one of `? # % \` is refused: such a path
/// has no single reading (a decoded `%` would be decoded again by some reader, a decoded `?`
/// would start a query).
///
/// ```
/// use hf_gate::core::paths::canonical_path;
/// assert_eq!(canonical_path("/v1/chat/%63ompletions").as_deref(), Ok("/v1/chat/completions"));
/// assert!(canonical_path("/v1/chat/%2563ompletions").is_err());
/// assert!(canonical_path("/v1/chat%2Fcompletions").is_err());
/// ```
pub fn canonical_path(raw: &str) -> Result<String, GatewayError> {
    check_path(raw)?;
    let bad = |why: &str| GatewayError::InvalidRequest(format!("path {why}"));
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'%' {
            bytes.push(b);
            continue;
        }
        let (Some(hi), Some(lo)) = (rest.first().and_then(hex_value), rest.get(1).and_then(hex_value)) else {
            return Err(bad("has a malformed percent-escape"));
        };
        bytes.push((hi << 4) | lo);
        rest = rest.get(2..).unwrap_or_default();
    }
    let decoded = String::from_utf8(bytes).map_err(|_| bad("does not decode to UTF-8"))?;
    if !decoded.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%' | b'\\')) {
        return Err(bad("has encoded characters that are not allowed"));
    }
    Ok(decoded)
}

/// The value of one hexadecimal digit.
pub(crate) fn hex_value(digit: &u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Maps a raw request path to its route, classified on its decoded form (`canonical_path`).
///
/// ```
/// use hf_gate::core::paths::{route, Metering, Route};
/// let Ok(Route::Proxy(p)) = route("/together/v1/chat/completions") else { panic!() };
/// assert_eq!(p.provider.as_deref(), Some("together"));
/// assert!(matches!(p.metering, Metering::Tokens(_)));
/// assert!(route("/../admin/keys").is_err());
/// assert!(route("/evil.example/v1/chat/completions").is_err());
/// let Ok(Route::Proxy(p)) = route("/together/v1/chat/%63ompletions") else { panic!() };
/// assert_eq!(p.path, "/together/v1/chat/completions");
/// ```
pub fn route(raw: &str) -> Result<Route, GatewayError> {
    let path = canonical_path(raw)?;
    let path = path.as_str();
    let trimmed = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    let proxy = |metering, provider: Option<&str>, path_model: Option<&str>| {
        Ok(Route::Proxy(ProxyRoute {
            path: trimmed.to_string(),
            provider: provider.map(str::to_string),
            metering,
            path_model: path_model.map(str::to_string),
            endpoint: None,
        }))
    };
    match trimmed {
        "/" => return Ok(Route::Playground),
        "/admin" => return Ok(Route::AdminPage),
        "/healthz" => return Ok(Route::Health),
        "/v1/usage" => return Ok(Route::Usage),
        "/v1/usage/requests" => return Ok(Route::UsageRequests),
        "/admin/keys" => return Ok(Route::AdminKeys),
        "/admin/orgs" => return Ok(Route::AdminOrgs),
        "/admin/stats" => return Ok(Route::AdminStats),
        "/admin/prices" => return Ok(Route::AdminPrices),
        "/admin/prices/refresh" => return Ok(Route::AdminPricesRefresh),
        "/v1/chat/completions" => return proxy(Metering::Tokens(Api::Chat), None, None),
        "/v1/completions" => return proxy(Metering::Tokens(Api::Completions), None, None),
        "/v1/responses" => return proxy(Metering::Tokens(Api::Responses), None, None),
        "/v1/models" => return proxy(Metering::Unmetered, None, None),
        _ => {}
    }
    if let Some(id) = trimmed.strip_prefix("/admin/keys/") {
        if let Some(key) = id.strip_suffix("/requests") {
            return single_segment(key).map(|k| Route::AdminKeyRequests(k.to_string()));
        }
        return single_segment(id).map(|id| Route::AdminKey(id.to_string()));
    }
    if let Some(id) = trimmed.strip_prefix("/admin/orgs/") {
        if let Some(org) = id.strip_suffix("/requests") {
            return single_segment(org).map(|o| Route::AdminOrgRequests(o.to_string()));
        }
        if let Some(org) = id.strip_suffix("/keys") {
            return single_segment(org).map(|org| Route::AdminOrgKeys(org.to_string()));
        }
        return single_segment(id).map(|id| Route::AdminOrg(id.to_string()));
    }
    if let Some(model) = trimmed.strip_prefix("/v1/models/") {
        return proxy(Metering::Unmetered, None, Some(model));
    }
    if trimmed.starts_with("/endpoints/") {
        // a name no ENDPOINTS entry could have is no endpoint
        let (name, tail) = split_endpoint_path(trimmed).ok_or(GatewayError::NotFound)?;
        let metering = match token_api(tail) {
            Some(api) => Metering::Tokens(api),
            None => Metering::Time,
        };
        return Ok(Route::Proxy(ProxyRoute {
            path: trimmed.to_string(),
            provider: None,
            metering,
            path_model: None,
            endpoint: Some(name.to_string()),
        }));
    }
    let mut parts = trimmed[1..].splitn(2, '/');
    let provider = parts.next().unwrap_or("");
    let rest = parts.next().unwrap_or("");
    if !PROVIDERS.contains(&provider) || rest.is_empty() {
        return Err(GatewayError::NotFound);
    }
    if let Some(api) = token_api(rest) {
        // `/hf-inference/models/{model}/v1/chat/completions`: the server behind the path
        // serves (and bills) the model the path names, whatever the body's `model` says
        return proxy(Metering::Tokens(api), Some(provider), token_path_model(rest));
    }
    let path_model = rest.strip_prefix("models/").filter(|m| !m.is_empty());
    proxy(Metering::Time, Some(provider), path_model)
}

/// The model a token-priced provider path names before its API (`models/{model}/v1/...`).
fn token_path_model(rest: &str) -> Option<&str> {
    let named = rest.strip_prefix("models/")?;
    let model = ["/v1/chat/completions", "/chat/completions", "/v1/responses", "/v1/completions", "/v1/embeddings"]
        .iter()
        .find_map(|api| named.strip_suffix(api))?;
    (!model.is_empty()).then_some(model)
}

/// The token-priced API a path ends in, if any.
fn token_api(rest: &str) -> Option<Api> {
    if rest.ends_with("chat/completions") {
        Some(Api::Chat)
    } else if rest.ends_with("v1/responses") {
        Some(Api::Responses)
    } else if rest.ends_with("v1/completions") {
        Some(Api::Completions)
    } else if rest.ends_with("v1/embeddings") {
        Some(Api::Embeddings)
    } else {
        None
    }
}

fn single_segment(s: &str) -> Result<&str, GatewayError> {
    if s.is_empty() || s.contains('/') || s.contains('%') {
        Err(GatewayError::NotFound)
    } else {
        Ok(s)
    }
}

/// The cooldown key of an upstream route as one credential sees it. An upstream 429 says
/// that *this* credential (the gateway's token, billed to one org or to none; or one `byok`
/// key's own provider key) is throttled on that route, so only callers sending that
/// credential there wait. The route is the provider (or `auto`, the router's choice) and the
/// model; a `:provider` suffix on the model names the provider; with no model, the path.
///
/// ```
/// use hf_gate::core::paths::cooldown_route;
/// assert_eq!(cooldown_route("hf", None, "m/x:groq", "/v1/chat/completions"), "hf|groq/m/x");
/// assert_eq!(cooldown_route("hf", None, "m/x", "/v1/chat/completions"), "hf|auto/m/x");
/// assert_eq!(cooldown_route("byok:key_a", Some("together"), "m/x", "/together/v1/chat/completions"), "byok:key_a|together/m/x");
/// assert_eq!(cooldown_route("hf", Some("fal-ai"), "", "/fal-ai/flux/dev"), "hf|/fal-ai/flux/dev");
/// ```
pub fn cooldown_route(credential: &str, path_provider: Option<&str>, model: &str, path: &str) -> String {
    let route = match (path_provider, model.rsplit_once(':')) {
        (_, _) if model.is_empty() => path.to_string(),
        (Some(p), _) => format!("{p}/{}", model.rsplit_once(':').map_or(model, |(m, _)| m)),
        (None, Some((m, p))) => format!("{p}/{m}"),
        (None, None) => format!("auto/{model}"),
    };
    format!("{credential}|{route}")
}

/// Splits a path under `/endpoints/` into the endpoint's name and the path to send it;
/// `None` for any other path, or a name that could not be configured.
///
/// ```
/// use hf_gate::core::paths::split_endpoint_path;
/// assert_eq!(split_endpoint_path("/endpoints/mine/v1/chat/completions"), Some(("mine", "/v1/chat/completions")));
/// assert_eq!(split_endpoint_path("/endpoints/mine"), Some(("mine", "/")));
/// assert_eq!(split_endpoint_path("/v1/chat/completions"), None);
/// ```
pub fn split_endpoint_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/endpoints/")?;
    let (name, tail) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    valid_slug(name, MAX_ENDPOINT_NAME_LEN).then_some((name, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_encoded_tricks_are_refused() {
        for p in [
            "/v1/../admin/keys",
            "/together/./v1/chat/completions",
            "/together/v1%2fchat/completions",
            "/together/v1%2Fchat",
            "/together/%2e%2e/admin",
            "/together//v1/chat/completions",
            "/together\\v1",
            "/together/v1/chat/completions%00",
            "relative",
            "/with space",
        ] {
            assert!(route(p).is_err(), "{p} must be refused");
        }
    }

    #[test]
    fn encoded_spellings_classify_like_their_plain_forms() {
        for (encoded, plain) in [
            ("/v1/chat/%63ompletions", "/v1/chat/completions"),
            ("/v1/chat/%63%6f%6D%70letions", "/v1/chat/completions"),
            ("/%76%31/%72esponses", "/v1/responses"),
            ("/v1/%63ompletions/", "/v1/completions"),
            ("/together/v1/chat/%63ompletions", "/together/v1/chat/completions"),
            ("/%74ogether/v1/chat/completions", "/together/v1/chat/completions"),
            ("/fal-ai/fal-ai/wan/%72equests/abc/status", "/fal-ai/fal-ai/wan/requests/abc/status"),
            ("/fal%2Dai/fal-ai/wan/requests/abc", "/fal-ai/fal-ai/wan/requests/abc"),
            ("/hf-inference/models/BAAI/bge%2Dsmall", "/hf-inference/models/BAAI/bge-small"),
            ("/v1/models/meta-llama/Llama%2D3", "/v1/models/meta-llama/Llama-3"),
            ("/endpoints/%6Dine/v1/chat/completions", "/endpoints/mine/v1/chat/completions"),
            ("/admin/keys/key%5Fa", "/admin/keys/key_a"),
            ("/admin/orgs/acme/%6Beys", "/admin/orgs/acme/keys"),
            ("/%61dmin/prices", "/admin/prices"),
        ] {
            assert_eq!(route(encoded), route(plain), "{encoded}");
            assert!(route(plain).is_ok(), "{plain}");
        }
        // and the decoded path is what goes upstream
        let Ok(Route::Proxy(p)) = route("/together/v1/chat/%63ompletions") else { panic!() };
        assert_eq!((p.path.as_str(), p.metering), ("/together/v1/chat/completions", Metering::Tokens(Api::Chat)));
    }

    #[test]
    fn escapes_with_no_single_reading_are_invalid_requests() {
        for p in [
            "/v1/chat/%6",
            "/v1/chat/completions%",
            "/v1/chat/%zzompletions",
            "/v1/%C3%A9",
            "/v1/%FF",
            "/v1/chat/%2563ompletions",
            "/v1/chat/completions%3Fx=1",
            "/v1/chat/completions%23x",
            "/v1/chat/completions%20",
            "/v1/chat/completions%0A",
            "/v1/chat/completions%7F",
            "/v1%5Cchat",
            "/v1%2e%2e/admin",
        ] {
            assert!(matches!(route(p), Err(GatewayError::InvalidRequest(_))), "{p}: {:?}", route(p));
        }
    }

    #[test]
    fn unknown_providers_are_not_found() {
        assert_eq!(route("/evil.com/v1/chat/completions"), Err(GatewayError::NotFound));
        assert_eq!(route("/together"), Err(GatewayError::NotFound));
    }

    #[test]
    fn client_routes_are_recognised() {
        assert!(matches!(
            route("/v1/chat/completions"),
            Ok(Route::Proxy(ProxyRoute { metering: Metering::Tokens(Api::Chat), .. }))
        ));
        assert!(matches!(route("/v1/models/"), Ok(Route::Proxy(ProxyRoute { metering: Metering::Unmetered, .. }))));
        let Ok(Route::Proxy(p)) = route("/hf-inference/models/BAAI/bge-small-en-v1.5") else { panic!() };
        assert_eq!(p.metering, Metering::Time);
        assert_eq!(p.path_model.as_deref(), Some("BAAI/bge-small-en-v1.5"));
        let Ok(Route::Proxy(p)) = route("/v1/models/meta-llama/Llama-3.1-8B-Instruct") else { panic!() };
        assert_eq!(p.path_model.as_deref(), Some("meta-llama/Llama-3.1-8B-Instruct"));
        // a chat path that names its model: the model served, whatever the body says
        let Ok(Route::Proxy(p)) = route("/hf-inference/models/meta-llama/Llama-3.1-8B-Instruct/v1/chat/completions")
        else {
            panic!()
        };
        assert_eq!(p.metering, Metering::Tokens(Api::Chat));
        assert_eq!(p.path_model.as_deref(), Some("meta-llama/Llama-3.1-8B-Instruct"));
        let Ok(Route::Proxy(p)) = route("/together/v1/chat/completions") else { panic!() };
        assert_eq!(p.path_model, None);
        let Ok(Route::Proxy(p)) = route("/nebius/v1/embeddings") else { panic!() };
        assert_eq!(p.metering, Metering::Tokens(Api::Embeddings));
        let Ok(Route::Proxy(p)) = route("/hf-inference/models/BAAI/bge-m3/v1/embeddings") else { panic!() };
        assert_eq!((p.metering, p.path_model.as_deref()), (Metering::Tokens(Api::Embeddings), Some("BAAI/bge-m3")));
        assert_eq!(route("/admin/keys/key_abc"), Ok(Route::AdminKey("key_abc".into())));
        assert_eq!(route("/admin/keys/a/b"), Err(GatewayError::NotFound));
        assert_eq!(route("/admin/orgs/acme/keys"), Ok(Route::AdminOrgKeys("acme".into())));
        assert_eq!(route("/admin/orgs/acme/keys/"), Ok(Route::AdminOrgKeys("acme".into())));
        assert_eq!(route("/admin/orgs/a/b/keys"), Err(GatewayError::NotFound));
        assert_eq!(route("/admin/orgs/keys"), Ok(Route::AdminOrg("keys".into())));
        assert_eq!(route("/"), Ok(Route::Playground));
        let Ok(Route::Proxy(p)) = route("/endpoints/mine/v1/chat/completions") else { panic!() };
        assert_eq!((p.endpoint.as_deref(), p.metering), (Some("mine"), Metering::Tokens(Api::Chat)));
        let Ok(Route::Proxy(p)) = route("/endpoints/mine") else { panic!() };
        assert_eq!((p.endpoint.as_deref(), p.metering), (Some("mine"), Metering::Time));
        assert_eq!(route("/endpoints/"), Err(GatewayError::NotFound));
        assert_eq!(route("/admin/prices/refresh"), Ok(Route::AdminPricesRefresh));
        assert_eq!(route("/admin/keys/key_a/requests"), Ok(Route::AdminKeyRequests("key_a".into())));
        assert_eq!(route("/admin/orgs/acme/requests"), Ok(Route::AdminOrgRequests("acme".into())));
        assert_eq!(route("/v1/usage/requests"), Ok(Route::UsageRequests));
    }

    #[test]
    fn methods_are_per_route() {
        let chat = route("/v1/chat/completions").unwrap();
        assert!(chat.allows("POST"));
        assert!(!chat.allows("GET"));
        assert!(route("/v1/models").unwrap().allows("GET"));
        assert!(!route("/admin/orgs/x").unwrap().allows("DELETE"));
    }

    #[test]
    fn endpoint_paths_split_into_name_and_tail() {
        assert_eq!(split_endpoint_path("/endpoints/mine/"), Some(("mine", "/")));
        assert_eq!(split_endpoint_path("/endpoints/my.ep-1/generate"), Some(("my.ep-1", "/generate")));
        assert_eq!(split_endpoint_path("/endpoints/"), None);
        assert_eq!(split_endpoint_path("/endpoints"), None);
        assert_eq!(split_endpoint_path("/endpointsx/mine"), None);
        assert_eq!(split_endpoint_path("/endpoints/a%2fb/x"), None);
        assert_eq!(split_endpoint_path(&format!("/endpoints/{}", "n".repeat(65))), None);
    }
}
