//! The real kube-rs controller against the lab's real Kubernetes control plane (kube-apiserver,
//! etcd, kube-controller-manager; see herald-e2e), running as its own ServiceAccount so the
//! RBAC of `config/deploy` is what it is allowed: restart keeps IPs, deletion frees an IP for a
//! pending Service, pool deletion moves a Service with an Event, sharing accepted and refused,
//! dual stack, loadBalancerClass filtering, and a bad pool gets a condition without disturbing
//! anything else. Each test has a lab (a control plane and one node) of its own.
//!
//! Needs root (the lab's network namespaces) and the control plane `make deps` builds; under
//! `CI=true` a missing prerequisite fails the test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use herald_config::process::LogFormat;
use herald_config::{IPAddressPool, IPAddressPoolSpec};
use herald_controller::config::Config;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The Kubernetes lab with no speakers and no controller (each test starts its own), and
/// clients for the test and for the controller under test.
struct ApiLab {
    lab: herald_e2e::lab::Lab,
    /// Admin: the test's own reads and writes.
    client: Client,
    /// The `herald-controller` ServiceAccount: what the controller under test runs as.
    controller_client: Client,
}

impl ApiLab {
    async fn start() -> ApiLab {
        // Another test in this binary may have installed it already.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init()
            .ok();
        if let Err(e) = herald_e2e::lab::check_prerequisites() {
            // Not skippable: the controller's behaviour is only proved against the real API.
            panic!("the reconciler tests need the lab (root, iproute2, curl): {e}");
        }
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "rc{}{}",
            std::process::id() % 10_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let lab = herald_e2e::lab::Lab::up(herald_e2e::lab::LabConfig {
            nodes: 1,
            start_controller: false,
            start_speakers: false,
            bpf_filesystem: false,
            ..herald_e2e::lab::LabConfig::new(&prefix)
        })
        .await
        .expect("lab comes up");
        let client = lab.client();
        let controller_client = lab
            .service_account_client("herald-controller")
            .await
            .expect("a token for the herald-controller ServiceAccount");
        ApiLab {
            lab,
            client,
            controller_client,
        }
    }

    async fn stop(self) {
        self.lab.down().await.expect("lab removed");
    }

    fn pools(&self) -> Api<IPAddressPool> {
        Api::namespaced(self.client.clone(), "herald-system")
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn pool(&self, name: &str, addresses: &[&str]) {
        let pool = IPAddressPool::new(name, IPAddressPoolSpec::with_addresses(addresses.iter().copied()));
        self.pools()
            .create(&PostParams::default(), &pool)
            .await
            .expect("pool created");
    }

    async fn service(&self, name: &str, extra: serde_json::Value) {
        let mut svc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        });
        merge(&mut svc, extra);
        let svc: Service = serde_json::from_value(svc).expect("Service");
        self.services()
            .create(&PostParams::default(), &svc)
            .await
            .expect("service created");
    }

    async fn ips(&self, name: &str) -> Vec<String> {
        let svc = self.services().get(name).await.expect("service exists");
        svc.status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.ip)
            .collect()
    }

    async fn wait_ips(&self, name: &str, want: &[&str]) {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        let (found, last) = poll_until(|| self.ips(name), |ips| *ips == want).await;
        assert!(found, "{name}: wanted {want:?}, still {last:?}");
    }

    /// Every Event's (reason, note) about a Service.
    async fn events(&self, name: &str) -> Vec<(String, String)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), "default");
        api.list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    async fn wait_event(&self, name: &str, reason: &str, note_contains: &str) {
        let (found, last) = poll_until(
            || self.events(name),
            |events| events.iter().any(|(r, n)| r == reason && n.contains(note_contains)),
        )
        .await;
        assert!(
            found,
            "{name}: no {reason} event containing {note_contains:?}; events: {last:?}"
        );
    }
}

struct RunningController {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), herald_controller::reconciler::Error>>,
}

fn start_controller(lab: &ApiLab, lb_class: &str) -> RunningController {
    start_controller_at(lab, lb_class, SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn start_controller_at(lab: &ApiLab, lb_class: &str, metrics_addr: SocketAddr) -> RunningController {
    start_controller_with(lab, controller_config(lb_class, metrics_addr))
}

/// The controller's configuration as `config/deploy` sets it, leader election on with the
/// default timing and Lease name (each test has a lab, hence a Lease, of its own).
fn controller_config(lb_class: &str, metrics_addr: SocketAddr) -> Config {
    Config {
        namespace: "herald-system".into(),
        lb_class: lb_class.into(),
        metrics_addr,
        log_format: LogFormat::Text,
        speaker_secret: "herald-speaker-auth".into(),
        leader_elect: true,
        leader_elect_lease_duration: Duration::from_secs(15),
        leader_elect_renew_deadline: Duration::from_secs(10),
        leader_elect_retry_period: Duration::from_secs(2),
        leader_elect_lease_name: "herald-controller".into(),
        pod_name: None,
    }
}

fn start_controller_with(lab: &ApiLab, config: Config) -> RunningController {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(herald_controller::reconciler::run_with_client(
        lab.controller_client.clone(),
        config,
        async {
            // A dropped sender stops the controller too.
            stopped.await.ok();
        },
    ));
    RunningController { stop, task }
}

impl RunningController {
    async fn stop(self) {
        // The controller may have ended on its own; the timeout below reports how.
        self.stop.send(()).ok();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("controller stops within 10s");
        result.expect("controller task").expect("controller ran without error");
    }

    /// Kills it without any cleanup (no Lease release): every task it started ends now.
    async fn crash(self) {
        self.task.abort();
        let ended = self.task.await;
        assert!(ended.is_err_and(|e| e.is_cancelled()), "aborted");
    }
}

/// Polls `probe` every 50 ms for up to 10 s until `done` accepts its value; returns whether it
/// did and the last value seen.
async fn poll_until<T, F, Fut>(mut probe: F, done: impl Fn(&T) -> bool) -> (bool, T)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = probe().await;
        if done(&value) {
            return (true, value);
        }
        if Instant::now() >= deadline {
            return (false, value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn eventually<F, Fut>(check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_until(check, |ok| *ok).await.0
}

fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

#[tokio::test]
async fn restart_keeps_every_ip_and_pending_services_take_only_free_ones() {
    let lab = ApiLab::start().await;
    lab.pool("main", &["10.80.0.1-10.80.0.4"]).await;
    let controller = start_controller(&lab, herald_config::DEFAULT_LB_CLASS);
    for (name, ip) in [("a", "10.80.0.1"), ("b", "10.80.0.2"), ("c", "10.80.0.3")] {
        lab.service(name, json!({})).await;
        lab.wait_ips(name, &[ip]).await;
    }
    controller.stop().await;

    // While the controller is down: free the lowest address and add a new Service.
    lab.services()
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete a");
    lab.service("d", json!({})).await;
    let controller = start_controller(&lab, herald_config::DEFAULT_LB_CLASS);
    lab.wait_ips("d", &["10.80.0.1"]).await;
    assert_eq!(lab.ips("b").await, ["10.80.0.2"]);
    assert_eq!(lab.ips("c").await, ["10.80.0.3"]);
    lab.wait_event("d", "IPAllocated", "assigned 10.80.0.1 from pool main")
        .await;
    assert!(
        !lab.events("b")
            .await
            .iter()
            .any(|(r, n)| r == "IPAllocated" && n.contains("changed")),
        "b was not renumbered"
    );
    controller.stop().await;
    lab.stop().await;
}

#[tokio::test]
async fn deleting_a_service_frees_its_ip_for_a_pending_one() {
    let lab = ApiLab::start().await;
    lab.pool("tiny", &["10.81.0.7/32"]).await;
    let controller = start_controller(&lab, herald_config::DEFAULT_LB_CLASS);
    lab.service("first", json!({})).await;
    lab.wait_ips("first", &["10.81.0.7"]).await;
    lab.service("second", json!({})).await;
    lab.wait_event("second", "AllocationFailed", "tiny").await;
    assert!(lab.ips("second").await.is_empty());

    lab.services()
        .delete("first", &DeleteParams::default())
        .await
        .expect("delete");
    lab.wait_ips("second", &["10.81.0.7"]).await;
    controller.stop().await;
    lab.stop().await;
}

#[tokio::test]
async fn deleting_a_pool_moves_its_services_with_an_event() {
    let lab = ApiLab::start().await;
    lab.pool("a-old", &["10.82.0.0/30"]).await;
    lab.pool("b-new", &["10.82.1.0/30"]).await;
    let controller = start_controller(&lab, herald_config::DEFAULT_LB_CLASS);
    lab.service("web", json!({})).await;
    lab.wait_ips("web", &["10.82.0.0"]).await;

    lab.pools()
        .delete("a-old", &DeleteParams::default())
        .await
        .expect("delete pool");
    lab.wait_ips("web", &["10.82.1.0"]).await;
    lab.wait_event("web", "IPAllocated", "no longer in any IPAddressPool")
        .await;
    let svc = lab.services().get("web").await.unwrap();
    assert_eq!(
        svc.annotations()
            .get("herald.io/ip-allocated-from-pool")
            .map(String::as_str),
        Some("b-new")
    );
    controller.stop().await;
    lab.stop().await;
}

#[tokio::test]
async fn an_edit_that_keeps_the_ip_in_the_pool_changes_nothing() {
    let lab = ApiLab::start().await;
    lab.pool("p", &["10.83.0.0/29"]).await;
    let controller = start_controller(&lab, herald_config::DEFAULT_LB_CLASS);
    lab.service("s1", json!({})).await;
    lab.wait_ips("s1", &["10.83.0.0"]).await;
    lab.service("s2", json!({})).await;
    lab.wait_ips("s2", &["10.83.0.1"]).await;
    // Shrink the pool from the bottom: s1's address leaves, s2's stays.
    // A patch, as kubectl would send: a get-then-replace races with the controller's status
    // writes (409).
    lab.pools()
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"addresses": ["10.83.0.1-10.83.0.7"]}})),
        )
        .await
        .expect("edit pool");
    lab.wait_event("s1", "IPAllocated", "10.83.0.0 is no longer in any IPAddressPool")
        .await;
    lab.wait_ips("s1", &["10.83.0.2"]).await;
    assert_eq!(lab.ips("s2").await, ["10.83.0.1"]);
    controller.stop().await;
    lab.stop().await;
}

#[tokio::test]
async fn sharing_is_accepted_for_disjoint_ports_and_refused_otherwise() {
    let lab = ApiLab::start().await;
    lab.pool("p", &["10.84.0.10-10.84.0.20"]).await;
    let controller = start_controller(&lab, herald_config::DEFAULT_LB_CLASS);
    let shared = |port: u16, protocol: &str| {
        json!({
            "metadata": {"annotations": {"herald.io/loadBalancerIPs": "10.84.0.15", "herald.io/allow-shared-ip": "dns"}},
            "spec": {"ports": [{"name": "p", "port": port, "protocol": protocol}]}
        })
    };
    lab.service("dns-tcp", shared(53, "TCP")).await;
    lab.service("dns-udp", shared(53, "UDP")).await;
    lab.wait_ips("dns-tcp", &["10.84.0.15"]).await;
    lab.wait_ips("dns-udp", &["10.84.0.15"]).await;

    lab.service("dns-tcp-again", shared(53, "TCP")).await;
    lab.wait_event("dns-tcp-again", "AllocationFailed", "10.84.0.15").await;
    assert!(lab.ips("dns-tcp-again").await.is_empty());

    let no_key = json!({"metadata": {"annotations": {"herald.io/loadBalancerIPs": "10.84.0.15"}},
                        "spec": {"ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]}});
    lab.service("no-key", no_key).await;
    lab.wait_event("no-key", "AllocationFailed", "10.84.0.15").await;
    controller.stop().await;
    lab.stop().await;
}

#[tokio::test]
async fn dual_stack_services_get_one_address_per_family() {
    let lab = ApiLab::start().await;
    lab.pool("dual", &["10.85.0.0/30", "fd00:85::/126"]).await;
    let controller = start_controller(&lab, herald_config::DEFAULT_LB_CLASS);
    lab.service(
        "both",
        json!({"spec": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}}),
    )
    .await;
    lab.wait_ips("both", &["10.85.0.0", "fd00:85::"]).await;
    lab.service(
        "v6-first",
        json!({"spec": {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6", "IPv4"]}}),
    )
    .await;
    lab.wait_ips("v6-first", &["fd00:85::1", "10.85.0.1"]).await;
    controller.stop().await;
    lab.stop().await;
}

#[tokio::test]
async fn only_services_of_our_class_or_no_class_are_handled() {
    let lab = ApiLab::start().await;
    lab.pool("p", &["10.86.0.0/29"]).await;
    let controller = start_controller(&lab, "herald.io/l2");
    lab.service("other", json!({"spec": {"loadBalancerClass": "example.com/other"}}))
        .await;
    lab.service("ours", json!({"spec": {"loadBalancerClass": "herald.io/l2"}}))
        .await;
    lab.wait_ips("ours", &["10.86.0.0"]).await;
    lab.service("unclassed", json!({})).await;
    lab.wait_ips("unclassed", &["10.86.0.1"]).await;
    // Give the controller time to (wrongly) act on the other class before checking it did not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(lab.ips("other").await.is_empty());
    assert!(
        lab.events("other").await.is_empty(),
        "another class's Service is left alone"
    );

    // Turning a handled Service into a ClusterIP Service releases its address.
    lab.services()
        .patch(
            "ours",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP", "loadBalancerClass": null}})),
        )
        .await
        .expect("type change");
    lab.wait_event("ours", "ClearAssignment", "type ClusterIP").await;
    lab.service("late", json!({})).await;
    lab.wait_ips("late", &["10.86.0.0"]).await;
    controller.stop().await;
    lab.stop().await;
}

#[tokio::test]
async fn a_bad_pool_gets_an_invalid_condition_and_disturbs_nothing() {
    let lab = ApiLab::start().await;
    lab.pool("good", &["10.87.0.0/30"]).await;
    let controller = start_controller(&lab, herald_config::DEFAULT_LB_CLASS);
    lab.service("web", json!({})).await;
    lab.wait_ips("web", &["10.87.0.0"]).await;

    // A reversed IPv4 range is refused by the CRD schema already; the IPv6 one is the
    // controller's to find (CEL cannot order IPv6 addresses).
    lab.pool("bad", &["fd00:87::20-fd00:87::10"]).await;
    lab.pool("overlapping", &["10.87.0.0/31"]).await;
    let invalid_message = |name: &'static str| {
        let pools = lab.pools();
        async move {
            let pool = pools.get_status(name).await.unwrap();
            pool.status
                .as_ref()
                .and_then(|s| s.conditions.first())
                .filter(|c| c.status == "False" && c.reason == "Invalid")
                .map(|c| c.message.clone())
        }
    };
    let (found, bad) = poll_until(|| invalid_message("bad"), Option::is_some).await;
    assert!(found, "the bad pool gets an Invalid condition");
    let (found, overlapping) = poll_until(|| invalid_message("overlapping"), Option::is_some).await;
    assert!(found, "the overlapping pool gets an Invalid condition");
    assert!(bad.unwrap().contains("reversed range"));
    assert!(overlapping.unwrap().contains("overlaps 10.87.0.0/30 of pool \"good\""));

    let good = eventually(|| async {
        let good = lab.pools().get_status("good").await.unwrap();
        good.status.is_some_and(|s| {
            s.assigned_ipv4 == 1 && s.available_ipv4 == 3 && s.conditions.first().is_some_and(|c| c.status == "True")
        })
    })
    .await;
    assert!(good, "the good pool reports its counters and stays Ready");
    lab.service("web2", json!({})).await;
    lab.wait_ips("web2", &["10.87.0.1"]).await;
    assert_eq!(lab.ips("web").await, ["10.87.0.0"]);
    controller.stop().await;
    lab.stop().await;
}

#[tokio::test]
async fn bad_service_input_is_reported_and_nothing_else_changes() {
    let lab = ApiLab::start().await;
    lab.pool("p", &["10.88.0.0/30"]).await;
    lab.pool("q", &["10.88.1.0/30"]).await;
    let controller = start_controller(&lab, herald_config::DEFAULT_LB_CLASS);
    lab.service(
        "unknown-pool",
        json!({"metadata": {"annotations": {"herald.io/address-pool": "nope"}}}),
    )
    .await;
    lab.service(
        "outside",
        json!({"metadata": {"annotations": {"herald.io/loadBalancerIPs": "192.0.2.1"}}}),
    )
    .await;
    lab.service(
        "legacy",
        json!({"metadata": {"annotations": {"metallb.universe.tf/address-pool": "q"}}}),
    )
    .await;
    lab.wait_event("unknown-pool", "AllocationFailed", "nope").await;
    lab.wait_event("outside", "AllocationFailed", "192.0.2.1").await;
    // MetalLB's spelling is honoured: the named pool, not the first free address.
    lab.wait_ips("legacy", &["10.88.1.0"]).await;
    lab.wait_event("legacy", "DeprecatedAnnotation", "use herald.io/address-pool instead")
        .await;
    // A forwarding mode the speakers cannot use is named; the Service gets its address anyway.
    lab.service(
        "odd-forwarding",
        json!({"metadata": {"annotations": {"herald.io/forwarding": "direct"}}}),
    )
    .await;
    lab.wait_event(
        "odd-forwarding",
        "InvalidAnnotation",
        "\"direct\" is neither \"dsr\" nor \"snat\"",
    )
    .await;
    lab.wait_ips("odd-forwarding", &["10.88.0.0"]).await;
    controller.stop().await;
    lab.stop().await;
}

/// A plain HTTP/1.0 GET: (status code, body).
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

#[tokio::test]
async fn health_and_metrics_report_real_state() {
    let lab = ApiLab::start().await;
    lab.pool("p", &["10.89.0.0/30"]).await;
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let controller = start_controller_at(&lab, herald_config::DEFAULT_LB_CLASS, free);
    let ready = eventually(|| async { http_get(free, "/readyz").await.is_some_and(|(code, _)| code == 200) }).await;
    assert!(ready, "ready once rebuilt and the API answers");
    assert_eq!(http_get(free, "/healthz").await.map(|(c, _)| c), Some(200));
    // Ready comes first (a standby is ready too); the lone replica then wins the Lease.
    let (leads, last) = poll_until(|| role(free), |r| r.as_deref() == Some("leader")).await;
    assert!(leads, "a lone replica leads: {last:?}");
    lab.service("web", json!({})).await;
    lab.wait_ips("web", &["10.89.0.0"]).await;
    let (found, metrics) = poll_until(
        || async {
            http_get(free, "/metrics")
                .await
                .map(|(_, body)| body)
                .unwrap_or_default()
        },
        |body| body.contains("herald_allocator_addresses_in_use{pool=\"p\",family=\"ipv4\"} 1"),
    )
    .await;
    assert!(found, "pool gauge in /metrics: {metrics}");
    assert!(metrics.contains("herald_controller_allocations_total{outcome=\"allocated\"} 1"));
    assert!(metrics.contains("herald_controller_leader 1"), "{metrics}");

    // The API server goes away: not ready, with the reason.
    lab.lab.stop_apiserver().await;
    let (found, last) = poll_until(
        || http_get(free, "/readyz"),
        |r| r.as_ref().is_some_and(|(code, _)| *code == 503),
    )
    .await;
    assert!(found, "not ready without the API server: {last:?}");
    assert!(last.unwrap().1.contains("not ready: API server"));
    controller.stop().await;
    lab.stop().await;
}

/// `leader` or `standby`, from a ready replica's `/readyz` body (`ok: <role>`).
async fn role(addr: SocketAddr) -> Option<String> {
    let (code, body) = http_get(addr, "/readyz").await?;
    (code == 200)
        .then(|| body.trim().strip_prefix("ok: ").map(str::to_string))
        .flatten()
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Every Service's ingress IPs, by name.
async fn all_ips(lab: &ApiLab) -> std::collections::BTreeMap<String, Vec<String>> {
    lab.services()
        .list(&ListParams::default())
        .await
        .expect("services")
        .items
        .into_iter()
        .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"))
        .map(|s| {
            let ips = s
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|lb| lb.ingress)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| i.ip)
                .collect();
            (s.metadata.name.unwrap_or_default(), ips)
        })
        .collect()
}

/// No address is held by two Services.
fn assert_distinct(ips: &std::collections::BTreeMap<String, Vec<String>>) {
    let mut seen = std::collections::BTreeMap::new();
    for (service, ips) in ips {
        for ip in ips {
            if let Some(other) = seen.insert(ip.clone(), service.clone()) {
                panic!("{ip} is handed out twice: {other} and {service}; all: {ips:?}");
            }
        }
    }
}

async fn lease_holder(lab: &ApiLab) -> (Option<String>, i32) {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(lab.client.clone(), "herald-system");
    let spec = leases
        .get("herald-controller")
        .await
        .expect("the Lease exists")
        .spec
        .unwrap_or_default();
    (spec.holder_identity, spec.lease_transitions.unwrap_or(0))
}

#[tokio::test]
async fn two_replicas_one_leads_and_a_standby_takes_over_a_crash_without_renumbering() {
    let lab = ApiLab::start().await;
    lab.pool("ha", &["10.90.0.0/25"]).await;
    let (lease, renew, retry) = (
        Duration::from_secs(2),
        Duration::from_millis(1500),
        Duration::from_millis(300),
    );
    let fast = |addr| Config {
        leader_elect_lease_duration: lease,
        leader_elect_renew_deadline: renew,
        leader_elect_retry_period: retry,
        ..controller_config(herald_config::DEFAULT_LB_CLASS, addr)
    };
    let addrs = [free_addr(), free_addr()];
    let mut replicas: Vec<Option<RunningController>> = addrs
        .iter()
        .map(|addr| Some(start_controller_with(&lab, fast(*addr))))
        .collect();

    // Exactly one leads; the other is a ready standby.
    let (found, roles) = poll_until(
        || async { [role(addrs[0]).await, role(addrs[1]).await] },
        |roles| {
            let mut r: Vec<_> = roles.iter().map(|r| r.as_deref()).collect();
            r.sort();
            r == [Some("leader"), Some("standby")]
        },
    )
    .await;
    assert!(found, "one leader and one standby: {roles:?}");
    let leader = roles.iter().position(|r| r.as_deref() == Some("leader")).unwrap();
    let standby = 1 - leader;
    for (i, gauge) in [(leader, 1), (standby, 0)] {
        let metrics = http_get(addrs[i], "/metrics").await.unwrap().1;
        assert!(
            metrics.contains(&format!("herald_controller_leader {gauge}")),
            "replica {i}: {metrics}"
        );
    }
    let (holder, transitions_before) = lease_holder(&lab).await;
    let first_leader = holder.expect("the Lease names the leader");

    for i in 0..6 {
        lab.service(&format!("before-{i}"), json!({})).await;
    }
    let (found, before) = poll_until(
        || all_ips(&lab),
        |ips| ips.len() == 6 && ips.values().all(|ips| ips.len() == 1),
    )
    .await;
    assert!(found, "every Service gets an address: {before:?}");
    assert_distinct(&before);
    // The standby wrote nothing: every Event Herald published comes from the leader.
    // (kube-apiserver's own controllers, e.g. the ClusterIP repair loop, publish
    // Events about the same Services; they are not ours to count.)
    let events: Api<Event> = Api::namespaced(lab.client.clone(), "default");
    let reporters: std::collections::BTreeSet<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("herald-controller"))
        .filter_map(|e| e.reporting_instance)
        .collect();
    assert_eq!(
        reporters,
        std::collections::BTreeSet::from([first_leader.clone()]),
        "only the leader publishes"
    );

    // A client keeps creating Services (one every 100 ms for 4 s) while the leader crashes.
    let creator = {
        let services = lab.services();
        tokio::spawn(async move {
            let mut created = Vec::new();
            for i in 0..40 {
                let svc: Service = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("during-{i}"), "namespace": "default"},
                    "spec": {"type": "LoadBalancer", "selector": {"app": "x"}, "ports": [{"port": 80, "protocol": "TCP"}]}
                }))
                .unwrap();
                services
                    .create(&PostParams::default(), &svc)
                    .await
                    .expect("service created");
                created.push((format!("during-{i}"), Instant::now()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            created
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every Service with an address right before the crash, to compare after.
    let at_crash = all_ips(&lab).await;
    replicas[leader].take().unwrap().crash().await;
    let crashed = Instant::now();

    let (found, _) = poll_until(|| role(addrs[standby]), |r| r.as_deref() == Some("leader")).await;
    assert!(found, "the standby takes over");
    let takeover = crashed.elapsed();
    eprintln!("takeover: standby leads {takeover:?} after the leader crashed");
    assert!(
        takeover <= lease + retry + Duration::from_millis(500),
        "took over in {takeover:?}, lease {lease:?} + retry {retry:?}"
    );
    let (holder, transitions_after) = lease_holder(&lab).await;
    assert_ne!(holder.as_deref(), Some(first_leader.as_str()));
    assert_eq!(transitions_after, transitions_before + 1);

    let created = creator.await.unwrap();
    let (found, after) = poll_until(
        || all_ips(&lab),
        |ips| ips.len() == 46 && ips.values().all(|ips| ips.len() == 1),
    )
    .await;
    let pending: Vec<_> = after.iter().filter(|(_, ips)| ips.is_empty()).collect();
    assert!(
        found,
        "every Service gets an address after the takeover; pending: {pending:?}"
    );
    assert_distinct(&after);
    for (service, ips) in at_crash.iter().filter(|(_, ips)| !ips.is_empty()) {
        assert_eq!(&after[service], ips, "{service} was renumbered");
    }
    for (service, ips) in &before {
        assert_eq!(&after[service], ips, "{service} was renumbered");
    }
    let moved: Vec<_> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.note
                .as_deref()
                .is_some_and(|n| n.contains("changed from") || n.contains("moved from"))
        })
        .map(|e| e.note)
        .collect();
    assert!(moved.is_empty(), "nothing moved: {moved:?}");

    // How long Services created while nobody led waited: at most the takeover, plus about a
    // second once the new leader holds the Lease.
    let created_after_crash: Vec<_> = created.iter().filter(|(_, at)| *at > crashed).collect();
    assert!(
        !created_after_crash.is_empty(),
        "the client kept creating through the takeover"
    );
    eprintln!(
        "{} Services created after the crash, {} before it had no address at the crash",
        created_after_crash.len(),
        at_crash.values().filter(|ips| ips.is_empty()).count()
    );

    // The new leader gets the next Service at once.
    let asked = Instant::now();
    lab.service("late", json!({})).await;
    let (found, ips) = poll_until(|| lab.ips("late"), |ips| !ips.is_empty()).await;
    assert!(found);
    eprintln!(
        "a Service created after the takeover got {ips:?} in {:?}",
        asked.elapsed()
    );
    assert_distinct(&all_ips(&lab).await);

    replicas[standby].take().unwrap().stop().await;
    // A graceful stop gives the Lease up.
    assert_eq!(lease_holder(&lab).await.0.as_deref().unwrap_or(""), "");
    lab.stop().await;
}
