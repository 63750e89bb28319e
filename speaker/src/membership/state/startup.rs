//! Start-up: the first full-state exchanges with listed peers, settling the view (with peers,
//! or alone after the settle time), the warning while it does not settle, and rejoining
//! after being cut off from most of the cluster.
use std::time::Instant;

use rand::seq::SliceRandom;

use super::{Core, Pending, Startup, Syncing, UNSETTLED_WARN_EVERY};
use crate::membership::MemberState;

impl Core {
    pub(super) fn start(&mut self, now: Instant) {
        self.startup = Startup::Syncing(Syncing::since(now));
        self.slow_next = Some(now + self.random_duration(self.config.probe_interval));
        self.next_sync = Some(now + self.config.sync_interval);
        self.send_initial_syncs(now);
    }

    /// Whether the protocol runs (peers were listed and the first tick came).
    pub(super) fn started(&self) -> bool {
        matches!(self.startup, Startup::Syncing(_) | Startup::Settled)
    }

    pub(super) fn settled(&self) -> bool {
        matches!(self.startup, Startup::Settled)
    }

    /// When to ask peers for their state again: every initial sync ended without settling.
    pub(super) fn initial_sync_retry(&self) -> Option<Instant> {
        match &self.startup {
            Startup::Syncing(syncing) => syncing.retry_at.filter(|_| self.initial_syncs_out() == 0),
            _ => None,
        }
    }

    /// Initial syncs still waiting for an answer.
    fn initial_syncs_out(&self) -> usize {
        self.pending
            .values()
            .filter(|p| matches!(p, Pending::Exchange { initial: true, .. }))
            .count()
    }

    pub(super) fn send_initial_syncs(&mut self, now: Instant) {
        let mut peers: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.state != MemberState::Left)
            .map(|(n, _)| n.clone())
            .collect();
        peers.shuffle(&mut self.rng);
        peers.truncate(self.config.initial_sync_peers);
        if peers.is_empty() {
            self.settle();
            return;
        }
        for peer in &peers {
            self.request_sync(peer, now, true);
        }
        if let Startup::Syncing(syncing) = &mut self.startup {
            syncing.failed_plainly = false;
            syncing.retry_at = None;
        }
    }

    /// An initial sync ended without an answer. Silence is not an answer: peers starting at
    /// the same time (a fresh install) do not listen yet, and a node that settled alone would
    /// announce everything. Once all have ended, the speaker asks again (other peers, at
    /// random) every probe interval, and settles alone only after
    /// [`MembershipConfig::settle_alone_after`] of silence (every other speaker really down,
    /// or this node cut off). Refusals as unauthenticated never settle it: a speaker that
    /// nobody accepts (wrong key) is not alone.
    /// Called once the failed request is no longer pending.
    pub(super) fn initial_sync_failed(&mut self, now: Instant, rejected: bool) {
        let others_out = self.initial_syncs_out() > 0;
        let Startup::Syncing(syncing) = &mut self.startup else {
            return;
        };
        if !rejected {
            syncing.failed_plainly = true;
        }
        if others_out {
            return;
        }
        let waited = now.saturating_duration_since(syncing.since);
        if syncing.failed_plainly && waited >= self.config.settle_alone_after {
            tracing::warn!(
                node = %self.node,
                waited_ms = waited.as_millis() as u64,
                "no peer answered: settling alone (every other speaker is down, or this node is cut off)"
            );
            self.settle();
            return;
        }
        if !syncing.failed_plainly {
            tracing::warn!(
                node = %self.node,
                "every peer asked for its state rejected our messages (is the shared key the same?); not settling"
            );
        }
        syncing.retry_at = Some(now + self.config.probe_interval);
    }

    pub(super) fn settle(&mut self) {
        if !self.settled() {
            self.startup = Startup::Settled;
            self.view_dirty = true;
        }
    }

    pub(super) fn warn_if_unsettled(&mut self, now: Instant) {
        let Startup::Syncing(syncing) = &mut self.startup else {
            return;
        };
        let last = syncing.warned.unwrap_or(syncing.since);
        if now.saturating_duration_since(last) < UNSETTLED_WARN_EVERY {
            return;
        }
        syncing.warned = Some(now);
        let (waited, retry_scheduled) = (now.saturating_duration_since(syncing.since), syncing.retry_at.is_some());
        tracing::warn!(
            node = %self.node,
            waited_s = waited.as_secs(),
            initial_syncs = self.initial_syncs_out(),
            retry_scheduled,
            had_contact = self.had_contact,
            members = self.members.len(),
            "membership view not settled yet: this speaker stays unready and announces nothing until the first state exchange with a peer ends"
        );
    }

    pub(super) fn track_rejoin(&mut self, now: Instant) {
        let hold = self.config.rejoin_hold;
        if !hold.is_zero()
            && let Some((present, dead)) = self.cut_off()
        {
            if self.rejoining_until.is_none() {
                self.incarnation += 1;
                self.queue_gossip(self.node.clone());
                self.view_dirty = true;
                tracing::info!(
                    node = %self.node,
                    dead,
                    members = present,
                    hold_ms = hold.as_millis() as u64,
                    "cut off from most of the cluster: once back, this node leaves its IPs to the others until the hold ends"
                );
            }
            self.rejoining_until = Some(now + hold);
        } else if self.rejoining_until.is_some_and(|until| now >= until) {
            self.rejoining_until = None;
            self.incarnation += 1;
            self.queue_gossip(self.node.clone());
            self.view_dirty = true;
            tracing::info!(node = %self.node, "rejoin hold over: this node takes back the IPs it ranks first for");
            // Tell everyone at once, as a leave does: this node announces from now on, and the
            // current owners must stop now, not when a slow probe carries the news.
            self.ping_every_live_member(now, self.config.probe_timeout);
        }
    }

    /// Follows whether we are cut off from most of the cluster (more than half of the
    /// non-departed members, this node included, dead in our view): from then on and for the
    /// hold time after it ends, this node says it is rejoining. It says so before anyone can
    /// hear it, so its first message across the healed link (whatever raised its incarnation:
    /// a refutation, or its interface coming back) already carries it.
    /// Most members (counting ourselves, not counting those that left) are dead to us: the
    /// members present and the dead, if so.
    pub(super) fn cut_off(&self) -> Option<(usize, usize)> {
        let (present, dead) = self.members.values().fold((1, 0), |(present, dead), m| match m.state {
            MemberState::Left => (present, dead),
            MemberState::Dead => (present + 1, dead + 1),
            MemberState::Alive | MemberState::Suspect => (present + 1, dead),
        });
        (dead * 2 > present).then_some((present, dead))
    }
}
