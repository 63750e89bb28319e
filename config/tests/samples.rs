//! `config/samples/*.yaml` are accepted as they are; every file in `config/samples/invalid/`
//! is refused with exactly the message on its `# expect-error:` line (checked together with
//! the valid samples, so overlaps with them count).

use std::path::{Path, PathBuf};

use herald_config::check::check_manifests;
use herald_testkit::yaml_files;
use serde_json::Value;

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    herald_config::yaml::documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn samples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples")
}

fn valid_samples() -> Vec<Value> {
    yaml_files(&samples_dir()).iter().flat_map(|p| documents(p)).collect()
}

#[test]
fn samples_are_accepted() {
    let docs = valid_samples();
    assert!(docs.len() >= 6, "samples exist");
    let problems = check_manifests(&docs, "herald-system");
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn invalid_samples_are_refused_with_their_documented_message() {
    let files = yaml_files(&samples_dir().join("invalid"));
    assert!(files.len() >= 10, "a table of bad examples exists");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-error: "))
            .unwrap_or_else(|| panic!("{} has an # expect-error: line", file.display()));
        let mut docs = valid_samples();
        docs.extend(documents(&file));
        let problems: Vec<String> = check_manifests(&docs, "herald-system")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(problems, [expected], "{}", file.display());
    }
}
