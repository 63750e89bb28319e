//! Builds and tears down the lab topology with iproute2 and sysctl, every step inside a
//! namespace the lab made (`ip -n NS ...`, `ip netns exec NS ...`). Nothing is created in
//! the root namespace: veth pairs are created with both ends already in lab namespaces.

use std::net::IpAddr;
use std::process::Output;
use std::time::Duration;

use super::LabError;
use super::plan::{BRIDGE, LabPlan, NODE_UPLINK, NodePlan, PodPlan};

/// Upper bound for one `ip`/`sysctl` invocation.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `program args...` and returns its output, failing on a non-zero exit.
pub(crate) async fn run(program: &str, args: &[&str]) -> Result<Output, LabError> {
    let output = run_unchecked(program, args).await?;
    if !output.status.success() {
        return Err(LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: output.status.code(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// Runs `program args...` with a timeout, whatever its exit status.
pub(crate) async fn run_unchecked(program: &str, args: &[&str]) -> Result<Output, LabError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let spawned = cmd.output();
    match tokio::time::timeout(COMMAND_TIMEOUT, spawned).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(source)) => Err(LabError::Spawn {
            program: program.to_string(),
            source,
        }),
        Err(_) => Err(LabError::Timeout {
            what: format!("{program} {}", args.join(" ")),
        }),
    }
}

/// `ip -n NS args...`.
async fn ip_in(ns: &str, args: &[&str]) -> Result<(), LabError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all).await.map(|_| ())
}

/// `ip netns exec NS sysctl -qw settings...`.
async fn sysctl_in(ns: &str, settings: &[&str]) -> Result<(), LabError> {
    let mut all = vec!["netns", "exec", ns, "sysctl", "-qw"];
    all.extend_from_slice(settings);
    run("ip", &all).await.map(|_| ())
}

/// Names of every network namespace on the machine.
pub(crate) async fn list_namespaces() -> Result<Vec<String>, LabError> {
    let out = run("ip", &["netns", "list"]).await?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Pids of the processes in a namespace (empty if it is gone).
pub(crate) async fn namespace_pids(ns: &str) -> Vec<u32> {
    match run_unchecked("ip", &["netns", "pids", ns]).await {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Creates a namespace with loopback up and IPv6 duplicate address detection off for
/// every interface created in it later: otherwise link-local addresses stay tentative
/// for ~1-2 s and the first packets through a fresh pod veth are lost.
async fn add_namespace(ns: &str) -> Result<(), LabError> {
    run("ip", &["netns", "add", ns]).await?;
    sysctl_in(
        ns,
        &["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"],
    )
    .await?;
    ip_in(ns, &["link", "set", "lo", "up"]).await
}

/// Deletes a namespace (its interfaces go with it; processes must be gone first).
pub(crate) async fn delete_namespace(ns: &str) -> Result<(), LabError> {
    run("ip", &["netns", "del", ns]).await.map(|_| ())
}

/// Adds an address, replacing it if present; IPv6 without duplicate address detection,
/// so it is usable at once instead of ~1 s later.
async fn add_address(ns: &str, dev: &str, addr: IpAddr, prefix_len: u8) -> Result<(), LabError> {
    let cidr = format!("{addr}/{prefix_len}");
    match addr {
        IpAddr::V4(_) => ip_in(ns, &["addr", "replace", &cidr, "dev", dev]).await,
        IpAddr::V6(_) => ip_in(ns, &["-6", "addr", "replace", &cidr, "dev", dev, "nodad"]).await,
    }
}

/// Adds or replaces a route `dest` (CIDR text) via `gateway`, or on-link when None.
async fn replace_route(ns: &str, dest: &str, gateway: Option<IpAddr>, dev: &str) -> Result<(), LabError> {
    let family = if dest.contains(':') { "-6" } else { "-4" };
    match gateway {
        Some(gw) => {
            ip_in(
                ns,
                &[family, "route", "replace", dest, "via", &gw.to_string(), "dev", dev],
            )
            .await
        }
        None => ip_in(ns, &[family, "route", "replace", dest, "dev", dev, "scope", "link"]).await,
    }
}

/// Creates every namespace of the plan, the bridge, and the client and node uplinks, with
/// addresses and host-gw routes.
pub(crate) async fn build_base(plan: &LabPlan) -> Result<(), LabError> {
    for ns in plan.base_namespaces() {
        add_namespace(&ns).await?;
    }
    let seg = plan.segment_namespace.as_str();
    // Multicast snooping off: without an MLD querier the bridge could stop flooding the
    // solicited-node multicast NDP relies on.
    ip_in(seg, &["link", "add", BRIDGE, "type", "bridge", "mcast_snooping", "0"]).await?;
    ip_in(seg, &["link", "set", BRIDGE, "up"]).await?;
    add_address(seg, BRIDGE, plan.bridge_v4.into(), plan.segment_v4.prefix_len()).await?;
    add_address(seg, BRIDGE, plan.bridge_v6.into(), plan.segment_v6.prefix_len()).await?;

    attach_to_bridge(plan, "client", &plan.client_namespace).await?;
    let client = plan.client_namespace.as_str();
    add_address(client, "eth0", plan.client_v4.into(), plan.segment_v4.prefix_len()).await?;
    add_address(client, "eth0", plan.client_v6.into(), plan.segment_v6.prefix_len()).await?;
    // Host-gw routes to every node's pods: from the client, and from the segment namespace,
    // where the API server's relay answers Pods (the controller replicas) too.
    for node in &plan.nodes {
        for ns in [client, seg] {
            let dev = if ns == seg { BRIDGE } else { "eth0" };
            replace_route(ns, &node.pod_cidr_v4.to_string(), Some(node.ipv4.into()), dev).await?;
            replace_route(ns, &node.pod_cidr_v6.to_string(), Some(node.ipv6.into()), dev).await?;
        }
    }

    for node in &plan.nodes {
        attach_to_bridge(plan, &node.bridge_port, &node.namespace).await?;
        // keep_addr_on_down: an uplink taken down and up again keeps its IPv6 address,
        // as IPv4 does.
        sysctl_in(
            &node.namespace,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv6.conf.all.keep_addr_on_down=1",
                "net.ipv6.conf.default.keep_addr_on_down=1",
            ],
        )
        .await?;
        configure_node_uplink(plan, node).await?;
    }
    Ok(())
}

/// A veth pair from the bridge (port `port` in the segment namespace) to `eth0` in `ns`.
async fn attach_to_bridge(plan: &LabPlan, port: &str, ns: &str) -> Result<(), LabError> {
    let seg = plan.segment_namespace.as_str();
    ip_in(
        seg,
        &[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            NODE_UPLINK,
            "netns",
            ns,
        ],
    )
    .await?;
    ip_in(seg, &["link", "set", port, "master", BRIDGE, "up"]).await?;
    ip_in(ns, &["link", "set", NODE_UPLINK, "up"]).await
}

/// Addresses and routes of a node's uplink; idempotent, so it also repairs what taking
/// the link down removed (the kernel drops routes through a device that goes down).
pub(crate) async fn configure_node_uplink(plan: &LabPlan, node: &NodePlan) -> Result<(), LabError> {
    let ns = node.namespace.as_str();
    add_address(ns, NODE_UPLINK, node.ipv4.into(), plan.segment_v4.prefix_len()).await?;
    add_address(ns, NODE_UPLINK, node.ipv6.into(), plan.segment_v6.prefix_len()).await?;
    for other in plan.nodes.iter().filter(|o| o.index != node.index) {
        replace_route(ns, &other.pod_cidr_v4.to_string(), Some(other.ipv4.into()), NODE_UPLINK).await?;
        replace_route(ns, &other.pod_cidr_v6.to_string(), Some(other.ipv6.into()), NODE_UPLINK).await?;
    }
    Ok(())
}

/// Takes a node's own uplink (`eth0` in its namespace) administratively down or up.
pub(crate) async fn set_node_uplink(plan: &LabPlan, node: &NodePlan, up: bool) -> Result<(), LabError> {
    let state = if up { "up" } else { "down" };
    ip_in(&node.namespace, &["link", "set", NODE_UPLINK, state]).await?;
    if up {
        configure_node_uplink(plan, node).await?;
    }
    Ok(())
}

/// Takes the bridge-side end of a node's cable down or up: the node sees carrier loss.
pub(crate) async fn set_bridge_port(plan: &LabPlan, node: &NodePlan, up: bool) -> Result<(), LabError> {
    let state = if up { "up" } else { "down" };
    ip_in(&plan.segment_namespace, &["link", "set", &node.bridge_port, state]).await
}

/// Creates a pod namespace behind its node: veth, /32 and /128 addresses, routes both ways.
pub(crate) async fn add_pod(node: &NodePlan, pod: &PodPlan) -> Result<(), LabError> {
    let (node_ns, pod_ns) = (node.namespace.as_str(), pod.namespace.as_str());
    add_namespace(pod_ns).await?;
    ip_in(
        node_ns,
        &[
            "link",
            "add",
            &pod.node_side,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod_ns,
        ],
    )
    .await?;
    ip_in(node_ns, &["link", "set", &pod.node_side, "up"]).await?;
    ip_in(pod_ns, &["link", "set", "eth0", "up"]).await?;
    add_address(node_ns, &pod.node_side, node.pod_gateway_v4.into(), 32).await?;
    add_address(node_ns, &pod.node_side, node.pod_gateway_v6.into(), 128).await?;
    replace_route(node_ns, &format!("{}/32", pod.ipv4), None, &pod.node_side).await?;
    replace_route(node_ns, &format!("{}/128", pod.ipv6), None, &pod.node_side).await?;
    add_address(pod_ns, "eth0", pod.ipv4.into(), 32).await?;
    add_address(pod_ns, "eth0", pod.ipv6.into(), 128).await?;
    replace_route(pod_ns, &format!("{}/32", node.pod_gateway_v4), None, "eth0").await?;
    replace_route(pod_ns, &format!("{}/128", node.pod_gateway_v6), None, "eth0").await?;
    replace_route(pod_ns, "default", Some(node.pod_gateway_v4.into()), "eth0").await?;
    ip_in(
        pod_ns,
        &[
            "-6",
            "route",
            "replace",
            "default",
            "via",
            &node.pod_gateway_v6.to_string(),
            "dev",
            "eth0",
        ],
    )
    .await
}
