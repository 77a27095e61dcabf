//! The registry of issued keys: the first 64 bits of every key digest, in one Durable Object,
//! copied into each isolate. A key whose digest is not in the copy is refused without a KV
//! read, so a flood of made-up keys costs at most one registry read per isolate per second.
//!
//! A key created in another isolate is found at the next refresh (within a second); one
//! created through this isolate's admin API is known at once. If the registry cannot be read,
//! every key may exist and KV decides, as it would without the registry.

use crate::core::time::UnixMillis;
use crate::edge::{platform, stats};
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

#[durable_object]
pub struct Registry {
    state: State,
    known: RefCell<Option<BTreeSet<u64>>>,
}

impl DurableObject for Registry {
    fn new(state: State, _env: Env) -> Self {
        Registry { state, known: RefCell::new(None) }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
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

thread_local! {
    static COPY: RefCell<Option<(Rc<HashSet<u64>>, UnixMillis)>> = const { RefCell::new(None) };
    /// When a request of this isolate started refreshing the copy. Meanwhile the others use
    /// the stale copy rather than each reading the registry again. (They cannot wait for that
    /// read: in Workers, one request may not await I/O that belongs to another.)
    static REFRESHING: RefCell<Option<UnixMillis>> = const { RefCell::new(None) };
}

/// A refresh older than this is presumed dead (its request went away) and may be retried.
const REFRESH_GIVE_UP_MS: u64 = 2_000;

async fn ask(env: &Env, add: Option<u64>) -> Option<Vec<u64>> {
    let stub = env.durable_object(BINDING).ok()?.id_from_name("registry").ok()?.get_stub().ok()?;
    let mut init = RequestInit::new();
    if let Some(p) = add {
        let body = serde_json::to_string(&Add { add: p }).ok()?;
        init.with_method(Method::Post).with_body(Some(JsValue::from_str(&body)));
    }
    let req = Request::new_with_init("https://registry.internal/", &init).ok()?;
    let mut resp = stub.fetch_with_request(req).await.ok()?;
    resp.json::<Prefixes>().await.ok().map(|p| p.prefixes)
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
