//! Herald's API, in one place: the custom resources (`IPAddressPool`, `L2Advertisement`,
//! `ServiceL2Status`), the Service annotations, and validation of both as pure functions with
//! user-facing messages.
//!
//! # Layout
//! - [`address`]: parsing `spec.addresses` entries into inclusive IP ranges.
//! - [`pool`], [`advertisement`], [`l2status`]: the custom resource types (`herald.io/v1beta1`).
//! - [`selector`]: Kubernetes label selectors: validation and matching.
//! - [`schema`]: the validation rules the CRD schemas give the API server (OpenAPI and CEL).
//! - [`annotations`]: the Service annotations Herald reads and writes.
//! - [`service`]: which Services Herald handles, and their current addresses.
//! - [`validation`]: rules over pools and advertisements, alone and as a set.
//! - [`last_valid`]: what is in use when an object that was valid is edited into an invalid
//!   spec (its last valid spec), shared by the controller and the speaker.
//! - [`check`]: a set of manifests judged as Herald will judge them once applied.
//! - [`migrate`]: MetalLB's layer-2 configuration rewritten as Herald's.
//! - [`crds`]: the CustomResourceDefinitions as committed in `config/crd/`.
//! - [`yaml`]: the one place YAML is read and written.
//! - [`deploy`]: the names and ports the binaries and the deploy manifests agree on.
//! - `process` (feature `process`): what the binaries do alike as processes — logging, the
//!   shutdown signal, error reports, the `/metrics`, `/healthz` and `/readyz` server.
#![forbid(unsafe_code)]
pub mod address;
pub mod advertisement;
pub mod annotations;
pub mod check;
pub mod crds;
pub mod deploy;
pub mod l2status;
pub mod last_valid;
pub mod migrate;
pub mod pool;
#[cfg(feature = "process")]
pub mod process;
pub mod schema;
pub mod selector;
pub mod service;
pub mod validation;
pub mod yaml;

pub use address::{IpFamily, IpRange};
pub use advertisement::{L2Advertisement, L2AdvertisementSpec};
pub use l2status::{ServiceL2Status, ServiceL2StatusStatus};
pub use pool::{IPAddressPool, IPAddressPoolSpec, IPAddressPoolStatus, ServiceAllocation};

/// The API group of Herald's custom resources and the prefix of its annotations.
pub const GROUP: &str = "herald.io";
/// The served version of Herald's custom resources.
pub const VERSION: &str = "v1beta1";
/// The `spec.loadBalancerClass` Herald handles by default (Services with no class are handled too).
pub const DEFAULT_LB_CLASS: &str = "herald.io/l2";
/// Nodes with this label never announce (the Kubernetes well-known label).
pub const EXCLUDE_FROM_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
