//! The platform's clock, randomness and sleep, behind the core's traits.

use crate::core::error::GatewayError;
use crate::core::rand::Rng;
use crate::core::time::UnixMillis;
use std::time::Duration;

/// `Date.now()`. (Inside a Worker it advances on I/O, which is all the gateway measures.)
pub fn now() -> UnixMillis {
    UnixMillis(js_sys::Date::now().max(0.0) as u64)
}

/// The runtime's CSPRNG (`crypto.getRandomValues` through `getrandom`).
pub struct OsRng;

impl Rng for OsRng {
    fn fill(&mut self, buf: &mut [u8]) {
        if getrandom::fill(buf).is_err() {
            // Only jitter and request ids come through here; keys use `secure_random`, which
            // fails instead. Math.random is good enough to spread retries.
            for b in buf.iter_mut() {
                *b = (js_sys::Math::random() * 256.0) as u8;
            }
        }
    }
}

/// Random bytes for secrets: an error, never a weaker fallback.
pub fn secure_random(buf: &mut [u8]) -> Result<(), GatewayError> {
    getrandom::fill(buf)
        .map_err(|_| GatewayError::Misconfigured { setting: "crypto", reason: "no random source".into() })
}

pub async fn sleep_ms(ms: u64) {
    worker::Delay::from(Duration::from_millis(ms)).await;
}
