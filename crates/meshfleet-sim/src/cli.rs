//! Entry points for the `meshfleet sim` command.

use std::path::Path;
use std::time::Instant as WallClock;

use meshfleet_mesh::Duration;

use crate::air::AirLog;
use crate::file::{load_scenario, ScenarioError};
use crate::metrics::SimReport;
use crate::ota::{synthetic_image, OtaCampaign, OtaStrategy};
use crate::output::{write_outputs, RunInfo, WriteError};
use crate::scenario::{Formation, InvalidScenario, Scenario};
use crate::topology::{Topology, ESP8266_MAX_CONN};
use crate::traffic::Traffic;
use crate::workload::Run;

/// A scenario file could not be run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The file could not be loaded.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The scenario loaded but cannot run (e.g. a generated tree too deep).
    #[error(transparent)]
    Invalid(#[from] InvalidScenario),
    /// Outputs could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The `[rollout]` could not be planned (the gateway saw no node at the start).
    #[error("the rollout cannot be planned: {0}")]
    Rollout(meshfleet_rollout::PlanError),
}

/// Loads `path`, runs it (with `seed_override` instead of the file's seed, if given),
/// writes every output into `out_dir` if given, and returns the report. `progress` gets
/// the fraction of virtual time done, about 200 times.
pub fn run_scenario_file(
    path: &Path,
    seed_override: Option<u64>,
    out_dir: Option<&Path>,
    progress: impl FnMut(f64) + 'static,
) -> Result<SimReport, RunError> {
    let mut scenario = load_scenario(path)?;
    if let Some(seed) = seed_override {
        scenario.seed = seed;
    }
    run_scenario(scenario, out_dir, progress)
}

/// Runs a scenario, writing outputs into `out_dir` if given. Its workloads
/// ([`Scenario::workloads`], [`crate::workload`]) are attached, driven and reported
/// ([`crate::workload::Run`]), and their plots written beside the run's.
pub fn run_scenario(
    scenario: Scenario,
    out_dir: Option<&Path>,
    progress: impl FnMut(f64) + 'static,
) -> Result<SimReport, RunError> {
    let started = WallClock::now();
    let interval = scenario.sample_interval;
    let mut run = Run::new(scenario)?;
    let air = AirLog::install(run.sim_mut(), interval);
    run.sim_mut().set_progress(progress);
    let mut report = run.run();
    if let Some(e) = run.take_error() {
        return Err(e);
    }
    report.air_by_class = air.borrow().per_sample(report.series.len());
    let wall = started.elapsed().as_secs_f64();
    if let Some(dir) = out_dir {
        write_outputs(&report, &RunInfo::new(&report, wall), dir)?;
        for (name, svg) in run.plots() {
            let path = dir.join(name);
            std::fs::write(&path, svg).map_err(|source| WriteError { path, source })?;
        }
    }
    Ok(report)
}

/// The `meshfleet sim --demo` scenario: 300 ESP8266 nodes scattered over 550 m x 550 m
/// with a 50 m radio range, one joining every 50 ms (each through the nearest node in
/// range already in the mesh), two virtual minutes, one 100-byte broadcast per second from
/// a random node from t = 20 s, and a meshfleet OTA campaign: at t = 40 s, once the mesh
/// has formed (~25 s), node 1 distributes a 256 KiB firmware-like image (deflated to
/// ~170 KB) to the 299 others, hop by hop, while the broadcasts go on. The image is kept at
/// 256 KiB so that the demo stays a demo (a few seconds of wall time, ~150 MB of simulated
/// flash); `examples/ota_bench.rs` runs 1 MiB images. Links are independent: on a shared
/// channel (`airtime`, `geometric`) the formation of a mesh this size saturates the air for
/// over a minute, which is worth showing but not as a demo.
pub fn demo_scenario() -> Scenario {
    Scenario::new(Topology::Geometric {
        nodes: 300,
        width_m: 550.0,
        height_m: 550.0,
        radio_range_m: 50.0,
        max_children: ESP8266_MAX_CONN,
    })
    .name("demo")
    .seed(1)
    .duration(Duration::from_secs(120))
    .formation(Formation {
        start: Duration::ZERO,
        interval: Duration::from_millis(50),
        jitter: Duration::from_millis(40),
    })
    .traffic(Traffic::broadcast(None, 1.0, Duration::from_secs(20)).payload(100))
    .ota(
        OtaCampaign::new(OtaStrategy::Meshfleet, synthetic_image(256 * 1024, 1))
            .expect("a non-empty synthetic image always packs")
            .start_at(Duration::from_secs(40)),
    )
}
