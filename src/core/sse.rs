//! Metering a server-sent-events stream as it passes: events go through whole and unchanged,
//! the upstream's final usage count is read from them, and the bytes delivered are counted in
//! case the stream is cut before that count arrives. Usage-only events the caller did not ask
//! for are left out.
//!
//! Only a final count is ever settled on. A Responses stream opens with `response.created`
//! carrying zero usage, and some chat providers put a running count in every chunk: a meter
//! that kept the last usage it saw would let a caller who hangs up early pay for the prefix
//! the provider had counted, or for nothing, while upstream bills the whole answer.

use crate::core::paths::Api;
use crate::core::pricing::TokenUsage;
use serde_json::Value;

/// Events larger than this are passed through unparsed rather than buffered further.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// The most choice indices a stream's meter tracks; a stream that shows more has no count
/// taken from its choices' chunks, only from a chunk with none.
const MAX_CHOICE_INDICES: usize = 1024;

/// The Responses events that end a response and carry its final usage.
const TERMINAL_RESPONSE_EVENTS: [&str; 3] = ["response.completed", "response.incomplete", "response.failed"];

/// Meters one upstream event stream.
///
/// ```
/// use hf_gate::core::paths::Api;
/// use hf_gate::core::sse::SseMeter;
/// let mut m = SseMeter::new(Api::Responses, false);
/// m.feed(b"data: {\"type\":\"response.created\",\"response\":{\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}\n\n");
/// assert_eq!(m.final_usage, None);
/// m.feed(b"data: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":2}}}\n\n");
/// assert_eq!(m.final_usage.map(|u| (u.prompt, u.completion)), Some((9, 2)));
/// assert!(m.finished);
/// ```
#[derive(Debug)]
pub struct SseMeter {
    api: Api,
    hide_usage_only_events: bool,
    pending: Vec<u8>,
    /// The upstream's final usage count, once it was reported: for chat and completions, from
    /// a chunk after which no choice seen is still generating; for responses, from a
    /// terminal event; of several final counts, the larger on each side (a `total_tokens`
    /// above the two counts is output too: `TokenUsage::reported`). Any other usage in the
    /// stream is a running count and is ignored.
    pub final_usage: Option<TokenUsage>,
    /// Bytes of `data:` payloads forwarded to the caller: what a cut stream delivered, counted
    /// in bytes because a provider may pack any number of tokens into one event.
    pub delivered_bytes: u64,
    /// Whether `data: [DONE]` went by.
    pub done: bool,
    /// Whether the stream's end was seen: `[DONE]` for chat and completions, a terminal
    /// response event for responses.
    pub finished: bool,
    /// The choices seen in chunks that carry usage, by index, and whether each has finished
    /// (at most `MAX_CHOICE_INDICES`, and one more for all past them): with `n` above 1 and a
    /// running count in every chunk, the chunk that finishes choice 0 is no final count while
    /// choice 1 is still generating.
    tracked: Vec<(u64, bool)>,
}

impl SseMeter {
    /// `api`: what the stream speaks, which says where its final usage is.
    /// `hide_usage_only_events`: the gateway asked for usage, not the caller, so the chunk
    /// that carries nothing but usage is metered and not forwarded.
    pub fn new(api: Api, hide_usage_only_events: bool) -> Self {
        SseMeter {
            api,
            hide_usage_only_events,
            pending: Vec::new(),
            final_usage: None,
            delivered_bytes: 0,
            done: false,
            finished: false,
            tracked: Vec::new(),
        }
    }

    /// Takes a chunk from upstream; returns the bytes to send on (complete events only).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        let pending = std::mem::take(&mut self.pending);
        let mut start = 0;
        while let Some(end) = pending.get(start..).and_then(event_end) {
            let event = pending.get(start..start + end).unwrap_or_default();
            if self.observe(event) {
                out.extend_from_slice(event);
            }
            start += end;
        }
        self.pending = pending;
        self.pending.drain(..start);
        if self.pending.len() > MAX_EVENT_BYTES {
            // unparsed, so all of it counts as delivered: an overcount only moves a cut
            // stream's charge towards its bound, never past it
            self.delivered_bytes = self.delivered_bytes.saturating_add(self.pending.len() as u64);
            out.append(&mut self.pending);
        }
        out
    }

    /// The stream ended: whatever is left (an unterminated last event) goes on as it is,
    /// unless it is the usage-only chunk the caller did not ask for.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        if rest.is_empty() || self.observe(&rest) {
            rest
        } else {
            Vec::new()
        }
    }

    /// Reads one event; says whether to forward it.
    fn observe(&mut self, event: &[u8]) -> bool {
        let Some(data) = data_of(event) else { return true };
        let forward = if data == b"[DONE]" {
            self.done = true;
            // a responses stream ends with its terminal event, not with this
            self.finished |= self.api != Api::Responses;
            true
        } else {
            match self.api {
                Api::Chat | Api::Completions | Api::Embeddings => self.read_chunk(&data),
                Api::Responses => {
                    self.read_response_event(&data);
                    true
                }
            }
        };
        if forward {
            self.delivered_bytes = self.delivered_bytes.saturating_add(data.len() as u64);
        }
        forward
    }

    /// A chat or completions chunk: its usage is final when no choice is still generating.
    /// Says whether to forward it.
    fn read_chunk(&mut self, data: &[u8]) -> bool {
        if !contains(data, b"\"usage\"") {
            return true;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else { return true };
        let Some(usage) = v.get("usage").filter(|u| u.is_object()) else { return true };
        let choices = match v.get("choices") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(choices)) => choices.as_slice(),
            // not a chunk this meter understands: its usage is no final count
            Some(_) => return true,
        };
        for c in choices {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finished = c.get("finish_reason").is_some_and(|f| !f.is_null());
            if let Some((_, ended)) = self.tracked.iter_mut().find(|(i, _)| *i == index) {
                *ended |= finished;
            } else if self.tracked.len() <= MAX_CHOICE_INDICES {
                // a choice not seen before is generating: a count taken before it was not
                // final (past the most tracked, one more stands for the rest)
                self.tracked.push((index, finished));
                self.final_usage = None;
            }
        }
        // final when no choice seen, in this chunk or before, is still generating (and never
        // past the most tracked: the rest were not followed)
        let all_ended = self.tracked.len() <= MAX_CHOICE_INDICES && self.tracked.iter().all(|(_, ended)| *ended);
        if choices.is_empty() || all_ended {
            if let Some(u) = counts(usage, &["prompt_tokens", "input_tokens"], &["completion_tokens", "output_tokens"])
            {
                self.take_final(u);
            }
        }
        !(choices.is_empty() && self.hide_usage_only_events)
    }

    /// A responses event: only a terminal one ends the stream and carries the final usage.
    fn read_response_event(&mut self, data: &[u8]) {
        if !TERMINAL_RESPONSE_EVENTS.iter().any(|t| contains(data, t.as_bytes())) {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
        let terminal = v.get("type").and_then(Value::as_str).is_some_and(|t| TERMINAL_RESPONSE_EVENTS.contains(&t));
        if !terminal {
            return;
        }
        self.finished = true;
        let usage = v.get("response").and_then(|r| r.get("usage"));
        if let Some(u) = usage.and_then(|u| counts(u, &["input_tokens"], &["output_tokens"])) {
            self.take_final(u);
        }
    }

    /// A final count: of two (a second usage chunk, one after `[DONE]`, a second terminal
    /// event), the larger on each side, since whichever a provider bills, it is covered.
    fn take_final(&mut self, u: TokenUsage) {
        self.final_usage = Some(self.final_usage.map_or(u, |f| f.max(u)));
    }
}

/// The `data:` payload of one event (its data lines joined by `\n`), if it has any.
fn data_of(event: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for line in lines(event) {
        if let Some(d) = line.strip_prefix(b"data:") {
            let d = d.strip_prefix(b" ").unwrap_or(d);
            match data.as_mut() {
                Some(data) => {
                    data.push(b'\n');
                    data.extend_from_slice(d);
                }
                None => data = Some(d.to_vec()),
            }
        }
    }
    data
}

/// The lines of an event, each ended by CRLF, LF or a lone CR, as SSE allows.
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|b| matches!(b, b'\n' | b'\r')).unwrap_or(rest.len());
        let line = rest.get(..end).unwrap_or_default();
        let after = match rest.get(end..end + 2) {
            Some(b"\r\n") => end + 2,
            _ => (end + 1).min(rest.len()),
        };
        rest = rest.get(after..).unwrap_or_default();
        Some(line)
    })
}

/// Both counts of a usage object, under either of their names. A count with a side missing
/// is not settled on: reading the missing side as zero would undercount it.
fn counts(usage: &Value, prompt: &[&str], completion: &[&str]) -> Option<TokenUsage> {
    let count = |names: &[&str]| names.iter().find_map(|n| usage.get(*n).and_then(Value::as_u64));
    TokenUsage::reported(count(prompt), count(completion), count(&["total_tokens"]))
}

/// The length of the first complete event (including its blank-line terminator), if any:
/// lines end with CRLF, LF or a lone CR (SSE allows all three), and an empty line ends the
/// event. A CR that ends the buffer waits for what follows it (it may be half of a CRLF).
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    // the bytes since the last line end are none: a line end here ends the event
    let mut at_line_start = false;
    while let Some(&b) = buf.get(i) {
        let ending = match b {
            b'\n' => 1,
            b'\r' => match buf.get(i + 1) {
                Some(b'\n') => 2,
                Some(_) => 1,
                None => return None,
            },
            _ => 0,
        };
        if ending == 0 {
            at_line_start = false;
            i += 1;
            continue;
        }
        i += ending;
        if at_line_start {
            return Some(i);
        }
        at_line_start = true;
    }
    None
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n"
    );

    /// The payload bytes of the stream's `data:` lines, as a caller receives them.
    fn payload_bytes(stream: &str) -> u64 {
        stream.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| d.len() as u64).sum()
    }

    fn usage(prompt: u64, completion: u64) -> Option<TokenUsage> {
        Some(TokenUsage { prompt, completion })
    }

    fn fed(api: Api, stream: &str) -> SseMeter {
        let mut m = SseMeter::new(api, false);
        m.feed(stream.as_bytes());
        m.finish();
        m
    }

    fn responses_event(kind: &str, input: u64, output: u64) -> String {
        format!(
            "event: {kind}\ndata: {{\"type\":\"{kind}\",\"response\":{{\"id\":\"r1\",\"usage\":{{\"input_tokens\":{input},\"output_tokens\":{output}}}}}}}\n\n"
        )
    }

    #[test]
    fn usage_is_read_whatever_the_chunking() {
        for split in 1..STREAM.len() {
            let mut m = SseMeter::new(Api::Chat, false);
            let mut out = m.feed(&STREAM.as_bytes()[..split]);
            out.extend(m.feed(&STREAM.as_bytes()[split..]));
            out.extend(m.finish());
            assert_eq!(out, STREAM.as_bytes(), "split at {split}");
            assert_eq!(m.final_usage, usage(9, 2));
            assert!(m.done && m.finished);
            assert_eq!(m.delivered_bytes, payload_bytes(STREAM));
        }
    }

    #[test]
    fn usage_the_caller_did_not_ask_for_is_hidden_and_not_counted_as_delivered() {
        let mut m = SseMeter::new(Api::Chat, true);
        let out = String::from_utf8(m.feed(STREAM.as_bytes())).unwrap();
        assert!(!out.contains("usage"));
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(m.final_usage, usage(9, 2));
        assert_eq!(m.delivered_bytes, payload_bytes(&out));
    }

    #[test]
    fn a_hidden_usage_chunk_left_unterminated_at_the_end_is_hidden_too() {
        let s = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}";
        let mut m = SseMeter::new(Api::Chat, true);
        assert!(m.feed(s.as_bytes()).is_empty());
        assert!(m.finish().is_empty());
        assert_eq!((m.final_usage, m.delivered_bytes), (usage(9, 2), 0));
    }

    #[test]
    fn a_cut_stream_counts_the_bytes_it_delivered() {
        let cut = STREAM.find("data: {\"choices\":[]").unwrap();
        let m = fed(Api::Chat, &STREAM[..cut]);
        assert_eq!(m.final_usage, None);
        assert_eq!(m.delivered_bytes, payload_bytes(&STREAM[..cut]));
        assert!(!m.done && !m.finished);
    }

    #[test]
    fn an_event_packed_with_many_tokens_counts_all_its_bytes() {
        let words = "word ".repeat(500);
        let s = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{words}\"}}}}]}}\n\n");
        assert_eq!(fed(Api::Chat, &s).delivered_bytes, payload_bytes(&s));
        assert!(payload_bytes(&s) > 2_500);
    }

    #[test]
    fn chat_cumulative_usage_in_an_unfinished_chunk_does_not_count() {
        let s = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":null}],",
            "\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1}}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],",
            "\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n",
        );
        let m = fed(Api::Chat, s);
        assert_eq!(m.final_usage, None, "a running count is no final count");
        assert!(!m.finished);
    }

    #[test]
    fn chat_usage_counts_once_every_choice_has_finished() {
        let last = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],",
            "\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":5}}\n\n"
        );
        assert_eq!(fed(Api::Chat, last).final_usage, usage(9, 5));
        let half = concat!(
            "data: {\"choices\":[{\"index\":0,\"finish_reason\":\"stop\"},{\"index\":1,\"finish_reason\":null}],",
            "\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":5}}\n\n"
        );
        assert_eq!(fed(Api::Chat, half).final_usage, None);
        let both = half.replace("null", "\"length\"");
        assert_eq!(fed(Api::Chat, &both).final_usage, usage(9, 5));
        // a running count in every chunk (vLLM's continuous usage), one choice to a chunk:
        // choice 0 finishing is no final count while choice 1 generates, and its end is
        let chunk = |i: u32, finish: &str, done: u32| {
            format!(
                "data: {{\"choices\":[{{\"index\":{i},\"delta\":{{}},\"finish_reason\":{finish}}}],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":{done}}}}}\n\n"
            )
        };
        let early = [chunk(0, "null", 1), chunk(1, "null", 2), chunk(0, "\"stop\"", 3)].concat();
        assert_eq!(fed(Api::Chat, &early).final_usage, None);
        assert_eq!(fed(Api::Chat, &(early.clone() + &chunk(1, "\"length\"", 8))).final_usage, usage(9, 8));
        // the usage-only chunk is the final count, whatever came before
        let closing = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":9}}\n\n";
        assert_eq!(fed(Api::Chat, &(early + closing)).final_usage, usage(9, 9));
        // choices one after another: a choice that starts after a count undoes it
        let serial = [chunk(0, "\"stop\"", 3), chunk(1, "null", 4)].concat();
        assert_eq!(fed(Api::Chat, &serial).final_usage, None);
        // more choices than are tracked: only a chunk without choices counts
        let many: String = (0..=MAX_CHOICE_INDICES as u32).map(|i| chunk(i, "\"stop\"", i)).collect();
        assert_eq!(fed(Api::Chat, &many).final_usage, None);
        assert_eq!(fed(Api::Chat, &(many + closing)).final_usage, usage(9, 9));
    }

    #[test]
    fn lines_may_end_in_a_lone_cr_or_crlf_split_anywhere() {
        let cr = STREAM.replace('\n', "\r");
        let m = fed(Api::Chat, &cr);
        assert_eq!((m.final_usage, m.finished), (usage(9, 2), true));
        for stream in [cr, STREAM.replace('\n', "\r\n"), STREAM.to_string()] {
            // a byte at a time: every event goes on whole as soon as it ends (a CR that ends a
            // chunk waits for the next byte), and the caller gets the stream unchanged
            let mut m = SseMeter::new(Api::Chat, false);
            let mut out = Vec::new();
            let mut events = 0;
            for b in stream.as_bytes() {
                let sent = m.feed(std::slice::from_ref(b));
                events += usize::from(!sent.is_empty());
                out.extend(sent);
            }
            out.extend(m.finish());
            assert_eq!(out, stream.as_bytes());
            assert_eq!((m.final_usage, m.done), (usage(9, 2), true));
            assert!(events >= 3, "{events} events went on before the end");
        }
    }

    #[test]
    fn of_several_final_counts_the_larger_counts() {
        let only = |p: u64, c: u64| {
            format!("data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}}}\n\n")
        };
        // two usage-only chunks, or one more after [DONE]: lower ones change nothing
        let twice = [only(7, 300), only(7, 5)].concat();
        assert_eq!(fed(Api::Chat, &twice).final_usage, usage(7, 300));
        let after_done = [only(7, 300), "data: [DONE]\n\n".to_string(), only(9, 5)].concat();
        assert_eq!(fed(Api::Chat, &after_done).final_usage, usage(9, 300));
        // two terminal events of a response
        let terminal = |t: &str, o: u64| {
            format!("data: {{\"type\":\"{t}\",\"response\":{{\"usage\":{{\"input_tokens\":7,\"output_tokens\":{o}}}}}}}\n\n")
        };
        let both = [terminal("response.failed", 300), terminal("response.completed", 5)].concat();
        assert_eq!(fed(Api::Responses, &both).final_usage, usage(7, 300));
        // a total above the two counts is output billed apart from them
        let total =
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":10,\"total_tokens\":517}}\n\n";
        assert_eq!(fed(Api::Chat, total).final_usage, usage(7, 510));
    }

    #[test]
    fn chat_usage_in_a_chunk_without_choices_counts() {
        let absent = "data: {\"id\":\"c\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n";
        assert_eq!(fed(Api::Chat, absent).final_usage, usage(3, 4));
        let null = "data: {\"choices\":null,\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n";
        assert_eq!(fed(Api::Chat, null).final_usage, usage(3, 4));
        let completions = "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n";
        assert_eq!(fed(Api::Completions, completions).final_usage, usage(3, 4));
    }

    #[test]
    fn a_usage_missing_a_count_is_not_settled_on() {
        let s = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n";
        assert_eq!(fed(Api::Chat, s).final_usage, None);
        let s = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":null}}\n\n";
        assert_eq!(fed(Api::Chat, s).final_usage, None);
    }

    #[test]
    fn responses_usage_counts_only_from_a_terminal_event() {
        for kind in TERMINAL_RESPONSE_EVENTS {
            let s = format!(
                "{}{}{}",
                responses_event("response.created", 0, 0),
                responses_event("response.in_progress", 0, 0),
                responses_event(kind, 12, 34)
            );
            let m = fed(Api::Responses, &s);
            assert_eq!(m.final_usage, usage(12, 34), "{kind}");
            assert!(m.finished, "{kind}");
        }
    }

    #[test]
    fn responses_created_zeros_never_count() {
        let s =
            format!("{}{}", responses_event("response.created", 0, 0), responses_event("response.in_progress", 0, 0));
        let m = fed(Api::Responses, &s);
        assert_eq!(m.final_usage, None);
        assert!(!m.finished);
    }

    #[test]
    fn a_responses_stream_cut_after_its_text_is_done_has_no_final_usage() {
        let s = format!(
            "{}{}{}",
            responses_event("response.created", 0, 0),
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
            "event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"text\":\"Hi\"}\n\n",
        );
        let m = fed(Api::Responses, &s);
        assert_eq!(m.final_usage, None);
        assert!(!m.finished);
        assert_eq!(m.delivered_bytes, payload_bytes(&s));
    }

    #[test]
    fn responses_usage_is_read_only_under_the_response() {
        let top_level = "data: {\"type\":\"response.completed\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1},\"response\":{}}\n\n";
        let m = fed(Api::Responses, top_level);
        assert_eq!(m.final_usage, None);
        assert!(m.finished, "the stream ended, with no count to settle on");
        let chat_names = "data: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}}\n\n";
        assert_eq!(fed(Api::Responses, chat_names).final_usage, None);
        // text that names a terminal event is no terminal event
        let delta = "data: {\"type\":\"response.output_text.delta\",\"delta\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n";
        let m = fed(Api::Responses, delta);
        assert_eq!((m.final_usage, m.finished), (None, false));
    }

    #[test]
    fn done_ends_a_chat_stream_but_not_a_responses_stream() {
        let m = fed(Api::Chat, "data: [DONE]\n\n");
        assert!(m.done && m.finished);
        let m = fed(Api::Responses, "data: [DONE]\n\n");
        assert!(m.done && !m.finished);
    }

    #[test]
    fn malformed_events_pass_through_untouched() {
        let junk = "data: {not json \"usage\"\n\ndata: \x01\x02\n\n: comment\n\ndata: {\"choices\":\"x\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
        for api in [Api::Chat, Api::Completions, Api::Responses] {
            let mut m = SseMeter::new(api, true);
            assert_eq!(m.feed(junk.as_bytes()), junk.as_bytes());
            assert_eq!(m.final_usage, None);
        }
    }

    #[test]
    fn crlf_framing_is_understood() {
        let s = "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"choices\":[]}\r\n\r\n";
        let mut m = SseMeter::new(Api::Chat, false);
        assert_eq!(m.feed(s.as_bytes()), s.as_bytes());
        assert_eq!(m.final_usage, usage(1, 1));
    }

    #[test]
    fn an_oversized_event_passes_through_and_counts_as_delivered() {
        let big = format!("data: {}", "x".repeat(MAX_EVENT_BYTES + 1));
        let mut m = SseMeter::new(Api::Chat, true);
        assert_eq!(m.feed(big.as_bytes()), big.as_bytes());
        assert_eq!(m.delivered_bytes, big.len() as u64);
        assert!(m.finish().is_empty());
    }
}
