//! One pass of the speaker's loop at 1,000 and 10,000 Services, part by part: judging pools,
//! deriving each Service's facts (from scratch, and from the cache when nothing changed), the
//! plan (units, eligibility, election: with nothing remembered, with nothing changed, and
//! after one Service changed), the dataplane's desired state, and the diff of an unchanged
//! desired state against the maps (in memory; no map writes), and the ServiceL2Status writer's
//! planning (all Services, and one changed Service).
//!
//! `cargo bench -p herald-speaker --bench speaker_pass`
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use herald_config::{IPAddressPool, L2Advertisement, ServiceL2Status, ServiceL2StatusStatus};
use herald_speaker::cluster::facts::{Changes, FactsCache};
use herald_speaker::cluster::in_use::ConfigMemory;
use herald_speaker::dataplane::maps::{FakeServiceMaps, MapSync};
use herald_speaker::dataplane::{DesiredState, Forwarding, NodeInput, desired};
use herald_speaker::membership::{MemberInfo, MemberState, MembershipView, NodeHealth};
use herald_speaker::plan::{Inputs, Planner, plan};
use herald_speaker::status::{self, Objects, Scope};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

struct World {
    nodes: Vec<Node>,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    pools: Vec<IPAddressPool>,
    advertisements: Vec<L2Advertisement>,
    view: MembershipView,
    health: NodeHealth,
}

const NODES: usize = 3;

fn world(count: usize) -> World {
    let health = NodeHealth {
        announcer_ready: true,
        dataplane_ready: true,
        interfaces: ["eth0".to_string()].into(),
        ..Default::default()
    };
    let nodes = (1..=NODES)
        .map(|i| {
            serde_json::from_value(json!({"metadata": {"name": format!("node{i}")},
                "status": {"addresses": [{"type": "InternalIP", "address": format!("10.203.0.{}", 10 + i)}]}}))
            .unwrap()
        })
        .collect();
    let ip = |i: usize| format!("10.90.{}.{}", i / 256, i % 256);
    let services = (0..count)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("svc-{i}"), "namespace": "default", "uid": format!("uid-{i}"), "resourceVersion": "1",
                    "annotations": {"herald.io/ip-allocated-from-pool": "bench"}},
                "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
                "status": {"loadBalancer": {"ingress": [{"ip": ip(i)}]}}}))
            .unwrap()
        })
        .collect();
    let slices = (0..count)
        .map(|i| {
            let endpoints: Vec<_> = (0..2)
                .map(|e| {
                    json!({"addresses": [format!("10.244.{}.{}", e + 1, i % 250 + 2)],
                    "nodeName": format!("node{}", (i + e) % NODES + 1), "conditions": {"ready": true}})
                })
                .collect();
            serde_json::from_value(json!({
                "metadata": {"name": format!("svc-{i}-abcde"), "namespace": "default", "resourceVersion": "1",
                    "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
                "addressType": "IPv4", "endpoints": endpoints,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}))
            .unwrap()
        })
        .collect();
    let pools = vec![
        serde_json::from_value(json!({"apiVersion": format!("{}/{}", herald_config::GROUP, herald_config::VERSION), "kind": "IPAddressPool",
            "metadata": {"name": "bench", "namespace": "herald-system"},
            "spec": {"addresses": ["10.90.0.0/16"]}}))
        .unwrap(),
    ];
    let advertisements = vec![
        serde_json::from_value(json!({"apiVersion": format!("{}/{}", herald_config::GROUP, herald_config::VERSION), "kind": "L2Advertisement",
            "metadata": {"name": "all", "namespace": "herald-system"}, "spec": {}}))
        .unwrap(),
    ];
    let members = (1..=NODES)
        .map(|i| {
            (
                format!("node{i}"),
                MemberInfo {
                    address: format!("10.203.0.{}:7946", 10 + i).parse().unwrap(),
                    state: MemberState::Alive,
                    incarnation: 1,
                    health: Some(health.clone()),
                    host_up: false,
                    rejoining: false,
                },
            )
        })
        .collect();
    World {
        nodes,
        services,
        slices,
        pools,
        advertisements,
        view: MembershipView {
            local: "node1".into(),
            members,
            settled: true,
            presumed_dead: 0,
        },
        health,
    }
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    for n in [1_000usize, 10_000] {
        let w = world(n);
        let nodes: Vec<&Node> = w.nodes.iter().collect();
        let services: Vec<&Service> = w.services.iter().collect();
        let slices: Vec<&EndpointSlice> = w.slices.iter().collect();
        let now = Timestamp::from_second(1_000_000).unwrap();
        let mut memory = ConfigMemory::new();
        let in_use = memory.judge(&w.pools, &w.advertisements, now);
        let mut cache = FactsCache::new();
        let derived = cache.derive_all(&services, &slices, "herald.io/l2");
        let inputs = Inputs {
            node: "node1",
            peer_port: 7946,
            nodes: &nodes,
            speaker_nodes: None,
            services: &derived,
            pools: &in_use.pools,
            advertisements: &in_use.advertisements,
            view: &w.view,
            local_health: &w.health,
            require_dataplane: true,
        };
        let planned = plan(&inputs);
        assert_eq!(planned.services.len(), n, "every Service reaches the dataplane");
        assert!(!planned.owned.is_empty(), "node1 owns some IPs");
        c.bench_function(&format!("judge pools/{n}"), |b| {
            b.iter(|| black_box(memory.judge(&w.pools, &w.advertisements, now)))
        });
        c.bench_function(&format!("derive Services, cold/{n}"), |b| {
            b.iter(|| black_box(FactsCache::new().derive_all(&services, &slices, "herald.io/l2")))
        });
        c.bench_function(&format!("derive Services, cached/{n}"), |b| {
            b.iter(|| black_box(cache.derive_all(&services, &slices, "herald.io/l2")))
        });
        c.bench_function(&format!("plan, nothing remembered/{n}"), |b| {
            b.iter(|| black_box(plan(&inputs)))
        });
        let mut planner = Planner::default();
        planner.plan(&inputs);
        c.bench_function(&format!("plan, nothing changed/{n}"), |b| {
            b.iter(|| black_box(planner.plan(&inputs)))
        });
        // One Service changed, as a watch event reports it: the cache derives that Service
        // again and the planner judges its unit.
        let mut edited = Arc::new(w.services[n / 2].clone());
        let edited_key = ("default".to_string(), format!("svc-{}", n / 2));
        let slice_of = |_: &str, name: &str| {
            let i: usize = name.strip_prefix("svc-")?.strip_suffix("-abcde")?.parse().ok()?;
            Some(Arc::new(w.slices[i].clone()))
        };
        let mut version = 1u64;
        c.bench_function(&format!("derive changed + plan, one Service changed/{n}"), |b| {
            b.iter(|| {
                version += 1;
                let service = Arc::make_mut(&mut edited);
                service.metadata.resource_version = Some(version.to_string());
                let policy = if version.is_multiple_of(2) { "Local" } else { "Cluster" };
                service.spec.as_mut().unwrap().external_traffic_policy = Some(policy.to_string());
                let changes = Changes {
                    services: [edited_key.clone()].into(),
                    ..Changes::none()
                };
                let current = edited.clone();
                let derived = cache.derive_changed(&changes, |_, _| Some(current.clone()), slice_of, "herald.io/l2");
                black_box(planner.plan(&Inputs {
                    services: &derived,
                    ..inputs
                }))
            })
        });
        let node = NodeInput {
            name: "node1".into(),
            addresses: vec!["10.203.0.11".parse().unwrap()],
            forwarding: Forwarding::Dsr,
            tunnel_peers: BTreeMap::from([
                ("node2".to_string(), vec!["10.203.0.12".parse().unwrap()]),
                ("node3".to_string(), vec!["10.203.0.13".parse().unwrap()]),
            ]),
            dead_nodes: Default::default(),
        };
        c.bench_function(&format!("dataplane desired/{n}"), |b| {
            b.iter(|| black_box(desired(&planned.services, &node)))
        });
        let want = desired(&planned.services, &node);
        let mut maps = FakeServiceMaps::default();
        let mut sync = MapSync::resume(&maps).unwrap();
        sync.apply(&mut maps, &want).unwrap();
        c.bench_function(&format!("dataplane diff, nothing changed/{n}"), |b| {
            b.iter(|| black_box(sync.apply(&mut maps, &want).unwrap()))
        });
        // One Service's endpoints changed, as the speaker's pass hands it over: the whole list,
        // every other Service the same Arc as before.
        let mut state = DesiredState::default();
        let mut inputs_now = planned.services.clone();
        state.update(&inputs_now, &node);
        sync.apply(&mut maps, &state.desired()).unwrap();
        let changing = inputs_now.len() / 2;
        let (one, other) = {
            let mut a = (*inputs_now[changing]).clone();
            let mut b = a.clone();
            a.endpoints.truncate(1);
            b.endpoints.reverse();
            b.endpoints.truncate(1);
            (Arc::new(a), Arc::new(b))
        };
        let mut flip = false;
        c.bench_function(&format!("dataplane, one Service changed: update + write/{n}"), |b| {
            b.iter(|| {
                flip = !flip;
                inputs_now[changing] = if flip { one.clone() } else { other.clone() };
                let changes = state.update(&inputs_now, &node);
                black_box(sync.apply_changes(&mut maps, &changes).unwrap())
            })
        });
        // What the announcer answers on: every owned IP on the links the plan gave it.
        let answered: BTreeMap<_, _> = planned
            .owned
            .iter()
            .map(|(ip, target)| (*ip, target.interfaces.clone().unwrap_or_default()))
            .collect();
        c.bench_function(
            &format!("status writes, join the plan with what is answered/{n}"),
            |b| b.iter(|| black_box(status::really_announced(&planned.announced, &answered))),
        );
        let announced_now = status::really_announced(&planned.announced, &answered);
        // The ServiceL2Status writer with every object written as wanted: node1's for the
        // Services it announces, node2's for the rest (one object per Service, as in a cluster).
        let objects = Objects::from_list(w.services.iter().map(|service| {
            let name = service.metadata.name.clone().unwrap();
            let key = ("default".to_string(), name.clone());
            let (node, ips, interfaces) = match announced_now.get(&key) {
                Some(a) => (
                    "node1",
                    a.ips.iter().map(ToString::to_string).collect(),
                    a.interfaces.clone(),
                ),
                None => (
                    "node2",
                    vec![
                        service
                            .status
                            .as_ref()
                            .unwrap()
                            .load_balancer
                            .as_ref()
                            .unwrap()
                            .ingress
                            .as_ref()
                            .unwrap()[0]
                            .ip
                            .clone()
                            .unwrap(),
                    ],
                    vec!["eth0".to_string()],
                ),
            };
            let mut object = ServiceL2Status::new(&status::status_name("default", &name, node), Default::default());
            object.metadata.labels = Some(BTreeMap::from([
                (herald_config::l2status::NODE_LABEL.to_string(), node.to_string()),
                (
                    herald_config::l2status::SERVICE_NAMESPACE_LABEL.to_string(),
                    "default".to_string(),
                ),
                (herald_config::l2status::SERVICE_NAME_LABEL.to_string(), name.clone()),
            ]));
            object.status = Some(ServiceL2StatusStatus {
                node: node.to_string(),
                service_namespace: "default".to_string(),
                service_name: name,
                ips,
                interfaces,
            });
            object
        }));
        let written = BTreeMap::new();
        assert!(status::plan_writes(&objects, "node1", &announced_now, &written, &Scope::Everything, now).is_empty());
        c.bench_function(&format!("status writes, all Services, nothing to write/{n}"), |b| {
            b.iter(|| {
                black_box(status::plan_writes(
                    &objects,
                    "node1",
                    &announced_now,
                    &written,
                    &Scope::Everything,
                    now,
                ))
            })
        });
        // One announced Service changed its interfaces: the writer diffs what it announces and
        // plans that Service alone.
        let mut announced = announced_now.clone();
        let changed_key = announced.keys().nth(announced.len() / 2).unwrap().clone();
        let mut flip = false;
        c.bench_function(&format!("status writes, one Service changed: diff + plan/{n}"), |b| {
            b.iter(|| {
                flip = !flip;
                let before = announced.clone();
                announced.get_mut(&changed_key).unwrap().interfaces =
                    vec![if flip { "eth1" } else { "eth0" }.to_string()];
                let scope = Scope::Services(status::changed_services(&before, &announced));
                black_box(status::plan_writes(
                    &objects, "node1", &announced, &written, &scope, now,
                ))
            })
        });
        let services_again = planned.services.clone();
        c.bench_function(&format!("compare dataplane inputs/{n}"), |b| {
            b.iter(|| black_box(services_again == planned.services))
        });
    }
    c.final_summary();
}
