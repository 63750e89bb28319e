//! `herald-lab image` (what `make image` runs) checked with tools we did not write: skopeo
//! reads the archive, verifies every blob's digest while copying it into an OCI layout, umoci
//! unpacks that into a root filesystem, and each binary runs from it (chroot, as the image's
//! non-root user) with exactly the libraries the image carries.
//!
//! Needs root (chroot), skopeo and umoci (`make deps`); under `CI=true` a missing one fails.

use std::path::{Path, PathBuf};

use herald_e2e::lab::Binaries;
use herald_testkit::run;

struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        herald_testkit::cleanup(
            format!("removing {}", self.0.display()),
            std::fs::remove_dir_all(&self.0),
        );
    }
}

#[test]
fn the_image_is_read_by_skopeo_unpacked_by_umoci_and_its_binaries_run_from_it() {
    if !herald_testkit::may_run("the image test", &["skopeo", "umoci", "chroot"]) {
        return;
    }
    let binaries = Binaries::locate().expect("workspace binaries are built");
    let scratch = Scratch(std::env::temp_dir().join(format!("herald-image-test-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).unwrap();
    let archive = scratch.0.join("herald.oci.tar");
    let bin_dir = binaries.lab.parent().unwrap().display().to_string();
    let printed = run(
        &binaries.lab.display().to_string(),
        &[
            "image",
            "--bin-dir",
            &bin_dir,
            "--out",
            &archive.display().to_string(),
            "--revision",
            "test",
        ],
    );
    assert!(printed.contains("docker.io/library/herald:0.1.0"), "{printed}");

    // skopeo reads the archive's index, manifest and config.
    let source = format!("oci-archive:{}", archive.display());
    let inspected: serde_json::Value = serde_json::from_str(&run("skopeo", &["inspect", &source])).expect("JSON");
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Os"], "linux");
    assert_eq!(inspected["Labels"]["org.opencontainers.image.title"], "herald");
    assert_eq!(inspected["Labels"]["org.opencontainers.image.version"], "0.1.0");
    assert_eq!(inspected["Labels"]["org.opencontainers.image.revision"], "test");
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(1));
    let config: serde_json::Value =
        serde_json::from_str(&run("skopeo", &["inspect", "--config", &source])).expect("JSON");
    assert_eq!(
        config["config"]["User"], "65534:65534",
        "the image runs as a non-root user"
    );

    // skopeo copies it blob by blob (checking each digest) into a layout umoci unpacks.
    let layout = scratch.0.join("layout");
    run("skopeo", &["copy", &source, &format!("oci:{}:0.1.0", layout.display())]);
    let bundle = scratch.0.join("bundle");
    run(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:0.1.0", layout.display()),
            &bundle.display().to_string(),
        ],
    );
    let rootfs = bundle.join("rootfs");
    let runtime: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(runtime["process"]["user"]["uid"], 65534);

    // Nothing but the binaries, their libraries and the user files.
    let mut files = Vec::new();
    collect(&rootfs, &rootfs, &mut files);
    files.sort();
    assert!(files.contains(&"usr/local/bin/herald-speaker".to_string()), "{files:?}");
    assert!(files.contains(&"etc/passwd".to_string()), "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("usr/local/bin/") || f.starts_with("lib") || f.starts_with("etc/")),
        "unexpected files in the image: {files:?}"
    );

    for binary in ["herald-speaker", "herald-controller"] {
        let version = run(
            "chroot",
            &[
                "--userspec=65534:65534",
                &rootfs.display().to_string(),
                &format!("/usr/local/bin/{binary}"),
                "--version",
            ],
        );
        assert_eq!(version.trim(), format!("{binary} 0.1.0"));
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, out);
        } else {
            out.push(path.strip_prefix(root).unwrap().display().to_string());
        }
    }
}
