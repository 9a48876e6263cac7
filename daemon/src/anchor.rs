//! The anchoring task: batches of final settlements onto the chain
//! (docs/chain.md).
//!
//! Batch `n` covers intervals `anchor_from + n·B ..= anchor_from + (n+1)·B − 1`
//! (B = `chain.batch_intervals`), even when nothing traded, so numbers stay
//! sequential without any agreement beyond the intervals themselves. For
//! each batch, in order:
//! 1. Once every interval of it is settled in local storage, the node
//!    builds the batch (trade records, net positions), signs its header
//!    (EIP-712, with the node's EVM key) and gossips the approval on the
//!    market's chain topic, again every half committer timeout until the
//!    batch is anchored.
//! 2. Approvals from members are checked (the signer must be the ledger's
//!    member at the index it names) and kept when they approve the same
//!    header as this node's.
//! 3. The committer is the ledger's member `(n + attempt) mod members`,
//!    where `attempt` counts committer timeouts since the batch became due.
//!    The committer, holding a quorum of approvals, commits and then
//!    settles; if it does not, the next member takes over.
//! 4. Everyone watches the chain; a batch committed and settled there is
//!    done and the next one starts.
//!
//! The queue (next batch, this node's header, the approvals held) is in
//! storage, written through the market task, so a restart resumes where
//! it stopped; before any transaction the chain is asked whether it is
//! already done, so nothing is committed twice. Outages are retried with
//! backoff; nothing is lost.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dharti_contracts::alloy::primitives::{Address, B256, U256, keccak256};
use dharti_contracts::alloy::signers::local::PrivateKeySigner;
use dharti_contracts::alloy::sol_types::{SolEvent, SolValue};
use dharti_contracts::batch::signing_hash;
use dharti_contracts::bindings::EnergyCertificates;
use dharti_contracts::bindings::SettlementLedger::{self, BatchHeader, TradeRecord};
use dharti_contracts::{Approval, Batch, Chain, ChainError, Contract, Preset};
use dharti_protocol::types::{IntervalClock, IntervalIndex, MarketId, ParticipantId};
use dharti_storage::Store;
use libp2p::PeerId;
use libp2p::gossipsub::{MessageAcceptance, MessageId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::driver::Request;
use crate::metrics::Metrics;
use crate::network::Command;

/// `[chain]`, checked (see `Config::chain_settings`).
#[derive(Clone, Debug)]
pub struct ChainSettings {
    pub preset: Preset,
    /// `None`: the embedded chain in this process.
    pub rpc_url: Option<String>,
    pub evm_key_file: PathBuf,
    pub ledger: Address,
    /// EnergyCertificates' address; certificates are issued when this node
    /// holds the issuer role there.
    pub certificates: Option<Address>,
    pub market_index: u32,
    pub anchor_from: u64,
    pub batch_intervals: u64,
    pub confirmations: u64,
    pub committer_timeout_ms: u64,
    pub rpc_timeout_ms: u64,
    pub accounts: BTreeMap<ParticipantId, Address>,
    pub grid_operator: Address,
    pub market_operator: Address,
}

impl ChainSettings {
    /// The intervals of batch `n`.
    pub fn range(&self, n: u64) -> (u64, u64) {
        let first = self.anchor_from + n * self.batch_intervals;
        (first, first + self.batch_intervals - 1)
    }
}

/// A chain-topic message for the anchoring task to judge.
#[derive(Debug)]
pub struct Gossip {
    pub id: MessageId,
    pub source: PeerId,
    pub data: Vec<u8>,
}

/// A batch header as gossiped and stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub market: u32,
    pub number: u64,
    pub first_interval: u64,
    pub last_interval: u64,
    pub records_root: B256,
    pub net_root: B256,
}

impl From<&BatchHeader> for Header {
    fn from(h: &BatchHeader) -> Self {
        Header {
            market: h.market,
            number: h.number,
            first_interval: h.firstInterval,
            last_interval: h.lastInterval,
            records_root: h.recordsRoot,
            net_root: h.netRoot,
        }
    }
}

impl From<&Header> for BatchHeader {
    fn from(h: &Header) -> Self {
        BatchHeader {
            market: h.market,
            number: h.number,
            firstInterval: h.first_interval,
            lastInterval: h.last_interval,
            recordsRoot: h.records_root,
            netRoot: h.net_root,
        }
    }
}

/// One member's approval of a batch, as gossiped. Bounded: a few hundred
/// bytes of JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApprovalMessage {
    pub chain_id: u64,
    pub ledger: Address,
    pub header: Header,
    pub approval: Approval,
}

const MAX_APPROVAL_MESSAGE: usize = 2_048;
/// How often an approval naming a member the list does not have at that
/// index may make the node re-read the list.
const MEMBERS_REREAD_MS: u64 = 5_000;
/// Headers of not-yet-built batches whose approvals are held.
const MAX_EARLY_HEADERS: usize = 64;

/// What the node keeps of one batch, in storage (meta `chain/batch/N`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Pending {
    number: u64,
    header: Option<Header>,
    /// Approvals of `header` (this node's own included), by member index.
    approvals: BTreeMap<u16, Approval>,
}

const NEXT_KEY: &[u8] = b"chain/next";
const CERTS_NEXT_KEY: &[u8] = b"chain/certificates/next";

fn batch_key(n: u64) -> Vec<u8> {
    format!("chain/batch/{n}").into_bytes()
}

/// Everything the task needs from the daemon.
#[derive(Debug)]
pub struct Anchor {
    pub settings: ChainSettings,
    pub market: MarketId,
    pub clock: IntervalClock,
    pub store: Arc<Store>,
    pub requests: mpsc::Sender<Request>,
    pub net: mpsc::Sender<Command>,
    pub metrics: Metrics,
}

/// Loads the node's EVM key (hex, 32 bytes).
pub fn load_evm_key(path: &std::path::Path) -> anyhow::Result<PrivateKeySigner> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the EVM key {} (chain.evm_key_file; `dharti init` writes one)",
            path.display()
        )
    })?;
    text.trim()
        .trim_start_matches("0x")
        .parse()
        .map_err(|e| anyhow::anyhow!("{} is not a secp256k1 key in hex: {e}", path.display()))
}

/// The chain as the settings say: JSON-RPC, or an in-process EVM.
pub async fn connect(
    settings: &ChainSettings,
    key: &PrivateKeySigner,
) -> Result<Chain, ChainError> {
    match &settings.rpc_url {
        None => Ok(Chain::embedded()),
        Some(url) => {
            Chain::rpc(
                settings.preset,
                url,
                vec![key.clone()],
                settings.confirmations,
                Duration::from_millis(settings.rpc_timeout_ms),
            )
            .await
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Builds batch `n` from local storage: `Ok(None)` while an interval of it
/// is not final and settled here yet.
pub fn build_batch(
    store: &Store,
    market: MarketId,
    settings: &ChainSettings,
    n: u64,
) -> anyhow::Result<Option<Batch>> {
    let (first, last) = settings.range(n);
    let address =
        |p: &ParticipantId| -> anyhow::Result<Address> {
            settings.accounts.get(p).copied().ok_or_else(|| {
                anyhow::anyhow!("no EVM address for participant {p} in chain.accounts")
            })
        };
    let mut trades = Vec::new();
    let mut net: BTreeMap<Address, i64> = BTreeMap::new();
    let latest = store.last_result_interval(&market)?.map(|i| i.0);
    for i in first..=last {
        let interval = IntervalIndex(i);
        let Some(settlement) = store.settlement(&market, interval)? else {
            let final_here = store.result(&market, interval)?.is_some();
            // An interval that never became final here while later ones
            // did (the market was down, or this node was) holds no trades;
            // one that is final but not settled yet is waited for.
            if !final_here && latest.is_some_and(|l| l > last) {
                continue;
            }
            return Ok(None);
        };
        if let Some(result) = store.result(&market, interval)? {
            for t in &result.trades {
                trades.push(TradeRecord {
                    interval: i,
                    bidId: B256::from(t.bid_id.0),
                    askId: B256::from(t.ask_id.0),
                    buyer: address(&t.buyer)?,
                    seller: address(&t.seller)?,
                    energyWh: t.energy_wh,
                    priceMicroPerKwh: t.price_micro_per_kwh,
                    valueMicro: t.value_micro,
                    gridFeeMicro: t.grid_fee_micro,
                    surplusMicro: t.surplus_micro,
                });
            }
        }
        for p in &settlement.participants {
            let flow = i128::from(p.p2p_received_micro)
                - i128::from(p.p2p_paid_micro)
                - i128::from(p.grid_fee_paid_micro)
                - i128::from(p.surplus_paid_micro);
            *net.entry(address(&p.participant)?).or_default() += i64::try_from(flow)?;
        }
        *net.entry(settings.grid_operator).or_default() +=
            i64::try_from(settlement.grid_operator_micro)?;
        *net.entry(settings.market_operator).or_default() +=
            i64::try_from(settlement.market_operator_micro)?;
    }
    let batch = Batch::new(settings.market_index, n, first, last, trades, &net)?;
    Ok(Some(batch))
}

/// One certificate to issue: a producer's delivered P2P energy over a
/// batch, and who bought how much of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificatePlan {
    /// keccak256 of the producer's participant id.
    pub device: B256,
    pub start_s: u64,
    pub end_s: u64,
    pub volume_wh: u64,
    /// Buyer → Wh; the shares sum to `volume_wh`.
    pub shares: BTreeMap<Address, u64>,
}

/// What batch `n` certifies. A seller's delivered P2P energy in an
/// interval is `min(sold, exported)`: what it sold and its meter shows it
/// fed in. Each buyer's share is proportional to what it bought from that
/// seller, rounded down, with the remainder to the largest buyer.
pub fn certificate_plan(
    store: &Store,
    market: MarketId,
    settings: &ChainSettings,
    clock: &IntervalClock,
    n: u64,
) -> anyhow::Result<Vec<CertificatePlan>> {
    let (first, last) = settings.range(n);
    let mut per_seller: BTreeMap<ParticipantId, BTreeMap<Address, u64>> = BTreeMap::new();
    for i in first..=last {
        let interval = IntervalIndex(i);
        let (Some(settlement), Some(result)) = (
            store.settlement(&market, interval)?,
            store.result(&market, interval)?,
        ) else {
            continue;
        };
        for p in &settlement.participants {
            if p.sold_wh == 0 {
                continue;
            }
            let delivered = p.sold_wh.min(p.export_wh);
            let mut bought: BTreeMap<Address, u64> = BTreeMap::new();
            for t in result.trades.iter().filter(|t| t.seller == p.participant) {
                let buyer = settings
                    .accounts
                    .get(&t.buyer)
                    .copied()
                    .ok_or_else(|| anyhow::anyhow!("no EVM address for {}", t.buyer))?;
                *bought.entry(buyer).or_default() += t.energy_wh;
            }
            let shares = split(delivered, &bought);
            let entry = per_seller.entry(p.participant).or_default();
            for (buyer, wh) in shares {
                *entry.entry(buyer).or_default() += wh;
            }
        }
    }
    Ok(per_seller
        .into_iter()
        .filter_map(|(seller, shares)| {
            let volume_wh: u64 = shares.values().sum();
            (volume_wh > 0).then(|| CertificatePlan {
                device: keccak256(seller.0),
                start_s: clock.start_s(IntervalIndex(first)),
                end_s: clock.start_s(IntervalIndex(last + 1)),
                volume_wh,
                shares: shares.into_iter().filter(|(_, wh)| *wh > 0).collect(),
            })
        })
        .collect())
}

/// `total` split in proportion to `weights`, rounded down, the remainder to
/// the largest weight; sums to `total` exactly (zero if no weights).
fn split(total: u64, weights: &BTreeMap<Address, u64>) -> BTreeMap<Address, u64> {
    let sum: u64 = weights.values().sum();
    if sum == 0 {
        return BTreeMap::new();
    }
    let mut out: BTreeMap<Address, u64> = weights
        .iter()
        .map(|(a, w)| {
            let share = u128::from(total) * u128::from(*w) / u128::from(sum);
            (*a, u64::try_from(share).expect("at most total"))
        })
        .collect();
    let given: u64 = out.values().sum();
    if let Some((largest, _)) = weights.iter().max_by_key(|(_, w)| **w) {
        *out.get_mut(largest).expect("present") += total - given;
    }
    out
}

struct Task {
    a: Anchor,
    key: PrivateKeySigner,
    chain: Option<Chain>,
    /// The ledger's members in order and the threshold, read per batch
    /// and again every committer timeout while a due batch waits.
    members: Vec<Address>,
    threshold: usize,
    /// When `members` was read.
    members_read_ms: u64,
    next: u64,
    pending: Pending,
    /// This node's batch `next`, once built.
    batch: Option<Batch>,
    /// Verified approvals of headers this node has not built (yet), by
    /// (batch, digest).
    early: HashMap<(u64, B256), BTreeMap<u16, Approval>>,
    last_published_ms: u64,
    backoff_until_ms: u64,
    backoff_ms: u64,
    reported_unbuildable: Option<u64>,
    /// When the chain was last asked about the current batch: every second
    /// on a local node, every 10 s on a public RPC (50 members polling
    /// each second would be 100 requests a second to it).
    last_poll_ms: u64,
    /// Approvals arrived since the queue was last written: written at most
    /// once a second, not per message (SD cards).
    dirty: bool,
    /// The next anchored batch to issue certificates for (issuer only).
    certs_next: u64,
    /// Whether this node is an issuer on the certificates contract.
    issuer: Option<bool>,
}

pub async fn run(a: Anchor, mut gossip: mpsc::Receiver<Gossip>, shutdown: CancellationToken) {
    let key = match load_evm_key(&a.settings.evm_key_file) {
        Ok(key) => key,
        Err(e) => {
            tracing::error!("anchor.key: {e:#}; settlements will not be anchored");
            return;
        }
    };
    let next = stored(&a.store, NEXT_KEY).unwrap_or(0);
    let pending = load_pending(&a.store, next);
    let certs_next = stored(&a.store, CERTS_NEXT_KEY).unwrap_or(0);
    tracing::info!(evm = %key.address(), next_batch = next, "anchor.started");
    let mut task = Task {
        a,
        key,
        chain: None,
        members: Vec::new(),
        threshold: usize::MAX,
        members_read_ms: 0,
        next,
        pending,
        batch: None,
        early: HashMap::new(),
        last_published_ms: 0,
        backoff_until_ms: 0,
        backoff_ms: 0,
        reported_unbuildable: None,
        dirty: false,
        last_poll_ms: 0,
        certs_next,
        issuer: None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => task.step().await,
            Some(message) = gossip.recv() => task.judge(message).await,
        }
    }
}

fn load_pending(store: &Store, n: u64) -> Pending {
    stored(store, &batch_key(n)).unwrap_or(Pending {
        number: n,
        ..Pending::default()
    })
}

/// The anchoring state stored under `key`, if any. A read or decode error
/// is logged and treated as nothing stored: the chain is asked before
/// every step, so starting over repeats queries, never transactions.
fn stored<T: serde::de::DeserializeOwned>(store: &Store, key: &[u8]) -> Option<T> {
    let loaded = || -> anyhow::Result<Option<T>> {
        let bytes = store.meta(key)?;
        Ok(bytes.map(|b| serde_json::from_slice(&b)).transpose()?)
    };
    loaded().unwrap_or_else(|e| {
        tracing::error!("anchor.load {}: {e:#}", String::from_utf8_lossy(key));
        None
    })
}

impl Task {
    async fn persist(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) {
        let (reply, answer) = oneshot::channel();
        if self
            .a
            .requests
            .send(Request::PutMeta { entries, reply })
            .await
            .is_err()
        {
            return;
        }
        if let Ok(Err(e)) = answer.await {
            tracing::error!("anchor.persist: {e}");
            self.a.metrics.storage_errors.inc();
        }
    }

    async fn save_pending(&self) {
        let value = serde_json::to_vec(&self.pending).expect("serializable");
        self.persist(vec![(batch_key(self.pending.number), value)])
            .await;
    }

    fn outage(&mut self, e: &ChainError) {
        self.a.metrics.chain_unavailable.inc();
        self.backoff_ms = (self.backoff_ms * 2).clamp(1_000, 60_000);
        self.backoff_until_ms = now_ms() + self.backoff_ms;
        tracing::warn!(retry_in_ms = self.backoff_ms, "anchor.chain: {e}");
        if matches!(e, ChainError::Unavailable(_)) && self.a.settings.rpc_url.is_some() {
            // Reconnect on the next try: the node may have restarted.
            self.chain = None;
        }
    }

    fn poll_ms(&self) -> u64 {
        let local = self
            .a
            .settings
            .rpc_url
            .as_deref()
            .is_none_or(|u| u.contains("://127.0.0.1") || u.contains("://localhost"));
        if local { 1_000 } else { 10_000 }
    }

    fn ledger(&self) -> Option<Contract<'_>> {
        self.chain
            .as_ref()
            .map(|c| Contract::new(c, self.a.settings.ledger))
    }

    /// When batch `n` is due: two intervals after its last one ends (time
    /// for meter reports and settlement).
    fn due_ms(&self, n: u64) -> u64 {
        let (_, last) = self.a.settings.range(n);
        let end_s = self.a.clock.start_s(IntervalIndex(last + 1));
        (end_s + 2 * self.a.clock.interval_s) * 1000
    }

    async fn step(&mut self) {
        if self.dirty {
            self.dirty = false;
            self.save_pending().await;
        }
        let now = now_ms();
        // (200 ms of slack: the 1-s tick jitters.)
        if now < self.backoff_until_ms || now + 200 < self.last_poll_ms + self.poll_ms() {
            return;
        }
        self.last_poll_ms = now;
        if let Err(e) = self.advance(now).await {
            if e.is_transient() {
                self.outage(&e);
            } else {
                self.a.metrics.chain_errors.inc();
                tracing::warn!(batch = self.next, "anchor: {e}");
                self.backoff_ms = (self.backoff_ms * 2).clamp(1_000, 60_000);
                self.backoff_until_ms = now + self.backoff_ms;
            }
        } else {
            self.backoff_ms = 0;
        }
    }

    async fn advance(&mut self, now: u64) -> Result<(), ChainError> {
        if self.certs_next < self.next && self.chain.is_some() {
            self.certify().await?;
        }
        if now < self.due_ms(self.next) {
            return Ok(());
        }
        if self.chain.is_none() {
            self.chain = Some(connect(&self.a.settings, &self.key).await?);
            self.members.clear();
        }
        // Membership can change while a batch is being approved: re-read it
        // every committer timeout, so every member learns its new index.
        let stale =
            now.saturating_sub(self.members_read_ms) >= self.a.settings.committer_timeout_ms;
        if self.members.is_empty() || stale {
            self.refresh_members().await?;
        }
        let n = self.next;
        let market = self.a.settings.market_index;
        let ledger = self.ledger().expect("connected");
        let root = ledger
            .view(SettlementLedger::batchRootCall { market, number: n })
            .await?;
        let committed = root != B256::ZERO;
        if committed {
            let settled = ledger
                .view(SettlementLedger::isSettledCall { market, number: n })
                .await?;
            if settled {
                return self.finish(n).await;
            }
        }

        // Build this node's batch once every interval of it is settled here.
        if self.batch.is_none() {
            match build_batch(&self.a.store, self.a.market, &self.a.settings, n) {
                Ok(Some(batch)) => self.adopt(batch).await,
                Ok(None) => {}
                Err(e) => {
                    if self.reported_unbuildable != Some(n) {
                        self.reported_unbuildable = Some(n);
                        self.a.metrics.chain_errors.inc();
                        tracing::warn!(batch = n, "anchor.build: {e:#}");
                    }
                }
            }
        }
        let Some(batch) = self.batch.clone() else {
            return Ok(());
        };

        // Keep gossiping this node's approval until the batch is done.
        let republish_ms = (self.a.settings.committer_timeout_ms / 2).max(2_000);
        if now.saturating_sub(self.last_published_ms) >= republish_ms {
            self.publish_approval(&batch).await;
        }

        if !self.is_committer(n, now) {
            return Ok(());
        }
        if !committed {
            if self.pending.approvals.len() < self.threshold {
                return Ok(());
            }
            let approvals: Vec<Approval> = self.pending.approvals.values().copied().collect();
            let chain = self.chain.as_ref().expect("connected");
            match dharti_contracts::contract::commit_batch(
                chain,
                self.a.settings.ledger,
                self.key.address(),
                &batch,
                &approvals,
            )
            .await
            {
                Ok(receipt) => {
                    self.a.metrics.chain_batches_committed.inc();
                    tracing::info!(batch = n, tx = %receipt.tx_hash, gas = receipt.gas_used, "anchor.committed");
                }
                Err(e) if e.revert_name() == Some("AlreadyCommitted") => {}
                Err(e)
                    if matches!(
                        e.revert_name(),
                        Some("BadSignature" | "BadMemberIndex" | "BelowQuorum")
                    ) =>
                {
                    // Membership or the threshold changed since the list
                    // was read: re-read it on the next step, which moves
                    // every approval to its signer's new index.
                    self.members.clear();
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        let chain = self.chain.as_ref().expect("connected");
        // One transaction per chunk of accounts, resuming where the chain
        // is: a crash or outage part-way loses nothing and repeats nothing.
        let receipts = dharti_contracts::contract::settle_batch(
            chain,
            self.a.settings.ledger,
            self.key.address(),
            &batch,
        )
        .await?;
        if !receipts.is_empty() {
            self.a.metrics.chain_batches_settled.inc();
            let gas: u64 = receipts.iter().map(|r| r.gas_used).sum();
            tracing::info!(
                batch = n,
                transactions = receipts.len(),
                gas,
                "anchor.settled"
            );
        }
        self.finish(n).await
    }

    /// Issues certificates for the next anchored batch, if this node is an
    /// issuer: one per producer for its delivered P2P energy, split among
    /// the buyers in proportion to what they bought from it. Idempotent: a
    /// certificate already issued for the (device, period) is not issued
    /// again, and a buyer who holds its share already gets nothing more.
    async fn certify(&mut self) -> Result<(), ChainError> {
        let Some(address) = self.a.settings.certificates else {
            self.certs_next = self.next;
            return Ok(());
        };
        let chain = self.chain.as_ref().expect("connected");
        let certs = Contract::new(chain, address);
        let me = self.key.address();
        if self.issuer.is_none() {
            self.issuer = Some(certs.view(EnergyCertificates::isIssuerCall(me)).await?);
        }
        if self.issuer != Some(true) {
            self.certs_next = self.next;
            return Ok(());
        }
        let n = self.certs_next;
        let plan = match certificate_plan(
            &self.a.store,
            self.a.market,
            &self.a.settings,
            &self.a.clock,
            n,
        ) {
            Ok(plan) => plan,
            Err(e) => {
                self.a.metrics.chain_errors.inc();
                tracing::warn!(batch = n, "anchor.certificates: {e:#}");
                Vec::new()
            }
        };
        for c in plan {
            let key = keccak256((c.device, c.start_s, c.end_s).abi_encode_params());
            let mut id = certs
                .view(EnergyCertificates::certificateOfCall(key))
                .await?;
            if id.is_zero() {
                let receipt = certs
                    .send(
                        me,
                        EnergyCertificates::requestCertificateCall {
                            device: c.device,
                            generationStart: c.start_s,
                            generationEnd: c.end_s,
                            volumeWh: c.volume_wh,
                        },
                    )
                    .await?;
                let request = receipt
                    .logs
                    .iter()
                    .find_map(|l| EnergyCertificates::CertificateRequested::decode_log(l).ok())
                    .map(|e| e.data.requestId)
                    .ok_or_else(|| ChainError::Usage("no CertificateRequested event".into()))?;
                certs
                    .send(
                        me,
                        EnergyCertificates::approveRequestCall { requestId: request },
                    )
                    .await?;
                id = certs
                    .view(EnergyCertificates::certificateOfCall(key))
                    .await?;
                self.a
                    .metrics
                    .chain_certificates_issued_wh
                    .inc_by(c.volume_wh);
            }
            for (buyer, share) in &c.shares {
                let held = certs
                    .view(EnergyCertificates::balanceOfCall {
                        account: *buyer,
                        id,
                    })
                    .await?;
                let owed = U256::from(*share).saturating_sub(held);
                if owed.is_zero() {
                    continue;
                }
                certs
                    .send(
                        me,
                        EnergyCertificates::safeTransferFromCall {
                            from: me,
                            to: *buyer,
                            id,
                            value: owed,
                            data: Default::default(),
                        },
                    )
                    .await?;
            }
        }
        self.certs_next = n + 1;
        self.persist(vec![(
            CERTS_NEXT_KEY.to_vec(),
            serde_json::to_vec(&self.certs_next).expect("a number"),
        )])
        .await;
        tracing::info!(batch = n, "anchor.certified");
        Ok(())
    }

    /// The committer for batch `n` now: member `(n + attempt) mod len`.
    fn is_committer(&self, n: u64, now: u64) -> bool {
        if self.members.is_empty() {
            return false;
        }
        let timeout = self.a.settings.committer_timeout_ms.max(1);
        let attempt = now.saturating_sub(self.due_ms(n)) / timeout;
        let len = self.members.len() as u64;
        let index = usize::try_from((n + attempt) % len).expect("fits");
        self.members[index] == self.key.address()
    }

    async fn refresh_members(&mut self) -> Result<(), ChainError> {
        let ledger = self.ledger().expect("connected");
        let members = ledger.view(SettlementLedger::membersCall {}).await?;
        let threshold = ledger.view(SettlementLedger::thresholdCall {}).await?;
        self.members_read_ms = now_ms();
        if members != self.members {
            tracing::info!(members = members.len(), threshold, "anchor.members");
        }
        self.members = members;
        self.threshold = usize::from(threshold).max(1);
        self.reindex_pending();
        Ok(())
    }

    /// Files the held approvals under their signers' indices in the
    /// current member list (and this node's own under its index).
    fn reindex_pending(&mut self) {
        let Some(header) = self.pending.header.as_ref() else {
            return;
        };
        let digest = self.digest(&BatchHeader::from(header));
        let moved = reindexed(self.pending.approvals.values(), &self.members, digest);
        if moved != self.pending.approvals {
            self.pending.approvals = moved;
            self.dirty = true;
        }
    }

    fn my_index(&self) -> Option<u16> {
        self.members
            .iter()
            .position(|m| *m == self.key.address())
            .and_then(|i| u16::try_from(i).ok())
    }

    fn digest(&self, header: &BatchHeader) -> B256 {
        let chain_id = self.chain.as_ref().map_or(0, Chain::chain_id);
        signing_hash(header, chain_id, self.a.settings.ledger)
    }

    /// Takes this node's batch: signs it and merges approvals seen early.
    async fn adopt(&mut self, batch: Batch) {
        let header = Header::from(&batch.header);
        let digest = self.digest(&batch.header);
        if self.pending.header.as_ref() != Some(&header) {
            self.pending = Pending {
                number: batch.header.number,
                header: Some(header),
                approvals: BTreeMap::new(),
            };
        }
        if let Some(index) = self.my_index() {
            self.pending
                .approvals
                .insert(index, Approval::sign(&self.key, index, digest));
        }
        // Approvals kept across a restart or held early may name indices
        // from an older member list: file them all by signer, so no two
        // collide under one index.
        let early = self
            .early
            .remove(&(batch.header.number, digest))
            .unwrap_or_default();
        let all: Vec<Approval> = self
            .pending
            .approvals
            .values()
            .chain(early.values())
            .copied()
            .collect();
        self.pending.approvals = reindexed(all.iter(), &self.members, digest);
        self.save_pending().await;
        tracing::info!(
            batch = batch.header.number,
            trades = batch.trades.len(),
            accounts = batch.positions.len(),
            "anchor.built"
        );
        self.batch = Some(batch);
    }

    async fn publish_approval(&mut self, batch: &Batch) {
        let Some(index) = self.my_index() else {
            return;
        };
        // Its own approval, signed now if it has none under its index (a
        // node made a member after it built the batch) or what is there is
        // not its own (filed under an index that has since moved).
        let digest = self.digest(&batch.header);
        let me = self.key.address();
        let approval = match self.pending.approvals.get(&index) {
            Some(a) if a.signer(digest) == Some(me) => *a,
            _ => {
                let a = Approval::sign(&self.key, index, digest);
                self.pending.approvals.insert(index, a);
                self.dirty = true;
                a
            }
        };
        let message = ApprovalMessage {
            chain_id: self.chain.as_ref().map_or(0, Chain::chain_id),
            ledger: self.a.settings.ledger,
            header: Header::from(&batch.header),
            approval,
        };
        let bytes = serde_json::to_vec(&message).expect("serializable");
        if self.a.net.try_send(Command::PublishChain(bytes)).is_err() {
            self.a.metrics.commands_dropped.inc();
        }
        self.last_published_ms = now_ms();
    }

    async fn finish(&mut self, n: u64) -> Result<(), ChainError> {
        self.a
            .metrics
            .chain_batches_anchored
            .set(i64::try_from(n + 1).unwrap_or(i64::MAX));
        tracing::info!(batch = n, "anchor.done");
        self.next = n + 1;
        self.batch = None;
        self.pending = load_pending(&self.a.store, self.next);
        self.early.retain(|(number, _), _| *number > n);
        self.members.clear(); // re-read per batch: membership may change
        self.persist(vec![(
            NEXT_KEY.to_vec(),
            serde_json::to_vec(&self.next).expect("a number"),
        )])
        .await;
        Ok(())
    }

    /// Judges a gossiped approval and keeps it if it is useful.
    async fn judge(&mut self, message: Gossip) {
        let acceptance = self.verdict(&message.data).await;
        match acceptance {
            MessageAcceptance::Accept => self.a.metrics.chain_approvals_accepted.inc(),
            MessageAcceptance::Reject => self.a.metrics.chain_approvals_rejected.inc(),
            MessageAcceptance::Ignore => 0,
        };
        let _ = self.a.net.try_send(Command::Validated {
            id: message.id,
            source: message.source,
            acceptance,
        });
    }

    async fn verdict(&mut self, data: &[u8]) -> MessageAcceptance {
        if data.len() > MAX_APPROVAL_MESSAGE {
            return MessageAcceptance::Reject;
        }
        let Ok(message) = serde_json::from_slice::<ApprovalMessage>(data) else {
            return MessageAcceptance::Reject;
        };
        let Some(chain) = self.chain.as_ref() else {
            return MessageAcceptance::Ignore;
        };
        if message.ledger != self.a.settings.ledger
            || message.chain_id != chain.chain_id()
            || message.header.market != self.a.settings.market_index
        {
            return MessageAcceptance::Ignore;
        }
        if message.header.number < self.next {
            return MessageAcceptance::Ignore; // already anchored
        }
        if self.members.is_empty() && self.refresh_members().await.is_err() {
            return MessageAcceptance::Ignore;
        }
        let header = BatchHeader::from(&message.header);
        let digest = self.digest(&header);
        let index = message.approval.member_index;
        let Some(signer) = message.approval.signer(digest) else {
            return MessageAcceptance::Reject;
        };
        if self.members.get(usize::from(index)) != Some(&signer) {
            // Either list may be out of date after a membership change:
            // re-read ours (at most every few seconds), then judge.
            if now_ms().saturating_sub(self.members_read_ms) >= MEMBERS_REREAD_MS
                && self.refresh_members().await.is_err()
            {
                return MessageAcceptance::Ignore;
            }
            if self.members.get(usize::from(index)) != Some(&signer) {
                // A member naming an old index is honest but behind: not
                // counted against it. A signer our fresh list does not have
                // is no member (a stranger, or one removed): refused.
                return if self.members.contains(&signer) {
                    MessageAcceptance::Ignore
                } else {
                    MessageAcceptance::Reject
                };
            }
        }
        let mine = self
            .batch
            .as_ref()
            .filter(|b| b.header.number == header.number)
            .map(|b| self.digest(&b.header));
        if mine == Some(digest) {
            if self
                .pending
                .approvals
                .insert(index, message.approval)
                .is_none()
            {
                self.dirty = true;
            }
        } else if mine.is_none()
            && header.number <= self.next + 1
            && (self.early.len() < MAX_EARLY_HEADERS
                || self.early.contains_key(&(header.number, digest)))
        {
            // Bounded: a member signing many different headers cannot
            // grow this without limit.
            self.early
                .entry((header.number, digest))
                .or_default()
                .insert(index, message.approval);
        }
        MessageAcceptance::Accept
    }
}

/// `approvals` of `digest` filed under their signers' indices in
/// `members`; approvals by non-members and bad signatures are dropped.
fn reindexed<'a>(
    approvals: impl Iterator<Item = &'a Approval>,
    members: &[Address],
    digest: B256,
) -> BTreeMap<u16, Approval> {
    approvals
        .filter_map(|approval| {
            let signer = approval.signer(digest)?;
            let index = members.iter().position(|m| *m == signer)?;
            let index = u16::try_from(index).ok()?;
            Some((
                index,
                Approval {
                    member_index: index,
                    ..*approval
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approvals_follow_their_signers_to_new_indices_and_removed_members_drop_out() {
        let keys: Vec<PrivateKeySigner> = (0..4).map(|_| PrivateKeySigner::random()).collect();
        let digest = B256::repeat_byte(7);
        let held: BTreeMap<u16, Approval> = (0..4u16)
            .map(|i| (i, Approval::sign(&keys[usize::from(i)], i, digest)))
            .collect();
        // Member 1 removed: the last member (3) takes its index.
        let members = vec![keys[0].address(), keys[3].address(), keys[2].address()];
        let moved = reindexed(held.values(), &members, digest);
        assert_eq!(moved.len(), 3);
        for (index, approval) in &moved {
            assert_eq!(approval.member_index, *index);
            assert_eq!(approval.signer(digest), Some(members[usize::from(*index)]));
        }
        // Nothing moved: nothing changes.
        let all: Vec<Address> = keys.iter().map(PrivateKeySigner::address).collect();
        assert_eq!(reindexed(held.values(), &all, digest), held);
        // An approval of another digest signs nobody in the list.
        assert!(reindexed(held.values(), &all, B256::repeat_byte(8)).is_empty());
        // Two approvals filed under one old index (held early, and kept
        // from before a restart) both survive, each under its signer.
        let clash = [
            Approval::sign(&keys[3], 1, digest),
            Approval::sign(&keys[0], 1, digest),
        ];
        let both = reindexed(clash.iter(), &members, digest);
        assert_eq!(both.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn a_split_sums_to_the_total_and_follows_the_weights() {
        let a = Address::repeat_byte(1);
        let b = Address::repeat_byte(2);
        let c = Address::repeat_byte(3);
        let weights: BTreeMap<Address, u64> = [(a, 300), (b, 100), (c, 200)].into();
        let out = split(100, &weights);
        assert_eq!(out.values().sum::<u64>(), 100);
        assert_eq!(out[&a], 51); // 50 and the remainder
        assert_eq!(out[&b], 16);
        assert_eq!(out[&c], 33);
        assert!(split(10, &BTreeMap::new()).is_empty());
    }
}
