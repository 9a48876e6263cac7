//! `dharti-sim`: run a scenario of many Dharti nodes and write its KPIs.
// The simulator turns float physics (irradiance, shares of households) into
// whole Wh and node indices; scenario validation bounds every such value, so
// these casts cannot truncate in practice.
#![allow(clippy::cast_possible_truncation)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use dharti_simulations::{data, report, run, scenario::Scenario};

/// Deterministic simulator of a Dharti market: thousands of protocol nodes
/// over a simulated network, households from real load and weather data.
#[derive(Debug, Parser)]
#[command(name = "dharti-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario and write summary.json, intervals.csv and nodes.csv.
    Run {
        /// The scenario file (TOML, see docs/simulations.md and scenarios/).
        scenario: PathBuf,
        /// Seed instead of the scenario's own.
        #[arg(long)]
        seed: Option<u64>,
        /// Where to write the results (default: `out/` and the scenario name).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run twice and fail unless both runs have the same trace hash.
        #[arg(long)]
        check_determinism: bool,
        /// Directory with the profile data (default: $DHARTI_DATA or ../shared/data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Markets (`households.markets`) simulated at once, each on one
        /// thread (default: one per core). Results and trace do not depend
        /// on it; memory grows with it.
        #[arg(long)]
        jobs: Option<usize>,
    },
}

/// Width of the progress bar in characters.
const BAR_WIDTH: usize = 30;

/// `NAME [#######.......] DONE/TOTAL intervals, S s`: the progress line
/// written over itself on a terminal.
fn progress_bar(name: &str, done: usize, total: usize, elapsed: std::time::Duration) -> String {
    let filled = (done * BAR_WIDTH).checked_div(total).unwrap_or(BAR_WIDTH);
    format!(
        "{name} [{}{}] {done}/{total} market-intervals, {:.0} s",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        elapsed.as_secs_f64()
    )
}

fn main() -> ExitCode {
    match run_cli(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli(cli: Cli) -> anyhow::Result<ExitCode> {
    let Command::Run {
        scenario: path,
        seed,
        out,
        check_determinism,
        data,
        jobs,
    } = cli.command;
    let jobs = jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let scenario = Scenario::load(&path)?;
    let data = data.unwrap_or_else(data::default_dir);
    let name = path
        .file_stem()
        .map_or("run".into(), |s| s.to_string_lossy().into_owned());
    let out = out.unwrap_or_else(|| PathBuf::from("out").join(&name));
    let terminal = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let progress = |done: usize, total: usize| {
        if terminal {
            eprint!("\r{}", progress_bar(&name, done, total, started.elapsed()));
            if done == total {
                eprintln!();
            }
        }
    };
    let (summary, outcome) = run(&scenario, &data, seed, jobs, progress)?;
    if check_determinism {
        let (again, _) = run(&scenario, &data, seed, jobs, |_, _| {})?;
        if again.trace_hash != summary.trace_hash {
            bail!(
                "not deterministic: trace hashes {} and {} differ",
                summary.trace_hash,
                again.trace_hash
            );
        }
        eprintln!(
            "deterministic: both runs have trace hash {}",
            summary.trace_hash
        );
    }
    report::write(&out, &summary, &outcome)
        .with_context(|| format!("writing results to {}", out.display()))?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if summary.invariant_violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
