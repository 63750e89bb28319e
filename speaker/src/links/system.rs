//! The host's links as the kernel lists them.

use std::io;
use std::path::Path;

use super::{InterfaceSource, LinkInfo};
use crate::announcer::MacAddr;

/// The host's interfaces from pnet (getifaddrs, so it follows the caller's network
/// namespace) plus `/sys/class/net/<name>/master` for bond and bridge membership.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemInterfaces;

// Linux `IFF_*` interface flags as reported by getifaddrs.
const IFF_UP: u32 = 0x1;
const IFF_BROADCAST: u32 = 0x2;
const IFF_LOOPBACK: u32 = 0x8;
const IFF_RUNNING: u32 = 0x40;

impl InterfaceSource for SystemInterfaces {
    fn links(&self) -> io::Result<Vec<LinkInfo>> {
        Ok(pnet_datalink::interfaces()
            .into_iter()
            .map(|interface| {
                let flags = interface.flags;
                LinkInfo {
                    has_master: Path::new("/sys/class/net")
                        .join(&interface.name)
                        .join("master")
                        .exists(),
                    mac: interface.mac.map(|mac| MacAddr(mac.octets())),
                    name: interface.name,
                    index: interface.index,
                    up: flags & IFF_UP != 0,
                    running: flags & IFF_RUNNING != 0,
                    broadcast: flags & IFF_BROADCAST != 0,
                    loopback: flags & IFF_LOOPBACK != 0,
                }
            })
            .collect())
    }
}
