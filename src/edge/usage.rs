//! `GET /v1/usage`: the caller's plan, period, credits and throttle, from its account's ledger.

use crate::core::caller::Caller;
use crate::core::error::GatewayError;
use crate::core::gcra::RateView;
use crate::core::protocol::UsageReport;
use crate::edge::account_do;
use serde_json::{json, Value};
use worker::Env;

/// The usage document of a key (SPEC section 7), shared by `/v1/usage` and the admin API.
/// With `throttle` (a caller reading its own usage), the read takes one request from the
/// caller's throttle in the same round trip, and the throttle is returned for the headers.
pub async fn of(env: &Env, caller: &Caller, throttle: bool) -> Result<(Value, Option<RateView>), GatewayError> {
    let report = account_do::caller_usage(env, caller, throttle).await?;
    let rate = report.as_ref().and_then(|r| r.rate);
    Ok((document(caller, report), rate))
}

/// The usage document of a key from its ledger report.
pub fn document(caller: &Caller, r: Option<UsageReport>) -> Value {
    let Some(r) = r else {
        return json!({"key_id": caller.record.id, "plan": caller.record.plan, "org": caller.record.org});
    };
    let rate = r.rate.map(|v| json!({"rpm": v.rpm, "burst": v.burst, "remaining": v.remaining, "reset_seconds": v.reset_ms.div_ceil(1000)}));
    json!({
        "key_id": caller.record.id,
        "plan": caller.record.plan,
        "org": caller.record.org,
        "period": {"start": r.period_start, "end": r.period_end},
        "credits": {
            "limit_micro_usd": r.limit_micro_usd,
            "used_micro_usd": r.used_micro_usd,
            "reserved_micro_usd": r.reserved_micro_usd,
            "remaining_micro_usd": r.remaining_micro_usd,
            "overage_micro_usd": r.overage_micro_usd,
            "overrun_micro_usd": r.overrun_micro_usd,
            "key_overrun_micro_usd": r.key_overrun_micro_usd,
            "unmetered_micro_usd": r.unmetered_micro_usd,
            "key_unmetered_micro_usd": r.key_unmetered_micro_usd,
            "carried_micro_usd": r.carried_micro_usd,
            "leased_micro_usd": r.leased_micro_usd,
            "spend_cap_micro_usd": r.spend_cap_micro_usd,
            "key_used_micro_usd": r.key_used_micro_usd,
            "provider_billed_micro_usd": r.provider_billed_micro_usd,
        },
        "requests": r.requests,
        "rate_limit": rate,
        "daily": r.daily.iter().map(|(d, v)| json!({"date": d, "used_micro_usd": v})).collect::<Vec<_>>(),
        "by_model": crate::core::wire::value(&r.by_model),
    })
}
