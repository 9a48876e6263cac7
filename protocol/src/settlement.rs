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
    WrongInterval { participant: ParticipantId, got: u64, expected: u64 },
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
        .or_insert_with(|| ParticipantSettlement { participant, ..Default::default() })
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
        let magnitude = u64::try_from(deviation.unsigned_abs()).map_err(|_| SettlementError::Overflow(participant))?;
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
        supplier_net_micro: i64::try_from(supplier).expect("supplier total bounded by participants"),
    })
}
