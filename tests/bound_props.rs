//! The reservation is an upper bound of what upstream can charge for the body actually sent.
//!
//! A reference upstream reads the body the gateway would send and bills the most any provider
//! could for it: every byte of message text a prompt token (a byte-level tokenizer at its
//! worst), each media part at the configured ceiling, and the largest output limit present in
//! *any* limit field, times every choice. For random bodies (null fields, both bounds, `n`,
//! images, tools, streams), that bill never exceeds what was reserved, and the body sent is
//! valid JSON with no duplicate key.
#![cfg(not(target_arch = "wasm32"))]

use hf_gate::core::body::{apply, inspect, LIMIT_FIELDS, MESSAGE_OVERHEAD_TOKENS};
use hf_gate::core::paths::Api;
use hf_gate::core::pricing::TokenUsage;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const MEDIA: u64 = 2_000;

/// The most a provider could bill for `sent`: `None` when nothing bounds its output.
fn upstream_bill(sent: &Value) -> Option<TokenUsage> {
    fn text(v: &Value, media: &mut u64) -> u64 {
        match v {
            Value::String(s) => s.len() as u64,
            Value::Array(a) => a.iter().map(|x| text(x, media)).sum(),
            Value::Object(o) => {
                if o.get("type").and_then(Value::as_str).is_some_and(|t| t == "image_url") {
                    *media += 1;
                    return "image_url".len() as u64;
                }
                o.values().map(|x| text(x, media)).sum()
            }
            _ => 0,
        }
    }
    let mut media = 0;
    let messages = sent.get("messages").and_then(Value::as_array).map_or(0, |m| m.len() as u64);
    let tools = sent.get("tools").map_or(0, |t| t.to_string().len() as u64);
    let prompt = text(sent.get("messages").unwrap_or(&Value::Null), &mut media)
        + media * MEDIA
        + messages * MESSAGE_OVERHEAD_TOKENS
        + tools;
    let limit = LIMIT_FIELDS.iter().filter_map(|f| sent.get(*f)).map(Value::as_u64).collect::<Option<Vec<_>>>()?;
    let output = limit.into_iter().max()?;
    let choices = ["n", "best_of"].iter().filter_map(|f| sent.get(*f)?.as_u64()).max().unwrap_or(1);
    Some(TokenUsage { prompt, completion: output * choices })
}

fn content() -> impl Strategy<Value = Value> {
    prop_oneof![
        "\\PC{0,40}".prop_map(Value::String),
        prop::collection::vec(
            prop_oneof![
                "\\PC{0,30}".prop_map(|t| json!({"type": "text", "text": t})),
                "[A-Za-z0-9+/]{0,400}".prop_map(
                    |d| json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{d}")}})
                ),
            ],
            0..4
        )
        .prop_map(Value::Array),
    ]
}

/// A field that is absent, null, or a value.
fn maybe(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![Just(None), Just(Some(Value::Null)), v.prop_map(Some)]
}

fn body() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec((prop_oneof![Just("user"), Just("system"), Just("assistant")], content()), 0..5),
        maybe((1u64..5_000).prop_map(Value::from)),
        maybe((1u64..5_000).prop_map(Value::from)),
        maybe((1u64..5_000).prop_map(Value::from)),
        maybe((1u64..6).prop_map(Value::from)),
        maybe(any::<bool>().prop_map(Value::from)),
        maybe(prop_oneof![Just(json!({})), Just(json!({"include_usage": false})), Just(json!({"include_usage": null}))]),
        any::<bool>(),
    )
        .prop_map(|(msgs, max_tokens, max_completion, max_new, n, stream, options, tools)| {
            let mut o = Map::new();
            o.insert("model".into(), json!("org/model"));
            o.insert(
                "messages".into(),
                Value::Array(msgs.into_iter().map(|(role, c)| json!({"role": role, "content": c})).collect()),
            );
            for (k, v) in [
                ("max_tokens", max_tokens),
                ("max_completion_tokens", max_completion),
                ("max_new_tokens", max_new),
                ("n", n),
                ("stream", stream),
                ("stream_options", options),
            ] {
                if let Some(v) = v {
                    o.insert(k.into(), v);
                }
            }
            if tools {
                o.insert("tools".into(), json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]));
            }
            Value::Object(o)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

    #[test]
    fn no_body_can_be_billed_past_its_reservation(b in body(), default_max in 1u64..4_096, afford in 1u64..4_096, pretty in any::<bool>()) {
        let raw = if pretty { serde_json::to_vec_pretty(&b).unwrap() } else { serde_json::to_vec(&b).unwrap() };
        let shape = inspect(&raw, Api::Chat, MEDIA).unwrap();
        // the ledger grants the bound asked for, or less when credit is short
        let granted = shape.output_bound(default_max).min(afford);
        let reserved = shape.worst_case(granted);
        let sent_bytes = apply(&raw, &shape.edits(granted));
        // no duplicate key was written: the body sent passes the same inspection
        prop_assert!(inspect(&sent_bytes, Api::Chat, MEDIA).is_ok());
        let sent: Value = serde_json::from_slice(&sent_bytes).unwrap();
        let bill = upstream_bill(&sent).expect("the body sent always bounds the output");
        prop_assert!(bill.prompt <= reserved.prompt, "prompt {} > {}", bill.prompt, reserved.prompt);
        prop_assert!(bill.completion <= reserved.completion, "completion {} > {}", bill.completion, reserved.completion);
        if shape.stream {
            prop_assert_eq!(&sent["stream_options"]["include_usage"], &Value::Bool(true));
        }
    }
}
