//! A call's hold on credit, as a guard: it is settled to the actual cost or given back exactly
//! once, whatever path the call takes. Settling consumes it; dropping it unsettled (an error,
//! an early return, a cooldown) releases it. Nothing releases a reservation by hand.
//!
//! Settles and releases go to the account object after the response is on its way, and those
//! that land together are coalesced: per account, one request of this isolate at a time sends
//! (in its own `wait_until`), and whatever queued meanwhile goes in its next round trip as one
//! batch. Other requests only queue: none of them awaits I/O that belongs to another request.

use crate::core::ledger::MicroUsd;
use crate::core::pricing::TokenUsage;
use crate::core::protocol::AccountOp as Op;
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
    /// Provider-billed (`byok`): usage is recorded, credits are never charged.
    provider_billed: bool,
    /// The model and provider the settle counts the call under.
    label: Option<(String, String)>,
}

impl Hold {
    pub fn new(
        env: &Env,
        ctx: &Rc<Context>,
        account: &str,
        key_id: &str,
        reservation: Option<u64>,
        provider_billed: bool,
    ) -> Self {
        Hold {
            env: env.clone(),
            ctx: ctx.clone(),
            account: account.to_string(),
            key_id: key_id.to_string(),
            reservation,
            provider_billed,
            label: None,
        }
    }

    /// Names the model (without suffix) and provider the call is counted under.
    pub fn label(&mut self, model: &str, provider: &str) {
        self.label = Some((model.to_string(), provider.to_string()));
    }

    /// The provider the call is counted under, if named yet.
    pub fn provider(&self) -> Option<&str> {
        self.label.as_ref().map(|(_, p)| p.as_str())
    }

    fn settle_op(&mut self, actual: MicroUsd, tokens: TokenUsage) -> Option<Op> {
        let line = self.label.take().map(|(model, provider)| CallLine { model, provider, tokens });
        match (self.reservation.take(), self.provider_billed) {
            (Some(reservation), _) => Some(Op::Settle { reservation, actual, line }),
            (None, true) if actual > MicroUsd::ZERO || line.is_some() => {
                Some(Op::RecordProviderBilled { key_id: self.key_id.clone(), actual, line })
            }
            _ => None,
        }
    }

    /// Settles after the response is on its way: the call's cost, and the tokens it was
    /// counted at (for the spend per model and provider).
    pub fn settle(mut self, actual: MicroUsd, tokens: TokenUsage) {
        if let Some(op) = self.settle_op(actual, tokens) {
            enqueue(&self.env, &self.ctx, &self.account, op);
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
        if let Some(reservation) = self.reservation.take() {
            enqueue(&self.env, &self.ctx, &self.account, Op::Release { reservation });
        }
    }
}
