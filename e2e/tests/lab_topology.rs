//! The lab world end to end, as root: topology and routing (v4 and v6), echo backends,
//! Nodes/Pods in the real API server and EndpointSlices from kube-controller-manager, real
//! kubectl, the real controller assigning an address, the lab's kubelet (restarts, exact
//! privileges, a clear status for what it cannot run), uplink and
//! restart knobs, and cleanup (control plane included) — by `down`, by `Drop` during a
//! panic, and by `herald-lab down` after the lab process was killed.
//!
//! Needs root, iproute2, ping, curl, kubectl and the workspace binaries (`cargo build
//! --workspace --bins`). Outside CI a missing prerequisite skips with a message; with
//! `CI=true` it fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use herald_e2e::lab::{Binaries, Lab, LabConfig, ProbeConfig, Signal, check_prerequisites, summarize};
use herald_testkit::cleanup;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, PostParams};
use tokio::io::AsyncBufReadExt;

/// A prefix no other test (or parallel run) uses: `hl<pid%10000><n>`.
fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "hl{}{}",
        std::process::id() % 10000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The binaries, or None (skip) when prerequisites are missing outside CI.
fn prerequisites() -> Option<Binaries> {
    let problem = check_prerequisites()
        .err()
        .map(|e| e.to_string())
        .or_else(|| herald_testkit::missing_prerequisite(&["ping", "kubectl", "bash"]));
    if let Some(problem) = problem {
        herald_testkit::skip("the lab topology tests", problem);
        return None;
    }
    match Binaries::locate() {
        Ok(b) => Some(b),
        Err(e) => panic!("{e}"),
    }
}

fn config(prefix: &str, nodes: usize, binaries: &Binaries) -> LabConfig {
    LabConfig {
        nodes,
        binaries: Some(binaries.clone()),
        restart_delay: Duration::from_millis(700),
        progress: Some(std::sync::Arc::new(|line: &str| eprintln!("lab: {line}"))),
        ..LabConfig::new(prefix)
    }
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Whether `path` is a mount point of type `fstype`.
fn is_mounted(path: &Path, fstype: &str) -> bool {
    let target = path.display().to_string();
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(1) == Some(&target.as_str()) && fields.get(2) == Some(&fstype)
        })
    })
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn namespaces_with(prefix: &str) -> Vec<String> {
    let out = tokio::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .await
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect()
}

/// Waits (bounded) until every pid is gone.
async fn wait_all_dead(pids: &[u32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|p| process_alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alive: Vec<_> = pids.iter().filter(|p| process_alive(**p)).collect();
    assert!(alive.is_empty(), "processes still running: {alive:?}");
}

async fn ping(lab: &Lab, ns: &str, addr: &str) -> bool {
    let out = lab
        .exec_in(ns, &["ping", "-c", "1", "-W", "2", addr])
        .await
        .expect("ping runs");
    out.status.success()
}

/// Pings every address until all answer, for at most `timeout`.
async fn reachable_within(lab: &Lab, ns: &str, addresses: &[&str], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    for _ in 0..50 {
        let mut all = true;
        for addr in addresses {
            all &= ping(lab, ns, addr).await;
        }
        if all {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn http_get(lab: &Lab, ns: &str, url: &str) -> String {
    let out = lab
        .exec_in(ns, &["curl", "-sS", "-g", "--max-time", "3", url])
        .await
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {url} from {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// One UDP datagram to `addr`/`port` via bash's /dev/udp, and the first line back.
async fn udp_ask(lab: &Lab, ns: &str, addr: &str, port: u16) -> String {
    let script = format!("exec 3<>/dev/udp/{addr}/{port}; echo ping >&3; timeout 3 head -n1 <&3");
    let out = lab.exec_in(ns, &["bash", "-c", &script]).await.expect("bash runs");
    stdout(&out)
}

async fn kubectl(lab: &Lab, args: &[&str]) -> String {
    lab.kubectl(args).await.expect("kubectl").trim().to_string()
}

/// Ready IPv4 endpoint addresses of Service `service`, sorted, once they equal `want`
/// (or whatever they are after 10 s).
async fn ready_endpoints(lab: &Lab, service: &str, want: &[String]) -> Vec<String> {
    let slices: Api<EndpointSlice> = Api::namespaced(lab.client(), "default");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = slices
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
            .await
            .expect("list slices");
        let mut ready: Vec<String> = list
            .items
            .iter()
            .filter(|s| s.address_type == "IPv4")
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses.clone())
            .collect();
        ready.sort();
        if ready == want || Instant::now() > deadline {
            return ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/proc/<pid>/status`.
fn proc_status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

/// A field of `/proc/<pid>/status`, trimmed.
fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_topology_api_controller_and_supervision() {
    let Some(binaries) = prerequisites() else { return };
    let started = Instant::now();
    let prefix = unique_prefix();
    let lab = Lab::up(config(&prefix, 3, &binaries)).await.expect("lab comes up");
    let plan = lab.plan().clone();
    let client_ns = lab.client_namespace().to_string();

    // The speakers' bpf filesystem is mounted in the state directory.
    let bpf_dir = lab.state_dir().join("bpf");
    assert!(is_mounted(&bpf_dir, "bpf"), "{} is not a bpf mount", bpf_dir.display());

    // The client reaches every node on the segment, both families.
    for node in &plan.nodes {
        assert!(
            ping(&lab, &client_ns, &node.ipv4.to_string()).await,
            "client -> {} v4",
            node.name
        );
        assert!(
            ping(&lab, &client_ns, &node.ipv6.to_string()).await,
            "client -> {} v6",
            node.name
        );
    }

    // Backends behind node1 and node2.
    let web = labels(&[("app", "web")]);
    let a = lab.add_backend(1, "web-a", web.clone()).await.expect("backend web-a");
    let b = lab.add_backend(2, "web-b", web.clone()).await.expect("backend web-b");
    // Addresses from each node's pod CIDR (the controller's replicas may have taken slots first).
    assert!(plan.nodes[0].pod_cidr_v4.contains(&a.ipv4), "{a:?}");
    assert!(plan.nodes[1].pod_cidr_v6.contains(&b.ipv6), "{b:?}");

    // Pod to pod across nodes (host-gw routes), both families, ICMP and HTTP.
    assert!(ping(&lab, &a.namespace, &b.ipv4.to_string()).await, "web-a -> web-b v4");
    assert!(ping(&lab, &a.namespace, &b.ipv6.to_string()).await, "web-a -> web-b v6");
    assert_eq!(
        http_get(&lab, &a.namespace, &format!("http://{}:8080/", b.ipv4)).await,
        "web-b"
    );

    // The client reaches the echo servers through the nodes: HTTP and UDP, v4 and v6.
    assert_eq!(
        http_get(&lab, &client_ns, &format!("http://{}:8080/", a.ipv4)).await,
        "web-a"
    );
    assert_eq!(
        http_get(&lab, &client_ns, &format!("http://[{}]:8080/", b.ipv6)).await,
        "web-b"
    );
    assert_eq!(udp_ask(&lab, &client_ns, &a.ipv4.to_string(), 5353).await, "web-a");
    assert_eq!(udp_ask(&lab, &client_ns, &b.ipv6.to_string(), 5353).await, "web-b");

    // The steady probe (what failover measurements use) gets every answer from web-a.
    let probe = lab
        .start_probe(
            &client_ns,
            &ProbeConfig {
                target: std::net::SocketAddr::from((a.ipv4, 8080)),
                interval: Duration::from_millis(10),
                duration: Duration::from_millis(300),
                timeout: Duration::from_millis(500),
            },
        )
        .expect("probe starts");
    let summary = summarize(&probe.finish().await.expect("probe finishes"));
    assert!(summary.requests >= 20, "{summary:?}");
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(summary.backends.keys().collect::<Vec<_>>(), ["web-a"]);

    // Nodes and Pods in the API with the plan's addresses.
    let client = lab.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let listed = nodes.list(&ListParams::default()).await.expect("list nodes");
    assert_eq!(listed.items.len(), 3);
    for node in &plan.nodes {
        let object = nodes.get(&node.name).await.expect("node exists");
        let addresses: Vec<String> = object
            .status
            .and_then(|s| s.addresses)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address)
            .collect();
        assert_eq!(addresses, [node.ipv4.to_string(), node.ipv6.to_string()]);
    }
    let speaker_pods: Api<Pod> = Api::namespaced(client.clone(), "herald-system");
    let speakers = speaker_pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=speaker"))
        .await
        .expect("list speaker pods");
    assert_eq!(speakers.items.len(), 3);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod_a = pods.get("web-a").await.expect("pod web-a");
    let status = pod_a.status.expect("pod status");
    let ips: Vec<String> = status.pod_ips.unwrap_or_default().into_iter().map(|p| p.ip).collect();
    assert_eq!(ips, [a.ipv4.to_string(), a.ipv6.to_string()]);
    assert_eq!(pod_a.spec.and_then(|s| s.node_name).as_deref(), Some("node1"));

    // A LoadBalancer Service over both backends: EndpointSlices list them, ready.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
    }))
    .expect("service literal");
    services
        .create(&PostParams::default(), &service)
        .await
        .expect("create service");
    let both = [a.ipv4.to_string(), b.ipv4.to_string()];
    assert_eq!(ready_endpoints(&lab, "web", &both).await, both);

    // Readiness flips follow into the slices; a removed backend leaves the API and the lab.
    lab.set_backend_ready("web-b", false).await.expect("web-b not ready");
    let only_a = [a.ipv4.to_string()];
    assert_eq!(ready_endpoints(&lab, "web", &only_a).await, only_a);
    lab.set_backend_ready("web-b", true).await.expect("web-b ready again");
    assert_eq!(ready_endpoints(&lab, "web", &both).await, both);
    let c = lab.add_backend(3, "web-c", web.clone()).await.expect("backend web-c");
    let echo_pid = lab.backend_pid("web-c").await.expect("web-c").expect("echo runs");
    assert_eq!(
        lab.kill_backend("web-c", Signal::Kill).await.expect("kill echo"),
        echo_pid
    );
    lab.remove_backend("web-c").await.expect("remove web-c");
    assert!(pods.get_opt("web-c").await.expect("get pod").is_none());
    assert!(!namespaces_with(&prefix).await.contains(&c.namespace));
    assert!(lab.backend("web-c").await.is_err());
    assert_eq!(ready_endpoints(&lab, "web", &both).await, both);

    // Real kubectl on the host kubeconfig sees the nodes, and the real server's version.
    let names = kubectl(&lab, &["get", "nodes", "-o", "name"]).await;
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["node/node1", "node/node2", "node/node3"]
    );
    let version: serde_json::Value =
        serde_json::from_str(&kubectl(&lab, &["version", "-o", "json"]).await).expect("kubectl version JSON");
    let server_version = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        server_version.starts_with("v1.") && !server_version.contains("master") && server_version != "v0.0.0",
        "kubectl version shows the real, stamped server version: {server_version:?}"
    );
    // Every node's Lease is renewed, as its kubelet would: the node lifecycle controller
    // keeps the nodes Ready and untainted.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    for node in &plan.nodes {
        let lease = leases.get(&node.name).await.expect("node lease exists");
        assert_eq!(
            lease.spec.and_then(|s| s.holder_identity).as_deref(),
            Some(node.name.as_str())
        );
        let object = nodes.get(&node.name).await.expect("node exists");
        let taints = object.spec.and_then(|s| s.taints).unwrap_or_default();
        assert!(taints.is_empty(), "{} is tainted: {taints:?}", node.name);
    }

    // The controller runs and assigns an address from a pool applied with kubectl.
    assert!(lab.controller_pid().await.is_some(), "a controller replica leads");
    let pool = lab.state_dir().join("pool.yaml");
    std::fs::write(
        &pool,
        "apiVersion: herald.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: lab\n  namespace: herald-system\nspec:\n  addresses:\n  - 10.203.0.200/29\n",
    )
    .expect("write pool");
    let applied = kubectl(&lab, &["apply", "-f", &pool.display().to_string()]).await;
    assert_eq!(applied, "ipaddresspool.herald.io/lab created");
    let applied = lab
        .kubectl_apply("apiVersion: herald.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: lab\n  namespace: herald-system\nspec: {}\n")
        .await
        .expect("kubectl apply from stdin");
    assert_eq!(applied.trim(), "l2advertisement.herald.io/lab created");
    let deadline = Instant::now() + Duration::from_secs(15);
    let ingress = loop {
        let svc = services.get("web").await.expect("get service");
        let ip = svc
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .and_then(|i| i.into_iter().next())
            .and_then(|i| i.ip);
        if ip.is_some() || Instant::now() > deadline {
            break ip;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = match lab.controller_leader().await {
        Some(leader) => std::fs::read_to_string(&leader.log).unwrap_or_default(),
        None => "no controller replica leads".into(),
    };
    assert_eq!(ingress.as_deref(), Some("10.203.0.200"), "controller log:\n{log}");

    // A killed speaker comes back with a new pid, after the restart delay: the kubelet
    // restarts its container.
    let speaker_pod = lab.speaker_pod(2).unwrap().expect("node2 has a speaker pod");
    let old = lab.speaker_pid(2).unwrap().expect("speaker on node2 runs");
    let killed_at = Instant::now();
    assert_eq!(lab.node_index("node2").expect("node2 exists"), 2);
    assert_eq!(lab.kill_speaker(2, Signal::Kill).await.expect("kill"), old);
    let new = lab
        .wait_speaker_restart(2, old, Duration::from_secs(10))
        .await
        .expect("speaker restarted");
    assert_ne!(new, old);
    assert!(
        killed_at.elapsed() >= Duration::from_millis(600),
        "restarted before the delay"
    );
    assert!(!process_alive(old));
    // Its Pod shows the restart, Ready again once its readiness probe (every 5 s) passes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (restarts, ready) = loop {
        let pod = speaker_pods.get(&speaker_pod.name).await.expect("speaker pod");
        let container = pod
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.into_iter().next())
            .expect("container status");
        if (container.restart_count, container.ready) == (1, true) || Instant::now() > deadline {
            break (container.restart_count, container.ready);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((restarts, ready), (1, true), "speaker pod status after one restart");

    // The kubelet gives each container exactly its manifest's privileges: the speaker the
    // four capabilities config/deploy adds (NET_ADMIN 12, NET_RAW 13, PERFMON 38, BPF 39) as
    // root, the controller none as user 65534.
    let speaker_status = proc_status(lab.speaker_pid(1).unwrap().expect("speaker on node1"));
    assert_eq!(field(&speaker_status, "CapEff"), "000000c000003000", "{speaker_status}");
    assert_eq!(field(&speaker_status, "CapBnd"), "000000c000003000", "{speaker_status}");
    assert_eq!(field(&speaker_status, "NoNewPrivs"), "1");
    let leader = lab.controller_leader().await.expect("a leader");
    let controller_status = proc_status(leader.pid.expect("leader runs"));
    assert_eq!(field(&controller_status, "CapEff"), "0000000000000000");
    assert!(
        field(&controller_status, "Uid").starts_with("65534"),
        "{controller_status}"
    );
    // What the lab's kubelet cannot run is a clear status, not a silent failure.
    lab.kubectl_apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: needs-secret, namespace: default}\nspec:\n  nodeName: node1\n  containers:\n  - name: echo\n    image: herald-lab:0.1.0\n    command: [/usr/local/bin/herald-lab, echo, --name=x]\n    env:\n    - name: KEY\n      valueFrom: {secretKeyRef: {name: absent, key: key}}\n",
    )
    .await
    .expect("pod applied");
    let deadline = Instant::now() + Duration::from_secs(15);
    let waiting = loop {
        let reason = kubectl(
            &lab,
            &["get", "pod", "needs-secret", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}"],
        )
        .await;
        if reason.starts_with("CreateContainerConfigError") || Instant::now() > deadline {
            break reason;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        waiting,
        "CreateContainerConfigError: env KEY: secret \"absent\" not found"
    );
    kubectl(&lab, &["delete", "pod", "needs-secret", "--wait=true", "--timeout=20s"]).await;

    // Uplink down: node3 unreachable; up again: addresses and routes are back.
    lab.set_uplink(3, false).await.expect("uplink down");
    assert!(
        !ping(&lab, &client_ns, "10.203.0.13").await,
        "node3 answered with its uplink down"
    );
    lab.set_uplink(3, true).await.expect("uplink up");
    assert!(
        reachable_within(
            &lab,
            &client_ns,
            &["10.203.0.13", "fd00:203::13"],
            Duration::from_secs(10)
        )
        .await,
        "node3 unreachable after its uplink came back"
    );

    // Cable pulled on the bridge side: same, and back.
    lab.set_cable(3, false).await.expect("cable out");
    assert!(
        !ping(&lab, &client_ns, "10.203.0.13").await,
        "node3 answered without a cable"
    );
    lab.set_cable(3, true).await.expect("cable in");
    assert!(
        reachable_within(
            &lab,
            &client_ns,
            &["10.203.0.13", "fd00:203::13"],
            Duration::from_secs(10)
        )
        .await,
        "node3 unreachable after its cable came back"
    );

    // Controller and API server restarts keep the world.
    let controller_before = lab.controller_pid().await.expect("controller pid");
    let controller_after = lab.restart_controller().await.expect("controller restarts");
    assert_ne!(controller_before, controller_after);
    lab.restart_apiserver().await.expect("apiserver restarts");
    assert_eq!(kubectl(&lab, &["get", "nodes", "-o", "name"]).await.lines().count(), 3);
    assert!(
        services.get("web").await.is_ok(),
        "service survived the API server restart"
    );

    // down removes every namespace and process, the control plane's too.
    let mut pids: Vec<u32> = (1..=3).filter_map(|n| lab.speaker_pid(n).unwrap()).collect();
    pids.extend(lab.controller_pods().iter().filter_map(|p| p.pid));
    let control_plane: Vec<u32> = lab.control_plane().pids().into_iter().filter_map(|(_, p)| p).collect();
    assert_eq!(
        control_plane.len(),
        4,
        "etcd, kube-apiserver, kube-controller-manager, kube-scheduler"
    );
    pids.extend(control_plane);
    for ns in [a.namespace.as_str(), b.namespace.as_str()] {
        let out = tokio::process::Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .await
            .expect("ip netns pids");
        pids.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    assert!(
        pids.len() >= 10,
        "speakers, controller, control plane and two echo servers: {pids:?}"
    );
    let state_dir = lab.state_dir().to_path_buf();
    let report = lab.down().await.expect("down");
    // The cleanup took the segment, the client and the three nodes (the kubelet removes its
    // Pods' namespaces itself as it stops them; any it could not, the cleanup takes too).
    assert!(report.namespaces.len() >= 5, "{report:?}");
    assert!(namespaces_with(&prefix).await.is_empty());
    assert!(!state_dir.exists());
    assert!(!is_mounted(&bpf_dir, "bpf"), "down left the bpf filesystem mounted");
    wait_all_dead(&pids, Duration::from_secs(5)).await;
    eprintln!("lab topology test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_still_removes_its_lab() {
    let Some(binaries) = prerequisites() else { return };
    let prefix = unique_prefix();
    let config = config(&prefix, 1, &binaries);
    let (pids_tx, pids_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let lab = Lab::up(config).await.expect("lab comes up");
        lab.add_backend(1, "doomed", BTreeMap::new()).await.expect("backend");
        let mut pids: Vec<u32> = lab.speaker_pid(1).unwrap().into_iter().collect();
        pids.extend(lab.controller_pods().iter().filter_map(|p| p.pid));
        pids.extend(lab.control_plane().pids().into_iter().filter_map(|(_, p)| p));
        pids_tx.send(pids).expect("the test awaits the pids");
        panic!("deliberate panic with a lab up");
    });
    let joined = task.await;
    assert!(joined.is_err_and(|e| e.is_panic()));
    let pids = pids_rx.await.expect("pids were sent before the panic");
    assert!(namespaces_with(&prefix).await.is_empty(), "Drop removed the namespaces");
    wait_all_dead(&pids, Duration::from_secs(5)).await;
    let state_dir = Path::new("/run/herald-lab").join(&prefix);
    let deadline = Instant::now() + Duration::from_secs(3);
    while state_dir.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!state_dir.exists(), "{} is left behind", state_dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_lab_down_clears_a_crashed_lab() {
    let Some(binaries) = prerequisites() else { return };
    let prefix = unique_prefix();
    let json_dir = std::env::temp_dir().join(format!("herald-lab-json-{prefix}"));
    std::fs::create_dir_all(&json_dir).expect("temp dir");
    let json_path = json_dir.join("lab.json");
    let mut up = tokio::process::Command::new(&binaries.lab)
        .args([
            "up",
            "--prefix",
            &prefix,
            "--nodes",
            "2",
            "--json",
            &json_path.display().to_string(),
        ])
        .env("HERALD_BIN_DIR", binaries.lab.parent().expect("bin dir"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("herald-lab up starts");
    let mut lines = tokio::io::BufReader::new(up.stdout.take().expect("stdout")).lines();
    let export_line = async {
        for _ in 0..1000 {
            match lines.next_line().await {
                Ok(Some(line)) if line.starts_with("export ") => return line,
                Ok(Some(_)) => {}
                other => panic!("`herald-lab up` ended its output early: {other:?}"),
            }
        }
        panic!("no export line in 1000 lines");
    };
    let export = tokio::time::timeout(Duration::from_secs(90), export_line)
        .await
        .expect("`up` prints the export line within 90 s");
    assert_eq!(export, format!("export KUBECONFIG=/run/herald-lab/{prefix}/kubeconfig"));

    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("--json written")).expect("JSON");
    assert_eq!(info["plan"]["nodes"][1]["ipv6"], "fd00:203::12");
    assert_eq!(info["lab_api_url"], "https://10.203.0.1:6443");
    assert_eq!(info["speaker_pids"].as_array().map(Vec::len), Some(2));
    cleanup(
        format!("removing {}", json_dir.display()),
        std::fs::remove_dir_all(&json_dir),
    );

    // Simulate a crash: the lab process dies without cleaning up.
    let mut children = Vec::new();
    for ns in namespaces_with(&prefix).await {
        let out = tokio::process::Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .await
            .expect("ip netns pids");
        children.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    assert!(children.len() >= 4, "relay, controller, two speakers: {children:?}");
    // The control plane runs on the host; its pid files are what `down` finds it by.
    let pid_dir = Path::new("/run/herald-lab").join(&prefix).join("pids");
    for component in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
        let pid: u32 = std::fs::read_to_string(pid_dir.join(format!("{component}.pid")))
            .unwrap_or_else(|e| panic!("{component} pid file: {e}"))
            .trim()
            .parse()
            .expect("pid");
        assert!(process_alive(pid), "{component} runs");
        children.push(pid);
    }
    up.start_kill().expect("kill herald-lab up");
    up.wait().await.expect("wait for the killed herald-lab up");
    // Segment, client, two nodes and the controller replicas' pod namespaces.
    assert!(
        namespaces_with(&prefix).await.len() >= 4,
        "a crash leaves the namespaces"
    );
    let bpf_dir = Path::new("/run/herald-lab").join(&prefix).join("bpf");
    assert!(is_mounted(&bpf_dir, "bpf"), "a crash leaves the bpf filesystem");

    let down = tokio::process::Command::new(&binaries.lab)
        .args(["down", "--prefix", &prefix])
        .stdin(Stdio::null())
        .output();
    let down = tokio::time::timeout(Duration::from_secs(30), down)
        .await
        .expect("down within 30 s")
        .expect("down runs");
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(namespaces_with(&prefix).await.is_empty());
    assert!(!Path::new(&format!("/run/herald-lab/{prefix}")).exists());
    assert!(!is_mounted(&bpf_dir, "bpf"), "down unmounts the bpf filesystem");
    wait_all_dead(&children, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_cleanup_takes_labs_whose_owner_died_and_spares_live_ones() {
    if prerequisites().is_none() {
        return;
    }
    let root = std::env::temp_dir().join(format!("herald-lab-stale-{}", std::process::id()));
    let (dead, live) = (unique_prefix(), unique_prefix());
    let mut finished = std::process::Command::new("true").spawn().expect("spawn true");
    let dead_pid = finished.id();
    finished.wait().expect("true exits");
    for (prefix, owner) in [(&dead, dead_pid), (&live, std::process::id())] {
        let dir = root.join(prefix);
        std::fs::create_dir_all(&dir).expect("state dir");
        let exe = std::fs::read_link(format!("/proc/{owner}/exe")).unwrap_or_else(|_| "/usr/bin/true".into());
        std::fs::write(dir.join("lab.pid"), format!("{owner}\n{}\n", exe.display())).expect("lab.pid");
        let ns = format!("{prefix}-seg");
        let added = std::process::Command::new("ip").args(["netns", "add", &ns]).status();
        assert!(added.expect("ip runs").success(), "ip netns add {ns}");
    }
    // A leftover process inside the dead lab's namespace.
    let mut leftover = tokio::process::Command::new("ip")
        .args(["netns", "exec", &format!("{dead}-seg"), "sleep", "30"])
        .kill_on_drop(true)
        .spawn()
        .expect("sleep in the namespace");
    let leftover_pid = leftover.id().expect("pid");

    let removed = herald_e2e::lab::state::cleanup_stale(&root)
        .await
        .expect("stale cleanup");
    let prefixes: Vec<&str> = removed.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(prefixes, [dead.as_str()]);
    assert_eq!(removed[0].1.namespaces, [format!("{dead}-seg")]);
    assert!(removed[0].1.killed.contains(&leftover_pid));
    // Reaps the leftover process; the assertions below say whether it was cleaned up.
    tokio::time::timeout(Duration::from_secs(5), leftover.wait()).await.ok();
    assert!(namespaces_with(&dead).await.is_empty());
    assert_eq!(
        namespaces_with(&live).await,
        [format!("{live}-seg")],
        "a live lab is left alone"
    );

    let report = herald_e2e::lab::cleanup(&live, &root)
        .await
        .expect("cleanup of the live one");
    assert_eq!(report.owner_stopped, None, "never signals the current process");
    assert!(namespaces_with(&live).await.is_empty());
    cleanup(format!("removing {}", root.display()), std::fs::remove_dir_all(&root));
}
