//! A call's hold on credit, as a guard: it is settled to the actual cost or given back exactly
//! once, whatever path the call takes. Settling consumes it; dropping it unsettled (an error,
//! an early return, a cooldown) releases it. Nothing releases a reservation by hand.

use crate::core::ledger::MicroUsd;
use crate::core::protocol::AccountOp as Op;
use crate::edge::account_do;
use std::rc::Rc;
use worker::{Context, Env};

pub struct Hold {
    env: Env,
    ctx: Rc<Context>,
    account: String,
    key_id: String,
    /// The reservation, until it is settled or released.
    reservation: Option<u64>,
    /// Provider-billed (`byok`): usage is recorded, credits are never charged.
    provider_billed: bool,
}

impl Hold {
    pub fn new(
        env: &Env,
        ctx: &Rc<Context>,
        account: &str,
        key_id: &str,
        reservation: Option<u64>,
        provider_billed: bool,
    ) -> Self {
        Hold {
            env: env.clone(),
            ctx: ctx.clone(),
            account: account.to_string(),
            key_id: key_id.to_string(),
            reservation,
            provider_billed,
        }
    }

    fn settle_op(&mut self, actual: MicroUsd) -> Option<Op> {
        match (self.reservation.take(), self.provider_billed) {
            (Some(reservation), _) => Some(Op::Settle { reservation, actual }),
            (None, true) if actual > MicroUsd::ZERO => {
                Some(Op::RecordProviderBilled { key_id: self.key_id.clone(), actual })
            }
            _ => None,
        }
    }

    /// Settles after the response is on its way.
    pub fn settle(mut self, actual: MicroUsd) {
        let op = self.settle_op(actual);
        let (env, account) = (self.env.clone(), self.account.clone());
        self.ctx.wait_until(send(env, account, op));
    }

    /// Settles inside an already-registered `wait_until` (a stream's settle task).
    pub async fn settle_now(mut self, actual: MicroUsd) {
        let op = self.settle_op(actual);
        send(self.env.clone(), self.account.clone(), op).await;
    }
}

/// A failure leaves the reservation to expire: the account is never charged twice (a settle
/// of an unknown reservation charges nothing), at worst a hold lingers for its TTL and a late
/// settle is still charged.
async fn send(env: Env, account: String, op: Option<Op>) {
    let Some(op) = op else { return };
    if account_do::call(&env, &account, &op).await.is_err() {
        worker::console_error!("settle or release failed for account {account}; the reservation will expire");
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            let (env, account) = (self.env.clone(), std::mem::take(&mut self.account));
            self.ctx.wait_until(send(env, account, Some(Op::Release { reservation })));
        }
    }
}
