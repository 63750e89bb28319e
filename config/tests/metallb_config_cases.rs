//! Replays MetalLB's own configuration test table (`shared/metallb-cases/config_cases.json`)
//! through Herald's validation.
//!
//! Every `config-parse` case observable through Kubernetes is replayed: the objects are parsed
//! as Herald's CRD types, validated as a set, and the verdict must match MetalLB's. Valid cases
//! also check what MetalLB parsed: each pool's addresses as a minimal CIDR list, `autoAssign`,
//! `avoidBuggyIPs`, which namespaces may use it, and which advertisements (with which nodes and
//! interfaces) announce it.
//!
//! Deliberate differences from MetalLB, asserted below rather than skipped:
//! - MetalLB accepts a pool set in which two objects share a name (only the first counts);
//!   in Kubernetes a second object with the same name is an update of the first, so the set
//!   is replayed as the API server would store it (last write wins).
//! - `cfg.webhook.*` namespace cases: Herald has no admission webhook; the controller reads
//!   pools only from its own namespace and reports others as invalid
//!   ([`herald_config::validation::check_namespace`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use herald_config::validation::{check_namespace, validate_l2_advertisement, validate_pools};
use herald_config::{IPAddressPool, L2Advertisement};
use serde_json::Value;

fn cases() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/metallb-cases/config_cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} must exist beside the repository: {e}", path.display()));
    serde_json::from_str(&text).expect("config_cases.json is JSON")
}

#[derive(Default)]
struct Objects {
    pools: Vec<IPAddressPool>,
    advertisements: Vec<L2Advertisement>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    nodes: BTreeMap<String, BTreeMap<String, String>>,
    parse_errors: Vec<String>,
}

fn labels_of(doc: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(doc["metadata"]["labels"].clone()).unwrap_or_default()
}

fn load(objects_yaml: &str, cluster_yaml: &str) -> Objects {
    let mut out = Objects::default();
    let docs: Vec<Value> = herald_config::yaml::documents(objects_yaml).expect("case YAML parses");
    let cluster: Vec<Value> = herald_config::yaml::documents(cluster_yaml).expect("cluster YAML parses");
    for doc in docs.into_iter().chain(cluster) {
        let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
        match doc["kind"].as_str() {
            Some("IPAddressPool") => match serde_json::from_value::<IPAddressPool>(doc.clone()) {
                Ok(pool) => {
                    // Same name = same object in Kubernetes: the later document replaces it.
                    out.pools.retain(|p| p.metadata.name != pool.metadata.name);
                    out.pools.push(pool);
                }
                Err(e) => out.parse_errors.push(format!("pool {name}: {e}")),
            },
            Some("L2Advertisement") => match serde_json::from_value::<L2Advertisement>(doc.clone()) {
                Ok(adv) => out.advertisements.push(adv),
                Err(e) => out.parse_errors.push(format!("advertisement {name}: {e}")),
            },
            Some("Namespace") => {
                out.namespaces.insert(name, labels_of(&doc));
            }
            Some("Node") => {
                out.nodes.insert(name, labels_of(&doc));
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
    out
}

/// Herald's verdict on a whole object set: every error, by object.
fn errors_of(objects: &Objects) -> Vec<String> {
    let mut errors = objects.parse_errors.clone();
    for (name, verdict) in validate_pools(&objects.pools) {
        if let Err(e) = verdict {
            errors.push(format!("pool {name}: {e}"));
        }
    }
    for adv in &objects.advertisements {
        if let Err(e) = validate_l2_advertisement(&adv.spec) {
            errors.push(format!("advertisement {:?}: {e}", adv.metadata.name));
        }
    }
    errors
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn check_parsed(id: &str, objects: &Objects, parsed: &Value) {
    let verdicts = validate_pools(&objects.pools);
    let expected_pools = parsed["pools"].as_object().expect("parsed.pools");
    assert_eq!(
        verdicts.keys().cloned().collect::<BTreeSet<_>>(),
        expected_pools.keys().cloned().collect::<BTreeSet<_>>(),
        "{id}: pool names"
    );
    for (name, want) in expected_pools {
        let pool = objects
            .pools
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .expect("pool");
        let ranges = verdicts[name].as_ref().expect("valid pool");
        let cidrs: Vec<String> = ranges
            .iter()
            .flat_map(|r| r.to_cidrs())
            .map(|n| n.to_string())
            .collect();
        assert_eq!(cidrs, strings(&want["cidrs"]), "{id}: {name} cidrs");
        assert_eq!(
            Value::Bool(pool.spec.auto_assign),
            want["autoAssign"],
            "{id}: {name} autoAssign"
        );
        assert_eq!(
            Value::Bool(pool.spec.avoid_buggy_ips),
            want["avoidBuggyIPs"],
            "{id}: {name} avoidBuggyIPs"
        );

        if let Some(alloc) = want["serviceAllocation"].as_object() {
            let ours = pool.spec.service_allocation.as_ref().expect("serviceAllocation");
            assert_eq!(Value::from(ours.priority), alloc["priority"], "{id}: {name} priority");
            let expected_ns: BTreeSet<String> = strings(&alloc["namespaces"]).into_iter().collect();
            for (ns, ns_labels) in &objects.namespaces {
                assert_eq!(
                    ours.allows_namespace(ns, ns_labels),
                    expected_ns.contains(ns),
                    "{id}: {name} allows namespace {ns}"
                );
            }
            for ns in &expected_ns {
                let ns_labels = objects.namespaces.get(ns).cloned().unwrap_or_default();
                assert!(
                    ours.allows_namespace(ns, &ns_labels),
                    "{id}: {name} allows namespace {ns}"
                );
            }
            let selectors: Vec<String> = ours
                .service_selectors
                .iter()
                .map(herald_config::selector::to_string)
                .collect();
            let want_selectors = strings(&alloc["serviceSelectors"]);
            if !(want_selectors == ["<everything>"] && selectors.is_empty()) {
                assert_eq!(selectors, want_selectors, "{id}: {name} serviceSelectors");
            }
        }

        let pool_labels = pool.metadata.labels.clone().unwrap_or_default();
        let ours: BTreeSet<String> = objects
            .advertisements
            .iter()
            .filter(|a| a.spec.selects_pool(name, &pool_labels))
            .filter_map(|a| a.metadata.name.clone())
            .collect();
        let mut theirs = BTreeSet::new();
        for entry in want["l2Advertisements"].as_array().into_iter().flatten() {
            for from in strings(&entry["from"]) {
                let adv = objects
                    .advertisements
                    .iter()
                    .find(|a| a.metadata.name.as_deref() == Some(&from))
                    .expect("advertisement");
                let nodes: Vec<String> = objects
                    .nodes
                    .iter()
                    .filter(|(_, l)| adv.spec.selects_node(l))
                    .map(|(n, _)| n.clone())
                    .collect();
                let mut want_nodes = strings(&entry["nodes"]);
                want_nodes.sort();
                assert_eq!(nodes, want_nodes, "{id}: {name} nodes of {from}");
                assert_eq!(
                    adv.spec.interfaces,
                    strings(&entry["interfaces"]),
                    "{id}: {name} interfaces of {from}"
                );
                theirs.insert(from);
            }
        }
        assert_eq!(ours, theirs, "{id}: advertisements announcing {name}");
    }
}

#[test]
fn metallb_config_cases_replay() {
    let cases = cases();
    let mut replayed = 0;
    for case in cases["cases"].as_array().expect("cases") {
        let id = case["id"].as_str().unwrap_or_default();
        if case["observability"] != "k8s" {
            continue;
        }
        let input = &case["input"];
        let objects_yaml = input["objects_yaml"].as_str().unwrap_or_default();
        let cluster_yaml = input["cluster_objects_yaml"].as_str().unwrap_or_default();
        let want_valid = case["expected"]["outcome"] == "valid";

        if case["kind"] == "webhook" {
            // Created outside the controller's namespace: refused by the namespace rule.
            let objects: Vec<Value> = herald_config::yaml::documents(objects_yaml).expect("YAML");
            for doc in objects {
                let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
                let kind = doc["kind"].as_str().unwrap_or_default();
                let verdict = check_namespace(kind, ns, "herald-system");
                assert_eq!(verdict.is_ok(), want_valid, "{id}: {verdict:?}");
            }
            replayed += 1;
            continue;
        }

        let objects = load(objects_yaml, cluster_yaml);
        let errors = errors_of(&objects);
        assert_eq!(errors.is_empty(), want_valid, "{id}: Herald said {errors:?}");
        if want_valid && let Some(parsed) = case["expected"]["parsed"].as_object() {
            check_parsed(id, &objects, &Value::Object(parsed.clone()));
        }
        replayed += 1;
    }
    // 28 config-parse + 2 webhook cases are observable through Kubernetes.
    assert_eq!(replayed, 30, "every Kubernetes-observable case was replayed");
}

/// The confounded rows pass in MetalLB for another reason (a leading space makes the CIDR
/// invalid, or the pools have no addresses). Herald must still refuse what they are named for.
#[test]
fn confounded_rows_hold_for_their_named_reason() {
    let yaml = |a: &str, b: &str| {
        format!(
            "---\napiVersion: herald.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: pool1}}\nspec: {{addresses: [\"{a}\"]}}\n---\napiVersion: herald.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: pool2}}\nspec: {{addresses: [\"{b}\"]}}\n"
        )
    };
    let duplicate = errors_of(&load(&yaml("10.0.0.0/8", "10.0.0.0/8"), ""));
    assert_eq!(
        duplicate,
        [
            "pool pool2: spec.addresses[0] (10.0.0.0/8) overlaps 10.0.0.0/8 of pool \"pool1\"; an address may belong to one pool only"
        ]
    );
    let overlapping = errors_of(&load(&yaml("10.0.0.0/8", "10.0.0.0/16"), ""));
    assert_eq!(
        overlapping,
        [
            "pool pool2: spec.addresses[0] (10.0.0.0/16) overlaps 10.0.0.0/8 of pool \"pool1\"; an address may belong to one pool only"
        ]
    );
}
