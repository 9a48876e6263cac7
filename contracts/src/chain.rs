//! The chain client: one interface, two backends.
//!
//! - **JSON-RPC** through alloy, for anvil, Volta and the Energy Web Chain.
//!   Transactions are signed locally; a transaction counts as done only
//!   after the configured number of confirmations.
//! - **Embedded**: an in-process EVM (revm, London rules) running the same
//!   compiled contracts. Every transaction is mined at once in a block of
//!   its own, gas is priced at zero, so balances move only by what the
//!   contracts do. It is the default for `dharti demo` and for tests that
//!   need no RPC.
//!
//! Errors separate what retrying can fix ([`ChainError::Unavailable`]) from
//! what it cannot ([`ChainError::Reverted`], [`ChainError::Rejected`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, B256, Bytes, Log, U256, keccak256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolInterface;
use revm::context::result::{ExecutionResult, Output};
use revm::context::{Context, TxEnv};
use revm::database::{CacheDB, EmptyDB};
use revm::primitives::hardfork::SpecId;
use revm::state::AccountInfo;
use revm::{ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext};

use crate::bindings::{DemoEuro, EnergyCertificates, SettlementLedger};

/// Gas limit of an Energy Web Chain block; the embedded chain uses the same.
pub const EWC_BLOCK_GAS_LIMIT: u64 = 6_000_000;
/// The chain id of the embedded chain and of the anvil the tests start
/// (Volta's, as DESIGN.md asks for anvil).
pub const LOCAL_CHAIN_ID: u64 = 73_799;

/// Where a market anchors its settlements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Energy Web Chain main net (chain id 246).
    Ewc,
    /// Volta, the Energy Web test net (chain id 73799).
    Volta,
    /// A local anvil (chain id 73799, `anvil --chain-id 73799`).
    Anvil,
    /// The in-process EVM.
    Embedded,
}

impl Preset {
    pub const ALL: [Preset; 4] = [Preset::Ewc, Preset::Volta, Preset::Anvil, Preset::Embedded];

    pub fn chain_id(self) -> u64 {
        match self {
            Preset::Ewc => 246,
            Preset::Volta | Preset::Anvil | Preset::Embedded => LOCAL_CHAIN_ID,
        }
    }

    /// The public RPC endpoint, if the preset has one.
    pub fn default_rpc_url(self) -> Option<&'static str> {
        match self {
            Preset::Ewc => Some("https://rpc.energyweb.org"),
            Preset::Volta => Some("https://volta-rpc.energyweb.org"),
            Preset::Anvil => Some("http://127.0.0.1:8545"),
            Preset::Embedded => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Ewc => "ewc",
            Preset::Volta => "volta",
            Preset::Anvil => "anvil",
            Preset::Embedded => "embedded",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown chain preset {s:?}: use one of ewc, volta, anvil, embedded")
            })
    }
}

/// What a mined transaction left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub tx_hash: B256,
    pub block_number: u64,
    pub gas_used: u64,
    pub logs: Vec<Log>,
    pub contract_address: Option<Address>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The contract refused: retrying the same transaction will not help.
    #[error("reverted: {reason}")]
    Reverted { reason: String, data: Bytes },
    /// The node refused the transaction (nonce, funds, gas, chain id).
    #[error("rejected by the chain node: {0}")]
    Rejected(String),
    /// The node could not be reached or did not answer in time: retry later.
    #[error("chain unavailable: {0}")]
    Unavailable(String),
    #[error("wrong chain: the preset expects chain id {expected}, the node reports {actual}")]
    WrongChain { expected: u64, actual: u64 },
    #[error("{0}")]
    Usage(String),
}

impl ChainError {
    fn reverted(data: Bytes) -> Self {
        ChainError::Reverted {
            reason: describe_revert(&data),
            data,
        }
    }

    /// The custom error's name if this is a revert (`"BelowQuorum"`, …).
    pub fn revert_name(&self) -> Option<&str> {
        match self {
            ChainError::Reverted { reason, .. } => {
                Some(reason.split(['(', ' ', ':']).next().unwrap_or(reason))
            }
            _ => None,
        }
    }

    /// True if retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ChainError::Unavailable(_))
    }
}

/// Names a revert by the contracts' custom errors, or by its reason string.
pub fn describe_revert(data: &[u8]) -> String {
    if let Ok(e) = SettlementLedger::SettlementLedgerErrors::abi_decode(data) {
        return format!("{e:?}");
    }
    if let Ok(e) = EnergyCertificates::EnergyCertificatesErrors::abi_decode(data) {
        return format!("{e:?}");
    }
    if let Ok(e) = DemoEuro::DemoEuroErrors::abi_decode(data) {
        return format!("{e:?}");
    }
    if let Some(reason) = alloy::sol_types::decode_revert_reason(data) {
        return reason;
    }
    if data.is_empty() {
        "no reason given".to_owned()
    } else {
        format!("unknown error data {}", Bytes::copy_from_slice(data))
    }
}

/// A chain to read from and send transactions to.
#[derive(Debug)]
pub struct Chain {
    preset: Preset,
    chain_id: u64,
    backend: Backend,
}

enum Backend {
    Embedded(Box<Mutex<Embedded>>),
    Rpc(Box<Rpc>),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Embedded(_) => f.write_str("Embedded"),
            Backend::Rpc(rpc) => write!(f, "Rpc({})", rpc.url),
        }
    }
}

impl Chain {
    /// A fresh in-process chain with nothing deployed.
    pub fn embedded() -> Self {
        Chain {
            preset: Preset::Embedded,
            chain_id: LOCAL_CHAIN_ID,
            backend: Backend::Embedded(Box::new(Mutex::new(Embedded::new()))),
        }
    }

    /// Connects to a JSON-RPC node and checks it serves the preset's chain.
    /// `signers` are the keys this client may send from.
    pub async fn rpc(
        preset: Preset,
        url: &str,
        signers: Vec<PrivateKeySigner>,
        confirmations: u64,
        timeout: Duration,
    ) -> Result<Self, ChainError> {
        if preset == Preset::Embedded {
            return Err(ChainError::Usage(
                "the embedded preset has no RPC URL".into(),
            ));
        }
        let parsed = url
            .parse()
            .map_err(|e| ChainError::Usage(format!("chain RPC URL {url:?} is not a URL: {e}")))?;
        // reqwest is built without a default TLS provider (no aws-lc-rs) and
        // refuses to build a client without one, even for plain HTTP; ring is
        // installed once per process, before the first client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut wallet: Option<EthereumWallet> = None;
        for signer in signers {
            match wallet.as_mut() {
                Some(w) => w.register_signer(signer),
                None => wallet = Some(EthereumWallet::from(signer)),
            }
        }
        let builder = ProviderBuilder::new();
        let provider = match wallet {
            Some(w) => builder.wallet(w).connect_http(parsed).erased(),
            None => builder.connect_http(parsed).erased(),
        };
        let actual = tokio::time::timeout(timeout, provider.get_chain_id())
            .await
            .map_err(|_| {
                ChainError::Unavailable(format!("{url} did not answer within {timeout:?}"))
            })?
            .map_err(|e| ChainError::Unavailable(format!("{url}: {e}")))?;
        if actual != preset.chain_id() {
            return Err(ChainError::WrongChain {
                expected: preset.chain_id(),
                actual,
            });
        }
        Ok(Chain {
            preset,
            chain_id: actual,
            backend: Backend::Rpc(Box::new(Rpc {
                url: url.to_owned(),
                provider,
                confirmations,
                timeout,
            })),
        })
    }

    pub fn preset(&self) -> Preset {
        self.preset
    }

    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// Sends a transaction from `from` (a key this client holds) and waits
    /// until it is mined and confirmed. A revert is an error.
    pub async fn send(
        &self,
        from: Address,
        to: Option<Address>,
        input: Bytes,
        value: U256,
    ) -> Result<Receipt, ChainError> {
        match &self.backend {
            Backend::Embedded(evm) => lock(evm).send(from, to, input, value),
            Backend::Rpc(rpc) => rpc.send(from, to, input, value).await,
        }
    }

    /// Runs a call against the latest state without changing it.
    pub async fn call(&self, to: Address, input: Bytes) -> Result<Bytes, ChainError> {
        match &self.backend {
            Backend::Embedded(evm) => lock(evm).call(to, input),
            Backend::Rpc(rpc) => rpc.call(to, input).await,
        }
    }

    pub async fn balance(&self, account: Address) -> Result<U256, ChainError> {
        match &self.backend {
            Backend::Embedded(evm) => Ok(lock(evm).balance(account)),
            Backend::Rpc(rpc) => rpc.with_timeout(rpc.provider.get_balance(account)).await,
        }
    }

    pub async fn block_number(&self) -> Result<u64, ChainError> {
        match &self.backend {
            Backend::Embedded(evm) => Ok(lock(evm).block),
            Backend::Rpc(rpc) => rpc.with_timeout(rpc.provider.get_block_number()).await,
        }
    }

    /// Sets an account's native balance. Development chains only (the
    /// embedded EVM, anvil); a public chain refuses.
    pub async fn set_balance(&self, account: Address, amount: U256) -> Result<(), ChainError> {
        match &self.backend {
            Backend::Embedded(evm) => {
                lock(evm).set_balance(account, amount);
                Ok(())
            }
            Backend::Rpc(rpc) => {
                if self.preset != Preset::Anvil {
                    return Err(ChainError::Usage(format!(
                        "cannot mint native balance on {}",
                        self.preset
                    )));
                }
                rpc.with_timeout(rpc.provider.raw_request::<_, serde::de::IgnoredAny>(
                    "anvil_setBalance".into(),
                    (account, amount),
                ))
                .await
                .map(|_| ())
            }
        }
    }
}

fn lock(evm: &Mutex<Embedded>) -> std::sync::MutexGuard<'_, Embedded> {
    // A panic inside revm would leave nothing half-written we rely on.
    evm.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

type Evm = revm::MainnetEvm<revm::handler::MainnetContext<CacheDB<EmptyDB>>>;

struct Embedded {
    evm: Evm,
    block: u64,
    timestamp: u64,
}

impl Embedded {
    const GENESIS_TIMESTAMP: u64 = 1_735_689_600; // 2025-01-01T00:00:00Z
    const BLOCK_TIME_S: u64 = 5; // EWC's block time

    fn new() -> Self {
        let evm = Context::mainnet()
            .modify_cfg_chained(|cfg| {
                cfg.set_spec_and_mainnet_gas_params(SpecId::LONDON);
                cfg.chain_id = LOCAL_CHAIN_ID;
                // Nonces are the sender's business on a real chain; here every
                // transaction is mined at once, in order.
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
        Embedded {
            evm,
            block: 0,
            timestamp: Self::GENESIS_TIMESTAMP,
        }
    }

    fn tx(&self, from: Address, to: Option<Address>, input: Bytes, value: U256, gas: u64) -> TxEnv {
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

    fn send(
        &mut self,
        from: Address,
        to: Option<Address>,
        input: Bytes,
        value: U256,
    ) -> Result<Receipt, ChainError> {
        self.block += 1;
        self.timestamp += Self::BLOCK_TIME_S;
        self.evm.ctx.block.number = U256::from(self.block);
        self.evm.ctx.block.timestamp = U256::from(self.timestamp);
        let tx_hash =
            keccak256([&self.block.to_be_bytes()[..], from.as_slice(), &input[..]].concat());
        let tx = self.tx(from, to, input, value, EWC_BLOCK_GAS_LIMIT);
        let result = self
            .evm
            .transact_commit(tx)
            .map_err(|e| ChainError::Rejected(e.to_string()))?;
        let gas_used = result.tx_gas_used();
        match result {
            ExecutionResult::Success { logs, output, .. } => Ok(Receipt {
                tx_hash,
                block_number: self.block,
                gas_used,
                logs,
                contract_address: match output {
                    Output::Create(_, address) => address,
                    Output::Call(_) => None,
                },
            }),
            ExecutionResult::Revert { output, .. } => Err(ChainError::reverted(output)),
            ExecutionResult::Halt { reason, .. } => Err(ChainError::Reverted {
                reason: format!("halted: {reason:?}"),
                data: Bytes::new(),
            }),
        }
    }

    fn call(&mut self, to: Address, input: Bytes) -> Result<Bytes, ChainError> {
        let tx = self.tx(
            Address::ZERO,
            Some(to),
            input,
            U256::ZERO,
            EWC_BLOCK_GAS_LIMIT,
        );
        let outcome = self
            .evm
            .transact(tx)
            .map_err(|e| ChainError::Rejected(e.to_string()))?;
        match outcome.result {
            ExecutionResult::Success { output, .. } => Ok(output.into_data()),
            ExecutionResult::Revert { output, .. } => Err(ChainError::reverted(output)),
            ExecutionResult::Halt { reason, .. } => Err(ChainError::Reverted {
                reason: format!("halted: {reason:?}"),
                data: Bytes::new(),
            }),
        }
    }

    fn balance(&mut self, account: Address) -> U256 {
        self.evm
            .ctx
            .journaled_state
            .database
            .load_account(account)
            .map(|a| a.info.balance)
            .unwrap_or_default()
    }

    fn set_balance(&mut self, account: Address, amount: U256) {
        let db = &mut self.evm.ctx.journaled_state.database;
        // insert_account_info marks the account as existing; writing the
        // balance of a loaded-but-absent account would be ignored.
        let mut info: AccountInfo = match db.load_account(account) {
            Ok(existing) => existing.info.clone(),
            Err(never) => match never {},
        };
        info.balance = amount;
        db.insert_account_info(account, info);
    }
}

struct Rpc {
    url: String,
    provider: DynProvider,
    confirmations: u64,
    timeout: Duration,
}

impl Rpc {
    async fn with_timeout<T, E: fmt::Display>(
        &self,
        request: impl std::future::IntoFuture<Output = Result<T, E>>,
    ) -> Result<T, ChainError> {
        tokio::time::timeout(self.timeout, request.into_future())
            .await
            .map_err(|_| {
                ChainError::Unavailable(format!(
                    "{} did not answer within {:?}",
                    self.url, self.timeout
                ))
            })?
            .map_err(|e| ChainError::Unavailable(format!("{}: {e}", self.url)))
    }

    fn request(
        from: Option<Address>,
        to: Option<Address>,
        input: Bytes,
        value: U256,
    ) -> TransactionRequest {
        let mut tx = TransactionRequest::default()
            .with_input(input)
            .with_value(value);
        if let Some(from) = from {
            tx = tx.with_from(from);
        }
        match to {
            Some(to) => tx.with_to(to),
            None => tx.into_create(),
        }
    }

    async fn send(
        &self,
        from: Address,
        to: Option<Address>,
        input: Bytes,
        value: U256,
    ) -> Result<Receipt, ChainError> {
        // The nonce is read from the node for every transaction: a cached
        // nonce would leave a gap after a send that failed in estimation,
        // and every later transaction would wait behind it forever.
        let nonce = self
            .with_timeout(self.provider.get_transaction_count(from).pending())
            .await?;
        let tx = Self::request(Some(from), to, input.clone(), value).with_nonce(nonce);
        let pending = tokio::time::timeout(self.timeout, self.provider.send_transaction(tx))
            .await
            .map_err(|_| {
                ChainError::Unavailable(format!(
                    "{} did not answer within {:?}",
                    self.url, self.timeout
                ))
            })?
            .map_err(|e| classify(&self.url, e))?;
        let tx_hash = *pending.tx_hash();
        let receipt = pending
            .with_required_confirmations(self.confirmations.max(1))
            .with_timeout(Some(self.timeout))
            .get_receipt()
            .await
            .map_err(|e| {
                ChainError::Unavailable(format!("{}: waiting for {tx_hash}: {e}", self.url))
            })?;
        if !receipt.status() {
            // Mined but reverted (the estimate passed, the state moved on).
            // Replaying it as a call names the reason.
            let replay = Self::request(Some(from), to, input, value);
            let reason = match self.provider.call(replay).await {
                Err(e) => classify(&self.url, e),
                Ok(_) => ChainError::Reverted {
                    reason: format!("transaction {tx_hash} reverted"),
                    data: Bytes::new(),
                },
            };
            return Err(reason);
        }
        Ok(Receipt {
            tx_hash,
            block_number: receipt.block_number.unwrap_or_default(),
            gas_used: receipt.gas_used,
            logs: receipt.logs().iter().map(|l| l.inner.clone()).collect(),
            contract_address: receipt.contract_address,
        })
    }

    async fn call(&self, to: Address, input: Bytes) -> Result<Bytes, ChainError> {
        let tx = Self::request(None, Some(to), input, U256::ZERO);
        tokio::time::timeout(self.timeout, self.provider.call(tx).into_future())
            .await
            .map_err(|_| {
                ChainError::Unavailable(format!(
                    "{} did not answer within {:?}",
                    self.url, self.timeout
                ))
            })?
            .map_err(|e| classify(&self.url, e))
    }
}

/// Sorts an RPC failure into revert, rejection or outage.
fn classify(url: &str, e: alloy::transports::TransportError) -> ChainError {
    if let Some(payload) = e.as_error_resp() {
        if let Some(data) = payload.as_revert_data() {
            return ChainError::reverted(data);
        }
        if payload.message.contains("revert") {
            return ChainError::Reverted {
                reason: payload.message.to_string(),
                data: Bytes::new(),
            };
        }
        return ChainError::Rejected(payload.message.to_string());
    }
    ChainError::Unavailable(format!("{url}: {e}"))
}
