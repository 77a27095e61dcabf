//! `ROUTE_PRICES`: what a call that reports no token usage costs, for queued jobs and
//! predictions (fal-ai's queue, Replicate) and any other route the operator prices by the
//! request or by the second.
//!
//! Such calls say nothing priceable in their answers, so the operator names the price: a
//! pattern (a path without its leading `/`, or a model id; exact, or ending in `*` for a
//! prefix) maps to `{"per_request": USD}` or `{"per_second": USD}`. When nothing matches, the
//! route is not priced and credit-billed keys are refused it (`route_not_priced`): a guessed
//! price is wrong both ways, and a low one lets upstream bill more than the ledger charged.

use crate::core::ledger::MicroUsd;
use crate::core::pricing::ComputePrice;
use crate::core::setting_json::{kind, Fields};
use serde_json::Value;

/// What one call on a route costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteRate {
    /// A flat price per call.
    PerRequest(MicroUsd),
    /// A price per second of upstream time.
    PerSecond(ComputePrice),
    /// A price per megapixel of every image asked for (fal's FLUX, Together's images), with
    /// the megapixels an image is counted at when the body names no size (the model's default).
    PerMegapixel { price: MicroUsd, default_megapixels: u64 },
}

/// The most a route may cost, per request or per second.
pub const MAX_ROUTE_USD: f64 = 1000.0;
/// Patterns longer than a path may be are refused.
pub const MAX_PATTERN_LEN: usize = crate::core::paths::MAX_PATH_LEN;

/// The parsed `ROUTE_PRICES` setting.
///
/// ```
/// use hf_gate::core::ledger::MicroUsd;
/// use hf_gate::core::route_prices::{RoutePrices, RouteRate};
/// let r = RoutePrices::parse(r#"{"fal-ai/*": {"per_request": 0.05},
///                                "fal-ai/fal-ai/wan/*": {"per_request": 0.4}}"#).unwrap();
/// assert_eq!(r.rate_for("/fal-ai/fal-ai/wan/t2v", None), Some(RouteRate::PerRequest(MicroUsd(400_000))));
/// assert_eq!(r.rate_for("/fal-ai/fal-ai/flux/dev", None), Some(RouteRate::PerRequest(MicroUsd(50_000))));
/// assert_eq!(r.rate_for("/replicate/v1/predictions", None), None);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoutePrices {
    /// Exact patterns, in name order (a handful; a map of their own would be one more
    /// hash table instance in the bundle).
    exact: Vec<(String, RouteRate)>,
    /// Prefix patterns without their `*`, longest first, so the first that matches wins.
    prefixes: Vec<(String, RouteRate)>,
}

impl RoutePrices {
    /// Parses the `ROUTE_PRICES` JSON object. Every error names the pattern it is about.
    pub fn parse(json: &str) -> Result<RoutePrices, String> {
        let shape = "expected {\"pattern\": {\"per_request\": USD} or {\"per_second\": USD}}";
        let raw = match serde_json::from_slice(json.as_bytes()).map_err(|e| format!("{shape}: {e}"))? {
            Value::Object(map) => map,
            other => return Err(format!("{shape}: invalid type: {}, expected a map", kind(&other))),
        };
        let mut prices = RoutePrices::empty();
        for (pattern, value) in raw {
            check_pattern(&pattern)?;
            let (kind, bare) = match pattern.strip_suffix('*') {
                Some(prefix) => (&prices.prefixes, prefix),
                None => (&prices.exact, pattern.as_str()),
            };
            let twin = kind.iter().map(|(p, _)| p.as_str()).find(|p| p.eq_ignore_ascii_case(bare));
            if let Some(twin) = twin {
                // which of the two a third spelling would pay is not for the gateway to guess
                return Err(format!("pattern {pattern:?} differs from {twin:?} only in case: keep one"));
            }
            let rate = parse_rate(&pattern, &value)?;
            match pattern.strip_suffix('*') {
                Some(prefix) => prices.prefixes.push((prefix.to_string(), rate)),
                None => prices.exact.push((pattern, rate)),
            }
        }
        // a handful of patterns: the small sort, not a second copy of the standard one
        crate::core::sort::sort_small_by(&mut prices.prefixes, |a, b| {
            b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0))
        });
        Ok(prices)
    }

    /// No route priced.
    pub fn empty() -> RoutePrices {
        RoutePrices::default()
    }

    /// The rate for a call. The candidates are the path (its leading `/` removed) and the
    /// model, if any, on the same footing, in any case (the Hub reads ids in any case, so a
    /// cheap catch-all does not price another spelling of a dearer exact pattern; `parse`
    /// refuses two patterns that differ only in case): an exact match beats any prefix match,
    /// and among prefixes the longest wins. Of two exact matches the longer pattern wins; on a
    /// tie the path does. `None` when nothing matches (the route is then not priced).
    pub fn rate_for(&self, path: &str, model: Option<&str>) -> Option<RouteRate> {
        let path = path.strip_prefix('/').unwrap_or(path);
        let candidates = [Some(path), model];
        let exact = candidates
            .iter()
            .flatten()
            .filter_map(|c| {
                self.exact.iter().find(|(p, _)| p.eq_ignore_ascii_case(c)).map(|(_, rate)| (c.len(), *rate))
            })
            .reduce(|best, next| if next.0 > best.0 { next } else { best });
        if let Some((_, rate)) = exact {
            return Some(rate);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| candidates.iter().flatten().any(|c| starts_with_ignoring_case(c, prefix)))
            .map(|(_, rate)| *rate)
    }

    /// How many patterns are priced.
    pub fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `s` starts with `prefix`, ASCII case aside: a model id in a path is a Hub id,
/// which the Hub reads in any case.
fn starts_with_ignoring_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn check_pattern(pattern: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("pattern {pattern:?} {why}"));
    if pattern.is_empty() {
        return bad("is empty");
    }
    if pattern.len() > MAX_PATTERN_LEN {
        return bad("is too long");
    }
    if pattern.starts_with('/') {
        return bad("must not start with '/': write paths without it, like \"fal-ai/*\"");
    }
    if !pattern.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("has spaces or characters that are not allowed");
    }
    if pattern.find('*').is_some_and(|at| at != pattern.len() - 1) {
        return bad("may only have a '*' at its end");
    }
    Ok(())
}

fn parse_rate(pattern: &str, value: &Value) -> Result<RouteRate, String> {
    let shape = "{\"per_request\": USD}, {\"per_second\": USD} or {\"per_megapixel\": USD, \"default_megapixels\"?: n}";
    let bad = |e: String| format!("pattern {pattern:?}: expected {shape}: {e}");
    let raw = Fields::of(value, &["per_request", "per_second", "per_megapixel", "default_megapixels"]).map_err(bad)?;
    let number = |f: &str| raw.number(f).map_err(bad);
    let (per_request, per_second, per_megapixel) =
        (number("per_request")?, number("per_second")?, number("per_megapixel")?);
    let default_megapixels = number("default_megapixels")?;
    let usd = |v: f64| -> Result<f64, String> {
        if v.is_finite() && (0.0..=MAX_ROUTE_USD).contains(&v) {
            Ok(v)
        } else {
            Err(format!("pattern {pattern:?}: a price must be between 0 and {MAX_ROUTE_USD} USD"))
        }
    };
    if default_megapixels.is_some() && per_megapixel.is_none() {
        return Err(format!("pattern {pattern:?}: default_megapixels goes with per_megapixel"));
    }
    match (per_request, per_second, per_megapixel) {
        (Some(v), None, None) => Ok(RouteRate::PerRequest(MicroUsd((usd(v)? * 1e6).round() as u64))),
        (None, Some(v), None) => Ok(RouteRate::PerSecond(ComputePrice((usd(v)? * 1e9).round() as u64))),
        (None, None, Some(v)) => {
            let default_megapixels = match default_megapixels {
                None => 1,
                Some(n) if n.fract() == 0.0 && (1.0..=MAX_DEFAULT_MEGAPIXELS).contains(&n) => n as u64,
                Some(_) => {
                    return Err(format!(
                    "pattern {pattern:?}: default_megapixels must be a whole number from 1 to {MAX_DEFAULT_MEGAPIXELS}"
                ))
                }
            };
            Ok(RouteRate::PerMegapixel { price: MicroUsd((usd(v)? * 1e6).round() as u64), default_megapixels })
        }
        _ => Err(format!("pattern {pattern:?}: expected exactly one of {shape}")),
    }
}

/// The most megapixels a route's default image may count.
const MAX_DEFAULT_MEGAPIXELS: f64 = 4096.0;

#[cfg(test)]
mod tests {
    use super::*;

    fn per_request(usd_micro: u64) -> Option<RouteRate> {
        Some(RouteRate::PerRequest(MicroUsd(usd_micro)))
    }

    #[test]
    fn both_rates_parse_in_their_units() {
        let r = RoutePrices::parse(
            r#"{"replicate/v1/models/black-forest-labs/flux-schnell/predictions": {"per_request": 0.003},
                "hf-inference/*": {"per_second": 0.00012}}"#,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r.rate_for("/replicate/v1/models/black-forest-labs/flux-schnell/predictions", None),
            per_request(3_000)
        );
        assert_eq!(
            r.rate_for("/hf-inference/models/BAAI/bge-small-en-v1.5", None),
            Some(RouteRate::PerSecond(ComputePrice(120_000)))
        );
        assert_eq!(RoutePrices::parse("{}").unwrap(), RoutePrices::empty());
        assert!(RoutePrices::empty().is_empty());
        assert_eq!(RoutePrices::empty().rate_for("/fal-ai/x", Some("x")), None);
    }

    #[test]
    fn a_route_or_model_spelled_in_another_case_matches_its_pattern() {
        // a cheap catch-all must not price `FLUX/DEV` when the exact pattern is dearer
        let r = RoutePrices::parse(
            r#"{"fal-ai/*": {"per_request": 0.001},
                "fal-ai/fal-ai/flux/dev": {"per_request": 0.025},
                "Black-Forest-Labs/*": {"per_second": 0.0002}}"#,
        )
        .unwrap();
        assert_eq!(r.rate_for("/fal-ai/fal-ai/FLUX/Dev", None), per_request(25_000));
        assert_eq!(r.rate_for("/fal-ai/x", Some("FAL-AI/FLUX/DEV")), per_request(1_000));
        assert_eq!(
            r.rate_for("/hf-inference/models/black-forest-labs/FLUX.1-dev", Some("black-forest-labs/FLUX.1-dev")),
            Some(RouteRate::PerSecond(ComputePrice(200_000)))
        );
    }

    #[test]
    fn a_price_per_megapixel_parses_with_its_default_size() {
        let r = RoutePrices::parse(
            r#"{"fal-ai/fal-ai/flux/dev": {"per_megapixel": 0.025},
                "fal-ai/fal-ai/flux-pro/*": {"per_megapixel": 0.05, "default_megapixels": 4}}"#,
        )
        .unwrap();
        assert_eq!(
            r.rate_for("/fal-ai/fal-ai/flux/dev", None),
            Some(RouteRate::PerMegapixel { price: MicroUsd(25_000), default_megapixels: 1 })
        );
        assert_eq!(
            r.rate_for("/fal-ai/fal-ai/flux-pro/v1.1", None),
            Some(RouteRate::PerMegapixel { price: MicroUsd(50_000), default_megapixels: 4 })
        );
        for bad in [
            r#"{"x": {"per_megapixel": 0.02, "per_request": 0.02}}"#,
            r#"{"x": {"per_request": 0.02, "default_megapixels": 2}}"#,
            r#"{"x": {"per_megapixel": 0.02, "default_megapixels": 0}}"#,
            r#"{"x": {"per_megapixel": 0.02, "default_megapixels": 1.5}}"#,
        ] {
            assert!(RoutePrices::parse(bad).unwrap_err().contains("\"x\""), "{bad}");
        }
    }

    #[test]
    fn patterns_that_differ_only_in_case_are_refused() {
        // which of the two a third spelling would pay is not for the gateway to guess
        for twins in [
            r#"{"fal-ai/fal-ai/FLUX/dev": {"per_request": 0.001}, "fal-ai/fal-ai/flux/dev": {"per_request": 0.025}}"#,
            r#"{"fal-ai/FLUX/*": {"per_request": 0.001}, "fal-ai/flux/*": {"per_request": 0.05}}"#,
        ] {
            assert!(RoutePrices::parse(twins).unwrap_err().contains("only in case"), "{twins}");
        }
        // an exact pattern and a prefix of the same letters are not twins
        assert!(RoutePrices::parse(r#"{"a/B": {"per_request": 1}, "a/b*": {"per_request": 2}}"#).is_ok());
    }

    #[test]
    fn an_exact_match_beats_any_prefix_and_the_longest_prefix_wins() {
        let r = RoutePrices::parse(
            r#"{"*": {"per_request": 1},
                "fal-ai/*": {"per_request": 2},
                "fal-ai/fal-ai/*": {"per_request": 3},
                "fal-ai/fal-ai/flux/dev": {"per_request": 4},
                "black-forest-labs/FLUX.1-dev": {"per_request": 5},
                "black-forest-labs/*": {"per_request": 6}}"#,
        )
        .unwrap();
        assert_eq!(r.rate_for("/fal-ai/fal-ai/flux/dev", None), per_request(4_000_000));
        assert_eq!(r.rate_for("/fal-ai/fal-ai/flux/schnell", None), per_request(3_000_000));
        assert_eq!(r.rate_for("/fal-ai/bytedance/x", None), per_request(2_000_000));
        assert_eq!(r.rate_for("/replicate/v1/predictions", None), per_request(1_000_000));
        // the model competes with the path: its exact match beats the path's prefixes
        assert_eq!(
            r.rate_for("/fal-ai/fal-ai/flux/schnell", Some("black-forest-labs/FLUX.1-dev")),
            per_request(5_000_000)
        );
        // and the path's exact match beats the model's prefix
        assert_eq!(r.rate_for("/fal-ai/fal-ai/flux/dev", Some("black-forest-labs/other")), per_request(4_000_000));
        // between prefixes, length decides, whichever candidate matched
        assert_eq!(r.rate_for("/replicate/v1/predictions", Some("black-forest-labs/other")), per_request(6_000_000));
    }

    #[test]
    fn of_two_exact_matches_the_longer_wins_and_a_tie_goes_to_the_path() {
        let r = RoutePrices::parse(r#"{"a/b": {"per_request": 1}, "a/bc": {"per_request": 2}}"#).unwrap();
        assert_eq!(r.rate_for("/a/b", Some("a/bc")), per_request(2_000_000));
        let r = RoutePrices::parse(r#"{"a/b": {"per_request": 1}, "c/d": {"per_request": 2}}"#).unwrap();
        assert_eq!(r.rate_for("/a/b", Some("c/d")), per_request(1_000_000));
        assert_eq!(r.rate_for("a/b", None), per_request(1_000_000));
    }

    #[test]
    fn every_bad_entry_is_refused_naming_its_pattern() {
        for (json, pattern) in [
            (r#"{"p/x": {}}"#, "p/x"),
            (r#"{"p/x": {"per_request": 1, "per_second": 1}}"#, "p/x"),
            (r#"{"p/x": {"per_request": -1}}"#, "p/x"),
            (r#"{"p/x": {"per_request": 1001}}"#, "p/x"),
            (r#"{"p/x": {"per_second": 1000.5}}"#, "p/x"),
            (r#"{"p/x": {"per_request": "0.1"}}"#, "p/x"),
            (r#"{"p/x": {"per_call": 0.1}}"#, "p/x"),
            (r#"{"p/x": 0.1}"#, "p/x"),
            (r#"{"/fal-ai/*": {"per_request": 0.1}}"#, "/fal-ai/*"),
            (r#"{"fal-ai/*/x": {"per_request": 0.1}}"#, "fal-ai/*/x"),
            (r#"{"fal ai": {"per_request": 0.1}}"#, "fal ai"),
        ] {
            let e = RoutePrices::parse(json).unwrap_err();
            assert!(e.contains(&format!("{pattern:?}")), "{json}: {e}");
        }
        assert!(RoutePrices::parse(r#"{"": {"per_request": 1}}"#).unwrap_err().contains("empty"));
        assert!(RoutePrices::parse("[]").is_err());
        assert!(RoutePrices::parse("").is_err());
    }

    #[test]
    fn zero_and_the_limits_are_allowed() {
        let r = RoutePrices::parse(r#"{"free/*": {"per_request": 0}, "dear": {"per_second": 1000}}"#).unwrap();
        assert_eq!(r.rate_for("/free/x", None), per_request(0));
        assert_eq!(r.rate_for("/x", Some("dear")), Some(RouteRate::PerSecond(ComputePrice(1_000_000_000_000))));
    }
}
