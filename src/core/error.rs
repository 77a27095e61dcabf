//! `GatewayError`: every way a call can fail, with its status, stable code and retry time.
//!
//! It is turned into a response in exactly one place (`edge::response`); doing so has no side
//! effects. Messages are written for the caller and never carry secrets or internal detail.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayError {
    InvalidApiKey,
    OriginNotAllowed,
    NotFound,
    MethodNotAllowed,
    /// An edit's `If-Match` names a version the record has moved past (or, without one, the
    /// record kept changing under the edit); `current_version` is the newest one known.
    PreconditionFailed {
        current_version: u64,
    },
    RequestTooLarge {
        limit_bytes: u64,
    },
    InvalidRequest(String),
    /// A route with no token usage that nothing prices (`ROUTE_PRICES`), for a key billed to
    /// credits: a price is never guessed.
    RouteNotPriced {
        route: String,
    },
    /// The body asks for something whose cost the body does not bound (a tool the upstream
    /// runs itself, in a loop of its own); `field` names where, `reason` says why.
    UnboundedRequest {
        field: String,
        reason: String,
    },
    /// The gateway's own throttle said no.
    RateLimited {
        retry_after_ms: u64,
    },
    /// Credits (or the spending cap) are used up until the period ends; for a token-priced
    /// call, what is left may still pay for `affordable` output tokens, fewer than useful.
    InsufficientQuota {
        retry_after_ms: u64,
        affordable: Option<u64>,
    },
    /// This isolate holds as many request bodies as its memory allows; retry shortly.
    Busy {
        retry_after_ms: u64,
    },
    /// Upstream said 429 and the wait was longer than the gateway waits for itself.
    UpstreamRateLimited {
        retry_after_ms: u64,
    },
    /// Upstream said 402: the gateway's own upstream account is out of credits. Not the
    /// caller's fault and not retried; nothing is charged.
    UpstreamPaymentRequired,
    UpstreamError(String),
    UpstreamTimeout,
    UpstreamNotConfigured,
    AdminDisabled,
    /// A setting has a value the gateway cannot use; names the setting.
    Misconfigured {
        setting: &'static str,
        reason: String,
    },
    /// The ledger could not be reached: metered traffic is refused rather than uncounted.
    LedgerUnavailable,
    /// KV, where key and org records live, failed a read, write or list.
    KeyStoreUnavailable,
    /// The gateway failed at something that is its own job (writing its own record, reading
    /// back what it stored); says what, never how.
    Internal(&'static str),
}

/// Waits longer than this are not worth a client sleeping on (`x-should-retry: false`).
pub const LONGEST_SENSIBLE_SLEEP_MS: u64 = 60_000;

impl GatewayError {
    pub fn status(&self) -> u16 {
        use GatewayError::*;
        match self {
            InvalidApiKey => 401,
            UpstreamPaymentRequired => 402,
            OriginNotAllowed | RouteNotPriced { .. } => 403,
            NotFound => 404,
            MethodNotAllowed => 405,
            PreconditionFailed { .. } => 412,
            RequestTooLarge { .. } => 413,
            InvalidRequest(_) | UnboundedRequest { .. } => 400,
            RateLimited { .. } | InsufficientQuota { .. } | UpstreamRateLimited { .. } => 429,
            UpstreamError(_) => 502,
            UpstreamNotConfigured | AdminDisabled | LedgerUnavailable | KeyStoreUnavailable | Busy { .. } => 503,
            UpstreamTimeout => 504,
            Misconfigured { .. } | Internal(_) => 500,
        }
    }

    /// The stable machine-readable code (`error.code`).
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidApiKey => "invalid_api_key",
            OriginNotAllowed => "origin_not_allowed",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            PreconditionFailed { .. } => "precondition_failed",
            RequestTooLarge { .. } => "request_too_large",
            InvalidRequest(_) => "invalid_request",
            RouteNotPriced { .. } => "route_not_priced",
            UnboundedRequest { .. } => "unbounded_request",
            RateLimited { .. } => "rate_limit_exceeded",
            InsufficientQuota { .. } => "insufficient_quota",
            UpstreamRateLimited { .. } => "upstream_rate_limited",
            UpstreamPaymentRequired => "upstream_payment_required",
            UpstreamError(_) => "upstream_error",
            UpstreamTimeout => "upstream_timeout",
            UpstreamNotConfigured => "upstream_not_configured",
            AdminDisabled => "admin_disabled",
            Misconfigured { .. } => "configuration_error",
            LedgerUnavailable => "ledger_unavailable",
            KeyStoreUnavailable => "key_store_unavailable",
            Internal(_) => "internal_error",
            Busy { .. } => "gateway_busy",
        }
    }

    /// The OpenAI-style `error.type`.
    pub fn kind(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidApiKey => "authentication_error",
            OriginNotAllowed | RouteNotPriced { .. } => "permission_error",
            NotFound => "not_found_error",
            MethodNotAllowed
            | PreconditionFailed { .. }
            | RequestTooLarge { .. }
            | InvalidRequest(_)
            | UnboundedRequest { .. } => "invalid_request_error",
            RateLimited { .. } | UpstreamRateLimited { .. } => "rate_limit_error",
            InsufficientQuota { .. } => "insufficient_quota",
            UpstreamError(_) | UpstreamTimeout | UpstreamPaymentRequired => "upstream_error",
            UpstreamNotConfigured
            | AdminDisabled
            | Misconfigured { .. }
            | LedgerUnavailable
            | KeyStoreUnavailable
            | Internal(_)
            | Busy { .. } => "server_error",
        }
    }

    /// How long the caller should wait before trying again, for 429s.
    pub fn retry_after_ms(&self) -> Option<u64> {
        use GatewayError::*;
        match self {
            RateLimited { retry_after_ms }
            | InsufficientQuota { retry_after_ms, .. }
            | UpstreamRateLimited { retry_after_ms }
            | Busy { retry_after_ms } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// Whether a client should retry on its own; `false` when the wait is too long to sleep.
    pub fn should_retry(&self) -> bool {
        match self {
            GatewayError::InsufficientQuota { .. } => false,
            e => e.retry_after_ms().is_some_and(|ms| ms <= LONGEST_SENSIBLE_SLEEP_MS),
        }
    }

    /// Whether this is the gateway's own fault (a setting, a store down, a bug): worth a log
    /// line, unlike a caller's mistake or a throttle.
    pub fn is_fault(&self) -> bool {
        use GatewayError::*;
        matches!(
            self,
            Misconfigured { .. } | LedgerUnavailable | KeyStoreUnavailable | Internal(_) | UpstreamPaymentRequired
        )
    }

    /// The body: `{"error": {"code", "message", "type"}}` (the names in serde_json's order).
    pub fn to_json(&self) -> String {
        let (message, kind, code) = (self.to_string(), self.kind(), self.code());
        let mut out = String::new();
        crate::core::wire::tagged_object(&mut out, "error", &[("code", &code), ("message", &message), ("type", &kind)]);
        out
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GatewayError::*;
        match self {
            InvalidApiKey => f.write_str("Invalid or revoked gateway key. Send it as 'Authorization: Bearer hfg_...'."),
            OriginNotAllowed => f.write_str("This key may not be used from this origin."),
            NotFound => f.write_str("No such route."),
            MethodNotAllowed => f.write_str("Method not allowed on this route."),
            PreconditionFailed { current_version } => write!(
                f,
                "The record has changed (it is now at version {current_version}): read it again, then retry with If-Match: \"{current_version}\"."
            ),
            RequestTooLarge { limit_bytes } => {
                write!(f, "Request body is larger than {limit_bytes} bytes.")
            }
            InvalidRequest(why) => write!(f, "Invalid request: {why}"),
            RouteNotPriced { route } => write!(
                f,
                "Route {route} reports no token usage and has no price: the gateway's operator must price it in ROUTE_PRICES (per request or per second) before keys billed to credits can call it."
            ),
            UnboundedRequest { field, reason } => write!(
                f,
                "The cost of '{field}' cannot be bounded: {reason}. The key's plan may allow such calls by setting server_tool_ceiling_micro_usd, which is then reserved for each call."
            ),
            RateLimited { retry_after_ms } => {
                write!(f, "Rate limit exceeded for this key. Retry in {} s.", retry_after_ms.div_ceil(1000))
            }
            InsufficientQuota { retry_after_ms, affordable: Some(n) } => write!(
                f,
                "The remaining credit can only afford {n} output tokens, too few for this call. Credits reset in {} s.",
                retry_after_ms.div_ceil(1000)
            ),
            InsufficientQuota { retry_after_ms, affordable: None } => write!(
                f,
                "Monthly credits or spending cap exhausted. They reset in {} s.",
                retry_after_ms.div_ceil(1000)
            ),
            Busy { .. } => f.write_str("The gateway is holding as many request bodies as it can; retry shortly."),
            UpstreamRateLimited { retry_after_ms } => {
                write!(f, "The provider is rate limiting this model. Retry in {} s.", retry_after_ms.div_ceil(1000))
            }
            UpstreamPaymentRequired => f.write_str(
                "The gateway's upstream account is out of credits (upstream answered 402 Payment Required). Nothing was charged to this key; the gateway's operator must add credits upstream.",
            ),
            UpstreamError(why) => write!(f, "Upstream failed: {why}"),
            UpstreamTimeout => f.write_str("Upstream did not answer within the deadline."),
            UpstreamNotConfigured => f.write_str("The gateway has no upstream token configured."),
            AdminDisabled => f.write_str("The admin API is disabled: ADMIN_TOKEN is not set."),
            Misconfigured { setting, reason } => {
                write!(f, "Setting {setting} is invalid: {reason}")
            }
            LedgerUnavailable => {
                f.write_str("The credit ledger is unavailable; metered calls are refused until it is back.")
            }
            KeyStoreUnavailable => f.write_str("The key store is unavailable; retry shortly."),
            Internal(what) => write!(f, "Internal error: {what}."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_openai_shaped_json() {
        let e = GatewayError::InsufficientQuota { retry_after_ms: 1_500, affordable: None };
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "insufficient_quota");
        assert_eq!(v["error"]["type"], "insufficient_quota");
        assert!(v["error"]["message"].as_str().unwrap().contains("2 s"));
        assert_eq!(e.status(), 429);
        assert!(!e.should_retry());
        // the text json! wrote before, byte for byte, quotes in the message escaped
        let e = GatewayError::PreconditionFailed { current_version: 7 };
        let before = serde_json::json!({"error": {"message": e.to_string(), "type": e.kind(), "code": e.code()}});
        assert_eq!(e.to_json(), before.to_string());
    }

    #[test]
    fn short_throttles_invite_a_retry_and_long_ones_do_not() {
        assert!(GatewayError::RateLimited { retry_after_ms: 900 }.should_retry());
        assert!(!GatewayError::UpstreamRateLimited { retry_after_ms: 3_600_000 }.should_retry());
        assert!(!GatewayError::NotFound.should_retry());
    }

    #[test]
    fn a_stale_if_match_is_a_412_naming_the_current_version() {
        let e = GatewayError::PreconditionFailed { current_version: 7 };
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!((e.status(), v["error"]["code"].as_str()), (412, Some("precondition_failed")));
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("If-Match: \"7\""));
    }

    #[test]
    fn an_unbounded_request_is_a_400_naming_the_field_and_the_plan_setting() {
        let e =
            GatewayError::UnboundedRequest { field: "tools[1]".into(), reason: "type \"mcp\" runs upstream".into() };
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!((e.status(), v["error"]["code"].as_str()), (400, Some("unbounded_request")));
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("'tools[1]'") && message.contains("\"mcp\""), "{message}");
        assert!(message.contains("server_tool_ceiling_micro_usd"), "{message}");
        assert!(!e.is_fault() && !e.should_retry());
    }

    #[test]
    fn a_store_down_or_an_own_failure_says_so_and_is_not_the_callers_fault() {
        let kv = GatewayError::KeyStoreUnavailable;
        assert_eq!((kv.status(), kv.code(), kv.kind()), (503, "key_store_unavailable", "server_error"));
        assert_ne!(kv.code(), GatewayError::LedgerUnavailable.code());
        let own = GatewayError::Internal("the key record could not be written");
        assert_eq!((own.status(), own.code(), own.kind()), (500, "internal_error", "server_error"));
        assert!(own.to_string().contains("could not be written"));
        assert!(kv.is_fault() && own.is_fault() && GatewayError::LedgerUnavailable.is_fault());
        assert!(!GatewayError::InvalidRequest("x".into()).is_fault());
        assert!(!GatewayError::RateLimited { retry_after_ms: 1 }.is_fault());
    }
}
