//! The one transport between the worker and its Durable Objects, both sides of it.
//!
//! A message is a `core::protocol` enum as JSON text, sent as the body of one `POST` to the
//! object's `fetch` and answered in the body of its response; the reply is parsed by
//! serde_json (not the runtime's `JSON.parse`, which rounds 64-bit integers to doubles). A
//! message that does not decode, on either side, is an error that names the object and the
//! reason in the log: never a default value.

use crate::core::protocol::Protocol;
use wasm_bindgen::JsValue;
use worker::{Env, Headers, Method, Request, RequestInit, Response};

/// Why a call to an object failed. Metered traffic fails closed on any of them.
#[derive(Debug)]
pub enum CallError {
    /// The runtime could not deliver the call (the object is overloaded, reset, missing).
    Unreachable(String),
    /// The object answered with an error status.
    Refused(u16),
    /// The message could not be encoded, or the reply did not decode.
    Undecodable(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "unreachable: {e}"),
            CallError::Refused(status) => write!(f, "answered {status}"),
            CallError::Undecodable(e) => write!(f, "reply does not decode: {e}"),
        }
    }
}

/// Sends `req` to the object `name` of protocol `P` and returns its typed reply. Every failure
/// is logged here with the runtime's words (they never carry secrets).
pub async fn call<P: Protocol>(env: &Env, name: &str, req: &P::Request) -> Result<P::Reply, CallError> {
    let result = send::<P>(env, name, req).await;
    if let Err(e) = &result {
        worker::console_error!("{} {name}: {e}", P::BINDING);
    }
    result
}

async fn send<P: Protocol>(env: &Env, name: &str, req: &P::Request) -> Result<P::Reply, CallError> {
    let unreachable = |e: worker::Error| CallError::Unreachable(e.to_string());
    let ns = env.durable_object(P::BINDING).map_err(unreachable)?;
    let stub = ns.id_from_name(name).and_then(|id| id.get_stub()).map_err(unreachable)?;
    let body = serde_json::to_string(req).map_err(|e| CallError::Undecodable(e.to_string()))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(JsValue::from_str(&body)));
    let request = Request::new_with_init("https://object.internal/", &init).map_err(unreachable)?;
    let mut resp = stub.fetch_with_request(request).await.map_err(unreachable)?;
    if resp.status_code() != 200 {
        return Err(CallError::Refused(resp.status_code()));
    }
    let text = resp.text().await.map_err(unreachable)?;
    serde_json::from_str(&text).map_err(|e| CallError::Undecodable(e.to_string()))
}

/// The object's side: the request of protocol `P`, or `None` when it does not decode (logged:
/// a worker and an object that disagree on the protocol must be seen); answer that with
/// `refuse()`.
pub async fn request<P: Protocol>(req: &mut Request) -> worker::Result<Option<P::Request>> {
    let text = req.text().await?;
    Ok(serde_json::from_str(&text)
        .map_err(|e| worker::console_error!("{}: a request that does not decode: {e}", P::BINDING))
        .ok())
}

pub fn refuse() -> worker::Result<Response> {
    Response::error("undecodable request", 400)
}

/// The object's side: a typed reply.
pub fn reply<P: Protocol>(reply: &P::Reply) -> worker::Result<Response> {
    let text = serde_json::to_string(reply)?;
    let headers = Headers::new();
    let _ = headers.set("content-type", "application/json");
    Ok(Response::ok(text)?.with_headers(headers))
}
