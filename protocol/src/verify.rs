//! Signature checking behind one interface, so that a shell can choose how:
//! the daemon checks every signature with ed25519 (batched where it can);
//! the simulator, which runs a thousand nodes that all receive the same
//! messages, shares one memoising verifier among them, so each distinct
//! signature is checked once, for real, instead of once per simulated node.

use std::fmt;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};

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
}

/// ed25519-dalek: one by one for a single item, batch verification (about
/// twice as fast per signature) for several, and one by one again if a batch
/// fails, so that one bad signature cannot fail good ones.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ed25519Verifier;

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
}
