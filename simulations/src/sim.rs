//! The discrete-event simulation: many `protocol::Node`s over a simulated
//! network, single-threaded and seeded, so that a seed names a run and its
//! trace hash.
//!
//! - **Overlay**: a random ring plus random extra links, `degree` links per
//!   node on average; each link has a fixed latency drawn from `latency_ms`.
//! - **Gossip** is forwarded hop by hop along a spanning tree of the live
//!   overlay (eager push, as Plumtree's broadcast tree after it has
//!   converged): the publisher sends it to all its neighbours (gossipsub's
//!   `flood_publish`), a node that accepts it forwards it to its other tree
//!   neighbours, each transmission lost with probability `loss`, duplicates
//!   dropped (as gossipsub's seen cache does). The tree is the shortest-latency
//!   tree of the links that are up, rebuilt whenever churn or a partition
//!   changes which links are up; a message lost on the way is repaired by
//!   set reconciliation after gate closure (offers) or is one attestation
//!   fewer towards a quorum. Direct messages (reconciliation, fetches) travel
//!   over a reliable connection with one link's latency.
//! - **Arrivals** are rounded up to the next multiple of `quantum_ms`
//!   (default 10 ms, well below the 20 ms and more of a link). Each message
//!   is its own event, carried in the event queue: the node's clock is
//!   ticked to the arrival time (a tick at a time it has seen runs only what
//!   became due since), then it handles the message. Messages reaching one
//!   node in one quantum are handled in the order they were sent.
//! - **Churn**: each interval, a share of the households is offline from half
//!   an interval before its gate closure to half an interval after.
//! - **Partitions**: a share of the nodes is cut off from the others.
//! - **Clock skew**: each node's clock is off by up to `clock_skew_ms`.
//! - **Adversaries**: equivocators show half their neighbours one offer and
//!   the other half another with the same sequence number. Spammers send
//!   their neighbours badly signed offers, offers over the energy limit,
//!   offers for another market and for another chain, replays of their
//!   own offer of the interval before, and bytes that are no message:
//!   garbage, a message over `MAX_MESSAGE_BYTES` and one of an unknown
//!   protocol version, which the receiving shell decodes as the daemon
//!   does. Withholders hold their offers back in turns (`Withholding`):
//!   released just before gate closure to one neighbour only, or kept in
//!   their own node until reconciliation after gate closure asks for them,
//!   or released after gate closure to one neighbour.
//!
//! Households plan with the trading agent two to three minutes before gate
//! closure, with a perfect forecast of their own load and PV. The market
//! result used for settlement is the one most honest nodes finalized; every
//! household's battery and meter follow it.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::num::NonZeroU64;
use std::sync::Arc;

use dharti_protocol::agent::{self, AgentSettings, IntervalForecast, Plan};
use dharti_protocol::clearing::{ClearingResult, Mechanism, Trade};
use dharti_protocol::hash::{Hash32, Hasher, IdMap};
use dharti_protocol::node::{
    Action, Input, Message, Node, NodeConfig, Output, Settled, Shared, Verdict,
};
use dharti_protocol::offer::{Offer, SignedOffer};
use dharti_protocol::places::PlaceSet;
use dharti_protocol::pricing::{IntervalSummary, PricingConfig, indicative_price};
use dharti_protocol::settlement::{IntervalSettlement, MeterReading, settle};
use dharti_protocol::tariff::{Tariff, TariffSchedule};
use dharti_protocol::types::{
    CHAIN_ID_EWC, CHAIN_ID_VOLTA, IntervalClock, IntervalIndex, MarketId, OfferId, ParticipantId,
    Side,
};
use dharti_protocol::validation::MarketRules;
use ed25519_dalek::SigningKey;

use crate::households::Household;
use crate::queue::EventQueue;
use crate::rng::Rng;
use crate::scenario::Scenario;
use crate::verifier::{ClearingMemo, MemoVerifier};

/// What a simulated participant is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Honest,
    Equivocator,
    Spammer,
    Withholder,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Honest => "honest",
            Role::Equivocator => "equivocator",
            Role::Spammer => "spammer",
            Role::Withholder => "withholder",
        }
    }
}

/// Batteries and meters follow an interval's result this long after its
/// reconciliation window ends (fetches and asks for attestations have
/// run their course by then).
pub const FOLLOW_UP_S: u64 = 30;

/// Meter reports go out within this long after an interval ends.
const REPORT_SPREAD_MS: u64 = 3_000;
/// Nodes settle at most this long after an interval ends (the protocol's
/// deadline, 30 s, and some slack); the run lasts until then.
const SETTLE_WINDOW_MS: u64 = 45_000;

/// Households plan this long before gate closure (at most a third of an
/// interval)...
const PLAN_LEAD_MS: u64 = 180_000;
/// ...plus up to this much more (at most a sixth of an interval), drawn per
/// household and interval.
const PLAN_SPREAD_MS: u64 = 60_000;

/// How many intervals back the nodes' settlements found equal to the
/// reference are kept, to be recognised without a comparison
/// ([`Sim::check_settlement`]). Nodes settle within a minute or so of an
/// interval's end; a whole day's would hold every node's last allocations.
const SHARED_SETTLEMENTS_KEPT: usize = 16;

/// What happens at a moment of simulated time. Sixteen bytes: the queue
/// holds hundreds of thousands of events (a delivery is one), and every one
/// is written once and read once, so that their size is traffic between
/// the processor and memory; what does not fit waits beside the queue
/// (direct messages in [`Sim::direct`], meter readings in [`Sim::readings`]).
/// Nodes, intervals, partitions and messages are numbered in `u32`: the
/// scenario check bounds households to 100,000.
#[derive(Debug)]
enum Event {
    /// A node's own wake-up (`Node::next_wakeup_ms`), or its first tick.
    Tick(u32),
    /// Draws when each household plans for interval `k`.
    PlanRound {
        k: u32,
    },
    Plan {
        node: u32,
        k: u32,
    },
    /// Gossip message `id` reaching node `to` from `from`. Carried in the
    /// event, so that the queue's buckets, read in order, hold what is
    /// delivered.
    Gossip {
        to: u32,
        from: u32,
        id: u32,
    },
    /// The direct message in `Sim::direct[slot]` reaching `to` from `from`.
    Direct {
        to: u32,
        from: u32,
        slot: u32,
    },
    Withheld {
        node: u32,
        how: Withholding,
        offer: Box<SignedOffer>,
    },
    /// The bytes in `Sim::raw[slot]` reaching `to` from `from`: a spammer's
    /// message that the receiver must decode first.
    Raw {
        to: u32,
        from: u32,
        slot: u32,
    },
    Dispatch {
        k: u32,
    },
    /// Partition `p` starts (`up` false: the links it cuts go down on both
    /// ends) or heals (`up` true: they come back, and each end is told its
    /// peer is up again, as a reconnecting transport would).
    Partition {
        p: u32,
        up: bool,
    },
    /// [`Event::Partition`] for one node that was offline at the time.
    Relink {
        node: u32,
        p: u32,
        up: bool,
    },
    /// A household's meter report for interval `k`, when the interval ends
    /// (what the meter read is in `Sim::readings`).
    Report {
        node: u32,
        k: u32,
    },
}

/// How a withholder releases an offer; it takes them in turns, by node and
/// interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Withholding {
    /// Just before gate closure (on its own clock), to one neighbour only:
    /// gossip has no time to reach everyone, so the rest must learn it by
    /// reconciliation, or drop it together.
    ToOne,
    /// Not at all before gate closure: only its own node holds the offer
    /// and answers for it when peers reconcile with it inside the window.
    Hidden,
    /// After gate closure, to one neighbour, which refuses it.
    Late,
}

// The queue holds hundreds of thousands of events: keep them at 16 bytes.
const _: () = assert!(std::mem::size_of::<Event>() == 16);

impl Withholding {
    const TURNS: [Withholding; 3] = [Withholding::ToOne, Withholding::Hidden, Withholding::Late];
}

/// How long before gate closure, on its own clock, a withholder releases
/// an offer to one neighbour or its own node: a few hops' latency, so that
/// gossip cannot reach every node in time.
const WITHHOLD_LEAD_MS: u64 = 150;

/// Offers in a spammer's oversized `Offers` message: over
/// `MAX_OFFERS_PER_MESSAGE` and, at 171 bytes each, over
/// `MAX_MESSAGE_BYTES`.
const SPAM_OFFERS: usize = 400;
/// Longest run of garbage bytes a spammer sends.
const SPAM_GARBAGE_BYTES: u64 = 300;

/// When after an interval's gate closure (real time) batteries and meters
/// follow its result: once the reconciliation window and the follow-up
/// have passed on the slowest clock.
pub fn dispatch_after_gate_ms(reconcile_window_s: u64, clock_skew_ms: u64) -> u64 {
    (reconcile_window_s.saturating_add(FOLLOW_UP_S + 1))
        .saturating_mul(1_000)
        .saturating_add(clock_skew_ms)
}

/// How long before an interval's gate closure (real time) the first
/// household can plan its offers: the plan lead and its spread, on the
/// fastest clock.
pub fn plan_before_gate_ms(interval_s: u64, clock_skew_ms: u64) -> u64 {
    let interval_ms = interval_s.saturating_mul(1_000);
    (PLAN_LEAD_MS.min(interval_ms / 3) + PLAN_SPREAD_MS.min(interval_ms / 6))
        .saturating_add(clock_skew_ms)
}

/// A node, interval or gossip number as an event carries it. The scenario
/// check bounds households and intervals to 100,000; gossip numbers count
/// the messages published in one run, a few million at 10,000 households.
fn small(i: usize) -> u32 {
    u32::try_from(i).expect("an event's numbers fit in 32 bits")
}

/// Values parked under a number while an event carries the number: a
/// vector whose freed slots are reused, the most recently freed first (its
/// line is still in the cache).
#[derive(Debug)]
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, item: T) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.items[slot as usize] = Some(item);
                slot
            }
            None => {
                self.items.push(Some(item));
                small(self.items.len() - 1)
            }
        }
    }

    fn take(&mut self, slot: u32) -> T {
        let item = self.items[slot as usize]
            .take()
            .expect("a slot is taken once");
        self.free.push(slot);
        item
    }
}

/// What reaches a node: a gossip message by number, or a direct one.
#[derive(Debug)]
enum Payload {
    Gossip(usize),
    Direct(Message),
    /// Bytes to decode first (spam).
    Raw(Vec<u8>),
}

/// One gossiped message and who has seen it.
struct Gossip {
    message: Message,
    bytes: u64,
    seen: Vec<u64>,
    /// Whether it has reached the network ([`Sim::reach`]).
    reached: bool,
}

/// The eager-push tree of one connectivity epoch: which churn window and
/// which partitions were in force when it was built.
///
/// Node `i`'s tree links, with their latencies, are
/// `links[start[i]..start[i + 1]]`: one small contiguous array that every
/// forwarded message reads, so it stays in cache (a vector per node and a
/// search of the node's neighbours for each latency cost cache misses on
/// every hop of every message).
#[derive(Debug, Default)]
struct Tree {
    epoch: Option<(u64, u64)>,
    start: Vec<u32>,
    links: Vec<(u32, u32)>,
}

impl Gossip {
    fn mark(&mut self, node: usize) -> bool {
        let (word, bit) = (node / 64, 1u64 << (node % 64));
        let fresh = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        fresh
    }
}

/// A node's view of one final interval.
#[derive(Clone, Debug)]
pub struct NodeFinal {
    pub set_root: Hash32,
    pub result_hash: Hash32,
    pub finality_ms: u64,
}

/// Per-interval outcome.
#[derive(Clone, Debug, Default)]
pub struct IntervalOutcome {
    /// The market (feeder) it belongs to, 0 when there is one.
    pub market: usize,
    pub index: u64,
    pub start_s: u64,
    pub reference: Option<(Hash32, Hash32)>,
    pub result: Option<ClearingResult<OfferId, ParticipantId>>,
    pub agreeing: usize,
    pub honest_online: usize,
    pub finality_ms: Vec<u64>,
    pub load_wh: u64,
    pub pv_wh: u64,
    pub community_import_wh: u64,
    pub community_export_wh: u64,
    pub offers: usize,
    /// Honest nodes that settled the interval with every trader's report,
    /// and how many of those settlements equal the reference settlement.
    pub settled_complete: usize,
    pub settled_matching: usize,
    /// Honest nodes that settled without some trader's report.
    pub settled_incomplete: usize,
}

/// Per-household outcome.
#[derive(Clone, Debug, Default)]
pub struct HouseholdOutcome {
    pub bill_micro: i64,
    pub grid_only_bill_micro: i64,
    /// What the grid-only household pays for its imports (before feed-in income).
    pub grid_only_import_micro: u64,
    pub p2p_revenue_micro: u64,
    pub p2p_paid_micro: u64,
    pub bought_wh: u64,
    pub sold_wh: u64,
    pub sold_at_feed_in_micro: u64,
    pub load_wh: u64,
    pub pv_wh: u64,
}

/// Everything a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub roles: Vec<Role>,
    pub households: Vec<Household>,
    pub intervals: Vec<IntervalOutcome>,
    pub per_household: Vec<HouseholdOutcome>,
    pub invariant_violations: u64,
    pub violations: Vec<String>,
    pub messages: u64,
    /// Messages a node refused (undecodable bytes or a Reject verdict).
    pub refused: u64,
    pub bytes: u64,
    pub payload_bytes: u64,
    pub offers_total: u64,
    pub trace_hash: Hash32,
}

impl Outcome {
    /// One outcome of independent markets' outcomes, in market order: their
    /// households, intervals and counts side by side. One market's outcome
    /// is returned as it is; several markets' trace hash hashes theirs in order.
    pub fn merge(outcomes: Vec<Outcome>) -> Outcome {
        if outcomes.len() == 1 {
            return outcomes.into_iter().next().expect("one");
        }
        let mut trace = Hasher::new(b"DHARTI-SIM-MARKETS");
        let mut all = Outcome {
            roles: Vec::new(),
            households: Vec::new(),
            intervals: Vec::new(),
            per_household: Vec::new(),
            invariant_violations: 0,
            violations: Vec::new(),
            messages: 0,
            refused: 0,
            bytes: 0,
            payload_bytes: 0,
            offers_total: 0,
            trace_hash: [0; 32],
        };
        for (market, o) in outcomes.into_iter().enumerate() {
            trace.write(&o.trace_hash);
            all.roles.extend(o.roles);
            all.households.extend(o.households);
            all.intervals.extend(o.intervals);
            all.per_household.extend(o.per_household);
            all.invariant_violations += o.invariant_violations;
            all.violations.extend(
                o.violations
                    .into_iter()
                    .map(|v| format!("market {market}: {v}")),
            );
            all.messages += o.messages;
            all.refused += o.refused;
            all.bytes += o.bytes;
            all.payload_bytes += o.payload_bytes;
            all.offers_total += o.offers_total;
        }
        all.trace_hash = trace.finish();
        all
    }
}

struct Household2 {
    node: Node,
    role: Role,
    neighbours: Vec<usize>,
    /// The latency of the link to each neighbour, in `neighbours`' order.
    latencies: Vec<u64>,
    soc_wh: u64,
    baseline_soc_wh: u64,
    plans: BTreeMap<usize, Plan>,
    recent: VecDeque<IntervalSummary>,
    finals: BTreeMap<usize, NodeFinal>,
    /// Offers this node published honestly, per interval, with the time.
    published: BTreeMap<usize, Vec<(OfferId, u64)>>,
    /// The two versions an equivocator sent, per interval.
    equivocations: BTreeMap<usize, Vec<(OfferId, OfferId)>>,
    /// A spammer's last own offer, replayed in the next interval.
    replay: Option<Arc<SignedOffer>>,
}

/// What the event loop reads of a node besides the node itself at every
/// delivery, kept apart: 16 bytes a node, so that a thousand nodes' share
/// 16 kB of cache, where in [`Household2`] each was a line of its own.
#[derive(Clone, Copy, Debug)]
struct Clock {
    /// How far the node's clock is off.
    skew_ms: i64,
    /// Simulation time of the node's pending wake-up event, if any.
    wakeup_ms: Option<NonZeroU64>,
}

pub struct Sim<'a> {
    scenario: &'a Scenario,
    market: usize,
    rules: MarketRules,
    tariff: Tariff,
    first: IntervalIndex,
    households: Vec<Household>,
    nodes: Vec<Household2>,
    clocks: Vec<Clock>,
    keys: Vec<SigningKey>,
    ids: Vec<ParticipantId>,
    index: IdMap<ParticipantId, usize>,
    links: BTreeMap<(usize, usize), u64>,
    tree: Tree,
    queue: EventQueue<Event>,
    /// Nodes are not woken after this (the last interval's dispatch).
    end_ms: u64,
    now_ms: u64,
    gossip: Vec<Gossip>,
    rng_loss: Rng,
    rng_misc: Rng,
    /// Who is offline in each churn window: a bit per node, as every
    /// delivery asks.
    offline: Vec<PlaceSet>,
    /// Where the first churn window starts, and the windows' length.
    churn_start_ms: u64,
    churn_window_ms: u64,
    /// The churn window found last: its start, end and number.
    last_window: Cell<(u64, u64, u64)>,
    partitions: Vec<(u64, u64, Vec<bool>)>,
    /// Per partition, the value in its side vector of its larger side,
    /// the one that can still reach a quorum.
    partition_main: Vec<bool>,
    outcome_intervals: Vec<IntervalOutcome>,
    per_household: Vec<HouseholdOutcome>,
    violations: Vec<String>,
    messages: u64,
    /// Messages a node refused: bytes that decode to no message, or a
    /// Reject verdict.
    refused: u64,
    bytes: u64,
    payload_bytes: u64,
    offers_total: u64,
    trace: Hasher,
    progress: Option<Box<dyn FnMut(usize, usize) + 'a>>,
    /// The first copy of every distinct final result, and of its offer set.
    results_seen: BTreeMap<(usize, Hash32, Hash32), Arc<ClearingResult<OfferId, ParticipantId>>>,
    /// The first copy of every distinct final offer set: id → energy offered.
    sets_seen: BTreeMap<(usize, Hash32), BTreeMap<OfferId, u64>>,
    /// Offers that "reached the network" before gate closure ([`Sim::reach`]).
    reached: std::collections::HashSet<OfferId>,
    clearing: Arc<ClearingMemo>,
    verifier: Arc<MemoVerifier>,
    /// Per interval, the settlement of the reference result against every
    /// trader's meter: what each node's own settlement must equal.
    /// With it, the nodes' settlement allocations found equal to it: the
    /// nodes share a few (`ClearingCache::settle`), so each is compared in
    /// full once, not once per node. Those of intervals more than
    /// [`SHARED_SETTLEMENTS_KEPT`] back are let go: a settlement that late
    /// is compared in full.
    market_settlements: BTreeMap<usize, (IntervalSettlement, Vec<Arc<IntervalSettlement>>)>,
    /// Settlements made before their interval's reference existed.
    early_settlements: Vec<(usize, usize, Box<Settled>)>,
    /// Intervals that no honest node had finalized when batteries and
    /// meters had to follow them (a partition kept every side below a
    /// quorum): what every meter read, kept until the first honest node
    /// finalizes the interval after all ([`Sim::settle_late`]) or the run
    /// ends with nobody having done so (then nothing traded).
    unsettled: BTreeMap<usize, Vec<MeterReading>>,
    /// The action list of the last output carried out, for the next
    /// ([`Sim::output`]).
    spare_actions: Vec<Action>,
    /// Direct messages on their way ([`Event::Direct`]).
    direct: Slab<Message>,
    /// Spam bytes on their way ([`Event::Raw`]).
    raw: Slab<Vec<u8>>,
    /// Per interval, what each household's meter read (import, export),
    /// for its [`Event::Report`], and how many of those reports are still
    /// on their way: the entry goes with the last. Clock skew can send a
    /// report later than the next interval's dispatch, so no fixed number
    /// of intervals would do.
    readings: BTreeMap<u32, (Vec<(u64, u64)>, usize)>,
}

impl std::fmt::Debug for Sim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("nodes", &self.nodes.len())
            .field("now_ms", &self.now_ms)
            .finish_non_exhaustive()
    }
}

fn gate_ms(rules: &MarketRules, interval: IntervalIndex) -> u64 {
    rules.clock.gate_closure_s(interval) * 1_000
}

impl<'a> Sim<'a> {
    /// Market `market` of `scenario` (0 when it has one), with these households.
    pub fn new(
        scenario: &'a Scenario,
        market: usize,
        households: Vec<Household>,
        start_s: u64,
        rng: &mut Rng,
    ) -> Sim<'a> {
        let m = &scenario.market;
        let n = households.len();
        let tariff = Tariff::new(
            m.feed_in_micro_per_kwh,
            m.retail_micro_per_kwh,
            m.grid_fee_micro_per_kwh,
        );
        let clock = IntervalClock::new(m.interval_s, m.gate_lead_s).expect("validated scenario");
        let rules = MarketRules {
            chain_id: CHAIN_ID_VOLTA,
            market_id: if market == 0 {
                MarketId::from_name("dharti-sim")
            } else {
                MarketId::from_name(&format!("dharti-sim-{market}"))
            },
            clock,
            max_intervals_ahead: 4,
            max_offer_energy_wh: 100_000,
            max_offers_per_participant: 16,
            tariffs: TariffSchedule::flat(tariff),
            mechanism: m
                .mechanism
                .parse::<Mechanism>()
                .expect("validated scenario"),
        };
        let first = IntervalIndex(start_s.div_ceil(m.interval_s));
        let mut keys_rng = rng.fork(1);
        let keys: Vec<SigningKey> = (0..n)
            .map(|_| {
                let mut seed = [0u8; 32];
                for chunk in seed.chunks_mut(8) {
                    chunk.copy_from_slice(&keys_rng.next_u64().to_le_bytes());
                }
                SigningKey::from_bytes(&seed)
            })
            .collect();
        let ids: Vec<ParticipantId> = keys
            .iter()
            .map(|k| ParticipantId(k.verifying_key().to_bytes()))
            .collect();
        let config = NodeConfig {
            rules: rules.clone(),
            members: ids.iter().copied().collect(),
            reconcile_window_ms: m.reconcile_window_s * 1_000,
            quorum_ppm: (m.quorum * 1_000_000.0).round() as u32,
            reconcile_fanout: 3,
            active_window: 4,
            attesters: m.attesters,
        };

        // Roles: a seeded choice of adversaries.
        let mut roles = vec![Role::Honest; n];
        let mut order: Vec<usize> = (0..n).collect();
        let mut role_rng = rng.fork(2);
        for i in (1..n).rev() {
            order.swap(i, role_rng.below(i as u64 + 1) as usize);
        }
        let a = &scenario.adversaries;
        let mut next = 0;
        for (share, role) in [
            (a.equivocators, Role::Equivocator),
            (a.spammers, Role::Spammer),
            (a.withholders, Role::Withholder),
        ] {
            let count = (share * n as f64).round() as usize;
            for &i in &order[next..(next + count).min(n)] {
                roles[i] = role;
            }
            next += count;
        }

        // Overlay: ring over a random permutation plus random links.
        let mut net_rng = rng.fork(3);
        let mut ring: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            ring.swap(i, net_rng.below(i as u64 + 1) as usize);
        }
        let net = &scenario.network;
        let mut links: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        let mut link = |a: usize, b: usize, rng: &mut Rng| {
            if a != b {
                let latency = rng.between(net.latency_ms[0], net.latency_ms[1]);
                links.entry((a.min(b), a.max(b))).or_insert(latency);
            }
        };
        for i in 0..n {
            link(ring[i], ring[(i + 1) % n], &mut net_rng);
        }
        // Like libp2p peers, every node dials degree/2 random others, so
        // each has at least that many links and about `degree` on average.
        for a in 0..n {
            for _ in 0..net.degree.div_ceil(2).saturating_sub(1) {
                let b = net_rng.below(n as u64) as usize;
                link(a, b, &mut net_rng);
            }
        }
        let mut neighbours = vec![Vec::new(); n];
        for &(a, b) in links.keys() {
            neighbours[a].push(b);
            neighbours[b].push(a);
        }

        let clearing = Arc::new(ClearingMemo::default());
        let verifier = Arc::new(MemoVerifier::for_members(n));
        let shared = Shared::with(&config, verifier.clone(), clearing.clone());
        let mut skew_rng = rng.fork(4);
        let mut clocks = Vec::with_capacity(n);
        let nodes: Vec<Household2> = (0..n)
            .map(|i| {
                let mut node = Node::with_shared(config.clone(), keys[i].clone(), shared.clone());
                for &j in &neighbours[i] {
                    node.handle(Input::PeerUp(ids[j]));
                }
                let skew = net.clock_skew_ms as i64;
                let skew_ms = if skew == 0 {
                    0
                } else {
                    skew_rng.below(2 * skew as u64 + 1) as i64 - skew
                };
                let soc = households[i]
                    .settings
                    .battery
                    .map_or(0, |b| b.capacity_wh / 2);
                clocks.push(Clock {
                    skew_ms,
                    wakeup_ms: None,
                });
                Household2 {
                    node,
                    role: roles[i],
                    latencies: neighbours[i]
                        .iter()
                        .map(|&j| links[&(i.min(j), i.max(j))])
                        .collect(),
                    neighbours: neighbours[i].clone(),
                    soc_wh: soc,
                    baseline_soc_wh: soc,
                    plans: BTreeMap::new(),
                    recent: VecDeque::new(),
                    finals: BTreeMap::new(),
                    published: BTreeMap::new(),
                    equivocations: BTreeMap::new(),
                    replay: None,
                }
            })
            .collect();

        // Churn and partitions, drawn up front.
        let intervals = scenario.simulation.intervals as usize;
        let mut churn_rng = rng.fork(5);
        let offline: Vec<PlaceSet> = (0..intervals)
            .map(|_| {
                let mut set = PlaceSet::with_members(n);
                for i in 0..n {
                    if churn_rng.unit() < net.churn {
                        set.insert(i);
                    }
                }
                set
            })
            .collect();
        // Interval k's offline window is [gate(k) − I/2, gate(k) + I/2).
        let churn_start_ms = gate_ms(&rules, first).saturating_sub(m.interval_s * 500);
        let mut part_rng = rng.fork(6);
        let partitions: Vec<(u64, u64, Vec<bool>)> = net
            .partitions
            .iter()
            .map(|p| {
                let gate = gate_ms(&rules, IntervalIndex(first.0 + u64::from(p.at_interval)));
                let from = gate.saturating_sub(60_000);
                let cut: Vec<bool> = (0..n).map(|_| part_rng.unit() < p.fraction).collect();
                (from, from + p.duration_s * 1_000, cut)
            })
            .collect();
        let partition_main = partitions
            .iter()
            .map(|(_, _, cut)| 2 * cut.iter().filter(|c| **c).count() > n)
            .collect();

        Sim {
            scenario,
            market,
            rules,
            tariff,
            first,
            per_household: vec![HouseholdOutcome::default(); n],
            households,
            nodes,
            clocks,
            keys,
            index: ids.iter().enumerate().map(|(i, id)| (*id, i)).collect(),
            ids,
            links,
            tree: Tree::default(),
            queue: EventQueue::new(0),
            end_ms: u64::MAX,
            now_ms: 0,
            gossip: Vec::new(),
            rng_loss: rng.fork(7),
            rng_misc: rng.fork(8),
            offline,
            churn_start_ms,
            churn_window_ms: scenario.market.interval_s * 1_000,
            last_window: Cell::new((0, 0, 0)),
            partitions,
            partition_main,
            outcome_intervals: Vec::new(),
            violations: Vec::new(),
            messages: 0,
            refused: 0,
            bytes: 0,
            payload_bytes: 0,
            offers_total: 0,
            trace: Hasher::new(b"DHARTI-SIM-TRACE"),
            progress: None,
            results_seen: BTreeMap::new(),
            sets_seen: BTreeMap::new(),
            reached: std::collections::HashSet::new(),
            clearing,
            verifier,
            market_settlements: BTreeMap::new(),
            early_settlements: Vec::new(),
            unsettled: BTreeMap::new(),
            spare_actions: Vec::new(),
            direct: Slab::default(),
            raw: Slab::default(),
            readings: BTreeMap::new(),
        }
    }

    pub fn on_progress(&mut self, f: impl FnMut(usize, usize) + 'a) {
        self.progress = Some(Box::new(f));
    }

    fn interval(&self, k: usize) -> IntervalIndex {
        IntervalIndex(self.first.0 + k as u64)
    }

    /// Queues `event`. Inlined, so that the event goes from registers into
    /// the queue: passed through memory, it was written in 4-byte pieces
    /// and read back in 8-byte ones, which the processor cannot forward, so
    /// that each push waited for every store before it to reach the cache.
    #[inline(always)]
    fn push(&mut self, at_ms: u64, event: Event) {
        self.queue.push(at_ms.max(self.now_ms), event);
    }

    /// The churn window that contains `t_ms`: interval k's offline window is
    /// [gate(k) − I/2, gate(k) + I/2), so the windows tile time.
    fn churn_window(&self, t_ms: u64) -> Option<u64> {
        // Asked at every delivery, nearly always for the window of the
        // last ask: a comparison instead of a 64-bit division.
        let (from, to, k) = self.last_window.get();
        if (from..to).contains(&t_ms) {
            return Some(k);
        }
        let k = t_ms.checked_sub(self.churn_start_ms)? / self.churn_window_ms;
        let from = self.churn_start_ms + k * self.churn_window_ms;
        self.last_window.set((from, from + self.churn_window_ms, k));
        Some(k)
    }

    /// When node `i`, offline at `t_ms`, is back.
    fn online_again_ms(&self, t_ms: u64) -> u64 {
        let k = self.churn_window(t_ms).unwrap_or(0);
        self.churn_start_ms + (k + 1) * self.churn_window_ms
    }

    /// Schedules node `i`'s next wake-up if it is earlier than the one pending.
    fn schedule_wakeup(&mut self, i: usize) {
        let Some(at_node_ms) = self.nodes[i].node.next_wakeup_ms() else {
            return;
        };
        // Never at the present: a node that has just been ticked has nothing
        // due now, and a wake-up that were would spin the event loop.
        let clock = &mut self.clocks[i];
        let at = ((at_node_ms as i64 - clock.skew_ms).max(0) as u64).max(self.now_ms + 1);
        if at <= self.end_ms && clock.wakeup_ms.is_none_or(|pending| at < pending.get()) {
            clock.wakeup_ms = NonZeroU64::new(at);
            self.push(at, Event::Tick(small(i)));
        }
    }

    /// The eager-push links of node `i` now, as a range of `tree.links`: its
    /// links in the shortest-latency spanning forest of the links that are
    /// up, rebuilt per epoch.
    fn tree_links(&mut self, i: usize) -> std::ops::Range<usize> {
        let t = self.now_ms;
        let partitions = self
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, (from, to, _))| (*from..*to).contains(&t))
            .fold(0u64, |mask, (p, _)| mask | (1 << (p % 64)));
        let epoch = (self.churn_window(t).map_or(0, |k| k + 1), partitions);
        if self.tree.epoch != Some(epoch) {
            let tree = self.build_tree(t);
            let mut start = Vec::with_capacity(tree.len() + 1);
            let mut links = Vec::new();
            for (a, children) in tree.iter().enumerate() {
                start.push(links.len() as u32);
                for &b in children {
                    let latency = self.links[&(a.min(b), a.max(b))];
                    links.push((b as u32, u32::try_from(latency).unwrap_or(u32::MAX)));
                }
            }
            start.push(links.len() as u32);
            self.tree = Tree {
                epoch: Some(epoch),
                start,
                links,
            };
        }
        self.tree.start[i] as usize..self.tree.start[i + 1] as usize
    }

    /// Dijkstra from the lowest-numbered live node of each component, over
    /// the links that are up at `t_ms`, by latency.
    fn build_tree(&self, t_ms: u64) -> Vec<Vec<usize>> {
        let n = self.nodes.len();
        let mut tree = vec![Vec::new(); n];
        let mut reached = vec![false; n];
        let mut dist = vec![u64::MAX; n];
        let mut parent = vec![usize::MAX; n];
        for root in 0..n {
            if reached[root] || self.is_offline(root, t_ms) {
                continue;
            }
            let mut heap = BinaryHeap::new();
            dist[root] = 0;
            heap.push(Reverse((0u64, root)));
            while let Some(Reverse((d, a))) = heap.pop() {
                if reached[a] {
                    continue;
                }
                reached[a] = true;
                if parent[a] != usize::MAX {
                    tree[a].push(parent[a]);
                    tree[parent[a]].push(a);
                }
                for &b in &self.nodes[a].neighbours {
                    if reached[b] || self.is_offline(b, t_ms) || self.cut(a, b, t_ms) {
                        continue;
                    }
                    let via = d + self.links[&(a.min(b), a.max(b))];
                    if via < dist[b] {
                        dist[b] = via;
                        parent[b] = a;
                        heap.push(Reverse((via, b)));
                    }
                }
            }
        }
        tree
    }

    /// Whether node `i` is offline at `t_ms` (churn).
    fn is_offline(&self, i: usize, t_ms: u64) -> bool {
        self.churn_window(t_ms)
            .and_then(|k| self.offline.get(k as usize))
            .is_some_and(|set| set.contains(i))
    }

    fn cut(&self, a: usize, b: usize, t_ms: u64) -> bool {
        self.partitions
            .iter()
            .any(|(from, to, side)| (*from..*to).contains(&t_ms) && side[a] != side[b])
    }

    /// Whether node `i` is on the main side ([`Sim::partition_main`]) of
    /// every partition in force at some time around `interval`: from an
    /// interval before its gate closure to the end of its reconciliation
    /// window.
    fn main_side(&self, i: usize, interval: IntervalIndex) -> bool {
        let gate = gate_ms(&self.rules, interval);
        let from_ms = gate.saturating_sub(self.scenario.market.interval_s * 1_000);
        let to_ms = gate + self.scenario.market.reconcile_window_s * 1_000;
        self.partitions
            .iter()
            .zip(&self.partition_main)
            .all(|((from, to, side), main)| *to <= from_ms || *from >= to_ms || side[i] == *main)
    }

    fn latency(&mut self, a: usize, b: usize) -> u64 {
        // A node has about `degree` neighbours: a scan of its own short list
        // is cheaper than a search of every link.
        let node = &self.nodes[a];
        match node.neighbours.iter().position(|&n| n == b) {
            Some(place) => node.latencies[place],
            None => {
                let net = &self.scenario.network;
                self.rng_misc.between(net.latency_ms[0], net.latency_ms[1])
            }
        }
    }

    /// When something sent directly from `from` to `to` now arrives, or
    /// `None` if it never does (to itself, or across a cut).
    fn direct_arrival_ms(&mut self, from: usize, to: usize) -> Option<u64> {
        if from == to || self.cut(from, to, self.now_ms) {
            return None;
        }
        let latency = self.latency(from, to);
        Some(self.arrival_ms(latency))
    }

    fn send_direct(&mut self, from: usize, to: usize, message: Message) {
        if let Some(at) = self.direct_arrival_ms(from, to) {
            let slot = self.direct.insert(message);
            let (to, from) = (small(to), small(from));
            self.push(at, Event::Direct { to, from, slot });
        }
    }

    /// Sends bytes that the receiver must decode first ([`Event::Raw`]).
    fn send_raw(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        if let Some(at) = self.direct_arrival_ms(from, to) {
            let slot = self.raw.insert(bytes);
            let (to, from) = (small(to), small(from));
            self.push(at, Event::Raw { to, from, slot });
        }
    }

    /// When something sent now with `latency` arrives: at the end of the
    /// quantum in which it arrives.
    fn arrival_ms(&self, latency: u64) -> u64 {
        let at = self.now_ms + latency;
        match self.scenario.network.quantum_ms {
            // The default, as a constant: a division by a variable costs
            // tens of cycles, on every one of a day's 150 million messages.
            10 => at.div_ceil(10) * 10,
            quantum => at.div_ceil(quantum) * quantum,
        }
    }

    /// Sends gossip message `id` from `from` to `to`, arriving `latency`
    /// from now ([`Sim::arrival_ms`]).
    fn post(&mut self, from: usize, to: usize, latency: u64, id: usize) {
        let (to, from, id) = (small(to), small(from), small(id));
        let at = self.arrival_ms(latency);
        self.push(at, Event::Gossip { to, from, id });
    }

    /// Starts a gossip message at `from` (which has it already).
    /// The publisher sends to all its neighbours, as gossipsub does with
    /// `flood_publish`, so that one lost first hop does not lose a message;
    /// relays then forward along the tree.
    fn publish(&mut self, from: usize, message: Message) {
        let id = self.new_gossip(from, message);
        for k in 0..self.nodes[from].neighbours.len() {
            let node = &self.nodes[from];
            let (j, latency) = (node.neighbours[k], node.latencies[k]);
            self.transmit(from, j, latency, id);
        }
    }

    /// Registers a gossip message that `from` has; returns its id.
    fn new_gossip(&mut self, from: usize, message: Message) -> usize {
        let bytes = message.encoded_len() as u64;
        self.payload_bytes += bytes;
        let n = self.nodes.len();
        let mut g = Gossip {
            message,
            bytes,
            seen: vec![0; n.div_ceil(64)],
            reached: false,
        };
        g.mark(from);
        self.gossip.push(g);
        self.gossip.len() - 1
    }

    /// Relays gossip `id` from `node` along its tree links (but `except`).
    fn forward(&mut self, node: usize, except: Option<usize>, id: usize) {
        for e in self.tree_links(node) {
            let (j, latency) = self.tree.links[e];
            if Some(j as usize) != except {
                self.transmit(node, j as usize, u64::from(latency), id);
            }
        }
    }

    /// Transmits gossip `id` from `node` to `j` over their link, unless a
    /// partition cuts it; lost with the scenario's probability.
    fn transmit(&mut self, node: usize, j: usize, latency: u64, id: usize) {
        if self.cut(node, j, self.now_ms) {
            return;
        }
        let loss = self.scenario.network.loss;
        if loss > 0.0 && self.rng_loss.unit() < loss {
            return;
        }
        self.post(node, j, latency, id);
    }

    fn node_time(&self, i: usize) -> u64 {
        (self.now_ms as i64 + self.clocks[i].skew_ms).max(0) as u64
    }

    /// Lets node `i` see the time (its own, skewed) and carries out what
    /// follows; a tick with nothing due only moves the node's clock.
    fn tick(&mut self, i: usize) {
        let now = self.node_time(i);
        if self.nodes[i].node.advance_clock(now) {
            let mut out = self.output();
            self.nodes[i]
                .node
                .handle_into(Input::Tick { now_ms: now }, &mut out);
            self.carry_out(i, &mut out);
        }
    }

    /// What `node`'s meter read in interval `k`, for its report; the last
    /// report of an interval takes the interval's readings with it.
    fn reading(&mut self, node: u32, k: u32) -> (u64, u64) {
        let Some((read, pending)) = self.readings.get_mut(&k) else {
            unreachable!("interval {k}'s readings outlive its reports")
        };
        let reading = read[node as usize];
        *pending -= 1;
        if *pending == 0 {
            self.readings.remove(&k);
        }
        reading
    }

    /// An empty output for one input, in the action list the last one left
    /// behind: the simulator hands its nodes hundreds of millions of inputs
    /// a day, and reads each output where the node wrote it
    /// ([`Node::handle_into`]).
    fn output(&mut self) -> Output {
        Output {
            verdict: None,
            actions: std::mem::take(&mut self.spare_actions),
        }
    }

    /// Carries out the actions of node `i`'s output and keeps its list for
    /// the next input. By reference: a copy of the output, read right after
    /// the node wrote it, waited for every store the node had made.
    fn carry_out(&mut self, i: usize, out: &mut Output) {
        for action in out.actions.drain(..) {
            match action {
                Action::Publish(message) => self.publish(i, message),
                Action::Send { to, message } => {
                    if let Some(&j) = self.index.get(&to) {
                        self.send_direct(i, j, message);
                    }
                }
                Action::Settled(settled) => {
                    let k = (settled.interval.0 - self.first.0) as usize;
                    if self.nodes[i].role != Role::Honest
                        || k >= self.scenario.simulation.intervals as usize
                    {
                        continue;
                    }
                    if k < self.outcome_intervals.len() && !self.unsettled.contains_key(&k) {
                        self.check_settlement(i, k, &settled);
                    } else {
                        // An interval without trades settles at finality,
                        // before the reference exists: checked at dispatch
                        // (or, finalized late, with its first honest final).
                        self.early_settlements.push((i, k, settled));
                    }
                }
                Action::Finalized(f) => {
                    let k = (f.interval.0 - self.first.0) as usize;
                    self.trace.write_u64(i as u64);
                    self.trace.write_u64(f.interval.0);
                    self.trace.write(&f.set_root);
                    self.trace.write(&f.result.result_hash);
                    let h = &mut self.nodes[i];
                    h.finals.insert(
                        k,
                        NodeFinal {
                            set_root: f.set_root,
                            result_hash: f.result.result_hash,
                            finality_ms: f.finality_ms,
                        },
                    );
                    h.recent.push_back(IntervalSummary {
                        supply_wh: f.result.supply_wh,
                        demand_wh: f.result.demand_wh,
                        clearing_price_micro_per_kwh: f.result.clearing_price_micro_per_kwh,
                        tariff: self.tariff,
                    });
                    while h.recent.len() > 96 {
                        h.recent.pop_front();
                    }
                    if k < self.outcome_intervals.len() {
                        if self.nodes[i].role == Role::Honest && self.unsettled.contains_key(&k) {
                            let offers = self.nodes[i]
                                .node
                                .final_offers(f.interval)
                                .expect("a node holds the set it just finalized");
                            self.settle_late(
                                k,
                                (f.set_root, f.result.result_hash),
                                &f.result,
                                &offers,
                            );
                        }
                        continue;
                    }
                    if k >= self.scenario.simulation.intervals as usize {
                        continue;
                    }
                    // Keep the first copy of each distinct result for settlement.
                    if !self.sets_seen.contains_key(&(k, f.set_root)) {
                        let offers = self.nodes[i]
                            .node
                            .final_offers(f.interval)
                            .expect("a node holds the set it just finalized");
                        self.sets_seen.insert(
                            (k, f.set_root),
                            offers.iter().map(|o| (o.id, o.offer.energy_wh)).collect(),
                        );
                    }
                    self.results_seen
                        .entry((k, f.set_root, f.result.result_hash))
                        .or_insert(f.result.clone());
                }
            }
        }
        self.spare_actions = std::mem::take(&mut out.actions);
    }

    /// Counts an honest node's settlement of interval `k` and checks it
    /// against the reference.
    fn check_settlement(&mut self, i: usize, k: usize, settled: &Settled) {
        let outcome = &mut self.outcome_intervals[k];
        if !settled.missing.is_empty() {
            outcome.settled_incomplete += 1;
            return;
        }
        outcome.settled_complete += 1;
        let matches = match self.market_settlements.get_mut(&k) {
            Some((_, seen)) if seen.iter().any(|s| Arc::ptr_eq(s, &settled.settlement)) => true,
            Some((reference, seen)) if *reference == *settled.settlement => {
                seen.push(settled.settlement.clone());
                true
            }
            _ => false,
        };
        if matches {
            outcome.settled_matching += 1;
        } else {
            self.violations.push(format!(
                "interval {}: node {i} settled differently with every report",
                settled.interval.0
            ));
        }
    }

    /// Runs the whole scenario.
    pub fn run(mut self) -> Outcome {
        let intervals = self.scenario.simulation.intervals as usize;
        let m = &self.scenario.market;
        let interval_ms = m.interval_s * 1_000;
        // Start just after the previous interval's gate on every node's
        // clock, so that all nodes begin with the same first interval.
        let start_ms = gate_ms(&self.rules, self.first).saturating_sub(interval_ms)
            + self.scenario.network.clock_skew_ms
            + 1_000;
        self.now_ms = start_ms;
        for i in 0..self.nodes.len() {
            self.push(start_ms, Event::Tick(small(i)));
        }
        for k in 0..intervals {
            let gate = gate_ms(&self.rules, self.interval(k));
            // Each interval's plans are drawn when its first can be due, so
            // the queue holds one interval's plans, not a day's.
            let earliest = gate.saturating_sub(plan_before_gate_ms(
                m.interval_s,
                self.scenario.network.clock_skew_ms,
            ));
            self.push(earliest, Event::PlanRound { k: small(k) });
            // Batteries and meters follow the result once it can be final
            // on every clock: after the window and the follow-up on the
            // slowest, before the next plan on the fastest (scenario check).
            let dispatch_ms =
                dispatch_after_gate_ms(m.reconcile_window_s, self.scenario.network.clock_skew_ms)
                    + gate;
            self.push(dispatch_ms, Event::Dispatch { k: small(k) });
            let interval_end_ms = self
                .rules
                .clock
                .start_s(IntervalIndex(self.interval(k).0 + 1))
                * 1_000;
            self.end_ms = dispatch_ms.max(interval_end_ms + SETTLE_WINDOW_MS);
        }
        // A partition that outlasts the run never heals in it.
        for p in 0..self.partitions.len() {
            let (from, to, _) = self.partitions[p];
            self.push(
                from,
                Event::Partition {
                    p: small(p),
                    up: false,
                },
            );
            if to <= self.end_ms {
                self.push(
                    to,
                    Event::Partition {
                        p: small(p),
                        up: true,
                    },
                );
            }
        }
        while let Some((at, event)) = self.queue.pop() {
            self.now_ms = at;
            match event {
                Event::Tick(node) => {
                    let i = node as usize;
                    if self.clocks[i]
                        .wakeup_ms
                        .is_some_and(|pending| pending.get() != at)
                    {
                        continue; // superseded by an earlier wake-up
                    }
                    self.clocks[i].wakeup_ms = None;
                    if self.is_offline(i, at) {
                        let back = self.online_again_ms(at);
                        self.clocks[i].wakeup_ms = NonZeroU64::new(back);
                        self.push(back, Event::Tick(node));
                    } else {
                        self.tick(i);
                        self.schedule_wakeup(i);
                    }
                }
                Event::PlanRound { k } => self.plan_round(k as usize),
                Event::Plan { node, k } => self.plan(node as usize, k as usize),
                Event::Gossip { to, from, id } => {
                    self.deliver(to as usize, from as usize, Payload::Gossip(id as usize));
                }
                Event::Direct { to, from, slot } => {
                    let message = self.direct.take(slot);
                    self.deliver(to as usize, from as usize, Payload::Direct(message));
                }
                Event::Report { node, k } => {
                    let (import_wh, export_wh) = self.reading(node, k);
                    let (node, k) = (node as usize, k as usize);
                    if !self.is_offline(node, at) {
                        self.tick(node);
                        let interval = self.interval(k);
                        let mut out = self.output();
                        self.nodes[node].node.handle_into(
                            Input::MeterReport {
                                interval,
                                import_wh,
                                export_wh,
                            },
                            &mut out,
                        );
                        self.carry_out(node, &mut out);
                        self.schedule_wakeup(node);
                    }
                }
                Event::Withheld { node, how, offer } => {
                    self.release(node as usize, how, *offer);
                }
                Event::Raw { to, from, slot } => {
                    let bytes = self.raw.take(slot);
                    self.deliver(to as usize, from as usize, Payload::Raw(bytes));
                }
                Event::Partition { p, up } => self.relink(p as usize, up),
                Event::Relink { node, p, up } => {
                    self.relink_node(node as usize, p as usize, up);
                }
                Event::Dispatch { k } => {
                    let k = k as usize;
                    self.dispatch(k);
                    if let Some(progress) = self.progress.as_mut() {
                        progress(k + 1, intervals);
                    }
                }
            }
        }
        self.finish()
    }

    /// Tells both ends of every overlay link that partition `p` cuts that
    /// the link went down (`up` false) or came back (`up` true; only if no
    /// other partition still cuts it). A node offline at the time is told
    /// when it is back ([`Event::Relink`]), so that it neither keeps a link
    /// it lost nor loses one for good.
    fn relink(&mut self, p: usize, up: bool) {
        for a in 0..self.nodes.len() {
            self.relink_node(a, p, up);
        }
    }

    fn relink_node(&mut self, a: usize, p: usize, up: bool) {
        let at = self.now_ms;
        let changed: Vec<usize> = self.nodes[a]
            .neighbours
            .iter()
            .copied()
            .filter(|&b| {
                // Across the cut, and now up again or still down.
                let side = &self.partitions[p].2;
                side[a] != side[b] && self.cut(a, b, at) != up
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        if self.is_offline(a, at) {
            let back = self.online_again_ms(at);
            if back <= self.end_ms {
                let (node, p) = (small(a), small(p));
                self.push(back, Event::Relink { node, p, up });
            }
            return;
        }
        self.tick(a);
        for b in changed {
            let peer = self.ids[b];
            let input = if up {
                Input::PeerUp(peer)
            } else {
                Input::PeerDown(peer)
            };
            let mut out = self.output();
            self.nodes[a].node.handle_into(input, &mut out);
            self.carry_out(a, &mut out);
        }
        self.schedule_wakeup(a);
    }

    /// Hands node `to` a message: a tick for its clock (at a time it has
    /// seen, it runs only what became due since), the message, then one
    /// look at when it next wakes.
    fn deliver(&mut self, to: usize, from: usize, payload: Payload) {
        if !self.is_offline(to, self.now_ms) {
            self.tick(to);
            self.receive(to, from, payload);
            self.schedule_wakeup(to);
        }
    }

    fn receive(&mut self, to: usize, from: usize, payload: Payload) {
        let at = self.now_ms;
        if self.cut(from, to, at) {
            return;
        }
        self.messages += 1;
        match payload {
            Payload::Gossip(id) => {
                self.bytes += self.gossip[id].bytes;
                if !self.gossip[id].mark(to) {
                    return;
                }
                let message = self.gossip[id].message.clone();
                if let Message::Offer(offer) = &message
                    && !self.gossip[id].reached
                    && at < gate_ms(&self.rules, offer.offer.interval)
                {
                    self.reach(to, id, offer);
                }
                let mut out = self.output();
                let input = Input::Message {
                    from: self.ids[from],
                    message,
                };
                self.nodes[to].node.handle_into(input, &mut out);
                if matches!(out.verdict, Some(Verdict::Accept)) {
                    self.forward(to, Some(from), id);
                } else if matches!(out.verdict, Some(Verdict::Reject(_))) {
                    self.refused += 1;
                }
                self.carry_out(to, &mut out);
            }
            Payload::Direct(message) => {
                self.bytes += message.encoded_len() as u64;
                self.handle_direct(to, from, message);
            }
            Payload::Raw(bytes) => self.receive_raw(to, from, &bytes),
        }
    }

    /// Spam bytes reaching node `to`: as the daemon's shell does, bytes
    /// that are no message of this protocol never reach the node. Out of
    /// line, so that the hot delivery path stays as the compiler inlines it.
    #[cold]
    #[inline(never)]
    fn receive_raw(&mut self, to: usize, from: usize, bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        match Message::decode(bytes) {
            Ok(message) => self.handle_direct(to, from, message),
            Err(_) => self.refused += 1,
        }
    }

    /// Node `to` handles a direct message from `from`. Out of line: the
    /// gossip path beside it, taken ten times as often, is then small
    /// enough for the compiler to inline what it calls.
    #[inline(never)]
    fn handle_direct(&mut self, to: usize, from: usize, message: Message) {
        let mut out = self.output();
        let input = Input::Message {
            from: self.ids[from],
            message,
        };
        self.nodes[to].node.handle_into(input, &mut out);
        if matches!(out.verdict, Some(Verdict::Reject(_))) {
            self.refused += 1;
        }
        self.carry_out(to, &mut out);
    }

    /// Gossiped offer `id` reached node `to` before gate closure. It has
    /// then reached the network, the part that can finalize its interval:
    /// with no partition in the scenario, any node other than its
    /// publisher; with partitions, a node on the main side of every
    /// partition around its interval that is online at gate closure and
    /// at the window's end. Runs for an offer's first receivers only: out
    /// of line.
    #[cold]
    #[inline(never)]
    fn reach(&mut self, to: usize, id: usize, offer: &SignedOffer) {
        let interval = offer.offer.interval;
        let gate = gate_ms(&self.rules, interval);
        let end = gate + self.scenario.market.reconcile_window_s * 1_000;
        if self.partitions.is_empty()
            || (self.main_side(to, interval)
                && !self.is_offline(to, gate)
                && !self.is_offline(to, end))
        {
            self.gossip[id].reached = true;
            self.reached.insert(offer.id);
        }
    }

    /// Households plan between a third and half an interval (at most three
    /// to four minutes) before gate closure, after the previous interval settled.
    fn plan_round(&mut self, k: usize) {
        let interval_ms = self.scenario.market.interval_s * 1_000;
        let lead_ms = PLAN_LEAD_MS.min(interval_ms / 3);
        let spread_ms = PLAN_SPREAD_MS.min(interval_ms / 6);
        let gate = gate_ms(&self.rules, self.interval(k));
        for i in 0..self.nodes.len() {
            let skew = self.clocks[i].skew_ms;
            let jitter = self.rng_misc.below(spread_ms);
            let at = (gate.saturating_sub(lead_ms + jitter) as i64 - skew).max(0) as u64;
            self.push(
                at,
                Event::Plan {
                    node: small(i),
                    k: small(k),
                },
            );
        }
    }

    fn plan(&mut self, i: usize, k: usize) {
        if self.is_offline(i, self.now_ms) {
            return;
        }
        let interval = self.interval(k);
        let household = &self.households[i];
        let net_load = household.load_wh[k] as i64 - household.pv_wh[k] as i64;
        let h = &self.nodes[i];
        let recent: Vec<IntervalSummary> = h.recent.iter().copied().collect();
        let indicative = indicative_price(&PricingConfig::default(), &self.tariff, &recent);
        let outlook: Vec<IntervalForecast> = recent
            .iter()
            .filter_map(|s| s.clearing_price_micro_per_kwh)
            .map(|p| IntervalForecast {
                net_load_wh: 0,
                indicative_price_micro_per_kwh: p,
                tariff: self.tariff,
            })
            .collect();
        let now = IntervalForecast {
            net_load_wh: net_load,
            indicative_price_micro_per_kwh: indicative.price_micro_per_kwh,
            tariff: self.tariff,
        };
        let plan = agent::plan(
            &household.settings,
            h.soc_wh,
            self.scenario.market.interval_s,
            &now,
            &outlook,
        );
        let role = h.role;
        let orders: Vec<(Side, u64, u64)> = [
            plan.bid.map(|b| (Side::Bid, b)),
            plan.ask.map(|a| (Side::Ask, a)),
        ]
        .into_iter()
        .flatten()
        .map(|(side, o)| (side, o.energy_wh, o.price_micro_per_kwh))
        .collect();
        self.nodes[i].plans.insert(k, plan);
        // A spammer replays its offer of the interval before (now closed);
        // this interval's takes its place.
        let replay = self.nodes[i].replay.take();
        self.tick(i);
        for (side, energy_wh, price) in orders {
            self.offers_total += 1;
            match role {
                Role::Honest | Role::Spammer => {
                    let mut out = self.output();
                    let input = Input::LocalOffer {
                        interval,
                        side,
                        energy_wh,
                        price_micro_per_kwh: price,
                    };
                    self.nodes[i].node.handle_into(input, &mut out);
                    if matches!(out.verdict, Some(Verdict::Accept)) {
                        for action in &out.actions {
                            if let Action::Publish(Message::Offer(o)) = action {
                                let h = &mut self.nodes[i];
                                if role == Role::Honest {
                                    h.published.entry(k).or_default().push((o.id, self.now_ms));
                                } else {
                                    h.replay = Some(o.clone());
                                }
                            }
                        }
                    }
                    self.carry_out(i, &mut out);
                }
                Role::Equivocator => self.equivocate(i, interval, side, energy_wh, price),
                Role::Withholder => {
                    let offer = self.sign(i, interval, side, energy_wh, price, 1);
                    let gate = gate_ms(&self.rules, interval);
                    let how = Withholding::TURNS[(i + k) % Withholding::TURNS.len()];
                    let at = match how {
                        // After gate closure on every node's clock.
                        Withholding::Late => gate + 2_000 + self.scenario.network.clock_skew_ms,
                        // On its own clock.
                        Withholding::ToOne | Withholding::Hidden => {
                            let skew = self.clocks[i].skew_ms;
                            (gate.saturating_sub(WITHHOLD_LEAD_MS) as i64 - skew).max(0) as u64
                        }
                    };
                    self.push(
                        at.max(self.now_ms),
                        Event::Withheld {
                            node: small(i),
                            how,
                            offer: Box::new(offer),
                        },
                    );
                }
            }
        }
        if role == Role::Spammer {
            self.spam(i, interval, replay);
        }
        self.schedule_wakeup(i);
    }

    fn sign(
        &self,
        i: usize,
        interval: IntervalIndex,
        side: Side,
        energy_wh: u64,
        price: u64,
        sequence: u64,
    ) -> SignedOffer {
        Offer {
            chain_id: self.rules.chain_id,
            market: self.rules.market_id,
            interval,
            side,
            energy_wh,
            price_micro_per_kwh: price,
            participant: self.ids[i],
            sequence,
        }
        .sign(&self.keys[i])
    }

    fn equivocate(
        &mut self,
        i: usize,
        interval: IntervalIndex,
        side: Side,
        energy_wh: u64,
        price: u64,
    ) {
        let a = self.sign(i, interval, side, energy_wh, price, 1);
        let b = self.sign(i, interval, side, energy_wh + 1, price, 1);
        let k = (interval.0 - self.first.0) as usize;
        self.nodes[i]
            .equivocations
            .entry(k)
            .or_default()
            .push((a.id, b.id));
        // Each version enters gossip at half of the neighbours, who forward
        // whichever they see first, as a real equivocator's would.
        let ids = [
            self.new_gossip(i, Message::Offer(Arc::new(a))),
            self.new_gossip(i, Message::Offer(Arc::new(b))),
        ];
        let neighbours = self.nodes[i].neighbours.clone();
        for (n, j) in neighbours.into_iter().enumerate() {
            if self.cut(i, j, self.now_ms) {
                continue;
            }
            let latency = self.latency(i, j);
            self.post(i, j, latency, ids[n % 2]);
        }
    }

    fn spam(&mut self, i: usize, interval: IntervalIndex, replay: Option<Arc<SignedOffer>>) {
        let mut forged = self.sign(
            i,
            interval,
            Side::Ask,
            500,
            self.tariff.feed_in_micro_per_kwh,
            1,
        );
        forged.signature[0] ^= 0xff;
        let oversized = self.sign(
            i,
            interval,
            Side::Ask,
            10_000_000,
            self.tariff.feed_in_micro_per_kwh,
            2,
        );
        let other_market = Offer {
            market: MarketId::from_name("elsewhere"),
            ..forged.offer
        }
        .sign(&self.keys[i]);
        // Signed for Energy Web Chain itself, sent to this market on Volta.
        let other_chain = Offer {
            chain_id: CHAIN_ID_EWC,
            ..forged.offer
        }
        .sign(&self.keys[i]);
        // (Offers, not messages: a `Message::clone` here would be one
        // more caller of it, and the compiler would stop inlining it on
        // the delivery path.)
        let mut offers = vec![
            Arc::new(forged.clone()),
            Arc::new(oversized),
            Arc::new(other_market),
            Arc::new(other_chain),
        ];
        // Its own offer of the interval before, replayed after that
        // interval closed.
        offers.extend(replay);
        // Bytes: garbage, a message too large to decode, one of an unknown
        // protocol version.
        let len = 1 + self.rng_misc.below(SPAM_GARBAGE_BYTES);
        let garbage: Vec<u8> = (0..len).map(|_| self.rng_misc.next_u64() as u8).collect();
        let too_large = Message::Offers {
            interval,
            offers: std::iter::repeat_n(Arc::new(forged), SPAM_OFFERS).collect(),
        }
        .encode();
        let mut wrong_version = Message::FetchSet {
            interval,
            set_root: [0; 32],
        }
        .encode();
        wrong_version[0] = wrong_version[0].wrapping_add(1);
        let neighbours = self.nodes[i].neighbours.clone();
        for j in neighbours {
            for offer in &offers {
                self.send_direct(i, j, Message::Offer(offer.clone()));
            }
            for bytes in [&garbage, &too_large, &wrong_version] {
                self.send_raw(i, j, bytes.clone());
            }
        }
    }

    /// Releases a withheld offer of node `i` ([`Withholding`]).
    fn release(&mut self, i: usize, how: Withholding, offer: SignedOffer) {
        let Some(&first) = self.nodes[i].neighbours.first() else {
            return;
        };
        let offer = Arc::new(offer);
        if how == Withholding::Late {
            self.send_direct(i, first, Message::Offer(offer));
            return;
        }
        if self.is_offline(i, self.now_ms) {
            return;
        }
        // Its own node takes the offer as if a peer had gossiped it, so
        // that it answers for it when peers reconcile with it.
        self.tick(i);
        let mut out = self.output();
        let input = Input::Message {
            from: self.ids[first],
            message: Message::Offer(offer.clone()),
        };
        self.nodes[i].node.handle_into(input, &mut out);
        let accepted = matches!(out.verdict, Some(Verdict::Accept));
        self.carry_out(i, &mut out);
        self.schedule_wakeup(i);
        if accepted && how == Withholding::ToOne && !self.cut(i, first, self.now_ms) {
            let id = self.new_gossip(i, Message::Offer(offer));
            let latency = self.latency(i, first);
            self.post(i, first, latency, id);
        }
    }

    /// Checks the settlements of interval `k` that were made before its
    /// reference existed, now that it does.
    fn check_early_settlements(&mut self, k: usize) {
        let early: Vec<(usize, usize, Box<Settled>)> = std::mem::take(&mut self.early_settlements);
        for (i, settled_k, settled) in early {
            if settled_k == k {
                self.check_settlement(i, k, &settled);
            } else {
                self.early_settlements.push((i, settled_k, settled));
            }
        }
    }

    /// Checks the invariants on interval `k`'s reference result: its final
    /// offer set `set_root` and its `trades`.
    fn check_final(
        &mut self,
        k: usize,
        set_root: Hash32,
        trades: &[Trade<OfferId, ParticipantId>],
    ) {
        // Nobody trades more than an offer in the final set offered.
        let interval = self.interval(k);
        let gate = gate_ms(&self.rules, interval);
        if let Some(set) = self.sets_seen.get(&(k, set_root)) {
            let mut traded: BTreeMap<OfferId, u64> = BTreeMap::new();
            for t in trades {
                *traded.entry(t.bid_id).or_default() += t.energy_wh;
                *traded.entry(t.ask_id).or_default() += t.energy_wh;
            }
            for (id, energy) in traded {
                if set.get(&id).is_none_or(|offered| energy > *offered) {
                    self.violations.push(format!(
                        "interval {}: offer {id} traded more than it offered",
                        interval.0
                    ));
                }
            }
        }
        for (i, h) in self.nodes.iter().enumerate() {
            // An equivocation counts once both versions reached the network
            // before gate closure; one that nobody could see is an honest offer.
            let exposed = h.equivocations.get(&k).is_some_and(|pairs| {
                pairs
                    .iter()
                    .any(|(a, b)| self.reached.contains(a) && self.reached.contains(b))
            });
            if h.role == Role::Equivocator
                && exposed
                && trades
                    .iter()
                    .any(|t| t.buyer == self.ids[i] || t.seller == self.ids[i])
            {
                self.violations
                    .push(format!("interval {}: equivocator {i} traded", interval.0));
            }
        }
        // Every honest offer that reached the network before gate
        // closure ([`Sim::reach`]: around a partition, its main side), from
        // a node online from its publication to the end of the
        // window, is in the final set.
        let end = gate + self.scenario.market.reconcile_window_s * 1_000;
        let set = self.sets_seen.get(&(k, set_root));
        for (i, h) in self.nodes.iter().enumerate() {
            for (id, t) in h.published.get(&k).into_iter().flatten() {
                let connected = self.reached.contains(id)
                    && [*t, gate, end].iter().all(|at| !self.is_offline(i, *at));
                if connected && set.is_some_and(|set| !set.contains_key(id)) {
                    self.violations.push(format!(
                        "interval {}: honest offer of node {i} missing",
                        interval.0
                    ));
                }
            }
        }
    }

    /// Settles interval `k`'s `trades` against every meter's `readings`:
    /// the reference for the nodes' own settlements (traders only), and
    /// every household's bill, with money conserved.
    fn settle_money(
        &mut self,
        k: usize,
        trades: &[Trade<OfferId, ParticipantId>],
        readings: &[MeterReading],
    ) {
        let interval = self.interval(k);
        let traders: BTreeSet<ParticipantId> =
            trades.iter().flat_map(|t| [t.buyer, t.seller]).collect();
        let traders_readings: Vec<MeterReading> = readings
            .iter()
            .filter(|r| traders.contains(&r.participant))
            .copied()
            .collect();
        match settle(interval, &self.tariff, trades, &traders_readings) {
            Ok(market) => {
                self.market_settlements.insert(k, (market, Vec::new()));
                if let Some((_, seen)) = k
                    .checked_sub(SHARED_SETTLEMENTS_KEPT)
                    .and_then(|old| self.market_settlements.get_mut(&old))
                {
                    *seen = Vec::new();
                }
            }
            Err(error) => self.violations.push(format!(
                "interval {}: market settlement failed: {error}",
                interval.0
            )),
        }
        match settle(interval, &self.tariff, trades, readings) {
            Ok(s) => {
                let mut sum: i128 = i128::from(s.supplier_net_micro)
                    + i128::from(s.grid_operator_micro)
                    + i128::from(s.market_operator_micro);
                for p in &s.participants {
                    sum += i128::from(p.net_micro);
                    let i = self.index[&p.participant];
                    let o = &mut self.per_household[i];
                    o.bill_micro -= p.net_micro;
                    o.p2p_revenue_micro += p.p2p_received_micro;
                    o.p2p_paid_micro += p.p2p_paid_micro;
                    o.bought_wh += p.bought_wh;
                    o.sold_wh += p.sold_wh;
                    o.sold_at_feed_in_micro += dharti_protocol::clearing::value_micro(
                        p.sold_wh,
                        self.tariff.feed_in_micro_per_kwh,
                    );
                }
                if sum != 0 {
                    self.violations.push(format!(
                        "interval {}: money not conserved ({sum})",
                        interval.0
                    ));
                }
            }
            Err(error) => self.violations.push(format!(
                "interval {}: settlement failed: {error}",
                interval.0
            )),
        }
    }

    /// Interval `k`, which nobody had finalized when batteries and meters
    /// followed it, is final after all (an honest node finalized
    /// `reference` with `result` and its offer set `offers`): its trades
    /// are settled against what the meters read, shortfalls against the
    /// grid, as the nodes do; the invariants are checked on it, and the
    /// nodes' settlements that waited for it are compared.
    fn settle_late(
        &mut self,
        k: usize,
        reference: (Hash32, Hash32),
        result: &Arc<ClearingResult<OfferId, ParticipantId>>,
        offers: &[Arc<SignedOffer>],
    ) {
        let Some(readings) = self.unsettled.remove(&k) else {
            return;
        };
        self.sets_seen
            .entry((k, reference.0))
            .or_insert_with(|| offers.iter().map(|o| (o.id, o.offer.energy_wh)).collect());
        self.results_seen
            .entry((k, reference.0, reference.1))
            .or_insert_with(|| result.clone());
        let outcome = &mut self.outcome_intervals[k];
        outcome.reference = Some(reference);
        outcome.result = Some((**result).clone());
        self.check_final(k, reference.0, &result.trades);
        self.settle_money(k, &result.trades, &readings);
        self.check_early_settlements(k);
    }

    /// Settles interval `k` against the result most honest nodes finalized,
    /// runs every household's battery and meter, and checks the invariants.
    fn dispatch(&mut self, k: usize) {
        let interval = self.interval(k);
        let mut votes: BTreeMap<(Hash32, Hash32), usize> = BTreeMap::new();
        let mut honest_online = 0;
        for (i, h) in self.nodes.iter().enumerate() {
            if h.role != Role::Honest {
                continue;
            }
            if !self.offline[k].contains(i) {
                honest_online += 1;
            }
            if let Some(f) = h.finals.get(&k) {
                *votes.entry((f.set_root, f.result_hash)).or_default() += 1;
            }
        }
        let reference = votes.iter().max_by_key(|(_, c)| **c).map(|(r, _)| *r);
        let result = reference.and_then(|(s, r)| self.results_seen.get(&(k, s, r)).cloned());
        let mut outcome = IntervalOutcome {
            market: self.market,
            index: interval.0,
            start_s: self.rules.clock.start_s(interval),
            reference,
            honest_online,
            ..IntervalOutcome::default()
        };
        let trades = result
            .as_ref()
            .map(|r| r.trades.clone())
            .unwrap_or_default();
        if let Some((set_root, _)) = reference {
            self.check_final(k, set_root, &trades);
        }
        let mut readings = Vec::with_capacity(self.nodes.len());
        let mut total_import = 0u64;
        let mut total_export = 0u64;
        // (bought, sold) per household, in one pass over the trades.
        let mut traded: HashMap<usize, (u64, u64)> = HashMap::new();
        for t in &trades {
            traded.entry(self.index[&t.buyer]).or_default().0 += t.energy_wh;
            traded.entry(self.index[&t.seller]).or_default().1 += t.energy_wh;
        }
        for i in 0..self.nodes.len() {
            let household = &self.households[i];
            let net_load = household.load_wh[k] as i64 - household.pv_wh[k] as i64;
            let (bought, sold) = traded.get(&i).copied().unwrap_or_default();
            let h = &mut self.nodes[i];
            let settings = household.settings;
            let plan = h.plans.remove(&k).unwrap_or_else(|| Plan::idle(net_load));
            let offered_bid = plan.bid.map_or(0, |b| b.energy_wh);
            let offered_ask = plan.ask.map_or(0, |a| a.energy_wh);

            let d = agent::dispatch(
                &settings,
                h.soc_wh,
                &plan,
                net_load,
                bought.min(offered_bid),
                sold.min(offered_ask),
            );
            h.soc_wh = d.soc_after_wh;
            readings.push(MeterReading {
                participant: self.ids[i],
                interval,
                import_wh: d.import_wh,
                export_wh: d.export_wh,
            });
            total_import += d.import_wh;
            total_export += d.export_wh;
            // Grid-only baseline: the battery serves the house, nothing is traded.
            let baseline_settings = AgentSettings {
                cheap_below_ppm: 0,
                expensive_above_ppm: u32::MAX,
                ..settings
            };
            let baseline_plan = agent::plan(
                &baseline_settings,
                h.baseline_soc_wh,
                self.scenario.market.interval_s,
                &IntervalForecast {
                    net_load_wh: net_load,
                    indicative_price_micro_per_kwh: 1,
                    tariff: self.tariff,
                },
                &[],
            );
            let b = agent::dispatch(
                &baseline_settings,
                h.baseline_soc_wh,
                &baseline_plan,
                net_load,
                0,
                0,
            );
            h.baseline_soc_wh = b.soc_after_wh;
            let o = &mut self.per_household[i];
            let import_cost = dharti_protocol::clearing::value_micro(
                b.import_wh,
                self.tariff.retail_micro_per_kwh,
            );
            let export_income = dharti_protocol::clearing::value_micro(
                b.export_wh,
                self.tariff.feed_in_micro_per_kwh,
            );
            o.grid_only_import_micro += import_cost;
            o.grid_only_bill_micro += i64::try_from(import_cost).unwrap_or(i64::MAX)
                - i64::try_from(export_income).unwrap_or(0);
            o.load_wh += household.load_wh[k];
            o.pv_wh += household.pv_wh[k];
            outcome.load_wh += household.load_wh[k];
            outcome.pv_wh += household.pv_wh[k];
        }
        outcome.community_import_wh = total_import.saturating_sub(total_export);
        outcome.community_export_wh = total_export.saturating_sub(total_import);
        // Every household's meter reports when the interval ends (within a
        // few seconds); nodes settle the traders with them.
        let end_ms = self.rules.clock.start_s(IntervalIndex(interval.0 + 1)) * 1_000;
        let mut read = vec![(0, 0); self.nodes.len()];
        for reading in &readings {
            let node = self.index[&reading.participant];
            read[node] = (reading.import_wh, reading.export_wh);
            let jitter = self.rng_misc.below(REPORT_SPREAD_MS);
            let at = ((end_ms + jitter) as i64 - self.clocks[node].skew_ms).max(0) as u64;
            let (node, k) = (small(node), small(k));
            self.push(at, Event::Report { node, k });
        }
        let pending = read.len();
        if pending > 0 {
            self.readings.insert(small(k), (read, pending));
        }
        if reference.is_some() {
            self.settle_money(k, &trades, &readings);
        } else {
            self.unsettled.insert(k, readings);
        }
        outcome.offers = self
            .nodes
            .iter()
            .map(|h| h.published.get(&k).map_or(0, Vec::len))
            .sum();
        outcome.result = result.map(|r| (*r).clone());
        self.outcome_intervals.push(outcome);
        self.check_early_settlements(k);
        self.clearing
            .prune_before(IntervalIndex(interval.0.saturating_sub(16)));
        self.verifier.age();
        self.trace.write_u64(interval.0);
        self.trace.write(&reference.map_or([0; 32], |r| r.1));
    }

    fn finish(mut self) -> Outcome {
        // Intervals nobody finalized by the end: nothing was traded.
        for (k, readings) in std::mem::take(&mut self.unsettled) {
            self.settle_money(k, &[], &readings);
        }
        // Agreement is judged at the end of the run, so that nodes that could
        // only finalize after a partition healed count.
        for (k, outcome) in self.outcome_intervals.iter_mut().enumerate() {
            let interval = IntervalIndex(outcome.index);
            for (i, h) in self.nodes.iter().enumerate() {
                if h.role != Role::Honest {
                    continue;
                }
                let online = !self.offline[k].contains(i);
                match (h.finals.get(&k), outcome.reference) {
                    (Some(f), Some(r)) if (f.set_root, f.result_hash) == r => {
                        if online {
                            outcome.agreeing += 1;
                            outcome.finality_ms.push(f.finality_ms);
                        }
                    }
                    (Some(_), Some(_)) => {
                        self.violations.push(format!(
                            "interval {}: node {i} finalized another result",
                            interval.0
                        ));
                    }
                    _ => {
                        if std::env::var_os("DHARTI_SIM_DEBUG").is_some() && online {
                            eprintln!(
                                "interval {} node {i}: not final; {}",
                                interval.0,
                                h.node.debug_interval(interval)
                            );
                        }
                    }
                }
            }
        }
        let roles = self.nodes.iter().map(|h| h.role).collect();
        // Freeing a thousand nodes' maps, offers and messages one by one
        // takes about half a second and changes no result: a helper thread
        // does it while the caller writes the results. (If the process ends
        // first, the kernel frees it all at once.)
        let nodes = std::mem::take(&mut self.nodes);
        let gossip = std::mem::take(&mut self.gossip);
        std::thread::spawn(move || drop((nodes, gossip)));
        Outcome {
            roles,
            households: self.households,
            intervals: self.outcome_intervals,
            per_household: self.per_household,
            invariant_violations: self.violations.len() as u64,
            violations: self.violations,
            messages: self.messages,
            refused: self.refused,
            bytes: self.bytes,
            payload_bytes: self.payload_bytes,
            offers_total: self.offers_total,
            trace_hash: self.trace.finish(),
        }
    }
}
