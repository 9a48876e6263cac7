//! Chains for the contract tests: the embedded EVM always, and a real anvil
//! from the project's node_modules (or PATH) when there is one.
//! `./scripts/test` installs anvil and sets `DHARTI_REQUIRE_ANVIL=1`, so in
//! CI every contract test runs against both.
#![allow(dead_code, unreachable_pub)]

use std::process::Child;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use dharti_contracts::{Chain, Preset};

/// anvil's well-known development keys (mnemonic "test test … junk").
pub const DEV_KEYS: [&str; 10] = [
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "dbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
];

pub fn keys() -> Vec<PrivateKeySigner> {
    DEV_KEYS
        .iter()
        .map(|k| k.parse().expect("a valid dev key"))
        .collect()
}

/// A key no chain knows: signs, but is nobody's member.
pub fn stranger() -> PrivateKeySigner {
    "1111111111111111111111111111111111111111111111111111111111111111"
        .parse()
        .expect("a valid key")
}

/// A running anvil, killed on drop.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    pub url: String,
}

impl Anvil {
    pub fn start() -> Option<Anvil> {
        if dharti_contracts::anvil::binary().is_none() {
            assert!(
                std::env::var_os("DHARTI_REQUIRE_ANVIL").is_none(),
                "DHARTI_REQUIRE_ANVIL is set but no anvil was found (npm install puts it in node_modules/.bin)"
            );
            eprintln!("anvil not found: running the embedded EVM only");
            return None;
        }
        let (child, url) = dharti_contracts::anvil::spawn(&[]).expect("anvil starts");
        Some(Anvil { child, url })
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One chain to run a test against, with native funds for every dev key.
#[derive(Debug)]
pub struct TestChain {
    pub chain: Chain,
    pub name: &'static str,
    _anvil: Option<Anvil>,
}

pub async fn embedded() -> TestChain {
    let chain = Chain::embedded();
    fund(&chain).await;
    TestChain {
        chain,
        name: "embedded",
        _anvil: None,
    }
}

pub async fn anvil() -> Option<TestChain> {
    let anvil = Anvil::start()?;
    let chain = Chain::rpc(
        Preset::Anvil,
        &anvil.url,
        keys(),
        1,
        Duration::from_secs(30),
    )
    .await
    .expect("anvil answers");
    fund(&chain).await;
    Some(TestChain {
        chain,
        name: "anvil",
        _anvil: Some(anvil),
    })
}

/// The embedded chain served over JSON-RPC (`dharti chain node`), as the
/// demo's daemons reach it.
pub async fn embedded_node() -> TestChain {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    let chain = dharti_contracts::embedded::EmbeddedChain::new();
    tokio::spawn(dharti_contracts::rpc_node::serve(
        listener,
        chain,
        Duration::from_millis(200),
        std::future::pending(),
    ));
    let chain = Chain::rpc(Preset::Embedded, &url, keys(), 1, Duration::from_secs(30))
        .await
        .expect("the node answers");
    fund(&chain).await;
    TestChain {
        chain,
        name: "embedded-node",
        _anvil: None,
    }
}

/// Every backend available here.
pub async fn chains() -> Vec<TestChain> {
    let mut all = vec![embedded().await, embedded_node().await];
    all.extend(anvil().await);
    all
}

async fn fund(chain: &Chain) {
    for k in keys() {
        chain
            .set_balance(k.address(), U256::from(10u128.pow(24)))
            .await
            .expect("a development chain mints");
    }
}

pub fn addresses(keys: &[PrivateKeySigner]) -> Vec<Address> {
    keys.iter().map(|k| k.address()).collect()
}
