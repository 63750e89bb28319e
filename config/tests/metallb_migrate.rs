//! `herald-controller migrate` on MetalLB's own test table and on MetalLB-style samples.
//!
//! The table (`shared/metallb-cases/config_cases.json`) carries its objects in Herald's group;
//! each case is turned back into what a MetalLB user has (`metallb.io/v1beta1`, MetalLB's
//! namespace), migrated, and judged by Herald's `check`: the verdict must be MetalLB's, and the
//! migrated objects must be the table's Herald objects. `config/samples/metallb/` holds
//! configurations shaped like MetalLB's documentation (layer 2, selectors, BGP, Services);
//! each has its expected outcome beside it.

use std::path::{Path, PathBuf};

use herald_config::check::check_manifests;
use herald_config::migrate::{METALLB_NAMESPACE, Migration, Namespaces, migrate};
use serde_json::Value;

const HERALD_NAMESPACE: &str = "herald-system";
const NAMESPACES: Namespaces = Namespaces {
    from: METALLB_NAMESPACE,
    to: HERALD_NAMESPACE,
};

fn cases() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/metallb-cases/config_cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} must exist beside the repository: {e}", path.display()));
    serde_json::from_str(&text).expect("config_cases.json is JSON")
}

/// A table case's objects as a MetalLB user has them.
fn as_metallb(docs: &[Value]) -> Vec<Value> {
    docs.iter()
        .cloned()
        .map(|mut doc| {
            doc["apiVersion"] = "metallb.io/v1beta1".into();
            if doc["metadata"]["namespace"] == "$CONTROLLER_NAMESPACE" {
                doc["metadata"]["namespace"] = METALLB_NAMESPACE.into();
            }
            doc
        })
        .collect()
}

/// What the API server stores after applying the documents in order: a later object of the
/// same kind and name replaces the earlier one.
fn as_stored(docs: Vec<Value>) -> Vec<Value> {
    let mut stored: Vec<Value> = Vec::new();
    for doc in docs {
        stored.retain(|d| d["kind"] != doc["kind"] || d["metadata"]["name"] != doc["metadata"]["name"]);
        stored.push(doc);
    }
    stored
}

/// The table's Herald object as migrate should write it: in Herald's namespace, with an empty
/// spec where it had none, without the one field Herald does not have.
fn expected_herald(doc: &Value) -> Value {
    let mut doc = doc.clone();
    doc["metadata"]["namespace"] = HERALD_NAMESPACE.into();
    if doc["spec"].is_null() {
        doc["spec"] = serde_json::json!({});
    }
    if let Some(spec) = doc["spec"].as_object_mut() {
        spec.remove("preferredNodeSelectors");
    }
    doc
}

#[test]
fn metallb_table_migrates_to_the_same_verdict_and_the_same_objects() {
    let cases = cases();
    let (mut judged, mut compared, mut dropped_preferences) = (0, 0, 0);
    for case in cases["cases"].as_array().expect("cases") {
        let id = case["id"].as_str().unwrap_or_default();
        let Some(yaml) = case["input"]["objects_yaml"].as_str() else {
            continue;
        };
        let docs: Vec<Value> = herald_config::yaml::documents(yaml).expect("case YAML");
        let migration = migrate(&as_metallb(&docs), &NAMESPACES);
        let want_valid = case["expected"]["outcome"] == "valid";

        if case["kind"] == "webhook" {
            // MetalLB's webhook refuses objects created outside its namespace; migrate refuses
            // to carry them over, since MetalLB never served them.
            if case["observability"] == "k8s" {
                assert_eq!(
                    migration.refused.is_empty(),
                    want_valid,
                    "{id}: {:?}",
                    migration.refused
                );
                judged += 1;
            }
            continue;
        }
        if !migration.refused.is_empty() {
            // Refused only what MetalLB refuses too (an object without a name).
            assert!(!want_valid, "{id}: {:?}", migration.refused);
            judged += usize::from(case["kind"] == "config-parse" && case["observability"] == "k8s");
            continue;
        }
        let expected: Vec<Value> = docs.iter().map(expected_herald).collect();
        assert_eq!(migration.objects, expected, "{id}: migrated objects");
        compared += 1;
        let with_preferences = docs
            .iter()
            .filter(|d| {
                d["spec"]["preferredNodeSelectors"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
            })
            .count();
        let notes = migration
            .differences
            .iter()
            .filter(|d| d.message.starts_with("spec.preferredNodeSelectors dropped"))
            .count();
        assert_eq!(notes, with_preferences, "{id}: {:?}", migration.differences);
        dropped_preferences += notes;

        if case["kind"] == "config-parse" && case["observability"] == "k8s" {
            let problems = check_manifests(&as_stored(migration.objects), HERALD_NAMESPACE);
            assert_eq!(problems.is_empty(), want_valid, "{id}: check said {problems:?}");
            judged += 1;
        }
    }
    // Every Kubernetes-observable case (28 config-parse, 2 webhook) is judged after migrating.
    assert_eq!(judged, 30);
    assert_eq!(compared, 39, "cases with objects, migrated and compared");
    assert!(
        dropped_preferences >= 10,
        "{dropped_preferences}: the preferredNodeSelectors cases are in the table"
    );
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    herald_config::yaml::documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `# <prefix> <object>: <message start>` line of a sample.
fn expectations(path: &Path, prefix: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|l| {
            let (object, message) = l.split_once(": ").expect("<object>: <message>");
            (object.to_string(), message.to_string())
        })
        .collect()
}

fn assert_notes(path: &Path, kind: &str, notes: &[herald_config::migrate::Note], expected: &[(String, String)]) {
    assert_eq!(notes.len(), expected.len(), "{}: {kind}: {notes:#?}", path.display());
    for (note, (object, start)) in notes.iter().zip(expected) {
        assert_eq!(&note.object, object, "{}: {kind}", path.display());
        assert!(
            note.message.starts_with(start.as_str()),
            "{}: {kind}: {note} does not start with {start:?}",
            path.display()
        );
    }
}

#[test]
fn metallb_style_samples_migrate_and_then_pass_check() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples/metallb");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "samples exist");
    for file in &files {
        let Migration {
            objects,
            refused,
            differences,
            ..
        } = migrate(&documents(file), &NAMESPACES);
        assert_notes(file, "refused", &refused, &expectations(file, "# refused "));
        assert_notes(file, "differs", &differences, &expectations(file, "# differs "));
        let problems = check_manifests(&objects, HERALD_NAMESPACE);
        assert!(problems.is_empty(), "{}: {problems:?}", file.display());
        let produced = std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("# migrates to: ").map(|n| n.parse::<usize>().unwrap()))
            .expect("# migrates to: N");
        assert_eq!(objects.len(), produced, "{}", file.display());
    }
}
