//! A map kept as one vector sorted by key, for every map the gateway keeps: the ledger's holds,
//! leases and daily spend, an account's keys, owners, grants, jobs and spend lines, a key's
//! provider keys, the plans.
//!
//! Every `BTreeMap<K, V>` brings its own copy of the B-tree's node code into the bundle (5 to
//! 10 KB before gzip for each key and value type); this is a binary search and a `Vec`
//! insert or remove, a few hundred bytes. Lookups stay O(log n); an insert or remove moves
//! the entries after it, which at the sizes these maps are bounded to (20,000 jobs, 10,000
//! remembered holds, 4,096 spend lines) is microseconds; ids that only grow (holds, leases)
//! are appended. Iteration is in key order, as a `BTreeMap`'s.

use crate::core::sort::heap_sort_by;
use std::borrow::Borrow;
use std::ops::{Bound, RangeBounds};

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

    pub fn get_mut<Q: Ord + ?Sized>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(k).ok()?;
        self.0.get_mut(i).map(|(_, v)| v)
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

    /// The entry under `k`, for `or_default`, as a `BTreeMap`'s.
    pub fn entry(&mut self, k: K) -> Entry<'_, K, V> {
        Entry { map: self, key: k }
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.find(k).ok().map(|i| self.0.remove(i).1)
    }

    /// Removes and returns the entry with the least key.
    pub fn pop_first(&mut self) -> Option<(K, V)> {
        (!self.0.is_empty()).then(|| self.0.remove(0))
    }

    /// The entries whose keys are in `range`, in key order.
    pub fn range<Q: Ord + ?Sized>(&self, range: impl RangeBounds<Q>) -> impl Iterator<Item = (&K, &V)>
    where
        K: Borrow<Q>,
    {
        let below = |q: &Q| self.0.partition_point(|(x, _)| x.borrow() < q);
        let up_to = |q: &Q| self.0.partition_point(|(x, _)| x.borrow() <= q);
        let start = match range.start_bound() {
            Bound::Included(q) => below(q),
            Bound::Excluded(q) => up_to(q),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(q) => up_to(q),
            Bound::Excluded(q) => below(q),
            Bound::Unbounded => self.0.len(),
        };
        self.0.get(start..end.max(start)).unwrap_or_default().iter().map(|(k, v)| (k, v))
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

/// A place in a map for one key, filled or not (`SortedMap::entry`).
pub struct Entry<'a, K, V> {
    map: &'a mut SortedMap<K, V>,
    key: K,
}

impl<'a, K: Ord, V> Entry<'a, K, V> {
    /// The value under the key, a default one inserted first if there is none.
    pub fn or_default(self) -> &'a mut V
    where
        V: Default,
    {
        self.map.get_or_insert_with(self.key, V::default)
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

/// Panics when the key is absent, as a `BTreeMap`'s index does: for tests, never a request path.
impl<K: Borrow<Q> + Ord, Q: Ord + ?Sized, V> std::ops::Index<&Q> for SortedMap<K, V> {
    type Output = V;
    fn index(&self, k: &Q) -> &V {
        match self.get(k) {
            Some(v) => v,
            None => panic!("no entry found for key"),
        }
    }
}

impl<'a, K, V> IntoIterator for &'a SortedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::ops::Bound;

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
            if step % 7 == 0 {
                *ours.entry(k + 1).or_default() += 2;
                *model.entry(k + 1).or_default() += 2;
                if let (Some(a), Some(b)) = (ours.get_mut(&k), model.get_mut(&k)) {
                    (*a, *b) = (step, step);
                }
            }
            if step % 61 == 0 {
                assert_eq!(ours.pop_first(), model.pop_first());
            }
            let (lo, hi) = (k.min(x % 97), k.max(x % 97));
            assert!(ours.range(..hi).eq(model.range(..hi)));
            assert!(ours.range(lo..=hi).eq(model.range(lo..=hi)));
            assert!(ours.range(lo..).eq(model.range(lo..)));
            if lo < hi {
                let open = (Bound::Excluded(lo), Bound::Excluded(hi));
                assert!(ours.range(open).eq(model.range(open)));
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
