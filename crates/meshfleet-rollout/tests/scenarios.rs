//! Scenario tests against the fake fleet: healthy, crash loop, leak, offline node, restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use meshfleet_rollout::{
    AbortReason, Command, Duration, EventKind, FailureReason, HealthFailure, Instant, NodeId,
    NodeState, Phase, PhaseKind, Rollout,
};

const DAY: Instant = Instant::from_secs(24 * 3600);

fn start(fleet: &Fleet, seed: u64) -> Rollout {
    Rollout::new(Instant::ZERO, config(seed), fleet.infos.clone()).unwrap()
}

/// Prints the outcome (`cargo test -p meshfleet-rollout --test scenarios -- --nocapture`):
/// the figures `docs/rollouts.md` quotes for the fake fleet.
fn report(name: &str, r: &Rollout, log: &[meshfleet_rollout::RolloutEvent]) {
    let end = log.last().map_or(0, |e| e.at.as_micros() / 1_000_000);
    let abort = log.iter().find_map(|e| match e.kind {
        EventKind::Aborted { .. } => Some(e.at.as_micros() / 1_000_000),
        _ => None,
    });
    eprintln!(
        "{name}: last decision at {end} s, abort at {abort:?} s, summary {}",
        serde_json::to_string(&r.summary()).unwrap()
    );
}

fn invariants(r: &Rollout, _f: &Fleet, log: &[meshfleet_rollout::RolloutEvent]) {
    assert!(r.in_flight() <= r.config().max_in_flight, "cap exceeded");
    assert!(
        r.exposed() <= r.exposure_cap(),
        "exposure beyond the started waves"
    );
    successes_are_earned(r, log).unwrap();
}

#[test]
fn healthy_build_completes_every_wave() {
    let mut fleet = Fleet::new(tree(4, 9), Build::Good, &BTreeMap::new());
    let mut r = start(&fleet, 1);
    let log = run(&mut r, &mut fleet, DAY, invariants);
    report("healthy_build_completes_every_wave", &r, &log);
    assert_eq!(r.phase(), Phase::Completed);
    let s = r.summary();
    assert_eq!(s.state, PhaseKind::Completed);
    assert_eq!(s.exposed, 40);
    assert_eq!(s.rolled_back, 0);
    assert_eq!(s.restored_s, None);
    // 5 % of 40 is 2 (the canary minimum too), then 20 % = 8, 75 % = 30, 100 %.
    let planned: Vec<u32> = s.waves.iter().map(|w| w.counts.planned).collect();
    assert_eq!(planned, [2, 6, 22, 10]);
    assert!(s.waves.iter().all(|w| w.counts.healthy == w.counts.members));
    for (id, rec) in r.nodes() {
        assert!(matches!(rec.state(), NodeState::Healthy { .. }), "{id}");
        assert!(fleet.runs_new(id));
    }
    // The canary is two leaves on two different branches.
    let canary: Vec<NodeId> = r
        .nodes()
        .filter(|(_, n)| n.planned_wave() == 0)
        .map(|(id, _)| id)
        .collect();
    assert!(canary.iter().all(|id| id.0 % 100 != 0), "{canary:?}");
    assert_ne!(canary[0].0 / 100, canary[1].0 / 100);
    // Relays were offered last.
    let offers: Vec<NodeId> = log
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Offered { node, .. } => Some(node),
            _ => None,
        })
        .collect();
    assert!(offers[36..].iter().all(|id| id.0 % 100 == 0), "{offers:?}");
    // The waves ran in order, each after the previous passed.
    let passed: Vec<u16> = log
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::WavePassed { wave, .. } => Some(wave),
            _ => None,
        })
        .collect();
    assert_eq!(passed, [0, 1, 2, 3]);
    // Summary serialises with the field names.
    let json = serde_json::to_value(&s).unwrap();
    for k in ["state", "exposed", "rolled_back", "restored_s", "waves"] {
        assert!(json.get(k).is_some(), "{k}");
    }
    assert_eq!(json["state"], "completed");
    assert_eq!(json["waves"][0]["healthy"], 2);
}

/// At most 5 % of the fleet or 3 nodes, whichever is larger (issue 14).
fn containment(n: u32) -> u32 {
    (n * 5).div_ceil(100).max(3)
}

fn assert_rolled_back(r: &Rollout, fleet: &Fleet, within: Duration) {
    let s = r.summary();
    assert_eq!(s.state, PhaseKind::Aborted);
    assert_eq!(s.rolled_back, s.exposed, "{s:?}");
    for (id, rec) in r.nodes() {
        if rec.exposed() {
            let rb = rec.rollback().expect("exposed node ordered back");
            assert!(rb.restored_at.is_some(), "{id} not restored");
        }
        assert!(!fleet.runs_new(id), "{id} still runs the new build");
    }
    let restored = s.restored_s.expect("all restored");
    assert!(
        restored <= within.as_secs_f64(),
        "restored after {restored} s"
    );
}

#[test]
fn crash_looping_build_is_contained_to_the_canary_and_rolled_back() {
    let infos = tree(6, 9); // 60 nodes
    let mut fleet = Fleet::new(infos, Build::CrashLoop, &BTreeMap::new());
    let mut r = start(&fleet, 2);
    let log = run(&mut r, &mut fleet, DAY, invariants);
    report(
        "crash_looping_build_is_contained_to_the_canary_and_rolled_back",
        &r,
        &log,
    );
    assert!(matches!(
        r.phase(),
        Phase::Aborted {
            reason: AbortReason::FailureThreshold { wave: 0, .. }
        }
    ));
    let s = r.summary();
    assert!(s.exposed >= 1 && s.exposed <= containment(60), "{s:?}");
    assert!(s.waves[1..].iter().all(|w| w.counts.offered == 0));
    assert!(log.iter().any(|e| matches!(
        e.kind,
        EventKind::Failed {
            reason: FailureReason::Health(HealthFailure::RebootLoop { .. }),
            ..
        }
    )));
    assert_rolled_back(&r, &fleet, Duration::from_mins(10));
}

#[test]
fn a_build_that_never_confirms_falls_back_and_aborts_the_canary() {
    let mut fleet = Fleet::new(tree(4, 9), Build::NoConfirm, &BTreeMap::new());
    let mut r = start(&fleet, 3);
    let log = run(&mut r, &mut fleet, DAY, invariants);
    report(
        "a_build_that_never_confirms_falls_back_and_aborts_the_canary",
        &r,
        &log,
    );
    assert_eq!(r.phase().kind(), PhaseKind::Aborted);
    assert!(log.iter().any(|e| matches!(
        e.kind,
        EventKind::Failed {
            reason: FailureReason::FellBack,
            ..
        }
    )));
    assert!(r.summary().exposed <= containment(40));
    assert!(!log
        .iter()
        .any(|e| matches!(e.kind, EventKind::Healthy { .. })));
    assert_rolled_back(&r, &fleet, Duration::from_mins(10));
}

#[test]
fn a_bricked_node_fails_on_its_boot_deadline_instead_of_staying_in_progress() {
    let mut fleet = Fleet::new(tree(4, 9), Build::Brick, &BTreeMap::new());
    let mut r = start(&fleet, 4);
    let log = run(&mut r, &mut fleet, DAY, invariants);
    report(
        "a_bricked_node_fails_on_its_boot_deadline_instead_of_staying_in_progress",
        &r,
        &log,
    );
    assert_eq!(r.phase().kind(), PhaseKind::Aborted);
    let failed_at = log
        .iter()
        .find_map(|e| match e.kind {
            EventKind::Failed {
                reason: FailureReason::NoConfirmedBoot,
                ..
            } => Some(e.at),
            _ => None,
        })
        .expect("a NoConfirmedBoot failure");
    // Offer + transfer (< 3 min) + the 10 min boot deadline.
    assert!(failed_at <= Instant::from_secs(13 * 60), "{failed_at:?}");
    // Bricked nodes never answer: their orders are repeated, then reported stuck.
    let s = r.summary();
    assert!(s.exposed <= containment(40));
    assert_eq!(s.rolled_back, 0);
    assert_eq!(s.restored_s, None);
    // They never come back, so the orders wait for them to rejoin: no timer spins.
    for (id, rec) in r.nodes().filter(|(_, n)| n.exposed()) {
        assert!(!fleet.is_online(id));
        let rb = rec.rollback().unwrap();
        assert_eq!((rb.orders, rb.next_retry, rb.restored_at), (0, None, None));
    }
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn memory_leak_is_caught_in_wave_1_or_2_and_rolled_back() {
    let mut fleet = Fleet::new(
        tree(6, 9),
        Build::Leak {
            bytes_per_min: 2_000,
        },
        &BTreeMap::new(),
    );
    let mut r = start(&fleet, 5);
    let log = run(&mut r, &mut fleet, DAY, invariants);
    report(
        "memory_leak_is_caught_in_wave_1_or_2_and_rolled_back",
        &r,
        &log,
    );
    let Phase::Aborted {
        reason: AbortReason::FailureThreshold { wave, .. },
    } = r.phase()
    else {
        panic!("not aborted by the gate: {:?}", r.phase());
    };
    assert!(wave <= 1, "caught in wave {wave} (0-based)");
    assert!(log.iter().any(|e| matches!(
        e.kind,
        EventKind::Failed {
            reason: FailureReason::Health(
                HealthFailure::MemoryLeak { .. } | HealthFailure::MemoryRegression { .. }
            ),
            ..
        }
    )));
    assert_rolled_back(&r, &fleet, Duration::from_mins(10));
}

#[test]
fn a_node_offline_during_its_wave_joins_later_and_is_updated() {
    let infos = tree(4, 9);
    let probe = Rollout::new(Instant::ZERO, config(6), infos.clone()).unwrap();
    // A wave-1 node (0-based), away from the start until 3 hours in: its wave decides
    // without it after the 15 min grace, and it joins the wave in progress when back.
    let late = probe
        .nodes()
        .find(|(_, n)| n.planned_wave() == 1)
        .map(|(id, _)| id)
        .unwrap();
    let quirks = BTreeMap::from([(
        late.0,
        Quirks {
            offline: Some((0, 3 * 3600)),
            ..Quirks::default()
        },
    )]);
    let mut fleet = Fleet::new(infos, Build::Good, &quirks);
    let mut r = Rollout::new(Instant::ZERO, config(6), fleet.infos.clone()).unwrap();
    let log = run(&mut r, &mut fleet, DAY, invariants);
    report(
        "a_node_offline_during_its_wave_joins_later_and_is_updated",
        &r,
        &log,
    );
    assert_eq!(r.phase(), Phase::Completed);
    assert!(log.iter().any(|e| e.kind
        == EventKind::Deferred {
            node: late,
            wave: 1
        }));
    assert!(log.iter().any(|e| matches!(
        e.kind,
        EventKind::JoinedWave { node, from: 1, .. } if node == late
    )));
    assert!(matches!(
        r.node(late).unwrap().state(),
        NodeState::Healthy { .. }
    ));
    assert!(fleet.runs_new(late));
    assert_eq!(r.summary().exposed, 40);
}

#[test]
fn flaky_and_slow_transfers_are_retried_then_fail_without_blocking() {
    let infos = tree(4, 9);
    let probe = Rollout::new(Instant::ZERO, config(7), infos.clone()).unwrap();
    let order = probe.plan_order().to_vec();
    // A flaky node in wave 1 succeeds on its retry; a slow node in wave 2 (22 members)
    // times out three times and fails: one failure is under that wave's limit
    // (ceil(10 % of 22) = 3) and 21 healthy of 22 reached pass its 90 % gate.
    let flaky = order[3];
    let slow = order[10];
    let quirks = BTreeMap::from([
        (
            flaky.0,
            Quirks {
                flaky: true,
                ..Quirks::default()
            },
        ),
        (
            slow.0,
            Quirks {
                slow: true,
                ..Quirks::default()
            },
        ),
    ]);
    let mut fleet = Fleet::new(infos, Build::Good, &quirks);
    let mut r = Rollout::new(Instant::ZERO, config(7), fleet.infos.clone()).unwrap();
    let log = run(&mut r, &mut fleet, DAY, invariants);
    assert!(matches!(
        r.node(flaky).unwrap().state(),
        NodeState::Healthy { .. }
    ));
    assert_eq!(r.node(flaky).unwrap().offers(), 2);
    assert!(matches!(
        r.node(slow).unwrap().state(),
        NodeState::Failed {
            reason: FailureReason::DownloadTimeout,
            ..
        }
    ));
    assert_eq!(r.node(slow).unwrap().offers(), 3);
    assert!(!r.node(slow).unwrap().exposed());
    assert_eq!(r.node(slow).unwrap().wave(), 2);
    assert_eq!(r.phase(), Phase::Completed);
    assert_eq!(r.summary().waves[2].counts.failed, 1);
    let retries = log
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Retry { node, .. } if node == slow))
        .count();
    assert_eq!(retries, 2);
}

/// Runs the healthy scenario with a save/restore at `save_at`, optionally with the
/// controller down for `gap` (the fleet's reports in the gap are lost).
fn run_with_restart(
    save_at: Instant,
    gap: Duration,
) -> (Rollout, Fleet, Vec<meshfleet_rollout::RolloutEvent>) {
    let mut fleet = Fleet::new(tree(4, 9), Build::Good, &BTreeMap::new());
    let mut r = start(&fleet, 8);
    let mut log = run(&mut r, &mut fleet, save_at, invariants);
    let json = serde_json::to_string(&r).unwrap();
    let mut restored: Rollout = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, r, "the state round-trips exactly");
    if gap > Duration::ZERO {
        // The gateway is down: the fleet runs on, its reports and timers go nowhere.
        let mut sink = r.clone();
        let _ = run(&mut sink, &mut fleet, save_at + gap, |_, _, _| {});
        fleet.now = save_at + gap;
        restored.handle_restarted(save_at + gap);
        // On restart the gateway re-reads each node's running version from its status
        // package, as it would from the mesh.
        let ids: Vec<NodeId> = restored.nodes().map(|(id, _)| id).collect();
        for id in ids {
            let st = restored.node(id).unwrap().state();
            if st.in_flight() && fleet.runs_new(id) && fleet.is_online(id) {
                restored.handle_report(
                    save_at + gap,
                    id,
                    meshfleet_rollout::NodeReport::Booted {
                        version: v(NEW),
                        confirmed: true,
                    },
                );
            }
        }
    }
    run_into(&mut restored, &mut fleet, DAY, &mut log, invariants);
    (restored, fleet, log)
}

#[test]
fn serialise_mid_wave_restore_continue_gives_the_same_outcome() {
    let mut fleet = Fleet::new(tree(4, 9), Build::Good, &BTreeMap::new());
    let mut r = start(&fleet, 8);
    let straight = run(&mut r, &mut fleet, DAY, invariants);
    // Save in the middle of wave 1 (0-based): after it started, before it passed.
    let w1 = straight
        .iter()
        .find(|e| matches!(e.kind, EventKind::WaveStarted { wave: 1, .. }))
        .unwrap()
        .at;
    let mid = w1 + Duration::from_mins(3);
    assert!(straight
        .iter()
        .any(|e| matches!(e.kind, EventKind::WavePassed { wave: 1, .. }) && e.at > mid));
    let (resumed, _, log) = run_with_restart(mid, Duration::ZERO);
    assert_eq!(log, straight, "same decisions, same times");
    assert_eq!(resumed.summary(), r.summary());
}

#[test]
fn a_gateway_restart_mid_wave_2_resumes_and_completes() {
    let mut fleet = Fleet::new(tree(4, 9), Build::Good, &BTreeMap::new());
    let mut r = start(&fleet, 8);
    let straight = run(&mut r, &mut fleet, DAY, invariants);
    let w2 = straight
        .iter()
        .find(|e| matches!(e.kind, EventKind::WaveStarted { wave: 2, .. }))
        .unwrap()
        .at;
    let (resumed, fleet, log) =
        run_with_restart(w2 + Duration::from_mins(4), Duration::from_mins(5));
    assert_eq!(resumed.phase(), Phase::Completed, "{:?}", resumed.summary());
    let s = resumed.summary();
    assert_eq!(s.exposed, 40);
    assert!(s.waves.iter().all(|w| w.counts.failed == 0));
    assert!(log.iter().any(|e| e.kind
        == EventKind::Restarted {
            gap: Duration::from_mins(5)
        }));
    for (id, _) in resumed.nodes() {
        assert!(fleet.runs_new(id));
    }
}

#[test]
fn emergency_rollback_after_completion_takes_every_node_back() {
    let mut fleet = Fleet::new(tree(2, 9), Build::Good, &BTreeMap::new());
    let mut r = start(&fleet, 9);
    let mut log = run(&mut r, &mut fleet, DAY, invariants);
    assert_eq!(r.phase(), Phase::Completed);
    let t = fleet.now + Duration::from_mins(1);
    fleet.now = t;
    r.handle_command(t, Command::EmergencyRollback).unwrap();
    run_into(
        &mut r,
        &mut fleet,
        DAY + Duration::from_mins(120),
        &mut log,
        invariants,
    );
    assert!(matches!(
        r.phase(),
        Phase::Aborted {
            reason: AbortReason::Emergency
        }
    ));
    assert_rolled_back(&r, &fleet, Duration::from_mins(10));
    assert_eq!(r.summary().rolled_back, 20);
}

#[test]
fn stock_nodes_are_rolled_back_by_a_reoffer_of_the_previous_image() {
    let mut infos = tree(4, 9);
    for i in &mut infos {
        i.kind = meshfleet_rollout::NodeKind::Stock;
    }
    let mut fleet = Fleet::new(
        infos,
        Build::Leak {
            bytes_per_min: 2_000,
        },
        &BTreeMap::new(),
    );
    let mut r = start(&fleet, 10);
    let log = run(&mut r, &mut fleet, DAY, invariants);
    report(
        "stock_nodes_are_rolled_back_by_a_reoffer_of_the_previous_image",
        &r,
        &log,
    );
    assert!(log.iter().any(|e| matches!(
        &e.kind,
        EventKind::RollbackOrdered {
            via: meshfleet_rollout::RollbackVia::Reoffer { .. },
            ..
        }
    )));
    assert_rolled_back(&r, &fleet, Duration::from_mins(10));
}
