//! The gateway's own sorts: a stable insertion sort for the few short lists it sorts (a
//! body's edits, the sandbox's model list), and a heap sort for the long ones (an account's
//! spend lines and jobs, a page of request log records from every shard of an org). The
//! standard library's stable sort brings about 2 KB of code into the bundle for every element
//! type it sorts; on a handful of items insertion sort is as fast in a few dozen bytes.

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

/// An in-place heap sort: O(n log n) on the thousands of lines or jobs an account may hold,
/// where `sort_small_by` would be quadratic, in a few hundred bytes of code where
/// the standard stable sort brings about 3 KB per element type. Not stable: give it a total
/// order.
pub fn heap_sort_by<T>(v: &mut [T], cmp: impl Fn(&T, &T) -> Ordering) {
    let less = |v: &[T], a: usize, b: usize| match (v.get(a), v.get(b)) {
        (Some(x), Some(y)) => cmp(x, y) == Ordering::Less,
        _ => false,
    };
    let sift_down = |v: &mut [T], mut node: usize, end: usize| loop {
        let mut child = 2 * node + 1;
        if child >= end {
            break;
        }
        if child + 1 < end && less(v, child, child + 1) {
            child += 1;
        }
        if !less(v, node, child) {
            break;
        }
        v.swap(node, child);
        node = child;
    };
    for node in (0..v.len() / 2).rev() {
        sift_down(v, node, v.len());
    }
    for end in (1..v.len()).rev() {
        v.swap(0, end);
        sift_down(v, 0, end);
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

    #[test]
    fn the_heap_sort_orders_like_the_standard_sort() {
        // lists of every length up to 70 with many repeated keys, from a fixed LCG
        let mut seed = 0x2545_f491_u32;
        for len in 0..70 {
            let v: Vec<(u32, usize)> = (0..len)
                .map(|i| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 28, i)
                })
                .collect();
            let mut ours = v.clone();
            heap_sort_by(&mut ours, Ord::cmp);
            let mut std_sorted = v;
            std_sorted.sort();
            assert_eq!(ours, std_sorted);
        }
    }
}
