//! `events.k8s.io/v1` Events are stored as core `v1` Events, as in kube-apiserver, so
//! `kubectl get events` and `kubectl describe` show what kube-rs's `Recorder` wrote.
//! These pure functions convert between the two shapes.

use serde_json::{Map, Value};

/// (core v1 field, events.k8s.io/v1 field) pairs that only differ in name.
const RENAMED: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

/// Fields with the same name in both.
const SHARED: &[&str] = &[
    "metadata",
    "eventTime",
    "series",
    "reportingInstance",
    "action",
    "reason",
    "related",
    "type",
];

fn convert(input: &Value, pairs: &[(&str, &str)], api_version: &str) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    out.insert("kind".into(), Value::String("Event".into()));
    for key in SHARED {
        if let Some(v) = input.get(*key).filter(|v| !v.is_null()) {
            out.insert((*key).into(), v.clone());
        }
    }
    for (from, to) in pairs {
        if let Some(v) = input.get(*from).filter(|v| !v.is_null()) {
            out.insert((*to).into(), v.clone());
        }
    }
    Value::Object(out)
}

/// A stored core Event as `events.k8s.io/v1` shows it.
pub fn core_to_v1(core: &Value) -> Value {
    convert(core, RENAMED, "events.k8s.io/v1")
}

/// An `events.k8s.io/v1` Event in its stored core form.
pub fn v1_to_core(v1: &Value) -> Value {
    let swapped: Vec<(&str, &str)> = RENAMED.iter().map(|(a, b)| (*b, *a)).collect();
    let mut core = convert(v1, &swapped, "v1");
    // kube-apiserver fills the core timestamps from eventTime when only it is given.
    if let Some(map) = core.as_object_mut()
        && let Some(Value::String(t)) = map.get("eventTime").cloned()
    {
        let whole_seconds = t.split('.').next().unwrap_or_default().trim_end_matches('Z');
        let stamp = Value::String(format!("{whole_seconds}Z"));
        map.entry("firstTimestamp").or_insert_with(|| stamp.clone());
        map.entry("lastTimestamp").or_insert(stamp);
    }
    core
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_and_kubectl_fields() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "d"},
            "eventTime": "2026-01-01T00:00:00.123456Z", "reportingController": "herald.io/controller", "reportingInstance": "c-1",
            "action": "Allocate", "reason": "IPAllocated", "type": "Normal", "note": "192.0.2.1",
            "regarding": {"kind": "Service", "name": "web", "namespace": "d"}});
        let core = v1_to_core(&v1);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "web");
        assert_eq!(core["message"], "192.0.2.1");
        assert_eq!(core["reportingComponent"], "herald.io/controller");
        assert_eq!(core["lastTimestamp"], "2026-01-01T00:00:00Z");
        let back = core_to_v1(&core);
        for key in [
            "regarding",
            "note",
            "reason",
            "eventTime",
            "reportingController",
            "action",
            "type",
            "metadata",
        ] {
            assert_eq!(back[key], v1[key], "{key}");
        }
    }
}
