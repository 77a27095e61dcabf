//! Upstream cooldowns: when a provider answers 429 for a model, calls to that route are
//! answered at once with the remaining wait, by every edge instance, until it passes.
//!
//! One Durable Object per route holds the deadline. Each isolate keeps what it learned for up
//! to `RECHECK_MS`, so a busy route costs at most one Durable Object read per isolate per
//! second, and the isolate that saw the 429 knows it immediately.

use crate::core::protocol::{self, CooldownOp};
use crate::core::sorted::SortedMap;
use crate::core::time::UnixMillis;
use crate::edge::objects;
use crate::edge::platform;
use std::cell::{Cell, RefCell};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::{durable_object, Context, DurableObject, Env, Request, Response, Result, State};

const RECHECK_MS: u64 = 1_000;
const MAX_ROUTES: usize = 4_096;

// `fetch` only: see `account_do::Account`.
#[durable_object(fetch)]
pub struct Cooldown {
    state: State,
    until: Cell<Option<UnixMillis>>,
}

impl DurableObject for Cooldown {
    fn new(state: State, _env: Env) -> Self {
        Cooldown { state, until: Cell::new(None) }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        objects::serve_fetch(req, |text| self.rpc_op(text)).await
    }
}

/// The object's RPC side (`objects::send`).
#[wasm_bindgen]
impl Cooldown {
    #[wasm_bindgen(js_name = op)]
    pub async fn rpc_op(&self, message: String) -> std::result::Result<String, JsValue> {
        objects::serve::<protocol::Cooldown, _, _>(&message, |op| self.answer(op)).await
    }
}

impl Cooldown {
    async fn answer(&self, op: CooldownOp) -> Result<UnixMillis> {
        let current = match self.until.get() {
            Some(u) => u,
            None => {
                let stored = objects::stored_u64(&self.state, "until").await?;
                let u = UnixMillis(stored.unwrap_or(0));
                self.until.set(Some(u));
                u
            }
        };
        if let CooldownOp::Extend { until } = op {
            if until > current {
                self.until.set(Some(until));
                objects::store_u64(&self.state, "until", until.0).await?;
            }
        }
        Ok(self.until.get().unwrap_or(current))
    }
}

thread_local! {
    /// route -> (cooldown deadline, when this isolate last asked)
    static KNOWN: RefCell<SortedMap<String, (UnixMillis, UnixMillis)>> = RefCell::new(SortedMap::new());
}

fn remember(route: &str, until: UnixMillis, now: UnixMillis) {
    KNOWN.with(|k| {
        let mut k = k.borrow_mut();
        if k.len() >= MAX_ROUTES {
            k.retain(|_, (u, _)| *u > now);
        }
        let e = k.get_or_insert_with(route.to_string(), || (until, now));
        e.0 = e.0.max(until);
        e.1 = now;
    });
}

async fn ask(env: &Env, route: &str, set: Option<UnixMillis>) -> Option<UnixMillis> {
    let op = match set {
        Some(until) => CooldownOp::Extend { until },
        None => CooldownOp::Read,
    };
    objects::call::<protocol::Cooldown>(env, route, &op).await.ok()
}

/// The remaining cooldown of a route in milliseconds, if one is running. A cooldown that
/// cannot be read is treated as none: it is an optimisation, never a reason to refuse. So
/// only a route this isolate has never asked about waits for the object; one it asked about
/// more than `RECHECK_MS` ago is answered from what it knows, and asked again beside the
/// call, so a warm route costs a call no round trip.
pub async fn remaining(env: &Env, ctx: &Context, route: &str) -> Option<u64> {
    let now = platform::now();
    if let Some((until, checked)) = KNOWN.with(|k| k.borrow().get(route).copied()) {
        if until > now {
            return Some(until.millis_since(now));
        }
        if now.millis_since(checked) >= RECHECK_MS {
            // asked again in the background, once: marked as asked now
            remember(route, until, now);
            let (env, route) = (env.clone(), route.to_string());
            ctx.wait_until(async move {
                let until = ask(&env, &route, None).await.unwrap_or_default();
                remember(&route, until, platform::now());
            });
        }
        return None;
    }
    let until = ask(env, route, None).await.unwrap_or_default();
    let now = platform::now();
    remember(route, until, now);
    (until > now).then(|| until.millis_since(now))
}

/// Notes a cooldown in this isolate at once, before the Durable Object has heard of it.
pub fn note_locally(route: &str, wait_ms: u64) {
    let now = platform::now();
    remember(route, now.saturating_add_ms(wait_ms), now);
}

/// Starts (or extends) a route's cooldown for `wait_ms`, here at once and for everyone via
/// the Durable Object.
pub async fn start(env: &Env, route: &str, wait_ms: u64) {
    let now = platform::now();
    let until = now.saturating_add_ms(wait_ms);
    remember(route, until, now);
    let _ = ask(env, route, Some(until)).await;
}
