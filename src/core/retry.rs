//! Upstream 429s: how long upstream asked us to wait, whether the gateway waits and retries
//! itself, and a retry budget shared across calls so retries cannot multiply a storm.
//!
//! "Should we retry?" is decided here, as values; re-sending is the proxy's business.

use crate::core::rand::Rng;
use crate::core::time::{parse_http_date, UnixMillis};

/// The longest wait believed from upstream; anything longer is clamped to it.
pub const MAX_UPSTREAM_WAIT_MS: u64 = 3_600_000;

/// Where a wait came from (reported in logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitSource {
    RetryAfterMs,
    RetryAfter,
    RateLimitReset,
    Backoff,
}

/// Reads upstream's wait, in order: `retry-after-ms`, `Retry-After` (delta-seconds or
/// HTTP-date), the `t` parameter of `RateLimit`. Garbage in one header falls through to the
/// next; negative or non-finite values are garbage; past dates mean "now"; huge values are
/// clamped to `MAX_UPSTREAM_WAIT_MS`.
///
/// ```
/// use hf_gate::core::retry::{upstream_wait, WaitSource};
/// use hf_gate::core::time::UnixMillis;
/// let h = |name: &str| match name { "retry-after" => Some("3".to_string()), _ => None };
/// assert_eq!(upstream_wait(h, UnixMillis(0)), Some((3_000, WaitSource::RetryAfter)));
/// ```
pub fn upstream_wait(header: impl Fn(&str) -> Option<String>, now: UnixMillis) -> Option<(u64, WaitSource)> {
    if let Some(ms) = header("retry-after-ms").and_then(|v| parse_non_negative(&v)) {
        return Some((clamp_ms(ms), WaitSource::RetryAfterMs));
    }
    if let Some(v) = header("retry-after") {
        if let Some(secs) = parse_non_negative(&v) {
            return Some((clamp_ms(secs * 1000.0), WaitSource::RetryAfter));
        }
        if let Some(at) = parse_http_date(&v) {
            return Some((at.millis_since(now).min(MAX_UPSTREAM_WAIT_MS), WaitSource::RetryAfter));
        }
    }
    if let Some(secs) = header("ratelimit").and_then(|v| ratelimit_reset_secs(&v)) {
        return Some((clamp_ms(secs * 1000.0), WaitSource::RateLimitReset));
    }
    None
}

fn parse_non_negative(v: &str) -> Option<f64> {
    let v = v.trim();
    if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let n = crate::core::decimal::parse(v)?;
    n.is_finite().then_some(n)
}

fn clamp_ms(ms: f64) -> u64 {
    if ms >= MAX_UPSTREAM_WAIT_MS as f64 {
        MAX_UPSTREAM_WAIT_MS
    } else {
        ms.ceil() as u64
    }
}

/// The smallest `t=` among the items of a `RateLimit` field
/// (`"default";r=0;t=30, "daily";r=5;t=3600`), in seconds.
fn ratelimit_reset_secs(v: &str) -> Option<f64> {
    ratelimit_items(v).filter_map(|(_, t)| t).min_by(|a, b| a.total_cmp(b))
}

/// How long an upstream quota that says it is spent stays spent: the wait, in ms, of the
/// longest item of a `RateLimit` field whose remaining `r` is 0. A 2xx can carry this (the
/// Hub sends `"api";r=0;t=55` on the call that used the last request), so the gateway can stop
/// sending before upstream starts answering 429. An item with `r=0` but no usable `t` says
/// nothing about when, so it is ignored; `None` when no item is exhausted or the field is
/// garbage. Waits are clamped like every other upstream wait.
///
/// ```
/// use hf_gate::core::retry::exhausted_for_ms;
/// assert_eq!(exhausted_for_ms(r#""api";r=0;t=55"#), Some(55_000));
/// assert_eq!(exhausted_for_ms(r#""api";r=3;t=55"#), None);
/// ```
pub fn exhausted_for_ms(ratelimit: &str) -> Option<u64> {
    ratelimit_items(ratelimit)
        .filter(|(r, _)| *r == Some(0.0))
        .filter_map(|(_, t)| t)
        .max_by(|a, b| a.total_cmp(b))
        .map(|secs| clamp_ms(secs * 1000.0))
}

/// The remaining quota `r` and the seconds to reset `t` of each item of a `RateLimit` field,
/// each `None` when absent or garbage. The item's name is optional (`"api";r=0;t=55` and the
/// older `r=0;t=55` both occur), parameters come in any order with whitespace around them,
/// and a repeated parameter's last value counts, as in RFC 8941.
fn ratelimit_items(v: &str) -> impl Iterator<Item = (Option<f64>, Option<f64>)> + '_ {
    v.split(',').map(|item| {
        let (mut r, mut t) = (None, None);
        for (i, member) in item.split(';').enumerate() {
            let Some((key, value)) = member.split_once('=') else { continue };
            // a quoted name may itself hold '=': it is the item, not a parameter
            if i == 0 && key.trim_start().starts_with('"') {
                continue;
            }
            match key.trim() {
                "r" => r = parse_non_negative(value),
                "t" => t = parse_non_negative(value),
                _ => {}
            }
        }
        (r, t)
    })
}

/// The gateway's own retry rules for upstream 429 / 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The longest single wait the gateway sits through for the caller.
    pub max_wait_ms: u64,
    /// The whole call (all attempts and waits) must end within this.
    pub deadline_ms: u64,
    /// First backoff step when upstream gave no wait; doubles per attempt.
    pub backoff_base_ms: u64,
    /// Backoff steps never exceed this.
    pub backoff_cap_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            max_wait_ms: 2_000,
            deadline_ms: 120_000,
            backoff_base_ms: 500,
            backoff_cap_ms: 30_000,
        }
    }
}

/// What to do after an upstream 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Sleep `wait_ms`, then send again.
    RetryAfter { wait_ms: u64 },
    /// Give the caller a 429 carrying `wait_ms`.
    GiveUp { wait_ms: u64 },
}

impl RetryPolicy {
    /// Full-jitter exponential backoff: uniform in `[0, min(cap, base * 2^attempt))`.
    ///
    /// ```
    /// use hf_gate::core::rand::ScriptedRng;
    /// use hf_gate::core::retry::RetryPolicy;
    /// let p = RetryPolicy::default();
    /// let mut rng = ScriptedRng::units(&[0.5]);
    /// assert_eq!(p.backoff_ms(0, &mut rng), 250);
    /// assert_eq!(p.backoff_ms(2, &mut rng), 1_000);
    /// ```
    pub fn backoff_ms(&self, attempt: u32, rng: &mut impl Rng) -> u64 {
        let step = self.backoff_base_ms.saturating_mul(1u64 << attempt.min(32)).min(self.backoff_cap_ms);
        (rng.unit() * step as f64) as u64
    }

    /// Decides after attempt number `attempt` (0 = the first send) got a 429 whose wait was
    /// `upstream_wait_ms` (or none), `elapsed_ms` into the call, at `now`. A retry that fits
    /// the policy still needs one from the shared `budget`; only a retry spends it.
    pub fn decide(
        &self,
        attempt: u32,
        upstream_wait_ms: Option<u64>,
        elapsed_ms: u64,
        budget: &mut RetryBudget,
        now: UnixMillis,
        rng: &mut impl Rng,
    ) -> RetryDecision {
        let wait_ms = upstream_wait_ms.unwrap_or_else(|| self.backoff_ms(attempt, rng));
        let fits = attempt < self.max_retries
            && wait_ms <= self.max_wait_ms
            && elapsed_ms.saturating_add(wait_ms) < self.deadline_ms;
        if fits && budget.try_withdraw(now) {
            RetryDecision::RetryAfter { wait_ms }
        } else {
            RetryDecision::GiveUp { wait_ms }
        }
    }
}

/// Retries allowed across calls: every call deposits a fraction of a retry, every retry
/// withdraws a whole one, and a small floor refills with time so a quiet gateway can still
/// retry. A storm of 429s drains it and the gateway stops adding load.
///
/// ```
/// use hf_gate::core::retry::RetryBudget;
/// use hf_gate::core::time::UnixMillis;
/// let mut b = RetryBudget::new(0.2, 1, 10);
/// let now = UnixMillis(0);
/// assert!(b.try_withdraw(now)); // the floor: one retry a second
/// assert!(!b.try_withdraw(now));
/// for _ in 0..5 { b.deposit(now); } // five calls earn one retry
/// assert!(b.try_withdraw(now));
/// ```
#[derive(Clone, Debug)]
pub struct RetryBudget {
    /// Thousandths of a retry.
    balance: u64,
    deposit_milli: u64,
    floor_per_sec: u64,
    max_milli: u64,
    last_refill: Option<UnixMillis>,
}

impl RetryBudget {
    pub fn new(ratio: f64, floor_per_sec: u64, max_retries: u64) -> Self {
        let deposit_milli = (ratio.clamp(0.0, 1000.0) * 1000.0) as u64;
        RetryBudget {
            balance: 0,
            deposit_milli,
            floor_per_sec,
            max_milli: max_retries.saturating_mul(1000),
            last_refill: None,
        }
    }

    fn refill(&mut self, now: UnixMillis) {
        let earned = match self.last_refill {
            None => self.floor_per_sec.saturating_mul(1000),
            Some(last) => now.millis_since(last).saturating_mul(self.floor_per_sec),
        };
        self.balance = self.balance.saturating_add(earned).min(self.max_milli);
        self.last_refill = Some(now);
    }

    /// A call was made.
    pub fn deposit(&mut self, now: UnixMillis) {
        self.refill(now);
        self.balance = self.balance.saturating_add(self.deposit_milli).min(self.max_milli);
    }

    /// Takes one retry if the budget has it.
    pub fn try_withdraw(&mut self, now: UnixMillis) -> bool {
        self.refill(now);
        if self.balance >= 1000 {
            self.balance -= 1000;
            true
        } else {
            false
        }
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(0.2, 1, 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rand::ScriptedRng;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let h = headers(&[("retry-after-ms", "1500.5"), ("retry-after", "9")]);
        assert_eq!(upstream_wait(h, UnixMillis(0)), Some((1_501, WaitSource::RetryAfterMs)));
    }

    #[test]
    fn http_dates_count_from_now_and_past_dates_mean_now() {
        let now = UnixMillis(784_111_777_000 - 30_000);
        let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert_eq!(upstream_wait(&h, now), Some((30_000, WaitSource::RetryAfter)));
        assert_eq!(upstream_wait(&h, UnixMillis(900_000_000_000)), Some((0, WaitSource::RetryAfter)));
    }

    #[test]
    fn garbage_falls_through_to_the_next_source() {
        let h = headers(&[("retry-after-ms", "-5"), ("retry-after", "soon"), ("ratelimit", "\"d\";r=0;t=7")]);
        assert_eq!(upstream_wait(h, UnixMillis(0)), Some((7_000, WaitSource::RateLimitReset)));
        for bad in ["-1", "1e3", "NaN", "inf", "", " ", "0x10", "1,5"] {
            assert_eq!(upstream_wait(headers(&[("retry-after", bad)]), UnixMillis(0)), None, "{bad}");
        }
    }

    #[test]
    fn a_spent_quota_says_how_long_in_the_hubs_forms() {
        assert_eq!(exhausted_for_ms(r#""api";r=0;t=55"#), Some(55_000));
        assert_eq!(exhausted_for_ms("r=0;t=55"), Some(55_000));
        assert_eq!(exhausted_for_ms("t=55;r=0"), Some(55_000));
        assert_eq!(exhausted_for_ms(r#"  "api" ; t = 55 ; r = 0  "#), Some(55_000));
        assert_eq!(exhausted_for_ms(r#""api";r=0;t=0.5"#), Some(500));
        assert_eq!(exhausted_for_ms(r#""api";r=0;t=0"#), Some(0));
    }

    #[test]
    fn a_quota_with_requests_left_is_not_spent() {
        assert_eq!(exhausted_for_ms(r#""api";r=1;t=55"#), None);
        assert_eq!(exhausted_for_ms(r#""api";r=0.5;t=55"#), None);
        assert_eq!(exhausted_for_ms(r#""api";t=55"#), None);
    }

    #[test]
    fn of_several_items_the_longest_spent_one_counts() {
        let v = r#""minute";r=0;t=5, "day";r=0;t=3600, "month";r=9;t=999999"#;
        assert_eq!(exhausted_for_ms(v), Some(3_600_000));
        assert_eq!(exhausted_for_ms(r#""a";r=2;t=5, "b";r=0;t=30,"#), Some(30_000));
        assert_eq!(exhausted_for_ms(r#""api";r=0;t=99999999999"#), Some(MAX_UPSTREAM_WAIT_MS));
    }

    #[test]
    fn a_garbage_ratelimit_field_says_nothing() {
        for bad in [
            "",
            ",",
            "nonsense",
            "\"api\"",
            "r=;t=",
            "r=0",
            "r=0;t=-5",
            "r=0;t=soon",
            "r=-0;t=5",
            "r=x;t=5",
            "r=0;t=1e3",
            "\"r=0;t=5\"",
            "r=0;t=5;t=later",
        ] {
            assert_eq!(exhausted_for_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_reset_wait_reads_unnamed_items_too() {
        let h = headers(&[("ratelimit", "t=7;r=0")]);
        assert_eq!(upstream_wait(h, UnixMillis(0)), Some((7_000, WaitSource::RateLimitReset)));
    }

    #[test]
    fn enormous_waits_are_clamped() {
        let h = headers(&[("retry-after", "99999999999999999999999")]);
        assert_eq!(upstream_wait(h, UnixMillis(0)), Some((MAX_UPSTREAM_WAIT_MS, WaitSource::RetryAfter)));
    }

    #[test]
    fn the_backoff_schedule_doubles_under_its_cap() {
        let p = RetryPolicy { backoff_base_ms: 100, backoff_cap_ms: 1_000, ..RetryPolicy::default() };
        let mut top = ScriptedRng::units(&[1.0 - f64::EPSILON]);
        let steps: Vec<u64> = (0..6).map(|a| p.backoff_ms(a, &mut top)).collect();
        assert_eq!(steps, vec![99, 199, 399, 799, 999, 999]);
        let mut zero = ScriptedRng::units(&[0.0]);
        assert_eq!(p.backoff_ms(5, &mut zero), 0);
    }

    #[test]
    fn short_waits_are_retried_and_long_ones_given_back() {
        let p = RetryPolicy::default();
        let mut r = ScriptedRng::units(&[0.5]);
        let mut plenty = RetryBudget::new(1.0, 100, 100);
        let now = UnixMillis(0);
        let mut d = |attempt, wait, elapsed| p.decide(attempt, wait, elapsed, &mut plenty, now, &mut r);
        assert_eq!(d(0, Some(1_000), 0), RetryDecision::RetryAfter { wait_ms: 1_000 });
        assert_eq!(d(0, Some(30_000), 0), RetryDecision::GiveUp { wait_ms: 30_000 });
        assert_eq!(d(2, Some(10), 0), RetryDecision::GiveUp { wait_ms: 10 });
        assert_eq!(d(0, Some(1_000), 119_500), RetryDecision::GiveUp { wait_ms: 1_000 });
        assert_eq!(d(1, None, 0), RetryDecision::RetryAfter { wait_ms: 500 });
    }

    #[test]
    fn an_empty_budget_turns_a_retry_into_a_give_up_and_a_give_up_spends_nothing() {
        let p = RetryPolicy::default();
        let mut r = ScriptedRng::units(&[0.5]);
        let now = UnixMillis(0);
        let mut one = RetryBudget::new(0.0, 1, 1); // a single retry to spend
        assert_eq!(p.decide(0, Some(30_000), 0, &mut one, now, &mut r), RetryDecision::GiveUp { wait_ms: 30_000 });
        assert_eq!(p.decide(0, Some(10), 0, &mut one, now, &mut r), RetryDecision::RetryAfter { wait_ms: 10 });
        assert_eq!(p.decide(0, Some(10), 0, &mut one, now, &mut r), RetryDecision::GiveUp { wait_ms: 10 });
    }

    #[test]
    fn the_budget_refills_slowly_and_caps() {
        let mut b = RetryBudget::new(0.1, 1, 3);
        let t0 = UnixMillis(0);
        assert!(b.try_withdraw(t0));
        assert!(!b.try_withdraw(UnixMillis(999)));
        assert!(b.try_withdraw(UnixMillis(2_000)));
        assert!(b.try_withdraw(UnixMillis(100_000)));
        assert!(b.try_withdraw(UnixMillis(100_000)));
        assert!(b.try_withdraw(UnixMillis(100_000)));
        assert!(!b.try_withdraw(UnixMillis(100_000)));
    }
}
