//! The Dharti daemon as a library: the `dharti` binary's subcommands and the
//! daemon's tasks, so that end-to-end tests and tools can reuse them.
//!
//! - [`run`]: `init` and `run`, wiring the tasks together;
//! - [`network`]: the task that owns the libp2p Swarm;
//! - [`driver`]: the market task around `protocol::Node`, with storage;
//! - [`api`]: the HTTP API and `/metrics`; [`metrics`]: what it counts;
//! - [`config`], [`identity`], [`meter`]: the node's files and meter;
//! - [`backup`]: backup and restore of a node;
//! - [`demo`]: real daemons on this machine; [`mesh`]: their benchmark; [`simulate`]: the simulator;
//! - [`heap`]: freed heap back to the kernel once per interval;
//! - [`client`]: the CLI's HTTP client; [`book`], [`mod@bench`]: offline tools.

/// `println!` that does not panic when standard output is closed (piped
/// into `head`, say): the line is dropped instead.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod anchor;
pub mod api;
pub mod backup;
pub mod bench;
pub mod book;
pub mod chain_cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod demo_chain;
pub mod driver;
pub mod heap;
pub mod identity;
pub mod mesh;
pub mod meter;
pub mod metrics;
pub mod network;
pub mod run;
pub mod simulate;
