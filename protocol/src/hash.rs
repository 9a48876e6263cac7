//! Hashing. Dharti names one hash for everything it identifies or commits to:
//! SHA-256 (FIPS 180-4). It is what the EVM offers as a precompile, so roots
//! computed here can later be checked on chain, and on x86-64 with SHA-NI and
//! on ARMv8 with the crypto extensions it runs at gigabytes per second.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash32 = [u8; 32];

/// SHA-256 of one byte string.
pub fn sha256(bytes: &[u8]) -> Hash32 {
    Sha256::digest(bytes).into()
}

/// An incremental SHA-256 that buffers small writes, so that encoders can
/// feed it field by field without paying a compression call per field.
/// The buffer lives in the hasher, not on the heap: most digests are of a
/// few dozen bytes (a fingerprint, a committee seed), and a heap buffer
/// cost an allocation and a free each.
#[derive(Debug, Clone)]
pub struct Hasher {
    inner: Sha256,
    buf: [u8; HASHER_BUFFER_BYTES],
    len: usize,
}

/// Buffered bytes before they are handed to SHA-256: eight blocks, enough
/// to amortise the per-call overhead of the digest.
const HASHER_BUFFER_BYTES: usize = 512;

impl Hasher {
    /// A hasher whose input starts with `domain`, so that digests of
    /// different kinds of object can never collide.
    pub fn new(domain: &[u8]) -> Hasher {
        let mut hasher = Hasher {
            inner: Sha256::new(),
            buf: [0; HASHER_BUFFER_BYTES],
            len: 0,
        };
        hasher.write(domain);
        hasher
    }

    pub fn write(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > HASHER_BUFFER_BYTES {
            self.inner.update(&self.buf[..self.len]);
            self.len = 0;
        }
        if bytes.len() > HASHER_BUFFER_BYTES {
            self.inner.update(bytes);
        } else {
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    pub fn write_u8(&mut self, value: u8) {
        self.write(&[value]);
    }

    pub fn write_u32(&mut self, value: u32) {
        self.write(&value.to_le_bytes());
    }

    pub fn write_u64(&mut self, value: u64) {
        self.write(&value.to_le_bytes());
    }

    pub fn finish(mut self) -> Hash32 {
        self.inner.update(&self.buf[..self.len]);
        self.inner.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_hasher_equals_one_shot_digest() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut hasher = Hasher::new(b"");
        for chunk in data.chunks(13) {
            hasher.write(chunk);
        }
        hasher.write(&data);
        let mut both = data.clone();
        both.extend_from_slice(&data);
        assert_eq!(hasher.finish(), sha256(&both));
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

/// A hasher for maps keyed by ids that are already uniformly random: public
/// keys and SHA-256 outputs ([`crate::types::ParticipantId`],
/// [`crate::types::OfferId`], roots). It folds the first eight bytes of each
/// write (and integers as they are) into one word, so a lookup costs a few
/// instructions rather than SipHash over 32 bytes. It is deterministic, so
/// iteration order is the same in every run (the simulator's traces rely on
/// that). Not for keys an attacker can choose freely: where participants are
/// keys, they are members (checked before anything is stored) or must sign.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.write_u64(u64::from_le_bytes(word));
    }

    fn write_u64(&mut self, value: u64) {
        // FxHash's step: rotate, mix in, multiply by an odd constant.
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` keyed by random ids, hashed with [`IdHasher`].
pub type IdMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;
