//! Where a call is metered: a whole response is read for its `usage`; a stream is metered as
//! it passes and settled when it ends, is cut, or stalls. Either way the hold is settled once,
//! to what upstream reported, or, when it reported nothing, to what was delivered within the
//! bound.

use crate::core::body;
use crate::core::call::CallPricing;
use crate::core::error::GatewayError;
use crate::core::pricing::TokenUsage;
use crate::core::sse::SseMeter;
use crate::core::time::UnixMillis;
use crate::edge::body_io::{read_capped, response_body, whole, Capped, Source};
use crate::edge::hold::Hold;
use crate::edge::platform;
use futures_util::future::{self, Either};
use futures_util::Stream;
use futures_util::StreamExt;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};
use worker::{Context, Headers, Response};

/// Responses larger than this are not buffered to read their usage; they are passed through
/// and charged their bound.
const MAX_BUFFERED_RESPONSE: usize = 32 * 1024 * 1024;
/// Responses up to this size are read in one call (the runtime's copy and the wasm copy are
/// then held at once, briefly); larger ones through a reader, into their room.
const READ_WHOLE_RESPONSE: usize = 1024 * 1024;

fn unreadable<E>(_: E) -> GatewayError {
    GatewayError::UpstreamError("unreadable response".into())
}

/// A response passed through as it comes (upstream refused the call; nothing is owed).
pub async fn pass_through(mut resp: Response, status: u16, headers: Headers) -> Result<Response, GatewayError> {
    let body = response_body(&mut resp).await;
    Response::from_stream(body).map(|r| r.with_status(status).with_headers(headers)).map_err(unreadable)
}

/// A whole (non-streamed) response: read for its usage, settled, passed on.
pub async fn whole_body(
    mut resp: Response,
    status: u16,
    headers: Headers,
    hold: Hold,
    pricing: CallPricing,
) -> Result<Response, GatewayError> {
    let declared = resp.headers().get("content-length").ok().flatten().and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n <= READ_WHOLE_RESPONSE) {
        // a small declared length: read whole, in one call, not through a reader
        let whole_response: web_sys::Response = resp.into();
        let Ok(bytes) = whole(whole_response.array_buffer()).await else {
            return Err(GatewayError::UpstreamError("upstream body could not be read".into()));
        };
        let (cost, tokens) = pricing.charge(body::usage_of_body(&bytes), bytes.len() as u64, 0);
        hold.settle(cost, tokens);
        return crate::edge::response::bytes(status, bytes, headers).map_err(unreadable);
    }
    let source = response_body(&mut resp).await;
    let (bytes, rest) = match read_capped(source, MAX_BUFFERED_RESPONSE, 64 * 1024).await {
        Ok(Capped::Whole(bytes)) => (bytes, None),
        Ok(Capped::Over(head, rest)) => (head, Some(rest)),
        // dropping the hold releases it: nothing was delivered
        Err(_) => return Err(GatewayError::UpstreamError("upstream body could not be read".into())),
    };
    let Some(rest) = rest else {
        let (cost, tokens) = pricing.charge(body::usage_of_body(&bytes), bytes.len() as u64, 0);
        hold.settle(cost, tokens);
        return crate::edge::response::bytes(status, bytes, headers).map_err(unreadable);
    };
    // too large to hold for its usage: passed through as it comes, charged its bound
    let (cost, tokens) = pricing.charge(None, u64::MAX, 0);
    hold.settle(cost, tokens);
    let stream = futures_util::stream::iter([Ok(bytes)]).chain(rest);
    Response::from_stream(stream).map(|r| r.with_status(status).with_headers(headers)).map_err(unreadable)
}

/// What a metered stream has delivered so far, shared with its settle task.
#[derive(Debug, Default)]
struct Progress {
    usage: Option<TokenUsage>,
    delivered_events: u64,
    /// When the first byte came; until then the stream waits on a prefill, not idle.
    first_byte: Option<UnixMillis>,
    last_activity: UnixMillis,
    ended_at: Option<UnixMillis>,
    /// The settle task, to wake when the stream finishes.
    settler: Option<Waker>,
}

/// How long a stream may be silent before it is over: until its first byte, the rest of
/// the call's deadline (a long prefill is not a stall); after it, the idle limit.
#[derive(Clone, Copy, Debug)]
pub struct Silence {
    pub idle_ms: u64,
    pub first_byte_by: UnixMillis,
}

impl Silence {
    fn allowed_ms(&self, p: &Progress, now: UnixMillis) -> u64 {
        match p.first_byte {
            None => self.first_byte_by.millis_since(now),
            Some(_) => self.idle_ms.saturating_sub(now.millis_since(p.last_activity)),
        }
    }
}

/// A streamed (or unbuffered) response: passed through as it comes and metered; its settle
/// task settles the hold when the stream ends, is cut, or goes silent.
#[allow(clippy::too_many_arguments)]
pub async fn stream(
    mut resp: Response,
    status: u16,
    headers: Headers,
    ctx: &Rc<Context>,
    hold: Hold,
    pricing: CallPricing,
    sse: Option<SseMeter>,
    started: UnixMillis,
    silence: Silence,
) -> Result<Response, GatewayError> {
    let inner = response_body(&mut resp).await;
    let progress = Rc::new(RefCell::new(Progress { last_activity: platform::now(), ..Progress::default() }));
    let watched = progress.clone();
    // The settle task watches the stream rather than waiting for it to say it ended: a
    // caller that hangs up may leave the stream neither finished nor dropped, and its cost
    // must still be settled (for what was delivered) within the runtime's wait_until grace.
    let settle = async move {
        loop {
            let (ended, left) = {
                let p = watched.borrow();
                (p.ended_at.is_some(), silence.allowed_ms(&p, platform::now()))
            };
            if ended || left == 0 {
                break;
            }
            // woken at once when the stream finishes, or after a while to look for silence
            // (or for a stream that was dropped)
            let tick = platform::sleep_ms(left.clamp(50, 1_000));
            let finished = future::poll_fn(|cx| {
                let mut p = watched.borrow_mut();
                if p.ended_at.is_some() {
                    return Poll::Ready(());
                }
                p.settler = Some(cx.waker().clone());
                Poll::Pending
            });
            futures_util::pin_mut!(tick);
            futures_util::pin_mut!(finished);
            if let Either::Left(_) = future::select(finished, tick).await {
                break;
            }
        }
        let (cost, tokens) = {
            let p = watched.borrow();
            let ended_at = p.ended_at.unwrap_or(p.last_activity);
            pricing.charge(p.usage, p.delivered_events, ended_at.millis_since(started))
        };
        watched.borrow_mut().settler = None;
        hold.settle(cost, tokens);
    };
    ctx.wait_until(settle);
    let metered = Metered { inner, meter: sse, progress, silence, timer: None, finished: false };
    Response::from_stream(metered).map(|r| r.with_status(status).with_headers(headers)).map_err(unreadable)
}

/// Passes an upstream body through, metering it as it goes. Ends (as a cut) when upstream
/// finishes, fails, or stays silent past what `Silence` allows.
struct Metered {
    inner: Source,
    meter: Option<SseMeter>,
    progress: Rc<RefCell<Progress>>,
    silence: Silence,
    timer: Option<Pin<Box<platform::Timer>>>,
    finished: bool,
}

impl Metered {
    fn record(&mut self) {
        let now = platform::now();
        let mut p = self.progress.borrow_mut();
        if let Some(m) = &self.meter {
            p.usage = m.final_usage;
            p.delivered_events = m.delivered_bytes;
        }
        p.last_activity = now;
    }

    fn end(&mut self) {
        self.record();
        self.progress.borrow_mut().ended_at.get_or_insert_with(platform::now);
    }

    /// The stream's end as its reader sees it, in the pull of the request that reads it: the
    /// settle task is woken at once.
    fn finish(&mut self) -> Poll<Option<Result<Vec<u8>, worker::Error>>> {
        self.finished = true;
        let rest = self.meter.as_mut().map(SseMeter::finish).unwrap_or_default();
        self.end();
        let settler = self.progress.borrow_mut().settler.take();
        if let Some(settler) = settler {
            settler.wake();
        }
        Poll::Ready((!rest.is_empty()).then_some(Ok(rest)))
    }
}

impl Stream for Metered {
    type Item = Result<Vec<u8>, worker::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Pending => {
                    if self.timer.is_none() {
                        let left = self.silence.allowed_ms(&self.progress.borrow(), platform::now());
                        self.timer = Some(Box::pin(platform::Timer::after_ms(left)));
                    }
                    if let Some(timer) = self.timer.as_mut() {
                        if timer.as_mut().poll(cx).is_ready() {
                            // upstream went silent: cut it here, charged for what came
                            return self.finish();
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    self.timer = None;
                    self.progress.borrow_mut().first_byte.get_or_insert_with(platform::now);
                    let out = match self.meter.as_mut() {
                        Some(m) => m.feed(&chunk),
                        None => chunk,
                    };
                    self.record();
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                // clean end, or upstream broke mid-stream: either way, flush and report
                Poll::Ready(_) => return self.finish(),
            }
        }
    }
}

/// A stream dropped unfinished (a caller that hung up, or the garbage collector freeing a
/// response nobody reads any more) is marked over, but wakes no one: it may be dropped where
/// no request runs, and a settle task woken there would be polled there, where the runtime
/// refuses its timer and its `wait_until`, and such a refusal re-instantiates the wasm
/// instance, hanging every call in flight. The settle task sees the end at its next tick,
/// in its own request.
impl Drop for Metered {
    fn drop(&mut self) {
        self.end();
    }
}
