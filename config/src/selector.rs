//! Kubernetes label selectors (`matchLabels` + `matchExpressions`): validation with precise
//! messages, and matching against a label map.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use thiserror::Error;

/// Why a label selector is not usable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SelectorError {
    #[error("invalid label key {key:?}: {why}")]
    BadKey { key: String, why: &'static str },
    #[error("invalid label value {value:?} for key {key:?}: {why}")]
    BadValue {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error(
        "matchExpressions for key {key:?}: unknown operator {operator:?} (expected In, NotIn, Exists or DoesNotExist)"
    )]
    UnknownOperator { key: String, operator: String },
    #[error("matchExpressions for key {key:?}: operator {operator} needs at least one value")]
    MissingValues { key: String, operator: String },
    #[error("matchExpressions for key {key:?}: operator {operator} takes no values")]
    UnexpectedValues { key: String, operator: String },
    #[error("matchExpressions for key {key:?}: value {value:?} is listed more than once")]
    DuplicateValue { key: String, value: String },
}

/// Checks a selector the way the API server validates `metav1.LabelSelector`, plus one rule of
/// Herald's: a value repeated inside one expression is refused, since it is always a typo.
pub fn validate(selector: &LabelSelector) -> Result<(), SelectorError> {
    for (key, value) in selector.match_labels.iter().flatten() {
        validate_key(key)?;
        validate_value(key, value)?;
    }
    for req in selector.match_expressions.iter().flatten() {
        validate_key(&req.key)?;
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    return Err(SelectorError::MissingValues {
                        key: req.key.clone(),
                        operator: req.operator.clone(),
                    });
                }
                let mut seen = BTreeSet::new();
                for value in values {
                    validate_value(&req.key, value)?;
                    if !seen.insert(value) {
                        return Err(SelectorError::DuplicateValue {
                            key: req.key.clone(),
                            value: value.clone(),
                        });
                    }
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    return Err(SelectorError::UnexpectedValues {
                        key: req.key.clone(),
                        operator: req.operator.clone(),
                    });
                }
            }
            other => {
                return Err(SelectorError::UnknownOperator {
                    key: req.key.clone(),
                    operator: other.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Whether `labels` satisfy `selector`. An empty selector matches everything; an expression with
/// an unknown operator matches nothing (validation refuses such selectors before they are used).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|req| requirement_matches(req, labels))
}

fn requirement_matches(req: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let value = labels.get(&req.key);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// A selector in the string form `kubectl` accepts, for messages and logs.
pub fn to_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for req in selector.match_expressions.iter().flatten() {
        let values = req.values.as_deref().unwrap_or_default().join(",");
        parts.push(match req.operator.as_str() {
            "In" => format!("{} in ({values})", req.key),
            "NotIn" => format!("{} notin ({values})", req.key),
            "Exists" => req.key.clone(),
            "DoesNotExist" => format!("!{}", req.key),
            op => format!("{} {op} ({values})", req.key),
        });
    }
    if parts.is_empty() {
        "<everything>".to_string()
    } else {
        parts.join(",")
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
fn validate_key(key: &str) -> Result<(), SelectorError> {
    let bad = |why| SelectorError::BadKey {
        key: key.to_string(),
        why,
    };
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() || prefix.len() > 253 {
            return Err(bad("the prefix must be a DNS subdomain of 1 to 253 characters"));
        }
        let subdomain_ok = prefix.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
        if !subdomain_ok {
            return Err(bad("the prefix must be a lowercase DNS subdomain"));
        }
    }
    if name.is_empty() {
        return Err(bad("the name part must not be empty"));
    }
    if !is_label_name(name) {
        return Err(bad(
            "the name part must be at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric",
        ));
    }
    Ok(())
}

fn validate_value(key: &str, value: &str) -> Result<(), SelectorError> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(SelectorError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            why: "a value must be empty or at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric",
        })
    }
}

fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn matching_follows_kubernetes_semantics() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(matches(&LabelSelector::default(), &l));
        let ml = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            ..Default::default()
        };
        assert!(matches(&ml, &l));
        assert!(!matches(&ml, &labels(&[("app", "db")])));
        assert!(matches(&expr("tier", "In", &["front", "back"]), &l));
        assert!(!matches(&expr("tier", "NotIn", &["front"]), &l));
        assert!(matches(&expr("zone", "NotIn", &["a"]), &l));
        assert!(matches(&expr("app", "Exists", &[]), &l));
        assert!(!matches(&expr("app", "DoesNotExist", &[]), &l));
        assert!(!matches(&expr("app", "Bogus", &[]), &l));
    }

    #[test]
    fn validation_messages() {
        let err = |s: LabelSelector| validate(&s).unwrap_err().to_string();
        assert_eq!(
            err(expr("app", "Equals", &["x"])),
            "matchExpressions for key \"app\": unknown operator \"Equals\" (expected In, NotIn, Exists or DoesNotExist)"
        );
        assert_eq!(
            err(expr("app", "In", &[])),
            "matchExpressions for key \"app\": operator In needs at least one value"
        );
        assert_eq!(
            err(expr("app", "Exists", &["x"])),
            "matchExpressions for key \"app\": operator Exists takes no values"
        );
        assert_eq!(
            err(expr("app", "In", &["a", "a"])),
            "matchExpressions for key \"app\": value \"a\" is listed more than once"
        );
        assert_eq!(
            err(expr("-app", "Exists", &[])),
            "invalid label key \"-app\": the name part must be at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
        );
        assert_eq!(
            err(expr("Foo.io/app", "Exists", &[])),
            "invalid label key \"Foo.io/app\": the prefix must be a lowercase DNS subdomain"
        );
        let bad_value = LabelSelector {
            match_labels: Some(labels(&[("app", "a b")])),
            ..Default::default()
        };
        assert_eq!(
            err(bad_value),
            "invalid label value \"a b\" for key \"app\": a value must be empty or at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
        );
        assert!(validate(&expr("kubernetes.io/hostname", "In", &["node-1"])).is_ok());
    }

    #[test]
    fn renders_like_kubectl() {
        assert_eq!(to_string(&LabelSelector::default()), "<everything>");
        assert_eq!(to_string(&expr("tier", "In", &["a", "b"])), "tier in (a,b)");
        assert_eq!(to_string(&expr("tier", "DoesNotExist", &[])), "!tier");
    }
}
