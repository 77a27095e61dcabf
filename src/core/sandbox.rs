//! The sandbox upstream (SPEC section 8): answers like the router would, deterministically,
//! with no token and no network, so frontends can be built and the gateway tried locally.

use crate::core::pricing::{PriceTable, TokenUsage};
use serde_json::{json, Value};

/// A deterministic reply to a chat request: its words and its usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub model: String,
    pub words: Vec<String>,
    pub usage: TokenUsage,
    pub finish_reason: &'static str,
}

/// Builds the reply for a chat-completions or responses body (already inspected by the
/// gateway, so it is an object with a model). The text echoes the last user message.
pub fn reply(body: &[u8], max_tokens: u64) -> Reply {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = v.get("model").and_then(Value::as_str).unwrap_or("sandbox").to_string();
    let (prompt_chars, last_user) = prompt_of(&v);
    let said: String = last_user.chars().filter(|c| !c.is_control()).take(120).collect();
    let text = if said.trim().is_empty() {
        "Hello from the hf-gate sandbox. Send a message and it will be echoed back.".to_string()
    } else {
        format!("Hello from the hf-gate sandbox. You said: {}", said.trim())
    };
    let all: Vec<String> = text.split(' ').map(str::to_string).collect();
    let limit = usize::try_from(max_tokens).unwrap_or(usize::MAX);
    let finish_reason = if all.len() > limit { "length" } else { "stop" };
    let words: Vec<String> = all.into_iter().take(limit).collect();
    let usage = TokenUsage { prompt: (prompt_chars as u64).div_ceil(4).max(1), completion: words.len() as u64 };
    Reply { model, words, usage, finish_reason }
}

/// Total characters of the prompt, and the text of the last user turn.
fn prompt_of(v: &Value) -> (usize, String) {
    let text_of = |c: &Value| match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    };
    if let Some(msgs) = v.get("messages").and_then(Value::as_array) {
        let total = msgs.iter().map(|m| m.get("content").map_or(0, |c| text_of(c).len())).sum();
        let last = msgs.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
        return (total, last.and_then(|m| m.get("content")).map(text_of).unwrap_or_default());
    }
    match v.get("input") {
        Some(Value::String(s)) => (s.len(), s.clone()),
        Some(Value::Array(items)) => {
            let texts: Vec<String> = items.iter().filter_map(|i| i.get("content")).map(text_of).collect();
            (texts.iter().map(String::len).sum(), texts.last().cloned().unwrap_or_default())
        }
        _ => (0, String::new()),
    }
}

impl Reply {
    pub fn text(&self) -> String {
        self.words.join(" ")
    }

    fn usage_json(&self) -> Value {
        json!({
            "prompt_tokens": self.usage.prompt,
            "completion_tokens": self.usage.completion,
            "total_tokens": self.usage.prompt + self.usage.completion
        })
    }

    /// A `chat.completion` object.
    pub fn chat_completion(&self, id: &str, created_secs: u64) -> Value {
        json!({
            "id": id, "object": "chat.completion", "created": created_secs, "model": self.model,
            "system_fingerprint": "hf-gate-sandbox",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text()},
                         "logprobs": null, "finish_reason": self.finish_reason}],
            "usage": self.usage_json()
        })
    }

    /// The SSE events of a streamed chat completion, `data: [DONE]` last. The usage chunk is
    /// there only when asked for, as upstream does it.
    pub fn chat_chunks(&self, id: &str, created_secs: u64, include_usage: bool) -> Vec<String> {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created_secs, "model": self.model,
                   "system_fingerprint": "hf-gate-sandbox",
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        };
        let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
        for (i, w) in self.words.iter().enumerate() {
            let piece = if i == 0 { w.clone() } else { format!(" {w}") };
            events.push(chunk(json!({"content": piece}), Value::Null));
        }
        events.push(chunk(json!({}), json!(self.finish_reason)));
        if include_usage {
            events.push(
                json!({"id": id, "object": "chat.completion.chunk", "created": created_secs, "model": self.model,
                               "choices": [], "usage": self.usage_json()}),
            );
        }
        let mut out: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        out.push("data: [DONE]\n\n".into());
        out
    }

    /// A `response` object of the Responses API.
    pub fn response(&self, id: &str, created_secs: u64) -> Value {
        json!({
            "id": id, "object": "response", "created_at": created_secs, "status": "completed", "model": self.model,
            "output": [{"type": "message", "id": format!("msg_{id}"), "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": self.text(), "annotations": []}]}],
            "usage": {"input_tokens": self.usage.prompt, "output_tokens": self.usage.completion,
                      "total_tokens": self.usage.prompt + self.usage.completion}
        })
    }

    /// The SSE events of a streamed response: text deltas, then `response.completed` with usage.
    pub fn response_events(&self, id: &str, created_secs: u64) -> Vec<String> {
        let mut out = vec![format!(
            "event: response.created\ndata: {}\n\n",
            json!({"type": "response.created", "response": {"id": id, "object": "response", "status": "in_progress", "model": self.model}})
        )];
        for (i, w) in self.words.iter().enumerate() {
            let piece = if i == 0 { w.clone() } else { format!(" {w}") };
            out.push(format!(
                "event: response.output_text.delta\ndata: {}\n\n",
                json!({"type": "response.output_text.delta", "item_id": format!("msg_{id}"), "output_index": 0, "content_index": 0, "delta": piece})
            ));
        }
        out.push(format!(
            "event: response.completed\ndata: {}\n\n",
            json!({"type": "response.completed", "response": self.response(id, created_secs)})
        ));
        out
    }
}

/// An embeddings answer (`/{provider}/v1/embeddings`): one small vector per text of `input`,
/// the same for the same text, and the prompt's tokens (a quarter of its bytes, at least one
/// a text) as the usage, without a completion side, as embedding providers report it.
pub fn embeddings(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = v.get("model").and_then(Value::as_str).unwrap_or("sandbox");
    let texts: Vec<String> = match v.get("input") {
        Some(Value::Array(items)) => {
            items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string)).collect()
        }
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let mut tokens = 0u64;
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            tokens += (text.len() as u64).div_ceil(4).max(1);
            // a vector of eight from the text's bytes: deterministic, unit length
            let mut raw = [1.0f64; 8];
            for (i, b) in text.bytes().enumerate() {
                raw[i % 8] += f64::from(b) / 255.0;
            }
            let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
            json!({"object": "embedding", "index": index, "embedding": raw.iter().map(|x| x / norm).collect::<Vec<_>>()})
        })
        .collect();
    json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

/// `/v1/models` as the router shows it, with the gateway's prices.
pub fn models(prices: &PriceTable) -> Value {
    // a `model:provider` override prices one provider of a model; it is not a model
    let mut ids: Vec<(&str, crate::core::pricing::Price)> =
        prices.known_models().filter(|(id, _)| !id.contains(':')).collect();
    crate::core::sort::sort_small_by(&mut ids, |a, b| a.0.cmp(b.0));
    let data: Vec<Value> = ids
        .into_iter()
        .map(|(id, p)| {
            json!({"id": id, "object": "model", "created": 0, "owned_by": id.split('/').next().unwrap_or(id),
                   "providers": [{"provider": "sandbox", "status": "live",
                                  "pricing": {"input": p.input as f64 / 1e6, "output": p.output as f64 / 1e6}}]})
        })
        .collect();
    json!({"object": "list", "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_one_vector_a_text_with_a_prompt_only_usage() {
        let one = embeddings(br#"{"model":"m","input":"abcdefgh"}"#);
        assert_eq!(one["data"].as_array().map(Vec::len), Some(1));
        assert_eq!(one["usage"], json!({"prompt_tokens": 2, "total_tokens": 2}));
        let batch = embeddings(br#"{"model":"m","input":["a","abcdefgh","a"]}"#);
        assert_eq!(batch["data"][2]["embedding"], batch["data"][0]["embedding"]);
        assert_ne!(batch["data"][1]["embedding"], batch["data"][0]["embedding"]);
        assert_eq!(batch["usage"]["prompt_tokens"], json!(4));
    }

    #[test]
    fn replies_are_deterministic_and_bounded() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"ping pong"}]}"#;
        let a = reply(body, 1024);
        assert_eq!(a, reply(body, 1024));
        assert_eq!(a.text(), "Hello from the hf-gate sandbox. You said: ping pong");
        assert_eq!(a.usage, TokenUsage { prompt: 3, completion: 9 });
        let short = reply(body, 2);
        assert_eq!(short.text(), "Hello from");
        assert_eq!(short.finish_reason, "length");
    }

    #[test]
    fn streams_end_with_done_and_carry_usage_when_asked() {
        let r = reply(br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#, 1024);
        let with = r.chat_chunks("c1", 0, true);
        assert_eq!(with.last().map(String::as_str), Some("data: [DONE]\n\n"));
        assert!(with[with.len() - 2].contains("\"usage\""));
        assert!(!r.chat_chunks("c1", 0, false).iter().any(|e| e.contains("usage")));
    }
}
