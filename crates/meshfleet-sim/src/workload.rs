//! Workloads: what a scenario runs on top of the mesh, as plug-ins.
//!
//! A workload owns everything about itself: its table in a scenario file (the registry
//! [`TABLES`] maps a top-level TOML key to its parser), what it puts on the nodes (it wraps
//! the scenario's node factory in [`Workload::attach`]), its timeline events, the hooks it
//! needs on the running simulation ([`Workload::install`]), the actions it takes as virtual
//! time passes ([`Workload::next_tick`], [`Workload::tick`]), its metrics (under its own key in
//! `summary.json`, [`SimReport::workloads`]) and its plots. Adding one is a new module plus
//! one line in [`TABLES`]: `Scenario`, `SimReport`, `run_scenario` and the scenario parser
//! stay as they are.
//!

use std::fmt;
use std::sync::Arc;

use meshfleet_mesh::{Duration, Instant};

use crate::metrics::SimReport;
use crate::scenario::Scenario;
use crate::sim::Simulation;

/// A workload's description, as a scenario holds it (cloneable, printable, shareable).
pub trait WorkloadSpec: fmt::Debug + Send + Sync {
    /// Its key: the scenario file's table and the `summary.json` entry.
    fn key(&self) -> &'static str;

    /// Checks it against the whole scenario (node numbers, times). The message names the
    /// field (`"telemetry.fault[3].node"`) first, then a colon.
    fn validate(&self, _scenario: &Scenario) -> Result<(), String> {
        Ok(())
    }

    /// A fresh running instance for one run.
    fn build(&self, scenario: &Scenario) -> Box<dyn Workload>;
}

/// One running workload.
pub trait Workload {
    /// Its key (as [`WorkloadSpec::key`]).
    fn key(&self) -> &'static str;

    /// Before the simulation is built: wrap the node factory, add timeline events.
    fn attach(&mut self, scenario: Scenario) -> Scenario {
        scenario
    }

    /// After it is built: hooks on the simulation.
    fn install(&mut self, _sim: &mut Simulation) {}

    /// The next virtual time (global) it wants to act at, if any.
    fn next_tick(&self) -> Option<Instant> {
        None
    }

    /// Acts at `sim.now()` (called once the simulation has run up to its tick).
    fn tick(&mut self, _sim: &mut Simulation) {}

    /// Its metrics for `summary.json` (under [`Workload::key`]), after the run.
    fn report(&mut self, sim: &Simulation) -> serde_json::Value;

    /// Puts its results into the run's report: by default [`Workload::report`] under its
    /// key in [`SimReport::workloads`]. A workload with a typed place in the report (OTA:
    /// [`SimReport::ota`]) puts them there instead.
    fn finish(&mut self, sim: &Simulation, report: &mut SimReport) {
        let v = self.report(sim);
        report.workloads.insert(self.key().to_owned(), v);
    }

    /// Its plots: (file name, SVG text), written next to `summary.json`.
    fn plots(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// A workload table's parser: (the table, the scenario's node count, its duration).
pub type ParseTable = fn(&toml::Value, u32, Duration) -> Result<Arc<dyn WorkloadSpec>, TableError>;

/// A scenario file's table for a workload: parses the table's value into a spec. Errors
/// name the field (`"fault[2].kind"`, relative to the table) and say what is wrong.
pub struct WorkloadTable {
    /// The top-level key.
    pub key: &'static str,
    /// The parser: (the table, the scenario's node count, its duration).
    pub parse: ParseTable,
}

/// Why a workload's table was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableError {
    /// The field, relative to the table (empty: the table itself).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl TableError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every workload a scenario file can name, by its top-level table. (`[ota]` and
/// `[rollout]` predate the interface and are parsed by the scenario parser itself; the OTA
/// campaign runs as a workload, [`crate::ota::OtaWorkload`].)
pub const TABLES: &[WorkloadTable] = &[WorkloadTable {
    key: crate::telemetry::KEY,
    parse: crate::telemetry::parse_table,
}];

/// Runs `sim` to `end`, giving each workload its ticks in time order (ties: in the order
/// of `workloads`).
pub(crate) fn drive(sim: &mut Simulation, workloads: &mut [Box<dyn Workload>], end: Instant) {
    loop {
        let next = workloads
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.next_tick().map(|t| (t, i)))
            .filter(|(t, _)| *t <= end)
            .min();
        let Some((t, i)) = next else {
            sim.run_until(end);
            return;
        };
        sim.run_until(t.max(sim.now()));
        workloads[i].tick(sim);
    }
}
