//! Settings from the Worker's environment, parsed and validated once per isolate.

use crate::core::error::GatewayError;
use crate::core::settings::Settings;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::JsValue;
use worker::Env;

/// The KV namespace's binding name (wrangler.toml): key records, org records, the price book.
pub const KV_BINDING: &str = "GATEWAY_KV";

thread_local! {
    static CACHED: RefCell<Option<Rc<Settings>>> = const { RefCell::new(None) };
}

/// A setting's raw text: strings as they are, structured `[vars]` (tables in wrangler.toml)
/// as JSON.
pub fn raw_var(env: &Env, name: &str) -> Option<String> {
    let v = js_sys::Reflect::get(env, &JsValue::from_str(name)).ok()?;
    if let Some(s) = v.as_string() {
        return Some(s);
    }
    if v.is_undefined() || v.is_null() || v.is_function() {
        return None;
    }
    if v.is_object() && js_sys::Reflect::has(&v, &JsValue::from_str("get")).unwrap_or(false) {
        // a binding (KV, Durable Object namespace), not a setting
        return None;
    }
    js_sys::JSON::stringify(&v).ok()?.as_string()
}

/// The settings, validated at first use; an invalid setting fails every request with an
/// error that names it (and is re-checked on the next request, so a fix takes effect).
pub fn settings(env: &Env) -> Result<Rc<Settings>, GatewayError> {
    if let Some(s) = CACHED.with(|c| c.borrow().clone()) {
        return Ok(s);
    }
    let parsed = Rc::new(Settings::from_vars(|name| raw_var(env, name))?);
    CACHED.with(|c| *c.borrow_mut() = Some(parsed.clone()));
    Ok(parsed)
}
