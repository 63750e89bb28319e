//! Herald installed in the lab the way users install it: `kubectl apply -k` of an overlay on
//! `config/deploy` that changes only what a lab must (Herald's flags for a scenario, text
//! logs, which workloads run), then `kubectl rollout status`. The lab's kubelet runs what the
//! Deployment and the DaemonSet create.

use std::path::{Component, Path, PathBuf};

use herald_config::deploy;
use serde_json::{Value, json};

/// What the overlay changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    /// Install the controller Deployment.
    pub controller: bool,
    /// Install the speaker DaemonSet.
    pub speakers: bool,
    /// Extra `herald-controller` flags.
    pub controller_args: Vec<String>,
    /// Extra `herald-speaker` flags.
    pub speaker_args: Vec<String>,
    /// JSON logs (the manifests' default) rather than text.
    pub json_logs: bool,
    /// `HERALD_LOG`.
    pub log_filter: Option<String>,
}

const CONTROLLER: (&str, &str, &str) = ("Deployment", deploy::CONTROLLER, "controller");
const SPEAKER: (&str, &str, &str) = ("DaemonSet", deploy::SPEAKER, "speaker");

/// `to` relative to the directory `from` (both absolute): kustomize takes only relative bases.
pub fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for part in &to[common..] {
        path.push(part);
    }
    path
}

/// The overlay's `kustomization.yaml`, with `base` (relative) as its only resource.
pub fn kustomization(base: &Path, overlay: &Overlay) -> String {
    let mut patches = Vec::new();
    for ((kind, name, container), wanted, args) in [
        (CONTROLLER, overlay.controller, &overlay.controller_args),
        (SPEAKER, overlay.speakers, &overlay.speaker_args),
    ] {
        let metadata = json!({"name": name, "namespace": deploy::NAMESPACE});
        let patch = if wanted {
            let mut env =
                vec![json!({"name": "HERALD_LOG_FORMAT", "value": if overlay.json_logs { "json" } else { "text" }})];
            // Logs go to files: no terminal colour codes in them.
            env.push(json!({"name": "NO_COLOR", "value": "1"}));
            if let Some(filter) = &overlay.log_filter {
                env.push(json!({"name": "HERALD_LOG", "value": filter}));
            }
            let mut c = json!({"name": container, "env": env});
            if !args.is_empty() {
                c["args"] = json!(args);
            }
            json!({"apiVersion": "apps/v1", "kind": kind, "metadata": metadata,
                   "spec": {"template": {"spec": {"containers": [c]}}}})
        } else {
            json!({"$patch": "delete", "apiVersion": "apps/v1", "kind": kind, "metadata": metadata})
        };
        patches.push(json!({"patch": serde_yaml::to_string(&patch).unwrap_or_default()}));
    }
    let doc: Value = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base.display().to_string()],
        "patches": patches,
    });
    format!(
        "# Written by herald-lab: config/deploy as the lab installs it.\n{}",
        serde_yaml::to_string(&doc).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_are_relative() {
        assert_eq!(
            relative_path(
                Path::new("/run/herald-lab/hlab/deploy"),
                Path::new("/work/main/config/deploy")
            ),
            PathBuf::from("../../../../work/main/config/deploy")
        );
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/a/c")),
            PathBuf::from("../c")
        );
    }

    #[test]
    fn the_overlay_changes_flags_and_logs_or_drops_a_workload() {
        let text = kustomization(
            Path::new("../deploy"),
            &Overlay {
                controller: false,
                speakers: true,
                speaker_args: vec!["--watch-probe-interval=40ms".into()],
                log_filter: Some("debug".into()),
                ..Overlay::default()
            },
        );
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(doc["resources"][0].as_str(), Some("../deploy"));
        let controller: serde_yaml::Value = serde_yaml::from_str(doc["patches"][0]["patch"].as_str().unwrap()).unwrap();
        assert_eq!(controller["$patch"].as_str(), Some("delete"));
        let speaker: serde_yaml::Value = serde_yaml::from_str(doc["patches"][1]["patch"].as_str().unwrap()).unwrap();
        let container = &speaker["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["name"].as_str(), Some("speaker"));
        assert_eq!(container["args"][0].as_str(), Some("--watch-probe-interval=40ms"));
        assert_eq!(container["env"][0]["value"].as_str(), Some("text"));
        assert_eq!(container["env"][2]["value"].as_str(), Some("debug"));
    }
}
