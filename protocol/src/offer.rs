//! Offers and their canonical, signed wire encoding.
//!
//! The encoding is Dharti's own fixed layout (all integers little-endian),
//! written down byte by byte in docs/protocol.md. A signed offer is always
//! [`OFFER_WIRE_LEN`] bytes: the body ([`OFFER_BODY_LEN`] bytes) followed by
//! a 64-byte ed25519 signature over `SIGNATURE_DOMAIN || body`. The body
//! starts with the protocol version, the message type, the chain id and the
//! market id, so a signature can never be replayed on another chain, in
//! another market, as another message type or under another version.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::hash::sha256;
use crate::types::{IntervalIndex, MarketId, OfferId, PROTOCOL_VERSION, ParticipantId, Side};

/// Prefix of every message Dharti signs (16 bytes). It keeps Dharti's
/// signatures apart from anything else the same key signs (libp2p, DIDs).
pub const SIGNATURE_DOMAIN: &[u8; 16] = b"DHARTI-SIGNED-V1";

/// Message types of signed messages. Only offers exist in this version;
/// attestations and meter reports take the next numbers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum MessageType {
    Offer = 1,
}

/// Length of an offer body: version 1 + type 1 + chain 8 + market 32 +
/// interval 8 + side 1 + energy 8 + price 8 + participant 32 + sequence 8.
pub const OFFER_BODY_LEN: usize = 107;
/// Length of a signed offer on the wire: body + 64-byte signature.
pub const OFFER_WIRE_LEN: usize = OFFER_BODY_LEN + 64;

/// What a participant wants to buy or sell in one interval.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Offer {
    pub chain_id: u64,
    pub market: MarketId,
    pub interval: IntervalIndex,
    pub side: Side,
    /// Energy to deliver in the interval; 0 cancels an earlier offer.
    pub energy_wh: u64,
    /// Limit price: most a bid pays (grid fee included), least an ask takes.
    pub price_micro_per_kwh: u64,
    pub participant: ParticipantId,
    /// Per (participant, interval, side); a higher number replaces a lower one.
    pub sequence: u64,
}

impl Offer {
    /// The canonical body bytes (see docs/protocol.md).
    pub fn encode_body(&self) -> [u8; OFFER_BODY_LEN] {
        let mut out = [0u8; OFFER_BODY_LEN];
        out[0] = PROTOCOL_VERSION;
        out[1] = MessageType::Offer as u8;
        out[2..10].copy_from_slice(&self.chain_id.to_le_bytes());
        out[10..42].copy_from_slice(&self.market.0);
        out[42..50].copy_from_slice(&self.interval.0.to_le_bytes());
        out[50] = self.side.wire_byte();
        out[51..59].copy_from_slice(&self.energy_wh.to_le_bytes());
        out[59..67].copy_from_slice(&self.price_micro_per_kwh.to_le_bytes());
        out[67..99].copy_from_slice(&self.participant.0);
        out[99..107].copy_from_slice(&self.sequence.to_le_bytes());
        out
    }

    /// Signs the offer with the participant's node key. Panics if the key is
    /// not the offer's participant: that is a bug in the caller, not input.
    pub fn sign(self, key: &SigningKey) -> SignedOffer {
        assert_eq!(
            key.verifying_key().to_bytes(),
            self.participant.0,
            "offer signed with a key that is not its participant's"
        );
        let signature = key.sign(&signing_message(&self.encode_body()));
        SignedOffer::from_parts(self, signature.to_bytes())
    }
}

/// The bytes an ed25519 signature covers: `SIGNATURE_DOMAIN || body`.
pub fn signing_message(body: &[u8; OFFER_BODY_LEN]) -> [u8; 16 + OFFER_BODY_LEN] {
    let mut message = [0u8; 16 + OFFER_BODY_LEN];
    message[..16].copy_from_slice(SIGNATURE_DOMAIN);
    message[16..].copy_from_slice(body);
    message
}

/// An offer with its signature and its id.
/// The signature is *not* known to be valid; see [`SignedOffer::verify`].
///
/// Serialized (serde) as its 171 wire bytes; deserializing decodes them and
/// recomputes the id, so an id is never taken from a peer on trust.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedOffer {
    pub offer: Offer,
    pub signature: [u8; 64],
    pub id: OfferId,
}

impl Serialize for SignedOffer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.encode())
    }
}

impl<'de> Deserialize<'de> for SignedOffer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SignedOffer, D::Error> {
        let bytes = d.deserialize_bytes(BytesVisitor)?;
        SignedOffer::decode(&bytes).map_err(serde::de::Error::custom)
    }
}

/// Reads a byte string whether the format hands it over as bytes (bincode)
/// or as a sequence of numbers (JSON), refusing anything longer than an offer.
struct BytesVisitor;

impl<'de> serde::de::Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the 171 bytes of a signed offer")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(OFFER_WIRE_LEN);
        while let Some(byte) = seq.next_element::<u8>()? {
            if out.len() == OFFER_WIRE_LEN {
                return Err(serde::de::Error::custom(
                    "signed offer longer than 171 bytes",
                ));
            }
            out.push(byte);
        }
        Ok(out)
    }
}

/// Why bytes are not a well-formed signed offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("signed offer must be {OFFER_WIRE_LEN} bytes, got {0}")]
    Length(usize),
    #[error("unsupported protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    Version(u8),
    #[error("message type {0} is not an offer")]
    MessageType(u8),
    #[error("side byte {0} is neither 0 (bid) nor 1 (ask)")]
    Side(u8),
}

/// Why a signature does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("participant key is not a valid ed25519 point")]
    MalformedKey,
    #[error("participant key has small order")]
    WeakKey,
    #[error("signature does not verify")]
    Invalid,
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buf)
}

fn array32_at(bytes: &[u8], at: usize) -> [u8; 32] {
    let mut buf = [0u8; 32];
    buf.copy_from_slice(&bytes[at..at + 32]);
    buf
}

impl SignedOffer {
    fn from_parts(offer: Offer, signature: [u8; 64]) -> SignedOffer {
        let mut wire = [0u8; OFFER_WIRE_LEN];
        wire[..OFFER_BODY_LEN].copy_from_slice(&offer.encode_body());
        wire[OFFER_BODY_LEN..].copy_from_slice(&signature);
        SignedOffer {
            offer,
            signature,
            id: OfferId(sha256(&wire)),
        }
    }

    /// The wire bytes: body then signature.
    pub fn encode(&self) -> [u8; OFFER_WIRE_LEN] {
        let mut wire = [0u8; OFFER_WIRE_LEN];
        wire[..OFFER_BODY_LEN].copy_from_slice(&self.offer.encode_body());
        wire[OFFER_BODY_LEN..].copy_from_slice(&self.signature);
        wire
    }

    /// Parses wire bytes. Checks the layout only, not the signature.
    pub fn decode(wire: &[u8]) -> Result<SignedOffer, DecodeError> {
        if wire.len() != OFFER_WIRE_LEN {
            return Err(DecodeError::Length(wire.len()));
        }
        if wire[0] != PROTOCOL_VERSION {
            return Err(DecodeError::Version(wire[0]));
        }
        if wire[1] != MessageType::Offer as u8 {
            return Err(DecodeError::MessageType(wire[1]));
        }
        let side = Side::from_wire_byte(wire[50]).ok_or(DecodeError::Side(wire[50]))?;
        let offer = Offer {
            chain_id: u64_at(wire, 2),
            market: MarketId(array32_at(wire, 10)),
            interval: IntervalIndex(u64_at(wire, 42)),
            side,
            energy_wh: u64_at(wire, 51),
            price_micro_per_kwh: u64_at(wire, 59),
            participant: ParticipantId(array32_at(wire, 67)),
            sequence: u64_at(wire, 99),
        };
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&wire[OFFER_BODY_LEN..]);
        Ok(SignedOffer {
            offer,
            signature,
            id: OfferId(sha256(wire)),
        })
    }

    /// Parses the participant's key, rejecting malformed and small-order keys.
    pub fn verifying_key(&self) -> Result<VerifyingKey, SignatureError> {
        participant_key(&self.offer.participant)
    }

    /// Verifies the signature alone (cofactorless ed25519, strict about keys).
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.verify_with(&self.verifying_key()?)
    }

    /// Verifies with an already parsed key (callers cache parsed member keys).
    pub fn verify_with(&self, key: &VerifyingKey) -> Result<(), SignatureError> {
        debug_assert_eq!(key.to_bytes(), self.offer.participant.0);
        let message = signing_message(&self.offer.encode_body());
        key.verify(&message, &Signature::from_bytes(&self.signature))
            .map_err(|_| SignatureError::Invalid)
    }
}

/// Parses a participant's public key, rejecting malformed and small-order keys.
pub fn participant_key(participant: &ParticipantId) -> Result<VerifyingKey, SignatureError> {
    let key = VerifyingKey::from_bytes(&participant.0).map_err(|_| SignatureError::MalformedKey)?;
    if key.is_weak() {
        return Err(SignatureError::WeakKey);
    }
    Ok(key)
}

/// Verifies many offers at once with ed25519 batch verification (about twice
/// as fast per signature as one-by-one verification). Returns one result per
/// offer; a single bad signature cannot make good ones fail.
///
/// `keys[i]` must be the parsed key of `offers[i]`'s participant.
pub fn verify_batch(offers: &[&SignedOffer], keys: &[VerifyingKey]) -> Vec<bool> {
    verify_offers(&crate::verify::Ed25519Verifier::default(), offers, keys)
}

/// [`verify_batch`] with any verifier.
pub fn verify_offers(
    verifier: &dyn crate::verify::SignatureVerifier,
    offers: &[&SignedOffer],
    keys: &[VerifyingKey],
) -> Vec<bool> {
    assert_eq!(offers.len(), keys.len(), "one key per offer");
    let messages: Vec<[u8; 16 + OFFER_BODY_LEN]> = offers
        .iter()
        .map(|o| signing_message(&o.offer.encode_body()))
        .collect();
    let items: Vec<crate::verify::SignatureItem<'_>> = offers
        .iter()
        .zip(keys)
        .zip(&messages)
        .map(|((offer, key), message)| crate::verify::SignatureItem {
            key,
            message,
            signature: &offer.signature,
        })
        .collect();
    verifier.verify(&items)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn offer(key: &SigningKey) -> Offer {
        Offer {
            chain_id: 73_799,
            market: MarketId::from_name("test"),
            interval: IntervalIndex(42),
            side: Side::Ask,
            energy_wh: 1_500,
            price_micro_per_kwh: 120_000,
            participant: ParticipantId(key.verifying_key().to_bytes()),
            sequence: 3,
        }
    }

    #[test]
    fn round_trip_and_verify() {
        let key = key(1);
        let signed = offer(&key).sign(&key);
        let wire = signed.encode();
        assert_eq!(wire.len(), OFFER_WIRE_LEN);
        let decoded = SignedOffer::decode(&wire).unwrap();
        assert_eq!(decoded, signed);
        assert_eq!(decoded.id.0, sha256(&wire));
        decoded.verify().unwrap();
    }

    #[test]
    fn layout_matches_the_documented_offsets() {
        let key = key(2);
        let body = offer(&key).encode_body();
        assert_eq!(body[0], 1);
        assert_eq!(body[1], 1);
        assert_eq!(&body[2..10], &73_799u64.to_le_bytes());
        assert_eq!(&body[42..50], &42u64.to_le_bytes());
        assert_eq!(body[50], 1);
        assert_eq!(&body[51..59], &1_500u64.to_le_bytes());
        assert_eq!(&body[59..67], &120_000u64.to_le_bytes());
        assert_eq!(&body[67..99], &key.verifying_key().to_bytes());
        assert_eq!(&body[99..107], &3u64.to_le_bytes());
    }

    #[test]
    fn any_changed_byte_breaks_the_signature() {
        let key = key(3);
        let wire = offer(&key).sign(&key).encode();
        for at in [2, 10, 42, 51, 59, 99, 120] {
            let mut tampered = wire;
            tampered[at] ^= 1;
            let decoded = SignedOffer::decode(&tampered).unwrap();
            assert!(decoded.verify().is_err(), "byte {at}");
        }
    }

    #[test]
    fn decode_rejects_malformed_bytes() {
        let key = key(4);
        let wire = offer(&key).sign(&key).encode();
        assert_eq!(
            SignedOffer::decode(&wire[..100]),
            Err(DecodeError::Length(100))
        );
        let mut bad = wire;
        bad[0] = 2;
        assert_eq!(SignedOffer::decode(&bad), Err(DecodeError::Version(2)));
        let mut bad = wire;
        bad[1] = 9;
        assert_eq!(SignedOffer::decode(&bad), Err(DecodeError::MessageType(9)));
        let mut bad = wire;
        bad[50] = 7;
        assert_eq!(SignedOffer::decode(&bad), Err(DecodeError::Side(7)));
    }

    #[test]
    fn batch_verification_finds_the_bad_one() {
        let keys: Vec<SigningKey> = (10..20).map(key).collect();
        let mut offers: Vec<SignedOffer> = keys.iter().map(|k| offer(k).sign(k)).collect();
        offers[4].signature[5] ^= 0xff;
        let parsed: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
        let refs: Vec<&SignedOffer> = offers.iter().collect();
        let results = verify_batch(&refs, &parsed);
        for (i, ok) in results.iter().enumerate() {
            assert_eq!(*ok, i != 4, "offer {i}");
        }
        offers[4].signature[5] ^= 0xff;
        let refs: Vec<&SignedOffer> = offers.iter().collect();
        assert!(verify_batch(&refs, &parsed).iter().all(|ok| *ok));
    }

    #[test]
    fn serde_form_is_the_wire_bytes_and_the_id_is_recomputed() {
        let key = key(5);
        let signed = offer(&key).sign(&key);
        let json = serde_json::to_string(&signed).unwrap();
        let back: SignedOffer = serde_json::from_str(&json).unwrap();
        assert_eq!(back, signed);
        // Tampered bytes give a different id, not the one the sender claimed.
        let mut value: Vec<u8> = serde_json::from_str(&json).unwrap();
        value[60] ^= 1;
        let tampered: SignedOffer =
            serde_json::from_str(&serde_json::to_string(&value).unwrap()).unwrap();
        assert_ne!(tampered.id, signed.id);
        assert!(tampered.verify().is_err());
    }

    #[test]
    fn small_order_keys_are_refused() {
        // The identity point (y = 1) has order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            participant_key(&ParticipantId(identity)),
            Err(SignatureError::WeakKey)
        );
    }
}
