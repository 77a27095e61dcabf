//! The credit ledger of one billing account (a key, or an organisation's pool).
//!
//! Budgets hold under concurrency because cost is reserved *before* a call goes upstream and
//! settled to the actual cost after it: parallel calls see each other's reservations, so a
//! burst cannot sail past the limit. Money is integer micro-USD, arithmetic saturating.

use crate::core::time::{BillingPeriod, UnixMillis};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An amount of money in millionths of a US dollar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MicroUsd(pub u64);

impl MicroUsd {
    pub const ZERO: MicroUsd = MicroUsd(0);

    pub fn saturating_add(self, o: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_add(o.0))
    }
    pub fn saturating_sub(self, o: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_sub(o.0))
    }
}

/// What happens when the included credits are spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExhausted {
    /// Refuse until the period resets (HF Free).
    Block,
    /// Keep going, pay-as-you-go, up to the spending cap if there is one (HF PRO, Team).
    Payg,
}

/// The money rules of one account for the current period.
///
/// ```
/// use hf_gate::core::ledger::{Budget, MicroUsd, OnExhausted};
/// // $2 of credits and a $5 cap: pay-as-you-go covers the next $3.
/// let b = Budget { credit: MicroUsd(2_000_000), on_exhausted: OnExhausted::Payg, cap: Some(MicroUsd(5_000_000)) };
/// assert_eq!(b.ceiling(), Some(MicroUsd(5_000_000)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub credit: MicroUsd,
    pub on_exhausted: OnExhausted,
    /// The most that may be spent in one period, included credits counted.
    pub cap: Option<MicroUsd>,
}

impl Budget {
    /// The most the period may cost, or `None` for unbounded pay-as-you-go.
    pub fn ceiling(&self) -> Option<MicroUsd> {
        match (self.on_exhausted, self.cap) {
            (OnExhausted::Block, Some(cap)) => Some(cap.min(self.credit)),
            (OnExhausted::Block, None) => Some(self.credit),
            (OnExhausted::Payg, cap) => cap,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub amount: MicroUsd,
    pub expires_at: UnixMillis,
}

/// The budget is spent for this period; the earliest retry is the start of the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exhausted {
    pub retry_at: UnixMillis,
}

/// What a settle charged. The actual cost is always charged in full, to the key that made
/// the call: what went beyond the hold (upstream overshoot, or a settle that came after its
/// reservation expired) is the overrun, recorded, never dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Settled {
    pub charged: MicroUsd,
    pub overrun: MicroUsd,
    /// The reservation had expired before the settle came.
    pub late: bool,
    /// No such reservation: already settled or released. Nothing was charged.
    pub unknown: bool,
}

/// One account's period: spend, outstanding reservations, spend per day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub period_start: UnixMillis,
    pub used: MicroUsd,
    /// Spend that providers bill directly (`byok`): recorded, never charged to credits.
    #[serde(default)]
    pub provider_billed: MicroUsd,
    #[serde(default)]
    pub requests: u64,
    /// Cost charged beyond what the calls had reserved, this period.
    #[serde(default)]
    pub overrun: MicroUsd,
    reservations: BTreeMap<u64, Reservation>,
    /// Reservations that expired unsettled (id -> amount), so that a settle arriving late is
    /// still charged, once. The oldest are forgotten past `MAX_EXPIRED`.
    #[serde(default)]
    expired: BTreeMap<u64, MicroUsd>,
    next_id: u64,
    /// Charged micro-USD per day index, for the current and the previous period.
    #[serde(default)]
    daily: BTreeMap<u32, u64>,
}

/// A hold as stored: open until it expires, or expired but remembered for a late settle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    Open { amount: MicroUsd, expires_at: UnixMillis },
    Expired { amount: MicroUsd },
}

/// Everything of a ledger but its holds: the part stored as the account's own row.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerHead {
    pub period_start: UnixMillis,
    pub used: MicroUsd,
    pub provider_billed: MicroUsd,
    pub requests: u64,
    pub overrun: MicroUsd,
    pub next_id: u64,
    pub daily: BTreeMap<u32, u64>,
}

/// A view of the ledger for `/v1/usage` and the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub period: BillingPeriod,
    pub limit: MicroUsd,
    pub used: MicroUsd,
    pub reserved: MicroUsd,
    pub remaining: MicroUsd,
    pub overage: MicroUsd,
    pub cap: Option<MicroUsd>,
    pub provider_billed: MicroUsd,
    pub overrun: MicroUsd,
}

impl Usage {
    /// Spend and holds read against a budget: what is left of it, and what went past credit.
    pub fn against(
        budget: &Budget,
        period: BillingPeriod,
        used: MicroUsd,
        reserved: MicroUsd,
        provider_billed: MicroUsd,
        overrun: MicroUsd,
    ) -> Usage {
        let spendable = budget.ceiling().map_or(budget.credit, |c| c.min(budget.credit));
        Usage {
            period,
            limit: budget.credit,
            used,
            reserved,
            remaining: spendable.saturating_sub(used).saturating_sub(reserved),
            overage: used.saturating_sub(budget.credit),
            cap: budget.cap,
            provider_billed,
            overrun,
        }
    }
}

/// Expired reservations remembered for late settles.
const MAX_EXPIRED: usize = 10_000;

impl Ledger {
    pub fn new(now: UnixMillis) -> Self {
        Ledger { period_start: BillingPeriod::containing(now).start, ..Ledger::default() }
    }

    /// Starts a new period if `now` is past the current one. No cron: the first call of a
    /// month does it. Outstanding reservations carry over and settle into the new period.
    pub fn roll(&mut self, now: UnixMillis) {
        let current = BillingPeriod::containing(now);
        if current.start != self.period_start {
            let keep_from = current.previous().start.day_index();
            self.period_start = current.start;
            self.used = MicroUsd::ZERO;
            self.provider_billed = MicroUsd::ZERO;
            self.overrun = MicroUsd::ZERO;
            self.requests = 0;
            self.daily.retain(|day, _| *day >= keep_from);
        }
    }

    /// The ledger stored as rows: its head, and one hold per id.
    pub fn head(&self) -> LedgerHead {
        LedgerHead {
            period_start: self.period_start,
            used: self.used,
            provider_billed: self.provider_billed,
            requests: self.requests,
            overrun: self.overrun,
            next_id: self.next_id,
            daily: self.daily.clone(),
        }
    }

    /// The id the next reservation will have.
    pub fn next_reservation_id(&self) -> u64 {
        self.next_id.wrapping_add(1)
    }

    /// The hold with this id, open or expired, if the ledger has one.
    pub fn hold(&self, id: u64) -> Option<Hold> {
        match (self.reservations.get(&id), self.expired.get(&id)) {
            (Some(r), _) => Some(Hold::Open { amount: r.amount, expires_at: r.expires_at }),
            (None, Some(amount)) => Some(Hold::Expired { amount: *amount }),
            (None, None) => None,
        }
    }

    /// A ledger from its stored rows.
    pub fn from_rows(head: LedgerHead, holds: impl IntoIterator<Item = (u64, Hold)>) -> Self {
        let mut l = Ledger {
            period_start: head.period_start,
            used: head.used,
            provider_billed: head.provider_billed,
            requests: head.requests,
            overrun: head.overrun,
            next_id: head.next_id,
            daily: head.daily,
            ..Ledger::default()
        };
        for (id, hold) in holds {
            match hold {
                Hold::Open { amount, expires_at } => {
                    l.reservations.insert(id, Reservation { amount, expires_at });
                }
                Hold::Expired { amount } => {
                    l.expired.insert(id, amount);
                }
            }
        }
        l
    }

    /// Ids of every hold: open, or expired but remembered.
    pub fn hold_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.reservations.keys().chain(self.expired.keys()).copied()
    }

    pub fn reserved(&self) -> MicroUsd {
        self.reservations.values().fold(MicroUsd::ZERO, |acc, r| acc.saturating_add(r.amount))
    }

    /// What reservation `id` holds, if it is still held.
    pub fn held(&self, id: u64) -> Option<MicroUsd> {
        self.reservations.get(&id).map(|r| r.amount)
    }

    /// What may still be committed before the ceiling, or `None` when the budget is unbounded.
    pub fn headroom(&self, budget: &Budget) -> Option<MicroUsd> {
        budget.ceiling().map(|c| c.saturating_sub(self.used.saturating_add(self.reserved())))
    }

    /// Holds `amount` for a call about to go upstream, or refuses if that could break the
    /// budget's ceiling. The hold expires at `now + ttl_ms` unless settled or released.
    pub fn reserve(
        &mut self,
        now: UnixMillis,
        amount: MicroUsd,
        budget: &Budget,
        ttl_ms: u64,
    ) -> Result<u64, Exhausted> {
        self.roll(now);
        if let Some(ceiling) = budget.ceiling() {
            let committed = self.used.saturating_add(self.reserved());
            if committed.saturating_add(amount) > ceiling || committed >= ceiling {
                return Err(Exhausted { retry_at: BillingPeriod::containing(now).end });
            }
        }
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        self.reservations.insert(id, Reservation { amount, expires_at: now.saturating_add_ms(ttl_ms) });
        self.requests = self.requests.saturating_add(1);
        Ok(id)
    }

    /// Replaces a reservation with the actual cost of the call, charged in full even when it
    /// is more than was held (the balance may then go below zero, and `reserve` refuses until
    /// it is covered). A reservation that already expired is charged all the same: the call
    /// did happen. An id that is neither held nor remembered was settled or released already,
    /// and charges nothing: a settle can never count twice.
    pub fn settle(&mut self, now: UnixMillis, id: u64, actual: MicroUsd) -> Settled {
        self.roll(now);
        let (held, late) = match (self.reservations.remove(&id), self.expired.remove(&id)) {
            (Some(r), _) => (r.amount, false),
            (None, Some(_)) => (MicroUsd::ZERO, true),
            (None, None) => return Settled { unknown: true, ..Settled::default() },
        };
        let overrun = actual.saturating_sub(held);
        self.used = self.used.saturating_add(actual);
        self.overrun = self.overrun.saturating_add(overrun);
        let day = self.daily.entry(now.day_index()).or_insert(0);
        *day = day.saturating_add(actual.0);
        Settled { charged: actual, overrun, late, unknown: false }
    }

    /// Gives a reservation back in full (the call failed upstream). Unknown ids are ignored,
    /// so a release after expiry is harmless.
    pub fn release(&mut self, id: u64) -> bool {
        self.reservations.remove(&id).is_some() | self.expired.remove(&id).is_some()
    }

    /// Records spend that the provider bills directly, for `byok` keys.
    pub fn record_provider_billed(&mut self, now: UnixMillis, actual: MicroUsd) {
        self.roll(now);
        self.provider_billed = self.provider_billed.saturating_add(actual);
    }

    /// Releases reservations whose holder never came back (an isolate died mid-call); they
    /// are remembered a while, so a settle that still comes is charged. Returns the ids of the
    /// holds that changed: those that expired now, and the oldest expired ones forgotten.
    pub fn expire(&mut self, now: UnixMillis) -> Vec<u64> {
        let mut due: Vec<u64> =
            self.reservations.iter().filter(|(_, r)| r.expires_at <= now).map(|(id, _)| *id).collect();
        for id in &due {
            if let Some(r) = self.reservations.remove(id) {
                self.expired.insert(*id, r.amount);
            }
        }
        while self.expired.len() > MAX_EXPIRED {
            if let Some((id, _)) = self.expired.pop_first() {
                due.push(id);
            }
        }
        due
    }

    /// When the next reservation expires, for the Durable Object's alarm.
    pub fn next_expiry(&self) -> Option<UnixMillis> {
        self.reservations.values().map(|r| r.expires_at).min()
    }

    pub fn usage(&self, now: UnixMillis, budget: &Budget) -> Usage {
        let period = BillingPeriod::containing(now);
        let (used, provider_billed) = if period.start == self.period_start {
            (self.used, self.provider_billed)
        } else {
            (MicroUsd::ZERO, MicroUsd::ZERO)
        };
        let overrun = if period.start == self.period_start { self.overrun } else { MicroUsd::ZERO };
        Usage::against(budget, period, used, self.reserved(), provider_billed, overrun)
    }

    /// Charged micro-USD per day, oldest first, for the current and previous period.
    pub fn daily(&self) -> impl Iterator<Item = (u32, MicroUsd)> + '_ {
        self.daily.iter().map(|(d, v)| (*d, MicroUsd(*v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_22: UnixMillis = UnixMillis(1_795_352_400_000); // 2026-11-22T13:00:00Z

    fn free() -> Budget {
        Budget { credit: MicroUsd(100_000), on_exhausted: OnExhausted::Block, cap: None }
    }

    #[test]
    fn reserve_then_settle_charges_the_actual_cost() {
        let mut l = Ledger::new(NOV_22);
        let id = l.reserve(NOV_22, MicroUsd(5_000), &free(), 60_000).unwrap();
        assert_eq!(l.reserved(), MicroUsd(5_000));
        let s = l.settle(NOV_22, id, MicroUsd(1_234));
        assert_eq!(s, Settled { charged: MicroUsd(1_234), ..Settled::default() });
        assert_eq!(l.used, MicroUsd(1_234));
        assert_eq!(l.reserved(), MicroUsd::ZERO);
    }

    #[test]
    fn a_reservation_that_would_cross_the_ceiling_is_refused_until_next_period() {
        let mut l = Ledger::new(NOV_22);
        let a = l.reserve(NOV_22, MicroUsd(60_000), &free(), 60_000).unwrap();
        let err = l.reserve(NOV_22, MicroUsd(50_000), &free(), 60_000).unwrap_err();
        assert_eq!(err.retry_at.to_string(), "2026-12-01T00:00:00Z");
        l.release(a);
        assert!(l.reserve(NOV_22, MicroUsd(50_000), &free(), 60_000).is_ok());
    }

    #[test]
    fn an_overshoot_is_charged_in_full_and_refuses_the_next_call_until_covered() {
        let mut l = Ledger::new(NOV_22);
        let id = l.reserve(NOV_22, MicroUsd(90_000), &free(), 60_000).unwrap();
        let s = l.settle(NOV_22, id, MicroUsd(150_000));
        assert_eq!((s.charged, s.overrun), (MicroUsd(150_000), MicroUsd(60_000)));
        let u = l.usage(NOV_22, &free());
        assert_eq!((u.used, u.overrun, u.remaining), (MicroUsd(150_000), MicroUsd(60_000), MicroUsd::ZERO));
        assert!(l.reserve(NOV_22, MicroUsd(1), &free(), 60_000).is_err());
    }

    #[test]
    fn a_settle_counts_once_and_a_late_one_still_counts() {
        let mut l = Ledger::new(NOV_22);
        let id = l.reserve(NOV_22, MicroUsd(500), &free(), 1_000).unwrap();
        assert_eq!(l.settle(NOV_22, id, MicroUsd(400)).charged, MicroUsd(400));
        assert!(l.settle(NOV_22, id, MicroUsd(400)).unknown);
        assert_eq!(l.used, MicroUsd(400));
        let late = l.reserve(NOV_22, MicroUsd(500), &free(), 1_000).unwrap();
        assert_eq!(l.expire(NOV_22.saturating_add_ms(1_000)).len(), 1);
        assert_eq!(l.reserved(), MicroUsd::ZERO);
        let s = l.settle(NOV_22.saturating_add_ms(5_000), late, MicroUsd(300));
        assert_eq!((s.charged, s.overrun, s.late), (MicroUsd(300), MicroUsd(300), true));
        assert!(l.settle(NOV_22.saturating_add_ms(6_000), late, MicroUsd(300)).unknown);
        assert_eq!(l.used, MicroUsd(700));
    }

    #[test]
    fn payg_continues_past_credits_up_to_the_cap() {
        let pro =
            Budget { credit: MicroUsd(2_000_000), on_exhausted: OnExhausted::Payg, cap: Some(MicroUsd(5_000_000)) };
        let mut l = Ledger::new(NOV_22);
        for _ in 0..5 {
            let id = l.reserve(NOV_22, MicroUsd(1_000_000), &pro, 60_000).unwrap();
            l.settle(NOV_22, id, MicroUsd(1_000_000));
        }
        assert!(l.reserve(NOV_22, MicroUsd(1), &pro, 60_000).is_err());
        let u = l.usage(NOV_22, &pro);
        assert_eq!(u.overage, MicroUsd(3_000_000));
        assert_eq!(u.remaining, MicroUsd::ZERO);
    }

    #[test]
    fn expired_reservations_are_given_back() {
        let mut l = Ledger::new(NOV_22);
        l.reserve(NOV_22, MicroUsd(100_000), &free(), 1_000).unwrap();
        assert!(l.reserve(NOV_22, MicroUsd(1), &free(), 1_000).is_err());
        assert_eq!(l.next_expiry(), Some(NOV_22.saturating_add_ms(1_000)));
        assert!(l.expire(NOV_22.saturating_add_ms(999)).is_empty());
        assert_eq!(l.expire(NOV_22.saturating_add_ms(1_000)).len(), 1);
        assert!(l.reserve(NOV_22, MicroUsd(1), &free(), 1_000).is_ok());
    }

    #[test]
    fn the_first_call_of_a_month_starts_a_new_period() {
        let mut l = Ledger::new(NOV_22);
        let id = l.reserve(NOV_22, MicroUsd(100_000), &free(), 60_000).unwrap();
        l.settle(NOV_22, id, MicroUsd(100_000));
        assert!(l.reserve(NOV_22, MicroUsd(1), &free(), 60_000).is_err());
        let dec_1 = BillingPeriod::containing(NOV_22).end;
        assert!(l.reserve(UnixMillis(dec_1.0 - 1), MicroUsd(1), &free(), 60_000).is_err());
        assert!(l.reserve(dec_1, MicroUsd(1), &free(), 60_000).is_ok());
        assert_eq!(l.used, MicroUsd::ZERO);
        // November's spend is kept in the daily history
        assert_eq!(l.daily().next(), Some((NOV_22.day_index(), MicroUsd(100_000))));
    }
}
