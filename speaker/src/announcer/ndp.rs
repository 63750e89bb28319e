//! IPv6 Neighbor Discovery (RFC 4861) Neighbor Solicitations and Advertisements: pure parse,
//! validate and build functions over Ethernet frames.
//!
//! Validation follows RFC 4861 §7.1.1/§7.1.2: hop limit 255, code 0, ICMPv6 length ≥ 24, a
//! correct checksum, a non-multicast target, options of non-zero length that stay inside the
//! message, and a solicitation from `::` only towards a solicited-node group and without a
//! source link-layer option. Messages behind IPv6 extension headers are not looked at (treated
//! as not ours): Neighbor Discovery senders do not use them.

use std::net::Ipv6Addr;

use super::frame::{ETHERTYPE_IPV6, EthernetHeader, FrameError, MacAddr};

const IPV6_HEADER_LEN: usize = 40;
const NEXT_HEADER_ICMPV6: u8 = 58;
const TYPE_NEIGHBOR_SOLICITATION: u8 = 135;
const TYPE_NEIGHBOR_ADVERTISEMENT: u8 = 136;
const OPTION_SOURCE_LINK_LAYER: u8 = 1;
const OPTION_TARGET_LINK_LAYER: u8 = 2;
/// Type, code, checksum, 4 bytes of flags/reserved, 16 bytes of target.
const MESSAGE_FIXED_LEN: usize = 24;
/// Every Neighbor Discovery packet is sent, and must arrive, with this hop limit.
pub const HOP_LIMIT: u8 = 255;

/// All-nodes link-local multicast address, destination of unsolicited advertisements.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Flags of a Neighbor Advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdvertisementFlags {
    pub router: bool,
    pub solicited: bool,
    /// Without it Linux keeps a cached MAC: every advertisement Herald sends sets it.
    pub override_cache: bool,
}

/// The Neighbor Discovery message inside the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdpMessage {
    Solicitation {
        target: Ipv6Addr,
        source_link_layer: Option<MacAddr>,
    },
    Advertisement {
        flags: AdvertisementFlags,
        target: Ipv6Addr,
        target_link_layer: Option<MacAddr>,
    },
}

impl NdpMessage {
    pub fn target(&self) -> Ipv6Addr {
        match self {
            NdpMessage::Solicitation { target, .. } | NdpMessage::Advertisement { target, .. } => *target,
        }
    }
}

/// A Neighbor Discovery message with the Ethernet and IPv6 headers around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdpFrame {
    pub ethernet_destination: MacAddr,
    pub ethernet_source: MacAddr,
    pub source_ip: Ipv6Addr,
    pub destination_ip: Ipv6Addr,
    pub hop_limit: u8,
    pub message: NdpMessage,
}

/// The solicited-node multicast group of `ip` (`ff02::1:ffXX:XXXX`, RFC 4291 §2.7.1).
pub fn solicited_node_group(ip: Ipv6Addr) -> Ipv6Addr {
    let octets = ip.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, octets[13], octets[14], octets[15],
    ])
}

/// The Ethernet address an IPv6 multicast group maps to (`33:33` + its last 32 bits).
pub fn multicast_mac(group: Ipv6Addr) -> MacAddr {
    let octets = group.octets();
    MacAddr([0x33, 0x33, octets[12], octets[13], octets[14], octets[15]])
}

/// Parses and validates an Ethernet frame carrying a Neighbor Solicitation or Advertisement.
pub fn parse(frame: &[u8]) -> Result<NdpFrame, FrameError> {
    let ethernet = EthernetHeader::parse(frame)?;
    if ethernet.ethertype != ETHERTYPE_IPV6 {
        return Err(FrameError::NotForUs);
    }
    let ip_header = frame
        .get(EthernetHeader::LEN..EthernetHeader::LEN + IPV6_HEADER_LEN)
        .ok_or(FrameError::Truncated)?;
    if ip_header[0] >> 4 != 6 {
        return Err(FrameError::BadIpv6Header);
    }
    if ip_header[6] != NEXT_HEADER_ICMPV6 {
        return Err(FrameError::NotForUs);
    }
    let payload_len = usize::from(u16::from_be_bytes([ip_header[4], ip_header[5]]));
    let hop_limit = ip_header[7];
    let source_ip = ipv6(&ip_header[8..24]);
    let destination_ip = ipv6(&ip_header[24..40]);
    let payload_start = EthernetHeader::LEN + IPV6_HEADER_LEN;
    let message = frame
        .get(payload_start..payload_start + payload_len)
        .ok_or(FrameError::Truncated)?;
    let message_type = *message.first().ok_or(FrameError::NotForUs)?;
    if message_type != TYPE_NEIGHBOR_SOLICITATION && message_type != TYPE_NEIGHBOR_ADVERTISEMENT {
        return Err(FrameError::NotForUs);
    }
    if hop_limit != HOP_LIMIT {
        return Err(FrameError::BadHopLimit);
    }
    if message.len() < MESSAGE_FIXED_LEN {
        return Err(FrameError::BadLength);
    }
    if message[1] != 0 {
        return Err(FrameError::BadCode);
    }
    if checksum(source_ip, destination_ip, message) != 0 {
        return Err(FrameError::BadChecksum);
    }
    let target = ipv6(&message[8..24]);
    if target.is_multicast() {
        return Err(FrameError::MulticastTarget);
    }
    let wanted_option = if message_type == TYPE_NEIGHBOR_SOLICITATION {
        OPTION_SOURCE_LINK_LAYER
    } else {
        OPTION_TARGET_LINK_LAYER
    };
    let link_layer = find_link_layer_option(&message[MESSAGE_FIXED_LEN..], wanted_option)?;
    let message = if message_type == TYPE_NEIGHBOR_SOLICITATION {
        if source_ip.is_unspecified() && (destination_ip != solicited_node_group(target) || link_layer.is_some()) {
            return Err(FrameError::BadDadSolicitation);
        }
        NdpMessage::Solicitation {
            target,
            source_link_layer: link_layer,
        }
    } else {
        let flags = AdvertisementFlags {
            router: message[4] & 0x80 != 0,
            solicited: message[4] & 0x40 != 0,
            override_cache: message[4] & 0x20 != 0,
        };
        NdpMessage::Advertisement {
            flags,
            target,
            target_link_layer: link_layer,
        }
    };
    Ok(NdpFrame {
        ethernet_destination: ethernet.destination,
        ethernet_source: ethernet.source,
        source_ip,
        destination_ip,
        hop_limit,
        message,
    })
}

/// Walks the options, checking every length, and returns the first link-layer address option
/// of the wanted type.
fn find_link_layer_option(mut options: &[u8], wanted: u8) -> Result<Option<MacAddr>, FrameError> {
    let mut found = None;
    while !options.is_empty() {
        let (option_type, units) = match options {
            [option_type, units, ..] => (*option_type, usize::from(*units)),
            _ => return Err(FrameError::BadOption),
        };
        let len = units * 8;
        if len == 0 || len > options.len() {
            return Err(FrameError::BadOption);
        }
        if option_type == wanted && found.is_none() {
            found = Some(MacAddr::from_slice(&options[2..8]));
        }
        options = &options[len..];
    }
    Ok(found)
}

/// Builds the Ethernet frame for `ndp`, with payload length and ICMPv6 checksum filled in.
pub fn build(ndp: &NdpFrame) -> Vec<u8> {
    let mut message = Vec::with_capacity(MESSAGE_FIXED_LEN + 8);
    let (message_type, flags, target, option) = match ndp.message {
        NdpMessage::Solicitation {
            target,
            source_link_layer,
        } => (
            TYPE_NEIGHBOR_SOLICITATION,
            0u8,
            target,
            source_link_layer.map(|mac| (OPTION_SOURCE_LINK_LAYER, mac)),
        ),
        NdpMessage::Advertisement {
            flags,
            target,
            target_link_layer,
        } => (
            TYPE_NEIGHBOR_ADVERTISEMENT,
            u8::from(flags.router) << 7 | u8::from(flags.solicited) << 6 | u8::from(flags.override_cache) << 5,
            target,
            target_link_layer.map(|mac| (OPTION_TARGET_LINK_LAYER, mac)),
        ),
    };
    message.extend_from_slice(&[message_type, 0, 0, 0, flags, 0, 0, 0]);
    message.extend_from_slice(&target.octets());
    if let Some((option_type, mac)) = option {
        message.extend_from_slice(&[option_type, 1]);
        message.extend_from_slice(&mac.0);
    }
    let sum = checksum(ndp.source_ip, ndp.destination_ip, &message);
    message[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut frame = Vec::with_capacity(EthernetHeader::LEN + IPV6_HEADER_LEN + message.len());
    EthernetHeader {
        destination: ndp.ethernet_destination,
        source: ndp.ethernet_source,
        ethertype: ETHERTYPE_IPV6,
    }
    .write(&mut frame);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    // The message is at most 32 bytes, so the length always fits.
    frame.extend_from_slice(&(message.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[NEXT_HEADER_ICMPV6, ndp.hop_limit]);
    frame.extend_from_slice(&ndp.source_ip.octets());
    frame.extend_from_slice(&ndp.destination_ip.octets());
    frame.extend_from_slice(&message);
    frame
}

/// The advertisement that answers `solicitation` for `target`, which we own, from `our_mac`.
///
/// A solicitation from `::` is duplicate address detection by a host that wants `target`:
/// RFC 4861 §7.2.4 says to answer it to all-nodes with Solicited clear, which tells that host
/// the address is taken. Otherwise the answer goes back to the solicitation's source IP, at
/// its source link-layer option, or at its Ethernet source for unicast reachability probes
/// that carry no option.
pub fn advertisement_for(solicitation: &NdpFrame, target: Ipv6Addr, our_mac: MacAddr) -> NdpFrame {
    if solicitation.source_ip.is_unspecified() {
        return unsolicited_advertisement(target, our_mac);
    }
    let peer_mac = match solicitation.message {
        NdpMessage::Solicitation {
            source_link_layer: Some(mac),
            ..
        } => mac,
        _ => solicitation.ethernet_source,
    };
    NdpFrame {
        ethernet_destination: peer_mac,
        ethernet_source: our_mac,
        source_ip: target,
        destination_ip: solicitation.source_ip,
        hop_limit: HOP_LIMIT,
        message: NdpMessage::Advertisement {
            flags: AdvertisementFlags {
                router: false,
                solicited: true,
                override_cache: true,
            },
            target,
            target_link_layer: Some(our_mac),
        },
    }
}

/// An unsolicited advertisement of `target` at `our_mac` to all-nodes: Override set so
/// existing neighbour entries switch, Solicited clear as RFC 4861 §7.2.6 requires.
pub fn unsolicited_advertisement(target: Ipv6Addr, our_mac: MacAddr) -> NdpFrame {
    NdpFrame {
        ethernet_destination: multicast_mac(ALL_NODES),
        ethernet_source: our_mac,
        source_ip: target,
        destination_ip: ALL_NODES,
        hop_limit: HOP_LIMIT,
        message: NdpMessage::Advertisement {
            flags: AdvertisementFlags {
                router: false,
                solicited: false,
                override_cache: true,
            },
            target,
            target_link_layer: Some(our_mac),
        },
    }
}

/// Internet checksum of the ICMPv6 message with its IPv6 pseudo-header; 0 when a received
/// message (checksum field included) is intact.
pub fn checksum(source: Ipv6Addr, destination: Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for pair in &mut chunks {
            sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
    };
    add(&source.octets());
    add(&destination.octets());
    add(&(message.len() as u32).to_be_bytes());
    add(&[0, 0, 0, NEXT_HEADER_ICMPV6]);
    add(message);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv6(bytes: &[u8]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&bytes[..16]);
    Ipv6Addr::from(octets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xaa]);
    const THEIRS: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xbb]);

    fn vip() -> Ipv6Addr {
        "fd00:203::64".parse().unwrap()
    }

    fn client() -> Ipv6Addr {
        "fd00:203::1".parse().unwrap()
    }

    fn multicast_solicitation() -> NdpFrame {
        NdpFrame {
            ethernet_destination: multicast_mac(solicited_node_group(vip())),
            ethernet_source: THEIRS,
            source_ip: client(),
            destination_ip: solicited_node_group(vip()),
            hop_limit: HOP_LIMIT,
            message: NdpMessage::Solicitation {
                target: vip(),
                source_link_layer: Some(THEIRS),
            },
        }
    }

    #[test]
    fn solicited_node_group_and_mac() {
        let group = solicited_node_group("fd00:203::12:3456".parse().unwrap());
        assert_eq!(group, "ff02::1:ff12:3456".parse::<Ipv6Addr>().unwrap());
        assert_eq!(multicast_mac(group), MacAddr([0x33, 0x33, 0xff, 0x12, 0x34, 0x56]));
        assert_eq!(multicast_mac(ALL_NODES), MacAddr([0x33, 0x33, 0, 0, 0, 1]));
    }

    #[test]
    fn solicitation_round_trips_with_valid_checksum() {
        let bytes = build(&multicast_solicitation());
        assert_eq!(bytes.len(), 14 + 40 + 32);
        assert_eq!(parse(&bytes), Ok(multicast_solicitation()));
    }

    #[test]
    fn rfc_4861_validation() {
        let good = build(&multicast_solicitation());
        let cases: [(usize, u8, FrameError); 5] = [
            (21, 64, FrameError::BadHopLimit),
            (55, 1, FrameError::BadCode),
            (56, 0, FrameError::BadChecksum),
            (62, 0xff, FrameError::BadChecksum),
            (14, 0x40, FrameError::BadIpv6Header),
        ];
        for (index, value, expected) in cases {
            let mut bytes = good.clone();
            bytes[index] = value;
            assert_eq!(parse(&bytes), Err(expected), "byte {index}");
        }
    }

    #[test]
    fn multicast_target_is_refused() {
        let mut frame = multicast_solicitation();
        frame.message = NdpMessage::Solicitation {
            target: ALL_NODES,
            source_link_layer: None,
        };
        assert_eq!(parse(&build(&frame)), Err(FrameError::MulticastTarget));
    }

    #[test]
    fn zero_length_option_is_refused() {
        let mut bytes = build(&multicast_solicitation());
        bytes[14 + 40 + 25] = 0;
        let sum_at = 14 + 40 + 2;
        bytes[sum_at..sum_at + 2].copy_from_slice(&[0, 0]);
        let sum = checksum(client(), solicited_node_group(vip()), &bytes[54..]);
        bytes[sum_at..sum_at + 2].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(parse(&bytes), Err(FrameError::BadOption));
    }

    #[test]
    fn short_message_is_refused() {
        let mut bytes = build(&multicast_solicitation());
        bytes[18..20].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(parse(&bytes), Err(FrameError::BadLength));
        bytes[18..20].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(parse(&bytes), Err(FrameError::Truncated));
    }

    #[test]
    fn dad_solicitation_rules() {
        let mut dad = multicast_solicitation();
        dad.source_ip = Ipv6Addr::UNSPECIFIED;
        dad.message = NdpMessage::Solicitation {
            target: vip(),
            source_link_layer: None,
        };
        assert_eq!(parse(&build(&dad)), Ok(dad));
        let mut with_option = dad;
        with_option.message = multicast_solicitation().message;
        assert_eq!(parse(&build(&with_option)), Err(FrameError::BadDadSolicitation));
        let mut unicast = dad;
        unicast.destination_ip = client();
        assert_eq!(parse(&build(&unicast)), Err(FrameError::BadDadSolicitation));

        let answer = advertisement_for(&dad, vip(), OURS);
        assert_eq!(answer, unsolicited_advertisement(vip(), OURS));
    }

    #[test]
    fn answer_to_multicast_solicitation_is_solicited_and_overrides() {
        let answer = advertisement_for(&multicast_solicitation(), vip(), OURS);
        assert_eq!(answer.ethernet_destination, THEIRS);
        assert_eq!(answer.destination_ip, client());
        assert_eq!(answer.source_ip, vip());
        assert_eq!(answer.hop_limit, 255);
        assert_eq!(
            answer.message,
            NdpMessage::Advertisement {
                flags: AdvertisementFlags {
                    router: false,
                    solicited: true,
                    override_cache: true
                },
                target: vip(),
                target_link_layer: Some(OURS),
            }
        );
        assert_eq!(parse(&build(&answer)), Ok(answer));
    }

    #[test]
    fn unicast_probe_without_option_is_answered_at_its_ethernet_source() {
        let probe = NdpFrame {
            ethernet_destination: OURS,
            ethernet_source: MacAddr([0x02, 0, 0, 0, 0, 0xcc]),
            source_ip: client(),
            destination_ip: vip(),
            hop_limit: HOP_LIMIT,
            message: NdpMessage::Solicitation {
                target: vip(),
                source_link_layer: None,
            },
        };
        let probe = parse(&build(&probe)).unwrap();
        let answer = advertisement_for(&probe, vip(), OURS);
        assert_eq!(answer.ethernet_destination, MacAddr([0x02, 0, 0, 0, 0, 0xcc]));
        assert_eq!(answer.destination_ip, client());
    }

    #[test]
    fn unsolicited_goes_to_all_nodes_without_solicited_flag() {
        let na = unsolicited_advertisement(vip(), OURS);
        assert_eq!(na.ethernet_destination, MacAddr([0x33, 0x33, 0, 0, 0, 1]));
        assert_eq!(na.destination_ip, ALL_NODES);
        let bytes = build(&na);
        assert_eq!(bytes[54 + 4], 0x20, "only Override set");
        assert_eq!(parse(&bytes), Ok(na));
    }
}
