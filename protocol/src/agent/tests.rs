//! Hand-checked plans per mode, then properties over random households.

use proptest::prelude::*;

use super::*;

const INTERVAL_S: u64 = 900;

fn tariff() -> Tariff {
    Tariff::new(80_000, 300_000, 20_000)
}

fn forecast(net_load_wh: i64, price: u64) -> IntervalForecast {
    IntervalForecast {
        net_load_wh,
        indicative_price_micro_per_kwh: price,
        tariff: tariff(),
    }
}

fn outlook(price: u64) -> Vec<IntervalForecast> {
    vec![forecast(0, price); 8]
}

/// 10 kWh, 4 kW (1 kWh per 15 minutes), 1 kWh reserve, 90% round trip.
fn battery() -> Battery {
    Battery {
        capacity_wh: 10_000,
        max_power_w: 4_000,
        min_soc_wh: 1_000,
        efficiency_ppm: 900_000,
    }
}

fn settings(battery: Option<Battery>) -> AgentSettings {
    AgentSettings {
        min_sell_price_micro_per_kwh: 100_000,
        max_buy_price_micro_per_kwh: 280_000,
        battery,
        ..AgentSettings::default()
    }
}

#[test]
fn without_a_battery_the_agent_trades_its_net_load_at_its_limits() {
    let s = settings(None);
    let deficit = plan(
        &s,
        0,
        INTERVAL_S,
        &forecast(700, 190_000),
        &outlook(190_000),
    );
    assert_eq!(
        deficit.bid,
        Some(LimitOrder {
            energy_wh: 700,
            price_micro_per_kwh: 280_000
        })
    );
    assert_eq!(deficit.ask, None);
    let surplus = plan(
        &s,
        0,
        INTERVAL_S,
        &forecast(-450, 190_000),
        &outlook(190_000),
    );
    assert_eq!(
        surplus.ask,
        Some(LimitOrder {
            energy_wh: 450,
            price_micro_per_kwh: 100_000
        })
    );
    assert_eq!(surplus.bid, None);
    let nothing = plan(&s, 0, INTERVAL_S, &forecast(0, 190_000), &outlook(190_000));
    assert_eq!((nothing.bid, nothing.ask), (None, None));
}

#[test]
fn limits_are_clamped_into_the_tariff_band() {
    let s = AgentSettings {
        min_sell_price_micro_per_kwh: 1,
        max_buy_price_micro_per_kwh: 9_000_000,
        ..settings(None)
    };
    let p = plan(&s, 0, INTERVAL_S, &forecast(100, 190_000), &[]);
    assert_eq!(p.bid.unwrap().price_micro_per_kwh, 300_000);
    let p = plan(&s, 0, INTERVAL_S, &forecast(-100, 190_000), &[]);
    assert_eq!(p.ask.unwrap().price_micro_per_kwh, 80_000);
}

#[test]
fn self_consumption_stores_surplus_and_covers_deficit() {
    let s = settings(Some(battery()));
    // Surplus 1,500 Wh, power limit 1,000 Wh per interval: 1,000 stored, 500 sold.
    let p = plan(
        &s,
        5_000,
        INTERVAL_S,
        &forecast(-1_500, 190_000),
        &outlook(190_000),
    );
    assert_eq!(p.mode, Mode::SelfConsumption);
    assert_eq!(p.charge_own_wh, 1_000);
    assert_eq!(p.ask.unwrap().energy_wh, 500);
    let d = dispatch(&s, 5_000, &p, -1_500, 0, 500);
    assert_eq!(
        (d.charge_wh, d.soc_after_wh, d.export_wh, d.import_wh),
        (1_000, 5_900, 500, 0)
    );
    // Deficit 600 Wh with only 300 Wh above the reserve.
    let p = plan(
        &s,
        1_300,
        INTERVAL_S,
        &forecast(600, 190_000),
        &outlook(190_000),
    );
    assert_eq!(p.discharge_own_wh, 300);
    assert_eq!(p.bid.unwrap().energy_wh, 300);
    let d = dispatch(&s, 1_300, &p, 600, 300, 0);
    assert_eq!(
        (d.discharge_wh, d.soc_after_wh, d.import_wh),
        (300, 1_000, 300)
    );
}

#[test]
fn cheap_intervals_buy_to_charge_only_at_a_cheap_price() {
    let s = settings(Some(battery()));
    // 150k against an outlook of 200k: cheap (≤ 180k).
    let p = plan(
        &s,
        9_500,
        INTERVAL_S,
        &forecast(0, 150_000),
        &outlook(200_000),
    );
    assert_eq!(p.mode, Mode::Cheap);
    // Room 500 Wh of charge = 555 Wh drawn at 90%.
    assert_eq!(
        p.bid,
        Some(LimitOrder {
            energy_wh: 555,
            price_micro_per_kwh: 180_000
        })
    );
    let bought = dispatch(&s, 9_500, &p, 0, 555, 0);
    assert_eq!(
        (bought.charge_wh, bought.soc_after_wh, bought.import_wh),
        (555, 9_999, 555)
    );
    // Not matched: the battery does not charge from the grid at retail.
    let unmatched = dispatch(&s, 9_500, &p, 0, 0, 0);
    assert_eq!((unmatched.charge_wh, unmatched.import_wh), (0, 0));
}

#[test]
fn expensive_intervals_sell_from_the_battery() {
    let s = settings(Some(battery()));
    let p = plan(
        &s,
        6_000,
        INTERVAL_S,
        &forecast(200, 260_000),
        &outlook(200_000),
    );
    assert_eq!(p.mode, Mode::Expensive);
    assert_eq!(p.discharge_own_wh, 200);
    assert_eq!(
        p.ask,
        Some(LimitOrder {
            energy_wh: 800,
            price_micro_per_kwh: 100_000
        })
    );
    assert_eq!(p.bid, None);
    // Half sold: the battery gives 200 for the house and 400 for the buyer.
    let d = dispatch(&s, 6_000, &p, 200, 0, 400);
    assert_eq!(
        (d.discharge_wh, d.soc_after_wh, d.export_wh),
        (600, 5_400, 400)
    );
}

fn battery_strategy() -> impl Strategy<Value = Option<Battery>> {
    prop::option::of(
        (
            1u64..20_000,
            1u64..10_000,
            0u64..5_000,
            500_000u32..=1_000_000,
        )
            .prop_map(
                |(capacity_wh, max_power_w, reserve, efficiency_ppm)| Battery {
                    capacity_wh,
                    max_power_w,
                    min_soc_wh: reserve.min(capacity_wh),
                    efficiency_ppm,
                },
            ),
    )
}

proptest! {
    #[test]
    fn plans_respect_limits_and_physics(
        battery in battery_strategy(),
        soc_share in 0u64..=100,
        net in -5_000i64..5_000,
        price in 80_000u64..300_000,
        outlook_prices in prop::collection::vec(80_000u64..300_000, 0..12),
        min_sell in 0u64..400_000,
        max_buy in 0u64..400_000,
        bought_share in 0u64..=100,
        sold_share in 0u64..=100,
    ) {
        let s = AgentSettings { min_sell_price_micro_per_kwh: min_sell, max_buy_price_micro_per_kwh: max_buy, battery, ..AgentSettings::default() };
        let soc = battery.map_or(0, |b| b.min_soc_wh + (b.capacity_wh - b.min_soc_wh) * soc_share / 100);
        let outlook: Vec<_> = outlook_prices.into_iter().map(|p| forecast(0, p)).collect();
        let p = plan(&s, soc, INTERVAL_S, &forecast(net, price), &outlook);
        let t = tariff();
        if let Some(bid) = p.bid {
            prop_assert!(bid.energy_wh > 0 && t.contains(bid.price_micro_per_kwh));
            prop_assert!(bid.price_micro_per_kwh <= t.clamp(max_buy));
        }
        if let Some(ask) = p.ask {
            prop_assert!(ask.energy_wh > 0 && t.contains(ask.price_micro_per_kwh));
            prop_assert!(ask.price_micro_per_kwh >= t.clamp(min_sell));
        }
        let bought = p.bid.map_or(0, |b| b.energy_wh * bought_share / 100);
        let sold = p.ask.map_or(0, |a| a.energy_wh * sold_share / 100);
        let d = dispatch(&s, soc, &p, net, bought, sold);
        // The meter sees the household plus the battery.
        prop_assert_eq!(i128::from(d.import_wh) - i128::from(d.export_wh), i128::from(net) + i128::from(d.charge_wh) - i128::from(d.discharge_wh));
        prop_assert!(d.charge_wh == 0 || d.discharge_wh == 0, "charging and discharging at once");
        if let Some(b) = battery {
            prop_assert!(d.soc_after_wh <= b.capacity_wh);
            prop_assert!(d.soc_after_wh >= b.min_soc_wh.min(soc));
            let step = u128::from(b.max_power_w) * u128::from(INTERVAL_S) / 3_600;
            prop_assert!(u128::from(d.charge_wh.max(d.discharge_wh)) <= step);
        }
    }
}
