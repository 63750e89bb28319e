//! Reconciling one Service: allocate, write status and annotation, report by Event.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_config::annotations::{IP_ALLOCATED_FROM_POOL, parse_service_annotations};
use herald_config::service::FORWARDING_ANNOTATION;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::events::{
    self, ALLOCATION_FAILED, CLEAR_ASSIGNMENT, DEPRECATED_ANNOTATION, INVALID_ANNOTATION, IP_ALLOCATED,
};
use super::{Context, Error, handles, ingress_ips, service_key};
use crate::allocator::{AllocError, ServiceKey, ServiceRequest};
use crate::metrics::Outcome;

const FIELD_MANAGER: &str = herald_config::deploy::CONTROLLER;

pub async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leadership.may_write() {
        follow(&ctx, &service);
        return Ok(Action::await_change());
    }
    let key = service_key(&service);
    if !handles(&service, &ctx.config.lb_class) {
        return clear_if_ours(&service, &ctx, &key).await;
    }
    let current = ingress_ips(&service);
    let request = ServiceRequest::from_service(&service, ctx.namespace_labels(&key.namespace));
    // Allocate before any await, so a Delete handled meanwhile cannot be overtaken.
    let outcome = request.map(|request| ctx.allocator.lock().expect("allocator lock").allocate(&request));
    report_annotations(&service, &ctx, &key).await;
    let allocation = match outcome {
        Ok(Ok(allocation)) => allocation,
        Ok(Err(e)) | Err(e) => return failed(&service, &ctx, &key, &current, &e).await,
    };
    forget_failure(&ctx, &key);
    // Why a pool change displaced it, if it did; it is now served either way.
    let moved_because = ctx.displaced.lock().expect("displaced lock").remove(&key);

    if current != allocation.ips {
        write_ingress(&ctx, &service, &allocation.ips).await?;
        if !current.is_empty() {
            // Its old addresses are free now: a pending Service may take them.
            ctx.retry_all.notify_one();
        }
        let ips = join(&allocation.ips);
        let note = match (current.is_empty(), moved_because) {
            (_, Some(reason)) => {
                ctx.metrics.count(Outcome::moved);
                format!(
                    "moved from {} to {ips} (pool {}): {reason}",
                    join(&current),
                    allocation.pool
                )
            }
            (true, None) => {
                ctx.metrics.count(Outcome::allocated);
                format!("assigned {ips} from pool {}", allocation.pool)
            }
            (false, None) => {
                ctx.metrics.count(Outcome::moved);
                format!(
                    "changed from {} to {ips} (pool {}) as the Service's request changed",
                    join(&current),
                    allocation.pool
                )
            }
        };
        tracing::info!(service = %key, %note, "addresses assigned");
        events::publish(&ctx, &service, EventType::Normal, IP_ALLOCATED, note).await;
        ctx.pools_changed.notify_one();
    }
    if service.annotations().get(IP_ALLOCATED_FROM_POOL) != Some(&allocation.pool) {
        write_pool_annotation(&ctx, &service, Some(&allocation.pool)).await?;
    }
    Ok(Action::await_change())
}

/// API failures are retried with a delay; allocation failures never get here (they wait for a
/// change that could help, see the module docs of `reconciler`).
pub fn error_policy(service: Arc<Service>, error: &Error, _ctx: Arc<Context>) -> Action {
    if matches!(error, Error::NotLeader { .. }) {
        // Stepping down re-runs every Service anyway (as a standby, following its status).
        tracing::debug!(service = %service_key(&service), error = herald_config::process::error_chain(error), "stepped down mid-reconcile");
        return Action::await_change();
    }
    tracing::warn!(service = %service_key(&service), error = herald_config::process::error_chain(error), "reconcile failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}

/// The allocator could not serve the Service. It keeps what it held (the allocator never takes
/// an address away because a new request is refused); if the status shows addresses that the
/// allocator does not hold for it, those are not Herald's to announce any more, so clear them.
async fn failed(
    service: &Service,
    ctx: &Context,
    key: &ServiceKey,
    current: &[IpAddr],
    error: &AllocError,
) -> Result<Action, Error> {
    let message = error.to_string();
    let held: Vec<IpAddr> = ctx
        .allocator
        .lock()
        .expect("allocator lock")
        .ips_of(key)
        .map(<[IpAddr]>::to_vec)
        .unwrap_or_default();
    let first_report = ctx
        .reported_failures
        .lock()
        .expect("failures lock")
        .insert(key.clone(), message.clone())
        .as_ref()
        != Some(&message);
    ctx.metrics
        .services_pending
        .set(i64::try_from(ctx.reported_failures.lock().expect("failures lock").len()).unwrap_or(i64::MAX));
    if first_report {
        ctx.metrics.count_failure(error.reason());
        tracing::warn!(service = %key, %message, "cannot allocate");
        let note = if held.is_empty() {
            message
        } else {
            format!("{message}; keeping {}", join(&held))
        };
        events::publish(ctx, service, EventType::Warning, ALLOCATION_FAILED, note).await;
    }
    if !current.is_empty() && held.is_empty() {
        let reason = ctx
            .displaced
            .lock()
            .expect("displaced lock")
            .remove(key)
            .unwrap_or_else(|| "they are not allocated to this Service".to_string());
        write_ingress(ctx, service, &[]).await?;
        write_pool_annotation(ctx, service, None).await?;
        ctx.metrics.count(Outcome::released);
        let note = format!("removed {}: {reason}", join(current));
        events::publish(ctx, service, EventType::Warning, CLEAR_ASSIGNMENT, note).await;
    }
    Ok(Action::await_change())
}

fn forget_failure(ctx: &Context, key: &ServiceKey) {
    let mut failures = ctx.reported_failures.lock().expect("failures lock");
    if failures.remove(key).is_some() {
        ctx.metrics
            .services_pending
            .set(i64::try_from(failures.len()).unwrap_or(i64::MAX));
    }
}

/// A Service Herald no longer handles: release and clear what Herald wrote, if anything.
async fn clear_if_ours(service: &Service, ctx: &Context, key: &ServiceKey) -> Result<Action, Error> {
    let released = ctx.allocator.lock().expect("allocator lock").release(key);
    forget_failure(ctx, key);
    let ours = released.is_some() || service.annotations().contains_key(IP_ALLOCATED_FROM_POOL);
    if !ours {
        return Ok(Action::await_change());
    }
    if released.is_some() {
        ctx.metrics.count(Outcome::released);
        ctx.retry_all.notify_one();
        ctx.pools_changed.notify_one();
    }
    let current = ingress_ips(service);
    let why = match service.spec.as_ref().and_then(|s| s.type_.as_deref()) {
        Some("LoadBalancer") => format!(
            "loadBalancerClass is {:?}, not handled by this controller ({})",
            service
                .spec
                .as_ref()
                .and_then(|s| s.load_balancer_class.clone())
                .unwrap_or_default(),
            ctx.config.lb_class
        ),
        other => format!(
            "the Service is type {} now, not LoadBalancer",
            other.unwrap_or("ClusterIP")
        ),
    };
    // Another class's controller owns the status now; only clear it if the type changed.
    if !current.is_empty() && service.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
        write_ingress(ctx, service, &[]).await?;
    }
    write_pool_annotation(ctx, service, None).await?;
    tracing::info!(service = %key, %why, "released");
    let note = if current.is_empty() {
        format!("released its addresses: {why}")
    } else {
        format!("released {}: {why}", join(&current))
    };
    events::publish(ctx, service, EventType::Normal, CLEAR_ASSIGNMENT, note).await;
    Ok(Action::await_change())
}

/// A Service was deleted (or vanished during a relist): free its addresses and let pending
/// Services try again.
pub fn released(ctx: &Context, key: &ServiceKey, why: &str) {
    let released = ctx.allocator.lock().expect("allocator lock").release(key);
    forget_failure(ctx, key);
    ctx.displaced.lock().expect("displaced lock").remove(key);
    ctx.reported_annotations
        .lock()
        .expect("reported annotations lock")
        .retain(|(service, _)| service != key);
    if let Some(allocation) = released {
        ctx.metrics.count(Outcome::released);
        tracing::info!(service = %key, ips = %join(&allocation.ips), why, "released");
        ctx.retry_all.notify_one();
        ctx.pools_changed.notify_one();
    }
}

pub fn release_missing(ctx: &Context, services: &Store<Service>) {
    let present: std::collections::HashSet<ServiceKey> = services.state().iter().map(|s| service_key(s)).collect();
    let held = ctx.allocator.lock().expect("allocator lock").services();
    for key in held.into_iter().filter(|k| !present.contains(k)) {
        released(ctx, &key, "deleted while the watch was down");
    }
}

/// A standby's reconcile: make the allocator hold what the Service's status says (the leader's
/// decision), or nothing if it shows nothing. Writes nothing, allocates nothing.
pub fn follow(ctx: &Context, service: &Service) {
    let mut allocator = ctx.allocator.lock().expect("allocator lock");
    if follow_locked(ctx, &mut allocator, service) {
        ctx.pools_changed.notify_one();
    }
}

/// A new term starts here, before the write gate opens: the allocator follows every Service in
/// the cache (oldest first, as the rebuild does), and lets go of Services that are gone, so the
/// first allocation of the term cannot hand out an address a Service's status already shows.
pub fn follow_all(ctx: &Context, services: &Store<Service>) {
    let mut all = services.state();
    all.sort_by(|a, b| {
        let key = |s: &Service| (s.metadata.creation_timestamp.clone(), s.namespace(), s.name_any());
        key(a).cmp(&key(b))
    });
    let changed = {
        let mut allocator = ctx.allocator.lock().expect("allocator lock");
        all.iter().fold(false, |changed, service| {
            follow_locked(ctx, &mut allocator, service) | changed
        })
    };
    release_missing(ctx, services);
    if changed {
        ctx.pools_changed.notify_one();
    }
    tracing::info!(
        services = all.len(),
        changed,
        "allocator follows every Service's status"
    );
}

/// Returns whether the allocator changed.
fn follow_locked(ctx: &Context, allocator: &mut crate::allocator::Allocator, service: &Service) -> bool {
    let key = service_key(service);
    let ips = ingress_ips(service);
    if ips.is_empty() || !handles(service, &ctx.config.lb_class) {
        return allocator.release(&key).is_some();
    }
    if allocator.ips_of(&key) == Some(&ips[..]) {
        return false;
    }
    let request = ServiceRequest::from_service(service, ctx.namespace_labels(&key.namespace))
        .unwrap_or_else(|_| ServiceRequest::auto(key.clone(), herald_config::IpFamily::of(ips[0])));
    match allocator.restore(&request, &ips) {
        Ok(_) => true,
        Err(e) => {
            // Often transient on a standby (the leader is moving it); the leader reports it.
            tracing::debug!(service = %key, error = %e, "standby cannot follow the Service's status");
            false
        }
    }
}

/// Warns, once each, of annotations in MetalLB's spelling and of a `herald.io/forwarding` the
/// speakers cannot use (they keep their `--forwarding` for the Service; its address is not
/// concerned).
async fn report_annotations(service: &Service, ctx: &Context, key: &ServiceKey) {
    let spec_ip = service.spec.as_ref().and_then(|s| s.load_balancer_ip.as_deref());
    let mut warnings: Vec<(String, &str, String)> = Vec::new();
    if let Ok(parsed) = parse_service_annotations(service.annotations(), spec_ip) {
        warnings.extend(
            parsed
                .deprecated
                .into_iter()
                .map(|d| (d.found.clone(), DEPRECATED_ANNOTATION, d.to_string())),
        );
    }
    if let Err(bad) = herald_config::service::forwarding(service) {
        let seen = format!("{FORWARDING_ANNOTATION}={}", bad.value);
        warnings.push((seen, INVALID_ANNOTATION, bad.to_string()));
    }
    for (seen, reason, note) in warnings {
        let new = ctx
            .reported_annotations
            .lock()
            .expect("reported annotations lock")
            .insert((key.clone(), seen));
        if new {
            events::publish(ctx, service, EventType::Warning, reason, note).await;
        }
    }
}

async fn write_ingress(ctx: &Context, service: &Service, ips: &[IpAddr]) -> Result<(), Error> {
    may_write(ctx, service, "status.loadBalancer")?;
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &service.namespace().unwrap_or_default());
    let ingress: Vec<_> = ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
        .collect();
    let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
    api.patch_status(&service.name_any(), &field_manager(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Write {
            what: "status.loadBalancer",
            object: service_key(service).to_string(),
            source,
        })?;
    Ok(())
}

async fn write_pool_annotation(ctx: &Context, service: &Service, pool: Option<&str>) -> Result<(), Error> {
    if pool.is_none() && !service.annotations().contains_key(IP_ALLOCATED_FROM_POOL) {
        return Ok(());
    }
    may_write(ctx, service, "annotation")?;
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &service.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": {IP_ALLOCATED_FROM_POOL: pool}}});
    api.patch(&service.name_any(), &field_manager(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Write {
            what: "annotation",
            object: service_key(service).to_string(),
            source,
        })?;
    Ok(())
}

/// The write gate, asked right before a write is sent.
fn may_write(ctx: &Context, service: &Service, what: &'static str) -> Result<(), Error> {
    if ctx.leadership.may_write() {
        Ok(())
    } else {
        Err(Error::NotLeader {
            what,
            object: service_key(service).to_string(),
        })
    }
}

fn field_manager() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    }
}

fn join(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "nothing".to_string();
    }
    ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
