//! A signature verifier shared by all simulated nodes: every distinct
//! (key, message, signature) is checked once with ed25519 and remembered, so
//! a thousand nodes receiving the same offer cost one check, not a thousand.
//! The answer is still ed25519's; bad signatures are still refused.

use std::collections::HashMap;
use std::sync::Mutex;

use dharti_protocol::hash::{Hash32, Hasher};
use dharti_protocol::verify::{Ed25519Verifier, SignatureItem, SignatureVerifier};

#[derive(Debug, Default)]
pub(crate) struct MemoVerifier {
    known: Mutex<HashMap<Hash32, bool>>,
}

fn key_of(item: &SignatureItem<'_>) -> Hash32 {
    let mut h = Hasher::new(b"sim-signature");
    h.write(item.key.as_bytes());
    h.write(item.signature);
    h.write(item.message);
    h.finish()
}

impl SignatureVerifier for MemoVerifier {
    fn verify(&self, items: &[SignatureItem<'_>]) -> Vec<bool> {
        let keys: Vec<Hash32> = items.iter().map(key_of).collect();
        let mut known = self.known.lock().expect("no panics while holding the lock");
        let unknown: Vec<usize> = (0..items.len())
            .filter(|&i| !known.contains_key(&keys[i]))
            .collect();
        if !unknown.is_empty() {
            let fresh: Vec<SignatureItem<'_>> = unknown.iter().map(|&i| items[i]).collect();
            for (&i, ok) in unknown.iter().zip(Ed25519Verifier.verify(&fresh)) {
                known.insert(keys[i], ok);
            }
        }
        keys.iter().map(|k| known[k]).collect()
    }
}
