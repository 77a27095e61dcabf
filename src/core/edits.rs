//! What an account's Durable Object accepts from the admin API, so that no admin caller can
//! break the ledger: edits are compare-and-set on the record's version, a revocation always
//! lands and is final, and a state stored by earlier builds as one document is read from its
//! versioned envelope, refused (never reset to a full balance) when it does not decode.
//!
//! KV has no compare-and-set. The account object is one serialised object that already holds
//! the versioned key and account policies, so it is where an edit wins or loses; KV follows
//! it. Nothing here does I/O: the Durable Object calls these on its `AccountState`.

use crate::core::account::{AccountPolicy, AccountState, KeyPolicy};
use crate::core::keys::KeyRecord;
use crate::core::retry::RetryPolicy;
use crate::core::wire::{self, Errors, Fields, FromJson, ToJson};
use serde_json::Value;

/// The last shape of the single stored document (`decode`). 0 is the bare `AccountState`
/// written before the envelope existed.
pub const SCHEMA: u32 = 1;

/// How an edit that lost a race without `If-Match` waits before it re-reads and re-applies
/// itself: a few short, jittered tries (only `max_retries` and the backoff are used).
pub const EDIT_RETRY: RetryPolicy =
    RetryPolicy { max_retries: 12, max_wait_ms: 500, deadline_ms: 10_000, backoff_base_ms: 10, backoff_cap_ms: 250 };

/// The outcome of a compare-and-set edit of a key's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyEdit {
    /// Stored: the policy as it now stands (its version is the edit's base + 1).
    Accepted { policy: KeyPolicy },
    /// The stored version is not the one the edit was based on.
    Conflict { current: u64 },
    /// The key is revoked: no edit applies any more.
    Revoked { policy: KeyPolicy },
}

/// The outcome of a compare-and-set edit of an account's (an org's) policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountEdit {
    Accepted { policy: AccountPolicy },
    Conflict { current: u64 },
}

fn held(st: &AccountState, key_id: &str) -> Option<KeyPolicy> {
    st.keys.get(key_id).and_then(|k| k.policy.clone())
}

/// Applies `offered` if the stored key policy is still at version `base` (or none is stored),
/// as version `base + 1`. The account policy that goes with it (a personal key's own budget,
/// or its org's) is merged only when the edit is accepted. Says whether state changed.
pub fn edit_key(
    st: &mut AccountState,
    base: u64,
    offered: KeyPolicy,
    account: Option<AccountPolicy>,
) -> (KeyEdit, bool) {
    match held(st, &offered.key_id) {
        Some(stored) if stored.revoked => return (KeyEdit::Revoked { policy: stored }, false),
        Some(stored) if stored.version != base => return (KeyEdit::Conflict { current: stored.version }, false),
        _ => {}
    }
    let policy = KeyPolicy { version: base.saturating_add(1), revoked: false, ..offered };
    st.keys.entry(policy.key_id.clone()).or_default().policy = Some(policy.clone());
    if let Some(a) = account {
        st.merge_account_policy(a);
    }
    (KeyEdit::Accepted { policy }, true)
}

/// Revokes a key: always succeeds, and is final. The revoked policy is the newer of the stored
/// and offered ones, one version past both, so no edit based on an earlier version can land
/// after it. Revoking a revoked key changes nothing. Says whether state changed.
pub fn revoke_key(st: &mut AccountState, offered: KeyPolicy) -> (KeyPolicy, bool) {
    let stored = held(st, &offered.key_id);
    if let Some(s) = stored.as_ref().filter(|s| s.revoked) {
        return (s.clone(), false);
    }
    let newest = match stored {
        Some(s) if s.version >= offered.version => s,
        _ => offered,
    };
    let policy = KeyPolicy { version: newest.version.saturating_add(1), revoked: true, ..newest };
    st.keys.entry(policy.key_id.clone()).or_default().policy = Some(policy.clone());
    (policy, true)
}

/// Offers a key policy the way reads and pushes do (newest version wins), except that nothing
/// un-revokes a revoked key. Says whether state changed.
pub fn offer_key(st: &mut AccountState, offered: KeyPolicy) -> bool {
    let stored = held(st, &offered.key_id);
    if stored.as_ref().is_some_and(|s| s.revoked && !offered.revoked) {
        return false;
    }
    let (now_held, _) = st.merge_key_policy(offered);
    stored.as_ref() != Some(&now_held)
}

/// Applies `offered` if the stored account policy is still at version `base` (or none is
/// stored), as version `base + 1`. Says whether state changed.
pub fn edit_account(st: &mut AccountState, base: u64, offered: AccountPolicy) -> (AccountEdit, bool) {
    match st.policy {
        Some(stored) if stored.version != base => (AccountEdit::Conflict { current: stored.version }, false),
        _ => {
            let policy = AccountPolicy { version: base.saturating_add(1), ..offered };
            st.policy = Some(policy);
            (AccountEdit::Accepted { policy }, true)
        }
    }
}

/// KV's copy of a key as the ledger has it: revoked if either says so, at the newer version.
/// KV writes can land out of order (an edit that won just before a revocation may write KV
/// after it), so the copy may lag; the second value says whether KV must be rewritten, which
/// is when the ledger revoked the key and KV's copy does not say so yet. (A newer unrevoked
/// version is an edit whose KV write is still on its way: it brings its own fields.)
pub fn ledger_view(record: &KeyRecord, held: Option<&KeyPolicy>) -> (KeyRecord, bool) {
    let Some(held) = held else {
        return (record.clone(), false);
    };
    let mut shown = record.clone();
    shown.revoked |= held.revoked;
    shown.version = shown.version.max(held.version);
    let repair = held.revoked && (!record.revoked || record.version < held.version);
    (shown, repair)
}

/// A record's version as a strong entity tag: `"3"`.
///
/// ```
/// assert_eq!(hf_gate::core::edits::etag(3), "\"3\"");
/// ```
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// An `If-Match` header (RFC 9110 13.1.1): `*`, or a list of entity tags compared strongly
/// (a weak tag never matches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    Versions(Vec<u64>),
}

impl IfMatch {
    /// Parses the header; tags that are not ours (weak, malformed, not a version) are kept
    /// out, so they match nothing.
    ///
    /// ```
    /// use hf_gate::core::edits::IfMatch;
    /// assert_eq!(IfMatch::parse("\"3\", W/\"4\", \"x\""), IfMatch::Versions(vec![3]));
    /// assert_eq!(IfMatch::parse(" * "), IfMatch::Any);
    /// ```
    pub fn parse(header: &str) -> IfMatch {
        if header.trim() == "*" {
            return IfMatch::Any;
        }
        let versions =
            header.split(',').filter_map(|tag| tag.trim().strip_prefix('"')?.strip_suffix('"')?.parse().ok()).collect();
        IfMatch::Versions(versions)
    }

    pub fn matches(&self, version: u64) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::Versions(v) => v.contains(&version),
        }
    }

    /// Whether the header names a version newer than `version`: the copy read is behind the
    /// one the client saw (KV lagging the ledger), so reading again may yet match.
    pub fn is_ahead_of(&self, version: u64) -> bool {
        matches!(self, IfMatch::Versions(v) if v.iter().any(|&x| x > version))
    }
}

/// Stored state that cannot be used. The ledger refuses to run on it rather than start over:
/// starting over would hand every key a full balance again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecodable {
    pub schema: Option<u32>,
    pub reason: String,
}

/// Reads the one document earlier builds stored an account's state as (rows replaced it,
/// `core::store`; the account object carries such a document over once): the envelope of
/// schema 1, or the bare state of schema 0. Anything else, including an envelope from a newer
/// schema, is `Undecodable`.
pub fn decode(stored: &str) -> Result<(u32, AccountState), Undecodable> {
    let fail = |schema, e: &dyn std::fmt::Display| Undecodable { schema, reason: e.to_string() };
    let doc = wire::tree(stored).map_err(|e| fail(None, &e))?;
    let envelope = doc.as_object().ok_or_else(|| fail(None, &"expected an object"))?;
    let schema: Option<u32> = match envelope.get("schema") {
        Some(v) => wire::from_tree(v).map_err(|e| fail(None, &e))?,
        None => None,
    };
    let (schema, state) = match (schema, envelope.get("state").filter(|v| !v.is_null())) {
        // no envelope: the bare state written before it existed
        (None, _) => (0, &doc),
        (Some(schema), _) if schema > SCHEMA || schema == 0 => {
            return Err(fail(Some(schema), &format!("schema {schema} is not one this build reads (0 to {SCHEMA})")));
        }
        (Some(schema), Some(state)) => (schema, state),
        (Some(schema), None) => return Err(fail(Some(schema), &"the envelope holds no state")),
    };
    wire::from_tree::<AccountState>(state).map(|st| (schema, st)).map_err(|e| fail(Some(schema), &e))
}

// Their JSON, as the account object's replies carry them (`core::wire`).
impl FromJson for KeyEdit {
    fn read(v: &Value, e: &Errors) -> Self {
        let (tag, v) = wire::variant(v, e);
        let f = Fields::of(v, e);
        match tag {
            "accepted" => KeyEdit::Accepted { policy: f.get("policy") },
            "conflict" => KeyEdit::Conflict { current: f.get("current") },
            "revoked" => KeyEdit::Revoked { policy: f.get("policy") },
            _ => {
                e.unknown(tag);
                KeyEdit::fallback()
            }
        }
    }
    fn fallback() -> Self {
        KeyEdit::Conflict { current: 0 }
    }
}

impl ToJson for KeyEdit {
    fn to_json(&self, out: &mut String) {
        match self {
            KeyEdit::Accepted { policy } => wire::tagged_object(out, "accepted", &[("policy", policy)]),
            KeyEdit::Conflict { current } => wire::tagged_object(out, "conflict", &[("current", current)]),
            KeyEdit::Revoked { policy } => wire::tagged_object(out, "revoked", &[("policy", policy)]),
        }
    }
}

impl FromJson for AccountEdit {
    fn read(v: &Value, e: &Errors) -> Self {
        let (tag, v) = wire::variant(v, e);
        let f = Fields::of(v, e);
        match tag {
            "accepted" => AccountEdit::Accepted { policy: f.get("policy") },
            "conflict" => AccountEdit::Conflict { current: f.get("current") },
            _ => {
                e.unknown(tag);
                AccountEdit::fallback()
            }
        }
    }
    fn fallback() -> Self {
        AccountEdit::Conflict { current: 0 }
    }
}

impl ToJson for AccountEdit {
    fn to_json(&self, out: &mut String) {
        match self {
            AccountEdit::Accepted { policy } => wire::tagged_object(out, "accepted", &[("policy", policy)]),
            AccountEdit::Conflict { current } => wire::tagged_object(out, "conflict", &[("current", current)]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state as earlier builds stored it, bare (schema 0): serde's output, kept in
    /// `testdata/` since this build only reads it.
    const BARE: &str = include_str!("testdata/account_v1.json");

    /// The document earlier builds stored: `{"schema": 1, "state": {...}}`.
    fn envelope() -> String {
        format!("{{\"schema\":{SCHEMA},\"state\":{}}}", BARE.trim_end())
    }
    use crate::core::account::{AdmitRequest, Cost};
    use crate::core::keys::RateLimit;
    use crate::core::ledger::{Budget, MicroUsd, OnExhausted};
    use crate::core::time::UnixMillis;

    const NOW: UnixMillis = UnixMillis(1_795_352_400_000);

    fn key(version: u64) -> KeyPolicy {
        KeyPolicy { key_id: "k".into(), version, revoked: false, rate: None, ceiling: None }
    }

    fn account(version: u64, credit: u64) -> AccountPolicy {
        AccountPolicy {
            version,
            budget: Budget { credit: MicroUsd(credit), on_exhausted: OnExhausted::Block, cap: None },
            rate: RateLimit { rpm: 60, burst: 10 },
            provider_billed: false,
        }
    }

    fn state_at(version: u64) -> AccountState {
        let mut st = AccountState::new(NOW);
        st.merge_key_policy(key(version));
        st.merge_account_policy(account(version, 100));
        st
    }

    #[test]
    fn an_edit_based_on_the_stored_version_lands_one_past_it() {
        let mut st = state_at(1);
        let (out, changed) = edit_key(&mut st, 1, key(2), Some(account(2, 500)));
        assert!(changed);
        assert_eq!(out, KeyEdit::Accepted { policy: key(2) });
        assert_eq!(held(&st, "k"), Some(key(2)));
        assert_eq!(st.policy.map(|p| p.budget.credit), Some(MicroUsd(500)));
    }

    #[test]
    fn of_two_edits_based_on_one_version_only_the_first_lands() {
        let mut st = state_at(1);
        assert!(matches!(edit_key(&mut st, 1, key(2), None).0, KeyEdit::Accepted { .. }));
        let (out, changed) = edit_key(&mut st, 1, key(2), Some(account(2, 999)));
        assert_eq!((out, changed), (KeyEdit::Conflict { current: 2 }, false));
        assert_eq!(st.policy.map(|p| p.budget.credit), Some(MicroUsd(100)), "the loser's account policy is not merged");
    }

    #[test]
    fn an_edit_cannot_claim_a_version_of_its_own() {
        let mut st = state_at(4);
        let (out, _) = edit_key(&mut st, 4, key(40), None);
        assert_eq!(out, KeyEdit::Accepted { policy: key(5) });
    }

    #[test]
    fn a_key_the_ledger_never_saw_takes_the_first_edit() {
        let mut st = AccountState::new(NOW);
        assert_eq!(edit_key(&mut st, 3, key(4), None).0, KeyEdit::Accepted { policy: key(4) });
    }

    #[test]
    fn a_revocation_lands_whatever_version_it_was_read_at_and_is_final() {
        let mut st = state_at(1);
        edit_key(&mut st, 1, key(2), None);
        // the DELETE read version 1, a PATCH landed 2 meanwhile: the revocation still wins
        let (revoked, changed) = revoke_key(&mut st, key(1));
        assert!(changed);
        assert_eq!((revoked.version, revoked.revoked), (3, true));
        // every edit after it is refused, whatever version it was based on
        for base in [1, 2, 3, 4] {
            let (out, changed) = edit_key(&mut st, base, key(base + 1), None);
            assert_eq!((out, changed), (KeyEdit::Revoked { policy: revoked.clone() }, false));
        }
        // and revoking again changes nothing
        assert_eq!(revoke_key(&mut st, key(9)), (revoked, false));
    }

    #[test]
    fn a_revocation_keeps_the_newest_limits_it_knows() {
        let mut st = state_at(1);
        let mut newer = key(5);
        newer.rate = Some(RateLimit { rpm: 6, burst: 1 });
        let (revoked, _) = revoke_key(&mut st, newer);
        assert_eq!((revoked.version, revoked.rate), (6, Some(RateLimit { rpm: 6, burst: 1 })));
    }

    #[test]
    fn no_offer_un_revokes_a_key_whatever_its_version() {
        let mut st = state_at(1);
        let (revoked, _) = revoke_key(&mut st, key(1));
        for version in [1, 2, 3, 100] {
            assert!(!offer_key(&mut st, key(version)));
        }
        assert_eq!(held(&st, "k"), Some(revoked));
        // and a call with the copy from before the revocation is refused
        let req = AdmitRequest { key: key(1), account: account(1, 100), cost: Cost::FREE, ttl_ms: 1_000, lease: None };
        assert!(matches!(
            st.admit(req, NOW),
            crate::core::account::Admission::Denied { denial: crate::core::account::Denial::Revoked, .. }
        ));
    }

    #[test]
    fn offers_still_move_an_unrevoked_key_forward() {
        let mut st = state_at(1);
        assert!(offer_key(&mut st, key(2)));
        assert!(!offer_key(&mut st, key(1)));
        assert_eq!(held(&st, "k").map(|k| k.version), Some(2));
    }

    #[test]
    fn account_edits_are_compare_and_set_too() {
        let mut st = state_at(3);
        assert_eq!(edit_account(&mut st, 2, account(3, 7)), (AccountEdit::Conflict { current: 3 }, false));
        let (out, changed) = edit_account(&mut st, 3, account(9, 7));
        assert!(changed);
        assert_eq!(out, AccountEdit::Accepted { policy: account(4, 7) });
        let mut fresh = AccountState::new(NOW);
        assert!(matches!(edit_account(&mut fresh, 1, account(2, 7)).0, AccountEdit::Accepted { .. }));
    }

    fn record(version: u64, revoked: bool) -> KeyRecord {
        KeyRecord {
            allowed_endpoints: Vec::new(),
            id: "k".into(),
            name: "n".into(),
            plan: "pro".into(),
            org: None,
            allowed_origins: vec![],
            rate_limit: None,
            monthly_credit_micro_usd: None,
            spend_cap_micro_usd: None,
            created_at: "t".into(),
            revoked,
            version,
            provider_keys: Default::default(),
            digest: "d".into(),
        }
    }

    #[test]
    fn a_kv_copy_that_missed_a_revocation_is_repaired() {
        let mut revoked = key(3);
        revoked.revoked = true;
        let (shown, repair) = ledger_view(&record(2, false), Some(&revoked));
        assert!(repair);
        assert_eq!((shown.revoked, shown.version), (true, 3));
        // already in line: nothing to write
        assert_eq!(ledger_view(&record(3, true), Some(&revoked)), (record(3, true), false));
    }

    #[test]
    fn a_kv_copy_behind_an_edit_in_flight_shows_the_ledgers_version_without_a_rewrite() {
        let (shown, repair) = ledger_view(&record(2, false), Some(&key(3)));
        assert_eq!((shown.version, shown.revoked, repair), (3, false, false));
        assert_eq!(ledger_view(&record(2, false), None), (record(2, false), false));
    }

    #[test]
    fn if_match_compares_strongly_and_knows_when_the_copy_lags() {
        let m = IfMatch::parse("\"2\"");
        assert!(m.matches(2) && !m.matches(3));
        assert!(m.is_ahead_of(1) && !m.is_ahead_of(2));
        assert!(!IfMatch::parse("W/\"2\"").matches(2), "a weak tag never matches");
        assert!(!IfMatch::parse("2").matches(2), "an unquoted tag is not a tag");
        assert!(IfMatch::parse("\"1\", \"5\"").matches(5));
        assert!(IfMatch::Any.matches(42) && !IfMatch::Any.is_ahead_of(0));
        assert_eq!(etag(12), "\"12\"");
    }

    #[test]
    fn stored_state_is_read_from_its_envelope() {
        let (schema, st) = decode(&envelope()).unwrap();
        assert_eq!(schema, 1);
        assert_eq!(st.keys.get("a").and_then(|k| k.policy.as_ref()).map(|p| p.version), Some(1));
        assert_eq!(st.ledger.requests, 2);
    }

    #[test]
    fn state_stored_before_the_envelope_is_read_as_schema_0() {
        let (_, enveloped) = decode(&envelope()).unwrap();
        assert_eq!(decode(BARE), Ok((0, enveloped)));
    }

    #[test]
    fn state_that_does_not_decode_is_refused_never_reset() {
        let good = envelope();
        let truncated = &good[..good.len() / 2];
        let wrong_type = good.replacen("\"tat\":", "\"tat\":\"later\",\"was\":", 1);
        for broken in
            ["", "{not json", "[]", "null", "{\"schema\":1}", "{\"schema\":1,\"state\":{}}", truncated, &wrong_type]
        {
            assert!(decode(broken).is_err(), "{broken:?} decoded");
        }
        let future = good.replacen("\"schema\":1", "\"schema\":2", 1);
        let refused = decode(&future).unwrap_err();
        assert_eq!(refused.schema, Some(2));
        assert!(refused.reason.contains("schema 2"));
    }
}
