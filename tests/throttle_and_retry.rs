//! Black-box tests of the throttle and the retry policy with a fake clock and scripted
//! randomness: GCRA against a reference token bucket, Retry-After in every form.
#![cfg(not(target_arch = "wasm32"))]

use hf_gate::core::gcra::{check, state_at, Quota, Tat};
use hf_gate::core::rand::ScriptedRng;
use hf_gate::core::retry::{upstream_wait, RetryBudget, RetryDecision, RetryPolicy, WaitSource, MAX_UPSTREAM_WAIT_MS};
use hf_gate::core::time::{Clock, FakeClock, UnixMillis};
use proptest::prelude::*;

/// The textbook token bucket GCRA must agree with: `burst` tokens, one back every
/// 60/rpm seconds, a call takes one. Kept in microseconds of "credit".
struct Bucket {
    credit_us: u64,
    last_us: u64,
    capacity_us: u64,
    emission_us: u64,
}

impl Bucket {
    fn new(rpm: u32, burst: u32, now_us: u64) -> Self {
        let emission_us = 60_000_000 / u64::from(rpm);
        Bucket {
            credit_us: emission_us * u64::from(burst),
            last_us: now_us,
            capacity_us: emission_us * u64::from(burst),
            emission_us,
        }
    }
    fn take(&mut self, now_us: u64) -> bool {
        self.credit_us = (self.credit_us + (now_us - self.last_us)).min(self.capacity_us);
        self.last_us = now_us;
        if self.credit_us >= self.emission_us {
            self.credit_us -= self.emission_us;
            true
        } else {
            false
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn gcra_agrees_with_a_token_bucket(rpm in 1u32..6_000, burst in 1u32..50, gaps in prop::collection::vec(0u64..5_000, 1..200)) {
        let clock = FakeClock::at(UnixMillis(1_800_000_000_000));
        let q = Quota::new(rpm, burst).unwrap();
        let mut tat = Tat::default();
        let mut bucket = Bucket::new(rpm, burst, clock.now().0 * 1000);
        for gap in gaps {
            clock.advance_ms(gap);
            let now = clock.now();
            let expected = bucket.take(now.0 * 1000);
            match check(q, tat, now, 1) {
                Ok((next, allow)) => {
                    prop_assert!(expected, "GCRA allowed what the bucket refused");
                    prop_assert_eq!(u64::from(allow.remaining), bucket.credit_us / bucket.emission_us);
                    tat = next;
                }
                Err(no) => {
                    prop_assert!(!expected, "GCRA refused what the bucket allowed");
                    // the denial's retry time is exact: one ms earlier fails, at it passes
                    prop_assert!(check(q, tat, no.earliest_retry, 1).is_ok());
                    if no.wait_ms > 1 {
                        prop_assert!(check(q, tat, UnixMillis(no.earliest_retry.0 - 1), 1).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn upstream_waits_never_panic_and_stay_bounded(v in ".{0,40}", ms in ".{0,40}", rl in ".{0,60}") {
        let h = |name: &str| match name {
            "retry-after" => Some(v.clone()),
            "retry-after-ms" => Some(ms.clone()),
            "ratelimit" => Some(rl.clone()),
            _ => None,
        };
        if let Some((wait, _)) = upstream_wait(h, UnixMillis(1_800_000_000_000)) {
            prop_assert!(wait <= MAX_UPSTREAM_WAIT_MS);
        }
    }
}

#[test]
fn the_reference_schedule_burst_steady_idle() {
    // 60 rpm, burst 3: three at once, then one a second, and a full burst again after idling
    let q = Quota::new(60, 3).unwrap();
    let clock = FakeClock::at(UnixMillis(1_800_000_000_000));
    let mut tat = Tat::default();
    let mut log = Vec::new();
    let step = |clock: &FakeClock, tat: &mut Tat| match check(q, *tat, clock.now(), 1) {
        Ok((t, a)) => {
            *tat = t;
            format!("ok r={}", a.remaining)
        }
        Err(n) => format!("wait {}", n.wait_ms),
    };
    for _ in 0..4 {
        log.push(step(&clock, &mut tat));
    }
    clock.advance_ms(400);
    log.push(step(&clock, &mut tat));
    clock.advance_ms(600);
    log.push(step(&clock, &mut tat));
    log.push(step(&clock, &mut tat));
    clock.advance_ms(10_000);
    assert_eq!(state_at(q, tat, clock.now()).remaining, 3, "idle refills the whole burst");
    for _ in 0..3 {
        log.push(step(&clock, &mut tat));
    }
    assert_eq!(
        log,
        ["ok r=2", "ok r=1", "ok r=0", "wait 1000", "wait 600", "ok r=0", "wait 1000", "ok r=2", "ok r=1", "ok r=0"]
    );
}

#[test]
fn retry_after_in_every_form() {
    let now = UnixMillis(784_111_777_000 - 5_000); // 5 s before Sun, 06 Nov 1994 08:49:37 GMT
    type Case = (&'static str, &'static str, Option<(u64, WaitSource)>);
    let cases: &[Case] = &[
        ("retry-after", "0", Some((0, WaitSource::RetryAfter))),
        ("retry-after", "30", Some((30_000, WaitSource::RetryAfter))),
        ("retry-after", " 2 ", Some((2_000, WaitSource::RetryAfter))),
        ("retry-after", "1.5", Some((1_500, WaitSource::RetryAfter))),
        ("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT", Some((5_000, WaitSource::RetryAfter))),
        ("retry-after", "Sat, 05 Nov 1994 08:49:37 GMT", Some((0, WaitSource::RetryAfter))),
        ("retry-after", "Sun, 06 Nov 2094 08:49:37 GMT", Some((MAX_UPSTREAM_WAIT_MS, WaitSource::RetryAfter))),
        ("retry-after", "-3", None),
        ("retry-after", "3 seconds", None),
        ("retry-after", "", None),
        ("retry-after-ms", "250", Some((250, WaitSource::RetryAfterMs))),
        ("retry-after-ms", "0.4", Some((1, WaitSource::RetryAfterMs))),
        ("retry-after-ms", "-250", None),
        ("ratelimit", "\"default\";r=0;t=12", Some((12_000, WaitSource::RateLimitReset))),
        ("ratelimit", "\"a\";r=0;t=60, \"b\";r=0;t=5", Some((5_000, WaitSource::RateLimitReset))),
        ("ratelimit", "\"a\";r=3", None),
    ];
    for (name, value, expected) in cases {
        let h = |n: &str| (n == *name).then(|| value.to_string());
        assert_eq!(upstream_wait(h, now), *expected, "{name}: {value:?}");
    }
}

#[test]
fn the_exact_backoff_schedule_with_scripted_jitter() {
    let p = RetryPolicy {
        max_retries: 5,
        max_wait_ms: 60_000,
        deadline_ms: 600_000,
        backoff_base_ms: 500,
        backoff_cap_ms: 30_000,
    };
    let mut rng = ScriptedRng::units(&[0.5, 0.25, 0.9, 0.0, 0.5, 0.5]);
    let waits: Vec<u64> = (0..6)
        .map(|attempt| {
            match p.decide(attempt, None, 0, &mut RetryBudget::new(1.0, 100, 100), UnixMillis(0), &mut rng) {
                RetryDecision::RetryAfter { wait_ms } | RetryDecision::GiveUp { wait_ms } => wait_ms,
            }
        })
        .collect();
    // full jitter over 500, 1000, 2000, 4000, 8000, 16000 ms
    assert_eq!(waits, vec![250, 250, 1_800, 0, 4_000, 8_000]);
}

#[test]
fn the_retry_budget_stops_a_storm() {
    let clock = FakeClock::at(UnixMillis(0));
    let mut budget = RetryBudget::new(0.2, 1, 20);
    // a storm: 100 calls in one second, every one of them 429
    let mut retried = 0;
    for _ in 0..100 {
        budget.deposit(clock.now());
        if budget.try_withdraw(clock.now()) {
            retried += 1;
        }
    }
    // the floor (1) plus a fifth of the calls, at most
    assert!(retried <= 21, "retried {retried} of 100");
    assert!(retried >= 19);
}
