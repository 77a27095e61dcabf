//! Request and response bodies in bounded memory.
//!
//! A request body is read once into exactly the room it declares (never past
//! `MAX_BODY_BYTES`), inspected in place, then copied once, edited, into the runtime's memory
//! for upstream, and the wasm copy is freed before the call goes out. Every body held counts
//! against an isolate-wide budget: when a burst of large bodies would push the isolate
//! towards its memory limit (and kill every stream and settle it runs), later ones wait for
//! room, and answer 503 `gateway_busy` if none comes, rather than risk the others.

use crate::core::body::{self, Edit};
use crate::core::error::GatewayError;
use crate::edge::incoming::Incoming;
use crate::edge::platform;
use futures_util::{Stream, StreamExt};
use js_sys::Uint8Array;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::Method;

/// Bytes of request bodies one isolate holds at once (each body counts twice: the copy read
/// and the copy sent). Workers isolates have 128 MB.
pub const ISOLATE_BODY_BUDGET: u64 = 48 * 1024 * 1024;
/// Bodies this small never wait for room.
const SMALL_BODY: u64 = 64 * 1024;
/// How long a body waits for room before the call is turned away.
const BUDGET_WAIT_MS: u64 = 10_000;
/// How often a waiting body looks for room. It looks on its own timer: waking it from the
/// request that freed the room would run its I/O in that other request's context, which the
/// runtime forbids.
const BUDGET_POLL_MS: u64 = 20;

thread_local! {
    static IN_USE: Cell<u64> = const { Cell::new(0) };
}

/// Room for one body in the isolate's budget, given back when dropped.
pub struct Permit {
    bytes: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        IN_USE.with(|u| u.set(u.get().saturating_sub(self.bytes)));
    }
}

/// Bytes of request bodies this isolate holds now, for `/admin/stats`.
pub fn held_bytes() -> u64 {
    IN_USE.with(Cell::get)
}

async fn permit(bytes: u64) -> Result<Permit, GatewayError> {
    let bytes = bytes.min(ISOLATE_BODY_BUDGET);
    let started = platform::now();
    loop {
        let taken = IN_USE.with(|u| {
            let fits = bytes <= SMALL_BODY || u.get().saturating_add(bytes) <= ISOLATE_BODY_BUDGET;
            if fits {
                u.set(u.get().saturating_add(bytes));
            }
            fits
        });
        if taken {
            return Ok(Permit { bytes });
        }
        if platform::now().millis_since(started) >= BUDGET_WAIT_MS {
            return Err(GatewayError::Busy { retry_after_ms: 1_000 });
        }
        platform::sleep_ms(BUDGET_POLL_MS).await;
    }
}

/// A request body read into memory, with its room in the budget.
pub struct Body {
    pub bytes: Vec<u8>,
    pub permit: Permit,
}

/// Reads a request body, refusing at once what declares more than `limit` and stopping a
/// chunked one as soon as it passes it.
pub async fn read_request(req: &Incoming, limit: u64) -> Result<Body, GatewayError> {
    if matches!(req.method(), Method::Get | Method::Head) {
        return Ok(Body { bytes: Vec::new(), permit: Permit { bytes: 0 } });
    }
    let too_large = GatewayError::RequestTooLarge { limit_bytes: limit };
    let declared = req.headers().get("content-length").ok().flatten().and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    let expect = declared.unwrap_or(limit);
    let permit = permit(expect.saturating_mul(2)).await?;
    let unreadable = |_| GatewayError::InvalidRequest("could not read the request body".into());
    if let Some(n) = declared.filter(|n| *n <= SMALL_BODY) {
        // a small declared length is what arrives (the runtime holds the framing to it): read
        // it whole, in one call, rather than chunk by chunk through a stream reader (a large
        // one is read through the reader into its room, so it is never held twice at once)
        let bytes = whole(req.raw().array_buffer()).await.map_err(unreadable)?;
        if bytes.len() as u64 > n.min(limit) {
            return Err(too_large);
        }
        return Ok(Body { bytes, permit });
    }
    let source = Source::Unread(req.raw().body());
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let room = usize::try_from(expect.min(limit)).unwrap_or(cap);
    match read_capped(source, cap, room).await.map_err(unreadable)? {
        Capped::Whole(bytes) | Capped::Held(bytes, _) => Ok(Body { bytes, permit }),
        Capped::Over(..) => Err(too_large),
    }
}

/// A body the runtime reads whole (`arrayBuffer()`), copied into wasm memory once.
pub async fn whole(buffer: std::result::Result<js_sys::Promise, wasm_bindgen::JsValue>) -> worker::Result<Vec<u8>> {
    Ok(held(buffer).await?.0)
}

/// A body the runtime reads whole, copied into wasm memory, with the runtime's own copy
/// kept to answer with.
pub async fn held(
    buffer: std::result::Result<js_sys::Promise, wasm_bindgen::JsValue>,
) -> worker::Result<(Vec<u8>, Uint8Array)> {
    let buffer = Uint8Array::new(&wasm_bindgen_futures::JsFuture::from(buffer?).await?);
    Ok((buffer.to_vec(), buffer))
}

/// The body for upstream, built straight into the runtime's memory: the original bytes with
/// `edits` applied. One copy, made once, sent on every attempt.
pub fn upstream_body(raw: &[u8], edits: &[Edit]) -> Option<Uint8Array> {
    if raw.is_empty() && edits.is_empty() {
        return None;
    }
    let pieces = body::pieces(raw.len(), edits);
    let total: usize = pieces.iter().map(|p| p.bytes(raw).len()).sum();
    let out = Uint8Array::new_with_length(u32::try_from(total).ok()?);
    let mut at = 0u32;
    for p in &pieces {
        let bytes = p.bytes(raw);
        let len = u32::try_from(bytes.len()).ok()?;
        out.subarray(at, at + len).copy_from(bytes);
        at += len;
    }
    Some(out)
}

/// A body read up to a cap: all of it, or the part read so far and the rest unread.
pub enum Capped {
    Whole(Vec<u8>),
    /// Read whole in one call: the bytes, and the runtime's copy to answer with (no copy
    /// back out of wasm memory).
    Held(Vec<u8>, Uint8Array),
    Over(Vec<u8>, Source),
}

/// Reads `source` into a buffer of `room` bytes to start with, up to `cap`.
pub async fn read_capped(mut source: Source, cap: usize, room: usize) -> Result<Capped, worker::Error> {
    let mut buf = Vec::with_capacity(room.min(cap));
    while let Some(chunk) = source.next().await {
        buf.extend_from_slice(&chunk?);
        if buf.len() > cap {
            return Ok(Capped::Over(buf, source));
        }
    }
    Ok(Capped::Whole(buf))
}

/// A body as one stream, whether it arrived as a stream (fetch) or is already in memory
/// (the sandbox).
pub enum Source {
    /// The runtime's stream, not read yet: passed on as it is, or read once polled.
    Unread(Option<web_sys::ReadableStream>),
    Stream(Reader),
    Bytes(Option<Vec<u8>>),
    /// What was read already, then the rest.
    Prefixed(Option<Vec<u8>>, Box<Source>),
}

impl Source {
    /// `head`, already read, followed by `rest`.
    pub fn prefixed(head: Vec<u8>, rest: Source) -> Source {
        Source::Prefixed(Some(head), Box::new(rest))
    }
}

impl Stream for Source {
    type Item = Result<Vec<u8>, worker::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if let Source::Unread(raw) = &mut *self {
            *self = match raw.take() {
                Some(raw) => Source::Stream(Reader::new(&raw)),
                None => Source::Bytes(None),
            };
        }
        match &mut *self {
            Source::Unread(_) => Poll::Ready(None),
            Source::Stream(s) => Pin::new(s).poll_next(cx),
            Source::Bytes(b) => Poll::Ready(b.take().map(Ok)),
            Source::Prefixed(head, rest) => match head.take() {
                Some(h) => Poll::Ready(Some(Ok(h))),
                None => Pin::new(rest.as_mut()).poll_next(cx),
            },
        }
    }
}

// Each binding catches (`catch`): a JS exception through a binding that does not is fatal
// under panic=abort (`platform::Timer` says why), and a stream's calls are refused where no
// request runs (a body freed by the garbage collector). Catching also keeps wasm-bindgen
// from importing the functions straight from the snippet, which it lists once per function
// under the same key, a duplicate that `wrangler deploy` warns of.
#[wasm_bindgen(inline_js = r#"
export function open_reader(stream) {
  return stream.getReader();
}
export function read_chunk(reader) {
  return reader.read().then((r) => (r.done ? null : r.value));
}
export function stop_reading(reader) {
  reader.cancel().catch(() => {});
}
"#)]
extern "C" {
    type StreamReader;
    #[wasm_bindgen(catch)]
    fn open_reader(stream: &web_sys::ReadableStream) -> Result<StreamReader, JsValue>;
    #[wasm_bindgen(catch)]
    fn read_chunk(reader: &StreamReader) -> Result<js_sys::Promise, JsValue>;
    #[wasm_bindgen(catch)]
    fn stop_reading(reader: &StreamReader) -> Result<(), JsValue>;
}

/// Reads a stream of the runtime's chunk by chunk: each read is one call into the runtime,
/// answered with the chunk or `null` at the end. Its lock is never released: releasing it
/// makes the runtime build a `TypeError` with its stack for the reader's `closed` promise,
/// about 3 % of a streamed call's CPU for a reader nobody uses again. Dropped before the
/// end, it cancels the stream (upstream's connection is let go, as `worker::ByteStream`
/// did). A stream that cannot be read (locked, or refused) is an error, once.
pub struct Reader {
    reader: Result<StreamReader, JsValue>,
    reading: Option<JsFuture>,
    done: bool,
}

impl Reader {
    fn new(stream: &web_sys::ReadableStream) -> Reader {
        Reader { reader: open_reader(stream), reading: None, done: false }
    }

    /// The stream's end, as an error.
    fn fail(&mut self, e: JsValue) -> Poll<Option<Result<Vec<u8>, worker::Error>>> {
        self.done = true;
        Poll::Ready(Some(Err(worker::Error::from(e))))
    }
}

impl Stream for Reader {
    type Item = Result<Vec<u8>, worker::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let reading = match (&mut this.reading, &this.reader) {
            (Some(reading), _) => reading,
            (None, Ok(reader)) => match read_chunk(reader) {
                Ok(promise) => this.reading.insert(JsFuture::from(promise)),
                Err(e) => return this.fail(e),
            },
            (None, Err(e)) => {
                let e = e.clone();
                return this.fail(e);
            }
        };
        let read = futures_util::ready!(Pin::new(reading).poll(cx));
        self.reading = None;
        match read {
            Ok(v) if v.is_null() => {
                self.done = true;
                Poll::Ready(None)
            }
            Ok(v) => Poll::Ready(Some(Ok(v.unchecked_into::<Uint8Array>().to_vec()))),
            Err(e) => self.fail(e),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let (false, Ok(reader)) = (self.done, &self.reader) {
            // refused only where no request runs: then there is nothing to stop
            let _ = stop_reading(reader);
        }
    }
}

/// `chunks` as a stream of the runtime's, for a response's body: the runtime pulls a chunk
/// at a time, and a broken stream ends the response with an error, not a clean end.
pub fn to_runtime<S>(chunks: S) -> web_sys::ReadableStream
where
    S: Stream<Item = Result<Vec<u8>, worker::Error>> + 'static,
{
    let chunks =
        chunks.map(|c| c.map(|bytes| Uint8Array::from(&bytes[..]).into()).map_err(|e| JsValue::from(e.to_string())));
    wasm_streams::ReadableStream::from_stream(chunks).into_raw().unchecked_into()
}

/// An upstream response's body as one stream.
pub fn response_body(resp: &web_sys::Response) -> Source {
    Source::Unread(resp.body())
}
