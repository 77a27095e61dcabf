//! The live price book: what each provider charges for each model, as the router's
//! `GET /v1/models` says, and how one call is priced from it and the operator's `PRICES`.
//!
//! The router picks a provider for an unpinned call after the gateway has reserved credit, so
//! the reservation must bound every provider it might pick, and the settlement should charge
//! the one that served. The rules, for a call naming `model`, sent to a path that may name a
//! provider (`/together/v1/chat/completions`):
//!
//! - `base, pin = split_model(model)`; the call is *pinned* to the path's provider, else to a
//!   `:provider` suffix. A policy suffix (`:fastest`, `:cheapest`, `:preferred`) pins nothing:
//!   the router still chooses.
//! - The *effective* price of provider `p` for `base` is the first of: `PRICES["base:p"]`,
//!   `PRICES["base"]`, the book's price for `p`, `PRICES["*"]` (when `p` is unpriced in the
//!   book or not in it). The operator's table always wins over what upstream publishes.
//! - Pinned to `p`: reserve at `effective(p)`, settle at the same, whatever upstream says.
//! - Unpinned: the candidates are the book's *live* providers for `base`. With none (no book,
//!   a model the book does not list, none live), reserve at `PRICES["base"]`, else
//!   `PRICES["*"]`, and settle at the same. Otherwise reserve at the component-wise maximum
//!   (input and output separately) of the candidates' effective prices, and settle at the
//!   effective price of the candidate that served (`x-inference-provider`), or at the
//!   reserve when upstream names none or one that is not a live candidate. So a settlement
//!   never exceeds its reservation.
//!
//! Upstream is not trusted blindly: the book keeps at most `MAX_MODELS` models and
//! `MAX_PROVIDERS_PER_MODEL` providers each, and skips entries it cannot read rather than
//! failing the whole list.

use crate::core::keys::valid_slug;
use crate::core::pricing::{Price, PriceTable};
use crate::core::sorted::SortedMap;
use crate::core::time::UnixMillis;
use crate::core::wire;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::fmt;

/// The most models a book keeps; the rest of a longer list is skipped.
pub const MAX_MODELS: usize = 20_000;
/// The most providers kept per model.
pub const MAX_PROVIDERS_PER_MODEL: usize = 64;
/// Model ids longer than this are skipped.
pub const MAX_MODEL_ID_LEN: usize = 256;
/// Provider names are slugs of at most this many bytes.
pub const MAX_PROVIDER_LEN: usize = 64;
/// The most a token price may be, in USD per 1M tokens (as `PRICES` allows).
const MAX_USD_PER_MILLION: f64 = 1e6;
/// The version of the stored form, so a future change can tell old entries apart.
const STORED_VERSION: u32 = 1;

/// One provider serving a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderEntry {
    pub provider: String,
    /// Whether the router routes to it now (`status` `"live"` or absent).
    pub live: bool,
    /// What it charges, when the router publishes it.
    pub price: Option<Price>,
}

/// The providers of each model and their prices, as fetched at `fetched_at`.
///
/// ```
/// use hf_gate::core::price_book::PriceBook;
/// use hf_gate::core::pricing::Price;
/// use hf_gate::core::time::UnixMillis;
/// let body = br#"{"object":"list","data":[{"id":"openai/gpt-oss-120b","providers":[
///   {"provider":"together","status":"live","pricing":{"input":0.15,"output":0.6}},
///   {"provider":"groq","status":"error"}]}]}"#;
/// let book = PriceBook::from_router_models(body, UnixMillis(0)).unwrap();
/// let p = book.providers_of("openai/gpt-oss-120b");
/// assert_eq!(p[0].price, Some(Price { input: 150_000, output: 600_000 }));
/// assert!(!p[1].live);
/// assert_eq!(PriceBook::from_json(&book.to_json()), Ok(book));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PriceBook {
    pub fetched_at: UnixMillis,
    models: SortedMap<String, Vec<ProviderEntry>>,
}

impl PriceBook {
    /// Parses the router's `/v1/models` body. Tolerant: malformed entries (non-numeric,
    /// negative or non-finite prices, missing or odd provider names, models without an id)
    /// are skipped, not fatal; a body that is not `{"data": [...]}` is an `Err`. A provider
    /// whose `pricing` cannot be read is skipped whole rather than kept unpriced. Bounded:
    /// at most `MAX_MODELS` models and `MAX_PROVIDERS_PER_MODEL` providers per model are
    /// kept; of a model or provider listed twice, the first counts.
    pub fn from_router_models(body: &[u8], now: UnixMillis) -> Result<PriceBook, String> {
        let list: RouterList = serde_json::from_slice(body)
            .map_err(|e| format!("expected the router's model list {{\"data\": [...]}}: {e}"))?;
        Ok(PriceBook { fetched_at: now, models: list.data.0 })
    }

    /// A book from entries already in hand (the sandbox's list, tests), under the same rules
    /// and bounds as one read from the router.
    pub fn from_entries(
        fetched_at: UnixMillis,
        models: impl IntoIterator<Item = (String, Vec<ProviderEntry>)>,
    ) -> PriceBook {
        let mut book = PriceBook { fetched_at, models: SortedMap::new() };
        for (id, entries) in models {
            if book.models.len() >= MAX_MODELS {
                break;
            }
            if valid_model_id(&id) && !book.models.contains_key(&id) {
                let mut kept = Vec::new();
                for e in entries {
                    keep_entry(&mut kept, e);
                }
                book.models.insert(id, kept);
            }
        }
        book
    }

    /// A compact JSON form for KV, and back: `from_json(&b.to_json()) == Ok(b)`. Prices are
    /// integers (micro-USD per 1M tokens, like `Price`), each provider a short array:
    /// `{"v":1,"fetched_at":0,"models":{"m":[["together",true,[150000,600000]],["groq",false,null]]}}`.
    pub fn to_json(&self) -> String {
        let mut out = format!("{{\"v\":{STORED_VERSION},\"fetched_at\":{},\"models\":{{", self.fetched_at.0);
        for (i, (id, entries)) in self.models.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            wire::string(&mut out, id);
            out.push_str(":[");
            for (j, e) in entries.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                out.push('[');
                wire::string(&mut out, &e.provider);
                out.push_str(if e.live { ",true," } else { ",false," });
                match e.price {
                    Some(p) => out.push_str(&format!("[{},{}]", p.input, p.output)),
                    None => out.push_str("null"),
                }
                out.push(']');
            }
            out.push(']');
        }
        out.push_str("}}");
        out
    }

    /// Reads what `to_json` wrote, refusing anything `to_json` could not have written. Read
    /// through a `Value` (a deserializer the bundle has anyway) rather than a derived struct
    /// of maps, tuples and arrays, which put about 5 KB of deserializers into it.
    pub fn from_json(s: &str) -> Result<PriceBook, String> {
        let fail = |why: String| format!("stored price book: {why}");
        let stored: Value = serde_json::from_slice(s.as_bytes()).map_err(|e| fail(e.to_string()))?;
        let fields = stored
            .as_object()
            .filter(|o| o.keys().all(|k| ["v", "fetched_at", "models"].contains(&k.as_str())))
            .ok_or_else(|| fail("expected {\"v\", \"fetched_at\", \"models\"} and no other field".into()))?;
        let field = |name: &str| fields.get(name).ok_or_else(|| fail(format!("missing field `{name}`")));
        let v = field("v")?.as_u64().ok_or_else(|| fail("v is not a version".into()))?;
        if v != u64::from(STORED_VERSION) {
            return Err(fail(format!("version {v} is not {STORED_VERSION}")));
        }
        let fetched_at = field("fetched_at")?.as_u64().ok_or_else(|| fail("fetched_at is not a time".into()))?;
        let stored_models = field("models")?.as_object().ok_or_else(|| fail("models is not a map".into()))?;
        if stored_models.len() > MAX_MODELS {
            return Err(fail(format!("more than {MAX_MODELS} models")));
        }
        let mut models = SortedMap::new();
        for (id, rows) in stored_models {
            if !valid_model_id(id) {
                return Err(fail(format!("model id {id:?} is not valid")));
            }
            let rows = rows.as_array().ok_or_else(|| fail(format!("{id} has no list of providers")))?;
            if rows.len() > MAX_PROVIDERS_PER_MODEL {
                return Err(fail(format!("{id} has more than {MAX_PROVIDERS_PER_MODEL} providers")));
            }
            let mut entries: Vec<ProviderEntry> = Vec::with_capacity(rows.len());
            for row in rows {
                let (provider, live, price) = stored_entry(row)
                    .ok_or_else(|| fail(format!("{id} has a provider that is not [name, live, price]")))?;
                if !valid_provider(provider) || entries.iter().any(|e| e.provider == provider) {
                    return Err(fail(format!("{id} has a bad or repeated provider {provider:?}")));
                }
                if price.is_some_and(|p| p.input.max(p.output) > max_micro_per_million()) {
                    return Err(fail(format!("{id} at {provider} is priced out of range")));
                }
                entries.push(ProviderEntry { provider: provider.to_string(), live, price });
            }
            models.insert(id.clone(), entries);
        }
        Ok(PriceBook { fetched_at: UnixMillis(fetched_at), models })
    }

    /// Whether the book is at least `ttl_ms` old. A book from the future (a clock that
    /// stepped back) counts as fresh.
    pub fn is_stale(&self, now: UnixMillis, ttl_ms: u64) -> bool {
        now.millis_since(self.fetched_at) >= ttl_ms
    }

    /// How many models the book lists.
    pub fn models(&self) -> usize {
        self.models.len()
    }

    /// The providers of a model, by its id without a suffix (`split_model` first), in any
    /// case: the Hub's ids are case-insensitive, and the router serves every spelling as the
    /// model it lists. Empty for a model the book does not list.
    pub fn providers_of(&self, model: &str) -> &[ProviderEntry] {
        let found = self
            .models
            .get(model)
            .or_else(|| self.models.iter().find(|(id, _)| id.eq_ignore_ascii_case(model)).map(|(_, entries)| entries));
        found.map_or(&[], Vec::as_slice)
    }

    /// For `GET /admin/prices`, in USD per 1M tokens:
    /// `{"fetched_at": "<RFC 3339>", "models": {"m": {"together": {"live": true, "input": 0.15,
    /// "output": 0.6}, "groq": {"live": false, "input": null, "output": null}}}}`.
    pub fn view(&self) -> Value {
        let usd = |micro: u64| micro as f64 / 1e6;
        // Built by insert, not collect: a Map collected from an iterator brings a stable sort
        // into the bundle for each iterator type (about 3 KB each).
        let mut models = Map::new();
        for (id, entries) in self.models.iter() {
            let mut providers = Map::new();
            for e in entries {
                let view = json!({
                    "live": e.live,
                    "input": e.price.map(|p| usd(p.input)),
                    "output": e.price.map(|p| usd(p.output)),
                });
                providers.insert(e.provider.clone(), view);
            }
            models.insert(id.clone(), Value::Object(providers));
        }
        json!({ "fetched_at": self.fetched_at.to_string(), "models": models })
    }
}

/// What a model id's suffix asks of the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin<'a> {
    /// `model:together`: this provider and no other.
    Provider(&'a str),
    /// `model:fastest`, `:cheapest`, `:preferred`: the router chooses, by this policy.
    Policy(&'a str),
    /// No suffix: the router chooses.
    Unpinned,
}

/// The suffixes the router reads as a selection policy, not a provider.
pub const POLICIES: &[&str] = &["fastest", "cheapest", "preferred"];

/// Splits a model id into its base and what its suffix pins. Only the last `:` counts; an
/// empty suffix or an empty base is no suffix at all, with the whole string as the base.
///
/// ```
/// use hf_gate::core::price_book::{split_model, Pin};
/// assert_eq!(split_model("m/x:together"), ("m/x", Pin::Provider("together")));
/// assert_eq!(split_model("m/x:cheapest"), ("m/x", Pin::Policy("cheapest")));
/// assert_eq!(split_model("m/x"), ("m/x", Pin::Unpinned));
/// assert_eq!(split_model("m/x:"), ("m/x:", Pin::Unpinned));
/// ```
pub fn split_model(model: &str) -> (&str, Pin<'_>) {
    match model.rsplit_once(':') {
        Some((base, suffix)) if !base.is_empty() && !suffix.is_empty() => {
            if POLICIES.iter().any(|p| p.eq_ignore_ascii_case(suffix)) {
                (base, Pin::Policy(suffix))
            } else {
                (base, Pin::Provider(suffix))
            }
        }
        _ => (model, Pin::Unpinned),
    }
}

/// How one call is priced: `reserve` is what its worst case is reserved at, `settle` the price
/// it settles at once upstream says which provider served it. Built by `quote`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub reserve: Price,
    /// The provider the call is pinned to, if any.
    pub pinned: Option<String>,
    /// For an unpinned call, the live providers the router may pick and their effective prices.
    candidates: Vec<(String, Price)>,
}

impl Quote {
    /// The price to settle at, given the provider upstream says served the call
    /// (`x-inference-provider`). Never above `reserve`, in either component.
    pub fn settle(&self, served: Option<&str>) -> Price {
        if self.pinned.is_some() {
            return self.reserve;
        }
        let Some(served) = served.map(str::trim) else { return self.reserve };
        self.candidates.iter().find(|(p, _)| p.eq_ignore_ascii_case(served)).map_or(self.reserve, |(_, price)| Price {
            input: price.input.min(self.reserve.input),
            output: price.output.min(self.reserve.output),
        })
    }

    /// The live providers an unpinned call may be served by, with their effective prices
    /// (empty when pinned, or when the book knew none).
    pub fn candidates(&self) -> impl Iterator<Item = (&str, Price)> {
        self.candidates.iter().map(|(p, price)| (p.as_str(), *price))
    }
}

/// Prices a call for `model`, sent to a path that names `path_provider` (if any), by the
/// rules in this module's documentation.
///
/// ```
/// use hf_gate::core::price_book::{quote, PriceBook};
/// use hf_gate::core::pricing::{Price, PriceTable};
/// use hf_gate::core::time::UnixMillis;
/// let prices = PriceTable::parse(r#"{"*": {"input": 1, "output": 3}}"#).unwrap();
/// let body = br#"{"data":[{"id":"m","providers":[
///   {"provider":"a","pricing":{"input":0.1,"output":0.9}},
///   {"provider":"b","pricing":{"input":0.3,"output":0.5}}]}]}"#;
/// let book = PriceBook::from_router_models(body, UnixMillis(0)).unwrap();
/// let q = quote(&prices, Some(&book), "m", None);
/// assert_eq!(q.reserve, Price { input: 300_000, output: 900_000 });
/// assert_eq!(q.settle(Some("b")), Price { input: 300_000, output: 500_000 });
/// assert_eq!(q.settle(None), q.reserve);
/// let pinned = quote(&prices, Some(&book), "m:a", None);
/// assert_eq!(pinned.reserve, Price { input: 100_000, output: 900_000 });
/// ```
pub fn quote(prices: &PriceTable, book: Option<&PriceBook>, model: &str, path_provider: Option<&str>) -> Quote {
    let (base, pin) = split_model(model);
    let listed = book.map_or(&[][..], |b| b.providers_of(base));
    let effective = |p: &str| {
        prices
            .exact(&format!("{base}:{p}"))
            .or_else(|| prices.exact(base))
            .or_else(|| listed.iter().find(|e| e.provider.eq_ignore_ascii_case(p)).and_then(|e| e.price))
            .unwrap_or_else(|| prices.fallback())
    };
    let pinned = path_provider.or(match pin {
        Pin::Provider(p) => Some(p),
        Pin::Policy(_) | Pin::Unpinned => None,
    });
    if let Some(p) = pinned {
        return Quote { reserve: effective(p), pinned: Some(p.to_string()), candidates: Vec::new() };
    }
    let candidates: Vec<(String, Price)> =
        listed.iter().filter(|e| e.live).map(|e| (e.provider.clone(), effective(&e.provider))).collect();
    let reserve = candidates
        .iter()
        .map(|(_, p)| *p)
        .reduce(Price::max)
        .unwrap_or_else(|| prices.exact(base).unwrap_or_else(|| prices.fallback()));
    Quote { reserve, pinned: None, candidates }
}

fn valid_model_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_MODEL_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

fn valid_provider(name: &str) -> bool {
    valid_slug(name, MAX_PROVIDER_LEN)
}

fn max_micro_per_million() -> u64 {
    (MAX_USD_PER_MILLION * 1e6) as u64
}

/// USD per 1M tokens to micro-USD per 1M, or `None` when it is no price at all.
fn usd_per_million(v: &Value) -> Option<u64> {
    let v = v.as_f64()?;
    (v.is_finite() && (0.0..=MAX_USD_PER_MILLION).contains(&v)).then(|| (v * 1e6).round() as u64)
}

/// Adds a provider to a model's list unless the list is full or already has it.
fn keep_entry(kept: &mut Vec<ProviderEntry>, e: ProviderEntry) {
    if kept.len() < MAX_PROVIDERS_PER_MODEL
        && valid_provider(&e.provider)
        && !kept.iter().any(|k| k.provider == e.provider)
    {
        kept.push(e);
    }
}

/// One `providers[]` entry of the router's list, or `None` when it cannot be read.
fn provider_entry(v: &Value) -> Option<ProviderEntry> {
    let provider = v.get("provider")?.as_str()?;
    let live = match v.get("status") {
        None | Some(Value::Null) => true,
        Some(status) => status.as_str() == Some("live"),
    };
    let price = match v.get("pricing") {
        None | Some(Value::Null) => None,
        Some(p) => Some(Price { input: usd_per_million(p.get("input")?)?, output: usd_per_million(p.get("output")?)? }),
    };
    Some(ProviderEntry { provider: provider.to_string(), live, price })
}

/// One `data[]` entry of the router's list: its id and the providers that could be read.
fn model_entry(v: &Value) -> Option<(String, Vec<ProviderEntry>)> {
    let id = v.get("id")?.as_str().filter(|id| valid_model_id(id))?;
    let mut kept = Vec::new();
    for p in v.get("providers").and_then(Value::as_array).map_or(&[][..], Vec::as_slice) {
        if let Some(e) = provider_entry(p) {
            keep_entry(&mut kept, e);
        }
    }
    Some((id.to_string(), kept))
}

#[derive(Deserialize)]
struct RouterList {
    data: BoundedModels,
}

/// The `data` array, read one entry at a time so a malformed entry is skipped and entries
/// past `MAX_MODELS` are skipped without being built.
struct BoundedModels(SortedMap<String, Vec<ProviderEntry>>);

impl<'de> Deserialize<'de> for BoundedModels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = BoundedModels;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of models")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BoundedModels, A::Error> {
                let mut models = SortedMap::new();
                while models.len() < MAX_MODELS {
                    let Some(v) = seq.next_element::<Value>()? else { return Ok(BoundedModels(models)) };
                    if let Some((id, entries)) = model_entry(&v) {
                        models.get_or_insert_with(id, || entries);
                    }
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(BoundedModels(models))
            }
        }
        d.deserialize_seq(Entries)
    }
}

/// A provider as stored: `[name, live, [input, output] | null]`, nothing more or less.
fn stored_entry(row: &Value) -> Option<(&str, bool, Option<Price>)> {
    let [provider, live, price] = row.as_array()?.as_slice() else { return None };
    let price = match price {
        Value::Null => None,
        p => {
            let [input, output] = p.as_array()?.as_slice() else { return None };
            Some(Price { input: input.as_u64()?, output: output.as_u64()? })
        }
    };
    Some((provider.as_str()?, live.as_bool()?, price))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTER_BODY: &str = r#"{"object":"list","data":[
      {"id":"openai/gpt-oss-120b","object":"model","created":1,"owned_by":"openai","providers":[
        {"provider":"together","status":"live","context_length":131072,
         "pricing":{"input":0.15,"output":0.6},"supports_tools":true},
        {"provider":"groq","status":"error"},
        {"provider":"cerebras","pricing":{"input":0.25,"output":0.69}},
        {"provider":"novita","status":"staging","pricing":{"input":0.1,"output":0.5}},
        {"provider":"fireworks-ai","status":"live"}
      ]},
      {"id":"meta-llama/Llama-3.1-8B-Instruct","providers":[
        {"provider":"nebius","status":"live","pricing":{"input":0.02,"output":0.06}}
      ]}
    ]}"#;

    fn price(input: u64, output: u64) -> Price {
        Price { input, output }
    }

    fn book() -> PriceBook {
        PriceBook::from_router_models(ROUTER_BODY.as_bytes(), UnixMillis(1_000)).unwrap()
    }

    fn table(json: &str) -> PriceTable {
        PriceTable::parse(json).unwrap()
    }

    #[test]
    fn the_routers_list_is_read_with_status_and_prices() {
        let b = book();
        assert_eq!(b.models(), 2);
        assert_eq!(b.fetched_at, UnixMillis(1_000));
        let p = b.providers_of("openai/gpt-oss-120b");
        let names: Vec<&str> = p.iter().map(|e| e.provider.as_str()).collect();
        assert_eq!(names, ["together", "groq", "cerebras", "novita", "fireworks-ai"]);
        assert_eq!(
            p[0],
            ProviderEntry { provider: "together".into(), live: true, price: Some(price(150_000, 600_000)) }
        );
        assert_eq!(p[1], ProviderEntry { provider: "groq".into(), live: false, price: None });
        assert!(p[2].live, "an absent status is live");
        assert!(!p[3].live, "staging is not live");
        assert_eq!(p[4].price, None);
        assert!(b.providers_of("nobody/knows").is_empty());
    }

    #[test]
    fn malformed_entries_are_skipped_not_fatal() {
        let body = br#"{"data":[
          {"id":"m","providers":[
            {"provider":"neg","pricing":{"input":-1,"output":1}},
            {"provider":"str","pricing":{"input":"0.1","output":1}},
            {"provider":"half","pricing":{"input":0.1}},
            {"provider":"huge","pricing":{"input":1e300,"output":1}},
            {"pricing":{"input":1,"output":1}},
            {"provider":"","pricing":{"input":1,"output":1}},
            {"provider":"bad/name"},
            {"provider":42},
            "not an object",
            {"provider":"ok","pricing":{"input":1,"output":2}},
            {"provider":"ok","pricing":{"input":9,"output":9}},
            {"provider":"odd-status","status":7}
          ]},
          {"providers":[]},
          {"id":42},
          {"id":""},
          {"id":"has space"},
          17,
          {"id":"no-providers"},
          {"id":"m","providers":[{"provider":"later"}]}
        ]}"#;
        let b = PriceBook::from_router_models(body, UnixMillis(0)).unwrap();
        assert_eq!(b.models(), 2);
        assert_eq!(
            b.providers_of("m"),
            [
                ProviderEntry { provider: "ok".into(), live: true, price: Some(price(1_000_000, 2_000_000)) },
                ProviderEntry { provider: "odd-status".into(), live: false, price: None },
            ]
        );
        assert!(b.providers_of("no-providers").is_empty());
    }

    #[test]
    fn a_body_that_is_no_list_is_an_error() {
        for bad in ["", "[]", "{}", r#"{"data":{}}"#, r#"{"data":null}"#, r#"{"data":[}"#, "null", "<html>"] {
            assert!(PriceBook::from_router_models(bad.as_bytes(), UnixMillis(0)).is_err(), "{bad}");
        }
        assert_eq!(PriceBook::from_router_models(br#"{"data":[]}"#, UnixMillis(0)).unwrap().models(), 0);
    }

    #[test]
    fn the_book_is_bounded() {
        let providers: Vec<String> =
            (0..100).map(|i| format!(r#"{{"provider":"p{i}","pricing":{{"input":1,"output":1}}}}"#)).collect();
        let wide = format!(r#"{{"data":[{{"id":"m","providers":[{}]}}]}}"#, providers.join(","));
        let b = PriceBook::from_router_models(wide.as_bytes(), UnixMillis(0)).unwrap();
        assert_eq!(b.providers_of("m").len(), MAX_PROVIDERS_PER_MODEL);
        assert_eq!(b.providers_of("m")[63].provider, "p63");

        let models: Vec<String> = (0..MAX_MODELS + 50).map(|i| format!(r#"{{"id":"m{i}"}}"#)).collect();
        let long = format!(
            r#"{{"data":[{}, {{"id":"last","providers":[{{"provider":"a"}}],"junk":[1,2,{{"a":3}}]}}]}}"#,
            models.join(",")
        );
        let b = PriceBook::from_router_models(long.as_bytes(), UnixMillis(0)).unwrap();
        assert_eq!(b.models(), MAX_MODELS);
        assert!(b.providers_of("last").is_empty());
    }

    #[test]
    fn the_stored_form_round_trips_exactly_and_is_compact() {
        let b = book();
        let s = b.to_json();
        assert_eq!(PriceBook::from_json(&s), Ok(b.clone()));
        assert_eq!(PriceBook::from_json(&s).unwrap().to_json(), s);
        assert!(s.contains(r#"["together",true,[150000,600000]]"#), "{s}");
        assert!(s.contains(r#"["groq",false,null]"#), "{s}");
        let empty = PriceBook::from_entries(UnixMillis(5), []);
        // the form serde wrote for earlier builds, byte for byte
        assert_eq!(empty.to_json(), r#"{"v":1,"fetched_at":5,"models":{}}"#);
        assert_eq!(PriceBook::from_json(&empty.to_json()), Ok(empty));
        assert_eq!(
            s,
            r#"{"v":1,"fetched_at":1000,"models":{"meta-llama/Llama-3.1-8B-Instruct":[["nebius",true,[20000,60000]]],"openai/gpt-oss-120b":[["together",true,[150000,600000]],["groq",false,null],["cerebras",true,[250000,690000]],["novita",false,[100000,500000]],["fireworks-ai",true,null]]}}"#
        );
    }

    #[test]
    fn a_stored_form_it_could_not_have_written_is_refused() {
        for bad in [
            "",
            "{}",
            r#"{"v":2,"fetched_at":0,"models":{}}"#,
            r#"{"v":1,"fetched_at":0,"models":{},"extra":1}"#,
            r#"{"v":1,"fetched_at":-1,"models":{}}"#,
            r#"{"v":1,"fetched_at":0,"models":{"":[]}}"#,
            r#"{"v":1,"fetched_at":0,"models":{"m":[["a",true]]}}"#,
            r#"{"v":1,"fetched_at":0,"models":{"m":[["a",true,[1]]]}}"#,
            r#"{"v":1,"fetched_at":0,"models":{"m":[["a",true,null],["a",false,null]]}}"#,
            r#"{"v":1,"fetched_at":0,"models":{"m":[["a/b",true,null]]}}"#,
            r#"{"v":1,"fetched_at":0,"models":{"m":[["a",true,[1000000000001,0]]]}}"#,
        ] {
            assert!(PriceBook::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn staleness_counts_from_the_fetch() {
        let b = book();
        assert!(!b.is_stale(UnixMillis(1_000), 60_000));
        assert!(!b.is_stale(UnixMillis(60_999), 60_000));
        assert!(b.is_stale(UnixMillis(61_000), 60_000));
        assert!(!b.is_stale(UnixMillis(0), 60_000), "a clock that stepped back sees a fresh book");
    }

    #[test]
    fn the_admin_view_shows_usd_per_million() {
        let v = book().view();
        assert_eq!(v["fetched_at"], "1970-01-01T00:00:01Z");
        let m = &v["models"]["openai/gpt-oss-120b"];
        assert_eq!(m["together"], json!({"live": true, "input": 0.15, "output": 0.6}));
        assert_eq!(m["groq"], json!({"live": false, "input": null, "output": null}));
        assert_eq!(v["models"]["meta-llama/Llama-3.1-8B-Instruct"]["nebius"]["output"], json!(0.06));
    }

    #[test]
    fn suffixes_split_on_the_last_colon_only() {
        assert_eq!(split_model("a:b:c"), ("a:b", Pin::Provider("c")));
        assert_eq!(split_model(":together"), (":together", Pin::Unpinned));
        assert_eq!(split_model(""), ("", Pin::Unpinned));
        assert_eq!(split_model("m:fastest"), ("m", Pin::Policy("fastest")));
        assert_eq!(split_model("m:preferred"), ("m", Pin::Policy("preferred")));
        // read as a policy in any case: reserved at the dearest live provider, which covers
        // whichever the router picks, or nothing is billed if it refuses the spelling
        assert_eq!(split_model("m:Fastest"), ("m", Pin::Policy("Fastest")));
    }

    const M: &str = "openai/gpt-oss-120b";

    #[test]
    fn a_pinned_call_is_priced_at_its_provider_whoever_upstream_names() {
        let prices = table(r#"{"*": {"input": 1, "output": 3}}"#);
        let b = book();
        let q = quote(&prices, Some(&b), &format!("{M}:together"), None);
        assert_eq!(q.reserve, price(150_000, 600_000));
        assert_eq!(q.pinned.as_deref(), Some("together"));
        assert_eq!(q.settle(Some("cerebras")), q.reserve);
        assert_eq!(q.settle(None), q.reserve);
        // the path pins like a suffix, and wins over one
        let q = quote(&prices, Some(&b), &format!("{M}:together"), Some("cerebras"));
        assert_eq!(q.reserve, price(250_000, 690_000));
        assert_eq!(q.pinned.as_deref(), Some("cerebras"));
        // pinned to a provider the book has unpriced, or does not list: "*"
        assert_eq!(quote(&prices, Some(&b), &format!("{M}:groq"), None).reserve, price(1_000_000, 3_000_000));
        assert_eq!(quote(&prices, Some(&b), &format!("{M}:sambanova"), None).reserve, price(1_000_000, 3_000_000));
        assert_eq!(quote(&prices, None, &format!("{M}:together"), None).reserve, price(1_000_000, 3_000_000));
    }

    #[test]
    fn a_model_or_provider_spelled_in_another_case_is_priced_as_the_listed_one() {
        // the router serves `openai/GPT-OSS-120B` as the listed model (Hub ids are
        // case-insensitive), so its price is the listed one's, not "*"
        let prices = table(
            r#"{"*": {"input": 0.01, "output": 0.01}, "OpenAI/gpt-oss-120b:Cerebras": {"input": 2, "output": 2}}"#,
        );
        let b = book();
        let listed = quote(&prices, Some(&b), M, None);
        for spelling in [M.to_uppercase(), "OpenAI/Gpt-Oss-120b".to_string()] {
            assert_eq!(quote(&prices, Some(&b), &spelling, None), listed, "{spelling}");
        }
        let pinned = quote(&prices, Some(&b), &format!("{M}:together"), None).reserve;
        assert_eq!(quote(&prices, Some(&b), &format!("{}:TOGETHER", M.to_uppercase()), None).reserve, pinned);
        // the operator's entry for one spelling prices every spelling
        assert_eq!(quote(&prices, Some(&b), &format!("{M}:cerebras"), None).reserve, price(2_000_000, 2_000_000));
    }

    #[test]
    fn the_operators_table_overrides_the_book_most_specific_first() {
        let prices = table(&format!(
            r#"{{"*": {{"input": 1, "output": 3}}, "{M}": {{"input": 0.2, "output": 0.2}},
                "{M}:together": {{"input": 0.5, "output": 0.1}}}}"#
        ));
        let b = book();
        assert_eq!(quote(&prices, Some(&b), &format!("{M}:together"), None).reserve, price(500_000, 100_000));
        assert_eq!(quote(&prices, Some(&b), &format!("{M}:cerebras"), None).reserve, price(200_000, 200_000));
        // unpinned: together at its own override, the others at the model's
        let q = quote(&prices, Some(&b), M, None);
        assert_eq!(q.reserve, price(500_000, 200_000));
        assert_eq!(q.settle(Some("together")), price(500_000, 100_000));
        assert_eq!(q.settle(Some("cerebras")), price(200_000, 200_000));
    }

    #[test]
    fn an_unpinned_call_reserves_the_dearest_live_provider_and_settles_at_the_one_that_served() {
        let prices = table(r#"{"*": {"input": 1, "output": 3}}"#);
        let b = book();
        for model in [M.to_string(), format!("{M}:cheapest"), format!("{M}:fastest")] {
            let q = quote(&prices, Some(&b), &model, None);
            assert_eq!(q.pinned, None);
            // together 0.15/0.6, cerebras 0.25/0.69, fireworks-ai unpriced -> "*" 1/3
            assert_eq!(q.reserve, price(1_000_000, 3_000_000), "{model}");
            assert_eq!(q.settle(Some("together")), price(150_000, 600_000));
            assert_eq!(q.settle(Some(" Cerebras ")), price(250_000, 690_000));
            assert_eq!(q.settle(Some("fireworks-ai")), price(1_000_000, 3_000_000));
            // not live, or unknown, or unnamed: the reserve
            assert_eq!(q.settle(Some("novita")), q.reserve);
            assert_eq!(q.settle(Some("groq")), q.reserve);
            assert_eq!(q.settle(Some("elsewhere")), q.reserve);
            assert_eq!(q.settle(None), q.reserve);
        }
        let q = quote(&prices, Some(&b), M, None);
        let names: Vec<&str> = q.candidates().map(|(p, _)| p).collect();
        assert_eq!(names, ["together", "cerebras", "fireworks-ai"]);
    }

    #[test]
    fn the_reserve_is_the_maximum_of_each_component_separately() {
        let prices = table(r#"{"*": {"input": 1, "output": 3}}"#);
        let body = br#"{"data":[{"id":"m","providers":[
          {"provider":"a","pricing":{"input":0.9,"output":0.1}},
          {"provider":"b","pricing":{"input":0.1,"output":0.9}}]}]}"#;
        let b = PriceBook::from_router_models(body, UnixMillis(0)).unwrap();
        let q = quote(&prices, Some(&b), "m", None);
        assert_eq!(q.reserve, price(900_000, 900_000));
        assert_eq!(q.settle(Some("a")), price(900_000, 100_000));
    }

    #[test]
    fn with_no_live_candidate_an_unpinned_call_is_priced_by_the_table() {
        let prices = table(r#"{"*": {"input": 1, "output": 3}, "known": {"input": 0.1, "output": 0.2}}"#);
        let dead = PriceBook::from_router_models(
            br#"{"data":[{"id":"known","providers":[{"provider":"a","status":"error","pricing":{"input":9,"output":9}}]},
                         {"id":"other","providers":[{"provider":"a","status":"staging"}]}]}"#,
            UnixMillis(0),
        )
        .unwrap();
        for book in [None, Some(&dead)] {
            let q = quote(&prices, book, "known", None);
            assert_eq!(q.reserve, price(100_000, 200_000));
            assert_eq!(q.settle(Some("a")), q.reserve);
            let q = quote(&prices, book, "other", None);
            assert_eq!(q.reserve, price(1_000_000, 3_000_000));
            assert_eq!(q.settle(Some("a")), q.reserve);
            assert_eq!(quote(&prices, book, "unlisted:cheapest", None).reserve, price(1_000_000, 3_000_000));
        }
    }

    /// A small deterministic generator, so the property below needs no extra crate and runs
    /// the same cases every time.
    struct XorShift(u64);
    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn price_of(rng: &mut XorShift) -> Price {
        price(rng.below(5_000_000), rng.below(5_000_000))
    }

    fn usd(micro: u64) -> String {
        format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000)
    }

    #[test]
    fn settling_never_exceeds_the_reserve_over_many_generated_books() {
        const POOL: [&str; 5] = ["a", "b", "c", "d", "e"];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for case in 0..3_000 {
            // an operator table with a random fallback and random overrides
            let mut table_json = vec![format!(
                r#""*": {{"input": {}, "output": {}}}"#,
                usd(rng.below(5_000_000)),
                usd(rng.below(5_000_000))
            )];
            if rng.below(3) == 0 {
                let p = price_of(&mut rng);
                table_json.push(format!(r#""m": {{"input": {}, "output": {}}}"#, usd(p.input), usd(p.output)));
            }
            for name in POOL {
                if rng.below(4) == 0 {
                    let p = price_of(&mut rng);
                    table_json.push(format!(
                        r#""m:{name}": {{"input": {}, "output": {}}}"#,
                        usd(p.input),
                        usd(p.output)
                    ));
                }
            }
            let prices = table(&format!("{{{}}}", table_json.join(",")));
            // a book with a random subset of providers, live or not, priced or not
            let mut entries = Vec::new();
            for name in POOL {
                if rng.below(3) != 0 {
                    let live = rng.below(4) != 0;
                    let price = if rng.below(3) == 0 { None } else { Some(price_of(&mut rng)) };
                    entries.push(ProviderEntry { provider: name.to_string(), live, price });
                }
            }
            let book = PriceBook::from_entries(UnixMillis(0), [("m".to_string(), entries)]);
            let book = (rng.below(8) != 0).then_some(&book);
            for model in ["m", "m:cheapest", "m:a", "m:e"] {
                let q = quote(&prices, book, model, None);
                for served in POOL.iter().copied().map(Some).chain([None, Some("zzz")]) {
                    let s = q.settle(served);
                    assert!(
                        s.input <= q.reserve.input && s.output <= q.reserve.output,
                        "case {case}: {model} served by {served:?} settles at {s:?} above {:?}",
                        q.reserve
                    );
                }
                // a live candidate settles at exactly its own (pinned) price
                if q.pinned.is_none() {
                    for (name, p) in q.candidates() {
                        assert_eq!(q.settle(Some(name)), p, "case {case}");
                        assert_eq!(quote(&prices, book, &format!("m:{name}"), None).reserve, p, "case {case}");
                    }
                }
            }
        }
    }
}
