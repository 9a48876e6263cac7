//! What nodes say to each other, and attestations.
//!
//! Every message is versioned (the wire form starts with
//! [`PROTOCOL_VERSION`]) and size-bounded ([`MAX_MESSAGE_BYTES`]; list fields
//! have their own caps). The encoding is bincode 2 with fixed-width
//! little-endian integers; offers travel as their 171 signed bytes.

use std::sync::Arc;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::hash::Hash32;
use crate::offer::{SIGNATURE_DOMAIN, SignatureError, SignedOffer, participant_key};
use crate::reconcile::ReconcileMessage;
use crate::types::{IntervalIndex, MarketId, OfferId, PROTOCOL_VERSION, ParticipantId};
use crate::validation::Equivocation;
use crate::verify::{SignatureItem, SignatureVerifier};

/// Largest encoded message: gossipsub's default maximum.
pub const MAX_MESSAGE_BYTES: usize = 65_536;
/// Most offers in one `Offers` or `SetChunk` message (256 × 171 bytes ≈ 44 KiB).
pub const MAX_OFFERS_PER_MESSAGE: usize = 256;
/// Most ids in one `Want` message (1,024 × 32 bytes = 32 KiB).
pub const MAX_WANTED_IDS: usize = 1_024;
/// Most attestations in one `Attestations` message (200 × about 215 bytes).
pub const MAX_ATTESTATIONS_PER_MESSAGE: usize = 200;

/// Most meter reports in one `Reports` message (256 × about 170 bytes).
pub const MAX_REPORTS_PER_MESSAGE: usize = 256;

/// Message type byte of attestations in signed bodies (offers are 1).
const ATTESTATION_TYPE: u8 = 2;
/// Message type byte of meter reports in signed bodies.
const METER_REPORT_TYPE: u8 = 3;
/// Length of a meter report body: version 1 + type 1 + chain 8 + market 32 +
/// interval 8 + participant 32 + import 8 + export 8.
pub const METER_REPORT_BODY_LEN: usize = 98;
/// Length of an attestation body: version 1 + type 1 + chain 8 + market 32 +
/// interval 8 + set root 32 + result root 32 + attester 32.
pub const ATTESTATION_BODY_LEN: usize = 146;

/// A member's statement of what it computed for an interval.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Attestation {
    pub chain_id: u64,
    pub market: MarketId,
    pub interval: IntervalIndex,
    pub set_root: Hash32,
    pub result_root: Hash32,
    pub attester: ParticipantId,
}

/// An attestation with the attester's ed25519 signature over
/// `SIGNATURE_DOMAIN || body` (docs/protocol.md).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignedAttestation {
    pub attestation: Attestation,
    #[serde(with = "signature_bytes")]
    pub signature: [u8; 64],
}

mod signature_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        sig.as_slice().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let bytes: Vec<u8> = Vec::deserialize(d)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a signature is 64 bytes"))
    }
}

impl Attestation {
    pub fn encode_body(&self) -> [u8; ATTESTATION_BODY_LEN] {
        let mut out = [0u8; ATTESTATION_BODY_LEN];
        out[0] = PROTOCOL_VERSION;
        out[1] = ATTESTATION_TYPE;
        out[2..10].copy_from_slice(&self.chain_id.to_le_bytes());
        out[10..42].copy_from_slice(&self.market.0);
        out[42..50].copy_from_slice(&self.interval.0.to_le_bytes());
        out[50..82].copy_from_slice(&self.set_root);
        out[82..114].copy_from_slice(&self.result_root);
        out[114..146].copy_from_slice(&self.attester.0);
        out
    }

    fn message(&self) -> Vec<u8> {
        signing_message(&self.encode_body())
    }

    /// Signs with the attester's node key (which must be the attester's).
    pub fn sign(self, key: &SigningKey) -> SignedAttestation {
        assert_eq!(
            key.verifying_key().to_bytes(),
            self.attester.0,
            "attestation signed with another key"
        );
        SignedAttestation {
            attestation: self,
            signature: key.sign(&self.message()).to_bytes(),
        }
    }
}

impl SignedAttestation {
    pub fn verify(&self) -> Result<(), SignatureError> {
        let key = participant_key(&self.attestation.attester)?;
        key.verify(
            &self.attestation.message(),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| SignatureError::Invalid)
    }

    /// [`SignedAttestation::verify`] through a shared verifier, with the
    /// attester's key already parsed (callers cache parsed member keys).
    pub fn verify_with(
        &self,
        verifier: &dyn SignatureVerifier,
        key: &VerifyingKey,
    ) -> Result<(), SignatureError> {
        debug_assert_eq!(key.to_bytes(), self.attestation.attester.0);
        verify_one(verifier, key, &self.attestation.message(), &self.signature)
    }
}

/// What a participant's meter measured over one interval, as the participant
/// states it: the input of settlement.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MeterReport {
    pub chain_id: u64,
    pub market: MarketId,
    pub interval: IntervalIndex,
    pub participant: ParticipantId,
    pub import_wh: u64,
    pub export_wh: u64,
}

/// A meter report with the participant's ed25519 signature over
/// `SIGNATURE_DOMAIN || body` (docs/protocol.md).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignedMeterReport {
    pub report: MeterReport,
    #[serde(with = "signature_bytes")]
    pub signature: [u8; 64],
}

impl MeterReport {
    pub fn encode_body(&self) -> [u8; METER_REPORT_BODY_LEN] {
        let mut out = [0u8; METER_REPORT_BODY_LEN];
        out[0] = PROTOCOL_VERSION;
        out[1] = METER_REPORT_TYPE;
        out[2..10].copy_from_slice(&self.chain_id.to_le_bytes());
        out[10..42].copy_from_slice(&self.market.0);
        out[42..50].copy_from_slice(&self.interval.0.to_le_bytes());
        out[50..82].copy_from_slice(&self.participant.0);
        out[82..90].copy_from_slice(&self.import_wh.to_le_bytes());
        out[90..98].copy_from_slice(&self.export_wh.to_le_bytes());
        out
    }

    /// Signs with the participant's node key (which must be the participant's).
    pub fn sign(self, key: &SigningKey) -> SignedMeterReport {
        assert_eq!(
            key.verifying_key().to_bytes(),
            self.participant.0,
            "meter report signed with another key"
        );
        SignedMeterReport {
            report: self,
            signature: key.sign(&signing_message(&self.encode_body())).to_bytes(),
        }
    }
}

impl SignedMeterReport {
    /// Checks the signature through a shared verifier, with the
    /// participant's key already parsed.
    pub fn verify_with(
        &self,
        verifier: &dyn SignatureVerifier,
        key: &VerifyingKey,
    ) -> Result<(), SignatureError> {
        debug_assert_eq!(key.to_bytes(), self.report.participant.0);
        let message = signing_message(&self.report.encode_body());
        verify_one(verifier, key, &message, &self.signature)
    }
}

/// One signature through a shared verifier.
fn verify_one(
    verifier: &dyn SignatureVerifier,
    key: &VerifyingKey,
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), SignatureError> {
    let item = SignatureItem {
        key,
        message,
        signature,
    };
    if verifier.verify(&[item])[0] {
        Ok(())
    } else {
        Err(SignatureError::Invalid)
    }
}

/// `SIGNATURE_DOMAIN || body`: what every signature of Dharti covers.
fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut message = SIGNATURE_DOMAIN.to_vec();
    message.extend_from_slice(body);
    message
}

/// One part of an interval's final offer set, sent to a node that asks for it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SetChunk {
    pub interval: IntervalIndex,
    pub set_root: Hash32,
    pub index: u32,
    pub total: u32,
    pub offers: Vec<Arc<SignedOffer>>,
}

/// Everything nodes send each other. Gossiped to the market's topic:
/// `Offer`, `Evidence`, `Attestation`. Sent to one peer: the rest.
/// Attestations are shared (`Arc`): a node keeps every member's, and the
/// simulator's thousand nodes then share one copy.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Message {
    /// Shared (`Arc`), like every offer a node holds; the wire form is the
    /// offer's 171 bytes all the same.
    Offer(Arc<SignedOffer>),
    Evidence(Box<Equivocation>),
    Attestation(Arc<SignedAttestation>),
    /// "I attested this and have seen no quorum": sent to peers directly by
    /// a node still waiting, answered with `Attestations` by final peers.
    Pending(Arc<SignedAttestation>),
    /// The attestations that made an interval final, for a waiting peer.
    Attestations {
        interval: IntervalIndex,
        attestations: Vec<Arc<SignedAttestation>>,
    },
    Reconcile {
        interval: IntervalIndex,
        message: ReconcileMessage,
    },
    Want {
        interval: IntervalIndex,
        ids: Vec<OfferId>,
    },
    Offers {
        interval: IntervalIndex,
        offers: Vec<Arc<SignedOffer>>,
    },
    FetchSet {
        interval: IntervalIndex,
        set_root: Hash32,
    },
    SetChunk(SetChunk),
    /// A participant's signed meter report, gossiped after the interval.
    MeterReport(Arc<SignedMeterReport>),
    /// "Send me these participants' reports for `interval`", from a node
    /// that misses some a while after the interval ended.
    WantReports {
        interval: IntervalIndex,
        participants: Vec<ParticipantId>,
    },
    /// The reports asked for that the sender holds.
    Reports {
        interval: IntervalIndex,
        reports: Vec<Arc<SignedMeterReport>>,
    },
    /// "Send me the proof that `interval` is final", from a node that missed
    /// it (it was down), or from one outside the interval's committee that
    /// has not seen the committee's quorum yet. Answered with the quorum's `Attestations`; the
    /// asker then fetches the set (`FetchSet`) from an attester, checks it
    /// against the roots and clears it itself. Peers that no longer hold the
    /// interval in memory answer from storage.
    WantFinal {
        interval: IntervalIndex,
    },
}

/// The `SetChunk` messages that carry `offers` (an interval's final set, in
/// set order) to a node that asked for it: at least one, even for an empty
/// set.
pub fn set_chunks(
    interval: IntervalIndex,
    set_root: Hash32,
    offers: &[Arc<SignedOffer>],
) -> Vec<Message> {
    let chunks: Vec<&[Arc<SignedOffer>]> = if offers.is_empty() {
        vec![&[]]
    } else {
        offers.chunks(MAX_OFFERS_PER_MESSAGE).collect()
    };
    let total = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
    chunks
        .into_iter()
        .enumerate()
        .map(|(index, chunk)| {
            Message::SetChunk(SetChunk {
                interval,
                set_root,
                index: u32::try_from(index).unwrap_or(u32::MAX),
                total,
                offers: chunk.to_vec(),
            })
        })
        .collect()
}

/// The `Attestations` messages that carry a quorum's attestations of
/// `interval`, within the per-message cap.
pub fn attestation_messages(
    interval: IntervalIndex,
    attestations: &[Arc<SignedAttestation>],
) -> Vec<Message> {
    attestations
        .chunks(MAX_ATTESTATIONS_PER_MESSAGE)
        .map(|chunk| Message::Attestations {
            interval,
            attestations: chunk.to_vec(),
        })
        .collect()
}

/// Why bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message of {0} bytes exceeds {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("empty message")]
    Empty,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("a list in the message is longer than allowed")]
    ListTooLong,
}

const BINCODE: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
> = bincode::config::standard()
    .with_fixed_int_encoding()
    .with_little_endian();

impl Message {
    /// The wire form: version byte, then bincode.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PROTOCOL_VERSION];
        let body = bincode::serde::encode_to_vec(self, BINCODE).expect("messages always encode");
        out.extend_from_slice(&body);
        out
    }

    /// Length of [`Message::encode`]'s output, counted without building it.
    pub fn encoded_len(&self) -> usize {
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::serde::encode_into_writer(self, &mut size, BINCODE)
            .expect("messages always encode");
        1 + size.bytes_written
    }

    /// Parses the wire form, refusing oversized, unversioned or malformed input.
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(MessageError::TooLarge(bytes.len()));
        }
        let (&version, body) = bytes.split_first().ok_or(MessageError::Empty)?;
        if version != PROTOCOL_VERSION {
            return Err(MessageError::Version(version));
        }
        let config = BINCODE.with_limit::<MAX_MESSAGE_BYTES>();
        let (message, used): (Message, usize) = bincode::serde::decode_from_slice(body, config)
            .map_err(|e| MessageError::Malformed(e.to_string()))?;
        if used != body.len() {
            return Err(MessageError::Malformed("trailing bytes".into()));
        }
        message.check_bounds()?;
        Ok(message)
    }

    /// Checks the per-list caps.
    pub fn check_bounds(&self) -> Result<(), MessageError> {
        let ok = match self {
            Message::Want { ids, .. } => ids.len() <= MAX_WANTED_IDS,
            Message::Attestations { attestations, .. } => {
                attestations.len() <= MAX_ATTESTATIONS_PER_MESSAGE
            }
            Message::Offers { offers, .. } => offers.len() <= MAX_OFFERS_PER_MESSAGE,
            Message::SetChunk(chunk) => {
                chunk.offers.len() <= MAX_OFFERS_PER_MESSAGE && chunk.index < chunk.total
            }
            Message::Reconcile { message, .. } => message.check().is_ok(),
            Message::WantReports { participants, .. } => participants.len() <= MAX_WANTED_IDS,
            Message::Reports { reports, .. } => reports.len() <= MAX_REPORTS_PER_MESSAGE,
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(MessageError::ListTooLong)
        }
    }
}
