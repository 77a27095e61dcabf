//! The credit ledger of one billing account (a key, or an organisation's pool).
//!
//! Budgets hold under concurrency because cost is reserved *before* a call goes upstream and
//! settled to the actual cost after it: parallel calls see each other's reservations, so a
//! burst cannot sail past the limit. Money is integer micro-USD, arithmetic saturating.

use crate::core::sorted::SortedMap;
use crate::core::time::{BillingPeriod, UnixMillis};

/// An amount of money in millionths of a US dollar (messages and rows write it as the bare
/// number, by `core::wire`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
/// hold lapsed) is the overrun, recorded, never dropped. A hold that lapsed was charged in
/// full when it lapsed; its late settle takes that charge back (`refund`) and charges the
/// actual cost instead, so the spend moves by `charged - refund`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settled {
    pub charged: MicroUsd,
    pub overrun: MicroUsd,
    /// What a lapse had charged for this call and the settle takes back.
    pub refund: MicroUsd,
    /// Charged without a usage count (the reservation in full), as this settle leaves it:
    /// negative moves (a late settle correcting a lapse) are in `refund`.
    pub unmetered: MicroUsd,
    /// The reservation had expired before the settle came.
    pub late: bool,
    /// No such reservation: already settled or released. Nothing was charged.
    pub unknown: bool,
}

/// One account's period: spend, outstanding reservations, spend per day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pub period_start: UnixMillis,
    pub used: MicroUsd,
    /// Spend that providers bill directly (`byok`): recorded, never charged to credits.
    pub provider_billed: MicroUsd,
    pub requests: u64,
    /// Cost charged beyond what the calls had reserved, this period.
    pub overrun: MicroUsd,
    /// Charged in full because the call's usage could not be learned (the stream broke, time
    /// ran out, a timeout after upstream had the request, a hold whose isolate died), this
    /// period; part of `used`.
    pub unmetered: MicroUsd,
    /// The debt this period started with: what the period before spent past its ceiling.
    /// Part of `used`: the calendar forgives nothing.
    pub carried: MicroUsd,
    /// The ceiling the period runs under, as last reserved against: a period's debt is what
    /// it spent past it.
    pub ceiling: Option<MicroUsd>,
    reservations: SortedMap<u64, Reservation>,
    /// Reservations that expired unsettled (id -> amount), so that a settle arriving late is
    /// still charged, once. The oldest are forgotten past `MAX_EXPIRED`.
    expired: SortedMap<u64, MicroUsd>,
    /// When each expired hold was charged in full (its lapse). Holds that expired under
    /// earlier builds were given back instead and have no entry here.
    lapsed_at: SortedMap<u64, UnixMillis>,
    /// Credit leased to isolates (`core::isolate_lease`), by lease: what each may still admit
    /// calls against. Committed like holds until the lease is returned or lapses.
    leased: SortedMap<u64, MicroUsd>,
    next_id: u64,
    /// Charged micro-USD per day index, for the current and the previous period.
    daily: SortedMap<u32, u64>,
}

/// A hold as stored: open until it expires, or expired but remembered for a late settle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    Open {
        amount: MicroUsd,
        expires_at: UnixMillis,
    },
    /// Lapsed: charged in full at `charged_at` (`None`: expired under an earlier build,
    /// which gave it back uncharged).
    Expired {
        amount: MicroUsd,
        charged_at: Option<UnixMillis>,
    },
}

/// Everything of a ledger but its holds: the part stored as the account's own row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerHead {
    pub period_start: UnixMillis,
    pub used: MicroUsd,
    pub provider_billed: MicroUsd,
    pub requests: u64,
    pub overrun: MicroUsd,
    pub unmetered: MicroUsd,
    pub carried: MicroUsd,
    pub ceiling: Option<MicroUsd>,
    pub next_id: u64,
    pub daily: SortedMap<u32, u64>,
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
    pub unmetered: MicroUsd,
    /// The debt the period started with (part of `used`).
    pub carried: MicroUsd,
    /// Credit leased to isolates and not yet given to a call (not part of `reserved`).
    pub leased: MicroUsd,
}

/// A period's figures besides its holds, as `Usage::against` reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spent {
    pub used: MicroUsd,
    pub provider_billed: MicroUsd,
    pub overrun: MicroUsd,
    pub unmetered: MicroUsd,
    pub carried: MicroUsd,
}

impl Spent {
    /// Two accounts' figures added up (an org's shards).
    pub fn plus(self, o: Spent) -> Spent {
        Spent {
            used: self.used.saturating_add(o.used),
            provider_billed: self.provider_billed.saturating_add(o.provider_billed),
            overrun: self.overrun.saturating_add(o.overrun),
            unmetered: self.unmetered.saturating_add(o.unmetered),
            carried: self.carried.saturating_add(o.carried),
        }
    }
}

impl Usage {
    /// Spend and holds read against a budget: what is left of it, and what went past credit.
    pub fn against(budget: &Budget, period: BillingPeriod, spent: Spent, reserved: MicroUsd) -> Usage {
        let spendable = budget.ceiling().map_or(budget.credit, |c| c.min(budget.credit));
        Usage {
            period,
            limit: budget.credit,
            used: spent.used,
            reserved,
            remaining: spendable.saturating_sub(spent.used).saturating_sub(reserved),
            overage: spent.used.saturating_sub(budget.credit),
            cap: budget.cap,
            provider_billed: spent.provider_billed,
            overrun: spent.overrun,
            unmetered: spent.unmetered,
            carried: spent.carried,
            leased: MicroUsd::ZERO,
        }
    }

    /// The same figures with the credit leased to isolates shown. It stays in `remaining`:
    /// it is the account's to spend, set aside in the isolates that call for it.
    pub fn with_leased(self, leased: MicroUsd) -> Usage {
        Usage { leased, ..self }
    }

    /// The figures `against` was given.
    pub fn spent(&self) -> Spent {
        Spent {
            used: self.used,
            provider_billed: self.provider_billed,
            overrun: self.overrun,
            unmetered: self.unmetered,
            carried: self.carried,
        }
    }
}

/// The debt a period starting at `start` opens with, when the period starting at `from`
/// spent `used` under `ceiling`: what it spent past its ceiling, less the credit of each
/// whole period in between (a month without a call still spends its credit on the debt).
pub fn owed_at(used: MicroUsd, ceiling: Option<MicroUsd>, from: UnixMillis, start: UnixMillis) -> MicroUsd {
    if start <= from {
        return used;
    }
    let mut owed = debt(used, ceiling);
    let mut next = BillingPeriod::containing(from).end;
    while next < start && owed > MicroUsd::ZERO {
        owed = debt(owed, ceiling);
        next = BillingPeriod::containing(next).end;
    }
    owed
}

/// What a period that ended with `used` spent under `ceiling` leaves as debt to the next.
///
/// ```
/// use hf_gate::core::ledger::{debt, MicroUsd};
/// assert_eq!(debt(MicroUsd(150), Some(MicroUsd(100))), MicroUsd(50));
/// assert_eq!(debt(MicroUsd(80), Some(MicroUsd(100))), MicroUsd(0));
/// // pay-as-you-go without a cap owes nothing: every call was billed as it came
/// assert_eq!(debt(MicroUsd(150), None), MicroUsd(0));
/// ```
pub fn debt(used: MicroUsd, ceiling: Option<MicroUsd>) -> MicroUsd {
    ceiling.map_or(MicroUsd::ZERO, |c| used.saturating_sub(c))
}

/// Expired reservations remembered for late settles.
const MAX_EXPIRED: usize = 10_000;

impl Ledger {
    pub fn new(now: UnixMillis) -> Self {
        Ledger { period_start: BillingPeriod::containing(now).start, ..Ledger::default() }
    }

    /// Starts a new period if `now` is past the current one. No cron: the first call of a
    /// month does it. Outstanding reservations carry over and settle into the new period, and
    /// so does a debt: spend past the period's ceiling is where the next period's spend starts.
    pub fn roll(&mut self, now: UnixMillis) {
        let current = BillingPeriod::containing(now);
        if current.start > self.period_start {
            let keep_from = current.previous().start.day_index();
            let owed = self.owed_at(current.start);
            self.period_start = current.start;
            self.used = owed;
            self.carried = owed;
            self.provider_billed = MicroUsd::ZERO;
            self.overrun = MicroUsd::ZERO;
            self.unmetered = MicroUsd::ZERO;
            self.requests = 0;
            self.daily.retain(|day, _| *day >= keep_from);
        }
    }

    /// The debt a later period starting at `start` opens with.
    fn owed_at(&self, start: UnixMillis) -> MicroUsd {
        owed_at(self.used, self.ceiling, self.period_start, start)
    }

    /// The ledger stored as rows: its head, and one hold per id.
    pub fn head(&self) -> LedgerHead {
        LedgerHead {
            period_start: self.period_start,
            used: self.used,
            provider_billed: self.provider_billed,
            requests: self.requests,
            overrun: self.overrun,
            unmetered: self.unmetered,
            carried: self.carried,
            ceiling: self.ceiling,
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
            (None, Some(amount)) => {
                Some(Hold::Expired { amount: *amount, charged_at: self.lapsed_at.get(&id).copied() })
            }
            (None, None) => None,
        }
    }

    /// A ledger from its stored rows (leases' credit is set with `set_lease_credit`).
    pub fn from_rows(head: LedgerHead, holds: impl IntoIterator<Item = (u64, Hold)>) -> Self {
        let mut l = Ledger {
            period_start: head.period_start,
            used: head.used,
            provider_billed: head.provider_billed,
            requests: head.requests,
            overrun: head.overrun,
            unmetered: head.unmetered,
            carried: head.carried,
            ceiling: head.ceiling,
            next_id: head.next_id,
            daily: head.daily,
            ..Ledger::default()
        };
        for (id, hold) in holds {
            match hold {
                Hold::Open { amount, expires_at } => {
                    l.reservations.insert(id, Reservation { amount, expires_at });
                }
                Hold::Expired { amount, charged_at } => {
                    l.expired.insert(id, amount);
                    if let Some(at) = charged_at {
                        l.lapsed_at.insert(id, at);
                    }
                }
            }
        }
        l
    }

    /// A lease's credit, as its row stores it.
    pub fn set_lease_credit(&mut self, lease: u64, credit: MicroUsd) {
        self.leased.insert(lease, credit);
    }

    /// Ids of every hold: open, or expired but remembered.
    pub fn hold_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.reservations.keys().chain(self.expired.keys()).copied()
    }

    pub fn reserved(&self) -> MicroUsd {
        self.reservations.values().fold(MicroUsd::ZERO, |acc, r| acc.saturating_add(r.amount))
    }

    /// Credit leased to isolates and not yet given to a call.
    pub fn leased(&self) -> MicroUsd {
        self.leased.values().fold(MicroUsd::ZERO, |acc, a| acc.saturating_add(*a))
    }

    /// What is spent or promised: spend, holds and leases.
    fn committed(&self) -> MicroUsd {
        self.used.saturating_add(self.reserved()).saturating_add(self.leased())
    }

    /// What lease `id` has left to admit calls against, if it holds credit.
    pub fn lease_credit(&self, id: u64) -> Option<MicroUsd> {
        self.leased.get(&id).copied()
    }

    /// Leases `amount` of credit (`None`: the budget has no ceiling, so nothing to set
    /// aside) to an isolate, with `calls` hold ids for the calls it admits: the lease's id
    /// and its first hold id, or a refusal when the credit is not free.
    pub fn lease(
        &mut self,
        now: UnixMillis,
        amount: Option<MicroUsd>,
        calls: u32,
        budget: &Budget,
    ) -> Result<(u64, u64), Exhausted> {
        self.roll(now);
        self.ceiling = budget.ceiling();
        if let (Some(ceiling), Some(amount)) = (budget.ceiling(), amount) {
            let committed = self.committed();
            if committed.saturating_add(amount) > ceiling || committed >= ceiling {
                return Err(Exhausted { retry_at: BillingPeriod::containing(now).end });
            }
        }
        let id = self.next_id.wrapping_add(1);
        self.next_id = id.wrapping_add(u64::from(calls));
        if let Some(amount) = amount {
            self.leased.insert(id, amount);
        }
        Ok((id, id.wrapping_add(1)))
    }

    /// A call an isolate admitted on lease `lease`, as hold `id` of `amount`: the amount moves
    /// from the lease to the call's own hold. A report that comes after its lease's credit
    /// was given back (an isolate slower than the quarantine) is held all the same: the call
    /// happened, and upstream bills it.
    pub fn admit_leased(&mut self, now: UnixMillis, lease: u64, id: u64, amount: MicroUsd, ttl_ms: u64) {
        if let Some(left) = self.leased.get_mut(&lease) {
            *left = left.saturating_sub(amount);
        }
        self.requests = self.requests.saturating_add(1);
        self.reservations.insert(id, Reservation { amount, expires_at: now.saturating_add_ms(ttl_ms) });
    }

    /// Gives back what a lease has not given to calls; says whether it held any.
    pub fn end_lease(&mut self, lease: u64) -> bool {
        self.leased.remove(&lease).is_some()
    }

    /// Leases with credit, for the rows.
    pub fn lease_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.leased.keys().copied()
    }

    /// What reservation `id` holds, if it is still held.
    pub fn held(&self, id: u64) -> Option<MicroUsd> {
        self.reservations.get(&id).map(|r| r.amount)
    }

    /// What may still be committed before the ceiling, or `None` when the budget is unbounded.
    pub fn headroom(&self, budget: &Budget) -> Option<MicroUsd> {
        budget.ceiling().map(|c| c.saturating_sub(self.committed()))
    }

    /// Holds `amount` for a call about to go upstream, or refuses if that could break the
    /// budget's ceiling. The hold expires at `now + ttl_ms` unless settled, released or
    /// renewed (`renew`: a call still running keeps its hold).
    pub fn reserve(
        &mut self,
        now: UnixMillis,
        amount: MicroUsd,
        budget: &Budget,
        ttl_ms: u64,
    ) -> Result<u64, Exhausted> {
        // the period ending is measured against the ceiling it ran under, then this one's is kept
        self.roll(now);
        self.ceiling = budget.ceiling();
        if let Some(ceiling) = budget.ceiling() {
            let committed = self.committed();
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

    /// Keeps an open hold for another `ttl_ms` from now: its call is still running. A hold
    /// that lapsed stays lapsed (charged in full; the call's settle corrects it).
    pub fn renew(&mut self, now: UnixMillis, id: u64, ttl_ms: u64) -> bool {
        match self.reservations.get_mut(&id) {
            Some(r) => {
                r.expires_at = r.expires_at.max(now.saturating_add_ms(ttl_ms));
                true
            }
            None => false,
        }
    }

    fn charge(&mut self, now: UnixMillis, amount: MicroUsd) {
        self.used = self.used.saturating_add(amount);
        let day = self.daily.get_or_insert_with(now.day_index(), || 0);
        *day = day.saturating_add(amount.0);
    }

    /// Takes back a lapse's charge of `amount` made at `at`, if it was made in this period (a
    /// closed period's figures stand): what was taken back.
    fn take_back(&mut self, at: UnixMillis, amount: MicroUsd) -> MicroUsd {
        if BillingPeriod::containing(at).start != self.period_start {
            return MicroUsd::ZERO;
        }
        self.used = self.used.saturating_sub(amount);
        self.unmetered = self.unmetered.saturating_sub(amount);
        if let Some(day) = self.daily.get_mut(&at.day_index()) {
            *day = day.saturating_sub(amount.0);
        }
        amount
    }

    /// Replaces a reservation with the actual cost of the call, charged in full even when it
    /// is more than was held (the balance may then go below zero, and `reserve` refuses until
    /// it is covered). A hold that lapsed was charged in full then; its settle takes that
    /// charge back and charges the actual cost (beyond the hold: overrun). An id that is
    /// neither held nor remembered was settled or released already, and charges nothing: a
    /// settle can never count twice.
    pub fn settle(&mut self, now: UnixMillis, id: u64, actual: MicroUsd) -> Settled {
        self.roll(now);
        if let Some(r) = self.reservations.remove(&id) {
            self.charge(now, actual);
            let overrun = actual.saturating_sub(r.amount);
            self.overrun = self.overrun.saturating_add(overrun);
            return Settled { charged: actual, overrun, ..Settled::default() };
        }
        let Some(amount) = self.expired.remove(&id) else {
            return Settled { unknown: true, ..Settled::default() };
        };
        // (what this settle charges, what the call had held, what a lapse's charge gives back)
        let (charged, held, refund) = match self.lapsed_at.remove(&id) {
            Some(at) => match self.take_back(at, amount) {
                // a lapse charged in a closed period stands: only what the call cost beyond
                // it is new
                MicroUsd::ZERO => (actual.saturating_sub(amount), amount, MicroUsd::ZERO),
                refund => (actual, amount, refund),
            },
            // expired under an earlier build, which gave it back uncharged
            None => (actual, MicroUsd::ZERO, MicroUsd::ZERO),
        };
        self.charge(now, charged);
        let overrun = actual.saturating_sub(held);
        self.overrun = self.overrun.saturating_add(overrun);
        Settled { charged, overrun, refund, late: true, ..Settled::default() }
    }

    /// Charges a reservation in full because its call's usage cannot be learned (the stream
    /// broke, time ran out, a timeout after upstream had the request). Recorded as
    /// `unmetered`, so an operator can reconcile it with the upstream's invoice.
    pub fn settle_unmetered(&mut self, now: UnixMillis, id: u64) -> Settled {
        self.roll(now);
        if let Some(r) = self.reservations.remove(&id) {
            self.charge(now, r.amount);
            self.unmetered = self.unmetered.saturating_add(r.amount);
            return Settled { charged: r.amount, unmetered: r.amount, ..Settled::default() };
        }
        let Some(amount) = self.expired.remove(&id) else {
            return Settled { unknown: true, ..Settled::default() };
        };
        if self.lapsed_at.remove(&id).is_some() {
            // charged in full when it lapsed: that charge is the answer
            return Settled { late: true, ..Settled::default() };
        }
        self.charge(now, amount);
        self.unmetered = self.unmetered.saturating_add(amount);
        self.overrun = self.overrun.saturating_add(amount);
        Settled { charged: amount, overrun: amount, unmetered: amount, late: true, ..Settled::default() }
    }

    /// Gives a reservation back in full (upstream answered non-2xx, or never had the
    /// request). A hold that lapsed meanwhile has its lapse charge taken back (within its
    /// period). Unknown ids are ignored: a second release is harmless. Returns what happened:
    /// `None` for an unknown id, else the charge taken back.
    pub fn release(&mut self, now: UnixMillis, id: u64) -> Option<MicroUsd> {
        self.roll(now);
        if self.reservations.remove(&id).is_some() {
            return Some(MicroUsd::ZERO);
        }
        let amount = self.expired.remove(&id)?;
        Some(match self.lapsed_at.remove(&id) {
            Some(at) => self.take_back(at, amount),
            None => MicroUsd::ZERO,
        })
    }

    /// Records spend that the provider bills directly, for `byok` keys.
    pub fn record_provider_billed(&mut self, now: UnixMillis, actual: MicroUsd) {
        self.roll(now);
        self.provider_billed = self.provider_billed.saturating_add(actual);
    }

    /// Charges in full the holds whose call never came back (its isolate died: a running
    /// call renews its hold), as `unmetered`; they are remembered a while, so that a settle
    /// that still comes corrects the charge to the actual cost. Returns the holds that
    /// changed, with what each was charged: those that lapsed now, and the oldest lapsed ones
    /// forgotten (charged nothing).
    pub fn expire(&mut self, now: UnixMillis) -> Vec<(u64, MicroUsd)> {
        let due: Vec<u64> = self.reservations.iter().filter(|(_, r)| r.expires_at <= now).map(|(id, _)| *id).collect();
        if !due.is_empty() {
            self.roll(now);
        }
        let mut changed = Vec::with_capacity(due.len());
        for id in due {
            if let Some(r) = self.reservations.remove(&id) {
                self.charge(now, r.amount);
                self.unmetered = self.unmetered.saturating_add(r.amount);
                self.expired.insert(id, r.amount);
                self.lapsed_at.insert(id, now);
                changed.push((id, r.amount));
            }
        }
        while self.expired.len() > MAX_EXPIRED {
            if let Some((id, _)) = self.expired.pop_first() {
                self.lapsed_at.remove(&id);
                changed.push((id, MicroUsd::ZERO));
            }
        }
        changed
    }

    /// When the next reservation expires, for the Durable Object's alarm.
    pub fn next_expiry(&self) -> Option<UnixMillis> {
        self.reservations.values().map(|r| r.expires_at).min()
    }

    /// The period's figures as of `now`: a period that has ended but not yet rolled reads as
    /// the next one would start (its debt, nothing else).
    pub fn spent(&self, now: UnixMillis) -> Spent {
        let period = BillingPeriod::containing(now);
        if period.start <= self.period_start {
            return Spent {
                used: self.used,
                provider_billed: self.provider_billed,
                overrun: self.overrun,
                unmetered: self.unmetered,
                carried: self.carried,
            };
        }
        let owed = self.owed_at(period.start);
        Spent { used: owed, carried: owed, ..Spent::default() }
    }

    pub fn usage(&self, now: UnixMillis, budget: &Budget) -> Usage {
        Usage::against(budget, BillingPeriod::containing(now), self.spent(now), self.reserved())
            .with_leased(self.leased())
    }

    /// Charged micro-USD per day, oldest first, for the current and previous period.
    pub fn daily(&self) -> impl Iterator<Item = (u32, MicroUsd)> + '_ {
        self.daily.iter().map(|(d, v)| (*d, MicroUsd(*v)))
    }
}

// Their JSON, as the account object's rows and messages carry it (`core::wire`); `Ledger` is
// read only from the one document earlier builds stored (`edits::decode`).
crate::core::wire::json_newtype!(MicroUsd);
crate::core::wire::json_struct!(Budget { credit, on_exhausted, cap });
crate::core::wire::json_struct!(read Reservation { amount, expires_at });
crate::core::wire::json_struct!(Settled { charged, overrun, refund: default, unmetered: default, late, unknown });
crate::core::wire::json_struct!(LedgerHead {
    period_start,
    used,
    provider_billed,
    requests,
    overrun,
    unmetered: default,
    carried: default,
    ceiling: default,
    next_id,
    daily,
});
crate::core::wire::json_struct!(read Ledger {
    period_start,
    used,
    provider_billed: default,
    requests: default,
    overrun: default,
    unmetered: default,
    carried: default,
    ceiling: default,
    reservations,
    expired: default,
    lapsed_at: default,
    leased: default,
    next_id,
    daily: default,
});

impl crate::core::wire::FromJson for OnExhausted {
    fn read(v: &serde_json::Value, e: &crate::core::wire::Errors) -> Self {
        match v.as_str() {
            Some("block") => OnExhausted::Block,
            Some("payg") => OnExhausted::Payg,
            _ => {
                e.expected("\"block\" or \"payg\"", v);
                OnExhausted::Block
            }
        }
    }
    fn fallback() -> Self {
        OnExhausted::Block
    }
}

impl crate::core::wire::ToJson for OnExhausted {
    fn to_json(&self, out: &mut String) {
        out.push_str(match self {
            OnExhausted::Block => "\"block\"",
            OnExhausted::Payg => "\"payg\"",
        })
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
        l.release(NOV_22, a);
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
    fn a_settle_counts_once_and_a_late_one_corrects_the_lapse() {
        let mut l = Ledger::new(NOV_22);
        let id = l.reserve(NOV_22, MicroUsd(500), &free(), 1_000).unwrap();
        assert_eq!(l.settle(NOV_22, id, MicroUsd(400)).charged, MicroUsd(400));
        assert!(l.settle(NOV_22, id, MicroUsd(400)).unknown);
        assert_eq!(l.used, MicroUsd(400));
        let late = l.reserve(NOV_22, MicroUsd(500), &free(), 1_000).unwrap();
        // its isolate died: the hold lapses, charged in full as unmetered
        assert_eq!(l.expire(NOV_22.saturating_add_ms(1_000)), vec![(late, MicroUsd(500))]);
        assert_eq!((l.reserved(), l.used, l.unmetered), (MicroUsd::ZERO, MicroUsd(900), MicroUsd(500)));
        // the call's settle still comes: the lapse's charge is replaced by the actual cost
        let s = l.settle(NOV_22.saturating_add_ms(5_000), late, MicroUsd(300));
        assert_eq!((s.charged, s.refund, s.overrun, s.late), (MicroUsd(300), MicroUsd(500), MicroUsd::ZERO, true));
        assert_eq!((l.used, l.unmetered), (MicroUsd(700), MicroUsd::ZERO));
        assert!(l.settle(NOV_22.saturating_add_ms(6_000), late, MicroUsd(300)).unknown);
        assert_eq!(l.used, MicroUsd(700));
        // a late settle above the lapsed hold is overrun
        let over = l.reserve(NOV_22, MicroUsd(100), &free(), 1_000).unwrap();
        l.expire(NOV_22.saturating_add_ms(1_000));
        let s = l.settle(NOV_22.saturating_add_ms(2_000), over, MicroUsd(150));
        assert_eq!((s.charged, s.refund, s.overrun), (MicroUsd(150), MicroUsd(100), MicroUsd(50)));
        assert_eq!(l.used, MicroUsd(850));
    }

    #[test]
    fn a_running_call_keeps_its_hold() {
        let mut l = Ledger::new(NOV_22);
        let id = l.reserve(NOV_22, MicroUsd(500), &free(), 1_000).unwrap();
        assert!(l.renew(NOV_22.saturating_add_ms(900), id, 1_000));
        assert!(l.expire(NOV_22.saturating_add_ms(1_500)).is_empty());
        assert_eq!(l.held(id), Some(MicroUsd(500)));
        assert_eq!(l.expire(NOV_22.saturating_add_ms(1_900)).len(), 1);
        assert!(!l.renew(NOV_22.saturating_add_ms(2_000), id, 1_000), "a lapsed hold stays lapsed");
    }

    #[test]
    fn unmetered_calls_are_charged_their_reservation_once() {
        let mut l = Ledger::new(NOV_22);
        let id = l.reserve(NOV_22, MicroUsd(500), &free(), 1_000).unwrap();
        let s = l.settle_unmetered(NOV_22, id);
        assert_eq!((s.charged, s.unmetered), (MicroUsd(500), MicroUsd(500)));
        assert!(l.settle_unmetered(NOV_22, id).unknown);
        assert_eq!((l.used, l.unmetered), (MicroUsd(500), MicroUsd(500)));
        // a hold that lapsed was charged then: the edge's unmetered settle adds nothing
        let lapsed = l.reserve(NOV_22, MicroUsd(200), &free(), 1_000).unwrap();
        l.expire(NOV_22.saturating_add_ms(1_000));
        assert_eq!(l.settle_unmetered(NOV_22.saturating_add_ms(1_000), lapsed).charged, MicroUsd::ZERO);
        assert_eq!((l.used, l.unmetered), (MicroUsd(700), MicroUsd(700)));
    }

    #[test]
    fn a_release_after_a_lapse_takes_its_charge_back() {
        let mut l = Ledger::new(NOV_22);
        let id = l.reserve(NOV_22, MicroUsd(500), &free(), 1_000).unwrap();
        l.expire(NOV_22.saturating_add_ms(1_000));
        assert_eq!(l.used, MicroUsd(500));
        assert_eq!(l.release(NOV_22.saturating_add_ms(2_000), id), Some(MicroUsd(500)));
        assert_eq!((l.used, l.unmetered), (MicroUsd::ZERO, MicroUsd::ZERO));
        assert_eq!(l.release(NOV_22.saturating_add_ms(2_000), id), None);
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
    fn lapsed_reservations_stop_holding_and_are_charged() {
        let mut l = Ledger::new(NOV_22);
        l.reserve(NOV_22, MicroUsd(60_000), &free(), 1_000).unwrap();
        assert!(l.reserve(NOV_22, MicroUsd(50_000), &free(), 1_000).is_err());
        assert_eq!(l.next_expiry(), Some(NOV_22.saturating_add_ms(1_000)));
        assert!(l.expire(NOV_22.saturating_add_ms(999)).is_empty());
        assert_eq!(l.expire(NOV_22.saturating_add_ms(1_000)).len(), 1);
        // charged, not given back: what is left is what the lapse did not take
        assert!(l.reserve(NOV_22, MicroUsd(50_000), &free(), 1_000).is_err());
        assert!(l.reserve(NOV_22, MicroUsd(40_000), &free(), 1_000).is_ok());
    }

    #[test]
    fn a_debt_opens_the_next_period() {
        let mut l = Ledger::new(NOV_22);
        let id = l.reserve(NOV_22, MicroUsd(90_000), &free(), 60_000).unwrap();
        // upstream overshot: 150,000 against 100,000 of credit
        l.settle(NOV_22, id, MicroUsd(150_000));
        let dec_1 = BillingPeriod::containing(NOV_22).end;
        let u = l.usage(dec_1, &free());
        assert_eq!((u.used, u.carried, u.remaining), (MicroUsd(50_000), MicroUsd(50_000), MicroUsd(50_000)));
        assert!(l.reserve(dec_1, MicroUsd(50_001), &free(), 60_000).is_err());
        assert!(l.reserve(dec_1, MicroUsd(50_000), &free(), 60_000).is_ok());
        assert_eq!((l.used, l.carried), (MicroUsd(50_000), MicroUsd(50_000)));
    }

    #[test]
    fn a_month_without_calls_spends_its_credit_on_the_debt() {
        let mut l = Ledger::new(NOV_22);
        let id = l.reserve(NOV_22, MicroUsd(90_000), &free(), 60_000).unwrap();
        l.settle(NOV_22, id, MicroUsd(350_000));
        // 250,000 owed: December's credit pays 100,000 of it, January opens with 150,000
        let jan = BillingPeriod::containing(BillingPeriod::containing(NOV_22).end).end;
        assert_eq!(l.usage(jan, &free()).used, MicroUsd(150_000));
        l.roll(jan);
        assert_eq!(l.used, MicroUsd(150_000));
        // pay-as-you-go without a cap owes nothing across the boundary
        let payg = Budget { credit: MicroUsd(100), on_exhausted: OnExhausted::Payg, cap: None };
        let mut l = Ledger::new(NOV_22);
        let id = l.reserve(NOV_22, MicroUsd(1_000), &payg, 60_000).unwrap();
        l.settle(NOV_22, id, MicroUsd(5_000));
        assert_eq!(l.usage(jan, &payg).used, MicroUsd::ZERO);
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
