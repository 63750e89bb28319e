//! Dissemination: messages carry our own state and queued news about others; updates from
//! peers are applied in incarnation order, and claims about ourselves are refuted.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use herald_proto::membership::v1 as pb;
use pb::message::Body;

use super::codec::{health_from_pb, health_to_pb, state_from_pb, state_to_pb, update_of};
use super::{Core, MAX_INCARNATION, MAX_UNLISTED_MEMBERS, Member, QueuedGossip};
use crate::membership::MemberState;

impl Core {
    /// A message to `to` with our gossip: our own state first, then our view of the receiver
    /// when it is not `Alive`, then the most urgent queued changes.
    pub(super) fn message(&mut self, to: Option<&str>, body: Body) -> pb::Message {
        let mut gossip = vec![self.self_update()];
        if let Some(to) = to
            && let Some(member) = self.members.get(to)
            && member.state != MemberState::Alive
        {
            gossip.push(update_of(to, member));
        }
        if !self.gossip.is_empty() {
            let mut queued: Vec<(u32, String)> = self
                .gossip
                .iter()
                // The receiver knows its own state best, and needs no news twice.
                .filter(|(n, q)| Some(n.as_str()) != to && !to.is_some_and(|to| q.sent_to.contains(to)))
                .map(|(n, q)| (q.left, n.clone()))
                .collect();
            // Most transmissions left first: the newest changes.
            queued.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            for (_, node) in queued.into_iter().take(self.config.gossip_per_message) {
                if let Some(queued) = self.gossip.get_mut(&node) {
                    queued.left -= 1;
                    if let Some(to) = to {
                        queued.sent_to.insert(to.to_string());
                    }
                    if queued.left == 0 {
                        self.gossip.remove(&node);
                    }
                }
                // Our own state is always first.
                if node == self.node {
                    continue;
                }
                if let Some(member) = self.members.get(&node) {
                    gossip.push(update_of(&node, member));
                }
            }
        }
        pb::Message {
            gossip,
            body: Some(body),
            ..Default::default()
        }
    }

    pub(super) fn self_update(&self) -> pb::MemberUpdate {
        pb::MemberUpdate {
            node: self.node.clone(),
            address: self.address.to_string(),
            incarnation: self.incarnation,
            state: state_to_pb(self.local_state()) as i32,
            health: Some(health_to_pb(&self.health)),
            rejoining: self.rejoining_until.is_some(),
        }
    }

    pub(super) fn full_state(&self) -> Vec<pb::MemberUpdate> {
        let mut all = vec![self.self_update()];
        all.extend(self.members.iter().map(|(n, m)| update_of(n, m)));
        all
    }

    pub(super) fn queue_gossip(&mut self, node: String) {
        let members = self.members.len() as u32 + 1;
        let log = u32::BITS - members.leading_zeros();
        let transmissions = self.config.gossip_retransmit_mult.max(1) * log.max(1);
        self.gossip.insert(
            node,
            QueuedGossip {
                left: transmissions,
                sent_to: BTreeSet::new(),
            },
        );
    }

    // ----- receiving -----

    pub(super) fn apply_update(&mut self, update: &pb::MemberUpdate, from: &str, now: Instant) {
        let Some(state) = state_from_pb(update.state) else {
            self.stats.invalid_updates += 1;
            return;
        };
        if update.incarnation > MAX_INCARNATION {
            self.stats.invalid_updates += 1;
            return;
        }
        if update.node == self.node {
            self.about_us(state, update.incarnation, from, now);
            return;
        }
        let Ok(address) = update.address.parse::<SocketAddr>() else {
            self.stats.invalid_updates += 1;
            return;
        };
        if update.node.is_empty() {
            self.stats.invalid_updates += 1;
            return;
        }
        let health = update.health.as_ref().map(health_from_pb);
        let is_sender = update.node == from;
        let Some(member) = self.members.get_mut(&update.node) else {
            if self.members.values().filter(|m| !m.listed).count() >= MAX_UNLISTED_MEMBERS {
                self.stats.unlisted_ignored += 1;
                return;
            }
            self.members.insert(
                update.node.clone(),
                Member {
                    address,
                    incarnation: update.incarnation,
                    state,
                    health,
                    last_heard: is_sender.then_some(now),
                    listed: false,
                    host_up: false,
                    rejoining: update.rejoining,
                },
            );
            self.event(&update.node, None, state, update.incarnation, "learned from gossip");
            self.queue_gossip(update.node.clone());
            return;
        };
        let newer = update.incarnation > member.incarnation;
        let same = update.incarnation == member.incarnation;
        let old_state = member.state;
        // SWIM order: a higher incarnation wins; at equal incarnation Suspect beats Alive and
        // Dead/Left beat both. Left is final for an incarnation.
        let accept = match state {
            MemberState::Alive => newer,
            MemberState::Suspect => newer || (same && old_state == MemberState::Alive),
            MemberState::Dead => (newer || same) && old_state.is_live(),
            MemberState::Left => (newer || same) && old_state != MemberState::Left,
        };
        if !accept {
            return;
        }
        let mut state = state;
        let mut reason = match (state, is_sender) {
            (MemberState::Left, _) => "left the cluster",
            (_, true) => "its own message",
            (_, false) => "gossip",
        };
        let mut spread = true;
        let heard_recently = member
            .last_heard
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.suspicion_timeout);
        if state == MemberState::Dead && heard_recently {
            // We heard from it more recently than anyone could have confirmed its death: keep
            // it live and let it refute (our messages to it carry the claim).
            if old_state == MemberState::Suspect && !newer {
                return;
            }
            state = MemberState::Suspect;
            reason = "dead claim contradicted by recent contact";
            spread = false;
        }
        if newer {
            // The API's peer list is authoritative for addresses; gossip only fills in members
            // it does not list, and never with a wildcard address.
            if !member.listed && !address.ip().is_unspecified() {
                member.address = address;
            }
            member.incarnation = update.incarnation;
            if health.is_some() {
                member.health = health;
            }
            member.rejoining = update.rejoining;
            self.view_dirty = true;
        }
        if state != old_state {
            self.set_state(&update.node, state, update.incarnation, reason);
        }
        if spread {
            self.queue_gossip(update.node.clone());
        }
        if !state.is_live() {
            self.suspicions.remove(&update.node);
        } else if newer && self.suspicions.remove(&update.node).is_some() {
            // Refuted.
            self.stats.suspicions_cleared += 1;
        }
        if !old_state.is_live() && state.is_live() && !self.leaving {
            // Back from the dead (restart or healed partition): exchange full state.
            self.request_sync(&update.node, now, false);
        }
    }

    pub(super) fn about_us(&mut self, state: MemberState, incarnation: u64, from: &str, now: Instant) {
        if self.leaving {
            return;
        }
        // A peer that believes us dead may have taken our IPs and switched the network to its
        // MAC, whether or not we refuted a suspicion at that incarnation already (a frozen
        // speaker reads the Suspect claims queued for it before the Dead ones). Each
        // incarnation claimed dead counts once.
        if state == MemberState::Dead && self.dead_claimed.is_none_or(|seen| incarnation > seen) {
            self.dead_claimed = Some(incarnation);
            self.stats.death_claims += 1;
            self.view_dirty = true;
        }
        let refute = match state {
            MemberState::Alive => incarnation > self.incarnation,
            _ => incarnation >= self.incarnation,
        };
        if !refute {
            return;
        }
        self.incarnation = incarnation.saturating_add(1);
        self.stats.refutations += 1;
        self.view_dirty = true;
        self.queue_gossip(self.node.clone());
        if state != MemberState::Alive && from != self.node {
            self.refute_to.insert(from.to_string());
        }
        tracing::info!(
            node = %self.node,
            claim = %state,
            claimed_by = %from,
            incarnation = self.incarnation,
            "refuting a claim about this speaker"
        );
        // A claim while the link that came back still flaps: hold on from now.
        if self.rejoining_until.is_some() && state != MemberState::Alive {
            self.rejoining_until = Some(now + self.config.rejoin_hold);
        }
    }

    pub(super) fn send_refutations(&mut self, now: Instant) {
        let targets = std::mem::take(&mut self.refute_to);
        for target in targets {
            if let Some(address) = self.members.get(&target).map(|m| m.address) {
                let timeout = self.config.probe_timeout;
                self.request_ping_exchange(&target, address, &[], now, timeout);
            }
        }
    }

    // ----- helpers -----
}
