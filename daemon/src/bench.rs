//! `dharti market bench`: clearing and ingestion throughput, each against a
//! baseline measured in the same run on the same data, so the ratios mean
//! something on any machine.
//!
//! - `clear_ms`: pay-as-clear on `offers` generated offers, result hash
//!   included. Baseline `sort_baseline_ms`: collecting the same offers'
//!   `(price, id)` keys into a vector and `sort_unstable` on it, the least
//!   any price-priority auction does.
//! - `ingest_offers_per_s`: decode + validate + verify signed offers on one
//!   core (signatures checked in batches). Baseline `raw_verify_per_s`: plain
//!   ed25519-dalek `verify` of the same messages one by one, keys pre-parsed.
//!   Ingestion is measured on at most `INGEST_SAMPLE` offers: the rate per
//!   offer does not depend on the book size, and signing a million offers
//!   would dominate the run.
//!
//! The generator is a seeded SplitMix64, so a seed names a book.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use dharti_protocol::clearing::{Mechanism, Order, clear};
use dharti_protocol::offer::{Offer, SignedOffer, signing_message};
use dharti_protocol::tariff::{Tariff, TariffSchedule};
use dharti_protocol::types::{
    IntervalClock, IntervalIndex, MarketId, OfferId, ParticipantId, Side,
};
use dharti_protocol::validation::{Arrival, MarketRules, OfferPool, Validation};
use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use serde::Serialize;

/// Most signed offers the ingestion measurement uses.
const INGEST_SAMPLE: usize = 20_000;
/// Distinct participants signing the ingestion sample (a large neighbourhood).
const INGEST_PARTICIPANTS: usize = 1_000;
/// Offers verified per batch: large enough for batch verification to reach
/// most of its speed-up, small enough to be one gossip burst.
const INGEST_BATCH: usize = 256;

#[derive(Debug, Serialize)]
pub struct Report {
    offers: u32,
    seed: u64,
    clear_ms: f64,
    sort_baseline_ms: f64,
    clear_to_sort_ratio: f64,
    volume_wh: u64,
    trades: usize,
    ingest_sample: usize,
    ingest_offers_per_s: f64,
    raw_verify_per_s: f64,
    ingest_to_raw_ratio: f64,
}

/// SplitMix64: tiny, seeded, good enough to generate books.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        out
    }
}

fn tariff() -> Tariff {
    Tariff {
        feed_in_micro_per_kwh: 80_000,
        retail_micro_per_kwh: 300_000,
        grid_fee_micro_per_kwh: 20_000,
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn time<T>(repeat: u32, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..repeat.max(1))
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(f());
                start.elapsed()
            })
            .collect(),
    )
}

pub fn run(offers: u32, seed: u64, repeat: u32) -> anyhow::Result<Report> {
    ensure!(
        offers >= 2,
        "--offers must be at least 2 so that both sides exist"
    );
    let mut rng = SplitMix64(seed);
    let t = tariff();
    let band = t.retail_micro_per_kwh - t.feed_in_micro_per_kwh + 1;
    let book: Vec<Order<OfferId, ParticipantId>> = (0..offers)
        .map(|_| Order {
            id: OfferId(rng.bytes32()),
            participant: ParticipantId(rng.bytes32()),
            side: if rng.below(2) == 0 {
                Side::Bid
            } else {
                Side::Ask
            },
            energy_wh: 100 + rng.below(4_900),
            price_micro_per_kwh: t.feed_in_micro_per_kwh + rng.below(band),
        })
        .collect();

    let result = clear(Mechanism::default(), &t, &book).context("clearing the generated book")?;
    // Clearing and its baseline alternate, so that whatever else the machine
    // does falls on both alike.
    let (mut clear_samples, mut sort_samples) = (Vec::new(), Vec::new());
    for _ in 0..repeat.max(1) {
        clear_samples.push(time(1, || {
            clear(Mechanism::default(), &t, &book).map(|r| r.result_hash)
        }));
        // Baseline: take the offers' (price, id) keys and sort them.
        sort_samples.push(time(1, || {
            let mut keys: Vec<(u64, OfferId)> =
                book.iter().map(|o| (o.price_micro_per_kwh, o.id)).collect();
            keys.sort_unstable();
            keys
        }));
    }
    let (clear_time, sort_time) = (median(clear_samples), median(sort_samples));

    let (ingest_per_s, raw_per_s, sample) = ingest(&mut rng, offers as usize, repeat)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Report {
        offers,
        seed,
        clear_ms: ms(clear_time),
        sort_baseline_ms: ms(sort_time),
        clear_to_sort_ratio: clear_time.as_secs_f64() / sort_time.as_secs_f64(),
        volume_wh: result.volume_wh,
        trades: result.trades.len(),
        ingest_sample: sample,
        ingest_offers_per_s: ingest_per_s,
        raw_verify_per_s: raw_per_s,
        ingest_to_raw_ratio: ingest_per_s / raw_per_s,
    })
}

/// Returns (ingested offers per second, raw verifications per second, sample size).
fn ingest(rng: &mut SplitMix64, offers: usize, repeat: u32) -> anyhow::Result<(f64, f64, usize)> {
    let sample = offers.min(INGEST_SAMPLE);
    let clock = IntervalClock::default();
    let now_s = 1_750_000_000;
    let first_open = clock.next_open(now_s);
    let rules = MarketRules {
        chain_id: dharti_protocol::types::CHAIN_ID_VOLTA,
        market_id: MarketId::from_name("bench"),
        clock,
        max_intervals_ahead: 96,
        max_offer_energy_wh: 100_000,
        max_offers_per_participant: 16,
        tariffs: TariffSchedule::flat(tariff()),
        mechanism: Mechanism::default(),
    };
    let signers: Vec<SigningKey> = (0..INGEST_PARTICIPANTS.min(sample))
        .map(|_| SigningKey::from_bytes(&rng.bytes32()))
        .collect();
    // Offer i: participant i mod P, then a fresh (interval, side) slot each time.
    let wire: Vec<[u8; dharti_protocol::offer::OFFER_WIRE_LEN]> = (0..sample)
        .map(|i| {
            let key = &signers[i % signers.len()];
            let round = (i / signers.len()) as u64;
            let offer = Offer {
                chain_id: rules.chain_id,
                market: rules.market_id,
                interval: IntervalIndex(first_open.0 + round / 2),
                side: if round.is_multiple_of(2) {
                    Side::Bid
                } else {
                    Side::Ask
                },
                energy_wh: 100 + rng.below(4_900),
                price_micro_per_kwh: 80_000 + rng.below(220_001),
                participant: ParticipantId(key.verifying_key().to_bytes()),
                sequence: 1,
            };
            offer.sign(key).encode()
        })
        .collect();

    let mut accepted = 0;
    let ingest_time = time(repeat, || {
        let mut pool = OfferPool::new();
        accepted = 0;
        for chunk in wire.chunks(INGEST_BATCH) {
            let decoded: Vec<SignedOffer> = chunk
                .iter()
                .filter_map(|w| SignedOffer::decode(w).ok())
                .collect();
            for verdict in pool.receive_batch(&rules, decoded, Arrival::Gossip { now_s }) {
                accepted += usize::from(matches!(verdict, Validation::Accept(_)));
            }
        }
        pool
    });
    ensure!(
        accepted == sample,
        "only {accepted} of {sample} generated offers were accepted"
    );

    // The baseline: the same messages, keys parsed beforehand, one by one.
    let prepared: Vec<(VerifyingKey, [u8; 123], Signature)> = wire
        .iter()
        .map(|w| {
            let key = VerifyingKey::from_bytes(&w[67..99].try_into().expect("32 bytes"))
                .expect("valid key");
            let body = w[..107].try_into().expect("body");
            let signature = Signature::from_bytes(&w[107..].try_into().expect("64 bytes"));
            (key, signing_message(&body), signature)
        })
        .collect();
    let raw_time = time(repeat, || {
        prepared
            .iter()
            .filter(|(key, message, signature)| key.verify(message, signature).is_ok())
            .count()
    });
    let per_s = |d: Duration| sample as f64 / d.as_secs_f64();
    Ok((per_s(ingest_time), per_s(raw_time), sample))
}
