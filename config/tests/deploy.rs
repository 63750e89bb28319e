//! `config/deploy/` is what `kubectl apply -k config/deploy` installs: every resource the
//! kustomization lists exists, the speaker DaemonSet has what announcing and eBPF need, and the
//! RBAC grants nothing by wildcard.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn docs(file: &str) -> Vec<Value> {
    let path = deploy_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    herald_config::yaml::documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn resources() -> Vec<String> {
    let kustomization = &docs("kustomization.yaml")[0];
    kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("string").to_string())
        .collect()
}

fn all_objects() -> Vec<Value> {
    resources()
        .iter()
        .filter(|r| r.ends_with(".yaml"))
        .flat_map(|r| docs(r))
        .collect()
}

#[test]
fn kustomization_lists_existing_files_and_every_crd() {
    let listed = resources();
    for r in &listed {
        assert!(deploy_dir().join(r).exists(), "{r} exists");
    }
    assert!(listed.contains(&"../crd".to_string()), "the CRDs are deployed");
}

#[test]
fn speaker_daemonset_can_announce_and_load_ebpf() {
    let objects = all_objects();
    let ds = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("speaker DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let caps: Vec<&str> = pod["containers"][0]["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(caps, ["NET_RAW", "NET_ADMIN", "BPF", "PERFMON"]);
    let env: Vec<&str> = pod["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(env.contains(&"HERALD_NODE_NAME"), "speaker knows its node");
    let deploy = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("controller Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2, "two replicas: one leader, one standby");
}

#[test]
fn rbac_grants_nothing_by_wildcard_and_secrets_only_by_name() {
    for object in all_objects() {
        if object["kind"] != "ClusterRole" && object["kind"] != "Role" {
            continue;
        }
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        for rule in object["rules"].as_array().expect("rules") {
            for field in ["apiGroups", "resources", "verbs"] {
                let values = rule[field].as_array().expect(field);
                assert!(!values.iter().any(|v| v == "*"), "{name}: wildcard in {field}");
            }
            let resources = rule["resources"].as_array().unwrap();
            if resources.iter().any(|r| r == "secrets") {
                assert!(rule["resourceNames"].is_array(), "{name}: secrets only by name");
                assert_eq!(object["kind"], "Role", "{name}: secrets only in herald-system");
            }
        }
    }
}

/// The real `kubectl kustomize` builds the deploy directory.
#[test]
fn kubectl_kustomize_builds_the_deployment() {
    let output = match Command::new("kubectl").arg("kustomize").arg(deploy_dir()).output() {
        Ok(output) => output,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("kubectl is required under CI: {e}")
        }
        Err(e) => panic!("kubectl not runnable ({e}); install kubectl v1.32+ (see README)"),
    };
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let built: Vec<Value> = herald_config::yaml::documents(&String::from_utf8_lossy(&output.stdout)).expect("YAML");
    let kinds: Vec<&str> = built.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "Secret",
        "DaemonSet",
        "Deployment",
        "ClusterRole",
        "Role",
    ] {
        assert!(kinds.contains(&kind), "kustomize output has a {kind}");
    }
    assert!(
        built
            .iter()
            .filter(|o| o["kind"] != "Namespace" && o["metadata"]["namespace"].is_string())
            .all(|o| o["metadata"]["namespace"] == "herald-system"),
        "everything namespaced lands in herald-system"
    );
}

/// The manifests name what the binaries' defaults and the lab expect (`herald_config::deploy`):
/// the namespace, the workloads and their accounts, the speakers' Secret as RBAC grants it,
/// and the ports the containers serve.
#[test]
fn manifests_name_what_the_binaries_expect() {
    use herald_config::deploy;
    let objects = all_objects();
    let named = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("a {kind} named {name}"))
    };
    named("Namespace", deploy::NAMESPACE);
    let secret = named("Secret", deploy::SPEAKER_SECRET);
    assert_eq!(secret["metadata"]["namespace"], deploy::NAMESPACE);
    for (kind, workload, ports) in [
        ("Deployment", deploy::CONTROLLER, &[deploy::CONTROLLER_METRICS_PORT][..]),
        (
            "DaemonSet",
            deploy::SPEAKER,
            &[deploy::SPEAKER_METRICS_PORT, deploy::SPEAKER_PEER_PORT],
        ),
    ] {
        let object = named(kind, workload);
        assert_eq!(object["metadata"]["namespace"], deploy::NAMESPACE, "{workload}");
        let pod = &object["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], workload, "{workload}'s account");
        named("ServiceAccount", workload);
        let served: Vec<&Value> = pod["containers"][0]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .collect();
        for port in ports {
            assert!(
                served.iter().any(|p| p["containerPort"] == u64::from(*port)),
                "{workload} serves on {port}: {served:?}"
            );
        }
    }
    // The speaker's default --speaker-selector finds the DaemonSet's Pods.
    let labels = &named("DaemonSet", deploy::SPEAKER)["spec"]["template"]["metadata"]["labels"];
    for term in deploy::SPEAKER_POD_SELECTOR.split(',') {
        let (key, value) = term.split_once('=').expect("key=value");
        assert_eq!(labels[key], value, "the speaker Pods carry {term}: {labels}");
    }
    // Both binaries read the Secret by name; the Roles grant exactly that name.
    for role in [deploy::CONTROLLER, deploy::SPEAKER] {
        let role = objects
            .iter()
            .find(|o| o["kind"] == "Role" && o["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(role)))
            .unwrap_or_else(|| panic!("a Role for {role}"));
        let secrets = role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .find(|r| {
                r["resources"]
                    .as_array()
                    .is_some_and(|rs| rs.iter().any(|r| r == "secrets"))
            })
            .expect("a rule for secrets");
        assert_eq!(secrets["resourceNames"], serde_json::json!([deploy::SPEAKER_SECRET]));
    }
}
