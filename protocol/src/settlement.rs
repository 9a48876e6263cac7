//! Settlement maths: from an interval's final trades and every participant's
//! metered import and export, who pays whom.
//!
//! The model is "contract plus imbalance", as in wholesale electricity
//! markets, with the grid as the balancing party:
//! - Every trade settles at its price: the buyer pays `value + grid fee +
//!   surplus`, the seller receives `value`, the grid operator the fee, the
//!   market operator the surplus (McAfee only).
//! - Each participant's contracted net position is `c = bought − sold` (Wh)
//!   and its metered net position `m = import − export` (sign convention:
//!   import positive, export negative, as in OpenEMS). The deviation `d = m − c`
//!   is what the participant caused and settles with the grid supplier: if
//!   `d > 0` it bought `d` Wh from the grid at the retail tariff (a seller that
//!   delivered less than it sold, or a buyer that used more than it bought); if
//!   `d < 0` it sold `|d|` Wh to the grid at the feed-in tariff.
//!   So delivered P2P energy is paid at the trade price and every shortfall or
//!   surplus is charged, at grid tariffs, to whoever caused it.
//! - A participant without a meter report is settled as if it had imported
//!   and exported nothing.
//!
//! Rounding: every amount is `⌊energy_wh × price / 1000⌋` (see
//! [`crate::clearing::value_micro`]); every amount is a transfer from one
//! account to another, so the sum of all balances is zero to the micro-unit,
//! which [`settle`] asserts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clearing::{Trade, value_micro};
use crate::tariff::Tariff;
use crate::types::{IntervalIndex, OfferId, ParticipantId};

/// What a participant's meter measured over one interval.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MeterReading {
    pub participant: ParticipantId,
    pub interval: IntervalIndex,
    /// Energy drawn from the grid connection during the interval.
    pub import_wh: u64,
    /// Energy fed into the grid connection during the interval.
    pub export_wh: u64,
}

/// One participant's bill for one interval. Amounts in micro-units.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ParticipantSettlement {
    pub participant: ParticipantId,
    pub bought_wh: u64,
    pub sold_wh: u64,
    pub import_wh: u64,
    pub export_wh: u64,
    /// Deviation bought from the grid supplier at retail.
    pub grid_import_wh: u64,
    /// Deviation sold to the grid supplier at feed-in.
    pub grid_export_wh: u64,
    /// Paid to sellers for P2P energy.
    pub p2p_paid_micro: u64,
    /// Received from buyers for P2P energy.
    pub p2p_received_micro: u64,
    /// Grid fees on P2P energy, paid to the grid operator.
    pub grid_fee_paid_micro: u64,
    /// McAfee budget surplus, paid to the market operator.
    pub surplus_paid_micro: u64,
    /// Paid to the grid supplier for `grid_import_wh`.
    pub grid_paid_micro: u64,
    /// Received from the grid supplier for `grid_export_wh`.
    pub grid_received_micro: u64,
    /// Everything received minus everything paid.
    pub net_micro: i64,
}

/// The settlement of one interval of one market.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct IntervalSettlement {
    pub interval: IntervalIndex,
    /// One entry per participant that traded or reported, by participant id.
    pub participants: Vec<ParticipantSettlement>,
    /// Grid fees received by the grid operator.
    pub grid_operator_micro: u64,
    /// Budget surplus received by the market operator.
    pub market_operator_micro: u64,
    /// What the grid supplier received minus what it paid.
    pub supplier_net_micro: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettlementError {
    #[error("meter reading for {participant} is for interval {got}, not {expected}")]
    WrongInterval {
        participant: ParticipantId,
        got: u64,
        expected: u64,
    },
    #[error("two meter readings for {0}")]
    DuplicateReading(ParticipantId),
    #[error("amounts for {0} do not fit in 63 bits")]
    Overflow(ParticipantId),
}

fn account(
    book: &mut BTreeMap<ParticipantId, ParticipantSettlement>,
    participant: ParticipantId,
) -> &mut ParticipantSettlement {
    book.entry(participant)
        .or_insert_with(|| ParticipantSettlement {
            participant,
            ..Default::default()
        })
}

fn signed(value: u64) -> i128 {
    i128::from(value)
}

/// Settles one interval. `tariff` is the tariff in force for the interval.
pub fn settle(
    interval: IntervalIndex,
    tariff: &Tariff,
    trades: &[Trade<OfferId, ParticipantId>],
    readings: &[MeterReading],
) -> Result<IntervalSettlement, SettlementError> {
    let mut book: BTreeMap<ParticipantId, ParticipantSettlement> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for reading in readings {
        if reading.interval != interval {
            return Err(SettlementError::WrongInterval {
                participant: reading.participant,
                got: reading.interval.0,
                expected: interval.0,
            });
        }
        if !seen.insert(reading.participant) {
            return Err(SettlementError::DuplicateReading(reading.participant));
        }
        let s = account(&mut book, reading.participant);
        s.import_wh = reading.import_wh;
        s.export_wh = reading.export_wh;
    }
    let mut grid_operator = 0u64;
    let mut market_operator = 0u64;
    for trade in trades {
        let buyer = account(&mut book, trade.buyer);
        buyer.bought_wh += trade.energy_wh;
        buyer.p2p_paid_micro += trade.value_micro;
        buyer.grid_fee_paid_micro += trade.grid_fee_micro;
        buyer.surplus_paid_micro += trade.surplus_micro;
        let seller = account(&mut book, trade.seller);
        seller.sold_wh += trade.energy_wh;
        seller.p2p_received_micro += trade.value_micro;
        grid_operator += trade.grid_fee_micro;
        market_operator += trade.surplus_micro;
    }
    let mut supplier: i128 = 0;
    let mut total: i128 = 0;
    let mut participants = Vec::with_capacity(book.len());
    for (participant, mut s) in book {
        let contracted = signed(s.bought_wh) - signed(s.sold_wh);
        let metered = signed(s.import_wh) - signed(s.export_wh);
        let deviation = metered - contracted;
        let magnitude = u64::try_from(deviation.unsigned_abs())
            .map_err(|_| SettlementError::Overflow(participant))?;
        if deviation > 0 {
            s.grid_import_wh = magnitude;
            s.grid_paid_micro = value_micro(magnitude, tariff.retail_micro_per_kwh);
        } else {
            s.grid_export_wh = magnitude;
            s.grid_received_micro = value_micro(magnitude, tariff.feed_in_micro_per_kwh);
        }
        supplier += signed(s.grid_paid_micro) - signed(s.grid_received_micro);
        let net = signed(s.p2p_received_micro) + signed(s.grid_received_micro)
            - signed(s.p2p_paid_micro)
            - signed(s.grid_fee_paid_micro)
            - signed(s.surplus_paid_micro)
            - signed(s.grid_paid_micro);
        s.net_micro = i64::try_from(net).map_err(|_| SettlementError::Overflow(participant))?;
        total += net;
        participants.push(s);
    }
    // Architecture invariant: money is conserved to the micro-unit.
    assert_eq!(
        total + supplier + signed(grid_operator) + signed(market_operator),
        0,
        "settlement of interval {} does not conserve money",
        interval.0
    );
    Ok(IntervalSettlement {
        interval,
        participants,
        grid_operator_micro: grid_operator,
        market_operator_micro: market_operator,
        supplier_net_micro: i64::try_from(supplier)
            .expect("supplier total bounded by participants"),
    })
}

#[cfg(test)]
// Test participants are numbered below 256.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::clearing::{Mechanism, Order, clear};
    use crate::types::Side;

    fn pid(n: u8) -> ParticipantId {
        ParticipantId([n; 32])
    }

    fn tariff() -> Tariff {
        Tariff {
            feed_in_micro_per_kwh: 80_000,
            retail_micro_per_kwh: 300_000,
            grid_fee_micro_per_kwh: 20_000,
        }
    }

    fn trade(buyer: u8, seller: u8, energy_wh: u64, price: u64) -> Trade<OfferId, ParticipantId> {
        Trade {
            bid_id: OfferId([buyer; 32]),
            ask_id: OfferId([seller; 32]),
            buyer: pid(buyer),
            seller: pid(seller),
            energy_wh,
            price_micro_per_kwh: price,
            grid_fee_micro: value_micro(energy_wh, 20_000),
            value_micro: value_micro(energy_wh, price),
            surplus_micro: 0,
        }
    }

    fn reading(n: u8, import_wh: u64, export_wh: u64) -> MeterReading {
        MeterReading {
            participant: pid(n),
            interval: IntervalIndex(7),
            import_wh,
            export_wh,
        }
    }

    fn of(s: &IntervalSettlement, n: u8) -> &ParticipantSettlement {
        s.participants
            .iter()
            .find(|p| p.participant == pid(n))
            .unwrap()
    }

    #[test]
    fn delivered_as_contracted() {
        // Buyer 1 bought 1 kWh from seller 2 at 150k and used exactly that.
        let s = settle(
            IntervalIndex(7),
            &tariff(),
            &[trade(1, 2, 1000, 150_000)],
            &[reading(1, 1000, 0), reading(2, 0, 1000)],
        )
        .unwrap();
        assert_eq!(of(&s, 1).net_micro, -170_000);
        assert_eq!(of(&s, 2).net_micro, 150_000);
        assert_eq!(s.grid_operator_micro, 20_000);
        assert_eq!(s.supplier_net_micro, 0);
    }

    #[test]
    fn seller_shortfall_is_bought_at_retail_by_the_seller() {
        // Seller 2 exported only 600 of the 1000 Wh it sold.
        let s = settle(
            IntervalIndex(7),
            &tariff(),
            &[trade(1, 2, 1000, 150_000)],
            &[reading(1, 1000, 0), reading(2, 0, 600)],
        )
        .unwrap();
        let seller = of(&s, 2);
        assert_eq!(seller.grid_import_wh, 400);
        assert_eq!(seller.grid_paid_micro, 120_000);
        assert_eq!(seller.net_micro, 150_000 - 120_000);
        // The buyer is unaffected.
        assert_eq!(of(&s, 1).net_micro, -170_000);
        assert_eq!(s.supplier_net_micro, 120_000);
    }

    #[test]
    fn buyer_surplus_and_extra_use() {
        // Buyer 1 used 1500 Wh (500 more than bought); buyer 3 used 200 of 1000 bought.
        let trades = [trade(1, 2, 1000, 150_000), trade(3, 2, 1000, 150_000)];
        let s = settle(
            IntervalIndex(7),
            &tariff(),
            &trades,
            &[reading(1, 1500, 0), reading(2, 0, 2000), reading(3, 200, 0)],
        )
        .unwrap();
        assert_eq!(of(&s, 1).grid_import_wh, 500);
        assert_eq!(of(&s, 1).grid_paid_micro, 150_000);
        assert_eq!(of(&s, 3).grid_export_wh, 800);
        assert_eq!(of(&s, 3).grid_received_micro, 64_000);
        assert_eq!(of(&s, 3).net_micro, -170_000 + 64_000);
    }

    #[test]
    fn missing_reading_counts_as_nothing_delivered() {
        let s = settle(
            IntervalIndex(7),
            &tariff(),
            &[trade(1, 2, 1000, 150_000)],
            &[reading(1, 1000, 0)],
        )
        .unwrap();
        assert_eq!(of(&s, 2).grid_import_wh, 1000);
        assert_eq!(of(&s, 2).net_micro, 150_000 - 300_000);
    }

    #[test]
    fn bad_readings_are_errors() {
        let mut wrong = reading(1, 0, 0);
        wrong.interval = IntervalIndex(8);
        assert!(matches!(
            settle(IntervalIndex(7), &tariff(), &[], &[wrong]),
            Err(SettlementError::WrongInterval { .. })
        ));
        assert_eq!(
            settle(
                IntervalIndex(7),
                &tariff(),
                &[],
                &[reading(1, 0, 0), reading(1, 1, 0)]
            ),
            Err(SettlementError::DuplicateReading(pid(1)))
        );
    }

    proptest! {
        /// Clear a random book with every mechanism, meter random flows, and
        /// check that all balances sum to zero to the micro-unit.
        #[test]
        fn money_is_conserved(
            raw in prop::collection::vec((0u8..6, any::<bool>(), 1u64..5_000, 80_000u64..=300_000), 0..16),
            flows in prop::collection::vec((0u64..6_000, 0u64..6_000), 6),
            fee in 0u64..50_000,
        ) {
            let t = Tariff { grid_fee_micro_per_kwh: fee, ..tariff() };
            let book: Vec<Order<OfferId, ParticipantId>> = raw.iter().enumerate().map(|(i, (p, bid, e, price))| Order {
                id: OfferId([i as u8; 32]),
                participant: pid(*p),
                side: if *bid { Side::Bid } else { Side::Ask },
                energy_wh: *e,
                price_micro_per_kwh: *price,
            }).collect();
            let readings: Vec<MeterReading> = flows.iter().enumerate().map(|(i, (imp, exp))| reading(i as u8, *imp, *exp)).collect();
            for mechanism in [Mechanism::default(), Mechanism::PayAsBid, Mechanism::McAfee, Mechanism::Sdr, Mechanism::MidMarket] {
                let result = clear(mechanism, &t, &book).unwrap();
                let s = settle(IntervalIndex(7), &t, &result.trades, &readings).unwrap();
                let participants: i128 = s.participants.iter().map(|p| i128::from(p.net_micro)).sum();
                prop_assert_eq!(participants + i128::from(s.supplier_net_micro) + i128::from(s.grid_operator_micro) + i128::from(s.market_operator_micro), 0);
                let sold: u64 = s.participants.iter().map(|p| p.sold_wh).sum();
                prop_assert_eq!(sold, result.volume_wh);
            }
        }
    }
}
