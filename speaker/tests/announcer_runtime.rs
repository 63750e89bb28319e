//! The running announcer on in-memory links: interface selection and changes, answering and
//! not answering, the gratuitous schedule, multicast membership, metrics and shutdown.
//! No root needed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_speaker::announcer::fake::{FakeMulticast, FakeNetwork, SentFrame};
use herald_speaker::announcer::ndp::{self, NdpFrame, NdpMessage};
use herald_speaker::announcer::{AnnounceSchedule, AnnounceTarget, Announcer, AnnouncerConfig, Backends, MacAddr, arp};
use herald_speaker::links::{InterfacePolicy, LinkInfo, Links};
use tokio::sync::watch;

const CLIENT_MAC: MacAddr = MacAddr([0x02, 0xcc, 0, 0, 0, 1]);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 100);

fn link(name: &str, index: u32) -> LinkInfo {
    LinkInfo {
        name: name.to_string(),
        index,
        mac: Some(mac_of(index)),
        up: true,
        running: true,
        broadcast: true,
        loopback: false,
        has_master: false,
    }
}

fn mac_of(index: u32) -> MacAddr {
    MacAddr([0x02, 0xaa, 0, 0, 0, index as u8])
}

fn vip6() -> Ipv6Addr {
    "fd00:203::64".parse().unwrap()
}

/// An announcer on fake links and a fake network (no namespaces: see `announcer_netns` for
/// real links).
struct Fixture {
    /// The links as a link watch would publish them.
    links: watch::Sender<Links>,
    network: FakeNetwork,
    multicast: FakeMulticast,
    announcer: Announcer,
}

fn fast_config() -> AnnouncerConfig {
    AnnouncerConfig {
        schedule: AnnounceSchedule {
            burst: vec![Duration::ZERO, Duration::from_millis(100), Duration::from_millis(200)],
            periodic: None,
        },
        check_interval: Duration::from_millis(20),
        read_timeout: Duration::from_millis(10),
        ..AnnouncerConfig::default()
    }
}

fn lab_with(links: Vec<LinkInfo>, config: AnnouncerConfig, network: FakeNetwork) -> Fixture {
    let (links, links_rx) = watch::channel(Links::from(links));
    let multicast = FakeMulticast::default();
    let announcer = Announcer::start_with(
        config,
        Backends {
            links: Arc::new(network.clone()),
            multicast: Box::new(multicast.clone()),
        },
        links_rx,
    )
    .expect("start");
    Fixture {
        links,
        network,
        multicast,
        announcer,
    }
}

fn lab(links: Vec<LinkInfo>) -> Fixture {
    lab_with(links, fast_config(), FakeNetwork::default())
}

fn own(ips: &[(IpAddr, Option<&[&str]>)]) -> BTreeMap<IpAddr, AnnounceTarget> {
    ips.iter()
        .map(|(ip, only)| {
            let interfaces = only.map(|names| names.iter().map(|name| name.to_string()).collect());
            (*ip, AnnounceTarget { interfaces })
        })
        .collect()
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    arp::build(&arp::ArpFrame {
        ethernet_destination: MacAddr::BROADCAST,
        ethernet_source: CLIENT_MAC,
        operation: arp::OP_REQUEST,
        sender_mac: CLIENT_MAC,
        sender_ip: Ipv4Addr::new(10, 203, 0, 1),
        target_mac: MacAddr::ZERO,
        target_ip: target,
    })
}

fn solicitation(target: Ipv6Addr) -> Vec<u8> {
    ndp::build(&NdpFrame {
        ethernet_destination: ndp::multicast_mac(ndp::solicited_node_group(target)),
        ethernet_source: CLIENT_MAC,
        source_ip: "fd00:203::1".parse().unwrap(),
        destination_ip: ndp::solicited_node_group(target),
        hop_limit: 255,
        message: NdpMessage::Solicitation {
            target,
            source_link_layer: Some(CLIENT_MAC),
        },
    })
}

/// Replies (not gratuitous frames) among `sent`.
fn arp_replies(sent: &[SentFrame]) -> Vec<(String, arp::ArpFrame)> {
    sent.iter()
        .filter_map(|frame| {
            let parsed = arp::parse(&frame.frame).ok()?;
            (parsed.operation == arp::OP_REPLY).then(|| (frame.link.clone(), parsed))
        })
        .collect()
}

/// How long an expected answer may take (generous: CI machines are shared).
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// How long to listen before concluding there is no answer.
const SILENCE_WAIT: Duration = Duration::from_millis(300);

/// Injects `frame` on `link` and returns what was sent until the first frame or `wait`.
fn exchange(lab: &Fixture, link: &str, frame: Vec<u8>, wait: Duration) -> Vec<SentFrame> {
    lab.network.take_sent();
    assert!(lab.network.inject(link, frame), "link {link} not open");
    lab.network.wait_for_sent(1, wait);
    lab.network.take_sent()
}

fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn default_selection_and_explicit_override() {
    let links = vec![link("eth0", 2), link("veth-node", 3), link("cni0", 4)];
    let lab = lab(links.clone());
    assert_eq!(lab.announcer.usable_interfaces(), ["eth0"]);
    assert!(lab.announcer.status().ready);

    let config = AnnouncerConfig {
        interfaces: InterfacePolicy {
            explicit: Some(vec!["veth-node".into()]),
            ..InterfacePolicy::default()
        },
        ..fast_config()
    };
    let explicit = lab_with(links, config, FakeNetwork::default());
    assert_eq!(explicit.announcer.usable_interfaces(), ["veth-node"]);
}

#[test]
fn answers_arp_for_owned_ip_on_its_link_only_and_stops_when_lost() {
    let lab = lab(vec![link("eth0", 2), link("eth1", 3)]);
    lab.announcer.set_owned(own(&[(IpAddr::V4(VIP), Some(&["eth1"]))]));
    lab.network.wait_for_sent(1, Duration::from_secs(1));

    let replies = arp_replies(&exchange(&lab, "eth1", arp_request(VIP), ANSWER_WAIT));
    assert_eq!(replies.len(), 1, "one reply on eth1");
    assert_eq!(replies[0].0, "eth1");
    assert_eq!(replies[0].1.sender_mac, mac_of(3));
    assert_eq!(replies[0].1.ethernet_destination, CLIENT_MAC);

    assert!(arp_replies(&exchange(&lab, "eth0", arp_request(VIP), SILENCE_WAIT)).is_empty());
    let other = Ipv4Addr::new(10, 203, 0, 101);
    assert!(arp_replies(&exchange(&lab, "eth1", arp_request(other), SILENCE_WAIT)).is_empty());

    lab.announcer.set_owned(BTreeMap::new());
    assert!(arp_replies(&exchange(&lab, "eth1", arp_request(VIP), SILENCE_WAIT)).is_empty());
    let metrics = lab.announcer.metrics();
    assert_eq!(metrics.requests_received_for(IpAddr::V4(VIP)), 1);
    assert_eq!(metrics.responses_sent_for(IpAddr::V4(VIP)), 1);
}

#[test]
fn gain_sends_a_gratuitous_burst_on_schedule_and_set_owned_is_idempotent() {
    let lab = lab(vec![link("eth0", 2), link("eth1", 3)]);
    let started = Instant::now();
    let owned = own(&[(IpAddr::V4(VIP), None)]);
    lab.announcer.set_owned(owned.clone());
    lab.announcer.set_owned(owned);
    let sent = lab.network.wait_for_sent(6, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));
    let sent_after = lab.network.sent();
    assert_eq!(sent_after.len(), 6, "3 steps x 2 links, no second burst: {sent:?}");
    for frame in &sent_after {
        let garp = arp::parse(&frame.frame).unwrap();
        assert!(garp.is_gratuitous());
        assert_eq!(garp.operation, arp::OP_REQUEST);
        assert_eq!(garp.ethernet_destination, MacAddr::BROADCAST);
        assert_eq!(garp.target_mac, MacAddr::ZERO);
    }
    let first = sent_after[0].at.duration_since(started);
    assert!(first < Duration::from_millis(90), "first GARP after {first:?}");
    let last = sent_after[5].at.duration_since(started);
    assert!(last >= Duration::from_millis(200), "last GARP after {last:?}");
    assert_eq!(lab.announcer.metrics().gratuitous_sent_for(IpAddr::V4(VIP)), 6);
}

#[test]
fn announcing_again_repeats_the_burst_for_every_owned_ip() {
    let lab = lab(vec![link("eth0", 2)]);
    lab.announcer.set_owned(own(&[(IpAddr::V4(VIP), None)]));
    lab.network.wait_for_sent(3, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.network.sent().len(), 3, "one burst");
    // Peers had declared this node dead: the network may point elsewhere.
    lab.announcer.announce_again();
    let sent = lab.network.wait_for_sent(6, Duration::from_secs(3));
    assert_eq!(sent.len(), 6, "a second burst: {sent:?}");
    assert!(
        sent.iter()
            .all(|frame| arp::parse(&frame.frame).unwrap().is_gratuitous())
    );
}

#[test]
fn loss_during_the_burst_stops_it() {
    let lab = lab(vec![link("eth0", 2)]);
    lab.announcer.set_owned(own(&[(IpAddr::V4(VIP), None)]));
    lab.network.wait_for_sent(1, Duration::from_secs(1));
    lab.announcer.set_owned(BTreeMap::new());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.network.sent().len(), 1);
}

#[test]
fn ipv6_joins_solicited_node_group_answers_and_leaves() {
    let lab = lab(vec![link("eth0", 2)]);
    lab.announcer.set_owned(own(&[(IpAddr::V6(vip6()), None)]));
    let group = ndp::solicited_node_group(vip6());
    assert!(lab.multicast.joined().contains(&(2, group)));

    let unsolicited = lab.network.wait_for_sent(1, Duration::from_secs(1));
    let na = ndp::parse(&unsolicited[0].frame).unwrap();
    assert_eq!(na, ndp::unsolicited_advertisement(vip6(), mac_of(2)));

    std::thread::sleep(Duration::from_millis(300));
    let answer = exchange(&lab, "eth0", solicitation(vip6()), ANSWER_WAIT);
    assert_eq!(answer.len(), 1);
    let na = ndp::parse(&answer[0].frame).unwrap();
    let NdpMessage::Advertisement {
        flags,
        target_link_layer,
        ..
    } = na.message
    else {
        panic!("not an advertisement: {na:?}");
    };
    assert!(flags.solicited && flags.override_cache && !flags.router);
    assert_eq!(target_link_layer, Some(mac_of(2)));
    assert_eq!(na.ethernet_destination, CLIENT_MAC);

    lab.announcer.set_owned(BTreeMap::new());
    assert!(lab.multicast.joined().is_empty());
    assert!(exchange(&lab, "eth0", solicitation(vip6()), SILENCE_WAIT).is_empty());
}

#[test]
fn interface_changes_are_followed_within_a_poll() {
    let lab = lab(vec![link("eth0", 2)]);
    let mut usable = lab.announcer.watch_usable_interfaces();
    lab.announcer.set_owned(own(&[(IpAddr::V4(VIP), None)]));
    lab.network.wait_for_sent(3, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));
    lab.network.take_sent();
    usable.mark_unchanged();

    // A new link comes up: it becomes usable and the owned IP is announced on it at once.
    lab.links
        .send_replace(Links::from(vec![link("eth0", 2), link("eth1", 3)]));
    wait_until("eth1 usable", Duration::from_secs(3), || {
        usable.has_changed().unwrap_or(false)
    });
    assert_eq!(*usable.borrow_and_update(), ["eth0", "eth1"]);
    let sent = lab.network.wait_for_sent(1, Duration::from_secs(3));
    assert!(sent.iter().any(|frame| frame.link == "eth1"), "{sent:?}");
    assert_eq!(lab.announcer.status().announced[&IpAddr::V4(VIP)], ["eth0", "eth1"]);

    // eth0 loses carrier: no longer usable, no longer announced there.
    let mut down = link("eth0", 2);
    down.running = false;
    lab.links.send_replace(Links::from(vec![down, link("eth1", 3)]));
    wait_until("eth0 gone", Duration::from_secs(3), || {
        lab.announcer.usable_interfaces() == ["eth1"]
    });
    assert_eq!(lab.announcer.status().announced[&IpAddr::V4(VIP)], ["eth1"]);

    // Renamed eth1 → lan0 (same index): followed as a removal plus an addition.
    lab.links.send_replace(Links::from(vec![link("lan0", 3)]));
    wait_until("lan0 usable", Duration::from_secs(3), || {
        lab.announcer.usable_interfaces() == ["lan0"]
    });
}

#[test]
fn interface_that_cannot_be_opened_is_not_usable() {
    let network = FakeNetwork::default();
    network.refuse_open("eth1");
    let lab = lab_with(vec![link("eth0", 2), link("eth1", 3)], fast_config(), network);
    assert_eq!(lab.announcer.usable_interfaces(), ["eth0"]);
    assert!(lab.announcer.status().link_errors.contains_key("eth1"));
}

#[test]
fn malformed_frames_are_counted_not_answered() {
    let lab = lab(vec![link("eth0", 2)]);
    lab.announcer.set_owned(own(&[(IpAddr::V6(vip6()), None)]));
    lab.network.wait_for_sent(3, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));
    let mut bad_hop = solicitation(vip6());
    bad_hop[21] = 1;
    assert!(exchange(&lab, "eth0", bad_hop, SILENCE_WAIT).is_empty());
    let mut bad_sum = solicitation(vip6());
    bad_sum[60] ^= 0xff;
    assert!(exchange(&lab, "eth0", bad_sum, SILENCE_WAIT).is_empty());
    assert!(exchange(&lab, "eth0", arp_request(VIP)[..20].to_vec(), SILENCE_WAIT).is_empty());
    let metrics = lab.announcer.metrics();
    assert_eq!(metrics.dropped_frames_for("bad_hop_limit"), 1);
    assert_eq!(metrics.dropped_frames_for("bad_checksum"), 1);
    assert_eq!(metrics.dropped_frames_for("truncated"), 1);
}

#[test]
fn shutdown_is_prompt_and_stops_answering() {
    let lab = lab(vec![link("eth0", 2)]);
    lab.announcer.set_owned(own(&[(IpAddr::V4(VIP), None)]));
    let started = Instant::now();
    lab.announcer.shutdown();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(lab.announcer.usable_interfaces().is_empty());
    assert!(lab.announcer.status().announced.is_empty());
    assert!(!lab.network.inject("eth0", arp_request(VIP)));
}

#[test]
fn reader_threads_take_the_configured_nice_value() {
    let config = AnnouncerConfig {
        reader_nice: Some(4),
        ..fast_config()
    };
    let lab = lab_with(vec![link("nice0", 2)], config, FakeNetwork::default());
    lab.announcer.set_owned(own(&[(IpAddr::V4(VIP), None)]));
    // Still answers; and the reader thread (named after its link, unique in this binary)
    // runs at nice 4.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        arp_replies(&exchange(&lab, "nice0", arp_request(VIP), ANSWER_WAIT)).len(),
        1
    );
    let reader_nice = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .find(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == "herald-l2-nice0")
        })
        .map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            // Field 19 is the nice value; count from after the ")" closing the thread name.
            let after_name = stat.rsplit(')').next().unwrap().to_string();
            after_name.split_whitespace().nth(16).unwrap().parse::<i32>().unwrap()
        });
    assert_eq!(reader_nice, Some(4));
}
