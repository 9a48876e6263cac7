//! `dharti chain node | deploy | status | deposit | withdraw`, `dharti proof`,
//! `dharti certificates`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use dharti_contracts::alloy::primitives::{Address, B256, U256, keccak256};
use dharti_contracts::bindings::{EnergyCertificates, SettlementLedger};
use dharti_contracts::{Chain, Contract, Preset, deploy_all};
use dharti_protocol::node::quorum_of;
use serde::Serialize;

use crate::anchor::{self, ChainSettings};
use crate::config::Config;

/// `dharti chain node`: the embedded chain over JSON-RPC until Ctrl-C.
pub async fn node(listen: &str, block_time_s: u64) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}: cannot bind"))?;
    crate::say!(
        "dharti chain node: embedded EVM (London, chain id {}), a block every {block_time_s} s",
        dharti_contracts::chain::LOCAL_CHAIN_ID
    );
    crate::say!("Listening on {}", listener.local_addr()?);
    dharti_contracts::rpc_node::serve(
        listener,
        dharti_contracts::embedded::EmbeddedChain::new(),
        Duration::from_secs(block_time_s.max(1)),
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await?;
    Ok(())
}

/// The config's chain settings and a client sending with this node's key.
async fn open(
    config_path: &Path,
) -> anyhow::Result<(
    ChainSettings,
    Chain,
    dharti_contracts::alloy::signers::local::PrivateKeySigner,
)> {
    let config = Config::load(config_path)?;
    ensure!(
        config.chain.enabled(),
        "chain.preset is \"none\": this node does not anchor (docs/chain.md)"
    );
    let settings = config.chain_settings()?;
    let (chain, key) = connect(&settings).await?;
    Ok((settings, chain, key))
}

async fn connect(
    settings: &ChainSettings,
) -> anyhow::Result<(
    Chain,
    dharti_contracts::alloy::signers::local::PrivateKeySigner,
)> {
    let key = anchor::load_evm_key(&settings.evm_key_file)?;
    ensure!(
        settings.rpc_url.is_some(),
        "chain.rpc_url is empty and the preset is embedded: an in-process chain lives only inside a running \
         daemon; run `dharti chain node` and set chain.rpc_url to it"
    );
    let chain = anchor::connect(settings, &key).await?;
    Ok((chain, key))
}

/// Sets `keys` in the `[chain]` section of the config text (adding the
/// section if there is none), keeping every other line and comment.
pub fn set_chain_keys(text: &str, keys: &[(&str, String)]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut in_chain = false;
    let mut inserted = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_chain = trimmed.starts_with("[chain]");
            out.push(line.to_owned());
            if in_chain {
                for (k, v) in keys {
                    out.push(format!("{k} = {v}"));
                }
                inserted = true;
            }
            continue;
        }
        let is_set = in_chain
            && keys.iter().any(|(k, _)| {
                trimmed
                    .strip_prefix(k)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            });
        if !is_set {
            out.push(line.to_owned());
        }
    }
    if !inserted {
        out.push(String::new());
        out.push("[chain]".into());
        for (k, v) in keys {
            out.push(format!("{k} = {v}"));
        }
    }
    out.join("\n") + "\n"
}

/// `dharti chain deploy`: deploys the ledger and the certificates with
/// this node's EVM key as admin (the co-op's node), makes every account in
/// `chain.accounts` a member, registers the market, names this node an
/// issuer, and writes the addresses into the config.
pub async fn deploy(
    config_path: &Path,
    preset: Preset,
    rpc_url: Option<String>,
) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let rpc_url = rpc_url
        .or_else(|| (!config.chain.rpc_url.is_empty()).then(|| config.chain.rpc_url.clone()))
        .or_else(|| preset.default_rpc_url().map(str::to_owned))
        .context("--preset embedded needs --rpc-url (a `dharti chain node`)")?;
    let key = anchor::load_evm_key(&config.path(&config.chain.evm_key_file))?;
    let chain = Chain::rpc(
        preset,
        &rpc_url,
        vec![key.clone()],
        1,
        Duration::from_secs(120),
    )
    .await?;
    let me = key.address();
    if matches!(preset, Preset::Anvil | Preset::Embedded) && chain.balance(me).await?.is_zero() {
        chain.set_balance(me, U256::from(10u128.pow(22))).await?;
    }
    ensure!(
        !chain.balance(me).await?.is_zero(),
        "{me} (chain.evm_key_file) has no {preset} funds for gas: fund it first (Volta: the Energy Web faucet)"
    );
    let deployment = deploy_all(&chain, me, None).await?;
    let ledger = Contract::new(&chain, deployment.ledger);
    let mut members: Vec<Address> = Vec::new();
    for (id, evm) in &config.chain.accounts {
        members.push(
            evm.parse()
                .map_err(|_| anyhow::anyhow!("chain.accounts.{id} = {evm:?} is not an address"))?,
        );
    }
    if members.is_empty() {
        members.push(me);
    }
    members.sort();
    members.dedup();
    ledger
        .send(
            me,
            SettlementLedger::addMembersCall {
                accounts: members.clone(),
            },
        )
        .await?;
    // More than the market's quorum share of the members, as finality.
    let threshold = quorum_of(members.len(), config.node_config()?.quorum_ppm);
    ledger
        .send(
            me,
            SettlementLedger::setThresholdCall {
                next: u16::try_from(threshold).unwrap_or(u16::MAX),
            },
        )
        .await?;
    ledger
        .send(
            me,
            SettlementLedger::registerMarketCall {
                marketId: keccak256(config.market.name.as_bytes()),
                inToken: false,
                scale: crate::demo_chain::NATIVE_SCALE,
            },
        )
        .await?;
    let market_index = ledger.view(SettlementLedger::marketCountCall {}).await?;
    Contract::new(&chain, deployment.certificates)
        .send(
            me,
            EnergyCertificates::setIssuerCall {
                issuer: me,
                enabled: true,
            },
        )
        .await?;
    let text = std::fs::read_to_string(config_path)?;
    let text = set_chain_keys(
        &text,
        &[
            ("preset", format!("\"{preset}\"")),
            ("rpc_url", format!("\"{rpc_url}\"")),
            ("ledger", format!("\"{}\"", deployment.ledger)),
            ("certificates", format!("\"{}\"", deployment.certificates)),
            ("market_index", market_index.to_string()),
        ],
    );
    std::fs::write(config_path, text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    crate::say!(
        "{}",
        serde_json::json!({
            "preset": preset.name(),
            "chain_id": chain.chain_id(),
            "ledger": deployment.ledger,
            "certificates": deployment.certificates,
            "token": deployment.token,
            "market_index": market_index,
            "members": members,
            "threshold": threshold,
            "config": config_path,
        })
    );
    if config.chain.accounts.is_empty() || config.chain.grid_operator.is_empty() {
        crate::say!(
            "next: list every member's EVM address in chain.accounts and set chain.grid_operator and \
             chain.anchor_from_interval (the same in every member's config), then share the addresses above"
        );
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct Status {
    preset: String,
    chain_id: u64,
    block: u64,
    ledger: Address,
    market_index: u32,
    evm_address: Address,
    member_index: Option<usize>,
    members: usize,
    threshold: u16,
    batches_committed: u64,
    /// Batches before this one are all settled.
    batches_settled: u64,
    /// The next chunk to apply of batch `batches_settled`, if that batch is
    /// committed and part-way through settlement.
    settling_next_chunk: Option<u32>,
    escrow_native_wei: U256,
    escrow_token: U256,
}

/// `dharti chain status`: this market's ledger, as the chain sees it.
pub async fn status(config_path: &Path) -> anyhow::Result<()> {
    let (settings, chain, key) = open(config_path).await?;
    let ledger = Contract::new(&chain, settings.ledger);
    let market = settings.market_index;
    let members = ledger.view(SettlementLedger::membersCall {}).await?;
    let committed = ledger
        .view(SettlementLedger::batchCountCall { market })
        .await?;
    let mut settled = 0;
    for n in (0..committed).rev() {
        if ledger
            .view(SettlementLedger::isSettledCall { market, number: n })
            .await?
        {
            settled = n + 1;
            break;
        }
    }
    let mut settling_next_chunk = None;
    if settled < committed {
        let progress = ledger
            .view(SettlementLedger::settlementProgressCall {
                market,
                number: settled,
            })
            .await?;
        settling_next_chunk = (progress.nextChunk > 0).then_some(progress.nextChunk);
    }
    let me = key.address();
    let status = Status {
        preset: settings.preset.name().into(),
        chain_id: chain.chain_id(),
        block: chain.block_number().await?,
        ledger: settings.ledger,
        market_index: market,
        evm_address: me,
        member_index: members.iter().position(|m| *m == me),
        members: members.len(),
        threshold: ledger.view(SettlementLedger::thresholdCall {}).await?,
        batches_committed: committed,
        batches_settled: settled,
        settling_next_chunk,
        escrow_native_wei: ledger.view(SettlementLedger::nativeBalanceCall(me)).await?,
        escrow_token: ledger.view(SettlementLedger::tokenBalanceCall(me)).await?,
    };
    crate::say!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}

/// `dharti proof TRADE_ID`: the trade's Merkle proof from the daemon,
/// verified against the anchored batch by the ledger itself.
pub async fn proof(config_path: &Path, trade_id: &str) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    ensure!(
        config.chain.enabled(),
        "chain.preset is \"none\": nothing is anchored"
    );
    let settings = config.chain_settings()?;
    let info = crate::run::read_run_info(config_path)?;
    let (code, body) = crate::client::request(
        &info.api_url,
        "GET",
        &format!("/api/v1/proof/{trade_id}"),
        None,
        None,
    )?;
    if code != 200 {
        bail!("the daemon answered {code}: {}", body.trim());
    }
    let answer: crate::api::ProofView =
        serde_json::from_str(&body).context("the daemon's proof")?;
    let (chain, _) = connect(&settings).await?;
    let record = answer.record()?;
    let proof: Vec<B256> = answer.proof.clone();
    let verified = Contract::new(&chain, settings.ledger)
        .view(SettlementLedger::verifyTradeCall {
            market: settings.market_index,
            number: answer.batch,
            record,
            proof,
            netRoot: answer.net_root,
        })
        .await?;
    let mut out = serde_json::to_value(&answer)?;
    out["verified_on_chain"] = serde_json::Value::Bool(verified);
    crate::say!("{}", serde_json::to_string_pretty(&out)?);
    ensure!(
        verified,
        "the ledger did not verify this proof: batch {} is not anchored yet, or not with this content",
        answer.batch
    );
    Ok(())
}

#[derive(Debug, Serialize)]
struct Held {
    id: u64,
    device: B256,
    generation_start_s: u64,
    generation_end_s: u64,
    volume_wh: u64,
    held_wh: U256,
    claimed_wh: U256,
}

/// `dharti certificates`: the certificates this node's account holds or
/// has claimed.
pub async fn certificates(config_path: &Path) -> anyhow::Result<()> {
    let (settings, chain, key) = open(config_path).await?;
    let address = settings
        .certificates
        .context("chain.certificates is empty: set EnergyCertificates' address")?;
    let me = key.address();
    let certs = Contract::new(&chain, address);
    let count = certs
        .view(EnergyCertificates::certificateCountCall {})
        .await?;
    let mut out = Vec::new();
    for id in 1..=count.to::<u64>() {
        let held = certs
            .view(EnergyCertificates::balanceOfCall {
                account: me,
                id: U256::from(id),
            })
            .await?;
        let claimed = certs
            .view(EnergyCertificates::claimedBalanceOfCall {
                account: me,
                id: U256::from(id),
            })
            .await?;
        if held.is_zero() && claimed.is_zero() {
            continue;
        }
        let c = certs
            .view(EnergyCertificates::getCertificateCall { id: U256::from(id) })
            .await?;
        out.push(Held {
            id,
            device: c.device,
            generation_start_s: c.generationStart,
            generation_end_s: c.generationEnd,
            volume_wh: c.volumeWh,
            held_wh: held,
            claimed_wh: claimed,
        });
    }
    crate::say!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_read_to_the_millionth_and_nonsense_is_refused() {
        assert_eq!(parse_money("25").unwrap(), 25_000_000);
        assert_eq!(parse_money("12.5").unwrap(), 12_500_000);
        assert_eq!(parse_money(".000001").unwrap(), 1);
        assert_eq!(parse_money(" 3.141592 ").unwrap(), 3_141_592);
        for bad in [
            "",
            ".",
            "-1",
            "1.2345678",
            "1e3",
            "abc",
            "1.2.3",
            "0",
            "0.0",
            "18446744073710",
        ] {
            assert!(parse_money(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chain_keys_replace_their_lines_and_keep_the_rest() {
        let text = "[node]\ndata_dir = \"data\"\n\n[chain]\n# comment\npreset = \"none\"\nevm_key_file = \"evm.key\"\n";
        let out = set_chain_keys(
            text,
            &[("preset", "\"anvil\"".into()), ("ledger", "\"0x1\"".into())],
        );
        assert!(
            out.contains("[chain]\npreset = \"anvil\"\nledger = \"0x1\"\n# comment\nevm_key_file")
        );
        assert!(!out.contains("\"none\""));
        assert!(out.contains("[node]\ndata_dir"));
        let added = set_chain_keys("[node]\n", &[("preset", "\"ewc\"".into())]);
        assert!(added.ends_with("[chain]\npreset = \"ewc\"\n"));
    }
}

/// An amount of the market's currency (`"25"`, `"25.50"`) in its money
/// units (millionths).
pub fn parse_money(text: &str) -> anyhow::Result<u64> {
    let bad = || {
        anyhow::anyhow!(
            "{text:?} is not an amount: write a positive number with at most 6 decimals, such as 25 or 12.50"
        )
    };
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty()
        || !digits(whole)
        || !digits(fraction)
        || fraction.len() > 6
    {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let fraction: u64 = format!("{fraction:0<6}").parse().map_err(|_| bad())?;
    let micro = whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(fraction))
        .ok_or_else(bad)?;
    ensure!(micro > 0, "the amount must be more than zero");
    Ok(micro)
}

#[derive(Debug, Serialize)]
struct Escrow {
    evm_address: Address,
    /// "native" (EWT) or the ERC-20's address.
    asset: String,
    /// Base units of the asset (wei for EWT).
    moved: U256,
    balance: U256,
    tx: B256,
}

/// `dharti chain deposit AMOUNT` / `withdraw AMOUNT`: this node's escrow in
/// the asset its market settles in, at the market's scale.
pub async fn escrow(config_path: &Path, amount: &str, deposit: bool) -> anyhow::Result<()> {
    let micro = parse_money(amount)?;
    let (settings, chain, key) = open(config_path).await?;
    let me = key.address();
    let ledger = Contract::new(&chain, settings.ledger);
    let market = ledger
        .view(SettlementLedger::marketsCall(settings.market_index))
        .await?;
    ensure!(
        market.registered,
        "market {} is not registered on ledger {}: check chain.market_index",
        settings.market_index,
        settings.ledger
    );
    let base = U256::from(micro) * U256::from(market.scale);
    let token = if market.inToken {
        Some(ledger.view(SettlementLedger::tokenCall {}).await?)
    } else {
        None
    };
    let receipt = match (token, deposit) {
        (Some(token), true) => {
            Contract::new(&chain, token)
                .send(
                    me,
                    dharti_contracts::bindings::DemoEuro::approveCall {
                        spender: settings.ledger,
                        amount: base,
                    },
                )
                .await?;
            ledger
                .send(me, SettlementLedger::depositTokenCall { amount: base })
                .await?
        }
        (Some(_), false) => {
            ledger
                .send(me, SettlementLedger::withdrawTokenCall { amount: base })
                .await?
        }
        (None, true) => {
            ledger
                .send_value(me, SettlementLedger::depositCall {}, base)
                .await?
        }
        (None, false) => {
            ledger
                .send(me, SettlementLedger::withdrawCall { amount: base })
                .await?
        }
    };
    let (asset, balance) = match token {
        Some(token) => (
            token.to_string(),
            ledger.view(SettlementLedger::tokenBalanceCall(me)).await?,
        ),
        None => (
            "native".to_owned(),
            ledger.view(SettlementLedger::nativeBalanceCall(me)).await?,
        ),
    };
    let out = Escrow {
        evm_address: me,
        asset,
        moved: base,
        balance,
        tx: receipt.tx_hash,
    };
    crate::say!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
