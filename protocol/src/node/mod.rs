//! `Node`: one participant's view of a market, as a state machine with no I/O
//! and no clock of its own. The daemon and the simulator feed it [`Input`]s
//! (a message from a peer, a tick with the current time, a local offer, a
//! peer coming or going) and carry out the [`Action`]s it returns.
//!
//! One interval, as DESIGN.md describes it:
//! 1. Until gate closure, offers are gossiped and validated on arrival.
//! 2. At gate closure the node reconciles its offer set with a few peers
//!    (range-based reconciliation, `crate::reconcile`), and with any member
//!    whose attestation shows a different set, until the end of the
//!    reconciliation window.
//! 3. At the end of the window it clears its book and gossips a signed
//!    attestation of (interval, offer-set root, result root).
//! 4. The result is final once a quorum of members (more than two thirds of
//!    the members active in recent intervals, by default) attests the same
//!    roots. A market may name a committee size instead
//!    ([`NodeConfig::attesters`]): then only the interval's committee
//!    attests, and the quorum is more than two thirds of the committee. A
//!    node whose roots differ fetches the set from an attester of the
//!    quorum, checks its root, clears it and adopts it: offers outside the
//!    final set are dropped.
//!
//! Everything a node holds is bounded: intervals beyond the open horizon are
//! refused, final intervals are pruned, messages and their lists are capped.

mod message;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::clearing::{ClearingResult, clear};
use crate::hash::{Hash32, Hasher, IdMap, sha256};
use crate::intervals::IntervalMap;
use crate::offer::{Offer, SignedOffer};
use crate::places::{PlaceSet, SharedPlaceMap, SlotTables};
use crate::reconcile::{IdSum, initiate_with, respond_with};
use crate::settlement::{IntervalSettlement, MeterReading, settle};
use crate::types::{IntervalIndex, MarketId, OfferId, ParticipantId, Side};
use crate::validation::{Arrival, MarketRules, OfferPool, Validation};
use crate::verify::{Ed25519Verifier, SharedMessage, SignatureVerifier, check_shared};

pub use message::{
    ATTESTATION_BODY_LEN, Attestation, MAX_ATTESTATIONS_PER_MESSAGE, MAX_MESSAGE_BYTES,
    MAX_OFFERS_PER_MESSAGE, MAX_REPORTS_PER_MESSAGE, MAX_WANTED_IDS, METER_REPORT_BODY_LEN,
    Message, MessageError, MeterReport, SetChunk, SignedAttestation, SignedMeterReport,
    attestation_messages, set_chunks,
};

/// How a market agrees, on top of its [`MarketRules`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub rules: MarketRules,
    /// The members: only their offers and attestations count.
    pub members: BTreeSet<ParticipantId>,
    /// Reconciliation runs from gate closure for this long (default 20 s).
    pub reconcile_window_ms: u64,
    /// Quorum as a share of the active members in ppm (with
    /// [`NodeConfig::attesters`], of the interval's committee); a result is
    /// final when more than this share attests it (default 666,667: more
    /// than two thirds).
    pub quorum_ppm: u32,
    /// Peers reconciled with at gate closure (default 3).
    pub reconcile_fanout: usize,
    /// Members count as active if they attested in one of this many recent
    /// final intervals (default 4); before any history, all members are.
    pub active_window: usize,
    /// Attesters per interval: when set and smaller than the member list,
    /// each interval's attestations come from a committee of this many
    /// members, drawn afresh per interval ([`committee_scores`]); quorum is
    /// then counted among the committee. 0 (the default): every member
    /// attests, as DESIGN.md describes.
    #[serde(default)]
    pub attesters: usize,
}

/// What a node's result for an interval is.
pub type IntervalResult = ClearingResult<OfferId, ParticipantId>;

/// Clears books for nodes. Clearing is a pure function of the offer set
/// (named by its root) and the market rules, so a shell that runs many nodes
/// of one market (the simulator) may share one memoising implementation, as
/// it shares a memoising signature verifier; every node still computes its
/// own set and root, so nodes that hold different sets still differ. The
/// daemon clears every time ([`ClearEveryTime`]).
pub trait ClearingCache: fmt::Debug + Send + Sync {
    /// The result for the set with `set_root` in `interval`; `clear` computes it.
    fn clear(
        &self,
        interval: IntervalIndex,
        set_root: &Hash32,
        clear: &mut dyn FnMut() -> IntervalResult,
    ) -> Arc<IntervalResult>;

    /// The settlement of the result with `result_root` in `interval` against
    /// `reports` (the traders' held reports, in member order); `settle`
    /// computes it. It too is a pure function of its inputs. By default it
    /// settles on every call.
    fn settle(
        &self,
        _interval: IntervalIndex,
        _result_root: &Hash32,
        _reports: &[&Arc<SignedMeterReport>],
        settle: &mut dyn FnMut() -> IntervalSettlement,
    ) -> Arc<IntervalSettlement> {
        Arc::new(settle())
    }

    /// The root of the offer set with the sorted `ids` (whose sum is `sum`)
    /// in `interval`: [`crate::validation::set_root`]. A memo must compare
    /// the ids themselves, not just the sum. By default computed on every
    /// call.
    fn set_root(&self, _interval: IntervalIndex, ids: &[OfferId], _sum: &IdSum) -> Hash32 {
        crate::validation::set_root(ids)
    }

    /// The places of the traders of the result with `result_root` in
    /// `interval`; `traders` computes them. A pure function of the result
    /// and the member list (so one cache serves nodes of one member list,
    /// as [`Shared`] does); by default computed on every call.
    fn traders(
        &self,
        _interval: IntervalIndex,
        _result_root: &Hash32,
        traders: &mut dyn FnMut() -> PlaceSet,
    ) -> Arc<PlaceSet> {
        Arc::new(traders())
    }
}

/// No memo: clears on every call.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClearEveryTime;

impl ClearingCache for ClearEveryTime {
    fn clear(
        &self,
        _interval: IntervalIndex,
        _set_root: &Hash32,
        clear: &mut dyn FnMut() -> IntervalResult,
    ) -> Arc<IntervalResult> {
        Arc::new(clear())
    }
}

/// What nodes of one market can share: the configuration, the signature
/// verifier (with its parsed-key cache), the clearing memo and the member
/// set. A daemon has one node and one of each; the simulator hands one to
/// all its nodes, so that a thousand of them read one copy of the market's
/// rules and members (in the cache) rather than a copy each (32 MB of
/// member lists, and a cache miss on the rules at every arrival).
/// In the order written (`repr(C)`): what every message reads first.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct Shared {
    /// `NodeConfig::members` with their places in its order, hashed for the
    /// lookup every message needs.
    members: Arc<IdMap<ParticipantId, u32>>,
    pub verifier: Arc<dyn SignatureVerifier>,
    config: Arc<NodeConfig>,
    pub clearing: Arc<dyn ClearingCache>,
    /// The members by place.
    places: Arc<Vec<ParticipantId>>,
    /// Per place, the member's committee key: the first eight bytes of
    /// `SHA-256("DHARTI-COMMITTEE-V1" || id)`, hashed once.
    committee_keys: Arc<Vec<u64>>,
    /// The committees of the last few intervals, drawn once for all nodes
    /// (a draw scores every member) and shared, so that a thousand nodes
    /// test their attesters against one bitset in the cache.
    committees: Arc<Mutex<KeptCommittees>>,
    /// Per interval, the members' offers, meter reports and attestations
    /// that the nodes sharing this keep once between them
    /// ([`SharedPlaceMap`]).
    offer_slots: Arc<SlotTables<SignedOffer>>,
    report_slots: Arc<SlotTables<SignedMeterReport>>,
    attestation_slots: Arc<SlotTables<SignedAttestation>>,
}

/// The committees [`Shared`] keeps, oldest first.
type KeptCommittees = VecDeque<(IntervalIndex, Arc<Committee>)>;

/// Committees [`Shared`] keeps: the intervals being reconciled, attested
/// or settled at once are far fewer.
const KEPT_COMMITTEES: usize = 8;

impl Shared {
    /// Plain ed25519 and no memo, for the members of `config`.
    pub fn new(config: &NodeConfig) -> Shared {
        Shared::with(
            config,
            Arc::new(Ed25519Verifier::default()),
            Arc::new(ClearEveryTime),
        )
    }

    pub fn with(
        config: &NodeConfig,
        verifier: Arc<dyn SignatureVerifier>,
        clearing: Arc<dyn ClearingCache>,
    ) -> Shared {
        Shared {
            config: Arc::new(config.clone()),
            verifier,
            clearing,
            members: Arc::new(
                config
                    .members
                    .iter()
                    .zip(0u32..)
                    .map(|(member, place)| (*member, place))
                    .collect(),
            ),
            places: Arc::new(config.members.iter().copied().collect()),
            committee_keys: Arc::new(
                config
                    .members
                    .iter()
                    .map(|member| {
                        let mut h = Hasher::new(COMMITTEE_DOMAIN);
                        h.write(&member.0);
                        first_u64(&h.finish())
                    })
                    .collect(),
            ),
            committees: Arc::default(),
            offer_slots: Arc::new(SlotTables::with_members(config.members.len())),
            report_slots: Arc::new(SlotTables::with_members(config.members.len())),
            attestation_slots: Arc::new(SlotTables::with_members(config.members.len())),
        }
    }

    /// The committee of `size` members for `interval` ([`Committee::draw`]),
    /// drawn on first use.
    fn committee(&self, market: &MarketId, interval: IntervalIndex, size: usize) -> Arc<Committee> {
        let mut kept = self
            .committees
            .lock()
            .expect("no panics while holding the lock");
        if let Some((_, committee)) = kept.iter().find(|(i, _)| *i == interval) {
            return committee.clone();
        }
        let committee = Arc::new(Committee::draw(
            &self.committee_keys,
            market,
            interval,
            size,
        ));
        if kept.len() >= KEPT_COMMITTEES {
            kept.pop_front();
        }
        kept.push_back((interval, committee.clone()));
        committee
    }
}

const COMMITTEE_DOMAIN: &[u8] = b"DHARTI-COMMITTEE-V1";

fn first_u64(hash: &Hash32) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("eight bytes"))
}

/// Each member's committee score in `interval` of `market`, by place: the
/// members with the lowest scores (ties by place) attest. A score is
/// SplitMix64's finalizer (a bijection) over the member's committee key
/// XOR the interval's seed, the first eight bytes of
/// `SHA-256("DHARTI-COMMITTEE-V1" || market id || interval u64 LE)`: a
/// fresh, evenly spread choice per interval that costs one hash per interval
/// and a multiplication per member.
pub fn committee_scores(keys: &[u64], market: &MarketId, interval: IntervalIndex) -> Vec<u64> {
    let mut h = Hasher::new(COMMITTEE_DOMAIN);
    h.write(&market.0);
    h.write_u64(interval.0);
    let seed = first_u64(&h.finish());
    keys.iter()
        .map(|key| {
            let mut z = key ^ seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
        .collect()
}

/// One interval's attesting committee: its members' places, as a bitset
/// over the member list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committee {
    places: PlaceSet,
}

impl Committee {
    /// The `size` members with the lowest [`committee_scores`] in
    /// `interval` (ties by place), from every member's committee key by
    /// place; `size` is clamped to between one and the members.
    pub fn draw(
        keys: &[u64],
        market: &MarketId,
        interval: IntervalIndex,
        size: usize,
    ) -> Committee {
        let size = size.max(1).min(keys.len());
        let mut ranked: Vec<(u64, u32)> = committee_scores(keys, market, interval)
            .into_iter()
            .zip(0u32..)
            .collect();
        if size > 0 {
            ranked.select_nth_unstable(size - 1);
        }
        let mut places = PlaceSet::with_members(keys.len());
        for &(_, place) in &ranked[..size] {
            places.insert(place as usize);
        }
        Committee { places }
    }

    pub fn contains(&self, place: u32) -> bool {
        self.places.contains(place as usize)
    }

    /// Members on the committee.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }
}

/// Members needed for a quorum of `quorum_ppm` among `n`: more than that
/// share, at most all, and at least one (also of none: nothing is final
/// without an attestation).
pub fn quorum_of(n: usize, quorum_ppm: u32) -> usize {
    let share = u128::from(n as u64) * u128::from(quorum_ppm) / 1_000_000;
    let share = usize::try_from(share).expect("a share of the members fits");
    (share + 1).min(n).max(1)
}

/// Checks a market's committee size ([`NodeConfig::attesters`]): 0 (every
/// member attests) or at least [`MIN_ATTESTERS`].
pub fn check_attesters(attesters: usize) -> Result<(), String> {
    if attesters == 0 || attesters >= MIN_ATTESTERS {
        Ok(())
    } else {
        Err(format!(
            "{attesters}: use 0 (every member attests) or a committee of at least {MIN_ATTESTERS}"
        ))
    }
}

/// Default for [`NodeConfig::reconcile_window_ms`].
pub const DEFAULT_RECONCILE_WINDOW_MS: u64 = 20_000;
/// Default for [`NodeConfig::quorum_ppm`].
pub const DEFAULT_QUORUM_PPM: u32 = 666_667;
/// The smallest committee [`NodeConfig::attesters`] should name (configs
/// check it): fewer attesters could not outvote one hostile one.
pub const MIN_ATTESTERS: usize = 4;

/// Reconciliation rounds per window, evenly spread over its first three
/// quarters (the last quarter is left for the final exchanges to land).
const RECONCILE_ROUNDS: u64 = 4;
/// A node waits this long for a set it asked an attester for before asking
/// the next one.
const FETCH_TIMEOUT_MS: u64 = 2_000;
/// Final intervals kept (for peers that fetch them late) before pruning.
const KEEP_FINAL_INTERVALS: u64 = 4;
/// An interval that has not become final this many intervals after its gate
/// closed is given up (no quorum formed), so that state stays bounded.
const MAX_PENDING_INTERVALS: u64 = 16;
/// A node that has attested but sees no quorum yet asks a few peers for the
/// quorum's attestations (`Pending`) this often: gossip may have lost some
/// on the way, and publishing the same attestation again would not help
/// (gossip drops messages it has seen)...
const ASK_AGAIN_MS: u64 = 2_000;
/// ...at most this many times (ten seconds of trying), so that an interval
/// that never finds a quorum does not cost traffic until it is given up.
/// After that, it asks again at each gate closure.
const MAX_ASKS: u32 = 5;
/// A reconnection (`Input::PeerUp`) grants an interval that used up its asks
/// another `MAX_ASKS`, at most this many times: a healed partition's quorum
/// forms within seconds of the heal, while a peer that keeps reconnecting
/// must not keep a node asking for an interval that has no quorum.
const MAX_ASK_RENEWALS: u32 = 2;
/// Round numbers of these asks, for choosing peers, after those of
/// reconciliation.
const ASK_ROUND_BASE: u32 = 1_000;
/// Round number of the ask for missing meter reports.
const REPORT_ASK_ROUND: u32 = 2_000;
/// Meter reports are gossiped when an interval ends. This long after the
/// end, a node that misses a trader's report asks a few peers for it, and
/// again as often after that while some are still missing...
const REPORT_ASK_MS: u64 = 10_000;
/// ...at most this many times (a lost branch of gossip can take many
/// reports with it; the second ask reaches other peers and traders)...
const REPORT_ASKS: u32 = 2;
/// ...and this long after the end it settles with what it has: a trader
/// without a report is settled as if its meter had measured nothing
/// (`crate::settlement`), which charges its whole contract to it. A node
/// with every trader's report settles at once.
const SETTLE_AFTER_MS: u64 = 30_000;
/// Most missed intervals a node catches up ([`Input::CatchUp`]): a day of
/// quarter-hours. Older history stays with the peers.
pub const MAX_CATCH_UP_INTERVALS: u64 = 96;
/// Missed intervals asked for at once (the oldest first)...
const CATCH_UP_IN_FLIGHT: usize = 4;
/// ...each asked again of other peers this often while no quorum's proof
/// has come...
const CATCH_UP_ASK_MS: u64 = 3_000;
/// ...and given up this long after the first ask.
const CATCH_UP_PATIENCE_MS: u64 = 60_000;
/// Round numbers of catch-up asks, for choosing peers.
const CATCH_UP_ROUND_BASE: u32 = 3_000;
/// Missing traders asked directly for their own report, at most (each
/// answers with its own; the bound keeps one ask from fanning out widely).
const MAX_TRADERS_ASKED: usize = 16;

/// The verdict on a message, for gossip validation and peer scoring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and new: propagate it.
    Accept,
    /// Harmless but useless: do not propagate.
    Ignore,
    /// The sender broke a rule: do not propagate, score it down.
    Reject(String),
}

/// What a node that waits for `interval`'s quorum asks a peer: with its own
/// attestation (`Pending`, which also hands the peer that attestation), or,
/// outside the committee, with none (`WantFinal`).
fn ask_for_quorum(interval: IntervalIndex, own: Option<&Arc<SignedAttestation>>) -> Message {
    match own {
        Some(signed) => Message::Pending(signed.clone()),
        None => Message::WantFinal { interval },
    }
}

/// The verdict on a message that carried many items: the first rejection
/// (the sender broke a rule), else Accept.
fn first_reject(verdicts: Vec<Verdict>) -> Verdict {
    verdicts
        .into_iter()
        .find(|v| matches!(v, Verdict::Reject(_)))
        .unwrap_or(Verdict::Accept)
}

/// What happens to a node. Inputs live for one call, so the size of the
/// message variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The current time. Drives gate closure, clearing and timeouts.
    Tick { now_ms: u64 },
    /// A message from a peer.
    Message {
        from: ParticipantId,
        message: Message,
    },
    /// The local agent or user wants to trade.
    LocalOffer {
        interval: IntervalIndex,
        side: Side,
        energy_wh: u64,
        price_micro_per_kwh: u64,
    },
    /// What this participant's meter measured over a past interval: the
    /// node signs it, gossips it and settles with it.
    MeterReport {
        interval: IntervalIndex,
        import_wh: u64,
        export_wh: u64,
    },
    /// A connection to a peer opened (or reopened, after a partition): the
    /// node reconciles with it from now on and asks it at once for the
    /// quorum of any interval it still waits for.
    PeerUp(ParticipantId),
    /// The connection to a peer closed: no reconciliation with it.
    PeerDown(ParticipantId),
    /// The shell's history ends before `from` (a restart, or a new node
    /// that wants recent history): ask peers for every interval from `from`
    /// up to the first this node takes part in, at most
    /// [`MAX_CATCH_UP_INTERVALS`] of them (the most recent), and finalize
    /// each with the same proof a live interval needs: a quorum's
    /// attestations and a set that clears to their roots. Give it after
    /// the first tick.
    CatchUp { from: IntervalIndex },
}

/// What a node asks its shell to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Gossip to the market's topic.
    Publish(Message),
    /// Send to one peer.
    Send { to: ParticipantId, message: Message },
    /// An interval is final: persist and act on it.
    Finalized(Box<Finalized>),
    /// A final interval is settled: persist it (it goes into a batch).
    Settled(Box<Settled>),
}

/// A settled interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    pub interval: IntervalIndex,
    /// Settlement of the final trades against the traders' meter reports.
    /// Only traders are settled here: everyone else's meter is a matter
    /// between it and its supplier, not the market's.
    pub settlement: Arc<IntervalSettlement>,
    /// Traders whose report had not arrived (or who sent two different
    /// ones) when the node settled; settled as if they had measured nothing.
    pub missing: Vec<ParticipantId>,
}

/// A final interval.
/// The final offer set itself is not copied into it (a simulator of a
/// thousand nodes would copy every set a thousand times): a shell that
/// persists it asks [`Node::final_offers`] (and the quorum's attestations,
/// [`Node::final_attestations`]) while it handles this action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finalized {
    pub interval: IntervalIndex,
    pub set_root: Hash32,
    pub result: Arc<IntervalResult>,
    /// Milliseconds from gate closure to finality.
    pub finality_ms: u64,
    /// Whether this node had to fetch the quorum's set.
    pub fetched: bool,
    /// Whether the interval was missed while the node was down and caught
    /// up afterwards ([`Input::CatchUp`]): the node took no part in it, and
    /// it is not settled here.
    pub caught_up: bool,
}

/// The result of one input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// For messages and local offers: the verdict.
    pub verdict: Option<Verdict>,
    pub actions: Vec<Action>,
}

/// The members that attested in the last few final intervals, counted
/// incrementally: each member's count is the number of those intervals it
/// attested in, and the members with a count are the active ones. Members
/// are numbered (their place in the sorted member list), so an interval's
/// attesters are a bitset and opening one costs a pass over a few words.
#[derive(Clone, Debug, Default)]
struct Activity {
    window: VecDeque<(IntervalIndex, PlaceSet)>,
    counts: Vec<u32>,
    active: usize,
}

impl Activity {
    fn bump(&mut self, member: usize) {
        if self.counts.len() <= member {
            self.counts.resize(member + 1, 0);
        }
        self.counts[member] += 1;
        if self.counts[member] == 1 {
            self.active += 1;
        }
    }

    /// A newly final interval with its attesters; the oldest beyond `limit` leaves.
    fn open(&mut self, interval: IntervalIndex, attesters: &PlaceSet, limit: usize) {
        for member in attesters.iter() {
            self.bump(member);
        }
        self.window.push_back((interval, attesters.clone()));
        while self.window.len() > limit {
            let (_, old) = self.window.pop_front().expect("longer than the limit");
            for member in old.iter() {
                self.counts[member] -= 1;
                if self.counts[member] == 0 {
                    self.active -= 1;
                }
            }
        }
    }

    /// A late attestation for a final interval; returns whether it is news.
    fn add(&mut self, interval: IntervalIndex, member: u32) -> bool {
        let member = member as usize;
        let Some((_, attesters)) = self.window.iter_mut().find(|(i, _)| *i == interval) else {
            return false;
        };
        if !attesters.insert(member) {
            return false;
        }
        self.bump(member);
        true
    }

    fn active(&self) -> usize {
        self.active
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Missed while the node was down: it asks peers for the quorum's proof
    /// and set, and takes no part itself.
    CatchingUp,
    Reconciling,
    Attested,
    Final,
}

/// Asking peers for a missed interval ([`Phase::CatchingUp`]).
#[derive(Clone, Copy, Debug, Default)]
struct CatchUp {
    /// When the node first asked; it gives up [`CATCH_UP_PATIENCE_MS`] later.
    started_ms: Option<u64>,
    asked_at_ms: u64,
    asks: u32,
}

#[derive(Clone, Debug)]
struct Fetch {
    set_root: Hash32,
    result_root: Hash32,
    candidates: Vec<ParticipantId>,
    next: usize,
    asked_at_ms: u64,
    chunks: BTreeMap<u32, Vec<Arc<SignedOffer>>>,
}

/// In the order written (`repr(C)`): the counters and shared bitsets that
/// every meter report and attestation reads share the first line, the
/// reports' and the attestations' maps follow; the rest is read at gate
/// closure, finality and settlement.
#[derive(Clone, Debug)]
#[repr(C)]
struct IntervalState {
    phase: Phase,
    /// Whether the node settled the interval.
    settled: bool,
    /// Reconciliation rounds started.
    rounds: u32,
    /// How often the node asked peers for missing reports.
    report_asks: u32,
    /// Once final: how many places trade in its result, and how many of
    /// those have a usable report here (both kept as reports arrive, so
    /// that completeness is known without a pass per report).
    traders: usize,
    reported_traders: usize,
    /// Once final: which places trade in its result (shared, as a
    /// simulator's nodes share it through [`ClearingCache::traders`], so
    /// that every report tests one bitset in the cache).
    trading: Arc<PlaceSet>,
    /// The interval's committee, when one attests
    /// ([`NodeConfig::attesters`]); `None`: every member.
    committee: Option<Arc<Committee>>,
    /// The meter reports held, by the participant's place (kept as
    /// `attestations` are). A participant that sent two different reports is
    /// settled as if it had none, whatever order they came in: it is in
    /// `conflicting` instead.
    reports: SharedPlaceMap<SignedMeterReport>,
    conflicting: PlaceSet,
    /// The signed attestations held, by the member's place (kept to hand a
    /// waiting peer the proof). An arrival tests and sets a bit per member
    /// ([`SharedPlaceMap`]): a simulator's thousand nodes keep the
    /// attestations they all received once between them.
    attestations: SharedPlaceMap<SignedAttestation>,
    /// The attesters' places grouped by roots (usually one or two groups),
    /// in arrival order, so finality is checked without regrouping on every
    /// arrival. Places, not 32-byte ids: a thousand nodes each fill one of
    /// these during the same second, and ids made that 32 MB.
    groups: BTreeMap<(Hash32, Hash32), Vec<u32>>,
    own: Option<(Hash32, Hash32, Arc<IntervalResult>)>,
    /// Once the node has its own result: its signed attestation (none when
    /// it is outside the interval's committee), when it last asked peers
    /// for the quorum's, and how often.
    attestation: Option<(Option<Arc<SignedAttestation>>, u64, u32)>,
    /// Asks allowed so far: `MAX_ASKS`, plus as many for each renewal
    /// ([`MAX_ASK_RENEWALS`]). Asks keep counting up, so renewed asks take
    /// new round numbers and reach other peers.
    ask_limit: u32,
    fetch: Option<Fetch>,
    /// Set while the interval is caught up, and after.
    catch_up: Option<CatchUp>,
}

impl IntervalState {
    fn record(&mut self, place: u32, signed: Arc<SignedAttestation>) {
        let roots = (signed.attestation.set_root, signed.attestation.result_root);
        if self.attestations.insert(place, signed) {
            // Grouping finds the quorum; once final, it is found.
            if self.phase != Phase::Final {
                self.groups.entry(roots).or_default().push(place);
            }
        }
    }

    /// The held reports of the members at `places`, in that order.
    /// Borrowed: a settlement reads them, and a thousand nodes taking a
    /// share of each report would write to its counter a thousand times.
    fn reports_of(&self, places: impl Iterator<Item = u32>) -> Vec<&Arc<SignedMeterReport>> {
        places.filter_map(|place| self.reports.get(place)).collect()
    }

    /// Whether the member at `place` attests in this interval.
    fn attests(&self, place: u32) -> bool {
        self.committee.as_ref().is_none_or(|c| c.contains(place))
    }

    /// The places of the final result's traders, ascending (member order).
    fn traders(&self) -> impl Iterator<Item = u32> + '_ {
        self.trading
            .iter()
            .filter_map(|place| u32::try_from(place).ok())
    }

    /// A new interval of `shared`'s market, with its committee if one
    /// attests: a bit per member for its attestation and its report.
    fn new(
        shared: &Shared,
        interval: IntervalIndex,
        committee: Option<Arc<Committee>>,
    ) -> IntervalState {
        IntervalState {
            phase: Phase::Reconciling,
            own: None,
            attestation: None,
            ask_limit: MAX_ASKS,
            committee,
            attestations: SharedPlaceMap::new(shared.attestation_slots.for_interval(interval)),
            groups: BTreeMap::new(),
            rounds: 0,
            fetch: None,
            reports: SharedPlaceMap::new(shared.report_slots.for_interval(interval)),
            conflicting: PlaceSet::default(),
            trading: Arc::default(),
            traders: 0,
            reported_traders: 0,
            report_asks: 0,
            settled: false,
            catch_up: None,
        }
    }
}

/// One participant's market state machine.
///
/// Laid out in the order written (`repr(C)`), from a cache line's start:
/// what every arriving message reads (the clock, the cached wake-up, the
/// shared services, the pools' interval keys) fills the first lines,
/// where the compiler's order had spread it over nine of the twelve. A
/// simulator's thousand nodes each miss the cache on every line a message
/// touches.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Node {
    now_ms: u64,
    /// [`Node::next_wakeup_ms`] as last computed, until something it
    /// depends on changes ([`Node::handle_into`] says where): the simulator
    /// asks after every message, and a tick with nothing due asks too.
    wakeup: Cell<Option<Option<u64>>>,
    /// The next interval whose gate closes; set by the first tick.
    next_close: Option<IntervalIndex>,
    /// Shared with every node of the market ([`Shared`]).
    config: Arc<NodeConfig>,
    shared: Shared,
    me: ParticipantId,
    pool: OfferPool,
    /// Intervals whose gate has closed and that are not pruned yet.
    intervals: IntervalMap<IntervalState>,
    key: SigningKey,
    peers: BTreeSet<ParticipantId>,
    sequences: BTreeMap<(IntervalIndex, Side), u64>,
    /// Who attested (anything) in the most recent final intervals.
    activity: Activity,
    /// Members needed for a quorum, from `activity`.
    threshold: usize,
    /// Missed intervals given up (no peer had a usable proof in time).
    catch_up_abandoned: u64,
}

impl Node {
    /// A node that checks every signature with ed25519 and clears every time.
    pub fn new(config: NodeConfig, key: SigningKey) -> Node {
        let shared = Shared::new(&config);
        Node::with_shared(config, key, shared)
    }

    /// A node using `shared` services (the simulator shares memoising ones
    /// among its nodes). `shared` must have been made for `config`.
    pub fn with_shared(config: NodeConfig, key: SigningKey, shared: Shared) -> Node {
        assert!(
            *shared.config == config,
            "shared services made for another configuration"
        );
        let me = ParticipantId(key.verifying_key().to_bytes());
        let mut node = Node {
            config: shared.config.clone(),
            key,
            me,
            now_ms: 0,
            pool: OfferPool::for_shared(
                shared.verifier.clone(),
                shared.members.clone(),
                shared.offer_slots.clone(),
            ),
            peers: BTreeSet::new(),
            intervals: IntervalMap::new(),
            next_close: None,
            sequences: BTreeMap::new(),
            activity: Activity::default(),
            threshold: 0,
            catch_up_abandoned: 0,
            wakeup: Cell::new(None),
            shared,
        };
        node.update_threshold();
        node
    }

    pub fn id(&self) -> ParticipantId {
        self.me
    }

    /// A one-line description of the node's state for `interval`, for
    /// diagnostics.
    pub fn debug_interval(&self, interval: IntervalIndex) -> String {
        match self.intervals.get(&interval) {
            None => format!("no state (next gate {:?})", self.next_close),
            Some(s) => format!(
                "phase {:?}, attested {}, {} attestations in {} groups (largest {}), threshold {}, fetching {:?}",
                s.phase,
                s.own.is_some(),
                s.attestations.len(),
                s.groups.len(),
                s.groups.values().map(Vec::len).max().unwrap_or(0),
                self.threshold_of(interval),
                s.fetch
                    .as_ref()
                    .map(|f| (f.next, f.candidates.len(), f.chunks.len())),
            ),
        }
    }

    fn gate_ms(&self, interval: IntervalIndex) -> u64 {
        self.config
            .rules
            .clock
            .gate_closure_s(interval)
            .saturating_mul(1_000)
    }

    /// Handles one input.
    #[inline]
    pub fn handle(&mut self, input: Input) -> Output {
        let mut out = Output::default();
        self.handle_into(input, &mut out);
        out
    }

    /// [`Node::handle`] into an output the caller owns: the verdict is
    /// set, the actions are appended. A caller handling many inputs (the
    /// simulator, some three hundred million a day) reuses one output, so
    /// that a call allocates nothing, and reads the verdict where the node
    /// wrote it. An output returned by value was copied out in pieces the
    /// processor could not forward from the narrower stores that had just
    /// written them, so that each call waited for every store before it,
    /// cache misses included, to reach the cache.
    pub fn handle_into(&mut self, input: Input, out: &mut Output) {
        // What is due next depends on the intervals' phases, rounds,
        // fetches, asks and settlements. A tick that runs anything forgets
        // the wake-up itself; a message changes those only where it
        // finalizes, starts, moves or ends a fetch, catches up or settles,
        // and those places forget it. The simulator asks after each of a
        // day's 150 million messages, and a computation walks every interval
        // held (debug builds check the kept value at every ask). Local
        // commands and peer changes forget it outright.
        let keeps_wakeup = matches!(input, Input::Tick { .. } | Input::Message { .. });
        if !keeps_wakeup {
            self.wakeup.set(None);
        }
        match input {
            Input::Tick { now_ms } => self.tick(now_ms, out),
            Input::Message { from, message } => {
                let verdict = if self.shared.members.contains_key(&from) {
                    self.on_message(from, message, out)
                } else {
                    Verdict::Reject("sender is not a member of this market".into())
                };
                out.verdict = Some(verdict);
            }
            Input::LocalOffer {
                interval,
                side,
                energy_wh,
                price_micro_per_kwh,
            } => {
                let verdict = self.local_offer(interval, side, energy_wh, price_micro_per_kwh, out);
                out.verdict = Some(verdict);
            }
            Input::MeterReport {
                interval,
                import_wh,
                export_wh,
            } => {
                let signed = MeterReport {
                    chain_id: self.config.rules.chain_id,
                    market: self.config.rules.market_id,
                    interval,
                    participant: self.me,
                    import_wh,
                    export_wh,
                }
                .sign(&self.key);
                let signed = Arc::new(signed);
                self.vouch(signed.clone());
                let verdict = self.on_meter_report(signed.clone(), out);
                if verdict == Verdict::Accept && self.report_wanted(interval) {
                    out.actions
                        .push(Action::Publish(Message::MeterReport(signed)));
                }
                out.verdict = Some(verdict);
            }
            Input::CatchUp { from } => self.start_catch_up(from, out),
            Input::PeerUp(peer) => {
                if self.shared.members.contains_key(&peer)
                    && peer != self.me
                    && self.peers.insert(peer)
                {
                    self.ask_new_peer(peer, out);
                    self.renew_asks();
                }
            }
            Input::PeerDown(peer) => {
                self.peers.remove(&peer);
            }
        }
    }

    /// Tells the verifier that `signed`, which this node has just signed
    /// with its own key, is valid: ed25519 signatures made with a key verify
    /// under it. A daemon's verifier keeps nothing; the simulator's answers
    /// every node that receives this allocation from it, so an honest
    /// message is never checked, where before its first receiver (or its
    /// signer, for offers) paid a whole verification for all.
    fn vouch(&self, signed: SharedMessage) {
        self.shared.verifier.remember(signed, true);
    }

    fn local_offer(
        &mut self,
        interval: IntervalIndex,
        side: Side,
        energy_wh: u64,
        price: u64,
        out: &mut Output,
    ) -> Verdict {
        let sequence = self.sequences.entry((interval, side)).or_insert(0);
        *sequence += 1;
        let offer = Offer {
            chain_id: self.config.rules.chain_id,
            market: self.config.rules.market_id,
            interval,
            side,
            energy_wh,
            price_micro_per_kwh: price,
            participant: self.me,
            sequence: *sequence,
        }
        .sign(&self.key);
        let offer = Arc::new(offer);
        self.vouch(offer.clone());
        let verdict = self.receive_offer(offer.clone(), out);
        if verdict == Verdict::Accept {
            out.actions.push(Action::Publish(Message::Offer(offer)));
        }
        verdict
    }

    fn arrival(&self, interval: IntervalIndex) -> Option<Arrival> {
        match self.intervals.get(&interval).map(|s| s.phase) {
            None => Some(Arrival::Gossip {
                now_s: self.now_ms / 1_000,
            }),
            Some(Phase::Reconciling) => Some(Arrival::Reconciliation),
            Some(_) => None,
        }
    }

    fn verdict_of(validation: &Validation) -> Verdict {
        match validation {
            Validation::Accept(_) => Verdict::Accept,
            Validation::Ignore(_) => Verdict::Ignore,
            Validation::Reject(reason) => Verdict::Reject(reason.to_string()),
        }
    }

    /// A gossiped offer: only before gate closure.
    fn receive_offer(&mut self, offer: Arc<SignedOffer>, out: &mut Output) -> Verdict {
        let Some(&place) = self.shared.members.get(&offer.offer.participant) else {
            return Verdict::Reject("offer from a participant that is not a member".into());
        };
        // The intervals held are those whose gate has closed here, all
        // below `next_close`: an offer for a later one (nearly every offer)
        // need not look, which in a simulator's thousand nodes is a cache
        // miss each.
        debug_assert!(
            self.next_close
                .is_none_or(|next| self.intervals.keys().all(|&i| i < next))
        );
        let closed = self
            .next_close
            .is_none_or(|next| offer.offer.interval < next)
            && self.intervals.contains_key(&offer.offer.interval);
        if closed {
            return Verdict::Reject(format!(
                "interval {} is closed for offers",
                offer.offer.interval.0
            ));
        }
        let own = (offer.offer.participant == self.me).then_some((
            offer.offer.interval,
            offer.offer.side,
            offer.offer.sequence,
        ));
        let validation = self.pool.receive_placed(
            &self.config.rules,
            offer,
            Some(place),
            Arrival::Gossip {
                now_s: self.now_ms / 1_000,
            },
        );
        // One of our own offers (read back after a restart, or echoed by a
        // peer): never sign another with its sequence number or a lower one,
        // which would be an equivocation or stale.
        if let Some((interval, side, sequence)) = own {
            let next = self.sequences.entry((interval, side)).or_insert(0);
            *next = (*next).max(sequence);
        }
        self.publish_evidence(out);
        Self::verdict_of(&validation)
    }

    fn publish_evidence(&mut self, out: &mut Output) {
        for evidence in self.pool.take_evidence() {
            out.actions
                .push(Action::Publish(Message::Evidence(Box::new(evidence))));
        }
    }

    fn on_message(&mut self, from: ParticipantId, message: Message, out: &mut Output) -> Verdict {
        if let Err(error) = message.check_bounds() {
            return Verdict::Reject(error.to_string());
        }
        match message {
            Message::Offer(offer) => self.receive_offer(offer, out),
            Message::Evidence(evidence) => self.on_evidence(*evidence),
            Message::Attestation(attestation) => self.on_attestation(attestation, out),
            Message::Pending(attestation) => self.on_pending(from, attestation, out),
            Message::Attestations {
                interval,
                attestations,
            } => {
                if attestations
                    .iter()
                    .any(|a| a.attestation.interval != interval)
                {
                    return Verdict::Reject("attestations for another interval".into());
                }
                let verdicts: Vec<Verdict> = attestations
                    .into_iter()
                    .map(|a| self.on_attestation(a, out))
                    .collect();
                first_reject(verdicts)
            }
            Message::Reconcile { interval, message } => {
                self.on_reconcile(from, interval, &message, out)
            }
            Message::Want { interval, ids } => self.on_want(from, interval, &ids, out),
            Message::Offers { interval, offers } => self.on_offers(interval, offers, out),
            Message::FetchSet { interval, set_root } => {
                self.on_fetch(from, interval, set_root, out)
            }
            Message::SetChunk(chunk) => self.on_set_chunk(from, chunk, out),
            Message::MeterReport(report) => self.on_meter_report(report, out),
            Message::WantReports {
                interval,
                participants,
            } => self.on_want_reports(from, interval, &participants, out),
            Message::Reports { interval, reports } => {
                if reports.iter().any(|r| r.report.interval != interval) {
                    return Verdict::Reject("reports for another interval".into());
                }
                let verdicts: Vec<Verdict> = reports
                    .into_iter()
                    .map(|r| self.on_meter_report(r, out))
                    .collect();
                first_reject(verdicts)
            }
            Message::WantFinal { interval } => self.on_want_final(from, interval, out),
        }
    }

    /// A meter report, gossiped or asked for. Kept for an interval this node
    /// holds whose gate has closed; checked before it changes anything.
    fn on_meter_report(&mut self, signed: Arc<SignedMeterReport>, out: &mut Output) -> Verdict {
        let r = signed.report;
        if r.chain_id != self.config.rules.chain_id || r.market != self.config.rules.market_id {
            return Verdict::Reject("meter report for another chain or market".into());
        }
        let Some(&member) = self.shared.members.get(&r.participant) else {
            return Verdict::Reject("meter report from a non-member".into());
        };
        let place = member as usize;
        // A connection cannot carry more in an interval than an offer may
        // (the market's bound); the bound also keeps settlement's sums far
        // from overflowing.
        let max_wh = self.config.rules.max_offer_energy_wh;
        if r.import_wh > max_wh || r.export_wh > max_wh {
            return Verdict::Reject(format!(
                "meter report above the market's {max_wh} Wh per interval"
            ));
        }
        let Some(state) = self.intervals.get(&r.interval) else {
            return Verdict::Ignore;
        };
        match state.reports.get(member) {
            Some(held) if Arc::ptr_eq(held, &signed) || **held == *signed => {
                return Verdict::Ignore;
            }
            None if state.conflicting.contains(place) => return Verdict::Ignore,
            Some(_) | None => {}
        }
        let verifier = self.shared.verifier.as_ref();
        if let Err(error) = check_shared(verifier, &signed, || {
            verifier
                .key(&r.participant)
                .and_then(|key| signed.verify_with(verifier, &key))
        }) {
            return Verdict::Reject(format!("meter report: {error}"));
        }
        let state = self.intervals.get_mut(&r.interval).expect("checked above");
        let trader = state.trading.contains(place);
        if state.reports.remove(member).is_some() {
            state.conflicting.insert(place);
            if trader {
                state.reported_traders -= 1;
            }
            return Verdict::Reject("participant sent two different meter reports".into());
        }
        state.reports.insert(member, signed);
        if trader {
            state.reported_traders += 1;
        }
        self.settle_if_complete(r.interval, out);
        Verdict::Accept
    }

    fn on_want_reports(
        &mut self,
        from: ParticipantId,
        interval: IntervalIndex,
        participants: &[ParticipantId],
        out: &mut Output,
    ) -> Verdict {
        let Some(state) = self.intervals.get(&interval) else {
            return Verdict::Ignore;
        };
        let held = state.reports_of(
            participants
                .iter()
                .filter_map(|p| self.shared.members.get(p).copied()),
        );
        for chunk in held.chunks(MAX_REPORTS_PER_MESSAGE) {
            out.actions.push(Action::Send {
                to: from,
                message: Message::Reports {
                    interval,
                    reports: chunk.iter().map(|&report| report.clone()).collect(),
                },
            });
        }
        Verdict::Accept
    }

    /// Whether peers need this node's meter report for `interval`: not when
    /// the interval is final here and the node is not among its traders
    /// (settlement reads traders' reports only). Unknown or not yet final:
    /// it may be a trader, so yes.
    fn report_wanted(&self, interval: IntervalIndex) -> bool {
        let Some(state) = self.intervals.get(&interval) else {
            return true;
        };
        if state.phase != Phase::Final {
            return true;
        }
        let place = self.shared.members.get(&self.me).copied();
        place.is_some_and(|place| state.trading.contains(place as usize))
    }

    /// The traders of a final, unsettled interval without a (usable) report here.
    fn missing_reports(&self, interval: IntervalIndex) -> Option<Vec<ParticipantId>> {
        let state = self.intervals.get(&interval)?;
        if state.phase != Phase::Final || state.settled {
            return None;
        }
        // Places ascend in member order, which is the participants' order.
        Some(
            state
                .traders()
                .filter(|&place| !state.reports.contains(place))
                .map(|place| self.shared.places[place as usize])
                .collect(),
        )
    }

    fn settle_if_complete(&mut self, interval: IntervalIndex, out: &mut Output) {
        let complete = self.intervals.get(&interval).is_some_and(|s| {
            s.phase == Phase::Final && !s.settled && s.reported_traders == s.traders
        });
        if complete {
            self.settle(interval, Vec::new(), out);
        }
    }

    /// Settles a final interval with the traders' reports held.
    fn settle(&mut self, interval: IntervalIndex, missing: Vec<ParticipantId>, out: &mut Output) {
        let Some(state) = self.intervals.get_mut(&interval) else {
            return;
        };
        let Some((_, result_root, result)) = state.own.as_ref() else {
            return;
        };
        state.settled = true;
        self.wakeup.set(None);
        let reports = state.reports_of(state.traders());
        let rules = &self.config.rules;
        let tariff = rules.tariffs.at(rules.clock.start_s(interval));
        let settlement = self
            .shared
            .clearing
            .settle(interval, result_root, &reports, &mut || {
                let readings: Vec<MeterReading> = reports
                    .iter()
                    .map(|r| MeterReading {
                        participant: r.report.participant,
                        interval,
                        import_wh: r.report.import_wh,
                        export_wh: r.report.export_wh,
                    })
                    .collect();
                settle(interval, &tariff, &result.trades, &readings)
                    .expect("readings are one per trader, for this interval, and bounded")
            });
        out.actions.push(Action::Settled(Box::new(Settled {
            interval,
            settlement,
            missing,
        })));
    }

    /// Milliseconds (node clock) at which `interval`'s delivery ends.
    fn end_ms(&self, interval: IntervalIndex) -> u64 {
        self.config
            .rules
            .clock
            .start_s(IntervalIndex(interval.0 + 1))
            .saturating_mul(1_000)
    }

    fn on_evidence(&mut self, evidence: crate::validation::Equivocation) -> Verdict {
        let interval = evidence.first.offer.interval;
        if evidence.second.offer.interval != interval
            || evidence.first.offer.participant != evidence.second.offer.participant
        {
            return Verdict::Reject(
                "evidence offers are not from one participant and interval".into(),
            );
        }
        let Some(arrival) = self.arrival(interval) else {
            return Verdict::Ignore;
        };
        if !self
            .config
            .members
            .contains(&evidence.first.offer.participant)
        {
            return Verdict::Reject("evidence about a participant that is not a member".into());
        }
        let before = self.set_root(interval);
        let verdicts = self.pool.receive_batch(
            &self.config.rules,
            vec![evidence.first, evidence.second],
            arrival,
        );
        self.pool.take_evidence();
        if let Some(reject) = verdicts.iter().find_map(|v| match v {
            Validation::Reject(crate::validation::Reject::BadSignature(e)) => Some(e.to_string()),
            _ => None,
        }) {
            return Verdict::Reject(format!("evidence with a bad signature: {reject}"));
        }
        if self.set_root(interval) == before {
            Verdict::Ignore
        } else {
            Verdict::Accept
        }
    }

    fn on_reconcile(
        &mut self,
        from: ParticipantId,
        interval: IntervalIndex,
        message: &crate::reconcile::ReconcileMessage,
        out: &mut Output,
    ) -> Verdict {
        if self.arrival(interval).is_none() {
            return Verdict::Ignore;
        }
        let own = self.pool.set_ids(interval);
        let step = match respond_with(own, &self.pool.set_sum(interval), message) {
            Ok(step) => step,
            Err(error) => return Verdict::Reject(error.to_string()),
        };
        if let Some(reply) = step.reply {
            out.actions.push(Action::Send {
                to: from,
                message: Message::Reconcile {
                    interval,
                    message: reply,
                },
            });
        }
        self.send_offers(from, interval, &step.send, out);
        for ids in step.want.chunks(MAX_WANTED_IDS) {
            out.actions.push(Action::Send {
                to: from,
                message: Message::Want {
                    interval,
                    ids: ids.to_vec(),
                },
            });
        }
        Verdict::Accept
    }

    /// Sends `to` the offers with `ids` that this node holds for `interval`.
    fn send_offers(
        &self,
        to: ParticipantId,
        interval: IntervalIndex,
        ids: &[OfferId],
        out: &mut Output,
    ) {
        let offers = self.pool.set_offers_with(interval, ids);
        for chunk in offers.chunks(MAX_OFFERS_PER_MESSAGE) {
            out.actions.push(Action::Send {
                to,
                message: Message::Offers {
                    interval,
                    offers: chunk.to_vec(),
                },
            });
        }
    }

    fn on_want(
        &mut self,
        from: ParticipantId,
        interval: IntervalIndex,
        ids: &[OfferId],
        out: &mut Output,
    ) -> Verdict {
        self.send_offers(from, interval, ids, out);
        Verdict::Accept
    }

    fn on_offers(
        &mut self,
        interval: IntervalIndex,
        offers: Vec<Arc<SignedOffer>>,
        out: &mut Output,
    ) -> Verdict {
        let Some(arrival) = self.arrival(interval) else {
            return Verdict::Ignore;
        };
        if offers.iter().any(|o| {
            o.offer.interval != interval || !self.shared.members.contains_key(&o.offer.participant)
        }) {
            return Verdict::Reject("offers for another interval or from non-members".into());
        }
        let verdicts = self.pool.receive_batch(&self.config.rules, offers, arrival);
        self.publish_evidence(out);
        let rejected = verdicts.iter().find_map(|v| match v {
            Validation::Reject(crate::validation::Reject::BadSignature(e)) => Some(e.to_string()),
            Validation::Reject(
                crate::validation::Reject::WrongChain { .. }
                | crate::validation::Reject::WrongMarket,
            ) => Some("offer for another chain or market".into()),
            _ => None,
        });
        match rejected {
            Some(reason) => Verdict::Reject(reason),
            None => Verdict::Accept,
        }
    }

    /// A waiting peer's attestation: take it like any other, and if this node
    /// is final for the interval, send the peer the quorum's attestations.
    fn on_pending(
        &mut self,
        from: ParticipantId,
        signed: Arc<SignedAttestation>,
        out: &mut Output,
    ) -> Verdict {
        let interval = signed.attestation.interval;
        let verdict = self.on_attestation(signed, out);
        if matches!(verdict, Verdict::Reject(_)) {
            return verdict;
        }
        let Some(quorum) = self.final_attestations(interval) else {
            return verdict;
        };
        for message in attestation_messages(interval, &quorum) {
            out.actions.push(Action::Send { to: from, message });
        }
        Verdict::Accept
    }

    /// A peer that missed `interval` (it was down), or that is outside the
    /// interval's committee and has not seen its quorum yet, asks for the
    /// proof that it is final.
    /// A node that holds it final answers with the quorum's attestations;
    /// one that does not ignores the ask (its shell may answer from storage).
    fn on_want_final(
        &mut self,
        from: ParticipantId,
        interval: IntervalIndex,
        out: &mut Output,
    ) -> Verdict {
        let Some(quorum) = self.final_attestations(interval) else {
            return Verdict::Ignore;
        };
        for message in attestation_messages(interval, &quorum) {
            out.actions.push(Action::Send { to: from, message });
        }
        Verdict::Accept
    }

    /// The attestations of the quorum that made `interval` final, sorted by
    /// attester, while the node holds it (to persist them with the result,
    /// and to hand them to a peer).
    pub fn final_attestations(
        &self,
        interval: IntervalIndex,
    ) -> Option<Vec<Arc<SignedAttestation>>> {
        let state = self.intervals.get(&interval)?;
        if state.phase != Phase::Final {
            return None;
        }
        let (set_root, result_root, _) = state.own.as_ref()?;
        let mut quorum: Vec<Arc<SignedAttestation>> = state
            .attestations
            .iter()
            .map(|(_, a)| a)
            .filter(|a| {
                (a.attestation.set_root, a.attestation.result_root) == (*set_root, *result_root)
            })
            .cloned()
            .collect();
        quorum.sort_unstable_by_key(|a| a.attestation.attester);
        Some(quorum)
    }

    fn on_attestation(&mut self, signed: Arc<SignedAttestation>, out: &mut Output) -> Verdict {
        let a = signed.attestation;
        if a.chain_id != self.config.rules.chain_id || a.market != self.config.rules.market_id {
            return Verdict::Reject("attestation for another chain or market".into());
        }
        let Some(&place) = self.shared.members.get(&a.attester) else {
            return Verdict::Reject("attestation from a non-member".into());
        };
        let Some(next_close) = self.next_close else {
            return Verdict::Ignore;
        };
        if a.interval >= next_close {
            // An interval whose gate has not closed here yet (clock skew) or
            // one that does not exist yet.
            return if a.interval.0 > next_close.0 + 1 {
                Verdict::Reject("attestation for an interval that is not closed".into())
            } else {
                Verdict::Ignore
            };
        }
        let Some(state) = self.intervals.get(&a.interval) else {
            return Verdict::Ignore;
        };
        if !state.attests(place) {
            return Verdict::Reject(
                "attestation from a member outside the interval's committee".into(),
            );
        }
        let known = state
            .attestations
            .get(place)
            .map(|k| (k.attestation.set_root, k.attestation.result_root));
        if known.is_some_and(|roots| roots != (a.set_root, a.result_root)) {
            return Verdict::Reject("member attested two different results".into());
        }
        let verifier = self.shared.verifier.as_ref();
        if known.is_none()
            && let Err(error) = check_shared(verifier, &signed, || {
                verifier
                    .key(&a.attester)
                    .and_then(|key| signed.verify_with(verifier, &key))
            })
        {
            return Verdict::Reject(format!("attestation: {error}"));
        }
        if known.is_some() {
            return Verdict::Ignore;
        }
        let state = self.intervals.get_mut(&a.interval).expect("checked above");
        state.record(place, signed);
        if state.phase == Phase::Final && self.activity.add(a.interval, place) {
            self.update_threshold();
        }
        let state = self.intervals.get_mut(&a.interval).expect("checked above");
        // A member sees another set while we still reconcile: reconcile with it.
        if state.phase == Phase::Reconciling
            && a.attester != self.me
            && self.set_root(a.interval) != a.set_root
        {
            out.actions.push(Action::Send {
                to: a.attester,
                message: Message::Reconcile {
                    interval: a.interval,
                    message: initiate_with(
                        self.pool.set_ids(a.interval),
                        &self.pool.set_sum(a.interval),
                    ),
                },
            });
        }
        self.check_finality(a.interval, out);
        Verdict::Accept
    }

    fn on_fetch(
        &mut self,
        from: ParticipantId,
        interval: IntervalIndex,
        set_root: Hash32,
        out: &mut Output,
    ) -> Verdict {
        let Some(state) = self.intervals.get(&interval) else {
            return Verdict::Ignore;
        };
        match &state.own {
            Some((own_root, _, _))
                if *own_root == set_root && state.phase != Phase::Reconciling => {}
            _ => return Verdict::Ignore,
        }
        let offers = self.pool.set_offers(interval);
        for message in set_chunks(interval, set_root, &offers) {
            out.actions.push(Action::Send { to: from, message });
        }
        Verdict::Accept
    }

    fn on_set_chunk(&mut self, from: ParticipantId, chunk: SetChunk, out: &mut Output) -> Verdict {
        let interval = chunk.interval;
        let Some(state) = self.intervals.get_mut(&interval) else {
            return Verdict::Ignore;
        };
        let Some(fetch) = state.fetch.as_mut() else {
            return Verdict::Ignore;
        };
        let asked = fetch.candidates.get(fetch.next.saturating_sub(1)) == Some(&from);
        if !asked || fetch.set_root != chunk.set_root {
            return Verdict::Ignore;
        }
        fetch.chunks.insert(chunk.index, chunk.offers);
        if fetch.chunks.len() < chunk.total as usize {
            return Verdict::Accept;
        }
        let mut fetch = state.fetch.take().expect("present");
        self.wakeup.set(None);
        let offers: Vec<Arc<SignedOffer>> = std::mem::take(&mut fetch.chunks)
            .into_values()
            .flatten()
            .collect();
        if offers.iter().any(|o| {
            o.offer.interval != interval || !self.shared.members.contains_key(&o.offer.participant)
        }) {
            self.retry_fetch(interval, fetch, out);
            return Verdict::Reject("fetched set has offers from elsewhere".into());
        }
        let mut fresh =
            OfferPool::for_members(self.shared.verifier.clone(), self.shared.members.clone());
        fresh.receive_batch(&self.config.rules, offers, Arrival::Reconciliation);
        let (root, result) = self.clear_pool(&fresh, interval);
        if root != fetch.set_root || result.result_hash != fetch.result_root {
            self.retry_fetch(interval, fetch, out);
            return Verdict::Reject("fetched set does not match the quorum's roots".into());
        }
        self.pool.replace_interval(interval, fresh);
        let state = self.intervals.get_mut(&interval).expect("present");
        // A node catching up took no part: it does not attest.
        let caught_up = state.phase == Phase::CatchingUp;
        let attested = state.own.is_some() || caught_up;
        state.own = Some((root, result.result_hash, result.clone()));
        if !attested {
            self.attest(interval, root, result.result_hash, out);
        }
        self.finalize(interval, true, out);
        if caught_up {
            self.catch_up_round(out);
        }
        Verdict::Accept
    }

    /// A fetched set was unusable: ask the next candidate.
    fn retry_fetch(&mut self, interval: IntervalIndex, fetch: Fetch, out: &mut Output) {
        if let Some(state) = self.intervals.get_mut(&interval) {
            state.fetch = Some(Fetch {
                chunks: BTreeMap::new(),
                ..fetch
            });
            self.wakeup.set(None);
        }
        self.ask_next(interval, out);
    }

    /// Asks the next candidate for the quorum's set.
    fn ask_next(&mut self, interval: IntervalIndex, out: &mut Output) {
        let now_ms = self.now_ms;
        let Some(fetch) = self
            .intervals
            .get_mut(&interval)
            .and_then(|s| s.fetch.as_mut())
        else {
            return;
        };
        if fetch.candidates.is_empty() {
            return;
        }
        let to = fetch.candidates[fetch.next % fetch.candidates.len()];
        fetch.next += 1;
        fetch.asked_at_ms = now_ms;
        fetch.chunks.clear();
        self.wakeup.set(None);
        out.actions.push(Action::Send {
            to,
            message: Message::FetchSet {
                interval,
                set_root: fetch.set_root,
            },
        });
    }

    /// Moves the node's clock to `now_ms` (never back), as a tick does, and
    /// says whether anything is due then; if so, the shell ticks
    /// (`Input::Tick`), which runs it. When nothing is due this is all a
    /// tick would do, so a shell that ticks before every message (the
    /// simulator: a hundred and fifty million times a day of a thousand
    /// households) calls this instead and ticks only when it says so.
    pub fn advance_clock(&mut self, now_ms: u64) -> bool {
        self.now_ms = self.now_ms.max(now_ms);
        let now_ms = self.now_ms;
        self.next_wakeup_ms().is_none_or(|at| now_ms >= at)
    }

    /// When this node next has something to do on its own (a gate closes, a
    /// reconciliation round or the end of a window is due, a fetch times out,
    /// an attestation is due to be published again), in its clock's
    /// milliseconds. A shell ticks the node then; ticks in between only
    /// update the node's notion of the time. `None` before the first tick.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        if let Some(known) = self.wakeup.get() {
            debug_assert_eq!(
                known,
                self.compute_next_wakeup_ms(),
                "an input changed what is due without forgetting the wake-up"
            );
            return known;
        }
        let next = self.compute_next_wakeup_ms();
        self.wakeup.set(Some(next));
        next
    }

    fn compute_next_wakeup_ms(&self) -> Option<u64> {
        let mut next = self.next_close.map(|i| self.gate_ms(i))?;
        let window = self.config.reconcile_window_ms;
        for (interval, state) in &self.intervals {
            let gate = self.gate_ms(*interval);
            let mut due = |at: u64| next = next.min(at);
            match state.phase {
                Phase::CatchingUp => {
                    if let Some(CatchUp {
                        started_ms: Some(started),
                        asked_at_ms,
                        ..
                    }) = state.catch_up
                    {
                        if state.fetch.is_none() {
                            due(asked_at_ms + CATCH_UP_ASK_MS);
                        }
                        due(started + CATCH_UP_PATIENCE_MS);
                    }
                }
                Phase::Reconciling => {
                    // Rounds are due at quarters of the window, inside it.
                    let round = u64::from(state.rounds);
                    let round_ms = (round * window).div_ceil(RECONCILE_ROUNDS);
                    if round < RECONCILE_ROUNDS && round_ms < window {
                        due(gate + round_ms);
                    }
                    if state.fetch.is_none() {
                        due(gate + window);
                    }
                }
                Phase::Attested => {
                    if let Some((_, asked_ms, times)) = &state.attestation
                        && *times < state.ask_limit
                    {
                        due(asked_ms + ASK_AGAIN_MS);
                    }
                }
                Phase::Final => {
                    if !state.settled {
                        let end = self.end_ms(*interval);
                        if state.report_asks < REPORT_ASKS {
                            due(end + REPORT_ASK_MS * u64::from(state.report_asks + 1));
                        }
                        due(end + SETTLE_AFTER_MS);
                    }
                }
            }
            if let Some(fetch) = &state.fetch
                && !fetch.candidates.is_empty()
            {
                due(fetch.asked_at_ms + FETCH_TIMEOUT_MS);
            }
        }
        Some(next)
    }

    /// The final offer set of `interval` (to persist it while handling its
    /// [`Action::Finalized`]), while the node still holds it.
    pub fn final_offers(&self, interval: IntervalIndex) -> Option<Vec<Arc<SignedOffer>>> {
        let state = self.intervals.get(&interval)?;
        (state.phase == Phase::Final).then(|| self.pool.set_offers(interval))
    }

    fn tick(&mut self, now_ms: u64, out: &mut Output) {
        if !self.advance_clock(now_ms) {
            return;
        }
        let now_ms = self.now_ms;
        self.wakeup.set(None);
        let clock = self.config.rules.clock;
        let mut next = *self
            .next_close
            .get_or_insert_with(|| clock.next_open(now_ms / 1_000));
        while self.gate_ms(next) <= now_ms {
            self.close_gate(next, out);
            next = IntervalIndex(next.0 + 1);
        }
        self.next_close = Some(next);
        let window = self.config.reconcile_window_ms;
        // Further reconciliation rounds at 1/4, 2/4 and 3/4 of the window.
        let rounds_due: Vec<IntervalIndex> = self
            .intervals
            .iter()
            .filter(|(i, s)| {
                let elapsed = now_ms.saturating_sub(self.gate_ms(**i));
                s.phase == Phase::Reconciling
                    && elapsed < window
                    && u64::from(s.rounds)
                        < (elapsed * RECONCILE_ROUNDS / window.max(1) + 1).min(RECONCILE_ROUNDS)
            })
            .map(|(i, _)| *i)
            .collect();
        for interval in rounds_due {
            self.reconcile_round(interval, out);
        }
        let due: Vec<IntervalIndex> = self
            .intervals
            .iter()
            .filter(|(i, s)| {
                s.phase == Phase::Reconciling
                    && now_ms >= self.gate_ms(**i) + window
                    && s.fetch.is_none()
            })
            .map(|(i, _)| *i)
            .collect();
        for interval in due {
            let (set_root, result) = self.clear_pool(&self.pool, interval);
            let state = self.intervals.get_mut(&interval).expect("listed");
            state.own = Some((set_root, result.result_hash, result.clone()));
            state.phase = Phase::Attested;
            self.attest(interval, set_root, result.result_hash, out);
            self.check_finality(interval, out);
        }
        let stale: Vec<IntervalIndex> = self
            .intervals
            .iter()
            .filter(|(_, s)| {
                s.fetch
                    .as_ref()
                    .is_some_and(|f| now_ms >= f.asked_at_ms + FETCH_TIMEOUT_MS)
            })
            .map(|(i, _)| *i)
            .collect();
        for interval in stale {
            self.ask_next(interval, out);
        }
        self.catch_up_round(out);
        let mut asks: Vec<(IntervalIndex, u32, Option<Arc<SignedAttestation>>)> = Vec::new();
        for (interval, state) in self.intervals.iter_mut() {
            if state.phase == Phase::Attested
                && let Some((signed, asked_ms, times)) = state.attestation.as_mut()
                && now_ms >= *asked_ms + ASK_AGAIN_MS
                && *times < state.ask_limit
            {
                *asked_ms = now_ms;
                *times += 1;
                asks.push((*interval, ASK_ROUND_BASE + *times, signed.clone()));
            }
        }
        let unsettled: Vec<(IntervalIndex, Vec<ParticipantId>)> = self
            .intervals
            .keys()
            .filter(|i| now_ms >= self.end_ms(**i) + REPORT_ASK_MS)
            .filter_map(|i| self.missing_reports(*i).map(|m| (*i, m)))
            .collect();
        for (interval, missing) in unsettled {
            if now_ms >= self.end_ms(interval) + SETTLE_AFTER_MS {
                self.settle(interval, missing, out);
            } else {
                let asks = self.intervals[&interval].report_asks;
                if asks >= REPORT_ASKS
                    || now_ms < self.end_ms(interval) + REPORT_ASK_MS * u64::from(asks + 1)
                {
                    continue;
                }
                self.intervals
                    .get_mut(&interval)
                    .expect("listed")
                    .report_asks += 1;
                // Ask a few peers (others each time) for every missing
                // report, and each missing trader, up to a bound, for its
                // own only: asked for all, each trader answered with
                // dozens of reports the peers were sending too.
                let partners = self.reconcile_partners(interval, REPORT_ASK_ROUND + asks);
                for peer in &partners {
                    for chunk in missing.chunks(MAX_WANTED_IDS) {
                        out.actions.push(Action::Send {
                            to: *peer,
                            message: Message::WantReports {
                                interval,
                                participants: chunk.to_vec(),
                            },
                        });
                    }
                }
                for trader in missing
                    .iter()
                    .filter(|p| **p != self.me && !partners.contains(p))
                    .take(MAX_TRADERS_ASKED)
                {
                    out.actions.push(Action::Send {
                        to: *trader,
                        message: Message::WantReports {
                            interval,
                            participants: vec![*trader],
                        },
                    });
                }
            }
        }
        for (interval, round, signed) in asks {
            for peer in self.reconcile_partners(interval, round) {
                out.actions.push(Action::Send {
                    to: peer,
                    message: ask_for_quorum(interval, signed.as_ref()),
                });
            }
        }
        // Prune final intervals that are old enough.
        let horizon = IntervalIndex(next.0.saturating_sub(KEEP_FINAL_INTERVALS));
        let keep = self.intervals.split_off(&horizon);
        let old = std::mem::replace(&mut self.intervals, keep);
        let give_up = IntervalIndex(next.0.saturating_sub(MAX_PENDING_INTERVALS));
        for (interval, state) in old {
            // Missed intervals are old by nature: they have their own patience.
            if state.phase == Phase::CatchingUp
                || (state.phase != Phase::Final && interval >= give_up)
            {
                self.intervals.insert(interval, state);
            }
        }
        let oldest = self.intervals.keys().next().copied().unwrap_or(horizon);
        self.pool.prune_before(oldest.min(horizon));
        self.sequences = self.sequences.split_off(&(oldest.min(horizon), Side::Bid));
    }

    /// A fresh state for `interval`, with its committee if one attests.
    fn new_interval(&self, interval: IntervalIndex) -> IntervalState {
        let members = self.config.members.len();
        let size = self.config.attesters;
        let committee = (size > 0 && size < members).then(|| {
            self.shared
                .committee(&self.config.rules.market_id, interval, size)
        });
        IntervalState::new(&self.shared, interval, committee)
    }

    /// A peer that has just connected (or reconnected, after a partition
    /// healed) may hold the quorum of an interval this node still waits
    /// for: ask it at once, rather than at the next gate closure, which is up
    /// to an interval away once the quick asks after attesting are spent.
    fn ask_new_peer(&self, peer: ParticipantId, out: &mut Output) {
        for message in self.quorum_asks() {
            out.actions.push(Action::Send { to: peer, message });
        }
    }

    /// A peer is back, perhaps because a partition healed: the quorum of an
    /// interval this node had stopped asking for ([`MAX_ASKS`]) may form
    /// within seconds, as the sides exchange attestations and sets. Such
    /// intervals start another round of asks instead of waiting for the next
    /// gate closure, a whole interval later: `MAX_ASKS` more asks of a few
    /// peers, at most [`MAX_ASK_RENEWALS`] times per interval. (The input
    /// already forgot the cached wake-up.)
    fn renew_asks(&mut self) {
        let now_ms = self.now_ms;
        for (_, state) in self.intervals.iter_mut() {
            if state.phase == Phase::Attested
                && let Some((_, asked_ms, times)) = state.attestation.as_mut()
                && *times >= state.ask_limit
                && state.ask_limit < MAX_ASKS * (1 + MAX_ASK_RENEWALS)
            {
                state.ask_limit += MAX_ASKS;
                *asked_ms = now_ms;
            }
        }
    }

    /// What the node asks a peer for every interval it has attested (or,
    /// outside the committee, cleared) and still waits for the quorum of.
    fn quorum_asks(&self) -> impl Iterator<Item = Message> + '_ {
        self.intervals.iter().filter_map(|(waiting, state)| {
            match (&state.phase, &state.attestation) {
                (Phase::Attested, Some((signed, _, _))) => {
                    Some(ask_for_quorum(*waiting, signed.as_ref()))
                }
                _ => None,
            }
        })
    }

    fn close_gate(&mut self, interval: IntervalIndex, out: &mut Output) {
        // Intervals still waiting for a quorum ask every connected peer at
        // each gate closure (`Pending`, or `WantFinal` outside the
        // interval's committee); final peers answer with the quorum's
        // attestations. That is how a node that was cut off for longer than
        // its asking lasted finds the quorum once it is reconnected.
        // (Gossiping the same attestation again would not do: gossipsub drops
        // messages it has seen.)
        for message in self.quorum_asks() {
            for peer in &self.peers {
                out.actions.push(Action::Send {
                    to: *peer,
                    message: message.clone(),
                });
            }
        }
        let state = self.new_interval(interval);
        self.intervals.insert(interval, state);
        self.reconcile_round(interval, out);
    }

    /// One round of reconciliation with `reconcile_fanout` peers, chosen
    /// afresh each round, so that what one node learns mid-window reaches
    /// the others (epidemic anti-entropy rather than a single exchange).
    fn reconcile_round(&mut self, interval: IntervalIndex, out: &mut Output) {
        let Some(state) = self.intervals.get_mut(&interval) else {
            return;
        };
        let round = state.rounds;
        state.rounds += 1;
        let message = initiate_with(self.pool.set_ids(interval), &self.pool.set_sum(interval));
        for peer in self.reconcile_partners(interval, round) {
            out.actions.push(Action::Send {
                to: peer,
                message: Message::Reconcile {
                    interval,
                    message: message.clone(),
                },
            });
        }
    }

    /// `reconcile_fanout` connected peers, a different choice per interval
    /// and round.
    fn reconcile_partners(&self, interval: IntervalIndex, round: u32) -> Vec<ParticipantId> {
        let mut peers: Vec<(Hash32, ParticipantId)> = self
            .peers
            .iter()
            .map(|p| {
                let mut seed = [0u8; 8 + 4 + 32 + 32];
                seed[..8].copy_from_slice(&interval.0.to_le_bytes());
                seed[8..12].copy_from_slice(&round.to_le_bytes());
                seed[12..44].copy_from_slice(&self.me.0);
                seed[44..].copy_from_slice(&p.0);
                (sha256(&seed), *p)
            })
            .collect();
        peers.sort_unstable();
        peers
            .into_iter()
            .take(self.config.reconcile_fanout)
            .map(|(_, p)| p)
            .collect()
    }

    /// The root of this node's set for `interval` (through the shared
    /// clearing cache, which may have seen the same set).
    fn set_root(&self, interval: IntervalIndex) -> Hash32 {
        self.root_of(&self.pool, interval)
    }

    /// The root of `pool`'s set for `interval`, through the shared cache.
    fn root_of(&self, pool: &OfferPool, interval: IntervalIndex) -> Hash32 {
        pool.set_root_with(interval, |ids, sum| {
            self.shared.clearing.set_root(interval, ids, sum)
        })
    }

    fn clear_pool(
        &self,
        pool: &OfferPool,
        interval: IntervalIndex,
    ) -> (Hash32, Arc<IntervalResult>) {
        let rules = &self.config.rules;
        let set_root = self.root_of(pool, interval);
        let result = self.shared.clearing.clear(interval, &set_root, &mut || {
            let tariff = rules.tariffs.at(rules.clock.start_s(interval));
            clear(rules.mechanism, &tariff, &pool.book(interval))
                .expect("a validated pool always forms a clearable book")
        });
        (set_root, result)
    }

    fn attest(
        &mut self,
        interval: IntervalIndex,
        set_root: Hash32,
        result_root: Hash32,
        out: &mut Output,
    ) {
        let place = self.shared.members.get(&self.me).copied();
        let now_ms = self.now_ms;
        let Some(state) = self.intervals.get_mut(&interval) else {
            return;
        };
        // Outside the committee, the node waits for the committee's quorum
        // without signing.
        if place.is_some_and(|place| !state.attests(place)) {
            state.attestation = Some((None, now_ms, 0));
            return;
        }
        let signed = Arc::new(
            Attestation {
                chain_id: self.config.rules.chain_id,
                market: self.config.rules.market_id,
                interval,
                set_root,
                result_root,
                attester: self.me,
            }
            .sign(&self.key),
        );
        // Vouched for as it is signed (`Node::vouch`, which the borrow of
        // `state` keeps out of reach here).
        self.shared.verifier.remember(signed.clone(), true);
        // A node outside the member list attests for its own use only:
        // nobody counts it, so neither does it.
        if let Some(place) = place {
            state.record(place, signed.clone());
        }
        state.attestation = Some((Some(signed.clone()), now_ms, 0));
        out.actions
            .push(Action::Publish(Message::Attestation(signed)));
    }

    /// [`Input::CatchUp`]: a state for each missed interval, then the
    /// first asks.
    fn start_catch_up(&mut self, from: IntervalIndex, out: &mut Output) {
        let Some(first_live) = self.next_close else {
            return;
        };
        let from = from.max(IntervalIndex(
            first_live.0.saturating_sub(MAX_CATCH_UP_INTERVALS),
        ));
        for k in from.0..first_live.0 {
            let interval = IntervalIndex(k);
            if !self.intervals.contains_key(&interval) {
                let mut state = self.new_interval(interval);
                state.phase = Phase::CatchingUp;
                state.catch_up = Some(CatchUp::default());
                self.intervals.insert(interval, state);
            }
        }
        self.catch_up_round(out);
    }

    /// Asks peers for the oldest few missed intervals that wait for a
    /// quorum's proof; gives up those that waited too long.
    fn catch_up_round(&mut self, out: &mut Output) {
        self.wakeup.set(None);
        let now_ms = self.now_ms;
        let expired: Vec<IntervalIndex> = self
            .intervals
            .iter()
            .filter(|(_, s)| {
                s.phase == Phase::CatchingUp
                    && s.catch_up
                        .and_then(|c| c.started_ms)
                        .is_some_and(|at| now_ms >= at + CATCH_UP_PATIENCE_MS)
            })
            .map(|(i, _)| *i)
            .collect();
        for interval in expired {
            self.intervals.remove(&interval);
            self.catch_up_abandoned += 1;
        }
        let waiting: Vec<IntervalIndex> = self
            .intervals
            .iter()
            .filter(|(_, s)| s.phase == Phase::CatchingUp)
            .map(|(i, _)| *i)
            .take(CATCH_UP_IN_FLIGHT)
            .collect();
        for interval in waiting {
            // The threshold may have changed since attestations came (live
            // intervals have shown who is active; a committee's does not
            // change).
            self.check_finality(interval, out);
            let Some(state) = self.intervals.get_mut(&interval) else {
                continue;
            };
            if state.phase != Phase::CatchingUp || state.fetch.is_some() {
                continue;
            }
            let catch_up = state.catch_up.get_or_insert_with(CatchUp::default);
            if catch_up.asks > 0 && now_ms < catch_up.asked_at_ms + CATCH_UP_ASK_MS {
                continue;
            }
            catch_up.started_ms.get_or_insert(now_ms);
            catch_up.asked_at_ms = now_ms;
            catch_up.asks += 1;
            let round = CATCH_UP_ROUND_BASE + catch_up.asks;
            for peer in self.reconcile_partners(interval, round) {
                out.actions.push(Action::Send {
                    to: peer,
                    message: Message::WantFinal { interval },
                });
            }
        }
    }

    /// Missed intervals still being caught up, and those given up so far.
    pub fn catch_up_progress(&self) -> (usize, u64) {
        let pending = self
            .intervals
            .values()
            .filter(|s| s.phase == Phase::CatchingUp)
            .count();
        (pending, self.catch_up_abandoned)
    }

    /// Recomputes the quorum threshold from the recent attesters.
    fn update_threshold(&mut self) {
        let active = match self.activity.active() {
            0 => self.config.members.len(),
            active => active,
        };
        self.threshold = quorum_of(active, self.config.quorum_ppm);
    }

    /// Attestations that make `interval` final: with a committee, more
    /// than the quorum share of the whole committee (whether its members
    /// are active is not known: few of them attested lately); otherwise more
    /// than the quorum share of the active members.
    fn threshold_of(&self, interval: IntervalIndex) -> usize {
        match self
            .intervals
            .get(&interval)
            .and_then(|s| s.committee.as_ref())
        {
            Some(committee) => quorum_of(committee.len(), self.config.quorum_ppm),
            None => self.threshold,
        }
    }

    fn check_finality(&mut self, interval: IntervalIndex, out: &mut Output) {
        let threshold = self.threshold_of(interval);
        let Some(state) = self.intervals.get(&interval) else {
            return;
        };
        if state.phase == Phase::Final {
            return;
        }
        let Some(((set_root, result_root), attesters)) = state
            .groups
            .iter()
            .filter(|(_, members)| members.len() >= threshold)
            .max_by_key(|(_, m)| m.len())
            .map(|(roots, members)| (*roots, members.clone()))
        else {
            return;
        };
        let own_roots = state.own.as_ref().map(|(s, r, _)| (*s, *r));
        if own_roots == Some((set_root, result_root)) {
            self.finalize(interval, false, out);
        } else if state.fetch.as_ref().is_none_or(|f| f.set_root != set_root) {
            let mut candidates: Vec<ParticipantId> = attesters
                .into_iter()
                .map(|place| self.shared.places[place as usize])
                .filter(|m| *m != self.me)
                .collect();
            // Spread fetches over the attesters: start at a place that depends on us.
            let start = usize::from(self.me.0[0]) % candidates.len().max(1);
            candidates.rotate_left(start);
            let state = self.intervals.get_mut(&interval).expect("present");
            state.fetch = Some(Fetch {
                set_root,
                result_root,
                candidates,
                next: 0,
                asked_at_ms: 0,
                chunks: BTreeMap::new(),
            });
            self.wakeup.set(None);
            self.ask_next(interval, out);
        }
    }

    fn finalize(&mut self, interval: IntervalIndex, fetched: bool, out: &mut Output) {
        let gate_ms = self.gate_ms(interval);
        let now_ms = self.now_ms;
        let Some(state) = self.intervals.get_mut(&interval) else {
            return;
        };
        let Some((set_root, _, result)) = state.own.clone() else {
            return;
        };
        let caught_up = state.phase == Phase::CatchingUp;
        state.phase = Phase::Final;
        state.fetch = None;
        self.wakeup.set(None);
        let members = &self.shared.members;
        let trading = self
            .shared
            .clearing
            .traders(interval, &result.result_hash, &mut || {
                let mut trading = PlaceSet::with_members(members.len());
                for trade in &result.trades {
                    for trader in [trade.buyer, trade.seller] {
                        // A result holds members' offers only (the set
                        // admits no others).
                        if let Some(&place) = members.get(&trader) {
                            trading.insert(place as usize);
                        }
                    }
                }
                trading
            });
        // Grouping by roots was for finding the quorum; it is found.
        state.groups = BTreeMap::new();
        state.trading = trading;
        state.traders = state.traders().count();
        state.reported_traders = state
            .traders()
            .filter(|&place| state.reports.contains(place))
            .count();
        if caught_up {
            // The node missed the interval's meter reports, and the
            // interval is older than the activity window's newest: it
            // neither settles it nor counts its attesters as recent.
            state.settled = true;
        } else {
            self.activity.open(
                interval,
                state.attestations.places(),
                self.config.active_window.max(1),
            );
            self.update_threshold();
        }
        out.actions.push(Action::Finalized(Box::new(Finalized {
            interval,
            set_root,
            result,
            finality_ms: now_ms.saturating_sub(gate_ms),
            fetched,
            caught_up,
        })));
        // Reports may have come first (a node that finalizes late).
        self.settle_if_complete(interval, out);
    }
}
