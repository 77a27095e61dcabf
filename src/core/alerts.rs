//! Credit alerts: a webhook before the money runs out.
//!
//! Thresholds (default 50 %, 80 % and 100 %) of an account's credits and of its spending cap,
//! and of a key's own cap inside an org, fire once per billing period each. The account
//! object is the one place an account's spend changes, so it decides: after an operation that
//! moved money, `check` compares the spend with the thresholds and records the ones crossed in
//! the account's alert book, with a delivery for each, in the same write. However many calls
//! cross a threshold at once, the object sees them one after another and fires it once.
//!
//! Deliveries wait in the book's outbox, in the order they fired, until the webhook answers
//! 2xx; a failure is retried with exponential backoff from the object's alarm, the next in
//! line waiting behind it so the receiver sees them in order. Each body is signed with
//! HMAC-SHA256 under `ALERT_WEBHOOK_SECRET` (`sign`).

use crate::core::ledger::MicroUsd;
use crate::core::sort::sort_small_by;
use crate::core::time::{BillingPeriod, UnixMillis};
use sha2::{Digest, Sha256};

pub const DEFAULT_THRESHOLDS: &[u8] = &[50, 80, 100];
/// Deliveries kept waiting at most; past this the oldest is dropped (and logged by the object).
pub const MAX_OUTBOX: usize = 64;
/// A delivery is given up after this many attempts (about a day of backoff).
pub const MAX_ATTEMPTS: u32 = 20;
const FIRST_RETRY_MS: u64 = 1_000;
const LONGEST_RETRY_MS: u64 = 3_600_000;

/// One alert waiting to be delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub body: String,
    pub attempts: u32,
    pub next_at: UnixMillis,
}

/// An account's alerts this period: what fired, and what is still to be delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertBook {
    pub period: UnixMillis,
    /// `"<scope>:<id>:<of>:<percent>"` of every threshold fired this period.
    pub fired: Vec<String>,
    pub outbox: Vec<Delivery>,
    pub next_id: u64,
}

/// What a threshold is a share of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Of {
    Credits,
    SpendCap,
}

impl Of {
    fn name(self) -> &'static str {
        match self {
            Of::Credits => "credits",
            Of::SpendCap => "spend_cap",
        }
    }
}

/// Something spent against a limit: an account (`scope` "key" or "org") or a key in an org.
pub struct Measure<'a> {
    pub scope: &'a str,
    pub id: &'a str,
    pub org: Option<&'a str>,
    pub of: Of,
    pub used: MicroUsd,
    pub limit: MicroUsd,
}

impl AlertBook {
    /// Records the thresholds `m` has crossed and not fired yet this period, each with its
    /// delivery, in ascending order. Says whether anything fired.
    pub fn check(&mut self, m: &Measure<'_>, thresholds: &[u8], now: UnixMillis) -> bool {
        let period = BillingPeriod::containing(now);
        if self.period != period.start {
            // a new period: every threshold may fire again (what is still queued is delivered)
            self.period = period.start;
            self.fired.clear();
        }
        if m.limit == MicroUsd::ZERO {
            return false;
        }
        let mut fired = false;
        let mut sorted = thresholds.to_vec();
        sort_small_by(&mut sorted, Ord::cmp);
        for pct in sorted {
            // used / limit >= pct / 100, in integers
            let reached = u128::from(m.used.0) * 100 >= u128::from(m.limit.0) * u128::from(pct);
            if !reached {
                break;
            }
            let name = format!("{}:{}:{}:{pct}", m.scope, m.id, m.of.name());
            if self.fired.contains(&name) {
                continue;
            }
            self.fired.push(name);
            self.next_id += 1;
            let id = format!("{}-{}-{}", m.id, period.start.0 / 1000, self.next_id);
            let body = serde_json::json!({
                "type": "credit_threshold",
                "delivery_id": id,
                "scope": m.scope,
                "id": m.id,
                "org": m.org,
                "of": m.of.name(),
                "threshold_percent": pct,
                "used_micro_usd": m.used.0,
                "limit_micro_usd": m.limit.0,
                "period_start": period.start.to_string(),
                "period_end": period.end.to_string(),
                "fired_at": now.to_string(),
            })
            .to_string();
            if self.outbox.len() >= MAX_OUTBOX {
                self.outbox.remove(0);
            }
            self.outbox.push(Delivery { id, body, attempts: 0, next_at: now });
            fired = true;
        }
        fired
    }

    /// The delivery to send now, if the first in line is due.
    pub fn due(&self, now: UnixMillis) -> Option<&Delivery> {
        self.outbox.first().filter(|d| d.next_at <= now)
    }

    /// When the first in line is due.
    pub fn next_wake(&self) -> Option<UnixMillis> {
        self.outbox.first().map(|d| d.next_at)
    }

    pub fn delivered(&mut self, id: &str) {
        self.outbox.retain(|d| d.id != id);
    }

    /// A failed attempt: the delivery waits `FIRST_RETRY_MS` x 2^attempts (capped), less up
    /// to half of it at random (`jitter` in 0..=1000 per mille), so receivers that were down
    /// are not hit by every gateway at once. Says whether it was given up.
    pub fn failed(&mut self, id: &str, now: UnixMillis, jitter: u64) -> bool {
        let Some(pos) = self.outbox.iter().position(|d| d.id == id) else { return false };
        let d = &mut self.outbox[pos];
        d.attempts += 1;
        if d.attempts >= MAX_ATTEMPTS {
            self.outbox.remove(pos);
            return true;
        }
        let wait = FIRST_RETRY_MS.saturating_mul(1 << d.attempts.min(20)).min(LONGEST_RETRY_MS);
        let wait = wait - wait / 2 * jitter.min(1000) / 1000;
        d.next_at = now.saturating_add_ms(wait);
        false
    }
}

/// HMAC-SHA256 of `body` under `key`, as lowercase hex (RFC 2104).
///
/// ```
/// use hf_gate::core::alerts::sign;
/// // RFC 4231, test case 2
/// assert_eq!(
///     sign(b"Jefe", b"what do ya want for nothing?"),
///     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
/// );
/// ```
pub fn sign(key: &[u8], body: &[u8]) -> String {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.map(|x| x ^ b);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(body).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

// Their JSON, as the account object's alert row holds them (`core::wire`).
crate::core::wire::json_struct!(Delivery { id, body, attempts, next_at });
crate::core::wire::json_struct!(AlertBook { period, fired, outbox, next_id });

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = UnixMillis(1_795_352_400_000);

    fn m(used: u64, limit: u64) -> Measure<'static> {
        Measure { scope: "key", id: "key_a", org: None, of: Of::Credits, used: MicroUsd(used), limit: MicroUsd(limit) }
    }

    #[test]
    fn each_threshold_fires_once_a_period_in_order() {
        let mut b = AlertBook::default();
        assert!(!b.check(&m(49, 100), DEFAULT_THRESHOLDS, NOW));
        // one call jumps past two thresholds: both fire, 50 before 80
        assert!(b.check(&m(85, 100), DEFAULT_THRESHOLDS, NOW));
        assert_eq!(b.outbox.len(), 2);
        assert!(b.outbox[0].body.contains("\"threshold_percent\":50"));
        assert!(b.outbox[1].body.contains("\"threshold_percent\":80"));
        // many more calls past 80: nothing more until 100
        for used in 86..100 {
            assert!(!b.check(&m(used, 100), DEFAULT_THRESHOLDS, NOW));
        }
        assert!(b.check(&m(100, 100), DEFAULT_THRESHOLDS, NOW));
        assert!(!b.check(&m(500, 100), DEFAULT_THRESHOLDS, NOW));
        assert_eq!(b.outbox.len(), 3);
        // next month they may fire again
        let later = UnixMillis(NOW.0 + 40 * 86_400_000);
        assert!(b.check(&m(60, 100), DEFAULT_THRESHOLDS, later));
        // a cap is its own measure
        let cap = Measure { of: Of::SpendCap, ..m(60, 100) };
        assert!(b.check(&cap, DEFAULT_THRESHOLDS, later));
        assert!(!b.check(&m(1, 0), DEFAULT_THRESHOLDS, later), "no limit, no alert");
    }

    #[test]
    fn deliveries_go_in_order_and_back_off_when_refused() {
        let mut b = AlertBook::default();
        b.check(&m(100, 100), DEFAULT_THRESHOLDS, NOW);
        let first = b.due(NOW).unwrap().id.clone();
        assert!(!b.failed(&first, NOW, 0));
        assert_eq!(b.due(NOW), None, "the first waits, and the rest wait behind it");
        assert_eq!(b.next_wake(), Some(NOW.saturating_add_ms(2_000)));
        let later = NOW.saturating_add_ms(2_000);
        assert_eq!(b.due(later).map(|d| d.id.clone()), Some(first.clone()));
        b.delivered(&first);
        assert!(b.due(later).unwrap().body.contains("\"threshold_percent\":80"));
        // a delivery that never gets through is given up in the end
        let id = b.due(later).unwrap().id.clone();
        let gave_up = (0..MAX_ATTEMPTS).any(|_| b.failed(&id, later, 500));
        assert!(gave_up);
        assert_eq!(b.outbox.len(), 1);
    }

    #[test]
    fn hmac_matches_rfc_4231_with_a_long_key() {
        // test case 6: a 131-byte key is hashed first
        let key = [0xaa_u8; 131];
        assert_eq!(
            sign(&key, b"Test Using Larger Than Block-Size Key - Hash Key First"),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
