//! Sets of member places (a member's index in the market's member list),
//! one bit per member.
//!
//! A node keeps several per interval: who sent an offer, who reported, who
//! attests. A thousand members fit in 128 bytes, so a simulator's thousand
//! nodes keep theirs in the processor's cache, where a pointer per member
//! (8 kB per node) missed it on nearly every arrival.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use crate::types::IntervalIndex;

/// A set of member places.
#[derive(Clone, Debug, Default)]
pub struct PlaceSet {
    words: Vec<u64>,
}

/// Equal when they hold the same places, however much room each has.
impl PartialEq for PlaceSet {
    fn eq(&self, other: &Self) -> bool {
        let (short, long) = if self.words.len() <= other.words.len() {
            (&self.words, &other.words)
        } else {
            (&other.words, &self.words)
        };
        long[..short.len()] == short[..] && long[short.len()..].iter().all(|&w| w == 0)
    }
}

impl Eq for PlaceSet {}

impl PlaceSet {
    /// An empty set with room for places below `members`.
    pub fn with_members(members: usize) -> PlaceSet {
        PlaceSet {
            words: vec![0; members.div_ceil(64)],
        }
    }

    pub fn contains(&self, place: usize) -> bool {
        self.words
            .get(place / 64)
            .is_some_and(|word| word & (1 << (place % 64)) != 0)
    }

    /// Adds `place`; whether it was new. Grows the set if needed.
    pub fn insert(&mut self, place: usize) -> bool {
        let word = place / 64;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1 << (place % 64);
        let new = self.words[word] & bit == 0;
        self.words[word] |= bit;
        new
    }

    /// Removes `place`; whether it was there.
    pub fn remove(&mut self, place: usize) -> bool {
        let Some(word) = self.words.get_mut(place / 64) else {
            return false;
        };
        let bit = 1 << (place % 64);
        let was = *word & bit != 0;
        *word &= !bit;
        was
    }

    /// Places below this fit without growing the set.
    pub fn capacity(&self) -> usize {
        self.words.len() * 64
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The places in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    w * 64 + bit
                })
            })
        })
    }
}

/// Values by member place, kept in arrival order: what a node holds per
/// member and interval (an offer, an attestation, a meter report).
///
/// An arrival tests and sets a bit ([`PlaceSet`]) and appends, touching
/// no memory per member outside the bitset. The index from place to
/// position is built on the first lookup of a held place (a duplicate, a
/// conflict) and kept up to date from then on.
#[derive(Clone, Debug, Default)]
pub struct PlaceMap<T> {
    held: PlaceSet,
    /// Position in `items` by place, valid where `held` has the place.
    index: OnceLock<Vec<u32>>,
    items: Vec<(u32, T)>,
}

impl<T> PlaceMap<T> {
    /// An empty map for places below `members` (others are kept too).
    pub fn with_members(members: usize) -> PlaceMap<T> {
        PlaceMap {
            held: PlaceSet::with_members(members),
            index: OnceLock::new(),
            items: Vec::new(),
        }
    }

    /// Makes room for `additional` more values without reallocating.
    pub fn reserve(&mut self, additional: usize) {
        self.items.reserve(additional);
    }

    pub fn contains(&self, place: u32) -> bool {
        self.held.contains(place as usize)
    }

    /// Position in `items` by place, built on first use.
    fn index(&self) -> &Vec<u32> {
        self.index.get_or_init(|| {
            let mut index = vec![0; self.held.capacity()];
            for (at, &(place, _)) in (0u32..).zip(&self.items) {
                index[place as usize] = at;
            }
            index
        })
    }

    pub fn get(&self, place: u32) -> Option<&T> {
        if !self.contains(place) {
            return None;
        }
        Some(&self.items[self.index()[place as usize] as usize].1)
    }

    /// Keeps `value` for `place` unless it holds one; whether it was new.
    pub fn insert(&mut self, place: u32, value: T) -> bool {
        let at = place as usize;
        if !self.held.insert(at) {
            return false;
        }
        let position = u32::try_from(self.items.len()).expect("fewer entries than places");
        if let Some(index) = self.index.get_mut() {
            if index.len() <= at {
                index.resize(self.held.capacity(), 0);
            }
            index[at] = position;
        }
        self.items.push((place, value));
        true
    }

    /// Takes the value of `place` out.
    pub fn remove(&mut self, place: u32) -> Option<T> {
        if !self.held.remove(place as usize) {
            return None;
        }
        let at = self.index()[place as usize] as usize;
        let (_, value) = self.items.swap_remove(at);
        if let (Some(&(moved, _)), Some(index)) = (self.items.get(at), self.index.get_mut()) {
            index[moved as usize] = index[place as usize];
        }
        Some(value)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The places held.
    pub fn places(&self) -> &PlaceSet {
        &self.held
    }

    /// Places and values in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.items.iter().map(|(place, value)| (*place, value))
    }
}

/// The values the nodes of one market hold per member place for one
/// interval (an offer, a meter report, an attestation), one slot per place:
/// the first value any of them kept there. In a simulator the nodes receive
/// the very same allocations, so each keeps a bit where it kept a pointer,
/// and a thousand nodes' arrivals write nothing per node but that bit (see
/// [`SharedPlaceMap`]). A daemon's node has a table of its own.
#[derive(Debug)]
pub struct PlaceSlots<T> {
    slots: Box<[OnceLock<Arc<T>>]>,
}

impl<T> PlaceSlots<T> {
    /// Empty slots for places below `members`.
    pub fn with_members(members: usize) -> PlaceSlots<T> {
        PlaceSlots {
            slots: (0..members).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Whether `value` is the value kept for `place`; if the slot is empty,
    /// `value` takes it. `Err(value)` if the slot holds another value (or
    /// there is no slot for `place`).
    fn take_or_match(&self, place: u32, value: Arc<T>) -> Result<(), Arc<T>> {
        let Some(slot) = self.slots.get(place as usize) else {
            return Err(value);
        };
        let value = match slot.get() {
            Some(kept) if Arc::ptr_eq(kept, &value) => return Ok(()),
            Some(_) => return Err(value),
            None => match slot.set(value) {
                Ok(()) => return Ok(()),
                Err(value) => value,
            },
        };
        // Another thread filled the slot between the look and the set.
        match slot.get() {
            Some(kept) if Arc::ptr_eq(kept, &value) => Ok(()),
            _ => Err(value),
        }
    }

    fn get(&self, place: u32) -> Option<&Arc<T>> {
        self.slots.get(place as usize)?.get()
    }
}

/// Per interval, the [`PlaceSlots`] of the nodes that share them: the same
/// table for every node that asks for an interval while another still holds
/// it. The tables are the nodes' (a table, and the values in it, go when
/// the last node holding it prunes the interval); this only finds them.
/// It forgets a table when nobody holds it any more, never before: so its
/// list is as long as the intervals some node holds, and every node that
/// holds an interval shares that interval's table however far ahead it
/// takes offers.
#[derive(Debug)]
pub struct SlotTables<T> {
    members: usize,
    tables: Mutex<VecDeque<(IntervalIndex, Weak<PlaceSlots<T>>)>>,
}

impl<T> SlotTables<T> {
    pub fn with_members(members: usize) -> SlotTables<T> {
        SlotTables {
            members,
            tables: Mutex::new(VecDeque::new()),
        }
    }

    /// The table of `interval`, made on first use.
    pub fn for_interval(&self, interval: IntervalIndex) -> Arc<PlaceSlots<T>> {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(table) = tables
            .iter()
            .find(|(i, _)| *i == interval)
            .and_then(|(_, table)| table.upgrade())
        {
            return table;
        }
        let table = Arc::new(PlaceSlots::with_members(self.members));
        tables.retain(|(i, table)| *i != interval && table.strong_count() > 0);
        tables.push_back((interval, Arc::downgrade(&table)));
        table
    }
}

/// A node's values by member place ([`PlaceMap`]'s answers), most of them
/// the market's shared ones ([`PlaceSlots`]): a held place whose value is
/// the slot's is a bit; a node that holds another value for a place (an
/// equivocator's other version, a replacement that reached it first) keeps
/// that one itself. An arrival tests and sets a bit and, when the value is
/// the shared one, writes nothing else, where appending to a list of its
/// own wrote a line that a thousand nodes' lists kept out of the cache.
/// Iteration is by place.
#[derive(Debug)]
pub struct SharedPlaceMap<T> {
    held: PlaceSet,
    /// Held places whose value is this node's own, with it.
    own: PlaceMap<Arc<T>>,
    shared: Arc<PlaceSlots<T>>,
    len: usize,
}

impl<T> Clone for SharedPlaceMap<T> {
    fn clone(&self) -> Self {
        SharedPlaceMap {
            held: self.held.clone(),
            own: self.own.clone(),
            shared: self.shared.clone(),
            len: self.len,
        }
    }
}

impl<T> SharedPlaceMap<T> {
    /// An empty map over `shared`'s slots (places beyond them are kept too).
    pub fn new(shared: Arc<PlaceSlots<T>>) -> SharedPlaceMap<T> {
        SharedPlaceMap {
            held: PlaceSet::with_members(shared.slots.len()),
            own: PlaceMap::with_members(0),
            shared,
            len: 0,
        }
    }

    /// An empty map with slots of its own for places below `members`.
    pub fn with_members(members: usize) -> SharedPlaceMap<T> {
        SharedPlaceMap::new(Arc::new(PlaceSlots::with_members(members)))
    }

    pub fn contains(&self, place: u32) -> bool {
        self.held.contains(place as usize)
    }

    pub fn get(&self, place: u32) -> Option<&Arc<T>> {
        if !self.contains(place) {
            return None;
        }
        self.own.get(place).or_else(|| self.shared.get(place))
    }

    /// Keeps `value` for `place` unless it holds one; whether it was new.
    pub fn insert(&mut self, place: u32, value: Arc<T>) -> bool {
        if self.contains(place) {
            return false;
        }
        if let Err(value) = self.shared.take_or_match(place, value) {
            self.own.insert(place, value);
        }
        self.held.insert(place as usize);
        self.len += 1;
        true
    }

    /// Takes the value of `place` out.
    pub fn remove(&mut self, place: u32) -> Option<Arc<T>> {
        if !self.held.remove(place as usize) {
            return None;
        }
        self.len -= 1;
        self.own
            .remove(place)
            .or_else(|| self.shared.get(place).cloned())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The places held.
    pub fn places(&self) -> &PlaceSet {
        &self.held
    }

    /// Places and values, by place.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Arc<T>)> {
        self.held.iter().map(|place| {
            let place = u32::try_from(place).expect("places are u32");
            (place, self.get(place).expect("a held place has a value"))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn inserts_removes_and_lists_in_order() {
        let mut set = PlaceSet::with_members(130);
        assert!(set.is_empty());
        assert!(set.insert(129));
        assert!(set.insert(0));
        assert!(set.insert(64));
        assert!(!set.insert(64), "a second insert is not new");
        assert!(set.contains(129) && set.contains(0) && !set.contains(1));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 64, 129]);
        assert_eq!(set.len(), 3);
        assert!(set.remove(64));
        assert!(!set.remove(64));
        assert!(!set.contains(64));
        assert_eq!(set.len(), 2);
        // Beyond the members it was made for: absent, and it grows.
        assert!(!set.contains(1_000));
        assert!(!set.remove(1_000));
        assert!(set.insert(1_000));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 129, 1_000]);
    }

    #[test]
    fn a_place_map_finds_removes_and_orders() {
        let mut map = PlaceMap::with_members(100);
        assert!(map.insert(70, "a"));
        assert!(map.insert(3, "b"));
        assert!(map.insert(99, "c"));
        assert!(!map.insert(3, "x"), "a place holds its first value");
        assert_eq!(map.get(3), Some(&"b"));
        assert_eq!(map.get(4), None);
        assert_eq!(
            map.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            vec![70, 3, 99]
        );
        // Removing the first moves the last into its position.
        assert_eq!(map.remove(70), Some("a"));
        assert_eq!(map.remove(70), None);
        assert_eq!(map.get(99), Some(&"c"));
        assert_eq!(map.get(3), Some(&"b"));
        assert_eq!(map.len(), 2);
        assert!(
            map.insert(500, "e"),
            "places beyond the members are kept too"
        );
        assert_eq!(map.get(500), Some(&"e"));
        assert!(map.places().contains(500));
    }

    #[test]
    fn sets_with_the_same_places_are_equal_whatever_their_room() {
        let mut small = PlaceSet::default();
        let mut large = PlaceSet::with_members(1_000);
        assert_eq!(small, large);
        small.insert(5);
        assert_ne!(small, large);
        large.insert(5);
        assert_eq!(small, large);
        assert_eq!(large, small);
        large.insert(900);
        assert_ne!(small, large);
    }

    proptest::proptest! {
        /// A PlaceMap answers as a BTreeMap does, whether or not a lookup
        /// built its index before an insert or a removal.
        #[test]
        fn a_place_map_is_a_map(ops in proptest::collection::vec((0u8..4, 0u32..150), 0..200)) {
            let mut map = PlaceMap::with_members(100);
            let mut model = std::collections::BTreeMap::new();
            for (i, (op, place)) in ops.into_iter().enumerate() {
                match op {
                    0 => {
                        proptest::prop_assert_eq!(
                            map.insert(place, i),
                            !model.contains_key(&place)
                        );
                        model.entry(place).or_insert(i);
                    }
                    1 => proptest::prop_assert_eq!(map.remove(place), model.remove(&place)),
                    _ => proptest::prop_assert_eq!(map.get(place), model.get(&place)),
                }
                proptest::prop_assert_eq!(map.len(), model.len());
                proptest::prop_assert_eq!(map.contains(place), model.contains_key(&place));
            }
            let mut held: Vec<(u32, usize)> = map.iter().map(|(p, &v)| (p, v)).collect();
            held.sort_unstable();
            let expected: Vec<(u32, usize)> = model.into_iter().collect();
            proptest::prop_assert_eq!(held, expected);
        }

        /// Two maps over shared slots each answer as a BTreeMap of their
        /// own does, whichever of them fills a slot first and whether they
        /// are given the slot's very allocation, an equal one or another
        /// value (kept as their own); places beyond the slots are kept too.
        #[test]
        fn maps_sharing_slots_are_each_a_map(
            ops in proptest::collection::vec((0u8..2, 0u8..5, 0u32..40, 0u8..3), 0..300),
        ) {
            let slots = Arc::new(PlaceSlots::with_members(30));
            let mut maps = [SharedPlaceMap::new(slots.clone()), SharedPlaceMap::new(slots)];
            let mut models = [BTreeMap::new(), BTreeMap::new()];
            // Per place, a few candidate allocations (the second equal to
            // the first, the third another value).
            let values: Vec<[Arc<u32>; 3]> = (0..40)
                .map(|p| [Arc::new(p), Arc::new(p), Arc::new(p + 1_000)])
                .collect();
            for (who, op, place, which) in ops {
                let (map, model) = (&mut maps[usize::from(who)], &mut models[usize::from(who)]);
                match op {
                    0 | 1 => {
                        let value = values[place as usize][usize::from(which)].clone();
                        proptest::prop_assert_eq!(
                            map.insert(place, value.clone()),
                            !model.contains_key(&place)
                        );
                        model.entry(place).or_insert(value);
                    }
                    2 => proptest::prop_assert_eq!(
                        map.remove(place).map(|v| *v),
                        model.remove(&place).map(|v| *v)
                    ),
                    _ => proptest::prop_assert_eq!(
                        map.get(place).map(|v| **v),
                        model.get(&place).map(|v| **v)
                    ),
                }
                proptest::prop_assert_eq!(map.len(), model.len());
                proptest::prop_assert_eq!(map.contains(place), model.contains_key(&place));
            }
            for (map, model) in maps.iter().zip(&models) {
                let held: Vec<(u32, u32)> = map.iter().map(|(p, v)| (p, **v)).collect();
                let expected: Vec<(u32, u32)> = model.iter().map(|(&p, v)| (p, **v)).collect();
                proptest::prop_assert_eq!(held, expected);
            }
        }
    }

    /// An interval's table is found while a map holds it, and goes (with
    /// the values in it) when the last map does.
    #[test]
    fn slot_tables_last_as_long_as_a_map_holds_them() {
        let tables = SlotTables::with_members(4);
        let value = Arc::new(7u32);
        let mut map = SharedPlaceMap::new(tables.for_interval(IntervalIndex(1)));
        assert!(map.insert(0, value.clone()));
        let again = SharedPlaceMap::new(tables.for_interval(IntervalIndex(1)));
        assert!(
            Arc::ptr_eq(&map.shared, &again.shared),
            "one table per interval"
        );
        let other = tables.for_interval(IntervalIndex(2));
        assert!(!Arc::ptr_eq(&map.shared, &other));
        drop((map, again));
        assert_eq!(
            Arc::strong_count(&value),
            1,
            "the value went with the table"
        );
        let fresh = tables.for_interval(IntervalIndex(1));
        assert!(
            fresh.get(0).is_none(),
            "a new table for a forgotten interval"
        );
    }

    /// However many intervals are open at once, a node asking for a held
    /// interval's table gets the one the others hold; tables nobody holds
    /// are forgotten.
    #[test]
    fn held_tables_are_shared_however_many_intervals_are_open() {
        let tables = SlotTables::<u32>::with_members(4);
        let held: Vec<_> = (0..100)
            .map(|i| tables.for_interval(IntervalIndex(i)))
            .collect();
        for (i, table) in held.iter().enumerate() {
            let again = tables.for_interval(IntervalIndex(i as u64));
            assert!(Arc::ptr_eq(table, &again), "interval {i}'s table is shared");
        }
        drop(held);
        tables.for_interval(IntervalIndex(1000));
        let list = tables.tables.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(list.len(), 1, "tables nobody holds are forgotten");
    }

    /// A value another map put in the slot costs the second map only a
    /// bit; a different value for the place stays the second map's own.
    #[test]
    fn a_shared_slot_holds_the_first_value_kept() {
        let slots = Arc::new(PlaceSlots::with_members(4));
        let mut first = SharedPlaceMap::new(slots.clone());
        let mut second = SharedPlaceMap::new(slots.clone());
        let value = Arc::new("offer");
        assert!(first.insert(2, value.clone()));
        assert!(second.insert(2, value.clone()));
        assert_eq!(Arc::strong_count(&value), 2, "the slot holds one share");
        let other = Arc::new("equivocation");
        let mut third = SharedPlaceMap::new(slots);
        assert!(third.insert(2, other.clone()));
        assert!(Arc::ptr_eq(third.get(2).unwrap(), &other));
        assert!(Arc::ptr_eq(second.get(2).unwrap(), &value));
        assert_eq!(third.remove(2).as_deref(), Some(&"equivocation"));
        assert_eq!(second.remove(2).as_deref(), Some(&"offer"));
        assert!(first.contains(2) && !second.contains(2) && !third.contains(2));
    }
}
