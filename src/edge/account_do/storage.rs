//! The object's rows in its SQLite storage: loaded once per lifetime, written as each
//! operation leaves them, the request log read and pruned, and the alarm kept at the next
//! thing due.

use super::Account;
use crate::core::account::{AccountPolicy, AccountState, KeyPolicy};
use crate::core::alerts::AlertBook;
use crate::core::edits;
use crate::core::lease::{Lease, Pool};
use crate::core::ledger::{Hold, MicroUsd};
use crate::core::protocol::{AccountOp, AccountReply};
use crate::core::store::{self, RowWrite, ROW_SCHEMA};
use crate::core::time::UnixMillis;
use crate::core::wire;
use crate::edge::platform;
use wasm_bindgen::JsValue;
use worker::{Result, ScheduledTime, SqlStorage, SqlStorageValue, State};

/// Where the whole state lived as one document before it was stored as rows: read once, to
/// carry it over, then deleted.
const LEGACY_STATE_KEY: &str = "state";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY CHECK (id = 0), schema INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holds (id INTEGER PRIMARY KEY, key_id TEXT, amount INTEGER NOT NULL, expires_at INTEGER, expired INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS spend (key_id TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (key_id, model, provider)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS grants (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, key_id TEXT NOT NULL, model TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS log_at ON log (at, seq);";

pub(super) fn int(v: u64) -> SqlStorageValue {
    // JavaScript numbers carry integers exactly up to 2^53: an amount beyond that (nine
    // billion dollars) is stored as that
    SqlStorageValue::Integer(i64::try_from(v.min((1 << 53) - 1)).unwrap_or(0))
}

pub(super) fn as_u64(v: &SqlStorageValue) -> Option<u64> {
    match v {
        SqlStorageValue::Integer(i) => u64::try_from(*i).ok(),
        SqlStorageValue::Float(f) if *f >= 0.0 => Some(*f as u64),
        _ => None,
    }
}

pub(super) fn as_text(v: &SqlStorageValue) -> Option<String> {
    match v {
        SqlStorageValue::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// A row's `i`th column as a number (0 when it is none) or as text (empty when it is none).
pub(super) fn num(row: &[SqlStorageValue], i: usize) -> u64 {
    row.get(i).and_then(as_u64).unwrap_or(0)
}

pub(super) fn text(row: &[SqlStorageValue], i: usize) -> String {
    row.get(i).and_then(as_text).unwrap_or_default()
}

/// Every row a query answers: the one walk of the runtime's cursor the object has.
pub(super) fn all(sql: &SqlStorage, query: &str, args: Vec<SqlStorageValue>) -> Result<Vec<Vec<SqlStorageValue>>> {
    let mut rows = Vec::new();
    for row in sql.exec(query, args)?.raw() {
        rows.push(row?);
    }
    Ok(rows)
}

/// The name the object stored when it was first called by name (`Account::load`).
pub(super) fn stored_name(state: &State) -> Option<String> {
    let rows = all(&state.storage().sql(), "SELECT body FROM meta WHERE name = 'name'", Vec::new()).ok()?;
    rows.first().and_then(|row| row.first()).and_then(as_text)
}

impl Account {
    pub(super) fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    /// Loads the rows once per object lifetime; a state of the old single-document form is
    /// carried over into rows first. Only "nothing stored" starts fresh.
    pub(super) async fn load(&self) -> Result<()> {
        if self.mem.borrow().is_some() {
            return Ok(());
        }
        let sql = self.sql();
        sql.exec(SCHEMA, None)?;
        if let Some(name) = self.state.id().name() {
            sql.exec("INSERT OR IGNORE INTO meta (name, body) VALUES ('name', ?)", vec![name.into()])?;
        }
        let account = all(&sql, "SELECT body FROM account WHERE id = 0", Vec::new())?;
        let loaded = match account.first().and_then(|row| row.first()).and_then(as_text) {
            Some(body) => {
                // plain loops over the rows: each `map(..).collect()` was its own copy of the
                // iterator and collecting code
                let mut keys = Vec::new();
                for row in all(&sql, "SELECT key_id, state FROM keys", Vec::new())? {
                    keys.push((text(&row, 0), text(&row, 1)));
                }
                let mut holds = Vec::new();
                for row in all(&sql, "SELECT id, key_id, amount, expires_at, expired FROM holds", Vec::new())? {
                    let amount = MicroUsd(num(&row, 2));
                    let hold = if num(&row, 4) == 0 {
                        Hold::Open { amount, expires_at: UnixMillis(num(&row, 3)) }
                    } else {
                        // an expired hold's time is when it lapsed and was charged; none:
                        // it expired under a build that gave it back uncharged
                        let charged_at = row.get(3).and_then(as_u64).map(UnixMillis);
                        Hold::Expired { amount, charged_at }
                    };
                    holds.push((num(&row, 0), row.get(1).and_then(as_text), hold));
                }
                let mut lines = Vec::new();
                for row in all(&sql, "SELECT key_id, model, provider, body FROM spend", Vec::new())? {
                    lines.push(((text(&row, 0), text(&row, 1), text(&row, 2)), text(&row, 3)));
                }
                let mut jobs = Vec::new();
                for row in all(&sql, "SELECT id, body FROM jobs", Vec::new())? {
                    jobs.push((text(&row, 0), text(&row, 1)));
                }
                let refused = |e: store::BadRow| worker::Error::RustError(format!("row {}: {}", e.row, e.reason));
                let mut st = store::load(&body, keys, holds).map_err(refused)?;
                store::load_extras(&mut st, lines, jobs).map_err(refused)?;
                let mut grants = Vec::new();
                for row in all(&sql, "SELECT id, body FROM grants", Vec::new())? {
                    grants.push((num(&row, 0), text(&row, 1)));
                }
                store::load_grants(&mut st, grants).map_err(refused)?;
                st
            }
            None => {
                let legacy = crate::edge::objects::stored_string(&self.state, LEGACY_STATE_KEY).await?;
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
        for row in all(&sql, "SELECT name, body FROM meta", Vec::new())? {
            let body = text(&row, 1);
            let refused = |e: wire::Bad| worker::Error::RustError(format!("row meta: {e}"));
            match row.first().and_then(as_text).as_deref() {
                Some("pool") => pool = Some(wire::parse::<Pool>(&body).map_err(refused)?),
                Some("lease") => lease = Some(wire::parse::<Lease>(&body).map_err(refused)?),
                Some("alerts") => alerts = Some(wire::parse::<AlertBook>(&body).map_err(refused)?),
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
    pub(super) fn write(&self, writes: &[RowWrite]) -> Result<()> {
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
                RowWrite::Grant { id, body } => sql.exec(
                    "INSERT OR REPLACE INTO grants (id, body) VALUES (?, ?)",
                    vec![int(*id), body.as_str().into()],
                ),
                RowWrite::DropGrant(id) => sql.exec("DELETE FROM grants WHERE id = ?", vec![int(*id)]),
                RowWrite::DropLog { model } => {
                    sql.exec("DELETE FROM log WHERE status = 0 AND model = ?", vec![model.as_str().into()])
                }
                RowWrite::Log { at, key_id, model, status, body } => {
                    self.log_rows.set(self.log_rows.get() + 1);
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

    /// Keeps an alarm at the earliest reservation expiry or lease end (abandoned holds are
    /// released, ended leases closed), no sooner than `HOUSEKEEPING_GAP_MS` after the last
    /// alarm, or at `also` (a shard's give-back, a prune, an alert), whichever comes first.
    pub(super) async fn schedule(&self, also: Option<u64>) -> Result<()> {
        let gap_end = self.housekept_at.get().saturating_add(super::HOUSEKEEPING_GAP_MS);
        let expiry = self.mem.borrow().as_ref().and_then(|st| st.next_wake()).map(|t| t.0.max(gap_end));
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

impl Account {
    /// A page of the request log, newest first; with `throttle`, after taking one request
    /// from that key's throttle (a refusal is the reply).
    pub(super) fn requests(
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
        let mut rows = Vec::new();
        for row in all(&self.sql(), &sql_text, args)? {
            rows.push((num(&row, 0), num(&row, 1), text(&row, 2)));
        }
        Ok(AccountReply::Requests(crate::core::request_log::Page { rows }))
    }

    /// The most records the log keeps (`REQUEST_LOG_MAX_ROWS`).
    pub(super) fn log_max_rows(&self) -> Option<u64> {
        crate::edge::config::settings(&self.env).ok().map(|s| s.request_log_max_rows)
    }

    /// Drops the records past their retention and the oldest beyond the most kept.
    pub(super) fn prune_log(&self) -> Result<()> {
        let s = crate::edge::config::settings(&self.env).map_err(|e| worker::Error::RustError(e.to_string()))?;
        let sql = self.sql();
        let oldest = platform::now().0.saturating_sub(s.request_log_retention_ms);
        sql.exec("DELETE FROM log WHERE at < ?", vec![int(oldest)])?;
        sql.exec("DELETE FROM log WHERE seq <= (SELECT MAX(seq) FROM log) - ?", vec![int(s.request_log_max_rows)])?;
        Ok(())
    }
}
