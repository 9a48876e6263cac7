//! The simulated households: each differs (seeded) in annual consumption, a
//! time shift of its load profile, PV size, battery and the limits it trades
//! at. Their energy per interval is computed once, up front, as whole Wh.

use dharti_protocol::agent::{AgentSettings, Battery};

use crate::data::{BDEW_ANNUAL_KWH, LoadProfile, Weather, day_type};
use crate::rng::Rng;
use crate::scenario::Scenario;
use crate::time::civil_from_days;

#[derive(Clone, Debug)]
pub struct Household {
    pub annual_kwh: f64,
    pub pv_kwp: f64,
    pub settings: AgentSettings,
    /// Consumption per interval, Wh.
    pub load_wh: Vec<u64>,
    /// PV generation per interval, Wh.
    pub pv_wh: Vec<u64>,
}

fn uniform(rng: &mut Rng, [low, high]: [f64; 2]) -> f64 {
    low + (high - low) * rng.unit()
}

/// Builds `scenario.households.count` households for the run's intervals.
pub fn generate(
    scenario: &Scenario,
    start_s: u64,
    profile: &LoadProfile,
    weather: &Weather,
    rng: &mut Rng,
) -> Vec<Household> {
    let h = &scenario.households;
    let m = &scenario.market;
    let band = (m.retail_micro_per_kwh - m.feed_in_micro_per_kwh) as f64;
    let intervals = scenario.simulation.intervals as usize;
    // PV per kWp is the same for every household: compute it once.
    let pv_per_kwp: Vec<f64> = (0..intervals)
        .map(|k| {
            let t = start_s + k as u64 * m.interval_s;
            // Average of samples every 5 minutes across the interval.
            let samples = (m.interval_s / 300).max(1);
            let step = m.interval_s / samples;
            (0..samples)
                .map(|i| weather.pv_w_per_kwp(t + i * step + step / 2))
                .sum::<f64>()
                / samples as f64
        })
        .collect();
    (0..h.count)
        .map(|_| {
            let annual_kwh = uniform(rng, h.annual_kwh);
            let shift_s = (rng.below(5) as i64 - 2) * 900;
            let pv_kwp = if rng.unit() < h.pv_share {
                uniform(rng, h.pv_kwp)
            } else {
                0.0
            };
            let battery = (rng.unit() < h.battery_share).then(|| {
                let capacity_wh = (uniform(rng, h.battery_kwh) * 1_000.0) as u64;
                Battery {
                    capacity_wh,
                    // C/2: a 10 kWh battery moves 5 kW.
                    max_power_w: capacity_wh / 2,
                    min_soc_wh: capacity_wh / 10,
                    efficiency_ppm: 900_000,
                }
            });
            let settings = AgentSettings {
                // Sellers want 0–20 % of the band above feed-in, buyers pay up to 0–20 % below retail.
                min_sell_price_micro_per_kwh: m.feed_in_micro_per_kwh
                    + (band * 0.2 * rng.unit()) as u64,
                max_buy_price_micro_per_kwh: m.retail_micro_per_kwh
                    - (band * 0.2 * rng.unit()) as u64,
                battery,
                ..AgentSettings::default()
            };
            let scale = annual_kwh / BDEW_ANNUAL_KWH;
            let mut load_wh = Vec::with_capacity(intervals);
            let mut pv_wh = Vec::with_capacity(intervals);
            for (k, pv) in pv_per_kwp.iter().enumerate() {
                let t = start_s as i64 + k as i64 * m.interval_s as i64;
                let kwh = load_kwh(profile, weather.utc_offset_h, t + shift_s, m.interval_s);
                // ±10 % noise per interval, so that households are not copies.
                let noise = 0.9 + 0.2 * rng.unit();
                load_wh.push((kwh * scale * noise * 1_000.0).round() as u64);
                pv_wh.push((pv * pv_kwp * m.interval_s as f64 / 3_600.0).round() as u64);
            }
            Household {
                annual_kwh,
                pv_kwp,
                settings,
                load_wh,
                pv_wh,
            }
        })
        .collect()
}

/// Normalised kWh of the profile over `[t, t + len_s)`, local standard time.
pub fn load_kwh(profile: &LoadProfile, utc_offset_h: i64, t: i64, len_s: u64) -> f64 {
    let mut total = 0.0;
    let mut at = t;
    let end = t + len_s as i64;
    while at < end {
        let local = at + utc_offset_h * 3_600;
        let days = local.div_euclid(86_400);
        let (_, month, _) = civil_from_days(days);
        let slot = usize::try_from(local.rem_euclid(86_400) / 900).expect("0..96");
        let slot_end = at - local.rem_euclid(900) + 900;
        let until = slot_end.min(end);
        total += profile.kwh(month, day_type(days), slot) * (until - at) as f64 / 900.0;
        at = until;
    }
    total
}
