//! The account Durable Object (ledger + throttles of one billing account) and the edge's
//! client for it. All decisions are `core::account::AccountState`'s and every write is one
//! `core::store` names: the state is loaded from SQLite rows once per object lifetime, kept in
//! memory, and an operation writes back only the rows it changed, with the synchronous SQL
//! API (nothing awaits on the way, so the object serves operations back to back while the
//! runtime commits their writes; each reply still waits for its own commit).

use crate::core::account::{AccountPolicy, AccountState, Admission, AdmitRequest, Denial, KeyPolicy};
use crate::core::alerts::{AlertBook, Measure, Of};
use crate::core::caller::{org_account, shard_account, shard_of_account, Caller};
use crate::core::edits::{self, AccountEdit, KeyEdit};
use crate::core::error::GatewayError;
use crate::core::keys::OrgRecord;
use crate::core::lease::{Lease, Pool};
use crate::core::ledger::{Hold, MicroUsd};
use crate::core::protocol::{self, AccountOp, AccountReply, UsageReport};
use crate::core::spend::JobRow;
use crate::core::store::{self, RowWrite, ROW_SCHEMA};
use crate::core::time::UnixMillis;
use crate::edge::{objects, platform};
use futures_util::future;
use std::cell::{Cell, RefCell};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::{durable_object, DurableObject, Env, Response, Result, ScheduledTime, SqlStorage, SqlStorageValue, State};

/// Where the whole state lived as one document before it was stored as rows: read once, to
/// carry it over, then deleted.
const LEGACY_STATE_KEY: &str = "state";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY CHECK (id = 0), schema INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holds (id INTEGER PRIMARY KEY, key_id TEXT, amount INTEGER NOT NULL, expires_at INTEGER, expired INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS spend (key_id TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (key_id, model, provider)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, key_id TEXT NOT NULL, model TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS log_at ON log (at, seq);";

/// The request log is pruned (records past their retention, or beyond the most an account
/// keeps) by an alarm at most this long after a record is written.
const PRUNE_AFTER_MS: u64 = 3_600_000;

/// A shard gives back the lease it is not using this long after it last got one.
const GIVE_BACK_AFTER_MS: u64 = 30_000;

#[durable_object]
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
    /// A request log record was written since the last prune.
    log_written: Cell<bool>,
    /// The credit alerts fired this period and those still to be delivered.
    alerts: RefCell<AlertBook>,
}

impl DurableObject for Account {
    fn new(state: State, env: Env) -> Self {
        let id = state.id();
        let name = id.name().unwrap_or_else(|| id.to_string());
        Account {
            shard: shard_of_account(&name),
            name,
            state,
            env,
            mem: RefCell::new(None),
            pool: RefCell::new(None),
            lease: RefCell::new(None),
            alarm_at: Cell::new(None),
            log_written: Cell::new(false),
            alerts: RefCell::new(AlertBook::default()),
        }
    }

    async fn fetch(&self, req: worker::Request) -> Result<Response> {
        objects::serve_fetch::<protocol::Account, _, _>(req, |op| self.answer(op)).await
    }

    async fn alarm(&self) -> Result<Response> {
        self.load().await?;
        self.alarm_at.set(None);
        let writes = self.mem.borrow_mut().as_mut().map(|st| store::expire(st, platform::now())).unwrap_or_default();
        self.write(&writes)?;
        if self.log_written.replace(false) {
            self.prune_log()?;
        }
        self.deliver_alerts().await?;
        if let Some((pool, shard, shards)) = &self.shard {
            self.give_back(pool, *shard, *shards).await?;
        }
        self.schedule(None).await?;
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
        let reply = match (op, &self.shard) {
            (AccountOp::Requests { query, shard, throttle }, _) => self.requests(query, shard, throttle)?,
            (op, Some((pool, shard, shards))) => self.on_shard(op, pool, *shard, *shards).await?,
            (op, None) => self.apply(op)?,
        };
        for (overrun, late) in store::overruns(&reply) {
            // not an error, but operators want to see overshoots and late settles
            worker::console_log!("settle overran its reservation by {} micro-USD (late: {late})", overrun.0);
        }
        let prune = self.log_written.get().then(|| platform::now().0.saturating_add(PRUNE_AFTER_MS));
        let alert = self.alerts.borrow().next_wake().map(|t| t.0);
        let also = match (prune, alert) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.schedule(also).await?;
        Ok(reply)
    }

    /// After an operation that moved money: the thresholds it crossed fire, each once a
    /// period (`core::alerts`), recorded in the same write as the operation's own rows.
    fn check_alerts(&self, st: &AccountState, keys: &[String], now: UnixMillis) -> Option<RowWrite> {
        let s = crate::edge::config::settings(&self.env).ok()?;
        s.alert_webhook.as_ref()?;
        // a shard sees its lease, not the org's spend: a sharded org's alerts are its pool's
        if self.shard.is_some() {
            return None;
        }
        let (scope, id) = self.name.split_once(':')?;
        let org = (scope == "org").then_some(id);
        // a sharded org's pool sees its shards' spend as they report it, on each lease
        let (used, credit, cap) = match self.pool.borrow().as_ref() {
            Some(pool) => {
                let budget = st.policy?.budget;
                (pool.usage(now).used, budget.credit, budget.cap)
            }
            None => {
                let u = st.usage(now)?;
                (u.used, u.limit, u.cap)
            }
        };
        let mut book = self.alerts.borrow_mut();
        let mut fired = false;
        let thresholds = &s.alert_thresholds;
        let measure = |of, used, limit| Measure { scope, id, org: None, of, used, limit };
        fired |= book.check(&measure(Of::Credits, used, credit), thresholds, now);
        if let Some(cap) = cap {
            fired |= book.check(&measure(Of::SpendCap, used, cap), thresholds, now);
        }
        // a key's own cap inside an org
        for key_id in keys.iter().filter(|_| org.is_some()) {
            let Some(ceiling) = st.keys.get(key_id).and_then(|k| k.policy.as_ref()).and_then(|p| p.ceiling) else {
                continue;
            };
            let m = Measure {
                scope: "key",
                id: key_id,
                org,
                of: Of::SpendCap,
                used: st.key_used(key_id, now),
                limit: ceiling,
            };
            fired |= book.check(&m, thresholds, now);
        }
        fired.then(|| RowWrite::Alerts(serde_json::to_string(&*book).unwrap_or_default()))
    }

    /// Sends the alerts that are due, in order, each signed; a refusal waits its backoff and
    /// holds the rest behind it.
    async fn deliver_alerts(&self) -> Result<()> {
        let Ok(s) = crate::edge::config::settings(&self.env) else { return Ok(()) };
        let Some(url) = s.alert_webhook.clone() else { return Ok(()) };
        let secret = s.alert_secret.as_ref().map(|k| k.expose().as_bytes().to_vec()).unwrap_or_default();
        let mut changed = false;
        loop {
            let now = platform::now();
            let Some(d) = self.alerts.borrow().due(now).cloned() else { break };
            changed = true;
            let signature = crate::core::alerts::sign(&secret, d.body.as_bytes());
            if post_alert(&url, &d.body, &d.id, &signature).await {
                self.alerts.borrow_mut().delivered(&d.id);
                continue;
            }
            let mut r = [0u8; 2];
            let jitter = platform::secure_random(&mut r).map_or(500, |_| u64::from(u16::from_le_bytes(r)) % 1001);
            if self.alerts.borrow_mut().failed(&d.id, now, jitter) {
                platform::fault("an alert was given up after its last attempt", &d.id);
            }
            break;
        }
        if changed {
            let row = RowWrite::Alerts(serde_json::to_string(&*self.alerts.borrow()).unwrap_or_default());
            self.write(&[row])?;
        }
        let next = self.alerts.borrow().next_wake().map(|t| t.0);
        self.schedule(next).await
    }

    /// A page of the request log, newest first; with `throttle`, after taking one request
    /// from that key's throttle (a refusal is the reply).
    fn requests(
        &self,
        q: crate::core::request_log::LogQuery,
        shard: u32,
        throttle: Option<(KeyPolicy, AccountPolicy)>,
    ) -> Result<AccountReply> {
        if let Some((key, account)) = throttle {
            let reply = self.apply(AccountOp::Usage { key: Some(key), account: Some(account), throttle: true })?;
            if let AccountReply::Admission(denied) = reply {
                return Ok(AccountReply::Admission(denied));
            }
        }
        let (before_at, before_seq) = q.cursor.map_or((u64::MAX, u64::MAX), |c| c.bound_for(shard));
        let (low, high) = q.status.map_or((0, 1000), |f| f.range());
        let mut sql_text = String::from(
            "SELECT at, seq, body FROM log WHERE at >= ? AND at <= ? AND (at < ? OR (at = ? AND seq < ?)) AND status >= ? AND status < ?",
        );
        let mut args = vec![
            int(q.since.unwrap_or(0)),
            int(q.until.unwrap_or(u64::MAX)),
            int(before_at),
            int(before_at),
            int(before_seq),
            int(u64::from(low)),
            int(u64::from(high)),
        ];
        if let Some(k) = &q.key_id {
            sql_text.push_str(" AND key_id = ?");
            args.push(k.as_str().into());
        }
        if let Some(m) = &q.model {
            sql_text.push_str(" AND model = ?");
            args.push(m.as_str().into());
        }
        sql_text.push_str(" ORDER BY at DESC, seq DESC LIMIT ?");
        args.push(int(u64::from(q.limit)));
        let rows = self
            .sql()
            .exec(&sql_text, args)?
            .raw()
            .map(|row| {
                let row = row?;
                let num = |i: usize| row.get(i).and_then(as_u64).unwrap_or(0);
                Ok((num(0), num(1), row.get(2).and_then(as_text).unwrap_or_default()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AccountReply::Requests(crate::core::request_log::Page { rows }))
    }

    /// Drops the records past their retention and the oldest beyond the most kept.
    fn prune_log(&self) -> Result<()> {
        let s = crate::edge::config::settings(&self.env).map_err(|e| worker::Error::RustError(e.to_string()))?;
        let sql = self.sql();
        let oldest = platform::now().0.saturating_sub(s.request_log_retention_ms);
        sql.exec("DELETE FROM log WHERE at < ?", vec![int(oldest)])?;
        sql.exec("DELETE FROM log WHERE seq <= (SELECT MAX(seq) FROM log) - ?", vec![int(s.request_log_max_rows)])?;
        Ok(())
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
            let due = st.ledger.next_expiry().is_some_and(|t| t <= now);
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

    /// A shard admits against its lease; when the lease is too small for a call, it asks its
    /// pool for more (the org's policy as the call offered it) and tries once more.
    async fn on_shard(&self, op: AccountOp, pool: &str, shard: u32, shards: u32) -> Result<AccountReply> {
        let lease = |now| self.lease.borrow().unwrap_or_else(|| Lease::new(now));
        let AccountOp::Admit(req) = op else {
            return self.apply(op);
        };
        let org = req.account;
        let want = req.cost.full();
        let first =
            self.apply(store::on_lease(AccountOp::Admit(req.clone()), &lease(platform::now()), platform::now()))?;
        if !matches!(first, AccountReply::Admission(Admission::Denied { denial: Denial::InsufficientQuota, .. })) {
            return Ok(first);
        }
        if !self.ask(pool, shard, shards, want, Some(org), false).await? {
            return Ok(first);
        }
        let now = platform::now();
        self.apply(store::on_lease(AccountOp::Admit(req), &lease(now), now))
    }

    /// Asks the pool for `want` more (or, with `give_back`, returns what is not committed);
    /// says whether the lease changed. The lease is lowered before the pool hears of it.
    async fn ask(
        &self,
        pool: &str,
        shard: u32,
        shards: u32,
        want: MicroUsd,
        org: Option<AccountPolicy>,
        give_back: bool,
    ) -> Result<bool> {
        let now = platform::now();
        let report = {
            let mem = self.mem.borrow();
            let Some(st) = mem.as_ref() else { return Ok(false) };
            let mut held = self.lease.borrow_mut();
            let lease = held.get_or_insert_with(|| Lease::new(now));
            store::shard_report(st, lease, give_back, now)
        };
        if give_back {
            self.save_lease()?;
        }
        let op = AccountOp::Lease { shard, shards, report, want, account: org };
        let grant = match objects::call::<protocol::Account>(&self.env, pool, &op).await {
            Ok(AccountReply::Grant(Some(g))) => g,
            // the pool could not be asked: the call is refused for credit, as it would be
            Ok(_) | Err(_) => return Ok(false),
        };
        let changed = self.lease.borrow_mut().get_or_insert_with(|| Lease::new(now)).apply(grant);
        if changed {
            self.save_lease()?;
            self.schedule(Some(platform::now().0.saturating_add(GIVE_BACK_AFTER_MS))).await?;
        }
        Ok(changed)
    }

    /// Gives the pool back what the lease holds beyond what is committed.
    async fn give_back(&self, pool: &str, shard: u32, shards: u32) -> Result<()> {
        let now = platform::now();
        let spare = {
            let mem = self.mem.borrow();
            let Some(st) = mem.as_ref() else { return Ok(()) };
            let Some(lease) = *self.lease.borrow() else { return Ok(()) };
            let u = st.ledger.usage(now, &lease.budget(now));
            let committed = u.used.saturating_add(u.reserved);
            lease.credit(now).is_none_or(|c| c > committed)
        };
        if spare {
            // the pool holds the org's policy: a give-back offers none (the shard's own copy
            // has its lease for a budget)
            self.ask(pool, shard, shards, MicroUsd::ZERO, None, true).await?;
        }
        Ok(())
    }

    fn save_lease(&self) -> Result<()> {
        let row = self.lease.borrow().as_ref().map(store::lease_row);
        self.write(&row.into_iter().collect::<Vec<_>>())
    }
}

/// Posts one alert to the webhook: its body, signed; true when it answered 2xx within 10 s.
async fn post_alert(url: &str, body: &str, id: &str, signature: &str) -> bool {
    let Ok(headers) = web_sys::Headers::new() else { return false };
    let _ = headers.set("content-type", "application/json");
    let _ = headers.set("x-hfgate-delivery", id);
    let _ = headers.set("x-hfgate-signature", &format!("sha256={signature}"));
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_headers(headers.as_ref());
    init.set_body(&JsValue::from_str(body));
    let sent = platform::within(10_000, async { platform::fetch(url, &init).await.map(|r| r.ok()) });
    sent.await == Some(true)
}

fn int(v: u64) -> SqlStorageValue {
    // JavaScript numbers carry integers exactly up to 2^53: an amount beyond that (nine
    // billion dollars) is stored as that
    SqlStorageValue::Integer(i64::try_from(v.min((1 << 53) - 1)).unwrap_or(0))
}

fn as_u64(v: &SqlStorageValue) -> Option<u64> {
    match v {
        SqlStorageValue::Integer(i) => u64::try_from(*i).ok(),
        SqlStorageValue::Float(f) if *f >= 0.0 => Some(*f as u64),
        _ => None,
    }
}

fn as_text(v: &SqlStorageValue) -> Option<String> {
    match v {
        SqlStorageValue::String(s) => Some(s.clone()),
        _ => None,
    }
}

impl Account {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    /// Loads the rows once per object lifetime; a state of the old single-document form is
    /// carried over into rows first. Only "nothing stored" starts fresh.
    async fn load(&self) -> Result<()> {
        if self.mem.borrow().is_some() {
            return Ok(());
        }
        let sql = self.sql();
        sql.exec(SCHEMA, None)?;
        let account = sql.exec("SELECT body FROM account WHERE id = 0", None)?.raw().next().transpose()?;
        let loaded = match account.and_then(|row| row.first().and_then(as_text)) {
            Some(body) => {
                let keys = sql
                    .exec("SELECT key_id, state FROM keys", None)?
                    .raw()
                    .map(|row| {
                        let row = row?;
                        Ok((
                            row.first().and_then(as_text).unwrap_or_default(),
                            row.get(1).and_then(as_text).unwrap_or_default(),
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let holds = sql
                    .exec("SELECT id, key_id, amount, expires_at, expired FROM holds", None)?
                    .raw()
                    .map(|row| {
                        let row = row?;
                        let num = |i: usize| row.get(i).and_then(as_u64).unwrap_or(0);
                        let amount = MicroUsd(num(2));
                        let hold = if num(4) == 0 {
                            Hold::Open { amount, expires_at: UnixMillis(num(3)) }
                        } else {
                            // an expired hold's time is when it lapsed and was charged; none:
                            // it expired under a build that gave it back uncharged
                            let charged_at = row.get(3).and_then(as_u64).map(UnixMillis);
                            Hold::Expired { amount, charged_at }
                        };
                        Ok((num(0), row.get(1).and_then(as_text), hold))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let text = |row: &[SqlStorageValue], i: usize| row.get(i).and_then(as_text).unwrap_or_default();
                let lines = sql
                    .exec("SELECT key_id, model, provider, body FROM spend", None)?
                    .raw()
                    .map(|row| {
                        let row = row?;
                        Ok(((text(&row, 0), text(&row, 1), text(&row, 2)), text(&row, 3)))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let jobs = sql
                    .exec("SELECT id, body FROM jobs", None)?
                    .raw()
                    .map(|row| {
                        let row = row?;
                        Ok((text(&row, 0), text(&row, 1)))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let refused = |e: store::BadRow| worker::Error::RustError(format!("row {}: {}", e.row, e.reason));
                let mut st = store::load(&body, keys, holds).map_err(refused)?;
                store::load_extras(&mut st, lines, jobs).map_err(refused)?;
                st
            }
            None => {
                let legacy: Option<String> = self.state.storage().get(LEGACY_STATE_KEY).await?;
                match legacy {
                    Some(text) => {
                        let (_, st) = edits::decode(&text)
                            .map_err(|e| worker::Error::RustError(format!("schema {:?}: {}", e.schema, e.reason)))?;
                        self.write(&store::all_rows(&st))?;
                        self.state.storage().delete(LEGACY_STATE_KEY).await?;
                        st
                    }
                    None => AccountState::new(platform::now()),
                }
            }
        };
        // a pool's book and a shard's lease, if this object is one
        let mut pool = None;
        let mut lease = None;
        let mut alerts = None;
        for row in sql.exec("SELECT name, body FROM meta", None)?.raw() {
            let row = row?;
            let body = row.get(1).and_then(as_text).unwrap_or_default();
            let refused = |e: serde_json::Error| worker::Error::RustError(format!("row meta: {e}"));
            match row.first().and_then(as_text).as_deref() {
                Some("pool") => pool = Some(serde_json::from_str::<Pool>(&body).map_err(refused)?),
                Some("lease") => lease = Some(serde_json::from_str::<Lease>(&body).map_err(refused)?),
                Some("alerts") => alerts = Some(serde_json::from_str::<AlertBook>(&body).map_err(refused)?),
                _ => {}
            }
        }
        let mut mem = self.mem.borrow_mut();
        if mem.is_none() {
            *mem = Some(loaded);
            *self.pool.borrow_mut() = pool;
            *self.lease.borrow_mut() = lease;
            *self.alerts.borrow_mut() = alerts.unwrap_or_default();
        }
        Ok(())
    }

    /// Writes the rows an operation changed. The runtime commits them together, before the
    /// reply leaves. If a write fails, the state in memory is dropped, so the next operation
    /// starts again from what is stored.
    fn write(&self, writes: &[RowWrite]) -> Result<()> {
        let sql = self.sql();
        let result = writes.iter().try_for_each(|w| {
            match w {
                RowWrite::Account(body) => sql.exec(
                    "INSERT OR REPLACE INTO account (id, schema, body) VALUES (0, ?, ?)",
                    vec![int(u64::from(ROW_SCHEMA)), body.as_str().into()],
                ),
                RowWrite::Key { key_id, state } => sql.exec(
                    "INSERT OR REPLACE INTO keys (key_id, state) VALUES (?, ?)",
                    vec![key_id.as_str().into(), state.as_str().into()],
                ),
                RowWrite::Hold { id, key_id, hold } => {
                    let (amount, expires_at, expired) = match hold {
                        Hold::Open { amount, expires_at } => (amount.0, int(expires_at.0), 0),
                        Hold::Expired { amount, charged_at } => {
                            (amount.0, charged_at.map_or(SqlStorageValue::Null, |t| int(t.0)), 1)
                        }
                    };
                    sql.exec(
                        "INSERT OR REPLACE INTO holds (id, key_id, amount, expires_at, expired) VALUES (?, ?, ?, ?, ?)",
                        vec![int(*id), key_id.clone().into(), int(amount), expires_at, int(expired)],
                    )
                }
                RowWrite::DropHold(id) => sql.exec("DELETE FROM holds WHERE id = ?", vec![int(*id)]),
                RowWrite::Pool(body) => {
                    sql.exec("INSERT OR REPLACE INTO meta (name, body) VALUES ('pool', ?)", vec![body.as_str().into()])
                }
                RowWrite::Lease(body) => {
                    sql.exec("INSERT OR REPLACE INTO meta (name, body) VALUES ('lease', ?)", vec![body.as_str().into()])
                }
                RowWrite::Spend { line: (key_id, model, provider), totals } => sql.exec(
                    "INSERT OR REPLACE INTO spend (key_id, model, provider, body) VALUES (?, ?, ?, ?)",
                    vec![
                        key_id.as_str().into(),
                        model.as_str().into(),
                        provider.as_str().into(),
                        totals.as_str().into(),
                    ],
                ),
                RowWrite::Job { id, row } => sql.exec(
                    "INSERT OR REPLACE INTO jobs (id, body) VALUES (?, ?)",
                    vec![id.as_str().into(), row.as_str().into()],
                ),
                RowWrite::DropJob(id) => sql.exec("DELETE FROM jobs WHERE id = ?", vec![id.as_str().into()]),
                RowWrite::Alerts(body) => sql
                    .exec("INSERT OR REPLACE INTO meta (name, body) VALUES ('alerts', ?)", vec![body.as_str().into()]),
                RowWrite::DropLog { model } => {
                    sql.exec("DELETE FROM log WHERE status = 0 AND model = ?", vec![model.as_str().into()])
                }
                RowWrite::Log { at, key_id, model, status, body } => {
                    self.log_written.set(true);
                    sql.exec(
                        "INSERT INTO log (at, key_id, model, status, body) VALUES (?, ?, ?, ?, ?)",
                        vec![
                            int(*at),
                            key_id.as_str().into(),
                            model.as_str().into(),
                            int(u64::from(*status)),
                            body.as_str().into(),
                        ],
                    )
                }
            }
            .map(|_| ())
        });
        if result.is_err() {
            self.mem.borrow_mut().take();
            platform::fault(&format!("account {}: a row write failed; reloading from storage", self.name), "");
        }
        result
    }

    /// Keeps an alarm at the earliest reservation expiry (abandoned holds are released) or
    /// at `also` (a shard's give-back), whichever comes first.
    async fn schedule(&self, also: Option<u64>) -> Result<()> {
        let expiry = self.mem.borrow().as_ref().and_then(|st| st.ledger.next_expiry()).map(|t| t.0);
        let next = match (expiry, also) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            if self.alarm_at.get().is_none_or(|cur| at < cur) {
                // an absolute time: `set_alarm(i64)` would read the number as an offset from now
                let when = js_sys::Date::new(&JsValue::from_f64(at as f64));
                self.state.storage().set_alarm(ScheduledTime::new(when)).await?;
                self.alarm_at.set(Some(at));
            }
        }
        Ok(())
    }
}

/// Sends one operation to an account. Any failure is `LedgerUnavailable` (logged by
/// `objects::call`): metered traffic fails closed rather than going upstream uncounted.
pub async fn call(env: &Env, account: &str, op: &AccountOp) -> std::result::Result<AccountReply, GatewayError> {
    objects::call::<protocol::Account>(env, account, op).await.map_err(|_| GatewayError::LedgerUnavailable)
}

/// A reply of another kind than the operation asks for: the worker and the object disagree.
pub fn unexpected(reply: AccountReply) -> GatewayError {
    platform::fault("account object: a reply of the wrong kind", reply.kind());
    GatewayError::LedgerUnavailable
}

pub async fn admit(env: &Env, account: &str, req: AdmitRequest) -> std::result::Result<Admission, GatewayError> {
    match call(env, account, &AccountOp::Admit(req)).await? {
        AccountReply::Admission(a) => Ok(a),
        other => Err(unexpected(other)),
    }
}

/// Usage, after offering the edge's copies of the policies. With `throttle`, the read takes
/// one request from the caller's throttle in the same round trip; a refusal is the error.
pub async fn usage(
    env: &Env,
    account: &str,
    key: Option<KeyPolicy>,
    policy: Option<AccountPolicy>,
    throttle: bool,
) -> std::result::Result<Option<UsageReport>, GatewayError> {
    match call(env, account, &AccountOp::Usage { key, account: policy, throttle }).await? {
        AccountReply::Usage(report) => Ok(*report),
        AccountReply::Admission(Admission::Denied { denial, retry_after_ms, affordable, .. }) => {
            Err(denial.error(retry_after_ms, affordable))
        }
        other => Err(unexpected(other)),
    }
}

/// A caller's usage: its account's, or for a key of a sharded org, every shard's added up
/// against the org's budget (the key's own figures and throttle from its shard).
pub async fn caller_usage(
    env: &Env,
    caller: &Caller,
    throttle: bool,
) -> std::result::Result<Option<UsageReport>, GatewayError> {
    let own = usage(env, &caller.account, Some(caller.key_policy.clone()), Some(caller.account_policy), throttle);
    let (Some((shard, shards)), Some(org)) = (caller.shard, caller.org.as_ref()) else {
        return own.await;
    };
    let names: Vec<String> = (0..shards).filter(|j| *j != shard).map(|j| shard_account(&org.id, j, shards)).collect();
    let others = names.iter().map(|name| usage(env, name, None, None, false)).collect();
    let (own, others) = future::join(own, platform::join_all(others)).await;
    let own = own?;
    let mut all =
        others.into_iter().collect::<std::result::Result<Vec<_>, _>>()?.into_iter().flatten().collect::<Vec<_>>();
    all.extend(own.clone());
    Ok(UsageReport::of_shards(&all, own.as_ref(), &caller.account_policy.budget, platform::now()))
}

/// An org's pooled usage: its pool object's, or every shard's added up.
pub async fn org_usage(
    env: &Env,
    org: &OrgRecord,
    policy: AccountPolicy,
) -> std::result::Result<Option<UsageReport>, GatewayError> {
    let pool_name = org_account(&org.id);
    let pool = usage(env, &pool_name, None, Some(policy), false);
    if org.shards <= 1 {
        return pool.await;
    }
    let names: Vec<String> = (0..org.shards).map(|j| shard_account(&org.id, j, org.shards)).collect();
    let shards = names.iter().map(|name| usage(env, name, None, None, false)).collect();
    let (pool, shards) = future::join(pool, platform::join_all(shards)).await;
    let mut all =
        shards.into_iter().collect::<std::result::Result<Vec<_>, _>>()?.into_iter().flatten().collect::<Vec<_>>();
    // the pool object holds the org policy's version; its own ledger is empty
    all.extend(pool?);
    Ok(UsageReport::of_shards(&all, None, &policy.budget, platform::now()))
}

pub async fn push_policy(
    env: &Env,
    account: &str,
    key: Option<KeyPolicy>,
    policy: Option<AccountPolicy>,
) -> std::result::Result<(), GatewayError> {
    match call(env, account, &AccountOp::Policy { key, account: policy }).await? {
        AccountReply::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// An admin edit of a key, compare-and-set on `base`.
pub async fn edit_key(
    env: &Env,
    account: &str,
    base: u64,
    key: KeyPolicy,
    policy: Option<AccountPolicy>,
) -> std::result::Result<KeyEdit, GatewayError> {
    match call(env, account, &AccountOp::EditKey { base, key, account: policy }).await? {
        AccountReply::KeyEdit(e) => Ok(e),
        other => Err(unexpected(other)),
    }
}

/// The key policy the ledger holds (after revoking it, with `revoke`).
pub async fn held_key(
    env: &Env,
    account: &str,
    key: KeyPolicy,
    revoke: bool,
) -> std::result::Result<Option<KeyPolicy>, GatewayError> {
    let op = if revoke { AccountOp::RevokeKey { key } } else { AccountOp::HeldKey { key_id: key.key_id } };
    match call(env, account, &op).await? {
        AccountReply::Key(k) => Ok(k),
        other => Err(unexpected(other)),
    }
}

/// Records who submitted a queued job, before the caller learns its id.
pub async fn own_job(env: &Env, account: &str, job_id: String, row: JobRow) -> std::result::Result<(), GatewayError> {
    match call(env, account, &AccountOp::OwnJob { job_id, row }).await? {
        AccountReply::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// A job of `key_id`'s, and where upstream its polls go (`None`: unknown, another key's, or
/// the key is revoked).
pub async fn job(
    env: &Env,
    account: &str,
    job_id: String,
    key_id: String,
) -> std::result::Result<Option<JobRow>, GatewayError> {
    match call(env, account, &AccountOp::Job { job_id, key_id }).await? {
        AccountReply::Job(row) => Ok(row),
        other => Err(unexpected(other)),
    }
}

/// A page of one account object's request log.
pub async fn requests(
    env: &Env,
    account: &str,
    query: crate::core::request_log::LogQuery,
    shard: u32,
    throttle: Option<(KeyPolicy, AccountPolicy)>,
) -> std::result::Result<crate::core::request_log::Page, GatewayError> {
    match call(env, account, &AccountOp::Requests { query, shard, throttle }).await? {
        AccountReply::Requests(page) => Ok(page),
        AccountReply::Admission(Admission::Denied { denial, retry_after_ms, affordable, .. }) => {
            Err(denial.error(retry_after_ms, affordable))
        }
        other => Err(unexpected(other)),
    }
}

/// An admin edit of an org's pool, compare-and-set on `base`.
pub async fn edit_account(
    env: &Env,
    account: &str,
    base: u64,
    policy: AccountPolicy,
) -> std::result::Result<AccountEdit, GatewayError> {
    match call(env, account, &AccountOp::EditAccount { base, account: policy }).await? {
        AccountReply::AccountEdit(e) => Ok(e),
        other => Err(unexpected(other)),
    }
}
