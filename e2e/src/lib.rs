//! Herald's lab: test and demo infrastructure that lets Herald's binaries and the real
//! `kubectl` run against something that behaves like a Kubernetes cluster, without one.
//!
//! # Layout
//! - [`apiserver`]: an in-memory stand-in for kube-apiserver (discovery, CRUD, watch,
//!   patch strategies, server-side apply, CRDs, service IP/port allocation,
//!   EndpointSlices). Start it with [`apiserver::ApiServer::start`].
//! - [`lab`]: a bare-metal cluster from network namespaces running Herald's binaries
//!   against the lab API server ([`lab::Lab::up`]), and `herald-lab up`/`down`.
//! - [`bench`](mod@bench): the `herald-lab bench-apiserver` load benchmark.
//!
//! Nothing here is used in production.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod bench;
pub mod lab;
pub mod story;
