//! The Kubernetes objects the lab writes: Nodes (what kubelets register), backend Pods (the
//! echo server, run by the lab's kubelet), and `config/deploy` itself, applied with
//! `kubectl apply -k` through the lab's overlay ([`super::install`]). Builders are pure.

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

use super::LabError;
use super::plan::{ECHO_HTTP_PORT, ECHO_UDP_PORT, NodePlan};

/// Namespace backend pods go to.
pub const BACKEND_NAMESPACE: &str = "default";
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("lab object literals match the Kubernetes schema")
}

/// The Node a kubelet on `node` would register: InternalIPs of both families, hostname
/// label, pod CIDRs, Ready.
pub fn node_object(node: &NodePlan) -> Node {
    typed(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "herald.io/lab-node": node.index.to_string(),
            },
        },
        "spec": {
            "podCIDR": node.pod_cidr_v4.to_string(),
            "podCIDRs": [node.pod_cidr_v4.to_string(), node.pod_cidr_v6.to_string()],
        },
        "status": {
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "addresses": [
                {"type": "InternalIP", "address": node.ipv4.to_string()},
                {"type": "InternalIP", "address": node.ipv6.to_string()},
                {"type": "Hostname", "address": node.name},
            ],
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "herald-lab node", "lastHeartbeatTime": now(), "lastTransitionTime": now(),
            }],
        },
    }))
}

/// Labels of the speaker Pods, as the DaemonSet in `config/deploy/speaker.yaml` sets them.
pub fn speaker_labels() -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "herald"),
        ("app.kubernetes.io/component", "speaker"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The lab's echo image: `herald-lab` from the build (the kubelet runs its `echo` subcommand).
pub fn echo_image() -> String {
    format!("herald-lab:{}", env!("CARGO_PKG_VERSION"))
}

/// A backend Pod bound to `node`: the echo server answering with the Pod's name, ports named
/// `http` and `udp`, Ready while `GET /readyz` answers 200 (probed every second).
pub fn backend_pod_object(name: &str, node: &NodePlan, labels: &BTreeMap<String, String>) -> Pod {
    typed(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": BACKEND_NAMESPACE, "labels": labels},
        "spec": {
            "nodeName": node.name,
            "terminationGracePeriodSeconds": 2,
            "containers": [echo_container()],
        },
    }))
}

/// The echo container of backend Pods and of the demo's Deployment.
pub fn echo_container() -> Value {
    json!({
        "name": "echo",
        "image": echo_image(),
        "command": ["/usr/local/bin/herald-lab", "echo"],
        "args": ["--name=$(POD_NAME)", format!("--http-port={ECHO_HTTP_PORT}"), format!("--udp-port={ECHO_UDP_PORT}")],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "RUST_LOG", "value": "warn"},
        ],
        "ports": [{"name": "http", "containerPort": ECHO_HTTP_PORT, "protocol": "TCP"},
                  {"name": "udp", "containerPort": ECHO_UDP_PORT, "protocol": "UDP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
        "securityContext": {"runAsUser": 65534, "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
    })
}

/// Creates an object unless it exists (a restored API server state already has it).
async fn create_if_absent<K>(api: &Api<K>, object: &K) -> Result<(), LabError>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(LabError::Api {
            what: format!("creating {}", object.meta().name.as_deref().unwrap_or("?")),
            source,
        }),
    }
}

/// `config/deploy` of this source tree.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/deploy")
}

/// Waits (at most 30 s) until ServiceAccount `namespace/name` exists.
pub async fn wait_service_account(client: &kube::Client, namespace: &str, name: &str) -> Result<(), LabError> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = api.get_opt(name).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Timeout {
                what: format!("ServiceAccount {namespace}/{name}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers the Nodes, as each node's kubelet does.
pub async fn register_nodes(client: &kube::Client, nodes: &[NodePlan]) -> Result<(), LabError> {
    let node_api: Api<Node> = Api::all(client.clone());
    for node in nodes {
        create_if_absent(&node_api, &node_object(node)).await?;
    }
    Ok(())
}

/// Creates a backend Pod (the lab's kubelet runs it).
pub async fn create_backend_pod(client: &kube::Client, pod: &Pod) -> Result<(), LabError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), BACKEND_NAMESPACE);
    api.create(&PostParams::default(), pod)
        .await
        .map(|_| ())
        .map_err(|source| LabError::Api {
            what: format!("creating pod {}", pod.metadata.name.as_deref().unwrap_or("?")),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan::LabPlan;

    #[test]
    fn node_has_both_internal_ips_and_is_ready() {
        let plan = LabPlan::new("hlab", 2).unwrap();
        let node = node_object(plan.node(2).unwrap());
        let status = node.status.unwrap();
        let internal: Vec<_> = status
            .addresses
            .unwrap()
            .into_iter()
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address)
            .collect();
        assert_eq!(internal, ["10.203.0.12", "fd00:203::12"]);
        assert!(
            status
                .conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        );
        assert_eq!(node.metadata.labels.unwrap()["kubernetes.io/hostname"], "node2");
    }

    #[test]
    fn a_backend_pod_runs_the_echo_image_unprivileged() {
        let plan = LabPlan::new("hlab", 1).unwrap();
        let pod = backend_pod_object("web-a", plan.node(1).unwrap(), &BTreeMap::new());
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node1"));
        let container = &spec.containers[0];
        assert!(container.image.as_deref().unwrap().starts_with("herald-lab:"));
        assert_eq!(container.security_context.as_ref().unwrap().run_as_user, Some(65534));
        assert!(container.readiness_probe.is_some());
    }
}
