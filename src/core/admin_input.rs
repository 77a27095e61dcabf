//! What the admin API accepts: the shapes of its request bodies (unknown fields refused) and
//! the rules a key or org must keep (plans, rates, origins, seats, names, provider keys).
//! Pure: the edge reads the body and does the I/O; every rule is here, tested natively.

use crate::core::cors::normalise_origin;
use crate::core::error::GatewayError;
use crate::core::keys::{self, KeyRecord, RateLimit, SealedKey};
use crate::core::paths::PROVIDERS;
use crate::core::settings::Settings;
use serde::Deserialize;
use std::collections::BTreeMap;

fn bad(why: impl Into<String>) -> GatewayError {
    GatewayError::InvalidRequest(why.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub plan: Option<String>,
    pub name: Option<String>,
    pub org: Option<String>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub allowed_endpoints: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    pub monthly_credit_micro_usd: Option<u64>,
    pub spend_cap_micro_usd: Option<u64>,
    #[serde(default)]
    pub provider_key: BTreeMap<String, String>,
}

/// `Some(None)` is an explicit `null` (clear), `None` is "leave as it is".
fn double_option<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub plan: Option<String>,
    pub allowed_origins: Option<Vec<String>>,
    pub allowed_endpoints: Option<Vec<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub rate_limit: Option<Option<RateLimit>>,
    #[serde(default, deserialize_with = "double_option")]
    pub monthly_credit_micro_usd: Option<Option<u64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub spend_cap_micro_usd: Option<Option<u64>>,
    pub provider_key: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgPatch {
    pub plan: Option<String>,
    pub seats: Option<u32>,
    pub bill_to: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub spend_limit_micro_usd: Option<Option<u64>>,
    #[serde(default, deserialize_with = "double_option")]
    pub rate_limit: Option<Option<RateLimit>>,
    /// Accepted only unchanged: the shard count is fixed when the org is created.
    pub shards: Option<u32>,
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
    sealed: Option<&BTreeMap<String, SealedKey>>,
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
    fn bodies_with_unknown_fields_are_refused() {
        assert!(serde_json::from_str::<NewKey>(r#"{"plan":"free","admin":true}"#).is_err());
        assert!(serde_json::from_str::<OrgPatch>(r#"{"seats":2,"owner":"x"}"#).is_err());
        let p: KeyPatch = serde_json::from_str(r#"{"rate_limit":null}"#).unwrap();
        assert_eq!(p.rate_limit, Some(None), "an explicit null clears");
        let p: KeyPatch = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(p.rate_limit, None, "absent leaves it");
    }
}
