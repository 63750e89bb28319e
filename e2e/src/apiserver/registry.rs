//! Resource kinds the server knows: the built-in ones Herald and kubectl touch, plus
//! those defined by CustomResourceDefinitions, and the discovery documents describing them.

use serde_json::{Value, json};

/// A column of `kubectl get` output, as in a CRD's `additionalPrinterColumns`.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// Header shown by kubectl.
    pub name: String,
    /// OpenAPI type: string, integer, number, boolean, date.
    pub type_: String,
    /// Simple JSONPath evaluated against the object, e.g. `.spec.node`.
    pub json_path: String,
    /// Column priority (0 = shown by default).
    pub priority: i64,
    /// Column description.
    pub description: String,
}

/// A resource type: one (group, plural) served at one or more versions.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// API group; "" for the core group.
    pub group: String,
    /// Served versions; the first is the preferred one.
    pub versions: Vec<String>,
    /// Lowercase plural, the path segment.
    pub plural: String,
    /// Lowercase singular.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names for kubectl.
    pub short_names: Vec<String>,
    /// Categories (e.g. `all`).
    pub categories: Vec<String>,
    /// Whether a `/status` subresource exists (then the main resource ignores `.status`).
    pub has_status: bool,
    /// Printer columns for CRDs (empty for built-ins, whose columns live in `table`).
    pub printer_columns: Vec<PrinterColumn>,
    /// Defined by a CRD (then strategic merge patch is refused).
    pub custom: bool,
    /// CRD structural schemas (`openAPIV3Schema`) by version; empty for built-ins.
    pub schemas: std::collections::BTreeMap<String, Value>,
}

impl ResourceType {
    /// `apiVersion` for `version`.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }
    /// The version clients get when they do not choose.
    pub fn preferred_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }
    /// Whether this is `events.k8s.io` Events (stored in core form, converted on the way).
    pub fn is_events_v1(&self) -> bool {
        self.group == "events.k8s.io" && self.plural == "events"
    }

    /// Key under which objects are stored.
    pub fn key(&self) -> GroupResource {
        // events.k8s.io/v1 Events share the core Events' storage, as in kube-apiserver.
        if self.is_events_v1() {
            return GroupResource::new("", "events");
        }
        GroupResource {
            group: self.group.clone(),
            resource: self.plural.clone(),
        }
    }
}

/// (group, plural): the identity of a stored resource, whatever the version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct GroupResource {
    /// API group.
    pub group: String,
    /// Plural resource name.
    pub resource: String,
}

impl GroupResource {
    /// Constructs one.
    pub fn new(group: &str, resource: &str) -> Self {
        Self {
            group: group.to_string(),
            resource: resource.to_string(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
    categories: &[&str],
) -> ResourceType {
    ResourceType {
        group: group.into(),
        versions: vec![version.into()],
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        has_status: status,
        printer_columns: Vec::new(),
        custom: false,
        schemas: Default::default(),
    }
}

/// The built-in resource types.
pub fn builtin_types() -> Vec<ResourceType> {
    vec![
        builtin("", "v1", "namespaces", "Namespace", false, &["ns"], true, &[]),
        builtin("", "v1", "nodes", "Node", false, &["no"], true, &[]),
        builtin("", "v1", "pods", "Pod", true, &["po"], true, &["all"]),
        builtin("", "v1", "services", "Service", true, &["svc"], true, &["all"]),
        builtin("", "v1", "events", "Event", true, &["ev"], false, &[]),
        builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"], false, &[]),
        builtin("", "v1", "secrets", "Secret", true, &[], false, &[]),
        builtin("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], false, &[]),
        builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"], false, &[]),
        builtin(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
            &[],
            false,
            &[],
        ),
        builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[], false, &[]),
        builtin(
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            false,
            &[],
            false,
            &[],
        ),
        builtin(
            "authorization.k8s.io",
            "v1",
            "selfsubjectrulesreviews",
            "SelfSubjectRulesReview",
            false,
            &[],
            false,
            &[],
        ),
        builtin(
            "authentication.k8s.io",
            "v1",
            "selfsubjectreviews",
            "SelfSubjectReview",
            false,
            &[],
            false,
            &[],
        ),
        builtin(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            true,
            &["deploy"],
            true,
            &["all"],
        ),
        builtin("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"], true, &["all"]),
        builtin("apps", "v1", "replicasets", "ReplicaSet", true, &["rs"], true, &["all"]),
        builtin(
            "apps",
            "v1",
            "statefulsets",
            "StatefulSet",
            true,
            &["sts"],
            true,
            &["all"],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
            false,
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
            false,
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            &[],
            false,
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
            false,
            &[],
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
            &["api-extensions"],
        ),
    ]
}

/// Reads the resource type a CRD defines. Errors name the offending field.
pub fn type_from_crd(crd: &Value) -> Result<ResourceType, (String, String)> {
    let spec = crd
        .get("spec")
        .ok_or(("spec".to_string(), "Required value".to_string()))?;
    let s = |p: &str| spec.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    let group = s("/group");
    let plural = s("/names/plural");
    let kind = s("/names/kind");
    if group.is_empty() {
        return Err(("spec.group".into(), "Required value".into()));
    }
    if plural.is_empty() {
        return Err(("spec.names.plural".into(), "Required value".into()));
    }
    if kind.is_empty() {
        return Err(("spec.names.kind".into(), "Required value".into()));
    }
    let expected_name = format!("{plural}.{group}");
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name != expected_name {
        return Err((
            "metadata.name".into(),
            format!("must be spec.names.plural+\".\"+spec.group ({expected_name})"),
        ));
    }
    let scope = s("/scope");
    let namespaced = match scope.as_str() {
        "Namespaced" => true,
        "Cluster" => false,
        _ => {
            return Err((
                "spec.scope".into(),
                "Unsupported value: must be Namespaced or Cluster".into(),
            ));
        }
    };
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        return Err(("spec.versions".into(), "Required value".into()));
    }
    // Storage version first so it is the preferred one, then the other served ones.
    let mut ordered: Vec<&Value> = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .collect();
    ordered.extend(versions.iter().filter(|v| v["storage"].as_bool() != Some(true)));
    let served: Vec<&Value> = ordered
        .into_iter()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .collect();
    let first = served
        .first()
        .copied()
        .ok_or(("spec.versions".to_string(), "no served version".to_string()))?;
    let has_status = first.pointer("/subresources/status").is_some();
    let printer_columns = first
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .map(|cols| {
            cols.iter()
                .map(|c| PrinterColumn {
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    type_: c["type"].as_str().unwrap_or("string").to_string(),
                    json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                    priority: c["priority"].as_i64().unwrap_or(0),
                    description: c["description"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let list = |p: &str| -> Vec<String> {
        spec.pointer(p)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let singular = s("/names/singular");
    Ok(ResourceType {
        group,
        versions: served
            .iter()
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect(),
        singular: if singular.is_empty() {
            kind.to_lowercase()
        } else {
            singular
        },
        plural,
        kind,
        namespaced,
        short_names: list("/names/shortNames"),
        categories: list("/names/categories"),
        has_status,
        printer_columns,
        custom: true,
        schemas: served
            .iter()
            .filter_map(|v| {
                Some((
                    v["name"].as_str()?.to_string(),
                    v.pointer("/schema/openAPIV3Schema")?.clone(),
                ))
            })
            .collect(),
    })
}

/// All known types: built-ins first, then CRD-defined ones.
#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Registry {
    /// A registry with the built-ins and the types of `crds` (invalid CRDs are skipped).
    pub fn new(crds: &[Value]) -> Self {
        let mut types = builtin_types();
        types.extend(
            crds.iter()
                .filter(|c| c.pointer("/metadata/deletionTimestamp").is_none())
                .filter_map(|c| type_from_crd(c).ok()),
        );
        Self { types }
    }

    /// The type served at `/…/{group}/{version}/{plural}`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural && t.versions.iter().any(|v| v == version))
    }

    /// Every type.
    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    /// Groups (other than core) with their versions, preferred first, in registration order.
    fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            let entry = match groups.iter_mut().position(|(g, _)| *g == t.group) {
                Some(i) => &mut groups[i].1,
                None => {
                    groups.push((t.group.clone(), Vec::new()));
                    &mut groups.last_mut().expect("just pushed").1
                }
            };
            for v in &t.versions {
                if !entry.contains(v) {
                    entry.push(v.clone());
                }
            }
        }
        groups
    }

    /// `/apis`: APIGroupList.
    pub fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self.groups().iter().map(|(g, vs)| api_group(g, vs)).collect();
        json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
    }

    /// `/apis/{group}`: APIGroup, if the group exists.
    pub fn api_group(&self, group: &str) -> Option<Value> {
        self.groups().into_iter().find(|(g, _)| g == group).map(|(g, vs)| {
            let mut doc = api_group(&g, &vs);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            doc
        })
    }

    /// `/api/v1` or `/apis/{group}/{version}`: APIResourceList, if served.
    pub fn api_resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let types: Vec<&ResourceType> = self
            .types
            .iter()
            .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
            .collect();
        if types.is_empty() {
            return None;
        }
        let mut resources = Vec::new();
        for t in types {
            let mut r = json!({
                "name": t.plural,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            });
            if !t.short_names.is_empty() {
                r["shortNames"] = json!(t.short_names);
            }
            if !t.categories.is_empty() {
                r["categories"] = json!(t.categories);
            }
            resources.push(r);
            if t.has_status {
                resources.push(json!({
                    "name": format!("{}/status", t.plural),
                    "singularName": "",
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources }))
    }
}

impl Registry {
    /// Served (group, version) pairs, core first.
    fn group_versions(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for t in &self.types {
            for v in &t.versions {
                let gv = (t.group.clone(), v.clone());
                if !out.contains(&gv) {
                    out.push(gv);
                }
            }
        }
        out
    }

    /// `/openapi/v3`: the index of per-group-version documents. The hash in each URL
    /// changes with the document, so clients' caches stay right when CRDs change.
    pub fn openapi_v3_root(&self) -> Value {
        let mut paths = serde_json::Map::new();
        for (group, version) in self.group_versions() {
            let key = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            let doc = self.openapi_v3_group_version(&group, &version).unwrap_or_default();
            let hash = fnv1a(doc.to_string().as_bytes());
            paths.insert(
                key.clone(),
                json!({ "serverRelativeURL": format!("/openapi/v3/{key}?hash={hash:016X}") }),
            );
        }
        json!({ "paths": paths })
    }

    /// `/openapi/v3/api/v1` or `/openapi/v3/apis/{group}/{version}`: a minimal OpenAPI v3
    /// document. It only declares, per kind, the PATCH operation with its query parameters,
    /// which is what kubectl reads to learn that the server validates fields itself
    /// (`fieldValidation`); schemas are not published, so kubectl falls back to its
    /// built-in patch metadata.
    pub fn openapi_v3_group_version(&self, group: &str, version: &str) -> Option<Value> {
        let types: Vec<&ResourceType> = self
            .types
            .iter()
            .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
            .collect();
        if types.is_empty() {
            return None;
        }
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let mut paths = serde_json::Map::new();
        for t in types {
            let collection = if t.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}", t.plural)
            } else {
                format!("{prefix}/{}", t.plural)
            };
            let gvk = json!({ "group": t.group, "version": version, "kind": t.kind });
            let query_params = json!([
                {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                {"name": "force", "in": "query", "schema": {"type": "boolean"}}
            ]);
            let op = |verb: &str| {
                json!({
                    "operationId": format!("{verb}{}", t.kind),
                    "parameters": query_params,
                    "responses": {"200": {"description": "OK"}},
                    "x-kubernetes-action": verb,
                    "x-kubernetes-group-version-kind": gvk,
                })
            };
            paths.insert(
                format!("{collection}/{{name}}"),
                json!({ "get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete") }),
            );
            paths.insert(collection, json!({ "get": op("list"), "post": op("post") }));
        }
        Some(json!({
            "openapi": "3.0.0",
            "info": { "title": "Kubernetes", "version": "v1.32.0" },
            "paths": paths,
            "components": { "schemas": {} },
        }))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn api_group(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({ "groupVersion": format!("{group}/{v}"), "version": v }))
        .collect();
    json!({ "name": group, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.io"},
            "spec": {
                "group": "example.io",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                    "schema": {"openAPIV3Schema": {"type": "object"}}
                }]
            }
        })
    }

    #[test]
    fn crd_defines_a_type_in_discovery() {
        let reg = Registry::new(&[crd()]);
        let t = reg.lookup("example.io", "v1", "widgets").expect("served");
        assert!(t.namespaced && t.has_status && t.custom);
        assert_eq!(t.short_names, vec!["wd"]);
        assert_eq!(t.printer_columns[0].json_path, ".spec.size");
        let list = reg.api_resource_list("example.io", "v1").expect("listed");
        assert_eq!(list["resources"][1]["name"], "widgets/status");
        assert!(reg.api_group("example.io").is_some());
        let groups = reg.api_group_list();
        assert!(
            groups["groups"]
                .as_array()
                .expect("array")
                .iter()
                .any(|g| g["name"] == "example.io")
        );
    }

    #[test]
    fn crd_name_must_match() {
        let mut bad = crd();
        bad["metadata"]["name"] = json!("wrong");
        assert_eq!(type_from_crd(&bad).map_err(|e| e.0), Err("metadata.name".to_string()));
    }
}
