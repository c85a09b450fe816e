//! Scenario files (TOML). Unknown keys and wrong types are rejected by the TOML
//! deserializer with their line and column; everything else (impossible topologies,
//! rates, probabilities, node numbers) is checked here against the value's span, so every
//! error names the file, line, column and field.
//!
//! The format is documented in `docs/simulator.md`; `examples/scenarios/` has examples.
//! Workloads' tables (`[ota]`, `[rollout]`, `[telemetry]`, `[[traffic]]`) are parsed by
//! their workloads ([`crate::workload::TABLES`]); this parser hands each its table, the
//! file's text (for positions) and path.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use meshfleet_channel::{ChannelModel, LinkChange, LinkParams};
use meshfleet_mesh::Duration;
use serde::Deserialize;
use toml::Spanned;

use crate::scenario::{
    check_change, ClockParams, Formation, MeshParams, RejoinParams, Scenario, SimEvent,
};
use crate::topology::{parse_edges, Topology, ESP8266_MAX_CONN};
use crate::workload::check;

/// A scenario file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file (or an edges file it names) could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid scenario.
    #[error("{0}")]
    Invalid(Box<Located>),
}

impl ScenarioError {
    /// Where the problem is, for invalid files.
    pub fn location(&self) -> Option<&Located> {
        match self {
            Self::Invalid(l) => Some(l),
            Self::Read { .. } => None,
        }
    }
}

/// A problem at a place in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Located {
    /// The file, if loaded from one.
    pub path: Option<PathBuf>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The field, as a dotted path (`topology.rows`, `events[2].node`), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
    /// The offending source line.
    pub source_line: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}:{}:{}: ", p.display(), self.line, self.column)?,
            None => write!(f, "line {}, column {}: ", self.line, self.column)?,
        }
        if let Some(field) = &self.field {
            write!(f, "`{field}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if !self.source_line.is_empty() {
            write!(
                f,
                "\n  | {}\n  | {}^",
                self.source_line,
                " ".repeat(self.column.saturating_sub(1))
            )?;
        }
        Ok(())
    }
}

struct Src<'a> {
    text: &'a str,
    path: Option<&'a Path>,
}

impl Src<'_> {
    fn err(
        &self,
        span: Range<usize>,
        field: Option<String>,
        message: impl Into<String>,
    ) -> ScenarioError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..start].chars().count() + 1;
        let source_line = self.text[line_start..]
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        ScenarioError::Invalid(Box::new(Located {
            path: self.path.map(Path::to_path_buf),
            line,
            column,
            field,
            message: message.into(),
            source_line,
        }))
    }
}

type Sp<T> = Option<Spanned<T>>;

/// The scenario's own tables. Workload tables ([`crate::workload::TABLES`]) are taken out
/// before these are read, so a new workload needs no field here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    seed: Sp<i64>,
    duration_s: Spanned<f64>,
    sample_interval_s: Sp<f64>,
    id_base: Sp<i64>,
    topology: RawTopology,
    formation: Option<RawFormation>,
    link: Option<RawLink>,
    channel: Option<RawChannel>,
    clock: Option<RawClock>,
    mesh: Option<RawMesh>,
    rejoin: Option<RawRejoin>,
    #[serde(default)]
    events: Vec<RawEvent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    kind: Spanned<String>,
    nodes: Sp<i64>,
    rows: Sp<i64>,
    cols: Sp<i64>,
    max_children: Sp<i64>,
    spacing_m: Sp<f64>,
    width_m: Sp<f64>,
    height_m: Sp<f64>,
    radio_range_m: Sp<f64>,
    edges: Sp<Vec<Spanned<Vec<i64>>>>,
    file: Sp<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFormation {
    start_s: Sp<f64>,
    interval_ms: Sp<f64>,
    jitter_ms: Sp<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    goodput_bytes_per_s: Sp<f64>,
    frame_overhead_us: Sp<f64>,
    latency_us: Sp<f64>,
    loss: Sp<f64>,
    mss_bytes: Sp<i64>,
    min_rto_ms: Sp<f64>,
    max_rto_ms: Sp<f64>,
    max_retransmits: Sp<i64>,
    queue_cap_bytes: Sp<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    model: Spanned<String>,
    interference_range_m: Sp<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClock {
    drift_ppm: Sp<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMesh {
    root: Sp<i64>,
    time_authority: Sp<Vec<i64>>,
    node_timeout_ms: Sp<f64>,
    node_sync_interval_ms: Sp<f64>,
    time_sync_interval_ms: Sp<f64>,
    node_sync: Sp<String>,
    tree_text: Sp<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRejoin {
    scan_delay_ms: Sp<f64>,
    rescan_interval_ms: Sp<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at_s: Spanned<f64>,
    kind: Spanned<String>,
    node: Sp<i64>,
    parent: Sp<i64>,
    link: Sp<Vec<i64>>,
    hold_s: Sp<f64>,
    nodes: Sp<Vec<i64>>,
    loss: Sp<f64>,
    goodput_bytes_per_s: Sp<f64>,
    latency_us: Sp<f64>,
}

/// Loads and validates a scenario file. Relative `topology.file` paths are resolved
/// against the scenario file's directory.
pub fn load_scenario(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_scenario(&text, Some(path))
}

/// Parses and validates scenario text. `path` (if any) names the file in errors, gives
/// the default name and anchors relative edge files.
pub fn parse_scenario(text: &str, path: Option<&Path>) -> Result<Scenario, ScenarioError> {
    let src = Src { text, path };
    let toml_err = |e: toml::de::Error| {
        let span = e.span().unwrap_or(0..0);
        src.err(span, None, e.message().trim().to_owned())
    };
    // Workload tables first: each is parsed by its workload; the rest must be the
    // scenario's own.
    let mut top: toml::Table = toml::from_str(text).map_err(toml_err)?;
    let mut tables = Vec::new();
    for t in crate::workload::TABLES {
        if let Some(v) = top.remove(t.key) {
            tables.push((t, v));
        }
    }
    let raw: RawScenario = if tables.is_empty() {
        toml::from_str(text).map_err(toml_err)?
    } else {
        // Spans of the scenario's own fields matter for errors: blank the workload tables
        // out of the text (same length, so every other span stays put).
        toml::from_str(&blank_tables(text, &tables)).map_err(toml_err)?
    };
    let mut s = build(&src, raw)?;
    let nodes = s.topology.node_count();
    for (t, v) in tables {
        let input = crate::workload::TableSource {
            value: &v,
            text,
            path,
            nodes,
            duration: s.duration,
            earlier: &s.workloads,
        };
        let spec = (t.parse)(&input).map_err(|e| {
            if let Some((path, kind)) = e.unreadable {
                return ScenarioError::Read {
                    path,
                    source: std::io::Error::new(kind, e.message),
                };
            }
            let span = e.span.unwrap_or_else(|| table_span(text, t.key));
            // `fault[2].kind` is `telemetry.fault[2].kind`; `[2].kind` (an array of
            // tables) is `traffic[2].kind`.
            let field = if e.field.is_empty() {
                t.key.to_owned()
            } else if e.field.starts_with('[') {
                format!("{}{}", t.key, e.field)
            } else {
                format!("{}.{}", t.key, e.field)
            };
            src.err(span, Some(field), e.message)
        })?;
        s.workloads.push(spec);
    }
    s.validate()
        .map_err(|e| src.err(table_span(text, &e.field), Some(e.field), e.message))?;
    Ok(s)
}

/// Where `[key]`, `[[key.…]]` or `key =` starts in the text (for error positions).
fn table_span(text: &str, key: &str) -> Range<usize> {
    let first = key.split('.').next().unwrap_or(key);
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let l = line.trim_start().trim_start_matches('[');
        if l.starts_with(first) && l[first.len()..].trim_start().starts_with(['.', ']', '=']) {
            return at..at + line.trim_end().len();
        }
        at += line.len();
    }
    0..0
}

/// `text` with the lines of the workload tables `tables` replaced by spaces (kept length).
fn blank_tables(text: &str, tables: &[(&crate::workload::WorkloadTable, toml::Value)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_workload = false;
    for line in text.split_inclusive('\n') {
        let l = line.trim_start();
        if l.starts_with('[') {
            let name = l
                .trim_start_matches('[')
                .split([']', '.'])
                .next()
                .unwrap_or("")
                .trim();
            in_workload = tables.iter().any(|(t, _)| t.key == name);
        }
        if in_workload {
            out.extend(line.chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Field checks: each returns the value or an error at the value's span.
struct Check<'a, 'b> {
    src: &'a Src<'b>,
}

impl Check<'_, '_> {
    /// A shared check's error at its span, the field as given (absolute here).
    fn table(&self, e: crate::workload::TableError) -> ScenarioError {
        self.src
            .err(e.span.unwrap_or(0..0), Some(e.field), e.message)
    }

    fn positive(&self, field: &str, v: &Spanned<f64>) -> Result<f64, ScenarioError> {
        check::positive(field, v).map_err(|e| self.table(e))
    }

    fn non_negative(&self, field: &str, v: &Spanned<f64>) -> Result<f64, ScenarioError> {
        check::non_negative(field, v).map_err(|e| self.table(e))
    }

    fn probability(&self, field: &str, v: &Spanned<f64>) -> Result<f64, ScenarioError> {
        let x = *v.get_ref();
        if (0.0..=1.0).contains(&x) {
            Ok(x)
        } else {
            Err(self.src.err(
                v.span(),
                Some(field.into()),
                format!("must be a probability in [0, 1] (got {x})"),
            ))
        }
    }

    fn count(&self, field: &str, v: &Spanned<i64>, min: i64) -> Result<u32, ScenarioError> {
        check::count(field, v, min).map_err(|e| self.table(e))
    }

    fn node(&self, field: &str, v: &Spanned<i64>, n: u32) -> Result<u32, ScenarioError> {
        check::node(field, v, n).map_err(|e| self.table(e))
    }

    fn nodes(&self, field: &str, v: &Spanned<Vec<i64>>, n: u32) -> Result<Vec<u32>, ScenarioError> {
        v.get_ref()
            .iter()
            .map(|&x| {
                if x >= 1 && x <= i64::from(n) {
                    Ok(x as u32)
                } else {
                    Err(self.src.err(
                        v.span(),
                        Some(field.into()),
                        format!("names node {x}, but nodes are numbered 1..={n}"),
                    ))
                }
            })
            .collect()
    }

    /// Rejects a field the kind does not use.
    fn unused<T>(&self, field: &str, v: &Sp<T>, why: &str) -> Result<(), ScenarioError> {
        match v {
            Some(v) => Err(self
                .src
                .err(v.span(), Some(field.into()), format!("not used {why}"))),
            None => Ok(()),
        }
    }
}

fn secs(x: f64) -> Duration {
    Duration::from_micros((x * 1e6).round() as u64)
}

fn millis(x: f64) -> Duration {
    Duration::from_micros((x * 1e3).round() as u64)
}

fn micros(x: f64) -> Duration {
    Duration::from_micros(x.round() as u64)
}

fn build(src: &Src<'_>, raw: RawScenario) -> Result<Scenario, ScenarioError> {
    let c = Check { src };
    let topology = build_topology(&c, &raw.topology)?;
    let n = topology.node_count();
    let mut s = Scenario::new(topology.clone());
    s.name = raw.name.clone().unwrap_or_else(|| {
        src.path.and_then(|p| p.file_stem()).map_or_else(
            || "scenario".to_owned(),
            |f| f.to_string_lossy().into_owned(),
        )
    });
    if let Some(seed) = &raw.seed {
        s.seed = u64::try_from(*seed.get_ref())
            .map_err(|_| src.err(seed.span(), Some("seed".into()), "must not be negative"))?;
    }
    s.duration = secs(c.positive("duration_s", &raw.duration_s)?);
    if let Some(v) = &raw.sample_interval_s {
        s.sample_interval = secs(c.positive("sample_interval_s", v)?);
    }
    if let Some(v) = &raw.id_base {
        let base = u32::try_from(*v.get_ref())
            .ok()
            .filter(|b| u64::from(*b) + u64::from(n) <= u64::from(u32::MAX))
            .ok_or_else(|| {
                src.err(
                    v.span(),
                    Some("id_base".into()),
                    format!("id_base + {n} must fit a 32-bit node id"),
                )
            })?;
        s.id_base = base;
    }
    if let Some(f) = &raw.formation {
        let mut fm = Formation::default();
        if let Some(v) = &f.start_s {
            fm.start = secs(c.non_negative("formation.start_s", v)?);
        }
        if let Some(v) = &f.interval_ms {
            fm.interval = millis(c.non_negative("formation.interval_ms", v)?);
        }
        if let Some(v) = &f.jitter_ms {
            fm.jitter = millis(c.non_negative("formation.jitter_ms", v)?);
        }
        s.formation = fm;
    }
    if let Some(l) = &raw.link {
        s.link = build_link(&c, l)?;
    }
    if let Some(ch) = &raw.channel {
        s.channel = match ch.model.get_ref().as_str() {
            "independent" | "airtime" => {
                c.unused(
                    "channel.interference_range_m",
                    &ch.interference_range_m,
                    "by this channel model",
                )?;
                if ch.model.get_ref() == "airtime" {
                    ChannelModel::Airtime
                } else {
                    ChannelModel::Independent
                }
            }
            "geometric" => {
                let range = match &topology {
                    Topology::Geometric { radio_range_m, .. } => *radio_range_m,
                    Topology::Grid { spacing_m, .. } | Topology::Line { spacing_m, .. } => *spacing_m,
                    other => {
                        return Err(src.err(
                            ch.model.span(),
                            Some("channel.model".into()),
                            format!(
                                "the geometric channel needs node positions; topology `{}` has none (use line, grid or geometric)",
                                other.label()
                            ),
                        ))
                    }
                };
                let interference_range_m = match &ch.interference_range_m {
                    Some(v) => c.positive("channel.interference_range_m", v)?,
                    None => 2.0 * range,
                };
                ChannelModel::Geometric {
                    interference_range_m,
                }
            }
            other => {
                return Err(src.err(
                    ch.model.span(),
                    Some("channel.model".into()),
                    format!(
                    "unknown channel model `{other}` (expected independent, airtime or geometric)"
                ),
                ))
            }
        };
    }
    if let Some(cl) = &raw.clock {
        let mut p = ClockParams::default();
        if let Some(v) = &cl.drift_ppm {
            let x = c.non_negative("clock.drift_ppm", v)?;
            if x >= 1000.0 {
                return Err(src.err(
                    v.span(),
                    Some("clock.drift_ppm".into()),
                    format!("must be below 1000 ppm (got {x})"),
                ));
            }
            p.drift_ppm = x;
        }
        s.clock = p;
    }
    if let Some(m) = &raw.mesh {
        let mut p = MeshParams::default();
        if let Some(v) = &m.root {
            p.root = Some(c.node("mesh.root", v, n)?);
        }
        if let Some(v) = &m.time_authority {
            p.time_authority = c.nodes("mesh.time_authority", v, n)?;
        }
        if let Some(v) = &m.node_timeout_ms {
            p.node_timeout = Some(millis(c.positive("mesh.node_timeout_ms", v)?));
        }
        if let Some(v) = &m.node_sync_interval_ms {
            p.node_sync_interval = Some(millis(c.positive("mesh.node_sync_interval_ms", v)?));
        }
        if let Some(v) = &m.time_sync_interval_ms {
            p.time_sync_interval = Some(millis(c.positive("mesh.time_sync_interval_ms", v)?));
        }
        if let Some(v) = &m.node_sync {
            p.node_sync = Some(match v.get_ref().as_str() {
                "meshfleet" => meshfleet_mesh::NodeSyncPolicy::Meshfleet,
                "library" => meshfleet_mesh::NodeSyncPolicy::Library,
                other => {
                    return Err(c.src.err(
                        v.span(),
                        Some("mesh.node_sync".into()),
                        format!("must be \"meshfleet\" or \"library\" (got {other:?})"),
                    ))
                }
            });
        }
        if let Some(v) = &m.tree_text {
            p.tree_text = match v.get_ref().as_str() {
                "copied" => crate::TreeText::Copied,
                "shared" => crate::TreeText::Shared,
                other => {
                    return Err(c.src.err(
                        v.span(),
                        Some("mesh.tree_text".into()),
                        format!("must be \"copied\" or \"shared\" (got {other:?})"),
                    ))
                }
            };
        }
        s.mesh = p;
    }
    if let Some(r) = &raw.rejoin {
        let mut p = RejoinParams::default();
        if let Some(v) = &r.scan_delay_ms {
            p.scan_delay = millis(c.non_negative("rejoin.scan_delay_ms", v)?);
        }
        if let Some(v) = &r.rescan_interval_ms {
            p.rescan_interval = millis(c.positive("rejoin.rescan_interval_ms", v)?);
        }
        s.rejoin = p;
    }
    for (i, e) in raw.events.iter().enumerate() {
        let at = secs(c.non_negative(&format!("events[{i}].at_s"), &e.at_s)?);
        s.events.push((at, build_event(&c, e, i, n)?));
    }
    // Everything above is checked with its span; this catches what only the whole
    // scenario can tell, pointing at the topology.
    s.validate()
        .map_err(|e| src.err(raw.topology.kind.span(), Some(e.field), e.message))?;
    Ok(s)
}

fn build_topology(c: &Check<'_, '_>, t: &RawTopology) -> Result<Topology, ScenarioError> {
    let kind = t.kind.get_ref().as_str();
    let field = |f: &str| format!("topology.{f}");
    fn need<'a, T>(
        c: &Check<'_, '_>,
        t: &RawTopology,
        v: &'a Sp<T>,
        f: &str,
    ) -> Result<&'a Spanned<T>, ScenarioError> {
        v.as_ref().ok_or_else(|| {
            let kind = t.kind.get_ref();
            c.src.err(
                t.kind.span(),
                Some(format!("topology.{f}")),
                format!("topology kind `{kind}` needs `{f}`"),
            )
        })
    }
    let why = format!("by topology kind `{kind}`");
    let max_children = |default: u32| match &t.max_children {
        Some(v) => c.count(&field("max_children"), v, 1),
        None => Ok(default),
    };
    let spacing = || match &t.spacing_m {
        Some(v) => c.positive(&field("spacing_m"), v),
        None => Ok(30.0),
    };
    let nodes = || c.count(&field("nodes"), need(c, t, &t.nodes, "nodes")?, 1);
    let topo = match kind {
        "line" => {
            for (f, v) in [("rows", &t.rows), ("cols", &t.cols), ("max_children", &t.max_children)] {
                c.unused(&field(f), v, &why)?;
            }
            Topology::Line { nodes: nodes()?, spacing_m: spacing()? }
        }
        "star" => {
            c.unused(&field("rows"), &t.rows, &why)?;
            c.unused(&field("spacing_m"), &t.spacing_m, &why)?;
            let nodes = nodes()?;
            let max_children = max_children(crate::topology::ESP32_MAX_CONN)?;
            if nodes > 1 && nodes - 1 > max_children {
                let span = t.max_children.as_ref().map_or(t.kind.span(), Spanned::span);
                return Err(c.src.err(
                    span,
                    Some(field("max_children")),
                    format!("a star of {nodes} nodes needs a hub with {} stations, more than max_children = {max_children}", nodes - 1),
                ));
            }
            Topology::Star { nodes, max_children }
        }
        "grid" => {
            c.unused(&field("nodes"), &t.nodes, "by topology kind `grid` (it has rows x cols nodes)")?;
            let rows = c.count(&field("rows"), need(c, t, &t.rows, "rows")?, 1)?;
            let cols = c.count(&field("cols"), need(c, t, &t.cols, "cols")?, 1)?;
            Topology::Grid { rows, cols, spacing_m: spacing()?, max_children: max_children(ESP8266_MAX_CONN)? }
        }
        "random_tree" => {
            c.unused(&field("spacing_m"), &t.spacing_m, &why)?;
            Topology::RandomTree { nodes: nodes()?, max_children: max_children(ESP8266_MAX_CONN)? }
        }
        "geometric" => Topology::Geometric {
            nodes: nodes()?,
            width_m: c.positive(&field("width_m"), need(c, t, &t.width_m, "width_m")?)?,
            height_m: c.positive(&field("height_m"), need(c, t, &t.height_m, "height_m")?)?,
            radio_range_m: c.positive(&field("radio_range_m"), need(c, t, &t.radio_range_m, "radio_range_m")?)?,
            max_children: max_children(ESP8266_MAX_CONN)?,
        },
        "explicit" => {
            let nodes = nodes()?;
            let edges = explicit_edges(c, t, nodes)?;
            Topology::Explicit { nodes, edges }
        }
        other => {
            return Err(c.src.err(
                t.kind.span(),
                Some(field("kind")),
                format!("unknown topology kind `{other}` (expected line, star, grid, random_tree, geometric or explicit)"),
            ))
        }
    };
    if kind != "explicit" {
        c.unused(&field("edges"), &t.edges, &why)?;
        c.unused(&field("file"), &t.file, &why)?;
    }
    if kind != "geometric" {
        for (f, v) in [
            ("width_m", &t.width_m),
            ("height_m", &t.height_m),
            ("radio_range_m", &t.radio_range_m),
        ] {
            c.unused(&field(f), v, &why)?;
        }
    }
    if kind != "grid" {
        c.unused(&field("cols"), &t.cols, &why)?;
        c.unused(&field("rows"), &t.rows, &why)?;
    }
    // Limits only the whole topology can tell (tree depth, star hub).
    topo.check().map_err(|(f, m)| {
        let span = match f {
            "rows" => t.rows.as_ref().map(Spanned::span),
            "cols" => t.cols.as_ref().map(Spanned::span),
            "nodes" => t.nodes.as_ref().map(Spanned::span),
            "max_children" => t.max_children.as_ref().map(Spanned::span),
            _ => None,
        };
        c.src.err(span.unwrap_or(t.kind.span()), Some(field(f)), m)
    })?;
    Ok(topo)
}

fn explicit_edges(
    c: &Check<'_, '_>,
    t: &RawTopology,
    nodes: u32,
) -> Result<Vec<(u32, u32)>, ScenarioError> {
    let field = Some("topology.edges".to_owned());
    match (&t.edges, &t.file) {
        (Some(_), Some(f)) => Err(c.src.err(
            f.span(),
            Some("topology.file".into()),
            "give either `edges` or `file`, not both",
        )),
        (None, None) => Err(c.src.err(
            t.kind.span(),
            field,
            "topology kind `explicit` needs `edges` or `file`",
        )),
        (Some(list), None) => {
            let mut edges = Vec::new();
            for e in list.get_ref() {
                let pairs = e.get_ref();
                let [p, ch] = pairs.as_slice() else {
                    return Err(c.src.err(
                        e.span(),
                        field,
                        format!("an edge is [parent, child], got {} numbers", pairs.len()),
                    ));
                };
                for v in [*p, *ch] {
                    if v < 1 || v > i64::from(nodes) {
                        return Err(c.src.err(e.span(), field, format!("edge [{p}, {ch}] names node {v}, but nodes are numbered 1..={nodes}")));
                    }
                }
                edges.push((*p as u32, *ch as u32));
                // Point at the edge that closes a cycle or gives a node a second parent.
                if let Err((_, m)) = (Topology::Explicit {
                    nodes,
                    edges: edges.clone(),
                })
                .check()
                {
                    return Err(c.src.err(e.span(), field, m));
                }
            }
            Ok(edges)
        }
        (None, Some(f)) => {
            let rel = Path::new(f.get_ref());
            let path = match c.src.path.and_then(Path::parent) {
                Some(dir) if rel.is_relative() => dir.join(rel),
                _ => rel.to_path_buf(),
            };
            let text = std::fs::read_to_string(&path).map_err(|source| ScenarioError::Read {
                path: path.clone(),
                source,
            })?;
            let edges_src = Src {
                text: &text,
                path: Some(&path),
            };
            let line_span = |line: usize| {
                let start: usize = text
                    .split_inclusive('\n')
                    .take(line - 1)
                    .map(str::len)
                    .sum();
                start..start
            };
            let edges =
                parse_edges(&text).map_err(|(line, m)| edges_src.err(line_span(line), None, m))?;
            let topo = Topology::Explicit {
                nodes,
                edges: edges.clone(),
            };
            if let Err((_, m)) = topo.check() {
                return Err(c.src.err(
                    f.span(),
                    Some("topology.file".into()),
                    format!("{}: {m}", path.display()),
                ));
            }
            Ok(edges)
        }
    }
}

fn build_link(c: &Check<'_, '_>, l: &RawLink) -> Result<LinkParams, ScenarioError> {
    let mut p = LinkParams::default();
    if let Some(v) = &l.goodput_bytes_per_s {
        p.goodput_bytes_per_s = c.positive("link.goodput_bytes_per_s", v)?;
    }
    if let Some(v) = &l.frame_overhead_us {
        p.frame_overhead = micros(c.non_negative("link.frame_overhead_us", v)?);
    }
    if let Some(v) = &l.latency_us {
        p.latency = micros(c.non_negative("link.latency_us", v)?);
    }
    if let Some(v) = &l.loss {
        p.loss = c.probability("link.loss", v)?;
    }
    if let Some(v) = &l.mss_bytes {
        p.mss = c.count("link.mss_bytes", v, 1)? as usize;
    }
    if let Some(v) = &l.min_rto_ms {
        p.min_rto = millis(c.positive("link.min_rto_ms", v)?);
    }
    if let Some(v) = &l.max_rto_ms {
        p.max_rto = millis(c.positive("link.max_rto_ms", v)?);
        if p.max_rto < p.min_rto {
            return Err(c.src.err(
                v.span(),
                Some("link.max_rto_ms".into()),
                "must not be below min_rto_ms",
            ));
        }
    }
    if let Some(v) = &l.max_retransmits {
        p.max_retransmits = c.count("link.max_retransmits", v, 0)?;
    }
    if let Some(v) = &l.queue_cap_bytes {
        p.queue_cap_bytes = c.count("link.queue_cap_bytes", v, 1)? as usize;
    }
    Ok(p)
}

fn build_event(
    c: &Check<'_, '_>,
    e: &RawEvent,
    i: usize,
    n: u32,
) -> Result<SimEvent, ScenarioError> {
    let kind = e.kind.get_ref().as_str();
    let f = |name: &str| format!("events[{i}].{name}");
    let why = format!("by event kind `{kind}`");
    let need = |v: &Sp<i64>, name: &str| {
        v.as_ref()
            .ok_or_else(|| {
                c.src.err(
                    e.kind.span(),
                    Some(f(name)),
                    format!("event kind `{kind}` needs `{name}`"),
                )
            })
            .and_then(|v| c.node(&f(name), v, n))
    };
    let link = || -> Result<(u32, u32), ScenarioError> {
        let v = e.link.as_ref().ok_or_else(|| {
            c.src.err(
                e.kind.span(),
                Some(f("link")),
                format!("event kind `{kind}` needs `link = [a, b]`"),
            )
        })?;
        let ns = c.nodes(&f("link"), v, n)?;
        match ns.as_slice() {
            [a, b] if a != b => Ok((*a, *b)),
            [_, _] => Err(c.src.err(
                v.span(),
                Some(f("link")),
                "a link joins two different nodes",
            )),
            _ => Err(c.src.err(
                v.span(),
                Some(f("link")),
                format!("a link is [a, b], got {} numbers", ns.len()),
            )),
        }
    };
    // Which optional fields each kind takes; any other is an error.
    let allowed: &[&str] = match kind {
        "join" => &["node", "parent"],
        "crash" | "reboot" | "hang" => &["node"],
        "link_down" => &["link", "hold_s"],
        "link_up" => &["link"],
        "move" => &["node", "parent"],
        "partition" => &["nodes"],
        "heal" => &[],
        "set_link" => &["link", "loss", "goodput_bytes_per_s", "latency_us"],
        other => {
            return Err(c.src.err(
                e.kind.span(),
                Some(f("kind")),
                format!("unknown event kind `{other}` (expected join, crash, reboot, hang, link_down, link_up, move, partition, heal or set_link)"),
            ))
        }
    };
    let present: [(&str, Option<Range<usize>>); 8] = [
        ("node", e.node.as_ref().map(Spanned::span)),
        ("parent", e.parent.as_ref().map(Spanned::span)),
        ("link", e.link.as_ref().map(Spanned::span)),
        ("hold_s", e.hold_s.as_ref().map(Spanned::span)),
        ("nodes", e.nodes.as_ref().map(Spanned::span)),
        ("loss", e.loss.as_ref().map(Spanned::span)),
        (
            "goodput_bytes_per_s",
            e.goodput_bytes_per_s.as_ref().map(Spanned::span),
        ),
        ("latency_us", e.latency_us.as_ref().map(Spanned::span)),
    ];
    for (name, span) in present {
        if let Some(span) = span {
            if !allowed.contains(&name) {
                return Err(c.src.err(span, Some(f(name)), format!("not used {why}")));
            }
        }
    }
    let ev = match kind {
        "join" => SimEvent::Join {
            node: need(&e.node, "node")?,
            parent: e
                .parent
                .as_ref()
                .map(|v| c.node(&f("parent"), v, n))
                .transpose()?,
        },
        "crash" => SimEvent::Crash {
            node: need(&e.node, "node")?,
        },
        "reboot" => SimEvent::Reboot {
            node: need(&e.node, "node")?,
        },
        "hang" => SimEvent::Hang {
            node: need(&e.node, "node")?,
        },
        "link_down" => {
            let (a, b) = link()?;
            let hold = e
                .hold_s
                .as_ref()
                .map(|v| c.positive(&f("hold_s"), v))
                .transpose()?
                .map(secs);
            SimEvent::LinkDown { a, b, hold }
        }
        "link_up" => {
            let (ap, sta) = link()?;
            SimEvent::Move {
                node: sta,
                parent: ap,
            }
        }
        "move" => SimEvent::Move {
            node: need(&e.node, "node")?,
            parent: need(&e.parent, "parent")?,
        },
        "partition" => {
            let v = e.nodes.as_ref().ok_or_else(|| {
                c.src.err(
                    e.kind.span(),
                    Some(f("nodes")),
                    "event kind `partition` needs `nodes`",
                )
            })?;
            let nodes = c.nodes(&f("nodes"), v, n)?;
            if nodes.is_empty() {
                return Err(c.src.err(
                    v.span(),
                    Some(f("nodes")),
                    "a partition needs at least one node",
                ));
            }
            SimEvent::Partition { nodes }
        }
        "heal" => SimEvent::Heal,
        _ => {
            let between = if e.link.is_some() {
                Some(link()?)
            } else {
                None
            };
            let mut change = LinkChange::default();
            if let Some(v) = &e.loss {
                change.loss = Some(c.probability(&f("loss"), v)?);
            }
            if let Some(v) = &e.goodput_bytes_per_s {
                change.goodput_bytes_per_s = Some(c.positive(&f("goodput_bytes_per_s"), v)?);
            }
            if let Some(v) = &e.latency_us {
                change.latency = Some(micros(c.non_negative(&f("latency_us"), v)?));
            }
            if change == LinkChange::default() {
                return Err(c.src.err(
                    e.kind.span(),
                    Some(f("kind")),
                    "set_link changes nothing: give loss, goodput_bytes_per_s or latency_us",
                ));
            }
            check_change(&change)
                .map_err(|(field, m)| c.src.err(e.kind.span(), Some(f(field)), m))?;
            SimEvent::SetLink { between, change }
        }
    };
    if let (
        SimEvent::Move { node, parent }
        | SimEvent::Join {
            node,
            parent: Some(parent),
        },
        Some(p),
    ) = (&ev, &e.parent)
    {
        if node == parent {
            return Err(c.src.err(
                p.span(),
                Some(f("parent")),
                "a node cannot be its own access point",
            ));
        }
    }
    Ok(ev)
}
