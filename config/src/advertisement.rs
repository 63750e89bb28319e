//! `L2Advertisement`: which pools are announced at layer 2, from which nodes and interfaces.
// Clippy reads each `printcolumn(type_ = ..)` of kube's derive as a repeated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::selector;

/// Announce addresses of some pools with ARP/NDP from some nodes.
///
/// With neither `ipAddressPools` nor `ipAddressPoolSelectors`, every pool is announced. A
/// selector that matches nothing announces nothing.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "herald.io",
    version = "v1beta1",
    kind = "L2Advertisement",
    plural = "l2advertisements",
    namespaced,
    derive = "PartialEq",
    shortname = "l2adv",
    category = "herald",
    doc = "Announces the addresses of IPAddressPools with ARP/NDP from selected nodes and interfaces.",
    printcolumn(name = "Pools", type_ = "string", json_path = ".spec.ipAddressPools"),
    printcolumn(name = "Interfaces", type_ = "string", json_path = ".spec.interfaces"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::l2_advertisement_spec)]
pub struct L2AdvertisementSpec {
    /// Pools announced, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pools: Vec<String>,
    /// Pools announced, by their labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    /// Nodes that may announce; empty means every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// Interfaces announced on; empty means every eligible interface of the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// Services this advertisement applies to, by their labels; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

impl L2AdvertisementSpec {
    /// Whether this advertisement announces the pool with this name and labels: named in
    /// `ipAddressPools`, matched by one of `ipAddressPoolSelectors`, or every pool when neither
    /// is given.
    pub fn selects_pool(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if self.ip_address_pools.is_empty() && self.ip_address_pool_selectors.is_empty() {
            return true;
        }
        self.ip_address_pools.iter().any(|p| p == name)
            || self
                .ip_address_pool_selectors
                .iter()
                .any(|s| selector::matches(s, labels))
    }

    /// Whether a node with these labels may announce for this advertisement.
    pub fn selects_node(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selectors.is_empty() || self.node_selectors.iter().any(|s| selector::matches(s, labels))
    }

    /// Whether a Service with these labels is announced by this advertisement.
    pub fn selects_service(&self, labels: &BTreeMap<String, String>) -> bool {
        self.service_selectors.is_empty() || self.service_selectors.iter().any(|s| selector::matches(s, labels))
    }
}
