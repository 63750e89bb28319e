//! The committed `config/crd/*.yaml` (and their copies in the Helm chart's `crds/`) must equal
//! what the Rust types generate.
//! Run with `HERALD_WRITE_CRDS=1` (what `make crds` does) to rewrite them.

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crd");
    // The Helm chart installs the same files from its crds/ (Helm reads only its own folder).
    let chart_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("helm/herald/crds");
    let write = std::env::var_os("HERALD_WRITE_CRDS").is_some();
    let mut drifted = Vec::new();
    for (file, crd) in herald_config::crds::all() {
        let want = herald_config::crds::to_yaml(&crd).expect("CRD serialises to YAML");
        for path in [dir.join(file), chart_dir.join(file)] {
            if write {
                std::fs::write(&path, &want).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
                continue;
            }
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            if have != want {
                drifted.push(path.display().to_string());
            }
        }
    }
    let kustomization = dir.join("Kustomization");
    let want = herald_config::crds::kustomization();
    if write {
        std::fs::write(&kustomization, &want).expect("writing config/crd/Kustomization");
    } else if std::fs::read_to_string(&kustomization).unwrap_or_default() != want {
        drifted.push(kustomization.display().to_string());
    }
    let mut expected: Vec<String> = herald_config::crds::all().iter().map(|(f, _)| f.to_string()).collect();
    expected.sort();
    for folder in [&dir, &chart_dir] {
        let mut committed: Vec<String> = std::fs::read_dir(folder)
            .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        committed.sort();
        assert_eq!(
            committed,
            expected,
            "{} holds exactly one file per CRD",
            folder.display()
        );
    }
    assert!(
        drifted.is_empty(),
        "these CRD files differ from the Rust types; run `make crds` and commit: {drifted:?}"
    );
}

#[test]
fn crds_declare_status_printer_columns_and_short_names() {
    for (file, crd) in herald_config::crds::all() {
        assert_eq!(crd.spec.group, "herald.io", "{file}");
        assert_eq!(crd.spec.scope, "Namespaced", "{file}");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1beta1", "{file}");
        assert!(
            crd.spec.names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{file} has a short name"
        );
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3),
            "{file} has printer columns"
        );
    }
    for (file, crd) in herald_config::crds::all() {
        let has_status = crd.spec.versions[0]
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some());
        assert_eq!(
            has_status,
            file != "herald.io_l2advertisements.yaml",
            "{file}: status subresource"
        );
    }
}
