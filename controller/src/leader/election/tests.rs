//! The election state machine on a simulated clock: acquire, renew, expiry of a silent holder,
//! step-down at the renew deadline, release, clock edge cases, and two candidates racing
//! against an optimistic-concurrency store (never two leaders at once).

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

use super::*;

fn timing() -> Timing {
    Timing::default()
}

fn wall(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn held_by(holder: &str, version: &str, renew: Timestamp) -> ReadLease {
    ReadLease {
        version: version.into(),
        record: LeaseRecord {
            holder: Some(holder.into()),
            lease_duration: Some(secs(15)),
            acquire_time: Some(wall(0)),
            renew_time: Some(renew),
            transitions: 3,
        },
    }
}

/// Writes `step` as the API server would, returning the Lease as written.
fn written(step: &Step, version: &str) -> ReadLease {
    ReadLease {
        version: version.into(),
        record: step.record().expect("a write").clone(),
    }
}

#[test]
fn defaults_are_those_of_kubernetes_components_and_are_sane() {
    let t = Timing::default();
    assert_eq!(
        (t.lease_duration, t.renew_deadline, t.retry_period),
        (secs(15), secs(10), secs(2))
    );
    assert_eq!(t.check(), Ok(()));
    assert_eq!(t.lease_seconds(), 15);
}

#[test]
fn timing_that_could_let_two_lead_is_refused() {
    let bad = |lease, renew, retry| Timing {
        lease_duration: lease,
        renew_deadline: renew,
        retry_period: retry,
    };
    assert!(matches!(
        bad(secs(10), secs(10), secs(2)).check(),
        Err(TimingError::LeaseNotLongerThanRenew { .. })
    ));
    assert!(matches!(
        bad(secs(15), secs(2), secs(2)).check(),
        Err(TimingError::RenewNotLongerThanRetry { .. })
    ));
    assert_eq!(
        bad(secs(15), secs(10), Duration::ZERO).check(),
        Err(TimingError::ZeroRetry)
    );
    // Sub-second leases round up in the Lease: others wait at least as long as asked.
    assert_eq!(bad(ms(1500), ms(1000), ms(300)).lease_seconds(), 2);
    assert_eq!(bad(ms(200), ms(100), ms(50)).lease_seconds(), 1);
}

#[test]
fn no_lease_is_created_and_the_create_starts_a_term() {
    let t0 = Instant::now();
    let mut me = Elector::new("a", timing());
    let (step, change) = me.decide(None, t0, wall(0));
    assert_eq!(change, None);
    let Step::Create(record) = &step else {
        panic!("{step:?}")
    };
    assert_eq!(record.holder(), Some("a"));
    assert_eq!(record.transitions, 0);
    assert_eq!(record.lease_duration, Some(secs(15)));
    assert_eq!((record.acquire_time, record.renew_time), (Some(wall(0)), Some(wall(0))));
    assert!(!me.is_leading(t0), "not before the write succeeded");
    let changes = me.succeeded(&step, written(&step, "1"), t0, t0 + ms(30));
    assert_eq!(changes, [Change::Acquired]);
    assert!(me.is_leading(t0 + ms(30)));
    assert_eq!(
        me.leading_until(),
        Some(t0 + secs(10)),
        "measured from the write's start"
    );
}

#[test]
fn a_leader_renews_keeping_its_acquire_time_and_transitions() {
    let t0 = Instant::now();
    let mut me = Elector::new("a", timing());
    let (step, _) = me.decide(None, t0, wall(0));
    me.succeeded(&step, written(&step, "1"), t0, t0);
    let lease = written(&step, "1");
    let (step, change) = me.decide(Some(&lease), t0 + secs(2), wall(2));
    assert_eq!(change, None);
    let Step::Renew(record) = &step else { panic!("{step:?}") };
    assert_eq!(record.renew_time, Some(wall(2)));
    assert_eq!(record.acquire_time, Some(wall(0)));
    assert_eq!(record.transitions, 0);
    assert_eq!(me.succeeded(&step, written(&step, "2"), t0 + secs(2), t0 + secs(2)), []);
    assert_eq!(me.leading_until(), Some(t0 + secs(12)));
}

#[test]
fn a_lease_held_by_another_that_stopped_renewing_expires_a_lease_duration_after_we_first_saw_it() {
    let t0 = Instant::now();
    let mut me = Elector::new("b", timing());
    let lease = held_by("a", "7", wall(0));
    let (step, _) = me.decide(Some(&lease), t0, wall(0));
    assert_eq!(
        step,
        Step::Wait {
            holder: "a".into(),
            expires_at: t0 + secs(15)
        }
    );
    // The same version read again does not restart the clock.
    let (step, _) = me.decide(Some(&lease), t0 + secs(10), wall(10));
    assert!(matches!(step, Step::Wait { expires_at, .. } if expires_at == t0 + secs(15)));
    let (step, _) = me.decide(Some(&lease), t0 + secs(15) - Duration::from_nanos(1), wall(15));
    assert!(matches!(step, Step::Wait { .. }), "not a nanosecond early");
    let (step, _) = me.decide(Some(&lease), t0 + secs(15), wall(15));
    let Step::Acquire(record) = &step else {
        panic!("{step:?}")
    };
    assert_eq!(record.holder(), Some("b"));
    assert_eq!(record.transitions, 4, "a change of holder counts");
    assert_eq!(record.acquire_time, Some(wall(15)));
    assert!(!me.is_leading(t0 + secs(15)));
    assert_eq!(
        me.succeeded(&step, written(&step, "8"), t0 + secs(15), t0 + secs(15)),
        [Change::Acquired]
    );
}

#[test]
fn a_renewing_holder_is_never_taken_over_whatever_its_clock_says() {
    let t0 = Instant::now();
    let mut me = Elector::new("b", timing());
    // Its wall clock is a day behind, and then it jumps back further: still renewing.
    for (i, renew) in [wall(-86_400), wall(-86_398), wall(-90_000), wall(-90_000)]
        .into_iter()
        .enumerate()
    {
        let lease = held_by("a", &format!("{i}"), renew);
        let now = t0 + secs(10) * i as u32;
        let (step, _) = me.decide(Some(&lease), now, wall(0));
        assert_eq!(
            step,
            Step::Wait {
                holder: "a".into(),
                expires_at: now + secs(15)
            },
            "read {i}"
        );
    }
}

#[test]
fn a_renew_time_in_the_future_does_not_keep_a_silent_holder_alive() {
    let t0 = Instant::now();
    let mut me = Elector::new("b", timing());
    let lease = held_by("a", "7", wall(86_400 * 365));
    me.decide(Some(&lease), t0, wall(0));
    let (step, _) = me.decide(Some(&lease), t0 + secs(15), wall(15));
    assert!(matches!(step, Step::Acquire(_)), "{step:?}");
}

#[test]
fn the_holders_own_lease_duration_counts_and_a_missing_one_falls_back_to_ours() {
    let t0 = Instant::now();
    let mut me = Elector::new("b", timing());
    let mut lease = held_by("a", "7", wall(0));
    lease.record.lease_duration = Some(secs(60));
    let (step, _) = me.decide(Some(&lease), t0, wall(0));
    assert!(matches!(step, Step::Wait { expires_at, .. } if expires_at == t0 + secs(60)));

    let mut me = Elector::new("b", timing());
    lease.record.lease_duration = None;
    let (step, _) = me.decide(Some(&lease), t0, wall(0));
    assert!(matches!(step, Step::Wait { expires_at, .. } if expires_at == t0 + secs(15)));
}

#[test]
fn a_released_lease_is_taken_at_once() {
    let t0 = Instant::now();
    let mut me = Elector::new("b", timing());
    let mut lease = held_by("a", "7", wall(0));
    lease.record.holder = Some(String::new());
    let (step, _) = me.decide(Some(&lease), t0, wall(0));
    let Step::Acquire(record) = step else {
        panic!("{step:?}")
    };
    assert_eq!(record.transitions, 4);
}

#[test]
fn a_leader_that_cannot_renew_steps_down_at_the_renew_deadline() {
    let t0 = Instant::now();
    let mut me = Elector::new("a", timing());
    let (step, _) = me.decide(None, t0, wall(0));
    me.succeeded(&step, written(&step, "1"), t0, t0 + ms(5));
    assert_eq!(me.poll(t0 + secs(10) - Duration::from_nanos(1)), None);
    assert!(me.is_leading(t0 + secs(10) - Duration::from_nanos(1)));
    assert!(!me.is_leading(t0 + secs(10)), "the gate closes on time, poll or not");
    assert_eq!(
        me.poll(t0 + secs(10)),
        Some(Change::Lost(LossReason::RenewDeadline { deadline: secs(10) }))
    );
    assert_eq!(me.poll(t0 + secs(11)), None, "reported once");
}

#[test]
fn a_renewal_that_lands_after_the_deadline_does_not_extend_the_term() {
    let t0 = Instant::now();
    let mut me = Elector::new("a", timing());
    let (step, _) = me.decide(None, t0, wall(0));
    me.succeeded(&step, written(&step, "1"), t0, t0);
    let lease = written(&step, "1");
    let (step, _) = me.decide(Some(&lease), t0 + secs(2), wall(2));
    assert!(matches!(step, Step::Renew(_)));
    // The renewal started at 2 s returns at 12.5 s: the term ended at 10 s; this write is too
    // old to lead on (a standby may already be counting from it).
    let changes = me.succeeded(&step, written(&step, "2"), t0 + secs(2), t0 + ms(12_500));
    assert_eq!(
        changes,
        [Change::Lost(LossReason::RenewDeadline { deadline: secs(10) })]
    );
    assert!(!me.is_leading(t0 + ms(12_500)));
    // The Lease still names us: the next read takes it back with a fresh write.
    let (step, _) = me.decide(Some(&written(&step, "2")), t0 + ms(12_600), wall(12));
    let Step::Acquire(record) = &step else {
        panic!("{step:?}")
    };
    assert_eq!(record.transitions, 0, "same holder: no transition");
    assert_eq!(record.acquire_time, Some(wall(0)));
    assert_eq!(
        me.succeeded(&step, written(&step, "3"), t0 + ms(12_600), t0 + ms(12_650)),
        [Change::Acquired]
    );
}

#[test]
fn a_lapsed_term_is_reported_lost_before_a_new_one_starts() {
    let t0 = Instant::now();
    let mut me = Elector::new("a", timing());
    let (step, _) = me.decide(None, t0, wall(0));
    me.succeeded(&step, written(&step, "1"), t0, t0);
    // A write started just before the deadline returns just after it.
    let (step, _) = me.decide(Some(&written(&step, "1")), t0 + ms(9_900), wall(9));
    let changes = me.succeeded(&step, written(&step, "2"), t0 + ms(9_900), t0 + ms(10_100));
    assert_eq!(
        changes,
        [
            Change::Lost(LossReason::RenewDeadline { deadline: secs(10) }),
            Change::Acquired
        ]
    );
    assert_eq!(me.leading_until(), Some(t0 + ms(19_900)));
}

#[test]
fn a_leader_that_reads_another_holder_steps_down_at_once() {
    let t0 = Instant::now();
    let mut me = Elector::new("a", timing());
    let (step, _) = me.decide(None, t0, wall(0));
    me.succeeded(&step, written(&step, "1"), t0, t0);
    let (step, change) = me.decide(Some(&held_by("intruder", "9", wall(1))), t0 + secs(2), wall(2));
    assert_eq!(
        change,
        Some(Change::Lost(LossReason::Superseded {
            holder: Some("intruder".into())
        }))
    );
    assert!(!me.is_leading(t0 + secs(2)));
    assert!(matches!(step, Step::Wait { .. }));
}

#[test]
fn a_leader_whose_lease_was_deleted_recreates_it_and_keeps_leading() {
    let t0 = Instant::now();
    let mut me = Elector::new("a", timing());
    let (step, _) = me.decide(None, t0, wall(0));
    me.succeeded(&step, written(&step, "1"), t0, t0);
    let (step, change) = me.decide(None, t0 + secs(2), wall(2));
    assert_eq!(change, None);
    assert!(matches!(step, Step::Create(_)));
    assert_eq!(me.succeeded(&step, written(&step, "5"), t0 + secs(2), t0 + secs(2)), []);
    assert_eq!(me.leading_until(), Some(t0 + secs(12)));
}

#[test]
fn release_clears_the_holder_only_if_the_lease_still_names_us() {
    let t0 = Instant::now();
    let mut me = Elector::new("a", timing());
    let (step, _) = me.decide(None, t0, wall(0));
    me.succeeded(&step, written(&step, "1"), t0, t0);
    let record = me.release(&written(&step, "1"), wall(3)).expect("ours");
    assert_eq!(record.holder(), None);
    assert_eq!(record.lease_duration, Some(secs(1)));
    assert!(!me.is_leading(t0), "no write after deciding to release");
    assert_eq!(me.release(&held_by("b", "2", wall(3)), wall(3)), None);
}

#[test]
fn a_standby_looks_again_when_the_term_ends_if_that_is_sooner_than_a_retry() {
    let t0 = Instant::now();
    let me = Elector::new("b", timing());
    let wait = Step::Wait {
        holder: "a".into(),
        expires_at: t0 + ms(500),
    };
    assert_eq!(me.next_attempt(&wait, t0), t0 + ms(500));
    let wait = Step::Wait {
        holder: "a".into(),
        expires_at: t0 + secs(9),
    };
    assert_eq!(me.next_attempt(&wait, t0), t0 + secs(2));
    let renew = Step::Renew(LeaseRecord::default());
    assert_eq!(me.next_attempt(&renew, t0), t0 + secs(2));
}

/// An API server's view of one Lease: a replace must name the current version.
#[derive(Default)]
struct Store {
    version: u64,
    lease: Option<LeaseRecord>,
}

impl Store {
    fn read(&self) -> Option<ReadLease> {
        self.lease.clone().map(|record| ReadLease {
            version: self.version.to_string(),
            record,
        })
    }

    /// `read`: the version the write was decided on (`None`: a create).
    fn write(&mut self, read: Option<&str>, record: &LeaseRecord) -> Option<ReadLease> {
        let current = self.lease.as_ref().map(|_| self.version.to_string());
        if current.as_deref() != read {
            return None; // 409 Conflict / AlreadyExists
        }
        self.version += 1;
        self.lease = Some(record.clone());
        self.read()
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Read the Lease and decide (the write happens at a later `Write`).
    Read(usize),
    /// Send the write decided at the last `Read`, if any; it succeeds only if nobody wrote since.
    Write(usize),
    /// Time passes for everyone.
    Advance(u64),
    /// The candidate gives the Lease up (read, then release at that version).
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize).prop_map(Op::Read),
        4 => (0..2usize).prop_map(Op::Write),
        4 => (0..4_000u64).prop_map(Op::Advance),
        1 => (0..2usize).prop_map(Op::Release),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the interleaving of reads, slow or lost writes, pauses and releases: the spans in
    /// which each candidate may write never overlap.
    #[test]
    fn two_candidates_never_lead_at_the_same_time(ops in proptest::collection::vec(op(), 1..200)) {
        let t0 = Instant::now();
        let timing = Timing { lease_duration: secs(3), renew_deadline: secs(2), retry_period: ms(500) };
        let mut store = Store::default();
        let mut electors = [Elector::new("a", timing), Elector::new("b", timing)];
        let mut pending: [Option<(Option<String>, Step, Instant)>; 2] = [None, None];
        // Per candidate: [from, until) spans in which it was allowed to write.
        let mut spans: [Vec<(Instant, Instant)>; 2] = [Vec::new(), Vec::new()];
        let mut now = t0;
        for op in ops {
            match op {
                Op::Advance(n) => now += ms(n),
                Op::Read(i) => {
                    let lease = store.read();
                    let (step, _) = electors[i].decide(lease.as_ref(), now, wall(0));
                    pending[i] = Some((lease.map(|l| l.version), step, now));
                }
                Op::Write(i) => {
                    let Some((version, step, started)) = pending[i].take() else { continue };
                    let Some(record) = step.record() else { continue };
                    match store.write(version.as_deref(), record) {
                        Some(lease) => {
                            electors[i].succeeded(&step, lease, started, now);
                            if let Some(until) = electors[i].leading_until().filter(|u| now < *u) {
                                spans[i].push((now, until));
                            }
                        }
                        None => { electors[i].poll(now); }
                    }
                }
                Op::Release(i) => {
                    pending[i] = None;
                    if let Some(lease) = store.read()
                        && let Some(record) = electors[i].release(&lease, wall(0))
                    {
                        store.write(Some(&lease.version), &record);
                    }
                    // Spans end at the release.
                    for span in spans[i].iter_mut().filter(|s| s.1 > now) {
                        span.1 = now.max(span.0);
                    }
                }
            }
        }
        for a in &spans[0] {
            for b in &spans[1] {
                prop_assert!(a.1 <= b.0 || b.1 <= a.0, "a leads {:?}..{:?}, b leads {:?}..{:?}",
                    a.0 - t0, a.1 - t0, b.0 - t0, b.1 - t0);
            }
        }
    }
}
