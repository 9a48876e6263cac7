//! Typed calls to deployed contracts, and deploying Dharti's three.

use alloy::primitives::{Address, Bytes, U256};
use alloy::sol_types::{SolCall, SolConstructor};

use crate::batch::{Approval, Batch, pack_approvals};

use crate::bindings::{DemoEuro, EnergyCertificates, SettlementLedger};
use crate::chain::{Chain, ChainError, Receipt};

/// A deployed contract on a chain.
#[derive(Debug, Clone, Copy)]
pub struct Contract<'a> {
    pub chain: &'a Chain,
    pub address: Address,
}

impl<'a> Contract<'a> {
    pub fn new(chain: &'a Chain, address: Address) -> Self {
        Contract { chain, address }
    }

    /// Calls a view and decodes its return value.
    pub async fn view<C: SolCall>(&self, call: C) -> Result<C::Return, ChainError> {
        let out = self
            .chain
            .call(self.address, call.abi_encode().into())
            .await?;
        C::abi_decode_returns(&out).map_err(|e| {
            ChainError::Usage(format!("{} returned undecodable data: {e}", C::SIGNATURE))
        })
    }

    /// Sends a transaction calling `call` from `from`.
    pub async fn send<C: SolCall>(&self, from: Address, call: C) -> Result<Receipt, ChainError> {
        self.send_value(from, call, U256::ZERO).await
    }

    pub async fn send_value<C: SolCall>(
        &self,
        from: Address,
        call: C,
        value: U256,
    ) -> Result<Receipt, ChainError> {
        self.chain
            .send(from, Some(self.address), call.abi_encode().into(), value)
            .await
    }
}

/// Where Dharti's contracts live on one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deployment {
    pub ledger: Address,
    pub certificates: Address,
    /// The ERC-20 the ledger escrows besides native EWT.
    pub token: Address,
}

/// Deploys a contract from creation code plus encoded constructor arguments.
pub async fn deploy(
    chain: &Chain,
    from: Address,
    code: &[u8],
    args: Vec<u8>,
) -> Result<(Address, u64), ChainError> {
    let init: Bytes = [code, &args[..]].concat().into();
    let receipt = chain.send(from, None, init, U256::ZERO).await?;
    let address = receipt
        .contract_address
        .ok_or_else(|| ChainError::Usage("deployment receipt names no contract".into()))?;
    Ok((address, receipt.gas_used))
}

/// Deploys the ledger and the certificates with `admin` as their admin.
/// `token` is the ERC-20 to escrow; `None` deploys the demo euro, minted by
/// `admin`, first.
pub async fn deploy_all(
    chain: &Chain,
    admin: Address,
    token: Option<Address>,
) -> Result<Deployment, ChainError> {
    let token = match token {
        Some(token) => token,
        None => {
            deploy(chain, admin, &DemoEuro::BYTECODE, Vec::new())
                .await?
                .0
        }
    };
    let (ledger, _) = deploy(
        chain,
        admin,
        &SettlementLedger::BYTECODE,
        SettlementLedger::constructorCall {
            admin_: admin,
            token_: token,
        }
        .abi_encode(),
    )
    .await?;
    let (certificates, _) = deploy(
        chain,
        admin,
        &EnergyCertificates::BYTECODE,
        EnergyCertificates::constructorCall { admin_: admin }.abi_encode(),
    )
    .await?;
    Ok(Deployment {
        ledger,
        certificates,
        token,
    })
}

/// Commits a batch with its approvals (packed in member order).
pub async fn commit_batch(
    chain: &Chain,
    ledger: Address,
    from: Address,
    batch: &Batch,
    approvals: &[Approval],
) -> Result<Receipt, ChainError> {
    let call = SettlementLedger::commitBatchCall {
        header: batch.header.clone(),
        approvals: pack_approvals(approvals),
    };
    Contract::new(chain, ledger).send(from, call).await
}

/// Applies a committed batch's net positions, one transaction per chunk,
/// from the first chunk the chain has not applied yet: safe to call again
/// after a crash or an outage part-way, and beside another caller (it goes
/// on from wherever the chain is). Returns the receipts of the chunks this
/// call applied (none if the batch was settled already).
///
/// Before the first chunk of a batch of several, every payer's escrow is
/// checked: a payer short of escrow would stop the batch after earlier
/// chunks had collected their payers' money, which would then wait in the
/// ledger until that payer deposits. Starting only when all can pay makes
/// that a race (a payer withdrawing meanwhile), not the rule.
pub async fn settle_batch(
    chain: &Chain,
    ledger: Address,
    from: Address,
    batch: &Batch,
) -> Result<Vec<Receipt>, ChainError> {
    let ledger = Contract::new(chain, ledger);
    let (market, number) = (batch.header.market, batch.header.number);
    let chunks = batch.chunk_count().max(1);
    let mut receipts = Vec::new();
    // Each pass applies one chunk or learns that someone else did.
    for _ in 0..chunks * 2 + 2 {
        if ledger
            .view(SettlementLedger::isSettledCall { market, number })
            .await?
        {
            return Ok(receipts);
        }
        let progress = ledger
            .view(SettlementLedger::settlementProgressCall { market, number })
            .await?;
        let index = usize::try_from(progress.nextChunk).expect("u32 fits in usize");
        if index == 0 && chunks > 1 {
            check_payers(&ledger, batch).await?;
        }
        let call = batch.settle_call(index).ok_or_else(|| {
            ChainError::Usage(format!(
                "the chain expects chunk {index} of batch {number}, which has {} chunks: \
                 this node's batch differs from the anchored one",
                batch.chunk_count()
            ))
        })?;
        match ledger.send(from, call).await {
            Ok(receipt) => receipts.push(receipt),
            // Someone else applied this chunk or the rest meanwhile.
            Err(e) if matches!(e.revert_name(), Some("AlreadySettled" | "ChunkOutOfOrder")) => {}
            Err(e) => return Err(e),
        }
    }
    Err(ChainError::Usage(format!(
        "batch {number} did not settle in {} attempts",
        chunks * 2 + 2
    )))
}

/// Fails with [`ChainError::EscrowShort`] naming the first payer of `batch`
/// whose escrow does not cover its debit.
async fn check_payers(ledger: &Contract<'_>, batch: &Batch) -> Result<(), ChainError> {
    let market = ledger
        .view(SettlementLedger::marketsCall(batch.header.market))
        .await?;
    for p in batch.positions.iter().filter(|p| p.amount.is_negative()) {
        let owed = p.amount.unsigned_abs() * U256::from(market.scale);
        let held = if market.inToken {
            ledger
                .view(SettlementLedger::tokenBalanceCall(p.account))
                .await?
        } else {
            ledger
                .view(SettlementLedger::nativeBalanceCall(p.account))
                .await?
        };
        if held < owed {
            return Err(ChainError::EscrowShort(format!(
                "batch {}: {} holds {held} in escrow and owes {owed}; its settlement starts once it deposits",
                batch.header.number, p.account
            )));
        }
    }
    Ok(())
}
