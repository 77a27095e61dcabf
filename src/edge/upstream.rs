//! Where a call goes upstream and how it is retried: the target (router, sandbox or a
//! `byok` key's provider), the headers both ways, one attempt under the call's deadline, and
//! the retry loop that sleeps through short upstream 429s and opens a cooldown on long ones.

use crate::core::caller::Caller;
use crate::core::error::GatewayError;
use crate::core::headers;
use crate::core::paths::ProxyRoute;
use crate::core::retry::{self, RetryBudget, RetryDecision};
use crate::core::settings::{Settings, Upstream};
use crate::core::time::UnixMillis;
use crate::edge::platform::{self, OsRng};
use crate::edge::response::Meta;
use crate::edge::{cooldown_do, health, sandbox, sealing};
use futures_util::future::{self, Either};
use js_sys::Uint8Array;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::{AbortController, Context, Env, Headers, Method, Response};

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// `globalThis.hfgateBody` (scripts/entry.mjs): `bytes` as a request body stream that
    /// marks itself `hfgateSent` once the connection has taken all of it.
    #[wasm_bindgen(catch, js_name = hfgateBody)]
    fn telling_body(bytes: &Uint8Array) -> Result<JsValue, JsValue>;
}

thread_local! {
    static RETRY_BUDGET: RefCell<RetryBudget> = RefCell::new(RetryBudget::default());
}

/// Where the call is sent, and with which credential.
pub enum Target {
    Sandbox,
    Url { base: String, token: String, strip_prefix: Option<String> },
}

impl Target {
    /// Resolves the target of a caller's route: a dedicated endpoint for `/endpoints/...`;
    /// for `byok` keys, their own provider key, for the provider the path names or the model
    /// is pinned to (`pinned`); else the router (or the sandbox) with the gateway's token.
    pub async fn of(
        env: &Env,
        s: &Settings,
        caller: &Caller,
        route: &ProxyRoute,
        pinned: Option<&str>,
    ) -> Result<Target, GatewayError> {
        if let Some(name) = &route.endpoint {
            // the caller may use it (checked by the proxy); the endpoint's own token, or ours
            let ep = s.endpoints.get(name).ok_or(GatewayError::NotFound)?;
            let token = match &ep.token_secret {
                Some(var) => {
                    crate::edge::config::raw_var(env, var).filter(|t| !t.trim().is_empty()).ok_or_else(|| {
                        GatewayError::Misconfigured { setting: "ENDPOINTS", reason: format!("secret {var} is not set") }
                    })?
                }
                None => s.hf_token.as_ref().ok_or(GatewayError::UpstreamNotConfigured)?.expose().to_string(),
            };
            return Ok(Target::Url { base: ep.url.clone(), token, strip_prefix: Some(format!("/endpoints/{name}")) });
        }
        if caller.plan.byok {
            let on_path = route.provider.is_some();
            let provider = route.provider.as_deref().or(pinned).ok_or_else(|| {
                GatewayError::InvalidRequest(
                    "byok keys call a provider: by path (/{provider}/...) or with a model pinned to it (model:provider)"
                        .into(),
                )
            })?;
            let sealed = caller.record.provider_keys.get(provider).ok_or_else(|| {
                GatewayError::InvalidRequest(format!("this key holds no provider key for {provider}"))
            })?;
            let base = s.provider_urls.get(provider).cloned().ok_or_else(|| GatewayError::Misconfigured {
                setting: "PROVIDER_URLS",
                reason: format!("no URL for provider {provider}"),
            })?;
            let token = sealing::unseal(s, sealed).await?;
            let strip_prefix = on_path.then(|| format!("/{provider}"));
            return Ok(Target::Url { base, token, strip_prefix });
        }
        match &s.upstream {
            Upstream::Sandbox => Ok(Target::Sandbox),
            Upstream::Url { base, .. } => {
                let token = s.hf_token.as_ref().ok_or(GatewayError::UpstreamNotConfigured)?;
                Ok(Target::Url { base: base.clone(), token: token.expose().to_string(), strip_prefix: None })
            }
        }
    }

    /// Whether the call goes to a provider directly (a `byok` key's), not through the router.
    pub fn is_direct(&self, caller: &Caller, route: &ProxyRoute) -> bool {
        caller.plan.byok && route.endpoint.is_none() && matches!(self, Target::Url { .. })
    }
}

/// The credential an upstream 429 is about: one `byok` key's provider key, or the gateway's
/// token (as billed to one org, or to none).
pub fn credential(caller: &Caller, route: &ProxyRoute, pinned: Option<&str>) -> String {
    if let Some(name) = &route.endpoint {
        return format!("endpoint:{name}");
    }
    match (route.provider.as_deref().or(pinned), caller.plan.byok) {
        (Some(p), true) => format!("byok:{}:{p}", caller.record.id),
        _ => format!("hf:{}", caller.bill_to().unwrap_or("")),
    }
}

/// The caller's headers minus credentials, hop-by-hop and Cloudflare headers; plus the
/// gateway's own billing header for org keys.
pub fn upstream_headers(incoming: &Headers, bill_to: Option<&str>) -> Headers {
    let tokens = headers::connection_tokens(incoming.get("connection").ok().flatten().as_deref());
    let out = copy(incoming);
    for name in incoming.keys() {
        if !headers::forward_upstream(&name, &tokens) {
            let _ = out.delete(&name);
        }
    }
    if let Some(org) = bill_to {
        let _ = out.set("x-hf-bill-to", org);
    }
    out
}

pub fn downstream_headers(upstream: &Headers, meta: &Meta) -> Headers {
    let out = copy(upstream);
    for name in upstream.keys() {
        if !headers::forward_downstream(&name) {
            let _ = out.delete(&name);
        }
    }
    meta.apply(&out);
    out
}

/// A copy of `h` made by the runtime in one call (only names cross into wasm afterwards, to
/// delete what must not pass, rather than every name and value in and out again).
fn copy(h: &Headers) -> Headers {
    web_sys::Headers::new_with_headers(&h.0).map(Headers).unwrap_or_else(|_| Headers::new())
}

/// One upstream call, as sent on every attempt.
pub struct Outbound<'a> {
    pub target: &'a Target,
    pub route: &'a ProxyRoute,
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a Headers,
    pub body: Option<&'a Uint8Array>,
}

pub fn note_attempt(started: UnixMillis) {
    RETRY_BUDGET.with(|b| b.borrow_mut().deposit(started));
}

/// An upstream answer, with how it was reached: when its attempt started, how many retries
/// came before it and how long the gateway slept between them.
pub struct Sent {
    pub resp: Response,
    pub attempt_started: UnixMillis,
    pub retries: u32,
    pub waited_ms: u64,
}

/// No answer to give the caller: why, and whether upstream may have had the request (and
/// so may bill it). A connection lost before an answer cannot be told from one refused, so
/// it counts as reached.
pub struct NoAnswer {
    pub error: GatewayError,
    pub reached: bool,
}

impl NoAnswer {
    fn answered(error: GatewayError) -> NoAnswer {
        NoAnswer { error, reached: false }
    }
}

/// Sends the call, sleeping through upstream 429s whose wait fits the retry policy. A 429
/// given up on opens a cooldown for the route and credential, and so does a success whose
/// `RateLimit` says the quota behind it is spent. A 402 (the gateway's upstream account is
/// out of credits) is never retried. The response comes with the time its attempt started:
/// time-billed calls pay for upstream's time, not for the waits between attempts.
///
/// Retries stop at the call's deadline; an attempt in flight is waited for until
/// `give_up_at` (later than the deadline when the call's usage can still be learned after
/// its caller was answered), then aborted.
#[allow(clippy::too_many_arguments)]
pub async fn send_with_retries(
    env: &Env,
    ctx: &Rc<Context>,
    s: &Settings,
    out: &Outbound<'_>,
    started: UnixMillis,
    cooldown_key: &str,
    give_up_at: UnixMillis,
) -> Result<Sent, NoAnswer> {
    let mut attempt = 0u32;
    let mut waited_ms = 0u64;
    loop {
        let attempt_started = platform::now();
        let elapsed = attempt_started.millis_since(started);
        if elapsed >= s.retry.deadline_ms {
            return Err(NoAnswer::answered(GatewayError::UpstreamTimeout));
        }
        let resp = send_once(s, out, give_up_at.millis_since(attempt_started)).await?;
        let status = resp.status_code();
        let now = platform::now();
        if status == 402 {
            health::payment_required(env, ctx, now.0);
            return Err(NoAnswer::answered(GatewayError::UpstreamPaymentRequired));
        }
        if (200..300).contains(&status) {
            health::succeeded(env, ctx, now.0);
            let spent = resp.headers().get("ratelimit").ok().flatten().and_then(|v| retry::exhausted_for_ms(&v));
            if let Some(wait_ms) = spent.filter(|w| *w > 0) {
                // the quota behind this success is spent: the next calls wait here, not upstream
                open_cooldown(env, ctx, cooldown_key, wait_ms);
            }
            return Ok(Sent { resp, attempt_started, retries: attempt, waited_ms });
        }
        // only a 429 or a 503 is ever retried: no other status has its wait headers read
        let waited = if matches!(status, 429 | 503) {
            retry::upstream_wait(|n| resp.headers().get(n).ok().flatten(), now)
        } else {
            None
        };
        let throttled = status == 429 || (status == 503 && waited.is_some());
        if !throttled {
            return Ok(Sent { resp, attempt_started, retries: attempt, waited_ms });
        }
        let elapsed = now.millis_since(started);
        let wait = waited.map(|(ms, _)| ms);
        let decision =
            RETRY_BUDGET.with(|b| s.retry.decide(attempt, wait, elapsed, &mut b.borrow_mut(), now, &mut OsRng));
        match decision {
            RetryDecision::RetryAfter { wait_ms } => {
                platform::sleep_ms(wait_ms).await;
                waited_ms = waited_ms.saturating_add(wait_ms);
                attempt += 1;
            }
            RetryDecision::GiveUp { wait_ms } => {
                if status == 429 && wait_ms > 0 {
                    open_cooldown(env, ctx, cooldown_key, wait_ms);
                }
                return Err(NoAnswer::answered(GatewayError::UpstreamRateLimited { retry_after_ms: wait_ms }));
            }
        }
    }
}

/// Whether upstream's connection took the whole of a telling body (no telling body: it
/// may have).
fn body_sent(streamed: Option<&JsValue>) -> bool {
    streamed.is_none_or(|s| js_sys::Reflect::get(s, &JsValue::from_str("hfgateSent")).map_or(true, |v| v.is_truthy()))
}

/// Opens (or extends) the cooldown of a route and credential, here at once and for every
/// isolate after the response.
fn open_cooldown(env: &Env, ctx: &Context, cooldown_key: &str, wait_ms: u64) {
    let (env, key) = (env.clone(), cooldown_key.to_string());
    cooldown_do::note_locally(&key, wait_ms);
    ctx.wait_until(async move { cooldown_do::start(&env, &key, wait_ms).await });
}

async fn send_once(s: &Settings, out: &Outbound<'_>, left_ms: u64) -> Result<Response, NoAnswer> {
    let Outbound { target, route, query, method, headers, body } = *out;
    let (base, token, strip) = match target {
        Target::Sandbox => {
            let body = body.map(Uint8Array::to_vec).unwrap_or_default();
            return sandbox::respond(s, route, &body).await.map_err(NoAnswer::answered);
        }
        Target::Url { base, token, strip_prefix } => (base, token, strip_prefix),
    };
    let path = strip.as_deref().and_then(|p| route.path.strip_prefix(p)).unwrap_or(&route.path);
    let url = match query {
        Some(q) => format!("{base}{path}?{q}"),
        None => format!("{base}{path}"),
    };
    // The outbound headers are the call's own (built once by `upstream_headers`): the
    // credential is set on them, not on a copy, and fetch copies them into its request.
    let _ = headers.set("authorization", &format!("Bearer {token}"));
    // the runtime's own RequestInit and fetch: workers-rs's `RequestInit` converts its `cf`
    // options through serde-wasm-bindgen on every request, which the gateway never sets
    let controller = AbortController::default();
    let signal = controller.signal();
    let init = web_sys::RequestInit::new();
    init.set_method(method.as_ref());
    init.set_headers(headers.as_ref());
    init.set_signal(Some(&signal));
    // the body as a stream that says whether the connection took all of it (without the
    // entry module's helper, as in the wasm tests, the bytes themselves)
    let streamed = body.and_then(|b| telling_body(b).ok()).filter(|s| s.is_object());
    match (&streamed, body) {
        (Some(stream), _) => init.set_body(stream),
        // fetch copies a typed array body, so the same one serves every attempt
        (None, Some(body)) => init.set_body(body.as_ref()),
        (None, None) => {}
    }
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let send = async {
        let resp = JsFuture::from(global.fetch_with_str_and_init(&url, &init)).await?;
        Ok::<Response, JsValue>(resp.dyn_into::<web_sys::Response>()?.into())
    };
    let timer = platform::sleep_ms(left_ms);
    futures_util::pin_mut!(send);
    futures_util::pin_mut!(timer);
    match future::select(send, timer).await {
        Either::Left((Ok(resp), _)) => Ok(resp),
        // the runtime says "Network connection lost" whether the connection was refused or
        // dropped after the request went out: upstream may have it only if it took the whole
        // body (unknown without the telling stream: then it may)
        Either::Left((Err(_), _)) => Err(NoAnswer {
            error: GatewayError::UpstreamError("could not reach upstream".into()),
            reached: body_sent(streamed.as_ref()),
        }),
        Either::Right(_) => {
            controller.abort();
            Err(NoAnswer { error: GatewayError::UpstreamTimeout, reached: body_sent(streamed.as_ref()) })
        }
    }
}
