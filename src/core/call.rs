//! How a proxied call is priced, decided once from its route and its body: what it may cost
//! at worst (the `Cost` the ledger reserves before it goes upstream) and the rule that settles
//! it once it is over (`CallPricing`).

use crate::core::account::Cost;
use crate::core::body::{CallShape, MIN_USEFUL_OUTPUT_TOKENS};
use crate::core::endpoints::EndpointPrice;
use crate::core::ledger::MicroUsd;
use crate::core::paths::Metering;
use crate::core::pricing::{ComputePrice, Price, TokenUsage};
use crate::core::route_prices::RouteRate;

/// What a call is priced by, chosen once from its route (and, for a dedicated endpoint, the
/// endpoint's own price).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// Per token (the price reserved at: for an unpinned call, the dearest live provider's).
    Tokens(Price),
    /// Per second of upstream time.
    Time(ComputePrice),
    /// One price per call.
    Fixed(MicroUsd),
    Free,
    /// Nothing prices it: a route with no token usage and no `ROUTE_PRICES` entry. Refused
    /// for keys billed to credits; a price is never guessed.
    Unpriced,
}

/// Where a call goes, as far as its price is concerned.
pub struct RateInputs<'a> {
    pub metering: Metering,
    /// A dedicated endpoint's price, for `/endpoints/...` calls.
    pub endpoint: Option<&'a EndpointPrice>,
    /// The token price the call reserves at (from the price book and `PRICES`).
    pub token_price: Price,
    /// The `ROUTE_PRICES` entry the path or model matches.
    pub route_rate: Option<RouteRate>,
    /// Whether the call submits a queued job or a prediction.
    pub job: bool,
    /// The provider the path names.
    pub provider: Option<&'a str>,
    /// `COMPUTE_USD_PER_SECOND`.
    pub compute: ComputePrice,
    /// How many outputs the body asks for (`n`, `num_images`, ...): a per-request price is
    /// paid for each.
    pub outputs: u64,
    /// The megapixels of one image the body asks for, if it names a size: a per-megapixel
    /// price is paid for each, per output.
    pub megapixels: Option<u64>,
}

/// The rate of a call. A route that reports no usage is priced by `ROUTE_PRICES` (a price
/// per request paid once per output the body asks for); failing that, `hf-inference` by
/// upstream time (`COMPUTE_USD_PER_SECOND`), and every other provider's route (image and
/// video jobs, whose price per second would say nothing) is unpriced: no price is guessed.
///
/// ```
/// use hf_gate::core::call::{rate, Rate, RateInputs};
/// use hf_gate::core::ledger::MicroUsd;
/// use hf_gate::core::paths::Metering;
/// use hf_gate::core::pricing::{ComputePrice, Price};
/// use hf_gate::core::route_prices::RouteRate;
/// let base = RateInputs {
///     metering: Metering::Time, endpoint: None, token_price: Price { input: 1, output: 1 },
///     route_rate: None, job: true, provider: Some("fal-ai"), compute: ComputePrice(120_000), outputs: 1,
///     megapixels: None,
/// };
/// assert_eq!(rate(&base), Rate::Unpriced);
/// let priced = RateInputs { route_rate: Some(RouteRate::PerRequest(MicroUsd(40_000))), outputs: 3, ..base };
/// assert_eq!(rate(&priced), Rate::Fixed(MicroUsd(120_000)));
/// assert_eq!(rate(&RateInputs { job: false, provider: Some("hf-inference"), ..base }), Rate::Time(ComputePrice(120_000)));
/// ```
pub fn rate(i: &RateInputs<'_>) -> Rate {
    let by_route = |r: RouteRate| match r {
        RouteRate::PerRequest(amount) => Rate::Fixed(MicroUsd(amount.0.saturating_mul(i.outputs.max(1)))),
        RouteRate::PerSecond(c) => Rate::Time(c),
        RouteRate::PerMegapixel { price, default_megapixels } => {
            let megapixels = i.megapixels.unwrap_or(default_megapixels);
            Rate::Fixed(MicroUsd(price.0.saturating_mul(megapixels).saturating_mul(i.outputs.max(1))))
        }
    };
    if let Some(price) = i.endpoint {
        return match (price, i.metering) {
            (EndpointPrice::Free, _) => Rate::Free,
            (EndpointPrice::PerHour(c), _) => Rate::Time(*c),
            (EndpointPrice::Tokens(p), Metering::Tokens(_)) => Rate::Tokens(*p),
            // a token-priced endpoint on a path that reports no tokens: by upstream time
            (EndpointPrice::Tokens(_), _) => Rate::Time(i.compute),
        };
    }
    match i.metering {
        Metering::Tokens(_) => Rate::Tokens(i.token_price),
        Metering::Unmetered => Rate::Free,
        Metering::Time => match (i.route_rate, i.job || i.provider != Some("hf-inference")) {
            (Some(r), _) => by_route(r),
            (None, true) => Rate::Unpriced,
            (None, false) => Rate::Time(i.compute),
        },
    }
}

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
    /// One price per call (a queued job, a prediction).
    Fixed(MicroUsd),
    Free,
}

impl CallPricing {
    /// The pricing of a call as sent: `output` is the output bound per choice it carries.
    pub fn of(rate: Rate, shape: Option<&CallShape>, output: u64) -> Self {
        match (rate, shape) {
            (Rate::Tokens(price), Some(sh)) => {
                let bound = sh.worst_case(output);
                CallPricing::Tokens { price, prompt: bound.prompt, completion: bound.completion }
            }
            (Rate::Time(compute), _) => CallPricing::Time(compute),
            (Rate::Fixed(amount), _) => CallPricing::Fixed(amount),
            (Rate::Tokens(_), None) | (Rate::Free, _) | (Rate::Unpriced, _) => CallPricing::Free,
        }
    }

    /// The most the call can cost as sent, and the tokens that is counted at: what it is
    /// charged when its usage cannot be learned (a time-billed call: the time it ran).
    pub fn bound(&self, elapsed_ms: u64) -> (MicroUsd, TokenUsage) {
        match *self {
            CallPricing::Tokens { price, prompt, completion } => {
                let tokens = TokenUsage { prompt, completion };
                (price.cost(tokens), tokens)
            }
            other => (other.without_usage(0, elapsed_ms), TokenUsage::default()),
        }
    }

    /// The cost of a call whose upstream gave no usage: the prompt bound and what was
    /// delivered (in bytes: a delivered token is at least one), never past the bound.
    pub fn without_usage(&self, delivered: u64, elapsed_ms: u64) -> MicroUsd {
        match *self {
            CallPricing::Tokens { price, prompt, completion } => {
                price.cost(TokenUsage { prompt, completion: delivered.min(completion) })
            }
            CallPricing::Time(compute) => compute.cost_ms(elapsed_ms),
            CallPricing::Fixed(amount) => amount,
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

    /// The cost, and the tokens it was counted at: upstream's `usage`, or for a token-priced
    /// call without one, the prompt bound and what was delivered.
    pub fn charge(&self, usage: Option<TokenUsage>, delivered: u64, elapsed_ms: u64) -> (MicroUsd, TokenUsage) {
        let cost = self.with_usage(usage, delivered, elapsed_ms);
        let tokens = match (*self, usage) {
            (_, Some(u)) => u,
            (CallPricing::Tokens { prompt, completion, .. }, None) => {
                TokenUsage { prompt, completion: delivered.min(completion) }
            }
            _ => TokenUsage::default(),
        };
        (cost, tokens)
    }

    /// The same rule at another token price (the price of the provider that served the call).
    pub fn at_price(self, served: Price) -> Self {
        match self {
            CallPricing::Tokens { prompt, completion, .. } => CallPricing::Tokens { price: served, prompt, completion },
            other => other,
        }
    }

    pub fn is_tokens(&self) -> bool {
        matches!(self, CallPricing::Tokens { .. })
    }

    /// A token call with no output to bound (embeddings): its usage counts a prompt only.
    pub fn reads_prompt_only(&self) -> bool {
        matches!(self, CallPricing::Tokens { completion: 0, .. })
    }
}

/// What a call may cost at worst, as asked (`asked`: the output bound its body names, or the
/// plan's default): for a token-priced call the ledger may grant a lower output bound (the
/// body sent carries it); a time-billed call reserves its whole deadline or is refused, never
/// a shorter run, since cutting the connection does not stop the upstream's meter (a model
/// server goes on computing, and bills, what it started); a fixed-price call its price.
pub fn worst_case(rate: Rate, shape: Option<&CallShape>, deadline_ms: u64, asked: u64) -> Cost {
    match (rate, shape) {
        (Rate::Tokens(price), Some(sh)) => Cost::Tokens {
            price,
            prompt: sh.prompt_tokens,
            output: asked,
            choices: sh.choices,
            // an API that generates nothing (embeddings) is admitted on its prompt alone
            min_output: if sh.api.generates() { MIN_USEFUL_OUTPUT_TOKENS } else { 0 },
        },
        (Rate::Time(compute), _) => Cost::Time { price: compute, ms: deadline_ms, min_ms: deadline_ms },
        (Rate::Fixed(amount), _) => Cost::Fixed { amount },
        (Rate::Tokens(_), None) | (Rate::Free, _) | (Rate::Unpriced, _) => Cost::FREE,
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
        let cost = worst_case(Rate::Tokens(PRICE), Some(&shape), 1_000, 100);
        assert!(matches!(cost, Cost::Tokens { output: 100, choices: 2, .. }));
        let pricing = CallPricing::of(Rate::Tokens(PRICE), Some(&shape), 100);
        let CallPricing::Tokens { completion, .. } = pricing else { panic!() };
        assert_eq!(completion, 200, "both choices");
        // with usage, usage; without, the whole bound
        assert_eq!(pricing.with_usage(Some(TokenUsage { prompt: 1, completion: 1 }), 0, 0), MicroUsd(3));
        let (bound, tokens) = pricing.bound(0);
        assert_eq!(tokens.completion, 200);
        assert_eq!(bound, cost.full());
    }

    #[test]
    fn a_time_call_reserves_its_deadline_and_settles_on_upstream_time() {
        let compute = ComputePrice::parse("0.001").unwrap();
        let cost = worst_case(Rate::Time(compute), None, 10_000, 0);
        assert_eq!(cost.full(), MicroUsd(10_000));
        // whole or not at all: a shorter run would be cut, and the upstream bills on
        assert!(matches!(cost, Cost::Time { ms: 10_000, min_ms: 10_000, .. }));
        let pricing = CallPricing::of(Rate::Time(compute), None, 0);
        assert_eq!(pricing.with_usage(None, 0, 1_500), MicroUsd(1_500));
        assert_eq!(CallPricing::of(Rate::Free, None, 0).without_usage(9, 9), MicroUsd::ZERO);
    }

    #[test]
    fn a_job_is_one_charge_whatever_it_reports() {
        let cost = worst_case(Rate::Fixed(MicroUsd(20_000)), None, 10_000, 0);
        assert_eq!(cost.full(), MicroUsd(20_000));
        let pricing = CallPricing::of(Rate::Fixed(MicroUsd(20_000)), None, 0);
        let (charged, tokens) = pricing.charge(None, 123_456, 99_000);
        assert_eq!((charged, tokens), (MicroUsd(20_000), TokenUsage::default()));
    }

    #[test]
    fn rates_follow_the_route_then_the_endpoint() {
        let compute = ComputePrice(120_000);
        let base = RateInputs {
            metering: Metering::Time,
            endpoint: None,
            token_price: PRICE,
            route_rate: None,
            job: false,
            provider: Some("hf-inference"),
            compute,
            outputs: 1,
            megapixels: None,
        };
        assert_eq!(rate(&base), Rate::Time(compute));
        let per_call = RouteRate::PerRequest(MicroUsd(5));
        assert_eq!(rate(&RateInputs { route_rate: Some(per_call), ..base }), Rate::Fixed(MicroUsd(5)));
        // a price per request is paid for each output the body asks for
        assert_eq!(rate(&RateInputs { route_rate: Some(per_call), outputs: 4, ..base }), Rate::Fixed(MicroUsd(20)));
        // a price per megapixel for each megapixel of each output, the route's default size
        // when the body names none
        let per_mp = RouteRate::PerMegapixel { price: MicroUsd(25_000), default_megapixels: 2 };
        let image = RateInputs { route_rate: Some(per_mp), provider: Some("fal-ai"), outputs: 4, ..base };
        assert_eq!(rate(&RateInputs { megapixels: Some(16), ..image }), Rate::Fixed(MicroUsd(1_600_000)));
        assert_eq!(rate(&image), Rate::Fixed(MicroUsd(200_000)));
        // another provider's route that reports no usage and that nothing prices: no guess
        assert_eq!(rate(&RateInputs { provider: Some("fal-ai"), ..base }), Rate::Unpriced);
        let chat = RateInputs { metering: Metering::Tokens(Api::Chat), ..base };
        assert_eq!(rate(&chat), Rate::Tokens(PRICE));
        let hourly = EndpointPrice::PerHour(ComputePrice(1_000_000));
        assert_eq!(rate(&RateInputs { endpoint: Some(&hourly), ..chat }), Rate::Time(ComputePrice(1_000_000)));
        let tokens = EndpointPrice::Tokens(Price { input: 2, output: 4 });
        assert_eq!(rate(&RateInputs { endpoint: Some(&tokens), ..chat }), Rate::Tokens(Price { input: 2, output: 4 }));
        assert_eq!(rate(&RateInputs { endpoint: Some(&EndpointPrice::Free), ..chat }), Rate::Free);
        assert_eq!(rate(&RateInputs { metering: Metering::Unmetered, ..base }), Rate::Free);
    }
}
