//! Decoding of built-in kinds through their k8s-openapi types, as kube-apiserver decodes
//! request bodies into Go structs: a value of the wrong type is a 400, fields the type
//! does not have are unknown (dropped with a warning, or refused under
//! `fieldValidation=Strict`), and what is stored is the type's normal form.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event as CoreEvent, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as EventsEvent;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Result of decoding: the normalised object and the paths of unknown fields.
pub struct Decoded {
    /// The object as the type serialises it (apiVersion/kind kept).
    pub object: Value,
    /// Dotted paths of fields the type does not know.
    pub unknown: Vec<String>,
}

fn roundtrip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// Decodes `object` as the built-in kind stored under (group, plural). None for kinds
/// without a typed decoder here (they are stored as given).
pub fn decode(group: &str, plural: &str, object: &Value) -> Option<Result<Decoded, String>> {
    let normal = match (group, plural) {
        ("", "namespaces") => roundtrip::<Namespace>(object),
        ("", "nodes") => roundtrip::<Node>(object),
        ("", "pods") => roundtrip::<Pod>(object),
        ("", "services") => roundtrip::<Service>(object),
        ("", "events") => roundtrip::<CoreEvent>(object),
        ("", "configmaps") => roundtrip::<ConfigMap>(object),
        ("", "secrets") => roundtrip::<Secret>(object),
        ("", "serviceaccounts") => roundtrip::<ServiceAccount>(object),
        ("events.k8s.io", "events") => roundtrip::<EventsEvent>(object),
        ("discovery.k8s.io", "endpointslices") => roundtrip::<EndpointSlice>(object),
        ("coordination.k8s.io", "leases") => roundtrip::<Lease>(object),
        ("apps", "deployments") => roundtrip::<Deployment>(object),
        ("apps", "daemonsets") => roundtrip::<DaemonSet>(object),
        ("apps", "replicasets") => roundtrip::<ReplicaSet>(object),
        ("apps", "statefulsets") => roundtrip::<StatefulSet>(object),
        ("rbac.authorization.k8s.io", "clusterroles") => roundtrip::<ClusterRole>(object),
        ("rbac.authorization.k8s.io", "clusterrolebindings") => roundtrip::<ClusterRoleBinding>(object),
        ("rbac.authorization.k8s.io", "roles") => roundtrip::<Role>(object),
        ("rbac.authorization.k8s.io", "rolebindings") => roundtrip::<RoleBinding>(object),
        ("apiextensions.k8s.io", "customresourcedefinitions") => roundtrip::<CustomResourceDefinition>(object),
        _ => return None,
    };
    Some(normal.map(|mut normal| {
        let mut unknown = Vec::new();
        missing_fields(object, &normal, "", &mut unknown);
        unknown.sort();
        // Keep the request's apiVersion/kind spelling; the caller checks them.
        if let (Some(out), Some(inp)) = (normal.as_object_mut(), object.as_object()) {
            for key in ["apiVersion", "kind"] {
                if let Some(v) = inp.get(key) {
                    out.insert(key.into(), v.clone());
                }
            }
        }
        Decoded {
            object: normal,
            unknown,
        }
    }))
}

/// Paths present (and not null) in `input` but absent from `normal`.
fn missing_fields(input: &Value, normal: &Value, path: &str, out: &mut Vec<String>) {
    match (input, normal) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match b.get(key) {
                    Some(nv) => missing_fields(value, nv, &child, out),
                    None if value.is_null() || matches!(key.as_str(), "apiVersion" | "kind") => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                missing_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_and_type_errors() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labelz": {}},
            "spec": {"portz": [1], "ports": [{"port": 80, "bogus": true}], "selector": {}}});
        let decoded = decode("", "services", &svc).expect("typed").expect("decodes");
        assert_eq!(
            decoded.unknown,
            vec!["metadata.labelz", "spec.ports[0].bogus", "spec.portz"]
        );
        assert_eq!(decoded.object["spec"]["ports"][0], json!({"port": 80}));
        assert_eq!(decoded.object["kind"], "Service");
        let bad = json!({"spec": {"ports": [{"port": "eighty"}]}});
        assert!(decode("", "services", &bad).expect("typed").is_err());
        assert!(decode("herald.io", "things", &bad).is_none());
    }
}
