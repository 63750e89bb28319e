//! The Helm chart: `helm lint --strict` passes with the default values and with every optional
//! part switched on; `config/deploy/*.yaml` are exactly what the chart renders (run with
//! `HERALD_WRITE_MANIFESTS=1`, what `make manifests` does, to rewrite them); values a user
//! changes reach the objects. (The chart's `crds/` are checked with `config/crd` by
//! herald-config's `tests/crds.rs`.)
//!
//! Needs helm, which `make deps` builds from its Go module; under `CI=true` its absence fails.

use std::collections::BTreeSet;

use herald_config::deploy;
use herald_e2e::chart::{self, DEPLOY_VALUES};
use serde_json::Value;

fn helm() -> Option<std::path::PathBuf> {
    match chart::locate_helm() {
        Ok(helm) => Some(helm),
        Err(e) => {
            herald_testkit::skip("the chart tests", e);
            None
        }
    }
}

#[test]
fn chart_lints_strictly() {
    let Some(helm) = helm() else { return };
    let dir = chart::chart_dir();
    let dir = dir.to_string_lossy();
    for values in [
        vec![],
        vec![
            "namespace.create=true",
            "podMonitor.enabled=true",
            "speakerAuthSecret.create=false",
        ],
    ] {
        let mut args = vec!["lint", "--strict", dir.as_ref()];
        for value in &values {
            args.extend(["--set", value]);
        }
        let out = chart::helm(&helm, &args).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn config_deploy_is_what_the_chart_renders() {
    let Some(helm) = helm() else { return };
    let rendered = chart::render(&helm, deploy::NAMESPACE, &DEPLOY_VALUES).unwrap_or_else(|e| panic!("{e}"));
    let files = chart::deploy_files(&rendered).unwrap_or_else(|e| panic!("{e}"));
    let deploy = chart::repository_root().join("config/deploy");
    let write = std::env::var_os("HERALD_WRITE_MANIFESTS").is_some();
    let mut drifted = Vec::new();
    for (file, want) in &files {
        let path = deploy.join(file);
        if write {
            std::fs::write(&path, want).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        } else if std::fs::read_to_string(&path).unwrap_or_default() != *want {
            drifted.push(file.clone());
        }
    }
    assert!(
        drifted.is_empty(),
        "config/deploy differs from the chart; run `make manifests` and commit: {drifted:?}"
    );
    // Every generated file is in the kustomization, and every YAML file there is generated.
    let committed: BTreeSet<String> = std::fs::read_dir(&deploy)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        committed,
        files.keys().cloned().collect(),
        "config/deploy holds the chart's files"
    );
}

/// The rendered objects of one kind.
fn objects(rendered: &str, kind: &str) -> Vec<Value> {
    herald_config::yaml::documents::<Value>(rendered)
        .unwrap()
        .into_iter()
        .filter(|o| o["kind"] == kind)
        .collect()
}

fn env(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(String::from))
}

#[test]
fn values_reach_the_objects() {
    let Some(helm) = helm() else { return };
    let rendered = chart::render(
        &helm,
        "lb",
        &[
            "image.repository=registry.example/herald",
            "image.tag=1.2.3",
            "logFormat=text",
            "loadBalancerClass=example.com/l2",
            "speaker.forwarding=snat",
            "speaker.dataplane=off",
            "speaker.priorityClassName=system-node-critical",
            "speaker.nodeSelector.role=edge",
            "controller.replicas=3",
            "podMonitor.enabled=true",
            "speakerAuthSecret.create=false",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let speaker = &objects(&rendered, "DaemonSet")[0]["spec"]["template"]["spec"];
    let container = &speaker["containers"][0];
    assert_eq!(container["image"], "registry.example/herald:1.2.3");
    assert_eq!(env(container, "HERALD_FORWARDING").as_deref(), Some("snat"));
    assert_eq!(env(container, "HERALD_DATAPLANE").as_deref(), Some("off"));
    assert_eq!(env(container, "HERALD_LOG_FORMAT").as_deref(), Some("text"));
    assert_eq!(env(container, "HERALD_LB_CLASS").as_deref(), Some("example.com/l2"));
    assert_eq!(speaker["priorityClassName"], "system-node-critical");
    assert_eq!(speaker["nodeSelector"]["role"], "edge");
    let controller = &objects(&rendered, "Deployment")[0];
    assert_eq!(controller["spec"]["replicas"], 3);
    assert_eq!(controller["metadata"]["namespace"], "lb");
    assert_eq!(
        env(
            &controller["spec"]["template"]["spec"]["containers"][0],
            "HERALD_LB_CLASS"
        )
        .as_deref(),
        Some("example.com/l2")
    );
    assert_eq!(objects(&rendered, "PodMonitor").len(), 1);
    assert!(objects(&rendered, "Secret").is_empty(), "the user brings the Secret");
    // The RoleBindings name the ServiceAccounts in the release's namespace.
    for binding in objects(&rendered, "RoleBinding") {
        assert_eq!(binding["subjects"][0]["namespace"], "lb");
    }
}
