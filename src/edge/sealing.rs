//! Provider keys of `byok` keys are stored sealed: AES-256-GCM through WebCrypto, with a key
//! derived from the `PROVIDER_KEY_SECRET` secret, and only that one (no fallback to
//! `ADMIN_TOKEN`: one leaked secret must not open both). KV never holds a provider key in
//! plaintext, and a sealed value is useless without the secret.
//!
//! Format `v2.` + base64url(iv || ciphertext+tag), sealed with the gateway key's id and the
//! provider as additional data: a sealed value copied into another key's record, or filed
//! under another provider, does not open. Values from before (no prefix) are refused with a
//! message telling the operator to set the provider key again.

use crate::core::error::GatewayError;
use crate::core::keys::{base64url, base64url_decode, SealedKey};
use crate::core::settings::Settings;
use crate::edge::platform;
use js_sys::{Array, Object, Reflect, Uint8Array};
use sha2::{Digest, Sha256};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

const IV_BYTES: usize = 12;
const FORMAT: &str = "v2.";

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

fn refused(reason: String) -> GatewayError {
    GatewayError::Misconfigured { setting: "PROVIDER_KEY_SECRET", reason }
}

async fn aes_key(s: &Settings) -> Result<(JsValue, JsValue), GatewayError> {
    let secret = s
        .seal_key
        .as_ref()
        .ok_or_else(|| refused("not set: provider keys (byok) are sealed with it and stored only then".into()))?;
    let material = Sha256::new().chain_update(b"hf-gate provider keys v2\0").chain_update(secret.expose()).finalize();
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

/// What a sealed value is bound to: the gateway key's id and the provider.
fn additional_data(key_id: &str, provider: &str) -> Vec<u8> {
    [b"hf-gate provider key\0", key_id.as_bytes(), b"\0", provider.as_bytes()].concat()
}

fn params(iv: &[u8], key_id: &str, provider: &str) -> Result<JsValue, GatewayError> {
    let p = Object::new();
    set(&p, "name", &JsValue::from_str("AES-GCM"))?;
    set(&p, "iv", &Uint8Array::from(iv).into())?;
    set(&p, "additionalData", &Uint8Array::from(&additional_data(key_id, provider)[..]).into())?;
    Ok(p.into())
}

/// Seals `key_id`'s provider key for `provider`. Without `PROVIDER_KEY_SECRET`, an error
/// naming it: nothing is stored.
pub async fn seal(s: &Settings, key_id: &str, provider: &str, plaintext: &str) -> Result<SealedKey, GatewayError> {
    let (subtle, key) = aes_key(s).await?;
    let mut iv = [0u8; IV_BYTES];
    platform::secure_random(&mut iv)?;
    let out =
        call(&subtle, "encrypt", &[params(&iv, key_id, provider)?, key, Uint8Array::from(plaintext.as_bytes()).into()])
            .await?;
    let mut sealed = iv.to_vec();
    sealed.extend(Uint8Array::new(&out).to_vec());
    Ok(SealedKey::new(format!("{FORMAT}{}", base64url(&sealed)), key_id, provider))
}

/// Opens a sealed provider key, for the record and provider it was read under only. A value
/// that does not open (another record's, another secret's, an older format, tampered) is an
/// error that says what to do, never passed on.
pub async fn unseal(s: &Settings, sealed: &SealedKey) -> Result<String, GatewayError> {
    let (key_id, provider) = sealed
        .owner()
        .ok_or_else(|| refused("a provider key was read without its record; refusing to open it".into()))?;
    let set_again = |why: &str| {
        refused(format!(
            "the provider key of {key_id} for {provider} {why}: set it again (PATCH /admin/keys/{key_id} with provider_key)"
        ))
    };
    let body = sealed.sealed().strip_prefix(FORMAT).ok_or_else(|| set_again("was sealed in an older format"))?;
    let raw =
        base64url_decode(body).filter(|r| r.len() > IV_BYTES).ok_or_else(|| set_again("is not a sealed value"))?;
    let (iv, data) = raw.split_at(IV_BYTES);
    let (subtle, key) = aes_key(s).await?;
    let out = call(&subtle, "decrypt", &[params(iv, key_id, provider)?, key, Uint8Array::from(data).into()])
        .await
        .map_err(|_| {
            set_again("does not open: it was sealed for another key or provider, or under another PROVIDER_KEY_SECRET")
        })?;
    String::from_utf8(Uint8Array::new(&out).to_vec()).map_err(|_| set_again("does not open"))
}
