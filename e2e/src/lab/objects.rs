//! The Kubernetes objects a real cluster would have and the lab must write itself: Nodes
//! (what kubelets register), speaker Pods (what the DaemonSet creates), backend Pods with
//! their status (what kubelets report); and `config/deploy` itself, applied with kubectl
//! except for its workloads (the lab runs Herald's processes). Builders are pure;
//! `install_*` write them.

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::LabError;
use super::plan::{ECHO_HTTP_PORT, ECHO_UDP_PORT, NodePlan, PodPlan};

/// Namespace of Herald's own objects.
pub const HERALD_NAMESPACE: &str = "herald-system";
/// Namespace backend pods go to.
pub const BACKEND_NAMESPACE: &str = "default";
/// The speakers' shared Secret, left empty for the controller to fill.
pub const SPEAKER_SECRET: &str = "herald-speaker-auth";
/// herald-controller's ServiceAccount in `config/deploy`.
pub const CONTROLLER_ACCOUNT: &str = "herald-controller";
/// herald-speaker's ServiceAccount in `config/deploy`.
pub const SPEAKER_ACCOUNT: &str = "herald-speaker";
/// Kinds of `config/deploy` the lab does not apply: it runs Herald's processes itself.
const WORKLOAD_KINDS: [&str; 2] = ["Deployment", "DaemonSet"];

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

/// Name of the speaker Pod on `node`.
pub fn speaker_pod_name(node: &NodePlan) -> String {
    format!("herald-speaker-{}", node.name)
}

/// The speaker Pod the DaemonSet would run on `node` (host network: the node's addresses).
pub fn speaker_pod_object(node: &NodePlan) -> Pod {
    typed(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": speaker_pod_name(node), "namespace": HERALD_NAMESPACE, "labels": speaker_labels()},
        "spec": {
            "nodeName": node.name,
            "hostNetwork": true,
            "containers": [{"name": "speaker", "image": "herald-speaker:lab",
                "ports": [{"name": "peer", "containerPort": 7946, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 7473, "protocol": "TCP"}]}],
        },
    }))
}

/// The status a kubelet reports for a pod with these addresses.
pub fn running_pod_status(ipv4: &str, ipv6: &str, host_ip: &str, ready: bool) -> Value {
    let ready = if ready { "True" } else { "False" };
    json!({
        "status": {
            "phase": "Running",
            "hostIP": host_ip,
            "podIP": ipv4,
            "podIPs": [{"ip": ipv4}, {"ip": ipv6}],
            "startTime": now(),
            "conditions": [
                {"type": "Ready", "status": ready, "lastTransitionTime": now()},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now()},
            ],
        }
    })
}

/// The status a kubelet reports for the speaker Pod on `node`: Ready while the speaker
/// process runs, and its container's restart count (what `kubectl get pods` shows as
/// RESTARTS).
pub fn speaker_pod_status(node: &NodePlan, running: bool, restarts: u32) -> Value {
    let (v4, v6) = (node.ipv4.to_string(), node.ipv6.to_string());
    let mut status = running_pod_status(&v4, &v6, &v4, running);
    let state = if running {
        json!({"running": {"startedAt": now()}})
    } else {
        json!({"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": now()}})
    };
    status["status"]["containerStatuses"] = json!([{
        "name": "speaker",
        "image": "herald-speaker:lab",
        "imageID": "",
        "ready": running,
        "started": running,
        "restartCount": restarts,
        "state": state,
    }]);
    status
}

/// A backend Pod (without status): the echo server, ports named `http` and `udp`.
pub fn backend_pod_object(pod: &PodPlan, node: &NodePlan, labels: &BTreeMap<String, String>) -> Pod {
    typed(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": BACKEND_NAMESPACE, "labels": labels},
        "spec": {
            "nodeName": node.name,
            "containers": [{"name": "echo", "image": "herald-lab-echo",
                "ports": [{"name": "http", "containerPort": ECHO_HTTP_PORT, "protocol": "TCP"},
                          {"name": "udp", "containerPort": ECHO_UDP_PORT, "protocol": "UDP"}]}],
        },
    }))
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

/// The documents of a multi-document YAML stream except the workloads ([`WORKLOAD_KINDS`]).
pub fn without_workloads(stream: &str) -> Result<String, serde_yaml::Error> {
    use serde::Deserialize;
    let mut kept = Vec::new();
    for document in serde_yaml::Deserializer::from_str(stream) {
        let value = serde_yaml::Value::deserialize(document)?;
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
        if value.is_null() || WORKLOAD_KINDS.contains(&kind) {
            continue;
        }
        kept.push(serde_yaml::to_string(&value)?);
    }
    Ok(kept.join("---\n"))
}

/// Applies `config/deploy` (rendered with `kubectl kustomize`) without its workloads, then
/// waits until Herald's CRDs are established and the ServiceAccounts exist.
pub async fn install_deploy_manifests(
    state: &super::StateDir,
    deploy: &Path,
    client: &kube::Client,
) -> Result<(), LabError> {
    let home = state.root().join("kubectl-home");
    let kubectl = |args: &[&str], input: Option<String>| {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", state.kubeconfig())
            .env("HOME", &home)
            .env("KUBECACHEDIR", home.join("cache"))
            .kill_on_drop(true);
        run_with_input(cmd, input)
    };
    let deploy_arg = deploy.display().to_string();
    let rendered = kubectl(&["kustomize", &deploy_arg], None).await?;
    let manifests = without_workloads(&rendered).map_err(|e| LabError::Command {
        command: format!("kubectl kustomize {deploy_arg}"),
        status: None,
        stderr: format!("output is not YAML: {e}"),
    })?;
    kubectl(&["apply", "-f", "-"], Some(manifests)).await?;
    let crds: Vec<String> = herald_config::crds::all()
        .into_iter()
        .filter_map(|(_, crd)| crd.metadata.name)
        .map(|name| format!("crd/{name}"))
        .collect();
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=30s"];
    wait.extend(crds.iter().map(String::as_str));
    kubectl(&wait, None).await?;
    // Pods need their namespace's `default` ServiceAccount, which kube-controller-manager creates.
    for (namespace, account) in [(HERALD_NAMESPACE, "default"), (BACKEND_NAMESPACE, "default")] {
        wait_service_account(client, namespace, account).await?;
    }
    Ok(())
}

/// Waits (at most 30 s) until ServiceAccount `namespace/name` exists.
async fn wait_service_account(client: &kube::Client, namespace: &str, name: &str) -> Result<(), LabError> {
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

/// Runs `cmd` (at most 60 s) with `input` on stdin; its stdout, or an error with its stderr.
async fn run_with_input(mut cmd: tokio::process::Command, input: Option<String>) -> Result<String, LabError> {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let line = format!("{cmd:?}");
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_error = |source| LabError::Spawn {
        program: "kubectl".into(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await.map_err(spawn_error)?;
    }
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| LabError::Timeout { what: line.clone() })?
        .map_err(spawn_error)?;
    if !output.status.success() {
        return Err(LabError::Command {
            command: line,
            status: output.status.code(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Creates the Nodes and the speaker Pods (Running, Ready).
pub async fn install_cluster_objects(client: &kube::Client, nodes: &[NodePlan]) -> Result<(), LabError> {
    let node_api: Api<Node> = Api::all(client.clone());
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), HERALD_NAMESPACE);
    for node in nodes {
        create_if_absent(&node_api, &node_object(node)).await?;
        create_if_absent(&pod_api, &speaker_pod_object(node)).await?;
        patch_pod_status(&pod_api, &speaker_pod_name(node), speaker_pod_status(node, true, 0)).await?;
    }
    Ok(())
}

/// Merges `status` (a `{"status": ...}` document) into a Pod's status.
pub async fn patch_pod_status(api: &Api<Pod>, name: &str, status: Value) -> Result<(), LabError> {
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map(|_| ())
        .map_err(|source| LabError::Api {
            what: format!("updating the status of pod {name}"),
            source,
        })
}

/// Creates a backend Pod (status Pending until [`patch_pod_status`] reports it running).
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
    fn workloads_are_left_out_of_the_deploy_manifests() {
        let stream = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
            apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: b}\n---\n\
            apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: c}\n---\n\
            apiVersion: v1\nkind: Secret\nmetadata: {name: d}\n";
        let kept = without_workloads(stream).unwrap();
        assert!(kept.contains("Namespace") && kept.contains("Secret"), "{kept}");
        assert!(!kept.contains("DaemonSet") && !kept.contains("Deployment"), "{kept}");
        assert_eq!(kept.matches("---").count(), 1, "{kept}");
    }

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
    fn speaker_pod_mirrors_the_daemonset() {
        let plan = LabPlan::new("hlab", 1).unwrap();
        let pod = speaker_pod_object(plan.node(1).unwrap());
        assert_eq!(pod.metadata.namespace.as_deref(), Some(HERALD_NAMESPACE));
        assert_eq!(pod.metadata.labels.unwrap()["app.kubernetes.io/component"], "speaker");
        assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("node1"));
        let status = speaker_pod_status(plan.node(1).unwrap(), false, 2)["status"].clone();
        let status: Pod = typed(json!({"metadata": {}, "status": status}));
        let status = status.status.unwrap();
        assert_eq!(status.pod_ips.unwrap().len(), 2);
        let container = &status.container_statuses.unwrap()[0];
        assert_eq!((container.ready, container.restart_count), (false, 2));
        assert!(container.state.as_ref().unwrap().terminated.is_some());
    }
}
