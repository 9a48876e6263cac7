//! Dharti on the Energy Web Chain: the contracts' bindings, settlement
//! batches and their Merkle trees, and the chain client with its two
//! backends (JSON-RPC through alloy, or an embedded EVM).
//!
//! Only this crate knows the chain (DESIGN.md). docs/chain.md describes the
//! contracts, what goes on chain and what does not.

#![forbid(unsafe_code)]

pub mod anvil;
pub mod batch;
pub mod bench;
pub mod bindings;
pub mod chain;
pub mod contract;
pub mod embedded;
pub mod merkle;
pub mod rpc_node;

pub use alloy;
pub use batch::{Approval, Batch, BatchError};
pub use chain::{Chain, ChainError, Preset, Receipt};
pub use contract::{Contract, Deployment, deploy_all};
