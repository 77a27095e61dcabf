//! What the rest of the edge asks an account object, one function per operation.

use crate::core::account::{AccountPolicy, Admission, AdmitRequest, KeyPolicy};
use crate::core::caller::{org_account, shard_account, Caller};
use crate::core::edits::{AccountEdit, KeyEdit};
use crate::core::error::GatewayError;
use crate::core::keys::OrgRecord;
use crate::core::protocol::{self, AccountOp, AccountReply, UsageReport};
use crate::core::spend::JobRow;
use crate::edge::{objects, platform};
use futures_util::future;
use worker::Env;

/// Sends one operation to an account. Any failure is `LedgerUnavailable` (logged by
/// `objects::call`): metered traffic fails closed rather than going upstream uncounted.
pub async fn call(env: &Env, account: &str, op: &AccountOp) -> std::result::Result<AccountReply, GatewayError> {
    objects::call::<protocol::Account>(env, account, op).await.map_err(|_| GatewayError::LedgerUnavailable)
}

/// A reply of another kind than the operation asks for: the worker and the object disagree.
pub fn unexpected(reply: AccountReply) -> GatewayError {
    platform::fault("account object: a reply of the wrong kind", reply.kind());
    GatewayError::LedgerUnavailable
}

pub async fn admit(env: &Env, account: &str, req: AdmitRequest) -> std::result::Result<Admission, GatewayError> {
    match call(env, account, &AccountOp::Admit(req)).await? {
        AccountReply::Admission(a) => Ok(a),
        other => Err(unexpected(other)),
    }
}

/// Usage, after offering the edge's copies of the policies. With `throttle`, the read takes
/// one request from the caller's throttle in the same round trip; a refusal is the error.
pub async fn usage(
    env: &Env,
    account: &str,
    key: Option<KeyPolicy>,
    policy: Option<AccountPolicy>,
    throttle: bool,
) -> std::result::Result<Option<UsageReport>, GatewayError> {
    match call(env, account, &AccountOp::Usage { key, account: policy, throttle }).await? {
        AccountReply::Usage(report) => Ok(*report),
        AccountReply::Admission(Admission::Denied { denial, retry_after_ms, affordable, .. }) => {
            Err(denial.error(retry_after_ms, affordable))
        }
        other => Err(unexpected(other)),
    }
}

/// A caller's usage: its account's, or for a key of a sharded org, every shard's added up
/// against the org's budget (the key's own figures and throttle from its shard).
pub async fn caller_usage(
    env: &Env,
    caller: &Caller,
    throttle: bool,
) -> std::result::Result<Option<UsageReport>, GatewayError> {
    let own = usage(env, &caller.account, Some(caller.key_policy.clone()), Some(caller.account_policy), throttle);
    let (Some((shard, shards)), Some(org)) = (caller.shard, caller.org.as_ref()) else {
        return own.await;
    };
    let names: Vec<String> = (0..shards).filter(|j| *j != shard).map(|j| shard_account(&org.id, j, shards)).collect();
    let others = names.iter().map(|name| usage(env, name, None, None, false)).collect();
    let (own, others) = future::join(own, platform::join_all(others)).await;
    let own = own?;
    let mut all =
        others.into_iter().collect::<std::result::Result<Vec<_>, _>>()?.into_iter().flatten().collect::<Vec<_>>();
    all.extend(own.clone());
    Ok(UsageReport::of_shards(&all, own.as_ref(), &caller.account_policy.budget, platform::now()))
}

/// An org's pooled usage: its pool object's, or every shard's added up.
pub async fn org_usage(
    env: &Env,
    org: &OrgRecord,
    policy: AccountPolicy,
) -> std::result::Result<Option<UsageReport>, GatewayError> {
    let pool_name = org_account(&org.id);
    let pool = usage(env, &pool_name, None, Some(policy), false);
    if org.shards <= 1 {
        return pool.await;
    }
    let names: Vec<String> = (0..org.shards).map(|j| shard_account(&org.id, j, org.shards)).collect();
    let shards = names.iter().map(|name| usage(env, name, None, None, false)).collect();
    let (pool, shards) = future::join(pool, platform::join_all(shards)).await;
    let mut all =
        shards.into_iter().collect::<std::result::Result<Vec<_>, _>>()?.into_iter().flatten().collect::<Vec<_>>();
    // the pool object holds the org policy's version; its own ledger is empty
    all.extend(pool?);
    Ok(UsageReport::of_shards(&all, None, &policy.budget, platform::now()))
}

pub async fn push_policy(
    env: &Env,
    account: &str,
    key: Option<KeyPolicy>,
    policy: Option<AccountPolicy>,
) -> std::result::Result<(), GatewayError> {
    match call(env, account, &AccountOp::Policy { key, account: policy }).await? {
        AccountReply::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// An admin edit of a key, compare-and-set on `base`.
pub async fn edit_key(
    env: &Env,
    account: &str,
    base: u64,
    key: KeyPolicy,
    policy: Option<AccountPolicy>,
) -> std::result::Result<KeyEdit, GatewayError> {
    match call(env, account, &AccountOp::EditKey { base, key, account: policy }).await? {
        AccountReply::KeyEdit(e) => Ok(e),
        other => Err(unexpected(other)),
    }
}

/// The key policy the ledger holds (after revoking it, with `revoke`).
pub async fn held_key(
    env: &Env,
    account: &str,
    key: KeyPolicy,
    revoke: bool,
) -> std::result::Result<Option<KeyPolicy>, GatewayError> {
    let op = if revoke { AccountOp::RevokeKey { key } } else { AccountOp::HeldKey { key_id: key.key_id } };
    match call(env, account, &op).await? {
        AccountReply::Key(k) => Ok(k),
        other => Err(unexpected(other)),
    }
}

/// Records who submitted a queued job, before the caller learns its id.
pub async fn own_job(env: &Env, account: &str, job_id: String, row: JobRow) -> std::result::Result<(), GatewayError> {
    match call(env, account, &AccountOp::OwnJob { job_id, row }).await? {
        AccountReply::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// A job of `key_id`'s, and where upstream its polls go (`None`: unknown, another key's, or
/// the key is revoked).
pub async fn job(
    env: &Env,
    account: &str,
    job_id: String,
    key_id: String,
) -> std::result::Result<Option<JobRow>, GatewayError> {
    match call(env, account, &AccountOp::Job { job_id, key_id }).await? {
        AccountReply::Job(row) => Ok(row),
        other => Err(unexpected(other)),
    }
}

/// A page of one account object's request log.
pub async fn requests(
    env: &Env,
    account: &str,
    query: crate::core::request_log::LogQuery,
    shard: u32,
    throttle: Option<(KeyPolicy, AccountPolicy)>,
) -> std::result::Result<crate::core::request_log::Page, GatewayError> {
    match call(env, account, &AccountOp::Requests { query, shard, throttle }).await? {
        AccountReply::Requests(page) => Ok(page),
        AccountReply::Admission(Admission::Denied { denial, retry_after_ms, affordable, .. }) => {
            Err(denial.error(retry_after_ms, affordable))
        }
        other => Err(unexpected(other)),
    }
}

/// An admin edit of an org's pool, compare-and-set on `base`.
pub async fn edit_account(
    env: &Env,
    account: &str,
    base: u64,
    policy: AccountPolicy,
) -> std::result::Result<AccountEdit, GatewayError> {
    match call(env, account, &AccountOp::EditAccount { base, account: policy }).await? {
        AccountReply::AccountEdit(e) => Ok(e),
        other => Err(unexpected(other)),
    }
}
