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
}

const NAMES: [&str; 7] = [
    "kv_key_reads",
    "key_cache_hits",
    "negative_cache_hits",
    "unknown_keys_refused_by_registry",
    "registry_reads",
    "admin_auth_failures",
    "admin_throttled",
];

thread_local! {
    static COUNTS: [Cell<u64>; 7] = Default::default();
}

pub fn bump(c: Counter) {
    COUNTS.with(|counts| {
        let cell = &counts[c as usize];
        cell.set(cell.get().saturating_add(1));
    });
}

/// The counters as a JSON object.
pub fn snapshot() -> serde_json::Value {
    COUNTS.with(|counts| {
        let map: serde_json::Map<String, serde_json::Value> =
            NAMES.iter().zip(counts.iter()).map(|(n, c)| (n.to_string(), c.get().into())).collect();
        serde_json::Value::Object(map)
    })
}
