use pb::message::Body;

use super::codec::{health_to_pb, state_to_pb};
use super::*;

const A: &str = "node-a";

fn address(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 7946))
}

use crate::membership::sim::healthy;

/// The timings these tests are written for (the defaults are tuned independently).
fn config() -> MembershipConfig {
    MembershipConfig {
        watch_probe_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_millis(120),
        suspicion_timeout: Duration::from_millis(180),
        suspicion_probe_interval: Duration::from_millis(50),
        ..MembershipConfig::default()
    }
}

/// The peer list of [`core`]: `node-b` and `node-c`.
fn listed_peers() -> Vec<Peer> {
    vec![
        Peer {
            node: "node-b".into(),
            address: address(2),
        },
        Peer {
            node: "node-c".into(),
            address: address(3),
        },
    ]
}

/// `node-a` knowing `node-b` and `node-c` from the peer list.
fn core() -> (Core, Instant) {
    let now = Instant::now();
    let mut core = Core::new(config(), A, address(1), 5, healthy(), 7);
    core.set_peers(&listed_peers(), now);
    (core, now)
}

#[test]
fn an_empty_first_peer_list_does_not_leave_the_view_settled() {
    let now = Instant::now();
    let mut core = Core::new(MembershipConfig::default(), A, address(1), 5, healthy(), 7);
    core.set_peers(&[], now);
    core.tick(now);
    assert!(core.view().settled, "alone: settled at once");
    let later = now + Duration::from_millis(10);
    core.set_peers(
        &[Peer {
            node: "node-b".into(),
            address: address(2),
        }],
        later,
    );
    assert!(!core.view().settled, "peers appeared before any contact");
    let sync = requests(&core.take_effects())
        .into_iter()
        .find(|(_, to, rpc)| to == "node-b" && *rpc == Rpc::Sync)
        .expect("initial sync with the new peer");
    let reply = pb::Message {
        sender: "node-b".into(),
        gossip: vec![update("node-b", 1, MemberState::Alive)],
        body: Some(Body::SyncReply(pb::SyncReply::default())),
        ..Default::default()
    };
    core.handle_response(sync.0, reply, later);
    let view = core.view();
    assert!(view.settled);
    assert!(view.health_of("node-b").is_some());
}

fn update(node: &str, incarnation: u64, state: MemberState) -> pb::MemberUpdate {
    let i = node.bytes().last().map_or(9, |b| b - b'a' + 1);
    pb::MemberUpdate {
        node: node.into(),
        address: address(i).to_string(),
        incarnation,
        state: state_to_pb(state) as i32,
        health: Some(health_to_pb(&healthy())),
        rejoining: false,
    }
}

/// A Ping from `sender` (alive at incarnation 1) carrying `gossip`.
fn ping_from(sender: &str, gossip: Vec<pb::MemberUpdate>) -> pb::Message {
    let mut all = vec![update(sender, 1, MemberState::Alive)];
    all.extend(gossip);
    pb::Message {
        sender: sender.into(),
        gossip: all,
        body: Some(Body::Ping(pb::Ping {})),
        ..Default::default()
    }
}

fn ack_from(sender: &str, incarnation: u64) -> pb::Message {
    pb::Message {
        sender: sender.into(),
        gossip: vec![update(sender, incarnation, MemberState::Alive)],
        body: Some(Body::Ack(pb::Ack {})),
        ..Default::default()
    }
}

fn requests(effects: &[Effect]) -> Vec<(RequestId, String, Rpc)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Request { id, to, rpc, .. } => Some((*id, to.clone(), *rpc)),
            Effect::Reply { .. } => None,
        })
        .collect()
}

#[test]
fn updates_follow_incarnation_order() {
    let (mut core, now) = core();
    let gossip = |core: &mut Core, u: pb::MemberUpdate| {
        core.handle_request(ping_from("node-c", vec![u]), now);
    };
    gossip(&mut core, update("node-b", 3, MemberState::Alive));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Alive));
    gossip(&mut core, update("node-b", 3, MemberState::Suspect));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
    // Same incarnation: Alive does not clear a suspicion; a refutation (higher) does.
    gossip(&mut core, update("node-b", 3, MemberState::Alive));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
    gossip(&mut core, update("node-b", 4, MemberState::Alive));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Alive));
    // Stale news is ignored.
    gossip(&mut core, update("node-b", 2, MemberState::Dead));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Alive));
    gossip(&mut core, update("node-b", 4, MemberState::Dead));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Dead));
    gossip(&mut core, update("node-b", 4, MemberState::Alive));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Dead));
    // Back from the dead with a higher incarnation: alive again, and a full sync with it.
    core.take_effects();
    gossip(&mut core, update("node-b", 5, MemberState::Alive));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Alive));
    let sent = requests(&core.take_effects());
    assert!(sent.iter().any(|(_, to, rpc)| to == "node-b" && *rpc == Rpc::Sync));
    gossip(&mut core, update("node-b", 5, MemberState::Left));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Left));
    gossip(&mut core, update("node-b", 5, MemberState::Dead));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Left));
}

#[test]
fn claims_about_itself_are_refuted_and_the_claimer_is_told() {
    let (mut core, now) = core();
    let before = core.incarnation();
    let reply = core.handle_request(ping_from("node-b", vec![update(A, before, MemberState::Suspect)]), now);
    assert_eq!(core.incarnation(), before + 1);
    assert_eq!(core.view().presumed_dead, 0, "a suspicion moves no IP");
    assert_eq!(core.stats().refutations, 1);
    let Inbound::Reply(reply) = reply else {
        panic!("a ping is answered at once");
    };
    assert_eq!(reply.gossip[0].node, A);
    assert_eq!(reply.gossip[0].incarnation, before + 1);
    let sent = requests(&core.take_effects());
    assert!(sent.iter().any(|(_, to, rpc)| to == "node-b" && *rpc == Rpc::Ping));
    // An old claim does not raise it again, but node-c believed it dead and may have taken
    // its IPs (a frozen speaker reads the suspicions queued for it before the deaths): the
    // view says so, once per incarnation claimed dead.
    core.handle_request(ping_from("node-c", vec![update(A, before, MemberState::Dead)]), now);
    assert_eq!(core.incarnation(), before + 1);
    assert_eq!(core.view().presumed_dead, 1);
    core.handle_request(ping_from("node-b", vec![update(A, before, MemberState::Dead)]), now);
    assert_eq!(core.view().presumed_dead, 1, "the same claim again");
    // A current claim that it died: refuted, and counted.
    core.handle_request(ping_from("node-c", vec![update(A, before + 1, MemberState::Dead)]), now);
    assert_eq!(core.incarnation(), before + 2);
    assert_eq!(core.view().presumed_dead, 2);
}

#[test]
fn dead_claim_about_a_member_heard_from_just_now_is_downgraded() {
    let (mut core, now) = core();
    core.handle_request(ping_from("node-b", vec![]), now);
    let later = now + Duration::from_millis(50);
    core.handle_request(ping_from("node-c", vec![update("node-b", 1, MemberState::Dead)]), later);
    assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
    // Long after the last contact the claim stands.
    let much_later = now + Duration::from_secs(2);
    core.handle_request(
        ping_from("node-c", vec![update("node-b", 2, MemberState::Dead)]),
        much_later,
    );
    assert_eq!(core.member_state("node-b"), Some(MemberState::Dead));
}

/// Ticks every 5 ms from `from` for `span`, answering nothing.
fn run(core: &mut Core, from: Instant, span: Duration) -> Vec<Effect> {
    let mut effects = Vec::new();
    let mut t = from;
    while t <= from + span {
        core.tick(t);
        effects.extend(core.take_effects());
        t += Duration::from_millis(5);
    }
    effects
}

#[test]
fn unanswered_probes_suspect_then_kill_a_watched_member() {
    let (mut core, now) = core();
    core.watch_closely(&["node-b".to_string()].into(), now);
    let effects = run(&mut core, now, Duration::from_millis(240));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
    // Indirect probes went to the only other member.
    assert!(
        requests(&effects)
            .iter()
            .any(|(_, to, rpc)| to == "node-c" && *rpc == Rpc::PingReq)
    );
    run(&mut core, now + Duration::from_millis(245), Duration::from_millis(300));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Dead));
    assert_eq!(core.stats().confirmed_dead, 1);
    assert!(
        !core.view().members["node-b"].host_up,
        "silence says nothing of the host"
    );
}

#[test]
fn a_watched_member_heard_from_within_the_interval_is_not_probed_until_it_falls_silent() {
    let (mut core, now) = core();
    let interval = config().watch_probe_interval;
    core.watch_closely(&["node-b".to_string()].into(), now);
    // node-b probes us every 60 ms (it watches us): each is as good as an Ack.
    let mut t = now;
    let mut probes_of_b = 0;
    while t < now + Duration::from_secs(1) {
        if (t - now).as_millis() % 60 == 0 {
            let _reply = core.handle_request(ping_from("node-b", vec![]), t);
        }
        core.tick(t);
        for (id, to, rpc) in requests(&core.take_effects()) {
            match (to.as_str(), rpc) {
                ("node-b", Rpc::Ping) => probes_of_b += 1,
                // node-c is alive too (its death would be news for node-b).
                ("node-c", Rpc::Ping) => core.handle_response(id, ack_from("node-c", 1), t),
                _ => {}
            }
        }
        t += Duration::from_millis(5);
    }
    assert_eq!(
        probes_of_b, 0,
        "node-b was heard from every 60 ms, the interval is {interval:?}"
    );
    // Silent from now on: probed at most an interval after it was last heard from.
    let last_heard = now + Duration::from_millis(960);
    let effects = run(&mut core, t, interval);
    assert!(
        requests(&effects)
            .iter()
            .any(|(_, to, rpc)| to == "node-b" && *rpc == Rpc::Ping),
        "no probe by {:?} after node-b fell silent",
        t + interval - last_heard
    );
}

#[test]
fn a_stall_longer_than_a_death_takes_counts_as_presumed_dead() {
    let (mut core, now) = core();
    core.watch_closely(&["node-b".to_string()].into(), now);
    // Before the view settles nothing is owned: a late first tick counts nothing.
    let t = now + Duration::from_secs(1);
    core.tick(t);
    assert_eq!(core.view().presumed_dead, 0, "not settled yet");
    // Every peer answers; ticks come as the runtime gives them, at most 5 ms apart.
    let run_answered = |core: &mut Core, from: Instant, span: Duration| {
        let mut t = from;
        while t <= from + span {
            core.tick(t);
            for (id, to, rpc) in requests(&core.take_effects()) {
                let reply = match rpc {
                    Rpc::Sync => pb::Message {
                        sender: to.clone(),
                        gossip: vec![update(&to, 1, MemberState::Alive)],
                        body: Some(Body::SyncReply(pb::SyncReply::default())),
                        ..Default::default()
                    },
                    _ => ack_from(&to, 1),
                };
                core.handle_response(id, reply, t);
            }
            t += Duration::from_millis(5);
        }
        t
    };
    let t = run_answered(&mut core, t, Duration::from_secs(2));
    assert!(core.view().settled);
    assert_eq!(core.view().presumed_dead, 0, "ticks on time");
    // Frozen for longer than a probe timeout and a suspicion take (300 ms here).
    let thawed = t + Duration::from_millis(400);
    run_answered(&mut core, thawed, Duration::from_secs(1));
    assert_eq!(core.view().presumed_dead, 1, "one stall, counted once");
    assert_eq!(core.stats().stalls, 1);
}

#[test]
fn a_death_we_declare_reaches_every_live_member_at_once() {
    let now = Instant::now();
    let mut core = Core::new(config(), A, address(1), 5, healthy(), 7);
    let peers: Vec<Peer> = (0..40u8)
        .map(|i| Peer {
            node: format!("peer-{i:02}-x"),
            address: address(10 + i),
        })
        .collect();
    core.set_peers(&peers, now);
    core.watch_closely(&["peer-00-x".to_string()].into(), now);
    let mut t = now;
    let mut told = BTreeSet::new();
    while told.is_empty() {
        assert!(t < now + Duration::from_secs(2), "peer-00-x never declared dead");
        t += Duration::from_millis(5);
        core.tick(t);
        let effects = core.take_effects();
        if core.member_state("peer-00-x") == Some(MemberState::Dead) {
            for effect in effects {
                if let Effect::Request { to, message, .. } = effect
                    && message
                        .gossip
                        .iter()
                        .any(|u| u.node == "peer-00-x" && u.state == state_to_pb(MemberState::Dead) as i32)
                {
                    told.insert(to);
                }
            }
            break;
        }
        // Everybody else answers: only peer-00-x is silent.
        for (id, to, rpc) in requests(&effects) {
            if rpc == Rpc::Ping && to != "peer-00-x" {
                core.handle_response(id, ack_from(&to, 1), t);
            }
        }
    }
    assert_eq!(told.len(), 39, "told at once: {told:?}");
}

/// Ticks only at the core's next deadline (at most every 5 ms), as the runtime does;
/// returns the effects and how many ticks it took.
fn run_at_deadlines(core: &mut Core, from: Instant, span: Duration) -> (Vec<Effect>, usize) {
    let (mut effects, mut ticks, mut last) = (Vec::new(), 0, None::<Instant>);
    while let Some(deadline) = core.next_deadline(last.unwrap_or(from)) {
        let t = last.map_or(deadline, |last| deadline.max(last + Duration::from_millis(5)));
        if t > from + span {
            break;
        }
        core.tick(t);
        effects.extend(core.take_effects());
        (ticks, last) = (ticks + 1, Some(t));
    }
    (effects, ticks)
}

#[test]
fn ticking_at_the_next_deadline_does_what_ticking_every_5_ms_does() {
    let (mut every, now) = core();
    let (mut at_deadlines, _) = core();
    for core in [&mut every, &mut at_deadlines] {
        core.watch_closely(&["node-b".to_string()].into(), now);
    }
    let span = Duration::from_millis(1_500);
    let by_grid = run(&mut every, now, span);
    let (by_deadline, ticks) = run_at_deadlines(&mut at_deadlines, now, span);
    // The same requests; the order of two due within the same 5 ms may differ.
    let sent = |effects: &[Effect]| -> Vec<(String, Rpc)> {
        let mut sent: Vec<(String, Rpc)> = requests(effects).into_iter().map(|(_, to, rpc)| (to, rpc)).collect();
        sent.sort();
        sent
    };
    assert_eq!(sent(&by_deadline), sent(&by_grid));
    assert_eq!(at_deadlines.member_state("node-b"), Some(MemberState::Dead));
    assert_eq!(at_deadlines.stats(), every.stats());
    assert!(ticks * 4 < 300, "{ticks} ticks instead of 300");
}

fn ping_req_result(sender: &str, target: &str, reachable: bool, refused: bool) -> pb::Message {
    pb::Message {
        sender: sender.into(),
        gossip: vec![update(sender, 1, MemberState::Alive)],
        body: Some(Body::PingReqResult(pb::PingReqResult {
            target: target.into(),
            reachable,
            refused,
        })),
        ..Default::default()
    }
}

/// The first probe of the watched `node-b` is refused; returns the PingReqs then sent and
/// the time of the refusal.
fn refused_probe(core: &mut Core, now: Instant) -> (Vec<RequestId>, Instant) {
    core.watch_closely(&["node-b".to_string()].into(), now);
    // The first probe goes out within one interval (at a random phase).
    let now = now + config().watch_probe_interval;
    core.tick(now);
    let (probe, _, _) = requests(&core.take_effects())
        .into_iter()
        .find(|(_, to, rpc)| to == "node-b" && *rpc == Rpc::Ping)
        .expect("a probe");
    core.handle_failure(probe, CallFailure::Refused, now + Duration::from_millis(1));
    let asked: Vec<RequestId> = requests(&core.take_effects())
        .into_iter()
        .filter(|(_, to, rpc)| to == "node-c" && *rpc == Rpc::PingReq)
        .map(|(id, _, _)| id)
        .collect();
    assert!(!asked.is_empty(), "a refusal asks the helpers at once");
    (asked, now + Duration::from_millis(1))
}

#[test]
fn a_refused_probe_confirmed_by_a_helper_kills_at_once() {
    let (mut core, start) = core();
    let (asked, now) = refused_probe(&mut core, start);
    assert_eq!(
        core.member_state("node-b"),
        Some(MemberState::Suspect),
        "one refusal alone is not enough"
    );
    core.handle_response(
        asked[0],
        ping_req_result("node-c", "node-b", false, true),
        now + Duration::from_millis(3),
    );
    assert_eq!(core.member_state("node-b"), Some(MemberState::Dead));
    assert_eq!((core.stats().confirmed_dead, core.stats().refused_deaths), (1, 1));
    assert!(
        core.view().members["node-b"].host_up,
        "its node is up, only the speaker died"
    );
}

#[test]
fn a_refused_probe_the_helper_cannot_confirm_waits_for_the_suspicion_timeout() {
    let config = config();
    for helper_says in [
        ping_req_result("node-c", "node-b", false, false),
        ping_req_result("node-c", "node-b", true, false),
    ] {
        let (mut core, start) = core();
        let reachable = matches!(&helper_says.body, Some(Body::PingReqResult(r)) if r.reachable);
        let (asked, now) = refused_probe(&mut core, start);
        // A helper that timed out (a partition between it and the target) confirms nothing;
        // one that reached the target clears the suspicion.
        core.handle_response(asked[0], helper_says, now + Duration::from_millis(3));
        let before_deadline = now + config.suspicion_timeout - Duration::from_millis(5);
        run(
            &mut core,
            now + Duration::from_millis(5),
            before_deadline - now - Duration::from_millis(5),
        );
        assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
        assert_eq!(core.stats().suspicions_cleared, u64::from(reachable));
        assert_eq!(core.stats().refused_deaths, 0);
    }
}

#[test]
fn a_late_ack_during_suspicion_prevents_the_death() {
    let (mut core, now) = core();
    core.watch_closely(&["node-b".to_string()].into(), now);
    let effects = run(&mut core, now, Duration::from_millis(240));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
    let (first_probe, _, _) = requests(&effects)
        .into_iter()
        .find(|(_, to, rpc)| to == "node-b" && *rpc == Rpc::Ping)
        .expect("a probe");
    // The answer to the first probe arrives after its timeout (an overloaded peer), and
    // from then on the peer answers every probe at once.
    let mut t = now + Duration::from_millis(245);
    core.handle_response(first_probe, ack_from("node-b", 1), t);
    while t < now + Duration::from_secs(1) {
        core.tick(t);
        for (id, to, rpc) in requests(&core.take_effects()) {
            if to == "node-b" && rpc == Rpc::Ping {
                core.handle_response(id, ack_from("node-b", 1), t);
            }
        }
        t += Duration::from_millis(5);
    }
    assert_eq!(core.member_state("node-b"), Some(MemberState::Alive));
    // (node-c, which never answers, is rightly declared dead meanwhile.)
    let events = core.take_events();
    assert!(
        !events.iter().any(|e| e.node == "node-b" && e.to == MemberState::Dead),
        "{events:?}"
    );
}

/// A link that just came back carries nothing from `node-b` to us yet, but its refutation
/// reaches us through `node-c`: the probes still out from the suspicion it refuted must not
/// suspect the new incarnation one after another (each raising another refutation), while a
/// probe sent after the refutation still counts.
#[test]
fn probes_sent_before_a_refutation_do_not_suspect_the_refuted_incarnation() {
    let (mut core, now) = core();
    core.watch_closely(&["node-b".to_string()].into(), now);
    let effects = run(&mut core, now, Duration::from_millis(240));
    assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
    let outstanding = requests(&effects)
        .iter()
        .filter(|(id, to, rpc)| {
            to == "node-b"
                && *rpc == Rpc::Ping
                && matches!(core.pending.get(id), Some(Pending::Probe { failed: false, .. }))
        })
        .count();
    assert!(outstanding >= 1, "a probe of the suspicion is still out");
    let refuted_at = now + Duration::from_millis(245);
    core.handle_request(
        ping_from("node-c", vec![update("node-b", 9, MemberState::Alive)]),
        refuted_at,
    );
    assert_eq!(core.member_state("node-b"), Some(MemberState::Alive));
    core.take_events();
    // Every probe sent before the refutation times out within probe_timeout (120 ms); none
    // sent after it can have yet.
    run(&mut core, refuted_at, Duration::from_millis(115));
    assert_eq!(
        core.member_state("node-b"),
        Some(MemberState::Alive),
        "{:?}",
        core.take_events()
    );
    // Silence after the refutation is suspected as before.
    run(
        &mut core,
        refuted_at + Duration::from_millis(120),
        Duration::from_millis(200),
    );
    assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect));
    assert!(
        core.take_events()
            .iter()
            .any(|e| e.node == "node-b" && e.to == MemberState::Suspect && e.incarnation == 9)
    );
}

/// A helper answers before we give up on it, "unreachable" included: late answers made a
/// healthy helper's connection look stalled (the transport drops those).
#[test]
fn a_helper_is_asked_to_wait_less_than_we_wait_for_it() {
    let (mut core, now) = core();
    core.watch_closely(&["node-b".to_string()].into(), now);
    let effects = run(&mut core, now, Duration::from_millis(300));
    let asks: Vec<(Duration, Duration)> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Request {
                rpc: Rpc::PingReq,
                message,
                timeout,
                ..
            } => match &message.body {
                Some(Body::PingReq(ask)) => Some((Duration::from_millis(ask.timeout_ms.into()), *timeout)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert!(asks.len() >= 2, "both indirect rounds ran: {asks:?}");
    for (helper_waits, we_wait) in asks {
        assert!(helper_waits <= config().probe_timeout);
        assert!(
            helper_waits < we_wait,
            "helper waits {helper_waits:?}, we wait {we_wait:?}"
        );
    }
}

#[test]
fn ping_req_is_relayed_and_answered() {
    let (mut core, now) = core();
    let request = pb::Message {
        sender: "node-b".into(),
        gossip: vec![update("node-b", 1, MemberState::Alive)],
        body: Some(Body::PingReq(pb::PingReq {
            target: "node-c".into(),
            target_address: address(3).to_string(),
            timeout_ms: 100,
        })),
        ..Default::default()
    };
    let Inbound::Deferred(token) = core.handle_request(request.clone(), now) else {
        panic!("a ping-req is answered later");
    };
    let effects = core.take_effects();
    let (relayed, _, _) = requests(&effects)
        .into_iter()
        .find(|(_, to, rpc)| to == "node-c" && *rpc == Rpc::Ping)
        .expect("relayed ping");
    core.handle_response(relayed, ack_from("node-c", 1), now);
    let replies: Vec<_> = core
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Reply { token, message } => Some((token, message.body)),
            Effect::Request { .. } => None,
        })
        .collect();
    assert_eq!(
        replies,
        vec![(
            token,
            Some(Body::PingReqResult(pb::PingReqResult {
                target: "node-c".into(),
                reachable: true,
                refused: false,
            }))
        )]
    );
    // Unanswered: reported unreachable after the timeout.
    let Inbound::Deferred(token) = core.handle_request(request, now) else {
        panic!("deferred");
    };
    core.take_effects();
    core.tick(now + Duration::from_millis(120));
    let unreachable = core.take_effects().into_iter().any(|e| {
        matches!(e, Effect::Reply { token: t, message } if t == token
        && message.body == Some(Body::PingReqResult(pb::PingReqResult {
            target: "node-c".into(),
            reachable: false,
            refused: false,
        })))
    });
    assert!(unreachable);
}

#[test]
fn health_change_raises_the_incarnation_and_leave_raises_it_again() {
    let (mut core, now) = core();
    let before = core.incarnation();
    core.set_local_health(healthy(), now);
    assert_eq!(core.incarnation(), before, "no change, no new incarnation");
    core.set_local_health(NodeHealth::default(), now);
    assert_eq!(core.incarnation(), before + 1);
    // Make node-b live and known, then leave: every live member is told.
    core.handle_request(ping_from("node-b", vec![]), now);
    core.take_effects();
    core.leave(now);
    assert_eq!(core.incarnation(), before + 2);
    let sent = requests(&core.take_effects());
    assert!(sent.iter().any(|(_, to, _)| to == "node-b"));
    assert!(sent.iter().any(|(_, to, _)| to == "node-c"));
    assert_eq!(core.view().members[A].state, MemberState::Left);
}

#[test]
fn gossip_with_bad_address_or_state_is_ignored() {
    let (mut core, now) = core();
    let mut bad_address = update("node-x", 1, MemberState::Alive);
    bad_address.address = "not an address".into();
    let mut bad_state = update("node-y", 1, MemberState::Alive);
    bad_state.state = 42;
    core.handle_request(ping_from("node-b", vec![bad_address, bad_state]), now);
    assert_eq!(core.member_state("node-x"), None);
    assert_eq!(core.member_state("node-y"), None);
    assert_eq!(core.stats().invalid_updates, 2);
}

#[test]
fn a_ping_req_about_a_stranger_dials_nobody() {
    let (mut core, now) = core();
    core.take_effects();
    let request = pb::Message {
        sender: "node-b".into(),
        gossip: vec![update("node-b", 1, MemberState::Alive)],
        body: Some(Body::PingReq(pb::PingReq {
            target: "somewhere".into(),
            target_address: "192.0.2.1:22".into(),
            timeout_ms: 100,
        })),
        ..Default::default()
    };
    let Inbound::Deferred(token) = core.handle_request(request, now) else {
        panic!("deferred");
    };
    let effects = core.take_effects();
    assert!(
        requests(&effects).is_empty(),
        "nothing dialled: {:?}",
        requests(&effects)
    );
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Reply { token: t, message } if *t == token
        && matches!(&message.body, Some(Body::PingReqResult(r)) if !r.reachable)))
    );
    // A known target is probed at the address we know, whatever the caller says.
    let request = pb::Message {
        sender: "node-b".into(),
        body: Some(Body::PingReq(pb::PingReq {
            target: "node-c".into(),
            target_address: "192.0.2.1:22".into(),
            timeout_ms: 100,
        })),
        ..Default::default()
    };
    core.handle_request(request, now);
    let dialled: Vec<SocketAddr> = core
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Request { address, .. } => Some(address),
            Effect::Reply { .. } => None,
        })
        .collect();
    assert_eq!(dialled, vec![address(3)]);
}

#[test]
fn absurd_incarnations_are_ignored_and_a_refutation_cannot_overflow() {
    let (mut core, now) = core();
    core.handle_request(
        ping_from("node-b", vec![update("node-c", u64::MAX, MemberState::Dead)]),
        now,
    );
    assert_eq!(core.member_state("node-c"), Some(MemberState::Alive));
    core.handle_request(
        ping_from("node-b", vec![update(A, u64::MAX, MemberState::Suspect)]),
        now,
    );
    assert_eq!(core.incarnation(), 5, "no refutation of a nonsense claim");
    assert_eq!(core.stats().invalid_updates, 2);
    core.handle_request(
        ping_from("node-b", vec![update(A, MAX_INCARNATION, MemberState::Suspect)]),
        now,
    );
    assert_eq!(core.incarnation(), MAX_INCARNATION + 1);
}

#[test]
fn members_only_gossip_names_are_bounded_and_forgotten_once_dead() {
    let (mut core, now) = core();
    let ghost = |i: usize, state| pb::MemberUpdate {
        node: format!("ghost-{i}"),
        address: SocketAddr::from(([10, 1, (i / 256) as u8, (i % 256) as u8], 7946)).to_string(),
        ..update("node-z", 1, state)
    };
    let strangers: Vec<pb::MemberUpdate> = (0..MAX_UNLISTED_MEMBERS + 100)
        .map(|i| ghost(i, MemberState::Alive))
        .collect();
    for chunk in strangers.chunks(50) {
        core.handle_request(ping_from("node-b", chunk.to_vec()), now);
    }
    let known = core.view().members.len();
    assert_eq!(known, 3 + MAX_UNLISTED_MEMBERS, "a, b, c and the bound");
    assert_eq!(core.stats().unlisted_ignored, 100);
    // Once dead, members nobody lists are forgotten at the next peer list.
    let dead: Vec<pb::MemberUpdate> = (0..MAX_UNLISTED_MEMBERS).map(|i| ghost(i, MemberState::Dead)).collect();
    for chunk in dead.chunks(50) {
        core.handle_request(ping_from("node-b", chunk.to_vec()), now);
    }
    core.set_peers(&listed_peers(), now);
    assert_eq!(core.view().members.len(), 3);
}

/// The initial Syncs `core` has outstanding.
fn initial_sync_requests(core: &mut Core) -> Vec<RequestId> {
    requests(&core.take_effects())
        .into_iter()
        .filter(|(_, _, rpc)| *rpc == Rpc::Sync)
        .map(|(id, _, _)| id)
        .collect()
}

#[test]
fn silence_does_not_settle_the_view_until_the_settle_alone_time() {
    let (mut core, now) = core();
    core.tick(now);
    let mut at = now;
    // Peers starting too: their hosts refuse, then time out; the speaker keeps asking.
    for round in 0..5 {
        let ids = initial_sync_requests(&mut core);
        assert!(!ids.is_empty(), "round {round}: asked again");
        for (i, id) in ids.into_iter().enumerate() {
            let failure = if i == 0 {
                CallFailure::Refused
            } else {
                CallFailure::Other
            };
            core.handle_failure(id, failure, at);
        }
        assert!(!core.view().settled, "round {round}: silence is no answer");
        at += core.config.probe_interval;
        core.tick(at);
    }
    // One answer settles it at once.
    let id = initial_sync_requests(&mut core)[0];
    let reply = pb::Message {
        sender: "node-b".into(),
        gossip: vec![update("node-b", 1, MemberState::Alive)],
        body: Some(Body::SyncReply(pb::SyncReply::default())),
        ..Default::default()
    };
    core.handle_response(id, reply, at);
    assert!(core.view().settled);
}

#[test]
fn after_the_settle_alone_time_silence_settles_and_the_first_contact_is_a_full_sync() {
    let (mut core, now) = core();
    core.tick(now);
    let mut at = now;
    while !core.view().settled {
        assert!(at - now <= core.config.settle_alone_after + core.config.probe_interval * 2);
        for id in initial_sync_requests(&mut core) {
            core.handle_failure(id, CallFailure::Other, at);
        }
        at += core.config.probe_interval;
        core.tick(at);
    }
    assert!(
        at - now >= core.config.settle_alone_after,
        "settled alone after {:?}",
        at - now
    );
    core.take_effects();
    // node-c's speaker comes up and pings: this node asks it for everything it knows.
    core.handle_request(ping_from("node-c", vec![]), at);
    let sent = requests(&core.take_effects());
    assert!(
        sent.iter().any(|(_, to, rpc)| to == "node-c" && *rpc == Rpc::Sync),
        "{sent:?}"
    );
}

/// Our cable was pulled: every peer fell silent and died in our view. When the link is back,
/// those deaths are doubted (suspected again and probed at once), so this node does not take
/// every IP before the peers' first messages arrive; a death seen with our links up stands.
#[test]
fn deaths_seen_while_our_links_were_down_are_doubted_when_one_comes_back() {
    for answers in [true, false] {
        let (mut core, now) = core();
        core.handle_request(ping_from("node-b", vec![update("node-c", 1, MemberState::Dead)]), now);
        core.take_effects();
        assert_eq!(
            core.member_state("node-c"),
            Some(MemberState::Dead),
            "died with our links up"
        );

        let linkless = NodeHealth {
            interfaces: Default::default(),
            ..healthy()
        };
        core.set_local_health(linkless, now);
        core.watch_closely(&["node-b".to_string()].into(), now);
        run(&mut core, now, Duration::from_millis(600));
        assert_eq!(core.member_state("node-b"), Some(MemberState::Dead));

        let back = now + Duration::from_millis(700);
        core.set_local_health(healthy(), back);
        assert_eq!(core.member_state("node-b"), Some(MemberState::Suspect), "doubted");
        assert_eq!(core.member_state("node-c"), Some(MemberState::Dead), "not doubted");
        assert_eq!(core.stats().doubted_deaths, 1);
        let probes = requests(&core.take_effects());
        assert!(
            probes.iter().any(|(_, to, rpc)| to == "node-b" && *rpc == Rpc::Ping),
            "probed at once: {probes:?}"
        );

        let mut t = back;
        while t < back + Duration::from_millis(500) {
            core.tick(t);
            for (id, to, rpc) in requests(&core.take_effects()) {
                // Our probe told it of the suspicion: it answers with its refutation.
                if answers && to == "node-b" && rpc == Rpc::Ping {
                    core.handle_response(id, ack_from("node-b", 2), t);
                }
            }
            t += Duration::from_millis(5);
        }
        let want = if answers { MemberState::Alive } else { MemberState::Dead };
        assert_eq!(core.member_state("node-b"), Some(want), "answers: {answers}");
    }
}
