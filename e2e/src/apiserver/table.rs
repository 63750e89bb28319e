//! `meta.k8s.io/v1` Table output for `kubectl get`: CRD printer columns (simple JSONPath)
//! and default columns for the built-ins.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::registry::{PrinterColumn, ResourceType};

/// Whether an Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"))
}

/// Evaluates a simple JSONPath (`.a.b`, `.a[0].b`, `.a[*].b`). Several results become an array.
pub fn eval_json_path(object: &Value, path: &str) -> Option<Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut current: Vec<&Value> = vec![object];
    let mut many = false;
    for segment in path.trim_start_matches('.').split('.').filter(|s| !s.is_empty()) {
        let (field, indexes) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !field.is_empty() {
            current = current.into_iter().filter_map(|v| v.get(field)).collect();
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            let index = index.trim_end_matches(']');
            current = if index == "*" {
                many = true;
                current.into_iter().filter_map(Value::as_array).flatten().collect()
            } else {
                let i: usize = index.parse().ok()?;
                current.into_iter().filter_map(|v| v.get(i)).collect()
            };
        }
    }
    match (current.len(), many) {
        (0, _) => None,
        (1, false) => current.first().map(|v| (*v).clone()),
        _ => Some(Value::Array(current.into_iter().cloned().collect())),
    }
}

/// kubectl's short age format: 5s, 3m, 2h, 4d.
pub fn human_age(since: &str, now: DateTime<Utc>) -> String {
    let Ok(t) = DateTime::parse_from_rfc3339(since) else {
        return "<unknown>".into();
    };
    let secs = (now - t.with_timezone(&Utc)).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

struct Column {
    name: &'static str,
    type_: &'static str,
    format: &'static str,
    cell: fn(&Value, DateTime<Utc>) -> Value,
}

fn name_cell(o: &Value, _: DateTime<Utc>) -> Value {
    o.pointer("/metadata/name").cloned().unwrap_or(Value::Null)
}
fn age_cell(o: &Value, now: DateTime<Utc>) -> Value {
    json!(human_age(
        o.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        now
    ))
}
fn str_at(o: &Value, p: &str) -> String {
    o.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string()
}
fn or_none(s: String) -> Value {
    json!(if s.is_empty() { "<none>".to_string() } else { s })
}

fn builtin_columns(group: &str, resource: &str) -> Vec<Column> {
    let name = Column {
        name: "Name",
        type_: "string",
        format: "name",
        cell: name_cell,
    };
    let age = Column {
        name: "Age",
        type_: "string",
        format: "",
        cell: age_cell,
    };
    let mut cols = vec![name];
    match (group, resource) {
        ("", "services") => {
            cols.push(Column {
                name: "Type",
                type_: "string",
                format: "",
                cell: |o, _| json!(str_at(o, "/spec/type")),
            });
            cols.push(Column {
                name: "Cluster-IP",
                type_: "string",
                format: "",
                cell: |o, _| or_none(str_at(o, "/spec/clusterIP")),
            });
            cols.push(Column {
                name: "External-IP",
                type_: "string",
                format: "",
                cell: |o, _| {
                    let ips: Vec<String> = o
                        .pointer("/status/loadBalancer/ingress")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()).map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    if ips.is_empty() && str_at(o, "/spec/type") == "LoadBalancer" {
                        json!("<pending>")
                    } else {
                        or_none(ips.join(","))
                    }
                },
            });
            cols.push(Column {
                name: "Port(s)",
                type_: "string",
                format: "",
                cell: |o, _| {
                    let ports: Vec<String> = o
                        .pointer("/spec/ports")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .map(|p| {
                                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                                    match p["nodePort"].as_i64() {
                                        Some(np) => format!("{}:{np}/{proto}", p["port"]),
                                        None => format!("{}/{proto}", p["port"]),
                                    }
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    or_none(ports.join(","))
                },
            });
        }
        ("", "pods") => {
            cols.push(Column {
                name: "Status",
                type_: "string",
                format: "",
                cell: |o, _| json!(str_at(o, "/status/phase")),
            });
            cols.push(Column {
                name: "IP",
                type_: "string",
                format: "",
                cell: |o, _| or_none(str_at(o, "/status/podIP")),
            });
            cols.push(Column {
                name: "Node",
                type_: "string",
                format: "",
                cell: |o, _| or_none(str_at(o, "/spec/nodeName")),
            });
        }
        ("", "namespaces") => {
            cols.push(Column {
                name: "Status",
                type_: "string",
                format: "",
                cell: |o, _| json!(str_at(o, "/status/phase")),
            });
        }
        ("", "nodes") => {
            cols.push(Column {
                name: "Status",
                type_: "string",
                format: "",
                cell: |o, _| {
                    let ready = o
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                        .map(|c| if c["status"] == "True" { "Ready" } else { "NotReady" });
                    {
                        let ready = ready.unwrap_or("Unknown");
                        if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                            json!(format!("{ready},SchedulingDisabled"))
                        } else {
                            json!(ready)
                        }
                    }
                },
            });
        }
        ("discovery.k8s.io", "endpointslices") => {
            cols.push(Column {
                name: "AddressType",
                type_: "string",
                format: "",
                cell: |o, _| json!(str_at(o, "/addressType")),
            });
            cols.push(Column {
                name: "Endpoints",
                type_: "string",
                format: "",
                cell: |o, _| {
                    let ips: Vec<String> = o["endpoints"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|e| e["addresses"][0].as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    or_none(ips.join(","))
                },
            });
        }
        ("coordination.k8s.io", "leases") => {
            cols.push(Column {
                name: "Holder",
                type_: "string",
                format: "",
                cell: |o, _| json!(str_at(o, "/spec/holderIdentity")),
            });
        }
        _ => {}
    }
    cols.push(age);
    cols
}

fn partial_metadata(object: &Value) -> Value {
    let mut meta = object.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.remove("managedFields");
    }
    json!({ "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta })
}

fn crd_cell(column: &PrinterColumn, object: &Value, now: DateTime<Utc>) -> Value {
    match eval_json_path(object, &column.json_path) {
        None => Value::Null,
        Some(Value::String(s)) if column.type_ == "date" => json!(human_age(&s, now)),
        Some(v) => v,
    }
}

/// A Table of `objects` of type `rt`. `include_object` picks the row object form:
/// "None", "Object", or the default "Metadata".
pub fn table(
    rt: &ResourceType,
    objects: &[&Value],
    resource_version: u64,
    continue_token: Option<&str>,
    include_object: &str,
) -> Value {
    let now = Utc::now();
    let (definitions, rows): (Vec<Value>, Vec<Value>) = if rt.custom {
        let mut defs = vec![
            json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
        ];
        let mut columns = rt.printer_columns.clone();
        if columns.is_empty() {
            columns.push(PrinterColumn {
                name: "Age".into(),
                type_: "date".into(),
                json_path: ".metadata.creationTimestamp".into(),
                priority: 0,
                description: String::new(),
            });
        }
        defs.extend(columns.iter().map(|c| json!({"name": c.name, "type": c.type_, "format": "", "description": c.description, "priority": c.priority})));
        let rows = objects
            .iter()
            .map(|o| {
                let mut cells = vec![name_cell(o, now)];
                cells.extend(columns.iter().map(|c| crd_cell(c, o, now)));
                row(cells, o, include_object)
            })
            .collect();
        (defs, rows)
    } else {
        if rt.plural == "events" && matches!(rt.group.as_str(), "" | "events.k8s.io") {
            return event_table(objects, resource_version, continue_token, include_object, now);
        }
        let cols = builtin_columns(&rt.group, &rt.plural);
        let defs = cols
            .iter()
            .map(|c| json!({"name": c.name, "type": c.type_, "format": c.format, "description": "", "priority": 0}))
            .collect();
        let rows = objects
            .iter()
            .map(|o| row(cols.iter().map(|c| (c.cell)(o, now)).collect(), o, include_object))
            .collect();
        (defs, rows)
    };
    let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({ "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": definitions, "rows": rows })
}

/// kubectl's event listing: LAST SEEN, TYPE, REASON, OBJECT, MESSAGE (Name at priority 1),
/// from either the core or the events.k8s.io shape.
fn event_table(
    objects: &[&Value],
    resource_version: u64,
    continue_token: Option<&str>,
    include_object: &str,
    now: DateTime<Utc>,
) -> Value {
    let first = |o: &Value, pointers: &[&str]| -> Option<String> {
        pointers.iter().find_map(|p| {
            o.pointer(p)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        })
    };
    let definitions = json!([
        {"name": "Last Seen", "type": "string", "format": "", "description": "", "priority": 0},
        {"name": "Type", "type": "string", "format": "", "description": "", "priority": 0},
        {"name": "Reason", "type": "string", "format": "", "description": "", "priority": 0},
        {"name": "Object", "type": "string", "format": "", "description": "", "priority": 0},
        {"name": "Message", "type": "string", "format": "", "description": "", "priority": 0},
        {"name": "Name", "type": "string", "format": "name", "description": "", "priority": 1},
    ]);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let seen = first(
                o,
                &[
                    "/series/lastObservedTime",
                    "/lastTimestamp",
                    "/deprecatedLastTimestamp",
                    "/eventTime",
                    "/metadata/creationTimestamp",
                ],
            )
            .unwrap_or_default();
            let kind = first(o, &["/involvedObject/kind", "/regarding/kind"])
                .unwrap_or_default()
                .to_lowercase();
            let name = first(o, &["/involvedObject/name", "/regarding/name"]).unwrap_or_default();
            let cells = vec![
                json!(human_age(&seen, now)),
                json!(first(o, &["/type"]).unwrap_or_default()),
                json!(first(o, &["/reason"]).unwrap_or_default()),
                json!(format!("{kind}/{name}")),
                json!(first(o, &["/message", "/note"]).unwrap_or_default()),
                name_cell(o, now),
            ];
            row(cells, o, include_object)
        })
        .collect();
    let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({ "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": definitions, "rows": rows })
}

fn row(cells: Vec<Value>, object: &Value, include_object: &str) -> Value {
    match include_object {
        "None" => json!({ "cells": cells }),
        "Object" => json!({ "cells": cells, "object": object }),
        _ => json!({ "cells": cells, "object": partial_metadata(object) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_forms() {
        let o = json!({"spec": {"ips": ["a", "b"], "x": [{"y": 1}, {"y": 2}]}, "status": {"c": [{"t": "Ready"}]}});
        assert_eq!(eval_json_path(&o, ".spec.ips"), Some(json!(["a", "b"])));
        assert_eq!(eval_json_path(&o, ".spec.x[1].y"), Some(json!(2)));
        assert_eq!(eval_json_path(&o, ".spec.x[*].y"), Some(json!([1, 2])));
        assert_eq!(eval_json_path(&o, ".status.c[0].t"), Some(json!("Ready")));
        assert_eq!(eval_json_path(&o, "{.spec.missing}"), None);
    }

    #[test]
    fn ages_and_accept() {
        let now = DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(human_age("2026-01-01T23:59:30Z", now), "30s");
        assert_eq!(human_age("2026-01-01T23:00:00Z", now), "60m");
        assert_eq!(human_age("2025-12-01T00:00:00Z", now), "32d");
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
