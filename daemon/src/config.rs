//! The daemon's configuration: one TOML file, every key documented in
//! docs/config.md, unknown keys refused, safe defaults for everything but
//! the market's name and members. Durations are written like `"30s"`,
//! `"15m"` or `"500ms"`. Paths are relative to the file's directory.
//!
//! `dharti init` writes a commented file ([`template`]); `examples/config.toml`
//! is one such file and a test parses it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use dharti_protocol::clearing::Mechanism;
use dharti_protocol::node::{DEFAULT_QUORUM_PPM, NodeConfig, check_attesters};
use dharti_protocol::tariff::{Tariff, TariffSchedule};
use dharti_protocol::types::{
    CHAIN_ID_EWC, CHAIN_ID_VOLTA, IntervalClock, MarketId, ParticipantId,
};
use dharti_protocol::validation::{
    DEFAULT_MAX_OFFER_ENERGY_WH, DEFAULT_MAX_OFFERS_PER_PARTICIPANT, MarketRules,
};
use serde::Deserialize;

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub market: MarketSection,
    pub network: NetworkSection,
    pub api: ApiSection,
    pub meter: MeterSection,
    pub agent: AgentSection,
    pub chain: ChainSection,
    /// The directory of the file, for relative paths (not a key).
    #[serde(skip)]
    pub base: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    pub data_dir: PathBuf,
    pub key_file: PathBuf,
    pub token_file: PathBuf,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            data_dir: "data".into(),
            key_file: "node.key".into(),
            token_file: "api.token".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketSection {
    pub name: String,
    pub chain_id: u64,
    pub interval: String,
    pub gate_lead: String,
    pub reconcile_window: String,
    pub mechanism: String,
    pub feed_in_micro_per_kwh: u64,
    pub retail_micro_per_kwh: u64,
    pub grid_fee_micro_per_kwh: u64,
    pub quorum: f64,
    /// Members that attest each interval (a committee drawn per interval);
    /// 0: every member.
    pub attesters: usize,
    /// Offers (first, replacements, cancels) one participant may send for
    /// one interval; more void it.
    pub max_offers_per_participant: u32,
    /// Members' participant ids (hex ed25519 public keys).
    pub members: Vec<String>,
}

impl Default for MarketSection {
    fn default() -> Self {
        MarketSection {
            name: String::new(),
            chain_id: CHAIN_ID_VOLTA,
            interval: "15m".into(),
            gate_lead: "60s".into(),
            reconcile_window: "20s".into(),
            mechanism: "pay-as-clear".into(),
            feed_in_micro_per_kwh: 80_000,
            retail_micro_per_kwh: 300_000,
            grid_fee_micro_per_kwh: 20_000,
            quorum: f64::from(DEFAULT_QUORUM_PPM) / 1e6,
            attesters: 0,
            max_offers_per_participant: DEFAULT_MAX_OFFERS_PER_PARTICIPANT,
            members: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSection {
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub mdns: bool,
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    pub target_peers: u32,
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".into(),
                "/ip4/0.0.0.0/udp/4001/quic-v1".into(),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            max_connections: 64,
            max_connections_per_peer: 1,
            target_peers: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    pub listen: String,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: "127.0.0.1:8080".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeterSection {
    /// `"simulated"` (profiles from the shared data), `"csv"` (replay) or `"none"`.
    pub kind: String,
    pub data_dir: PathBuf,
    pub annual_kwh: f64,
    pub pv_kwp: f64,
    pub weather: String,
    pub seed: u64,
    /// The interval starting at `replay_anchor` (RFC 3339) replays profile
    /// time `profile_start` (simulated meter); both empty: real time.
    pub replay_anchor: String,
    pub profile_start: String,
    /// Profile time that passes per market interval (simulated meter); equal
    /// to the interval for real time, longer to replay a day quickly.
    pub profile_step: String,
    /// CSV file for `kind = "csv"`: `interval_start_s,import_wh,export_wh`.
    pub csv: PathBuf,
}

impl Default for MeterSection {
    fn default() -> Self {
        MeterSection {
            kind: "none".into(),
            data_dir: PathBuf::new(),
            annual_kwh: 3_500.0,
            pv_kwp: 0.0,
            weather: "try2010_potsdam".into(),
            seed: 1,
            replay_anchor: String::new(),
            profile_start: String::new(),
            profile_step: String::new(),
            csv: PathBuf::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    pub enabled: bool,
    pub min_sell_price_micro_per_kwh: u64,
    pub max_buy_price_micro_per_kwh: u64,
    pub battery_kwh: f64,
    pub battery_power_kw: f64,
    pub battery_min_soc: f64,
}

/// Anchoring settlements on a chain (docs/chain.md). Off by default.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainSection {
    /// "none", "embedded", "anvil", "volta" or "ewc".
    pub preset: String,
    /// JSON-RPC URL; empty: the preset's own (embedded: in this process).
    pub rpc_url: String,
    /// The node's secp256k1 key (hex), for approvals and transactions.
    pub evm_key_file: PathBuf,
    /// SettlementLedger's address.
    pub ledger: String,
    /// EnergyCertificates' address (optional).
    pub certificates: String,
    /// The market's index in the ledger (`registerMarket`).
    pub market_index: u32,
    /// Batch 0 starts at this interval.
    pub anchor_from_interval: u64,
    /// Intervals per batch.
    pub batch_intervals: u64,
    /// Blocks on top of a transaction before it counts as done.
    pub confirmations: u64,
    /// How long a committer has before the next member takes over.
    pub committer_timeout: String,
    /// How long to wait for the chain node before counting it unavailable.
    pub rpc_timeout: String,
    /// Every member's EVM address, by participant id (64 hex digits).
    pub accounts: std::collections::BTreeMap<String, String>,
    /// Receives the grid fees (and McAfee's surplus, unless
    /// `market_operator` is set).
    pub grid_operator: String,
    pub market_operator: String,
}

impl Default for ChainSection {
    fn default() -> Self {
        ChainSection {
            preset: "none".into(),
            rpc_url: String::new(),
            evm_key_file: "evm.key".into(),
            ledger: String::new(),
            certificates: String::new(),
            market_index: 1,
            anchor_from_interval: 0,
            batch_intervals: 96,
            confirmations: 1,
            committer_timeout: "60s".into(),
            rpc_timeout: "30s".into(),
            accounts: std::collections::BTreeMap::new(),
            grid_operator: String::new(),
            market_operator: String::new(),
        }
    }
}

impl ChainSection {
    pub fn enabled(&self) -> bool {
        self.preset != "none"
    }
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            enabled: false,
            min_sell_price_micro_per_kwh: 0,
            max_buy_price_micro_per_kwh: u64::MAX,
            battery_kwh: 0.0,
            battery_power_kw: 0.0,
            battery_min_soc: 0.1,
        }
    }
}

/// Parses `"500ms"`, `"30s"`, `"15m"`, `"1h"` into milliseconds.
pub fn parse_duration_ms(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).with_context(|| {
        format!("{text:?} has no unit: write it like \"30s\", \"15m\" or \"500ms\"")
    })?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .with_context(|| format!("{text:?} does not start with a whole number"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => bail!("{text:?}: the unit must be ms, s, m or h"),
    };
    number
        .checked_mul(scale)
        .with_context(|| format!("{text:?} is too long"))
}

impl Config {
    /// Reads and checks the file; errors name the key and say what to do.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the config {} (create one with `dharti init`)",
                path.display()
            )
        })?;
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("config {} is not valid", path.display()))?;
        config.base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config
            .check()
            .with_context(|| format!("config {}", path.display()))?;
        Ok(config)
    }

    /// A path from the config, relative to the config's directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            !self.market.name.is_empty(),
            "market.name is empty: name the market every member uses (for example \"elm-street\")"
        );
        self.rules()?;
        self.members()?;
        self.api_listen()?;
        let q = self.market.quorum;
        ensure!(
            q > 0.5 && q < 1.0,
            "market.quorum = {q}: use a share above 0.5 and below 1 (the default is 0.666667)"
        );
        check_attesters(self.market.attesters)
            .map_err(|e| anyhow::anyhow!("market.attesters = {e}"))?;
        ensure!(
            self.network.max_connections >= 1,
            "network.max_connections must be at least 1"
        );
        ensure!(
            ["none", "simulated", "csv"].contains(&self.meter.kind.as_str()),
            "meter.kind = {:?}: use \"none\", \"simulated\" or \"csv\"",
            self.meter.kind
        );
        if self.meter.kind == "csv" {
            ensure!(
                !self.meter.csv.as_os_str().is_empty(),
                "meter.csv is empty: give the CSV file a csv meter replays"
            );
        }
        for (key, text) in [("meter.profile_step", &self.meter.profile_step)] {
            if !text.is_empty() {
                parse_duration_ms(text).with_context(|| key.to_string())?;
            }
        }
        if self.chain.enabled() {
            self.chain_settings()?;
        }
        let a = &self.agent;
        ensure!(
            a.battery_kwh >= 0.0 && a.battery_power_kw >= 0.0,
            "agent.battery_kwh and agent.battery_power_kw must not be negative"
        );
        ensure!(
            (0.0..1.0).contains(&a.battery_min_soc),
            "agent.battery_min_soc must be a share from 0 to below 1"
        );
        Ok(())
    }

    /// The `[chain]` section, checked and parsed (only when it is enabled).
    pub fn chain_settings(&self) -> anyhow::Result<crate::anchor::ChainSettings> {
        use dharti_contracts::alloy::primitives::Address;
        let c = &self.chain;
        let preset: dharti_contracts::Preset = c
            .preset
            .parse()
            .map_err(|e: String| anyhow::anyhow!("chain.preset: {e}, or \"none\""))?;
        let address = |key: &str, text: &str| -> anyhow::Result<Address> {
            text.trim().parse().map_err(|_| {
                anyhow::anyhow!("{key} = {text:?} is not an EVM address: write it like \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"")
            })
        };
        let ledger = address("chain.ledger", &c.ledger)?;
        let certificates = if c.certificates.trim().is_empty() {
            None
        } else {
            Some(address("chain.certificates", &c.certificates)?)
        };
        ensure!(
            c.batch_intervals >= 1,
            "chain.batch_intervals must be at least 1"
        );
        ensure!(
            c.market_index >= 1,
            "chain.market_index starts at 1 (the ledger's first market)"
        );
        let members = self.members()?;
        let mut accounts = std::collections::BTreeMap::new();
        for (id, evm) in &c.accounts {
            let bytes = hex::decode(id.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .with_context(|| {
                    format!("chain.accounts: key {id:?} is not a participant id (64 hex digits)")
                })?;
            let mut raw = [0u8; 32];
            raw.copy_from_slice(&bytes);
            accounts.insert(
                ParticipantId(raw),
                address(&format!("chain.accounts.{id}"), evm)?,
            );
        }
        for member in &members {
            ensure!(
                accounts.contains_key(member),
                "chain.accounts has no EVM address for member {member}: every member's must be listed"
            );
        }
        let grid_operator = address("chain.grid_operator", &c.grid_operator)?;
        let market_operator = if c.market_operator.trim().is_empty() {
            grid_operator
        } else {
            address("chain.market_operator", &c.market_operator)?
        };
        let rpc_url = if c.rpc_url.trim().is_empty() {
            preset.default_rpc_url().map(str::to_owned)
        } else {
            Some(c.rpc_url.trim().to_owned())
        };
        Ok(crate::anchor::ChainSettings {
            preset,
            rpc_url,
            evm_key_file: self.path(&c.evm_key_file),
            ledger,
            certificates,
            market_index: c.market_index,
            anchor_from: c.anchor_from_interval,
            batch_intervals: c.batch_intervals,
            confirmations: c.confirmations,
            committer_timeout_ms: parse_duration_ms(&c.committer_timeout)
                .context("chain.committer_timeout")?,
            rpc_timeout_ms: parse_duration_ms(&c.rpc_timeout).context("chain.rpc_timeout")?,
            accounts,
            grid_operator,
            market_operator,
        })
    }

    pub fn api_listen(&self) -> anyhow::Result<SocketAddr> {
        self.api.listen.parse().with_context(|| {
            format!(
                "api.listen = {:?} is not an address: write it like \"127.0.0.1:8080\"",
                self.api.listen
            )
        })
    }

    pub fn market_id(&self) -> MarketId {
        MarketId::from_name(&self.market.name)
    }

    pub fn members(&self) -> anyhow::Result<BTreeSet<ParticipantId>> {
        let mut members = BTreeSet::new();
        for (i, text) in self.market.members.iter().enumerate() {
            let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32);
            let Some(bytes) = bytes else {
                bail!(
                    "market.members[{i}] = {text:?} is not a participant id: use the 64 hex \
                     digits `dharti init` prints for each member"
                );
            };
            let mut id = [0u8; 32];
            id.copy_from_slice(&bytes);
            members.insert(ParticipantId(id));
        }
        ensure!(
            !members.is_empty(),
            "market.members is empty: list every member's participant id (this node's is in \
             `dharti status` and was printed by `dharti init`)"
        );
        Ok(members)
    }

    pub fn rules(&self) -> anyhow::Result<MarketRules> {
        let m = &self.market;
        let interval_ms = parse_duration_ms(&m.interval).context("market.interval")?;
        let gate_ms = parse_duration_ms(&m.gate_lead).context("market.gate_lead")?;
        ensure!(
            interval_ms % 1_000 == 0 && gate_ms % 1_000 == 0,
            "market.interval and market.gate_lead must be whole seconds"
        );
        let clock = IntervalClock::new(interval_ms / 1_000, gate_ms / 1_000)
            .map_err(|e| anyhow::anyhow!("market.interval / market.gate_lead: {e}"))?;
        ensure!(
            (1..=256).contains(&m.max_offers_per_participant),
            "market.max_offers_per_participant must be between 1 and 256"
        );
        ensure!(
            m.feed_in_micro_per_kwh <= m.retail_micro_per_kwh,
            "market.feed_in_micro_per_kwh must not exceed market.retail_micro_per_kwh"
        );
        ensure!(
            [CHAIN_ID_EWC, CHAIN_ID_VOLTA, 31_337].contains(&m.chain_id),
            "market.chain_id = {}: use 246 (Energy Web Chain), 73799 (Volta) or 31337 (anvil)",
            m.chain_id
        );
        let mechanism = m
            .mechanism
            .parse::<Mechanism>()
            .map_err(|e| anyhow::anyhow!("market.mechanism = {:?}: {e}", m.mechanism))?;
        Ok(MarketRules {
            chain_id: m.chain_id,
            market_id: self.market_id(),
            clock,
            // Agents here plan a few intervals ahead at most.
            max_intervals_ahead: 4,
            max_offer_energy_wh: DEFAULT_MAX_OFFER_ENERGY_WH,
            max_offers_per_participant: m.max_offers_per_participant,
            tariffs: TariffSchedule::flat(Tariff::new(
                m.feed_in_micro_per_kwh,
                m.retail_micro_per_kwh,
                m.grid_fee_micro_per_kwh,
            )),
            mechanism,
        })
    }

    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let window_ms =
            parse_duration_ms(&self.market.reconcile_window).context("market.reconcile_window")?;
        let rules = self.rules()?;
        let interval_ms = rules.clock.interval_s * 1_000;
        ensure!(
            window_ms < interval_ms,
            "market.reconcile_window must be shorter than market.interval"
        );
        Ok(NodeConfig {
            rules,
            members: self.members()?,
            reconcile_window_ms: window_ms,
            // `check` keeps the quorum between 0.5 and 1: the ppm fits.
            #[allow(clippy::cast_possible_truncation)]
            quorum_ppm: (self.market.quorum * 1e6).round() as u32,
            reconcile_fanout: 3,
            active_window: 4,
            attesters: self.market.attesters,
        })
    }
}

/// The commented config `dharti init` writes.
pub fn template(
    market: &str,
    members: &[ParticipantId],
    api_listen: &str,
    listen: &[String],
) -> String {
    let members = members
        .iter()
        .map(|m| format!("    \"{m}\",\n"))
        .collect::<String>();
    let listen = listen
        .iter()
        .map(|l| format!("\"{l}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"# Dharti node configuration. Every key is described in docs/config.md.
# Paths are relative to this file. Durations look like "500ms", "30s", "15m", "1h".

[node]
# History (offers, results, settlements) lives here.
data_dir = "data"
# This node's ed25519 key (its participant id, libp2p peer id and did:key). Mode 0600.
key_file = "node.key"
# Bearer token for the API's write endpoints. Mode 0600.
token_file = "api.token"

[market]
# Every member must use the same name, rules and member list.
name = "{market}"
# 246 Energy Web Chain, 73799 Volta (testnet), 31337 anvil.
chain_id = 73799
interval = "15m"
# Offers close this long before an interval starts.
gate_lead = "60s"
# Nodes reconcile their offer sets for this long after gate closure.
reconcile_window = "20s"
# pay-as-clear, pay-as-bid, sdr, mid-market or mcafee.
mechanism = "pay-as-clear"
feed_in_micro_per_kwh = 80000
retail_micro_per_kwh = 300000
grid_fee_micro_per_kwh = 20000
# A result is final when more than this share of the active members (with
# attesters below, of the interval's committee) attests it.
quorum = 0.666667
# 0: every member attests each interval (safe while fewer than a third of
# the members are hostile). In a market of hundreds, a committee of this many
# members (at least 4), drawn afresh per interval, may attest instead: fewer
# messages, but a smaller margin; with 128, fine for a tenth of hostile
# members, not for a fifth (docs/simulations.md, Committees).
attesters = 0
# Offers (first, replacements, cancels) one member may send per interval; more void it.
max_offers_per_participant = 16
# Participant ids of the members (this node's is first); add your neighbours'.
members = [
{members}]

[network]
# TCP and QUIC; port 0 picks a free port.
listen = [{listen}]
# Peers to dial at start, as /ip4/ADDR/tcp/PORT/p2p/PEER_ID.
bootstrap = []
# Find members on the local network by mDNS.
mdns = true
max_connections = 64
max_connections_per_peer = 1
# Above this many peers, connections outside the gossip mesh are closed
# (bootstrap peers stay); 0 keeps every connection.
target_peers = 10

[api]
# Keep it on loopback unless a reverse proxy with TLS is in front.
listen = "{api_listen}"

[meter]
# "none", "simulated" (from the load and weather data) or "csv" (replay).
kind = "none"

[agent]
# Let the trading agent offer from the meter's forecast.
enabled = false
min_sell_price_micro_per_kwh = 100000
max_buy_price_micro_per_kwh = 280000
battery_kwh = 0.0
battery_power_kw = 0.0
battery_min_soc = 0.1

[chain]
# Anchor settlement batches on a chain (docs/chain.md): "none" (off),
# "embedded", "anvil", "volta" or "ewc". With a preset on, also set ledger,
# market_index, anchor_from_interval, accounts and grid_operator (the same
# for every member; docs/config.md).
preset = "none"
# This node's secp256k1 key for approvals and transactions (mode 0600).
evm_key_file = "evm.key"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_errors_say_why() {
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("30s").unwrap(), 30_000);
        assert_eq!(parse_duration_ms("15m").unwrap(), 900_000);
        assert_eq!(parse_duration_ms("1h").unwrap(), 3_600_000);
        let e = parse_duration_ms("30").unwrap_err().to_string();
        assert!(e.contains("no unit"), "{e}");
        let e = parse_duration_ms("3d").unwrap_err().to_string();
        assert!(e.contains("unit must be"), "{e}");
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dharti-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn template_parses_and_example_parses() {
        let dir = temp_dir("template");
        let me = ParticipantId([7; 32]);
        let path = write(
            &dir,
            &template(
                "elm-street",
                &[me],
                "127.0.0.1:8080",
                &["/ip4/127.0.0.1/tcp/0".into()],
            ),
        );
        let config = Config::load(&path).unwrap();
        assert_eq!(config.members().unwrap().len(), 1);
        assert_eq!(config.node_config().unwrap().reconcile_window_ms, 20_000);
        // Tests run in the package's directory.
        let example = Path::new("../examples/config.toml");
        let config = Config::load(example).unwrap();
        assert!(!config.members().unwrap().is_empty());
    }

    #[test]
    fn chain_errors_name_the_key_and_a_complete_section_parses() {
        let dir = temp_dir("chain");
        let me = ParticipantId([7; 32]);
        let base = template("elm-street", &[me], "127.0.0.1:8080", &[]);
        let ledger = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
        let complete = format!(
            "preset = \"anvil\"\nledger = \"{ledger}\"\ngrid_operator = \"{ledger}\"\naccounts = {{ \"{me}\" = \"{ledger}\" }}\n"
        );
        let path = write(&dir, &base.replace("preset = \"none\"\n", &complete));
        let settings = Config::load(&path).unwrap().chain_settings().unwrap();
        assert_eq!(settings.rpc_url.as_deref(), Some("http://127.0.0.1:8545"));
        assert_eq!(settings.range(2), (192, 287));
        for (from, to, key) in [
            ("preset = \"anvil\"", "preset = \"mainnet\"", "chain.preset"),
            (
                &format!("ledger = \"{ledger}\""),
                "ledger = \"0x12\"",
                "chain.ledger",
            ),
            (
                &format!("accounts = {{ \"{me}\" = \"{ledger}\" }}"),
                "accounts = {}",
                "chain.accounts",
            ),
            (
                "preset = \"anvil\"",
                "preset = \"anvil\"\nbatch_intervals = 0",
                "chain.batch_intervals",
            ),
        ] {
            let text = base.replace("preset = \"none\"\n", &complete.replace(from, to));
            let path = write(&dir, &text);
            let e = format!("{:#}", Config::load(&path).unwrap_err());
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let dir = temp_dir("errors");
        let me = ParticipantId([7; 32]);
        let good = template("elm-street", &[me], "127.0.0.1:8080", &[]);
        for (from, to, key) in [
            ("interval = \"15m\"", "interval = \"15\"", "market.interval"),
            (
                "mechanism = \"pay-as-clear\"",
                "mechanism = \"auction\"",
                "market.mechanism",
            ),
            (
                "listen = \"127.0.0.1:8080\"",
                "listen = \"localhost\"",
                "api.listen",
            ),
            ("quorum = 0.666667", "quorum = 0.4", "market.quorum"),
            ("attesters = 0", "attesters = 2", "market.attesters"),
            ("kind = \"none\"", "kind = \"mqtt\"", "meter.kind"),
            (
                "max_connections = 64",
                "max_conections = 64",
                "max_conections",
            ),
        ] {
            let path = write(&dir, &good.replace(from, to));
            let e = format!("{:#}", Config::load(&path).unwrap_err());
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
