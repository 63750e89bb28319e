//! Property-based fuzzing of the ARP/NDP codecs and the responder: random bytes and mutated
//! valid frames never panic, build→parse is the identity, and frames we build read back the
//! same through an independent decoder (`pnet_packet`), checksum included.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use herald_speaker::announcer::ndp::{AdvertisementFlags, NdpFrame, NdpMessage};
use herald_speaker::announcer::responder::{Verdict, respond};
use herald_speaker::announcer::{MacAddr, arp, ndp};
use pnet_packet::Packet;
use proptest::prelude::*;

const OUR_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 2]);

fn any_mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}

fn any_ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn any_ipv6() -> impl Strategy<Value = Ipv6Addr> {
    any::<[u8; 16]>().prop_map(Ipv6Addr::from)
}

fn unicast_ipv6() -> impl Strategy<Value = Ipv6Addr> {
    any::<[u8; 16]>().prop_map(|mut octets| {
        if octets[0] == 0xff {
            octets[0] = 0xfd;
        }
        Ipv6Addr::from(octets)
    })
}

fn any_arp() -> impl Strategy<Value = arp::ArpFrame> {
    (
        any_mac(),
        any_mac(),
        any::<u16>(),
        any_mac(),
        any_ipv4(),
        any_mac(),
        any_ipv4(),
    )
        .prop_map(
            |(ethernet_destination, ethernet_source, operation, sender_mac, sender_ip, target_mac, target_ip)| {
                arp::ArpFrame {
                    ethernet_destination,
                    ethernet_source,
                    operation,
                    sender_mac,
                    sender_ip,
                    target_mac,
                    target_ip,
                }
            },
        )
}

/// Valid Neighbor Discovery frames (RFC 4861 rules hold, so they must parse back).
fn valid_ndp() -> impl Strategy<Value = NdpFrame> {
    let message = prop_oneof![
        (unicast_ipv6(), proptest::option::of(any_mac())).prop_map(|(target, source_link_layer)| {
            NdpMessage::Solicitation {
                target,
                source_link_layer,
            }
        }),
        (any::<[bool; 3]>(), unicast_ipv6(), proptest::option::of(any_mac())).prop_map(
            |([router, solicited, override_cache], target, target_link_layer)| {
                NdpMessage::Advertisement {
                    flags: AdvertisementFlags {
                        router,
                        solicited,
                        override_cache,
                    },
                    target,
                    target_link_layer,
                }
            }
        ),
    ];
    (any_mac(), any_mac(), any_ipv6(), any_ipv6(), message).prop_map(
        |(ethernet_destination, ethernet_source, source_ip, destination_ip, message)| {
            let mut frame = NdpFrame {
                ethernet_destination,
                ethernet_source,
                source_ip,
                destination_ip,
                hop_limit: ndp::HOP_LIMIT,
                message,
            };
            // A solicitation from :: is only valid to the target's group and without option.
            if let NdpMessage::Solicitation { target, .. } = message
                && source_ip.is_unspecified()
            {
                frame.destination_ip = ndp::solicited_node_group(target);
                frame.message = NdpMessage::Solicitation {
                    target,
                    source_link_layer: None,
                };
            }
            frame
        },
    )
}

fn owned(ip: IpAddr) -> bool {
    ip.to_string().ends_with("64") || ip.to_string().ends_with(".100")
}

/// Runs every decoder on `bytes`; they may fail but must not panic.
fn decode_everything(bytes: &[u8]) {
    // The results are not checked: only that no decoder panics.
    arp::parse(bytes).ok();
    ndp::parse(bytes).ok();
    drop(respond(bytes, OUR_MAC, owned));
    drop(respond(bytes, OUR_MAC, |_| true));
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, value: u8 },
    Truncate(usize),
    Extend(Vec<u8>),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(
        prop_oneof![
            4 => (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Flip { at, value }),
            1 => any::<usize>().prop_map(Mutation::Truncate),
            1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Mutation::Extend),
        ],
        1..6,
    )
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        match mutation {
            Mutation::Flip { at, value } if !bytes.is_empty() => {
                let len = bytes.len();
                bytes[at % len] = *value;
            }
            Mutation::Flip { .. } => {}
            Mutation::Truncate(len) => bytes.truncate(len % (bytes.len() + 1)),
            Mutation::Extend(tail) => bytes.extend_from_slice(tail),
        }
    }
    bytes
}

fn corpus_frames() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut frames = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "frame") {
            let text = std::fs::read_to_string(&path).unwrap();
            let hex: String = text.lines().skip(1).flat_map(|line| line.split_whitespace()).collect();
            frames.push(
                (0..hex.len())
                    .step_by(2)
                    .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
                    .collect(),
            );
        }
    }
    frames
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        decode_everything(&bytes);
    }

    #[test]
    fn random_bytes_behind_our_ethertypes_never_panic(
        ethertype in prop_oneof![Just([0x08u8, 0x06]), Just([0x86, 0xdd])],
        ipv6_prefix in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut frame = vec![0xffu8; 12];
        frame.extend_from_slice(&ethertype);
        if ipv6_prefix {
            // Valid-looking IPv6 + ICMPv6 NS start, so the fuzzer reaches the deeper checks.
            frame.extend_from_slice(&[0x60, 0, 0, 0, 0, 32, 58, 255]);
        }
        frame.extend_from_slice(&bytes);
        decode_everything(&frame);
    }

    #[test]
    fn arp_round_trips(frame in any_arp()) {
        prop_assert_eq!(arp::parse(&arp::build(&frame)), Ok(frame));
    }

    #[test]
    fn ndp_round_trips(frame in valid_ndp()) {
        prop_assert_eq!(ndp::parse(&ndp::build(&frame)), Ok(frame));
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        arp_frame in any_arp(),
        ndp_frame in valid_ndp(),
        arp_mutations in mutations(),
        ndp_mutations in mutations(),
    ) {
        decode_everything(&mutate(arp::build(&arp_frame), &arp_mutations));
        decode_everything(&mutate(ndp::build(&ndp_frame), &ndp_mutations));
    }

    #[test]
    fn mutated_corpus_frames_never_panic(pick in any::<usize>(), mutations in mutations()) {
        let corpus = corpus_frames();
        let frame = corpus[pick % corpus.len()].clone();
        decode_everything(&mutate(frame, &mutations));
    }

    #[test]
    fn built_ndp_reads_back_through_pnet(frame in valid_ndp()) {
        let bytes = ndp::build(&frame);
        let ethernet = pnet_packet::ethernet::EthernetPacket::new(&bytes).unwrap();
        let ip = pnet_packet::ipv6::Ipv6Packet::new(ethernet.payload()).unwrap();
        prop_assert_eq!(ip.get_hop_limit(), 255);
        prop_assert_eq!(ip.get_source(), frame.source_ip);
        prop_assert_eq!(ip.get_destination(), frame.destination_ip);
        let icmp = pnet_packet::icmpv6::Icmpv6Packet::new(ip.payload()).unwrap();
        let expected = pnet_packet::icmpv6::checksum(&icmp, &frame.source_ip, &frame.destination_ip);
        prop_assert_eq!(icmp.get_checksum(), expected);
        if let NdpMessage::Advertisement { flags, target, .. } = frame.message {
            let advert = pnet_packet::icmpv6::ndp::NeighborAdvertPacket::new(ip.payload()).unwrap();
            prop_assert_eq!(advert.get_target_addr(), target);
            prop_assert_eq!(advert.get_flags() & 0x20 != 0, flags.override_cache);
            prop_assert_eq!(advert.get_flags() & 0x40 != 0, flags.solicited);
        }
    }

    #[test]
    fn built_arp_reads_back_through_pnet(frame in any_arp()) {
        let bytes = arp::build(&frame);
        let ethernet = pnet_packet::ethernet::EthernetPacket::new(&bytes).unwrap();
        let packet = pnet_packet::arp::ArpPacket::new(ethernet.payload()).unwrap();
        prop_assert_eq!(packet.get_operation().0, frame.operation);
        prop_assert_eq!(packet.get_sender_hw_addr().octets(), frame.sender_mac.0);
        prop_assert_eq!(packet.get_sender_proto_addr(), frame.sender_ip);
        prop_assert_eq!(packet.get_target_proto_addr(), frame.target_ip);
    }
}

#[test]
fn answers_are_only_ever_for_owned_ips() {
    // Every corpus frame, mutated exhaustively at each byte, never yields an answer for an IP
    // the closure does not own.
    for frame in corpus_frames() {
        for at in 0..frame.len() {
            for value in [0u8, 1, 0x7f, 0xff] {
                let mut bytes = frame.clone();
                bytes[at] = value;
                if let Verdict::Answer { ip, .. } = respond(&bytes, OUR_MAC, owned) {
                    assert!(owned(ip), "answered for {ip}");
                }
            }
        }
    }
}
