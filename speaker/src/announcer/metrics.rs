//! Prometheus metrics of the layer-2 announcer: per IP whether this node announces it, requests
//! received, responses sent and gratuitous announcements sent; dropped frames by reason.

use std::net::IpAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IpLabels {
    ip: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
}

/// The announcer's counters; clones share the same values.
#[derive(Debug, Clone, Default)]
pub struct AnnouncerMetrics {
    announced: Family<IpLabels, Gauge>,
    requests_received: Family<IpLabels, Counter>,
    responses_sent: Family<IpLabels, Counter>,
    gratuitous_sent: Family<IpLabels, Counter>,
    dropped_frames: Family<DropLabels, Counter>,
}

/// The counters of one IP, shared with the families (increments show up in the registry).
#[derive(Debug, Clone)]
pub(crate) struct IpCounters {
    pub requests_received: Counter,
    pub responses_sent: Counter,
    pub gratuitous_sent: Counter,
}

fn ip_labels(ip: IpAddr) -> IpLabels {
    IpLabels { ip: ip.to_string() }
}

impl AnnouncerMetrics {
    /// Registers the counters as `herald_layer2_*`, next to the speaker's other metrics.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("layer2");
        registry.register(
            "announced",
            "1 for each IP this node answers ARP/NDP for (on at least one interface); an IP with two such nodes is split",
            self.announced.clone(),
        );
        registry.register(
            "requests_received",
            "ARP requests and Neighbor Solicitations received for an announced IP",
            self.requests_received.clone(),
        );
        registry.register(
            "responses_sent",
            "ARP replies and solicited Neighbor Advertisements sent for an announced IP",
            self.responses_sent.clone(),
        );
        registry.register(
            "gratuitous_sent",
            "Gratuitous ARP requests and unsolicited Neighbor Advertisements sent",
            self.gratuitous_sent.clone(),
        );
        registry.register(
            "dropped_frames",
            "Malformed or hostile ARP/NDP frames dropped, by reason",
            self.dropped_frames.clone(),
        );
    }

    /// Marks `ip` as announced by this node, or removes its series.
    pub(crate) fn set_announced(&self, ip: IpAddr, announced: bool) {
        if announced {
            self.announced.get_or_create(&ip_labels(ip)).set(1);
        } else {
            self.announced.remove(&ip_labels(ip));
        }
    }

    pub(crate) fn counters_for(&self, ip: IpAddr) -> IpCounters {
        let labels = ip_labels(ip);
        IpCounters {
            requests_received: self.requests_received.get_or_create_owned(&labels),
            responses_sent: self.responses_sent.get_or_create_owned(&labels),
            gratuitous_sent: self.gratuitous_sent.get_or_create_owned(&labels),
        }
    }

    pub(crate) fn dropped(&self, reason: &'static str) {
        self.dropped_frames
            .get_or_create(&DropLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Requests received for `ip` so far.
    pub fn requests_received_for(&self, ip: IpAddr) -> u64 {
        self.requests_received.get_or_create(&ip_labels(ip)).get()
    }

    /// Responses sent for `ip` so far.
    pub fn responses_sent_for(&self, ip: IpAddr) -> u64 {
        self.responses_sent.get_or_create(&ip_labels(ip)).get()
    }

    /// Gratuitous announcements sent for `ip` so far (one per frame per interface).
    pub fn gratuitous_sent_for(&self, ip: IpAddr) -> u64 {
        self.gratuitous_sent.get_or_create(&ip_labels(ip)).get()
    }

    /// Frames dropped so far with `reason` (a [`super::FrameError::reason`] label).
    pub fn dropped_frames_for(&self, reason: &str) -> u64 {
        self.dropped_frames
            .get_or_create(&DropLabels {
                reason: reason.to_string(),
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_encoded_with_prefix_and_labels() {
        let metrics = AnnouncerMetrics::default();
        let mut registry = herald_config::process::metrics_registry();
        metrics.register(&mut registry);
        let ip: IpAddr = "10.203.0.100".parse().unwrap();
        let counters = metrics.counters_for(ip);
        counters.requests_received.inc();
        counters.responses_sent.inc();
        counters.gratuitous_sent.inc();
        metrics.dropped("bad_checksum");
        metrics.set_announced(ip, true);
        metrics.set_announced("10.203.0.101".parse().unwrap(), true);
        metrics.set_announced("10.203.0.101".parse().unwrap(), false);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"herald_layer2_requests_received_total{ip="10.203.0.100"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"herald_layer2_dropped_frames_total{reason="bad_checksum"} 1"#));
        assert!(
            text.contains(r#"herald_layer2_announced{ip="10.203.0.100"} 1"#),
            "{text}"
        );
        assert!(!text.contains("10.203.0.101"), "a withdrawn IP has no series: {text}");
        assert_eq!(metrics.gratuitous_sent_for(ip), 1);
    }
}
