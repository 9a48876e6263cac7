//! Round trips per record kind, isolation, corruption, and a model-based
//! property test against a `BTreeMap` that includes reopening the store.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use dharti_protocol::clearing::{Mechanism, Order, clear};
use dharti_protocol::offer::Offer;
use dharti_protocol::settlement::ParticipantSettlement;
use dharti_protocol::tariff::Tariff;
use dharti_protocol::types::Side;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

use super::*;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("dharti-storage-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn market(n: u8) -> MarketId {
    MarketId::from_name(&format!("market-{n}"))
}

/// A small pool of signed offers (signing is the slow part), reused by all tests.
fn offers() -> &'static [SignedOffer] {
    static OFFERS: OnceLock<Vec<SignedOffer>> = OnceLock::new();
    OFFERS.get_or_init(|| {
        (0..16u8)
            .map(|i| {
                let key = SigningKey::from_bytes(&[i + 1; 32]);
                Offer {
                    chain_id: 73_799,
                    market: market(i % 2),
                    interval: IntervalIndex(u64::from(i % 4)),
                    side: if i % 3 == 0 { Side::Ask } else { Side::Bid },
                    energy_wh: 100 * u64::from(i) + 1,
                    price_micro_per_kwh: 100_000 + u64::from(i),
                    participant: ParticipantId(key.verifying_key().to_bytes()),
                    sequence: 1,
                }
                .sign(&key)
            })
            .collect()
    })
}

fn result(seed: u8) -> StoredResult {
    let book: Vec<Order<OfferId, ParticipantId>> = (0..4u8)
        .map(|i| Order {
            id: OfferId([seed.wrapping_add(i); 32]),
            participant: ParticipantId([i; 32]),
            side: if i % 2 == 0 { Side::Bid } else { Side::Ask },
            energy_wh: 500 + u64::from(seed),
            price_micro_per_kwh: if i % 2 == 0 {
                250_000
            } else {
                100_000 + u64::from(i)
            },
        })
        .collect();
    clear(
        Mechanism::default(),
        &Tariff::new(80_000, 300_000, 10_000),
        &book,
    )
    .unwrap()
}

fn settlement(interval: u64, net: i64) -> IntervalSettlement {
    IntervalSettlement {
        interval: IntervalIndex(interval),
        participants: vec![ParticipantSettlement {
            participant: ParticipantId([7; 32]),
            net_micro: net,
            ..Default::default()
        }],
        grid_operator_micro: 3,
        market_operator_micro: 0,
        supplier_net_micro: -net - 3,
    }
}

fn reading(participant: u8, interval: u64, import_wh: u64) -> MeterReading {
    MeterReading {
        participant: ParticipantId([participant; 32]),
        interval: IntervalIndex(interval),
        import_wh,
        export_wh: 1,
    }
}

#[test]
fn every_record_kind_round_trips_and_survives_reopen() {
    let dir = TempDir::new("round-trip");
    let m = market(0);
    let mut batch = WriteBatch::new();
    let offer = offers()[0].clone();
    batch.put_offer(m, offer.clone());
    batch.put_result(m, IntervalIndex(0), result(1));
    batch.put_settlement(m, settlement(0, -42));
    batch.put_meter_reading(m, reading(9, 0, 1234));
    batch.put_meta(b"peer-id", b"12D3Koo");
    {
        let store = Store::open(&dir.0).unwrap();
        store.apply(batch).unwrap();
        store.close().unwrap();
    }
    let store = Store::open(&dir.0).unwrap();
    assert_eq!(
        store.offers(&m, IntervalIndex(0)).unwrap(),
        vec![offer.clone()]
    );
    assert_eq!(
        store.offer(&m, IntervalIndex(0), &offer.id).unwrap(),
        Some(offer)
    );
    assert_eq!(store.result(&m, IntervalIndex(0)).unwrap(), Some(result(1)));
    assert_eq!(
        store.settlement(&m, IntervalIndex(0)).unwrap(),
        Some(settlement(0, -42))
    );
    assert_eq!(
        store.meter_readings(&m, IntervalIndex(0)).unwrap(),
        vec![reading(9, 0, 1234)]
    );
    assert_eq!(store.meta(b"peer-id").unwrap(), Some(b"12D3Koo".to_vec()));
    assert_eq!(store.meta(b"nothing").unwrap(), None);
    assert_eq!(
        store.last_result_interval(&m).unwrap(),
        Some(IntervalIndex(0))
    );
}

#[test]
fn a_snapshot_restores_the_same_history_and_damage_is_refused() {
    let dir = TempDir::new("snapshot-from");
    let into = TempDir::new("snapshot-into");
    let again = TempDir::new("snapshot-again");
    let m = market(3);
    let store = Store::open(&dir.0).unwrap();
    let mut batch = WriteBatch::new();
    for offer in offers() {
        batch.put_offer(m, offer.clone());
    }
    batch.put_result(m, IntervalIndex(0), result(2));
    batch.put_settlement(m, settlement(0, 17));
    batch.put_meta(b"k", b"v");
    store.apply(batch).unwrap();
    let mut snapshot = Vec::new();
    assert_eq!(
        store.export(&mut snapshot).unwrap(),
        offers().len() as u64 + 3
    );
    let restored = Store::import(&into.0, &mut snapshot.as_slice()).unwrap();
    let mut second = Vec::new();
    restored.export(&mut second).unwrap();
    assert_eq!(
        snapshot, second,
        "the restored store exports the same bytes"
    );
    assert_eq!(
        restored.offers(&m, IntervalIndex(0)).unwrap(),
        store.offers(&m, IntervalIndex(0)).unwrap()
    );
    assert_eq!(
        restored.result(&m, IntervalIndex(0)).unwrap(),
        Some(result(2))
    );
    // Restoring over a store with data is refused.
    assert!(matches!(
        Store::import(&into.0, &mut snapshot.as_slice()),
        Err(ImportError::NotEmpty | ImportError::Open(_))
    ));
    // A flipped byte or a cut-off end is refused before anything is written.
    let mut flipped = snapshot.clone();
    flipped[40] ^= 1;
    assert!(matches!(
        Store::import(&again.0, &mut flipped.as_slice()),
        Err(ImportError::Invalid(_))
    ));
    let cut = &snapshot[..snapshot.len() - 10];
    assert!(matches!(
        Store::import(&again.0, &mut &cut[..]),
        Err(ImportError::Invalid(_))
    ));
}

#[test]
fn markets_and_intervals_do_not_see_each_other() {
    let dir = TempDir::new("isolation");
    let store = Store::open(&dir.0).unwrap();
    let mut batch = WriteBatch::new();
    for interval in [1u64, 2, 300] {
        batch.put_result(
            market(0),
            IntervalIndex(interval),
            result(u8::try_from(interval).unwrap_or(u8::MAX)),
        );
        batch.put_meter_reading(market(0), reading(1, interval, interval));
    }
    batch.put_result(market(1), IntervalIndex(5_000), result(9));
    store.apply(batch).unwrap();
    assert_eq!(
        store.meter_readings(&market(0), IntervalIndex(2)).unwrap(),
        vec![reading(1, 2, 2)]
    );
    assert!(
        store
            .meter_readings(&market(1), IntervalIndex(2))
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .result(&market(1), IntervalIndex(2))
            .unwrap()
            .is_none()
    );
    // Big-endian keys: 300 sorts after 2 although "300" < "2" as text.
    assert_eq!(
        store.last_result_interval(&market(0)).unwrap(),
        Some(IntervalIndex(300))
    );
    assert_eq!(
        store.last_result_interval(&market(1)).unwrap(),
        Some(IntervalIndex(5_000))
    );
    assert_eq!(store.last_result_interval(&market(2)).unwrap(), None);
}

#[test]
fn corrupt_values_are_errors_not_panics() {
    let dir = TempDir::new("corrupt");
    let store = Store::open(&dir.0).unwrap();
    let m = market(0);
    store
        .tree
        .insert(
            key(Kind::Result, &m, IntervalIndex(1)),
            vec![SCHEMA_VERSION, 1, 2, 3],
        )
        .unwrap();
    store
        .tree
        .insert(key(Kind::Settlement, &m, IntervalIndex(1)), vec![99])
        .unwrap();
    let mut offer_key = key(Kind::Offer, &m, IntervalIndex(1));
    offer_key.extend_from_slice(&[0; 32]);
    store
        .tree
        .insert(offer_key, vec![SCHEMA_VERSION, 0, 0])
        .unwrap();
    assert!(matches!(
        store.result(&m, IntervalIndex(1)),
        Err(ReadError::Corrupt { what: "result", .. })
    ));
    let error = store.settlement(&m, IntervalIndex(1)).unwrap_err();
    assert!(
        error.to_string().contains("unknown schema version 99"),
        "{error}"
    );
    assert!(matches!(
        store.offers(&m, IntervalIndex(1)),
        Err(ReadError::Corrupt { what: "offer", .. })
    ));
}

// ---------------------------------------------------------------------------
// Model-based test.

#[derive(Clone, Debug)]
enum Put {
    Offer(usize),
    Result {
        market: u8,
        interval: u64,
        seed: u8,
    },
    Settlement {
        market: u8,
        interval: u64,
        net: i64,
    },
    Reading {
        market: u8,
        interval: u64,
        participant: u8,
        import_wh: u64,
    },
    Meta {
        name: u8,
        value: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
enum Op {
    Apply(Vec<Put>),
    Flush,
    Reopen,
}

fn put_strategy() -> impl Strategy<Value = Put> {
    prop_oneof![
        (0..16usize).prop_map(Put::Offer),
        (0..2u8, 0..4u64, any::<u8>()).prop_map(|(market, interval, seed)| Put::Result {
            market,
            interval,
            seed
        }),
        (0..2u8, 0..4u64, any::<i64>()).prop_map(|(market, interval, net)| Put::Settlement {
            market,
            interval,
            net
        }),
        (0..2u8, 0..4u64, 0..3u8, any::<u64>()).prop_map(
            |(market, interval, participant, import_wh)| Put::Reading {
                market,
                interval,
                participant,
                import_wh
            }
        ),
        (0..4u8, prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(name, value)| Put::Meta { name, value }),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(put_strategy(), 0..6).prop_map(Op::Apply),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

/// What the store should hold: everything applied (reopen is a clean close).
#[derive(Default)]
struct Model {
    offers: BTreeMap<(MarketId, u64, OfferId), SignedOffer>,
    results: BTreeMap<(u8, u64), StoredResult>,
    settlements: BTreeMap<(u8, u64), IntervalSettlement>,
    readings: BTreeMap<(u8, u64, u8), MeterReading>,
    meta: BTreeMap<u8, Vec<u8>>,
}

impl Model {
    fn check(&self, store: &Store) -> Result<(), TestCaseError> {
        for m in 0..2u8 {
            for interval in 0..4u64 {
                let i = IntervalIndex(interval);
                let expected: Vec<SignedOffer> = self
                    .offers
                    .range(
                        (market(m), interval, OfferId([0; 32]))
                            ..=(market(m), interval, OfferId([255; 32])),
                    )
                    .map(|(_, o)| o.clone())
                    .collect();
                prop_assert_eq!(store.offers(&market(m), i).unwrap(), expected);
                prop_assert_eq!(
                    store.result(&market(m), i).unwrap(),
                    self.results.get(&(m, interval)).cloned()
                );
                prop_assert_eq!(
                    store.settlement(&market(m), i).unwrap(),
                    self.settlements.get(&(m, interval)).cloned()
                );
                let readings: Vec<MeterReading> = self
                    .readings
                    .range((m, interval, 0)..=(m, interval, u8::MAX))
                    .map(|(_, r)| *r)
                    .collect();
                prop_assert_eq!(store.meter_readings(&market(m), i).unwrap(), readings);
            }
            let last = self
                .results
                .keys()
                .filter(|(mm, _)| *mm == m)
                .map(|(_, i)| IntervalIndex(*i))
                .max();
            prop_assert_eq!(store.last_result_interval(&market(m)).unwrap(), last);
        }
        for name in 0..4u8 {
            prop_assert_eq!(store.meta(&[name]).unwrap(), self.meta.get(&name).cloned());
        }
        Ok(())
    }
}

#[test]
fn a_closed_store_reopens_at_once_and_a_held_one_is_refused() {
    let dir = TempDir::new("lock");
    // sled lets go of the directory's lock a moment after `close`.
    for _ in 0..30 {
        Store::open(&dir.0).unwrap().close().unwrap();
    }
    let held = Store::open(&dir.0).unwrap();
    let error = Store::open(&dir.0).unwrap_err().to_string();
    assert!(error.contains("lock"), "{error}");
    held.close().unwrap();
    Store::open(&dir.0).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_behaves_like_a_map(ops in prop::collection::vec(op_strategy(), 1..24)) {
        let dir = TempDir::new("model");
        let mut store = Some(Store::open(&dir.0).unwrap());
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Apply(puts) => {
                    let mut batch = WriteBatch::new();
                    for put in puts {
                        match put {
                            Put::Offer(i) => {
                                let o = offers()[i].clone();
                                model.offers.insert((o.offer.market, o.offer.interval.0, o.id), o.clone());
                                batch.put_offer(o.offer.market, o);
                            }
                            Put::Result { market: m, interval, seed } => {
                                model.results.insert((m, interval), result(seed));
                                batch.put_result(market(m), IntervalIndex(interval), result(seed));
                            }
                            Put::Settlement { market: m, interval, net } => {
                                model.settlements.insert((m, interval), settlement(interval, net));
                                batch.put_settlement(market(m), settlement(interval, net));
                            }
                            Put::Reading { market: m, interval, participant, import_wh } => {
                                let r = reading(participant, interval, import_wh);
                                model.readings.insert((m, interval, participant), r);
                                batch.put_meter_reading(market(m), r);
                            }
                            Put::Meta { name, value } => {
                                batch.put_meta(&[name], &value);
                                model.meta.insert(name, value);
                            }
                        }
                    }
                    store.as_ref().unwrap().apply(batch).unwrap();
                }
                Op::Flush => {
                    store.as_ref().unwrap().flush().unwrap();
                }
                Op::Reopen => {
                    store.take().unwrap().close().unwrap();
                    store = Some(Store::open(&dir.0).unwrap());
                }
            }
            model.check(store.as_ref().unwrap())?;
        }
    }
}

#[test]
fn a_finality_proof_names_its_set_and_a_missing_offer_is_corruption() {
    use dharti_protocol::node::Attestation;
    let dir = TempDir::new("proof");
    let store = Store::open(&dir.0).unwrap();
    let m = market(0);
    let interval = IntervalIndex(0);
    let in_set: Vec<SignedOffer> = offers()
        .iter()
        .filter(|o| o.offer.market == m && o.offer.interval == interval)
        .cloned()
        .collect();
    assert!(in_set.len() >= 2);
    let key = SigningKey::from_bytes(&[9; 32]);
    let attestation = Attestation {
        chain_id: 73_799,
        market: m,
        interval,
        set_root: [3; 32],
        result_root: [4; 32],
        attester: ParticipantId(key.verifying_key().to_bytes()),
    }
    .sign(&key);
    // The set is all but the last stored offer (an own offer outside it).
    let proof = FinalityProof {
        set_root: [3; 32],
        offer_ids: in_set[..in_set.len() - 1].iter().map(|o| o.id).collect(),
        attestations: vec![attestation],
    };
    assert_eq!(store.final_set(&m, interval).unwrap(), None);
    let mut batch = WriteBatch::new();
    for offer in &in_set {
        batch.put_offer(m, offer.clone());
    }
    batch.put_proof(m, interval, proof.clone());
    store.apply(batch).unwrap();
    let (read, set) = store.final_set(&m, interval).unwrap().unwrap();
    assert_eq!(read, proof);
    assert_eq!(set, in_set[..in_set.len() - 1]);
    assert!(read.attestations[0].verify().is_ok());
    // A proof naming an offer the store lacks is reported, not papered over.
    let mut bad = proof;
    bad.offer_ids.push(OfferId([0xee; 32]));
    let mut batch = WriteBatch::new();
    batch.put_proof(m, interval, bad);
    store.apply(batch).unwrap();
    assert!(matches!(
        store.final_set(&m, interval),
        Err(ReadError::Corrupt { .. })
    ));
}
