//! The request-rate throttle: GCRA (generic cell rate algorithm).
//!
//! The whole state of a limiter is one number, the theoretical arrival time (TAT). A decision
//! is a pure function of (quota, TAT, now, cost); a denial is a value that knows the earliest
//! time a retry can succeed, and every header is derived from it.

use crate::core::time::UnixMillis;
use std::num::NonZeroU32;

/// The throttle as the caller should see it (the tighter of key and account).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateView {
    pub rpm: u32,
    pub burst: u32,
    pub remaining: u32,
    pub reset_ms: u64,
}

/// A rate: `rpm` requests per minute on average, up to `burst` at once.
///
/// ```
/// use hf_gate::core::gcra::Quota;
/// assert!(Quota::new(60, 10).is_some());
/// assert!(Quota::new(0, 10).is_none());
/// assert!(Quota::new(60, 0).is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    rpm: NonZeroU32,
    burst: NonZeroU32,
}

impl Quota {
    pub fn new(rpm: u32, burst: u32) -> Option<Self> {
        Some(Quota { rpm: NonZeroU32::new(rpm)?, burst: NonZeroU32::new(burst)? })
    }

    pub fn rpm(&self) -> u32 {
        self.rpm.get()
    }

    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// Microseconds between two requests at the steady rate.
    fn emission_us(&self) -> u64 {
        (60_000_000 / u64::from(self.rpm.get())).max(1)
    }

    /// How far ahead of now the TAT may run: `burst` emissions.
    fn tolerance_us(&self) -> u64 {
        self.emission_us() * u64::from(self.burst.get())
    }
}

/// Limiter state: the theoretical arrival time, in microseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tat(pub u64);

/// A request was let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allow {
    /// Requests that could still go through right now.
    pub remaining: u32,
    /// Milliseconds until the full burst is available again.
    pub reset_ms: u64,
}

/// A request was refused; it can succeed at `earliest_retry` and not before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotUntil {
    pub earliest_retry: UnixMillis,
    pub wait_ms: u64,
}

/// Decides one request of weight `cost` (usually 1).
///
/// Returns the new state with the decision; on denial the state is unchanged.
///
/// ```
/// use hf_gate::core::gcra::{check, Quota, Tat};
/// use hf_gate::core::time::UnixMillis;
/// let q = Quota::new(60, 2).unwrap(); // one a second, two at once
/// let now = UnixMillis(10_000);
/// let (tat, a) = check(q, Tat::default(), now, 1).unwrap();
/// assert_eq!(a.remaining, 1);
/// let (tat, a) = check(q, tat, now, 1).unwrap();
/// assert_eq!(a.remaining, 0);
/// let denied = check(q, tat, now, 1).unwrap_err();
/// assert_eq!(denied.wait_ms, 1_000);
/// ```
pub fn check(quota: Quota, tat: Tat, now: UnixMillis, cost: u32) -> Result<(Tat, Allow), NotUntil> {
    let now_us = now.0.saturating_mul(1000);
    let t = quota.emission_us();
    let tau = quota.tolerance_us();
    let increment = t.saturating_mul(u64::from(cost));
    let new_tat = tat.0.max(now_us).saturating_add(increment);
    let allow_at = new_tat.saturating_sub(tau);
    if allow_at > now_us {
        let wait_us = allow_at - now_us;
        let wait_ms = wait_us.div_ceil(1000);
        return Err(NotUntil { earliest_retry: now.saturating_add_ms(wait_ms), wait_ms });
    }
    Ok((Tat(new_tat), state_at(quota, Tat(new_tat), now)))
}

/// What a limiter in state `tat` would allow right now, without taking anything.
pub fn state_at(quota: Quota, tat: Tat, now: UnixMillis) -> Allow {
    let now_us = now.0.saturating_mul(1000);
    let t = quota.emission_us();
    let ahead = tat.0.saturating_sub(now_us);
    let free = quota.tolerance_us().saturating_sub(ahead);
    Allow { remaining: (free / t).min(u64::from(quota.burst())) as u32, reset_ms: ahead.div_ceil(1000) }
}

/// Decides one request of weight `cost` beside `held` requests leased out: whoever holds
/// them may make them at any moment until their lease closes, so the bucket keeps them aside,
/// as a bucket of their own carved out of it: this one holds `burst - held`, and `tat` counts
/// only what was let through here and what leases that closed made. Counted so, the requests
/// made here and those made on leases, in any order and at any time, stay within the quota
/// together. A lease that closes adds the requests it made (`close_lease`).
///
/// ```
/// use hf_gate::core::gcra::{check_beside, close_lease, Quota, Tat};
/// use hf_gate::core::time::UnixMillis;
/// let q = Quota::new(60, 10).unwrap(); // one a second, ten at once
/// let now = UnixMillis(100_000);
/// // six leased out of an idle limiter: four more here
/// let mut tat = Tat::default();
/// for _ in 0..4 {
///     tat = check_beside(q, tat, now, 1, 6).unwrap().0;
/// }
/// assert!(check_beside(q, tat, now, 1, 6).is_err());
/// // the lease closes a second later having made all six: ten were made, and one second
/// // has refilled one
/// let later = UnixMillis(101_000);
/// let closed = close_lease(q, tat, later, 6);
/// let (tat, _) = check_beside(q, closed, later, 1, 0).unwrap();
/// assert!(check_beside(q, tat, later, 1, 0).is_err());
/// ```
pub fn check_beside(quota: Quota, tat: Tat, now: UnixMillis, cost: u32, held: u32) -> Result<(Tat, Allow), NotUntil> {
    let (_, allow) = check(quota, beside(quota, tat, now, held), now, cost)?;
    let now_us = now.0.saturating_mul(1000);
    Ok((Tat(tat.0.max(now_us).saturating_add(quota.emission_us().saturating_mul(u64::from(cost)))), allow))
}

/// The state this bucket is in with `held` requests kept aside: for decisions and views,
/// never stored.
pub fn beside(quota: Quota, tat: Tat, now: UnixMillis, held: u32) -> Tat {
    let now_us = now.0.saturating_mul(1000);
    Tat(tat.0.max(now_us).saturating_add(quota.emission_us().saturating_mul(u64::from(held))))
}

/// How many requests fit now beside `held` leased out (see `check_beside`).
pub fn spare_beside(quota: Quota, tat: Tat, now: UnixMillis, held: u32) -> u32 {
    let now_us = now.0.saturating_mul(1000);
    let limit = now_us.saturating_add(quota.tolerance_us());
    u32::try_from(limit.saturating_sub(beside(quota, tat, now, held).0) / quota.emission_us()).unwrap_or(u32::MAX)
}

/// A lease closed at `at` (returned, or ended) having made `made` requests: they are
/// counted as made then, the latest they can have been, so that no window after it sees
/// them come back.
pub fn close_lease(quota: Quota, tat: Tat, at: UnixMillis, made: u32) -> Tat {
    let t = quota.emission_us();
    Tat(tat.0.max(at.0.saturating_mul(1000)).saturating_add(t.saturating_mul(u64::from(made))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_limiter_allows_exactly_the_burst() {
        let q = Quota::new(600, 5).unwrap();
        let now = UnixMillis(1_000_000);
        let mut tat = Tat::default();
        for expected_remaining in (0..5).rev() {
            let (next, allow) = check(q, tat, now, 1).unwrap();
            assert_eq!(allow.remaining, expected_remaining);
            tat = next;
        }
        let denied = check(q, tat, now, 1).unwrap_err();
        assert_eq!(denied.wait_ms, 100);
        assert_eq!(denied.earliest_retry, UnixMillis(1_000_100));
        // a retry at exactly the earliest time succeeds
        assert!(check(q, tat, denied.earliest_retry, 1).is_ok());
    }

    #[test]
    fn denial_leaves_the_state_alone() {
        let q = Quota::new(60, 1).unwrap();
        let (tat, _) = check(q, Tat::default(), UnixMillis(0), 1).unwrap();
        for _ in 0..10 {
            assert!(check(q, tat, UnixMillis(10), 1).is_err());
        }
        assert!(check(q, tat, UnixMillis(1_000), 1).is_ok());
    }

    #[test]
    fn a_cost_above_the_burst_never_passes() {
        let q = Quota::new(60, 3).unwrap();
        let err = check(q, Tat::default(), UnixMillis(5_000), 4).unwrap_err();
        assert_eq!(err.wait_ms, 1_000);
        // and waiting does not help: from an idle limiter it is always 1 s short
        assert!(check(q, Tat::default(), UnixMillis(5_000_000), 4).is_err());
    }
}
