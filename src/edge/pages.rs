//! The pages the worker serves itself: the playground at `/` and the admin page at `/admin`.

use crate::edge::response::{self, Meta, Response};
use worker::Headers;

// pages/, as build.rs placed them: minified in a release build (scripts/pages.mjs)
const PLAYGROUND: &str = include_str!(concat!(env!("OUT_DIR"), "/playground.html"));
const ADMIN: &str = include_str!(concat!(env!("OUT_DIR"), "/admin.html"));

fn html(body: &str, meta: &Meta) -> worker::Result<Response> {
    let h = Headers::new();
    let _ = h.set("content-type", "text/html; charset=utf-8");
    let _ = h.set("cache-control", "no-cache");
    let _ = h.set("x-content-type-options", "nosniff");
    let _ = h.set("referrer-policy", "no-referrer");
    meta.apply(&h);
    response::bytes(200, body.as_bytes().to_vec(), h)
}

pub fn playground(meta: &Meta) -> worker::Result<Response> {
    html(PLAYGROUND, meta)
}

pub fn admin(meta: &Meta) -> worker::Result<Response> {
    html(ADMIN, meta)
}
