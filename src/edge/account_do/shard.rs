//! A shard of an org's pool: it admits on a lease of the pool's credit, asks for more when a
//! call does not fit, and gives back what it does not use.

use super::Account;
use crate::core::account::{AccountPolicy, Admission, AdmitRequest, Denial};
use crate::core::lease::Lease;
use crate::core::ledger::MicroUsd;
use crate::core::protocol::{self, AccountOp, AccountReply};
use crate::core::store;
use crate::edge::{objects, platform};
use worker::Result;

/// A shard gives back the lease it is not using this long after it last got one.
const GIVE_BACK_AFTER_MS: u64 = 30_000;

impl Account {
    /// A shard admits against its lease; when the lease is too small for a call, it asks its
    /// pool for more (the org's policy as the call offered it) and tries once more. The first
    /// try takes the call whole or not at all: a shard's last credit is a slice of the org's,
    /// and a call it would cut short (a lower `max_tokens`) while the pool still has credit
    /// is a shorter answer for nothing. Only the second may cut it, as an account does at its
    /// last credit.
    pub(super) async fn on_shard(&self, op: AccountOp, pool: &str, shard: u32, shards: u32) -> Result<AccountReply> {
        let lease = |now| self.lease.borrow().unwrap_or_else(|| Lease::new(now));
        // a shard's own budget is a lease from its pool: it does not lease on to isolates
        let mut req = match op {
            AccountOp::Admit(req) => req,
            AccountOp::Acquire { .. } => return Ok(AccountReply::Leased { grant: None, stale: false }),
            op => return self.apply(op),
        };
        req.lease = None;
        let org = req.account;
        let want = req.cost.full();
        let on_lease = |op, now| store::on_lease(self.mem.borrow().as_ref(), op, &lease(now), now);
        let whole = AdmitRequest { cost: req.cost.whole(), ..req.clone() };
        let first = self.apply(on_lease(AccountOp::Admit(whole), platform::now()))?;
        if !matches!(first, AccountReply::Admission(Admission::Denied { denial: Denial::InsufficientQuota, .. })) {
            return Ok(first);
        }
        // asked for more or not, the lease may now pay for the call, or for a shorter one
        self.ask(pool, shard, shards, want, Some(org), false).await?;
        self.apply(on_lease(AccountOp::Admit(req), platform::now()))
    }

    /// Asks the pool for `want` more (or, with `give_back`, returns what is not committed);
    /// says whether the lease changed. The lease is lowered before the pool hears of it.
    pub(super) async fn ask(
        &self,
        pool: &str,
        shard: u32,
        shards: u32,
        want: MicroUsd,
        org: Option<AccountPolicy>,
        give_back: bool,
    ) -> Result<bool> {
        let now = platform::now();
        let report = {
            let mem = self.mem.borrow();
            let Some(st) = mem.as_ref() else { return Ok(false) };
            let mut held = self.lease.borrow_mut();
            let lease = held.get_or_insert_with(|| Lease::new(now));
            store::shard_report(st, lease, give_back, now)
        };
        // stored before the pool hears it: a give-back has lowered the lease, and every report
        // raises the serial and the most spend reported (`Lease::admitting`), which an object
        // evicted and loaded again must not forget
        self.save_lease()?;
        let op = AccountOp::Lease { shard, shards, report, want, account: org };
        let grant = match objects::call::<protocol::Account>(&self.env, pool, &op).await {
            Ok(AccountReply::Grant(Some(g))) => g,
            // the pool could not be asked: the call is refused for credit, as it would be
            Ok(_) | Err(_) => return Ok(false),
        };
        let changed = self.lease.borrow_mut().get_or_insert_with(|| Lease::new(now)).apply(grant);
        if changed {
            self.save_lease()?;
            self.schedule(Some(platform::now().0.saturating_add(GIVE_BACK_AFTER_MS))).await?;
        }
        Ok(changed)
    }

    /// Gives the pool back what the lease holds beyond what is committed.
    pub(super) async fn give_back(&self, pool: &str, shard: u32, shards: u32) -> Result<()> {
        let now = platform::now();
        let spare = {
            let mem = self.mem.borrow();
            let Some(st) = mem.as_ref() else { return Ok(()) };
            let Some(lease) = *self.lease.borrow() else { return Ok(()) };
            lease.has_spare(&st.ledger.usage(now, &lease.budget(now)), now)
        };
        if spare {
            // the pool holds the org's policy: a give-back offers none (the shard's own copy
            // has its lease for a budget)
            self.ask(pool, shard, shards, MicroUsd::ZERO, None, true).await?;
        }
        Ok(())
    }

    pub(super) fn save_lease(&self) -> Result<()> {
        let row = self.lease.borrow().as_ref().map(store::lease_row);
        self.write(&row.into_iter().collect::<Vec<_>>())
    }
}
