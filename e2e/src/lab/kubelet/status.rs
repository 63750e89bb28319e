//! The Pod status a kubelet reports, built from what the lab's kubelet knows about its
//! container. Pure; the worker patches it whenever something changes.

use serde_json::{Value, json};

/// A container's state, as `containerStatuses[].state` and `.lastState` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Not running: why (`ContainerCreating`, `CrashLoopBackOff`, `CreateContainerConfigError`).
    Waiting {
        /// Reason.
        reason: String,
        /// Message.
        message: Option<String>,
    },
    /// Running since.
    Running {
        /// RFC 3339.
        started_at: String,
    },
    /// Ended.
    Terminated {
        /// Exit code (128 + signal for a signal).
        exit_code: i32,
        /// Signal, if it was one.
        signal: Option<i32>,
        /// `Completed`, `Error`.
        reason: String,
        /// RFC 3339.
        started_at: String,
        /// RFC 3339.
        finished_at: String,
    },
}

impl ContainerState {
    fn to_json(&self) -> Value {
        match self {
            ContainerState::Waiting { reason, message } => {
                let mut waiting = json!({"reason": reason});
                if let Some(message) = message {
                    waiting["message"] = json!(message);
                }
                json!({"waiting": waiting})
            }
            ContainerState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            ContainerState::Terminated {
                exit_code,
                signal,
                reason,
                started_at,
                finished_at,
            } => {
                let mut terminated = json!({
                    "exitCode": exit_code, "reason": reason,
                    "startedAt": started_at, "finishedAt": finished_at,
                });
                if let Some(signal) = signal {
                    terminated["signal"] = json!(signal);
                }
                json!({"terminated": terminated})
            }
        }
    }

    /// The reason a process that ended with `exit_code` gets.
    pub fn terminated_reason(exit_code: i32) -> &'static str {
        if exit_code == 0 { "Completed" } else { "Error" }
    }
}

/// What the kubelet reports for a Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReport {
    /// `Pending`, `Running`, `Succeeded`, `Failed`.
    pub phase: &'static str,
    /// The node's addresses.
    pub host_ips: Vec<String>,
    /// The Pod's addresses (empty until the sandbox has them).
    pub pod_ips: Vec<String>,
    /// When the kubelet accepted the Pod.
    pub start_time: String,
    /// The container's name.
    pub container: String,
    /// Its image.
    pub image: String,
    /// Its state now.
    pub state: ContainerState,
    /// Its previous state (the last termination).
    pub last_state: Option<ContainerState>,
    /// Restarts so far.
    pub restart_count: i32,
    /// The readiness probe passes (or there is none and it runs).
    pub ready: bool,
    /// Its current process's id, as a container ID.
    pub container_id: Option<String>,
    /// When `ready` last changed.
    pub ready_since: String,
}

/// `{"status": …}` for a merge patch of the Pod's status subresource. Conditions and
/// containerStatuses are replaced whole (merge patches replace lists).
pub fn pod_status(report: &PodReport) -> Value {
    let condition = |kind: &str, ok: bool, since: &str| json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastTransitionTime": since});
    let running = matches!(report.state, ContainerState::Running { .. });
    let mut container = json!({
        "name": report.container,
        "image": report.image,
        "imageID": format!("herald-lab://{}", report.image),
        "ready": report.ready,
        "started": running,
        "restartCount": report.restart_count,
        "state": report.state.to_json(),
        "lastState": report.last_state.as_ref().map(ContainerState::to_json).unwrap_or_else(|| json!({})),
    });
    if let Some(id) = &report.container_id {
        container["containerID"] = json!(id);
    }
    let mut status = json!({
        "phase": report.phase,
        "hostIP": report.host_ips.first(),
        "hostIPs": report.host_ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
        "startTime": report.start_time,
        "conditions": [
            condition("PodReadyToStartContainers", !report.pod_ips.is_empty(), &report.start_time),
            condition("Initialized", true, &report.start_time),
            condition("ContainersReady", report.ready, &report.ready_since),
            condition("Ready", report.ready, &report.ready_since),
            condition("PodScheduled", true, &report.start_time),
        ],
        "containerStatuses": [container],
    });
    if !report.pod_ips.is_empty() {
        status["podIP"] = json!(report.pod_ips[0]);
        status["podIPs"] = json!(report.pod_ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>());
    }
    json!({"status": status})
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn report() -> PodReport {
        PodReport {
            phase: "Running",
            host_ips: vec!["10.203.0.11".into(), "fd00:203::11".into()],
            pod_ips: vec!["10.244.1.11".into(), "fd00:244:1::11".into()],
            start_time: "2026-12-05T06:00:00Z".into(),
            container: "echo".into(),
            image: "herald-lab:0.1.0".into(),
            state: ContainerState::Running {
                started_at: "2026-12-05T06:00:03Z".into(),
            },
            last_state: Some(ContainerState::Terminated {
                exit_code: 137,
                signal: Some(9),
                reason: "Error".into(),
                started_at: "2026-12-05T06:00:00Z".into(),
                finished_at: "2026-12-05T06:00:02Z".into(),
            }),
            restart_count: 1,
            ready: true,
            container_id: Some("herald-lab://4242".into()),
            ready_since: "2026-12-05T06:00:04Z".into(),
        }
    }

    #[test]
    fn the_status_parses_as_a_pod_status_and_says_what_happened() {
        let value = pod_status(&report());
        let pod: Pod = serde_json::from_value(json!({"metadata": {}, "status": value["status"]})).unwrap();
        let status = pod.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.11"));
        assert_eq!(status.pod_ips.unwrap().len(), 2);
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        let container = &status.container_statuses.unwrap()[0];
        assert_eq!(container.restart_count, 1);
        assert!(container.state.as_ref().unwrap().running.is_some());
        let last = container.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.signal), (137, Some(9)));
    }

    #[test]
    fn a_waiting_container_has_no_pod_ip_until_its_sandbox_does() {
        let mut report = report();
        report.pod_ips.clear();
        report.ready = false;
        report.state = ContainerState::Waiting {
            reason: "CreateContainerConfigError".into(),
            message: Some("env KEY: secret \"auth\" not found".into()),
        };
        let status = &pod_status(&report)["status"];
        assert!(status.get("podIP").is_none());
        assert_eq!(
            status["containerStatuses"][0]["state"]["waiting"]["reason"],
            "CreateContainerConfigError"
        );
        assert_eq!(status["conditions"][3]["status"], "False");
        assert_eq!(ContainerState::terminated_reason(0), "Completed");
    }
}
