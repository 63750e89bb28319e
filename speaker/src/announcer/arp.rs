//! ARP over Ethernet (RFC 826) for IPv4: pure parse and build functions over byte slices.
//!
//! Only the Ethernet/IPv4 flavour is understood (hardware type 1, protocol 0x0800, address
//! lengths 6 and 4); anything else is refused with a [`FrameError`] so the caller can count it.

use std::net::Ipv4Addr;

use super::frame::{ETHERTYPE_ARP, EthernetHeader, FrameError, MacAddr};

/// ARP operation code of a request.
pub const OP_REQUEST: u16 = 1;
/// ARP operation code of a reply.
pub const OP_REPLY: u16 = 2;

const ARP_LEN: usize = 28;
/// Length of an Ethernet frame holding one ARP packet, without the padding the NIC may add.
pub const ARP_FRAME_LEN: usize = EthernetHeader::LEN + ARP_LEN;

/// One ARP packet with the Ethernet header that carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpFrame {
    pub ethernet_destination: MacAddr,
    pub ethernet_source: MacAddr,
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpFrame {
    /// Whether this is a gratuitous announcement (sender IP equals target IP).
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }
}

/// Parses an Ethernet frame carrying ARP for IPv4 over Ethernet.
///
/// Trailing bytes (Ethernet padding up to 60 bytes) are accepted and ignored.
pub fn parse(frame: &[u8]) -> Result<ArpFrame, FrameError> {
    let ethernet = EthernetHeader::parse(frame)?;
    if ethernet.ethertype != ETHERTYPE_ARP {
        return Err(FrameError::NotForUs);
    }
    let arp = frame
        .get(EthernetHeader::LEN..ARP_FRAME_LEN)
        .ok_or(FrameError::Truncated)?;
    let hardware_type = u16::from_be_bytes([arp[0], arp[1]]);
    let protocol_type = u16::from_be_bytes([arp[2], arp[3]]);
    if hardware_type != 1 || protocol_type != 0x0800 || arp[4] != 6 || arp[5] != 4 {
        return Err(FrameError::UnsupportedArp);
    }
    Ok(ArpFrame {
        ethernet_destination: ethernet.destination,
        ethernet_source: ethernet.source,
        operation: u16::from_be_bytes([arp[6], arp[7]]),
        sender_mac: MacAddr::from_slice(&arp[8..14]),
        sender_ip: ipv4(&arp[14..18]),
        target_mac: MacAddr::from_slice(&arp[18..24]),
        target_ip: ipv4(&arp[24..28]),
    })
}

/// Builds the Ethernet frame for `arp` (42 bytes; the kernel or NIC pads it on the wire).
pub fn build(arp: &ArpFrame) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ARP_FRAME_LEN);
    EthernetHeader {
        destination: arp.ethernet_destination,
        source: arp.ethernet_source,
        ethertype: ETHERTYPE_ARP,
    }
    .write(&mut frame);
    frame.extend_from_slice(&1u16.to_be_bytes());
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&[6, 4]);
    frame.extend_from_slice(&arp.operation.to_be_bytes());
    frame.extend_from_slice(&arp.sender_mac.0);
    frame.extend_from_slice(&arp.sender_ip.octets());
    frame.extend_from_slice(&arp.target_mac.0);
    frame.extend_from_slice(&arp.target_ip.octets());
    frame
}

/// The reply that tells the asker of `request` that `our_mac` holds the requested IP.
///
/// Addressed to the requester's hardware address from the ARP body, like Linux does; a probe
/// from 0.0.0.0 (RFC 5227) gets the same reply, which is how its sender learns of the conflict.
pub fn reply_to(request: &ArpFrame, our_mac: MacAddr) -> ArpFrame {
    ArpFrame {
        ethernet_destination: request.sender_mac,
        ethernet_source: our_mac,
        operation: OP_REPLY,
        sender_mac: our_mac,
        sender_ip: request.target_ip,
        target_mac: request.sender_mac,
        target_ip: request.sender_ip,
    }
}

/// A gratuitous ARP *request* for `ip` from `our_mac`, broadcast.
///
/// A request rather than a reply because Linux updates an existing neighbour entry on a
/// gratuitous request whatever `arp_accept` says, while a reply only counts as gratuitous when
/// its target MAC equals its sender MAC.
pub fn gratuitous(ip: Ipv4Addr, our_mac: MacAddr) -> ArpFrame {
    ArpFrame {
        ethernet_destination: MacAddr::BROADCAST,
        ethernet_source: our_mac,
        operation: OP_REQUEST,
        sender_mac: our_mac,
        sender_ip: ip,
        target_mac: MacAddr::ZERO,
        target_ip: ip,
    }
}

fn ipv4(bytes: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xaa]);
    const THEIRS: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xbb]);

    fn request() -> ArpFrame {
        ArpFrame {
            ethernet_destination: MacAddr::BROADCAST,
            ethernet_source: THEIRS,
            operation: OP_REQUEST,
            sender_mac: THEIRS,
            sender_ip: Ipv4Addr::new(10, 0, 0, 1),
            target_mac: MacAddr::ZERO,
            target_ip: Ipv4Addr::new(10, 0, 0, 100),
        }
    }

    #[test]
    fn request_round_trips_and_has_the_wire_layout() {
        let bytes = build(&request());
        assert_eq!(bytes.len(), 42);
        assert_eq!(&bytes[12..14], &[0x08, 0x06]);
        assert_eq!(&bytes[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(parse(&bytes), Ok(request()));
    }

    #[test]
    fn padded_frame_parses() {
        let mut bytes = build(&request());
        bytes.resize(60, 0);
        assert_eq!(parse(&bytes), Ok(request()));
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = build(&request());
        for len in 0..bytes.len() {
            assert_eq!(parse(&bytes[..len]), Err(FrameError::Truncated), "len {len}");
        }
    }

    #[test]
    fn other_hardware_or_protocol_is_refused() {
        for (index, value) in [(15, 6u8), (17, 0xdd), (18, 8), (19, 16)] {
            let mut bytes = build(&request());
            bytes[index] = value;
            assert_eq!(parse(&bytes), Err(FrameError::UnsupportedArp), "byte {index}");
        }
    }

    #[test]
    fn reply_swaps_roles() {
        let reply = reply_to(&request(), OURS);
        assert_eq!(reply.operation, OP_REPLY);
        assert_eq!(reply.ethernet_destination, THEIRS);
        assert_eq!(reply.sender_mac, OURS);
        assert_eq!(reply.sender_ip, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(reply.target_mac, THEIRS);
        assert_eq!(reply.target_ip, Ipv4Addr::new(10, 0, 0, 1));
    }

    #[test]
    fn gratuitous_is_a_broadcast_request_with_equal_ips() {
        let garp = gratuitous(Ipv4Addr::new(10, 0, 0, 100), OURS);
        assert!(garp.is_gratuitous());
        assert_eq!(garp.operation, OP_REQUEST);
        assert_eq!(garp.ethernet_destination, MacAddr::BROADCAST);
        assert_eq!(garp.target_mac, MacAddr::ZERO);
        assert_eq!(garp.sender_mac, OURS);
    }
}
