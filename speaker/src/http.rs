//! The speaker's HTTP endpoints: `/metrics`, `/healthz` (the election loop is turning) and
//! `/readyz` (watches synced, the speakers' key loaded, announcer
//! running, the first exchange with peers settled).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use herald_config::process::Probes;
use prometheus_client::registry::Registry;

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

/// What `/metrics` serves: empty until every part has registered its metrics.
pub struct Endpoints {
    pub health: Arc<Health>,
    pub registry: Arc<OnceLock<Registry>>,
}

impl Probes for Endpoints {
    fn metrics(&self) -> String {
        self.registry
            .get()
            .map(herald_config::process::encode_metrics)
            .unwrap_or_default()
    }

    async fn healthz(&self) -> Result<String, String> {
        let age = unix_now().saturating_sub(self.health.last_pass.load(Ordering::SeqCst));
        if age <= 5 {
            Ok("ok".to_string())
        } else {
            Err(format!("the election loop has not run for {age}s"))
        }
    }

    async fn readyz(&self) -> Result<String, String> {
        let reasons = self.health.not_ready();
        if !reasons.is_empty() {
            return Err(format!("not ready: {}", reasons.join("; ")));
        }
        match self.health.dataplane_note() {
            None => Ok("ok".to_string()),
            Some(note) => Ok(format!("ok; {note}")),
        }
    }
}
