//! Finds the Herald executables the lab runs: `herald-controller`, `herald-speaker`, and
//! `herald-lab` itself (for the echo backends and the API relay helper).
//!
//! Order: the `HERALD_BIN_DIR` environment variable (or an explicit directory); otherwise
//! the directory of the running executable, and its parent when that is cargo's `deps/`
//! (integration tests run from `target/<profile>/deps/`). All three must be in the same
//! directory, so a lab never mixes binaries of two builds.

use std::path::{Path, PathBuf};

use super::LabError;

/// Environment variable naming the directory that holds Herald's binaries.
pub const BIN_DIR_ENV: &str = "HERALD_BIN_DIR";

/// Paths of the executables a lab runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Binaries {
    /// `herald-controller`.
    pub controller: PathBuf,
    /// `herald-speaker`.
    pub speaker: PathBuf,
    /// `herald-lab` (hidden `echo` and `relay` subcommands).
    pub lab: PathBuf,
}

/// The paths of `files` that are not regular files.
pub(crate) fn missing_files(files: &[&PathBuf]) -> Vec<String> {
    files
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect()
}

impl Binaries {
    /// The binaries in `dir`, if all three are there.
    pub fn in_dir(dir: &Path) -> Result<Self, LabError> {
        let found = Self {
            controller: dir.join("herald-controller"),
            speaker: dir.join("herald-speaker"),
            lab: dir.join("herald-lab"),
        };
        let missing = missing_files(&[&found.controller, &found.speaker, &found.lab]);
        if missing.is_empty() {
            Ok(found)
        } else {
            Err(LabError::BinariesMissing {
                searched: vec![dir.to_path_buf()],
                missing,
            })
        }
    }

    /// Searches `HERALD_BIN_DIR`, then next to the running executable (see the module docs).
    pub fn locate() -> Result<Self, LabError> {
        if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
            return Self::in_dir(Path::new(&dir));
        }
        let exe = std::env::current_exe().map_err(|source| LabError::Io {
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?;
        let mut candidates = Vec::new();
        if let Some(dir) = exe.parent() {
            candidates.push(dir.to_path_buf());
            if dir.file_name().is_some_and(|n| n == "deps")
                && let Some(parent) = dir.parent()
            {
                candidates.push(parent.to_path_buf());
            }
        }
        let mut missing = Vec::new();
        for dir in &candidates {
            match Self::in_dir(dir) {
                Ok(found) => return Ok(found),
                Err(LabError::BinariesMissing { missing: m, .. }) => missing.extend(m),
                Err(other) => return Err(other),
            }
        }
        Err(LabError::BinariesMissing {
            searched: candidates,
            missing,
        })
    }

    /// The lab's images for its kubelet: `herald` (what `make image` packs: both binaries in
    /// `/usr/local/bin`) and `herald-lab` (the echo backends), each program mapped to the
    /// binary of this build.
    pub fn images(&self) -> super::kubelet::pod_spec::Images {
        let bin = |name: &str, path: &PathBuf| (format!("/usr/local/bin/{name}"), path.clone());
        super::kubelet::pod_spec::Images {
            programs: [
                (
                    "herald".to_string(),
                    [
                        bin("herald-controller", &self.controller),
                        bin("herald-speaker", &self.speaker),
                    ]
                    .into(),
                ),
                ("herald-lab".to_string(), [bin("herald-lab", &self.lab)].into()),
            ]
            .into(),
        }
    }
}
