//! The market task: the daemon's shell around `protocol::Node`. It owns the
//! node, feeds it the network's messages and the clock's ticks (at
//! `Node::next_wakeup_ms`, and every second for the agent and meter),
//! carries out its actions, and persists through the storage crate:
//!
//! - a local offer is written and flushed before the API acknowledges it;
//! - a final interval's offer set and result are written and flushed when it
//!   becomes final, its settlement when it is settled (one flush each: an SD
//!   card is written a few times per interval, and not at all when nothing
//!   happens);
//! - after a restart, this node's own offers for intervals still open are
//!   read back, given to the node again (so it never reuses a sequence
//!   number) and published again.
//!
//! The API reaches it through a bounded channel of [`Request`]s with
//! one-shot replies; reads of history go to the store directly. It never
//! waits on the network task (which waits on it when its event channel is
//! full): commands that do not fit are dropped and counted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use dharti_protocol::agent::{self, AgentSettings, Battery, IntervalForecast, Plan};
use dharti_protocol::node::{
    Action, Input, Message, Node, NodeConfig, SignedAttestation, Verdict, attestation_messages,
    set_chunks,
};
use dharti_protocol::offer::SignedOffer;
use dharti_protocol::pricing::{IntervalSummary, PricingConfig, indicative_price};
use dharti_protocol::types::{IntervalIndex, OfferId, ParticipantId, Side};
use dharti_storage::{FinalityProof, Store, WriteBatch};
use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::identity::{Identity, peer_id_of};
use crate::meter::Meter;
use crate::metrics::Metrics;
use crate::network::{Command, Event};

/// Requests from the API; bounded like every channel here.
pub const REQUEST_CAPACITY: usize = 64;
/// The agent plans an interval this long before its gate closes (at most
/// half an interval), after the previous result is known.
const PLAN_LEAD_MS: u64 = 120_000;
/// Final intervals remembered in memory for `status` and the indicative price.
const RECENT_INTERVALS: usize = 96;

#[derive(Debug)]
pub enum Request {
    Status(oneshot::Sender<Status>),
    Market(oneshot::Sender<MarketView>),
    Offers(oneshot::Sender<Vec<OfferView>>),
    Submit {
        interval: Option<u64>,
        side: Side,
        energy_wh: u64,
        price_micro_per_kwh: u64,
        reply: oneshot::Sender<Result<OfferView, String>>,
    },
    /// When this node first accepted recent gossiped offers (for measuring
    /// propagation): offer id and unix milliseconds.
    Arrivals(oneshot::Sender<Vec<Arrival>>),
    /// A snapshot of the history, taken between two writes (the market task
    /// is the store's only writer), so it is consistent.
    Snapshot(oneshot::Sender<Result<Vec<u8>, String>>),
    /// Writes small named records (the anchoring task's queue) durably.
    PutMeta {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    pub peer_id: String,
    pub did: String,
    pub participant: String,
    pub market: String,
    pub market_id: String,
    pub connected_peers: usize,
    pub member_peers: usize,
    pub members: usize,
    pub current_interval: u64,
    pub next_gate_interval: Option<u64>,
    pub last_final_interval: Option<u64>,
    pub last_result_hash: Option<String>,
    pub now_ms: u64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct MarketView {
    pub market: String,
    pub interval_s: u64,
    pub gate_lead_s: u64,
    /// Intervals that accept offers now.
    pub open_intervals: Vec<u64>,
    pub indicative_price_micro_per_kwh: u64,
    pub feed_in_micro_per_kwh: u64,
    pub retail_micro_per_kwh: u64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Arrival {
    pub offer_id: String,
    pub at_ms: u64,
}

/// Arrivals remembered (a ring): enough for a benchmark's few intervals.
const MAX_ARRIVALS: usize = 16_384;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct OfferView {
    pub id: String,
    pub interval: u64,
    pub side: String,
    pub energy_wh: u64,
    pub price_micro_per_kwh: u64,
    pub sequence: u64,
}

impl OfferView {
    pub fn of(offer: &SignedOffer) -> OfferView {
        let o = &offer.offer;
        OfferView {
            id: offer.id.to_string(),
            interval: o.interval.0,
            side: match o.side {
                Side::Bid => "bid".into(),
                Side::Ask => "ask".into(),
            },
            energy_wh: o.energy_wh,
            price_micro_per_kwh: o.price_micro_per_kwh,
            sequence: o.sequence,
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the agent planned for an interval, to run the battery when the
/// result is known.
#[derive(Clone, Debug)]
struct Planned {
    plan: Plan,
    net_wh: i64,
    /// What the battery did once the result was known.
    dispatched: Option<agent::Dispatch>,
}

pub struct Driver {
    node: Node,
    config: NodeConfig,
    identity: Identity,
    market_name: String,
    store: Arc<Store>,
    net: mpsc::Sender<Command>,
    metrics: Metrics,
    meter: Meter,
    agent: Option<AgentSettings>,
    /// The anchoring task, when the node anchors settlements on a chain:
    /// it judges the chain topic's gossip.
    anchor: Option<mpsc::Sender<crate::anchor::Gossip>>,
    soc_wh: u64,
    planned: BTreeMap<IntervalIndex, Planned>,
    reported: BTreeSet<IntervalIndex>,
    /// Members' peer ids, to name the sender of a message.
    members_by_peer: HashMap<PeerId, ParticipantId>,
    peer_of: HashMap<ParticipantId, PeerId>,
    connected: HashSet<PeerId>,
    own_offers: BTreeMap<(IntervalIndex, Side), Arc<SignedOffer>>,
    recent: VecDeque<IntervalSummary>,
    last_final: Option<(IntervalIndex, [u8; 32])>,
    /// Offer id and unix ms; formatted only when asked for.
    arrivals: VecDeque<(OfferId, u64)>,
    /// Missed intervals the node had given up when last looked at.
    abandoned: u64,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("participant", &self.identity.participant)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Hands the chain topic's gossip to the anchoring task.
    pub fn with_anchor(mut self, anchor: mpsc::Sender<crate::anchor::Gossip>) -> Driver {
        self.anchor = Some(anchor);
        self
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: NodeConfig,
        identity: Identity,
        market_name: String,
        store: Arc<Store>,
        net: mpsc::Sender<Command>,
        metrics: Metrics,
        meter: Meter,
        agent: Option<AgentSettings>,
    ) -> Driver {
        let node = Node::new(config.clone(), identity.signing.clone());
        let mut members_by_peer = HashMap::new();
        let mut peer_of = HashMap::new();
        for member in &config.members {
            if let Some(peer) = peer_id_of(member) {
                members_by_peer.insert(peer, *member);
                peer_of.insert(*member, peer);
            }
        }
        let soc_wh = agent
            .as_ref()
            .and_then(|a| a.battery)
            .map_or(0, |b| b.capacity_wh / 2);
        Driver {
            node,
            config,
            identity,
            market_name,
            store,
            net,
            metrics,
            meter,
            agent,
            anchor: None,
            soc_wh,
            planned: BTreeMap::new(),
            reported: BTreeSet::new(),
            members_by_peer,
            peer_of,
            connected: HashSet::new(),
            own_offers: BTreeMap::new(),
            recent: VecDeque::new(),
            last_final: None,
            arrivals: VecDeque::new(),
            abandoned: 0,
        }
    }

    /// Agent settings from the config's `[agent]` section (whose sizes the
    /// config check keeps non-negative and small: whole Wh fit).
    #[allow(clippy::cast_possible_truncation)]
    pub fn agent_settings(config: &crate::config::Config) -> Option<AgentSettings> {
        let a = &config.agent;
        if !a.enabled {
            return None;
        }
        let battery = (a.battery_kwh > 0.0).then(|| {
            let capacity_wh = (a.battery_kwh * 1_000.0).round() as u64;
            let power_w = if a.battery_power_kw > 0.0 {
                (a.battery_power_kw * 1_000.0).round() as u64
            } else {
                capacity_wh / 2
            };
            Battery {
                capacity_wh,
                max_power_w: power_w,
                min_soc_wh: (a.battery_min_soc * capacity_wh as f64).round() as u64,
                efficiency_ppm: 900_000,
            }
        });
        Some(AgentSettings {
            min_sell_price_micro_per_kwh: a.min_sell_price_micro_per_kwh,
            max_buy_price_micro_per_kwh: a.max_buy_price_micro_per_kwh,
            battery,
            ..AgentSettings::default()
        })
    }

    fn market_id(&self) -> dharti_protocol::types::MarketId {
        self.config.rules.market_id
    }

    /// Reads back this node's own offers for intervals still open and hands
    /// them to the node again; returns how many.
    async fn restore(&mut self, now_ms: u64) -> anyhow::Result<usize> {
        let clock = self.config.rules.clock;
        let first = clock.next_open(now_ms / 1_000);
        let mut restored = 0;
        for k in first.0..first.0 + self.config.rules.max_intervals_ahead + 1 {
            let interval = IntervalIndex(k);
            let offers = self
                .store
                .offers(&self.market_id(), interval)
                .context("reading own offers back")?;
            for offer in offers {
                if offer.offer.participant != self.identity.participant {
                    continue;
                }
                let offer = Arc::new(offer);
                let out = self.node.handle(Input::Message {
                    from: self.identity.participant,
                    message: Message::Offer(offer.clone()),
                });
                if out.verdict == Some(Verdict::Accept) {
                    self.remember_own(&offer);
                    self.publish(&Message::Offer(offer));
                    restored += 1;
                }
            }
        }
        Ok(restored)
    }

    fn remember_own(&mut self, offer: &Arc<SignedOffer>) {
        let key = (offer.offer.interval, offer.offer.side);
        let newer = self
            .own_offers
            .get(&key)
            .is_none_or(|held| held.offer.sequence < offer.offer.sequence);
        if newer {
            self.own_offers.insert(key, offer.clone());
        }
    }

    /// Runs until `shutdown`; the store is flushed on the way out.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut requests: mpsc::Receiver<Request>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let start = now_ms();
        let out = self.node.handle(Input::Tick { now_ms: start });
        self.carry_out(out.actions).await;
        match self.restore(start).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(offers = n, "driver.restore"),
            Err(e) => {
                self.metrics.storage_errors.inc();
                tracing::error!("driver.restore: {e:#}");
            }
        }
        // History ends at the last stored result: ask peers for the rest
        // (a fresh node starts its history now).
        match self.store.last_result_interval(&self.market_id()) {
            Ok(Some(last)) => {
                let from = IntervalIndex(last.0 + 1);
                let out = self.node.handle(Input::CatchUp { from });
                let (pending, _) = self.node.catch_up_progress();
                if pending > 0 {
                    tracing::info!(from = from.0, intervals = pending, "driver.catch_up");
                }
                self.carry_out(out.actions).await;
            }
            Ok(None) => {}
            Err(e) => {
                self.metrics.storage_errors.inc();
                tracing::error!("driver.catch_up: {e:#}");
            }
        }
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut api_open = true;
        loop {
            let wake = self
                .node
                .next_wakeup_ms()
                .map_or(Duration::from_secs(1), |at| {
                    Duration::from_millis(at.saturating_sub(now_ms()))
                });
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => self.on_network(event).await,
                    None => break,
                },
                request = requests.recv(), if api_open => match request {
                    Some(request) => self.on_request(request).await,
                    // The API is gone; go on serving the market without it.
                    None => api_open = false,
                },
                () = tokio::time::sleep(wake) => self.tick().await,
                _ = second.tick() => {
                    self.tick().await;
                    self.agent_and_meter().await;
                }
            }
        }
        self.store.flush().context("flushing storage at shutdown")?;
        Ok(())
    }

    async fn tick(&mut self) {
        let out = self.node.handle(Input::Tick { now_ms: now_ms() });
        self.carry_out(out.actions).await;
        let (_, abandoned) = self.node.catch_up_progress();
        if abandoned > self.abandoned {
            tracing::warn!(
                intervals = abandoned - self.abandoned,
                "driver.catch_up: gave up missed intervals (no usable proof from peers)"
            );
            self.metrics
                .catch_up_abandoned
                .inc_by(abandoned - self.abandoned);
            self.abandoned = abandoned;
        }
    }

    async fn on_network(&mut self, event: Event) {
        match event {
            Event::Gossip {
                id,
                source,
                data,
                chain: true,
            } => {
                // Approvals go to the anchoring task, which gives the verdict.
                let forwarded = self.anchor.as_ref().is_some_and(|anchor| {
                    anchor
                        .try_send(crate::anchor::Gossip {
                            id: id.clone(),
                            source,
                            data,
                        })
                        .is_ok()
                });
                if !forwarded {
                    self.to_network(Command::Validated {
                        id,
                        source,
                        acceptance: MessageAcceptance::Ignore,
                    });
                }
            }
            Event::Gossip {
                id, source, data, ..
            } => {
                let acceptance = match self.judge(source, &data).await {
                    Verdict::Accept => MessageAcceptance::Accept,
                    Verdict::Ignore => MessageAcceptance::Ignore,
                    Verdict::Reject(_) => MessageAcceptance::Reject,
                };
                self.to_network(Command::Validated {
                    id,
                    source,
                    acceptance,
                });
            }
            Event::Direct { peer, data } => {
                self.judge(peer, &data).await;
            }
            Event::PeerUp(peer) => {
                self.connected.insert(peer);
                if let Some(member) = self.members_by_peer.get(&peer).copied() {
                    // A (re)connected peer is asked at once for any quorum
                    // the node still waits for.
                    let out = self.node.handle(Input::PeerUp(member));
                    self.carry_out(out.actions).await;
                }
            }
            Event::PeerDown(peer) => {
                self.connected.remove(&peer);
                if let Some(member) = self.members_by_peer.get(&peer).copied() {
                    let out = self.node.handle(Input::PeerDown(member));
                    self.carry_out(out.actions).await;
                }
            }
        }
    }

    /// Decodes and hands a message to the node; counts the verdict.
    async fn judge(&mut self, peer: PeerId, data: &[u8]) -> Verdict {
        let verdict = match Message::decode(data) {
            Err(e) => {
                self.metrics.malformed.inc();
                Verdict::Reject(format!("malformed message: {e}"))
            }
            Ok(message) => {
                // A peer outside the member list gets the node's own
                // rejection (it checks membership first).
                let from = self.members_by_peer.get(&peer).copied().unwrap_or_default();
                let out = self.node.handle(Input::Tick { now_ms: now_ms() });
                self.carry_out(out.actions).await;
                let offer_id = match &message {
                    Message::Offer(o) if o.offer.participant != self.identity.participant => {
                        Some(o.id)
                    }
                    _ => None,
                };
                let from_storage = match &message {
                    Message::WantFinal { interval } => Some((*interval, None)),
                    Message::FetchSet { interval, set_root } => Some((*interval, Some(*set_root))),
                    _ => None,
                };
                let out = self.node.handle(Input::Message { from, message });
                self.carry_out(out.actions).await;
                let mut verdict = out.verdict.unwrap_or(Verdict::Ignore);
                // An ask for a final interval the node no longer holds in
                // memory is answered from storage.
                if let (Verdict::Ignore, Some((interval, set_root))) = (&verdict, from_storage)
                    && self.node.final_attestations(interval).is_none()
                    && self.serve_from_storage(peer, interval, set_root)
                {
                    verdict = Verdict::Accept;
                }
                if let (Some(id), Verdict::Accept) = (offer_id, &verdict) {
                    if self.arrivals.len() >= MAX_ARRIVALS {
                        self.arrivals.pop_front();
                    }
                    self.arrivals.push_back((id, now_ms()));
                }
                verdict
            }
        };
        match &verdict {
            Verdict::Accept => self.metrics.verdict("accept"),
            Verdict::Ignore => self.metrics.verdict("ignore"),
            Verdict::Reject(reason) => {
                self.metrics.verdict("reject");
                tracing::debug!(%peer, %reason, "driver.reject");
            }
        }
        verdict
    }

    /// Sends a peer that missed `interval` the stored proof (no
    /// `set_root`) or the stored final set (its root); whether it did.
    fn serve_from_storage(
        &self,
        peer: PeerId,
        interval: IntervalIndex,
        set_root: Option<dharti_protocol::hash::Hash32>,
    ) -> bool {
        let market = self.market_id();
        // The proof alone answers `WantFinal`; only `FetchSet` reads offers.
        let read = match set_root {
            None => self.store.proof(&market, interval).map(|found| {
                found.map(|proof| {
                    let attestations: Vec<Arc<SignedAttestation>> =
                        proof.attestations.into_iter().map(Arc::new).collect();
                    attestation_messages(interval, &attestations)
                })
            }),
            Some(root) => self.store.final_set(&market, interval).map(|found| {
                found
                    .filter(|(proof, _)| proof.set_root == root)
                    .map(|(_, offers)| {
                        let offers: Vec<Arc<SignedOffer>> =
                            offers.into_iter().map(Arc::new).collect();
                        set_chunks(interval, root, &offers)
                    })
            }),
        };
        let messages = match read {
            Ok(Some(messages)) => messages,
            Ok(None) => return false,
            Err(e) => {
                self.metrics.storage_errors.inc();
                tracing::error!(interval = interval.0, "driver.serve: {e:#}");
                return false;
            }
        };
        for message in messages {
            self.to_network(Command::Send {
                peer,
                bytes: message.encode(),
            });
        }
        self.metrics.catch_up_served.inc();
        true
    }

    fn publish(&self, message: &Message) {
        self.to_network(Command::Publish(message.encode()));
    }

    /// Hands a command to the network task without waiting. The network
    /// task waits on us when our event channel is full, so waiting on it
    /// here could deadlock both; a command dropped under overload is
    /// counted and repaired by the protocol (reconciliation, asks again).
    fn to_network(&self, command: Command) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.net.try_send(command) {
            self.metrics.commands_dropped.inc();
        }
    }

    async fn carry_out(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Publish(message) => self.publish(&message),
                Action::Send { to, message } => {
                    if let Some(peer) = self.peer_of.get(&to) {
                        self.to_network(Command::Send {
                            peer: *peer,
                            bytes: message.encode(),
                        });
                    }
                }
                Action::Finalized(f) => {
                    let mut batch = WriteBatch::new();
                    let offers = self.node.final_offers(f.interval).unwrap_or_default();
                    let proof = FinalityProof {
                        set_root: f.set_root,
                        offer_ids: offers.iter().map(|o| o.id).collect(),
                        attestations: self
                            .node
                            .final_attestations(f.interval)
                            .unwrap_or_default()
                            .iter()
                            .map(|a| (**a).clone())
                            .collect(),
                    };
                    for offer in offers {
                        batch.put_offer(self.market_id(), (*offer).clone());
                    }
                    batch.put_result(self.market_id(), f.interval, (*f.result).clone());
                    batch.put_proof(self.market_id(), f.interval, proof);
                    self.write(batch);
                    if f.caught_up {
                        // History only: the node took no part in it, and
                        // the battery and the price have moved on.
                        self.metrics.intervals_caught_up.inc();
                        tracing::info!(
                            interval = f.interval.0,
                            volume_wh = f.result.volume_wh,
                            "driver.caught_up"
                        );
                        continue;
                    }
                    self.metrics.intervals_finalized.inc();
                    self.metrics
                        .last_final_interval
                        .set(i64::try_from(f.interval.0).unwrap_or(i64::MAX));
                    self.last_final = Some((f.interval, f.result.result_hash));
                    let tariff = self.config.rules.tariffs.at(self
                        .config
                        .rules
                        .clock
                        .start_s(f.interval));
                    self.recent.push_back(IntervalSummary {
                        supply_wh: f.result.supply_wh,
                        demand_wh: f.result.demand_wh,
                        clearing_price_micro_per_kwh: f.result.clearing_price_micro_per_kwh,
                        tariff,
                    });
                    while self.recent.len() > RECENT_INTERVALS {
                        self.recent.pop_front();
                    }
                    self.dispatch(f.interval, &f.result);
                    tracing::info!(
                        interval = f.interval.0,
                        volume_wh = f.result.volume_wh,
                        price = ?f.result.clearing_price_micro_per_kwh,
                        finality_ms = f.finality_ms,
                        "driver.final"
                    );
                    // The interval's transient allocations are freed by
                    // now; give their pages back (see `heap`). Off this
                    // thread: a trim can take tens of ms on a busy machine,
                    // and the network shares this thread.
                    tokio::task::spawn_blocking(|| {
                        let took = crate::heap::release_free();
                        tracing::debug!(trim_us = took.as_micros(), "driver.trim");
                    });
                }
                Action::Settled(s) => {
                    let mut batch = WriteBatch::new();
                    batch.put_settlement(self.market_id(), (*s.settlement).clone());
                    self.write(batch);
                    self.metrics.intervals_settled.inc();
                }
            }
        }
    }

    /// Applies and flushes a batch; a failure is counted and logged, and
    /// the daemon goes on (the data is still held in memory by the node).
    fn write(&self, batch: WriteBatch) {
        let result = self
            .store
            .apply(batch)
            .map_err(anyhow::Error::from)
            .and_then(|()| self.store.flush().map(|_| ()).map_err(anyhow::Error::from));
        match result {
            Ok(()) => {
                self.metrics.storage_flushes.inc();
            }
            Err(e) => {
                self.metrics.storage_errors.inc();
                tracing::error!("storage.write: {e:#}");
            }
        }
    }

    /// The battery follows the result; the meter will read what it did.
    fn dispatch(
        &mut self,
        interval: IntervalIndex,
        result: &dharti_protocol::node::IntervalResult,
    ) {
        let (Some(settings), Some(planned)) =
            (self.agent.as_ref(), self.planned.get_mut(&interval))
        else {
            return;
        };
        let me = self.identity.participant;
        let bought: u64 = result
            .trades
            .iter()
            .filter(|t| t.buyer == me)
            .map(|t| t.energy_wh)
            .sum();
        let sold: u64 = result
            .trades
            .iter()
            .filter(|t| t.seller == me)
            .map(|t| t.energy_wh)
            .sum();
        let d = agent::dispatch(
            settings,
            self.soc_wh,
            &planned.plan,
            planned.net_wh,
            bought,
            sold,
        );
        self.soc_wh = d.soc_after_wh;
        planned.dispatched = Some(d);
    }

    /// Plans the next interval when its time comes, and reports the meter
    /// for intervals that have ended.
    async fn agent_and_meter(&mut self) {
        let now = now_ms();
        let clock = self.config.rules.clock;
        let next = clock.next_open(now / 1_000);
        // Own offers are listed for open intervals only: forget the rest.
        self.own_offers.retain(|(interval, _), _| *interval >= next);
        let gate_ms = clock.gate_closure_s(next) * 1_000;
        let lead_ms = PLAN_LEAD_MS.min(clock.interval_s * 1_000 / 2);
        if let Some(settings) = self.agent
            && now + lead_ms >= gate_ms
            && !self.planned.contains_key(&next)
            && let Some(reading) = self.meter.reading(next)
        {
            let tariff = self.config.rules.tariffs.at(clock.start_s(next));
            let price = indicative_price(
                &PricingConfig::default(),
                &tariff,
                self.recent.make_contiguous(),
            );
            let forecast = IntervalForecast {
                net_load_wh: reading.net_wh(),
                indicative_price_micro_per_kwh: price.price_micro_per_kwh,
                tariff,
            };
            let plan = agent::plan(&settings, self.soc_wh, clock.interval_s, &forecast, &[]);
            for (side, order) in [(Side::Bid, plan.bid), (Side::Ask, plan.ask)] {
                if let Some(order) = order
                    && order.energy_wh > 0
                {
                    let _ = self
                        .submit(
                            Some(next.0),
                            side,
                            order.energy_wh,
                            order.price_micro_per_kwh,
                        )
                        .await;
                }
            }
            self.planned.insert(
                next,
                Planned {
                    plan,
                    net_wh: reading.net_wh(),
                    dispatched: None,
                },
            );
            while self.planned.len() > 16 {
                self.planned.pop_first();
            }
        }
        // Intervals that ended: sign and gossip the meter's reading.
        let ended = IntervalIndex(clock.interval_at(now / 1_000).0.saturating_sub(1));
        if !self.reported.contains(&ended)
            && let Some(reading) = self.meter.reading(ended)
        {
            self.reported.insert(ended);
            while self.reported.len() > 16 {
                self.reported.pop_first();
            }
            let dispatched = self.planned.get(&ended).and_then(|p| p.dispatched);
            let (import_wh, export_wh) = match dispatched {
                // The battery's dispatch decided what crossed the meter.
                Some(d) => (d.import_wh, d.export_wh),
                None => (
                    u64::try_from(reading.net_wh().max(0)).unwrap_or(0),
                    reading.net_wh().min(0).unsigned_abs(),
                ),
            };
            let out = self.node.handle(Input::MeterReport {
                interval: ended,
                import_wh,
                export_wh,
            });
            self.carry_out(out.actions).await;
        }
    }

    async fn submit(
        &mut self,
        interval: Option<u64>,
        side: Side,
        energy_wh: u64,
        price_micro_per_kwh: u64,
    ) -> Result<OfferView, String> {
        let now = now_ms();
        let out = self.node.handle(Input::Tick { now_ms: now });
        self.carry_out(out.actions).await;
        let clock = self.config.rules.clock;
        let interval = IntervalIndex(interval.unwrap_or_else(|| clock.next_open(now / 1_000).0));
        let out = self.node.handle(Input::LocalOffer {
            interval,
            side,
            energy_wh,
            price_micro_per_kwh,
        });
        let offer = out.actions.iter().find_map(|a| match a {
            Action::Publish(Message::Offer(o)) => Some(o.clone()),
            _ => None,
        });
        match (out.verdict.clone(), offer) {
            (Some(Verdict::Accept), Some(offer)) => {
                // Durable before it is acknowledged (and before it is gossiped).
                let mut batch = WriteBatch::new();
                batch.put_offer(self.market_id(), (*offer).clone());
                self.write(batch);
                self.remember_own(&offer);
                self.carry_out(out.actions).await;
                self.metrics.offers_submitted.inc();
                tracing::info!(
                    interval = interval.0,
                    side = ?side,
                    energy_wh,
                    price_micro_per_kwh,
                    "driver.offer"
                );
                Ok(OfferView::of(&offer))
            }
            (verdict, _) => {
                self.metrics.offers_refused.inc();
                tracing::warn!(interval = interval.0, ?verdict, "driver.offer refused");
                Err(match verdict {
                    Some(Verdict::Reject(reason)) => reason,
                    _ => "the node ignored the offer (a duplicate?)".into(),
                })
            }
        }
    }

    async fn on_request(&mut self, request: Request) {
        match request {
            Request::Status(reply) => {
                let now = now_ms();
                let clock = self.config.rules.clock;
                let member_peers = self
                    .connected
                    .iter()
                    .filter(|p| self.members_by_peer.contains_key(p))
                    .count();
                let _ = reply.send(Status {
                    peer_id: self.identity.peer_id.to_string(),
                    did: self.identity.did(),
                    participant: self.identity.participant.to_string(),
                    market: self.market_name.clone(),
                    market_id: self.market_id().to_string(),
                    connected_peers: self.connected.len(),
                    member_peers,
                    members: self.config.members.len(),
                    current_interval: clock.interval_at(now / 1_000).0,
                    next_gate_interval: Some(clock.next_open(now / 1_000).0),
                    last_final_interval: self.last_final.map(|(i, _)| i.0),
                    last_result_hash: self.last_final.map(|(_, h)| hex::encode(h)),
                    now_ms: now,
                });
            }
            Request::Market(reply) => {
                let now = now_ms();
                let clock = self.config.rules.clock;
                let next = clock.next_open(now / 1_000);
                let tariff = self.config.rules.tariffs.at(clock.start_s(next));
                let price = indicative_price(
                    &PricingConfig::default(),
                    &tariff,
                    self.recent.make_contiguous(),
                );
                let _ = reply.send(MarketView {
                    market: self.market_name.clone(),
                    interval_s: clock.interval_s,
                    gate_lead_s: clock.gate_lead_s,
                    // Open: gate not closed, and at most `max_intervals_ahead`
                    // past the interval being delivered (offer validation's rule).
                    open_intervals: (next.0
                        ..=clock.interval_at(now / 1_000).0
                            + self.config.rules.max_intervals_ahead)
                        .collect(),
                    indicative_price_micro_per_kwh: price.price_micro_per_kwh,
                    feed_in_micro_per_kwh: tariff.feed_in_micro_per_kwh,
                    retail_micro_per_kwh: tariff.retail_micro_per_kwh,
                });
            }
            Request::Offers(reply) => {
                let next = self.config.rules.clock.next_open(now_ms() / 1_000);
                let _ = reply.send(
                    self.own_offers
                        .range((next, Side::Bid)..)
                        .map(|(_, o)| OfferView::of(o))
                        .collect(),
                );
            }
            Request::Arrivals(reply) => {
                let _ = reply.send(
                    self.arrivals
                        .iter()
                        .map(|(id, at_ms)| Arrival {
                            offer_id: id.to_string(),
                            at_ms: *at_ms,
                        })
                        .collect(),
                );
            }
            Request::PutMeta { entries, reply } => {
                let mut batch = WriteBatch::new();
                for (name, value) in &entries {
                    batch.put_meta(name, value);
                }
                let result = self
                    .store
                    .apply(batch)
                    .map_err(|e| e.to_string())
                    .and_then(|()| self.store.flush().map(|_| ()).map_err(|e| e.to_string()));
                let _ = reply.send(result);
            }
            Request::Snapshot(reply) => {
                let mut bytes = Vec::new();
                let result = self
                    .store
                    .flush()
                    .map_err(|e| e.to_string())
                    .and_then(|_| self.store.export(&mut bytes).map_err(|e| e.to_string()))
                    .map(|_| bytes);
                let _ = reply.send(result);
            }
            Request::Submit {
                interval,
                side,
                energy_wh,
                price_micro_per_kwh,
                reply,
            } => {
                let result = self
                    .submit(interval, side, energy_wh, price_micro_per_kwh)
                    .await;
                let _ = reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use dharti_protocol::node::Attestation;
    use dharti_protocol::offer::Offer;

    use super::*;

    /// A driver of member `a` whose store holds interval 5's final set of
    /// two offers and its proof; the other member is `b`.
    fn driver_with_history(dir: &std::path::Path) -> (Driver, mpsc::Receiver<Command>, Identity) {
        let a = Identity::from_secret([1; 32]).unwrap();
        let b = Identity::from_secret([2; 32]).unwrap();
        let text = crate::config::template(
            "catch-up-tests",
            &[a.participant, b.participant],
            "127.0.0.1:0",
            &[],
        );
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.toml"), text).unwrap();
        let config = crate::config::Config::load(&dir.join("config.toml")).unwrap();
        let node_config = config.node_config().unwrap();
        let rules = &node_config.rules;
        let store = Store::open(dir.join("data")).unwrap();
        let interval = IntervalIndex(5);
        let offers: Vec<SignedOffer> = [(&a, Side::Ask), (&b, Side::Bid)]
            .into_iter()
            .map(|(who, side)| {
                Offer {
                    chain_id: rules.chain_id,
                    market: rules.market_id,
                    interval,
                    side,
                    energy_wh: 500,
                    price_micro_per_kwh: 150_000,
                    participant: who.participant,
                    sequence: 1,
                }
                .sign(&who.signing)
            })
            .collect();
        let attestations = [&a, &b]
            .into_iter()
            .map(|who| {
                Attestation {
                    chain_id: rules.chain_id,
                    market: rules.market_id,
                    interval,
                    set_root: [7; 32],
                    result_root: [8; 32],
                    attester: who.participant,
                }
                .sign(&who.signing)
            })
            .collect();
        let mut batch = WriteBatch::new();
        for offer in &offers {
            batch.put_offer(rules.market_id, offer.clone());
        }
        batch.put_proof(
            rules.market_id,
            interval,
            FinalityProof {
                set_root: [7; 32],
                offer_ids: offers.iter().map(|o| o.id).collect(),
                attestations,
            },
        );
        store.apply(batch).unwrap();
        let (net, commands) = mpsc::channel(64);
        let driver = Driver::new(
            node_config,
            Identity::from_secret([1; 32]).unwrap(),
            "catch-up-tests".into(),
            Arc::new(store),
            net,
            Metrics::default(),
            Meter::None,
            None,
        );
        (driver, commands, b)
    }

    /// What the driver sent `peer` directly, decoded.
    fn sent_to(commands: &mut mpsc::Receiver<Command>, peer: PeerId) -> Vec<Message> {
        let mut sent = Vec::new();
        while let Ok(command) = commands.try_recv() {
            if let Command::Send { peer: to, bytes } = command
                && to == peer
            {
                sent.push(Message::decode(&bytes).unwrap());
            }
        }
        sent
    }

    #[tokio::test]
    async fn a_peer_that_missed_an_old_interval_is_served_from_storage() {
        let dir = std::env::temp_dir().join(format!("dharti-driver-serve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut driver, mut commands, b) = driver_with_history(&dir);
        let out = driver.node.handle(Input::Tick { now_ms: now_ms() });
        driver.carry_out(out.actions).await;
        let interval = IntervalIndex(5);
        let ask = |message: Message| Event::Direct {
            peer: b.peer_id,
            data: message.encode(),
        };
        driver
            .on_network(ask(Message::WantFinal { interval }))
            .await;
        let sent = sent_to(&mut commands, b.peer_id);
        let [Message::Attestations { attestations, .. }] = sent.as_slice() else {
            panic!("expected the stored proof: {sent:?}");
        };
        assert_eq!(attestations.len(), 2);
        driver
            .on_network(ask(Message::FetchSet {
                interval,
                set_root: [7; 32],
            }))
            .await;
        let sent = sent_to(&mut commands, b.peer_id);
        let [Message::SetChunk(chunk)] = sent.as_slice() else {
            panic!("expected the stored set: {sent:?}");
        };
        assert_eq!((chunk.index, chunk.total, chunk.offers.len()), (0, 1, 2));
        // Another root, an interval never stored, or a non-member: nothing.
        driver
            .on_network(ask(Message::FetchSet {
                interval,
                set_root: [9; 32],
            }))
            .await;
        driver
            .on_network(ask(Message::WantFinal {
                interval: IntervalIndex(6),
            }))
            .await;
        assert!(sent_to(&mut commands, b.peer_id).is_empty());
        let stranger = Identity::from_secret([3; 32]).unwrap();
        driver
            .on_network(Event::Direct {
                peer: stranger.peer_id,
                data: Message::WantFinal { interval }.encode(),
            })
            .await;
        assert!(sent_to(&mut commands, stranger.peer_id).is_empty());
        assert_eq!(driver.metrics.catch_up_served.get(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
