//! Member states and health between the core's types and the protocol's messages.
use herald_proto::membership::v1 as pb;

use super::Member;
use crate::membership::{MemberState, NodeHealth};

pub(super) fn update_of(node: &str, member: &Member) -> pb::MemberUpdate {
    pb::MemberUpdate {
        node: node.to_string(),
        address: member.address.to_string(),
        incarnation: member.incarnation,
        state: state_to_pb(member.state) as i32,
        health: member.health.as_ref().map(health_to_pb),
        rejoining: member.rejoining,
    }
}

pub(super) fn state_to_pb(state: MemberState) -> pb::MemberState {
    match state {
        MemberState::Alive => pb::MemberState::Alive,
        MemberState::Suspect => pb::MemberState::Suspect,
        MemberState::Dead => pb::MemberState::Dead,
        MemberState::Left => pb::MemberState::Left,
    }
}

pub(super) fn state_from_pb(value: i32) -> Option<MemberState> {
    match pb::MemberState::try_from(value).ok()? {
        pb::MemberState::Alive => Some(MemberState::Alive),
        pb::MemberState::Suspect => Some(MemberState::Suspect),
        pb::MemberState::Dead => Some(MemberState::Dead),
        pb::MemberState::Left => Some(MemberState::Left),
        pb::MemberState::Unspecified => None,
    }
}

pub(super) fn health_to_pb(health: &NodeHealth) -> pb::NodeHealth {
    pb::NodeHealth {
        announcer_ready: health.announcer_ready,
        dataplane_ready: health.dataplane_ready,
        interfaces: health.interfaces.iter().cloned().collect(),
        other_interfaces: health.other_interfaces.iter().cloned().collect(),
    }
}

pub(super) fn health_from_pb(health: &pb::NodeHealth) -> NodeHealth {
    NodeHealth {
        announcer_ready: health.announcer_ready,
        dataplane_ready: health.dataplane_ready,
        interfaces: health.interfaces.iter().cloned().collect(),
        other_interfaces: health.other_interfaces.iter().cloned().collect(),
    }
}
