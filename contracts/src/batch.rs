//! Settlement batches: the header members approve, the two Merkle trees
//! behind it, EIP-712 approvals and their packed on-chain form.

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, Bytes, I256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{Eip712Domain, SolStruct, SolValue, eip712_domain};

use crate::bindings::SettlementLedger::{BatchHeader, Position, TradeRecord};
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

/// A market's batch: trades and net positions over a run of intervals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub header: BatchHeader,
    pub trades: Vec<TradeRecord>,
    /// Non-zero net positions in ascending account order (the contract's order).
    pub positions: Vec<Position>,
    records: MerkleTree,
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
        if last_interval < first_interval {
            return Err(BatchError::EmptyRange {
                first: first_interval,
                last: last_interval,
            });
        }
        let sum: i128 = net.values().map(|v| i128::from(*v)).sum();
        if sum != 0 {
            return Err(BatchError::NotBalanced(sum));
        }
        let positions: Vec<Position> = net
            .iter()
            .filter(|(_, amount)| **amount != 0)
            .map(|(account, amount)| Position {
                account: *account,
                amount: I256::try_from(*amount).expect("i64 fits in int256"),
            })
            .collect();
        let records = MerkleTree::new(trades.iter().map(|t| trade_leaf(market, t)).collect());
        let net_tree = MerkleTree::new(
            positions
                .iter()
                .map(|p| position_leaf(p.account, p.amount))
                .collect(),
        );
        Ok(Batch {
            header: BatchHeader {
                market,
                number,
                firstInterval: first_interval,
                lastInterval: last_interval,
                recordsRoot: records.root(),
                netRoot: net_tree.root(),
            },
            trades,
            positions,
            records,
        })
    }

    /// The Merkle proof of trade `index` against the records root.
    pub fn trade_proof(&self, index: usize) -> Option<Vec<B256>> {
        self.records.proof(index)
    }
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
