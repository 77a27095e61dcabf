//! Per-isolate counters of the work the gateway does on the hot path, shown by
//! `GET /admin/stats`: what operators (and the hardening tests) look at to see that caches
//! and the key registry spare KV and the Durable Objects.

use std::cell::Cell;

#[derive(Clone, Copy, Debug)]
pub enum Counter {
    KvKeyReads,
    KeyCacheHits,
    NegativeCacheHits,
    UnknownKeyRefusedByRegistry,
    RegistryReads,
    AdminAuthFailures,
    AdminThrottled,
    /// Upstream answered 402: the gateway's upstream account is out of credits.
    UpstreamPaymentRequired,
}

const NAMES: [&str; 8] = [
    "kv_key_reads",
    "key_cache_hits",
    "negative_cache_hits",
    "unknown_keys_refused_by_registry",
    "registry_reads",
    "admin_auth_failures",
    "admin_throttled",
    "upstream_payment_required",
];

thread_local! {
    static COUNTS: [Cell<u64>; 8] = Default::default();
}

pub fn bump(c: Counter) {
    COUNTS.with(|counts| {
        let cell = &counts[c as usize];
        cell.set(cell.get().saturating_add(1));
    });
}

/// The counters as a JSON object, with this isolate's memory: the wasm heap's size (it only
/// grows) and the request body bytes held now.
pub fn snapshot() -> serde_json::Value {
    COUNTS.with(|counts| {
        // inserted one by one: `collect` into the map brings the standard stable sort along
        let mut map = serde_json::Map::new();
        for (n, c) in NAMES.iter().zip(counts.iter()) {
            map.insert(n.to_string(), c.get().into());
        }
        map.insert("wasm_memory_bytes".into(), wasm_memory_bytes().into());
        map.insert("request_body_bytes_held".into(), crate::edge::body_io::held_bytes().into());
        serde_json::Value::Object(map)
    })
}

fn wasm_memory_bytes() -> u64 {
    let buffer = js_sys::Reflect::get(&wasm_bindgen::memory(), &wasm_bindgen::JsValue::from_str("buffer"));
    buffer
        .ok()
        .and_then(|b| js_sys::Reflect::get(&b, &wasm_bindgen::JsValue::from_str("byteLength")).ok())
        .and_then(|n| n.as_f64())
        .map_or(0, |n| n as u64)
}
