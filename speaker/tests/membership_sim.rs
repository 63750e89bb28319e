//! Deterministic simulations of speaker membership + election (virtual time, seeded RNG):
//! kill, graceful leave, partition and heal, message loss, slow peers, wrong secret, health.
//! Times asserted here are virtual, so they are exact for a seed and never flaky.
use std::collections::BTreeMap;
use std::time::Duration;

use herald_speaker::election::Unit;
use herald_speaker::membership::sim::{SimConfig, Simulation};
use herald_speaker::membership::{MemberState, MembershipConfig, NodeHealth};

const SETTLE: Duration = Duration::from_secs(3);

fn converged(config: SimConfig) -> Simulation {
    let mut sim = Simulation::new(config);
    let took = sim.run_until_true(SETTLE, |s| s.one_owner_per_unit() && s.views_agree());
    assert!(took.is_some(), "cluster did not converge within {SETTLE:?}");
    // Let the close-watch sets and gossip settle.
    sim.run_for(Duration::from_secs(1));
    assert!(sim.one_owner_per_unit());
    sim
}

/// Kills the owner of the first unit and returns the virtual time until every unit has
/// exactly one running owner again.
fn takeover_after_kill(sim: &mut Simulation) -> Duration {
    let victim = (0..sim.len())
        .find(|i| sim.is_running(*i) && !sim.owned_by(*i).is_empty())
        .expect("some node owns something");
    sim.kill(victim);
    sim.run_until_true(Duration::from_secs(5), Simulation::one_owner_per_unit)
        .expect("takeover within 5 s")
}

#[test]
fn kill_moves_ips_within_500ms_for_3_10_and_50_speakers() {
    for (nodes, seed) in [(3, 1), (3, 2), (10, 3), (10, 4), (50, 5)] {
        let mut sim = converged(SimConfig {
            nodes,
            units: 60,
            seed,
            ..Default::default()
        });
        let took = takeover_after_kill(&mut sim);
        println!("{nodes} speakers, seed {seed}: takeover after kill in {took:?} (virtual)");
        assert!(took < Duration::from_millis(500), "{nodes} speakers: {took:?}");
        let spread = sim
            .run_until_true(Duration::from_secs(5), Simulation::views_agree)
            .expect("every speaker learns of the death");
        println!("  ... and every speaker knew {spread:?} later");
        // The node that declares the death tells everybody at once; a node that heard from
        // the victim within the suspicion timeout doubts the news and confirms it itself.
        let membership = herald_speaker::membership::MembershipConfig::default();
        let limit = membership.probe_timeout + membership.suspicion_timeout + Duration::from_millis(50);
        assert!(spread < limit, "{nodes} speakers: {spread:?} (limit {limit:?})");
        assert!(sim.one_owner_per_unit());
    }
}

#[test]
fn a_crashed_speaker_on_a_live_host_is_confirmed_dead_by_refusals_within_a_watch_interval() {
    let membership = herald_speaker::membership::MembershipConfig::default();
    for (nodes, seed) in [(2, 31), (3, 32), (10, 33)] {
        let mut sim = converged(SimConfig {
            nodes,
            units: 60,
            seed,
            ..Default::default()
        });
        let victim = (0..sim.len())
            .find(|i| !sim.owned_by(*i).is_empty())
            .expect("some node owns something");
        sim.crash(victim);
        let took = sim
            .run_until_true(Duration::from_secs(5), Simulation::one_owner_per_unit)
            .expect("takeover within 5 s");
        println!("{nodes} speakers, seed {seed}: takeover after a crash in {took:?} (virtual)");
        // One watch interval until the next probe, then a few round trips: far below the
        // silence path (probe timeout + suspicion timeout).
        let limit = membership.watch_probe_interval + Duration::from_millis(20);
        assert!(took < limit, "{nodes} speakers: {took:?} (limit {limit:?})");
        let refused: u64 = (0..sim.len())
            .filter(|&i| i != victim)
            .map(|i| sim.core_stats(i).refused_deaths)
            .sum();
        assert!(refused > 0, "the refusals, not the timeout, confirmed it");
    }
}

#[test]
fn a_lost_node_is_never_taken_for_a_crash() {
    // Silence (node loss, a partition) never yields a refusal: the takeover waits for the
    // probe and suspicion timeouts, and nobody counts a refused death.
    let membership = herald_speaker::membership::MembershipConfig::default();
    let mut sim = converged(SimConfig {
        nodes: 5,
        units: 60,
        seed: 34,
        ..Default::default()
    });
    let took = takeover_after_kill(&mut sim);
    assert!(
        took >= membership.probe_timeout + membership.suspicion_timeout,
        "{took:?}"
    );
    assert!((0..sim.len()).all(|i| sim.core_stats(i).refused_deaths == 0));
}

#[test]
fn restarted_speaker_rejoins_and_gets_its_ips_back() {
    let mut sim = converged(SimConfig {
        nodes: 5,
        units: 40,
        seed: 12,
        ..Default::default()
    });
    let victim = (0..5).find(|i| !sim.owned_by(*i).is_empty()).unwrap();
    let owned_before = sim.owned_by(victim).clone();
    takeover_after_kill(&mut sim);
    sim.run_for(Duration::from_secs(1));
    sim.restart(victim);
    let took = sim
        .run_until_true(Duration::from_secs(5), |s| {
            s.one_owner_per_unit() && s.views_agree() && s.owned_by(victim).len() == owned_before.len()
        })
        .expect("rejoin converges");
    println!("restarted speaker rejoined and owned its IPs again after {took:?} (virtual)");
    // Rendezvous hashing: it gets back exactly what it had.
    assert_eq!(sim.owned_by(victim), &owned_before);
}

#[test]
fn graceful_leave_moves_ips_at_once() {
    let mut sim = converged(SimConfig {
        nodes: 5,
        units: 40,
        seed: 11,
        ..Default::default()
    });
    let leaver = (0..5).find(|i| !sim.owned_by(*i).is_empty()).unwrap();
    sim.leave(leaver);
    let took = sim
        .run_until_true(Duration::from_secs(1), Simulation::one_owner_per_unit)
        .expect("leave moves IPs");
    println!("takeover after leave in {took:?} (virtual)");
    assert!(took < Duration::from_millis(20), "{took:?}");
    sim.kill(leaver);
    sim.run_for(Duration::from_secs(2));
    for observer in (0..5).filter(|i| *i != leaver) {
        assert_eq!(sim.state_seen_by(observer, leaver), Some(MemberState::Left));
    }
    assert_eq!(sim.confirmed_deaths(), 0, "a leave is not a death");
}

#[test]
fn partition_elects_on_each_side_and_heal_ends_dual_ownership() {
    for (nodes, seed) in [(6, 21), (20, 22)] {
        let mut sim = converged(SimConfig {
            nodes,
            units: 40,
            seed,
            ..Default::default()
        });
        let side: Vec<usize> = (0..nodes / 2).collect();
        sim.partition(&side);
        sim.run_for(Duration::from_secs(3));
        // Documented behaviour: each side elects among what it sees, one owner per side.
        for (unit, owners) in sim.claims() {
            let left = owners.iter().filter(|i| **i < nodes / 2).count();
            let right = owners.len() - left;
            assert_eq!((left, right), (1, 1), "{unit}: {owners:?}");
        }
        sim.heal();
        let took = sim
            .run_until_true(Duration::from_secs(10), |s| s.one_owner_per_unit() && s.views_agree())
            .expect("heal converges");
        println!("{nodes} speakers: dual ownership ended {took:?} (virtual) after the heal");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
}

#[test]
fn ten_percent_loss_causes_no_false_death_and_kill_still_moves_ips() {
    let mut sim = converged(SimConfig {
        nodes: 8,
        units: 40,
        seed: 31,
        loss: 0.10,
        ..Default::default()
    });
    sim.run_for(Duration::from_secs(120));
    assert_eq!(sim.confirmed_deaths(), 0, "false deaths with 10% loss");
    assert!(sim.one_owner_per_unit());
    let suspicions: u64 = (0..8).map(|i| sim.core_stats(i).suspicions).sum();
    println!("10% loss, 8 speakers, 120 s virtual: {suspicions} suspicions, 0 deaths");
    let took = takeover_after_kill(&mut sim);
    println!("takeover after kill with 10% loss: {took:?} (virtual)");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn twenty_percent_loss_still_converges_after_a_kill() {
    let mut sim = converged(SimConfig {
        nodes: 5,
        units: 20,
        seed: 32,
        loss: 0.20,
        ..Default::default()
    });
    sim.run_for(Duration::from_secs(20));
    let took = takeover_after_kill(&mut sim);
    println!("takeover after kill with 20% loss: {took:?} (virtual)");
}

#[test]
fn slow_peer_near_the_timeout_is_not_declared_dead() {
    // Replies late by up to two thirds of the silence that kills (probe + suspicion timeout).
    let membership = herald_speaker::membership::MembershipConfig::default();
    let silence = (membership.probe_timeout + membership.suspicion_timeout).as_millis() as u64;
    for delay_ms in [silence * 2 / 5, silence * 7 / 15, silence * 2 / 3] {
        let mut sim = converged(SimConfig {
            nodes: 4,
            units: 40,
            seed: 41,
            ..Default::default()
        });
        sim.slow_down(1, Duration::from_millis(delay_ms));
        sim.run_for(Duration::from_secs(30));
        assert_eq!(sim.confirmed_deaths(), 0, "slow peer ({delay_ms} ms) declared dead");
        assert!(sim.one_owner_per_unit());
    }
}

#[test]
fn speaker_with_wrong_secret_convinces_nobody() {
    let mut sim = Simulation::new(SimConfig {
        nodes: 4,
        units: 40,
        seed: 51,
        ..Default::default()
    });
    sim.change_secret(3, b"not the shared secret");
    sim.run_for(Duration::from_secs(5));
    for observer in 0..3 {
        assert_eq!(sim.state_seen_by(observer, 3), Some(MemberState::Dead));
        assert!(sim.counters(observer).rejected.get("bad_mac").copied().unwrap_or(0) > 0);
    }
    // Nobody accepts the impostor, so it never settles and claims nothing: exactly one owner
    // per IP, among the speakers with the right secret.
    assert!(!sim.is_settled(3));
    assert!(sim.owned_by(3).is_empty());
    assert!(sim.one_owner_per_unit());
}

#[test]
fn unhealthy_announcer_gives_its_ips_away_quickly() {
    let mut sim = converged(SimConfig {
        nodes: 5,
        units: 40,
        seed: 61,
        ..Default::default()
    });
    let sick = (0..5).find(|i| !sim.owned_by(*i).is_empty()).unwrap();
    sim.set_health(
        sick,
        NodeHealth {
            announcer_ready: true,
            dataplane_ready: true,
            interfaces: Default::default(),
            ..Default::default()
        },
    );
    let took = sim
        .run_until_true(Duration::from_secs(2), |s| {
            s.one_owner_per_unit() && s.owned_by(sick).is_empty()
        })
        .expect("IPs move off a node whose interface went down");
    println!("IPs moved off a node without interfaces in {took:?} (virtual)");
    assert!(took < Duration::from_millis(300), "{took:?}");
}

#[test]
fn traffic_per_node_stays_bounded_with_50_speakers() {
    let mut sim = converged(SimConfig {
        nodes: 50,
        units: 100,
        seed: 71,
        ..Default::default()
    });
    let before: Vec<u64> = (0..50).map(|i| sim.counters(i).total_sent()).collect();
    sim.run_for(Duration::from_secs(10));
    let rates: Vec<f64> = (0..50)
        .map(|i| (sim.counters(i).total_sent() - before[i]) as f64 / 10.0)
        .collect();
    let mean = rates.iter().sum::<f64>() / 50.0;
    let max = rates.iter().cloned().fold(0.0, f64::max);
    println!("50 speakers, 100 IPs: messages sent per node per second: mean {mean:.1}, max {max:.1}");
    // What a node takes part in is a few (runner-up → owner) watch pairs, a ping and an ack per
    // watch interval each, plus the slow round robin: not a number that grows with the cluster.
    let interval = herald_speaker::membership::MembershipConfig::default().watch_probe_interval;
    let per_watch_pair = 2.0 / interval.as_secs_f64();
    let limit = 6.0 * per_watch_pair + 20.0;
    assert!(max < limit, "max {max}, limit {limit}");
}

/// Node 0 is cut off for 2 s (declared dead by the rest), comes back, and its link flaps twice
/// more (250 ms cuts). Returns, for the units node 0 owned before, how many times the set of
/// claimants changed once the first merge ended (one owner per unit again), and whether
/// anyone but node 0 was ever seen rejoining.
fn flapping_return(nodes: usize, seed: u64, rejoin_hold: Duration) -> (BTreeMap<Unit, usize>, Simulation, bool) {
    let mut sim = converged(SimConfig {
        nodes,
        units: 30,
        seed,
        membership: MembershipConfig {
            rejoin_hold,
            ..Default::default()
        },
        ..Default::default()
    });
    let mine = sim.owned_by(0).clone();
    assert!(!mine.is_empty(), "node 0 owns something to lose");
    sim.partition(&[0]);
    sim.run_for(Duration::from_secs(2));
    assert!((1..nodes).all(|i| sim.state_seen_by(i, 0) == Some(MemberState::Dead)));
    assert!((1..nodes).all(|i| sim.state_seen_by(0, i) == Some(MemberState::Dead)));
    sim.heal();
    let step = Duration::from_millis(10);
    // (from, to) of each later cut, in ms after the first heal.
    let cuts = [(400u64, 650u64), (1200, 1450)];
    let mut changes: BTreeMap<Unit, usize> = mine.iter().map(|u| (*u, 0)).collect();
    let mut last: Option<BTreeMap<Unit, Vec<usize>>> = None;
    let mut others_rejoined = false;
    let mut merged = false;
    for tick in 1..=800u64 {
        let ms = tick * 10;
        for (from, to) in cuts {
            if ms == from {
                sim.partition(&[0]);
            }
            if ms == to {
                sim.heal();
            }
        }
        sim.run_for(step);
        others_rejoined |= (0..nodes).any(|o| (1..nodes).any(|n| sim.rejoining_seen_by(o, n)));
        merged |= ms < cuts[0].0 && sim.one_owner_per_unit();
        if !merged {
            continue;
        }
        let claims: BTreeMap<Unit, Vec<usize>> = sim.claims().into_iter().filter(|(u, _)| mine.contains(u)).collect();
        if let Some(previous) = &last {
            for (unit, owners) in &claims {
                if previous[unit] != *owners {
                    *changes.get_mut(unit).expect("one of mine") += 1;
                }
            }
        }
        last = Some(claims);
    }
    (changes, sim, others_rejoined)
}

#[test]
fn a_node_back_from_a_minority_partition_takes_its_ips_back_once_despite_a_flapping_link() {
    for (nodes, seed) in [(3, 81), (5, 82)] {
        let (changes, sim, others_rejoined) = flapping_return(nodes, seed, Duration::from_secs(3));
        println!("{nodes} speakers, 3 s hold: claim changes per unit of node 0 after its return: {changes:?}");
        assert!(!others_rejoined, "only the node that was cut off holds back");
        assert!(!sim.rejoining_seen_by(1, 0), "the hold ended");
        assert!(sim.one_owner_per_unit());
        // The majority's owner until the hold ends, then node 0: at most a brief overlap
        // (node 0 claims as soon as its own hold ends, the old owner lets go on hearing it).
        for (unit, n) in &changes {
            assert!(*n <= 2, "{unit} changed hands {n} times");
        }
        // Without the hold the same flaps move IPs back and forth.
        let (unheld, _, _) = flapping_return(nodes, seed, Duration::ZERO);
        println!("{nodes} speakers, no hold: {unheld:?}");
        let with: usize = changes.values().sum();
        let without: usize = unheld.values().sum();
        assert!(without > with, "the hold saves moves: {with} with, {without} without");
    }
}

#[test]
fn a_node_that_saw_most_of_the_cluster_die_holds_back_once_they_return_then_takes_its_ips_back() {
    // From inside, losing most of the cluster looks like being cut off from it: node 0 holds
    // back when the others restart, the same as after a partition, and nothing goes unowned.
    let mut sim = converged(SimConfig {
        nodes: 3,
        units: 30,
        seed: 83,
        ..Default::default()
    });
    let mine = sim.owned_by(0).clone();
    sim.kill(1);
    sim.kill(2);
    sim.run_until_true(Duration::from_secs(5), |s| {
        s.state_seen_by(0, 1) == Some(MemberState::Dead) && s.state_seen_by(0, 2) == Some(MemberState::Dead)
    })
    .expect("node 0 declares both dead");
    sim.run_for(Duration::from_millis(20));
    assert!(
        sim.rejoining_seen_by(0, 0),
        "alone among the dead, node 0 says it is cut off"
    );
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.owned_by(0).len(), 30, "alone, it still owns everything");
    sim.restart(1);
    sim.restart(2);
    sim.run_until_true(Duration::from_secs(5), |s| s.one_owner_per_unit() && s.views_agree())
        .expect("the cluster converges after the restarts");
    assert!(
        (1..3).all(|i| sim.rejoining_seen_by(i, 0)),
        "the others see it holding back"
    );
    assert!(sim.owned_by(0).is_empty(), "its IPs are with the others meanwhile");
    let hold = herald_speaker::membership::MembershipConfig::default().rejoin_hold;
    sim.run_for(hold + Duration::from_secs(1));
    assert!(
        !sim.rejoining_seen_by(1, 0) && !sim.rejoining_seen_by(0, 0),
        "the hold ended"
    );
    assert!(sim.one_owner_per_unit());
    assert_eq!(sim.owned_by(0), &mine, "node 0 owns what it ranks first for again");
}

#[test]
fn clocks_far_apart_split_nothing_and_are_counted() {
    let mut sim = converged(SimConfig {
        nodes: 4,
        units: 40,
        seed: 91,
        ..Default::default()
    });
    let deaths = sim.confirmed_deaths();
    sim.set_clock_offset(2, 3_600_000);
    sim.set_clock_offset(3, -45_000);
    sim.run_for(Duration::from_secs(5));
    // A restart under a skewed clock (its boot's start time is an hour ahead of everyone).
    sim.restart(2);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.confirmed_deaths(), deaths, "only clocks changed");
    for node in 0..4 {
        assert!(
            sim.counters(node).rejected.is_empty(),
            "node {node} rejected {:?}",
            sim.counters(node).rejected
        );
    }
    assert!(sim.counters(0).clock_skewed > 0, "the skew is counted");
    assert!(sim.one_owner_per_unit() && sim.views_agree());
}

#[test]
fn a_node_whose_clock_went_back_across_a_restart_is_believed_once_its_old_boot_is_silent() {
    let mut sim = converged(SimConfig {
        nodes: 4,
        units: 40,
        seed: 92,
        ..Default::default()
    });
    // Its new boot started "an hour before" the old one: peers take it for a replay of an
    // earlier boot while the old one was heard from lately, then believe it.
    sim.set_clock_offset(1, -3_600_000);
    sim.restart(1);
    let took = sim.run_until_true(Duration::from_secs(15), |s| {
        s.one_owner_per_unit()
            && s.views_agree()
            && [0, 2, 3]
                .iter()
                .all(|&o| s.state_seen_by(o, 1) == Some(MemberState::Alive))
    });
    let took = took.expect("the restarted node is back");
    assert!(
        took >= Duration::from_secs(4),
        "not before its old boot fell silent: {took:?}"
    );
    assert!(sim.counters(0).rejected.get("replay").copied().unwrap_or(0) > 0);
}

#[test]
fn a_key_rotation_rolled_out_node_by_node_never_splits() {
    use herald_speaker::membership::auth::{KeyRing, SecretKey};
    let mut sim = converged(SimConfig {
        nodes: 5,
        units: 40,
        seed: 93,
        ..Default::default()
    });
    let deaths = sim.confirmed_deaths();
    // The simulation's key, then a new one: step 1 adds it as next, step 2 makes it current.
    let old = SecretKey::new(b"simulated shared secret".to_vec());
    let new = SecretKey::new(b"a new key, 32 bytes of randomness".to_vec());
    let steps = [
        KeyRing {
            current: old,
            next: Some(new.clone()),
        },
        KeyRing::single(new),
    ];
    for step in steps {
        for node in 0..5 {
            sim.set_keys(node, step.clone());
            sim.run_for(Duration::from_millis(300));
            if node == 2 {
                // A speaker restarted mid-rotation reads the Secret as it is then.
                sim.restart(node);
                sim.run_for(Duration::from_millis(300));
            }
        }
    }
    sim.run_for(Duration::from_secs(3));
    for node in 0..5 {
        assert_eq!(sim.counters(node).rejected.get("bad_mac"), None, "node {node}");
    }
    assert_eq!(sim.confirmed_deaths(), deaths, "nobody died");
    assert!(sim.one_owner_per_unit() && sim.views_agree());
    // The old key alone is not enough any more (past the replaced key's grace period).
    sim.run_for(Duration::from_secs(121));
    sim.change_secret(4, b"simulated shared secret");
    sim.run_for(Duration::from_secs(5));
    assert!(sim.counters(0).rejected.get("bad_mac").copied().unwrap_or(0) > 0);
    assert_eq!(sim.state_seen_by(0, 4), Some(MemberState::Dead));
}

#[test]
fn a_speaker_whose_peers_do_not_answer_yet_waits_for_them_instead_of_announcing_alone() {
    let mut sim = converged(SimConfig {
        nodes: 4,
        units: 40,
        seed: 94,
        ..Default::default()
    });
    // Every speaker restarts at once (an upgrade of all nodes): node 0 first, while the
    // others' hosts still refuse connections.
    for node in 1..4 {
        sim.crash(node);
    }
    sim.restart(0);
    let waiting = sim.run_until_true(Duration::from_secs(2), |s| !s.owned_by(0).is_empty());
    assert_eq!(
        waiting,
        None,
        "node 0 claimed {:?} with nobody answering",
        sim.owned_by(0)
    );
    assert!(!sim.is_settled(0));
    for node in 1..4 {
        sim.restart(node);
    }
    let took = sim.run_until_true(Duration::from_secs(5), |s| s.one_owner_per_unit() && s.views_agree());
    assert!(took.is_some(), "converged once the others answered");
    assert!(
        (1..4).all(|n| !sim.owned_by(n).is_empty()),
        "nobody was declared dead meanwhile"
    );
}
