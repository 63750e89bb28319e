//! `ServiceL2Status`: which node announces a Service's addresses, written by that node's speaker.
// Clippy reads each `printcolumn(type_ = ..)` of kube's derive as a repeated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Labels on every `ServiceL2Status` the speakers write, for `kubectl get -l`: the announcing
/// node, and the Service's namespace and name.
pub const NODE_LABEL: &str = "herald.io/node";
pub const SERVICE_NAMESPACE_LABEL: &str = "herald.io/service-namespace";
pub const SERVICE_NAME_LABEL: &str = "herald.io/service-name";

/// One per announced Service, owned by the announcing speaker and removed when it stops.
/// `kubectl get servicel2status -A` shows who announces what.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "herald.io",
    version = "v1beta1",
    kind = "ServiceL2Status",
    plural = "servicel2statuses",
    namespaced,
    status = "ServiceL2StatusStatus",
    derive = "PartialEq",
    shortname = "l2status",
    category = "herald",
    doc = "Reports the node announcing a LoadBalancer Service's addresses at layer 2.",
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(name = "Service Namespace", type_ = "string", json_path = ".status.serviceNamespace"),
    printcolumn(name = "Service", type_ = "string", json_path = ".status.serviceName"),
    printcolumn(name = "IPs", type_ = "string", json_path = ".status.ips"),
    printcolumn(name = "Interfaces", type_ = "string", json_path = ".status.interfaces"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct ServiceL2StatusSpec {}

/// Observed announcement state.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceL2StatusStatus {
    /// The node whose speaker answers ARP/NDP for the Service's addresses.
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub service_namespace: String,
    #[serde(default)]
    pub service_name: String,
    /// Announced addresses.
    #[serde(default)]
    pub ips: Vec<String>,
    /// Interfaces the addresses are announced on.
    #[serde(default)]
    pub interfaces: Vec<String>,
}
