//! The sharing mechanisms: supply-demand-ratio (SDR) and mid-market rate.
//! Limit prices are not used; the local volume `min(S, D)` is shared pro rata
//! and everything else goes to or comes from the grid at its tariffs.
//!
//! Steps:
//! 1. A participant with both bids and asks nets them first: both sides are
//!    reduced by the smaller total, its orders in id order (`self_matches`).
//! 2. S = ask energy, D = bid energy; the local volume is V = min(S, D).
//! 3. The short side trades all its energy. On the long side each order gets
//!    `⌊e·V/T⌋` (T = that side's total); the remaining Wh go one each to the
//!    orders with the largest remainders `e·V mod T`, ties by id.
//! 4. Bids and asks, both in id order, are paired by a two-pointer merge.
//!
//! Prices, with λs = feed-in, λb = retail and the grid fee taken from the
//! buyer's side so that nobody pays more than retail (λb' = λb − fee):
//! - SDR (Liu et al., IEEE TPWRS 2017), SDR = S/D: for SDR < 1
//!   `P_sell = λs·λb' / ((λb' − λs)·SDR + λs)` = `λs·λb'·D / ((λb' − λs)·S + λs·D)`,
//!   `P_buy = (P_sell + fee)·SDR + λb·(1 − SDR)`; for SDR ≥ 1 `P_sell = λs`,
//!   `P_buy = λs + fee`. With fee 0 these are the paper's formulas.
//! - mid-market: `P_sell = ⌊(λs + λb')/2⌋`, buyers pay `P_sell + fee` locally.
//!
//! If λb' < λs no local trade can benefit both sides and nothing trades.

use std::collections::BTreeMap;

use super::{BookKey, ClearError, Mechanism, Order, Outcome, Rank, SelfMatch, make_trade, rank};
use crate::tariff::Tariff;
use crate::types::Side;

pub(super) fn clear<I: BookKey, P: BookKey>(
    mechanism: Mechanism,
    tariff: &Tariff,
    orders: &[Order<I, P>],
) -> Result<Outcome<I, P>, ClearError> {
    let index =
        |ranked: Vec<super::Ranked>| ranked.into_iter().map(|r| r.index).collect::<Vec<u32>>();
    let (bids, asks) = rank(orders, Rank::Id)?;
    let (bids, asks) = (index(bids), index(asks));
    let mut energy: Vec<u64> = orders.iter().map(|o| o.energy_wh).collect();
    let self_matches = net_self_trades(orders, &bids, &asks, &mut energy);

    let sum = |indices: &[u32], side| {
        indices
            .iter()
            .try_fold(0u64, |acc, &i| acc.checked_add(energy[i as usize]))
            .ok_or(ClearError::TotalTooLarge { side })
    };
    let demand_wh = sum(&bids, Side::Bid)?;
    let supply_wh = sum(&asks, Side::Ask)?;
    let volume_wh = supply_wh.min(demand_wh);
    let fee = tariff.grid_fee_micro_per_kwh;
    let feed_in = tariff.feed_in_micro_per_kwh;
    let retail = tariff.retail_micro_per_kwh;
    let nothing = |self_matches| Outcome {
        clearing_price: None,
        buyer_price: None,
        supply_wh,
        demand_wh,
        trades: Vec::new(),
        self_matches,
    };
    let Some(retail_net) = retail.checked_sub(fee).filter(|net| *net >= feed_in) else {
        return Ok(nothing(self_matches));
    };
    if volume_wh == 0 {
        return Ok(nothing(self_matches));
    }

    let (seller_price, buyer_price) = match mechanism {
        Mechanism::Sdr => sdr_prices(feed_in, retail_net, retail, fee, supply_wh, demand_wh),
        Mechanism::MidMarket => {
            let price = (feed_in + retail_net) / 2;
            (price, price + fee)
        }
        _ => unreachable!("price-priority mechanisms clear elsewhere"),
    };

    let long_side = if demand_wh > supply_wh { &bids } else { &asks };
    share_pro_rata(long_side, volume_wh, &mut energy);

    let mut trades = Vec::new();
    let (mut i, mut j) = (0, 0);
    let (mut bid_left, mut ask_left) = (0u64, 0u64);
    loop {
        while bid_left == 0 && i < bids.len() {
            bid_left = energy[bids[i] as usize];
            if bid_left == 0 {
                i += 1;
            }
        }
        while ask_left == 0 && j < asks.len() {
            ask_left = energy[asks[j] as usize];
            if ask_left == 0 {
                j += 1;
            }
        }
        if i >= bids.len() || j >= asks.len() {
            break;
        }
        let amount = bid_left.min(ask_left);
        let (bid, ask) = (&orders[bids[i] as usize], &orders[asks[j] as usize]);
        trades.push(make_trade(bid, ask, amount, seller_price, fee, None));
        bid_left -= amount;
        ask_left -= amount;
        if bid_left == 0 {
            i += 1;
        }
        if ask_left == 0 {
            j += 1;
        }
    }
    Ok(Outcome {
        clearing_price: Some(seller_price),
        buyer_price: Some(buyer_price),
        supply_wh,
        demand_wh,
        trades,
        self_matches,
    })
}

/// SDR seller and buyer prices, see the module docs. Integer division rounds down.
pub(crate) fn sdr_prices(
    feed_in: u64,
    retail_net: u64,
    retail: u64,
    fee: u64,
    supply: u64,
    demand: u64,
) -> (u64, u64) {
    if supply >= demand {
        return (feed_in, feed_in + fee);
    }
    let (ls, lb) = (u128::from(feed_in), u128::from(retail_net));
    let (s, d) = (u128::from(supply), u128::from(demand));
    let denominator = (lb - ls) * s + ls * d;
    let seller = (ls * lb * d).checked_div(denominator).unwrap_or(ls);
    let seller = u64::try_from(seller).expect("P_sell lies between feed-in and retail");
    let buyer = ((u128::from(seller) + u128::from(fee)) * s + u128::from(retail) * (d - s)) / d;
    (
        seller,
        u64::try_from(buyer).expect("P_buy lies between feed-in and retail"),
    )
}

/// Decrement-and-cancel for participants on both sides, in id order.
fn net_self_trades<I: BookKey, P: BookKey>(
    orders: &[Order<I, P>],
    bids: &[u32],
    asks: &[u32],
    energy: &mut [u64],
) -> Vec<SelfMatch<I>> {
    let mut by_participant: BTreeMap<&P, (Vec<u32>, Vec<u32>)> = BTreeMap::new();
    for &b in bids {
        by_participant
            .entry(&orders[b as usize].participant)
            .or_default()
            .0
            .push(b);
    }
    for &a in asks {
        if let Some(entry) = by_participant.get_mut(&orders[a as usize].participant) {
            entry.1.push(a);
        }
    }
    let mut matches = Vec::new();
    for (own_bids, own_asks) in by_participant.values() {
        let (mut i, mut j) = (0, 0);
        while i < own_bids.len() && j < own_asks.len() {
            let (b, a) = (own_bids[i] as usize, own_asks[j] as usize);
            let amount = energy[b].min(energy[a]);
            matches.push(SelfMatch {
                bid_id: orders[b].id.clone(),
                ask_id: orders[a].id.clone(),
                energy_wh: amount,
            });
            energy[b] -= amount;
            energy[a] -= amount;
            if energy[b] == 0 {
                i += 1;
            }
            if energy[a] == 0 {
                j += 1;
            }
        }
    }
    matches
}

/// Scales the energy of `side` down to `volume_wh` in total: floors, then the
/// largest remainders (ties by id order, which `side` is in) get one Wh each.
fn share_pro_rata(side: &[u32], volume_wh: u64, energy: &mut [u64]) {
    let total: u128 = side.iter().map(|&i| u128::from(energy[i as usize])).sum();
    if total == u128::from(volume_wh) {
        return;
    }
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(side.len());
    let mut given = 0u64;
    for (rank, &i) in side.iter().enumerate() {
        let scaled = u128::from(energy[i as usize]) * u128::from(volume_wh);
        let share = u64::try_from(scaled / total).expect("a share is below the order's energy");
        remainders.push((scaled % total, rank));
        energy[i as usize] = share;
        given += share;
    }
    let mut left = volume_wh - given;
    // Largest remainder first; equal remainders in id order (lower rank first).
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, rank) in remainders {
        if left == 0 {
            break;
        }
        energy[side[rank] as usize] += 1;
        left -= 1;
    }
    debug_assert_eq!(left, 0);
}
