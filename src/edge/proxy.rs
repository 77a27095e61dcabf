//! A proxied call from start to end: authenticate, bound, admit, send, meter.
//!
//! The order is the budget's guarantee: the body is inspected and the call's worst case
//! bounded (`core::body`); one Durable Object round trip admits it and reserves that worst
//! case, lowering the output bound when the credit cannot pay for all of it; the body sent
//! upstream carries the bound reserved; the hold is a guard that is settled to the actual cost
//! after the response is on its way, or released, exactly once. Sending and retrying live in
//! `upstream`, metering in `meter`, body memory in `body_io`.

use crate::core::account::{Admission, AdmitRequest};
use crate::core::body::{self, CallShape};
use crate::core::call::{self, RateInputs};
use crate::core::caller::Caller;
use crate::core::cors;
use crate::core::error::GatewayError;
use crate::core::headers;
use crate::core::jobs::{self, JobCall};
use crate::core::paths::{cooldown_route, Api, Metering, ProxyRoute};
use crate::core::price_book::{quote, split_model, Pin};
use crate::core::request_log::CallLog;
use crate::core::settings::Settings;
use crate::core::spend::JobRow;
use crate::core::sse::SseMeter;
use crate::edge::account_do;
use crate::edge::auth;
use crate::edge::body_io;
use crate::edge::hold::Hold;
use crate::edge::meter::{self, Silence};
use crate::edge::platform;
use crate::edge::response::Meta;
use crate::edge::upstream::{self, Outbound, Target};
use crate::edge::{cooldown_do, kv, prices};
use futures_util::future;
use futures_util::StreamExt;
use std::rc::Rc;
use worker::{Context, Env, Request, Response};

pub async fn handle(
    mut req: Request,
    env: &Env,
    ctx: &Rc<Context>,
    s: &Settings,
    meta: &mut Meta,
    route: ProxyRoute,
    origin: Option<&str>,
) -> Result<Response, GatewayError> {
    let caller = auth::authenticate(&req, env, s, origin).await?;
    meta.cors_origin = cors::allow_origin(&s.cors, &caller.record.allowed_origins, origin);
    if let Some(name) = &route.endpoint {
        // an endpoint the key may not use is one it cannot see
        if s.endpoints.get(name).is_none() || !caller.record.allowed_endpoints.iter().any(|e| e == name) {
            return Err(GatewayError::NotFound);
        }
    }
    let method = req.method();
    // the raw URL string, not `req.url()`: parsing it would pull the url crate's IDNA tables
    // into the bundle for nothing
    let raw_url = req.inner().url();
    let query = raw_url.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or(q).to_string());
    let job = match &route.endpoint {
        Some(_) => JobCall::NotAJob,
        None => jobs::classify(method.as_ref(), &route.path, query.as_deref())?,
    };
    match job {
        JobCall::Poll { job_id, tail } => {
            return poll(&req, env, ctx, s, meta, &caller, &route, query.as_deref(), &job_id, tail).await
        }
        // the queue's other paths make sense only for a job the gateway recorded
        JobCall::NotAJob
            if route.provider.as_deref() == Some("fal-ai") && jobs::queue_requested(query.as_deref()) == Ok(true) =>
        {
            return Err(GatewayError::NotFound)
        }
        _ => {}
    }
    let submit = job == JobCall::Submit;

    let body = body_io::read_request(&mut req, s.max_body_bytes).await?;
    let shape = match route.metering {
        Metering::Tokens(api) => Some(body::inspect(&body.bytes, api, s.media_part_tokens)?),
        Metering::Time | Metering::Unmetered => None,
    };
    let job_model = if submit { jobs::job_model(&route.path, &body.bytes) } else { None };
    let model = shape
        .as_ref()
        .map(|sh| sh.model.clone())
        .or_else(|| job_model.clone())
        .or_else(|| route.path_model.clone())
        .unwrap_or_default();
    let (base_model, pin) = split_model(&model);
    let pinned = match pin {
        Pin::Provider(p) => Some(p),
        Pin::Policy(_) | Pin::Unpinned => None,
    };
    let target = Target::of(env, s, &caller, &route, pinned).await?;
    meta.sandbox = matches!(target, Target::Sandbox);
    // a byok call to its provider directly on a router path (`/v1/...`, model:provider)
    // names the model without the suffix the provider would not know
    let rename = target.is_direct(&caller, &route) && route.provider.is_none() && pinned.is_some();

    // priced: tokens at the live book's price (the dearest live provider's when the router
    // chooses), or by ROUTE_PRICES, upstream time, or the endpoint's own price
    let book = match (route.metering, &route.endpoint) {
        (Metering::Tokens(_), None) => prices::book(env, ctx, s).await,
        _ => None,
    };
    let quote = quote(&s.prices, book.as_deref(), &model, route.provider.as_deref());
    let endpoint_price = route.endpoint.as_ref().and_then(|n| s.endpoints.get(n)).map(|e| &e.price);
    let rate = call::rate(&RateInputs {
        metering: route.metering,
        endpoint: endpoint_price,
        token_price: quote.reserve,
        route_rate: s.route_prices.rate_for(&route.path, job_model.as_deref().or(route.path_model.as_deref())),
        job: submit,
        provider: route.provider.as_deref(),
        compute: s.compute,
    });
    let asked = shape.as_ref().map(|sh| sh.output_bound(caller.plan.default_max_tokens));
    let cost =
        call::worst_case(rate, shape.as_ref(), s.retry.deadline_ms, asked.unwrap_or(caller.plan.default_max_tokens));

    let path_provider = route.provider.as_deref().or(route.endpoint.as_deref());
    let cooldown_key =
        cooldown_route(&upstream::credential(&caller, &route, pinned), path_provider, &model, &route.path);
    let admit = account_do::admit(
        env,
        &caller.account,
        AdmitRequest {
            key: caller.key_policy.clone(),
            account: caller.account_policy,
            cost,
            ttl_ms: s.reservation_ttl_ms,
        },
    );
    let admit_started = platform::now();
    let (admission, cooling) = future::join(admit, cooldown_do::remaining(env, &cooldown_key)).await;
    meta.timing.push(("ledger", platform::now().millis_since(admit_started)));
    let (mut hold, granted) = match admission? {
        Admission::Admitted { reservation, output, rate, stale } => {
            meta.rate = Some(rate);
            if stale {
                kv::forget_key(&caller.record.digest);
            }
            let hold = Hold::new(
                env,
                ctx,
                &caller.account,
                &caller.record.id,
                reservation,
                caller.account_policy.provider_billed,
            );
            (hold, output)
        }
        Admission::Denied { denial, retry_after_ms, rate, stale, affordable } => {
            meta.rate = rate;
            if stale {
                kv::forget_key(&caller.record.digest);
            }
            return Err(denial.error(retry_after_ms, affordable));
        }
    };
    let endpoint_label = route.endpoint.as_ref().map(|n| format!("endpoints/{n}"));
    let label_model = if base_model.is_empty() { route.path.as_str() } else { base_model };
    hold.label(label_model, endpoint_label.as_deref().or(pinned).or(route.provider.as_deref()).unwrap_or(AUTO));
    // a listing is not a metered call: it is throttled, not logged
    if route.metering != Metering::Unmetered {
        hold.record(CallLog {
            request_id: meta.request_id.clone(),
            key_id: caller.record.id.clone(),
            org: caller.record.org.clone(),
            route: route.path.clone(),
            api: api_name(route.metering, submit).to_string(),
            reserved: cost.full().0,
            at: admit_started,
            stream: shape.as_ref().is_some_and(|sh| sh.stream),
            ..CallLog::default()
        });
    }

    // The body upstream carries exactly the bound that was reserved.
    let output = granted.or(asked).unwrap_or(0);
    if granted.is_some() && granted < asked {
        meta.output_limit = granted;
    }
    let mut edits = shape.as_ref().map(|sh: &CallShape| sh.edits(output)).unwrap_or_default();
    if let (true, Some(sh)) = (rename, shape.as_ref()) {
        sh.rename_model(&mut edits, base_model);
    }
    let upstream_body = body_io::upstream_body(&body.bytes, &edits);
    let permit = body.permit;
    drop(body.bytes);
    let mut pricing = call::CallPricing::of(rate, shape.as_ref(), output);
    if let Some(wait_ms) = cooling.filter(|w| *w > 0) {
        // dropping the hold gives the reservation back; the record says why
        let e = GatewayError::UpstreamRateLimited { retry_after_ms: wait_ms };
        hold.outcome(e.status(), Some(e.code()));
        return Err(e);
    }

    let out_headers = upstream::upstream_headers(req.headers(), caller.bill_to());
    let started = platform::now();
    upstream::note_attempt(started);
    let outbound = Outbound {
        target: &target,
        route: &route,
        query: query.as_deref(),
        method: &method,
        headers: &out_headers,
        body: upstream_body.as_ref(),
    };
    let sent = upstream::send_with_retries(env, ctx, s, &outbound, started, &cooldown_key).await;
    drop(permit);
    meta.timing.push(("upstream", platform::now().millis_since(started)));
    let sent = match sent {
        Ok(sent) => sent,
        Err(e) => {
            hold.outcome(e.status(), Some(e.code()));
            return Err(e);
        }
    };
    let (resp, attempt_started) = (sent.resp, sent.attempt_started);
    hold.timing(platform::now().millis_since(started), sent.retries, sent.waited_ms);

    let status = resp.status_code();
    if let Some(id) = resp.headers().get("x-request-id").ok().flatten().filter(|v| headers::safe_value(v, 128)) {
        hold.upstream_id(&id);
        meta.request_id = id;
    }
    if status >= 500 {
        let e = GatewayError::UpstreamError(format!("upstream answered {status}"));
        hold.outcome(e.status(), Some(e.code()));
        return Err(e);
    }
    hold.outcome(status, None);
    let out = upstream::downstream_headers(resp.headers(), meta);
    if !(200..300).contains(&status) {
        // upstream refused the call (bad model, bad input): nothing was served, nothing is
        // owed; the hold is released as it goes
        drop(hold);
        return meter::pass_through(resp, status, out).await;
    }
    if route.endpoint.is_none() && pinned.is_none() && route.provider.is_none() && pricing.is_tokens() {
        // the router chose: the call settles at the price of the provider that served it
        let served = resp.headers().get("x-inference-provider").ok().flatten().filter(|p| provider_name(p));
        pricing = pricing.at_price(quote.settle(served.as_deref()));
        hold.label(label_model, served.as_deref().unwrap_or(AUTO));
    }
    if submit {
        return submitted(resp, status, out, hold, pricing, env, &caller, &route.path).await;
    }
    let is_sse = resp.headers().get("content-type").ok().flatten().is_some_and(|c| c.contains("text/event-stream"));
    if pricing.is_tokens() && !is_sse {
        return meter::whole_body(resp, status, out, hold, pricing).await;
    }
    let sse = is_sse.then(|| {
        SseMeter::new(shape.as_ref().map_or(Api::Chat, |sh| sh.api), shape.as_ref().is_some_and(CallShape::hides_usage))
    });
    let silence = Silence { idle_ms: s.stream_idle_ms, first_byte_by: started.saturating_add_ms(s.retry.deadline_ms) };
    // a time-billed call pays for its last attempt's time, not for the waits before it
    meter::stream(resp, status, out, ctx, hold, pricing, sse, attempt_started, silence).await
}

/// The API a call's record names.
fn api_name(metering: Metering, job: bool) -> &'static str {
    match metering {
        Metering::Tokens(Api::Chat) => "chat",
        Metering::Tokens(Api::Completions) => "completions",
        Metering::Tokens(Api::Responses) => "responses",
        _ if job => "job",
        _ => "other",
    }
}

/// The provider label of a call the router placed and did not say where.
const AUTO: &str = "auto";

/// Whether an `x-inference-provider` value is a plain provider name (it ends up in the
/// ledger's spend lines and the admin views).
fn provider_name(v: &str) -> bool {
    (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A queued job's submit, answered 2xx: the job's owner is recorded before the caller learns
/// its id (so its first poll finds it), and the call is settled at its one price.
#[allow(clippy::too_many_arguments)]
async fn submitted(
    mut resp: Response,
    status: u16,
    out: worker::Headers,
    mut hold: Hold,
    pricing: call::CallPricing,
    env: &Env,
    caller: &Caller,
    path: &str,
) -> Result<Response, GatewayError> {
    let source = body_io::response_body(&mut resp).await;
    let bytes = match body_io::read_capped(source, MAX_SUBMIT_ANSWER, 4 * 1024).await {
        Ok(body_io::Capped::Whole(bytes)) => bytes,
        Ok(body_io::Capped::Over(head, rest)) => {
            // no ticket this large: passed through as it comes, charged, nothing to own
            let (cost, tokens) = pricing.charge(None, 0, 0);
            hold.settle(cost, tokens);
            let stream = futures_util::stream::iter([Ok(head)]).chain(rest);
            return Response::from_stream(stream)
                .map(|r| r.with_status(status).with_headers(out))
                .map_err(|_| GatewayError::UpstreamError("unreadable response".into()));
        }
        // dropping the hold releases it: the caller never learned of a job
        Err(_) => {
            let e = GatewayError::UpstreamError("upstream body could not be read".into());
            hold.outcome(e.status(), Some(e.code()));
            return Err(e);
        }
    };
    // the job exists upstream and is owed whatever happens next
    let (cost, tokens) = pricing.charge(None, 0, 0);
    hold.settle(cost, tokens);
    match jobs::submitted_job(path, &bytes) {
        Some(job) => {
            let row = JobRow { key_id: caller.record.id.clone(), poll_base: job.poll_base, at: platform::now() };
            if account_do::own_job(env, &caller.account, job.id, row).await.is_err() {
                platform::fault(
                    "a job was submitted but its owner could not be recorded; its polls will be refused",
                    "",
                );
            }
        }
        None => worker::console_log!("a job submit was answered with no job id the gateway could read"),
    }
    crate::edge::response::bytes(status, bytes, out)
        .map_err(|_| GatewayError::UpstreamError("unreadable response".into()))
}

/// The most a submit's answer (a ticket) is read to find the job's id.
const MAX_SUBMIT_ANSWER: usize = 1024 * 1024;

/// A poll of a queued job: free, not throttled (clients poll twice a second), and only for
/// the key that submitted it; sent to the path recorded at submit, never the client's.
#[allow(clippy::too_many_arguments)]
async fn poll(
    req: &Request,
    env: &Env,
    ctx: &Rc<Context>,
    s: &Settings,
    meta: &mut Meta,
    caller: &Caller,
    route: &ProxyRoute,
    query: Option<&str>,
    job_id: &str,
    tail: &str,
) -> Result<Response, GatewayError> {
    let job = account_do::job(env, &caller.account, job_id.to_string(), caller.record.id.clone()).await?;
    let job = job.ok_or(GatewayError::NotFound)?;
    let upstream_route = ProxyRoute { path: jobs::poll_path(&job.poll_base, tail), ..route.clone() };
    let target = Target::of(env, s, caller, &upstream_route, None).await?;
    meta.sandbox = matches!(target, Target::Sandbox);
    let out_headers = upstream::upstream_headers(req.headers(), caller.bill_to());
    let method = req.method();
    let outbound =
        Outbound { target: &target, route: &upstream_route, query, method: &method, headers: &out_headers, body: None };
    let cooldown_key = cooldown_route(&upstream::credential(caller, route, None), None, "", &job.poll_base);
    let started = platform::now();
    let resp = upstream::send_with_retries(env, ctx, s, &outbound, started, &cooldown_key).await?.resp;
    let status = resp.status_code();
    if status >= 500 {
        return Err(GatewayError::UpstreamError(format!("upstream answered {status}")));
    }
    let out = upstream::downstream_headers(resp.headers(), meta);
    meter::pass_through(resp, status, out).await
}
