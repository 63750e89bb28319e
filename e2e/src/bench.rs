//! `herald-lab bench-apiserver`: load benchmark of the lab API server. Concurrent kube-rs
//! clients create LoadBalancer Services while watchers stream them; reports create
//! throughput and the delay from each create response to the event at every watcher.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde::Serialize;
use serde_json::json;

use crate::apiserver::{ApiServer, ApiServerConfig};

/// Benchmark shape.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Services to create.
    pub services: usize,
    /// Concurrent creating clients.
    pub clients: usize,
    /// Open watchers.
    pub watchers: usize,
}

/// Results.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Services created.
    pub services: usize,
    /// Creating clients.
    pub clients: usize,
    /// Watchers.
    pub watchers: usize,
    /// Wall time of all creates, seconds.
    pub create_seconds: f64,
    /// Services created per second.
    pub objects_per_second: f64,
    /// Watch events measured (services × watchers).
    pub events_measured: usize,
    /// Median create-response → watch-event delay, microseconds (events that arrived
    /// before the create response count as 0).
    pub watch_latency_p50_us: u64,
    /// 99th percentile of the same, microseconds.
    pub watch_latency_p99_us: u64,
    /// Maximum of the same, microseconds.
    pub watch_latency_max_us: u64,
}

impl BenchReport {
    /// One-paragraph human summary.
    pub fn summary(&self) -> String {
        format!(
            "{} Services by {} clients with {} watchers: {:.2} s, {:.0} objects/s; watch latency p50 {} µs, p99 {} µs, max {} µs ({} events)",
            self.services,
            self.clients,
            self.watchers,
            self.create_seconds,
            self.objects_per_second,
            self.watch_latency_p50_us,
            self.watch_latency_p99_us,
            self.watch_latency_max_us,
            self.events_measured
        )
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs the benchmark against a fresh in-process server on 127.0.0.1.
pub async fn run_bench(config: BenchConfig) -> anyhow::Result<BenchReport> {
    if config.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let server = ApiServer::start(ApiServerConfig {
        history_limit: config.services * 4 + 1000,
        ..ApiServerConfig::local()
    })
    .await?;
    let result = bench_against(&server, &config).await;
    server.shutdown().await;
    result
}

async fn bench_against(
    server: &crate::apiserver::RunningApiServer,
    config: &BenchConfig,
) -> anyhow::Result<BenchReport> {
    let namespace = "default";
    let start_rv = server.resource_version().to_string();
    let mut watcher_tasks = Vec::new();
    for _ in 0..config.watchers {
        let api: Api<Service> = Api::namespaced(server.client().await?, namespace);
        let wanted = config.services;
        let from = start_rv.clone();
        watcher_tasks.push(tokio::spawn(async move {
            let mut arrivals: Vec<(String, Instant)> = Vec::with_capacity(wanted);
            let params = WatchParams::default().timeout(290);
            let mut stream = api.watch(&params, &from).await?.boxed();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
            while arrivals.len() < wanted {
                let next = tokio::time::timeout_at(deadline, stream.try_next())
                    .await
                    .context("watch timed out")??;
                match next {
                    Some(WatchEvent::Added(svc)) => {
                        arrivals.push((svc.metadata.name.unwrap_or_default(), Instant::now()))
                    }
                    Some(_) => {}
                    None => bail!("watch ended early"),
                }
            }
            Ok::<_, anyhow::Error>(arrivals)
        }));
    }
    // Give every watcher time to be registered before the first create.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let responses: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::with_capacity(config.services)));
    let started = Instant::now();
    let mut creators = Vec::new();
    for c in 0..config.clients {
        let api: Api<Service> = Api::namespaced(server.client().await?, namespace);
        let responses = responses.clone();
        let names: Vec<String> = (0..config.services)
            .filter(|i| i % config.clients == c)
            .map(|i| format!("bench-{i}"))
            .collect();
        creators.push(tokio::spawn(async move {
            for name in names {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"bench": "true"}},
                    "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]}
                }))?;
                api.create(&PostParams::default(), &svc)
                    .await
                    .with_context(|| format!("creating {name}"))?;
                responses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name, Instant::now());
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in creators {
        task.await.context("creator panicked")??;
    }
    let create_seconds = started.elapsed().as_secs_f64();

    let responses = responses.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut latencies: Vec<u64> = Vec::new();
    for task in watcher_tasks {
        for (name, arrived) in task.await.context("watcher panicked")?? {
            if let Some(responded) = responses.get(&name) {
                latencies.push(arrived.saturating_duration_since(*responded).as_micros() as u64);
            }
        }
    }
    latencies.sort_unstable();
    Ok(BenchReport {
        services: config.services,
        clients: config.clients,
        watchers: config.watchers,
        create_seconds,
        objects_per_second: config.services as f64 / create_seconds.max(1e-9),
        events_measured: latencies.len(),
        watch_latency_p50_us: percentile(&latencies, 0.50),
        watch_latency_p99_us: percentile(&latencies, 0.99),
        watch_latency_max_us: latencies.last().copied().unwrap_or(0),
    })
}
