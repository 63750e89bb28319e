//! Herald's lab: test and demo infrastructure that runs Herald's binaries and the real
//! `kubectl` against a real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, built from their Go modules by `make deps`), in
//! a bare-metal cluster made of network namespaces on one machine.
//!
//! # Layout
//! - [`lab`]: the cluster ([`lab::Lab::up`]) and `herald-lab up`/`down`; its control plane
//!   is [`lab::controlplane`].
//! - [`story`]: the demo and the failover benchmark on top of a lab.
//! - [`image`](mod@image): `make image`, Herald's OCI image archive.
//! - [`bench`](mod@bench): `herald-lab bench-allocation`, addresses for many Services at once.
//! - [`chart`]: the Helm chart rendered into `config/deploy`, and where helm is.
//! - [`soak`](mod@soak): `herald-lab soak`, idle speakers on busy cores, counting false detections.
//! - [`observability`]: the shipped Grafana dashboard and alert rules, parsed, and the metric
//!   names they use.
//! - [`dashboard`](mod@dashboard): `herald-lab dashboard`, a picture of that dashboard drawn
//!   from a lab's metrics.
//!
//! Nothing here is used in production.
#![forbid(unsafe_code)]

pub mod bench;
pub mod chart;
pub mod dashboard;
pub mod image;
pub mod lab;
pub mod observability;
pub mod soak;
pub mod story;
