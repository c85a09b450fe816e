//! The telemetry-and-faults workload (issue 10): fleet monitoring measured in the simulator.
//!
//! * Every meshfleet node runs the agent's real [`Telemetry`] plugin and sends its reports
//!   (710, routed SINGLE) to the gateway (node 1); every `stock_every`-th node is a modelled
//!   stock painlessMesh node that only broadcasts the library's status package (604) every
//!   report period and answers no queries.
//! * The gateway node carries a tap that hands each 710 it receives to the real
//!   [`Monitor`]; the 604 broadcasts it receives, its delay measurements and its node tree go
//!   to the monitor too, and the monitor's queries (711) and delay probes go out through the
//!   gateway node: the monitor sees exactly what crossed the simulated mesh.
//! * A per-node device model feeds what the mesh layer cannot know (free heap, RSSI,
//!   latency, loss) every 10 s with a healthy node's noise; uptime and message rates are the
//!   node's own.
//! * Faults from the scenario file (`[[telemetry.fault]]`) or drawn at random
//!   (`telemetry.faults_per_class`): memory leak, reboot loop, RSSI drop, message flood,
//!   node death, partition, clock jump, slow link. Mesh-level ones go through the simulator's
//!   timeline (crash, reboot, partition/heal, link latency); the node picks are made when a
//!   fault starts, from the gateway's view of the tree.
//! * `summary.json` gets `telemetry`: the detection table (per class injected, detected,
//!   missed, detection latency p50/p95, false alerts), every alert no fault explains, and
//!   telemetry bytes per node-hour.
//!
//! What counts as detected: an alert of the class's kinds ([`FaultClass::detected_by`]) on
//! the faulty node (the top of a partition's subtree) between the fault's start and 600 s
//! after its end. Any other alert raised is a false alert. A clock jump must raise nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use meshfleet_agent::telemetry::{Identity, Metric};
use meshfleet_agent::{Telemetry, TelemetryConfig};
use meshfleet_channel::LinkChange;
use meshfleet_mesh::{
    Claims, Ctx, Duration, Event, Instant, LinkId, MeshChange, Node, NodeId, Plugin, PluginEvent,
    Rng,
};
use meshfleet_monitor::telemetry::TELEMETRY_TYPE;
use meshfleet_monitor::{AlertEvent, AlertKind, Monitor, MonitorConfig, MonitorEvent, Subject};
use meshfleet_wire::{NodeTree, Package, Routing};
use serde::Serialize;

use crate::scenario::{NodeInit, Scenario, SimEvent};
use crate::sim::Simulation;
use crate::workload::{TableError, TableSource, Workload, WorkloadSpec};

/// The workload's key (`[telemetry]`, `summary.json` → `telemetry`).
pub const KEY: &str = "telemetry";

/// How often the device model records its values (and the workload checks its faults).
const STEP: Duration = Duration::from_secs(10);
/// A flooding node sends this many messages a second (the monitor's flood threshold is
/// 600 a minute).
const FLOOD_PER_S: u32 = 15;
/// A leak loses this much free heap an hour.
const LEAK_BYTES_PER_HOUR: i64 = 20_000;
/// A reboot loop reboots the node this often.
const REBOOT_EVERY: Duration = Duration::from_secs(240);
/// An RSSI drop takes this many dB.
const RSSI_DROP_DB: i64 = 15;
/// A slow link adds this much one-way latency to the node's uplink.
const SLOW_LINK_EXTRA: Duration = Duration::from_millis(800);
/// A clock jump moves the node's uptime counter this far.
const CLOCK_JUMP_S: i64 = 86_400;
/// An alert up to this long after a fault's end still belongs to it (its tail).
const TAIL: Duration = Duration::from_secs(600);
/// A node that had a fault gets no other for this long after its end.
const COOLDOWN: Duration = Duration::from_secs(3_600);
/// Largest subtree a random partition cuts off.
const MAX_PARTITION: usize = 40;
/// Most faults a scenario may list or draw.
pub const MAX_FAULTS: usize = 10_000;

// ----- faults ---------------------------------------------------------------------------

/// A class of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultClass {
    /// Free heap falls 20 KB an hour; ends with a reboot (the fix is new firmware).
    MemoryLeak,
    /// The node reboots at once and then every 240 s.
    RebootLoop,
    /// RSSI falls 15 dB.
    RssiDrop,
    /// The node sends 15 messages a second to its parent.
    MessageFlood,
    /// The node loses power; it boots again at the fault's end.
    NodeDeath,
    /// The node's subtree (2-40 nodes) is cut from the mesh; healed at the end.
    Partition,
    /// The node's uptime counter jumps a day ahead: nothing may be raised.
    ClockJump,
    /// The node's uplink gets 800 ms more latency; the node reports the latency it sees.
    SlowLink,
}

impl FaultClass {
    /// Every class, in table order.
    pub const ALL: [Self; 8] = [
        Self::MemoryLeak,
        Self::RebootLoop,
        Self::RssiDrop,
        Self::MessageFlood,
        Self::NodeDeath,
        Self::Partition,
        Self::ClockJump,
        Self::SlowLink,
    ];

    /// Its label in files and reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::MemoryLeak => "memory_leak",
            Self::RebootLoop => "reboot_loop",
            Self::RssiDrop => "rssi_drop",
            Self::MessageFlood => "message_flood",
            Self::NodeDeath => "node_death",
            Self::Partition => "partition",
            Self::ClockJump => "clock_jump",
            Self::SlowLink => "slow_link",
        }
    }

    /// The class with `label`.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.label() == label)
    }

    /// Alerts that detect it (on the faulty node, or the top of the partition). Empty:
    /// nothing may be raised.
    pub fn detected_by(self) -> &'static [AlertKind] {
        match self {
            Self::MemoryLeak => &[AlertKind::MemoryLeak, AlertKind::LowMemory],
            Self::RebootLoop => &[AlertKind::RebootLoop],
            Self::RssiDrop => &[AlertKind::LinkDegraded, AlertKind::WeakSignal],
            Self::MessageFlood => &[AlertKind::MessageFlood],
            Self::NodeDeath => &[AlertKind::NodeOffline],
            Self::Partition => &[AlertKind::Partition],
            Self::ClockJump => &[],
            Self::SlowLink => &[AlertKind::HighLatency],
        }
    }

    /// How long a drawn fault lasts.
    pub fn default_duration(self) -> Duration {
        Duration::from_secs(match self {
            Self::MessageFlood | Self::Partition => 600,
            Self::RebootLoop => 900,
            _ => 1_800,
        })
    }

    /// Faults that reboot or silence the node are put on leaves of the gateway's tree: on a
    /// relay they would cut a subtree, which is a partition (another class).
    fn needs_leaf(self) -> bool {
        matches!(
            self,
            Self::MemoryLeak | Self::RebootLoop | Self::NodeDeath | Self::SlowLink
        )
    }
}

/// One fault of the scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultSpec {
    /// What happens.
    pub class: FaultClass,
    /// When (from the start of the run).
    pub at: Duration,
    /// On which node (number); `None`: a node picked when the fault starts.
    pub node: Option<u32>,
    /// How long it lasts.
    pub duration: Duration,
}

/// The `[telemetry]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetrySetup {
    /// How often nodes report (710 keyframe rhythm, 604 period); the monitor is told.
    pub report_interval: Duration,
    /// Every n-th node (by number, n ≥ 2) is a stock node sending 604 only; 0: none.
    pub stock_every: u32,
    /// Whether drawn faults may hit stock nodes.
    pub fault_stock: bool,
    /// Faults at fixed times.
    pub faults: Vec<FaultSpec>,
    /// Faults drawn per class, spread evenly from `inject_from` to the end.
    pub faults_per_class: u32,
    /// First drawn fault not before this (the monitor learns its baselines first).
    pub inject_from: Duration,
    /// Seed of the node picks and the device model's noise.
    pub seed: u64,
    /// Alerts before this are the mesh forming, not faults: counted apart
    /// (`settling_alerts`), neither detections nor false alerts. Faults start later.
    pub settle: Duration,
    /// The monitor's configuration.
    pub monitor: MonitorConfig,
}

impl Default for TelemetrySetup {
    fn default() -> Self {
        Self {
            report_interval: Duration::from_secs(300),
            stock_every: 3,
            fault_stock: false,
            faults: Vec::new(),
            faults_per_class: 0,
            inject_from: Duration::from_secs(3_600),
            seed: 1,
            settle: Duration::from_secs(600),
            monitor: MonitorConfig::default(),
        }
    }
}

impl TelemetrySetup {
    /// Every fault of a run of `duration`: the listed ones and the drawn ones, by time.
    /// Drawn faults of one class sit in equal slots; a partition is cut short to fit its
    /// slot (the simulator's heal ends every partition at once).
    pub fn schedule(&self, duration: Duration) -> Vec<FaultSpec> {
        let mut out = self.faults.clone();
        if let Some(per) = NonZeroU64::new(u64::from(self.faults_per_class)) {
            let n = per.get();
            let longest = FaultClass::ALL
                .iter()
                .map(|c| c.default_duration().as_micros())
                .max()
                .unwrap_or(0);
            let from = self.inject_from.as_micros();
            let until = duration
                .as_micros()
                .saturating_sub(longest + TAIL.as_micros());
            let slot = until.saturating_sub(from) / per;
            for (ci, class) in FaultClass::ALL.into_iter().enumerate() {
                let mut len = class.default_duration().as_micros();
                if class == FaultClass::Partition {
                    len = len.min(slot * 3 / 4);
                }
                for k in 0..n {
                    // classes spread within a slot, so they do not all start together
                    let at = from + k * slot + slot * ci as u64 / FaultClass::ALL.len() as u64;
                    out.push(FaultSpec {
                        class,
                        at: Duration::from_micros(at),
                        node: None,
                        duration: Duration::from_micros(len.max(1)),
                    });
                }
            }
        }
        out.sort_by_key(|f| (f.at, f.class));
        out
    }
}

impl WorkloadSpec for TelemetrySetup {
    fn key(&self) -> &'static str {
        KEY
    }

    fn validate(&self, scenario: &Scenario) -> Result<(), String> {
        let n = scenario.topology.node_count();
        for (i, f) in self.faults.iter().enumerate() {
            if let Some(node) = f.node {
                if node < 2 || node > n {
                    return Err(format!(
                        "telemetry.fault[{i}].node: must be 2 to {n} (node 1 is the gateway; got {node})"
                    ));
                }
            }
        }
        for (i, f) in self.faults.iter().enumerate() {
            if f.at < self.settle {
                return Err(format!(
                    "telemetry.fault[{i}].at_s: must not be before settle_s ({} s)",
                    self.settle.as_secs_f64()
                ));
            }
        }
        if self.faults_per_class > 0 && self.inject_from < self.settle {
            return Err("telemetry.inject_from_s: must not be before settle_s".into());
        }
        let drawn = self.faults_per_class as usize * FaultClass::ALL.len();
        if self.faults.len() + drawn > MAX_FAULTS {
            return Err(format!(
                "telemetry.faults_per_class: at most {MAX_FAULTS} faults in all"
            ));
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn describe(&self) -> Vec<String> {
        let stock = match self.stock_every {
            0 => "no stock nodes".to_owned(),
            n => format!("every {n}th node a stock node sending its status package"),
        };
        vec![format!(
            "telemetry: nodes report every {:.0} s to the monitor on node 1 ({stock}); {} fixed fault(s) and {} per class drawn",
            self.report_interval.as_secs_f64(),
            self.faults.len(),
            self.faults_per_class
        )]
    }

    fn build(&self, scenario: &Scenario) -> Box<dyn Workload> {
        Box::new(TelemetryWorkload::new(self.clone(), scenario))
    }
}

// ----- parsing --------------------------------------------------------------------------

/// Parses the `[telemetry]` table.
pub(crate) fn parse_table(src: &TableSource<'_>) -> Result<Arc<dyn WorkloadSpec>, TableError> {
    let (v, nodes, duration) = (src.value, src.nodes, src.duration);
    let t = v
        .as_table()
        .ok_or_else(|| TableError::new("", "must be a table"))?;
    let mut s = TelemetrySetup::default();
    let num = |t: &toml::Table, k: &str, field: &str| -> Result<Option<f64>, TableError> {
        match t.get(k) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => Ok(Some(*i as f64)),
            Some(toml::Value::Float(f)) if f.is_finite() => Ok(Some(*f)),
            Some(_) => Err(TableError::new(field, "must be a number")),
        }
    };
    let secs = |x: f64, field: &str, min: f64| -> Result<Duration, TableError> {
        if x >= min && x <= duration.as_secs_f64().max(min) + 86_400.0 * 365.0 {
            Ok(Duration::from_micros((x * 1e6).round() as u64))
        } else {
            Err(TableError::new(
                field,
                format!("must be at least {min} s (got {x})"),
            ))
        }
    };
    for k in t.keys() {
        if ![
            "report_interval_s",
            "stock_every",
            "fault_stock",
            "faults_per_class",
            "inject_from_s",
            "seed",
            "settle_s",
            "fault",
        ]
        .contains(&k.as_str())
        {
            return Err(TableError::new(
                k.as_str(),
                "unknown field (report_interval_s, stock_every, fault_stock, faults_per_class, inject_from_s, seed, settle_s, fault)",
            ));
        }
    }
    if let Some(x) = num(t, "report_interval_s", "report_interval_s")? {
        s.report_interval = secs(x, "report_interval_s", 10.0)?;
        s.monitor.report_interval_s = x.round() as u32;
    }
    let count = |x: Option<f64>, field: &str, max: f64| -> Result<Option<u32>, TableError> {
        match x {
            None => Ok(None),
            Some(x) if x.fract() == 0.0 && (0.0..=max).contains(&x) => Ok(Some(x as u32)),
            Some(x) => Err(TableError::new(
                field,
                format!("must be a whole number from 0 to {max} (got {x})"),
            )),
        }
    };
    if let Some(v) = count(num(t, "stock_every", "stock_every")?, "stock_every", 1e6)? {
        if v == 1 {
            return Err(TableError::new(
                "stock_every",
                "1 would make every node stock (0: none, 2 or more: every n-th)",
            ));
        }
        s.stock_every = v;
    }
    if let Some(v) = t.get("fault_stock") {
        s.fault_stock = v
            .as_bool()
            .ok_or_else(|| TableError::new("fault_stock", "must be true or false"))?;
    }
    if let Some(v) = count(
        num(t, "faults_per_class", "faults_per_class")?,
        "faults_per_class",
        (MAX_FAULTS / FaultClass::ALL.len()) as f64,
    )? {
        s.faults_per_class = v;
    }
    if let Some(x) = num(t, "settle_s", "settle_s")? {
        s.settle = secs(x, "settle_s", 0.0)?;
    }
    if let Some(x) = num(t, "inject_from_s", "inject_from_s")? {
        s.inject_from = secs(x, "inject_from_s", 0.0)?;
    }
    if let Some(v) = count(num(t, "seed", "seed")?, "seed", u32::MAX as f64)? {
        s.seed = u64::from(v);
    }
    if let Some(list) = t.get("fault") {
        let list = list.as_array().ok_or_else(|| {
            TableError::new("fault", "must be an array of tables ([[telemetry.fault]])")
        })?;
        if list.len() > MAX_FAULTS {
            return Err(TableError::new(
                "fault",
                format!("at most {MAX_FAULTS} faults"),
            ));
        }
        for (i, f) in list.iter().enumerate() {
            let field = |k: &str| format!("fault[{i}].{k}");
            let f = f
                .as_table()
                .ok_or_else(|| TableError::new(format!("fault[{i}]"), "must be a table"))?;
            for k in f.keys() {
                if !["kind", "at_s", "node", "duration_s"].contains(&k.as_str()) {
                    return Err(TableError::new(
                        field(k),
                        "unknown field (kind, at_s, node, duration_s)",
                    ));
                }
            }
            let kind = f
                .get("kind")
                .and_then(toml::Value::as_str)
                .ok_or_else(|| TableError::new(field("kind"), "missing (a fault class)"))?;
            let class = FaultClass::from_label(kind).ok_or_else(|| {
                let all: Vec<_> = FaultClass::ALL.iter().map(|c| c.label()).collect();
                TableError::new(
                    field("kind"),
                    format!("unknown fault class `{kind}` ({})", all.join(", ")),
                )
            })?;
            let at = num(f, "at_s", &field("at_s"))?
                .ok_or_else(|| TableError::new(field("at_s"), "missing"))?;
            let at = secs(at, &field("at_s"), 0.0)?;
            let node = count(
                num(f, "node", &field("node"))?,
                &field("node"),
                f64::from(nodes),
            )?;
            if let Some(n) = node {
                if n < 2 {
                    return Err(TableError::new(
                        field("node"),
                        "must be 2 or more (node 1 is the gateway)",
                    ));
                }
            }
            let duration = match num(f, "duration_s", &field("duration_s"))? {
                Some(x) => secs(x, &field("duration_s"), 1.0)?,
                None => class.default_duration(),
            };
            s.faults.push(FaultSpec {
                class,
                at,
                node,
                duration,
            });
        }
    }
    Ok(Arc::new(s))
}

// ----- the nodes --------------------------------------------------------------------------

/// What node number `n` is in this workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Gateway,
    Meshfleet,
    Stock,
}

fn kind_of(stock_every: u32, n: u32) -> Kind {
    match n {
        1 => Kind::Gateway,
        n if stock_every >= 2 && n % stock_every == 0 => Kind::Stock,
        _ => Kind::Meshfleet,
    }
}

/// A stock node's status: the library's example broadcasts the status package (604) every
/// period and knows nothing of telemetry queries or reports. The agent's [`Telemetry`]
/// builds the package; this wrapper claims no package type, so queries stay unanswered.
pub struct StockStatus(Telemetry);

impl Plugin for StockStatus {
    fn name(&self) -> &'static str {
        "stock-status"
    }

    fn claims(&self) -> Claims {
        Claims::none()
    }

    fn handle_package(&mut self, _: &mut Ctx<'_>, _: LinkId, _: Routing, _: &Package) {}

    fn handle_change(&mut self, ctx: &mut Ctx<'_>, change: &MeshChange) {
        self.0.handle_change(ctx, change);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }

    fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        self.0.handle_timeout(ctx);
    }
}

/// The gateway's tap: claims telemetry reports (710) and hands each to the workload as a
/// plugin event (the simulator's event hook gives it the global time).
struct GatewayTap;

/// A telemetry report the gateway node received.
#[derive(Debug)]
struct Arrived {
    from: NodeId,
    text: String,
}

impl PluginEvent for Arrived {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "from": self.from.0, "bytes": self.text.len() })
    }
}

impl Plugin for GatewayTap {
    fn name(&self) -> &'static str {
        "sim-gateway-tap"
    }

    fn claims(&self) -> Claims {
        Claims::none().ty(TELEMETRY_TYPE)
    }

    fn handle_package(&mut self, ctx: &mut Ctx<'_>, _: LinkId, _: Routing, pkg: &Package) {
        ctx.emit(Box::new(Arrived {
            from: pkg.from(),
            text: pkg.text().to_owned(),
        }));
    }
}

/// The device model of one node: what its sensors say when healthy.
#[derive(Clone, Copy, Debug)]
struct Device {
    heap: i64,
    rssi: i64,
}

fn device(seed: u64, n: u32) -> Device {
    let mut r = Rng::new(seed ^ u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    Device {
        heap: 30_000 + r.below(30_000) as i64,
        rssi: -55 - r.below(20) as i64,
    }
}

/// Records the node's healthy values into whichever status plugin it has.
fn record(node: &mut Node, now: Instant, metric: Metric, value: i64) {
    if let Some(t) = node.plugin_mut::<Telemetry>() {
        t.record(now, metric, value);
    } else if let Some(s) = node.plugin_mut::<StockStatus>() {
        s.0.record(now, metric, value);
    }
}

/// The neighbour a SINGLE to `gw` leaves through.
fn uplink(node: &Node, gw: NodeId) -> Option<NodeId> {
    let link = node.route(gw)?;
    node.neighbours()
        .into_iter()
        .find_map(|(l, peer)| (l == link).then_some(peer))
}

fn telemetry_of(node: &mut Node) -> Option<&mut Telemetry> {
    if node.plugin::<Telemetry>().is_some() {
        return node.plugin_mut::<Telemetry>();
    }
    node.plugin_mut::<StockStatus>().map(|s| &mut s.0)
}

// ----- the running workload ----------------------------------------------------------------

/// What the gateway's node saw since the last tick (global time).
#[derive(Default)]
struct Inbox {
    items: Vec<(Instant, Input)>,
    topology_changed: bool,
}

enum Input {
    Telemetry(NodeId, String),
    App(NodeId, String),
    Delay(NodeId, i32),
}

fn lock(m: &Mutex<Inbox>) -> MutexGuard<'_, Inbox> {
    // Only the simulation thread uses it; a panic there leaves consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One injected fault while the run goes on.
#[derive(Clone, Debug)]
struct Injected {
    class: FaultClass,
    /// The node (number).
    node: u32,
    start: Instant,
    end: Instant,
    /// Every node it affects (the partition's subtree; else the node).
    members: Vec<u32>,
    detected_at: Option<Instant>,
}

/// One row of the detection table.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DetectionRow {
    /// Faults injected.
    pub injected: usize,
    /// Detected by an alert of the class's kinds (`null` for a class that must raise
    /// nothing).
    pub detected: Option<usize>,
    /// Not detected.
    pub missed: Option<usize>,
    /// Detection latency, median, seconds.
    pub latency_p50_s: Option<f64>,
    /// Detection latency, 95th percentile, seconds.
    pub latency_p95_s: Option<f64>,
    /// The p95 in report periods.
    pub latency_p95_periods: Option<f64>,
    /// Alerts raised on this class's nodes while its fault was on that no fault explains.
    pub false_alerts: usize,
}

/// A false alert.
#[derive(Clone, Debug, Serialize)]
pub struct FalseAlert {
    /// When, seconds from the start.
    pub at_s: f64,
    /// The alert kind.
    pub kind: AlertKind,
    /// The node's number (`null`: about the mesh).
    pub node: Option<u32>,
    /// For an alert about the mesh: the faults on at the time or ended at most 600 s before
    /// (`class@node`), to tell what it may belong to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults_near: Vec<String>,
}

/// The workload's `summary.json` entry.
#[derive(Clone, Debug, Serialize)]
pub struct TelemetryReport {
    /// Report period, seconds.
    pub report_interval_s: f64,
    /// Meshfleet nodes (710 telemetry).
    pub meshfleet_nodes: u32,
    /// Stock nodes (604 only).
    pub stock_nodes: u32,
    /// Per fault class.
    pub detection: BTreeMap<&'static str, DetectionRow>,
    /// Faults that could not be placed (no eligible node when they were due).
    pub not_placed: usize,
    /// Alerts raised in all (settling ones included).
    pub alerts_raised: u64,
    /// Alerts raised while the mesh was forming (before `settle_s`), in all.
    pub settling_alerts: usize,
    /// The first 50 of them.
    pub settling_alert_list: Vec<FalseAlert>,
    /// Alerts no fault explains, in all.
    pub false_alerts: usize,
    /// The first 50 of them.
    pub false_alert_list: Vec<FalseAlert>,
    /// Telemetry (710) bytes sent per meshfleet node-hour, at the source.
    pub telemetry_bytes_per_node_hour: f64,
    /// Status package (604) bytes sent per stock node-hour, at the source.
    pub status_bytes_per_node_hour: f64,
    /// Reports (710 and 604) the monitor accepted.
    pub reports_accepted: u64,
    /// Of them refused or dropped by the monitor.
    pub reports_dropped: u64,
    /// The nodes the monitor knows at the end.
    pub nodes_known: usize,
}

/// The running workload (see the module docs).
pub struct TelemetryWorkload {
    setup: TelemetrySetup,
    /// Faults still to start, by time (last first).
    pending: Vec<FaultSpec>,
    injected: Vec<Injected>,
    not_placed: usize,
    nodes: u32,
    gateway: Option<NodeId>,
    monitor: Monitor,
    inbox: Arc<Mutex<Inbox>>,
    next: Instant,
    end: Instant,
    rng: Rng,
    noise: Rng,
    /// Per node (index = number - 1): healthy values.
    devices: Vec<Device>,
    /// Per node: no new fault before this.
    quiet_until: Vec<Instant>,
    /// Nodes flooding until the given time.
    flooding: BTreeMap<u32, Instant>,
    /// Per node: telemetry/status bytes counted so far this boot, and in earlier boots.
    bytes_seen: Vec<(u64, u64)>,
    alerts_raised: u64,
    settling: Vec<FalseAlert>,
    false_alerts: Vec<FalseAlert>,
    false_on_class: BTreeMap<FaultClass, usize>,
}

impl TelemetryWorkload {
    fn new(setup: TelemetrySetup, scenario: &Scenario) -> Self {
        let nodes = scenario.topology.node_count();
        let mut pending = setup.schedule(scenario.duration);
        pending.reverse();
        let mut monitor_cfg = setup.monitor.clone();
        monitor_cfg.report_interval_s =
            u32::try_from(setup.report_interval.as_micros() / 1_000_000).unwrap_or(u32::MAX);
        Self {
            monitor: Monitor::new(monitor_cfg, NodeId(0)),
            devices: (1..=nodes).map(|n| device(setup.seed, n)).collect(),
            quiet_until: vec![Instant::ZERO; nodes as usize],
            bytes_seen: vec![(0, 0); nodes as usize],
            rng: Rng::new(setup.seed ^ 0xfa17),
            noise: Rng::new(setup.seed ^ 0x0153),
            setup,
            pending,
            injected: Vec::new(),
            not_placed: 0,
            nodes,
            gateway: None,
            inbox: Arc::default(),
            next: Instant::ZERO + STEP,
            end: Instant::ZERO + scenario.duration,
            flooding: BTreeMap::new(),
            alerts_raised: 0,
            settling: Vec::new(),
            false_alerts: Vec::new(),
            false_on_class: BTreeMap::new(),
        }
    }

    fn kind(&self, n: u32) -> Kind {
        kind_of(self.setup.stock_every, n)
    }

    /// Feeds what the gateway node saw, then the monitor's timers, and acts on its output.
    fn run_monitor(&mut self, sim: &mut Simulation) {
        let Some(gw) = self.gateway else { return };
        let (items, changed) = {
            let mut b = lock(&self.inbox);
            (
                std::mem::take(&mut b.items),
                std::mem::replace(&mut b.topology_changed, false),
            )
        };
        for (t, input) in items {
            match input {
                Input::Telemetry(from, text) => {
                    self.monitor.handle_package(t, TELEMETRY_TYPE, from, &text);
                }
                Input::App(from, text) => {
                    self.monitor.handle_app_message(t, from, &text);
                }
                Input::Delay(node, d) => self.monitor.handle_delay(t, node, d),
            }
            self.take_alerts(t, sim);
        }
        let now = sim.now();
        if changed {
            if let Some(tree) = sim.node(gw).map(Node::topology) {
                self.monitor.handle_topology(now, &tree);
            }
        }
        self.monitor.handle_timeout(now);
        self.take_alerts(now, sim);
        while let Some(tx) = self.monitor.poll_transmit() {
            let _ = sim.with_node(gw, |node, local| match tx {
                // A top-level 711 package, as `Transmit::Query` documents: the agent's
                // plugin claims 711 packages. (The gateway process sends the text as the
                // message of a SINGLE, which the plugin never sees: found here.)
                meshfleet_monitor::Transmit::Query { text, .. } => Package::from_text(text)
                    .ok()
                    .map(|p| node.send_package(local, &p).is_ok()),
                meshfleet_monitor::Transmit::DelayProbe { to } => {
                    Some(node.start_delay_measurement(local, to).is_ok())
                }
            });
        }
    }

    /// Matches raised alerts against the faults.
    fn take_alerts(&mut self, now: Instant, sim: &Simulation) {
        while let Some(e) = self.monitor.poll_event() {
            let MonitorEvent::Alert(AlertEvent::Raised(a)) = e else {
                continue;
            };
            self.alerts_raised += 1;
            let node = match a.key.subject {
                Subject::Node(id) => sim.number_of(id),
                Subject::Mesh => None,
            };
            if now < Instant::ZERO + self.setup.settle {
                self.settling.push(FalseAlert {
                    at_s: now.as_micros() as f64 / 1e6,
                    kind: a.key.kind,
                    node,
                    faults_near: Vec::new(),
                });
                continue;
            }
            let within = |f: &Injected| now >= f.start && now <= f.end + TAIL;
            let mut explained = false;
            if let Some(n) = node {
                for f in &mut self.injected {
                    if f.node == n && within(f) && f.class.detected_by().contains(&a.key.kind) {
                        explained = true;
                        f.detected_at.get_or_insert(now);
                    }
                }
            }
            if explained {
                continue;
            }
            if let Some(n) = node {
                if let Some(f) = self
                    .injected
                    .iter()
                    .find(|f| f.members.contains(&n) && within(f))
                {
                    *self.false_on_class.entry(f.class).or_default() += 1;
                }
            }
            let faults_near = if node.is_none() {
                self.injected
                    .iter()
                    .filter(|f| now >= f.start && now <= f.end + TAIL)
                    .map(|f| format!("{}@{}", f.class.label(), f.node))
                    .collect()
            } else {
                Vec::new()
            };
            self.false_alerts.push(FalseAlert {
                at_s: now.as_micros() as f64 / 1e6,
                kind: a.key.kind,
                node,
                faults_near,
            });
        }
    }

    /// The device model: every running node's values, with noise and the faults on it.
    fn record_devices(&mut self, sim: &mut Simulation) {
        let now = sim.now();
        let mut effect: BTreeMap<u32, (FaultClass, Instant)> = BTreeMap::new();
        for f in &self.injected {
            if now >= f.start && now < f.end {
                effect.insert(f.node, (f.class, f.start));
            }
        }
        for n in 2..=self.nodes {
            let id = sim.id_of(n);
            if !sim.is_running(id) {
                continue;
            }
            let d = self.devices[(n - 1) as usize];
            let j = |r: &mut Rng, lo: i64, hi: i64| lo + r.below((hi - lo + 1) as u64) as i64;
            let mut heap = d.heap + j(&mut self.noise, -600, 600);
            let mut rssi = d.rssi + j(&mut self.noise, -3, 3);
            let mut lat = j(&mut self.noise, 60, 140);
            let loss = j(&mut self.noise, 0, 3);
            match effect.get(&n) {
                Some((FaultClass::MemoryLeak, start)) => {
                    let el = now.saturating_since(*start).as_micros() as i64 / 1_000_000;
                    heap -= el * LEAK_BYTES_PER_HOUR / 3_600;
                }
                Some((FaultClass::RssiDrop, _)) => rssi -= RSSI_DROP_DB,
                Some((FaultClass::SlowLink, _)) => {
                    // What the node measures towards the gateway: its usual latency plus
                    // the round trip the slowed uplink adds.
                    lat += 2 * (SLOW_LINK_EXTRA.as_micros() / 1_000) as i64;
                }
                _ => {}
            }
            let values = [
                (Metric::FreeHeap, heap.max(0)),
                (Metric::Rssi, rssi.max(-127)),
                (Metric::Latency, lat),
                (Metric::Loss, loss),
            ];
            let _ = sim.with_node(id, |node, local| {
                for (m, v) in values {
                    record(node, local, m, v);
                }
            });
        }
    }

    /// Telemetry bytes at the source: the plugins' counters, summed over boots.
    fn count_bytes(&mut self, sim: &mut Simulation) {
        for n in 2..=self.nodes {
            let id = sim.id_of(n);
            let Some(t) = sim.node_mut(id).and_then(telemetry_of) else {
                continue;
            };
            let s = t.stats();
            let now = s.report_bytes + s.status_bytes;
            let e = &mut self.bytes_seen[(n - 1) as usize];
            if now < e.0 {
                // a new boot: the counters restarted
                e.1 += e.0;
            }
            e.0 = now;
        }
    }

    fn floods(&mut self, sim: &mut Simulation) {
        let now = sim.now();
        self.flooding.retain(|_, until| *until > now);
        let gw = self.gateway;
        for &n in self.flooding.keys() {
            let id = sim.id_of(n);
            let _ = sim.with_node(id, |node, local| {
                // to whichever neighbour leads to the gateway: one frame per message
                let Some(dest) = gw.and_then(|g| uplink(node, g)) else {
                    return;
                };
                for k in 0..FLOOD_PER_S * STEP.as_micros() as u32 / 1_000_000 {
                    let _ = node.send_single(local, dest, &format!("flood {k}"));
                }
            });
        }
    }

    /// Starts the faults that are due.
    fn start_faults(&mut self, sim: &mut Simulation) {
        let now = sim.now();
        while self
            .pending
            .last()
            .is_some_and(|f| Instant::ZERO + f.at <= now)
        {
            let Some(f) = self.pending.pop() else { break };
            match self.place(sim, &f) {
                Some((node, members)) => self.inject(sim, f, node, members),
                None => self.not_placed += 1,
            }
        }
    }

    /// Picks the node of a fault (and the partition's subtree) from the gateway's tree.
    fn place(&mut self, sim: &Simulation, f: &FaultSpec) -> Option<(u32, Vec<u32>)> {
        let gw = self.gateway?;
        let tree = sim.node(gw)?.topology();
        let mut parent: BTreeMap<u32, u32> = BTreeMap::new();
        let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        fn walk(
            t: &NodeTree,
            up: Option<u32>,
            sim: &Simulation,
            parent: &mut BTreeMap<u32, u32>,
            children: &mut BTreeMap<u32, Vec<u32>>,
        ) {
            let Some(n) = sim.number_of(t.node_id) else {
                return;
            };
            if let Some(p) = up {
                parent.insert(n, p);
                children.entry(p).or_default().push(n);
            }
            for s in &t.subs {
                walk(s, Some(n), sim, parent, children);
            }
        }
        walk(&tree, None, sim, &mut parent, &mut children);
        let subtree = |n: u32| {
            let mut out = vec![n];
            let mut i = 0;
            while i < out.len() {
                out.extend(children.get(&out[i]).into_iter().flatten().copied());
                i += 1;
            }
            out
        };
        let now = sim.now();
        let quiet = |n: u32| self.quiet_until[(n - 1) as usize] <= now;
        let eligible = |n: u32| -> Option<Vec<u32>> {
            if n < 2 || !parent.contains_key(&n) || !sim.is_running(sim.id_of(n)) {
                return None;
            }
            let stock = self.kind(n) == Kind::Stock;
            if stock && !self.setup.fault_stock && f.node.is_none() {
                return None;
            }
            let members = if f.class == FaultClass::Partition {
                let m = subtree(n);
                if f.node.is_none() && !(2..=MAX_PARTITION).contains(&m.len()) {
                    return None;
                }
                m
            } else {
                if f.class.needs_leaf() && children.contains_key(&n) && f.node.is_none() {
                    return None;
                }
                vec![n]
            };
            // the fault's nodes and the path above them must be quiet
            let mut up = parent.get(&n).copied();
            while let Some(p) = up {
                if p != 1 && !quiet(p) {
                    return None;
                }
                up = parent.get(&p).copied();
            }
            members.iter().all(|&m| quiet(m)).then_some(members)
        };
        if let Some(n) = f.node {
            return eligible(n).map(|m| (n, m));
        }
        let candidates: Vec<(u32, Vec<u32>)> = parent
            .keys()
            .filter_map(|&n| eligible(n).map(|m| (n, m)))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let k = self.rng.below(candidates.len() as u64) as usize;
        candidates.into_iter().nth(k)
    }

    fn inject(&mut self, sim: &mut Simulation, f: FaultSpec, node: u32, members: Vec<u32>) {
        let start = sim.now();
        let end = start + f.duration;
        for &m in &members {
            self.quiet_until[(m - 1) as usize] = end + COOLDOWN;
        }
        match f.class {
            FaultClass::MemoryLeak => sim.schedule(end, SimEvent::Reboot { node }),
            FaultClass::RebootLoop => {
                // the first crash at the fault's start, then one every REBOOT_EVERY
                let mut t = start;
                while t < end {
                    sim.schedule(t, SimEvent::Reboot { node });
                    t += REBOOT_EVERY;
                }
            }
            FaultClass::RssiDrop => {}
            FaultClass::MessageFlood => {
                self.flooding.insert(node, end);
            }
            FaultClass::NodeDeath => {
                sim.schedule(start, SimEvent::Crash { node });
                sim.schedule(end, SimEvent::Reboot { node });
            }
            FaultClass::Partition => {
                sim.schedule(
                    start,
                    SimEvent::Partition {
                        nodes: members.clone(),
                    },
                );
                sim.schedule(end, SimEvent::Heal);
            }
            FaultClass::ClockJump => {
                let _ = sim.with_node(sim.id_of(node), |n, _| {
                    if let Some(t) = telemetry_of(n) {
                        t.jump_uptime(CLOCK_JUMP_S);
                    }
                });
            }
            FaultClass::SlowLink => {
                let up = sim
                    .node(sim.id_of(node))
                    .and_then(|n| uplink(n, self.gateway?));
                if let Some(p) = up.and_then(|id| sim.number_of(id)) {
                    let base = sim.link_defaults().latency;
                    let pair = (node, p);
                    sim.schedule(
                        start,
                        SimEvent::SetLink {
                            between: Some(pair),
                            change: LinkChange::latency(base + SLOW_LINK_EXTRA),
                        },
                    );
                    sim.schedule(
                        end,
                        SimEvent::SetLink {
                            between: Some(pair),
                            change: LinkChange::latency(base),
                        },
                    );
                }
            }
        }
        self.injected.push(Injected {
            class: f.class,
            node,
            start,
            end,
            members,
            detected_at: None,
        });
    }

    /// The report (bytes as counted at the last tick, at most one step old).
    fn report_value(&self) -> TelemetryReport {
        let hours = self.end.as_micros() as f64 / 3.6e9;
        let period = self.setup.report_interval.as_secs_f64();
        let faulty: BTreeSet<u32> = self
            .injected
            .iter()
            .flat_map(|f| f.members.iter().copied())
            .collect();
        let (mut mf, mut st) = (0u32, 0u32);
        let (mut mf_bytes, mut st_bytes) = (0u64, 0u64);
        let (mut mf_clean, mut st_clean) = (0u32, 0u32);
        for n in 2..=self.nodes {
            let (cur, old) = self.bytes_seen[(n - 1) as usize];
            let clean = !faulty.contains(&n);
            match self.kind(n) {
                Kind::Stock => {
                    st += 1;
                    if clean {
                        st_clean += 1;
                        st_bytes += cur + old;
                    }
                }
                _ => {
                    mf += 1;
                    if clean {
                        mf_clean += 1;
                        mf_bytes += cur + old;
                    }
                }
            }
        }
        let per_hour = |b: u64, n: u32| {
            if n == 0 || hours <= 0.0 {
                0.0
            } else {
                (b as f64 / (f64::from(n) * hours)).round()
            }
        };
        let mut detection = BTreeMap::new();
        for class in FaultClass::ALL {
            let faults: Vec<&Injected> =
                self.injected.iter().filter(|f| f.class == class).collect();
            let expected = !class.detected_by().is_empty();
            let mut lat: Vec<u64> = faults
                .iter()
                .filter_map(|f| {
                    f.detected_at
                        .map(|d| d.saturating_since(f.start).as_micros())
                })
                .collect();
            lat.sort_unstable();
            let pct = |p: f64| {
                (!lat.is_empty()).then(|| {
                    let i = ((lat.len() - 1) as f64 * p).round() as usize;
                    (lat[i] as f64 / 1e6 * 10.0).round() / 10.0
                })
            };
            let p95 = pct(0.95);
            detection.insert(
                class.label(),
                DetectionRow {
                    injected: faults.len(),
                    detected: expected.then_some(lat.len()),
                    missed: expected.then(|| faults.len() - lat.len()),
                    latency_p50_s: pct(0.5),
                    latency_p95_s: p95,
                    latency_p95_periods: p95.map(|v| (v / period * 100.0).round() / 100.0),
                    false_alerts: self.false_on_class.get(&class).copied().unwrap_or(0),
                },
            );
        }
        let stats = self.monitor.stats();
        TelemetryReport {
            report_interval_s: period,
            meshfleet_nodes: mf,
            stock_nodes: st,
            detection,
            not_placed: self.not_placed,
            alerts_raised: self.alerts_raised,
            settling_alerts: self.settling.len(),
            settling_alert_list: self.settling.iter().take(50).cloned().collect(),
            false_alerts: self.false_alerts.len(),
            false_alert_list: self.false_alerts.iter().take(50).cloned().collect(),
            telemetry_bytes_per_node_hour: per_hour(mf_bytes, mf_clean),
            status_bytes_per_node_hour: per_hour(st_bytes, st_clean),
            reports_accepted: stats.telemetry_accepted + stats.status_accepted,
            reports_dropped: stats.malformed
                + stats.flooded
                + stats.implausible
                + stats.stale
                + stats.unknown_sender
                + stats.refused,
            nodes_known: self.monitor.len(),
        }
    }
}

impl Workload for TelemetryWorkload {
    fn key(&self) -> &'static str {
        KEY
    }

    fn attach(&mut self, mut scenario: Scenario) -> Scenario {
        let inner = scenario.factory.clone();
        let stock_every = self.setup.stock_every;
        let interval = self.setup.report_interval;
        let seed = self.setup.seed;
        let gateway = NodeId(scenario.id_base.wrapping_add(1));
        scenario.factory = Arc::new(move |init: NodeInit<'_>| {
            let n = init.number;
            let mut node = inner(init);
            let mut cfg = TelemetryConfig {
                gateway: Some(gateway),
                ..TelemetryConfig::default()
            };
            cfg.producer.report_interval_s =
                u32::try_from(interval.as_micros() / 1_000_000).unwrap_or(u32::MAX);
            // The device model records every 10 s; the node samples its own counters as
            // often (a real node samples each second; the rates are per minute either way).
            cfg.sample_interval = STEP;
            let d = device(seed, n);
            let healthy = |t: &mut Telemetry| {
                // Before the node's first timeout the plugin only keeps the values.
                t.record(Instant::ZERO, Metric::FreeHeap, d.heap);
                t.record(Instant::ZERO, Metric::Rssi, d.rssi);
            };
            match kind_of(stock_every, n) {
                Kind::Gateway => {
                    node.add_plugin(Box::new(GatewayTap))
                        .expect("telemetry (710) is claimed by no other workload's plugin");
                }
                Kind::Meshfleet => {
                    if node.plugin::<Telemetry>().is_none() {
                        let mut t = Telemetry::new(cfg);
                        healthy(&mut t);
                        node.add_plugin(Box::new(t)).expect(
                            "telemetry (710, 711) is claimed by no other workload's plugin",
                        );
                    }
                }
                Kind::Stock => {
                    cfg.gateway = None;
                    cfg.status_interval = Some(interval);
                    let mut t = Telemetry::new(cfg);
                    t.set_identity(Identity {
                        firmware: "1.0.0".into(),
                        role: "sensor".into(),
                        hardware: "ESP8266".into(),
                    });
                    healthy(&mut t);
                    node.add_plugin(Box::new(StockStatus(t)))
                        .expect("the stock status plugin claims no package type");
                }
            }
            node
        });
        scenario
    }

    fn install(&mut self, sim: &mut Simulation) {
        let gw = sim.id_of(1);
        self.gateway = Some(gw);
        self.monitor = Monitor::new(self.monitor.config().clone(), gw);
        let inbox = self.inbox.clone();
        sim.set_event_hook(move |t: Instant, id: NodeId, e: &Event| {
            if id != gw {
                return;
            }
            let mut b = lock(&inbox);
            match e {
                // Only what could be monitoring: a flood's chatter is not kept.
                Event::Received { from, msg, .. } if msg.starts_with('{') => {
                    b.items.push((t, Input::App(*from, msg.clone())));
                }
                Event::DelayMeasured { node, delay_us } => {
                    b.items.push((t, Input::Delay(*node, *delay_us)));
                }
                Event::NodeListChanged { .. } => b.topology_changed = true,
                Event::Plugin { event, .. } => {
                    if let Some(a) = event.downcast_ref::<Arrived>() {
                        b.items.push((t, Input::Telemetry(a.from, a.text.clone())));
                    }
                }
                _ => {}
            }
        });
    }

    fn next_tick(&self) -> Option<Instant> {
        (self.next <= self.end).then_some(self.next)
    }

    fn tick(&mut self, sim: &mut Simulation) {
        self.next = sim.now() + STEP;
        self.start_faults(sim);
        self.record_devices(sim);
        self.floods(sim);
        self.run_monitor(sim);
        // counters of nodes about to reboot are caught at every tick
        self.count_bytes(sim);
    }

    fn report(&mut self, _sim: &Simulation) -> serde_json::Value {
        serde_json::to_value(self.report_value()).unwrap_or(serde_json::Value::Null)
    }
}
