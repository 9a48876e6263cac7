//! The network task: the one owner of the libp2p Swarm (STYLE.md, after
//! rust-libp2p's file-sharing example). The rest of the daemon talks to it
//! through a bounded [`Command`] channel and hears from it on a bounded
//! [`Event`] channel; nothing else touches libp2p.
//!
//! - **gossipsub**, one topic per market (`/dharti/<market id>/1`), message
//!   ids are the SHA-256 of the bytes (content-addressed: the same offer
//!   relayed by two peers is one message), no libp2p signature on top of
//!   ours (anonymous mode), and `validate_messages`: a message is forwarded
//!   only after the market task reports Accept; Reject scores the peer down
//!   (peer scoring is on, with a heavy weight on invalid deliveries).
//! - **request-response** (`/dharti/direct/1`) carries the node's direct
//!   messages (reconciliation, fetches, asks); one length-bounded message per
//!   request, an empty response.
//! - **identify**, **Kademlia** (peer routing), **mDNS** (LAN discovery),
//!   bootstrap peers from the config, TCP and QUIC, connection limits.

use std::collections::{HashMap, HashSet};
use std::io;
use std::time::Duration;

use anyhow::Context;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId, TopicHash};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, connection_limits, identify, kad, mdns, noise, tcp,
    yamux,
};
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Largest message of the protocol (`dharti_protocol::node::MAX_MESSAGE_BYTES`)
/// plus room for gossipsub's framing.
const MAX_TRANSMIT_BYTES: usize = dharti_protocol::node::MAX_MESSAGE_BYTES + 1_024;

/// Streams a QUIC peer may have open towards this node at once (see
/// `start`): quinn allocates their state when the connection starts.
const QUIC_MAX_STREAMS: u32 = 32;

/// Commands and events waiting between the tasks; past this, senders wait
/// (backpressure rather than unbounded memory).
pub const CHANNEL_CAPACITY: usize = 1_024;
/// A direct request not answered in this time fails (the node asks again or
/// another peer on its own schedule).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections with no traffic are kept this long (gossipsub's heartbeat
/// keeps mesh connections busy anyway).
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How often Kademlia may look for more peers...
const BOOTSTRAP_EVERY: Duration = Duration::from_secs(60);
/// ...which it does only while the node has fewer peers than this: enough
/// for gossipsub's mesh (6) with room to spare. Looking while well
/// connected only fills connection slots, and a market's early nodes that
/// fill theirs with each other can leave later ones outside (seen with 50
/// daemons and 12 slots each: 13 nodes formed their own island).
const WANT_PEERS: usize = 8;
/// How often a node with more than `target_peers` peers closes the spare
/// connections.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// What the rest of the daemon asks of the network.
#[derive(Debug)]
pub enum Command {
    Publish(Vec<u8>),
    /// Publish on the market's chain topic (settlement batch approvals).
    PublishChain(Vec<u8>),
    Send {
        peer: PeerId,
        bytes: Vec<u8>,
    },
    /// The verdict on a gossip message (forward it, drop it, or punish the sender).
    Validated {
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    },
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
}

/// What the network tells the rest of the daemon.
#[derive(Debug)]
pub enum Event {
    Gossip {
        id: MessageId,
        source: PeerId,
        data: Vec<u8>,
        /// Received on the chain topic, not the market topic.
        chain: bool,
    },
    Direct {
        peer: PeerId,
        data: Vec<u8>,
    },
    PeerUp(PeerId),
    PeerDown(PeerId),
}

#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PeerInfo {
    pub peer_id: String,
    pub addresses: Vec<String>,
    /// gossipsub's score of the peer (negative: it misbehaved).
    pub score: Option<f64>,
    pub subscribed: bool,
}

/// One direct message per request; the response is empty. A request too
/// large or cut short never reaches the node, and libp2p reports nothing
/// for it, so the codec counts it (`dharti_direct_refused_total`).
#[derive(Clone, Debug, Default)]
pub struct DirectCodec {
    refused: prometheus_client::metrics::counter::Counter,
}

async fn read_bounded<T: futures::AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io.take(MAX_TRANSMIT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() > MAX_TRANSMIT_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "direct message too large",
        ));
    }
    Ok(bytes)
}

impl request_response::Codec for DirectCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let request = read_bounded(io).await;
        if request.is_err() {
            self.refused.inc();
        }
        request
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<()>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_bounded(io).await.map(|_| ())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        io.write_all(&request).await?;
        io.close().await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, (): ()) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    gossipsub: gossipsub::Behaviour,
    direct: request_response::Behaviour<DirectCodec>,
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// What the network is started with.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub market_topic: String,
    /// The topic for settlement batch approvals, when the node anchors.
    pub chain_topic: Option<String>,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    /// Above this many peers, connections outside the gossip mesh are
    /// closed (bootstrap peers stay); 0 keeps every connection.
    pub target_peers: usize,
}

/// The gossipsub topic of a market.
pub fn topic_name(market: &dharti_protocol::types::MarketId) -> String {
    format!("/dharti/{market}/1")
}

/// The gossipsub topic of a market's settlement batch approvals.
pub fn chain_topic_name(market: &dharti_protocol::types::MarketId) -> String {
    format!("/dharti/{market}/chain/1")
}

fn gossipsub_behaviour(
    topic: &IdentTopic,
    chain_topic: Option<&IdentTopic>,
) -> anyhow::Result<gossipsub::Behaviour> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .max_transmit_size(MAX_TRANSMIT_BYTES)
        .message_id_fn(|message: &gossipsub::Message| {
            MessageId::from(Sha256::digest(&message.data).to_vec())
        })
        .heartbeat_interval(Duration::from_secs(1))
        // Gossip repeats a message for three heartbeats and serves it for
        // five (the message cache); a copy that comes later than this is
        // judged again and ignored by the node (it holds the offer), so a
        // shorter memory than the default minute costs no correctness and
        // saves a megabyte or two under load.
        .duplicate_cache_time(Duration::from_secs(10))
        // Small markets: a mesh of up to 6 (gossipsub's default degree) but
        // content with 2, so that a few nodes on one LAN form one.
        .mesh_n_low(2)
        .mesh_outbound_min(1)
        .build()
        .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
    let mut gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)
            .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
    let mut params = gossipsub::PeerScoreParams {
        // Off: gossipsub's penalty for many peers behind one IP address
        // guards open networks against Sybils, but a Dharti market admits
        // members only (the node rejects everyone else's messages), and
        // members may well share an address (a co-op server, one NAT, or
        // a demo on loopback, where it silenced every peer past the tenth).
        ip_colocation_factor_weight: 0.0,
        ..gossipsub::PeerScoreParams::default()
    };
    params.topics.insert(
        topic.hash(),
        gossipsub::TopicScoreParams {
            topic_weight: 1.0,
            // P1, time in the mesh: a little credit, at most +36 after an hour.
            time_in_mesh_weight: 0.01,
            time_in_mesh_quantum: Duration::from_secs(1),
            time_in_mesh_cap: 3_600.0,
            // P2, first deliveries: at most +50.
            first_message_deliveries_weight: 1.0,
            first_message_deliveries_decay: 0.9,
            first_message_deliveries_cap: 50.0,
            // P3 and P3b off: a market is quiet between intervals and bursty
            // at them, so a delivery quota would punish honest peers.
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            // P4, invalid messages: each message a peer sent that we rejected
            // costs it -100 × count² (three put it below -80: graylisted),
            // decaying by 1 % a second, a minute to halve.
            invalid_message_deliveries_weight: -100.0,
            invalid_message_deliveries_decay: 0.99,
            ..gossipsub::TopicScoreParams::default()
        },
    );
    gossipsub
        .with_peer_score(params, gossipsub::PeerScoreThresholds::default())
        .map_err(|e| anyhow::anyhow!("gossipsub peer score: {e}"))?;
    gossipsub
        .subscribe(topic)
        .context("subscribe to the market topic")?;
    if let Some(chain_topic) = chain_topic {
        gossipsub
            .subscribe(chain_topic)
            .context("subscribe to the chain topic")?;
    }
    Ok(gossipsub)
}

/// Builds the swarm, starts listening and dialling, and returns the task's
/// handles; `run` drives it until `shutdown`.
pub struct Network {
    swarm: Swarm<Behaviour>,
    topic: TopicHash,
    chain_topic: Option<TopicHash>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    metrics: Metrics,
    libp2p_metrics: libp2p::metrics::Metrics,
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    listening: Vec<Multiaddr>,
    target_peers: usize,
    /// Peers named in the config's bootstrap list: never trimmed.
    bootstrap_peers: HashSet<PeerId>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").finish_non_exhaustive()
    }
}

pub fn start(
    keypair: libp2p::identity::Keypair,
    config: &NetworkConfig,
    registry: &mut Registry,
    metrics: Metrics,
) -> anyhow::Result<(Network, mpsc::Sender<Command>, mpsc::Receiver<Event>)> {
    let topic = IdentTopic::new(config.market_topic.clone());
    let chain_topic = config.chain_topic.clone().map(IdentTopic::new);
    let libp2p_metrics = libp2p::metrics::Metrics::new(registry.sub_registry_with_prefix("libp2p"));
    let mdns_on = config.mdns;
    let refused = metrics.direct_refused.clone();
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(config.max_connections))
        .with_max_pending_outgoing(Some(config.max_connections));
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic_config(|mut quic| {
            // quinn sets up state for every stream the peer may open at
            // once, up front, in every connection: at its default of 256
            // that is about 90 KB per connection. A Dharti peer keeps a few
            // streams open (gossip, a reconciliation or catch-up request or
            // two, Kademlia, identify); a peer that wants more waits for one.
            quic.max_concurrent_stream_limit = QUIC_MAX_STREAMS;
            quic
        })
        .with_bandwidth_metrics(registry)
        .with_behaviour(
            |key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let peer_id = key.public().to_peer_id();
                // Dharti's own DHT protocol (no mixing with IPFS's), and no
                // automatic bootstraps: the task looks for peers itself, and
                // only when it has too few (`WANT_PEERS`).
                let mut kad_config = kad::Config::new(StreamProtocol::new("/dharti/kad/1"));
                kad_config.set_periodic_bootstrap_interval(None);
                let mut kad = kad::Behaviour::with_config(
                    peer_id,
                    kad::store::MemoryStore::new(peer_id),
                    kad_config,
                );
                kad.set_mode(Some(kad::Mode::Server));
                let mdns = if mdns_on {
                    Some(mdns::tokio::Behaviour::new(
                        mdns::Config::default(),
                        peer_id,
                    )?)
                } else {
                    None
                };
                Ok(Behaviour {
                    limits: connection_limits::Behaviour::new(limits),
                    gossipsub: gossipsub_behaviour(&topic, chain_topic.as_ref())
                        .map_err(|e| e.to_string())?,
                    direct: request_response::Behaviour::with_codec(
                        DirectCodec {
                            refused: refused.clone(),
                        },
                        [(
                            StreamProtocol::new("/dharti/direct/1"),
                            ProtocolSupport::Full,
                        )],
                        request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT),
                    ),
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/dharti/1".into(),
                        key.public(),
                    )),
                    kad,
                    mdns: mdns.into(),
                })
            },
        )?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    for address in &config.listen {
        swarm
            .listen_on(address.clone())
            .with_context(|| format!("network.listen: cannot listen on {address}"))?;
    }
    for address in &config.bootstrap {
        if let Some(Protocol::P2p(peer)) = address.iter().last() {
            swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, address.clone());
        }
        if let Err(e) = swarm.dial(address.clone()) {
            tracing::warn!(%address, "network.dial: {e}");
        }
    }
    let (command_tx, commands) = mpsc::channel(CHANNEL_CAPACITY);
    let (events, event_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let network = Network {
        swarm,
        topic: IdentTopic::new(config.market_topic.clone()).hash(),
        chain_topic: config
            .chain_topic
            .as_ref()
            .map(|t| IdentTopic::new(t.clone()).hash()),
        commands,
        events,
        metrics,
        libp2p_metrics,
        addresses: HashMap::new(),
        listening: Vec::new(),
        target_peers: config.target_peers,
        bootstrap_peers: config
            .bootstrap
            .iter()
            .filter_map(|a| match a.iter().last() {
                Some(Protocol::P2p(peer)) => Some(peer),
                _ => None,
            })
            .collect(),
    };
    Ok((network, command_tx, event_rx))
}

impl Network {
    /// Drives the swarm until `shutdown` is cancelled or the command
    /// channel closes.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut bootstrap = tokio::time::interval(BOOTSTRAP_EVERY);
        let mut trim = tokio::time::interval(TRIM_EVERY);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event).await,
                _ = bootstrap.tick() => {
                    if self.swarm.connected_peers().count() < WANT_PEERS {
                        // Fails harmlessly while the routing table is empty.
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                }
                _ = trim.tick() => self.trim_peers(),
            }
        }
    }

    /// Closes connections beyond `target_peers`: first those to peers
    /// outside this node's gossip mesh and bootstrap list, in an order
    /// that differs per node (so that two nodes do not both drop the
    /// same third). Every connection costs memory (buffers, gossip state),
    /// and a mesh of a dozen peers per node reaches everyone in a few hops;
    /// the mesh itself is never cut, so trimming cannot split the market.
    fn trim_peers(&mut self) {
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        if self.target_peers == 0 || connected.len() <= self.target_peers {
            return;
        }
        let excess = connected.len() - self.target_peers;
        let mesh: HashSet<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_mesh_peers()
            .copied()
            .collect();
        let me = *self.swarm.local_peer_id();
        let mut spare: Vec<([u8; 32], PeerId)> = connected
            .into_iter()
            .filter(|p| !mesh.contains(p) && !self.bootstrap_peers.contains(p))
            .map(|p| {
                let mut seed = me.to_bytes();
                seed.extend_from_slice(&p.to_bytes());
                (dharti_protocol::hash::sha256(&seed), p)
            })
            .collect();
        spare.sort_unstable();
        for (_, peer) in spare.into_iter().take(excess) {
            if self.swarm.disconnect_peer_id(peer).is_ok() {
                self.metrics.peers_trimmed.inc();
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        let behaviour = self.swarm.behaviour_mut();
        match command {
            Command::Publish(bytes) => {
                match behaviour.gossipsub.publish(self.topic.clone(), bytes) {
                    Ok(_) => {
                        self.metrics.gossip_published.inc();
                    }
                    Err(e) => {
                        // No peers yet, or a duplicate: reconciliation and
                        // the node's own asks repair what this loses.
                        tracing::debug!("network.publish: {e}");
                        self.metrics.gossip_publish_failures.inc();
                    }
                };
            }
            Command::PublishChain(bytes) => {
                let Some(topic) = self.chain_topic.clone() else {
                    return;
                };
                if let Err(e) = behaviour.gossipsub.publish(topic, bytes) {
                    tracing::debug!("network.publish_chain: {e}");
                    self.metrics.gossip_publish_failures.inc();
                }
            }
            Command::Send { peer, bytes } => {
                behaviour.direct.send_request(&peer, bytes);
                self.metrics.direct_sent.inc();
            }
            Command::Validated {
                id,
                source,
                acceptance,
            } => {
                behaviour
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::Peers(reply) => {
                let subscribed: std::collections::HashSet<PeerId> = behaviour
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&self.topic))
                    .map(|(p, _)| *p)
                    .collect();
                let peers = self
                    .swarm
                    .connected_peers()
                    .map(|peer| PeerInfo {
                        peer_id: peer.to_string(),
                        addresses: self
                            .addresses
                            .get(peer)
                            .map(|a| a.iter().map(ToString::to_string).collect())
                            .unwrap_or_default(),
                        score: self.swarm.behaviour().gossipsub.peer_score(peer),
                        subscribed: subscribed.contains(peer),
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.listening.clone());
            }
        }
    }

    async fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        self.libp2p_metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => {
                self.libp2p_metrics.record(&event);
                if let gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                } = event
                {
                    self.metrics.gossip_received.inc();
                    let chain = Some(&message.topic) == self.chain_topic.as_ref();
                    let _ = self
                        .events
                        .send(Event::Gossip {
                            id: message_id,
                            source: propagation_source,
                            data: message.data,
                            chain,
                        })
                        .await;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Direct(event)) => match event {
                request_response::Event::Message {
                    peer,
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                } => {
                    let _ = self.swarm.behaviour_mut().direct.send_response(channel, ());
                    self.metrics.direct_received.inc();
                    let _ = self
                        .events
                        .send(Event::Direct {
                            peer,
                            data: request,
                        })
                        .await;
                }
                request_response::Event::InboundFailure { peer, error, .. } => {
                    // Timed out or dropped before the response: nothing to do.
                    tracing::debug!(%peer, "network.direct inbound: {error}");
                }
                request_response::Event::OutboundFailure { peer, error, .. } => {
                    tracing::debug!(%peer, "network.direct: {error}");
                    self.metrics.direct_failures.inc();
                }
                _ => {}
            },
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => {
                self.libp2p_metrics.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = event {
                    for address in info.listen_addrs {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, address);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => {
                self.libp2p_metrics.record(&event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, address) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, address.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(address);
                    }
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                self.addresses
                    .entry(peer_id)
                    .or_default()
                    .push(endpoint.get_remote_address().clone());
                if num_established.get() == 1 {
                    self.metrics.peers.inc();
                    let _ = self.events.send(Event::PeerUp(peer_id)).await;
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.addresses.remove(&peer_id);
                self.metrics.peers.dec();
                let _ = self.events.send(Event::PeerDown(peer_id)).await;
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "network.listen");
                self.listening.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listening.retain(|a| *a != address);
            }
            _ => {}
        }
    }
}
