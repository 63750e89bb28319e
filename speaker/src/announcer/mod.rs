//! Layer-2 announcer: makes the network deliver each owned IP's traffic to this node by
//! answering ARP requests and Neighbor Solicitations for it with the node's MAC, and by sending
//! gratuitous ARP / unsolicited Neighbor Advertisements when ownership is gained. The IPs are
//! never configured on an interface.
//!
//! # Layout
//! - [`frame`], [`arp`], [`ndp`]: pure frame parsing, validation and building.
//! - [`responder`]: the pure decision for one received frame.
//! - [`schedule`]: when gratuitous announcements go out after a gain.
//! - `metrics`: the Prometheus counters ([`AnnouncerMetrics`]).
//! - `priority`: the reader threads' nice value (the announcer's only unsafe code, one call).
//! - [`io`]: one trait per side effect (frames, multicast) and the real ones; `fake` has
//!   in-memory ones (feature `testing`).
//! - `runtime`: the threads: one following the links ([`crate::links`] lists them and says
//!   which announce), a reader per link, an announce scheduler.
//!
//! # Invariants
//! - The responder consults the owned set for every request: an IP removed by
//!   [`Announcer::set_owned`] is not answered from the moment that call returns.
//! - Frames are answered on the link they arrived on, from that link's MAC, and only if the IP
//!   is announced on that link.
//! - Malformed frames are dropped and counted by reason; parsing never panics (fuzzed).

pub mod arp;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod frame;
pub mod io;
mod metrics;
pub mod ndp;
mod priority;
pub mod responder;
mod runtime;
pub mod schedule;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::links::InterfacePolicy;

pub use frame::{FrameError, MacAddr};
pub use io::{FrameSink, FrameSource, LinkOpener, MulticastMembership};
pub use metrics::AnnouncerMetrics;
pub use runtime::Announcer;
pub use schedule::AnnounceSchedule;

/// How an IP is to be announced; built by the wiring from the `L2Advertisement`s that select
/// the IP's pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnounceTarget {
    /// Only these interfaces (an advertisement's `interfaces`); `None`: the node-wide set.
    /// Named interfaces are used even when the default rules exclude them.
    pub interfaces: Option<Vec<String>>,
}

/// Settings of the announcer.
#[derive(Debug, Clone)]
pub struct AnnouncerConfig {
    /// Node-wide interface selection (default: every suitable link minus container devices).
    pub interfaces: InterfacePolicy,
    /// Gratuitous announcements after a gain (default: at 0, 0.5, 1, 2 and 4 s; no periodic).
    pub schedule: AnnounceSchedule,
    /// How often links whose reader died are reopened (links that failed to open are tried
    /// again every 5 s). Changes of the links themselves are followed as they are published.
    pub check_interval: Duration,
    /// How long a link reader blocks before checking for shutdown and link removal.
    pub read_timeout: Duration,
    /// Counters; register them with [`AnnouncerMetrics::register`].
    pub metrics: AnnouncerMetrics,
    /// Nice value for the link reader threads (e.g. -10 so replies do not wait behind busy
    /// workloads for a CPU; needs CAP_SYS_NICE). `None` (default): inherit.
    pub reader_nice: Option<i32>,
}

impl Default for AnnouncerConfig {
    fn default() -> Self {
        AnnouncerConfig {
            interfaces: InterfacePolicy::default(),
            schedule: AnnounceSchedule::default(),
            check_interval: Duration::from_millis(300),
            read_timeout: Duration::from_millis(100),
            metrics: AnnouncerMetrics::default(),
            reader_nice: None,
        }
    }
}

/// The side effects the announcer runs on; [`Backends::system`] for the real host.
pub struct Backends {
    pub links: Arc<dyn LinkOpener>,
    pub multicast: Box<dyn MulticastMembership>,
}

impl Backends {
    /// pnet for links and frames, UDP sockets for multicast membership.
    pub fn system() -> Backends {
        Backends {
            links: Arc::new(io::PnetLinks),
            multicast: Box::new(io::SocketMulticast::default()),
        }
    }
}

/// What the announcer is doing, for readiness, `ServiceL2Status` and the `nodeAssigned` Event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnouncerStatus {
    /// Links have been listed at least once and the announcer is running.
    pub ready: bool,
    /// Node-wide announcing interfaces (open and suitable); empty means not eligible.
    pub usable_interfaces: Vec<String>,
    /// For each owned IP, the interfaces it is announced on right now (may be empty).
    pub announced: BTreeMap<IpAddr, Vec<String>>,
    /// Links that should announce but could not be opened, with the error.
    pub link_errors: BTreeMap<String, String>,
}

/// Errors of [`Announcer::start`].
#[derive(Debug, thiserror::Error)]
pub enum AnnouncerError {
    #[error("starting the runtime of the thread that follows the links")]
    Runtime(#[source] std::io::Error),
    #[error("starting announcer thread {name}")]
    SpawnThread {
        name: String,
        #[source]
        source: std::io::Error,
    },
}
