//! Compiles the eBPF programs under `bpf/` with clang into `OUT_DIR`, where
//! `dataplane::program` embeds them. A missing clang is a build error naming `make deps`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Entry files: one object each, named after the file.
const BPF_PROGRAMS: &[&str] = &["herald_lb"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bpf_dir = manifest_dir.join("bpf");
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    rerun_for_dir(&bpf_dir);

    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    for name in BPF_PROGRAMS {
        let source = bpf_dir.join(format!("{name}.c"));
        let object = out_dir.join(format!("{name}.o"));
        let output = Command::new(&clang)
            .args(["-target", "bpf", "-mcpu=v3", "-O2", "-g", "-Wall", "-Werror"])
            .arg("-I/usr/include/x86_64-linux-gnu")
            .arg("-I")
            .arg(&bpf_dir)
            .arg("-c")
            .arg(&source)
            .arg("-o")
            .arg(&object)
            .output();
        match output {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "clang failed to compile {}:\n{}\n(clang and libbpf-dev come from `make deps`)",
                source.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => panic!(
                "cannot run `{clang}` to compile the eBPF programs in {} ({err}): run `make deps` \
                 (installs the Debian packages clang and libbpf-dev), or set CLANG to a clang binary",
                bpf_dir.display()
            ),
        }
    }
}

/// Cargo only watches a directory's own mtime; list every file so header edits rebuild too.
fn rerun_for_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rerun_for_dir(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
