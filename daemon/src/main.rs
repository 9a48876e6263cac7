//! `dharti`: the command-line tool and (in later versions) daemon of Dharti,
//! a peer-to-peer energy market. This file only parses the command line and
//! dispatches; each subcommand lives in its own module.

mod bench;
mod book;
mod demo;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Dharti: a peer-to-peer energy market with no central server.
#[derive(Debug, Parser)]
#[command(name = "dharti", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a neighbourhood market of forty households for eight hours on
    /// this machine and tell what happened.
    ///
    /// Every household runs the Dharti protocol node; they gossip signed
    /// offers, agree on each interval's set, clear, attest, reach finality
    /// and settle their meters, over a simulated lossy network in this one
    /// process. Tables and plots are written to `--out`.
    Demo {
        /// Where to write summary.json, intervals.csv, nodes.csv and the plots.
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
        /// Directory with the load and weather data
        /// (default: $DHARTI_DATA, else ../shared/data beside the workspace).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Seed instead of the scenario's own (same seed, same run).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Work with order books and the market mechanisms offline.
    #[command(subcommand)]
    Market(MarketCommand),
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
        Command::Demo { out, data, seed } => demo::run(&out, data, seed).map(|story| {
            print!("{story}");
        }),
        Command::Market(MarketCommand::Clear { book, mechanism }) => {
            clear(&book, mechanism.as_deref())
        }
        Command::Market(MarketCommand::Bench {
            offers,
            seed,
            repeat,
        }) => bench::run(offers, seed, repeat).and_then(|report| print_json_line(&report)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
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
