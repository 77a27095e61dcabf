//! What an account spent per model and provider, and the queued jobs it owns. Both live in the
//! account object beside the ledger, and both change in the same operation as the ledger: a
//! settle adds its call to the spend lines, a job submit's owner is recorded before the caller
//! is told the job's id.
//!
//! Both are bounded whatever callers send: model names come from request bodies, so lines
//! beyond `MAX_LINES` are counted under one `(other)` line per key, and jobs past `JOB_TTL_MS`
//! or beyond `MAX_JOBS` are forgotten (a poll for a forgotten job is a 404, never a free
//! pass-through).

use crate::core::call_line::CallLine;
use crate::core::ledger::MicroUsd;
use crate::core::sort::heap_sort_by;
use crate::core::sorted::SortedMap;
use crate::core::time::{BillingPeriod, UnixMillis};

/// Distinct (key, model, provider) lines one account keeps before folding into `(other)`.
pub const MAX_LINES: usize = 4_096;
/// The longest model or provider name kept; longer names are cut (at a char boundary).
pub const MAX_NAME: usize = 160;
/// A job's owner is remembered this long after its submit: polls after that are refused.
pub const JOB_TTL_MS: u64 = 7 * 24 * 3_600_000;
/// The most jobs one account remembers; the oldest are forgotten first.
pub const MAX_JOBS: usize = 20_000;

/// Identifies a spend line: key id, model, provider.
pub type LineKey = (String, String, String);

/// A line's totals in one billing period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpendLine {
    /// The start of the period these totals are for; an older line is reset on its next use.
    pub period: UnixMillis,
    pub requests: u64,
    pub prompt: u64,
    pub completion: u64,
    pub cost: MicroUsd,
}

/// One row of a usage report's `by_model`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpend {
    pub model: String,
    pub provider: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_micro_usd: u64,
}

pub const OTHER: &str = "(other)";

fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_NAME);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Spend lines of one account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spend {
    lines: SortedMap<LineKey, SpendLine>,
}

impl Spend {
    pub fn from_rows(rows: impl IntoIterator<Item = (LineKey, SpendLine)>) -> Spend {
        Spend { lines: rows.into_iter().collect() }
    }

    /// The line a call of `key_id` is counted in: its own, or `(other)` once the account has
    /// `MAX_LINES` lines.
    pub fn line_key(&self, key_id: &str, call: &CallLine) -> LineKey {
        let own = (key_id.to_string(), cut(&call.model), cut(&call.provider));
        if self.lines.len() < MAX_LINES || self.lines.contains_key(&own) {
            own
        } else {
            (key_id.to_string(), OTHER.to_string(), OTHER.to_string())
        }
    }

    pub fn get(&self, k: &LineKey) -> Option<&SpendLine> {
        self.lines.get(k)
    }

    /// Counts one call in its line (reset first if it holds an older period's totals).
    pub fn add(&mut self, key_id: &str, call: &CallLine, cost: MicroUsd, now: UnixMillis) -> LineKey {
        let k = self.line_key(key_id, call);
        let period = BillingPeriod::containing(now).start;
        let line = self.lines.get_or_insert_with(k.clone(), SpendLine::default);
        if line.period != period {
            *line = SpendLine { period, ..SpendLine::default() };
        }
        line.requests = line.requests.saturating_add(1);
        line.prompt = line.prompt.saturating_add(call.tokens.prompt);
        line.completion = line.completion.saturating_add(call.tokens.completion);
        line.cost = line.cost.saturating_add(cost);
        k
    }

    /// This period's lines, of one key or of all keys added up per model and provider; the
    /// costliest first.
    pub fn report(&self, key_id: Option<&str>, now: UnixMillis) -> Vec<ModelSpend> {
        let period = BillingPeriod::containing(now).start;
        let lines = self
            .lines
            .iter()
            .filter(|((k, _, _), line)| line.period == period && key_id.is_none_or(|want| want == k))
            .map(|((_, model, provider), l)| ModelSpend {
                model: model.clone(),
                provider: provider.clone(),
                requests: l.requests,
                prompt_tokens: l.prompt,
                completion_tokens: l.completion,
                cost_micro_usd: l.cost.0,
            });
        add_up(lines)
    }
}

/// Several reports' lines (the shards of one org) added up per model and provider.
pub fn merge(reports: &[&[ModelSpend]]) -> Vec<ModelSpend> {
    add_up(reports.iter().flat_map(|r| r.iter()).cloned())
}

/// Lines added up per model and provider, the costliest first. Sorted by (model, provider),
/// then runs of one pair folded into their first line, then sorted by cost: the heap sort
/// serves all of it, where a map of pairs cost another BTreeMap instance in the bundle.
fn add_up(lines: impl Iterator<Item = ModelSpend>) -> Vec<ModelSpend> {
    let mut lines: Vec<ModelSpend> = lines.collect();
    heap_sort_by(&mut lines, |a, b| (&a.model, &a.provider).cmp(&(&b.model, &b.provider)));
    let mut out: Vec<ModelSpend> = Vec::with_capacity(lines.len());
    for line in lines {
        match out.last_mut() {
            Some(sum) if sum.model == line.model && sum.provider == line.provider => {
                sum.requests = sum.requests.saturating_add(line.requests);
                sum.prompt_tokens = sum.prompt_tokens.saturating_add(line.prompt_tokens);
                sum.completion_tokens = sum.completion_tokens.saturating_add(line.completion_tokens);
                sum.cost_micro_usd = sum.cost_micro_usd.saturating_add(line.cost_micro_usd);
            }
            _ => out.push(line),
        }
    }
    // (model, provider) is unique now, so this order is total: the same as a stable sort by
    // cost and requests of the (model, provider) order.
    heap_sort_by(&mut out, |a, b| {
        b.cost_micro_usd
            .cmp(&a.cost_micro_usd)
            .then(b.requests.cmp(&a.requests))
            .then_with(|| (&a.model, &a.provider).cmp(&(&b.model, &b.provider)))
    });
    out
}

/// Who submitted a job, and where upstream its polls go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRow {
    pub key_id: String,
    /// The upstream path of the job's result; its status and cancel paths hang off it.
    pub poll_base: String,
    pub at: UnixMillis,
}

/// The jobs an account's keys submitted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Jobs {
    by_id: SortedMap<String, JobRow>,
}

impl Jobs {
    pub fn from_rows(rows: impl IntoIterator<Item = (String, JobRow)>) -> Jobs {
        Jobs { by_id: rows.into_iter().collect() }
    }

    pub fn get(&self, id: &str) -> Option<&JobRow> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The jobs a new one would push out: those past their time, and the oldest beyond
    /// `MAX_JOBS - 1`.
    pub fn forgotten_by(&self, now: UnixMillis) -> Vec<String> {
        let mut out: Vec<(UnixMillis, &String)> = Vec::new();
        let mut live: Vec<(UnixMillis, &String)> = Vec::new();
        for (id, row) in self.by_id.iter() {
            if now.millis_since(row.at) >= JOB_TTL_MS {
                out.push((row.at, id));
            } else {
                live.push((row.at, id));
            }
        }
        if live.len() >= MAX_JOBS {
            heap_sort_by(&mut live, Ord::cmp);
            out.extend(live.into_iter().take(self.by_id.len() - out.len() + 1 - MAX_JOBS));
        }
        out.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// Records a job's owner (a job id already known keeps its first owner: an id upstream
    /// repeats is never handed to another key). The ids it forgot to make room.
    pub fn own(&mut self, id: &str, row: JobRow) -> Vec<String> {
        let forgotten = self.forgotten_by(row.at);
        for gone in &forgotten {
            self.by_id.remove(gone);
        }
        if !self.by_id.contains_key(id) {
            self.by_id.insert(id.to_string(), row);
        }
        forgotten
    }
}

// Their JSON, as the account object's messages and rows carry them (`core::wire`); `Spend`
// and `Jobs` are read only from the one document earlier builds stored (`edits::decode`).
crate::core::wire::json_struct!(SpendLine { period, requests, prompt, completion, cost });
crate::core::wire::json_struct!(ModelSpend {
    model,
    provider,
    requests,
    prompt_tokens,
    completion_tokens,
    cost_micro_usd
});
crate::core::wire::json_struct!(JobRow { key_id, poll_base, at });
crate::core::wire::json_struct!(read Jobs { by_id });

/// The document could hold no line: JSON has no key for a line's (key, model, provider),
/// so serde wrote only an empty map.
impl crate::core::wire::FromJson for Spend {
    fn read(v: &serde_json::Value, e: &crate::core::wire::Errors) -> Self {
        match crate::core::wire::Fields::of(v, e).value("lines") {
            Some(serde_json::Value::Object(lines)) if lines.is_empty() => {}
            other => e.expected("no lines", other.unwrap_or(&serde_json::Value::Null)),
        }
        Spend::default()
    }
    fn fallback() -> Self {
        Spend::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pricing::TokenUsage;

    const NOW: UnixMillis = UnixMillis(1_795_352_400_000);

    fn call(model: &str, provider: &str, prompt: u64, completion: u64) -> CallLine {
        CallLine {
            model: model.into(),
            provider: provider.into(),
            tokens: TokenUsage { prompt, completion },
            log: None,
        }
    }

    #[test]
    fn lines_add_per_key_model_and_provider_and_reset_with_the_period() {
        let mut s = Spend::default();
        s.add("a", &call("m", "groq", 10, 5), MicroUsd(7), NOW);
        s.add("a", &call("m", "groq", 1, 1), MicroUsd(3), NOW);
        s.add("b", &call("m", "groq", 1, 1), MicroUsd(1), NOW);
        s.add("a", &call("m", "together", 1, 1), MicroUsd(100), NOW);
        let a = s.report(Some("a"), NOW);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].provider.as_str(), a[0].cost_micro_usd), ("together", 100));
        assert_eq!((a[1].requests, a[1].prompt_tokens, a[1].cost_micro_usd), (2, 11, 10));
        let all = s.report(None, NOW);
        assert_eq!(all.iter().find(|l| l.provider == "groq").map(|l| l.cost_micro_usd), Some(11));
        // next month the old totals are not this period's, and the next call starts afresh
        let later = UnixMillis(NOW.0 + 40 * 86_400_000);
        assert!(s.report(None, later).is_empty());
        s.add("a", &call("m", "groq", 1, 1), MicroUsd(2), later);
        assert_eq!(s.report(Some("a"), later)[0].cost_micro_usd, 2);
    }

    #[test]
    fn names_from_callers_cannot_grow_the_lines_without_bound() {
        let mut s = Spend::default();
        for i in 0..MAX_LINES + 50 {
            s.add("a", &call(&format!("m{i}"), "p", 1, 1), MicroUsd(1), NOW);
        }
        let r = s.report(Some("a"), NOW);
        assert_eq!(r.len(), MAX_LINES + 1);
        assert_eq!(r.iter().find(|l| l.model == OTHER).map(|l| l.requests), Some(50));
        assert_eq!(r.iter().map(|l| l.cost_micro_usd).sum::<u64>(), (MAX_LINES + 50) as u64);
        let long = "é".repeat(200);
        assert!(s.line_key("b", &call(&long, "p", 0, 0)).1.len() <= MAX_NAME);
    }

    #[test]
    fn merged_reports_add_up() {
        let mut a = Spend::default();
        let mut b = Spend::default();
        a.add("k", &call("m", "p", 1, 2), MicroUsd(3), NOW);
        b.add("j", &call("m", "p", 4, 5), MicroUsd(6), NOW);
        let (ra, rb) = (a.report(None, NOW), b.report(None, NOW));
        let m = merge(&[&ra, &rb]);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].requests, m[0].prompt_tokens, m[0].completion_tokens, m[0].cost_micro_usd), (2, 5, 7, 9));
    }

    #[test]
    fn equal_costs_keep_model_and_provider_order() {
        let mut s = Spend::default();
        for (model, provider) in [("b", "p"), ("a", "q"), ("c", "p"), ("a", "p")] {
            s.add("k", &call(model, provider, 1, 1), MicroUsd(5), NOW);
        }
        s.add("k", &call("z", "p", 1, 1), MicroUsd(9), NOW);
        let order: Vec<(String, String)> = s.report(None, NOW).into_iter().map(|l| (l.model, l.provider)).collect();
        let want = [("z", "p"), ("a", "p"), ("a", "q"), ("b", "p"), ("c", "p")];
        assert_eq!(order, want.map(|(m, p)| (m.to_string(), p.to_string())));
    }

    #[test]
    fn a_job_keeps_its_first_owner_and_old_jobs_are_forgotten() {
        let mut j = Jobs::default();
        let row = |k: &str, at| JobRow { key_id: k.into(), poll_base: "/p".into(), at };
        j.own("x", row("a", NOW));
        j.own("x", row("b", NOW));
        assert_eq!(j.get("x").map(|r| r.key_id.as_str()), Some("a"));
        let later = UnixMillis(NOW.0 + JOB_TTL_MS);
        assert_eq!(j.own("y", row("a", later)), vec!["x".to_string()]);
        assert!(j.get("x").is_none());
        assert_eq!(j.len(), 1);
    }

    #[test]
    fn the_job_book_is_bounded() {
        let mut j = Jobs::default();
        for i in 0..MAX_JOBS + 10 {
            j.own(
                &format!("{i:06}"),
                JobRow { key_id: "a".into(), poll_base: "/p".into(), at: UnixMillis(NOW.0 + i as u64) },
            );
        }
        assert_eq!(j.len(), MAX_JOBS);
        assert!(j.get("000000").is_none(), "the oldest went first");
        assert!(j.get(&format!("{:06}", MAX_JOBS + 9)).is_some());
    }
}
