//! The announcer's side effects, one trait each, with the real implementations: raw Ethernet
//! frames through pnet ([`PnetLinks`]) and IPv6 multicast group membership through ordinary
//! sockets ([`SocketMulticast`]). In-memory fakes live in [`super::fake`].

use std::collections::HashMap;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender};

use super::interfaces::LinkInfo;

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
#[derive(Debug, Clone, Copy, Default)]
pub struct PnetLinks;

impl LinkOpener for PnetLinks {
    fn open(&self, link: &LinkInfo, read_timeout: Duration) -> io::Result<(Box<dyn FrameSink>, Box<dyn FrameSource>)> {
        let interface = pnet_datalink::interfaces()
            .into_iter()
            .find(|interface| interface.index == link.index && interface.name == link.name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no interface {}", link.name)))?;
        let config = Config {
            read_timeout: Some(read_timeout),
            write_timeout: Some(Duration::from_millis(100)),
            promiscuous: false,
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
