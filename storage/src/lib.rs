//! Durable history of a Dharti node: offers, interval results, settlements,
//! meter readings and small key-value metadata, behind a narrow API.
//!
//! The engine is sled 0.34.7 and it is private to this crate: no sled type
//! appears in the API, so the engine can change without touching callers.
//!
//! Writes are collected in a [`WriteBatch`], one per interval, and applied
//! atomically with [`Store::apply`]: after a crash either the whole batch is
//! there or none of it. Nothing is durable until [`Store::flush`] returns;
//! sled's background flusher (every 500 ms by default) is switched off so
//! that an SD card is written once per interval, when the node decides, and
//! not twice a second. Only data whose flush returned counts as acknowledged.
//!
//! Layout: one tree; every key starts with a record kind byte, then the
//! market id (32 bytes) and the interval index (u64 big-endian, so range
//! scans run in interval order), then a kind-specific suffix:
//!
//! | kind | key | value |
//! |---|---|---|
//! | 1 offer | kind, market, interval, offer id (32) | schema byte, 171 wire bytes |
//! | 2 result | kind, market, interval | schema byte, bincode `ClearingResult` |
//! | 3 settlement | kind, market, interval | schema byte, bincode `IntervalSettlement` |
//! | 4 meter reading | kind, market, interval, participant (32) | schema byte, bincode `MeterReading` |
//! | 5 metadata | kind, key bytes | schema byte, value bytes |
//! | 6 finality proof | kind, market, interval | schema byte, bincode `FinalityProof` |
//!
//! Values start with a schema byte ([`SCHEMA_VERSION`]) so the format can
//! evolve; a value that does not decode is reported as corrupt, never a panic.

#![forbid(unsafe_code)]

use std::fmt;
use std::path::Path;

use dharti_protocol::clearing::ClearingResult;
use dharti_protocol::hash::Hash32;
use dharti_protocol::node::SignedAttestation;
use dharti_protocol::offer::SignedOffer;
use dharti_protocol::settlement::{IntervalSettlement, MeterReading};
use dharti_protocol::types::{IntervalIndex, MarketId, OfferId, ParticipantId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The result of one interval as stored.
pub type StoredResult = ClearingResult<OfferId, ParticipantId>;

/// What makes a stored result final, kept so that the node can hand it to
/// a peer that missed the interval: the quorum's signed attestations, and
/// which stored offers form the final set (the node's own offers that did
/// not make it into the set are stored too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalityProof {
    pub set_root: Hash32,
    /// The final set's offer ids, in set order.
    pub offer_ids: Vec<OfferId>,
    pub attestations: Vec<SignedAttestation>,
}

/// First byte of every stored value. Bump it when an encoding changes, and
/// teach the reader the old one.
pub const SCHEMA_VERSION: u8 = 1;

/// sled's page cache. Small on purpose: a daemon should stay within 25 MB
/// resident (the mesh benchmark measures it), the working set (the open
/// intervals, the last final ones) is a few hundred kilobytes, and reads
/// (the API, peers catching up) are rare.
const CACHE_CAPACITY_BYTES: u64 = 1024 * 1024;

/// The one bincode configuration used for every value: fixed-width
/// little-endian integers, so a value's layout never depends on its numbers.
const BINCODE: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
> = bincode::config::standard()
    .with_fixed_int_encoding()
    .with_little_endian();

const TREE: &str = "dharti-v1";

/// First bytes of a snapshot ([`Store::export`]).
pub const SNAPSHOT_MAGIC: &[u8; 16] = b"DHARTI-SNAPSHOT1";

/// One stored key and its value, as a snapshot holds them.
type Record<'a> = (&'a [u8], &'a [u8]);

/// The records of a snapshot, after checking its magic, framing and digest.
fn parse_snapshot(bytes: &[u8]) -> Result<Vec<Record<'_>>, ImportError> {
    let body_len = bytes
        .len()
        .checked_sub(32)
        .ok_or(ImportError::Invalid("too short"))?;
    let (body, digest) = bytes.split_at(body_len);
    if dharti_protocol::hash::sha256(body) != digest {
        return Err(ImportError::Invalid(
            "its digest does not match (damaged or cut short)",
        ));
    }
    let mut rest = body
        .strip_prefix(&SNAPSHOT_MAGIC[..])
        .ok_or(ImportError::Invalid(
            "it does not start with DHARTI-SNAPSHOT1",
        ))?;
    let mut records = Vec::new();
    while let Some(key) = snapshot_part(&mut rest)? {
        let value =
            snapshot_part(&mut rest)?.ok_or(ImportError::Invalid("a key without a value"))?;
        records.push((key, value));
    }
    if !rest.is_empty() {
        return Err(ImportError::Invalid("bytes after the end marker"));
    }
    Ok(records)
}

/// The next length-prefixed part of a snapshot; `None` at the end marker.
fn snapshot_part<'a>(rest: &mut &'a [u8]) -> Result<Option<&'a [u8]>, ImportError> {
    let (len, tail) = rest
        .split_first_chunk::<4>()
        .ok_or(ImportError::Invalid("a record is cut short"))?;
    let len = u32::from_le_bytes(*len);
    if len == u32::MAX {
        *rest = tail;
        return Ok(None);
    }
    let len = len as usize;
    if tail.len() < len {
        return Err(ImportError::Invalid("a record is cut short"));
    }
    let (part, tail) = tail.split_at(len);
    *rest = tail;
    Ok(Some(part))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Kind {
    Offer = 1,
    Result = 2,
    Settlement = 3,
    MeterReading = 4,
    Meta = 5,
    Proof = 6,
}

/// An error of the storage engine itself (I/O, corruption it detected).
#[derive(Debug)]
pub struct EngineError(sled::Error);

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage engine: {}", self.0)
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the store at {path}")]
    Engine {
        path: String,
        #[source]
        source: EngineError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: bincode::error::EncodeError,
    },
    #[error("cannot apply the write batch")]
    Engine(#[source] EngineError),
}

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("cannot flush the store to disk")]
    Engine(#[source] EngineError),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the store")]
    Engine(#[source] EngineError),
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt { what: &'static str, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot read the store")]
    Engine(#[source] EngineError),
    #[error("cannot write the snapshot")]
    Io(#[source] std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("the store to restore into is not empty; restore into a new directory")]
    NotEmpty,
    #[error("cannot read the snapshot")]
    Io(#[source] std::io::Error),
    #[error("the snapshot is not valid: {0}")]
    Invalid(&'static str),
    #[error("cannot write the restored store")]
    Engine(#[source] EngineError),
}

fn engine_read(error: sled::Error) -> ReadError {
    ReadError::Engine(EngineError(error))
}

/// Key prefix for a kind, market and interval.
fn key(kind: Kind, market: &MarketId, interval: IntervalIndex) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + 32 + 8 + 32);
    key.push(kind as u8);
    key.extend_from_slice(&market.0);
    key.extend_from_slice(&interval.0.to_be_bytes());
    key
}

fn market_prefix(kind: Kind, market: &MarketId) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + 32);
    key.push(kind as u8);
    key.extend_from_slice(&market.0);
    key
}

fn meta_key(name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(Kind::Meta as u8);
    key.extend_from_slice(name);
    key
}

fn encode(what: &'static str, value: &impl Serialize) -> Result<Vec<u8>, WriteError> {
    let mut out = vec![SCHEMA_VERSION];
    let body = bincode::serde::encode_to_vec(value, BINCODE)
        .map_err(|source| WriteError::Encode { what, source })?;
    out.extend_from_slice(&body);
    Ok(out)
}

fn body<'a>(what: &'static str, value: &'a [u8]) -> Result<&'a [u8], ReadError> {
    match value.split_first() {
        Some((&SCHEMA_VERSION, body)) => Ok(body),
        Some((version, _)) => Err(ReadError::Corrupt {
            what,
            reason: format!("unknown schema version {version}"),
        }),
        None => Err(ReadError::Corrupt {
            what,
            reason: "empty value".into(),
        }),
    }
}

fn decode<T: DeserializeOwned>(what: &'static str, value: &[u8]) -> Result<T, ReadError> {
    let (decoded, used) =
        bincode::serde::decode_from_slice(body(what, value)?, BINCODE).map_err(|e| {
            ReadError::Corrupt {
                what,
                reason: e.to_string(),
            }
        })?;
    if used + 1 != value.len() {
        return Err(ReadError::Corrupt {
            what,
            reason: "trailing bytes".into(),
        });
    }
    Ok(decoded)
}

fn decode_offer(value: &[u8]) -> Result<SignedOffer, ReadError> {
    SignedOffer::decode(body("offer", value)?).map_err(|e| ReadError::Corrupt {
        what: "offer",
        reason: e.to_string(),
    })
}

/// Writes for one interval (or any set of writes that belong together),
/// applied atomically by [`Store::apply`].
#[derive(Debug, Default)]
pub struct WriteBatch {
    offers: Vec<(MarketId, SignedOffer)>,
    results: Vec<(MarketId, IntervalIndex, StoredResult)>,
    settlements: Vec<(MarketId, IntervalSettlement)>,
    readings: Vec<(MarketId, MeterReading)>,
    meta: Vec<(Vec<u8>, Vec<u8>)>,
    proofs: Vec<(MarketId, IntervalIndex, FinalityProof)>,
}

impl WriteBatch {
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Stores a signed offer under its market, interval and id.
    pub fn put_offer(&mut self, market: MarketId, offer: SignedOffer) {
        self.offers.push((market, offer));
    }

    /// Stores the final result of an interval (replacing any earlier one).
    pub fn put_result(&mut self, market: MarketId, interval: IntervalIndex, result: StoredResult) {
        self.results.push((market, interval, result));
    }

    /// Stores what made an interval final (replacing any earlier proof).
    pub fn put_proof(&mut self, market: MarketId, interval: IntervalIndex, proof: FinalityProof) {
        self.proofs.push((market, interval, proof));
    }

    /// Stores an interval's settlement (replacing any earlier one).
    pub fn put_settlement(&mut self, market: MarketId, settlement: IntervalSettlement) {
        self.settlements.push((market, settlement));
    }

    /// Stores a meter reading under its interval and participant.
    pub fn put_meter_reading(&mut self, market: MarketId, reading: MeterReading) {
        self.readings.push((market, reading));
    }

    /// Stores a small metadata value (config fingerprints, cursors).
    pub fn put_meta(&mut self, name: &[u8], value: &[u8]) {
        self.meta.push((name.to_vec(), value.to_vec()));
    }

    pub fn is_empty(&self) -> bool {
        self.offers.is_empty()
            && self.results.is_empty()
            && self.settlements.is_empty()
            && self.readings.is_empty()
            && self.meta.is_empty()
            && self.proofs.is_empty()
    }

    fn into_sled(self) -> Result<sled::Batch, WriteError> {
        let mut batch = sled::Batch::default();
        for (market, offer) in self.offers {
            let mut k = key(Kind::Offer, &market, offer.offer.interval);
            k.extend_from_slice(&offer.id.0);
            let mut value = vec![SCHEMA_VERSION];
            value.extend_from_slice(&offer.encode());
            batch.insert(k, value);
        }
        for (market, interval, result) in self.results {
            batch.insert(
                key(Kind::Result, &market, interval),
                encode("result", &result)?,
            );
        }
        for (market, interval, proof) in self.proofs {
            batch.insert(
                key(Kind::Proof, &market, interval),
                encode("finality proof", &proof)?,
            );
        }
        for (market, settlement) in self.settlements {
            let k = key(Kind::Settlement, &market, settlement.interval);
            batch.insert(k, encode("settlement", &settlement)?);
        }
        for (market, reading) in self.readings {
            let mut k = key(Kind::MeterReading, &market, reading.interval);
            k.extend_from_slice(&reading.participant.0);
            batch.insert(k, encode("meter reading", &reading)?);
        }
        for (name, value) in self.meta {
            let mut stored = vec![SCHEMA_VERSION];
            stored.extend_from_slice(&value);
            batch.insert(meta_key(&name), stored);
        }
        Ok(batch)
    }
}

/// How long [`Store::open`] waits for the directory's lock when it is held
/// (a store of it closed a moment ago), before reporting it as in use...
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// ...trying again this often.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// A node's durable history. Flushes on drop; call [`Store::close`] to see
/// whether that last flush worked.
#[derive(Debug)]
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
}

impl Store {
    /// Opens (or creates) the store in directory `path`. If another store
    /// holds the directory, it waits up to two seconds for it to close, then
    /// fails (the error names the lock).
    pub fn open(path: impl AsRef<Path>) -> Result<Store, OpenError> {
        let path = path.as_ref();
        let engine = |source| OpenError::Engine {
            path: path.display().to_string(),
            source: EngineError(source),
        };
        let started = std::time::Instant::now();
        let db = loop {
            let opened = sled::Config::new()
                .path(path)
                .cache_capacity(CACHE_CAPACITY_BYTES)
                .flush_every_ms(None)
                .open();
            match opened {
                // A store of this directory closed a moment ago may still
                // hold sled's file lock: sled releases it when the last of
                // its background references drops, after `close` returned.
                Err(sled::Error::Io(e))
                    if e.to_string().starts_with("could not acquire lock")
                        && started.elapsed() < LOCK_WAIT =>
                {
                    std::thread::sleep(LOCK_RETRY);
                }
                opened => break opened.map_err(engine)?,
            }
        };
        let tree = db.open_tree(TREE).map_err(engine)?;
        Ok(Store { db, tree })
    }

    /// Applies `batch` atomically. Not yet durable: see [`Store::flush`].
    pub fn apply(&self, batch: WriteBatch) -> Result<(), WriteError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.tree
            .apply_batch(batch.into_sled()?)
            .map_err(|e| WriteError::Engine(EngineError(e)))
    }

    /// Makes everything applied so far durable. Returns the bytes written.
    pub fn flush(&self) -> Result<usize, FlushError> {
        self.db
            .flush()
            .map_err(|e| FlushError::Engine(EngineError(e)))
    }

    /// Writes every record to `out` as a snapshot (format: [`SNAPSHOT_MAGIC`],
    /// then per record a u32 key length, the key, a u32 value length, the
    /// value (lengths little-endian), then `u32::MAX` and the SHA-256 of all
    /// bytes before it). It is consistent when nothing writes meanwhile: the
    /// daemon exports from its market task, the store's only writer.
    /// Returns the number of records.
    pub fn export(&self, out: &mut impl std::io::Write) -> Result<u64, ExportError> {
        let mut hasher = dharti_protocol::hash::Hasher::new(b"");
        let mut write = |bytes: &[u8]| -> Result<(), ExportError> {
            hasher.write(bytes);
            out.write_all(bytes).map_err(ExportError::Io)
        };
        write(SNAPSHOT_MAGIC)?;
        let mut records = 0u64;
        for entry in self.tree.iter() {
            let (key, value) = entry.map_err(|e| ExportError::Engine(EngineError(e)))?;
            for part in [&key[..], &value[..]] {
                let len = u32::try_from(part.len()).expect("sled keys and values are small");
                write(&len.to_le_bytes())?;
                write(part)?;
            }
            records += 1;
        }
        write(&u32::MAX.to_le_bytes())?;
        let digest = hasher.finish();
        out.write_all(&digest).map_err(ExportError::Io)?;
        out.flush().map_err(ExportError::Io)?;
        Ok(records)
    }

    /// Opens a new store at `path` and fills it from a snapshot made by
    /// [`Store::export`], checked in full (format and digest) before
    /// anything is written; flushed before it returns.
    pub fn import(
        path: impl AsRef<Path>,
        input: &mut impl std::io::Read,
    ) -> Result<Store, ImportError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes).map_err(ImportError::Io)?;
        let records = parse_snapshot(&bytes)?;
        let store = Store::open(path)?;
        if !store.tree.is_empty() {
            return Err(ImportError::NotEmpty);
        }
        let mut batch = sled::Batch::default();
        for (key, value) in records {
            batch.insert(key, value);
        }
        store
            .tree
            .apply_batch(batch)
            .map_err(|e| ImportError::Engine(EngineError(e)))?;
        store
            .flush()
            .map_err(|FlushError::Engine(e)| ImportError::Engine(e))?;
        Ok(store)
    }

    /// Flushes and closes the store.
    pub fn close(self) -> Result<(), FlushError> {
        self.flush().map(|_| ())
    }

    /// The offers stored for `interval`, by offer id.
    pub fn offers(
        &self,
        market: &MarketId,
        interval: IntervalIndex,
    ) -> Result<Vec<SignedOffer>, ReadError> {
        self.tree
            .scan_prefix(key(Kind::Offer, market, interval))
            .map(|entry| decode_offer(&entry.map_err(engine_read)?.1))
            .collect()
    }

    /// One stored offer.
    pub fn offer(
        &self,
        market: &MarketId,
        interval: IntervalIndex,
        id: &OfferId,
    ) -> Result<Option<SignedOffer>, ReadError> {
        let mut k = key(Kind::Offer, market, interval);
        k.extend_from_slice(&id.0);
        self.tree
            .get(k)
            .map_err(engine_read)?
            .map(|v| decode_offer(&v))
            .transpose()
    }

    /// The final result of `interval`, if stored.
    pub fn result(
        &self,
        market: &MarketId,
        interval: IntervalIndex,
    ) -> Result<Option<StoredResult>, ReadError> {
        self.get(Kind::Result, "result", market, interval)
    }

    /// What made `interval` final, if stored.
    pub fn proof(
        &self,
        market: &MarketId,
        interval: IntervalIndex,
    ) -> Result<Option<FinalityProof>, ReadError> {
        self.get(Kind::Proof, "finality proof", market, interval)
    }

    /// [`Store::proof`] with the final set's offers, in set order. An offer
    /// the proof names but the store lacks is reported as corruption.
    pub fn final_set(
        &self,
        market: &MarketId,
        interval: IntervalIndex,
    ) -> Result<Option<(FinalityProof, Vec<SignedOffer>)>, ReadError> {
        let Some(proof) = self.proof(market, interval)? else {
            return Ok(None);
        };
        let offers = proof
            .offer_ids
            .iter()
            .map(|id| {
                self.offer(market, interval, id)?
                    .ok_or_else(|| ReadError::Corrupt {
                        what: "finality proof",
                        reason: format!("offer {id} of the final set is not stored"),
                    })
            })
            .collect::<Result<Vec<SignedOffer>, ReadError>>()?;
        Ok(Some((proof, offers)))
    }

    /// The latest interval with a stored result: where catching up starts.
    pub fn last_result_interval(
        &self,
        market: &MarketId,
    ) -> Result<Option<IntervalIndex>, ReadError> {
        let Some(entry) = self
            .tree
            .scan_prefix(market_prefix(Kind::Result, market))
            .next_back()
        else {
            return Ok(None);
        };
        let (k, _) = entry.map_err(engine_read)?;
        let bytes: [u8; 8] = k
            .get(33..41)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ReadError::Corrupt {
                what: "result key",
                reason: format!("{} bytes", k.len()),
            })?;
        Ok(Some(IntervalIndex(u64::from_be_bytes(bytes))))
    }

    /// The settlement of `interval`, if stored.
    pub fn settlement(
        &self,
        market: &MarketId,
        interval: IntervalIndex,
    ) -> Result<Option<IntervalSettlement>, ReadError> {
        self.get(Kind::Settlement, "settlement", market, interval)
    }

    /// The one bincode value of `kind` stored for `interval`, if any.
    fn get<T: DeserializeOwned>(
        &self,
        kind: Kind,
        what: &'static str,
        market: &MarketId,
        interval: IntervalIndex,
    ) -> Result<Option<T>, ReadError> {
        let value = self
            .tree
            .get(key(kind, market, interval))
            .map_err(engine_read)?;
        value.map(|v| decode(what, &v)).transpose()
    }

    /// The meter readings stored for `interval`, by participant.
    pub fn meter_readings(
        &self,
        market: &MarketId,
        interval: IntervalIndex,
    ) -> Result<Vec<MeterReading>, ReadError> {
        self.tree
            .scan_prefix(key(Kind::MeterReading, market, interval))
            .map(|entry| decode("meter reading", &entry.map_err(engine_read)?.1))
            .collect()
    }

    /// A metadata value.
    pub fn meta(&self, name: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        let value = self.tree.get(meta_key(name)).map_err(engine_read)?;
        value
            .map(|v| body("metadata", &v).map(<[u8]>::to_vec))
            .transpose()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort; `close` reports the error to callers that care.
        let _ = self.db.flush();
    }
}

#[cfg(test)]
mod tests;
