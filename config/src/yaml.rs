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
}
