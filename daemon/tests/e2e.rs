//! End-to-end: real `dharti` processes on 127.0.0.1 with port 0, real
//! libp2p, real files. Each test cleans up its processes and directories.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn dharti() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dharti"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dharti-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn five_daemons_finalize_identical_results_and_trade() {
    let out = temp_dir("demo");
    let stdout = ok(dharti()
        .args([
            "demo",
            "--nodes",
            "5",
            "--interval-s",
            "10",
            "--intervals",
            "3",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("dharti demo runs"));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary.json"))
            .expect("JSON");
    assert_eq!(summary["nodes"], 5, "{stdout}");
    assert_eq!(summary["finalized"], 3, "{stdout}");
    assert_eq!(summary["agreement_rate"], 1.0, "{stdout}");
    let hashes = summary["per_node_result_hashes"]
        .as_array()
        .expect("per node");
    assert_eq!(hashes.len(), 5);
    for node in hashes {
        assert!(node.as_object().expect("map").len() >= 3, "{summary}");
    }
    // Every node holds the same hash for every interval the first holds.
    let first = hashes[0].as_object().unwrap();
    for (interval, hash) in first {
        for node in hashes {
            assert_eq!(&node[interval], hash, "interval {interval}: {summary}");
        }
    }
    // Sunny quarter-hours: the PV households sell to the others.
    assert!(summary["trades"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["volume_wh"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["api_urls"].as_array().unwrap().len(), 5);
    // Every daemon was stopped: nothing listens on their API ports any more.
    for url in summary["api_urls"].as_array().unwrap() {
        let host = url.as_str().unwrap().trim_start_matches("http://");
        assert!(
            std::net::TcpStream::connect(host).is_err(),
            "{host} still answers"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Daemons started by a test, stopped (SIGTERM, then SIGKILL) when it ends,
/// also when it fails.
struct Cluster(Vec<dharti::demo::Daemon>);

impl Drop for Cluster {
    fn drop(&mut self) {
        dharti::demo::stop(&mut self.0);
    }
}

/// One daemon in its own market (the only member).
struct Solo {
    dir: PathBuf,
    child: Option<Child>,
}

impl Solo {
    fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    fn start(&mut self) -> serde_json::Value {
        let _ = std::fs::remove_file(self.dir.join("run.json"));
        let log = std::fs::File::create(self.dir.join("daemon.log")).unwrap();
        self.child = Some(
            dharti()
                .args(["run", "--config"])
                .arg(self.config())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("dharti run starts"),
        );
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(bytes) = std::fs::read(self.dir.join("run.json"))
                && let Ok(info) = serde_json::from_slice::<serde_json::Value>(&bytes)
            {
                return info;
            }
            assert!(
                Instant::now() < until,
                "the daemon did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Starts the daemon; its API URL and bearer token.
    fn start_with_api(&mut self) -> (serde_json::Value, String, String) {
        let info = self.start();
        let url = info["api_url"].as_str().unwrap().to_string();
        let token = std::fs::read_to_string(self.dir.join("api.token")).unwrap();
        (info, url, token.trim().to_string())
    }

    fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Solo {
    fn drop(&mut self) {
        self.kill_9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn http(url: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    dharti::client::request(url, method, path, token, (!body.is_empty()).then_some(body))
        .expect("the daemon answers")
}

fn solo(name: &str) -> Solo {
    let dir = temp_dir(name);
    ok(dharti()
        .args([
            "init",
            "--market",
            "e2e-solo",
            "--api-listen",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap());
    let config = dir.join("config.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("interval = \"15m\"", "interval = \"10s\"")
        .replace("gate_lead = \"60s\"", "gate_lead = \"2s\"")
        .replace("reconcile_window = \"20s\"", "reconcile_window = \"2s\"")
        .replace("mdns = true", "mdns = false");
    std::fs::write(&config, text).unwrap();
    Solo { dir, child: None }
}

/// The node's latest final interval, if any.
fn last_final(url: &str) -> Option<u64> {
    let (_, body) = http(url, "GET", "/api/v1/status", None, "");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["last_final_interval"].as_u64()
}

/// How many intervals each node has seen become final.
fn finalized_counts(urls: &[String]) -> Vec<u64> {
    urls.iter()
        .map(|u| {
            let (_, m) = http(u, "GET", "/metrics", None, "");
            count(&m, "dharti_intervals_finalized_total")
        })
        .collect()
}

fn wait_final(url: &str, after: Option<u64>) -> u64 {
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(n) = last_final(url)
            && after.is_none_or(|a| n > a)
        {
            return n;
        }
        assert!(Instant::now() < until, "no final interval after {after:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn writes_need_the_token_and_acknowledged_offers_survive_kill_9() {
    let mut node = solo("solo");
    let (info, url, token) = node.start_with_api();
    let token = token.as_str();

    let (code, body) = http(&url, "GET", "/api/v1/status", None, "");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["market"], "e2e-solo");
    assert!(status["did"].as_str().unwrap().starts_with("did:key:z6Mk"));
    assert_eq!(status["peer_id"], info["peer_id"]);

    let (_, body) = http(&url, "GET", "/api/v1/market", None, "");
    let market: serde_json::Value = serde_json::from_str(&body).unwrap();
    let open = market["open_intervals"].as_array().unwrap();
    // Far enough ahead to still be open after the restart below.
    let interval = open[open.len() - 1].as_u64().unwrap();
    let offer_of = |energy_wh: u64| {
        format!(
            r#"{{"interval": {interval}, "side": "bid", "energy_wh": {energy_wh}, "price_micro_per_kwh": 250000}}"#
        )
    };
    let offer = offer_of(700);
    assert_eq!(http(&url, "POST", "/api/v1/offers", None, &offer).0, 401);
    assert_eq!(
        http(
            &url,
            "POST",
            "/api/v1/offers",
            Some("wrong-token-wrong-token-wrong-token"),
            &offer
        )
        .0,
        401
    );
    assert_eq!(
        http(
            &url,
            "DELETE",
            &format!("/api/v1/offers?interval={interval}&side=bid"),
            None,
            ""
        )
        .0,
        401
    );
    let (code, body) = http(&url, "POST", "/api/v1/offers", Some(token), &offer);
    assert_eq!(code, 201, "{body}");
    let placed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (code, body) = http(
        &url,
        "POST",
        "/api/v1/offers",
        Some(token),
        r#"{"side": "hold", "energy_wh": 1, "price_micro_per_kwh": 1}"#,
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("bid"), "the error says what to write: {body}");

    let (_, metrics) = http(&url, "GET", "/metrics", None, "");
    assert!(
        metrics.contains("dharti_api_unauthorized_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dharti_offers_submitted_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("libp2p_"),
        "libp2p's metrics share the registry"
    );
    let (_, openapi) = http(&url, "GET", "/api/v1/openapi.json", None, "");
    let openapi: serde_json::Value = serde_json::from_str(&openapi).unwrap();
    assert!(openapi["paths"]["/api/v1/offers"]["post"].is_object());

    // A one-member market finalizes on its own; its history is readable.
    let final_interval = wait_final(&url, None);
    let (code, body) = http(
        &url,
        "GET",
        &format!("/api/v1/intervals/{final_interval}"),
        None,
        "",
    );
    assert_eq!(code, 200, "{body}");
    let (code, _) = http(&url, "GET", "/api/v1/intervals/1", None, "");
    assert_eq!(code, 404);

    // kill -9, restart: the acknowledged offer is still there, and the
    // node goes on finalizing.
    node.kill_9();
    let info = node.start();
    let url = info["api_url"].as_str().unwrap().to_string();
    let (_, body) = http(&url, "GET", "/api/v1/offers", None, "");
    let offers: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        offers
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == placed["id"]),
        "offer {placed} lost after kill -9: {offers}\n{}",
        node.log()
    );
    // A new offer for the same slot replaces it (a higher sequence number),
    // rather than equivocating with the restored one.
    let (code, body) = http(
        &url,
        "POST",
        "/api/v1/offers",
        Some(token),
        // Not a text replacement of the first: interval numbers (unix
        // seconds over ten) may contain "700" themselves.
        &offer_of(800),
    );
    assert_eq!(code, 201, "{body}");
    let replaced: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(replaced["sequence"], 2);
    wait_final(&url, Some(final_interval));
}

#[test]
fn backup_then_restore_into_a_fresh_directory_gives_the_same_history() {
    let mut node = solo("backup");
    let (_, url, token) = node.start_with_api();
    let offer = r#"{"side": "ask", "energy_wh": 500, "price_micro_per_kwh": 120000}"#;
    let (code, body) = http(&url, "POST", "/api/v1/offers", Some(&token), offer);
    assert_eq!(code, 201, "{body}");
    let first = wait_final(&url, None);
    let last = wait_final(&url, Some(first));
    let history: Vec<(u64, String)> = (first..=last)
        .map(|n| {
            (
                n,
                http(&url, "GET", &format!("/api/v1/intervals/{n}"), None, "").1,
            )
        })
        .collect();

    let backup_dir = temp_dir("backup-copy");
    ok(dharti()
        .args(["backup", "--config"])
        .arg(node.config())
        .arg("--out")
        .arg(&backup_dir)
        .output()
        .unwrap());
    let made: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup_dir.join("backup.json")).unwrap()).unwrap();
    assert_eq!(made["live"], true, "taken from the running daemon");
    node.kill_9();

    // Restoring over an existing node is refused; into a new directory works.
    let refused = dharti()
        .args(["restore", "--from"])
        .arg(&backup_dir)
        .arg("--dir")
        .arg(&node.dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"));
    let mut restored = Solo {
        dir: temp_dir("restored"),
        child: None,
    };
    ok(dharti()
        .args(["restore", "--from"])
        .arg(&backup_dir)
        .arg("--dir")
        .arg(&restored.dir)
        .output()
        .unwrap());
    // The EVM key (the node's escrow on chain) comes back too.
    let original_evm = std::fs::read(node.dir.join("evm.key")).unwrap();
    assert_eq!(
        std::fs::read(restored.dir.join("evm.key")).unwrap(),
        original_evm
    );
    let info = restored.start();
    let url = info["api_url"].as_str().unwrap().to_string();
    for (n, before) in &history {
        let (code, after) = http(&url, "GET", &format!("/api/v1/intervals/{n}"), None, "");
        assert_eq!(code, 200, "interval {n}: {after}");
        assert_eq!(&after, before, "interval {n} differs after restore");
    }
    let _ = std::fs::remove_dir_all(&backup_dir);
}

/// The value of a metric line (`name value` or `name{labels} value`).
fn metric(text: &str, name: &str) -> f64 {
    metric_text(text, name).parse().unwrap_or(0.0)
}

/// A counter's value.
fn count(text: &str, name: &str) -> u64 {
    metric_text(text, name).parse().unwrap_or(0)
}

fn metric_text<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("")
}

#[test]
fn a_hostile_peer_is_rejected_and_scored_down_while_the_others_finalize() {
    use dharti::identity::Identity;
    use dharti::network::{self, Command as NetCommand, Event, NetworkConfig};
    use dharti_protocol::node::Message;
    use dharti_protocol::offer::Offer;
    use dharti_protocol::types::{IntervalIndex, MarketId, ParticipantId, Side};

    let out = temp_dir("hostile");
    let hostile = Identity::generate().unwrap();
    let options = cluster_options(3, &out);
    // The hostile peer is even a member: its messages fail on their own
    // merits (bytes, signatures), not only on membership.
    let configs =
        dharti::demo::make_nodes(&options, 0, false, &[hostile.participant.to_string()]).unwrap();
    let mut daemons = Cluster(Vec::new());
    dharti::demo::start_all_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_dharti")),
        &configs,
        &mut daemons.0,
        8,
    )
    .unwrap();
    let daemons = daemons;
    let urls = dharti::demo::api_urls(&daemons.0);
    let victim = daemons.0[0].info.as_ref().unwrap();
    let target: libp2p::Multiaddr = format!(
        "{}/p2p/{}",
        victim.listen.iter().find(|a| a.contains("/tcp/")).unwrap(),
        victim.peer_id
    )
    .parse()
    .unwrap();
    let victim_peer: libp2p::PeerId = victim.peer_id.parse().unwrap();
    let market = MarketId::from_name("dharti-demo");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let before_final = finalized_counts(&urls);
    runtime.block_on(async {
        let mut registry = prometheus_client::registry::Registry::default();
        let hostile_metrics = dharti::metrics::Metrics::default();
        let (net, commands, mut events) = network::start(
            hostile.keypair.clone(),
            &NetworkConfig {
                market_topic: network::topic_name(&market),
                chain_topic: None,
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                bootstrap: vec![target],
                mdns: false,
                max_connections: 8,
                max_connections_per_peer: 1,
                target_peers: 0,
            },
            &mut registry,
            hostile_metrics.clone(),
        )
        .unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(net.run(stop.clone()));
        loop {
            match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
                Ok(Some(Event::PeerUp(p))) if p == victim_peer => break,
                Ok(Some(_)) => {}
                other => panic!("the hostile peer did not connect: {other:?}"),
            }
        }
        // Publish once we know the victim is on the topic (gossipsub sends
        // to subscribed peers only).
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel();
            commands.send(NetCommand::Peers(tx)).await.unwrap();
            let peers = rx.await.unwrap();
            if peers
                .iter()
                .any(|p| p.peer_id == victim_peer.to_string() && p.subscribed)
            {
                break;
            }
            assert!(
                Instant::now() < until,
                "the victim never subscribed: {peers:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now_s = dharti::driver::now_ms() / 1_000;
        let interval = IntervalIndex(now_s / 10 + 3);
        let offer = |participant: ParticipantId| Offer {
            chain_id: 73_799,
            market,
            interval,
            side: Side::Ask,
            energy_wh: 100,
            price_micro_per_kwh: 100_000,
            participant,
            sequence: 1,
        };
        // Garbage, a signature that does not verify, an offer in a
        // member's name signed with our key, and a direct message larger
        // than any message may be.
        let mut forged = offer(hostile.participant).sign(&hostile.signing);
        forged.signature[0] ^= 1;
        let victim_id = ParticipantId(
            hex::decode(&daemons.0[0].info.as_ref().unwrap().participant)
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let mut impostor = offer(hostile.participant).sign(&hostile.signing);
        impostor.offer = offer(victim_id);
        let forged = Message::Offer(std::sync::Arc::new(forged)).encode();
        let impostor = Message::Offer(std::sync::Arc::new(impostor)).encode();
        // Gossip: the first rejection already graylists us (score below
        // -80), so the victim may ignore what follows; direct messages are
        // judged one by one whatever our score.
        for bytes in [
            b"\x07 not a dharti message at all".to_vec(),
            forged.clone(),
            impostor.clone(),
        ] {
            commands.send(NetCommand::Publish(bytes)).await.unwrap();
        }
        for bytes in [forged, impostor] {
            commands
                .send(NetCommand::Send {
                    peer: victim_peer,
                    bytes,
                })
                .await
                .unwrap();
        }
        commands
            .send(NetCommand::Send {
                peer: victim_peer,
                bytes: vec![0xAB; 100_000],
            })
            .await
            .unwrap();
        let until = Instant::now() + Duration::from_secs(15);
        let metrics = loop {
            let (_, metrics) = http(&urls[0], "GET", "/metrics", None, "");
            let done = metric(&metrics, "dharti_messages_total{verdict=\"reject\"}") >= 3.0
                && metric(&metrics, "dharti_direct_refused_total") >= 1.0;
            if done || Instant::now() > until {
                break metrics;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            metric(&metrics, "dharti_messages_total{verdict=\"reject\"}") >= 3.0,
            "{metrics}"
        );
        assert!(
            metric(&metrics, "dharti_malformed_messages_total") >= 1.0,
            "{metrics}"
        );
        assert!(
            metric(&metrics, "dharti_direct_refused_total") >= 1.0,
            "hostile's failed sends {}: {metrics}",
            hostile_metrics.direct_failures.get()
        );
        let (_, peers) = http(&urls[0], "GET", "/api/v1/peers", None, "");
        let peers: serde_json::Value = serde_json::from_str(&peers).unwrap();
        let me = hostile.peer_id.to_string();
        let score = peers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer_id"] == me)
            .and_then(|p| p["score"].as_f64())
            .unwrap_or_else(|| panic!("the hostile peer is not listed: {peers}"));
        assert!(score < -80.0, "graylisted, score {score}");
        stop.cancel();
        let _ = task.await;
    });

    // The honest nodes go on: two more intervals final everywhere, alike.
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        let finals = finalized_counts(&urls);
        if finals.iter().zip(&before_final).all(|(a, b)| *a >= b + 2) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the honest nodes stalled: {finals:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let last = last_final(&urls[0]).unwrap();
    let hashes: Vec<String> = urls
        .iter()
        .map(|u| {
            http(
                u,
                "GET",
                &format!("/api/v1/intervals/{}", last - 1),
                None,
                "",
            )
            .1
        })
        .collect();
    assert!(hashes.iter().all(|h| h == &hashes[0]), "{hashes:?}");
    drop(daemons);
    let _ = std::fs::remove_dir_all(&out);
}

/// `nodes` daemons with 10-s intervals, run until stopped, data under `out`.
fn cluster_options(nodes: usize, out: &std::path::Path) -> dharti::demo::DemoOptions {
    dharti::demo::DemoOptions {
        nodes,
        interval_s: 10,
        intervals: 0,
        out: out.to_path_buf(),
        data: None,
        max_offers: 16,
        max_connections: 64,
        chain: dharti::demo_chain::DemoChain::None,
    }
}

/// Interval → result hash, for every interval `url`'s node holds from `from` on.
fn hashes_from(url: &str, from: u64) -> std::collections::BTreeMap<u64, String> {
    let Some(last) = last_final(url) else {
        return Default::default();
    };
    (from..=last)
        .filter_map(|n| {
            let (code, body) = http(url, "GET", &format!("/api/v1/intervals/{n}"), None, "");
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (code == 200)
                .then(|| Some((n, v["result"]["result_hash"].as_str()?.to_string())))
                .flatten()
        })
        .collect()
}

#[test]
fn a_daemon_killed_mid_interval_restarts_and_rejoins_with_the_same_history() {
    let out = temp_dir("kill9");
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_dharti"));
    let options = cluster_options(5, &out);
    let anchor = dharti::driver::now_ms() / 1_000 / 10 * 10;
    let configs = dharti::demo::make_nodes(&options, anchor, true, &[]).unwrap();
    let mut daemons = Cluster(Vec::new());
    dharti::demo::start_all_with(binary, &configs, &mut daemons.0, 8).unwrap();
    let urls = dharti::demo::api_urls(&daemons.0);
    let first = wait_final(&urls[4], None);
    wait_final(&urls[4], Some(first));
    // Mid-interval: 5 s into a 10-s interval.
    let now = dharti::driver::now_ms();
    std::thread::sleep(Duration::from_millis((15_000 - now % 10_000) % 10_000));
    let before = hashes_from(&urls[4], first);
    let mut dead = daemons.0.remove(4);
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    // Two intervals pass without it.
    std::thread::sleep(Duration::from_secs(20));
    dharti::demo::start_all_with(binary, &configs[4..], &mut daemons.0, 0).unwrap();
    let url = dharti::demo::api_urls(&daemons.0)[4].clone();
    let restarted_at = last_final(&url).unwrap_or(0);
    // It rejoins: two more intervals final on it.
    let rejoined = wait_final(&url, Some(restarted_at));
    wait_final(&url, Some(rejoined));
    let after = hashes_from(&url, first);
    let reference = hashes_from(&urls[0], first);
    for (n, hash) in &before {
        assert_eq!(
            after.get(n),
            Some(hash),
            "interval {n} changed across the restart"
        );
    }
    for (n, hash) in &after {
        assert_eq!(
            reference.get(n),
            Some(hash),
            "interval {n}: the restarted node disagrees"
        );
    }
    assert!(
        after.keys().any(|n| *n > restarted_at),
        "no interval final after the restart: {after:?}"
    );
    // It caught up what it missed: no gap in its history.
    let last = *after.keys().next_back().unwrap();
    let missing: Vec<&u64> = reference
        .keys()
        .filter(|n| **n <= last && !after.contains_key(n))
        .collect();
    assert!(
        missing.is_empty(),
        "intervals missing after catch-up: {missing:?}\n{}",
        std::fs::read_to_string(daemons.0[4].config.with_file_name("daemon.log"))
            .unwrap_or_default()
    );
    let (_, metrics) = http(&url, "GET", "/metrics", None, "");
    assert!(
        count(&metrics, "dharti_intervals_caught_up_total") >= 2,
        "{}",
        metric_text(&metrics, "dharti_intervals_caught_up")
    );
    drop(daemons);
    let _ = std::fs::remove_dir_all(&out);
}

/// anvil on a fixed port, keeping its state in `state` across restarts.
struct StatefulAnvil {
    child: std::process::Child,
}

impl StatefulAnvil {
    fn start(port: u16, state: &std::path::Path) -> StatefulAnvil {
        let port = port.to_string();
        let state = state.to_str().expect("a UTF-8 path");
        let (child, _) = dharti_contracts::anvil::spawn(&[
            "--port",
            &port,
            "--block-time",
            "1",
            "--state",
            state,
        ])
        .expect("anvil starts");
        StatefulAnvil { child }
    }

    /// SIGTERM: anvil writes its state file on the way out.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for StatefulAnvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A runtime and a client of the anvil at `url` sending from `keys`.
fn anvil_client(
    url: &str,
    keys: Vec<dharti_contracts::alloy::signers::local::PrivateKeySigner>,
) -> (tokio::runtime::Runtime, dharti_contracts::Chain) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let chain = rt
        .block_on(dharti_contracts::Chain::rpc(
            dharti_contracts::Preset::Anvil,
            url,
            keys,
            1,
            Duration::from_secs(10),
        ))
        .unwrap();
    (rt, chain)
}

fn sum_metric(urls: &[String], name: &str) -> u64 {
    urls.iter()
        .map(|u| count(&http(u, "GET", "/metrics", None, "").1, name))
        .sum()
}

#[test]
fn four_daemons_anchor_on_anvil_through_an_outage_and_escrow_matches_settlements() {
    use dharti::demo_chain::{self, DemoChain, DemoChainNode};
    if dharti_contracts::anvil::binary().is_none() {
        assert!(
            std::env::var_os("DHARTI_REQUIRE_ANVIL").is_none(),
            "DHARTI_REQUIRE_ANVIL is set but no anvil was found"
        );
        eprintln!("anvil not found: the chain end-to-end test needs it (npm ci)");
        return;
    }
    let out = temp_dir("anchor");
    let state = out.join("anvil-state.json");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut anvil = Some(StatefulAnvil::start(port, &state));
    let node = DemoChainNode::external(format!("http://127.0.0.1:{port}"), DemoChain::Anvil);

    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_dharti"));
    let options = cluster_options(4, &out);
    let anchor = dharti::driver::now_ms() / 1_000 / 10 * 10;
    let configs = dharti::demo::make_nodes(&options, anchor, true, &[]).unwrap();
    // One interval per batch, a committer gets one interval.
    let setup = demo_chain::setup(&node, &configs, "dharti-demo", anchor / 10 + 3, 1, 10).unwrap();
    let mut daemons = Cluster(Vec::new());
    dharti::demo::start_all_with(binary, &configs, &mut daemons.0, 8).unwrap();
    let urls = dharti::demo::api_urls(&daemons.0);

    let wait_anchored = |at_least: u64, within_s: u64| -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(within_s);
        loop {
            let done = demo_chain::anchored(&node, &setup).unwrap_or(0);
            if done >= at_least || std::time::Instant::now() > deadline {
                return done;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let before = wait_anchored(2, 90);
    assert!(
        before >= 2,
        "two batches anchored before the outage, got {before}"
    );

    // The chain goes away for three intervals; batches queue up meanwhile.
    anvil.take().unwrap().stop();
    std::thread::sleep(Duration::from_secs(30));
    let outages = sum_metric(&urls, "dharti_chain_unavailable_total");
    assert!(outages > 0, "the daemons noticed the outage");
    anvil = Some(StatefulAnvil::start(port, &state));
    let after = wait_anchored(before + 3, 120);
    assert!(
        after >= before + 3,
        "every batch due during the outage anchored afterwards: {before} before, {after} after"
    );

    std::thread::sleep(Duration::from_secs(2));
    let committed_by_nodes = sum_metric(&urls, "dharti_chain_batches_committed_total");
    let on_chain = {
        let (rt, chain) = anvil_client(&node.url, vec![]);
        rt.block_on(async {
            dharti_contracts::Contract::new(&chain, setup.deployment.ledger)
                .view(dharti_contracts::bindings::SettlementLedger::batchCountCall { market: 1 })
                .await
                .unwrap()
        })
    };
    // No batch counted by two committers. A commit sent as anvil went away
    // can land without its sender seeing the receipt: that node then finds
    // the batch committed and does not count it, so one may be missing.
    assert!(
        committed_by_nodes <= on_chain && committed_by_nodes + 1 >= on_chain,
        "one commit per batch on chain: nodes counted {committed_by_nodes}, the chain has {on_chain}"
    );

    // A forged approval is refused on chain: keys that are not members,
    // signing at members' indices.
    let forged = {
        use dharti_contracts::alloy::signers::local::PrivateKeySigner;
        let (rt, chain) = anvil_client(&node.url, vec![setup.admin.clone()]);
        rt.block_on(async {
            let net = std::collections::BTreeMap::new();
            let batch = dharti_contracts::Batch::new(1, on_chain, 0, 0, vec![], &net).unwrap();
            let digest = dharti_contracts::batch::signing_hash(
                &batch.header,
                chain.chain_id(),
                setup.deployment.ledger,
            );
            let approvals: Vec<dharti_contracts::Approval> = (0..4u16)
                .map(|i| dharti_contracts::Approval::sign(&PrivateKeySigner::random(), i, digest))
                .collect();
            dharti_contracts::contract::commit_batch(
                &chain,
                setup.deployment.ledger,
                setup.admin.address(),
                &batch,
                &approvals,
            )
            .await
            .err()
            .and_then(|e| e.revert_name().map(str::to_owned))
        })
    };
    assert_eq!(forged.as_deref(), Some("BadSignature"));

    // The committer of the next batch is killed -9 a second before the
    // batch is due: the next member takes over after the committer
    // timeout, and the restarted
    // node catches up with the batches anchored without it, committing
    // none of them again (the chain would refuse a second commit).
    let next = demo_chain::anchored(&node, &setup).unwrap();
    // Not node 0, the certificates' issuer, which the end of the test needs.
    let target = if next.is_multiple_of(4) {
        next + 1
    } else {
        next
    };
    let victim = usize::try_from(target % 4).unwrap();
    // Due two intervals after the batch's one interval ends.
    let due_ms = ((anchor / 10 + 3 + target + 1) * 10 + 20) * 1_000;
    let now = dharti::driver::now_ms();
    std::thread::sleep(Duration::from_millis(due_ms.saturating_sub(now + 1_000)));
    let at = daemons
        .0
        .iter()
        .position(|d| d.config == configs[victim])
        .unwrap();
    let mut dead = daemons.0.remove(at);
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let without = wait_anchored(target + 2, 90);
    assert!(
        without >= target + 2,
        "batches kept anchoring without committer {victim}: {without} of {}",
        target + 2
    );
    dharti::demo::start_all_with(binary, &configs[victim..=victim], &mut daemons.0, 0).unwrap();
    let restarted = dharti::demo::api_urls(&daemons.0).last().unwrap().clone();
    let caught_up = wait_anchored(without + 2, 90);
    assert!(
        caught_up >= without + 2,
        "anchoring went on after the restart"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let gauge = loop {
        let text = http(&restarted, "GET", "/metrics", None, "").1;
        let gauge = count(&text, "dharti_chain_batches_anchored");
        if gauge >= without || std::time::Instant::now() > deadline {
            break gauge;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        gauge >= without,
        "the restarted node saw the {without} batches anchored while it was down, not {gauge}"
    );

    // Membership changes while batches are being approved (one always is):
    // the co-op removes member 1, so member 3 takes index 1, and the
    // threshold of 3 now needs every remaining member. Held approvals move
    // to their signers' new indices and anchoring goes on.
    let removed_at = demo_chain::anchored(&node, &setup).unwrap();
    {
        use dharti_contracts::bindings::SettlementLedger;
        let (rt, chain) = anvil_client(&node.url, vec![setup.admin.clone()]);
        rt.block_on(async {
            dharti_contracts::Contract::new(&chain, setup.deployment.ledger)
                .send(
                    setup.admin.address(),
                    SettlementLedger::removeMemberCall {
                        account: setup.node_keys[1].address(),
                    },
                )
                .await
                .unwrap()
        });
    }
    let after = wait_anchored(removed_at + 3, 90);
    assert!(
        after >= removed_at + 3,
        "anchoring went on after a member was removed: {removed_at} then {after}"
    );

    // The command line: a trade's proof verified by the ledger, the
    // ledger's status, the certificates the first node issued.
    let anchored_until = anchor / 10 + 3 + after; // one interval per batch
    let traded = configs.iter().find_map(|config| {
        let trades: serde_json::Value = serde_json::from_str(&ok(dharti()
            .args(["trades", "--config"])
            .arg(config)
            .output()
            .unwrap()))
        .unwrap();
        trades
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["interval"].as_u64().unwrap() < anchored_until)
            .map(|t| (config.clone(), t["trade_id"].as_str().unwrap().to_owned()))
    });
    let (config, trade_id) = traded.expect("a node traded in an anchored batch");
    let proof: serde_json::Value = serde_json::from_str(&ok(dharti()
        .args(["proof", &trade_id, "--config"])
        .arg(&config)
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(proof["verified_on_chain"], true, "{proof}");
    assert!(
        !proof["proof"].as_array().unwrap().is_empty() || proof["leaf"] == proof["records_root"]
    );
    let forged = dharti()
        .args([
            "proof",
            &format!("{}0", &trade_id[..trade_id.len() - 1]),
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!forged.status.success(), "an unknown trade has no proof");
    let status: serde_json::Value = serde_json::from_str(&ok(dharti()
        .args(["chain", "status", "--config"])
        .arg(&configs[3])
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(status["members"], 3, "{status}");
    assert_eq!(status["member_index"], 1, "member 3 moved to index 1");
    assert!(
        status["batches_settled"].as_u64().unwrap() >= after,
        "{status}"
    );
    let issued: serde_json::Value = serde_json::from_str(&ok(dharti()
        .args(["certificates", "--config"])
        .arg(&configs[0])
        .output()
        .unwrap()))
    .unwrap();
    assert!(issued.is_array());

    drop(daemons);
    // Escrow from the command line, with the daemons stopped so no
    // settlement moves it meanwhile: in and out again (so the balances
    // check below still holds), and never more out than is there.
    let escrow = |verb: &str, amount: &str| {
        dharti()
            .args(["chain", verb, amount, "--config"])
            .arg(&configs[2])
            .output()
            .unwrap()
    };
    use dharti_contracts::alloy::primitives::U256;
    let wei = |v: &serde_json::Value| serde_json::from_value::<U256>(v.clone()).unwrap();
    let deposited: serde_json::Value = serde_json::from_str(&ok(escrow("deposit", "5.5"))).unwrap();
    // The demo market settles in EWT at 10^12 wei per micro-euro.
    assert_eq!(
        wei(&deposited["moved"]),
        U256::from(5_500_000u64) * U256::from(1_000_000_000_000u64),
        "{deposited}"
    );
    let withdrawn: serde_json::Value =
        serde_json::from_str(&ok(escrow("withdraw", "5.5"))).unwrap();
    assert_eq!(
        wei(&withdrawn["balance"]),
        wei(&deposited["balance"]) - wei(&deposited["moved"])
    );
    let overdraw = escrow("withdraw", "100000000");
    assert!(!overdraw.status.success());
    assert!(
        String::from_utf8_lossy(&overdraw.stderr).contains("InsufficientBalance"),
        "{}",
        String::from_utf8_lossy(&overdraw.stderr)
    );
    let nonsense = escrow("deposit", "-3");
    assert!(!nonsense.status.success());

    let summary = demo_chain::check(&node, &setup, &configs).unwrap();
    assert!(
        summary.certificates_issued_wh > 0,
        "the issuer certified delivered P2P energy"
    );
    assert!(summary.anchored_batches >= after);
    assert!(
        summary.onchain_balances_match,
        "escrow moved by exactly the off-chain settlements: {:?}",
        summary.balances
    );
    assert_eq!(summary.balances.len(), 4);
    assert_eq!(
        summary.proofs_verified, summary.trades_anchored,
        "every anchored trade's proof verifies on chain"
    );
    drop(anvil);
    let _ = std::fs::remove_dir_all(&out);
}
