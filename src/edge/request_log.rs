//! Reading the request log: a key's (`GET /admin/keys/{id}/requests`, and a caller's own at
//! `GET /v1/usage/requests`) from the account object that holds it, an org's from its pool
//! object or from every shard, merged newest first. JSON pages with a cursor, or CSV for an
//! export (`Accept: text/csv`: every page, up to `MAX_EXPORT` records).

use crate::core::account::{AccountPolicy, KeyPolicy};
use crate::core::caller::{org_account, org_policy, shard_account, Caller};
use crate::core::error::GatewayError;
use crate::core::keys::OrgRecord;
use crate::core::request_log::{merge_pages, Cursor, LogQuery, Record, CSV_HEADER, MAX_PAGE};
use crate::core::settings::Settings;
use crate::edge::incoming::Incoming;
use crate::edge::response::Response;
use crate::edge::response::{self, Meta};
use crate::edge::{account_do, platform};
use worker::{Env, Headers};

/// The most records one CSV export holds.
const MAX_EXPORT: usize = 100_000;

/// Where a log lives: one account object (a key's, or an unsharded org's pool), or an org's
/// shards.
pub enum Source {
    One { account: String, throttle: Option<(KeyPolicy, AccountPolicy)> },
    Shards(Vec<String>),
}

impl Source {
    /// A key's log: in the account its calls are settled in. With `throttle`, each read takes
    /// one request from the key's throttle, as a usage read does.
    pub fn of_key(caller: &Caller, throttle: bool) -> Source {
        let throttle = throttle.then(|| (caller.key_policy.clone(), caller.account_policy));
        Source::One { account: caller.account.clone(), throttle }
    }

    pub fn of_org(org: &OrgRecord, s: &Settings) -> Result<Source, GatewayError> {
        org_policy(org, s)?;
        if org.shards <= 1 {
            return Ok(Source::One { account: org_account(&org.id), throttle: None });
        }
        Ok(Source::Shards((0..org.shards).map(|j| shard_account(&org.id, j, org.shards)).collect()))
    }
}

/// One page: the records' JSON texts, newest first, and the next page's cursor.
async fn page(env: &Env, source: &Source, q: &LogQuery) -> Result<(Vec<String>, Option<Cursor>), GatewayError> {
    match source {
        Source::One { account, throttle } => {
            let page = account_do::requests(env, account, q.clone(), 0, throttle.clone()).await?;
            Ok(merge_pages(vec![(0, page)], q.limit))
        }
        Source::Shards(names) => {
            // each shard places the cursor by its own index
            let asks = names
                .iter()
                .enumerate()
                .map(|(j, name)| account_do::requests(env, name, q.clone(), j as u32, None))
                .collect();
            let pages = platform::join_all(asks).await.into_iter().collect::<Result<Vec<_>, _>>()?;
            Ok(merge_pages(pages.into_iter().enumerate().map(|(j, p)| (j as u32, p)).collect(), q.limit))
        }
    }
}

/// Whether the reader asked for CSV.
pub fn wants_csv(req: &Incoming) -> bool {
    req.headers().get("accept").ok().flatten().is_some_and(|a| a.to_ascii_lowercase().contains("text/csv"))
}

/// The raw query string of a request.
pub fn query_of(req: &Incoming) -> Option<String> {
    req.query().map(str::to_string)
}

/// Answers a read of the log: a JSON page, or the CSV export.
pub async fn respond(
    env: &Env,
    source: Source,
    mut q: LogQuery,
    csv: bool,
    meta: &Meta,
) -> Result<Response, GatewayError> {
    let built = if csv {
        let mut out = String::with_capacity(4096);
        out.push_str(CSV_HEADER);
        out.push_str("\r\n");
        let mut rows = 0usize;
        // an export is every page (a throttled reader pays one request for it)
        q.limit = MAX_PAGE;
        let mut source = source;
        loop {
            let (bodies, next) = page(env, &source, &q).await?;
            for body in &bodies {
                if let Ok(r) = crate::core::wire::parse::<Record>(body) {
                    r.csv_row(&mut out);
                    rows += 1;
                }
            }
            if let Source::One { throttle, .. } = &mut source {
                *throttle = None;
            }
            match next {
                Some(c) if rows < MAX_EXPORT => q.cursor = Some(c),
                _ => break,
            }
        }
        let h = Headers::new();
        let _ = h.set("content-type", "text/csv; charset=utf-8");
        let _ = h.set("content-disposition", "attachment; filename=\"requests.csv\"");
        meta.apply(&h);
        response::bytes(200, out.into_bytes(), h)
    } else {
        let (bodies, next) = page(env, &source, &q).await?;
        // the records are stored as the API shows them: joined, not parsed again
        let mut out = String::with_capacity(64 + bodies.iter().map(|b| b.len() + 1).sum::<usize>());
        out.push_str("{\"object\":\"list\",\"data\":[");
        out.push_str(&bodies.join(","));
        out.push_str("],\"next_cursor\":");
        match next {
            Some(c) => {
                out.push('"');
                out.push_str(&c.encode());
                out.push('"');
            }
            None => out.push_str("null"),
        }
        out.push('}');
        let h = Headers::new();
        let _ = h.set("content-type", "application/json");
        meta.apply(&h);
        response::bytes(200, out.into_bytes(), h)
    };
    built.map_err(|_| GatewayError::Internal("the response could not be built"))
}
