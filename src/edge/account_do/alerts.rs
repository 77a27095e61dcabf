//! An account's credit alerts: thresholds checked after each operation that moved money,
//! and the webhook deliveries the alarm sends.

use super::Account;
use crate::core::account::AccountState;
use crate::core::alerts::{Measure, Of};
use crate::core::store::RowWrite;
use crate::core::time::UnixMillis;
use crate::core::wire;
use crate::edge::platform;
use wasm_bindgen::JsValue;
use worker::Result;

impl Account {
    /// After an operation that moved money: the thresholds it crossed fire, each once a
    /// period (`core::alerts`), recorded in the same write as the operation's own rows.
    pub(super) fn check_alerts(&self, st: &AccountState, keys: &[String], now: UnixMillis) -> Option<RowWrite> {
        let s = crate::edge::config::settings(&self.env).ok()?;
        s.alert_webhook.as_ref()?;
        // a shard sees its lease, not the org's spend: a sharded org's alerts are its pool's
        if self.shard.is_some() {
            return None;
        }
        let (scope, id) = self.name.split_once(':')?;
        let org = (scope == "org").then_some(id);
        // a sharded org's pool sees its shards' spend as they report it, on each lease
        let (used, credit, cap) = match self.pool.borrow().as_ref() {
            Some(pool) => {
                let budget = st.policy?.budget;
                (pool.usage(now).used, budget.credit, budget.cap)
            }
            None => {
                let u = st.usage(now)?;
                (u.used, u.limit, u.cap)
            }
        };
        let mut book = self.alerts.borrow_mut();
        let mut fired = false;
        let thresholds = &s.alert_thresholds;
        let measure = |of, used, limit| Measure { scope, id, org: None, of, used, limit };
        fired |= book.check(&measure(Of::Credits, used, credit), thresholds, now);
        if let Some(cap) = cap {
            fired |= book.check(&measure(Of::SpendCap, used, cap), thresholds, now);
        }
        // a key's own cap inside an org
        for key_id in keys.iter().filter(|_| org.is_some()) {
            let Some(ceiling) = st.keys.get(key_id).and_then(|k| k.policy.as_ref()).and_then(|p| p.ceiling) else {
                continue;
            };
            let m = Measure {
                scope: "key",
                id: key_id,
                org,
                of: Of::SpendCap,
                used: st.key_used(key_id, now),
                limit: ceiling,
            };
            fired |= book.check(&m, thresholds, now);
        }
        fired.then(|| RowWrite::Alerts(wire::text(&*book)))
    }

    /// Sends the alerts that are due, in order, each signed; a refusal waits its backoff and
    /// holds the rest behind it.
    pub(super) async fn deliver_alerts(&self) -> Result<()> {
        let Ok(s) = crate::edge::config::settings(&self.env) else { return Ok(()) };
        let Some(url) = s.alert_webhook.clone() else { return Ok(()) };
        let secret = s.alert_secret.as_ref().map(|k| k.expose().as_bytes().to_vec()).unwrap_or_default();
        let mut changed = false;
        loop {
            let now = platform::now();
            let Some(d) = self.alerts.borrow().due(now).cloned() else { break };
            changed = true;
            let signature = crate::core::alerts::sign(&secret, d.body.as_bytes());
            if post_alert(&url, &d.body, &d.id, &signature).await {
                self.alerts.borrow_mut().delivered(&d.id);
                continue;
            }
            let mut r = [0u8; 2];
            let jitter = platform::secure_random(&mut r).map_or(500, |_| u64::from(u16::from_le_bytes(r)) % 1001);
            if self.alerts.borrow_mut().failed(&d.id, now, jitter) {
                platform::fault("an alert was given up after its last attempt", &d.id);
            }
            break;
        }
        if changed {
            let row = RowWrite::Alerts(wire::text(&*self.alerts.borrow()));
            self.write(&[row])?;
        }
        let next = self.alerts.borrow().next_wake().map(|t| t.0);
        self.schedule(next).await
    }
}

/// Posts one alert to the webhook: its body, signed; true when it answered 2xx within 10 s.
async fn post_alert(url: &str, body: &str, id: &str, signature: &str) -> bool {
    let Ok(headers) = web_sys::Headers::new() else { return false };
    let _ = headers.set("content-type", "application/json");
    let _ = headers.set("x-hfgate-delivery", id);
    let _ = headers.set("x-hfgate-signature", &format!("sha256={signature}"));
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_headers(headers.as_ref());
    init.set_body(&JsValue::from_str(body));
    let sent = platform::within(10_000, async { platform::fetch(url, &init).await.map(|r| r.ok()) });
    sent.await == Some(true)
}
