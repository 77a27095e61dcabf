//! The registry of issued keys: the first 64 bits of every key digest, in one Durable Object,
//! copied into each isolate. A key whose digest is not in the copy is refused without a KV
//! read, so a flood of made-up keys costs at most one registry read per isolate per second.
//!
//! A key created in another isolate is found at the next refresh (within a second); one
//! created through this isolate's admin API is known at once. If the registry cannot be read,
//! every key may exist and KV decides, as it would without the registry.
//!
//! The same object keeps the origins browser keys allow, which preflights (they carry no key)
//! are approved for. It is one serialised object, so concurrent key creations each add their
//! origins and none is lost, as a KV read-modify-write would lose them. Each isolate keeps a
//! copy for a minute; the list only grows, so copies are merged, never replaced.

use crate::core::error::GatewayError;
use crate::core::protocol::{self, RegistryOp, RegistryReply};
use crate::core::time::UnixMillis;
use crate::core::wire;
use crate::edge::objects;
use crate::edge::{platform, stats};
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

const REFRESH_MS: u64 = 1_000;
/// The registry is one object.
const NAME: &str = "registry";

const ORIGINS_KEY: &str = "origins";
/// Where the origin list lived in KV before it moved here: read once, to carry it over.
const LEGACY_KV_ORIGINS: &str = "cors:origins";

// `fetch` only: see `account_do::Account`.
#[durable_object(fetch)]
pub struct Registry {
    state: State,
    env: Env,
    known: RefCell<Option<Vec<u64>>>,
    origins: RefCell<Option<Vec<String>>>,
}

impl DurableObject for Registry {
    fn new(state: State, env: Env) -> Self {
        Registry { state, env, known: RefCell::new(None), origins: RefCell::new(None) }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        objects::serve_fetch(req, |text| self.rpc_op(text)).await
    }
}

/// The object's RPC side (`objects::send`).
#[wasm_bindgen]
impl Registry {
    #[wasm_bindgen(js_name = op)]
    pub async fn rpc_op(&self, message: String) -> std::result::Result<String, JsValue> {
        objects::serve::<protocol::Registry, _, _>(&message, |op| self.answer(op)).await
    }
}

impl Registry {
    async fn answer(&self, op: RegistryOp) -> Result<RegistryReply> {
        Ok(match op {
            RegistryOp::Prefixes => RegistryReply::Prefixes(self.prefixes(None).await?),
            RegistryOp::AddPrefix { prefix } => RegistryReply::Prefixes(self.prefixes(Some(prefix)).await?),
            RegistryOp::Origins => RegistryReply::Origins(self.origins(Vec::new()).await?),
            RegistryOp::AddOrigins { origins } => RegistryReply::Origins(self.origins(origins).await?),
        })
    }

    /// The prefixes, after adding `add`. Between loading the set and storing it nothing
    /// awaits, so no addition is lost.
    async fn prefixes(&self, add: Option<u64>) -> Result<Vec<u64>> {
        if self.known.borrow().is_none() {
            let stored = objects::stored_string(&self.state, "prefixes").await?;
            let set = stored.and_then(|s| wire::parse::<Vec<u64>>(&s).ok()).unwrap_or_default();
            self.known.borrow_mut().get_or_insert_with(|| sorted_set(set));
        }
        if let Some(add) = add {
            let snapshot = {
                let mut known = self.known.borrow_mut();
                let set = known.get_or_insert_with(Vec::new);
                insert_sorted(set, add).then(|| wire::text(set))
            };
            if let Some(json) = snapshot {
                objects::store(&self.state, "prefixes", json.into()).await?;
            }
        }
        Ok(self.known.borrow().clone().unwrap_or_default())
    }

    /// The origin list, after adding `add`; same care as `prefixes`.
    async fn origins(&self, add: Vec<String>) -> Result<Vec<String>> {
        if self.origins.borrow().is_none() {
            let stored = objects::stored_string(&self.state, ORIGINS_KEY).await?;
            let list = match stored {
                Some(s) => wire::parse::<Vec<String>>(&s).map_err(|e| worker::Error::RustError(e.0))?,
                None => self.legacy_origins().await,
            };
            self.origins.borrow_mut().get_or_insert_with(|| sorted_set(list));
        }
        if !add.is_empty() {
            let snapshot = {
                let mut held = self.origins.borrow_mut();
                let set = held.get_or_insert_with(Vec::new);
                let mut grew = false;
                for o in add {
                    grew |= insert_sorted(set, o);
                }
                grew.then(|| wire::text(set))
            };
            if let Some(json) = snapshot {
                objects::store(&self.state, ORIGINS_KEY, json.into()).await?;
            }
        }
        Ok(self.origins.borrow().clone().unwrap_or_default())
    }

    /// The list as KV held it before it moved here (none if unreadable: KV was only ever a
    /// copy of what keys allow, and the keys themselves are re-added on their next edit).
    async fn legacy_origins(&self) -> Vec<String> {
        match crate::edge::kv::get_text(&self.env, LEGACY_KV_ORIGINS).await {
            Ok(Some(text)) => wire::parse(&text).unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

thread_local! {
    static COPY: RefCell<Option<(Rc<Vec<u64>>, UnixMillis)>> = const { RefCell::new(None) };
    /// When a request of this isolate started refreshing the copy. Meanwhile the others use
    /// the stale copy rather than each reading the registry again. (They cannot wait for that
    /// read: in Workers, one request may not await I/O that belongs to another.)
    static REFRESHING: RefCell<Option<UnixMillis>> = const { RefCell::new(None) };
}

/// A refresh older than this is presumed dead (its request went away) and may be retried.
const REFRESH_GIVE_UP_MS: u64 = 2_000;

async fn ask(env: &Env, op: RegistryOp) -> Option<RegistryReply> {
    objects::call::<protocol::Registry>(env, NAME, &op).await.ok()
}

async fn prefixes(env: &Env, add: Option<u64>) -> Option<Vec<u64>> {
    let op = match add {
        Some(prefix) => RegistryOp::AddPrefix { prefix },
        None => RegistryOp::Prefixes,
    };
    match ask(env, op).await? {
        RegistryReply::Prefixes(p) => Some(p),
        RegistryReply::Origins(_) => None,
    }
}

async fn origins(env: &Env, add: Vec<String>) -> Option<Vec<String>> {
    let op = if add.is_empty() { RegistryOp::Origins } else { RegistryOp::AddOrigins { origins: add } };
    match ask(env, op).await? {
        RegistryReply::Origins(o) => Some(o),
        RegistryReply::Prefixes(_) => None,
    }
}

/// Kept sorted, for a binary search (a `HashSet` of them cost the bundle its own hash table).
fn store(mut prefixes: Vec<u64>, now: UnixMillis) -> Rc<Vec<u64>> {
    crate::core::sort::heap_sort_by(&mut prefixes, Ord::cmp);
    let set = Rc::new(prefixes);
    COPY.with(|c| *c.borrow_mut() = Some((set.clone(), now)));
    set
}

/// Whether a key with this digest prefix may exist. `false` means certainly not.
pub async fn may_exist(env: &Env, prefix: u64) -> bool {
    let now = platform::now();
    let (known, fresh) = COPY.with(|c| match c.borrow().as_ref() {
        Some((set, at)) => (set.binary_search(&prefix).is_ok(), now.millis_since(*at) < REFRESH_MS),
        None => (false, false),
    });
    let have_copy = COPY.with(|c| c.borrow().is_some());
    let someone_refreshing =
        REFRESHING.with(|r| r.borrow().is_some_and(|at| now.millis_since(at) < REFRESH_GIVE_UP_MS));
    let exists = match (known, fresh) {
        (true, _) => true,
        (false, true) => false,
        (false, false) if have_copy && someone_refreshing => false,
        // unknown to a stale copy: ask again; if the registry cannot say, KV decides
        (false, false) => {
            REFRESHING.with(|r| *r.borrow_mut() = Some(now));
            stats::bump(stats::Counter::RegistryReads);
            let read = prefixes(env, None).await.map(|p| store(p, platform::now()));
            REFRESHING.with(|r| *r.borrow_mut() = None);
            read.is_none_or(|set| set.binary_search(&prefix).is_ok())
        }
    };
    if !exists {
        stats::bump(stats::Counter::UnknownKeyRefusedByRegistry);
    }
    exists
}

/// Registers a new key's prefix, everywhere and in this isolate at once.
pub async fn add(env: &Env, prefix: u64) -> std::result::Result<(), crate::core::error::GatewayError> {
    let known = prefixes(env, Some(prefix)).await.ok_or(GatewayError::KeyStoreUnavailable)?;
    store(known, platform::now());
    Ok(())
}

thread_local! {
    static ORIGINS: RefCell<Option<(Vec<String>, UnixMillis)>> = const { RefCell::new(None) };
}
/// How long an isolate's copy of the origin list serves preflights.
const ORIGINS_TTL_MS: u64 = 60_000;

/// Merges a list the registry answered into this isolate's copy (the list only grows, and
/// answers to concurrent requests may arrive in any order).
fn keep_origins(list: Vec<String>, now: UnixMillis) -> Vec<String> {
    ORIGINS.with(|o| {
        let mut o = o.borrow_mut();
        let (set, at) = o.get_or_insert_with(|| (Vec::new(), now));
        for origin in list {
            insert_sorted(set, origin);
        }
        *at = now;
        set.clone()
    })
}

/// Every origin some browser key allows: a preflight (which carries no key) is approved for
/// these as well as for `CORS_ORIGINS`. Copied per isolate for a minute; if the registry
/// cannot be read, a stale copy is better than none.
pub async fn browser_origins(env: &Env) -> std::result::Result<Vec<String>, GatewayError> {
    let now = platform::now();
    let cached = ORIGINS.with(|o| o.borrow().clone());
    if let Some((list, at)) = &cached {
        if now.millis_since(*at) < ORIGINS_TTL_MS {
            return Ok(list.clone());
        }
    }
    match origins(env, Vec::new()).await {
        Some(read) => Ok(keep_origins(read, platform::now())),
        None => cached.map(|(list, _)| list).ok_or(GatewayError::KeyStoreUnavailable),
    }
}

/// Adds a browser key's origins to the list, everywhere and in this isolate at once.
pub async fn add_origins(env: &Env, list: &[String]) -> std::result::Result<(), GatewayError> {
    if list.is_empty() {
        return Ok(());
    }
    let added = self::origins(env, list.to_vec()).await.ok_or(GatewayError::KeyStoreUnavailable)?;
    keep_origins(added, platform::now());
    Ok(())
}

/// Sets here are sorted, deduplicated vectors rather than `BTreeSet`s: each distinct
/// `BTreeSet<T>` brings its own copy of the B-tree code into the bundle (about 7 KB each),
/// and these sets are small, read far more than written, and stored as sorted lists anyway.
/// Adds `x` in order; false when it was already there.
fn insert_sorted<T: Ord>(set: &mut Vec<T>, x: T) -> bool {
    match set.binary_search(&x) {
        Ok(_) => false,
        Err(at) => {
            set.insert(at, x);
            true
        }
    }
}

/// A stored list as a set (the stored lists are sorted already, so each insert appends).
fn sorted_set<T: Ord>(list: Vec<T>) -> Vec<T> {
    let mut set = Vec::with_capacity(list.len());
    for x in list {
        insert_sorted(&mut set, x);
    }
    set
}
