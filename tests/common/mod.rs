//! What the property tests share: a model of an account object's SQL tables, to check that
//! the rows an operation writes load back into the state in memory.
#![allow(clippy::expect_used, clippy::panic)]

use hf_gate::core::account::AccountState;
use hf_gate::core::ledger::Hold;
use hf_gate::core::store::{self, RowWrite};
use std::collections::BTreeMap;

/// A model of the object's tables, as the Durable Object stores them.
#[derive(Default)]
pub struct Tables {
    account: Option<String>,
    keys: BTreeMap<String, String>,
    holds: BTreeMap<u64, (Option<String>, Hold)>,
    lines: BTreeMap<(String, String, String), String>,
    jobs: BTreeMap<String, String>,
    grants: BTreeMap<u64, String>,
}

impl Tables {
    pub fn apply(&mut self, writes: Vec<RowWrite>) {
        for w in writes {
            match w.clone() {
                RowWrite::Account(body) => self.account = Some(body),
                RowWrite::Key { key_id, state } => {
                    self.keys.insert(key_id, state);
                }
                RowWrite::Hold { id, key_id, hold } => {
                    self.holds.insert(id, (key_id, hold));
                }
                RowWrite::DropHold(id) => {
                    self.holds.remove(&id);
                }
                RowWrite::Spend { line, totals } => {
                    self.lines.insert(line, totals);
                }
                RowWrite::Job { id, row } => {
                    self.jobs.insert(id, row);
                }
                RowWrite::DropJob(id) => {
                    self.jobs.remove(&id);
                }
                RowWrite::Grant { id, body } => {
                    self.grants.insert(id, body);
                }
                RowWrite::DropGrant(id) => {
                    self.grants.remove(&id);
                }
                // the request log is never loaded into memory
                RowWrite::Log { .. } | RowWrite::DropLog { .. } => {}
                // written by the object itself, never by `store::run`
                RowWrite::Alerts(_) => panic!("an account operation wrote {w:?}"),
                // a pool's book and a shard's lease: never written by an account's own operations
                RowWrite::Pool(_) | RowWrite::Lease(_) => panic!("an account operation wrote {w:?}"),
            }
        }
    }

    pub fn load(&self) -> AccountState {
        let mut st = store::load(
            self.account.as_deref().expect("an account row"),
            self.keys.iter().map(|(k, v)| (k.clone(), v.clone())),
            self.holds.iter().map(|(id, (k, h))| (*id, k.clone(), *h)),
        )
        .expect("rows decode");
        store::load_extras(
            &mut st,
            self.lines.iter().map(|(k, v)| (k.clone(), v.clone())),
            self.jobs.iter().map(|(k, v)| (k.clone(), v.clone())),
        )
        .expect("spend and job rows decode");
        store::load_grants(&mut st, self.grants.iter().map(|(k, v)| (*k, v.clone()))).expect("lease rows decode");
        st
    }
}
