//! Provider keys of `byok` keys are stored sealed: AES-256-GCM through WebCrypto, with a key
//! derived from the `PROVIDER_KEY_SECRET` secret (or `ADMIN_TOKEN` when that is unset). KV
//! never holds a provider key in plaintext, and a sealed value is useless without the secret.

use crate::core::error::GatewayError;
use crate::core::keys::{base64url, base64url_decode};
use crate::core::settings::Settings;
use crate::edge::platform;
use js_sys::{Array, Object, Reflect, Uint8Array};
use sha2::{Digest, Sha256};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

const IV_BYTES: usize = 12;

fn broken(_: JsValue) -> GatewayError {
    GatewayError::Misconfigured { setting: "PROVIDER_KEY_SECRET", reason: "provider key sealing failed".into() }
}

fn set(o: &Object, k: &str, v: &JsValue) -> Result<(), GatewayError> {
    Reflect::set(o, &JsValue::from_str(k), v).map(|_| ()).map_err(broken)
}

async fn call(target: &JsValue, method: &str, args: &[JsValue]) -> Result<JsValue, GatewayError> {
    let f: js_sys::Function = Reflect::get(target, &JsValue::from_str(method))
        .map_err(broken)?
        .dyn_into()
        .map_err(|_| broken(JsValue::NULL))?;
    let promise: js_sys::Promise =
        f.apply(target, &args.iter().collect::<Array>()).map_err(broken)?.dyn_into().map_err(broken)?;
    JsFuture::from(promise).await.map_err(broken)
}

async fn aes_key(s: &Settings) -> Result<(JsValue, JsValue), GatewayError> {
    let secret = s.seal_key.as_ref().or(s.admin_token.as_ref()).ok_or_else(|| GatewayError::Misconfigured {
        setting: "PROVIDER_KEY_SECRET",
        reason: "set PROVIDER_KEY_SECRET (or ADMIN_TOKEN) to store provider keys".into(),
    })?;
    let material = Sha256::new().chain_update(b"hf-gate provider keys v1\0").chain_update(secret.expose()).finalize();
    let crypto = Reflect::get(&js_sys::global(), &JsValue::from_str("crypto")).map_err(broken)?;
    let subtle = Reflect::get(&crypto, &JsValue::from_str("subtle")).map_err(broken)?;
    let algo = Object::new();
    set(&algo, "name", &JsValue::from_str("AES-GCM"))?;
    let usages: Array = ["encrypt", "decrypt"].iter().map(|u| JsValue::from_str(u)).collect();
    let key = call(
        &subtle,
        "importKey",
        &[JsValue::from_str("raw"), Uint8Array::from(&material[..]).into(), algo.into(), JsValue::FALSE, usages.into()],
    )
    .await?;
    Ok((subtle, key))
}

fn params(iv: &[u8]) -> Result<JsValue, GatewayError> {
    let p = Object::new();
    set(&p, "name", &JsValue::from_str("AES-GCM"))?;
    set(&p, "iv", &Uint8Array::from(iv).into())?;
    Ok(p.into())
}

/// Seals a provider key: base64url(iv || ciphertext+tag).
pub async fn seal(s: &Settings, plaintext: &str) -> Result<String, GatewayError> {
    let (subtle, key) = aes_key(s).await?;
    let mut iv = [0u8; IV_BYTES];
    platform::secure_random(&mut iv)?;
    let out = call(&subtle, "encrypt", &[params(&iv)?, key, Uint8Array::from(plaintext.as_bytes()).into()]).await?;
    let mut sealed = iv.to_vec();
    sealed.extend(Uint8Array::new(&out).to_vec());
    Ok(base64url(&sealed))
}

/// Opens a sealed provider key. A value that does not open (wrong secret, tampering) is an
/// error, never passed on.
pub async fn unseal(s: &Settings, sealed: &str) -> Result<String, GatewayError> {
    let raw = base64url_decode(sealed).filter(|r| r.len() > IV_BYTES).ok_or_else(|| broken(JsValue::NULL))?;
    let (iv, data) = raw.split_at(IV_BYTES);
    let (subtle, key) = aes_key(s).await?;
    let out = call(&subtle, "decrypt", &[params(iv)?, key, Uint8Array::from(data).into()]).await?;
    String::from_utf8(Uint8Array::new(&out).to_vec()).map_err(|_| broken(JsValue::NULL))
}
