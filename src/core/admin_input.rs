//! What the admin API accepts: the shapes of its request bodies (unknown fields refused) and
//! the rules a key or org must keep (plans, rates, origins, seats, names, provider keys).
//! Pure: the edge reads the body and does the I/O; every rule is here, tested natively.

use crate::core::cors::normalise_origin;
use crate::core::error::GatewayError;
use crate::core::keys::{self, KeyRecord, RateLimit, SealedKey};
use crate::core::paths::PROVIDERS;
use crate::core::settings::Settings;
use crate::core::sorted::SortedMap;
use crate::core::wire::{Errors, Fields, FromJson};
use serde_json::Value;

fn bad(why: impl Into<String>) -> GatewayError {
    GatewayError::InvalidRequest(why.into())
}

pub struct NewKey {
    pub plan: Option<String>,
    pub name: Option<String>,
    pub org: Option<String>,
    pub allowed_origins: Vec<String>,
    pub allowed_endpoints: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    pub monthly_credit_micro_usd: Option<u64>,
    pub spend_cap_micro_usd: Option<u64>,
    pub provider_key: SortedMap<String, String>,
}

/// In a patch, `Some(None)` is an explicit `null` (clear), `None` is "leave as it is".
pub struct KeyPatch {
    pub name: Option<String>,
    pub plan: Option<String>,
    pub allowed_origins: Option<Vec<String>>,
    pub allowed_endpoints: Option<Vec<String>>,
    pub rate_limit: Option<Option<RateLimit>>,
    pub monthly_credit_micro_usd: Option<Option<u64>>,
    pub spend_cap_micro_usd: Option<Option<u64>>,
    pub provider_key: Option<SortedMap<String, String>>,
}

pub struct NewOrg {
    pub id: String,
    pub plan: String,
    pub seats: u32,
    pub bill_to: Option<String>,
    pub spend_limit_micro_usd: Option<u64>,
    pub rate_limit: Option<RateLimit>,
    /// How many Durable Objects the pool is spread over (`core::lease`).
    pub shards: Option<u32>,
}

pub struct OrgPatch {
    pub plan: Option<String>,
    pub seats: Option<u32>,
    pub bill_to: Option<String>,
    pub spend_limit_micro_usd: Option<Option<u64>>,
    pub rate_limit: Option<Option<RateLimit>>,
    /// Accepted only unchanged: the shard count is fixed when the org is created.
    pub shards: Option<u32>,
}

// The bodies as `core::wire` reads them: as serde's derives with `deny_unknown_fields` read
// them (no unknown or repeated field, a missing `Option` is `None`), each patch's nullable
// fields read with `Fields::patch`.
impl FromJson for NewKey {
    fn read(v: &Value, e: &Errors) -> Self {
        const FIELDS: &[&str] = &[
            "plan",
            "name",
            "org",
            "allowed_origins",
            "allowed_endpoints",
            "rate_limit",
            "monthly_credit_micro_usd",
            "spend_cap_micro_usd",
            "provider_key",
        ];
        let f = Fields::only(v, e, FIELDS);
        NewKey {
            plan: f.get("plan"),
            name: f.get("name"),
            org: f.get("org"),
            allowed_origins: f.or_default("allowed_origins"),
            allowed_endpoints: f.or_default("allowed_endpoints"),
            rate_limit: f.get("rate_limit"),
            monthly_credit_micro_usd: f.get("monthly_credit_micro_usd"),
            spend_cap_micro_usd: f.get("spend_cap_micro_usd"),
            provider_key: f.or_default("provider_key"),
        }
    }
    fn fallback() -> Self {
        NewKey {
            plan: None,
            name: None,
            org: None,
            allowed_origins: Vec::new(),
            allowed_endpoints: Vec::new(),
            rate_limit: None,
            monthly_credit_micro_usd: None,
            spend_cap_micro_usd: None,
            provider_key: SortedMap::new(),
        }
    }
}

impl FromJson for KeyPatch {
    fn read(v: &Value, e: &Errors) -> Self {
        const FIELDS: &[&str] = &[
            "name",
            "plan",
            "allowed_origins",
            "allowed_endpoints",
            "rate_limit",
            "monthly_credit_micro_usd",
            "spend_cap_micro_usd",
            "provider_key",
        ];
        let f = Fields::only(v, e, FIELDS);
        KeyPatch {
            name: f.get("name"),
            plan: f.get("plan"),
            allowed_origins: f.get("allowed_origins"),
            allowed_endpoints: f.get("allowed_endpoints"),
            rate_limit: f.patch("rate_limit"),
            monthly_credit_micro_usd: f.patch("monthly_credit_micro_usd"),
            spend_cap_micro_usd: f.patch("spend_cap_micro_usd"),
            provider_key: f.get("provider_key"),
        }
    }
    fn fallback() -> Self {
        KeyPatch {
            name: None,
            plan: None,
            allowed_origins: None,
            allowed_endpoints: None,
            rate_limit: None,
            monthly_credit_micro_usd: None,
            spend_cap_micro_usd: None,
            provider_key: None,
        }
    }
}

impl FromJson for NewOrg {
    fn read(v: &Value, e: &Errors) -> Self {
        const FIELDS: &[&str] = &["id", "plan", "seats", "bill_to", "spend_limit_micro_usd", "rate_limit", "shards"];
        let f = Fields::only(v, e, FIELDS);
        NewOrg {
            id: f.get("id"),
            plan: f.get("plan"),
            seats: f.get("seats"),
            bill_to: f.get("bill_to"),
            spend_limit_micro_usd: f.get("spend_limit_micro_usd"),
            rate_limit: f.get("rate_limit"),
            shards: f.get("shards"),
        }
    }
    fn fallback() -> Self {
        NewOrg {
            id: String::new(),
            plan: String::new(),
            seats: 0,
            bill_to: None,
            spend_limit_micro_usd: None,
            rate_limit: None,
            shards: None,
        }
    }
}

impl FromJson for OrgPatch {
    fn read(v: &Value, e: &Errors) -> Self {
        const FIELDS: &[&str] = &["plan", "seats", "bill_to", "spend_limit_micro_usd", "rate_limit", "shards"];
        let f = Fields::only(v, e, FIELDS);
        OrgPatch {
            plan: f.get("plan"),
            seats: f.get("seats"),
            bill_to: f.get("bill_to"),
            spend_limit_micro_usd: f.patch("spend_limit_micro_usd"),
            rate_limit: f.patch("rate_limit"),
            shards: f.get("shards"),
        }
    }
    fn fallback() -> Self {
        OrgPatch { plan: None, seats: None, bill_to: None, spend_limit_micro_usd: None, rate_limit: None, shards: None }
    }
}

pub fn check_rate(r: &Option<RateLimit>) -> Result<(), GatewayError> {
    match r {
        Some(r) if crate::core::gcra::Quota::new(r.rpm, r.burst).is_none() => {
            Err(bad("rate_limit: rpm and burst must be at least 1"))
        }
        _ => Ok(()),
    }
}

pub fn check_origins(list: &[String]) -> Result<Vec<String>, GatewayError> {
    if list.len() > 32 {
        return Err(bad("allowed_origins: at most 32"));
    }
    list.iter().map(|o| normalise_origin(o).map_err(bad)).collect()
}

/// The endpoints a key may call: names `ENDPOINTS` has (an unknown name is a mistake worth
/// saying at once, not a key that silently reaches nothing), without repeats.
pub fn check_endpoints(list: &[String], s: &Settings) -> Result<Vec<String>, GatewayError> {
    if list.len() > 32 {
        return Err(bad("allowed_endpoints: at most 32"));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for name in list {
        if s.endpoints.get(name).is_none() {
            return Err(bad(format!("allowed_endpoints: no endpoint named {name:?} in ENDPOINTS")));
        }
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    Ok(out)
}

pub fn check_org_fields(plan: &str, seats: u32, bill_to: &str, s: &Settings) -> Result<(), GatewayError> {
    let p = s.plan(plan).ok_or_else(|| bad(format!("unknown plan {plan:?}")))?;
    if !p.pooled {
        return Err(bad("an org's plan must be a pooled plan (team, enterprise)"));
    }
    if !(1..=100_000).contains(&seats) {
        return Err(bad("seats must be from 1 to 100000"));
    }
    if !keys::valid_slug(bill_to, 96) {
        return Err(bad("bill_to must be an org name: letters, digits, '-', '_', '.'"));
    }
    Ok(())
}

/// Applies a patch to a record (validated; provider keys already sealed).
pub fn apply_key_patch(
    p: &KeyPatch,
    sealed: Option<&SortedMap<String, SealedKey>>,
    record: &mut KeyRecord,
    s: &Settings,
) -> Result<(), GatewayError> {
    if let Some(name) = &p.name {
        if !keys::valid_name(name) {
            return Err(bad("name: at most 100 printable characters"));
        }
        record.name = name.clone();
    }
    if let Some(plan) = &p.plan {
        let new = s.plan(plan).ok_or_else(|| bad(format!("unknown plan {plan:?}")))?;
        let old = s.plan(&record.plan);
        if old.is_some_and(|o| o.pooled != new.pooled || o.byok != new.byok) {
            return Err(bad("a key can change plan only within the same kind (personal, org, byok)"));
        }
        record.plan = plan.clone();
    }
    if let Some(origins) = &p.allowed_origins {
        record.allowed_origins = check_origins(origins)?;
    }
    if let Some(endpoints) = &p.allowed_endpoints {
        record.allowed_endpoints = check_endpoints(endpoints, s)?;
    }
    if let Some(r) = p.rate_limit {
        check_rate(&r)?;
        record.rate_limit = r;
    }
    if let Some(c) = p.monthly_credit_micro_usd {
        record.monthly_credit_micro_usd = c;
    }
    if let Some(c) = p.spend_cap_micro_usd {
        record.spend_cap_micro_usd = c;
    }
    if let Some(pk) = sealed {
        record.provider_keys = pk.clone();
    }
    Ok(())
}

/// A provider key given for a `byok` key: a known provider, and a value that can be sent as a
/// header.
pub fn check_provider_key(provider: &str, key: &str) -> Result<(), GatewayError> {
    if !PROVIDERS.contains(&provider) {
        return Err(bad(format!("provider_key: unknown provider {provider:?}")));
    }
    if key.is_empty() || key.len() > 512 || !crate::core::headers::safe_value(key, 512) {
        return Err(bad(format!("provider_key: the key for {provider} is not a valid token")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_origins_and_provider_keys_are_checked() {
        assert!(check_rate(&Some(RateLimit { rpm: 0, burst: 1 })).is_err());
        assert!(check_rate(&Some(RateLimit { rpm: 60, burst: 10 })).is_ok());
        assert!(check_rate(&None).is_ok());
        assert!(check_origins(&vec!["https://a.example".to_string(); 33]).is_err());
        assert!(check_origins(&["https://a.example/path".to_string()]).is_err());
        assert_eq!(check_origins(&["https://A.example".to_string()]).unwrap(), vec!["https://a.example".to_string()]);
        assert!(check_provider_key("nowhere", "k").is_err());
        assert!(check_provider_key("together", "").is_err());
        assert!(check_provider_key("together", "line\nbreak").is_err());
        assert!(check_provider_key("together", "tk-123").is_ok());
    }

    #[test]
    fn bodies_with_unknown_or_repeated_fields_are_refused() {
        use crate::core::wire::parse;
        let unknown = parse::<NewKey>(r#"{"plan":"free","admin":true}"#).err().unwrap();
        assert!(unknown.0.starts_with(": unknown field `admin`, expected one of `plan`, `name`"), "{unknown}");
        assert!(parse::<OrgPatch>(r#"{"seats":2,"owner":"x"}"#).is_err());
        let repeated = parse::<NewKey>(r#"{"plan":"free","plan":"pro"}"#).err().unwrap();
        assert_eq!(repeated.0, ": duplicate field `plan`");
        assert!(parse::<NewKey>(r#"{"rate_limit":{"rpm":1,"rpm":2,"burst":1}}"#).is_err(), "a repeat in a struct");
        // a map keeps the last of a repeated key, as serde's BTreeMap did
        let n = parse::<NewKey>(r#"{"provider_key":{"groq":"a","groq":"b"}}"#).unwrap();
        assert_eq!(n.provider_key.get("groq").map(String::as_str), Some("b"));
        assert!(parse::<NewKey>(r#"{"allowed_origins":null}"#).is_err(), "a defaulted list is not nullable");
        assert!(parse::<NewOrg>(r#"{"id":"o","plan":"team"}"#).is_err(), "seats is required");
        assert!(parse::<NewOrg>(r#"{"id":"o","plan":"team","seats":-1}"#).is_err());
        assert!(parse::<NewKey>("[]").is_err());
        let p = parse::<KeyPatch>(r#"{"rate_limit":null,"spend_cap_micro_usd":7}"#).unwrap();
        assert_eq!(p.rate_limit, Some(None), "an explicit null clears");
        assert_eq!(p.spend_cap_micro_usd, Some(Some(7)));
        let p = parse::<KeyPatch>(r#"{"rate_limit":{"rpm":3,"burst":1,"extra":0}}"#).unwrap();
        assert_eq!(p.rate_limit, Some(Some(RateLimit { rpm: 3, burst: 1 })), "a rate's other fields are ignored");
        let p = parse::<KeyPatch>(r#"{}"#).unwrap();
        assert_eq!(p.rate_limit, None, "absent leaves it");
        let o = parse::<OrgPatch>(r#"{"spend_limit_micro_usd":null,"shards":2}"#).unwrap();
        assert_eq!((o.spend_limit_micro_usd, o.shards), (Some(None), Some(2)));
    }
}
