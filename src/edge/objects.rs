//! The one transport between the worker and its Durable Objects, both sides of it.
//!
//! A message is a `core::protocol` enum as JSON text, sent over Workers RPC: the object's
//! `op(text)` method, one string in and one string out. That is the cheapest transport
//! workers-rs 0.8 offers: measured with the same object logic, an RPC call cost about a fifth
//! of a `fetch` with JSON bodies (no Request, Response or Headers objects, no body streams on
//! either side), and it speeds up the whole metered path 1.5x at concurrency 16 (README,
//! "Benchmarks"). The objects answer the same messages on `fetch` too (a POST of the JSON
//! text), for tools and tests. Messages are written and read by `core::wire`, never the
//! runtime's `JSON.parse` (which rounds 64-bit integers). A message that does not decode, on either
//! side, is an error that names the object and the reason in the log: never a default.
//!
//! Workers RPC is only offered on classes that extend `DurableObject`; worker-build's glue does
//! not make ours do so, `scripts/entry.mjs` does (see `scripts/build.sh`).

use crate::core::protocol::Protocol;
use crate::core::wire;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::{Env, Headers, Request, Response};

/// Why a call to an object failed. Metered traffic fails closed on any of them.
#[derive(Debug)]
pub enum CallError {
    /// The call did not get an answer: the runtime could not deliver it (the object is
    /// overloaded, reset, missing) or the object failed while answering (its stored state
    /// does not decode, a write failed). The words are the runtime's or the object's.
    Failed(String),
    /// The message could not be encoded, or the reply did not decode.
    Undecodable(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Failed(e) => write!(f, "failed: {e}"),
            CallError::Undecodable(e) => write!(f, "reply does not decode: {e}"),
        }
    }
}

/// Sends `req` to the object `name` of protocol `P` and returns its typed reply. Every failure
/// is logged here with the runtime's words (they never carry secrets).
pub async fn call<P: Protocol>(env: &Env, name: &str, req: &P::Request) -> Result<P::Reply, CallError> {
    far_away(env).await;
    let result = send::<P>(env, name, req).await;
    if let Err(e) = &result {
        crate::edge::platform::fault(&format!("{} {name}", P::BINDING), &e.to_string());
    }
    result
}

/// Benchmarks only (`BENCH_OBJECT_DELAY_MS`, refused outside local runs): waits as long as a
/// call to an object takes in production, where the nearest copy may be a continent off. Not
/// generic, so the three protocols share one copy of it.
async fn far_away(env: &Env) {
    let distance_ms = crate::edge::config::settings(env).map_or(0, |s| s.bench_object_delay_ms);
    if distance_ms > 0 {
        crate::edge::platform::sleep_ms(distance_ms).await;
    }
}

#[wasm_bindgen]
extern "C" {
    /// A Durable Object stub seen as its RPC interface.
    #[wasm_bindgen(extends = js_sys::Object)]
    type ObjectRpc;

    #[wasm_bindgen(method, js_name = op)]
    fn op(this: &ObjectRpc, message: &str) -> js_sys::Promise;
}

async fn send<P: Protocol>(env: &Env, name: &str, req: &P::Request) -> Result<P::Reply, CallError> {
    let unreachable = |e: worker::Error| CallError::Failed(e.to_string());
    let ns = env.durable_object(P::BINDING).map_err(unreachable)?;
    let stub = ns.id_from_name(name).and_then(|id| id.get_stub()).map_err(unreachable)?;
    let body = wire::text(req);
    let rpc: ObjectRpc = stub.into_rpc();
    let reply = JsFuture::from(rpc.op(&body)).await.map_err(|e| CallError::Failed(describe(&e)))?;
    let text = reply.as_string().ok_or_else(|| CallError::Undecodable("not a string".into()))?;
    wire::parse(&text).map_err(|e| CallError::Undecodable(e.0))
}

/// The runtime's words for a failed call (an Error's message, or the value itself).
fn describe(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>().map_or_else(|| format!("{e:?}"), |e| String::from(e.message()))
}

/// The object's side of one message: decodes it, answers it with `answer`, encodes the reply.
/// An undecodable message is refused (and logged), an object that fails is an error: either
/// way the caller's promise rejects.
pub async fn serve<P, F, Fut>(text: &str, answer: F) -> Result<String, JsValue>
where
    P: Protocol,
    F: FnOnce(P::Request) -> Fut,
    Fut: std::future::Future<Output = worker::Result<P::Reply>>,
{
    let req: P::Request = wire::parse(text).map_err(|e| {
        crate::edge::platform::fault(&format!("{}: a request that does not decode", P::BINDING), &e.0);
        JsValue::from(js_sys::Error::new("undecodable request"))
    })?;
    let reply = answer(req).await.map_err(|e| JsValue::from(js_sys::Error::new(&e.to_string())))?;
    Ok(wire::text(&reply))
}

/// The object's `fetch` side: the same messages as `op`, as the body of a POST, answered by
/// the object's own `op`; the reply is the body of a 200, a failure a 503 that says why.
pub async fn serve_fetch<Fut>(mut req: Request, op: impl FnOnce(String) -> Fut) -> worker::Result<Response>
where
    Fut: std::future::Future<Output = Result<String, JsValue>>,
{
    let text = req.text().await?;
    match op(text).await {
        Ok(reply) => {
            let headers = Headers::new();
            let _ = headers.set("content-type", "application/json");
            Ok(Response::ok(reply)?.with_headers(headers))
        }
        Err(e) => Response::error(describe(&e), 503),
    }
}

// An object's few values in its key-value storage, read and written as workers-rs's
// `Storage::get` and `put` do, less serde-wasm-bindgen (its (de)serializers, a hash table
// and their error texts, for a string or a number).

/// `storage.get(key)`, awaited: `undefined` when nothing is stored there.
async fn stored(state: &worker::State, key: &str) -> worker::Result<JsValue> {
    Ok(JsFuture::from(state.storage().as_raw().get(key)?).await?)
}

/// A value read back as `Storage::get` read it: none when it is `undefined` or `null`, else
/// `read` of it, refused when that is none.
fn stored_as<T>(v: JsValue, key: &str, read: impl FnOnce(&JsValue) -> Option<T>) -> worker::Result<Option<T>> {
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    read(&v).map(Some).ok_or_else(|| worker::Error::RustError(format!("stored {key}: invalid type")))
}

/// The string stored under `key`, if any.
pub async fn stored_string(state: &worker::State, key: &str) -> worker::Result<Option<String>> {
    stored_as(stored(state, key).await?, key, JsValue::as_string)
}

/// The whole number stored under `key`, if any (a JavaScript number, as a safe integer).
pub async fn stored_u64(state: &worker::State, key: &str) -> worker::Result<Option<u64>> {
    stored_as(stored(state, key).await?, key, |v| {
        v.as_f64().filter(|n| n.fract() == 0.0 && (0.0..=MAX_SAFE as f64).contains(n)).map(|n| n as u64)
    })
}

/// The largest integer a JavaScript number holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE: u64 = (1 << 53) - 1;

/// `storage.put(key, value)`, awaited.
pub async fn store(state: &worker::State, key: &str, value: JsValue) -> worker::Result<()> {
    state.storage().put_raw(key, value).await
}

/// Stores a whole number, as a JavaScript number: refused past the safe integers.
pub async fn store_u64(state: &worker::State, key: &str, value: u64) -> worker::Result<()> {
    if value > MAX_SAFE {
        return Err(worker::Error::RustError(format!("{value} can't be represented as a JavaScript number")));
    }
    store(state, key, JsValue::from_f64(value as f64)).await
}
