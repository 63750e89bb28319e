//! What each lab node's kubelet would keep doing for its Node: renew the Node's Lease in
//! `kube-node-lease`, so kube-controller-manager's node lifecycle controller sees the node
//! alive and never taints it or evicts its pods. (The lab's nodes are real network
//! namespaces, but no kubelet runs in them.)

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::lab::plan::NodePlan;

/// How often a kubelet renews its Lease (the kubelet's default: a quarter of 40 s).
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// The Lease duration a kubelet declares.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// Namespace of the node Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The Lease a kubelet on `node` holds, renewed at `now` (RFC 3339, microseconds).
pub fn node_lease(node: &NodePlan, now: &str) -> serde_json::Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node.name, "namespace": NODE_LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": node.name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": now,
        },
    })
}

/// Renews every node's Lease now and then every [`LEASE_RENEW_INTERVAL`], until aborted.
/// A failed renewal (API server restarting) is retried on the next tick; the lifecycle
/// controller's grace period (50 s) covers several missed ones.
pub async fn heartbeat(client: kube::Client, nodes: Vec<NodePlan>) {
    let leases: Api<Lease> = Api::namespaced(client, NODE_LEASE_NAMESPACE);
    let params = PatchParams::apply("herald-lab-kubelet").force();
    let mut tick = tokio::time::interval(LEASE_RENEW_INTERVAL);
    loop {
        tick.tick().await;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        for node in &nodes {
            if let Err(e) = leases
                .patch(&node.name, &params, &Patch::Apply(node_lease(node, &now)))
                .await
            {
                tracing::debug!(node = %node.name, error = %e, "cannot renew the node lease; retrying next tick");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan::LabPlan;

    #[test]
    fn the_lease_is_the_one_a_kubelet_holds() {
        let plan = LabPlan::new("hlab", 2).unwrap();
        let lease: Lease =
            serde_json::from_value(node_lease(plan.node(2).unwrap(), "2026-12-03T07:00:00.000000Z")).unwrap();
        assert_eq!(lease.metadata.name.as_deref(), Some("node2"));
        assert_eq!(lease.metadata.namespace.as_deref(), Some(NODE_LEASE_NAMESPACE));
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("node2"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert!(spec.renew_time.is_some());
    }
}
