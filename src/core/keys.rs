//! Gateway keys and organisations: the secret's format and digest, the records kept in KV, and
//! the validation of what the admin API is asked to create or change.
//!
//! A key is `hfg_` + 256 random bits, shown once; only its SHA-256 digest is stored.

use crate::core::rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "hfg_";
const KEY_RANDOM_BYTES: usize = 32;
/// `hfg_` + 43 base64url characters.
pub const KEY_LEN: usize = 4 + 43;

/// A freshly minted key: the secret (returned once) and its public id.
#[derive(Debug)]
pub struct MintedKey {
    pub secret: String,
    pub id: String,
}

/// Random bytes a key is minted from: 32 for the secret, 10 for the public id.
pub const MINT_BYTES: usize = KEY_RANDOM_BYTES + 10;

/// Mints a key from random bytes (the platform's CSPRNG in production: a failure to get
/// them must stop the mint, never weaken the key, so the caller fetches them).
pub fn mint_key(random: &[u8; MINT_BYTES]) -> MintedKey {
    let (secret, id) = random.split_at(KEY_RANDOM_BYTES);
    MintedKey { secret: format!("{KEY_PREFIX}{}", base64url(secret)), id: format!("key_{}", base32(id)) }
}

/// A short random id (request ids): 16 hex digits from `rng`.
pub fn random_id(rng: &mut impl Rng) -> String {
    let mut b = [0u8; 8];
    rng.fill(&mut b);
    hex(&b)
}

/// The lowercase hex SHA-256 of a key: what KV stores and looks up.
///
/// ```
/// use hf_gate::core::keys::digest;
/// assert_eq!(digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
/// ```
pub fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// The first 64 bits of a digest: what the key registry keeps, so an unknown key can be
/// refused without a lookup.
///
/// ```
/// use hf_gate::core::keys::{digest, digest_prefix};
/// assert_eq!(digest_prefix(&digest("abc")), 0xba7816bf8f01cfea);
/// ```
pub fn digest_prefix(digest_hex: &str) -> u64 {
    digest_hex.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0)
}

/// The gateway key in an `Authorization` header, if it has the shape of one. Anything else is
/// refused here, before any lookup is spent on it.
///
/// ```
/// use hf_gate::core::keys::bearer_key;
/// let key = format!("hfg_{}", "A".repeat(43));
/// assert_eq!(bearer_key(&format!("Bearer {key}")), Some(key.as_str()));
/// assert_eq!(bearer_key("Bearer hf_notours"), None);
/// ```
pub fn bearer_key(authorization: &str) -> Option<&str> {
    let token = bearer_token(authorization)?;
    let well_formed = token.len() == KEY_LEN
        && token.starts_with(KEY_PREFIX)
        && token[KEY_PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then_some(token)
}

/// The token of `Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// RFC 4648 base64url without padding.
pub fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes unpadded base64url; `None` on any character outside the alphabet.
pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    };
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

fn base32(bytes: &[u8]) -> String {
    const A: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in bytes {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A per-key or per-org request rate.
// (`Serialize` for the records' public views.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub rpm: u32,
    pub burst: u32,
}

/// A `byok` provider key as KV holds it (sealed: see `edge::sealing`), together with the
/// record and provider it was read under. It opens only there: the record's id and the
/// provider are the additional data it was sealed with, so a sealed value copied into another
/// record, or under another provider, does not open.
///
/// KV stores the sealed text alone; `KeyRecord::bind_sealed` (done wherever a record is read)
/// fills in where it was found. Until then it is bound to nothing and opens nowhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedKey {
    sealed: String,
    owner: Option<(String, String)>,
}

impl SealedKey {
    /// A value just sealed for `key_id`'s key to `provider`.
    pub fn new(sealed: String, key_id: &str, provider: &str) -> Self {
        SealedKey { sealed, owner: Some((key_id.to_string(), provider.to_string())) }
    }

    pub fn sealed(&self) -> &str {
        &self.sealed
    }

    /// The key id and provider of the record it was read from, once bound.
    pub fn owner(&self) -> Option<(&str, &str)> {
        self.owner.as_ref().map(|(k, p)| (k.as_str(), p.as_str()))
    }
}

/// What KV holds for a key (under its digest). Never the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub plan: String,
    pub org: Option<String>,
    pub allowed_origins: Vec<String>,
    /// The dedicated endpoints (`ENDPOINTS` names) this key may call at `/endpoints/{name}`.
    pub allowed_endpoints: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    pub monthly_credit_micro_usd: Option<u64>,
    pub spend_cap_micro_usd: Option<u64>,
    pub created_at: String,
    pub revoked: bool,
    /// Bumped on every change; the ledger keeps the newest it has seen, so a stale cached
    /// copy can never undo a revocation.
    pub version: u64,
    /// Provider name -> sealed (encrypted) provider key, for `byok` keys.
    pub provider_keys: crate::core::sorted::SortedMap<String, SealedKey>,
    /// The digest of the secret, so admin reads can find the KV entry to update.
    pub digest: String,
}

impl KeyRecord {
    pub fn is_browser_key(&self) -> bool {
        !self.allowed_origins.is_empty()
    }

    /// Binds each sealed provider key to this record (its id, and the provider it is filed
    /// under): what a record read from storage must go through before its keys can open.
    pub fn bind_sealed(mut self) -> Self {
        for (provider, sealed) in self.provider_keys.iter_mut() {
            sealed.owner = Some((self.id.clone(), provider.clone()));
        }
        self
    }

    /// The public view: everything but the digest and the sealed provider keys. `version` is
    /// also the record's `ETag`.
    pub fn public_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "name": self.name, "plan": self.plan, "org": self.org,
            "allowed_origins": self.allowed_origins, "allowed_endpoints": self.allowed_endpoints,
            "rate_limit": self.rate_limit,
            "monthly_credit_micro_usd": self.monthly_credit_micro_usd,
            "spend_cap_micro_usd": self.spend_cap_micro_usd,
            "providers": self.provider_keys.keys().collect::<Vec<_>>(),
            "created_at": self.created_at, "revoked": self.revoked, "version": self.version,
        })
    }

    /// What an admin list shows of this key (its public view), as the JSON text kept in KV
    /// metadata beside its id, so a page of keys is one KV list call with no reads. An empty
    /// object when that would not fit KV's metadata: the list then reads the record.
    pub fn summary(&self) -> String {
        summary(self.public_json())
    }
}

/// An organisation: seats share one credit pool, billed to `bill_to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgRecord {
    pub id: String,
    pub plan: String,
    pub seats: u32,
    pub bill_to: String,
    pub spend_limit_micro_usd: Option<u64>,
    pub rate_limit: Option<RateLimit>,
    pub created_at: String,
    pub version: u64,
    /// How many Durable Objects the pool is spread over (`core::lease`); fixed at creation.
    pub shards: u32,
}

fn one_shard() -> u32 {
    1
}

impl OrgRecord {
    pub fn public_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "plan": self.plan, "seats": self.seats, "bill_to": self.bill_to,
            "spend_limit_micro_usd": self.spend_limit_micro_usd, "rate_limit": self.rate_limit,
            "created_at": self.created_at, "version": self.version, "shards": self.shards,
        })
    }

    /// As `KeyRecord::summary`, for the list of orgs.
    pub fn summary(&self) -> String {
        summary(self.public_json())
    }
}

/// KV keeps at most 1024 bytes of metadata per entry, measured as JSON.
pub const METADATA_LIMIT: usize = 1024;

/// A public view as summary text, or `{}` if, stored as a JSON string, it would not fit.
fn summary(view: serde_json::Value) -> String {
    let text = view.to_string();
    let stored = serde_json::to_string(&text).map_or(usize::MAX, |s| s.len());
    if stored <= METADATA_LIMIT {
        text
    } else {
        "{}".into()
    }
}

/// Names, org ids and `bill_to`: short, printable, no separators that could smuggle a path
/// or a header.
pub fn valid_slug(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A display name: printable, no control characters.
pub fn valid_name(s: &str) -> bool {
    s.chars().count() <= 100 && !s.chars().any(char::is_control)
}

// Their JSON, as KV holds the records and the account object's messages carry a rate
// (`core::wire`).
crate::core::wire::json_struct!(RateLimit { rpm, burst });
crate::core::wire::json_struct!(KeyRecord {
    id,
    name,
    plan,
    org,
    allowed_origins: default,
    allowed_endpoints: skip_empty,
    rate_limit,
    monthly_credit_micro_usd,
    spend_cap_micro_usd,
    created_at,
    revoked: default,
    version: default,
    provider_keys: skip_empty,
    digest,
});

/// KV stores the sealed text alone (`KeyRecord::bind_sealed` binds it).
impl crate::core::wire::FromJson for SealedKey {
    fn read(v: &serde_json::Value, e: &crate::core::wire::Errors) -> Self {
        SealedKey { sealed: String::read(v, e), owner: None }
    }
    fn fallback() -> Self {
        SealedKey { sealed: String::new(), owner: None }
    }
}

impl crate::core::wire::ToJson for SealedKey {
    fn to_json(&self, out: &mut String) {
        crate::core::wire::string(out, &self.sealed)
    }
}

impl crate::core::wire::FromJson for OrgRecord {
    fn read(v: &serde_json::Value, e: &crate::core::wire::Errors) -> Self {
        let o = crate::core::wire::Fields::of(v, e);
        OrgRecord {
            id: o.get("id"),
            plan: o.get("plan"),
            seats: o.get("seats"),
            bill_to: o.get("bill_to"),
            spend_limit_micro_usd: o.get("spend_limit_micro_usd"),
            rate_limit: o.get("rate_limit"),
            created_at: o.get("created_at"),
            version: o.or_default("version"),
            shards: o.or("shards", one_shard()),
        }
    }
    fn fallback() -> Self {
        let none = || String::new();
        OrgRecord {
            id: none(),
            plan: none(),
            seats: 0,
            bill_to: none(),
            spend_limit_micro_usd: None,
            rate_limit: None,
            created_at: none(),
            version: 0,
            shards: 0,
        }
    }
}

impl crate::core::wire::ToJson for OrgRecord {
    fn to_json(&self, out: &mut String) {
        crate::core::wire::object(
            out,
            &[
                ("id", &self.id),
                ("plan", &self.plan),
                ("seats", &self.seats),
                ("bill_to", &self.bill_to),
                ("spend_limit_micro_usd", &self.spend_limit_micro_usd),
                ("rate_limit", &self.rate_limit),
                ("created_at", &self.created_at),
                ("version", &self.version),
                ("shards", &self.shards),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rand::ScriptedRng;

    #[test]
    fn minted_keys_have_the_advertised_shape() {
        let mut rng = ScriptedRng::units(&[0.1, 0.7, 0.3, 0.9]);
        let mut random = [0u8; MINT_BYTES];
        rng.fill(&mut random);
        let k = mint_key(&random);
        assert_eq!(random_id(&mut rng).len(), 16);
        assert_eq!(k.secret.len(), KEY_LEN);
        assert!(bearer_key(&format!("Bearer {}", k.secret)).is_some());
        assert_eq!(k.id.len(), 4 + 16);
    }

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
        for v in [&b""[..], b"f", b"fo", b"foo", b"foob", &[0xfb, 0xff, 0x00]] {
            assert_eq!(base64url_decode(&base64url(v)).as_deref(), Some(v));
        }
        assert_eq!(base64url_decode("Zm9v!"), None);
        assert_eq!(base64url_decode("Z"), None);
    }

    #[test]
    fn malformed_bearers_are_refused_before_lookup() {
        let good = format!("hfg_{}", "a".repeat(43));
        assert!(bearer_key(&format!("bearer {good}")).is_some());
        assert!(bearer_key(&format!("Basic {good}")).is_none());
        assert!(bearer_key(&format!("Bearer {good}x")).is_none());
        assert!(bearer_key(&format!("Bearer hfg_{}", "a/".repeat(21) + "a")).is_none());
        assert!(bearer_key("Bearer").is_none());
        assert!(bearer_key("").is_none());
    }

    #[test]
    fn a_sealed_key_read_from_storage_is_bound_to_the_record_it_was_found_in() {
        let stored = r#"{"id":"key_b","name":"","plan":"byok","org":null,"rate_limit":null,
            "monthly_credit_micro_usd":null,"spend_cap_micro_usd":null,"created_at":"t",
            "provider_keys":{"together":"v2.c2VhbGVk"},"digest":"d"}"#;
        let read: KeyRecord = crate::core::wire::parse(stored).unwrap();
        assert_eq!(read.provider_keys.get("together").unwrap().owner(), None, "unbound until bound: opens nowhere");
        let bound = read.bind_sealed();
        let sealed = bound.provider_keys.get("together").unwrap();
        assert_eq!((sealed.owner(), sealed.sealed()), (Some(("key_b", "together")), "v2.c2VhbGVk"));
        // KV gets the sealed text alone, never where it was found
        let written = crate::core::wire::value(&bound);
        assert_eq!(written["provider_keys"], serde_json::json!({"together": "v2.c2VhbGVk"}));
        assert!(bound.public_json().get("provider_keys").is_none());
    }

    fn record(name: &str, origins: usize) -> KeyRecord {
        KeyRecord {
            allowed_endpoints: Vec::new(),
            id: "key_a".into(),
            name: name.into(),
            plan: "pro".into(),
            org: None,
            allowed_origins: (0..origins).map(|i| format!("https://app-{i:03}.example.com")).collect(),
            rate_limit: Some(RateLimit { rpm: 60, burst: 10 }),
            monthly_credit_micro_usd: Some(u64::MAX),
            spend_cap_micro_usd: None,
            created_at: "2026-11-22T13:00:00Z".into(),
            revoked: false,
            version: 3,
            provider_keys: Default::default(),
            digest: "d1ge57".into(),
        }
    }

    #[test]
    fn a_summary_is_the_public_view_exactly_and_never_the_digest() {
        let r = record("web \"app\"", 2);
        let back: serde_json::Value = serde_json::from_str(&r.summary()).unwrap();
        assert_eq!(back, r.public_json(), "large integers and escapes survive");
        assert!(!r.summary().contains("d1ge57"));
    }

    #[test]
    fn a_summary_that_would_not_fit_kv_metadata_is_an_empty_object() {
        // 32 long origins and a name of quotes: far past 1024 bytes once stored
        assert_eq!(record(&"\"".repeat(100), 32).summary(), "{}");
        let fits = record("x", 12);
        let stored = serde_json::to_string(&fits.summary()).unwrap();
        assert!(fits.summary().contains("key_a") && stored.len() <= METADATA_LIMIT);
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
    }
}
