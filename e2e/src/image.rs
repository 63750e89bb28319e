//! `make image`: Herald's OCI image, written without a daemon or a registry.
//!
//! One layer holds `herald-controller` and `herald-speaker` in `/usr/local/bin`, exactly the
//! shared libraries they load (found with `ldd`, copied at the paths the loader asks for), and
//! `/etc/passwd`/`/etc/group` naming the non-root user the image runs as (65534). The result is
//! an OCI image layout packed as one tar (an `oci-archive`), which `skopeo`, `podman load`,
//! `docker load` and `ctr images import` read. Everything is deterministic: entries are sorted,
//! owned by root, dated `SOURCE_DATE_EPOCH` (default 0), so the same binaries give the same
//! digests.
//!
//! The layout is built in memory by [`build_archive`] from a list of [`LayerFile`]s (pure); the
//! edges are [`shared_libraries`] (runs `ldd`) and [`write_image`] (reads the binaries, writes the
//! archive).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

/// Errors of building the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `ldd` failed or said something unexpected.
    #[error("ldd {binary}: {problem}")]
    Ldd {
        /// The binary.
        binary: PathBuf,
        /// What went wrong.
        problem: String,
    },
}

/// One regular file of the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// Absolute path inside the image, e.g. `/usr/local/bin/herald-speaker`.
    pub path: String,
    /// Contents.
    pub contents: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// What the image says about itself.
#[derive(Debug, Clone)]
pub struct ImageMeta {
    /// The tag (`org.opencontainers.image.ref.name`), e.g. `0.1.0`.
    pub tag: String,
    /// The full name a runtime stores it under, e.g. `docker.io/library/herald:0.1.0`.
    pub name: String,
    /// `org.opencontainers.image.*` labels.
    pub labels: BTreeMap<String, String>,
    /// User (uid:gid) the container runs as.
    pub user: String,
    /// Timestamp of every entry and of `created` (seconds since the epoch).
    pub epoch: u64,
}

/// The uid and gid the image runs as (the conventional `nobody`).
pub const IMAGE_USER: u32 = 65534;

/// Sha256 digest as `sha256:<hex>`.
fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn tar_header(size: u64, mode: u32, epoch: u64, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(epoch);
    header.set_username("root").ok();
    header.set_groupname("root").ok();
    header
}

fn tar_error(what: &str) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: PathBuf::from(what),
        source,
    }
}

/// The parent directories of `files`, each once, parents first.
fn directories(files: &[LayerFile]) -> Vec<String> {
    let mut dirs = std::collections::BTreeSet::new();
    for file in files {
        let mut path = Path::new(&file.path);
        while let Some(parent) = path.parent() {
            if parent == Path::new("/") {
                break;
            }
            dirs.insert(parent.display().to_string());
            path = parent;
        }
    }
    dirs.into_iter().collect()
}

/// The layer: an uncompressed tar of `files` (plus their directories and `/tmp`), sorted.
pub fn layer_tar(files: &[LayerFile], epoch: u64) -> Result<Vec<u8>, ImageError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = directories(files);
    dirs.push("/tmp".to_string());
    dirs.sort();
    for dir in dirs {
        let mode = if dir == "/tmp" { 0o1777 } else { 0o755 };
        let mut header = tar_header(0, mode, epoch, tar::EntryType::Directory);
        let name = format!("{}/", dir.trim_start_matches('/'));
        builder
            .append_data(&mut header, name, std::io::empty())
            .map_err(tar_error("layer"))?;
    }
    let mut sorted: Vec<&LayerFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for file in sorted {
        let mut header = tar_header(file.contents.len() as u64, file.mode, epoch, tar::EntryType::Regular);
        builder
            .append_data(&mut header, file.path.trim_start_matches('/'), file.contents.as_slice())
            .map_err(tar_error("layer"))?;
    }
    builder.into_inner().map_err(tar_error("layer"))
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>, ImageError> {
    // No file name and a zero mtime in the gzip header: the same layer, the same digest.
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).map_err(tar_error("gzip"))?;
    encoder.finish().map_err(tar_error("gzip"))
}

/// The OCI image layout of one image as (path, contents) pairs: `oci-layout`, `index.json`
/// and the blobs (layer, config, manifest).
pub fn image_layout(files: &[LayerFile], meta: &ImageMeta) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    let layer = layer_tar(files, meta.epoch)?;
    let diff_id = digest(&layer);
    let layer_gz = gzip(&layer)?;
    let created = chrono::DateTime::from_timestamp(i64::try_from(meta.epoch).unwrap_or(0), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": meta.user,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "Labels": meta.labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "herald-lab image"}],
    }))
    .expect("JSON values serialize");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest(&layer_gz),
            "size": layer_gz.len(),
        }],
        "annotations": meta.labels,
    }))
    .expect("JSON values serialize");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "org.opencontainers.image.ref.name": meta.tag,
                // What containerd (ctr images import, docker load) names the image.
                "io.containerd.image.name": meta.name,
            },
        }],
    }))
    .expect("JSON values serialize");
    let blob = |bytes: &[u8]| format!("blobs/sha256/{}", digest(bytes).trim_start_matches("sha256:"));
    Ok(vec![
        ("oci-layout".to_string(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json".to_string(), index),
        (blob(&layer_gz), layer_gz),
        (blob(&config), config),
        (blob(&manifest), manifest),
    ])
}

/// The layout packed as one tar (`oci-archive`).
pub fn build_archive(files: &[LayerFile], meta: &ImageMeta) -> Result<Vec<u8>, ImageError> {
    let mut builder = tar::Builder::new(Vec::new());
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut header = tar_header(0, 0o755, meta.epoch, tar::EntryType::Directory);
        builder
            .append_data(&mut header, dir, std::io::empty())
            .map_err(tar_error("archive"))?;
    }
    for (path, contents) in image_layout(files, meta)? {
        let mut header = tar_header(contents.len() as u64, 0o644, meta.epoch, tar::EntryType::Regular);
        builder
            .append_data(&mut header, &path, contents.as_slice())
            .map_err(tar_error("archive"))?;
    }
    builder.into_inner().map_err(tar_error("archive"))
}

/// The libraries `ldd` prints for a binary: the paths the loader will open, and the loader.
pub fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
            let target = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line,
            };
            let path = target.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The shared libraries `binary` needs, with `ldd`.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let output = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|source| ImageError::Io {
            path: PathBuf::from("ldd"),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || text.contains("not found") {
        return Err(ImageError::Ldd {
            binary: binary.to_path_buf(),
            problem: format!("{}{}", text.trim(), String::from_utf8_lossy(&output.stderr).trim()),
        });
    }
    Ok(parse_ldd(&text))
}

/// `/etc/passwd` and `/etc/group` with root and the image's user.
pub fn user_files() -> Vec<LayerFile> {
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:{IMAGE_USER}:{IMAGE_USER}:nobody:/nonexistent:/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nnogroup:x:{IMAGE_USER}:\n");
    vec![
        LayerFile {
            path: "/etc/passwd".into(),
            contents: passwd.into_bytes(),
            mode: 0o644,
        },
        LayerFile {
            path: "/etc/group".into(),
            contents: group.into_bytes(),
            mode: 0o644,
        },
    ]
}

/// The `org.opencontainers.image.*` labels of Herald's image.
pub fn labels(version: &str, revision: &str, created: &str) -> BTreeMap<String, String> {
    [
        ("org.opencontainers.image.title", "herald"),
        (
            "org.opencontainers.image.description",
            "Herald: herald-controller and herald-speaker, a bare-metal LoadBalancer for Kubernetes",
        ),
        ("org.opencontainers.image.version", version),
        ("org.opencontainers.image.revision", revision),
        ("org.opencontainers.image.created", created),
        ("org.opencontainers.image.licenses", "Apache-2.0"),
        ("org.opencontainers.image.source", env!("CARGO_PKG_REPOSITORY")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `binaries` (placed in `/usr/local/bin`) and the libraries they need, and writes the
/// image archive at `out`; returns the files of the layer.
pub fn write_image(binaries: &[PathBuf], meta: &ImageMeta, out: &Path) -> Result<Vec<LayerFile>, ImageError> {
    let mut files = user_files();
    let mut libraries = std::collections::BTreeSet::new();
    for binary in binaries {
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push(LayerFile {
            path: format!("/usr/local/bin/{name}"),
            contents: read(binary)?,
            mode: 0o755,
        });
        libraries.extend(shared_libraries(binary)?);
    }
    for library in libraries {
        // The loader opens the path ldd printed; a symlink there becomes the file it names.
        files.push(LayerFile {
            path: library.display().to_string(),
            contents: read(&library)?,
            mode: 0o755,
        });
    }
    let archive = build_archive(&files, meta)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ImageError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(out, archive).map_err(|source| ImageError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ImageMeta {
        ImageMeta {
            tag: "0.1.0".into(),
            name: "docker.io/library/herald:0.1.0".into(),
            labels: labels("0.1.0", "abc", "1970-01-01T00:00:00Z"),
            user: format!("{IMAGE_USER}:{IMAGE_USER}"),
            epoch: 0,
        }
    }

    fn files() -> Vec<LayerFile> {
        let mut files = user_files();
        files.push(LayerFile {
            path: "/usr/local/bin/tool".into(),
            contents: b"#!/bin/true\n".to_vec(),
            mode: 0o755,
        });
        files
    }

    #[test]
    fn ldd_output_gives_the_paths_the_loader_opens() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            parse_ldd(out),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        assert_eq!(
            build_archive(&files(), &meta()).unwrap(),
            build_archive(&files(), &meta()).unwrap()
        );
    }

    #[test]
    fn descriptors_name_the_blobs_by_digest_and_size() {
        let layout: BTreeMap<String, Vec<u8>> = image_layout(&files(), &meta()).unwrap().into_iter().collect();
        let index: serde_json::Value = serde_json::from_slice(&layout["index.json"]).unwrap();
        let manifest_ref = &index["manifests"][0];
        assert_eq!(
            manifest_ref["annotations"]["org.opencontainers.image.ref.name"],
            "0.1.0"
        );
        let blob_of = |descriptor: &serde_json::Value| {
            let digest = descriptor["digest"].as_str().unwrap();
            let bytes = &layout[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))];
            assert_eq!(descriptor["size"].as_u64().unwrap(), bytes.len() as u64);
            assert_eq!(super::digest(bytes), digest);
            bytes.clone()
        };
        let manifest: serde_json::Value = serde_json::from_slice(&blob_of(manifest_ref)).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&blob_of(&manifest["config"])).unwrap();
        assert_eq!(config["config"]["User"], "65534:65534");
        assert_eq!(config["config"]["Labels"]["org.opencontainers.image.title"], "herald");
        let layer_gz = blob_of(&manifest["layers"][0]);
        // The config's diff_id is the digest of the uncompressed layer.
        let mut layer = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(layer_gz.as_slice()), &mut layer).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], super::digest(&layer));
        let mut archive = tar::Archive::new(layer.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "etc/",
                "tmp/",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "etc/group",
                "etc/passwd",
                "usr/local/bin/tool"
            ]
        );
    }
}
