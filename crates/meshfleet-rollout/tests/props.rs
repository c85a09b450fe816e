//! Property tests: random fleets, builds, quirks and operator commands; the controller's
//! invariants hold after every step.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use meshfleet_rollout::{
    AbortReason, Command, EventKind, FailureReason, HealthFailure, Instant, NodeKind, NodeState,
    Phase, Rollout, RolloutEvent, Target, WaveSpec,
};
use proptest::prelude::*;

fn build() -> impl Strategy<Value = Build> {
    prop_oneof![
        4 => Just(Build::Good),
        1 => Just(Build::CrashLoop),
        1 => Just(Build::NoConfirm),
        1 => (500u32..5_000).prop_map(|bytes_per_min| Build::Leak { bytes_per_min }),
        1 => Just(Build::Brick),
    ]
}

fn quirks() -> impl Strategy<Value = Quirks> {
    (
        prop::option::weighted(0.15, (0u64..7200, 60u64..7200)),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(off, slow, flaky)| Quirks {
            offline: off.map(|(from, len)| (from, from + len)),
            slow,
            flaky,
        })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Approve),
        Just(Command::Pause),
        Just(Command::Resume),
        (0u16..5).prop_map(|to| Command::SkipTo { to }),
        Just(Command::Abort),
        Just(Command::EmergencyRollback),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    branches: u32,
    leaves: u32,
    build: Build,
    quirks: Vec<Quirks>,
    stock: Vec<bool>,
    cap: u32,
    count_waves: bool,
    seed: u64,
    commands: Vec<(u64, Command)>,
}

fn case() -> impl Strategy<Value = Case> {
    (1u32..5, 0u32..8).prop_flat_map(|(branches, leaves)| {
        let n = (branches * (leaves + 1)) as usize;
        (
            build(),
            prop::collection::vec(quirks(), n),
            prop::collection::vec(prop::bool::weighted(0.3), n),
            1u32..6,
            any::<bool>(),
            any::<u64>(),
            prop::collection::vec((0u64..14_400, command()), 0..4),
        )
            .prop_map(
                move |(build, quirks, stock, cap, count_waves, seed, mut commands)| {
                    commands.sort_by_key(|c| c.0);
                    Case {
                        branches,
                        leaves,
                        build,
                        quirks,
                        stock,
                        cap,
                        count_waves,
                        seed,
                        commands,
                    }
                },
            )
    })
}

fn check(r: &Rollout, _f: &Fleet, log: &[RolloutEvent]) {
    assert!(
        r.in_flight() <= r.config().max_in_flight,
        "{} in flight, cap {}",
        r.in_flight(),
        r.config().max_in_flight
    );
    assert!(
        r.exposed() <= r.exposure_cap(),
        "{} exposed, the started waves allow {}",
        r.exposed(),
        r.exposure_cap()
    );
    successes_are_earned(r, log).unwrap();
    // Nothing stays in progress without a deadline.
    let undecided = r.nodes().any(|(_, n)| {
        n.state().in_flight()
            || (matches!(n.state(), NodeState::Booted { .. })
                && !matches!(r.phase(), Phase::Aborted { .. }))
    });
    if undecided {
        assert!(
            r.poll_timeout().is_some(),
            "a node in progress with no timer"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_random_fleets_builds_and_commands(c in case()) {
        let mut infos = tree(c.branches, c.leaves);
        let mut q = BTreeMap::new();
        for (i, info) in infos.iter_mut().enumerate() {
            if c.stock[i] {
                info.kind = NodeKind::Stock;
            }
            q.insert(info.id.0, c.quirks[i]);
        }
        let mut fleet = Fleet::new(infos, c.build, &q);
        let mut cfg = config(c.seed);
        cfg.max_in_flight = c.cap;
        if c.count_waves {
            cfg.waves = vec![
                WaveSpec { until: Target::Count(1), min_size: 1, ..WaveSpec::canary() },
                WaveSpec { until: Target::Count(4), ..WaveSpec::default() },
                WaveSpec::default(),
            ];
        }
        let mut r = Rollout::new(Instant::ZERO, cfg, fleet.infos.clone()).unwrap();
        let mut log = Vec::new();
        for &(at, cmd) in &c.commands {
            run_into(&mut r, &mut fleet, Instant::from_secs(at), &mut log, check);
            let now = fleet.now.max(Instant::from_secs(at));
            fleet.now = now;
            // Refusals are fine; they must not change anything.
            let before = r.clone();
            if r.handle_command(now, cmd).is_err() {
                prop_assert_eq!(&r, &before);
            }
        }
        run_into(&mut r, &mut fleet, Instant::from_secs(12 * 3600), &mut log, check);

        // A good build never trips the memory gates: the heap noise (+-2 KB on 200 KB) is no
        // leak to the trend check.
        if c.build == Build::Good {
            for e in &log {
                prop_assert!(
                    !matches!(
                        e.kind,
                        EventKind::Failed {
                            reason: FailureReason::Health(
                                HealthFailure::MemoryLeak { .. }
                                    | HealthFailure::MemoryRegression { .. }
                            ),
                            ..
                        }
                    ),
                    "false alarm: {:?}", e
                );
            }
        }
        // Every node that went back reports the old image, and the fleet agrees.
        for (id, n) in r.nodes() {
            if n.rollback().is_some_and(|rb| rb.restored_at.is_some()) {
                prop_assert!(!fleet.runs_new(id), "{} restored but runs the new build", id);
            }
        }
        match r.phase() {
            Phase::Aborted { reason } => {
                let s = r.summary();
                // Emergency: every exposed node was ordered back. Otherwise every exposed
                // node is back, ordered back, or healthy in a wave that passed before.
                for (id, n) in r.nodes().filter(|(_, n)| n.exposed()) {
                    if reason == AbortReason::Emergency {
                        prop_assert!(n.rollback().is_some(), "{} not ordered back", id);
                    } else {
                        prop_assert!(
                            n.rollback().is_some()
                                || matches!(n.state(), NodeState::Healthy { .. }),
                            "{} exposed, undecided and not ordered back", id
                        );
                    }
                }
                prop_assert!(s.rolled_back <= s.rollback_ordered);
            }
            Phase::Completed => {
                // Every node offered and decided, or still waiting offline.
                for (id, n) in r.nodes() {
                    prop_assert!(
                        !n.state().in_flight(),
                        "{} still in flight after completion", id
                    );
                }
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Persisting the controller at any moment and carrying on with the restored copy makes
    /// the same decisions at the same times as never stopping.
    #[test]
    fn save_and_restore_anywhere_changes_nothing(c in case(), save_at in 0u64..14_400) {
        let mut infos = tree(c.branches, c.leaves);
        let mut q = BTreeMap::new();
        for (i, info) in infos.iter_mut().enumerate() {
            if c.stock[i] {
                info.kind = NodeKind::Stock;
            }
            q.insert(info.id.0, c.quirks[i]);
        }
        let until = Instant::from_secs(12 * 3600);
        let fleet0 = Fleet::new(infos, c.build, &q);
        let cfg = config(c.seed);

        let mut fleet = fleet0.clone();
        let mut r = Rollout::new(Instant::ZERO, cfg.clone(), fleet.infos.clone()).unwrap();
        let straight = run(&mut r, &mut fleet, until, check);

        let mut fleet = fleet0;
        let mut r2 = Rollout::new(Instant::ZERO, cfg, fleet.infos.clone()).unwrap();
        let mut log = run(&mut r2, &mut fleet, Instant::from_secs(save_at), check);
        let json = serde_json::to_string(&r2).unwrap();
        let mut back: Rollout = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &r2);
        run_into(&mut back, &mut fleet, until, &mut log, check);
        prop_assert_eq!(log, straight);
        prop_assert_eq!(back.summary(), r.summary());
    }
}
