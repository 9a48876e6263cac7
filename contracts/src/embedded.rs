//! The embedded chain: revm under London rules, in this process.
//!
//! Every transaction is mined at once in a block of its own; `mine_empty`
//! adds blocks with none (the JSON-RPC node does so every second, so
//! confirmations advance). Gas is priced at zero, so native balances move
//! only by value transfers. Signed raw transactions are checked like a real
//! node checks them: chain id, nonce, signature.

use std::collections::HashMap;

use alloy::consensus::transaction::SignerRecoverable;
use alloy::consensus::{Transaction, TxEnvelope};
use alloy::eips::eip2718::Decodable2718;
use alloy::primitives::{Address, B256, Bytes, Log, TxKind, U256, keccak256};
use revm::context::result::{ExecutionResult, Output};
use revm::context::{Context, TxEnv};
use revm::database::{CacheDB, EmptyDB};
use revm::primitives::hardfork::SpecId;
use revm::state::AccountInfo;
use revm::{ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext};

use crate::chain::{ChainError, EWC_BLOCK_GAS_LIMIT, LOCAL_CHAIN_ID, Receipt};

type Evm = revm::MainnetEvm<revm::handler::MainnetContext<CacheDB<EmptyDB>>>;

/// A mined transaction, reverted or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinedTx {
    pub hash: B256,
    pub from: Address,
    pub to: Option<Address>,
    pub block_number: u64,
    pub gas_used: u64,
    pub success: bool,
    pub logs: Vec<Log>,
    pub contract_address: Option<Address>,
    /// Return data, or revert data when `success` is false.
    pub output: Bytes,
}

impl MinedTx {
    pub fn into_receipt(self) -> Result<Receipt, ChainError> {
        if !self.success {
            return Err(ChainError::reverted(self.output));
        }
        Ok(Receipt {
            tx_hash: self.hash,
            block_number: self.block_number,
            gas_used: self.gas_used,
            logs: self.logs,
            contract_address: self.contract_address,
        })
    }
}

type Job = Box<dyn FnOnce(&mut EvmThread) + Send>;

/// A handle to the embedded chain. revm's interpreter is not `Send`, so the
/// EVM lives on a thread of its own and the handle sends it work; the
/// handle is `Send + Sync` and cheap to clone. Each call waits for its
/// answer (a transaction takes about a millisecond).
#[derive(Clone)]
pub struct EmbeddedChain {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl std::fmt::Debug for EmbeddedChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedChain")
    }
}

impl Default for EmbeddedChain {
    fn default() -> Self {
        Self::new()
    }
}

impl EmbeddedChain {
    pub fn new() -> Self {
        // Bounded: each caller waits for its answer, so a handful of jobs
        // are ever queued; a burst waits here rather than growing a queue.
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(64);
        std::thread::Builder::new()
            .name("dharti-evm".into())
            .spawn(move || {
                let mut evm = EvmThread::new();
                // Ends when the last handle is dropped.
                while let Ok(job) = queue.recv() {
                    job(&mut evm);
                }
            })
            .expect("the EVM thread starts");
        EmbeddedChain { jobs }
    }

    fn run<R: Send + 'static>(&self, job: impl FnOnce(&mut EvmThread) -> R + Send + 'static) -> R {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |evm| {
                let _ = reply.send(job(evm));
            }))
            .expect("the EVM thread lives as long as a handle");
        answer.recv().expect("the EVM thread answers every job")
    }

    pub fn block_number(&self) -> u64 {
        self.run(|e| e.block)
    }

    /// Adds a block without transactions.
    pub fn mine_empty(&self) {
        self.run(|e| e.next_block())
    }

    /// Sends from `from` without a signature (the in-process client).
    pub fn send(
        &self,
        from: Address,
        to: Option<Address>,
        input: Bytes,
        value: U256,
    ) -> Result<Receipt, ChainError> {
        self.run(move |e| e.execute(from, to, input, value, EWC_BLOCK_GAS_LIMIT, None))?
            .into_receipt()
    }

    /// Decodes, checks and mines a signed transaction (EIP-2718 envelope).
    /// Returns its hash; the receipt records whether it reverted.
    pub fn send_raw(&self, raw: Bytes) -> Result<B256, ChainError> {
        self.run(move |e| e.send_raw(&raw))
    }

    /// Runs a call against the latest state without changing it.
    pub fn call(
        &self,
        from: Address,
        to: Option<Address>,
        input: Bytes,
        value: U256,
    ) -> Result<Bytes, ChainError> {
        self.run(move |e| e.call(from, to, input, value))
    }

    /// Gas a transaction needs, with headroom for refunds.
    pub fn estimate(
        &self,
        from: Address,
        to: Option<Address>,
        input: Bytes,
        value: U256,
    ) -> Result<u64, ChainError> {
        self.run(move |e| e.estimate(from, to, input, value))
    }

    pub fn receipt(&self, hash: B256) -> Option<MinedTx> {
        self.run(move |e| e.mined.get(&hash).cloned())
    }

    pub fn balance(&self, account: Address) -> U256 {
        self.run(move |e| e.account(account).balance)
    }

    pub fn nonce(&self, account: Address) -> u64 {
        self.run(move |e| e.account(account).nonce)
    }

    pub fn set_balance(&self, account: Address, amount: U256) {
        self.run(move |e| e.set_balance(account, amount))
    }
}

/// The EVM and what it mined; lives on the EVM thread.
struct EvmThread {
    evm: Evm,
    block: u64,
    timestamp: u64,
    mined: HashMap<B256, MinedTx>,
}

impl EvmThread {
    const GENESIS_TIMESTAMP: u64 = 1_735_689_600; // 2025-01-01T00:00:00Z
    const BLOCK_TIME_S: u64 = 5; // EWC's block time

    fn new() -> Self {
        let evm = Context::mainnet()
            .modify_cfg_chained(|cfg| {
                cfg.set_spec_and_mainnet_gas_params(SpecId::LONDON);
                cfg.chain_id = LOCAL_CHAIN_ID;
                // Raw transactions' nonces are checked in `send_raw`; the
                // in-process client's are not its business.
                cfg.disable_nonce_check = true;
            })
            .modify_block_chained(|b| {
                b.number = U256::ZERO;
                b.timestamp = U256::from(Self::GENESIS_TIMESTAMP);
                b.basefee = 0;
                b.gas_limit = EWC_BLOCK_GAS_LIMIT;
            })
            .with_db(CacheDB::<EmptyDB>::default())
            .build_mainnet();
        EvmThread {
            evm,
            block: 0,
            timestamp: Self::GENESIS_TIMESTAMP,
            mined: HashMap::new(),
        }
    }

    fn next_block(&mut self) {
        self.block += 1;
        self.timestamp += Self::BLOCK_TIME_S;
        self.evm.ctx.block.number = U256::from(self.block);
        self.evm.ctx.block.timestamp = U256::from(self.timestamp);
    }

    fn tx(from: Address, to: Option<Address>, input: Bytes, value: U256, gas: u64) -> TxEnv {
        let builder = TxEnv::builder()
            .caller(from)
            .data(input)
            .value(value)
            .gas_limit(gas)
            .gas_price(0)
            .nonce(0)
            .chain_id(Some(LOCAL_CHAIN_ID));
        let builder = match to {
            Some(to) => builder.call(to),
            None => builder.create(),
        };
        builder.build().expect("a complete transaction environment")
    }

    /// Mines one transaction in a block of its own. An invalid transaction
    /// (not enough funds for the value, …) is an error; a revert is mined.
    fn execute(
        &mut self,
        from: Address,
        to: Option<Address>,
        input: Bytes,
        value: U256,
        gas: u64,
        hash: Option<B256>,
    ) -> Result<MinedTx, ChainError> {
        self.next_block();
        let hash = hash.unwrap_or_else(|| {
            keccak256([&self.block.to_be_bytes()[..], from.as_slice(), &input[..]].concat())
        });
        let tx = Self::tx(from, to, input, value, gas.min(EWC_BLOCK_GAS_LIMIT));
        let result = self
            .evm
            .transact_commit(tx)
            .map_err(|e| ChainError::Rejected(e.to_string()))?;
        let gas_used = result.tx_gas_used();
        let (success, logs, contract_address, output) = match result {
            ExecutionResult::Success { logs, output, .. } => match output {
                Output::Create(code, address) => (true, logs, address, code),
                Output::Call(data) => (true, logs, None, data),
            },
            ExecutionResult::Revert { output, .. } => (false, Vec::new(), None, output),
            ExecutionResult::Halt { reason, .. } => (
                false,
                Vec::new(),
                None,
                Bytes::from(format!("halted: {reason:?}").into_bytes()),
            ),
        };
        let mined = MinedTx {
            hash,
            from,
            to,
            block_number: self.block,
            gas_used,
            success,
            logs,
            contract_address,
            output,
        };
        self.mined.insert(hash, mined.clone());
        Ok(mined)
    }

    /// Decodes, checks and mines a signed transaction (EIP-2718 envelope).
    /// Returns its hash; the receipt records whether it reverted.
    fn send_raw(&mut self, raw: &[u8]) -> Result<B256, ChainError> {
        let envelope = TxEnvelope::decode_2718(&mut &raw[..])
            .map_err(|e| ChainError::Rejected(format!("undecodable transaction: {e}")))?;
        let from = envelope
            .recover_signer()
            .map_err(|e| ChainError::Rejected(format!("bad transaction signature: {e}")))?;
        if let Some(id) = envelope.chain_id()
            && id != LOCAL_CHAIN_ID
        {
            return Err(ChainError::Rejected(format!(
                "transaction for chain id {id}, this chain is {LOCAL_CHAIN_ID}"
            )));
        }
        let expected = self.account(from).nonce;
        if envelope.nonce() != expected {
            return Err(ChainError::Rejected(format!(
                "nonce {} for {from}, expected {expected}",
                envelope.nonce()
            )));
        }
        let hash = *envelope.tx_hash();
        if self.mined.contains_key(&hash) {
            return Err(ChainError::Rejected(format!(
                "transaction {hash} already known"
            )));
        }
        let to = match envelope.kind() {
            TxKind::Call(to) => Some(to),
            TxKind::Create => None,
        };
        self.execute(
            from,
            to,
            envelope.input().clone(),
            envelope.value(),
            envelope.gas_limit(),
            Some(hash),
        )?;
        Ok(hash)
    }

    /// Runs a transaction against the latest state without changing it;
    /// a revert or halt is an error. Returns the output and gas used.
    fn dry_run(
        &mut self,
        from: Address,
        to: Option<Address>,
        input: Bytes,
        value: U256,
    ) -> Result<(Bytes, u64), ChainError> {
        let tx = Self::tx(from, to, input, value, EWC_BLOCK_GAS_LIMIT);
        let outcome = self
            .evm
            .transact(tx)
            .map_err(|e| ChainError::Rejected(e.to_string()))?;
        let gas = outcome.result.tx_gas_used();
        match outcome.result {
            ExecutionResult::Success { output, .. } => Ok((output.into_data(), gas)),
            ExecutionResult::Revert { output, .. } => Err(ChainError::reverted(output)),
            ExecutionResult::Halt { reason, .. } => Err(ChainError::Reverted {
                reason: format!("halted: {reason:?}"),
                data: Bytes::new(),
            }),
        }
    }

    fn call(
        &mut self,
        from: Address,
        to: Option<Address>,
        input: Bytes,
        value: U256,
    ) -> Result<Bytes, ChainError> {
        self.dry_run(from, to, input, value).map(|(out, _)| out)
    }

    /// Gas a transaction needs: what it used, with headroom for refunds
    /// (which lower `gas_used` below the gas that must be available).
    fn estimate(
        &mut self,
        from: Address,
        to: Option<Address>,
        input: Bytes,
        value: U256,
    ) -> Result<u64, ChainError> {
        let (_, used) = self.dry_run(from, to, input, value)?;
        Ok((used + used / 4 + 10_000).min(EWC_BLOCK_GAS_LIMIT))
    }

    fn account(&mut self, account: Address) -> AccountInfo {
        match self.evm.ctx.journaled_state.database.load_account(account) {
            Ok(existing) => existing.info.clone(),
            Err(never) => match never {},
        }
    }

    fn set_balance(&mut self, account: Address, amount: U256) {
        // insert_account_info marks the account as existing; writing the
        // balance of a loaded-but-absent account would be ignored.
        let mut info = self.account(account);
        info.balance = amount;
        self.evm
            .ctx
            .journaled_state
            .database
            .insert_account_info(account, info);
    }
}
