//! A local anvil (from the project's node_modules, installed by `npm ci`,
//! or from PATH) for tests and `dharti demo --chain anvil`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::chain::LOCAL_CHAIN_ID;

/// `$DHARTI_ANVIL`, else `node_modules/.bin/anvil` in the working directory
/// or one of its ancestors (the project's, from `npm ci`), else in the
/// workspace this was built from, else `anvil` on PATH.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DHARTI_ANVIL") {
        return Some(PathBuf::from(p));
    }
    let npm = "node_modules/.bin/anvil";
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(npm);
    let cwd = std::env::current_dir().ok();
    let local = cwd
        .iter()
        .flat_map(|dir| dir.ancestors())
        .map(|dir| dir.join(npm))
        .chain(std::iter::once(built))
        .find(|candidate| candidate.exists());
    if local.is_some() {
        return local;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("anvil"))
        .find(|p| p.exists())
}

/// Starts anvil on 127.0.0.1 with the local chain id, London rules and
/// EWC's block gas limit, plus `extra` arguments (`--port 0` unless one is
/// given). Returns the child and its URL, once it listens; its output is
/// drained so it never blocks on a full pipe.
pub fn spawn(extra: &[&str]) -> std::io::Result<(Child, String)> {
    let bin = binary().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no anvil in node_modules/.bin or PATH (`npm ci` installs it)",
        )
    })?;
    let mut command = Command::new(bin);
    command
        .args(["--host", "127.0.0.1", "--chain-id"])
        .arg(LOCAL_CHAIN_ID.to_string())
        .args(["--hardfork", "london", "--gas-limit", "6000000"]);
    if !extra.contains(&"--port") {
        command.args(["--port", "0"]);
    }
    let mut child = command
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            return Err(std::io::Error::other("anvil exited before it listened"));
        };
        if let Some(addr) = line?.strip_prefix("Listening on ") {
            break format!("http://{}", addr.trim());
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((child, url))
}
