//! A call as its settle describes it to the ledger: what the spend lines count (model,
//! provider, tokens) and what the request log records. Both `spend` and `request_log` read
//! it; neither depends on the other.

use crate::core::pricing::TokenUsage;
use crate::core::time::UnixMillis;

/// One call as the settle that charges it describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallLine {
    /// The model without its `:provider` or policy suffix.
    pub model: String,
    /// The provider that served the call (`x-inference-provider`), the one it was pinned to,
    /// or `auto` when upstream did not say.
    pub provider: String,
    pub tokens: TokenUsage,
    /// The rest of the call's record, for the request log.
    pub log: Option<CallLog>,
}

/// What the edge knows of a call besides its model, provider and tokens (`CallLine`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallLog {
    pub request_id: String,
    pub key_id: String,
    pub org: Option<String>,
    pub route: String,
    pub api: String,
    /// The status the caller got (for a released call, the one it failed with).
    pub status: u16,
    /// The gateway's error code, for a call that failed.
    pub error: Option<String>,
    pub reserved: u64,
    /// When the call came in.
    pub at: UnixMillis,
    pub latency_ms: u64,
    pub ttfb_ms: Option<u64>,
    pub retries: u32,
    pub cooldown_wait_ms: u64,
    pub stream: bool,
    /// Upstream's own `x-request-id`, which the caller's response carries when upstream sent
    /// one (`request_id` is the gateway's, unique).
    pub upstream_request_id: Option<String>,
}

crate::core::wire::json_struct!(CallLine { model, provider, tokens: default, log: skip_none });
crate::core::wire::json_struct!(CallLog {
    request_id,
    key_id,
    org,
    route,
    api,
    status,
    error,
    reserved,
    at,
    latency_ms,
    ttfb_ms,
    retries,
    cooldown_wait_ms,
    stream,
    upstream_request_id: default,
});
