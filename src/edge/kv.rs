//! Key and organisation records in KV, with a small per-isolate cache.
//!
//! Layout: `k:<digest>` -> key record, `id:<key id>` -> digest, `org:<id>` -> org record.
//! A record read here has its sealed provider keys bound to it (`KeyRecord::bind_sealed`).
//! The cache is safe because nothing that must be immediate depends on it: revocation and
//! policy changes are enforced by the account Durable Object, which holds the newest version
//! and tells the edge when its copy is stale.

use crate::core::error::GatewayError;
use crate::core::keys::{digest_prefix, KeyRecord, OrgRecord};
use crate::core::time::UnixMillis;
use crate::edge::stats::{self, Counter};
use crate::edge::{platform, registry_do};
use std::cell::RefCell;
use std::collections::HashMap;
use worker::kv::KvStore;
use worker::Env;

/// The origins browser keys allow live in the key registry now (one serialised object, so
/// concurrent key creations cannot lose one); re-exported here for the preflight.
pub use crate::edge::registry_do::browser_origins;

pub const BINDING: &str = "GATEWAY_KV";
/// How long a known record is served from memory.
const HIT_TTL_MS: u64 = 60_000;
/// How long an unknown key is remembered as unknown. Made-up keys rarely get this far: the
/// key registry refuses them without a KV read. A key created meanwhile is found at most
/// 10 s late (the admin API clears this cache in its own isolate at once).
const MISS_TTL_MS: u64 = 10_000;
const MAX_ENTRIES: usize = 10_000;

#[derive(Clone)]
enum Cached<T> {
    Hit(T),
    Miss,
}

struct Cache<T> {
    entries: HashMap<String, (Cached<T>, UnixMillis)>,
}

impl<T: Clone> Cache<T> {
    fn new() -> Self {
        Cache { entries: HashMap::new() }
    }

    fn get(&self, k: &str, now: UnixMillis) -> Option<Cached<T>> {
        let (v, at) = self.entries.get(k)?;
        let ttl = if matches!(v, Cached::Hit(_)) { HIT_TTL_MS } else { MISS_TTL_MS };
        (now.millis_since(*at) < ttl).then(|| v.clone())
    }

    fn put(&mut self, k: &str, v: Cached<T>, now: UnixMillis) {
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.retain(|_, (_, at)| now.millis_since(*at) < MISS_TTL_MS);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(k.to_string(), (v, now));
    }
}

thread_local! {
    static KEYS: RefCell<Cache<KeyRecord>> = RefCell::new(Cache::new());
    static ORGS: RefCell<Cache<OrgRecord>> = RefCell::new(Cache::new());
}

fn store(env: &Env) -> Result<KvStore, GatewayError> {
    env.kv(BINDING)
        .map_err(|_| GatewayError::Misconfigured { setting: BINDING, reason: "KV namespace binding is missing".into() })
}

fn unavailable<E>(_: E) -> GatewayError {
    GatewayError::KeyStoreUnavailable
}

/// The record of a key by the digest of its secret, from memory or KV.
pub async fn key_by_digest(env: &Env, digest: &str) -> Result<Option<KeyRecord>, GatewayError> {
    let now = platform::now();
    match KEYS.with(|c| c.borrow().get(digest, now)) {
        Some(Cached::Hit(r)) => {
            stats::bump(Counter::KeyCacheHits);
            return Ok(Some(r));
        }
        Some(Cached::Miss) => {
            stats::bump(Counter::NegativeCacheHits);
            return Ok(None);
        }
        None => {}
    }
    if !registry_do::may_exist(env, digest_prefix(digest)).await {
        KEYS.with(|c| c.borrow_mut().put(digest, Cached::Miss, now));
        return Ok(None);
    }
    stats::bump(Counter::KvKeyReads);
    let found = get_json::<KeyRecord>(&store(env)?, &format!("k:{digest}")).await?.map(KeyRecord::bind_sealed);
    let entry = found.clone().map_or(Cached::Miss, Cached::Hit);
    KEYS.with(|c| c.borrow_mut().put(digest, entry, now));
    Ok(found)
}

/// Forgets a cached key (its policy changed, or the ledger said our copy is stale).
pub fn forget_key(digest: &str) {
    KEYS.with(|c| c.borrow_mut().entries.remove(digest));
}

pub async fn key_by_id(env: &Env, id: &str) -> Result<Option<KeyRecord>, GatewayError> {
    let kv = store(env)?;
    let Some(digest) = kv.get(&format!("id:{id}")).text().await.map_err(unavailable)? else {
        return Ok(None);
    };
    Ok(get_json::<KeyRecord>(&kv, &format!("k:{digest}")).await?.map(KeyRecord::bind_sealed))
}

pub async fn put_key(env: &Env, record: &KeyRecord) -> Result<(), GatewayError> {
    let kv = store(env)?;
    let json = serde_json::to_string(record).map_err(|_| GatewayError::Internal("the record could not be written"))?;
    kv.put(&format!("k:{}", record.digest), json).map_err(unavailable)?.execute().await.map_err(unavailable)?;
    kv.put(&format!("id:{}", record.id), record.digest.as_str())
        .map_err(unavailable)?
        .execute()
        .await
        .map_err(unavailable)?;
    forget_key(&record.digest);
    Ok(())
}

/// Every key id, in KV's order.
pub async fn key_ids(env: &Env) -> Result<Vec<String>, GatewayError> {
    list(env, "id:").await
}

pub async fn org(env: &Env, id: &str) -> Result<Option<OrgRecord>, GatewayError> {
    let now = platform::now();
    match ORGS.with(|c| c.borrow().get(id, now)) {
        Some(Cached::Hit(r)) => return Ok(Some(r)),
        Some(Cached::Miss) => return Ok(None),
        None => {}
    }
    let found: Option<OrgRecord> = get_json(&store(env)?, &format!("org:{id}")).await?;
    let entry = found.clone().map_or(Cached::Miss, Cached::Hit);
    ORGS.with(|c| c.borrow_mut().put(id, entry, now));
    Ok(found)
}

pub async fn put_org(env: &Env, record: &OrgRecord) -> Result<(), GatewayError> {
    let json = serde_json::to_string(record).map_err(|_| GatewayError::Internal("the record could not be written"))?;
    store(env)?.put(&format!("org:{}", record.id), json).map_err(unavailable)?.execute().await.map_err(unavailable)?;
    forget_org(&record.id);
    Ok(())
}

pub fn forget_org(id: &str) {
    ORGS.with(|c| c.borrow_mut().entries.remove(id));
}

pub async fn org_ids(env: &Env) -> Result<Vec<String>, GatewayError> {
    list(env, "org:").await
}

/// A JSON value from KV, parsed by serde_json (not the runtime's JSON.parse, which rounds
/// large integers to doubles).
async fn get_json<T: serde::de::DeserializeOwned>(kv: &KvStore, key: &str) -> Result<Option<T>, GatewayError> {
    match kv.get(key).text().await.map_err(unavailable)? {
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|_| GatewayError::Internal("a stored record could not be read")),
        None => Ok(None),
    }
}

async fn list(env: &Env, prefix: &str) -> Result<Vec<String>, GatewayError> {
    let kv = store(env)?;
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = kv.list().prefix(prefix.to_string());
        if let Some(c) = cursor.take() {
            q = q.cursor(c);
        }
        let page = q.execute().await.map_err(unavailable)?;
        out.extend(page.keys.into_iter().filter_map(|k| k.name.strip_prefix(prefix).map(str::to_string)));
        match page.cursor {
            Some(c) if !page.list_complete => cursor = Some(c),
            _ => break,
        }
    }
    Ok(out)
}
