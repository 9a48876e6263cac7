//! The basic vocabulary of a market: which market, which delivery interval,
//! which side, who. Units are in the names (`_wh`, `_s`, `_micro_per_kwh`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::sha256;

/// The version of the wire format and of every signed message. A node
/// rejects messages of any other version.
pub const PROTOCOL_VERSION: u8 = 1;

/// Energy Web Chain mainnet.
pub const CHAIN_ID_EWC: u64 = 246;
/// Energy Web Volta testnet.
pub const CHAIN_ID_VOLTA: u64 = 73_799;

/// Identifies one market (one feeder, one co-op). 32 bytes, derived from a
/// human-readable name with [`MarketId::from_name`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MarketId(pub [u8; 32]);

impl MarketId {
    /// `SHA-256("dharti/market/v1/" || name)`.
    pub fn from_name(name: &str) -> MarketId {
        let mut bytes = b"dharti/market/v1/".to_vec();
        bytes.extend_from_slice(name.as_bytes());
        MarketId(sha256(&bytes))
    }
}

impl fmt::Debug for MarketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MarketId({})", &hex::encode(self.0)[..16])
    }
}

impl fmt::Display for MarketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A participant: its ed25519 public key, which is also its libp2p peer id
/// and its `did:key`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParticipantId(pub [u8; 32]);

/// Byte order, as a derived `Ord` would give, but deciding on the first eight
/// bytes as one big-endian word: keys and hashes are uniformly random, so
/// that word nearly always decides, without a call to `memcmp` (which
/// reconciliation's range checks made a twentieth of a simulation's time).
fn cmp_bytes32(a: &[u8; 32], b: &[u8; 32]) -> std::cmp::Ordering {
    fn word(bytes: &[u8; 32]) -> u64 {
        u64::from_be_bytes(bytes[..8].try_into().expect("8 of 32 bytes"))
    }
    word(a).cmp(&word(b)).then_with(|| a[8..].cmp(&b[8..]))
}

macro_rules! ord_by_bytes {
    ($t:ty) => {
        impl Ord for $t {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                cmp_bytes32(&self.0, &other.0)
            }
        }

        impl PartialOrd for $t {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
    };
}

ord_by_bytes!(ParticipantId);
ord_by_bytes!(OfferId);

impl fmt::Debug for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Participant({})", &hex::encode(self.0)[..12])
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The id of a signed offer: SHA-256 of its complete wire bytes (body and
/// signature), see docs/protocol.md.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OfferId(pub [u8; 32]);

impl OfferId {
    /// The first eight bytes as a big-endian word: ids in order have their
    /// words in order, and, ids being SHA-256 digests, the words are evenly
    /// spread (reconciliation guesses where an id falls from it).
    pub fn leading_word(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().expect("8 of 32 bytes"))
    }
}

impl fmt::Debug for OfferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Offer({})", &hex::encode(self.0)[..12])
    }
}

impl fmt::Display for OfferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Buying or selling.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// A buy offer: the price is the most the buyer pays per kWh, grid fee included.
    Bid,
    /// A sell offer: the price is the least the seller accepts per kWh.
    Ask,
}

impl Side {
    pub fn wire_byte(self) -> u8 {
        match self {
            Side::Bid => 0,
            Side::Ask => 1,
        }
    }

    pub fn from_wire_byte(byte: u8) -> Option<Side> {
        match byte {
            0 => Some(Side::Bid),
            1 => Some(Side::Ask),
            _ => None,
        }
    }
}

/// The index of a delivery interval: interval `n` delivers energy during
/// `[n * interval_s, (n + 1) * interval_s)` unix seconds (intervals are
/// aligned to the unix epoch).
#[derive(
    Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize,
)]
pub struct IntervalIndex(pub u64);

/// Shortest interval a market may use. DESIGN.md's range starts at 60 s for
/// real markets; 10 s is allowed so that a demo or a test on one machine
/// shows several intervals within a minute (docs/ARCHITECTURE.md, departures).
pub const MIN_INTERVAL_S: u64 = 10;
/// Longest interval a market may use.
pub const MAX_INTERVAL_S: u64 = 3_600;

/// The timing of a market's intervals. Pure arithmetic on times passed in;
/// it never reads a clock. Only [`IntervalClock::new`] makes one, also when
/// deserializing, so `interval_s` is never zero.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "RawIntervalClock")]
pub struct IntervalClock {
    /// Length of one delivery interval, 10..=3600 s (default 900).
    pub interval_s: u64,
    /// Offers close this long before their interval starts (default 60).
    pub gate_lead_s: u64,
}

#[derive(Deserialize)]
struct RawIntervalClock {
    interval_s: u64,
    gate_lead_s: u64,
}

impl TryFrom<RawIntervalClock> for IntervalClock {
    type Error = ClockError;

    fn try_from(raw: RawIntervalClock) -> Result<IntervalClock, ClockError> {
        IntervalClock::new(raw.interval_s, raw.gate_lead_s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("interval_s must be between {MIN_INTERVAL_S} and {MAX_INTERVAL_S} seconds, got {0}")]
    IntervalLength(u64),
    #[error("gate_lead_s ({gate_lead_s}) must be shorter than interval_s ({interval_s})")]
    GateLead { gate_lead_s: u64, interval_s: u64 },
}

impl Default for IntervalClock {
    fn default() -> Self {
        IntervalClock {
            interval_s: 900,
            gate_lead_s: 60,
        }
    }
}

impl IntervalClock {
    pub fn new(interval_s: u64, gate_lead_s: u64) -> Result<IntervalClock, ClockError> {
        if !(MIN_INTERVAL_S..=MAX_INTERVAL_S).contains(&interval_s) {
            return Err(ClockError::IntervalLength(interval_s));
        }
        if gate_lead_s >= interval_s {
            return Err(ClockError::GateLead {
                gate_lead_s,
                interval_s,
            });
        }
        Ok(IntervalClock {
            interval_s,
            gate_lead_s,
        })
    }

    /// The interval being delivered at `now_s`.
    pub fn interval_at(&self, now_s: u64) -> IntervalIndex {
        IntervalIndex(now_s / self.interval_s)
    }

    /// Unix second at which `interval` starts delivering.
    pub fn start_s(&self, interval: IntervalIndex) -> u64 {
        interval.0.saturating_mul(self.interval_s)
    }

    /// Unix second at which offers for `interval` close.
    pub fn gate_closure_s(&self, interval: IntervalIndex) -> u64 {
        self.start_s(interval).saturating_sub(self.gate_lead_s)
    }

    /// Whether offers for `interval` are still accepted at `now_s`.
    pub fn is_open(&self, interval: IntervalIndex, now_s: u64) -> bool {
        now_s < self.gate_closure_s(interval)
    }

    /// The first interval still open for offers at `now_s`.
    pub fn next_open(&self, now_s: u64) -> IntervalIndex {
        let mut interval = IntervalIndex(self.interval_at(now_s).0 + 1);
        if !self.is_open(interval, now_s) {
            interval.0 += 1;
        }
        interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_arithmetic() {
        let clock = IntervalClock::new(900, 60).unwrap();
        assert_eq!(clock.interval_at(0), IntervalIndex(0));
        assert_eq!(clock.interval_at(899), IntervalIndex(0));
        assert_eq!(clock.interval_at(900), IntervalIndex(1));
        assert_eq!(clock.start_s(IntervalIndex(2)), 1800);
        assert_eq!(clock.gate_closure_s(IntervalIndex(2)), 1740);
        assert!(clock.is_open(IntervalIndex(2), 1739));
        assert!(!clock.is_open(IntervalIndex(2), 1740));
        assert_eq!(clock.next_open(1000), IntervalIndex(2));
        assert_eq!(clock.next_open(1750), IntervalIndex(3));
    }

    #[test]
    fn clock_rejects_bad_lengths() {
        assert_eq!(IntervalClock::new(9, 1), Err(ClockError::IntervalLength(9)));
        assert_eq!(
            IntervalClock::new(7200, 10),
            Err(ClockError::IntervalLength(7200))
        );
        assert!(matches!(
            IntervalClock::new(60, 60),
            Err(ClockError::GateLead { .. })
        ));
    }

    #[test]
    fn deserializing_validates() {
        let bad: Result<IntervalClock, _> =
            serde_json::from_str(r#"{"interval_s": 0, "gate_lead_s": 0}"#);
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("interval_s must be between")
        );
        let good: IntervalClock =
            serde_json::from_str(r#"{"interval_s": 900, "gate_lead_s": 60}"#).unwrap();
        assert_eq!(good, IntervalClock::default());
    }

    #[test]
    fn market_ids_differ_by_name() {
        assert_ne!(MarketId::from_name("a"), MarketId::from_name("b"));
        assert_eq!(MarketId::from_name("a"), MarketId::from_name("a"));
    }

    proptest::proptest! {
        /// Ids and keys order as their bytes do, also when the first
        /// eight bytes tie (the second id shares a prefix of the first).
        #[test]
        fn ids_order_as_their_bytes(a: [u8; 32], b: [u8; 32], shared in 0usize..=32) {
            let mut b = b;
            b[..shared].copy_from_slice(&a[..shared]);
            proptest::prop_assert_eq!(OfferId(a).cmp(&OfferId(b)), a.cmp(&b));
            proptest::prop_assert_eq!(ParticipantId(a).cmp(&ParticipantId(b)), a.cmp(&b));
            proptest::prop_assert_eq!(OfferId(a).partial_cmp(&OfferId(b)), Some(a.cmp(&b)));
        }
    }
}
