//! The dynamic pricing engine: an indicative price for an upcoming interval,
//! which trading agents use to set limit prices and dashboards show.
//!
//! Two signals, both expressed as a *position* inside the tariff band
//! (0 = feed-in, 1 = retail, in parts per million) so that intervals with
//! different time-of-day tariffs can be compared:
//! 1. recent clearing prices, each as its position in its own interval's
//!    band, averaged with exponentially decaying weights (newest heaviest);
//! 2. the supply-demand ratio of recent intervals (same decaying average of
//!    supply and demand), turned into a position by the SDR pricing formula
//!    (Liu et al. 2017) under the target interval's tariff: scarce supply
//!    pushes towards retail, surplus towards feed-in.
//!
//! The indicative price is `feed-in + position × (retail − feed-in)` with
//! `position = w·history + (1 − w)·sdr`, where `w` is
//! [`PricingConfig::history_weight_ppm`] when there are recent prices and 0
//! otherwise. Without any history the engine answers the middle of the band.
//! Integer arithmetic throughout; the result is always inside
//! `[feed-in, retail]` (asserted).

use serde::{Deserialize, Serialize};

use crate::clearing::sdr_prices;
use crate::tariff::Tariff;

/// Parts per million: the fixed-point unit of weights and positions.
const PPM: u128 = 1_000_000;

/// What the engine remembers of one past interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalSummary {
    pub supply_wh: u64,
    pub demand_wh: u64,
    pub clearing_price_micro_per_kwh: Option<u64>,
    /// The tariff that was in force in that interval.
    pub tariff: Tariff,
}

/// Tuning of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricingConfig {
    /// Weight of the newest interval in the decaying averages (default
    /// 300,000 ppm: the last four intervals carry three quarters of the weight).
    pub decay_ppm: u32,
    /// Weight of recent prices against the SDR signal (default 500,000 ppm).
    pub history_weight_ppm: u32,
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            decay_ppm: 300_000,
            history_weight_ppm: 500_000,
        }
    }
}

/// The answer, with the signals it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndicativePrice {
    pub price_micro_per_kwh: u64,
    /// Recent supply / demand in ppm, if there was any demand.
    pub sdr_ppm: Option<u64>,
    /// Position from recent prices, if there were any.
    pub history_position_ppm: Option<u64>,
    /// Position from the supply-demand ratio, if there was any history.
    pub sdr_position_ppm: Option<u64>,
}

/// Position of `price` in `tariff`'s band, ppm, clamped to the band.
fn position(tariff: &Tariff, price: u64) -> u128 {
    let width = u128::from(tariff.retail_micro_per_kwh - tariff.feed_in_micro_per_kwh);
    if width == 0 {
        return PPM / 2;
    }
    let offset = u128::from(tariff.clamp(price) - tariff.feed_in_micro_per_kwh);
    offset * PPM / width
}

/// Exponentially decaying average over `values` (oldest first), newest
/// weighted `decay_ppm`. `None` if `values` is empty.
fn decaying_average(values: impl Iterator<Item = u128>, decay_ppm: u32) -> Option<u128> {
    let decay = u128::from(decay_ppm.clamp(1, 1_000_000));
    values.fold(None, |average, value| {
        Some(match average {
            None => value,
            Some(average) => (average * (PPM - decay) + value * decay) / PPM,
        })
    })
}

/// The indicative price for an interval with `tariff`, from `recent`
/// intervals (oldest first).
pub fn indicative_price(
    config: &PricingConfig,
    tariff: &Tariff,
    recent: &[IntervalSummary],
) -> IndicativePrice {
    let history = decaying_average(
        recent.iter().filter_map(|s| {
            s.clearing_price_micro_per_kwh
                .map(|p| position(&s.tariff, p))
        }),
        config.decay_ppm,
    );
    let supply = decaying_average(
        recent.iter().map(|s| u128::from(s.supply_wh)),
        config.decay_ppm,
    );
    let demand = decaying_average(
        recent.iter().map(|s| u128::from(s.demand_wh)),
        config.decay_ppm,
    );
    let (sdr_ppm, sdr_position) = match (supply, demand) {
        (Some(s), Some(d)) if d > 0 => {
            let (s64, d64) = (
                u64::try_from(s).unwrap_or(u64::MAX),
                u64::try_from(d).unwrap_or(u64::MAX),
            );
            let retail_net = tariff
                .retail_micro_per_kwh
                .saturating_sub(tariff.grid_fee_micro_per_kwh);
            let (seller, _) = if retail_net >= tariff.feed_in_micro_per_kwh {
                sdr_prices(
                    tariff.feed_in_micro_per_kwh,
                    retail_net,
                    tariff.retail_micro_per_kwh,
                    tariff.grid_fee_micro_per_kwh,
                    s64,
                    d64,
                )
            } else {
                (tariff.feed_in_micro_per_kwh, 0)
            };
            (
                Some(u64::try_from(s * PPM / d).unwrap_or(u64::MAX)),
                Some(position(tariff, seller)),
            )
        }
        (Some(_), Some(_)) => (None, Some(0)), // supply but no demand: feed-in
        _ => (None, None),
    };
    let blended = match (history, sdr_position) {
        (Some(h), Some(s)) => {
            let w = u128::from(config.history_weight_ppm.min(1_000_000));
            (h * w + s * (PPM - w)) / PPM
        }
        (Some(h), None) => h,
        (None, Some(s)) => s,
        (None, None) => PPM / 2,
    };
    let width = u128::from(tariff.retail_micro_per_kwh - tariff.feed_in_micro_per_kwh);
    let offset =
        u64::try_from(width * blended.min(PPM) / PPM).expect("offset below the band width");
    let price = tariff.feed_in_micro_per_kwh + offset;
    assert!(
        tariff.contains(price),
        "indicative price left the tariff band"
    );
    IndicativePrice {
        price_micro_per_kwh: price,
        sdr_ppm,
        history_position_ppm: history.and_then(|h| u64::try_from(h).ok()),
        sdr_position_ppm: sdr_position.and_then(|s| u64::try_from(s).ok()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn summary(supply_wh: u64, demand_wh: u64, price: Option<u64>) -> IntervalSummary {
        IntervalSummary {
            supply_wh,
            demand_wh,
            clearing_price_micro_per_kwh: price,
            tariff: Tariff::new(80_000, 300_000, 0),
        }
    }

    #[test]
    fn no_history_gives_the_middle_of_the_band() {
        let p = indicative_price(
            &PricingConfig::default(),
            &Tariff::new(80_000, 300_000, 0),
            &[],
        );
        assert_eq!(p.price_micro_per_kwh, 190_000);
    }

    #[test]
    fn scarcity_raises_and_surplus_lowers_the_price() {
        let t = Tariff::new(80_000, 300_000, 0);
        let config = PricingConfig::default();
        let scarce = indicative_price(&config, &t, &[summary(1_000, 10_000, None)]);
        let balanced = indicative_price(&config, &t, &[summary(10_000, 10_000, None)]);
        let surplus = indicative_price(&config, &t, &[summary(20_000, 10_000, None)]);
        assert!(scarce.price_micro_per_kwh > balanced.price_micro_per_kwh);
        assert_eq!(balanced.price_micro_per_kwh, 80_000);
        assert_eq!(surplus.price_micro_per_kwh, 80_000);
        // SDR = 0.1: P_sell = λs·λb / ((λb − λs)·0.1 + λs) = 24e9 / 102_000 = 235_294,
        // less one micro-unit lost to the ppm resolution of positions.
        assert_eq!(scarce.price_micro_per_kwh, 235_293);
        assert_eq!(scarce.sdr_ppm, Some(100_000));
    }

    #[test]
    fn recent_prices_move_to_the_new_band() {
        // A price at the top of a cheap night band maps to the top of the day band.
        let mut night = summary(0, 0, Some(200_000));
        night.tariff = Tariff::new(80_000, 200_000, 0);
        let config = PricingConfig {
            decay_ppm: 300_000,
            history_weight_ppm: 1_000_000,
        };
        let p = indicative_price(&config, &Tariff::new(80_000, 300_000, 0), &[night]);
        assert_eq!(p.price_micro_per_kwh, 300_000);
    }

    #[test]
    fn newer_intervals_weigh_more() {
        let config = PricingConfig {
            decay_ppm: 300_000,
            history_weight_ppm: 1_000_000,
        };
        let t = Tariff::new(0, 1_000_000, 0);
        let at = |price| IntervalSummary {
            tariff: t,
            ..summary(1, 1, Some(price))
        };
        let rising = indicative_price(&config, &t, &[at(100_000), at(900_000)]);
        // 0.7·100_000 + 0.3·900_000
        assert_eq!(rising.price_micro_per_kwh, 340_000);
    }

    proptest! {
        #[test]
        fn always_inside_the_band(
            feed_in in 0u64..500_000,
            width in 0u64..500_000,
            fee in 0u64..100_000,
            decay in 0u32..=1_000_000,
            weight in 0u32..=1_000_000,
            history in prop::collection::vec((0u64..1_000_000, 0u64..1_000_000, prop::option::of(0u64..2_000_000)), 0..20),
        ) {
            let t = Tariff::new(feed_in, feed_in + width, fee);
            let recent: Vec<_> = history.into_iter().map(|(s, d, p)| summary(s, d, p)).collect();
            let config = PricingConfig { decay_ppm: decay, history_weight_ppm: weight };
            let p = indicative_price(&config, &t, &recent);
            prop_assert!(t.contains(p.price_micro_per_kwh));
        }
    }
}
