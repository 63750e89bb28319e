//! Server-side apply and field ownership (`metadata.managedFields`). Pure functions.
//!
//! Ownership is tracked per field manager at leaf-path granularity: maps are walked, lists
//! and scalars are leaves (all lists are treated as atomic, which is coarser than
//! kube-apiserver's associative lists but gives the same answer for whole-list changes).
//! An apply conflicts with another manager when both own an overlapping path and the
//! applied value differs from the live one; with `force` the applier takes the fields.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A path of field names from the object root.
pub type FieldPath = Vec<String>;
/// A set of owned paths.
pub type FieldSet = BTreeSet<FieldPath>;

/// Which part of the object a request may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (resources without a status subresource).
    Whole,
    /// Everything but `.status` (main resource of a type with a status subresource).
    Main,
    /// Only `.status` (the `/status` subresource).
    Status,
}

impl Scope {
    fn allows(self, path: &[String]) -> bool {
        let is_status = path.first().is_some_and(|f| f == "status");
        match self {
            Scope::Whole => true,
            Scope::Main => !is_status,
            Scope::Status => is_status,
        }
    }
    fn subresource(self) -> &'static str {
        if self == Scope::Status { "status" } else { "" }
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedEntry {
    /// Field manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// "" or `status`.
    pub subresource: String,
    /// apiVersion the fields were written at.
    pub api_version: String,
    /// RFC 3339 time of the last change.
    pub time: String,
    /// Owned paths.
    pub fields: FieldSet,
}

/// Metadata fields the server owns; never tracked.
const SYSTEM_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "generateName",
];

/// The leaf paths set in `object` that `scope` allows.
pub fn field_set(object: &Value, scope: Scope) -> FieldSet {
    let mut out = FieldSet::new();
    if let Value::Object(map) = object {
        for (k, v) in map {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            let mut path = vec![k.clone()];
            if k == "metadata" {
                if let Value::Object(meta) = v {
                    for (mk, mv) in meta.iter().filter(|(mk, _)| !SYSTEM_METADATA.contains(&mk.as_str())) {
                        path.push(mk.clone());
                        collect_leaves(mv, &mut path, &mut out);
                        path.pop();
                    }
                }
                continue;
            }
            collect_leaves(v, &mut path, &mut out);
        }
    }
    out.retain(|p| scope.allows(p));
    out
}

fn collect_leaves(value: &Value, path: &mut Vec<String>, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(k.clone());
                collect_leaves(v, path, out);
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The value at `path`, if present.
pub fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(object, |cur, key| cur.get(key))
}

fn remove_path(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = object;
    for key in parents {
        match cur.get_mut(key) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(map) = cur.as_object_mut() {
        map.remove(last);
    }
}

/// Whether the live value already says everything the applied value says: equal
/// scalars, maps whose applied keys are all compatible, lists of equal length whose items
/// are compatible pairwise. This is what lets server-defaulted fields inside list items
/// (a Service port's `nodePort`, `protocol`) coexist with an applier's atomic list,
/// as they do with kube-apiserver's per-item ownership.
pub fn compatible(applied: Option<&Value>, live: Option<&Value>) -> bool {
    match (applied, live) {
        (Some(Value::Object(a)), Some(Value::Object(l))) => a.iter().all(|(k, v)| compatible(Some(v), l.get(k))),
        (Some(Value::Array(a)), Some(Value::Array(l))) => {
            a.len() == l.len() && a.iter().zip(l).all(|(x, y)| compatible(Some(x), Some(y)))
        }
        (a, l) => a == l,
    }
}

/// Deep-merges `applied` into `target`: maps merge, lists the target already satisfies
/// stay as they are, everything else replaces.
fn merge_applied(target: &mut Value, applied: &Value) {
    if applied.is_array() && compatible(Some(applied), Some(target)) {
        return;
    }
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                match t.get_mut(k) {
                    Some(existing)
                        if (existing.is_object() && v.is_object()) || (existing.is_array() && v.is_array()) =>
                    {
                        merge_applied(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (target, applied) => *target = applied.clone(),
    }
}

/// Dotted rendering of a path for messages: `.spec.ports`.
pub fn dotted(path: &[String]) -> String {
    path.iter().map(|p| format!(".{p}")).collect()
}

/// Conflicting fields of an apply: (manager, dotted field) pairs.
pub type Conflicts = Vec<(String, String)>;
/// Result of an apply: the merged object and its new managed fields.
pub type Applied = (Value, Vec<ManagedEntry>);

/// A server-side apply request.
pub struct ApplyRequest<'a> {
    /// Field manager (required for apply).
    pub manager: &'a str,
    /// Take conflicting fields instead of failing.
    pub force: bool,
    /// What the request may touch.
    pub scope: Scope,
    /// apiVersion of the request.
    pub api_version: &'a str,
    /// Timestamp for the managedFields entry.
    pub now: &'a str,
}

/// Applies `applied` (the applier's full intent) to `live`. Returns the merged object and
/// the new managed fields, or the conflicts as (manager, dotted field) pairs.
pub fn server_side_apply(
    live: &Value,
    applied: &Value,
    entries: &[ManagedEntry],
    req: &ApplyRequest<'_>,
) -> Result<Applied, Conflicts> {
    let applied_set = field_set(applied, req.scope);
    let subresource = req.scope.subresource();
    let is_self = |e: &ManagedEntry| e.manager == req.manager && e.operation == "Apply" && e.subresource == subresource;

    let mut conflicts = Vec::new();
    let mut conflicting_paths: Vec<FieldPath> = Vec::new();
    for entry in entries.iter().filter(|e| !is_self(e)) {
        for path in &applied_set {
            let owned_elsewhere = entry.fields.iter().any(|o| overlaps(o, path));
            if owned_elsewhere && !compatible(value_at(applied, path), value_at(live, path)) {
                conflicts.push((entry.manager.clone(), dotted(path)));
                conflicting_paths.push(path.clone());
            }
        }
    }
    conflicts.sort();
    conflicts.dedup();
    if !conflicts.is_empty() && !req.force {
        return Err(conflicts);
    }

    let mut merged = live.clone();
    let previous: FieldSet = entries
        .iter()
        .find(|e| is_self(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for dropped in previous.difference(&applied_set) {
        let owned_by_other = entries
            .iter()
            .filter(|e| !is_self(e))
            .any(|e| e.fields.iter().any(|o| overlaps(o, dropped)));
        if !owned_by_other && !applied_set.iter().any(|p| p.starts_with(dropped)) {
            remove_path(&mut merged, dropped);
        }
    }
    let mut scoped = applied.clone();
    if let Some(map) = scoped.as_object_mut() {
        match req.scope {
            Scope::Main => {
                map.remove("status");
            }
            Scope::Status => map.retain(|k, _| matches!(k.as_str(), "status" | "apiVersion" | "kind" | "metadata")),
            Scope::Whole => {}
        }
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| !SYSTEM_METADATA.contains(&k.as_str()));
            if req.scope == Scope::Status {
                meta.clear();
            }
        }
    }
    merge_applied(&mut merged, &scoped);

    let mut result: Vec<ManagedEntry> = Vec::new();
    for entry in entries.iter().filter(|e| !is_self(e)) {
        let mut e = entry.clone();
        if req.force {
            e.fields.retain(|o| !conflicting_paths.iter().any(|c| overlaps(c, o)));
        }
        if !e.fields.is_empty() {
            result.push(e);
        }
    }
    if !applied_set.is_empty() {
        result.push(ManagedEntry {
            manager: req.manager.to_string(),
            operation: "Apply".into(),
            subresource: subresource.into(),
            api_version: req.api_version.to_string(),
            time: req.now.to_string(),
            fields: applied_set,
        });
    }
    Ok((merged, result))
}

/// Records a non-apply write by `manager`: it takes ownership of the paths it changed;
/// removed paths are no longer owned by anyone.
pub fn record_update(
    old: Option<&Value>,
    new: &Value,
    entries: &[ManagedEntry],
    manager: &str,
    scope: Scope,
    api_version: &str,
    now: &str,
) -> Vec<ManagedEntry> {
    let old_set = old.map(|o| field_set(o, scope)).unwrap_or_default();
    let new_set = field_set(new, scope);
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| !old_set.contains(*p) || old.and_then(|o| value_at(o, p)) != value_at(new, p))
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    let subresource = scope.subresource();
    let mut result = Vec::new();
    let mut mine: FieldSet = FieldSet::new();
    for entry in entries {
        let mut e = entry.clone();
        let is_mine = e.manager == manager && e.operation == "Update" && e.subresource == subresource;
        e.fields.retain(|o| !removed.iter().any(|r| o.starts_with(r)));
        if is_mine {
            mine = e.fields;
            continue;
        }
        e.fields.retain(|o| !changed.iter().any(|c| overlaps(c, o)));
        if !e.fields.is_empty() {
            result.push(e);
        }
    }
    if changed.is_empty() && mine.is_empty() {
        return result;
    }
    mine.retain(|o| !changed.iter().any(|c| overlaps(c, o) && c != o));
    mine.extend(changed.iter().cloned());
    let time = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == subresource && changed.is_empty())
        .map(|e| e.time.clone())
        .unwrap_or_else(|| now.to_string());
    result.push(ManagedEntry {
        manager: manager.into(),
        operation: "Update".into(),
        subresource: subresource.into(),
        api_version: api_version.into(),
        time,
        fields: mine,
    });
    result
}

/// Reads `metadata.managedFields` (FieldsV1) into entries; malformed entries are dropped.
pub fn read_managed_fields(object: &Value) -> Vec<ManagedEntry> {
    let Some(list) = object.pointer("/metadata/managedFields").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            let mut fields = FieldSet::new();
            decode_fields(e.get("fieldsV1")?, &mut Vec::new(), &mut fields);
            Some(ManagedEntry {
                manager: s("manager"),
                operation: s("operation"),
                subresource: s("subresource"),
                api_version: s("apiVersion"),
                time: s("time"),
                fields,
            })
        })
        .collect()
}

fn decode_fields(node: &Value, path: &mut Vec<String>, out: &mut FieldSet) {
    let Some(map) = node.as_object() else {
        return;
    };
    if (map.is_empty() || map.contains_key(".")) && !path.is_empty() {
        out.insert(path.clone());
    }
    for (k, v) in map.iter().filter(|(k, _)| k.as_str() != ".") {
        path.push(k.strip_prefix("f:").unwrap_or(k).to_string());
        decode_fields(v, path, out);
        path.pop();
    }
}

/// Encodes a field set as FieldsV1.
pub fn encode_fields(fields: &FieldSet) -> Value {
    #[derive(Default)]
    struct Node {
        leaf: bool,
        children: std::collections::BTreeMap<String, Node>,
    }
    fn to_value(node: &Node) -> Value {
        let mut map: Map<String, Value> = node
            .children
            .iter()
            .map(|(k, c)| (format!("f:{k}"), to_value(c)))
            .collect();
        // A path that is owned itself and also has owned children is marked with ".".
        if node.leaf && !map.is_empty() {
            map.insert(".".into(), json!({}));
        }
        Value::Object(map)
    }
    let mut root = Node::default();
    for path in fields {
        let mut cur = &mut root;
        for key in path {
            cur = cur.children.entry(key.clone()).or_default();
        }
        cur.leaf = true;
    }
    to_value(&root)
}

/// Writes entries into `metadata.managedFields` (removing it when empty).
pub fn write_managed_fields(object: &mut Value, entries: &[ManagedEntry]) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
        return;
    }
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": encode_fields(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    meta.insert("managedFields".into(), Value::Array(list));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(manager: &'a str, force: bool) -> ApplyRequest<'a> {
        ApplyRequest {
            manager,
            force,
            scope: Scope::Main,
            api_version: "v1",
            now: "2026-01-01T00:00:00Z",
        }
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d"}, "data": data})
    }

    #[test]
    fn apply_creates_and_tracks_ownership() {
        let (obj, entries) =
            server_side_apply(&json!({}), &cm(json!({"a": "1"})), &[], &req("alice", false)).expect("no conflict");
        assert_eq!(obj["data"]["a"], "1");
        assert_eq!(entries.len(), 1);
        assert!(entries[0].fields.contains(&vec!["data".to_string(), "a".to_string()]));
        assert!(!entries[0].fields.iter().any(|p| p[0] == "metadata"));
    }

    #[test]
    fn conflicting_value_needs_force_and_equal_value_is_shared() {
        let (obj, entries) =
            server_side_apply(&json!({}), &cm(json!({"a": "1"})), &[], &req("alice", false)).expect("ok");
        let err = server_side_apply(&obj, &cm(json!({"a": "2"})), &entries, &req("bob", false)).expect_err("conflict");
        assert_eq!(err, vec![("alice".to_string(), ".data.a".to_string())]);
        let (shared, shared_entries) =
            server_side_apply(&obj, &cm(json!({"a": "1"})), &entries, &req("bob", false)).expect("same value shares");
        assert_eq!(shared_entries.len(), 2);
        let (forced, forced_entries) =
            server_side_apply(&shared, &cm(json!({"a": "2"})), &entries, &req("bob", true)).expect("forced");
        assert_eq!(forced["data"]["a"], "2");
        assert_eq!(forced_entries.len(), 1);
        assert_eq!(forced_entries[0].manager, "bob");
    }

    #[test]
    fn fields_dropped_from_apply_are_removed_unless_owned_elsewhere() {
        let (obj, entries) =
            server_side_apply(&json!({}), &cm(json!({"a": "1", "b": "2"})), &[], &req("alice", false)).expect("ok");
        let (obj2, entries2) =
            server_side_apply(&obj, &cm(json!({"b": "2"})), &entries, &req("alice", false)).expect("ok");
        assert_eq!(obj2["data"], json!({"b": "2"}));
        let entries3 = record_update(
            Some(&obj2),
            &cm(json!({"b": "2", "c": "3"})),
            &entries2,
            "kubectl-edit",
            Scope::Main,
            "v1",
            "t",
        );
        let with_c = cm(json!({"b": "2", "c": "3"}));
        let (obj4, _) = server_side_apply(&with_c, &cm(json!({})), &entries3, &req("alice", false)).expect("ok");
        assert_eq!(obj4["data"], json!({"c": "3"}));
    }

    #[test]
    fn update_takes_ownership_from_appliers() {
        let (obj, entries) =
            server_side_apply(&json!({}), &cm(json!({"a": "1"})), &[], &req("alice", false)).expect("ok");
        let updated = cm(json!({"a": "9"}));
        let entries = record_update(Some(&obj), &updated, &entries, "editor", Scope::Main, "v1", "t");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].manager, "editor");
        let err =
            server_side_apply(&updated, &cm(json!({"a": "1"})), &entries, &req("alice", false)).expect_err("conflict");
        assert_eq!(err[0].0, "editor");
    }

    #[test]
    fn status_scope_touches_only_status() {
        let live = json!({"metadata": {"name": "s"}, "spec": {"x": 1}});
        let applied =
            json!({"metadata": {"name": "s", "labels": {"l": "v"}}, "spec": {"x": 2}, "status": {"ok": true}});
        let mut r = req("ctl", false);
        r.scope = Scope::Status;
        let (obj, entries) = server_side_apply(&live, &applied, &[], &r).expect("ok");
        assert_eq!(obj["spec"]["x"], 1);
        assert_eq!(obj["status"]["ok"], true);
        assert!(obj["metadata"].get("labels").is_none());
        assert_eq!(entries[0].subresource, "status");
    }

    #[test]
    fn server_defaulted_fields_in_list_items_do_not_conflict() {
        let svc = |ports: Value| json!({"metadata": {"name": "s"}, "spec": {"ports": ports}});
        let (created, entries) =
            server_side_apply(&json!({}), &svc(json!([{"port": 80}])), &[], &req("kubectl", false)).expect("ok");
        let mut defaulted = created.clone();
        defaulted["spec"]["ports"][0]["nodePort"] = json!(30000);
        let entries = record_update(
            Some(&created),
            &svc(json!([{"port": 80, "name": "x"}])),
            &entries,
            "other",
            Scope::Main,
            "v1",
            "t",
        );
        let live = svc(json!([{"port": 80, "name": "x", "nodePort": 30000}]));
        let (merged, _) = server_side_apply(
            &live,
            &svc(json!([{"port": 80, "name": "x"}])),
            &entries,
            &req("kubectl", false),
        )
        .expect("compatible");
        assert_eq!(merged["spec"]["ports"][0]["nodePort"], 30000);
        assert!(server_side_apply(&live, &svc(json!([{"port": 81}])), &entries, &req("kubectl", false)).is_err());
    }

    #[test]
    fn managed_fields_round_trip() {
        let fields: FieldSet = [
            vec!["spec".to_string(), "a".to_string()],
            vec!["spec".to_string()],
            vec!["metadata".to_string(), "labels".to_string(), "x".to_string()],
        ]
        .into_iter()
        .collect();
        let entry = ManagedEntry {
            manager: "m".into(),
            operation: "Apply".into(),
            subresource: String::new(),
            api_version: "v1".into(),
            time: "t".into(),
            fields: fields.clone(),
        };
        let mut obj = json!({"metadata": {}});
        write_managed_fields(&mut obj, std::slice::from_ref(&entry));
        assert_eq!(read_managed_fields(&obj), vec![entry]);
    }
}
