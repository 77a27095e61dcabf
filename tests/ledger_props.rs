//! Black-box properties of the credit ledger and the account state machine: whatever the
//! interleaving of reserve, settle (once, twice, late), release and expire, a hard-capped
//! account never commits past its ceiling but by recorded overrun, nothing leaks, no settle
//! counts twice, and `used` is exactly the sum of the actual costs settled.
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
    /// Settle a call at this percentage of what it reserved (over 100: upstream overshoot).
    Settle(usize, u64),
    /// Settle again something already settled: must charge nothing.
    SettleAgain(usize, u64),
    Release(usize),
    Advance(u64),
    Expire,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u64..40_000).prop_map(Step::Reserve),
        3 => (0usize..16, 0u64..150).prop_map(|(i, c)| Step::Settle(i, c)),
        1 => (0usize..16, 0u64..150).prop_map(|(i, c)| Step::SettleAgain(i, c)),
        1 => (0usize..16).prop_map(Step::Release),
        1 => (0u64..120_000).prop_map(Step::Advance),
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn a_capped_ledger_never_overspends_and_counts_every_charge(b in budget(), steps in prop::collection::vec(step(), 1..80)) {
        let ceiling = b.ceiling().unwrap();
        let mut now = UnixMillis(NOV_22);
        let mut l = Ledger::new(now);
        // (id, amount, expires_at) of what the test holds; ids settled or released already
        let mut live: Vec<(u64, u64, UnixMillis)> = Vec::new();
        let mut done: Vec<u64> = Vec::new();
        let (mut charged, mut overrun) = (0u64, 0u64);
        let mut period = BillingPeriod::containing(now);
        for s in steps {
            match s {
                Step::Reserve(a) => {
                    let before = l.used.saturating_add(l.reserved());
                    if let Ok(id) = l.reserve(now, MicroUsd(a), &b, 30_000) {
                        prop_assert!(before.0 + a <= ceiling.0, "admitted past the ceiling");
                        live.push((id, a, now.saturating_add_ms(30_000)));
                    }
                }
                Step::Settle(i, pct) if !live.is_empty() => {
                    let (id, amount, expires_at) = live.remove(i % live.len());
                    let actual = amount * pct / 100;
                    let s = l.settle(now, id, MicroUsd(actual));
                    // expired or not, the whole cost is charged; beyond the hold it is overrun
                    let held = if s.late { 0 } else { amount };
                    prop_assert_eq!(s.charged.0, actual);
                    prop_assert_eq!(s.overrun.0, actual.saturating_sub(held));
                    // only an expired hold is late
                    prop_assert!(!s.late || expires_at <= now);
                    charged += actual;
                    overrun += s.overrun.0;
                    done.push(id);
                }
                Step::SettleAgain(i, c) if !done.is_empty() => {
                    let s = l.settle(now, done[i % done.len()], MicroUsd(c));
                    prop_assert!(s.unknown);
                    prop_assert_eq!(s.charged, MicroUsd::ZERO);
                }
                Step::Release(i) if !live.is_empty() => {
                    let (id, ..) = live.remove(i % live.len());
                    l.release(id);
                    done.push(id);
                }
                Step::Advance(ms) => now = now.saturating_add_ms(ms),
                Step::Expire => { l.expire(now); }
                _ => {}
            }
            if BillingPeriod::containing(now) != period {
                period = BillingPeriod::containing(now);
                l.roll(now);
                charged = 0;
                overrun = 0;
            }
            prop_assert!(l.used.saturating_add(l.reserved()).0 <= ceiling.0 + overrun, "committed past the ceiling");
            prop_assert_eq!(l.used.0, charged, "a micro-dollar lost or counted twice");
            prop_assert_eq!(l.usage(now, &b).overrun.0, overrun);
            let u = l.usage(now, &b);
            prop_assert!(u.remaining.0 <= b.credit.0);
        }
        // everything held is given back by expiry: nothing leaks
        l.expire(now.saturating_add_ms(30_001));
        prop_assert_eq!(l.reserved(), MicroUsd::ZERO);
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
