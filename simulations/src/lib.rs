//! The Dharti simulator: the very `protocol::Node` the daemon runs, many of
//! them, over a simulated network, single-threaded and seeded. The same
//! scenario and seed give the same trace hash on every machine.
//!
//! - [`scenario`]: the TOML scenario format;
//! - [`data`]: real load and weather profiles and the PV model;
//! - [`households`]: seeded households built from them;
//! - [`sim`]: the discrete-event engine, adversaries and invariants;
//! - [`report`]: KPIs and output files;
//! - [`plot`]: the plots, as SVG and PNG.

#![forbid(unsafe_code)]
// The simulator turns float physics (irradiance, shares of households) into
// whole Wh and node indices; scenario validation bounds every such value, so
// these casts cannot truncate in practice.
#![allow(clippy::cast_possible_truncation)]

pub mod data;
pub mod households;
pub mod plot;
mod queue;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sim;
pub mod time;
mod verifier;

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use anyhow::Context;

/// Runs `scenario` (with `seed` instead of its own, if given) on the data in
/// `data_dir`, simulating up to `jobs` of its markets at once (each on one
/// thread; the trace does not depend on `jobs`); `progress` is told (done,
/// total) market-intervals.
pub fn run(
    scenario: &scenario::Scenario,
    data_dir: &Path,
    seed: Option<u64>,
    jobs: usize,
    progress: impl FnMut(usize, usize) + Send,
) -> anyhow::Result<(report::Summary, sim::Outcome)> {
    let started = Instant::now();
    let seed = seed.unwrap_or(scenario.simulation.seed);
    let start_s = time::parse_rfc3339(&scenario.simulation.start).context("simulation.start")?;
    let profile = data::LoadProfile::load(data_dir)?;
    let weather = data::Weather::load(data_dir, &scenario.households.weather)?;
    let mut rng = rng::Rng::new(seed);
    let mut household_rng = rng.fork(0);
    let first_start = start_s.div_ceil(scenario.market.interval_s) * scenario.market.interval_s;
    let households = households::generate(
        scenario,
        first_start,
        &profile,
        &weather,
        &mut household_rng,
    );
    let markets = split_markets(households, scenario.households.markets);
    let total = markets.len() * scenario.simulation.intervals as usize;
    let jobs = jobs.clamp(1, markets.len());
    let progress = Mutex::new((progress, 0usize));
    // Markets waiting for a thread, by number. Each market is a simulation
    // of its own, seeded from the run's seed and its number, so markets may
    // run side by side in any order.
    let queue = Mutex::new(markets.into_iter().enumerate());
    let simulate = || {
        let mut done = Vec::new();
        loop {
            let Some((market, households)) = lock(&queue).next() else {
                return done;
            };
            // Market 0 draws from the run's stream, as a one-market run does.
            let mut market_rng = if market == 0 {
                rng.clone()
            } else {
                rng.clone().fork(MARKET_STREAM + market as u64)
            };
            let mut sim = sim::Sim::new(scenario, market, households, start_s, &mut market_rng);
            sim.on_progress(|_, _| {
                let mut p = lock(&progress);
                p.1 += 1;
                let done = p.1;
                (p.0)(done, total);
            });
            done.push((market, sim.run()));
        }
    };
    let mut outcomes: Vec<(usize, sim::Outcome)> = if jobs == 1 {
        simulate()
    } else {
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..jobs).map(|_| scope.spawn(simulate)).collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().expect("a market's simulation panicked"))
                .collect()
        })
    };
    outcomes.sort_unstable_by_key(|(market, _)| *market);
    let outcomes: Vec<sim::Outcome> = outcomes.into_iter().map(|(_, o)| o).collect();
    let outcome = sim::Outcome::merge(outcomes);
    let summary = report::summarize(&outcome, seed, started.elapsed().as_secs_f64());
    Ok((summary, outcome))
}

/// Label of the random streams of markets after the first.
const MARKET_STREAM: u64 = 0x4d41_524b_4554_0000;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Splits households into `markets` consecutive groups whose sizes differ by
/// at most one.
fn split_markets(
    households: Vec<households::Household>,
    markets: usize,
) -> Vec<Vec<households::Household>> {
    let markets = markets.max(1);
    let (per, extra) = (households.len() / markets, households.len() % markets);
    let mut rest = households.into_iter();
    (0..markets)
        .map(|m| rest.by_ref().take(per + usize::from(m < extra)).collect())
        .collect()
}
