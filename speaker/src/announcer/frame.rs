//! Ethernet framing shared by the ARP and NDP codecs: MAC addresses, the 14-byte header, and
//! the reasons a frame is refused (which double as the drop-counter labels).

use std::fmt;

/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// A 48-bit Ethernet hardware address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Copies six bytes; the caller has checked the length.
    pub(crate) fn from_slice(bytes: &[u8]) -> MacAddr {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes[..6]);
        MacAddr(mac)
    }

    /// Whether the group bit is set (broadcast and multicast destinations).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(|| format!("short MAC address {text:?}"))?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| format!("bad MAC address {text:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("long MAC address {text:?}"));
        }
        Ok(MacAddr(mac))
    }
}

/// The Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetHeader {
    pub destination: MacAddr,
    pub source: MacAddr,
    pub ethertype: u16,
}

impl EthernetHeader {
    pub const LEN: usize = 14;

    pub fn parse(frame: &[u8]) -> Result<EthernetHeader, FrameError> {
        let header = frame.get(..Self::LEN).ok_or(FrameError::Truncated)?;
        Ok(EthernetHeader {
            destination: MacAddr::from_slice(&header[0..6]),
            source: MacAddr::from_slice(&header[6..12]),
            ethertype: u16::from_be_bytes([header[12], header[13]]),
        })
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.destination.0);
        out.extend_from_slice(&self.source.0);
        out.extend_from_slice(&self.ethertype.to_be_bytes());
    }
}

/// Why a frame was not understood.
///
/// [`FrameError::NotForUs`] marks traffic that is simply not ARP or Neighbor Discovery (most
/// frames on a busy link); every other variant is a malformed or hostile ARP/NDP frame that is
/// dropped and counted under [`FrameError::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not ARP or Neighbor Discovery")]
    NotForUs,
    #[error("frame shorter than its headers or declared lengths")]
    Truncated,
    #[error("ARP for something other than IPv4 over Ethernet")]
    UnsupportedArp,
    #[error("malformed IPv6 header")]
    BadIpv6Header,
    #[error("Neighbor Discovery hop limit is not 255")]
    BadHopLimit,
    #[error("ICMPv6 code is not 0")]
    BadCode,
    #[error("ICMPv6 checksum mismatch")]
    BadChecksum,
    #[error("ICMPv6 message shorter than its type requires")]
    BadLength,
    #[error("Neighbor Discovery option with length 0 or past the end")]
    BadOption,
    #[error("Neighbor Discovery target is a multicast address")]
    MulticastTarget,
    #[error("solicitation from the unspecified address breaks RFC 4861 rules")]
    BadDadSolicitation,
}

impl FrameError {
    /// Stable label for the dropped-frames counter.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::NotForUs => "not_for_us",
            FrameError::Truncated => "truncated",
            FrameError::UnsupportedArp => "unsupported_arp",
            FrameError::BadIpv6Header => "bad_ipv6_header",
            FrameError::BadHopLimit => "bad_hop_limit",
            FrameError::BadCode => "bad_code",
            FrameError::BadChecksum => "bad_checksum",
            FrameError::BadLength => "bad_length",
            FrameError::BadOption => "bad_option",
            FrameError::MulticastTarget => "multicast_target",
            FrameError::BadDadSolicitation => "bad_dad_solicitation",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_text_round_trips() {
        let mac: MacAddr = "02:00:0a:cb:00:ff".parse().unwrap();
        assert_eq!(mac, MacAddr([2, 0, 0x0a, 0xcb, 0, 0xff]));
        assert_eq!(mac.to_string(), "02:00:0a:cb:00:ff");
        assert!("02:00".parse::<MacAddr>().is_err());
        assert!("02:00:00:00:00:00:00".parse::<MacAddr>().is_err());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!mac.is_multicast());
    }
}
