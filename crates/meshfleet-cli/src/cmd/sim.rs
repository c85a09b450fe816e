//! `meshfleet sim`: run a mesh scenario in the deterministic simulator, with the same node
//! code as `meshfleet node`, and write its metrics, time series and plots.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use meshfleet_sim::{demo_scenario, run_scenario, run_scenario_file, RunError, SimReport};

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
    let started = std::time::Instant::now();
    let result = match (&args.scenario, args.demo) {
        (_, true) => {
            let mut s = demo_scenario();
            if let Some(seed) = args.seed {
                s = s.seed(seed);
            }
            run_scenario(s, args.out.as_deref(), progress)
        }
        (Some(path), false) => run_scenario_file(path, args.seed, args.out.as_deref(), progress),
        (None, false) => return Err(usage("give a scenario file or --demo")),
    };
    bar.finish_and_clear();
    let report = result.map_err(|e| match e {
        // A bad scenario is the user's input: exit status 2, with the line and field.
        RunError::Scenario(_) | RunError::Invalid(_) => usage(e.to_string()),
        other => anyhow::Error::new(other),
    })?;
    if args.json {
        outln!("{}", serde_json::to_string(&report).context("cannot serialize the report")?);
    } else {
        print_report(&report, started.elapsed().as_secs_f64())?;
        if let Some(dir) = &args.out {
            outln!("outputs: {}", dir.display());
        }
    }
    Ok(())
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or_else(|| "never".to_owned(), |s| format!("{s:.1} s"))
}

fn print_report(r: &SimReport, wall_s: f64) -> anyhow::Result<()> {
    outln!(
        "{}: {} nodes, {} topology, {} channel, seed {}",
        r.scenario, r.nodes, r.topology, r.channel, r.seed
    );
    outln!(
        "simulated {:.0} virtual s in {wall_s:.1} s wall ({:.0}x), {} events",
        r.virtual_time_s,
        r.virtual_time_s / wall_s.max(1e-9),
        r.events_processed
    );
    outln!(
        "mesh formed: joins done {}, node lists converged {}; converged at end: {} ({} component(s))",
        opt_s(r.convergence.formation_done_s),
        opt_s(r.convergence.formation_converged_s),
        r.convergence.converged_at_end,
        r.convergence.components_at_end
    );
    outln!(
        "time sync: spread at end {}, below 1 ms from {}",
        r.time_sync.final_spread_us.map_or_else(|| "n/a".to_owned(), |us| format!("{us} us")),
        opt_s(r.time_sync.below_1ms_from_s)
    );
    outln!(
        "air: {} frames, {:.1} MB",
        r.frames_on_air,
        r.bytes_on_air as f64 / 1e6
    );
    outln!(
        "app messages: {} sent, {}/{} deliveries ({:.1}%), {} duplicates",
        r.app.sent,
        r.app.delivered,
        r.app.expected_deliveries,
        100.0 * r.app.delivery_ratio,
        r.app.duplicates
    );
    if let Some(o) = &r.ota {
        outln!(
            "ota ({}): {}/{} nodes updated, makespan {}, {:.1} MB of OTA frames on air ({:.2}x (N-1) x payload), source sent {:.1} KB",
            o.strategy,
            o.updated,
            o.receivers,
            o.makespan_s.map_or_else(|| "n/a (not all updated)".to_owned(), |s| format!("{s:.1} s")),
            o.ota_bytes_on_air as f64 / 1e6,
            o.ota_bytes_on_air as f64 / (f64::from(o.receivers.max(1)) * o.payload_bytes.max(1) as f64),
            o.source_ota_bytes as f64 / 1e3,
        );
        outln!(
            "     image {} KB -> payload {} KB; ends: {} new, {} old, {} broken; makespan / lower bound: {} (mean-value), {} (with stall propagation)",
            o.image_bytes / 1024,
            o.payload_bytes / 1024,
            o.final_new,
            o.final_old,
            o.final_broken,
            o.ratio_to_bound.map_or_else(|| "n/a".to_owned(), |x| format!("{x:.2}x")),
            o.ratio_to_combined_bound
                .map_or_else(|| "n/a".to_owned(), |x| format!("{x:.2}x")),
        );
    }
    if !r.drops.is_empty() {
        let drops: Vec<String> = r.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        outln!("drops: {}", drops.join(", "));
    }
    Ok(())
}
