//! `dharti bench mesh`: N real daemons on loopback under offer load, and
//! what it costs them. Prints one JSON line.
//!
//! Nodes are made as for the demo (no meters or agents: the benchmark places
//! the offers) and each dials up to five of those started before it; the
//! startup lookups of Kademlia then connect most nodes of a 50-node market
//! to most others (the report gives the median peer count). Then, for `--intervals` intervals, every node
//! gets `--offers-per-node` offers per interval through its API, spread over
//! the first half of the interval, for the interval after next, bids and
//! asks, each replacing the node's previous one on that side (the market's
//! `max_offers_per_participant` is raised to allow them).
//!
//! - **Propagation**: each daemon records when it first accepted each
//!   gossiped offer (`/api/v1/arrivals`); an offer's propagation time is the
//!   last node's arrival minus the moment just before its POST (same clock).
//!   The baseline, measured in the same run, is the median time to the
//!   first other node: one hop of gossip.
//! - **Agreement**: every node's result hash of every loaded interval.
//! - **Resources** from /proc: resident memory after the load, CPU over an
//!   idle stretch of `--idle-s` seconds (intervals still finalize, empty),
//!   bytes written per interval under load and while idle.

// Statistics of measured times and bytes: floats only in the report.
#![allow(clippy::cast_possible_truncation)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde::Serialize;

use crate::client;
use crate::demo::{self, Daemon, DemoOptions};
use crate::driver::now_ms;

#[derive(Debug)]
pub struct MeshOptions {
    pub nodes: usize,
    pub interval_s: u64,
    pub intervals: u64,
    pub offers_per_node: u64,
    pub idle_s: u64,
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct MeshReport {
    pub nodes: usize,
    pub interval_s: u64,
    pub intervals_loaded: u64,
    pub offers_posted: u64,
    pub offers_per_interval: f64,
    pub propagation_all_ms_p50: u64,
    pub propagation_all_ms_p99: u64,
    pub propagation_all_ms_max: u64,
    /// Baseline: median time to the first other node (one gossip hop).
    pub one_hop_ms_p50: u64,
    pub p99_vs_one_hop: f64,
    /// Offers that did not reach every node.
    pub offers_missing_somewhere: u64,
    pub intervals_checked: u64,
    pub agreement_rate: f64,
    pub peers_per_node_median: u64,
    pub rss_mb_median: f64,
    pub rss_mb_max: f64,
    pub idle_cpu_pct_median: f64,
    pub idle_cpu_pct_max: f64,
    pub disk_bytes_per_interval_loaded_median: u64,
    pub disk_bytes_per_interval_idle_median: u64,
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    utime + stime
}

fn written(pid: u32) -> u64 {
    proc_field(pid, "io", "write_bytes:").unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    dharti_simulations::report::percentile(sorted, p).unwrap_or(0)
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(o: &MeshOptions) -> anyhow::Result<MeshReport> {
    ensure!(o.nodes >= 3, "--nodes must be at least 3");
    let demo_options = DemoOptions {
        nodes: o.nodes,
        interval_s: o.interval_s,
        intervals: o.intervals,
        out: o.out.clone(),
        data: None,
        max_offers: u32::try_from(o.offers_per_node).unwrap_or(u32::MAX),
        // No cap below the market's size: a cap lets early nodes fill their
        // slots with each other and leave later ones outside. Nodes dial
        // five others and look for more only below eight peers.
        max_connections: 64,
        chain: crate::demo_chain::DemoChain::None,
    };
    let configs = demo::make_nodes(&demo_options, now_ms() / 1_000, false, &[])?;
    let mut daemons: Vec<Daemon> = Vec::new();
    let result = demo::start_all(&configs, &mut daemons, 5).and_then(|()| measure(o, &daemons));
    demo::stop(&mut daemons);
    result
}

fn token(d: &Daemon) -> anyhow::Result<String> {
    Ok(
        std::fs::read_to_string(d.config.with_file_name("api.token"))?
            .trim()
            .to_string(),
    )
}

fn measure(o: &MeshOptions, daemons: &[Daemon]) -> anyhow::Result<MeshReport> {
    let urls = demo::api_urls(daemons);
    let tokens: Vec<String> = daemons.iter().map(token).collect::<anyhow::Result<_>>()?;
    let pids: Vec<u32> = daemons.iter().map(|d| d.child.id()).collect();
    // Let the mesh form (gossipsub grafts on its 1 s heartbeat).
    std::thread::sleep(Duration::from_secs(5));
    let interval_ms = o.interval_s * 1_000;
    // Start loading at the beginning of an interval.
    let start = (now_ms() / interval_ms + 1) * interval_ms;
    std::thread::sleep(Duration::from_millis(start.saturating_sub(now_ms())));
    let disk_before: Vec<u64> = pids.iter().map(|p| written(*p)).collect();
    let mut posted: HashMap<String, u64> = HashMap::new();
    let mut loaded_intervals: Vec<u64> = Vec::new();
    for k in 0..o.intervals {
        let begin = start + k * interval_ms;
        let spread_ms = interval_ms / 2;
        let market = demo::get(&urls[0], "/api/v1/market").context("market view")?;
        let open: Vec<u64> = market["open_intervals"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        ensure!(open.len() >= 2, "fewer than two open intervals: {market}");
        // One interval per period, the one after next: each loaded interval
        // gets its offers in one period only.
        let interval = open[1];
        loaded_intervals.push(interval);
        let total = o.offers_per_node * o.nodes as u64;
        for j in 0..total {
            let at = begin + j * spread_ms / total.max(1);
            if let Some(wait) = at.checked_sub(now_ms()) {
                std::thread::sleep(Duration::from_millis(wait));
            }
            let node = (j % o.nodes as u64) as usize;
            let round = j / o.nodes as u64;
            let side = if round.is_multiple_of(2) {
                "bid"
            } else {
                "ask"
            };
            let body = format!(
                r#"{{"interval": {interval}, "side": "{side}", "energy_wh": {}, "price_micro_per_kwh": {}}}"#,
                100 + (j * 37) % 900,
                if side == "bid" {
                    200_000 + (j * 13) % 80_000
                } else {
                    90_000 + (j * 17) % 100_000
                },
            );
            let t0 = now_ms();
            let (status, answer) = client::request(
                &urls[node],
                "POST",
                "/api/v1/offers",
                Some(&tokens[node]),
                Some(&body),
            )?;
            if status == 201 {
                let v: serde_json::Value = serde_json::from_str(&answer)?;
                if let Some(id) = v["id"].as_str() {
                    posted.insert(id.to_string(), t0);
                }
            }
        }
        let end = begin + interval_ms;
        std::thread::sleep(Duration::from_millis(end.saturating_sub(now_ms())));
    }
    loaded_intervals.sort_unstable();
    loaded_intervals.dedup();
    // Wait until the last loaded interval is final everywhere.
    let last = *loaded_intervals.last().context("loaded an interval")?;
    let until = Instant::now() + Duration::from_millis(4 * interval_ms);
    while Instant::now() < until {
        let done = urls.iter().all(|u| {
            demo::get(u, "/api/v1/status")
                .and_then(|s| s["last_final_interval"].as_u64())
                .is_some_and(|n| n >= last)
        });
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let disk_loaded: Vec<u64> = pids
        .iter()
        .zip(&disk_before)
        .map(|(p, b)| written(*p).saturating_sub(*b) / o.intervals.max(1))
        .collect();
    let rss: Vec<f64> = pids
        .iter()
        .map(|p| proc_field(*p, "status", "VmRSS:").unwrap_or(0) as f64 / 1_024.0)
        .collect();
    let peers: Vec<u64> = urls
        .iter()
        .map(|u| {
            demo::get(u, "/api/v1/status")
                .and_then(|s| s["connected_peers"].as_u64())
                .unwrap_or(0)
        })
        .collect();

    // Propagation.
    let mut arrivals: Vec<HashMap<String, u64>> = Vec::new();
    for u in &urls {
        let list = demo::get(u, "/api/v1/arrivals").unwrap_or_default();
        arrivals.push(
            list.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| {
                            Some((x["offer_id"].as_str()?.to_string(), x["at_ms"].as_u64()?))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        );
    }
    let mut all_ms = Vec::new();
    let mut first_ms = Vec::new();
    let mut missing = 0u64;
    for (id, t0) in &posted {
        let seen: Vec<u64> = arrivals.iter().filter_map(|a| a.get(id).copied()).collect();
        // The poster itself does not record its own offer.
        if seen.len() + 1 < urls.len() {
            missing += 1;
            continue;
        }
        all_ms.push(
            seen.iter()
                .max()
                .copied()
                .unwrap_or(*t0)
                .saturating_sub(*t0),
        );
        first_ms.push(
            seen.iter()
                .min()
                .copied()
                .unwrap_or(*t0)
                .saturating_sub(*t0),
        );
    }
    all_ms.sort_unstable();
    first_ms.sort_unstable();

    // Agreement on every loaded interval.
    let mut agree = 0u64;
    let mut checked = 0u64;
    for n in &loaded_intervals {
        let hashes: Vec<Option<String>> = urls
            .iter()
            .map(|u| {
                demo::get(u, &format!("/api/v1/intervals/{n}"))
                    .and_then(|v| v["result"]["result_hash"].as_str().map(str::to_string))
            })
            .collect();
        let mut counts: BTreeMap<&Option<String>, u64> = BTreeMap::new();
        for h in &hashes {
            *counts.entry(h).or_default() += 1;
        }
        let best = counts
            .iter()
            .filter(|(h, _)| h.is_some())
            .map(|(_, c)| *c)
            .max()
            .unwrap_or(0);
        agree += best;
        checked += urls.len() as u64;
    }

    // Idle: no offers; intervals go on finalizing (empty).
    let ticks_before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let disk_idle_before: Vec<u64> = pids.iter().map(|p| written(*p)).collect();
    let idle_started = Instant::now();
    std::thread::sleep(Duration::from_secs(o.idle_s));
    let idle_s = idle_started.elapsed().as_secs_f64();
    let idle_cpu: Vec<f64> = pids
        .iter()
        .zip(&ticks_before)
        .map(|(p, b)| cpu_ticks(*p).saturating_sub(*b) as f64 / 100.0 / idle_s * 100.0)
        .collect();
    let idle_intervals = (idle_s / o.interval_s as f64).max(1.0);
    let mut disk_idle: Vec<u64> = pids
        .iter()
        .zip(&disk_idle_before)
        .map(|(p, b)| (written(*p).saturating_sub(*b) as f64 / idle_intervals) as u64)
        .collect();
    disk_idle.sort_unstable();
    let mut disk_loaded = disk_loaded;
    disk_loaded.sort_unstable();
    let mut peers = peers;
    peers.sort_unstable();
    let one_hop = percentile(&first_ms, 0.5);
    let p99 = percentile(&all_ms, 0.99);
    Ok(MeshReport {
        nodes: o.nodes,
        interval_s: o.interval_s,
        intervals_loaded: o.intervals,
        offers_posted: posted.len() as u64,
        offers_per_interval: posted.len() as f64 / o.intervals.max(1) as f64,
        propagation_all_ms_p50: percentile(&all_ms, 0.5),
        propagation_all_ms_p99: p99,
        propagation_all_ms_max: all_ms.last().copied().unwrap_or(0),
        one_hop_ms_p50: one_hop,
        p99_vs_one_hop: p99 as f64 / one_hop.max(1) as f64,
        offers_missing_somewhere: missing,
        intervals_checked: loaded_intervals.len() as u64,
        agreement_rate: agree as f64 / checked.max(1) as f64,
        peers_per_node_median: peers[peers.len() / 2],
        rss_mb_median: median_f(rss.clone()),
        rss_mb_max: rss.iter().copied().fold(0.0, f64::max),
        idle_cpu_pct_median: median_f(idle_cpu.clone()),
        idle_cpu_pct_max: idle_cpu.iter().copied().fold(0.0, f64::max),
        disk_bytes_per_interval_loaded_median: disk_loaded[disk_loaded.len() / 2],
        disk_bytes_per_interval_idle_median: disk_idle[disk_idle.len() / 2],
    })
}
