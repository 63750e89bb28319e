//! eBPF service map: LoadBalancer `IP:port` and NodePort frontends are looked up in BPF maps
//! by TC programs (C, `speaker/bpf/`) and rewritten to a backend chosen by Maglev hashing.
//!
//! # Use
//! ```no_run
//! # use herald_speaker::dataplane::*;
//! # fn services_from_k8s() -> Vec<ServiceInput> { Vec::new() }
//! let config = DataplaneConfig {
//!     interfaces: vec!["eth0".into()],
//!     pin_dir: "/sys/fs/bpf/herald/node-a".into(),
//!     node_name: "node-a".into(),
//!     node_addresses: vec!["192.168.1.10".parse().unwrap()],
//! };
//! // An error here means announce-only mode; its message names the step and interface.
//! let mut dataplane = Dataplane::start(config)?;
//! // On every change of Services, EndpointSlices or ownership (cheap when nothing changed):
//! dataplane.apply_services(&services_from_k8s())?;
//! # Ok::<(), DataplaneError>(())
//! ```
//!
//! # How a packet goes
//! - TC ingress on each configured interface: a packet to a frontend is counted, matched to its
//!   flow in the forward conntrack map (or, for a new flow, to a backend by the flow's Maglev
//!   slot), and its destination rewritten to the backend; the kernel then routes it. The
//!   reverse entry for the reply is written on this forward path, keyed by the full reply
//!   5-tuple (never by backend address alone, which would also rewrite direct replies).
//! - Replies get their source rewritten back to the frontend: on TC egress for local backends,
//!   on TC ingress for remote backends (which reply to the node, see SNAT).
//!
//! # Traffic policy
//! - `Local`: only this node's endpoints, no source translation: backends see the client.
//! - `Cluster`: any ready endpoint. A local one is reached like under `Local` (client address
//!   preserved). A remote one is reached with SNAT to this node's address of the same family, so
//!   its reply returns through this node for the reverse translation (the client would drop a
//!   reply from the backend's address). The SNAT source port is the client's port, or when
//!   that is taken towards the same backend, one of 32768–61000 derived from the flow hash.
//!   This is what kube-proxy does for external traffic to remote endpoints, minus masquerading
//!   traffic to local ones. The packet then carries a local source address on ingress, so
//!   [`Dataplane::attach_interfaces`] sets `net.ipv4.conf.<interface>.accept_local=1`; the node
//!   must forward (`ip_forward`, as every Kubernetes node does).
//!
//! # Maglev
//! One table of [`maglev::MAGLEV_TABLE_SIZE`] (1021, prime) slots per frontend, built in Rust
//! from the backends' `ip:port` with a fixed seed; the flow hash in C uses a fixed seed too, so
//! every node picks the same backend for a flow. The conntrack map (LRU) keeps established
//! flows on their backend while the table changes; a flow whose backend was removed is hashed
//! again.
//!
//! # Pinning and restart
//! Maps are pinned by name under `<pin_dir>/v1/`, TCX links under `<pin_dir>/links/`. A new
//! speaker reuses the maps (conntrack survives, so established flows keep going), reads back
//! what they hold to continue incremental updates ([`maps::MapSync::resume`]), and atomically
//! replaces the program behind each pinned link. Links of interfaces no longer configured are
//! detached. [`Dataplane::shutdown`] detaches everything and removes the pins; a crashed
//! speaker leaves its last state forwarding until it restarts. In the lab every node shares one
//! bpffs, so `pin_dir` must be unique per node. Kernels before 6.6 have no TCX: programs are
//! attached through netlink and detached when the process exits cleanly.
//!
//! # Limits (known gaps)
//! - Only packets arriving on the configured interfaces are translated: the node itself and
//!   its pods reaching an LB IP or NodePort are not served (kube-proxy's job for cluster IPs).
//! - IPv6 packets with extension headers and non-first IPv4 fragments pass untranslated; ICMP
//!   errors about a translated flow (e.g. PMTU) are not translated back.
//! - Two frontends with the same backends (two LB IPs, or an LB IP and a NodePort) reached by
//!   one client from the same source port at the same time look like one connection to a
//!   backend without SNAT (the same holds for kube-proxy); the second flow's reverse entry
//!   replaces the first's.
//! - Conntrack entries expire by LRU only (262,144 flows per direction, per-CPU lists), not on
//!   FIN/RST.
//! - Kernels before 6.6 (no TCX): links cannot be pinned, so a crashed speaker leaves its
//!   netlink filter attached and a restart adds a second one.
//!
//! # Threads and network namespaces
//! Interfaces are looked up in the network namespace of the calling thread: call
//! [`Dataplane::start`] and [`Dataplane::attach_interfaces`] from the node's namespace.

pub mod desired;
pub mod maglev;
pub mod maps;
mod metrics;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfError, EbpfLoader};
use prometheus_client::registry::Registry;
use thiserror::Error;

pub use desired::{
    Backend, Desired, EndpointInput, EndpointPort, Frontend, FrontendKind, FrontendTarget, NodeInput, Protocol,
    ServiceInput, ServicePort, TrafficPolicy, desired,
};
pub use maps::{ApplyStats, MapsError};

use maps::{AyaServiceMaps, MapSync, ServiceMaps};

/// The compiled programs (built by `speaker/build.rs` from `bpf/herald_lb.c`).
static HERALD_LB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/herald_lb.o"));

/// Version of the map layout; pins of another layout are never reused.
const MAP_LAYOUT_DIR: &str = "v1";
const LINKS_DIR: &str = "links";
const INGRESS_PROGRAM: &str = "herald_ingress";
const EGRESS_PROGRAM: &str = "herald_egress";
const MAP_NAMES: [&str; 6] = [
    "herald_frontends",
    "herald_backends",
    "herald_maglev",
    "herald_counters",
    "herald_ct_forward",
    "herald_ct_reverse",
];

/// What the dataplane needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Interfaces that carry service traffic (in and out), in the calling thread's netns.
    pub interfaces: Vec<String>,
    /// bpffs directory for this node's pins, e.g. `/sys/fs/bpf/herald/<node name>`.
    pub pin_dir: PathBuf,
    /// This node's name, as in `EndpointSlice.endpoints[].nodeName`.
    pub node_name: String,
    /// This node's addresses: NodePort frontends and SNAT sources.
    pub node_addresses: Vec<IpAddr>,
}

impl DataplaneConfig {
    /// The node as [`desired`] wants it.
    pub fn node(&self) -> NodeInput {
        NodeInput {
            name: self.node_name.clone(),
            addresses: self.node_addresses.clone(),
        }
    }
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
    #[error("creating the pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object (maps pinned under {pin_dir}): {source}")]
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
    #[error("loading program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching {program} to TC {direction} of interface {interface}: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        direction: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("pinning the TC {direction} link of interface {interface} at {path}: {message}")]
    PinLink {
        interface: String,
        direction: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("detaching the link pinned at {path}: {message}")]
    Detach { path: PathBuf, message: String },
    #[error("setting {path} (needed for SNAT to remote backends): {source}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("updating the service maps: {0}")]
    Maps(#[from] MapsError),
}

/// The state shared with the metrics collector.
pub(crate) struct Shared {
    pub(crate) maps: AyaServiceMaps,
    pub(crate) sync: MapSync,
}

/// A loaded and attached service map.
pub struct Dataplane {
    ebpf: Ebpf,
    shared: Arc<Mutex<Shared>>,
    config: DataplaneConfig,
    attached: BTreeSet<(String, Direction)>,
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
        for name in [INGRESS_PROGRAM, EGRESS_PROGRAM] {
            program_mut(&mut ebpf, name)?.load().map_err(|e| load_error(name, e))?;
        }
        let maps = AyaServiceMaps {
            frontends: take_map(&mut ebpf, "herald_frontends")?,
            backends: take_map(&mut ebpf, "herald_backends")?,
            rows: take_map(&mut ebpf, "herald_maglev")?,
            counters: take_map(&mut ebpf, "herald_counters")?,
        };
        let sync = MapSync::resume(&maps)?;
        let mut dataplane = Dataplane {
            ebpf,
            shared: Arc::new(Mutex::new(Shared { maps, sync })),
            config: config.clone(),
            attached: BTreeSet::new(),
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
        let mut guard = lock(&self.shared);
        let Shared { maps, sync } = &mut *guard;
        Ok(sync.apply(maps, desired)?)
    }

    /// [`desired`] for this node, then [`Dataplane::apply`].
    pub fn apply_services(&mut self, services: &[ServiceInput]) -> Result<ApplyStats, DataplaneError> {
        let desired = desired(services, &self.config.node());
        self.apply(&desired)
    }

    /// Updates the node's addresses (NodePort frontends, SNAT source) for the next
    /// [`Dataplane::apply_services`].
    pub fn set_node_addresses(&mut self, addresses: Vec<IpAddr>) {
        self.config.node_addresses = addresses;
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
            if *direction == Direction::Ingress {
                accept_local_source(interface)?;
            }
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
            let _ = aya::programs::tc::qdisc_add_clsact(interface);
            program.attach(interface, direction.tc()).map_err(attach_err)?;
            return Ok(());
        }
        let pin_err = |message: String| DataplaneError::PinLink {
            interface: interface.to_owned(),
            direction: direction.as_str(),
            path: pin.to_owned(),
            message,
        };
        if pin.exists() {
            // A previous speaker's link: swap our program in atomically; the pin stays.
            let old = PinnedLink::from_pin(pin).map_err(|e| pin_err(error_chain(&e)))?;
            let link = SchedClassifierLink::try_from(FdLink::from(old)).map_err(|e| pin_err(error_chain(&e)))?;
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
            let fd_link = FdLink::try_from(link).map_err(|e| pin_err(error_chain(&e)))?;
            fd_link.pin(pin).map_err(|e| pin_err(error_chain(&e)))?;
        }
        Ok(())
    }

    /// Registers per-frontend packet and byte counters (read from the per-CPU counter map at
    /// each scrape): `herald_dataplane_packets_total`, `herald_dataplane_bytes_total` with labels
    /// `service`, `frontend`, `kind`; and `herald_dataplane_frontends`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(metrics::CounterCollector::new(self.shared.clone())));
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
        let links_dir = self.config.pin_dir.join(LINKS_DIR);
        if let Ok(entries) = std::fs::read_dir(&links_dir) {
            for entry in entries.flatten() {
                unpin_link(&entry.path())?;
            }
        }
        drop(self.shared);
        drop(self.ebpf);
        let map_dir = self.config.pin_dir.join(MAP_LAYOUT_DIR);
        for name in MAP_NAMES {
            let _ = std::fs::remove_file(map_dir.join(name));
        }
        let _ = std::fs::remove_dir(&map_dir);
        let _ = std::fs::remove_dir(&links_dir);
        let _ = std::fs::remove_dir(&self.config.pin_dir);
        Ok(())
    }
}

/// A flow to a remote backend is SNATed to the node's own address on ingress; without
/// `accept_local` the kernel drops such a packet as a martian. IPv6 has no such check.
fn accept_local_source(interface: &str) -> Result<(), DataplaneError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{interface}/accept_local"));
    if std::fs::read_to_string(&path).map(|v| v.trim() == "1").unwrap_or(false) {
        return Ok(());
    }
    std::fs::write(&path, "1").map_err(|source| DataplaneError::Sysctl { path, source })
}

/// `error: cause: cause…`, since aya's messages name the syscall but keep errno in the source.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// bpffs refuses names with dots (reserved), and interface names may contain them (VLANs) but
/// never a colon: so dots become colons and the hook follows a colon.
fn link_pin_name(interface: &str, direction: Direction) -> String {
    format!("{}:{}", interface.replace('.', ":"), direction.as_str())
}

fn unpin_link(path: &Path) -> Result<(), DataplaneError> {
    let detach_err = |message: String| DataplaneError::Detach {
        path: path.to_owned(),
        message,
    };
    match PinnedLink::from_pin(path) {
        // Removing the pin and closing the last fd detaches the program.
        Ok(link) => link.unpin().map(drop).map_err(|e| detach_err(error_chain(&e))),
        Err(_) => std::fs::remove_file(path).map_err(|e| detach_err(error_chain(&e))),
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
