//! A map from interval to per-interval state for the handful of intervals a
//! node holds at a time (those open for offers, being reconciled, or final
//! and not yet pruned).
//!
//! The keys sit inline, in the struct that holds the map, and the values in
//! one vector beside them: finding an interval is a scan of a few words the
//! caller's struct already brought into the cache, then one step to the
//! value. A `BTreeMap` first read its node's length and keys, on a line of
//! their own at the far end of a node of several kilobytes, which in a
//! simulator of a thousand nodes missed the cache on nearly every arrival of
//! an offer, an attestation or a meter report. Insertion and removal shift
//! the few entries after them.

use std::ops::Index;

use smallvec::SmallVec;

use crate::types::IntervalIndex;

/// Intervals held without a heap allocation for the keys: the open horizon
/// (four ahead), the one being reconciled and a few final ones awaiting
/// settlement. More spill to the heap and work the same.
const INLINE_INTERVALS: usize = 8;

/// Values by interval, in interval order; the keys first (`repr(C)`), as
/// every lookup reads them.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct IntervalMap<V> {
    keys: SmallVec<[IntervalIndex; INLINE_INTERVALS]>,
    /// `values[i]` belongs to `keys[i]`.
    values: Vec<V>,
}

impl<V> Default for IntervalMap<V> {
    fn default() -> Self {
        IntervalMap {
            keys: SmallVec::new(),
            values: Vec::new(),
        }
    }
}

impl<V> IntervalMap<V> {
    pub fn new() -> IntervalMap<V> {
        IntervalMap::default()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Where `interval` is, or where it would go.
    fn position(&self, interval: IntervalIndex) -> Result<usize, usize> {
        // A scan: there are a few keys, and they are in one or two lines.
        match self.keys.iter().position(|&k| k >= interval) {
            Some(at) if self.keys[at] == interval => Ok(at),
            Some(at) => Err(at),
            None => Err(self.keys.len()),
        }
    }

    pub fn contains_key(&self, interval: &IntervalIndex) -> bool {
        self.position(*interval).is_ok()
    }

    pub fn get(&self, interval: &IntervalIndex) -> Option<&V> {
        let at = self.position(*interval).ok()?;
        Some(&self.values[at])
    }

    pub fn get_mut(&mut self, interval: &IntervalIndex) -> Option<&mut V> {
        let at = self.position(*interval).ok()?;
        Some(&mut self.values[at])
    }

    /// Keeps `value` for `interval`; the value it replaces, if any.
    pub fn insert(&mut self, interval: IntervalIndex, value: V) -> Option<V> {
        match self.position(interval) {
            Ok(at) => Some(std::mem::replace(&mut self.values[at], value)),
            Err(at) => {
                self.keys.insert(at, interval);
                self.values.insert(at, value);
                None
            }
        }
    }

    /// The value of `interval`, made by `make` if there is none.
    pub fn get_or_insert_with(
        &mut self,
        interval: IntervalIndex,
        make: impl FnOnce() -> V,
    ) -> &mut V {
        let at = match self.position(interval) {
            Ok(at) => at,
            Err(at) => {
                self.keys.insert(at, interval);
                self.values.insert(at, make());
                at
            }
        };
        &mut self.values[at]
    }

    pub fn remove(&mut self, interval: &IntervalIndex) -> Option<V> {
        let at = self.position(*interval).ok()?;
        self.keys.remove(at);
        Some(self.values.remove(at))
    }

    /// Takes out the intervals from `interval` on and returns them, as
    /// `BTreeMap::split_off` does.
    pub fn split_off(&mut self, interval: &IntervalIndex) -> IntervalMap<V> {
        let at = self.position(*interval).unwrap_or_else(|at| at);
        IntervalMap {
            keys: self.keys.drain(at..).collect(),
            values: self.values.split_off(at),
        }
    }

    /// Intervals and values, in interval order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&IntervalIndex, &V)> {
        self.keys.iter().zip(&self.values)
    }

    pub fn iter_mut(&mut self) -> impl DoubleEndedIterator<Item = (&IntervalIndex, &mut V)> {
        self.keys.iter().zip(&mut self.values)
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &IntervalIndex> {
        self.keys.iter()
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> {
        self.values.iter()
    }
}

impl<V> Index<&IntervalIndex> for IntervalMap<V> {
    type Output = V;

    fn index(&self, interval: &IntervalIndex) -> &V {
        self.get(interval).expect("an interval the map holds")
    }
}

impl<'a, V> IntoIterator for &'a IntervalMap<V> {
    type Item = (&'a IntervalIndex, &'a V);
    type IntoIter = std::iter::Zip<std::slice::Iter<'a, IntervalIndex>, std::slice::Iter<'a, V>>;

    fn into_iter(self) -> Self::IntoIter {
        self.keys.iter().zip(&self.values)
    }
}

impl<V> IntoIterator for IntervalMap<V> {
    type Item = (IntervalIndex, V);
    type IntoIter = std::iter::Zip<
        smallvec::IntoIter<[IntervalIndex; INLINE_INTERVALS]>,
        std::vec::IntoIter<V>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.keys.into_iter().zip(self.values)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    proptest::proptest! {
        /// The map answers as a `BTreeMap` does, through inserts, removals,
        /// splits and lookups, past the inline keys and back.
        #[test]
        fn an_interval_map_is_a_map(ops in proptest::collection::vec((0u8..6, 0u64..24), 0..200)) {
            let mut map = IntervalMap::new();
            let mut model = BTreeMap::new();
            for (i, (op, k)) in ops.into_iter().enumerate() {
                let key = IntervalIndex(k);
                match op {
                    0 | 1 => proptest::prop_assert_eq!(map.insert(key, i), model.insert(key, i)),
                    2 => proptest::prop_assert_eq!(map.remove(&key), model.remove(&key)),
                    3 => {
                        *map.get_or_insert_with(key, || i) += 1;
                        *model.entry(key).or_insert(i) += 1;
                    }
                    4 => {
                        let (later, model_later) = (map.split_off(&key), model.split_off(&key));
                        proptest::prop_assert!(later.iter().eq(model_later.iter()));
                    }
                    _ => proptest::prop_assert_eq!(map.get(&key), model.get(&key)),
                }
                proptest::prop_assert_eq!(map.len(), model.len());
                proptest::prop_assert_eq!(map.contains_key(&key), model.contains_key(&key));
                proptest::prop_assert!(map.iter().eq(model.iter()));
                proptest::prop_assert!(map.keys().rev().eq(model.keys().rev()));
            }
        }
    }
}
