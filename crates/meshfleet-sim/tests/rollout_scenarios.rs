//! Progressive rollouts in the simulator (issue 14): the controller driven from the
//! simulated gateway against the real node on every simulated node.
#![allow(clippy::unwrap_used)]

use meshfleet_mesh::Duration;
use meshfleet_rollout as ro;
use meshfleet_sim::ota::{synthetic_image, OtaCampaign, OtaStrategy, NEW_VERSION, OLD_VERSION};
use meshfleet_sim::rollout::{run_rollout, Firmware, RolloutSetup};
use meshfleet_sim::{Scenario, Topology};

const NODES: u32 = 30;

fn scenario() -> Scenario {
    Scenario::new(Topology::RandomTree {
        nodes: NODES,
        max_children: 4,
    })
    .duration(Duration::from_secs(8 * 3600))
}

fn campaign() -> OtaCampaign {
    OtaCampaign::new(OtaStrategy::Meshfleet, synthetic_image(16 * 1024, 1))
        .unwrap()
        .start_at(Duration::from_secs(30))
}

#[test]
fn rollout_crashloop_is_contained_and_rolled_back() {
    let setup = RolloutSetup::new(
        Firmware::CrashLoop {
            after: Duration::from_secs(40),
        },
        2,
    );
    let out = run_rollout(scenario(), campaign(), &setup).unwrap();
    let s = &out.summary;
    eprintln!(
        "crashloop: {} s: {}",
        out.duration_s,
        serde_json::to_string(s).unwrap()
    );
    assert_eq!(s.state, ro::PhaseKind::Aborted, "{s:?}");
    let bound = ((NODES - 1) * 5).div_ceil(100).max(3);
    assert!(s.exposed >= 1 && s.exposed <= bound, "{s:?}");
    assert!(out.accepted.len() as u32 <= bound, "{:?}", out.accepted);
    assert_eq!(s.rolled_back, s.exposed);
    assert!(s.restored_s.is_some_and(|r| r <= 600.0), "{s:?}");
    assert!(
        out.final_versions.values().all(|v| v == OLD_VERSION),
        "{:?}",
        out.final_versions
    );
}

#[test]
fn rollout_healthy_completes() {
    let setup = RolloutSetup::new(Firmware::Healthy, 1);
    let out = run_rollout(scenario(), campaign(), &setup).unwrap();
    let s = &out.summary;
    eprintln!(
        "healthy: {} s: {}",
        out.duration_s,
        serde_json::to_string(s).unwrap()
    );
    assert_eq!(s.state, ro::PhaseKind::Completed, "{s:?}");
    assert_eq!(s.exposed, NODES - 1);
    assert!(
        out.final_versions.values().all(|v| v == NEW_VERSION),
        "{:?}",
        out.final_versions
    );
}

#[test]
fn rollout_leak_is_caught_in_wave_1_or_2() {
    let setup = RolloutSetup::new(
        Firmware::Leak {
            bytes_per_min: 2_000,
        },
        3,
    );
    let out = run_rollout(scenario(), campaign(), &setup).unwrap();
    let s = &out.summary;
    eprintln!(
        "leak: {} s: {}",
        out.duration_s,
        serde_json::to_string(s).unwrap()
    );
    assert_eq!(s.state, ro::PhaseKind::Aborted, "{s:?}");
    let caught = out.log.iter().find_map(|e| match e.kind {
        ro::EventKind::Aborted {
            reason: ro::AbortReason::FailureThreshold { wave, .. },
        } => Some(wave),
        _ => None,
    });
    assert!(caught.is_some_and(|w| w <= 1), "{caught:?}");
    assert!(out.log.iter().any(|e| matches!(
        e.kind,
        ro::EventKind::Failed {
            reason: ro::FailureReason::Health(
                ro::HealthFailure::MemoryLeak { .. } | ro::HealthFailure::MemoryRegression { .. }
            ),
            ..
        }
    )));
    assert_eq!(s.rolled_back, s.exposed);
    assert!(out.final_versions.values().all(|v| v == OLD_VERSION));
}

#[test]
fn rollout_gateway_restart_mid_wave_2_resumes_and_completes() {
    let mut setup = RolloutSetup::new(Firmware::Healthy, 4);
    setup.gateway_restart = Some((2, Duration::from_secs(240), Duration::from_secs(300)));
    let out = run_rollout(scenario(), campaign(), &setup).unwrap();
    let s = &out.summary;
    eprintln!(
        "gateway restart: {} s: {}",
        out.duration_s,
        serde_json::to_string(s).unwrap()
    );
    assert_eq!(s.state, ro::PhaseKind::Completed, "{s:?}");
    assert!(out
        .log
        .iter()
        .any(|e| matches!(e.kind, ro::EventKind::Restarted { .. })));
    assert!(s.waves.iter().all(|w| w.counts.failed == 0), "{s:?}");
    assert!(out.final_versions.values().all(|v| v == NEW_VERSION));
}

#[test]
fn rollout_offline_node_joins_later_and_is_updated() {
    let mut setup = RolloutSetup::new(Firmware::Healthy, 5);
    // A leaf of wave 2, powered off from the start for 55 minutes: past its wave's grace
    // (15 min from the wave's start).
    setup.offline = Some((2, Duration::from_secs(0), Duration::from_secs(55 * 60)));
    let out = run_rollout(scenario(), campaign(), &setup).unwrap();
    let s = &out.summary;
    eprintln!(
        "offline: {} s: {}",
        out.duration_s,
        serde_json::to_string(s).unwrap()
    );
    assert_eq!(s.state, ro::PhaseKind::Completed, "{s:?}");
    let n = out.offline_node.unwrap();
    let id = ro::NodeId(scenario().id_base + n);
    assert!(out
        .log
        .iter()
        .any(|e| matches!(e.kind, ro::EventKind::Deferred { node, .. } if node == id)));
    assert!(out
        .log
        .iter()
        .any(|e| matches!(e.kind, ro::EventKind::JoinedWave { node, .. } if node == id)));
    assert_eq!(
        out.final_versions.get(&n).map(String::as_str),
        Some(NEW_VERSION)
    );
    assert!(out.final_versions.values().all(|v| v == NEW_VERSION));
}

#[test]
fn rollout_healthy_total_time_against_a_plain_campaign() {
    let (sc, run) = campaign().attach(scenario());
    let mut sim = meshfleet_sim::Simulation::new(sc);
    run.install(&mut sim);
    while !run.all_updated()
        && sim.now() < meshfleet_mesh::Instant::ZERO + Duration::from_secs(3600)
    {
        sim.run_for(Duration::from_secs(1));
    }
    let start = run.started_at().unwrap();
    let plain = run
        .updated_at()
        .iter()
        .map(|(_, t)| t.saturating_since(start).as_micros())
        .max()
        .unwrap() as f64
        / 1e6;
    let out = run_rollout(
        scenario(),
        campaign(),
        &RolloutSetup::new(Firmware::Healthy, 1),
    )
    .unwrap();
    // A plain campaign's "updated" is the image committed, not judged: the fair comparison
    // adds one health window (10 min) to it.
    let judged = plain + 600.0;
    eprintln!(
        "plain campaign: every node updated {plain:.1} s after the start ({judged:.0} s with \
         one health window); rollout: every node healthy {:.1} s after the start ({:.2}x the \
         judged plain campaign)",
        out.duration_s,
        out.duration_s / judged
    );
    assert!(run.all_updated());
    assert_eq!(out.summary.state, ro::PhaseKind::Completed);
    // Four waves, each a 10-minute health window at least.
    assert!(out.duration_s >= 4.0 * 600.0);
}

/// The scenario files (`examples/scenarios/rollout_*.toml`) run through `run_scenario_file`
/// as `meshfleet sim` runs them; each `summary.json` carries `rollout` within the issue's
/// bounds.
#[test]
fn rollout_scenario_files_write_their_outcome_into_summary_json() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/scenarios");
    let out = tempfile::tempdir().unwrap();
    let mut seen = 0;
    for (name, state) in [
        ("rollout_healthy", "completed"),
        ("rollout_crashloop", "aborted"),
        ("rollout_leak", "aborted"),
        ("rollout_gateway_restart", "completed"),
        ("rollout_offline_node", "completed"),
    ] {
        let o = out.path().join(name);
        meshfleet_sim::run_scenario_file(&dir.join(format!("{name}.toml")), None, Some(&o), |_| {})
            .unwrap();
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(o.join("summary.json")).unwrap())
                .unwrap();
        let r = &summary["rollout"];
        eprintln!("{name}: {r}");
        assert_eq!(r["state"], state, "{name}");
        for k in ["exposed", "rolled_back", "restored_s", "waves"] {
            assert!(r.get(k).is_some(), "{name}: {k}");
        }
        let exposed = r["exposed"].as_u64().unwrap();
        if state == "aborted" {
            assert!(exposed <= 3, "{name}: {exposed} exposed");
            assert_eq!(r["rolled_back"], r["exposed"], "{name}");
            assert!(
                r["restored_s"].as_f64().is_some_and(|s| s <= 600.0),
                "{name}"
            );
        } else {
            assert_eq!(exposed, NODES as u64 - 1, "{name}");
        }
        seen += 1;
    }
    assert_eq!(seen, 5);
}

#[test]
fn rollout_table_errors_name_the_field() {
    let head = "duration_s = 100\n[topology]\nkind = \"line\"\nnodes = 3\n";
    let ota = "[ota]\nstrategy = \"meshfleet\"\nsynthetic_kib = 4\nstart_s = 30\n";
    let err = |text: &str| {
        meshfleet_sim::parse_scenario(text, None)
            .err()
            .and_then(|e| e.location().and_then(|l| l.field.clone()))
    };
    // No meshfleet campaign to roll out.
    assert_eq!(
        err(&format!("{head}[rollout]\nfirmware = \"healthy\"\n")).as_deref(),
        Some("rollout")
    );
    assert_eq!(
        err(&format!("{head}[ota]\nstrategy = \"stock\"\nsynthetic_kib = 4\nstart_s = 30\n[rollout]\nfirmware = \"healthy\"\n")).as_deref(),
        Some("rollout")
    );
    assert_eq!(
        err(&format!("{head}{ota}[rollout]\nfirmware = \"bricks\"\n")).as_deref(),
        Some("rollout.firmware")
    );
    assert_eq!(
        err(&format!(
            "{head}{ota}[rollout]\nfirmware = \"crashloop\"\ncrash_after_s = -1\n"
        ))
        .as_deref(),
        Some("rollout.crash_after_s")
    );
    assert_eq!(
        err(&format!(
            "{head}{ota}[rollout]\nfirmware = \"healthy\"\ngateway_restart_wave = 99\n"
        ))
        .as_deref(),
        Some("rollout.gateway_restart_wave")
    );
    let ok = meshfleet_sim::parse_scenario(
        &format!("{head}{ota}[rollout]\nfirmware = \"leak\"\n"),
        None,
    )
    .unwrap();
    assert!(matches!(
        meshfleet_sim::rollout::setup(&ok).map(|r| r.firmware),
        Some(Firmware::Leak {
            bytes_per_min: 2000
        })
    ));
}
