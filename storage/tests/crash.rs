//! Crash safety: a child process writes and flushes interval after interval
//! and says "acked N" after each flush; the parent SIGKILLs it at varying
//! moments, reopens the store and checks that every acknowledged interval is
//! there and intact, and that nothing is ever half written. Several rounds run
//! on the same directory, so later rounds reopen a store that was killed.
//!
//! The child is this same test binary, started with an environment variable.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dharti_protocol::settlement::{IntervalSettlement, MeterReading, ParticipantSettlement};
use dharti_protocol::types::{IntervalIndex, MarketId, ParticipantId};
use dharti_storage::{Store, WriteBatch};

const CHILD_DIR: &str = "DHARTI_CRASH_CHILD_DIR";
const CHILD_START: &str = "DHARTI_CRASH_CHILD_START";
/// Readings per interval: enough that writing a batch takes a while, so kills
/// land in the middle of writing as well as between batches.
const READINGS_PER_INTERVAL: u8 = 200;

fn market() -> MarketId {
    MarketId::from_name("crash-test")
}

/// The deterministic content of interval `n`.
fn readings(n: u64) -> Vec<MeterReading> {
    (0..READINGS_PER_INTERVAL)
        .map(|p| MeterReading {
            participant: ParticipantId([p; 32]),
            interval: IntervalIndex(n),
            import_wh: n * 1_000 + u64::from(p),
            export_wh: n ^ u64::from(p),
        })
        .collect()
}

fn settlement(n: u64) -> IntervalSettlement {
    IntervalSettlement {
        interval: IntervalIndex(n),
        participants: vec![ParticipantSettlement {
            participant: ParticipantId([1; 32]),
            net_micro: -(n as i64),
            ..Default::default()
        }],
        grid_operator_micro: n,
        market_operator_micro: 0,
        supplier_net_micro: 0,
    }
}

/// The child: writes intervals from `start` on until it is killed.
fn child(dir: &Path, start: u64) {
    let store = Store::open(dir).expect("child opens the store");
    for n in start.. {
        let mut batch = WriteBatch::new();
        for reading in readings(n) {
            batch.put_meter_reading(market(), reading);
        }
        batch.put_settlement(market(), settlement(n));
        batch.put_meta(b"last-interval", &n.to_le_bytes());
        store.apply(batch).expect("apply");
        store.flush().expect("flush");
        println!("acked {n}");
    }
}

/// Checks interval `n` is either complete and intact or entirely absent.
/// Returns whether it is present.
fn check_interval(store: &Store, n: u64) -> bool {
    let stored = store
        .meter_readings(&market(), IntervalIndex(n))
        .expect("readings decode");
    let settlement_stored = store
        .settlement(&market(), IntervalIndex(n))
        .expect("settlement decodes");
    if stored.is_empty() {
        assert!(
            settlement_stored.is_none(),
            "interval {n}: settlement without readings (half a batch)"
        );
        return false;
    }
    assert_eq!(
        stored,
        readings(n),
        "interval {n}: readings damaged or partial"
    );
    assert_eq!(
        settlement_stored,
        Some(settlement(n)),
        "interval {n}: settlement missing or damaged"
    );
    true
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let start = std::env::var(CHILD_START)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        child(Path::new(&dir), start);
        return;
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("dharti-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut next = 0u64;
    // Kill after a varying number of acks; the pause before the kill varies
    // too, so some kills hit a batch being applied and some a flush.
    for (round, (acks, pause_us)) in [(3u64, 0u64), (7, 300), (2, 1_500), (11, 50), (5, 700)]
        .into_iter()
        .enumerate()
    {
        let mut child = Command::new(std::env::current_exe().expect("test binary path"))
            .args([
                "--exact",
                "acknowledged_writes_survive_sigkill",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_DIR, &dir)
            .env(CHILD_START, next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut last_acked = None;
        while let Some(Ok(line)) = lines.next() {
            if let Some(n) = line.strip_prefix("acked ") {
                let n: u64 = n.parse().expect("ack number");
                last_acked = Some(n);
                if n + 1 >= next + acks {
                    break;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_micros(pause_us));
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
        let last_acked =
            last_acked.unwrap_or_else(|| panic!("round {round}: child acknowledged nothing"));

        let store = Store::open(&dir).expect("reopen after SIGKILL");
        for n in 0..=last_acked {
            assert!(
                check_interval(&store, n),
                "round {round}: acknowledged interval {n} lost"
            );
        }
        // Beyond the last ack: whole or absent, and nothing after a gap.
        let mut present_after = 0;
        for n in last_acked + 1..last_acked + 6 {
            if check_interval(&store, n) {
                assert_eq!(
                    n,
                    last_acked + 1 + present_after,
                    "round {round}: interval {n} present after a gap"
                );
                present_after += 1;
            }
        }
        next = last_acked + 1 + present_after;
        store.close().expect("close");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
