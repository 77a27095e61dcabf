//! Where a request goes upstream: reserve, send (retrying short 429s), meter, settle.
//!
//! The order is the budget's guarantee: one Durable Object round trip admits the call and
//! reserves its worst case before anything is sent; the reservation is settled to the actual
//! cost after the response is on its way (`wait_until`), or released in full on any failure.

use crate::core::account::{Admission, AdmitRequest, Denial};
use crate::core::body::{self, CallShape};
use crate::core::cors;
use crate::core::error::GatewayError;
use crate::core::headers;
use crate::core::ledger::MicroUsd;
use crate::core::paths::{cooldown_route, Metering, ProxyRoute};
use crate::core::pricing::{Price, TokenUsage};
use crate::core::retry::{self, RetryBudget, RetryDecision};
use crate::core::settings::{Settings, Upstream};
use crate::core::sse::SseMeter;
use crate::core::time::UnixMillis;
use crate::edge::account_do::{self, Op};
use crate::edge::auth::{self, Caller};
use crate::edge::platform::{self, OsRng};
use crate::edge::response::Meta;
use crate::edge::{cooldown_do, kv, sandbox, sealing};
use futures_channel::oneshot;
use futures_util::future::{self, Either};
use futures_util::{Stream, StreamExt};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use wasm_bindgen::JsValue;
use worker::{AbortController, ByteStream, Context, Env, Fetch, Headers, Method, Request, RequestInit, Response};

/// Responses larger than this are not buffered to read their usage; they are passed through
/// and charged by estimate.
const MAX_BUFFERED_RESPONSE: usize = 32 * 1024 * 1024;

thread_local! {
    static RETRY_BUDGET: RefCell<RetryBudget> = RefCell::new(RetryBudget::default());
}

/// How a call's actual cost is worked out once it is over.
#[derive(Clone, Copy, Debug)]
enum Pricing {
    Tokens { price: Price, prompt_estimate: u64, output_bound: u64 },
    Time,
    Free,
}

/// A reservation (or, for provider-billed keys, a usage record) that must be settled or
/// released. Both are sent after the response, through `wait_until`.
struct Hold {
    env: Env,
    account: String,
    key_id: String,
    reservation: Option<u64>,
    provider_billed: bool,
}

impl Hold {
    fn settle_op(&self, actual: MicroUsd) -> Option<Op> {
        match (self.reservation, self.provider_billed) {
            (Some(reservation), _) => Some(Op::Settle { reservation, actual }),
            (None, true) if actual > MicroUsd::ZERO => {
                Some(Op::RecordProviderBilled { key_id: self.key_id.clone(), actual })
            }
            _ => None,
        }
    }

    /// Settles after the response is on its way.
    fn settle(self, ctx: &Context, actual: MicroUsd) {
        ctx.wait_until(self.settle_now(actual));
    }

    /// Settles inside an already-registered `wait_until`. A failure leaves the reservation to
    /// expire: the account is never charged twice, at worst a hold lingers for its TTL.
    async fn settle_now(self, actual: MicroUsd) {
        let Some(op) = self.settle_op(actual) else {
            return;
        };
        if account_do::call::<serde_json::Value>(&self.env, &self.account, &op).await.is_err() {
            worker::console_error!("settle failed for account {}; the reservation will expire", self.account);
        }
    }

    fn release(self, ctx: &Context) {
        let Some(reservation) = self.reservation else {
            return;
        };
        ctx.wait_until(async move {
            let _ = account_do::call::<serde_json::Value>(&self.env, &self.account, &Op::Release { reservation }).await;
        });
    }
}

/// Where the call is sent.
enum Target {
    Sandbox,
    Url { base: String, token: String, strip_prefix: Option<String> },
}

pub async fn handle(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    s: &Settings,
    meta: &mut Meta,
    route: ProxyRoute,
    origin: Option<&str>,
) -> Result<Response, GatewayError> {
    let caller = auth::authenticate(&req, env, s, origin).await?;
    meta.cors_origin = cors::allow_origin(&s.cors, &caller.record.allowed_origins, origin);
    let target = target(s, &caller, &route).await?;
    meta.sandbox = matches!(target, Target::Sandbox);

    let raw = read_body(&mut req, s.max_body_bytes).await?;
    let responses_api = route.path.ends_with("/responses");
    let (upstream_body, pricing, model, stream_shape) = match route.metering {
        Metering::Tokens => {
            let shape = body::inspect(&raw, responses_api)?;
            let price = s.prices.price(&shape.model);
            let output_bound = shape.output_bound(caller.plan.default_max_tokens);
            let pricing = Pricing::Tokens { price, prompt_estimate: (raw.len() as u64).div_ceil(4), output_bound };
            let upstream_body = shape.upstream_body(&raw, caller.plan.default_max_tokens, responses_api);
            (upstream_body, pricing, shape.model.clone(), Some(shape))
        }
        Metering::Time => (raw, Pricing::Time, route.path_model.clone().unwrap_or_default(), None),
        Metering::Unmetered => (raw, Pricing::Free, route.path_model.clone().unwrap_or_default(), None),
    };
    let reserve = match (&pricing, &stream_shape) {
        (Pricing::Tokens { price, .. }, Some(shape)) => {
            price.cost(shape.worst_case(upstream_body.len(), caller.plan.default_max_tokens))
        }
        (Pricing::Time, _) => s.compute.cost_ms(s.retry.deadline_ms),
        _ => MicroUsd::ZERO,
    };

    let cooldown_key = cooldown_route(route.provider.as_deref(), &model);
    let admit = account_do::admit(
        env,
        &caller.account,
        AdmitRequest {
            key: caller.key_policy.clone(),
            account: caller.account_policy,
            reserve,
            ttl_ms: s.reservation_ttl_ms,
        },
    );
    let admit_started = platform::now();
    let (admission, cooling) = future::join(admit, cooldown_do::remaining(env, &cooldown_key)).await;
    meta.timing.push(("ledger", platform::now().millis_since(admit_started)));
    let hold = match admission? {
        Admission::Admitted { reservation, rate, stale } => {
            meta.rate = Some(rate);
            if stale {
                kv::forget_key(&caller.record.digest);
            }
            Hold {
                env: env.clone(),
                account: caller.account.clone(),
                key_id: caller.record.id.clone(),
                reservation,
                provider_billed: caller.account_policy.provider_billed,
            }
        }
        Admission::Denied { denial, retry_after_ms, rate, stale } => {
            meta.rate = rate;
            if stale {
                kv::forget_key(&caller.record.digest);
            }
            return Err(match denial {
                Denial::Revoked => GatewayError::InvalidApiKey,
                Denial::RateLimited => GatewayError::RateLimited { retry_after_ms },
                Denial::InsufficientQuota => GatewayError::InsufficientQuota { retry_after_ms },
            });
        }
    };
    if let Some(wait_ms) = cooling.filter(|w| *w > 0) {
        hold.release(ctx);
        return Err(GatewayError::UpstreamRateLimited { retry_after_ms: wait_ms });
    }

    let method = req.method();
    // the raw URL string, not `req.url()`: parsing it would pull the url crate's IDNA tables
    // into the bundle for nothing
    let raw_url = req.inner().url();
    let query = raw_url.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or(q).to_string());
    let out_headers = upstream_headers(req.headers(), caller.bill_to());
    let started = platform::now();
    RETRY_BUDGET.with(|b| b.borrow_mut().deposit(started));
    let outbound = Outbound {
        target: &target,
        route: &route,
        query: query.as_deref(),
        method: &method,
        headers: &out_headers,
        body: &upstream_body,
    };
    let sent = send_with_retries(env, ctx, s, &outbound, started, &cooldown_key).await;
    meta.timing.push(("upstream", platform::now().millis_since(started)));
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => {
            hold.release(ctx);
            return Err(e);
        }
    };

    let status = resp.status_code();
    if let Some(id) = resp.headers().get("x-request-id").ok().flatten().filter(|v| headers::safe_value(v, 128)) {
        meta.request_id = id;
    }
    if status >= 500 {
        hold.release(ctx);
        return Err(GatewayError::UpstreamError(format!("upstream answered {status}")));
    }
    let out = downstream_headers(resp.headers(), meta);
    if !(200..300).contains(&status) {
        // upstream refused the call (bad model, bad input): nothing was served, nothing is owed
        hold.release(ctx);
        return pass_through(resp, status, out).await;
    }
    let is_sse = resp.headers().get("content-type").ok().flatten().is_some_and(|c| c.contains("text/event-stream"));
    match pricing {
        Pricing::Tokens { price, prompt_estimate, output_bound } if !is_sse => {
            meter_whole_body(resp, status, out, ctx, hold, price, prompt_estimate, output_bound).await
        }
        _ => {
            let hide_usage = stream_shape
                .as_ref()
                .is_some_and(|sh: &CallShape| sh.stream && !sh.caller_wants_usage && !responses_api);
            meter_stream(resp, status, out, ctx, hold, pricing, is_sse, hide_usage, started, s).await
        }
    }
}

async fn target(s: &Settings, caller: &Caller, route: &ProxyRoute) -> Result<Target, GatewayError> {
    if caller.plan.byok {
        let provider = route
            .provider
            .clone()
            .ok_or_else(|| GatewayError::InvalidRequest("byok keys call providers by path: /{provider}/...".into()))?;
        let sealed =
            caller.record.provider_keys.get(&provider).ok_or_else(|| {
                GatewayError::InvalidRequest(format!("this key holds no provider key for {provider}"))
            })?;
        let base = s.provider_urls.get(&provider).cloned().ok_or_else(|| GatewayError::Misconfigured {
            setting: "PROVIDER_URLS",
            reason: format!("no URL for provider {provider}"),
        })?;
        let token = sealing::unseal(s, sealed).await?;
        return Ok(Target::Url { base, token, strip_prefix: Some(format!("/{provider}")) });
    }
    match &s.upstream {
        Upstream::Sandbox => Ok(Target::Sandbox),
        Upstream::Url { base, .. } => {
            let token = s.hf_token.as_ref().ok_or(GatewayError::UpstreamNotConfigured)?;
            Ok(Target::Url { base: base.clone(), token: token.expose().to_string(), strip_prefix: None })
        }
    }
}

async fn read_body(req: &mut Request, limit: u64) -> Result<Vec<u8>, GatewayError> {
    if matches!(req.method(), Method::Get | Method::Head) {
        return Ok(Vec::new());
    }
    let too_large = GatewayError::RequestTooLarge { limit_bytes: limit };
    let declared = req.headers().get("content-length").ok().flatten().and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    let unreadable = |_| GatewayError::InvalidRequest("could not read the request body".into());
    let source = match req.stream() {
        Ok(stream) => Source::Stream(stream),
        Err(_) => Source::Bytes(Some(req.bytes().await.map_err(unreadable)?)),
    };
    // chunked bodies carry no length: read them up to the limit and no further
    match read_capped(source, usize::try_from(limit).unwrap_or(usize::MAX)).await.map_err(unreadable)? {
        Capped::Whole(body) => Ok(body),
        Capped::Over(..) => Err(too_large),
    }
}

/// A body read up to a cap: all of it, or the part read so far and the rest unread.
enum Capped {
    Whole(Vec<u8>),
    Over(Vec<u8>, Source),
}

async fn read_capped(mut source: Source, cap: usize) -> Result<Capped, worker::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = source.next().await {
        buf.extend_from_slice(&chunk?);
        if buf.len() > cap {
            return Ok(Capped::Over(buf, source));
        }
    }
    Ok(Capped::Whole(buf))
}

/// The caller's headers minus credentials, hop-by-hop and Cloudflare headers; plus the
/// gateway's own billing header for org keys.
pub fn upstream_headers(incoming: &Headers, bill_to: Option<&str>) -> Headers {
    let tokens = headers::connection_tokens(incoming.get("connection").ok().flatten().as_deref());
    let out = Headers::new();
    for (name, value) in incoming.entries() {
        if headers::forward_upstream(&name, &tokens) {
            let _ = out.append(&name, &value);
        }
    }
    if let Some(org) = bill_to {
        let _ = out.set("x-hf-bill-to", org);
    }
    out
}

pub fn downstream_headers(upstream: &Headers, meta: &Meta) -> Headers {
    let out = Headers::new();
    for (name, value) in upstream.entries() {
        if headers::forward_downstream(&name) {
            let _ = out.append(&name, &value);
        }
    }
    meta.apply(&out);
    out
}

/// One upstream call, as sent on every attempt.
struct Outbound<'a> {
    target: &'a Target,
    route: &'a ProxyRoute,
    query: Option<&'a str>,
    method: &'a Method,
    headers: &'a Headers,
    body: &'a [u8],
}

async fn send_with_retries(
    env: &Env,
    ctx: &Context,
    s: &Settings,
    out: &Outbound<'_>,
    started: UnixMillis,
    cooldown_key: &str,
) -> Result<Response, GatewayError> {
    let mut attempt = 0u32;
    loop {
        let elapsed = platform::now().millis_since(started);
        let left = s.retry.deadline_ms.saturating_sub(elapsed);
        if left == 0 {
            return Err(GatewayError::UpstreamTimeout);
        }
        let resp = send_once(s, out, left).await?;
        let status = resp.status_code();
        let now = platform::now();
        let waited = retry::upstream_wait(|n| resp.headers().get(n).ok().flatten(), now);
        let throttled = status == 429 || (status == 503 && waited.is_some());
        if !throttled {
            return Ok(resp);
        }
        let elapsed = now.millis_since(started);
        let wait = waited.map(|(ms, _)| ms);
        let decision =
            RETRY_BUDGET.with(|b| s.retry.decide(attempt, wait, elapsed, &mut b.borrow_mut(), now, &mut OsRng));
        match decision {
            RetryDecision::RetryAfter { wait_ms } => {
                platform::sleep_ms(wait_ms).await;
                attempt += 1;
            }
            RetryDecision::GiveUp { wait_ms } => {
                if status == 429 && wait_ms > 0 {
                    let (env, key) = (env.clone(), cooldown_key.to_string());
                    cooldown_do::note_locally(&key, wait_ms);
                    ctx.wait_until(async move { cooldown_do::start(&env, &key, wait_ms).await });
                }
                return Err(GatewayError::UpstreamRateLimited { retry_after_ms: wait_ms });
            }
        }
    }
}

async fn send_once(s: &Settings, out: &Outbound<'_>, left_ms: u64) -> Result<Response, GatewayError> {
    let Outbound { target, route, query, method, headers, body } = *out;
    let (base, token, strip) = match target {
        Target::Sandbox => return sandbox::respond(s, &route.path, body).await,
        Target::Url { base, token, strip_prefix } => (base, token, strip_prefix),
    };
    let path = strip.as_deref().and_then(|p| route.path.strip_prefix(p)).unwrap_or(&route.path);
    let url = match query {
        Some(q) => format!("{base}{path}?{q}"),
        None => format!("{base}{path}"),
    };
    let h = Headers::new();
    for (k, v) in headers.entries() {
        let _ = h.append(&k, &v);
    }
    let _ = h.set("authorization", &format!("Bearer {token}"));
    let mut init = RequestInit::new();
    init.with_method(method.clone()).with_headers(h);
    if !body.is_empty() {
        init.with_body(Some(JsValue::from(js_sys::Uint8Array::from(body))));
    }
    let request =
        Request::new_with_init(&url, &init).map_err(|_| GatewayError::UpstreamError("bad upstream request".into()))?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(request);
    let send = fetch.send_with_signal(&signal);
    let timer = platform::sleep_ms(left_ms);
    futures_util::pin_mut!(send);
    futures_util::pin_mut!(timer);
    match future::select(send, timer).await {
        Either::Left((Ok(resp), _)) => Ok(resp),
        Either::Left((Err(_), _)) => Err(GatewayError::UpstreamError("could not reach upstream".into())),
        Either::Right(_) => {
            controller.abort();
            Err(GatewayError::UpstreamTimeout)
        }
    }
}

/// An upstream response's body as one stream, whether it arrived as a stream (fetch) or is
/// already in memory (the sandbox).
async fn response_body(resp: &mut Response) -> Source {
    match resp.stream() {
        Ok(stream) => Source::Stream(stream),
        Err(_) => Source::Bytes(Some(resp.bytes().await.unwrap_or_default())),
    }
}

fn unreadable<E>(_: E) -> GatewayError {
    GatewayError::UpstreamError("unreadable response".into())
}

async fn pass_through(mut resp: Response, status: u16, headers: Headers) -> Result<Response, GatewayError> {
    let body = response_body(&mut resp).await;
    Response::from_stream(body).map(|r| r.with_status(status).with_headers(headers)).map_err(unreadable)
}

#[allow(clippy::too_many_arguments)]
async fn meter_whole_body(
    mut resp: Response,
    status: u16,
    headers: Headers,
    ctx: &Context,
    hold: Hold,
    price: Price,
    prompt_estimate: u64,
    output_bound: u64,
) -> Result<Response, GatewayError> {
    let source = response_body(&mut resp).await;
    let (bytes, rest) = match read_capped(source, MAX_BUFFERED_RESPONSE).await {
        Ok(Capped::Whole(bytes)) => (bytes, None),
        Ok(Capped::Over(head, rest)) => (head, Some(rest)),
        Err(_) => {
            hold.release(ctx);
            return Err(GatewayError::UpstreamError("upstream body could not be read".into()));
        }
    };
    let Some(rest) = rest else {
        // whole: charge what `usage` says, or an estimate from the size when it says nothing
        let usage = body::usage_of_body(&bytes).unwrap_or(TokenUsage {
            prompt: prompt_estimate,
            completion: (bytes.len() as u64).div_ceil(4).min(output_bound),
        });
        hold.settle(ctx, price.cost(usage));
        return crate::edge::response::bytes(status, bytes, headers).map_err(unreadable);
    };
    // too large to hold for its usage: passed through as it comes, charged the worst case
    hold.settle(ctx, price.cost(TokenUsage { prompt: prompt_estimate, completion: output_bound }));
    let stream = futures_util::stream::iter([Ok(bytes)]).chain(rest);
    Response::from_stream(stream).map(|r| r.with_status(status).with_headers(headers)).map_err(unreadable)
}

/// What a metered stream has delivered so far, shared with its settle task.
#[derive(Debug, Default)]
struct Progress {
    usage: Option<TokenUsage>,
    delivered_events: u64,
    last_activity: UnixMillis,
    ended_at: Option<UnixMillis>,
}

#[allow(clippy::too_many_arguments)]
async fn meter_stream(
    mut resp: Response,
    status: u16,
    headers: Headers,
    ctx: &Context,
    hold: Hold,
    pricing: Pricing,
    is_sse: bool,
    hide_usage: bool,
    started: UnixMillis,
    s: &Settings,
) -> Result<Response, GatewayError> {
    let inner = response_body(&mut resp).await;
    let progress = Rc::new(RefCell::new(Progress { last_activity: platform::now(), ..Progress::default() }));
    let idle_ms = s.stream_idle_ms;
    let compute = s.compute;
    let watched = progress.clone();
    // The settle task watches the stream rather than waiting for it to say it ended: a
    // caller that hangs up may leave the stream neither finished nor dropped, and its cost
    // must still be settled (for what was delivered) within the runtime's wait_until grace.
    let (ended_tx, mut ended_rx) = oneshot::channel::<()>();
    let settle = async move {
        loop {
            let (ended, last) = {
                let p = watched.borrow();
                (p.ended_at.is_some(), p.last_activity)
            };
            if ended || platform::now().millis_since(last) >= idle_ms {
                break;
            }
            // woken at once when the stream ends, or after a while to look for idleness
            let tick = platform::sleep_ms((idle_ms / 4).clamp(50, 1_000));
            futures_util::pin_mut!(tick);
            if let Either::Left(_) = future::select(&mut ended_rx, tick).await {
                break;
            }
        }
        let actual = {
            let p = watched.borrow();
            let ended_at = p.ended_at.unwrap_or(p.last_activity);
            match pricing {
                Pricing::Tokens { price, prompt_estimate, output_bound } => price.cost(p.usage.unwrap_or(TokenUsage {
                    prompt: prompt_estimate,
                    completion: p.delivered_events.min(output_bound),
                })),
                Pricing::Time => compute.cost_ms(ended_at.millis_since(started)),
                Pricing::Free => MicroUsd::ZERO,
            }
        };
        hold.settle_now(actual).await;
    };
    ctx.wait_until(settle);
    let metered = Metered {
        inner,
        meter: is_sse.then(|| SseMeter::new(hide_usage)),
        progress,
        ended: Some(ended_tx),
        idle_ms,
        idle: None,
        finished: false,
    };
    Response::from_stream(metered).map(|r| r.with_status(status).with_headers(headers)).map_err(unreadable)
}

/// Passes an upstream body through, metering it; reports how it ended exactly once, when it
/// completes, fails, or is dropped because the caller went away.
enum Source {
    Stream(ByteStream),
    Bytes(Option<Vec<u8>>),
}

impl Stream for Source {
    type Item = Result<Vec<u8>, worker::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        match &mut *self {
            Source::Stream(s) => Pin::new(s).poll_next(cx),
            Source::Bytes(b) => Poll::Ready(b.take().map(Ok)),
        }
    }
}

/// Passes an upstream body through, metering it as it goes. Ends (as a cut) when upstream
/// finishes, fails, or goes silent for longer than the idle limit.
struct Metered {
    inner: Source,
    meter: Option<SseMeter>,
    progress: Rc<RefCell<Progress>>,
    /// Wakes the settle task the moment the stream ends.
    ended: Option<oneshot::Sender<()>>,
    idle_ms: u64,
    idle: Option<Pin<Box<worker::Delay>>>,
    finished: bool,
}

impl Metered {
    fn record(&mut self) {
        let mut p = self.progress.borrow_mut();
        if let Some(m) = &self.meter {
            p.usage = m.usage;
            p.delivered_events = m.delivered_events;
        }
        p.last_activity = platform::now();
    }

    fn end(&mut self) {
        self.record();
        self.progress.borrow_mut().ended_at.get_or_insert_with(platform::now);
        if let Some(tx) = self.ended.take() {
            let _ = tx.send(());
        }
    }

    fn finish(&mut self) -> Poll<Option<Result<Vec<u8>, worker::Error>>> {
        self.finished = true;
        let rest = self.meter.as_mut().map(SseMeter::finish).unwrap_or_default();
        self.end();
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
                    let idle_ms = self.idle_ms;
                    let timer =
                        self.idle.get_or_insert_with(|| Box::pin(worker::Delay::from(Duration::from_millis(idle_ms))));
                    if timer.as_mut().poll(cx).is_ready() {
                        // upstream went silent mid-stream: cut it here, charged for what came
                        return self.finish();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    self.idle = None;
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

impl Drop for Metered {
    fn drop(&mut self) {
        self.end();
    }
}
