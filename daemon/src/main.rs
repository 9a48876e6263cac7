//! `dharti`: the Dharti daemon and its command line. This file parses the
//! command line and dispatches; each subcommand lives in its own module.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use dharti::{backup, bench, book, chain_cli, client, config, demo, identity, mesh, run, simulate};

/// Dharti: a peer-to-peer energy market with no central server.
///
/// Every household runs this daemon. The daemons gossip signed offers over
/// libp2p, agree on each interval's offers, clear them the same way, settle
/// what the meters measured and keep the history on disk.
#[derive(Debug, Parser)]
#[command(name = "dharti", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a command finds the node (the daemon's config file).
#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// The node's config file (written by `dharti init`).
    #[arg(
        long,
        short,
        env = "DHARTI_CONFIG",
        default_value = "dharti/config.toml"
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a neighbourhood of real daemons on this machine and watch them trade.
    ///
    /// Starts N `dharti run` processes on 127.0.0.1 (each with its own key,
    /// data directory and ports), with simulated meters replaying a sunny
    /// June day and trading agents, runs K intervals, prints a live table
    /// and writes DIR/summary.json. Ctrl-C stops every daemon cleanly.
    Demo {
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Interval length in seconds (10 or more).
        #[arg(long, default_value_t = 20)]
        interval_s: u64,
        #[arg(long, default_value_t = 6)]
        intervals: u64,
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
        /// Directory with the load and weather data
        /// (default: $DHARTI_DATA, else ../shared/data beside the workspace).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where settlement batches are anchored: embedded (an EVM in this
        /// process, served to the daemons over JSON-RPC), anvil (from
        /// node_modules or PATH) or none.
        #[arg(long, default_value = "embedded")]
        chain: dharti::demo_chain::DemoChain,
    },
    /// Make a new node: a key, an API token and a commented config.
    ///
    /// Writes DIR/node.key and DIR/api.token (mode 0600) and DIR/config.toml.
    /// Never overwrites. Prints the participant id to share with the other
    /// members (each member lists every member in market.members).
    Init {
        /// Directory for the node's files.
        #[arg(long, default_value = "dharti")]
        dir: PathBuf,
        /// The market's name; every member uses the same.
        #[arg(long)]
        market: String,
        /// Where the HTTP API listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        api_listen: String,
        /// libp2p listen addresses (TCP and QUIC by default).
        #[arg(long, default_values = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"])]
        listen: Vec<String>,
    },
    /// Run the daemon until Ctrl-C or SIGTERM.
    Run {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Place a bid or an ask, or cancel one, through the running daemon.
    Offer {
        #[command(flatten)]
        node: NodeArgs,
        /// bid, ask or cancel.
        action: String,
        /// Energy in Wh (bid and ask).
        #[arg(long, default_value_t = 0)]
        energy_wh: u64,
        /// Limit price in micro-units per kWh (bid and ask).
        #[arg(long, default_value_t = 0)]
        price_micro_per_kwh: u64,
        /// Interval index (default: the next one open); required to cancel.
        #[arg(long)]
        interval: Option<u64>,
        /// With cancel: which side (bid or ask).
        #[arg(long)]
        side: Option<String>,
    },
    /// The node's identity, market, peers and latest final interval.
    Status {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Connected peers with their addresses and gossip scores.
    Peers {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// The open intervals and the indicative price; or offline book tools.
    Market {
        #[command(flatten)]
        node: NodeArgs,
        #[command(subcommand)]
        tool: Option<MarketCommand>,
    },
    /// This node's trades in recent final intervals.
    Trades {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Recent final intervals: price, volume, result hash.
    History {
        #[command(flatten)]
        node: NodeArgs,
        /// How many intervals back from the latest final one.
        #[arg(long, default_value_t = 8)]
        intervals: u64,
    },
    /// Copy the node's history (a consistent snapshot), config and keys to DIR.
    ///
    /// Works with the daemon running (it takes the snapshot between two
    /// writes) or stopped. DIR must be new or empty; keys keep mode 0600.
    Backup {
        #[command(flatten)]
        node: NodeArgs,
        /// The new backup directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a node from a backup in a new directory (checked before writing).
    Restore {
        /// The backup directory (`dharti backup --out`).
        #[arg(long)]
        from: PathBuf,
        /// The new node directory; start it with `dharti run --config DIR/config.toml`.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Benchmarks of the daemon.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The settlement chain (Energy Web Chain, Volta, anvil or the embedded EVM).
    #[command(subcommand)]
    Chain(ChainCommand),
    /// Print a trade's Merkle proof and verify it against the anchored batch.
    ///
    /// TRADE_ID is INTERVAL-BID_ID-ASK_ID as `dharti trades` lists it. The
    /// running daemon builds the proof from its history; the ledger on
    /// chain checks it. Exits non-zero if the chain does not confirm it.
    Proof {
        #[command(flatten)]
        node: NodeArgs,
        trade_id: String,
    },
    /// Energy attribute certificates this node's account holds or claimed.
    Certificates {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Run a whole market of simulated households in this one process.
    ///
    /// Every household runs the Dharti protocol node over the simulator's
    /// lossy network: forty households, eight hours. Tables and plots are
    /// written to `--out`.
    Simulate {
        #[arg(long, default_value = "out/simulate")]
        out: PathBuf,
        /// Directory with the load and weather data
        /// (default: $DHARTI_DATA, else ../shared/data beside the workspace).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Seed instead of the scenario's own (same seed, same run).
        #[arg(long)]
        seed: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// N real daemons on loopback under offer load: propagation (p99 to all
    /// nodes, against one gossip hop measured in the same run), agreement,
    /// memory, idle CPU and disk writes per interval. One JSON line.
    Mesh {
        #[arg(long, default_value_t = 50)]
        nodes: usize,
        #[arg(long, default_value_t = 20)]
        interval_s: u64,
        /// Intervals under load.
        #[arg(long, default_value_t = 5)]
        intervals: u64,
        /// Offers each node places per interval (50 nodes × 20 = 1,000).
        #[arg(long, default_value_t = 20)]
        offers_per_node: u64,
        /// Seconds of idling measured after the load.
        #[arg(long, default_value_t = 30)]
        idle_s: u64,
        #[arg(long, default_value = "out/bench-mesh")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ChainCommand {
    /// Serve the embedded EVM over JSON-RPC (chain id 73799, London rules),
    /// a block every second, until Ctrl-C. For several daemons on one
    /// machine; state lives in memory only.
    Node {
        #[arg(long, default_value = "127.0.0.1:8545")]
        listen: String,
        #[arg(long, default_value_t = 1)]
        block_time_s: u64,
    },
    /// Deploy SettlementLedger and EnergyCertificates with this node's EVM
    /// key as admin (the co-op), add chain.accounts as members, register
    /// the market, make this node an issuer, and write the addresses into
    /// the config. The key needs gas funds (anvil and the embedded node
    /// mint them).
    Deploy {
        #[command(flatten)]
        node: NodeArgs,
        /// ewc, volta, anvil or embedded (a `dharti chain node`).
        #[arg(long)]
        preset: dharti_contracts::Preset,
        /// JSON-RPC URL (default: chain.rpc_url, else the preset's).
        #[arg(long)]
        rpc_url: Option<String>,
    },
    /// The ledger as the chain sees it: members, threshold, batches
    /// committed and settled, this node's escrow.
    Status {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Deposit escrow for this node's net positions: AMOUNT of the market's
    /// currency (e.g. 25 or 12.50), paid in the asset the market settles in
    /// (EWT or the ledger's ERC-20) at the market's scale, from this node's
    /// EVM key. A settlement that would overdraw the escrow waits for it.
    Deposit {
        #[command(flatten)]
        node: NodeArgs,
        amount: String,
    },
    /// Withdraw AMOUNT of the market's currency from this node's escrow;
    /// never more than the balance.
    Withdraw {
        #[command(flatten)]
        node: NodeArgs,
        amount: String,
    },
    /// What anchoring costs: commits and settles one batch of N trades with
    /// Q approvals on the embedded EVM and prints one JSON line (gas per
    /// batch, per trade, per participant's settlement, per proof check, and
    /// the largest share of an EWC block one transaction used).
    BenchGas {
        #[arg(long, default_value_t = 1000)]
        trades: usize,
        /// Members approving the batch (all of them: threshold = Q).
        #[arg(long, default_value_t = 10)]
        approvers: usize,
        /// Households trading (at least Q; the first Q are the members).
        /// Settlement takes one transaction per 32 accounts.
        #[arg(long)]
        households: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
enum MarketCommand {
    /// Clear an order book given as JSON and print the result as JSON.
    ///
    /// The book names its mechanism and tariff (see docs/market.md and
    /// examples/book.json); `--mechanism` overrides the file's choice.
    Clear {
        /// The order book: a JSON file, or `-` for standard input.
        book: PathBuf,
        /// One of: pay-as-clear, pay-as-clear:K_PPM (k in parts per million),
        /// pay-as-bid, sdr, mid-market, mcafee.
        #[arg(long, short)]
        mechanism: Option<String>,
    },
    /// Measure clearing and offer ingestion on a generated book, against
    /// baselines measured in the same run, and print one JSON line.
    Bench {
        /// Number of offers in the generated book.
        #[arg(long, default_value_t = 100_000)]
        offers: u32,
        /// Seed of the generated book; the same seed gives the same book.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Timed repetitions per measurement; the median is reported.
        #[arg(long, default_value_t = 5)]
        repeat: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Simulate { out, data, seed } => simulate::run(&out, data, seed).map(|story| {
            dharti::say!("{}", story.trim_end());
        }),
        Command::Demo {
            nodes,
            interval_s,
            intervals,
            out,
            data,
            chain,
        } => demo::run(&demo::DemoOptions {
            nodes,
            interval_s,
            intervals,
            out,
            data,
            max_offers: 16,
            max_connections: 64,
            chain,
        }),
        Command::Bench(BenchCommand::Mesh {
            nodes,
            interval_s,
            intervals,
            offers_per_node,
            idle_s,
            out,
        }) => mesh::run(&mesh::MeshOptions {
            nodes,
            interval_s,
            intervals,
            offers_per_node,
            idle_s,
            out,
        })
        .and_then(|report| print_json_line(&report)),
        Command::Chain(ChainCommand::Node {
            listen,
            block_time_s,
        }) => small_runtime().and_then(|rt| rt.block_on(chain_cli::node(&listen, block_time_s))),
        Command::Chain(ChainCommand::Deploy {
            node,
            preset,
            rpc_url,
        }) => small_runtime().and_then(|rt| rt.block_on(chain_cli::deploy(&node.config, preset, rpc_url))),
        Command::Chain(ChainCommand::Status { node }) => {
            small_runtime().and_then(|rt| rt.block_on(chain_cli::status(&node.config)))
        }
        Command::Chain(ChainCommand::Deposit { node, amount }) => small_runtime()
            .and_then(|rt| rt.block_on(chain_cli::escrow(&node.config, &amount, true))),
        Command::Chain(ChainCommand::Withdraw { node, amount }) => small_runtime()
            .and_then(|rt| rt.block_on(chain_cli::escrow(&node.config, &amount, false))),
        Command::Proof { node, trade_id } => {
            small_runtime().and_then(|rt| rt.block_on(chain_cli::proof(&node.config, &trade_id)))
        }
        Command::Certificates { node } => {
            small_runtime().and_then(|rt| rt.block_on(chain_cli::certificates(&node.config)))
        }
        Command::Chain(ChainCommand::BenchGas {
            trades,
            approvers,
            households,
        }) => small_runtime().and_then(|rt| {
            let households = households.unwrap_or(approvers);
            Ok(rt.block_on(dharti_contracts::bench::run(trades, approvers, households))?)
        })
            .and_then(|report| print_json_line(&report)),
        Command::Init {
            dir,
            market,
            api_listen,
            listen,
        } => run::init(&run::InitOptions {
            dir,
            market,
            api_listen,
            listen,
        })
        .map(|made| {
            dharti::say!("made {}", made.config.display());
            dharti::say!("participant {}", made.participant);
            dharti::say!("peer id     {}", made.peer_id);
            dharti::say!("did         {}", made.did);
            dharti::say!(
                "share the participant id with the other members; start with `dharti run --config {}`",
                made.config.display()
            );
        }),
        Command::Run { node } => daemon(&node.config),
        Command::Backup { node, out } => backup::backup(&node.config, &out).map(|info| {
            dharti::say!(
                "backed up {} ({} bytes of history{}) to {}",
                info.participant,
                info.snapshot_bytes,
                if info.live { ", from the running daemon" } else { "" },
                out.display()
            );
        }),
        Command::Restore { from, dir } => backup::restore(&from, &dir).map(|config| {
            dharti::say!("restored; start it with `dharti run --config {}`", config.display());
        }),
        Command::Offer {
            node,
            action,
            energy_wh,
            price_micro_per_kwh,
            interval,
            side,
        } => offer(&node.config, &action, energy_wh, price_micro_per_kwh, interval, side),
        Command::Status { node } => get_json(&node.config, "/api/v1/status"),
        Command::Peers { node } => get_json(&node.config, "/api/v1/peers"),
        Command::Trades { node } => get_json(&node.config, "/api/v1/trades"),
        Command::History { node, intervals } => history(&node.config, intervals),
        Command::Market { node, tool: None } => get_json(&node.config, "/api/v1/market"),
        Command::Market {
            tool: Some(MarketCommand::Clear { book, mechanism }),
            ..
        } => clear(&book, mechanism.as_deref()),
        Command::Market {
            tool:
                Some(MarketCommand::Bench {
                    offers,
                    seed,
                    repeat,
                }),
            ..
        } => bench::run(offers, seed, repeat).and_then(|report| print_json_line(&report)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `dharti run`: logging to stderr, then the daemon on a one-thread runtime.
/// The daemon waits on the network far more than it computes (a thousand
/// offers an interval are tens of milliseconds of signature checks, well
/// under a second on a Pi), and one thread means one malloc arena: with two
/// workers each kept its own, and the 50-daemon bench measured 1.4 MB more
/// per daemon, with slower one-hop gossip on a shared 2-core machine. The
/// cost: a storage flush holds up the network and the API for as long as it
/// takes (docs/operations.md, "Memory").
fn daemon(config: &Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DHARTI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run::run(config))
}

/// A one-thread runtime for commands that talk to a chain once and exit.
fn small_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// GETs `path` from the node's API and prints the JSON.
fn get_json(config: &Path, path: &str) -> anyhow::Result<()> {
    let info = run::read_run_info(config)?;
    let (status, body) = client::request(&info.api_url, "GET", path, None, None)?;
    if status != 200 {
        bail!("the daemon answered {status}: {body}");
    }
    let value: serde_json::Value = serde_json::from_str(&body).context("the daemon's answer")?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &value)?;
    writeln!(out)?;
    Ok(())
}

fn offer(
    config_path: &Path,
    action: &str,
    energy_wh: u64,
    price: u64,
    interval: Option<u64>,
    side: Option<String>,
) -> anyhow::Result<()> {
    let config = config::Config::load(config_path)?;
    let token = identity::read_token(&config.path(&config.node.token_file))?;
    let info = run::read_run_info(config_path)?;
    let (method, path, body) = match action {
        "bid" | "ask" => {
            if energy_wh == 0 || price == 0 {
                bail!("a {action} needs --energy-wh and --price-micro-per-kwh above zero");
            }
            let body = serde_json::json!({
                "interval": interval,
                "side": action,
                "energy_wh": energy_wh,
                "price_micro_per_kwh": price,
            });
            ("POST", "/api/v1/offers".to_string(), Some(body.to_string()))
        }
        "cancel" => {
            let (Some(interval), Some(side)) = (interval, side) else {
                bail!("cancel needs --interval N and --side bid|ask");
            };
            (
                "DELETE",
                format!("/api/v1/offers?interval={interval}&side={side}"),
                None,
            )
        }
        other => bail!("{other:?}: use bid, ask or cancel"),
    };
    let (status, answer) =
        client::request(&info.api_url, method, &path, Some(&token), body.as_deref())?;
    if !(200..300).contains(&status) {
        bail!("the daemon refused ({status}): {answer}");
    }
    dharti::say!("{answer}");
    Ok(())
}

fn history(config: &Path, intervals: u64) -> anyhow::Result<()> {
    let info = run::read_run_info(config)?;
    let (status, body) = client::request(&info.api_url, "GET", "/api/v1/status", None, None)?;
    if status != 200 {
        bail!("the daemon answered {status}: {body}");
    }
    let status: serde_json::Value = serde_json::from_str(&body)?;
    let Some(last) = status["last_final_interval"].as_u64() else {
        dharti::say!("no final interval yet");
        return Ok(());
    };
    dharti::say!(
        "{:>12}  {:>10}  {:>12}  result hash",
        "interval",
        "volume Wh",
        "price µ/kWh"
    );
    for n in (last.saturating_sub(intervals.saturating_sub(1))..=last).rev() {
        let (code, body) = client::request(
            &info.api_url,
            "GET",
            &format!("/api/v1/intervals/{n}"),
            None,
            None,
        )?;
        if code != 200 {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let r = &v["result"];
        dharti::say!(
            "{n:>12}  {:>10}  {:>12}  {}",
            r["volume_wh"],
            r["clearing_price_micro_per_kwh"],
            r["result_hash"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}

fn clear(path: &std::path::Path, mechanism: Option<&str>) -> anyhow::Result<()> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .context("cannot read the order book from standard input")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the order book {}", path.display()))?
    };
    let result = book::clear_json(&text, mechanism)?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &result)?;
    writeln!(out)?;
    Ok(())
}

fn print_json_line(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
