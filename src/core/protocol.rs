//! What the worker and its Durable Objects say to each other: one request enum and one reply
//! enum per object, used by both sides, so a message is typed from the moment it is built to
//! the moment it is answered. The transport (`edge::objects`) moves them; a message either
//! side cannot decode is an error there, logged, never a default.

use crate::core::account::{AccountPolicy, Admission, AdmitRequest, KeyPolicy};
use crate::core::call_line::CallLine;
use crate::core::edits::{AccountEdit, KeyEdit};
use crate::core::gcra::RateView;
use crate::core::isolate_lease::{self, Grant as IsolateGrant, Want};
use crate::core::lease::{Grant, Report};
use crate::core::ledger::{Budget, MicroUsd, Settled, Spent, Usage};
use crate::core::request_log::{LogQuery, Page};
use crate::core::spend::{self, JobRow, ModelSpend};
use crate::core::time::{BillingPeriod, UnixMillis};
use crate::core::wire::{self, Errors, Fields, FromJson, ToJson};
use serde_json::Value;

/// A Durable Object's protocol: its binding, what it is asked and what it answers.
pub trait Protocol {
    const BINDING: &'static str;
    type Request: ToJson + FromJson;
    type Reply: ToJson + FromJson;
}

/// The account object: the ledger and throttles of one key or one org pool.
pub struct Account;

impl Protocol for Account {
    const BINDING: &'static str = "ACCOUNTS";
    type Request = AccountOp;
    type Reply = AccountReply;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountOp {
    /// Decides a call: revoked? throttled? worst case reserved?
    Admit(AdmitRequest),
    /// Settles a call to its actual cost; `line` (model, provider, tokens) counts it in the
    /// account's spend per model and provider in the same operation.
    /// With `unmetered`, the call's usage could not be learned: the reservation is charged
    /// in full (whatever `actual` says) and recorded as unmetered. A call admitted on a
    /// lease names it (`leased`), so that its settle stands for its report if that has not
    /// come.
    Settle {
        reservation: u64,
        actual: MicroUsd,
        line: Option<CallLine>,
        unmetered: bool,
        leased: Option<Leased>,
    },
    /// The calls holding these reservations are still running: keep their holds another
    /// `ttl_ms`. Only a hold whose isolate died lapses.
    Renew {
        reservations: Vec<u64>,
        ttl_ms: u64,
    },
    /// Gives a call's hold back (it failed); `line` records it in the request log.
    Release {
        reservation: u64,
        line: Option<CallLine>,
        leased: Option<Leased>,
    },
    /// A lease asked for ahead of need, by an isolate whose lease runs low.
    Acquire {
        key: KeyPolicy,
        account: AccountPolicy,
        want: Want,
    },
    /// Calls an isolate admitted on a lease of `key_id`'s: (hold id, amount), each held
    /// `ttl_ms`.
    Admitted {
        lease: u64,
        key_id: String,
        calls: Vec<(u64, MicroUsd)>,
        ttl_ms: u64,
    },
    /// An isolate gives a lease back, after the reports of every call it admitted on it.
    ReturnLease {
        lease: u64,
    },
    RecordProviderBilled {
        key_id: String,
        actual: MicroUsd,
        line: Option<CallLine>,
    },
    /// Records who submitted a queued job (a job id already known keeps its owner).
    OwnJob {
        job_id: String,
        row: JobRow,
    },
    /// A page of the request log. With `throttle`, the read first takes one request from that
    /// key's throttle (as a usage read does). `shard` places the cursor among an org's shards.
    Requests {
        query: LogQuery,
        shard: u32,
        throttle: Option<(KeyPolicy, AccountPolicy)>,
    },
    /// A job of `key_id`'s, and where its polls go: `None` when the job is unknown, another
    /// key's, or its key is revoked (the poll is then a 404, never a free pass-through).
    Job {
        job_id: String,
        key_id: String,
    },
    /// Offers the edge's copy of the policies; the newer version of each is kept.
    Policy {
        key: Option<KeyPolicy>,
        account: Option<AccountPolicy>,
    },
    /// Reads usage after offering the policies. With `throttle`, the read first takes one
    /// request from the throttle (nothing from the credit), in the same round trip: a caller
    /// reading its usage is throttled like any call.
    Usage {
        key: Option<KeyPolicy>,
        account: Option<AccountPolicy>,
        throttle: bool,
    },
    /// An admin edit of a key, compare-and-set on `base` (`edits::edit_key`).
    EditKey {
        base: u64,
        key: KeyPolicy,
        account: Option<AccountPolicy>,
    },
    /// Revokes a key, finally (`edits::revoke_key`).
    RevokeKey {
        key: KeyPolicy,
    },
    /// An admin edit of an org's pool, compare-and-set on `base` (`edits::edit_account`).
    EditAccount {
        base: u64,
        account: AccountPolicy,
    },
    /// The key policy the ledger holds, if any.
    HeldKey {
        key_id: String,
    },
    /// Several operations in one round trip, applied in order (settles and releases that
    /// landed together in one isolate).
    Batch(Vec<AccountOp>),
    /// To an org's pool object, from one of its `shards` shards: the shard's report and the
    /// credit it wants (none: it gives back what it lowered its lease by). `account` is the
    /// org's policy as the call that needs the credit offered it (newest version wins, as
    /// everywhere); a give-back offers none.
    Lease {
        shard: u32,
        shards: u32,
        report: Report,
        want: MicroUsd,
        account: Option<AccountPolicy>,
    },
}

/// The lease a call was admitted on, the key it is a lease of, and what the call held there;
/// `report` when the settle or release carrying it stands for the call's report too (the
/// report was still queued when it came, and went no further).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leased {
    pub lease: u64,
    pub key_id: String,
    pub amount: MicroUsd,
    pub report: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// A lease, or none (the isolate asks call by call); `stale` as in an admission: the
    /// isolate's key record is older than the object's.
    Leased {
        grant: Option<isolate_lease::Grant>,
        stale: bool,
    },
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
            AccountReply::Leased { .. } => "leased",
        }
    }
}

/// An account's usage as `/v1/usage` and the admin API show it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub unmetered_micro_usd: u64,
    /// The debt the period started with (part of `used_micro_usd`).
    pub carried_micro_usd: u64,
    /// Credit leased to isolates and not yet given to a call (not part of `reserved`).
    pub leased_micro_usd: u64,
    pub key_used_micro_usd: u64,
    pub key_overrun_micro_usd: u64,
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
            leased_micro_usd: u.leased.0,
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
        let u = Usage::against(budget, BillingPeriod::containing(now), spent, sum(|r| r.reserved_micro_usd))
            .with_leased(sum(|r| r.leased_micro_usd));
        let mut daily = crate::core::sorted::SortedMap::<String, u64>::new();
        for (day, v) in shards.iter().flat_map(|r| r.daily.iter()) {
            let d = daily.get_or_insert_with(day.clone(), || 0);
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryOp {
    Prefixes,
    AddPrefix { prefix: u64 },
    Origins,
    AddOrigins { origins: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryReply {
    Prefixes(Vec<u64>),
    Origins(Vec<String>),
}

// The messages' JSON (`core::wire`), serde's shape: a variant is `{"name": fields}`, or its
// name alone when it has none. The lease types of `isolate_lease` travel only here.
wire::json_struct!(Leased { lease, key_id, amount, report: skip_false });
wire::json_struct!(Want { calls, per_call, ttl_ms });
wire::json_struct!(IsolateGrant { id, first_hold, calls, credit, ttl_ms, rate });
wire::json_struct!(UsageReport {
    period_start,
    period_end,
    limit_micro_usd,
    used_micro_usd,
    reserved_micro_usd,
    remaining_micro_usd,
    overage_micro_usd,
    spend_cap_micro_usd,
    provider_billed_micro_usd,
    overrun_micro_usd,
    unmetered_micro_usd: default,
    carried_micro_usd: default,
    leased_micro_usd: default,
    key_used_micro_usd,
    key_overrun_micro_usd,
    key_unmetered_micro_usd: default,
    requests,
    rate,
    daily,
    key_policy,
    account_version,
    by_model: default,
});

impl FromJson for AccountOp {
    fn read(v: &Value, e: &Errors) -> Self {
        let (tag, v) = wire::variant(v, e);
        let f = || Fields::of(v, e);
        match tag {
            "admit" => AccountOp::Admit(FromJson::read(v, e)),
            "batch" => AccountOp::Batch(FromJson::read(v, e)),
            "settle" => {
                let f = f();
                AccountOp::Settle {
                    reservation: f.get("reservation"),
                    actual: f.get("actual"),
                    line: f.get("line"),
                    unmetered: f.or_default("unmetered"),
                    leased: f.get("leased"),
                }
            }
            "renew" => {
                let f = f();
                AccountOp::Renew { reservations: f.get("reservations"), ttl_ms: f.get("ttl_ms") }
            }
            "release" => {
                let f = f();
                AccountOp::Release { reservation: f.get("reservation"), line: f.get("line"), leased: f.get("leased") }
            }
            "acquire" => {
                let f = f();
                AccountOp::Acquire { key: f.get("key"), account: f.get("account"), want: f.get("want") }
            }
            "admitted" => {
                let f = f();
                AccountOp::Admitted {
                    lease: f.get("lease"),
                    key_id: f.get("key_id"),
                    calls: f.get("calls"),
                    ttl_ms: f.get("ttl_ms"),
                }
            }
            "return_lease" => AccountOp::ReturnLease { lease: f().get("lease") },
            "record_provider_billed" => {
                let f = f();
                AccountOp::RecordProviderBilled {
                    key_id: f.get("key_id"),
                    actual: f.get("actual"),
                    line: f.get("line"),
                }
            }
            "own_job" => {
                let f = f();
                AccountOp::OwnJob { job_id: f.get("job_id"), row: f.get("row") }
            }
            "requests" => {
                let f = f();
                AccountOp::Requests { query: f.get("query"), shard: f.get("shard"), throttle: f.get("throttle") }
            }
            "job" => {
                let f = f();
                AccountOp::Job { job_id: f.get("job_id"), key_id: f.get("key_id") }
            }
            "policy" => {
                let f = f();
                AccountOp::Policy { key: f.get("key"), account: f.get("account") }
            }
            "usage" => {
                let f = f();
                AccountOp::Usage { key: f.get("key"), account: f.get("account"), throttle: f.get("throttle") }
            }
            "edit_key" => {
                let f = f();
                AccountOp::EditKey { base: f.get("base"), key: f.get("key"), account: f.get("account") }
            }
            "revoke_key" => AccountOp::RevokeKey { key: f().get("key") },
            "edit_account" => {
                let f = f();
                AccountOp::EditAccount { base: f.get("base"), account: f.get("account") }
            }
            "held_key" => AccountOp::HeldKey { key_id: f().get("key_id") },
            "lease" => {
                let f = f();
                AccountOp::Lease {
                    shard: f.get("shard"),
                    shards: f.get("shards"),
                    report: f.get("report"),
                    want: f.get("want"),
                    account: f.get("account"),
                }
            }
            _ => {
                e.unknown(tag);
                AccountOp::fallback()
            }
        }
    }
    fn fallback() -> Self {
        AccountOp::Batch(Vec::new())
    }
}

impl ToJson for AccountOp {
    fn to_json(&self, out: &mut String) {
        use wire::{tagged, tagged_object as fields, Skip};
        match self {
            AccountOp::Admit(req) => tagged(out, "admit", req),
            AccountOp::Settle { reservation, actual, line, unmetered, leased } => fields(
                out,
                "settle",
                &[
                    ("reservation", reservation),
                    ("actual", actual),
                    ("line", &Skip(line.is_none(), line)),
                    ("unmetered", &Skip(!unmetered, unmetered)),
                    ("leased", &Skip(leased.is_none(), leased)),
                ],
            ),
            AccountOp::Renew { reservations, ttl_ms } => {
                fields(out, "renew", &[("reservations", reservations), ("ttl_ms", ttl_ms)])
            }
            AccountOp::Release { reservation, line, leased } => fields(
                out,
                "release",
                &[
                    ("reservation", reservation),
                    ("line", &Skip(line.is_none(), line)),
                    ("leased", &Skip(leased.is_none(), leased)),
                ],
            ),
            AccountOp::Acquire { key, account, want } => {
                fields(out, "acquire", &[("key", key), ("account", account), ("want", want)])
            }
            AccountOp::Admitted { lease, key_id, calls, ttl_ms } => {
                fields(out, "admitted", &[("lease", lease), ("key_id", key_id), ("calls", calls), ("ttl_ms", ttl_ms)])
            }
            AccountOp::ReturnLease { lease } => fields(out, "return_lease", &[("lease", lease)]),
            AccountOp::RecordProviderBilled { key_id, actual, line } => fields(
                out,
                "record_provider_billed",
                &[("key_id", key_id), ("actual", actual), ("line", &Skip(line.is_none(), line))],
            ),
            AccountOp::OwnJob { job_id, row } => fields(out, "own_job", &[("job_id", job_id), ("row", row)]),
            AccountOp::Requests { query, shard, throttle } => {
                fields(out, "requests", &[("query", query), ("shard", shard), ("throttle", throttle)])
            }
            AccountOp::Job { job_id, key_id } => fields(out, "job", &[("job_id", job_id), ("key_id", key_id)]),
            AccountOp::Policy { key, account } => fields(out, "policy", &[("key", key), ("account", account)]),
            AccountOp::Usage { key, account, throttle } => {
                fields(out, "usage", &[("key", key), ("account", account), ("throttle", throttle)])
            }
            AccountOp::EditKey { base, key, account } => {
                fields(out, "edit_key", &[("base", base), ("key", key), ("account", account)])
            }
            AccountOp::RevokeKey { key } => fields(out, "revoke_key", &[("key", key)]),
            AccountOp::EditAccount { base, account } => {
                fields(out, "edit_account", &[("base", base), ("account", account)])
            }
            AccountOp::HeldKey { key_id } => fields(out, "held_key", &[("key_id", key_id)]),
            AccountOp::Batch(ops) => tagged(out, "batch", ops),
            AccountOp::Lease { shard, shards, report, want, account } => fields(
                out,
                "lease",
                &[("shard", shard), ("shards", shards), ("report", report), ("want", want), ("account", account)],
            ),
        }
    }
}

impl FromJson for AccountReply {
    fn read(v: &Value, e: &Errors) -> Self {
        let (tag, v) = wire::variant(v, e);
        match tag {
            "admission" => AccountReply::Admission(FromJson::read(v, e)),
            "settled" => AccountReply::Settled(FromJson::read(v, e)),
            "released" => AccountReply::Released(FromJson::read(v, e)),
            "done" => AccountReply::Done,
            "usage" => AccountReply::Usage(FromJson::read(v, e)),
            "key_edit" => AccountReply::KeyEdit(FromJson::read(v, e)),
            "account_edit" => AccountReply::AccountEdit(FromJson::read(v, e)),
            "key" => AccountReply::Key(FromJson::read(v, e)),
            "batch" => AccountReply::Batch(FromJson::read(v, e)),
            "grant" => AccountReply::Grant(FromJson::read(v, e)),
            "job" => AccountReply::Job(FromJson::read(v, e)),
            "requests" => AccountReply::Requests(FromJson::read(v, e)),
            "leased" => {
                let f = Fields::of(v, e);
                AccountReply::Leased { grant: f.get("grant"), stale: f.get("stale") }
            }
            _ => {
                e.unknown(tag);
                AccountReply::Done
            }
        }
    }
    fn fallback() -> Self {
        AccountReply::Done
    }
}

impl ToJson for AccountReply {
    fn to_json(&self, out: &mut String) {
        let tag = self.kind();
        match self {
            AccountReply::Done => wire::string(out, tag),
            AccountReply::Admission(v) => wire::tagged(out, tag, v),
            AccountReply::Settled(v) => wire::tagged(out, tag, v),
            AccountReply::Released(v) => wire::tagged(out, tag, v),
            AccountReply::Usage(v) => wire::tagged(out, tag, v),
            AccountReply::KeyEdit(v) => wire::tagged(out, tag, v),
            AccountReply::AccountEdit(v) => wire::tagged(out, tag, v),
            AccountReply::Key(v) => wire::tagged(out, tag, v),
            AccountReply::Batch(v) => wire::tagged(out, tag, v),
            AccountReply::Grant(v) => wire::tagged(out, tag, v),
            AccountReply::Job(v) => wire::tagged(out, tag, v),
            AccountReply::Requests(v) => wire::tagged(out, tag, v),
            AccountReply::Leased { grant, stale } => {
                wire::tagged_object(out, tag, &[("grant", grant), ("stale", stale)])
            }
        }
    }
}

impl FromJson for CooldownOp {
    fn read(v: &Value, e: &Errors) -> Self {
        match wire::variant(v, e) {
            ("read", _) => CooldownOp::Read,
            ("extend", v) => CooldownOp::Extend { until: Fields::of(v, e).get("until") },
            (tag, _) => {
                e.unknown(tag);
                CooldownOp::Read
            }
        }
    }
    fn fallback() -> Self {
        CooldownOp::Read
    }
}

impl ToJson for CooldownOp {
    fn to_json(&self, out: &mut String) {
        match self {
            CooldownOp::Read => wire::string(out, "read"),
            CooldownOp::Extend { until } => wire::tagged_object(out, "extend", &[("until", until)]),
        }
    }
}

impl FromJson for RegistryOp {
    fn read(v: &Value, e: &Errors) -> Self {
        match wire::variant(v, e) {
            ("prefixes", _) => RegistryOp::Prefixes,
            ("add_prefix", v) => RegistryOp::AddPrefix { prefix: Fields::of(v, e).get("prefix") },
            ("origins", _) => RegistryOp::Origins,
            ("add_origins", v) => RegistryOp::AddOrigins { origins: Fields::of(v, e).get("origins") },
            (tag, _) => {
                e.unknown(tag);
                RegistryOp::Prefixes
            }
        }
    }
    fn fallback() -> Self {
        RegistryOp::Prefixes
    }
}

impl ToJson for RegistryOp {
    fn to_json(&self, out: &mut String) {
        match self {
            RegistryOp::Prefixes => wire::string(out, "prefixes"),
            RegistryOp::AddPrefix { prefix } => wire::tagged_object(out, "add_prefix", &[("prefix", prefix)]),
            RegistryOp::Origins => wire::string(out, "origins"),
            RegistryOp::AddOrigins { origins } => wire::tagged_object(out, "add_origins", &[("origins", origins)]),
        }
    }
}

impl FromJson for RegistryReply {
    fn read(v: &Value, e: &Errors) -> Self {
        match wire::variant(v, e) {
            ("prefixes", v) => RegistryReply::Prefixes(FromJson::read(v, e)),
            ("origins", v) => RegistryReply::Origins(FromJson::read(v, e)),
            (tag, _) => {
                e.unknown(tag);
                RegistryReply::Prefixes(Vec::new())
            }
        }
    }
    fn fallback() -> Self {
        RegistryReply::Prefixes(Vec::new())
    }
}

impl ToJson for RegistryReply {
    fn to_json(&self, out: &mut String) {
        match self {
            RegistryReply::Prefixes(p) => wire::tagged(out, "prefixes", p),
            RegistryReply::Origins(o) => wire::tagged(out, "origins", o),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::account::Cost;
    use crate::core::keys::RateLimit;
    use crate::core::ledger::{Budget, OnExhausted};

    fn round_trip<T: ToJson + FromJson + PartialEq + std::fmt::Debug>(v: T) {
        let text = wire::text(&v);
        assert_eq!(wire::parse::<T>(&text).unwrap(), v, "{text}");
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
        round_trip(AccountOp::Admit(AdmitRequest {
            key: key.clone(),
            account,
            cost: Cost::FREE,
            ttl_ms: 1,
            lease: None,
        }));
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
        assert!(wire::parse::<AccountReply>(r#"{"usage":{"used":1}}"#).is_err());
        assert!(wire::parse::<AccountReply>(r#"{"admitted":{}}"#).is_err());
    }
}
