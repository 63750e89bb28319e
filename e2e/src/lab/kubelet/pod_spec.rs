//! What a kubelet derives from a Pod before it starts the container: the program, its
//! arguments and environment (`$(VAR)` expansion, `fieldRef`, `secretKeyRef`,
//! `configMapKeyRef`), the user and capabilities it runs with, the volumes it sees and its
//! probes. Pure: the worker fetches what the Pod refers to and hands it in, so every rule is
//! unit-tested. Anything the lab cannot honour is an error the Pod's status shows
//! (`CreateContainerConfigError`), never silently ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Where the service-account volume is mounted in every container that automounts it.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The capabilities a container runtime (containerd, CRI-O) grants when the Pod adds and
/// drops none.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// `PATH` of a container whose Pod does not set one (what images based on Debian set).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a container cannot be started as its Pod says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The image is not one the lab has binaries for.
    #[error("image {0:?} is not one the lab can run (it runs herald:* and herald-lab:* from the build)")]
    UnknownImage(String),
    /// The image has no such program.
    #[error("image {image:?} has no program {program:?}")]
    UnknownProgram {
        /// The image.
        image: String,
        /// The program asked for.
        program: String,
    },
    /// Neither `command` nor an image entrypoint.
    #[error("container {0:?} has no command (the lab's images have no entrypoint)")]
    NoCommand(String),
    /// `runAsNonRoot` with user 0.
    #[error("container has runAsNonRoot and would run as root (set runAsUser)")]
    RootForbidden,
    /// A feature of the Pod spec the lab's kubelet does not implement.
    #[error("{0} is not supported by the lab's kubelet")]
    Unsupported(String),
    /// An env var refers to something missing.
    #[error("env {var}: {problem}")]
    Env {
        /// The variable.
        var: String,
        /// What is missing.
        problem: String,
    },
    /// A volume's ConfigMap or Secret, or a key of it, does not exist.
    #[error("volume {volume:?}: {problem}")]
    Volume {
        /// The volume's source.
        volume: String,
        /// What is missing.
        problem: String,
    },
    /// A volume mount names no volume.
    #[error("volumeMount {0:?} names no volume of the Pod")]
    NoSuchVolume(String),
}

/// The lab's images: which host binary runs for each program path inside them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// Image repository (`herald`, `herald-lab`) → program path in the image → host file.
    pub programs: BTreeMap<String, BTreeMap<String, PathBuf>>,
}

impl Images {
    /// The host file `program` names in `image` (`repository[:tag]`, tag ignored: the lab runs
    /// what it built).
    pub fn resolve(&self, image: &str, program: &str) -> Result<PathBuf, SpecError> {
        let repository = image_repository(image);
        let programs = self
            .programs
            .get(repository)
            .ok_or_else(|| SpecError::UnknownImage(image.to_string()))?;
        programs.get(program).cloned().ok_or_else(|| SpecError::UnknownProgram {
            image: image.to_string(),
            program: program.to_string(),
        })
    }
}

/// `registry/herald:0.1.0@sha256:…` → `herald`.
fn image_repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// What the Pod's env and volumes refer to, fetched by the worker.
#[derive(Debug, Clone, Default)]
pub struct References {
    /// Secret name → its data (decoded).
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// ConfigMap name → its data.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

/// What the kubelet knows of the Pod once its sandbox exists.
#[derive(Debug, Clone)]
pub struct PodFacts {
    /// The node's name.
    pub node_name: String,
    /// The node's addresses (IPv4 first).
    pub host_ips: Vec<String>,
    /// The Pod's addresses (IPv4 first); the node's for `hostNetwork` Pods.
    pub pod_ips: Vec<String>,
    /// `KUBERNETES_SERVICE_HOST` and `_PORT`: where the API server is reached from the Pod.
    pub api_host: String,
    /// Its port.
    pub api_port: u16,
}

/// A volume as the kubelet prepares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A path of the node.
    HostPath(PathBuf),
    /// An empty directory for the Pod's lifetime.
    EmptyDir,
    /// Files the kubelet writes (and, for tokens, refreshes).
    Files(Vec<ProjectedFile>),
}

/// One file of a projected, secret or configMap volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedFile {
    /// Path inside the volume.
    pub path: String,
    /// Where its content comes from.
    pub content: FileContent,
}

/// Where a projected file's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent {
    /// A token of the Pod's ServiceAccount from the TokenRequest API, bound to the Pod.
    Token {
        /// Audience; None: the API server's.
        audience: Option<String>,
        /// Requested lifetime.
        expiration_seconds: i64,
    },
    /// A literal (ConfigMap or Secret key, downward API field), resolved already.
    Literal(String),
}

/// A mount in the container's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// The Pod's volume name.
    pub volume: String,
    /// Where the container sees it.
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// An HTTP probe, resolved (named ports turned into numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// `http://host:port/path`.
    pub url: String,
    /// Before the first probe.
    pub initial_delay: Duration,
    /// Between probes.
    pub period: Duration,
    /// Per request.
    pub timeout: Duration,
    /// Consecutive failures that count.
    pub failure_threshold: u32,
    /// Consecutive successes that count.
    pub success_threshold: u32,
}

/// The process the kubelet runs for a container, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// Container name.
    pub name: String,
    /// Image as the Pod names it.
    pub image: String,
    /// The host binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Exactly the capabilities it has (upper case, without `CAP_`).
    pub capabilities: BTreeSet<String>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privs: bool,
    /// `readOnlyRootFilesystem: true`.
    pub read_only_root: bool,
    /// Its mounts.
    pub mounts: Vec<MountPlan>,
    /// Readiness probe.
    pub readiness: Option<HttpProbe>,
    /// Liveness probe.
    pub liveness: Option<HttpProbe>,
}

/// The Pod's volumes, by name, as the kubelet prepares them.
pub fn volumes(pod: &Pod, facts: &PodFacts, refs: &References) -> Result<BTreeMap<String, VolumeSource>, SpecError> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| SpecError::Unsupported("a Pod without spec".into()))?;
    let mut out = BTreeMap::new();
    for volume in spec.volumes.iter().flatten() {
        let source = if let Some(host) = &volume.host_path {
            VolumeSource::HostPath(PathBuf::from(&host.path))
        } else if volume.empty_dir.is_some() {
            VolumeSource::EmptyDir
        } else if let Some(projected) = &volume.projected {
            let mut files = Vec::new();
            for source in projected.sources.iter().flatten() {
                if let Some(token) = &source.service_account_token {
                    files.push(ProjectedFile {
                        path: token.path.clone(),
                        content: FileContent::Token {
                            audience: token.audience.clone().filter(|a| !a.is_empty()),
                            expiration_seconds: token.expiration_seconds.unwrap_or(3600),
                        },
                    });
                } else if let Some(cm) = &source.config_map {
                    let data = refs.config_maps.get(&cm.name);
                    files.extend(key_files(
                        "configMap",
                        &cm.name,
                        data,
                        cm.items.as_deref(),
                        cm.optional,
                    )?);
                } else if let Some(secret) = &source.secret {
                    let data = refs.secrets.get(&secret.name);
                    files.extend(key_files(
                        "secret",
                        &secret.name,
                        data,
                        secret.items.as_deref(),
                        secret.optional,
                    )?);
                } else if let Some(downward) = &source.downward_api {
                    for item in downward.items.iter().flatten() {
                        let field = item
                            .field_ref
                            .as_ref()
                            .ok_or_else(|| SpecError::Unsupported("downwardAPI resourceFieldRef".into()))?;
                        files.push(ProjectedFile {
                            path: item.path.clone(),
                            content: FileContent::Literal(field_value(pod, facts, &field.field_path)?),
                        });
                    }
                } else {
                    return Err(SpecError::Unsupported(format!(
                        "projected volume {:?} source (clusterTrustBundle, podCertificate)",
                        volume.name
                    )));
                }
            }
            VolumeSource::Files(files)
        } else if let Some(cm) = &volume.config_map {
            let name = cm.name.clone();
            VolumeSource::Files(key_files(
                "configMap",
                &name,
                refs.config_maps.get(&name),
                cm.items.as_deref(),
                cm.optional,
            )?)
        } else if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().unwrap_or_default();
            VolumeSource::Files(key_files(
                "secret",
                &name,
                refs.secrets.get(&name),
                secret.items.as_deref(),
                secret.optional,
            )?)
        } else {
            return Err(SpecError::Unsupported(format!("volume {:?}'s type", volume.name)));
        };
        out.insert(volume.name.clone(), source);
    }
    Ok(out)
}

fn key_files(
    kind: &str,
    name: &str,
    data: Option<&BTreeMap<String, String>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    optional: Option<bool>,
) -> Result<Vec<ProjectedFile>, SpecError> {
    let Some(data) = data else {
        if optional == Some(true) {
            return Ok(Vec::new());
        }
        return Err(SpecError::Volume {
            volume: format!("{kind} {name}"),
            problem: format!("{kind} {name:?} not found"),
        });
    };
    match items {
        None => Ok(data
            .iter()
            .map(|(key, value)| ProjectedFile {
                path: key.clone(),
                content: FileContent::Literal(value.clone()),
            })
            .collect()),
        Some(items) => items
            .iter()
            .map(|item| {
                let value = data.get(&item.key).ok_or_else(|| SpecError::Volume {
                    volume: format!("{kind} {name}"),
                    problem: format!("key {:?} not found", item.key),
                })?;
                Ok(ProjectedFile {
                    path: item.path.clone(),
                    content: FileContent::Literal(value.clone()),
                })
            })
            .collect(),
    }
}

/// The Secrets and ConfigMaps (by name) the Pod's containers and volumes refer to.
pub fn referenced_objects(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut secrets, mut config_maps) = (BTreeSet::new(), BTreeSet::new());
    let Some(spec) = &pod.spec else {
        return (secrets, config_maps);
    };
    for container in &spec.containers {
        for var in container.env.iter().flatten() {
            if let Some(from) = &var.value_from {
                if let Some(s) = &from.secret_key_ref {
                    secrets.insert(s.name.clone());
                }
                if let Some(c) = &from.config_map_key_ref {
                    config_maps.insert(c.name.clone());
                }
            }
        }
        for from in container.env_from.iter().flatten() {
            if let Some(s) = &from.secret_ref {
                secrets.insert(s.name.clone());
            }
            if let Some(c) = &from.config_map_ref {
                config_maps.insert(c.name.clone());
            }
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(s) = &volume.secret {
            secrets.extend(s.secret_name.clone());
        }
        if let Some(c) = &volume.config_map {
            config_maps.insert(c.name.clone());
        }
        for source in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &source.secret {
                secrets.insert(s.name.clone());
            }
            if let Some(c) = &source.config_map {
                config_maps.insert(c.name.clone());
            }
        }
    }
    (secrets, config_maps)
}

/// The plan for the Pod's single container (the lab's Pods have one; init containers and
/// sidecars are refused).
pub fn container_plan(
    pod: &Pod,
    facts: &PodFacts,
    refs: &References,
    images: &Images,
) -> Result<ContainerPlan, SpecError> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| SpecError::Unsupported("a Pod without spec".into()))?;
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(SpecError::Unsupported("initContainers".into()));
    }
    let [container] = spec.containers.as_slice() else {
        return Err(SpecError::Unsupported("more than one container per Pod".into()));
    };
    let env = environment(pod, container, facts, refs)?;
    let expand_all = |words: &[String]| words.iter().map(|w| expand(w, &env)).collect::<Vec<_>>();
    let mut words = expand_all(container.command.as_deref().unwrap_or_default());
    words.extend(expand_all(container.args.as_deref().unwrap_or_default()));
    if words.is_empty() {
        return Err(SpecError::NoCommand(container.name.clone()));
    }
    let program = images.resolve(container.image.as_deref().unwrap_or_default(), &words.remove(0))?;

    let pod_security = spec.security_context.as_ref();
    let security = container.security_context.as_ref();
    let privileged = security.and_then(|s| s.privileged) == Some(true);
    let uid = security
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_security.and_then(|s| s.run_as_user))
        .unwrap_or(0);
    let gid = security
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_security.and_then(|s| s.run_as_group))
        .unwrap_or(uid);
    let non_root = security
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_security.and_then(|s| s.run_as_non_root))
        == Some(true);
    if non_root && uid == 0 {
        return Err(SpecError::RootForbidden);
    }
    let capabilities = if privileged {
        BTreeSet::from(["ALL".to_string()])
    } else {
        effective_capabilities(
            security
                .and_then(|s| s.capabilities.as_ref())
                .and_then(|c| c.add.as_deref())
                .unwrap_or_default(),
            security
                .and_then(|s| s.capabilities.as_ref())
                .and_then(|c| c.drop.as_deref())
                .unwrap_or_default(),
        )
    };
    let mut mounts = Vec::new();
    let volume_names: BTreeSet<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    for mount in container.volume_mounts.iter().flatten() {
        if !volume_names.contains(mount.name.as_str()) {
            return Err(SpecError::NoSuchVolume(mount.name.clone()));
        }
        if mount.sub_path.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(SpecError::Unsupported("volumeMounts[].subPath".into()));
        }
        mounts.push(MountPlan {
            volume: mount.name.clone(),
            target: PathBuf::from(&mount.mount_path),
            read_only: mount.read_only == Some(true),
        });
    }
    let probe_host = facts.pod_ips.first().cloned().unwrap_or_default();
    Ok(ContainerPlan {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        program,
        args: words,
        env,
        uid: u32::try_from(uid).map_err(|_| SpecError::Unsupported(format!("runAsUser {uid}")))?,
        gid: u32::try_from(gid).map_err(|_| SpecError::Unsupported(format!("runAsGroup {gid}")))?,
        capabilities,
        no_new_privs: security.and_then(|s| s.allow_privilege_escalation) == Some(false),
        read_only_root: security.and_then(|s| s.read_only_root_filesystem) == Some(true),
        mounts,
        readiness: container
            .readiness_probe
            .as_ref()
            .map(|p| http_probe(p, container, &probe_host))
            .transpose()?,
        liveness: container
            .liveness_probe
            .as_ref()
            .map(|p| http_probe(p, container, &probe_host))
            .transpose()?,
    })
}

/// The runtime's default set, minus `drop` (`ALL` drops everything), plus `add`.
pub fn effective_capabilities(add: &[String], drop: &[String]) -> BTreeSet<String> {
    let normal = |c: &String| c.trim_start_matches("CAP_").to_ascii_uppercase();
    let drop: BTreeSet<String> = drop.iter().map(normal).collect();
    let mut caps: BTreeSet<String> = if drop.contains("ALL") {
        BTreeSet::new()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    caps.extend(add.iter().map(normal));
    caps
}

/// The container's environment in the kubelet's order: its defaults, the API server's
/// service variables, `envFrom`, then `env` (later values win; `$(VAR)` expands to what is
/// defined before it).
fn environment(
    pod: &Pod,
    container: &Container,
    facts: &PodFacts,
    refs: &References,
) -> Result<Vec<(String, String)>, SpecError> {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let hostname = if host_network {
        facts.node_name.clone()
    } else {
        pod.metadata.name.clone().unwrap_or_default()
    };
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOSTNAME".into(), hostname),
        // A container's HOME comes from its image's passwd; the lab's images set none.
        ("HOME".into(), "/".into()),
        ("KUBERNETES_SERVICE_HOST".into(), facts.api_host.clone()),
        ("KUBERNETES_SERVICE_PORT".into(), facts.api_port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), facts.api_port.to_string()),
        (
            "KUBERNETES_PORT".into(),
            format!("tcp://{}", socket(&facts.api_host, facts.api_port)),
        ),
    ];
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(k, _)| *k != name);
        env.push((name, value));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, kind, name, optional) = if let Some(s) = &from.secret_ref {
            (refs.secrets.get(&s.name), "secret", s.name.clone(), s.optional)
        } else if let Some(c) = &from.config_map_ref {
            (refs.config_maps.get(&c.name), "configMap", c.name.clone(), c.optional)
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (key, value) in data {
                    set(&mut env, format!("{prefix}{key}"), value.clone());
                }
            }
            None if optional == Some(true) => {}
            None => {
                return Err(SpecError::Env {
                    var: format!("envFrom {kind}"),
                    problem: format!("{kind} {name:?} not found"),
                });
            }
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = env_value(pod, var, facts, refs, &env)? {
            set(&mut env, var.name.clone(), value);
        }
    }
    Ok(env)
}

fn socket(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One `env` entry's value; None for an optional reference that is missing.
fn env_value(
    pod: &Pod,
    var: &EnvVar,
    facts: &PodFacts,
    refs: &References,
    defined: &[(String, String)],
) -> Result<Option<String>, SpecError> {
    let Some(from) = &var.value_from else {
        return Ok(Some(expand(var.value.as_deref().unwrap_or_default(), defined)));
    };
    let missing = |problem: String| SpecError::Env {
        var: var.name.clone(),
        problem,
    };
    if let Some(field) = &from.field_ref {
        return field_value(pod, facts, &field.field_path)
            .map(Some)
            .map_err(|e| missing(e.to_string()));
    }
    let (data, kind, name, key, optional) = if let Some(s) = &from.secret_key_ref {
        (refs.secrets.get(&s.name), "secret", &s.name, &s.key, s.optional)
    } else if let Some(c) = &from.config_map_key_ref {
        (refs.config_maps.get(&c.name), "configMap", &c.name, &c.key, c.optional)
    } else {
        return Err(SpecError::Unsupported(format!(
            "env {} from resourceFieldRef or fileKeyRef",
            var.name
        )));
    };
    match data.and_then(|d| d.get(key)) {
        Some(value) => Ok(Some(value.clone())),
        None if optional == Some(true) => Ok(None),
        None if data.is_none() => Err(missing(format!("{kind} {name:?} not found"))),
        None => Err(missing(format!("{kind} {name:?} has no key {key:?}"))),
    }
}

/// A downward-API field of the Pod.
fn field_value(pod: &Pod, facts: &PodFacts, path: &str) -> Result<String, SpecError> {
    let meta = &pod.metadata;
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => facts.host_ips.first().cloned().unwrap_or_default(),
        "status.hostIPs" => facts.host_ips.join(","),
        "status.podIP" => facts.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => facts.pod_ips.join(","),
        _ => keyed("metadata.labels['", meta.labels.as_ref())
            .or_else(|| keyed("metadata.annotations['", meta.annotations.as_ref()))
            .ok_or_else(|| SpecError::Unsupported(format!("fieldRef {path:?}")))?,
    };
    Ok(value)
}

/// `$(NAME)` → NAME's value if defined (else left as is); `$$` → `$`.
pub fn expand(text: &str, defined: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match defined.iter().rev().find(|(k, _)| k == name) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn http_probe(probe: &Probe, container: &Container, host: &str) -> Result<HttpProbe, SpecError> {
    let get = probe
        .http_get
        .as_ref()
        .ok_or_else(|| SpecError::Unsupported("probes other than httpGet".into()))?;
    let port = match &get.port {
        IntOrString::Int(port) => {
            u16::try_from(*port).map_err(|_| SpecError::Unsupported(format!("probe port {port}")))?
        }
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| SpecError::Unsupported(format!("probe port {name:?}: no such named port")))?,
    };
    if get.scheme.as_deref().is_some_and(|s| s != "HTTP") {
        return Err(SpecError::Unsupported("HTTPS probes".into()));
    }
    let host = get.host.clone().unwrap_or_else(|| host.to_string());
    let path = get.path.clone().unwrap_or_else(|| "/".into());
    let seconds = |v: Option<i32>, default: u64| Duration::from_secs(v.map_or(default, |s| s.max(0) as u64));
    Ok(HttpProbe {
        url: format!("http://{}{path}", socket(&host, port)),
        initial_delay: seconds(probe.initial_delay_seconds, 0),
        period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
        failure_threshold: probe.failure_threshold.map_or(3, |v| v.max(1) as u32),
        success_threshold: probe.success_threshold.map_or(1, |v| v.max(1) as u32),
    })
}

/// The `setpriv` arguments that give a process exactly `plan`'s user and capabilities
/// (bounding, inheritable and ambient sets all equal to them, so a non-root user keeps them
/// across exec and root gets no more).
pub fn setpriv_args(plan: &ContainerPlan) -> Vec<String> {
    let caps = if plan.capabilities.contains("ALL") {
        "+all".to_string()
    } else {
        std::iter::once("-all".to_string())
            .chain(plan.capabilities.iter().map(|c| format!("+{}", c.to_ascii_lowercase())))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut args = vec![
        format!("--reuid={}", plan.uid),
        format!("--regid={}", plan.gid),
        "--clear-groups".to_string(),
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
        format!("--bounding-set={caps}"),
    ];
    if plan.no_new_privs {
        args.push("--no-new-privs".into());
    }
    args
}

/// Where a `hostPath` of `node` is in the lab: `/sys/fs/bpf` is the lab's bpf filesystem
/// (the nodes share the machine's kernel, as they share its bpffs); any other path is
/// private to the node under `node_root`.
pub fn host_path(path: &Path, node_root: &Path, bpffs: &Path) -> PathBuf {
    if path == Path::new("/sys/fs/bpf") {
        return bpffs.to_path_buf();
    }
    if let Ok(under) = path.strip_prefix("/sys/fs/bpf") {
        return bpffs.join(under);
    }
    node_root.join(path.strip_prefix("/").unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn images() -> Images {
        Images {
            programs: BTreeMap::from([(
                "herald".to_string(),
                BTreeMap::from([(
                    "/usr/local/bin/herald-speaker".to_string(),
                    PathBuf::from("/build/herald-speaker"),
                )]),
            )]),
        }
    }

    fn facts() -> PodFacts {
        PodFacts {
            node_name: "node2".into(),
            host_ips: vec!["10.203.0.12".into(), "fd00:203::12".into()],
            pod_ips: vec!["10.203.0.12".into(), "fd00:203::12".into()],
            api_host: "10.203.0.1".into(),
            api_port: 6443,
        }
    }

    fn pod(container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "herald-speaker-x7k2p", "namespace": "herald-system",
                         "labels": {"app": "speaker"}},
            "spec": {
                "nodeName": "node2", "hostNetwork": true, "serviceAccountName": "herald-speaker",
                "volumes": [
                    {"name": "bpf", "hostPath": {"path": "/sys/fs/bpf"}},
                    {"name": "kube-api-access-abcde", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
                    ]}}
                ],
                "containers": [container],
            }
        }))
        .unwrap()
    }

    fn speaker() -> serde_json::Value {
        json!({
            "name": "speaker", "image": "registry.example/herald:0.1.0",
            "command": ["/usr/local/bin/herald-speaker"], "args": ["--node-name=$(NODE)", "$$(NODE)"],
            "env": [
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "auth", "key": "key"}}},
                {"name": "GREETING", "value": "on $(NODE) at $(UNDEFINED)"}
            ],
            "ports": [{"name": "metrics", "containerPort": 7473}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
            "volumeMounts": [
                {"name": "bpf", "mountPath": "/sys/fs/bpf"},
                {"name": "kube-api-access-abcde", "mountPath": SERVICE_ACCOUNT_MOUNT, "readOnly": true}
            ],
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN", "BPF"]}}
        })
    }

    fn refs() -> References {
        References {
            secrets: BTreeMap::from([("auth".into(), BTreeMap::from([("key".into(), "s3cret".into())]))]),
            config_maps: BTreeMap::from([(
                "kube-root-ca.crt".into(),
                BTreeMap::from([("ca.crt".into(), "PEM".into())]),
            )]),
        }
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_speaker_pod_becomes_the_process_the_kubelet_runs() {
        let plan = container_plan(&pod(speaker()), &facts(), &refs(), &images()).unwrap();
        assert_eq!(plan.program, PathBuf::from("/build/herald-speaker"));
        assert_eq!(plan.args, ["--node-name=node2", "$(NODE)"]);
        let env = &plan.env;
        assert_eq!(get(env, "NODE"), Some("node2"));
        assert_eq!(get(env, "POD_IP"), Some("10.203.0.12"));
        assert_eq!(get(env, "APP"), Some("speaker"));
        assert_eq!(get(env, "KEY"), Some("s3cret"));
        assert_eq!(get(env, "GREETING"), Some("on node2 at $(UNDEFINED)"));
        assert_eq!(get(env, "KUBERNETES_SERVICE_HOST"), Some("10.203.0.1"));
        assert_eq!(get(env, "KUBERNETES_SERVICE_PORT"), Some("6443"));
        assert_eq!(
            get(env, "HOSTNAME"),
            Some("node2"),
            "hostNetwork pods take the node's name"
        );
        assert_eq!((plan.uid, plan.gid), (0, 0));
        let caps: Vec<&str> = plan.capabilities.iter().map(String::as_str).collect();
        assert_eq!(caps, ["BPF", "NET_ADMIN", "NET_RAW"]);
        assert!(plan.no_new_privs && plan.read_only_root);
        assert_eq!(plan.readiness.as_ref().unwrap().url, "http://10.203.0.12:7473/readyz");
        assert_eq!(plan.readiness.as_ref().unwrap().period, Duration::from_secs(5));
        assert_eq!(plan.readiness.as_ref().unwrap().failure_threshold, 3);
        assert!(plan.liveness.is_none());
        assert_eq!(plan.mounts.len(), 2);
        assert!(plan.mounts[1].read_only);
        assert_eq!(
            setpriv_args(&plan),
            [
                "--reuid=0",
                "--regid=0",
                "--clear-groups",
                "--inh-caps=-all,+bpf,+net_admin,+net_raw",
                "--ambient-caps=-all,+bpf,+net_admin,+net_raw",
                "--bounding-set=-all,+bpf,+net_admin,+net_raw",
                "--no-new-privs"
            ]
        );
    }

    #[test]
    fn the_service_account_volume_is_projected_as_the_api_server_injected_it() {
        let volumes = volumes(&pod(speaker()), &facts(), &refs()).unwrap();
        assert_eq!(volumes["bpf"], VolumeSource::HostPath("/sys/fs/bpf".into()));
        let VolumeSource::Files(files) = &volumes["kube-api-access-abcde"] else {
            panic!("projected")
        };
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["token", "ca.crt", "namespace"]);
        assert_eq!(
            files[0].content,
            FileContent::Token {
                audience: None,
                expiration_seconds: 3607
            }
        );
        assert_eq!(files[1].content, FileContent::Literal("PEM".into()));
        assert_eq!(files[2].content, FileContent::Literal("herald-system".into()));
        let (secrets, config_maps) = referenced_objects(&pod(speaker()));
        assert_eq!(secrets, BTreeSet::from(["auth".to_string()]));
        assert_eq!(config_maps, BTreeSet::from(["kube-root-ca.crt".to_string()]));
    }

    #[test]
    fn what_the_lab_cannot_honour_is_an_error_not_ignored() {
        let mut c = speaker();
        c["image"] = json!("nginx:1.27");
        assert_eq!(
            container_plan(&pod(c), &facts(), &refs(), &images()),
            Err(SpecError::UnknownImage("nginx:1.27".into()))
        );
        let mut c = speaker();
        c["env"][3]["valueFrom"]["secretKeyRef"]["key"] = json!("other");
        let err = container_plan(&pod(c), &facts(), &refs(), &images()).unwrap_err();
        assert_eq!(err.to_string(), "env KEY: secret \"auth\" has no key \"other\"");
        let mut c = speaker();
        c["env"][3]["valueFrom"]["secretKeyRef"]["optional"] = json!(true);
        c["env"][3]["valueFrom"]["secretKeyRef"]["name"] = json!("absent");
        let plan = container_plan(&pod(c), &facts(), &refs(), &images()).unwrap();
        assert_eq!(get(&plan.env, "KEY"), None, "a missing optional key sets nothing");
        let mut c = speaker();
        c["securityContext"]["runAsNonRoot"] = json!(true);
        assert_eq!(
            container_plan(&pod(c), &facts(), &refs(), &images()),
            Err(SpecError::RootForbidden)
        );
        let mut c = speaker();
        c["readinessProbe"] = json!({"exec": {"command": ["true"]}});
        assert!(matches!(
            container_plan(&pod(c), &facts(), &refs(), &images()),
            Err(SpecError::Unsupported(_))
        ));
    }

    #[test]
    fn capabilities_follow_the_runtime_default_add_and_drop() {
        let none: Vec<String> = Vec::new();
        assert_eq!(effective_capabilities(&none, &none).len(), DEFAULT_CAPABILITIES.len());
        let dropped = effective_capabilities(&none, &["NET_RAW".into(), "CAP_KILL".into()]);
        assert!(!dropped.contains("NET_RAW") && !dropped.contains("KILL") && dropped.contains("CHOWN"));
        assert!(effective_capabilities(&none, &["ALL".into()]).is_empty());
        let mut c = speaker();
        c["securityContext"] = json!({"runAsUser": 65534});
        let plan = container_plan(&pod(c), &facts(), &refs(), &images()).unwrap();
        assert_eq!((plan.uid, plan.gid), (65534, 65534));
        assert!(setpriv_args(&plan)[3].contains("+net_bind_service"));
        assert!(!setpriv_args(&plan).contains(&"--no-new-privs".to_string()));
    }

    #[test]
    fn expansion_is_the_kubelets() {
        let defined = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("x$(A)y", &defined), "x1y");
        assert_eq!(expand("$$(A)", &defined), "$(A)");
        assert_eq!(expand("$(B) $", &defined), "$(B) $");
        assert_eq!(expand("$(A", &defined), "$(A");
    }

    #[test]
    fn host_paths_map_into_the_node() {
        let (root, bpf) = (Path::new("/run/lab/nodes/node1"), Path::new("/run/lab/bpf"));
        assert_eq!(host_path(Path::new("/sys/fs/bpf"), root, bpf), bpf);
        assert_eq!(
            host_path(Path::new("/sys/fs/bpf/herald"), root, bpf),
            bpf.join("herald")
        );
        assert_eq!(
            host_path(Path::new("/var/lib/x"), root, bpf),
            PathBuf::from("/run/lab/nodes/node1/var/lib/x")
        );
        assert_eq!(image_repository("r.io:5000/team/herald:1@sha256:ab"), "herald");
    }
}
