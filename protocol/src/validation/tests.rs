//! One test per verdict, each built from a fresh pool.

use ed25519_dalek::SigningKey;

use super::*;
use crate::tariff::Tariff;

const NOW_S: u64 = 1_000_000 * 900 + 100; // interval 1_000_000 has started 100 s ago
const OPEN: IntervalIndex = IntervalIndex(1_000_002);

fn rules() -> MarketRules {
    MarketRules {
        chain_id: 73_799,
        market_id: MarketId::from_name("validation"),
        clock: IntervalClock::default(),
        max_intervals_ahead: 4,
        max_offer_energy_wh: 10_000,
        max_offers_per_participant: 3,
        tariffs: TariffSchedule::flat(Tariff {
            feed_in_micro_per_kwh: 80_000,
            retail_micro_per_kwh: 300_000,
            grid_fee_micro_per_kwh: 10_000,
        }),
        mechanism: Mechanism::default(),
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn offer(key: &SigningKey, sequence: u64, energy_wh: u64) -> Offer {
    let rules = rules();
    Offer {
        chain_id: rules.chain_id,
        market: rules.market_id,
        interval: OPEN,
        side: Side::Bid,
        energy_wh,
        price_micro_per_kwh: 150_000,
        participant: ParticipantId(key.verifying_key().to_bytes()),
        sequence,
    }
}

fn receive(pool: &mut OfferPool, offer: SignedOffer) -> Validation {
    pool.receive(&rules(), offer, Arrival::Gossip { now_s: NOW_S })
}

#[test]
fn accepts_a_valid_offer_and_books_it() {
    let k = key(1);
    let mut pool = OfferPool::new();
    assert_eq!(
        receive(&mut pool, offer(&k, 1, 500).sign(&k)),
        Validation::Accept(Accepted::New)
    );
    let book = pool.book(OPEN);
    assert_eq!(book.len(), 1);
    assert_eq!(book[0].energy_wh, 500);
}

#[test]
fn rejects_bad_signature_before_touching_the_slot() {
    let k = key(1);
    let mut pool = OfferPool::new();
    let mut forged = offer(&k, 1, 500).sign(&k);
    forged.signature[0] ^= 1;
    assert!(matches!(
        receive(&mut pool, forged),
        Validation::Reject(Reject::BadSignature(_))
    ));
    assert_eq!(pool.book(OPEN).len(), 0);
}

#[test]
fn rejects_wrong_chain_and_market() {
    let k = key(1);
    let mut pool = OfferPool::new();
    let mut o = offer(&k, 1, 500);
    o.chain_id = 246;
    assert!(matches!(
        receive(&mut pool, o.sign(&k)),
        Validation::Reject(Reject::WrongChain { got: 246, .. })
    ));
    let mut o = offer(&k, 1, 500);
    o.market = MarketId::from_name("elsewhere");
    assert_eq!(
        receive(&mut pool, o.sign(&k)),
        Validation::Reject(Reject::WrongMarket)
    );
}

#[test]
fn rejects_closed_and_far_intervals() {
    let k = key(1);
    let mut pool = OfferPool::new();
    // Interval 1_000_001 starts at 800 s from now... its gate closes 60 s
    // earlier; move the clock past it.
    let mut o = offer(&k, 1, 500);
    o.interval = IntervalIndex(1_000_001);
    let gate = rules().clock.gate_closure_s(o.interval);
    assert!(matches!(
        pool.receive(&rules(), o.sign(&k), Arrival::Gossip { now_s: gate }),
        Validation::Reject(Reject::IntervalClosed(_))
    ));
    assert_eq!(
        pool.receive(&rules(), o.sign(&k), Arrival::Gossip { now_s: gate - 1 }),
        Validation::Accept(Accepted::New)
    );
    let mut far = offer(&k, 1, 500);
    far.interval = IntervalIndex(1_000_005);
    assert!(matches!(
        receive(&mut pool, far.sign(&k)),
        Validation::Reject(Reject::TooFarAhead { .. })
    ));
}

#[test]
fn rejects_zero_oversized_and_mispriced() {
    let k = key(1);
    let mut pool = OfferPool::new();
    assert_eq!(
        receive(&mut pool, offer(&k, 0, 0).sign(&k)),
        Validation::Reject(Reject::ZeroEnergy)
    );
    // A cancel may overtake the offer it cancels: kept, and the book stays empty.
    assert_eq!(
        receive(&mut pool, offer(&k, 2, 0).sign(&k)),
        Validation::Accept(Accepted::Cancelled { previous: None })
    );
    assert_eq!(
        receive(&mut pool, offer(&k, 1, 500).sign(&k)),
        Validation::Ignore(Ignored::Stale)
    );
    assert!(pool.book(OPEN).is_empty());
    assert!(matches!(
        receive(&mut pool, offer(&k, 1, 10_001).sign(&k)),
        Validation::Reject(Reject::Oversized {
            energy_wh: 10_001,
            max_wh: 10_000
        })
    ));
    for price in [79_999, 300_001] {
        let mut o = offer(&k, 1, 500);
        o.price_micro_per_kwh = price;
        assert!(matches!(
            receive(&mut pool, o.sign(&k)),
            Validation::Reject(Reject::PriceOutOfBounds { .. })
        ));
    }
}

#[test]
fn duplicates_are_ignored() {
    let k = key(1);
    let mut pool = OfferPool::new();
    let signed = offer(&k, 1, 500).sign(&k);
    assert_eq!(
        receive(&mut pool, signed.clone()),
        Validation::Accept(Accepted::New)
    );
    assert_eq!(
        receive(&mut pool, signed),
        Validation::Ignore(Ignored::Duplicate)
    );
}

#[test]
fn higher_sequence_replaces_and_zero_cancels() {
    let k = key(1);
    let mut pool = OfferPool::new();
    let first = offer(&k, 1, 500).sign(&k);
    let second = offer(&k, 2, 700).sign(&k);
    assert_eq!(
        receive(&mut pool, first.clone()),
        Validation::Accept(Accepted::New)
    );
    assert_eq!(
        receive(&mut pool, second.clone()),
        Validation::Accept(Accepted::Replaced { previous: first.id })
    );
    assert_eq!(pool.book(OPEN)[0].energy_wh, 700);
    // Already held (stale offers are kept: they count towards the limit).
    assert_eq!(
        receive(&mut pool, first),
        Validation::Ignore(Ignored::Duplicate)
    );
    assert_eq!(
        receive(&mut pool, offer(&k, 3, 0).sign(&k)),
        Validation::Accept(Accepted::Cancelled {
            previous: Some(second.id)
        })
    );
    assert!(pool.book(OPEN).is_empty());
}

#[test]
fn too_many_offers_from_one_participant() {
    let k = key(1);
    let mut pool = OfferPool::new();
    for sequence in 1..=3 {
        assert!(matches!(
            receive(&mut pool, offer(&k, sequence, 500).sign(&k)),
            Validation::Accept(_)
        ));
    }
    assert_eq!(
        receive(&mut pool, offer(&k, 4, 500).sign(&k)),
        Validation::Reject(Reject::TooManyOffers(3))
    );
    assert!(pool.book(OPEN).is_empty(), "all of its offers are void");
    // Another participant is unaffected.
    let other = key(2);
    assert_eq!(
        receive(&mut pool, offer(&other, 1, 500).sign(&other)),
        Validation::Accept(Accepted::New)
    );
}

#[test]
fn equivocation_voids_the_slot_and_keeps_evidence() {
    let k = key(1);
    let mut pool = OfferPool::new();
    let first = offer(&k, 5, 500).sign(&k);
    let second = offer(&k, 5, 600).sign(&k);
    assert_eq!(
        receive(&mut pool, first.clone()),
        Validation::Accept(Accepted::New)
    );
    let Validation::Reject(Reject::Equivocation(evidence)) = receive(&mut pool, second.clone())
    else {
        panic!("equivocation not detected");
    };
    assert_eq!(
        (evidence.first.id, evidence.second.id),
        (first.id, second.id)
    );
    assert!(pool.book(OPEN).is_empty(), "both offers are void");
    assert_eq!(
        receive(&mut pool, offer(&k, 6, 500).sign(&k)),
        Validation::Ignore(Ignored::SlotVoid)
    );
    assert_eq!(pool.evidence().len(), 1);
    // The evidence verifies on its own.
    evidence.first.verify().unwrap();
    evidence.second.verify().unwrap();
}

#[test]
fn a_forged_conflicting_offer_is_not_an_equivocation() {
    let k = key(1);
    let mut pool = OfferPool::new();
    receive(&mut pool, offer(&k, 5, 500).sign(&k));
    let mut forged = offer(&k, 5, 600).sign(&k);
    forged.signature[10] ^= 4;
    assert!(matches!(
        receive(&mut pool, forged),
        Validation::Reject(Reject::BadSignature(_))
    ));
    assert_eq!(pool.book(OPEN).len(), 1);
    assert!(pool.evidence().is_empty());
}

#[test]
fn batch_verdicts_equal_one_by_one_verdicts() {
    let keys: Vec<SigningKey> = (1..=6).map(key).collect();
    let mut offers = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        offers.push(offer(k, 1, 100 + i as u64).sign(k));
        offers.push(offer(k, 2, 200 + i as u64).sign(k));
    }
    offers.push(offers[0].clone());
    offers.push(offer(&keys[0], 2, 999).sign(&keys[0])); // equivocation
    let mut bad = offer(&keys[1], 9, 5).sign(&keys[1]);
    bad.signature[3] ^= 8;
    offers.push(bad);
    let mut late = offer(&keys[2], 3, 5);
    late.interval = IntervalIndex(999);
    offers.push(late.sign(&keys[2]));

    let mut one_by_one = OfferPool::new();
    let expected: Vec<Validation> = offers
        .iter()
        .map(|o| receive(&mut one_by_one, o.clone()))
        .collect();
    let mut batched = OfferPool::new();
    let got = batched.receive_batch(&rules(), offers, Arrival::Gossip { now_s: NOW_S });
    assert_eq!(got, expected);
    assert_eq!(batched.book(OPEN), one_by_one.book(OPEN));
}

#[test]
fn pruning_forgets_old_intervals() {
    let k = key(1);
    let mut pool = OfferPool::new();
    receive(&mut pool, offer(&k, 1, 500).sign(&k));
    pool.prune_before(IntervalIndex(OPEN.0 + 1));
    assert!(pool.book(OPEN).is_empty());
}

// ---------------------------------------------------------------------------
// Order independence: what a pool holds depends on which offers arrived,
// not on their order or duplicates. Few participants, sequence numbers and
// energies, and a limit of 3, so conflicts, cancels, stale offers and
// over-limit participants all happen.

mod order {
    use proptest::prelude::*;

    use super::*;

    fn offers_strategy() -> impl Strategy<Value = Vec<SignedOffer>> {
        prop::collection::vec((0u8..3, any::<bool>(), 0u64..4, 0u64..3), 1..14).prop_map(|raw| {
            raw.into_iter()
                .map(|(p, bid, sequence, energy)| {
                    let k = key(p + 1);
                    let mut o = offer(&k, sequence, energy * 300);
                    o.side = if bid { Side::Bid } else { Side::Ask };
                    o.sign(&k)
                })
                .collect()
        })
    }

    fn state(pool: &OfferPool) -> (Vec<OfferId>, Hash32, Vec<Order<OfferId, ParticipantId>>) {
        (
            pool.set_ids(OPEN).to_vec(),
            pool.set_root(OPEN),
            pool.book(OPEN),
        )
    }

    /// Gives `to` every offer of `from`'s reconciliation set it lacks.
    fn send_set(from: &OfferPool, to: &mut OfferPool) {
        let ids = from.set_ids(OPEN);
        let offers: Vec<std::sync::Arc<SignedOffer>> = from
            .offers(OPEN)
            .filter(|o| ids.contains(&o.id))
            .cloned()
            .collect();
        to.receive_batch(&rules(), offers, Arrival::Reconciliation);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn arrival_order_and_duplicates_do_not_matter(
            (offers, shuffled) in offers_strategy().prop_flat_map(|o| (Just(o.clone()), Just(o).prop_shuffle())),
            repeat in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut one_by_one = OfferPool::new();
            for o in &offers {
                receive(&mut one_by_one, o.clone());
            }
            let mut batched = OfferPool::new();
            let mut again = shuffled.clone();
            again.extend(repeat.iter().map(|i| i.get(&offers).clone()));
            batched.receive_batch(&rules(), again, Arrival::Gossip { now_s: NOW_S });
            prop_assert_eq!(state(&one_by_one), state(&batched));
        }

        /// A node's pool keeps members' offers by place; with two of the
        /// three participants members (places in another order than the
        /// keys') it gives the same verdicts and holds the same set and book
        /// as a pool without a member list.
        #[test]
        fn keeping_members_by_place_changes_no_verdict(
            (offers, shuffled) in offers_strategy().prop_flat_map(|o| (Just(o.clone()), Just(o).prop_shuffle())),
        ) {
            let members: IdMap<ParticipantId, u32> = [(3u8, 0u32), (1, 1)]
                .into_iter()
                .map(|(seed, place)| (ParticipantId(key(seed).verifying_key().to_bytes()), place))
                .collect();
            let mut plain = OfferPool::new();
            let mut placed = OfferPool::for_members(
                std::sync::Arc::new(Ed25519Verifier::default()),
                std::sync::Arc::new(members),
            );
            for (i, o) in offers.iter().chain(&shuffled).enumerate() {
                prop_assert_eq!(receive(&mut plain, o.clone()), receive(&mut placed, o.clone()));
                // The set, once built, is kept up to date by later arrivals.
                if i % 3 == 1 {
                    prop_assert_eq!(plain.set_root(OPEN), placed.set_root(OPEN));
                }
            }
            prop_assert_eq!(state(&plain), state(&placed));
            let held = |pool: &OfferPool| {
                let mut ids: Vec<OfferId> = pool.offers(OPEN).map(|o| o.id).collect();
                ids.sort_unstable();
                ids
            };
            prop_assert_eq!(held(&plain), held(&placed));
            for o in &offers {
                prop_assert_eq!(
                    plain.offer(OPEN, &o.offer.participant, &o.id).map(|o| o.id),
                    placed.offer(OPEN, &o.offer.participant, &o.id).map(|o| o.id)
                );
            }
        }

        #[test]
        fn two_pools_exchanging_their_sets_converge(
            offers in offers_strategy(),
            split in prop::collection::vec(0u8..3, 14),
        ) {
            // Each offer reaches A, B or both.
            let (mut a, mut b) = (OfferPool::new(), OfferPool::new());
            for (o, to) in offers.iter().zip(&split) {
                if *to != 1 { receive(&mut a, o.clone()); }
                if *to != 0 { receive(&mut b, o.clone()); }
            }
            for _ in 0..4 {
                let snapshot = a.clone();
                send_set(&b, &mut a);
                send_set(&snapshot, &mut b);
            }
            prop_assert_eq!(state(&a), state(&b));
        }
    }
}

mod set_order {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The bucketed sort gives the order of a plain sort, for evenly
        /// spread ids and for ids whose leading words bunch in few buckets.
        #[test]
        fn ids_sort_as_a_comparison_sort_would(
            raw in prop::collection::btree_set((0u64..4, any::<u64>(), any::<u8>()), 0..400),
            bunched in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut keyed: Vec<(OfferId, u32)> = raw
                .into_iter()
                .map(|(bunch, word, tail)| {
                    let lead = if bunched { bunch << 62 | u64::from(tail) } else { word };
                    let mut bytes = [tail; 32];
                    bytes[..8].copy_from_slice(&lead.to_be_bytes());
                    OfferId(bytes)
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .zip(0u32..)
                .collect();
            // Shuffled (Fisher-Yates with SplitMix64 steps).
            let mut state = seed;
            for i in (1..keyed.len()).rev() {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let z = (state ^ (state >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                let below = u64::try_from(i + 1).expect("a small index");
                keyed.swap(i, usize::try_from(z % below).expect("below i + 1"));
            }
            let mut expected = keyed.clone();
            expected.sort_unstable();
            prop_assert_eq!(sort_ids(keyed), expected);
        }
    }
}
