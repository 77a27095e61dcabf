//! How a proxied call is priced, decided once from its route and its body: what it may cost
//! at worst (the `Cost` the ledger reserves before it goes upstream) and the rule that settles
//! it once it is over (`CallPricing`).

use crate::core::account::Cost;
use crate::core::body::{CallShape, MIN_USEFUL_OUTPUT_TOKENS};
use crate::core::ledger::MicroUsd;
use crate::core::paths::Metering;
use crate::core::pricing::{ComputePrice, Price, TokenUsage};

/// The rule that settles a call once it is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallPricing {
    /// Token-priced: `prompt` and `completion` are the bounds of the body sent upstream.
    Tokens {
        price: Price,
        prompt: u64,
        completion: u64,
    },
    /// Priced by upstream time.
    Time(ComputePrice),
    Free,
}

impl CallPricing {
    /// The pricing of a call as sent: `output` is the output bound per choice it carries.
    pub fn of(metering: Metering, shape: Option<&CallShape>, price: Price, compute: ComputePrice, output: u64) -> Self {
        match (shape, metering) {
            (Some(sh), _) => {
                let bound = sh.worst_case(output);
                CallPricing::Tokens { price, prompt: bound.prompt, completion: bound.completion }
            }
            (None, Metering::Time) => CallPricing::Time(compute),
            (None, _) => CallPricing::Free,
        }
    }

    /// The cost of a call whose upstream gave no usage: the prompt bound and what was
    /// delivered (a token is at least a byte, or about an event), never past the bound.
    pub fn without_usage(&self, delivered: u64, elapsed_ms: u64) -> MicroUsd {
        match *self {
            CallPricing::Tokens { price, prompt, completion } => {
                price.cost(TokenUsage { prompt, completion: delivered.min(completion) })
            }
            CallPricing::Time(compute) => compute.cost_ms(elapsed_ms),
            CallPricing::Free => MicroUsd::ZERO,
        }
    }

    /// The cost of a call from upstream's `usage`, if it gave one.
    pub fn with_usage(&self, usage: Option<TokenUsage>, delivered: u64, elapsed_ms: u64) -> MicroUsd {
        match (self, usage) {
            (CallPricing::Tokens { price, .. }, Some(u)) => price.cost(u),
            _ => self.without_usage(delivered, elapsed_ms),
        }
    }

    pub fn is_tokens(&self) -> bool {
        matches!(self, CallPricing::Tokens { .. })
    }
}

/// What a call may cost at worst, as asked (`asked`: the output bound its body names, or the
/// plan's default): for a token-priced call the ledger may grant a lower output bound; a
/// time-billed call reserves its whole deadline.
pub fn worst_case(
    metering: Metering,
    shape: Option<&CallShape>,
    price: Price,
    compute: ComputePrice,
    deadline_ms: u64,
    asked: u64,
) -> Cost {
    match (shape, metering) {
        (Some(sh), _) => Cost::Tokens {
            price,
            prompt: sh.prompt_tokens,
            output: asked,
            choices: sh.choices,
            min_output: MIN_USEFUL_OUTPUT_TOKENS,
        },
        (None, Metering::Time) => Cost::Fixed { amount: compute.cost_ms(deadline_ms) },
        (None, _) => Cost::FREE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::body::inspect;
    use crate::core::paths::Api;

    const PRICE: Price = Price { input: 1_000_000, output: 2_000_000 };

    #[test]
    fn a_token_call_reserves_its_worst_case_and_settles_on_usage() {
        let shape =
            inspect(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":2}"#, Api::Chat, 1).unwrap();
        let metering = Metering::Tokens(Api::Chat);
        let compute = ComputePrice(0);
        let cost = worst_case(metering, Some(&shape), PRICE, compute, 1_000, 100);
        assert!(matches!(cost, Cost::Tokens { output: 100, choices: 2, .. }));
        let pricing = CallPricing::of(metering, Some(&shape), PRICE, compute, 100);
        let CallPricing::Tokens { completion, .. } = pricing else { panic!() };
        assert_eq!(completion, 200, "both choices");
        // with usage, usage; without, what was delivered within the bound
        assert_eq!(pricing.with_usage(Some(TokenUsage { prompt: 1, completion: 1 }), 0, 0), MicroUsd(3));
        assert_eq!(pricing.without_usage(u64::MAX, 0), pricing.without_usage(200, 0));
    }

    #[test]
    fn a_time_call_reserves_its_deadline_and_settles_on_upstream_time() {
        let compute = ComputePrice::parse("0.001").unwrap();
        let cost = worst_case(Metering::Time, None, PRICE, compute, 10_000, 0);
        assert_eq!(cost.full(), MicroUsd(10_000));
        let pricing = CallPricing::of(Metering::Time, None, PRICE, compute, 0);
        assert_eq!(pricing.with_usage(None, 0, 1_500), MicroUsd(1_500));
        assert_eq!(CallPricing::of(Metering::Unmetered, None, PRICE, compute, 0).without_usage(9, 9), MicroUsd::ZERO);
    }
}
