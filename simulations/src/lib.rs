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
use std::time::Instant;

use anyhow::Context;

/// Runs `scenario` (with `seed` instead of its own, if given) on the data in
/// `data_dir`; `progress` is told (done, total) intervals.
pub fn run(
    scenario: &scenario::Scenario,
    data_dir: &Path,
    seed: Option<u64>,
    progress: impl FnMut(usize, usize),
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
    let mut sim = sim::Sim::new(scenario, households, start_s, &mut rng);
    sim.on_progress(progress);
    let outcome = sim.run();
    let summary = report::summarize(&outcome, seed, started.elapsed().as_secs_f64());
    Ok((summary, outcome))
}
