//! The gRPC protocol speakers use among themselves, generated from `proto/` at build time.
//!
//! `membership::v1` is SWIM-style failure detection with piggybacked gossip; every message
//! travels in an [`membership::v1::Envelope`] authenticated with an HMAC over its payload.
#![forbid(unsafe_code)]

pub mod membership {
    pub mod v1 {
        // Generated code carries its own docs from the .proto comments.
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("herald.membership.v1");
    }
}

#[cfg(test)]
mod tests {
    use super::membership::v1::{Envelope, MemberState, MemberUpdate, Message, message::Body};
    use prost::Message as _;

    #[test]
    fn messages_round_trip_through_their_encoding() {
        let msg = Message {
            sender: "node-a".into(),
            boot_id: 7,
            seq: 42,
            sent_at_unix_ms: 1_700_000_000_000,
            receiver: "node-b".into(),
            boot_started_unix_ms: 1_699_999_000_000,
            gossip: vec![MemberUpdate {
                node: "node-b".into(),
                address: "10.0.0.2:7946".into(),
                incarnation: 3,
                state: MemberState::Suspect as i32,
                health: None,
                rejoining: true,
            }],
            body: Some(Body::Ping(Default::default())),
        };
        let envelope = Envelope {
            payload: msg.encode_to_vec(),
            mac: vec![0; 32],
            next_mac: vec![1; 32],
        };
        let decoded = Message::decode(
            Envelope::decode(envelope.encode_to_vec().as_slice())
                .unwrap()
                .payload
                .as_slice(),
        )
        .unwrap();
        assert_eq!(decoded, msg);
        assert_eq!(decoded.gossip[0].state(), MemberState::Suspect);
    }
}
