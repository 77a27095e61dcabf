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
use crate::core::time::UnixMillis;
use crate::edge::{kv, platform, stats};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::rc::Rc;
use wasm_bindgen::JsValue;
use worker::{durable_object, DurableObject, Env, Method, Request, RequestInit, Response, Result, State};

pub const BINDING: &str = "REGISTRY";
const REFRESH_MS: u64 = 1_000;

#[derive(Serialize, Deserialize, Default)]
struct Prefixes {
    prefixes: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct Add {
    add: u64,
}

/// The browser origins, as asked for and as answered.
#[derive(Serialize, Deserialize, Default)]
struct Origins {
    origins: Vec<String>,
}

const ORIGINS_PATH: &str = "/origins";
const ORIGINS_KEY: &str = "origins";
/// Where the origin list lived in KV before it moved here: read once, to carry it over.
const LEGACY_KV_ORIGINS: &str = "cors:origins";

#[durable_object]
pub struct Registry {
    state: State,
    env: Env,
    known: RefCell<Option<BTreeSet<u64>>>,
    origins: RefCell<Option<BTreeSet<String>>>,
}

impl DurableObject for Registry {
    fn new(state: State, env: Env) -> Self {
        Registry { state, env, known: RefCell::new(None), origins: RefCell::new(None) }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        if req.path() == ORIGINS_PATH {
            return self.origins(req).await;
        }
        if self.known.borrow().is_none() {
            let stored: Option<String> = self.state.storage().get("prefixes").await?;
            let set = stored.and_then(|s| serde_json::from_str::<Vec<u64>>(&s).ok()).unwrap_or_default();
            self.known.borrow_mut().get_or_insert_with(|| set.into_iter().collect());
        }
        if req.method() == Method::Post {
            // text, then serde_json: the runtime's JSON.parse would round a u64 to a double
            let Add { add } = serde_json::from_str(&req.text().await?)?;
            let snapshot = {
                let mut known = self.known.borrow_mut();
                let set = known.get_or_insert_with(BTreeSet::new);
                set.insert(add).then(|| serde_json::to_string(&set.iter().collect::<Vec<_>>()))
            };
            if let Some(Ok(json)) = snapshot {
                self.state.storage().put("prefixes", json).await?;
            }
        }
        let prefixes = self.known.borrow().as_ref().map(|s| s.iter().copied().collect()).unwrap_or_default();
        Response::from_json(&Prefixes { prefixes })
    }
}

impl Registry {
    /// `GET /origins`: the list; `POST /origins {"origins": [...]}`: adds to it, then the list.
    /// Between loading the list and storing it nothing awaits, so no addition is lost.
    async fn origins(&self, mut req: Request) -> Result<Response> {
        if self.origins.borrow().is_none() {
            let stored: Option<String> = self.state.storage().get(ORIGINS_KEY).await?;
            let list = match stored {
                Some(s) => serde_json::from_str::<Vec<String>>(&s)?,
                None => self.legacy_origins().await,
            };
            self.origins.borrow_mut().get_or_insert_with(|| list.into_iter().collect());
        }
        if req.method() == Method::Post {
            let Origins { origins: add } = serde_json::from_str(&req.text().await?)?;
            let snapshot = {
                let mut held = self.origins.borrow_mut();
                let set = held.get_or_insert_with(BTreeSet::new);
                let before = set.len();
                set.extend(add);
                (set.len() != before).then(|| serde_json::to_string(&set.iter().collect::<Vec<_>>()))
            };
            if let Some(json) = snapshot {
                self.state.storage().put(ORIGINS_KEY, json?).await?;
            }
        }
        let origins = self.origins.borrow().as_ref().map(|s| s.iter().cloned().collect()).unwrap_or_default();
        Response::from_json(&Origins { origins })
    }

    /// The list as KV held it before it moved here (none if unreadable: KV was only ever a
    /// copy of what keys allow, and the keys themselves are re-added on their next edit).
    async fn legacy_origins(&self) -> Vec<String> {
        let Ok(store) = self.env.kv(kv::BINDING) else {
            return Vec::new();
        };
        match store.get(LEGACY_KV_ORIGINS).text().await {
            Ok(Some(text)) => serde_json::from_str(&text).unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

thread_local! {
    static COPY: RefCell<Option<(Rc<HashSet<u64>>, UnixMillis)>> = const { RefCell::new(None) };
    /// When a request of this isolate started refreshing the copy. Meanwhile the others use
    /// the stale copy rather than each reading the registry again. (They cannot wait for that
    /// read: in Workers, one request may not await I/O that belongs to another.)
    static REFRESHING: RefCell<Option<UnixMillis>> = const { RefCell::new(None) };
}

/// A refresh older than this is presumed dead (its request went away) and may be retried.
const REFRESH_GIVE_UP_MS: u64 = 2_000;

/// One request to the registry: a GET of `path`, or a POST of `body`; its JSON answer.
async fn request<T: for<'de> Deserialize<'de>>(env: &Env, path: &str, body: Option<String>) -> Option<T> {
    let stub = env.durable_object(BINDING).ok()?.id_from_name("registry").ok()?.get_stub().ok()?;
    let mut init = RequestInit::new();
    if let Some(body) = body {
        init.with_method(Method::Post).with_body(Some(JsValue::from_str(&body)));
    }
    let req = Request::new_with_init(&format!("https://registry.internal{path}"), &init).ok()?;
    let mut resp = stub.fetch_with_request(req).await.ok()?;
    if resp.status_code() != 200 {
        return None;
    }
    // text, then serde_json: the runtime's JSON.parse would round a u64 to a double
    serde_json::from_str(&resp.text().await.ok()?).ok()
}

async fn ask(env: &Env, add: Option<u64>) -> Option<Vec<u64>> {
    let body = match add {
        Some(p) => Some(serde_json::to_string(&Add { add: p }).ok()?),
        None => None,
    };
    request::<Prefixes>(env, "/", body).await.map(|p| p.prefixes)
}

fn store(prefixes: Vec<u64>, now: UnixMillis) -> Rc<HashSet<u64>> {
    let set = Rc::new(prefixes.into_iter().collect::<HashSet<u64>>());
    COPY.with(|c| *c.borrow_mut() = Some((set.clone(), now)));
    set
}

/// Whether a key with this digest prefix may exist. `false` means certainly not.
pub async fn may_exist(env: &Env, prefix: u64) -> bool {
    let now = platform::now();
    let (known, fresh) = COPY.with(|c| match c.borrow().as_ref() {
        Some((set, at)) => (set.contains(&prefix), now.millis_since(*at) < REFRESH_MS),
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
            let read = ask(env, None).await.map(|p| store(p, platform::now()));
            REFRESHING.with(|r| *r.borrow_mut() = None);
            read.is_none_or(|set| set.contains(&prefix))
        }
    };
    if !exists {
        stats::bump(stats::Counter::UnknownKeyRefusedByRegistry);
    }
    exists
}

/// Registers a new key's prefix, everywhere and in this isolate at once.
pub async fn add(env: &Env, prefix: u64) -> std::result::Result<(), crate::core::error::GatewayError> {
    let prefixes = ask(env, Some(prefix)).await.ok_or(crate::core::error::GatewayError::LedgerUnavailable)?;
    store(prefixes, platform::now());
    Ok(())
}

thread_local! {
    static ORIGINS: RefCell<Option<(BTreeSet<String>, UnixMillis)>> = const { RefCell::new(None) };
}
/// How long an isolate's copy of the origin list serves preflights.
const ORIGINS_TTL_MS: u64 = 60_000;

/// Merges a list the registry answered into this isolate's copy (the list only grows, and
/// answers to concurrent requests may arrive in any order).
fn keep_origins(list: Vec<String>, now: UnixMillis) -> Vec<String> {
    ORIGINS.with(|o| {
        let mut o = o.borrow_mut();
        let (set, at) = o.get_or_insert_with(|| (BTreeSet::new(), now));
        set.extend(list);
        *at = now;
        set.iter().cloned().collect()
    })
}

/// Every origin some browser key allows: a preflight (which carries no key) is approved for
/// these as well as for `CORS_ORIGINS`. Copied per isolate for a minute; if the registry
/// cannot be read, a stale copy is better than none.
pub async fn browser_origins(env: &Env) -> std::result::Result<Vec<String>, GatewayError> {
    let now = platform::now();
    let cached = ORIGINS.with(|o| o.borrow().as_ref().map(|(set, at)| (set.iter().cloned().collect::<Vec<_>>(), *at)));
    if let Some((list, at)) = &cached {
        if now.millis_since(*at) < ORIGINS_TTL_MS {
            return Ok(list.clone());
        }
    }
    match request::<Origins>(env, ORIGINS_PATH, None).await {
        Some(read) => Ok(keep_origins(read.origins, platform::now())),
        None => cached.map(|(list, _)| list).ok_or(GatewayError::LedgerUnavailable),
    }
}

/// Adds a browser key's origins to the list, everywhere and in this isolate at once.
pub async fn add_origins(env: &Env, origins: &[String]) -> std::result::Result<(), GatewayError> {
    if origins.is_empty() {
        return Ok(());
    }
    let body = serde_json::to_string(&Origins { origins: origins.to_vec() })
        .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
    let added = request::<Origins>(env, ORIGINS_PATH, Some(body)).await.ok_or(GatewayError::LedgerUnavailable)?;
    keep_origins(added.origins, platform::now());
    Ok(())
}
