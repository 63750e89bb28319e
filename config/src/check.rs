//! Checks a set of manifests the way Herald will judge them once applied: pools and
//! advertisements by the validation rules (pools as one set, so overlaps between them count),
//! Services by their annotations. Used by `herald-controller check` and the sample tests.

use std::fmt;

use serde_json::Value;

use crate::annotations::parse_service_annotations;
use crate::validation::{check_namespace, validate_l2_advertisement, validate_pools};
use crate::{IPAddressPool, L2Advertisement};

/// One object Herald would refuse, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `pool NAME`, `advertisement NAME` or `service NAMESPACE/NAME`.
    pub object: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// Every problem in a multi-document YAML stream (`List`s count as their items, so
/// `kubectl get … -o yaml` output can be checked). Kinds Herald does not read are ignored.
pub fn check_manifests(documents: &[Value], controller_namespace: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut pools = Vec::new();
    for doc in crate::yaml::objects(documents) {
        let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let (label, herald_kind) = match doc["kind"].as_str() {
            Some("IPAddressPool") => (format!("pool {name}"), true),
            Some("L2Advertisement") => (format!("advertisement {name}"), true),
            Some("Service") => (format!("service {namespace}/{name}"), false),
            _ => continue,
        };
        let mut problem = |message: String| {
            problems.push(Problem {
                object: label.clone(),
                message,
            })
        };
        if herald_kind
            && let Err(e) = check_namespace(
                doc["kind"].as_str().unwrap_or_default(),
                &namespace,
                controller_namespace,
            )
        {
            problem(e.to_string());
            continue;
        }
        match doc["kind"].as_str() {
            Some("IPAddressPool") => match serde_json::from_value::<IPAddressPool>(doc.clone()) {
                Ok(pool) => pools.push(pool),
                Err(e) => problem(format!("not a valid IPAddressPool: {e}")),
            },
            Some("L2Advertisement") => match serde_json::from_value::<L2Advertisement>(doc.clone()) {
                Ok(adv) => {
                    if let Err(e) = validate_l2_advertisement(&adv.spec) {
                        problem(e.to_string());
                    }
                }
                Err(e) => problem(format!("not a valid L2Advertisement: {e}")),
            },
            _ => {
                let annotations = serde_json::from_value(doc["metadata"]["annotations"].clone()).unwrap_or_default();
                if let Err(e) = parse_service_annotations(&annotations, doc["spec"]["loadBalancerIP"].as_str()) {
                    problem(e.to_string());
                }
            }
        }
    }
    for (name, verdict) in validate_pools(&pools) {
        if let Err(e) = verdict {
            problems.push(Problem {
                object: format!("pool {name}"),
                message: e.to_string(),
            });
        }
    }
    problems
}
