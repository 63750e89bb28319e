//! Patch strategies applied to JSON objects: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902) and Kubernetes strategic merge patch. Pure functions.
//!
//! Strategic merge patch needs per-field knowledge that kube-apiserver takes from the Go
//! types; here it comes from a table of the list fields Herald and kubectl touch
//! ([`list_strategy`]). Lists not in the table are replaced, as for atomic lists.

use serde_json::{Map, Value};

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is malformed (400).
    #[error("invalid patch: {0}")]
    Malformed(String),
    /// The patch is well-formed but does not apply to this object (422).
    #[error("{0}")]
    DoesNotApply(String),
}

/// Applies an RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    if !patch.is_object() {
        return Err(PatchError::Malformed("a merge patch must be a JSON object".into()));
    }
    json_patch::merge(target, patch);
    Ok(())
}

/// Applies an RFC 6902 JSON patch (a list of operations).
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::Malformed(e.to_string()))?;
    json_patch::patch(target, &ops).map_err(|e| PatchError::DoesNotApply(e.to_string()))
}

/// How strategic merge patch treats a list field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Items are maps merged by the value of this key.
    MergeByKey(&'static str),
    /// Items are primitives merged as a set (union).
    Set,
    /// The patch's list replaces the target's.
    Replace,
}

/// The strategy for the list at `path` (field names from the root, list indices omitted).
/// Lists kube-apiserver treats as atomic (Node `taints`, Pod `containerStatuses`, ...)
/// fall through to [`ListStrategy::Replace`].
pub fn list_strategy(path: &[&str]) -> ListStrategy {
    let field = path.last().copied().unwrap_or_default();
    let parent = path.len().checked_sub(2).map(|i| path[i]).unwrap_or_default();
    match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => {
            ListStrategy::MergeByKey("name")
        }
        "volumeMounts" => ListStrategy::MergeByKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeByKey("devicePath"),
        "ports" if matches!(parent, "containers" | "initContainers" | "ephemeralContainers") => {
            ListStrategy::MergeByKey("containerPort")
        }
        "ports" if path.len() == 2 && path[0] == "spec" => ListStrategy::MergeByKey("port"),
        "conditions" => ListStrategy::MergeByKey("type"),
        "ownerReferences" => ListStrategy::MergeByKey("uid"),
        "finalizers" if parent == "metadata" => ListStrategy::Set,
        "addresses" if parent == "status" && path.first() == Some(&"status") => ListStrategy::MergeByKey("type"),
        "hostAliases" => ListStrategy::MergeByKey("ip"),
        "podIPs" | "hostIPs" => ListStrategy::MergeByKey("ip"),
        _ => ListStrategy::Replace,
    }
}

/// Applies a Kubernetes strategic merge patch, honouring `$patch: replace|delete`,
/// `$deleteFromPrimitiveList/<field>`, `$retainKeys` and ignoring `$setElementOrder/<field>`.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Object(patch_map) = patch else {
        return Err(PatchError::Malformed(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let mut path = Vec::new();
    merge_map(target, patch_map, &mut path)
}

fn merge_map(target: &mut Value, patch: &Map<String, Value>, path: &mut Vec<String>) -> Result<(), PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            *target = Value::Object(replaced);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => {
            return Err(PatchError::Malformed(format!("unknown patch directive {other:?}")));
        }
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(target_map) = target.as_object_mut() else {
        return Ok(());
    };
    if let Some(retain) = patch.get("$retainKeys") {
        let keep: Vec<&str> = retain
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        target_map.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch {
        if key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove: Vec<&Value> = value.as_array().map(|a| a.iter().collect()).unwrap_or_default();
            if let Some(Value::Array(items)) = target_map.get_mut(field) {
                items.retain(|i| !remove.contains(&i));
            }
            continue;
        }
        if key.starts_with('$') {
            return Err(PatchError::Malformed(format!("unknown patch directive {key:?}")));
        }
        if value.is_null() {
            target_map.remove(key);
            continue;
        }
        path.push(key.clone());
        match value {
            Value::Object(sub) => {
                let slot = target_map.entry(key.clone()).or_insert(Value::Null);
                merge_map(slot, sub, path)?;
                if slot.is_null() {
                    target_map.remove(key);
                }
            }
            Value::Array(items) => {
                let refs: Vec<&str> = path.iter().map(String::as_str).collect();
                let strategy = list_strategy(&refs);
                let slot = target_map.entry(key.clone()).or_insert(Value::Array(Vec::new()));
                merge_list(slot, items, strategy, path)?;
            }
            other => {
                target_map.insert(key.clone(), other.clone());
            }
        }
        path.pop();
    }
    Ok(())
}

fn merge_list(
    target: &mut Value,
    patch: &[Value],
    strategy: ListStrategy,
    path: &mut Vec<String>,
) -> Result<(), PatchError> {
    // `[{"$patch": "replace"}, ...]` replaces the whole list with the remaining items.
    let replace_all = patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    if replace_all || strategy == ListStrategy::Replace || !target.is_array() {
        let items: Vec<Value> = patch.iter().filter(|i| i.get("$patch").is_none()).cloned().collect();
        *target = Value::Array(items);
        return Ok(());
    }
    let Some(items) = target.as_array_mut() else {
        return Ok(());
    };
    match strategy {
        ListStrategy::Set => {
            for p in patch {
                if !items.contains(p) {
                    items.push(p.clone());
                }
            }
        }
        ListStrategy::MergeByKey(key) => {
            for p in patch {
                let Some(p_map) = p.as_object() else {
                    return Err(PatchError::Malformed(format!(
                        "list {} needs objects with {key:?}",
                        path.join(".")
                    )));
                };
                let Some(id) = p_map.get(key) else {
                    return Err(PatchError::Malformed(format!(
                        "item of {} has no merge key {key:?}",
                        path.join(".")
                    )));
                };
                let pos = items.iter().position(|i| i.get(key) == Some(id));
                let delete = p_map.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        items.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => merge_map(&mut items[i], p_map, path)?,
                    (None, false) => {
                        let mut fresh = Value::Object(Map::new());
                        merge_map(&mut fresh, p_map, path)?;
                        items.push(fresh);
                    }
                }
            }
        }
        ListStrategy::Replace => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_deletes_with_null() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut v, &json!({"a": null, "b": {"c": 5}})).expect("applies");
        assert_eq!(v, json!({"b": {"c": 5, "d": 3}}));
        assert!(merge_patch(&mut v, &json!([1])).is_err());
    }

    #[test]
    fn json_patch_ops_and_failures() {
        let mut v = json!({"spec": {"ports": [{"port": 80}]}});
        json_patch(
            &mut v,
            &json!([{"op": "add", "path": "/spec/ports/-", "value": {"port": 443}}]),
        )
        .expect("applies");
        assert_eq!(v["spec"]["ports"][1]["port"], 443);
        assert!(matches!(
            json_patch(&mut v, &json!({"op": "add"})),
            Err(PatchError::Malformed(_))
        ));
        assert!(matches!(
            json_patch(&mut v, &json!([{"op": "replace", "path": "/nope/x", "value": 1}])),
            Err(PatchError::DoesNotApply(_))
        ));
        assert!(matches!(
            json_patch(
                &mut v,
                &json!([{"op": "test", "path": "/spec/ports/0/port", "value": 81}])
            ),
            Err(PatchError::DoesNotApply(_))
        ));
    }

    #[test]
    fn strategic_merges_service_ports_by_port() {
        let mut svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        strategic_merge_patch(
            &mut svc,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 9090}]}}),
        )
        .expect("applies");
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"port": 80, "name": "http", "targetPort": 8080}, {"port": 443, "name": "https"}, {"port": 9090}])
        );
        strategic_merge_patch(
            &mut svc,
            &json!({"spec": {"ports": [{"port": 443, "$patch": "delete"}]}}),
        )
        .expect("applies");
        assert_eq!(svc["spec"]["ports"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn strategic_merges_containers_conditions_and_finalizers() {
        let mut pod = json!({
            "metadata": {"finalizers": ["a"], "ownerReferences": [{"uid": "1", "name": "x"}]},
            "spec": {"containers": [{"name": "c", "image": "old", "ports": [{"containerPort": 80, "name": "http"}]}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Scheduled", "status": "True"}]}
        });
        strategic_merge_patch(&mut pod, &json!({
            "metadata": {"finalizers": ["b", "a"], "ownerReferences": [{"uid": "2", "name": "y"}]},
            "spec": {"containers": [{"name": "c", "image": "new", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        })).expect("applies");
        assert_eq!(pod["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(pod["metadata"]["ownerReferences"].as_array().map(Vec::len), Some(2));
        assert_eq!(pod["spec"]["containers"][0]["image"], "new");
        assert_eq!(
            pod["spec"]["containers"][0]["ports"][0],
            json!({"containerPort": 80, "name": "http", "protocol": "TCP"})
        );
        assert_eq!(
            pod["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "Scheduled", "status": "True"}])
        );
        strategic_merge_patch(
            &mut pod,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .expect("applies");
        assert_eq!(pod["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn strategic_atomic_builtin_lists_replace() {
        let mut node =
            json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "c", "effect": "NoExecute"}]}});
        strategic_merge_patch(
            &mut node,
            &json!({"spec": {"taints": [{"key": "c", "effect": "NoExecute"}]}}),
        )
        .expect("applies");
        assert_eq!(node["spec"]["taints"], json!([{"key": "c", "effect": "NoExecute"}]));
    }

    #[test]
    fn strategic_unknown_lists_replace_and_directives() {
        let mut v = json!({"spec": {"ips": ["a", "b"], "m": {"x": 1, "y": 2}}});
        strategic_merge_patch(
            &mut v,
            &json!({"spec": {"ips": ["c"], "m": {"$patch": "replace", "z": 3}}}),
        )
        .expect("applies");
        assert_eq!(v, json!({"spec": {"ips": ["c"], "m": {"z": 3}}}));
        strategic_merge_patch(&mut v, &json!({"spec": {"m": {"$patch": "delete"}}})).expect("applies");
        assert_eq!(v, json!({"spec": {"ips": ["c"]}}));
        strategic_merge_patch(
            &mut v,
            &json!({"$setElementOrder/x": [], "spec": {"ips": [{"$patch": "replace"}]}}),
        )
        .expect("applies");
        assert_eq!(v, json!({"spec": {"ips": []}}));
        assert!(strategic_merge_patch(&mut v, &json!({"$bogus": 1})).is_err());
        assert!(strategic_merge_patch(&mut v, &json!("x")).is_err());
    }
}
