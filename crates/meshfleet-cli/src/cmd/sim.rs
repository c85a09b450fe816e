//! `meshfleet sim`: run a mesh scenario in the deterministic simulator, with the same node
//! code as `meshfleet node`, and write its metrics, time series and plots.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use meshfleet_sim::{
    demo_scenario, describe_scenario, explain_report, load_scenario, run_scenario, RunError,
    SimReport,
};

use crate::context::{outln, usage, Context};

const LONG_ABOUT: &str = "\
Run a mesh scenario in the deterministic simulator.

The simulator drives the real meshfleet node code (node sync, routing, time sync, plugins) for \
up to thousands of virtual nodes over a modelled WiFi/TCP channel (per-link goodput, per-hop \
delay, loss as TCP retransmission delay, connection drops, shared airtime or interference). A \
seed makes a run reproducible bit for bit: the same seed writes the same summary.json.

A scenario is a TOML file (see examples/scenarios/): topology (line, star, grid, random tree, \
geometric placement, explicit edges), channel model, link parameters, a timeline of events \
(crashes, reboots, partitions, link changes, late joins, moves) and application traffic. \
Mistakes in the file are reported with the line and the field.

With --out DIR it writes DIR/summary.json (the run's metrics, deterministic), DIR/run.json \
(wall time, memory), CSV time series and SVG plots.";

const AFTER_LONG_HELP: &str = "\
Examples:
  # The built-in demo: a few hundred nodes, no files needed
  meshfleet sim --demo --out out/demo

  # A scenario file with another seed, metrics as JSON on stdout
  meshfleet sim examples/scenarios/partition_heal.toml --seed 7 --out out/ph --json";

/// Run a mesh scenario in the deterministic simulator.
#[derive(clap::Args, Debug)]
#[command(long_about = LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
pub(crate) struct Args {
    /// The scenario file (TOML).
    #[arg(required_unless_present = "demo", conflicts_with = "demo")]
    scenario: Option<PathBuf>,
    /// Run the built-in demo scenario instead of a file.
    #[arg(long)]
    demo: bool,
    /// Override the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Write summary.json, run.json, CSV series and SVG plots into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the summary as JSON on stdout instead of a readable report.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args, _ctx: &Context) -> anyhow::Result<()> {
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(1000);
        bar.set_style(
            ProgressStyle::with_template("{spinner} simulating [{bar:40}] {percent:>3}% of virtual time, {elapsed} ({eta} left)")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let b = bar.clone();
    let progress = move |f: f64| b.set_position((f.clamp(0.0, 1.0) * 1000.0) as u64);
    let scenario = match (&args.scenario, args.demo) {
        (_, true) => demo_scenario(),
        (Some(path), false) => load_scenario(path).map_err(|e| usage(e.to_string()))?,
        (None, false) => return Err(usage("give a scenario file or --demo")),
    };
    let scenario = match args.seed {
        Some(seed) => scenario.seed(seed),
        None => scenario,
    };
    let drift_ppm = scenario.clock.drift_ppm;
    let description = describe_scenario(&scenario);
    let started = std::time::Instant::now();
    let result = run_scenario(scenario, args.out.as_deref(), progress);
    bar.finish_and_clear();
    let report = result.map_err(|e| match e {
        // A bad scenario is the user's input: exit status 2, with the line and field.
        RunError::Scenario(_) | RunError::Invalid(_) => usage(e.to_string()),
        other => anyhow::Error::new(other),
    })?;
    if args.json {
        outln!("{}", serde_json::to_string(&report).context("cannot serialize the report")?);
    } else {
        print_report(&description, &report, drift_ppm, started.elapsed().as_secs_f64())?;
        if let Some(dir) = &args.out {
            outln!("outputs: {}", dir.display());
        }
    }
    Ok(())
}

fn print_report(
    description: &[String],
    r: &SimReport,
    drift_ppm: f64,
    wall_s: f64,
) -> anyhow::Result<()> {
    outln!("What was simulated");
    for line in description {
        outln!("  {line}");
    }
    outln!(
        "  ran {:.0} virtual s in {wall_s:.1} s of wall time ({:.1}x real time), {} events",
        r.virtual_time_s,
        r.virtual_time_s / wall_s.max(1e-9),
        r.events_processed
    );
    outln!("Results");
    for line in explain_report(r, drift_ppm) {
        outln!("  {line}");
    }
    Ok(())
}
