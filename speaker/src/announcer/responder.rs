//! The decision for one received frame: answer it (with which frame), ignore it, or drop it as
//! malformed. Pure: the owned set is consulted through a closure on every call, so an IP that
//! was just lost stops being answered at once.

use std::net::IpAddr;

use super::frame::{ETHERTYPE_ARP, ETHERTYPE_IPV6, FrameError, MacAddr};
use super::{arp, ndp};

/// What to do with one received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A valid request for `ip`, which we own on this link: send `frame` back on the same link.
    Answer { ip: IpAddr, frame: Vec<u8> },
    /// Valid, but not a request we answer (other IPs, replies, our own frames, other traffic).
    Ignore,
    /// Malformed or hostile ARP/NDP: count under the error's reason.
    Drop(FrameError),
}

/// Decides what to answer to `frame`, received on a link whose address is `our_mac`;
/// `owns_here(ip)` says whether we announce `ip` on that link right now.
pub fn respond(frame: &[u8], our_mac: MacAddr, owns_here: impl FnMut(IpAddr) -> bool) -> Verdict {
    // Cheap EtherType check first: the socket sees every frame on the link.
    match frame.get(12..14) {
        Some([0x08, 0x06]) => respond_arp(frame, our_mac, owns_here),
        Some([0x86, 0xdd]) => respond_ndp(frame, our_mac, owns_here),
        Some(_) => Verdict::Ignore,
        None => Verdict::Drop(FrameError::Truncated),
    }
}

fn respond_arp(frame: &[u8], our_mac: MacAddr, mut owns_here: impl FnMut(IpAddr) -> bool) -> Verdict {
    debug_assert_eq!(frame[12..14], ETHERTYPE_ARP.to_be_bytes());
    let request = match arp::parse(frame) {
        Ok(request) => request,
        Err(error) => return Verdict::Drop(error),
    };
    let addressed_to_us = request.ethernet_destination == MacAddr::BROADCAST || request.ethernet_destination == our_mac;
    let from_us = request.sender_mac == our_mac || request.ethernet_source == our_mac;
    // Gratuitous requests from others announce their own takeover: never argue with them.
    if request.operation != arp::OP_REQUEST
        || !addressed_to_us
        || from_us
        || request.is_gratuitous()
        || !owns_here(IpAddr::V4(request.target_ip))
    {
        return Verdict::Ignore;
    }
    Verdict::Answer {
        ip: IpAddr::V4(request.target_ip),
        frame: arp::build(&arp::reply_to(&request, our_mac)),
    }
}

fn respond_ndp(frame: &[u8], our_mac: MacAddr, mut owns_here: impl FnMut(IpAddr) -> bool) -> Verdict {
    debug_assert_eq!(frame[12..14], ETHERTYPE_IPV6.to_be_bytes());
    let solicitation = match ndp::parse(frame) {
        Ok(solicitation) => solicitation,
        Err(FrameError::NotForUs) => return Verdict::Ignore,
        Err(error) => return Verdict::Drop(error),
    };
    let ndp::NdpMessage::Solicitation { target, .. } = solicitation.message else {
        return Verdict::Ignore;
    };
    let to_group = solicitation.destination_ip == ndp::solicited_node_group(target);
    let to_target = solicitation.destination_ip == target;
    if solicitation.ethernet_source == our_mac || !(to_group || to_target) || !owns_here(IpAddr::V6(target)) {
        return Verdict::Ignore;
    }
    Verdict::Answer {
        ip: IpAddr::V6(target),
        frame: ndp::build(&ndp::advertisement_for(&solicitation, target, our_mac)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::announcer::arp::ArpFrame;
    use crate::announcer::ndp::{NdpFrame, NdpMessage};

    const OURS: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xaa]);
    const CLIENT: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xbb]);
    const VIP4: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 100);
    const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);

    fn vip6() -> Ipv6Addr {
        "fd00:203::64".parse().unwrap()
    }

    fn owns(ip: IpAddr) -> bool {
        ip == IpAddr::V4(VIP4) || ip == IpAddr::V6(vip6())
    }

    fn arp_request(target: Ipv4Addr) -> ArpFrame {
        ArpFrame {
            ethernet_destination: MacAddr::BROADCAST,
            ethernet_source: CLIENT,
            operation: arp::OP_REQUEST,
            sender_mac: CLIENT,
            sender_ip: CLIENT4,
            target_mac: MacAddr::ZERO,
            target_ip: target,
        }
    }

    fn solicitation(target: Ipv6Addr) -> NdpFrame {
        NdpFrame {
            ethernet_destination: ndp::multicast_mac(ndp::solicited_node_group(target)),
            ethernet_source: CLIENT,
            source_ip: "fd00:203::1".parse().unwrap(),
            destination_ip: ndp::solicited_node_group(target),
            hop_limit: 255,
            message: NdpMessage::Solicitation {
                target,
                source_link_layer: Some(CLIENT),
            },
        }
    }

    #[test]
    fn answers_broadcast_and_unicast_arp_requests_for_owned_ip() {
        let mut request = arp_request(VIP4);
        for destination in [MacAddr::BROADCAST, OURS] {
            request.ethernet_destination = destination;
            let Verdict::Answer { ip, frame } = respond(&arp::build(&request), OURS, owns) else {
                panic!("no answer to {destination}");
            };
            assert_eq!(ip, IpAddr::V4(VIP4));
            assert_eq!(arp::parse(&frame).unwrap(), arp::reply_to(&request, OURS));
        }
    }

    #[test]
    fn ignores_what_it_must_not_answer() {
        let mut cases = Vec::new();
        cases.push(("other ip", arp_request(Ipv4Addr::new(10, 203, 0, 101))));
        let mut reply = arp_request(VIP4);
        reply.operation = arp::OP_REPLY;
        cases.push(("reply", reply));
        let mut ours = arp_request(VIP4);
        ours.sender_mac = OURS;
        cases.push(("sender is us", ours));
        let mut gratuitous = arp_request(VIP4);
        gratuitous.sender_ip = VIP4;
        cases.push(("gratuitous from another node", gratuitous));
        let mut elsewhere = arp_request(VIP4);
        elsewhere.ethernet_destination = CLIENT;
        cases.push(("unicast to another MAC", elsewhere));
        for (name, frame) in cases {
            assert_eq!(respond(&arp::build(&frame), OURS, owns), Verdict::Ignore, "{name}");
        }
    }

    #[test]
    fn lost_ip_is_not_answered() {
        let frame = arp::build(&arp_request(VIP4));
        assert_eq!(respond(&frame, OURS, |_| false), Verdict::Ignore);
    }

    #[test]
    fn answers_solicitations_for_owned_ipv6() {
        let ns = solicitation(vip6());
        let Verdict::Answer { ip, frame } = respond(&ndp::build(&ns), OURS, owns) else {
            panic!("no answer");
        };
        assert_eq!(ip, IpAddr::V6(vip6()));
        assert_eq!(ndp::parse(&frame).unwrap(), ndp::advertisement_for(&ns, vip6(), OURS));

        let mut probe = ns;
        probe.ethernet_destination = OURS;
        probe.destination_ip = vip6();
        probe.message = NdpMessage::Solicitation {
            target: vip6(),
            source_link_layer: None,
        };
        assert!(matches!(
            respond(&ndp::build(&probe), OURS, owns),
            Verdict::Answer { .. }
        ));
    }

    #[test]
    fn ignores_solicitations_not_for_us() {
        let other = solicitation("fd00:203::65".parse().unwrap());
        assert_eq!(respond(&ndp::build(&other), OURS, owns), Verdict::Ignore);
        let mut looped = solicitation(vip6());
        looped.ethernet_source = OURS;
        assert_eq!(respond(&ndp::build(&looped), OURS, owns), Verdict::Ignore);
        let mut wrong_group = solicitation(vip6());
        wrong_group.destination_ip = ndp::ALL_NODES;
        assert_eq!(respond(&ndp::build(&wrong_group), OURS, owns), Verdict::Ignore);
        let advert = ndp::unsolicited_advertisement(vip6(), CLIENT);
        assert_eq!(respond(&ndp::build(&advert), OURS, owns), Verdict::Ignore);
    }

    #[test]
    fn malformed_frames_are_dropped_with_a_reason() {
        let mut bytes = ndp::build(&solicitation(vip6()));
        bytes[21] = 64;
        assert_eq!(respond(&bytes, OURS, owns), Verdict::Drop(FrameError::BadHopLimit));
        let bytes = arp::build(&arp_request(VIP4));
        assert_eq!(respond(&bytes[..30], OURS, owns), Verdict::Drop(FrameError::Truncated));
        assert_eq!(respond(&[1, 2, 3], OURS, owns), Verdict::Drop(FrameError::Truncated));
        let mut ipv4 = bytes.clone();
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(respond(&ipv4, OURS, owns), Verdict::Ignore);
    }
}
