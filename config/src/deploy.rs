//! The names and ports the binaries, the deploy manifests (`config/deploy`, the Helm chart) and
//! the lab agree on. The manifests spell them in YAML; `config/tests/deploy.rs` checks that they
//! say the same as these constants.

/// Namespace of Herald's own objects.
pub const NAMESPACE: &str = "herald-system";
/// The controller's Deployment, ServiceAccount, Lease and field manager.
pub const CONTROLLER: &str = "herald-controller";
/// The speakers' DaemonSet, ServiceAccount and field manager.
pub const SPEAKER: &str = "herald-speaker";
/// The label whose value says which part of Herald a Pod is (`controller`, `speaker`).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// The label selector of the speaker Pods.
pub const SPEAKER_POD_SELECTOR: &str = "app.kubernetes.io/name=herald,app.kubernetes.io/component=speaker";

/// The Secret holding the key that authenticates speaker messages; created empty by the
/// manifests, filled with a random key by the controller.
pub const SPEAKER_SECRET: &str = "herald-speaker-auth";
/// The Secret's field with the current key.
pub const SPEAKER_KEY_FIELD: &str = "secretkey";
/// The Secret's field with the next key during a rotation (accepted, not yet signed with).
pub const SPEAKER_NEXT_KEY_FIELD: &str = "secretkey-next";

/// Where the controller serves `/metrics`, `/healthz` and `/readyz`.
pub const CONTROLLER_METRICS_PORT: u16 = 7472;
/// Where each speaker serves `/metrics`, `/healthz` and `/readyz` (host network).
pub const SPEAKER_METRICS_PORT: u16 = 7473;
/// The speakers' gRPC membership port (host network).
pub const SPEAKER_PEER_PORT: u16 = 7946;
