//! Building responses: the one place a `GatewayError` becomes a response, and the headers
//! every response carries (request id, CORS, rate limit, retry hints).
//!
//! Responses are the runtime's own, built with its `ResponseInit` (status and headers), not
//! workers-rs's `Response`, which would be converted into one on the way out through an init
//! of five fields set one JS call at a time, its body copied once more.

use crate::core::cors;
use crate::core::error::GatewayError;
use crate::core::gcra::RateView;
use crate::core::headers::Edits;
use crate::edge::header_edits;
use js_sys::Uint8Array;
use worker::{Headers, Result};

pub type Response = web_sys::Response;

/// What the gateway adds to any response it sends.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    pub request_id: String,
    /// `Access-Control-Allow-Origin`, if the request's origin is allowed.
    pub cors_origin: Option<String>,
    /// The throttle state, for metered and throttled responses.
    pub rate: Option<RateView>,
    /// Set when a sandbox answered, so nobody mistakes it for the real router.
    pub sandbox: bool,
    /// `Server-Timing` entries: where the gateway's time went (milliseconds).
    pub timing: Vec<(&'static str, u64)>,
    /// The output bound sent upstream, when the gateway lowered the caller's to what the
    /// remaining credit pays for.
    pub output_limit: Option<u64>,
}

impl Meta {
    /// Adds the gateway's headers to `h`, in one call to the runtime.
    pub fn apply(&self, h: &Headers) {
        let mut edits = Edits::default();
        self.edits(&mut edits);
        header_edits::apply(&h.0, &edits);
    }

    /// The gateway's headers, as edits.
    pub fn edits(&self, e: &mut Edits) {
        e.set("x-request-id", &self.request_id);
        if let Some(origin) = &self.cors_origin {
            e.set("access-control-allow-origin", origin);
            e.set("access-control-expose-headers", cors::EXPOSE_HEADERS);
        }
        e.append("vary", "Origin");
        if let Some(r) = self.rate {
            e.set("ratelimit-policy", &format!("\"rpm\";q={};w=60;burst={}", r.rpm, r.burst));
            e.set("ratelimit", &format!("\"rpm\";r={};t={}", r.remaining, r.reset_ms.div_ceil(1000)));
        }
        if !self.timing.is_empty() {
            let t: Vec<String> = self.timing.iter().map(|(name, ms)| format!("{name};dur={ms}")).collect();
            e.set("server-timing", &t.join(", "));
        }
        if self.sandbox {
            e.set("x-upstream", "sandbox");
        }
        if let Some(n) = self.output_limit {
            e.set("x-hfgate-max-tokens", &n.to_string());
        }
    }
}

/// The response for an error: OpenAI-shaped JSON, its status, and on a 429 `Retry-After`
/// (whole seconds, rounded up), `retry-after-ms` and `x-should-retry`.
pub fn error(err: &GatewayError, meta: &Meta) -> Result<Response> {
    let h = Headers::new();
    let _ = h.set("content-type", "application/json");
    if let Some(ms) = err.retry_after_ms() {
        let _ = h.set("retry-after", &ms.div_ceil(1000).to_string());
        let _ = h.set("retry-after-ms", &ms.to_string());
        let _ = h.set("x-should-retry", if err.should_retry() { "true" } else { "false" });
    }
    if matches!(err, GatewayError::InvalidApiKey) {
        let _ = h.set("www-authenticate", "Bearer realm=\"hf-gate\"");
    }
    meta.apply(&h);
    bytes(err.status(), err.to_json().into_bytes(), h)
}

/// A JSON response with the gateway's headers.
pub fn json(status: u16, body: &serde_json::Value, meta: &Meta) -> Result<Response> {
    let h = Headers::new();
    let _ = h.set("content-type", "application/json");
    meta.apply(&h);
    bytes(status, body.to_string().into_bytes(), h)
}

/// A fixed body with the given headers (none at all when it is empty: a 204 may not have
/// one).
pub fn bytes(status: u16, body: Vec<u8>, headers: Headers) -> Result<Response> {
    let body = (!body.is_empty()).then(|| Uint8Array::from(body.as_slice()));
    held(status, body.as_ref(), &headers)
}

/// Bytes in the runtime's memory, with the given headers. A status that has no body (204,
/// 205, 304) gets none, whatever upstream sent: the runtime refuses to build it with one.
pub fn held(status: u16, body: Option<&Uint8Array>, headers: &Headers) -> Result<Response> {
    let body = body.filter(|_| !bodiless(status));
    Ok(Response::new_with_opt_buffer_source_and_init(body.map(|b| b.as_ref()), &init(status, headers))?)
}

/// A body the runtime holds already (a stream), with the given headers. The caller answers
/// a status that has no body with `held` instead (`meter::Body::respond`).
pub fn of_stream(status: u16, body: &web_sys::ReadableStream, headers: &Headers) -> Result<Response> {
    Ok(Response::new_with_opt_readable_stream_and_init(Some(body), &init(status, headers))?)
}

/// Whether a response with `status` may not carry a body (Fetch's "null body status").
pub fn bodiless(status: u16) -> bool {
    matches!(status, 101 | 204 | 205 | 304)
}

fn init(status: u16, headers: &Headers) -> web_sys::ResponseInit {
    let init = web_sys::ResponseInit::new();
    init.set_status(status);
    init.set_headers(headers.as_ref());
    init
}
