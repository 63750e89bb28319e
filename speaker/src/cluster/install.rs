//! The speaker's own installation: the DaemonSet it runs in (`--daemonset`). Its
//! ServiceL2Status objects name that DaemonSet as their owner, so Kubernetes' garbage collector
//! removes them with it; and a speaker that stops while the DaemonSet is gone or being deleted
//! is being uninstalled, so it removes its eBPF programs instead of leaving them pinned for a
//! successor that will never come. A restart or a rolling update leaves the DaemonSet in place
//! and the programs pinned (forwarding goes on while the speaker is away).

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Api, Client, Resource};

/// What a lookup of the speaker's DaemonSet found.
#[derive(Debug, Clone, PartialEq)]
pub enum DaemonSetLookup {
    /// It exists; `deleting` if it has a deletion timestamp.
    Present {
        /// Being deleted.
        deleting: bool,
        /// Its owner reference for dependents.
        owner: Box<OwnerReference>,
    },
    /// The API server says it does not exist.
    Missing,
    /// The API server refuses the speaker (401/403): its ServiceAccount or RBAC is gone.
    Refused,
    /// No answer (API server away, other errors): nothing can be concluded.
    Unknown,
}

/// Whether the speaker is being uninstalled: its DaemonSet is gone or being deleted, or the
/// credentials and permissions installed with it are (an uninstall deletes them together, in
/// an order the speaker cannot rely on). Without an answer it is not: keeping the programs
/// pinned is what a restart needs, and they stop translating by themselves two minutes after
/// the last speaker heartbeat anyway.
pub fn is_uninstalling(lookup: &DaemonSetLookup) -> bool {
    match lookup {
        DaemonSetLookup::Present { deleting, .. } => *deleting,
        DaemonSetLookup::Missing | DaemonSetLookup::Refused => true,
        DaemonSetLookup::Unknown => false,
    }
}

/// Looks up DaemonSet `namespace/name`.
pub async fn look_up(client: &Client, namespace: &str, name: &str) -> DaemonSetLookup {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    match api.get(name).await {
        Ok(ds) => DaemonSetLookup::Present {
            deleting: ds.metadata.deletion_timestamp.is_some(),
            owner: Box::new(owner_of(&ds)),
        },
        Err(kube::Error::Api(status)) if status.code == 404 => DaemonSetLookup::Missing,
        Err(kube::Error::Api(status)) if status.code == 401 || status.code == 403 => DaemonSetLookup::Refused,
        Err(e) => {
            tracing::debug!(error = %e, daemonset = name, "cannot look up the speaker's DaemonSet");
            DaemonSetLookup::Unknown
        }
    }
}

/// The owner reference dependents of `ds` carry (no `blockOwnerDeletion`: deleting the
/// DaemonSet never waits for them).
pub fn owner_of(ds: &DaemonSet) -> OwnerReference {
    let mut owner = ds.controller_owner_ref(&()).unwrap_or_default();
    owner.controller = None;
    owner.block_owner_deletion = None;
    owner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_deleted_daemonset_or_revoked_access_means_an_uninstall() {
        let owner = Box::new(OwnerReference::default());
        let present = |deleting| DaemonSetLookup::Present {
            deleting,
            owner: owner.clone(),
        };
        assert!(!is_uninstalling(&present(false)), "a restart or a rolling update");
        assert!(is_uninstalling(&present(true)));
        assert!(is_uninstalling(&DaemonSetLookup::Missing));
        assert!(is_uninstalling(&DaemonSetLookup::Refused));
        assert!(
            !is_uninstalling(&DaemonSetLookup::Unknown),
            "an API server away is no uninstall"
        );
    }

    #[test]
    fn the_owner_reference_names_the_daemonset_and_blocks_nothing() {
        let ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "herald-speaker", "namespace": "herald-system", "uid": "u-1"}
        }))
        .unwrap();
        let owner = owner_of(&ds);
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("DaemonSet", "herald-speaker", "u-1")
        );
        assert_eq!(owner.api_version, "apps/v1");
        assert_eq!((owner.controller, owner.block_owner_deletion), (None, None));
    }
}
