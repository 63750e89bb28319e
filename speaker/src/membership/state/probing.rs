//! Failure detection: direct probes of closely watched members and a slow round-robin over
//! the rest, indirect probes through helpers, suspicion and its timeout, and expiry of
//! requests that got no answer.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herald_proto::membership::v1 as pb;
use pb::message::Body;
use rand::seq::{IndexedRandom, SliceRandom};

use super::codec::update_of;
use super::{Core, Effect, INDIRECT_ROUNDS, LocalSuspicion, Pending, RequestId, Rpc};
use crate::membership::MemberState;

impl Core {
    pub(super) fn expire_pending(&mut self, now: Instant) {
        let mut failed_probes = Vec::new();
        let mut failed_relays = Vec::new();
        let mut expired = Vec::new();
        let mut initial_expired = false;
        for (id, pending) in self.pending.iter_mut() {
            match pending {
                Pending::Probe {
                    target,
                    incarnation,
                    sent_at,
                    fail_at,
                    expire_at,
                    failed,
                } => {
                    if !*failed && now >= *fail_at {
                        *failed = true;
                        failed_probes.push((target.clone(), *incarnation, *sent_at));
                    }
                    if now >= *expire_at {
                        expired.push(*id);
                    }
                }
                Pending::Relay { token, target, fail_at } => {
                    if now >= *fail_at {
                        failed_relays.push((*token, target.clone()));
                        expired.push(*id);
                    }
                }
                Pending::Indirect { expire_at, .. } => {
                    if now >= *expire_at {
                        expired.push(*id);
                    }
                }
                Pending::Exchange { expire_at, initial } => {
                    if now >= *expire_at {
                        expired.push(*id);
                        initial_expired |= *initial;
                    }
                }
            }
        }
        for id in expired {
            self.pending.remove(&id);
        }
        if initial_expired {
            self.initial_sync_failed(now, false);
        }
        for (token, target) in failed_relays {
            self.reply_relay(token, &target, false, false);
        }
        for (target, incarnation, sent_at) in failed_probes {
            self.probe_failed(&target, incarnation, sent_at, now);
        }
    }

    /// A probe of `target`, sent at `sent_at` when it was at `incarnation`, got no Ack in time.
    pub(super) fn probe_failed(&mut self, target: &str, incarnation: u64, sent_at: Instant, now: Instant) {
        tracing::debug!(local = %self.node, member = %target, "probe failed");
        if self.leaving || self.suspicions.contains_key(target) {
            return;
        }
        let Some(member) = self.members.get(target) else {
            return;
        };
        // Heard from it after this probe left: the probe (or its Ack) was lost, the member
        // is not silent. A newer incarnation since (a refutation that reached us through
        // others): the probe was about a claim already answered. Suspecting the new
        // incarnation for it made every probe left over from the last suspicion start another
        // (a suspect/refute storm on a link that just came back).
        if !member.state.is_live()
            || member.last_heard.is_some_and(|t| t >= sent_at)
            || member.incarnation != incarnation
        {
            return;
        }
        self.stats.suspicions += 1;
        if member.state == MemberState::Alive {
            self.set_state(target, MemberState::Suspect, incarnation, "probe timed out");
            self.queue_gossip(target.to_string());
        }
        self.begin_suspicion(target, incarnation, now);
    }

    /// Our own suspicion of `target` at `incarnation`: probed directly and through helpers
    /// until it answers or the suspicion timeout declares it dead.
    fn begin_suspicion(&mut self, target: &str, incarnation: u64, now: Instant) {
        self.suspicions.insert(
            target.to_string(),
            LocalSuspicion {
                incarnation,
                deadline: now + self.config.suspicion_timeout,
                next_direct: now,
                next_indirect: now,
                indirect_rounds: 0,
                refused: 0,
                refused_to_helpers: 0,
                refusal_confirmed: false,
                last_indirect: None,
            },
        );
        self.run_suspicions(now);
    }

    /// Our interface is back after none was usable: members that died in our view meanwhile
    /// are suspected again and probed now. The suspicion is gossiped: it makes them refute it
    /// (only a higher incarnation turns a suspect alive again).
    pub(super) fn doubt_deaths_while_linkless(&mut self, now: Instant) {
        for target in std::mem::take(&mut self.deaths_while_linkless) {
            let Some(incarnation) = self
                .members
                .get(&target)
                .filter(|m| m.state == MemberState::Dead)
                .map(|m| m.incarnation)
            else {
                continue;
            };
            self.stats.doubted_deaths += 1;
            self.set_state(
                &target,
                MemberState::Suspect,
                incarnation,
                "died while our own links were down",
            );
            self.queue_gossip(target.clone());
            self.begin_suspicion(&target, incarnation, now);
        }
    }

    /// The host of a suspected member refused a connection to its speaker, ours or a
    /// helper's. A dead process is confirmed by two observers instead of by the suspicion
    /// timeout: our refused probe and a helper's, or (with nobody to help) two of ours.
    pub(super) fn refusal(&mut self, target: &str, by_helper: bool, now: Instant) {
        let helpers = self
            .members
            .iter()
            .filter(|(n, m)| m.state.is_live() && n.as_str() != target && n.as_str() != self.node)
            .count();
        let Some(suspicion) = self.suspicions.get_mut(target) else {
            return;
        };
        if by_helper {
            suspicion.refused_to_helpers += 1;
        } else {
            suspicion.refused += 1;
        }
        let confirmed =
            suspicion.refused > 0 && (suspicion.refused_to_helpers > 0 || (helpers == 0 && suspicion.refused > 1));
        if confirmed {
            suspicion.deadline = now;
            suspicion.refusal_confirmed = true;
        } else if !by_helper && suspicion.last_indirect.is_some_and(|t| t < now) {
            // The helpers were asked before our first refusal (the suspicion began with a reset
            // or a timeout): their connections may have failed the same way. Ask again now.
            suspicion.next_indirect = now;
        }
        self.run_suspicions(now);
    }

    pub(super) fn run_suspicions(&mut self, now: Instant) {
        let mut dead = Vec::new();
        let mut direct = Vec::new();
        let mut indirect = Vec::new();
        let half = self.config.suspicion_timeout / INDIRECT_ROUNDS;
        for (target, suspicion) in self.suspicions.iter_mut() {
            if now >= suspicion.deadline {
                dead.push((target.clone(), suspicion.incarnation, suspicion.refusal_confirmed));
                continue;
            }
            if now >= suspicion.next_direct {
                suspicion.next_direct = now + self.config.suspicion_probe_interval;
                direct.push((target.clone(), suspicion.deadline));
            }
            if suspicion.indirect_rounds < INDIRECT_ROUNDS && now >= suspicion.next_indirect {
                suspicion.indirect_rounds += 1;
                suspicion.next_indirect = now + half;
                suspicion.last_indirect = Some(now);
                indirect.push((target.clone(), suspicion.deadline));
            }
        }
        let mut declared = Vec::new();
        for (target, incarnation, refused) in dead {
            self.suspicions.remove(&target);
            let still_current = self
                .members
                .get(&target)
                .is_some_and(|m| m.state.is_live() && m.incarnation == incarnation);
            if still_current {
                self.stats.confirmed_dead += 1;
                let reason = if refused {
                    self.stats.refused_deaths += 1;
                    "its host refused connections to the speaker, to us and to a helper"
                } else {
                    "no ack, direct or indirect, within the suspicion timeout"
                };
                self.set_state(&target, MemberState::Dead, incarnation, reason);
                if let Some(member) = self.members.get_mut(&target) {
                    member.host_up = refused;
                }
                self.queue_gossip(target.clone());
                declared.push(target);
            }
        }
        if !declared.is_empty() {
            self.announce_deaths(&declared, now);
        }
        for (target, deadline) in direct {
            self.send_probe(&target, now, deadline);
        }
        for (target, deadline) in indirect {
            self.send_indirect(&target, now, deadline);
        }
    }

    /// Tells every live member at once about deaths we declared, instead of waiting for the
    /// news to ride on ordinary messages (up to a slow probe interval away): every node's
    /// dataplane must drain a lost node's backends at about the same time, or a node that
    /// receives tunnelled flows picks differently from the owner that sent them.
    pub(super) fn announce_deaths(&mut self, dead: &[String], now: Instant) {
        self.ping_live_members(dead, now, self.config.probe_timeout);
    }

    /// Probes each closely watched member that is due. A member heard from within the last
    /// interval (its own probe of us, an Ack, any message) has shown it is alive as well as an
    /// Ack would: its probe waits until an interval after that. A lost member is still probed
    /// at most an interval after its last sign of life, and two nodes that watch each other
    /// take turns instead of both probing (half the probes).
    pub(super) fn probe_watched(&mut self, now: Instant) {
        let interval = self.config.watch_probe_interval;
        let members = &self.members;
        let due: Vec<String> = self
            .watch
            .iter_mut()
            .filter(|(_, next)| now >= **next)
            .filter_map(|(node, next)| {
                let heard = members.get(node).and_then(|member| member.last_heard);
                if let Some(heard) = heard
                    && heard + interval > now
                {
                    *next = heard + interval;
                    return None;
                }
                *next += interval;
                if *next < now {
                    *next = now + interval;
                }
                Some(node.clone())
            })
            .collect();
        for node in due {
            let live = self.members.get(&node).is_some_and(|m| m.state.is_live());
            if live && !self.suspicions.contains_key(&node) {
                let expire = now + self.config.probe_timeout + self.config.suspicion_timeout;
                self.send_probe(&node, now, expire);
            }
        }
    }

    /// A tick long after the probe schedule was due means this process could not run (frozen
    /// by SIGSTOP, a paused VM, starved): long enough, and peers may have declared us dead and
    /// taken our IPs without our ever reading the claim (the suspicions queued for us are
    /// read first, and our refutation of them brings us back in their views). Counted as if
    /// they had told us, so the IPs we own are announced again; a false alarm costs a
    /// gratuitous ARP.
    /// Only once settled: before that the schedule may wait on a peer list, and this node
    /// owns nothing to announce again.
    pub(super) fn notice_stall(&mut self, now: Instant) {
        if !self.settled() {
            return;
        }
        let Some(due) = self.watch.values().copied().chain(self.slow_next).min() else {
            return;
        };
        let late = now.saturating_duration_since(due);
        if late > self.config.probe_timeout + self.config.suspicion_timeout {
            self.stats.stalls += 1;
            self.view_dirty = true;
            tracing::info!(
                node = %self.node,
                late_ms = late.as_millis() as u64,
                "this speaker could not run for longer than peers take to declare a node dead: it will announce its IPs again"
            );
        }
    }

    pub(super) fn probe_round_robin(&mut self, now: Instant) {
        let Some(next) = self.slow_next else { return };
        if now < next {
            return;
        }
        self.slow_next = Some(now + self.config.probe_interval);
        // Skip members watched closely (unless dead: those are probed here), left ones and
        // those under suspicion; try at most one full round.
        for _ in 0..=self.members.len() {
            let target = match self.slow_order.pop() {
                Some(t) => t,
                None => {
                    self.slow_order = self.members.keys().cloned().collect();
                    self.slow_order.shuffle(&mut self.rng);
                    match self.slow_order.pop() {
                        Some(t) => t,
                        None => return,
                    }
                }
            };
            let Some(member) = self.members.get(&target) else {
                continue;
            };
            let skip = member.state == MemberState::Left
                || (member.state.is_live() && self.watch.contains_key(&target))
                || self.suspicions.contains_key(&target);
            if !skip {
                let expire = now + self.config.probe_timeout + self.config.suspicion_timeout;
                self.send_probe(&target, now, expire);
                return;
            }
        }
    }

    // ----- sending -----

    pub(super) fn next_request_id(&mut self) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        id
    }

    pub(super) fn send_probe(&mut self, target: &str, now: Instant, expire_at: Instant) {
        let Some((address, incarnation)) = self.members.get(target).map(|m| (m.address, m.incarnation)) else {
            return;
        };
        let fail_at = now + self.config.probe_timeout;
        let expire_at = expire_at.max(fail_at);
        let probe = Pending::Probe {
            target: target.to_string(),
            incarnation,
            sent_at: now,
            fail_at,
            expire_at,
            failed: false,
        };
        self.send_ping(target, address, probe, &[], expire_at - now);
    }

    pub(super) fn send_indirect(&mut self, target: &str, now: Instant, expire_at: Instant) {
        let Some(target_address) = self.members.get(target).map(|m| m.address) else {
            return;
        };
        let candidates: Vec<String> = self.live_members().filter(|n| n != target).collect();
        let helpers: Vec<String> = candidates
            .sample(&mut self.rng, self.config.indirect_probes)
            .cloned()
            .collect();
        // The helper waits for the target at most three quarters of what is left of our wait, so
        // its answer ("unreachable" included) arrives before we give up on it: a helper whose
        // answer always came late looked stalled and lost its connection (see the transport).
        let left = expire_at.saturating_duration_since(now);
        let relay_wait = self.config.probe_timeout.min(left - left / 4);
        let timeout_ms = u32::try_from(relay_wait.as_millis()).unwrap_or(u32::MAX);
        for helper in helpers {
            let Some(address) = self.members.get(&helper).map(|m| m.address) else {
                continue;
            };
            let id = self.next_request_id();
            self.pending.insert(
                id,
                Pending::Indirect {
                    target: target.to_string(),
                    expire_at,
                },
            );
            let message = self.message(
                Some(&helper),
                Body::PingReq(pb::PingReq {
                    target: target.to_string(),
                    target_address: target_address.to_string(),
                    timeout_ms,
                }),
            );
            self.effects.push(Effect::Request {
                id,
                to: helper,
                address,
                rpc: Rpc::PingReq,
                message,
                timeout: expire_at.saturating_duration_since(now),
            });
        }
    }

    pub(super) fn request_sync(&mut self, target: &str, now: Instant, initial: bool) {
        let Some(address) = self.members.get(target).map(|m| m.address) else {
            return;
        };
        let id = self.next_request_id();
        let timeout = self.config.probe_timeout * 4;
        self.pending.insert(
            id,
            Pending::Exchange {
                expire_at: now + timeout,
                initial,
            },
        );
        let mut message = self.message(Some(target), Body::SyncRequest(pb::SyncRequest::default()));
        message.body = Some(Body::SyncRequest(pb::SyncRequest {
            members: self.full_state(),
        }));
        self.effects.push(Effect::Request {
            id,
            to: target.to_string(),
            address,
            rpc: Rpc::Sync,
            message,
            timeout,
        });
    }

    /// A Ping only for the news it carries (and what the Ack brings back), with the states of
    /// `news` in it whatever their gossip budget says.
    pub(super) fn request_ping_exchange(
        &mut self,
        target: &str,
        address: SocketAddr,
        news: &[String],
        now: Instant,
        timeout: Duration,
    ) {
        let exchange = Pending::Exchange {
            expire_at: now + timeout,
            initial: false,
        };
        self.send_ping(target, address, exchange, news, timeout);
    }

    /// Sends a Ping with our gossip, and the states of `news`, to `target`, awaited as
    /// `pending`.
    fn send_ping(&mut self, target: &str, address: SocketAddr, pending: Pending, news: &[String], timeout: Duration) {
        let id = self.next_request_id();
        self.pending.insert(id, pending);
        let mut message = self.message(Some(target), Body::Ping(pb::Ping {}));
        for node in news {
            if message.gossip.iter().all(|update| update.node != *node)
                && let Some(member) = self.members.get(node)
            {
                message.gossip.push(update_of(node, member));
            }
        }
        self.effects.push(Effect::Request {
            id,
            to: target.to_string(),
            address,
            rpc: Rpc::Ping,
            message,
            timeout,
        });
    }

    /// Pings every live member directly: our latest state reaches them all at once.
    pub(super) fn ping_every_live_member(&mut self, now: Instant, timeout: Duration) {
        self.ping_live_members(&[], now, timeout);
    }

    /// Pings every live member but those in `news`, with the states of `news` in every
    /// message (the gossip budget alone would carry them to a few members only).
    fn ping_live_members(&mut self, news: &[String], now: Instant, timeout: Duration) {
        let targets: Vec<(String, SocketAddr)> = self
            .members
            .iter()
            .filter(|(n, m)| m.state.is_live() && !news.contains(n))
            .map(|(n, m)| (n.clone(), m.address))
            .collect();
        for (target, address) in targets {
            self.request_ping_exchange(&target, address, news, now, timeout);
        }
    }
}
