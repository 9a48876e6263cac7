//! The price-priority mechanisms: pay-as-clear, pay-as-bid and McAfee.
//!
//! All three start with the same merge: bids ranked by price descending,
//! asks ascending, ties by id. The best remaining bid is matched with the
//! best remaining ask for as much energy as both still have, while
//! `bid ≥ ask + grid fee`. Each step is a *segment* (bid, ask, energy).
//!
//! The volume this merge clears is the maximum a uniform price can clear and
//! the largest volume that maximises welfare Σ(b − a − fee): ranking units
//! as above, the k-th pair is the weakest of the first k, so the first k units
//! all trade at one price exactly when the k-th pair has b ≥ a + fee. (A pure
//! pairing count can look larger: with bids 434 Wh at 180k and 1 Wh at 120k,
//! asks 434 Wh at 80k and 1 Wh at 90k and a fee of 30,001, pairing 120k with
//! 80k and 180k with 90k "matches" 435 Wh, but the 435th Wh has welfare
//! 120k − 90k − 30,001 < 0 and no uniform price satisfies both the 120k
//! buyer and the 90k seller. docs/market.md has the details.)
//!
//! The marginal allocation follows from the ranking: at equal prices the
//! lower offer id is filled first, and only the last bid and the last ask
//! matched can be filled partly.

use super::{BookKey, make_trade, rank, total_energy};
use super::{ClearError, Mechanism, Order, Outcome, Rank, Ranked, SelfMatch, Trade};
use crate::tariff::Tariff;
use crate::types::Side;

/// One step of the merge.
struct Segment {
    bid: u32,
    ask: u32,
    energy_wh: u64,
}

/// The merge's result: matched segments and where it stopped.
struct Merge<I> {
    segments: Vec<Segment>,
    self_matches: Vec<SelfMatch<I>>,
    /// Price of the best bid unit left unmatched (the marginal bid's rest, or
    /// the next bid), if any.
    next_bid_price: Option<u64>,
    /// Price of the best ask unit left unmatched, if any.
    next_ask_price: Option<u64>,
    self_matched_wh: u64,
}

fn merge<I: BookKey, P: BookKey>(
    orders: &[Order<I, P>],
    bids: &[Ranked],
    asks: &[Ranked],
    fee: u64,
) -> Merge<I> {
    let mut segments = Vec::with_capacity(bids.len().min(asks.len()) * 2);
    let mut self_matches = Vec::new();
    let mut self_matched_wh = 0;
    let (mut i, mut j) = (0, 0);
    let mut bid_left = bids.first().map_or(0, |b| b.energy_wh);
    let mut ask_left = asks.first().map_or(0, |a| a.energy_wh);
    while i < bids.len() && j < asks.len() {
        let (bid, ask) = (&bids[i], &asks[j]);
        if bid.price_micro_per_kwh(Side::Bid)
            < ask.price_micro_per_kwh(Side::Ask).saturating_add(fee)
        {
            break;
        }
        let energy_wh = bid_left.min(ask_left);
        let same_participant = bid.participant_prefix == ask.participant_prefix
            && orders[bid.index as usize].participant == orders[ask.index as usize].participant;
        if same_participant {
            self_matches.push(SelfMatch {
                bid_id: orders[bid.index as usize].id.clone(),
                ask_id: orders[ask.index as usize].id.clone(),
                energy_wh,
            });
            self_matched_wh += energy_wh;
        } else {
            segments.push(Segment {
                bid: bid.index,
                ask: ask.index,
                energy_wh,
            });
        }
        bid_left -= energy_wh;
        ask_left -= energy_wh;
        if bid_left == 0 {
            i += 1;
            bid_left = bids.get(i).map_or(0, |b| b.energy_wh);
        }
        if ask_left == 0 {
            j += 1;
            ask_left = asks.get(j).map_or(0, |a| a.energy_wh);
        }
    }
    Merge {
        segments,
        self_matches,
        next_bid_price: bids.get(i).map(|b| b.price_micro_per_kwh(Side::Bid)),
        next_ask_price: asks.get(j).map(|a| a.price_micro_per_kwh(Side::Ask)),
        self_matched_wh,
    }
}

pub(super) fn clear<I: BookKey, P: BookKey>(
    mechanism: Mechanism,
    tariff: &Tariff,
    orders: &[Order<I, P>],
) -> Result<Outcome<I, P>, ClearError> {
    let (bids, asks) = rank(orders, Rank::Price)?;
    let fee = tariff.grid_fee_micro_per_kwh;
    let merged = merge(orders, &bids, &asks, fee);
    let demand_wh = total_energy(&bids, Side::Bid)? - merged.self_matched_wh;
    let supply_wh = total_energy(&asks, Side::Ask)? - merged.self_matched_wh;
    let order = |index: u32| &orders[index as usize];

    let mut trades: Vec<Trade<I, P>> = Vec::with_capacity(merged.segments.len());
    let (clearing_price, buyer_price) = match (mechanism, merged.segments.last()) {
        (_, None) => (None, None),
        (Mechanism::PayAsClear { k_ppm }, Some(last)) => {
            let (b, a) = (
                order(last.bid).price_micro_per_kwh,
                order(last.ask).price_micro_per_kwh,
            );
            // The merge only matches b ≥ a + fee, so the spread is never negative.
            let spread = b - fee - a;
            let share = u128::from(spread) * u128::from(k_ppm) / 1_000_000;
            let price = tariff.clamp(a + u64::try_from(share).expect("share ≤ spread"));
            for s in &merged.segments {
                trades.push(make_trade(
                    order(s.bid),
                    order(s.ask),
                    s.energy_wh,
                    price,
                    fee,
                    None,
                ));
            }
            (Some(price), Some(price + fee))
        }
        (Mechanism::PayAsBid, Some(_)) => {
            for s in &merged.segments {
                let bid = order(s.bid);
                let price = bid.price_micro_per_kwh - fee;
                trades.push(make_trade(bid, order(s.ask), s.energy_wh, price, fee, None));
            }
            let average = weighted_average(&trades);
            (Some(average), Some(average + fee))
        }
        (Mechanism::McAfee, Some(last)) => {
            let b_k = order(last.bid).price_micro_per_kwh;
            let a_k = order(last.ask).price_micro_per_kwh;
            // McAfee's candidate price from the first excluded units, net of fee.
            let candidate = match (merged.next_bid_price, merged.next_ask_price) {
                (Some(b_next), Some(a_next)) => {
                    let doubled = i128::from(b_next) - i128::from(fee) + i128::from(a_next);
                    u64::try_from(doubled / 2).ok()
                }
                _ => None,
            };
            match candidate {
                Some(p0) if a_k <= p0 && p0 + fee <= b_k => {
                    for s in &merged.segments {
                        trades.push(make_trade(
                            order(s.bid),
                            order(s.ask),
                            s.energy_wh,
                            p0,
                            fee,
                            None,
                        ));
                    }
                    (Some(p0), Some(p0 + fee))
                }
                _ => {
                    // Trade reduction: the marginal segment does not trade; the
                    // others trade with sellers paid a_k and buyers paying b_k.
                    let kept = &merged.segments[..merged.segments.len() - 1];
                    for s in kept {
                        trades.push(make_trade(
                            order(s.bid),
                            order(s.ask),
                            s.energy_wh,
                            a_k,
                            fee,
                            Some(b_k),
                        ));
                    }
                    if trades.is_empty() {
                        (None, None)
                    } else {
                        (Some(a_k), Some(b_k))
                    }
                }
            }
        }
        (Mechanism::Sdr | Mechanism::MidMarket, _) => {
            unreachable!("shared mechanisms clear elsewhere")
        }
    };
    Ok(Outcome {
        clearing_price,
        buyer_price,
        supply_wh,
        demand_wh,
        trades,
        self_matches: merged.self_matches,
    })
}

/// `⌊Σ energy × price / Σ energy⌋` over the trades (which are not empty).
fn weighted_average<I, P>(trades: &[Trade<I, P>]) -> u64 {
    let (mut weighted, mut energy) = (0u128, 0u128);
    for t in trades {
        weighted += u128::from(t.energy_wh) * u128::from(t.price_micro_per_kwh);
        energy += u128::from(t.energy_wh);
    }
    u64::try_from(weighted / energy).expect("an average of u64 prices fits in u64")
}
