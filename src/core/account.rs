//! The state machine of one billing account's Durable Object: its ledger, its throttle, and
//! the throttles and policies of the keys that bill to it (one key, or an org's keys).
//!
//! One `admit` decides a call in one round trip: key revoked? key and account throttles?
//! worst-case cost reserved? Nothing here does I/O: the Durable Object loads this state,
//! calls it with the time, and stores it.

use crate::core::error::GatewayError;
use crate::core::gcra::{self, Quota, RateView, Tat};
use crate::core::isolate_lease::{self, Grant, Issued, Want};
use crate::core::keys::RateLimit;
use crate::core::ledger::{owed_at, Budget, Hold, Ledger, LedgerHead, MicroUsd, Settled, Usage};
use crate::core::pricing::{ComputePrice, Price, TokenUsage};
use crate::core::sorted::SortedMap;
use crate::core::spend::{Jobs, Spend};
use crate::core::time::{BillingPeriod, UnixMillis};
use crate::core::wire::{self, Errors, Fields, FromJson, ToJson};
use serde_json::Value;

/// What the ledger needs to know of a key. Versioned: the newest version seen wins, so a
/// cached copy at the edge can never undo a revocation pushed by the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    pub key_id: String,
    pub version: u64,
    pub revoked: bool,
    /// The key's own throttle inside a shared account (org keys); `None` when the key is the
    /// account and the account's throttle is the key's.
    pub rate: Option<RateLimit>,
    /// The most this key may spend in a period inside a shared pool (its credit override or
    /// spending cap, whichever is lower); `None` when the key is the account.
    pub ceiling: Option<MicroUsd>,
}

/// The account's money and rate rules, versioned like `KeyPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountPolicy {
    pub version: u64,
    pub budget: Budget,
    pub rate: RateLimit,
    /// Provider-billed (`byok`): usage is recorded, credits are never charged.
    pub provider_billed: bool,
}

/// What a call may cost at worst, as the edge bounds it before sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// A fixed worst case (time-billed calls); zero for calls that cost nothing.
    Fixed { amount: MicroUsd },
    /// A token-priced call: the prompt bound, the output bound asked for per choice, the
    /// choices it multiplies, and the least output worth sending (below it the call is
    /// refused rather than cut to nothing).
    Tokens { price: Price, prompt: u64, output: u64, choices: u64, min_output: u64 },
    /// A time-billed call: the longest it may run (its deadline) and the least time worth
    /// granting; the ledger may grant less than `ms` when the credit cannot pay for it, and
    /// the call is cut when the time granted is spent.
    Time { price: ComputePrice, ms: u64, min_ms: u64 },
}

impl Cost {
    pub const FREE: Cost = Cost::Fixed { amount: MicroUsd::ZERO };

    /// The worst case of the whole call as asked.
    pub fn full(&self) -> MicroUsd {
        match *self {
            Cost::Fixed { amount } => amount,
            Cost::Tokens { price, prompt, output, choices, .. } => {
                price.cost(TokenUsage { prompt, completion: output.saturating_mul(choices) })
            }
            Cost::Time { price, ms, .. } => price.cost_ms(ms),
        }
    }

    /// The same call, admitted whole or not at all: no smaller bound is worth taking (a shard
    /// asks its pool for more before it cuts a call short).
    pub fn whole(self) -> Cost {
        match self {
            Cost::Tokens { price, prompt, output, choices, .. } => {
                Cost::Tokens { price, prompt, output, choices, min_output: output }
            }
            Cost::Time { price, ms, .. } => Cost::Time { price, ms, min_ms: ms },
            fixed => fixed,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmitRequest {
    pub key: KeyPolicy,
    pub account: AccountPolicy,
    pub cost: Cost,
    pub ttl_ms: u64,
    /// A lease the isolate would take with this call, to admit the next ones itself.
    pub lease: Option<Want>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    Revoked,
    RateLimited,
    InsufficientQuota,
}

impl Denial {
    /// The error a caller gets for this denial: one mapping for every route the ledger admits.
    pub fn error(self, retry_after_ms: u64, affordable: Option<u64>) -> GatewayError {
        match self {
            Denial::Revoked => GatewayError::InvalidApiKey,
            Denial::RateLimited => GatewayError::RateLimited { retry_after_ms },
            Denial::InsufficientQuota => GatewayError::InsufficientQuota { retry_after_ms, affordable },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted {
        reservation: Option<u64>,
        /// What the reservation covers, when the ledger may grant less than was asked: for a
        /// token-priced call the output bound per choice, for a time-billed one the
        /// milliseconds it may run.
        output: Option<u64>,
        rate: RateView,
        /// The edge's copy of a policy is older than the ledger's: drop it from caches.
        stale: bool,
        /// What the reservation holds: what the call is charged if its usage is never learned.
        held: MicroUsd,
        /// The lease the isolate asked for, if the account could grant one.
        lease: Option<Grant>,
    },
    Denied {
        denial: Denial,
        retry_after_ms: u64,
        rate: Option<RateView>,
        stale: bool,
        /// For a token-priced call refused for credit: the output tokens it could still have
        /// paid for (fewer than the least worth sending), if the prompt fits at all.
        affordable: Option<u64>,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyState {
    pub policy: Option<KeyPolicy>,
    pub tat: Tat,
    /// This key's share of the account's spend in `period_start`'s period.
    pub used: MicroUsd,
    /// What this key was charged beyond its reservations, same period.
    pub overrun: MicroUsd,
    /// What this key was charged without a usage count, same period (part of `used`).
    pub unmetered: MicroUsd,
    pub period_start: UnixMillis,
}

impl KeyState {
    /// The key's figures in the period starting at `start`: its own, or for a later period
    /// the debt it carries into it (spend past `ceiling`), nothing else.
    fn in_period(&self, start: UnixMillis, ceiling: Option<MicroUsd>) -> (MicroUsd, MicroUsd, MicroUsd) {
        if start <= self.period_start {
            return (self.used, self.overrun, self.unmetered);
        }
        (owed_at(self.used, ceiling, self.period_start, start), MicroUsd::ZERO, MicroUsd::ZERO)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountState {
    pub ledger: Ledger,
    pub tat: Tat,
    pub policy: Option<AccountPolicy>,
    pub keys: SortedMap<String, KeyState>,
    /// Reservation id -> the key it was made for, to attribute spend per key.
    owners: SortedMap<u64, String>,
    /// This period's spend per key, model and provider.
    pub spend: Spend,
    /// The queued jobs this account's keys submitted.
    pub jobs: Jobs,
    /// The leases granted to isolates, until they can be forgotten.
    pub grants: SortedMap<u64, Issued>,
}

fn quota(r: RateLimit) -> Option<Quota> {
    Quota::new(r.rpm, r.burst)
}

fn view(r: RateLimit, a: gcra::Allow) -> RateView {
    RateView { rpm: r.rpm, burst: r.burst, remaining: a.remaining, reset_ms: a.reset_ms }
}

fn tighter(a: RateView, b: Option<RateView>) -> RateView {
    match b {
        Some(b) if b.remaining < a.remaining => b,
        _ => a,
    }
}

impl AccountState {
    pub fn new(now: UnixMillis) -> Self {
        AccountState { ledger: Ledger::new(now), ..Default::default() }
    }

    /// Keeps the newer of the stored and offered account policy; says if the offer was stale.
    pub fn merge_account_policy(&mut self, offered: AccountPolicy) -> (AccountPolicy, bool) {
        match self.policy {
            Some(stored) if stored.version > offered.version => (stored, true),
            _ => {
                self.policy = Some(offered);
                (offered, false)
            }
        }
    }

    /// Keeps the newer of the stored and offered key policy; says if the offer was stale. A
    /// revocation is final: no offer of any version brings a revoked key back.
    pub fn merge_key_policy(&mut self, offered: KeyPolicy) -> (KeyPolicy, bool) {
        let entry = self.keys.entry(offered.key_id.clone()).or_default();
        match &entry.policy {
            Some(stored) if stored.version > offered.version => (stored.clone(), true),
            Some(stored) if stored.revoked && !offered.revoked => (stored.clone(), true),
            _ => {
                entry.policy = Some(offered.clone());
                (offered, false)
            }
        }
    }

    /// Decides one call: revoked key, key throttle, account throttle, then credits. Only an
    /// admitted call changes any state.
    pub fn admit(&mut self, req: AdmitRequest, now: UnixMillis) -> Admission {
        let (account, stale_a) = self.merge_account_policy(req.account);
        let (key, stale_k) = self.merge_key_policy(req.key);
        let stale = stale_a || stale_k;
        if key.revoked {
            return Admission::Denied {
                denial: Denial::Revoked,
                retry_after_ms: 0,
                rate: None,
                stale,
                affordable: None,
            };
        }
        let key_state = self.keys.get(&key.key_id).cloned().unwrap_or_default();

        let mut key_decision = None;
        if let Some(r) = key.rate {
            let Some(q) = quota(r) else {
                return throttled(0, None, stale);
            };
            // beside what the key's leases still hold: the isolates may make those calls
            match gcra::check_beside(q, key_state.tat, now, 1, self.leased_calls(Some(&key.key_id), now)) {
                Ok((tat, allow)) => key_decision = Some((tat, view(r, allow))),
                Err(no) => {
                    let rate = RateView { rpm: r.rpm, burst: r.burst, remaining: 0, reset_ms: no.wait_ms };
                    return throttled(no.wait_ms, Some(rate), stale);
                }
            }
        }
        let Some(q) = quota(account.rate) else {
            return throttled(0, None, stale);
        };
        let (account_tat, account_view) = match gcra::check_beside(q, self.tat, now, 1, self.leased_calls(None, now)) {
            Ok((tat, allow)) => (tat, view(account.rate, allow)),
            Err(no) => {
                let rate =
                    RateView { rpm: account.rate.rpm, burst: account.rate.burst, remaining: 0, reset_ms: no.wait_ms };
                return throttled(no.wait_ms, Some(rate), stale);
            }
        };

        let rate = tighter(account_view, key_decision.map(|(_, v)| v));
        let mut reservation = None;
        let mut held = MicroUsd::ZERO;
        let mut output = match req.cost {
            Cost::Tokens { output, .. } => Some(output),
            Cost::Time { ms, .. } => Some(ms),
            Cost::Fixed { .. } => None,
        };
        let full = req.cost.full();
        if full > MicroUsd::ZERO && !account.provider_billed {
            let exhausted = |affordable| Admission::Denied {
                denial: Denial::InsufficientQuota,
                retry_after_ms: BillingPeriod::containing(now).end.millis_since(now),
                rate: Some(rate),
                stale,
                affordable,
            };
            let (amount, granted) = match (self.headroom(&key, &account.budget, now), req.cost) {
                (Some(room), _) if room == MicroUsd::ZERO => return exhausted(None),
                (Some(room), Cost::Tokens { price, prompt, output: wanted, choices, min_output }) if full > room => {
                    // not enough for all it asked: a smaller bound, if a useful one fits
                    match price.affordable_output(room, prompt, choices, wanted) {
                        Some(out) if out >= min_output.min(wanted) && out > 0 => {
                            (price.cost(TokenUsage { prompt, completion: out.saturating_mul(choices) }), Some(out))
                        }
                        affordable => return exhausted(affordable),
                    }
                }
                (Some(room), Cost::Time { price, ms, min_ms }) if full > room => {
                    // not enough for its whole deadline: a shorter run, if a useful one fits
                    let affordable = u128::from(room.0).saturating_mul(1_000_000) / u128::from(price.0.max(1));
                    let out = u64::try_from(affordable).unwrap_or(u64::MAX).min(ms);
                    if out < min_ms.min(ms) || out == 0 {
                        return exhausted(None);
                    }
                    (price.cost_ms(out), Some(out))
                }
                (Some(room), Cost::Fixed { .. }) if full > room => return exhausted(None),
                _ => (full, output),
            };
            match self.ledger.reserve(now, amount, &account.budget, req.ttl_ms) {
                Ok(id) => {
                    self.owners.insert(id, key.key_id.clone());
                    reservation = Some(id);
                    held = amount;
                    output = granted;
                }
                Err(_) => return exhausted(None),
            }
        } else {
            self.ledger.roll(now);
        }

        self.tat = account_tat;
        let entry = self.keys.entry(key.key_id.clone()).or_default();
        if let Some((tat, _)) = key_decision {
            entry.tat = tat;
        }
        let lease = req.lease.and_then(|want| self.grant_lease(&key, &account, want, now));
        Admission::Admitted { reservation, output, rate, stale, held, lease }
    }

    /// Grants an isolate a lease for `key`, on the policies already merged: credit from what
    /// is free (for the key inside a pool, from its own ceiling too) and calls from both
    /// throttles, taken for the lease's window. `None` when the key is revoked, or too little
    /// of either is free (the isolate then asks call by call), or the account's calls are
    /// billed by their providers (its calls are recorded at the object, never held).
    pub fn grant_lease(
        &mut self,
        key: &KeyPolicy,
        account: &AccountPolicy,
        want: Want,
        now: UnixMillis,
    ) -> Option<Grant> {
        if key.revoked || want.ttl_ms == 0 || account.provider_billed {
            return None;
        }
        let free = self.headroom(key, &account.budget, now);
        let (calls, _) = isolate_lease::size(want, free)?;
        let account_q = quota(account.rate)?;
        let key_q = match key.rate {
            Some(r) => Some(quota(r)?),
            None => None,
        };
        let key_tat = self.keys.get(&key.key_id).map(|k| k.tat).unwrap_or_default();
        let (held_account, held_key) = (self.leased_calls(None, now), self.leased_calls(Some(&key.key_id), now));
        // a quarter of what each throttle can spare, as for credit: an isolate takes no more
        // than it is likely to use, and leaves the rest to the others
        let mut calls = calls.min(gcra::spare_beside(account_q, self.tat, now, held_account) / 4);
        if let Some(q) = key_q {
            calls = calls.min(gcra::spare_beside(q, key_tat, now, held_key) / 4);
        }
        if calls < 2 {
            return None;
        }
        let credit = free.map(|_| MicroUsd(want.per_call.0.max(1).saturating_mul(u64::from(calls))));
        let (id, first_hold) = self.ledger.lease(now, credit, calls, &account.budget).ok()?;
        // the lease's calls are kept aside from now on: the rate shown is what is left beside them
        let mut rate = view(
            account.rate,
            gcra::state_at(account_q, self.room(account_q, self.tat, held_account + calls, now), now),
        );
        if let (Some(q), Some(r)) = (key_q, key.rate) {
            let room = self.room(q, key_tat, held_key + calls, now);
            rate = tighter(rate, Some(view(r, gcra::state_at(q, room, now))));
        }
        let ends_at = now.saturating_add_ms(want.ttl_ms.saturating_add(isolate_lease::SKEW_MS));
        self.grants.insert(id, Issued::new(&key.key_id, first_hold, calls, ends_at));
        Some(Grant { id, first_hold, calls, credit, ttl_ms: want.ttl_ms, rate })
    }

    /// A lease asked for on its own, ahead of need (the isolate's current one runs low), and
    /// whether the isolate's key record is older than the object's (as `admit` says it).
    pub fn acquire(
        &mut self,
        key: KeyPolicy,
        account: AccountPolicy,
        want: Want,
        now: UnixMillis,
    ) -> (Option<Grant>, bool) {
        let (account, stale_a) = self.merge_account_policy(account);
        let (key, stale_k) = self.merge_key_policy(key);
        (self.grant_lease(&key, &account, want, now), stale_a || stale_k)
    }

    /// Calls an isolate admitted on lease `lease` (hold id, amount), each becoming a hold of
    /// its own, of the lease's key. An id the lease has given already, or that is no id of a
    /// lease the object knows, changes nothing: a report sent twice counts once.
    pub fn admitted(&mut self, lease: u64, key_id: &str, calls: &[(u64, MicroUsd)], ttl_ms: u64, now: UnixMillis) {
        for (id, amount) in calls {
            self.admit_leased(lease, key_id, *id, *amount, ttl_ms, true, now);
        }
    }

    /// One call of a lease (of `key_id`'s): true if the object had not heard of it. A lease
    /// forgotten already (its quarantine passed: an isolate that was slow, not dead) has no
    /// record to tell a replay by. A report that late is held all the same, as the call
    /// happened (a replay of it that late does not come: the edge sends it 250 ms after the
    /// call at most, behind any batch still on its way, and retries within seconds); a settle
    /// or release that does not stand for a report is the second copy of one already applied
    /// (its call was reported, so its hold was made while the lease was known), and changes
    /// nothing.
    #[allow(clippy::too_many_arguments)]
    fn admit_leased(
        &mut self,
        lease: u64,
        key_id: &str,
        id: u64,
        amount: MicroUsd,
        ttl_ms: u64,
        report: bool,
        now: UnixMillis,
    ) -> bool {
        let fresh = match self.grants.get_mut(&lease) {
            Some(record) => record.hear(id),
            // a lease id that was never given, or a call already held, is no late report
            None => report && lease < self.ledger.next_reservation_id() && self.ledger.hold(id).is_none(),
        };
        if !fresh {
            return false;
        }
        self.ledger.admit_leased(now, lease, id, amount, ttl_ms);
        self.owners.insert(id, key_id.to_string());
        true
    }

    /// Hears of a lease's call that its settle or release brings first (its report was
    /// merged into it, or is still on the way): it becomes a hold of the lease's key, to be
    /// settled or released at once.
    /// `report`: the settle stands for the call's report too.
    pub fn leased_call(&mut self, lease: u64, key_id: &str, id: u64, amount: MicroUsd, report: bool, now: UnixMillis) {
        self.admit_leased(lease, key_id, id, amount, 0, report, now);
    }

    /// An isolate gives its lease back, after the reports of every call it admitted on it:
    /// what the lease has not given to calls is free again. The record is kept until no
    /// report of it can still come.
    pub fn return_lease(&mut self, lease: u64, now: UnixMillis) -> bool {
        let Some(r) = self.grants.get_mut(&lease).filter(|r| !r.returned) else { return false };
        r.returned = true;
        self.ledger.end_lease(lease);
        // the calls it made are all reported (they came before it): counted now
        let made = r.heard();
        self.close_lease(lease, now, made);
        true
    }

    /// Counts a lease's `made` calls in the throttles as made at `at`, once, and stops
    /// keeping its calls aside.
    fn close_lease(&mut self, lease: u64, at: UnixMillis, made: u32) {
        let Some(r) = self.grants.get_mut(&lease).filter(|r| !r.closed) else { return };
        r.closed = true;
        let key_id = r.key_id.clone();
        if let Some(q) = self.policy.and_then(|p| quota(p.rate)) {
            self.tat = gcra::close_lease(q, self.tat, at, made);
        }
        let key = self.keys.get_mut(&key_id);
        if let Some(k) = key {
            if let Some(q) = k.policy.as_ref().and_then(|p| p.rate).and_then(quota) {
                k.tat = gcra::close_lease(q, k.tat, at, made);
            }
        }
    }

    /// Calls the throttles keep aside for open leases (of `key_id`'s, or of any key's).
    fn leased_calls(&self, key_id: Option<&str>, _now: UnixMillis) -> u32 {
        if self.grants.is_empty() {
            return 0;
        }
        self.grants
            .values()
            .filter(|r| key_id.is_none_or(|k| r.key_id == k))
            .map(Issued::kept_aside)
            .fold(0u32, u32::saturating_add)
    }

    /// The limiter state that leaves room for `held` calls kept aside, for a rate view.
    fn room(&self, q: Quota, tat: Tat, held: u32, now: UnixMillis) -> Tat {
        gcra::beside(q, tat, now, held)
    }

    /// When every lease granted before `before` (a lease id: ids only grow) and not yet
    /// returned has ended, for `key_id` or any key: an edit that takes a right away answers
    /// then, so that after it no call is admitted on the old terms. Leases granted after the
    /// edit are on the new terms, and are not waited for: isolates renewing steadily always
    /// hold one. `None`: none is out.
    pub fn leases_end(&self, key_id: Option<&str>, before: u64, now: UnixMillis) -> Option<UnixMillis> {
        self.grants
            .range(..before)
            .map(|(_, r)| r)
            .filter(|r| !r.returned && r.ends_at > now && key_id.is_none_or(|k| r.key_id == k))
            .map(|r| r.ends_at)
            .max()
    }

    /// What may still be committed for `key`: the account's headroom, and inside a shared
    /// pool the key's own ceiling less its spend, its holds and the credit its leases still
    /// hold. `None` when nothing bounds it.
    fn headroom(&self, key: &KeyPolicy, budget: &Budget, now: UnixMillis) -> Option<MicroUsd> {
        let account = self.ledger.headroom(budget);
        let own = key.ceiling.map(|ceiling| {
            let held = self
                .owners
                .iter()
                .filter(|(_, k)| **k == key.key_id)
                .filter_map(|(id, _)| self.ledger.held(*id))
                .fold(MicroUsd::ZERO, MicroUsd::saturating_add);
            let leased = self
                .grants
                .iter()
                .filter(|(_, r)| r.key_id == key.key_id)
                .filter_map(|(id, _)| self.ledger.lease_credit(*id))
                .fold(MicroUsd::ZERO, MicroUsd::saturating_add);
            ceiling.saturating_sub(self.key_used(&key.key_id, now).saturating_add(held).saturating_add(leased))
        });
        match (account, own) {
            (Some(a), Some(o)) => Some(a.min(o)),
            (a, o) => a.or(o),
        }
    }

    /// Settles a reservation to the call's actual cost (see `Ledger::settle`), charged in full
    /// to the key that made it, overrun included.
    pub fn settle(&mut self, reservation: u64, actual: MicroUsd, now: UnixMillis) -> Settled {
        let settled = self.ledger.settle(now, reservation, actual);
        self.charge_owner(reservation, &settled, now);
        settled
    }

    /// Charges a reservation in full because the call's usage cannot be learned (see
    /// `Ledger::settle_unmetered`), to the key that made it.
    pub fn settle_unmetered(&mut self, reservation: u64, now: UnixMillis) -> Settled {
        let settled = self.ledger.settle_unmetered(now, reservation);
        self.charge_owner(reservation, &settled, now);
        settled
    }

    fn charge_owner(&mut self, reservation: u64, settled: &Settled, now: UnixMillis) {
        if let Some(key_id) = self.owners.remove(&reservation) {
            if !settled.unknown {
                self.charge_key(&key_id, settled, now);
            }
        }
    }

    /// Gives a reservation back in full (a lapse's charge with it); says whether it was held.
    pub fn release(&mut self, reservation: u64, now: UnixMillis) -> bool {
        let owner = self.owners.remove(&reservation);
        match self.ledger.release(now, reservation) {
            Some(refund) => {
                if let (Some(key_id), true) = (owner, refund > MicroUsd::ZERO) {
                    self.charge_key(&key_id, &Settled { refund, ..Settled::default() }, now);
                }
                true
            }
            None => false,
        }
    }

    /// Keeps the holds of calls still running for another `ttl_ms`; says how many were open.
    pub fn renew(&mut self, reservations: &[u64], ttl_ms: u64, now: UnixMillis) -> usize {
        reservations.iter().filter(|id| self.ledger.renew(now, **id, ttl_ms)).count()
    }

    /// Records what a provider-billed (`byok`) call cost, without touching credits.
    pub fn record_provider_billed(&mut self, key_id: &str, actual: MicroUsd, now: UnixMillis) {
        self.ledger.record_provider_billed(now, actual);
        self.charge_key(key_id, &Settled { charged: actual, ..Settled::default() }, now);
    }

    /// The most a key may spend in a period: its own ceiling inside a pool, else the
    /// account's (a key that is its own account). A key's debt is measured against it.
    fn key_ceiling(&self, key_id: &str) -> Option<MicroUsd> {
        self.keys.get(key_id).and_then(|k| k.policy.as_ref()).and_then(|p| p.ceiling).or(self.ledger.ceiling)
    }

    fn charge_key(&mut self, key_id: &str, s: &Settled, now: UnixMillis) {
        let period = BillingPeriod::containing(now).start;
        let ceiling = self.key_ceiling(key_id);
        let k = self.keys.entry(key_id.to_string()).or_default();
        if k.period_start != period {
            let (used, overrun, unmetered) = k.in_period(period, ceiling);
            (k.used, k.overrun, k.unmetered, k.period_start) = (used, overrun, unmetered, period);
        }
        k.used = k.used.saturating_sub(s.refund).saturating_add(s.charged);
        k.overrun = k.overrun.saturating_add(s.overrun);
        k.unmetered = k.unmetered.saturating_sub(s.refund).saturating_add(s.unmetered);
    }

    /// Charges in full the holds whose isolate died (see `Ledger::expire`), each to the key
    /// that made it; returns the holds that changed and, for those that lapsed now, the key
    /// and the amount charged.
    pub fn expire(&mut self, now: UnixMillis) -> Vec<Lapse> {
        // leases that ended unreturned close: all their calls counted, as made at their end
        let ended: Vec<(u64, UnixMillis, u32)> = self
            .grants
            .iter()
            .filter(|(_, r)| !r.closed && r.ends_at <= now)
            .map(|(id, r)| (*id, r.ends_at, r.calls))
            .collect();
        for (id, at, calls) in ended {
            self.close_lease(id, at, calls);
        }
        // leases no report can still reach: what one never returned gives back its credit
        let done: Vec<(u64, bool)> = self
            .grants
            .iter()
            .filter(|(_, r)| r.forget_at() <= now)
            .map(|(id, r)| (*id, r.drop_record_at() <= now))
            .collect();
        for (id, forget) in done {
            self.ledger.end_lease(id);
            if forget {
                self.grants.remove(&id);
            }
        }
        let changed = self.ledger.expire(now);
        let mut out = Vec::with_capacity(changed.len());
        for (id, charged) in changed {
            // lapsed holds keep their owner: a late settle is still the key's to pay
            let key_id = self.owners.get(&id).cloned();
            match (&key_id, charged > MicroUsd::ZERO) {
                (Some(k), true) => {
                    let s = Settled { charged, unmetered: charged, ..Settled::default() };
                    self.charge_key(k, &s, now);
                }
                _ if self.ledger.hold(id).is_none() => {
                    self.owners.remove(&id);
                }
                _ => {}
            }
            out.push(Lapse { id, key_id, charged });
        }
        out
    }

    /// When something is next due: a hold's expiry, or a lease to forget.
    pub fn next_wake(&self) -> Option<UnixMillis> {
        let lease = self
            .grants
            .iter()
            .map(|(id, r)| match (r.closed, self.ledger.lease_credit(*id)) {
                (false, _) => r.ends_at,
                (true, Some(_)) => r.forget_at(),
                (true, None) => r.drop_record_at().max(r.forget_at()),
            })
            .min();
        match (self.ledger.next_expiry(), lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The key a reservation was made for.
    pub fn owner(&self, reservation: u64) -> Option<&str> {
        self.owners.get(&reservation).map(String::as_str)
    }

    /// An account from its stored rows: the account's own, one per key, one per hold (with
    /// the key it was made for).
    pub fn from_rows(
        head: LedgerHead,
        tat: Tat,
        policy: Option<AccountPolicy>,
        keys: impl IntoIterator<Item = (String, KeyState)>,
        holds: impl IntoIterator<Item = (u64, Option<String>, Hold)>,
    ) -> Self {
        let mut owners = SortedMap::new();
        let holds: Vec<(u64, Hold)> = holds
            .into_iter()
            .map(|(id, owner, hold)| {
                if let Some(k) = owner {
                    owners.insert(id, k);
                }
                (id, hold)
            })
            .collect();
        // inserted one by one: `collect` would bring a sort for this type into the bundle for
        // no gain (rows are few)
        let mut by_id = SortedMap::new();
        for (id, state) in keys {
            by_id.insert(id, state);
        }
        AccountState {
            ledger: Ledger::from_rows(head, holds),
            tat,
            policy,
            keys: by_id,
            owners,
            spend: Spend::default(),
            jobs: Jobs::default(),
            grants: SortedMap::new(),
        }
    }

    pub fn usage(&self, now: UnixMillis) -> Option<Usage> {
        self.policy.map(|p| self.ledger.usage(now, &p.budget))
    }

    /// The throttle of a key as it stands, without taking from it.
    pub fn rate_view(&self, key_id: &str, now: UnixMillis) -> Option<RateView> {
        let account = self.policy?;
        let held = self.leased_calls(None, now);
        let account_view = quota(account.rate)
            .map(|q| view(account.rate, gcra::state_at(q, gcra::beside(q, self.tat, now, held), now)))?;
        let key = self.keys.get(key_id);
        let key_view = key.and_then(|k| {
            let r = k.policy.as_ref()?.rate?;
            let q = quota(r)?;
            let room = gcra::beside(q, k.tat, now, self.leased_calls(Some(key_id), now));
            Some(view(r, gcra::state_at(q, room, now)))
        });
        Some(tighter(account_view, key_view))
    }

    /// A key's own spend this period (a debt carried in included).
    pub fn key_used(&self, key_id: &str, now: UnixMillis) -> MicroUsd {
        self.key_figures(key_id, now).0
    }

    /// What a key was charged beyond its reservations this period.
    pub fn key_overrun(&self, key_id: &str, now: UnixMillis) -> MicroUsd {
        self.key_figures(key_id, now).1
    }

    /// What a key was charged without a usage count this period.
    pub fn key_unmetered(&self, key_id: &str, now: UnixMillis) -> MicroUsd {
        self.key_figures(key_id, now).2
    }

    fn key_figures(&self, key_id: &str, now: UnixMillis) -> (MicroUsd, MicroUsd, MicroUsd) {
        let period = BillingPeriod::containing(now).start;
        self.keys
            .get(key_id)
            .map_or((MicroUsd::ZERO, MicroUsd::ZERO, MicroUsd::ZERO), |k| k.in_period(period, self.key_ceiling(key_id)))
    }
}

/// A hold the ledger charged in full because its call never came back (or forgot, with
/// `charged` zero).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lapse {
    pub id: u64,
    pub key_id: Option<String>,
    pub charged: MicroUsd,
}

fn throttled(wait_ms: u64, rate: Option<RateView>, stale: bool) -> Admission {
    Admission::Denied { denial: Denial::RateLimited, retry_after_ms: wait_ms, rate, stale, affordable: None }
}

// Their JSON, as the account object's messages and rows carry them (`core::wire`);
// `AccountState` is read only from the one document earlier builds stored (`edits::decode`).
crate::core::wire::json_struct!(KeyPolicy { key_id, version, revoked, rate, ceiling: default });
crate::core::wire::json_struct!(AccountPolicy { version, budget, rate, provider_billed });
crate::core::wire::json_struct!(AdmitRequest { key, account, cost, ttl_ms, lease: skip_none });
crate::core::wire::json_struct!(RateView { rpm, burst, remaining, reset_ms });
crate::core::wire::json_struct!(KeyState { policy, tat, used, overrun: default, unmetered: default, period_start });
crate::core::wire::json_struct!(read AccountState {
    ledger,
    tat,
    policy,
    keys,
    owners,
    spend: default,
    jobs: default,
    grants: default,
});

impl FromJson for Cost {
    fn read(v: &Value, e: &Errors) -> Self {
        let (tag, v) = wire::variant(v, e);
        let f = Fields::of(v, e);
        match tag {
            "fixed" => Cost::Fixed { amount: f.get("amount") },
            "tokens" => Cost::Tokens {
                price: f.get("price"),
                prompt: f.get("prompt"),
                output: f.get("output"),
                choices: f.get("choices"),
                min_output: f.get("min_output"),
            },
            "time" => Cost::Time { price: f.get("price"), ms: f.get("ms"), min_ms: f.get("min_ms") },
            _ => {
                e.unknown(tag);
                Cost::FREE
            }
        }
    }
    fn fallback() -> Self {
        Cost::FREE
    }
}

impl ToJson for Cost {
    fn to_json(&self, out: &mut String) {
        match self {
            Cost::Fixed { amount } => wire::tagged_object(out, "fixed", &[("amount", amount)]),
            Cost::Tokens { price, prompt, output, choices, min_output } => wire::tagged_object(
                out,
                "tokens",
                &[
                    ("price", price),
                    ("prompt", prompt),
                    ("output", output),
                    ("choices", choices),
                    ("min_output", min_output),
                ],
            ),
            Cost::Time { price, ms, min_ms } => {
                wire::tagged_object(out, "time", &[("price", price), ("ms", ms), ("min_ms", min_ms)])
            }
        }
    }
}

impl FromJson for Denial {
    fn read(v: &Value, e: &Errors) -> Self {
        match v.as_str() {
            Some("revoked") => Denial::Revoked,
            Some("rate_limited") => Denial::RateLimited,
            Some("insufficient_quota") => Denial::InsufficientQuota,
            _ => {
                e.expected("a denial", v);
                Denial::Revoked
            }
        }
    }
    fn fallback() -> Self {
        Denial::Revoked
    }
}

impl ToJson for Denial {
    fn to_json(&self, out: &mut String) {
        out.push_str(match self {
            Denial::Revoked => "\"revoked\"",
            Denial::RateLimited => "\"rate_limited\"",
            Denial::InsufficientQuota => "\"insufficient_quota\"",
        })
    }
}

impl FromJson for Admission {
    fn read(v: &Value, e: &Errors) -> Self {
        let (tag, v) = wire::variant(v, e);
        let f = Fields::of(v, e);
        match tag {
            "admitted" => Admission::Admitted {
                reservation: f.get("reservation"),
                output: f.get("output"),
                rate: f.get("rate"),
                stale: f.get("stale"),
                held: f.or_default("held"),
                lease: f.get("lease"),
            },
            "denied" => Admission::Denied {
                denial: f.get("denial"),
                retry_after_ms: f.get("retry_after_ms"),
                rate: f.get("rate"),
                stale: f.get("stale"),
                affordable: f.get("affordable"),
            },
            _ => {
                e.unknown(tag);
                Admission::fallback()
            }
        }
    }
    fn fallback() -> Self {
        Admission::Denied { denial: Denial::Revoked, retry_after_ms: 0, rate: None, stale: false, affordable: None }
    }
}

impl ToJson for Admission {
    fn to_json(&self, out: &mut String) {
        match self {
            Admission::Admitted { reservation, output, rate, stale, held, lease } => wire::tagged_object(
                out,
                "admitted",
                &[
                    ("reservation", reservation),
                    ("output", output),
                    ("rate", rate),
                    ("stale", stale),
                    ("held", held),
                    ("lease", &wire::Skip(lease.is_none(), lease)),
                ],
            ),
            Admission::Denied { denial, retry_after_ms, rate, stale, affordable } => wire::tagged_object(
                out,
                "denied",
                &[
                    ("denial", denial),
                    ("retry_after_ms", retry_after_ms),
                    ("rate", rate),
                    ("stale", stale),
                    ("affordable", affordable),
                ],
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ledger::OnExhausted;

    const NOW: UnixMillis = UnixMillis(1_795_352_400_000);

    fn req(key: &str, version: u64, revoked: bool, reserve: u64) -> AdmitRequest {
        AdmitRequest {
            key: KeyPolicy {
                key_id: key.into(),
                version,
                revoked,
                rate: Some(RateLimit { rpm: 60, burst: 2 }),
                ceiling: None,
            },
            account: AccountPolicy {
                version: 1,
                budget: Budget { credit: MicroUsd(1_000), on_exhausted: OnExhausted::Block, cap: None },
                rate: RateLimit { rpm: 600, burst: 100 },
                provider_billed: false,
            },
            cost: Cost::Fixed { amount: MicroUsd(reserve) },
            ttl_ms: 60_000,
            lease: None,
        }
    }

    #[test]
    fn a_revocation_beats_any_older_copy() {
        let mut s = AccountState::new(NOW);
        assert!(matches!(s.admit(req("k", 1, false, 0), NOW), Admission::Admitted { .. }));
        s.merge_key_policy(KeyPolicy { key_id: "k".into(), version: 2, revoked: true, rate: None, ceiling: None });
        match s.admit(req("k", 1, false, 0), NOW) {
            Admission::Denied { denial: Denial::Revoked, stale: true, .. } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_newer_copy_brings_a_revoked_key_back() {
        let mut s = AccountState::new(NOW);
        s.merge_key_policy(KeyPolicy { key_id: "k".into(), version: 2, revoked: true, rate: None, ceiling: None });
        match s.admit(req("k", 9, false, 0), NOW) {
            Admission::Denied { denial: Denial::Revoked, stale: true, .. } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_key_in_a_pool_has_its_own_throttle() {
        let mut s = AccountState::new(NOW);
        assert!(matches!(s.admit(req("a", 1, false, 0), NOW), Admission::Admitted { .. }));
        assert!(matches!(s.admit(req("a", 1, false, 0), NOW), Admission::Admitted { .. }));
        match s.admit(req("a", 1, false, 0), NOW) {
            Admission::Denied { denial: Denial::RateLimited, retry_after_ms: 1_000, .. } => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.admit(req("b", 1, false, 0), NOW), Admission::Admitted { .. }));
    }

    #[test]
    fn credits_are_pooled_and_attributed_per_key() {
        let mut s = AccountState::new(NOW);
        let Admission::Admitted { reservation: Some(r), .. } = s.admit(req("a", 1, false, 600), NOW) else { panic!() };
        assert!(matches!(
            s.admit(req("b", 1, false, 600), NOW.saturating_add_ms(1_000)),
            Admission::Denied { denial: Denial::InsufficientQuota, .. }
        ));
        s.settle(r, MicroUsd(100), NOW);
        assert_eq!(s.key_used("a", NOW), MicroUsd(100));
        assert!(matches!(s.admit(req("b", 1, false, 600), NOW.saturating_add_ms(2_000)), Admission::Admitted { .. }));
        assert_eq!(s.usage(NOW).unwrap().used, MicroUsd(100));
    }

    #[test]
    fn a_refused_call_takes_nothing_from_the_throttle() {
        let mut s = AccountState::new(NOW);
        for _ in 0..5 {
            assert!(matches!(
                s.admit(req("a", 1, false, 5_000), NOW),
                Admission::Denied { denial: Denial::InsufficientQuota, .. }
            ));
        }
        assert_eq!(s.rate_view("a", NOW).unwrap().remaining, 2);
    }

    fn tokens(output: u64, choices: u64) -> Cost {
        // $1 per 1M in and out: a token is a micro-USD
        Cost::Tokens {
            price: Price { input: 1_000_000, output: 1_000_000 },
            prompt: 100,
            output,
            choices,
            min_output: 16,
        }
    }

    #[test]
    fn a_call_the_credit_cannot_cover_gets_a_smaller_output_bound() {
        let mut s = AccountState::new(NOW);
        let mut r = req("a", 1, false, 0);
        r.cost = tokens(2_000, 1);
        // 1000 of credit: 100 for the prompt leaves 900 output tokens
        match s.admit(r.clone(), NOW) {
            Admission::Admitted { output: Some(900), reservation: Some(_), .. } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(s.usage(NOW).unwrap().remaining, MicroUsd::ZERO);
        // nothing left: refused, and told what would have been affordable
        let mut s = AccountState::new(NOW);
        r.cost = tokens(2_000, 1);
        r.account.budget.credit = MicroUsd(110);
        match s.admit(r, NOW) {
            Admission::Denied { denial: Denial::InsufficientQuota, affordable: Some(10), .. } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_call_asked_whole_is_not_cut_short() {
        let mut s = AccountState::new(NOW);
        let mut r = req("a", 1, false, 0);
        r.cost = tokens(2_000, 1).whole();
        // 1000 of credit would pay for 900 output tokens, not the 2,000 asked for
        match s.admit(r.clone(), NOW) {
            Admission::Denied { denial: Denial::InsufficientQuota, .. } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(s.usage(NOW).unwrap().remaining, MicroUsd(1_000), "nothing held");
        r.cost = tokens(800, 1).whole();
        match s.admit(r, NOW) {
            Admission::Admitted { output: Some(800), .. } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn choices_share_the_lowered_bound() {
        let mut s = AccountState::new(NOW);
        let mut r = req("a", 1, false, 0);
        r.cost = tokens(2_000, 3);
        match s.admit(r, NOW) {
            Admission::Admitted { output: Some(300), .. } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_keys_own_ceiling_holds_inside_the_pool() {
        let mut s = AccountState::new(NOW);
        let capped = |reserve| {
            let mut r = req("a", 1, false, reserve);
            r.key.ceiling = Some(MicroUsd(300));
            r
        };
        let Admission::Admitted { reservation: Some(id), .. } = s.admit(capped(200), NOW) else { panic!() };
        assert!(matches!(
            s.admit(capped(200), NOW.saturating_add_ms(1_000)),
            Admission::Denied { denial: Denial::InsufficientQuota, .. }
        ));
        s.settle(id, MicroUsd(250), NOW);
        assert!(matches!(
            s.admit(capped(100), NOW.saturating_add_ms(2_000)),
            Admission::Denied { denial: Denial::InsufficientQuota, .. }
        ));
        // the pool itself still has room for the other keys
        assert!(matches!(s.admit(req("b", 1, false, 500), NOW.saturating_add_ms(2_000)), Admission::Admitted { .. }));
    }

    #[test]
    fn an_overrun_is_charged_to_the_key_that_made_the_call() {
        let mut s = AccountState::new(NOW);
        let Admission::Admitted { reservation: Some(id), .. } = s.admit(req("a", 1, false, 100), NOW) else { panic!() };
        let settled = s.settle(id, MicroUsd(1_500), NOW);
        assert_eq!(settled.overrun, MicroUsd(1_400));
        assert_eq!((s.key_used("a", NOW), s.key_overrun("a", NOW)), (MicroUsd(1_500), MicroUsd(1_400)));
        assert!(s.settle(id, MicroUsd(1_500), NOW).unknown);
        assert_eq!(s.key_used("a", NOW), MicroUsd(1_500));
        assert!(matches!(
            s.admit(req("b", 1, false, 1), NOW.saturating_add_ms(1_000)),
            Admission::Denied { denial: Denial::InsufficientQuota, .. }
        ));
    }
}
