//! A small deterministic network of nodes: seeded latencies, loss and
//! partitions, every node's final results compared.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::clearing::Mechanism;
use crate::tariff::{Tariff, TariffSchedule};
use crate::types::{CHAIN_ID_VOLTA, IntervalClock, MarketId};
use crate::verify::Allocation;

const INTERVAL_S: u64 = 60;
/// Delivery of interval `FIRST` starts here; the run starts one interval earlier.
const FIRST: IntervalIndex = IntervalIndex(30_000_000);
const TICK_MS: u64 = 100;

fn rules() -> MarketRules {
    MarketRules {
        chain_id: CHAIN_ID_VOLTA,
        market_id: MarketId::from_name("node-tests"),
        clock: IntervalClock::new(INTERVAL_S, 10).unwrap(),
        max_intervals_ahead: 10,
        max_offer_energy_wh: 100_000,
        max_offers_per_participant: 16,
        tariffs: TariffSchedule::flat(Tariff::new(80_000, 300_000, 10_000)),
        mechanism: Mechanism::default(),
    }
}

fn key(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[u8::try_from(i + 1).unwrap(); 32])
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The test market of `n` members (keys 0..n), with `attesters` per
/// interval (0: all).
fn config(n: usize, attesters: usize) -> NodeConfig {
    let members: BTreeSet<ParticipantId> = (0..n)
        .map(|i| ParticipantId(key(i).verifying_key().to_bytes()))
        .collect();
    NodeConfig {
        rules: rules(),
        members,
        reconcile_window_ms: 5_000,
        quorum_ppm: DEFAULT_QUORUM_PPM,
        reconcile_fanout: 2,
        active_window: 4,
        attesters,
    }
}

/// How the test network misbehaves.
#[derive(Clone, Debug, Default)]
struct Faults {
    /// Share of gossiped offers lost on each link, in percent.
    offer_loss_pct: u64,
    /// Nodes cut off from everyone between these times (ms since start).
    cut: Option<(BTreeSet<usize>, u64, u64)>,
    /// Share of messages of every kind delivered twice, in percent: the
    /// copy arrives up to [`DUPLICATE_DELAY_MS`] after the first, which can
    /// be after gate closure or the reconciliation window.
    duplicate_pct: u64,
}

/// Longest delay of a duplicated message after its first copy: two gossip
/// hops to half a reconciliation window.
const DUPLICATE_DELAY_MS: u64 = 5_000;

/// (delivery time in ms, sequence number): the queue's order.
type QueueKey = (u64, u64);
/// (to, from, message).
type Queued = (usize, usize, Message);

struct Net {
    nodes: Vec<Node>,
    queue: BTreeMap<QueueKey, Queued>,
    seq: u64,
    rng: Rng,
    faults: Faults,
    start_ms: u64,
    finals: Vec<BTreeMap<IntervalIndex, Finalized>>,
    /// Each node's final offer sets, taken while it handled `Finalized`.
    final_sets: Vec<BTreeMap<IntervalIndex, Vec<Arc<SignedOffer>>>>,
    settled: Vec<BTreeMap<IntervalIndex, Settled>>,
    accepted_offers: BTreeMap<IntervalIndex, BTreeSet<OfferId>>,
    verdicts: Vec<Verdict>,
    /// Who published an attestation, per interval.
    attesters: BTreeMap<IntervalIndex, BTreeSet<ParticipantId>>,
}

impl Net {
    fn new(n: usize, seed: u64, faults: Faults) -> Net {
        Net::with_attesters(n, seed, faults, 0)
    }

    fn with_attesters(n: usize, seed: u64, faults: Faults, attesters: usize) -> Net {
        let config = config(n, attesters);
        let mut nodes: Vec<Node> = (0..n).map(|i| Node::new(config.clone(), key(i))).collect();
        let ids: Vec<ParticipantId> = nodes.iter().map(Node::id).collect();
        for node in &mut nodes {
            for id in &ids {
                node.handle(Input::PeerUp(*id));
            }
        }
        let start_ms = (FIRST.0 - 1) * INTERVAL_S * 1_000;
        Net {
            nodes,
            queue: BTreeMap::new(),
            seq: 0,
            rng: Rng(seed),
            faults,
            start_ms,
            finals: vec![BTreeMap::new(); n],
            final_sets: vec![BTreeMap::new(); n],
            settled: vec![BTreeMap::new(); n],
            accepted_offers: BTreeMap::new(),
            verdicts: Vec::new(),
            attesters: BTreeMap::new(),
        }
    }

    fn cut_off(&self, node: usize, at_ms: u64) -> bool {
        self.faults.cut.as_ref().is_some_and(|(nodes, from, to)| {
            nodes.contains(&node) && (self.start_ms + from..self.start_ms + to).contains(&at_ms)
        })
    }

    fn enqueue(&mut self, now_ms: u64, from: usize, to: usize, message: Message) {
        if from == to || self.cut_off(from, now_ms) || self.cut_off(to, now_ms) {
            return;
        }
        if matches!(message, Message::Offer(_)) && self.rng.below(100) < self.faults.offer_loss_pct
        {
            return;
        }
        let at = now_ms + 5 + self.rng.below(95);
        if self.faults.duplicate_pct > 0 && self.rng.below(100) < self.faults.duplicate_pct {
            let later = at + 1 + self.rng.below(DUPLICATE_DELAY_MS);
            self.seq += 1;
            self.queue
                .insert((later, self.seq), (to, from, message.clone()));
        }
        self.seq += 1;
        self.queue.insert((at, self.seq), (to, from, message));
    }

    fn apply(&mut self, now_ms: u64, node: usize, output: Output) {
        if let Some(verdict) = output.verdict {
            self.verdicts.push(verdict);
        }
        for action in output.actions {
            match action {
                Action::Publish(message) => {
                    if let Message::Attestation(a) = &message {
                        let a = &a.attestation;
                        self.attesters
                            .entry(a.interval)
                            .or_default()
                            .insert(a.attester);
                    }
                    for to in 0..self.nodes.len() {
                        self.enqueue(now_ms, node, to, message.clone());
                    }
                }
                Action::Send { to, message } => {
                    // A peer that is not in the net (gone) gets nothing.
                    if let Some(to) = self.nodes.iter().position(|n| n.id() == to) {
                        self.enqueue(now_ms, node, to, message);
                    }
                }
                Action::Settled(settled) => {
                    let previous = self.settled[node].insert(settled.interval, *settled);
                    assert!(previous.is_none(), "node {node} settled an interval twice");
                }
                Action::Finalized(finalized) => {
                    let offers = self.nodes[node]
                        .final_offers(finalized.interval)
                        .expect("a node holds the set it just finalized");
                    self.final_sets[node].insert(finalized.interval, offers);
                    let previous = self.finals[node].insert(finalized.interval, *finalized);
                    assert!(
                        previous.is_none(),
                        "node {node} finalized an interval twice"
                    );
                }
            }
        }
    }

    fn offer(
        &mut self,
        node: usize,
        interval: IntervalIndex,
        side: Side,
        energy_wh: u64,
        price: u64,
    ) {
        let now_ms = self.nodes[node].now_ms;
        let out = self.nodes[node].handle(Input::LocalOffer {
            interval,
            side,
            energy_wh,
            price_micro_per_kwh: price,
        });
        assert_eq!(out.verdict, Some(Verdict::Accept), "local offer refused");
        if let Some(Action::Publish(Message::Offer(offer))) = out.actions.first() {
            self.accepted_offers
                .entry(interval)
                .or_default()
                .insert(offer.id);
        }
        self.apply(now_ms, node, out);
    }

    /// Runs until `until_ms` after the start, delivering messages and ticking.
    fn run(&mut self, until_ms: u64) {
        let end = self.start_ms + until_ms;
        let mut now = self.nodes[0].now_ms.max(self.start_ms);
        while now <= end {
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((at, _), (to, from, message)) = entry.remove_entry();
                if self.cut_off(to, at) {
                    continue;
                }
                let from_id = self.nodes[from].id();
                let out = self.nodes[to].handle(Input::Message {
                    from: from_id,
                    message,
                });
                self.apply(at, to, out);
            }
            for i in 0..self.nodes.len() {
                let out = self.nodes[i].handle(Input::Tick { now_ms: now });
                self.apply(now, i, out);
            }
            now += TICK_MS;
        }
    }

    /// Random offers from every node for intervals FIRST..FIRST+count, drawn
    /// before any is sent so that network randomness cannot change them.
    fn random_offers(&mut self, count: u64) {
        let mut planned = Vec::new();
        for node in 0..self.nodes.len() {
            for k in 0..count {
                let side = if self.rng.below(2) == 0 {
                    Side::Bid
                } else {
                    Side::Ask
                };
                let energy = 100 + self.rng.below(2_000);
                let price = 80_000 + self.rng.below(220_001);
                planned.push((node, IntervalIndex(FIRST.0 + k), side, energy, price));
            }
        }
        for (node, interval, side, energy, price) in planned {
            self.offer(node, interval, side, energy, price);
        }
    }

    /// Every node finalized every interval, all with the same roots.
    fn assert_agreement(&self, intervals: u64) {
        for k in 0..intervals {
            let interval = IntervalIndex(FIRST.0 + k);
            let roots: BTreeSet<(Hash32, Hash32)> = self
                .finals
                .iter()
                .enumerate()
                .map(|(node, finals)| {
                    let f = finals
                        .get(&interval)
                        .unwrap_or_else(|| panic!("node {node} did not finalize {interval:?}"));
                    (f.set_root, f.result.result_hash)
                })
                .collect();
            assert_eq!(roots.len(), 1, "nodes disagree on {interval:?}");
        }
    }

    fn final_ids(&self, node: usize, interval: IntervalIndex) -> BTreeSet<OfferId> {
        self.final_sets[node][&interval]
            .iter()
            .map(|o| o.id)
            .collect()
    }
}

fn start(net: &mut Net) {
    let start = net.start_ms;
    for i in 0..net.nodes.len() {
        let out = net.nodes[i].handle(Input::Tick { now_ms: start });
        net.apply(start, i, out);
    }
}

#[test]
fn seven_nodes_agree_on_every_interval() {
    let mut net = Net::new(7, 1, Faults::default());
    start(&mut net);
    net.random_offers(3);
    net.run(4 * INTERVAL_S * 1_000);
    net.assert_agreement(3);
    for k in 0..3 {
        let interval = IntervalIndex(FIRST.0 + k);
        assert_eq!(
            net.final_ids(0, interval),
            net.accepted_offers[&interval],
            "an honest offer is missing"
        );
    }
    let traded: u64 = net.finals[0].values().map(|f| f.result.volume_wh).sum();
    assert!(traded > 0, "nothing traded");
    // Finality comes right after the reconciliation window.
    for f in net.finals.iter().flat_map(|f| f.values()) {
        assert!(
            f.finality_ms <= 5_000 + 1_000,
            "finality after {} ms",
            f.finality_ms
        );
        assert!(!f.fetched);
    }
}

#[test]
fn reconciliation_repairs_lost_gossip() {
    let mut net = Net::new(
        7,
        2,
        Faults {
            offer_loss_pct: 40,
            cut: None,
            ..Faults::default()
        },
    );
    start(&mut net);
    net.random_offers(2);
    net.run(3 * INTERVAL_S * 1_000);
    net.assert_agreement(2);
    for k in 0..2 {
        let interval = IntervalIndex(FIRST.0 + k);
        assert_eq!(net.final_ids(3, interval), net.accepted_offers[&interval]);
    }
}

#[test]
fn a_cut_off_node_fetches_the_quorum_set_and_converges() {
    // Node 0 is cut off while offers are made and until after the
    // reconciliation window, so it attests a set of its own offer only.
    let gate_ms = (INTERVAL_S - 10) * 1_000;
    let cut = Faults {
        offer_loss_pct: 0,
        cut: Some((BTreeSet::from([0]), gate_ms - 20_000, gate_ms + 8_000)),
        ..Faults::default()
    };
    let mut net = Net::new(7, 3, cut);
    start(&mut net);
    net.run(gate_ms - 15_000);
    net.random_offers(1);
    net.run(2 * INTERVAL_S * 1_000);
    net.assert_agreement(1);
    assert!(
        net.finals[0][&FIRST].fetched,
        "node 0 should have fetched the quorum's set"
    );
    assert!(net.finals[1..].iter().all(|f| !f[&FIRST].fetched));
    // The quorum's set has the six offers made outside the cut; node 0's own
    // offer never reached the others in time and is dropped by everyone.
    assert_eq!(net.final_sets[0][&FIRST].len(), 6);
    let own = net.nodes[0].id();
    assert!(
        net.final_sets[0][&FIRST]
            .iter()
            .all(|o| o.offer.participant != own)
    );
}

/// Seven nodes with `seed`; node 0 is cut off from before the offers until
/// `heal_ms` (returned), past its quick asks for the quorum (the window is
/// 5 s, asks every 2 s for 10 s). The net has run up to the heal.
fn cut_past_the_asks(seed: u64) -> (Net, u64) {
    let gate_ms = (INTERVAL_S - 10) * 1_000;
    let heal_ms = gate_ms + 30_000;
    let cut = Faults {
        offer_loss_pct: 0,
        cut: Some((BTreeSet::from([0]), gate_ms - 20_000, heal_ms)),
        ..Faults::default()
    };
    let mut net = Net::new(7, seed, cut);
    start(&mut net);
    net.run(gate_ms - 15_000);
    net.random_offers(1);
    net.run(heal_ms);
    assert!(
        !net.finals[0].contains_key(&FIRST),
        "cut off, no quorum yet"
    );
    (net, heal_ms)
}

/// Reconnecting a peer gets node 0 the quorum at once; without that, it
/// would ask again only at the next gate closure.
#[test]
fn a_reconnected_peer_is_asked_for_the_quorum_at_once() {
    let (mut net, heal_ms) = cut_past_the_asks(5);
    let peer = net.nodes[1].id();
    let now = net.start_ms + heal_ms;
    // A peer that is already connected: nothing to do.
    let again = net.nodes[0].handle(Input::PeerUp(peer));
    assert!(again.actions.is_empty(), "{:?}", again.actions);
    // The transport noticed the cut and now reconnects.
    let down = net.nodes[0].handle(Input::PeerDown(peer));
    assert!(down.actions.is_empty());
    let up = net.nodes[0].handle(Input::PeerUp(peer));
    assert!(
        up.actions.iter().any(|a| matches!(
            a,
            Action::Send { to, message: Message::Pending(p) }
                if *to == peer && p.attestation.interval == FIRST
        )),
        "the reconnected peer is asked: {:?}",
        up.actions
    );
    net.apply(now, 0, up);
    net.run(heal_ms + 3_000);
    let finality = net.finals[0][&FIRST].finality_ms;
    assert!(
        (30_000..33_000).contains(&finality),
        "node 0 should be final right after reconnecting, not at the next gate: {finality} ms"
    );
    net.assert_agreement(1);
}

/// As above, but the first ask after the reconnection goes unanswered (the
/// healed side had no quorum yet to give): the node asks again for a few
/// rounds from then on, instead of waiting for the next gate closure.
#[test]
fn a_reconnection_renews_the_asks_for_the_quorum() {
    let (mut net, heal_ms) = cut_past_the_asks(6);
    let peer = net.nodes[1].id();
    net.nodes[0].handle(Input::PeerDown(peer));
    let up = net.nodes[0].handle(Input::PeerUp(peer));
    assert!(!up.actions.is_empty(), "the reconnected peer is asked");
    // ...and the answer is lost. Renewed asks go out every two seconds.
    net.run(heal_ms + 3_000);
    let finality = net.finals[0]
        .get(&FIRST)
        .expect("final from a renewed ask, not at the next gate closure")
        .finality_ms;
    assert!(
        (30_000..33_000).contains(&finality),
        "final {finality} ms after gate closure"
    );
    net.assert_agreement(1);
}

#[test]
fn a_restarted_node_never_reuses_a_sequence_number() {
    let mut net = Net::new(4, 4, Faults::default());
    start(&mut net);
    let local = |energy_wh| Input::LocalOffer {
        interval: FIRST,
        side: Side::Bid,
        energy_wh,
        price_micro_per_kwh: 200_000,
    };
    let out = net.nodes[0].handle(local(100));
    let Some(Action::Publish(Message::Offer(first))) = out.actions.first().cloned() else {
        panic!("a local offer is published: {out:?}");
    };
    assert_eq!(first.offer.sequence, 1);
    // The same key in a fresh node (a restart), given its stored offer back.
    let mut again = Node::new((*net.nodes[0].config).clone(), key(0));
    again.handle(Input::Tick {
        now_ms: net.nodes[0].now_ms,
    });
    let out = again.handle(Input::Message {
        from: again.id(),
        message: Message::Offer(first.clone()),
    });
    assert_eq!(out.verdict, Some(Verdict::Accept));
    let out = again.handle(local(300));
    assert_eq!(
        out.verdict,
        Some(Verdict::Accept),
        "a replacement, not an equivocation"
    );
    let Some(Action::Publish(Message::Offer(second))) = out.actions.first().cloned() else {
        panic!("the replacement is published: {out:?}");
    };
    assert_eq!(second.offer.sequence, 2);
}

#[test]
fn a_committee_attests_for_everyone_and_outsiders_cannot() {
    const N: usize = 12;
    const COMMITTEE: usize = 5;
    let mut net = Net::with_attesters(N, 9, Faults::default(), COMMITTEE);
    start(&mut net);
    net.random_offers(3);
    net.run(4 * INTERVAL_S * 1_000);
    net.assert_agreement(3);
    let mut committees = BTreeSet::new();
    for k in 0..3 {
        let interval = IntervalIndex(FIRST.0 + k);
        let published = &net.attesters[&interval];
        assert_eq!(published.len(), COMMITTEE, "{interval:?}: {published:?}");
        for node in 0..N {
            let quorum: BTreeSet<ParticipantId> = net.nodes[node]
                .final_attestations(interval)
                .expect("final")
                .iter()
                .map(|a| a.attestation.attester)
                .collect();
            // More than two thirds of the five: four at least, all members
            // of the committee.
            assert!(
                quorum.len() >= 4 && quorum.is_subset(published),
                "{quorum:?}"
            );
        }
        committees.insert(published.clone());
    }
    assert!(committees.len() > 1, "the committee never changed");
    // A member outside the first interval's committee signs an attestation
    // for it: refused, whatever it says.
    let outsider = (0..N)
        .find(|&i| !net.attesters[&FIRST].contains(&net.nodes[i].id()))
        .expect("seven members are outside");
    let f = &net.finals[0][&FIRST];
    let signed = Attestation {
        chain_id: CHAIN_ID_VOLTA,
        market: rules().market_id,
        interval: FIRST,
        set_root: f.set_root,
        result_root: f.result.result_hash,
        attester: net.nodes[outsider].id(),
    }
    .sign(&key(outsider));
    let receiver = (outsider + 1) % N;
    let from = net.nodes[outsider].id();
    let out = net.nodes[receiver].handle(Input::Message {
        from,
        message: Message::Attestation(Arc::new(signed)),
    });
    assert!(
        matches!(&out.verdict, Some(Verdict::Reject(reason)) if reason.contains("committee")),
        "{:?}",
        out.verdict
    );
}

#[test]
fn a_committee_needs_its_quorum_however_few_members_look_active() {
    const COMMITTEE: usize = 5;
    let mut net = Net::with_attesters(12, 4, Faults::default(), COMMITTEE);
    start(&mut net);
    net.random_offers(1);
    // Past FIRST's gate and window: its committee exists and has attested.
    net.run(INTERVAL_S * 1_000);
    let node = &mut net.nodes[0];
    let committee = node.intervals[&FIRST]
        .committee
        .clone()
        .expect("a committee");
    let attester = (0u32..12).find(|&p| committee.contains(p)).expect("five");
    // Recent history where one member of FIRST's committee attested: the
    // member-wide threshold follows it down to one...
    node.activity = Activity::default();
    let mut attesters = PlaceSet::default();
    attesters.insert(attester as usize);
    node.activity.open(IntervalIndex(1), &attesters, 4);
    node.update_threshold();
    assert_eq!(node.threshold, 1);
    // ...but a committee interval still needs more than two thirds of its
    // committee, whoever of it attested lately.
    assert_eq!(
        node.threshold_of(FIRST),
        quorum_of(COMMITTEE, DEFAULT_QUORUM_PPM)
    );
    assert_eq!(quorum_of(COMMITTEE, DEFAULT_QUORUM_PPM), 4);
}

#[test]
fn committees_spread_over_members_and_intervals() {
    let keys: Vec<u64> = (0..100u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let market = rules().market_id;
    let mut chosen = vec![0u32; keys.len()];
    for k in 0..200 {
        let committee = Committee::draw(&keys, &market, IntervalIndex(k), 10);
        assert_eq!(committee.len(), 10);
        let members: Vec<u32> = (0..100).filter(|&p| committee.contains(p)).collect();
        assert_eq!(members.len(), 10, "interval {k}: {members:?}");
        // The ten lowest scores, as `draw` promises.
        let scores = committee_scores(&keys, &market, IntervalIndex(k));
        let worst_in = members.iter().map(|&p| scores[p as usize]).max().unwrap();
        assert!(
            (0..100u32)
                .filter(|p| !committee.contains(*p))
                .all(|p| scores[p as usize] > worst_in)
        );
        for place in members {
            chosen[place as usize] += 1;
        }
    }
    // Each member is on about 20 of the 200 committees of ten.
    assert!(chosen.iter().all(|&c| (3..=45).contains(&c)), "{chosen:?}");
    let other = MarketId::from_name("another market");
    assert_ne!(
        Committee::draw(&keys, &market, FIRST, 10),
        Committee::draw(&keys, &other, FIRST, 10)
    );
    assert!(check_attesters(0).is_ok() && check_attesters(4).is_ok());
    assert!(check_attesters(3).is_err());
    // Sizes are clamped: none asked gives one member, too many gives all.
    assert_eq!(Committee::draw(&keys, &market, FIRST, 0).len(), 1);
    let all = Committee::draw(&keys, &market, FIRST, 1_000);
    assert_eq!(all.len(), 100);
    assert!((0..100).all(|p| all.contains(p)));
}

#[test]
fn non_members_and_forgeries_are_rejected() {
    let mut net = Net::new(4, 4, Faults::default());
    start(&mut net);
    let outsider = SigningKey::from_bytes(&[200; 32]);
    let outsider_id = ParticipantId(outsider.verifying_key().to_bytes());
    let offer = Offer {
        chain_id: CHAIN_ID_VOLTA,
        market: rules().market_id,
        interval: FIRST,
        side: Side::Bid,
        energy_wh: 100,
        price_micro_per_kwh: 100_000,
        participant: outsider_id,
        sequence: 1,
    }
    .sign(&outsider);
    let from_member = net.nodes[1].id();
    let out = net.nodes[0].handle(Input::Message {
        from: outsider_id,
        message: Message::Offer(offer.clone().into()),
    });
    assert!(matches!(out.verdict, Some(Verdict::Reject(_))));
    let out = net.nodes[0].handle(Input::Message {
        from: from_member,
        message: Message::Offer(offer.into()),
    });
    assert!(
        matches!(out.verdict, Some(Verdict::Reject(_))),
        "a member relaying a non-member's offer"
    );
    let forged = SignedAttestation {
        attestation: Attestation {
            chain_id: CHAIN_ID_VOLTA,
            market: rules().market_id,
            interval: FIRST,
            set_root: [1; 32],
            result_root: [2; 32],
            attester: from_member,
        },
        signature: [7; 64],
    };
    // Close the gate first so the attestation is for a closed interval.
    net.run(INTERVAL_S * 1_000);
    let out = net.nodes[0].handle(Input::Message {
        from: from_member,
        message: Message::Attestation(Arc::new(forged)),
    });
    assert!(
        matches!(out.verdict, Some(Verdict::Reject(_))),
        "{:?}",
        out.verdict
    );
}

#[test]
fn messages_round_trip_and_bad_bytes_are_refused() {
    let k = key(0);
    let offer = Offer {
        chain_id: CHAIN_ID_VOLTA,
        market: rules().market_id,
        interval: FIRST,
        side: Side::Ask,
        energy_wh: 1,
        price_micro_per_kwh: 90_000,
        participant: ParticipantId(k.verifying_key().to_bytes()),
        sequence: 1,
    }
    .sign(&k);
    let messages = vec![
        Message::Offer(offer.clone().into()),
        Message::Offers {
            interval: FIRST,
            offers: (0..3).map(|_| Arc::new(offer.clone())).collect(),
        },
        Message::Want {
            interval: FIRST,
            ids: vec![offer.id],
        },
        Message::FetchSet {
            interval: FIRST,
            set_root: [3; 32],
        },
        Message::Reconcile {
            interval: FIRST,
            message: crate::reconcile::initiate(&[offer.id]),
        },
    ];
    for message in messages {
        let bytes = message.encode();
        assert!(bytes.len() <= MAX_MESSAGE_BYTES);
        assert_eq!(Message::decode(&bytes).unwrap(), message);
    }
    assert_eq!(Message::decode(&[]), Err(MessageError::Empty));
    assert_eq!(Message::decode(&[9, 0, 0]), Err(MessageError::Version(9)));
    assert!(matches!(
        Message::decode(&[1, 200, 3, 4]),
        Err(MessageError::Malformed(_))
    ));
    assert!(matches!(
        Message::decode(&vec![1; MAX_MESSAGE_BYTES + 1]),
        Err(MessageError::TooLarge(_))
    ));
    let too_many = Message::Want {
        interval: FIRST,
        ids: vec![offer.id; MAX_WANTED_IDS + 1],
    };
    assert_eq!(
        Message::decode(&too_many.encode()),
        Err(MessageError::ListTooLong)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Different seeds reorder every delivery (latencies), lose gossip and
    /// deliver messages of every kind twice, the copy up to seconds later;
    /// the final results must not change.
    #[test]
    fn delivery_order_and_duplicates_do_not_change_the_result(
        seed in any::<u64>(),
        loss in 0u64..30,
        duplicate in 0u64..60,
    ) {
        let outcome = |net_seed: u64, loss: u64, duplicate: u64| {
            let faults = Faults { offer_loss_pct: loss, cut: None, duplicate_pct: duplicate };
            let mut net = Net::new(5, net_seed, faults);
            // The same offers every time: drawn from a fixed generator.
            net.rng = Rng(99);
            start(&mut net);
            net.random_offers(1);
            net.rng = Rng(net_seed);
            net.run(2 * INTERVAL_S * 1_000);
            net.assert_agreement(1);
            let f = &net.finals[0][&FIRST];
            (f.set_root, f.result.result_hash)
        };
        prop_assert_eq!(outcome(seed, loss, duplicate), outcome(seed ^ 0x5555, 0, 0));
    }
}

/// Signs an offer for node `i` directly (bypassing its Node), as an
/// adversary controlling that key would.
fn forge(
    i: usize,
    interval: IntervalIndex,
    side: Side,
    energy_wh: u64,
    sequence: u64,
) -> SignedOffer {
    let k = key(i);
    Offer {
        chain_id: CHAIN_ID_VOLTA,
        market: rules().market_id,
        interval,
        side,
        energy_wh,
        price_micro_per_kwh: 150_000,
        participant: ParticipantId(k.verifying_key().to_bytes()),
        sequence,
    }
    .sign(&k)
}

/// Delivers `message` from node `from` to each node in `to` right now.
fn deliver(net: &mut Net, from: usize, to: &[usize], message: &Message) {
    let now = net.nodes[from].now_ms;
    let from_id = net.nodes[from].id();
    for &t in to {
        let out = net.nodes[t].handle(Input::Message {
            from: from_id,
            message: message.clone(),
        });
        net.apply(now, t, out);
    }
}

#[test]
fn an_equivocator_is_void_everywhere() {
    let mut net = Net::new(7, 5, Faults::default());
    start(&mut net);
    net.random_offers(1);
    // Node 6 is an equivocator: two different offers with one sequence
    // number, each to half of the network.
    let a = forge(6, FIRST, Side::Ask, 1_000, 7);
    let b = forge(6, FIRST, Side::Ask, 2_000, 7);
    deliver(&mut net, 6, &[0, 1, 2], &Message::Offer(a.into()));
    deliver(&mut net, 6, &[3, 4, 5], &Message::Offer(b.into()));
    net.run(2 * INTERVAL_S * 1_000);
    net.assert_agreement(1);
    let equivocator = net.nodes[6].id();
    let f = &net.finals[0][&FIRST];
    assert!(
        f.result
            .trades
            .iter()
            .all(|t| t.seller != equivocator && t.buyer != equivocator),
        "an equivocator traded"
    );
    // Its offers stay in the set only as evidence: two offers with one sequence.
    let evidence: Vec<&Arc<SignedOffer>> = net.final_sets[0][&FIRST]
        .iter()
        .filter(|o| o.offer.participant == equivocator)
        .collect();
    assert!(evidence.iter().any(|o| o.offer.sequence == 7));
}

#[test]
fn an_offer_released_after_gate_closure_is_refused_by_gossip() {
    let mut net = Net::new(5, 6, Faults::default());
    start(&mut net);
    net.random_offers(1);
    // Past gate closure of FIRST, a withholder releases a new offer to one node.
    net.run((INTERVAL_S - 10) * 1_000 + 500);
    let late = forge(4, FIRST, Side::Bid, 700, 99);
    let withholder = net.nodes[4].id();
    let out = net.nodes[0].handle(Input::Message {
        from: withholder,
        message: Message::Offer(late.clone().into()),
    });
    assert!(
        matches!(out.verdict, Some(Verdict::Reject(_))),
        "{:?}",
        out.verdict
    );
    net.run(2 * INTERVAL_S * 1_000);
    net.assert_agreement(1);
    assert!(net.final_sets[0][&FIRST].iter().all(|o| o.id != late.id));
}

#[test]
fn duplicated_deliveries_change_nothing() {
    let outcome = |duplicate: bool| {
        let mut net = Net::new(5, 7, Faults::default());
        start(&mut net);
        net.random_offers(1);
        if duplicate {
            // Deliver every queued message a second time, 1 ms later.
            let copies: Vec<(QueueKey, Queued)> = net
                .queue
                .iter()
                .map(|((at, seq), m)| ((at + 1, seq + 1_000_000), m.clone()))
                .collect();
            net.queue.extend(copies);
        }
        net.run(2 * INTERVAL_S * 1_000);
        net.assert_agreement(1);
        let f = &net.finals[0][&FIRST];
        (f.set_root, f.result.result_hash)
    };
    assert_eq!(outcome(false), outcome(true));
}

/// Two nodes of a market of seven, started: alone they can never reach a
/// quorum.
fn two_of_seven() -> Net {
    let mut net = Net::new(7, 8, Faults::default());
    net.nodes.truncate(2);
    net.finals.truncate(2);
    start(&mut net);
    net
}

/// A peer that keeps reconnecting to a node whose interval can never find
/// a quorum renews its asks twice ([`MAX_ASK_RENEWALS`]), then no more.
#[test]
fn a_flapping_peer_renews_the_asks_a_bounded_number_of_times() {
    let mut net = two_of_seven();
    net.random_offers(1);
    // Past the window (5 s) and the first asks (five, 2 s apart).
    let gate_ms = (INTERVAL_S - 10) * 1_000;
    net.run(gate_ms + 20_000);
    assert!(!net.finals[0].contains_key(&FIRST));
    let gone = ParticipantId(key(5).verifying_key().to_bytes());
    let asks_first = |out: &Output| {
        out.actions.iter().any(|a| {
            matches!(a, Action::Send { message: Message::Pending(p), .. }
                if p.attestation.interval == FIRST)
        })
    };
    let mut now = net.start_ms + gate_ms + 20_000;
    let mut rounds = Vec::new();
    // Three flaps, 10 s apart: all before the next gate closure (60 s on),
    // whose asks to every peer are another matter.
    for _ in 0..3 {
        net.nodes[0].handle(Input::PeerDown(gone));
        let up = net.nodes[0].handle(Input::PeerUp(gone));
        assert!(asks_first(&up), "the reconnected peer is asked at once");
        let mut asked = 0;
        for _ in 0..5 {
            now += 2_000;
            if asks_first(&net.nodes[0].handle(Input::Tick { now_ms: now })) {
                asked += 1;
            }
        }
        rounds.push(asked);
    }
    assert_eq!(rounds, [MAX_ASKS, MAX_ASKS, 0]);
}

#[test]
fn state_stays_bounded_when_no_quorum_forms() {
    let mut net = two_of_seven();
    net.run(40 * INTERVAL_S * 1_000);
    assert!(
        net.finals.iter().all(BTreeMap::is_empty),
        "finalized without a quorum"
    );
    for node in &net.nodes {
        assert!(
            node.intervals.len() as u64 <= MAX_PENDING_INTERVALS + 1,
            "{} intervals kept",
            node.intervals.len()
        );
    }
}

#[test]
fn encoded_len_counts_what_encode_writes() {
    let offer = forge(1, FIRST, Side::Bid, 700, 99);
    let messages = [
        Message::Offer(offer.clone().into()),
        Message::Offers {
            interval: FIRST,
            offers: vec![offer.clone().into(), offer.into()],
        },
        Message::FetchSet {
            interval: FIRST,
            set_root: [7; 32],
        },
    ];
    for message in messages {
        assert_eq!(message.encoded_len(), message.encode().len());
    }
}

#[test]
fn a_node_has_nothing_due_right_after_a_tick() {
    let mut net = Net::new(4, 9, Faults::default());
    start(&mut net);
    net.random_offers(1);
    // Step through the gate closure and the window: after each tick, the
    // next wake-up lies in the future, and ticking between wake-ups does
    // nothing at all.
    let gate_ms = rules().clock.gate_closure_s(FIRST) * 1_000;
    for at in (gate_ms - 2_000..gate_ms + 12_000).step_by(250) {
        let node = &mut net.nodes[0];
        let out = node.handle(Input::Tick { now_ms: at });
        let next = node.next_wakeup_ms().expect("ticked");
        assert!(next > at, "wake-up {next} not after {at}");
        if at + 1 < next {
            assert!(
                !node.advance_clock(at + 1),
                "nothing due before the wake-up"
            );
            let idle = node.handle(Input::Tick { now_ms: at + 1 });
            assert!(idle.actions.is_empty(), "a tick before the wake-up acted");
        }
        let clock = node.now_ms.max(next);
        assert!(node.advance_clock(next), "the wake-up is due at its time");
        assert_eq!(node.now_ms, clock, "the clock moved to the wake-up");
        drop(out);
    }
}

/// What `participant` bought and sold in `result`.
fn traded(result: &IntervalResult, participant: ParticipantId) -> (u64, u64) {
    let sum = |f: &dyn Fn(&crate::clearing::Trade<OfferId, ParticipantId>) -> bool| {
        result
            .trades
            .iter()
            .filter(|t| f(t))
            .map(|t| t.energy_wh)
            .sum()
    };
    (
        sum(&|t| t.buyer == participant),
        sum(&|t| t.seller == participant),
    )
}

/// Node `i` reports its meter for FIRST: exactly what it traded.
fn report_as_traded(net: &mut Net, i: usize) {
    let result = net.finals[i][&FIRST].result.clone();
    let (import_wh, export_wh) = traded(&result, net.nodes[i].id());
    let now = net.nodes[i].now_ms;
    let out = net.nodes[i].handle(Input::MeterReport {
        interval: FIRST,
        import_wh,
        export_wh,
    });
    assert_eq!(out.verdict, Some(Verdict::Accept));
    net.apply(now, i, out);
}

/// Six nodes with random offers for FIRST, run past the end of its delivery
/// (two intervals after the start): the net and FIRST's final result.
fn past_first_delivery(seed: u64) -> (Net, Arc<IntervalResult>) {
    let mut net = Net::new(6, seed, Faults::default());
    start(&mut net);
    net.random_offers(1);
    net.run(2 * INTERVAL_S * 1_000 + 500);
    net.assert_agreement(1);
    let result = net.finals[0][&FIRST].result.clone();
    (net, result)
}

/// A node missing reports asks a few peers for all of them, and the
/// missing traders each for its own only (asked for all, every trader sent
/// back what the peers were sending anyway).
#[test]
fn missing_traders_are_asked_for_their_own_report_only() {
    let (mut net, result) = past_first_delivery(21);
    // Every node signs its report, but none is delivered: node 0 misses
    // every other trader's.
    for i in 0..6 {
        let (import_wh, export_wh) = traded(&result, net.nodes[i].id());
        let out = net.nodes[i].handle(Input::MeterReport {
            interval: FIRST,
            import_wh,
            export_wh,
        });
        assert_eq!(out.verdict, Some(Verdict::Accept));
    }
    let me = net.nodes[0].id();
    let missing: BTreeSet<ParticipantId> = result
        .trades
        .iter()
        .flat_map(|t| [t.buyer, t.seller])
        .filter(|p| *p != me)
        .collect();
    assert!(missing.len() >= 3, "the seed should give several traders");
    let end_ms = net.nodes[0].end_ms(FIRST);
    let out = net.nodes[0].handle(Input::Tick {
        now_ms: end_ms + REPORT_ASK_MS,
    });
    let mut partners = BTreeSet::new();
    let mut traders = BTreeSet::new();
    for action in &out.actions {
        let Action::Send {
            to,
            message:
                Message::WantReports {
                    interval,
                    participants,
                },
        } = action
        else {
            continue;
        };
        assert_eq!(*interval, FIRST);
        let asked: BTreeSet<ParticipantId> = participants.iter().copied().collect();
        if asked == missing {
            partners.insert(*to);
        } else {
            assert_eq!(participants, &vec![*to], "a trader is asked for its own");
            traders.insert(*to);
        }
    }
    assert_eq!(
        partners.len(),
        2,
        "reconcile_fanout peers get the whole list"
    );
    let expected: BTreeSet<ParticipantId> = missing.difference(&partners).copied().collect();
    assert_eq!(
        traders, expected,
        "every other missing trader is asked once"
    );
}

#[test]
fn every_node_settles_the_traders_alike_from_their_reports() {
    let (mut net, result) = past_first_delivery(21);
    assert!(!result.trades.is_empty(), "the seed should give trades");
    // Node 5 never reports.
    for i in 0..5 {
        report_as_traded(&mut net, i);
    }
    net.run(2 * INTERVAL_S * 1_000 + SETTLE_AFTER_MS + 2_000);
    let silent = net.nodes[5].id();
    let silent_traded = traded(&result, silent) != (0, 0);
    let first = &net.settled[0][&FIRST];
    for (node, settled) in net.settled.iter().enumerate() {
        let s = settled
            .get(&FIRST)
            .unwrap_or_else(|| panic!("node {node} did not settle"));
        assert_eq!(
            s.settlement, first.settlement,
            "node {node} settled otherwise"
        );
        assert_eq!(s.missing, if silent_traded { vec![silent] } else { vec![] });
    }
    for p in &first.settlement.participants {
        if p.participant != silent {
            // Delivered exactly what it traded: nothing against the grid.
            assert_eq!((p.grid_import_wh, p.grid_export_wh), (0, 0));
        } else {
            // No report: settled as if its meter measured nothing.
            assert_eq!((p.import_wh, p.export_wh), (0, 0));
        }
    }
}

#[test]
fn only_traders_gossip_their_meter_reports() {
    let (mut net, result) = past_first_delivery(21);
    let mut seen = (0, 0);
    for i in 0..net.nodes.len() {
        let trader = traded(&result, net.nodes[i].id()) != (0, 0);
        let out = net.nodes[i].handle(Input::MeterReport {
            interval: FIRST,
            import_wh: 100,
            export_wh: 0,
        });
        // Held either way (a peer may still ask a non-trader for it) ...
        assert_eq!(out.verdict, Some(Verdict::Accept));
        // ... but gossiped only by traders: settlement reads nobody else's.
        let published = out
            .actions
            .iter()
            .any(|a| matches!(a, Action::Publish(Message::MeterReport(_))));
        assert_eq!(published, trader, "node {i} (trader: {trader})");
        if trader {
            seen.0 += 1;
        } else {
            seen.1 += 1;
        }
    }
    assert!(
        seen.0 > 0 && seen.1 > 0,
        "the seed should give traders and non-traders: {seen:?}"
    );
}

#[test]
fn two_different_meter_reports_void_the_reporter() {
    let mut net = Net::new(4, 22, Faults::default());
    start(&mut net);
    net.random_offers(1);
    net.run(2 * INTERVAL_S * 1_000 + 500);
    let report = |energy_wh: u64| {
        Arc::new(
            MeterReport {
                chain_id: CHAIN_ID_VOLTA,
                market: MarketId::from_name("node-tests"),
                interval: FIRST,
                participant: ParticipantId(key(3).verifying_key().to_bytes()),
                import_wh: energy_wh,
                export_wh: 0,
            }
            .sign(&key(3)),
        )
    };
    let from = net.nodes[3].id();
    let mut send = |message: Message| {
        net.nodes[0]
            .handle(Input::Message { from, message })
            .verdict
    };
    assert_eq!(
        send(Message::MeterReport(report(100))),
        Some(Verdict::Accept)
    );
    assert_eq!(
        send(Message::MeterReport(report(100))),
        Some(Verdict::Ignore)
    );
    assert!(matches!(
        send(Message::MeterReport(report(200))),
        Some(Verdict::Reject(_))
    ));
    // A report beyond what a connection can carry is refused.
    assert!(matches!(
        send(Message::MeterReport(report(
            rules().max_offer_energy_wh + 1
        ))),
        Some(Verdict::Reject(_))
    ));
    // Either order ends the same way: no usable report from node 3.
    assert_eq!(
        send(Message::MeterReport(report(100))),
        Some(Verdict::Ignore)
    );
    let mut forged = (*report(100)).clone();
    forged.signature[0] ^= 1;
    let from = net.nodes[2].id();
    let out = net.nodes[1].handle(Input::Message {
        from,
        message: Message::MeterReport(Arc::new(forged)),
    });
    assert!(matches!(out.verdict, Some(Verdict::Reject(_))));
}

/// Node 6 is down (cut off) for three intervals, then comes back as a fresh
/// node with the same key, as a restarted daemon does, and catches up.
fn restart_after_missing_three(seed: u64) -> Net {
    let cut = Faults {
        offer_loss_pct: 0,
        cut: Some((BTreeSet::from([6]), 0, 4 * INTERVAL_S * 1_000)),
        ..Faults::default()
    };
    let mut net = Net::new(7, seed, cut);
    start(&mut net);
    net.random_offers(3);
    net.run(4 * INTERVAL_S * 1_000);
    assert!(net.finals[6].is_empty(), "a cut-off node cannot finalize");
    let config = (*net.nodes[6].config).clone();
    let mut fresh = Node::new(config, key(6));
    let now = net.nodes[0].now_ms;
    fresh.handle(Input::Tick { now_ms: now });
    let ids: Vec<ParticipantId> = net.nodes.iter().map(Node::id).collect();
    for id in ids {
        fresh.handle(Input::PeerUp(id));
    }
    net.nodes[6] = fresh;
    net
}

#[test]
fn a_restarted_node_catches_up_the_intervals_it_missed() {
    let mut net = restart_after_missing_three(21);
    let now = net.nodes[6].now_ms;
    let out = net.nodes[6].handle(Input::CatchUp { from: FIRST });
    assert!(
        out.actions.iter().all(|a| matches!(
            a,
            Action::Send {
                message: Message::WantFinal { .. },
                ..
            }
        )) && !out.actions.is_empty(),
        "a catch-up starts by asking peers: {out:?}"
    );
    net.apply(now, 6, out);
    net.run(5 * INTERVAL_S * 1_000);
    net.assert_agreement(3);
    for k in 0..3 {
        let interval = IntervalIndex(FIRST.0 + k);
        let f = &net.finals[6][&interval];
        assert!(f.caught_up && f.fetched, "{interval:?} was not caught up");
        assert_eq!(net.final_ids(6, interval), net.final_ids(0, interval));
        // It took no part: no attestation of its own for the missed interval.
        assert!(!net.nodes[0].intervals.get(&interval).is_some_and(|s| {
            s.attestations
                .iter()
                .any(|(_, a)| a.attestation.attester == net.nodes[6].id())
        }));
    }
    // Caught-up intervals are not settled by the node that missed their reports.
    assert!((0..3).all(|k| !net.settled[6].contains_key(&IntervalIndex(FIRST.0 + k))));
    assert_eq!(net.nodes[6].catch_up_progress(), (0, 0));
}

#[test]
fn a_lone_member_cannot_feed_a_catching_up_node_a_history() {
    let mut net = restart_after_missing_three(22);
    let liar = 1;
    let missed = net.nodes[6].next_close.expect("ticked").0 - FIRST.0;
    // Nobody else answers: the node's asks go nowhere.
    let out = net.nodes[6].handle(Input::CatchUp { from: FIRST });
    assert!(!out.actions.is_empty());
    // One member attests an empty set for FIRST and offers to serve it.
    let empty = OfferPool::new();
    let (set_root, result) = net.nodes[liar].clear_pool(&empty, FIRST);
    let forged = Attestation {
        chain_id: CHAIN_ID_VOLTA,
        market: rules().market_id,
        interval: FIRST,
        set_root,
        result_root: result.result_hash,
        attester: net.nodes[liar].id(),
    }
    .sign(&key(liar));
    let message = Message::Attestations {
        interval: FIRST,
        attestations: vec![Arc::new(forged)],
    };
    deliver(&mut net, liar, &[6], &message);
    assert!(net.finals[6].is_empty(), "one attestation made a quorum");
    // A set sent unasked is ignored.
    for chunk in set_chunks(FIRST, set_root, &[]) {
        deliver(&mut net, liar, &[6], &chunk);
    }
    assert!(net.finals[6].is_empty(), "an unasked set was adopted");
    // With nobody answering, the node gives up in bounded time and keeps
    // nothing of the missed intervals.
    net.queue.clear();
    let give_up = net.nodes[6].now_ms + CATCH_UP_PATIENCE_MS * 4;
    for at in (net.nodes[6].now_ms..=give_up).step_by(1_000) {
        let out = net.nodes[6].handle(Input::Tick { now_ms: at });
        assert!(
            out.actions
                .iter()
                .all(|a| !matches!(a, Action::Finalized(_)))
        );
    }
    assert!(missed >= 3);
    assert_eq!(net.nodes[6].catch_up_progress(), (0, missed));
    assert!(net.finals[6].is_empty());
}

/// A verifier that remembers allocations, as the simulator's does, and
/// counts the signatures it checks.
#[derive(Debug, Default)]
struct Recalling {
    checked: std::sync::Mutex<usize>,
    known: std::sync::Mutex<Vec<(SharedMessage, bool)>>,
}

impl SignatureVerifier for Recalling {
    fn verify(&self, items: &[crate::verify::SignatureItem<'_>]) -> Vec<bool> {
        *self.checked.lock().unwrap() += items.len();
        Ed25519Verifier::default().verify(items)
    }

    fn key(
        &self,
        participant: &ParticipantId,
    ) -> Result<ed25519_dalek::VerifyingKey, crate::offer::SignatureError> {
        crate::offer::participant_key(participant)
    }

    fn recall(&self, message: Allocation) -> Option<bool> {
        let known = self.known.lock().unwrap();
        known
            .iter()
            .find(|(held, _)| Allocation::of(held) == message)
            .map(|(_, valid)| *valid)
    }

    fn remember(&self, message: SharedMessage, valid: bool) {
        self.known.lock().unwrap().push((message, valid));
    }
}

/// What a node signs itself it vouches for: its own offer is not checked
/// again, a shared verifier answers for it, and a forgery is still checked
/// and refused.
#[test]
fn a_node_vouches_for_what_it_signs_and_forgeries_are_still_checked() {
    let verifier = Arc::new(Recalling::default());
    let config = config(3, 0);
    let shared = Shared::with(&config, verifier.clone(), Arc::new(ClearEveryTime));
    let mut node = Node::with_shared(config, key(0), shared);
    let start_ms = (FIRST.0 - 1) * INTERVAL_S * 1_000;
    node.handle(Input::Tick { now_ms: start_ms });
    let out = node.handle(Input::LocalOffer {
        interval: FIRST,
        side: Side::Ask,
        energy_wh: 500,
        price_micro_per_kwh: 120_000,
    });
    assert_eq!(out.verdict, Some(Verdict::Accept));
    let Some(Action::Publish(Message::Offer(offer))) = out.actions.first() else {
        panic!("the offer is published: {:?}", out.actions);
    };
    assert_eq!(*verifier.checked.lock().unwrap(), 0, "no check of its own");
    assert_eq!(verifier.recall(Allocation::of(offer)), Some(true));
    // Another member's offer with a signature over other bytes.
    let mut forged = forge(1, FIRST, Side::Bid, 700, 1);
    forged.offer.energy_wh = 701;
    let out = node.handle(Input::Message {
        from: ParticipantId(key(1).verifying_key().to_bytes()),
        message: Message::Offer(Arc::new(forged)),
    });
    assert!(
        matches!(out.verdict, Some(Verdict::Reject(_))),
        "{:?}",
        out.verdict
    );
    assert_eq!(*verifier.checked.lock().unwrap(), 1, "a forgery is checked");
}
