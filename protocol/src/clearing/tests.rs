//! Hand-checked books per mechanism, then properties over random books.

// Test books are tiny; casts between their small counts cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use proptest::prelude::*;

use super::*;

fn tariff(fee: u64) -> Tariff {
    Tariff {
        feed_in_micro_per_kwh: 80_000,
        retail_micro_per_kwh: 300_000,
        grid_fee_micro_per_kwh: fee,
    }
}

fn order(
    id: &str,
    participant: &str,
    side: Side,
    energy_wh: u64,
    price: u64,
) -> Order<String, String> {
    Order {
        id: id.into(),
        participant: participant.into(),
        side,
        energy_wh,
        price_micro_per_kwh: price,
    }
}

use Side::{Ask, Bid};

/// (bid id, ask id, energy, seller price, fee, value, surplus)
type Expected = (&'static str, &'static str, u64, u64, u64, u64, u64);

fn check(
    mechanism: &str,
    fee: u64,
    book: &[Order<String, String>],
    price: Option<u64>,
    trades: &[Expected],
) {
    let result = clear(mechanism.parse().unwrap(), &tariff(fee), book).unwrap();
    assert_eq!(
        result.clearing_price_micro_per_kwh, price,
        "{mechanism} price"
    );
    let got: Vec<Expected> = result
        .trades
        .iter()
        .map(|t| {
            (
                leak(&t.bid_id),
                leak(&t.ask_id),
                t.energy_wh,
                t.price_micro_per_kwh,
                t.grid_fee_micro,
                t.value_micro,
                t.surplus_micro,
            )
        })
        .collect();
    assert_eq!(got, trades, "{mechanism} trades");
    assert_eq!(result.volume_wh, trades.iter().map(|t| t.2).sum::<u64>());
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

#[test]
fn issue_example() {
    let book = [
        order("b1", "alice", Bid, 1500, 200_000),
        order("a1", "bob", Ask, 1000, 120_000),
    ];
    check(
        "pay-as-clear",
        0,
        &book,
        Some(160_000),
        &[("b1", "a1", 1000, 160_000, 0, 160_000, 0)],
    );
}

/// A step-shaped book with a grid fee of 20,000.
fn steps() -> Vec<Order<String, String>> {
    vec![
        order("b1", "A", Bid, 1000, 300_000),
        order("b2", "B", Bid, 1000, 250_000),
        order("b3", "C", Bid, 1000, 150_000),
        order("a1", "D", Ask, 1500, 100_000),
        order("a2", "E", Ask, 1000, 200_000),
        order("a3", "F", Ask, 500, 240_000),
    ]
}

#[test]
fn pay_as_clear_steps() {
    // Merge: b1–a1 1000, b2–a1 500, b2–a2 500; b3 (150k) < a2 (200k) + fee.
    // Last pair (250k, 200k): p = 200k + (250k − 20k − 200k)/2 = 215k.
    check(
        "pay-as-clear",
        20_000,
        &steps(),
        Some(215_000),
        &[
            ("b1", "a1", 1000, 215_000, 20_000, 215_000, 0),
            ("b2", "a1", 500, 215_000, 10_000, 107_500, 0),
            ("b2", "a2", 500, 215_000, 10_000, 107_500, 0),
        ],
    );
    // k = 0: the whole spread to the buyers.
    check(
        "pay-as-clear:0",
        20_000,
        &steps(),
        Some(200_000),
        &[
            ("b1", "a1", 1000, 200_000, 20_000, 200_000, 0),
            ("b2", "a1", 500, 200_000, 10_000, 100_000, 0),
            ("b2", "a2", 500, 200_000, 10_000, 100_000, 0),
        ],
    );
}

#[test]
fn pay_as_bid_steps() {
    // Same volume; each trade at its bid less the fee. Average (1000·280k + 1000·230k)/2000.
    check(
        "pay-as-bid",
        20_000,
        &steps(),
        Some(255_000),
        &[
            ("b1", "a1", 1000, 280_000, 20_000, 280_000, 0),
            ("b2", "a1", 500, 230_000, 10_000, 115_000, 0),
            ("b2", "a2", 500, 230_000, 10_000, 115_000, 0),
        ],
    );
}

#[test]
fn mcafee_reduces_when_the_candidate_price_fails() {
    // Next units: bid b3 150k, ask a2's rest 200k: p0 = (150k − 20k + 200k)/2 = 165k < a_k = 200k.
    // So the marginal segment b2–a2 is dropped; sellers get 200k, buyers pay 250k.
    check(
        "mcafee",
        20_000,
        &steps(),
        Some(200_000),
        &[
            ("b1", "a1", 1000, 200_000, 20_000, 200_000, 30_000),
            ("b2", "a1", 500, 200_000, 10_000, 100_000, 15_000),
        ],
    );
}

#[test]
fn mcafee_keeps_everyone_when_the_candidate_price_fits() {
    let book = [
        order("b1", "A", Bid, 1000, 300_000),
        order("b2", "B", Bid, 1000, 280_000),
        order("b3", "E", Bid, 1000, 130_000),
        order("a1", "C", Ask, 1000, 100_000),
        order("a2", "D", Ask, 1000, 120_000),
        order("a3", "F", Ask, 1000, 200_000),
    ];
    // p0 = (130k + 200k)/2 = 165k ∈ [120k, 280k].
    check(
        "mcafee",
        0,
        &book,
        Some(165_000),
        &[
            ("b1", "a1", 1000, 165_000, 0, 165_000, 0),
            ("b2", "a2", 1000, 165_000, 0, 165_000, 0),
        ],
    );
}

#[test]
fn mcafee_with_one_seller_trades_nothing() {
    let book = [
        order("b1", "A", Bid, 1000, 300_000),
        order("a1", "B", Ask, 500, 100_000),
    ];
    check("mcafee", 0, &book, None, &[]);
}

#[test]
fn sdr_shortage_uses_the_paper_formulas() {
    let book = [
        order("b1", "A", Bid, 3000, 100_000),
        order("b2", "B", Bid, 1000, 300_000),
        order("a1", "C", Ask, 2000, 250_000),
    ];
    // SDR = 0.5: P_sell = 80k·300k·4000 / (220k·2000 + 80k·4000) = 126,315.78… → 126,315;
    // P_buy = P_sell·0.5 + 300k·0.5 = 213,157.5 → 213,157.
    check(
        "sdr",
        0,
        &book,
        Some(126_315),
        &[
            ("b1", "a1", 1500, 126_315, 0, 189_472, 0),
            ("b2", "a1", 500, 126_315, 0, 63_157, 0),
        ],
    );
    let result = clear(Mechanism::Sdr, &tariff(0), &book).unwrap();
    assert_eq!(result.buyer_price_micro_per_kwh, Some(213_157));
}

#[test]
fn sdr_surplus_pays_feed_in_and_shares_by_largest_remainder() {
    let book = [
        order("a1", "C", Ask, 1000, 90_000),
        order("a2", "D", Ask, 1000, 90_000),
        order("a3", "E", Ask, 1000, 90_000),
        order("b1", "A", Bid, 1000, 290_000),
    ];
    // SDR = 3 ≥ 1: everything at feed-in; 1000/3 = 333 each and the spare Wh to a1.
    check(
        "sdr",
        0,
        &book,
        Some(80_000),
        &[
            ("b1", "a1", 334, 80_000, 0, 26_720, 0),
            ("b1", "a2", 333, 80_000, 0, 26_640, 0),
            ("b1", "a3", 333, 80_000, 0, 26_640, 0),
        ],
    );
}

#[test]
fn sdr_with_a_fee_keeps_buyers_under_retail() {
    let book = [
        order("b1", "A", Bid, 4000, 100_000),
        order("a1", "C", Ask, 1000, 250_000),
    ];
    // λb' = 300k − 50k = 250k; SDR = 0.25: P_sell = 80k·250k·4000 / (170k·1000 + 80k·4000) = 163,265.
    let result = clear(Mechanism::Sdr, &tariff(50_000), &book).unwrap();
    assert_eq!(result.clearing_price_micro_per_kwh, Some(163_265));
    // P_buy = (163,265 + 50k)·0.25 + 300k·0.75 = 278,316.25.
    assert_eq!(result.buyer_price_micro_per_kwh, Some(278_316));
    assert!(result.trades[0].price_micro_per_kwh + 50_000 <= 300_000);
}

#[test]
fn mid_market_splits_the_band() {
    let book = [
        order("b1", "A", Bid, 500, 100_000),
        order("a1", "C", Ask, 2000, 250_000),
    ];
    // (80k + 300k − 20k) / 2 = 180k for sellers; buyers pay 200k with the fee.
    check(
        "mid-market",
        20_000,
        &book,
        Some(180_000),
        &[("b1", "a1", 500, 180_000, 10_000, 90_000, 0)],
    );
}

#[test]
fn self_trades_are_netted_not_traded() {
    let book = [
        order("b1", "A", Bid, 1000, 250_000),
        order("a1", "A", Ask, 600, 100_000),
        order("a2", "B", Ask, 1000, 150_000),
    ];
    check(
        "pay-as-clear",
        0,
        &book,
        Some(200_000),
        &[("b1", "a2", 400, 200_000, 0, 80_000, 0)],
    );
    let result = clear(Mechanism::default(), &tariff(0), &book).unwrap();
    assert_eq!(
        result.self_matches,
        vec![SelfMatch {
            bid_id: "b1".into(),
            ask_id: "a1".into(),
            energy_wh: 600
        }]
    );
    assert_eq!(result.demand_wh, 400);
    let shared = clear(Mechanism::MidMarket, &tariff(0), &book).unwrap();
    assert_eq!(shared.self_matches.len(), 1);
    assert_eq!(shared.volume_wh, 400);
}

#[test]
fn equal_prices_fill_the_lower_id_first() {
    let book = [
        order("b", "A", Bid, 1000, 200_000),
        order("a2", "X", Ask, 1000, 100_000),
        order("a1", "Y", Ask, 1000, 100_000),
    ];
    check(
        "pay-as-clear",
        0,
        &book,
        Some(150_000),
        &[("b", "a1", 1000, 150_000, 0, 150_000, 0)],
    );
}

#[test]
fn nothing_crosses() {
    let book = [
        order("b", "A", Bid, 1000, 100_000),
        order("a", "B", Ask, 1000, 200_000),
    ];
    for mechanism in ["pay-as-clear", "pay-as-bid", "mcafee"] {
        check(mechanism, 0, &book, None, &[]);
    }
    // The fee alone can stop a trade: 200k < 190k + 20k.
    let book = [
        order("b", "A", Bid, 1000, 200_000),
        order("a", "B", Ask, 1000, 190_000),
    ];
    check("pay-as-clear", 20_000, &book, None, &[]);
}

#[test]
fn bad_books_are_refused_with_reasons() {
    let t = tariff(0);
    let dup = [
        order("x", "A", Bid, 1, 100_000),
        order("x", "B", Bid, 1, 100_000),
    ];
    assert!(matches!(
        clear(Mechanism::default(), &t, &dup),
        Err(ClearError::DuplicateId { side: Bid, .. })
    ));
    let zero = [order("x", "A", Bid, 0, 100_000)];
    assert_eq!(
        clear(Mechanism::default(), &t, &zero),
        Err(ClearError::ZeroEnergy { index: 0 })
    );
    let huge = [order("x", "A", Bid, MAX_ORDER_ENERGY_WH + 1, 100_000)];
    assert!(matches!(
        clear(Mechanism::default(), &t, &huge),
        Err(ClearError::EnergyTooLarge { .. })
    ));
    let cheap = [order("x", "A", Ask, 1, 1)];
    assert!(matches!(
        clear(Mechanism::default(), &t, &cheap),
        Err(ClearError::PriceOutOfBounds { .. })
    ));
    assert!(matches!(
        clear(Mechanism::PayAsClear { k_ppm: 1_000_001 }, &t, &cheap),
        Err(ClearError::K(1_000_001))
    ));
    assert!("pay-as-magic".parse::<Mechanism>().is_err());
    assert!("pay-as-clear:2000000".parse::<Mechanism>().is_err());
}

#[test]
fn mechanism_names_round_trip() {
    for name in [
        "pay-as-clear",
        "pay-as-clear:250000",
        "pay-as-bid",
        "sdr",
        "mid-market",
        "mcafee",
    ] {
        assert_eq!(name.parse::<Mechanism>().unwrap().to_string(), name);
    }
}

// ---------------------------------------------------------------------------
// Properties.

const MECHANISMS: [Mechanism; 5] = [
    Mechanism::PayAsClear {
        k_ppm: DEFAULT_K_PPM,
    },
    Mechanism::PayAsBid,
    Mechanism::McAfee,
    Mechanism::Sdr,
    Mechanism::MidMarket,
];

/// Random books: few participants (so self-trades happen), prices on a coarse
/// grid (so ties and step shapes happen).
fn book_strategy(max_orders: usize) -> impl Strategy<Value = Vec<Order<String, String>>> {
    prop::collection::vec(
        (0u8..5, any::<bool>(), 1u64..2_000, 0u64..=22),
        0..max_orders,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (p, bid, energy, step))| {
                order(
                    &format!("o{i}"),
                    &format!("p{p}"),
                    if bid { Bid } else { Ask },
                    energy,
                    80_000 + step * 10_000,
                )
            })
            .collect()
    })
}

/// The volume where the demand and supply curves cross: expand every order
/// into 1-Wh units, sort bid units by price descending and ask units
/// ascending, and count the unit pairs with b ≥ a + fee. This is the largest
/// volume that maximises welfare Σ(b − a − fee), and the largest any uniform
/// price can clear; it shares no code with the mechanisms.
fn reference_max_volume(book: &[Order<String, String>], energy: &[u64], fee: u64) -> u64 {
    let units = |side| {
        let mut units: Vec<u64> = book
            .iter()
            .zip(energy)
            .filter(|(o, _)| o.side == side)
            .flat_map(|(o, &e)| std::iter::repeat_n(o.price_micro_per_kwh, e as usize))
            .collect();
        units.sort_unstable();
        units
    };
    let mut bids = units(Bid);
    bids.reverse();
    let asks = units(Ask);
    bids.iter()
        .zip(&asks)
        .take_while(|(b, a)| **b >= **a + fee)
        .count() as u64
}

/// Welfare of the trades of a result: Σ energy × (bid − ask − fee).
fn welfare(
    book: &[Order<String, String>],
    result: &ClearingResult<String, String>,
    fee: u64,
) -> i128 {
    let price = |id: &String| {
        i128::from(
            book.iter()
                .find(|o| &o.id == id)
                .unwrap()
                .price_micro_per_kwh,
        )
    };
    result
        .trades
        .iter()
        .map(|t| i128::from(t.energy_wh) * (price(&t.bid_id) - price(&t.ask_id) - i128::from(fee)))
        .sum()
}

/// Energy per order after the self-matches were netted out.
fn after_self_matches(
    book: &[Order<String, String>],
    result: &ClearingResult<String, String>,
) -> Vec<u64> {
    book.iter()
        .map(|o| {
            let netted: u64 = result
                .self_matches
                .iter()
                .filter(|m| m.bid_id == o.id || m.ask_id == o.id)
                .map(|m| m.energy_wh)
                .sum();
            o.energy_wh - netted
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_input_order_gives_the_same_result(
        (book, shuffled) in book_strategy(14).prop_flat_map(|b| (Just(b.clone()), Just(b).prop_shuffle())),
        fee in 0u64..40_000,
    ) {
        for mechanism in MECHANISMS {
            let a = clear(mechanism, &tariff(fee), &book).unwrap();
            let b = clear(mechanism, &tariff(fee), &shuffled).unwrap();
            prop_assert_eq!(a.result_hash, b.result_hash, "{}", mechanism);
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn price_priority_mechanisms_clear_the_maximum_volume(book in book_strategy(12), fee in 0u64..40_000) {
        let result = clear(Mechanism::default(), &tariff(fee), &book).unwrap();
        let energy = after_self_matches(&book, &result);
        prop_assert_eq!(result.volume_wh, reference_max_volume(&book, &energy, fee));
        // No trade pair destroys welfare, and re-pairing cannot raise it.
        for trade in &result.trades {
            let price = |id: &String| book.iter().find(|o| &o.id == id).unwrap().price_micro_per_kwh;
            prop_assert!(price(&trade.bid_id) >= price(&trade.ask_id) + fee);
        }
        let units_welfare: i128 = {
            let mut bids: Vec<u64> = book.iter().zip(&energy).filter(|(o, _)| o.side == Bid).flat_map(|(o, &e)| std::iter::repeat_n(o.price_micro_per_kwh, e as usize)).collect();
            let mut asks: Vec<u64> = book.iter().zip(&energy).filter(|(o, _)| o.side == Ask).flat_map(|(o, &e)| std::iter::repeat_n(o.price_micro_per_kwh, e as usize)).collect();
            bids.sort_unstable_by(|a, b| b.cmp(a));
            asks.sort_unstable();
            bids.iter().zip(&asks).map(|(b, a)| i128::from(*b) - i128::from(*a) - i128::from(fee)).filter(|w| *w >= 0).sum()
        };
        prop_assert_eq!(welfare(&book, &result, fee), units_welfare);
        let single_sided = book.iter().all(|o| book.iter().all(|p| p.participant != o.participant || p.side == o.side));
        if single_sided {
            prop_assert!(result.self_matches.is_empty());
        }
        let pay_as_bid = clear(Mechanism::PayAsBid, &tariff(fee), &book).unwrap();
        prop_assert_eq!(pay_as_bid.volume_wh, result.volume_wh);
        let mcafee = clear(Mechanism::McAfee, &tariff(fee), &book).unwrap();
        prop_assert!(mcafee.volume_wh <= result.volume_wh);
    }

    #[test]
    fn sharing_mechanisms_trade_min_supply_demand(book in book_strategy(12), fee in 0u64..40_000) {
        for mechanism in [Mechanism::Sdr, Mechanism::MidMarket] {
            let result = clear(mechanism, &tariff(fee), &book).unwrap();
            prop_assert_eq!(result.volume_wh, result.supply_wh.min(result.demand_wh));
        }
    }

    #[test]
    fn nothing_is_over_allocated_and_everyone_is_rational(book in book_strategy(14), fee in 0u64..40_000) {
        let t = tariff(fee);
        for mechanism in MECHANISMS {
            let result = clear(mechanism, &t, &book).unwrap();
            let by_id = |id: &String| book.iter().find(|o| &o.id == id).unwrap();
            for o in &book {
                let traded: u64 = result.trades.iter().filter(|t| t.bid_id == o.id || t.ask_id == o.id).map(|t| t.energy_wh).sum();
                let netted: u64 = result.self_matches.iter().filter(|m| m.bid_id == o.id || m.ask_id == o.id).map(|m| m.energy_wh).sum();
                prop_assert!(traded + netted <= o.energy_wh, "{} over-allocated {}", mechanism, o.id);
            }
            for trade in &result.trades {
                let (bid, ask) = (by_id(&trade.bid_id), by_id(&trade.ask_id));
                prop_assert_eq!(&bid.participant, &trade.buyer);
                prop_assert_eq!(&ask.participant, &trade.seller);
                prop_assert!(trade.buyer != trade.seller);
                // Bounds: the seller gets at least feed-in, the buyer pays at most retail.
                prop_assert!(t.contains(trade.price_micro_per_kwh));
                prop_assert!(trade.buyer_pays_micro() <= value_micro(trade.energy_wh, t.retail_micro_per_kwh));
                // Conservation per trade, to the micro-unit.
                prop_assert_eq!(trade.buyer_pays_micro(), trade.value_micro + trade.grid_fee_micro + trade.surplus_micro);
                prop_assert_eq!(trade.grid_fee_micro, value_micro(trade.energy_wh, fee));
                if !matches!(mechanism, Mechanism::Sdr | Mechanism::MidMarket) {
                    // Individual rationality against the limit prices.
                    prop_assert!(trade.price_micro_per_kwh >= ask.price_micro_per_kwh, "{}: seller below limit", mechanism);
                    prop_assert!(trade.buyer_pays_micro() <= value_micro(trade.energy_wh, bid.price_micro_per_kwh), "{}: buyer above limit", mechanism);
                }
            }
            if let Some(price) = result.clearing_price_micro_per_kwh {
                prop_assert!(t.contains(price));
            }
        }
    }
}
