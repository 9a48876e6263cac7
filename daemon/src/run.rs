//! `dharti init` and `dharti run`: making a node's files, and starting the
//! daemon's tasks (network, market, API) until Ctrl-C or SIGTERM.
//!
//! Once the daemon listens, it writes `run.json` beside its config: the API
//! URL and the libp2p addresses actually bound (the config may say port 0),
//! so that scripts, the demo and the tests find it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use dharti_storage::Store;
use libp2p::Multiaddr;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::{self, Config};
use crate::driver::{self, Driver};
use crate::identity::{self, Identity};
use crate::meter::Meter;
use crate::metrics::Metrics;
use crate::network::{self, Command, NetworkConfig};

/// Options of `dharti init`.
#[derive(Debug)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub market: String,
    pub api_listen: String,
    pub listen: Vec<String>,
}

/// What `init` made, for the caller to print.
#[derive(Debug, Serialize)]
pub struct Initialized {
    pub config: PathBuf,
    pub participant: String,
    pub peer_id: String,
    pub did: String,
}

pub fn init(options: &InitOptions) -> anyhow::Result<Initialized> {
    let config_path = options.dir.join("config.toml");
    let key_path = options.dir.join("node.key");
    let token_path = options.dir.join("api.token");
    let evm_key_path = options.dir.join("evm.key");
    for path in [&config_path, &key_path, &token_path, &evm_key_path] {
        ensure!(
            !path.exists(),
            "{} exists already: init never overwrites a node; use another --dir",
            path.display()
        );
    }
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("cannot create {}", options.dir.display()))?;
    let identity = Identity::generate()?;
    identity.write(&key_path)?;
    identity::write_secret(&token_path, &identity::new_token()?)?;
    // The node's EVM account, for settlement approvals and chain
    // transactions ([chain] in the config; unused until anchoring is on).
    let evm_key = dharti_contracts::alloy::signers::local::PrivateKeySigner::random();
    identity::write_secret(
        &evm_key_path,
        &format!("{}\n", hex::encode(evm_key.to_bytes())),
    )?;
    let text = config::template(
        &options.market,
        &[identity.participant],
        &options.api_listen,
        &options.listen,
    );
    std::fs::write(&config_path, text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    Ok(Initialized {
        config: config_path,
        participant: identity.participant.to_string(),
        peer_id: identity.peer_id.to_string(),
        did: identity.did(),
    })
}

/// Where a running daemon can be reached; written to `run.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub pid: u32,
    pub api_url: String,
    pub peer_id: String,
    pub participant: String,
    pub listen: Vec<String>,
}

pub fn run_info_path(config_path: &Path) -> PathBuf {
    config_path.with_file_name("run.json")
}

fn parse_addrs(key: &str, list: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<Multiaddr>().with_context(|| {
                format!("{key}[{i}] = {a:?} is not a multiaddr (like /ip4/0.0.0.0/tcp/4001)")
            })
        })
        .collect()
}

/// Runs the daemon until Ctrl-C / SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let identity = Identity::load(&config.path(&config.node.key_file))?;
    let token = identity::read_token(&config.path(&config.node.token_file))?;
    let node_config = config.node_config()?;
    ensure!(
        node_config.members.contains(&identity.participant),
        "this node ({}) is not in market.members; add it (every member lists every member)",
        identity.participant
    );
    let listen = parse_addrs("network.listen", &config.network.listen)?;
    let bootstrap = parse_addrs("network.bootstrap", &config.network.bootstrap)?;
    let data_dir = config.path(&config.node.data_dir);
    let store = Arc::new(
        Store::open(&data_dir)
            .with_context(|| format!("cannot open the history in {}", data_dir.display()))?,
    );
    let meter = Meter::from_config(&config, node_config.rules.clock)?;
    let agent = Driver::agent_settings(&config);

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let (network, net, events) = network::start(
        identity.keypair.clone(),
        &NetworkConfig {
            market_topic: network::topic_name(&node_config.rules.market_id),
            chain_topic: config
                .chain
                .enabled()
                .then(|| network::chain_topic_name(&node_config.rules.market_id)),
            listen,
            bootstrap,
            mdns: config.network.mdns,
            max_connections: config.network.max_connections,
            max_connections_per_peer: config.network.max_connections_per_peer,
            target_peers: config.network.target_peers as usize,
        },
        &mut registry,
        metrics.clone(),
    )?;
    let shutdown = CancellationToken::new();
    let network_task = tokio::spawn(network.run(shutdown.clone()));
    let chain = if config.chain.enabled() {
        Some(config.chain_settings()?)
    } else {
        None
    };

    let (requests_tx, requests) = mpsc::channel(driver::REQUEST_CAPACITY);
    let driver = Driver::new(
        node_config.clone(),
        identity.clone(),
        config.market.name.clone(),
        store.clone(),
        net.clone(),
        metrics.clone(),
        meter,
        agent,
    );
    let driver = match &chain {
        Some(settings) => {
            let (gossip_tx, gossip_rx) = mpsc::channel(256);
            let anchor = crate::anchor::Anchor {
                settings: settings.clone(),
                market: node_config.rules.market_id,
                clock: node_config.rules.clock,
                store: store.clone(),
                requests: requests_tx.clone(),
                net: net.clone(),
                metrics: metrics.clone(),
            };
            tokio::spawn(crate::anchor::run(anchor, gossip_rx, shutdown.clone()));
            driver.with_anchor(gossip_tx)
        }
        None => driver,
    };
    let driver_task = tokio::spawn(driver.run(events, requests, shutdown.clone()));

    let api_addr = config.api_listen()?;
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("api.listen: cannot bind {api_addr}"))?;
    let api_addr = listener.local_addr()?;
    let state = ApiState {
        requests: requests_tx,
        net: net.clone(),
        store: store.clone(),
        market: node_config.rules.market_id,
        me: identity.participant,
        token: token.into(),
        registry: Arc::new(registry),
        metrics,
        chain: chain.clone(),
    };
    let api_shutdown = shutdown.clone();
    let api_task = tokio::spawn(async move {
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move { api_shutdown.cancelled().await })
            .await
    });

    // Tell the world where we are once libp2p has bound its ports.
    let mut bound = Vec::new();
    for _ in 0..50 {
        let (tx, rx) = oneshot::channel();
        net.send(Command::ListenAddrs(tx)).await.ok();
        bound = rx.await.unwrap_or_default();
        if bound.len() >= config.network.listen.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = RunInfo {
        pid: std::process::id(),
        api_url: format!("http://{api_addr}"),
        peer_id: identity.peer_id.to_string(),
        participant: identity.participant.to_string(),
        listen: bound.iter().map(ToString::to_string).collect(),
    };
    let info_path = run_info_path(config_path);
    std::fs::write(&info_path, serde_json::to_vec_pretty(&info)?)
        .with_context(|| format!("cannot write {}", info_path.display()))?;
    tracing::info!(api = %info.api_url, peer = %info.peer_id, "dharti.started");

    let signals = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        signals.cancel();
    });

    let driver_result = driver_task.await.context("the market task panicked")?;
    shutdown.cancel();
    let _ = network_task.await;
    let _ = api_task.await;
    let _ = std::fs::remove_file(&info_path);
    driver_result
}

pub fn read_run_info(config_path: &Path) -> anyhow::Result<RunInfo> {
    let path = run_info_path(config_path);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {}: is the daemon running (`dharti run --config {}`)?",
            path.display(),
            config_path.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid", path.display()))
}
