//! The pool set: validation, handing the pools in use to the allocator, and each pool's status.
//!
//! A bad edit moves nothing: a pool that was valid and is edited into an invalid spec keeps
//! serving from its last valid spec (the allocator keeps its old ranges; nothing is released or
//! moved) and its status says `Ready=False`, reason `Invalid`, with the rule broken and "using
//! the last valid spec from <time>". Only a valid edit changes a pool, so only a valid edit can
//! shrink it; deleting a pool moves its Services (with an Event). A pool that was never valid
//! is not used, and a Service naming it is told it is invalid. The decision is
//! [`herald_config::last_valid::judge_pools`]; the memory of last valid specs lives in
//! [`Context::last_valid`] and is lost on restart (a pool invalid at start is refused).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald_config::last_valid::{PoolSet, Verdict, judge_pools};
use herald_config::validation::PoolError;
use herald_config::{IPAddressPool, IPAddressPoolSpec, IPAddressPoolStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Context;
use crate::allocator::{Allocator, Displaced, Pool, PoolStats};
use crate::metrics::{AddressFamily, PoolLabels, PoolState};

/// Judges the pools as a set (remembering last valid specs) and gives the pools in use to the
/// allocator. Services whose addresses left every pool are remembered with the reason and re-run.
pub fn apply_pool_set(ctx: &Context, pools: &[IPAddressPool]) {
    let set = judge_pools(
        pools,
        &mut ctx.last_valid.lock().expect("last-valid lock"),
        k8s_openapi::jiff::Timestamp::now(),
    );
    for (name, verdict) in &set.verdicts {
        match verdict {
            Verdict::Valid => {}
            Verdict::Stale { .. } => {
                tracing::warn!(pool = %name, message = %verdict, "IPAddressPool is invalid; serving from its last valid spec")
            }
            Verdict::Refused { .. } => {
                tracing::warn!(pool = %name, message = %verdict, "IPAddressPool refused; it is not used")
            }
        }
    }
    let displaced = give_to_allocator(&mut ctx.allocator.lock().expect("allocator lock"), &set);
    {
        let mut moved = ctx.displaced.lock().expect("displaced lock");
        for d in displaced {
            tracing::info!(service = %d.service, reason = %d.reason, "addresses left the pools; moving");
            moved.insert(d.service, d.reason.to_string());
        }
    }
    for state in [PoolState::valid, PoolState::stale, PoolState::invalid] {
        let count = set.verdicts.values().filter(|v| pool_state(v) == state).count();
        ctx.metrics
            .pools
            .get_or_create(&crate::metrics::PoolStateLabels { state })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    *ctx.pool_verdicts.lock().expect("verdicts lock") = set.verdicts;
    ctx.retry_all.notify_one();
    ctx.pools_changed.notify_one();
}

/// The allocator's side of a pool-set change: it serves the pools in use (a stale pool with its
/// last valid ranges) and knows the refused ones by name. Returns the Services that lost their
/// addresses.
fn give_to_allocator(allocator: &mut Allocator, set: &PoolSet) -> Vec<Displaced> {
    // The ranges validation already parsed; nothing is parsed twice.
    let in_use = set
        .in_use
        .iter()
        .map(|p| Pool {
            name: p.name.clone(),
            ranges: p.ranges.clone(),
            auto_assign: p.spec.auto_assign,
            avoid_buggy_ips: p.spec.avoid_buggy_ips,
            service_allocation: p.spec.service_allocation.clone(),
        })
        .collect();
    let refused = set
        .verdicts
        .iter()
        .filter_map(|(name, verdict)| match verdict {
            Verdict::Refused { error } => Some((name.clone(), error.to_string())),
            _ => None,
        })
        .collect();
    allocator.set_invalid_pools(refused);
    allocator.set_pools(in_use)
}

fn pool_state(verdict: &Verdict<PoolError>) -> PoolState {
    match verdict {
        Verdict::Valid => PoolState::valid,
        Verdict::Stale { .. } => PoolState::stale,
        Verdict::Refused { .. } => PoolState::invalid,
    }
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

/// Writes pools' statuses when counters or verdicts change, at most every 200 ms; only while
/// leading (gauges are published either way).
pub async fn write_statuses(ctx: Arc<Context>, api: Api<IPAddressPool>) {
    let mut written: BTreeMap<String, IPAddressPoolStatus> = BTreeMap::new();
    loop {
        ctx.pools_changed.notified().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let verdicts = ctx.pool_verdicts.lock().expect("verdicts lock").clone();
        // A standby writes nothing; what it would have written is written when it leads (a new
        // term notifies `pools_changed`), whatever another leader wrote meanwhile.
        let leading = ctx.leadership.may_write();
        if !leading {
            written.clear();
        }
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
            if !leading || written.get(&name).is_some_and(|w| same_status(w, &status)) {
                continue;
            }
            if !ctx.leadership.may_write() {
                // Stepped down during this round.
                written.clear();
                break;
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

/// `Ready=True` for a valid pool; `Ready=False`, reason `Invalid`, with the rule broken (and,
/// for a pool serving from its last valid spec, since when) otherwise.
fn desired_status(verdict: &Verdict<PoolError>, stats: Option<&PoolStats>) -> IPAddressPoolStatus {
    let stats = stats.cloned().unwrap_or_default();
    let (status, reason, message) = match verdict {
        Verdict::Valid => ("True", "Valid", "the pool is valid and in use".to_string()),
        Verdict::Stale { .. } | Verdict::Refused { .. } => ("False", "Invalid", verdict.to_string()),
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
        field_manager: Some(herald_config::deploy::CONTROLLER.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use herald_config::IpFamily;
    use herald_config::last_valid::LastValid;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::jiff::Timestamp;

    use crate::allocator::{ServiceKey, ServiceRequest};

    fn pool(name: &str, created_secs: i64, addresses: &[&str]) -> IPAddressPool {
        let mut p = IPAddressPool::new(name, IPAddressPoolSpec::with_addresses(addresses.iter().copied()));
        p.metadata = ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            creation_timestamp: Some(Time(Timestamp::from_second(created_secs).unwrap())),
            ..Default::default()
        };
        p
    }

    /// The controller's pool memory and allocator, as `apply_pool_set` drives them.
    struct Pools {
        memory: LastValid<IPAddressPoolSpec>,
        allocator: Allocator,
    }

    impl Pools {
        fn new() -> Self {
            Pools {
                memory: LastValid::new(),
                allocator: Allocator::new(),
            }
        }

        fn apply(&mut self, pools: &[IPAddressPool], now_secs: i64) -> (PoolSet, Vec<Displaced>) {
            let set = judge_pools(pools, &mut self.memory, Timestamp::from_second(now_secs).unwrap());
            let displaced = give_to_allocator(&mut self.allocator, &set);
            (set, displaced)
        }

        fn allocate(&mut self, service: &str, pool: Option<&str>) -> Result<Vec<std::net::IpAddr>, String> {
            let mut request = ServiceRequest::auto(ServiceKey::new("default", service), IpFamily::V4);
            request.pool = pool.map(str::to_string);
            self.allocator
                .allocate(&request)
                .map(|a| a.ips)
                .map_err(|e| e.to_string())
        }
    }

    fn ready(verdict: &Verdict<PoolError>) -> Condition {
        desired_status(verdict, None).conditions.remove(0)
    }

    #[test]
    fn a_typo_in_a_pool_in_use_moves_nothing_and_says_so() {
        let mut pools = Pools::new();
        let (set, _) = pools.apply(&[pool("lab", 1, &["10.203.0.200-10.203.0.239"])], 1_000);
        assert_eq!(ready(&set.verdicts["lab"]).status, "True");
        assert_eq!(
            pools.allocate("web", None).unwrap(),
            ["10.203.0.200".parse::<std::net::IpAddr>().unwrap()]
        );

        let (set, displaced) = pools.apply(&[pool("lab", 1, &["10.203.0.200-10.203.0.2399"])], 2_000);
        assert!(displaced.is_empty(), "nothing is released or moved: {displaced:?}");
        let key = ServiceKey::new("default", "web");
        assert_eq!(
            pools.allocator.ips_of(&key),
            Some(&["10.203.0.200".parse::<std::net::IpAddr>().unwrap()][..])
        );
        // The old ranges still serve: counters and new allocations use them.
        assert_eq!(pools.allocator.pool_stats("lab").map(|s| s.available_v4), Some(39));
        assert_eq!(pools.allocate("api", Some("lab")).unwrap().len(), 1);

        let condition = ready(&set.verdicts["lab"]);
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "Invalid")
        );
        assert_eq!(
            condition.message,
            "spec.addresses[0]: \"10.203.0.200-10.203.0.2399\": \"10.203.0.2399\" is not a valid IP address; using the last valid spec from 1970-01-01T00:16:40Z"
        );
    }

    #[test]
    fn only_a_valid_edit_or_a_deletion_moves_services() {
        let mut pools = Pools::new();
        pools.apply(&[pool("a", 1, &["10.0.0.0/30"]), pool("b", 2, &["10.1.0.0/30"])], 1);
        assert_eq!(
            pools.allocate("s1", Some("a")).unwrap(),
            ["10.0.0.0".parse::<std::net::IpAddr>().unwrap()]
        );

        // A valid shrink takes the address away.
        let (_, displaced) = pools.apply(&[pool("a", 1, &["10.0.0.2/31"]), pool("b", 2, &["10.1.0.0/30"])], 2);
        assert_eq!(displaced.len(), 1);
        assert_eq!(
            displaced[0].reason.to_string(),
            "10.0.0.0 is no longer in any IPAddressPool"
        );

        // Deleting a pool moves its Services too.
        assert_eq!(
            pools.allocate("s2", Some("b")).unwrap(),
            ["10.1.0.0".parse::<std::net::IpAddr>().unwrap()]
        );
        let (set, displaced) = pools.apply(&[pool("a", 1, &["10.0.0.2/31"])], 3);
        assert_eq!(displaced.len(), 1);
        assert_eq!(displaced[0].service, ServiceKey::new("default", "s2"));
        assert!(!set.verdicts.contains_key("b"));
    }

    #[test]
    fn a_pool_never_valid_is_unused_and_named_as_invalid() {
        let mut pools = Pools::new();
        let (set, _) = pools.apply(
            &[
                pool("good", 1, &["10.0.0.0/30"]),
                pool("bad", 2, &["10.9.0.20-10.9.0.10"]),
            ],
            1,
        );
        assert!(matches!(set.verdicts["bad"], Verdict::Refused { .. }));
        let condition = ready(&set.verdicts["bad"]);
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "Invalid")
        );
        assert!(condition.message.contains("reversed range"));
        assert!(!condition.message.contains("last valid"));
        assert!(pools.allocator.pool_stats("bad").is_none());
        let refusal = pools.allocate("web", Some("bad")).unwrap_err();
        assert!(
            refusal.starts_with(
                "IPAddressPool \"bad\" (named by the herald.io/address-pool annotation) is invalid: spec.addresses[0]: "
            ),
            "{refusal}"
        );
        assert!(refusal.contains("reversed range"), "{refusal}");
    }

    #[test]
    fn an_edit_into_another_pool_is_refused_and_both_keep_their_addresses() {
        let mut pools = Pools::new();
        pools.apply(&[pool("a", 1, &["10.0.0.0/30"]), pool("b", 2, &["10.0.1.0/30"])], 1);
        assert_eq!(
            pools.allocate("s", Some("b")).unwrap(),
            ["10.0.1.0".parse::<std::net::IpAddr>().unwrap()]
        );
        // The older pool is edited to cover the newer one's addresses.
        let (set, displaced) = pools.apply(&[pool("a", 1, &["10.0.0.0/23"]), pool("b", 2, &["10.0.1.0/30"])], 2);
        assert!(displaced.is_empty());
        assert!(matches!(set.verdicts["a"], Verdict::Stale { .. }));
        assert_eq!(set.verdicts["b"], Verdict::Valid);
        assert_eq!(pools.allocator.pool_stats("a").map(|s| s.available_v4), Some(4));
    }
}
