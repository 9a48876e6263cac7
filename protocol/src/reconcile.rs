//! Range-based set reconciliation, after negentropy (Hoyt Kubrick's protocol
//! used by Nostr): two nodes find the differences between their sets of
//! offer ids in a few round trips, sending little more than the differences.
//!
//! The id space is cut into consecutive ranges; a message lists ranges in
//! order, each with an exclusive upper bound (the first starts at the lowest
//! id) and a payload:
//! - `Skip`: nothing to do here;
//! - `Fingerprint`: the sender's fingerprint and count of its ids in the range;
//! - `Ids`: the sender's ids in the range, listed.
//!
//! On a fingerprint that matches its own, a node answers `Skip`. On one that
//! does not, it lists its ids if it has at most [`MAX_LISTED_IDS`] in the
//! range, and otherwise splits its ids there into [`BRANCHING`] sub-ranges with
//! their fingerprints. On a list, it knows both sides of the range: it sends
//! the offers the peer lacks, asks for those it lacks, and answers `Skip`.
//! When a reply would be all `Skip`, reconciliation is done.
//!
//! Fingerprint of a range: the first 16 bytes of
//! `SHA-256("DHARTI-RANGE-V1" || Σ ids mod 2^256 || count u64)`, the sum taking
//! ids as little-endian 256-bit numbers, as in negentropy.
//!
//! Size bound: a reply stops growing at [`MAX_MESSAGE_BYTES`]; everything
//! past the budget becomes one last range with the node's own fingerprint, so
//! it is picked up again in the next round instead of being lost.

use serde::{Deserialize, Serialize};

use crate::hash::Hasher;
use crate::types::OfferId;

/// A range with at most this many ids is listed rather than split. 64 ids
/// are 2 KiB; splitting them instead would send 16 fingerprinted sub-ranges
/// of four ids (almost 1 KiB) and then list the differing ones, for another
/// round trip and a hash per sub-range. Where sets of a thousand differ by a
/// few percent, as after lossy gossip, listing sends about 6 % more bytes and
/// costs a quarter of the hashing (32 listed a range only after a second
/// split).
pub const MAX_LISTED_IDS: usize = 64;
/// Sub-ranges per split. 16 resolves 2,000 ids in three rounds.
pub const BRANCHING: usize = 16;
/// Budget of one reconciliation message, well inside gossipsub's and the
/// request-response limits (64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 48 * 1024;

/// Exclusive upper bound of a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Bound {
    Id(OfferId),
    End,
}

impl Bound {
    fn admits(&self, id: &OfferId) -> bool {
        match self {
            Bound::Id(upper) => id < upper,
            Bound::End => true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    Skip,
    Fingerprint { fingerprint: [u8; 16], count: u64 },
    Ids(Vec<OfferId>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub upper: Bound,
    pub payload: Payload,
}

/// One reconciliation message: ranges covering the whole id space, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileMessage {
    pub ranges: Vec<Range>,
}

/// Why a message is not a well-formed reconciliation message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    #[error("ranges are not in increasing order or do not end at the end of the id space")]
    Ranges,
    #[error("a listed id lies outside its range")]
    IdOutsideRange,
    #[error("message larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
}

/// What a node does with an incoming message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// The reply, or `None` when the sets are reconciled as far as this
    /// message goes.
    pub reply: Option<ReconcileMessage>,
    /// Ids this node has and the peer lacks: send the peer these offers.
    pub send: Vec<OfferId>,
    /// Ids the peer has and this node lacks: ask the peer for these offers.
    pub want: Vec<OfferId>,
}

const RANGE_DOMAIN: &[u8; 15] = b"DHARTI-RANGE-V1";

/// Σ ids mod 2^256 (ids as little-endian 256-bit numbers), the additive
/// part of a fingerprint: a set that changes by one id updates it with one
/// [`IdSum::add`] or [`IdSum::sub`], so a node keeps its whole set's sum
/// instead of summing two thousand ids for every message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdSum {
    limbs: [u64; 4],
    count: u64,
}

impl IdSum {
    pub fn of(ids: &[OfferId]) -> IdSum {
        // Each limb column summed on its own in 128 bits, the carries
        // between columns made once at the end: four independent additions
        // per id instead of a chain of eight through the carries. Exact:
        // 2^64 ids could not overflow a column.
        let mut columns = [0u128; 4];
        for id in ids {
            for (column, word) in columns.iter_mut().zip(IdSum::words(id)) {
                *column += u128::from(word);
            }
        }
        let mut sum = IdSum {
            limbs: [0; 4],
            count: ids.len() as u64,
        };
        let mut carry = 0u128;
        for (limb, column) in sum.limbs.iter_mut().zip(columns) {
            let total = column + carry;
            // The low word stays in the limb; the rest carries on.
            #[allow(clippy::cast_possible_truncation)]
            let low = total as u64;
            *limb = low;
            carry = total >> 64;
        }
        sum
    }

    fn words(id: &OfferId) -> impl Iterator<Item = u64> + '_ {
        id.0.chunks_exact(8)
            .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("8 bytes")))
    }

    pub fn add(&mut self, id: &OfferId) {
        let mut carry = 0u64;
        for (limb, word) in self.limbs.iter_mut().zip(IdSum::words(id)) {
            let (low, overflow_a) = limb.overflowing_add(word);
            let (low, overflow_b) = low.overflowing_add(carry);
            *limb = low;
            carry = u64::from(overflow_a) + u64::from(overflow_b);
        }
        self.count += 1;
    }

    pub fn sub(&mut self, id: &OfferId) {
        let mut borrow = 0u64;
        for (limb, word) in self.limbs.iter_mut().zip(IdSum::words(id)) {
            let (low, under_a) = limb.overflowing_sub(word);
            let (low, under_b) = low.overflowing_sub(borrow);
            *limb = low;
            borrow = u64::from(under_a) + u64::from(under_b);
        }
        self.count -= 1;
    }

    /// The fingerprint of the ids summed.
    pub fn fingerprint(&self) -> [u8; 16] {
        let mut h = Hasher::new(RANGE_DOMAIN);
        for limb in self.limbs {
            h.write_u64(limb);
        }
        h.write_u64(self.count);
        let digest = h.finish();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        out
    }
}

/// The fingerprint of a sorted slice of ids.
pub fn fingerprint(ids: &[OfferId]) -> [u8; 16] {
    IdSum::of(ids).fingerprint()
}

fn fingerprint_payload(ids: &[OfferId]) -> Payload {
    Payload::Fingerprint {
        fingerprint: fingerprint(ids),
        count: ids.len() as u64,
    }
}

/// Encoded size of a range, for the budget: bound (33) + payload tag and body.
fn range_bytes(range: &Range) -> usize {
    33 + match &range.payload {
        Payload::Skip => 1,
        Payload::Fingerprint { .. } => 1 + 16 + 8,
        Payload::Ids(ids) => 1 + 8 + 32 * ids.len(),
    }
}

impl ReconcileMessage {
    /// Encoded size in bytes (as counted against [`MAX_MESSAGE_BYTES`]).
    pub fn size_bytes(&self) -> usize {
        8 + self.ranges.iter().map(range_bytes).sum::<usize>()
    }

    /// Checks the structure of a message from a peer.
    pub fn check(&self) -> Result<(), ReconcileError> {
        if self.size_bytes() > MAX_MESSAGE_BYTES {
            return Err(ReconcileError::TooLarge);
        }
        if self.ranges.last().map(|r| r.upper) != Some(Bound::End)
            || self.ranges.windows(2).any(|w| w[0].upper >= w[1].upper)
        {
            return Err(ReconcileError::Ranges);
        }
        let mut lower: Option<OfferId> = None;
        for range in &self.ranges {
            if let Payload::Ids(ids) = &range.payload {
                // Strictly ascending, so inside the range if its ends are.
                let ascending = ids.windows(2).all(|w| w[0] < w[1]);
                let in_range = match (ids.first(), ids.last()) {
                    (Some(first), Some(last)) => {
                        lower.is_none_or(|l| *first >= l) && range.upper.admits(last)
                    }
                    _ => true,
                };
                if !in_range || !ascending {
                    return Err(ReconcileError::IdOutsideRange);
                }
            }
            if let Bound::Id(upper) = range.upper {
                lower = Some(upper);
            }
        }
        Ok(())
    }
}

/// The first message, from the node that starts: its whole set as one range.
pub fn initiate(own: &[OfferId]) -> ReconcileMessage {
    initiate_with(own, &IdSum::of(own))
}

/// [`initiate`] with the sum of `own` already known.
pub fn initiate_with(own: &[OfferId], whole: &IdSum) -> ReconcileMessage {
    let payload = if own.len() <= MAX_LISTED_IDS {
        Payload::Ids(own.to_vec())
    } else {
        Payload::Fingerprint {
            fingerprint: whole.fingerprint(),
            count: whole.count,
        }
    };
    ReconcileMessage {
        ranges: vec![Range {
            upper: Bound::End,
            payload,
        }],
    }
}

/// Answers `incoming` given this node's sorted, unique ids.
pub fn respond(own: &[OfferId], incoming: &ReconcileMessage) -> Result<Step, ReconcileError> {
    respond_with(own, &IdSum::of(own), incoming)
}

/// [`respond`] with the sum of `own` already known: a range that spans the
/// whole set (the first message of every exchange) costs no pass over it.
pub fn respond_with(
    own: &[OfferId],
    whole: &IdSum,
    incoming: &ReconcileMessage,
) -> Result<Step, ReconcileError> {
    incoming.check()?;
    debug_assert!(
        own.windows(2).all(|w| w[0] < w[1]),
        "own ids must be sorted and unique"
    );
    let mut step = Step::default();
    let mut reply: Vec<Range> = Vec::new();
    let mut budget = MAX_MESSAGE_BYTES - 8;
    // Room always kept for the range that defers the rest of the id space.
    const TAIL_BYTES: usize = 33 + 1 + 16 + 8;
    let mut start = 0; // index into `own` of the current range's lower bound
    for range in &incoming.ranges {
        let end = end_of_range(own, start, &range.upper);
        let mine = &own[start..end];
        let answer: Vec<Range> = match &range.payload {
            Payload::Skip => vec![Range {
                upper: range.upper,
                payload: Payload::Skip,
            }],
            Payload::Fingerprint {
                fingerprint: theirs,
                count,
            } => {
                let ours = if mine.len() == own.len() {
                    whole.fingerprint()
                } else {
                    fingerprint(mine)
                };
                if *theirs == ours && *count == mine.len() as u64 {
                    vec![Range {
                        upper: range.upper,
                        payload: Payload::Skip,
                    }]
                } else if mine.len() <= MAX_LISTED_IDS {
                    vec![Range {
                        upper: range.upper,
                        payload: Payload::Ids(mine.to_vec()),
                    }]
                } else {
                    split(mine, range.upper)
                }
            }
            Payload::Ids(theirs) => {
                diff(mine, theirs, &mut step);
                vec![Range {
                    upper: range.upper,
                    payload: Payload::Skip,
                }]
            }
        };
        let cost: usize = answer.iter().map(range_bytes).sum();
        if cost + TAIL_BYTES > budget {
            // Over budget: one last range from here to the end with our
            // fingerprint; the peer picks the rest up in the next round.
            reply.push(Range {
                upper: Bound::End,
                payload: fingerprint_payload(&own[start..]),
            });
            break;
        }
        budget -= cost;
        for range in answer {
            match (reply.last_mut(), &range.payload) {
                (Some(last), Payload::Skip) if last.payload == Payload::Skip => {
                    last.upper = range.upper
                }
                _ => reply.push(range),
            }
        }
        start = end;
    }
    let done = reply.iter().all(|r| r.payload == Payload::Skip);
    step.reply = (!done).then_some(ReconcileMessage { ranges: reply });
    Ok(step)
}

/// Where the range from `start` up to `upper` ends in the sorted `ids`:
/// `start + ids[start..].partition_point(|id| upper.admits(id))`. Ids are
/// SHA-256 digests, evenly spread, so interpolating the bound's leading
/// word between the first and last id guesses the place to within a few
/// dozen; a gallop from the guess then finds it in a few probes close
/// together, where a binary search makes ten spread over the whole array
/// (cache misses on a set a node has not touched for a while). Any spread
/// of (sorted) ids gives the right answer; uneven ones only take more probes.
fn end_of_range(ids: &[OfferId], start: usize, upper: &Bound) -> usize {
    let Bound::Id(upper) = upper else {
        return ids.len();
    };
    let rest = &ids[start..];
    let n = rest.len();
    if n == 0 {
        return start;
    }
    let admitted = |i: usize| rest[i] < *upper;
    let (first, last, word) = (
        rest[0].leading_word(),
        rest[n - 1].leading_word(),
        upper.leading_word(),
    );
    let guess = if word <= first {
        0
    } else if word > last {
        n
    } else {
        let spread = u128::from(last - first).max(1);
        (u128::from(word - first) * (n as u128 - 1) / spread) as usize
    };
    // Bracket the end: every id below `low` is admitted, none from `high` on.
    let (mut low, mut high);
    if guess < n && admitted(guess) {
        low = guess + 1;
        high = n;
        let mut step = 1;
        while guess + step < n {
            if admitted(guess + step) {
                low = guess + step + 1;
                step *= 2;
            } else {
                high = guess + step;
                break;
            }
        }
    } else {
        low = 0;
        high = guess;
        let mut step = 1;
        while step <= guess {
            if admitted(guess - step) {
                low = guess - step + 1;
                break;
            }
            high = guess - step;
            step *= 2;
        }
    }
    start + low + rest[low..high].partition_point(|id| id < upper)
}

/// Splits `mine` (more than [`MAX_LISTED_IDS`] ids) into [`BRANCHING`]
/// fingerprinted sub-ranges, the last ending at `upper`.
fn split(mine: &[OfferId], upper: Bound) -> Vec<Range> {
    let per = mine.len().div_ceil(BRANCHING);
    let chunks: Vec<&[OfferId]> = mine.chunks(per).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| Range {
            upper: chunks.get(i + 1).map_or(upper, |next| Bound::Id(next[0])),
            payload: fingerprint_payload(chunk),
        })
        .collect()
}

/// Both sides of a range known: what to send and what to ask for.
fn diff(mine: &[OfferId], theirs: &[OfferId], step: &mut Step) {
    let (mut i, mut j) = (0, 0);
    while i < mine.len() || j < theirs.len() {
        match (mine.get(i), theirs.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                step.send.push(*a);
                i += 1;
            }
            (Some(_), Some(b)) => {
                step.want.push(*b);
                j += 1;
            }
            (Some(a), None) => {
                step.send.push(*a);
                i += 1;
            }
            (None, Some(b)) => {
                step.want.push(*b);
                j += 1;
            }
            (None, None) => unreachable!("loop condition"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::hash::sha256;

    fn id(n: u32) -> OfferId {
        OfferId(sha256(&n.to_le_bytes()))
    }

    /// Runs reconciliation between two sets to the end; returns the sets after
    /// applying every send and want, the rounds and the largest message.
    fn run(
        a: &BTreeSet<OfferId>,
        b: &BTreeSet<OfferId>,
    ) -> (BTreeSet<OfferId>, BTreeSet<OfferId>, usize, usize) {
        let (mut a_has, mut b_has) = (a.clone(), b.clone());
        let a_ids: Vec<OfferId> = a.iter().copied().collect();
        let b_ids: Vec<OfferId> = b.iter().copied().collect();
        let mut message = initiate(&a_ids);
        let mut largest = message.size_bytes();
        let mut rounds = 0;
        let mut b_turn = true;
        loop {
            rounds += 1;
            assert!(rounds < 40, "reconciliation does not terminate");
            let (own, peer_has, me_has) = if b_turn {
                (&b_ids, &mut a_has, &mut b_has)
            } else {
                (&a_ids, &mut b_has, &mut a_has)
            };
            let step = respond(own, &message).unwrap();
            for id in &step.send {
                peer_has.insert(*id);
            }
            for id in &step.want {
                me_has.insert(*id);
            }
            match step.reply {
                None => break,
                Some(reply) => {
                    largest = largest.max(reply.size_bytes());
                    message = reply;
                }
            }
            b_turn = !b_turn;
        }
        (a_has, b_has, rounds, largest)
    }

    #[test]
    fn equal_sets_finish_in_one_round() {
        let set: BTreeSet<OfferId> = (0..2_000).map(id).collect();
        let (a, b, rounds, largest) = run(&set, &set);
        assert_eq!((a, b.len(), rounds), (set, 2_000, 1));
        assert!(largest < 100);
    }

    #[test]
    fn a_few_differences_in_two_thousand_take_few_rounds_and_little_traffic() {
        let a: BTreeSet<OfferId> = (0..2_000).map(id).collect();
        let b: BTreeSet<OfferId> = (5..2_003).map(id).collect();
        let (a_after, b_after, rounds, largest) = run(&a, &b);
        let union: BTreeSet<OfferId> = a.union(&b).copied().collect();
        assert_eq!(a_after, union);
        assert_eq!(b_after, union);
        assert!(rounds <= 5, "{rounds} rounds");
        assert!(largest <= 8 * 1024, "{largest} bytes");
    }

    #[test]
    fn disjoint_sets_stay_within_the_message_budget() {
        let a: BTreeSet<OfferId> = (0..3_000).map(id).collect();
        let b: BTreeSet<OfferId> = (3_000..6_000).map(id).collect();
        let (a_after, b_after, _, largest) = run(&a, &b);
        assert_eq!(a_after.len(), 6_000);
        assert_eq!(b_after.len(), 6_000);
        assert!(largest <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn malformed_messages_are_refused() {
        let unordered = ReconcileMessage {
            ranges: vec![
                Range {
                    upper: Bound::Id(OfferId([9; 32])),
                    payload: Payload::Skip,
                },
                Range {
                    upper: Bound::Id(OfferId([3; 32])),
                    payload: Payload::Skip,
                },
                Range {
                    upper: Bound::End,
                    payload: Payload::Skip,
                },
            ],
        };
        assert_eq!(respond(&[], &unordered), Err(ReconcileError::Ranges));
        let open_ended = ReconcileMessage {
            ranges: vec![Range {
                upper: Bound::Id(OfferId([3; 32])),
                payload: Payload::Skip,
            }],
        };
        assert_eq!(respond(&[], &open_ended), Err(ReconcileError::Ranges));
        let outside = ReconcileMessage {
            ranges: vec![
                Range {
                    upper: Bound::Id(OfferId([3; 32])),
                    payload: Payload::Ids(vec![OfferId([5; 32])]),
                },
                Range {
                    upper: Bound::End,
                    payload: Payload::Skip,
                },
            ],
        };
        assert_eq!(respond(&[], &outside), Err(ReconcileError::IdOutsideRange));
        // Listed ids out of order, or below the range's lower end.
        for (first_range, second_range) in [
            (vec![], vec![OfferId([7; 32]), OfferId([5; 32])]),
            (vec![], vec![OfferId([2; 32]), OfferId([5; 32])]),
            (vec![OfferId([1; 32]), OfferId([1; 32])], vec![]),
        ] {
            let bad = ReconcileMessage {
                ranges: vec![
                    Range {
                        upper: Bound::Id(OfferId([3; 32])),
                        payload: Payload::Ids(first_range),
                    },
                    Range {
                        upper: Bound::End,
                        payload: Payload::Ids(second_range),
                    },
                ],
            };
            assert_eq!(respond(&[], &bad), Err(ReconcileError::IdOutsideRange));
        }
        let huge = ReconcileMessage {
            ranges: vec![Range {
                upper: Bound::End,
                payload: Payload::Ids((0..2_000).map(id).collect()),
            }],
        };
        assert_eq!(respond(&[], &huge), Err(ReconcileError::TooLarge));
    }

    proptest! {
        #[test]
        fn any_two_sets_reconcile_to_their_union(
            a in prop::collection::btree_set(0u32..3_000, 0..600),
            b in prop::collection::btree_set(0u32..3_000, 0..600),
        ) {
            let a: BTreeSet<OfferId> = a.into_iter().map(id).collect();
            let b: BTreeSet<OfferId> = b.into_iter().map(id).collect();
            let union: BTreeSet<OfferId> = a.union(&b).copied().collect();
            let (a_after, b_after, _, largest) = run(&a, &b);
            prop_assert_eq!(&a_after, &union);
            prop_assert_eq!(&b_after, &union);
            prop_assert!(largest <= MAX_MESSAGE_BYTES);
        }

        /// A sum taken at once is the sum added id by id, carries and all
        /// (ids of all ones make every column carry).
        #[test]
        fn a_sum_at_once_is_the_sum_id_by_id(
            ids in prop::collection::vec(prop_oneof![any::<[u8; 32]>().prop_map(OfferId), Just(OfferId([0xff; 32]))], 0..300),
        ) {
            let mut one_by_one = IdSum::default();
            for id in &ids {
                one_by_one.add(id);
            }
            prop_assert_eq!(IdSum::of(&ids), one_by_one);
            for id in &ids {
                one_by_one.sub(id);
            }
            prop_assert_eq!(one_by_one, IdSum::default());
        }

        /// The guessed-and-galloped end of a range is the binary search's,
        /// for even ids and for uneven ones (leading words bunched in a few
        /// values, shared prefixes), from any start and for any bound.
        #[test]
        fn a_range_ends_where_a_binary_search_says(
            words in prop::collection::btree_set((0u64..6, 0u64..u64::MAX, any::<u8>()), 0..300),
            bunched in any::<bool>(),
            start_at in any::<prop::sample::Index>(),
            bounds in prop::collection::vec((0u64..6, 0u64..u64::MAX, any::<u8>()), 1..20),
        ) {
            let make = |(bunch, word, tail): (u64, u64, u8)| {
                let lead = if bunched { bunch << 60 } else { word };
                let mut bytes = [tail; 32];
                bytes[..8].copy_from_slice(&lead.to_be_bytes());
                OfferId(bytes)
            };
            let ids: Vec<OfferId> = words
                .into_iter()
                .map(make)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let start = start_at.index(ids.len() + 1);
            for bound in bounds {
                let upper = Bound::Id(make(bound));
                let expected = start + ids[start..].partition_point(|id| upper.admits(id));
                prop_assert_eq!(end_of_range(&ids, start, &upper), expected);
            }
            prop_assert_eq!(end_of_range(&ids, start, &Bound::End), ids.len());
        }
    }
}
