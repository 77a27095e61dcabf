//! The platform's clock, randomness and sleep, behind the core's traits.

use crate::core::error::GatewayError;
use crate::core::rand::Rng;
use crate::core::time::UnixMillis;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};
use wasm_bindgen::prelude::{wasm_bindgen, Closure};
use wasm_bindgen::{JsCast, JsValue};

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
    Timer::after_ms(ms).await;
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(catch, js_name = setTimeout)]
    fn set_timeout(handler: &js_sys::Function, ms: f64) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch, js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue) -> Result<(), JsValue>;
}

/// What a timer shares with its callback.
#[derive(Default)]
struct Alarm {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// A timer future (`setTimeout`), in place of `worker::Delay`, whose drop can never take the
/// isolate down. A future can be dropped where no request is running: the garbage collector
/// frees an abandoned response stream (and with it the metered stream and whatever it owns)
/// outside any handler, and there the runtime refuses `clearTimeout` ("Disallowed operation
/// called within global scope"). `worker::Delay` calls it through a binding that does not
/// catch, and under panic=abort a JS exception through such a binding is fatal: the wasm
/// instance is re-instantiated and every call in flight in it hangs. Here both calls catch:
/// a timer that cannot be cleared belongs to a request that is gone and will never fire (its
/// callback is kept, so it could only find no one to wake). It also wakes the task that
/// polled it last, not the first one.
pub struct Timer {
    ms: u64,
    alarm: Rc<Alarm>,
    armed: Option<(JsValue, Closure<dyn FnMut()>)>,
}

impl Timer {
    pub fn after_ms(ms: u64) -> Self {
        Timer { ms, alarm: Rc::default(), armed: None }
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.alarm.fired.get() {
            return Poll::Ready(());
        }
        {
            let mut waker = self.alarm.waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        if self.armed.is_none() {
            let alarm = self.alarm.clone();
            let callback = Closure::<dyn FnMut()>::own_assert_unwind_safe(move || {
                alarm.fired.set(true);
                let waker = alarm.waker.borrow_mut().take();
                if let Some(w) = waker {
                    w.wake();
                }
            });
            let ms = self.ms.min(i32::MAX as u64) as f64;
            // refused only where no request runs: then it never fires (nothing to time)
            if let Ok(id) = set_timeout(callback.as_ref().unchecked_ref(), ms) {
                self.armed = Some((id, callback));
            }
        }
        Poll::Pending
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.alarm.waker.borrow_mut().take();
        if let Some((id, callback)) = self.armed.take() {
            if !self.alarm.fired.get() && clear_timeout(&id).is_err() {
                // not cleared: keep the callback, so a late call finds it and wakes no one
                callback.forget();
            }
        }
    }
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

/// One structured line per fault for the operator's log (`wrangler tail`): what failed, and
/// the runtime's own words for it. Never a secret: callers pass what they would have printed.
pub fn fault(what: &str, words: &str) {
    let line = serde_json::json!({"fault": {"what": what, "words": words, "at": crate::core::request_log::format_millis(now())}});
    worker::console_error!("{line}");
}

/// `fut`'s answer if it comes within `ms`, else `None` (`fut` is dropped unfinished).
pub async fn within<T>(ms: u64, fut: impl Future<Output = Option<T>>) -> Option<T> {
    let timer = sleep_ms(ms);
    futures_util::pin_mut!(fut);
    futures_util::pin_mut!(timer);
    match futures_util::future::select(fut, timer).await {
        futures_util::future::Either::Left((answer, _)) => answer,
        futures_util::future::Either::Right(_) => None,
    }
}

/// The runtime's own fetch, for the gateway's own requests (its price book, its alerts): the
/// response, or `None` when it could not be made.
pub async fn fetch(url: &str, init: &web_sys::RequestInit) -> Option<web_sys::Response> {
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let resp = wasm_bindgen_futures::JsFuture::from(global.fetch_with_str_and_init(url, init)).await.ok()?;
    resp.dyn_into().ok()
}
