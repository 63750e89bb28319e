//! Leader election: one replica writes, the others stand by with their allocator current.
//!
//! - [`election`]: the pure decision (acquire, renew, expiry, step-down) on a simulated clock.
//! - [`Leadership`]: the gate every write to the cluster passes. It closes by itself at the renew
//!   deadline (it holds an instant, not a flag the loop must remember to clear), so a leader that
//!   cannot renew stops writing on time even if the election loop is stuck in a request.
//! - [`run`]: the loop around the decision, with kube-rs at the edge: `get`, then `create` or
//!   `replace` at the `resourceVersion` read (a write based on a stale read fails with 409), so two
//!   candidates can never both win. Logs and Events (reason `LeaderElection`, on the Lease) on
//!   every change; the `herald_controller_leader` gauge.
//!
//! A new term starts with a hook that runs before the gate opens (the reconciler re-syncs its
//! allocator from every Service's status there), then the gate opens.

pub mod election;

use std::fmt;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use tokio::sync::watch;

pub use election::{Change, Elector, LeaseRecord, LossReason, ReadLease, Step, Timing, TimingError};

use crate::metrics::Metrics;

/// Event reason on the Lease, as Kubernetes components use it.
pub const LEADER_ELECTION: &str = "LeaderElection";

/// What this replica does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Writes: allocates, writes statuses, Events and the speaker key.
    Leader,
    /// Keeps its allocator current from Services' statuses and writes nothing.
    Standby,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Standby => "standby",
        })
    }
}

/// The write gate, shared by every writer.
#[derive(Debug)]
pub struct Leadership {
    identity: String,
    /// `None`: no election, always leads.
    until: Option<Mutex<Option<Instant>>>,
    role: watch::Sender<Role>,
}

impl Leadership {
    /// Leader election off: this replica always writes.
    pub fn unelected(identity: impl Into<String>) -> Arc<Self> {
        Arc::new(Leadership {
            identity: identity.into(),
            until: None,
            role: watch::Sender::new(Role::Leader),
        })
    }

    /// Leader election on: standby until [`run`] wins a term.
    pub fn elected(identity: impl Into<String>) -> Arc<Self> {
        Arc::new(Leadership {
            identity: identity.into(),
            until: Some(Mutex::new(None)),
            role: watch::Sender::new(Role::Standby),
        })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether a write may be sent now. Ask right before each write.
    pub fn may_write(&self) -> bool {
        match &self.until {
            None => true,
            Some(until) => until.lock().expect("leadership lock").is_some_and(|u| now() < u),
        }
    }

    /// The role as of now (a lapsed term is standby even before the loop notices).
    pub fn role(&self) -> Role {
        if self.may_write() { Role::Leader } else { Role::Standby }
    }

    /// Role changes, as the election loop reports them.
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    fn set_until(&self, until: Option<Instant>) {
        if let Some(cell) = &self.until {
            *cell.lock().expect("leadership lock") = until;
        }
    }
}

/// Where the Lease lives and how to contend for it.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub namespace: String,
    pub lease_name: String,
    pub timing: Timing,
}

/// This replica's identity: the pod name (or hostname) and a random suffix, so a restarted
/// process never mistakes its predecessor's term for its own.
pub fn identity(pod_name: Option<&str>) -> String {
    let base = pod_name
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| herald_config::deploy::CONTROLLER.to_string());
    let mut bytes = [0u8; 5];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        bytes[..4].copy_from_slice(&(nanos ^ std::process::id()).to_le_bytes());
    }
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{base}_{suffix}")
}

/// The monotonic clock (tokio's, so tests with a paused clock see the same time).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Contends for the Lease until `stop` turns true, then gives it up if held. `on_acquire` runs
/// at the start of every term, before the gate opens. Problems with the API are logged and
/// retried every retry period; they never end the loop.
pub async fn run(
    client: Client,
    config: ElectionConfig,
    leadership: Arc<Leadership>,
    metrics: Arc<Metrics>,
    on_acquire: impl Fn() + Send + Sync,
    mut stop: watch::Receiver<bool>,
) {
    let mut lock = LeaseLock {
        api: Api::namespaced(client.clone(), &config.namespace),
        name: config.lease_name.clone(),
        last: None,
        client,
        reporter: Reporter {
            controller: herald_config::deploy::CONTROLLER.into(),
            instance: Some(leadership.identity().to_string()),
        },
    };
    let mut elector = Elector::new(leadership.identity(), config.timing);
    tracing::info!(
        identity = elector.identity(),
        lease = %format!("{}/{}", config.namespace, config.lease_name),
        "standing by; contending for the Lease"
    );
    let report = Announcer {
        leadership: &leadership,
        metrics: &metrics,
        on_acquire: &on_acquire,
    };
    while !*stop.borrow() {
        let started = now();
        // While leading, the cycle must finish before the term ends; otherwise within the renew
        // deadline (a hung request must not keep the loop from noticing anything).
        let budget = elector
            .leading_until()
            .map_or(config.timing.renew_deadline, |until| {
                until.saturating_duration_since(started)
            })
            .max(Duration::from_millis(1));
        let cycle = tokio::time::timeout(budget, lock.attempt(&mut elector, started));
        let (step, changes) = match cycle.await {
            Ok(Ok((step, changes))) => (Some(step), changes),
            Ok(Err(e)) => {
                tracing::warn!(lease = %config.lease_name, error = %e, "leader election: Lease request failed");
                (None, Vec::new())
            }
            Err(_) => {
                tracing::warn!(lease = %config.lease_name, timeout = ?budget, "leader election: Lease request timed out");
                (None, Vec::new())
            }
        };
        let mut changes = changes;
        changes.extend(elector.poll(now()));
        for change in changes {
            report.change(&mut lock, &change, elector.leading_until()).await;
        }
        // A renewal within the term moves the gate's deadline.
        leadership.set_until(elector.leading_until());
        let next = match &step {
            Some(step) => elector.next_attempt(step, now()),
            None => now() + config.timing.retry_period,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
            _ = stop.changed() => {}
        }
    }
    // Shutdown: nothing is written after this point; give the Lease up so a standby need not
    // wait for it to expire.
    let was_leading = elector.is_leading(now());
    leadership.set_until(None);
    let released = tokio::time::timeout(config.timing.retry_period, lock.release(&mut elector)).await;
    match released {
        Ok(Ok(true)) => tracing::info!(identity = elector.identity(), "released the Lease"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the Lease; a standby takes over when it expires"),
        Err(_) => tracing::warn!("releasing the Lease timed out; a standby takes over when it expires"),
    }
    if was_leading {
        report
            .change(&mut lock, &Change::Lost(LossReason::Released), None)
            .await;
    }
}

/// Applies changes of role: hook, gate, metric, log, Event.
struct Announcer<'a, F> {
    leadership: &'a Leadership,
    metrics: &'a Metrics,
    on_acquire: &'a F,
}

impl<F: Fn()> Announcer<'_, F> {
    async fn change(&self, lock: &mut LeaseLock, change: &Change, until: Option<Instant>) {
        let identity = self.leadership.identity();
        match change {
            Change::Acquired => {
                // Before the gate opens: nothing writes until the hook has run.
                (self.on_acquire)();
                self.leadership.set_until(until);
                self.metrics.leader.set(1);
                self.leadership.role.send_replace(Role::Leader);
                tracing::info!(identity, lease = %lock.name, "became leader");
                lock.event(EventType::Normal, "Acquire", format!("{identity} became leader"))
                    .await;
            }
            Change::Lost(reason) => {
                self.leadership.set_until(None);
                self.metrics.leader.set(0);
                self.leadership.role.send_replace(Role::Standby);
                let type_ = match reason {
                    LossReason::Released => EventType::Normal,
                    _ => EventType::Warning,
                };
                if type_ == EventType::Warning {
                    tracing::warn!(identity, lease = %lock.name, %reason, "stopped leading; standing by");
                } else {
                    tracing::info!(identity, lease = %lock.name, %reason, "stopped leading");
                }
                lock.event(type_, "Release", format!("{identity} stopped leading: {reason}"))
                    .await;
            }
        }
    }
}

/// The Lease through kube-rs.
struct LeaseLock {
    api: Api<Lease>,
    name: String,
    /// The Lease as last read or written, for Events' `regarding`.
    last: Option<Lease>,
    client: Client,
    reporter: Reporter,
}

impl LeaseLock {
    /// Read, decide, write.
    async fn attempt(&mut self, elector: &mut Elector, started: Instant) -> Result<(Step, Vec<Change>), kube::Error> {
        let lease = self.api.get_opt(&self.name).await?;
        let read = lease.as_ref().map(to_read);
        self.last = lease.clone();
        let (step, change) = elector.decide(read.as_ref(), now(), Timestamp::now());
        let mut changes: Vec<Change> = change.into_iter().collect();
        let written = match &step {
            Step::Wait { .. } => return Ok((step, changes)),
            Step::Create(record) => self.api.create(&PostParams::default(), &self.lease(record, None)).await,
            Step::Acquire(record) | Step::Renew(record) => {
                let version = read.as_ref().map(|r| r.version.clone());
                self.api
                    .replace(&self.name, &PostParams::default(), &self.lease(record, version))
                    .await
            }
        };
        match written {
            Ok(lease) => {
                changes.extend(elector.succeeded(&step, to_read(&lease), started, now()));
                self.last = Some(lease);
                Ok((step, changes))
            }
            // Someone wrote since our read (or created it first): they won this round.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(lease = %self.name, "Lease changed under us; reading again");
                Ok((step, changes))
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if it names us. Returns whether it did.
    async fn release(&mut self, elector: &mut Elector) -> Result<bool, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let read = to_read(&lease);
        let Some(record) = elector.release(&read, Timestamp::now()) else {
            return Ok(false);
        };
        self.api
            .replace(
                &self.name,
                &PostParams::default(),
                &self.lease(&record, Some(read.version)),
            )
            .await?;
        Ok(true)
    }

    fn lease(&self, record: &LeaseRecord, version: Option<String>) -> Lease {
        let base = self.last.clone().unwrap_or_default();
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: version,
                managed_fields: None,
                ..base.metadata
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(record.holder.clone().unwrap_or_default()),
                lease_duration_seconds: record
                    .lease_duration
                    .map(|d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX)),
                acquire_time: record.acquire_time.map(MicroTime),
                renew_time: record.renew_time.map(MicroTime),
                lease_transitions: Some(record.transitions),
                ..base.spec.unwrap_or_default()
            }),
        }
    }

    async fn event(&self, type_: EventType, action: &str, note: String) {
        let Some(lease) = &self.last else { return };
        let event = Event {
            type_,
            reason: LEADER_ELECTION.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        // Short: a lost term is often a lost API server.
        let regarding = lease.object_ref(&());
        // A fresh Recorder per Event: a kept one would PATCH a repeated note into a series,
        // and the controller may only create Events.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let publish = recorder.publish(&event, &regarding);
        match tokio::time::timeout(Duration::from_secs(2), publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot publish the leader-election Event"),
            Err(_) => tracing::debug!("publishing the leader-election Event timed out"),
        }
    }
}

fn to_read(lease: &Lease) -> ReadLease {
    let spec = lease.spec.clone().unwrap_or_default();
    ReadLease {
        version: lease.metadata.resource_version.clone().unwrap_or_default(),
        record: LeaseRecord {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            lease_duration: spec
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s as u64)),
            acquire_time: spec.acquire_time.map(|t| t.0),
            renew_time: spec.renew_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        },
    }
}
