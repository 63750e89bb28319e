//! The speaker's HTTP endpoints: `/metrics`, `/healthz` (the election loop is turning) and
//! `/readyz` (watches synced, peers authenticated, announcer running, state settled).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The registry `/metrics` serves: every name it holds is exported with the prefix `herald_`,
/// so what registers into it names metrics without that prefix. Tests encode through this
/// same constructor, so they see the names a scrape sees.
pub fn metrics_registry() -> Registry {
    Registry::with_prefix("herald")
}

/// Facts the endpoints report, updated by the election loop.
#[derive(Default)]
pub struct Health {
    /// Unix seconds of the loop's last pass (it passes at least once a second).
    pub last_pass: AtomicU64,
    pub cluster_synced: AtomicBool,
    pub key_loaded: AtomicBool,
    pub announcer_ready: AtomicBool,
    pub membership_settled: AtomicBool,
    /// Why the speaker runs announce-only; `None` while the dataplane runs.
    announce_only: std::sync::Mutex<Option<String>>,
}

impl Health {
    pub fn mark_pass(&self) {
        self.last_pass.store(unix_now(), Ordering::SeqCst);
    }

    pub fn set_dataplane(&self, state: Result<(), String>) {
        *self.announce_only.lock().unwrap_or_else(|e| e.into_inner()) = state.err();
    }

    /// A note for `/readyz` when the speaker forwards nothing itself.
    pub fn dataplane_note(&self) -> Option<String> {
        let why = self.announce_only.lock().unwrap_or_else(|e| e.into_inner());
        why.as_ref()
            .map(|why| format!("announce-only: eBPF dataplane not running ({why})"))
    }

    /// Every reason the speaker is not ready, empty when it is.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        for (flag, reason) in [
            (&self.key_loaded, "the speakers' shared key is not loaded"),
            (&self.cluster_synced, "Kubernetes watches have not synced"),
            (&self.announcer_ready, "the ARP/NDP announcer is not running"),
            (
                &self.membership_settled,
                "the first state exchange with peers has not finished",
            ),
        ] {
            if !flag.load(Ordering::SeqCst) {
                reasons.push(reason);
            }
        }
        reasons
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct AppState {
    health: Arc<Health>,
    registry: Arc<OnceLock<Registry>>,
}

/// Serves on a bound listener until it fails. Runs from the speaker's first moment, so probes
/// see it waiting (healthy, not ready) rather than absent; `/metrics` is empty until `registry`
/// is set once every part has registered its metrics.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    registry: Arc<OnceLock<Registry>>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(AppState { health, registry }));
    axum::serve(listener, app).await
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut out = String::new();
    if let Some(registry) = state.registry.get() {
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}

async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let age = unix_now().saturating_sub(state.health.last_pass.load(Ordering::SeqCst));
    if age <= 5 {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the election loop has not run for {age}s\n"),
        )
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let reasons = state.health.not_ready();
    if reasons.is_empty() {
        match state.health.dataplane_note() {
            None => (StatusCode::OK, "ok\n".to_string()),
            Some(note) => (StatusCode::OK, format!("ok; {note}\n")),
        }
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
    }
}
