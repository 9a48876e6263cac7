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
use std::time::Duration;

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, B256, Bytes, Log, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolInterface;

use crate::bindings::{DemoEuro, EnergyCertificates, SettlementLedger};
use crate::embedded::EmbeddedChain;

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
    /// A payer's escrow does not cover its debit in a settlement of several
    /// transactions, which is therefore not started: it waits for a deposit.
    #[error("escrow short: {0}")]
    EscrowShort(String),
    #[error("wrong chain: the preset expects chain id {expected}, the node reports {actual}")]
    WrongChain { expected: u64, actual: u64 },
    #[error("{0}")]
    Usage(String),
}

impl ChainError {
    pub(crate) fn reverted(data: Bytes) -> Self {
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
    Embedded(EmbeddedChain),
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
            backend: Backend::Embedded(EmbeddedChain::new()),
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
        // `embedded` over RPC is a `dharti chain node` (the demo runs one).
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
            Backend::Embedded(evm) => evm.send(from, to, input, value),
            Backend::Rpc(rpc) => rpc.send(from, to, input, value).await,
        }
    }

    /// Runs a call against the latest state without changing it.
    pub async fn call(&self, to: Address, input: Bytes) -> Result<Bytes, ChainError> {
        match &self.backend {
            Backend::Embedded(evm) => evm.call(Address::ZERO, Some(to), input, U256::ZERO),
            Backend::Rpc(rpc) => rpc.call(to, input).await,
        }
    }

    pub async fn balance(&self, account: Address) -> Result<U256, ChainError> {
        match &self.backend {
            Backend::Embedded(evm) => Ok(evm.balance(account)),
            Backend::Rpc(rpc) => rpc.with_timeout(rpc.provider.get_balance(account)).await,
        }
    }

    pub async fn block_number(&self) -> Result<u64, ChainError> {
        match &self.backend {
            Backend::Embedded(evm) => Ok(evm.block_number()),
            Backend::Rpc(rpc) => rpc.with_timeout(rpc.provider.get_block_number()).await,
        }
    }

    /// Sets an account's native balance. Development chains only (the
    /// embedded EVM, anvil); a public chain refuses.
    pub async fn set_balance(&self, account: Address, amount: U256) -> Result<(), ChainError> {
        match &self.backend {
            Backend::Embedded(evm) => {
                evm.set_balance(account, amount);
                Ok(())
            }
            Backend::Rpc(rpc) => {
                if !matches!(self.preset, Preset::Anvil | Preset::Embedded) {
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

struct Rpc {
    url: String,
    provider: DynProvider,
    confirmations: u64,
    timeout: Duration,
}

impl Rpc {
    fn timed_out(&self) -> ChainError {
        ChainError::Unavailable(format!(
            "{} did not answer within {:?}",
            self.url, self.timeout
        ))
    }

    async fn with_timeout<T, E: fmt::Display>(
        &self,
        request: impl std::future::IntoFuture<Output = Result<T, E>>,
    ) -> Result<T, ChainError> {
        tokio::time::timeout(self.timeout, request.into_future())
            .await
            .map_err(|_| self.timed_out())?
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
        // A legacy gas price: EWC and Volta price gas that way, and it spares
        // the fee-history round trips of EIP-1559 estimation.
        let gas_price = self.with_timeout(self.provider.get_gas_price()).await?;
        let tx = Self::request(Some(from), to, input.clone(), value)
            .with_nonce(nonce)
            .with_gas_price(gas_price);
        let pending = tokio::time::timeout(self.timeout, self.provider.send_transaction(tx))
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|e| classify(&self.url, e))?;
        let tx_hash = *pending.tx_hash();
        let receipt = self.wait_for(tx_hash).await?;
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

    /// Polls for the receipt, then for `confirmations` blocks on top of it
    /// (counting its own), within the timeout. Plain polling of two methods
    /// every node serves, no filters or subscriptions.
    async fn wait_for(
        &self,
        tx_hash: B256,
    ) -> Result<alloy::rpc::types::TransactionReceipt, ChainError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let poll = if self.url.contains("127.0.0.1") || self.url.contains("localhost") {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(2)
        };
        loop {
            let receipt = self
                .with_timeout(self.provider.get_transaction_receipt(tx_hash))
                .await?;
            if let Some(receipt) = receipt {
                let mined_in = receipt.block_number.unwrap_or_default();
                let head = self.with_timeout(self.provider.get_block_number()).await?;
                if head + 1 >= mined_in + self.confirmations.max(1) {
                    return Ok(receipt);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ChainError::Unavailable(format!(
                    "{}: {tx_hash} not confirmed ({} confirmations) within {:?}",
                    self.url, self.confirmations, self.timeout
                )));
            }
            tokio::time::sleep(poll).await;
        }
    }

    async fn call(&self, to: Address, input: Bytes) -> Result<Bytes, ChainError> {
        let tx = Self::request(None, Some(to), input, U256::ZERO);
        tokio::time::timeout(self.timeout, self.provider.call(tx).into_future())
            .await
            .map_err(|_| self.timed_out())?
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
