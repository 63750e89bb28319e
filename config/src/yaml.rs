//! The one place Herald reads and writes YAML (serde_yaml is unmaintained upstream; keeping it
//! behind these functions makes a later swap a one-file change).

use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};

pub use serde_yaml::Error;

/// Every document of a multi-document YAML stream (`---` separated), skipping empty ones.
pub fn documents<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, Error> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if !value.is_null() {
            out.push(serde_yaml::from_value(value)?);
        }
    }
    Ok(out)
}

/// The Kubernetes objects among `documents`: a `List` (as `kubectl get -o yaml` prints it)
/// counts as its items.
pub fn objects(documents: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for doc in documents {
        match doc["items"].as_array() {
            Some(items) if doc["kind"].as_str().is_some_and(|k| k.ends_with("List")) => out.extend(objects(items)),
            _ => out.push(doc),
        }
    }
    out
}

/// One value as a YAML document.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, Error> {
    serde_yaml::to_string(value)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_every_non_empty_document() {
        let docs: Vec<serde_json::Value> = super::documents("---\na: 1\n---\n---\nb: [x]\n").unwrap();
        assert_eq!(docs, vec![serde_json::json!({"a": 1}), serde_json::json!({"b": ["x"]})]);
        assert!(super::documents::<serde_json::Value>("a: [").is_err());
    }

    #[test]
    fn lists_count_as_their_items() {
        let docs: Vec<serde_json::Value> =
            super::documents("kind: List\nitems: [{kind: A}, {kind: ServiceList, items: [{kind: B}]}]\n---\nkind: C\n")
                .unwrap();
        let kinds: Vec<&str> = super::objects(&docs)
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["A", "B", "C"]);
    }
}
