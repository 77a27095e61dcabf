//! The part of a call that runs whether or not its caller stays: forward it upstream, meter
//! what upstream bills, settle the hold.
//!
//! A caller can hang up, stop reading or stall at any moment, but upstream bills for what it
//! was asked to do (SPEC section 3: the upstream's invoice never exceeds the ledger). So once
//! a call is admitted, its exchange with upstream runs as a task of its own, in the request's
//! `wait_until`: it sends (and retries), reads the whole answer (a stream through a pipe the
//! caller reads from, at its own pace), learns the usage upstream reports, and settles. The
//! request handler only waits for the answer's head, up to the call's deadline, and hands
//! the caller whatever the task passes on. When the caller is gone, the task reads on within
//! the platform's grace (`METER_GRACE_MS`) and passes nothing on; when the usage cannot be
//! learned, the hold is charged in full as unmetered. A hold is released only when upstream
//! answered non-2xx or never had the request.

use crate::core::call::CallPricing;
use crate::core::error::GatewayError;
use crate::core::headers;
use crate::core::jobs;
use crate::core::paths::{Api, ProxyRoute};
use crate::core::price_book::Quote;
use crate::core::settings::Settings;
use crate::core::spend::JobRow;
use crate::core::time::UnixMillis;
use crate::edge::body_io::{self, Permit};
use crate::edge::hold::Hold;
use crate::edge::meter::{self, Body, Limits};
use crate::edge::platform::Timer;
use crate::edge::upstream::{self, InFlight, NoAnswer, Outbound, Target};
use crate::edge::{account_do, platform};
use js_sys::Uint8Array;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};
use worker::{Context, Env, Headers, Method};

/// Everything an admitted call needs to be forwarded and settled, owned, so the task can
/// outlive the request that started it.
pub struct Forward {
    pub env: Env,
    pub ctx: Rc<Context>,
    pub settings: Rc<Settings>,
    pub target: Target,
    pub route: ProxyRoute,
    pub query: Option<String>,
    pub method: Method,
    pub headers: Headers,
    pub body: Option<Uint8Array>,
    /// The request body's room in the isolate's budget, given back once it is sent.
    pub permit: Permit,
    pub cooldown_key: String,
    pub hold: Hold,
    pub pricing: CallPricing,
    /// For a call the router placed: the quote that prices the provider that served it, and
    /// the model the call is counted under.
    pub router_choice: Option<(Quote, String)>,
    /// For a token-priced call, the API it speaks, and whether the gateway (not the caller)
    /// asked for the streamed usage, which is then not passed on.
    pub tokens: Option<(Api, bool)>,
    /// A queued job's submit: its owner is recorded before the caller learns its id.
    pub job: Option<JobSubmit>,
    pub started: UnixMillis,
    /// A time-billed call's end: the time its reservation pays for.
    pub cut_at: Option<UnixMillis>,
    /// When the caller stops waiting for the answer's head: the call's deadline (or a
    /// time-billed call's end, if sooner).
    pub answer_by: UnixMillis,
}

/// Who submitted a queued job, to record it as the job's owner.
pub struct JobSubmit {
    pub account: String,
    pub key_id: String,
    pub path: String,
}

/// Upstream's answer as the caller gets it: its status, its headers (before the gateway's
/// own are applied) and its body.
pub struct Answer {
    pub status: u16,
    pub headers: web_sys::Headers,
    pub body: Body,
    pub upstream_request_id: Option<String>,
}

/// Starts the call's task and waits for its answer: by the call's `answer_by` the task
/// answers, with upstream's answer or 504 `upstream_timeout`, and goes on learning what
/// upstream bills after the caller was answered.
pub async fn run(call: Forward) -> Result<Answer, GatewayError> {
    let (tx, rx) = handoff();
    let ctx = call.ctx.clone();
    ctx.wait_until(call.task(tx));
    rx.await.unwrap_or(Err(GatewayError::Internal("the call ended without an answer")))
}

/// The caller's side of a call's task: its answer, given once, and the call's two
/// deadlines on one timer: at `answer_by` the caller is answered 504 if nothing has been
/// (the task reads on), at `give_up_at` the call is given up.
struct Answering {
    tx: Option<Sender<Result<Answer, GatewayError>>>,
    timer: Pin<Box<Timer>>,
    give_up_at: UnixMillis,
    /// The timer is set for `give_up_at`.
    late: bool,
}

impl Answering {
    fn new(tx: Sender<Result<Answer, GatewayError>>, answer_by: UnixMillis, give_up_at: UnixMillis) -> Answering {
        let now = platform::now();
        Answering {
            tx: Some(tx),
            timer: Box::pin(Timer::after_ms(answer_by.millis_since(now))),
            give_up_at,
            late: false,
        }
    }

    /// Gives the caller its answer, if nobody did.
    fn answer(&mut self, answer: Result<Answer, GatewayError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(answer);
        }
    }

    /// Ready when the call must be given up; answers the caller 504 on the way.
    fn poll_given_up(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.late {
                return Poll::Ready(());
            }
            self.late = true;
            self.answer(Err(GatewayError::UpstreamTimeout));
            self.timer = Box::pin(Timer::after_ms(self.give_up_at.millis_since(platform::now())));
        }
    }

    /// `fut`'s output, or `None` when the call was given up first.
    async fn race<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        futures_util::pin_mut!(fut);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            self.poll_given_up(cx).map(|_| None)
        })
        .await
    }
}

impl Forward {
    /// The call, from sending to settling. Its answer goes to `tx`, which may find nobody
    /// waiting (the caller hung up, or its deadline passed): the call goes on all the same.
    async fn task(self, tx: Sender<Result<Answer, GatewayError>>) {
        let Forward {
            env,
            ctx,
            settings: s,
            target,
            route,
            query,
            method,
            headers: out_headers,
            body,
            permit,
            cooldown_key,
            mut hold,
            mut pricing,
            router_choice,
            tokens,
            job,
            started,
            cut_at,
            answer_by,
        } = self;
        // an attempt in flight at the deadline is read on for the grace, to learn its usage;
        // a time-billed call ends when its time is spent
        let give_up_at = cut_at.unwrap_or_else(|| answer_by.saturating_add_ms(s.meter_grace_ms));
        let mut answering = Answering::new(tx, answer_by, give_up_at);
        let outbound = Outbound {
            target: &target,
            route: &route,
            query: query.as_deref(),
            method: &method,
            headers: &out_headers,
            body: body.as_ref(),
        };
        let limits = Forward::limits_of(&s, cut_at, answer_by);
        let in_flight = InFlight::default();
        let send = upstream::send_with_retries(&env, &ctx, &s, &outbound, started, &cooldown_key, &in_flight);
        // a long wait for upstream's answer is a running call: its hold is kept
        let sent = answering.race(meter::renewing(&hold, &limits, give_up_at, send)).await;
        drop(body);
        drop(permit);
        let failed = match sent {
            Some(Ok(sent)) => Ok(sent),
            Some(Err(failed)) => Err(failed),
            // given up with an attempt in flight: it went out, unless upstream is not there at all
            None => {
                let reached = in_flight.give_up() && upstream::may_have_had_it(&target).await;
                Err(NoAnswer { error: GatewayError::UpstreamTimeout, reached })
            }
        };
        let sent = match failed {
            Ok(sent) => sent,
            Err(failed) => {
                hold.outcome(failed.error.status(), Some(failed.error.code()));
                if failed.reached {
                    // upstream may have it, and bill it: charged in full, never given back
                    let (bound, tokens) = pricing.bound(platform::now().millis_since(started));
                    hold.unmetered(bound, tokens);
                } else {
                    // dropping the hold releases it: upstream answered, or never had it
                    drop(hold);
                }
                answering.answer(Err(failed.error));
                return;
            }
        };
        let (resp, attempt_started) = (sent.resp, sent.attempt_started);
        hold.timing(platform::now().millis_since(started), sent.retries, sent.waited_ms);
        let status = resp.status();
        let upstream_request_id =
            resp.headers().get("x-request-id").ok().flatten().filter(|v| headers::safe_value(v, 128));
        if let Some(id) = &upstream_request_id {
            hold.upstream_id(id);
        }
        if status >= 500 {
            let e = GatewayError::UpstreamError(format!("upstream answered {status}"));
            hold.outcome(e.status(), Some(e.code()));
            drop(hold);
            answering.answer(Err(e));
            return;
        }
        if answering.late {
            // the caller was answered 504 already; the call is still metered, as it ran
            hold.outcome(504, Some(GatewayError::UpstreamTimeout.code()));
        } else {
            hold.outcome(status, None);
        }
        let up_headers = resp.headers();
        if !(200..300).contains(&status) {
            // upstream refused the call (bad model, bad input): nothing was served, nothing is
            // owed; the hold is released as it goes, and the answer passed on as it comes
            drop(hold);
            let source = body_io::response_body(&resp);
            answering.answer(Ok(Answer { status, headers: up_headers, body: Body::Pass(source), upstream_request_id }));
            return;
        }
        if let Some((quote, model)) = &router_choice {
            // the router chose: the call settles at the price of the provider that served it
            let served = up_headers.get("x-inference-provider").ok().flatten().filter(|p| provider_name(p));
            pricing = pricing.at_price(quote.settle(served.as_deref()));
            hold.label(model, served.as_deref().unwrap_or(AUTO));
        }
        if let Some(job) = job {
            let answer = submitted(&env, resp, hold, pricing, job, &mut answering).await;
            let answer = answer.map(|body| Answer { status, headers: up_headers, body, upstream_request_id });
            answering.answer(answer);
            return;
        }
        let is_sse = up_headers.get("content-type").ok().flatten().is_some_and(|c| c.contains("text/event-stream"));
        if pricing.is_tokens() && !is_sse {
            // a whole answer: read it all (whoever is still waiting), settle on its usage
            let read = answering.race(meter::renewing(&hold, &limits, give_up_at, meter::read_whole(resp))).await;
            let body = meter::whole(read, hold, pricing, started);
            answering.answer(body.map(|body| Answer { status, headers: up_headers, body, upstream_request_id }));
            return;
        }
        let source = body_io::response_body(&resp);
        let sse = tokens.filter(|_| is_sse);
        let (body, pump) = meter::stream(source, hold, pricing, sse, attempt_started, limits);
        answering.answer(Ok(Answer { status, headers: up_headers, body, upstream_request_id }));
        drop(answering);
        pump.await;
    }

    fn limits_of(s: &Settings, cut_at: Option<UnixMillis>, answer_by: UnixMillis) -> Limits {
        Limits {
            idle_ms: s.stream_idle_ms,
            first_byte_by: answer_by,
            grace_ms: s.meter_grace_ms,
            cut_at,
            renew_every_ms: (s.reservation_ttl_ms / 3).max(1),
            ttl_ms: s.reservation_ttl_ms,
        }
    }
}

/// The provider label of a call the router placed and did not say where.
pub const AUTO: &str = "auto";

/// Whether an `x-inference-provider` value is a plain provider name (it ends up in the
/// ledger's spend lines and the admin views).
fn provider_name(v: &str) -> bool {
    (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The most a submit's answer (a ticket) is read to find the job's id.
const MAX_SUBMIT_ANSWER: usize = 1024 * 1024;

/// A queued job's submit, answered 2xx: the job exists upstream and is owed whatever
/// happens next. Its owner is recorded before the caller learns its id (so its first poll
/// finds it), and the call is settled at its one price.
async fn submitted(
    env: &Env,
    resp: web_sys::Response,
    hold: Hold,
    pricing: CallPricing,
    job: JobSubmit,
    answering: &mut Answering,
) -> Result<Body, GatewayError> {
    let (cost, tokens) = pricing.charge(None, 0, 0);
    hold.settle(cost, tokens);
    let source = body_io::response_body(&resp);
    let read = body_io::read_capped(source, MAX_SUBMIT_ANSWER, 4 * 1024);
    let bytes = match answering.race(read).await {
        Some(Ok(body_io::Capped::Whole(bytes))) => bytes,
        // no ticket this large: passed on as it comes, nothing to own
        Some(Ok(body_io::Capped::Over(head, rest))) => return Ok(Body::Pass(body_io::Source::prefixed(head, rest))),
        _ => return Err(GatewayError::UpstreamError("upstream body could not be read".into())),
    };
    match jobs::submitted_job(&job.path, &bytes) {
        Some(submitted) => {
            let row = JobRow { key_id: job.key_id, poll_base: submitted.poll_base, at: platform::now() };
            if account_do::own_job(env, &job.account, submitted.id, row).await.is_err() {
                platform::fault(
                    "a job was submitted but its owner could not be recorded; its polls will be refused",
                    "",
                );
            }
        }
        None => worker::console_log!("a job submit was answered with no job id the gateway could read"),
    }
    Ok(Body::Bytes(bytes))
}

/// One value handed from the call's task to the request waiting for it.
struct Slot<T> {
    value: Option<T>,
    waiting: Option<Waker>,
    /// The sender is gone without sending (the task failed to start or was dropped).
    closed: bool,
    /// The receiver is gone (the caller hung up, or stopped waiting).
    abandoned: bool,
}

pub struct Sender<T>(Rc<RefCell<Slot<T>>>);
pub struct Receiver<T>(Rc<RefCell<Slot<T>>>);

fn handoff<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Rc::new(RefCell::new(Slot { value: None, waiting: None, closed: false, abandoned: false }));
    (Sender(slot.clone()), Receiver(slot))
}

impl<T> Sender<T> {
    /// Hands `value` over; gives it back when nobody waits for it any more.
    fn send(self, value: T) -> Result<(), T> {
        let waker = {
            let mut slot = self.0.borrow_mut();
            if slot.abandoned {
                return Err(value);
            }
            slot.value = Some(value);
            slot.waiting.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = self.0.borrow_mut();
            slot.closed = true;
            slot.waiting.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Future for Receiver<T> {
    /// `None` when the task ended without an answer.
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<T>> {
        let mut slot = self.0.borrow_mut();
        if let Some(v) = slot.value.take() {
            return Poll::Ready(Some(v));
        }
        if slot.closed {
            return Poll::Ready(None);
        }
        slot.waiting = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let value = {
            let mut slot = self.0.borrow_mut();
            slot.abandoned = true;
            slot.waiting = None;
            slot.value.take()
        };
        // an answer nobody will read (a stream's caller end among it) is dropped here
        drop(value);
    }
}
