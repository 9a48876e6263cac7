//! `dharti simulate`: a neighbourhood market, start to finish, in one process.
//!
//! Forty households (real BDEW load, TRY 2010 Potsdam sunshine, some with
//! PV and batteries) trade for eight hours of a June Monday. Every household
//! runs the very `protocol::Node` the daemon runs, over the simulator's
//! lossy network in this one process (`dharti demo` runs real daemons). It
//! prints what happened in words and writes the tables and plots beside it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use dharti_simulations::report::Summary;
use dharti_simulations::scenario::Scenario;
use dharti_simulations::sim::Outcome;
use dharti_simulations::{data, report};

/// The demo scenario, built into the binary so the demo runs from anywhere.
const SCENARIO: &str = include_str!("../../scenarios/demo.toml");

/// Runs the demo and prints the story; results go to `out`.
pub fn run(out: &Path, data_dir: Option<PathBuf>, seed: Option<u64>) -> anyhow::Result<String> {
    let scenario: Scenario = toml::from_str(SCENARIO).context("the built-in demo scenario")?;
    scenario.validate().context("the built-in demo scenario")?;
    let data_dir = data_dir.unwrap_or_else(data::default_dir);
    let (summary, outcome) = dharti_simulations::run(&scenario, &data_dir, seed, 1, |_, _| {})
        .with_context(|| {
            format!(
                "running the demo market on the profile data in {} (set --data or DHARTI_DATA)",
                data_dir.display()
            )
        })?;
    report::write(out, &summary, &outcome)
        .with_context(|| format!("writing results to {}", out.display()))?;
    Ok(story(&scenario, &summary, &outcome, out))
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

/// What happened, for a person.
fn story(scenario: &Scenario, s: &Summary, outcome: &Outcome, out: &Path) -> String {
    let m = &scenario.market;
    let ct = |micro_per_kwh: u64| micro_per_kwh as f64 / 10_000.0;
    let prices: Vec<u64> = outcome
        .intervals
        .iter()
        .filter_map(|i| i.result.as_ref()?.clearing_price_micro_per_kwh)
        .collect();
    let mean_price = if prices.is_empty() {
        0.0
    } else {
        prices.iter().map(|p| ct(*p)).sum::<f64>() / prices.len() as f64
    };
    let minutes = m.interval_s / 60;
    let hours = s.intervals as u64 * m.interval_s / 3_600;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Dharti demo: {} households trade for {hours} hours in {} intervals of {minutes} min.",
        s.nodes, s.intervals
    );
    let _ = writeln!(
        text,
        "Each runs the Dharti protocol node; no server decides anything.\n"
    );
    let _ = writeln!(
        text,
        "agreement    {} of honest nodes finalized the same result in {}/{} intervals,",
        pct(s.agreement_rate),
        s.intervals_finalized,
        s.intervals
    );
    let _ = writeln!(
        text,
        "             {:.1} s after gate closure at the 99th percentile ({} s of reconciliation)",
        s.finality_ms_p99.unwrap_or(0) as f64 / 1_000.0,
        m.reconcile_window_s
    );
    let _ = writeln!(
        text,
        "traded       {:.1} kWh between neighbours at {:.1} ct/kWh on average",
        s.traded_wh as f64 / 1_000.0,
        mean_price
    );
    let _ = writeln!(
        text,
        "             (the grid pays {:.0} ct/kWh for feed-in and charges {:.0} ct/kWh)",
        ct(m.feed_in_micro_per_kwh),
        ct(m.retail_micro_per_kwh)
    );
    let _ = writeln!(
        text,
        "households   saved {:.0} % of what their imports cost without Dharti;",
        s.savings_vs_grid_pct
    );
    if let Some(revenue) = s.seller_revenue_vs_feed_in_pct {
        let _ = writeln!(
            text,
            "             sellers earned {revenue:.0} % more for their energy than feed-in pays"
        );
    }
    let _ = writeln!(
        text,
        "settlement   {} node settlements with every meter report, {} identical",
        s.settlements_complete,
        pct(s.settlement_agreement_rate)
    );
    let _ = writeln!(
        text,
        "checks       {} invariant violations (agreement, energy, money, equivocation, censorship)",
        s.invariant_violations
    );
    let _ = writeln!(
        text,
        "\nresults      {}: summary.json, intervals.csv, nodes.csv and plots",
        out.display()
    );
    let _ = writeln!(
        text,
        "             (price_volume, finality, savings, each .svg and .png)"
    );
    text
}
