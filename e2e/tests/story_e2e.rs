//! The end-to-end suite: the user's story through Herald's real binaries in the lab (network
//! namespaces, a real Kubernetes control plane, real `kubectl`, a client that reaches Services
//! over ARP/NDP and the eBPF service map). One scenario per test, each in its own lab.
//!
//! Needs root (namespaces, eBPF) and the workspace binaries (`cargo build --workspace --bins`,
//! which `make test` does first). Under `CI=true` a missing prerequisite fails the test.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use herald_config::{IPAddressPool, ServiceL2Status};
use herald_e2e::lab::{Lab, LabConfig};
use herald_e2e::story::keepalive::{self, KeepAlive};
use herald_e2e::story::{self, Failover, Fault};
use herald_e2e::{observability, soak};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;

/// A lab with the demo's pool, advertisement, backends and Service, or `None` (skip) outside CI
/// when it cannot run here.
async fn lab(tag: &str) -> Option<Lab> {
    // Another test in this binary may have installed it already.
    tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init()
        .ok();
    if let Err(e) = herald_e2e::lab::check_prerequisites() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the end-to-end suite must run under CI: {e}");
        }
        eprintln!("skipping: {e}");
        return None;
    }
    let prefix = format!("{tag}{}", std::process::id() % 10_000);
    let config = LabConfig {
        nodes: 3,
        ..LabConfig::new(&prefix)
    };
    Some(Lab::up(config).await.expect("lab comes up"))
}

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), app.to_string())])
}

async fn ips_of(lab: &Lab, name: &str) -> Vec<IpAddr> {
    let api: Api<Service> = Api::namespaced(lab.client(), "default");
    match api.get(name).await {
        Ok(svc) => herald_config::service::ingress_ips(&svc),
        Err(_) => Vec::new(),
    }
}

/// Polls `check` every 100 ms for up to `limit`.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn owners_of(lab: &Lab, service: &str) -> Vec<String> {
    try_owners_of(lab, service).await.unwrap_or_default()
}

/// The nodes the ServiceL2Status objects of `service` name; `None` when the list fails (the
/// API server is not answering), which says nothing about the objects.
async fn try_owners_of(lab: &Lab, service: &str) -> Option<Vec<String>> {
    let api: Api<ServiceL2Status> = Api::namespaced(lab.client(), "herald-system");
    api.list(&ListParams::default()).await.ok().map(|l| {
        l.items
            .into_iter()
            .filter_map(|s| s.status)
            .filter(|s| s.service_name == service)
            .map(|s| s.node)
            .collect()
    })
}

/// Within a few seconds the demo Service's ServiceL2Status objects name the node the client
/// sends `ip`'s traffic to (its neighbour entry, which follows gratuitous ARP), and only it.
async fn assert_status_names_the_answering_node(lab: &Lab, ip: IpAddr, when: &str) {
    let named = eventually(Duration::from_secs(10), || async {
        match story::node_answering(lab, ip).await.ok().flatten() {
            Some(node) => owners_of(lab, "web").await == vec![node],
            None => false,
        }
    })
    .await;
    assert!(
        named,
        "{when}: ServiceL2Status names {:?}, the client sends to {:?}",
        owners_of(lab, "web").await,
        story::node_answering(lab, ip).await
    );
}

async fn events_of(lab: &Lab, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(lab.client(), "default");
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
                .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

async fn curl(lab: &Lab, url: &str) -> String {
    let client = lab.client_namespace().to_string();
    story::reach(lab, &client, url)
        .await
        .unwrap_or_else(|e| panic!("{url} unreachable: {e}"))
}

/// LIST requests for Services kube-apiserver has served so far (its `/metrics`).
async fn service_lists(lab: &Lab) -> f64 {
    let request = http::Request::get("/metrics").body(Vec::new()).expect("request");
    let metrics = lab
        .client()
        .request_text(request)
        .await
        .expect("kube-apiserver /metrics");
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("verb=\"LIST\"")
                && l.contains("resource=\"services\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Injects `fault` on the owner of `ip` while the client probes, prints what happened, and
/// checks that another node took the address over.
async fn fault_moves_the_ip(lab: &Lab, ip: IpAddr, fault: Fault) -> Failover {
    let failover = story::measure_failover(lab, ip, fault).await.expect("measured");
    eprintln!(
        "{}: {} -> {:?}, announced after {:?} ms, traffic after {:?} ms; {} of {} requests failed at {:?} ms",
        fault.describe(&failover.old_owner),
        failover.old_owner,
        failover.new_owner,
        failover.kill_to_garp_ms,
        failover.kill_to_traffic_ms,
        failover.failed_requests,
        failover.requests,
        failover.failed_at_ms
    );
    assert!(
        failover.new_owner.as_ref().is_some_and(|n| *n != failover.old_owner),
        "{}: another node took the address over",
        fault.name()
    );
    failover
}

fn quiet() -> impl Fn(&str) {
    |_line: &str| {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_pool_and_service_get_an_ip_the_owner_answers_for() {
    let Some(lab) = lab("sa").await else { return };
    let started = Instant::now();
    story::apply_demo_objects(&lab, &quiet())
        .await
        .expect("objects applied");
    let ip = story::wait_for_ip(&lab, Duration::from_secs(10)).await.expect("an IP");
    eprintln!(
        "IP {ip} in status {} ms after the Service was applied",
        started.elapsed().as_millis()
    );
    let answer = curl(&lab, &format!("http://{ip}/")).await;
    assert!(answer.contains("web-"), "a backend answered: {answer}");
    // The backends sit on two different nodes, so one of them is always remote from the
    // owner: both must come to see the client's own address (DSR, not SNAT to the owner). Right
    // after start-up a speaker may still reach a peer with SNAT until it has heard that the
    // peer's dataplane runs, so this waits (bounded) for the last answer of each to say so.
    let client = lab.client_namespace().to_string();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let dsr = |seen: &BTreeMap<String, String>| seen.len() == 2 && seen.values().all(|p| p == "10.203.0.100");
    while !dsr(&seen) && Instant::now() < deadline {
        let out = lab
            .exec_in(&client, &["curl", "-s", "-m", "2", "-D", "-", &format!("http://{ip}/")])
            .await
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // The echo server listens on both families: an IPv4 client shows as [::ffff:a.b.c.d].
        let peer = text
            .lines()
            .find_map(|l| l.strip_prefix("x-herald-client: "))
            .and_then(|v| v.trim().parse::<std::net::SocketAddr>().ok())
            .map(|peer| peer.ip().to_canonical().to_string());
        let backend = text.lines().last().unwrap_or_default().trim().to_string();
        if let Some(peer) = peer {
            seen.insert(backend, peer);
        }
    }
    assert!(
        dsr(&seen),
        "both backends see the client's address 10.203.0.100 within 30 s: {seen:?}"
    );

    let owner = story::wait_for_stable_owner(&lab, Duration::from_millis(800), Duration::from_secs(15))
        .await
        .expect("an owner");
    let owner_mac = story::node_mac(&lab, lab.node_index(&owner).unwrap()).await.unwrap();
    let client = lab.client_namespace().to_string();
    let arping = lab
        .exec_in(
            &client,
            &["arping", "-c", "2", "-w", "3", "-I", "eth0", &ip.to_string()],
        )
        .await
        .expect("arping runs");
    let text = String::from_utf8_lossy(&arping.stdout).to_lowercase();
    assert!(
        text.contains(&owner_mac),
        "the client resolves {ip} to {owner}'s MAC {owner_mac}: {text}"
    );
    let replies = text.lines().filter(|l| l.contains("reply from")).count();
    let from_owner = text
        .lines()
        .filter(|l| l.contains("reply from") && l.contains(&owner_mac))
        .count();
    assert!(replies >= 1 && replies == from_owner, "only the owner answers: {text}");
    lab.down().await.expect("lab down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_killing_the_owner_moves_the_ip_and_sigterm_hands_over() {
    let Some(lab) = lab("sb").await else { return };
    story::apply_demo_objects(&lab, &quiet()).await.unwrap();
    let ip = story::wait_for_ip(&lab, Duration::from_secs(10)).await.unwrap();
    curl(&lab, &format!("http://{ip}/")).await;

    // Each fault moves the IP to another node, whose gratuitous ARP reaches the client, and
    // then the status names the node the client sends to.
    for (fault, pause) in [(Fault::Kill, 0), (Fault::Term, 3), (Fault::NodeFreeze, 3)] {
        // Let a restarted (or thawed) speaker settle before the next fault.
        tokio::time::sleep(Duration::from_secs(pause)).await;
        let failover = fault_moves_the_ip(&lab, ip, fault).await;
        assert!(
            failover.kill_to_garp_ms.is_some(),
            "{}: the new owner's gratuitous ARP reached the client",
            fault.name()
        );
        curl(&lab, &format!("http://{ip}/")).await;
        assert_status_names_the_answering_node(&lab, ip, fault.name()).await;
    }

    // After traffic and three failovers, every metric the shipped dashboard and alert rules
    // name is exported by the controller or a speaker.
    let mut exported = observability::exported_names(&lab.controller_metrics().await.expect("controller /metrics"));
    for text in lab.speaker_metrics().await.expect("speakers' /metrics") {
        exported.extend(observability::exported_names(&text));
    }
    let queries = observability::shipped_queries().expect("dashboard and rules parse");
    let missing = observability::missing_metrics(&queries, &exported).expect("queries parse");
    assert!(
        missing.is_empty(),
        "named by the dashboard or rules but not exported: {missing:?}\nexported: {exported:?}"
    );
    lab.down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_owner_uplink_down_moves_the_ip_and_up_again_settles() {
    let Some(lab) = lab("sc").await else { return };
    story::apply_demo_objects(&lab, &quiet()).await.unwrap();
    let ip = story::wait_for_ip(&lab, Duration::from_secs(10)).await.unwrap();
    curl(&lab, &format!("http://{ip}/")).await;
    let owner = story::wait_for_stable_owner(&lab, Duration::from_millis(800), Duration::from_secs(15))
        .await
        .unwrap();
    let node = lab.node_index(&owner).unwrap();
    // An established connection to a backend on another node than the owner: it must carry
    // on through the owner's loss and the IP's return (DSR: the owner holds nothing the
    // flow needs that its successor would not have).
    let (connection, _, _) = KeepAlive::start_off(&lab, ip, &owner)
        .await
        .expect("curl runs and is answered")
        .unwrap_or_else(|| panic!("20 connections to {ip} all reached a backend on {owner}"));

    lab.set_uplink(node, false).await.expect("uplink down");
    let moved = story::wait_for_owner(&lab, Some(&owner), Duration::from_secs(10)).await;
    assert!(moved.is_ok(), "the IP moves off {owner}");
    curl(&lab, &format!("http://{ip}/")).await;
    let moved_at = Instant::now();
    // The lost node cannot reach the API server to withdraw its object: the status names the
    // node the client now sends to, and only it.
    let answering = story::node_answering(&lab, ip).await.unwrap();
    assert!(
        answering.is_some_and(|n| n != owner),
        "the client follows the new owner"
    );
    assert_status_names_the_answering_node(&lab, ip, "while the old owner's cable is out").await;
    // Out long enough for the old owner to declare both peers dead: from inside, losing them
    // looks the same as losing its own cable.
    let deaths = "herald_membership_confirmed_deaths_total";
    let declared = eventually(Duration::from_secs(15), || async {
        let text = lab.speaker_metrics_of(node).await.unwrap_or_default();
        soak::sample_sum(&text, deaths).unwrap_or(0.0) >= 2.0
    })
    .await;
    assert!(declared, "{owner} declares its peers dead while its cable is out");

    let old_mac = story::node_mac(&lab, node).await.unwrap();
    let capture = story::GarpCapture::start(&lab).unwrap();
    let back_at_ms = story::unix_ms_now();
    lab.set_uplink(node, true).await.expect("uplink up");
    // The IP goes back to the node it ranks first for once, when that node's rejoin hold
    // (3 s) ends, and then it stays put.
    let returned = eventually(Duration::from_secs(15), || async {
        owners_of(&lab, "web").await == [owner.clone()]
    })
    .await;
    assert!(
        returned,
        "{owner} owns the IP again after its hold: {:?}",
        owners_of(&lab, "web").await
    );
    let mut seen = Vec::new();
    for _ in 0..20 {
        let owners = owners_of(&lab, "web").await;
        if seen.last() != Some(&owners) {
            seen.push(owners);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(seen.len(), 1, "no flapping after the link came back: {seen:?}");
    // The node whose cable was out saw its peers die: it doubts those deaths once its link is
    // back, and announces the IP only when its rejoin hold (3 s) ends, not the moment its link
    // is back (which switched the client away from the real owner).
    let garps = capture.finish().await;
    let first_from_old = garps
        .iter()
        .find(|g| g.address == ip.to_string() && g.sender_mac == old_mac)
        .map(|g| g.at_unix_s * 1000.0 - back_at_ms);
    assert!(
        first_from_old.is_none_or(|after_ms| after_ms >= 2000.0),
        "{owner} announced {first_from_old:?} ms after its link was back: {garps:?}"
    );
    curl(&lab, &format!("http://{ip}/")).await;
    assert_status_names_the_answering_node(&lab, ip, "after the cable came back").await;
    let returned_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answers = connection.stop().await;
    eprintln!(
        "the established connection: {} requests answered by {}, longest gap {:?}",
        answers.len(),
        answers[0].pod,
        keepalive::longest_gap(&answers)
    );
    assert_eq!(
        keepalive::broken(&answers),
        None,
        "the established connection survives the owner's cable and the IP's return"
    );
    for (when, since) in [
        ("after the IP moved", moved_at),
        ("after the IP came back", returned_at),
    ] {
        assert!(
            answers.iter().any(|a| a.at > since),
            "the established connection was answered {when}"
        );
    }
    lab.down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_local_policy_is_announced_by_a_node_with_a_local_backend() {
    let Some(lab) = lab("sd").await else { return };
    lab.kubectl_apply(story::POOL_YAML).await.unwrap();
    lab.add_backend(3, "local-1", labels("local")).await.unwrap();
    lab.kubectl_apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: local, namespace: default}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector: {app: local}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    )
    .await
    .unwrap();
    let found = eventually(Duration::from_secs(10), || async {
        !ips_of(&lab, "local").await.is_empty()
    })
    .await;
    assert!(found, "an IP");
    let ip = ips_of(&lab, "local").await[0];
    assert!(
        eventually(Duration::from_secs(10), || async {
            owners_of(&lab, "local").await == ["node3"]
        })
        .await
    );
    for _ in 0..5 {
        let answer = curl(&lab, &format!("http://{ip}/")).await;
        assert!(
            answer.contains("local-1"),
            "traffic lands on the local backend: {answer}"
        );
    }
    lab.down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_ipv6_and_dual_stack_are_announced_and_reachable() {
    let Some(lab) = lab("se").await else { return };
    lab.kubectl_apply(story::POOL_YAML).await.unwrap();
    lab.add_backend(2, "dual-1", labels("dual")).await.unwrap();
    lab.kubectl_apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: dual, namespace: default}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  selector: {app: dual}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            ips_of(&lab, "dual").await.len() == 2
        })
        .await
    );
    let ips = ips_of(&lab, "dual").await;
    let v6 = ips.iter().find(|ip| ip.is_ipv6()).copied().expect("an IPv6 address");
    let v4 = ips.iter().find(|ip| ip.is_ipv4()).copied().expect("an IPv4 address");
    assert!(curl(&lab, &format!("http://{v4}/")).await.contains("dual-1"));
    assert!(curl(&lab, &format!("http://[{v6}]/")).await.contains("dual-1"));
    let client = lab.client_namespace().to_string();
    let ndisc = lab
        .exec_in(
            &client,
            &["ndisc6", "-1", "-r", "3", "-w", "500", &v6.to_string(), "eth0"],
        )
        .await
        .unwrap();
    assert!(
        ndisc.status.success(),
        "NDP answers for {v6}: {}",
        String::from_utf8_lossy(&ndisc.stdout)
    );
    lab.down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_two_services_sharing_an_ip_have_one_owner_and_both_answer() {
    let Some(lab) = lab("sf").await else { return };
    lab.kubectl_apply(story::POOL_YAML).await.unwrap();
    lab.add_backend(1, "shared-1", labels("shared")).await.unwrap();
    let service = |name: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n  annotations: {{herald.io/loadBalancerIPs: 10.203.0.230, herald.io/allow-shared-ip: shared}}\nspec:\n  type: LoadBalancer\n  selector: {{app: shared}}\n  ports: [{{name: http, port: {port}, targetPort: 8080}}]\n"
        )
    };
    lab.kubectl_apply(&service("shared-a", 80)).await.unwrap();
    lab.kubectl_apply(&service("shared-b", 8081)).await.unwrap();
    let ip: IpAddr = "10.203.0.230".parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            ips_of(&lab, "shared-b").await == [ip]
        })
        .await
    );
    assert_eq!(ips_of(&lab, "shared-a").await, [ip]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (a, b) = (owners_of(&lab, "shared-a").await, owners_of(&lab, "shared-b").await);
            a.len() == 1 && a == b
        })
        .await,
        "one owner for both"
    );
    assert!(curl(&lab, "http://10.203.0.230:80/").await.contains("shared-1"));
    assert!(curl(&lab, "http://10.203.0.230:8081/").await.contains("shared-1"));
    lab.down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_controller_apiserver_and_etcd_restarts_change_nothing() {
    let Some(lab) = lab("sg").await else { return };
    story::apply_demo_objects(&lab, &quiet()).await.unwrap();
    let ip = story::wait_for_ip(&lab, Duration::from_secs(10)).await.unwrap();
    curl(&lab, &format!("http://{ip}/")).await;

    lab.restart_controller().await.expect("controller restarted");
    lab.kubectl_apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: after, namespace: default}\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            !ips_of(&lab, "after").await.is_empty()
        })
        .await
    );
    assert_eq!(
        ips_of(&lab, "web").await,
        [ip],
        "no Service changed IP across the restart"
    );
    assert_ne!(ips_of(&lab, "after").await, [ip]);

    // Traffic keeps flowing while kube-apiserver, then etcd, is down and comes back, and
    // the owner keeps announcing.
    let owners = owners_of(&lab, "web").await;
    let client = lab.client_namespace().to_string();
    for component in ["kube-apiserver", "etcd"] {
        let probe = lab
            .start_probe(
                &client,
                &herald_e2e::lab::ProbeConfig {
                    target: std::net::SocketAddr::new(ip, 80),
                    interval: Duration::from_millis(20),
                    duration: Duration::from_secs(8),
                    timeout: Duration::from_millis(500),
                },
            )
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lists_before = service_lists(&lab).await;
        assert!(lists_before > 0.0, "Herald's start-up LISTs of Services are counted");
        match component {
            "kube-apiserver" => lab.restart_apiserver().await.expect("kube-apiserver restarted"),
            _ => lab.restart_etcd().await.expect("etcd restarted"),
        }
        let samples = probe.finish().await.unwrap();
        let failed = samples.iter().filter(|s| !s.ok()).count();
        assert!(!samples.is_empty());
        assert_eq!(
            failed,
            0,
            "no request failed while {component} restarted ({} sent)",
            samples.len()
        );
        assert_eq!(
            ips_of(&lab, "web").await,
            [ip],
            "no IP moved across the {component} restart"
        );
        // The first list the restarted API answers must still name the same owner.
        let mut after = None;
        for _ in 0..100 {
            after = try_owners_of(&lab, "web").await;
            if after.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            after,
            Some(owners.clone()),
            "the owner stayed across the {component} restart"
        );
        if component == "etcd" {
            // kube-apiserver stayed up, so its counters did: Herald's watchers of Services
            // (three speakers, the controller) resume or relist once each, never in a loop.
            let relists = service_lists(&lab).await - lists_before;
            assert!(relists <= 10.0, "{relists} LISTs of Services across the etcd restart");
            eprintln!("LISTs of Services across the etcd restart: {relists}");
        }
    }
    // The controller's watches resumed: a Service created after both restarts gets an address.
    lab.kubectl_apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: later, namespace: default}\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            !ips_of(&lab, "later").await.is_empty()
        })
        .await,
        "a Service created after the restarts gets an address"
    );
    lab.down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_bad_input_is_explained_and_disturbs_nothing() {
    let Some(lab) = lab("sh").await else { return };
    story::apply_demo_objects(&lab, &quiet()).await.unwrap();
    let ip = story::wait_for_ip(&lab, Duration::from_secs(10)).await.unwrap();

    let pool = |range: &str| {
        format!(
            "apiVersion: herald.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: broken, namespace: herald-system}}\nspec:\n  addresses: [\"{range}\"]\n"
        )
    };
    // The CRD schema refuses a reversed IPv4 range at apply, with the controller's words.
    let refused = lab
        .kubectl_apply(&pool("10.203.0.250-10.203.0.240"))
        .await
        .expect_err("a reversed IPv4 range is refused at apply");
    assert!(
        refused.to_string().contains("is a reversed range"),
        "kubectl says why: {refused}"
    );
    // A reversed IPv6 range gets past the schema (CEL cannot order IPv6): the controller says why.
    lab.kubectl_apply(&pool("fd00:203::f0-fd00:203::e0")).await.unwrap();
    let svc = |name: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n  annotations: {{{annotations}}}\nspec:\n  type: LoadBalancer\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
        )
    };
    lab.kubectl_apply(&svc("unknown-pool", "herald.io/address-pool: nope"))
        .await
        .unwrap();
    lab.kubectl_apply(&svc("outside", "herald.io/loadBalancerIPs: 192.0.2.10"))
        .await
        .unwrap();
    lab.kubectl_apply(&svc(
        "clash",
        &format!("herald.io/loadBalancerIPs: {ip}, herald.io/allow-shared-ip: other"),
    ))
    .await
    .unwrap();

    let pools: Api<IPAddressPool> = Api::namespaced(lab.client(), "herald-system");
    let invalid = eventually(Duration::from_secs(10), || async {
        pools
            .get_status("broken")
            .await
            .ok()
            .and_then(|p| p.status)
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "False" && c.message.contains("reversed range"))
            })
    })
    .await;
    assert!(invalid, "the broken pool says why");
    for (name, words) in [
        ("unknown-pool", "nope"),
        ("outside", "192.0.2.10"),
        ("clash", &ip.to_string()),
    ] {
        let reported = eventually(Duration::from_secs(10), || async {
            events_of(&lab, name)
                .await
                .iter()
                .any(|(r, n)| r == "AllocationFailed" && n.contains(words))
        })
        .await;
        assert!(
            reported,
            "{name}: AllocationFailed naming {words}: {:?}",
            events_of(&lab, name).await
        );
        assert!(ips_of(&lab, name).await.is_empty());
    }
    assert_eq!(ips_of(&lab, "web").await, [ip], "the working Service keeps its IP");
    assert!(curl(&lab, &format!("http://{ip}/")).await.contains("web-"));
    lab.down().await.unwrap();
}

/// The speaker Pods' names, with kubectl.
async fn speaker_pods(lab: &Lab) -> Vec<String> {
    let out = lab
        .kubectl(&[
            "-n",
            "herald-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=speaker",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
        ])
        .await
        .expect("kubectl get pods");
    out.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_speaker_pods_deleted_killed_and_rolled_with_kubectl() {
    let Some(lab) = lab("si").await else { return };
    story::apply_demo_objects(&lab, &quiet()).await.unwrap();
    let ip = story::wait_for_ip(&lab, Duration::from_secs(10)).await.unwrap();
    curl(&lab, &format!("http://{ip}/")).await;

    for fault in [Fault::PodDelete, Fault::PodForceDelete] {
        let before = speaker_pods(&lab).await;
        fault_moves_the_ip(&lab, ip, fault).await;
        // The DaemonSet replaced the deleted Pod on the same node.
        story::wait_speakers_ready(&lab)
            .await
            .expect("every speaker Pod runs and is ready");
        let after = speaker_pods(&lab).await;
        assert_eq!(after.len(), 3, "{after:?}");
        assert_eq!(
            after.iter().filter(|p| !before.contains(p)).count(),
            1,
            "{}: one new speaker Pod: {before:?} -> {after:?}",
            fault.name()
        );
        curl(&lab, &format!("http://{ip}/")).await;
        assert_status_names_the_answering_node(&lab, ip, fault.name()).await;
    }

    // A speaker whose process dies is restarted in place by the kubelet: same Pod, one
    // restart, the last state says how it ended.
    let victim = lab.speaker_pod(1).unwrap().expect("node1 has a speaker");
    let old = lab
        .kill_speaker(1, herald_e2e::lab::Signal::Kill)
        .await
        .expect("SIGKILL");
    lab.wait_speaker_restart(1, old, Duration::from_secs(15))
        .await
        .expect("restarted");
    story::wait_speakers_ready(&lab)
        .await
        .expect("every speaker Pod runs and is ready");
    let status = lab
        .kubectl(&[
            "-n",
            "herald-system",
            "get",
            "pod",
            &victim.name,
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].lastState.terminated.exitCode}",
        ])
        .await
        .expect("kubectl get pod");
    assert_eq!(status.trim(), "1 137", "restartCount and the last exit (SIGKILL)");

    // A rolling restart of every speaker, one node at a time, while the client probes.
    let before = speaker_pods(&lab).await;
    let rolled = story::measure_failover(&lab, ip, Fault::RolloutRestart)
        .await
        .expect("measured");
    eprintln!(
        "rollout restart: {} of {} requests failed, longest gap {:.0} ms, failed at {:?} ms",
        rolled.failed_requests, rolled.requests, rolled.longest_gap_ms, rolled.failed_at_ms
    );
    let after = speaker_pods(&lab).await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "every speaker replaced: {before:?} -> {after:?}"
    );
    curl(&lab, &format!("http://{ip}/")).await;
    assert_status_names_the_answering_node(&lab, ip, "after the rolling restart").await;
    lab.down().await.unwrap();
}

/// The sum over every speaker's exposition of `series` (see [`soak::sample_sum`]).
fn metric_sum(texts: &[String], series: &str) -> f64 {
    texts.iter().filter_map(|t| soak::sample_sum(t, series)).sum()
}

/// Every speaker's `herald_membership_keys` is `keys`.
async fn speakers_sign_with(lab: &Lab, keys: f64) -> bool {
    match lab.speaker_metrics().await {
        Ok(texts) => texts
            .iter()
            .all(|t| soak::sample_sum(t, "herald_membership_keys") == Some(keys)),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_the_speakers_key_is_rotated_under_traffic_without_a_restart_or_a_failover() {
    let Some(lab) = lab("sk").await else { return };
    story::apply_demo_objects(&lab, &quiet()).await.unwrap();
    let ip = story::wait_for_ip(&lab, Duration::from_secs(10)).await.unwrap();
    curl(&lab, &format!("http://{ip}/")).await;
    let owner = story::wait_for_stable_owner(&lab, Duration::from_millis(800), Duration::from_secs(15))
        .await
        .expect("an owner");
    let before = lab.speaker_metrics().await.expect("speakers' /metrics");
    let pods = speaker_pods(&lab).await;

    let probe = lab
        .start_probe(
            lab.client_namespace(),
            &herald_e2e::lab::ProbeConfig {
                target: std::net::SocketAddr::new(ip, 80),
                interval: Duration::from_millis(10),
                duration: Duration::from_secs(8),
                // Long enough that only an outage fails a request, not a busy machine.
                timeout: Duration::from_secs(1),
            },
        )
        .expect("probe starts");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // README's two steps, with kubectl.
    let new_key = "bmV3IGtleTogMzIgYnl0ZXMgb2YgdGhlIGUyZSB0ZXN0IQ=="; // 32 bytes
    let lab_ref = &lab;
    let patch = |data: String| async move {
        lab_ref
            .kubectl(&[
                "-n",
                "herald-system",
                "patch",
                "secret",
                "herald-speaker-auth",
                "--type",
                "merge",
                "-p",
                &format!("{{\"data\":{data}}}"),
            ])
            .await
            .expect("kubectl patch secret")
    };
    patch(format!("{{\"secretkey-next\":\"{new_key}\"}}")).await;
    assert!(
        eventually(Duration::from_secs(5), || speakers_sign_with(lab_ref, 2.0)).await,
        "every speaker signs with both keys"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    patch(format!("{{\"secretkey\":\"{new_key}\",\"secretkey-next\":null}}")).await;
    assert!(
        eventually(Duration::from_secs(5), || speakers_sign_with(lab_ref, 1.0)).await,
        "every speaker signs with the new key alone"
    );
    let samples = probe.finish().await.expect("probe samples");
    let failed = samples.iter().filter(|s| !s.ok()).count();
    let after = lab.speaker_metrics().await.expect("speakers' /metrics");
    for series in [
        "herald_membership_confirmed_deaths_total",
        "herald_membership_rejected_messages_total{reason=\"bad_mac\"}",
    ] {
        assert_eq!(
            metric_sum(&after, series),
            metric_sum(&before, series),
            "{series} during the rotation"
        );
    }
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the rotation",
        samples.len()
    );
    assert_eq!(speaker_pods(&lab).await, pods, "no speaker restarted");
    assert_eq!(owners_of(&lab, "web").await, vec![owner.clone()], "the owner stayed");

    // The rotated key is the one a new speaker reads: a replaced speaker Pod joins the others.
    let other = (1..=lab.node_count())
        .find(|&n| lab.node(n).is_ok_and(|node| node.name != owner))
        .expect("another node");
    let victim = lab.speaker_pod(other).unwrap().expect("its speaker Pod").name;
    lab.kubectl(&["-n", "herald-system", "delete", "pod", &victim])
        .await
        .expect("kubectl delete pod");
    story::wait_speakers_ready(&lab)
        .await
        .expect("the new speaker is ready");
    assert!(
        eventually(Duration::from_secs(10), || async {
            lab.speaker_metrics().await.is_ok_and(|texts| {
                texts
                    .iter()
                    .all(|t| soak::sample_sum(t, "herald_membership_members{state=\"alive\"}") == Some(3.0))
            })
        })
        .await,
        "every speaker sees three live members after the new one joined with the rotated key"
    );
    curl(&lab, &format!("http://{ip}/")).await;
    lab.down().await.unwrap();
}
