//! This isolate's leases (`core::isolate_lease`): a warm key is admitted here, from the lease
//! its account's object granted this isolate, with no round trip.
//!
//! A lease comes back with a cold call's admission (asked for in the same round trip), or
//! ahead of need, when the one held runs low: asked for in the queue that carries the reports
//! (`outbox::ask`), it rides their round trip. Each call admitted on it is
//! reported to the object as it is admitted, before it goes upstream, in the queue that
//! carries the settles (`outbox`), so the report always goes before the call's settle and
//! before the lease's return. A lease is returned in the batch after the next one arrives, or
//! at its end.

use crate::core::account::{AccountPolicy, Cost, KeyPolicy};
use crate::core::gcra::RateView;
use crate::core::isolate_lease::{Demand, Grant, Held, Want};
use crate::core::ledger::MicroUsd;
use crate::core::protocol::{AccountOp, AccountReply, Leased};
use crate::core::sorted::SortedMap;
use crate::core::time::UnixMillis;
use crate::edge::outbox::{self, Back};
use crate::edge::platform;
use std::cell::RefCell;
use std::rc::Rc;
use worker::{Context, Env};

/// The fewest calls a lease is asked for, before the isolate has seen any demand.
const FLOOR_CALLS: u32 = 4;
/// After a refusal, a lease is not asked for again this soon: the account is near its end,
/// or its throttle, and is admitted call by call meanwhile.
const REFUSED_BACKOFF_MS: u64 = 250;
/// A lease asked for and not answered within this is asked for again.
const ASK_TIMEOUT_MS: u64 = 2_000;
/// The most accounts and keys an isolate keeps a slot for: past it, the slots without a
/// lease are dropped (a key's demand is then learnt again from its next calls).
const MAX_SLOTS: usize = 10_000;

/// One account and key, as this isolate leases it.
#[derive(Default)]
struct Slot {
    held: Option<Lent>,
    demand: Demand,
    /// The worst case of the last calls, for the size of the next lease.
    per_call: MicroUsd,
    refused_at: Option<UnixMillis>,
    /// A lease was asked for (with a cold call) and its answer has not come: the calls
    /// meanwhile do not ask for another (a burst would take a lease each).
    asking_since: Option<UnixMillis>,
}

/// A lease, and the policy versions it was granted under.
struct Lent {
    lease: Held,
    key_version: u64,
    account_version: u64,
}

thread_local! {
    static SLOTS: RefCell<SortedMap<String, Slot>> = RefCell::new(SortedMap::new());
}

fn slot_name(account: &str, key_id: &str) -> String {
    format!("{account}|{key_id}")
}

/// A call admitted here, on a lease.
pub struct Local {
    pub hold: u64,
    pub leased: Leased,
    /// What the call's hold holds.
    pub held: MicroUsd,
    /// For a token-priced call its output bound, for a time-billed one its milliseconds.
    pub output: Option<u64>,
    pub rate: RateView,
}

/// Counts a call for `account`'s demand, and admits it on this isolate's lease if the lease
/// has room for its whole worst case (the object alone lowers a bound to what is left).
/// `None`: the call goes to the object, asking for a lease with it (`want`).
pub fn admit(
    account: &str,
    key: &KeyPolicy,
    policy: &AccountPolicy,
    cost: &Cost,
    lease_ms: u64,
    now: UnixMillis,
) -> (Option<Local>, Option<Want>) {
    if lease_ms == 0 {
        return (None, None);
    }
    let full = cost.full();
    let output = match *cost {
        Cost::Tokens { output, .. } => Some(output),
        Cost::Time { ms, .. } => Some(ms),
        Cost::Fixed { .. } => None,
    };
    SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        if slots.len() >= MAX_SLOTS {
            // the keys this isolate saw once and holds no lease for go first
            slots.retain(|_, slot| slot.held.is_some());
        }
        let slot = slots.entry(slot_name(account, &key.key_id)).or_default();
        slot.demand.call(now);
        slot.per_call = full.max(MicroUsd(slot.per_call.0 / 2));
        let current = slot
            .held
            .as_mut()
            .filter(|l| l.key_version == key.version && l.account_version == policy.version && !key.revoked);
        if let Some(lent) = current {
            if let Some(hold) = lent.lease.admit(full, now) {
                let local = Local {
                    hold,
                    leased: Leased {
                        lease: lent.lease.grant.id,
                        key_id: key.key_id.clone(),
                        amount: full,
                        report: false,
                    },
                    held: full,
                    output,
                    rate: lent.lease.rate(),
                };
                return (Some(local), None);
            }
        }
        let recently_refused = slot.refused_at.is_some_and(|t| now.millis_since(t) < REFUSED_BACKOFF_MS);
        let asking = slot.asking_since.is_some_and(|t| now.millis_since(t) < ASK_TIMEOUT_MS);
        let renewing = slot.held.as_ref().is_some_and(|l| l.lease.renewal_pending(now));
        if recently_refused || asking || renewing {
            return (None, None);
        }
        slot.asking_since = Some(now);
        (None, Some(want_of(slot, lease_ms)))
    })
}

fn want_of(slot: &Slot, lease_ms: u64) -> Want {
    Want { calls: slot.demand.calls_in(lease_ms, FLOOR_CALLS), per_call: slot.per_call, ttl_ms: lease_ms }
}

/// A call admitted here, reported to the object: queued in the same step as the admission,
/// before the call awaits anything, so that no return of its lease can be queued ahead of
/// it (the object would free the credit of a call it never heard of).
pub fn report(env: &Env, ctx: &Context, account: &str, key_id: &str, local: &Local, ttl_ms: u64) {
    let calls = vec![(local.hold, local.held)];
    let op = AccountOp::Admitted { lease: local.leased.lease, key_id: key_id.to_string(), calls, ttl_ms };
    outbox::enqueue(env, ctx, account, op);
}

/// After a call admitted here: if the lease runs low, the next lease asked for beside the
/// call. `digest` names the caller's cached key record, dropped if the object knows a newer
/// one.
pub fn after_local(env: &Env, ctx: &Rc<Context>, account: &str, key: &KeyPolicy, policy: &AccountPolicy, digest: &str) {
    let lease_ms = crate::edge::config::settings(env).map_or(0, |s| s.lease_ms);
    let now = platform::now();
    let want = SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        let slot = slots.get_mut(&slot_name(account, &key.key_id))?;
        let lent = slot.held.as_mut()?;
        if !lent.lease.wants_renewal(now, slot.demand.gap_ms())
            || slot.refused_at.is_some_and(|t| now.millis_since(t) < REFUSED_BACKOFF_MS)
        {
            return None;
        }
        lent.lease.renewing = true;
        Some(want_of(slot, lease_ms))
    });
    let Some(want) = want else { return };
    // asked in the queue that carries the lease's reports, so it rides their round trip
    let op = AccountOp::Acquire { key: key.clone(), account: *policy, want };
    let (task_env, name, key, policy) = (env.clone(), account.to_string(), key.clone(), *policy);
    let digest = digest.to_string();
    let on_reply: outbox::OnReply = Box::new(move |reply, asked_at, sender, since| {
        let grant = match reply {
            Some(AccountReply::Leased { grant, stale }) => {
                if stale {
                    crate::edge::kv::forget_key(&digest);
                }
                grant
            }
            _ => None,
        };
        install(&task_env, sender, &name, &key, &policy, grant, asked_at, since);
    });
    outbox::ask(env, ctx, account, op, on_reply);
}

/// A call on `account` cost more than it held (upstream overshot): the account may now be
/// past its ceiling, which only its object knows, so this isolate gives its leases on it
/// back and asks the object again for the next call.
pub fn overran(env: &Env, ctx: &Rc<Context>, account: &str) {
    let prefix = format!("{account}|");
    let returned: Vec<u64> = SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        slots
            .iter_mut()
            .filter(|(name, _)| name.starts_with(&prefix))
            .filter_map(|(_, slot)| slot.held.take().map(|l| l.lease.grant.id))
            .collect()
    });
    for lease in returned {
        outbox::enqueue(env, ctx, account, AccountOp::ReturnLease { lease });
    }
}

/// Takes a lease the object granted (with a cold call's admission, or asked for ahead), in
/// answer to a request sent at `asked_at`: the lease it replaces is returned, after its
/// reports (or this one, unused, if the lease held is fresher). `None` (refused) holds off
/// asking again for a moment. `ctx` has carried this isolate's background work `since` then
/// (`outbox::return_lease`): from a context that has carried it too long, a lease that nothing
/// replaces is not returned at its end by a timer but by the next call that finds it over,
/// or it lapses.
#[allow(clippy::too_many_arguments)]
pub fn install(
    env: &Env,
    ctx: &Rc<Context>,
    account: &str,
    key: &KeyPolicy,
    policy: &AccountPolicy,
    grant: Option<Grant>,
    asked_at: UnixMillis,
    since: UnixMillis,
) {
    let name = slot_name(account, &key.key_id);
    // the lease given back (replaced, or this one, answered too late) with when it would
    // have ended, and whether this one was taken
    let (given_back, taken) = SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        let slot = slots.entry(name).or_default();
        slot.asking_since = None;
        match grant {
            Some(grant) if slot.held.as_ref().is_some_and(|l| l.lease.outlasts(&grant, asked_at)) => {
                (Some((grant.id, grant.ends_at(asked_at))), false)
            }
            Some(grant) => {
                let lent = Lent {
                    lease: Held::new(grant, asked_at),
                    key_version: key.version,
                    account_version: policy.version,
                };
                slot.refused_at = None;
                (slot.held.replace(lent).map(|old| (old.lease.grant.id, old.lease.ends_at)), true)
            }
            None => {
                slot.refused_at = Some(platform::now());
                if let Some(lent) = slot.held.as_mut() {
                    lent.lease.renewing = false;
                }
                (None, false)
            }
        }
    });
    if let Some((old, until)) = given_back {
        outbox::return_lease(env, ctx, account, old, Back::Replaced { until }, since);
    }
    if let Some(grant) = grant.filter(|_| taken && outbox::may_carry(since)) {
        // returned at its end if nothing replaced it, so its credit is not held idle
        let (env, task_ctx, account, key_id) = (env.clone(), ctx.clone(), account.to_string(), key.key_id.clone());
        let ends = grant.ends_at(asked_at);
        ctx.wait_until(async move {
            platform::sleep_ms(ends.millis_since(platform::now())).await;
            let ended = SLOTS.with(|slots| {
                let mut slots = slots.borrow_mut();
                let slot = slots.get_mut(&slot_name(&account, &key_id))?;
                (slot.held.as_ref()?.lease.grant.id == grant.id).then(|| slot.held.take()).flatten()
            });
            if ended.is_some() {
                outbox::return_lease(&env, &task_ctx, &account, grant.id, Back::Ended, since);
            }
        });
    }
}
