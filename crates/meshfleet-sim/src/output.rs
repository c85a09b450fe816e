//! Writers: `summary.json`, `run.json`, CSV tables and SVG plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::metrics::SimReport;
use crate::svg::{bar_chart, line_chart};

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
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
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
/// * `delivered.svg`, `bytes_on_air.svg`, `bytes_per_node.svg`, `latency_cdf.svg`.
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
        "t_s,app_sent,app_delivered,frames_on_air,bytes_on_air,drops,nodes_alive,nodes_converged,components,queued_bytes,time_spread_us\n",
    );
    for x in &r.series {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{}",
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
            opt(x.time_spread_us)
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

fn plots(r: &SimReport) -> Vec<(&'static str, String)> {
    let interval = match r.series.as_slice() {
        [a, b, ..] => b.t_s - a.t_s,
        [a] => a.t_s,
        [] => 1.0,
    }
    .max(1e-9);
    let per_s = |f: fn(&crate::Sample) -> u64| -> Vec<(f64, f64)> {
        r.series
            .iter()
            .map(|x| (x.t_s, f(x) as f64 / interval))
            .collect()
    };
    let delivered = line_chart(
        &format!("{}: application messages", r.scenario),
        "virtual time (s)",
        "messages per second",
        &[
            ("delivered (all receivers)", per_s(|x| x.app_delivered)),
            ("sent", per_s(|x| x.app_sent)),
        ],
    );
    let air = line_chart(
        &format!("{}: bytes on air", r.scenario),
        "virtual time (s)",
        "kB per second (all links)",
        &[(
            "bytes on air",
            r.series
                .iter()
                .map(|x| (x.t_s, x.bytes_on_air as f64 / interval / 1e3))
                .collect(),
        )],
    );
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
    let per_node = bar_chart(
        &format!("{}: bytes on air per node", r.scenario),
        xl,
        yl,
        &bars,
    );
    let lat = &r.latencies_us;
    let step = (lat.len() / 500).max(1);
    let mut cdf: Vec<(f64, f64)> = lat
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0)
        .map(|(i, v)| (*v as f64 / 1e3, (i + 1) as f64 / lat.len() as f64))
        .collect();
    if let Some(last) = lat.last() {
        cdf.push((*last as f64 / 1e3, 1.0));
    }
    let cdf = line_chart(
        &format!(
            "{}: delivery latency CDF ({} deliveries)",
            r.scenario,
            lat.len()
        ),
        "latency (ms)",
        "fraction of deliveries",
        &[("latency", cdf)],
    );
    vec![
        ("delivered.svg", delivered),
        ("bytes_on_air.svg", air),
        ("bytes_per_node.svg", per_node),
        ("latency_cdf.svg", cdf),
    ]
}
