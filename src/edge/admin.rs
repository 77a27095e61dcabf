//! The admin API: create, list, read, update and revoke keys; create, read and update orgs.
//!
//! Lists come a page at a time (`core::listing`), each page one KV list call: a key's or an
//! org's summary is KV metadata on its index entry (`edge::kv`).
//!
//! Every change that the ledger enforces (revocation, limits, credits) is pushed to the
//! account's Durable Object *before* KV is written, so it holds at once everywhere, whatever
//! the edge caches say.
//!
//! Edits are compare-and-set on the record's version, decided by that Durable Object
//! (`core::edits`): a record's answer carries its version as `ETag`, a `PATCH` with a stale
//! `If-Match` gets 412, and one without that loses a race reads again and re-applies itself.
//! A revocation always lands and is final; KV, which may be written out of order, is brought
//! back in line with the ledger whenever an edit or a read finds it behind.

use crate::core::account::KeyPolicy;
use crate::core::admin_input::{
    self, apply_key_patch, check_endpoints, check_org_fields, check_origins, check_rate, KeyPatch, NewKey, NewOrg,
    OrgPatch,
};
use crate::core::caller::{caller_for, org_account, org_policy, Caller};
use crate::core::edits::{self, AccountEdit, IfMatch, KeyEdit, EDIT_RETRY};
use crate::core::error::GatewayError;
use crate::core::gcra::{self, Quota, Tat};
use crate::core::keys::{self, KeyRecord, OrgRecord, SealedKey, MINT_BYTES};
use crate::core::lease::MAX_SHARDS;
use crate::core::listing;
use crate::core::settings::Settings;
use crate::core::sorted::SortedMap;
use crate::core::wire::{self, FromJson};
use crate::edge::incoming::Incoming;
use crate::edge::platform::{self, OsRng};
use crate::edge::response::Response;
use crate::edge::response::{self, Meta};
use crate::edge::{account_do, body_io};
use crate::edge::{kv, prices, sealing, usage};
use crate::edge::{registry_do, stats};
use serde_json::{json, Value};
use std::cell::RefCell;
use worker::{Env, Headers, Method};

/// An admin answer: a status, a JSON body and, for one record, its version (its `ETag`).
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub version: Option<u64>,
}

impl Answer {
    fn list(body: Value) -> Self {
        Answer { status: 200, body, version: None }
    }

    fn record(status: u16, body: Value, version: u64) -> Self {
        Answer { status, body, version: Some(version) }
    }
}

fn bad(why: impl Into<String>) -> GatewayError {
    GatewayError::InvalidRequest(why.into())
}

/// Wrong admin tokens a client may send: a burst of 5, then one every 10 s.
const GUESS_RPM: u32 = 6;
const GUESS_BURST: u32 = 5;

thread_local! {
    /// client address -> GCRA state of its failed admin attempts
    static GUESSES: RefCell<SortedMap<String, Tat>> = RefCell::new(SortedMap::new());
}

/// Checks the admin token (constant time). No token configured: the API is off. A client
/// that keeps guessing is throttled before its token is even compared.
pub fn authorise(req: &Incoming, s: &Settings) -> Result<(), GatewayError> {
    let expected = s.admin_token.as_ref().ok_or(GatewayError::AdminDisabled)?;
    let client = req.headers().get("cf-connecting-ip").ok().flatten().unwrap_or_else(|| "local".into());
    let now = platform::now();
    let quota = Quota::new(GUESS_RPM, GUESS_BURST).ok_or(GatewayError::AdminDisabled)?;
    let tat = GUESSES.with(|g| g.borrow().get(&client).copied()).unwrap_or_default();
    if let Err(no) = gcra::check(quota, tat, now, 1) {
        stats::bump(stats::Counter::AdminThrottled);
        return Err(GatewayError::RateLimited { retry_after_ms: no.wait_ms });
    }
    let header = req.headers().get("authorization").ok().flatten().unwrap_or_default();
    let given = keys::bearer_token(&header).unwrap_or("");
    if keys::constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) {
        return Ok(());
    }
    stats::bump(stats::Counter::AdminAuthFailures);
    if let Ok((next, _)) = gcra::check(quota, tat, now, 1) {
        GUESSES.with(|g| {
            let mut g = g.borrow_mut();
            if g.len() > 10_000 {
                g.clear();
            }
            g.insert(client, next);
        });
    }
    Err(GatewayError::InvalidApiKey)
}

/// The largest admin body: a key's or an org's settings.
const ADMIN_BODY_LIMIT: u64 = 64 * 1024;

async fn json_body<T: FromJson>(req: &Incoming) -> Result<T, GatewayError> {
    // read no further than the limit: a larger declared length is refused before a byte is
    // read, a chunked body as soon as it passes it
    let body = body_io::read_request(req, ADMIN_BODY_LIMIT).await?;
    let text = std::str::from_utf8(&body.bytes).map_err(|e| bad(format!("body: {e}")))?;
    wire::parse(text).map_err(|e| bad(format!("body{}{e}", if e.0.starts_with(':') { "" } else { ": " })))
}

/// Seals provider keys for the key `key_id` (each bound to that id and its provider).
async fn seal_all(
    s: &Settings,
    key_id: &str,
    given: SortedMap<String, String>,
) -> Result<SortedMap<String, SealedKey>, GatewayError> {
    let mut out = SortedMap::new();
    for (provider, key) in given {
        admin_input::check_provider_key(&provider, &key)?;
        let sealed = sealing::seal(s, key_id, &provider, &key).await?;
        out.insert(provider, sealed);
    }
    Ok(out)
}

/// The `If-Match` of an edit, if it has one.
fn precondition(req: &Incoming) -> Option<IfMatch> {
    req.headers().get("if-match").ok().flatten().map(|h| IfMatch::parse(&h))
}

/// Waits before an edit that lost a race reads again; `false` when it has tried enough.
async fn back_off(attempt: &mut u32) -> bool {
    if *attempt >= EDIT_RETRY.max_retries {
        return false;
    }
    platform::sleep_ms(EDIT_RETRY.backoff_ms(*attempt, &mut OsRng)).await;
    *attempt += 1;
    true
}

fn revoked_key() -> GatewayError {
    bad("a revoked key cannot be changed")
}

/// Writes KV's copy of a key in line with the ledger's word, if it is behind on a revocation.
async fn follow_ledger(env: &Env, record: KeyRecord, held: Option<&KeyPolicy>) -> Result<KeyRecord, GatewayError> {
    let (shown, repair) = edits::ledger_view(&record, held);
    if repair {
        kv::put_key(env, &shown).await?;
    }
    Ok(shown)
}

/// Pushes a key's (and its account's) current policies to the ledger.
async fn push(env: &Env, caller: &Caller) -> Result<(), GatewayError> {
    account_do::push_policy(env, &caller.account, Some(caller.key_policy.clone()), Some(caller.account_policy)).await
}

async fn org_of(env: &Env, record: &KeyRecord) -> Result<Option<OrgRecord>, GatewayError> {
    match &record.org {
        Some(id) => kv::org(env, id).await,
        None => Ok(None),
    }
}

pub async fn create_key(req: Incoming, env: &Env, s: &Settings) -> Result<Answer, GatewayError> {
    let n: NewKey = json_body(&req).await?;
    let org = match &n.org {
        Some(id) => Some(kv::org(env, id).await?.ok_or_else(|| bad(format!("org {id:?} does not exist")))?),
        None => None,
    };
    let plan = n.plan.or_else(|| org.as_ref().map(|o| o.plan.clone())).ok_or_else(|| bad("plan is required"))?;
    let p = s.plan(&plan).ok_or_else(|| bad(format!("unknown plan {plan:?}")))?;
    if org.is_some() != p.pooled {
        return Err(bad(if p.pooled {
            "team and enterprise keys belong to an org: give 'org'"
        } else {
            "only pooled plans (team, enterprise) take an org"
        }));
    }
    let name = n.name.unwrap_or_default();
    if !keys::valid_name(&name) {
        return Err(bad("name: at most 100 printable characters"));
    }
    check_rate(&n.rate_limit)?;
    let allowed_origins = check_origins(&n.allowed_origins)?;
    let allowed_endpoints = check_endpoints(&n.allowed_endpoints, s)?;
    if p.byok && n.provider_key.is_empty() {
        return Err(bad("byok keys need provider_key: {\"provider\": \"key\"}"));
    }
    let mut random = [0u8; MINT_BYTES];
    platform::secure_random(&mut random)?;
    let minted = keys::mint_key(&random);
    // sealed for this key's id, so the sealed value opens in this record only
    let provider_keys = seal_all(s, &minted.id, n.provider_key).await?;
    let record = KeyRecord {
        id: minted.id,
        name,
        plan,
        org: n.org,
        allowed_origins,
        allowed_endpoints,
        rate_limit: n.rate_limit,
        monthly_credit_micro_usd: n.monthly_credit_micro_usd,
        spend_cap_micro_usd: n.spend_cap_micro_usd,
        created_at: platform::now().to_string(),
        revoked: false,
        version: 1,
        provider_keys,
        digest: keys::digest(&minted.secret),
    };
    push(env, &caller_for(record.clone(), org, s)?).await?;
    registry_do::add(env, keys::digest_prefix(&record.digest)).await?;
    registry_do::add_origins(env, &record.allowed_origins).await?;
    kv::put_key(env, &record).await?;
    let mut body = record.public_json();
    body["key"] = Value::String(minted.secret);
    Ok(Answer::record(201, body, record.version))
}

/// A page of a list (`prefix`: every key, one org's keys, or every org), from the summaries
/// filed beside its entries, as `?limit=&cursor=` ask. An entry with none is read; a key filed
/// before summaries and the org index existed is filed again now, so listing every key once
/// after an upgrade completes the org index for the keys made before it.
async fn list(req: &Incoming, env: &Env, prefix: &str) -> Result<Answer, GatewayError> {
    let asked = listing::page_request(listing::query(req.url()), prefix)?;
    let listed = kv::page(env, prefix, asked.limit, asked.after).await?;
    let mut data = Vec::with_capacity(listed.entries.len());
    for (id, stored) in listed.entries {
        let summary = stored.as_deref().and_then(|s| serde_json::from_slice::<Value>(s.as_bytes()).ok());
        if let Some(known) = summary.filter(|v| v.get("id").is_some()) {
            data.push(known);
        } else if prefix == kv::ALL_ORGS {
            data.extend(kv::org(env, &id).await?.map(|o| o.public_json()));
        } else if let Some(record) = kv::key_by_id(env, &id).await? {
            if stored.is_none() {
                kv::index_key(env, &record).await?;
            }
            data.push(record.public_json());
        }
    }
    Ok(Answer::list(listing::page(prefix, data, listed.more.as_deref())))
}

pub async fn list_keys(req: &Incoming, env: &Env) -> Result<Answer, GatewayError> {
    list(req, env, kv::ALL_KEYS).await
}

/// `GET /admin/orgs/{id}/keys`: the org's keys, from its index (404 for an unknown org).
pub async fn list_org_keys(req: &Incoming, env: &Env, org: &str) -> Result<Answer, GatewayError> {
    kv::org(env, org).await?.ok_or(GatewayError::NotFound)?;
    list(req, env, &kv::org_keys(org)).await
}

/// A key as the ledger knows it (its account, its org's policy), for reading its log.
pub async fn key_caller(env: &Env, s: &Settings, id: &str) -> Result<Caller, GatewayError> {
    let record = kv::key_by_id(env, id).await?.ok_or(GatewayError::NotFound)?;
    let org = org_of(env, &record).await?;
    caller_for(record, org, s)
}

/// A key with its usage. `revoked` and `version` are the ledger's word (KV's copy may lag a
/// revocation; if it does, it is repaired here).
pub async fn get_key(env: &Env, s: &Settings, id: &str) -> Result<Answer, GatewayError> {
    let record = kv::key_by_id(env, id).await?.ok_or(GatewayError::NotFound)?;
    let org = org_of(env, &record).await?;
    let caller = caller_for(record.clone(), org.clone(), s)?;
    let report = account_do::caller_usage(env, &caller, false).await?;
    let record = follow_ledger(env, record, report.as_ref().and_then(|r| r.key_policy.as_ref())).await?;
    let mut body = record.public_json();
    let version = record.version;
    body["usage"] = usage::document(&caller_for(record, org, s)?, report);
    Ok(Answer::record(200, body, version))
}

/// `PATCH /admin/keys/{id}`: compare-and-set in the key's ledger on the version read from KV.
/// With `If-Match`, a version other than the current one is a 412; without, an edit that
/// lost a race reads the winner's record and re-applies itself, a few times at most.
pub async fn patch_key(req: Incoming, env: &Env, s: &Settings, id: &str) -> Result<Answer, GatewayError> {
    let wanted = precondition(&req);
    let mut p: KeyPatch = json_body(&req).await?;
    let sealed = match p.provider_key.take() {
        Some(pk) => Some(seal_all(s, id, pk).await?),
        None => None,
    };
    let mut attempt = 0;
    loop {
        let mut record = kv::key_by_id(env, id).await?.ok_or(GatewayError::NotFound)?;
        if record.revoked {
            return Err(revoked_key());
        }
        if let Some(m) = wanted.as_ref().filter(|m| !m.matches(record.version)) {
            // a tag newer than KV's copy: KV has yet to catch up with the ledger
            if m.is_ahead_of(record.version) && back_off(&mut attempt).await {
                continue;
            }
            return Err(GatewayError::PreconditionFailed { current_version: record.version });
        }
        let base = record.version;
        apply_key_patch(&p, sealed.as_ref(), &mut record, s)?;
        record.version = base.saturating_add(1);
        let org = org_of(env, &record).await?;
        let caller = caller_for(record.clone(), org, s)?;
        let edit =
            account_do::edit_key(env, &caller.account, base, caller.key_policy.clone(), Some(caller.account_policy));
        match edit.await? {
            KeyEdit::Accepted { policy } => {
                record.version = policy.version;
                registry_do::add_origins(env, &record.allowed_origins).await?;
                kv::put_key(env, &record).await?;
                // a DELETE may have landed between the edit and this write: KV must say so
                let held = account_do::held_key(env, &caller.account, caller.key_policy.clone(), false).await?;
                let record = follow_ledger(env, record, held.as_ref()).await?;
                return Ok(Answer::record(200, record.public_json(), record.version));
            }
            KeyEdit::Revoked { policy } => {
                if let Some(stale) = kv::key_by_id(env, id).await? {
                    follow_ledger(env, stale, Some(&policy)).await?;
                }
                return Err(revoked_key());
            }
            KeyEdit::Conflict { current } => {
                if wanted.is_some() || !back_off(&mut attempt).await {
                    return Err(GatewayError::PreconditionFailed { current_version: current });
                }
            }
        }
    }
}

/// `DELETE /admin/keys/{id}`: revokes, in the ledger first (from that moment no isolate can
/// admit a call with the key, and no edit can land after it), then in KV.
pub async fn revoke_key(env: &Env, s: &Settings, id: &str) -> Result<Answer, GatewayError> {
    let record = kv::key_by_id(env, id).await?.ok_or(GatewayError::NotFound)?;
    let org = org_of(env, &record).await?;
    let caller = caller_for(record.clone(), org, s)?;
    let held = account_do::held_key(env, &caller.account, caller.key_policy, true).await?;
    let record = follow_ledger(env, record, held.as_ref()).await?;
    Ok(Answer::record(200, record.public_json(), record.version))
}

pub async fn create_org(req: Incoming, env: &Env, s: &Settings) -> Result<Answer, GatewayError> {
    let n: NewOrg = json_body(&req).await?;
    if !keys::valid_slug(&n.id, 64) {
        return Err(bad("id must be a slug: letters, digits, '-', '_', '.'"));
    }
    let bill_to = n.bill_to.unwrap_or_else(|| n.id.clone());
    check_org_fields(&n.plan, n.seats, &bill_to, s)?;
    check_rate(&n.rate_limit)?;
    let shards = n.shards.unwrap_or(1);
    if !(1..=MAX_SHARDS).contains(&shards) {
        return Err(bad(format!("shards: 1 to {MAX_SHARDS}")));
    }
    if kv::org(env, &n.id).await?.is_some() {
        return Err(bad(format!("org {:?} already exists", n.id)));
    }
    let org = OrgRecord {
        id: n.id,
        plan: n.plan,
        seats: n.seats,
        bill_to,
        spend_limit_micro_usd: n.spend_limit_micro_usd,
        rate_limit: n.rate_limit,
        created_at: platform::now().to_string(),
        version: 1,
        shards,
    };
    let (_, policy) = org_policy(&org, s)?;
    account_do::push_policy(env, &org_account(&org.id), None, Some(policy)).await?;
    kv::put_org(env, &org).await?;
    Ok(Answer::record(201, org.public_json(), org.version))
}

pub async fn list_orgs(req: &Incoming, env: &Env) -> Result<Answer, GatewayError> {
    list(req, env, kv::ALL_ORGS).await
}

/// An org with its pooled usage; its version is the newer of KV's and the ledger's.
pub async fn get_org(env: &Env, s: &Settings, id: &str) -> Result<Answer, GatewayError> {
    kv::forget_org(id);
    let org = kv::org(env, id).await?.ok_or(GatewayError::NotFound)?;
    let (_, policy) = org_policy(&org, s)?;
    let report = account_do::org_usage(env, &org, policy).await?;
    let version = org.version.max(report.as_ref().and_then(|r| r.account_version).unwrap_or(0));
    let mut body = org.public_json();
    body["version"] = json!(version);
    body["usage"] = crate::core::wire::value(&report);
    Ok(Answer::record(200, body, version))
}

/// `PATCH /admin/orgs/{id}`: compare-and-set in the org's ledger, as for keys.
pub async fn patch_org(req: Incoming, env: &Env, s: &Settings, id: &str) -> Result<Answer, GatewayError> {
    let wanted = precondition(&req);
    let p: OrgPatch = json_body(&req).await?;
    let mut attempt = 0;
    loop {
        kv::forget_org(id);
        let mut org = kv::org(env, id).await?.ok_or(GatewayError::NotFound)?;
        if let Some(m) = wanted.as_ref().filter(|m| !m.matches(org.version)) {
            if m.is_ahead_of(org.version) && back_off(&mut attempt).await {
                continue;
            }
            return Err(GatewayError::PreconditionFailed { current_version: org.version });
        }
        let base = org.version;
        if p.shards.is_some_and(|n| n != org.shards) {
            return Err(bad("shards is fixed when the org is created"));
        }
        if let Some(plan) = &p.plan {
            org.plan = plan.clone();
        }
        if let Some(seats) = p.seats {
            org.seats = seats;
        }
        if let Some(b) = &p.bill_to {
            org.bill_to = b.clone();
        }
        if let Some(l) = p.spend_limit_micro_usd {
            org.spend_limit_micro_usd = l;
        }
        if let Some(r) = p.rate_limit {
            check_rate(&r)?;
            org.rate_limit = r;
        }
        check_org_fields(&org.plan, org.seats, &org.bill_to, s)?;
        org.version = base.saturating_add(1);
        let (_, policy) = org_policy(&org, s)?;
        match account_do::edit_account(env, &org_account(&org.id), base, policy).await? {
            AccountEdit::Accepted { policy } => {
                org.version = policy.version;
                kv::put_org(env, &org).await?;
                return Ok(Answer::record(200, org.public_json(), org.version));
            }
            AccountEdit::Conflict { current } => {
                if wanted.is_some() || !back_off(&mut attempt).await {
                    return Err(GatewayError::PreconditionFailed { current_version: current });
                }
            }
        }
    }
}

/// Answers an admin route (already authorised): the body with the gateway's headers and, for
/// one record, its version as `ETag`.
pub async fn respond(
    req: Incoming,
    env: &Env,
    s: &Settings,
    route: &crate::core::paths::Route,
    meta: &Meta,
) -> Result<Response, GatewayError> {
    let a = answer(req, env, s, route).await?;
    let h = Headers::new();
    let _ = h.set("content-type", "application/json");
    if let Some(v) = a.version {
        let _ = h.set("etag", &edits::etag(v));
    }
    meta.apply(&h);
    response::bytes(a.status, a.body.to_string().into_bytes(), h)
        .map_err(|_| GatewayError::Internal("the response could not be built"))
}

/// The live price book as the admin API shows it, with the `PRICES` entries that override it.
fn price_view(s: &Settings, book: Option<&crate::core::price_book::PriceBook>) -> Value {
    let mut body = match book {
        Some(b) => b.view(),
        None => json!({"fetched_at": null, "models": {}}),
    };
    let overrides: Vec<&str> = s.prices.known_models().map(|(m, _)| m).collect();
    body["overrides"] = json!(overrides);
    body
}

/// Dispatches an admin route (already authorised).
async fn answer(
    req: Incoming,
    env: &Env,
    s: &Settings,
    route: &crate::core::paths::Route,
) -> Result<Answer, GatewayError> {
    use crate::core::paths::Route;
    let m = req.method();
    match (route, m) {
        (Route::AdminKeys, Method::Post) => create_key(req, env, s).await,
        (Route::AdminKeys, _) => list_keys(&req, env).await,
        (Route::AdminKey(id), Method::Get) => get_key(env, s, id).await,
        (Route::AdminKey(id), Method::Patch) => patch_key(req, env, s, id).await,
        (Route::AdminKey(id), Method::Delete) => revoke_key(env, s, id).await,
        (Route::AdminOrgs, Method::Post) => create_org(req, env, s).await,
        (Route::AdminOrgs, _) => list_orgs(&req, env).await,
        (Route::AdminOrgKeys(id), _) => list_org_keys(&req, env, id).await,
        (Route::AdminOrg(id), Method::Get) => get_org(env, s, id).await,
        (Route::AdminOrg(id), Method::Patch) => patch_org(req, env, s, id).await,
        (Route::AdminStats, _) => Ok(Answer::list(json!({"isolate": stats::snapshot()}))),
        (Route::AdminPrices, _) => Ok(Answer::list(price_view(s, prices::current(env).await.as_deref()))),
        (Route::AdminPricesRefresh, _) => {
            let book = prices::refresh(env, s).await?;
            Ok(Answer::list(price_view(s, Some(&book))))
        }
        _ => Err(GatewayError::MethodNotAllowed),
    }
}
