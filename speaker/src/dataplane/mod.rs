//! eBPF service map: LoadBalancer `IP:port` and NodePort frontends are looked up in BPF maps
//! by TC programs (C, `speaker/bpf/`) and rewritten to a backend chosen by Maglev hashing.
//!
//! # Use
//! ```no_run
//! # use herald_speaker::dataplane::*;
//! # fn services_from_k8s() -> Vec<std::sync::Arc<ServiceInput>> { Vec::new() }
//! let config = DataplaneConfig {
//!     interfaces: vec!["eth0".into()],
//!     pin_dir: "/sys/fs/bpf/herald/node-a".into(),
//!     node_name: "node-a".into(),
//!     node_addresses: vec!["192.168.1.10".parse().unwrap()],
//!     forwarding: Forwarding::Dsr,
//!     snat_ports: SnatPorts::default(),
//! };
//! // An error here means announce-only mode; its message names the step and interface.
//! let mut dataplane = Dataplane::start(config)?;
//! // On every change of Services, EndpointSlices or ownership (cheap when nothing changed):
//! dataplane.apply_services(&services_from_k8s())?;
//! # Ok::<(), DataplaneError>(())
//! ```
//!
//! # How a packet goes
//! - TC ingress on each configured interface: a packet another node tunnelled here (DSR) is
//!   unwrapped first. A packet to a frontend is counted, matched to its flow in the conntrack
//!   maps (or, for a new flow, to a backend by the flow's Maglev slot), and sent on its flow's
//!   path (below); a new flow to a frontend with `loadBalancerSourceRanges` must come from one
//!   of them (an LPM trie keyed by frontend id and network). The reverse entry for the reply
//!   is written on this forward path, keyed by
//!   the full reply 5-tuple (never by backend address alone, which would also rewrite direct
//!   replies).
//! - Replies get their source rewritten back to the frontend: on TC egress for local backends,
//!   on TC ingress for SNATed flows (which reply to this node, on a SNAT port: only packets to
//!   those ports are looked up in the reverse table on ingress).
//! - Packets whose new source is this node's own address (SNAT, tunnel, a NodePort's reply) are
//!   sent by a FIB lookup and a redirect, not handed to the IP stack (which would drop them on
//!   ingress as martians unless `accept_local` were set); the node must forward (`ip_forward`,
//!   as every Kubernetes node does).
//!
//! # Traffic policy and forwarding
//! - `Local`: only this node's endpoints, no source translation: backends see the client.
//! - `Cluster`: any ready endpoint. A local one is reached like under `Local`. A remote one as
//!   [`Forwarding`] says: `Dsr` tunnels the client's packet unchanged (IPIP / IP6IP6, from this
//!   node's address to the backend's node, for nodes in [`Dataplane::set_tunnel_peers`]); that
//!   node translates it to the pod and replies to the client directly, lowering the SYN-ACK's
//!   MSS by the tunnel's overhead. `Snat` (and `Dsr` towards nodes that take no tunnels)
//!   translates the client's source to this node's address and a port of [`SnatPorts`], taken
//!   round robin per backend, skipping ports a live flow holds (a closed flow holds its port
//!   65 s: the backend's TIME_WAIT).
//!
//! # Flow state
//! `bpf/lib/ct.h`: a flow's forward entry holds its state (SYN, established, closing, UDP),
//! expiry, frontend and backend generation; new flows live in their own smaller map until the
//! client's ACK (or, for UDP, a reply) confirms them. NodePorts reach remote backends with SNAT
//! whatever the forwarding mode: another node cannot answer from this node's address.
//! A flow whose backend id now names another backend generation is hashed again. The
//! [`flows`] module sweeps what is over; the programs ignore expired entries anyway.
//!
//! # Maglev
//! One table of [`maglev::MAGLEV_TABLE_SIZE`] (1021, prime) slots per frontend, built in Rust
//! from the backends' `ip:port` with a fixed seed; the flow hash in C uses a fixed seed too, so
//! every node picks the same backend for a flow. The conntrack map (LRU) keeps established
//! flows on their backend while the table changes; a flow whose backend was removed is hashed
//! again.
//!
//! # Pinning and restart
//! Maps are pinned by name under `<pin_dir>/v3/`, TCX links under `<pin_dir>/links/`. A new
//! speaker reuses the maps (conntrack survives, so established flows keep going), reads back
//! what they hold to continue incremental updates ([`maps::MapSync::resume`]), and atomically
//! replaces the program behind each pinned link. Maps of the older layouts `v1` and `v2` are
//! removed, so an upgrade across layouts loses the flow state: a flow to a local or tunnelled
//! backend is picked up again by its Maglev slot, a SNATed flow breaks. Links of interfaces no
//! longer configured are detached. [`Dataplane::shutdown`] and [`remove_pinned`] detach
//! everything and remove the pins. A thread of the [`Dataplane`] writes a heartbeat into
//! `herald_config` every second; two minutes after the last one the programs stop translating,
//! so a crashed speaker's state forwards only until it restarts or for two minutes. In the lab
//! every node shares one bpffs, so `pin_dir` must be unique per node. Kernels before 6.6 have
//! no TCX: programs are attached through netlink and detached when the process exits cleanly.
//!
//! # Limits (known gaps)
//! - Only packets arriving on the configured interfaces are translated: the node itself and
//!   its pods reaching an LB IP or NodePort are not served (kube-proxy's job for cluster IPs).
//! - IPv6 packets with extension headers and IPv4 fragments pass untranslated (a datagram is
//!   never half translated); ICMP errors about a translated flow (e.g. PMTU) are not
//!   translated back; a tunnelled UDP datagram that no longer fits the MTU is dropped.
//! - Decapsulation trusts any IPIP/IP6IP6 packet whose inner destination is a frontend.
//! - Two frontends with the same backends (two LB IPs, or an LB IP and a NodePort) reached by
//!   one client from the same source port at the same time look like one connection to a
//!   backend without SNAT (the same holds for kube-proxy); the second flow's reverse entry
//!   replaces the first's.
//! - Kernels before 6.6 (no TCX): links cannot be pinned, so a crashed speaker leaves its
//!   netlink filter attached and a restart adds a second one.
//!
//! # Threads and network namespaces
//! Interfaces are looked up in the network namespace of the calling thread: call
//! [`Dataplane::start`] and [`Dataplane::attach_interfaces`] from the node's namespace.

pub mod desired;
pub mod flows;
pub mod maglev;
pub mod maps;
mod metrics;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfError, EbpfLoader};
use herald_config::process::error_chain;
use prometheus_client::registry::Registry;
use thiserror::Error;

#[cfg(any(test, feature = "testing"))]
pub use desired::desired;
pub use desired::{
    Backend, BackendPath, Desired, DesiredChanges, DesiredState, EndpointInput, EndpointPort, Forwarding, Frontend,
    FrontendKind, FrontendTarget, NodeInput, Protocol, ServiceInput, ServicePort, TrafficPolicy,
};
pub use flows::SweepStats;
pub use maps::{ApplyStats, MapsError};

use aya::maps::{Array, MapData};
use flows::FlowMaps;
use maps::{AyaServiceMaps, ConfigValue, MapSync, ServiceMaps};

/// The compiled programs (built by `speaker/build.rs` from `bpf/herald_lb.c`).
static HERALD_LB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/herald_lb.o"));

/// Version of the map layout: the directory under the pin directory that holds the maps. Pins
/// of another layout are never reused.
pub const MAP_LAYOUT_DIR: &str = "v3";
/// Map layouts an earlier speaker may have left: removed at start (their programs are gone).
const OLD_MAP_LAYOUT_DIRS: [&str; 2] = ["v1", "v2"];
const LINKS_DIR: &str = "links";
const INGRESS_PROGRAM: &str = "herald_ingress";
const EGRESS_PROGRAM: &str = "herald_egress";
/// Run (never attached) by the sweep to remove the entries it found over (bpf/lib/sweep.h).
const SWEEP_PROGRAM: &str = "herald_sweep";
/// How often the speaker tells the programs it is alive (they stop translating two minutes
/// after the last heartbeat: `HERALD_OWNER_GRACE_NS` in bpf/lib/common.h).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How often flows that are over are removed from the conntrack maps.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Source ports of SNATed flows: `min..min + count`. Kept outside the node's own ephemeral
/// ports (`net.ipv4.ip_local_port_range`), so a translated flow never meets a local socket.
/// Replies are translated only on these ports: a speaker restarted with another range breaks
/// the SNATed flows that hold a port outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatPorts {
    pub min: u16,
    pub count: u16,
}

impl Default for SnatPorts {
    /// 10000–29999: below Linux's ephemeral range (32768–60999) and Kubernetes' NodePort range
    /// (30000–32767).
    fn default() -> Self {
        SnatPorts {
            min: 10000,
            count: 20000,
        }
    }
}

impl std::str::FromStr for SnatPorts {
    type Err = String;
    /// `FIRST-LAST`, e.g. `10000-29999`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port range FIRST-LAST (e.g. 10000-29999) with 1024 <= FIRST <= LAST");
        let (first, last) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first < 1024 || last < first || u32::from(last) - u32::from(first) + 1 > u32::from(u16::MAX) {
            return Err(bad());
        }
        Ok(SnatPorts {
            min: first,
            count: last - first + 1,
        })
    }
}

impl std::fmt::Display for SnatPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.last())
    }
}

impl SnatPorts {
    pub fn last(&self) -> u16 {
        self.min + (self.count - 1)
    }

    /// Whether the range shares a port with `ip_local_port_range` text ("FIRST\tLAST").
    pub fn overlaps_local_range(&self, ip_local_port_range: &str) -> Option<(u16, u16)> {
        let mut fields = ip_local_port_range.split_whitespace().map(str::parse::<u16>);
        let (Some(Ok(lo)), Some(Ok(hi))) = (fields.next(), fields.next()) else {
            return None;
        };
        (self.min <= hi && lo <= self.last()).then_some((lo, hi))
    }
}

/// What the dataplane needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Interfaces that carry service traffic (in and out), in the calling thread's netns.
    pub interfaces: Vec<String>,
    /// bpffs directory for this node's pins, e.g. `/sys/fs/bpf/herald/<node name>`.
    pub pin_dir: PathBuf,
    /// This node's name, as in `EndpointSlice.endpoints[].nodeName`.
    pub node_name: String,
    /// This node's addresses: NodePort frontends, SNAT and tunnel sources.
    pub node_addresses: Vec<IpAddr>,
    /// How backends on other nodes are reached.
    pub forwarding: Forwarding,
    pub snat_ports: SnatPorts,
}

/// Which TC hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
    fn program(self) -> &'static str {
        match self {
            Direction::Ingress => INGRESS_PROGRAM,
            Direction::Egress => EGRESS_PROGRAM,
        }
    }
    fn tc(self) -> TcAttachType {
        match self {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }
}

/// Why the dataplane could not start or change; each says what failed and on what.
#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("creating the pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object (maps pinned under {pin_dir})")]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: Box<EbpfError>,
    },
    #[error("the eBPF object has no {kind} named {name}")]
    Missing { kind: &'static str, name: &'static str },
    #[error("the kernel verifier rejected program {program}: {io_error}\nverifier log:\n{log}")]
    Verifier {
        program: &'static str,
        io_error: std::io::Error,
        log: String,
    },
    #[error("loading program {program}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching {program} to TC {direction} of interface {interface}")]
    Attach {
        program: &'static str,
        interface: String,
        direction: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("pinning the TC {direction} link of interface {interface} at {path}")]
    PinLink {
        interface: String,
        direction: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("detaching the link pinned at {path}")]
    Detach {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("removing {path} from the pin directory")]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "SNAT ports {snat} overlap this node's ephemeral ports {local_first}-{local_last} \
         (net.ipv4.ip_local_port_range): pick a range outside it with --snat-ports"
    )]
    SnatPorts {
        snat: SnatPorts,
        local_first: u16,
        local_last: u16,
    },
    #[error("writing the dataplane's settings map")]
    Config(#[source] MapsError),
    #[error("updating the service maps")]
    Maps(#[from] MapsError),
}

/// The state shared with the metrics collector.
pub(crate) struct Shared {
    pub(crate) maps: AyaServiceMaps,
    pub(crate) sync: MapSync,
}

/// The conntrack maps and what the last sweep found, shared with the keeper thread and metrics.
pub(crate) struct Flows {
    pub(crate) maps: FlowMaps,
    pub(crate) last_sweep: SweepStats,
    pub(crate) removed_total: u64,
}

/// A loaded and attached service map.
pub struct Dataplane {
    ebpf: Ebpf,
    shared: Arc<Mutex<Shared>>,
    flows: Arc<Mutex<Flows>>,
    config: DataplaneConfig,
    tunnel_peers: BTreeMap<String, Vec<IpAddr>>,
    dead_nodes: BTreeSet<String>,
    /// The Services last given to [`Dataplane::apply_services`], as frontends.
    desired: DesiredState,
    /// The maps may differ from `desired` in more than its next changes (at start, after a
    /// failed write, after [`Dataplane::apply`]): the next apply writes the whole state.
    resync: bool,
    attached: BTreeSet<(String, Direction)>,
    /// Stops the heartbeat and sweep thread when dropped.
    _keeper: Keeper,
}

/// The thread that writes the heartbeat every second and sweeps the conntrack maps.
struct Keeper {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the dataplane's heartbeat thread had panicked");
        }
    }
}

impl Keeper {
    fn spawn(mut config_map: Array<MapData, ConfigValue>, value: ConfigValue, flows: Arc<Mutex<Flows>>) -> Keeper {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("herald-dataplane-keeper".into())
            .spawn(move || {
                let mut last_sweep = Instant::now();
                loop {
                    match stopped.recv_timeout(HEARTBEAT_EVERY) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let heartbeat = ConfigValue {
                        heartbeat_ns: flows::monotonic_ns(),
                        ..value
                    };
                    if let Err(e) = config_map.set(0, heartbeat, 0) {
                        tracing::warn!(error = error_chain(&e), "cannot write the dataplane heartbeat; its programs stop translating two minutes after the last one");
                    }
                    if last_sweep.elapsed() >= SWEEP_EVERY {
                        last_sweep = Instant::now();
                        let mut guard = flows.lock().unwrap_or_else(|p| p.into_inner());
                        match guard.maps.sweep(flows::monotonic_ns()) {
                            Ok(stats) => {
                                guard.removed_total += stats.removed as u64;
                                guard.last_sweep = stats;
                                tracing::debug!(?stats, took = ?last_sweep.elapsed(), "conntrack swept");
                            }
                            Err(e) => tracing::warn!(error = error_chain(&e), "conntrack sweep failed"),
                        }
                    }
                }
            })
            .expect("spawning a thread");
        Keeper {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("config", &self.config)
            .field("attached", &self.attached)
            .finish()
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock leaves the maps as consistent as any failed apply.
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Dataplane {
    /// Loads the programs and maps (reusing pinned maps under `config.pin_dir`), resumes from
    /// what the maps hold, and attaches to `config.interfaces`. Fails without eBPF support or
    /// privileges (CAP_BPF + CAP_NET_ADMIN) with an error naming the step and interface.
    pub fn start(config: DataplaneConfig) -> Result<Dataplane, DataplaneError> {
        let map_dir = config.pin_dir.join(MAP_LAYOUT_DIR);
        let links_dir = config.pin_dir.join(LINKS_DIR);
        for dir in [&map_dir, &links_dir] {
            std::fs::create_dir_all(dir).map_err(|source| DataplaneError::PinDir {
                path: dir.clone(),
                source,
            })?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&map_dir)
            .load(HERALD_LB_OBJECT)
            .map_err(|source| DataplaneError::Load {
                pin_dir: map_dir.clone(),
                source: Box::new(source),
            })?;
        for old in OLD_MAP_LAYOUT_DIRS {
            if let Err(error) = remove_maps(&config.pin_dir.join(old)) {
                tracing::warn!(
                    error = herald_config::process::error_chain(&error),
                    "cannot remove the maps of an older speaker version; they hold no traffic but stay pinned"
                );
            }
        }
        if let Ok(local) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            && let Some((local_first, local_last)) = config.snat_ports.overlaps_local_range(&local)
        {
            return Err(DataplaneError::SnatPorts {
                snat: config.snat_ports,
                local_first,
                local_last,
            });
        }
        for name in [INGRESS_PROGRAM, EGRESS_PROGRAM, SWEEP_PROGRAM] {
            program_mut(&mut ebpf, name)?.load().map_err(|e| load_error(name, e))?;
        }
        let sweeper = program_mut(&mut ebpf, SWEEP_PROGRAM)?
            .fd()
            .and_then(|fd| {
                fd.try_clone()
                    .map_err(|io_error| ProgramError::SyscallError(aya::sys::SyscallError { call: "dup", io_error }))
            })
            .map_err(|e| load_error(SWEEP_PROGRAM, e))?;
        // The settings and a first heartbeat go in before any program is attached.
        let mut config_map: Array<MapData, ConfigValue> = take_map(&mut ebpf, "herald_config")?;
        let settings = ConfigValue {
            heartbeat_ns: 0,
            snat_port_min: config.snat_ports.min,
            snat_port_count: config.snat_ports.count,
            pad: 0,
        };
        config_map
            .set(
                0,
                ConfigValue {
                    heartbeat_ns: flows::monotonic_ns(),
                    ..settings
                },
                0,
            )
            .map_err(|source| {
                DataplaneError::Config(MapsError {
                    map: "herald_config",
                    op: "update",
                    source,
                })
            })?;
        let flows = Arc::new(Mutex::new(Flows {
            maps: FlowMaps {
                established: take_map(&mut ebpf, "herald_ct_forward")?,
                new: take_map(&mut ebpf, "herald_ct_new")?,
                reverse: take_map(&mut ebpf, "herald_ct_reverse")?,
                stats: take_map(&mut ebpf, "herald_stats")?,
                sweeper,
            },
            last_sweep: SweepStats::default(),
            removed_total: 0,
        }));
        let maps = AyaServiceMaps {
            frontends: take_map(&mut ebpf, "herald_frontends")?,
            backends: take_map(&mut ebpf, "herald_backends")?,
            reply_ports: take_map(&mut ebpf, "herald_reply_ports")?,
            rows: take_map(&mut ebpf, "herald_maglev")?,
            counters: take_map(&mut ebpf, "herald_counters")?,
            source_ranges: take_map(&mut ebpf, "herald_source_ranges")?,
        };
        let sync = MapSync::resume(&maps)?;
        let keeper = Keeper::spawn(config_map, settings, flows.clone());
        let mut dataplane = Dataplane {
            ebpf,
            shared: Arc::new(Mutex::new(Shared { maps, sync })),
            flows,
            config: config.clone(),
            tunnel_peers: BTreeMap::new(),
            dead_nodes: BTreeSet::new(),
            desired: DesiredState::default(),
            resync: true,
            attached: BTreeSet::new(),
            _keeper: keeper,
        };
        dataplane.attach_interfaces(&config.interfaces)?;
        Ok(dataplane)
    }

    /// The configuration it runs with (interfaces as last attached).
    pub fn config(&self) -> &DataplaneConfig {
        &self.config
    }

    /// Makes the maps equal `desired`, writing only what changed.
    pub fn apply(&mut self, desired: &Desired) -> Result<ApplyStats, DataplaneError> {
        // What the maps hold is no longer what the Services last given said.
        self.resync = true;
        let mut guard = lock(&self.shared);
        let Shared { maps, sync } = &mut *guard;
        Ok(sync.apply(maps, desired)?)
    }

    /// This node as [`desired`] wants it.
    pub fn node(&self) -> NodeInput {
        NodeInput {
            name: self.config.node_name.clone(),
            addresses: self.config.node_addresses.clone(),
            forwarding: self.config.forwarding,
            tunnel_peers: self.tunnel_peers.clone(),
            dead_nodes: self.dead_nodes.clone(),
        }
    }

    /// Makes the maps forward `services` (every Service, each time): derives again and writes
    /// only the Services that changed since the last call, unless the node changed (then
    /// everything is derived again) or the maps need the whole state written.
    /// Services unchanged since the last call are recognised by pointer: a call in which
    /// nothing changed derives and writes nothing.
    pub fn apply_services(&mut self, services: &[Arc<ServiceInput>]) -> Result<ApplyStats, DataplaneError> {
        let changes = self.desired.update(services, &self.node());
        let mut guard = lock(&self.shared);
        let Shared { maps, sync } = &mut *guard;
        let result = if self.resync {
            sync.apply(maps, &self.desired.desired())
        } else {
            sync.apply_changes(maps, &changes)
        };
        self.resync = result.is_err();
        Ok(result?)
    }

    /// Updates the node's addresses (NodePort frontends, SNAT source) for the next
    /// [`Dataplane::apply_services`].
    pub fn set_node_addresses(&mut self, addresses: Vec<IpAddr>) {
        self.config.node_addresses = addresses;
    }

    /// Sets the other nodes that take tunnelled (DSR) traffic, for the next
    /// [`Dataplane::apply_services`]; backends on other nodes are reached with SNAT.
    pub fn set_tunnel_peers(&mut self, peers: BTreeMap<String, Vec<IpAddr>>) {
        self.tunnel_peers = peers;
    }

    /// Sets the nodes whose speaker was declared dead, for the next
    /// [`Dataplane::apply_services`]: their backends take no new flows.
    pub fn set_dead_nodes(&mut self, nodes: BTreeSet<String>) {
        self.dead_nodes = nodes;
    }

    /// Removes flows that are over now instead of at the next periodic sweep.
    pub fn sweep_flows(&self) -> Result<SweepStats, DataplaneError> {
        self.sweep_at(flows::monotonic_ns())
    }

    /// A sweep that reads the tables as if it were `now` (CLOCK_MONOTONIC ns); the programs
    /// still judge each removal by their own clock. A `now` ahead of it makes the sweep pick
    /// entries that are live: what a sweep meets when flows take tuples while it runs.
    #[cfg(any(test, feature = "testing"))]
    pub fn sweep_flows_read_at(&self, now: u64) -> Result<SweepStats, DataplaneError> {
        self.sweep_at(now)
    }

    fn sweep_at(&self, now: u64) -> Result<SweepStats, DataplaneError> {
        let mut guard = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        let stats = guard.maps.sweep(now)?;
        guard.removed_total += stats.removed as u64;
        guard.last_sweep = stats;
        Ok(stats)
    }

    /// Flow events and drops counted by the programs, by name ([`flows::STAT_NAMES`]).
    pub fn flow_events(&self) -> BTreeMap<&'static str, u64> {
        let guard = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        flows::STAT_NAMES
            .iter()
            .map(|(_, name)| *name)
            .zip(guard.maps.stats())
            .collect()
    }

    /// Attaches to every interface in `interfaces` not yet attached (replacing a program a
    /// previous speaker left) and detaches from every other interface it or a previous speaker
    /// attached to. Call from the node's network namespace.
    pub fn attach_interfaces(&mut self, interfaces: &[String]) -> Result<(), DataplaneError> {
        let links_dir = self.config.pin_dir.join(LINKS_DIR);
        let wanted: BTreeSet<(String, Direction)> = interfaces
            .iter()
            .flat_map(|i| [(i.clone(), Direction::Ingress), (i.clone(), Direction::Egress)])
            .collect();
        // Pins left by a previous speaker for interfaces no longer wanted.
        if let Ok(entries) = std::fs::read_dir(&links_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let keep = wanted.iter().any(|(i, d)| link_pin_name(i, *d) == name);
                if !keep {
                    unpin_link(&entry.path())?;
                }
            }
        }
        self.attached.retain(|a| wanted.contains(a));
        for (interface, direction) in &wanted {
            if self.attached.contains(&(interface.clone(), *direction)) {
                continue;
            }
            let pin = links_dir.join(link_pin_name(interface, *direction));
            self.attach_one(interface, *direction, &pin)?;
            self.attached.insert((interface.clone(), *direction));
        }
        self.config.interfaces = interfaces.to_vec();
        Ok(())
    }

    fn attach_one(&mut self, interface: &str, direction: Direction, pin: &Path) -> Result<(), DataplaneError> {
        let program_name = direction.program();
        let program = program_mut(&mut self.ebpf, program_name)?;
        let attach_err = |source| DataplaneError::Attach {
            program: program_name,
            interface: interface.to_owned(),
            direction: direction.as_str(),
            source: Box::new(source),
        };
        if !tcx_supported() {
            // Netlink TC: the filter stays in the program's link set until the process exits.
            // The clsact qdisc is usually there already; without it the attach below fails
            // with its own error.
            if let Err(error) = aya::programs::tc::qdisc_add_clsact(interface) {
                tracing::debug!(%interface, %error, "adding the clsact qdisc");
            }
            program.attach(interface, direction.tc()).map_err(attach_err)?;
            return Ok(());
        }
        let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::PinLink {
            interface: interface.to_owned(),
            direction: direction.as_str(),
            path: pin.to_owned(),
            source,
        };
        if pin.exists() {
            // A previous speaker's link: swap our program in atomically; the pin stays.
            let old = PinnedLink::from_pin(pin).map_err(|e| pin_err(e.into()))?;
            let link = SchedClassifierLink::try_from(FdLink::from(old)).map_err(|e| pin_err(e.into()))?;
            let id = program.attach_to_link(link).map_err(attach_err)?;
            program.take_link(id).map_err(attach_err)?;
        } else {
            let id = program
                .attach_with_options(
                    interface,
                    direction.tc(),
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(attach_err)?;
            let link = program.take_link(id).map_err(attach_err)?;
            let fd_link = FdLink::try_from(link).map_err(|e| pin_err(e.into()))?;
            fd_link.pin(pin).map_err(|e| pin_err(e.into()))?;
        }
        Ok(())
    }

    /// Registers per-frontend packet and byte counters (read from the per-CPU counter map at
    /// each scrape): `herald_dataplane_packets_total`, `herald_dataplane_bytes_total` with labels
    /// `service`, `frontend`, `kind`; and `herald_dataplane_frontends`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(metrics::CounterCollector::new(self.shared.clone())));
        registry.register_collector(Box::new(metrics::FlowCollector::new(self.flows.clone())));
    }

    /// Packets and bytes seen by each frontend since it was created.
    pub fn counters(&self) -> Result<Vec<(Frontend, String, maps::Counters)>, DataplaneError> {
        let guard = lock(&self.shared);
        let mut out = Vec::new();
        for (id, info) in guard.sync.labels() {
            out.push((info.frontend, info.target.service.clone(), guard.maps.counters(*id)?));
        }
        Ok(out)
    }

    /// Detaches from every interface and removes the pinned links and maps: nothing of Herald
    /// stays in the kernel. Established flows through this node stop being translated.
    pub fn shutdown(self) -> Result<(), DataplaneError> {
        let pin_dir = self.config.pin_dir.clone();
        drop(self);
        remove_pinned(&pin_dir)
    }
}

/// Detaches and removes whatever a speaker pinned under `pin_dir` (links and maps of every
/// layout): for a speaker that will not run the dataplane, so nothing it left keeps forwarding.
/// Nothing pinned is fine. Everything is tried; the first thing that could not be removed is
/// the error (a pin left behind keeps its map, or its program attached).
pub fn remove_pinned(pin_dir: &Path) -> Result<(), DataplaneError> {
    let links_dir = pin_dir.join(LINKS_DIR);
    let mut outcome = Ok(());
    match entries_of(&links_dir) {
        Ok(links) => {
            for link in links {
                first_error(&mut outcome, unpin_link(&link));
            }
        }
        Err(e) => first_error(&mut outcome, Err(e)),
    }
    first_error(&mut outcome, remove_if_present(&links_dir, |p| std::fs::remove_dir(p)));
    for layout in OLD_MAP_LAYOUT_DIRS.iter().chain([&MAP_LAYOUT_DIR]) {
        first_error(&mut outcome, remove_maps(&pin_dir.join(layout)));
    }
    first_error(&mut outcome, remove_if_present(pin_dir, |p| std::fs::remove_dir(p)));
    outcome
}

/// Keeps the first error in `outcome`; later ones are logged.
fn first_error(outcome: &mut Result<(), DataplaneError>, result: Result<(), DataplaneError>) {
    if let Err(error) = result {
        if outcome.is_ok() {
            *outcome = Err(error);
        } else {
            tracing::warn!(
                error = herald_config::process::error_chain(&error),
                "also could not remove"
            );
        }
    }
}

/// Removes a map layout directory's pins (the maps go when no program or fd holds them); tries
/// every pin and returns the first failure.
fn remove_maps(map_dir: &Path) -> Result<(), DataplaneError> {
    let mut outcome = Ok(());
    for pin in entries_of(map_dir)? {
        first_error(&mut outcome, remove_if_present(&pin, |p| std::fs::remove_file(p)));
    }
    first_error(&mut outcome, remove_if_present(map_dir, |p| std::fs::remove_dir(p)));
    outcome
}

/// The paths in `dir`; none if it does not exist.
fn entries_of(dir: &Path) -> Result<Vec<PathBuf>, DataplaneError> {
    let unpin_err = |source| DataplaneError::Unpin {
        path: dir.to_owned(),
        source,
    };
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(unpin_err),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(unpin_err(e)),
    }
}

/// Removes `path` with `remove`; already gone is fine.
fn remove_if_present(path: &Path, remove: fn(&Path) -> std::io::Result<()>) -> Result<(), DataplaneError> {
    match remove(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataplaneError::Unpin {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// bpffs refuses names with dots (reserved), and interface names may contain them (VLANs) but
/// never a colon: so dots become colons and the hook follows a colon.
fn link_pin_name(interface: &str, direction: Direction) -> String {
    format!("{}:{}", interface.replace('.', ":"), direction.as_str())
}

fn unpin_link(path: &Path) -> Result<(), DataplaneError> {
    let detach_err = |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Detach {
        path: path.to_owned(),
        source,
    };
    match PinnedLink::from_pin(path) {
        // Removing the pin and closing the last fd detaches the program.
        Ok(link) => link.unpin().map(drop).map_err(|e| detach_err(e.into())),
        Err(_) => std::fs::remove_file(path).map_err(|e| detach_err(e.into())),
    }
}

fn tcx_supported() -> bool {
    aya::util::KernelVersion::current()
        .map(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
        .unwrap_or(false)
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, DataplaneError> {
    let program = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::Missing { kind: "program", name })?;
    program
        .try_into()
        .map_err(|source: ProgramError| DataplaneError::Program {
            program: name,
            source: Box::new(source),
        })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(|source| {
        DataplaneError::Maps(MapsError {
            map: name,
            op: "open",
            source,
        })
    })
}

fn load_error(program: &'static str, error: ProgramError) -> DataplaneError {
    match error {
        ProgramError::LoadError { io_error, verifier_log } => DataplaneError::Verifier {
            program,
            io_error,
            log: verifier_log.to_string(),
        },
        source => DataplaneError::Program {
            program,
            source: Box::new(source),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{DataplaneError, SnatPorts, remove_pinned};

    /// What a speaker pinned, on a plain directory: removing it leaves nothing, twice is fine,
    /// and an entry that cannot be removed is named instead of passed over (the cleanup
    /// command said "removed" while pins stayed).
    #[test]
    fn removing_the_pins_leaves_nothing_or_names_what_it_could_not_remove() {
        let dir = std::env::temp_dir().join(format!("herald-pins-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        for layout in ["v1", "v2", "v3", "links"] {
            std::fs::create_dir_all(dir.join(layout)).unwrap();
        }
        for layout in ["v1", "v2", "v3"] {
            std::fs::write(dir.join(layout).join("herald_services"), b"").unwrap();
        }
        remove_pinned(&dir).unwrap();
        assert!(!dir.exists());
        remove_pinned(&dir).expect("nothing pinned is fine");

        std::fs::create_dir_all(dir.join("v1/not-a-pin")).unwrap();
        std::fs::create_dir_all(dir.join("v3")).unwrap();
        std::fs::write(dir.join("v3/herald_services"), b"").unwrap();
        let error = remove_pinned(&dir).expect_err("a directory among the map pins");
        let named = matches!(&error, DataplaneError::Unpin { path, .. } if path.ends_with("v1/not-a-pin"));
        let rest_removed = !dir.join("v3").exists();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(named, "{error:?}");
        assert!(
            rest_removed,
            "one bad entry stopped the removal of the current layout's pins"
        );
    }

    #[test]
    fn snat_ports_parse_and_refuse_with_the_expected_form() {
        let p: SnatPorts = "10000-29999".parse().unwrap();
        assert_eq!((p.min, p.count, p.last()), (10000, 20000, 29999));
        assert_eq!(p.to_string(), "10000-29999");
        assert_eq!(p, SnatPorts::default());
        for bad in ["", "10000", "29999-10000", "80-90", "10000-70000", "a-b"] {
            let err = bad.parse::<SnatPorts>().unwrap_err();
            assert!(err.contains("FIRST-LAST"), "{bad}: {err}");
        }
    }

    #[test]
    fn snat_ports_must_stay_out_of_the_ephemeral_range() {
        let p = SnatPorts::default();
        assert_eq!(p.overlaps_local_range("32768\t60999\n"), None);
        assert_eq!(p.overlaps_local_range("20000 40000"), Some((20000, 40000)));
        assert_eq!(p.overlaps_local_range("1024 10000"), Some((1024, 10000)));
        assert_eq!(p.overlaps_local_range("garbage"), None);
    }
}
