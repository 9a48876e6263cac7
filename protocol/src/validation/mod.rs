//! Validation of arriving offers: every offer gets Accept, Ignore or
//! Reject(reason), never a panic. Reject means the sender broke a rule (the
//! network layer scores it down); Ignore means the message is harmless but
//! useless (a duplicate, a stale replacement).
//!
//! Checks run cheapest first, and the signature is checked before anything
//! that changes state, so nobody can cancel, replace or frame someone else's
//! offer:
//! 1. chain, market ([`Reject::WrongChain`], [`Reject::WrongMarket`]);
//! 2. interval still open and not too far ahead;
//! 3. energy and price within the market's bounds;
//! 4. an exact copy of what the pool already holds is ignored before the
//!    (expensive) signature check;
//! 5. the signature, unless the caller verified it already (in a batch);
//! 6. the per-(participant, interval, side) slot: a higher sequence number
//!    replaces, energy 0 cancels, a lower one is stale, the same one with
//!    different content is an equivocation: the slot is void for the rest of
//!    the interval and both offers are kept as evidence.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::clearing::{Mechanism, Order};
use crate::offer::{Offer, SignatureError, SignedOffer, participant_key, verify_batch};
use crate::tariff::TariffSchedule;
use crate::types::{IntervalClock, IntervalIndex, MarketId, OfferId, ParticipantId, Side};

/// The rules of one market that offers are checked against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketRules {
    pub chain_id: u64,
    pub market_id: MarketId,
    pub clock: IntervalClock,
    /// How many intervals beyond the current one accept offers (default 96:
    /// one day of 15-minute intervals, so agents can plan a day ahead while a
    /// node holds a bounded number of open intervals).
    pub max_intervals_ahead: u64,
    /// Most energy one offer may carry (default 100 kWh: far above what a
    /// household connection delivers in an interval, far below abuse).
    pub max_offer_energy_wh: u64,
    /// Most offers (first offers, replacements and cancels together) one
    /// participant may send for one interval (default 16). Bounds the state a
    /// spammer can make every node keep.
    pub max_offers_per_participant: u32,
    pub tariffs: TariffSchedule,
    pub mechanism: Mechanism,
}

/// Default for [`MarketRules::max_intervals_ahead`].
pub const DEFAULT_MAX_INTERVALS_AHEAD: u64 = 96;
/// Default for [`MarketRules::max_offer_energy_wh`].
pub const DEFAULT_MAX_OFFER_ENERGY_WH: u64 = 100_000;
/// Default for [`MarketRules::max_offers_per_participant`].
pub const DEFAULT_MAX_OFFERS_PER_PARTICIPANT: u32 = 16;

/// The verdict on one arriving offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Validation {
    Accept(Accepted),
    Ignore(Ignored),
    Reject(Reject),
}

/// Why an offer was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// The first offer in its slot.
    New,
    /// It replaced an offer with a lower sequence number.
    Replaced { previous: OfferId },
    /// Energy 0: it cancelled the offer it replaced.
    Cancelled { previous: OfferId },
}

/// Why an offer was ignored (no fault of the sender's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// The pool already holds this offer.
    Duplicate,
    /// A higher sequence number is already in the slot.
    Stale,
    /// The slot was voided by an equivocation earlier.
    SlotVoid,
}

/// Why an offer was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("bad signature: {0}")]
    BadSignature(#[from] SignatureError),
    #[error("offer is for chain {got}, this market is on chain {expected}")]
    WrongChain { got: u64, expected: u64 },
    #[error("offer is for another market")]
    WrongMarket,
    #[error("interval {0} is closed for offers")]
    IntervalClosed(u64),
    #[error("interval {interval} is more than {max_ahead} intervals ahead")]
    TooFarAhead { interval: u64, max_ahead: u64 },
    #[error("offer has zero energy and nothing to cancel")]
    ZeroEnergy,
    #[error("offer has {energy_wh} Wh, more than the market's maximum of {max_wh} Wh")]
    Oversized { energy_wh: u64, max_wh: u64 },
    #[error("price {price} is outside the tariff bounds [{feed_in}, {retail}]")]
    PriceOutOfBounds {
        price: u64,
        feed_in: u64,
        retail: u64,
    },
    #[error("participant sent more than {0} offers for this interval")]
    TooManyOffers(u32),
    #[error("equivocation: two different offers with the same sequence number")]
    Equivocation(Box<Equivocation>),
}

/// Two validly signed, different offers for one slot with one sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Equivocation {
    pub first: SignedOffer,
    pub second: SignedOffer,
}

/// One (participant, interval, side) slot. Nearly every slot is live, so
/// boxing the offer to shrink the rare void slot would only cost allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum Slot {
    /// The latest offer; energy 0 if cancelled.
    Live(SignedOffer),
    /// Voided by an equivocation.
    Void,
}

/// The offers of one interval.
#[derive(Clone, Debug, Default)]
struct IntervalPool {
    slots: BTreeMap<(ParticipantId, Side), Slot>,
    sent: BTreeMap<ParticipantId, u32>,
}

/// The offers a node holds for the intervals that are open or being cleared.
#[derive(Clone, Debug, Default)]
pub struct OfferPool {
    intervals: BTreeMap<IntervalIndex, IntervalPool>,
    evidence: Vec<Equivocation>,
    keys: BTreeMap<ParticipantId, VerifyingKey>,
}

/// Bound on the parsed-key cache; past it the cache is cleared. Parsing a key
/// costs about a tenth of a signature check, so the cache is an optimisation
/// that must not grow with hostile traffic.
const MAX_CACHED_KEYS: usize = 65_536;

/// Checks that need no state: chain, market, timing, bounds.
pub fn check_stateless(rules: &MarketRules, offer: &Offer, now_s: u64) -> Result<(), Reject> {
    if offer.chain_id != rules.chain_id {
        return Err(Reject::WrongChain {
            got: offer.chain_id,
            expected: rules.chain_id,
        });
    }
    if offer.market != rules.market_id {
        return Err(Reject::WrongMarket);
    }
    if !rules.clock.is_open(offer.interval, now_s) {
        return Err(Reject::IntervalClosed(offer.interval.0));
    }
    let current = rules.clock.interval_at(now_s);
    if offer.interval.0 > current.0.saturating_add(rules.max_intervals_ahead) {
        return Err(Reject::TooFarAhead {
            interval: offer.interval.0,
            max_ahead: rules.max_intervals_ahead,
        });
    }
    if offer.energy_wh > rules.max_offer_energy_wh {
        return Err(Reject::Oversized {
            energy_wh: offer.energy_wh,
            max_wh: rules.max_offer_energy_wh,
        });
    }
    if offer.energy_wh > 0 {
        let tariff = rules.tariffs.at(rules.clock.start_s(offer.interval));
        if !tariff.contains(offer.price_micro_per_kwh) {
            return Err(Reject::PriceOutOfBounds {
                price: offer.price_micro_per_kwh,
                feed_in: tariff.feed_in_micro_per_kwh,
                retail: tariff.retail_micro_per_kwh,
            });
        }
    }
    Ok(())
}

impl OfferPool {
    pub fn new() -> OfferPool {
        OfferPool::default()
    }

    fn key(&mut self, participant: &ParticipantId) -> Result<VerifyingKey, SignatureError> {
        if let Some(key) = self.keys.get(participant) {
            return Ok(*key);
        }
        let key = participant_key(participant)?;
        if self.keys.len() >= MAX_CACHED_KEYS {
            self.keys.clear();
        }
        self.keys.insert(*participant, key);
        Ok(key)
    }

    /// Validates one offer and, if accepted, adds it to the pool.
    pub fn receive(&mut self, rules: &MarketRules, offer: SignedOffer, now_s: u64) -> Validation {
        if let Err(reject) = check_stateless(rules, &offer.offer, now_s) {
            return Validation::Reject(reject);
        }
        if self.holds(&offer) {
            return Validation::Ignore(Ignored::Duplicate);
        }
        let verified = self
            .key(&offer.offer.participant)
            .and_then(|key| offer.verify_with(&key));
        if let Err(error) = verified {
            return Validation::Reject(Reject::BadSignature(error));
        }
        self.insert_verified(rules, offer)
    }

    /// Validates many offers, checking their signatures in one batch: the
    /// fast path for a burst of gossip. Verdicts come back in input order and
    /// equal what [`OfferPool::receive`] one by one would give.
    pub fn receive_batch(
        &mut self,
        rules: &MarketRules,
        offers: Vec<SignedOffer>,
        now_s: u64,
    ) -> Vec<Validation> {
        let mut verdicts: Vec<Option<Validation>> = Vec::with_capacity(offers.len());
        let mut to_verify: Vec<usize> = Vec::with_capacity(offers.len());
        let mut keys: Vec<VerifyingKey> = Vec::with_capacity(offers.len());
        for (i, offer) in offers.iter().enumerate() {
            let verdict = match check_stateless(rules, &offer.offer, now_s) {
                Err(reject) => Some(Validation::Reject(reject)),
                Ok(()) => match self.key(&offer.offer.participant) {
                    Err(error) => Some(Validation::Reject(Reject::BadSignature(error))),
                    Ok(key) => {
                        to_verify.push(i);
                        keys.push(key);
                        None
                    }
                },
            };
            verdicts.push(verdict);
        }
        let refs: Vec<&SignedOffer> = to_verify.iter().map(|&i| &offers[i]).collect();
        let valid = verify_batch(&refs, &keys);
        for (&i, ok) in to_verify.iter().zip(valid) {
            if !ok {
                verdicts[i] = Some(Validation::Reject(Reject::BadSignature(
                    SignatureError::Invalid,
                )));
            }
        }
        offers
            .into_iter()
            .zip(verdicts)
            .map(|(offer, verdict)| match verdict {
                Some(verdict) => verdict,
                None if self.holds(&offer) => Validation::Ignore(Ignored::Duplicate),
                None => self.insert_verified(rules, offer),
            })
            .collect()
    }

    /// Whether the pool holds exactly this signed offer.
    fn holds(&self, offer: &SignedOffer) -> bool {
        let o = &offer.offer;
        match self
            .intervals
            .get(&o.interval)
            .and_then(|p| p.slots.get(&(o.participant, o.side)))
        {
            Some(Slot::Live(held)) => held.id == offer.id,
            _ => false,
        }
    }

    /// Slot logic for an offer whose signature is known to be valid.
    fn insert_verified(&mut self, rules: &MarketRules, offer: SignedOffer) -> Validation {
        let o = offer.offer;
        let pool = self.intervals.entry(o.interval).or_default();
        let sent = pool.sent.get(&o.participant).copied().unwrap_or(0);
        let slot_key = (o.participant, o.side);
        let previous = match pool.slots.get(&slot_key) {
            Some(Slot::Void) => return Validation::Ignore(Ignored::SlotVoid),
            Some(Slot::Live(held)) => {
                if o.sequence < held.offer.sequence {
                    return Validation::Ignore(Ignored::Stale);
                }
                if o.sequence == held.offer.sequence {
                    if o == held.offer {
                        // Same content, another valid signature: nothing new.
                        return Validation::Ignore(Ignored::Duplicate);
                    }
                    let evidence = Equivocation {
                        first: held.clone(),
                        second: offer,
                    };
                    pool.slots.insert(slot_key, Slot::Void);
                    self.evidence.push(evidence.clone());
                    return Validation::Reject(Reject::Equivocation(Box::new(evidence)));
                }
                Some(held.id)
            }
            None => None,
        };
        if previous.is_none() && o.energy_wh == 0 {
            return Validation::Reject(Reject::ZeroEnergy);
        }
        if sent >= rules.max_offers_per_participant {
            return Validation::Reject(Reject::TooManyOffers(rules.max_offers_per_participant));
        }
        pool.sent.insert(o.participant, sent + 1);
        pool.slots.insert(slot_key, Slot::Live(offer));
        Validation::Accept(match previous {
            None => Accepted::New,
            Some(previous) if o.energy_wh == 0 => Accepted::Cancelled { previous },
            Some(previous) => Accepted::Replaced { previous },
        })
    }

    /// The live offers of `interval` (cancelled and voided slots left out),
    /// as an order book for clearing.
    pub fn book(&self, interval: IntervalIndex) -> Vec<Order<OfferId, ParticipantId>> {
        self.live(interval)
            .map(|signed| Order {
                id: signed.id,
                participant: signed.offer.participant,
                side: signed.offer.side,
                energy_wh: signed.offer.energy_wh,
                price_micro_per_kwh: signed.offer.price_micro_per_kwh,
            })
            .collect()
    }

    /// The live signed offers of `interval`.
    pub fn live(&self, interval: IntervalIndex) -> impl Iterator<Item = &SignedOffer> {
        self.intervals.get(&interval).into_iter().flat_map(|pool| {
            pool.slots.values().filter_map(|slot| match slot {
                Slot::Live(offer) if offer.offer.energy_wh > 0 => Some(offer),
                _ => None,
            })
        })
    }

    /// Equivocations seen and not yet taken.
    pub fn evidence(&self) -> &[Equivocation] {
        &self.evidence
    }

    /// Hands over the evidence gathered so far (to gossip and persist it);
    /// the pool keeps at most one per voided slot until then.
    pub fn take_evidence(&mut self) -> Vec<Equivocation> {
        std::mem::take(&mut self.evidence)
    }

    /// Forgets intervals before `interval` (they are final and persisted).
    pub fn prune_before(&mut self, interval: IntervalIndex) {
        self.intervals = self.intervals.split_off(&interval);
    }
}

#[cfg(test)]
mod tests;
