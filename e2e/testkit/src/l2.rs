//! An L2 lab, for the announcer's tests and the ARP flood bench: a switch in its own
//! namespace; a client namespace and node namespaces each reach it through a veth pair. Nodes
//! name their segment link `veth-lan` (and node A has a second one, `veth-alt`), so the
//! default exclusion of `veth*` is in force unless overridden, as on the lab machines. Every
//! namespace is deleted when the [`L2Lab`] drops, also on panic.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Namespaces, Segment, add_address, run, run_in};

pub const CLIENT_MAC: &str = "02:c0:00:00:00:01";
pub const NODE_A_MAC: &str = "02:a0:00:00:00:01";
pub const NODE_A_ALT_MAC: &str = "02:a0:00:00:00:02";
pub const NODE_B_MAC: &str = "02:b0:00:00:00:01";
pub const CLIENT_V4: &str = "10.203.0.1";
pub const CLIENT_V6: &str = "fd00:203::1";
pub const VIP_V4: &str = "10.203.0.100";
pub const VIP_V6: &str = "fd00:203::100";

static LAB_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The namespaces of one test (a switch, a client, node A and optionally node B); all deleted
/// on drop.
pub struct L2Lab {
    pub client: String,
    pub node_a: String,
    pub node_b: String,
    segment: Segment,
    namespaces: Namespaces,
}

impl L2Lab {
    /// Bridge, client and nodes A and B, with addresses and fixed MACs, all links up.
    pub fn new(with_node_b: bool) -> L2Lab {
        let mut namespaces = Namespaces::new("hrl-ann", LAB_COUNTER.fetch_add(1, Ordering::SeqCst));
        let segment = Segment::new(&namespaces.add("br"));
        let mut lab = L2Lab {
            client: namespaces.add("c"),
            node_a: namespaces.add("a"),
            node_b: namespaces.name("b"),
            segment,
            namespaces,
        };
        lab.attach(&lab.client, "lan0", CLIENT_MAC, "pc");
        add_address(&lab.client, "lan0", CLIENT_V4.parse().unwrap(), 24);
        add_address(&lab.client, "lan0", CLIENT_V6.parse().unwrap(), 64);
        lab.attach(&lab.node_a, "veth-lan", NODE_A_MAC, "pa");
        lab.attach(&lab.node_a, "veth-alt", NODE_A_ALT_MAC, "pa2");
        add_address(&lab.node_a, "veth-lan", "10.203.0.2".parse().unwrap(), 24);
        if with_node_b {
            lab.namespaces.add("b");
            lab.attach(&lab.node_b, "veth-lan", NODE_B_MAC, "pb");
            add_address(&lab.node_b, "veth-lan", "10.203.0.3".parse().unwrap(), 24);
        }
        lab
    }

    /// A veth pair from `ns` (as `name`, with `mac`) to the switch (as `port`).
    pub fn attach(&self, ns: &str, name: &str, mac: &str, port: &str) {
        self.segment.plug(ns, name, mac, port);
    }

    /// MACs that answered `arping` for `ip` from the client within two seconds.
    pub fn arping(&self, ip: &str) -> Vec<String> {
        // -c 2 with -w 2: two requests a second apart, waiting for two replies or 2 s, so a
        // second answerer shows up and a reply slowed by a loaded machine still counts.
        let output = run_in(&self.client, "arping", &["-c", "2", "-w", "2", "-I", "lan0", ip]);
        let mut macs: Vec<String> = output
            .lines()
            .filter(|line| line.contains("reply from"))
            .filter_map(|line| Some(line.split('[').nth(1)?.split(']').next()?.to_lowercase()))
            .collect();
        macs.sort();
        macs.dedup();
        macs
    }

    /// MACs in the Neighbor Advertisements `ndisc6` got for `ip` (two tries of 700 ms).
    pub fn ndisc6(&self, ip: &str) -> Vec<String> {
        let output = run_in(
            &self.client,
            "ndisc6",
            &["-m", "-n", "-r", "2", "-w", "700", ip, "lan0"],
        );
        let mut macs: Vec<String> = output
            .lines()
            .filter(|line| line.contains("Target link-layer address"))
            .filter_map(|line| Some(line.split_once(':')?.1.trim().to_lowercase()))
            .collect();
        macs.sort();
        macs.dedup();
        macs
    }

    /// The client's neighbour entry for `ip`: (MAC, state), if any.
    pub fn client_neighbour(&self, ip: &str) -> Option<(String, String)> {
        let output = run_in(&self.client, "ip", &["neigh", "show", ip, "dev", "lan0"]);
        let words: Vec<&str> = output.split_whitespace().collect();
        let mac = words
            .iter()
            .position(|word| *word == "lladdr")
            .and_then(|at| words.get(at + 1))?;
        Some((mac.to_lowercase(), words.last()?.to_string()))
    }

    /// Sets the client's neighbour entry for `ip` to `mac` in `state` (reachable, stale, delay).
    pub fn set_client_neighbour(&self, ip: &str, mac: &str, state: &str) {
        run(
            "ip",
            &[
                "-n",
                &self.client,
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                "lan0",
                "nud",
                state,
            ],
        );
    }

    /// Sends one ping from the client to `ip` in the background: a STALE entry goes to
    /// DELAY, the state a client is in right after it used a stale entry. (An entry set to
    /// DELAY with `ip neigh` moves on to PROBE at once, since it was not used.)
    pub fn ping_from_client(&self, ip: &str) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.client, "ping", "-c", "1", "-W", "1", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ping")
    }
}
