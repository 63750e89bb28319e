//! Label and field selectors: parsing the query-string syntax of `labelSelector` and
//! `fieldSelector` and matching objects against them. Pure functions.

use std::collections::BTreeSet;

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value` (also true when the key is absent).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, BTreeSet<String>),
    /// `key notin (a,b)` (also true when the key is absent).
    NotIn(String, BTreeSet<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector: all requirements must hold. Empty selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<LabelRequirement>);

/// A selector parse error, reported to clients as 400 BadRequest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

impl LabelSelector {
    /// Parses `app=x,tier in (a,b),!legacy`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in split_top_level(input) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_label_term(term)?);
        }
        Ok(Self(requirements))
    }

    /// Whether `labels` (a JSON object, or null) satisfies every requirement.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|x| vs.contains(x)),
            LabelRequirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(x)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::DoesNotExist(k) => get(k).is_none(),
        })
    }

    /// The selector of a `spec.selector` map (equality on every entry).
    pub fn from_map(map: &serde_json::Map<String, Value>) -> Self {
        Self(
            map.iter()
                .map(|(k, v)| LabelRequirement::Equals(k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
        )
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 316
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn checked_key(key: &str, term: &str) -> Result<String, SelectorError> {
    let key = key.trim();
    if valid_key(key) {
        Ok(key.to_string())
    } else {
        Err(SelectorError(format!("invalid label key {key:?} in {term:?}")))
    }
}

fn checked_value(value: &str, term: &str) -> Result<String, SelectorError> {
    let value = value.trim();
    if valid_value(value) {
        Ok(value.to_string())
    } else {
        Err(SelectorError(format!("invalid label value {value:?} in {term:?}")))
    }
}

fn parse_label_term(term: &str) -> Result<LabelRequirement, SelectorError> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelRequirement::DoesNotExist(checked_key(key, term)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(LabelRequirement::NotEquals(
            checked_key(k, term)?,
            checked_value(v, term)?,
        ));
    }
    if let Some((k, v)) = term.split_once("==") {
        return Ok(LabelRequirement::Equals(checked_key(k, term)?, checked_value(v, term)?));
    }
    if let Some((k, v)) = term.split_once('=') {
        return Ok(LabelRequirement::Equals(checked_key(k, term)?, checked_value(v, term)?));
    }
    if let Some(open) = term.find('(') {
        let close = term
            .rfind(')')
            .filter(|c| *c > open && term[*c + 1..].trim().is_empty());
        let Some(close) = close else {
            return Err(SelectorError(format!("unbalanced parentheses in {term:?}")));
        };
        let head: Vec<&str> = term[..open].split_whitespace().collect();
        let values = term[open + 1..close]
            .split(',')
            .map(|v| checked_value(v, term))
            .collect::<Result<BTreeSet<_>, _>>()?;
        return match head.as_slice() {
            [key, "in"] => Ok(LabelRequirement::In(checked_key(key, term)?, values)),
            [key, "notin"] => Ok(LabelRequirement::NotIn(checked_key(key, term)?, values)),
            _ => Err(SelectorError(format!("expected 'in' or 'notin' in {term:?}"))),
        };
    }
    if term.split_whitespace().count() == 1 {
        return Ok(LabelRequirement::Exists(checked_key(term, term)?));
    }
    Err(SelectorError(format!("cannot parse {term:?}")))
}

/// One requirement of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Dotted field path, e.g. `spec.nodeName`.
    pub field: String,
    /// The value to compare with.
    pub value: String,
    /// `!=` instead of `=`/`==`.
    pub negated: bool,
}

/// A parsed field selector: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

impl FieldSelector {
    /// Parses `metadata.name=x,spec.nodeName!=y`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, negated) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, false)
            } else {
                return Err(SelectorError(format!("invalid field selector term {term:?}")));
            };
            requirements.push(FieldRequirement {
                field: field.trim().to_string(),
                value: value.trim().to_string(),
                negated,
            });
        }
        Ok(Self(requirements))
    }

    /// The fields this selector uses that `supported` does not allow, if any.
    pub fn unsupported_fields<'a>(&'a self, supported: &dyn Fn(&str) -> bool) -> Option<&'a str> {
        self.0.iter().map(|r| r.field.as_str()).find(|f| !supported(f))
    }

    /// Whether `object` satisfies every requirement. A missing field compares as "".
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|req| {
            let actual = field_value(object, &req.field);
            (actual == req.value) != req.negated
        })
    }
}

/// The string value of a dotted field path; "" when absent. Booleans and numbers are
/// rendered the way kube-apiserver renders them in field sets.
pub fn field_value(object: &Value, path: &str) -> String {
    let mut cur = object;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// Whether kube-apiserver supports `field` in a field selector for `group`/`resource`.
pub fn field_supported(group: &str, resource: &str, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    match (group, resource) {
        ("", "pods") => matches!(
            field,
            "spec.nodeName"
                | "spec.restartPolicy"
                | "spec.schedulerName"
                | "spec.serviceAccountName"
                | "spec.hostNetwork"
                | "status.phase"
                | "status.podIP"
                | "status.nominatedNodeName"
        ),
        ("", "events") => {
            field.starts_with("involvedObject.") || matches!(field, "reason" | "reportingComponent" | "source" | "type")
        }
        ("events.k8s.io", "events") => {
            field.starts_with("regarding.") || matches!(field, "reason" | "reportingController" | "type")
        }
        ("", "nodes") => field == "spec.unschedulable",
        ("", "namespaces") => field == "status.phase",
        ("", "services") => matches!(field, "spec.clusterIP" | "spec.type"),
        ("", "secrets") => field == "type",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).expect("parses")
    }

    #[test]
    fn label_operators() {
        let labels = json!({"app": "web", "tier": "front"});
        let l = Some(&labels);
        assert!(sel("").matches(l));
        assert!(sel("app=web").matches(l));
        assert!(sel("app==web").matches(l));
        assert!(!sel("app=db").matches(l));
        assert!(sel("app!=db").matches(l));
        assert!(sel("missing!=x").matches(l));
        assert!(sel("tier in (front, back)").matches(l));
        assert!(!sel("tier in (back)").matches(l));
        assert!(sel("tier notin (back)").matches(l));
        assert!(sel("missing notin (back)").matches(l));
        assert!(sel("app").matches(l));
        assert!(!sel("missing").matches(l));
        assert!(sel("!missing").matches(l));
        assert!(!sel("!app").matches(l));
        assert!(sel("app=web,tier in (front),!missing").matches(l));
        assert!(!sel("app=web,tier notin (front)").matches(l));
        assert!(!sel("app").matches(None));
        assert!(sel("!app").matches(None));
    }

    #[test]
    fn label_parse_errors() {
        assert!(LabelSelector::parse("app in (a").is_err());
        assert!(LabelSelector::parse("a b c").is_err());
        assert!(LabelSelector::parse("app=not valid!").is_err());
        assert!(LabelSelector::parse("x foo (a)").is_err());
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}});
        let f = |s: &str| FieldSelector::parse(s).expect("parses");
        assert!(f("metadata.name=p").matches(&pod));
        assert!(f("metadata.name==p,spec.nodeName=n1").matches(&pod));
        assert!(!f("spec.nodeName!=n1").matches(&pod));
        assert!(f("spec.nodeName!=n2").matches(&pod));
        assert!(f("status.phase=").matches(&pod));
        assert!(FieldSelector::parse("nonsense").is_err());
        assert!(field_supported("", "pods", "spec.nodeName"));
        assert!(field_supported("", "events", "involvedObject.name"));
        assert!(!field_supported("", "services", "spec.nodeName"));
        assert!(field_supported("herald.io", "servicel2statuses", "metadata.name"));
    }
}
