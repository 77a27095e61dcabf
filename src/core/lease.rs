//! Org sharding: one org's pool spread over several Durable Objects, each admitting locally
//! on credit and rate it has leased from the org object.
//!
//! An org pool in one object is capped near 1,000 calls/s worldwide. With `shards: N`, each of
//! the org's keys belongs to one shard (`shard_of`), and each shard is an ordinary
//! `AccountState` whose budget is not the org's but its *lease*: the credit the org's `Pool`
//! has granted it this period (`Lease::policy`), and whose rate is a static slice of the
//! org's (`rate_slice`). A shard talks to the pool only when its lease is too small for a call,
//! or to give unused lease back, so the pool sees a few calls per shard, not every call.
//!
//! Why it cannot overspend: a shard's ledger refuses to commit past its lease, and the pool
//! never lets the shards' claims (for each, the larger of its lease and what it last reported
//! as committed) add up past the budget's ceiling. So every shard's spend and holds stay within
//! what the pool counts for it, except for recorded overrun (upstream overshoot, late settles),
//! exactly as in a single ledger.
//!
//! Why it holds with messages in flight: only the shard ever shrinks its lease, and it does so
//! locally *before* telling the pool (`Lease::give_back`), so the pool's view of a lease is
//! never smaller than the shard's. Grants are numbered; a shard applies only a grant newer than
//! the one it holds, and the pool takes a shrink only from a shard that has seen its newest
//! grant, so a reply overtaken by a give-back can never bring back credit the pool has lent
//! elsewhere.

use crate::core::account::AccountPolicy;
use crate::core::keys::RateLimit;
use crate::core::ledger::{Budget, MicroUsd, OnExhausted, Spent, Usage};
use crate::core::time::{BillingPeriod, UnixMillis};

/// The most shards an org may be given.
pub const MAX_SHARDS: u32 = 64;

/// A shard count as every function here reads it: `shards` brought into `1..=MAX_SHARDS`.
fn clamp_shards(shards: u32) -> u32 {
    shards.clamp(1, MAX_SHARDS)
}

/// The shard a key belongs to, `0..shards` (a count outside `1..=MAX_SHARDS` is read as the
/// nearest valid one).
///
/// Stable across processes and versions (FNV-1a of the key id, not std's seeded hasher), and
/// chosen by rendezvous hashing, so changing the count from N to M moves only the keys whose
/// best shard changed: about |N - M| / max(N, M) of them, not nearly all as `hash % N` would.
///
/// ```
/// use hf_gate::core::lease::shard_of;
/// let s = shard_of("key_abc", 8);
/// assert!(s < 8);
/// assert_eq!(shard_of("key_abc", 8), s);
/// assert_eq!(shard_of("key_abc", 1), 0);
/// ```
pub fn shard_of(key_id: &str, shards: u32) -> u32 {
    let key = fnv1a(key_id.as_bytes());
    (0..clamp_shards(shards)).max_by_key(|&s| (mix(key ^ u64::from(s).wrapping_mul(FNV_PRIME)), s)).unwrap_or(0)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

/// splitmix64's finaliser: FNV-1a alone mixes the last bytes poorly, and the rendezvous
/// score needs every bit of the (key, shard) pair to matter.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One shard's static slice of the org's rate: `rpm` and `burst` divided by the shard count,
/// rounded down, but never below 1 (a zero would refuse every call).
///
/// Each shard throttles on its own, so the org's worst case is the sum of the slices. Rounding
/// down keeps that sum within the org's limit whenever `rpm >= shards` and `burst >= shards`.
/// Below that, the floor of 1 wins: every shard still admits 1 per minute (or a burst of 1),
/// so the org may see up to `shards` per minute (or a burst of `shards`), more than its
/// limit. Give such an org fewer shards: it has no load to spread.
///
/// ```
/// use hf_gate::core::keys::RateLimit;
/// use hf_gate::core::lease::rate_slice;
/// assert_eq!(rate_slice(RateLimit { rpm: 1_000, burst: 50 }, 8), RateLimit { rpm: 125, burst: 6 });
/// assert_eq!(rate_slice(RateLimit { rpm: 3, burst: 1 }, 4), RateLimit { rpm: 1, burst: 1 });
/// ```
pub fn rate_slice(rate: RateLimit, shards: u32) -> RateLimit {
    let n = clamp_shards(shards);
    RateLimit { rpm: (rate.rpm / n).max(1), burst: (rate.burst / n).max(1) }
}

/// What a shard tells the pool: where it stands this period, and the lease it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// The period the figures belong to; the pool ignores figures from any other.
    pub period_start: UnixMillis,
    /// Settled spend this period, overrun included. Only grows within a period.
    pub used: MicroUsd,
    /// `used` plus what the shard holds for calls in flight.
    pub committed: MicroUsd,
    /// The lease the shard holds now (`None`: unbounded), already lowered if it gives back.
    pub lease: Option<MicroUsd>,
    /// The newest grant the shard has applied.
    pub seq: u64,
    /// Grows with every report from the shard in the period: the pool takes the figures of
    /// the newest it has received, so a report overtaken on the way changes nothing.
    pub serial: u64,
}

/// The pool's answer: the shard's whole lease for the period, not an increment, so a grant
/// applied twice or late does no harm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub period_start: UnixMillis,
    /// The credit the shard may commit this period, holds carried over included; `None` for
    /// an org with no ceiling (pay-as-you-go without a cap), which needs no lease at all.
    pub lease: Option<MicroUsd>,
    /// Grows with every grant to this shard in the period; the shard keeps the newest.
    pub seq: u64,
}

/// The pool's view of one shard, as of its last report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardView {
    /// What the shard may commit this period (`None`: unbounded). Never below what the shard
    /// itself holds: only the shard shrinks it, and tells the pool after.
    pub leased: Option<MicroUsd>,
    pub used: MicroUsd,
    pub committed: MicroUsd,
    /// The newest grant to this shard.
    pub seq: u64,
    /// The serial of the newest report taken.
    pub serial: u64,
}

impl ShardView {
    const EMPTY: ShardView =
        ShardView { leased: Some(MicroUsd::ZERO), used: MicroUsd::ZERO, committed: MicroUsd::ZERO, seq: 0, serial: 0 };

    /// What this shard may have committed, as far as the pool knows: its lease, or more if it
    /// reported more (overrun). `None`: unbounded.
    pub fn claim(&self) -> Option<MicroUsd> {
        self.leased.map(|l| l.max(self.committed))
    }
}

/// The org object's side: the leases of one org's shards for the current period.
///
/// ```
/// use hf_gate::core::lease::{Lease, Pool};
/// use hf_gate::core::ledger::{Budget, Ledger, MicroUsd, OnExhausted};
/// use hf_gate::core::time::UnixMillis;
/// let now = UnixMillis(1_795_352_400_000);
/// let budget = Budget { credit: MicroUsd(80_000), on_exhausted: OnExhausted::Block, cap: None };
/// let mut pool = Pool::new(4, now).unwrap();
/// // shard 2, its ledger, and the lease it holds
/// let (mut ledger, mut lease) = (Ledger::new(now), Lease::new(now));
/// assert!(ledger.reserve(now, MicroUsd(1_000), &lease.budget(now), 60_000).is_err());
/// // it asks for what the call needs, and gets more, so it need not come back soon
/// let report = lease.report(&ledger.usage(now, &lease.budget(now)));
/// let grant = pool.lease(2, report, MicroUsd(1_000), &budget, now).unwrap();
/// assert_eq!(grant.lease, Some(MicroUsd(10_000))); // 80,000 free / (2 * 4 shards)
/// assert!(lease.apply(grant));
/// assert!(ledger.reserve(now, MicroUsd(1_000), &lease.budget(now), 60_000).is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    period_start: UnixMillis,
    shards: Vec<ShardView>,
}

/// A shard's figures as last reported to the pool, added up: they lag the shards by whatever
/// happened since each one last reported. For exact figures, ask the shards (`org_usage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    pub period: BillingPeriod,
    pub used: MicroUsd,
    pub committed: MicroUsd,
    /// The shards' claims added up (`None`: some shard holds an unbounded lease).
    pub claimed: Option<MicroUsd>,
}

impl Pool {
    /// A pool of `shards` shards with nothing leased, or `None` outside `1..=MAX_SHARDS`.
    pub fn new(shards: u32, now: UnixMillis) -> Option<Pool> {
        if !(1..=MAX_SHARDS).contains(&shards) {
            return None;
        }
        Some(Pool {
            period_start: BillingPeriod::containing(now).start,
            shards: vec![ShardView::EMPTY; shards as usize],
        })
    }

    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    pub fn shard(&self, shard: u32) -> Option<&ShardView> {
        self.shards.get(shard as usize)
    }

    /// Starts a new period if `now` is past the current one, like `Ledger::roll` (but never
    /// back to an earlier one, should a clock step back). Holds made in the old period carry
    /// over into the new one, and the pool cannot know how much of each lease they fill until
    /// the shard reports, so each shard keeps, as its lease, what it may still hold (its old
    /// claim less its settled spend) until its first report of the period.
    pub fn roll(&mut self, now: UnixMillis) {
        let current = BillingPeriod::containing(now).start;
        if current > self.period_start {
            self.period_start = current;
            for s in &mut self.shards {
                let carried = s.claim().map(|c| c.saturating_sub(s.used));
                *s = ShardView { leased: carried, ..ShardView::EMPTY };
            }
        }
    }

    /// Takes a shard's report and, if it asks for `want` more than its unused lease covers,
    /// grows its lease. Returns the shard's whole lease (`None` when there is no such shard).
    ///
    /// The chunking rule: a shard short of `need` (= `want` less its unused lease) is granted
    /// `max(need, free / (2 * shards))`, never more than `free`, where `free` is the ceiling
    /// less every shard's claim. So a shard takes half its fair share of what is left, not
    /// one call's worth, and comes back about once per that many calls; every grant leaves at
    /// least half of the free credit to the others; and as the pool runs dry, grants shrink
    /// to exactly what a call needs, so the last micro-dollar can still be spent. When `free`
    /// is less than `need`, all of `free` is granted: a token-priced call may still fit with a
    /// smaller output bound; if not, the shard gives it back with its next report.
    ///
    /// A report from another period (a shard whose clock is across the month boundary from
    /// the pool's) changes nothing: the shard is told its lease as it stands.
    ///
    /// With no ceiling (pay-as-you-go without a cap) the lease is unbounded: the shard never
    /// needs to come back. Later giving the org a ceiling reaches such a shard only when it
    /// gives its lease back (`Lease::give_back`); until then its claim counts as unbounded
    /// and no other shard is granted anything.
    pub fn lease(
        &mut self,
        shard: u32,
        report: Report,
        want: MicroUsd,
        budget: &Budget,
        now: UnixMillis,
    ) -> Option<Grant> {
        self.roll(now);
        let n = self.shards.len() as u64;
        let others = self.claims(Some(shard as usize));
        let view = self.shards.get_mut(shard as usize)?;
        if report.period_start == self.period_start {
            if report.serial > view.serial {
                view.serial = report.serial;
                view.used = report.used;
                view.committed = report.committed;
                // only a shard that has seen the newest grant can have given back from it
                if report.seq == view.seq && narrower(report.lease, view.leased) {
                    view.leased = report.lease;
                }
            }
            let unused = view.leased.map(|l| l.saturating_sub(view.committed));
            let need = unused.map_or(MicroUsd::ZERO, |u| want.saturating_sub(u));
            if need > MicroUsd::ZERO {
                match (budget.ceiling(), view.claim(), others) {
                    (None, ..) => {
                        view.leased = None;
                        view.seq = view.seq.saturating_add(1);
                    }
                    (Some(ceiling), Some(own), Some(others)) => {
                        let free = ceiling.saturating_sub(others).saturating_sub(own);
                        if free > MicroUsd::ZERO {
                            let chunk = need.max(MicroUsd(free.0 / (2 * n))).min(free);
                            view.leased = Some(own.saturating_add(chunk));
                            view.seq = view.seq.saturating_add(1);
                        }
                    }
                    // some claim is unbounded: nothing is free until it is given back
                    _ => {}
                }
            }
        }
        Some(Grant { period_start: self.period_start, lease: view.leased, seq: view.seq })
    }

    /// Takes a report from a shard that has lowered its lease (`Lease::give_back`), so the
    /// credit it did not use can be granted to the others.
    pub fn give_back(&mut self, shard: u32, report: Report, budget: &Budget, now: UnixMillis) -> Option<Grant> {
        self.lease(shard, report, MicroUsd::ZERO, budget, now)
    }

    /// Every shard's claim added up, but `except`'s; `None` if any of them is unbounded.
    fn claims(&self, except: Option<usize>) -> Option<MicroUsd> {
        self.shards
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != except)
            .try_fold(MicroUsd::ZERO, |sum, (_, s)| Some(sum.saturating_add(s.claim()?)))
    }

    /// The shards' figures as last reported (see `PoolUsage`), as they stand at `now`.
    pub fn usage(&self, now: UnixMillis) -> PoolUsage {
        let mut pool = self.clone();
        pool.roll(now);
        let sum =
            |f: fn(&ShardView) -> MicroUsd| pool.shards.iter().map(f).fold(MicroUsd::ZERO, MicroUsd::saturating_add);
        PoolUsage {
            period: BillingPeriod::containing(now),
            used: sum(|s| s.used),
            committed: sum(|s| s.committed),
            claimed: pool.claims(None),
        }
    }
}

/// Whether lease `a` allows less than lease `b` (`None` is unbounded).
fn narrower(a: Option<MicroUsd>, b: Option<MicroUsd>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a < b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The shard object's side: the lease it holds for the current period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    period_start: UnixMillis,
    credit: Option<MicroUsd>,
    seq: u64,
    reports: u64,
    /// The most spend the shard has reported in the period. When a period ends, the pool
    /// counts a shard's lease less the spend it last heard of as what the shard may carry
    /// into the next one; a late settle can lower the shard's spend below that (a lapsed
    /// hold's charge replaced by a smaller actual cost), so the shard holds no more than its
    /// lease less this (`admitting`).
    reported_used: MicroUsd,
}

impl Lease {
    /// Nothing leased yet: the first call that costs anything asks the pool.
    pub fn new(now: UnixMillis) -> Lease {
        Lease {
            period_start: BillingPeriod::containing(now).start,
            credit: Some(MicroUsd::ZERO),
            seq: 0,
            reports: 0,
            reported_used: MicroUsd::ZERO,
        }
    }

    /// The lease as it stands at `now`. A lease is for one period: a new one starts with
    /// nothing (holds carried over from the old period count against the first grant of the
    /// new one, as they do in a ledger).
    fn at(&self, now: UnixMillis) -> Lease {
        if BillingPeriod::containing(now).start > self.period_start {
            Lease::new(now)
        } else {
            *self
        }
    }

    /// The credit this shard may commit at `now` (`None`: unbounded).
    pub fn credit(&self, now: UnixMillis) -> Option<MicroUsd> {
        self.at(now).credit
    }

    /// The budget the shard's ledger is read against: its lease, a hard bound.
    pub fn budget(&self, now: UnixMillis) -> Budget {
        match self.credit(now) {
            Some(credit) => Budget { credit, on_exhausted: OnExhausted::Block, cap: None },
            None => Budget { credit: MicroUsd::ZERO, on_exhausted: OnExhausted::Payg, cap: None },
        }
    }

    /// The budget the shard admits against when it has spent `used` this period: its lease,
    /// less whatever a late settle took its spend below the most it reported. So its holds
    /// never pass its lease less that spend, which is what the pool lets it carry into the
    /// next period.
    pub fn admitting(&self, now: UnixMillis, used: MicroUsd) -> Budget {
        let held = self.at(now);
        let mut budget = held.budget(now);
        budget.credit = budget.credit.saturating_sub(held.reported_used.saturating_sub(used));
        budget
    }

    /// The policy the shard's `AccountState` admits under: the org's, with the lease for a
    /// budget and a slice of the org's rate. It keeps the org policy's version: the shard
    /// offers it on every call, so an equal version always replaces the stored copy and a new
    /// lease takes effect at once, while an org policy older than one seen is still refused.
    pub fn policy(&self, org: &AccountPolicy, shards: u32, now: UnixMillis, used: MicroUsd) -> AccountPolicy {
        AccountPolicy { budget: self.admitting(now, used), rate: rate_slice(org.rate, shards), ..*org }
    }

    /// The report of a shard whose ledger reads `usage` (its `Ledger::usage` at now: only the
    /// period, `used` and `reserved` are read, so the budget it was read against does not
    /// matter).
    pub fn report(&mut self, usage: &Usage) -> Report {
        *self = self.at(usage.period.start);
        self.reports = self.reports.saturating_add(1);
        self.reported_used = self.reported_used.max(usage.used);
        Report {
            period_start: self.period_start,
            used: usage.used,
            committed: self.committed(usage),
            lease: self.credit,
            seq: self.seq,
            serial: self.reports,
        }
    }

    /// Lowers the lease to what is committed, so the rest can go back to the pool, and
    /// returns the report that tells it so. The lease is lowered here, first: from now on the
    /// shard cannot commit what it is giving back, whatever the pool answers and whenever.
    pub fn give_back(&mut self, usage: &Usage) -> Report {
        *self = self.at(usage.period.start);
        let committed = self.committed(usage);
        self.credit = Some(self.credit.map_or(committed, |c| c.min(committed)));
        self.report(usage)
    }

    /// Whether the lease holds more than is committed, so that `give_back` would return
    /// something (an unbounded lease always does).
    pub fn has_spare(&self, usage: &Usage, now: UnixMillis) -> bool {
        self.credit(now).is_none_or(|c| c > self.committed(usage))
    }

    /// What of the lease the shard cannot commit again: its holds, the credit it leased to
    /// isolates (which admit calls on it without asking), and its spend or, if a late settle
    /// took that below the most it reported, that most (`admitting`). The pool hears this as
    /// the shard's committed credit, so the unused lease it counts is what the shard can
    /// still admit.
    fn committed(&self, usage: &Usage) -> MicroUsd {
        self.reported_used.max(usage.used).saturating_add(usage.reserved).saturating_add(usage.leased)
    }

    /// Takes a grant if it is newer than the lease held; says if it did. An older one (a
    /// reply overtaken by another, or from a past period) changes nothing.
    pub fn apply(&mut self, grant: Grant) -> bool {
        let held = self.at(grant.period_start);
        if (grant.period_start, grant.seq) > (held.period_start, held.seq) {
            *self = Lease { credit: grant.lease, seq: grant.seq, ..held };
            true
        } else {
            false
        }
    }
}

/// The org's exact figures, from every shard's own (`AccountState::usage` at the same `now`),
/// against the org's real budget: what the admin view and `/v1/usage` show for a sharded org.
///
/// Like `Ledger::usage`, spend counts only from the period of `now`, while holds count
/// whichever period they were made in (they settle into this one).
///
/// ```
/// use hf_gate::core::lease::org_usage;
/// use hf_gate::core::ledger::{Budget, Ledger, MicroUsd, OnExhausted};
/// use hf_gate::core::time::UnixMillis;
/// let now = UnixMillis(1_795_352_400_000);
/// let org = Budget { credit: MicroUsd(1_000), on_exhausted: OnExhausted::Block, cap: None };
/// let lease = Budget { credit: MicroUsd(400), ..org };
/// let (mut a, mut b) = (Ledger::new(now), Ledger::new(now));
/// let id = a.reserve(now, MicroUsd(300), &lease, 60_000).unwrap();
/// a.settle(now, id, MicroUsd(250));
/// b.reserve(now, MicroUsd(100), &lease, 60_000).unwrap();
/// let u = org_usage(&[a.usage(now, &lease), b.usage(now, &lease)], &org, now);
/// assert_eq!((u.used, u.reserved, u.remaining), (MicroUsd(250), MicroUsd(100), MicroUsd(650)));
/// ```
pub fn org_usage(shards: &[Usage], budget: &Budget, now: UnixMillis) -> Usage {
    let period = BillingPeriod::containing(now);
    let spent = shards.iter().filter(|u| u.period == period).map(Usage::spent).fold(Spent::default(), Spent::plus);
    let reserved = shards.iter().map(|u| u.reserved).fold(MicroUsd::ZERO, MicroUsd::saturating_add);
    Usage::against(budget, period, spent, reserved)
}

// Their JSON, as the pool's and the shard's messages and rows carry them (`core::wire`).
crate::core::wire::json_struct!(Report { period_start, used, committed, lease, seq, serial });
crate::core::wire::json_struct!(Grant { period_start, lease, seq });
crate::core::wire::json_struct!(ShardView { leased, used, committed, seq, serial });
crate::core::wire::json_struct!(Pool { period_start, shards });
crate::core::wire::json_struct!(Lease { period_start, credit, seq, reports, reported_used: default });

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ledger::Ledger;

    const NOW: UnixMillis = UnixMillis(1_795_352_400_000); // 2026-11-22T13:00:00Z

    fn block(credit: u64) -> Budget {
        Budget { credit: MicroUsd(credit), on_exhausted: OnExhausted::Block, cap: None }
    }

    /// What a shard's ledger reads with `used` settled and `reserved` held.
    fn usage(used: u64, reserved: u64) -> Usage {
        Usage { used: MicroUsd(used), reserved: MicroUsd(reserved), ..Ledger::new(NOW).usage(NOW, &block(0)) }
    }

    /// A shard asks the pool for `want` and applies the answer; returns the grant.
    fn ask(pool: &mut Pool, shard: u32, lease: &mut Lease, at: Usage, want: u64, b: &Budget) -> Grant {
        let grant = pool.lease(shard, lease.report(&at), MicroUsd(want), b, NOW).unwrap();
        lease.apply(grant);
        grant
    }

    #[test]
    fn a_key_always_lands_on_the_same_shard() {
        // pinned: a change here moves every org's keys between shards
        let got: Vec<u32> = ["a", "key_1", "key_2", "hf_org_key"].iter().map(|k| shard_of(k, 8)).collect();
        assert_eq!(got, [6, 4, 6, 4]);
        assert_eq!(fnv1a(b""), FNV_OFFSET);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn keys_spread_over_every_shard() {
        let mut counts = [0u32; 8];
        for i in 0..8_000 {
            counts[shard_of(&format!("key_{i}"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1_200).contains(c)), "{counts:?}");
    }

    #[test]
    fn adding_a_shard_moves_only_the_keys_it_takes() {
        let moved: Vec<u32> = (0..4_000)
            .map(|i| format!("key_{i}"))
            .filter(|k| shard_of(k, 8) != shard_of(k, 9))
            .map(|k| shard_of(&k, 9))
            .collect();
        // every key that moved went to the new shard, and about 1/9 of them did
        assert!(moved.iter().all(|s| *s == 8));
        assert!((300..600).contains(&moved.len()), "{}", moved.len());
    }

    #[test]
    fn a_shard_count_out_of_range_is_read_as_the_nearest_valid_one() {
        assert_eq!(shard_of("k", 0), 0);
        assert_eq!(shard_of("k", 1_000), shard_of("k", MAX_SHARDS));
        assert_eq!(rate_slice(RateLimit { rpm: 640, burst: 64 }, 0), RateLimit { rpm: 640, burst: 64 });
        assert_eq!(rate_slice(RateLimit { rpm: 640, burst: 64 }, 1_000), RateLimit { rpm: 10, burst: 1 });
        assert!(Pool::new(0, NOW).is_none());
        assert!(Pool::new(MAX_SHARDS + 1, NOW).is_none());
        assert_eq!(Pool::new(MAX_SHARDS, NOW).map(|p| p.shard_count()), Some(MAX_SHARDS));
    }

    #[test]
    fn slices_add_up_to_at_most_the_org_rate_when_it_has_one_per_shard() {
        let org = RateLimit { rpm: 1_000, burst: 100 };
        for n in 1..=MAX_SHARDS {
            let s = rate_slice(org, n);
            assert!(s.rpm * n <= org.rpm, "{n}: {s:?}");
            assert_eq!(s.burst * n <= org.burst, n <= org.burst, "{n}: {s:?}");
        }
    }

    #[test]
    fn a_grant_is_half_a_fair_share_or_what_the_call_needs() {
        let mut pool = Pool::new(4, NOW).unwrap();
        let b = block(80_000);
        let mut shards = [Lease::new(NOW); 4];
        // a small call: 80,000 / (2 * 4)
        let g = ask(&mut pool, 0, &mut shards[0], usage(0, 0), 10, &b);
        assert_eq!((g.lease, g.seq), (Some(MicroUsd(10_000)), 1));
        // a big call: what it needs
        assert_eq!(ask(&mut pool, 1, &mut shards[1], usage(0, 0), 50_000, &b).lease, Some(MicroUsd(50_000)));
        // more than is free: all that is free
        assert_eq!(ask(&mut pool, 2, &mut shards[2], usage(0, 0), 50_000, &b).lease, Some(MicroUsd(20_000)));
        // nothing free: nothing granted
        let g = ask(&mut pool, 3, &mut shards[3], usage(0, 0), 1, &b);
        assert_eq!((g.lease, g.seq), (Some(MicroUsd::ZERO), 0));
        assert_eq!(pool.usage(NOW).claimed, Some(MicroUsd(80_000)));
    }

    #[test]
    fn a_shard_with_room_in_its_lease_is_granted_nothing_more() {
        let mut pool = Pool::new(2, NOW).unwrap();
        let b = block(40_000);
        let mut lease = Lease::new(NOW);
        ask(&mut pool, 0, &mut lease, usage(0, 0), 10, &b);
        assert_eq!(lease.credit(NOW), Some(MicroUsd(10_000)));
        assert_eq!(ask(&mut pool, 0, &mut lease, usage(0, 9_000), 1_000, &b).seq, 1);
        // short by 1: grown by half a fair share of the 30,000 left
        ask(&mut pool, 0, &mut lease, usage(0, 9_000), 1_001, &b);
        assert_eq!(lease.credit(NOW), Some(MicroUsd(17_500)));
    }

    #[test]
    fn unused_lease_given_back_goes_to_the_other_shards() {
        let mut pool = Pool::new(2, NOW).unwrap();
        let b = block(1_000);
        let (mut a, mut c) = (Lease::new(NOW), Lease::new(NOW));
        ask(&mut pool, 0, &mut a, usage(0, 0), 1_000, &b);
        assert_eq!(ask(&mut pool, 1, &mut c, usage(0, 0), 1, &b).lease, Some(MicroUsd::ZERO));
        // 300 spent: the other 700 go back, and the lease is lowered before the pool hears
        let r = a.give_back(&usage(300, 0));
        assert_eq!(a.credit(NOW), Some(MicroUsd(300)));
        pool.give_back(0, r, &b, NOW).unwrap();
        ask(&mut pool, 1, &mut c, usage(0, 0), 700, &b);
        assert_eq!(c.credit(NOW), Some(MicroUsd(700)));
        assert_eq!(pool.usage(NOW).used, MicroUsd(300));
    }

    #[test]
    fn credit_leased_to_isolates_is_never_given_back_to_the_pool() {
        let mut pool = Pool::new(2, NOW).unwrap();
        let b = block(1_000);
        let (mut a, mut c) = (Lease::new(NOW), Lease::new(NOW));
        ask(&mut pool, 0, &mut a, usage(0, 0), 1_000, &b);
        // 300 spent, 200 held, and 400 leased to isolates, which admit calls on it unasked
        let at = Usage { leased: MicroUsd(400), ..usage(300, 200) };
        assert!(a.has_spare(&at, NOW));
        let r = a.give_back(&at);
        assert_eq!(a.credit(NOW), Some(MicroUsd(900)));
        assert!(!a.has_spare(&at, NOW));
        pool.give_back(0, r, &b, NOW).unwrap();
        // only the 100 nobody holds can go to the other shard
        ask(&mut pool, 1, &mut c, usage(0, 0), 1_000, &b);
        assert_eq!(c.credit(NOW), Some(MicroUsd(100)));
    }

    #[test]
    fn a_grant_overtaken_by_another_is_ignored() {
        let mut pool = Pool::new(2, NOW).unwrap();
        let b = block(1_000);
        let mut a = Lease::new(NOW);
        // two asks in flight; the second reply comes first
        let first = pool.lease(0, a.report(&usage(0, 0)), MicroUsd(100), &b, NOW).unwrap();
        let second = pool.lease(0, a.report(&usage(0, 0)), MicroUsd(900), &b, NOW).unwrap();
        assert_eq!((first.lease, second.lease), (Some(MicroUsd(250)), Some(MicroUsd(900))));
        assert!(a.apply(second));
        assert!(!a.apply(first));
        assert_eq!(a.credit(NOW), Some(MicroUsd(900)));
    }

    #[test]
    fn a_give_back_from_a_shard_that_missed_a_grant_shrinks_nothing() {
        let mut pool = Pool::new(2, NOW).unwrap();
        let b = block(1_000);
        let mut a = Lease::new(NOW);
        ask(&mut pool, 0, &mut a, usage(0, 0), 100, &b);
        // a second grant is on its way when the shard gives back from the first
        let in_flight = pool.lease(0, a.report(&usage(0, 0)), MicroUsd(900), &b, NOW).unwrap();
        pool.give_back(0, a.give_back(&usage(0, 0)), &b, NOW).unwrap();
        assert_eq!(pool.shard(0).unwrap().leased, Some(MicroUsd(900)));
        // because the grant still lands, and the pool must still count it
        assert!(a.apply(in_flight));
        assert_eq!(a.credit(NOW), Some(MicroUsd(900)));
    }

    #[test]
    fn a_report_overtaken_by_a_newer_one_is_ignored() {
        let mut pool = Pool::new(1, NOW).unwrap();
        let b = block(1_000);
        let mut a = Lease::new(NOW);
        ask(&mut pool, 0, &mut a, usage(0, 0), 500, &b);
        let old = a.report(&usage(0, 500));
        pool.give_back(0, a.report(&usage(100, 0)), &b, NOW).unwrap();
        pool.give_back(0, old, &b, NOW).unwrap();
        let s = pool.shard(0).unwrap();
        assert_eq!((s.used, s.committed), (MicroUsd(100), MicroUsd(100)));
    }

    #[test]
    fn without_a_ceiling_the_lease_is_unbounded_until_given_back() {
        let mut pool = Pool::new(2, NOW).unwrap();
        let payg = Budget { credit: MicroUsd(100), on_exhausted: OnExhausted::Payg, cap: None };
        let (mut a, mut c) = (Lease::new(NOW), Lease::new(NOW));
        ask(&mut pool, 0, &mut a, usage(0, 0), 5_000, &payg);
        assert_eq!(a.budget(NOW).ceiling(), None);
        // the org is given a cap: nothing is free while shard 0's claim is unbounded
        let capped = Budget { cap: Some(MicroUsd(1_000)), ..payg };
        assert_eq!(ask(&mut pool, 1, &mut c, usage(0, 0), 1, &capped).lease, Some(MicroUsd::ZERO));
        pool.give_back(0, a.give_back(&usage(0, 0)), &capped, NOW).unwrap();
        assert_eq!(ask(&mut pool, 1, &mut c, usage(0, 0), 1, &capped).lease, Some(MicroUsd(250)));
    }

    #[test]
    fn a_new_period_keeps_only_what_carried_holds_may_fill() {
        let mut pool = Pool::new(2, NOW).unwrap();
        let b = block(1_000);
        let mut a = Lease::new(NOW);
        ask(&mut pool, 0, &mut a, usage(0, 0), 600, &b);
        pool.give_back(0, a.report(&usage(200, 300)), &b, NOW).unwrap();
        let dec_1 = BillingPeriod::containing(NOW).end;
        pool.roll(dec_1);
        let s = pool.shard(0).unwrap();
        // 600 leased, 200 of it settled: up to 400 may still be held
        assert_eq!((s.leased, s.used, s.seq), (Some(MicroUsd(400)), MicroUsd::ZERO, 0));
        assert_eq!(pool.usage(dec_1).used, MicroUsd::ZERO);
        // the shard starts the period with nothing, and a grant from November is ignored
        assert_eq!(a.credit(dec_1), Some(MicroUsd::ZERO));
        let november = Grant { period_start: BillingPeriod::containing(NOW).start, lease: None, seq: 9 };
        let mut december = a.at(dec_1);
        assert!(!december.apply(november));
        assert_eq!(december.credit(dec_1), Some(MicroUsd::ZERO));
    }

    #[test]
    fn a_late_settle_lets_a_shard_hold_no_more_than_the_pool_lets_it_carry() {
        let mut pool = Pool::new(1, NOW).unwrap();
        let b = block(1_000);
        let mut lease = Lease::new(NOW);
        ask(&mut pool, 0, &mut lease, usage(0, 0), 1_000, &b);
        // a lapsed hold was charged 600 in full, and the pool heard so
        pool.give_back(0, lease.report(&usage(600, 0)), &b, NOW).unwrap();
        // then the call's late settle replaced that charge with its actual 100: the pool
        // still counts 600 spent, and would let the shard carry at most 400 into December
        assert_eq!(lease.admitting(NOW, MicroUsd(100)).credit, MicroUsd(500));
        assert_eq!(lease.admitting(NOW, MicroUsd(600)).credit, MicroUsd(1_000));
        let dec_1 = BillingPeriod::containing(NOW).end;
        pool.roll(dec_1);
        assert_eq!(pool.shard(0).unwrap().leased, Some(MicroUsd(400)));
        // a new period starts from nothing reported
        assert_eq!(lease.admitting(dec_1, MicroUsd::ZERO).credit, MicroUsd::ZERO);
    }

    #[test]
    fn a_shard_whose_spend_fell_below_its_report_is_still_granted_more() {
        let mut pool = Pool::new(1, NOW).unwrap();
        let b = block(2_000);
        let mut lease = Lease::new(NOW);
        ask(&mut pool, 0, &mut lease, usage(0, 0), 1_000, &b);
        let granted = lease.credit(NOW);
        assert_eq!(granted, Some(MicroUsd(1_000)));
        pool.give_back(0, lease.report(&usage(600, 0)), &b, NOW).unwrap();
        // the late settle took its spend to 100, and 400 more are held: no room is left in
        // its lease, and the pool must see that, or it would grant nothing for the month
        let report = lease.report(&usage(100, 400));
        assert_eq!(report.committed, MicroUsd(1_000));
        let grant = pool.lease(0, report, MicroUsd(300), &b, NOW).unwrap();
        assert!(lease.apply(grant));
        assert!(lease.credit(NOW) > granted);
        assert!(lease.admitting(NOW, MicroUsd(100)).credit >= MicroUsd(100 + 400 + 300));
        // giving back keeps what it cannot commit again
        let back = lease.give_back(&usage(100, 400));
        assert_eq!((back.lease, back.committed), (Some(MicroUsd(1_000)), MicroUsd(1_000)));
    }
}
