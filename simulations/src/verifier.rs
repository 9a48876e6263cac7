//! Services shared by all simulated nodes of a market, so that work a
//! thousand nodes would each repeat on identical input is done once:
//!
//! - [`MemoVerifier`]: every distinct (key, message, signature) is checked
//!   once with ed25519 and remembered, and every member key is parsed once.
//!   The answer is still ed25519's; bad signatures are still refused.
//! - [`ClearingMemo`]: clearing is a pure function of the offer set, so the
//!   first node to clear a set with a given root computes the result and the
//!   others share it. Each node still builds its own set and computes its
//!   root, so nodes that hold different sets get different results. The
//!   traders of a result and the settlement of a result against the same
//!   reports are shared the same way, and so is a set's root among nodes
//!   holding the same ids (compared in full).

use std::collections::HashMap;
use std::hash::Hasher as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dharti_protocol::hash::{Hash32, IdHasher, IdMap};
use dharti_protocol::node::{ClearingCache, IntervalResult, SignedMeterReport};
use dharti_protocol::offer::SignatureError;
use dharti_protocol::places::PlaceSet;
use dharti_protocol::reconcile::IdSum;
use dharti_protocol::settlement::IntervalSettlement;
use dharti_protocol::types::{IntervalIndex, OfferId, ParticipantId};
use dharti_protocol::validation::set_root;
use dharti_protocol::verify::{
    Allocation, Ed25519Verifier, KeyCache, SharedMessage, SignatureItem, SignatureVerifier,
};
use ed25519_dalek::VerifyingKey;

/// What a remembered signature was checked against.
#[derive(Debug)]
struct Checked {
    key: [u8; 32],
    message: Box<[u8]>,
    valid: bool,
}

#[derive(Debug)]
pub(crate) struct MemoVerifier {
    /// By signature: ed25519 signatures are deterministic, so one signature
    /// names one (key, message); a hit is still compared in full.
    known: Mutex<IdMap<[u8; 64], Checked>>,
    keys: KeyCache,
    /// By allocation: the answer for every gossiped message some node has
    /// checked. Every other node that receives the allocation is answered
    /// by one lookup, without a lock.
    recalled: Recalled,
}

impl Default for MemoVerifier {
    fn default() -> Self {
        MemoVerifier::for_members(0)
    }
}

impl MemoVerifier {
    /// A verifier for a market of `members`, with room to recall a few
    /// messages per member and interval.
    pub(crate) fn for_members(members: usize) -> MemoVerifier {
        MemoVerifier {
            known: Mutex::default(),
            keys: KeyCache::default(),
            recalled: Recalled::with_room(members.saturating_mul(RECALLED_PER_MEMBER)),
        }
    }

    /// Starts a new generation of remembered allocations and forgets the one
    /// before the last, so that memory stays bounded over a long run. A
    /// forgotten message that arrives again is checked by signature (and is
    /// answered from `known`).
    pub(crate) fn age(&self) {
        self.recalled.age();
    }
}

/// Messages a generation recalls per member: an interval brings about one
/// or two offers, a meter report and an attestation per member. Past this,
/// a message is not remembered by allocation; it is still answered, by
/// signature.
const RECALLED_PER_MEMBER: usize = 8;

/// Fewest messages a generation recalls, for small markets and spam.
const RECALLED_AT_LEAST: usize = 2_048;

/// Answers by allocation in two generations (the newer is written, both
/// are read), each an open-addressing table of addresses with the answer
/// in the low bit. Reads take no lock: a simulated node asks once per
/// gossiped message it receives, where a mutex cost two atomic
/// read-modify-writes per ask, each draining the processor's store buffer.
/// Writes and ageing take the lock, and the lock holds each remembered
/// message alive, so that its address cannot name another message while a
/// slot holds it: a slot is cleared before its message is let go.
#[derive(Debug)]
struct Recalled {
    slots: [Box<[AtomicUsize]>; 2],
    /// Which of `slots` is the newer generation.
    newer: AtomicUsize,
    /// Per generation, the messages its slots name.
    held: Mutex<[Vec<SharedMessage>; 2]>,
    /// Messages a generation holds at most: half its slots (a power of
    /// two), so that probes stay short.
    room: usize,
}

impl Recalled {
    fn with_room(room: usize) -> Recalled {
        let room = room.max(RECALLED_AT_LEAST).next_power_of_two();
        let slots = || (0..room * 2).map(|_| AtomicUsize::new(0)).collect();
        Recalled {
            slots: [slots(), slots()],
            newer: AtomicUsize::new(0),
            held: Mutex::default(),
            room,
        }
    }

    /// Where probing for `address` starts in a table of `len` slots (a
    /// power of two).
    fn start(address: usize, len: usize) -> usize {
        // Fibonacci hashing of the address without its alignment bits.
        let mixed = ((address >> 3) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> 32) as usize & (len - 1)
    }

    /// The answer for `address` in one generation.
    fn find(slots: &[AtomicUsize], address: usize) -> Option<bool> {
        let len = slots.len();
        let start = Recalled::start(address, len);
        for probe in 0..len {
            let slot = slots[(start + probe) & (len - 1)].load(Ordering::Acquire);
            if slot == 0 {
                return None;
            }
            if slot & !1 == address {
                return Some(slot & 1 == 1);
            }
        }
        None
    }

    fn recall(&self, address: usize) -> Option<bool> {
        let newer = self.newer.load(Ordering::Acquire);
        Recalled::find(&self.slots[newer], address)
            .or_else(|| Recalled::find(&self.slots[1 - newer], address))
    }

    fn remember(&self, message: SharedMessage, valid: bool) {
        let address = Allocation::of(&message).address();
        debug_assert_eq!(address & 7, 0, "shared allocations are 8-byte aligned");
        let mut held = self.held.lock().expect("no panics while holding the lock");
        if self.recall(address).is_some() {
            return;
        }
        let newer = self.newer.load(Ordering::Acquire);
        if held[newer].len() >= self.room {
            return;
        }
        let slots = &self.slots[newer];
        let len = slots.len();
        let start = Recalled::start(address, len);
        for probe in 0..len {
            let slot = &slots[(start + probe) & (len - 1)];
            if slot.load(Ordering::Acquire) == 0 {
                held[newer].push(message);
                slot.store(address | usize::from(valid), Ordering::Release);
                return;
            }
        }
    }

    fn age(&self) {
        let mut held = self.held.lock().expect("no panics while holding the lock");
        let older = 1 - self.newer.load(Ordering::Acquire);
        for slot in self.slots[older].iter() {
            slot.store(0, Ordering::Release);
        }
        // Only now, with no slot naming them, may their addresses be reused.
        held[older].clear();
        self.newer.store(older, Ordering::Release);
    }
}

impl SignatureVerifier for MemoVerifier {
    fn verify(&self, items: &[SignatureItem<'_>]) -> Vec<bool> {
        let mut known = self.known.lock().expect("no panics while holding the lock");
        let mut answers: Vec<Option<bool>> = items
            .iter()
            .map(|item| {
                known.get(item.signature).and_then(|c| {
                    (c.key == *item.key.as_bytes() && *c.message == *item.message)
                        .then_some(c.valid)
                })
            })
            .collect();
        let unknown: Vec<usize> = (0..items.len()).filter(|&i| answers[i].is_none()).collect();
        if !unknown.is_empty() {
            let fresh: Vec<SignatureItem<'_>> = unknown.iter().map(|&i| items[i]).collect();
            let verdicts = Ed25519Verifier::default().verify(&fresh);
            for (&i, valid) in unknown.iter().zip(verdicts) {
                answers[i] = Some(valid);
                // A second (key, message) under a remembered signature is
                // checked every time rather than displacing the first.
                known.entry(*items[i].signature).or_insert_with(|| Checked {
                    key: *items[i].key.as_bytes(),
                    message: items[i].message.into(),
                    valid,
                });
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every item answered"))
            .collect()
    }

    fn key(&self, participant: &ParticipantId) -> Result<VerifyingKey, SignatureError> {
        self.keys.get(participant)
    }

    fn recall(&self, message: Allocation) -> Option<bool> {
        self.recalled.recall(message.address())
    }

    fn remember(&self, message: SharedMessage, valid: bool) {
        self.recalled.remember(message, valid);
    }
}

/// The reports one settlement was computed from, held so that their
/// addresses name them, and the settlement.
type SettledWith = (Vec<Arc<SignedMeterReport>>, Arc<IntervalSettlement>);

/// A set's sorted ids and their root.
type RootOf = (Arc<[OfferId]>, Hash32);

/// Clearing results by (interval, set root), and settlements by (interval,
/// result root, reports).
#[derive(Debug, Default)]
pub(crate) struct ClearingMemo {
    results: Mutex<IdMap<(IntervalIndex, Hash32), Arc<IntervalResult>>>,
    /// Keyed by a hash of the reports' addresses; a hit must also have the
    /// very same allocations, in the same order. The simulator hands every
    /// node the same report allocations, so nodes holding the same reports
    /// share one settlement, and a node holding a different set (one report
    /// missing) gets its own.
    settlements: Mutex<IdMap<(IntervalIndex, Hash32, u64), Vec<SettledWith>>>,
    /// Traders' places by (interval, result root).
    traders: Mutex<IdMap<(IntervalIndex, Hash32), Arc<PlaceSet>>>,
    /// Set roots by (interval, sum of the ids), each with the ids it is the
    /// root of: a hit must hold the very same ids, compared in full (a
    /// comparison of memory, where the root is a SHA-256 pass over it).
    roots: Mutex<HashMap<(IntervalIndex, IdSum), Vec<RootOf>>>,
}

impl ClearingMemo {
    /// Forgets intervals before `interval` (every node has finalized or
    /// given up on them).
    pub(crate) fn prune_before(&self, interval: IntervalIndex) {
        let mut results = self
            .results
            .lock()
            .expect("no panics while holding the lock");
        results.retain(|(i, _), _| *i >= interval);
        drop(results);
        self.settlements
            .lock()
            .expect("no panics while holding the lock")
            .retain(|(i, _, _), _| *i >= interval);
        self.traders
            .lock()
            .expect("no panics while holding the lock")
            .retain(|(i, _), _| *i >= interval);
        self.roots
            .lock()
            .expect("no panics while holding the lock")
            .retain(|(i, _), _| *i >= interval);
    }
}

/// The value `memo` holds for `key`, or what `compute` gives (kept). The
/// lock is not held while computing: clearing a thousand offers is long.
fn remembered<V: Clone>(
    memo: &Mutex<IdMap<(IntervalIndex, Hash32), V>>,
    key: (IntervalIndex, Hash32),
    compute: impl FnOnce() -> V,
) -> V {
    let lock = || memo.lock().expect("no panics while holding the lock");
    if let Some(value) = lock().get(&key) {
        return value.clone();
    }
    let value = compute();
    lock().entry(key).or_insert(value).clone()
}

impl ClearingCache for ClearingMemo {
    fn clear(
        &self,
        interval: IntervalIndex,
        set_root: &Hash32,
        clear: &mut dyn FnMut() -> IntervalResult,
    ) -> Arc<IntervalResult> {
        remembered(&self.results, (interval, *set_root), || Arc::new(clear()))
    }

    fn settle(
        &self,
        interval: IntervalIndex,
        result_root: &Hash32,
        reports: &[&Arc<SignedMeterReport>],
        settle: &mut dyn FnMut() -> IntervalSettlement,
    ) -> Arc<IntervalSettlement> {
        let mut hasher = IdHasher::default();
        for report in reports {
            hasher.write_usize(Arc::as_ptr(report) as usize >> 3);
        }
        let key = (interval, *result_root, hasher.finish());
        let same = |held: &[Arc<SignedMeterReport>]| {
            held.len() == reports.len() && held.iter().zip(reports).all(|(a, b)| Arc::ptr_eq(a, *b))
        };
        let mut settlements = self
            .settlements
            .lock()
            .expect("no panics while holding the lock");
        let known = settlements.entry(key).or_default();
        if let Some((_, settlement)) = known.iter().find(|(held, _)| same(held)) {
            return settlement.clone();
        }
        let settlement = Arc::new(settle());
        known.push((
            reports.iter().map(|&r| r.clone()).collect(),
            settlement.clone(),
        ));
        settlement
    }

    fn set_root(&self, interval: IntervalIndex, ids: &[OfferId], sum: &IdSum) -> Hash32 {
        let key = (interval, *sum);
        if let Some(known) = self
            .roots
            .lock()
            .expect("no panics while holding the lock")
            .get(&key)
            && let Some((_, root)) = known.iter().find(|(held, _)| **held == *ids)
        {
            return *root;
        }
        let root = set_root(ids);
        self.roots
            .lock()
            .expect("no panics while holding the lock")
            .entry(key)
            .or_default()
            .push((ids.into(), root));
        root
    }

    fn traders(
        &self,
        interval: IntervalIndex,
        result_root: &Hash32,
        traders: &mut dyn FnMut() -> PlaceSet,
    ) -> Arc<PlaceSet> {
        remembered(&self.traders, (interval, *result_root), || {
            Arc::new(traders())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dharti_protocol::node::MeterReport;
    use dharti_protocol::types::MarketId;
    use dharti_protocol::verify::check_shared;
    use ed25519_dalek::SigningKey;

    fn report(import_wh: u64) -> SignedMeterReport {
        let key = SigningKey::from_bytes(&[7; 32]);
        MeterReport {
            chain_id: 73_799,
            market: MarketId([1; 32]),
            interval: IntervalIndex(5),
            participant: ParticipantId(key.verifying_key().to_bytes()),
            import_wh,
            export_wh: 0,
        }
        .sign(&key)
    }

    /// Checks `signed` as a node does: through the memo, by allocation.
    fn check(memo: &MemoVerifier, signed: &Arc<SignedMeterReport>) -> Result<(), SignatureError> {
        check_shared(memo, signed, || {
            let key = memo.key(&signed.report.participant)?;
            signed.verify_with(memo, &key)
        })
    }

    #[test]
    fn an_allocation_is_recalled_and_a_forgery_elsewhere_is_still_refused() {
        let memo = MemoVerifier::default();
        let honest = Arc::new(report(100));
        assert_eq!(memo.recall(Allocation::of(&honest)), None);
        assert_eq!(check(&memo, &honest), Ok(()));
        assert_eq!(memo.recall(Allocation::of(&honest)), Some(true));
        // The same signature over another body, in its own allocation.
        let mut forged = report(100);
        forged.report.import_wh = 1;
        let forged = Arc::new(forged);
        assert_eq!(check(&memo, &forged), Err(SignatureError::Invalid));
        assert_eq!(memo.recall(Allocation::of(&forged)), Some(false));
        assert_eq!(check(&memo, &honest), Ok(()));
        // Two generations on, an allocation is forgotten (and checked again).
        memo.age();
        assert_eq!(memo.recall(Allocation::of(&honest)), Some(true));
        memo.age();
        assert_eq!(memo.recall(Allocation::of(&honest)), None);
        assert_eq!(check(&memo, &honest), Ok(()));
    }

    /// Two sets with the same sum and count (1 + 4 = 2 + 3) get their own
    /// roots: a hit needs the same ids, not just the same sum.
    #[test]
    fn a_root_is_shared_only_by_sets_of_the_same_ids() {
        let memo = ClearingMemo::default();
        let id = |n: u8| {
            let mut bytes = [0u8; 32];
            bytes[0] = n;
            OfferId(bytes)
        };
        let (one, two) = ([id(1), id(4)], [id(2), id(3)]);
        assert_eq!(IdSum::of(&one), IdSum::of(&two));
        let interval = IntervalIndex(5);
        for _ in 0..2 {
            assert_eq!(
                memo.set_root(interval, &one, &IdSum::of(&one)),
                set_root(&one)
            );
            assert_eq!(
                memo.set_root(interval, &two, &IdSum::of(&two)),
                set_root(&two)
            );
        }
        assert_ne!(set_root(&one), set_root(&two));
        let held = memo.roots.lock().expect("no panics while holding the lock");
        assert_eq!(
            held[&(interval, IdSum::of(&one))].len(),
            2,
            "one entry per set"
        );
    }

    #[test]
    fn settlements_are_shared_only_by_nodes_holding_the_same_reports() {
        let memo = ClearingMemo::default();
        let (a, b) = (Arc::new(report(100)), Arc::new(report(200)));
        let root = [3; 32];
        let mut computed = 0;
        let mut settle = |reports: &[&Arc<SignedMeterReport>]| {
            memo.settle(IntervalIndex(5), &root, reports, &mut || {
                computed += 1;
                IntervalSettlement {
                    interval: IntervalIndex(5),
                    grid_operator_micro: reports.len() as u64,
                    ..IntervalSettlement::default()
                }
            })
        };
        let both = settle(&[&a, &b]);
        let again = settle(&[&a, &b]);
        assert!(Arc::ptr_eq(&both, &again));
        // One report fewer, or an equal report in another allocation: settled anew.
        let one = settle(&[&a]);
        assert_eq!(one.grid_operator_micro, 1);
        let copy = Arc::new((*b).clone());
        let other = settle(&[&a, &copy]);
        assert!(!Arc::ptr_eq(&both, &other));
        assert_eq!(computed, 3);
    }
}
