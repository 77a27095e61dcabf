//! The live price book at the edge: read from the upstream's `/v1/models`, kept in KV for
//! every isolate, and in each isolate's memory for its calls.
//!
//! A call never waits on a refresh it does not need: a book in memory is used as it is, and
//! when it is older than `PRICE_BOOK_TTL_SECONDS` one refresh runs beside the call (in its
//! `wait_until`). Only an isolate with no book at all waits, once, for KV or, when KV has
//! none either, for the upstream. A failed fetch is not retried for a minute; meanwhile calls
//! are priced by `PRICES` and its `"*"`, which is what the book would fall back to anyway.
//! The cron trigger (`scheduled`) and `POST /admin/prices/refresh` refresh it on purpose.

use crate::core::error::GatewayError;
use crate::core::price_book::PriceBook;
use crate::core::settings::{Settings, Upstream};
use crate::core::time::UnixMillis;
use crate::edge::{kv, platform, sandbox};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use worker::{Context, Env};

/// Where the book is kept in KV.
const KEY: &str = "prices:book";
/// After a failed fetch, no other is tried for this long.
const RETRY_AFTER_MS: u64 = 60_000;
/// A fetch of `/v1/models` gets this long.
const FETCH_DEADLINE_MS: u64 = 5_000;

thread_local! {
    static BOOK: RefCell<Option<Rc<PriceBook>>> = const { RefCell::new(None) };
    /// A refresh by this isolate is under way.
    static REFRESHING: Cell<bool> = const { Cell::new(false) };
    /// When this isolate's last refresh failed (0: it did not).
    static FAILED_AT: Cell<u64> = const { Cell::new(0) };
}

fn cached() -> Option<Rc<PriceBook>> {
    BOOK.with(|b| b.borrow().clone())
}

fn keep(book: PriceBook) -> Rc<PriceBook> {
    let book = Rc::new(book);
    BOOK.with(|b| *b.borrow_mut() = Some(book.clone()));
    book
}

/// Whether a call may start a refresh: none is under way here, and none failed lately.
fn may_try(now: UnixMillis) -> bool {
    let failed = FAILED_AT.with(Cell::get);
    !REFRESHING.with(Cell::get) && (failed == 0 || now.millis_since(UnixMillis(failed)) >= RETRY_AFTER_MS)
}

/// The book a call is priced with, if there is one.
pub async fn book(env: &Env, ctx: &Context, s: &Settings) -> Option<Rc<PriceBook>> {
    let now = platform::now();
    if let Some(book) = cached() {
        if book.is_stale(now, s.price_book_ttl_ms) && may_try(now) {
            // KV may already hold a fresher book (another isolate, or the cron, refreshed it)
            refresh_beside(env, ctx, s, true);
        }
        return Some(book);
    }
    if !may_try(now) {
        return None;
    }
    // no book in this isolate: KV's, if it has one (refreshed beside the call if stale)
    if let Some(stored) = stored(env).await {
        let stale = stored.is_stale(now, s.price_book_ttl_ms);
        let book = keep(stored);
        if stale {
            refresh_beside(env, ctx, s, false);
        }
        return Some(book);
    }
    refresh(env, s).await.ok()
}

/// Refreshes the book beside the call, in its `wait_until`: one refresh at a time, marked
/// before it is spawned and cleared however it ends. With `kv_first`, a fresh book in KV
/// is taken instead of reading upstream.
fn refresh_beside(env: &Env, ctx: &Context, s: &Settings, kv_first: bool) {
    REFRESHING.with(|c| c.set(true));
    let (env, s) = (env.clone(), s.clone());
    ctx.wait_until(async move {
        let fresh = if kv_first {
            stored(&env).await.filter(|b| !b.is_stale(platform::now(), s.price_book_ttl_ms))
        } else {
            None
        };
        match fresh {
            Some(book) => drop(keep(book)),
            None => drop(refresh(&env, &s).await),
        }
        REFRESHING.with(|c| c.set(false));
    });
}

async fn stored(env: &Env) -> Option<PriceBook> {
    let text = kv::get_text(env, KEY).await.ok().flatten()?;
    PriceBook::from_json(&text).ok()
}

/// Reads `/v1/models` upstream now, and keeps the book in KV and in this isolate.
pub async fn refresh(env: &Env, s: &Settings) -> Result<Rc<PriceBook>, GatewayError> {
    let fetched = match fetch_models(s).await {
        Ok(body) => PriceBook::from_router_models(&body, platform::now())
            .map_err(|e| GatewayError::UpstreamError(format!("/v1/models did not parse: {e}"))),
        Err(e) => Err(e),
    };
    let book = match fetched {
        Ok(book) => book,
        Err(e) => {
            FAILED_AT.with(|c| c.set(platform::now().0.max(1)));
            return Err(e);
        }
    };
    FAILED_AT.with(|c| c.set(0));
    // the book still serves this isolate if KV refuses it
    let _ = kv::put_text(env, KEY, &book.to_json(), None).await;
    Ok(keep(book))
}

/// The book as this isolate holds it, or as KV has it.
pub async fn current(env: &Env) -> Option<Rc<PriceBook>> {
    if let Some(b) = cached() {
        return Some(b);
    }
    stored(env).await.map(keep)
}

async fn fetch_models(s: &Settings) -> Result<Vec<u8>, GatewayError> {
    let (base, token) = match &s.upstream {
        Upstream::Sandbox => return Ok(sandbox::models_body(s)),
        Upstream::Url { base, .. } => (base, s.hf_token.as_ref()),
    };
    let headers = web_sys::Headers::new().map_err(|_| GatewayError::Internal("headers"))?;
    if let Some(t) = token {
        let _ = headers.set("authorization", &format!("Bearer {}", t.expose()));
    }
    // says who asks: the gateway itself, for its price book (not a caller's listing)
    let _ = headers.set("user-agent", concat!("hf-gate/", env!("CARGO_PKG_VERSION"), " price-book"));
    let init = web_sys::RequestInit::new();
    init.set_method("GET");
    init.set_headers(headers.as_ref());
    let url = format!("{base}/v1/models");
    let fetched = platform::within(FETCH_DEADLINE_MS, async {
        let resp = platform::fetch(&url, &init).await.filter(web_sys::Response::ok)?;
        crate::edge::body_io::whole(resp.array_buffer()).await.ok()
    });
    match fetched.await {
        Some(body) => Ok(body),
        _ => Err(GatewayError::UpstreamError("the upstream's /v1/models could not be read".into())),
    }
}
