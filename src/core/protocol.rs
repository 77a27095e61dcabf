//! What the worker and its Durable Objects say to each other: one request enum and one reply
//! enum per object, used by both sides, so a message is typed from the moment it is built to
//! the moment it is answered. The transport (`edge::objects`) moves them; a message either
//! side cannot decode is an error there, logged, never a default.

use crate::core::account::{AccountPolicy, Admission, AdmitRequest, KeyPolicy, RateView};
use crate::core::edits::{AccountEdit, KeyEdit};
use crate::core::lease::{Grant, Report};
use crate::core::ledger::{Budget, MicroUsd, Settled, Spent, Usage};
use crate::core::request_log::{LogQuery, Page};
use crate::core::spend::{self, CallLine, JobRow, ModelSpend};
use crate::core::time::{BillingPeriod, UnixMillis};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A Durable Object's protocol: its binding, what it is asked and what it answers.
pub trait Protocol {
    const BINDING: &'static str;
    type Request: Serialize + DeserializeOwned;
    type Reply: Serialize + DeserializeOwned;
}

/// The account object: the ledger and throttles of one key or one org pool.
pub struct Account;

impl Protocol for Account {
    const BINDING: &'static str = "ACCOUNTS";
    type Request = AccountOp;
    type Reply = AccountReply;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountOp {
    /// Decides a call: revoked? throttled? worst case reserved?
    Admit(AdmitRequest),
    /// Settles a call to its actual cost; `line` (model, provider, tokens) counts it in the
    /// account's spend per model and provider in the same operation.
    /// With `unmetered`, the call's usage could not be learned: the reservation is charged
    /// in full (whatever `actual` says) and recorded as unmetered.
    Settle {
        reservation: u64,
        actual: MicroUsd,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<CallLine>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unmetered: bool,
    },
    /// The calls holding these reservations are still running: keep their holds another
    /// `ttl_ms`. Only a hold whose isolate died lapses.
    Renew { reservations: Vec<u64>, ttl_ms: u64 },
    /// Gives a call's hold back (it failed); `line` records it in the request log.
    Release {
        reservation: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<CallLine>,
    },
    RecordProviderBilled {
        key_id: String,
        actual: MicroUsd,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<CallLine>,
    },
    /// Records who submitted a queued job (a job id already known keeps its owner).
    OwnJob { job_id: String, row: JobRow },
    /// A page of the request log. With `throttle`, the read first takes one request from that
    /// key's throttle (as a usage read does). `shard` places the cursor among an org's shards.
    Requests { query: LogQuery, shard: u32, throttle: Option<(KeyPolicy, AccountPolicy)> },
    /// A job of `key_id`'s, and where its polls go: `None` when the job is unknown, another
    /// key's, or its key is revoked (the poll is then a 404, never a free pass-through).
    Job { job_id: String, key_id: String },
    /// Offers the edge's copy of the policies; the newer version of each is kept.
    Policy { key: Option<KeyPolicy>, account: Option<AccountPolicy> },
    /// Reads usage after offering the policies. With `throttle`, the read first takes one
    /// request from the throttle (nothing from the credit), in the same round trip: a caller
    /// reading its usage is throttled like any call.
    Usage { key: Option<KeyPolicy>, account: Option<AccountPolicy>, throttle: bool },
    /// An admin edit of a key, compare-and-set on `base` (`edits::edit_key`).
    EditKey { base: u64, key: KeyPolicy, account: Option<AccountPolicy> },
    /// Revokes a key, finally (`edits::revoke_key`).
    RevokeKey { key: KeyPolicy },
    /// An admin edit of an org's pool, compare-and-set on `base` (`edits::edit_account`).
    EditAccount { base: u64, account: AccountPolicy },
    /// The key policy the ledger holds, if any.
    HeldKey { key_id: String },
    /// Several operations in one round trip, applied in order (settles and releases that
    /// landed together in one isolate).
    Batch(Vec<AccountOp>),
    /// To an org's pool object, from one of its `shards` shards: the shard's report and the
    /// credit it wants (none: it gives back what it lowered its lease by). `account` is the
    /// org's policy as the call that needs the credit offered it (newest version wins, as
    /// everywhere); a give-back offers none.
    Lease { shard: u32, shards: u32, report: Report, want: MicroUsd, account: Option<AccountPolicy> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountReply {
    Admission(Admission),
    Settled(Settled),
    Released(bool),
    Done,
    /// `None` until the account has a policy.
    Usage(Box<Option<UsageReport>>),
    KeyEdit(KeyEdit),
    AccountEdit(AccountEdit),
    /// The key's policy as the ledger now holds it (after a revocation, or when asked).
    Key(Option<KeyPolicy>),
    Batch(Vec<AccountReply>),
    /// The shard's whole lease for the period (`None`: the pool cannot serve this shard).
    Grant(Option<Grant>),
    Job(Option<JobRow>),
    Requests(Page),
}

impl AccountReply {
    /// The kind of reply, for a log line (a `Debug` of the whole protocol would cost the
    /// bundle more than it tells).
    pub fn kind(&self) -> &'static str {
        match self {
            AccountReply::Admission(_) => "admission",
            AccountReply::Settled(_) => "settled",
            AccountReply::Released(_) => "released",
            AccountReply::Done => "done",
            AccountReply::Usage(_) => "usage",
            AccountReply::KeyEdit(_) => "key_edit",
            AccountReply::AccountEdit(_) => "account_edit",
            AccountReply::Key(_) => "key",
            AccountReply::Batch(_) => "batch",
            AccountReply::Grant(_) => "grant",
            AccountReply::Job(_) => "job",
            AccountReply::Requests(_) => "requests",
        }
    }
}

/// An account's usage as `/v1/usage` and the admin API show it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    pub period_start: String,
    pub period_end: String,
    pub limit_micro_usd: u64,
    pub used_micro_usd: u64,
    pub reserved_micro_usd: u64,
    pub remaining_micro_usd: u64,
    pub overage_micro_usd: u64,
    pub spend_cap_micro_usd: Option<u64>,
    pub provider_billed_micro_usd: u64,
    /// Charged beyond what the calls had reserved (upstream overshoot, late settles).
    pub overrun_micro_usd: u64,
    /// Charged without a usage count: reservations in full (part of `used_micro_usd`).
    #[serde(default)]
    pub unmetered_micro_usd: u64,
    /// The debt the period started with (part of `used_micro_usd`).
    #[serde(default)]
    pub carried_micro_usd: u64,
    pub key_used_micro_usd: u64,
    pub key_overrun_micro_usd: u64,
    #[serde(default)]
    pub key_unmetered_micro_usd: u64,
    pub requests: u64,
    pub rate: Option<RateView>,
    /// `[["2026-11-22", micro_usd], ...]`, current and previous period.
    pub daily: Vec<(String, u64)>,
    /// The ledger's word on the key (version, revoked), which KV's copy may lag.
    pub key_policy: Option<KeyPolicy>,
    /// The version of the account policy the ledger holds.
    pub account_version: Option<u64>,
    /// This period's spend per model and provider: the key's own in a key's report, every
    /// key's added up in an org's.
    #[serde(default)]
    pub by_model: Vec<ModelSpend>,
}

/// What a usage report says of one key: its share of the spend, what it was charged beyond
/// its holds, its throttle, and the ledger's word on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyFigures {
    pub used: MicroUsd,
    pub overrun: MicroUsd,
    pub unmetered: MicroUsd,
    pub rate: Option<RateView>,
    pub policy: Option<KeyPolicy>,
}

impl UsageReport {
    /// The report of an account's figures (`u`, its ledger read against its budget), with
    /// one key's.
    pub fn new(
        u: &Usage,
        key: KeyFigures,
        requests: u64,
        daily: Vec<(String, u64)>,
        account_version: Option<u64>,
    ) -> UsageReport {
        UsageReport {
            period_start: u.period.start.to_string(),
            period_end: u.period.end.to_string(),
            limit_micro_usd: u.limit.0,
            used_micro_usd: u.used.0,
            reserved_micro_usd: u.reserved.0,
            remaining_micro_usd: u.remaining.0,
            overage_micro_usd: u.overage.0,
            spend_cap_micro_usd: u.cap.map(|c| c.0),
            provider_billed_micro_usd: u.provider_billed.0,
            overrun_micro_usd: u.overrun.0,
            unmetered_micro_usd: u.unmetered.0,
            carried_micro_usd: u.carried.0,
            key_used_micro_usd: key.used.0,
            key_overrun_micro_usd: key.overrun.0,
            key_unmetered_micro_usd: key.unmetered.0,
            requests,
            rate: key.rate,
            daily,
            key_policy: key.policy,
            account_version,
            by_model: Vec::new(),
        }
    }

    /// A sharded org's usage: every shard's figures added up, against the org's own budget
    /// (each shard reports against its lease); the key's own figures and throttle come from
    /// the shard that holds the key, `key`.
    pub fn of_shards(
        shards: &[UsageReport],
        key: Option<&UsageReport>,
        budget: &Budget,
        now: UnixMillis,
    ) -> Option<UsageReport> {
        if key.is_none() && shards.is_empty() {
            return None;
        }
        let sum = |f: fn(&UsageReport) -> u64| MicroUsd(shards.iter().map(f).fold(0u64, u64::saturating_add));
        // the same reading of a budget as `Ledger::usage`
        let spent = Spent {
            used: sum(|r| r.used_micro_usd),
            provider_billed: sum(|r| r.provider_billed_micro_usd),
            overrun: sum(|r| r.overrun_micro_usd),
            unmetered: sum(|r| r.unmetered_micro_usd),
            carried: sum(|r| r.carried_micro_usd),
        };
        let u = Usage::against(budget, BillingPeriod::containing(now), spent, sum(|r| r.reserved_micro_usd));
        let mut daily = std::collections::BTreeMap::<String, u64>::new();
        for (day, v) in shards.iter().flat_map(|r| r.daily.iter()) {
            let d = daily.entry(day.clone()).or_default();
            *d = d.saturating_add(*v);
        }
        // an org's report adds up every shard's lines; a key's are its own shard's
        let by_model = match key {
            Some(k) => k.by_model.clone(),
            None => spend::merge(&shards.iter().map(|r| r.by_model.as_slice()).collect::<Vec<_>>()),
        };
        let key = key.map_or_else(KeyFigures::default, |k| KeyFigures {
            used: MicroUsd(k.key_used_micro_usd),
            overrun: MicroUsd(k.key_overrun_micro_usd),
            unmetered: MicroUsd(k.key_unmetered_micro_usd),
            rate: k.rate,
            policy: k.key_policy.clone(),
        });
        let version = shards.iter().filter_map(|r| r.account_version).max();
        let requests = shards.iter().map(|r| r.requests).fold(0u64, u64::saturating_add);
        let mut report = UsageReport::new(&u, key, requests, daily.into_iter().collect(), version);
        report.by_model = by_model;
        Some(report)
    }
}

/// The cooldown object of one upstream route: until when calls to it wait.
pub struct Cooldown;

impl Protocol for Cooldown {
    const BINDING: &'static str = "COOLDOWNS";
    type Request = CooldownOp;
    type Reply = UnixMillis;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CooldownOp {
    Read,
    /// Extends the cooldown to `until` (never shortens it).
    Extend {
        until: UnixMillis,
    },
}

/// The key registry: digest prefixes of issued keys, and the origins browser keys allow.
pub struct Registry;

impl Protocol for Registry {
    const BINDING: &'static str = "REGISTRY";
    type Request = RegistryOp;
    type Reply = RegistryReply;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryOp {
    Prefixes,
    AddPrefix { prefix: u64 },
    Origins,
    AddOrigins { origins: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryReply {
    Prefixes(Vec<u64>),
    Origins(Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::account::Cost;
    use crate::core::keys::RateLimit;
    use crate::core::ledger::{Budget, OnExhausted};

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<T>(&text).unwrap(), v, "{text}");
    }

    #[test]
    fn every_message_survives_the_wire() {
        let key = KeyPolicy { key_id: "k".into(), version: 3, revoked: false, rate: None, ceiling: Some(MicroUsd(5)) };
        let account = AccountPolicy {
            version: 1,
            budget: Budget { credit: MicroUsd(100), on_exhausted: OnExhausted::Payg, cap: Some(MicroUsd(u64::MAX)) },
            rate: RateLimit { rpm: 60, burst: 10 },
            provider_billed: false,
        };
        round_trip(AccountOp::Admit(AdmitRequest { key: key.clone(), account, cost: Cost::FREE, ttl_ms: 1 }));
        round_trip(AccountOp::Usage { key: Some(key.clone()), account: None, throttle: true });
        round_trip(AccountReply::Usage(Box::new(None)));
        round_trip(AccountReply::Released(true));
        round_trip(AccountReply::Done);
        round_trip(AccountReply::Key(Some(key)));
        round_trip(CooldownOp::Extend { until: UnixMillis(u64::MAX) });
        round_trip(RegistryOp::AddPrefix { prefix: u64::MAX });
        round_trip(RegistryReply::Prefixes(vec![u64::MAX, 0]));
    }

    #[test]
    fn a_reply_of_another_shape_is_refused() {
        assert!(serde_json::from_str::<AccountReply>(r#"{"usage":{"used":1}}"#).is_err());
        assert!(serde_json::from_str::<AccountReply>(r#"{"admitted":{}}"#).is_err());
    }
}
