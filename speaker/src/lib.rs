//! herald-speaker: runs on every node. Speakers elect one owner node per LoadBalancer IP over
//! gRPC; the owner answers ARP/NDP for it and forwards its traffic with an eBPF service map.
//!
//! # Layout
//! One module per concept; decisions are pure functions, I/O sits at the edges behind traits.
//! - [`run`]: the process: watches and links → [`speaker`] (one step: derive, [`plan`],
//!   decide) → announcer, membership, dataplane, [`status`].
//! - [`cluster`]: Kubernetes watches, the pools and advertisements in use (an invalid edit keeps
//!   the last valid spec) and the facts election needs from them.
//! - [`election`]: eligibility and rendezvous owner per IP (pure).
//! - [`membership`]: SWIM-style failure detection between speakers over gRPC.
//! - [`links`]: the node's network links, listed by one thread, and which of them announce.
//! - [`announcer`]: ARP/NDP answers and gratuitous announcements.
//! - [`dataplane`]: the eBPF service map: LoadBalancer IPs and NodePorts to backends.
//! - [`status`]: `ServiceL2Status` objects and `nodeAssigned` Events.
//! - [`config`]: flags; [`http`]: `/metrics`, `/healthz`, `/readyz`.
//!
//! Test tooling — the membership simulation and in-memory network, fakes of the announcer's
//! links and of the service maps — is compiled only with the `testing` feature, which the
//! crate's own tests and benches turn on.
#![deny(unsafe_code)]
pub mod announcer;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod election;
pub mod http;
pub mod links;
pub mod membership;
pub mod plan;
pub mod run;
pub mod speaker;
pub mod status;
