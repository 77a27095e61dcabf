//! Reading a caller's request body just enough to price it: the model, the output bound and
//! whether it streams; and adjusting it so the worst case is really bounded and streamed usage
//! really arrives. Bodies are spliced, not re-serialised, whenever that is possible.

use crate::core::error::GatewayError;
use crate::core::pricing::TokenUsage;
use serde_json::Value;

/// The largest output bound the gateway accepts from a caller.
pub const MAX_OUTPUT_TOKENS: u64 = 1_000_000;

/// What the gateway needs to know about a token-priced call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallShape {
    pub model: String,
    /// The caller's output bound, if it gave one.
    pub max_tokens: Option<u64>,
    pub stream: bool,
    /// The caller asked for `stream_options.include_usage` itself.
    pub caller_wants_usage: bool,
    /// Which field bounds the output for this API (`max_tokens`, `max_output_tokens`, ...).
    pub bound_field: &'static str,
    stream_options_present: bool,
}

/// Inspects a chat-completions or responses body. Wrong types, negative or absurd bounds
/// and a missing model are refused: they are how a call would dodge its reservation.
pub fn inspect(body: &[u8], responses_api: bool) -> Result<CallShape, GatewayError> {
    let bad = |why: &str| GatewayError::InvalidRequest(why.to_string());
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("body must be a JSON object"))?;
    let obj = v.as_object().ok_or_else(|| bad("body must be a JSON object"))?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() && m.len() <= 256 => m.clone(),
        Some(_) => return Err(bad("'model' must be a non-empty string")),
        None => return Err(bad("'model' is required")),
    };
    let fields: &[&'static str] =
        if responses_api { &["max_output_tokens"] } else { &["max_completion_tokens", "max_tokens"] };
    let mut max_tokens = None;
    let mut bound_field = fields[fields.len() - 1];
    for f in fields {
        match obj.get(*f) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => match n.as_u64() {
                Some(t) if (1..=MAX_OUTPUT_TOKENS).contains(&t) => {
                    max_tokens = Some(max_tokens.map_or(t, |m: u64| m.min(t)));
                    bound_field = f;
                }
                _ => return Err(bad(&format!("'{f}' must be an integer from 1 to {MAX_OUTPUT_TOKENS}"))),
            },
            Some(_) => return Err(bad(&format!("'{f}' must be an integer"))),
        }
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("'stream' must be a boolean")),
    };
    let stream_options = obj.get("stream_options").filter(|o| !o.is_null());
    if stream_options.is_some_and(|o| !o.is_object()) {
        return Err(bad("'stream_options' must be an object"));
    }
    let caller_wants_usage =
        stream_options.and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    Ok(CallShape {
        model,
        max_tokens,
        stream,
        caller_wants_usage,
        bound_field,
        stream_options_present: stream_options.is_some(),
    })
}

impl CallShape {
    /// The output bound the call will run under: the caller's, or the plan's default.
    pub fn output_bound(&self, default_max_tokens: u64) -> u64 {
        self.max_tokens.unwrap_or(default_max_tokens)
    }

    /// The worst case to reserve: every byte of the body a prompt token (see
    /// `pricing::prompt_token_estimate`) and the full output bound.
    pub fn worst_case(&self, body_len: usize, default_max_tokens: u64) -> TokenUsage {
        TokenUsage {
            prompt: crate::core::pricing::prompt_token_estimate(body_len),
            completion: self.output_bound(default_max_tokens),
        }
    }

    /// The body to send upstream: with the output bound made explicit (so the reservation is
    /// a true upper bound) and, for streams of the chat API, `stream_options.include_usage`
    /// on (so the final usage chunk arrives and can be metered).
    pub fn upstream_body(&self, body: &[u8], default_max_tokens: u64, responses_api: bool) -> Vec<u8> {
        let need_bound = self.max_tokens.is_none();
        let need_usage = self.stream && !responses_api && !self.caller_wants_usage;
        if !need_bound && !need_usage {
            return body.to_vec();
        }
        let mut insert = String::new();
        if need_bound {
            insert.push_str(&format!("\"{}\":{},", self.bound_field, default_max_tokens));
        }
        if need_usage && !self.stream_options_present {
            insert.push_str("\"stream_options\":{\"include_usage\":true},");
        }
        if need_usage && self.stream_options_present {
            // The caller's stream_options must be edited, not shadowed: re-serialise (rare).
            return reserialise(body, self.bound_field, need_bound.then_some(default_max_tokens))
                .unwrap_or_else(|| body.to_vec());
        }
        splice_after_brace(body, &insert).unwrap_or_else(|| body.to_vec())
    }
}

/// Inserts `fields` (each ending in `,`) right after the object's opening brace. `inspect`
/// has already proved the body is a non-empty object (it has a `model`).
fn splice_after_brace(body: &[u8], fields: &str) -> Option<Vec<u8>> {
    let at = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[at] != b'{' {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + fields.len());
    out.extend_from_slice(&body[..=at]);
    out.extend_from_slice(fields.as_bytes());
    out.extend_from_slice(&body[at + 1..]);
    Some(out)
}

fn reserialise(body: &[u8], bound_field: &str, bound: Option<u64>) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    if let Some(b) = bound {
        obj.insert(bound_field.to_string(), Value::from(b));
    }
    let opts = obj.entry("stream_options").or_insert_with(|| Value::Object(Default::default()));
    opts.as_object_mut()?.insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&v).ok()
}

/// Token usage from an OpenAI-shaped JSON value: `usage` at the top (chat completions) or
/// under `response` (responses API events), with either naming of the two counts.
pub fn usage_of(v: &Value) -> Option<TokenUsage> {
    let u = v
        .get("usage")
        .filter(|u| u.is_object())
        .or_else(|| v.get("response")?.get("usage").filter(|u| u.is_object()))?;
    let count = |a: &str, b: &str| u.get(a).or_else(|| u.get(b)).and_then(Value::as_u64);
    let prompt = count("prompt_tokens", "input_tokens");
    let completion = count("completion_tokens", "output_tokens");
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    Some(TokenUsage { prompt: prompt.unwrap_or(0), completion: completion.unwrap_or(0) })
}

/// Usage from a whole (non-streamed) response body; `None` if it is not JSON or has none.
pub fn usage_of_body(body: &[u8]) -> Option<TokenUsage> {
    usage_of(&serde_json::from_slice::<Value>(body).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dodgy_bounds_and_models_are_refused() {
        for body in [
            r#"{"messages":[]}"#,
            r#"{"model":""}"#,
            r#"{"model":42}"#,
            r#"{"model":"m","max_tokens":-1}"#,
            r#"{"model":"m","max_tokens":0}"#,
            r#"{"model":"m","max_tokens":1.5}"#,
            r#"{"model":"m","max_tokens":"100"}"#,
            r#"{"model":"m","max_tokens":1e300}"#,
            r#"{"model":"m","max_tokens":99999999999}"#,
            r#"{"model":"m","stream":"yes"}"#,
            r#"{"model":"m","stream_options":5}"#,
            r#"[1,2]"#,
            "not json",
        ] {
            assert!(inspect(body.as_bytes(), false).is_err(), "{body}");
        }
    }

    #[test]
    fn the_smaller_of_two_bounds_counts() {
        let s = inspect(br#"{"model":"m","max_tokens":50,"max_completion_tokens":20}"#, false).unwrap();
        assert_eq!(s.max_tokens, Some(20));
    }

    #[test]
    fn a_missing_bound_is_made_explicit_by_splicing() {
        let body = br#"  {"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let s = inspect(body, false).unwrap();
        let out = s.upstream_body(body, 256, false);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_tokens"], 256);
        assert!(String::from_utf8(out).unwrap().ends_with(r#""messages":[{"role":"user","content":"hi"}]}"#));
    }

    #[test]
    fn streams_ask_upstream_for_usage_without_touching_the_rest() {
        let body = br#"{"model":"m","stream":true,"max_tokens":5}"#;
        let s = inspect(body, false).unwrap();
        assert!(!s.caller_wants_usage);
        let v: Value = serde_json::from_slice(&s.upstream_body(body, 256, false)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["max_tokens"], 5);
        let edited = br#"{"model":"m","stream":true,"max_tokens":5,"stream_options":{"include_usage":false}}"#;
        let s = inspect(edited, false).unwrap();
        let v: Value = serde_json::from_slice(&s.upstream_body(edited, 256, false)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn an_unchanged_body_passes_byte_for_byte() {
        let body = br#"{"model":"m", "max_tokens": 7}"#;
        let s = inspect(body, false).unwrap();
        assert_eq!(s.upstream_body(body, 256, false), body.to_vec());
    }

    #[test]
    fn usage_is_read_in_both_namings() {
        let chat = serde_json::json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4}});
        assert_eq!(usage_of(&chat), Some(TokenUsage { prompt: 3, completion: 4 }));
        let resp = serde_json::json!({"type": "response.completed", "response": {"usage": {"input_tokens": 5, "output_tokens": 6}}});
        assert_eq!(usage_of(&resp), Some(TokenUsage { prompt: 5, completion: 6 }));
        assert_eq!(usage_of(&serde_json::json!({"usage": null})), None);
        assert_eq!(usage_of_body(b"garbage"), None);
    }
}
