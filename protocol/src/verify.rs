//! Signature checking behind one interface, so that a shell can choose how:
//! the daemon checks every signature with ed25519 (batched where it can);
//! the simulator, which runs a thousand nodes that all receive the same
//! messages, shares one memoising verifier among them, so each distinct
//! signature is checked once, for real, instead of once per simulated node.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

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

    /// The answer for a signed message in an allocation this verifier was
    /// told about with [`SignatureVerifier::remember`]. The simulator hands
    /// one `Arc` to every node it delivers a message to, so after the first
    /// node one pointer lookup replaces encoding, hashing and comparing the
    /// message. A daemon's messages are each decoded once: it keeps nothing.
    fn recall(&self, _message: Allocation) -> Option<bool> {
        None
    }

    /// Records the answer for the message in this allocation. Implementations
    /// that remember must keep `message` alive, so that its address cannot be
    /// reused by another message while it is remembered. A node also records
    /// each message it has just signed with its own key, as valid: that is
    /// ed25519's answer for it.
    fn remember(&self, _message: SharedMessage, _valid: bool) {}
}

/// A signed message in a shared allocation, as [`SignatureVerifier::remember`]
/// keeps it. An `Arc`'s contents cannot change while it is shared, so the
/// allocation names the message as long as someone holds it.
pub type SharedMessage = Arc<dyn Any + Send + Sync>;

/// The address of a shared allocation, as [`SignatureVerifier::recall`]
/// asks for it: made only from an `Arc` the caller holds, so that for as
/// long as the caller holds it, no other message can be at that address.
/// Asking by address, not by a share of the `Arc`, spares an atomic
/// increment and decrement of the message's counter per arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Allocation(usize);

impl Allocation {
    /// The allocation `message` points into (its data, whatever the type).
    pub fn of<T: ?Sized>(message: &Arc<T>) -> Allocation {
        Allocation(Arc::as_ptr(message).cast::<()>() as usize)
    }

    /// The address, for hashing: shared allocations are at least 8-byte
    /// aligned, so its low three bits are zero.
    pub fn address(self) -> usize {
        self.0
    }
}

/// Checks the signed message in `message` with `check`, unless `verifier`
/// recalls this allocation; remembers a definite answer (valid or invalid,
/// not a malformed key) for the next node that receives the same allocation.
pub fn check_shared<T: Any + Send + Sync>(
    verifier: &dyn SignatureVerifier,
    message: &Arc<T>,
    check: impl FnOnce() -> Result<(), SignatureError>,
) -> Result<(), SignatureError> {
    if let Some(valid) = verifier.recall(Allocation::of(message)) {
        return if valid {
            Ok(())
        } else {
            Err(SignatureError::Invalid)
        };
    }
    let result = check();
    match result {
        Ok(()) => verifier.remember(message.clone(), true),
        Err(SignatureError::Invalid) => verifier.remember(message.clone(), false),
        Err(_) => {}
    }
    result
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
