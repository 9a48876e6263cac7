//! Validation of arriving offers: every offer gets Accept, Ignore or
//! Reject(reason), never a panic. Reject means the sender broke a rule (the
//! network layer scores it down); Ignore means the message is harmless but
//! useless (a duplicate, a stale replacement).
//!
//! Checks run cheapest first, and the signature is checked before anything
//! that changes state, so nobody can cancel, replace or frame someone else's
//! offer:
//! 1. chain, market ([`Reject::WrongChain`], [`Reject::WrongMarket`]);
//! 2. interval still open and not too far ahead;
//! 3. energy and price within the market's bounds;
//! 4. an offer already held, or one a void participant's evidence does not
//!    need, is ignored before the (expensive) signature check;
//! 5. the signature (one by one, or in a batch);
//! 6. the participant's offers for the interval: per side, a higher sequence
//!    number replaces, energy 0 cancels, a lower one is stale; two different
//!    offers with the same sequence number are an equivocation, and more than
//!    `max_offers_per_participant` offers are too many: either way the
//!    participant is void for the interval (all its offers leave the book) and
//!    the offers that prove it are kept as evidence.
//!
//! The pool keeps every valid offer, stale ones included, so that what it
//! holds depends only on which offers arrived, never on their order. That is
//! what lets nodes that heard the same offers in different orders agree.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::clearing::{Mechanism, Order};
use crate::hash::{Hash32, Hasher, IdMap};
use crate::intervals::IntervalMap;
use crate::offer::{Offer, SignatureError, SignedOffer, verify_offers};
use crate::places::{PlaceSet, PlaceSlots, SharedPlaceMap, SlotTables};
use crate::reconcile::IdSum;
use crate::tariff::TariffSchedule;
use crate::types::{IntervalClock, IntervalIndex, MarketId, OfferId, ParticipantId, Side};
use crate::verify::{Allocation, Ed25519Verifier, SignatureVerifier, check_shared};

/// The rules of one market that offers are checked against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketRules {
    pub chain_id: u64,
    pub market_id: MarketId,
    pub clock: IntervalClock,
    /// How many intervals beyond the current one accept offers (default 96:
    /// one day of 15-minute intervals, so agents can plan a day ahead while a
    /// node holds a bounded number of open intervals).
    pub max_intervals_ahead: u64,
    /// Most energy one offer may carry (default 100 kWh: far above what a
    /// household connection delivers in an interval, far below abuse).
    pub max_offer_energy_wh: u64,
    /// Most offers (first offers, replacements and cancels together) one
    /// participant may send for one interval (default 16). Bounds the state a
    /// spammer can make every node keep.
    pub max_offers_per_participant: u32,
    pub tariffs: TariffSchedule,
    pub mechanism: Mechanism,
}

/// Default for [`MarketRules::max_intervals_ahead`].
pub const DEFAULT_MAX_INTERVALS_AHEAD: u64 = 96;
/// Default for [`MarketRules::max_offer_energy_wh`].
pub const DEFAULT_MAX_OFFER_ENERGY_WH: u64 = 100_000;
/// Default for [`MarketRules::max_offers_per_participant`].
pub const DEFAULT_MAX_OFFERS_PER_PARTICIPANT: u32 = 16;

/// The verdict on one arriving offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Validation {
    Accept(Accepted),
    Ignore(Ignored),
    Reject(Reject),
}

/// Why an offer was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// The first offer in its slot.
    New,
    /// It replaced an offer with a lower sequence number.
    Replaced { previous: OfferId },
    /// Energy 0: it cancels the offer in force, if one has arrived yet (a
    /// cancel may overtake the offer it cancels).
    Cancelled { previous: Option<OfferId> },
}

/// Why an offer was ignored (no fault of the sender's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// The pool already holds this offer.
    Duplicate,
    /// A higher sequence number is already in the slot.
    Stale,
    /// The participant is void for this interval (it equivocated or sent
    /// too many offers); the offer is kept only if it is needed as evidence.
    SlotVoid,
}

/// Why an offer was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("bad signature: {0}")]
    BadSignature(#[from] SignatureError),
    #[error("offer is for chain {got}, this market is on chain {expected}")]
    WrongChain { got: u64, expected: u64 },
    #[error("offer is for another market")]
    WrongMarket,
    #[error("interval {0} is closed for offers")]
    IntervalClosed(u64),
    #[error("interval {interval} is more than {max_ahead} intervals ahead")]
    TooFarAhead { interval: u64, max_ahead: u64 },
    #[error("offer has zero energy and sequence 0, so it can cancel nothing")]
    ZeroEnergy,
    #[error("offer has {energy_wh} Wh, more than the market's maximum of {max_wh} Wh")]
    Oversized { energy_wh: u64, max_wh: u64 },
    #[error("price {price} is outside the tariff bounds [{feed_in}, {retail}]")]
    PriceOutOfBounds {
        price: u64,
        feed_in: u64,
        retail: u64,
    },
    #[error(
        "participant sent more than {0} offers for this interval; all its offers for it are void"
    )]
    TooManyOffers(u32),
    #[error("equivocation: two different offers with the same sequence number")]
    Equivocation(Box<Equivocation>),
}

/// Two validly signed, different offers for one slot with one sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Equivocation {
    pub first: SignedOffer,
    pub second: SignedOffer,
}

/// Everything valid that one participant sent for one interval. While the
/// participant is within the limit that is all of it; once it is over (or
/// has equivocated, see [`Sent::is_void`]) only the `limit + 1` smallest ids
/// are kept, which is enough to prove it to anyone.
#[derive(Clone, Debug, Default)]
struct Sent {
    /// Sorted by id. A vector, not a map: a participant has a handful of
    /// offers. Shared (`Arc`): the message that brought an offer, the pool
    /// and the replies to peers hold one copy.
    offers: SmallVec<[Arc<SignedOffer>; 2]>,
    /// Whether the participant is void for the interval: once it has two
    /// conflicting offers or more than the limit, it stays so (trimming keeps
    /// `limit + 1` offers), so the flag is set once, on the offer that does it.
    void: bool,
}

/// A participant's offers for an interval, however the pool keeps them.
#[derive(Clone, Copy, Debug)]
struct SentRef<'a> {
    offers: &'a [Arc<SignedOffer>],
    void: bool,
}

impl<'a> SentRef<'a> {
    /// A kept offer that conflicts with `new`: same side and sequence
    /// number, different body.
    fn conflicting(self, new: &SignedOffer) -> Option<&'a Arc<SignedOffer>> {
        self.offers.iter().find(|o| {
            o.offer.side == new.offer.side
                && o.offer.sequence == new.offer.sequence
                && o.offer != new.offer
        })
    }

    /// The offer in force for `side`: the highest sequence number; equal
    /// sequence numbers here have equal bodies, the smallest id stands for them.
    fn head(self, side: Side) -> Option<&'a Arc<SignedOffer>> {
        self.offers
            .iter()
            .filter(|o| o.offer.side == side)
            .max_by(|a, b| {
                a.offer
                    .sequence
                    .cmp(&b.offer.sequence)
                    .then(b.id.cmp(&a.id))
            })
    }

    fn position(self, id: &OfferId) -> Result<usize, usize> {
        self.offers.binary_search_by_key(id, |o| o.id)
    }

    fn contains(self, id: &OfferId) -> bool {
        self.position(id).is_ok()
    }

    fn find(self, id: &OfferId) -> Option<&'a Arc<SignedOffer>> {
        self.position(id).ok().map(|at| &self.offers[at])
    }
}

impl Sent {
    fn as_ref(&self) -> SentRef<'_> {
        SentRef {
            offers: &self.offers,
            void: self.void,
        }
    }

    fn insert(&mut self, offer: Arc<SignedOffer>) {
        if let Err(at) = self.as_ref().position(&offer.id) {
            self.offers.insert(at, offer);
        }
    }

    /// Keeps the `keep` smallest ids.
    fn trim(&mut self, keep: usize) {
        while self.offers.len() > keep {
            self.offers.pop();
        }
    }
}

/// The offers of one interval, per participant.
///
/// A member that sent one offer (most members, most intervals: every member
/// in honest simulations) is an entry in `first`. A simulator holds a
/// thousand nodes' pools, and an arriving offer is checked against its
/// sender's entry in a pool that is cold: [`SharedPlaceMap`] tests and sets
/// a bit per member, and a thousand nodes' bits stay in the processor's
/// cache, where a pointer per member missed it on nearly every arrival (and
/// a list of a node's own, appended to, wrote a cold line on every one).
///
/// In the order written (`repr(C)`): what a member's first offer reads and
/// writes comes first.
#[derive(Clone, Debug)]
#[repr(C)]
struct IntervalPool {
    /// The only offer of a member that sent one and is not void (mostly
    /// a bit: the nodes sharing [`OfferPool::for_shared`] slots share it).
    first: SharedPlaceMap<SignedOffer>,
    /// The members that sent more, or are void, and their offers. The
    /// bitset repeats `many`'s keys, so that the common miss (a member not
    /// in `many`) costs a bit, not a tree search.
    many_places: PlaceSet,
    many: BTreeMap<u32, Sent>,
    /// The market's members with their places, when the pool knows them
    /// ([`OfferPool::for_members`]).
    members: Option<Arc<IdMap<ParticipantId, u32>>>,
    /// Anyone else's, hashed. What depends on an order (the set, the
    /// book's ranking) sorts.
    others: IdMap<ParticipantId, Sent>,
    /// The reconciliation set, sorted by id, built on first use and then
    /// kept up to date as offers arrive (a rebuild only when a participant
    /// turns void). Reconciliation asks for it once per message.
    set: OnceLock<SetView>,
    /// The set's root, computed on first use after a change.
    root: OnceLock<Hash32>,
}

#[derive(Clone, Debug)]
struct SetView {
    ids: Vec<OfferId>,
    /// Where the offer of each of `ids` is kept, in the same order: its
    /// participant's place, or [`NOT_A_MEMBER`]. The view holds no share
    /// of the offers themselves: a thousand simulated nodes building theirs
    /// at gate closure each took, and later dropped, a share of every
    /// offer, two atomic operations apiece.
    places: Vec<u32>,
    /// The ids' sum, for reconciliation fingerprints.
    sum: IdSum,
}

/// [`SetView::places`] of an offer from outside the member list (kept in
/// [`IntervalPool::others`]).
const NOT_A_MEMBER: u32 = u32::MAX;

/// Many kept offers of one pool, looked up by place and id: the first
/// non-member's offer asked for indexes them all, where
/// [`IntervalPool::offer_at`] scans them (a pool without a member list
/// holds every offer there).
struct OfferLookup<'a> {
    pool: &'a IntervalPool,
    others: Option<IdMap<OfferId, &'a Arc<SignedOffer>>>,
}

impl<'a> OfferLookup<'a> {
    fn new(pool: &'a IntervalPool) -> OfferLookup<'a> {
        OfferLookup { pool, others: None }
    }

    fn get(&mut self, place: u32, id: &OfferId) -> Option<&'a Arc<SignedOffer>> {
        if place != NOT_A_MEMBER {
            return self.pool.offer_at(place, id);
        }
        let pool = self.pool;
        self.others
            .get_or_insert_with(|| pool.others_by_id())
            .get(id)
            .copied()
    }
}

/// How an arriving offer changed an interval's reconciliation set.
enum SetChange {
    None,
    /// `insert`, from the participant at `place` ([`NOT_A_MEMBER`]
    /// outside the members), joins the set; `remove`, the offer it
    /// replaces, leaves it.
    Swap {
        remove: Option<OfferId>,
        insert: OfferId,
        place: u32,
    },
    /// Anything else (a participant turning void): build it again.
    Rebuild,
}

impl IntervalPool {
    fn new(
        members: Option<Arc<IdMap<ParticipantId, u32>>>,
        expected_others: usize,
        slots: Option<Arc<PlaceSlots<SignedOffer>>>,
    ) -> IntervalPool {
        let n = members.as_ref().map_or(0, |m| m.len());
        let first = match slots {
            Some(slots) => SharedPlaceMap::new(slots),
            None => SharedPlaceMap::with_members(n),
        };
        IntervalPool {
            first,
            many_places: PlaceSet::default(),
            many: BTreeMap::new(),
            members,
            others: IdMap::with_capacity_and_hasher(expected_others, Default::default()),
            set: OnceLock::new(),
            root: OnceLock::new(),
        }
    }

    fn place(&self, participant: &ParticipantId) -> Option<u32> {
        self.members.as_ref()?.get(participant).copied()
    }

    /// What the member at `place` sent, if anything.
    fn at(&self, place: u32) -> Option<SentRef<'_>> {
        if let Some(offer) = self.first.get(place) {
            return Some(SentRef {
                offers: std::slice::from_ref(offer),
                void: false,
            });
        }
        if self.many_places.contains(place as usize) {
            return self.many.get(&place).map(Sent::as_ref);
        }
        None
    }

    /// What `participant` sent, if anything.
    fn get(&self, participant: &ParticipantId) -> Option<SentRef<'_>> {
        self.get_placed(participant, self.place(participant))
    }

    /// [`IntervalPool::get`] with the participant's place (`None`: not a
    /// member) already looked up.
    fn get_placed(&self, participant: &ParticipantId, place: Option<u32>) -> Option<SentRef<'_>> {
        match place {
            Some(place) => self.at(place),
            None => self.others.get(participant).map(Sent::as_ref),
        }
    }

    /// Keeps `offer` as the first and only one of the member at `place`, if
    /// it sent nothing before: the set change that makes, or the offer back.
    ///
    /// The offer moves into the pool, and the change holds a share of it
    /// only if there is a set to change (after gate closure): before it, a
    /// share taken and dropped again cost two atomic operations on a
    /// counter a thousand simulated nodes write, each draining the store
    /// buffer, on every arrival.
    fn insert_first(
        &mut self,
        place: u32,
        offer: Arc<SignedOffer>,
    ) -> Result<SetChange, Arc<SignedOffer>> {
        if self.many_places.contains(place as usize) || self.first.contains(place) {
            return Err(offer);
        }
        let change = match self.set.get() {
            Some(_) => SetChange::Swap {
                remove: None,
                insert: offer.id,
                place,
            },
            None => SetChange::None,
        };
        let inserted = self.first.insert(place, offer);
        debug_assert!(inserted, "checked that the place is free");
        Ok(change)
    }

    /// What `participant` sent, to add to (a member's only offer moves
    /// from `first` into `many`).
    fn entry(&mut self, participant: ParticipantId) -> &mut Sent {
        let Some(place) = self.place(&participant) else {
            return self.others.entry(participant).or_default();
        };
        if self.many_places.insert(place as usize) {
            let mut sent = Sent::default();
            sent.offers.extend(self.first.remove(place));
            self.many.insert(place, sent);
        }
        self.many
            .get_mut(&place)
            .expect("a member in many_places is in many")
    }

    /// The kept offer `id` of the participant at `place` ([`NOT_A_MEMBER`]:
    /// any non-member's).
    fn offer_at(&self, place: u32, id: &OfferId) -> Option<&Arc<SignedOffer>> {
        if place == NOT_A_MEMBER {
            return self.others.values().find_map(|sent| sent.as_ref().find(id));
        }
        self.at(place)?.find(id)
    }

    /// The kept offers of participants outside the member list, by id.
    fn others_by_id(&self) -> IdMap<OfferId, &Arc<SignedOffer>> {
        self.others
            .values()
            .flat_map(|sent| sent.offers.iter())
            .map(|offer| (offer.id, offer))
            .collect()
    }

    /// Every participant that sent something, in no particular order.
    fn participants(&self) -> impl Iterator<Item = SentRef<'_>> {
        self.first
            .iter()
            .map(|(_, offer)| SentRef {
                offers: std::slice::from_ref(offer),
                void: false,
            })
            .chain(self.many.values().map(Sent::as_ref))
            .chain(self.others.values().map(Sent::as_ref))
    }

    fn set(&self) -> &SetView {
        self.set.get_or_init(|| {
            // Room for offers that arrive after the set is built (during
            // reconciliation), so that the first of them does not copy the
            // set into an allocation twice its size.
            let room = |held: usize| held + held / 16 + 16;
            // (id, place) of every offer in the set: a member's only offer
            // is in force for its side; of the others, the heads of both
            // sides, or every kept offer of a void participant.
            let mut held: Vec<(OfferId, u32)> =
                Vec::with_capacity(self.first.len() + 2 * (self.many.len() + self.others.len()));
            held.extend(self.first.iter().map(|(place, offer)| (offer.id, place)));
            let rest = (self.many.iter().map(|(&place, sent)| (place, sent)))
                .chain(self.others.values().map(|sent| (NOT_A_MEMBER, sent)));
            for (place, sent) in rest {
                let sent = sent.as_ref();
                if sent.void {
                    held.extend(sent.offers.iter().map(|o| (o.id, place)));
                } else {
                    held.extend(
                        [sent.head(Side::Bid), sent.head(Side::Ask)]
                            .into_iter()
                            .flatten()
                            .map(|o| (o.id, place)),
                    );
                }
            }
            let in_order = sort_ids(held);
            let mut places: Vec<u32> = Vec::with_capacity(room(in_order.len()));
            let mut ids: Vec<OfferId> = Vec::with_capacity(room(in_order.len()));
            for (id, place) in in_order {
                places.push(place);
                ids.push(id);
            }
            SetView {
                sum: IdSum::of(&ids),
                ids,
                places,
            }
        })
    }

    fn root(&self) -> Hash32 {
        *self.root.get_or_init(|| set_root(&self.set().ids))
    }

    fn apply(&mut self, change: SetChange) {
        match change {
            SetChange::None => return,
            SetChange::Rebuild => self.set = OnceLock::new(),
            SetChange::Swap {
                remove,
                insert,
                place,
            } => {
                if let Some(view) = self.set.get_mut() {
                    if let Some(at) = remove.and_then(|id| view.ids.binary_search(&id).ok()) {
                        view.sum.sub(&view.ids.remove(at));
                        view.places.remove(at);
                    }
                    if let Err(at) = view.ids.binary_search(&insert) {
                        view.sum.add(&insert);
                        view.ids.insert(at, insert);
                        view.places.insert(at, place);
                    }
                } else {
                    // No set yet, so no root (made from the set) either:
                    // nothing to forget, and the field is not touched, as
                    // offers arrive by the thousand before gate closure.
                    return;
                }
            }
        }
        self.root = OnceLock::new();
    }
}

/// Sets smaller than this are sorted by comparison: a few dozen ids stay in
/// the cache anyway, and the counting pass's two arrays would cost more.
const BUCKET_SORT_FROM: usize = 64;

/// `keyed` (ids, each with a tag: its offer's place) in id order. Ids are
/// SHA-256 digests, evenly spread: a counting pass on the top bits of their
/// leading words puts nearly every offer in a bucket of its own (as many
/// buckets as offers, rounded up to a power of two), and sorting each bucket
/// finishes. Each id is read once, where a comparison sort read two per
/// comparison. Uneven ids only make buckets larger.
fn sort_ids(mut keyed: Vec<(OfferId, u32)>) -> Vec<(OfferId, u32)> {
    let n = keyed.len();
    if n < BUCKET_SORT_FROM {
        keyed.sort_unstable();
        return keyed;
    }
    let bits = n.next_power_of_two().trailing_zeros();
    // At most 32 bits (positions are u32), so the bucket fits a usize.
    let bucket = |id: &OfferId| {
        usize::try_from(id.leading_word() >> (64 - bits)).expect("at most 2^32 buckets")
    };
    // starts[b]: where bucket b begins in the output (a prefix sum of counts).
    let mut starts = vec![0u32; (1 << bits) + 1];
    for (id, _) in &keyed {
        starts[bucket(id) + 1] += 1;
    }
    for b in 1..starts.len() {
        starts[b] += starts[b - 1];
    }
    let mut sorted = vec![(OfferId([0; 32]), 0u32); n];
    let mut next = starts.clone();
    for entry in &keyed {
        let b = bucket(&entry.0);
        sorted[next[b] as usize] = *entry;
        next[b] += 1;
    }
    for b in 0..1 << bits {
        let (from, to) = (starts[b] as usize, starts[b + 1] as usize);
        if to - from > 1 {
            sorted[from..to].sort_unstable();
        }
    }
    sorted
}

/// The verdict on a participant's first offer in force for its side: new,
/// or a cancel of nothing (energy 0).
fn first_verdict(offer: &Offer) -> Validation {
    Validation::Accept(if offer.energy_wh == 0 {
        Accepted::Cancelled { previous: None }
    } else {
        Accepted::New
    })
}

/// Domain of the offer-set root.
const SET_DOMAIN: &[u8; 16] = b"DHARTI-OFFERS-V1";

/// The offers a node holds for the intervals that are open or being cleared.
///
/// Its state is a function of the *set* of valid offers it has received, not
/// of their order or of duplicates (property-tested): a participant's offer in
/// force per side is its highest sequence number; a participant that
/// equivocated (two different offers with one sequence number) or sent more
/// than `max_offers_per_participant` offers for an interval is void for that
/// interval, all its offers out of the book. Stale offers are kept too (up to
/// the limit), because they count towards it.
/// In the order written (`repr(C)`): what an arriving offer reads first.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct OfferPool {
    intervals: IntervalMap<IntervalPool>,
    verifier: Arc<dyn SignatureVerifier>,
    /// The market's members by place, if known: their offers are kept by
    /// place (a [`PlaceMap`] per interval).
    members: Option<Arc<IdMap<ParticipantId, u32>>>,
    /// Where members' only offers are kept, per interval, if shared.
    slots: Option<Arc<SlotTables<SignedOffer>>>,
    evidence: Vec<Equivocation>,
}

impl Default for OfferPool {
    fn default() -> Self {
        OfferPool::with_verifier(Arc::new(Ed25519Verifier::default()))
    }
}

/// When an offer arrives, which decides the timing checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Gossip before gate closure, checked against the clock.
    Gossip { now_s: u64 },
    /// During set reconciliation after gate closure: the caller has checked
    /// that the interval is in its reconciliation window.
    Reconciliation,
}

/// Checks that need no state: chain, market, timing, bounds.
pub fn check_stateless(rules: &MarketRules, offer: &Offer, arrival: Arrival) -> Result<(), Reject> {
    if offer.chain_id != rules.chain_id {
        return Err(Reject::WrongChain {
            got: offer.chain_id,
            expected: rules.chain_id,
        });
    }
    if offer.market != rules.market_id {
        return Err(Reject::WrongMarket);
    }
    if let Arrival::Gossip { now_s } = arrival {
        if !rules.clock.is_open(offer.interval, now_s) {
            return Err(Reject::IntervalClosed(offer.interval.0));
        }
        let current = rules.clock.interval_at(now_s);
        if offer.interval.0 > current.0.saturating_add(rules.max_intervals_ahead) {
            return Err(Reject::TooFarAhead {
                interval: offer.interval.0,
                max_ahead: rules.max_intervals_ahead,
            });
        }
    }
    if offer.energy_wh > rules.max_offer_energy_wh {
        return Err(Reject::Oversized {
            energy_wh: offer.energy_wh,
            max_wh: rules.max_offer_energy_wh,
        });
    }
    if offer.energy_wh == 0 && offer.sequence == 0 {
        // Sequence 0 is the lowest: such a cancel can never cancel anything.
        return Err(Reject::ZeroEnergy);
    }
    if offer.energy_wh > 0 {
        let tariff = rules.tariffs.at(rules.clock.start_s(offer.interval));
        if !tariff.contains(offer.price_micro_per_kwh) {
            return Err(Reject::PriceOutOfBounds {
                price: offer.price_micro_per_kwh,
                feed_in: tariff.feed_in_micro_per_kwh,
                retail: tariff.retail_micro_per_kwh,
            });
        }
    }
    Ok(())
}

impl OfferPool {
    pub fn new() -> OfferPool {
        OfferPool::default()
    }

    /// A pool that checks signatures with `verifier`.
    pub fn with_verifier(verifier: Arc<dyn SignatureVerifier>) -> OfferPool {
        OfferPool {
            intervals: IntervalMap::new(),
            evidence: Vec::new(),
            verifier,
            members: None,
            slots: None,
        }
    }

    /// A pool that checks signatures with `verifier` and keeps the offers of
    /// `members` (participant → place, places below the map's size) by place:
    /// what a node uses. Anyone else's offers are kept as in any pool; the
    /// verdicts are the same either way.
    pub fn for_members(
        verifier: Arc<dyn SignatureVerifier>,
        members: Arc<IdMap<ParticipantId, u32>>,
    ) -> OfferPool {
        OfferPool {
            members: Some(members),
            ..OfferPool::with_verifier(verifier)
        }
    }

    /// [`OfferPool::for_members`], keeping members' only offers in `slots`
    /// shared with other pools (a simulator's nodes share one, so that an
    /// offer every node receives is kept once, each node holding a bit).
    /// The verdicts are the same either way.
    pub fn for_shared(
        verifier: Arc<dyn SignatureVerifier>,
        members: Arc<IdMap<ParticipantId, u32>>,
        slots: Arc<SlotTables<SignedOffer>>,
    ) -> OfferPool {
        OfferPool {
            slots: Some(slots),
            ..OfferPool::for_members(verifier, members)
        }
    }

    /// The parsed key of `participant`, from the verifier's cache.
    fn key(&self, participant: &ParticipantId) -> Result<VerifyingKey, SignatureError> {
        self.verifier.key(participant)
    }

    /// Validates one offer and, if it is valid, keeps it.
    pub fn receive(
        &mut self,
        rules: &MarketRules,
        offer: impl Into<Arc<SignedOffer>>,
        arrival: Arrival,
    ) -> Validation {
        let offer: Arc<SignedOffer> = offer.into();
        let place = self.place_of(&offer.offer.participant);
        self.receive_placed(rules, offer, place, arrival)
    }

    /// The place of `participant` among the members the pool was made for.
    fn place_of(&self, participant: &ParticipantId) -> Option<u32> {
        self.members.as_ref()?.get(participant).copied()
    }

    /// [`OfferPool::receive`] with the place of the offer's participant
    /// among the pool's members already looked up (by a node, which looks it
    /// up to refuse non-members), so that an arrival costs one lookup.
    pub(crate) fn receive_placed(
        &mut self,
        rules: &MarketRules,
        offer: Arc<SignedOffer>,
        place: Option<u32>,
        arrival: Arrival,
    ) -> Validation {
        debug_assert_eq!(place, self.place_of(&offer.offer.participant));
        if let Err(reject) = check_stateless(rules, &offer.offer, arrival) {
            return Validation::Reject(reject);
        }
        if let Some(verdict) = self.cheap_verdict(rules, &offer, place) {
            return verdict;
        }
        let verifier = self.verifier.as_ref();
        let checked = check_shared(verifier, &offer, || {
            let key = verifier.key(&offer.offer.participant)?;
            if verify_offers(verifier, &[&offer], &[key])[0] {
                Ok(())
            } else {
                Err(SignatureError::Invalid)
            }
        });
        if let Err(error) = checked {
            return Validation::Reject(Reject::BadSignature(error));
        }
        self.insert_verified(rules, offer, place)
    }

    /// Validates many offers, checking their signatures in one batch: the
    /// fast path for a burst of gossip. Verdicts come back in input order and
    /// equal what [`OfferPool::receive`] one by one would give.
    pub fn receive_batch<O: Into<Arc<SignedOffer>>>(
        &mut self,
        rules: &MarketRules,
        offers: Vec<O>,
        arrival: Arrival,
    ) -> Vec<Validation> {
        let offers: Vec<Arc<SignedOffer>> = offers.into_iter().map(Into::into).collect();
        let mut verdicts: Vec<Option<Validation>> = Vec::with_capacity(offers.len());
        let mut to_verify: Vec<usize> = Vec::with_capacity(offers.len());
        let mut keys: Vec<VerifyingKey> = Vec::with_capacity(offers.len());
        let invalid = || {
            Some(Validation::Reject(Reject::BadSignature(
                SignatureError::Invalid,
            )))
        };
        for (i, offer) in offers.iter().enumerate() {
            let verdict = match check_stateless(rules, &offer.offer, arrival) {
                Err(reject) => Some(Validation::Reject(reject)),
                // An allocation the verifier has the answer for (in the
                // simulator, offers a peer sends back out of its pool).
                Ok(()) => match self.verifier.recall(Allocation::of(offer)) {
                    Some(true) => None,
                    Some(false) => invalid(),
                    None => match self.key(&offer.offer.participant) {
                        Err(error) => Some(Validation::Reject(Reject::BadSignature(error))),
                        Ok(key) => {
                            to_verify.push(i);
                            keys.push(key);
                            None
                        }
                    },
                },
            };
            verdicts.push(verdict);
        }
        let refs: Vec<&SignedOffer> = to_verify.iter().map(|&i| &*offers[i]).collect();
        let valid = verify_offers(self.verifier.as_ref(), &refs, &keys);
        for (&i, ok) in to_verify.iter().zip(valid) {
            self.verifier.remember(offers[i].clone(), ok);
            if !ok {
                verdicts[i] = invalid();
            }
        }
        offers
            .into_iter()
            .zip(verdicts)
            .map(|(offer, verdict)| match verdict {
                Some(verdict) => verdict,
                None => {
                    let place = self.place_of(&offer.offer.participant);
                    match self.cheap_verdict(rules, &offer, place) {
                        Some(verdict) => verdict,
                        None => self.insert_verified(rules, offer, place),
                    }
                }
            })
            .collect()
    }

    /// Verdicts that need no signature check because nothing would change:
    /// an offer already held, or one a void participant's evidence does not need.
    fn cheap_verdict(
        &self,
        rules: &MarketRules,
        offer: &SignedOffer,
        place: Option<u32>,
    ) -> Option<Validation> {
        let o = &offer.offer;
        let sent = self
            .intervals
            .get(&o.interval)?
            .get_placed(&o.participant, place)?;
        if sent.contains(&offer.id) {
            return Some(Validation::Ignore(Ignored::Duplicate));
        }
        let limit = rules.max_offers_per_participant as usize;
        let full = sent.offers.len() > limit;
        if full
            && sent
                .offers
                .last()
                .is_some_and(|largest| largest.id < offer.id)
        {
            return Some(Validation::Ignore(Ignored::SlotVoid));
        }
        None
    }

    /// Keeps an offer whose signature is known to be valid and says what it changed.
    fn insert_verified(
        &mut self,
        rules: &MarketRules,
        offer: Arc<SignedOffer>,
        place: Option<u32>,
    ) -> Validation {
        let interval = offer.offer.interval;
        let (verdict, change) = self.insert_into_slot(rules, offer, place);
        if let Some(pool) = self.intervals.get_mut(&interval) {
            pool.apply(change);
        }
        verdict
    }

    /// [`OfferPool::insert_verified`] but for the set: the verdict, and how
    /// the interval's reconciliation set changed.
    fn insert_into_slot(
        &mut self,
        rules: &MarketRules,
        mut offer: Arc<SignedOffer>,
        place: Option<u32>,
    ) -> (Validation, SetChange) {
        let limit = rules.max_offers_per_participant as usize;
        let o = offer.offer;
        let id = offer.id;
        // A new interval has about as many participants as the last one.
        let expected = self
            .intervals
            .values()
            .next_back()
            .map_or(0, |p| p.others.len());
        let (members, slots) = (&self.members, &self.slots);
        let pool = self.intervals.get_or_insert_with(o.interval, || {
            let slots = slots.as_ref().map(|s| s.for_interval(o.interval));
            IntervalPool::new(members.clone(), expected, slots)
        });
        // A member's first offer (within the limit, so it cannot be void)
        // is kept as its only one; a second one moves both into `many`.
        if limit >= 1
            && let Some(place) = place
        {
            offer = match pool.insert_first(place, offer) {
                Ok(change) => return (first_verdict(&o), change),
                Err(offer) => offer,
            };
            if pool.at(place).is_some_and(|sent| sent.contains(&id)) {
                return (Validation::Ignore(Ignored::Duplicate), SetChange::None);
            }
        }
        let sent = pool.entry(o.participant);
        if sent.as_ref().contains(&id) {
            return (Validation::Ignore(Ignored::Duplicate), SetChange::None);
        }
        let was_void = sent.void;
        let previous = if was_void {
            None
        } else {
            sent.as_ref().head(o.side).cloned()
        };
        let conflict = if was_void {
            None
        } else {
            sent.as_ref().conflicting(&offer).cloned()
        };
        let evidence = conflict.map(|first| Equivocation {
            first: (*first).clone(),
            second: (*offer).clone(),
        });
        sent.insert(offer);
        sent.trim(limit + 1);
        if was_void {
            return (Validation::Ignore(Ignored::SlotVoid), SetChange::Rebuild);
        }
        if let Some(evidence) = evidence {
            sent.void = true;
            self.evidence.push(evidence.clone());
            return (
                Validation::Reject(Reject::Equivocation(Box::new(evidence))),
                SetChange::Rebuild,
            );
        }
        if sent.offers.len() > limit {
            sent.void = true;
            return (
                Validation::Reject(Reject::TooManyOffers(rules.max_offers_per_participant)),
                SetChange::Rebuild,
            );
        }
        let swap = |remove: Option<OfferId>| SetChange::Swap {
            remove,
            insert: id,
            place: place.unwrap_or(NOT_A_MEMBER),
        };
        match previous {
            Some(held) if o.sequence < held.offer.sequence => {
                (Validation::Ignore(Ignored::Stale), SetChange::None)
            }
            // Same sequence, same body (no conflict): the same offer signed
            // again. The smaller id stands for both, so the set may change.
            Some(held) if o.sequence == held.offer.sequence => {
                (Validation::Ignore(Ignored::Duplicate), SetChange::Rebuild)
            }
            Some(held) if o.energy_wh == 0 => (
                Validation::Accept(Accepted::Cancelled {
                    previous: Some(held.id),
                }),
                swap(Some(held.id)),
            ),
            Some(held) => (
                Validation::Accept(Accepted::Replaced { previous: held.id }),
                swap(Some(held.id)),
            ),
            None => (first_verdict(&o), swap(None)),
        }
    }

    /// The participants of `interval` with their standing: `Some(heads)` for
    /// those in force, `None` for void ones.
    fn standings(
        &self,
        interval: IntervalIndex,
    ) -> impl Iterator<Item = (SentRef<'_>, Option<[Option<&Arc<SignedOffer>>; 2]>)> {
        self.intervals
            .get(&interval)
            .into_iter()
            .flat_map(move |pool| {
                pool.participants().map(move |sent| {
                    let heads = (!sent.void).then(|| [sent.head(Side::Bid), sent.head(Side::Ask)]);
                    (sent, heads)
                })
            })
    }

    /// The order book of `interval`: every participant's offers in force with
    /// energy, void participants left out.
    /// Sorted by id, so that it too depends only on which offers arrived.
    pub fn book(&self, interval: IntervalIndex) -> Vec<Order<OfferId, ParticipantId>> {
        let mut book: Vec<Order<OfferId, ParticipantId>> = self
            .standings(interval)
            .filter_map(|(_, heads)| heads)
            .flatten()
            .flatten()
            .filter(|signed| signed.offer.energy_wh > 0)
            .map(|signed| Order {
                id: signed.id,
                participant: signed.offer.participant,
                side: signed.offer.side,
                energy_wh: signed.offer.energy_wh,
                price_micro_per_kwh: signed.offer.price_micro_per_kwh,
            })
            .collect();
        book.sort_unstable_by_key(|order| order.id);
        book
    }

    /// The ids nodes reconcile and attest for `interval`, sorted: the offers
    /// in force (cancels included) of every participant, and all kept offers
    /// of void participants (the evidence that voids them).
    pub fn set_ids(&self, interval: IntervalIndex) -> &[OfferId] {
        self.intervals
            .get(&interval)
            .map_or(&[], |pool| pool.set().ids.as_slice())
    }

    /// The sum of [`OfferPool::set_ids`], for reconciliation fingerprints.
    pub fn set_sum(&self, interval: IntervalIndex) -> IdSum {
        self.intervals
            .get(&interval)
            .map_or_else(IdSum::default, |pool| pool.set().sum)
    }

    /// The offer-set root of `interval`: SHA-256 over a domain tag and the
    /// sorted [`OfferPool::set_ids`].
    pub fn set_root(&self, interval: IntervalIndex) -> Hash32 {
        match self.intervals.get(&interval) {
            Some(pool) => pool.root(),
            None => set_root(&[]),
        }
    }

    /// [`OfferPool::set_root`], with `compute` (given the sorted ids and
    /// their sum) computing it when the pool has not since the set last
    /// changed: a shell may answer from a memo of sets it has seen.
    pub fn set_root_with(
        &self,
        interval: IntervalIndex,
        compute: impl FnOnce(&[OfferId], &IdSum) -> Hash32,
    ) -> Hash32 {
        match self.intervals.get(&interval) {
            Some(pool) => *pool.root.get_or_init(|| {
                let view = pool.set();
                compute(&view.ids, &view.sum)
            }),
            None => set_root(&[]),
        }
    }

    /// The offers of `interval`'s reconciliation set with these `ids`
    /// (sorted or not); ids outside the set are skipped.
    pub fn set_offers_with(
        &self,
        interval: IntervalIndex,
        ids: &[OfferId],
    ) -> Vec<Arc<SignedOffer>> {
        let Some(pool) = self.intervals.get(&interval) else {
            return Vec::new();
        };
        let view = pool.set();
        let mut lookup = OfferLookup::new(pool);
        ids.iter()
            .filter_map(|id| {
                let at = view.ids.binary_search(id).ok()?;
                lookup.get(view.places[at], id).cloned()
            })
            .collect()
    }

    /// The signed offers of `interval`'s reconciliation set, by id.
    pub fn set_offers(&self, interval: IntervalIndex) -> Vec<Arc<SignedOffer>> {
        let Some(pool) = self.intervals.get(&interval) else {
            return Vec::new();
        };
        let view = pool.set();
        let mut lookup = OfferLookup::new(pool);
        view.ids
            .iter()
            .zip(&view.places)
            .map(|(id, &place)| {
                lookup
                    .get(place, id)
                    .expect("every id in the set is of a kept offer")
                    .clone()
            })
            .collect()
    }

    /// A kept offer, by id.
    pub fn offer(
        &self,
        interval: IntervalIndex,
        participant: &ParticipantId,
        id: &OfferId,
    ) -> Option<&Arc<SignedOffer>> {
        let sent = self.intervals.get(&interval)?.get(participant)?;
        sent.position(id).ok().map(|at| &sent.offers[at])
    }

    /// All kept offers of `interval`.
    pub fn offers(&self, interval: IntervalIndex) -> impl Iterator<Item = &Arc<SignedOffer>> {
        self.intervals
            .get(&interval)
            .into_iter()
            .flat_map(|pool| pool.participants().flat_map(|sent| sent.offers.iter()))
    }

    /// Equivocations seen and not yet taken.
    pub fn evidence(&self) -> &[Equivocation] {
        &self.evidence
    }

    /// Hands over the evidence gathered so far (to gossip and persist it).
    pub fn take_evidence(&mut self) -> Vec<Equivocation> {
        std::mem::take(&mut self.evidence)
    }

    /// Replaces what this pool holds for `interval` with what `other` holds
    /// (a node adopting the quorum's set drops everything outside it).
    pub fn replace_interval(&mut self, interval: IntervalIndex, mut other: OfferPool) {
        match other.intervals.remove(&interval) {
            Some(pool) => self.intervals.insert(interval, pool),
            None => self.intervals.remove(&interval),
        };
    }

    /// Forgets intervals before `interval` (they are final and persisted).
    pub fn prune_before(&mut self, interval: IntervalIndex) {
        self.intervals = self.intervals.split_off(&interval);
    }
}

/// SHA-256 over `"DHARTI-OFFERS-V1"` and the sorted ids.
pub fn set_root(sorted_ids: &[OfferId]) -> Hash32 {
    debug_assert!(
        sorted_ids.windows(2).all(|w| w[0] < w[1]),
        "ids must be sorted and unique"
    );
    let mut h = Hasher::new(SET_DOMAIN);
    h.write_u64(sorted_ids.len() as u64);
    for id in sorted_ids {
        h.write(&id.0);
    }
    h.finish()
}

#[cfg(test)]
mod tests;
