//! Prometheus view of the per-frontend counters, read from the per-CPU counter map at scrape.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::desired::FrontendKind;
use super::flows::STAT_NAMES;
use super::maps::{Counters, ServiceMaps};
use super::{Flows, Shared, lock};

/// A frontend's labels and counters.
type FrontendRow = (Vec<(String, String)>, Counters);

/// Reads the counters under the dataplane's lock at each scrape.
pub(crate) struct CounterCollector {
    shared: Arc<Mutex<Shared>>,
}

impl CounterCollector {
    pub(crate) fn new(shared: Arc<Mutex<Shared>>) -> Self {
        CounterCollector { shared }
    }
}

impl std::fmt::Debug for CounterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CounterCollector")
    }
}

impl Collector for CounterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (rows, draining): (Vec<FrontendRow>, usize) = {
            let guard = lock(&self.shared);
            let draining = guard
                .sync
                .labels()
                .values()
                .map(|info| info.target.backends.iter().filter(|b| b.draining).count())
                .sum();
            let rows = guard
                .sync
                .labels()
                .iter()
                .map(|(id, info)| {
                    let kind = match info.target.kind {
                        FrontendKind::LoadBalancer => "LoadBalancer",
                        FrontendKind::NodePort => "NodePort",
                    };
                    let labels = vec![
                        ("service".to_owned(), info.target.service.clone()),
                        ("frontend".to_owned(), info.frontend.to_string()),
                        ("kind".to_owned(), kind.to_owned()),
                    ];
                    // A failed read shows as zero rather than failing the whole scrape.
                    (labels, guard.maps.counters(*id).unwrap_or_default())
                })
                .collect();
            (rows, draining)
        };
        let frontends = ConstGauge::new(i64::try_from(rows.len()).unwrap_or(i64::MAX));
        let m = encoder.encode_descriptor(
            "dataplane_frontends",
            "Frontends (LoadBalancer IP:port and NodePorts) in the eBPF service map",
            None,
            frontends.metric_type(),
        )?;
        frontends.encode(m)?;
        let draining = ConstGauge::new(i64::try_from(draining).unwrap_or(i64::MAX));
        let m = encoder.encode_descriptor(
            "dataplane_draining_backends",
            "Backends of frontends that keep their established flows but take no new ones, because their node's speaker was declared dead",
            None,
            draining.metric_type(),
        )?;
        draining.encode(m)?;
        for (name, help, pick) in [
            (
                "dataplane_packets",
                "Packets to a frontend seen by the eBPF service map",
                (|c: &Counters| c.packets) as fn(&Counters) -> u64,
            ),
            (
                "dataplane_bytes",
                "Bytes to a frontend seen by the eBPF service map",
                |c: &Counters| c.bytes,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
            for (labels, counters) in &rows {
                ConstCounter::new(pick(counters)).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// Conntrack fill (from the last sweep), flows removed by sweeps, and the programs' event and
/// drop counters (read at scrape).
pub(crate) struct FlowCollector {
    flows: Arc<Mutex<Flows>>,
}

impl FlowCollector {
    pub(crate) fn new(flows: Arc<Mutex<Flows>>) -> Self {
        FlowCollector { flows }
    }
}

impl std::fmt::Debug for FlowCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowCollector")
    }
}

impl Collector for FlowCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (sweep, removed, stats, capacities) = {
            let guard = self.flows.lock().unwrap_or_else(|p| p.into_inner());
            (
                guard.last_sweep,
                guard.removed_total,
                guard.maps.stats(),
                guard.maps.capacities(),
            )
        };
        let mut capacity = encoder.encode_descriptor(
            "dataplane_flow_capacity",
            "Slots of each conntrack table; a full table evicts its least recently used flows",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (table, slots) in capacities {
            if let Some(slots) = slots {
                ConstGauge::new(i64::from(slots)).encode(capacity.encode_family(&[("table", table)])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "dataplane_flows",
            "Live conntrack entries at the last sweep, by table (see herald_dataplane_flow_capacity)",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (table, n) in [
            ("established", sweep.established),
            ("new", sweep.new),
            ("reverse", sweep.reverse),
        ] {
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(family.encode_family(&[("table", table)])?)?;
        }
        let expired = ConstCounter::new(removed);
        expired.encode(encoder.encode_descriptor(
            "dataplane_flows_expired",
            "Conntrack entries removed by sweeps because their flow was over",
            None,
            expired.metric_type(),
        )?)?;
        let counter_type = ConstCounter::new(0u64).metric_type();
        let mut events = encoder.encode_descriptor(
            "dataplane_flow_events",
            "Flow events in the eBPF programs (new, established, reused tuple, DSR sent/received, MSS clamped, stale owner)",
            None,
            counter_type,
        )?;
        for ((kind, name), value) in STAT_NAMES.iter().zip(&stats) {
            if *kind == "event" {
                ConstCounter::new(*value).encode(events.encode_family(&[("event", *name)])?)?;
            }
        }
        let mut drops = encoder.encode_descriptor(
            "dataplane_drops",
            "Packets to a frontend the eBPF programs dropped, by reason",
            None,
            counter_type,
        )?;
        for ((kind, name), value) in STAT_NAMES.iter().zip(&stats) {
            if *kind == "drop" {
                ConstCounter::new(*value).encode(drops.encode_family(&[("reason", *name)])?)?;
            }
        }
        Ok(())
    }
}
