//! Deletion as the API does it: DeleteOptions (preconditions, `propagationPolicy`),
//! finalizers (an object with finalizers is only marked terminating), and what follows a
//! removal: namespace contents, a CRD's objects, Pod-driven EndpointSlice updates and
//! garbage collection through ownerReferences.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::Server;
use super::endpoint_slices::reconcile_namespace_slices;
use super::handlers::now_rfc3339;
use super::registry::{GroupResource, type_from_crd};
use super::status::{ApiError, ApiResult, Cause};
use super::store::{StoreError, object_key, object_rv};

/// `propagationPolicy` of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// Leave dependents, removing the owner reference.
    Orphan,
    /// Delete dependents after the owner.
    Background,
    /// Delete dependents before the owner.
    Foreground,
}

/// Parsed DeleteOptions.
pub(crate) struct DeleteOptions {
    propagation: Propagation,
    uid: Option<String>,
    resource_version: Option<String>,
}

pub(crate) fn delete_options(body: &[u8], query: &HashMap<String, String>) -> ApiResult<DeleteOptions> {
    let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let policy = query
        .get("propagationPolicy")
        .cloned()
        .or_else(|| opts["propagationPolicy"].as_str().map(str::to_string));
    let orphan = query
        .get("orphanDependents")
        .map(|o| o == "true")
        .or_else(|| opts["orphanDependents"].as_bool());
    let propagation = match (policy.as_deref(), orphan) {
        (Some("Orphan"), _) | (None, Some(true)) => Propagation::Orphan,
        (Some("Foreground"), _) => Propagation::Foreground,
        (Some("Background") | None, _) => Propagation::Background,
        (Some(other), _) => {
            return Err(ApiError::invalid(
                "",
                "DeleteOptions",
                "",
                vec![Cause::invalid(
                    "propagationPolicy",
                    format!(
                        "Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                    ),
                )],
            ));
        }
    };
    Ok(DeleteOptions {
        propagation,
        uid: opts
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        resource_version: opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Deletes one object as the API does: preconditions, finalizers (then only marks it
/// terminating), and afterwards its dependents, namespace contents or CRD instances.
pub(crate) async fn delete_cascade(
    server: &Arc<Server>,
    gr: &GroupResource,
    namespace: &str,
    name: &str,
    opts: &DeleteOptions,
    dry_run: bool,
) -> ApiResult<Value> {
    let not_found = || ApiError::not_found(&gr.group, &gr.resource, name);
    for _attempt in 0..64 {
        let current = server.store.get(gr, namespace, name).ok_or_else(not_found)?;
        if let Some(uid) = &opts.uid
            && current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str())
        {
            return Err(ApiError::conflict(&gr.group, &gr.resource, name));
        }
        if let Some(rv) = &opts.resource_version
            && *rv != object_rv(&current).to_string()
        {
            return Err(ApiError::conflict(&gr.group, &gr.resource, name));
        }
        if dry_run {
            return Ok((*current).clone());
        }
        if opts.propagation == Propagation::Foreground {
            delete_dependents(server, &current, Propagation::Background).await;
        }
        let has_finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if current.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok((*current).clone());
            }
            let mut marked = (*current).clone();
            if let Some(meta) = marked.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            match server.store.update(gr, marked, object_rv(&current)) {
                Ok(stored) => {
                    if gr.group.is_empty() && gr.resource == "pods" {
                        let _guard = server.controller_lock.lock().await;
                        reconcile_namespace_slices(server, namespace);
                    }
                    return Ok((*stored).clone());
                }
                Err(StoreError::Conflict) => continue,
                Err(_) => return Err(not_found()),
            }
        }
        match server.store.delete(gr, namespace, name, Some(object_rv(&current))) {
            Ok(deleted) => {
                after_delete(server, gr, &deleted, opts.propagation).await;
                return Ok((*deleted).clone());
            }
            Err(StoreError::Conflict) => continue,
            Err(_) => return Err(not_found()),
        }
    }
    Err(ApiError::internal("too many concurrent modifications"))
}

pub(crate) async fn after_delete(server: &Arc<Server>, gr: &GroupResource, deleted: &Value, propagation: Propagation) {
    let (namespace, name) = object_key(deleted);
    match (gr.group.as_str(), gr.resource.as_str()) {
        ("", "namespaces") => {
            // The namespace controller's job, done at once: remove everything inside.
            for (resource, object) in server.store.list_namespace(&name) {
                let (ns, n) = object_key(&object);
                let _ = server.store.delete(&resource, &ns, &n, None);
            }
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            if let Ok(t) = type_from_crd(deleted) {
                let (items, _) = server.store.list(&t.key(), None);
                for item in items {
                    let (ns, n) = object_key(&item);
                    let _ = server.store.delete(&t.key(), &ns, &n, None);
                }
            }
            server.refresh_registry();
        }
        ("", "pods") => {
            let _guard = server.controller_lock.lock().await;
            reconcile_namespace_slices(server, &namespace);
        }
        _ => {}
    }
    delete_dependents(server, deleted, propagation).await;
}

/// Garbage collection of objects whose owner reference points at `owner`'s uid.
async fn delete_dependents(server: &Arc<Server>, owner: &Value, propagation: Propagation) {
    let Some(uid) = owner.pointer("/metadata/uid").and_then(Value::as_str) else {
        return;
    };
    let (namespace, _) = object_key(owner);
    let candidates = if namespace.is_empty() {
        server.store.list_all()
    } else {
        server.store.list_namespace(&namespace)
    };
    // Work list instead of recursion: dependents of dependents are handled in turn.
    let mut queue: Vec<(GroupResource, Arc<Value>, String)> =
        candidates.into_iter().map(|(g, o)| (g, o, uid.to_string())).collect();
    let mut budget = 100_000usize;
    while let Some((gr, object, owner_uid)) = queue.pop() {
        budget = budget.saturating_sub(1);
        if budget == 0 {
            break;
        }
        let Some(refs) = object.pointer("/metadata/ownerReferences").and_then(Value::as_array) else {
            continue;
        };
        if !refs.iter().any(|r| r["uid"].as_str() == Some(owner_uid.as_str())) {
            continue;
        }
        let (ns, n) = object_key(&object);
        let remaining: Vec<Value> = refs
            .iter()
            .filter(|r| r["uid"].as_str() != Some(owner_uid.as_str()))
            .cloned()
            .collect();
        if propagation == Propagation::Orphan || !remaining.is_empty() {
            let mut updated = (*object).clone();
            if let Some(meta) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
                if remaining.is_empty() {
                    meta.remove("ownerReferences");
                } else {
                    meta.insert("ownerReferences".into(), Value::Array(remaining));
                }
            }
            let _ = server.store.update(&gr, updated, object_rv(&object));
            continue;
        }
        if let Ok(deleted) = server.store.delete(&gr, &ns, &n, None) {
            if let Some(child_uid) = deleted.pointer("/metadata/uid").and_then(Value::as_str) {
                let more = if ns.is_empty() {
                    server.store.list_all()
                } else {
                    server.store.list_namespace(&ns)
                };
                queue.extend(more.into_iter().map(|(g, o)| (g, o, child_uid.to_string())));
            }
            if gr.group.is_empty() && gr.resource == "pods" {
                let _guard = server.controller_lock.lock().await;
                reconcile_namespace_slices(server, &ns);
            }
        }
    }
}
