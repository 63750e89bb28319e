//! The pool set: validation, handing valid pools to the allocator, and each pool's status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald_config::validation::validate_pools;
use herald_config::{IPAddressPool, IPAddressPoolSpec, IPAddressPoolStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Context;
use crate::allocator::{Pool, PoolStats};
use crate::metrics::{AddressFamily, PoolLabels, PoolState};

/// Validates the pools as a set and gives the valid ones to the allocator. Services whose
/// addresses left every pool are remembered with the reason and re-run.
pub fn apply_pool_set(ctx: &Context, pools: &[IPAddressPool]) {
    let verdicts = validate_pools(pools);
    let mut valid = Vec::new();
    let mut recorded = BTreeMap::new();
    for pool in pools {
        let name = pool.name_any();
        // The ranges validation already parsed; nothing is parsed twice.
        let verdict = match verdicts.get(&name) {
            Some(Ok(ranges)) => Ok(Pool {
                name: name.clone(),
                ranges: ranges.clone(),
                auto_assign: pool.spec.auto_assign,
                avoid_buggy_ips: pool.spec.avoid_buggy_ips,
                service_allocation: pool.spec.service_allocation.clone(),
            }),
            Some(Err(e)) => Err(e.to_string()),
            None => continue,
        };
        match verdict {
            Ok(parsed) => {
                valid.push(parsed);
                recorded.insert(name, Ok(()));
            }
            Err(message) => {
                tracing::warn!(pool = %name, %message, "IPAddressPool refused; it is not used");
                recorded.insert(name, Err(message));
            }
        }
    }
    let valid_count = valid.len() as i64;
    let displaced = ctx.allocator.lock().expect("allocator lock").set_pools(valid);
    {
        let mut moved = ctx.displaced.lock().expect("displaced lock");
        for d in displaced {
            tracing::info!(service = %d.service, reason = %d.reason, "addresses left the pools; moving");
            moved.insert(d.service, d.reason.to_string());
        }
    }
    ctx.metrics
        .pools
        .get_or_create(&crate::metrics::PoolStateLabels {
            state: PoolState::valid,
        })
        .set(valid_count);
    ctx.metrics
        .pools
        .get_or_create(&crate::metrics::PoolStateLabels {
            state: PoolState::invalid,
        })
        .set(recorded.len() as i64 - valid_count);
    *ctx.pool_verdicts.lock().expect("verdicts lock") = recorded;
    ctx.retry_all.notify_one();
    ctx.pools_changed.notify_one();
}

/// Watches pools; re-applies the set when any pool's spec (not status) changes, so our own
/// status writes do not cause work.
pub async fn watch_pools(ctx: Arc<Context>, api: Api<IPAddressPool>, initial: &[IPAddressPool]) {
    let mut applied = current_specs(initial);
    let (store, writer) = reflector::store();
    let mut stream = std::pin::pin!(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
    );
    while let Some(event) = stream.next().await {
        match event {
            Err(e) => {
                tracing::warn!(error = %e, "IPAddressPool watch failed; retrying");
                continue;
            }
            // The store is complete only at InitDone; pages before it are not the pool set.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Ok(_) => {}
        }
        let pools = ctx_pools(&store);
        let specs = current_specs(&pools);
        if specs != applied {
            apply_pool_set(&ctx, &pools);
            applied = specs;
        }
    }
}

fn ctx_pools(store: &Store<IPAddressPool>) -> Vec<IPAddressPool> {
    store.state().iter().map(|p| (**p).clone()).collect()
}

fn current_specs(pools: &[IPAddressPool]) -> BTreeMap<String, IPAddressPoolSpec> {
    pools.iter().map(|p| (p.name_any(), p.spec.clone())).collect()
}

/// Writes pools' statuses when counters or verdicts change, at most every 200 ms.
pub async fn write_statuses(ctx: Arc<Context>, api: Api<IPAddressPool>) {
    let mut written: BTreeMap<String, IPAddressPoolStatus> = BTreeMap::new();
    loop {
        ctx.pools_changed.notified().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let verdicts = ctx.pool_verdicts.lock().expect("verdicts lock").clone();
        // A deleted pool: forget what was written for it (a new pool of the same name must get
        // its own status) and drop its gauges.
        for gone in written
            .keys()
            .filter(|name| !verdicts.contains_key(*name))
            .cloned()
            .collect::<Vec<_>>()
        {
            written.remove(&gone);
            for family in [AddressFamily::ipv4, AddressFamily::ipv6] {
                let labels = PoolLabels {
                    pool: gone.clone(),
                    family,
                };
                ctx.metrics.addresses_in_use.remove(&labels);
                ctx.metrics.addresses_available.remove(&labels);
            }
        }
        for (name, verdict) in verdicts {
            let stats = ctx.allocator.lock().expect("allocator lock").pool_stats(&name);
            let mut status = desired_status(&verdict, stats.as_ref());
            // A condition's lastTransitionTime moves only when its status does.
            if let (Some(before), Some(now)) = (
                written.get(&name).and_then(|w| w.conditions.first()),
                status.conditions.first_mut(),
            ) && before.status == now.status
            {
                now.last_transition_time = before.last_transition_time.clone();
            }
            publish_metrics(&ctx, &name, stats.as_ref());
            if written.get(&name).is_some_and(|w| same_status(w, &status)) {
                continue;
            }
            match write_status(&api, &name, &status).await {
                Ok(()) => {
                    written.insert(name, status);
                }
                Err(e) => {
                    tracing::warn!(pool = %name, error = %e, "cannot write IPAddressPool status");
                    // Try again on the next change or in a second.
                    let retry = ctx.pools_changed.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        retry.notify_one();
                    });
                }
            }
        }
    }
}

fn desired_status(verdict: &Result<(), String>, stats: Option<&PoolStats>) -> IPAddressPoolStatus {
    let stats = stats.cloned().unwrap_or_default();
    let (status, reason, message) = match verdict {
        Ok(()) => ("True", "Valid", "the pool is valid and in use".to_string()),
        Err(e) => ("False", "Invalid", e.clone()),
    };
    IPAddressPoolStatus {
        assigned_ipv4: stats.assigned_v4,
        assigned_ipv6: stats.assigned_v6,
        available_ipv4: stats.available_v4,
        available_ipv6: stats.available_v6,
        conditions: vec![Condition {
            type_: "Ready".to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        }],
    }
}

/// Equal but for condition timestamps.
fn same_status(a: &IPAddressPoolStatus, b: &IPAddressPoolStatus) -> bool {
    let strip = |s: &IPAddressPoolStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}

async fn write_status(api: &Api<IPAddressPool>, name: &str, status: &IPAddressPoolStatus) -> Result<(), kube::Error> {
    let patch = json!({"status": status});
    let params = PatchParams {
        field_manager: Some("herald-controller".to_string()),
        ..Default::default()
    };
    api.patch_status(name, &params, &Patch::Merge(&patch)).await.map(|_| ())
}

fn publish_metrics(ctx: &Context, pool: &str, stats: Option<&PoolStats>) {
    let stats = stats.cloned().unwrap_or_default();
    for (family, in_use, available) in [
        (AddressFamily::ipv4, stats.assigned_v4, stats.available_v4),
        (AddressFamily::ipv6, stats.assigned_v6, stats.available_v6),
    ] {
        let labels = PoolLabels {
            pool: pool.to_string(),
            family,
        };
        ctx.metrics.addresses_in_use.get_or_create(&labels).set(in_use);
        ctx.metrics.addresses_available.get_or_create(&labels).set(available);
    }
}
