//! What a call costs: token prices per model and compute time for time-billed routes. The
//! token bounds that are priced before a call goes upstream are `core::body`'s.

use crate::core::ledger::MicroUsd;
use crate::core::setting_json::kind;
use crate::core::sorted::SortedMap;
use serde_json::Value;

/// Prices of one model in micro-USD per million tokens (so `$0.20 / 1M` is `200_000`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
}

/// Token counts as upstream reports them in `usage`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt: u64,
    pub completion: u64,
}

impl TokenUsage {
    /// The counts a `usage` gives, as a count to settle on: both sides or none (a side left
    /// out could be anything, and read as zero it would undercount), and a `total` above their
    /// sum taken as more output: tokens a provider bills outside the two counts (reasoning it
    /// counts apart), charged at the output's price, the dearer side of every price in use.
    ///
    /// ```
    /// use hf_gate::core::pricing::TokenUsage;
    /// assert_eq!(TokenUsage::reported(Some(7), None, Some(307)), None);
    /// assert_eq!(TokenUsage::reported(Some(7), Some(10), Some(307)), Some(TokenUsage { prompt: 7, completion: 300 }));
    /// assert_eq!(TokenUsage::reported(Some(7), Some(10), Some(3)), Some(TokenUsage { prompt: 7, completion: 10 }));
    /// ```
    pub fn reported(prompt: Option<u64>, completion: Option<u64>, total: Option<u64>) -> Option<TokenUsage> {
        let (prompt, completion) = (prompt?, completion?);
        let beyond = total.map_or(0, |t| t.saturating_sub(prompt.saturating_add(completion)));
        Some(TokenUsage { prompt, completion: completion.saturating_add(beyond) })
    }

    /// The larger of two counts, side by side: of two final counts, the one a provider may bill.
    pub fn max(self, other: TokenUsage) -> TokenUsage {
        TokenUsage { prompt: self.prompt.max(other.prompt), completion: self.completion.max(other.completion) }
    }
}

/// The `PRICES` setting: model id -> price, with `"*"` for unknown models.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceTable {
    models: SortedMap<String, Price>,
    fallback: Price,
}

/// The built-in table: a few common models at published per-token prices, and a cautious
/// default for everything else.
pub const DEFAULT_PRICES: &str = r#"{
  "*": {"input": 1.0, "output": 3.0},
  "meta-llama/Llama-3.1-8B-Instruct": {"input": 0.1, "output": 0.1},
  "meta-llama/Llama-3.3-70B-Instruct": {"input": 0.6, "output": 0.6},
  "Qwen/Qwen2.5-7B-Instruct": {"input": 0.3, "output": 0.3},
  "Qwen/Qwen3-32B": {"input": 0.4, "output": 0.8},
  "deepseek-ai/DeepSeek-V3": {"input": 1.25, "output": 1.25},
  "openai/gpt-oss-120b": {"input": 0.15, "output": 0.6},
  "openai/gpt-oss-20b": {"input": 0.05, "output": 0.2}
}"#;

impl PriceTable {
    /// Parses the `PRICES` JSON. Prices must be finite and non-negative; `"*"` is required.
    pub fn parse(json: &str) -> Result<Self, String> {
        let shape = |e: &dyn std::fmt::Display| format!("expected {{\"model\": {{\"input\": n, \"output\": n}}}}: {e}");
        let raw: Value = serde_json::from_slice(json.as_bytes()).map_err(|e| shape(&e))?;
        let raw = raw.as_object().ok_or_else(|| shape(&format!("invalid type: {}, expected a map", kind(&raw))))?;
        let mut models = SortedMap::new();
        let mut fallback = None;
        for (model, p) in raw {
            // read as serde read `{"input": f64, "output": f64}`: numbers, other fields ignored
            let usd = |name: &str| match p.get(name) {
                Some(v) => {
                    v.as_f64().ok_or_else(|| shape(&format!("{model}.{name}: invalid type: {}, expected f64", kind(v))))
                }
                None if p.is_object() => Err(shape(&format!("{model}: missing field `{name}`"))),
                None => Err(shape(&format!("{model}: invalid type: {}, expected a map", kind(p)))),
            };
            let price = Price {
                input: usd_per_million(usd("input")?, model)?,
                output: usd_per_million(usd("output")?, model)?,
            };
            if model == "*" {
                fallback = Some(price);
            } else {
                models.insert(model.clone(), price);
            }
        }
        let fallback = fallback.ok_or_else(|| "a \"*\" entry is required to price unknown models".to_string())?;
        Ok(PriceTable { models, fallback })
    }

    /// The entry for `key` (`"model"` or `"model:provider"`, in any case), with no suffix
    /// stripped and no fallback: the live price book needs to tell an operator's override from a gap.
    /// `"*"` is not an entry; it is `fallback()`.
    ///
    /// ```
    /// use hf_gate::core::pricing::{Price, PriceTable};
    /// let t = PriceTable::parse(r#"{"*": {"input": 1, "output": 3}, "m": {"input": 0.1, "output": 0.2}}"#).unwrap();
    /// assert_eq!(t.exact("m"), Some(Price { input: 100_000, output: 200_000 }));
    /// assert_eq!(t.exact("M"), t.exact("m"));
    /// let two = PriceTable::parse(r#"{"*": {"input": 1, "output": 1}, "a/B": {"input": 5, "output": 1}, "A/b": {"input": 1, "output": 7}}"#).unwrap();
    /// assert_eq!(two.exact("a/b"), Some(Price { input: 5_000_000, output: 7_000_000 }));
    /// assert_eq!(two.exact("A/b"), Some(Price { input: 1_000_000, output: 7_000_000 }));
    /// assert_eq!(t.exact("m:together"), None);
    /// assert_eq!(t.exact("*"), None);
    /// assert_eq!(t.fallback(), Price { input: 1_000_000, output: 3_000_000 });
    /// ```
    pub fn exact(&self, key: &str) -> Option<Price> {
        // Hub ids are case-insensitive (the router serves `org/Model` as `org/model`): an
        // entry stands for every spelling. The one written as it is comes first; of entries
        // that differ only in case, another spelling pays the dearest of each side.
        self.models.get(key).copied().or_else(|| {
            self.models.iter().filter(|(m, _)| m.eq_ignore_ascii_case(key)).map(|(_, p)| *p).reduce(Price::max)
        })
    }

    /// The `"*"` price: what prices a model nothing else prices.
    pub fn fallback(&self) -> Price {
        self.fallback
    }

    pub fn known_models(&self) -> impl Iterator<Item = (&str, Price)> {
        self.models.iter().map(|(m, p)| (m.as_str(), *p))
    }
}

fn usd_per_million(v: f64, model: &str) -> Result<u64, String> {
    if !v.is_finite() || !(0.0..=1e6).contains(&v) {
        return Err(format!("price for {model} must be a non-negative number of USD per 1M tokens"));
    }
    Ok((v * 1e6).round() as u64)
}

impl Price {
    /// The dearer of two prices, side by side: what covers a call either may price.
    ///
    /// ```
    /// use hf_gate::core::pricing::Price;
    /// let a = Price { input: 5, output: 1 };
    /// assert_eq!(a.max(Price { input: 1, output: 7 }), Price { input: 5, output: 7 });
    /// ```
    pub fn max(self, other: Price) -> Price {
        Price { input: self.input.max(other.input), output: self.output.max(other.output) }
    }

    /// `prompt x input + completion x output`, rounded up to the micro-USD.
    ///
    /// ```
    /// use hf_gate::core::pricing::{Price, TokenUsage};
    /// let p = Price { input: 200_000, output: 600_000 }; // $0.20 and $0.60 per 1M
    /// let u = TokenUsage { prompt: 1_000, completion: 500 };
    /// assert_eq!(p.cost(u).0, 200 + 300);
    /// ```
    pub fn cost(&self, usage: TokenUsage) -> MicroUsd {
        let pico = u128::from(usage.prompt)
            .saturating_mul(u128::from(self.input))
            .saturating_add(u128::from(usage.completion).saturating_mul(u128::from(self.output)));
        MicroUsd(u64::try_from(pico.div_ceil(1_000_000)).unwrap_or(u64::MAX))
    }

    /// The largest output bound (per choice, at most `wanted`) whose worst case fits in
    /// `budget`: what a call may still generate when the credit cannot cover all it asked.
    /// `None` when not even the prompt fits.
    ///
    /// ```
    /// use hf_gate::core::ledger::MicroUsd;
    /// use hf_gate::core::pricing::{Price, TokenUsage};
    /// let p = Price { input: 1_000_000, output: 2_000_000 }; // $1 and $2 per 1M
    /// // 100 prompt tokens cost 100; 1000 left buys 450 output tokens in all, 225 per choice
    /// assert_eq!(p.affordable_output(MicroUsd(1_000), 100, 2, 4_096), Some(225));
    /// assert_eq!(p.cost(TokenUsage { prompt: 100, completion: 450 }), MicroUsd(1_000));
    /// assert_eq!(p.affordable_output(MicroUsd(99), 100, 1, 4_096), None);
    /// ```
    pub fn affordable_output(&self, budget: MicroUsd, prompt: u64, choices: u64, wanted: u64) -> Option<u64> {
        let fits = |out: u64| self.cost(TokenUsage { prompt, completion: out.saturating_mul(choices) }) <= budget;
        if !fits(0) {
            return None;
        }
        if fits(wanted) {
            return Some(wanted);
        }
        // the cost is monotonic in the output: search for the last bound that fits
        let (mut lo, mut hi) = (0u64, wanted);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Some(lo)
    }
}

/// Compute price in nano-USD per second (`0.00012` USD/s is `120_000`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComputePrice(pub u64);

impl ComputePrice {
    pub fn parse(s: &str) -> Result<Self, String> {
        let v = crate::core::decimal::parse(s.trim())
            .ok_or_else(|| "expected a decimal USD per second, like 0.00012".to_string())?;
        if !v.is_finite() || !(0.0..=1000.0).contains(&v) {
            return Err("must be between 0 and 1000 USD per second".into());
        }
        Ok(ComputePrice((v * 1e9).round() as u64))
    }

    /// Cost of `elapsed_ms` of compute, rounded up to the micro-USD.
    ///
    /// ```
    /// use hf_gate::core::pricing::ComputePrice;
    /// let p = ComputePrice::parse("0.00012").unwrap();
    /// assert_eq!(p.cost_ms(1_000).0, 120);
    /// assert_eq!(p.cost_ms(1).0, 1);
    /// ```
    pub fn cost_ms(&self, elapsed_ms: u64) -> MicroUsd {
        let nano_ms = u128::from(elapsed_ms) * u128::from(self.0);
        MicroUsd(u64::try_from(nano_ms.div_ceil(1_000_000)).unwrap_or(u64::MAX))
    }
}

crate::core::wire::json_struct!(Price { input, output });
crate::core::wire::json_struct!(TokenUsage { prompt, completion });
crate::core::wire::json_newtype!(ComputePrice);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_table_parses_and_prices_unknown_models() {
        let t = PriceTable::parse(DEFAULT_PRICES).unwrap();
        assert_eq!(t.exact("meta-llama/Llama-3.1-8B-Instruct"), Some(Price { input: 100_000, output: 100_000 }));
        assert_eq!(t.exact("someone/new-model"), None);
        assert_eq!(t.fallback(), Price { input: 1_000_000, output: 3_000_000 });
    }

    #[test]
    fn exact_lookups_strip_nothing_and_fall_back_to_nothing() {
        let t = PriceTable::parse(
            r#"{"*": {"input": 1, "output": 1}, "m": {"input": 2, "output": 2}, "m:groq": {"input": 3, "output": 3}}"#,
        )
        .unwrap();
        assert_eq!(t.exact("m:groq"), Some(Price { input: 3_000_000, output: 3_000_000 }));
        assert_eq!(t.exact("m:together"), None);
        assert_eq!(t.exact("other"), None);
        assert_eq!(t.exact("m"), Some(Price { input: 2_000_000, output: 2_000_000 }));
    }

    #[test]
    fn bad_tables_are_refused_with_a_reason() {
        assert!(PriceTable::parse(r#"{"m": {"input": 1, "output": 1}}"#).unwrap_err().contains("\"*\""));
        assert!(PriceTable::parse(r#"{"*": {"input": -1, "output": 1}}"#).is_err());
        assert!(PriceTable::parse(r#"{"*": {"input": "1", "output": 1}}"#).is_err());
        assert!(PriceTable::parse("[]").is_err());
        assert!(PriceTable::parse(r#"{"*": 1}"#).is_err());
        assert!(PriceTable::parse(r#"{"*": {"input": 1}}"#).unwrap_err().contains("missing field `output`"));
        // other fields are ignored, as serde's derive ignored them
        let t = PriceTable::parse(r#"{"*": {"input": 1, "output": 2, "note": "x"}}"#).unwrap();
        assert_eq!(t.fallback(), Price { input: 1_000_000, output: 2_000_000 });
    }

    #[test]
    fn costs_round_up_and_never_overflow() {
        let p = Price { input: 1, output: 1 };
        assert_eq!(p.cost(TokenUsage { prompt: 1, completion: 0 }), MicroUsd(1));
        let huge = Price { input: u64::MAX, output: u64::MAX };
        assert_eq!(huge.cost(TokenUsage { prompt: u64::MAX, completion: u64::MAX }), MicroUsd(u64::MAX));
    }
}
