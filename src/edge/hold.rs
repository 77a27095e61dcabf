//! A call's hold on credit, as a guard: it is settled to the actual cost, charged in full
//! (its usage could not be learned), or given back, exactly once, whatever path the call
//! takes. Settling consumes it; dropping it unsettled (an error upstream answered, an early
//! return, a cooldown) releases it. Nothing releases a reservation by hand. While its call
//! runs, the call renews it, so that only a hold whose isolate died ever lapses.
//!
//! Settles and releases go to the account object after the response is on its way, and those
//! that land together are coalesced: per account, one request of this isolate at a time sends
//! (in its own `wait_until`), and whatever queued meanwhile goes in its next round trip as one
//! batch. Other requests only queue: none of them awaits I/O that belongs to another request.

use crate::core::ledger::MicroUsd;
use crate::core::pricing::TokenUsage;
use crate::core::protocol::AccountOp as Op;
use crate::core::request_log::{CallLog, Record};
use crate::core::spend::CallLine;
use crate::edge::{account_do, platform};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use worker::{Context, Env};

pub struct Hold {
    env: Env,
    ctx: Rc<Context>,
    account: String,
    key_id: String,
    /// The reservation, until it is settled or released.
    reservation: Option<u64>,
    /// What the reservation holds: what the call is charged when its usage cannot be learned.
    held: MicroUsd,
    /// Provider-billed (`byok`): usage is recorded, credits are never charged.
    provider_billed: bool,
    /// The model and provider the settle counts the call under.
    label: Option<(String, String)>,
    /// The call's request log record, as far as the edge knows it.
    log: Option<CallLog>,
}

impl Hold {
    pub fn new(
        env: &Env,
        ctx: &Rc<Context>,
        account: &str,
        key_id: &str,
        reservation: Option<u64>,
        held: MicroUsd,
        provider_billed: bool,
    ) -> Self {
        Hold {
            env: env.clone(),
            ctx: ctx.clone(),
            account: account.to_string(),
            key_id: key_id.to_string(),
            reservation,
            held,
            provider_billed,
            label: None,
            log: None,
        }
    }

    /// Names the model (without suffix) and provider the call is counted under.
    pub fn label(&mut self, model: &str, provider: &str) {
        self.label = Some((model.to_string(), provider.to_string()));
    }

    /// The call's record for the request log (its status and timings are filled in as the
    /// call goes; its latency when it is settled or released).
    pub fn record(&mut self, log: CallLog) {
        self.log = Some(log);
    }

    /// The record's view of the upstream exchange.
    pub fn timing(&mut self, ttfb_ms: u64, retries: u32, waited_ms: u64) {
        if let Some(l) = self.log.as_mut() {
            l.ttfb_ms = Some(ttfb_ms);
            l.retries = retries;
            l.cooldown_wait_ms = waited_ms;
        }
    }

    /// Upstream's own request id, which the caller's response carries.
    pub fn upstream_id(&mut self, id: &str) {
        if let Some(l) = self.log.as_mut() {
            l.upstream_request_id = Some(id.to_string());
        }
    }

    /// The status the caller gets, and the gateway's error code if the call failed.
    pub fn outcome(&mut self, status: u16, error: Option<&'static str>) {
        if let Some(l) = self.log.as_mut() {
            l.status = status;
            l.error = error.map(str::to_string);
        }
    }

    /// The call's line: its label, tokens and record, with the latency up to now.
    fn line(&mut self, tokens: TokenUsage) -> Option<CallLine> {
        let log = self.log.take().map(|mut l| {
            l.latency_ms = platform::now().millis_since(l.at);
            l
        });
        let (model, provider) = self.label.take()?;
        Some(CallLine { model, provider, tokens, log })
    }

    fn settle_op(&mut self, actual: MicroUsd, tokens: TokenUsage, unmetered: bool) -> Option<Op> {
        let line = self.line(tokens);
        let charged = if unmetered { self.held } else { actual };
        announce(line.as_ref(), charged, if unmetered { charged } else { MicroUsd::ZERO });
        match self.reservation.take() {
            Some(reservation) => Some(Op::Settle { reservation, actual, line, unmetered }),
            // nothing was reserved (a provider-billed or free call): recorded all the same
            None if line.as_ref().is_some_and(|l| l.log.is_some())
                || (self.provider_billed && actual > MicroUsd::ZERO) =>
            {
                Some(Op::RecordProviderBilled { key_id: self.key_id.clone(), actual, line })
            }
            None => None,
        }
    }

    /// Settles after the response is on its way: the call's cost, and the tokens it was
    /// counted at (for the spend per model and provider).
    pub fn settle(mut self, actual: MicroUsd, tokens: TokenUsage) {
        if let Some(op) = self.settle_op(actual, tokens, false) {
            enqueue(&self.env, &self.ctx, &self.account, op);
        }
    }

    /// Charges the reservation in full: the call reached upstream but its usage cannot be
    /// learned (the stream broke, time ran out, it timed out after upstream had it).
    /// `bound` is the worst case the reservation covers (for the spend per model), and for
    /// a provider-billed call, the cost recorded.
    pub fn unmetered(mut self, bound: MicroUsd, tokens: TokenUsage) {
        if let Some(l) = self.log.as_mut() {
            l.error.get_or_insert_with(|| "usage_unknown".into());
        }
        if self.reservation.is_none() {
            // nothing held: a provider-billed call records its worst case, a free one nothing
            let cost = if self.provider_billed { bound } else { MicroUsd::ZERO };
            if let Some(op) = self.settle_op(cost, tokens, false) {
                enqueue(&self.env, &self.ctx, &self.account, op);
            }
            return;
        }
        if let Some(op) = self.settle_op(bound, tokens, true) {
            enqueue(&self.env, &self.ctx, &self.account, op);
        }
    }

    /// Keeps the hold another `ttl_ms`: its call is still running. Sent with the settles.
    pub fn renew(&self, ttl_ms: u64) {
        if let Some(reservation) = self.reservation {
            enqueue(&self.env, &self.ctx, &self.account, Op::Renew { reservations: vec![reservation], ttl_ms });
        }
    }
}

/// One structured line per call for the operator's log (`wrangler tail`): the request log's
/// record, nothing more (no prompt, no completion, no secret).
fn announce(line: Option<&CallLine>, cost: MicroUsd, unmetered: MicroUsd) {
    if let Some(record) = line.and_then(|l| l.log.as_ref().map(|log| Record::of(l, log, cost.0, unmetered.0))) {
        if let Ok(text) = serde_json::to_string(&record) {
            worker::console_log!("{{\"call\":{text}}}");
        }
    }
}

/// Per account: the operations waiting to be sent, and whether a request is sending them.
#[derive(Default)]
struct Queue {
    ops: Vec<Op>,
    sending: bool,
}

thread_local! {
    static QUEUES: RefCell<HashMap<String, Queue>> = RefCell::new(HashMap::new());
}

/// A sender hands over after this many round trips, so no request's `wait_until` runs on
/// for ever under a steady stream of settles.
const MAX_ROUNDS: u32 = 8;

fn enqueue(env: &Env, ctx: &Context, account: &str, op: Op) {
    let start = QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        let queue = q.entry(account.to_string()).or_default();
        queue.ops.push(op);
        !std::mem::replace(&mut queue.sending, true)
    });
    if start {
        ctx.wait_until(drain(env.clone(), account.to_string()));
    }
}

/// Takes what is queued for `account`. With `last`, or when nothing is queued, the queue is
/// marked idle in the same step, so the next settle starts a sender of its own: every queued
/// operation always has a sender.
fn take(account: &str, last: bool) -> Vec<Op> {
    QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        let Some(queue) = q.get_mut(account) else { return Vec::new() };
        let ops = std::mem::take(&mut queue.ops);
        if last || ops.is_empty() {
            q.remove(account);
        }
        ops
    })
}

async fn drain(env: Env, account: String) {
    for round in 1..=MAX_ROUNDS {
        let mut ops = take(&account, round == MAX_ROUNDS);
        let op = match ops.len() {
            0 => return,
            1 => ops.remove(0),
            _ => Op::Batch(ops),
        };
        send(&env, &account, op).await;
    }
}

/// Sends settles and releases, and once more after a short pause if the object could not be
/// reached: both are idempotent (a reservation settles or is released once; a second try
/// charges nothing), so a retry can only save a charge. If both fail, the holds expire and
/// their cost is lost to the ledger, which the log says.
async fn send(env: &Env, account: &str, op: Op) {
    if account_do::call(env, account, &op).await.is_ok() {
        return;
    }
    platform::sleep_ms(RETRY_AFTER_MS).await;
    if account_do::call(env, account, &op).await.is_err() {
        worker::console_error!("settle or release failed twice for account {account}; the reservation will expire");
    }
}

/// How long a failed settle waits before its one retry.
const RETRY_AFTER_MS: u64 = 250;

impl Drop for Hold {
    fn drop(&mut self) {
        let settled = self.label.is_none() && self.log.is_none() && self.reservation.is_none();
        if settled {
            return;
        }
        // released unsettled: a call that failed; its record says how, if the proxy said
        if let Some(l) = self.log.as_mut().filter(|l| l.status == 0) {
            l.status = 502;
            l.error = Some("upstream_error".into());
        }
        let line = self.line(TokenUsage::default());
        announce(line.as_ref(), MicroUsd::ZERO, MicroUsd::ZERO);
        match self.reservation.take() {
            Some(reservation) => enqueue(&self.env, &self.ctx, &self.account, Op::Release { reservation, line }),
            None if line.as_ref().is_some_and(|l| l.log.is_some()) => enqueue(
                &self.env,
                &self.ctx,
                &self.account,
                Op::RecordProviderBilled { key_id: self.key_id.clone(), actual: MicroUsd::ZERO, line },
            ),
            None => {}
        }
    }
}
