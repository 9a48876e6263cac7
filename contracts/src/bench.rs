//! `dharti chain bench-gas`: what anchoring and settling a batch costs, on
//! the embedded EVM running the committed contracts.
//!
//! The market: `households` households, the first `approvers` of them
//! members who all approve (threshold = approvers); `trades` trades between
//! them, with grid fees to a grid operator's account. Everyone holds escrow.
//! One batch is committed, then settled chunk by chunk; one trade's proof is
//! verified in a transaction.

use std::collections::BTreeMap;

use alloy::primitives::{Address, U256, keccak256};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use serde::Serialize;

use crate::batch::{Approval, Batch, signing_hash};
use crate::bindings::SettlementLedger::{self, TradeRecord};
use crate::chain::{Chain, ChainError, EWC_BLOCK_GAS_LIMIT};
use crate::contract::{Contract, commit_batch, deploy_all, settle_batch};

/// One JSON line of `dharti chain bench-gas`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GasReport {
    pub trades: usize,
    pub approvers: usize,
    pub households: usize,
    /// Accounts whose net position the settlement applies (households
    /// that traded, plus the grid operator).
    pub participants: usize,
    /// Gas of the `commitBatch` transaction (intrinsic 21,000 included).
    pub gas_per_batch: u64,
    pub gas_per_trade: f64,
    /// Gas of all `settleChunk` transactions together.
    pub settle_gas: u64,
    /// Settlement transactions: one per chunk of at most 32 accounts.
    pub settle_transactions: usize,
    pub gas_per_participant_settlement: u64,
    /// Gas of a transaction calling `verifyTrade` on one record.
    pub proof_verify_gas: u64,
    pub proof_depth: usize,
    /// The largest share of an EWC block any one transaction used.
    pub max_block_share: f64,
}

/// Deterministic key `i` of the bench (never used outside it).
pub fn bench_key(i: usize) -> PrivateKeySigner {
    let seed = keccak256(format!("dharti bench-gas key {i}"));
    PrivateKeySigner::from_bytes(&seed)
        .expect("a hash is a valid secp256k1 key with overwhelming probability")
}

pub async fn run(
    trades: usize,
    approvers: usize,
    households: usize,
) -> Result<GasReport, ChainError> {
    if approvers == 0 || approvers > 1000 {
        return Err(ChainError::Usage(
            "--approvers must be between 1 and 1000".into(),
        ));
    }
    if households < approvers || households > 100_000 {
        return Err(ChainError::Usage(format!(
            "--households must be between --approvers ({approvers}) and 100000"
        )));
    }
    if trades == 0 {
        return Err(ChainError::Usage("--trades must be at least 1".into()));
    }
    let chain = Chain::embedded();
    let keys: Vec<PrivateKeySigner> = (0..households).map(bench_key).collect();
    let admin = bench_key(usize::MAX).address();
    let grid_operator = bench_key(usize::MAX - 1).address();
    let deployment = deploy_all(&chain, admin, None).await?;
    let ledger = Contract::new(&chain, deployment.ledger);
    ledger
        .send(
            admin,
            SettlementLedger::addMembersCall {
                accounts: keys[..approvers].iter().map(|k| k.address()).collect(),
            },
        )
        .await?;
    let threshold = u16::try_from(approvers).expect("at most 1000");
    ledger
        .send(
            admin,
            SettlementLedger::setThresholdCall { next: threshold },
        )
        .await?;
    ledger
        .send(
            admin,
            SettlementLedger::registerMarketCall {
                marketId: keccak256("bench-market"),
                inToken: false,
                scale: 1_000_000_000_000,
            },
        )
        .await?;
    let market = 1; // the first market registered
    // Every household holds escrow, so settlement debits real balances.
    for k in &keys {
        chain
            .set_balance(k.address(), U256::from(10u128.pow(30)))
            .await?;
        ledger
            .send_value(
                k.address(),
                SettlementLedger::depositCall {},
                U256::from(10u128.pow(28)),
            )
            .await?;
    }

    let batch = bench_batch(market, &keys, grid_operator, trades);
    let digest = signing_hash(&batch.header, chain.chain_id(), deployment.ledger);
    let approvals: Vec<Approval> = keys[..approvers]
        .iter()
        .enumerate()
        .map(|(i, k)| Approval::sign(k, u16::try_from(i).expect("at most 1000"), digest))
        .collect();
    let committer = keys[0].address();
    let commit = commit_batch(&chain, deployment.ledger, committer, &batch, &approvals).await?;
    let settles = settle_batch(&chain, deployment.ledger, committer, &batch).await?;
    let settle_gas: u64 = settles.iter().map(|r| r.gas_used).sum();
    let largest_settle = settles.iter().map(|r| r.gas_used).max().unwrap_or(0);
    let proof = batch.trade_proof(0).expect("at least one trade");
    let proof_depth = proof.len();
    let verify_call = SettlementLedger::verifyTradeCall {
        market,
        number: 0,
        record: batch.trades[0].clone(),
        proof,
        netRoot: batch.header.netRoot,
    };
    let verified = ledger.view(verify_call.clone()).await?;
    if !verified {
        return Err(ChainError::Usage(
            "the bench's own trade proof did not verify".into(),
        ));
    }
    let verify = chain
        .send(
            committer,
            Some(deployment.ledger),
            verify_call.abi_encode().into(),
            U256::ZERO,
        )
        .await?;

    let participants = batch.positions.len();
    let largest = commit.gas_used.max(largest_settle);
    Ok(GasReport {
        trades,
        approvers,
        households,
        participants,
        gas_per_batch: commit.gas_used,
        gas_per_trade: round2(commit.gas_used as f64 / trades as f64),
        settle_gas,
        settle_transactions: settles.len(),
        gas_per_participant_settlement: settle_gas / participants.max(1) as u64,
        proof_verify_gas: verify.gas_used,
        proof_depth,
        max_block_share: round2(largest as f64 / EWC_BLOCK_GAS_LIMIT as f64),
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `trades` trades between the households, seeded by their index, with
/// every trade's money netted into positions exactly as the market does.
fn bench_batch(
    market: u32,
    keys: &[PrivateKeySigner],
    grid_operator: Address,
    trades: usize,
) -> Batch {
    let n = keys.len();
    let mut records = Vec::with_capacity(trades);
    let mut net: BTreeMap<Address, i64> = BTreeMap::new();
    for i in 0..trades {
        let buyer = keys[i % n].address();
        let seller = keys[(i * 7 + 1) % n].address();
        let energy_wh = 100 + (i as u64 * 37) % 900;
        let price = 120_000 + (i as u64 * 1_013) % 60_000;
        let value = energy_wh * price / 1000;
        let fee = energy_wh * 20_000 / 1000;
        let id = keccak256((i as u64).to_be_bytes());
        records.push(TradeRecord {
            interval: (i / 64) as u64,
            bidId: id,
            askId: keccak256(id),
            buyer,
            seller,
            energyWh: energy_wh,
            priceMicroPerKwh: price,
            valueMicro: value,
            gridFeeMicro: fee,
            surplusMicro: 0,
        });
        let signed = |v: u64| i64::try_from(v).expect("small amounts");
        *net.entry(buyer).or_default() -= signed(value + fee);
        *net.entry(seller).or_default() += signed(value);
        *net.entry(grid_operator).or_default() += signed(fee);
    }
    let last_interval = records.last().map(|r| r.interval).unwrap_or(0);
    Batch::new(market, 0, 0, last_interval, records, &net).expect("trades net to zero")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_batch_costs_the_same_for_ten_and_a_thousand_trades() {
        let small = run(10, 10, 10).await.expect("bench runs");
        let large = run(1000, 10, 10).await.expect("bench runs");
        // Only roots and approvals go on chain: calldata is identical in
        // size, only the roots' zero bytes differ.
        assert!(
            small.gas_per_batch.abs_diff(large.gas_per_batch) < 500,
            "{small:?} {large:?}"
        );
        assert_eq!(small.participants, large.participants);
        assert!(large.proof_depth >= 10);
        assert!(large.proof_verify_gas > small.proof_verify_gas);
    }

    /// Issue 5's gas targets, as a regression guard: gas is deterministic,
    /// not a timing. The figures are `dharti chain bench-gas`'s.
    #[tokio::test]
    async fn the_gas_targets_hold_with_ten_approvers() {
        for trades in [10, 10_000] {
            let r = run(trades, 10, 10).await.expect("bench runs");
            assert!(r.gas_per_batch <= 100_000, "{r:?}");
            assert!(r.gas_per_participant_settlement <= 35_000, "{r:?}");
            assert!(r.proof_verify_gas <= 40_000, "{r:?}");
            assert!(r.max_block_share < 0.1, "{r:?}");
        }
    }

    /// A neighbourhood too large for one settlement transaction is settled
    /// in chunks, none of which comes near EWC's block gas limit.
    #[tokio::test]
    async fn a_large_neighbourhood_settles_in_chunks_well_under_the_block_limit() {
        let r = run(2_000, 10, 300).await.expect("bench runs");
        // 300 households and the grid operator, all of whom trade.
        assert_eq!(r.participants, 301, "{r:?}");
        assert_eq!(r.settle_transactions, 301usize.div_ceil(32), "{r:?}");
        assert!(r.gas_per_participant_settlement <= 35_000, "{r:?}");
        assert!(r.max_block_share < 0.2, "{r:?}");
        assert!(r.gas_per_batch <= 100_000, "{r:?}");
    }
}
