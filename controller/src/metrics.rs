//! The controller's Prometheus metrics.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
    pub family: AddressFamily,
}

/// `ipv4` / `ipv6`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AddressFamily {
    ipv4,
    ipv6,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

/// What happened to a Service's addresses.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    allocated,
    moved,
    failed,
    released,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// [`crate::allocator::AllocError::reason`].
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabels {
    pub state: PoolState,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PoolState {
    valid,
    /// Invalid, serving from its last valid spec.
    stale,
    /// Invalid and not used.
    invalid,
}

/// Every metric the controller exports, registered in [`Metrics::registry`].
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub addresses_in_use: Family<PoolLabels, Gauge>,
    pub addresses_available: Family<PoolLabels, Gauge>,
    pub allocations: Family<OutcomeLabels, Counter>,
    pub allocation_failures: Family<FailureLabels, Counter>,
    pub services_pending: Gauge,
    pub pools: Family<PoolStateLabels, Gauge>,
    /// 1 while this replica leads (writes), 0 on standby.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = herald_config::process::metrics_registry();
        let addresses_in_use = Family::<PoolLabels, Gauge>::default();
        let addresses_available = Family::<PoolLabels, Gauge>::default();
        let allocations = Family::<OutcomeLabels, Counter>::default();
        let allocation_failures = Family::<FailureLabels, Counter>::default();
        // Every series exists from the start, so rate() and alerts see the first failure.
        for outcome in [Outcome::allocated, Outcome::moved, Outcome::failed, Outcome::released] {
            drop(allocations.get_or_create(&OutcomeLabels { outcome }));
        }
        for reason in crate::allocator::AllocError::REASONS {
            drop(allocation_failures.get_or_create(&FailureLabels { reason }));
        }
        let services_pending = Gauge::default();
        let pools = Family::<PoolStateLabels, Gauge>::default();
        let leader = Gauge::default();
        registry.register(
            "allocator_addresses_in_use",
            "Addresses of a pool held by Services (a shared address counts once)",
            addresses_in_use.clone(),
        );
        registry.register(
            "allocator_addresses_available",
            "Addresses of a pool still free (saturates at 2^63-1)",
            addresses_available.clone(),
        );
        registry.register(
            "controller_allocations",
            "Changes to Services' addresses, by outcome",
            allocations.clone(),
        );
        registry.register(
            "controller_allocation_failures",
            "Services refused an address, by the rule that refused (counted once per new refusal)",
            allocation_failures.clone(),
        );
        registry.register(
            "controller_services_pending",
            "LoadBalancer Services that currently cannot get an address",
            services_pending.clone(),
        );
        registry.register(
            "controller_pools",
            "IPAddressPools by state: valid, stale (invalid, serving from its last valid spec) or invalid (not used)",
            pools.clone(),
        );
        registry.register(
            "controller_leader",
            "1 while this replica leads (allocates and writes), 0 while it stands by",
            leader.clone(),
        );
        Metrics {
            registry,
            leader,
            addresses_in_use,
            addresses_available,
            allocations,
            allocation_failures,
            services_pending,
            pools,
        }
    }
}

impl Metrics {
    pub fn count(&self, outcome: Outcome) {
        self.allocations.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a refusal: `failed` among the outcomes, and its reason.
    pub fn count_failure(&self, reason: &'static str) {
        self.count(Outcome::failed);
        self.allocation_failures.get_or_create(&FailureLabels { reason }).inc();
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        herald_config::process::encode_metrics(&self.registry)
    }
}
