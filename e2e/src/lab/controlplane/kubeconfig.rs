//! Kubeconfig files for the lab cluster: one cluster (server URL + CA file) and one user,
//! authenticated either by a client certificate (admin, controller-manager, scheduler) or by
//! a bearer token (Herald's ServiceAccounts).

use std::path::{Path, PathBuf};

/// How the kubeconfig's user authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A client certificate and its key (files).
    ClientCert {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
    },
    /// A bearer token (e.g. from the TokenRequest API).
    Token(String),
}

/// The YAML of a kubeconfig for `server` (https URL), trusting `ca` and logging in as `user`.
pub fn kubeconfig_yaml(server: &str, ca: &Path, user: &str, credentials: &Credentials) -> String {
    let user_fields = match credentials {
        Credentials::ClientCert { cert, key } => serde_json::json!({
            "client-certificate": cert.display().to_string(),
            "client-key": key.display().to_string(),
        }),
        Credentials::Token(token) => serde_json::json!({ "token": token }),
    };
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "herald-lab", "cluster": {
            "server": server,
            "certificate-authority": ca.display().to_string(),
        }}],
        "users": [{"name": user, "user": user_fields}],
        "contexts": [{"name": "herald-lab", "context": {"cluster": "herald-lab", "user": user}}],
        "current-context": "herald-lab",
    });
    serde_yaml::to_string(&doc).expect("a JSON value always serializes as YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_rs_reads_both_kinds() {
        let token = kubeconfig_yaml(
            "https://10.203.0.1:6443",
            Path::new("/lab/pki/ca.crt"),
            "system:serviceaccount:herald-system:herald-speaker",
            &Credentials::Token("abc".into()),
        );
        let parsed = kube::config::Kubeconfig::from_yaml(&token).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("herald-lab"));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.203.0.1:6443"));
        assert_eq!(cluster.certificate_authority.as_deref(), Some("/lab/pki/ca.crt"));
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.token.is_some());

        let cert = kubeconfig_yaml(
            "https://127.0.0.1:40000",
            Path::new("/lab/pki/ca.crt"),
            "admin",
            &Credentials::ClientCert {
                cert: "/lab/pki/admin.crt".into(),
                key: "/lab/pki/admin.key".into(),
            },
        );
        let parsed = kube::config::Kubeconfig::from_yaml(&cert).unwrap();
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.client_certificate.as_deref(), Some("/lab/pki/admin.crt"));
        assert_eq!(user.client_key.as_deref(), Some("/lab/pki/admin.key"));
    }
}
