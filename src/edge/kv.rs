//! Key and organisation records in KV, with a small per-isolate cache.
//!
//! Layout: `k:<digest>` -> key record, `id:<key id>` -> digest, `ok:<org id>:<key id>` -> digest
//! (an org's keys), `org:<id>` -> org record. The `id:`, `ok:` and `org:` entries carry the
//! record's summary as metadata, so a page of a list is one KV list call.
//! A record read here has its sealed provider keys bound to it (`KeyRecord::bind_sealed`).
//! What the per-isolate cache believes, and for how long, is `core::record_cache`.

use crate::core::error::GatewayError;
use crate::core::keys::{KeyRecord, OrgRecord};
use crate::core::record_cache::{Cache, Cached};
use crate::core::wire::{self, FromJson};
use crate::edge::platform;
use crate::edge::stats::{self, Counter};
use js_sys::{Array, Function, Object, Promise, Reflect};
use std::cell::RefCell;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::Env;

use crate::edge::config::KV_BINDING as BINDING;

/// The prefixes of the lists: every key (by id), every org.
pub const ALL_KEYS: &str = "id:";
pub const ALL_ORGS: &str = "org:";

/// The prefix of one org's keys.
pub fn org_keys(org: &str) -> String {
    format!("ok:{org}:")
}
thread_local! {
    static KEYS: RefCell<Cache<KeyRecord>> = RefCell::new(Cache::new());
    static ORGS: RefCell<Cache<OrgRecord>> = RefCell::new(Cache::new());
}

fn missing() -> GatewayError {
    GatewayError::Misconfigured { setting: BINDING, reason: "KV namespace binding is missing".into() }
}

fn unavailable<E>(_: E) -> GatewayError {
    GatewayError::KeyStoreUnavailable
}

/// What this isolate's cache holds for a key's digest: `Some(Some(record))`, `Some(None)`
/// (known not to exist, for a while), or `None` (not cached: ask).
pub fn cached_key(digest: &str) -> Option<Option<KeyRecord>> {
    match KEYS.with(|c| c.borrow().get(digest, platform::now()))? {
        Cached::Hit(r) => {
            stats::bump(Counter::KeyCacheHits);
            Some(Some(r))
        }
        Cached::Miss => {
            stats::bump(Counter::NegativeCacheHits);
            Some(None)
        }
    }
}

/// Remembers that no key has this digest (the registry said so), for the negative cache's
/// while.
pub fn note_absent(digest: &str) {
    KEYS.with(|c| c.borrow_mut().put(digest, Cached::Miss, platform::now()));
}

/// The record of a key by the digest of its secret, read from KV and cached, found or not.
pub async fn read_key(env: &Env, digest: &str) -> Result<Option<KeyRecord>, GatewayError> {
    stats::bump(Counter::KvKeyReads);
    let found = get_json::<KeyRecord>(&binding(env)?, &format!("k:{digest}")).await?.map(KeyRecord::bind_sealed);
    let entry = found.clone().map_or(Cached::Miss, Cached::Hit);
    KEYS.with(|c| c.borrow_mut().put(digest, entry, platform::now()));
    Ok(found)
}

/// Forgets a cached key (its policy changed, or the ledger said our copy is stale).
pub fn forget_key(digest: &str) {
    KEYS.with(|c| c.borrow_mut().entries.remove(digest));
}

pub async fn key_by_id(env: &Env, id: &str) -> Result<Option<KeyRecord>, GatewayError> {
    let kv = binding(env)?;
    let Some(digest) = get_string(&kv, &format!("id:{id}")).await? else {
        return Ok(None);
    };
    Ok(get_json::<KeyRecord>(&kv, &format!("k:{digest}")).await?.map(KeyRecord::bind_sealed))
}

pub async fn put_key(env: &Env, record: &KeyRecord) -> Result<(), GatewayError> {
    put_text(env, &format!("k:{}", record.digest), &wire::text(record), None).await?;
    forget_key(&record.digest);
    index_key(env, record).await
}

/// Files a key under its id and, if it has one, in its org's index, each with its summary.
/// A key never changes org, so no index entry is ever left behind.
pub async fn index_key(env: &Env, record: &KeyRecord) -> Result<(), GatewayError> {
    let kv = binding(env)?;
    let summary = record.summary();
    let org = record.org.as_deref().map(|org| org_keys(org) + &record.id);
    for name in std::iter::once(format!("{ALL_KEYS}{}", record.id)).chain(org) {
        put_summarised(&kv, &name, &record.digest, &summary).await?;
    }
    Ok(())
}

// Every call goes to the binding itself, not through workers-rs's `KvStore`: its options
// (and a put's metadata, as `serde_json::Value`) travel through serde-wasm-bindgen, kilobytes
// of bundle for what is an object of a string or two here.

/// The KV binding as the runtime gives it.
fn binding(env: &Env) -> Result<JsValue, GatewayError> {
    Reflect::get(env, &BINDING.into()).ok().filter(|kv| kv.is_object()).ok_or_else(missing)
}

/// `kv[method](...args)`, awaited.
async fn call(kv: &JsValue, method: &str, args: &Array) -> Result<JsValue, GatewayError> {
    let f: Function = Reflect::get(kv, &method.into()).and_then(JsCast::dyn_into).map_err(unavailable)?;
    let promise: Promise = f.apply(kv, args).and_then(JsCast::dyn_into).map_err(unavailable)?;
    JsFuture::from(promise).await.map_err(unavailable)
}

/// `obj[field]`, or `undefined`.
fn field(obj: &JsValue, name: &str) -> JsValue {
    Reflect::get(obj, &name.into()).unwrap_or_default()
}

/// An options object: `{name: value, ...}`, leaving out what is `undefined`.
fn options(pairs: &[(&str, JsValue)]) -> Object {
    let o = Object::new();
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_undefined()) {
        let _ = Reflect::set(&o, &(*k).into(), v);
    }
    o
}

async fn put_summarised(kv: &JsValue, name: &str, value: &str, summary: &str) -> Result<(), GatewayError> {
    let opts = options(&[("metadata", summary.into())]);
    call(kv, "put", &Array::of3(&name.into(), &value.into(), &opts)).await.map(drop)
}

/// A page of the entries under a prefix: each one's name past the prefix and its summary
/// (`None` if it was written before summaries were), and KV's cursor if there is more.
pub struct Listed {
    pub entries: Vec<(String, Option<String>)>,
    pub more: Option<String>,
}

/// One KV list call: at most `limit` entries under `prefix`, from KV's cursor `after`.
pub async fn page(env: &Env, prefix: &str, limit: u32, after: Option<String>) -> Result<Listed, GatewayError> {
    let opts = options(&[("prefix", prefix.into()), ("limit", limit.into()), ("cursor", after.into())]);
    let page = call(&binding(env)?, "list", &Array::of1(&opts)).await?;
    let keys: Array = field(&page, "keys").dyn_into().map_err(unavailable)?;
    let entries = keys
        .iter()
        .filter_map(|k| {
            let name = field(&k, "name").as_string()?;
            Some((name.strip_prefix(prefix)?.to_string(), field(&k, "metadata").as_string()))
        })
        .collect();
    let complete = field(&page, "list_complete").as_bool() != Some(false);
    Ok(Listed { entries, more: field(&page, "cursor").as_string().filter(|_| !complete) })
}

pub async fn org(env: &Env, id: &str) -> Result<Option<OrgRecord>, GatewayError> {
    let now = platform::now();
    match ORGS.with(|c| c.borrow().get(id, now)) {
        Some(Cached::Hit(r)) => return Ok(Some(r)),
        Some(Cached::Miss) => return Ok(None),
        None => {}
    }
    let found: Option<OrgRecord> = get_json(&binding(env)?, &format!("org:{id}")).await?;
    let entry = found.clone().map_or(Cached::Miss, Cached::Hit);
    ORGS.with(|c| c.borrow_mut().put(id, entry, now));
    Ok(found)
}

pub async fn put_org(env: &Env, record: &OrgRecord) -> Result<(), GatewayError> {
    let json = wire::text(record);
    put_summarised(&binding(env)?, &format!("org:{}", record.id), &json, &record.summary()).await?;
    forget_org(&record.id);
    Ok(())
}

pub fn forget_org(id: &str) {
    ORGS.with(|c| c.borrow_mut().entries.remove(id));
}

/// A JSON value from KV, read by `core::wire` (not the runtime's JSON.parse, which rounds
/// large integers to doubles).
async fn get_json<T: FromJson>(kv: &JsValue, key: &str) -> Result<Option<T>, GatewayError> {
    match get_string(kv, key).await? {
        Some(text) => {
            wire::parse(&text).map(Some).map_err(|_| GatewayError::Internal("a stored record could not be read"))
        }
        None => Ok(None),
    }
}

/// A small value of the gateway's own (the price book, the upstream's health), as text.
pub async fn get_text(env: &Env, key: &str) -> Result<Option<String>, GatewayError> {
    get_string(&binding(env)?, key).await
}

/// `kv.get(key, {type: "text"})`: the text under `key`, if there is any.
async fn get_string(kv: &JsValue, key: &str) -> Result<Option<String>, GatewayError> {
    let opts = options(&[("type", "text".into())]);
    Ok(call(kv, "get", &Array::of2(&key.into(), &opts)).await?.as_string())
}

/// Writes a value of the gateway's own; with `ttl_secs`, KV forgets it after that long.
pub async fn put_text(env: &Env, key: &str, value: &str, ttl_secs: Option<u64>) -> Result<(), GatewayError> {
    let opts = options(&[("expirationTtl", ttl_secs.map_or(JsValue::UNDEFINED, |t| JsValue::from_f64(t as f64)))]);
    call(&binding(env)?, "put", &Array::of3(&key.into(), &value.into(), &opts)).await.map(drop)
}

pub async fn delete(env: &Env, key: &str) -> Result<(), GatewayError> {
    call(&binding(env)?, "delete", &Array::of1(&key.into())).await.map(drop)
}
