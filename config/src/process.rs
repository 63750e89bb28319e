//! What herald-controller and herald-speaker do alike as processes (feature `process`): the
//! runtime around their work, logging (`HERALD_LOG`, `--log-format`), the shutdown signal, error
//! reports, and the `/metrics`, `/healthz`, `/readyz` server whose answers each binary gives
//! through [`Probes`].

use std::collections::HashMap;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, Id, JoinSet};
use tracing_subscriber::EnvFilter;

/// The environment variable with the log filter (`tracing` directives; default `info`).
pub const LOG_FILTER_ENV: &str = "HERALD_LOG";

/// How log lines are written (`--log-format`, `HERALD_LOG_FORMAT`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global logger: the filter from [`LOG_FILTER_ENV`], lines in `format`.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env(LOG_FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
}

/// Runs `work` on a multi-threaded runtime and returns its exit code. Background tasks
/// (watches, servers) end with the process instead of being waited for.
pub fn run_to_exit<F: Future<Output = ExitCode>>(program: &str, work: impl FnOnce() -> F) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(work());
    tracing::info!("exiting");
    runtime.shutdown_background();
    code
}

/// Completes on SIGTERM (what the kubelet sends) or Ctrl-C. A handler that cannot be
/// installed is logged and never fires (before, a failed Ctrl-C handler ended this at once: the
/// process stopped as soon as it started).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {},
                () = ctrl_c() => {},
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGTERM; only Ctrl-C stops this process gracefully");
            ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}

/// Completes on Ctrl-C; never, if its handler cannot be installed.
async fn ctrl_c() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %e, "cannot handle Ctrl-C");
        std::future::pending::<()>().await;
    }
}

/// An error and its causes on one line, `outer: cause: root cause`. Herald's error types do
/// not repeat their source in their message, so each cause appears once.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The tasks a process runs for as long as it runs (watches, servers, writers), by name. None
/// of them is meant to end on its own: [`Tasks::ended`] says which one did, so the process
/// stops with that error (and is restarted) instead of running on without, say, its pool
/// watch. Dropping it aborts them all.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

/// A task of a [`Tasks`] set returned or panicked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {task} task {}", if *.panicked { "panicked" } else { "ended" })]
pub struct TaskEnded {
    pub task: &'static str,
    pub panicked: bool,
}

impl Tasks {
    /// Runs `task` under `name` (the name errors and logs give it); the handle aborts it.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) -> AbortHandle {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
        handle
    }

    /// Completes when one of the tasks has ended, naming it; never, while there are none.
    /// Cancel-safe: usable as a `select!` branch.
    pub async fn ended(&mut self) -> TaskEnded {
        let Some(result) = self.set.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, panicked) = match result {
            Ok((id, ())) => (id, false),
            Err(e) => (e.id(), e.is_panic()),
        };
        TaskEnded {
            task: self.names.remove(&id).unwrap_or("unnamed"),
            panicked,
        }
    }
}

/// The registry `/metrics` serves: every name it holds is exported with the prefix `herald_`,
/// so what registers into it names metrics without that prefix.
pub fn metrics_registry() -> Registry {
    Registry::with_prefix("herald")
}

/// `registry` in the text format `/metrics` serves. An encoding error is logged and the scrape
/// gets what was written before it.
pub fn encode_metrics(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "encoding the metrics failed; the scrape gets what was written");
    }
    out
}

/// The answers of a process's HTTP endpoints. `Ok` is served with 200, `Err` with 503; the
/// text is the body (a newline is added).
pub trait Probes: Send + Sync + 'static {
    /// The Prometheus exposition (OpenMetrics text).
    fn metrics(&self) -> String;
    /// Whether the process should be restarted (`Err`: yes, and why).
    fn healthz(&self) -> impl Future<Output = Result<String, String>> + Send;
    /// Whether the process should get traffic and be counted as available (`Err`: why not).
    fn readyz(&self) -> impl Future<Output = Result<String, String>> + Send;
}

/// The address `/metrics`, `/healthz` and `/readyz` were to be served on could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding {addr} for /metrics, /healthz and /readyz")]
pub struct BindError {
    pub addr: std::net::SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` for [`serve_probes`]: done first, so a taken port fails the start instead of
/// a task later.
pub async fn bind_probes(addr: std::net::SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serves `/metrics`, `/healthz` and `/readyz` on a bound listener until it fails.
pub async fn serve_probes<P: Probes>(listener: TcpListener, probes: Arc<P>) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    let app = Router::new()
        .route("/metrics", get(metrics::<P>))
        .route("/healthz", get(healthz::<P>))
        .route("/readyz", get(readyz::<P>))
        .with_state(probes);
    axum::serve(listener, app).await
}

async fn metrics<P: Probes>(State(probes): State<Arc<P>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        probes.metrics(),
    )
}

async fn healthz<P: Probes>(State(probes): State<Arc<P>>) -> impl IntoResponse {
    answer(probes.healthz().await)
}

async fn readyz<P: Probes>(State(probes): State<Arc<P>>) -> impl IntoResponse {
    answer(probes.readyz().await)
}

fn answer(result: Result<String, String>) -> (StatusCode, String) {
    match result {
        Ok(text) => (StatusCode::OK, format!("{text}\n")),
        Err(text) => (StatusCode::SERVICE_UNAVAILABLE, format!("{text}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("starting the announcer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_names_each_cause_once() {
        let error = Outer(std::io::Error::other("permission denied"));
        assert_eq!(error_chain(&error), "starting the announcer: permission denied");
    }

    #[tokio::test]
    async fn tasks_name_the_one_that_ended_or_panicked() {
        let mut tasks = Tasks::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("pool watch", async {});
        assert_eq!(
            tasks.ended().await,
            TaskEnded {
                task: "pool watch",
                panicked: false
            }
        );
        tasks.spawn("status writer", async { panic!("poisoned lock") });
        let ended = tasks.ended().await;
        assert_eq!(ended.to_string(), "the status writer task panicked");
        // Only the endless one is left: nothing more ends.
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), tasks.ended()).await;
        assert!(waited.is_err(), "{waited:?}");
    }

    #[tokio::test]
    async fn no_tasks_never_end() {
        let mut tasks = Tasks::default();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), tasks.ended()).await;
        assert!(waited.is_err());
    }

    struct Fixed {
        ready: bool,
    }

    impl Probes for Fixed {
        fn metrics(&self) -> String {
            "# EOF\n".to_string()
        }
        async fn healthz(&self) -> Result<String, String> {
            Ok("ok".to_string())
        }
        async fn readyz(&self) -> Result<String, String> {
            if self.ready {
                Ok("ok".into())
            } else {
                Err("not ready: watches have not synced".into())
            }
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let status = response[9..12].parse().expect("status code");
        let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn probes_answer_with_their_status_and_text() {
        for ready in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let server = tokio::spawn(serve_probes(listener, Arc::new(Fixed { ready })));
            assert_eq!(get(addr, "/healthz").await.0, 200);
            let (status, _, body) = get(addr, "/readyz").await;
            if ready {
                assert_eq!((status, body.as_str()), (200, "ok\n"));
            } else {
                assert_eq!((status, body.as_str()), (503, "not ready: watches have not synced\n"));
            }
            let (status, head, body) = get(addr, "/metrics").await;
            assert_eq!(status, 200);
            assert!(head.contains("content-type: application/openmetrics-text"), "{head}");
            assert_eq!(body, "# EOF\n");
            assert_eq!(get(addr, "/nothing").await.0, 404);
            server.abort();
        }
    }
}
