//! `dharti demo`: a neighbourhood of real daemons on this machine.
//!
//! It makes N nodes under `OUT/nodes` (`dharti init` for each), lists every
//! member in every config, gives each a simulated meter (the shared load and
//! weather data, replaying a sunny June day from 10:00 at one quarter-hour
//! per interval, so that short intervals still see the sun) and a trading
//! agent, and starts each as its own `dharti run` process on 127.0.0.1 with
//! port 0 (mDNS off: nothing leaves the machine). Each node dials up to
//! eight of the nodes started before it. It then watches the nodes' APIs,
//! prints one line per final interval, and after K intervals stops every
//! daemon with SIGTERM and writes `OUT/summary.json`. Ctrl-C stops early,
//! just as cleanly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;

use crate::client;
use crate::config::Config;
use crate::driver::now_ms;
use crate::run::{self, InitOptions, RunInfo};

#[derive(Debug)]
pub struct DemoOptions {
    pub nodes: usize,
    pub interval_s: u64,
    pub intervals: u64,
    pub out: PathBuf,
    pub data: Option<PathBuf>,
    /// The market's `max_offers_per_participant` (at least 16).
    pub max_offers: u32,
    /// Each node's `network.max_connections`.
    pub max_connections: u32,
    /// Where batches are anchored (`--chain`).
    pub chain: crate::demo_chain::DemoChain,
}

/// Intervals per anchored batch in the demo: two, so its default six
/// intervals anchor three batches.
pub const DEMO_BATCH_INTERVALS: u64 = 2;

/// `summary.json`.
#[derive(Debug, Serialize)]
pub struct DemoSummary {
    pub nodes: usize,
    pub intervals: u64,
    pub finalized: u64,
    /// Share of (node, interval) pairs whose result hash equals the
    /// majority's, over the intervals watched.
    pub agreement_rate: f64,
    pub trades: u64,
    pub volume_wh: u64,
    /// Per node, interval → result hash.
    pub per_node_result_hashes: Vec<BTreeMap<u64, String>>,
    pub api_urls: Vec<String>,
    pub interval_s: u64,
    /// Batches committed and settled on chain.
    pub anchored_batches: u64,
    /// Trades whose Merkle proof the ledger verified.
    pub proofs_verified: u64,
    /// Every node's escrow changed by exactly the sum of its off-chain net
    /// positions over the anchored batches (and the grid operator's by the fees).
    pub onchain_balances_match: bool,
    pub certificates_issued_wh: u64,
    /// The chain's details (none without `--chain`).
    pub chain: Option<crate::demo_chain::ChainSummary>,
}

#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    pub config: PathBuf,
    pub info: Option<RunInfo>,
}

/// The API URLs of started daemons, in order.
pub fn api_urls(daemons: &[Daemon]) -> Vec<String> {
    daemons
        .iter()
        .map(|d| {
            d.info
                .as_ref()
                .map(|i| i.api_url.clone())
                .unwrap_or_default()
        })
        .collect()
}

fn timing(interval_s: u64) -> (u64, u64) {
    // Gate lead and reconciliation window: a fifth and a seventh of the
    // interval (at least 2 s each), the defaults' proportions for a 15-min
    // interval being far smaller but a loopback network far faster.
    ((interval_s / 5).max(2), (interval_s / 7).max(2))
}

/// Makes `o.nodes` nodes of one market under `o.out/nodes`; with `trade`,
/// each gets a simulated meter and the agent (the demo), else neither (the
/// mesh benchmark places offers itself).
/// `extra_members` join every node's member list (a test's own peer).
pub fn make_nodes(
    o: &DemoOptions,
    start_s: u64,
    trade: bool,
    extra_members: &[String],
) -> anyhow::Result<Vec<PathBuf>> {
    let root = o.out.join("nodes");
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot clear the last demo's nodes in {}", root.display()))?;
    }
    let mut made = Vec::new();
    for i in 0..o.nodes {
        made.push(run::init(&InitOptions {
            dir: root.join(format!("node{i}")),
            market: "dharti-demo".into(),
            api_listen: "127.0.0.1:0".into(),
            listen: vec![
                "/ip4/127.0.0.1/tcp/0".into(),
                "/ip4/127.0.0.1/udp/0/quic-v1".into(),
            ],
        })?);
    }
    let members: Vec<String> = made
        .iter()
        .map(|m| &m.participant)
        .chain(extra_members)
        .map(|p| format!("\"{p}\""))
        .collect();
    let (gate_s, window_s) = timing(o.interval_s);
    let data = o
        .data
        .clone()
        .unwrap_or_else(dharti_simulations::data::default_dir);
    let data = if !trade {
        data
    } else {
        std::fs::canonicalize(&data).with_context(|| {
            format!(
                "the load and weather data are not in {} (set --data or DHARTI_DATA)",
                data.display()
            )
        })?
    };
    let anchor = dharti_simulations::time::format_rfc3339(start_s);
    for (i, m) in made.iter().enumerate() {
        let text = std::fs::read_to_string(&m.config)?;
        let first = text
            .find("members = [")
            .context("the template lists members")?;
        let end = first + text[first..].find(']').context("the member list ends")? + 1;
        let mut text = format!(
            "{}members = [{}]{}",
            &text[..first],
            members.join(", "),
            &text[end..]
        );
        text = text
            .replace(
                "interval = \"15m\"",
                &format!("interval = \"{}s\"", o.interval_s),
            )
            .replace("gate_lead = \"60s\"", &format!("gate_lead = \"{gate_s}s\""))
            .replace(
                "reconcile_window = \"20s\"",
                &format!("reconcile_window = \"{window_s}s\""),
            )
            .replace("mdns = true", "mdns = false")
            .replace(
                "max_connections = 64",
                &format!("max_connections = {}", o.max_connections),
            )
            .replace(
                "max_offers_per_participant = 16",
                &format!("max_offers_per_participant = {}", o.max_offers.max(16)),
            );
        // Households differ: three in five have PV, sizes and limits vary.
        let pv_kwp = if i % 5 < 3 {
            4.0 + (i % 4) as f64 * 1.5
        } else {
            0.0
        };
        let meter = format!(
            "kind = \"simulated\"\ndata_dir = \"{}\"\nannual_kwh = {}\npv_kwp = {pv_kwp}\nseed = {i}\nreplay_anchor = \"{anchor}\"\nprofile_start = \"2025-06-02T10:00:00Z\"\nprofile_step = \"15m\"\n",
            data.display(),
            2_500 + (i % 5) * 700,
        );
        if trade {
            text = text.replace("kind = \"none\"\n", &meter);
        }
        text = text
            .replace(
                "enabled = false",
                if trade {
                    "enabled = true"
                } else {
                    "enabled = false"
                },
            )
            .replace(
                "min_sell_price_micro_per_kwh = 100000",
                &format!(
                    "min_sell_price_micro_per_kwh = {}",
                    95_000 + (i % 4) * 10_000
                ),
            )
            .replace(
                "max_buy_price_micro_per_kwh = 280000",
                &format!(
                    "max_buy_price_micro_per_kwh = {}",
                    280_000 - (i % 3) * 15_000
                ),
            );
        std::fs::write(&m.config, text)?;
        // Checks what the demo wrote, as the daemon will.
        Config::load(&m.config)?;
    }
    Ok(made.into_iter().map(|m| m.config).collect())
}

fn set_bootstrap(config: &Path, peers: &[String]) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)?;
    let list = peers
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        config,
        text.replace("bootstrap = []", &format!("bootstrap = [{list}]")),
    )?;
    Ok(())
}

fn spawn(binary: &Path, config: &Path) -> anyhow::Result<Child> {
    let dir = config.parent().context("config has a directory")?;
    // A daemon killed with -9 leaves its run.json: not this one's address.
    let _ = std::fs::remove_file(run::run_info_path(config));
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    std::process::Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        // The caller's log filter, if set, reaches the daemons' logs.
        .env(
            "DHARTI_LOG",
            std::env::var("DHARTI_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start a daemon")
}

fn wait_info(d: &mut Daemon, until: Instant) -> anyhow::Result<RunInfo> {
    loop {
        if let Ok(info) = run::read_run_info(&d.config) {
            return Ok(info);
        }
        if let Some(status) = d.child.try_wait()? {
            bail!(
                "a daemon exited ({status}) before it listened; see {}",
                d.config.with_file_name("daemon.log").display()
            );
        }
        ensure!(Instant::now() < until, "a daemon did not start within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn stop(daemons: &mut [Daemon]) {
    for d in daemons.iter() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &d.child.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for d in daemons.iter_mut() {
        while d.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if d.child.try_wait().ok().flatten().is_none() {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
    }
}

pub(crate) fn get(url: &str, path: &str) -> Option<serde_json::Value> {
    let (status, body) = client::request(url, "GET", path, None, None).ok()?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

pub fn run(o: &DemoOptions) -> anyhow::Result<()> {
    ensure!(
        o.nodes >= 2,
        "--nodes must be at least 2 (a market needs neighbours)"
    );
    ensure!(o.intervals >= 1, "--intervals must be at least 1");
    ensure!(
        (10..=3_600).contains(&o.interval_s),
        "--interval-s must be between 10 and 3600"
    );
    let stopping = Arc::new(AtomicBool::new(false));
    {
        // Ctrl-C reaches the daemons too (one process group); the demo
        // itself stops watching, waits for them and writes its summary.
        let stopping = stopping.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            runtime.block_on(async {
                // SIGTERM too: the demo then stops its daemons itself.
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            });
            stopping.store(true, Ordering::SeqCst);
        });
    }
    let start_s = now_ms() / 1_000;
    let interval_s = o.interval_s;
    // Meters replay from the first interval that starts after the nodes are up.
    let anchor_s = (start_s / interval_s + 1) * interval_s;
    let configs = make_nodes(o, anchor_s, true, &[])?;
    crate::say!(
        "dharti demo: {} daemons on 127.0.0.1, {}-second intervals; logs and data in {}",
        o.nodes,
        o.interval_s,
        o.out.join("nodes").display()
    );
    // Batches start with the first interval that starts after the nodes do.
    let anchor_from = anchor_s / interval_s + 1;
    let chain_node = crate::demo_chain::start(o.chain)?;
    let chain_setup = match &chain_node {
        Some(node) => {
            let setup = crate::demo_chain::setup(
                node,
                &configs,
                "dharti-demo",
                anchor_from,
                DEMO_BATCH_INTERVALS,
                interval_s,
            )?;
            crate::say!(
                "chain: {} at {}, SettlementLedger {}, batches of {} intervals",
                node.kind_name(),
                node.url,
                setup.deployment.ledger,
                DEMO_BATCH_INTERVALS
            );
            Some(setup)
        }
        None => None,
    };
    let mut daemons: Vec<Daemon> = Vec::new();
    let result = watch(o, &configs, &mut daemons, &stopping);
    // Let the last batches be anchored: each is due half an interval after
    // it ends, once its meters are settled.
    if let (Ok(_), Some(node), Some(setup)) = (&result, &chain_node, &chain_setup) {
        let batches = o.intervals / DEMO_BATCH_INTERVALS;
        let deadline = Instant::now() + Duration::from_secs(interval_s * 4 + 20);
        while !stopping.load(Ordering::SeqCst) && Instant::now() < deadline {
            let done = crate::demo_chain::anchored(node, setup).unwrap_or(0);
            if done >= batches {
                // The issuer certifies a batch on its next tick after it.
                std::thread::sleep(Duration::from_secs(3));
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    stop(&mut daemons);
    let mut summary = result?;
    if let (Some(node), Some(setup)) = (&chain_node, &chain_setup) {
        let chain = crate::demo_chain::check(node, setup, &configs)?;
        summary.anchored_batches = chain.anchored_batches;
        summary.proofs_verified = chain.proofs_verified;
        summary.onchain_balances_match = chain.onchain_balances_match;
        summary.certificates_issued_wh = chain.certificates_issued_wh;
        crate::say!(
            "chain: {} batches anchored, {} trade proofs verified, on-chain balances {} the off-chain settlements",
            chain.anchored_batches,
            chain.proofs_verified,
            if chain.onchain_balances_match {
                "match"
            } else {
                "DO NOT match"
            }
        );
        summary.chain = Some(chain);
    }
    std::fs::create_dir_all(&o.out)?;
    let path = o.out.join("summary.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)?;
    crate::say!(
        "\n{} of {} intervals final, agreement {:.0} %, {} trades, {:.2} kWh traded; all daemons stopped",
        summary.finalized,
        summary.intervals,
        summary.agreement_rate * 100.0,
        summary.trades,
        summary.volume_wh as f64 / 1_000.0
    );
    crate::say!("summary: {}", path.display());
    Ok(())
}

/// Starts a daemon per config, each dialling up to `dial` of those started
/// before it, and waits until each listens.
pub fn start_all(
    configs: &[PathBuf],
    daemons: &mut Vec<Daemon>,
    dial: usize,
) -> anyhow::Result<()> {
    start_all_with(&std::env::current_exe()?, configs, daemons, dial)
}

/// [`start_all`] with another `dharti` binary (tests run from their own).
pub fn start_all_with(
    binary: &Path,
    configs: &[PathBuf],
    daemons: &mut Vec<Daemon>,
    dial: usize,
) -> anyhow::Result<()> {
    let mut addresses: Vec<String> = Vec::new();
    for config in configs {
        let first = addresses.len().saturating_sub(dial);
        set_bootstrap(config, &addresses[first..])?;
        let child = spawn(binary, config)?;
        daemons.push(Daemon {
            child,
            config: config.clone(),
            info: None,
        });
        let d = daemons.last_mut().expect("just pushed");
        let info = wait_info(d, Instant::now() + Duration::from_secs(30))?;
        if let Some(tcp) = info.listen.iter().find(|a| a.contains("/tcp/")) {
            addresses.push(format!("{tcp}/p2p/{}", info.peer_id));
        }
        d.info = Some(info);
    }
    Ok(())
}

fn watch(
    o: &DemoOptions,
    configs: &[PathBuf],
    daemons: &mut Vec<Daemon>,
    stopping: &AtomicBool,
) -> anyhow::Result<DemoSummary> {
    start_all(configs, daemons, 8)?;
    let urls = api_urls(daemons);
    crate::say!(
        "\n{:>10}  {:>12}  {:>10}  {:>9}  result",
        "interval",
        "price ct/kWh",
        "volume Wh",
        "agreement"
    );
    let mut hashes: Vec<BTreeMap<u64, String>> = vec![BTreeMap::new(); urls.len()];
    let mut results: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
    let mut printed: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(o.interval_s * (o.intervals + 3) + 30);
    let mut first_interval: Option<u64> = None;
    while !stopping.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        for (i, url) in urls.iter().enumerate() {
            let Some(status) = get(url, "/api/v1/status") else {
                continue;
            };
            let Some(last) = status["last_final_interval"].as_u64() else {
                continue;
            };
            first_interval.get_or_insert(last);
            let from = first_interval.unwrap_or(last);
            for n in from..=last {
                if hashes[i].contains_key(&n) {
                    continue;
                }
                if let Some(v) = get(url, &format!("/api/v1/intervals/{n}"))
                    && let Some(hash) = v["result"]["result_hash"].as_str()
                {
                    hashes[i].insert(n, hash.to_string());
                    results.entry(n).or_insert(v["result"].clone());
                }
            }
        }
        let Some(from) = first_interval else { continue };
        // Print an interval once every node has it (or the next is final).
        for n in from..from + o.intervals {
            if printed.contains(&n) {
                continue;
            }
            let have = hashes.iter().filter(|h| h.contains_key(&n)).count();
            let later = hashes.iter().any(|h| h.keys().any(|k| *k > n + 1));
            if have == 0 || (have < hashes.len() && !later) {
                break;
            }
            let (agree, majority) = agreement(&hashes, n);
            let r = &results[&n];
            let price = r["clearing_price_micro_per_kwh"]
                .as_u64()
                .map_or("-".to_string(), |p| format!("{:.2}", p as f64 / 10_000.0));
            crate::say!(
                "{n:>10}  {price:>12}  {:>10}  {:>5}/{:<3}  {}",
                r["volume_wh"].as_u64().unwrap_or(0),
                agree,
                hashes.len(),
                &majority[..16.min(majority.len())]
            );
            printed.push(n);
        }
        if printed.len() as u64 >= o.intervals {
            break;
        }
        for d in daemons.iter_mut() {
            if let Some(status) = d.child.try_wait()? {
                bail!(
                    "a daemon exited ({status}); see {}",
                    d.config.with_file_name("daemon.log").display()
                );
            }
        }
    }
    let watched: Vec<u64> = printed.clone();
    let mut agree_pairs = 0u64;
    let mut trades = 0u64;
    let mut volume_wh = 0u64;
    for n in &watched {
        agree_pairs += agreement(&hashes, *n).0 as u64;
        if let Some(r) = results.get(n) {
            trades += r["trades"].as_array().map_or(0, |t| t.len() as u64);
            volume_wh += r["volume_wh"].as_u64().unwrap_or(0);
        }
    }
    let pairs = (watched.len() * hashes.len()).max(1) as f64;
    Ok(DemoSummary {
        nodes: o.nodes,
        intervals: o.intervals,
        finalized: watched.len() as u64,
        agreement_rate: if watched.is_empty() {
            0.0
        } else {
            agree_pairs as f64 / pairs
        },
        trades,
        volume_wh,
        per_node_result_hashes: hashes,
        api_urls: urls,
        interval_s: o.interval_s,
        anchored_batches: 0,
        proofs_verified: 0,
        onchain_balances_match: false,
        certificates_issued_wh: 0,
        chain: None,
    })
}

/// How many nodes hold the most common hash of interval `n`, and that hash.
fn agreement(hashes: &[BTreeMap<u64, String>], n: u64) -> (usize, String) {
    let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
    for h in hashes {
        if let Some(x) = h.get(&n) {
            *counts.entry(x).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, c)| *c)
        .map(|(h, c)| (c, h.clone()))
        .unwrap_or_default()
}
