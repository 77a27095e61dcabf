//! The per-isolate cache of key and org records read from KV: how long a record, or the
//! word that there is none, is believed, and how big the cache may grow. Pure: the edge keeps
//! one per isolate and passes the time in.
//!
//! It is safe because nothing that must be immediate depends on it: revocation and policy
//! changes are enforced by the account Durable Object, which holds the newest version and
//! tells the edge when its copy is stale.

use crate::core::sorted::SortedMap;
use crate::core::time::UnixMillis;

/// How long a known record is served from memory.
const HIT_TTL_MS: u64 = 60_000;
/// How long an unknown key is remembered as unknown. Made-up keys rarely get this far: the
/// key registry refuses them without a KV read. A key created meanwhile is found at most
/// 10 s late (the admin API clears this cache in its own isolate at once).
const MISS_TTL_MS: u64 = 10_000;
const MAX_ENTRIES: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached<T> {
    Hit(T),
    Miss,
}

#[derive(Default)]
pub struct Cache<T> {
    pub entries: SortedMap<String, (Cached<T>, UnixMillis)>,
}

impl<T: Clone> Cache<T> {
    pub fn new() -> Self {
        Cache { entries: SortedMap::new() }
    }

    pub fn get(&self, k: &str, now: UnixMillis) -> Option<Cached<T>> {
        let (v, at) = self.entries.get(k)?;
        let ttl = if matches!(v, Cached::Hit(_)) { HIT_TTL_MS } else { MISS_TTL_MS };
        (now.millis_since(*at) < ttl).then(|| v.clone())
    }

    pub fn put(&mut self, k: &str, v: Cached<T>, now: UnixMillis) {
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.retain(|_, (_, at)| now.millis_since(*at) < MISS_TTL_MS);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(k.to_string(), (v, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixMillis = UnixMillis(1_795_352_400_000);

    #[test]
    fn a_record_is_believed_for_a_minute_and_its_absence_for_ten_seconds() {
        let mut c: Cache<u32> = Cache::new();
        c.put("k", Cached::Hit(7), T0);
        c.put("gone", Cached::Miss, T0);
        assert_eq!(c.get("k", T0.saturating_add_ms(HIT_TTL_MS - 1)), Some(Cached::Hit(7)));
        assert_eq!(c.get("k", T0.saturating_add_ms(HIT_TTL_MS)), None);
        assert_eq!(c.get("gone", T0.saturating_add_ms(MISS_TTL_MS - 1)), Some(Cached::Miss));
        assert_eq!(c.get("gone", T0.saturating_add_ms(MISS_TTL_MS)), None);
    }

    #[test]
    fn a_full_cache_drops_what_is_stale_first_and_never_grows_past_its_bound() {
        let mut c: Cache<u32> = Cache::new();
        for i in 0..MAX_ENTRIES {
            c.put(&format!("old{i}"), Cached::Miss, T0);
        }
        let later = T0.saturating_add_ms(MISS_TTL_MS);
        c.put("new", Cached::Hit(1), later);
        assert_eq!(c.entries.len(), 1, "the stale misses went first");
        for i in 0..(2 * MAX_ENTRIES) {
            c.put(&format!("k{i}"), Cached::Hit(1), later);
            assert!(c.entries.len() <= MAX_ENTRIES);
        }
    }
}
