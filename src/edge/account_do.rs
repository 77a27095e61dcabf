//! The account Durable Object (ledger + throttles of one billing account) and the edge's
//! client for it. All decisions are `core::account::AccountState`'s; this file loads and
//! stores that state, runs the expiry alarm, and speaks a small JSON protocol.

use crate::core::account::{AccountPolicy, AccountState, Admission, AdmitRequest, KeyPolicy, RateView};
use crate::core::edits;
use crate::core::error::GatewayError;
use crate::core::ledger::MicroUsd;
use crate::core::time::{format_day, BillingPeriod};
use crate::edge::platform;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use wasm_bindgen::JsValue;
use worker::{
    durable_object, DurableObject, Env, Headers, Method, Request, RequestInit, Response, Result, ScheduledTime, State,
};

pub const BINDING: &str = "ACCOUNTS";
const STATE_KEY: &str = "state";

/// The operations the edge asks of an account.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Admit(AdmitRequest),
    Settle {
        reservation: u64,
        actual: MicroUsd,
    },
    Release {
        reservation: u64,
    },
    RecordProviderBilled {
        key_id: String,
        actual: MicroUsd,
    },
    Policy {
        key: Option<KeyPolicy>,
        account: Option<AccountPolicy>,
    },
    /// Reads usage, first bringing the ledger's policies up to the edge's copy if newer.
    Usage {
        key_id: Option<String>,
        key: Option<KeyPolicy>,
        account: Option<AccountPolicy>,
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
}

/// An account's usage as `/v1/usage` and the admin API show it.
#[derive(Serialize, Deserialize, Debug, Clone)]
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
    #[serde(default)]
    pub overrun_micro_usd: u64,
    pub key_used_micro_usd: u64,
    #[serde(default)]
    pub key_overrun_micro_usd: u64,
    pub requests: u64,
    pub rate: Option<RateView>,
    /// `[["2026-11-22", micro_usd], ...]`, current and previous period.
    pub daily: Vec<(String, u64)>,
    /// The ledger's word on the key (version, revoked), which KV's copy may lag.
    #[serde(default)]
    pub key_policy: Option<KeyPolicy>,
    /// The version of the account policy the ledger holds.
    #[serde(default)]
    pub account_version: Option<u64>,
}

#[durable_object]
pub struct Account {
    state: State,
    mem: RefCell<Option<AccountState>>,
    alarm_at: Cell<Option<u64>>,
}

impl DurableObject for Account {
    fn new(state: State, _env: Env) -> Self {
        Account { state, mem: RefCell::new(None), alarm_at: Cell::new(None) }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let op: Op = match req.text().await.map(|t| serde_json::from_str(&t)) {
            Ok(Ok(op)) => op,
            _ => return Response::error("bad op", 400),
        };
        if let Err(e) = self.load().await {
            // never a fresh start: that would hand every key a full balance again
            let id = self.state.id();
            let name = id.name().unwrap_or_else(|| id.to_string());
            worker::console_error!("account {name}: stored state refused: {e}");
            return Response::error("ledger_unavailable: the account's stored state does not decode", 503);
        }
        let now = platform::now();
        let (reply, changed) = {
            let mut guard = self.mem.borrow_mut();
            let st = guard.get_or_insert_with(|| AccountState::new(now));
            apply(st, op, now)
        };
        if changed {
            self.save().await?;
        }
        let headers = Headers::new();
        let _ = headers.set("content-type", "application/json");
        Ok(Response::ok(reply)?.with_headers(headers))
    }

    async fn alarm(&self) -> Result<Response> {
        self.load().await?;
        self.alarm_at.set(None);
        let expired = self.mem.borrow_mut().as_mut().map_or(0, |st| st.expire(platform::now()));
        if expired > 0 {
            self.save().await?;
        } else {
            self.schedule().await?;
        }
        Response::ok("")
    }
}

/// Runs one operation against the state; returns the reply and whether state changed.
fn apply(st: &mut AccountState, op: Op, now: crate::core::time::UnixMillis) -> (String, bool) {
    match op {
        Op::Admit(req) => (to_json(&st.admit(req, now)), true),
        Op::Settle { reservation, actual } => {
            let s = st.settle(reservation, actual, now);
            if s.overrun > MicroUsd::ZERO {
                // not an error, but operators want to see overshoots and late settles
                worker::console_log!("settle overran its reservation by {} micro-USD (late: {})", s.overrun.0, s.late);
            }
            (to_json(&s), !s.unknown)
        }
        Op::Release { reservation } => (format!("{{\"released\":{}}}", st.release(reservation)), true),
        Op::RecordProviderBilled { key_id, actual } => {
            st.record_provider_billed(&key_id, actual, now);
            ("{}".to_string(), true)
        }
        Op::Policy { key, account } => ("{}".to_string(), merge(st, key, account)),
        Op::Usage { key_id, key, account } => {
            let changed = merge(st, key, account);
            (to_json(&report(st, key_id.as_deref(), now)), changed)
        }
        Op::EditKey { base, key, account } => {
            let (outcome, changed) = edits::edit_key(st, base, key, account);
            (to_json(&outcome), changed)
        }
        Op::RevokeKey { key } => {
            let (policy, changed) = edits::revoke_key(st, key);
            (to_json(&policy), changed)
        }
        Op::EditAccount { base, account } => {
            let (outcome, changed) = edits::edit_account(st, base, account);
            (to_json(&outcome), changed)
        }
        Op::HeldKey { key_id } => (to_json(&st.keys.get(&key_id).and_then(|k| k.policy.clone())), false),
    }
}

/// Merges offered policies; says whether anything changed.
fn merge(st: &mut AccountState, key: Option<KeyPolicy>, account: Option<AccountPolicy>) -> bool {
    let before = (st.policy, st.keys.len());
    let mut changed = false;
    if let Some(k) = key {
        changed |= edits::offer_key(st, k);
    }
    if let Some(a) = account {
        st.merge_account_policy(a);
    }
    changed || before != (st.policy, st.keys.len())
}

/// A reply as JSON text, written straight from the typed value (no JSON tree in between).
fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

fn report(st: &AccountState, key_id: Option<&str>, now: crate::core::time::UnixMillis) -> Option<UsageReport> {
    let u = st.usage(now)?;
    let period = BillingPeriod::containing(now);
    Some(UsageReport {
        period_start: period.start.to_string(),
        period_end: period.end.to_string(),
        limit_micro_usd: u.limit.0,
        used_micro_usd: u.used.0,
        reserved_micro_usd: u.reserved.0,
        remaining_micro_usd: u.remaining.0,
        overage_micro_usd: u.overage.0,
        spend_cap_micro_usd: u.cap.map(|c| c.0),
        provider_billed_micro_usd: u.provider_billed.0,
        overrun_micro_usd: u.overrun.0,
        key_used_micro_usd: key_id.map_or(0, |k| st.key_used(k, now).0),
        key_overrun_micro_usd: key_id.map_or(0, |k| st.key_overrun(k, now).0),
        requests: st.ledger.requests,
        rate: key_id.and_then(|k| st.rate_view(k, now)),
        daily: st.ledger.daily().map(|(d, v)| (format_day(d), v.0)).collect(),
        key_policy: key_id.and_then(|k| st.keys.get(k)).and_then(|k| k.policy.clone()),
        account_version: st.policy.map(|p| p.version),
    })
}

impl Account {
    async fn load(&self) -> Result<()> {
        if self.mem.borrow().is_some() {
            return Ok(());
        }
        // only "nothing stored" starts fresh; state that does not decode is an error
        let stored: Option<String> = self.state.storage().get(STATE_KEY).await?;
        let loaded = match stored {
            Some(text) => edits::decode(&text)
                .map(|(_schema, st)| st)
                .map_err(|e| worker::Error::RustError(format!("schema {:?}: {}", e.schema, e.reason)))?,
            None => AccountState::new(platform::now()),
        };
        let mut mem = self.mem.borrow_mut();
        if mem.is_none() {
            *mem = Some(loaded);
        }
        Ok(())
    }

    async fn save(&self) -> Result<()> {
        let snapshot = self.mem.borrow().as_ref().and_then(|st| edits::encode(st).ok());
        if let Some(s) = snapshot {
            self.state.storage().put(STATE_KEY, s).await?;
        }
        self.schedule().await
    }

    /// Keeps an alarm at the earliest reservation expiry, so abandoned holds are released.
    async fn schedule(&self) -> Result<()> {
        let next = self.mem.borrow().as_ref().and_then(|st| st.ledger.next_expiry());
        if let Some(at) = next {
            if self.alarm_at.get().is_none_or(|cur| at.0 < cur) {
                // an absolute time: `set_alarm(i64)` would read the number as an offset from now
                let when = js_sys::Date::new(&JsValue::from_f64(at.0 as f64));
                self.state.storage().set_alarm(ScheduledTime::new(when)).await?;
                self.alarm_at.set(Some(at.0));
            }
        }
        Ok(())
    }
}

/// The Durable Object name of a key's own account and of an org's pool.
pub fn key_account(key_id: &str) -> String {
    format!("key:{key_id}")
}

pub fn org_account(org_id: &str) -> String {
    format!("org:{org_id}")
}

/// Sends one operation to an account. Any failure is `LedgerUnavailable`: metered traffic
/// fails closed rather than going upstream uncounted.
pub async fn call<T: for<'de> Deserialize<'de>>(
    env: &Env,
    account: &str,
    op: &Op,
) -> std::result::Result<T, GatewayError> {
    let down = |_| GatewayError::LedgerUnavailable;
    let ns = env.durable_object(BINDING).map_err(down)?;
    let stub = ns.id_from_name(account).map_err(down)?.get_stub().map_err(down)?;
    let body = serde_json::to_string(op).map_err(|_| GatewayError::LedgerUnavailable)?;
    let headers = Headers::new();
    let _ = headers.set("content-type", "application/json");
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers).with_body(Some(JsValue::from_str(&body)));
    let req = Request::new_with_init("https://account.internal/op", &init).map_err(down)?;
    let mut resp = match stub.fetch_with_request(req).await {
        Ok(resp) => resp,
        Err(e) => {
            // the runtime's words (overloaded, reset, ...): operators need them; no secrets
            worker::console_error!("ledger {account} unreachable: {e}");
            return Err(GatewayError::LedgerUnavailable);
        }
    };
    if resp.status_code() != 200 {
        worker::console_error!("ledger {account} answered {}", resp.status_code());
        return Err(GatewayError::LedgerUnavailable);
    }
    resp.json().await.map_err(down)
}

pub async fn admit(env: &Env, account: &str, req: AdmitRequest) -> std::result::Result<Admission, GatewayError> {
    call(env, account, &Op::Admit(req)).await
}

pub async fn usage(
    env: &Env,
    account: &str,
    key: Option<KeyPolicy>,
    policy: Option<AccountPolicy>,
) -> std::result::Result<Option<UsageReport>, GatewayError> {
    let key_id = key.as_ref().map(|k| k.key_id.clone());
    call(env, account, &Op::Usage { key_id, key, account: policy }).await
}

pub async fn push_policy(
    env: &Env,
    account: &str,
    key: Option<KeyPolicy>,
    policy: Option<AccountPolicy>,
) -> std::result::Result<(), GatewayError> {
    call::<serde::de::IgnoredAny>(env, account, &Op::Policy { key, account: policy }).await.map(|_| ())
}
