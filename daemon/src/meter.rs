//! Meters: what the household consumed and generated per interval, for the
//! agent's forecast and the signed meter report.
//!
//! - **simulated**: the BDEW H25 load profile scaled to `annual_kwh`, with
//!   ±10 % seeded noise per interval, and PV from the weather data × `pv_kwp`
//!   (the simulator's model, `dharti_simulations::data`). The interval that
//!   starts at `replay_anchor` replays profile time `profile_start`, and each
//!   interval advances `profile_step` of profile time and delivers that
//!   span's energy: a demo with 20-second intervals can replay a sunny
//!   quarter-hour per interval. Both empty: real time.
//! - **csv**: `interval_start_s,import_wh,export_wh` lines (a header line is
//!   allowed), replayed by interval start.
//!
//! The forecast is perfect (the same numbers); a real forecaster is future work.

// Physics in floats (kWh, W/m²) becomes whole Wh per interval: household
// sizes are bounded, so the casts cannot truncate in practice.
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use dharti_protocol::types::{IntervalClock, IntervalIndex};
use dharti_simulations::data::{BDEW_ANNUAL_KWH, LoadProfile, Weather};
use dharti_simulations::households::load_kwh;
use dharti_simulations::rng::Rng;
use dharti_simulations::time::parse_rfc3339;

use crate::config::{Config, parse_duration_ms};

/// One interval at the meter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub load_wh: u64,
    pub pv_wh: u64,
}

impl Reading {
    /// Consumption minus generation: positive imports, negative exports.
    pub fn net_wh(&self) -> i64 {
        i64::try_from(self.load_wh).unwrap_or(i64::MAX)
            - i64::try_from(self.pv_wh).unwrap_or(i64::MAX)
    }
}

#[derive(Debug)]
pub enum Meter {
    None,
    Simulated(Box<Simulated>),
    /// Rows by interval start (unix seconds).
    Csv(IntervalClock, BTreeMap<u64, Reading>),
}

#[derive(Debug)]
pub struct Simulated {
    profile: LoadProfile,
    weather: Weather,
    annual_kwh: f64,
    pv_kwp: f64,
    seed: u64,
    clock: IntervalClock,
    anchor_s: Option<u64>,
    profile_start_s: u64,
    step_s: u64,
}

impl Meter {
    pub fn from_config(config: &Config, clock: IntervalClock) -> anyhow::Result<Meter> {
        let m = &config.meter;
        match m.kind.as_str() {
            "none" => Ok(Meter::None),
            "csv" => {
                let path = config.path(&m.csv);
                Ok(Meter::Csv(clock, read_csv(&path)?))
            }
            "simulated" => {
                let dir = if m.data_dir.as_os_str().is_empty() {
                    dharti_simulations::data::default_dir()
                } else {
                    config.path(&m.data_dir)
                };
                let profile = LoadProfile::load(&dir).context("meter.data_dir")?;
                let weather = Weather::load(&dir, &m.weather).context("meter.weather")?;
                let step_s = if m.profile_step.is_empty() {
                    clock.interval_s
                } else {
                    parse_duration_ms(&m.profile_step).context("meter.profile_step")? / 1_000
                };
                let (anchor_s, profile_start_s) = match (
                    m.replay_anchor.is_empty(),
                    m.profile_start.is_empty(),
                ) {
                    (true, true) => (None, 0),
                    (false, false) => (
                        Some(parse_rfc3339(&m.replay_anchor).context("meter.replay_anchor")?),
                        parse_rfc3339(&m.profile_start).context("meter.profile_start")?,
                    ),
                    _ => bail!(
                        "meter.replay_anchor and meter.profile_start go together: set both or neither"
                    ),
                };
                Ok(Meter::Simulated(Box::new(Simulated {
                    profile,
                    weather,
                    annual_kwh: m.annual_kwh,
                    pv_kwp: m.pv_kwp,
                    seed: m.seed,
                    clock,
                    anchor_s,
                    profile_start_s,
                    step_s,
                })))
            }
            other => bail!("meter.kind = {other:?}: use \"none\", \"simulated\" or \"csv\""),
        }
    }

    /// What the meter measures (or will measure) over `interval`.
    pub fn reading(&self, interval: IntervalIndex) -> Option<Reading> {
        match self {
            Meter::None => None,
            Meter::Csv(clock, rows) => rows.get(&clock.start_s(interval)).copied(),
            Meter::Simulated(s) => Some(s.reading(interval)),
        }
    }
}

impl Simulated {
    fn reading(&self, interval: IntervalIndex) -> Reading {
        let start = self.clock.start_s(interval);
        let t = match self.anchor_s {
            None => start,
            Some(anchor) => {
                let k = start.saturating_sub(anchor) / self.clock.interval_s;
                self.profile_start_s + k * self.step_s
            }
        };
        let t_i = i64::try_from(t).unwrap_or(i64::MAX);
        let kwh = load_kwh(&self.profile, self.weather.utc_offset_h, t_i, self.step_s);
        // Seeded noise per interval, so that households are not copies.
        let noise = 0.9 + 0.2 * Rng::new(self.seed ^ interval.0.wrapping_mul(0x9e37_79b9)).unit();
        let load_wh = (kwh * self.annual_kwh / BDEW_ANNUAL_KWH * noise * 1_000.0).round() as u64;
        let samples = (self.step_s / 300).max(1);
        let dt = self.step_s / samples;
        let w_per_kwp = (0..samples)
            .map(|i| self.weather.pv_w_per_kwp(t + i * dt + dt / 2))
            .sum::<f64>()
            / samples as f64;
        let pv_wh = (w_per_kwp * self.pv_kwp * self.step_s as f64 / 3_600.0).round() as u64;
        Reading { load_wh, pv_wh }
    }
}

fn read_csv(path: &Path) -> anyhow::Result<BTreeMap<u64, Reading>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("meter.csv: cannot read {}", path.display()))?;
    let mut rows = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (n == 0 && line.starts_with(|c: char| c.is_ascii_alphabetic())) {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed = (fields.len() == 3)
            .then(|| {
                Some((
                    fields[0].parse::<u64>().ok()?,
                    fields[1].parse::<u64>().ok()?,
                    fields[2].parse::<u64>().ok()?,
                ))
            })
            .flatten();
        let Some((start, import_wh, export_wh)) = parsed else {
            bail!(
                "meter.csv {} line {}: expected interval_start_s,import_wh,export_wh as whole numbers",
                path.display(),
                n + 1
            );
        };
        rows.insert(
            start,
            Reading {
                load_wh: import_wh,
                pv_wh: export_wh,
            },
        );
    }
    Ok(rows)
}
