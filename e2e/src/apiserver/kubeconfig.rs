//! Kubeconfig files and kube-rs clients for a running lab API server.

use std::path::Path;

/// Name used for the cluster, user and context entries.
pub const CONTEXT_NAME: &str = "herald-lab";

/// Kubeconfig YAML pointing at `server_url` (e.g. `http://127.0.0.1:8080`) with an optional token.
pub fn kubeconfig_yaml(server_url: &str, token: Option<&str>) -> String {
    let user = match token {
        Some(t) => format!("{{token: {}}}", serde_json::Value::String(t.to_string())),
        None => "{}".to_string(),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {CONTEXT_NAME}\n  cluster:\n    server: {server_url}\nusers:\n- name: {CONTEXT_NAME}\n  user: {user}\ncontexts:\n- name: {CONTEXT_NAME}\n  context:\n    cluster: {CONTEXT_NAME}\n    user: {CONTEXT_NAME}\n    namespace: default\ncurrent-context: {CONTEXT_NAME}\n"
    )
}

/// Writes a kubeconfig atomically (temp file + rename), creating parent directories.
pub fn write_kubeconfig(path: &Path, server_url: &str, token: Option<&str>) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, kubeconfig_yaml(server_url, token))?;
    std::fs::rename(&tmp, path)
}

/// A kube-rs client for `server_url`, configured exactly as a kubeconfig file would.
pub async fn client(server_url: &str, token: Option<&str>) -> Result<kube::Client, kube::Error> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&kubeconfig_yaml(server_url, token))
        .map_err(kube::Error::InferKubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(kube::Error::InferKubeconfig)?;
    kube::Client::try_from(config)
}
