//! What arrives: requests from peers (answered now, or later for a relayed ping), responses
//! and failures of our own requests, and the signs of life they carry.
use std::time::{Duration, Instant};

use herald_proto::membership::v1 as pb;
use pb::message::Body;

use super::{CallFailure, Core, Effect, Inbound, Pending, ReplyToken, RequestId, Rpc};

impl Core {
    /// Handles an authenticated request.
    pub fn handle_request(&mut self, message: pb::Message, now: Instant) -> Inbound {
        let sender = message.sender.clone();
        self.absorb(&message, now);
        let inbound = match message.body {
            Some(Body::Ping(_)) => Inbound::Reply(self.message(Some(&sender), Body::Ack(pb::Ack {}))),
            Some(Body::PingReq(req)) => self.relay(req, now),
            Some(Body::SyncRequest(req)) => {
                for update in &req.members {
                    self.apply_update(update, &sender, now);
                }
                let mut reply = self.message(Some(&sender), Body::SyncReply(pb::SyncReply::default()));
                reply.body = Some(Body::SyncReply(pb::SyncReply {
                    members: self.full_state(),
                }));
                Inbound::Reply(reply)
            }
            _ => Inbound::Invalid,
        };
        self.send_refutations(now);
        inbound
    }

    pub(super) fn relay(&mut self, req: pb::PingReq, now: Instant) -> Inbound {
        let token = ReplyToken(self.next_token);
        self.next_token += 1;
        if req.target == self.node {
            self.reply_relay(token, &req.target, true, false);
            return Inbound::Deferred(token);
        }
        // Only a member we know, at the address we know: never an address a caller supplies.
        let Some(address) = self.members.get(&req.target).map(|m| m.address) else {
            self.reply_relay(token, &req.target, false, false);
            return Inbound::Deferred(token);
        };
        let wait = Duration::from_millis(u64::from(req.timeout_ms)).min(self.config.probe_timeout);
        let id = self.next_request_id();
        self.pending.insert(
            id,
            Pending::Relay {
                token,
                target: req.target.clone(),
                fail_at: now + wait,
            },
        );
        let message = self.message(Some(&req.target), Body::Ping(pb::Ping {}));
        self.effects.push(Effect::Request {
            id,
            to: req.target,
            address,
            rpc: Rpc::Ping,
            message,
            timeout: wait,
        });
        Inbound::Deferred(token)
    }

    pub(super) fn reply_relay(&mut self, token: ReplyToken, target: &str, reachable: bool, refused: bool) {
        let message = self.message(
            None,
            Body::PingReqResult(pb::PingReqResult {
                target: target.to_string(),
                reachable,
                refused,
            }),
        );
        self.effects.push(Effect::Reply { token, message });
    }

    /// Handles the authenticated response to request `id`.
    pub fn handle_response(&mut self, id: RequestId, message: pb::Message, now: Instant) {
        let sender = message.sender.clone();
        self.absorb(&message, now);
        match (self.pending.get(&id).cloned(), &message.body) {
            (Some(Pending::Probe { target, .. }), Some(Body::Ack(_))) if target == sender => {
                self.pending.remove(&id);
            }
            (Some(Pending::Relay { token, target, .. }), Some(Body::Ack(_))) if target == sender => {
                self.pending.remove(&id);
                self.reply_relay(token, &target, true, false);
            }
            (Some(Pending::Indirect { target, .. }), Some(Body::PingReqResult(result))) if result.target == target => {
                self.pending.remove(&id);
                if result.reachable {
                    self.sign_of_life(&target, "a helper reached it");
                } else if result.refused {
                    self.refusal(&target, true, now);
                }
            }
            (Some(Pending::Exchange { initial, .. }), body) => {
                self.pending.remove(&id);
                if let Some(Body::SyncReply(reply)) = body {
                    for update in &reply.members {
                        self.apply_update(update, &sender, now);
                    }
                }
                if initial {
                    // An answer: the view is settled.
                    self.settle();
                }
            }
            _ => {}
        }
        self.send_refutations(now);
    }

    /// The request `id` failed at the transport (refused, reset, timed out): a probe counts
    /// as failed now instead of at its timeout.
    pub fn handle_failure(&mut self, id: RequestId, failure: CallFailure, now: Instant) {
        let refused = failure == CallFailure::Refused;
        match self.pending.get_mut(&id) {
            Some(Pending::Probe {
                failed,
                target,
                incarnation,
                sent_at,
                ..
            }) => {
                let already_failed = *failed;
                *failed = true;
                let (target, incarnation, sent_at) = (target.clone(), *incarnation, *sent_at);
                self.pending.remove(&id);
                if !already_failed {
                    self.probe_failed(&target, incarnation, sent_at, now);
                }
                if refused {
                    self.refusal(&target, false, now);
                }
            }
            Some(Pending::Relay { token, target, .. }) => {
                let (token, target) = (*token, target.clone());
                self.pending.remove(&id);
                self.reply_relay(token, &target, false, refused);
            }
            Some(Pending::Exchange { initial, .. }) => {
                let initial = *initial;
                self.pending.remove(&id);
                if initial {
                    self.initial_sync_failed(now, false);
                }
            }
            Some(Pending::Indirect { .. }) => {
                self.pending.remove(&id);
            }
            None => {}
        }
    }

    /// The peer refused request `id` as unauthenticated (it has another secret, or we do).
    /// Like [`Core::handle_failure`], except that an initial sync refused this way does not
    /// count towards settling the view.
    pub fn handle_rejected(&mut self, id: RequestId, now: Instant) {
        if let Some(Pending::Exchange { initial: true, .. }) = self.pending.get(&id) {
            self.pending.remove(&id);
            self.initial_sync_failed(now, true);
        } else {
            self.handle_failure(id, CallFailure::Other, now);
        }
    }

    /// Takes in what every message says: the sender is alive (its own state comes first in
    /// the gossip), and the gossip.
    pub(super) fn absorb(&mut self, message: &pb::Message, now: Instant) {
        // First contact after settling alone: learn everything this peer knows now, not
        // piece by piece from gossip.
        if !self.had_contact && self.settled() && !self.leaving {
            self.request_sync(&message.sender, now, false);
        }
        self.had_contact = true;
        let sender = message.sender.as_str();
        for update in &message.gossip {
            self.apply_update(update, sender, now);
        }
        if let Some(member) = self.members.get_mut(sender) {
            member.last_heard = Some(now);
        }
        self.sign_of_life(sender, "a message from it");
    }

    /// Direct or indirect proof that `node` is alive: cancels our death timer for it. Its
    /// state returns to `Alive` only through its refutation (a higher incarnation).
    pub(super) fn sign_of_life(&mut self, node: &str, evidence: &'static str) {
        if self.suspicions.remove(node).is_some() {
            self.stats.suspicions_cleared += 1;
            tracing::debug!(local = %self.node, member = %node, evidence, "suspicion cancelled by a sign of life");
        }
    }
}
