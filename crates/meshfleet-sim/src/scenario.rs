//! What to simulate: a [`Scenario`] built in code or loaded from a TOML file.

use std::fmt;
use std::sync::Arc;

use meshfleet_channel::{ChannelModel, LinkChange, LinkParams};
use meshfleet_mesh::{Config, Duration, Instant, Node, NodeId, Rng};

use crate::store::PersistentStore;
use crate::topology::Topology;

/// Everything the factory needs to build one node (at first boot and at every reboot).
#[non_exhaustive]
pub struct NodeInit<'a> {
    /// The node's number in the scenario (1-based).
    pub number: u32,
    /// Its mesh id (`id_base + number`).
    pub id: NodeId,
    /// A configuration with the scenario's timers, a seed and a random
    /// `initial_time_offset` already filled in.
    pub config: Config,
    /// A generator private to this node and boot, for plugins that need one.
    pub rng: &'a mut Rng,
    /// State that survives reboots (see [`PersistentStore`]).
    pub store: PersistentStore,
    /// 0 at first boot, then 1, 2, … after each reboot.
    pub boot_count: u32,
}

/// Builds a node: `Node::new(init.config)` plus any plugins.
pub type NodeFactory = Arc<dyn Fn(NodeInit<'_>) -> Node + Send + Sync>;

/// An action run on one node at a scheduled time, given the node's local `now`. The
/// simulator drains the node's outputs afterwards. For plugins: start an OTA offer, etc.
pub type NodeAction = Arc<dyn Fn(&mut Node, Instant) + Send + Sync>;

/// Something that happens to the network at a given time. Nodes are named by number.
#[derive(Clone)]
#[non_exhaustive]
pub enum SimEvent {
    /// The node boots and its station joins `parent` (or, if `None`, the best candidate:
    /// its topology parent or the nearest neighbour in the mesh). Nodes named by a `Join`
    /// are left out of the initial formation.
    Join {
        /// The joiner.
        node: u32,
        /// Its access point.
        parent: Option<u32>,
    },
    /// The node loses power: its connections reset (neighbours see the link go down after
    /// one link latency), its volatile state is gone.
    Crash {
        /// The node.
        node: u32,
    },
    /// The node is rebuilt from the factory (same id and [`PersistentStore`]) and rejoins.
    /// A running node crashes first.
    Reboot {
        /// The node.
        node: u32,
    },
    /// The node stops processing anything (a hung loop) while its connections stay open:
    /// only the neighbours' node-sync timeout can notice. Ends with a `Reboot`.
    Hang {
        /// The node.
        node: u32,
    },
    /// The connection between `a` and `b` drops (both ends notified). With `hold`, the two
    /// cannot reconnect for that long; otherwise the station rejoins as usual.
    LinkDown {
        /// One end.
        a: u32,
        /// The other end.
        b: u32,
        /// How long the pair stays unable to connect.
        hold: Option<Duration>,
    },
    /// `node`'s station leaves its access point and joins `parent` (also `link_up`).
    Move {
        /// The station.
        node: u32,
        /// The new access point.
        parent: u32,
    },
    /// Cuts every connection between `nodes` and the rest, and keeps them apart until
    /// [`SimEvent::Heal`].
    Partition {
        /// One side.
        nodes: Vec<u32>,
    },
    /// Ends all partitions: stations without an access point rejoin at once.
    Heal,
    /// Changes link parameters on the link between `between` (both directions, also for
    /// later reconnections of that pair) or, if `None`, everywhere.
    SetLink {
        /// The pair, or `None` for all links.
        between: Option<(u32, u32)>,
        /// What changes.
        change: LinkChange,
    },
    /// Switches the channel model from now on ([`Simulation::set_channel`]): links, queues
    /// and loss stay; transmissions that start later follow the new model. The geometric
    /// model needs a topology with positions (checked with the scenario; scheduled at run
    /// time without positions, it has no interferers and acts as `Airtime`).
    ///
    /// [`Simulation::set_channel`]: crate::Simulation::set_channel
    SetChannel {
        /// The new model.
        channel: ChannelModel,
    },
    /// Runs an action on a node (skipped if the node is down or hung).
    Action {
        /// The node.
        node: u32,
        /// What to do.
        action: NodeAction,
    },
}

impl SimEvent {
    /// A short stable label for reports.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::Crash { .. } => "crash",
            Self::Reboot { .. } => "reboot",
            Self::Hang { .. } => "hang",
            Self::LinkDown { .. } => "link_down",
            Self::Move { .. } => "move",
            Self::Partition { .. } => "partition",
            Self::Heal => "heal",
            Self::SetLink { .. } => "set_link",
            Self::SetChannel { .. } => "set_channel",
            Self::Action { .. } => "action",
        }
    }

    /// Node numbers the event names (for validation).
    pub(crate) fn nodes(&self) -> Vec<u32> {
        match self {
            Self::Join { node, parent } => std::iter::once(*node).chain(*parent).collect(),
            Self::Crash { node }
            | Self::Reboot { node }
            | Self::Hang { node }
            | Self::Action { node, .. } => {
                vec![*node]
            }
            Self::LinkDown { a, b, .. } => vec![*a, *b],
            Self::Move { node, parent } => vec![*node, *parent],
            Self::Partition { nodes } => nodes.clone(),
            Self::Heal | Self::SetChannel { .. } => Vec::new(),
            Self::SetLink { between, .. } => between.map(|(a, b)| vec![a, b]).unwrap_or_default(),
        }
    }
}

impl fmt::Debug for SimEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Join { node, parent } => write!(f, "Join({node}, parent {parent:?})"),
            Self::Crash { node } => write!(f, "Crash({node})"),
            Self::Reboot { node } => write!(f, "Reboot({node})"),
            Self::Hang { node } => write!(f, "Hang({node})"),
            Self::LinkDown { a, b, hold } => write!(f, "LinkDown({a}, {b}, hold {hold:?})"),
            Self::Move { node, parent } => write!(f, "Move({node} -> {parent})"),
            Self::Partition { nodes } => write!(f, "Partition({nodes:?})"),
            Self::Heal => f.write_str("Heal"),
            Self::SetLink { between, change } => write!(f, "SetLink({between:?}, {change:?})"),
            Self::SetChannel { channel } => write!(f, "SetChannel({channel:?})"),
            Self::Action { node, .. } => write!(f, "Action({node})"),
        }
    }
}

/// When the nodes of the initial formation boot and join.
#[derive(Clone, Debug, PartialEq)]
pub struct Formation {
    /// The first node (the first root) boots at this time.
    pub start: Duration,
    /// The k-th node in join order joins at `start + k * interval` …
    pub interval: Duration,
    /// … plus a uniform random delay in `[0, jitter)` (keep it below `interval` so that
    /// parents stay ahead of their children).
    pub jitter: Duration,
}

impl Default for Formation {
    fn default() -> Self {
        Self {
            start: Duration::ZERO,
            interval: Duration::from_millis(100),
            jitter: Duration::ZERO,
        }
    }
}

/// The nodes' clocks.
#[derive(Clone, Debug, PartialEq)]
pub struct ClockParams {
    /// Each node's rate error is uniform in `[-drift_ppm, +drift_ppm]`.
    pub drift_ppm: f64,
}

impl Default for ClockParams {
    fn default() -> Self {
        Self { drift_ppm: 20.0 }
    }
}

/// Node configuration applied by the simulator before the factory sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshParams {
    /// The node that calls itself root (`setRoot`).
    pub root: Option<u32>,
    /// Nodes with an authoritative clock.
    pub time_authority: Vec<u32>,
    /// Overrides `Config::node_timeout`.
    pub node_timeout: Option<Duration>,
    /// Overrides `Config::node_sync_interval`.
    pub node_sync_interval: Option<Duration>,
    /// Overrides `Config::time_sync_interval`.
    pub time_sync_interval: Option<Duration>,
    /// Overrides `Config::node_sync` (`NodeSyncPolicy::Library`: the library's node sync).
    pub node_sync: Option<meshfleet_mesh::NodeSyncPolicy>,
    /// How node syncs reach their receivers, which decides how nodes keep the trees they
    /// hold: host memory against CPU, nothing simulated changes.
    pub tree_text: TreeText,
}

/// How the simulator hands a node sync to its receiver. Every simulated byte, time and
/// figure is the same either way (the snapshot tests run both); what differs is the
/// host's memory and CPU (measured in `docs/benchmarks.md`, "the rope").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TreeText {
    /// Laid out flat, as a socket would deliver it: each node copies the text of the
    /// trees it keeps (~40 bytes per node of the mesh, per node): ~1.7x the host memory
    /// of `Shared`, and 3-21% less CPU (most in big OTA campaigns).
    Copied,
    /// In the pieces the sender made it of (`meshfleet_mesh::Node::handle_shared_frame`):
    /// each node keeps the sender's texts shared instead of a copy. About 0.6x the peak
    /// host memory of `Copied` at 1,000-10,000 nodes, for 1.03-1.15x its CPU in mesh
    /// runs and up to 1.26x in a 10,000-node OTA campaign.
    #[default]
    Shared,
}

/// How stations without an access point find one again (the library's station scan).
#[derive(Clone, Debug, PartialEq)]
pub struct RejoinParams {
    /// Delay between losing the access point and the next association attempt (WiFi
    /// disconnect event, scan, association).
    pub scan_delay: Duration,
    /// Retry period when no candidate was found (the library's SCAN_INTERVAL, 30 s).
    pub rescan_interval: Duration,
}

impl Default for RejoinParams {
    fn default() -> Self {
        Self {
            scan_delay: Duration::from_secs(2),
            rescan_interval: Duration::from_secs(30),
        }
    }
}

/// A complete description of one simulation run. Build with [`Scenario::new`] and the
/// chained setters, or load one with [`crate::load_scenario`].
#[derive(Clone)]
#[non_exhaustive]
pub struct Scenario {
    /// Name for reports.
    pub name: String,
    /// Seed of the whole run: topology, clocks, node seeds, losses, workloads.
    pub seed: u64,
    /// Virtual time simulated.
    pub duration: Duration,
    /// Node `k` gets `NodeId(id_base + k)`. Real ids are MAC-derived 10-digit numbers, and
    /// their length is on the air in every frame, so the default is 3 000 000 000.
    pub id_base: u32,
    /// The shape of the mesh.
    pub topology: Topology,
    /// When nodes join.
    pub formation: Formation,
    /// Link parameters of every link.
    pub link: LinkParams,
    /// How transmissions share the air.
    pub channel: ChannelModel,
    /// Clock drift.
    pub clock: ClockParams,
    /// Node configuration.
    pub mesh: MeshParams,
    /// Station rejoin behaviour.
    pub rejoin: RejoinParams,
    /// Timeline, sorted by time when the simulation starts.
    pub events: Vec<(Duration, SimEvent)>,
    /// Period of the time-series samples.
    pub sample_interval: Duration,
    /// Builds every node.
    pub factory: NodeFactory,
    /// Workloads run on top of the mesh ([`crate::workload`]): application traffic
    /// ([`Scenario::traffic`]), an OTA campaign ([`Scenario::ota`]), a rollout of its build,
    /// telemetry. `run_scenario` (or [`crate::workload::Run`]) builds, attaches, drives and
    /// reports each; [`crate::Simulation`] itself ignores this field.
    pub workloads: Vec<Arc<dyn crate::workload::WorkloadSpec>>,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("seed", &self.seed)
            .field("duration", &self.duration)
            .field("topology", &self.topology)
            .field("formation", &self.formation)
            .field("link", &self.link)
            .field("channel", &self.channel)
            .field("events", &self.events)
            .field("workloads", &self.workloads)
            .finish_non_exhaustive()
    }
}

/// The default factory: a plain node.
pub fn plain_node(init: NodeInit<'_>) -> Node {
    Node::new(init.config)
}

impl Scenario {
    /// A scenario on `topology` with defaults: seed 0, 60 s, independent links with the
    /// calibrated ESP8266 parameters, ±20 ppm clocks, one node joining every 100 ms.
    pub fn new(topology: Topology) -> Self {
        Self {
            name: topology.label().to_owned(),
            seed: 0,
            duration: Duration::from_secs(60),
            id_base: 3_000_000_000,
            topology,
            formation: Formation::default(),
            link: LinkParams::default(),
            channel: ChannelModel::Independent,
            clock: ClockParams::default(),
            mesh: MeshParams::default(),
            rejoin: RejoinParams::default(),
            events: Vec::new(),
            sample_interval: Duration::from_secs(1),
            factory: Arc::new(plain_node),
            workloads: Vec::new(),
        }
    }

    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the simulated duration.
    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = d;
        self
    }

    /// Sets the id base (`NodeId(id_base + k)`).
    pub fn id_base(mut self, base: u32) -> Self {
        self.id_base = base;
        self
    }

    /// Sets the formation schedule.
    pub fn formation(mut self, f: Formation) -> Self {
        self.formation = f;
        self
    }

    /// Nodes join `interval` apart (formation starts at 0, no jitter).
    pub fn join_interval(mut self, interval: Duration) -> Self {
        self.formation.interval = interval;
        self
    }

    /// Sets the link parameters.
    pub fn link(mut self, p: LinkParams) -> Self {
        self.link = p;
        self
    }

    /// Sets the channel model.
    pub fn channel(mut self, c: ChannelModel) -> Self {
        self.channel = c;
        self
    }

    /// Sets the clock drift bound in ppm.
    pub fn drift_ppm(mut self, ppm: f64) -> Self {
        self.clock.drift_ppm = ppm;
        self
    }

    /// Sets the node configuration.
    pub fn mesh(mut self, m: MeshParams) -> Self {
        self.mesh = m;
        self
    }

    /// Sets the rejoin behaviour.
    pub fn rejoin(mut self, r: RejoinParams) -> Self {
        self.rejoin = r;
        self
    }

    /// Adds a timeline event at `at`.
    pub fn event(mut self, at: Duration, e: SimEvent) -> Self {
        self.events.push((at, e));
        self
    }

    /// Sets the sampling period of the time series.
    pub fn sample_interval(mut self, d: Duration) -> Self {
        self.sample_interval = d;
        self
    }

    /// Sets the node factory.
    pub fn node_factory(
        mut self,
        f: impl Fn(NodeInit<'_>) -> Node + Send + Sync + 'static,
    ) -> Self {
        self.factory = Arc::new(f);
        self
    }

    /// Adds a workload ([`crate::workload`]); one per key.
    pub fn workload(mut self, spec: impl crate::workload::WorkloadSpec + 'static) -> Self {
        self.workloads.push(Arc::new(spec));
        self
    }

    /// The id of node number `n`.
    pub fn id_of(&self, n: u32) -> NodeId {
        NodeId(self.id_base.wrapping_add(n))
    }

    /// Checks the scenario for values no run can use. File loading reports the same
    /// problems with their line; this is for scenarios built in code.
    pub fn validate(&self) -> Result<(), InvalidScenario> {
        let bad = |field: &str, message: String| {
            Err(InvalidScenario {
                field: field.to_owned(),
                message,
            })
        };
        if self.duration == Duration::ZERO {
            return bad("duration", "must be positive".into());
        }
        for (i, w) in self.workloads.iter().enumerate() {
            if self.workloads[..i].iter().any(|o| o.key() == w.key()) {
                return bad(w.key(), "given twice".into());
            }
            if let Err(e) = w.validate(self) {
                let (field, message) = e.split_once(": ").unwrap_or((w.key(), e.as_str()));
                return bad(field, message.to_owned());
            }
        }
        if self.sample_interval == Duration::ZERO {
            return bad("sample_interval", "must be positive".into());
        }
        if let Err((f, m)) = self.topology.check() {
            return bad(&format!("topology.{f}"), m);
        }
        let n = self.topology.node_count();
        if u64::from(self.id_base) + u64::from(n) > u64::from(u32::MAX) {
            return bad(
                "id_base",
                format!("id_base + {n} does not fit a 32-bit node id"),
            );
        }
        if let Err((f, m)) = check_link(&self.link) {
            return bad(&format!("link.{f}"), m);
        }
        if let Err((f, m)) = check_channel(
            &self.channel,
            self.topology.has_positions(),
            self.topology.label(),
        ) {
            return bad(&format!("channel.{f}"), m);
        }
        if !(self.clock.drift_ppm >= 0.0 && self.clock.drift_ppm < 1000.0) {
            return bad(
                "clock.drift_ppm",
                format!("must be in [0, 1000) (got {})", self.clock.drift_ppm),
            );
        }
        let in_range = |v: u32| (1..=n).contains(&v);
        for v in self.mesh.root.iter().chain(&self.mesh.time_authority) {
            if !in_range(*v) {
                return bad(
                    "mesh",
                    format!("names node {v}, but nodes are numbered 1..={n}"),
                );
            }
        }
        for (i, (_, e)) in self.events.iter().enumerate() {
            if let Err((f, m)) = check_event(e, n) {
                return bad(&format!("events[{i}].{f}"), m);
            }
            if let SimEvent::SetChannel { channel } = e {
                if let Err((f, m)) = check_channel(
                    channel,
                    self.topology.has_positions(),
                    self.topology.label(),
                ) {
                    return bad(&format!("events[{i}].channel.{f}"), m);
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn check_link(p: &LinkParams) -> Result<(), (&'static str, String)> {
    if !(0.0..=1.0).contains(&p.loss) {
        return Err((
            "loss",
            format!("must be a probability in [0, 1] (got {})", p.loss),
        ));
    }
    if !(p.goodput_bytes_per_s > 0.0 && p.goodput_bytes_per_s.is_finite()) {
        return Err((
            "goodput_bytes_per_s",
            format!("must be positive (got {})", p.goodput_bytes_per_s),
        ));
    }
    if p.mss == 0 {
        return Err(("mss_bytes", "must be at least 1".into()));
    }
    if p.min_rto == Duration::ZERO {
        return Err(("min_rto_ms", "must be positive".into()));
    }
    if p.max_rto < p.min_rto {
        return Err(("max_rto_ms", "must not be below min_rto_ms".into()));
    }
    if p.queue_cap_bytes == 0 {
        return Err(("queue_cap_bytes", "must be positive".into()));
    }
    Ok(())
}

pub(crate) fn check_change(c: &LinkChange) -> Result<(), (&'static str, String)> {
    if let Some(l) = c.loss {
        if !(0.0..=1.0).contains(&l) {
            return Err(("loss", format!("must be a probability in [0, 1] (got {l})")));
        }
    }
    if let Some(g) = c.goodput_bytes_per_s {
        if !(g > 0.0 && g.is_finite()) {
            return Err(("goodput_bytes_per_s", format!("must be positive (got {g})")));
        }
    }
    Ok(())
}

/// The largest message painlessMesh accepts (ArduinoJson string limit, PROTOCOL.md §4.10).
pub const MAX_PAYLOAD_BYTES: usize = 65_535;

/// A channel model a run can use: the geometric one needs positions and a positive range.
pub(crate) fn check_channel(
    channel: &ChannelModel,
    has_positions: bool,
    topology_label: &str,
) -> Result<(), (&'static str, String)> {
    if let ChannelModel::Geometric {
        interference_range_m,
    } = *channel
    {
        if !has_positions {
            return Err((
                "model",
                format!(
                    "the geometric channel needs node positions; topology `{}` has none (use line, grid or geometric)",
                    topology_label
                ),
            ));
        }
        if !(interference_range_m > 0.0 && interference_range_m.is_finite()) {
            return Err((
                "interference_range_m",
                format!("must be a positive distance (got {interference_range_m})"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_event(e: &SimEvent, n: u32) -> Result<(), (&'static str, String)> {
    for v in e.nodes() {
        if v == 0 || v > n {
            return Err((
                "node",
                format!("names node {v}, but nodes are numbered 1..={n}"),
            ));
        }
    }
    match e {
        SimEvent::Move { node, parent } if node == parent => {
            Err(("parent", "a node cannot be its own access point".into()))
        }
        SimEvent::Join {
            node,
            parent: Some(p),
        } if node == p => Err(("parent", "a node cannot be its own access point".into())),
        SimEvent::LinkDown { a, b, .. } if a == b => {
            Err(("link", "a link joins two different nodes".into()))
        }
        SimEvent::Partition { nodes } if nodes.is_empty() => {
            Err(("nodes", "a partition needs at least one node".into()))
        }
        SimEvent::SetLink { change, .. } => check_change(change),
        _ => Ok(()),
    }
}

/// A scenario built in code has a value no run can use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid scenario: {field}: {message}")]
pub struct InvalidScenario {
    /// The offending field, e.g. `topology.max_children`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}
