//! Who a caller is, from its key record (and its org's): its plan, the account it bills to,
//! and the policies the ledger enforces for it. Pure: the edge reads the records, this
//! decides what they mean.

use crate::core::account::{AccountPolicy, KeyPolicy};
use crate::core::error::GatewayError;
use crate::core::keys::{KeyRecord, OrgRecord, RateLimit};
use crate::core::lease;
use crate::core::ledger::{Budget, MicroUsd};
use crate::core::settings::{Plan, Settings};

/// The Durable Object name of a key's own account and of an org's pool.
pub fn key_account(key_id: &str) -> String {
    format!("key:{key_id}")
}

pub fn org_account(org_id: &str) -> String {
    format!("org:{org_id}")
}

/// The Durable Object name of one shard of an org's pool (org ids are slugs: no `#`). The
/// count is part of the name: it is fixed when the org is created.
pub fn shard_account(org_id: &str, shard: u32, shards: u32) -> String {
    format!("org:{org_id}#{shard}/{shards}")
}

/// Which shard of which pool an account object is, from its name: `(pool object, shard,
/// shards)`.
///
/// ```
/// use hf_gate::core::caller::{shard_account, shard_of_account};
/// assert_eq!(shard_of_account(&shard_account("acme", 3, 4)), Some(("org:acme".to_string(), 3, 4)));
/// assert_eq!(shard_of_account("org:acme"), None);
/// assert_eq!(shard_of_account("key:k#1/2"), None);
/// ```
pub fn shard_of_account(name: &str) -> Option<(String, u32, u32)> {
    let (pool, at) = name.split_once('#')?;
    let (shard, shards) = at.split_once('/')?;
    pool.starts_with("org:").then_some(())?;
    Some((pool.to_string(), shard.parse().ok()?, shards.parse().ok()?))
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub record: KeyRecord,
    pub org: Option<OrgRecord>,
    pub plan: Plan,
    /// The Durable Object name of the account it bills to.
    pub account: String,
    pub key_policy: KeyPolicy,
    /// The account's policy. For a key of a sharded org, its shard's slice of the org's rate;
    /// the budget is still the org's (the shard admits against its lease of it).
    pub account_policy: AccountPolicy,
    /// For a key of a sharded org: its shard, and how many there are.
    pub shard: Option<(u32, u32)>,
}

impl Caller {
    /// The org to bill upstream (`X-HF-Bill-To`), for pooled org keys.
    pub fn bill_to(&self) -> Option<&str> {
        self.org.as_ref().filter(|_| self.plan.pooled).map(|o| o.bill_to.as_str())
    }
}

fn plan_of<'a>(s: &'a Settings, name: &str) -> Result<&'a Plan, GatewayError> {
    s.plan(name).ok_or_else(|| GatewayError::Misconfigured {
        setting: "PLANS",
        reason: format!("plan {name:?} is in use but not defined"),
    })
}

fn rate_of(q: crate::core::gcra::Quota) -> RateLimit {
    RateLimit { rpm: q.rpm(), burst: q.burst() }
}

/// An org's plan and pooled account policy: credits and default rate scale with seats.
pub fn org_policy(org: &OrgRecord, s: &Settings) -> Result<(Plan, AccountPolicy), GatewayError> {
    let plan = *plan_of(s, &org.plan)?;
    let seats = u64::from(org.seats.max(1));
    let scaled = |v: u32| u32::try_from(u64::from(v).saturating_mul(seats)).unwrap_or(u32::MAX);
    let policy = AccountPolicy {
        version: org.version,
        budget: Budget {
            credit: MicroUsd(if plan.pooled {
                plan.monthly_credit.0.saturating_mul(seats)
            } else {
                plan.monthly_credit.0
            }),
            on_exhausted: plan.on_exhausted,
            cap: org.spend_limit_micro_usd.map(MicroUsd),
        },
        rate: org.rate_limit.unwrap_or(RateLimit { rpm: scaled(plan.quota.rpm()), burst: scaled(plan.quota.burst()) }),
        provider_billed: plan.byok,
    };
    Ok((plan, policy))
}

/// Derives the ledger's view of a key (and its org) from the records and the plans.
pub fn caller_for(record: KeyRecord, org: Option<OrgRecord>, s: &Settings) -> Result<Caller, GatewayError> {
    match org {
        Some(org) => {
            let (plan, account_policy) = org_policy(&org, s)?;
            let key_policy = KeyPolicy {
                key_id: record.id.clone(),
                version: record.version,
                revoked: record.revoked,
                rate: Some(record.rate_limit.unwrap_or(rate_of(plan_of(s, &record.plan).unwrap_or(&plan).quota))),
                // a key's own credit or cap inside the pool is its ceiling there
                ceiling: match (record.monthly_credit_micro_usd, record.spend_cap_micro_usd) {
                    (Some(a), Some(b)) => Some(MicroUsd(a.min(b))),
                    (a, b) => a.or(b).map(MicroUsd),
                },
            };
            // a sharded org: the key's shard admits it, at that shard's slice of the org rate
            let shards = org.shards.clamp(1, lease::MAX_SHARDS);
            let (account, account_policy, shard) = if shards > 1 {
                let shard = lease::shard_of(&record.id, shards);
                let sliced = AccountPolicy { rate: lease::rate_slice(account_policy.rate, shards), ..account_policy };
                (shard_account(&org.id, shard, shards), sliced, Some((shard, shards)))
            } else {
                (org_account(&org.id), account_policy, None)
            };
            Ok(Caller { account, record, org: Some(org), plan, key_policy, account_policy, shard })
        }
        None => {
            let plan = *plan_of(s, &record.plan)?;
            let account_policy = AccountPolicy {
                version: record.version,
                budget: Budget {
                    credit: record.monthly_credit_micro_usd.map_or(plan.monthly_credit, MicroUsd),
                    on_exhausted: plan.on_exhausted,
                    cap: record.spend_cap_micro_usd.map(MicroUsd),
                },
                rate: record.rate_limit.unwrap_or(rate_of(plan.quota)),
                provider_billed: plan.byok,
            };
            let key_policy = KeyPolicy {
                key_id: record.id.clone(),
                version: record.version,
                revoked: record.revoked,
                rate: None,
                ceiling: None,
            };
            Ok(Caller {
                account: key_account(&record.id),
                record,
                org: None,
                plan,
                key_policy,
                account_policy,
                shard: None,
            })
        }
    }
}
