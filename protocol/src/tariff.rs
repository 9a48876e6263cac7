//! Grid tariffs: the feed-in price the grid pays, the retail price it
//! charges, and the per-kWh grid fee for local (peer-to-peer) energy. Every
//! market price is bounded by feed-in below and retail above.
//!
//! Tariffs may vary by time of day and weekday through *zones*, the way evcc
//! users configure dynamic tariffs: the first zone that contains an
//! interval's start (in the market's fixed local UTC offset) applies,
//! otherwise the base tariff.

use serde::{Deserialize, Serialize};

/// Highest price any tariff or offer may name: 1,000 currency units per kWh.
/// Anything above is a typo (e.g. a price given in micro-units per Wh), and
/// the bound keeps `energy_wh * price` comfortably inside `u64` per trade.
pub const MAX_PRICE_MICRO_PER_KWH: u64 = 1_000_000_000;

/// The grid's prices for one interval, in micro-units per kWh.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tariff {
    /// What the grid pays for exported energy; the floor of every price.
    pub feed_in_micro_per_kwh: u64,
    /// What the grid charges for imported energy; the ceiling of every price.
    pub retail_micro_per_kwh: u64,
    /// Fee per kWh of local energy, paid by the buyer to the grid operator.
    #[serde(default)]
    pub grid_fee_micro_per_kwh: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TariffError {
    #[error(
        "feed-in tariff ({feed_in}) must not exceed the retail tariff ({retail}); check the two prices are not swapped"
    )]
    FeedInAboveRetail { feed_in: u64, retail: u64 },
    #[error(
        "{name} = {value} is above the maximum of {MAX_PRICE_MICRO_PER_KWH} micro-units per kWh"
    )]
    Absurd { name: &'static str, value: u64 },
    #[error("zone {index}: hours must be within 0..=24 with from < to, got {from}..{to}")]
    ZoneHours { index: usize, from: u8, to: u8 },
    #[error("zone {index}: {source}")]
    ZoneTariff {
        index: usize,
        #[source]
        source: Box<TariffError>,
    },
}

impl Tariff {
    /// A tariff from feed-in, retail and grid fee (micro-units per kWh).
    pub const fn new(
        feed_in_micro_per_kwh: u64,
        retail_micro_per_kwh: u64,
        grid_fee_micro_per_kwh: u64,
    ) -> Tariff {
        Tariff {
            feed_in_micro_per_kwh,
            retail_micro_per_kwh,
            grid_fee_micro_per_kwh,
        }
    }

    pub fn validate(&self) -> Result<(), TariffError> {
        for (name, value) in [
            ("feed_in_micro_per_kwh", self.feed_in_micro_per_kwh),
            ("retail_micro_per_kwh", self.retail_micro_per_kwh),
            ("grid_fee_micro_per_kwh", self.grid_fee_micro_per_kwh),
        ] {
            if value > MAX_PRICE_MICRO_PER_KWH {
                return Err(TariffError::Absurd { name, value });
            }
        }
        if self.feed_in_micro_per_kwh > self.retail_micro_per_kwh {
            return Err(TariffError::FeedInAboveRetail {
                feed_in: self.feed_in_micro_per_kwh,
                retail: self.retail_micro_per_kwh,
            });
        }
        Ok(())
    }

    /// Whether `price` lies within `[feed-in, retail]`.
    pub fn contains(&self, price_micro_per_kwh: u64) -> bool {
        (self.feed_in_micro_per_kwh..=self.retail_micro_per_kwh).contains(&price_micro_per_kwh)
    }

    /// `price` clamped into `[feed-in, retail]`.
    pub fn clamp(&self, price_micro_per_kwh: u64) -> u64 {
        price_micro_per_kwh.clamp(self.feed_in_micro_per_kwh, self.retail_micro_per_kwh)
    }
}

/// A time-of-day / weekday window with its own tariff.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TariffZone {
    /// Weekdays the zone applies on, as a bit set: bit 0 = Monday … bit 6 =
    /// Sunday. 0x7f (every day) by default.
    #[serde(default = "every_day")]
    pub days_mask: u8,
    /// First local hour of the zone (0..=23).
    pub from_hour: u8,
    /// Local hour the zone ends, exclusive (1..=24).
    pub to_hour: u8,
    #[serde(flatten)]
    pub tariff: Tariff,
}

fn every_day() -> u8 {
    0x7f
}

/// A base tariff plus zones, resolved per interval start.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TariffSchedule {
    pub base: Tariff,
    #[serde(default)]
    pub zones: Vec<TariffZone>,
    /// Fixed offset of the market's local time from UTC, in minutes (e.g. 60
    /// for CET). Daylight saving is not followed; markets that care use zones.
    #[serde(default)]
    pub utc_offset_minutes: i32,
}

impl TariffSchedule {
    /// A schedule with one tariff at all times.
    pub fn flat(base: Tariff) -> TariffSchedule {
        TariffSchedule {
            base,
            zones: Vec::new(),
            utc_offset_minutes: 0,
        }
    }

    pub fn validate(&self) -> Result<(), TariffError> {
        self.base.validate()?;
        for (index, zone) in self.zones.iter().enumerate() {
            if zone.from_hour >= zone.to_hour || zone.to_hour > 24 {
                return Err(TariffError::ZoneHours {
                    index,
                    from: zone.from_hour,
                    to: zone.to_hour,
                });
            }
            zone.tariff
                .validate()
                .map_err(|source| TariffError::ZoneTariff {
                    index,
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    /// The tariff in force at unix second `at_s`.
    pub fn at(&self, at_s: u64) -> Tariff {
        let local_s = i128::from(at_s) + i128::from(self.utc_offset_minutes) * 60;
        let local_s = local_s.max(0);
        let days = local_s / 86_400;
        // 1970-01-01 was a Thursday; shift so that 0 = Monday.
        let weekday = u8::try_from((days + 3) % 7).expect("a weekday is below 7");
        let hour = u8::try_from((local_s % 86_400) / 3_600).expect("an hour is below 24");
        self.zones
            .iter()
            .find(|zone| {
                zone.days_mask & (1 << weekday) != 0
                    && zone.from_hour <= hour
                    && hour < zone.to_hour
            })
            .map_or(self.base, |zone| zone.tariff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_apply_by_hour_and_weekday() {
        let schedule = TariffSchedule {
            base: Tariff::new(80_000, 300_000, 20_000),
            zones: vec![
                // Weekday nights are cheap.
                TariffZone {
                    days_mask: 0x1f,
                    from_hour: 0,
                    to_hour: 6,
                    tariff: Tariff::new(80_000, 200_000, 10_000),
                },
                // Every evening the grid fee is high.
                TariffZone {
                    days_mask: 0x7f,
                    from_hour: 17,
                    to_hour: 21,
                    tariff: Tariff::new(80_000, 350_000, 40_000),
                },
            ],
            utc_offset_minutes: 60,
        };
        schedule.validate().unwrap();
        // Monday 2025-06-02 03:00 local = 02:00 UTC.
        let monday_3am_local = 1_748_829_600;
        assert_eq!(schedule.at(monday_3am_local).retail_micro_per_kwh, 200_000);
        // Sunday 2025-06-01 03:00 local: no night zone on Sundays.
        assert_eq!(
            schedule.at(monday_3am_local - 86_400).retail_micro_per_kwh,
            300_000
        );
        // Monday 18:00 local.
        assert_eq!(
            schedule
                .at(monday_3am_local + 15 * 3_600)
                .grid_fee_micro_per_kwh,
            40_000
        );
        // Monday 12:00 local: base.
        assert_eq!(schedule.at(monday_3am_local + 9 * 3_600), schedule.base);
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(matches!(
            Tariff::new(300, 200, 0).validate(),
            Err(TariffError::FeedInAboveRetail { .. })
        ));
        assert!(matches!(
            Tariff::new(0, MAX_PRICE_MICRO_PER_KWH + 1, 0).validate(),
            Err(TariffError::Absurd {
                name: "retail_micro_per_kwh",
                ..
            })
        ));
        let bad_zone = TariffSchedule {
            base: Tariff::new(1, 2, 0),
            zones: vec![TariffZone {
                days_mask: 1,
                from_hour: 5,
                to_hour: 5,
                tariff: Tariff::new(1, 2, 0),
            }],
            utc_offset_minutes: 0,
        };
        assert!(matches!(
            bad_zone.validate(),
            Err(TariffError::ZoneHours { index: 0, .. })
        ));
    }
}
