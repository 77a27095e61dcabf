//! Where a call is metered: upstream's answer is read to its end, whatever the caller does,
//! and the hold settled once on the usage upstream reports, or charged in full when that
//! usage cannot be learned.
//!
//! A whole answer is read before the caller sees it (it carries the usage). A stream is
//! pumped by the call's task, not pulled by the caller: the task reads upstream at
//! upstream's pace into a pipe the caller reads from. A caller that hangs up, or stops
//! reading for `STREAM_IDLE_MS`, is cut (it gets an error and nothing more), and the task
//! reads on to the final usage, within the platform's grace after the cut
//! (`METER_GRACE_MS`). Upstream silent past the idle limit (or, before its first byte, past
//! the call's deadline) has broken the stream: the caller is cut, and unless the final count
//! already came, the hold is charged in full.

use crate::core::call::CallPricing;
use crate::core::error::GatewayError;
use crate::core::headers::Edits;
use crate::core::paths::Api;
use crate::core::sse::SseMeter;
use crate::core::time::UnixMillis;
use crate::edge::body_io::{self, read_capped, Capped, Source};
use crate::edge::header_edits::{drop_then_edit, Direction};
use crate::edge::hold::Hold;
use crate::edge::platform::{self, Timer};
use crate::edge::response::Meta;
use futures_util::Stream;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};
use worker::Headers;

/// Responses larger than this are not buffered to read their usage; they are passed through
/// and charged their reservation.
const MAX_BUFFERED_RESPONSE: usize = 32 * 1024 * 1024;
/// Answers up to this size (declared) are read in one call; larger ones through a reader,
/// into their room.
const READ_WHOLE_RESPONSE: usize = 1024 * 1024;
/// The most a stream queues for a caller that reads slower than upstream writes; beyond it
/// the task waits for the caller (which, stalled, is cut after the idle limit).
const MAX_QUEUED: usize = 4 * 1024 * 1024;

/// How long a call's parts may take, all from the call's own settings.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Upstream silent this long after its first byte has broken the stream; a caller not
    /// reading this long is cut.
    pub idle_ms: u64,
    /// Upstream's first byte is awaited until then (a long prefill is not a stall).
    pub first_byte_by: UnixMillis,
    /// How long the task reads on after the caller is gone or cut.
    pub grace_ms: u64,
    /// A time-billed call's end: the time its reservation pays for.
    pub cut_at: Option<UnixMillis>,
    /// A running call renews its hold this often, for `ttl_ms` each time.
    pub renew_every_ms: u64,
    pub ttl_ms: u64,
}

/// An answer's body as the caller gets it.
pub enum Body {
    /// Read whole.
    Bytes(Vec<u8>),
    /// Read whole, in the runtime's memory.
    Held(js_sys::Uint8Array),
    /// Passed through as it comes (a refusal, or an answer too large to hold).
    Pass(Source),
    /// Pumped by the call's task.
    Pipe(CallerEnd),
}

impl Body {
    /// The caller's response to upstream's answer: its status, its headers minus those the
    /// gateway does not pass back, plus the gateway's (`meta`). The runtime copies upstream's
    /// headers into the response, which is then edited in place: one copy, one call.
    pub fn respond(
        self,
        status: u16,
        upstream: &web_sys::Headers,
        meta: &Meta,
    ) -> Result<web_sys::Response, GatewayError> {
        use crate::edge::response;
        let headers = Headers(upstream.clone());
        let built = match self {
            // the runtime builds none of these with a body (a job poll's 304, a 204)
            _ if response::bodiless(status) => response::held(status, None, &headers),
            Body::Bytes(bytes) => response::bytes(status, bytes, headers),
            Body::Held(bytes) => response::held(status, Some(&bytes), &headers),
            Body::Pass(Source::Unread(Some(raw))) => response::of_stream(status, &raw, &headers),
            Body::Pass(source) => response::of_stream(status, &body_io::to_runtime(source), &headers),
            Body::Pipe(end) => response::of_stream(status, &body_io::to_runtime(end), &headers),
        };
        let built = built.map_err(|_| GatewayError::UpstreamError("unreadable response".into()))?;
        let mut edits = Edits::default();
        meta.edits(&mut edits);
        drop_then_edit(&built.headers(), Direction::Downstream, &edits);
        Ok(built)
    }
}

/// Runs `fut`, which ends by `ends_by`, while renewing `hold` every
/// `limits.renew_every_ms`: a call waiting on upstream is running, and keeps its hold. No
/// timer is kept when `fut` ends before the first renewal is due (the usual case: a hold
/// lasts 15 minutes).
pub async fn renewing<F: Future>(hold: &Hold, limits: &Limits, ends_by: UnixMillis, fut: F) -> F::Output {
    let every = limits.renew_every_ms.max(1);
    if ends_by.millis_since(platform::now()) < every {
        return fut.await;
    }
    futures_util::pin_mut!(fut);
    let mut timer = Box::pin(Timer::after_ms(every));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        while timer.as_mut().poll(cx).is_ready() {
            hold.renew(limits.ttl_ms);
            timer = Box::pin(Timer::after_ms(every));
        }
        Poll::Pending
    })
    .await
}

/// Reads a whole (non-streamed) answer: in one call when its declared length is small, else
/// through a reader into its room, up to the most held for its usage.
pub async fn read_whole(resp: web_sys::Response) -> Result<Capped, worker::Error> {
    let declared = resp.headers().get("content-length").ok().flatten().and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n <= READ_WHOLE_RESPONSE) {
        return crate::edge::body_io::held(resp.array_buffer()).await.map(|(bytes, js)| Capped::Held(bytes, js));
    }
    let source = crate::edge::body_io::response_body(&resp);
    read_capped(source, MAX_BUFFERED_RESPONSE, 64 * 1024).await
}

/// Settles a whole answer as it was read (`None`: time ran out first): on its usage; in
/// full when it carries none, was too large to hold, broke, or never finished.
pub fn whole(
    read: Option<Result<Capped, worker::Error>>,
    hold: Hold,
    pricing: CallPricing,
    started: UnixMillis,
) -> Result<Body, GatewayError> {
    let elapsed = platform::now().millis_since(started);
    match read {
        Some(Ok(Capped::Whole(bytes))) => {
            settle_on(&bytes, hold, pricing, elapsed);
            Ok(Body::Bytes(bytes))
        }
        Some(Ok(Capped::Held(bytes, held))) => {
            settle_on(&bytes, hold, pricing, elapsed);
            Ok(Body::Held(held))
        }
        // too large to hold for its usage: passed through as it comes, charged in full
        Some(Ok(Capped::Over(head, rest))) => {
            let (bound, tokens) = pricing.bound(elapsed);
            hold.unmetered(bound, tokens);
            Ok(Body::Pass(Source::prefixed(head, rest)))
        }
        // it broke, or time ran out: upstream billed what it billed, which nobody said
        _ => {
            let (bound, tokens) = pricing.bound(elapsed);
            hold.unmetered(bound, tokens);
            Err(GatewayError::UpstreamError("upstream body could not be read".into()))
        }
    }
}

/// Settles a whole answer on the usage it reports, or in full when it reports none.
fn settle_on(bytes: &[u8], hold: Hold, pricing: CallPricing, elapsed: u64) {
    let usage = if pricing.reads_prompt_only() {
        crate::core::body::usage_of_embeddings(bytes)
    } else {
        crate::core::body::usage_of_body(bytes)
    };
    match usage {
        Some(usage) => {
            let (cost, tokens) = pricing.charge(Some(usage), 0, elapsed);
            hold.settle(cost, tokens);
        }
        None => {
            let (bound, tokens) = pricing.bound(elapsed);
            hold.unmetered(bound, tokens);
        }
    }
}

/// What a stream's two ends share: chunks for the caller, and how each end stands.
#[derive(Default)]
struct Pipe {
    queue: VecDeque<Vec<u8>>,
    queued: usize,
    /// Upstream is done: the caller gets what is queued, then the end.
    ended: bool,
    /// The caller was cut: it gets an error, then nothing.
    cut: bool,
    /// The caller's end is gone (it hung up, or nobody took the answer).
    gone: bool,
    /// Since when the caller has had something to read and not read it.
    unread_since: Option<UnixMillis>,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Pipe {
    fn cut(&mut self) {
        self.cut = true;
        self.queue.clear();
        self.queued = 0;
        self.unread_since = None;
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

/// The caller's end of a pumped stream.
pub struct CallerEnd {
    pipe: Rc<RefCell<Pipe>>,
    /// The cut was reported: the stream is over.
    over: bool,
}

impl Stream for CallerEnd {
    type Item = Result<Vec<u8>, worker::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.over {
            return Poll::Ready(None);
        }
        let pipe = self.pipe.clone();
        let mut p = pipe.borrow_mut();
        if p.cut {
            // an error, not an end: the caller must not take a cut stream for a whole one
            self.over = true;
            return Poll::Ready(Some(Err(worker::Error::RustError("the stream was cut".into()))));
        }
        if let Some(chunk) = p.queue.pop_front() {
            p.queued = p.queued.saturating_sub(chunk.len());
            p.unread_since = (!p.queue.is_empty()).then(platform::now);
            if let Some(w) = p.writer.take() {
                w.wake();
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        if p.ended {
            return Poll::Ready(None);
        }
        p.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Dropped (the caller hung up, or the garbage collector freed an answer nobody read): the
/// task sees it at its next chunk or tick. It wakes nobody: it may be dropped where no
/// request runs, and a task woken there would be polled there, where the runtime refuses
/// its timers.
impl Drop for CallerEnd {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pipe.try_borrow_mut() {
            p.gone = true;
            p.queue.clear();
            p.queued = 0;
            p.reader = None;
        }
    }
}

/// A streamed (or unbuffered) answer: the caller's end, and the pump that feeds it and
/// settles the hold when upstream is done (the call's task runs it to its end).
pub fn stream(
    source: Source,
    hold: Hold,
    pricing: CallPricing,
    sse: Option<(Api, bool)>,
    attempt_started: UnixMillis,
    limits: Limits,
) -> (Body, impl Future<Output = ()>) {
    let pipe = Rc::new(RefCell::new(Pipe::default()));
    let end = CallerEnd { pipe: pipe.clone(), over: false };
    let meter = sse.map(|(api, hide)| SseMeter::new(api, hide));
    (Body::Pipe(end), pump(source, pipe, meter, hold, pricing, attempt_started, limits))
}

/// How a pumped stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Upstream finished (cleanly, or its connection broke).
    Upstream,
    /// Upstream went silent past what the limits allow.
    Silent,
    /// The grace after the caller left ran out, or a time-billed call's time was spent.
    OutOfTime,
}

async fn pump(
    mut source: Source,
    pipe: Rc<RefCell<Pipe>>,
    mut meter: Option<SseMeter>,
    hold: Hold,
    pricing: CallPricing,
    started: UnixMillis,
    limits: Limits,
) {
    let mut first_byte: Option<UnixMillis> = None;
    let mut last_chunk = platform::now();
    // when the caller was cut or found gone: the grace runs from then
    let mut left_at: Option<UnixMillis> = None;
    let renew_every = limits.renew_every_ms.max(1);
    let mut next_renew = platform::now().saturating_add_ms(renew_every);
    let mut timer: Option<(UnixMillis, Pin<Box<Timer>>)> = None;
    let end = loop {
        let now = platform::now();
        {
            let mut p = pipe.borrow_mut();
            if (p.gone || p.cut) && left_at.is_none() {
                left_at = Some(now);
            }
            // a caller with something to read that has not read it for the idle limit is cut
            if let (Some(since), false, false) = (p.unread_since, p.cut, p.gone) {
                if now.millis_since(since) >= limits.idle_ms {
                    p.cut();
                    left_at = Some(now);
                }
            }
        }
        if now >= next_renew {
            hold.renew(limits.ttl_ms);
            next_renew = now.saturating_add_ms(renew_every);
        }
        // the earliest moment something must be looked at again
        let silent_at = match first_byte {
            None => limits.first_byte_by,
            Some(_) => last_chunk.saturating_add_ms(limits.idle_ms),
        };
        let mut due = silent_at.min(next_renew);
        if let Some(at) = left_at {
            due = due.min(at.saturating_add_ms(limits.grace_ms));
        }
        if let Some(at) = limits.cut_at {
            due = due.min(at);
        }
        if let Some(since) = pipe.borrow().unread_since {
            due = due.min(since.saturating_add_ms(limits.idle_ms));
        }
        if now >= silent_at {
            break End::Silent;
        }
        if left_at.is_some_and(|at| now >= at.saturating_add_ms(limits.grace_ms))
            || limits.cut_at.is_some_and(|at| now >= at)
        {
            break End::OutOfTime;
        }
        if timer.as_ref().is_none_or(|(at, _)| *at > due) {
            // no later than one idle limit from now: the first chunk moves the due time to
            // that, and a timer set for it already needs no second one (most streams end
            // within it); one set for later would be cleared and set again
            let at = due.min(now.saturating_add_ms(limits.idle_ms));
            timer = Some((at, Box::pin(Timer::after_ms(at.millis_since(now).max(1)))));
        }
        let next = std::future::poll_fn(|cx| {
            {
                let mut p = pipe.borrow_mut();
                if p.queued >= MAX_QUEUED && !p.cut && !p.gone {
                    // the caller is behind: wait for it to read (or for the stall timer)
                    p.writer = Some(cx.waker().clone());
                } else if let Poll::Ready(item) = Pin::new(&mut source).poll_next(cx) {
                    return Poll::Ready(Some(item));
                }
            }
            if let Some((_, t)) = timer.as_mut() {
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
            }
            Poll::Pending
        })
        .await;
        match next {
            // a tick: look again
            None => {
                timer = None;
            }
            Some(Some(Ok(chunk))) => {
                let now = platform::now();
                first_byte.get_or_insert(now);
                last_chunk = now;
                let out = match meter.as_mut() {
                    Some(m) => m.feed(&chunk),
                    None => chunk,
                };
                let mut p = pipe.borrow_mut();
                if !out.is_empty() && !p.cut && !p.gone {
                    p.queued += out.len();
                    p.queue.push_back(out);
                    p.unread_since.get_or_insert(now);
                    if let Some(w) = p.reader.take() {
                        w.wake();
                    }
                }
            }
            // upstream finished, or its connection broke: either way, flush and settle
            Some(_) => break End::Upstream,
        }
    };
    let rest = meter.as_mut().map(SseMeter::finish).unwrap_or_default();
    {
        let mut p = pipe.borrow_mut();
        match end {
            End::Upstream if !p.cut && !p.gone => {
                if !rest.is_empty() {
                    p.queued += rest.len();
                    p.queue.push_back(rest);
                }
                p.ended = true;
                if let Some(w) = p.reader.take() {
                    w.wake();
                }
            }
            End::Upstream => {}
            // silent, or out of time: whatever the caller has not read is not a whole answer
            End::Silent | End::OutOfTime => {
                if !p.gone {
                    p.cut();
                }
            }
        }
    }
    drop(source);
    settle(hold, pricing, meter.as_ref(), started, limits, platform::now());
}

/// Settles a pumped call: on upstream's final usage count when it came; for a token-priced
/// call without one, the reservation in full; a time-billed call for its time, no longer
/// than its reservation pays for; a priced-per-call one at its price.
fn settle(
    hold: Hold,
    pricing: CallPricing,
    meter: Option<&SseMeter>,
    started: UnixMillis,
    limits: Limits,
    now: UnixMillis,
) {
    let ended = limits.cut_at.map_or(now, |cut| cut.min(now));
    let elapsed = ended.millis_since(started);
    match meter.and_then(|m| m.final_usage) {
        Some(usage) => {
            let (cost, tokens) = pricing.charge(Some(usage), 0, elapsed);
            hold.settle(cost, tokens);
        }
        None if pricing.is_tokens() => {
            let (bound, tokens) = pricing.bound(elapsed);
            hold.unmetered(bound, tokens);
        }
        None => {
            let (cost, tokens) = pricing.charge(None, 0, elapsed);
            hold.settle(cost, tokens);
        }
    }
}

/// A response passed through as it comes (a job poll, or upstream refused the call).
pub fn pass_through(resp: &web_sys::Response, meta: &Meta) -> Result<web_sys::Response, GatewayError> {
    let body = crate::edge::body_io::response_body(resp);
    Body::Pass(body).respond(resp.status(), &resp.headers(), meta)
}
