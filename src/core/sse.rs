//! Metering a server-sent-events stream as it passes: events go through whole and unchanged,
//! the final usage is read from them, and what was delivered is counted in case the stream is
//! cut before usage arrives. Usage-only events the caller did not ask for are left out.

use crate::core::body::usage_of;
use crate::core::pricing::TokenUsage;

/// Events larger than this are passed through unparsed rather than buffered further.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct SseMeter {
    pending: Vec<u8>,
    /// The last usage seen in the stream.
    pub usage: Option<TokenUsage>,
    /// Data events delivered to the caller (about one token each).
    pub delivered_events: u64,
    /// Whether `data: [DONE]` went by.
    pub done: bool,
    hide_usage_only_events: bool,
}

impl SseMeter {
    /// `hide_usage_only_events`: the gateway asked for usage, not the caller, so the chunk
    /// that carries nothing but usage is metered and not forwarded.
    pub fn new(hide_usage_only_events: bool) -> Self {
        SseMeter { hide_usage_only_events, ..SseMeter::default() }
    }

    /// Takes a chunk from upstream; returns the bytes to send on (complete events only).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        let pending = std::mem::take(&mut self.pending);
        let mut start = 0;
        while let Some(end) = event_end(&pending[start..]) {
            let event = &pending[start..start + end];
            if self.observe(event) {
                out.extend_from_slice(event);
            }
            start += end;
        }
        self.pending = pending;
        self.pending.drain(..start);
        if self.pending.len() > MAX_EVENT_BYTES {
            out.append(&mut self.pending);
        }
        out
    }

    /// The stream ended: whatever is left (an unterminated last event) goes on as it is.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() {
            self.observe(&rest);
        }
        rest
    }

    /// Reads one event; says whether to forward it.
    fn observe(&mut self, event: &[u8]) -> bool {
        let mut data = Vec::new();
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(d) = line.strip_prefix(b"data:") {
                if !data.is_empty() {
                    data.push(b'\n');
                }
                data.extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
            }
        }
        if data.is_empty() {
            return true;
        }
        if data == b"[DONE]" {
            self.done = true;
            return true;
        }
        self.delivered_events += 1;
        if !contains(&data, b"\"usage\"") {
            return true;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) else {
            return true;
        };
        if let Some(u) = usage_of(&v) {
            self.usage = Some(u);
            let usage_only = v.get("choices").and_then(|c| c.as_array()).is_some_and(|c| c.is_empty());
            if usage_only && self.hide_usage_only_events {
                self.delivered_events -= 1;
                return false;
            }
        }
        true
    }
}

/// The length of the first complete event (including its blank-line terminator), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
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
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n"
    );

    #[test]
    fn usage_is_read_whatever_the_chunking() {
        for split in 1..STREAM.len() {
            let mut m = SseMeter::new(false);
            let mut out = m.feed(&STREAM.as_bytes()[..split]);
            out.extend(m.feed(&STREAM.as_bytes()[split..]));
            out.extend(m.finish());
            assert_eq!(out, STREAM.as_bytes(), "split at {split}");
            assert_eq!(m.usage, Some(TokenUsage { prompt: 9, completion: 2 }));
            assert!(m.done);
            assert_eq!(m.delivered_events, 3);
        }
    }

    #[test]
    fn usage_the_caller_did_not_ask_for_is_hidden() {
        let mut m = SseMeter::new(true);
        let out = String::from_utf8(m.feed(STREAM.as_bytes())).unwrap();
        assert!(!out.contains("usage"));
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(m.usage, Some(TokenUsage { prompt: 9, completion: 2 }));
        assert_eq!(m.delivered_events, 2);
    }

    #[test]
    fn a_cut_stream_counts_what_was_delivered() {
        let mut m = SseMeter::new(false);
        m.feed(&STREAM.as_bytes()[..70]);
        m.finish();
        assert_eq!(m.usage, None);
        assert_eq!(m.delivered_events, 2);
        assert!(!m.done);
    }

    #[test]
    fn malformed_events_pass_through_untouched() {
        let junk = "data: {not json \"usage\"\n\ndata: \x01\x02\n\n: comment\n\n";
        let mut m = SseMeter::new(true);
        assert_eq!(m.feed(junk.as_bytes()), junk.as_bytes());
        assert_eq!(m.usage, None);
    }

    #[test]
    fn crlf_framing_is_understood() {
        let s = "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"choices\":[]}\r\n\r\n";
        let mut m = SseMeter::new(false);
        assert_eq!(m.feed(s.as_bytes()), s.as_bytes());
        assert!(m.usage.is_some());
    }
}
