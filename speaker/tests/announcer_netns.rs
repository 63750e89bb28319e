//! The announcer on real links, checked with tools we did not write: a client namespace and
//! two node namespaces on one bridge (see `announcer_support`), `arping` (iputils) and
//! `ndisc6` from the client, and the client kernel's own neighbour cache.
//!
//! Needs root, `ip`, `arping` and `ndisc6`; under `CI=true` their absence fails the test,
//! elsewhere it is skipped with the reason printed.

mod announcer_support;

use std::time::{Duration, Instant};

use announcer_support::{HELPER_ENV, Helper, run_helper};
use herald_testkit::l2::{CLIENT_MAC, L2Lab, NODE_A_MAC, NODE_B_MAC, VIP_V4, VIP_V6};
use herald_testkit::{may_run, run, run_in};

const TOOLS: &[&str] = &["ip", "arping", "ndisc6"];

/// Entry point of the announcer helper process (this binary re-executed inside a node
/// namespace with `HERALD_ANNOUNCER_HELPER=1`); a no-op in a normal test run.
#[test]
fn helper_process_entry() {
    if std::env::var_os(HELPER_ENV).is_some() {
        run_helper();
    }
}

fn helper(ns: &str) -> Helper {
    helper_with_burst(ns, "")
}

/// `burst_ms`: comma-separated gratuitous offsets ("0": a single frame); empty: the default.
fn helper_with_burst(ns: &str, burst_ms: &str) -> Helper {
    let args = ["helper_process_entry", "--exact", "--nocapture", "--test-threads=1"].map(String::from);
    // The node's links are veths: the explicit list overrides the default `veth*` exclusion.
    let helper = Helper::start(ns, &args, "veth-lan", burst_ms);
    assert_eq!(helper.usable, "veth-lan", "usable interfaces in {ns}");
    helper
}

#[test]
fn only_the_owner_answers_on_its_interface_and_stops_when_it_loses_the_ip() {
    if !may_run(
        "only_the_owner_answers_on_its_interface_and_stops_when_it_loses_the_ip",
        TOOLS,
    ) {
        return;
    }
    let lab = L2Lab::new(true);
    let mut node_a = helper(&lab.node_a);
    let mut node_b = helper(&lab.node_b);
    node_a.own(&[VIP_V4, VIP_V6]);
    node_b.own(&[]);

    // Only A's announcing link answers: not B, and not A's second (excluded) veth.
    assert_eq!(lab.arping(VIP_V4), [NODE_A_MAC]);
    assert_eq!(lab.ndisc6(VIP_V6), [NODE_A_MAC]);
    // Nobody answers for an IP nobody owns.
    assert!(lab.arping("10.203.0.101").is_empty());
    assert!(lab.ndisc6("fd00:203::101").is_empty());

    node_a.own(&[]);
    assert!(lab.arping(VIP_V4).is_empty(), "answered after losing the IP");
    assert!(lab.ndisc6(VIP_V6).is_empty(), "answered after losing the IP");

    node_b.own(&[VIP_V4, VIP_V6]);
    assert_eq!(lab.arping(VIP_V4), [NODE_B_MAC]);
    assert_eq!(lab.ndisc6(VIP_V6), [NODE_B_MAC]);
}

/// Waits (bounded) until the client's entry for `ip` is in `state`.
fn wait_for_state(lab: &L2Lab, ip: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let entry = lab.client_neighbour(ip);
        if entry.as_ref().is_some_and(|(_, got)| got == state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ip}: client entry {entry:?} never reached {state}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn takeover_switches_the_client_neighbour_cache_from_reachable_stale_and_delay() {
    if !may_run(
        "takeover_switches_the_client_neighbour_cache_from_reachable_stale_and_delay",
        TOOLS,
    ) {
        return;
    }
    let lab = L2Lab::new(true);
    // One gratuitous frame per gain: it alone must switch the entry (the default burst's
    // repeats would also keep rewriting the states this test sets up).
    let mut node_a = helper_with_burst(&lab.node_a, "0");
    let mut node_b = helper_with_burst(&lab.node_b, "0");
    let mut owner_is_a = true;
    node_a.own(&[VIP_V4, VIP_V6]);
    // Let A's own burst finish so the takeover is announced by B's frames alone.
    std::thread::sleep(Duration::from_millis(200));

    let mut report = Vec::new();
    for state in ["reachable", "stale", "delay"] {
        let (old_mac, new_mac) = if owner_is_a {
            (NODE_A_MAC, NODE_B_MAC)
        } else {
            (NODE_B_MAC, NODE_A_MAC)
        };
        let mut pings = Vec::new();
        for ip in [VIP_V4, VIP_V6] {
            if state == "delay" {
                lab.set_client_neighbour(ip, old_mac, "stale");
                pings.push(lab.ping_from_client(ip));
            } else {
                lab.set_client_neighbour(ip, old_mac, state);
            }
        }
        for ip in [VIP_V4, VIP_V6] {
            wait_for_state(&lab, ip, &state.to_uppercase());
        }
        for ip in [VIP_V4, VIP_V6] {
            let (mac, got_state) = lab.client_neighbour(ip).expect("entry just set");
            assert_eq!(
                (mac.as_str(), got_state.as_str()),
                (old_mac, state.to_uppercase().as_str())
            );
        }

        let (loser, winner) = if owner_is_a {
            (&mut node_a, &mut node_b)
        } else {
            (&mut node_b, &mut node_a)
        };
        loser.own(&[]);
        let moved = Instant::now();
        winner.own(&[VIP_V4, VIP_V6]);
        owner_is_a = !owner_is_a;

        for ip in [VIP_V4, VIP_V6] {
            let deadline = moved + Duration::from_secs(2);
            loop {
                let entry = lab.client_neighbour(ip);
                if entry.as_ref().is_some_and(|(mac, _)| mac == new_mac) {
                    report.push((ip, state, moved.elapsed()));
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{ip}: client entry {entry:?} did not switch to {new_mac} from {state}"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        for mut ping in pings {
            herald_testkit::cleanup("waiting for ping", ping.wait());
        }
    }
    for (ip, state, after) in &report {
        eprintln!("{ip} from {state}: client switched {after:?} after the takeover");
        assert!(
            *after < Duration::from_millis(400),
            "{ip} from {state}: switch took {after:?}"
        );
    }
}

/// Polls the helper (bounded) until its usable interfaces are `want`; returns how long it took.
fn wait_for_usable(helper: &mut Helper, want: &str) -> Duration {
    let started = Instant::now();
    loop {
        let usable = helper.usable_now();
        if usable == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "usable {usable:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn interface_changes_are_followed_within_a_second_and_veths_need_naming() {
    if !may_run(
        "interface_changes_are_followed_within_a_second_and_veths_need_naming",
        TOOLS,
    ) {
        return;
    }
    let lab = L2Lab::new(false);
    let args = ["helper_process_entry", "--exact", "--nocapture", "--test-threads=1"].map(String::from);
    // Default selection: the node's only links are veths, excluded by default.
    let mut default_selection = Helper::start(&lab.node_a, &args, "", "");
    assert_eq!(default_selection.usable, "", "veths must not be picked by default");
    // ...but they can announce, so the node tells its peers an advertisement may name them.
    assert_eq!(default_selection.others_now(), "veth-alt,veth-lan");
    drop(default_selection);

    let mut node = Helper::start(&lab.node_a, &args, "veth-lan,veth-new", "");
    assert_eq!(node.usable, "veth-lan");
    node.own(&[VIP_V4]);

    lab.attach(&lab.node_a, "veth-new", "02:a0:00:00:00:03", "pa3");
    let took = wait_for_usable(&mut node, "veth-lan,veth-new");
    eprintln!("new link usable after {took:?}");
    assert!(took < Duration::from_secs(1), "new link noticed after {took:?}");

    run("ip", &["-n", &lab.node_a, "link", "set", "veth-lan", "down"]);
    let took = wait_for_usable(&mut node, "veth-new");
    eprintln!("down link dropped after {took:?}");
    assert!(took < Duration::from_secs(1), "down link noticed after {took:?}");
    // Both of node A's remaining links share the bridge; only the usable one answers.
    assert_eq!(lab.arping(VIP_V4), ["02:a0:00:00:00:03"]);

    run("ip", &["-n", &lab.node_a, "link", "set", "veth-lan", "up"]);
    let took = wait_for_usable(&mut node, "veth-lan,veth-new");
    assert!(took < Duration::from_secs(1), "link back up noticed after {took:?}");
}

#[test]
fn unicast_reachability_probes_are_answered() {
    if !may_run("unicast_reachability_probes_are_answered", TOOLS) {
        return;
    }
    let lab = L2Lab::new(false);
    let mut node = helper(&lab.node_a);
    node.own(&[VIP_V4, VIP_V6]);
    // Probe one second after a stale entry is used, instead of the default five.
    for sysctl in [
        "net.ipv4.neigh.lan0.delay_first_probe_time=1",
        "net.ipv6.neigh.lan0.delay_first_probe_time=1",
    ] {
        run("ip", &["netns", "exec", &lab.client, "sysctl", "-q", "-w", sysctl]);
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut pings = Vec::new();
    for ip in [VIP_V4, VIP_V6] {
        lab.set_client_neighbour(ip, NODE_A_MAC, "stale");
        pings.push(lab.ping_from_client(ip));
    }
    // STALE → DELAY → PROBE: the client kernel sends unicast probes to NODE_A_MAC and the
    // target IP itself; only an answer to those makes the entry REACHABLE again.
    for ip in [VIP_V4, VIP_V6] {
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            let entry = lab.client_neighbour(ip);
            if entry
                .as_ref()
                .is_some_and(|(mac, state)| mac == NODE_A_MAC && state == "REACHABLE")
            {
                break;
            }
            assert!(Instant::now() < deadline, "{ip}: probe not answered, entry {entry:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for mut ping in pings {
        herald_testkit::cleanup("waiting for ping", ping.wait());
    }
}

/// Sends, from the client's `lan0`, `count` ARP requests for `target` tagged with VLAN `vlan`
/// (raw frames: this kernel may have no VLAN devices).
fn send_tagged_arp_requests(lab: &L2Lab, vlan: u16, target: &str, count: u32) {
    let script = format!(
        r#"
import socket, struct, time
mac = bytes.fromhex("{mac}".replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("lan0", 0))
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, socket.inet_aton("10.203.100.1"), bytes(6), socket.inet_aton("{target}"))
frame = b"\xff" * 6 + mac + struct.pack("!HHH", 0x8100, {vlan}, 0x0806) + arp
for _ in range({count}):
    s.send(frame)
    time.sleep(0.2)
"#,
        mac = CLIENT_MAC,
    );
    run_in(&lab.client, "python3", &["-c", &script]);
}

#[test]
fn a_request_from_another_vlan_on_the_same_wire_is_not_answered() {
    if !may_run(
        "a_request_from_another_vlan_on_the_same_wire_is_not_answered",
        &["ip", "arping", "ndisc6", "tcpdump", "python3"],
    ) {
        return;
    }
    let lab = L2Lab::new(false);
    let mut node = helper(&lab.node_a);
    node.own(&[VIP_V4]);
    assert_eq!(lab.arping(VIP_V4), [NODE_A_MAC], "the untagged segment is answered");

    // The client asks from VLAN 100 on the same wire: node A's untagged link receives the
    // frames with a tag (which the kernel takes off before packet sockets see them), and they
    // are not its network. Capture what comes back on the wire (bounded by `timeout`).
    let capture = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client,
            "timeout",
            "3",
            "tcpdump",
            "-l",
            "-n",
            "-e",
            "-i",
            "lan0",
            "arp or vlan",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(700));
    send_tagged_arp_requests(&lab, 100, VIP_V4, 5);
    let captured = capture.wait_with_output().expect("tcpdump output");
    let lines = String::from_utf8_lossy(&captured.stdout);
    assert!(
        lines.contains("vlan 100"),
        "the tagged requests were on the wire:\n{lines}"
    );
    let replies: Vec<&str> = lines.lines().filter(|l| l.contains("is-at")).collect();
    assert!(replies.is_empty(), "node A answered VLAN 100 untagged: {replies:?}");
    // The untagged segment is still answered.
    assert_eq!(lab.arping(VIP_V4), [NODE_A_MAC]);
}
