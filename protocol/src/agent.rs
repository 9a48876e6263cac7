//! The trading agent of a household: turns a forecast of its net load and
//! the user's limits into offers for one interval, and, once the interval's
//! result is final, decides what the battery actually does. Pure integer
//! arithmetic; the same inputs give the same plan on every machine.
//!
//! # Strategy
//!
//! **Limit prices are truthful.** Whatever a household does not trade
//! locally it trades with the grid: it can always buy at retail and sell at
//! feed-in. So it bids its reservation price, `min(max_buy_price, retail)`, and
//! asks `max(min_sell_price, feed-in)`; with pay-as-clear and many
//! participants this is close to optimal, and it never trades worse than the
//! user's limits.
//!
//! **The battery follows the price outlook.** The agent compares the
//! interval's indicative price with the average indicative price of the
//! upcoming intervals it is given (the outlook, e.g. the next 24 hours):
//! - *cheap* (price ≤ outlook × `cheap_below_ppm`, default 0.9): the battery
//!   charges from the household's own surplus, and, if the household has no
//!   deficit of its own, bids for more energy to charge with, at a limit of
//!   the cheap threshold price (so it only buys when it really is cheap);
//! - *expensive* (price ≥ outlook × `expensive_above_ppm`, default 1.1): the
//!   battery covers the household's deficit and offers what is left above the
//!   minimum state of charge for sale;
//! - otherwise *self-consumption*: surplus charges the battery, deficit
//!   discharges it, nothing is traded from or into the battery.
//!
//! Energy per interval is limited by the battery's power; charging loses the
//! round-trip efficiency (discharging is counted lossless), and the state of
//! charge stays within `[min_soc_wh, capacity_wh]`.
//!
//! **Dispatch after the result.** Battery flows that depend on the market
//! (charging with bought energy, discharging into a sale) happen only for the
//! energy that actually traded: [`dispatch`] takes the traded amounts and
//! returns the battery's flows and what the meter will show. Bought energy
//! covers the household's own deficit first; sold energy comes from its own
//! surplus first.

use serde::{Deserialize, Serialize};

use crate::tariff::Tariff;

/// Parts per million.
const PPM: u128 = 1_000_000;

/// A home battery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Battery {
    pub capacity_wh: u64,
    /// Most power in either direction.
    pub max_power_w: u64,
    /// The state of charge the agent never goes below (backup reserve).
    pub min_soc_wh: u64,
    /// Round-trip efficiency in ppm, applied when charging (default 900,000).
    pub efficiency_ppm: u32,
}

/// The user's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSettings {
    /// Never sell below this (clamped up to feed-in).
    pub min_sell_price_micro_per_kwh: u64,
    /// Never buy above this (clamped down to retail).
    pub max_buy_price_micro_per_kwh: u64,
    pub battery: Option<Battery>,
    /// An interval is cheap at or below this share of the outlook (default 0.9).
    pub cheap_below_ppm: u32,
    /// An interval is expensive at or above this share of the outlook (default 1.1).
    pub expensive_above_ppm: u32,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            min_sell_price_micro_per_kwh: 0,
            max_buy_price_micro_per_kwh: u64::MAX,
            battery: None,
            cheap_below_ppm: 900_000,
            expensive_above_ppm: 1_100_000,
        }
    }
}

/// What the household expects for one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalForecast {
    /// Consumption minus generation in the interval: positive is a deficit
    /// (import), negative a surplus (export).
    pub net_load_wh: i64,
    pub indicative_price_micro_per_kwh: u64,
    pub tariff: Tariff,
}

/// A limit order the agent wants to place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOrder {
    pub energy_wh: u64,
    pub price_micro_per_kwh: u64,
}

/// How the agent reads the interval's price.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Cheap,
    SelfConsumption,
    Expensive,
}

/// The agent's plan for one interval, before clearing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub mode: Mode,
    pub bid: Option<LimitOrder>,
    pub ask: Option<LimitOrder>,
    /// Own surplus the battery takes regardless of the market.
    pub charge_own_wh: u64,
    /// Own deficit the battery covers regardless of the market.
    pub discharge_own_wh: u64,
    /// Energy the battery takes if the bid's charging part is bought.
    pub charge_market_wh: u64,
    /// Energy the battery gives if the ask's battery part is sold.
    pub discharge_market_wh: u64,
    /// Deficit left after the battery (the bid's household part).
    pub deficit_wh: u64,
    /// Surplus left after the battery (the ask's household part).
    pub surplus_wh: u64,
}

impl Plan {
    /// The plan of a household that does not take part in an interval (its
    /// node was offline): no offers, the battery idle, the grid balances.
    pub fn idle(net_load_wh: i64) -> Plan {
        Plan {
            mode: Mode::SelfConsumption,
            bid: None,
            ask: None,
            charge_own_wh: 0,
            discharge_own_wh: 0,
            charge_market_wh: 0,
            discharge_market_wh: 0,
            deficit_wh: u64::try_from(net_load_wh.max(0)).expect("non-negative"),
            surplus_wh: net_load_wh.min(0).unsigned_abs(),
        }
    }
}

/// What happens in the interval once the market result is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    /// Energy into the battery (before losses).
    pub charge_wh: u64,
    /// Energy out of the battery.
    pub discharge_wh: u64,
    pub soc_after_wh: u64,
    /// What the meter will read.
    pub import_wh: u64,
    pub export_wh: u64,
}

/// Energy a battery can move in one interval.
fn step_wh(battery: &Battery, interval_s: u64) -> u64 {
    let energy = u128::from(battery.max_power_w) * u128::from(interval_s) / 3_600;
    u64::try_from(energy).unwrap_or(u64::MAX)
}

/// Most energy the battery can take from the household side now.
fn charge_room_wh(battery: &Battery, soc_wh: u64, interval_s: u64) -> u64 {
    let room = battery.capacity_wh.saturating_sub(soc_wh);
    let efficiency = u128::from(battery.efficiency_ppm.clamp(1, 1_000_000));
    let drawn = u64::try_from(u128::from(room) * PPM / efficiency).unwrap_or(u64::MAX);
    drawn.min(step_wh(battery, interval_s))
}

/// Most energy the battery can give now.
fn discharge_room_wh(battery: &Battery, soc_wh: u64, interval_s: u64) -> u64 {
    soc_wh
        .saturating_sub(battery.min_soc_wh)
        .min(step_wh(battery, interval_s))
}

fn stored_wh(battery: &Battery, drawn_wh: u64) -> u64 {
    let stored = u128::from(drawn_wh) * u128::from(battery.efficiency_ppm.min(1_000_000)) / PPM;
    u64::try_from(stored).expect("stored energy is below drawn energy")
}

/// Classifies the interval's price against the outlook.
fn mode(
    settings: &AgentSettings,
    now: &IntervalForecast,
    outlook: &[IntervalForecast],
) -> (Mode, u64) {
    let average = if outlook.is_empty() {
        u128::from(now.indicative_price_micro_per_kwh)
    } else {
        outlook
            .iter()
            .map(|f| u128::from(f.indicative_price_micro_per_kwh))
            .sum::<u128>()
            / outlook.len() as u128
    };
    let price = u128::from(now.indicative_price_micro_per_kwh) * PPM;
    let cheap = average * u128::from(settings.cheap_below_ppm);
    let expensive = average * u128::from(settings.expensive_above_ppm);
    let cheap_price = u64::try_from(cheap / PPM).unwrap_or(u64::MAX);
    if price <= cheap {
        (Mode::Cheap, cheap_price)
    } else if price >= expensive {
        (Mode::Expensive, cheap_price)
    } else {
        (Mode::SelfConsumption, cheap_price)
    }
}

/// Plans the interval `now` (of `interval_s` seconds) given the battery's
/// state of charge and the outlook of upcoming intervals.
pub fn plan(
    settings: &AgentSettings,
    soc_wh: u64,
    interval_s: u64,
    now: &IntervalForecast,
    outlook: &[IntervalForecast],
) -> Plan {
    let tariff = &now.tariff;
    let bid_price = tariff.clamp(settings.max_buy_price_micro_per_kwh);
    let ask_price = tariff.clamp(settings.min_sell_price_micro_per_kwh);
    let deficit = u64::try_from(now.net_load_wh.max(0)).expect("non-negative");
    let surplus = now.net_load_wh.min(0).unsigned_abs();
    let (mode, cheap_price) = mode(settings, now, outlook);
    let mut plan = Plan {
        mode,
        ..Plan::idle(now.net_load_wh)
    };
    if let Some(battery) = &settings.battery {
        let charge_room = charge_room_wh(battery, soc_wh, interval_s);
        let discharge_room = discharge_room_wh(battery, soc_wh, interval_s);
        match mode {
            Mode::SelfConsumption | Mode::Cheap => {
                plan.charge_own_wh = surplus.min(charge_room);
                if mode == Mode::SelfConsumption {
                    plan.discharge_own_wh = deficit.min(discharge_room);
                } else if deficit == 0 {
                    plan.charge_market_wh = charge_room - plan.charge_own_wh;
                }
            }
            Mode::Expensive => {
                plan.discharge_own_wh = deficit.min(discharge_room);
                plan.discharge_market_wh = discharge_room - plan.discharge_own_wh;
            }
        }
        plan.deficit_wh = deficit - plan.discharge_own_wh;
        plan.surplus_wh = surplus - plan.charge_own_wh;
    }
    if plan.deficit_wh > 0 {
        plan.bid = Some(LimitOrder {
            energy_wh: plan.deficit_wh,
            price_micro_per_kwh: bid_price,
        });
    } else if plan.charge_market_wh > 0 {
        // Buy to charge only at a price that is cheap against the outlook.
        let price = tariff.clamp(cheap_price.min(bid_price));
        plan.bid = Some(LimitOrder {
            energy_wh: plan.charge_market_wh,
            price_micro_per_kwh: price,
        });
    }
    let for_sale = plan.surplus_wh + plan.discharge_market_wh;
    if for_sale > 0 {
        plan.ask = Some(LimitOrder {
            energy_wh: for_sale,
            price_micro_per_kwh: ask_price,
        });
    }
    plan
}

/// Carries out `plan` once the interval's final result says how much of the
/// bid was bought and how much of the ask was sold.
pub fn dispatch(
    settings: &AgentSettings,
    soc_wh: u64,
    plan: &Plan,
    net_load_wh: i64,
    bought_wh: u64,
    sold_wh: u64,
) -> Dispatch {
    let bid_energy = plan.bid.map_or(0, |b| b.energy_wh);
    let ask_energy = plan.ask.map_or(0, |a| a.energy_wh);
    assert!(
        bought_wh <= bid_energy && sold_wh <= ask_energy,
        "traded more than the agent offered"
    );
    // Bought energy covers the deficit first, then charging; sold energy comes
    // from the surplus first, then the battery.
    let charge_market = bought_wh
        .saturating_sub(plan.deficit_wh)
        .min(plan.charge_market_wh);
    let discharge_market = sold_wh
        .saturating_sub(plan.surplus_wh)
        .min(plan.discharge_market_wh);
    let charge = plan.charge_own_wh + charge_market;
    let discharge = plan.discharge_own_wh + discharge_market;
    let soc_after = match &settings.battery {
        Some(battery) => {
            let soc = (soc_wh + stored_wh(battery, charge))
                .checked_sub(discharge)
                .expect("dispatch is called with the state of charge the plan was made with");
            assert!(
                soc <= battery.capacity_wh && soc >= battery.min_soc_wh.min(soc_wh),
                "state of charge out of bounds"
            );
            soc
        }
        None => {
            assert_eq!(charge + discharge, 0, "flows without a battery");
            soc_wh
        }
    };
    let grid = i128::from(net_load_wh) + i128::from(charge) - i128::from(discharge);
    let magnitude = u64::try_from(grid.unsigned_abs()).expect("bounded by the inputs");
    Dispatch {
        charge_wh: charge,
        discharge_wh: discharge,
        soc_after_wh: soc_after,
        import_wh: if grid > 0 { magnitude } else { 0 },
        export_wh: if grid < 0 { magnitude } else { 0 },
    }
}

#[cfg(test)]
mod tests;
