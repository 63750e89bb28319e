//! Event reasons the controller emits on Services. They are stable: users alert on them.

use k8s_openapi::api::core::v1::Service;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};

use super::Context;

/// The Service got (or kept after a change) its addresses.
pub const IP_ALLOCATED: &str = "IPAllocated";
/// The Service cannot get addresses; the message says which rule refused it.
pub const ALLOCATION_FAILED: &str = "AllocationFailed";
/// The Service's addresses were taken away (no longer a LoadBalancer, other class, pool gone).
pub const CLEAR_ASSIGNMENT: &str = "ClearAssignment";
/// The Service uses a MetalLB spelling of an annotation.
pub const DEPRECATED_ANNOTATION: &str = "DeprecatedAnnotation";
/// An annotation the speakers read has a value they cannot use; the message says which, and
/// what applies instead.
pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";

/// Publishes an Event on the Service; failures are logged, never fatal. A standby publishes
/// nothing.
///
/// A fresh `Recorder` per Event: kube's recorder folds Events with the same reason into one
/// series and keeps the first note, but here the note is the message (which address, which
/// rule). Repeats of one message are suppressed by the caller instead.
pub async fn publish(ctx: &Context, service: &Service, type_: EventType, reason: &str, note: String) {
    if !ctx.leadership.may_write() {
        tracing::debug!(reason, %note, "not the leader: Event not published");
        return;
    }
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: match reason {
            IP_ALLOCATED => "Allocate",
            ALLOCATION_FAILED => "Allocate",
            CLEAR_ASSIGNMENT => "Release",
            _ => "Validate",
        }
        .to_string(),
        secondary: None,
    };
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, &service.object_ref(&())).await {
        tracing::warn!(reason, error = %e, "cannot publish event");
    }
}
