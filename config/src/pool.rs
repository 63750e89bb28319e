//! `IPAddressPool`: a set of addresses the controller may hand to LoadBalancer Services.
// Clippy reads each `printcolumn(type_ = ..)` of kube's derive as a repeated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::selector;

/// Addresses the controller may give to `type: LoadBalancer` Services.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "herald.io",
    version = "v1beta1",
    kind = "IPAddressPool",
    plural = "ipaddresspools",
    namespaced,
    status = "IPAddressPoolStatus",
    derive = "PartialEq",
    shortname = "ippool",
    category = "herald",
    doc = "A pool of IP addresses that herald-controller assigns to LoadBalancer Services.",
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    printcolumn(name = "Auto Assign", type_ = "boolean", json_path = ".spec.autoAssign"),
    printcolumn(name = "Avoid Buggy IPs", type_ = "boolean", json_path = ".spec.avoidBuggyIPs"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Assigned v4", type_ = "integer", json_path = ".status.assignedIPv4"),
    printcolumn(name = "Available v4", type_ = "integer", json_path = ".status.availableIPv4"),
    printcolumn(
        name = "Assigned v6",
        type_ = "integer",
        json_path = ".status.assignedIPv6",
        priority = 1
    ),
    printcolumn(
        name = "Available v6",
        type_ = "integer",
        json_path = ".status.availableIPv6",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::pool_spec)]
pub struct IPAddressPoolSpec {
    /// CIDRs (`192.168.10.0/24`, `fd00:10::/120`) and inclusive ranges
    /// (`192.168.10.10-192.168.10.20`), IPv4 and IPv6. No two entries, in this or any other
    /// pool, may overlap.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Whether automatic allocation may use this pool. When false, only Services that name the
    /// pool (`herald.io/address-pool`) or one of its addresses (`herald.io/loadBalancerIPs`) get
    /// addresses from it.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
    /// Skip IPv4 addresses ending in `.0` or `.255`, which some old equipment drops.
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,
    /// Which Services this pool prefers to serve, and in what order of preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,
}

fn default_true() -> bool {
    true
}

impl IPAddressPoolSpec {
    /// A pool of `addresses` with every other field as the API server defaults it: automatic
    /// allocation on, `.0`/`.255` allowed, no service allocation.
    pub fn with_addresses<S: Into<String>>(addresses: impl IntoIterator<Item = S>) -> Self {
        IPAddressPoolSpec {
            addresses: addresses.into_iter().map(Into::into).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
        }
    }
}

/// Restricts automatic allocation from a pool to some Services and ranks the pool among others.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::service_allocation)]
pub struct ServiceAllocation {
    /// Lower numbers are tried first; 0 (the default) is tried after every positive priority.
    #[serde(default)]
    pub priority: i32,
    /// Namespaces whose Services may use the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces, by their labels, whose Services may use the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,
    /// Services, by their labels, that may use the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

/// What the controller reports about a pool.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolStatus {
    /// IPv4 addresses in use (an address shared by several Services counts once).
    #[serde(default, rename = "assignedIPv4")]
    pub assigned_ipv4: i64,
    /// IPv6 addresses in use.
    #[serde(default, rename = "assignedIPv6")]
    pub assigned_ipv6: i64,
    /// IPv4 addresses still free.
    #[serde(default, rename = "availableIPv4")]
    pub available_ipv4: i64,
    /// IPv6 addresses still free; saturates at 2^63-1 for large prefixes.
    #[serde(default, rename = "availableIPv6")]
    pub available_ipv6: i64,
    /// `Ready` (True when the pool is valid and in use) with the validation message otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ServiceAllocation {
    /// Whether Services in this namespace may use the pool: any namespace when neither
    /// `namespaces` nor `namespaceSelectors` is given, else one listed or matched.
    pub fn allows_namespace(&self, namespace: &str, namespace_labels: &BTreeMap<String, String>) -> bool {
        (self.namespaces.is_empty() && self.namespace_selectors.is_empty())
            || self.namespaces.iter().any(|n| n == namespace)
            || self
                .namespace_selectors
                .iter()
                .any(|s| selector::matches(s, namespace_labels))
    }

    /// Whether a Service with these labels may use the pool: any when no `serviceSelectors`.
    pub fn allows_service(&self, labels: &BTreeMap<String, String>) -> bool {
        self.service_selectors.is_empty() || self.service_selectors.iter().any(|s| selector::matches(s, labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_addresses_defaults_as_the_api_server_does() {
        let defaulted: IPAddressPoolSpec =
            serde_json::from_value(serde_json::json!({"addresses": ["10.0.0.0/30", "fd00::/126"]})).unwrap();
        assert_eq!(
            IPAddressPoolSpec::with_addresses(["10.0.0.0/30", "fd00::/126"]),
            defaulted
        );
    }
}
