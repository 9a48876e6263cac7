//! What a run writes: `summary.json`, `intervals.csv`, `nodes.csv` and the
//! plots (every field documented in docs/simulations.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::sim::Outcome;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub nodes: usize,
    /// Separate markets (feeders) the households were split into.
    pub markets: usize,
    pub intervals: usize,
    pub seed: u64,
    pub trace_hash: String,
    pub intervals_finalized: usize,
    pub agreement_rate: f64,
    pub finality_ms_p50: Option<u64>,
    pub finality_ms_p99: Option<u64>,
    pub offers_total: u64,
    pub traded_wh: u64,
    pub self_sufficiency: f64,
    pub self_consumption: Option<f64>,
    pub savings_vs_grid_pct: f64,
    pub seller_revenue_vs_feed_in_pct: Option<f64>,
    pub messages_per_node_per_interval: f64,
    pub bytes_per_node_per_interval: f64,
    pub payload_bytes_per_interval: f64,
    /// Messages nodes refused: bytes that decode to no message, or a
    /// Reject verdict (bad signature, wrong market or chain, closed
    /// interval, over a limit). Adversaries' work; 0 in an honest market.
    pub messages_refused: u64,
    /// Honest nodes' settlements made with every trader's meter report...
    pub settlements_complete: usize,
    /// ...the share of them equal to the reference settlement...
    pub settlement_agreement_rate: f64,
    /// ...and settlements made at the deadline with some report missing.
    pub settlements_incomplete: usize,
    pub invariant_violations: u64,
    pub violations: Vec<String>,
    pub wall_s: f64,
    pub household_intervals_per_s: f64,
}

/// The `p` quantile (nearest rank) of sorted values; `None` for none.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

pub fn summarize(outcome: &Outcome, seed: u64, wall_s: f64) -> Summary {
    let nodes = outcome.households.len();
    let markets = outcome
        .intervals
        .iter()
        .map(|i| i.market + 1)
        .max()
        .unwrap_or(1);
    // Per market: every market runs the scenario's intervals.
    let intervals = outcome.intervals.len() / markets;
    let mut finality: Vec<u64> = outcome
        .intervals
        .iter()
        .flat_map(|i| i.finality_ms.iter().copied())
        .collect();
    finality.sort_unstable();
    let agreeing: usize = outcome.intervals.iter().map(|i| i.agreeing).sum();
    let online: usize = outcome.intervals.iter().map(|i| i.honest_online).sum();
    let load: u64 = outcome.intervals.iter().map(|i| i.load_wh).sum();
    let pv: u64 = outcome.intervals.iter().map(|i| i.pv_wh).sum();
    let import: u64 = outcome
        .intervals
        .iter()
        .map(|i| i.community_import_wh)
        .sum();
    let export: u64 = outcome
        .intervals
        .iter()
        .map(|i| i.community_export_wh)
        .sum();
    let bills: i64 = outcome.per_household.iter().map(|h| h.bill_micro).sum();
    let grid_only: i64 = outcome
        .per_household
        .iter()
        .map(|h| h.grid_only_bill_micro)
        .sum();
    let grid_only_imports: u64 = outcome
        .per_household
        .iter()
        .map(|h| h.grid_only_import_micro)
        .sum();
    let revenue: u64 = outcome
        .per_household
        .iter()
        .map(|h| h.p2p_revenue_micro)
        .sum();
    let at_feed_in: u64 = outcome
        .per_household
        .iter()
        .map(|h| h.sold_at_feed_in_micro)
        .sum();
    let per_node_interval = (nodes * intervals).max(1) as f64;
    let settled: usize = outcome.intervals.iter().map(|i| i.settled_complete).sum();
    let matching: usize = outcome.intervals.iter().map(|i| i.settled_matching).sum();
    Summary {
        nodes,
        markets,
        intervals,
        seed,
        trace_hash: hex::encode(outcome.trace_hash),
        // Intervals that every market finalized.
        intervals_finalized: {
            let mut finalized: BTreeMap<u64, usize> = BTreeMap::new();
            for i in outcome.intervals.iter().filter(|i| i.reference.is_some()) {
                *finalized.entry(i.index).or_default() += 1;
            }
            finalized.values().filter(|&&n| n == markets).count()
        },
        agreement_rate: if online == 0 {
            1.0
        } else {
            agreeing as f64 / online as f64
        },
        finality_ms_p50: percentile(&finality, 0.5),
        finality_ms_p99: percentile(&finality, 0.99),
        offers_total: outcome.offers_total,
        traded_wh: outcome
            .intervals
            .iter()
            .filter_map(|i| i.result.as_ref())
            .map(|r| r.volume_wh)
            .sum(),
        self_sufficiency: if load == 0 {
            1.0
        } else {
            1.0 - import as f64 / load as f64
        },
        self_consumption: (pv > 0).then(|| 1.0 - export as f64 / pv as f64),
        // Net bills can be negative (PV owners earn), so savings are measured
        // against what the households pay the grid for imports without Dharti.
        savings_vs_grid_pct: if grid_only_imports == 0 {
            0.0
        } else {
            (grid_only - bills) as f64 / grid_only_imports as f64 * 100.0
        },
        seller_revenue_vs_feed_in_pct: (at_feed_in > 0)
            .then(|| (revenue as f64 / at_feed_in as f64 - 1.0) * 100.0),
        messages_per_node_per_interval: outcome.messages as f64 / per_node_interval,
        bytes_per_node_per_interval: outcome.bytes as f64 / per_node_interval,
        // What one market's members publish: each node receives its own
        // market's payload only.
        payload_bytes_per_interval: outcome.payload_bytes as f64
            / (intervals * markets).max(1) as f64,
        messages_refused: outcome.refused,
        settlements_complete: settled,
        settlement_agreement_rate: if settled == 0 {
            1.0
        } else {
            matching as f64 / settled as f64
        },
        settlements_incomplete: outcome.intervals.iter().map(|i| i.settled_incomplete).sum(),
        invariant_violations: outcome.invariant_violations,
        violations: outcome.violations.iter().take(20).cloned().collect(),
        wall_s,
        household_intervals_per_s: (nodes * intervals) as f64 / wall_s.max(1e-9),
    }
}

pub fn write(dir: &Path, summary: &Summary, outcome: &Outcome) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(summary)?;
    std::fs::write(dir.join("summary.json"), json + "\n").context("cannot write summary.json")?;

    let mut csv = String::from(
        "market,interval,start_unix_s,clearing_price_micro_per_kwh,volume_wh,agreement,finality_ms_p50,self_sufficiency,offers\n",
    );
    for i in &outcome.intervals {
        let mut finality = i.finality_ms.clone();
        finality.sort_unstable();
        let price = i
            .result
            .as_ref()
            .and_then(|r| r.clearing_price_micro_per_kwh);
        let volume = i.result.as_ref().map_or(0, |r| r.volume_wh);
        let agreement = if i.honest_online == 0 {
            1.0
        } else {
            i.agreeing as f64 / i.honest_online as f64
        };
        let self_sufficiency = if i.load_wh == 0 {
            1.0
        } else {
            1.0 - i.community_import_wh as f64 / i.load_wh as f64
        };
        writeln!(
            csv,
            "{},{},{},{},{},{:.4},{},{:.4},{}",
            i.market,
            i.index,
            i.start_s,
            price.map_or(String::new(), |p| p.to_string()),
            volume,
            agreement,
            percentile(&finality, 0.5).map_or(String::new(), |f| f.to_string()),
            self_sufficiency,
            i.offers
        )?;
    }
    std::fs::write(dir.join("intervals.csv"), csv).context("cannot write intervals.csv")?;

    let mut csv = String::from(
        "household,role,annual_kwh,pv_kwp,battery_wh,load_wh,pv_wh,bill_dharti_micro,bill_grid_only_micro,p2p_revenue_micro,p2p_paid_micro,bought_wh,sold_wh\n",
    );
    for (n, (h, o)) in outcome
        .households
        .iter()
        .zip(&outcome.per_household)
        .enumerate()
    {
        writeln!(
            csv,
            "{n},{},{:.0},{:.2},{},{},{},{},{},{},{},{},{}",
            outcome.roles[n].name(),
            h.annual_kwh,
            h.pv_kwp,
            h.settings.battery.map_or(0, |b| b.capacity_wh),
            o.load_wh,
            o.pv_wh,
            o.bill_micro,
            o.grid_only_bill_micro,
            o.p2p_revenue_micro,
            o.p2p_paid_micro,
            o.bought_wh,
            o.sold_wh
        )?;
    }
    std::fs::write(dir.join("nodes.csv"), csv).context("cannot write nodes.csv")?;
    crate::plot::write(dir, outcome)
}
