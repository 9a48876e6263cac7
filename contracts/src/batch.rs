//! Settlement batches: the header members approve, the two Merkle trees
//! behind it, EIP-712 approvals and their packed on-chain form.

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, Bytes, I256, keccak256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{Eip712Domain, SolStruct, SolValue, eip712_domain};

use crate::bindings::SettlementLedger::{self, BatchHeader, Position, TradeRecord};
use crate::merkle::{MerkleTree, leaf};

/// Bytes per packed approval: member index (2), r (32), vs (32).
pub const APPROVAL_BYTES: usize = 66;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("net positions sum to {0}, not zero: money would be created or lost")]
    NotBalanced(i128),
    #[error("interval range {first}..={last} is empty")]
    EmptyRange { first: u64, last: u64 },
}

/// Most accounts one settlement transaction applies (the ledger's
/// `MAX_CHUNK_ACCOUNTS`).
pub const MAX_CHUNK_ACCOUNTS: usize = 32;

/// A market's batch: trades and net positions over a run of intervals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub header: BatchHeader,
    pub trades: Vec<TradeRecord>,
    /// Non-zero net positions in the contract's order: payers (negative)
    /// by increasing account, then receivers by increasing account. Chunk
    /// `i` is `positions[i * MAX_CHUNK_ACCOUNTS ..]`, at most
    /// `MAX_CHUNK_ACCOUNTS` long.
    pub positions: Vec<Position>,
    records: MerkleTree,
    chunks: MerkleTree,
}

impl Batch {
    /// Builds the batch for the market with on-chain index `market`. `net` holds each account's net position in the
    /// market's money units (positive: receives); zero positions are left
    /// out. The positions must sum to zero.
    pub fn new(
        market: u32,
        number: u64,
        first_interval: u64,
        last_interval: u64,
        trades: Vec<TradeRecord>,
        net: &BTreeMap<Address, i64>,
    ) -> Result<Self, BatchError> {
        let sum: i128 = net.values().map(|v| i128::from(*v)).sum();
        if sum != 0 {
            return Err(BatchError::NotBalanced(sum));
        }
        let signed = |(account, amount): (&Address, &i64)| Position {
            account: *account,
            amount: I256::try_from(*amount).expect("i64 fits in int256"),
        };
        // Payers first, so every chunk pays out only money already collected.
        let payers = net.iter().filter(|(_, amount)| **amount < 0).map(signed);
        let receivers = net.iter().filter(|(_, amount)| **amount > 0).map(signed);
        let positions = payers.chain(receivers).collect();
        Self::with_positions(
            market,
            number,
            first_interval,
            last_interval,
            trades,
            positions,
        )
    }

    /// Builds a batch from positions in the given order, unchecked: the
    /// ledger's own checks are tested with batches `new` would refuse.
    #[doc(hidden)]
    pub fn with_positions(
        market: u32,
        number: u64,
        first_interval: u64,
        last_interval: u64,
        trades: Vec<TradeRecord>,
        positions: Vec<Position>,
    ) -> Result<Self, BatchError> {
        if last_interval < first_interval {
            return Err(BatchError::EmptyRange {
                first: first_interval,
                last: last_interval,
            });
        }
        let records = MerkleTree::new(trades.iter().map(|t| trade_leaf(market, t)).collect());
        let count = positions.len().div_ceil(MAX_CHUNK_ACCOUNTS);
        let count32 = u32::try_from(count).expect("fewer than 2^32 chunks");
        let chunks = MerkleTree::new(
            positions
                .chunks(MAX_CHUNK_ACCOUNTS)
                .enumerate()
                .map(|(index, chunk)| {
                    let index = u32::try_from(index).expect("fewer than 2^32 chunks");
                    chunk_node(index, count32, chunk)
                })
                .collect(),
        );
        Ok(Batch {
            header: BatchHeader {
                market,
                number,
                firstInterval: first_interval,
                lastInterval: last_interval,
                recordsRoot: records.root(),
                netRoot: chunks.root(),
            },
            trades,
            positions,
            records,
            chunks,
        })
    }

    /// The Merkle proof of trade `index` against the records root.
    pub fn trade_proof(&self, index: usize) -> Option<Vec<B256>> {
        self.records.proof(index)
    }

    /// How many settlement transactions the batch takes (zero without
    /// positions; it is then settled by one call with `count` zero).
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The `settleChunk` call applying chunk `index`. For a batch without
    /// positions, index 0 is the one call that marks it settled.
    pub fn settle_call(&self, index: usize) -> Option<SettlementLedger::settleChunkCall> {
        let count = self.chunk_count();
        let (positions, proof) = if count == 0 {
            if index != 0 {
                return None;
            }
            (Vec::new(), Vec::new())
        } else {
            let proof = self.chunks.proof(index)?;
            let chunk = self.positions.chunks(MAX_CHUNK_ACCOUNTS).nth(index)?;
            (chunk.to_vec(), proof)
        };
        Some(SettlementLedger::settleChunkCall {
            market: self.header.market,
            number: self.header.number,
            recordsRoot: self.header.recordsRoot,
            index: u32::try_from(index).ok()?,
            count: u32::try_from(count).ok()?,
            positions,
            proof,
        })
    }
}

/// A leaf of the net-positions tree: one chunk, bound to its place.
/// 40 bytes hashed, so it is never mistaken for an inner node (64) or a
/// leaf's outer hash (32).
pub fn chunk_node(index: u32, count: u32, positions: &[Position]) -> B256 {
    let root = MerkleTree::new(
        positions
            .iter()
            .map(|p| position_leaf(p.account, p.amount))
            .collect(),
    )
    .root();
    let mut buf = [0u8; 40];
    buf[..4].copy_from_slice(&index.to_be_bytes());
    buf[4..8].copy_from_slice(&count.to_be_bytes());
    buf[8..].copy_from_slice(root.as_slice());
    keccak256(buf)
}

/// The EIP-712 domain of a ledger: binds the chain and the contract, so an
/// approval cannot be replayed on another chain or another deployment.
pub fn domain(chain_id: u64, ledger: Address) -> Eip712Domain {
    eip712_domain! {
        name: "DhartiSettlementLedger",
        version: "1",
        chain_id: chain_id,
        verifying_contract: ledger,
    }
}

/// What a member signs to approve `header`.
pub fn signing_hash(header: &BatchHeader, chain_id: u64, ledger: Address) -> B256 {
    header.eip712_signing_hash(&domain(chain_id, ledger))
}

pub fn trade_leaf(market: u32, trade: &TradeRecord) -> B256 {
    leaf(&(market, trade.clone()).abi_encode_params())
}

pub fn position_leaf(account: Address, amount: I256) -> B256 {
    leaf(&(account, amount).abi_encode_params())
}

/// One member's approval of a batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Approval {
    /// The signer's index in the ledger's member list.
    pub member_index: u16,
    /// EIP-2098 compact signature (r ‖ yParity·s).
    #[serde(with = "serde_sig")]
    pub signature: [u8; 64],
}

impl Approval {
    pub fn sign(signer: &PrivateKeySigner, member_index: u16, digest: B256) -> Self {
        let sig = signer
            .sign_hash_sync(&digest)
            .expect("a local key signs any digest");
        Approval {
            member_index,
            signature: sig.as_erc2098(),
        }
    }

    /// The address that signed `digest`, if the signature is well formed.
    pub fn signer(&self, digest: B256) -> Option<Address> {
        alloy::primitives::Signature::from_erc2098(&self.signature)
            .recover_address_from_prehash(&digest)
            .ok()
    }
}

/// The packed form `commitBatch` takes: ascending member index, one
/// approval per member.
pub fn pack_approvals(approvals: &[Approval]) -> Bytes {
    let mut sorted: Vec<Approval> = approvals.to_vec();
    sorted.sort_by_key(|a| a.member_index);
    sorted.dedup_by_key(|a| a.member_index);
    let mut out = Vec::with_capacity(sorted.len() * APPROVAL_BYTES);
    for a in &sorted {
        out.extend_from_slice(&a.member_index.to_be_bytes());
        out.extend_from_slice(&a.signature);
    }
    out.into()
}

mod serde_sig {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(sig)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let bytes = <Vec<u8>>::deserialize(d)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("an approval signature is 64 bytes"))
    }
}
