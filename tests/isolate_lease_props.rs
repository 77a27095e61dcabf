//! Black-box properties of leases to isolates (`core::isolate_lease`): one account's object,
//! driven through `store::run` as its Durable Object drives it (its rows written, and loaded
//! back when it is evicted), and a few isolates that admit calls on their leases, each with a
//! queue of messages to the object (reports, settles, releases, returns) that the test
//! delivers late: in order per isolate, interleaved across isolates, some twice, and all of a
//! dead isolate's never. Cold calls and lease asks reach the object late and their answers
//! reach the isolate later still. Among it all, revocations and budget cuts, each answered
//! only once no lease is out (`AccountState::leases_end`), as the object answers them.
//! Whatever the interleaving:
//!
//! 1. nothing is spent or promised past the ceiling but by recorded overrun and carried debt,
//!    by the ledger's count and by the true one (every call admitted anywhere, heard of or
//!    not, and what the leases have not given to calls): a lease's calls never add up past it;
//! 2. the calls admitted, on leases or by the object, stay within the account's rate and the
//!    key's, exactly;
//! 3. once a revocation or a cut is answered, no call is admitted on a lease from before it;
//! 4. a message delivered twice counts once;
//! 5. the ledger's spend is the model's to the micro-dollar at every step (short of what was
//!    admitted only by the calls whose reports died with their isolate), and once every lease
//!    is back and every call settled, nothing is leased or held.
//!
//! The model is the isolates' side: what each admitted, on which lease, and what it sent.
//! The object is taken to hear a live isolate within a lease's quarantine (that is what the
//! quarantine is for: an isolate slower than that is one the object takes for dead), so an
//! isolate whose queue would be older than that sends it before time moves past it.
#![cfg(not(target_arch = "wasm32"))]
// the model's helpers panic on what cannot happen: a panic is a failing case, shrunk like any
#![allow(clippy::unwrap_used)]

use hf_gate::core::account::{AccountPolicy, AccountState, Admission, AdmitRequest, Cost, Denial, KeyPolicy};
use hf_gate::core::edits::AccountEdit;
use hf_gate::core::isolate_lease::{Grant, Held, Want, LAPSED_RECORD_MS, QUARANTINE_MS, SKEW_MS};
use hf_gate::core::keys::RateLimit;
use hf_gate::core::ledger::{Budget, MicroUsd, OnExhausted};
use hf_gate::core::protocol::{AccountOp, AccountReply, Leased};
use hf_gate::core::store;
use hf_gate::core::time::{BillingPeriod, UnixMillis};
use proptest::prelude::*;

mod common;
use common::Tables;
use std::collections::{BTreeMap, VecDeque};

const NOV_22: u64 = 1_795_352_400_000; // 2026-11-22T13:00:00Z
const KEYS: usize = 2;

/// What the object knows of a call, as the model follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    /// Admitted on a lease; its report has not reached the object.
    Unheard,
    Open {
        expires_at: UnixMillis,
    },
    /// Charged in full when its hold lapsed, in the period starting at `period`.
    Lapsed {
        period: UnixMillis,
    },
    Done,
    /// Its lease was forgotten before its report came: the object never learns of it.
    Lost,
}

#[derive(Debug)]
struct Call {
    iso: usize,
    life: u32,
    /// The key it is a call of.
    key: usize,
    held: u64,
    lease: Option<u64>,
    known: Known,
}

/// A lease the object granted, as the model follows it.
#[derive(Debug)]
struct Lent {
    iso: usize,
    life: u32,
    /// The object operation that granted it.
    seq: u64,
    /// The credit it was granted (`None`: no ceiling).
    credit: Option<u64>,
    /// What of it the object still holds for it: `None` once returned or forgotten.
    left: Option<u64>,
    /// When it ends for the object.
    ends_at: UnixMillis,
    returned: bool,
    /// Its credit is back and its unheard calls are lost (past its quarantine).
    forgotten: bool,
    /// The object no longer keeps its record: at its quarantine's end when it was returned,
    /// `LAPSED_RECORD_MS` after its end when it lapsed.
    dropped: bool,
}

#[derive(Default)]
struct Isolate {
    /// Its incarnation: a restarted isolate knows nothing of the one before.
    life: u32,
    /// The current lease per key.
    leases: [Option<Held>; KEYS],
    /// Messages to the object, in order.
    outbox: VecDeque<AccountOp>,
    /// Calls running here, admitted and not yet settled or released.
    running: Vec<u64>,
}

#[derive(Clone, Copy, Debug)]
enum Ask {
    Cold { cost: u64, want: Option<Want> },
    Acquire { want: Want },
}

/// A request on its way to the object.
#[derive(Clone, Copy, Debug)]
struct Pending {
    iso: usize,
    life: u32,
    key: usize,
    ask: Ask,
    asked_at: UnixMillis,
}

/// The object's answer on its way back.
#[derive(Clone, Copy, Debug)]
struct Answer {
    iso: usize,
    life: u32,
    key: usize,
    call: Option<u64>,
    grant: Option<Grant>,
    asked_at: UnixMillis,
}

/// A revocation (of `key`) or a cut (`None`: every key), applied at object operation `seq`.
#[derive(Clone, Copy, Debug)]
struct Recall {
    key: Option<usize>,
    seq: u64,
    /// The next lease id when the edit was made: it waits for the leases before it only.
    before: u64,
}

#[derive(Clone, Copy, Debug)]
enum How {
    /// At this percentage of what it held (above 100: upstream overshot).
    Settle(u64),
    Unmetered,
    Release,
}

#[derive(Clone, Debug)]
enum Step {
    /// A call on an isolate: admitted on its lease when the lease has room, else sent to the
    /// object with, maybe, a lease asked for (`want`: calls, per call); with `at_once`, served
    /// and answered in the same moment.
    Call {
        iso: usize,
        key: usize,
        cost: u64,
        want: Option<(u32, u64)>,
        at_once: bool,
    },
    /// Calls of `cost` on one isolate, all at once: on its lease while it has room, then each
    /// sent to the object and answered at once, asking for a lease of `calls`.
    Rush {
        iso: usize,
        key: usize,
        n: u32,
        cost: u64,
        calls: u32,
    },
    /// A lease asked for ahead of need.
    Acquire {
        iso: usize,
        key: usize,
        calls: u32,
        per_call: u64,
        at_once: bool,
    },
    /// The object serves one request on its way.
    Serve(usize),
    /// An isolate hears one answer.
    Hear(usize),
    /// A running call ends; with `merge`, its settle stands for its report if that is still
    /// queued (as the edge's queue does).
    Finish {
        iso: usize,
        nth: usize,
        how: How,
        merge: bool,
    },
    /// The object receives an isolate's next messages, in one batch when more than one.
    Deliver {
        iso: usize,
        n: usize,
    },
    /// A message the object had already received comes again.
    Replay(usize),
    /// An isolate's timer at its lease's end: the lease goes back.
    Tick(usize),
    /// An isolate dies with its queue and leases, and a fresh one takes its place.
    Die(usize),
    /// The object's alarm.
    Expire,
    /// The object is evicted and loads its rows again.
    Reload,
    Revoke(usize),
    /// The account's budget is cut to this percentage.
    Cut(u64),
    /// Time passes until every recall can be answered.
    Wait,
    Advance(u64),
    /// Time jumps to this many milliseconds before the month ends.
    MonthEnd(u64),
}

fn step() -> impl Strategy<Value = Step> {
    let cost = prop_oneof![1 => Just(0u64), 9 => 1u64..3_000];
    let want = prop::option::of((prop_oneof![8 => 0u32..=20, 1 => Just(300)], 0u64..3_000));
    let how = prop_oneof![
        4 => (0u64..=100).prop_map(How::Settle),
        1 => Just(How::Settle(100)),
        2 => (101u64..300).prop_map(How::Settle),
        1 => Just(How::Unmetered),
        1 => Just(How::Release),
    ];
    let key = prop_oneof![3 => Just(0usize), 1 => Just(1)];
    prop_oneof![
        16 => (0usize..4, key.clone(), cost, want, any::<bool>())
            .prop_map(|(iso, key, cost, want, at_once)| Step::Call { iso, key, cost, want, at_once }),
        2 => (0usize..4, key.clone(), 1u32..40, 0u64..500, 0u32..60)
            .prop_map(|(iso, key, n, cost, calls)| Step::Rush { iso, key, n, cost, calls }),
        3 => (0usize..4, key, 0u32..=20, 0u64..3_000, any::<bool>())
            .prop_map(|(iso, key, calls, per_call, at_once)| Step::Acquire { iso, key, calls, per_call, at_once }),
        4 => (0usize..8).prop_map(Step::Serve),
        4 => (0usize..8).prop_map(Step::Hear),
        8 => (0usize..4, 0usize..8, how, prop_oneof![3 => Just(true), 1 => Just(false)])
            .prop_map(|(iso, nth, how, merge)| Step::Finish { iso, nth, how, merge }),
        8 => (0usize..4, 1usize..=4).prop_map(|(iso, n)| Step::Deliver { iso, n }),
        2 => (0usize..64).prop_map(Step::Replay),
        1 => (0usize..4).prop_map(Step::Tick),
        1 => (0usize..4).prop_map(Step::Die),
        1 => Just(Step::Expire),
        1 => Just(Step::Reload),
        1 => (0..KEYS).prop_map(Step::Revoke),
        1 => (0u64..100).prop_map(Step::Cut),
        1 => Just(Step::Wait),
        6 => prop_oneof![6 => 0u64..400, 3 => 400u64..3_000, 1 => 10_000u64..=16_000].prop_map(Step::Advance),
        1 => (0u64..2_000).prop_map(Step::MonthEnd),
    ]
}

fn budget() -> impl Strategy<Value = Budget> {
    prop_oneof![
        3 => prop_oneof![1_000u64..20_000, 20_000u64..200_000]
            .prop_map(|c| Budget { credit: MicroUsd(c), on_exhausted: OnExhausted::Block, cap: None }),
        2 => (1_000u64..100_000, 1_000u64..200_000).prop_map(|(c, cap)| Budget {
            credit: MicroUsd(c),
            on_exhausted: OnExhausted::Payg,
            cap: Some(MicroUsd(cap))
        }),
        1 => (1_000u64..100_000).prop_map(|c| Budget { credit: MicroUsd(c), on_exhausted: OnExhausted::Payg, cap: None }),
    ]
}

fn rate() -> impl Strategy<Value = RateLimit> {
    // a lease's window must fit in the burst (`gcra::take_for_window`): mostly bursts of a
    // few seconds' worth, some of anything
    prop_oneof![
        3 => (60u32..3_000, 1u32..8).prop_map(|(rpm, secs)| RateLimit { rpm, burst: (rpm * secs / 60).max(1) }),
        1 => (30u32..3_000, 1u32..60).prop_map(|(rpm, burst)| RateLimit { rpm, burst }),
    ]
}

fn key_id(k: usize) -> String {
    format!("key_{k}")
}

/// The lease a message is about, if any.
fn lease_of(op: &AccountOp) -> Option<u64> {
    match op {
        AccountOp::Admitted { lease, .. } | AccountOp::ReturnLease { lease } => Some(*lease),
        AccountOp::Settle { leased, .. } | AccountOp::Release { leased, .. } => leased.as_ref().map(|l| l.lease),
        _ => None,
    }
}

/// The edge's queue: a settle or release of a call admitted on a lease stands for the call's
/// report while that is still queued, unless the lease's return is queued after it.
fn merge_report(outbox: &mut VecDeque<AccountOp>, lease: u64, id: u64) -> bool {
    let last = outbox.iter().rposition(|op| match op {
        AccountOp::Admitted { lease: l, calls, .. } => *l == lease && calls.len() == 1 && calls[0].0 == id,
        AccountOp::ReturnLease { lease: l } => *l == lease,
        _ => false,
    });
    match last.filter(|i| matches!(outbox[*i], AccountOp::Admitted { .. })) {
        Some(i) => {
            outbox.remove(i);
            true
        }
        None => false,
    }
}

/// One account's object and the isolates that call it, with everything on its way between.
struct World {
    now: UnixMillis,
    st: AccountState,
    tables: Tables,
    /// Object operations run so far.
    seq: u64,
    /// The policies as the isolates know them: they never hear of a revocation or a cut.
    policy: AccountPolicy,
    keys: Vec<KeyPolicy>,
    hold_ttl: u64,
    lease_ms: u64,
    isos: Vec<Isolate>,
    asks: Vec<Pending>,
    answers: Vec<Answer>,
    calls: BTreeMap<u64, Call>,
    leases: BTreeMap<u64, Lent>,
    /// Every message the object received, for replays.
    delivered: Vec<AccountOp>,
    /// When each call was admitted, anywhere, and for which key.
    admitted: Vec<(UnixMillis, usize)>,
    recalls: Vec<Recall>,
    answered: Vec<Recall>,
    /// Revocations the object has applied.
    revoked: [bool; KEYS],
    // the money, this period, as the model counts it
    period: BillingPeriod,
    used: u64,
    overrun: u64,
    carried: u64,
    /// What may be committed but by overrun and debt: the ceiling, or after a cut what was
    /// already committed above the new one.
    bound: Option<u64>,
}

impl World {
    fn new(policy: AccountPolicy, keys: Vec<KeyPolicy>, isolates: usize, hold_ttl: u64, lease_ms: u64) -> World {
        let now = UnixMillis(NOV_22);
        let mut w = World {
            now,
            st: AccountState::new(now),
            tables: Tables::default(),
            seq: 0,
            policy,
            keys,
            hold_ttl,
            lease_ms,
            isos: (0..isolates).map(|_| Isolate::default()).collect(),
            asks: Vec::new(),
            answers: Vec::new(),
            calls: BTreeMap::new(),
            leases: BTreeMap::new(),
            delivered: Vec::new(),
            admitted: Vec::new(),
            recalls: Vec::new(),
            answered: Vec::new(),
            revoked: [false; KEYS],
            period: BillingPeriod::containing(now),
            used: 0,
            overrun: 0,
            carried: 0,
            bound: policy.budget.ceiling().map(|c| c.0),
        };
        // a fresh object stores its rows with its first write; it knows the account's policy
        w.tables.apply(store::all_rows(&w.st));
        w.object(AccountOp::Policy { key: None, account: Some(policy) });
        w
    }

    /// Runs one operation as the object does: holds due lapse first when it reads or moves
    /// credit.
    fn object(&mut self, op: AccountOp) -> AccountReply {
        if self.st.next_wake().is_some_and(|t| t <= self.now) && store::expires_first(&op) {
            self.expire();
        }
        self.seq += 1;
        let (reply, writes) = store::run(&mut self.st, op, self.now);
        self.tables.apply(writes);
        reply
    }

    /// The object's alarm, and the model's account of it: leases past their quarantine are
    /// forgotten (calls still unheard of are lost), holds past their time are charged in full.
    fn expire(&mut self) {
        let now = self.now;
        let writes = store::expire(&mut self.st, now);
        self.tables.apply(writes);
        // a hold of nothing that lapses moves the account row (the period rolls, the day's
        // charge is counted), which `store::expire` does not write
        // (`the_lapse_of_a_hold_of_nothing_writes_the_account_row`, ignored until fixed): the
        // row is written here as the fix would, so that the rest is still held to its rows
        let nothing_lapsed = self
            .calls
            .values()
            .any(|c| c.held == 0 && matches!(c.known, Known::Open { expires_at } if expires_at <= now));
        if nothing_lapsed {
            self.tables.apply(store::all_rows(&self.st).into_iter().take(1).collect());
        }
        for lent in self.leases.values_mut().filter(|l| l.forgotten && !l.dropped) {
            let keep = if lent.returned { QUARANTINE_MS } else { LAPSED_RECORD_MS };
            lent.dropped = lent.ends_at.saturating_add_ms(keep) <= now;
        }
        for (id, lent) in self.leases.iter_mut().filter(|(_, l)| !l.forgotten) {
            if lent.ends_at.saturating_add_ms(QUARANTINE_MS) <= now {
                lent.dropped = lent.returned || lent.ends_at.saturating_add_ms(LAPSED_RECORD_MS) <= now;
                lent.forgotten = true;
                lent.left = None;
                for call in self.calls.values_mut().filter(|c| c.lease == Some(*id) && c.known == Known::Unheard) {
                    assert_ne!(
                        self.isos[call.iso].life, call.life,
                        "a live isolate's call was never heard of before its lease was forgotten"
                    );
                    call.known = Known::Lost;
                }
            }
        }
        let period = BillingPeriod::containing(now).start;
        for call in self.calls.values_mut() {
            if let Known::Open { expires_at } = call.known {
                if expires_at <= now {
                    call.known = Known::Lapsed { period };
                    self.used += call.held;
                }
            }
        }
    }

    /// The model hears one message as the object does.
    fn hear(&mut self, op: &AccountOp) {
        let now = self.now;
        match op {
            AccountOp::Admitted { lease, calls, ttl_ms, .. } => {
                for (id, amount) in calls {
                    self.report(*lease, *id, amount.0, now.saturating_add_ms(*ttl_ms));
                }
            }
            AccountOp::Settle { reservation, actual, unmetered, leased, .. } => {
                if let Some(l) = leased {
                    self.report(l.lease, *reservation, l.amount.0, now);
                }
                self.settle(*reservation, (!unmetered).then_some(actual.0));
            }
            AccountOp::Release { reservation, leased, .. } => {
                if let Some(l) = leased {
                    self.report(l.lease, *reservation, l.amount.0, now);
                }
                self.release(*reservation);
            }
            AccountOp::ReturnLease { lease } => {
                if let Some(l) = self.leases.get_mut(lease).filter(|l| !l.dropped && !l.returned) {
                    l.returned = true;
                    l.left = None;
                }
            }
            other => panic!("no isolate sends {other:?}"),
        }
    }

    /// A call of a lease the object still records becomes a hold, the first time it hears of it.
    fn report(&mut self, lease: u64, id: u64, amount: u64, expires_at: UnixMillis) {
        let Some(lent) = self.leases.get_mut(&lease).filter(|l| !l.forgotten) else { return };
        let call = self.calls.get_mut(&id).unwrap();
        if call.known == Known::Unheard {
            call.known = Known::Open { expires_at };
            lent.left = lent.left.map(|left| left.saturating_sub(amount));
        }
    }

    /// `actual`: `None` for a call whose usage could not be learned (charged what it held).
    fn settle(&mut self, id: u64, actual: Option<u64>) {
        let period = BillingPeriod::containing(self.now).start;
        let call = self.calls.get_mut(&id).unwrap();
        let held = call.held;
        match (call.known, actual) {
            (Known::Open { .. }, Some(a)) => {
                self.used += a;
                self.overrun += a.saturating_sub(held);
            }
            (Known::Open { .. }, None) => self.used += held,
            // the lapse's charge is replaced by the actual cost, or in a closed period stands
            // and only what the call cost beyond it is new
            (Known::Lapsed { period: p }, Some(a)) => {
                if p == period {
                    self.used = self.used - held + a;
                } else {
                    self.used += a.saturating_sub(held);
                }
                self.overrun += a.saturating_sub(held);
            }
            (Known::Lapsed { .. }, None) => {}
            _ => return,
        }
        call.known = Known::Done;
    }

    fn release(&mut self, id: u64) {
        let period = BillingPeriod::containing(self.now).start;
        let call = self.calls.get_mut(&id).unwrap();
        match call.known {
            Known::Open { .. } => {}
            Known::Lapsed { period: p } if p == period => self.used -= call.held,
            Known::Lapsed { .. } => {}
            _ => return,
        }
        call.known = Known::Done;
    }

    fn step(&mut self, s: Step) {
        let n = self.isos.len();
        let now = self.now;
        match s {
            Step::Call { iso, key, cost, want, at_once } => {
                let (i, k) = (iso % n, key % KEYS);
                let local =
                    self.isos[i].leases[k].as_mut().and_then(|h| Some((h.grant.id, h.admit(MicroUsd(cost), now)?)));
                match local {
                    Some((lease, id)) => self.admitted_on_lease(i, k, lease, id, cost),
                    None => {
                        // a call with nothing to hold that asks for a lease loses the lease's row
                        // (`a_free_calls_lease_is_stored`, ignored until fixed): not asked here
                        let want = want.filter(|_| cost > 0).map(|(calls, per_call)| Want {
                            calls,
                            per_call: MicroUsd(per_call),
                            ttl_ms: self.lease_ms,
                        });
                        self.ask(i, k, Ask::Cold { cost, want }, at_once);
                    }
                }
            }
            Step::Rush { iso, key, n, cost, calls } => {
                for _ in 0..n {
                    let want = Some((calls, cost));
                    self.step(Step::Call { iso, key, cost, want, at_once: true });
                }
            }
            Step::Acquire { iso, key, calls, per_call, at_once } => {
                let want = Want { calls, per_call: MicroUsd(per_call), ttl_ms: self.lease_ms };
                self.ask(iso % n, key % KEYS, Ask::Acquire { want }, at_once);
            }
            Step::Serve(nth) if !self.asks.is_empty() => {
                let p = self.asks.remove(nth % self.asks.len());
                let a = self.serve(p);
                self.answers.push(a);
            }
            Step::Hear(nth) if !self.answers.is_empty() => {
                let a = self.answers.remove(nth % self.answers.len());
                self.install(a);
            }
            Step::Finish { iso, nth, how, merge } if !self.isos[iso % n].running.is_empty() => {
                self.finish(iso % n, nth, how, merge);
            }
            Step::Deliver { iso, n: count } => {
                let outbox = &mut self.isos[iso % n].outbox;
                let ops: Vec<AccountOp> = outbox.drain(..count.min(outbox.len())).collect();
                self.deliver(ops);
            }
            Step::Replay(nth) if !self.delivered.is_empty() => {
                let op = self.delivered[nth % self.delivered.len()].clone();
                // a report (or a settle standing for one) is replayed within the quarantine
                // (the edge retries a batch for about 4 s): past it the object has forgotten
                // the lease, and holds a late report as a call that happened, which an isolate
                // that was slow, not dead, needs far more than a replay that cannot come. A
                // settle of a reported call can come any time (a long call), and so can its
                // replay: it must count once however late
                let settle_only = matches!(&op,
                    AccountOp::Settle { leased: Some(l), .. } | AccountOp::Release { leased: Some(l), .. } if !l.report);
                if settle_only || lease_of(&op).is_none_or(|lease| self.st.grants.contains_key(&lease)) {
                    self.replay(op);
                }
            }
            Step::Tick(iso) => {
                let isolate = &mut self.isos[iso % n];
                for slot in &mut isolate.leases {
                    if slot.as_ref().is_some_and(|h| h.ends_at <= now) {
                        let h = slot.take().unwrap();
                        isolate.outbox.push_back(AccountOp::ReturnLease { lease: h.grant.id });
                    }
                }
            }
            Step::Die(iso) => {
                let isolate = &mut self.isos[iso % n];
                *isolate = Isolate { life: isolate.life + 1, ..Isolate::default() };
            }
            Step::Expire => self.expire(),
            Step::Reload => self.st = self.tables.load(),
            Step::Revoke(k) => {
                let reply = self.object(AccountOp::RevokeKey { key: self.keys[k].clone() });
                assert!(matches!(reply, AccountReply::Key(Some(KeyPolicy { revoked: true, .. }))), "{reply:?}");
                self.revoked[k] = true;
                let before = self.st.ledger.next_reservation_id();
                self.recalls.push(Recall { key: Some(k), seq: self.seq, before });
            }
            Step::Cut(percent) => self.cut(percent),
            Step::Wait => {
                let end = self
                    .recalls
                    .iter()
                    .filter_map(|r| self.st.leases_end(r.key.map(key_id).as_deref(), r.before, now))
                    .max();
                if let Some(end) = end {
                    self.advance_to(end);
                }
            }
            Step::Advance(ms) => self.advance_to(now.saturating_add_ms(ms)),
            Step::MonthEnd(before) => {
                let to = UnixMillis(self.period.end.0 - before);
                if to > now {
                    self.advance_to(to);
                }
            }
            _ => {}
        }
        // a recall is answered once no lease is out on the old terms, as the object waits
        let (now, st) = (self.now, &self.st);
        let (done, waiting): (Vec<Recall>, Vec<Recall>) = self
            .recalls
            .iter()
            .copied()
            .partition(|r| st.leases_end(r.key.map(key_id).as_deref(), r.before, now).is_none());
        self.recalls = waiting;
        self.answered.extend(done);
    }

    fn admitted_on_lease(&mut self, i: usize, k: usize, lease: u64, id: u64, cost: u64) {
        let lent = &self.leases[&lease];
        // (3) no call on a lease from before a recall that was answered
        for r in &self.answered {
            assert!(
                !(r.key.is_none_or(|x| x == k) && lent.seq < r.seq),
                "a call of key {k} admitted on lease {lease} (granted at op {}) after a recall at op {} was answered",
                lent.seq,
                r.seq
            );
        }
        // the isolate stops before the object ends the lease
        assert!(self.now < lent.ends_at, "admitted on lease {lease} after its end for the object");
        assert!(!self.calls.contains_key(&id), "hold id {id} given twice");
        let life = self.isos[i].life;
        self.calls.insert(id, Call { iso: i, life, key: k, held: cost, lease: Some(lease), known: Known::Unheard });
        self.admitted.push((self.now, k));
        let isolate = &mut self.isos[i];
        isolate.running.push(id);
        let report =
            AccountOp::Admitted { lease, key_id: key_id(k), calls: vec![(id, MicroUsd(cost))], ttl_ms: self.hold_ttl };
        isolate.outbox.push_back(report);
    }

    fn ask(&mut self, i: usize, k: usize, ask: Ask, at_once: bool) {
        let p = Pending { iso: i, life: self.isos[i].life, key: k, ask, asked_at: self.now };
        if at_once {
            let a = self.serve(p);
            self.install(a);
        } else {
            self.asks.push(p);
        }
    }

    /// The object serves a cold call or a lease ask.
    fn serve(&mut self, p: Pending) -> Answer {
        let key = self.keys[p.key].clone();
        let op = match p.ask {
            Ask::Cold { cost, want } => AccountOp::Admit(AdmitRequest {
                key,
                account: self.policy,
                cost: Cost::Fixed { amount: MicroUsd(cost) },
                ttl_ms: self.hold_ttl,
                lease: want,
            }),
            Ask::Acquire { want } => AccountOp::Acquire { key, account: self.policy, want },
        };
        let reply = self.object(op);
        let now = self.now;
        let (call, grant) = match reply {
            AccountReply::Admission(Admission::Admitted { reservation, held, lease, .. }) => {
                assert!(!self.revoked[p.key], "a revoked key's call was admitted");
                self.admitted.push((now, p.key));
                let Ask::Cold { cost, .. } = p.ask else { unreachable!() };
                if let Some(id) = reservation {
                    assert_eq!(held.0, cost, "a fixed cost is held whole");
                    assert!(!self.calls.contains_key(&id), "hold id {id} given twice");
                    let known = Known::Open { expires_at: now.saturating_add_ms(self.hold_ttl) };
                    self.calls
                        .insert(id, Call { iso: p.iso, life: p.life, key: p.key, held: held.0, lease: None, known });
                }
                (reservation, lease)
            }
            AccountReply::Admission(Admission::Denied { denial, .. }) => {
                assert!(!self.revoked[p.key] || denial == Denial::Revoked);
                (None, None)
            }
            AccountReply::Leased { grant, .. } => (None, grant),
            other => panic!("{other:?}"),
        };
        if let Some(g) = grant {
            assert!(!self.revoked[p.key], "a revoked key was granted a lease");
            assert_eq!(g.ttl_ms, self.lease_ms);
            let ends_at = now.saturating_add_ms(g.ttl_ms + SKEW_MS);
            assert_eq!(self.st.grants[&g.id].ends_at, ends_at);
            let credit = g.credit.map(|c| c.0);
            let lent = Lent {
                iso: p.iso,
                life: p.life,
                seq: self.seq,
                credit,
                left: credit,
                ends_at,
                returned: false,
                forgotten: false,
                dropped: false,
            };
            assert!(self.leases.insert(g.id, lent).is_none(), "lease id {} granted twice", g.id);
        }
        Answer { iso: p.iso, life: p.life, key: p.key, call, grant, asked_at: p.asked_at }
    }

    /// An isolate hears an answer: the call it waited for runs, the lease it asked for
    /// replaces the one it held (returned, after its reports). A dead isolate's answer is
    /// heard by no one.
    fn install(&mut self, a: Answer) {
        let isolate = &mut self.isos[a.iso];
        if isolate.life != a.life {
            return;
        }
        isolate.running.extend(a.call);
        if let Some(g) = a.grant {
            if let Some(old) = isolate.leases[a.key].replace(Held::new(g, a.asked_at)) {
                isolate.outbox.push_back(AccountOp::ReturnLease { lease: old.grant.id });
            }
        }
    }

    fn finish(&mut self, i: usize, nth: usize, how: How, merge: bool) {
        let isolate = &mut self.isos[i];
        let id = isolate.running.remove(nth % isolate.running.len());
        let call = &self.calls[&id];
        let merging = call.lease.filter(|_| merge);
        // the settle stands for the call's report when it took the report's place
        let report = merging.is_some_and(|lease| merge_report(&mut isolate.outbox, lease, id));
        let leased =
            call.lease.map(|lease| Leased { lease, key_id: key_id(call.key), amount: MicroUsd(call.held), report });
        let op = match how {
            How::Settle(percent) => AccountOp::Settle {
                reservation: id,
                actual: MicroUsd(call.held * percent / 100),
                line: None,
                unmetered: false,
                leased,
            },
            How::Unmetered => {
                AccountOp::Settle { reservation: id, actual: MicroUsd::ZERO, line: None, unmetered: true, leased }
            }
            How::Release => AccountOp::Release { reservation: id, line: None, leased },
        };
        isolate.outbox.push_back(op);
    }

    fn deliver(&mut self, ops: Vec<AccountOp>) {
        let op = match ops.len() {
            0 => return,
            1 => ops[0].clone(),
            _ => AccountOp::Batch(ops.clone()),
        };
        self.object(op);
        for op in ops {
            self.hear(&op);
            self.delivered.push(op);
        }
    }

    /// (4) A message the object already had changes nothing.
    fn replay(&mut self, op: AccountOp) {
        let mut before = self.st.clone();
        before.ledger.roll(self.now);
        let (_, writes) = store::run(&mut self.st, op.clone(), self.now);
        self.tables.apply(writes);
        let mut after = self.st.clone();
        after.ledger.roll(self.now);
        assert!(before == after, "{op:?} delivered again moved the object");
        // and the model agrees: the money checks after the step hold it to the ledger
        self.hear(&op);
    }

    fn cut(&mut self, percent: u64) {
        let stored = self.st.policy.unwrap();
        let budget = Budget {
            credit: MicroUsd(stored.budget.credit.0 * percent / 100),
            cap: stored.budget.cap.map(|c| MicroUsd(c.0 * percent / 100)),
            ..stored.budget
        };
        let account = AccountPolicy { version: stored.version + 1, budget, ..stored };
        let reply = self.object(AccountOp::EditAccount { base: stored.version, account });
        assert!(matches!(reply, AccountReply::AccountEdit(AccountEdit::Accepted { .. })), "{reply:?}");
        if let Some(ceiling) = budget.ceiling() {
            // what was committed before stands; nothing new past the new ceiling
            let beyond = self.exposure(&self.lease_rests()).saturating_sub(self.overrun + self.carried);
            self.bound = Some(ceiling.0.max(beyond));
        }
        let before = self.st.ledger.next_reservation_id();
        self.recalls.push(Recall { key: None, seq: self.seq, before });
    }

    /// Moves time on. A live isolate's messages about a lease reach the object before the
    /// lease's quarantine ends.
    fn advance_to(&mut self, to: UnixMillis) {
        for i in 0..self.isos.len() {
            let late = self.isos[i].outbox.iter().filter_map(lease_of).any(|l| {
                self.leases.get(&l).is_some_and(|l| !l.forgotten && l.ends_at.saturating_add_ms(QUARANTINE_MS) <= to)
            });
            if late {
                let ops: Vec<AccountOp> = self.isos[i].outbox.drain(..).collect();
                self.deliver(ops);
            }
        }
        self.now = to;
        let period = BillingPeriod::containing(to);
        if period != self.period {
            assert_eq!(period.previous(), self.period, "a month at a time");
            // the new period opens with the debt of the one before, past the ceiling it ran under
            let debt = self.st.ledger.ceiling.map_or(0, |c| self.used.saturating_sub(c.0));
            (self.period, self.used, self.carried, self.overrun) = (period, debt, debt, 0);
        }
    }

    /// What is truly spent or promised: the spend, every call admitted anywhere that the
    /// object has not settled (heard of or not) at what it held, and what each lease the
    /// object still holds credit for has not given to calls.
    fn exposure(&self, rests: &BTreeMap<u64, u64>) -> u64 {
        let calls: u64 = self
            .calls
            .values()
            .filter(|c| matches!(c.known, Known::Unheard | Known::Open { .. }))
            .map(|c| c.held)
            .sum();
        let rest: u64 = self.leases.iter().filter(|(_, l)| l.left.is_some()).map(|(id, _)| rests[id]).sum();
        self.used + calls + rest
    }

    /// What each lease has not given to calls, by what its isolate admitted on it.
    fn lease_rests(&self) -> BTreeMap<u64, u64> {
        let mut given: BTreeMap<u64, u64> = self.leases.keys().map(|id| (*id, 0)).collect();
        for c in self.calls.values() {
            if let Some(l) = c.lease {
                *given.get_mut(&l).unwrap() += c.held;
            }
        }
        given
            .into_iter()
            .map(|(id, given)| {
                let credit = self.leases[&id].credit.unwrap_or(u64::MAX);
                assert!(given <= credit, "lease {id} of {credit} gave {given} to calls");
                (id, credit - given)
            })
            .collect()
    }

    fn check(&self) {
        // the rows load back into the state in memory
        assert!(self.tables.load() == self.st, "the rows do not load back into the object's state");
        // the object's leases and holds are the model's
        let ledger = &self.st.ledger;
        let live: Vec<u64> = self.leases.iter().filter(|(_, l)| !l.dropped).map(|(id, _)| *id).collect();
        assert_eq!(self.st.grants.keys().copied().collect::<Vec<_>>(), live, "leases the object records");
        for (id, l) in self.leases.iter().filter(|(_, l)| !l.dropped) {
            assert_eq!(ledger.lease_credit(*id).map(|c| c.0), l.left, "lease {id}'s credit");
            assert_eq!(self.st.grants[id].returned, l.returned);
        }
        let open: u64 = self.calls.values().filter(|c| matches!(c.known, Known::Open { .. })).map(|c| c.held).sum();
        assert_eq!(ledger.reserved().0, open, "held");
        // (5) the spend is the model's, to the micro-dollar
        let spent = ledger.spent(self.now);
        assert_eq!(spent.used.0, self.used, "spent");
        assert_eq!(spent.overrun.0, self.overrun, "overrun");
        assert_eq!(spent.carried.0, self.carried, "carried");
        // each isolate's lease gives calls only what it has
        let rests = self.lease_rests();
        for isolate in &self.isos {
            for (k, h) in isolate.leases.iter().enumerate().filter_map(|(k, h)| Some((k, h.as_ref()?))) {
                let rest = rests[&h.grant.id];
                if let Some(left) = h.credit_left {
                    assert_eq!(left.0, rest, "lease {} as its isolate holds it", h.grant.id);
                }
                // (3) a lease from before an answered recall has ended for its isolate
                let lent = &self.leases[&h.grant.id];
                for r in self.answered.iter().filter(|r| lent.seq < r.seq && r.key.is_none_or(|x| x == k)) {
                    assert!(h.ends_at <= self.now, "lease {} outlives the recall at op {}", h.grant.id, r.seq);
                }
            }
        }
        // (1) within the ceiling but by overrun and debt, by the ledger's count and the true one
        if let Some(bound) = self.bound {
            let beyond = self.overrun + self.carried;
            let committed = spent.used.0 + ledger.reserved().0 + ledger.leased().0;
            assert!(committed <= bound + beyond, "the ledger commits {committed} past {bound} + {beyond}");
            let exposure = self.exposure(&rests);
            assert!(exposure <= bound + beyond, "{exposure} truly committed past {bound} + {beyond}");
        }
    }

    /// Everything ends: every request is served and answered, every live isolate settles what
    /// runs, returns its leases and sends all it has; then time runs past every hold and
    /// every quarantine.
    fn wind_down(&mut self) {
        for p in std::mem::take(&mut self.asks) {
            let a = self.serve(p);
            self.answers.push(a);
        }
        for a in std::mem::take(&mut self.answers) {
            self.install(a);
        }
        for i in 0..self.isos.len() {
            while !self.isos[i].running.is_empty() {
                self.finish(i, 0, How::Settle(100), true);
            }
            let isolate = &mut self.isos[i];
            for h in isolate.leases.iter_mut().filter_map(Option::take) {
                isolate.outbox.push_back(AccountOp::ReturnLease { lease: h.grant.id });
            }
            let ops: Vec<AccountOp> = isolate.outbox.drain(..).collect();
            self.deliver(ops);
        }
        self.check();
        // (5) what is still leased is a dead isolate's
        for (id, l) in self.leases.iter().filter(|(_, l)| l.left.is_some()) {
            assert_ne!(self.isos[l.iso].life, l.life, "lease {id} of a live isolate still holds credit");
        }
        // the object's alarm, each time it is due, until nothing is
        while let Some(wake) = self.st.next_wake() {
            if wake > self.now {
                self.advance_to(wake);
            }
            self.expire();
            self.check();
        }
        assert_eq!(self.st.ledger.leased(), MicroUsd::ZERO, "leased after every lease ended");
        assert_eq!(self.st.ledger.reserved(), MicroUsd::ZERO, "held after every call ended");
        assert!(self.st.grants.is_empty());
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
        calls[i..].iter().enumerate().all(|(before, last)| (before as u64) < gcra_bound(rate, *first, *last))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn leases_to_isolates_never_pass_the_ceiling_or_the_rate_and_add_up_exactly(
        b in budget(),
        account_rate in rate(),
        key_rate in prop::option::of(rate()),
        isolates in 1usize..=4,
        hold_ttl in prop_oneof![Just(2_000u64), Just(30_000)],
        lease_ms in prop_oneof![Just(200u64), Just(1_000), Just(3_000)],
        recalls in any::<bool>(),
        steps in prop::collection::vec(step(), 1..150),
    ) {
        let policy = AccountPolicy { version: 1, budget: b, rate: account_rate, provider_billed: false };
        // key 0 may have a throttle of its own inside the account's
        let keys = (0..KEYS)
            .map(|k| {
                let rate = key_rate.filter(|_| k == 0);
                KeyPolicy { key_id: key_id(k), version: 1, revoked: false, rate, ceiling: None }
            })
            .collect();
        let mut w = World::new(policy, keys, isolates, hold_ttl, lease_ms);
        // half the runs without revocations and cuts, which end the leasing they recall
        for s in steps.into_iter().filter(|s| recalls || !matches!(s, Step::Revoke(_) | Step::Cut(_))) {
            w.step(s);
            w.check();
        }
        w.wind_down();
        // (2) every call admitted, on a lease or by the object, within the account's rate and
        // the key's
        let times: Vec<UnixMillis> = w.admitted.iter().map(|(t, _)| *t).collect();
        prop_assert!(within_rate(account_rate, &times), "past the account's rate: {:?}", w.admitted);
        if let Some(r) = key_rate {
            let times: Vec<UnixMillis> = w.admitted.iter().filter(|(_, k)| *k == 0).map(|(t, _)| *t).collect();
            prop_assert!(within_rate(r, &times), "past the key's rate: {:?}", w.admitted);
        }
    }
}

// The tests below pin what the property test found, each as small as it goes: each fails
// today and is ignored until the code is fixed. The property test steers around the first two
// (`Step::Call`, `World::expire`), so that it still holds everything else to its properties.

/// An account's object with its first rows stored, under a plain free-plan policy and key.
fn account_of(credit: u64) -> (AccountState, Tables, AccountPolicy, KeyPolicy) {
    let now = UnixMillis(NOV_22);
    let budget = Budget { credit: MicroUsd(credit), on_exhausted: OnExhausted::Block, cap: None };
    let policy = AccountPolicy { version: 1, budget, rate: RateLimit { rpm: 600, burst: 50 }, provider_billed: false };
    let key = KeyPolicy { key_id: key_id(0), version: 1, revoked: false, rate: None, ceiling: None };
    let st = AccountState::new(now);
    let mut tables = Tables::default();
    tables.apply(store::all_rows(&st));
    (st, tables, policy, key)
}

/// A call with nothing to hold (it costs nothing, or its account is provider-billed) that asks
/// for a lease: `store`'s `Touch::of` takes the lease's id to be the one after the call's
/// hold, but with no hold the lease takes the call's id, so the lease's row is never written.
/// Once the object is evicted and loads its rows, the lease is gone: its credit is free again
/// while the isolate still spends it, its reports are dropped, and a revocation or a cut
/// answers at once while it is still out.
#[test]
fn a_free_calls_lease_is_stored() {
    let (mut st, mut tables, policy, key) = account_of(100_000);
    let now = UnixMillis(NOV_22);
    let want = Want { calls: 4, per_call: MicroUsd(1_000), ttl_ms: 1_000 };
    let free = AdmitRequest { key, account: policy, cost: Cost::FREE, ttl_ms: 30_000, lease: Some(want) };
    let (reply, writes) = store::run(&mut st, AccountOp::Admit(free), now);
    tables.apply(writes);
    let Some(grant) = (match reply {
        AccountReply::Admission(Admission::Admitted { lease, .. }) => lease,
        other => panic!("{other:?}"),
    }) else {
        panic!("no lease granted")
    };
    assert_eq!(st.ledger.leased(), MicroUsd(4_000));
    let reloaded = tables.load();
    assert!(reloaded.grants.contains_key(&grant.id), "lease {} is not in the rows", grant.id);
    assert_eq!(reloaded.ledger.leased(), MicroUsd(4_000), "the lease's credit is free again after a reload");
    assert!(reloaded.leases_end(None, u64::MAX, now).is_some(), "a cut would answer while the lease is out");
}

/// A hold of nothing that lapses (a free call admitted on a lease and reported) moves the
/// ledger's head: the lapse counts a charge of 0 for the day, and rolls the period when the
/// month has turned. `store::expire` writes the account row only when a lapse charged
/// something, so the rows lag the state in memory until the account row is next written
/// (money is not at stake: a reload rolls the period again to the same figures).
#[test]
fn the_lapse_of_a_hold_of_nothing_writes_the_account_row() {
    let (mut st, mut tables, policy, key) = account_of(100_000);
    let now = UnixMillis(NOV_22);
    let want = Want { calls: 4, per_call: MicroUsd(1_000), ttl_ms: 1_000 };
    let (reply, writes) = store::run(&mut st, AccountOp::Acquire { key, account: policy, want }, now);
    tables.apply(writes);
    let AccountReply::Leased { grant: Some(grant), .. } = reply else { panic!("{reply:?}") };
    let id = Held::new(grant, now).admit(MicroUsd::ZERO, now).unwrap();
    let report =
        AccountOp::Admitted { lease: grant.id, key_id: key_id(0), calls: vec![(id, MicroUsd::ZERO)], ttl_ms: 2_000 };
    let (_, writes) = store::run(&mut st, report, now);
    tables.apply(writes);
    tables.apply(store::expire(&mut st, now.saturating_add_ms(2_000)));
    assert!(tables.load() == st, "the rows do not load back into the state in memory");
}

/// `Ledger::admit_leased` says a report that comes after its lease's credit was given back
/// ("an isolate slower than the quarantine") is held all the same: the call happened, and
/// upstream bills it. But `AccountState::expire` forgets the lease's record in the same step
/// that gives its credit back, and `admit_leased` drops every report, and `leased_call` every
/// settle's report, of a lease it has no record of. The call is never held, its settle is
/// `unknown`, and its cost is charged nowhere: a live but slow isolate's calls are lost like
/// a dead one's unreported calls, reported and settled though they are.
#[test]
fn a_report_after_the_quarantine_is_still_held_and_charged() {
    let (mut st, _, policy, key) = account_of(100_000);
    let now = UnixMillis(NOV_22);
    let want = Want { calls: 4, per_call: MicroUsd(1_000), ttl_ms: 1_000 };
    let AccountReply::Leased { grant: Some(grant), .. } =
        store::run(&mut st, AccountOp::Acquire { key, account: policy, want }, now).0
    else {
        panic!("no lease granted")
    };
    let id = Held::new(grant, now).admit(MicroUsd(1_000), now).unwrap();
    // the isolate's queue is slow: its lease's quarantine passes, and the object's alarm runs
    let late = now.saturating_add_ms(1_000 + SKEW_MS + QUARANTINE_MS);
    store::expire(&mut st, late);
    assert_eq!(st.ledger.leased(), MicroUsd::ZERO, "the lease's credit is back");
    let report =
        AccountOp::Admitted { lease: grant.id, key_id: key_id(0), calls: vec![(id, MicroUsd(1_000))], ttl_ms: 30_000 };
    store::run(&mut st, report, late);
    assert_eq!(st.ledger.held(id), Some(MicroUsd(1_000)), "the late report is held");
    let leased = Some(Leased { lease: grant.id, key_id: key_id(0), amount: MicroUsd(1_000), report: false });
    let settle = AccountOp::Settle { reservation: id, actual: MicroUsd(800), line: None, unmetered: false, leased };
    store::run(&mut st, settle, late);
    assert_eq!(st.ledger.spent(late).used, MicroUsd(800), "the call is charged");
}

/// A cut answers once `leases_end(None, ..)` says no lease is out (a key's edit or revocation,
/// once none of the key's is), but `leases_end` counts the leases granted after the edit too,
/// on its own terms. An isolate that calls steadily asks for its next lease before the one it
/// holds runs out (`Held::wants_renewal`), so one is always out and the cut never answers
/// (nor does an edit of a key in steady use; a revocation does, as the key gets no new lease).
#[test]
fn an_edit_waits_only_for_the_leases_from_before_it() {
    let (mut st, _, policy, key) = account_of(1_000_000);
    let want = Want { calls: 4, per_call: MicroUsd(100), ttl_ms: 1_000 };
    let acquire = |st: &mut AccountState, at: UnixMillis| {
        let op = AccountOp::Acquire { key: key.clone(), account: policy, want };
        match store::run(st, op, at).0 {
            AccountReply::Leased { grant: Some(grant), .. } => grant,
            other => panic!("{other:?}"),
        }
    };
    let mut now = UnixMillis(NOV_22);
    let before = acquire(&mut st, now);
    let edited_at = st.ledger.next_reservation_id();
    let budget = Budget { credit: MicroUsd(500_000), ..policy.budget };
    let cut = AccountOp::EditAccount { base: 1, account: AccountPolicy { version: 2, budget, ..policy } };
    store::run(&mut st, cut, now);
    // the isolate renews each lease with a fifth of its time left, on the cut's terms
    for _ in 0..10 {
        now = now.saturating_add_ms(800);
        acquire(&mut st, now);
    }
    assert!(st.grants[&before.id].ends_at < now, "the lease from before the cut ended long ago");
    assert_eq!(st.leases_end(None, edited_at, now), None, "the cut waits on no lease granted after it");
}

/// A key inside a pool has a ceiling of its own, and its leases' credit counts against it:
/// leases asked for one after another (five isolates, or one renewing) each take a quarter of
/// what is left of it, not of the whole ceiling again, and a call the object admits after
/// them finds only what they left.
#[test]
fn a_keys_leases_count_against_its_own_ceiling() {
    let (mut st, _, policy, key) = account_of(1_000_000);
    let key = KeyPolicy { ceiling: Some(MicroUsd(1_000)), ..key };
    let now = UnixMillis(NOV_22);
    let want = Want { calls: 64, per_call: MicroUsd(10), ttl_ms: 1_000 };
    for _ in 0..5 {
        store::run(&mut st, AccountOp::Acquire { key: key.clone(), account: policy, want }, now);
    }
    let big =
        AdmitRequest { key, account: policy, cost: Cost::Fixed { amount: MicroUsd(900) }, ttl_ms: 30_000, lease: None };
    let (reply, _) = store::run(&mut st, AccountOp::Admit(big), now);
    assert!(
        matches!(reply, AccountReply::Admission(Admission::Denied { denial: Denial::InsufficientQuota, .. })),
        "{reply:?}"
    );
    let committed = st.ledger.leased().saturating_add(st.ledger.reserved());
    assert!(committed <= MicroUsd(1_000), "{committed:?} committed for a key whose ceiling is 1000");
}

/// A provider-billed account's calls are recorded, never held: it is never leased (a call
/// admitted on a lease would be settled against credits).
#[test]
fn a_provider_billed_account_is_never_leased() {
    let (mut st, _, policy, key) = account_of(100_000);
    let policy = AccountPolicy { provider_billed: true, ..policy };
    let want = Want { calls: 8, per_call: MicroUsd(1_000), ttl_ms: 1_000 };
    let (reply, _) = store::run(&mut st, AccountOp::Acquire { key, account: policy, want }, UnixMillis(NOV_22));
    assert!(matches!(reply, AccountReply::Leased { grant: None, .. }), "{reply:?}");
}

/// A long call's settle can come after its lease was returned and forgotten; if its answer is
/// lost, the edge sends it again. The second copy finds neither the hold nor the lease, and
/// must charge nothing: only a report (or a settle standing for one) makes a hold that late.
#[test]
fn a_settle_sent_twice_after_its_lease_is_forgotten_counts_once() {
    let (mut st, _, policy, key) = account_of(100_000);
    let now = UnixMillis(NOV_22);
    let want = Want { calls: 8, per_call: MicroUsd(1_000), ttl_ms: 1_000 };
    let (reply, _) = store::run(&mut st, AccountOp::Acquire { key, account: policy, want }, now);
    let AccountReply::Leased { grant: Some(grant), .. } = reply else { panic!("{reply:?}") };
    let id = Held::new(grant, now).admit(MicroUsd(1_000), now).unwrap();
    let report =
        AccountOp::Admitted { lease: grant.id, key_id: key_id(0), calls: vec![(id, MicroUsd(1_000))], ttl_ms: 60_000 };
    store::run(&mut st, report, now);
    store::run(&mut st, AccountOp::ReturnLease { lease: grant.id }, now);
    let later = now.saturating_add_ms(20_000);
    store::expire(&mut st, later);
    assert!(!st.grants.contains_key(&grant.id), "the lease is forgotten");
    let leased = Some(Leased { lease: grant.id, key_id: key_id(0), amount: MicroUsd(1_000), report: false });
    let settle = AccountOp::Settle { reservation: id, actual: MicroUsd(800), line: None, unmetered: false, leased };
    store::run(&mut st, settle.clone(), later);
    store::run(&mut st, settle, later.saturating_add_ms(250));
    assert_eq!(st.ledger.spent(later).used, MicroUsd(800), "charged once");
    assert_eq!(st.ledger.reserved(), MicroUsd::ZERO);
}

/// A call's report can be lost for good (every try of its batch failed) while its isolate
/// lives on: the edge then leaves the lease to lapse and sends the call's settle standing for
/// its report (`hold::UNREPORTED`). Coming after the lease is forgotten, that settle must
/// still charge the call, once, even when it is sent twice.
#[test]
fn a_settle_standing_for_a_lost_report_charges_after_its_lease_is_forgotten() {
    let (mut st, _, policy, key) = account_of(100_000);
    let now = UnixMillis(NOV_22);
    let want = Want { calls: 8, per_call: MicroUsd(1_000), ttl_ms: 1_000 };
    let (reply, _) = store::run(&mut st, AccountOp::Acquire { key, account: policy, want }, now);
    let AccountReply::Leased { grant: Some(grant), .. } = reply else { panic!("{reply:?}") };
    let id = Held::new(grant, now).admit(MicroUsd(1_000), now).unwrap();
    // the report never comes, nor the lease's return: it lapses, and its credit is given back
    let later = now.saturating_add_ms(1_000 + SKEW_MS + QUARANTINE_MS + 1_000);
    store::expire(&mut st, later);
    assert_eq!(st.ledger.lease_credit(grant.id), None, "the lease's credit is back");
    let leased = Some(Leased { lease: grant.id, key_id: key_id(0), amount: MicroUsd(1_000), report: true });
    let settle = AccountOp::Settle { reservation: id, actual: MicroUsd(700), line: None, unmetered: false, leased };
    store::run(&mut st, settle.clone(), later);
    store::run(&mut st, settle, later.saturating_add_ms(250));
    assert_eq!(st.ledger.spent(later).used, MicroUsd(700), "charged, once");
    assert_eq!(st.ledger.reserved(), MicroUsd::ZERO, "nothing left held");
}

/// An isolate asks for its next lease in the batch that carries the reports queued before it
/// (`edge::outbox::ask`), and returns the lease it replaces in a later batch. The object must
/// grant and store that lease as it would one asked for in a round trip of its own after
/// those reports: the same grant, the same state, and rows that load back into it.
#[test]
fn a_lease_asked_for_among_reports_is_granted_as_if_asked_alone() {
    let now = UnixMillis(NOV_22);
    let want = Want { calls: 4, per_call: MicroUsd(1_000), ttl_ms: 1_000 };
    let mut worlds = Vec::new();
    for batched in [false, true] {
        let (mut st, mut tables, policy, key) = account_of(20_000);
        let acquire = AccountOp::Acquire { key: key.clone(), account: policy, want };
        let (reply, writes) = store::run(&mut st, acquire.clone(), now);
        tables.apply(writes);
        let AccountReply::Leased { grant: Some(first), .. } = reply else { panic!("{reply:?}") };
        let mut held = Held::new(first, now);
        let calls: Vec<(u64, MicroUsd)> =
            (0..3).map(|_| (held.admit(MicroUsd(1_000), now).unwrap(), MicroUsd(1_000))).collect();
        let report = AccountOp::Admitted { lease: first.id, key_id: key_id(0), calls, ttl_ms: 2_000 };
        let later = now.saturating_add_ms(750);
        let ops = if batched { vec![AccountOp::Batch(vec![report, acquire])] } else { vec![report, acquire] };
        let mut granted = None;
        for op in ops {
            let (reply, writes) = store::run(&mut st, op, later);
            tables.apply(writes);
            let replies = match reply {
                AccountReply::Batch(replies) => replies,
                reply => vec![reply],
            };
            for reply in replies {
                if let AccountReply::Leased { grant, .. } = reply {
                    granted = grant;
                }
            }
        }
        let next = granted.expect("the renewal was granted");
        assert_ne!(next.id, first.id);
        let (_, writes) = store::run(&mut st, AccountOp::ReturnLease { lease: first.id }, later.saturating_add_ms(250));
        tables.apply(writes);
        assert!(tables.load() == st, "the rows do not load back into the state in memory");
        worlds.push((next, st));
    }
    let (alone, batched) = (&worlds[0], &worlds[1]);
    assert_eq!((alone.0.id, alone.0.credit, alone.0.calls), (batched.0.id, batched.0.credit, batched.0.calls));
    assert!(alone.1 == batched.1, "a batched renewal left the account in another state");
}
