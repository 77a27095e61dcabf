//! Fuzzing of every parser that takes outside input, with proptest: arbitrary bytes and
//! strings must never panic, and what is accepted keeps its promises. `make test` runs a
//! brief pass; `make fuzz` sets FUZZ_CASES high for a long one.
#![cfg(not(target_arch = "wasm32"))]

use hf_gate::core::body::{apply, inspect, usage_of_body};
use hf_gate::core::keys::{base64url_decode, bearer_key};
use hf_gate::core::paths::Api;
use hf_gate::core::paths::{check_path, route, Route};
use hf_gate::core::settings::Settings;
use hf_gate::core::sse::SseMeter;
use hf_gate::core::time::parse_http_date;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3_000)
}

/// Strings that look like the inputs, so the fuzzer reaches past the first check.
fn pathish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("/".to_string()),
            Just("..".to_string()),
            Just(".".to_string()),
            Just("%2f".to_string()),
            Just("%2E".to_string()),
            Just("%63".to_string()),
            Just("%25".to_string()),
            Just("%7".to_string()),
            Just("v1".to_string()),
            Just("together".to_string()),
            Just("chat/completions".to_string()),
            Just("models".to_string()),
            "[a-z0-9%._~\\\\-]{0,8}",
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        (
            prop_oneof![Just("\"m\"".to_string()), Just("1".to_string()), Just("null".to_string()), "\"[ -~]{0,20}\""],
            prop_oneof![
                Just("1".to_string()),
                Just("-1".to_string()),
                Just("1e308".to_string()),
                Just("\"9\"".to_string()),
                "[0-9]{1,25}"
            ],
            any::<bool>(),
            "[ -~]{0,30}",
        )
            .prop_map(|(m, t, s, rest)| format!(
                "{{\"model\":{m},\"max_tokens\":{t},\"stream\":{s},\"messages\":[{{\"content\":\"{}\"}}]{rest}}}",
                rest.replace('"', "")
            )
            .into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn paths_never_panic_and_accepted_ones_are_plain(p in pathish()) {
        if check_path(&p).is_ok() {
            let lower = p.to_ascii_lowercase();
            prop_assert!(!lower.contains("%2f") && !lower.contains("%2e") && !p.contains('\\'));
            prop_assert!(!p.split('/').any(|s| s == ".." || s == "."));
        }
        if let Ok(Route::Proxy(proxied)) = route(&p) {
            // what goes upstream has nothing left to decode, and reads as the same route
            prop_assert!(!proxied.path.contains('%'));
            prop_assert_eq!(route(&proxied.path), Ok(Route::Proxy(proxied.clone())));
        }
    }

    #[test]
    fn bodies_never_panic_and_accepted_ones_stay_valid_json(b in jsonish(), output in 1u64..100_000) {
        for api in [Api::Chat, Api::Completions, Api::Responses, Api::Embeddings] {
            if let Ok(shape) = inspect(&b, api, 1_000) {
                let out = apply(&b, &shape.edits(output));
                let v: serde_json::Value = serde_json::from_slice(&out).expect("upstream body stays JSON");
                prop_assert_eq!(v["model"].as_str(), Some(shape.model.as_str()));
                // the bound granted is what every limit field carries upstream
                let limits: Vec<u64> = ["max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens"]
                    .iter().filter_map(|f| v.get(*f)).map(|x| x.as_u64().unwrap_or(0)).collect();
                if api.generates() {
                    prop_assert!(!limits.is_empty() && limits.iter().all(|l| *l == output), "{:?}", limits);
                }
                // and the edited body inspects again: no duplicate key was written
                prop_assert!(inspect(&out, api, 1_000).is_ok());
            }
        }
        let _ = usage_of_body(&b);
    }

    #[test]
    fn sse_meter_never_panics_and_forwards_every_byte(data in any::<Vec<u8>>(), cuts in prop::collection::vec(0usize..512, 0..8)) {
        for api in [Api::Chat, Api::Completions, Api::Responses, Api::Embeddings] {
            let mut m = SseMeter::new(api, false);
            let mut out = Vec::new();
            let mut at = 0;
            for c in &cuts {
                let end = (at + c).min(data.len());
                out.extend(m.feed(&data[at..end]));
                at = end;
            }
            out.extend(m.feed(&data[at..]));
            out.extend(m.finish());
            prop_assert_eq!(&out, &data, "a meter that hides nothing passes every byte, in order");
        }
    }

    #[test]
    fn sse_usage_is_found_in_any_chunking(prompt in 0u64..1_000_000, completion in 0u64..1_000_000, noise in "[a-z ]{0,40}", cut in 0usize..400) {
        let stream = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{noise}\"}}}}]}}\n\n: keep-alive\n\ndata: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion}}}}}\n\ndata: [DONE]\n\n"
        );
        let cut = cut.min(stream.len());
        let mut m = SseMeter::new(Api::Chat, true);
        m.feed(&stream.as_bytes()[..cut]);
        m.feed(&stream.as_bytes()[cut..]);
        m.finish();
        let u = m.final_usage.expect("usage found");
        prop_assert_eq!((u.prompt, u.completion), (prompt, completion));
    }

    #[test]
    fn header_parsers_never_panic(s in "\\PC{0,80}") {
        let _ = parse_http_date(&s);
        let _ = bearer_key(&s);
        let _ = base64url_decode(&s);
    }

    #[test]
    fn settings_never_panic_and_name_what_is_wrong(name in prop::sample::select(vec![
        "UPSTREAM_URL", "PRICES", "PLANS", "COMPUTE_USD_PER_SECOND", "CORS_ORIGINS", "MAX_BODY_BYTES",
        "RETRY_MAX_RETRIES", "RETRY_MAX_WAIT_MS", "UPSTREAM_DEADLINE_MS", "PROVIDER_URLS",
    ]), value in "\\PC{0,60}") {
        match Settings::from_vars(|n| (n == name).then(|| value.clone())) {
            Ok(_) => {}
            Err(hf_gate::core::error::GatewayError::Misconfigured { setting, .. }) => prop_assert_eq!(setting, name),
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }
}
