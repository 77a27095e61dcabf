//! A call's hold on credit, as a guard: it is settled to the actual cost, charged in full
//! (its usage could not be learned), or given back, exactly once, whatever path the call
//! takes. Settling consumes it; dropping it unsettled (an error upstream answered, an early
//! return, a cooldown) releases it. Nothing releases a reservation by hand. While its call
//! runs, the call renews it, so that only a hold whose isolate died ever lapses.
//!
//! Its settle or release goes to the account's object through this isolate's queue to it
//! (`edge::outbox`), after the response is on its way.

use crate::core::call_line::{CallLine, CallLog};
use crate::core::ledger::MicroUsd;
use crate::core::pricing::TokenUsage;
use crate::core::protocol::{AccountOp as Op, Leased};
use crate::core::request_log::Record;
use crate::core::wire::ToJson;
use crate::edge::outbox::enqueue;
use crate::edge::{leases, platform};
use std::cell::RefCell;
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
    /// The lease the call was admitted on, in this isolate.
    leased: Option<Leased>,
    /// Provider-billed (`byok`): usage is recorded, credits are never charged.
    provider_billed: bool,
    /// The model and provider the settle counts the call under.
    label: Option<(String, String)>,
    /// The call's request log record, as far as the edge knows it.
    log: Option<CallLog>,
}

/// What a call's admission reserved: its hold (none for a call that costs nothing), what
/// the hold holds, and the lease it was admitted on, if this isolate admitted it.
pub struct Reserved {
    pub id: Option<u64>,
    pub held: MicroUsd,
    pub leased: Option<Leased>,
}

impl Hold {
    pub fn new(env: &Env, ctx: &Rc<Context>, account: &str, key_id: &str, r: Reserved, provider_billed: bool) -> Self {
        Hold {
            env: env.clone(),
            ctx: ctx.clone(),
            account: account.to_string(),
            key_id: key_id.to_string(),
            reservation: r.id,
            held: r.held,
            leased: r.leased,
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
        announce(&self.ctx, line.as_ref(), charged, if unmetered { charged } else { MicroUsd::ZERO });
        match self.reservation.take() {
            Some(reservation) => Some(Op::Settle { reservation, actual, line, unmetered, leased: self.leased.clone() }),
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
        let overran = self.reservation.is_some() && actual > self.held;
        if let Some(op) = self.settle_op(actual, tokens, false) {
            enqueue(&self.env, &self.ctx, &self.account, op);
        }
        if overran {
            leases::overran(&self.env, &self.ctx, &self.account);
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
/// record, nothing more (no prompt, no completion, no secret). Lines are written together,
/// every `LOG_EVERY_MS` at most, in one log call: the runtime's `console.log` costs about as
/// much as a whole call's other work, and its cost is per call of it, not per line.
fn announce(ctx: &Context, line: Option<&CallLine>, cost: MicroUsd, unmetered: MicroUsd) {
    let Some(record) = line.and_then(|l| l.log.as_ref().map(|log| Record::of(l, log, cost.0, unmetered.0))) else {
        return;
    };
    let first = LOG_LINES.with(|lines| {
        let mut lines = lines.borrow_mut();
        let first = lines.is_empty();
        if !first {
            lines.push('\n');
        }
        // the record as `core::wire` writes it, straight into the batch of lines
        lines.push_str("{\"call\":");
        record.to_json(&mut lines);
        lines.push('}');
        first
    });
    if first {
        // the request that wrote the first line writes them all, a moment later
        ctx.wait_until(async {
            platform::sleep_ms(LOG_EVERY_MS).await;
            let lines = LOG_LINES.with(|lines| std::mem::take(&mut *lines.borrow_mut()));
            if !lines.is_empty() {
                worker::console_log!("{lines}");
            }
        });
    }
}

/// How long a call's log line waits for others to be written with it.
const LOG_EVERY_MS: u64 = 50;

thread_local! {
    static LOG_LINES: RefCell<String> = const { RefCell::new(String::new()) };
}

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
        announce(&self.ctx, line.as_ref(), MicroUsd::ZERO, MicroUsd::ZERO);
        match self.reservation.take() {
            Some(reservation) => enqueue(
                &self.env,
                &self.ctx,
                &self.account,
                Op::Release { reservation, line, leased: self.leased.clone() },
            ),
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
