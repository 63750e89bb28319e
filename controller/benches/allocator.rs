//! Allocator benchmarks: Herald's interval-set allocator against a first-fit scan from the start
//! of the pool (what MetalLB does per allocation), allocating 10,000 Services from one /16 and
//! from 50 × /24 pools; plus rebuilding state from 10,000 existing assignments.
//!
//! Run: `cargo bench -p herald-controller --bench allocator`. The baseline is quadratic in the
//! number of Services on purpose: that is the cost being compared.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use herald_config::address::{IpFamily, IpRange, from_u128, parse_address_entry, to_u128};
use herald_controller::allocator::{Allocator, Pool, ServiceKey, ServiceRequest};

const SERVICES: usize = 10_000;

fn one_slash16() -> Vec<(String, Vec<IpRange>)> {
    vec![("big".to_string(), vec![range("10.0.0.0/16")])]
}

fn fifty_slash24() -> Vec<(String, Vec<IpRange>)> {
    (0..50)
        .map(|i| (format!("pool-{i:02}"), vec![range(&format!("10.1.{i}.0/24"))]))
        .collect()
}

fn range(entry: &str) -> IpRange {
    parse_address_entry(entry).expect("benchmark pool entry")
}

fn requests() -> Vec<ServiceRequest> {
    (0..SERVICES)
        .map(|i| ServiceRequest::auto(ServiceKey::new("bench", format!("svc-{i:05}")), IpFamily::V4))
        .collect()
}

fn herald_allocator(pools: &[(String, Vec<IpRange>)]) -> Allocator {
    let mut allocator = Allocator::new();
    let displaced = allocator.set_pools(
        pools
            .iter()
            .map(|(name, ranges)| Pool::new(name.clone(), ranges.clone()))
            .collect(),
    );
    assert!(displaced.is_empty());
    allocator
}

fn herald_allocate_all(allocator: &mut Allocator, requests: &[ServiceRequest]) -> Vec<IpAddr> {
    requests
        .iter()
        .map(|r| allocator.allocate(r).expect("pool has room").ips[0])
        .collect()
}

/// The baseline: pools in name order, each scanned from its first address until one is not in
/// use; one hash lookup per address passed over.
struct FirstFitScan {
    pools: Vec<(String, Vec<IpRange>)>,
    in_use: HashSet<IpAddr>,
    by_service: HashMap<ServiceKey, IpAddr>,
}

impl FirstFitScan {
    fn new(pools: &[(String, Vec<IpRange>)]) -> Self {
        let mut pools = pools.to_vec();
        pools.sort_by(|a, b| a.0.cmp(&b.0));
        FirstFitScan {
            pools,
            in_use: HashSet::new(),
            by_service: HashMap::new(),
        }
    }

    fn allocate(&mut self, key: &ServiceKey) -> Option<IpAddr> {
        if let Some(ip) = self.by_service.get(key) {
            return Some(*ip);
        }
        for (_, ranges) in &self.pools {
            for r in ranges {
                let (first, last) = (to_u128(r.first()), to_u128(r.last()));
                for value in first..=last {
                    let ip = from_u128(r.family(), value);
                    if !self.in_use.contains(&ip) {
                        self.in_use.insert(ip);
                        self.by_service.insert(key.clone(), ip);
                        return Some(ip);
                    }
                }
            }
        }
        None
    }
}

fn baseline_allocate_all(pools: &[(String, Vec<IpRange>)], requests: &[ServiceRequest]) -> Vec<IpAddr> {
    let mut scan = FirstFitScan::new(pools);
    requests
        .iter()
        .map(|r| scan.allocate(&r.key).expect("pool has room"))
        .collect()
}

fn allocate_10k(c: &mut Criterion) {
    let requests = requests();
    let mut group = c.benchmark_group("allocate_10k");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for (label, pools) in [("one_slash16", one_slash16()), ("fifty_slash24", fifty_slash24())] {
        // Both hand out the same addresses in the same order: the comparison is like for like.
        let mut check = herald_allocator(&pools);
        assert_eq!(
            herald_allocate_all(&mut check, &requests),
            baseline_allocate_all(&pools, &requests),
            "allocator and baseline disagree on {label}"
        );
        let empty = herald_allocator(&pools);
        group.bench_function(format!("herald/{label}"), |b| {
            b.iter_batched(
                || empty.clone(),
                |mut allocator| {
                    black_box(herald_allocate_all(&mut allocator, &requests));
                    allocator
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function(format!("first_fit_scan/{label}"), |b| {
            b.iter(|| black_box(baseline_allocate_all(&pools, &requests)))
        });
    }
    group.finish();
}

fn rebuild_10k(c: &mut Criterion) {
    let requests = requests();
    let pools = one_slash16();
    let mut source = herald_allocator(&pools);
    let existing = herald_allocate_all(&mut source, &requests);
    let empty = herald_allocator(&pools);
    let mut group = c.benchmark_group("rebuild_10k");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.bench_function("herald/restore_then_allocate", |b| {
        b.iter_batched(
            || empty.clone(),
            |mut allocator| {
                // What the controller does on start: restore every Service's status addresses,
                // then reconcile each one (which keeps them).
                for (request, ip) in requests.iter().zip(&existing) {
                    allocator.restore(request, &[*ip]).expect("restorable");
                }
                for request in &requests {
                    black_box(allocator.allocate(request).expect("keeps its address"));
                }
                allocator
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("herald/restore_only", |b| {
        b.iter_batched(
            || empty.clone(),
            |mut allocator| {
                for (request, ip) in requests.iter().zip(&existing) {
                    allocator.restore(request, &[*ip]).expect("restorable");
                }
                allocator
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, allocate_10k, rebuild_10k);
criterion_main!(benches);
