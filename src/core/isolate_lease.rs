//! Leases to isolates: a slice of an account's free credit and of its rate that the account's
//! object grants one isolate, which admits calls from it locally, with no round trip.
//!
//! Doorman's idea (capacity leased to clients for a while, sized from what each wants),
//! beside the org shards of `core::lease` one level down. The object grants a lease with a
//! block of hold ids; the isolate gives each call it admits the next id, and makes the call
//! known to the object soon after (an `Admitted` report, batched with the settles, off the
//! response path), so the call becomes an ordinary hold there. The isolate stops admitting
//! when the lease's credit, ids or time run out, and returns the lease (after its reports:
//! one queue, in order); the unadmitted credit goes back at once.
//!
//! Why it never passes a ceiling: a lease's credit is committed in the object's ledger from
//! grant to return, like a hold; each call the isolate admits fits in what is left of it; a
//! report moves the call's amount from the lease to its own hold. Why it never passes the
//! rate: while a lease is open, the account's GCRA keeps all its calls aside, as a bucket of
//! their own carved out of the account's (`gcra::check_beside`), whenever the isolate makes
//! them; when it closes (returned, or ended) the calls it made are counted as made then, the
//! latest they can have been (`gcra::close_lease`). So the calls made on leases and those
//! made at the object, in any order and at any time, stay within the quota together.
//!
//! Why late, lost and replayed messages do no harm: the isolate stops at its lease's end as
//! its own clock reads it from before it asked, so it never admits after the object's end;
//! a lease that lapses unreturned (its isolate died) keeps its unadmitted credit a
//! quarantine longer for reports still on the way, then gives it back; the calls it admitted
//! that were reported and never settled are ordinary holds, charged in full when they lapse;
//! and the object remembers which of a lease's ids it has heard of, so a report or settle
//! sent twice counts once.

use crate::core::gcra::RateView;
use crate::core::ledger::MicroUsd;
use crate::core::time::UnixMillis;

/// How long a lease's object keeps its unadmitted credit after the lease's end, when the
/// isolate never returned it: reports may still be on the way from an isolate that is slow
/// rather than dead.
pub const QUARANTINE_MS: u64 = 10_000;

/// The object ends a lease this long after the isolate does, for clocks that disagree.
pub const SKEW_MS: u64 = 250;

/// The most calls one lease admits.
pub const MAX_LEASE_CALLS: u32 = 256;

/// What an isolate asks for: enough for `calls` calls of `per_call` each, for `ttl_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    pub calls: u32,
    pub per_call: MicroUsd,
    pub ttl_ms: u64,
}

/// A lease as granted: its id, its hold ids (`first_hold..first_hold + calls`), its credit
/// (`None`: the account has no ceiling) and how long it lasts from when it was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: u64,
    pub first_hold: u64,
    pub calls: u32,
    pub credit: Option<MicroUsd>,
    pub ttl_ms: u64,
    /// The throttle as the object left it, for the calls' `RateLimit` headers.
    pub rate: RateView,
}

impl Grant {
    /// When the isolate stops admitting on it, answering a request sent at `asked_at`: its
    /// life counted from before the object granted it, so never after the object's end.
    pub fn ends_at(&self, asked_at: UnixMillis) -> UnixMillis {
        asked_at.saturating_add_ms(self.ttl_ms)
    }
}

/// The object's record of a lease it granted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Issued {
    pub key_id: String,
    pub first_hold: u64,
    pub calls: u32,
    /// One bit per hold id: the object has heard of it (admitted, or settled).
    pub seen: Vec<u64>,
    /// When the lease ends for the object (the isolate stops before).
    pub ends_at: UnixMillis,
    /// Returned by its isolate: nothing more is admitted on it.
    pub returned: bool,
    /// Its calls are counted in the throttles (`gcra::close_lease`): it was returned, or it
    /// ended. Until then the throttles keep all its calls aside.
    pub closed: bool,
}

impl Issued {
    pub fn new(key_id: &str, first_hold: u64, calls: u32, ends_at: UnixMillis) -> Issued {
        Issued {
            key_id: key_id.to_string(),
            first_hold,
            calls,
            seen: vec![0; (calls as usize).div_ceil(64)],
            ends_at,
            returned: false,
            closed: false,
        }
    }

    /// How many of its holds the object has heard of.
    pub fn heard(&self) -> u32 {
        self.seen.iter().map(|w| w.count_ones()).sum()
    }

    /// The calls the throttles keep aside for it: all of them, until it closes.
    pub fn kept_aside(&self) -> u32 {
        if self.closed {
            0
        } else {
            self.calls
        }
    }

    /// Whether `hold` is one of this lease's ids.
    pub fn holds(&self, hold: u64) -> bool {
        hold >= self.first_hold && hold - self.first_hold < u64::from(self.calls)
    }

    /// Marks `hold` heard of; false if it was already (a report or a settle sent twice).
    pub fn hear(&mut self, hold: u64) -> bool {
        let Some(i) = hold.checked_sub(self.first_hold).filter(|i| *i < u64::from(self.calls)) else {
            return false;
        };
        let (word, bit) = ((i / 64) as usize, i % 64);
        match self.seen.get_mut(word) {
            Some(w) if *w & (1 << bit) == 0 => {
                *w |= 1 << bit;
                true
            }
            _ => false,
        }
    }

    /// When the object may forget the lease: its credit lapsed or came back, and no report or
    /// settle of it can still be on the way.
    pub fn forget_at(&self) -> UnixMillis {
        self.ends_at.saturating_add_ms(QUARANTINE_MS)
    }

    /// When the object may forget the record of a lease that lapsed unreturned: its credit
    /// went back at `forget_at`, but a call of its whose report was lost may still settle
    /// (standing for the report) from a live isolate, and must be heard once, not again at
    /// each copy of its settle.
    pub fn drop_record_at(&self) -> UnixMillis {
        if self.returned {
            self.forget_at()
        } else {
            self.ends_at.saturating_add_ms(LAPSED_RECORD_MS)
        }
    }
}

/// How long the record of a lease that lapsed unreturned is kept after its end: longer than
/// any call runs.
pub const LAPSED_RECORD_MS: u64 = 15 * 60_000;

/// How many calls to lease, for how much each, from what the isolate wants and what the
/// account has free. `None`: no lease, the isolate asks call by call.
///
/// A lease takes at most a quarter of the free credit, so that the isolates calling an
/// account share it (each new one finds three quarters of what the others left), and none
/// is granted when that quarter would not pay for two calls: near its last cents an account
/// is admitted call by call, exactly.
///
/// ```
/// use hf_gate::core::isolate_lease::{size, Want};
/// use hf_gate::core::ledger::MicroUsd;
/// let want = Want { calls: 10, per_call: MicroUsd(100), ttl_ms: 1_000 };
/// assert_eq!(size(want, Some(MicroUsd(100_000))), Some((10, Some(MicroUsd(1_000)))));
/// assert_eq!(size(want, Some(MicroUsd(2_000))), Some((5, Some(MicroUsd(500)))));
/// assert_eq!(size(want, Some(MicroUsd(700))), None);
/// assert_eq!(size(want, None), Some((10, None)));
/// ```
pub fn size(want: Want, free: Option<MicroUsd>) -> Option<(u32, Option<MicroUsd>)> {
    let calls = want.calls.min(MAX_LEASE_CALLS);
    if calls == 0 {
        return None;
    }
    let Some(free) = free else { return Some((calls, None)) };
    let per_call = want.per_call.0.max(1);
    let share = free.0 / 4;
    let affordable = u32::try_from(share / per_call).unwrap_or(u32::MAX).min(calls);
    if affordable < 2 {
        return None;
    }
    Some((affordable, Some(MicroUsd(per_call.saturating_mul(u64::from(affordable))))))
}

/// A lease as its isolate holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub grant: Grant,
    /// The next hold id to give, as an index into the grant's block.
    pub next: u32,
    /// Credit not yet given to a call (`None`: no ceiling).
    pub credit_left: Option<MicroUsd>,
    /// When the isolate stops admitting on it: from before it asked, by its own clock.
    pub ends_at: UnixMillis,
    /// A new lease has been asked for.
    pub renewing: bool,
}

impl Held {
    /// A lease granted in answer to a request sent at `asked_at`.
    pub fn new(grant: Grant, asked_at: UnixMillis) -> Held {
        Held { credit_left: grant.credit, ends_at: grant.ends_at(asked_at), grant, next: 0, renewing: false }
    }

    /// Admits a call whose worst case is `cost`: its hold id, or `None` when the lease has
    /// no id, credit or time left for it.
    ///
    /// ```
    /// use hf_gate::core::gcra::RateView;
    /// use hf_gate::core::isolate_lease::{Grant, Held};
    /// use hf_gate::core::ledger::MicroUsd;
    /// use hf_gate::core::time::UnixMillis;
    /// let rate = RateView { rpm: 60, burst: 10, remaining: 5, reset_ms: 0 };
    /// let grant = Grant { id: 7, first_hold: 8, calls: 2, credit: Some(MicroUsd(300)), ttl_ms: 1_000, rate };
    /// let mut lease = Held::new(grant, UnixMillis(0));
    /// assert_eq!(lease.admit(MicroUsd(200), UnixMillis(10)), Some(8));
    /// assert_eq!(lease.admit(MicroUsd(200), UnixMillis(10)), None); // credit
    /// assert_eq!(lease.admit(MicroUsd(100), UnixMillis(1_000)), None); // time
    /// assert_eq!(lease.admit(MicroUsd(100), UnixMillis(20)), Some(9));
    /// assert_eq!(lease.admit(MicroUsd(0), UnixMillis(20)), None); // ids
    /// ```
    pub fn admit(&mut self, cost: MicroUsd, now: UnixMillis) -> Option<u64> {
        if now >= self.ends_at || self.next >= self.grant.calls {
            return None;
        }
        if let Some(left) = self.credit_left {
            if cost > left {
                return None;
            }
            self.credit_left = Some(left.saturating_sub(cost));
        }
        let id = self.grant.first_hold.saturating_add(u64::from(self.next));
        self.next += 1;
        Some(id)
    }

    /// Whether it is time to ask for the next lease: a quarter of its calls, credit or time
    /// left, so that a steady caller finds the next one ready; or, for a caller whose calls
    /// come `gap_ms` apart (`Demand::gap_ms`), less time left than its next call is likely to
    /// take to come, when the next lease would still be there for it. (A key called every
    /// half a lease's life finds a quarter of it left at none of its calls: without this,
    /// every other call found the lease over and waited for the object.)
    pub fn wants_renewal(&self, now: UnixMillis, gap_ms: Option<u64>) -> bool {
        let calls_low = (self.grant.calls - self.next.min(self.grant.calls)) * 4 <= self.grant.calls;
        let credit_low = match (self.credit_left, self.grant.credit) {
            (Some(left), Some(total)) => left.0.saturating_mul(4) <= total.0,
            _ => false,
        };
        let left = self.ends_at.millis_since(now);
        let time_low = left.saturating_mul(4) <= self.grant.ttl_ms;
        // only where calls come too far apart for one to land in the lease's last quarter (a
        // busier caller is served by `time_low`, and asking earlier would only renew more
        // often); half a gap more, for a caller that is not quite regular
        let ttl = self.grant.ttl_ms;
        let gone_by_next = gap_ms.is_some_and(|gap| gap > ttl / 4 && gap < ttl && left <= gap.saturating_mul(3) / 2);
        !self.renewing && (calls_low || credit_low || time_low || gone_by_next)
    }

    /// Whether the next lease is on its way: asked for, and the answer can still come before
    /// this one ends. One not here by then is taken for lost (its sender was cut off, its
    /// batch undelivered), so that the key's next call asks again instead of going to the
    /// object call by call for good.
    pub fn renewal_pending(&self, now: UnixMillis) -> bool {
        self.renewing && now < self.ends_at
    }

    /// Whether this lease ends after `grant`, answering a request sent at `asked_at`, would:
    /// a renewal answered after a cold call brought a fresher lease is then given back
    /// unused, not put in that one's place.
    pub fn outlasts(&self, grant: &Grant, asked_at: UnixMillis) -> bool {
        self.ends_at > grant.ends_at(asked_at)
    }

    /// The throttle for a call's headers: what the object had left at grant, and the calls
    /// this lease still holds.
    pub fn rate(&self) -> RateView {
        let r = self.grant.rate;
        RateView { remaining: r.remaining.saturating_add(self.grant.calls.saturating_sub(self.next)), ..r }
    }
}

/// The calls an isolate sees for one account, counted per second: what it asks a lease for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    /// The second being counted (milliseconds since the epoch / 1,000).
    second: u64,
    this_second: u32,
    last_second: u32,
    /// When the last call came, and the time between calls, smoothed (`None` until two
    /// calls have come).
    last_at: Option<UnixMillis>,
    gap_ms: Option<u64>,
}

impl Demand {
    /// Counts a call at `now`.
    pub fn call(&mut self, now: UnixMillis) {
        let second = now.0 / 1_000;
        if second != self.second {
            self.last_second = if second == self.second + 1 { self.this_second } else { 0 };
            self.this_second = 0;
            self.second = second;
        }
        self.this_second = self.this_second.saturating_add(1);
        if let Some(last) = self.last_at {
            let gap = now.millis_since(last);
            self.gap_ms = Some(self.gap_ms.map_or(gap, |g| (g.saturating_mul(3).saturating_add(gap)) / 4));
        }
        self.last_at = Some(now);
    }

    /// The time between this account's calls, smoothed over the last few.
    pub fn gap_ms(&self) -> Option<u64> {
        self.gap_ms
    }

    /// The calls a lease of `ttl_ms` should cover: the busier of this second and the last,
    /// scaled to the lease and doubled, and at least `floor`.
    pub fn calls_in(&self, ttl_ms: u64, floor: u32) -> u32 {
        let per_second = u64::from(self.this_second.max(self.last_second));
        let expected = per_second.saturating_mul(ttl_ms) / 1_000;
        u32::try_from(expected.saturating_mul(2)).unwrap_or(u32::MAX).max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: RateView = RateView { rpm: 600, burst: 50, remaining: 40, reset_ms: 0 };

    #[test]
    fn a_lease_hears_each_of_its_holds_once() {
        let mut r = Issued::new("k", 100, 70, UnixMillis(1_000));
        assert!(r.holds(100) && r.holds(169) && !r.holds(170) && !r.holds(99));
        assert!(r.hear(100));
        assert!(!r.hear(100));
        assert!(r.hear(169));
        assert!(!r.hear(170));
        assert_eq!(r.forget_at(), UnixMillis(11_000));
    }

    #[test]
    fn renewal_is_asked_for_before_the_lease_runs_out() {
        let grant = Grant { id: 1, first_hold: 2, calls: 8, credit: Some(MicroUsd(800)), ttl_ms: 1_000, rate: RATE };
        let mut lease = Held::new(grant, UnixMillis(0));
        assert!(!lease.wants_renewal(UnixMillis(10), None));
        for _ in 0..6 {
            lease.admit(MicroUsd(10), UnixMillis(10));
        }
        assert!(lease.wants_renewal(UnixMillis(10), None), "two of eight calls left");
        let mut lease = Held::new(grant, UnixMillis(0));
        assert!(lease.wants_renewal(UnixMillis(800), None), "a fifth of its time left");
        lease.renewing = true;
        assert!(!lease.wants_renewal(UnixMillis(800), None), "asked already");
        assert!(lease.renewal_pending(UnixMillis(999)));
        assert!(!lease.renewal_pending(UnixMillis(1_000)), "an answer lost: the next call asks again");
    }

    #[test]
    fn a_renewal_answered_late_does_not_replace_a_fresher_lease() {
        let grant = Grant { id: 1, first_hold: 2, calls: 8, credit: Some(MicroUsd(800)), ttl_ms: 1_000, rate: RATE };
        // a cold call's lease, asked for at 900; a renewal asked for at 800 answers after it
        let held = Held::new(Grant { id: 2, ..grant }, UnixMillis(900));
        assert!(held.outlasts(&grant, UnixMillis(800)));
        assert!(!held.outlasts(&grant, UnixMillis(900)), "as fresh: the answer that came last is kept");
        assert!(!held.outlasts(&grant, UnixMillis(950)));
    }

    #[test]
    fn a_key_called_twice_a_lease_asks_for_the_next_before_its_next_call() {
        let grant = Grant { id: 1, first_hold: 2, calls: 8, credit: Some(MicroUsd(800)), ttl_ms: 1_000, rate: RATE };
        let mut demand = Demand::default();
        for t in [0, 500, 1_000, 1_500] {
            demand.call(UnixMillis(t));
        }
        assert_eq!(demand.gap_ms(), Some(500));
        // the lease came with the call at 1,500; the next comes at about 2,000 and the one
        // after at 2,500, after this lease's end
        let lease = Held::new(grant, UnixMillis(1_500));
        assert!(!lease.wants_renewal(UnixMillis(1_500), demand.gap_ms()), "the call at 2,000 finds it");
        assert!(lease.wants_renewal(UnixMillis(2_000), demand.gap_ms()), "the call at 2,500 would not");
        assert!(!lease.wants_renewal(UnixMillis(2_000), None), "a quarter of its time is not yet low");
        // calls further apart than a lease lives would find the next one over too: none asked
        assert!(!lease.wants_renewal(UnixMillis(2_000), Some(1_000)));
        assert!(!lease.wants_renewal(UnixMillis(2_000), Some(2_000)));
        // a caller whose calls land in every quarter of a lease is left to the quarter rule
        assert!(!lease.wants_renewal(UnixMillis(2_200), Some(200)));
        assert!(lease.wants_renewal(UnixMillis(2_250), Some(200)));
        // an irregular caller: the gap follows the last few calls
        demand.call(UnixMillis(5_000));
        assert_eq!(demand.gap_ms(), Some(1_250));
    }

    #[test]
    fn demand_follows_the_call_rate() {
        let mut d = Demand::default();
        for i in 0..150 {
            d.call(UnixMillis(1_000_000 + i * 10));
        }
        // a call each 10 ms: 100 a second, so 200 for a lease of a second
        assert_eq!(d.calls_in(1_000, 4), 200);
        assert_eq!(d.calls_in(500, 4), 100);
        // a quiet spell forgets the old rate
        d.call(UnixMillis(1_010_000));
        assert_eq!(d.calls_in(1_000, 4), 4);
        assert_eq!(Demand::default().calls_in(1_000, 4), 4);
    }
}
