//! The account Durable Object (ledger + throttles of one billing account) and the edge's
//! client for it. All decisions are `core::account::AccountState`'s and every write is one
//! `core::store` names: the state is loaded from SQLite rows once per object lifetime, kept in
//! memory, and an operation writes back only the rows it changed, with the synchronous SQL
//! API (nothing awaits on the way, so the object serves operations back to back while the
//! runtime commits their writes; each reply still waits for its own commit).
//!
//! Here: the object and its dispatch (an operation in, its reply out, an edit held until the
//! leases on the old terms are gone). Its rows and alarm are `storage`'s, its credit alerts
//! `alerts`', a shard's lease from its pool `shard`'s, and what the rest of the edge calls it
//! with `client`'s.

mod alerts;
mod client;
mod shard;
mod storage;

pub use client::*;

use crate::core::account::AccountState;
use crate::core::alerts::AlertBook;
use crate::core::caller::shard_of_account;
use crate::core::lease::{Lease, Pool};
use crate::core::protocol::{self, AccountOp, AccountReply};
use crate::core::store;
use crate::edge::{objects, platform};
use std::cell::{Cell, RefCell};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::{durable_object, DurableObject, Env, Response, Result, State};

/// The request log is pruned (records past their retention, or beyond the most an account
/// keeps) by an alarm at most this long after a record is written.
const PRUNE_AFTER_MS: u64 = 3_600_000;

/// An alarm prunes the log at most this often, unless an eighth of the most it keeps was
/// written since the last prune: finding the records past their retention reads the whole
/// log (up to `REQUEST_LOG_MAX_ROWS`), and a busy account's alarm fires every few seconds for
/// its leases' ends.
const PRUNE_EVERY_MS: u64 = 60_000;

/// The alarm that tidies up after time (a lease's end, a hold's lapse, a lapsed lease's
/// credit back, a record forgotten) comes at most this often. None of it is urgent: every
/// operation that reads or moves credit does what is due first (`store::expires_first`), so
/// the alarm only stands in for operations that do not come. A key whose lease is renewed
/// every second had an alarm every half second or so, each a storage transaction.
const HOUSEKEEPING_GAP_MS: u64 = 5_000;

/// How often an edit waiting for leases to end looks whether they were returned early.
const LEASE_RECALL_POLL_MS: u64 = 50;

// Only the handlers it has: a bare `#[durable_object]` also exports the WebSocket and
// `connect` handlers, as futures and glue the bundle carries for nothing.
#[durable_object(alarm)]
pub struct Account {
    state: State,
    env: Env,
    /// The object's name (`key:<id>`, `org:<id>`, or a shard's `org:<id>#<i>/<n>`).
    name: String,
    /// For a shard of an org's pool: the pool object, this shard, how many there are.
    shard: Option<(String, u32, u32)>,
    mem: RefCell<Option<AccountState>>,
    /// An org pool object's book of its shards' leases.
    pool: RefCell<Option<Pool>>,
    /// A shard object's lease from its pool.
    lease: RefCell<Option<Lease>>,
    alarm_at: Cell<Option<u64>>,
    /// When an alarm last ran (`HOUSEKEEPING_GAP_MS`).
    housekept_at: Cell<u64>,
    /// How many request log records were written since the last prune.
    log_rows: Cell<u64>,
    /// When the log was last pruned (`PRUNE_EVERY_MS`).
    pruned_at: Cell<u64>,
    /// The credit alerts fired this period and those still to be delivered.
    alerts: RefCell<AlertBook>,
}

impl DurableObject for Account {
    fn new(state: State, env: Env) -> Self {
        let id = state.id();
        // an object woken by its alarm is not told its name: it reads the one it stored
        let name = id.name().or_else(|| storage::stored_name(&state)).unwrap_or_else(|| id.to_string());
        Account {
            shard: shard_of_account(&name),
            name,
            state,
            env,
            mem: RefCell::new(None),
            pool: RefCell::new(None),
            lease: RefCell::new(None),
            alarm_at: Cell::new(None),
            housekept_at: Cell::new(0),
            log_rows: Cell::new(0),
            pruned_at: Cell::new(0),
            alerts: RefCell::new(AlertBook::default()),
        }
    }

    async fn fetch(&self, req: worker::Request) -> Result<Response> {
        objects::serve_fetch(req, |text| self.rpc_op(text)).await
    }

    async fn alarm(&self) -> Result<Response> {
        self.load().await?;
        self.alarm_at.set(None);
        let now = platform::now();
        self.housekept_at.set(now.0);
        let writes = self.mem.borrow_mut().as_mut().map(|st| store::expire(st, now)).unwrap_or_default();
        self.write(&writes)?;
        let rows = self.log_rows.get();
        let prune_at = self.pruned_at.get().saturating_add(PRUNE_EVERY_MS);
        if rows > 0 && (now.0 >= prune_at || rows >= self.log_max_rows().map_or(u64::MAX, |most| most / 8)) {
            self.log_rows.set(0);
            self.pruned_at.set(now.0);
            self.prune_log()?;
        }
        self.deliver_alerts().await?;
        if let Some((pool, shard, shards)) = &self.shard {
            self.give_back(pool, *shard, *shards).await?;
        }
        // a prune left for later comes back by itself, even if no record is written meanwhile
        self.schedule((self.log_rows.get() > 0).then(|| self.pruned_at.get().saturating_add(PRUNE_EVERY_MS))).await?;
        Response::ok("")
    }
}

/// The object's RPC side (`objects::send`): one message in, one reply out.
#[wasm_bindgen]
impl Account {
    #[wasm_bindgen(js_name = op)]
    pub async fn rpc_op(&self, message: String) -> std::result::Result<String, JsValue> {
        objects::serve::<protocol::Account, _, _>(&message, |op| self.answer(op)).await
    }
}

impl Account {
    /// Answers one message.
    async fn answer(&self, op: AccountOp) -> Result<AccountReply> {
        if let Err(e) = self.load().await {
            // never a fresh start: that would hand every key a full balance again
            platform::fault(&format!("account {}: stored state refused", self.name), &e.to_string());
            return Err(worker::Error::RustError(
                "ledger_unavailable: the account's stored state does not decode".into(),
            ));
        }
        // an edit that may take a right away answers once no lease is out on the old terms
        let recalls = match &op {
            AccountOp::RevokeKey { key } | AccountOp::EditKey { key, .. } => Some(Some(key.key_id.clone())),
            AccountOp::EditAccount { .. } => Some(None),
            _ => None,
        };
        // leases granted from here on are on the terms the edit leaves
        let before = self.mem.borrow().as_ref().map_or(0, |st| st.ledger.next_reservation_id());
        let reply = match (op, &self.shard) {
            (AccountOp::Requests { query, shard, throttle }, _) => self.requests(query, shard, throttle)?,
            (op, Some((pool, shard, shards))) => self.on_shard(op, pool, *shard, *shards).await?,
            (op, None) => self.apply(op)?,
        };
        if let Some(key_id) = recalls {
            self.outlive_leases(key_id.as_deref(), before).await;
        }
        for (overrun, late) in store::overruns(&reply) {
            // not an error, but operators want to see overshoots and late settles
            worker::console_log!("settle overran its reservation by {} micro-USD (late: {late})", overrun.0);
        }
        let prune = (self.log_rows.get() > 0).then(|| platform::now().0.saturating_add(PRUNE_AFTER_MS));
        let alert = self.alerts.borrow().next_wake().map(|t| t.0);
        let also = match (prune, alert) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.schedule(also).await?;
        Ok(reply)
    }

    /// Waits until every lease granted before lease id `before` and out for `key_id` (or for
    /// any key) has been returned or has ended: the isolates holding them stop admitting at
    /// their end, so once this returns no call is admitted on terms older than the edit just
    /// made. Reports and returns are served meanwhile (the object is not blocked by a timer).
    async fn outlive_leases(&self, key_id: Option<&str>, before: u64) {
        loop {
            let now = platform::now();
            let end = self.mem.borrow().as_ref().and_then(|st| st.leases_end(key_id, before, now));
            let Some(end) = end else { return };
            platform::sleep_ms(end.millis_since(now).clamp(1, LEASE_RECALL_POLL_MS)).await;
        }
    }

    /// Runs one operation on the state in memory and writes the rows it changed.
    fn apply(&self, op: AccountOp) -> Result<AccountReply> {
        let now = platform::now();
        let (reply, writes) = {
            let mut mem = self.mem.borrow_mut();
            let Some(st) = mem.as_mut() else {
                return Err(worker::Error::RustError("not loaded".into()));
            };
            // holds whose isolate died are charged before anything reads or moves credit (the
            // alarm does it too, but a restarted runtime may run it late)
            let due = st.next_wake().is_some_and(|t| t <= now);
            let lapsed = if due && store::expires_first(&op) { store::expire(st, now) } else { Vec::new() };
            // a pool hears of its shards' spend when they ask for credit or give it back
            let moved = store::moves_money(st, &op).or_else(|| matches!(op, AccountOp::Lease { .. }).then(Vec::new));
            let (reply, writes) = match op {
                AccountOp::Lease { shard, shards, report, want, account } => {
                    store::grant(st, &mut self.pool.borrow_mut(), shard, shards, report, want, account, now)
                }
                op => store::run(st, op, now),
            };
            let mut writes = [lapsed, writes].concat();
            if let Some(keys) = moved {
                writes.extend(self.check_alerts(st, &keys, now));
            }
            (reply, writes)
        };
        self.write(&writes)?;
        Ok(reply)
    }
}
