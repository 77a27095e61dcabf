//! Where a call goes upstream and how it is retried: the target (router, sandbox or a
//! `byok` key's provider), the headers both ways, one attempt under the call's deadline, and
//! the retry loop that sleeps through short upstream 429s and opens a cooldown on long ones.

use crate::core::caller::Caller;
use crate::core::error::GatewayError;
use crate::core::headers::{self, Edits};
use crate::core::paths::ProxyRoute;
use crate::core::retry::{self, RetryBudget, RetryDecision};
use crate::core::settings::{Settings, Upstream};
use crate::core::time::UnixMillis;
use crate::edge::platform::{self, OsRng};
use crate::edge::{cooldown_do, header_edits, health, sandbox, sealing};
use js_sys::Uint8Array;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use worker::{AbortController, Context, Env, Headers, Method};

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
    let mut edits = Edits::default();
    for token in headers::connection_tokens(incoming.get("connection").ok().flatten().as_deref()) {
        edits.delete(&token);
    }
    if let Some(org) = bill_to {
        edits.set("x-hf-bill-to", org);
    }
    Headers(header_edits::copy_dropping_then_edit(&incoming.0, header_edits::Direction::Upstream, &edits))
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
    pub resp: web_sys::Response,
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
/// Retries stop at the call's deadline. There is no timer here: the caller races the whole
/// of it against its own deadlines, and when it gives up, `InFlight::give_up` aborts the
/// attempt in flight and says whether upstream may have it.
pub async fn send_with_retries(
    env: &Env,
    ctx: &Rc<Context>,
    s: &Settings,
    out: &Outbound<'_>,
    started: UnixMillis,
    cooldown_key: &str,
    in_flight: &InFlight,
) -> Result<Sent, NoAnswer> {
    let mut attempt = 0u32;
    let mut waited_ms = 0u64;
    loop {
        let attempt_started = platform::now();
        let elapsed = attempt_started.millis_since(started);
        if elapsed >= s.retry.deadline_ms {
            return Err(NoAnswer::answered(GatewayError::UpstreamTimeout));
        }
        let resp = send_once(s, out, in_flight).await?;
        let status = resp.status();
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

/// Whether an upstream that gave no answer may have had the request: the runtime says
/// "Network connection lost" whether a connection was refused or dropped after the request
/// went out, so it is asked again, for nothing (`HEAD` of its base URL, without a
/// credential, a second at most). Only an upstream that refuses that too is down, and had
/// nothing; one that answers is up, and one that takes the connection but stays silent took
/// the call's too: either may have had the call, which is charged in full.
pub async fn may_have_had_it(target: &Target) -> bool {
    let Target::Url { base, .. } = target else { return true };
    let init = web_sys::RequestInit::new();
    init.set_method("HEAD");
    platform::within(PROBE_MS, async { Some(platform::fetch(base, &init).await.is_some()) }).await.unwrap_or(true)
}

/// How long `may_have_had_it` waits for its answer.
const PROBE_MS: u64 = 1_000;

/// Opens (or extends) the cooldown of a route and credential, here at once and for every
/// isolate after the response.
fn open_cooldown(env: &Env, ctx: &Context, cooldown_key: &str, wait_ms: u64) {
    let (env, key) = (env.clone(), cooldown_key.to_string());
    cooldown_do::note_locally(&key, wait_ms);
    ctx.wait_until(async move { cooldown_do::start(&env, &key, wait_ms).await });
}

/// The attempt a call has in flight upstream, if any, to abort it.
#[derive(Default)]
pub struct InFlight(RefCell<Option<AbortController>>);

impl InFlight {
    /// Aborts the attempt in flight (the call was given up); says whether there was one.
    /// None in flight (the call was between attempts): the last one was answered.
    pub fn give_up(&self) -> bool {
        match self.0.borrow_mut().take() {
            Some(controller) => {
                controller.abort();
                true
            }
            None => false,
        }
    }
}

async fn send_once(s: &Settings, out: &Outbound<'_>, in_flight: &InFlight) -> Result<web_sys::Response, NoAnswer> {
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
    if let Some(body) = body {
        // fetch copies a typed array body, so the same one serves every attempt
        init.set_body(body.as_ref());
    }
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let fetching = JsFuture::from(global.fetch_with_str_and_init(&url, &init));
    *in_flight.0.borrow_mut() = Some(controller);
    let answer = fetching.await;
    in_flight.0.borrow_mut().take();
    match answer.and_then(|r| r.dyn_into::<web_sys::Response>()) {
        Ok(resp) => Ok(resp),
        // refused, or dropped after the request went out: asked again, for nothing
        Err(_) => Err(NoAnswer {
            error: GatewayError::UpstreamError("could not reach upstream".into()),
            reached: may_have_had_it(target).await,
        }),
    }
}
