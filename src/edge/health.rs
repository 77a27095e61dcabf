//! What `/healthz` says of the upstream: its host, or `payment_required` from an upstream 402
//! until a call succeeds again.
//!
//! An isolate knows the 402s and successes it saw itself; the newest 402 is also kept in KV
//! (`health:upstream_402`, its time), so isolates that did not see it report it too. A
//! success newer than that time clears it. The hot path only sets a number on success; KV
//! is written on a 402 and when a success clears one, and read by `/healthz`.

use crate::edge::kv;
use crate::edge::stats::{self, Counter};
use std::cell::Cell;
use worker::{Context, Env};

const KEY: &str = "health:upstream_402";
/// A 402 nobody cleared is forgotten after a day (KV's expiry), as the isolate's own is not.
const KEEP_SECS: u64 = 86_400;

thread_local! {
    static LAST_402: Cell<u64> = const { Cell::new(0) };
    static LAST_OK: Cell<u64> = const { Cell::new(0) };
    /// The newest 402 time this isolate has seen in KV.
    static SEEN_IN_KV: Cell<u64> = const { Cell::new(0) };
}

/// Upstream answered 402 at `now`.
pub fn payment_required(env: &Env, ctx: &Context, now: u64) {
    stats::bump(Counter::UpstreamPaymentRequired);
    LAST_402.with(|c| c.set(now));
    SEEN_IN_KV.with(|c| c.set(now));
    let env = env.clone();
    ctx.wait_until(async move {
        let _ = kv::put_text(&env, KEY, &now.to_string(), Some(KEEP_SECS)).await;
    });
}

/// Upstream answered a call with success at `now`.
pub fn succeeded(env: &Env, ctx: &Context, now: u64) {
    let before = LAST_OK.with(|c| c.replace(now));
    let known_402 = LAST_402.with(Cell::get).max(SEEN_IN_KV.with(Cell::get));
    if known_402 > before {
        // this success clears a 402 this isolate knew of, here and in KV
        let env = env.clone();
        ctx.wait_until(async move {
            let _ = kv::delete(&env, KEY).await;
        });
    }
}

/// Whether the upstream's last word on payment was a 402 (for `/healthz`).
pub async fn payment_is_required(env: &Env) -> bool {
    let stored = kv::get_text(env, KEY).await.ok().flatten().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0);
    SEEN_IN_KV.with(|c| c.set(c.get().max(stored)));
    let newest_402 = LAST_402.with(Cell::get).max(stored);
    newest_402 > LAST_OK.with(Cell::get)
}
