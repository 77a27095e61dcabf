//! Black-box properties of a sharded org: one `Pool` and N shard `AccountState`s, each on its
//! lease, with asks and give-backs whose messages the test delivers late and out of order.
//! Whatever the interleaving of admits, settles (under, at and over what was held), releases,
//! expiries, give-backs and new periods: the shards never commit past the org's ceiling but by
//! recorded overrun, the pool never counts less than a shard holds, the org's totals added up
//! from the shards are exact, and each shard stays within its slice of the org's rate.
#![cfg(not(target_arch = "wasm32"))]

use hf_gate::core::account::{AccountPolicy, AccountState, Admission, AdmitRequest, Cost, Denial, KeyPolicy};
use hf_gate::core::keys::RateLimit;
use hf_gate::core::lease::{org_usage, rate_slice, shard_of, Grant, Lease, Pool, Report};
use hf_gate::core::ledger::{Budget, MicroUsd, OnExhausted, Usage};
use hf_gate::core::time::{BillingPeriod, UnixMillis};
use proptest::prelude::*;

const NOV_22: u64 = 1_795_352_400_000;
const KEYS: usize = 12;
const TTL_MS: u64 = 30_000;

#[derive(Clone, Debug)]
enum Step {
    /// A call of this cost on this key; refused for credit, the shard asks the pool at once and
    /// retries once.
    Admit(usize, u64),
    /// Settle a call at this percentage of what it held (over 100: upstream overshoot).
    Settle(usize, u64),
    Release(usize),
    Expire,
    /// A shard gives back what it does not use, and hears back at once.
    GiveBack(usize),
    /// A shard asks for more, or gives back; the message waits in the pool's inbox.
    Send(usize, u64),
    SendGiveBack(usize),
    /// The pool answers one waiting message; the answer waits in the shard's inbox.
    PoolReceives(usize),
    /// A shard takes one waiting answer.
    ShardReceives(usize),
    Advance(u64),
    NextPeriod,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..KEYS, 1u64..20_000).prop_map(|(k, c)| Step::Admit(k, c)),
        4 => (0usize..32, prop_oneof![4 => 0u64..=100, 1 => 100u64..150]).prop_map(|(i, p)| Step::Settle(i, p)),
        1 => (0usize..32).prop_map(Step::Release),
        1 => Just(Step::Expire),
        1 => (0usize..8).prop_map(Step::GiveBack),
        2 => (0usize..8, 0u64..20_000).prop_map(|(s, w)| Step::Send(s, w)),
        1 => (0usize..8).prop_map(Step::SendGiveBack),
        2 => (0usize..16).prop_map(Step::PoolReceives),
        2 => (0usize..16).prop_map(Step::ShardReceives),
        2 => (0u64..20_000).prop_map(Step::Advance),
        1 => Just(Step::NextPeriod),
    ]
}

fn budget() -> impl Strategy<Value = Budget> {
    prop_oneof![
        3 => (1u64..200_000).prop_map(|c| Budget { credit: MicroUsd(c), on_exhausted: OnExhausted::Block, cap: None }),
        2 => (1u64..100_000, 1u64..300_000).prop_map(|(c, cap)| Budget {
            credit: MicroUsd(c),
            on_exhausted: OnExhausted::Payg,
            cap: Some(MicroUsd(cap))
        }),
        1 => (1u64..100_000).prop_map(|c| Budget { credit: MicroUsd(c), on_exhausted: OnExhausted::Payg, cap: None }),
    ]
}

/// One sharded org as its Durable Objects would hold it, with the messages between them.
struct Org {
    policy: AccountPolicy,
    shards: u32,
    pool: Pool,
    states: Vec<AccountState>,
    leases: Vec<Lease>,
    to_pool: Vec<(usize, Report, MicroUsd)>,
    to_shards: Vec<(usize, Grant)>,
    /// (shard, reservation, amount held) of calls in flight.
    live: Vec<(usize, u64, u64)>,
    /// When each shard admitted a call.
    admitted: Vec<Vec<UnixMillis>>,
    /// This period: the actual costs settled, what of them went beyond the holds, and the
    /// debts it opened with.
    charged: u64,
    overrun: u64,
    carried: u64,
    period: BillingPeriod,
}

impl Org {
    fn new(policy: AccountPolicy, shards: u32, now: UnixMillis) -> Option<Org> {
        let n = shards as usize;
        Some(Org {
            policy,
            shards,
            pool: Pool::new(shards, now)?,
            states: (0..n).map(|_| AccountState::new(now)).collect(),
            leases: vec![Lease::new(now); n],
            to_pool: Vec::new(),
            to_shards: Vec::new(),
            live: Vec::new(),
            admitted: vec![Vec::new(); n],
            charged: 0,
            overrun: 0,
            carried: 0,
            period: BillingPeriod::containing(now),
        })
    }

    fn usage(&self, shard: usize, now: UnixMillis) -> Usage {
        self.states[shard].ledger.usage(now, &self.leases[shard].budget(now))
    }

    fn admit(&mut self, key: &str, shard: usize, cost: u64, now: UnixMillis) -> Admission {
        let req = AdmitRequest {
            key: KeyPolicy { key_id: key.into(), version: 1, revoked: false, rate: None, ceiling: None },
            account: self.leases[shard].policy(
                &self.policy,
                self.shards,
                now,
                self.states[shard].ledger.spent(now).used,
            ),
            cost: Cost::Fixed { amount: MicroUsd(cost) },
            ttl_ms: TTL_MS,
            lease: None,
        };
        self.states[shard].admit(req, now)
    }

    fn ask(&mut self, shard: usize, want: u64, now: UnixMillis) {
        let usage = self.usage(shard, now);
        let report = self.leases[shard].report(&usage);
        if let Some(grant) = self.pool.lease(shard as u32, report, MicroUsd(want), &self.policy.budget, now) {
            self.leases[shard].apply(grant);
        }
    }

    fn step(&mut self, s: Step, now: UnixMillis) {
        let n = self.states.len();
        match s {
            Step::Admit(k, cost) => {
                let key = format!("key_{k}");
                let shard = shard_of(&key, self.shards) as usize;
                let mut decision = self.admit(&key, shard, cost, now);
                if let Admission::Denied { denial: Denial::InsufficientQuota, .. } = decision {
                    self.ask(shard, cost, now);
                    decision = self.admit(&key, shard, cost, now);
                }
                if let Admission::Admitted { reservation: Some(id), .. } = decision {
                    self.live.push((shard, id, cost));
                    self.admitted[shard].push(now);
                }
            }
            Step::Settle(i, pct) if !self.live.is_empty() => {
                let (shard, id, held) = self.live.remove(i % self.live.len());
                let actual = held * pct / 100;
                let settled = self.states[shard].settle(id, MicroUsd(actual), now);
                // a lapsed hold's charge is replaced by the actual cost (within its period)
                assert!(settled.charged.0 == actual || settled.late, "{settled:?}");
                assert!(settled.refund.0 == 0 || settled.refund.0 == held);
                self.charged = self.charged - settled.refund.0 + settled.charged.0;
                self.overrun += settled.overrun.0;
            }
            Step::Release(i) if !self.live.is_empty() => {
                let (shard, id, held) = self.live.remove(i % self.live.len());
                let before = self.states[shard].ledger.spent(now).used.0;
                self.states[shard].release(id, now);
                // a lapse's charge, if any, is taken back
                let back = before - self.states[shard].ledger.spent(now).used.0;
                assert!(back == 0 || back == held);
                self.charged -= back;
            }
            Step::Expire => {
                for st in &mut self.states {
                    // a hold whose call never came back is charged in full
                    self.charged += st.expire(now).iter().map(|l| l.charged.0).sum::<u64>();
                }
            }
            Step::GiveBack(s) => {
                let shard = s % n;
                let usage = self.usage(shard, now);
                let report = self.leases[shard].give_back(&usage);
                if let Some(grant) = self.pool.give_back(shard as u32, report, &self.policy.budget, now) {
                    self.leases[shard].apply(grant);
                }
            }
            Step::Send(s, want) => {
                let shard = s % n;
                let usage = self.usage(shard, now);
                let report = self.leases[shard].report(&usage);
                self.to_pool.push((shard, report, MicroUsd(want)));
            }
            Step::SendGiveBack(s) => {
                let shard = s % n;
                let usage = self.usage(shard, now);
                let report = self.leases[shard].give_back(&usage);
                self.to_pool.push((shard, report, MicroUsd::ZERO));
            }
            Step::PoolReceives(i) if !self.to_pool.is_empty() => {
                let (shard, report, want) = self.to_pool.remove(i % self.to_pool.len());
                self.to_shards
                    .extend(self.pool.lease(shard as u32, report, want, &self.policy.budget, now).map(|g| (shard, g)));
            }
            Step::ShardReceives(i) if !self.to_shards.is_empty() => {
                let (shard, grant) = self.to_shards.remove(i % self.to_shards.len());
                self.leases[shard].apply(grant);
            }
            _ => {}
        }
    }

    /// A new period opens with the debts of the one before: what each shard spent past its
    /// lease, never more than what the period charged beyond its holds.
    fn follow_period(&mut self, now: UnixMillis) {
        if BillingPeriod::containing(now) != self.period {
            self.period = BillingPeriod::containing(now);
            self.carried = self.states.iter().map(|st| st.ledger.spent(now).carried.0).sum();
            assert!(self.carried <= self.overrun, "a debt of {} from {} of overrun", self.carried, self.overrun);
            self.charged = self.carried;
            self.overrun = 0;
        }
    }
}

/// The most calls GCRA lets through from `first` to `last`: the burst, and one more for every
/// emission interval between them.
fn gcra_bound(rate: RateLimit, first: UnixMillis, last: UnixMillis) -> u64 {
    let emission_us = (60_000_000 / u64::from(rate.rpm)).max(1);
    u64::from(rate.burst) + last.millis_since(first) * 1_000 / emission_us
}

/// Every run of consecutive calls within the GCRA bound of its span.
fn within_rate(rate: RateLimit, calls: &[UnixMillis]) -> bool {
    calls.iter().enumerate().all(|(i, first)| {
        // `before` calls from `first` up to `last`, and `last` itself: at most the bound
        calls[i..].iter().enumerate().all(|(before, last)| (before as u64) < gcra_bound(rate, *first, *last))
    })
}

fn sum(values: impl Iterator<Item = MicroUsd>) -> u64 {
    values.map(|v| v.0).sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn a_sharded_org_never_overspends_and_adds_up_exactly(
        b in budget(),
        shards in 1u32..=8,
        rpm in 1u32..2_000,
        burst in 1u32..40,
        steps in prop::collection::vec(step(), 1..120),
    ) {
        let mut now = UnixMillis(NOV_22);
        let rate = RateLimit { rpm, burst };
        let policy = AccountPolicy { version: 1, budget: b, rate, provider_billed: false };
        let mut org = Org::new(policy, shards, now).unwrap();
        let n = shards as usize;
        for s in steps {
            match s {
                Step::Advance(ms) => now = now.saturating_add_ms(ms),
                Step::NextPeriod => now = BillingPeriod::containing(now).end.saturating_add_ms(1_000),
                s => org.step(s, now),
            }
            org.follow_period(now);
            let usages: Vec<Usage> = (0..n).map(|i| org.usage(i, now)).collect();
            let committed = sum(usages.iter().map(|u| u.used.saturating_add(u.reserved)));
            let used = sum(usages.iter().map(|u| u.used));
            let mut pool = org.pool.clone();
            pool.roll(now);
            if let Some(ceiling) = b.ceiling() {
                // (1) and (2): the shards together stay within the org's ceiling, and so does
                // what the pool counts for them, but for what went beyond the holds
                let beyond = org.overrun + org.carried;
                prop_assert!(used <= ceiling.0 + beyond, "spent past the ceiling");
                prop_assert!(committed <= ceiling.0 + beyond, "committed past the ceiling");
                prop_assert!(
                    pool.usage(now).claimed.is_some_and(|c| c.0 <= ceiling.0 + beyond),
                    "leased past the ceiling: {:?}", pool.usage(now)
                );
            }
            // the pool never counts less than a shard may commit
            for (i, lease) in org.leases.iter().enumerate() {
                let view = pool.shard(i as u32).unwrap();
                let held = lease.credit(now);
                let covered = match (held, view.claim()) {
                    (_, None) => true,
                    (None, Some(_)) => false,
                    (Some(h), Some(c)) => h <= c,
                };
                prop_assert!(covered, "shard {} holds {:?}, pool counts {:?}", i, held, view);
            }
            // (3): the org's totals, added up from the shards, are exact
            let total = org_usage(&usages, &b, now);
            prop_assert_eq!(total.used.0, org.charged, "a micro-dollar lost or counted twice");
            prop_assert_eq!(total.overrun.0, org.overrun);
            prop_assert_eq!(total.reserved.0, committed - used);
            let spendable = b.ceiling().map_or(b.credit, |c| c.min(b.credit)).0;
            prop_assert_eq!(total.remaining.0, spendable.saturating_sub(committed));
        }
        // (4): each shard within its slice, and the slices within the org's rate
        let slice = rate_slice(rate, shards);
        for calls in &org.admitted {
            prop_assert!(within_rate(slice, calls), "a shard past its slice {:?}", slice);
        }
        if rpm >= shards && burst >= shards {
            prop_assert!(slice.rpm * shards <= rpm && slice.burst * shards <= burst);
        }
        // once every shard has given back and been heard, the pool's own figures are exact
        org.follow_period(now);
        for shard in 0..n {
            org.step(Step::GiveBack(shard), now);
        }
        let reported = org.pool.usage(now);
        prop_assert_eq!(reported.used.0, org.charged);
    }

    #[test]
    fn calls_denied_for_credit_on_one_shard_find_the_credit_the_others_gave_back(
        shards in 2u32..=8,
        cost in 1u64..10_000,
        fund in 1u64..20,
    ) {
        // `fund` calls' worth of credit, spent from the first shard's keys, then given back:
        // the whole of it can then be spent on another shard, call by call
        let now = UnixMillis(NOV_22);
        let budget = Budget { credit: MicroUsd(cost * fund), on_exhausted: OnExhausted::Block, cap: None };
        let policy = AccountPolicy { version: 1, budget, rate: RateLimit { rpm: 100_000, burst: 1_000 }, provider_billed: false };
        let mut org = Org::new(policy, shards, now).unwrap();
        let home = shard_of("key_0", shards);
        let Some(other) = (1..KEYS).find(|k| shard_of(&format!("key_{k}"), shards) != home) else {
            return Ok(());
        };
        for _ in 0..fund + 2 {
            org.step(Step::Admit(0, cost), now);
        }
        prop_assert_eq!(org.live.len() as u64, fund);
        for _ in 0..fund {
            org.step(Step::Release(0), now);
        }
        org.step(Step::GiveBack(home as usize), now);
        for _ in 0..fund + 2 {
            org.step(Step::Admit(other, cost), now);
        }
        prop_assert_eq!(org.live.len() as u64, fund);
    }
}
