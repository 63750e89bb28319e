//! The membership runtime over the in-memory transport (no sockets): convergence, health
//! gossip, kill detection, and what the metrics count.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herald_config::process::Tasks;
use herald_speaker::membership::auth::SecretKey;
use herald_speaker::membership::state::Rpc;
use herald_speaker::membership::transport::MemoryNetwork;
use herald_speaker::membership::{MemberState, Membership, MembershipConfig, NodeHealth, Peer};
use prometheus_client::registry::Registry;

fn address(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 9, 0, u8::try_from(i + 1).unwrap_or(255)], 7946))
}

fn health(interfaces: &[&str]) -> NodeHealth {
    NodeHealth {
        announcer_ready: true,
        dataplane_ready: true,
        interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
        ..Default::default()
    }
}

async fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_cluster_converges_spreads_health_and_detects_a_kill() {
    let network = MemoryNetwork::default();
    let mut tasks = Tasks::default();
    let nodes: Vec<Membership> = (0..3)
        .map(|i| {
            Membership::start_in_memory(
                MembershipConfig::default(),
                &format!("node-{i}"),
                address(i),
                SecretKey::new(b"k".to_vec()),
                &network,
                &mut tasks,
            )
        })
        .collect();
    let peers: Vec<Peer> = (0..3)
        .map(|i| Peer {
            node: format!("node-{i}"),
            address: address(i),
        })
        .collect();
    for node in &nodes {
        node.set_local_health(health(&["eth0"]));
        node.set_peers(peers.clone());
    }
    assert!(
        wait_for(Duration::from_secs(5), || nodes.iter().all(|n| {
            let view = n.view().borrow().clone();
            view.settled && view.live_nodes().len() == 3 && view.members.values().all(|m| m.health.is_some())
        }))
        .await,
        "converged"
    );

    // Health changes reach the node that watches closely within a few probes.
    nodes[1].watch_closely(["node-0".to_string()].into());
    nodes[0].set_local_health(health(&[]));
    assert!(
        wait_for(Duration::from_secs(2), || {
            nodes[1]
                .view()
                .borrow()
                .health_of("node-0")
                .is_some_and(|h| h.interfaces.is_empty())
        })
        .await,
        "health spread"
    );

    network.unregister(address(0));
    nodes[0].kill();
    assert!(
        wait_for(Duration::from_secs(3), || {
            nodes[1..]
                .iter()
                .all(|n| n.view().borrow().state_of("node-0") == Some(MemberState::Dead))
        })
        .await,
        "kill detected"
    );
    assert!(nodes[1].metrics().sent_count(Rpc::Ping) > 0);

    let mut registry = Registry::default();
    nodes[1].metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(text.contains("membership_members{state=\"dead\"} 1"), "{text}");
    assert!(text.contains("membership_messages_sent_total{rpc=\"ping\"}"), "{text}");
    for node in nodes {
        node.shutdown().await;
    }
}
