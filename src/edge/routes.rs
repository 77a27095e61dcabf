//! The route table: from a request to the handler that answers it. CORS preflights are
//! answered here, before authentication; every error becomes a response in one place.

use crate::core::cors;
use crate::core::error::GatewayError;
use crate::core::keys::random_id;
use crate::core::paths::{self, Route};
use crate::core::request_log::LogQuery;
use crate::edge::incoming::Incoming;
use crate::edge::platform::OsRng;
use crate::edge::response::{self, Meta, Response};
use crate::edge::{admin, auth, config, kv, pages, proxy, registry_do, request_log, usage};
use serde_json::json;
use std::rc::Rc;
use worker::{Context, Env, Headers, Method, Result};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub async fn handle(req: web_sys::Request, env: Env, ctx: Context) -> Result<Response> {
    let req = Incoming::of(req);
    // shared: a call's credit hold keeps a handle on it to give its reservation back
    let ctx = Rc::new(ctx);
    let mut meta = Meta { request_id: random_id(&mut OsRng), ..Meta::default() };
    let origin = effective_origin(&req);
    // the body stays in reach, for an error that leaves it unread
    let body = drainable(&req);
    let outcome = dispatch(req, &env, &ctx, &mut meta, origin.as_deref()).await;
    match outcome {
        Ok(resp) => Ok(resp),
        Err(e) => {
            if e.is_fault() {
                crate::edge::platform::fault(&format!("{} ({})", e.code(), meta.request_id), &e.to_string());
            }
            drain(body).await;
            response::error(&e, &meta)
        }
    }
}

/// A request body small enough to read to its end if the answer is an error that did not
/// read it (a bad key, a throttle): the runtime closes a connection whose request body was
/// left unread, and the caller's next request on it fails with a reset. A large body, or one
/// of unknown length, is left: a new connection costs less than reading it.
fn drainable(req: &Incoming) -> Option<web_sys::ReadableStream> {
    let length = req.headers().get("content-length").ok().flatten()?.parse::<u64>().ok()?;
    (length <= DRAIN_BYTES).then(|| req.raw().body()).flatten()
}

const DRAIN_BYTES: u64 = 256 * 1024;

/// Reads `body` to its end, unless something read it already; a second at most.
async fn drain(body: Option<web_sys::ReadableStream>) {
    let Some(body) = body.filter(|b| !b.locked()) else { return };
    let Ok(whole) = web_sys::Response::new_with_opt_readable_stream(Some(&body)) else { return };
    let Ok(read) = whole.array_buffer() else { return };
    let reading = async { wasm_bindgen_futures::JsFuture::from(read).await.ok() };
    crate::edge::platform::within(1_000, reading).await;
}

/// The page origin a request comes from: its `Origin`, or, for a same-origin request that
/// carries none (a browser's same-origin GET), the gateway's own origin.
fn effective_origin(req: &Incoming) -> Option<String> {
    let h = req.headers();
    if let Some(o) = h.get("origin").ok().flatten().filter(|o| o != "null") {
        return Some(o);
    }
    let same = h.get("sec-fetch-site").ok().flatten().is_some_and(|v| v == "same-origin");
    same.then(|| url_origin(req.url())).flatten()
}

/// `scheme://host[:port]` of an absolute URL (the runtime hands requests over normalised).
fn url_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{authority}"))
}

async fn dispatch(
    req: Incoming,
    env: &Env,
    ctx: &Rc<Context>,
    meta: &mut Meta,
    origin: Option<&str>,
) -> std::result::Result<Response, GatewayError> {
    let s = config::settings(env)?;
    meta.cors_origin = cors::allow_origin(&s.cors, &[], origin);
    let method = req.method();
    if method == Method::Options {
        return preflight(&req, env, &s, meta, origin).await;
    }
    let route = paths::route(req.path())?;
    if !route.allows(method.as_ref()) {
        return Err(GatewayError::MethodNotAllowed);
    }
    let built = match route {
        Route::Health => {
            // the upstream's host, or what stops it serving: its account is out of credits
            let upstream = if crate::edge::health::payment_is_required(env).await {
                "payment_required"
            } else {
                s.upstream_label()
            };
            let body =
                json!({"status": "ok", "upstream": upstream, "upstream_host": s.upstream_label(), "version": VERSION});
            response::json(200, &body, meta)
        }
        Route::Playground => pages::playground(meta),
        Route::AdminPage => pages::admin(meta),
        Route::Usage => {
            let caller = auth::authenticate(&req, env, &s, origin).await?;
            meta.cors_origin = cors::allow_origin(&s.cors, &caller.record.allowed_origins, origin);
            // reading usage costs the ledger a round trip: it takes from the throttle like
            // any call, in that same round trip
            let (doc, rate) = usage::of(env, &caller, true).await?;
            meta.rate = rate;
            response::json(200, &doc, meta)
        }
        Route::UsageRequests => {
            let caller = auth::authenticate(&req, env, &s, origin).await?;
            meta.cors_origin = cors::allow_origin(&s.cors, &caller.record.allowed_origins, origin);
            let mut q = LogQuery::parse(request_log::query_of(&req).as_deref())?;
            q.key_id = Some(caller.record.id.clone());
            let source = request_log::Source::of_key(&caller, true);
            return request_log::respond(env, source, q, request_log::wants_csv(&req), meta).await;
        }
        Route::AdminKeyRequests(id) => {
            admin::authorise(&req, &s)?;
            let caller = admin::key_caller(env, &s, &id).await?;
            let mut q = LogQuery::parse(request_log::query_of(&req).as_deref())?;
            q.key_id = Some(id);
            let source = request_log::Source::of_key(&caller, false);
            return request_log::respond(env, source, q, request_log::wants_csv(&req), meta).await;
        }
        Route::AdminOrgRequests(id) => {
            admin::authorise(&req, &s)?;
            let org = kv::org(env, &id).await?.ok_or(GatewayError::NotFound)?;
            let q = LogQuery::parse(request_log::query_of(&req).as_deref())?;
            let source = request_log::Source::of_org(&org, &s)?;
            return request_log::respond(env, source, q, request_log::wants_csv(&req), meta).await;
        }
        Route::Proxy(p) => return proxy::handle(req, env, ctx, &s, meta, p, origin).await,
        ref admin_route => {
            admin::authorise(&req, &s)?;
            return admin::respond(req, env, &s, admin_route, meta).await;
        }
    };
    built.map_err(not_built)
}

/// The runtime refused to build a response (it never does in practice): a 500, not a panic.
fn not_built<E>(_: E) -> GatewayError {
    GatewayError::Internal("the runtime could not build the response")
}

/// `OPTIONS`: approved for origins in `CORS_ORIGINS` or allowed by some browser key.
async fn preflight(
    req: &Incoming,
    env: &Env,
    s: &crate::core::settings::Settings,
    meta: &mut Meta,
    origin: Option<&str>,
) -> std::result::Result<Response, GatewayError> {
    let Some(origin) = origin else {
        let h = Headers::new();
        let _ = h.set("allow", cors::ALLOW_METHODS);
        meta.apply(&h);
        return response::bytes(204, Vec::new(), h).map_err(not_built);
    };
    let extra = if s.cors.contains(origin) { Vec::new() } else { registry_do::browser_origins(env).await? };
    let allowed = cors::allow_origin(&s.cors, &extra, Some(origin)).ok_or(GatewayError::OriginNotAllowed)?;
    meta.cors_origin = Some(allowed);
    let requested = req.headers().get("access-control-request-headers").ok().flatten();
    let h = Headers::new();
    let _ = h.set("access-control-allow-methods", cors::ALLOW_METHODS);
    let _ = h.set("access-control-allow-headers", &cors::allow_headers(requested.as_deref()));
    let _ = h.set("access-control-max-age", cors::MAX_AGE_SECS);
    let _ = h.append("vary", "Access-Control-Request-Headers");
    meta.apply(&h);
    response::bytes(204, Vec::new(), h).map_err(not_built)
}
