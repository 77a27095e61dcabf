//! Black-box properties of the credit ledger and the account state machine: whatever the
//! interleaving of reserve, settle (once, twice, late, unmetered), release, lapse and month
//! boundaries, a hard-capped account never commits past its ceiling but by recorded overrun
//! and carried debt, nothing leaks, no settle counts twice, `used` is exactly what a model of
//! the calls says, and each period opens with the debt of the one before.
#![cfg(not(target_arch = "wasm32"))]

use hf_gate::core::account::{AccountPolicy, AccountState, Admission, AdmitRequest, Cost, KeyPolicy};
use hf_gate::core::keys::RateLimit;
use hf_gate::core::ledger::{Budget, Ledger, MicroUsd, OnExhausted};
use hf_gate::core::time::{BillingPeriod, UnixMillis};
use proptest::prelude::*;

const NOV_22: u64 = 1_795_352_400_000;

#[derive(Clone, Debug)]
enum Step {
    Reserve(u64),
    /// Settle a call (open or lapsed) at this percentage of what it reserved (over 100:
    /// upstream overshoot).
    Settle(usize, u64),
    /// Settle a call whose usage could not be learned: its reservation in full.
    Unmetered(usize),
    /// Settle again something already settled: must charge nothing.
    SettleAgain(usize, u64),
    Release(usize),
    Advance(u64),
    /// Jump to the first day of a later month (1 or 2 periods on), part way into it.
    NextMonth(u8, u64),
    Expire,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u64..40_000).prop_map(Step::Reserve),
        3 => (0usize..16, 0u64..250).prop_map(|(i, c)| Step::Settle(i, c)),
        1 => (0usize..16).prop_map(Step::Unmetered),
        1 => (0usize..16, 0u64..150).prop_map(|(i, c)| Step::SettleAgain(i, c)),
        1 => (0usize..16).prop_map(Step::Release),
        1 => (0u64..120_000).prop_map(Step::Advance),
        1 => (1u8..3, 0u64..3_600_000).prop_map(|(m, ms)| Step::NextMonth(m, ms)),
        1 => Just(Step::Expire),
    ]
}

fn budget() -> impl Strategy<Value = Budget> {
    prop_oneof![
        (1u64..200_000).prop_map(|c| Budget { credit: MicroUsd(c), on_exhausted: OnExhausted::Block, cap: None }),
        (1u64..100_000, 1u64..300_000).prop_map(|(c, cap)| Budget {
            credit: MicroUsd(c),
            on_exhausted: OnExhausted::Payg,
            cap: Some(MicroUsd(cap))
        }),
    ]
}

/// A hold as the model sees it: its id and amount, and when it expires or lapsed.
#[derive(Clone, Copy, Debug)]
enum Held {
    Open {
        id: u64,
        amount: u64,
        expires_at: UnixMillis,
    },
    /// Charged in full when it lapsed, in the period starting at `period`.
    Lapsed {
        id: u64,
        amount: u64,
        period: UnixMillis,
    },
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// The model: every call is charged exactly once in the end (its actual cost, or its
    /// reservation when its usage is unknown or its hold lapsed and no settle came), a
    /// lapse's charge is replaced by the late settle within its period, and each period
    /// opens with what the one before spent past the ceiling.
    #[test]
    fn a_capped_ledger_never_overspends_counts_every_charge_and_carries_its_debt(
        b in budget(),
        steps in prop::collection::vec(step(), 1..80),
    ) {
        let ceiling = b.ceiling().unwrap();
        let mut now = UnixMillis(NOV_22);
        let mut l = Ledger::new(now);
        let mut holds: Vec<Held> = Vec::new();
        let mut done: Vec<u64> = Vec::new();
        // this period's figures, as the model has them
        let (mut used, mut overrun, mut unmetered, mut carried) = (0u64, 0u64, 0u64, 0u64);
        let mut period = BillingPeriod::containing(now);
        for s in steps {
            match s {
                Step::Reserve(a) => {
                    let before = l.used.saturating_add(l.reserved());
                    if let Ok(id) = l.reserve(now, MicroUsd(a), &b, 30_000) {
                        prop_assert!(before.0 + a <= ceiling.0, "admitted past the ceiling");
                        holds.push(Held::Open { id, amount: a, expires_at: now.saturating_add_ms(30_000) });
                    }
                }
                Step::Settle(i, pct) if !holds.is_empty() => {
                    let h = holds.remove(i % holds.len());
                    let (id, amount, s) = match h {
                        Held::Open { id, amount, .. } => {
                            let actual = amount * pct / 100;
                            let s = l.settle(now, id, MicroUsd(actual));
                            prop_assert!(!s.late);
                            used += actual;
                            overrun += actual.saturating_sub(amount);
                            (id, amount, s)
                        }
                        Held::Lapsed { id, amount, period: p } => {
                            let actual = amount * pct / 100;
                            let s = l.settle(now, id, MicroUsd(actual));
                            prop_assert!(s.late);
                            if p == period.start {
                                // the lapse's charge is taken back, the actual cost charged
                                prop_assert_eq!(s.refund.0, amount);
                                used = used - amount + actual;
                                unmetered -= amount;
                            } else {
                                // a closed period's lapse stands: only the excess is new
                                prop_assert_eq!(s.refund.0, 0);
                                used += actual.saturating_sub(amount);
                            }
                            overrun += actual.saturating_sub(amount);
                            (id, amount, s)
                        }
                    };
                    prop_assert_eq!(s.overrun.0, (amount * pct / 100).saturating_sub(amount));
                    done.push(id);
                }
                Step::Unmetered(i) if !holds.is_empty() => {
                    let h = holds.remove(i % holds.len());
                    match h {
                        Held::Open { id, amount, .. } => {
                            let s = l.settle_unmetered(now, id);
                            prop_assert_eq!(s.charged.0, amount);
                            used += amount;
                            unmetered += amount;
                            done.push(id);
                        }
                        Held::Lapsed { id, .. } => {
                            // charged when it lapsed: nothing more
                            prop_assert_eq!(l.settle_unmetered(now, id).charged.0, 0);
                            done.push(id);
                        }
                    }
                }
                Step::SettleAgain(i, c) if !done.is_empty() => {
                    let s = l.settle(now, done[i % done.len()], MicroUsd(c));
                    prop_assert!(s.unknown);
                    prop_assert_eq!(s.charged, MicroUsd::ZERO);
                }
                Step::Release(i) if !holds.is_empty() => {
                    match holds.remove(i % holds.len()) {
                        Held::Open { id, .. } => {
                            prop_assert_eq!(l.release(now, id), Some(MicroUsd::ZERO));
                            done.push(id);
                        }
                        Held::Lapsed { id, amount, period: p } => {
                            let back = l.release(now, id);
                            if p == period.start {
                                prop_assert_eq!(back, Some(MicroUsd(amount)));
                                used -= amount;
                                unmetered -= amount;
                            } else {
                                prop_assert_eq!(back, Some(MicroUsd::ZERO));
                            }
                            done.push(id);
                        }
                    }
                }
                Step::Advance(ms) => now = now.saturating_add_ms(ms),
                Step::NextMonth(months, ms) => {
                    for _ in 0..months {
                        now = BillingPeriod::containing(now).end;
                    }
                    now = now.saturating_add_ms(ms);
                }
                Step::Expire => {
                    let lapsed = l.expire(now);
                    for h in holds.iter_mut() {
                        if let Held::Open { id, amount, expires_at } = *h {
                            if expires_at <= now {
                                prop_assert!(lapsed.contains(&(id, MicroUsd(amount))));
                                *h = Held::Lapsed { id, amount, period: period.start };
                                used += amount;
                                unmetered += amount;
                            }
                        }
                    }
                }
                _ => {}
            }
            if BillingPeriod::containing(now) != period {
                // the months between: each spends its credit on the debt, nothing else
                let mut owed = used.saturating_sub(ceiling.0);
                let mut next = period.end;
                let target = BillingPeriod::containing(now);
                while next < target.start && owed > 0 {
                    owed = owed.saturating_sub(ceiling.0);
                    next = BillingPeriod::containing(next).end;
                }
                period = target;
                l.roll(now);
                used = owed;
                carried = owed;
                overrun = 0;
                unmetered = 0;
            }
            prop_assert_eq!(l.used.0, used, "a micro-dollar lost or counted twice");
            prop_assert_eq!(l.unmetered.0, unmetered);
            prop_assert_eq!(l.carried.0, carried);
            let u = l.usage(now, &b);
            prop_assert_eq!(u.overrun.0, overrun);
            prop_assert!(
                l.used.saturating_add(l.reserved()).0 <= ceiling.0 + carried + overrun,
                "committed past the ceiling"
            );
            prop_assert!(u.remaining.0 <= b.credit.0);
        }
        // nothing leaks: whatever is still held lapses, charged once
        let before = l.used.0 + l.reserved().0;
        l.expire(now.saturating_add_ms(30_001));
        prop_assert_eq!(l.reserved(), MicroUsd::ZERO);
        if BillingPeriod::containing(now.saturating_add_ms(30_001)) == period {
            prop_assert_eq!(l.used.0, before);
        }
    }

    #[test]
    fn racing_admissions_on_a_free_account_fit_exactly(n in 1usize..60, cost in 1u64..10_000, fund in 1u64..10) {
        // `fund` calls' worth of credit and `n` calls racing for it: exactly min(n, fund) get in
        let budget = Budget { credit: MicroUsd(cost * fund), on_exhausted: OnExhausted::Block, cap: None };
        let policy = AccountPolicy { version: 1, budget, rate: RateLimit { rpm: 100_000, burst: 1_000 }, provider_billed: false };
        let now = UnixMillis(NOV_22);
        let mut st = AccountState::new(now);
        let mut admitted = Vec::new();
        for i in 0..n {
            let req = AdmitRequest {
                key: KeyPolicy { key_id: format!("k{}", i % 3), version: 1, revoked: false, rate: None, ceiling: None },
                account: policy,
                cost: Cost::Fixed { amount: MicroUsd(cost) },
                ttl_ms: 60_000,
                lease: None,
            };
            if let Admission::Admitted { reservation: Some(r), .. } = st.admit(req, now) { admitted.push(r) }
        }
        prop_assert_eq!(admitted.len(), n.min(fund as usize));
        for r in admitted { st.settle(r, MicroUsd(cost), now); }
        let u = st.usage(now).unwrap();
        prop_assert_eq!(u.used.0, cost * n.min(fund as usize) as u64);
        prop_assert!(u.used <= budget.credit);
    }
}

#[test]
fn rollover_from_december_to_january() {
    let dec_31 = UnixMillis(1_798_761_599_000); // 2026-12-31T23:59:59Z
    let b = Budget { credit: MicroUsd(100), on_exhausted: OnExhausted::Block, cap: None };
    let mut l = Ledger::new(dec_31);
    let id = l.reserve(dec_31, MicroUsd(100), &b, 60_000).unwrap();
    l.settle(dec_31, id, MicroUsd(100));
    let err = l.reserve(dec_31, MicroUsd(1), &b, 60_000).unwrap_err();
    assert_eq!(err.retry_at.to_string(), "2027-01-01T00:00:00Z");
    assert!(l.reserve(err.retry_at, MicroUsd(1), &b, 60_000).is_ok());
    assert_eq!(l.usage(err.retry_at, &b).period.end.to_string(), "2027-02-01T00:00:00Z");
}

#[test]
fn leap_february_is_29_days() {
    let feb_1_2028 = BillingPeriod::containing(UnixMillis(1_833_148_800_000)); // 2028-02-03
    assert_eq!(feb_1_2028.start.to_string(), "2028-02-01T00:00:00Z");
    assert_eq!((feb_1_2028.end.0 - feb_1_2028.start.0) / 86_400_000, 29);
    let feb_2027 = BillingPeriod::containing(UnixMillis(1_801_440_000_000)); // 2027-02-01
    assert_eq!((feb_2027.end.0 - feb_2027.start.0) / 86_400_000, 28);
}
