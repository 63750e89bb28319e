//! `herald-lab up` and `herald-lab down` as library calls: bring a lab up with progress
//! on stderr, print how to reach it, stay in the foreground until SIGINT/SIGTERM, then
//! take it down.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::{CleanupReport, Lab, LabConfig, LabError, cleanup};

/// Progress printer: `[  1.2s] step` on stderr.
pub fn stderr_progress() -> super::Progress {
    let start = Instant::now();
    Arc::new(move |line: &str| eprintln!("[{:>5.1}s] {line}", start.elapsed().as_secs_f64()))
}

/// Brings the lab up, writes `json` (a [`super::LabInfo`]) if asked, prints the
/// `export KUBECONFIG=…` line on stdout, waits for SIGINT/SIGTERM, then takes it down.
pub async fn run_up(mut config: LabConfig, json: Option<PathBuf>) -> Result<(), LabError> {
    let progress = config.progress.get_or_insert_with(stderr_progress).clone();
    let lab = Lab::up(config).await?;
    let info = lab.info().await;
    if let Some(path) = &json {
        write_json(path, &info)?;
    }
    progress(&format!(
        "lab {} is up: {} nodes, client namespace {}, Kubernetes control plane at {} (ready in {:.1} s), logs in {}",
        lab.prefix(),
        lab.node_count(),
        lab.client_namespace(),
        lab.api_url(),
        lab.control_plane().started_in().as_secs_f64(),
        lab.state_dir().join("logs").display()
    ));
    progress("Herald runs as Pods of its Deployment and DaemonSet: kubectl -n herald-system get pods -o wide");
    progress("LoadBalancer pools for L2 mode must come from the segment, e.g. 10.203.0.200/29 and fd00:203::200/125");
    progress(
        "backends: any Deployment of image herald-lab:0.1.0 running `/usr/local/bin/herald-lab echo` (see e2e/demo/web.yaml)",
    );
    progress(&format!(
        "from the client: ip netns exec {} curl http://<EXTERNAL-IP>/ ; logs: tail -f {}/*.log",
        lab.client_namespace(),
        lab.state_dir().join("logs").display()
    ));
    progress("Ctrl-C (or `herald-lab down`) removes everything");
    println!("export KUBECONFIG={}", lab.kubeconfig_path().display());

    herald_config::process::shutdown_signal().await;
    progress("stopping processes and removing namespaces");
    let report = lab.down().await?;
    progress(&format!(
        "removed {} namespaces, {} leftover processes",
        report.namespaces.len(),
        report.killed.len()
    ));
    Ok(())
}

/// Removes every lab under `state_root` whose owner is gone and prints what was removed.
pub async fn run_down_stale(state_root: &Path, json: Option<PathBuf>) -> Result<(), LabError> {
    let removed = super::state::cleanup_stale(state_root).await?;
    if removed.is_empty() {
        eprintln!("no stale labs under {}", state_root.display());
    }
    for (prefix, report) in &removed {
        print_report(prefix, report);
    }
    if let Some(path) = &json {
        let map: std::collections::BTreeMap<_, _> = removed.into_iter().collect();
        write_json(path, &map)?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), LabError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    std::fs::write(path, text).map_err(|source| LabError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes the lab with `prefix` (running or crashed) and prints what was removed.
pub async fn run_down(prefix: &str, state_root: &Path, json: Option<PathBuf>) -> Result<CleanupReport, LabError> {
    let report = cleanup(prefix, state_root).await?;
    print_report(prefix, &report);
    if let Some(path) = &json {
        write_json(path, &report)?;
    }
    Ok(report)
}

fn print_report(prefix: &str, report: &CleanupReport) {
    if let Some(owner) = report.owner_stopped {
        eprintln!("asked the lab process {owner} to stop");
    }
    eprintln!(
        "lab {prefix}: removed {} namespaces{}, killed {} processes, state directory {}",
        report.namespaces.len(),
        if report.namespaces.is_empty() {
            String::new()
        } else {
            format!(" ({})", report.namespaces.join(", "))
        },
        report.killed.len(),
        if report.state_dir_removed { "removed" } else { "absent" }
    );
}
