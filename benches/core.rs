//! `cargo bench`: what the core decisions cost per call, natively. A tiny harness (no
//! criterion: nothing to add to the lock file for this): each case runs for about 300 ms
//! in five rounds; the median round's nanoseconds per call are printed.
#![allow(clippy::unwrap_used)] // a benchmark, not a request path

use hf_gate::core::account::{AccountPolicy, AccountState, AdmitRequest, Cost, KeyPolicy};
use hf_gate::core::body::{apply, inspect};
use hf_gate::core::gcra::{check, Quota, Tat};
use hf_gate::core::keys::RateLimit;
use hf_gate::core::keys::{bearer_key, digest};
use hf_gate::core::ledger::{Budget, Ledger, MicroUsd, OnExhausted};
use hf_gate::core::paths::route;
use hf_gate::core::paths::Api;
use hf_gate::core::retry::upstream_wait;
use hf_gate::core::sse::SseMeter;
use hf_gate::core::time::UnixMillis;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn bench(name: &str, mut f: impl FnMut(u64)) {
    // calibrate: how many calls fit in ~60 ms
    let mut n = 1u64;
    loop {
        let t = Instant::now();
        for i in 0..n {
            f(i);
        }
        if t.elapsed() > Duration::from_millis(60) {
            break;
        }
        n *= 2;
    }
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    rounds.sort_by(|a, b| a.total_cmp(b));
    println!("{name:<44} {:>10.1} ns/call", rounds[2]);
}

fn main() {
    const NOW: u64 = 1_795_352_400_000;
    let q = Quota::new(600, 50).unwrap();
    let mut tat = Tat::default();
    bench("gcra::check (allowed)", |i| {
        if let Ok((t, _)) = check(black_box(q), black_box(tat), black_box(UnixMillis(NOW + i * 100)), 1) {
            tat = t;
        }
    });

    let budget = Budget { credit: MicroUsd(u64::MAX / 2), on_exhausted: OnExhausted::Payg, cap: None };
    let mut ledger = Ledger::new(UnixMillis(NOW));
    bench("ledger reserve + settle", |i| {
        let now = UnixMillis(NOW + i);
        let id = ledger.reserve(now, MicroUsd(1_000), &budget, 60_000).unwrap();
        black_box(ledger.settle(now, id, MicroUsd(700)));
    });

    let policy = AccountPolicy {
        version: 1,
        budget,
        rate: RateLimit { rpm: 6_000_000, burst: 100_000 },
        provider_billed: false,
    };
    let key =
        KeyPolicy { key_id: "key_abcdefghijklmnop".into(), version: 1, revoked: false, rate: None, ceiling: None };
    let mut account = AccountState::new(UnixMillis(NOW));
    bench("account admit (throttle + reserve) + settle", |i| {
        let now = UnixMillis(NOW + i);
        let req = AdmitRequest {
            key: key.clone(),
            account: policy,
            cost: Cost::Fixed { amount: MicroUsd(1_000) },
            ttl_ms: 60_000,
            lease: None,
        };
        if let hf_gate::core::account::Admission::Admitted { reservation: Some(r), .. } = account.admit(req, now) {
            black_box(account.settle(r, MicroUsd(700), now));
        }
    });

    let headers = [("retry-after", "30"), ("retry-after-ms", ""), ("ratelimit", "")];
    bench("retry::upstream_wait (Retry-After: 30)", |_| {
        black_box(upstream_wait(
            |n| headers.iter().find(|(k, v)| *k == n && !v.is_empty()).map(|(_, v)| v.to_string()),
            UnixMillis(NOW),
        ));
    });
    bench("retry::upstream_wait (HTTP-date)", |_| {
        black_box(upstream_wait(
            |n| (n == "retry-after").then(|| "Sun, 06 Nov 2094 08:49:37 GMT".to_string()),
            UnixMillis(NOW),
        ));
    });

    let secret = "hfg_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
    bench("keys::bearer_key + digest (SHA-256)", |_| {
        black_box(digest(
            bearer_key(black_box("Bearer hfg_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG")).unwrap_or(secret),
        ));
    });

    bench("paths::route (/together/v1/chat/completions)", |_| {
        black_box(route(black_box("/together/v1/chat/completions")).is_ok());
    });

    let body = br#"{"model":"meta-llama/Llama-3.1-8B-Instruct","stream":true,"messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Write a haiku about edge gateways and credits."}]}"#;
    bench("body::inspect + bounded upstream body (chat, 200 B)", |_| {
        let shape = inspect(black_box(body), Api::Chat, 16_384).unwrap();
        black_box(apply(body, &shape.edits(1024)));
    });

    let chunk = format!(
        "data: {}\n\n",
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}]}"#
    );
    let mut meter = SseMeter::new(Api::Chat, true);
    bench("sse::SseMeter::feed (one content chunk)", |_| {
        black_box(meter.feed(chunk.as_bytes()));
    });
}
