//! The request log: one record per admitted call, written by the account object in the same
//! operation that settles (or releases) the call's hold, so a record exists exactly when the
//! ledger moved. Records carry what an operator asks of a call (who, what, where, what it
//! cost, how long it took, why it failed) and never a prompt, a completion or a secret.
//!
//! Here: the record's shape, the query a reader sends (filters and cursor), and the CSV form.
//! The account object stores records as rows and answers queries with SQL (`edge::account_do`).

use crate::core::call_line::{CallLine, CallLog};
use crate::core::error::GatewayError;
use crate::core::time::{civil_from_days, days_from_civil, Date, UnixMillis, MS_PER_DAY};
use std::fmt::Write;

/// Records are kept this long by default (`REQUEST_LOG_DAYS`).
pub const DEFAULT_RETENTION_DAYS: u64 = 31;
/// The most records one account keeps by default (`REQUEST_LOG_MAX_ROWS`); the oldest go first.
pub const DEFAULT_MAX_ROWS: u64 = 200_000;
/// The most records one page holds.
pub const MAX_PAGE: u32 = 1_000;
pub const DEFAULT_PAGE: u32 = 100;

/// A record as the API shows it (and as it is stored, one JSON text per row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub request_id: String,
    pub at: String,
    pub key_id: String,
    pub org: Option<String>,
    pub route: String,
    pub api: String,
    pub model: String,
    pub provider: String,
    pub status: u16,
    pub error: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_micro_usd: u64,
    pub reserved_micro_usd: u64,
    pub latency_ms: u64,
    pub ttfb_ms: Option<u64>,
    pub retries: u32,
    pub cooldown_wait_ms: u64,
    pub stream: bool,
    pub upstream_request_id: Option<String>,
    /// Of `cost_micro_usd`, what was charged without a usage count: the reservation in full,
    /// because the stream broke, time ran out, the call timed out after upstream had it, or
    /// its hold lapsed. `upstream_request_id` is what an operator reconciles it by.
    pub unmetered_micro_usd: u64,
}

/// The CSV header: the record's fields, in order.
pub const CSV_HEADER: &str = "request_id,at,key_id,org,route,api,model,provider,status,error,prompt_tokens,completion_tokens,cost_micro_usd,reserved_micro_usd,latency_ms,ttfb_ms,retries,cooldown_wait_ms,stream,upstream_request_id,unmetered_micro_usd";

impl Record {
    /// A call's record: `cost` charged, `unmetered` of it without a usage count.
    pub fn of(line: &CallLine, log: &CallLog, cost: u64, unmetered: u64) -> Record {
        Record {
            request_id: log.request_id.clone(),
            at: format_millis(log.at),
            key_id: log.key_id.clone(),
            org: log.org.clone(),
            route: log.route.clone(),
            api: log.api.clone(),
            model: line.model.clone(),
            provider: line.provider.clone(),
            status: log.status,
            error: log.error.clone(),
            prompt_tokens: line.tokens.prompt,
            completion_tokens: line.tokens.completion,
            cost_micro_usd: cost,
            reserved_micro_usd: log.reserved,
            latency_ms: log.latency_ms,
            ttfb_ms: log.ttfb_ms,
            retries: log.retries,
            cooldown_wait_ms: log.cooldown_wait_ms,
            stream: log.stream,
            upstream_request_id: log.upstream_request_id.clone(),
            unmetered_micro_usd: unmetered,
        }
    }

    /// The record a hold leaves when it lapses (its isolate died before the call settled):
    /// charged its reservation in full, as unmetered, until the call's own record, if its
    /// settle still comes, replaces it.
    pub fn lapse(hold: u64, key_id: &str, charged: u64, now: UnixMillis) -> Record {
        Record {
            request_id: format!("hold-{hold}"),
            at: format_millis(now),
            key_id: key_id.to_string(),
            org: None,
            route: String::new(),
            api: String::new(),
            model: String::new(),
            provider: String::new(),
            status: 0,
            error: Some("hold_lapsed".into()),
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_micro_usd: charged,
            reserved_micro_usd: charged,
            latency_ms: 0,
            ttfb_ms: None,
            retries: 0,
            cooldown_wait_ms: 0,
            stream: false,
            upstream_request_id: None,
            unmetered_micro_usd: charged,
        }
    }

    /// One CSV row (RFC 4180: fields with a comma, quote or line break are quoted).
    pub fn csv_row(&self, out: &mut String) {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let fields = [
            self.request_id.clone(),
            self.at.clone(),
            self.key_id.clone(),
            opt(&self.org),
            self.route.clone(),
            self.api.clone(),
            self.model.clone(),
            self.provider.clone(),
            self.status.to_string(),
            opt(&self.error),
            self.prompt_tokens.to_string(),
            self.completion_tokens.to_string(),
            self.cost_micro_usd.to_string(),
            self.reserved_micro_usd.to_string(),
            self.latency_ms.to_string(),
            self.ttfb_ms.map(|t| t.to_string()).unwrap_or_default(),
            self.retries.to_string(),
            self.cooldown_wait_ms.to_string(),
            self.stream.to_string(),
            opt(&self.upstream_request_id),
            self.unmetered_micro_usd.to_string(),
        ];
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // a cell a spreadsheet would run as a formula is prefixed, as OWASP advises
            let f = if f.starts_with(['=', '+', '-', '@']) && crate::core::decimal::parse(f).is_none() {
                format!("'{f}")
            } else {
                f.clone()
            };
            if f.contains([',', '"', '\n', '\r']) {
                out.push('"');
                out.push_str(&f.replace('"', "\"\""));
                out.push('"');
            } else {
                out.push_str(&f);
            }
        }
        out.push_str("\r\n");
    }
}

/// Which statuses a query wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u16),
    /// `2xx`, `4xx`, `5xx`: the hundreds digit.
    Class(u16),
}

impl StatusFilter {
    /// The range of statuses, as `[low, high)`.
    pub fn range(self) -> (u16, u16) {
        match self {
            StatusFilter::Exact(s) => (s, s + 1),
            StatusFilter::Class(c) => (c * 100, c * 100 + 100),
        }
    }
}

/// Where a page starts: strictly before this record in (at, shard, seq) order, newest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub at: u64,
    pub shard: u32,
    pub seq: u64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.at, self.shard, self.seq)
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let mut parts = s.split('.');
        let c = Cursor {
            at: parts.next()?.parse().ok()?,
            shard: parts.next()?.parse().ok()?,
            seq: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(c)
    }

    /// For shard `shard`'s query: records before (`at`, `seq`), where `seq` is the bound
    /// within the cursor's own millisecond (all of a lower shard's, none of a higher one's).
    pub fn bound_for(&self, shard: u32) -> (u64, u64) {
        let seq = match shard.cmp(&self.shard) {
            std::cmp::Ordering::Less => u64::MAX,
            std::cmp::Ordering::Equal => self.seq,
            std::cmp::Ordering::Greater => 0,
        };
        (self.at, seq)
    }
}

/// A reader's query, as sent to an account object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// One key's records; `None`: every key of the account.
    pub key_id: Option<String>,
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub model: Option<String>,
    pub status: Option<StatusFilter>,
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

fn bad(why: impl Into<String>) -> GatewayError {
    GatewayError::InvalidRequest(why.into())
}

/// `%XX` and `+` decoded, for query values.
fn decode_component(v: &str) -> Result<String, GatewayError> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(hex.ok_or_else(|| bad("query: a bad %-escape"))?);
                i += 2;
            }
            b'%' => return Err(bad("query: a bad %-escape")),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad("query: not UTF-8"))
}

/// A time in a query: unix milliseconds, or RFC 3339 UTC (`2026-12-04`, `2026-12-04T15:00:00Z`,
/// with optional fraction).
pub fn parse_time(v: &str) -> Option<u64> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok();
    }
    let (date, time) = v.split_once('T').unwrap_or((v, "00:00:00Z"));
    let mut d = date.split('-');
    let (year, month, day) =
        (d.next()?.parse::<i64>().ok()?, d.next()?.parse::<u32>().ok()?, d.next()?.parse::<u32>().ok()?);
    if d.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) || !(1970..=9999).contains(&year) {
        return None;
    }
    let time = time.strip_suffix('Z').or_else(|| time.strip_suffix("+00:00"))?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (h, m, s) = (t.next()?.parse::<u64>().ok()?, t.next()?.parse::<u64>().ok()?, t.next()?.parse::<u64>().ok()?);
    if t.next().is_some() || h > 23 || m > 59 || s > 60 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms = frac.get(..3).map_or_else(|| format!("{frac:0<3}"), str::to_string).parse::<u64>().ok()?;
    let days = u64::try_from(days_from_civil(Date { year, month, day })).ok()?;
    Some(days * MS_PER_DAY + ((h * 60 + m) * 60 + s) * 1000 + ms)
}

/// RFC 3339 UTC with milliseconds: `2026-12-04T15:00:00.123Z`.
pub fn format_millis(t: UnixMillis) -> String {
    let d = civil_from_days((t.0 / MS_PER_DAY) as i64);
    let in_day = t.0 % MS_PER_DAY;
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        d.year,
        d.month,
        d.day,
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    );
    s
}

impl LogQuery {
    /// The query of `GET .../requests?since&until&model&status&limit&cursor`.
    pub fn parse(query: Option<&str>) -> Result<LogQuery, GatewayError> {
        let mut q = LogQuery { limit: DEFAULT_PAGE, ..LogQuery::default() };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode_component(v)?;
            match k {
                "since" => q.since = Some(parse_time(&v).ok_or_else(|| bad("since: unix milliseconds or RFC 3339"))?),
                "until" => q.until = Some(parse_time(&v).ok_or_else(|| bad("until: unix milliseconds or RFC 3339"))?),
                "model" if !v.is_empty() => {
                    if v.len() > 256 {
                        return Err(bad("model: at most 256 bytes"));
                    }
                    q.model = Some(v);
                }
                "model" => {}
                "status" if !v.is_empty() => q.status = Some(parse_status(&v)?),
                "status" => {}
                "limit" => {
                    q.limit = v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| bad(format!("limit: a whole number from 1 to {MAX_PAGE}")))?;
                }
                "cursor" if !v.is_empty() => {
                    q.cursor = Some(Cursor::decode(&v).ok_or_else(|| bad("cursor: not one this API gave"))?)
                }
                "cursor" => {}
                other => {
                    return Err(bad(format!(
                        "unknown query parameter {:?}",
                        other.chars().take(40).collect::<String>()
                    )))
                }
            }
        }
        Ok(q)
    }
}

fn parse_status(v: &str) -> Result<StatusFilter, GatewayError> {
    let b = v.as_bytes();
    if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && (v.ends_with("xx") || v.ends_with("XX")) {
        return Ok(StatusFilter::Class(u16::from(b[0] - b'0')));
    }
    v.parse::<u16>()
        .ok()
        .filter(|s| (100..=599).contains(s))
        .map(StatusFilter::Exact)
        .ok_or_else(|| bad("status: a status like 200, or a class like 4xx"))
}

/// A page of records from one or more account objects (an org's shards), each record with
/// where it sits in (at, shard, seq) order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// `(at, seq, record JSON)`, newest first.
    pub rows: Vec<(u64, u64, String)>,
}

/// Merges shards' pages (each newest first) into one page of `limit`, with the cursor of the
/// next page if there may be more.
pub fn merge_pages(pages: Vec<(u32, Page)>, limit: u32) -> (Vec<String>, Option<Cursor>) {
    let mut all: Vec<(u64, u32, u64, String)> = Vec::new();
    let mut more = false;
    for (shard, page) in pages {
        more |= page.rows.len() as u64 >= u64::from(limit);
        all.extend(page.rows.into_iter().map(|(at, seq, body)| (at, shard, seq, body)));
    }
    // newest first: (at, shard, seq) descending, a total order (a shard's seqs are unique);
    // up to a page from each of 64 shards, too many for an insertion sort
    crate::core::sort::heap_sort_by(&mut all, |a, b| (b.0, b.1, b.2).cmp(&(a.0, a.1, a.2)));
    let take = usize::try_from(limit).unwrap_or(usize::MAX);
    more |= all.len() > take;
    all.truncate(take);
    let next = all.last().filter(|_| more).map(|(at, shard, seq, _)| Cursor { at: *at, shard: *shard, seq: *seq });
    (all.into_iter().map(|(_, _, _, body)| body).collect(), next)
}

// Their JSON, as the account object's messages and rows carry them (`core::wire`).
crate::core::wire::json_struct!(Record {
    request_id,
    at,
    key_id,
    org,
    route,
    api,
    model,
    provider,
    status,
    error,
    prompt_tokens,
    completion_tokens,
    cost_micro_usd,
    reserved_micro_usd,
    latency_ms,
    ttfb_ms,
    retries,
    cooldown_wait_ms,
    stream,
    upstream_request_id: default,
    unmetered_micro_usd: default,
});
crate::core::wire::json_struct!(Cursor { at, shard, seq });
crate::core::wire::json_struct!(LogQuery { key_id, since, until, model, status, limit, cursor });
crate::core::wire::json_struct!(Page { rows });

impl crate::core::wire::FromJson for StatusFilter {
    fn read(v: &serde_json::Value, e: &crate::core::wire::Errors) -> Self {
        let (tag, v) = crate::core::wire::variant(v, e);
        match tag {
            "Exact" => StatusFilter::Exact(u16::read(v, e)),
            "Class" => StatusFilter::Class(u16::read(v, e)),
            _ => {
                e.unknown(tag);
                StatusFilter::Exact(0)
            }
        }
    }
    fn fallback() -> Self {
        StatusFilter::Exact(0)
    }
}

impl crate::core::wire::ToJson for StatusFilter {
    fn to_json(&self, out: &mut String) {
        match self {
            StatusFilter::Exact(s) => crate::core::wire::tagged(out, "Exact", s),
            StatusFilter::Class(c) => crate::core::wire::tagged(out, "Class", c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pricing::TokenUsage;

    #[test]
    fn the_log_line_is_the_record_as_stored() {
        // the operator's log line (`edge::hold::announce`) is the record as `core::wire` writes
        // it: valid JSON, read back whole
        let r = Record::lapse(7, "k\"1", 120, UnixMillis(1_795_352_400_123));
        let line = crate::core::wire::text(&r);
        let tree: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(tree["key_id"], "k\"1");
        assert!(line.starts_with(r#"{"request_id":"#) && line.contains(r#""key_id":"k\"1""#), "{line}");
        assert_eq!(crate::core::wire::parse::<Record>(&line).unwrap(), r);
    }

    #[test]
    fn times_read_both_ways() {
        assert_eq!(parse_time("1795352400000"), Some(1_795_352_400_000));
        assert_eq!(parse_time("2026-11-22T13:00:00Z"), Some(1_795_352_400_000));
        assert_eq!(parse_time("2026-11-22T13:00:00.5Z"), Some(1_795_352_400_500));
        assert_eq!(parse_time("2026-11-22"), Some(1_795_305_600_000));
        for bad in ["", "yesterday", "2026-13-01", "2026-11-22T25:00:00Z", "2026-11-22T13:00:00+02:00"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        assert_eq!(format_millis(UnixMillis(1_795_352_400_123)), "2026-11-22T13:00:00.123Z");
        assert_eq!(parse_time(&format_millis(UnixMillis(1_795_352_400_123))), Some(1_795_352_400_123));
    }

    #[test]
    fn queries_are_read_strictly() {
        let q = LogQuery::parse(Some("since=2026-11-22&model=acme%2Fchat-1&status=4xx&limit=5&cursor=9.1.3")).unwrap();
        assert_eq!(q.since, Some(1_795_305_600_000));
        assert_eq!(q.model.as_deref(), Some("acme/chat-1"));
        assert_eq!(q.status, Some(StatusFilter::Class(4)));
        assert_eq!(q.limit, 5);
        assert_eq!(q.cursor, Some(Cursor { at: 9, shard: 1, seq: 3 }));
        assert_eq!(LogQuery::parse(None).unwrap().limit, DEFAULT_PAGE);
        for bad in
            ["limit=0", "limit=1001", "status=99", "status=6xx", "cursor=x", "since=soon", "colour=red", "model=%zz"]
        {
            assert!(LogQuery::parse(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(StatusFilter::Class(4).range(), (400, 500));
        assert_eq!(StatusFilter::Exact(429).range(), (429, 430));
    }

    #[test]
    fn shards_merge_newest_first_and_the_cursor_resumes_exactly() {
        let page =
            |rows: &[(u64, u64)]| Page { rows: rows.iter().map(|(a, s)| (*a, *s, format!("{a}/{s}"))).collect() };
        let (rows, next) = merge_pages(vec![(0, page(&[(30, 3), (10, 1)])), (1, page(&[(30, 9), (20, 2)]))], 3);
        assert_eq!(rows, vec!["30/9", "30/3", "20/2"]);
        let c = next.unwrap();
        assert_eq!(c, Cursor { at: 20, shard: 1, seq: 2 });
        // shard 0 has nothing at 20, so all of it before 20; shard 1 below seq 2 at 20
        assert_eq!(c.bound_for(0), (20, u64::MAX));
        assert_eq!(c.bound_for(1), (20, 2));
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        let (rows, next) = merge_pages(vec![(0, page(&[(1, 1)]))], 3);
        assert_eq!((rows.len(), next), (1, None));
    }

    #[test]
    fn csv_quotes_what_it_must_and_defuses_formulas() {
        let line = CallLine {
            model: "m,\"x\"".into(),
            provider: "=cmd".into(),
            tokens: TokenUsage { prompt: 1, completion: 2 },
            log: None,
        };
        let log = CallLog { request_id: "r".into(), key_id: "k".into(), status: 200, ..CallLog::default() };
        let mut out = String::new();
        Record::of(&line, &log, 7, 0).csv_row(&mut out);
        assert!(out.starts_with("r,1970-01-01T00:00:00.000Z,k,,,,\"m,\"\"x\"\"\",'=cmd,200,,1,2,7,"), "{out}");
        assert!(out.ends_with("\r\n"));
        assert_eq!(
            CSV_HEADER.split(',').count(),
            out.trim_end().split(',').count() - 1,
            "one comma inside the quoted model"
        );
    }
}
