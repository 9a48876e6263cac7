//! `dharti backup` and `dharti restore`: a node's history and identity in
//! one directory, and back.
//!
//! A backup directory holds `config.toml`, `node.key`, `api.token` and `evm.key` (mode
//! 0600, as the originals), `history.snapshot` (the storage crate's snapshot:
//! every record, then a SHA-256 over the whole) and `backup.json` (what and
//! when). With the daemon running, the snapshot comes from its API: the
//! market task takes it between two writes, so it is consistent. With the
//! daemon stopped, `backup` opens the store itself.
//!
//! `restore` checks the snapshot in full before it writes anything, and
//! only into a directory without a node in it.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use dharti_storage::Store;
use serde::{Deserialize, Serialize};

use crate::client;
use crate::config::Config;
use crate::identity::{self, Identity};
use crate::run;

const SNAPSHOT: &str = "history.snapshot";

#[derive(Debug, Serialize, Deserialize)]
pub struct BackupInfo {
    pub participant: String,
    pub market: String,
    pub made_at_ms: u64,
    pub snapshot_bytes: u64,
    /// Whether the snapshot came from the running daemon.
    pub live: bool,
}

fn copy_private(from: &Path, to: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("cannot create {}", to.display()))?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    Ok(())
}

fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        ensure!(
            empty,
            "{} exists and is not empty: choose a new directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

pub fn backup(config_path: &Path, out: &Path) -> anyhow::Result<BackupInfo> {
    let config = Config::load(config_path)?;
    let identity = Identity::load(&config.path(&config.node.key_file))?;
    let token_path = config.path(&config.node.token_file);
    let token = identity::read_token(&token_path)?;
    fresh_dir(out)?;
    let running = run::read_run_info(config_path).ok();
    let (snapshot, live) = match running {
        Some(info) => {
            let (status, bytes) =
                client::request_bytes(&info.api_url, "GET", "/api/v1/backup", Some(&token), None)
                    .context("asking the running daemon for a snapshot")?;
            if status != 200 {
                bail!(
                    "the daemon refused the snapshot ({status}): {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            (bytes, true)
        }
        None => {
            let data = config.path(&config.node.data_dir);
            let store = Store::open(&data).with_context(|| {
                format!(
                    "cannot open the history in {} (if the daemon runs, its run.json is missing)",
                    data.display()
                )
            })?;
            let mut bytes = Vec::new();
            store.export(&mut bytes)?;
            (bytes, false)
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out.join(SNAPSHOT))?;
    file.write_all(&snapshot)?;
    file.sync_all()?;
    std::fs::copy(config_path, out.join("config.toml"))?;
    copy_private(&config.path(&config.node.key_file), &out.join("node.key"))?;
    copy_private(&token_path, &out.join("api.token"))?;
    // The EVM key holds the node's escrow on chain: losing it loses money.
    let evm_key = config.path(&config.chain.evm_key_file);
    if evm_key.exists() {
        copy_private(&evm_key, &out.join("evm.key"))?;
    }
    let info = BackupInfo {
        participant: identity.participant.to_string(),
        market: config.market.name.clone(),
        made_at_ms: crate::driver::now_ms(),
        snapshot_bytes: snapshot.len() as u64,
        live,
    };
    std::fs::write(out.join("backup.json"), serde_json::to_vec_pretty(&info)?)?;
    Ok(info)
}

/// Restores a backup into `dir` (new or empty); returns the config path.
pub fn restore(from: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let snapshot = std::fs::read(from.join(SNAPSHOT))
        .with_context(|| format!("{} has no {SNAPSHOT}: is it a backup?", from.display()))?;
    fresh_dir(dir)?;
    let config_path = dir.join("config.toml");
    std::fs::copy(from.join("config.toml"), &config_path)?;
    let config = Config::load(&config_path)?;
    for (key, path) in [
        ("node.data_dir", &config.node.data_dir),
        ("node.key_file", &config.node.key_file),
        ("node.token_file", &config.node.token_file),
        ("chain.evm_key_file", &config.chain.evm_key_file),
    ] {
        ensure!(
            path.is_relative(),
            "{key} in the backup's config is absolute ({}); restoring would write over the original: make it relative",
            path.display()
        );
    }
    copy_private(&from.join("node.key"), &config.path(&config.node.key_file))?;
    copy_private(
        &from.join("api.token"),
        &config.path(&config.node.token_file),
    )?;
    if from.join("evm.key").exists() {
        copy_private(
            &from.join("evm.key"),
            &config.path(&config.chain.evm_key_file),
        )?;
    }
    Identity::load(&config.path(&config.node.key_file))?;
    let store = Store::import(config.path(&config.node.data_dir), &mut snapshot.as_slice())
        .context("restoring the history")?;
    store.close()?;
    Ok(config_path)
}
