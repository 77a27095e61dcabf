//! This isolate's operations for each account's object: calls' settles and releases, the
//! reports of calls admitted on a lease, lease asks and returns. Those that land together are
//! coalesced: per account, one request of this isolate sends (in its own `wait_until`), one
//! batch on its way at a time, and whatever queued meanwhile goes in its next round trip.
//! Other requests only queue, or, with something due before that sender looks again, send it
//! themselves: none of them awaits I/O that belongs to another request, or wakes a task of
//! another's.

use crate::core::protocol::{AccountOp as Op, AccountReply};
use crate::core::sorted::SortedMap;
use crate::core::time::UnixMillis;
use crate::edge::{account_do, platform};
use std::cell::RefCell;
use std::rc::Rc;
use worker::{Context, Env};

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
