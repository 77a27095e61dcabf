//! The account's rows always load back into the state the object holds in memory: whatever
//! the operations (admits, settles, releases, provider-billed records, policy offers, edits,
//! revocations, usage reads, expiries, a new month), writing only the rows each one reports
//! as changed loses nothing and invents nothing. And an operation's writes never grow with
//! the number of keys.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::expect_used)]

use hf_gate::core::account::{AccountPolicy, AccountState, AdmitRequest, Cost, KeyPolicy};
use hf_gate::core::call_line::CallLine;
use hf_gate::core::isolate_lease::Want;
use hf_gate::core::keys::RateLimit;
use hf_gate::core::ledger::{Budget, Hold, MicroUsd, OnExhausted};
use hf_gate::core::pricing::TokenUsage;
use hf_gate::core::protocol::AccountOp;
use hf_gate::core::spend::JobRow;
use hf_gate::core::store;
use hf_gate::core::time::UnixMillis;
use proptest::prelude::*;

mod common;
use common::Tables;

const NOV_22: u64 = 1_795_352_400_000;

#[derive(Clone, Debug)]
enum Step {
    Admit {
        key: u8,
        cost: u64,
        tokens: bool,
        /// With a lease asked for.
        lease: bool,
    },
    /// A lease asked for ahead of need.
    Acquire {
        key: u8,
    },
    /// A call admitted on a lease and reported; or, with `merged`, settled at once (its
    /// report merged into the settle).
    Leased {
        nth: usize,
        merged: bool,
    },
    ReturnLease {
        nth: usize,
    },
    Settle {
        nth: usize,
        percent: u64,
        model: Option<u8>,
    },
    /// A queued job submitted by a key (ids repeat, to check an owner is kept).
    OwnJob {
        key: u8,
        id: u8,
    },
    Release {
        nth: usize,
    },
    /// Settles and releases landing together, in one batch.
    Batch(Vec<(usize, u64)>),
    ProviderBilled {
        key: u8,
        cost: u64,
    },
    Offer {
        key: u8,
        version: u64,
        revoked: bool,
    },
    Usage {
        key: u8,
        throttle: bool,
    },
    EditKey {
        key: u8,
        base: u64,
    },
    Revoke {
        key: u8,
    },
    EditAccount {
        base: u64,
        credit: u64,
    },
    Advance(u64),
    Expire,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..6, 0u64..30_000, any::<bool>(), any::<bool>()).prop_map(|(key, cost, tokens, lease)| Step::Admit { key, cost, tokens, lease }),
        1 => (0u8..6).prop_map(|key| Step::Acquire { key }),
        3 => (0usize..8, any::<bool>()).prop_map(|(nth, merged)| Step::Leased { nth, merged }),
        1 => (0usize..8).prop_map(|nth| Step::ReturnLease { nth }),
        4 => (0usize..32, 0u64..240, prop::option::of(0u8..4)).prop_map(|(nth, percent, model)| Step::Settle { nth, percent, model }),
        1 => (0u8..6, 0u8..8).prop_map(|(key, id)| Step::OwnJob { key, id }),
        1 => (0usize..32).prop_map(|nth| Step::Release { nth }),
        2 => prop::collection::vec((0usize..32, 0u64..200), 1..6).prop_map(Step::Batch),
        1 => (0u8..6, 0u64..5_000).prop_map(|(key, cost)| Step::ProviderBilled { key, cost }),
        1 => (0u8..6, 0u64..5, any::<bool>()).prop_map(|(key, version, revoked)| Step::Offer { key, version, revoked }),
        1 => (0u8..6, any::<bool>()).prop_map(|(key, throttle)| Step::Usage { key, throttle }),
        1 => (0u8..6, 0u64..5).prop_map(|(key, base)| Step::EditKey { key, base }),
        1 => (0u8..6).prop_map(|key| Step::Revoke { key }),
        1 => (0u64..4, 1u64..200_000).prop_map(|(base, credit)| Step::EditAccount { base, credit }),
        2 => prop_oneof![0u64..90_000, Just(20 * 86_400_000)].prop_map(Step::Advance),
        1 => Just(Step::Expire),
    ]
}

fn key(k: u8, version: u64, revoked: bool) -> KeyPolicy {
    KeyPolicy {
        key_id: format!("key_{k}"),
        version,
        revoked,
        rate: k.is_multiple_of(2).then_some(RateLimit { rpm: 600, burst: 5 }),
        ceiling: (k == 3).then_some(MicroUsd(40_000)),
    }
}

fn account(version: u64, credit: u64) -> AccountPolicy {
    AccountPolicy {
        version,
        budget: Budget { credit: MicroUsd(credit), on_exhausted: OnExhausted::Block, cap: None },
        rate: RateLimit { rpm: 6_000, burst: 20 },
        provider_billed: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_500, ..ProptestConfig::default() })]

    #[test]
    fn the_rows_written_always_load_back_into_the_state_in_memory(steps in prop::collection::vec(step(), 1..60)) {
        let mut now = UnixMillis(NOV_22);
        let mut st = AccountState::new(now);
        let mut tables = Tables::default();
        // a fresh object stores its account row with its first write
        tables.apply(store::all_rows(&st));
        let mut reservations: Vec<(u64, u64)> = Vec::new();
        // (lease, first hold, calls, next, key) of the leases granted
        let mut leases: Vec<(u64, u64, u32, u32, String)> = Vec::new();
        let mut asking = String::new();
        let want = Want { calls: 6, per_call: MicroUsd(2_000), ttl_ms: 1_000 };
        for s in steps {
            let op = match s {
                Step::Acquire { key: k } => {
                    asking = key(k, 1, false).key_id;
                    Some(AccountOp::Acquire { key: key(k, 1, false), account: account(1, 100_000), want })
                }
                Step::Leased { nth, merged } if !leases.is_empty() => {
                    let i = nth % leases.len();
                    let (lease, first, calls, next, key_id) = leases[i].clone();
                    if next >= calls {
                        None
                    } else {
                        leases[i].3 += 1;
                        let id = first + u64::from(next);
                        let amount = MicroUsd(1_000 + u64::from(next));
                        if merged {
                            let leased = Some(hf_gate::core::protocol::Leased { lease, key_id, amount, report: merged });
                            Some(AccountOp::Settle { reservation: id, actual: MicroUsd(900), line: None, unmetered: false, leased })
                        } else {
                            reservations.push((id, amount.0));
                            Some(AccountOp::Admitted { lease, key_id, calls: vec![(id, amount)], ttl_ms: 30_000 })
                        }
                    }
                }
                Step::ReturnLease { nth } if !leases.is_empty() => Some(AccountOp::ReturnLease { lease: leases[nth % leases.len()].0 }),
                Step::Admit { key: k, cost, tokens, lease } => {
                    asking = key(k, 1, false).key_id;
                    let cost = if tokens {
                        Cost::Tokens {
                            price: hf_gate::core::pricing::Price { input: 1_000_000, output: 2_000_000 },
                            prompt: cost / 10,
                            output: cost / 4,
                            choices: 1,
                            min_output: 16,
                        }
                    } else {
                        Cost::Fixed { amount: MicroUsd(cost) }
                    };
                    let lease = lease.then_some(want);
                    Some(AccountOp::Admit(AdmitRequest { key: key(k, 1, false), account: account(1, 100_000), cost, ttl_ms: 30_000, lease }))
                }
                Step::Settle { nth, percent, model } if !reservations.is_empty() => {
                    let (id, held) = reservations[nth % reservations.len()];
                    let line = model.map(|m| CallLine {
                        model: format!("m{m}"),
                        provider: if m % 2 == 0 { "groq".into() } else { "together".into() },
                        tokens: TokenUsage { prompt: u64::from(m) * 10, completion: 3 },
                        log: None,
                    });
                    // above 200 %: the usage could not be learned, charged in full
                    let unmetered = percent > 200;
                    Some(AccountOp::Settle { reservation: id, actual: MicroUsd(held * percent / 100), line, unmetered, leased: None })
                }
                Step::OwnJob { key: k, id } => Some(AccountOp::OwnJob {
                    job_id: format!("job{id}"),
                    row: JobRow { key_id: key(k, 1, false).key_id, poll_base: format!("/fal-ai/x/requests/job{id}"), at: now },
                }),
                Step::Release { nth } if !reservations.is_empty() => {
                    Some(AccountOp::Release { reservation: reservations[nth % reservations.len()].0, line: None, leased: None })
                }
                Step::Batch(items) if !reservations.is_empty() => Some(AccountOp::Batch(
                    items
                        .into_iter()
                        .map(|(nth, percent)| {
                            let (id, held) = reservations[nth % reservations.len()];
                            // above 160 %: a release instead of a settle
                            if percent > 160 {
                                AccountOp::Release { reservation: id, line: None, leased: None }
                            } else {
                                AccountOp::Settle {
                                    reservation: id,
                                    actual: MicroUsd(held * percent / 100),
                                    line: None,
                                    unmetered: percent > 150,
                                    leased: None,
                                }
                            }
                        })
                        .collect(),
                )),
                Step::ProviderBilled { key: k, cost } => {
                    let line = CallLine { model: "byok-model".into(), provider: "together".into(), tokens: TokenUsage::default(), log: None };
                    Some(AccountOp::RecordProviderBilled { key_id: key(k, 1, false).key_id, actual: MicroUsd(cost), line: Some(line) })
                }
                Step::Offer { key: k, version, revoked } => {
                    Some(AccountOp::Policy { key: Some(key(k, version, revoked)), account: Some(account(version, 100_000)) })
                }
                Step::Usage { key: k, throttle } => {
                    Some(AccountOp::Usage { key: Some(key(k, 1, false)), account: Some(account(1, 100_000)), throttle })
                }
                Step::EditKey { key: k, base } => {
                    Some(AccountOp::EditKey { base, key: key(k, base + 1, false), account: None })
                }
                Step::Revoke { key: k } => Some(AccountOp::RevokeKey { key: key(k, 1, false) }),
                Step::EditAccount { base, credit } => Some(AccountOp::EditAccount { base, account: account(base + 1, credit) }),
                Step::Advance(ms) => {
                    now = now.saturating_add_ms(ms);
                    None
                }
                Step::Expire => {
                    tables.apply(store::expire(&mut st, now));
                    None
                }
                _ => None,
            };
            if let Some(op) = op {
                let most = match &op {
                    AccountOp::Batch(ops) => 1 + 4 * ops.len(),
                    // a job submit also forgets the jobs past their time
                    AccountOp::OwnJob { .. } => 1 + st.jobs.len(),
                    _ => 5,
                };
                let (reply, writes) = store::run(&mut st, op, now);
                prop_assert!(writes.len() <= most, "{} writes for one operation: {writes:?}", writes.len());
                use hf_gate::core::account::Admission;
                use hf_gate::core::protocol::AccountReply;
                let grant = match &reply {
                    AccountReply::Admission(Admission::Admitted { lease, .. }) => *lease,
                    AccountReply::Leased { grant, .. } => *grant,
                    _ => None,
                };
                if let Some(g) = grant {
                    leases.push((g.id, g.first_hold, g.calls, 0, asking.clone()));
                }
                if let AccountReply::Admission(Admission::Admitted { reservation: Some(id), .. }) = reply {
                    if let Some(Hold::Open { amount, .. }) = st.ledger.hold(id) {
                        reservations.push((id, amount.0));
                    }
                }
                tables.apply(writes);
            }
            prop_assert_eq!(&tables.load(), &st);
        }
    }
}
