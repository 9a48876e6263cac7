//! The demo's chain: an embedded chain served over JSON-RPC on 127.0.0.1
//! (`dharti chain node` in-process) or an anvil, the contracts deployed,
//! every node a ledger member with escrow, and a `[chain]` section in every
//! node's config. After the run it checks, from the stores and the chain,
//! what `summary.json` reports: batches anchored, trade proofs verified,
//! and that every node's escrow moved by exactly its off-chain settlements.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use anyhow::Context;
use dharti_contracts::alloy::primitives::{Address, I256, U256, keccak256};
use dharti_contracts::alloy::signers::local::PrivateKeySigner;
use dharti_contracts::bindings::{EnergyCertificates, SettlementLedger};
use dharti_contracts::{Chain, Contract, Deployment, Preset, deploy_all};
use serde::Serialize;

use crate::anchor::{self, ChainSettings};
use crate::config::Config;

/// Native EWT per money unit: 1 EWT stands for 1 euro (10¹⁸ wei per
/// 10⁶ micro-euro).
pub const NATIVE_SCALE: u64 = 1_000_000_000_000;
/// Each node's escrow deposit: 1,000 EWT.
const DEPOSIT_MICRO: u64 = 1_000_000_000;

/// Which chain the demo anchors on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoChain {
    None,
    Embedded,
    Anvil,
}

impl std::str::FromStr for DemoChain {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(DemoChain::None),
            "embedded" => Ok(DemoChain::Embedded),
            "anvil" => Ok(DemoChain::Anvil),
            other => Err(format!("--chain {other:?}: use embedded, anvil or none")),
        }
    }
}

/// What `summary.json` says about the chain.
#[derive(Debug, Default, Serialize)]
pub struct ChainSummary {
    pub chain: String,
    pub ledger: String,
    pub anchored_batches: u64,
    /// Trades in the anchored batches, each of whose proofs is checked.
    pub trades_anchored: u64,
    pub proofs_verified: u64,
    pub onchain_balances_match: bool,
    pub certificates_issued_wh: u64,
    /// Per node: escrow change on chain and the sum of its anchored
    /// off-chain net positions, in micro-units.
    pub balances: Vec<BalanceCheck>,
}

#[derive(Debug, Serialize)]
pub struct BalanceCheck {
    pub node: usize,
    pub onchain_change_micro: i64,
    pub offchain_net_micro: i64,
}

/// A running chain for the demo; stops it when dropped.
#[derive(Debug)]
pub struct DemoChainNode {
    pub url: String,
    pub kind: DemoChain,
    anvil: Option<Child>,
    _runtime: Option<tokio::runtime::Runtime>,
}

impl DemoChainNode {
    /// A chain someone else runs (a test's anvil), reached at `url`.
    pub fn external(url: String, kind: DemoChain) -> DemoChainNode {
        DemoChainNode {
            url,
            kind,
            anvil: None,
            _runtime: None,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            DemoChain::Anvil => "anvil",
            _ => "embedded EVM",
        }
    }
}

impl Drop for DemoChainNode {
    fn drop(&mut self) {
        if let Some(child) = self.anvil.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts anvil on 127.0.0.1 (a free port), a block every second.
pub fn start_anvil() -> anyhow::Result<(Child, String)> {
    dharti_contracts::anvil::spawn(&["--block-time", "1"])
        .context("--chain anvil (`npm ci` installs anvil into node_modules; ./scripts/test does)")
}

/// Starts the chain the demo asked for.
pub fn start(kind: DemoChain) -> anyhow::Result<Option<DemoChainNode>> {
    match kind {
        DemoChain::None => Ok(None),
        DemoChain::Anvil => {
            let (child, url) = start_anvil()?;
            Ok(Some(DemoChainNode {
                url,
                kind,
                anvil: Some(child),
                _runtime: None,
            }))
        }
        DemoChain::Embedded => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
            let url = format!("http://{}", listener.local_addr()?);
            runtime.spawn(dharti_contracts::rpc_node::serve(
                listener,
                dharti_contracts::embedded::EmbeddedChain::new(),
                Duration::from_secs(1),
                std::future::pending(),
            ));
            Ok(Some(DemoChainNode {
                url,
                kind,
                anvil: None,
                _runtime: Some(runtime),
            }))
        }
    }
}

/// What the demo set up on the chain.
#[derive(Debug, Clone)]
pub struct Setup {
    pub deployment: Deployment,
    pub admin: PrivateKeySigner,
    pub node_keys: Vec<PrivateKeySigner>,
    pub grid_operator: Address,
    pub preset: Preset,
    pub url: String,
}

fn preset_of(kind: DemoChain) -> Preset {
    if kind == DemoChain::Anvil {
        Preset::Anvil
    } else {
        Preset::Embedded
    }
}

/// Runs `work` on a one-thread runtime (the demo itself is synchronous).
fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

async fn client(node: &DemoChainNode, keys: Vec<PrivateKeySigner>) -> anyhow::Result<Chain> {
    Ok(Chain::rpc(
        preset_of(node.kind),
        &node.url,
        keys,
        1,
        Duration::from_secs(30),
    )
    .await?)
}

/// Deploys the contracts, makes every node a member with escrow and writes
/// `[chain]` into every config. Batches start at `anchor_from`.
pub fn setup(
    node: &DemoChainNode,
    configs: &[PathBuf],
    market_name: &str,
    anchor_from: u64,
    batch_intervals: u64,
    committer_timeout_s: u64,
) -> anyhow::Result<Setup> {
    let mut node_keys = Vec::new();
    let mut participants = Vec::new();
    for config in configs {
        let dir = config.parent().context("a config has a directory")?;
        node_keys.push(anchor::load_evm_key(&dir.join("evm.key"))?);
        let loaded = Config::load(config)?;
        let me = crate::identity::Identity::load(&loaded.path(&loaded.node.key_file))?;
        participants.push(me.participant);
    }
    let admin = PrivateKeySigner::random();
    let grid_operator = PrivateKeySigner::random().address();
    let deployment = block_on(async {
        let mut keys = vec![admin.clone()];
        keys.extend(node_keys.iter().cloned());
        let chain = client(node, keys).await?;
        chain
            .set_balance(admin.address(), U256::from(10u128.pow(24)))
            .await?;
        let deployment = deploy_all(&chain, admin.address(), None).await?;
        let ledger = Contract::new(&chain, deployment.ledger);
        let members: Vec<Address> = node_keys.iter().map(PrivateKeySigner::address).collect();
        ledger
            .send(
                admin.address(),
                SettlementLedger::addMembersCall {
                    accounts: members.clone(),
                },
            )
            .await?;
        let threshold = u16::try_from(members.len() * 2 / 3 + 1).unwrap_or(u16::MAX);
        ledger
            .send(
                admin.address(),
                SettlementLedger::setThresholdCall { next: threshold },
            )
            .await?;
        ledger
            .send(
                admin.address(),
                SettlementLedger::registerMarketCall {
                    marketId: keccak256(market_name.as_bytes()),
                    inToken: false,
                    scale: NATIVE_SCALE,
                },
            )
            .await?;
        // The co-op issues certificates through the first node.
        Contract::new(&chain, deployment.certificates)
            .send(
                admin.address(),
                EnergyCertificates::setIssuerCall {
                    issuer: node_keys[0].address(),
                    enabled: true,
                },
            )
            .await?;
        let deposit = U256::from(DEPOSIT_MICRO) * U256::from(NATIVE_SCALE);
        for key in &node_keys {
            chain
                .set_balance(key.address(), deposit * U256::from(2))
                .await?;
            ledger
                .send_value(key.address(), SettlementLedger::depositCall {}, deposit)
                .await?;
        }
        anyhow::Ok(deployment)
    })?;

    let accounts: Vec<String> = participants
        .iter()
        .zip(&node_keys)
        .map(|(p, k)| format!("\"{p}\" = \"{}\"", k.address()))
        .collect();
    let preset = preset_of(node.kind);
    for config in configs {
        let text = std::fs::read_to_string(config)?;
        let section = format!(
            "preset = \"{preset}\"\nrpc_url = \"{}\"\nledger = \"{}\"\ncertificates = \"{}\"\nmarket_index = 1\nanchor_from_interval = {anchor_from}\nbatch_intervals = {batch_intervals}\nconfirmations = 1\ncommitter_timeout = \"{committer_timeout_s}s\"\ngrid_operator = \"{grid_operator}\"\naccounts = {{ {} }}\n",
            node.url,
            deployment.ledger,
            deployment.certificates,
            accounts.join(", "),
        );
        let text = text.replace("preset = \"none\"\n", &section);
        std::fs::write(config, text)?;
        Config::load(config)?;
    }
    Ok(Setup {
        deployment,
        admin,
        node_keys,
        grid_operator,
        preset,
        url: node.url.clone(),
    })
}

/// How many batches are committed and settled on chain now.
pub fn anchored(node: &DemoChainNode, setup: &Setup) -> anyhow::Result<u64> {
    block_on(async {
        let chain = client(node, vec![]).await?;
        let ledger = Contract::new(&chain, setup.deployment.ledger);
        let count = ledger
            .view(SettlementLedger::batchCountCall { market: 1 })
            .await?;
        let mut settled = 0;
        for n in 0..count {
            if ledger
                .view(SettlementLedger::isSettledCall {
                    market: 1,
                    number: n,
                })
                .await?
            {
                settled += 1;
            } else {
                break;
            }
        }
        anyhow::Ok(settled)
    })
}

/// After the daemons stopped: proofs and balances against the chain, from
/// the first node's store (the nodes agree; the demo checked it).
pub fn check(
    node: &DemoChainNode,
    setup: &Setup,
    configs: &[PathBuf],
) -> anyhow::Result<ChainSummary> {
    let anchored = anchored(node, setup)?;
    let config = Config::load(&configs[0])?;
    let settings: ChainSettings = config.chain_settings()?;
    let store = dharti_storage::Store::open(config.path(&config.node.data_dir))
        .context("the first node's history")?;
    let market = config.market_id();
    let mut offchain: BTreeMap<Address, i64> = BTreeMap::new();
    let mut batches = Vec::new();
    for n in 0..anchored {
        let batch = anchor::build_batch(&store, market, &settings, n)?.with_context(|| {
            format!("batch {n} is anchored but not complete in the first node's store")
        })?;
        for p in &batch.positions {
            *offchain.entry(p.account).or_default() +=
                i64::try_from(p.amount).context("an i64 amount")?;
        }
        batches.push(batch);
    }
    block_on(async {
        let chain = client(node, vec![]).await?;
        let ledger = Contract::new(&chain, setup.deployment.ledger);
        let mut proofs = 0;
        for batch in &batches {
            for (i, trade) in batch.trades.iter().enumerate() {
                let ok = ledger
                    .view(SettlementLedger::verifyTradeCall {
                        market: 1,
                        number: batch.header.number,
                        record: trade.clone(),
                        proof: batch.trade_proof(i).unwrap_or_default(),
                        netRoot: batch.header.netRoot,
                    })
                    .await?;
                proofs += u64::from(ok);
            }
        }
        let mut balances = Vec::new();
        let mut all_match = true;
        let deposit = I256::try_from(DEPOSIT_MICRO).expect("fits")
            * I256::try_from(NATIVE_SCALE).expect("fits");
        for (i, key) in setup.node_keys.iter().enumerate() {
            let now = ledger
                .view(SettlementLedger::nativeBalanceCall(key.address()))
                .await?;
            let change_wei = I256::from_raw(now) - deposit;
            let scale = I256::try_from(NATIVE_SCALE).expect("fits");
            let exact = change_wei % scale == I256::ZERO;
            let change = i64::try_from(change_wei / scale).unwrap_or(i64::MAX);
            let expected = offchain.get(&key.address()).copied().unwrap_or(0);
            all_match &= exact && change == expected;
            balances.push(BalanceCheck {
                node: i,
                onchain_change_micro: change,
                offchain_net_micro: expected,
            });
        }
        // Certificates issued so far (the issuer runs behind anchoring by a
        // batch at most).
        let certs = Contract::new(&chain, setup.deployment.certificates);
        let count = certs
            .view(EnergyCertificates::certificateCountCall {})
            .await?;
        let mut issued_wh = 0u64;
        for id in 1..=count.to::<u64>() {
            let c = certs
                .view(EnergyCertificates::getCertificateCall { id: U256::from(id) })
                .await?;
            issued_wh += c.volumeWh;
        }
        // The grid operator's fees too.
        let fees = ledger
            .view(SettlementLedger::nativeBalanceCall(setup.grid_operator))
            .await?;
        let expected_fees = offchain.get(&setup.grid_operator).copied().unwrap_or(0);
        all_match &= fees
            == U256::from(u64::try_from(expected_fees).unwrap_or(0)) * U256::from(NATIVE_SCALE);
        anyhow::Ok(ChainSummary {
            chain: match node.kind {
                DemoChain::Anvil => "anvil".into(),
                _ => "embedded".into(),
            },
            ledger: setup.deployment.ledger.to_string(),
            anchored_batches: anchored,
            trades_anchored: batches.iter().map(|b| b.trades.len() as u64).sum(),
            proofs_verified: proofs,
            onchain_balances_match: all_match && anchored > 0,
            certificates_issued_wh: issued_wh,
            balances,
        })
    })
}
