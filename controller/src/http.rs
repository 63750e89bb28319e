//! The HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the reconcile loop is running)
//! and `/readyz` (state rebuilt from the cluster and the API server answering; the body says
//! `leader` or `standby`: a healthy standby is ready, it is what takes over).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald_config::process::Probes;
use kube::Client;
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
    metrics: Arc<Metrics>,
    /// Last API check, so probes do not hammer the API server.
    last_api_check: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Health {
    pub fn new(client: Client, leadership: Arc<Leadership>, metrics: Arc<Metrics>) -> Self {
        Health {
            rebuilt: AtomicBool::new(false),
            reconciling: AtomicBool::new(false),
            client,
            leadership,
            metrics,
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

impl Probes for Health {
    fn metrics(&self) -> String {
        self.metrics.encode()
    }

    async fn healthz(&self) -> Result<String, String> {
        if self.reconciling.load(Ordering::SeqCst) || !self.rebuilt.load(Ordering::SeqCst) {
            Ok("ok".to_string())
        } else {
            Err("the Service reconcile loop has stopped".to_string())
        }
    }

    async fn readyz(&self) -> Result<String, String> {
        if !self.rebuilt.load(Ordering::SeqCst) {
            return Err("not ready: still rebuilding allocations from existing Services".to_string());
        }
        match self.api_reachable().await {
            Ok(()) => Ok(format!("ok: {}", self.leadership.role())),
            Err(e) => Err(format!("not ready: {e}")),
        }
    }
}
