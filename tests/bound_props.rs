//! The reservation is an upper bound of what upstream can charge for the body actually sent,
//! by the upstream's rules, not the gateway's.
//!
//! The reference upstream is an OpenAI-rules provider. Its output limit is the one field its
//! API honours: chat reads `max_completion_tokens` if present and not null, else `max_tokens`,
//! and ignores the others; completions reads `max_tokens`; responses only `max_output_tokens`.
//! With no honoured field it generates to its context (`CONTEXT_TOKENS`). `n`, `best_of` and a
//! batch of prompts multiply the output. Its prompt is at most a token per byte of every string
//! and every object key in the prompt field (a byte-level tokenizer at its worst), the
//! instructions' bytes, the tools as rendered JSON, the template overheads the gateway assumes,
//! each image at the media ceiling and each audio, video or file part at the larger of the
//! ceiling and its inline payload's bytes.
//!
//! For random chat, completions and responses bodies (limits only in a field the API ignores,
//! nulls, object-valued tool-call arguments, large inline audio and video, images, tools,
//! streams, pretty or compact JSON), and random granted outputs: the bill for the body sent
//! never exceeds the reservation, and the body sent is JSON with no duplicate key at any depth.
//! A body with a tool the upstream runs itself is reported as such, never billed as bounded.
#![cfg(not(target_arch = "wasm32"))]

use hf_gate::core::body::{apply, inspect, MESSAGE_OVERHEAD_TOKENS, REQUEST_OVERHEAD_TOKENS, TOOLS_OVERHEAD_TOKENS};
use hf_gate::core::paths::Api;
use hf_gate::core::pricing::TokenUsage;
use proptest::prelude::*;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::fmt;

const MEDIA: u64 = 2_000;
/// What the reference upstream generates when no field it honours bounds the output.
const CONTEXT_TOKENS: u64 = 1_000_000;
const CLIENT_TOOLS: &[&str] = &["function", "custom"];

/// Bytes the reference upstream reads as text in a prompt value: strings and keys, and scalars
/// at their printed length; media parts by their kind.
fn prompt_text(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.len() as u64,
        Value::Array(a) => a.iter().map(prompt_text).sum(),
        Value::Object(o) => match media_cost(o) {
            Some(cost) => cost,
            None => o.iter().map(|(k, x)| k.len() as u64 + prompt_text(x)).sum(),
        },
        other => other.to_string().len() as u64,
    }
}

/// A media part: its keys and non-payload members as text, and its media tokens. `None` for
/// anything else.
fn media_cost(part: &Map<String, Value>) -> Option<u64> {
    let kind = part.get("type")?.as_str()?;
    let (payload, sized) = match kind {
        "image_url" | "input_image" => ("image_url", false),
        "input_audio" => ("input_audio", true),
        "video_url" => ("video_url", true),
        "file" => ("file", true),
        "input_file" => ("file_data", true),
        _ => return None,
    };
    let around: u64 = part.iter().map(|(k, x)| k.len() as u64 + if k == payload { 0 } else { prompt_text(x) }).sum();
    let media = if sized {
        // inline bytes bound what an encoder reads; a URL gives no size, so the ceiling
        let inline = part.get(payload).map_or(0, inline_bytes);
        MEDIA.max(inline)
    } else {
        MEDIA
    };
    Some(around + media)
}

/// The bytes of inline data in a payload: every string that is not a plain http(s) URL.
fn inline_bytes(v: &Value) -> u64 {
    match v {
        Value::String(s) if s.starts_with("http://") || s.starts_with("https://") => 0,
        Value::String(s) => s.len() as u64,
        Value::Array(a) => a.iter().map(inline_bytes).sum(),
        Value::Object(o) => o.values().map(inline_bytes).sum(),
        _ => 0,
    }
}

/// Lines a template may break rendered JSON over, with the two bytes of indentation per line
/// the gateway allows.
fn rendered(v: &Value) -> u64 {
    let text = v.to_string();
    text.len() as u64 + 2 * text.bytes().filter(|b| matches!(b, b',' | b'{' | b'[')).count() as u64
}

/// The tool entry the upstream would run itself, if the body gives one.
fn server_tool(sent: &Value) -> Option<usize> {
    sent.get("tools")?
        .as_array()?
        .iter()
        .position(|t| t.get("type").and_then(Value::as_str).is_some_and(|kind| !CLIENT_TOOLS.contains(&kind)))
}

/// What an OpenAI-rules provider bills for the body it received.
fn upstream_bill(api: Api, sent: &Value) -> TokenUsage {
    let honoured = |field: &str| sent.get(field).filter(|v| !v.is_null()).map(|v| v.as_u64().unwrap_or(CONTEXT_TOKENS));
    let limit = match api {
        Api::Chat => honoured("max_completion_tokens").or_else(|| honoured("max_tokens")),
        Api::Completions => honoured("max_tokens"),
        Api::Responses => honoured("max_output_tokens"),
        // an embedding generates nothing: its input is the bill
        Api::Embeddings => Some(0),
    }
    .unwrap_or(CONTEXT_TOKENS);
    // best_of candidates are generated of which n are returned (best_of >= n, or refused)
    let count = |field: &str| sent.get(field).and_then(Value::as_u64).unwrap_or(1);
    let choices = if api == Api::Embeddings { 1 } else { count("n").max(count("best_of")) };
    let prompt_field = match api {
        Api::Chat => "messages",
        Api::Completions => "prompt",
        Api::Responses | Api::Embeddings => "input",
    };
    let prompt = sent.get(prompt_field).unwrap_or(&Value::Null);
    let (elements, batch) = match (api, prompt) {
        // a list of strings or of token lists is a batch; a list of token ids is one prompt
        (Api::Completions, Value::Array(a)) if a.iter().all(|p| p.is_string() || p.is_array()) => {
            (a.len() as u64, a.len() as u64)
        }
        (_, Value::Array(a)) => (a.len() as u64, 1),
        _ => (1, 1),
    };
    let tools = match sent.get("tools") {
        Some(t @ Value::Array(_)) => rendered(t) + TOOLS_OVERHEAD_TOKENS,
        _ => 0,
    };
    let instructions = sent.get("instructions").and_then(Value::as_str).map_or(0, |s| s.len() as u64);
    let prompt_tokens =
        REQUEST_OVERHEAD_TOKENS + elements * MESSAGE_OVERHEAD_TOKENS + prompt_text(prompt) + instructions + tools;
    TokenUsage { prompt: prompt_tokens, completion: limit * choices * batch }
}

/// Parses any JSON value and fails on a key given twice in one object, at any depth.
struct NoDuplicates;

impl<'de> Visitor<'de> for NoDuplicates {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Checked)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            map.next_value_seed(Checked)?;
        }
        Ok(())
    }
}

struct Checked;

impl<'de> de::DeserializeSeed<'de> for Checked {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(NoDuplicates)
    }
}

fn no_duplicate_keys(bytes: &[u8]) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.deserialize_any(NoDuplicates)?;
    de.end()
}

/// Base64-looking inline data, sometimes past the media ceiling.
fn inline_data() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z0-9+/]{0,64}", (0usize..3 * MEDIA as usize).prop_map(|n| "QUJD".repeat(n / 4)),]
}

/// An inline payload or a URL that says nothing of the size.
fn data_or_url(mime: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        inline_data().prop_map(move |d| format!("data:{mime};base64,{d}")),
        "[a-z]{1,12}".prop_map(|p| format!("https://media.example/{p}")),
    ]
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

/// A JSON object as a model writes tool-call arguments: keys of any text, nested values.
fn arguments() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        text().prop_map(Value::String),
        any::<i32>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ];
    let value = leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,12}", inner, 0..3).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map("\\PC{0,16}", value, 0..4).prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn chat_part() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => text().prop_map(|t| json!({"type": "text", "text": t})),
        1 => data_or_url("image/png").prop_map(|u| json!({"type": "image_url", "image_url": {"url": u}})),
        1 => (inline_data(), prop_oneof![Just("wav"), Just("mp3")])
            .prop_map(|(d, f)| json!({"type": "input_audio", "input_audio": {"data": d, "format": f}})),
        1 => data_or_url("video/mp4").prop_map(|u| json!({"type": "video_url", "video_url": {"url": u}})),
        1 => (inline_data(), "[a-z]{1,8}\\.pdf").prop_map(
            |(d, name)| json!({"type": "file", "file": {"file_data": format!("data:application/pdf;base64,{d}"), "filename": name}})
        ),
    ]
}

fn chat_message() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (prop_oneof![Just("user"), Just("system")], prop_oneof![
            text().prop_map(Value::String),
            prop::collection::vec(chat_part(), 0..4).prop_map(Value::Array),
        ])
            .prop_map(|(role, content)| json!({"role": role, "content": content})),
        1 => (text(), arguments()).prop_map(|(content, args)| json!({
            "role": "assistant",
            "content": content,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": args}}],
        })),
        1 => text().prop_map(|t| json!({"role": "tool", "tool_call_id": "call_1", "content": t})),
    ]
}

fn responses_item() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        3 => text().prop_map(|t| json!({"type": "input_text", "text": t})),
        1 => data_or_url("image/jpeg").prop_map(|u| json!({"type": "input_image", "image_url": u})),
        1 => (inline_data(), "[a-z]{1,8}\\.pdf").prop_map(
            |(d, name)| json!({"type": "input_file", "file_data": format!("data:application/pdf;base64,{d}"), "filename": name})
        ),
        1 => inline_data().prop_map(|d| json!({"type": "input_audio", "input_audio": {"data": d, "format": "wav"}})),
    ];
    prop_oneof![
        3 => (prop_oneof![Just("user"), Just("developer")], prop_oneof![
            text().prop_map(Value::String),
            prop::collection::vec(part, 0..4).prop_map(Value::Array),
        ])
            .prop_map(|(role, content)| json!({"role": role, "content": content})),
        1 => arguments().prop_map(|args| json!({"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": args})),
        1 => text().prop_map(|t| json!({"type": "function_call_output", "call_id": "c1", "output": t})),
    ]
}

fn prompt_of(api: Api) -> BoxedStrategy<Value> {
    match api {
        Api::Chat => prop::collection::vec(chat_message(), 0..5).prop_map(Value::Array).boxed(),
        Api::Responses => prop_oneof![
            text().prop_map(Value::String),
            prop::collection::vec(responses_item(), 0..5).prop_map(Value::Array),
        ]
        .boxed(),
        // one text, a batch of texts, or batches of token ids
        Api::Completions | Api::Embeddings => prop_oneof![
            text().prop_map(Value::String),
            prop::collection::vec(text().prop_map(Value::String), 1..4).prop_map(Value::Array),
            prop::collection::vec(0u32..100_000, 1..20).prop_map(|ids| json!(ids)),
            prop::collection::vec(prop::collection::vec(0u32..100_000, 1..8), 1..4).prop_map(|b| json!(b)),
        ]
        .boxed(),
    }
}

/// A field that is absent (most often), null, or a value.
fn maybe(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![3 => Just(None), 1 => Just(Some(Value::Null)), 2 => v.prop_map(Some)]
}

fn tools() -> impl Strategy<Value = Option<Value>> {
    let function = json!({"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}});
    let server = prop_oneof![
        prop::sample::select(vec![
            "mcp",
            "web_search",
            "web_search_preview",
            "file_search",
            "code_interpreter",
            "image_generation",
            "computer_use_preview",
            "local_shell",
        ])
        .prop_map(str::to_string),
        "[a-z_]{1,12}",
    ];
    prop_oneof![
        3 => Just(None),
        2 => Just(Some(json!([function.clone()]))),
        1 => server.prop_map(move |kind| Some(json!([function.clone(), {"type": kind, "server_label": "x"}]))),
    ]
}

fn body() -> impl Strategy<Value = (Api, Value)> {
    prop_oneof![Just(Api::Chat), Just(Api::Completions), Just(Api::Responses), Just(Api::Embeddings)].prop_flat_map(
        |api| {
            let limit = || maybe((1u64..5_000).prop_map(Value::from));
            let count = || maybe((1u64..6).prop_map(Value::from));
            (
                prompt_of(api),
                (limit(), limit(), limit(), limit()),
                (count(), count()),
                (
                    maybe(any::<bool>().prop_map(Value::from)),
                    maybe(prop_oneof![
                        Just(json!({})),
                        Just(json!({"include_usage": false})),
                        Just(json!({"include_usage": null}))
                    ]),
                ),
                tools(),
                prop::option::of(text()),
            )
                .prop_map(move |(prompt, limits, (n, best_of), (stream, options), tools, instructions)| {
                    let mut o = Map::new();
                    o.insert("model".into(), json!("org/model"));
                    let prompt_field = match api {
                        Api::Chat => "messages",
                        Api::Completions => "prompt",
                        Api::Responses | Api::Embeddings => "input",
                    };
                    o.insert(prompt_field.into(), prompt);
                    let (a, b, c, d) = limits;
                    let fields = [
                        ("max_tokens", a),
                        ("max_completion_tokens", b),
                        ("max_output_tokens", c),
                        ("max_new_tokens", d),
                        ("n", n),
                        ("best_of", best_of),
                        ("stream", stream),
                        ("stream_options", options),
                        ("tools", tools),
                        ("instructions", instructions.filter(|_| api == Api::Responses).map(Value::String)),
                    ];
                    for (k, v) in fields {
                        if let Some(v) = v {
                            o.insert(k.into(), v);
                        }
                    }
                    (api, Value::Object(o))
                })
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

    #[test]
    fn no_body_can_be_billed_past_its_reservation(
        (api, b) in body(),
        default_max in 1u64..4_096,
        afford in 1u64..4_096,
        pretty in any::<bool>(),
    ) {
        let raw = if pretty { serde_json::to_vec_pretty(&b).unwrap() } else { serde_json::to_vec(&b).unwrap() };
        let shape = inspect(&raw, api, MEDIA).expect("a well-formed body is accepted");
        // the ledger grants the bound asked for, or less when credit is short
        let granted = shape.output_bound(default_max).min(afford);
        let reserved = shape.worst_case(granted);
        let sent_bytes = apply(&raw, &shape.edits(granted));
        prop_assert!(no_duplicate_keys(&sent_bytes).is_ok(), "{}", String::from_utf8_lossy(&sent_bytes));
        let sent: Value = serde_json::from_slice(&sent_bytes).unwrap();
        match api.limit_field() {
            Some(own) => prop_assert_eq!(sent[own].as_u64(), Some(granted), "the API's own field carries the bound"),
            // nothing generated, nothing to bound: the body goes as it came
            None => prop_assert_eq!(&sent_bytes, &raw),
        }
        if shape.stream && api != Api::Responses {
            prop_assert_eq!(&sent["stream_options"]["include_usage"], &Value::Bool(true));
        }
        // a tool the upstream runs is not within any bound: reported, for the edge to refuse
        // or to reserve the plan's ceiling for
        prop_assert_eq!(
            shape.server_tools.as_ref().map(|u| u.field.clone()),
            server_tool(&sent).map(|i| format!("tools[{i}]"))
        );
        if shape.server_tools.is_none() {
            let bill = upstream_bill(api, &sent);
            prop_assert!(bill.prompt <= reserved.prompt, "prompt {} > {}", bill.prompt, reserved.prompt);
            prop_assert!(
                bill.completion <= reserved.completion,
                "completion {} > {}", bill.completion, reserved.completion
            );
        }
    }
}
