//! The announcer's side effects, one trait each, with the real implementations: raw Ethernet
//! frames through pnet ([`PnetLinks`]) and IPv6 multicast group membership through ordinary
//! sockets ([`SocketMulticast`]). In-memory fakes live in `super::fake`
//! (feature `testing`).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{IntoRawFd, RawFd};
use std::time::Duration;

use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender};
use socket2::{Domain, SockFilter, Socket, Type};

use crate::links::LinkInfo;

/// Sends whole Ethernet frames on one link.
pub trait FrameSink: Send {
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
}

/// Receives whole Ethernet frames from one link.
pub trait FrameSource: Send {
    /// The next frame, or `None` when the read timeout passed without one (so the reading
    /// thread can notice shutdown and link removal).
    fn recv(&mut self) -> io::Result<Option<&[u8]>>;
}

/// Opens the frame channel of a link.
pub trait LinkOpener: Send + Sync {
    fn open(&self, link: &LinkInfo, read_timeout: Duration) -> io::Result<(Box<dyn FrameSink>, Box<dyn FrameSource>)>;
}

/// Joins and leaves IPv6 multicast groups on links, so the NIC delivers frames sent to the
/// solicited-node group of each announced IPv6 address.
pub trait MulticastMembership: Send {
    fn join(&mut self, interface_index: u32, group: Ipv6Addr) -> io::Result<()>;
    fn leave(&mut self, interface_index: u32, group: Ipv6Addr) -> io::Result<()>;
}

/// AF_PACKET channels through `pnet_datalink`, not promiscuous: the NIC delivers broadcast
/// ARP, frames to our MAC and the multicast groups joined through [`MulticastMembership`].
/// The socket is made here (safe `socket2` calls) so that a kernel filter passes only ARP and
/// Neighbor Solicitations to the reader, and its receive buffer absorbs scheduling stalls.
#[derive(Debug, Clone, Copy, Default)]
pub struct PnetLinks;

impl LinkOpener for PnetLinks {
    fn open(&self, link: &LinkInfo, read_timeout: Duration) -> io::Result<(Box<dyn FrameSink>, Box<dyn FrameSource>)> {
        let interface = pnet_datalink::interfaces()
            .into_iter()
            .find(|interface| interface.index == link.index && interface.name == link.name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no interface {}", link.name)))?;
        let socket_fd = match filtered_packet_socket() {
            Ok(fd) => Some(fd),
            Err(error) => {
                tracing::warn!(interface = %link.name, %error, "no kernel frame filter; reading every frame");
                None
            }
        };
        let config = Config {
            read_timeout: Some(read_timeout),
            write_timeout: Some(Duration::from_millis(100)),
            promiscuous: false,
            socket_fd,
            ..Config::default()
        };
        match pnet_datalink::channel(&interface, config)? {
            Channel::Ethernet(sender, receiver) => {
                Ok((Box::new(PnetSink { sender }), Box::new(PnetSource { receiver })))
            }
            _ => Err(io::Error::other("pnet returned a non-Ethernet channel")),
        }
    }
}

/// Receive buffer asked for (the kernel caps it at `net.core.rmem_max`): room for a burst of
/// requests while the reader thread waits for a CPU.
const RECEIVE_BUFFER_BYTES: usize = 4 << 20;

/// Classic BPF program run by the kernel on every frame of the link, so the reader thread
/// only wakes for ARP and Neighbor Solicitations: drop frames we sent ourselves, drop frames
/// that came with a VLAN tag (the kernel or the NIC took it off, so the bytes look untagged:
/// they belong to that VLAN's interface, and an answer from this one would go out untagged
/// into the wrong network), accept EtherType ARP, accept IPv6 whose next header is ICMPv6 (58)
/// with type 135, drop the rest. Jump offsets count from the next instruction.
fn request_filter() -> [SockFilter; 13] {
    const LOAD_BYTE: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const LOAD_HALF: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
    const JUMP_EQUAL: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const PACKET_TYPE: u32 = 0xffff_f000 + 4; // SKF_AD_OFF + SKF_AD_PKTTYPE
    const VLAN_TAG_PRESENT: u32 = 0xffff_f000 + 48; // SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT
    const PACKET_OUTGOING: u32 = 4;
    [
        SockFilter::new(LOAD_BYTE, 0, 0, PACKET_TYPE),
        SockFilter::new(JUMP_EQUAL, 10, 0, PACKET_OUTGOING), // → drop
        SockFilter::new(LOAD_BYTE, 0, 0, VLAN_TAG_PRESENT),
        SockFilter::new(JUMP_EQUAL, 0, 8, 0),      // tagged → drop
        SockFilter::new(LOAD_HALF, 0, 0, 12),      // EtherType
        SockFilter::new(JUMP_EQUAL, 5, 0, 0x0806), // ARP → accept
        SockFilter::new(JUMP_EQUAL, 0, 5, 0x86dd), // not IPv6 → drop
        SockFilter::new(LOAD_BYTE, 0, 0, 14 + 6),  // IPv6 next header
        SockFilter::new(JUMP_EQUAL, 0, 3, 58),     // not ICMPv6 → drop
        SockFilter::new(LOAD_BYTE, 0, 0, 14 + 40), // ICMPv6 type
        SockFilter::new(JUMP_EQUAL, 0, 1, 135),    // not NS → drop
        SockFilter::new(RETURN, 0, 0, 0xffff),     // accept
        SockFilter::new(RETURN, 0, 0, 0),          // drop
    ]
}

/// An AF_PACKET socket with the request filter and a large receive buffer, for pnet to bind.
/// Created with protocol 0 so nothing is queued before pnet binds it to the link.
fn filtered_packet_socket() -> io::Result<RawFd> {
    let socket = Socket::new(Domain::PACKET, Type::RAW, None)?;
    socket.attach_filter(&request_filter())?;
    socket.set_recv_buffer_size(RECEIVE_BUFFER_BYTES)?;
    Ok(socket.into_raw_fd())
}

struct PnetSink {
    sender: Box<dyn DataLinkSender>,
}

impl FrameSink for PnetSink {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.sender
            .send_to(frame, None)
            .unwrap_or_else(|| Err(io::Error::other("pnet send buffer unavailable")))
    }
}

struct PnetSource {
    receiver: Box<dyn DataLinkReceiver>,
}

impl FrameSource for PnetSource {
    fn recv(&mut self) -> io::Result<Option<&[u8]>> {
        match self.receiver.next() {
            Ok(frame) => Ok(Some(frame)),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }
}

/// Multicast membership through `IPV6_JOIN_GROUP` on plain UDP sockets (safe std API).
///
/// The kernel bounds memberships per socket by the socket option memory (`optmem_max`), so
/// when a join is refused another socket is opened; each membership remembers its socket.
#[derive(Debug, Default)]
pub struct SocketMulticast {
    sockets: Vec<UdpSocket>,
    joined: HashMap<(u32, Ipv6Addr), usize>,
}

/// Enough for hundreds of thousands of groups; a bound so a broken kernel cannot make us
/// open sockets forever.
const MAX_MULTICAST_SOCKETS: usize = 4096;

impl SocketMulticast {
    fn new_socket() -> io::Result<UdpSocket> {
        UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
    }
}

impl MulticastMembership for SocketMulticast {
    fn join(&mut self, interface_index: u32, group: Ipv6Addr) -> io::Result<()> {
        if self.joined.contains_key(&(interface_index, group)) {
            return Ok(());
        }
        if let Some(last) = self.sockets.last()
            && last.join_multicast_v6(&group, interface_index).is_ok()
        {
            self.joined.insert((interface_index, group), self.sockets.len() - 1);
            return Ok(());
        }
        if self.sockets.len() >= MAX_MULTICAST_SOCKETS {
            return Err(io::Error::other("too many multicast sockets"));
        }
        let socket = Self::new_socket()?;
        socket.join_multicast_v6(&group, interface_index)?;
        self.sockets.push(socket);
        self.joined.insert((interface_index, group), self.sockets.len() - 1);
        Ok(())
    }

    fn leave(&mut self, interface_index: u32, group: Ipv6Addr) -> io::Result<()> {
        match self.joined.remove(&(interface_index, group)) {
            Some(socket) => self.sockets[socket].leave_multicast_v6(&group, interface_index),
            None => Ok(()),
        }
    }
}
