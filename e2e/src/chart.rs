//! The Helm chart (`config/helm/herald`) as the single source of the deploy manifests:
//! `config/deploy/*.yaml` are `helm template` output, one file per template
//! ([`deploy_files`]); `make manifests` writes them and a test fails when they drift. helm
//! itself is built from its Go module by `make deps` (`e2e/helm/build.sh`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repository's root.
pub fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    repository_root().join("config/helm/herald")
}

/// Values the deploy manifests are rendered with (the chart's defaults, plus the Namespace
/// object, which `kubectl apply -k` needs and Helm users get from `--create-namespace`).
pub const DEPLOY_VALUES: [&str; 1] = ["namespace.create=true"];

/// `HERALD_HELM`, else the helm `e2e/helm/build.sh` built into the cache (asked with
/// `--locate`, which never builds); an error says how to get it.
pub fn locate_helm() -> Result<PathBuf, String> {
    if let Some(helm) = std::env::var_os("HERALD_HELM").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(helm));
    }
    let script = repository_root().join("e2e/helm/build.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .arg("--locate")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let helm = Path::new(stdout.lines().last().unwrap_or_default().trim()).join("helm");
    if helm.is_file() {
        Ok(helm)
    } else {
        Err(format!("{} is missing: run `make deps`", helm.display()))
    }
}

/// Runs `helm args…` with its caches in a temporary HOME (never the user's), returning stdout;
/// an error carries helm's stderr.
pub fn helm(helm: &Path, args: &[&str]) -> Result<String, String> {
    let home = std::env::temp_dir().join(format!("herald-helm-{}", std::process::id()));
    let output = std::process::Command::new(helm)
        .args(args)
        .env("HOME", &home)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", helm.display()))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "helm {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `helm template` of the chart into `namespace` with `--set` values.
pub fn render(helm_binary: &Path, namespace: &str, values: &[&str]) -> Result<String, String> {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    let mut args = vec!["template", "herald", chart.as_ref(), "--namespace", namespace];
    for value in values {
        args.extend(["--set", value]);
    }
    helm(helm_binary, &args)
}

/// The rendered documents grouped by the template they come from (`# Source:
/// herald/templates/<file>`), keyed by that file name, in rendering order within a file.
pub fn split_by_template(rendered: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for document in rendered.split("\n---\n").map(|d| d.trim_start_matches("---\n")) {
        if document.trim().is_empty() {
            continue;
        }
        let mut lines = document.lines();
        let source = lines
            .next()
            .and_then(|l| l.strip_prefix("# Source: herald/templates/"))
            .ok_or_else(|| format!("a rendered document without a # Source line:\n{document}"))?;
        let body: Vec<&str> = lines.collect();
        files
            .entry(source.to_string())
            .or_default()
            .push(body.join("\n").trim_end().to_string());
    }
    Ok(files)
}

/// What each `config/deploy/<file>` must hold: the documents of the template of that name,
/// under a header saying where they come from.
pub fn deploy_files(rendered: &str) -> Result<BTreeMap<String, String>, String> {
    Ok(split_by_template(rendered)?
        .into_iter()
        .map(|(file, documents)| {
            let text = format!(
                "# Generated from config/helm/herald/templates/{file} by `make manifests`; edit the chart, not this file.\n{}\n",
                documents.join("\n---\n")
            );
            (file, text)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_documents_are_grouped_by_their_template() {
        let rendered = "---\n# Source: herald/templates/a.yaml\n# note\nkind: A\n---\n# Source: herald/templates/b.yaml\nkind: B\n---\n# Source: herald/templates/a.yaml\nkind: A2\n";
        let files = split_by_template(rendered).unwrap();
        assert_eq!(files["a.yaml"], ["# note\nkind: A", "kind: A2"]);
        assert_eq!(files["b.yaml"], ["kind: B"]);
        let deploy = deploy_files(rendered).unwrap();
        assert!(deploy["a.yaml"].starts_with("# Generated from config/helm/herald/templates/a.yaml"));
        assert!(deploy["a.yaml"].ends_with("# note\nkind: A\n---\nkind: A2\n"));
        assert!(
            split_by_template("kind: X\n").is_err(),
            "a document must name its template"
        );
    }
}
