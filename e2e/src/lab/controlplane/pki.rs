//! The lab cluster's certificates, as kubeadm lays them out: one CA, the API server's serving
//! certificate (valid for every address nodes and the host use), client certificates for the
//! admin, kube-controller-manager and kube-scheduler, and the service-account signing key.
//! Generation is pure ([`Pki::generate`]); [`Pki::write`] puts the PEM files in a directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Errors of certificate generation and writing.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused a parameter or failed to sign.
    #[error("cannot generate the {what} certificate")]
    Generate {
        /// Which certificate.
        what: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct CertAndKey {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey").finish_non_exhaustive()
    }
}

/// A client identity: the user name (CN) and groups (O) the API server authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// File stem, e.g. `admin`.
    pub file: String,
    /// User name.
    pub user: String,
    /// Groups.
    pub groups: Vec<String>,
}

impl ClientIdentity {
    /// An identity with `user` and `groups`, stored as `<file>.crt` / `<file>.key`.
    pub fn new(file: &str, user: &str, groups: &[&str]) -> Self {
        Self {
            file: file.to_string(),
            user: user.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// What the certificates must say.
#[derive(Debug, Clone)]
pub struct PkiPlan {
    /// Addresses the API server is reached at (loopback, the in-lab address, the
    /// `kubernetes` Service's ClusterIPs).
    pub apiserver_ips: Vec<IpAddr>,
    /// DNS names of the API server.
    pub apiserver_names: Vec<String>,
    /// Client certificates to issue.
    pub clients: Vec<ClientIdentity>,
}

impl PkiPlan {
    /// The names every cluster's API server certificate carries, plus `ips`.
    pub fn new(ips: Vec<IpAddr>, clients: Vec<ClientIdentity>) -> Self {
        Self {
            apiserver_ips: ips,
            apiserver_names: [
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            clients,
        }
    }
}

/// The generated material.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The cluster CA (also the client CA).
    pub ca: CertAndKey,
    /// The API server's serving certificate.
    pub apiserver: CertAndKey,
    /// Client certificates, in plan order.
    pub clients: Vec<(ClientIdentity, CertAndKey)>,
    /// The service-account token signing key (PKCS#8).
    pub service_account_key_pem: String,
    /// Its public key (SPKI), which the API server verifies tokens with.
    pub service_account_public_pem: String,
}

fn generate_error(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_string(),
        source,
    }
}

fn name(common_name: &str, organizations: &[String]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    for org in organizations {
        dn.push(DnType::OrganizationName, org.as_str());
    }
    dn
}

impl Pki {
    /// Generates a fresh CA and everything `plan` asks for (ECDSA P-256).
    pub fn generate(plan: &PkiPlan) -> Result<Pki, PkiError> {
        let ca_key = KeyPair::generate().map_err(generate_error("CA key"))?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = name("herald-lab-ca", &[]);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(generate_error("CA"))?;
        let ca = CertAndKey {
            cert_pem: ca_cert.pem(),
            key_pem: ca_key.serialize_pem(),
        };
        let issuer = Issuer::new(ca_params, ca_key);

        let mut server = CertificateParams::new(plan.apiserver_names.clone()).map_err(generate_error("API server"))?;
        server
            .subject_alt_names
            .extend(plan.apiserver_ips.iter().map(|ip| SanType::IpAddress(*ip)));
        server.distinguished_name = name("kube-apiserver", &[]);
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let apiserver = leaf(&server, &issuer, "API server")?;

        let clients = plan
            .clients
            .iter()
            .map(|identity| {
                let mut params = CertificateParams::default();
                params.distinguished_name = name(&identity.user, &identity.groups);
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                leaf(&params, &issuer, &identity.user).map(|pair| (identity.clone(), pair))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let service_account = KeyPair::generate().map_err(generate_error("service-account key"))?;
        Ok(Pki {
            ca,
            apiserver,
            clients,
            service_account_key_pem: service_account.serialize_pem(),
            service_account_public_pem: service_account.public_key_pem(),
        })
    }

    /// The client certificate issued for `file` (see [`ClientIdentity::file`]).
    pub fn client(&self, file: &str) -> Option<&CertAndKey> {
        self.clients
            .iter()
            .find(|(id, _)| id.file == file)
            .map(|(_, pair)| pair)
    }

    /// Writes `ca.crt`, `ca.key`, `apiserver.{crt,key}`, `<client>.{crt,key}` and `sa.{key,pub}` into
    /// `dir` (keys readable by the owner only).
    pub fn write(&self, dir: &Path) -> Result<PkiFiles, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let files = PkiFiles::in_dir(dir);
        write(&files.ca_cert, &self.ca.cert_pem, false)?;
        write(&dir.join("ca.key"), &self.ca.key_pem, true)?;
        write(&files.apiserver_cert, &self.apiserver.cert_pem, false)?;
        write(&files.apiserver_key, &self.apiserver.key_pem, true)?;
        for (identity, pair) in &self.clients {
            write(&dir.join(format!("{}.crt", identity.file)), &pair.cert_pem, false)?;
            write(&dir.join(format!("{}.key", identity.file)), &pair.key_pem, true)?;
        }
        write(&files.service_account_key, &self.service_account_key_pem, true)?;
        write(&files.service_account_public, &self.service_account_public_pem, false)?;
        Ok(files)
    }
}

/// Where [`Pki::write`] put the files the control plane's flags name.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// The directory.
    pub dir: PathBuf,
    /// `ca.crt`.
    pub ca_cert: PathBuf,
    /// `apiserver.crt`.
    pub apiserver_cert: PathBuf,
    /// `apiserver.key`.
    pub apiserver_key: PathBuf,
    /// `sa.key`.
    pub service_account_key: PathBuf,
    /// `sa.pub`.
    pub service_account_public: PathBuf,
}

impl PkiFiles {
    /// The file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.crt"),
            apiserver_cert: dir.join("apiserver.crt"),
            apiserver_key: dir.join("apiserver.key"),
            service_account_key: dir.join("sa.key"),
            service_account_public: dir.join("sa.pub"),
        }
    }

    /// The certificate and key files of client `file`.
    pub fn client(&self, file: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        )
    }
}

fn leaf(params: &CertificateParams, issuer: &Issuer<'_, KeyPair>, what: &str) -> Result<CertAndKey, PkiError> {
    let key = KeyPair::generate().map_err(generate_error(what))?;
    let cert = params.signed_by(&key, issuer).map_err(generate_error(what))?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if private { 0o600 } else { 0o644 };
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()));
    result.map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> PkiPlan {
        PkiPlan::new(
            vec!["127.0.0.1".parse().unwrap(), "10.203.0.1".parse().unwrap()],
            vec![ClientIdentity::new("admin", "herald-lab-admin", &["system:masters"])],
        )
    }

    /// The certificates must verify under their CA with the names clients use: checked with
    /// rustls's own verifier (webpki), the one kube-rs uses.
    #[test]
    fn server_certificate_verifies_for_every_lab_address_and_not_others() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
        let pki = Pki::generate(&plan()).unwrap();
        let ca = CertificateDer::from_pem_slice(pki.ca.cert_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
        let cert = CertificateDer::from_pem_slice(pki.apiserver.cert_pem.as_bytes()).unwrap();
        let check = |name: &str| {
            verifier
                .verify_server_cert(
                    &cert,
                    &[],
                    &ServerName::try_from(name.to_string()).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .is_ok()
        };
        for good in ["127.0.0.1", "10.203.0.1", "kubernetes.default.svc", "localhost"] {
            assert!(check(good), "{good} should verify");
        }
        for bad in ["10.203.0.2", "example.com"] {
            assert!(!check(bad), "{bad} must not verify");
        }
    }

    #[test]
    fn files_are_written_with_private_keys_closed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("herald-pki-test-{}", std::process::id()));
        let pki = Pki::generate(&plan()).unwrap();
        let files = pki.write(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.ca_cert), 0o644);
        assert_eq!(mode(&files.service_account_key), 0o600);
        assert!(
            std::fs::read_to_string(&files.service_account_public)
                .unwrap()
                .contains("BEGIN PUBLIC KEY")
        );
        let (crt, key) = files.client("admin");
        assert!(std::fs::read_to_string(crt).unwrap().contains("BEGIN CERTIFICATE"));
        assert_eq!(mode(&key), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
