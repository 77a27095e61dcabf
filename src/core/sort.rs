//! A stable insertion sort for the few short lists the gateway sorts (a body's edits, the
//! sandbox's model list). The standard library's stable sort is fast on long inputs but
//! brings about 2 KB of code into the bundle for every element type it sorts; these lists
//! hold a handful of items, where insertion sort is as fast and a few dozen bytes.

use std::cmp::Ordering;

/// Sorts `items` by `cmp`, keeping equal items in their order.
///
/// ```
/// use hf_gate::core::sort::sort_small_by;
/// let mut v = [(2, 'a'), (1, 'b'), (2, 'c'), (0, 'd')];
/// sort_small_by(&mut v, |x, y| x.0.cmp(&y.0));
/// assert_eq!(v, [(0, 'd'), (1, 'b'), (2, 'a'), (2, 'c')]);
/// ```
pub fn sort_small_by<T>(items: &mut [T], cmp: impl Fn(&T, &T) -> Ordering) {
    for i in 1..items.len() {
        let mut j = i;
        while let (Some(before), Some(at)) = (j.checked_sub(1).and_then(|b| items.get(b)), items.get(j)) {
            if cmp(before, at) != Ordering::Greater {
                break;
            }
            items.swap(j - 1, j);
            j -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_like_the_standard_stable_sort() {
        // many short lists with repeated keys, from a fixed LCG: equal keys must keep order
        let mut seed = 0x9e37_79b9_u32;
        for len in 0..40 {
            let v: Vec<(u32, usize)> = (0..len)
                .map(|i| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 29, i)
                })
                .collect();
            let mut ours = v.clone();
            sort_small_by(&mut ours, |a, b| a.0.cmp(&b.0));
            let mut std_sorted = v;
            std_sorted.sort_by_key(|x| x.0);
            assert_eq!(ours, std_sorted);
        }
    }
}
