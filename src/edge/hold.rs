//! A call's hold on credit, as a guard: it is settled to the actual cost, charged in full
//! (its usage could not be learned), or given back, exactly once, whatever path the call
//! takes. Settling consumes it; dropping it unsettled (an error upstream answered, an early
//! return, a cooldown) releases it. Nothing releases a reservation by hand. While its call
//! runs, the call renews it, so that only a hold whose isolate died ever lapses.
//!
//! Settles and releases go to the account object after the response is on its way, and those
//! that land together are coalesced: per account, one request of this isolate sends (in its
//! own `wait_until`), one batch on its way at a time, and whatever queued meanwhile goes in its
//! next round trip. Other requests only queue, or, with something due before that sender looks
//! again, send it themselves: none of them awaits I/O that belongs to another request, or
//! wakes a task of another's.

use crate::core::call_line::{CallLine, CallLog};
use crate::core::ledger::MicroUsd;
use crate::core::pricing::TokenUsage;
use crate::core::protocol::{AccountOp as Op, AccountReply, Leased};
use crate::core::request_log::Record;
use crate::core::sorted::SortedMap;
use crate::core::time::UnixMillis;
use crate::edge::{account_do, platform};
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
            crate::edge::leases::overran(&self.env, &self.ctx, &self.account);
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
    let Ok(text) = serde_json::to_string(&record) else { return };
    let first = LOG_LINES.with(|lines| {
        let mut lines = lines.borrow_mut();
        let first = lines.is_empty();
        if !first {
            lines.push('\n');
        }
        lines.push_str("{\"call\":");
        lines.push_str(&text);
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

/// Per account: the operations waiting to be sent and when they must go, which requests are
/// sending them, and whether a batch of theirs is on its way.
#[derive(Default)]
struct Queue {
    ops: Vec<Op>,
    /// What to do with the replies of the queued operations that ask for something (a
    /// lease): one each, in the order of those operations in `ops`.
    asks: Vec<OnReply>,
    /// When the queue must go: the earliest of its operations' deadlines.
    due: Option<UnixMillis>,
    /// How many requests' `wait_until`s are sending this queue: one, or more for a moment when
    /// an operation due before the waiting sender looks went with a sender of its own.
    senders: u32,
    /// When a waiting sender looks at the queue next (`None`: nobody is known to).
    looks_at: Option<UnixMillis>,
    /// The sender of the batch on its way looks at the queue again when it lands (it was not
    /// its last).
    flyer_stays: bool,
    /// A batch is on its way to the object (or being retried): the next one waits for it, so
    /// the object hears this isolate's operations in the order they were queued, a lease's
    /// return after the reports of its calls.
    in_flight: bool,
    /// When the queue's sender last took a batch, tried to send one, or saw it land. A
    /// sender whose request's `wait_until` was cut off stops at an await still counted in
    /// `senders`, or with `in_flight` set; one this quiet is taken for dead and replaced.
    progress_at: Option<UnixMillis>,
}

/// A live sender makes progress at least every try of a send (`SEND_TIMEOUT_MS`) and its
/// longest pause (3 s); one silent for this long was cut off.
const SENDER_DEAD_MS: u64 = 15_000;

/// Marks progress on `account`'s queue.
fn touch(account: &str) {
    QUEUES.with(|q| {
        if let Some(queue) = q.borrow_mut().get_mut(account) {
            queue.progress_at = Some(platform::now());
        }
    });
}

/// A call admitted on a lease is reported within this long, with whatever else the account
/// has queued by then (its own settle, if it came, which then stands for the report: one
/// operation instead of two). Sent at once, every call of a busy account would go in a round
/// trip of its own; waited for longer, an isolate that dies leaves more calls the ledger
/// never heard of. A quarter of a lease's default life: with 64 keys at c=16, 50 ms sent
/// 0.98 round trips per call and this 0.83 (`KEYS=64 node bench/ab.mjs`, in README).
const REPORT_WAIT_MS: u64 = 250;

/// The settle of a leased call already reported waits this long for company: its credit is
/// held by the lease meanwhile, and a lease that lapses first charges the call in full until
/// the settle comes, so waiting costs the ledger nothing. (A long call settles long after its
/// report, so in production this is the common case.)
const SETTLE_WAIT_MS: u64 = 250;

/// How long `op` may wait in the queue: a report, or a leased call's settle, is batched, and
/// a lease asked for ahead of need waits a little; everything else (a cold call's settle, a
/// lease returned at its end or after an overrun) goes at once. A replaced lease's return
/// waits too (`return_lease`).
fn wait_of(op: &Op) -> u64 {
    match op {
        Op::Admitted { .. } => REPORT_WAIT_MS,
        Op::Settle { leased: Some(_), .. } | Op::Release { leased: Some(_), .. } => SETTLE_WAIT_MS,
        Op::Acquire { .. } => ASK_WAIT_MS,
        _ => 0,
    }
}

thread_local! {
    static QUEUES: RefCell<SortedMap<String, Queue>> = RefCell::new(SortedMap::new());
    /// Leases some of whose calls' reports could not be delivered: they are never returned
    /// (a return would free the credit of calls the object never heard of) but left to
    /// lapse, which keeps their credit for the quarantine, and every later settle or release
    /// of a call of theirs stands for its report, so it is charged even after the object
    /// has forgotten the lease. The oldest go first past `MAX_UNREPORTED`.
    static UNREPORTED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

const MAX_UNREPORTED: usize = 1_024;

fn unreported(lease: u64) -> bool {
    UNREPORTED.with(|u| u.borrow().contains(&lease))
}

/// What is done with an asking operation's reply (`None` when the batch could not be
/// delivered, or a retry left the operation out), given the time its batch was sent, and the
/// context of the request whose `wait_until` sends it (the one that asked may be over) with
/// the time since which it has carried this isolate's background work.
pub type OnReply = Box<dyn FnOnce(Option<AccountReply>, UnixMillis, &Rc<Context>, UnixMillis)>;

/// A request's `wait_until` may run 30 s past its response. Background work (a sender, a
/// lease's end) that a context has carried for this long starts no more in it, and its
/// senders send one more batch at most: what a lease's answer would have sent waits for the
/// next request of the account, so that one context cannot carry a chain of senders and
/// leases until the runtime cuts a sender off mid-batch.
const CONTEXT_WORK_MS: u64 = 10_000;

/// Whether an operation's reply is wanted (`ask`): a lease asked for ahead of need.
fn asks(op: &Op) -> bool {
    matches!(op, Op::Acquire { .. })
}

/// A lease asked for ahead of need goes within this long, with whatever is queued (the
/// reports of the lease's own calls, usually): in a round trip of its own it would be one
/// more per renewal. Short, so that the lease asked for a quarter before the end of the one
/// held arrives before that one runs out.
const ASK_WAIT_MS: u64 = 50;

/// Queues `op`, which asks for something, for `account`'s object like `enqueue`, and hands
/// its reply to `on_reply` once its batch lands.
pub fn ask(env: &Env, ctx: &Context, account: &str, op: Op, on_reply: OnReply) {
    debug_assert!(asks(&op));
    QUEUES.with(|q| q.borrow_mut().entry(account.to_string()).or_default().asks.push(on_reply));
    enqueue(env, ctx, account, op);
}

/// A sender hands over after this many round trips, so no request's `wait_until` runs on
/// for ever under a steady stream of settles.
const MAX_ROUNDS: u32 = 8;

/// Queues `op` for `account`'s object, to go in this isolate's next round trip to it. A
/// settle or release of a call admitted on a lease stands for the call's report when that
/// is still queued (it names the lease): one operation instead of two, unless the lease's
/// return is queued between them, which must find the call reported.
pub fn enqueue(env: &Env, ctx: &Context, account: &str, op: Op) {
    let wait = wait_of(&op);
    queue(env, ctx, account, op, wait, platform::now(), false);
}

/// Why a lease goes back (`return_lease`).
pub enum Back {
    /// It ended, and nothing replaced it.
    Ended,
    /// A newer lease took its place (or it came after a fresher one), and it would have ended
    /// at `until`.
    Replaced { until: UnixMillis },
}

/// Returns a lease, from a context that has carried background work `since` then (see
/// `CONTEXT_WORK_MS`). A replaced one waits for company, until it would have ended (a report's
/// wait at least): sent at once, it would be a round trip of its own per renewal, and its
/// credit is held no longer than if it had not been replaced. (A key called every half
/// lease renews at each call; its return then rides the next call's report.) One that ended
/// goes at once, and starts a sender if need be however long its context has carried
/// background work: its timer was only set while that was allowed, and nothing else may come
/// to send it (the account went quiet, or no lease would have ended unreplaced).
pub fn return_lease(env: &Env, ctx: &Context, account: &str, lease: u64, back: Back, since: UnixMillis) {
    let (wait, force) = match back {
        Back::Ended => (0, true),
        Back::Replaced { until } => (until.millis_since(platform::now()).max(REPORT_WAIT_MS), false),
    };
    queue(env, ctx, account, Op::ReturnLease { lease }, wait, since, force);
}

/// Whether a context that has carried this isolate's background work since `since` may
/// start more of it (`CONTEXT_WORK_MS`).
pub fn may_carry(since: UnixMillis) -> bool {
    platform::now().millis_since(since) < CONTEXT_WORK_MS
}

fn queue(env: &Env, ctx: &Context, account: &str, mut op: Op, wait_ms: u64, since: UnixMillis, force: bool) {
    if let Op::ReturnLease { lease } = &op {
        if unreported(*lease) {
            return;
        }
    }
    let now = platform::now();
    let start = QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        let queue = q.entry(account.to_string()).or_default();
        // a settle that stands for its call's report keeps the report's deadline
        if let Op::Settle { reservation, leased: Some(l), .. } | Op::Release { reservation, leased: Some(l), .. } =
            &mut op
        {
            l.report = merge_report(&mut queue.ops, l.lease, *reservation) || unreported(l.lease);
        }
        let due = now.saturating_add_ms(wait_ms);
        queue.due = Some(queue.due.map_or(due, |d| d.min(due)));
        queue.ops.push(op);
        let stalled = queue.progress_at.is_some_and(|t| now.millis_since(t) >= SENDER_DEAD_MS);
        if stalled && (queue.senders > 0 || queue.in_flight) {
            worker::console_error!("the sender of account {account}'s settles was cut off; another takes over");
            queue.senders = 0;
            queue.in_flight = false;
        }
        // due before the waiting sender looks, or nobody is known to look (the last batch of
        // a sender that leaves is on its way): this request sends it, beside that sender
        let unseen = queue.looks_at.is_none_or(|t| due.saturating_add_ms(IN_FLIGHT_POLL_MS) < t);
        let sooner = !(queue.in_flight && queue.flyer_stays) && unseen;
        let start = (queue.senders == 0 || sooner) && (force || may_carry(since));
        if start {
            queue.senders += 1;
            queue.progress_at = Some(now);
            queue.looks_at = Some(due);
        }
        start
    });
    if start {
        // the same request's context, owned by its sender
        let own: &wasm_bindgen::JsValue = ctx.as_ref().as_ref();
        let sender = Rc::new(Context::new(wasm_bindgen::JsCast::unchecked_into(own.clone())));
        ctx.wait_until(drain(env.clone(), sender, since, account.to_string()));
    }
}

/// Drops the queued report of call `id` of `lease`, if no return of the lease follows it:
/// whether it did.
fn merge_report(ops: &mut Vec<Op>, lease: u64, id: u64) -> bool {
    let report = |op: &Op| match op {
        Op::Admitted { lease: l, calls, .. } => {
            *l == lease && calls.len() == 1 && calls.first().is_some_and(|c| c.0 == id)
        }
        _ => false,
    };
    let last = ops.iter().rposition(|op| report(op) || matches!(op, Op::ReturnLease { lease: l } if *l == lease));
    match last.filter(|i| ops.get(*i).is_some_and(report)) {
        Some(i) => {
            ops.remove(i);
            true
        }
        None => false,
    }
}

/// How long the sender waits before it looks at the queue again: zero when the queue is due
/// and no batch is on its way; `None` when there is no queue, or when this sender leaves it to
/// another. The queue notes when it will be looked at, so that an operation due sooner (a
/// cold call's settle, a lease's return, queued while the sender sleeps until a report's
/// deadline) starts a sender of its own (`queue`), instead of every waiting sender waking up
/// every few milliseconds to look.
fn wait_for_turn(account: &str) -> Option<u64> {
    QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        let queue = q.get_mut(account)?;
        if queue.in_flight && queue.flyer_stays && queue.senders > 1 {
            // the sender of the batch on its way looks again when it lands: one fewer is enough
            queue.senders -= 1;
            return None;
        }
        let wait = match (queue.in_flight, queue.due) {
            (true, _) => IN_FLIGHT_POLL_MS,
            (false, Some(due)) => due.millis_since(platform::now()),
            (false, None) => 0,
        };
        queue.looks_at = Some(platform::now().saturating_add_ms(wait));
        Some(wait)
    })
}

/// How often a sender looks whether the batch before it has arrived.
const IN_FLIGHT_POLL_MS: u64 = 5;

/// Takes what is queued for `account`, marking it on its way. With `last`, this sender stops
/// counting in the same step, so if it was the only one the next operation queued starts a
/// sender of its own (which waits for this batch): every queued operation always has a
/// sender. An empty queue with nothing on its way is dropped.
fn take(account: &str, last: bool) -> (Vec<Op>, Vec<OnReply>) {
    QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        let Some(queue) = q.get_mut(account) else { return (Vec::new(), Vec::new()) };
        let ops = std::mem::take(&mut queue.ops);
        let asked = std::mem::take(&mut queue.asks);
        queue.due = None;
        queue.progress_at = Some(platform::now());
        if ops.is_empty() {
            q.remove(account);
            return (ops, asked);
        }
        queue.in_flight = true;
        queue.flyer_stays = !last;
        if last {
            queue.senders = queue.senders.saturating_sub(1);
            queue.looks_at = None;
        }
        (ops, asked)
    })
}

/// The batch is on its way no longer. One that could not be delivered leaves its leases
/// unreturned (see `UNREPORTED`), the returns queued for them behind it included.
fn landed(account: &str, batch: &[Op], delivered: bool) {
    if !delivered {
        let leases: Vec<u64> = batch.iter().filter_map(reported_lease).collect();
        QUEUES.with(|q| {
            if let Some(queue) = q.borrow_mut().get_mut(account) {
                queue.ops.retain(|op| !matches!(op, Op::ReturnLease { lease } if leases.contains(lease)));
            }
        });
        UNREPORTED.with(|u| {
            let mut u = u.borrow_mut();
            for lease in leases {
                if !u.contains(&lease) {
                    u.push(lease);
                }
            }
            let over = u.len().saturating_sub(MAX_UNREPORTED);
            u.drain(..over);
        });
    }
    QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        if let Some(queue) = q.get_mut(account) {
            queue.in_flight = false;
            queue.progress_at = Some(platform::now());
            if queue.ops.is_empty() && queue.asks.is_empty() && queue.senders == 0 {
                q.remove(account);
            }
        }
    });
}

/// The lease whose call an operation reports, if it does.
fn reported_lease(op: &Op) -> Option<u64> {
    match op {
        Op::Admitted { lease, .. } => Some(*lease),
        Op::Settle { leased: Some(l), .. } | Op::Release { leased: Some(l), .. } if l.report => Some(l.lease),
        _ => None,
    }
}

async fn drain(env: Env, ctx: Rc<Context>, since: UnixMillis, account: String) {
    for round in 1..=MAX_ROUNDS {
        loop {
            match wait_for_turn(&account) {
                None => return,
                Some(0) => break,
                Some(ms) => platform::sleep_ms(ms).await,
            }
        }
        let last = round == MAX_ROUNDS || (round > 1 && !may_carry(since));
        let (mut ops, mut asked) = take(&account, last);
        if ops.is_empty() {
            return;
        }
        let delivered = send(&env, &ctx, since, &account, &mut ops, &mut asked).await;
        landed(&account, &ops, delivered.is_some());
        answer(&ops, delivered, asked, &ctx, since);
    }
}

/// Sends a batch, and again after growing pauses while the object cannot be reached: every
/// operation in it but a lease asked for is idempotent (a reservation settles or is released
/// once, a report or a return counts once), so a retry can only save a charge. A lease asked
/// for is asked once: a retry leaves it out (its answer is `None`), since the object may have
/// granted it to the try that timed out. If every try fails the holds expire and their cost
/// is lost to the ledger, which the log says. The replies, one per operation sent, and the
/// time their try was sent.
async fn send(
    env: &Env,
    ctx: &Rc<Context>,
    since: UnixMillis,
    account: &str,
    ops: &mut Vec<Op>,
    asked: &mut Vec<OnReply>,
) -> Option<(Vec<AccountReply>, UnixMillis)> {
    for (i, pause) in RETRY_PAUSES_MS.into_iter().enumerate() {
        if pause > 0 {
            platform::sleep_ms(pause).await;
        }
        if i > 0 && !asked.is_empty() {
            ops.retain(|op| !asks(op));
            let now = platform::now();
            asked.drain(..).for_each(|f| f(None, now, ctx, since));
        }
        if ops.is_empty() {
            // the batch held only asks, which a retry leaves out
            return Some((Vec::new(), platform::now()));
        }
        touch(account);
        let sent_at = platform::now();
        let single = ops.len() == 1;
        let op = if single { ops.remove(0) } else { Op::Batch(std::mem::take(ops)) };
        // a call that hangs is given up on and tried again: each operation counts once
        let answered =
            platform::within(SEND_TIMEOUT_MS, async { account_do::call(env, account, &op).await.ok() }).await;
        match op {
            Op::Batch(taken) if !single => *ops = taken,
            op => ops.push(op),
        }
        match answered {
            Some(AccountReply::Batch(replies)) if !single && replies.len() == ops.len() => {
                return Some((replies, sent_at))
            }
            Some(reply) if single => return Some((vec![reply], sent_at)),
            // not answered, or a batch answered otherwise: sent again (every operation in it
            // may be, but its asks, which the next try leaves out)
            _ => {}
        }
    }
    worker::console_error!("settles and reports for account {account} could not be delivered; their holds will lapse");
    None
}

/// Hands the asking operations' replies to whoever asked, in order.
fn answer(
    ops: &[Op],
    delivered: Option<(Vec<AccountReply>, UnixMillis)>,
    asked: Vec<OnReply>,
    ctx: &Rc<Context>,
    since: UnixMillis,
) {
    if asked.is_empty() {
        return;
    }
    let (replies, sent_at) = delivered.unwrap_or_else(|| (Vec::new(), platform::now()));
    let mut replies = ops.iter().zip(replies).filter(|(op, _)| asks(op)).map(|(_, reply)| reply);
    for on_reply in asked {
        on_reply(replies.next(), sent_at, ctx, since);
    }
}

/// The pauses before each try of a batch: about four seconds in all, and at most 24 s with
/// every try timing out, inside the 30 s a request's `wait_until` may run on. A sender cut off
/// all the same is replaced (`SENDER_DEAD_MS`).
const RETRY_PAUSES_MS: [u64; 4] = [0, 250, 1_000, 3_000];

/// How long one try of a batch waits for the object's answer.
const SEND_TIMEOUT_MS: u64 = 5_000;

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
