//! Scenario files (TOML): what to simulate. Every key is documented in
//! docs/simulations.md; unknown keys are refused, so a typo cannot silently
//! change an experiment.

use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub simulation: Simulation,
    #[serde(default)]
    pub market: Market,
    pub households: Households,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub adversaries: Adversaries,
}

/// `[simulation]`: `intervals` and `start` are required, `seed` is not.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Simulation {
    #[serde(default = "one")]
    pub seed: u64,
    pub intervals: u32,
    /// RFC 3339 UTC start, e.g. "2025-06-02T00:00:00Z": picks month and day type.
    pub start: String,
}

fn one() -> u64 {
    1
}

/// `[market]`: any key left out takes its default below.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Market {
    pub interval_s: u64,
    pub gate_lead_s: u64,
    pub reconcile_window_s: u64,
    pub mechanism: String,
    pub feed_in_micro_per_kwh: u64,
    pub retail_micro_per_kwh: u64,
    pub grid_fee_micro_per_kwh: u64,
    /// Share of the active members (with `attesters`, of the interval's
    /// committee) needed for finality (more than this).
    pub quorum: f64,
    /// Members that attest each interval (a committee drawn per interval);
    /// 0: every member.
    pub attesters: usize,
}

/// The defaults docs/simulations.md lists (a test checks the table against
/// them): quarter-hour intervals as in European intraday trading, a
/// two-thirds quorum, every member attesting.
impl Default for Market {
    fn default() -> Self {
        Market {
            interval_s: 900,
            gate_lead_s: 60,
            reconcile_window_s: 20,
            mechanism: "pay-as-clear".into(),
            feed_in_micro_per_kwh: 80_000,
            retail_micro_per_kwh: 300_000,
            grid_fee_micro_per_kwh: 20_000,
            quorum: 0.67,
            attesters: 0,
        }
    }
}

/// `[households]`: `count` is required; every other key has the default
/// of its function below.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Households {
    pub count: usize,
    /// The households are split into this many markets of equal size (one
    /// low-voltage feeder each): separate Dharti markets with their own
    /// members and network, which do not trade with each other.
    #[serde(default = "one_market")]
    pub markets: usize,
    #[serde(default = "annual_kwh")]
    pub annual_kwh: [f64; 2],
    #[serde(default)]
    pub pv_share: f64,
    #[serde(default = "pv_kwp")]
    pub pv_kwp: [f64; 2],
    #[serde(default)]
    pub battery_share: f64,
    #[serde(default = "battery_kwh")]
    pub battery_kwh: [f64; 2],
    #[serde(default = "weather")]
    pub weather: String,
}

fn one_market() -> usize {
    1
}
fn annual_kwh() -> [f64; 2] {
    [2_000.0, 6_000.0]
}
fn pv_kwp() -> [f64; 2] {
    [3.0, 10.0]
}
fn battery_kwh() -> [f64; 2] {
    [5.0, 13.5]
}
fn weather() -> String {
    "try2010_potsdam".into()
}

/// `[network]`: any key left out takes its default below.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    pub latency_ms: [u64; 2],
    pub loss: f64,
    pub degree: usize,
    pub churn: f64,
    pub clock_skew_ms: u64,
    pub partitions: Vec<Partition>,
    /// Arrivals are rounded up to a multiple of this, and everything that
    /// reaches one node in the same quantum is handled in the order sent.
    pub quantum_ms: u64,
}

/// The defaults docs/simulations.md lists (a test checks the table against
/// them): no loss, churn, skew or partitions, so a scenario names every
/// imperfection it simulates.
impl Default for Network {
    fn default() -> Self {
        Network {
            latency_ms: [20, 120],
            loss: 0.0,
            degree: 8,
            churn: 0.0,
            clock_skew_ms: 0,
            partitions: Vec::new(),
            quantum_ms: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub at_interval: u32,
    pub duration_s: u64,
    pub fraction: f64,
}

/// `[adversaries]`: shares of hostile households, none unless given.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adversaries {
    pub equivocators: f64,
    pub spammers: f64,
    pub withholders: f64,
}

fn share(name: &str, value: f64) -> anyhow::Result<()> {
    ensure!(
        (0.0..=1.0).contains(&value),
        "{name} = {value} must be a share between 0 and 1"
    );
    Ok(())
}

fn range(name: &str, [low, high]: [f64; 2]) -> anyhow::Result<()> {
    ensure!(
        low.is_finite() && high.is_finite() && 0.0 <= low && low <= high,
        "{name} = [{low}, {high}] must be [low, high] with 0 <= low <= high"
    );
    Ok(())
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        let scenario: Scenario = toml::from_str(&text).with_context(|| {
            format!(
                "scenario {} is not valid (docs/simulations.md lists every key)",
                path.display()
            )
        })?;
        scenario
            .validate()
            .with_context(|| format!("scenario {}", path.display()))?;
        Ok(scenario)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.simulation.intervals > 0,
            "simulation.intervals must be at least 1"
        );
        crate::time::parse_rfc3339(&self.simulation.start).context("simulation.start")?;
        let m = &self.market;
        dharti_protocol::types::IntervalClock::new(m.interval_s, m.gate_lead_s)
            .context("market.interval_s / market.gate_lead_s")?;
        ensure!(
            m.gate_lead_s + m.reconcile_window_s < m.interval_s,
            "market.reconcile_window_s ({}) plus gate_lead_s must stay below interval_s",
            m.reconcile_window_s
        );
        ensure!(
            m.interval_s / 6 > m.reconcile_window_s + crate::sim::FOLLOW_UP_S,
            "market.interval_s ({}) is too short for a {} s reconciliation window: households plan after the previous interval settled",
            m.interval_s,
            m.reconcile_window_s
        );
        let skew_ms = self.network.clock_skew_ms;
        ensure!(
            crate::sim::dispatch_after_gate_ms(m.reconcile_window_s, skew_ms)
                .saturating_add(crate::sim::plan_before_gate_ms(m.interval_s, skew_ms))
                < m.interval_s.saturating_mul(1_000),
            "network.clock_skew_ms ({skew_ms}) is too large for a {} s interval: an interval's result must be final on the slowest clock before the next one's plans on the fastest",
            m.interval_s
        );
        m.mechanism
            .parse::<dharti_protocol::clearing::Mechanism>()
            .context("market.mechanism")?;
        dharti_protocol::tariff::Tariff::new(
            m.feed_in_micro_per_kwh,
            m.retail_micro_per_kwh,
            m.grid_fee_micro_per_kwh,
        )
        .validate()
        .context("market tariff")?;
        ensure!(
            m.quorum > 0.0 && m.quorum < 1.0,
            "market.quorum = {} must be between 0 and 1",
            m.quorum
        );
        dharti_protocol::node::check_attesters(m.attesters)
            .map_err(|e| anyhow::anyhow!("market.attesters = {e}"))?;
        let h = &self.households;
        ensure!(h.count >= 2, "households.count must be at least 2");
        ensure!(
            h.count <= 100_000,
            "households.count above 100,000 is not supported"
        );
        ensure!(
            h.markets >= 1 && h.count / h.markets.max(1) >= 2,
            "households.markets = {} must be at least 1 and leave each market at least 2 households",
            h.markets
        );
        range("households.annual_kwh", h.annual_kwh)?;
        range("households.pv_kwp", h.pv_kwp)?;
        range("households.battery_kwh", h.battery_kwh)?;
        share("households.pv_share", h.pv_share)?;
        share("households.battery_share", h.battery_share)?;
        if !["try2010_potsdam", "tmy3_greensboro"].contains(&h.weather.as_str()) {
            bail!(
                "households.weather = {:?}: use \"try2010_potsdam\" or \"tmy3_greensboro\"",
                h.weather
            );
        }
        let n = &self.network;
        ensure!(
            n.latency_ms[0] <= n.latency_ms[1] && n.latency_ms[0] > 0,
            "network.latency_ms must be [low, high] with 0 < low <= high"
        );
        share("network.loss", n.loss)?;
        ensure!(n.loss < 1.0, "network.loss must be below 1");
        share("network.churn", n.churn)?;
        ensure!(n.degree >= 1, "network.degree must be at least 1");
        ensure!(
            (1..=n.latency_ms[0]).contains(&n.quantum_ms),
            "network.quantum_ms must be between 1 and the lowest latency"
        );
        for (i, p) in n.partitions.iter().enumerate() {
            share(&format!("network.partitions[{i}].fraction"), p.fraction)?;
            ensure!(
                p.at_interval < self.simulation.intervals,
                "network.partitions[{i}].at_interval is past the end of the run"
            );
        }
        let a = &self.adversaries;
        share("adversaries.equivocators", a.equivocators)?;
        share("adversaries.spammers", a.spammers)?;
        share("adversaries.withholders", a.withholders)?;
        ensure!(
            a.equivocators + a.spammers + a.withholders < 1.0 / 3.0,
            "adversaries must stay below a third of the households"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[simulation]
intervals = 4
start = "2025-06-02T00:00:00Z"

[households]
count = 10
"#;

    #[test]
    fn defaults_fill_what_is_left_out() {
        let s: Scenario = toml::from_str(MINIMAL).unwrap();
        s.validate().unwrap();
        assert_eq!(s.market.interval_s, 900);
        assert_eq!(s.network.degree, 8);
        assert_eq!(s.households.weather, "try2010_potsdam");
        assert_eq!(s.households.markets, 1);
    }

    #[test]
    fn mistakes_name_the_key() {
        let typo = MINIMAL.replace("count = 10", "count = 10\npv_shar = 0.4");
        assert!(
            toml::from_str::<Scenario>(&typo)
                .unwrap_err()
                .to_string()
                .contains("pv_shar")
        );
        let mut s: Scenario = toml::from_str(MINIMAL).unwrap();
        s.households.pv_share = 1.5;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("households.pv_share")
        );
        let mut s: Scenario = toml::from_str(MINIMAL).unwrap();
        s.market.mechanism = "dutch".into();
        assert!(format!("{:#}", s.validate().unwrap_err()).contains("market.mechanism"));
        for markets in [0, 6] {
            let mut s: Scenario = toml::from_str(MINIMAL).unwrap();
            s.households.markets = markets;
            assert!(
                s.validate()
                    .unwrap_err()
                    .to_string()
                    .contains("households.markets"),
                "{markets} markets of 10 households"
            );
        }
        // 900 s intervals: 51 s after gate closure to dispatch, 240 s of
        // planning before the next; what is left covers twice the skew.
        let mut s: Scenario = toml::from_str(MINIMAL).unwrap();
        s.network.clock_skew_ms = 304_000;
        s.validate().unwrap();
        s.network.clock_skew_ms = 304_500;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("network.clock_skew_ms")
        );
        s.network.clock_skew_ms = u64::MAX;
        assert!(s.validate().is_err(), "no overflow");
        let mut s: Scenario = toml::from_str(MINIMAL).unwrap();
        s.households.weather = "mars".into();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("households.weather")
        );
    }

    #[test]
    fn a_partial_section_keeps_the_documented_defaults() {
        let text = format!(
            "{MINIMAL}
[market]
mechanism = \"pay-as-bid\"
interval_s = 600

[network]
loss = 0.05
degree = 4

[adversaries]
spammers = 0.1
"
        );
        let s: Scenario = toml::from_str(&text).expect("a partial [market] parses");
        s.validate().expect("valid");
        let m = &s.market;
        assert_eq!((m.mechanism.as_str(), m.interval_s), ("pay-as-bid", 600));
        assert_eq!((m.gate_lead_s, m.reconcile_window_s), (60, 20));
        assert_eq!(
            (
                m.feed_in_micro_per_kwh,
                m.retail_micro_per_kwh,
                m.grid_fee_micro_per_kwh
            ),
            (80_000, 300_000, 20_000)
        );
        assert_eq!((m.quorum, m.attesters), (0.67, 0));
        let n = &s.network;
        assert_eq!((n.loss, n.degree), (0.05, 4));
        assert_eq!(n.latency_ms, [20, 120]);
        assert_eq!((n.churn, n.clock_skew_ms, n.quantum_ms), (0.0, 0, 10));
        assert!(n.partitions.is_empty());
        let a = &s.adversaries;
        assert_eq!((a.equivocators, a.spammers, a.withholders), (0.0, 0.1, 0.0));
        assert_eq!(s.simulation.seed, 1);
    }

    #[test]
    fn an_unknown_key_in_a_partial_section_is_refused() {
        for (section, typo) in [
            ("market", "intervall_s = 600"),
            ("network", "los = 0.1"),
            ("adversaries", "spamers = 0.1"),
        ] {
            let text = format!("{MINIMAL}\n[{section}]\n{typo}\n");
            let error = toml::from_str::<Scenario>(&text).unwrap_err().to_string();
            let key = typo.split(' ').next().unwrap();
            assert!(error.contains(key), "[{section}] {typo}: {error}");
        }
    }

    /// Every default in the table of docs/simulations.md, written out, gives
    /// the same scenario as leaving the key out.
    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let doc = include_str!("../../docs/simulations.md");
        let table = doc
            .split("## Scenario keys")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("docs/simulations.md has a Scenario keys section");
        let left_out = format!("{:?}", toml::from_str::<Scenario>(MINIMAL).unwrap());
        let mut checked = 0;
        for row in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (key, default) = (cells[1].trim_matches('`'), cells[2].trim_matches('`'));
            if default == "required" {
                continue;
            }
            let (section, name) = key.split_once('.').expect("keys are section.name");
            let header = format!("[{section}]\n");
            let text = if MINIMAL.contains(&header) {
                MINIMAL.replace(&header, &format!("{header}{name} = {default}\n"))
            } else {
                format!("{MINIMAL}\n{header}{name} = {default}\n")
            };
            let written = toml::from_str::<Scenario>(&text)
                .unwrap_or_else(|e| panic!("{key} = {default} does not parse: {e}"));
            assert_eq!(
                format!("{written:?}"),
                left_out,
                "{key}: the documented default {default} is not the default"
            );
            checked += 1;
        }
        // Every key but the three required ones.
        assert!(checked >= 27, "only {checked} defaults found in the table");
    }
}
