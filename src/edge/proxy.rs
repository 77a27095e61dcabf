//! A proxied call, read once from top to bottom: who is calling, what may the call cost,
//! admit it, forward it (metering and settling happen in the call's own task, `forward`).
//!
//! The order is the budget's guarantee: the body is inspected and the call's worst case
//! bounded by the upstream's own rules (`core::body`); one Durable Object round trip admits
//! it and reserves that worst case, lowering the output bound (or a time-billed call's time)
//! when the credit cannot pay for all of it; the body sent upstream carries the bound
//! reserved in every limit field upstream may honour; the hold is a guard that the call's
//! task settles to what upstream reports, charges in full when that cannot be learned, or
//! releases when upstream answered non-2xx or never had the request.

use crate::core::account::{Admission, AdmitRequest};
use crate::core::body::{self, CallShape};
use crate::core::call::{self, CallPricing, Rate, RateInputs};
use crate::core::call_line::CallLog;
use crate::core::caller::Caller;
use crate::core::cors;
use crate::core::error::GatewayError;
use crate::core::jobs::{self, JobCall};
use crate::core::paths::{cooldown_route, Api, Metering, ProxyRoute};
use crate::core::price_book::{self, quote, split_model, Pin};
use crate::core::route_prices::RouteRate;
use crate::core::settings::Settings;
use crate::edge::forward::{self, Forward, JobSubmit, AUTO};
use crate::edge::hold::{Hold, Reserved};
use crate::edge::incoming::Incoming;
use crate::edge::response::{Meta, Response};
use crate::edge::upstream::{self, Outbound, Target};
use crate::edge::{account_do, auth, body_io, leases, meter, platform};
use crate::edge::{cooldown_do, kv, prices};
use futures_util::future;
use std::rc::Rc;
use worker::{Context, Env};

pub async fn handle(
    req: Incoming,
    env: &Env,
    ctx: &Rc<Context>,
    s: &Rc<Settings>,
    meta: &mut Meta,
    route: ProxyRoute,
    origin: Option<&str>,
) -> Result<Response, GatewayError> {
    // who is calling, and what it asks for
    let caller = auth::authenticate(&req, env, s, origin).await?;
    meta.cors_origin = cors::allow_origin(&s.cors, &caller.record.allowed_origins, origin);
    if let Some(name) = &route.endpoint {
        // an endpoint the key may not use is one it cannot see
        if s.endpoints.get(name).is_none() || !caller.record.allowed_endpoints.iter().any(|e| e == name) {
            return Err(GatewayError::NotFound);
        }
    }
    let method = req.method();
    let query = req.query().map(str::to_string);
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
    let body = body_io::read_request(&req, s.max_body_bytes).await?;
    let shape = match route.metering {
        Metering::Tokens(api) => Some(body::inspect(&body.bytes, api, s.media_part_tokens)?),
        Metering::Time | Metering::Unmetered => None,
    };
    let job_model = if submit { jobs::job_model(&route.path, &body.bytes) } else { None };
    // a path that names its model is served (and billed) as that model, whatever the body says
    let model = route
        .path_model
        .clone()
        .or_else(|| shape.as_ref().map(|sh| sh.model.clone()))
        .or_else(|| job_model.clone())
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

    // what may it cost: tokens at the live book's price (the dearest live provider's when the
    // router chooses), or by ROUTE_PRICES, upstream time, or the endpoint's own price
    let book = match (route.metering, &route.endpoint) {
        (Metering::Tokens(_), None) => prices::book(env, ctx, s).await,
        _ => None,
    };
    let mut quote = quote(&s.prices, book.as_deref(), &model, route.provider.as_deref());
    if let Some(named) =
        shape.as_ref().map(|sh| sh.model.as_str()).filter(|m| route.path_model.is_some() && *m != model)
    {
        // the path's model is the one served where the path names one (hf-inference); should
        // a server read the body's instead, the reservation covers that one too
        let other = price_book::quote(&s.prices, book.as_deref(), named, route.provider.as_deref()).reserve;
        quote.reserve = quote.reserve.max(other);
    }
    let endpoint_price = route.endpoint.as_ref().and_then(|n| s.endpoints.get(n)).map(|e| &e.price);
    let measure = match route.metering {
        Metering::Time => body::measure(&body.bytes)?,
        Metering::Tokens(_) | Metering::Unmetered => body::Measure { outputs: 1, ..body::Measure::default() },
    };
    let route_rate = s.route_prices.rate_for(&route.path, job_model.as_deref().or(route.path_model.as_deref()));
    if let (Some(RouteRate::PerMegapixel { .. }), Some(field)) = (route_rate, &measure.unknown_size) {
        // priced by the megapixel, but the size this field names is not one the gateway knows
        let reason = "the route is priced per megapixel and this size is not one the gateway can count".to_string();
        return Err(body::Unbounded { field: field.clone(), reason }.refusal());
    }
    let rate = call::rate(&RateInputs {
        metering: route.metering,
        endpoint: endpoint_price,
        token_price: quote.reserve,
        route_rate,
        job: submit,
        provider: route.provider.as_deref(),
        compute: s.compute,
        outputs: measure.outputs,
        megapixels: measure.megapixels(),
    });
    let rate = match rate {
        // a provider bills a byok key directly: the gateway only records its usage
        Rate::Unpriced if caller.account_policy.provider_billed => Rate::Free,
        Rate::Unpriced => return Err(GatewayError::RouteNotPriced { route: route.path.clone() }),
        rate => rate,
    };
    let server_tools_ceiling = match shape.as_ref().and_then(|sh| sh.server_tools.as_ref()) {
        // the router runs these tools in a loop whose cost nothing in the body bounds: only a
        // plan that sets a per-call ceiling may use them, and that ceiling is reserved
        Some(unbounded) => match caller.plan.server_tool_ceiling_micro_usd {
            Some(ceiling) => Some(crate::core::ledger::MicroUsd(ceiling)),
            None => return Err(unbounded.refusal()),
        },
        None => None,
    };
    let asked = shape.as_ref().map(|sh| sh.output_bound(caller.plan.default_max_tokens));
    let mut cost =
        call::worst_case(rate, shape.as_ref(), s.retry.deadline_ms, asked.unwrap_or(caller.plan.default_max_tokens));
    if let Some(ceiling) = server_tools_ceiling {
        cost = crate::core::account::Cost::Fixed { amount: ceiling.max(cost.full()) };
    }

    // admit: revoked? throttled? the worst case reserved (in parallel, the route's cooldown)
    let path_provider = route.provider.as_deref().or(route.endpoint.as_deref());
    let cooldown_key =
        cooldown_route(&upstream::credential(&caller, &route, pinned), path_provider, &model, &route.path);
    let admit_started = platform::now();
    let (local, want) =
        leases::admit(&caller.account, &caller.key_policy, &caller.account_policy, &cost, s.lease_ms, admit_started);
    if let Some(l) = &local {
        leases::report(env, ctx, &caller.account, &caller.key_policy.key_id, l, s.reservation_ttl_ms);
    }
    let cooling = cooldown_do::remaining(env, ctx, &cooldown_key);
    let (admission, cooling) = match &local {
        // a warm key: admitted here, on this isolate's lease, with no round trip
        Some(l) => {
            let admitted = Admission::Admitted {
                reservation: Some(l.hold),
                output: l.output,
                rate: l.rate,
                stale: false,
                held: l.held,
                lease: None,
            };
            (Ok(admitted), cooling.await)
        }
        None => {
            let request = AdmitRequest {
                key: caller.key_policy.clone(),
                account: caller.account_policy,
                cost,
                ttl_ms: s.reservation_ttl_ms,
                lease: want,
            };
            future::join(account_do::admit(env, &caller.account, request), cooling).await
        }
    };
    // where the call was admitted: here, on a lease, or by its account's object
    meta.timing.push(match local {
        Some(_) => ("lease", 0),
        None => ("ledger", platform::now().millis_since(admit_started)),
    });
    if want.is_some() {
        // the lease asked for with the call, or none: refused, or the object not reached
        let lease = match &admission {
            Ok(Admission::Admitted { lease, .. }) => *lease,
            _ => None,
        };
        let (key, policy) = (&caller.key_policy, &caller.account_policy);
        leases::install(env, ctx, &caller.account, key, policy, lease, admit_started, admit_started);
    }
    let (mut hold, granted) = match admission? {
        Admission::Admitted { reservation, output, rate, stale, held, lease: _ } => {
            meta.rate = Some(rate);
            if stale {
                kv::forget_key(&caller.record.digest);
            }
            let reserved = Reserved { id: reservation, held, leased: local.as_ref().map(|l| l.leased.clone()) };
            let billed_by_provider = caller.account_policy.provider_billed;
            let hold = Hold::new(env, ctx, &caller.account, &caller.record.id, reserved, billed_by_provider);
            if local.is_some() {
                let (key, policy) = (&caller.key_policy, &caller.account_policy);
                leases::after_local(env, ctx, &caller.account, key, policy, &caller.record.digest);
            }
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
    if let Some(wait_ms) = cooling.filter(|w| *w > 0) {
        // dropping the hold gives the reservation back; the record says why
        let e = GatewayError::UpstreamRateLimited { retry_after_ms: wait_ms };
        hold.outcome(e.status(), Some(e.code()));
        return Err(e);
    }

    // forward: the body upstream carries exactly the bound that was reserved
    let started = platform::now();
    let (output, cut_at) = match rate {
        // a time-billed call runs for the time it was granted, no longer
        Rate::Time(_) => (0, Some(started.saturating_add_ms(granted.unwrap_or(s.retry.deadline_ms)))),
        _ => (granted.or(asked).unwrap_or(0), None),
    };
    if rate != Rate::Free && matches!(route.metering, Metering::Tokens(_)) && granted.is_some() && granted < asked {
        meta.output_limit = granted;
    }
    let mut edits = shape.as_ref().map(|sh: &CallShape| sh.edits(output)).unwrap_or_default();
    if let (true, Some(sh)) = (rename, shape.as_ref()) {
        sh.rename_model(&mut edits, base_model);
    }
    let upstream_body = body_io::upstream_body(&body.bytes, &edits);
    let permit = body.permit;
    drop(body.bytes);
    let pricing = CallPricing::of(rate, shape.as_ref(), output);
    let router_chooses =
        route.endpoint.is_none() && pinned.is_none() && route.provider.is_none() && pricing.is_tokens();
    let answer_by = started.saturating_add_ms(s.retry.deadline_ms);
    upstream::note_attempt(started);
    let call = Forward {
        env: env.clone(),
        ctx: ctx.clone(),
        settings: s.clone(),
        headers: upstream::upstream_headers(req.headers(), caller.bill_to()),
        target,
        query,
        method,
        body: upstream_body,
        permit,
        cooldown_key,
        hold,
        pricing,
        router_choice: router_chooses.then(|| (quote, label_model.to_string())),
        tokens: shape.as_ref().map(|sh| (sh.api, sh.hides_usage())),
        job: submit.then(|| JobSubmit {
            account: caller.account.clone(),
            key_id: caller.record.id.clone(),
            path: route.path.clone(),
        }),
        route,
        started,
        cut_at,
        answer_by: cut_at.map_or(answer_by, |c| c.min(answer_by)),
    };
    let answer = forward::run(call).await;
    meta.timing.push(("upstream", platform::now().millis_since(started)));
    let answer = answer?;
    if let Some(id) = &answer.upstream_request_id {
        meta.request_id = id.clone();
    }
    answer.body.respond(answer.status, &answer.headers, meta)
}

/// The API a call's record names.
fn api_name(metering: Metering, job: bool) -> &'static str {
    match metering {
        Metering::Tokens(Api::Chat) => "chat",
        Metering::Tokens(Api::Completions) => "completions",
        Metering::Tokens(Api::Responses) => "responses",
        Metering::Tokens(Api::Embeddings) => "embeddings",
        _ if job => "job",
        _ => "other",
    }
}

/// A poll of a queued job: free, not throttled (clients poll twice a second), and only for
/// the key that submitted it; sent to the path recorded at submit, never the client's.
#[allow(clippy::too_many_arguments)]
async fn poll(
    req: &Incoming,
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
    let in_flight = upstream::InFlight::default();
    let send = upstream::send_with_retries(env, ctx, s, &outbound, started, &cooldown_key, &in_flight);
    let sent = platform::within(s.retry.deadline_ms, async { Some(send.await) }).await.ok_or_else(|| {
        in_flight.give_up();
        GatewayError::UpstreamTimeout
    })?;
    let resp = sent.map_err(|failed| failed.error)?.resp;
    let status = resp.status();
    if status >= 500 {
        return Err(GatewayError::UpstreamError(format!("upstream answered {status}")));
    }
    meter::pass_through(&resp, meta)
}
