//! Who is calling: the gateway key, from this isolate's cache, else (if the registry says
//! it may exist) from KV, and what it means (`core::caller`).

use crate::core::caller::{caller_for, Caller};
use crate::core::cors;
use crate::core::error::GatewayError;
use crate::core::keys;
use crate::core::keys::KeyRecord;
use crate::core::settings::Settings;
use crate::edge::incoming::Incoming;
use crate::edge::{kv, registry_do};
use worker::Env;

/// Resolves the request's gateway key. Malformed keys are refused without a lookup; unknown
/// ones cost a KV read at most once per 10 s per isolate (the negative cache).
pub async fn authenticate(
    req: &Incoming,
    env: &Env,
    s: &Settings,
    origin: Option<&str>,
) -> Result<Caller, GatewayError> {
    let header = req.headers().get("authorization").ok().flatten().unwrap_or_default();
    let secret = keys::bearer_key(&header).ok_or(GatewayError::InvalidApiKey)?;
    let digest = keys::digest(secret);
    let record = key_record(env, &digest).await?.ok_or(GatewayError::InvalidApiKey)?;
    if record.revoked {
        return Err(GatewayError::InvalidApiKey);
    }
    if !cors::key_permits(&record.allowed_origins, origin) {
        return Err(GatewayError::OriginNotAllowed);
    }
    let org = match &record.org {
        Some(id) => Some(kv::org(env, id).await?.ok_or(GatewayError::InvalidApiKey)?),
        None => None,
    };
    caller_for(record, org, s)
}

/// A key's record by the digest of its secret: cached, or known absent by the registry (no
/// KV read for a made-up key), or read from KV.
async fn key_record(env: &Env, digest: &str) -> Result<Option<KeyRecord>, GatewayError> {
    if let Some(cached) = kv::cached_key(digest) {
        return Ok(cached);
    }
    if !registry_do::may_exist(env, keys::digest_prefix(digest)).await {
        kv::note_absent(digest);
        return Ok(None);
    }
    kv::read_key(env, digest).await
}
