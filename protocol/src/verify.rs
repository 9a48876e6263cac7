//! Signature checking behind one interface, so that a shell can choose how:
//! the daemon checks every signature with ed25519 (batched where it can);
//! the simulator, which runs a thousand nodes that all receive the same
//! messages, shares one memoising verifier among them, so each distinct
//! signature is checked once, for real, instead of once per simulated node.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use crate::offer::{SignatureError, participant_key};
use crate::types::ParticipantId;

/// One signature to check: `signature` by `key` over `message`.
#[derive(Clone, Copy, Debug)]
pub struct SignatureItem<'a> {
    pub key: &'a VerifyingKey,
    pub message: &'a [u8],
    pub signature: &'a [u8; 64],
}

/// Checks signatures. Implementations must give exactly ed25519's answer.
pub trait SignatureVerifier: fmt::Debug + Send + Sync {
    /// One answer per item, in order.
    fn verify(&self, items: &[SignatureItem<'_>]) -> Vec<bool>;

    /// The parsed key of `participant`. Parsing (point decompression) costs
    /// about a tenth of a signature check, so implementations cache it; the
    /// verifier, not each offer pool, holds the cache so that the simulator's
    /// nodes share one.
    fn key(&self, participant: &ParticipantId) -> Result<VerifyingKey, SignatureError>;
}

/// Bound on [`KeyCache`]; past it the cache is cleared. It must not grow with
/// hostile traffic, and a market has far fewer members.
const MAX_CACHED_KEYS: usize = 65_536;

/// Parsed participant keys, bounded.
#[derive(Debug, Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<ParticipantId, VerifyingKey>>,
}

impl KeyCache {
    pub fn get(&self, participant: &ParticipantId) -> Result<VerifyingKey, SignatureError> {
        let mut keys = self.keys.lock().expect("no panics while holding the lock");
        if let Some(key) = keys.get(participant) {
            return Ok(*key);
        }
        let key = participant_key(participant)?;
        if keys.len() >= MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(*participant, key);
        Ok(key)
    }
}

/// ed25519-dalek: one by one for a single item, batch verification (about
/// twice as fast per signature) for several, and one by one again if a batch
/// fails, so that one bad signature cannot fail good ones.
#[derive(Debug, Default)]
pub struct Ed25519Verifier {
    keys: KeyCache,
}

fn verify_one(item: &SignatureItem<'_>) -> bool {
    item.key
        .verify(item.message, &Signature::from_bytes(item.signature))
        .is_ok()
}

impl SignatureVerifier for Ed25519Verifier {
    fn verify(&self, items: &[SignatureItem<'_>]) -> Vec<bool> {
        if items.len() <= 1 {
            return items.iter().map(verify_one).collect();
        }
        let messages: Vec<&[u8]> = items.iter().map(|i| i.message).collect();
        let signatures: Vec<Signature> = items
            .iter()
            .map(|i| Signature::from_bytes(i.signature))
            .collect();
        let keys: Vec<VerifyingKey> = items.iter().map(|i| *i.key).collect();
        if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
            return vec![true; items.len()];
        }
        items.iter().map(verify_one).collect()
    }

    fn key(&self, participant: &ParticipantId) -> Result<VerifyingKey, SignatureError> {
        self.keys.get(participant)
    }
}
