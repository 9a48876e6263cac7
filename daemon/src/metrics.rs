//! The daemon's Prometheus metrics, in the one `prometheus-client` registry
//! that libp2p's metrics share (served at `/metrics`). Names start with
//! `dharti_`, use base units and end counters in `_total`; each is listed in
//! docs/metrics.md.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `dharti_messages_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// accept, ignore or reject.
    pub verdict: String,
}

/// Every metric the daemon keeps. Clones share the values.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub peers: Gauge,
    pub peers_trimmed: Counter,
    pub gossip_published: Counter,
    pub gossip_publish_failures: Counter,
    pub gossip_received: Counter,
    pub direct_sent: Counter,
    pub direct_received: Counter,
    pub direct_failures: Counter,
    pub direct_refused: Counter,
    /// Messages the node judged, by verdict.
    pub messages: Family<VerdictLabels, Counter>,
    /// Bytes that did not decode as a Dharti message.
    pub malformed: Counter,
    pub intervals_finalized: Counter,
    pub intervals_settled: Counter,
    pub intervals_caught_up: Counter,
    pub catch_up_abandoned: Counter,
    pub catch_up_served: Counter,
    pub last_final_interval: Gauge,
    pub offers_submitted: Counter,
    pub offers_refused: Counter,
    pub storage_errors: Counter,
    pub storage_flushes: Counter,
    pub api_unauthorized: Counter,
    pub commands_dropped: Counter,
    pub chain_batches_anchored: Gauge,
    pub chain_batches_committed: Counter,
    pub chain_batches_settled: Counter,
    pub chain_approvals_accepted: Counter,
    pub chain_approvals_rejected: Counter,
    pub chain_errors: Counter,
    pub chain_unavailable: Counter,
    pub chain_certificates_issued_wh: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("dharti");
        r.register("peers", "Connected peers", m.peers.clone());
        r.register(
            "peers_trimmed",
            "Connections closed because the node had more than network.target_peers",
            m.peers_trimmed.clone(),
        );
        r.register(
            "gossip_published",
            "Messages this node published on the market topic",
            m.gossip_published.clone(),
        );
        r.register(
            "gossip_publish_failures",
            "Publishes gossipsub refused (no peers yet, duplicate)",
            m.gossip_publish_failures.clone(),
        );
        r.register(
            "gossip_received",
            "Gossip messages received",
            m.gossip_received.clone(),
        );
        r.register("direct_sent", "Direct messages sent", m.direct_sent.clone());
        r.register(
            "direct_received",
            "Direct messages received",
            m.direct_received.clone(),
        );
        r.register(
            "direct_failures",
            "Direct messages that could not be delivered",
            m.direct_failures.clone(),
        );
        r.register(
            "direct_refused",
            "Direct messages from peers that were refused (oversized, cut short)",
            m.direct_refused.clone(),
        );
        r.register(
            "messages",
            "Messages judged by the node, by verdict",
            m.messages.clone(),
        );
        r.register(
            "malformed_messages",
            "Received bytes that are not a Dharti message",
            m.malformed.clone(),
        );
        r.register(
            "intervals_finalized",
            "Intervals this node saw become final",
            m.intervals_finalized.clone(),
        );
        r.register(
            "intervals_settled",
            "Intervals this node settled",
            m.intervals_settled.clone(),
        );
        r.register(
            "intervals_caught_up",
            "Intervals missed while down and finalized afterwards from peers' proofs",
            m.intervals_caught_up.clone(),
        );
        r.register(
            "catch_up_abandoned",
            "Missed intervals given up: no peer sent a usable proof in time",
            m.catch_up_abandoned.clone(),
        );
        r.register(
            "catch_up_served",
            "Proofs and sets of final intervals sent from storage to peers catching up",
            m.catch_up_served.clone(),
        );
        r.register(
            "last_final_interval",
            "Index of the most recent final interval",
            m.last_final_interval.clone(),
        );
        r.register(
            "offers_submitted",
            "Local offers accepted (from the API or the agent)",
            m.offers_submitted.clone(),
        );
        r.register(
            "offers_refused",
            "Local offers the node refused",
            m.offers_refused.clone(),
        );
        r.register(
            "storage_errors",
            "Storage writes or flushes that failed",
            m.storage_errors.clone(),
        );
        r.register(
            "storage_flushes",
            "Storage flushes (at most a few per interval)",
            m.storage_flushes.clone(),
        );
        r.register(
            "api_unauthorized",
            "API writes refused for a missing or wrong token",
            m.api_unauthorized.clone(),
        );
        r.register(
            "network_commands_dropped",
            "Commands to the network task dropped because its queue was full",
            m.commands_dropped.clone(),
        );
        r.register(
            "chain_batches_anchored",
            "Settlement batches of this market committed and settled on chain",
            m.chain_batches_anchored.clone(),
        );
        r.register(
            "chain_batches_committed",
            "Batches this node committed as committer",
            m.chain_batches_committed.clone(),
        );
        r.register(
            "chain_batches_settled",
            "Batches whose settlement this node completed on chain (it sent at least one of its chunks)",
            m.chain_batches_settled.clone(),
        );
        r.register(
            "chain_approvals_accepted",
            "Batch approvals from members that verified",
            m.chain_approvals_accepted.clone(),
        );
        r.register(
            "chain_approvals_rejected",
            "Batch approvals refused (bad signature, not a member, malformed)",
            m.chain_approvals_rejected.clone(),
        );
        r.register(
            "chain_errors",
            "Chain transactions the contracts refused, or batches this node could not build",
            m.chain_errors.clone(),
        );
        r.register(
            "chain_certificates_issued_wh",
            "Watt-hours of delivered P2P energy this node issued certificates for (issuer only)",
            m.chain_certificates_issued_wh.clone(),
        );
        r.register(
            "chain_unavailable",
            "Chain requests that failed for an outage (retried with backoff)",
            m.chain_unavailable.clone(),
        );
        m
    }

    pub fn verdict(&self, verdict: &str) {
        self.messages
            .get_or_create(&VerdictLabels {
                verdict: verdict.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_metrics_md_lists_every_metric() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.verdict("accept");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let doc = include_str!("../../docs/metrics.md");
        let mut seen = 0;
        for line in text.lines().filter(|l| l.starts_with("# TYPE dharti_")) {
            let name = line.split_whitespace().nth(2).unwrap();
            let kind = line.split_whitespace().nth(3).unwrap();
            let exposed = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            assert!(
                doc.contains(&format!("`{exposed}")),
                "docs/metrics.md lacks {exposed}"
            );
            seen += 1;
        }
        // And nothing documented that the daemon does not have.
        let documented = doc.lines().filter(|l| l.starts_with("| `dharti_")).count();
        assert_eq!(seen, documented);
    }
}
