//! The edge pieces that need a JS host, run under Node by `wasm-pack test --node`: the
//! platform clock and randomness, and the conversions between the core and worker types.
#![cfg(target_arch = "wasm32")]
// `#[wasm_bindgen_test]` functions are tests, but clippy does not see them as such.
#![allow(clippy::unwrap_used)]

use hf_gate::core::error::GatewayError;
use hf_gate::core::gcra::RateView;
use hf_gate::core::rand::Rng;
use hf_gate::edge::platform::{self, OsRng};
use hf_gate::edge::response::{self, Meta};
use hf_gate::edge::upstream::upstream_headers;
use wasm_bindgen_test::wasm_bindgen_test;
use worker::Headers;

#[wasm_bindgen_test]
fn the_clock_reads_date_now() {
    let before = js_sys::Date::now() as u64;
    let now = platform::now().0;
    assert!(now >= before && now - before < 1_000);
    assert!(now > 1_700_000_000_000, "a real date, not zero");
}

#[wasm_bindgen_test]
fn random_bytes_come_from_the_host_and_differ() {
    let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
    platform::secure_random(&mut a).unwrap();
    platform::secure_random(&mut b).unwrap();
    assert_ne!(a, b);
    assert_ne!(a, [0u8; 32]);
    let u = OsRng.unit();
    assert!((0.0..1.0).contains(&u));
}

#[wasm_bindgen_test]
async fn a_429_becomes_a_response_with_every_retry_header() {
    let meta = Meta {
        request_id: "req-1".into(),
        cors_origin: Some("https://app.example".into()),
        rate: Some(RateView { rpm: 60, burst: 10, remaining: 0, reset_ms: 1_500 }),
        sandbox: false,
        timing: vec![("ledger", 3)],
        output_limit: None,
    };
    let resp = response::error(&GatewayError::RateLimited { retry_after_ms: 1_500 }, &meta).unwrap();
    assert_eq!(resp.status(), 429);
    let h = Headers(resp.headers());
    assert_eq!(h.get("retry-after").unwrap().as_deref(), Some("2"));
    assert_eq!(h.get("retry-after-ms").unwrap().as_deref(), Some("1500"));
    assert_eq!(h.get("x-should-retry").unwrap().as_deref(), Some("true"));
    assert_eq!(h.get("ratelimit").unwrap().as_deref(), Some("\"rpm\";r=0;t=2"));
    assert_eq!(h.get("ratelimit-policy").unwrap().as_deref(), Some("\"rpm\";q=60;w=60;burst=10"));
    assert_eq!(h.get("access-control-allow-origin").unwrap().as_deref(), Some("https://app.example"));
    assert!(h.get("access-control-expose-headers").unwrap().unwrap().contains("retry-after"));
    assert_eq!(h.get("x-request-id").unwrap().as_deref(), Some("req-1"));
    assert_eq!(h.get("server-timing").unwrap().as_deref(), Some("ledger;dur=3"));
    let text = wasm_bindgen_futures::JsFuture::from(resp.text().unwrap()).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text.as_string().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
}

#[wasm_bindgen_test]
async fn exhausted_credits_tell_clients_not_to_retry() {
    let resp = response::error(
        &GatewayError::InsufficientQuota { retry_after_ms: 86_400_000, affordable: None },
        &Meta::default(),
    )
    .unwrap();
    assert_eq!(resp.headers().get("x-should-retry").unwrap().as_deref(), Some("false"));
    assert_eq!(resp.headers().get("retry-after").unwrap().as_deref(), Some("86400"));
}

#[wasm_bindgen_test]
fn upstream_headers_drop_credentials_and_add_billing() {
    let incoming = Headers::new();
    for (k, v) in [
        ("authorization", "Bearer hfg_secret"),
        ("cookie", "a=b"),
        ("x-hf-bill-to", "not-yours"),
        ("cf-ray", "1"),
        ("CF-Connecting-IP", "1.2.3.4"),
        ("x-forwarded-for", "1.2.3.4"),
        ("proxy-authorization", "Basic x"),
        ("x-api-key", "sk-caller"),
        ("transfer-encoding", "chunked"),
        ("connection", "keep-alive, X-Hop"),
        ("x-hop", "1"),
        ("content-type", "application/json"),
        ("user-agent", "test"),
        ("x-stainless-retry-count", "0"),
        ("x-wait-for-model", "true"),
    ] {
        incoming.set(k, v).unwrap();
    }
    let out = upstream_headers(&incoming, Some("acme"));
    for gone in [
        "authorization",
        "cookie",
        "cf-ray",
        "cf-connecting-ip",
        "x-forwarded-for",
        "proxy-authorization",
        "x-api-key",
        "transfer-encoding",
        "connection",
        "x-hop",
    ] {
        assert_eq!(out.get(gone).unwrap(), None, "{gone} must not go upstream");
    }
    assert_eq!(out.get("x-stainless-retry-count").unwrap().as_deref(), Some("0"));
    assert_eq!(out.get("x-wait-for-model").unwrap().as_deref(), Some("true"));
    // a copy: the caller's own headers are as they came
    assert_eq!(incoming.get("authorization").unwrap().as_deref(), Some("Bearer hfg_secret"));
    assert_eq!(out.get("x-hf-bill-to").unwrap().as_deref(), Some("acme"));
    assert_eq!(out.get("content-type").unwrap().as_deref(), Some("application/json"));
    assert_eq!(out.get("user-agent").unwrap().as_deref(), Some("test"));
    assert_eq!(upstream_headers(&incoming, None).get("x-hf-bill-to").unwrap(), None);
}

#[wasm_bindgen_test]
fn upstream_headers_are_edited_in_the_response_and_left_alone_in_upstream_s() {
    let upstream = Headers::new();
    upstream.append("set-cookie", "a=1").unwrap();
    upstream.append("set-cookie", "b=2").unwrap();
    upstream.set("vary", "Accept").unwrap();
    upstream.set("x-upstream-id", "u1").unwrap();
    upstream.set("content-type", "text/event-stream").unwrap();
    upstream.set("CF-Ray", "r1").unwrap();
    upstream.set("cfx", "kept").unwrap();
    upstream.set("content-length", "999").unwrap();
    upstream.set("access-control-allow-origin", "*").unwrap();
    let meta = Meta { request_id: "r".into(), output_limit: Some(64), ..Meta::default() };
    let resp = hf_gate::edge::meter::Body::Bytes(b"{}".to_vec()).respond(200, &upstream.0, &meta).unwrap();
    let out = Headers(resp.headers());
    assert_eq!(out.get("set-cookie").unwrap(), None, "every cookie stays behind");
    assert_eq!(out.get("cf-ray").unwrap(), None);
    assert_eq!(out.get("content-length").unwrap(), None);
    assert_eq!(out.get("access-control-allow-origin").unwrap(), None, "the gateway sets its own CORS");
    assert_eq!(out.get("cfx").unwrap().as_deref(), Some("kept"));
    assert_eq!(out.get("vary").unwrap().as_deref(), Some("Accept, Origin"));
    assert_eq!(out.get("x-upstream-id").unwrap().as_deref(), Some("u1"));
    assert_eq!(out.get("content-type").unwrap().as_deref(), Some("text/event-stream"));
    assert_eq!(out.get("x-request-id").unwrap().as_deref(), Some("r"));
    assert_eq!(out.get("x-hfgate-max-tokens").unwrap().as_deref(), Some("64"));
    // upstream's own headers are as they were
    assert_eq!(upstream.get("set-cookie").unwrap().as_deref(), Some("a=1, b=2"));
    assert_eq!(upstream.get("x-request-id").unwrap(), None);
    assert_eq!(upstream.get("cf-ray").unwrap().as_deref(), Some("r1"));
    // an edit the runtime would refuse is left out, and the rest still apply
    let h = Headers::new();
    let odd = Meta {
        request_id: "r\nx-injected: 1".into(),
        cors_origin: Some("https://a.example".into()),
        ..Meta::default()
    };
    odd.apply(&h);
    assert_eq!(h.get("x-request-id").unwrap(), None);
    assert_eq!(h.get("x-injected").unwrap(), None);
    assert_eq!(h.get("access-control-allow-origin").unwrap().as_deref(), Some("https://a.example"));
    let bad_name = Headers::new();
    let mut edits = hf_gate::core::headers::Edits::default();
    edits.set("bad name", "v");
    edits.set("x-good", "ok");
    hf_gate::edge::header_edits::apply(&bad_name.0, &edits);
    assert_eq!(bad_name.get("x-good").unwrap().as_deref(), Some("ok"));
}

#[wasm_bindgen_test]
fn an_empty_body_is_no_body_so_a_204_can_be_built() {
    let resp = response::bytes(204, Vec::new(), Headers::new()).unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.body().is_none());
    let resp = response::bytes(200, b"{}".to_vec(), Headers::new()).unwrap();
    assert!(resp.body().is_some());
}

#[wasm_bindgen_test]
fn a_status_that_has_no_body_is_answered_without_one() {
    let bytes = js_sys::Uint8Array::from(&b"x"[..]);
    let resp = response::held(204, Some(&bytes), &Headers::new()).unwrap();
    assert!(resp.body().is_none());
    // upstream's 304 to a job poll, passed on as it came
    let resp =
        hf_gate::edge::meter::Body::Bytes(b"x".to_vec()).respond(304, &Headers::new().0, &Meta::default()).unwrap();
    assert_eq!(resp.status(), 304);
    assert!(resp.body().is_none());
}
