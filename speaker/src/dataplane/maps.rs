//! The BPF maps of the service map: Rust mirrors of the C structs, the [`ServiceMaps`] trait
//! (aya-backed [`AyaServiceMaps`]; an in-memory `FakeServiceMaps` with the `testing` feature),
//! and [`MapSync`], which diffs the desired state against what the maps hold and writes only
//! the differences.
//!
//! Ordering invariant (what the datapath may see mid-update): a backend is written before any
//! Maglev row names it, a row before its frontend, and removals go the other way round — so a
//! frontend the program finds always has a row, and a row's ids always resolve. The egress
//! filter of reply ports gains a backend's port before any row names the backend and loses it
//! only after the last backend on that port is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use ipnet::IpNet;
use thiserror::Error;

use super::desired::{Backend, BackendPath, Desired, DesiredChanges, Frontend, FrontendTarget};
use super::maglev::{MAGLEV_TABLE_SIZE, maglev_table_draining};

pub use abi::{
    BACKEND_DSR, BACKEND_SNAT, BackendValue, ConfigValue, Counters, CtForward, CtKey, CtReverse,
    FRONTEND_SOURCE_RANGES, FrontendKey, FrontendValue, MaglevRow, PortSet, SourceData,
};

/// Rust mirrors of the structs in `bpf/lib/common.h`. Unsafe because implementing
/// `aya::Pod` promises the kernel's bytes are a valid value, which holds for these `repr(C)`
/// structs of integers and byte arrays without implicit padding (checked by the size test).
#[allow(unsafe_code)]
mod abi {
    use super::MAGLEV_TABLE_SIZE;

    /// `lb_backend.flags` bit: translate the client's source to `snat_addr`.
    pub const BACKEND_SNAT: u8 = 1;
    /// `lb_backend.flags` bit: tunnel the client's packet from `snat_addr` to `node_addr`.
    pub const BACKEND_DSR: u8 = 2;

    /// Must match `struct lb_frontend_key` in bpf/lib/common.h (20 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct FrontendKey {
        /// Network order; IPv4 in the first 4 bytes, the rest zero.
        pub addr: [u8; 16],
        /// Network order.
        pub port: [u8; 2],
        pub proto: u8,
        /// 4 or 6.
        pub family: u8,
    }

    /// `lb_frontend.flags` bit: only clients in `herald_source_ranges` get in.
    pub const FRONTEND_SOURCE_RANGES: u32 = 1;

    /// Must match `struct lb_frontend` in bpf/lib/common.h (12 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct FrontendValue {
        pub id: u32,
        pub backend_count: u32,
        pub flags: u32,
    }

    /// Must match `struct lb_source_key` in bpf/lib/common.h after its `prefixlen` (20 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
    pub struct SourceData {
        pub frontend_id: u32,
        /// Network order; IPv4 in the first 4 bytes.
        pub addr: [u8; 16],
    }

    /// Must match `struct lb_backend` in bpf/lib/common.h (56 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
    pub struct BackendValue {
        pub addr: [u8; 16],
        pub snat_addr: [u8; 16],
        pub node_addr: [u8; 16],
        /// Native order (the kernel only compares it).
        pub generation: u32,
        pub port: [u8; 2],
        pub family: u8,
        pub flags: u8,
    }

    /// Must match `struct lb_config` in bpf/lib/common.h (16 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct ConfigValue {
        /// CLOCK_MONOTONIC nanoseconds of the speaker's last heartbeat.
        pub heartbeat_ns: u64,
        pub snat_port_min: u16,
        pub snat_port_count: u16,
        pub pad: u32,
    }

    /// Must match `struct ct_key` in bpf/lib/common.h (40 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
    pub struct CtKey {
        pub saddr: [u8; 16],
        pub daddr: [u8; 16],
        pub sport: [u8; 2],
        pub dport: [u8; 2],
        pub proto: u8,
        pub family: u8,
        pub pad: u16,
    }

    /// Must match `struct ct_forward` in bpf/lib/common.h (64 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct CtForward {
        /// CLOCK_MONOTONIC nanoseconds after which the flow is over.
        pub expires: u64,
        pub frontend_id: u32,
        pub backend_id: u32,
        pub backend_generation: u32,
        pub backend_addr: [u8; 16],
        pub snat_addr: [u8; 16],
        pub backend_port: [u8; 2],
        pub snat_port: [u8; 2],
        pub state: u8,
        pub flags: u8,
        pub pad: u16,
        pub pad2: u32,
    }

    /// Must match `struct ct_reverse` in bpf/lib/common.h (36 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct CtReverse {
        pub frontend_addr: [u8; 16],
        pub client_addr: [u8; 16],
        pub frontend_port: [u8; 2],
        pub client_port: [u8; 2],
    }

    /// Must match `struct lb_maglev_row` in bpf/lib/common.h (4 × 1021 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MaglevRow {
        pub backend_ids: [u32; MAGLEV_TABLE_SIZE],
    }

    /// Must match `struct lb_counters` in bpf/lib/common.h (16 bytes).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Counters {
        pub packets: u64,
        pub bytes: u64,
    }

    /// Must match `struct lb_port_set` in bpf/lib/common.h (8 KiB): bit `p % 64` of word
    /// `p / 64` is set for every port `p` (native order) a backend listens on.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PortSet {
        pub words: [u64; 1024],
    }

    // SAFETY: repr(C), only integers and byte arrays, no padding (sizes asserted in tests), so
    // every bit pattern the kernel hands back is a valid value.
    unsafe impl aya::Pod for FrontendKey {}
    unsafe impl aya::Pod for FrontendValue {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for MaglevRow {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for ConfigValue {}
    unsafe impl aya::Pod for SourceData {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtForward {}
    unsafe impl aya::Pod for CtReverse {}
    unsafe impl aya::Pod for PortSet {}
}

impl PortSet {
    pub fn of(ports: &BTreeSet<u16>) -> Self {
        let mut set = PortSet { words: [0; 1024] };
        for &p in ports {
            set.words[usize::from(p / 64)] |= 1 << (p % 64);
        }
        set
    }

    pub fn ports(&self) -> BTreeSet<u16> {
        (0..=u16::MAX)
            .filter(|&p| self.words[usize::from(p / 64)] & (1 << (p % 64)) != 0)
            .collect()
    }
}

fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&v4.octets());
            (b, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 6),
    }
}

impl FrontendKey {
    pub fn from_frontend(f: &Frontend) -> Self {
        let (addr, family) = addr_bytes(f.addr);
        FrontendKey {
            addr,
            port: f.port.to_be_bytes(),
            proto: f.protocol.number(),
            family,
        }
    }
}

impl BackendValue {
    /// The backend's value with generation 0 (its identity; [`MapSync`] sets the generation).
    pub fn from_backend(b: &Backend) -> Self {
        let (addr, family) = addr_bytes(b.addr.ip());
        let (snat_addr, node_addr, flags) = match b.path {
            BackendPath::Local => ([0; 16], [0; 16], 0),
            BackendPath::Snat { source } => (addr_bytes(source).0, [0; 16], BACKEND_SNAT),
            BackendPath::Dsr { source, node } => (addr_bytes(source).0, addr_bytes(node).0, BACKEND_DSR),
        };
        BackendValue {
            addr,
            snat_addr,
            node_addr,
            generation: 0,
            port: b.addr.port().to_be_bytes(),
            family,
            flags,
        }
    }

    /// The value without its generation: equal for the same backend reached the same way.
    pub fn identity(&self) -> Self {
        BackendValue { generation: 0, ..*self }
    }

    /// The backend's `ip:port` (its Maglev name).
    pub fn socket_addr(&self) -> SocketAddr {
        let ip = if self.family == 4 {
            IpAddr::from([self.addr[0], self.addr[1], self.addr[2], self.addr[3]])
        } else {
            IpAddr::from(self.addr)
        };
        SocketAddr::new(ip, u16::from_be_bytes(self.port))
    }
}

/// A failed map operation, naming the map and the operation.
#[derive(Debug, Error)]
#[error("BPF map {map}: {op} failed")]
pub struct MapsError {
    pub map: &'static str,
    pub op: &'static str,
    #[source]
    pub source: MapError,
}

/// One entry of `herald_source_ranges`: a network admitted to a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRange {
    pub frontend_id: u32,
    /// The network's prefix length (not counting the id's 32 bits).
    pub prefix_len: u8,
    pub addr: [u8; 16],
}

impl SourceRange {
    pub fn new(frontend_id: u32, net: &IpNet) -> Self {
        SourceRange {
            frontend_id,
            prefix_len: net.prefix_len(),
            addr: addr_bytes(net.network()).0,
        }
    }

    fn key(&self) -> LpmKey<SourceData> {
        LpmKey::new(
            32 + u32::from(self.prefix_len),
            SourceData {
                frontend_id: self.frontend_id,
                addr: self.addr,
            },
        )
    }

    /// Every entry of frontend `id`, as a range of a sorted set.
    fn of_frontend(id: u32) -> std::ops::RangeInclusive<SourceRange> {
        let lowest = SourceRange {
            frontend_id: id,
            prefix_len: 0,
            addr: [0; 16],
        };
        let highest = SourceRange {
            frontend_id: id,
            prefix_len: u8::MAX,
            addr: [u8::MAX; 16],
        };
        lowest..=highest
    }
}

/// What the service maps hold (the counters aside).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapContents {
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    pub backends: BTreeMap<u32, BackendValue>,
    pub rows: BTreeMap<u32, Vec<u32>>,
    pub source_ranges: BTreeSet<SourceRange>,
    /// Ports (native order) egress looks up replies from: those of the backends.
    pub reply_ports: BTreeSet<u16>,
}

impl MapContents {
    /// The networks admitted to frontend `id`.
    fn source_ranges_of(&self, id: u32) -> impl Iterator<Item = SourceRange> + '_ {
        self.source_ranges.range(SourceRange::of_frontend(id)).copied()
    }
}

/// One write to the service maps; the unit the sync logic is tested in.
pub trait ServiceMaps {
    /// Everything the maps hold now (after a restart: what the previous speaker left).
    fn read_all(&self) -> Result<MapContents, MapsError>;
    fn set_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapsError>;
    fn remove_backend(&mut self, id: u32) -> Result<(), MapsError>;
    fn set_row(&mut self, id: u32, row: &MaglevRow) -> Result<(), MapsError>;
    fn remove_row(&mut self, id: u32) -> Result<(), MapsError>;
    fn set_frontend(&mut self, key: &FrontendKey, value: &FrontendValue) -> Result<(), MapsError>;
    fn remove_frontend(&mut self, key: &FrontendKey) -> Result<(), MapsError>;
    fn set_source_range(&mut self, range: &SourceRange) -> Result<(), MapsError>;
    fn remove_source_range(&mut self, range: &SourceRange) -> Result<(), MapsError>;
    fn set_reply_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), MapsError>;
    /// Zeroes a frontend id's counters (a new frontend must not inherit an old one's).
    fn reset_counters(&mut self, id: u32) -> Result<(), MapsError>;
    /// The id's counters summed over CPUs.
    fn counters(&self, id: u32) -> Result<Counters, MapsError>;
}

/// One write, as the fake records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOp {
    SetBackend(u32),
    RemoveBackend(u32),
    SetRow(u32),
    RemoveRow(u32),
    SetFrontend(FrontendKey),
    RemoveFrontend(FrontendKey),
    SetSourceRange(SourceRange),
    RemoveSourceRange(SourceRange),
    SetReplyPorts(BTreeSet<u16>),
    ResetCounters(u32),
}

/// In-memory [`ServiceMaps`] recording every write (feature `testing`).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default, Clone)]
pub struct FakeServiceMaps {
    pub contents: MapContents,
    pub counters: BTreeMap<u32, Counters>,
    pub ops: Vec<MapOp>,
}

#[cfg(any(test, feature = "testing"))]
impl ServiceMaps for FakeServiceMaps {
    fn read_all(&self) -> Result<MapContents, MapsError> {
        Ok(self.contents.clone())
    }
    fn set_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapsError> {
        self.contents.backends.insert(id, *value);
        self.ops.push(MapOp::SetBackend(id));
        Ok(())
    }
    fn remove_backend(&mut self, id: u32) -> Result<(), MapsError> {
        self.contents.backends.remove(&id);
        self.ops.push(MapOp::RemoveBackend(id));
        Ok(())
    }
    fn set_row(&mut self, id: u32, row: &MaglevRow) -> Result<(), MapsError> {
        self.contents.rows.insert(id, row.backend_ids.to_vec());
        self.ops.push(MapOp::SetRow(id));
        Ok(())
    }
    fn remove_row(&mut self, id: u32) -> Result<(), MapsError> {
        self.contents.rows.remove(&id);
        self.ops.push(MapOp::RemoveRow(id));
        Ok(())
    }
    fn set_frontend(&mut self, key: &FrontendKey, value: &FrontendValue) -> Result<(), MapsError> {
        self.contents.frontends.insert(*key, *value);
        self.ops.push(MapOp::SetFrontend(*key));
        Ok(())
    }
    fn remove_frontend(&mut self, key: &FrontendKey) -> Result<(), MapsError> {
        self.contents.frontends.remove(key);
        self.ops.push(MapOp::RemoveFrontend(*key));
        Ok(())
    }
    fn set_source_range(&mut self, range: &SourceRange) -> Result<(), MapsError> {
        self.contents.source_ranges.insert(*range);
        self.ops.push(MapOp::SetSourceRange(*range));
        Ok(())
    }
    fn remove_source_range(&mut self, range: &SourceRange) -> Result<(), MapsError> {
        self.contents.source_ranges.remove(range);
        self.ops.push(MapOp::RemoveSourceRange(*range));
        Ok(())
    }
    fn set_reply_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), MapsError> {
        self.contents.reply_ports = ports.clone();
        self.ops.push(MapOp::SetReplyPorts(ports.clone()));
        Ok(())
    }
    fn reset_counters(&mut self, id: u32) -> Result<(), MapsError> {
        self.counters.insert(id, Counters::default());
        self.ops.push(MapOp::ResetCounters(id));
        Ok(())
    }
    fn counters(&self, id: u32) -> Result<Counters, MapsError> {
        Ok(self.counters.get(&id).copied().unwrap_or_default())
    }
}

/// The kernel's maps, through aya.
pub struct AyaServiceMaps {
    pub(crate) frontends: BpfHashMap<MapData, FrontendKey, FrontendValue>,
    /// Indexed by id; an unused id holds zeroes (generation 0, which no backend has).
    pub(crate) backends: Array<MapData, BackendValue>,
    pub(crate) rows: BpfHashMap<MapData, u32, MaglevRow>,
    pub(crate) counters: PerCpuArray<MapData, Counters>,
    pub(crate) source_ranges: LpmTrie<MapData, SourceData, u32>,
    pub(crate) reply_ports: Array<MapData, PortSet>,
}

fn err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError { map, op, source }
}

impl ServiceMaps for AyaServiceMaps {
    fn read_all(&self) -> Result<MapContents, MapsError> {
        let mut contents = MapContents::default();
        for entry in self.frontends.iter() {
            let (k, v) = entry.map_err(err("herald_frontends", "iterate"))?;
            contents.frontends.insert(k, v);
        }
        for (id, entry) in (0..).zip(self.backends.iter()) {
            let v = entry.map_err(err("herald_backends", "iterate"))?;
            if v.generation != 0 {
                contents.backends.insert(id, v);
            }
        }
        for entry in self.rows.iter() {
            let (k, v) = entry.map_err(err("herald_maglev", "iterate"))?;
            contents.rows.insert(k, v.backend_ids.to_vec());
        }
        for key in self.source_ranges.keys() {
            let key = key.map_err(err("herald_source_ranges", "iterate"))?;
            let data = key.data();
            contents.source_ranges.insert(SourceRange {
                frontend_id: data.frontend_id,
                prefix_len: key.prefix_len().saturating_sub(32).min(128) as u8,
                addr: data.addr,
            });
        }
        contents.reply_ports = self
            .reply_ports
            .get(&0, 0)
            .map_err(err("herald_reply_ports", "read"))?
            .ports();
        Ok(contents)
    }
    fn set_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapsError> {
        self.backends
            .set(id, value, 0)
            .map_err(err("herald_backends", "update"))
    }
    fn remove_backend(&mut self, id: u32) -> Result<(), MapsError> {
        self.backends
            .set(id, BackendValue::default(), 0)
            .map_err(err("herald_backends", "delete"))
    }
    fn set_row(&mut self, id: u32, row: &MaglevRow) -> Result<(), MapsError> {
        self.rows.insert(id, row, 0).map_err(err("herald_maglev", "update"))
    }
    fn remove_row(&mut self, id: u32) -> Result<(), MapsError> {
        ignore_missing(self.rows.remove(&id)).map_err(err("herald_maglev", "delete"))
    }
    fn set_frontend(&mut self, key: &FrontendKey, value: &FrontendValue) -> Result<(), MapsError> {
        self.frontends
            .insert(key, value, 0)
            .map_err(err("herald_frontends", "update"))
    }
    fn remove_frontend(&mut self, key: &FrontendKey) -> Result<(), MapsError> {
        ignore_missing(self.frontends.remove(key)).map_err(err("herald_frontends", "delete"))
    }
    fn set_source_range(&mut self, range: &SourceRange) -> Result<(), MapsError> {
        self.source_ranges
            .insert(&range.key(), 1, 0)
            .map_err(err("herald_source_ranges", "update"))
    }
    fn remove_source_range(&mut self, range: &SourceRange) -> Result<(), MapsError> {
        ignore_missing(self.source_ranges.remove(&range.key())).map_err(err("herald_source_ranges", "delete"))
    }
    fn set_reply_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), MapsError> {
        self.reply_ports
            .set(0, PortSet::of(ports), 0)
            .map_err(err("herald_reply_ports", "update"))
    }
    fn reset_counters(&mut self, id: u32) -> Result<(), MapsError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapsError {
            map: "herald_counters",
            op: "count CPUs",
            source: MapError::IoError(e),
        })?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus]).map_err(|e| MapsError {
            map: "herald_counters",
            op: "build zero values",
            source: MapError::IoError(e),
        })?;
        self.counters
            .set(id, zeros, 0)
            .map_err(err("herald_counters", "update"))
    }
    fn counters(&self, id: u32) -> Result<Counters, MapsError> {
        let per_cpu = self.counters.get(&id, 0).map_err(err("herald_counters", "lookup"))?;
        Ok(per_cpu.iter().fold(Counters::default(), |acc, c| Counters {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        }))
    }
}

/// A delete of an entry that is already gone is fine (idempotent removal).
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(ref e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Labels of a frontend for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendInfo {
    pub frontend: Frontend,
    pub target: FrontendTarget,
}

/// Keeps the maps equal to the desired state with as few writes as possible. Holds a copy of
/// what the maps contain, read back from them at start (so a restarted speaker continues with
/// the ids its predecessor wrote and established flows keep their backends).
///
/// [`MapSync::apply`] makes the maps equal a whole desired state (at start, and after a failed
/// write); [`MapSync::apply_changes`] writes only the frontends a pass changed, so one Service's
/// change costs the same at 10 Services as at 10,000.
#[derive(Debug, Clone)]
pub struct MapSync {
    current: MapContents,
    /// Frontend id → what it serves, for metric labels.
    labels: BTreeMap<u32, FrontendInfo>,
    /// Frontend id → the backend ids (and whether each was draining) its row was built from:
    /// an unchanged backend list skips the table computation (an id names the same backend for
    /// as long as a row uses it).
    row_sources: BTreeMap<u32, Vec<(u32, bool)>>,
    /// Backend (its identity) → its id, for the backends the maps hold.
    backend_ids: BTreeMap<BackendValue, u32>,
    /// Backend id → how many rows in `row_sources` name it; a backend no row names is removed.
    backend_users: BTreeMap<u32, usize>,
    /// Port → how many backends the maps hold on it: the reply-port filter's contents, kept
    /// as backends come and go so an endpoint change costs no walk over every backend.
    backend_ports: BTreeMap<u16, usize>,
    /// Generation of the next backend written: flows remember the generation they were sent
    /// to, so a reused id never carries a flow to a different backend.
    next_generation: u32,
}

/// How many writes one [`MapSync::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub frontends_written: usize,
    pub frontends_removed: usize,
    pub backends_written: usize,
    pub backends_removed: usize,
    pub rows_written: usize,
}

fn lowest_free(used: impl Fn(u32) -> bool, next: &mut u32) -> u32 {
    while used(*next) {
        *next += 1;
    }
    let id = *next;
    *next += 1;
    id
}

/// Which backends an apply may find unused at its end.
enum Unused {
    /// Only those whose last user this apply removed.
    Released(BTreeSet<u32>),
    /// Any the maps hold (after a restart, the predecessor's leftovers too).
    Any,
}

impl MapSync {
    /// Starts from what `maps` hold now.
    pub fn resume(maps: &impl ServiceMaps) -> Result<Self, MapsError> {
        let current = maps.read_all()?;
        let next_generation = current
            .backends
            .values()
            .map(|b| b.generation.wrapping_add(1))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut backend_ids = BTreeMap::new();
        let mut backend_ports = BTreeMap::new();
        for (&id, value) in &current.backends {
            backend_ids.entry(value.identity()).or_insert(id);
            *backend_ports.entry(u16::from_be_bytes(value.port)).or_insert(0) += 1;
        }
        Ok(MapSync {
            current,
            labels: BTreeMap::new(),
            row_sources: BTreeMap::new(),
            backend_ids,
            backend_users: BTreeMap::new(),
            backend_ports,
            next_generation,
        })
    }

    /// What the maps hold, as far as this sync knows.
    pub fn current(&self) -> &MapContents {
        &self.current
    }

    /// Frontend id → labels, for every frontend applied by this process.
    pub fn labels(&self) -> &BTreeMap<u32, FrontendInfo> {
        &self.labels
    }

    /// Writes the differences between the maps and `desired`, and removes whatever else they
    /// hold. On error the maps hold a mix of old and new state that is still consistent (see
    /// the module's ordering invariant); the next apply finishes the job.
    pub fn apply(&mut self, maps: &mut impl ServiceMaps, desired: &Desired) -> Result<ApplyStats, MapsError> {
        let wanted_keys: BTreeSet<FrontendKey> = desired.frontends.keys().map(FrontendKey::from_frontend).collect();
        let mut changes: Vec<(FrontendKey, Option<(&Frontend, &FrontendTarget)>)> = self
            .current
            .frontends
            .keys()
            .filter(|k| !wanted_keys.contains(*k))
            .map(|k| (*k, None))
            .collect();
        changes.extend(
            desired
                .frontends
                .iter()
                .map(|(frontend, target)| (FrontendKey::from_frontend(frontend), Some((frontend, target)))),
        );
        self.write(maps, &changes, Unused::Any)
    }

    /// Writes the frontends `changes` names (`None`: remove it), leaving every other frontend
    /// as it is. Only valid after an [`MapSync::apply`] that succeeded, with every later call
    /// succeeding too: after an error, apply the whole desired state.
    pub fn apply_changes(
        &mut self,
        maps: &mut impl ServiceMaps,
        changes: &DesiredChanges,
    ) -> Result<ApplyStats, MapsError> {
        let changes: Vec<(FrontendKey, Option<(&Frontend, &FrontendTarget)>)> = changes
            .iter()
            .map(|(frontend, target)| {
                (
                    FrontendKey::from_frontend(frontend),
                    target.as_ref().map(|t| (frontend, t)),
                )
            })
            .collect();
        self.write(maps, &changes, Unused::Released(BTreeSet::new()))
    }

    fn write(
        &mut self,
        maps: &mut impl ServiceMaps,
        changes: &[(FrontendKey, Option<(&Frontend, &FrontendTarget)>)],
        mut unused: Unused,
    ) -> Result<ApplyStats, MapsError> {
        let mut stats = ApplyStats::default();

        // 1. Backends first: keep the id of every backend already present.
        let mut next_backend = 1; // id 0 means "none" in the datapath
        for (_, target) in changes {
            for b in target.iter().flat_map(|(_, t)| &t.backends) {
                let value = BackendValue::from_backend(b);
                if self.backend_ids.contains_key(&value) {
                    continue;
                }
                let backends = &self.current.backends;
                let id = lowest_free(|id| backends.contains_key(&id), &mut next_backend);
                let written = BackendValue {
                    generation: self.next_generation,
                    ..value
                };
                // 0 is never a generation, so a zeroed entry matches nothing.
                self.next_generation = self.next_generation.checked_add(1).unwrap_or(1);
                maps.set_backend(id, &written)?;
                self.current.backends.insert(id, written);
                *self.backend_ports.entry(u16::from_be_bytes(written.port)).or_insert(0) += 1;
                self.backend_ids.insert(value, id);
                stats.backends_written += 1;
            }
        }
        self.write_reply_ports(maps)?;

        // 2. Frontends no longer wanted go first (freeing their ids), then their rows.
        for (key, _) in changes.iter().filter(|(_, target)| target.is_none()) {
            let Some(value) = self.current.frontends.get(key).copied() else {
                continue;
            };
            maps.remove_frontend(key)?;
            self.current.frontends.remove(key);
            self.labels.remove(&value.id);
            self.set_row_sources(value.id, None, &mut unused);
            stats.frontends_removed += 1;
            self.remove_rest_of(maps, value.id)?;
        }
        if matches!(unused, Unused::Any) {
            // What an earlier speaker left without a frontend.
            let live_ids: BTreeSet<u32> = self.current.frontends.values().map(|v| v.id).collect();
            let orphans: BTreeSet<u32> = self
                .current
                .rows
                .keys()
                .copied()
                .chain(self.current.source_ranges.iter().map(|r| r.frontend_id))
                .filter(|id| !live_ids.contains(id))
                .collect();
            for id in orphans {
                self.remove_rest_of(maps, id)?;
            }
        }

        // 3. Wanted frontends: row first, then the frontend entry.
        let mut used_frontend_ids: Option<BTreeSet<u32>> = None;
        let mut next_frontend = 0;
        for (key, target) in changes {
            let Some((frontend, target)) = target else { continue };
            let existing = self.current.frontends.get(key).copied();
            let id = match existing {
                Some(v) => v.id,
                None => {
                    let current = &self.current;
                    let used =
                        used_frontend_ids.get_or_insert_with(|| current.frontends.values().map(|v| v.id).collect());
                    let id = lowest_free(|id| used.contains(&id), &mut next_frontend);
                    used.insert(id);
                    id
                }
            };
            let ids: Vec<(u32, bool)> = target
                .backends
                .iter()
                .map(|b| (self.backend_ids[&BackendValue::from_backend(b)], b.draining))
                .collect();
            let unchanged = self.row_sources.get(&id) == Some(&ids) && self.current.rows.contains_key(&id);
            if !unchanged {
                let names: Vec<String> = target.backends.iter().map(|b| b.addr.to_string()).collect();
                let draining: Vec<bool> = ids.iter().map(|&(_, d)| d).collect();
                let table: Vec<u32> = maglev_table_draining(&names, &draining)
                    .into_iter()
                    .map(|i| ids[i as usize].0)
                    .collect();
                self.set_row_sources(id, Some(ids), &mut unused);
                // The same table (e.g. after a restart) needs no write.
                if self.current.rows.get(&id) != Some(&table) {
                    let mut row = MaglevRow {
                        backend_ids: [0; MAGLEV_TABLE_SIZE],
                    };
                    row.backend_ids.copy_from_slice(&table);
                    maps.set_row(id, &row)?;
                    self.current.rows.insert(id, table);
                    stats.rows_written += 1;
                }
            }
            // Admitted networks go in before the frontend says to check them, and leave after.
            let wanted_ranges: BTreeSet<SourceRange> = target
                .source_ranges
                .iter()
                .flatten()
                .map(|net| SourceRange::new(id, net))
                .collect();
            let held_ranges: BTreeSet<SourceRange> = self.current.source_ranges_of(id).collect();
            for range in wanted_ranges.difference(&held_ranges) {
                maps.set_source_range(range)?;
                self.current.source_ranges.insert(*range);
            }
            let value = FrontendValue {
                id,
                backend_count: target.backends.len() as u32,
                flags: if target.source_ranges.is_some() {
                    FRONTEND_SOURCE_RANGES
                } else {
                    0
                },
            };
            if existing != Some(value) {
                if existing.is_none() {
                    maps.reset_counters(id)?;
                }
                maps.set_frontend(key, &value)?;
                self.current.frontends.insert(*key, value);
                stats.frontends_written += 1;
            }
            for range in held_ranges.difference(&wanted_ranges) {
                maps.remove_source_range(range)?;
                self.current.source_ranges.remove(range);
            }
            self.labels.insert(
                id,
                FrontendInfo {
                    frontend: **frontend,
                    target: (*target).clone(),
                },
            );
        }

        // 4. Backends no row names any more.
        let stale_backends: Vec<u32> = match unused {
            Unused::Released(ids) => ids
                .into_iter()
                .filter(|id| !self.backend_users.contains_key(id))
                .collect(),
            Unused::Any => self
                .current
                .backends
                .keys()
                .copied()
                .filter(|id| !self.backend_users.contains_key(id))
                .collect(),
        };
        for id in stale_backends {
            maps.remove_backend(id)?;
            if let Some(value) = self.current.backends.remove(&id) {
                self.backend_ports_remove(value.port);
                if self.backend_ids.get(&value.identity()) == Some(&id) {
                    self.backend_ids.remove(&value.identity());
                }
            }
            stats.backends_removed += 1;
        }
        self.write_reply_ports(maps)?;
        Ok(stats)
    }

    /// Makes the egress filter the ports of the backends the maps hold now. Called once the
    /// new backends are in (the set may only grow before rows name them) and once the unused
    /// ones are gone.
    fn write_reply_ports(&mut self, maps: &mut impl ServiceMaps) -> Result<(), MapsError> {
        if !self.backend_ports.keys().eq(self.current.reply_ports.iter()) {
            let ports: BTreeSet<u16> = self.backend_ports.keys().copied().collect();
            maps.set_reply_ports(&ports)?;
            self.current.reply_ports = ports;
        }
        Ok(())
    }

    /// Counts one backend on `port` (network order) fewer.
    fn backend_ports_remove(&mut self, port: [u8; 2]) {
        let port = u16::from_be_bytes(port);
        if let Some(n) = self.backend_ports.get_mut(&port) {
            *n -= 1;
            if *n == 0 {
                self.backend_ports.remove(&port);
            }
        }
    }

    /// Records the backends frontend `id`'s row is built from (`None`: it has no row now),
    /// counting each backend's users; a backend losing its last user goes into `unused`.
    fn set_row_sources(&mut self, id: u32, sources: Option<Vec<(u32, bool)>>, unused: &mut Unused) {
        let old = match sources {
            Some(sources) => {
                for &(backend, _) in &sources {
                    *self.backend_users.entry(backend).or_default() += 1;
                }
                self.row_sources.insert(id, sources)
            }
            None => self.row_sources.remove(&id),
        };
        for (backend, _) in old.into_iter().flatten() {
            if let Some(users) = self.backend_users.get_mut(&backend) {
                *users -= 1;
                if *users == 0 {
                    self.backend_users.remove(&backend);
                    if let Unused::Released(released) = unused {
                        released.insert(backend);
                    }
                }
            }
        }
    }

    /// Removes frontend `id`'s admitted networks and row (its frontend entry is gone).
    fn remove_rest_of(&mut self, maps: &mut impl ServiceMaps, id: u32) -> Result<(), MapsError> {
        let ranges: Vec<SourceRange> = self.current.source_ranges_of(id).collect();
        for range in ranges {
            maps.remove_source_range(&range)?;
            self.current.source_ranges.remove(&range);
        }
        if self.current.rows.contains_key(&id) {
            maps.remove_row(id)?;
            self.current.rows.remove(&id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::desired::{FrontendKind, Protocol};

    #[test]
    fn mirrors_have_the_c_sizes() {
        // Sizes of the C structs (bpf/lib/common.h) on bpf, where __u32 arrays are 4-aligned.
        assert_eq!(std::mem::size_of::<FrontendKey>(), 20);
        assert_eq!(std::mem::size_of::<FrontendValue>(), 12);
        assert_eq!(std::mem::size_of::<SourceData>(), 20);
        assert_eq!(std::mem::size_of::<BackendValue>(), 56);
        assert_eq!(std::mem::size_of::<MaglevRow>(), 4 * MAGLEV_TABLE_SIZE);
        assert_eq!(std::mem::size_of::<Counters>(), 16);
        assert_eq!(std::mem::size_of::<ConfigValue>(), 16);
        assert_eq!(std::mem::size_of::<CtKey>(), 40);
        assert_eq!(std::mem::size_of::<CtForward>(), 64);
        assert_eq!(std::mem::size_of::<CtReverse>(), 36);
        assert_eq!(std::mem::size_of::<PortSet>(), 8192);
        assert_eq!(std::mem::offset_of!(FrontendKey, port), 16);
        assert_eq!(std::mem::offset_of!(BackendValue, snat_addr), 16);
        assert_eq!(std::mem::offset_of!(BackendValue, node_addr), 32);
        assert_eq!(std::mem::offset_of!(BackendValue, generation), 48);
        assert_eq!(std::mem::offset_of!(BackendValue, port), 52);
        assert_eq!(std::mem::offset_of!(BackendValue, flags), 55);
        assert_eq!(std::mem::offset_of!(ConfigValue, snat_port_min), 8);
        assert_eq!(std::mem::offset_of!(CtKey, sport), 32);
        assert_eq!(std::mem::offset_of!(CtKey, proto), 36);
        assert_eq!(std::mem::offset_of!(CtForward, frontend_id), 8);
        assert_eq!(std::mem::offset_of!(CtForward, backend_addr), 20);
        assert_eq!(std::mem::offset_of!(CtForward, snat_addr), 36);
        assert_eq!(std::mem::offset_of!(CtForward, backend_port), 52);
        assert_eq!(std::mem::offset_of!(CtForward, state), 56);
        assert_eq!(std::mem::offset_of!(CtForward, flags), 57);
        assert_eq!(std::mem::offset_of!(CtReverse, frontend_port), 32);
    }

    #[test]
    fn source_ranges_go_in_before_their_frontend_checks_them_and_leave_after() {
        let mut maps = FakeServiceMaps::default();
        let mut sync = MapSync::resume(&maps).unwrap();
        let mut d = desired_with(&[("203.0.113.1", 80, &["10.0.0.1:80"])]);
        let target = d.frontends.values_mut().next().unwrap();
        target.source_ranges = Some(vec![
            "198.51.100.0/24".parse().unwrap(),
            "192.0.2.7/32".parse().unwrap(),
        ]);
        sync.apply(&mut maps, &d).unwrap();
        let first_frontend = maps
            .ops
            .iter()
            .position(|op| matches!(op, MapOp::SetFrontend(_)))
            .unwrap();
        let ranges: Vec<usize> = (0..maps.ops.len())
            .filter(|&i| matches!(maps.ops[i], MapOp::SetSourceRange(_)))
            .collect();
        assert_eq!(ranges.len(), 2);
        assert!(ranges.iter().all(|&i| i < first_frontend), "{:?}", maps.ops);
        let value = *maps.contents.frontends.values().next().unwrap();
        assert_eq!(value.flags, FRONTEND_SOURCE_RANGES);
        let r = maps.contents.source_ranges.iter().find(|r| r.prefix_len == 24).unwrap();
        assert_eq!((r.frontend_id, &r.addr[..4]), (value.id, &[198, 51, 100, 0][..]));

        // Open the frontend again: the flag goes first, then the ranges.
        maps.ops.clear();
        d.frontends.values_mut().next().unwrap().source_ranges = None;
        sync.apply(&mut maps, &d).unwrap();
        assert!(matches!(maps.ops[0], MapOp::SetFrontend(_)), "{:?}", maps.ops);
        assert_eq!(maps.ops.len(), 3);
        assert!(maps.contents.source_ranges.is_empty());
        assert_eq!(maps.contents.frontends.values().next().unwrap().flags, 0);

        // A removed frontend takes its ranges along, and a restart reads them back.
        d.frontends.values_mut().next().unwrap().source_ranges = Some(vec!["198.51.100.0/24".parse().unwrap()]);
        sync.apply(&mut maps, &d).unwrap();
        assert_eq!(MapSync::resume(&maps).unwrap().current().source_ranges.len(), 1);
        sync.apply(&mut maps, &Desired::default()).unwrap();
        assert!(maps.contents.source_ranges.is_empty() && maps.contents.frontends.is_empty());
    }

    #[test]
    fn a_backend_written_anew_gets_a_new_generation_even_with_its_old_id() {
        let mut maps = FakeServiceMaps::default();
        let mut sync = MapSync::resume(&maps).unwrap();
        let one = desired_with(&[("203.0.113.1", 80, &["10.0.0.1:80"])]);
        sync.apply(&mut maps, &one).unwrap();
        let first = maps.contents.backends[&1];
        assert_ne!(first.generation, 0, "0 never names a backend");
        // The backend goes away and its address comes back (another pod got it): same id, a
        // generation no flow of the old one remembers.
        sync.apply(&mut maps, &desired_with(&[("203.0.113.1", 80, &["10.0.0.2:80"])]))
            .unwrap();
        sync.apply(&mut maps, &one).unwrap();
        let again = *maps
            .contents
            .backends
            .values()
            .find(|b| b.identity() == first.identity())
            .unwrap();
        assert!(again.generation > first.generation);
        // A restarted speaker continues after the highest generation in the maps.
        let mut resumed = MapSync::resume(&maps).unwrap();
        resumed
            .apply(&mut maps, &desired_with(&[("203.0.113.1", 80, &["10.0.0.3:80"])]))
            .unwrap();
        let newest = maps.contents.backends.values().map(|b| b.generation).max().unwrap();
        assert!(newest > again.generation);
    }

    #[test]
    fn ipv4_key_puts_the_address_first_in_network_order() {
        let f = Frontend {
            addr: "10.1.2.3".parse().unwrap(),
            port: 0x1f90,
            protocol: Protocol::Udp,
        };
        let k = FrontendKey::from_frontend(&f);
        assert_eq!(&k.addr[..5], &[10, 1, 2, 3, 0]);
        assert_eq!(k.port, [0x1f, 0x90]);
        assert_eq!((k.proto, k.family), (17, 4));
    }

    fn desired_with(frontends: &[(&str, u16, &[&str])]) -> Desired {
        let mut d = Desired::default();
        for (addr, port, backends) in frontends {
            d.frontends.insert(
                Frontend {
                    addr: addr.parse().unwrap(),
                    port: *port,
                    protocol: Protocol::Tcp,
                },
                FrontendTarget {
                    service: "ns/svc".into(),
                    kind: FrontendKind::LoadBalancer,
                    source_ranges: None,
                    backends: backends
                        .iter()
                        .map(|b| Backend {
                            addr: b.parse().unwrap(),
                            path: BackendPath::Local,
                            draining: false,
                        })
                        .collect(),
                },
            );
        }
        d
    }

    /// Checks the invariant the datapath relies on: every frontend has a full row, and every id
    /// in a row resolves to a backend.
    fn assert_consistent(c: &MapContents) {
        for v in c.frontends.values() {
            let row = c.rows.get(&v.id).expect("frontend without row");
            assert_eq!(row.len(), MAGLEV_TABLE_SIZE);
            for id in row {
                assert!(c.backends.contains_key(id), "row names missing backend {id}");
            }
        }
        let ports: BTreeSet<u16> = c.backends.values().map(|b| u16::from_be_bytes(b.port)).collect();
        assert_eq!(
            c.reply_ports, ports,
            "the reply-port filter holds exactly the backends' ports"
        );
    }

    #[test]
    fn a_draining_backend_keeps_its_entry_and_generation_but_leaves_the_row() {
        let mut maps = FakeServiceMaps::default();
        let mut sync = MapSync::resume(&maps).unwrap();
        let mut d = desired_with(&[("203.0.113.1", 80, &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])]);
        sync.apply(&mut maps, &d).unwrap();
        let before = sync.current().clone();
        let drained_id = before
            .backends
            .iter()
            .find(|(_, v)| v.addr[..4] == [10, 0, 0, 2])
            .map(|(id, _)| *id)
            .unwrap();

        d.frontends.values_mut().next().unwrap().backends[1].draining = true;
        let stats = sync.apply(&mut maps, &d).unwrap();
        assert_eq!(
            (stats.backends_written, stats.backends_removed, stats.rows_written),
            (0, 0, 1)
        );
        let after = sync.current();
        assert_eq!(
            after.backends, before.backends,
            "established flows still find their backend"
        );
        let (old_row, new_row) = (
            before.rows.values().next().unwrap(),
            after.rows.values().next().unwrap(),
        );
        assert!(new_row.iter().all(|&id| id != drained_id), "no new flow goes to it");
        for (old, new) in old_row.iter().zip(new_row) {
            if *old != drained_id {
                assert_eq!(old, new, "the other backends keep their slots");
            }
        }
        assert_consistent(after);

        // Back from the dead: the original table again.
        d.frontends.values_mut().next().unwrap().backends[1].draining = false;
        sync.apply(&mut maps, &d).unwrap();
        assert_eq!(sync.current().rows, before.rows);
    }

    #[test]
    fn first_apply_writes_everything_once_in_order() {
        let mut maps = FakeServiceMaps::default();
        let mut sync = MapSync::resume(&maps).unwrap();
        let d = desired_with(&[("203.0.113.1", 80, &["10.0.0.1:80", "10.0.0.2:80"])]);
        let stats = sync.apply(&mut maps, &d).unwrap();
        assert_eq!(
            stats,
            ApplyStats {
                frontends_written: 1,
                backends_written: 2,
                rows_written: 1,
                ..Default::default()
            }
        );
        let pos = |op: &MapOp| maps.ops.iter().position(|o| o == op).unwrap();
        let key = *maps.contents.frontends.keys().next().unwrap();
        assert!(pos(&MapOp::SetBackend(1)) < pos(&MapOp::SetRow(0)));
        assert!(pos(&MapOp::SetRow(0)) < pos(&MapOp::SetFrontend(key)));
        assert_consistent(&maps.contents);
        assert_eq!(&maps.contents, sync.current());
    }

    /// Egress looks up replies only from backends' ports: a port is in the filter before a row
    /// names a backend on it, and leaves once no backend uses it.
    #[test]
    fn reply_ports_are_the_backends_ports_and_grow_before_rows_use_them() {
        let mut maps = FakeServiceMaps::default();
        let mut sync = MapSync::resume(&maps).unwrap();
        let ports = |p: &[u16]| p.iter().copied().collect::<BTreeSet<u16>>();
        sync.apply(
            &mut maps,
            &desired_with(&[("203.0.113.1", 80, &["10.0.0.1:8080", "10.0.0.2:9000"])]),
        )
        .unwrap();
        assert_eq!(maps.contents.reply_ports, ports(&[8080, 9000]));
        let pos = |ops: &[MapOp], op: &MapOp| ops.iter().position(|o| o == op).unwrap();
        assert!(pos(&maps.ops, &MapOp::SetReplyPorts(ports(&[8080, 9000]))) < pos(&maps.ops, &MapOp::SetRow(0)));

        // The second backend moves to another port: the new port goes in before the row names
        // it, the old one leaves after its backend.
        maps.ops.clear();
        sync.apply(
            &mut maps,
            &desired_with(&[("203.0.113.1", 80, &["10.0.0.1:8080", "10.0.0.2:9090"])]),
        )
        .unwrap();
        let grown = MapOp::SetReplyPorts(ports(&[8080, 9000, 9090]));
        let shrunk = MapOp::SetReplyPorts(ports(&[8080, 9090]));
        assert!(pos(&maps.ops, &grown) < pos(&maps.ops, &MapOp::SetRow(0)));
        assert!(pos(&maps.ops, &MapOp::RemoveBackend(2)) < pos(&maps.ops, &shrunk));
        assert_eq!(maps.contents.reply_ports, ports(&[8080, 9090]));

        sync.apply(&mut maps, &Desired::default()).unwrap();
        assert!(maps.contents.reply_ports.is_empty());
        assert_eq!(&maps.contents, sync.current());
    }

    #[test]
    fn port_set_holds_exactly_its_ports() {
        let held = [0, 1, 63, 64, 8080, 65535].into_iter().collect::<BTreeSet<u16>>();
        let set = PortSet::of(&held);
        assert_eq!(set.ports(), held);
        assert_eq!(set.words[0], 1 | 2 | 1 << 63);
        assert_eq!(set.words[1], 1);
        assert_eq!(set.words[1023], 1 << 63);
    }

    #[test]
    fn applying_the_same_state_twice_writes_nothing() {
        let mut maps = FakeServiceMaps::default();
        let mut sync = MapSync::resume(&maps).unwrap();
        let d = desired_with(&[
            ("203.0.113.1", 80, &["10.0.0.1:80"]),
            ("203.0.113.2", 53, &["10.0.0.3:53"]),
        ]);
        sync.apply(&mut maps, &d).unwrap();
        maps.ops.clear();
        assert_eq!(sync.apply(&mut maps, &d).unwrap(), ApplyStats::default());
        assert!(maps.ops.is_empty());
    }

    #[test]
    fn backend_change_touches_only_the_changed_rows() {
        let mut maps = FakeServiceMaps::default();
        let mut sync = MapSync::resume(&maps).unwrap();
        let mut frontends: Vec<(String, u16, Vec<String>)> = (0..50)
            .map(|i| {
                (
                    format!("203.0.113.{}", i + 1),
                    80,
                    vec![format!("10.0.{i}.1:80"), format!("10.0.{i}.2:80")],
                )
            })
            .collect();
        let build = |f: &Vec<(String, u16, Vec<String>)>| {
            let refs: Vec<Vec<&str>> = f
                .iter()
                .map(|(_, _, b)| b.iter().map(String::as_str).collect())
                .collect();
            let rows: Vec<(&str, u16, &[&str])> = f
                .iter()
                .zip(&refs)
                .map(|((a, p, _), b)| (a.as_str(), *p, b.as_slice()))
                .collect();
            desired_with(&rows)
        };
        sync.apply(&mut maps, &build(&frontends)).unwrap();
        let row_before = maps.contents.rows.clone();
        maps.ops.clear();

        frontends[7].2.push("10.0.7.3:80".into());
        let stats = sync.apply(&mut maps, &build(&frontends)).unwrap();
        assert_eq!(
            stats,
            ApplyStats {
                backends_written: 1,
                rows_written: 1,
                frontends_written: 1,
                ..Default::default()
            }
        );
        let key = FrontendKey::from_frontend(&Frontend {
            addr: "203.0.113.8".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        });
        let id = maps.contents.frontends[&key].id;
        assert_eq!(maps.ops.len(), 3, "{:?}", maps.ops);
        assert!(maps.ops.contains(&MapOp::SetRow(id)));
        // Maglev: the new backend takes about a third of the row; the rest stays.
        let changed = row_before[&id]
            .iter()
            .zip(&maps.contents.rows[&id])
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            changed < MAGLEV_TABLE_SIZE / 3 + MAGLEV_TABLE_SIZE / 20,
            "changed {changed}"
        );
        assert_consistent(&maps.contents);

        maps.ops.clear();
        frontends[7].2.remove(0);
        let stats = sync.apply(&mut maps, &build(&frontends)).unwrap();
        assert_eq!(
            stats,
            ApplyStats {
                backends_removed: 1,
                rows_written: 1,
                frontends_written: 1,
                ..Default::default()
            }
        );
        // The row stops naming the backend before the backend goes.
        let set_row = maps.ops.iter().position(|o| *o == MapOp::SetRow(id)).unwrap();
        let remove = maps
            .ops
            .iter()
            .position(|o| matches!(o, MapOp::RemoveBackend(_)))
            .unwrap();
        assert!(set_row < remove);
        assert_consistent(&maps.contents);
    }

    #[test]
    fn removed_frontend_goes_before_its_row_and_backends() {
        let mut maps = FakeServiceMaps::default();
        let mut sync = MapSync::resume(&maps).unwrap();
        sync.apply(
            &mut maps,
            &desired_with(&[
                ("203.0.113.1", 80, &["10.0.0.1:80"]),
                ("203.0.113.2", 80, &["10.0.0.2:80"]),
            ]),
        )
        .unwrap();
        maps.ops.clear();
        let stats = sync
            .apply(&mut maps, &desired_with(&[("203.0.113.2", 80, &["10.0.0.2:80"])]))
            .unwrap();
        assert_eq!(
            stats,
            ApplyStats {
                frontends_removed: 1,
                backends_removed: 1,
                ..Default::default()
            }
        );
        assert!(matches!(maps.ops[0], MapOp::RemoveFrontend(_)));
        assert!(matches!(maps.ops[1], MapOp::RemoveRow(_)));
        assert!(matches!(maps.ops[2], MapOp::RemoveBackend(_)));
        assert_consistent(&maps.contents);
    }

    #[test]
    fn new_frontend_gets_fresh_counters_and_reuses_freed_ids() {
        let mut maps = FakeServiceMaps::default();
        let mut sync = MapSync::resume(&maps).unwrap();
        sync.apply(&mut maps, &desired_with(&[("203.0.113.1", 80, &["10.0.0.1:80"])]))
            .unwrap();
        maps.counters.insert(0, Counters { packets: 5, bytes: 500 });
        sync.apply(&mut maps, &desired_with(&[("203.0.113.9", 80, &["10.0.0.1:80"])]))
            .unwrap();
        assert_eq!(maps.contents.frontends.values().next().unwrap().id, 0);
        assert_eq!(maps.counters(0).unwrap(), Counters::default());
    }

    #[test]
    fn restart_resumes_from_the_maps_without_rewriting() {
        let mut maps = FakeServiceMaps::default();
        let d = desired_with(&[
            ("203.0.113.1", 80, &["10.0.0.1:80", "10.0.0.2:80"]),
            ("2001:db8::1", 443, &["[fd00::1]:443"]),
        ]);
        MapSync::resume(&maps).unwrap().apply(&mut maps, &d).unwrap();
        maps.ops.clear();
        // A new process: it knows nothing but what the maps hold.
        let mut sync = MapSync::resume(&maps).unwrap();
        assert_eq!(sync.apply(&mut maps, &d).unwrap(), ApplyStats::default());
        assert!(maps.ops.is_empty(), "{:?}", maps.ops);
        assert_eq!(sync.labels().len(), 2);
    }

    #[test]
    fn shared_backend_gets_one_id() {
        let mut maps = FakeServiceMaps::default();
        let mut sync = MapSync::resume(&maps).unwrap();
        let d = desired_with(&[
            ("203.0.113.1", 80, &["10.0.0.1:80"]),
            ("203.0.113.2", 80, &["10.0.0.1:80"]),
        ]);
        sync.apply(&mut maps, &d).unwrap();
        assert_eq!(maps.contents.backends.len(), 1);
        assert_eq!(
            maps.contents.backends[&1].socket_addr(),
            "10.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
    }

    /// Frontend `i` of 6: its backends `10.0.0.b:80` (draining or not), restricted to a
    /// source range or not.
    type SmallFrontend = (u8, Vec<(u8, bool)>, bool);

    /// A desired state from a small universe of frontends and backends.
    fn desired_of(frontends: &[SmallFrontend]) -> Desired {
        let mut d = Desired::default();
        for (i, backends, restricted) in frontends {
            let mut backends: Vec<Backend> = backends
                .iter()
                .map(|&(b, draining)| Backend {
                    addr: format!("10.0.0.{b}:80").parse().unwrap(),
                    path: BackendPath::Local,
                    draining,
                })
                .collect();
            backends.sort();
            backends.dedup_by(|a, b| a.addr == b.addr);
            if backends.is_empty() {
                continue;
            }
            d.frontends.insert(
                Frontend {
                    addr: format!("203.0.113.{}", i % 3 + 1).parse().unwrap(),
                    port: 80 + u16::from(i / 3),
                    protocol: Protocol::Tcp,
                },
                FrontendTarget {
                    service: "ns/svc".into(),
                    kind: FrontendKind::LoadBalancer,
                    source_ranges: restricted.then(|| vec!["198.51.100.0/24".parse().unwrap()]),
                    backends,
                },
            );
        }
        d
    }

    proptest::proptest! {
        /// Writing only the changed frontends leaves the maps exactly as writing the whole
        /// desired state does (same ids, generations, rows), consistent after every step, with
        /// no backend left that no frontend wants.
        #[test]
        fn changes_alone_write_the_same_maps_as_the_whole_state(
            steps in proptest::collection::vec(
                proptest::collection::vec(
                    (0u8..6, proptest::collection::vec((1u8..6, proptest::bool::ANY), 0..4), proptest::bool::ANY),
                    0..6,
                ),
                1..8,
            )
        ) {
            let (mut whole_maps, mut part_maps) = (FakeServiceMaps::default(), FakeServiceMaps::default());
            let mut whole = MapSync::resume(&whole_maps).unwrap();
            let mut part = MapSync::resume(&part_maps).unwrap();
            let mut before = Desired::default();
            part.apply(&mut part_maps, &before).unwrap();
            for step in steps {
                let after = desired_of(&step);
                whole.apply(&mut whole_maps, &after).unwrap();
                let changes: BTreeMap<Frontend, Option<FrontendTarget>> = before
                    .frontends
                    .keys()
                    .chain(after.frontends.keys())
                    .filter(|f| before.frontends.get(*f) != after.frontends.get(*f))
                    .map(|f| (*f, after.frontends.get(f).cloned()))
                    .collect();
                part.apply_changes(&mut part_maps, &changes).unwrap();
                proptest::prop_assert_eq!(&part_maps.contents, &whole_maps.contents);
                assert_consistent(&part_maps.contents);
                let wanted: BTreeSet<SocketAddr> =
                    after.frontends.values().flat_map(|t| &t.backends).map(|b| b.addr).collect();
                let held: BTreeSet<SocketAddr> = part_maps.contents.backends.values().map(|b| b.socket_addr()).collect();
                proptest::prop_assert_eq!(held, wanted);
                before = after;
            }
        }
    }
}
