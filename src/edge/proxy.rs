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
use crate::core::call;
use crate::core::cors;
use crate::core::error::GatewayError;
use crate::core::headers;
use crate::core::paths::{cooldown_route, Metering, ProxyRoute};
use crate::core::settings::Settings;
use crate::core::sse::SseMeter;
use crate::edge::account_do;
use crate::edge::auth;
use crate::edge::body_io;
use crate::edge::hold::Hold;
use crate::edge::meter::{self, Silence};
use crate::edge::platform;
use crate::edge::response::Meta;
use crate::edge::upstream::{self, Outbound, Target};
use crate::edge::{cooldown_do, kv};
use futures_util::future;
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
    let target = Target::of(s, &caller, &route).await?;
    meta.sandbox = matches!(target, Target::Sandbox);

    let body = body_io::read_request(&mut req, s.max_body_bytes).await?;
    let shape = match route.metering {
        Metering::Tokens(api) => Some(body::inspect(&body.bytes, api, s.media_part_tokens)?),
        Metering::Time | Metering::Unmetered => None,
    };
    let model = shape.as_ref().map(|sh| sh.model.clone()).or_else(|| route.path_model.clone()).unwrap_or_default();
    let asked = shape.as_ref().map(|sh| sh.output_bound(caller.plan.default_max_tokens));
    let price = s.prices.price(&model);
    let cost = call::worst_case(
        route.metering,
        shape.as_ref(),
        price,
        s.compute,
        s.retry.deadline_ms,
        asked.unwrap_or(caller.plan.default_max_tokens),
    );

    let cooldown_key =
        cooldown_route(&upstream::credential(&caller, &route), route.provider.as_deref(), &model, &route.path);
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
    let (hold, granted) = match admission? {
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
    if let Some(wait_ms) = cooling.filter(|w| *w > 0) {
        // dropping the hold gives the reservation back
        return Err(GatewayError::UpstreamRateLimited { retry_after_ms: wait_ms });
    }

    // The body upstream carries exactly the bound that was reserved.
    let output = granted.or(asked).unwrap_or(0);
    if granted.is_some() && granted < asked {
        meta.output_limit = granted;
    }
    let edits = shape.as_ref().map(|sh: &CallShape| sh.edits(output)).unwrap_or_default();
    let upstream_body = body_io::upstream_body(&body.bytes, &edits);
    let permit = body.permit;
    drop(body.bytes);
    let pricing = call::CallPricing::of(route.metering, shape.as_ref(), price, s.compute, output);

    let method = req.method();
    // the raw URL string, not `req.url()`: parsing it would pull the url crate's IDNA tables
    // into the bundle for nothing
    let raw_url = req.inner().url();
    let query = raw_url.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or(q).to_string());
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
    let resp = sent?;

    let status = resp.status_code();
    if let Some(id) = resp.headers().get("x-request-id").ok().flatten().filter(|v| headers::safe_value(v, 128)) {
        meta.request_id = id;
    }
    if status >= 500 {
        return Err(GatewayError::UpstreamError(format!("upstream answered {status}")));
    }
    let out = upstream::downstream_headers(resp.headers(), meta);
    if !(200..300).contains(&status) {
        // upstream refused the call (bad model, bad input): nothing was served, nothing is
        // owed; the hold is released as it goes
        drop(hold);
        return meter::pass_through(resp, status, out).await;
    }
    let is_sse = resp.headers().get("content-type").ok().flatten().is_some_and(|c| c.contains("text/event-stream"));
    if pricing.is_tokens() && !is_sse {
        return meter::whole_body(resp, status, out, hold, pricing).await;
    }
    let sse = is_sse.then(|| SseMeter::new(shape.as_ref().is_some_and(CallShape::hides_usage)));
    let silence = Silence { idle_ms: s.stream_idle_ms, first_byte_by: started.saturating_add_ms(s.retry.deadline_ms) };
    meter::stream(resp, status, out, ctx, hold, pricing, sse, started, silence).await
}
