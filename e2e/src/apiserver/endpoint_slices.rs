//! The endpointslice controller's job, done synchronously after every write to a Service
//! or Pod: the slices of each affected Service are brought in line with
//! [`controllers::desired_endpoint_slices`](super::controllers::desired_endpoint_slices).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::{Value, json};

use super::Server;
use super::controllers::{self, MANAGED_BY};
use super::handlers::{name_suffix, new_uid, now_rfc3339};
use super::registry::GroupResource;
use super::store::{object_key, object_rv};

/// Recomputes the EndpointSlices of every Service in `namespace`. Caller holds the controller lock.
pub(crate) fn reconcile_namespace_slices(server: &Server, namespace: &str) {
    let (services, _) = server.store.list(&GroupResource::new("", "services"), Some(namespace));
    for svc in services {
        let (_, name) = object_key(&svc);
        reconcile_service_slices(server, namespace, &name);
    }
}

/// Brings the EndpointSlices of one Service in line with its Pods, as the endpointslice
/// controller does. Caller holds the controller lock.
pub(crate) fn reconcile_service_slices(server: &Server, namespace: &str, name: &str) {
    let slices_gr = GroupResource::new("discovery.k8s.io", "endpointslices");
    let (slices, _) = server.store.list(&slices_gr, Some(namespace));
    let mut existing: Vec<Arc<Value>> = slices
        .into_iter()
        .filter(|s| {
            s.pointer("/metadata/labels/kubernetes.io~1service-name")
                .and_then(Value::as_str)
                == Some(name)
                && s.pointer("/metadata/labels/endpointslice.kubernetes.io~1managed-by")
                    .and_then(Value::as_str)
                    == Some(MANAGED_BY)
        })
        .collect();
    let svc: Option<Service> = server
        .store
        .get(&GroupResource::new("", "services"), namespace, name)
        .and_then(|s| serde_json::from_value((*s).clone()).ok());
    let desired = match &svc {
        Some(svc) => {
            let (pods, _) = server.store.list(&GroupResource::new("", "pods"), Some(namespace));
            let pods: Vec<Pod> = pods
                .iter()
                .filter_map(|p| serde_json::from_value((**p).clone()).ok())
                .collect();
            controllers::desired_endpoint_slices(svc, &pods)
                .iter()
                .map(|d| controllers::endpoint_slice_object(svc, d))
                .collect()
        }
        None => Vec::new(),
    };
    for want in desired {
        // Reuse an unchanged slice, else one of the same address type, else create.
        let pos = existing
            .iter()
            .position(|e| controllers::slice_matches(e, &want))
            .or_else(|| existing.iter().position(|e| e["addressType"] == want["addressType"]));
        match pos {
            Some(i) => {
                let current = existing.remove(i);
                if controllers::slice_matches(&current, &want) {
                    continue;
                }
                let mut updated = (*current).clone();
                updated["endpoints"] = want["endpoints"].clone();
                updated["ports"] = want["ports"].clone();
                if let Some(meta) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
                    let generation = meta.get("generation").and_then(Value::as_i64).unwrap_or(1) + 1;
                    meta.insert("generation".into(), json!(generation));
                }
                let _ = server.store.update(&slices_gr, updated, object_rv(&current));
            }
            None => {
                let mut object = want;
                let prefix = object
                    .pointer("/metadata/generateName")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let Some(name) = (0..16)
                    .map(|_| format!("{prefix}{}", name_suffix()))
                    .find(|n| server.store.get(&slices_gr, namespace, n).is_none())
                else {
                    continue;
                };
                if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("name".into(), json!(name));
                    meta.insert("uid".into(), json!(new_uid()));
                    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
                    meta.insert("generation".into(), json!(1));
                }
                let _ = server.store.create(&slices_gr, object);
            }
        }
    }
    for stale in existing {
        let (ns, n) = object_key(&stale);
        let _ = server.store.delete(&slices_gr, &ns, &n, None);
    }
}
