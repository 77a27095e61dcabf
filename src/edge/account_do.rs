//! The account Durable Object (ledger + throttles of one billing account) and the edge's
//! client for it. All decisions are `core::account::AccountState`'s and every write is one
//! `core::store` names: the state is loaded from SQLite rows once per object lifetime, kept in
//! memory, and an operation writes back only the rows it changed, with the synchronous SQL
//! API (nothing awaits on the way, so the object serves operations back to back while the
//! runtime commits their writes; each reply still waits for its own commit).

use crate::core::account::{AccountPolicy, AccountState, Admission, AdmitRequest, KeyPolicy};
use crate::core::edits::{self, AccountEdit, KeyEdit};
use crate::core::error::GatewayError;
use crate::core::ledger::{Hold, MicroUsd};
use crate::core::protocol::{self, AccountOp, AccountReply, UsageReport};
use crate::core::store::{self, RowWrite, ROW_SCHEMA};
use crate::core::time::UnixMillis;
use crate::edge::{objects, platform};
use std::cell::{Cell, RefCell};
use wasm_bindgen::JsValue;
use worker::{durable_object, DurableObject, Env, Response, Result, ScheduledTime, SqlStorage, SqlStorageValue, State};

/// Where the whole state lived as one document before it was stored as rows: read once, to
/// carry it over, then deleted.
const LEGACY_STATE_KEY: &str = "state";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY CHECK (id = 0), schema INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holds (id INTEGER PRIMARY KEY, key_id TEXT, amount INTEGER NOT NULL, expires_at INTEGER, expired INTEGER NOT NULL);";

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

    async fn fetch(&self, mut req: worker::Request) -> Result<Response> {
        let Some(op) = objects::request::<protocol::Account>(&mut req).await? else {
            return objects::refuse();
        };
        if let Err(e) = self.load().await {
            // never a fresh start: that would hand every key a full balance again
            worker::console_error!("account {}: stored state refused: {e}", self.name());
            return Response::error("ledger_unavailable: the account's stored state does not decode", 503);
        }
        let now = platform::now();
        let (reply, writes) = match self.mem.borrow_mut().as_mut() {
            Some(st) => store::run(st, op, now),
            None => return Response::error("ledger_unavailable: not loaded", 503),
        };
        for (overrun, late) in store::overruns(&reply) {
            // not an error, but operators want to see overshoots and late settles
            worker::console_log!("settle overran its reservation by {} micro-USD (late: {late})", overrun.0);
        }
        self.write(&writes)?;
        if writes.iter().any(|w| matches!(w, RowWrite::Hold { hold: Hold::Open { .. }, .. })) {
            self.schedule().await?;
        }
        objects::reply::<protocol::Account>(&reply)
    }

    async fn alarm(&self) -> Result<Response> {
        self.load().await?;
        self.alarm_at.set(None);
        let writes = self.mem.borrow_mut().as_mut().map(|st| store::expire(st, platform::now())).unwrap_or_default();
        self.write(&writes)?;
        self.schedule().await?;
        Response::ok("")
    }
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
    fn name(&self) -> String {
        let id = self.state.id();
        id.name().unwrap_or_else(|| id.to_string())
    }

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
                            Hold::Expired { amount }
                        };
                        Ok((num(0), row.get(1).and_then(as_text), hold))
                    })
                    .collect::<Result<Vec<_>>>()?;
                store::load(&body, keys, holds)
                    .map_err(|e| worker::Error::RustError(format!("row {}: {}", e.row, e.reason)))?
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
        let mut mem = self.mem.borrow_mut();
        if mem.is_none() {
            *mem = Some(loaded);
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
                        Hold::Expired { amount } => (amount.0, SqlStorageValue::Null, 1),
                    };
                    sql.exec(
                        "INSERT OR REPLACE INTO holds (id, key_id, amount, expires_at, expired) VALUES (?, ?, ?, ?, ?)",
                        vec![int(*id), key_id.clone().into(), int(amount), expires_at, int(expired)],
                    )
                }
                RowWrite::DropHold(id) => sql.exec("DELETE FROM holds WHERE id = ?", vec![int(*id)]),
            }
            .map(|_| ())
        });
        if result.is_err() {
            self.mem.borrow_mut().take();
            worker::console_error!("account {}: a row write failed; reloading from storage", self.name());
        }
        result
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

pub use crate::core::caller::{key_account, org_account};

/// Sends one operation to an account. Any failure is `LedgerUnavailable` (logged by
/// `objects::call`): metered traffic fails closed rather than going upstream uncounted.
pub async fn call(env: &Env, account: &str, op: &AccountOp) -> std::result::Result<AccountReply, GatewayError> {
    objects::call::<protocol::Account>(env, account, op).await.map_err(|_| GatewayError::LedgerUnavailable)
}

/// A reply of another kind than the operation asks for: the worker and the object disagree.
pub fn unexpected(reply: AccountReply) -> GatewayError {
    worker::console_error!("account object: unexpected reply {reply:?}");
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
