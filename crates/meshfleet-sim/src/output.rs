//! Writers: `summary.json`, `run.json`, CSV tables and SVG plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::air::TrafficClass;
use crate::metrics::SimReport;
use crate::svg::{bar_chart, panels, Chart, Series};

/// Wall-clock facts about a run: kept out of `summary.json` so that it stays a pure
/// function of the scenario and seed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RunInfo {
    /// Wall time of the simulation, seconds.
    pub wall_time_s: f64,
    /// Virtual seconds per wall second.
    pub speedup: f64,
    /// Events processed per wall second.
    pub events_per_s: f64,
    /// Peak resident memory of the process (`VmHWM`), KiB, where known.
    pub peak_rss_kib: Option<u64>,
    /// This crate's version.
    pub simulator_version: &'static str,
}

impl RunInfo {
    /// Facts for a run of `report` that took `wall_time_s`.
    pub fn new(report: &SimReport, wall_time_s: f64) -> Self {
        let wall = wall_time_s.max(1e-9);
        Self {
            wall_time_s,
            speedup: report.virtual_time_s / wall,
            events_per_s: report.events_processed as f64 / wall,
            peak_rss_kib: peak_rss_kib(),
            simulator_version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// Peak resident set size of this process in KiB (`VmHWM` in `/proc/self/status`), on
/// Linux; `None` elsewhere.
pub fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// This process's resident memory now (VmRSS), in KiB, on Linux; `None` elsewhere. Beside
/// [`peak_rss_kib`] it tells a transient peak (formation's frames in flight) from state
/// that stays.
pub fn rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// An output file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    /// The file or directory.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<(), WriteError> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|source| WriteError { path, source })
}

/// Writes every output into `dir` (created if missing):
///
/// * `summary.json`: the report (deterministic),
/// * `run.json`: wall time, speed, peak memory,
/// * `timeseries.csv`: one row per sample,
/// * `nodes.csv`, `links.csv`: per-node and per-link tables,
/// * plots (each only when it has data): `bytes_on_air.svg` (by traffic class),
///   `convergence.svg`, `time_sync.svg`, `bytes_per_node.svg`. Workloads add their own
///   ([`crate::workload::Workload::plots`]; the traffic workload's `delivered.svg` and
///   `latency_cdf.svg`), written by `run_scenario`.
pub fn write_outputs(report: &SimReport, run: &RunInfo, dir: &Path) -> Result<(), WriteError> {
    std::fs::create_dir_all(dir).map_err(|source| WriteError {
        path: dir.to_path_buf(),
        source,
    })?;
    write(dir, "summary.json", &report.to_json())?;
    let mut run_json = serde_json::to_string_pretty(run).unwrap_or_default();
    run_json.push('\n');
    write(dir, "run.json", &run_json)?;
    write(dir, "timeseries.csv", &timeseries_csv(report))?;
    write(dir, "nodes.csv", &nodes_csv(report))?;
    write(dir, "links.csv", &links_csv(report))?;
    for (name, svg) in plots(report) {
        write(dir, name, &svg)?;
    }
    Ok(())
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// The time series as CSV.
pub(crate) fn timeseries_csv(r: &SimReport) -> String {
    let mut s = String::from(
        "t_s,app_sent,app_delivered,frames_on_air,bytes_on_air,drops,nodes_alive,nodes_converged,components,queued_bytes,time_spread_us,bytes_node_sync,bytes_time_sync,bytes_ota,bytes_application\n",
    );
    for (k, x) in r.series.iter().enumerate() {
        // Empty when the run was not driven by `run_scenario` (no class log).
        let class = |f: fn(&crate::ClassBytes) -> u64| opt(r.air_by_class.get(k).map(f));
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            x.t_s,
            x.app_sent,
            x.app_delivered,
            x.frames_on_air,
            x.bytes_on_air,
            x.drops,
            x.nodes_alive,
            x.nodes_converged,
            x.components,
            x.queued_bytes,
            opt(x.time_spread_us),
            class(|c| c.node_sync),
            class(|c| c.time_sync),
            class(|c| c.ota),
            class(|c| c.application)
        );
    }
    s
}

fn nodes_csv(r: &SimReport) -> String {
    let mut s = String::from("node,id,up,boots,frames_sent,bytes_sent,queue_peak_bytes,queue_peak_frames,app_received,known_nodes\n");
    for n in &r.per_node {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{}",
            n.node,
            n.id,
            n.up,
            n.boots,
            n.frames_sent,
            n.bytes_sent,
            n.queue_peak_bytes,
            n.queue_peak_frames,
            n.app_received,
            n.known_nodes
        );
    }
    s
}

fn links_csv(r: &SimReport) -> String {
    let mut s = String::from("link,ap,station,opened_s,closed_s,frames_down,bytes_down,frames_up,bytes_up,retransmissions\n");
    for l in &r.per_link {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{}",
            l.link,
            l.ap,
            l.station,
            l.opened_s,
            opt(l.closed_s),
            l.frames_down,
            l.bytes_down,
            l.frames_up,
            l.bytes_up,
            l.retransmissions
        );
    }
    s
}

/// The run's events as chart markers: formation, convergence, OTA start, timeline events.
pub(crate) fn markers(r: &SimReport) -> Vec<(f64, String)> {
    let c = &r.convergence;
    let mut m = Vec::new();
    if let Some(t) = c.formation_done_s.filter(|t| *t > 0.0) {
        m.push((t, "joins done".to_owned()));
    }
    if let Some(t) = c.formation_converged_s {
        m.push((t, "mesh converged".to_owned()));
    }
    if let Some(t) = r.ota.as_ref().and_then(|o| o.started_s) {
        m.push((t, "OTA start".to_owned()));
    }
    // One marker per distinct event time (a partition of 20 nodes is one line, not 20).
    let mut last = f64::NEG_INFINITY;
    for e in c.after_events.iter().filter(|e| e.cause != "formation") {
        if e.at_s > last {
            m.push((e.at_s, e.cause.clone()));
            last = e.at_s;
        }
    }
    m
}

pub(crate) fn with_markers(mut c: Chart, m: &[(f64, String)]) -> Chart {
    for (x, l) in m {
        c = c.marker(*x, l.clone());
    }
    c
}

fn plots(r: &SimReport) -> Vec<(&'static str, String)> {
    let interval = match r.series.as_slice() {
        [a, b, ..] => b.t_s - a.t_s,
        [a] => a.t_s,
        [] => 1.0,
    }
    .max(1e-9);
    let marks = markers(r);
    let t_end = r.virtual_time_s;
    let mut out = Vec::new();
    let air_title = format!(
        "{}: bytes on air ({:.1} MB in all)",
        r.scenario,
        r.bytes_on_air as f64 / 1e6
    );
    let mut air = Chart::new(
        air_title,
        "virtual time (s)",
        "kB/s put on the air (all links)",
    )
    .x_range(0.0, t_end);
    if r.air_by_class.len() == r.series.len() && !r.series.is_empty() {
        air = air.stacked();
        for class in TrafficClass::ALL {
            let total: u64 = r.air_by_class.iter().map(|c| c.of(class)).sum();
            let pts = r
                .series
                .iter()
                .zip(&r.air_by_class)
                .map(|(x, c)| (x.t_s, c.of(class) as f64 / interval / 1e3))
                .collect();
            air = air.series(Series::new(
                format!("{} ({:.1} MB)", class.label(), total as f64 / 1e6),
                pts,
            ));
        }
    } else {
        air = air.series(Series::new(
            "bytes on air",
            r.series
                .iter()
                .map(|x| (x.t_s, x.bytes_on_air as f64 / interval / 1e3))
                .collect(),
        ));
    }
    out.push(("bytes_on_air.svg", with_markers(air, &marks).render()));
    if !r.series.is_empty() {
        let nodes = with_markers(
            Chart::new(
                format!("{}: node-list convergence", r.scenario),
                "virtual time (s)",
                "nodes",
            )
            .series(Series::new(
                "running",
                r.series
                    .iter()
                    .map(|x| (x.t_s, f64::from(x.nodes_alive)))
                    .collect(),
            ))
            .series(Series::new(
                "node list right",
                r.series
                    .iter()
                    .map(|x| (x.t_s, f64::from(x.nodes_converged)))
                    .collect(),
            ))
            .x_range(0.0, t_end),
            &marks,
        );
        let comps = with_markers(
            Chart::new(
                "connected components among running nodes",
                "virtual time (s)",
                "components",
            )
            .series(Series::new(
                "components",
                r.series
                    .iter()
                    .map(|x| (x.t_s, f64::from(x.components)))
                    .collect(),
            ))
            .integer_y()
            .x_range(0.0, t_end),
            &marks,
        );
        out.push(("convergence.svg", panels(&[nodes.render(), comps.render()])));
    }
    let spread: Vec<(f64, f64)> = r
        .series
        .iter()
        .filter_map(|x| x.time_spread_us.map(|us| (x.t_s, us.max(1) as f64 / 1e3)))
        .collect();
    if !spread.is_empty() {
        let chart = with_markers(
            Chart::new(
                format!("{}: mesh-time spread (largest component)", r.scenario),
                "virtual time (s)",
                "largest clock difference, ms (log)",
            )
            .series(Series::new("spread", spread))
            .log_y()
            .x_range(0.0, t_end),
            &marks,
        );
        out.push(("time_sync.svg", chart.render()));
    }
    let bars: Vec<(String, f64)> = if r.per_node.len() <= 60 {
        r.per_node
            .iter()
            .map(|n| (n.node.to_string(), n.bytes_sent as f64 / 1e3))
            .collect()
    } else {
        // Too many nodes for one bar each: a histogram of 20 bins.
        let max = r
            .per_node
            .iter()
            .map(|n| n.bytes_sent)
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let mut bins = [0u64; 20];
        for n in &r.per_node {
            let b = ((n.bytes_sent as f64 / max) * 20.0).floor().min(19.0) as usize;
            bins[b] += 1;
        }
        bins.iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    format!("{:.0}", (i as f64 + 0.5) * max / 20.0 / 1e3),
                    *c as f64,
                )
            })
            .collect()
    };
    let (xl, yl) = if r.per_node.len() <= 60 {
        ("node", "kB sent on air")
    } else {
        ("kB sent on air (bin centre)", "nodes")
    };
    out.push((
        "bytes_per_node.svg",
        bar_chart(
            &format!("{}: bytes on air per node", r.scenario),
            xl,
            yl,
            &bars,
        ),
    ));
    out
}
