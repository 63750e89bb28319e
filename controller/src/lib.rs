//! Herald controller: allocates LoadBalancer addresses from `IPAddressPool`s and writes them to
//! Services.
//!
//! # Layout
//! - [`allocator`]: the pure address allocator (pools, requests, sharing, counters).
//! - [`reconciler`]: the kube-rs controller around it: rebuild on start, Services, pools.
//! - [`leader`]: leader election on a Lease; the gate every write passes.
//! - [`config`]: flags; [`http`]: `/metrics`, `/healthz`, `/readyz`; [`metrics`]: Prometheus.
//! - [`secret`]: fills the speakers' shared key; [`check`]: `herald-controller check FILE…` and
//!   `herald-controller migrate FILE…`.
#![forbid(unsafe_code)]
pub mod allocator;
pub mod check;
pub mod config;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod reconciler;
pub mod secret;

pub use reconciler::run;
