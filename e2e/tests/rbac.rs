//! The RBAC in `config/deploy` is exactly what Herald calls. Herald's binaries run in the lab
//! as their own ServiceAccounts while a user's story plays out (pool, Service, backends, an
//! owner's speaker stopped with SIGTERM, another killed, the Service and the pool deleted, the
//! controller restarted); kube-apiserver's audit log then lists every request they made. Every
//! request must have been allowed, and every rule granted must have been used.
//!
//! Needs root (namespaces, eBPF) and the control plane `make deps` builds; under `CI=true` a
//! missing prerequisite fails the test.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_e2e::lab::{Lab, LabConfig, Signal};
use herald_e2e::story;

/// One request as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    user: String,
    verb: String,
    group: String,
    resource: String,
    namespace: String,
    name: String,
    code: u16,
}

fn calls(audit_log: &str) -> Vec<Call> {
    audit_log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["stage"] == "ResponseComplete")
        .map(|event| {
            let object = &event["objectRef"];
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            let mut resource = text(&object["resource"]);
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            Call {
                user: text(&event["user"]["username"]),
                verb: text(&event["verb"]),
                group: text(&object["apiGroup"]),
                resource,
                namespace: text(&object["namespace"]),
                name: text(&object["name"]),
                code: event["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
            }
        })
        .collect()
}

/// One granted (group, resource, verb), with the namespace it holds in (None: cluster-wide)
/// and the names it is limited to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    user: String,
    group: String,
    resource: String,
    verb: String,
    namespace: Option<String>,
    names: Vec<String>,
}

impl Grant {
    fn covers(&self, call: &Call) -> bool {
        self.user == call.user
            && self.group == call.group
            && self.resource == call.resource
            && self.verb == call.verb
            && self.namespace.as_ref().is_none_or(|ns| *ns == call.namespace)
            && (self.names.is_empty() || self.names.contains(&call.name))
    }
}

/// The grants of `config/deploy` (rendered with `kubectl kustomize`) to every ServiceAccount.
fn grants(manifests: &str) -> Vec<Grant> {
    use serde::Deserialize;
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(manifests)
        .filter_map(|d| serde_json::Value::deserialize(d).ok())
        .collect();
    let role = |kind: &str, name: &str, namespace: &str| {
        docs.iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"] == name
                    && (kind == "ClusterRole" || d["metadata"]["namespace"] == namespace)
            })
            .cloned()
    };
    let mut out = Vec::new();
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        let namespace = binding["metadata"]["namespace"].as_str().unwrap_or_default();
        let role_ref = &binding["roleRef"];
        let Some(role) = role(
            role_ref["kind"].as_str().unwrap_or_default(),
            role_ref["name"].as_str().unwrap_or_default(),
            namespace,
        ) else {
            panic!("binding {binding} names a role config/deploy does not define");
        };
        let scope = (binding["kind"] == "RoleBinding").then(|| namespace.to_string());
        for subject in binding["subjects"].as_array().into_iter().flatten() {
            let user = format!(
                "system:serviceaccount:{}:{}",
                subject["namespace"].as_str().unwrap_or_default(),
                subject["name"].as_str().unwrap_or_default()
            );
            for rule in role["rules"].as_array().into_iter().flatten() {
                let list = |key: &str| -> Vec<String> {
                    rule[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                };
                for group in list("apiGroups") {
                    for resource in list("resources") {
                        for verb in list("verbs") {
                            out.push(Grant {
                                user: user.clone(),
                                group: group.clone(),
                                resource: resource.clone(),
                                verb,
                                namespace: scope.clone(),
                                names: list("resourceNames"),
                            });
                        }
                    }
                }
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_allowed_and_every_rule_is_used() {
    if let Err(e) = herald_e2e::lab::check_prerequisites() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "the RBAC test must run under CI: {e}"
        );
        eprintln!("skipping: {e}");
        return;
    }
    let prefix = format!("rb{}", std::process::id() % 10_000);
    let lab = Lab::up(LabConfig {
        nodes: 3,
        restart_delay: Duration::from_millis(500),
        ..LabConfig::new(&prefix)
    })
    .await
    .expect("lab comes up");
    let quiet = |_: &str| {};

    // The story: an address, its announcement, a handoff, a takeover, and the way back.
    story::apply_demo_objects(&lab, &quiet).await.expect("demo objects");
    story::wait_for_ip(&lab, Duration::from_secs(20))
        .await
        .expect("an address");
    let owner = story::wait_for_stable_owner(&lab, Duration::from_millis(800), Duration::from_secs(20))
        .await
        .expect("an owner");
    let first = lab.node_index(&owner).unwrap();
    lab.kill_speaker(first, Signal::Term)
        .await
        .expect("SIGTERM the owner's speaker");
    let second = story::wait_for_owner(&lab, Some(&owner), Duration::from_secs(10))
        .await
        .expect("a new owner after the handoff");
    let second_node = lab.node_index(&second).unwrap();
    lab.wait_speaker_restart(first, 0, Duration::from_secs(10)).await.ok();
    lab.kill_speaker(second_node, Signal::Kill)
        .await
        .expect("SIGKILL the new owner's speaker");
    story::wait_for_owner(&lab, Some(&second), Duration::from_secs(10))
        .await
        .expect("a third owner after the takeover");
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.kubectl(&["delete", "service", "web", "--wait=true"])
        .await
        .expect("delete the Service");
    lab.kubectl(&["delete", "ipaddresspool", "lab", "-n", "herald-system"])
        .await
        .expect("delete the pool");
    lab.restart_controller().await.expect("controller restarts");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let audit = std::fs::read_to_string(lab.log_path("audit")).expect("kube-apiserver's audit log");
    let calls = calls(&audit);
    let manifests = lab
        .kubectl(&[
            "kustomize",
            &herald_e2e::lab::objects::deploy_dir().display().to_string(),
        ])
        .await
        .expect("kubectl kustomize config/deploy");
    let grants = grants(&manifests);
    lab.down().await.expect("lab removed");

    let herald: Vec<&Call> = calls
        .iter()
        .filter(|c| c.user.starts_with("system:serviceaccount:herald-system:herald-"))
        .collect();
    assert!(
        herald.len() > 50,
        "the audit log records Herald's calls: {}",
        herald.len()
    );
    let forbidden: BTreeSet<String> = herald
        .iter()
        .filter(|c| c.code == 403)
        .map(|c| {
            format!(
                "{} {} {}/{} {}/{}",
                c.user, c.verb, c.group, c.resource, c.namespace, c.name
            )
        })
        .collect();
    let unused: Vec<&Grant> = grants
        .iter()
        .filter(|g| g.user.starts_with("system:serviceaccount:herald-system:herald-"))
        .filter(|g| !herald.iter().any(|c| g.covers(c)))
        .collect();
    let seen: BTreeSet<String> = herald
        .iter()
        .map(|c| {
            format!(
                "{} {} {}/{}",
                c.user.rsplit(':').next().unwrap_or_default(),
                c.verb,
                c.group,
                c.resource
            )
        })
        .collect();
    eprintln!("calls Herald made (user verb group/resource):");
    for line in &seen {
        eprintln!("  {line}");
    }
    assert!(forbidden.is_empty(), "calls RBAC refused: {forbidden:#?}");
    assert!(unused.is_empty(), "granted but never called: {unused:#?}");
}

#[test]
fn grants_expand_roles_through_their_bindings() {
    let manifests = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r, namespace: ns}\nrules:\n- apiGroups: [\"\"]\n  resources: [secrets]\n  resourceNames: [s]\n  verbs: [get, patch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: r, namespace: ns}\nroleRef: {kind: Role, name: r, apiGroup: rbac.authorization.k8s.io}\nsubjects: [{kind: ServiceAccount, name: a, namespace: ns}]\n";
    let grants = grants(manifests);
    assert_eq!(grants.len(), 2);
    let call = Call {
        user: "system:serviceaccount:ns:a".into(),
        verb: "get".into(),
        group: String::new(),
        resource: "secrets".into(),
        namespace: "ns".into(),
        name: "s".into(),
        code: 200,
    };
    assert!(grants.iter().any(|g| g.covers(&call)));
    let other_name = Call {
        name: "t".into(),
        ..call.clone()
    };
    assert!(!grants.iter().any(|g| g.covers(&other_name)));
    let other_namespace = Call {
        namespace: "elsewhere".into(),
        ..call
    };
    assert!(!grants.iter().any(|g| g.covers(&other_namespace)));
}
