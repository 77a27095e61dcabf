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

/// Runs futures together and returns their outputs in order: the few lines it takes, rather
/// than `futures_util::future::join_all` and the ordered-stream machinery it brings into the
/// bundle for the handful of calls the gateway fans out (an org's shards).
pub async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut ready = true;
        for (f, out) in pending.iter_mut().zip(done.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => ready = false,
                }
            }
        }
        if ready {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}
