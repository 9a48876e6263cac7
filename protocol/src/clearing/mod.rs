//! Market clearing: pure, deterministic functions from an order book and the
//! interval's tariff to trades.
//!
//! Five mechanisms share one book format and one result format:
//! - [`Mechanism::PayAsClear`] (default): uniform-price double auction that
//!   clears the maximum volume (see `uniform.rs`);
//! - [`Mechanism::PayAsBid`]: the same volume, every trade at its bid;
//! - [`Mechanism::McAfee`]: McAfee's trade-reduction auction;
//! - [`Mechanism::Sdr`]: supply-demand-ratio price sharing (Liu et al. 2017);
//! - [`Mechanism::MidMarket`]: local energy at the middle of the tariffs.
//!
//! Determinism: orders are put in a total order (price priority, then offer
//! id, ascending bytes) before anything else happens, so the result, and its
//! hash, does not depend on the order the book arrived in. Ids must be unique
//! within a side.
//!
//! Money: a trade's `value_micro = ⌊energy_wh × price_micro_per_kwh / 1000⌋`
//! and `grid_fee_micro = ⌊energy_wh × fee / 1000⌋`, computed in `u128`; the
//! buyer pays exactly `value_micro + grid_fee_micro + surplus_micro`, so every
//! trade conserves money to the micro-unit by construction (asserted).
//!
//! Self-trade prevention: a participant never trades with itself. When its
//! own bid would be matched against its own ask, both are decremented by the
//! amount that would have traded and nothing trades ("decrement and cancel",
//! as on exchanges); the netted energy is reported in `self_matches`.

mod shared;
mod uniform;

pub(crate) use shared::sdr_prices;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hash::{Hash32, Hasher};
use crate::tariff::{Tariff, TariffError};
use crate::types::{OfferId, ParticipantId, Side};

/// Largest energy a single order may carry: 1 TWh. A household trades a few
/// kWh per interval; this bound only catches unit mistakes and keeps sums of
/// many orders inside `u64`.
pub const MAX_ORDER_ENERGY_WH: u64 = 1_000_000_000_000;

/// Most orders one book may hold (orders are indexed with `u32`).
pub const MAX_ORDERS: usize = u32::MAX as usize;

/// Default share of the marginal surplus that goes to the seller in
/// pay-as-clear: k = 1/2, in parts per million.
pub const DEFAULT_K_PPM: u32 = 500_000;

/// What identifies an order or a participant inside the clearing code. Offer
/// ids and public keys in the protocol; plain strings in JSON order books.
pub trait BookKey: Ord + Clone + fmt::Debug {
    /// The first eight bytes of the key as a big-endian number (zero-padded):
    /// `a.sort_prefix() < b.sort_prefix()` implies `a < b`. Sorting on it
    /// first makes sorting a million orders cheap.
    fn sort_prefix(&self) -> u64;
    /// Writes the canonical encoding of the key into a result hash.
    fn hash_into(&self, hasher: &mut Hasher);
}

fn prefix_of(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(buf)
}

impl BookKey for String {
    fn sort_prefix(&self) -> u64 {
        prefix_of(self.as_bytes())
    }

    /// `u32` little-endian byte length, then the UTF-8 bytes.
    fn hash_into(&self, hasher: &mut Hasher) {
        let len = u32::try_from(self.len()).expect("key longer than 4 GiB");
        hasher.write_u32(len);
        hasher.write(self.as_bytes());
    }
}

impl BookKey for OfferId {
    fn sort_prefix(&self) -> u64 {
        prefix_of(&self.0)
    }

    /// The 32 bytes.
    fn hash_into(&self, hasher: &mut Hasher) {
        hasher.write(&self.0);
    }
}

impl BookKey for ParticipantId {
    fn sort_prefix(&self) -> u64 {
        prefix_of(&self.0)
    }

    fn hash_into(&self, hasher: &mut Hasher) {
        hasher.write(&self.0);
    }
}

/// One order in a book. Divisible: any part of `energy_wh` may trade.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Order<I, P> {
    pub id: I,
    pub participant: P,
    pub side: Side,
    pub energy_wh: u64,
    /// Bid: the most the buyer pays per kWh including the grid fee.
    /// Ask: the least the seller accepts per kWh.
    pub price_micro_per_kwh: u64,
}

/// How a market turns its book into trades.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mechanism {
    /// Uniform price p = a + k·(b − fee − a) from the last matched pair,
    /// `k_ppm` = k in parts per million.
    PayAsClear {
        k_ppm: u32,
    },
    PayAsBid,
    Sdr,
    MidMarket,
    McAfee,
}

impl Default for Mechanism {
    fn default() -> Self {
        Mechanism::PayAsClear {
            k_ppm: DEFAULT_K_PPM,
        }
    }
}

/// Names accepted by [`Mechanism::from_str`], for error messages and `--help`.
pub const MECHANISM_NAMES: &str = "pay-as-clear, pay-as-bid, sdr, mid-market, mcafee";

impl Mechanism {
    /// The family name, without parameters.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::PayAsClear { .. } => "pay-as-clear",
            Mechanism::PayAsBid => "pay-as-bid",
            Mechanism::Sdr => "sdr",
            Mechanism::MidMarket => "mid-market",
            Mechanism::McAfee => "mcafee",
        }
    }

    fn tag(&self) -> u8 {
        match self {
            Mechanism::PayAsClear { .. } => 1,
            Mechanism::PayAsBid => 2,
            Mechanism::Sdr => 3,
            Mechanism::MidMarket => 4,
            Mechanism::McAfee => 5,
        }
    }
}

/// `pay-as-clear` for the default k, `pay-as-clear:K_PPM` otherwise, else the name.
impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mechanism::PayAsClear { k_ppm } if *k_ppm != DEFAULT_K_PPM => {
                write!(f, "pay-as-clear:{k_ppm}")
            }
            _ => f.write_str(self.name()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown mechanism {0:?}; expected one of: {MECHANISM_NAMES} (pay-as-clear:K_PPM sets k in parts per million, e.g. pay-as-clear:250000)"
)]
pub struct UnknownMechanism(pub String);

impl FromStr for Mechanism {
    type Err = UnknownMechanism;

    fn from_str(name: &str) -> Result<Mechanism, UnknownMechanism> {
        Ok(match name {
            "pay-as-clear" => Mechanism::default(),
            "pay-as-bid" => Mechanism::PayAsBid,
            "sdr" => Mechanism::Sdr,
            "mid-market" => Mechanism::MidMarket,
            "mcafee" => Mechanism::McAfee,
            other => match other.strip_prefix("pay-as-clear:").map(str::parse::<u32>) {
                Some(Ok(k_ppm)) if k_ppm <= 1_000_000 => Mechanism::PayAsClear { k_ppm },
                _ => return Err(UnknownMechanism(other.to_owned())),
            },
        })
    }
}

impl Serialize for Mechanism {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mechanism {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mechanism, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Energy passing from a seller to a buyer at a price.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Trade<I, P> {
    pub bid_id: I,
    pub ask_id: I,
    pub buyer: P,
    pub seller: P,
    pub energy_wh: u64,
    /// What the seller receives per kWh.
    pub price_micro_per_kwh: u64,
    /// Paid by the buyer to the grid operator.
    pub grid_fee_micro: u64,
    /// Paid by the buyer to the seller.
    pub value_micro: u64,
    /// Paid by the buyer to the market operator (McAfee's budget surplus;
    /// zero for every other mechanism).
    pub surplus_micro: u64,
}

impl<I, P> Trade<I, P> {
    /// Everything the buyer pays for this trade.
    pub fn buyer_pays_micro(&self) -> u64 {
        self.value_micro + self.grid_fee_micro + self.surplus_micro
    }
}

/// A participant's bid and ask netted against each other instead of trading.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SelfMatch<I> {
    pub bid_id: I,
    pub ask_id: I,
    pub energy_wh: u64,
}

/// The outcome of clearing one book.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ClearingResult<I, P> {
    pub mechanism: Mechanism,
    /// The uniform seller price; the volume-weighted average seller price for
    /// pay-as-bid; `None` when nothing trades.
    pub clearing_price_micro_per_kwh: Option<u64>,
    /// What buyers pay per kWh on average, grid fee included (for SDR: the
    /// paper's P_buy, i.e. averaged over local and grid energy).
    pub buyer_price_micro_per_kwh: Option<u64>,
    pub volume_wh: u64,
    /// Total energy offered for sale / asked for, after self-trade netting.
    pub supply_wh: u64,
    pub demand_wh: u64,
    pub grid_fee_micro: u64,
    pub surplus_micro: u64,
    pub trades: Vec<Trade<I, P>>,
    pub self_matches: Vec<SelfMatch<I>>,
    /// SHA-256 over the canonical encoding of mechanism, tariff, prices and
    /// trades (docs/market.md).
    #[serde(with = "hex_hash")]
    pub result_hash: Hash32,
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::hash::Hash32;

    pub(super) fn serialize<S: Serializer>(hash: &Hash32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(hash))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash32, D::Error> {
        let text = String::deserialize(d)?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&text, &mut hash).map_err(serde::de::Error::custom)?;
        Ok(hash)
    }
}

/// Why a book cannot be cleared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClearError {
    #[error("invalid tariff: {0}")]
    Tariff(#[from] TariffError),
    #[error("book has {0} orders; at most {MAX_ORDERS} are allowed")]
    TooManyOrders(usize),
    #[error("order {index} has zero energy; leave it out instead")]
    ZeroEnergy { index: usize },
    #[error("order {index} has {energy_wh} Wh; at most {MAX_ORDER_ENERGY_WH} Wh per order")]
    EnergyTooLarge { index: usize, energy_wh: u64 },
    #[error(
        "order {index} has price {price} micro/kWh, outside the tariff bounds [{feed_in}, {retail}]"
    )]
    PriceOutOfBounds {
        index: usize,
        price: u64,
        feed_in: u64,
        retail: u64,
    },
    #[error("two {side:?} orders share the id {id}; ids must be unique")]
    DuplicateId { side: Side, id: String },
    #[error("the {side:?} orders add up to more than 2^64 Wh")]
    TotalTooLarge { side: Side },
    #[error("pay-as-clear k must be between 0 and 1 (0..=1000000 ppm), got {0} ppm")]
    K(u32),
}

/// Clears `orders` with `mechanism` under `tariff`.
pub fn clear<I: BookKey, P: BookKey>(
    mechanism: Mechanism,
    tariff: &Tariff,
    orders: &[Order<I, P>],
) -> Result<ClearingResult<I, P>, ClearError> {
    tariff.validate()?;
    if let Mechanism::PayAsClear { k_ppm } = mechanism
        && k_ppm > 1_000_000
    {
        return Err(ClearError::K(k_ppm));
    }
    if orders.len() > MAX_ORDERS {
        return Err(ClearError::TooManyOrders(orders.len()));
    }
    for (index, order) in orders.iter().enumerate() {
        if order.energy_wh == 0 {
            return Err(ClearError::ZeroEnergy { index });
        }
        if order.energy_wh > MAX_ORDER_ENERGY_WH {
            return Err(ClearError::EnergyTooLarge {
                index,
                energy_wh: order.energy_wh,
            });
        }
        if !tariff.contains(order.price_micro_per_kwh) {
            return Err(ClearError::PriceOutOfBounds {
                index,
                price: order.price_micro_per_kwh,
                feed_in: tariff.feed_in_micro_per_kwh,
                retail: tariff.retail_micro_per_kwh,
            });
        }
    }
    let outcome = match mechanism {
        Mechanism::PayAsClear { .. } | Mechanism::PayAsBid | Mechanism::McAfee => {
            uniform::clear(mechanism, tariff, orders)?
        }
        Mechanism::Sdr | Mechanism::MidMarket => shared::clear(mechanism, tariff, orders)?,
    };
    Ok(finish(mechanism, tariff, outcome))
}

/// What a mechanism decides, before totals and the hash are added.
struct Outcome<I, P> {
    clearing_price: Option<u64>,
    buyer_price: Option<u64>,
    supply_wh: u64,
    demand_wh: u64,
    trades: Vec<Trade<I, P>>,
    self_matches: Vec<SelfMatch<I>>,
}

fn finish<I: BookKey, P: BookKey>(
    mechanism: Mechanism,
    tariff: &Tariff,
    outcome: Outcome<I, P>,
) -> ClearingResult<I, P> {
    // One pass over the trades computes the totals, checks the invariants
    // and feeds the hash, so a million trades are read from memory once.
    let mut h = Hasher::new(RESULT_DOMAIN);
    h.write_u8(mechanism.tag());
    h.write_u32(match mechanism {
        Mechanism::PayAsClear { k_ppm } => k_ppm,
        _ => 0,
    });
    h.write_u64(tariff.feed_in_micro_per_kwh);
    h.write_u64(tariff.retail_micro_per_kwh);
    h.write_u64(tariff.grid_fee_micro_per_kwh);
    for price in [outcome.clearing_price, outcome.buyer_price] {
        match price {
            None => h.write_u8(0),
            Some(p) => {
                h.write_u8(1);
                h.write_u64(p);
            }
        }
    }
    h.write_u64(outcome.trades.len() as u64);
    let mut volume_wh = 0u64;
    let mut grid_fee_micro = 0u64;
    let mut surplus_micro = 0u64;
    for t in &outcome.trades {
        // Architecture invariant: no self-trade, no empty trade.
        assert!(t.buyer != t.seller, "self-trade produced by {mechanism}");
        assert!(t.energy_wh > 0, "empty trade produced by {mechanism}");
        volume_wh += t.energy_wh;
        grid_fee_micro += t.grid_fee_micro;
        surplus_micro += t.surplus_micro;
        // Buyer and seller are not hashed: the offer ids determine them.
        t.bid_id.hash_into(&mut h);
        t.ask_id.hash_into(&mut h);
        let mut numbers = [0u8; 40];
        for (slot, value) in numbers.chunks_exact_mut(8).zip([
            t.energy_wh,
            t.price_micro_per_kwh,
            t.grid_fee_micro,
            t.value_micro,
            t.surplus_micro,
        ]) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
        h.write(&numbers);
    }
    h.write_u64(outcome.self_matches.len() as u64);
    for m in &outcome.self_matches {
        m.bid_id.hash_into(&mut h);
        m.ask_id.hash_into(&mut h);
        h.write_u64(m.energy_wh);
    }
    h.write_u64(volume_wh);
    // Architecture invariant: nothing trades that was not offered.
    assert!(volume_wh <= outcome.supply_wh && volume_wh <= outcome.demand_wh);
    ClearingResult {
        mechanism,
        clearing_price_micro_per_kwh: outcome.clearing_price,
        buyer_price_micro_per_kwh: outcome.buyer_price,
        volume_wh,
        supply_wh: outcome.supply_wh,
        demand_wh: outcome.demand_wh,
        grid_fee_micro,
        surplus_micro,
        trades: outcome.trades,
        self_matches: outcome.self_matches,
        result_hash: h.finish(),
    }
}

/// Domain of the result hash.
const RESULT_DOMAIN: &[u8; 16] = b"DHARTI-RESULT-V1";

/// `⌊energy_wh × price_micro_per_kwh / 1000⌋`: the one rounding rule for money.
pub fn value_micro(energy_wh: u64, price_micro_per_kwh: u64) -> u64 {
    // The u64 path avoids a slow 128-bit division in the common case; both
    // paths compute the same floor.
    match energy_wh.checked_mul(price_micro_per_kwh) {
        Some(product) => product / 1000,
        None => {
            let value = u128::from(energy_wh) * u128::from(price_micro_per_kwh) / 1000;
            u64::try_from(value).expect("energy and price bounds keep a trade value inside u64")
        }
    }
}

/// Builds a trade with the one rounding rule; the buyer pays `buyer_total`
/// if given (McAfee's reduced case), else value plus fee.
fn make_trade<I: Clone, P: Clone>(
    bid: &Order<I, P>,
    ask: &Order<I, P>,
    energy_wh: u64,
    seller_price: u64,
    fee_per_kwh: u64,
    buyer_price_all_in: Option<u64>,
) -> Trade<I, P> {
    let value = value_micro(energy_wh, seller_price);
    let fee = value_micro(energy_wh, fee_per_kwh);
    let surplus = match buyer_price_all_in {
        None => 0,
        Some(price) => {
            let total = value_micro(energy_wh, price);
            total
                .checked_sub(value + fee)
                .expect("buyer price covers seller price and fee")
        }
    };
    Trade {
        bid_id: bid.id.clone(),
        ask_id: ask.id.clone(),
        buyer: bid.participant.clone(),
        seller: ask.participant.clone(),
        energy_wh,
        price_micro_per_kwh: seller_price,
        grid_fee_micro: fee,
        value_micro: value,
        surplus_micro: surplus,
    }
}

/// How the orders of one side are ranked before matching.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rank {
    /// Best price first (highest bid, lowest ask), then id ascending.
    Price,
    /// Id ascending only (mechanisms that ignore limit prices).
    Id,
}

/// One order in ranked position, with what matching needs of it copied in so
/// that the merge walks memory in order instead of jumping around the book.
/// 24 bytes: the sort moves these, so every byte costs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ranked {
    energy_wh: u64,
    /// Price made ascending in priority: the price for asks, its complement
    /// for bids, 0 when ranking by id only. Prices are at most
    /// `MAX_PRICE_MICRO_PER_KWH` < 2^32.
    price_key: u32,
    /// Top four bytes of the id ([`BookKey::sort_prefix`]).
    id_prefix: u32,
    /// Top four bytes of the participant: equal participants have equal
    /// prefixes, so only equal prefixes need the full comparison.
    participant_prefix: u32,
    index: u32,
}

impl Ranked {
    /// The order's limit price, recovered from the key.
    fn price_micro_per_kwh(&self, side: Side) -> u64 {
        u64::from(match side {
            Side::Bid => u32::MAX - self.price_key,
            Side::Ask => self.price_key,
        })
    }
}

const _: () = assert!(crate::tariff::MAX_PRICE_MICRO_PER_KWH < u32::MAX as u64);

/// Books smaller than this are sorted by comparison; radix passes only pay
/// off once the book outgrows the caches.
const RADIX_MIN_LEN: usize = 4_096;

fn top32(prefix: u64) -> u32 {
    (prefix >> 32) as u32
}

/// Ranks both sides of the book: by price key (a stable LSD radix sort over
/// the bits the keys actually span), then by id prefix, then by full id where
/// prefixes tie. Rejects duplicate ids within a side. Returns (bids, asks).
fn rank<I: BookKey, P: BookKey>(
    orders: &[Order<I, P>],
    rank: Rank,
) -> Result<(Vec<Ranked>, Vec<Ranked>), ClearError> {
    // One pass over the book fills both sides. Each side reserves room for
    // the whole book: pages never written are never faulted in, and growing
    // by doubling would copy and fault everything twice.
    let mut bids: Vec<Ranked> = Vec::with_capacity(orders.len());
    let mut asks: Vec<Ranked> = Vec::with_capacity(orders.len());
    for (i, o) in orders.iter().enumerate() {
        let price =
            u32::try_from(o.price_micro_per_kwh).expect("tariff bounds keep prices below 2^32");
        let price_key = match (rank, o.side) {
            (Rank::Id, _) => 0,
            (Rank::Price, Side::Bid) => u32::MAX - price,
            (Rank::Price, Side::Ask) => price,
        };
        let ranked = Ranked {
            energy_wh: o.energy_wh,
            price_key,
            id_prefix: top32(o.id.sort_prefix()),
            participant_prefix: top32(o.participant.sort_prefix()),
            index: u32::try_from(i).expect("book size checked against MAX_ORDERS"),
        };
        match o.side {
            Side::Bid => bids.push(ranked),
            Side::Ask => asks.push(ranked),
        }
    }
    let mut scratch = Vec::new();
    sort_side(orders, Side::Bid, &mut bids, &mut scratch)?;
    sort_side(orders, Side::Ask, &mut asks, &mut scratch)?;
    Ok((bids, asks))
}

/// Sorts one side's entries into rank order; `scratch` is the radix sort's
/// second buffer, shared by both sides.
fn sort_side<I: BookKey, P>(
    orders: &[Order<I, P>],
    side: Side,
    keys: &mut Vec<Ranked>,
    scratch: &mut Vec<Ranked>,
) -> Result<(), ClearError> {
    let by_prefix = |a: &Ranked, b: &Ranked| {
        (a.price_key, a.id_prefix)
            .cmp(&(b.price_key, b.id_prefix))
            .then(a.index.cmp(&b.index))
    };
    if keys.len() < RADIX_MIN_LEN {
        keys.sort_unstable_by(by_prefix);
    } else {
        radix_sort_by_price(keys, scratch);
        // Within equal prices, order by id prefix.
        for_each_run(
            keys,
            |a, b| a.price_key == b.price_key,
            |run| run.sort_unstable_by(by_prefix),
        );
    }
    let mut duplicate = None;
    for_each_run(
        keys,
        |a, b| a.price_key == b.price_key && a.id_prefix == b.id_prefix,
        |run| {
            run.sort_unstable_by(|a, b| {
                orders[a.index as usize]
                    .id
                    .cmp(&orders[b.index as usize].id)
            });
            for pair in run.windows(2) {
                if orders[pair[0].index as usize].id == orders[pair[1].index as usize].id {
                    duplicate = Some(pair[0].index);
                }
            }
        },
    );
    match duplicate {
        Some(index) => Err(ClearError::DuplicateId {
            side,
            id: format!("{:?}", orders[index as usize].id),
        }),
        None => Ok(()),
    }
}

/// Calls `f` on every maximal run (of two or more) of neighbours that `same` groups.
fn for_each_run(
    keys: &mut [Ranked],
    same: impl Fn(&Ranked, &Ranked) -> bool,
    mut f: impl FnMut(&mut [Ranked]),
) {
    let mut start = 0;
    while start < keys.len() {
        let mut end = start + 1;
        while end < keys.len() && same(&keys[start], &keys[end]) {
            end += 1;
        }
        if end - start > 1 {
            f(&mut keys[start..end]);
        }
        start = end;
    }
}

/// Bits per radix pass: 2,048 counters fit in L1, and a tariff band of up to
/// 4 million micro-units (4 currency units per kWh) takes two passes.
const RADIX_BITS: u32 = 11;

/// Stable LSD radix sort on `price_key`, over only the bits in which the
/// keys differ.
fn radix_sort_by_price(keys: &mut Vec<Ranked>, scratch: &mut Vec<Ranked>) {
    let Some(min) = keys.iter().map(|k| k.price_key).min() else {
        return;
    };
    let max = keys.iter().map(|k| k.price_key).max().unwrap_or(min);
    let bits = 32 - (max - min).leading_zeros();
    scratch.clear();
    scratch.resize(keys.len(), Ranked::default());
    let mask = (1usize << RADIX_BITS) - 1;
    let mut shift = 0;
    while shift < bits {
        let digit = |k: &Ranked| ((k.price_key - min) >> shift) as usize & mask;
        let mut counts = vec![0usize; 1 << RADIX_BITS];
        for k in keys.iter() {
            counts[digit(k)] += 1;
        }
        let mut offset = 0;
        for count in counts.iter_mut() {
            let here = *count;
            *count = offset;
            offset += here;
        }
        for k in keys.iter() {
            let d = digit(k);
            scratch[counts[d]] = *k;
            counts[d] += 1;
        }
        std::mem::swap(keys, scratch);
        shift += RADIX_BITS;
    }
}

/// Sum of the energy of `ranked`; an error if it does not fit in `u64`.
fn total_energy(ranked: &[Ranked], side: Side) -> Result<u64, ClearError> {
    ranked
        .iter()
        .try_fold(0u64, |acc, r| acc.checked_add(r.energy_wh))
        .ok_or(ClearError::TotalTooLarge { side })
}

#[cfg(test)]
mod tests;
