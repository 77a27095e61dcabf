//! The gateway's settings (`[vars]`, secrets, `--var NAME:VALUE`), each with a default, each
//! validated with an error that names the setting.
//!
//! `Settings::from_vars` takes a lookup function, so it is the same code for the Workers
//! environment and for tests.

use crate::core::cors::Origins;
use crate::core::endpoints::Endpoints;
use crate::core::error::GatewayError;
use crate::core::gcra::Quota;
use crate::core::ledger::{MicroUsd, OnExhausted};
use crate::core::pricing::{ComputePrice, PriceTable, DEFAULT_PRICES};
use crate::core::retry::RetryPolicy;
use crate::core::route_prices::RoutePrices;
use crate::core::setting_json::{kind, Fields};
use crate::core::sorted::SortedMap;
use serde_json::Value;
use std::fmt;

pub const DEFAULT_UPSTREAM: &str = "https://router.huggingface.co";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// A secret value: usable, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// The in-process sandbox (SPEC section 8).
    Sandbox,
    /// A base URL (`https://router.huggingface.co`), no trailing slash.
    Url { base: String, host: String },
}

/// A plan's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Credits per key, or per seat for pooled plans.
    pub monthly_credit: MicroUsd,
    pub on_exhausted: OnExhausted,
    pub quota: Quota,
    pub default_max_tokens: u64,
    /// Credits are per seat and pooled across the organisation.
    pub pooled: bool,
    /// Calls use the key's own provider keys; HF credits are not touched.
    pub byok: bool,
    /// What one call may cost when it asks for tools the upstream runs itself (`mcp`,
    /// `web_search`, ...): such a call's cost is not bounded by its body, so it is refused
    /// unless its plan names a ceiling, which is then reserved for it. `None` on every default
    /// plan.
    pub server_tool_ceiling_micro_usd: Option<u64>,
}

/// The largest `server_tool_ceiling_micro_usd` a plan may set ($1,000 a call).
pub const MAX_SERVER_TOOL_CEILING_MICRO_USD: u64 = 1_000_000_000;

/// A plan as `PLANS` changes it: every field optional, no other field.
#[derive(Default)]
struct PlanPatch {
    monthly_credit_micro_usd: Option<u64>,
    on_exhausted: Option<OnExhausted>,
    rpm: Option<u32>,
    burst: Option<u32>,
    default_max_tokens: Option<u64>,
    pooled: Option<bool>,
    byok: Option<bool>,
    server_tool_ceiling_micro_usd: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub upstream: Upstream,
    pub hf_token: Option<Secret>,
    pub admin_token: Option<Secret>,
    /// Seals `byok` provider keys (`PROVIDER_KEY_SECRET`). Required to store them: there is
    /// no fallback to `ADMIN_TOKEN`, so one leaked secret never opens both.
    pub seal_key: Option<Secret>,
    pub prices: PriceTable,
    pub plans: SortedMap<String, Plan>,
    pub compute: ComputePrice,
    pub cors: Origins,
    pub max_body_bytes: u64,
    pub retry: RetryPolicy,
    pub provider_urls: SortedMap<String, String>,
    /// How long a hold lasts unless its call renews it (a running call does, every third of
    /// it): only a hold whose isolate died lapses, and is then charged in full.
    pub reservation_ttl_ms: u64,
    /// How long the gateway reads on after the caller left, was cut or was answered 504, to
    /// learn what upstream bills (`METER_GRACE_MS`): under the runtime's 30 s `wait_until`
    /// grace.
    pub meter_grace_ms: u64,
    /// How long a lease to an isolate lasts (`LEASE_MS`); 0: no leases, every call is
    /// admitted by its account's object.
    pub lease_ms: u64,
    /// Benchmarks only (`BENCH_OBJECT_DELAY_MS`): how long every call to a Durable Object
    /// waits before it is sent, to put the objects that far away in a local run. Refused
    /// unless the upstream is local, so it can never slow a deployment.
    pub bench_object_delay_ms: u64,
    /// Delay between sandbox stream chunks, so local streaming looks like streaming.
    pub sandbox_chunk_delay_ms: u64,
    /// Upstream silent this long after its first byte has broken the stream; a caller that
    /// does not read for this long is cut (the gateway reads on without it). The wait for a
    /// stream's first byte (a long prefill) is not idleness: it is bounded by the call's
    /// deadline instead.
    pub stream_idle_ms: u64,
    /// The prompt tokens one image, audio or file part is counted at when a call is bounded.
    pub media_part_tokens: u64,
    /// How old the live price book may get before a call refreshes it beside itself.
    pub price_book_ttl_ms: u64,
    /// `ROUTE_PRICES`: per-call or per-second prices of routes that report no usage.
    pub route_prices: RoutePrices,
    /// `ENDPOINTS`: dedicated Inference Endpoints by name.
    pub endpoints: Endpoints,
    /// Where credit alerts are posted (`ALERT_WEBHOOK_URL`), and the key that signs them.
    pub alert_webhook: Option<String>,
    pub alert_secret: Option<Secret>,
    /// Percentages of credits and caps that fire an alert (`ALERT_THRESHOLDS`, "50,80,100").
    pub alert_thresholds: Vec<u8>,
    /// How long request log records are kept (`REQUEST_LOG_DAYS`).
    pub request_log_retention_ms: u64,
    /// The most request log records one account keeps (`REQUEST_LOG_MAX_ROWS`).
    pub request_log_max_rows: u64,
}

fn default_plans() -> SortedMap<String, Plan> {
    use OnExhausted::*;
    let table = [
        ("free", 100_000, Block, 60, 10, false, false),
        ("pro", 2_000_000, Payg, 600, 50, false, false),
        ("team", 2_000_000, Payg, 600, 50, true, false),
        ("enterprise", 2_000_000, Payg, 1200, 100, true, false),
        ("byok", 0, Payg, 600, 50, false, true),
    ];
    let mut plans = SortedMap::new();
    for (name, credit, on_exhausted, rpm, burst, pooled, byok) in table {
        if let Some(quota) = Quota::new(rpm, burst) {
            let plan = Plan {
                monthly_credit: MicroUsd(credit),
                on_exhausted,
                quota,
                default_max_tokens: 1024,
                pooled,
                byok,
                server_tool_ceiling_micro_usd: None,
            };
            plans.insert(name.to_string(), plan);
        }
    }
    plans
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> GatewayError {
    GatewayError::Misconfigured { setting, reason: reason.into() }
}

fn parse_u64(setting: &'static str, v: &str, min: u64, max: u64) -> Result<u64, GatewayError> {
    let n: u64 = v.trim().parse().map_err(|_| invalid(setting, "expected a whole number"))?;
    if !(min..=max).contains(&n) {
        return Err(invalid(setting, format!("must be between {min} and {max}")));
    }
    Ok(n)
}

impl Settings {
    /// Reads and validates every setting. `var` returns a setting's raw value, or `None`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Settings, GatewayError> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let upstream = parse_upstream(get("UPSTREAM_URL").as_deref().unwrap_or(DEFAULT_UPSTREAM))?;
        let prices =
            PriceTable::parse(get("PRICES").as_deref().unwrap_or(DEFAULT_PRICES)).map_err(|e| invalid("PRICES", e))?;
        let plans = parse_plans(get("PLANS").as_deref())?;
        let compute = ComputePrice::parse(get("COMPUTE_USD_PER_SECOND").as_deref().unwrap_or("0.00012"))
            .map_err(|e| invalid("COMPUTE_USD_PER_SECOND", e))?;
        let cors =
            Origins::parse(get("CORS_ORIGINS").as_deref().unwrap_or("")).map_err(|e| invalid("CORS_ORIGINS", e))?;
        let max_body_bytes = match get("MAX_BODY_BYTES") {
            Some(v) => parse_u64("MAX_BODY_BYTES", &v, 1024, 100 * 1024 * 1024)?,
            None => DEFAULT_MAX_BODY_BYTES,
        };
        let d = RetryPolicy::default();
        let num = |name: &'static str, default: u64, min: u64, max: u64| match get(name) {
            Some(v) => parse_u64(name, &v, min, max),
            None => Ok(default),
        };
        let retry = RetryPolicy {
            max_retries: num("RETRY_MAX_RETRIES", u64::from(d.max_retries), 0, 10)? as u32,
            max_wait_ms: num("RETRY_MAX_WAIT_MS", d.max_wait_ms, 0, 60_000)?,
            deadline_ms: num("UPSTREAM_DEADLINE_MS", d.deadline_ms, 100, 900_000)?,
            backoff_base_ms: num("RETRY_BACKOFF_BASE_MS", d.backoff_base_ms, 1, 60_000)?,
            backoff_cap_ms: d.backoff_cap_ms,
        };
        let provider_urls = match get("PROVIDER_URLS") {
            Some(v) => parse_provider_urls(&v)?,
            None => SortedMap::new(),
        };
        let secret = |name: &str| get(name).map(Secret);

        let settings = Settings {
            upstream,
            hf_token: secret("HF_TOKEN"),
            admin_token: secret("ADMIN_TOKEN"),
            seal_key: secret("PROVIDER_KEY_SECRET"),
            prices,
            plans,
            compute,
            cors,
            max_body_bytes,
            retry,
            provider_urls,
            reservation_ttl_ms: num("RESERVATION_TTL_MS", 900_000, 1_000, 86_400_000)?,
            meter_grace_ms: num("METER_GRACE_MS", 25_000, 0, 28_000)?,
            lease_ms: num("LEASE_MS", 1_000, 0, 10_000)?,
            bench_object_delay_ms: num("BENCH_OBJECT_DELAY_MS", 0, 0, 1_000)?,
            sandbox_chunk_delay_ms: num("SANDBOX_CHUNK_DELAY_MS", 20, 0, 5_000)?,
            stream_idle_ms: num("STREAM_IDLE_MS", 20_000, 100, 25_000)?,
            media_part_tokens: num("MEDIA_PART_TOKENS", crate::core::body::DEFAULT_MEDIA_PART_TOKENS, 1, 1_000_000)?,
            price_book_ttl_ms: num("PRICE_BOOK_TTL_SECONDS", 3_600, 1, 7 * 86_400)? * 1000,
            route_prices: match get("ROUTE_PRICES") {
                Some(v) => RoutePrices::parse(&v).map_err(|e| invalid("ROUTE_PRICES", e))?,
                None => RoutePrices::empty(),
            },
            alert_webhook: match get("ALERT_WEBHOOK_URL") {
                Some(v) => {
                    Some(crate::core::endpoints::parse_base_url(&v).map_err(|e| invalid("ALERT_WEBHOOK_URL", e))?)
                }
                None => None,
            },
            alert_secret: secret("ALERT_WEBHOOK_SECRET"),
            alert_thresholds: match get("ALERT_THRESHOLDS") {
                Some(v) => parse_thresholds(&v)?,
                None => crate::core::alerts::DEFAULT_THRESHOLDS.to_vec(),
            },
            request_log_retention_ms: num(
                "REQUEST_LOG_DAYS",
                crate::core::request_log::DEFAULT_RETENTION_DAYS,
                1,
                3_660,
            )? * 86_400_000,
            request_log_max_rows: num(
                "REQUEST_LOG_MAX_ROWS",
                crate::core::request_log::DEFAULT_MAX_ROWS,
                100,
                10_000_000,
            )?,
            endpoints: match get("ENDPOINTS") {
                Some(v) => Endpoints::parse(&v).map_err(|e| invalid("ENDPOINTS", e))?,
                None => Endpoints::empty(),
            },
        };
        if settings.alert_webhook.is_some() && settings.alert_secret.is_none() {
            // an alert anyone could forge is worse than none: the receiver must be able to check
            return Err(invalid("ALERT_WEBHOOK_SECRET", "required (as a secret) when ALERT_WEBHOOK_URL is set"));
        }
        if settings.bench_object_delay_ms > 0 && !settings.upstream.is_local() {
            return Err(invalid(
                "BENCH_OBJECT_DELAY_MS",
                "a benchmark setting: only with UPSTREAM_URL sandbox or http://127.0.0.1 or http://localhost",
            ));
        }
        Ok(settings)
    }

    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.get(name)
    }

    /// The host shown by `/healthz`: `sandbox` or the upstream's host.
    pub fn upstream_label(&self) -> &str {
        match &self.upstream {
            Upstream::Sandbox => "sandbox",
            Upstream::Url { host, .. } => host,
        }
    }
}

impl Upstream {
    /// The sandbox, or a plain-http upstream on this machine: a local run, never a deployment.
    fn is_local(&self) -> bool {
        match self {
            Upstream::Sandbox => true,
            Upstream::Url { base, host } => {
                let name = host.rsplit_once(':').map_or(host.as_str(), |(name, _port)| name);
                base.starts_with("http://") && matches!(name, "127.0.0.1" | "localhost")
            }
        }
    }
}

fn parse_upstream(v: &str) -> Result<Upstream, GatewayError> {
    let v = v.trim();
    if v == "sandbox" {
        return Ok(Upstream::Sandbox);
    }
    let base = v.trim_end_matches('/');
    let rest = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"))
        .ok_or_else(|| invalid("UPSTREAM_URL", "must be 'sandbox' or an http(s) URL"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || !rest.bytes().all(|b| b.is_ascii_graphic()) || rest.contains(['?', '#', '@']) {
        return Err(invalid("UPSTREAM_URL", "must be 'sandbox' or an http(s) URL with a host and no query"));
    }
    Ok(Upstream::Url { base: base.to_string(), host: host.to_string() })
}

fn parse_thresholds(v: &str) -> Result<Vec<u8>, GatewayError> {
    let mut out = Vec::new();
    for part in v.split(',') {
        let n: u8 = part
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| invalid("ALERT_THRESHOLDS", "comma-separated percentages from 1 to 200"))?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    if out.len() > 10 {
        return Err(invalid("ALERT_THRESHOLDS", "at most 10 thresholds"));
    }
    Ok(out)
}

impl PlanPatch {
    /// Read strictly (`setting_json::Fields`), as `#[serde(deny_unknown_fields)]` read it.
    fn read(v: &Value) -> Result<PlanPatch, String> {
        const FIELDS: [&str; 8] = [
            "monthly_credit_micro_usd",
            "on_exhausted",
            "rpm",
            "burst",
            "default_max_tokens",
            "pooled",
            "byok",
            "server_tool_ceiling_micro_usd",
        ];
        let f = Fields::of(v, &FIELDS)?;
        let on_exhausted = match f.text("on_exhausted")? {
            None => None,
            Some("block") => Some(OnExhausted::Block),
            Some("payg") => Some(OnExhausted::Payg),
            Some(other) => return Err(format!("on_exhausted: unknown variant `{other}`, expected `block` or `payg`")),
        };
        let small = |name| f.integer(name, u32::MAX.into()).map(|n| n.map(|n| n as u32));
        Ok(PlanPatch {
            monthly_credit_micro_usd: f.integer("monthly_credit_micro_usd", u64::MAX)?,
            on_exhausted,
            rpm: small("rpm")?,
            burst: small("burst")?,
            default_max_tokens: f.integer("default_max_tokens", u64::MAX)?,
            pooled: f.flag("pooled")?,
            byok: f.flag("byok")?,
            server_tool_ceiling_micro_usd: f.integer("server_tool_ceiling_micro_usd", u64::MAX)?,
        })
    }
}

fn parse_plans(v: Option<&str>) -> Result<SortedMap<String, Plan>, GatewayError> {
    let mut plans = default_plans();
    let Some(v) = v else { return Ok(plans) };
    let shape = |e: String| invalid("PLANS", format!("expected {{\"plan\": {{...}}}}: {e}"));
    let patches: Value = serde_json::from_slice(v.as_bytes()).map_err(|e| shape(e.to_string()))?;
    let Value::Object(patches) = patches else {
        return Err(shape(format!("invalid type: {}, expected a map", kind(&patches))));
    };
    for (name, p) in patches {
        let p = PlanPatch::read(&p).map_err(|e| shape(format!("plan {name}: {e}")))?;
        if !crate::core::keys::valid_slug(&name, 32) {
            return Err(invalid("PLANS", format!("plan name {name:?} must be a short slug")));
        }
        let base =
            plans.get(&name).or_else(|| plans.get("free")).copied().ok_or_else(|| invalid("PLANS", "no base plan"))?;
        let rpm = p.rpm.unwrap_or(base.quota.rpm());
        let burst = p.burst.unwrap_or(base.quota.burst());
        let quota = Quota::new(rpm, burst)
            .ok_or_else(|| invalid("PLANS", format!("plan {name}: rpm and burst must be at least 1")))?;
        let default_max_tokens = p.default_max_tokens.unwrap_or(base.default_max_tokens);
        if !(1..=crate::core::body::MAX_OUTPUT_TOKENS).contains(&default_max_tokens) {
            return Err(invalid("PLANS", format!("plan {name}: default_max_tokens must be from 1 to 1000000")));
        }
        let server_tool_ceiling_micro_usd = p.server_tool_ceiling_micro_usd.or(base.server_tool_ceiling_micro_usd);
        if server_tool_ceiling_micro_usd.is_some_and(|c| !(1..=MAX_SERVER_TOOL_CEILING_MICRO_USD).contains(&c)) {
            return Err(invalid(
                "PLANS",
                format!(
                    "plan {name}: server_tool_ceiling_micro_usd must be from 1 to {MAX_SERVER_TOOL_CEILING_MICRO_USD}"
                ),
            ));
        }
        plans.insert(
            name,
            Plan {
                monthly_credit: p.monthly_credit_micro_usd.map_or(base.monthly_credit, MicroUsd),
                on_exhausted: p.on_exhausted.unwrap_or(base.on_exhausted),
                quota,
                default_max_tokens,
                pooled: p.pooled.unwrap_or(base.pooled),
                byok: p.byok.unwrap_or(base.byok),
                server_tool_ceiling_micro_usd,
            },
        );
    }
    Ok(plans)
}

fn parse_provider_urls(v: &str) -> Result<SortedMap<String, String>, GatewayError> {
    let shape =
        |e: &dyn fmt::Display| invalid("PROVIDER_URLS", format!("expected {{\"provider\": \"https://...\"}}: {e}"));
    let raw: Value = serde_json::from_slice(v.as_bytes()).map_err(|e| shape(&e))?;
    let raw = raw.as_object().ok_or_else(|| shape(&format!("invalid type: {}, expected a map", kind(&raw))))?;
    let mut urls = SortedMap::new();
    for (p, url) in raw {
        let url = url.as_str().ok_or_else(|| shape(&format!("{p}: invalid type: {}, expected a string", kind(url))))?;
        match parse_upstream(url) {
            Ok(Upstream::Url { base, .. }) => urls.insert(p.clone(), base),
            _ => return Err(invalid("PROVIDER_URLS", format!("{p}: must be an http(s) URL"))),
        };
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())
    }

    #[test]
    fn defaults_mirror_hf_tiers() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.upstream_label(), "router.huggingface.co");
        assert_eq!(s.plan("free").unwrap().monthly_credit, MicroUsd(100_000));
        assert_eq!(s.plan("free").unwrap().on_exhausted, OnExhausted::Block);
        assert_eq!(s.plan("pro").unwrap().monthly_credit, MicroUsd(2_000_000));
        assert!(s.plan("team").unwrap().pooled);
        assert!(s.plan("byok").unwrap().byok);
        assert_eq!(s.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(s.compute, ComputePrice(120_000));
    }

    #[test]
    fn provider_urls_are_read_per_provider() {
        let s = Settings::from_vars(vars(&[("PROVIDER_URLS", r#"{"together":"https://api.together.example/v1"}"#)]))
            .unwrap();
        assert!(s.provider_urls.get("together").is_some_and(|u| u.starts_with("https://api.together.example")));
        assert_eq!(s.provider_urls.get("groq"), None);
    }

    #[test]
    fn plans_merge_over_the_defaults() {
        let s = Settings::from_vars(vars(&[(
            "PLANS",
            r#"{"free":{"rpm":5},"student":{"monthly_credit_micro_usd":500000,"on_exhausted":"payg","burst":7,
                "default_max_tokens":64,"pooled":true,"byok":false,"server_tool_ceiling_micro_usd":null}}"#,
        )]))
        .unwrap();
        assert_eq!(s.plan("free").unwrap().quota.rpm(), 5);
        assert_eq!(s.plan("free").unwrap().quota.burst(), 10);
        let student = s.plan("student").unwrap();
        assert_eq!(student.monthly_credit, MicroUsd(500_000));
        // a new plan starts from free as PLANS left it
        assert_eq!((student.on_exhausted, student.quota.rpm(), student.quota.burst()), (OnExhausted::Payg, 5, 7));
        assert_eq!((student.default_max_tokens, student.pooled, student.byok), (64, true, false));
    }

    #[test]
    fn server_tools_are_allowed_only_by_a_plan_that_names_their_ceiling() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert!(s.plans.values().all(|p| p.server_tool_ceiling_micro_usd.is_none()));
        let s = Settings::from_vars(vars(&[("PLANS", r#"{"pro":{"server_tool_ceiling_micro_usd":250000}}"#)])).unwrap();
        assert_eq!(s.plan("pro").unwrap().server_tool_ceiling_micro_usd, Some(250_000));
        assert_eq!(s.plan("free").unwrap().server_tool_ceiling_micro_usd, None);
        for bad in ["0", "1000000001", "-5", "1.5", "\"100\""] {
            let plans = format!(r#"{{"pro":{{"server_tool_ceiling_micro_usd":{bad}}}}}"#);
            match Settings::from_vars(vars(&[("PLANS", &plans)])) {
                Err(GatewayError::Misconfigured { setting, .. }) => assert_eq!(setting, "PLANS", "{bad}"),
                other => panic!("{bad} gave {other:?}"),
            }
        }
    }

    #[test]
    fn every_bad_setting_is_named() {
        for (name, value) in [
            ("UPSTREAM_URL", "ftp://x"),
            ("UPSTREAM_URL", "https://"),
            ("PRICES", "{}"),
            ("PLANS", r#"{"free":{"rpm":0}}"#),
            ("PLANS", r#"{"free":{"colour":"red"}}"#),
            ("PLANS", r#"{"free":{"on_exhausted":"never"}}"#),
            ("PLANS", r#"{"free":{"rpm":-1}}"#),
            ("PLANS", r#"{"free":{"burst":4294967296}}"#),
            ("PLANS", r#"{"free":{"pooled":"yes"}}"#),
            ("PLANS", r#"{"free":[]}"#),
            ("PLANS", r#"["free"]"#),
            ("COMPUTE_USD_PER_SECOND", "-1"),
            ("CORS_ORIGINS", "nope"),
            ("MAX_BODY_BYTES", "ten"),
            ("RETRY_MAX_RETRIES", "99"),
            ("MEDIA_PART_TOKENS", "0"),
            ("PROVIDER_URLS", r#"{"together":"not a url"}"#),
            ("PROVIDER_URLS", r#"{"together":1}"#),
            ("PROVIDER_URLS", r#"["https://a.example"]"#),
            ("ROUTE_PRICES", r#"{"fal-ai/*":{"per_request":-1}}"#),
            ("ENDPOINTS", r#"{"mine":{"url":"ftp://x"}}"#),
            ("PRICE_BOOK_TTL_SECONDS", "0"),
            ("ALERT_THRESHOLDS", "50,eighty"),
            ("ALERT_WEBHOOK_URL", "not a url"),
        ] {
            match Settings::from_vars(vars(&[(name, value)])) {
                Err(GatewayError::Misconfigured { setting, .. }) => assert_eq!(setting, name),
                other => panic!("{name}={value} gave {other:?}"),
            }
        }
    }

    #[test]
    fn an_object_delay_is_for_local_runs_only() {
        assert_eq!(Settings::from_vars(vars(&[])).unwrap().bench_object_delay_ms, 0);
        for upstream in ["sandbox", "http://127.0.0.1:8080", "http://localhost:9/", "http://127.0.0.1"] {
            let s = Settings::from_vars(vars(&[("UPSTREAM_URL", upstream), ("BENCH_OBJECT_DELAY_MS", "50")])).unwrap();
            assert_eq!(s.bench_object_delay_ms, 50, "{upstream}");
        }
        let refused = [
            ("https://router.huggingface.co", "50"),
            ("https://127.0.0.1:8080", "50"),
            ("http://example.com", "50"),
            ("http://127.0.0.1.example.com", "50"),
            ("http://localhost.example.com:80", "50"),
            ("sandbox", "1001"),
            ("sandbox", "-1"),
        ];
        for (upstream, delay) in refused {
            match Settings::from_vars(vars(&[("UPSTREAM_URL", upstream), ("BENCH_OBJECT_DELAY_MS", delay)])) {
                Err(GatewayError::Misconfigured { setting, .. }) => {
                    assert_eq!(setting, "BENCH_OBJECT_DELAY_MS", "{upstream} {delay}")
                }
                other => panic!("{upstream} {delay} gave {other:?}"),
            }
        }
        // with the default upstream, 0 is no delay and not a local-only setting
        let s = Settings::from_vars(vars(&[("BENCH_OBJECT_DELAY_MS", "0")])).unwrap();
        assert_eq!(s.bench_object_delay_ms, 0);
    }

    #[test]
    fn alerts_need_their_signing_secret() {
        let url = ("ALERT_WEBHOOK_URL", "https://hooks.example/credits");
        match Settings::from_vars(vars(&[url])) {
            Err(GatewayError::Misconfigured { setting, .. }) => assert_eq!(setting, "ALERT_WEBHOOK_SECRET"),
            other => panic!("{other:?}"),
        }
        let s = Settings::from_vars(vars(&[url, ("ALERT_WEBHOOK_SECRET", "whsec")])).unwrap();
        assert_eq!(s.alert_webhook.as_deref(), Some("https://hooks.example/credits"));
        assert_eq!(s.alert_thresholds, vec![50, 80, 100]);
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::from_vars(vars(&[("HF_TOKEN", "hf_supersecret"), ("ADMIN_TOKEN", "adm")])).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("hf_supersecret"));
        assert!(!shown.contains("adm\""));
    }
}
