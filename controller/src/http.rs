//! The HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the reconcile loop is running)
//! and `/readyz` (state rebuilt from the cluster and the API server answering; the body says
//! `leader` or `standby`: a healthy standby is ready, it is what takes over).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::leader::Leadership;
use crate::metrics::Metrics;

/// What the health endpoints look at.
pub struct Health {
    /// Set once the allocator has been rebuilt from every Service's status.
    pub rebuilt: AtomicBool,
    /// Cleared when the Service reconcile loop ends.
    pub reconciling: AtomicBool,
    client: Client,
    leadership: Arc<Leadership>,
    /// Last API check, so probes do not hammer the API server.
    last_api_check: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Health {
    pub fn new(client: Client, leadership: Arc<Leadership>) -> Self {
        Health {
            rebuilt: AtomicBool::new(false),
            reconciling: AtomicBool::new(false),
            client,
            leadership,
            last_api_check: Mutex::new(None),
        }
    }

    async fn api_reachable(&self) -> Result<(), String> {
        let mut last = self.last_api_check.lock().await;
        if let Some((at, result)) = &*last
            && at.elapsed() < Duration::from_secs(5)
        {
            return result.clone();
        }
        let result = match tokio::time::timeout(Duration::from_secs(2), self.client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("API server error: {e}")),
            Err(_) => Err("API server did not answer within 2s".to_string()),
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }
}

struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// Serves on a bound listener until it fails.
pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Arc<Metrics>) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(AppState { health, metrics }));
    axum::serve(listener, app).await
}

async fn metrics_handler(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.health.reconciling.load(Ordering::SeqCst) || !state.health.rebuilt.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the Service reconcile loop has stopped\n".to_string(),
        )
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if !state.health.rebuilt.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: still rebuilding allocations from existing Services\n".to_string(),
        );
    }
    match state.health.api_reachable().await {
        Ok(()) => (StatusCode::OK, format!("ok: {}\n", state.health.leadership.role())),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}
