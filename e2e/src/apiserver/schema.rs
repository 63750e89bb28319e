//! Structural OpenAPI v3 schemas of CustomResourceDefinitions applied to custom
//! resources as kube-apiserver does on every write: pruning of unknown fields
//! (reported for `fieldValidation=Strict`), defaulting, and validation of types,
//! `required`, `enum`, `nullable` and numeric/length/item bounds. Pure functions.
//!
//! Not evaluated: `pattern`, `format`, and CEL `x-kubernetes-validations`.

use serde_json::{Map, Value};

use super::status::Cause;

fn preserves_unknown(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
        || schema.get("x-kubernetes-embedded-resource").and_then(Value::as_bool) == Some(true)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Removes fields the schema does not know, returning their paths. At the root,
/// `apiVersion`, `kind` and `metadata` are always kept.
pub fn prune(object: &mut Value, schema: &Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Value::Object(map) = object {
        let props = schema.get("properties").and_then(Value::as_object);
        let keys: Vec<String> = map.keys().cloned().collect();
        for key in keys {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match props.and_then(|p| p.get(&key)) {
                Some(sub) => {
                    if let Some(v) = map.get_mut(&key) {
                        prune_value(v, sub, &key, &mut unknown);
                    }
                }
                None if preserves_unknown(schema) => {}
                None => {
                    map.remove(&key);
                    unknown.push(key);
                }
            }
        }
    }
    unknown
}

fn prune_value(value: &mut Value, schema: &Value, path: &str, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child_path = join(path, &key);
                let sub = props.and_then(|p| p.get(&key)).or(additional.filter(|a| a.is_object()));
                match sub {
                    Some(sub) => {
                        if let Some(v) = map.get_mut(&key) {
                            prune_value(v, sub, &child_path, unknown);
                        }
                    }
                    None if preserves_unknown(schema) || additional.and_then(Value::as_bool) == Some(true) => {}
                    None => {
                        map.remove(&key);
                        unknown.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_value(item, item_schema, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Fills in `default`s of absent fields (and of nulls where the field is not nullable)
/// and drops other nulls of non-nullable fields, recursively.
pub fn apply_defaults(object: &mut Value, schema: &Value) {
    let Value::Object(map) = object else {
        return;
    };
    default_properties(map, schema, true);
}

fn default_properties(map: &mut Map<String, Value>, schema: &Value, root: bool) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (key, sub) in props {
            if root && key == "metadata" {
                continue;
            }
            let nullable = sub.get("nullable").and_then(Value::as_bool) == Some(true);
            match map.get(key) {
                None => {
                    if let Some(default) = sub.get("default") {
                        map.insert(key.clone(), default.clone());
                    }
                }
                Some(Value::Null) if !nullable => match sub.get("default") {
                    Some(default) => {
                        map.insert(key.clone(), default.clone());
                    }
                    None => {
                        map.remove(key);
                    }
                },
                Some(_) => {}
            }
            if let Some(v) = map.get_mut(key) {
                default_value(v, sub);
            }
        }
    }
    if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        let known: Vec<String> = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        for (key, v) in map.iter_mut().filter(|(k, _)| !known.contains(k)) {
            let _ = key;
            default_value(v, additional);
        }
    }
}

fn default_value(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(map) => default_properties(map, schema, false),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    default_value(item, item_schema);
                }
            }
        }
        _ => {}
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Validates everything but `apiVersion`, `kind` and `metadata` against the schema.
pub fn validate(object: &Value, schema: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Value::Object(map) = object {
        let stripped: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut root_schema = schema.clone();
        if let Some(props) = root_schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.remove("metadata");
            props.remove("apiVersion");
            props.remove("kind");
        }
        if let Some(required) = root_schema.get_mut("required").and_then(Value::as_array_mut) {
            required.retain(|r| !matches!(r.as_str(), Some("metadata" | "apiVersion" | "kind")));
        }
        validate_value(&Value::Object(stripped), &root_schema, "", &mut causes);
    }
    causes
}

fn validate_value(value: &Value, schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let shown = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) && schema.get("type").is_some() {
            let expected = schema["type"].as_str().unwrap_or("object");
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                field: shown.to_string(),
                message: format!("Invalid value: \"null\": {shown} in body must be of type {expected}: \"null\""),
            });
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    let actual = type_name(value);
    if int_or_string {
        if !matches!(actual, "integer" | "string") {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                field: shown.to_string(),
                message: format!(
                    "Invalid value: \"{actual}\": {shown} in body must be of type integer or string: \"{actual}\""
                ),
            });
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let ok = actual == expected || (expected == "number" && actual == "integer");
        if !ok {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                field: shown.to_string(),
                message: format!(
                    "Invalid value: \"{actual}\": {shown} in body must be of type {expected}: \"{actual}\""
                ),
            });
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: shown.to_string(),
            message: format!("Unsupported value: {value}: supported values: {}", list.join(", ")),
        });
    }
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    if let Some(n) = value.as_f64() {
        let exclusive_min = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
        let exclusive_max = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
        if let Some(min) = bound("minimum")
            && (n < min || (exclusive_min && n == min))
        {
            causes.push(Cause::invalid(
                shown,
                format!("Invalid value: {value}: {shown} in body should be greater than or equal to {min}"),
            ));
        }
        if let Some(max) = bound("maximum")
            && (n > max || (exclusive_max && n == max))
        {
            causes.push(Cause::invalid(
                shown,
                format!("Invalid value: {value}: {shown} in body should be less than or equal to {max}"),
            ));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as f64;
        if bound("minLength").is_some_and(|m| len < m) {
            causes.push(Cause::invalid(
                shown,
                format!(
                    "Invalid value: {value}: {shown} in body should be at least {} chars long",
                    bound("minLength").unwrap_or_default()
                ),
            ));
        }
        if bound("maxLength").is_some_and(|m| len > m) {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: shown.to_string(),
                message: format!(
                    "Too long: may not be more than {} bytes",
                    bound("maxLength").unwrap_or_default()
                ),
            });
        }
    }
    match value {
        Value::Array(items) => {
            let len = items.len() as f64;
            if bound("minItems").is_some_and(|m| len < m) {
                causes.push(Cause::invalid(
                    shown,
                    format!(
                        "Invalid value: {len}: {shown} in body should have at least {} items",
                        bound("minItems").unwrap_or_default()
                    ),
                ));
            }
            if bound("maxItems").is_some_and(|m| len > m) {
                causes.push(Cause {
                    reason: "FieldValueTooMany",
                    field: shown.to_string(),
                    message: format!(
                        "Too many: {len}: must have at most {} items",
                        bound("maxItems").unwrap_or_default()
                    ),
                });
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_value(item, item_schema, &format!("{path}[{i}]"), causes);
                }
            }
        }
        Value::Object(map) => {
            for required in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(required) {
                    causes.push(Cause::required(join(path, required)));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, v) in map {
                if let Some(sub) = props.and_then(|p| p.get(key)).or(additional) {
                    validate_value(v, sub, &join(path, key), causes);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["addresses"],
                    "properties": {
                        "addresses": {"type": "array", "default": [], "items": {"type": "string"}, "maxItems": 2},
                        "autoAssign": {"type": "boolean", "default": true},
                        "mode": {"type": "string", "enum": ["a", "b"]},
                        "priority": {"type": "integer", "minimum": 0, "default": 0},
                        "selector": {"type": "object", "nullable": true, "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                        "port": {"x-kubernetes-int-or-string": true},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }
                },
                "status": {"type": "object", "properties": {"ok": {"type": "boolean"}}}
            }
        })
    }

    #[test]
    fn prunes_unknown_fields_but_keeps_preserved_and_maps() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "whatever": 1}, "bogus": 1,
            "spec": {"addresses": ["a"], "extra": 1, "selector": {"matchLabels": {"k": "v"}, "nope": 2}, "free": {"any": {"thing": 1}}}});
        let mut unknown = prune(&mut obj, &schema());
        unknown.sort();
        assert_eq!(unknown, vec!["bogus", "spec.extra", "spec.selector.nope"]);
        assert_eq!(obj["spec"]["selector"], json!({"matchLabels": {"k": "v"}}));
        assert_eq!(obj["spec"]["free"], json!({"any": {"thing": 1}}));
        assert_eq!(obj["metadata"]["whatever"], 1);
    }

    #[test]
    fn defaults_absent_and_null_fields() {
        let mut obj = json!({"spec": {"autoAssign": null, "selector": null}});
        apply_defaults(&mut obj, &schema());
        assert_eq!(
            obj["spec"],
            json!({"addresses": [], "autoAssign": true, "priority": 0, "selector": null})
        );
        let mut no_spec = json!({"metadata": {}});
        apply_defaults(&mut no_spec, &schema());
        assert_eq!(no_spec, json!({"metadata": {}}));
    }

    #[test]
    fn validates_types_required_enum_and_bounds() {
        let ok = json!({"spec": {"addresses": ["a"], "mode": "a", "priority": 3, "port": "http"}});
        assert!(validate(&ok, &schema()).is_empty());
        let bad = json!({"spec": {"addresses": ["a", "b", 3], "mode": "c", "priority": -1, "autoAssign": "yes", "port": true}, "status": {"ok": 1}});
        let fields: Vec<String> = validate(&bad, &schema()).into_iter().map(|c| c.field).collect();
        for f in [
            "spec.addresses",
            "spec.addresses[2]",
            "spec.mode",
            "spec.priority",
            "spec.autoAssign",
            "spec.port",
            "status.ok",
        ] {
            assert!(fields.contains(&f.to_string()), "{f} in {fields:?}");
        }
        let missing = validate(&json!({"spec": {}}), &schema());
        assert_eq!(missing[0].field, "spec.addresses");
        assert_eq!(missing[0].reason, "FieldValueRequired");
    }
}
