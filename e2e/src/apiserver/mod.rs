//! An in-memory stand-in for kube-apiserver, faithful where Herald's binaries (kube-rs)
//! and `kubectl` can tell the difference: discovery, CRUD, watch with resumption and
//! 410 Gone, merge/JSON/strategic patches, server-side apply, CRDs served at once,
//! Table output, Service IP/port allocation and EndpointSlices. Test and demo
//! infrastructure only.
//!
//! # Starting one
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use herald_e2e::apiserver::{ApiServer, ApiServerConfig};
//! let server = ApiServer::start(ApiServerConfig::local()).await?; // 127.0.0.1:0
//! server.write_kubeconfig(std::path::Path::new("/tmp/lab.kubeconfig"))?;
//! let client: kube::Client = server.client().await?;
//! // ... drive Herald or kubectl ...
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Where it differs from kube-apiserver
//! - Plain HTTP only. client-go (so kubectl) sends bearer tokens only over TLS, so a
//!   configured token is for kube-rs clients; kubectl works against a token-less server.
//! - No authorization or admission: RBAC objects are stored, not enforced.
//! - CRD schemas: pruning, defaulting, types, `required`, `enum`, numeric/length/item
//!   bounds; not `pattern`, `format` or CEL rules; no conversion between CRD versions.
//! - Built-in kinds are decoded through k8s-openapi types (400 on type errors, unknown
//!   fields warned or refused per `fieldValidation`), but validated only where Herald
//!   cares: names, labels, Services (ports, IPs, node ports, families, status ingress), CRDs.
//! - Server-side apply tracks ownership per leaf path with lists atomic (a list the live
//!   object already satisfies does not conflict); no associative-list keys in managedFields.
//! - Strategic merge patch knows the merge keys of a table of built-in list fields;
//!   other lists are replaced.
//! - Lists read the current state (not a snapshot at the list's version); continue
//!   tokens resume by key. A watch from a version newer than the server's gets 410 (not
//!   504) so clients of a server restarted without its state file relist.
//! - No kubelet or workload controllers: Pods without finalizers are deleted at once,
//!   Deployments/DaemonSets are only stored; namespace deletion is immediate.
//!   Garbage collection follows ownerReferences on delete (Background, Foreground done
//!   synchronously, Orphan).
//! - `/openapi/v3` publishes operations and parameters, not schemas (enough for kubectl's
//!   server-side field validation; `kubectl explain` does not work); no `/openapi/v2`,
//!   no protobuf, no aggregated discovery (kubectl falls back to the legacy documents).
//! - Request bodies are JSON or YAML, plus protobuf for the v1 ConfigMap, Secret,
//!   Namespace and Service that kubectl's typed `create` commands send; other protobuf
//!   bodies (e.g. `kubectl create deployment`) get 415. Responses are always JSON.
//! - Cluster IPs and node ports are allocated first-free rather than at random.
//!
//! # Layout
//! `store` (objects, versions, history, fan-out), `registry` (kinds, discovery, OpenAPI
//! index), `handlers` (verbs), `delete` (deletion, finalizers, GC), `endpoint_slices` (slice
//! reconciliation), `watch` (watch streams), `patch` and `apply` (patch
//! strategies and field ownership), `schema` (CRD structural schemas), `builtin` (typed
//! decoding of built-in kinds), `protobuf` (kubectl's typed-client bodies), `events` (events.k8s.io ⇄ core Events), `controllers`
//! (what kube-apiserver/controller-manager compute), `selectors`, `table`, `status`
//! (errors), `kubeconfig`.

mod apply;
mod builtin;
mod controllers;
mod delete;
mod endpoint_slices;
mod events;
mod handlers;
mod kubeconfig;
mod patch;
mod protobuf;
mod registry;
mod schema;
mod selectors;
mod status;
mod store;
mod table;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use serde_json::{Value, json};
use tokio::sync::watch as signal;

pub use controllers::ServiceNetwork;
pub use kubeconfig::{CONTEXT_NAME, kubeconfig_yaml};
pub use status::ApiError;

use registry::{GroupResource, Registry};
use store::Store;

/// Namespaces that exist when a fresh server starts.
pub const INITIAL_NAMESPACES: &[&str] = &[
    "default",
    "kube-system",
    "herald-system",
    "kube-public",
    "kube-node-lease",
];

/// How to run a lab API server.
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Bearer token clients must present; None accepts everyone. Note: client-go (so
    /// kubectl) sends bearer tokens only over TLS, and this server speaks plain HTTP, so a
    /// token locks kubectl out; kube-rs clients send it.
    pub token: Option<String>,
    /// File to load objects from at start and save them to (debounced, and at shutdown).
    pub state_file: Option<PathBuf>,
    /// How many changes are kept for watches that resume; older versions get 410 Gone.
    pub history_limit: usize,
    /// Interval of BOOKMARK events for watches that allow them.
    pub bookmark_interval: Duration,
    /// Service CIDRs and node port range.
    pub network: ServiceNetwork,
}

impl ApiServerConfig {
    /// 127.0.0.1 on a free port, no token, no state file, default windows.
    pub fn local() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
            state_file: None,
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(5),
            network: ServiceNetwork::default(),
        }
    }
}

/// Errors starting or stopping the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Could not bind the listen address.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state file exists but cannot be read or parsed.
    #[error("cannot load state file {path}: {reason}")]
    LoadState {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing the kubeconfig failed.
    #[error("cannot write kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Building a kube-rs client failed.
    #[error("cannot build a client")]
    Client(#[source] kube::Error),
}

/// Shared server state.
pub(crate) struct Server {
    pub(crate) store: Store,
    registry: RwLock<Arc<Registry>>,
    token: Option<String>,
    pub(crate) network: ServiceNetwork,
    /// Serialises Service allocation and EndpointSlice reconciliation.
    pub(crate) controller_lock: tokio::sync::Mutex<()>,
    pub(crate) bookmark_interval: Duration,
    pub(crate) shutdown: signal::Receiver<bool>,
    /// Bumping it ends every open watch (clients resume from their last version).
    pub(crate) watch_epoch: signal::Sender<u64>,
    /// While true, new watches wait before reading the store (test hook).
    pub(crate) watches_paused: signal::Sender<bool>,
}

impl Server {
    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads CRDs from the store so their resources are served (or no longer).
    pub(crate) fn refresh_registry(&self) {
        let (crds, _) = self.store.list(
            &GroupResource::new("apiextensions.k8s.io", "customresourcedefinitions"),
            None,
        );
        let crds: Vec<Value> = crds.iter().map(|c| (**c).clone()).collect();
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Registry::new(&crds));
    }
}

/// Entry point: see [`ApiServer::start`].
pub struct ApiServer;

impl ApiServer {
    /// Starts serving in the background. Loads `state_file` if it exists; otherwise
    /// creates the initial namespaces.
    pub async fn start(config: ApiServerConfig) -> Result<RunningApiServer, ServerError> {
        let store = Store::new(config.history_limit);
        let mut restored = false;
        if let Some(path) = &config.state_file {
            match std::fs::read(path) {
                Ok(bytes) => {
                    let snapshot: store::Snapshot =
                        serde_json::from_slice(&bytes).map_err(|e| ServerError::LoadState {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                    store.restore(snapshot);
                    restored = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ServerError::LoadState {
                        path: path.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        let (shutdown_tx, shutdown_rx) = signal::channel(false);
        let server = Arc::new(Server {
            store,
            registry: RwLock::new(Arc::new(Registry::new(&[]))),
            token: config.token.clone(),
            network: config.network.clone(),
            controller_lock: tokio::sync::Mutex::new(()),
            bookmark_interval: config.bookmark_interval,
            shutdown: shutdown_rx,
            watch_epoch: signal::channel(0).0,
            watches_paused: signal::channel(false).0,
        });
        server.refresh_registry();
        if !restored {
            for ns in INITIAL_NAMESPACES {
                let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                handlers::create_internal(&server, "", "namespaces", body)
                    .await
                    .map_err(|e| ServerError::LoadState {
                        path: PathBuf::new(),
                        reason: e.to_string(),
                    })?;
            }
        }

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let app = Router::new().fallback(route).with_state(server.clone());
        let mut stop = server.shutdown.clone();
        let serve = tokio::spawn(async move {
            let graceful = async move { wait_until_set(&mut stop).await };
            if let Err(e) = axum::serve(listener.tap_io(disable_nagle), app)
                .with_graceful_shutdown(graceful)
                .await
            {
                tracing::error!(error = %e, "lab apiserver stopped with an error");
            }
        });
        let saver = config
            .state_file
            .clone()
            .map(|path| tokio::spawn(save_loop(server.clone(), path)));
        tracing::info!(%addr, "lab apiserver listening");
        Ok(RunningApiServer {
            addr,
            token: config.token,
            state_file: config.state_file,
            server,
            shutdown_tx,
            serve,
            saver,
        })
    }
}

/// Resolves once the flag is true (or its sender is gone).
pub(crate) async fn wait_until_set(flag: &mut signal::Receiver<bool>) {
    // The borrow guard returned by wait_for is not Send; drop it right here.
    let _ = flag.wait_for(|v| *v).await.map(|_| ());
}

/// Resolves once the flag is false (or its sender is gone).
pub(crate) async fn wait_until_clear(flag: &mut signal::Receiver<bool>) {
    let _ = flag.wait_for(|v| !*v).await.map(|_| ());
}

/// Watch events are small writes on a long-lived response: without TCP_NODELAY, Nagle's
/// algorithm holds them until the client's delayed ACK (up to ~40 ms).
fn disable_nagle(stream: &mut tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// Saves the store after changes, at most every 200 ms, until shutdown.
async fn save_loop(server: Arc<Server>, path: PathBuf) {
    let mut stop = server.shutdown.clone();
    loop {
        tokio::select! {
            _ = server.store.changed() => {}
            _ = wait_until_set(&mut stop) => return,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Err(e) = save_state(&server, &path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot save lab apiserver state");
        }
    }
}

fn save_state(server: &Server, path: &Path) -> std::io::Result<()> {
    let snapshot = server.store.snapshot();
    let bytes = serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// A server running in the background of the current tokio runtime.
///
/// Use [`addr`](Self::addr) / [`url`](Self::url) to reach it, [`write_kubeconfig`](Self::write_kubeconfig)
/// for kubectl and Herald's binaries, [`client`](Self::client) for in-process kube-rs, and
/// [`shutdown`](Self::shutdown) to stop it (saving state if configured). Dropping it
/// without `shutdown` leaves the server running until the runtime ends.
pub struct RunningApiServer {
    addr: SocketAddr,
    token: Option<String>,
    state_file: Option<PathBuf>,
    server: Arc<Server>,
    shutdown_tx: signal::Sender<bool>,
    serve: tokio::task::JoinHandle<()>,
    saver: Option<tokio::task::JoinHandle<()>>,
}

impl RunningApiServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server (with its token, if any).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), ServerError> {
        kubeconfig::write_kubeconfig(path, &self.url(), self.token.as_deref()).map_err(|source| {
            ServerError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// A kube-rs client for this server.
    pub async fn client(&self) -> Result<kube::Client, ServerError> {
        kubeconfig::client(&self.url(), self.token.as_deref())
            .await
            .map_err(ServerError::Client)
    }

    /// The current resourceVersion counter.
    pub fn resource_version(&self) -> u64 {
        self.server.store.current_rv()
    }

    /// Test hook: ends every open watch and forgets the change history, so clients that
    /// resume get 410 Gone and must relist (as after etcd compaction).
    pub fn expire_watches(&self) {
        self.server.store.compact();
        self.server.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Test hook: ends every open watch and makes new ones wait until
    /// [`resume_watches`](Self::resume_watches), so changes can pile up while clients are away.
    pub fn pause_watches(&self) {
        self.server.watches_paused.send_replace(true);
        self.server.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Test hook: lets watches through again.
    pub fn resume_watches(&self) {
        self.server.watches_paused.send_replace(false);
    }

    /// Test hook: forgets the change history without ending watches.
    pub fn compact_history(&self) {
        self.server.store.compact();
    }

    /// Stops serving, ends open watches, and saves state if configured.
    pub async fn shutdown(self) {
        self.shutdown_tx.send_replace(true);
        let _ = self.serve.await;
        if let Some(saver) = self.saver {
            let _ = saver.await;
        }
        if let Some(path) = &self.state_file
            && let Err(e) = save_state(&self.server, path)
        {
            tracing::warn!(error = %e, path = %path.display(), "cannot save lab apiserver state");
        }
    }
}

fn authorized(server: &Server, req: &Request) -> bool {
    let Some(token) = &server.token else {
        return true;
    };
    req.headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|given| given.trim() == token)
}

fn version_doc() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.0-herald-lab", "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc", "platform": "linux/amd64"
    })
}

/// Every request: authentication, then discovery or a resource request.
async fn route(State(server): State<Arc<Server>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if matches!(segments.as_slice(), ["healthz" | "readyz" | "livez"]) {
        return (StatusCode::OK, "ok").into_response();
    }
    if !authorized(&server, &req) {
        return ApiError::unauthorized().into_response();
    }
    let ok = |v: Value| status::json_response(StatusCode::OK, &v);
    let get_only = req.method() == Method::GET;
    let registry = server.registry();
    match segments.as_slice() {
        ["version"] if get_only => ok(version_doc()),
        ["api"] if get_only => ok(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or_default()}]}),
        ),
        ["api", "v1"] if get_only => registry
            .api_resource_list("", "v1")
            .map(ok)
            .unwrap_or_else(|| ApiError::path_not_found().into_response()),
        ["apis"] if get_only => ok(registry.api_group_list()),
        ["apis", group] if get_only => registry
            .api_group(group)
            .map(ok)
            .unwrap_or_else(|| ApiError::path_not_found().into_response()),
        ["apis", group, version] if get_only => registry
            .api_resource_list(group, version)
            .map(ok)
            .unwrap_or_else(|| ApiError::path_not_found().into_response()),
        ["openapi", "v3"] if get_only => ok(registry.openapi_v3_root()),
        ["openapi", "v3", "api", version] if get_only => registry
            .openapi_v3_group_version("", version)
            .map(ok)
            .unwrap_or_else(|| ApiError::path_not_found().into_response()),
        ["openapi", "v3", "apis", group, version] if get_only => registry
            .openapi_v3_group_version(group, version)
            .map(ok)
            .unwrap_or_else(|| ApiError::path_not_found().into_response()),
        ["api", "v1", rest @ ..] if !rest.is_empty() => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            handlers::resource_request(server.clone(), "", "v1", rest, req).await
        }
        ["apis", group, version, rest @ ..] if !rest.is_empty() => {
            let (group, version) = (group.to_string(), version.to_string());
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            handlers::resource_request(server.clone(), &group, &version, rest, req).await
        }
        ["version" | "api" | "apis", ..] => ApiError::method_not_allowed(req.method().as_str()).into_response(),
        _ => ApiError::path_not_found().into_response(),
    }
}
