//! The `dharti` binary as a user runs it: real process, real files, exit codes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn dharti(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dharti"))
        .args(args)
        // The workspace root: cargo runs tests in the package's directory.
        // (Not the build-time path: a build cache shared between checkouts
        // keeps the path of whichever compiled this first.)
        .current_dir("..")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dharti starts");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("dharti finishes")
}

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

#[test]
fn clears_the_example_book() {
    let result = json(&dharti(&["market", "clear", "examples/book.json"], None));
    assert_eq!(result["mechanism"], "pay-as-clear");
    // Asks 95k (1200 Wh), 110k (800), 140k (1500); bids 280k (600), 250k (1400),
    // 200k (900), 170k (2500); fee 20k. The 140k ask meets the 170k bid: 140k + 20k ≤ 170k.
    assert_eq!(result["volume_wh"], 3500);
    // Last pair (170k, 140k): 140k + (170k − 20k − 140k)/2 = 145k.
    assert_eq!(result["clearing_price_micro_per_kwh"], 145_000);
    let trades = result["trades"].as_array().expect("trades");
    let volume: u64 = trades
        .iter()
        .map(|t| t["energy_wh"].as_u64().unwrap())
        .sum();
    assert_eq!(volume, 3500);
}

#[test]
fn reads_standard_input_and_the_flag_overrides_the_file() {
    let book = std::fs::read_to_string("../examples/book.json").unwrap();
    let file = json(&dharti(
        &[
            "market",
            "clear",
            "examples/book.json",
            "--mechanism",
            "mid-market",
        ],
        None,
    ));
    let stdin = json(&dharti(
        &["market", "clear", "-", "--mechanism", "mid-market"],
        Some(&book),
    ));
    assert_eq!(file, stdin);
    assert_eq!(file["mechanism"], "mid-market");
    // (80k + 300k − 20k) / 2.
    assert_eq!(file["clearing_price_micro_per_kwh"], 180_000);
}

#[test]
fn mistakes_exit_non_zero_with_a_reason() {
    let cases: [(&[&str], Option<&str>, &str); 4] = [
        (
            &["market", "clear", "no/such/book.json"],
            None,
            "cannot read the order book no/such/book.json",
        ),
        (
            &["market", "clear", "-"],
            Some("{\"offers\": 3"),
            "not valid JSON",
        ),
        (
            &[
                "market",
                "clear",
                "examples/book.json",
                "--mechanism",
                "dutch",
            ],
            None,
            "unknown mechanism \"dutch\"",
        ),
        (&["market", "bench", "--offers", "1"], None, "at least 2"),
    ];
    for (args, stdin, message) in cases {
        let output = dharti(args, stdin);
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

#[test]
fn bench_prints_one_json_line_with_its_ratios() {
    let output = dharti(
        &["market", "bench", "--offers", "2000", "--repeat", "1"],
        None,
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(text.lines().count(), 1);
    let report = json(&output);
    for field in [
        "offers",
        "clear_ms",
        "sort_baseline_ms",
        "clear_to_sort_ratio",
        "ingest_offers_per_s",
        "raw_verify_per_s",
        "ingest_to_raw_ratio",
    ] {
        assert!(
            report[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {report}"
        );
    }
    assert_eq!(report["offers"], 2000);
}

#[test]
fn the_simulation_tells_what_happened_and_writes_its_results() {
    let out = std::env::temp_dir().join(format!("dharti-demo-{}", std::process::id()));
    let output = dharti(
        &["simulate", "--out", out.to_str().expect("utf-8 path")],
        None,
    );
    let story = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(story.contains("100 % of honest nodes finalized"), "{story}");
    assert!(story.contains("0 invariant violations"), "{story}");
    for file in [
        "summary.json",
        "intervals.csv",
        "nodes.csv",
        "savings.png",
        "finality.svg",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    std::fs::remove_dir_all(&out).expect("cleans up");
}

#[test]
fn the_simulation_says_where_the_data_is_missing() {
    let output = dharti(&["simulate", "--data", "/nonexistent/dharti-data"], None);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/dharti-data"), "{stderr}");
}
