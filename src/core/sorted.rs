//! A map kept as one vector sorted by key, for the maps the gateway keeps beside the ledger's
//! (an account's jobs and spend lines, a key's provider keys, the plans).
//!
//! Every `BTreeMap<K, V>` brings its own copy of the B-tree's node code into the bundle (5 to
//! 10 KB before gzip for each key and value type); this is a binary search and a `Vec`
//! insert or remove, a few hundred bytes. Lookups stay O(log n); an insert or remove moves
//! the entries after it, which at the sizes these maps are bounded to (20,000 jobs, 4,096
//! spend lines) is microseconds. Iteration is in key order, as a `BTreeMap`'s.

use crate::core::sort::heap_sort_by;
use std::borrow::Borrow;

/// A map from `K` to `V`, its entries in ascending key order.
///
/// ```
/// use hf_gate::core::sorted::SortedMap;
/// let mut m: SortedMap<String, u32> = [("b".to_string(), 2), ("a".to_string(), 1)].into_iter().collect();
/// assert_eq!(m.insert("c".to_string(), 3), None);
/// assert_eq!(m.insert("a".to_string(), 9), Some(1));
/// assert_eq!(m.get("a"), Some(&9));
/// assert_eq!(m.remove("b"), Some(2));
/// assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "c"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortedMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        SortedMap(Vec::new())
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    pub fn new() -> Self {
        SortedMap(Vec::new())
    }

    fn find<Q: Ord + ?Sized>(&self, k: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.0.binary_search_by(|(x, _)| x.borrow().cmp(k))
    }

    pub fn get<Q: Ord + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(k).ok().and_then(|i| self.0.get(i)).map(|(_, v)| v)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(k).is_ok()
    }

    /// Inserts `v` under `k`, and returns what was there.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        match self.find(&k) {
            Ok(i) => self.0.get_mut(i).map(|(_, old)| std::mem::replace(old, v)),
            Err(i) => {
                self.0.insert(i, (k, v));
                None
            }
        }
    }

    /// The value under `k`, inserted from `make` first if there is none.
    pub fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.find(&k) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (k, make()));
                i
            }
        };
        // in range: found there, or just inserted there
        &mut self.0[i].1
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.find(k).ok().map(|i| self.0.remove(i).1)
    }

    /// Keeps only the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.0.retain_mut(|(k, v)| keep(k, v))
    }

    pub fn clear(&mut self) {
        self.0.clear()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.0.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }
}

/// Keys are expected to be distinct (a table's primary key, a JSON object's names): of
/// equal keys, one is kept.
impl<K: Ord, V> FromIterator<(K, V)> for SortedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(items: I) -> Self {
        let mut v: Vec<(K, V)> = items.into_iter().collect();
        if !v.is_sorted_by(|a, b| a.0 < b.0) {
            heap_sort_by(&mut v, |a, b| a.0.cmp(&b.0));
            v.dedup_by(|a, b| a.0 == b.0);
        }
        SortedMap(v)
    }
}

impl<K, V> IntoIterator for SortedMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn it_agrees_with_a_btreemap() {
        let mut ours = SortedMap::new();
        let mut model = BTreeMap::new();
        let mut x: u64 = 7;
        for step in 0..2_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let k = (x >> 33) % 97;
            match step % 5 {
                0 | 1 => assert_eq!(ours.insert(k, step), model.insert(k, step)),
                2 => assert_eq!(ours.remove(&k), model.remove(&k)),
                3 => *ours.get_or_insert_with(k, || 0) += 1,
                _ => assert_eq!(ours.get(&k), model.get(&k)),
            }
            if step % 5 == 3 {
                *model.entry(k).or_insert(0) += 1;
            }
            if step % 97 == 0 {
                ours.retain(|k, _| k % 3 != 0);
                model.retain(|k, _| k % 3 != 0);
            }
            assert_eq!(ours.len(), model.len());
            assert!(ours.iter().eq(model.iter()));
        }
        let rebuilt: SortedMap<u64, u64> = model.clone().into_iter().rev().collect();
        assert!(rebuilt.iter().eq(model.iter()));
    }
}
