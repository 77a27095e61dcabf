//! Reading a caller's request body just enough to bound what the call can cost, and the edits
//! that make that bound true for the body actually sent upstream.
//!
//! The rule (README, "How a call is metered"): the reservation is `prompt bound x input price +
//! output bound x choices x output price`, where
//! - the *output bound* is the smallest limit the caller gave in any output-limit field
//!   (`max_tokens`, `max_completion_tokens`, `max_output_tokens`, `max_new_tokens`; `null` is
//!   absent), or the plan's default; the bound finally granted is written into *every* such
//!   field the body carries *and* into the API's own field (`Api::limit_field`, inserted when
//!   absent), so whichever one an upstream honours by its own rules, it is within the
//!   reservation;
//! - *choices* is `n` (and `best_of`, and the number of prompts of a batched completion):
//!   every choice can run to the output bound;
//! - the *prompt bound* counts the text the request carries, not the JSON around it: decoded
//!   UTF-8 bytes of every string and every object key in the messages (a byte-level BPE token
//!   is at least one byte, so no tokenizer in use produces more tokens than bytes), a
//!   per-message and a per-request overhead for chat templates, each image part at a
//!   configurable ceiling (`MEDIA_PART_TOKENS`), each audio, video or file part at the larger
//!   of that ceiling and the bytes of its inline payload, and everything else in the body
//!   (tools, schemas, unknown fields) counted whole, punctuation included, plus room for the
//!   indentation a template renders.
//!
//! Tools the upstream runs itself (a `tools` entry that is not a `function` or `custom` tool,
//! chat's `web_search_options`) cost what their loop costs, which no field of the body bounds:
//! `inspect` reports the first in `CallShape::server_tools`, and the caller refuses the call
//! or reserves the plan's ceiling for it.
//!
//! Calls priced per request (queued jobs, image generation) have no tokens to bound, only a
//! count of outputs: `outputs_of` multiplies the count fields a provider reads.
//!
//! The body is never turned into a tree: serde visitors walk it once and keep counts, a few
//! scalars and the byte spans of the fields to edit. Edits are splices into the original
//! bytes, so what upstream gets is the caller's body with the bounds replaced in place: never a
//! second copy of a key, never a field the caller did not send besides the bound and the
//! usage request.

use crate::core::error::GatewayError;
use crate::core::paths::Api;
use crate::core::pricing::TokenUsage;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};

/// The largest output bound the gateway accepts from a caller.
pub const MAX_OUTPUT_TOKENS: u64 = 1_000_000;
/// Below this many output tokens a call is refused rather than cut down to what the
/// remaining credit buys (or the caller's own bound, when that is smaller).
pub const MIN_USEFUL_OUTPUT_TOKENS: u64 = 16;
/// The most choices (`n`, `best_of`) one call may ask for.
pub const MAX_CHOICES: u64 = 128;
/// Tokens a chat template adds per message (role markers, separators).
pub const MESSAGE_OVERHEAD_TOKENS: u64 = 8;
/// Tokens a template adds once per request (begin-of-text, default system headers).
pub const REQUEST_OVERHEAD_TOKENS: u64 = 64;
/// Tokens a template adds when tools are given (tool-calling instructions).
pub const TOOLS_OVERHEAD_TOKENS: u64 = 512;
/// The default ceiling of one image, audio or file part (a high-resolution image in the
/// largest vision encoders served today).
pub const DEFAULT_MEDIA_PART_TOKENS: u64 = 16_384;
/// Every field an upstream may honour as a bound on the output, whatever the API.
pub const LIMIT_FIELDS: &[&str] = &["max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens"];

const MAX_TOP_LEVEL_FIELDS: usize = 1_024;
const MAX_STREAM_OPTIONS_BYTES: usize = 4_096;
const MAX_MODEL_LEN: usize = 256;
/// Part types that carry an image: an encoder gives one a bounded number of tokens, whatever
/// its size in bytes.
const IMAGE_TYPES: &[&str] = &["image_url", "input_image", "image", "image_file"];
/// Part types whose tokens grow with their length (seconds of audio or video, pages of a
/// file): bounded by their size when it is known.
const SIZED_TYPES: &[&str] = &["input_audio", "audio", "file", "input_file", "video_url", "video"];
/// Members of a media part that hold its payload (a URL or base64 data, not prompt text).
const MEDIA_PAYLOAD_KEYS: &[&str] =
    &["image_url", "input_audio", "image", "audio", "file", "file_data", "video_url", "video", "url", "data"];

/// Tool types the caller runs: the upstream only writes the call out, in tokens the output
/// bound covers. Any other type is run by the upstream itself.
const CLIENT_TOOL_TYPES: &[&str] = &["function", "custom"];

/// A part of the body whose cost the body does not bound: a tool the upstream runs itself
/// (OpenAI's `web_search`, the router's `mcp` loop), billed in calls and tokens of its own, or
/// text the upstream keeps and prompts with (`previous_response_id`, `conversation`, a stored
/// `prompt`), billed as input the body does not carry.
///
/// `inspect` reports it rather than refusing, since whether it may run is the plan's call:
/// refused (`refusal`), or allowed at the plan's `server_tool_ceiling_micro_usd`.
///
/// ```
/// use hf_gate::core::body::inspect;
/// use hf_gate::core::paths::Api;
/// let body = br#"{"model":"m","input":"hi","tools":[{"type":"mcp","server_url":"https://x"}]}"#;
/// let shape = inspect(body, Api::Responses, 1_000).unwrap();
/// let tools = shape.server_tools.as_ref().unwrap();
/// assert_eq!(tools.field, "tools[0]");
/// assert_eq!(tools.refusal().code(), "unbounded_request");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unbounded {
    /// Where it is: `tools[2]`, `web_search_options`.
    pub field: String,
    /// Why the body does not bound it.
    pub reason: String,
}

impl Unbounded {
    /// The 400 for a key whose plan sets no ceiling for such calls.
    pub fn refusal(&self) -> GatewayError {
        GatewayError::UnboundedRequest { field: self.field.clone(), reason: self.reason.clone() }
    }
}

/// A byte range of the body: `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamOptions {
    Absent,
    Null(Span),
    Object { after_open: usize, empty: bool, include_usage: Option<Span> },
}

/// What the gateway needs to know about a token-priced call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallShape {
    pub api: Api,
    pub model: String,
    /// The smallest output limit the caller gave, if any.
    pub requested_output: Option<u64>,
    /// How many completions one call produces: `n`, `best_of` and batched prompts multiplied.
    pub choices: u64,
    /// An upper bound of the prompt's tokens.
    pub prompt_tokens: u64,
    pub stream: bool,
    /// The caller asked for `stream_options.include_usage` itself.
    pub caller_wants_usage: bool,
    /// The first tool the upstream would run itself: the bound does not cover the call then.
    pub server_tools: Option<Unbounded>,
    /// Offset just past the body's opening brace.
    after_open: usize,
    /// Every output-limit field present (with a `null` value too).
    limit_spans: Vec<Span>,
    /// Whether one of them is the API's own (`Api::limit_field`), the one field an upstream
    /// that honours no other still reads.
    own_limit_present: bool,
    stream_options: StreamOptions,
    /// Where the `model` value is.
    model_span: Option<Span>,
}

/// Replace `start..end` of the body with `insert` (an insertion when `start == end`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    pub start: usize,
    pub end: usize,
    pub insert: Vec<u8>,
}

impl CallShape {
    /// The output bound the caller asked for, or the plan's default.
    pub fn output_bound(&self, default_max_tokens: u64) -> u64 {
        self.requested_output.unwrap_or(default_max_tokens)
    }

    /// The most tokens upstream can bill when the body sent carries `output` as its bound.
    pub fn worst_case(&self, output: u64) -> TokenUsage {
        TokenUsage { prompt: self.prompt_tokens, completion: output.saturating_mul(self.choices) }
    }

    /// Whether the gateway, not the caller, asks upstream for streamed usage: the usage-only
    /// chunk is then metered and not forwarded.
    pub fn hides_usage(&self) -> bool {
        self.stream && self.api.usage_on_request() && !self.caller_wants_usage
    }

    /// The splice that names another model (a `byok` call sent to its provider directly drops
    /// the `:provider` suffix the provider would not know), merged into `edits` in order.
    pub fn rename_model(&self, edits: &mut Vec<Edit>, model: &str) {
        let (Some(span), Ok(text)) = (self.model_span, serde_json::to_string(model)) else { return };
        edits.push(Edit { start: span.start, end: span.end, insert: text.into_bytes() });
        crate::core::sort::sort_small_by(edits, |a, b| (a.start, a.end).cmp(&(b.start, b.end)));
    }

    /// The splices that make the body carry `output` in every output-limit field it has and
    /// in the API's own field, and, for a stream, ask for usage. Sorted, non-overlapping.
    ///
    /// The own field is inserted even beside other limits: an upstream honours its own rules,
    /// not the caller's choice of field (OpenAI's chat reads `max_completion_tokens` else
    /// `max_tokens`, its responses only `max_output_tokens`), so a body bounded only by
    /// `max_new_tokens` would run to the context's end there.
    pub fn edits(&self, output: u64) -> Vec<Edit> {
        let Some(own_field) = self.api.limit_field() else {
            // an API that generates nothing has no bound to write (its fields go as sent)
            return Vec::new();
        };
        let n = output.to_string().into_bytes();
        let mut edits: Vec<Edit> =
            self.limit_spans.iter().map(|s| Edit { start: s.start, end: s.end, insert: n.clone() }).collect();
        let mut front = Vec::new();
        if !self.own_limit_present {
            // the key is absent however it could be spelled (keys are compared decoded), so
            // this is never a second copy of it
            front.extend_from_slice(format!("\"{own_field}\":{output},").as_bytes());
        }
        if self.stream && self.api.usage_on_request() {
            match self.stream_options {
                StreamOptions::Absent => front.extend_from_slice(br#""stream_options":{"include_usage":true},"#),
                StreamOptions::Null(s) => {
                    edits.push(Edit { start: s.start, end: s.end, insert: br#"{"include_usage":true}"#.to_vec() })
                }
                StreamOptions::Object { include_usage: Some(s), .. } => {
                    edits.push(Edit { start: s.start, end: s.end, insert: b"true".to_vec() })
                }
                StreamOptions::Object { after_open, empty, include_usage: None } => {
                    let insert = if empty { &br#""include_usage":true"#[..] } else { &br#""include_usage":true,"#[..] };
                    edits.push(Edit { start: after_open, end: after_open, insert: insert.to_vec() });
                }
            }
        }
        if !front.is_empty() {
            edits.push(Edit { start: self.after_open, end: self.after_open, insert: front });
        }
        crate::core::sort::sort_small_by(&mut edits, |a, b| (a.start, a.end).cmp(&(b.start, b.end)));
        edits
    }
}

/// The pieces of the edited body, in order: ranges of the original and inserted bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Original(usize, usize),
    Inserted(&'a [u8]),
}

impl<'a> Piece<'a> {
    /// The bytes this piece stands for, in `body`.
    pub fn bytes(&self, body: &'a [u8]) -> &'a [u8] {
        match *self {
            Piece::Original(a, b) => &body[a..b],
            Piece::Inserted(bytes) => bytes,
        }
    }
}

/// Walks `edits` over a body of `len` bytes: what to copy, in order. The edge uses it to build
/// the upstream body straight into the runtime's memory; `apply` builds it here.
pub fn pieces(len: usize, edits: &[Edit]) -> Vec<Piece<'_>> {
    let mut out = Vec::with_capacity(edits.len() * 2 + 1);
    let mut at = 0;
    for e in edits {
        if e.start > at {
            out.push(Piece::Original(at, e.start));
        }
        if !e.insert.is_empty() {
            out.push(Piece::Inserted(&e.insert));
        }
        at = at.max(e.end);
    }
    if at < len {
        out.push(Piece::Original(at, len));
    }
    out
}

/// The body with `edits` applied.
pub fn apply(body: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + edits.iter().map(|e| e.insert.len()).sum::<usize>());
    for p in pieces(body.len(), edits) {
        out.extend_from_slice(p.bytes(body));
    }
    out
}

/// Inspects a chat, completions or responses body. Anything that could make the bound
/// untrue is refused with a 400: a body that is not one JSON object, a duplicate key, a
/// missing model, a bound or choice count that is not a plain integer in range, a
/// `stream_options` that is not an object.
///
/// ```
/// use hf_gate::core::body::{apply, inspect};
/// use hf_gate::core::paths::Api;
/// let body = br#"{"model":"m","max_tokens":null,"messages":[{"role":"user","content":"hi"}]}"#;
/// let shape = inspect(body, Api::Chat, 1_000).unwrap();
/// assert_eq!(shape.requested_output, None);
/// let sent = apply(body, &shape.edits(256));
/// assert_eq!(sent, br#"{"model":"m","max_tokens":256,"messages":[{"role":"user","content":"hi"}]}"#);
/// ```
pub fn inspect(body: &[u8], api: Api, media_part_tokens: u64) -> Result<CallShape, GatewayError> {
    let bad = |e: serde_json::Error| GatewayError::InvalidRequest(e.to_string());
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = Top { body, api, media_part_tokens }.deserialize(&mut de).map_err(bad)?;
    de.end().map_err(bad)?;
    Ok(top)
}

/// What a part of the prompt added up to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    /// Bytes of text: strings and keys, decoded, and scalars at their printed size.
    text: u64,
    /// Image parts, each at the ceiling.
    media_parts: u64,
    /// Tokens of audio, video and file parts: each the larger of the ceiling and the bytes
    /// of its inline payload.
    sized: u64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.text = self.text.saturating_add(o.text);
        self.media_parts = self.media_parts.saturating_add(o.media_parts);
        self.sized = self.sized.saturating_add(o.sized);
    }
}

/// The kind of media a part's `type` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Media {
    Image,
    Sized,
}

impl Media {
    fn of(part_type: &str) -> Option<Media> {
        if IMAGE_TYPES.contains(&part_type) {
            Some(Media::Image)
        } else if SIZED_TYPES.contains(&part_type) {
            Some(Media::Sized)
        } else {
            None
        }
    }
}

fn offset_of(body: &[u8], raw: &RawValue) -> Option<Span> {
    let start = (raw.get().as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(raw.get().len())?;
    (end <= body.len()).then_some(Span { start, end })
}

/// The keys one object has given so far, to refuse a repeat: their hashes, kept sorted (at
/// most `MAX_TOP_LEVEL_FIELDS` of them). A `HashSet` did the same with its own table code in
/// the bundle.
#[derive(Default)]
struct Seen(Vec<u64>);

impl Seen {
    fn len(&self) -> usize {
        self.0.len()
    }

    /// Records `key`; `false` if it was given before.
    fn insert(&mut self, key: &str) -> bool {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let hash = h.finish();
        match self.0.binary_search(&hash) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, hash);
                true
            }
        }
    }
}

/// An integer literal from 1 to `max`, written plainly (no sign, fraction or exponent).
fn plain_integer(raw: &str, max: u64) -> Option<u64> {
    let digits = raw.as_bytes();
    if digits.is_empty() || digits.len() > 20 || digits[0] == b'0' || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    raw.parse::<u64>().ok().filter(|n| (1..=max).contains(n))
}

/// Lines a template may render a JSON value over (every `,`, `{` and `[` can start one).
fn lines_of(raw: &str) -> u64 {
    raw.bytes().filter(|b| matches!(b, b',' | b'{' | b'[')).count() as u64
}

struct Top<'b> {
    body: &'b [u8],
    api: Api,
    media_part_tokens: u64,
}

impl<'de, 'b> DeserializeSeed<'de> for Top<'b> {
    type Value = CallShape;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<CallShape, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, 'b> Visitor<'de> for Top<'b> {
    type Value = CallShape;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the body to be a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CallShape, A::Error> {
        let after_open = self.body.iter().position(|b| !b.is_ascii_whitespace()).map_or(0, |p| p + 1);
        let mut seen = Seen::default();
        let mut model = None;
        let mut model_span = None;
        let mut limits: Vec<(Span, Option<u64>)> = Vec::new();
        let mut own_limit_present = false;
        let mut choices = 1u64;
        let mut stream = false;
        let mut stream_options = StreamOptions::Absent;
        let mut caller_wants_usage = false;
        let mut tally = Tally::default();
        let mut messages = 0u64;
        let mut prompts = 1u64;
        let mut rendered = 0u64;
        let mut tools = false;
        let mut server_tools = None;
        let generates = self.api.generates();
        while let Some(key) = map.next_key::<KeyText>()? {
            let key = key.0;
            if seen.len() >= MAX_TOP_LEVEL_FIELDS {
                return Err(de::Error::custom(format_args!("at most {MAX_TOP_LEVEL_FIELDS} top-level fields")));
            }
            if !seen.insert(&key) {
                return Err(de::Error::custom(format_args!("duplicate key '{}'", truncate(&key))));
            }
            match key.as_str() {
                "model" => {
                    let raw: &RawValue = map.next_value()?;
                    model_span = offset_of(self.body, raw);
                    // read as a tree, the one typed read of a value the crate has anyway
                    let Ok(Value::String(m)) = serde_json::from_slice(raw.get().as_bytes()) else {
                        return Err(de::Error::custom("'model' must be a string"));
                    };
                    if m.trim().is_empty() || m.len() > MAX_MODEL_LEN {
                        return Err(de::Error::custom("'model' must be a non-empty string of at most 256 bytes"));
                    }
                    model = Some(m);
                }
                // an API that generates nothing reads none of these: they are text to it
                f if generates && LIMIT_FIELDS.contains(&f) => {
                    let raw: &RawValue = map.next_value()?;
                    let span = offset_of(self.body, raw).ok_or_else(|| de::Error::custom("unreadable body"))?;
                    let value = match raw.get() {
                        "null" => None,
                        text => Some(plain_integer(text, MAX_OUTPUT_TOKENS).ok_or_else(|| {
                            de::Error::custom(format_args!("'{f}' must be an integer from 1 to {MAX_OUTPUT_TOKENS}"))
                        })?),
                    };
                    limits.push((span, value));
                    own_limit_present |= self.api.limit_field() == Some(f);
                }
                f @ ("n" | "best_of") if generates => {
                    let raw: &RawValue = map.next_value()?;
                    if raw.get() != "null" {
                        let n = plain_integer(raw.get(), MAX_CHOICES).ok_or_else(|| {
                            de::Error::custom(format_args!("'{f}' must be an integer from 1 to {MAX_CHOICES}"))
                        })?;
                        choices = choices.max(n);
                    }
                }
                "stream" if generates => {
                    let raw: &RawValue = map.next_value()?;
                    stream = match raw.get() {
                        "true" => true,
                        "false" | "null" => false,
                        _ => return Err(de::Error::custom("'stream' must be a boolean")),
                    };
                }
                "stream_options" if generates => {
                    let raw: &RawValue = map.next_value()?;
                    let span = offset_of(self.body, raw).ok_or_else(|| de::Error::custom("unreadable body"))?;
                    (stream_options, caller_wants_usage) = read_stream_options(self.body, raw, span)?;
                }
                f if f == self.api.prompt_field() => {
                    let found = map.next_value_seed(PromptSeed { ceiling: self.media_part_tokens })?;
                    tally.add(found.tally);
                    messages = messages.saturating_add(found.elements.max(1));
                    if self.api == Api::Completions {
                        prompts = found.batch.max(1);
                    }
                }
                other => {
                    let raw: &RawValue = map.next_value()?;
                    let text = raw.get();
                    if text.starts_with('"') {
                        // a top-level string (instructions, system, suffix): its text, at most
                        tally.text = tally.text.saturating_add(text.len().saturating_sub(2) as u64);
                    } else if text.starts_with(['{', '[']) {
                        // tools, schemas, unknown fields: counted whole, with room for the
                        // line breaks and indentation a template renders them with
                        rendered = rendered.saturating_add(text.len() as u64).saturating_add(2 * lines_of(text));
                        tools |= matches!(other, "tools" | "functions");
                    }
                    if server_tools.is_none() {
                        server_tools = run_upstream(other, text).map_err(de::Error::custom)?;
                    }
                }
            }
        }
        let model = model.ok_or_else(|| de::Error::custom("'model' is required"))?;
        let prompt_tokens = REQUEST_OVERHEAD_TOKENS
            .saturating_add(tally.text)
            .saturating_add(rendered)
            .saturating_add(messages.saturating_mul(MESSAGE_OVERHEAD_TOKENS))
            .saturating_add(tally.media_parts.saturating_mul(self.media_part_tokens))
            .saturating_add(tally.sized)
            .saturating_add(if tools { TOOLS_OVERHEAD_TOKENS } else { 0 });
        if caller_wants_usage && !stream {
            caller_wants_usage = false;
        }
        Ok(CallShape {
            api: self.api,
            model,
            // nothing generated: no output to bound, whatever the plan's default
            requested_output: if generates { limits.iter().filter_map(|(_, v)| *v).min() } else { Some(0) },
            choices: choices.saturating_mul(prompts),
            prompt_tokens,
            stream,
            caller_wants_usage,
            server_tools,
            after_open,
            limit_spans: limits.into_iter().map(|(s, _)| s).collect(),
            own_limit_present,
            stream_options,
            model_span,
        })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Whether a top-level field asks the upstream to run tools itself, or to prompt with text it
/// keeps (an earlier response, a conversation, a stored prompt), and where.
fn run_upstream(field: &str, raw: &str) -> Result<Option<Unbounded>, serde_json::Error> {
    let kept = |what: &str| Unbounded {
        field: field.into(),
        reason: format!("it asks the upstream to prompt with {what} it keeps, billed as input the body does not carry"),
    };
    match field {
        "previous_response_id" if raw != "null" => Ok(Some(kept("an earlier response and the conversation"))),
        "conversation" if raw != "null" => Ok(Some(kept("a conversation"))),
        // the prompt field of completions never comes here; elsewhere an object is a stored
        // prompt template (`{"id": "pmpt_..."}`)
        "prompt" if raw.starts_with('{') => Ok(Some(kept("a stored prompt"))),
        "tools" if raw.starts_with('[') => {
            let mut de = serde_json::Deserializer::from_slice(raw.as_bytes());
            de.deserialize_seq(ToolsVisitor)
        }
        "tools" if raw != "null" => Ok(Some(Unbounded {
            field: "tools".into(),
            reason: "it is not an array of tools, so which of them the upstream runs cannot be told".into(),
        })),
        "web_search_options" if raw != "null" => Ok(Some(Unbounded {
            field: "web_search_options".into(),
            reason:
                "it asks the upstream to search the web itself, billed per search and in tokens the body does not carry"
                    .into(),
        })),
        _ => Ok(None),
    }
}

/// The first entry of a `tools` array that is not a tool the caller runs.
struct ToolsVisitor;

impl<'de> Visitor<'de> for ToolsVisitor {
    type Value = Option<Unbounded>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("'tools' to be an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Unbounded>, A::Error> {
        let mut found = None;
        let mut at = 0usize;
        // read to the end even after a find, so the deserializer sees the whole array
        while let Some(entry) = seq.next_element::<&RawValue>()? {
            if found.is_none() {
                let why = match entry.get() {
                    text if text.starts_with('{') => {
                        let mut de = serde_json::Deserializer::from_slice(text.as_bytes());
                        de.deserialize_map(ToolType).map_err(de::Error::custom)?
                    }
                    _ => Some("it is not a tool object, so what runs it cannot be told".to_string()),
                };
                found = why.map(|reason| Unbounded { field: format!("tools[{at}]"), reason });
            }
            at = at.saturating_add(1);
        }
        Ok(found)
    }
}

/// Why one tool entry is run by the upstream, or `None` for a tool the caller runs. Every
/// `type` member is read: with two, an upstream may honour either.
struct ToolType;

impl<'de> Visitor<'de> for ToolType {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a tool object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        let mut why = None;
        while let Some(key) = map.next_key::<KeyText>()? {
            let raw: &RawValue = map.next_value()?;
            if key.0 != "type" || why.is_some() {
                continue;
            }
            // an absent or null type is a function to every API that defaults it
            why = match serde_json::from_slice(raw.get().as_bytes()) {
                Ok(Value::Null) => None,
                Ok(Value::String(t)) if CLIENT_TOOL_TYPES.contains(&t.as_str()) => None,
                Ok(Value::String(t)) => Some(format!(
                    "a tool of type {:?} is run by the upstream itself, in a loop of calls and tokens the body does not bound",
                    truncate(&t)
                )),
                _ => Some("its 'type' is not a string, so what runs it cannot be told".to_string()),
            };
        }
        Ok(why)
    }
}

fn read_stream_options<E: de::Error>(body: &[u8], raw: &RawValue, span: Span) -> Result<(StreamOptions, bool), E> {
    match raw.get() {
        "null" => Ok((StreamOptions::Null(span), false)),
        text if text.starts_with('{') => {
            if text.len() > MAX_STREAM_OPTIONS_BYTES {
                return Err(E::custom("'stream_options' is too large"));
            }
            let mut de = serde_json::Deserializer::from_slice(text.as_bytes());
            let found = de.deserialize_map(StreamOptionsVisitor { body }).map_err(E::custom)?;
            Ok((
                StreamOptions::Object {
                    after_open: span.start + 1,
                    empty: found.members == 0,
                    include_usage: found.span,
                },
                found.include_usage,
            ))
        }
        _ => Err(E::custom("'stream_options' must be an object")),
    }
}

struct StreamOptionsFound {
    members: usize,
    span: Option<Span>,
    include_usage: bool,
}

struct StreamOptionsVisitor<'b> {
    body: &'b [u8],
}

impl<'de, 'b> Visitor<'de> for StreamOptionsVisitor<'b> {
    type Value = StreamOptionsFound;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("'stream_options' to be an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StreamOptionsFound, A::Error> {
        // at most a few hundred keys in `MAX_STREAM_OPTIONS_BYTES`: a list is enough
        let mut seen: Vec<String> = Vec::new();
        let mut found = StreamOptionsFound { members: 0, span: None, include_usage: false };
        while let Some(key) = map.next_key::<KeyText>()? {
            found.members += 1;
            if seen.contains(&key.0) {
                return Err(de::Error::custom(format_args!("duplicate key 'stream_options.{}'", truncate(&key.0))));
            }
            seen.push(key.0.clone());
            let raw: &RawValue = map.next_value()?;
            if key.0 == "include_usage" {
                found.include_usage = match raw.get() {
                    "true" => true,
                    "false" | "null" => false,
                    _ => return Err(de::Error::custom("'stream_options.include_usage' must be a boolean")),
                };
                found.span = offset_of(self.body, raw);
            }
        }
        Ok(found)
    }
}

/// A key, decoded (escapes resolved, so `"max\u005ftokens"` is `max_tokens`).
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(KeyText)
    }
}

/// The prompt field: its text, and how many messages or batched prompts it holds.
struct PromptSeed {
    /// `MEDIA_PART_TOKENS`.
    ceiling: u64,
}

#[derive(Default)]
struct PromptFound {
    tally: Tally,
    /// Elements of the top-level array (messages, input items, prompts).
    elements: u64,
    /// How many prompts a completion's batch can run: one for an array of token ids (numbers
    /// only), else one per element, whatever it holds. An upstream that reads `["a", 5]` as a
    /// batch runs a generation for the `5` as well; one that refuses it runs none.
    batch: u64,
}

impl<'de> DeserializeSeed<'de> for PromptSeed {
    type Value = PromptFound;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<PromptFound, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PromptSeed {
    type Value = PromptFound;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("messages, an input or a prompt")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PromptFound, A::Error> {
        let mut found = PromptFound::default();
        let mut numbers = 0u64;
        loop {
            let mut tally = Tally::default();
            let Some(kind) = seq.next_element_seed(Count { tally: &mut tally, ceiling: self.ceiling })? else { break };
            found.tally.add(tally);
            found.elements += 1;
            numbers += u64::from(matches!(kind, Kind::Number));
        }
        found.batch = if numbers == found.elements { 1 } else { found.elements };
        Ok(found)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<PromptFound, E> {
        Ok(PromptFound { tally: Tally { text: v.len() as u64, ..Tally::default() }, elements: 1, batch: 1 })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PromptFound, A::Error> {
        let mut tally = Tally::default();
        Count { tally: &mut tally, ceiling: self.ceiling }.visit_map(map)?;
        Ok(PromptFound { tally, elements: 1, batch: 1 })
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<PromptFound, E> {
        Ok(PromptFound { tally: Tally { text: 20, ..Tally::default() }, elements: 1, batch: 1 })
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<PromptFound, E> {
        self.visit_u64(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<PromptFound, E> {
        self.visit_u64(0)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<PromptFound, E> {
        self.visit_u64(0)
    }

    fn visit_unit<E: de::Error>(self) -> Result<PromptFound, E> {
        Ok(PromptFound::default())
    }
}

/// What one counted value was.
enum Kind {
    Text { media: Option<Media> },
    Number,
    Other,
    Array,
}

/// Counts the prompt text of one value: string and key bytes (decoded), scalars at their
/// printed size, media parts at the ceiling or their size.
struct Count<'t> {
    tally: &'t mut Tally,
    /// `MEDIA_PART_TOKENS`.
    ceiling: u64,
}

impl<'de, 't> DeserializeSeed<'de> for Count<'t> {
    type Value = Kind;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'t> Count<'t> {
    fn text(self, bytes: u64) -> Kind {
        self.tally.text = self.tally.text.saturating_add(bytes);
        Kind::Other
    }
}

impl<'de, 't> Visitor<'de> for Count<'t> {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        self.tally.text = self.tally.text.saturating_add(v.len() as u64);
        Ok(Kind::Text { media: Media::of(v) })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
        self.text(v.checked_ilog10().map_or(1, |d| u64::from(d) + 1));
        Ok(Kind::Number)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Kind, E> {
        self.text(20);
        Ok(Kind::Number)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Kind, E> {
        // the literal's length is gone once parsed; a float's shortest form is at most 24
        self.text(24);
        Ok(Kind::Number)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Kind, E> {
        Ok(self.text(5))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(self.text(4))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        while seq.next_element_seed(Count { tally: &mut *self.tally, ceiling: self.ceiling })?.is_some() {}
        Ok(Kind::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        // a media part's payload (base64 or a URL) is not prompt text: it is counted aside
        // and, once the part's `type` says what it is, replaced by what that kind costs
        let mut payload = Tally::default();
        let mut media = None;
        let ceiling = self.ceiling;
        while let Some(key) = map.next_key::<KeyText>()? {
            // keys are text too: a template renders an object (tool-call arguments given as
            // one) with its keys
            self.tally.text = self.tally.text.saturating_add(key.0.len() as u64);
            if key.0 == "type" {
                // with two `type` members an upstream may read either: the dearer counts
                if let Kind::Text { media: Some(m) } =
                    map.next_value_seed(Count { tally: &mut *self.tally, ceiling })?
                {
                    media = media.max(Some(m));
                }
            } else if MEDIA_PAYLOAD_KEYS.contains(&key.0.as_str()) {
                map.next_value_seed(Count { tally: &mut payload, ceiling })?;
            } else {
                map.next_value_seed(Count { tally: &mut *self.tally, ceiling })?;
            }
        }
        match media {
            None => self.tally.add(payload),
            Some(kind) => {
                // media nested inside a payload is kept; its text is what the kind replaces
                let nested = Tally { text: 0, ..payload };
                self.tally.add(nested);
                match kind {
                    Media::Image => self.tally.media_parts = self.tally.media_parts.saturating_add(1),
                    // inline audio, video or a file: its tokens grow with its length, taken
                    // at most a token per byte of the payload given (base64 is 4/3 of what it
                    // encodes); a URL or a file id tells nothing of the size: the ceiling
                    Media::Sized => self.tally.sized = self.tally.sized.saturating_add(ceiling.max(payload.text)),
                }
            }
        }
        Ok(Kind::Other)
    }
}

/// Fields that multiply what a call priced per request produces (images, videos, samples).
pub const OUTPUT_COUNT_FIELDS: &[&str] = &["n", "num_images", "num_outputs", "batch_size", "num_videos", "num_samples"];
/// Objects one level down where providers put them too: Replicate's `input`, hf-inference's
/// `parameters`.
const OUTPUT_COUNT_PARENTS: &[&str] = &["input", "parameters"];

/// How many outputs a call priced per request asks for (a queued job, an image generation):
/// the product of every count field present at the top and under `input` and `parameters`,
/// at least 1. A per-request price is reserved and charged that many times.
///
/// Read without building a tree. A body that is not a JSON object (binary audio, an empty
/// body) asks for one. Refused with a 400 naming the field: a count that is not a plain
/// integer from 1 to 128 (`null` is absent), a duplicate key at the top or a duplicate count
/// below it, an object that does not parse to its end.
///
/// ```
/// use hf_gate::core::body::outputs_of;
/// assert_eq!(outputs_of(br#"{"prompt":"a cat","num_images":4}"#).unwrap(), 4);
/// assert_eq!(outputs_of(br#"{"input":{"num_outputs":2},"n":null}"#).unwrap(), 2);
/// assert_eq!(outputs_of(b"RIFF....WAVEfmt ").unwrap(), 1);
/// assert!(outputs_of(br#"{"num_images":0}"#).is_err());
/// ```
pub fn outputs_of(body: &[u8]) -> Result<u64, GatewayError> {
    measure(body).map(|m| m.outputs)
}

/// What a call priced per output asks for: how many outputs, and how large each image is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Measure {
    /// As `outputs_of` counts them.
    pub outputs: u64,
    /// The pixels of one output, the largest the body names (`image_size` as a preset or
    /// `{width, height}`, `width` with `height`, `size` as `"WxH"`), at the top or under
    /// `input` or `parameters`; `None` when it names none.
    pub pixels: Option<u64>,
    /// A size field whose size cannot be known (a preset nobody listed, a width without a
    /// height): where it is.
    pub unknown_size: Option<String>,
}

impl Measure {
    /// Megapixels of one output as image providers bill them, rounded up (1024x1024 is one,
    /// 1024x1025 two); `None` when the body names no size (the route's default then counts).
    pub fn megapixels(&self) -> Option<u64> {
        self.pixels.map(|p| p.div_ceil(MEGAPIXEL).max(1))
    }
}

/// Pixels in a billed megapixel: fal prices FLUX at "$0.025 per megapixel" and a 1024x1024
/// image at $0.025.
pub const MEGAPIXEL: u64 = 1 << 20;
/// The widest side a size may name.
const MAX_SIDE: u64 = 1 << 16;
/// Fields that set an output image's size in a way `measure` cannot count: on a route priced
/// by the megapixel, a body that carries one is refused.
const SIZE_HINTS: &[&str] = &[
    "aspect_ratio",
    "resolution",
    "megapixels",
    "target_size",
    "output_size",
    "image_url",
    "image",
    "input_image",
    "init_image",
];
/// fal's `image_size` presets, in pixels.
const IMAGE_SIZE_PRESETS: &[(&str, u64)] = &[
    ("square_hd", 1024 * 1024),
    ("square", 512 * 512),
    ("portrait_4_3", 768 * 1024),
    ("portrait_16_9", 576 * 1024),
    ("landscape_4_3", 1024 * 768),
    ("landscape_16_9", 1024 * 576),
];

/// The outputs and sizes of a body (`outputs_of`, `Measure`).
///
/// ```
/// use hf_gate::core::body::measure;
/// let m = measure(br#"{"prompt":"a cat","image_size":{"width":4096,"height":4096},"num_images":2}"#).unwrap();
/// assert_eq!((m.outputs, m.megapixels()), (2, Some(16)));
/// assert_eq!(measure(br#"{"image_size":"landscape_4_3"}"#).unwrap().megapixels(), Some(1));
/// assert_eq!(measure(br#"{"input":{"width":2048,"height":1024}}"#).unwrap().megapixels(), Some(2));
/// assert_eq!(measure(br#"{"size":"1024x1024"}"#).unwrap().megapixels(), Some(1));
/// assert_eq!(measure(br#"{"prompt":"a cat"}"#).unwrap().megapixels(), None);
/// assert_eq!(measure(br#"{"image_size":"cinema"}"#).unwrap().unknown_size.as_deref(), Some("image_size"));
/// ```
pub fn measure(body: &[u8]) -> Result<Measure, GatewayError> {
    // not a JSON object (binary audio, a form): one output, of a size nobody can read
    let one = Measure { outputs: 1, pixels: None, unknown_size: Some("body".to_string()) };
    let Some(text) = as_utf8(body) else { return Ok(one) };
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Ok(one);
    }
    let bad = |e: serde_json::Error| GatewayError::InvalidRequest(e.to_string());
    let mut de = serde_json::Deserializer::from_slice(&text);
    let mut m = de.deserialize_map(Outputs { parent: None }).map_err(bad)?;
    de.end().map_err(bad)?;
    m.outputs = m.outputs.max(1);
    Ok(m)
}

/// The pixels a size value names, if it names one: a preset, `{width, height}`, or `"WxH"`.
fn pixels_of(value: &str) -> Option<u64> {
    let side = |v: &Value| v.as_u64().filter(|n| (1..=MAX_SIDE).contains(n));
    match serde_json::from_str::<Value>(value).ok()? {
        Value::String(s) => IMAGE_SIZE_PRESETS.iter().find(|(name, _)| *name == s).map(|(_, p)| *p).or_else(|| {
            let (w, h) = s.split_once(['x', 'X', '*'])?;
            let side = |t: &str| t.trim().parse::<u64>().ok().filter(|n| (1..=MAX_SIDE).contains(n));
            Some(side(w)? * side(h)?)
        }),
        Value::Object(o) => Some(side(o.get("width")?)? * side(o.get("height")?)?),
        _ => None,
    }
}

/// The body as the UTF-8 a JSON reader upstream would decode it to, `None` if it decodes to
/// no text. Python's `json.loads` (behind most providers' servers) takes bytes in UTF-16 and
/// UTF-32 too, told by a byte order mark or by where the zero bytes are (RFC 4627): a count
/// hidden in another encoding still counts.
fn as_utf8(body: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    use std::borrow::Cow;
    #[derive(Clone, Copy)]
    enum Wide {
        U16 { big: bool },
        U32 { big: bool },
    }
    let (wide, skip) = match body {
        [0x00, 0x00, 0xFE, 0xFF, ..] => (Wide::U32 { big: true }, 4),
        [0xFF, 0xFE, 0x00, 0x00, ..] => (Wide::U32 { big: false }, 4),
        [0xFE, 0xFF, ..] => (Wide::U16 { big: true }, 2),
        [0xFF, 0xFE, ..] => (Wide::U16 { big: false }, 2),
        [0xEF, 0xBB, 0xBF, rest @ ..] => return Some(Cow::Borrowed(rest)),
        [0x00, b, _, _, ..] => (if *b == 0 { Wide::U32 { big: true } } else { Wide::U16 { big: true } }, 0),
        [a, 0x00, c, d, ..] if *a != 0 => {
            (if *c == 0 && *d == 0 { Wide::U32 { big: false } } else { Wide::U16 { big: false } }, 0)
        }
        [0x00, _] => (Wide::U16 { big: true }, 0),
        [_, 0x00] => (Wide::U16 { big: false }, 0),
        _ => return Some(Cow::Borrowed(body)),
    };
    let rest = body.get(skip..)?;
    let text: String = match wide {
        Wide::U16 { big } => {
            let units = rest.chunks(2).map(|c| match (c, big) {
                ([a, b], true) => Some(u16::from_be_bytes([*a, *b])),
                ([a, b], false) => Some(u16::from_le_bytes([*a, *b])),
                _ => None,
            });
            let units: Option<Vec<u16>> = units.collect();
            char::decode_utf16(units?).collect::<Result<String, _>>().ok()?
        }
        Wide::U32 { big } => rest
            .chunks(4)
            .map(|c| {
                let word: [u8; 4] = c.try_into().ok()?;
                char::from_u32(if big { u32::from_be_bytes(word) } else { u32::from_le_bytes(word) })
            })
            .collect::<Option<String>>()?,
    };
    Some(Cow::Owned(text.into_bytes()))
}

/// Multiplies the count fields of one object: the body (`parent` is `None`) or one of the
/// objects under it that providers read counts from.
struct Outputs<'p> {
    parent: Option<&'p str>,
}

impl<'de, 'p> Visitor<'de> for Outputs<'p> {
    type Value = Measure;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Measure, A::Error> {
        let mut seen = Seen::default();
        let mut m = Measure { outputs: 1, ..Measure::default() };
        // `width` and `height` of this object, each once it is read
        let (mut width, mut height) = (None, None);
        let size = |m: &mut Measure, named: &str, pixels: Option<u64>| match pixels {
            Some(p) => m.pixels = Some(m.pixels.unwrap_or(0).max(p)),
            None => {
                m.unknown_size.get_or_insert_with(|| named.to_string());
            }
        };
        while let Some(key) = map.next_key::<KeyText>()? {
            let key = key.0;
            let named = match self.parent {
                Some(parent) => format!("{parent}.{}", truncate(&key)),
                None => truncate(&key),
            };
            let counted = OUTPUT_COUNT_FIELDS.contains(&key.as_str());
            // every key at the top, as `inspect` does; below it only the counts matter, and
            // a count given twice may be read either way
            if self.parent.is_none() || counted {
                if seen.len() >= MAX_TOP_LEVEL_FIELDS {
                    return Err(de::Error::custom(format_args!("at most {MAX_TOP_LEVEL_FIELDS} top-level fields")));
                }
                if !seen.insert(&key) {
                    return Err(de::Error::custom(format_args!("duplicate key '{named}'")));
                }
            }
            if counted {
                let raw: &RawValue = map.next_value()?;
                if raw.get() != "null" {
                    let n = plain_integer(raw.get(), MAX_CHOICES).ok_or_else(|| {
                        de::Error::custom(format_args!("'{named}' must be an integer from 1 to {MAX_CHOICES}"))
                    })?;
                    m.outputs = m.outputs.saturating_mul(n);
                }
            } else if self.parent.is_none() && OUTPUT_COUNT_PARENTS.contains(&key.as_str()) {
                let raw: &RawValue = map.next_value()?;
                if raw.get().starts_with('{') {
                    let mut de = serde_json::Deserializer::from_slice(raw.get().as_bytes());
                    let below = de.deserialize_map(Outputs { parent: Some(&key) }).map_err(de::Error::custom)?;
                    m.outputs = m.outputs.saturating_mul(below.outputs);
                    if let Some(p) = below.pixels {
                        size(&mut m, &named, Some(p));
                    }
                    if let Some(field) = below.unknown_size {
                        m.unknown_size.get_or_insert(field);
                    }
                }
            } else if matches!(key.as_str(), "image_size" | "size") {
                let raw: &RawValue = map.next_value()?;
                if raw.get() != "null" {
                    size(&mut m, &named, pixels_of(raw.get()));
                }
            } else if matches!(key.as_str(), "width" | "height") {
                let raw: &RawValue = map.next_value()?;
                let side = serde_json::from_str::<Value>(raw.get())
                    .ok()
                    .and_then(|v| v.as_u64())
                    .filter(|n| (1..=MAX_SIDE).contains(n));
                let slot: &mut Option<Option<u64>> = if key == "width" { &mut width } else { &mut height };
                // given twice (below the top, where keys may repeat): the larger, as a reader
                // may keep either
                *slot = Some(match *slot {
                    None => side,
                    Some(before) => before.zip(side).map(|(a, b)| a.max(b)),
                });
            } else if SIZE_HINTS.contains(&key.as_str()) {
                // a size named some other way (an aspect ratio and a resolution, an input image
                // whose size the output takes): not one the gateway can count
                let raw: &RawValue = map.next_value()?;
                if raw.get() != "null" {
                    m.unknown_size.get_or_insert(named);
                }
            } else {
                map.next_value::<de::IgnoredAny>()?;
            }
        }
        match (width, height) {
            (None, None) => {}
            (Some(Some(w)), Some(Some(h))) => size(&mut m, "width", Some(w * h)),
            _ => size(&mut m, &self.parent.map_or("width".to_string(), |p| format!("{p}.width")), None),
        }
        Ok(m)
    }
}

/// Usage from a whole (non-streamed) response body; `None` if it is not JSON or has none.
/// Read without building the body's tree: everything but the counts is skipped.
///
/// Read as serde's derives read the three structs it once was (`{usage, response: {usage}}`,
/// the usage's four optional counts), by one visitor: an object, or an array of the fields in
/// order, each field's `null` or absence nothing; a field given twice, a count that is not an
/// unsigned integer, any other JSON, and it has none.
pub fn usage_of_body(body: &[u8]) -> Option<TokenUsage> {
    usage_counted(body, true)
}

/// The usage of an answer that generates nothing (embeddings): its count gives the prompt
/// and the total only, and anything in the total past the prompt counts as output.
///
/// ```
/// use hf_gate::core::body::usage_of_embeddings;
/// use hf_gate::core::pricing::TokenUsage;
/// let body = br#"{"data":[],"usage":{"prompt_tokens":9,"total_tokens":9}}"#;
/// assert_eq!(usage_of_embeddings(body), Some(TokenUsage { prompt: 9, completion: 0 }));
/// assert_eq!(usage_of_embeddings(br#"{"data":[]}"#), None);
/// ```
pub fn usage_of_embeddings(body: &[u8]) -> Option<TokenUsage> {
    usage_counted(body, false)
}

fn usage_counted(body: &[u8], generates: bool) -> Option<TokenUsage> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let read = Part(Some(Shape::Carrier)).deserialize(&mut de).ok()?;
    de.end().ok()?;
    let Got::Usage(Some(c)) = read else { return None };
    let [prompt_tokens, input_tokens, completion_tokens, output_tokens, total_tokens] = c;
    let completion = completion_tokens.or(output_tokens).or((!generates).then_some(0));
    TokenUsage::reported(prompt_tokens.or(input_tokens), completion, total_tokens)
}

/// The counts a usage object gives, in `Shape::Counts`' order.
type Counts = [Option<u64>; 5];

/// The structs `usage_of_body` reads.
#[derive(Clone, Copy)]
enum Shape {
    /// The body: `usage`, or `response.usage` (responses API).
    Carrier,
    /// `response`: its `usage`.
    Nested,
    /// The usage object.
    Counts,
}

impl Shape {
    fn fields(self) -> &'static [&'static str] {
        match self {
            Shape::Carrier => &["usage", "response"],
            Shape::Nested => &["usage"],
            Shape::Counts => &["prompt_tokens", "input_tokens", "completion_tokens", "output_tokens", "total_tokens"],
        }
    }

    /// What field `i` holds: a struct, or (`None`) a count.
    fn field(self, i: usize) -> Option<Shape> {
        match (self, i) {
            (Shape::Counts, _) => None,
            (Shape::Carrier, 1) => Some(Shape::Nested),
            _ => Some(Shape::Counts),
        }
    }

    /// The struct's answer from its fields' values: its counts, or the first field that gives
    /// a usage (`usage` before `response.usage`).
    fn answer(self, values: [Got; 5]) -> Got {
        match self {
            Shape::Counts => Got::Usage(Some(values.map(|v| match v {
                Got::Count(n) => Some(n),
                _ => None,
            }))),
            _ => Got::Usage(values.into_iter().find_map(|v| match v {
                Got::Usage(u) => u,
                _ => None,
            })),
        }
    }
}

/// One value `usage_of_body` reads: a struct of a `Shape`, or (`None`) a count; either may
/// be `null`.
struct Part(Option<Shape>);

enum Got {
    Null,
    Count(u64),
    /// A struct read: the usage it gives, if any.
    Usage(Option<Counts>),
}

impl<'de> DeserializeSeed<'de> for Part {
    type Value = Got;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Got, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Part {
    type Value = Got;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(if self.0.is_some() { "a usage object" } else { "a token count" })
    }

    fn visit_unit<E: de::Error>(self) -> Result<Got, E> {
        Ok(Got::Null)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Got, E> {
        match self.0 {
            None => Ok(Got::Count(n)),
            Some(_) => Err(de::Error::invalid_type(de::Unexpected::Unsigned(n), &self)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Got, A::Error> {
        let Some(shape) = self.0 else { return Err(de::Error::invalid_type(de::Unexpected::Map, &self)) };
        let mut values = [Got::Null, Got::Null, Got::Null, Got::Null, Got::Null];
        let mut given = [false; 5];
        while let Some(key) = map.next_key::<KeyText>()? {
            let Some(i) = shape.fields().iter().position(|f| *f == key.0) else {
                map.next_value::<de::IgnoredAny>()?;
                continue;
            };
            if std::mem::replace(&mut given[i], true) {
                return Err(de::Error::custom("a usage field given twice"));
            }
            values[i] = map.next_value_seed(Part(shape.field(i)))?;
        }
        Ok(shape.answer(values))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Got, A::Error> {
        let Some(shape) = self.0 else { return Err(de::Error::invalid_type(de::Unexpected::Seq, &self)) };
        let mut values = [Got::Null, Got::Null, Got::Null, Got::Null, Got::Null];
        for (i, value) in values.iter_mut().enumerate().take(shape.fields().len()) {
            *value = seq.next_element_seed(Part(shape.field(i)))?.ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        Ok(shape.answer(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Counts {
        prompt_tokens: Option<u64>,
        input_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        output_tokens: Option<u64>,
        total_tokens: Option<u64>,
    }

    #[derive(Deserialize)]
    struct Nested {
        usage: Option<Counts>,
    }

    #[derive(Deserialize)]
    struct UsageCarrier {
        usage: Option<Counts>,
        response: Option<Nested>,
    }

    /// `usage_of_body` as serde's derives read it before: the model its visitor must agree with.
    fn derived_usage_of_body(body: &[u8]) -> Option<TokenUsage> {
        let carrier: UsageCarrier = serde_json::from_slice(body).ok()?;
        let c = carrier.usage.or_else(|| carrier.response?.usage)?;
        TokenUsage::reported(
            c.prompt_tokens.or(c.input_tokens),
            c.completion_tokens.or(c.output_tokens),
            c.total_tokens,
        )
    }
    use serde_json::Value;

    fn chat(body: &str) -> Result<CallShape, GatewayError> {
        inspect(body.as_bytes(), Api::Chat, 1_000)
    }

    fn sent(body: &str, api: Api, output: u64) -> Value {
        let shape = inspect(body.as_bytes(), api, 1_000).unwrap();
        let out = apply(body.as_bytes(), &shape.edits(output));
        serde_json::from_slice(&out).unwrap()
    }

    /// JSON-ish text from a fixed LCG: the usage shapes as objects and as arrays, nulls,
    /// repeats, counts of every JSON kind, and a little broken syntax.
    fn usage_like(seed: &mut u64, depth: u32) -> String {
        fn roll(seed: &mut u64, n: usize) -> usize {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (*seed >> 33) as usize % n
        }
        const KEYS: [&str; 9] = [
            "usage",
            "response",
            "prompt_tokens",
            "input_tokens",
            "completion_tokens",
            "output_tokens",
            "total_tokens",
            "x",
            "usag\\u0065",
        ];
        const LEAVES: [&str; 12] =
            ["null", "0", "7", "-3", "1.5", "1e2", "18446744073709551616", "\"9\"", "true", "[]", "{}", "nul"];
        match (depth, roll(seed, 4)) {
            // mostly counts a usage may hold, so that many bodies have one
            (0, _) | (_, 0) => LEAVES[roll(seed, LEAVES.len()).min(roll(seed, LEAVES.len()))].to_string(),
            (_, 1) => {
                let items: Vec<String> = (0..roll(seed, 6)).map(|_| usage_like(seed, depth - 1)).collect();
                format!("[{}]", items.join(","))
            }
            _ => {
                let members: Vec<String> = (0..roll(seed, 5))
                    .map(|_| {
                        let k = KEYS[roll(seed, KEYS.len())];
                        format!("\"{k}\":{}", usage_like(seed, depth - 1))
                    })
                    .collect();
                format!("{{{}}}", members.join(","))
            }
        }
    }

    #[test]
    fn usage_of_body_reads_as_the_derived_structs_did() {
        let mut seed = 0x5eed_u64;
        let mut found = 0;
        for i in 0..200_000 {
            let mut body = match i % 5 {
                0 => usage_like(&mut seed, 4),
                1 => format!("{{\"usage\":{}}}", usage_like(&mut seed, 2)),
                2 => format!("{{\"x\":1,\"response\":{{\"usage\":{}}}}}", usage_like(&mut seed, 2)),
                3 => format!("[{},[{}]]", usage_like(&mut seed, 2), usage_like(&mut seed, 2)),
                // both sides and a total, each any leaf: a usage often enough to count
                _ => {
                    let [a, b, c] = [0; 3].map(|_| usage_like(&mut seed, 0));
                    format!("{{\"usage\":{{\"prompt_tokens\":{a},\"output_tokens\":{b},\"total_tokens\":{c}}}}}")
                }
            };
            if i % 7 == 0 {
                body.push_str(" x");
            }
            let ours = usage_of_body(body.as_bytes());
            assert_eq!(ours, derived_usage_of_body(body.as_bytes()), "{body}");
            found += usize::from(ours.is_some());
        }
        assert!(found > 1_000, "the generator reaches usages: {found}");
        for body in [
            r#"[{"prompt_tokens":1},null]"#,
            r#"[[1,null,2,null],null]"#,
            r#"[null,[[3,4,5,6]]]"#,
            r#"[null,[[3,4,5,6]],1]"#,
            r#"[null]"#,
            r#"{"usage":null,"response":{"usage":{"output_tokens":2}}}"#,
            r#"{"usage":{"prompt_tokens":1},"usage":null}"#,
            r#"{"usage":{"prompt_tokens":-1}}"#,
        ] {
            assert_eq!(usage_of_body(body.as_bytes()), derived_usage_of_body(body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn dodgy_bounds_and_models_are_refused() {
        for body in [
            r#"{"messages":[]}"#,
            r#"{"model":""}"#,
            r#"{"model":42}"#,
            r#"{"model":"m","max_tokens":-1}"#,
            r#"{"model":"m","max_tokens":0}"#,
            r#"{"model":"m","max_tokens":1.5}"#,
            r#"{"model":"m","max_tokens":10.0}"#,
            r#"{"model":"m","max_tokens":1e3}"#,
            r#"{"model":"m","max_tokens":"100"}"#,
            r#"{"model":"m","max_tokens":1e300}"#,
            r#"{"model":"m","max_tokens":99999999999}"#,
            r#"{"model":"m","max_completion_tokens":[]}"#,
            r#"{"model":"m","n":0}"#,
            r#"{"model":"m","n":129}"#,
            r#"{"model":"m","n":1000000}"#,
            r#"{"model":"m","best_of":"2"}"#,
            r#"{"model":"m","stream":"yes"}"#,
            r#"{"model":"m","stream_options":5}"#,
            r#"{"model":"m","stream_options":{"include_usage":"yes"}}"#,
            r#"[1,2]"#,
            r#"{"model":"m"} trailing"#,
            "not json",
        ] {
            assert!(chat(body).is_err(), "{body}");
        }
    }

    #[test]
    fn a_duplicate_key_is_refused_however_it_is_spelled() {
        for body in [
            r#"{"model":"m","max_tokens":5,"max_tokens":null}"#,
            r#"{"model":"m","max_tokens":5,"max\u005ftokens":null}"#,
            r#"{"model":"m","model":"n"}"#,
            r#"{"model":"m","x":1,"x":2}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true,"include_usage":false}}"#,
        ] {
            let err = chat(body).unwrap_err();
            assert!(err.to_string().contains("duplicate key"), "{body}: {err}");
        }
    }

    #[test]
    fn a_model_can_be_renamed_beside_the_bound() {
        let body = br#"{"model":"m/x:together","max_tokens":9,"messages":[{"role":"user","content":"hi"}]}"#;
        let shape = inspect(body, Api::Chat, 1).unwrap();
        assert_eq!(shape.model, "m/x:together");
        let mut edits = shape.edits(5);
        shape.rename_model(&mut edits, "m/x");
        let sent = apply(body, &edits);
        let v: serde_json::Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!((v["model"].as_str(), v["max_tokens"].as_u64()), (Some("m/x"), Some(5)));
        // an escaped model name is read as its text
        let shape = inspect(br#"{"model":"m\/x","messages":[]}"#, Api::Chat, 1).unwrap();
        assert_eq!(shape.model, "m/x");
    }

    #[test]
    fn null_means_absent_and_is_replaced_in_place() {
        let body = r#"{"model":"m","max_tokens":null,"stream":true,"stream_options":null,"messages":[]}"#;
        let shape = chat(body).unwrap();
        assert_eq!(shape.requested_output, None);
        let out = String::from_utf8(apply(body.as_bytes(), &shape.edits(300))).unwrap();
        assert_eq!(
            out,
            r#"{"model":"m","max_tokens":300,"stream":true,"stream_options":{"include_usage":true},"messages":[]}"#
        );
    }

    #[test]
    fn image_sizes_are_read_where_providers_read_them_and_the_largest_counts() {
        let mp = |b: &str| measure(b.as_bytes()).map(|m| (m.megapixels(), m.unknown_size));
        assert_eq!(mp(r#"{"parameters":{"width":1024,"height":1025}}"#), Ok((Some(2), None)));
        assert_eq!(mp(r#"{"image_size":"square","size":"2048x2048"}"#), Ok((Some(4), None)));
        assert_eq!(mp(r#"{"image_size":null,"prompt":"x"}"#), Ok((None, None)));
        // a size that cannot be counted is reported where it is, for a route priced by size
        assert_eq!(mp(r#"{"width":1024}"#), Ok((None, Some("width".to_string()))));
        assert_eq!(mp(r#"{"input":{"height":512}}"#), Ok((None, Some("input.width".to_string()))));
        assert_eq!(mp(r#"{"width":100000,"height":2}"#), Ok((None, Some("width".to_string()))));
        assert_eq!(mp(r#"{"image_size":{"width":"4096","height":4096}}"#), Ok((None, Some("image_size".to_string()))));
        assert_eq!(mp(r#"{"size":"big"}"#), Ok((None, Some("size".to_string()))));
        // sizes named another way, and bodies that are not JSON, cannot be counted
        assert_eq!(mp(r#"{"aspect_ratio":"21:9","resolution":"4K"}"#), Ok((None, Some("aspect_ratio".to_string()))));
        assert_eq!(mp(r#"{"input":{"megapixels":"4"}}"#), Ok((None, Some("input.megapixels".to_string()))));
        assert_eq!(mp(r#"{"image_url":"https://x/a.png","prompt":"x"}"#), Ok((None, Some("image_url".to_string()))));
        assert_eq!(mp(r#"{"aspect_ratio":null}"#), Ok((None, None)));
        assert_eq!(mp("--boundary\r\nsize=4096x4096"), Ok((None, Some("body".to_string()))));
        // a side given twice below the top counts at the larger
        assert_eq!(mp(r#"{"input":{"width":4096,"width":512,"height":512}}"#), Ok((Some(2), None)));
        // counts and sizes together
        let m = measure(br#"{"num_images":3,"image_size":{"width":2048,"height":2048}}"#).unwrap();
        assert_eq!((m.outputs, m.megapixels()), (3, Some(4)));
    }

    #[test]
    fn an_embeddings_batch_counts_every_text_and_is_sent_as_it_came() {
        let texts: Vec<String> = (0..50).map(|i| format!("text number {i} {}", "word ".repeat(40))).collect();
        let bytes: u64 = texts.iter().map(|t| t.len() as u64).sum();
        let body =
            serde_json::json!({"model": "m", "input": texts, "stream": true, "n": 4, "max_tokens": 3}).to_string();
        let shape = inspect(body.as_bytes(), Api::Embeddings, 1_000).unwrap();
        assert!(shape.prompt_tokens >= bytes, "{} < {bytes}", shape.prompt_tokens);
        // nothing generated: no output, one choice, not streamed, and no field written
        assert_eq!((shape.requested_output, shape.choices, shape.stream), (Some(0), 1, false));
        assert_eq!(shape.output_bound(1024), 0);
        assert_eq!(shape.worst_case(0).completion, 0);
        assert!(shape.edits(0).is_empty());
        assert_eq!(sent(&body, Api::Embeddings, 0), serde_json::from_str::<Value>(&body).unwrap());
        // one text, or token ids
        assert!(inspect(br#"{"model":"m","input":"hello"}"#, Api::Embeddings, 1).unwrap().prompt_tokens >= 5);
        assert!(inspect(br#"{"model":"m","input":[[1,2,3],[4]]}"#, Api::Embeddings, 1).unwrap().prompt_tokens >= 4);
    }

    #[test]
    fn the_bound_is_written_into_every_limit_field_the_body_carries() {
        let v =
            sent(r#"{"model":"m","max_tokens":50,"max_completion_tokens":20,"max_new_tokens":null}"#, Api::Chat, 20);
        assert_eq!((v["max_tokens"].as_u64(), v["max_completion_tokens"].as_u64()), (Some(20), Some(20)));
        assert_eq!(v["max_new_tokens"], 20);
        assert_eq!(
            chat(r#"{"model":"m","max_tokens":50,"max_completion_tokens":20}"#).unwrap().requested_output,
            Some(20)
        );
        let v = sent(r#"{"model":"m","input":"hi"}"#, Api::Responses, 77);
        assert_eq!(v["max_output_tokens"], 77);
        assert!(v.get("max_tokens").is_none());
    }

    #[test]
    fn the_apis_own_limit_field_is_written_even_beside_foreign_ones() {
        // OpenAI's chat ignores max_new_tokens and max_output_tokens
        for field in ["max_new_tokens", "max_output_tokens"] {
            let v = sent(&format!(r#"{{"model":"m","{field}":40,"messages":[]}}"#), Api::Chat, 30);
            assert_eq!((v[field].as_u64(), v["max_tokens"].as_u64()), (Some(30), Some(30)), "{field}");
        }
        // its responses API reads max_output_tokens only
        let v = sent(r#"{"model":"m","max_tokens":40,"input":"hi"}"#, Api::Responses, 30);
        assert_eq!((v["max_tokens"].as_u64(), v["max_output_tokens"].as_u64()), (Some(30), Some(30)));
        let v = sent(r#"{"model":"m","max_completion_tokens":null,"prompt":"hi"}"#, Api::Completions, 30);
        assert_eq!((v["max_completion_tokens"].as_u64(), v["max_tokens"].as_u64()), (Some(30), Some(30)));
        // chat's max_completion_tokens is honoured before max_tokens: both carry the bound
        let v = sent(r#"{"model":"m","max_completion_tokens":40,"messages":[]}"#, Api::Chat, 30);
        assert_eq!((v["max_completion_tokens"].as_u64(), v["max_tokens"].as_u64()), (Some(30), Some(30)));
        // an own field spelled with an escape is that field, replaced where it is
        let body = r#"{"model":"m","max\u005ftokens":null,"max_new_tokens":40,"messages":[]}"#;
        let out = apply(body.as_bytes(), &chat(body).unwrap().edits(30));
        assert_eq!(String::from_utf8(out).unwrap(), body.replace("null", "30").replace("40", "30"));
    }

    #[test]
    fn choices_multiply_the_output_bound() {
        assert_eq!(chat(r#"{"model":"m","n":4}"#).unwrap().worst_case(100).completion, 400);
        assert_eq!(chat(r#"{"model":"m","n":null}"#).unwrap().choices, 1);
        let batch = inspect(br#"{"model":"m","prompt":["a","b","c"],"n":2,"best_of":3}"#, Api::Completions, 1).unwrap();
        assert_eq!(batch.choices, 9);
        let ids = inspect(br#"{"model":"m","prompt":[1,2,3]}"#, Api::Completions, 1).unwrap();
        assert_eq!(ids.choices, 1);
        // an array that is not all token ids may be read as a batch of every element
        for (prompt, n) in
            [(r#"["a",5,5,5]"#, 4), (r#"["a",null]"#, 2), (r#"[[1,2],3]"#, 2), (r#"[{"x":1},true,"b"]"#, 3)]
        {
            let body = format!(r#"{{"model":"m","prompt":{prompt}}}"#);
            assert_eq!(inspect(body.as_bytes(), Api::Completions, 1).unwrap().choices, n, "{prompt}");
        }
        assert_eq!(inspect(br#"{"model":"m","prompt":[]}"#, Api::Completions, 1).unwrap().choices, 1);
    }

    #[test]
    fn the_prompt_counts_text_not_json() {
        let long = "x".repeat(1_000);
        let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{long}"}}]}}"#);
        let shape = chat(&body).unwrap();
        // 1000 bytes of text + "user" + the keys "role" and "content" + one message and the
        // request overhead
        let keys = ("role".len() + "content".len()) as u64;
        assert_eq!(shape.prompt_tokens, 1_000 + 4 + keys + MESSAGE_OVERHEAD_TOKENS + REQUEST_OVERHEAD_TOKENS);
        // escapes count as the bytes they decode to: "é" is two bytes, "\n" one; a key too
        let shape = chat(r#"{"model":"m","messages":[{"r\u00f4le":"u","content":"\u00e9\n"}]}"#).unwrap();
        let keys = ("rôle".len() + "content".len()) as u64;
        assert_eq!(shape.prompt_tokens, 3 + 1 + keys + MESSAGE_OVERHEAD_TOKENS + REQUEST_OVERHEAD_TOKENS);
    }

    #[test]
    fn object_keys_in_the_prompt_are_text() {
        // tool-call arguments given as an object render with their keys
        let key = "k".repeat(500);
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"assistant","tool_calls":[{{"function":{{"name":"f","arguments":{{"{key}":1}}}}}}]}}]}}"#
        );
        let shape = chat(&body).unwrap();
        let keys = ["role", "tool_calls", "function", "name", "arguments"].iter().map(|k| k.len()).sum::<usize>();
        let text = "assistant".len() + "f".len() + 500 + "1".len();
        assert_eq!(shape.prompt_tokens, (keys + text) as u64 + MESSAGE_OVERHEAD_TOKENS + REQUEST_OVERHEAD_TOKENS);
        // the same in a responses input and a completions prompt given as an object
        let body = format!(r#"{{"model":"m","input":[{{"type":"function_call","arguments":{{"{key}":null}}}}]}}"#);
        assert!(inspect(body.as_bytes(), Api::Responses, 1).unwrap().prompt_tokens > 500);
    }

    #[test]
    fn images_cost_the_ceiling_whatever_their_size() {
        let data = "A".repeat(100_000);
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":[{{"image_url":{{"url":"data:image/png;base64,{data}"}},"type":"image_url"}},{{"type":"text","text":"what is it"}}]}}]}}"#
        );
        let shape = inspect(body.as_bytes(), Api::Chat, 5_000).unwrap();
        let text = "user".len() + "image_url".len() + "text".len() + "what is it".len();
        let keys = ["role", "content", "image_url", "type", "type", "text"].iter().map(|k| k.len()).sum::<usize>();
        assert_eq!(
            shape.prompt_tokens,
            5_000 + (text + keys) as u64 + MESSAGE_OVERHEAD_TOKENS + REQUEST_OVERHEAD_TOKENS
        );
    }

    #[test]
    fn audio_video_and_files_cost_their_inline_size_or_at_least_the_ceiling() {
        let prompt = |part: &str| {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":[{part}]}}]}}"#);
            let bare = r#"{"model":"m","messages":[{"role":"user","content":[]}]}"#;
            inspect(body.as_bytes(), Api::Chat, 1_000).unwrap().prompt_tokens - chat(bare).unwrap().prompt_tokens
        };
        let data = "A".repeat(50_000);
        for part in [
            format!(r#"{{"type":"input_audio","input_audio":{{"data":"{data}","format":"wav"}}}}"#),
            format!(r#"{{"type":"video_url","video_url":{{"url":"data:video/mp4;base64,{data}"}}}}"#),
            format!(r#"{{"type":"file","file":{{"file_data":"data:application/pdf;base64,{data}"}}}}"#),
            format!(r#"{{"type":"input_file","file_data":"{data}","filename":"a.pdf"}}"#),
        ] {
            // the payload's size, and beside it the part's keys and type as text
            let counted = prompt(&part);
            assert!((50_000..50_080).contains(&counted), "{part:.60}: {counted}");
        }
        // a URL says nothing of the size: the ceiling stands, as for a small inline payload
        let url = r#"{"type":"input_audio","input_audio":{"url":"https://x.test/a.wav"}}"#;
        let small = r#"{"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}}"#;
        let around = ["type", "input_audio", "input_audio"].iter().map(|k| k.len() as u64).sum::<u64>();
        assert_eq!((prompt(url), prompt(small)), (1_000 + around, 1_000 + around));
        // an image stays at the ceiling however large
        let image = format!(r#"{{"type":"input_image","image_url":"data:image/png;base64,{data}"}}"#);
        assert_eq!(
            prompt(&image),
            1_000 + ["type", "input_image", "image_url"].iter().map(|k| k.len() as u64).sum::<u64>()
        );
    }

    #[test]
    fn tools_are_counted_whole_with_their_template() {
        let tools = r#"[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]"#;
        let body = format!(r#"{{"model":"m","tools":{tools},"messages":[]}}"#);
        let shape = chat(&body).unwrap();
        assert_eq!(
            shape.prompt_tokens,
            tools.len() as u64
                + 2 * lines_of(tools)
                + TOOLS_OVERHEAD_TOKENS
                + MESSAGE_OVERHEAD_TOKENS
                + REQUEST_OVERHEAD_TOKENS
        );
    }

    #[test]
    fn tools_the_upstream_runs_itself_are_reported_with_where_they_are() {
        let found = |api: Api, body: &str| inspect(body.as_bytes(), api, 1).unwrap().server_tools;
        let function = r#"{"type":"function","function":{"name":"f"}}"#;
        for t in [
            "mcp",
            "web_search",
            "web_search_preview",
            "file_search",
            "code_interpreter",
            "image_generation",
            "computer_use_preview",
            "local_shell",
            "something_new",
        ] {
            let body = format!(r#"{{"model":"m","input":"x","tools":[{function},{{"type":"{t}"}}]}}"#);
            let u = found(Api::Responses, &body).unwrap_or_else(|| panic!("{t}"));
            assert_eq!(u.field, "tools[1]");
            assert!(u.reason.contains(&format!("\"{t}\"")), "{}", u.reason);
            // every API: a chat body naming one is no more bounded
            let body = format!(r#"{{"model":"m","messages":[],"tools":[{{"type":"{t}"}}]}}"#);
            assert_eq!(found(Api::Chat, &body).map(|u| u.field), Some("tools[0]".to_string()));
        }
        // tools the caller runs, or with no type (a function by default), bound nothing away
        for tools in [
            format!("[{function}]"),
            r#"[{"type":"custom","name":"c"}]"#.to_string(),
            r#"[{"name":"f","input_schema":{}}]"#.to_string(),
            r#"[{"type":null,"name":"f"}]"#.to_string(),
            "[]".to_string(),
            "null".to_string(),
        ] {
            let body = format!(r#"{{"model":"m","messages":[],"tools":{tools}}}"#);
            assert_eq!(found(Api::Chat, &body), None, "{tools}");
        }
        // a second type member is what some upstream reads: either one counts
        let two = r#"{"model":"m","input":"x","tools":[{"type":"function","type":"mcp"}]}"#;
        assert!(found(Api::Responses, two).is_some());
        for odd in [r#"{"type":7}"#, r#""mcp""#] {
            let body = format!(r#"{{"model":"m","messages":[],"tools":[{odd}]}}"#);
            assert_eq!(found(Api::Chat, &body).map(|u| u.field), Some("tools[0]".to_string()), "{odd}");
        }
        let not_array = found(Api::Chat, r#"{"model":"m","messages":[],"tools":{"type":"mcp"}}"#);
        assert_eq!(not_array.map(|u| u.field), Some("tools".to_string()));
        let search = found(Api::Chat, r#"{"model":"m","messages":[],"web_search_options":{}}"#).unwrap();
        assert_eq!(search.field, "web_search_options");
        assert_eq!(found(Api::Chat, r#"{"model":"m","messages":[],"web_search_options":null}"#), None);
        match search.refusal() {
            GatewayError::UnboundedRequest { field, .. } => assert_eq!(field, "web_search_options"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn text_the_upstream_keeps_is_reported_with_where_it_is() {
        let found = |api: Api, body: &str| inspect(body.as_bytes(), api, 1).unwrap().server_tools.map(|u| u.field);
        for (field, value) in [
            ("previous_response_id", r#""resp_1""#),
            ("conversation", r#""conv_1""#),
            ("conversation", r#"{"id":"conv_1"}"#),
            ("prompt", r#"{"id":"pmpt_1","version":"2"}"#),
        ] {
            let body = format!(r#"{{"model":"m","input":"x","{field}":{value}}}"#);
            assert_eq!(found(Api::Responses, &body).as_deref(), Some(field), "{body}");
            let body = format!(r#"{{"model":"m","messages":[],"{field}":{value}}}"#);
            assert_eq!(found(Api::Chat, &body).as_deref(), Some(field), "{body}");
        }
        for body in [
            r#"{"model":"m","input":"x","previous_response_id":null,"conversation":null}"#,
            r#"{"model":"m","input":"x","prompt":null}"#,
        ] {
            assert_eq!(found(Api::Responses, body), None, "{body}");
        }
        // completions' prompt is its text, not a stored one
        assert_eq!(found(Api::Completions, r#"{"model":"m","prompt":"x"}"#), None);
    }

    #[test]
    fn streams_ask_upstream_for_usage_without_shadowing_the_callers_options() {
        let v = sent(r#"{"model":"m","stream":true,"max_tokens":5}"#, Api::Chat, 5);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let edited = r#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}"#;
        let shape = chat(edited).unwrap();
        assert!(shape.hides_usage());
        let v = sent(edited, Api::Chat, 5);
        assert_eq!(
            (v["stream_options"]["include_usage"].clone(), v["stream_options"]["x"].clone()),
            (true.into(), 1.into())
        );
        let v = sent(r#"{"model":"m","stream":true,"stream_options":{ }}"#, Api::Chat, 5);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let asked = chat(r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert!(!asked.hides_usage());
        // the responses API reports usage by itself
        let v = sent(r#"{"model":"m","stream":true,"input":"x"}"#, Api::Responses, 5);
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn an_unchanged_body_passes_byte_for_byte_but_for_the_bound() {
        let body = "  {\"model\":\"m\", \"max_tokens\": 7 , \"messages\": []}\n";
        let shape = chat(body).unwrap();
        let out = apply(body.as_bytes(), &shape.edits(7));
        assert_eq!(out, body.as_bytes());
        let out = apply(body.as_bytes(), &shape.edits(3));
        assert_eq!(String::from_utf8(out).unwrap(), "  {\"model\":\"m\", \"max_tokens\": 3 , \"messages\": []}\n");
    }

    #[test]
    fn outputs_multiply_every_count_at_the_top_and_one_level_down() {
        for (body, outputs) in [
            (r#"{}"#, 1),
            (r#"{"prompt":"a cat"}"#, 1),
            (r#"{"num_images":4}"#, 4),
            (r#"{"n":2,"num_images":3}"#, 6),
            (r#"{"input":{"num_outputs":4,"prompt":"x"},"batch_size":2}"#, 8),
            (r#"{"parameters":{"num_images":null,"batch_size":3},"inputs":"x"}"#, 3),
            (r#"{"num_videos":2,"num_samples":5,"n":null}"#, 10),
            (r#"{"input":"a string","parameters":null}"#, 1),
            // deeper, or under another name, is not where providers read a count
            (r#"{"options":{"num_images":9},"input":{"extra":{"n":9}}}"#, 1),
            // escaped keys are the keys they decode to
            (r#"{"num\u005fimages":3}"#, 3),
        ] {
            assert_eq!(outputs_of(body.as_bytes()), Ok(outputs), "{body}");
        }
        let every = OUTPUT_COUNT_FIELDS.iter().map(|f| format!(r#""{f}":128"#)).collect::<Vec<_>>().join(",");
        let all = format!(r#"{{{every},"input":{{{every}}},"parameters":{{{every}}}}}"#);
        assert_eq!(outputs_of(all.as_bytes()), Ok(u64::MAX), "saturates, never wraps");
    }

    #[test]
    fn a_bad_output_count_is_a_400_naming_the_field() {
        for (body, field) in [
            (r#"{"num_images":0}"#, "'num_images'"),
            (r#"{"n":-1}"#, "'n'"),
            (r#"{"num_outputs":1.5}"#, "'num_outputs'"),
            (r#"{"num_outputs":2.0}"#, "'num_outputs'"),
            (r#"{"batch_size":"2"}"#, "'batch_size'"),
            (r#"{"num_samples":129}"#, "'num_samples'"),
            (r#"{"num_videos":true}"#, "'num_videos'"),
            (r#"{"input":{"num_outputs":[4]}}"#, "'input.num_outputs'"),
            (r#"{"parameters":{"num_images":1e2}}"#, "'parameters.num_images'"),
        ] {
            match outputs_of(body.as_bytes()) {
                Err(e @ GatewayError::InvalidRequest(_)) => assert!(e.to_string().contains(field), "{body}: {e}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        for body in [
            r#"{"num_images":1,"num_images":4}"#,
            r#"{"prompt":"a","prompt":"b"}"#,
            r#"{"input":{"num_outputs":1,"num\u005foutputs":4}}"#,
        ] {
            let err = outputs_of(body.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("duplicate key"), "{body}: {err}");
        }
        // an object that does not parse to its end is not counted as one output
        for body in [r#"{"num_images":4"#, r#"{"num_images":4} {"n":2}"#] {
            assert!(outputs_of(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn a_body_that_is_no_json_object_asks_for_one_output() {
        for body in [
            &b""[..],
            b"   ",
            b"RIFF\x24\x08\x00\x00WAVEfmt ",
            b"\x00\x00\x00\x20ftypisom",
            b"[1,2]",
            b"null",
            b"\xff\xd8\xff",
        ] {
            assert_eq!(outputs_of(body), Ok(1), "{body:?}");
        }
    }

    #[test]
    fn a_count_in_another_unicode_encoding_still_counts() {
        let json = r#" {"num_images":4}"#;
        let utf16 = |big: bool| -> Vec<u8> {
            json.encode_utf16().flat_map(|u| if big { u.to_be_bytes() } else { u.to_le_bytes() }).collect()
        };
        let utf32 = |big: bool| -> Vec<u8> {
            json.chars().flat_map(|c| if big { (c as u32).to_be_bytes() } else { (c as u32).to_le_bytes() }).collect()
        };
        let mut bom8 = b"\xEF\xBB\xBF".to_vec();
        bom8.extend_from_slice(json.as_bytes());
        let mut bom16 = b"\xFF\xFE".to_vec();
        bom16.extend(utf16(false));
        for body in [bom8, bom16, utf16(true), utf16(false), utf32(true), utf32(false)] {
            assert_eq!(outputs_of(&body), Ok(4), "{body:?}");
        }
    }

    #[test]
    fn usage_is_read_in_both_namings() {
        let chat = br#"{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}"#;
        assert_eq!(usage_of_body(chat), Some(TokenUsage { prompt: 3, completion: 4 }));
        let resp = br#"{"type": "response.completed", "response": {"usage": {"input_tokens": 5, "output_tokens": 6}}}"#;
        assert_eq!(usage_of_body(resp), Some(TokenUsage { prompt: 5, completion: 6 }));
        assert_eq!(usage_of_body(br#"{"usage": null}"#), None);
        assert_eq!(usage_of_body(b"garbage"), None);
        let body = br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        assert_eq!(usage_of_body(body), Some(TokenUsage { prompt: 1, completion: 2 }));
        assert_eq!(
            usage_of_body(br#"{"usage":{"input_tokens":5,"output_tokens":6}}"#),
            Some(TokenUsage { prompt: 5, completion: 6 })
        );
        // a side left out is no count (read as zero it would undercount); a total above the
        // two is output billed apart from them
        for body in [
            r#"{"usage":{"prompt_tokens":7,"total_tokens":307}}"#,
            r#"{"usage":{"prompt_tokens":7,"completion_tokens":null}}"#,
            r#"{"usage":{"completion_tokens":300}}"#,
            r#"{"response":{"usage":{"input_tokens":7}}}"#,
        ] {
            assert_eq!(usage_of_body(body.as_bytes()), None, "{body}");
        }
        let total = br#"{"usage":{"prompt_tokens":7,"completion_tokens":10,"total_tokens":517}}"#;
        assert_eq!(usage_of_body(total), Some(TokenUsage { prompt: 7, completion: 510 }));
    }
}
