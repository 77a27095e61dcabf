//! Queued jobs and predictions: calls whose answer is a ticket, polled later.
//!
//! fal-ai's queue (through the router, `?_subdomain=queue`) and Replicate's predictions are
//! priced once, at submit (`ROUTE_PRICES`), and their polls are free. So the gateway must
//! tell a submit from a poll, record the job a submit created, and send every poll upstream
//! to the path it recorded, never to the one the client wrote: clients build poll paths
//! differently (huggingface_hub and huggingface.js prefix `/fal-ai` only when they talk to
//! `router.huggingface.co`), and a client-written path would let a free poll reach any queue
//! path at all. The job is found by the id in the path.
//!
//! The shapes:
//! - fal-ai submit: `POST /fal-ai/<fal model path>?_subdomain=queue`, answered
//!   `{"request_id": "abc", "response_url": "https://queue.fal.run/fal-ai/wan/requests/abc", ...}`.
//! - fal-ai polls (with `?_subdomain=queue`): `GET .../requests/<id>/status`, `GET
//!   .../requests/<id>` (the result), `PUT .../requests/<id>/cancel`.
//! - Replicate submit: `POST /replicate/v1/models/<owner>/<name>/predictions`, `POST
//!   /replicate/v1/deployments/<owner>/<name>/predictions`, `POST /replicate/v1/predictions`
//!   (the body names a `version`), answered `{"id": "p123", "status": ..., "urls": {...}}`.
//! - Replicate polls: `GET /replicate/v1/predictions/<id>`, `POST
//!   /replicate/v1/predictions/<id>/cancel`.
//!
//! Paths come decoded (`paths::canonical_path`), and the query is decoded here before it is
//! read: a poll that upstream reads as a queue call but the gateway did not would skip the
//! owner check, and one key could read another's job.

use crate::core::error::GatewayError;
use crate::core::paths::{check_path, hex_value};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// The longest job id accepted.
pub const MAX_JOB_ID_LEN: usize = 128;
/// The longest model (or Replicate version) a job may name.
pub const MAX_JOB_MODEL_LEN: usize = 256;

/// What a call is, as far as jobs go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobCall {
    /// Creates a job: priced once, and its answer recorded (`submitted_job`).
    Submit,
    /// Reads or cancels the job `job_id`: free, and sent upstream to
    /// `poll_path(<recorded poll_base>, tail)`. `tail` is `""` (the result, or the
    /// prediction), `"/status"` or `"/cancel"`.
    Poll { job_id: String, tail: &'static str },
    /// Anything else, priced and sent as usual.
    NotAJob,
}

/// Classifies a call by its method, its decoded path (`ProxyRoute::path`, no query) and its
/// raw query string. A query whose `_subdomain` cannot be read one way is refused (see
/// `queue_requested`).
///
/// fal-ai calls are jobs only with a `_subdomain=queue` query parameter; without it a
/// `POST /fal-ai/...` is a synchronous call and `NotAJob`. With it, a path whose last
/// segments are `requests/<id>`, optionally followed by `status` or `cancel`, is a `Poll`
/// when the method fits (`GET` or `HEAD` to read, `PUT` to cancel) and `NotAJob` when it does
/// not; any other `POST` is a `Submit`. A queue call that is neither (see `queue_requested`)
/// is best refused: the queue's paths make sense only for a job the gateway recorded.
/// Replicate's shapes are in the module documentation. Everything else is `NotAJob`.
///
/// ```
/// use hf_gate::core::jobs::{classify, JobCall};
/// let q = Some("_subdomain=queue");
/// assert_eq!(classify("POST", "/fal-ai/fal-ai/wan/t2v", q), Ok(JobCall::Submit));
/// assert_eq!(classify("POST", "/fal-ai/fal-ai/wan/t2v", None), Ok(JobCall::NotAJob));
/// assert_eq!(
///     classify("GET", "/fal-ai/fal-ai/wan/requests/abc/status", Some("%5Fsubdomain=%71ueue")),
///     Ok(JobCall::Poll { job_id: "abc".into(), tail: "/status" })
/// );
/// assert_eq!(
///     classify("POST", "/replicate/v1/predictions/p123/cancel", None),
///     Ok(JobCall::Poll { job_id: "p123".into(), tail: "/cancel" })
/// );
/// ```
pub fn classify(method: &str, path: &str, query: Option<&str>) -> Result<JobCall, GatewayError> {
    if let Some(rest) = path.strip_prefix("/fal-ai/") {
        return Ok(classify_fal(method, rest, queue_requested(query)?));
    }
    if let Some(rest) = path.strip_prefix("/replicate/") {
        return Ok(classify_replicate(method, rest));
    }
    Ok(JobCall::NotAJob)
}

/// Whether a raw query string asks for fal-ai's queue: a `_subdomain` parameter naming
/// `queue`, read as upstream reads it. Each `&`-separated pair is decoded as
/// `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte; a leading `?` is
/// tolerated) before it is compared, so `%5Fsubdomain=%71ueue` asks for the queue. The value
/// names a host (`queue.fal.run`), and hosts ignore case, so `QUEUE` asks for it too.
///
/// Refused with 400 `invalid_request`: a malformed escape anywhere in the query; a
/// `_subdomain` that is not a plain host label (letters, digits, `-`; empty is no
/// subdomain), whose host no reading can be sure of; and two `_subdomain` parameters that
/// name different hosts, of which upstream's choice is not knowable.
///
/// ```
/// use hf_gate::core::jobs::queue_requested;
/// assert_eq!(queue_requested(Some("a=1&_subdomain=queue")), Ok(true));
/// assert_eq!(queue_requested(Some("_subdomain=%71ueue")), Ok(true));
/// assert_eq!(queue_requested(Some("_subdomain=queues")), Ok(false));
/// assert!(queue_requested(Some("_subdomain=queue&_subdomain=api")).is_err());
/// assert_eq!(queue_requested(None), Ok(false));
/// ```
pub fn queue_requested(query: Option<&str>) -> Result<bool, GatewayError> {
    let Some(query) = query else { return Ok(false) };
    let query = query.strip_prefix('?').unwrap_or(query);
    let bad = |why: &str| GatewayError::InvalidRequest(format!("query {why}"));
    let mut subdomain: Option<Vec<u8>> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(name), Some(value)) = (form_decode(name), form_decode(value)) else {
            return Err(bad("has a malformed percent-escape"));
        };
        if name != b"_subdomain" {
            continue;
        }
        let label = value.len() <= 63 && value.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-');
        if !label {
            return Err(bad("has a _subdomain that is not a host label"));
        }
        let value = value.to_ascii_lowercase();
        match &subdomain {
            Some(seen) if *seen != value => return Err(bad("names two different _subdomain values")),
            _ => subdomain = Some(value),
        }
    }
    Ok(subdomain.as_deref() == Some(b"queue"))
}

/// One component of an `application/x-www-form-urlencoded` query, decoded to its bytes;
/// `None` for a malformed escape.
fn form_decode(component: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(component.len());
    let mut rest = component.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = rest.first().and_then(hex_value)?;
                let lo = rest.get(1).and_then(hex_value)?;
                out.push((hi << 4) | lo);
                rest = rest.get(2..).unwrap_or_default();
            }
            _ => out.push(b),
        }
    }
    Some(out)
}

fn classify_fal(method: &str, rest: &str, queue: bool) -> JobCall {
    if !queue {
        return JobCall::NotAJob;
    }
    let rest = rest.trim_end_matches('/');
    if let Some((job_id, tail)) = fal_poll(rest) {
        let fits = match tail {
            "/cancel" => method == "PUT",
            _ => method == "GET" || method == "HEAD",
        };
        return if fits { JobCall::Poll { job_id: job_id.to_string(), tail } } else { JobCall::NotAJob };
    }
    if method == "POST" && !rest.is_empty() {
        JobCall::Submit
    } else {
        JobCall::NotAJob
    }
}

/// The job id and tail of a fal-ai poll path (after `/fal-ai/`): at least one segment, then
/// `requests/<id>`, then optionally `status` or `cancel`, and nothing else.
fn fal_poll(rest: &str) -> Option<(&str, &'static str)> {
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let tail = match segs.last() {
        Some(&"status") => "/status",
        Some(&"cancel") => "/cancel",
        _ => "",
    };
    if !tail.is_empty() && n >= 4 && segs[n - 3] == "requests" && valid_job_id(segs[n - 2]) {
        return Some((segs[n - 2], tail));
    }
    if n >= 3 && segs[n - 2] == "requests" && valid_job_id(segs[n - 1]) {
        return Some((segs[n - 1], ""));
    }
    None
}

fn classify_replicate(method: &str, rest: &str) -> JobCall {
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let post = method == "POST";
    let read = method == "GET" || method == "HEAD";
    match segs.as_slice() {
        ["v1", "models" | "deployments", owner, name, "predictions"]
            if post && !owner.is_empty() && !name.is_empty() =>
        {
            JobCall::Submit
        }
        ["v1", "predictions"] if post => JobCall::Submit,
        ["v1", "predictions", id] if read && valid_job_id(id) => JobCall::Poll { job_id: id.to_string(), tail: "" },
        ["v1", "predictions", id, "cancel"] if post && valid_job_id(id) => {
            JobCall::Poll { job_id: id.to_string(), tail: "/cancel" }
        }
        _ => JobCall::NotAJob,
    }
}

/// A job id as the gateway accepts it: 1 to 128 characters of `[A-Za-z0-9_.-]`, and not a
/// dot segment, so it is safe in a path and as a storage key.
///
/// ```
/// use hf_gate::core::jobs::valid_job_id;
/// assert!(valid_job_id("6c1f4a52-0f5e-4bd2-9d3e-7e8f0a1b2c3d"));
/// assert!(!valid_job_id(".."));
/// assert!(!valid_job_id("a/b"));
/// ```
pub fn valid_job_id(id: &str) -> bool {
    (1..=MAX_JOB_ID_LEN).contains(&id.len())
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A job a submit created: its id, and the upstream path its polls go to (before the tail).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmittedJob {
    pub id: String,
    pub poll_base: String,
}

/// The fields the gateway reads from a job's JSON: fal's submit answer (`request_id`,
/// `response_url`), Replicate's (`id`), a Replicate prediction request (`version`). One map
/// visitor reads them all, where a derived struct per shape put a deserializer of about 3 KB
/// each into the bundle; everything else in a body (a prediction's `input` may be megabytes)
/// is skipped without being kept. As a derived struct would, it refuses a field given twice.
#[derive(Default)]
struct JobFields {
    request_id: Option<Value>,
    response_url: Option<Value>,
    id: Option<Value>,
    version: Option<Value>,
}

impl<'de> Deserialize<'de> for JobFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = JobFields;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JobFields, A::Error> {
                let mut out = JobFields::default();
                while let Some(key) = map.next_key::<String>()? {
                    let (name, slot) = match key.as_str() {
                        "request_id" => ("request_id", &mut out.request_id),
                        "response_url" => ("response_url", &mut out.response_url),
                        "id" => ("id", &mut out.id),
                        "version" => ("version", &mut out.version),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(de::Error::duplicate_field(name));
                    }
                    *slot = Some(map.next_value::<Value>()?);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Fields)
    }
}

fn job_fields(body: &[u8]) -> Option<JobFields> {
    serde_json::from_slice(body).ok()
}

/// Reads the job a submit created from its 2xx JSON answer. `None` when the answer names no
/// valid id (or the path is no job route).
///
/// fal-ai: the id is `request_id`; polls go to `"/fal-ai"` + the path of `response_url`, when
/// that is an `https` URL with no query, fragment or user info, whose path ends in
/// `/requests/<id>` after at least one segment and passes `paths::check_path`. Otherwise the
/// gateway builds the path fal documents: `"/fal-ai/"` + the first two segments of the submit
/// path after `/fal-ai/` (fal's queue is per app, `<owner>/<app>`, without the sub-path a
/// submit may add) + `"/requests/"` + id.
///
/// Replicate: the id is `id`; polls go to `/replicate/v1/predictions/<id>`.
///
/// ```
/// use hf_gate::core::jobs::submitted_job;
/// let body = br#"{"request_id":"abc","status":"IN_QUEUE",
///   "response_url":"https://queue.fal.run/fal-ai/wan/requests/abc"}"#;
/// let job = submitted_job("/fal-ai/fal-ai/wan/v2.2-a14b/text-to-video", body).unwrap();
/// assert_eq!(job.poll_base, "/fal-ai/fal-ai/wan/requests/abc");
/// ```
pub fn submitted_job(path: &str, body: &[u8]) -> Option<SubmittedJob> {
    if let Some(rest) = path.strip_prefix("/fal-ai/") {
        let answer = job_fields(body)?;
        let id = answer.request_id.as_ref().and_then(Value::as_str).filter(|id| valid_job_id(id))?;
        let poll_base = answer
            .response_url
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|url| fal_poll_base(url, id))
            .or_else(|| fal_fallback_poll_base(rest, id))?;
        return Some(SubmittedJob { id: id.to_string(), poll_base });
    }
    if path.starts_with("/replicate/") {
        let answer = job_fields(body)?;
        let id = answer.id.as_ref().and_then(Value::as_str).filter(|id| valid_job_id(id))?;
        return Some(SubmittedJob { id: id.to_string(), poll_base: format!("/replicate/v1/predictions/{id}") });
    }
    None
}

/// `"/fal-ai"` + the path of fal's `response_url`, if it is one the gateway can trust.
fn fal_poll_base(url: &str, id: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let slash = rest.find('/')?;
    let (host, url_path) = rest.split_at(slash);
    let host_ok =
        !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    let ending = format!("/requests/{id}");
    let owned = url_path.strip_suffix(ending.as_str()).is_some_and(|before| before.len() > 1);
    if !host_ok || !owned || url_path.contains(['?', '#']) {
        return None;
    }
    let base = format!("/fal-ai{url_path}");
    check_path(&base).is_ok().then_some(base)
}

/// The poll path fal documents, from the submit path after `/fal-ai/`.
fn fal_fallback_poll_base(rest: &str, id: &str) -> Option<String> {
    let app: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).take(2).collect();
    if app.is_empty() {
        return None;
    }
    let base = format!("/fal-ai/{}/requests/{id}", app.join("/"));
    check_path(&base).is_ok().then_some(base)
}

/// The upstream path of a poll: the recorded `poll_base` and the poll's tail. Replicate has
/// no status path (the prediction is its status), so only `"/cancel"` is appended to a
/// Replicate base; a tail that is none of `""`, `"/status"`, `"/cancel"` appends nothing.
///
/// ```
/// use hf_gate::core::jobs::poll_path;
/// assert_eq!(poll_path("/fal-ai/fal-ai/wan/requests/abc", "/status"), "/fal-ai/fal-ai/wan/requests/abc/status");
/// assert_eq!(poll_path("/replicate/v1/predictions/p1", "/status"), "/replicate/v1/predictions/p1");
/// assert_eq!(poll_path("/replicate/v1/predictions/p1", "/cancel"), "/replicate/v1/predictions/p1/cancel");
/// ```
pub fn poll_path(poll_base: &str, tail: &str) -> String {
    let appended = match tail {
        "/cancel" => tail,
        "/status" if !poll_base.starts_with("/replicate/") => tail,
        _ => "",
    };
    format!("{poll_base}{appended}")
}

/// The model a job names, for `ROUTE_PRICES` and the usage views: the fal model path of a
/// fal-ai submit, `<owner>/<name>` from the path of a Replicate model or deployment, and for
/// `POST /replicate/v1/predictions` what the body's `version` runs (`replicate_version`).
/// `None` otherwise. `path` is decoded (`ProxyRoute::path`).
///
/// ```
/// use hf_gate::core::jobs::job_model;
/// assert_eq!(job_model("/fal-ai/fal-ai/wan/t2v", b"{}").as_deref(), Some("fal-ai/wan/t2v"));
/// assert_eq!(
///     job_model("/replicate/v1/models/black-forest-labs/flux-schnell/predictions", b"{}").as_deref(),
///     Some("black-forest-labs/flux-schnell")
/// );
/// assert_eq!(job_model("/replicate/v1/predictions", br#"{"version":"5c7d5dc6"}"#).as_deref(), Some("5c7d5dc6"));
/// let versioned = br#"{"version":"cheap/model:5c7d5dc6"}"#;
/// assert_eq!(job_model("/replicate/v1/predictions", versioned).as_deref(), Some("5c7d5dc6"));
/// ```
pub fn job_model(path: &str, body: &[u8]) -> Option<String> {
    let model = if let Some(rest) = path.strip_prefix("/fal-ai/") {
        rest.trim_end_matches('/').to_string()
    } else if let Some(rest) = path.strip_prefix("/replicate/v1/") {
        let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        match segs.as_slice() {
            ["models" | "deployments", owner, name, "predictions"] => format!("{owner}/{name}"),
            ["predictions"] => replicate_version(job_fields(body)?.version.as_ref().and_then(Value::as_str)?)?,
            _ => return None,
        }
    } else {
        return None;
    };
    let printable = model.bytes().all(|b| b.is_ascii_graphic());
    (!model.is_empty() && model.len() <= MAX_JOB_MODEL_LEN && printable).then_some(model)
}

/// What a Replicate prediction's `version` runs, as the model it is priced by. Replicate
/// takes `owner/name` (the model's latest version), `owner/name:<version id>` and a bare
/// `<version id>`; given a version id it runs that version whatever text precedes it, so the
/// id alone names the model then: a caller cannot write a cheaper model's name in front of
/// it. Names and ids are 1 to 128 characters of `[A-Za-z0-9_.-]`, never a dot segment.
fn replicate_version(version: &str) -> Option<String> {
    let runs = match version.split_once(':') {
        Some((_, id)) => valid_job_id(id).then_some(id),
        None => match version.split_once('/') {
            Some((owner, name)) => (valid_job_id(owner) && valid_job_id(name)).then_some(version),
            None => valid_job_id(version).then_some(version),
        },
    };
    runs.map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::paths::{route, Route};

    const Q: Option<&str> = Some("_subdomain=queue");

    fn poll(id: &str, tail: &'static str) -> Result<JobCall, GatewayError> {
        Ok(JobCall::Poll { job_id: id.to_string(), tail })
    }

    #[test]
    fn fal_queue_calls_are_told_apart_by_path_and_method() {
        assert_eq!(classify("POST", "/fal-ai/fal-ai/wan/v2.2-a14b/text-to-video", Q), Ok(JobCall::Submit));
        assert_eq!(classify("POST", "/fal-ai/fal-ai/flux/dev", Some("x=1&_subdomain=queue&y")), Ok(JobCall::Submit));
        // polls as the router's clients send them, and as they send them pointed elsewhere
        for prefix in ["/fal-ai/fal-ai/wan", "/fal-ai/wan", "/fal-ai/bytedance/seedance/v1"] {
            assert_eq!(classify("GET", &format!("{prefix}/requests/abc-1/status"), Q), poll("abc-1", "/status"));
            assert_eq!(classify("GET", &format!("{prefix}/requests/abc-1"), Q), poll("abc-1", ""));
            assert_eq!(classify("HEAD", &format!("{prefix}/requests/abc-1"), Q), poll("abc-1", ""));
            assert_eq!(classify("PUT", &format!("{prefix}/requests/abc-1/cancel"), Q), poll("abc-1", "/cancel"));
        }
        assert_eq!(classify("GET", "/fal-ai/wan/requests/abc/status/", Q), poll("abc", "/status"));
    }

    #[test]
    fn a_poll_shape_with_the_wrong_method_is_no_job() {
        assert_eq!(classify("PUT", "/fal-ai/wan/requests/abc/status", Q), Ok(JobCall::NotAJob));
        assert_eq!(classify("GET", "/fal-ai/wan/requests/abc/cancel", Q), Ok(JobCall::NotAJob));
        assert_eq!(classify("POST", "/fal-ai/wan/requests/abc", Q), Ok(JobCall::NotAJob));
        assert_eq!(classify("DELETE", "/fal-ai/wan/requests/abc", Q), Ok(JobCall::NotAJob));
    }

    #[test]
    fn fal_calls_without_the_queue_parameter_are_synchronous() {
        assert_eq!(classify("POST", "/fal-ai/fal-ai/flux/dev", None), Ok(JobCall::NotAJob));
        assert_eq!(classify("GET", "/fal-ai/wan/requests/abc/status", None), Ok(JobCall::NotAJob));
        for q in ["_subdomain=queued", "subdomain=queue", "_subdomain", "", "a=_subdomain=queue", "_subdomain+=queue"] {
            assert_eq!(classify("POST", "/fal-ai/fal-ai/flux/dev", Some(q)), Ok(JobCall::NotAJob), "{q}");
        }
        assert_eq!(queue_requested(Some("?_subdomain=queue")), Ok(true));
    }

    #[test]
    fn a_poll_with_the_queue_spelled_in_escapes_is_still_a_poll() {
        // each of these reaches fal's queue upstream: without the owner check, another
        // key's job could be read with them
        for q in [
            "%5Fsubdomain=queue",
            "%5fsubdomain=queue",
            "_subdomain=%71ueue",
            "_sub%64omain=%71%75%65%75%65",
            "?%5Fsubdomain=queue",
            "_subdomain=QUEUE",
            "_subdomain=Queue",
            "_subdomain=%51ueue",
            "x=a+b&_subdomain=queue&&y",
            "_subdomain=queue&_subdomain=QUEUE",
        ] {
            assert_eq!(classify("GET", "/fal-ai/fal-ai/wan/requests/abc", Some(q)), poll("abc", ""), "{q}");
            assert_eq!(classify("PUT", "/fal-ai/wan/requests/abc/cancel", Some(q)), poll("abc", "/cancel"), "{q}");
        }
        // and with the path spelled in escapes too, as the router decodes it
        let Ok(Route::Proxy(p)) = route("/fal-ai/fal-ai/wan/%72equests/abc/%73tatus") else { panic!() };
        assert_eq!(classify("GET", &p.path, Some("%5Fsubdomain=%71ueue")), poll("abc", "/status"));
    }

    #[test]
    fn a_query_with_no_single_reading_is_refused() {
        for q in [
            "_subdomain=queue&_subdomain=api",
            "%5Fsubdomain=queue&_subdomain=",
            "_subdomain=%7",
            "_subdomain=queue&x=%zz",
            "_subdomain=+queue",
            "_subdomain=queue+",
            "_subdomain=queue.fal",
            "_subdomain=que%00ue",
            "_subdomain=queue%2F",
            "_subdomain=%C3%A9",
        ] {
            let refused = classify("GET", "/fal-ai/fal-ai/wan/requests/abc", Some(q));
            assert!(matches!(refused, Err(GatewayError::InvalidRequest(_))), "{q}: {refused:?}");
        }
        // only fal-ai's queue is read from the query
        assert_eq!(classify("POST", "/together/v1/images/generations", Some("x=%zz")), Ok(JobCall::NotAJob));
    }

    #[test]
    fn what_is_not_a_poll_under_the_queue() {
        // no segment before `requests`, a bad id, more after the tail
        assert_eq!(classify("GET", "/fal-ai/requests/abc", Q), Ok(JobCall::NotAJob));
        assert_eq!(classify("GET", "/fal-ai/wan/requests/a..b/x/status", Q), Ok(JobCall::NotAJob));
        assert_eq!(classify("GET", "/fal-ai/wan/requests/abc/status/more", Q), Ok(JobCall::NotAJob));
        assert_eq!(classify("GET", "/fal-ai/wan/requests/abc/logs", Q), Ok(JobCall::NotAJob));
        assert_eq!(classify("GET", "/fal-ai/wan/requests/..", Q), Ok(JobCall::NotAJob));
        assert_eq!(classify("GET", "/fal-ai/fal-ai/flux/dev", Q), Ok(JobCall::NotAJob));
        // a POST whose last segments are not a poll is a submit
        assert_eq!(classify("POST", "/fal-ai/wan/requests", Q), Ok(JobCall::Submit));
        assert_eq!(classify("POST", "/fal-ai/", Q), Ok(JobCall::NotAJob));
    }

    #[test]
    fn replicate_predictions_are_told_apart() {
        for p in [
            "/replicate/v1/models/black-forest-labs/flux-schnell/predictions",
            "/replicate/v1/deployments/acme/my-flux/predictions",
            "/replicate/v1/predictions",
        ] {
            assert_eq!(classify("POST", p, None), Ok(JobCall::Submit), "{p}");
            assert_eq!(classify("GET", p, None), Ok(JobCall::NotAJob), "{p}");
        }
        assert_eq!(classify("GET", "/replicate/v1/predictions/p123", None), poll("p123", ""));
        assert_eq!(classify("POST", "/replicate/v1/predictions/p123/cancel", None), poll("p123", "/cancel"));
        assert_eq!(classify("POST", "/replicate/v1/predictions/p123", None), Ok(JobCall::NotAJob));
        assert_eq!(classify("GET", "/replicate/v1/predictions/p123/cancel", None), Ok(JobCall::NotAJob));
        assert_eq!(classify("GET", "/replicate/v1/predictions/p123/status", None), Ok(JobCall::NotAJob));
        assert_eq!(classify("POST", "/replicate/v1/models/x/predictions", None), Ok(JobCall::NotAJob));
        assert_eq!(classify("POST", "/replicate/v1/models/a/b/versions", None), Ok(JobCall::NotAJob));
    }

    #[test]
    fn other_routes_are_no_jobs() {
        assert_eq!(classify("POST", "/v1/chat/completions", Q), Ok(JobCall::NotAJob));
        assert_eq!(classify("POST", "/together/v1/images/generations", Q), Ok(JobCall::NotAJob));
        assert_eq!(classify("POST", "/fal-ai-x/y", Q), Ok(JobCall::NotAJob));
    }

    #[test]
    fn job_ids_are_safe_path_segments() {
        assert!(valid_job_id("a"));
        assert!(valid_job_id("A_b-c.d"));
        assert!(valid_job_id(&"x".repeat(128)));
        for bad in ["", ".", "..", "a/b", "a b", "a%2f", "é", "a?b"] {
            assert!(!valid_job_id(bad), "{bad}");
        }
        assert!(!valid_job_id(&"x".repeat(129)));
    }

    #[test]
    fn a_fal_submit_records_the_path_of_its_response_url() {
        let body = br#"{"request_id":"abc","status":"IN_QUEUE",
            "response_url":"https://queue.fal.run/fal-ai/wan/requests/abc",
            "status_url":"https://queue.fal.run/fal-ai/wan/requests/abc/status"}"#;
        let job = submitted_job("/fal-ai/fal-ai/wan/v2.2-a14b/text-to-video", body).unwrap();
        assert_eq!(job, SubmittedJob { id: "abc".into(), poll_base: "/fal-ai/fal-ai/wan/requests/abc".into() });
        // and a poll the client sends either way reaches it
        let Ok(JobCall::Poll { job_id, tail }) = classify("GET", "/fal-ai/wan/requests/abc/status", Q) else {
            panic!()
        };
        assert_eq!(job_id, job.id);
        assert_eq!(poll_path(&job.poll_base, tail), "/fal-ai/fal-ai/wan/requests/abc/status");
    }

    #[test]
    fn a_response_url_that_cannot_be_trusted_falls_back_to_the_submit_path() {
        let fallback = "/fal-ai/fal-ai/wan/requests/abc";
        for url in [
            "http://queue.fal.run/fal-ai/wan/requests/abc",
            "https://queue.fal.run/fal-ai/wan/requests/other",
            "https://queue.fal.run/fal-ai/wan/requests/abc?x=1",
            "https://queue.fal.run/fal-ai/wan/requests/abc#x",
            "https://user@queue.fal.run/fal-ai/wan/requests/abc",
            "https://queue.fal.run/fal-ai/../admin/requests/abc",
            "https://queue.fal.run/fal-ai/%2e%2e/requests/abc",
            "https://queue.fal.run//requests/abc",
            "https://queue.fal.run/requests/abc",
            "https:///fal-ai/wan/requests/abc",
            "queue.fal.run/fal-ai/wan/requests/abc",
            "",
        ] {
            let body = format!(r#"{{"request_id":"abc","response_url":"{url}"}}"#);
            let job = submitted_job("/fal-ai/fal-ai/wan/v2.2-a14b/text-to-video", body.as_bytes()).unwrap();
            assert_eq!(job.poll_base, fallback, "{url}");
        }
        for body in [r#"{"request_id":"abc"}"#, r#"{"request_id":"abc","response_url":7}"#] {
            let job = submitted_job("/fal-ai/fal-ai/wan/v2.2-a14b/text-to-video", body.as_bytes()).unwrap();
            assert_eq!(job.poll_base, fallback, "{body}");
        }
        let one_segment = submitted_job("/fal-ai/solo", br#"{"request_id":"abc"}"#).unwrap();
        assert_eq!(one_segment.poll_base, "/fal-ai/solo/requests/abc");
    }

    #[test]
    fn a_submit_without_a_valid_id_records_nothing() {
        let p = "/fal-ai/fal-ai/wan/t2v";
        for body in [
            &br#"{"status":"IN_QUEUE"}"#[..],
            br#"{"request_id":42}"#,
            br#"{"request_id":"../x"}"#,
            br#"{"request_id":""}"#,
            b"not json",
            b"[]",
        ] {
            assert_eq!(submitted_job(p, body), None);
        }
        assert_eq!(submitted_job("/fal-ai/", br#"{"request_id":"abc"}"#), None);
        assert_eq!(submitted_job("/replicate/v1/predictions", br#"{"id":"a/b"}"#), None);
        assert_eq!(submitted_job("/together/v1/x", br#"{"id":"abc"}"#), None);
    }

    #[test]
    fn fields_are_read_whatever_surrounds_them_and_a_repeated_one_is_refused() {
        let body = br#"{"input":{"image":"data:;base64,AAAA","n":[1,{"id":"inner"}]},"id":"p1","id2":null}"#;
        assert_eq!(submitted_job("/replicate/v1/predictions", body).map(|j| j.id).as_deref(), Some("p1"));
        let twice = br#"{"id":"p1","id":"p2"}"#;
        assert_eq!(submitted_job("/replicate/v1/predictions", twice), None);
        let null_then_id = br#"{"version":null,"version":"v"}"#;
        assert_eq!(job_model("/replicate/v1/predictions", null_then_id), None);
        assert_eq!(job_model("/replicate/v1/predictions", br#"{"version":7}"#), None);
    }

    #[test]
    fn a_replicate_submit_records_its_prediction() {
        let body =
            br#"{"id":"p123","status":"starting","urls":{"get":"https://api.replicate.com/v1/predictions/p123"}}"#;
        let job = submitted_job("/replicate/v1/models/black-forest-labs/flux-schnell/predictions", body).unwrap();
        assert_eq!(job, SubmittedJob { id: "p123".into(), poll_base: "/replicate/v1/predictions/p123".into() });
        assert_eq!(poll_path(&job.poll_base, ""), "/replicate/v1/predictions/p123");
        assert_eq!(poll_path(&job.poll_base, "/cancel"), "/replicate/v1/predictions/p123/cancel");
    }

    #[test]
    fn poll_paths_append_only_known_tails() {
        let fal = "/fal-ai/fal-ai/wan/requests/abc";
        assert_eq!(poll_path(fal, ""), fal);
        assert_eq!(poll_path(fal, "/cancel"), format!("{fal}/cancel"));
        assert_eq!(poll_path(fal, "/../../admin"), fal);
    }

    #[test]
    fn a_replicate_prediction_is_priced_by_what_it_runs() {
        let model = |version: &str| {
            let body = serde_json::json!({ "version": version, "input": {} }).to_string();
            job_model("/replicate/v1/predictions", body.as_bytes())
        };
        assert_eq!(model("black-forest-labs/flux-schnell").as_deref(), Some("black-forest-labs/flux-schnell"));
        assert_eq!(model("5c7d5dc6dd8bf75c").as_deref(), Some("5c7d5dc6dd8bf75c"));
        // a version id runs that version whatever name is written before it
        assert_eq!(model("cheap-owner/cheap-model:5c7d5dc6dd8bf75c").as_deref(), Some("5c7d5dc6dd8bf75c"));
        assert_eq!(model("black-forest-labs/flux-schnell:v_1.2-x").as_deref(), Some("v_1.2-x"));
        assert_eq!(model(&"a".repeat(128)).as_deref(), Some("a".repeat(128).as_str()));
        for bad in [
            "",
            "a/b/c",
            "a/",
            "/b",
            "a/..",
            "a/b:",
            ":",
            "a/b:c:d",
            "a/b:c d",
            "has space",
            "..",
            "é",
            &"a".repeat(129),
        ] {
            assert_eq!(model(bad), None, "{bad}");
        }
        assert_eq!(model(&format!("a/b:{}", "x".repeat(129))), None);
    }

    #[test]
    fn a_replicate_model_or_deployment_is_priced_by_its_path_not_its_body() {
        let body = br#"{"version":"cheap/model:abc","input":{}}"#;
        assert_eq!(job_model("/replicate/v1/models/acme/pricey/predictions", body).as_deref(), Some("acme/pricey"));
        assert_eq!(
            job_model("/replicate/v1/deployments/acme/pricey/predictions", body).as_deref(),
            Some("acme/pricey")
        );
    }

    #[test]
    fn the_model_a_job_names() {
        assert_eq!(job_model("/fal-ai/fal-ai/flux/dev/", b"").as_deref(), Some("fal-ai/flux/dev"));
        assert_eq!(
            job_model("/replicate/v1/deployments/acme/my-flux/predictions", b"").as_deref(),
            Some("acme/my-flux")
        );
        let versioned = br#"{"version":"black-forest-labs/flux-schnell:5c7d5dc6","input":{"prompt":"x"}}"#;
        assert_eq!(job_model("/replicate/v1/predictions", versioned).as_deref(), Some("5c7d5dc6"));
        assert_eq!(job_model("/replicate/v1/predictions", br#"{"version":7}"#), None);
        assert_eq!(job_model("/replicate/v1/predictions", br#"{"version":"has space"}"#), None);
        assert_eq!(job_model("/replicate/v1/predictions", b"{}"), None);
        assert_eq!(job_model("/replicate/v1/predictions", b"nope"), None);
        assert_eq!(job_model("/replicate/v1/predictions/p1", b""), None);
        assert_eq!(job_model("/fal-ai/", b""), None);
        assert_eq!(job_model("/v1/chat/completions", br#"{"model":"m"}"#), None);
    }
}
