//! The `dharti-sim` binary as a user runs it: a small scenario end to end
//! with `--check-determinism` (exit status, every output file, standard
//! error free of the terminal-only progress bar), scenario mistakes refused
//! with a message naming the key, and `--help`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dharti_simulations::data;

const DEMO: &str = include_str!("../../scenarios/demo.toml");

/// Households in the small scenario: few enough for a run of seconds.
const HOUSEHOLDS: u64 = 8;
/// Intervals in the small scenario: two, so one settles after another.
const INTERVALS: u64 = 2;

/// The exit status of a failed run: `ExitCode::FAILURE` (2 is kept for
/// invariant violations).
const FAILURE: i32 = 1;

/// A directory of the test's own under the system's temporary one, removed
/// when dropped, so also when the test fails.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("dharti-sim-cli-{}-{test}", std::process::id()));
        // Left over from a crashed run with the same process id, at worst.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creates a scratch directory");
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The demo's neighbourhood, cut down to [`HOUSEHOLDS`] and [`INTERVALS`].
fn small_scenario() -> String {
    let text = DEMO
        .replace("count = 40", &format!("count = {HOUSEHOLDS}"))
        .replace("intervals = 32", &format!("intervals = {INTERVALS}"));
    assert!(
        text.contains(&format!("count = {HOUSEHOLDS}"))
            && text.contains(&format!("intervals = {INTERVALS}")),
        "scenarios/demo.toml changed: adapt small_scenario"
    );
    text
}

/// Writes `text` as `name` in `dir` and runs `dharti-sim run` on it with
/// the profile data the scenario tests use, writing into `dir/out`.
fn run(dir: &Path, name: &str, text: &str, extra: &[&str]) -> Output {
    let scenario = dir.join(name);
    std::fs::write(&scenario, text).expect("writes the scenario");
    Command::new(env!("CARGO_BIN_EXE_dharti-sim"))
        .arg("run")
        .arg(&scenario)
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--data")
        .arg(data::default_dir())
        .args(extra)
        // Debug output would go to standard error, which is checked.
        .env_remove("DHARTI_SIM_DEBUG")
        .output()
        .expect("dharti-sim starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("output is UTF-8")
}

#[test]
fn a_small_run_writes_everything_and_is_deterministic() {
    let scratch = Scratch::new("run");
    let output = run(
        scratch.path(),
        "small.toml",
        &small_scenario(),
        &["--seed", "3", "--check-determinism"],
    );
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{}: {stderr}", output.status);

    let out = scratch.path().join("out");
    let json = std::fs::read_to_string(out.join("summary.json")).expect("summary.json");
    let summary: serde_json::Value = serde_json::from_str(&json).expect("summary.json parses");
    assert_eq!(
        summary["seed"].as_u64(),
        Some(3),
        "--seed overrides the scenario's 7"
    );
    assert_eq!(summary["nodes"].as_u64(), Some(HOUSEHOLDS));
    assert_eq!(summary["intervals"].as_u64(), Some(INTERVALS));
    assert_eq!(
        summary["invariant_violations"].as_u64(),
        Some(0),
        "{}",
        summary["violations"]
    );
    let hash = summary["trace_hash"].as_str().expect("a trace hash");
    assert_eq!(hash.len(), 64, "a hex SHA-256: {hash}");

    // The summary also goes to standard output, as one JSON line.
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert_eq!(printed["trace_hash"].as_str(), Some(hash));

    let intervals = std::fs::read_to_string(out.join("intervals.csv")).expect("intervals.csv");
    assert_eq!(
        intervals.lines().count() as u64,
        1 + INTERVALS,
        "{intervals}"
    );
    let nodes = std::fs::read_to_string(out.join("nodes.csv")).expect("nodes.csv");
    assert_eq!(nodes.lines().count() as u64, 1 + HOUSEHOLDS, "{nodes}");
    for name in ["price_volume", "finality", "savings"] {
        let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).expect("svg");
        assert!(svg.starts_with("<svg"), "{name}.svg is not an SVG");
        let png = std::fs::read(out.join(format!("{name}.png"))).expect("png");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{name}.png is not a PNG"
        );
    }

    // Standard error is a pipe here, not a terminal: no progress bar, only
    // the determinism check's verdict.
    assert!(
        !stderr.contains('\r') && !stderr.contains("market-intervals"),
        "a progress bar on a pipe: {stderr:?}"
    );
    assert_eq!(
        stderr,
        format!("deterministic: both runs have trace hash {hash}\n")
    );
}

#[test]
fn scenario_mistakes_fail_with_a_message_naming_them() {
    let scratch = Scratch::new("mistakes");
    let small = small_scenario();
    let unknown = small.replace("[network]\n", "[network]\npacket_loss = 0.1\n");
    let bad = small.replace("loss = 0.01", "loss = 2.0");
    assert!(
        unknown != small && bad != small,
        "scenarios/demo.toml changed"
    );
    for (name, scenario, named) in [
        ("unknown.toml", &unknown, "packet_loss"),
        ("bad.toml", &bad, "network.loss"),
    ] {
        let output = run(scratch.path(), name, scenario, &[]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(FAILURE), "{name}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(named) && stderr.contains(name),
            "{name}: the error should name {named} and the file: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{name}: no summary");
        assert!(!scratch.path().join("out").exists(), "{name}: no results");
    }
}

#[test]
fn help_describes_the_run_command() {
    let help = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_dharti-sim"))
            .args(args)
            .output()
            .expect("dharti-sim starts");
        assert!(output.status.success(), "{args:?}: {}", output.status);
        text(&output.stdout)
    };
    // The top level lists the subcommands; their flags are in their own help.
    let top = help(&["--help"]);
    assert!(top.contains("Usage: dharti-sim"), "{top}");
    assert!(
        top.lines().any(|l| l.trim_start().starts_with("run ")),
        "the run command is listed: {top}"
    );
    let run_help = help(&["run", "--help"]);
    for flag in ["--check-determinism", "--seed", "--out", "--data", "--jobs"] {
        assert!(
            run_help.contains(flag),
            "run --help lacks {flag}: {run_help}"
        );
    }
}
