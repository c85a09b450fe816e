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
//! The workloads today: [`crate::traffic`] (`[[traffic]]`: application messages, delivery
//! and latency, all on simulation hooks: timers, the event hook, the sample hook),
//! [`crate::ota`] (`[ota]`: a firmware campaign, attached through the node factory and a
//! timeline action, observed through the frame trace and the event hook),
//! [`crate::rollout`] (`[rollout]`: the rollout controller on the gateway, a tick state
//! machine that takes the `[ota]` campaign over and ends the run at its verdict) and
//! [`crate::telemetry`] (`[telemetry]`: the agent's telemetry, the monitor and faults).
//!
//! Two ways to act in time: a hook installed on the simulation
//! ([`Simulation::add_timer_hook`]) runs *among* the events of its instant, in scheduling
//! order, as the event loop's own events do; a tick ([`Workload::next_tick`]) runs once
//! every event up to its time has run, with the whole simulation at hand. A workload may
//! end the run ([`Workload::finished`]) or fail it ([`Workload::take_error`]).
//!

use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshfleet_mesh::{Duration, Instant};

use crate::metrics::SimReport;
use crate::scenario::{InvalidScenario, Scenario};
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

    /// The spec as [`Any`], so that code holding a scenario can find its own workload's
    /// spec again (`Scenario::traffic` adds a flow to the traffic spec already there).
    /// Implement it as `self`.
    fn as_any(&self) -> &dyn Any;

    /// What it simulates, in words, one line each (`meshfleet sim` prints them before the
    /// run, [`crate::describe_scenario`]).
    fn describe(&self) -> Vec<String> {
        Vec::new()
    }

    /// Keys of workloads this one runs itself, so that they are not built on their own
    /// (a rollout distributes the `ota` campaign's build through its own controller).
    fn takes_over(&self) -> &'static [&'static str] {
        &[]
    }
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

    /// Whether the run is over because of it (a rollout that reached its verdict): the
    /// run stops after this tick and reports up to now.
    fn finished(&self) -> bool {
        false
    }

    /// Why it could not run, if it could not (then it is finished too; `run_scenario`
    /// returns the error).
    fn take_error(&mut self) -> Option<crate::RunError> {
        None
    }
}

/// What a workload's table parser gets from the scenario file.
#[non_exhaustive]
pub struct TableSource<'a> {
    /// The table's value (what the file has under the workload's key).
    pub value: &'a toml::Value,
    /// The whole file's text: a parser that wants the position of each value deserializes
    /// its key from it with [`toml::Spanned`] fields and reports errors with
    /// [`TableError::at`] (spans are byte ranges of this text).
    pub text: &'a str,
    /// The scenario file, if loaded from one (to resolve relative paths, e.g. an image).
    pub path: Option<&'a Path>,
    /// The scenario's node count.
    pub nodes: u32,
    /// The scenario's duration.
    pub duration: Duration,
    /// Specs of the workloads whose tables come earlier in [`TABLES`] (a rollout reads
    /// the OTA campaign's build from here).
    pub earlier: &'a [Arc<dyn WorkloadSpec>],
}

impl TableSource<'_> {
    /// Deserializes this workload's part of the file with spans: `T` is a struct with the
    /// workload's key as its one field (serde ignores the file's other keys), so its
    /// [`toml::Spanned`] values point into [`TableSource::text`]. TOML errors (an unknown
    /// key, a wrong type) come back with their position.
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, TableError> {
        toml::from_str(self.text).map_err(|e| TableError {
            span: e.span(),
            ..TableError::new("", e.message().trim())
        })
    }
}

/// A workload table's parser.
pub type ParseTable = fn(&TableSource<'_>) -> Result<Arc<dyn WorkloadSpec>, TableError>;

/// A scenario file's table for a workload: parses the table's value into a spec. Errors
/// name the field (`"fault[2].kind"`, relative to the table) and say what is wrong.
pub struct WorkloadTable {
    /// The top-level key.
    pub key: &'static str,
    /// The parser.
    pub parse: ParseTable,
}

/// Why a workload's table was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableError {
    /// The field, relative to the table (empty: the table itself).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Where, as a byte range of the file ([`TableSource::text`]); `None`: the table's
    /// first line.
    pub span: Option<Range<usize>>,
    /// A file the table names could not be read (the path, and why): the scenario
    /// parser reports it as [`crate::ScenarioError::Read`].
    pub unreadable: Option<(PathBuf, std::io::ErrorKind)>,
}

impl TableError {
    /// An error about `field`, reported at the table's first line.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            span: None,
            unreadable: None,
        }
    }

    /// An error about `field` at `span` of the file.
    pub fn at(span: Range<usize>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            span: Some(span),
            ..Self::new(field, message)
        }
    }
}

/// Every workload a scenario file can name, by its top-level table, in the order they are
/// parsed, attached and reported.
pub const TABLES: &[WorkloadTable] = &[
    // The OTA campaign first: it wraps the node factory before the others do.
    WorkloadTable {
        key: crate::ota::KEY,
        parse: crate::ota::parse_table,
    },
    // After `ota`: it reads the campaign.
    WorkloadTable {
        key: crate::rollout::KEY,
        parse: crate::rollout::parse_table,
    },
    WorkloadTable {
        key: crate::telemetry::KEY,
        parse: crate::telemetry::parse_table,
    },
    WorkloadTable {
        key: crate::traffic::KEY,
        parse: crate::traffic::parse_table,
    },
];

/// A simulation with its scenario's workloads attached, installed and driven: what
/// [`crate::run_scenario`] runs, for code that also wants the [`Simulation`] (hooks,
/// stepping, its nodes) while the workloads run.
///
/// ```
/// use meshfleet_mesh::Duration;
/// use meshfleet_sim::workload::Run;
/// use meshfleet_sim::{Scenario, Topology, Traffic};
///
/// let scenario = Scenario::new(Topology::Line { nodes: 3, spacing_m: 30.0 })
///     .duration(Duration::from_secs(20))
///     .traffic(Traffic::broadcast(Some(1), 1.0, Duration::from_secs(5)));
/// let mut run = Run::new(scenario).expect("a valid scenario");
/// run.sim_mut().set_frame_trace(|_frame| {});
/// let report = run.run();
/// assert_eq!(report.app.broadcasts_complete, report.app.broadcasts);
/// ```
pub struct Run {
    sim: Simulation,
    workloads: Vec<Box<dyn Workload>>,
}

impl Run {
    /// Builds the scenario's workloads ([`Scenario::workloads`] in order, but for those
    /// another one takes over, [`WorkloadSpec::takes_over`]), lets each wrap the scenario
    /// ([`Workload::attach`]), builds the simulation and installs each
    /// ([`Workload::install`]) before anything runs.
    pub fn new(scenario: Scenario) -> Result<Self, InvalidScenario> {
        scenario.validate()?;
        let taken: Vec<&str> = scenario
            .workloads
            .iter()
            .flat_map(|w| w.takes_over().iter().copied())
            .collect();
        let mut workloads: Vec<Box<dyn Workload>> = scenario
            .workloads
            .iter()
            .filter(|w| !taken.contains(&w.key()))
            .map(|w| w.build(&scenario))
            .collect();
        let mut scenario = scenario;
        for w in &mut workloads {
            scenario = w.attach(scenario);
        }
        let sim = Simulation::try_new_with(scenario, |sim| {
            for w in &mut workloads {
                w.install(sim);
            }
        })?;
        Ok(Self { sim, workloads })
    }

    /// The simulation.
    pub fn sim(&self) -> &Simulation {
        &self.sim
    }

    /// The simulation, mutably (hooks, actions, stepping: the workloads' own timers run
    /// inside it; their ticks need [`Run::run_until`]).
    pub fn sim_mut(&mut self) -> &mut Simulation {
        &mut self.sim
    }

    /// Runs to `t` (or until a workload finishes the run, [`Workload::finished`]), giving
    /// each workload its ticks. Returns whether a workload finished the run.
    pub fn run_until(&mut self, t: Instant) -> bool {
        drive(&mut self.sim, &mut self.workloads, t)
    }

    /// Runs to the scenario's end (or until a workload finishes the run) and returns the
    /// report with every workload's results.
    pub fn run(&mut self) -> SimReport {
        let end = self.sim.end();
        let mut report = if self.run_until(end) {
            self.sim.stop()
        } else {
            self.sim.run()
        };
        for w in &mut self.workloads {
            w.finish(&self.sim, &mut report);
        }
        report
    }

    /// The report so far, with every workload's results.
    pub fn report(&mut self) -> SimReport {
        let mut report = self.sim.report();
        for w in &mut self.workloads {
            w.finish(&self.sim, &mut report);
        }
        report
    }

    /// Every workload's plots (after [`Run::run`] or [`Run::report`]).
    pub fn plots(&self) -> Vec<(String, String)> {
        self.workloads.iter().flat_map(|w| w.plots()).collect()
    }

    /// The first error a workload met ([`Workload::take_error`]).
    pub fn take_error(&mut self) -> Option<crate::RunError> {
        self.workloads.iter_mut().find_map(|w| w.take_error())
    }
}

/// Runs `sim` to `end`, giving each workload its ticks in time order (ties: in the order
/// of `workloads`). Stops early, right after the tick, when a workload finishes the run;
/// returns whether one did.
pub(crate) fn drive(
    sim: &mut Simulation,
    workloads: &mut [Box<dyn Workload>],
    end: Instant,
) -> bool {
    loop {
        let next = workloads
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.next_tick().map(|t| (t, i)))
            .filter(|(t, _)| *t <= end)
            .min();
        let Some((t, i)) = next else {
            sim.run_until(end);
            return false;
        };
        sim.run_until(t.max(sim.now()));
        workloads[i].tick(sim);
        if workloads[i].finished() {
            return true;
        }
    }
}

/// Checks of one value of a workload's table, each returning the value or a
/// [`TableError`] at the value's place in the file (the messages the scenario parser gives
/// its own fields). `field` is relative to the table.
pub mod check {
    use toml::Spanned;

    use super::TableError;
    use meshfleet_mesh::Duration;

    /// A positive, finite number.
    pub fn positive(field: &str, v: &Spanned<f64>) -> Result<f64, TableError> {
        let x = *v.get_ref();
        if x > 0.0 && x.is_finite() {
            Ok(x)
        } else {
            Err(TableError::at(
                v.span(),
                field,
                format!("must be positive (got {x})"),
            ))
        }
    }

    /// A finite number, zero or more.
    pub fn non_negative(field: &str, v: &Spanned<f64>) -> Result<f64, TableError> {
        let x = *v.get_ref();
        if x >= 0.0 && x.is_finite() {
            Ok(x)
        } else {
            Err(TableError::at(
                v.span(),
                field,
                format!("must not be negative (got {x})"),
            ))
        }
    }

    /// An integer from `min` that fits 32 bits.
    pub fn count(field: &str, v: &Spanned<i64>, min: i64) -> Result<u32, TableError> {
        let x = *v.get_ref();
        if x < min {
            return Err(TableError::at(
                v.span(),
                field,
                format!("must be at least {min} (got {x})"),
            ));
        }
        u32::try_from(x).map_err(|_| TableError::at(v.span(), field, format!("{x} is too large")))
    }

    /// A node number of a scenario with `n` nodes.
    pub fn node(field: &str, v: &Spanned<i64>, n: u32) -> Result<u32, TableError> {
        let x = *v.get_ref();
        if x >= 1 && x <= i64::from(n) {
            Ok(x as u32)
        } else {
            Err(TableError::at(
                v.span(),
                field,
                format!("names node {x}, but nodes are numbered 1..={n}"),
            ))
        }
    }

    /// Seconds as a duration (µs, rounded).
    pub fn secs(x: f64) -> Duration {
        Duration::from_micros((x * 1e6).round() as u64)
    }
}
