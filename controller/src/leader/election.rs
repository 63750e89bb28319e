//! The leader-election decision, without I/O: given the Lease as read, the time it was read, our
//! identity and the timing, what to write next and whether we lead.
//!
//! # Rules (those of client-go's `leaderelection`, which Kubernetes components use)
//! - Nobody trusts another process's clock. A Lease held by someone else expires
//!   `leaseDurationSeconds` after *we* last saw it change (its record or its `resourceVersion`),
//!   measured on our monotonic clock; its `renewTime` is only for humans. A skewed or stopped
//!   wall clock elsewhere can thus neither shorten nor lengthen a term.
//! - A leader renews every retry period. It leads until `renew deadline` after the *start* of
//!   its last successful write; past that it has stepped down, even if a write is still on its
//!   way, and it leads again only once a later write succeeds.
//! - Every write is a create or a replace at the `resourceVersion` read, so of two candidates
//!   that decide on the same read only one write succeeds.
//!
//! Why two leaders cannot overlap: a candidate takes over no earlier than `lease duration` after
//! it saw our last successful write land, which is after we started it; we stop writing at
//! `renew deadline` after we started it, and `renew deadline < lease duration`. The gap covers
//! writes already sent when we stop.

use std::fmt;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use thiserror::Error;

/// What a `coordination.k8s.io/v1` Lease says about its holder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `holderIdentity`; `None` (or empty) when released.
    pub holder: Option<String>,
    /// `leaseDurationSeconds`; `None` if unset or not positive.
    pub lease_duration: Option<Duration>,
    pub acquire_time: Option<Timestamp>,
    pub renew_time: Option<Timestamp>,
    /// `leaseTransitions`: how many times the holder changed.
    pub transitions: i32,
}

impl LeaseRecord {
    /// The holder, if the Lease names one.
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref().filter(|h| !h.is_empty())
    }
}

/// A Lease as read: its record and the `resourceVersion` a replace must name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadLease {
    pub version: String,
    pub record: LeaseRecord,
}

/// Lease duration, renew deadline and retry period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long others wait after the Lease last changed before they take it.
    pub lease_duration: Duration,
    /// How long a leader keeps writing after the start of its last successful renewal.
    pub renew_deadline: Duration,
    /// How often a leader renews and a standby looks at the Lease.
    pub retry_period: Duration,
}

impl Default for Timing {
    /// Kubernetes components' defaults: 15 s, 10 s, 2 s.
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Timing that cannot keep two leaders apart or cannot renew in time.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TimingError {
    #[error("the retry period must be positive")]
    ZeroRetry,
    #[error("the lease duration ({lease:?}) must be longer than the renew deadline ({renew:?})")]
    LeaseNotLongerThanRenew { lease: Duration, renew: Duration },
    #[error("the renew deadline ({renew:?}) must be longer than the retry period ({retry:?})")]
    RenewNotLongerThanRetry { renew: Duration, retry: Duration },
}

impl Timing {
    /// `lease duration > renew deadline > retry period > 0`.
    pub fn check(&self) -> Result<(), TimingError> {
        if self.retry_period.is_zero() {
            return Err(TimingError::ZeroRetry);
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(TimingError::LeaseNotLongerThanRenew {
                lease: self.lease_duration,
                renew: self.renew_deadline,
            });
        }
        if self.renew_deadline <= self.retry_period {
            return Err(TimingError::RenewNotLongerThanRetry {
                renew: self.renew_deadline,
                retry: self.retry_period,
            });
        }
        Ok(())
    }

    /// The lease duration as the Lease spells it: whole seconds, rounded up (others then wait
    /// at least as long as we were told to make them).
    pub fn lease_seconds(&self) -> i32 {
        let secs = self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
    }
}

/// The write to make after a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease exists: create it naming us.
    Create(LeaseRecord),
    /// The Lease is free, expired, or names us while we do not lead: replace it (at the version
    /// read) naming us.
    Acquire(LeaseRecord),
    /// We lead: replace it (at the version read) with a fresh `renewTime`.
    Renew(LeaseRecord),
    /// Someone else holds a valid Lease; it expires at `expires_at` unless it changes.
    Wait { holder: String, expires_at: Instant },
}

impl Step {
    /// The record to write, if any.
    pub fn record(&self) -> Option<&LeaseRecord> {
        match self {
            Step::Create(r) | Step::Acquire(r) | Step::Renew(r) => Some(r),
            Step::Wait { .. } => None,
        }
    }
}

/// A change of role, for logs, Events and the gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Acquired,
    Lost(LossReason),
}

/// Why a leader stepped down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// No renewal succeeded within the renew deadline.
    RenewDeadline { deadline: Duration },
    /// The Lease names someone else.
    Superseded { holder: Option<String> },
    /// We gave the Lease up (shutdown).
    Released,
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossReason::RenewDeadline { deadline } => write!(f, "no renewal succeeded within {deadline:?}"),
            LossReason::Superseded { holder: Some(h) } => write!(f, "the Lease names {h}"),
            LossReason::Superseded { holder: None } => f.write_str("the Lease was released by someone else"),
            LossReason::Released => f.write_str("released the Lease"),
        }
    }
}

/// One candidate's view of the election.
#[derive(Clone, Debug)]
pub struct Elector {
    identity: String,
    timing: Timing,
    /// The Lease as last read and when we first saw it so (our clock).
    observed: Option<(ReadLease, Instant)>,
    /// While we lead: the start of our last successful write.
    renewed_at: Option<Instant>,
}

impl Elector {
    pub fn new(identity: impl Into<String>, timing: Timing) -> Self {
        Elector {
            identity: identity.into(),
            timing,
            observed: None,
            renewed_at: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Until when we may write (exclusive), if we lead.
    pub fn leading_until(&self) -> Option<Instant> {
        self.renewed_at.map(|at| at + self.timing.renew_deadline)
    }

    /// Whether we lead at `now`.
    pub fn is_leading(&self, now: Instant) -> bool {
        self.leading_until().is_some_and(|until| now < until)
    }

    /// Steps down if the renew deadline has passed.
    pub fn poll(&mut self, now: Instant) -> Option<Change> {
        if self.renewed_at.is_some() && !self.is_leading(now) {
            self.renewed_at = None;
            return Some(Change::Lost(LossReason::RenewDeadline {
                deadline: self.timing.renew_deadline,
            }));
        }
        None
    }

    /// Decides what to write after reading `lease` at `now` (`wall`: the wall clock, written
    /// into the Lease for humans only). Returns the step and, if reading it ended our term, why.
    pub fn decide(&mut self, lease: Option<&ReadLease>, now: Instant, wall: Timestamp) -> (Step, Option<Change>) {
        let mut change = self.poll(now);
        let Some(lease) = lease else {
            self.observed = None;
            return (Step::Create(self.claim(None, wall)), change);
        };
        if self.observed.as_ref().is_none_or(|(seen, _)| seen != lease) {
            self.observed = Some((lease.clone(), now));
        }
        let seen_at = self.observed.as_ref().map_or(now, |(_, at)| *at);
        let record = &lease.record;
        match record.holder() {
            Some(holder) if holder == self.identity => {
                if self.is_leading(now) {
                    let mut renewed = record.clone();
                    renewed.renew_time = Some(wall);
                    renewed.lease_duration = Some(Duration::from_secs(self.timing.lease_seconds() as u64));
                    (Step::Renew(renewed), change)
                } else {
                    // Ours (a write we gave up on landed, or our term lapsed): take it back. The
                    // replace at this version fails if anyone wrote since.
                    (Step::Acquire(self.claim(Some(record), wall)), change)
                }
            }
            Some(holder) => {
                if self.renewed_at.take().is_some() {
                    change = Some(Change::Lost(LossReason::Superseded {
                        holder: Some(holder.to_string()),
                    }));
                }
                let duration = record.lease_duration.unwrap_or(self.timing.lease_duration);
                let expires_at = seen_at + duration;
                if now >= expires_at {
                    (Step::Acquire(self.claim(Some(record), wall)), change)
                } else {
                    (
                        Step::Wait {
                            holder: holder.to_string(),
                            expires_at,
                        },
                        change,
                    )
                }
            }
            None => {
                if self.renewed_at.take().is_some() {
                    change = Some(Change::Lost(LossReason::Superseded { holder: None }));
                }
                (Step::Acquire(self.claim(Some(record), wall)), change)
            }
        }
    }

    /// A record naming us, taking over `previous` (counting a transition if it named another).
    fn claim(&self, previous: Option<&LeaseRecord>, wall: Timestamp) -> LeaseRecord {
        let transitions = match previous {
            None => 0,
            Some(p) if p.holder() == Some(self.identity.as_str()) => p.transitions,
            Some(p) => p.transitions.saturating_add(1),
        };
        let acquire_time = match previous {
            Some(p) if p.holder() == Some(self.identity.as_str()) && p.acquire_time.is_some() => p.acquire_time,
            _ => Some(wall),
        };
        LeaseRecord {
            holder: Some(self.identity.clone()),
            lease_duration: Some(Duration::from_secs(self.timing.lease_seconds() as u64)),
            acquire_time,
            renew_time: Some(wall),
            transitions,
        }
    }

    /// The write of `step`, started at `started`, succeeded at `now` and left the Lease at
    /// `written`. Returns the changes of role, in order: a term that lapsed meanwhile ends
    /// ([`Change::Lost`]) before this write starts a new one ([`Change::Acquired`]). A write that
    /// took longer than the renew deadline does not make us lead (we may have been replaced).
    pub fn succeeded(&mut self, step: &Step, written: ReadLease, started: Instant, now: Instant) -> Vec<Change> {
        let mut changes: Vec<Change> = self.poll(now).into_iter().collect();
        if step.record().is_none() {
            return changes;
        }
        // Our own write is a change others measure from; so do we.
        self.observed = Some((written, now));
        // Writes are sequential, so a term still running started no later than this write:
        // if this write is too old to lead on, `poll` has just ended that term.
        if started + self.timing.renew_deadline <= now {
            return changes;
        }
        let was_leading = self.renewed_at.is_some();
        self.renewed_at = Some(self.renewed_at.map_or(started, |at| at.max(started)));
        if !was_leading {
            changes.push(Change::Acquired);
        }
        changes
    }

    /// The record that gives the Lease up, if `lease` (as just read) still names us. Stops our
    /// term at once, before the write: nothing may be written after a release is sent.
    pub fn release(&mut self, lease: &ReadLease, wall: Timestamp) -> Option<LeaseRecord> {
        self.renewed_at = None;
        if lease.record.holder() != Some(self.identity.as_str()) {
            return None;
        }
        Some(LeaseRecord {
            holder: None,
            // client-go writes 1 s: the minimum the API accepts.
            lease_duration: Some(Duration::from_secs(1)),
            acquire_time: lease.record.acquire_time,
            renew_time: Some(wall),
            transitions: lease.record.transitions,
        })
    }

    /// When to read the Lease next after `step`, decided at `now`: a leader renews every retry
    /// period; a standby looks every retry period, or right when the holder's term ends if that
    /// is sooner.
    pub fn next_attempt(&self, step: &Step, now: Instant) -> Instant {
        let regular = now + self.timing.retry_period;
        match step {
            Step::Wait { expires_at, .. } => regular.min(*expires_at).max(now),
            _ => regular,
        }
    }
}

#[cfg(test)]
mod tests;
