//! The simulation engine: virtual time, the event loop, nodes, links and transmitters.

use std::collections::{BTreeMap, VecDeque};

use meshfleet_mesh::{
    Config, Delivery, Duration, Event, Instant, LinkId, LinkRole, Node, NodeId, PluginEvent, Rng,
    Transmit,
};

use crate::channel::{tx_cost, ChannelModel, LinkChange, LinkParams};
use crate::clock::LocalClock;
use crate::metrics::{
    parse_tag, secs, tag, AppMsg, AppReport, Convergence, ConvergenceReport, LatencySummary,
    LinkReport, MeshTotals, NodeReport, Sample, SimReport, TimeSyncReport, Window,
};
use crate::scenario::{
    InvalidScenario, NodeFactory, NodeInit, Scenario, SimEvent, Traffic, TrafficKind,
};
use crate::store::PersistentStore;
use crate::topology::{dist, CellGrid, Layout};

/// One frame put on the air, as seen by [`Simulation::set_frame_trace`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct FrameTrace<'a> {
    /// When its transmission started.
    pub start: Instant,
    /// When it will reach the receiver (unless the link drops first).
    pub arrival: Instant,
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// The link.
    pub link: LinkId,
    /// Bytes on the air (NUL included).
    pub bytes: usize,
    /// The frame (NUL included).
    pub frame: &'a [u8],
    /// How long it occupies the transmitter (overhead, bytes, retransmitted segments).
    pub airtime: Duration,
    /// Whether the node queued it with high priority.
    pub high_priority: bool,
    /// TCP segments retransmitted for it.
    pub retransmissions: u32,
}

type ProgressFn = Box<dyn FnMut(f64)>;
type TraceFn = Box<dyn FnMut(&FrameTrace<'_>)>;
type EventHookFn = Box<dyn FnMut(Instant, NodeId, &Event)>;
type PluginSinkFn = Box<dyn FnMut(Instant, NodeId, &'static str, Box<dyn PluginEvent>)>;

/// Internal events.
enum Ev {
    /// A node's timer (stale unless `gen` matches).
    Wake { node: usize, gen: u64 },
    /// A transmitter finished its current airtime.
    RadioFree { unit: usize },
    /// A link direction finished its in-flight frame (retransmission stalls included).
    DirDone { link: LinkId, dir: u8 },
    /// A frame reaches its receiver.
    Deliver {
        link: LinkId,
        dir: u8,
        frame: Vec<u8>,
    },
    /// TCP gave up on a link.
    TcpReset { link: LinkId },
    /// A node learns that a link closed (FIN/RST arrives).
    PeerDown { node: usize, link: LinkId },
    /// A station association attempt (`boot`: power the node on first). Automatic retries
    /// carry the node's retry generation and are skipped once a newer one is scheduled.
    Join {
        node: usize,
        parent: Option<usize>,
        boot: bool,
        retry: Option<u64>,
    },
    /// The formation's k-th join.
    FormationJoin { k: usize },
    /// Timeline event `i` of the scenario.
    Timeline(usize),
    /// Application flow `i` sends.
    Traffic(usize),
    /// A time-series sample.
    Sample,
}

#[derive(Default)]
struct Dir {
    hi: VecDeque<Vec<u8>>,
    lo: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    /// Frame being sent (or waiting out retransmission timeouts) and its arrival time.
    in_flight: Option<(Vec<u8>, Instant)>,
    /// In its transmitter's ready ring.
    ready: bool,
    unit: usize,
    last_arrival: Instant,
}

struct LinkState {
    id: LinkId,
    /// `[access point, station]`; direction `d` is sent by `ends[d]`.
    ends: [usize; 2],
    params: LinkParams,
    rng: Rng,
    dirs: [Dir; 2],
}

struct Radio {
    busy: bool,
    ready: VecDeque<(LinkId, u8)>,
    node: usize,
    /// Geometric model: queue position while waiting for a clear channel.
    waiting: Option<u64>,
    /// Its transmission on the air marks the sender's neighbourhood busy (it started under
    /// the geometric model, and no channel switch happened since): its end must unmark it.
    carrier: bool,
}

impl Radio {
    fn new(node: usize) -> Self {
        Self {
            busy: false,
            ready: VecDeque::new(),
            node,
            waiting: None,
            carrier: false,
        }
    }
}

struct LinkStat {
    ends: [usize; 2],
    opened: Instant,
    closed: Option<Instant>,
    frames: [u64; 2],
    bytes: [u64; 2],
    retransmissions: u64,
}

struct Slot {
    number: u32,
    id: NodeId,
    node: Option<Node>,
    clock: LocalClock,
    drift_ppb: i64,
    hung: bool,
    boots: u32,
    store: PersistentStore,
    wake_at: Option<Instant>,
    wake_gen: u64,
    /// Open links (either role), in opening order.
    links: Vec<LinkId>,
    uplink: Option<LinkId>,
    /// Stations connected to our access point.
    children: u32,
    /// Root, or has an uplink: others may join through us.
    in_mesh: bool,
    /// Partition side (0 = default).
    side: u32,
    /// Generation of the pending automatic rejoin.
    retry_gen: u64,
    queued_bytes: u64,
    queued_frames: u64,
    queue_peak_bytes: u64,
    queue_peak_frames: u64,
    frames_sent: u64,
    bytes_sent: u64,
    app_received: u64,
    /// Counters of crashed boots, so totals survive reboots.
    past: MeshTotals,
}

/// A running simulation. See the crate docs for the model and the run loop.
pub struct Simulation {
    name: String,
    seed: u64,
    topology_label: &'static str,
    channel: ChannelModel,
    id_base: u32,
    now: Instant,
    end: Instant,
    queue: crate::queue::EventQueue<Ev>,
    slots: Vec<Slot>,
    layout: Layout,
    roots: Vec<bool>,
    formation_order: Vec<usize>,
    formation_times: Vec<Instant>,
    link_defaults: LinkParams,
    pair_changes: BTreeMap<(usize, usize), LinkChange>,
    blocked_until: BTreeMap<(usize, usize), Instant>,
    links: Vec<Option<LinkState>>,
    link_stats: Vec<LinkStat>,
    radios: Vec<Radio>,
    interferers: Vec<Vec<usize>>,
    carrier_busy: Vec<u32>,
    wait_seq: u64,
    factory: NodeFactory,
    config_template: Box<dyn Fn(NodeId) -> Config>,
    rejoin_scan: Duration,
    rejoin_rescan: Duration,
    timeline: Vec<SimEvent>,
    traffic: Vec<Traffic>,
    traffic_rng: Rng,
    sample_interval: Duration,
    drift_ppm: f64,
    // Metrics.
    events_processed: u64,
    frames_on_air: u64,
    bytes_on_air: u64,
    window: Window,
    drops: BTreeMap<String, u64>,
    link_closes: BTreeMap<String, u64>,
    msgs: Vec<AppMsg>,
    app_sent: u64,
    app_not_sent: u64,
    latencies: Vec<u64>,
    conv: Convergence,
    series: Vec<Sample>,
    // Hooks.
    progress: Option<ProgressFn>,
    next_progress: Instant,
    trace: Option<TraceFn>,
    event_hooks: Vec<EventHookFn>,
    plugin_sink: Option<PluginSinkFn>,
    // Scratch buffers reused across inputs.
    scratch_tx: Vec<Transmit>,
    scratch_ev: Vec<Event>,
}

const LINK_SALT: u64 = 0x4C49_4E4B;
const NODE_SALT: u64 = 0x4E4F_4445;

/// For each node, the nodes within the interference range under `channel` (empty unless
/// it is geometric and there are positions), sorted.
fn interferers(
    channel: &ChannelModel,
    positions: Option<&[(f64, f64)]>,
    n: usize,
) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); n];
    if let (
        ChannelModel::Geometric {
            interference_range_m,
        },
        Some(pos),
    ) = (channel, positions)
    {
        let mut grid = CellGrid::new(*interference_range_m);
        for (i, p) in pos.iter().enumerate() {
            grid.insert(*p, i);
        }
        for (i, p) in pos.iter().enumerate().take(n) {
            let mut v = Vec::new();
            grid.within(*p, *interference_range_m, pos, &mut v);
            v.retain(|&j| j != i);
            v.sort_unstable();
            out[i] = v;
        }
    }
    out
}

/// A child seed from the run seed, a domain and two numbers: independent of the order in
/// which things are created, so adding a node or a link does not reshuffle the others.
fn child_seed(seed: u64, domain: u64, a: u64, b: u64) -> u64 {
    let mut r = Rng::new(seed ^ domain.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let x = r.next_u64() ^ a.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let mut r = Rng::new(x);
    r.next_u64() ^ b.wrapping_mul(0xA076_1D64_78BD_642F)
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Simulation {
    /// Builds the simulation: generates the topology and schedules the formation, the
    /// timeline and the traffic. Nothing runs until [`Simulation::step`] or `run_*`.
    ///
    /// # Panics
    ///
    /// If the scenario is invalid ([`Scenario::validate`]); use [`Simulation::try_new`]
    /// to get the error instead.
    pub fn new(scenario: Scenario) -> Self {
        match Self::try_new(scenario) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Builds the simulation, or says why the scenario cannot run.
    pub fn try_new(scenario: Scenario) -> Result<Self, InvalidScenario> {
        scenario.validate()?;
        let mut master = Rng::new(scenario.seed);
        let mut topo_rng = master.derive(1);
        let mut clock_rng = master.derive(2);
        let mut formation_rng = master.derive(3);
        let traffic_rng = master.derive(4);
        let layout = scenario
            .topology
            .generate(&mut topo_rng)
            .map_err(|(f, m)| InvalidScenario {
                field: format!("topology.{f}"),
                message: m,
            })?;
        let n = scenario.topology.node_count() as usize;
        let ppb = (scenario.clock.drift_ppm * 1000.0).round() as i64;
        let slots: Vec<Slot> = (0..n)
            .map(|i| {
                let drift = if ppb > 0 {
                    clock_rng.below(2 * ppb as u64 + 1) as i64 - ppb
                } else {
                    0
                };
                Slot {
                    number: i as u32 + 1,
                    id: scenario.id_of(i as u32 + 1),
                    node: None,
                    clock: LocalClock::new(Instant::ZERO, 0, drift),
                    drift_ppb: drift,
                    hung: false,
                    boots: 0,
                    store: PersistentStore::new(),
                    wake_at: None,
                    wake_gen: 0,
                    links: Vec::new(),
                    uplink: None,
                    children: 0,
                    in_mesh: false,
                    side: 0,
                    retry_gen: 0,
                    queued_bytes: 0,
                    queued_frames: 0,
                    queue_peak_bytes: 0,
                    queue_peak_frames: 0,
                    frames_sent: 0,
                    bytes_sent: 0,
                    app_received: 0,
                    past: MeshTotals::default(),
                }
            })
            .collect();
        // Roots: no fixed parent in a fixed layout; the head of each BFS run in a dynamic one.
        let mut roots = vec![false; n];
        if layout.dynamic {
            let mut seen = vec![false; n];
            for &v in &layout.order {
                if !layout.neighbours[v].iter().any(|&j| seen[j]) {
                    roots[v] = true;
                }
                seen[v] = true;
            }
        } else {
            for (v, p) in layout.parent.iter().enumerate() {
                roots[v] = p.is_none();
            }
        }
        // Nodes that join by a timeline event are left out of the formation.
        let mut late = vec![false; n];
        for (_, e) in &scenario.events {
            if let SimEvent::Join { node, .. } = e {
                late[*node as usize - 1] = true;
            }
        }
        let formation_order: Vec<usize> =
            layout.order.iter().copied().filter(|&v| !late[v]).collect();
        let f = &scenario.formation;
        let formation_times: Vec<Instant> = (0..formation_order.len())
            .map(|k| {
                let jitter = if f.jitter > Duration::ZERO {
                    formation_rng.below(f.jitter.as_micros())
                } else {
                    0
                };
                Instant::ZERO
                    + f.start
                    + Duration::from_micros(f.interval.as_micros() * k as u64 + jitter)
            })
            .collect();
        // Radios 0..n are the nodes' own (the airtime and geometric models); the
        // independent model adds one per link direction after them. Keeping the node radios
        // under every model lets the channel model change during a run.
        let radios: Vec<Radio> = (0..n).map(Radio::new).collect();
        let interferers = interferers(&scenario.channel, layout.positions.as_deref(), n);
        let mesh = scenario.mesh.clone();
        let id_base = scenario.id_base;
        let config_template = Box::new(move |id: NodeId| {
            let mut c = Config::new(id);
            let number = id.0.wrapping_sub(id_base);
            c.root = mesh.root == Some(number);
            c.has_time_authority = mesh.time_authority.contains(&number);
            if let Some(t) = mesh.node_timeout {
                c.node_timeout = t;
            }
            if let Some(t) = mesh.node_sync_interval {
                c.node_sync_interval = t;
            }
            if let Some(t) = mesh.time_sync_interval {
                c.time_sync_interval = t;
            }
            c
        });
        let end = Instant::ZERO + scenario.duration;
        let mut timeline: Vec<(Duration, SimEvent)> = scenario.events.clone();
        // Stable: events at one time keep their listed order.
        timeline.sort_by_key(|(t, _)| *t);
        let mut sim = Self {
            name: scenario.name.clone(),
            seed: scenario.seed,
            topology_label: scenario.topology.label(),
            channel: scenario.channel.clone(),
            id_base,
            now: Instant::ZERO,
            end,
            queue: crate::queue::EventQueue::new(),
            slots,
            layout,
            roots,
            formation_order,
            formation_times,
            link_defaults: scenario.link.clone(),
            pair_changes: BTreeMap::new(),
            blocked_until: BTreeMap::new(),
            links: vec![None],
            link_stats: vec![LinkStat {
                ends: [0, 0],
                opened: Instant::ZERO,
                closed: None,
                frames: [0; 2],
                bytes: [0; 2],
                retransmissions: 0,
            }],
            radios,
            interferers,
            carrier_busy: vec![0; n],
            wait_seq: 0,
            factory: scenario.factory.clone(),
            config_template,
            rejoin_scan: scenario.rejoin.scan_delay,
            rejoin_rescan: scenario.rejoin.rescan_interval,
            timeline: Vec::new(),
            traffic: scenario.traffic.clone(),
            traffic_rng,
            sample_interval: scenario.sample_interval,
            drift_ppm: scenario.clock.drift_ppm,
            events_processed: 0,
            frames_on_air: 0,
            bytes_on_air: 0,
            window: Window::default(),
            drops: BTreeMap::new(),
            link_closes: BTreeMap::new(),
            msgs: Vec::new(),
            app_sent: 0,
            app_not_sent: 0,
            latencies: Vec::new(),
            conv: Convergence::new(n),
            series: Vec::new(),
            progress: None,
            next_progress: Instant::ZERO,
            trace: None,
            event_hooks: Vec::new(),
            plugin_sink: None,
            scratch_tx: Vec::new(),
            scratch_ev: Vec::new(),
        };
        for k in 0..sim.formation_order.len() {
            sim.queue
                .push(sim.formation_times[k], Ev::FormationJoin { k });
        }
        if sim.formation_order.is_empty() {
            sim.conv.formation_done_at = Some(Instant::ZERO);
        }
        for (i, (at, e)) in timeline.into_iter().enumerate() {
            sim.queue.push(Instant::ZERO + at, Ev::Timeline(i));
            sim.timeline.push(e);
        }
        for (i, t) in sim.traffic.iter().enumerate() {
            sim.queue.push(Instant::ZERO + t.start, Ev::Traffic(i));
        }
        sim.queue
            .push(Instant::ZERO + sim.sample_interval, Ev::Sample);
        Ok(sim)
    }

    // ----- public API -------------------------------------------------------------------

    /// Calls `f` with the fraction of virtual time done (0..=1), about 200 times a run.
    pub fn set_progress(&mut self, f: impl FnMut(f64) + 'static) {
        self.progress = Some(Box::new(f));
    }

    /// Calls `f` for every frame put on the air.
    pub fn set_frame_trace(&mut self, f: impl FnMut(&FrameTrace<'_>) + 'static) {
        self.trace = Some(Box::new(f));
    }

    /// Calls `f` for every event a node emits (global time, node id, event), before the
    /// simulator acts on it. Plugin events arrive here. Hooks add up (each workload installs
    /// its own) and run in the order they were set.
    pub fn set_event_hook(&mut self, f: impl FnMut(Instant, NodeId, &Event) + 'static) {
        self.event_hooks.push(Box::new(f));
    }

    /// Takes every plugin event a node emits (global time, node id, plugin name, event),
    /// after the event hook saw it: for a driver that hands typed events on (the demo's
    /// gateway port forwards its node's plugin events to its subscribers).
    pub fn set_plugin_sink(
        &mut self,
        f: impl FnMut(Instant, NodeId, &'static str, Box<dyn PluginEvent>) + 'static,
    ) {
        self.plugin_sink = Some(Box::new(f));
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The scenario's end.
    pub fn end(&self) -> Instant {
        self.end
    }

    /// Number of nodes in the scenario.
    pub fn node_count(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The id of node number `n` (1-based).
    pub fn id_of(&self, n: u32) -> NodeId {
        NodeId(self.id_base.wrapping_add(n))
    }

    /// The number of node `id`.
    pub fn number_of(&self, id: NodeId) -> Option<u32> {
        self.index(id).map(|i| i as u32 + 1)
    }

    /// Every node id, in number order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.slots.iter().map(|s| s.id).collect()
    }

    fn index(&self, id: NodeId) -> Option<usize> {
        let k = id.0.checked_sub(self.id_base)?;
        (1..=self.slots.len() as u32)
            .contains(&k)
            .then_some(k as usize - 1)
    }

    /// The node, if it is booted (crashed and not yet booted nodes have none).
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.slots.get(self.index(id)?)?.node.as_ref()
    }

    /// The node, mutably. Outputs it produces are picked up at its next input; prefer
    /// [`Simulation::with_node`], which drains them at once.
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        let i = self.index(id)?;
        self.slots[i].node.as_mut()
    }

    /// Runs `f` on a running node with its local time, then drains its outputs into the
    /// network (the way to make a plugin act from a test).
    pub fn with_node<R>(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut Node, Instant) -> R,
    ) -> Option<R> {
        let v = self.index(id)?;
        if self.slots[v].hung {
            return None;
        }
        let local = self.local(v);
        let r = f(self.slots[v].node.as_mut()?, local);
        self.after_input(v);
        self.finish_event();
        Some(r)
    }

    /// The node's local clock now.
    pub fn local_time(&self, id: NodeId) -> Option<Instant> {
        let v = self.index(id)?;
        self.slots[v].node.as_ref()?;
        Some(self.local(v))
    }

    /// The node's persistent store (exists for every node, booted or not).
    pub fn store(&self, id: NodeId) -> Option<&PersistentStore> {
        Some(&self.slots.get(self.index(id)?)?.store)
    }

    /// Whether the node is booted and not hung.
    pub fn is_running(&self, id: NodeId) -> bool {
        self.index(id)
            .is_some_and(|v| self.slots[v].node.is_some() && !self.slots[v].hung)
    }

    /// The open link between two nodes.
    pub fn link_between(&self, a: NodeId, b: NodeId) -> Option<LinkId> {
        let (a, b) = (self.index(a)?, self.index(b)?);
        self.slots[a]
            .links
            .iter()
            .copied()
            .find(|l| self.link(*l).is_some_and(|s| s.ends.contains(&b)))
    }

    /// Whether every running node's node list equals the set of the other running nodes
    /// it is connected to.
    pub fn converged(&self) -> bool {
        self.conv.all_ok()
    }

    /// Connected components among running nodes.
    pub fn components(&self) -> usize {
        self.conv.components()
    }

    /// Largest pairwise mesh-time difference among running nodes of the largest
    /// component, µs.
    pub fn mesh_time_spread(&self) -> Option<u64> {
        let sizes = &self.conv.comp_size;
        let (big, _) = sizes
            .iter()
            .enumerate()
            .max_by_key(|(i, s)| (**s, std::cmp::Reverse(*i)))?;
        let mut reference = None;
        let (mut lo, mut hi) = (0i64, 0i64);
        for (v, s) in self.slots.iter().enumerate() {
            if self.conv.comp[v] as usize != big {
                continue;
            }
            let Some(node) = &s.node else { continue };
            let t = node.mesh_time(s.clock.to_local(self.now));
            let r = *reference.get_or_insert(t);
            let d = i64::from(t.wrapping_sub(r) as i32);
            lo = lo.min(d);
            hi = hi.max(d);
        }
        reference.map(|_| (hi - lo) as u64)
    }

    /// Schedules a timeline event at absolute virtual time `at`.
    pub fn schedule(&mut self, at: Instant, event: SimEvent) {
        self.timeline.push(event);
        self.queue
            .push(at.max(self.now), Ev::Timeline(self.timeline.len() - 1));
    }

    /// Processes the next event. Returns `false` when nothing is left to do.
    pub fn step(&mut self) -> bool {
        let Some((t, ev)) = self.queue.pop() else {
            return false;
        };
        self.now = t;
        if self.handle(ev) {
            self.events_processed += 1;
        }
        self.finish_event();
        true
    }

    /// Runs every event up to and including time `t`, then sets the clock to `t`.
    pub fn run_until(&mut self, t: Instant) {
        while self.queue.peek_time().is_some_and(|next| next <= t) {
            self.step();
            if self.progress.is_some() && self.now >= self.next_progress {
                self.report_progress();
            }
        }
        self.now = self.now.max(t);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs to the scenario's end and returns the report.
    pub fn run(&mut self) -> SimReport {
        self.run_until(self.end);
        if let Some(p) = &mut self.progress {
            p(1.0);
        }
        self.report()
    }

    fn report_progress(&mut self) {
        let total = self.end.as_micros().max(1);
        let frac = (self.now.as_micros() as f64 / total as f64).min(1.0);
        if let Some(p) = &mut self.progress {
            p(frac);
        }
        self.next_progress = self.now + Duration::from_micros(total / 200 + 1);
    }

    // ----- event dispatch ---------------------------------------------------------------

    fn local(&self, v: usize) -> Instant {
        self.slots[v].clock.to_local(self.now)
    }

    fn drop_frame(&mut self, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.window.drops += n;
        match self.drops.get_mut(reason) {
            Some(c) => *c += n,
            None => {
                self.drops.insert(reason.to_owned(), n);
            }
        }
    }

    fn link(&self, id: LinkId) -> Option<&LinkState> {
        self.links.get(id.0 as usize)?.as_ref()
    }

    /// Returns whether the event did something (stale wakeups do not count).
    fn handle(&mut self, ev: Ev) -> bool {
        match ev {
            Ev::Wake { node, gen } => {
                let s = &mut self.slots[node];
                if s.wake_gen != gen || s.hung {
                    return false;
                }
                s.wake_at = None;
                let local = s.clock.to_local(self.now);
                let Some(n) = s.node.as_mut() else {
                    return false;
                };
                n.handle_timeout(local);
                self.after_input(node);
            }
            Ev::RadioFree { unit } => self.radio_free(unit),
            Ev::DirDone { link, dir } => self.dir_done(link, dir),
            Ev::Deliver { link, dir, frame } => self.deliver(link, dir, frame),
            Ev::TcpReset { link } => {
                self.close_link(
                    link,
                    "tcp_reset",
                    [Some(Duration::ZERO), Some(Duration::ZERO)],
                );
            }
            Ev::PeerDown { node, link } => {
                let local = self.local(node);
                let s = &mut self.slots[node];
                if s.hung {
                    return false;
                }
                let Some(n) = s.node.as_mut() else {
                    return false;
                };
                n.handle_link_down(local, link);
                self.after_input(node);
            }
            Ev::Join {
                node,
                parent,
                boot,
                retry,
            } => {
                if retry.is_some_and(|g| g != self.slots[node].retry_gen) {
                    return false;
                }
                self.join(node, parent, boot, false);
            }
            Ev::FormationJoin { k } => {
                let v = self.formation_order[k];
                let parent = self.layout.parent[v];
                self.join(v, parent, true, false);
                if k + 1 == self.formation_order.len() {
                    self.conv.formation_done_at = Some(self.now);
                    self.conv.pending.push(("formation".into(), Instant::ZERO));
                }
            }
            Ev::Timeline(i) => self.timeline_event(i),
            Ev::Traffic(i) => self.traffic_event(i),
            Ev::Sample => {
                self.sample();
                let next = self.now + self.sample_interval;
                if next <= self.end {
                    self.queue.push(next, Ev::Sample);
                }
            }
        }
        true
    }

    /// Drains a node's outputs after an input and reschedules its wakeup.
    fn after_input(&mut self, v: usize) {
        let mut txs = std::mem::take(&mut self.scratch_tx);
        let mut evs = std::mem::take(&mut self.scratch_ev);
        while let Some(node) = self.slots[v].node.as_mut() {
            while let Some(t) = node.poll_transmit() {
                txs.push(t);
            }
            while let Some(e) = node.poll_event() {
                evs.push(e);
            }
            if txs.is_empty() && evs.is_empty() {
                break;
            }
            for t in txs.drain(..) {
                self.enqueue(v, t);
            }
            for e in evs.drain(..) {
                self.node_event(v, e);
            }
        }
        self.scratch_tx = txs;
        self.scratch_ev = evs;
        self.reschedule(v);
    }

    fn reschedule(&mut self, v: usize) {
        let s = &mut self.slots[v];
        let next = s
            .node
            .as_ref()
            .and_then(Node::poll_timeout)
            .map(|l| s.clock.to_global(l).max(self.now));
        if next == s.wake_at {
            return;
        }
        s.wake_gen += 1;
        s.wake_at = next;
        if let Some(at) = next {
            let gen = s.wake_gen;
            self.queue.push(at, Ev::Wake { node: v, gen });
        }
    }

    fn node_event(&mut self, v: usize, e: Event) {
        for h in &mut self.event_hooks {
            h(self.now, self.slots[v].id, &e);
        }
        match e {
            Event::LinkClosed { link, reason, .. } => {
                *self
                    .link_closes
                    .entry(reason.label().to_owned())
                    .or_default() += 1;
                // The node closed the socket: the peer sees FIN one link latency later.
                let lat = self
                    .link(link)
                    .map(|l| l.params.latency)
                    .unwrap_or_default();
                let ends = self.link(link).map(|l| l.ends);
                if let Some(ends) = ends {
                    let notify = ends.map(|e| (e != v).then_some(lat));
                    self.close_link(link, "link_closed", notify);
                }
            }
            Event::NodeListChanged { nodes } => {
                let id = self.slots[v].id;
                self.conv.set_list(v, id, &nodes);
            }
            Event::Received { msg, delivery, .. } => self.app_received(v, &msg, delivery),
            Event::FrameDropped { reason, .. } => self.drop_frame(reason.label(), 1),
            Event::Plugin { plugin, event } => {
                if let Some(sink) = &mut self.plugin_sink {
                    sink(self.now, self.slots[v].id, plugin, event);
                }
            }
            _ => {}
        }
    }

    // ----- nodes: boot, crash, join -----------------------------------------------------

    fn boot(&mut self, v: usize) {
        let s = &mut self.slots[v];
        let boot = s.boots;
        s.boots += 1;
        let mut rng = Rng::new(child_seed(self.seed, NODE_SALT, v as u64, u64::from(boot)));
        let mut config = (self.config_template)(s.id);
        config.seed = rng.next_u64();
        config.initial_time_offset = rng.next_u64() as u32;
        // micros() of a freshly booted chip, shifted by a random origin so that two nodes
        // booting together still disagree.
        let boot_local = rng.below(1 << 32);
        s.clock = LocalClock::new(self.now, boot_local, s.drift_ppb);
        let init = NodeInit {
            number: s.number,
            id: s.id,
            config,
            rng: &mut rng,
            store: s.store.clone(),
            boot_count: boot,
        };
        let node = (self.factory)(init);
        let s = &mut self.slots[v];
        s.node = Some(node);
        s.hung = false;
        s.in_mesh = self.roots[v];
        let id = s.id;
        self.conv.set_list(v, id, &[]);
        self.conv.dirty = true;
        self.after_input(v);
    }

    fn crash(&mut self, v: usize, reason: &str) {
        if self.slots[v].node.is_none() {
            return;
        }
        for link in self.slots[v].links.clone() {
            let Some(l) = self.link(link) else { continue };
            let lat = l.params.latency;
            let notify = l.ends.map(|e| (e != v).then_some(lat));
            self.close_link(link, reason, notify);
        }
        let s = &mut self.slots[v];
        if let Some(node) = s.node.take() {
            let st = node.stats();
            s.past.closed_peer += st.closed_peer;
            s.past.closed_timeout += st.closed_timeout;
            s.past.closed_invalid += st.closed_invalid;
            s.past.layout_changes += st.layout_changes;
            s.past.time_adjustments += st.time_adjustments;
            s.past.forwarded += st.forwarded;
        }
        s.hung = false;
        s.in_mesh = false;
        s.wake_gen += 1;
        s.wake_at = None;
        self.conv.dirty = true;
    }

    fn blocked(&self, a: usize, b: usize) -> bool {
        self.slots[a].side != self.slots[b].side
            || self
                .blocked_until
                .get(&pair(a, b))
                .is_some_and(|t| *t > self.now)
    }

    /// A station association attempt. `forced`: the timeline named the parent.
    fn join(&mut self, v: usize, parent: Option<usize>, boot: bool, forced: bool) {
        if self.slots[v].node.is_none() {
            if !boot {
                return;
            }
            self.boot(v);
        }
        let s = &self.slots[v];
        if s.hung || s.uplink.is_some() {
            return;
        }
        if self.roots[v] && parent.is_none() {
            self.slots[v].in_mesh = true;
            return;
        }
        let usable = |sim: &Self, p: usize, check_capacity: bool| {
            let ps = &sim.slots[p];
            let Some(me) = &sim.slots[v].node else {
                return false;
            };
            ps.node.is_some()
                && (ps.in_mesh || forced)
                && !sim.blocked(v, p)
                && (forced || me.route(ps.id).is_none())
                && (!check_capacity || sim.layout.max_children.map_or(true, |m| ps.children < m))
        };
        let choice = match parent {
            Some(p) if usable(self, p, !forced) => Some(p),
            _ => self.layout.neighbours[v]
                .iter()
                .copied()
                .find(|&p| usable(self, p, true)),
        };
        match choice {
            Some(p) => self.connect(v, p),
            None => {
                // Nothing in range yet: scan again later, keeping the preference.
                self.schedule_rejoin(v, self.rejoin_rescan, parent);
            }
        }
    }

    /// Schedules the station's next automatic association attempt, replacing any pending one.
    fn schedule_rejoin(&mut self, v: usize, after: Duration, parent: Option<usize>) {
        let s = &mut self.slots[v];
        s.retry_gen += 1;
        let retry = Some(s.retry_gen);
        self.queue.push(
            self.now + after,
            Ev::Join {
                node: v,
                parent,
                boot: false,
                retry,
            },
        );
    }

    fn connect(&mut self, sta: usize, ap: usize) {
        let id = LinkId(self.links.len() as u64);
        let mut params = self.link_defaults.clone();
        if let Some(c) = self.pair_changes.get(&pair(sta, ap)) {
            c.apply(&mut params);
        }
        let mut dirs = [Dir::default(), Dir::default()];
        for (d, dir) in dirs.iter_mut().enumerate() {
            let sender = if d == 0 { ap } else { sta };
            dir.unit = self.unit_for(sender);
        }
        self.links.push(Some(LinkState {
            id,
            ends: [ap, sta],
            params,
            rng: Rng::new(child_seed(self.seed, LINK_SALT, id.0, 0)),
            dirs,
        }));
        self.link_stats.push(LinkStat {
            ends: [ap, sta],
            opened: self.now,
            closed: None,
            frames: [0; 2],
            bytes: [0; 2],
            retransmissions: 0,
        });
        self.slots[sta].links.push(id);
        self.slots[sta].uplink = Some(id);
        self.slots[sta].in_mesh = true;
        self.slots[ap].links.push(id);
        self.slots[ap].children += 1;
        self.conv.dirty = true;
        // The access point accepts first: the station's request must find the link known.
        if !self.slots[ap].hung {
            let local = self.local(ap);
            if let Some(n) = self.slots[ap].node.as_mut() {
                n.handle_link_up(local, id, LinkRole::AccessPoint);
                self.after_input(ap);
            }
        }
        let local = self.local(sta);
        if let Some(n) = self.slots[sta].node.as_mut() {
            n.handle_link_up(local, id, LinkRole::Station);
            self.after_input(sta);
        }
    }

    /// Removes a link from the network. Frames queued or in flight are lost (`reason`);
    /// `notify[i]` = when end `i` hears of it (`None`: it closed it itself, or is gone).
    fn close_link(&mut self, id: LinkId, reason: &str, notify: [Option<Duration>; 2]) {
        let Some(mut l) = self.links.get_mut(id.0 as usize).and_then(Option::take) else {
            return;
        };
        let mut lost = 0;
        for (d, dir) in l.dirs.iter_mut().enumerate() {
            let sender = l.ends[d];
            let frames = (dir.hi.len() + dir.lo.len()) as u64;
            self.slots[sender].queued_bytes -= dir.queued_bytes as u64;
            self.slots[sender].queued_frames -= frames;
            lost += frames + u64::from(dir.in_flight.is_some());
        }
        self.drop_frame(reason, lost);
        self.link_stats[id.0 as usize].closed = Some(self.now);
        let [ap, sta] = l.ends;
        for v in [ap, sta] {
            self.slots[v].links.retain(|x| *x != id);
        }
        self.slots[ap].children -= 1;
        if self.slots[sta].uplink == Some(id) {
            self.slots[sta].uplink = None;
            self.slots[sta].in_mesh = self.roots[sta];
            self.schedule_rejoin(sta, self.rejoin_scan, self.layout.parent[sta]);
        }
        for (i, when) in notify.iter().enumerate() {
            if let Some(d) = when {
                self.queue.push(
                    self.now + *d,
                    Ev::PeerDown {
                        node: l.ends[i],
                        link: id,
                    },
                );
            }
        }
        self.conv.dirty = true;
    }

    // ----- channel ----------------------------------------------------------------------

    fn enqueue(&mut self, v: usize, t: Transmit) {
        let Some(l) = self
            .links
            .get_mut(t.link.0 as usize)
            .and_then(Option::as_mut)
        else {
            self.drop_frame("link_closed", 1);
            return;
        };
        let Some(d) = l.ends.iter().position(|e| *e == v) else {
            self.drop_frame("link_closed", 1);
            return;
        };
        let cap = l.params.queue_cap_bytes;
        let dir = &mut l.dirs[d];
        let len = t.frame.len();
        // A frame larger than the cap still gets through an empty queue, or it never could.
        if !t.high_priority && dir.queued_bytes > 0 && dir.queued_bytes + len > cap {
            self.drop_frame("queue_full", 1);
            return;
        }
        dir.queued_bytes += len;
        if t.high_priority {
            dir.hi.push_back(t.frame);
        } else {
            dir.lo.push_back(t.frame);
        }
        let wake = dir.in_flight.is_none() && !dir.ready;
        let unit = dir.unit;
        if wake {
            dir.ready = true;
        }
        let backlog = dir.queued_bytes;
        let s = &mut self.slots[v];
        s.queued_bytes += len as u64;
        s.queued_frames += 1;
        s.queue_peak_bytes = s.queue_peak_bytes.max(s.queued_bytes);
        s.queue_peak_frames = s.queue_peak_frames.max(s.queued_frames);
        // Like a driver, tell the node what waits in its send queue (plugins pace on it).
        if let Some(n) = s.node.as_mut() {
            n.set_link_backlog(t.link, backlog);
        }
        if wake {
            self.radios[unit].ready.push_back((t.link, d as u8));
            self.try_start(unit);
        }
    }

    /// The transmitter a new link direction sent by `sender` uses under the current model.
    fn unit_for(&mut self, sender: usize) -> usize {
        match self.channel {
            ChannelModel::Independent => {
                self.radios.push(Radio::new(sender));
                self.radios.len() - 1
            }
            _ => sender,
        }
    }

    /// Switches the channel model now (see [`Simulation::set_channel`]).
    fn switch_channel(&mut self, channel: ChannelModel) {
        // Transmissions on the air finish their airtime, but from now on only the new
        // model's transmissions occupy the medium: unmark what the old ones marked.
        for unit in 0..self.radios.len() {
            if std::mem::take(&mut self.radios[unit].carrier) {
                let node = self.radios[unit].node;
                self.carrier_busy[node] -= 1;
                for &j in &self.interferers[node] {
                    self.carrier_busy[j] -= 1;
                }
            }
        }
        debug_assert!(self.carrier_busy.iter().all(|c| *c == 0));
        for r in &mut self.radios {
            r.ready.clear();
            r.waiting = None;
        }
        self.interferers =
            interferers(&channel, self.layout.positions.as_deref(), self.slots.len());
        self.channel = channel;
        // Every link direction moves to its transmitter under the new model; those with
        // frames waiting queue there, in link order (the old rings' order is not kept).
        let mut wake = Vec::new();
        for i in 0..self.links.len() {
            for d in 0..2 {
                let Some(sender) = self.links[i].as_ref().map(|l| l.ends[d]) else {
                    continue;
                };
                let unit = self.unit_for(sender);
                let Some(l) = self.links[i].as_mut() else {
                    continue;
                };
                let id = l.id;
                let dir = &mut l.dirs[d];
                dir.unit = unit;
                if dir.ready {
                    self.radios[unit].ready.push_back((id, d as u8));
                    wake.push(unit);
                }
            }
        }
        wake.sort_unstable();
        wake.dedup();
        for unit in wake {
            self.try_start(unit);
        }
    }

    fn try_start(&mut self, unit: usize) {
        if self.radios[unit].busy {
            return;
        }
        let node = self.radios[unit].node;
        let geometric = matches!(self.channel, ChannelModel::Geometric { .. });
        if geometric && self.carrier_busy[node] > 0 {
            if self.radios[unit].waiting.is_none() && !self.radios[unit].ready.is_empty() {
                self.wait_seq += 1;
                self.radios[unit].waiting = Some(self.wait_seq);
            }
            return;
        }
        while let Some((link, d)) = self.radios[unit].ready.pop_front() {
            let now = self.now;
            let Some(l) = self.links.get_mut(link.0 as usize).and_then(Option::as_mut) else {
                continue;
            };
            let dir = &mut l.dirs[d as usize];
            dir.ready = false;
            let (frame, hi) = match dir.hi.pop_front() {
                Some(f) => (f, true),
                None => match dir.lo.pop_front() {
                    Some(f) => (f, false),
                    None => continue,
                },
            };
            let len = frame.len();
            dir.queued_bytes -= len;
            let cost = tx_cost(len, &l.params, &mut l.rng);
            let done = now + cost.airtime + cost.stall;
            let arrival = (done + l.params.latency).max(dir.last_arrival);
            dir.last_arrival = arrival;
            let (from, to) = (l.ends[d as usize], l.ends[1 - d as usize]);
            let ls = &mut self.link_stats[link.0 as usize];
            ls.frames[d as usize] += 1;
            ls.bytes[d as usize] += len as u64;
            ls.retransmissions += u64::from(cost.retransmissions);
            if let Some(tr) = &mut self.trace {
                tr(&FrameTrace {
                    start: now,
                    arrival,
                    from: self.slots[from].id,
                    to: self.slots[to].id,
                    link,
                    bytes: len,
                    frame: &frame,
                    airtime: cost.airtime,
                    high_priority: hi,
                    retransmissions: cost.retransmissions,
                });
            }
            let backlog = dir.queued_bytes;
            dir.in_flight = Some((frame, arrival));
            let s = &mut self.slots[from];
            if let Some(n) = s.node.as_mut() {
                n.set_link_backlog(link, backlog);
            }
            s.queued_bytes -= len as u64;
            s.queued_frames -= 1;
            s.frames_sent += 1;
            s.bytes_sent += len as u64;
            self.frames_on_air += 1;
            self.bytes_on_air += len as u64;
            self.window.frames += 1;
            self.window.bytes += len as u64;
            self.radios[unit].busy = true;
            self.radios[unit].waiting = None;
            if geometric {
                self.radios[unit].carrier = true;
                self.carrier_busy[node] += 1;
                for i in 0..self.interferers[node].len() {
                    let j = self.interferers[node][i];
                    self.carrier_busy[j] += 1;
                }
            }
            self.queue.push(now + cost.airtime, Ev::RadioFree { unit });
            if cost.reset {
                self.queue.push(done, Ev::TcpReset { link });
            } else {
                self.queue.push(done, Ev::DirDone { link, dir: d });
            }
            return;
        }
    }

    fn radio_free(&mut self, unit: usize) {
        self.radios[unit].busy = false;
        // Only a transmission that marked the neighbourhood unmarks it: one that started
        // before a channel switch did not, or was unmarked by the switch.
        if std::mem::take(&mut self.radios[unit].carrier) {
            let node = self.radios[unit].node;
            self.carrier_busy[node] -= 1;
            let mut waiting: Vec<(u64, usize)> = Vec::new();
            for i in 0..self.interferers[node].len() {
                let j = self.interferers[node][i];
                self.carrier_busy[j] -= 1;
                if let Some(seq) = self.radios[j].waiting {
                    waiting.push((seq, j));
                }
            }
            // Longest-waiting first; the sender itself goes after everyone who waited.
            waiting.sort_unstable();
            for (_, j) in waiting {
                self.try_start(j);
            }
        }
        self.try_start(unit);
    }

    fn dir_done(&mut self, link: LinkId, d: u8) {
        let Some(l) = self.links.get_mut(link.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let dir = &mut l.dirs[d as usize];
        let Some((frame, arrival)) = dir.in_flight.take() else {
            return;
        };
        self.queue.push(
            arrival,
            Ev::Deliver {
                link,
                dir: d,
                frame,
            },
        );
        if !dir.hi.is_empty() || !dir.lo.is_empty() {
            dir.ready = true;
            let unit = dir.unit;
            self.radios[unit].ready.push_back((link, d));
            self.try_start(unit);
        }
    }

    fn deliver(&mut self, link: LinkId, d: u8, frame: Vec<u8>) {
        let Some(l) = self.link(link) else {
            self.drop_frame("link_closed", 1);
            return;
        };
        let to = l.ends[1 - d as usize];
        if self.slots[to].hung {
            self.drop_frame("node_hung", 1);
            return;
        }
        let local = self.local(to);
        let Some(node) = self.slots[to].node.as_mut() else {
            self.drop_frame("node_down", 1);
            return;
        };
        if frame.first() == Some(&meshfleet_wire::BINARY_FRAME_MARK) {
            // A binary frame (meshfleet OTA chunks) has no NUL: the node's own framer reads
            // its length header. Frames always arrive whole, so the framer starts empty.
            node.handle_bytes(local, link, &frame);
        } else {
            // JSON frames carry their NUL on the air; the node takes them pre-framed without it.
            let body = frame.strip_suffix(&[0]).unwrap_or(&frame);
            node.handle_frame(local, link, body);
        }
        self.after_input(to);
    }

    // ----- timeline and traffic ---------------------------------------------------------

    fn timeline_event(&mut self, i: usize) {
        let e = self.timeline[i].clone();
        let idx = |n: u32| n as usize - 1;
        let topo = !matches!(
            e,
            SimEvent::SetLink { .. } | SimEvent::Action { .. } | SimEvent::SetChannel { .. }
        );
        match &e {
            SimEvent::Join { node, parent } => {
                self.join(idx(*node), parent.map(idx), true, parent.is_some());
            }
            SimEvent::Crash { node } => self.crash(idx(*node), "node_crash"),
            SimEvent::Reboot { node } => {
                let v = idx(*node);
                self.crash(v, "node_crash");
                self.boot(v);
                let parent = self.layout.parent[v];
                self.join(v, parent, false, false);
            }
            SimEvent::Hang { node } => {
                let v = idx(*node);
                if self.slots[v].node.is_some() {
                    self.slots[v].hung = true;
                    self.slots[v].wake_gen += 1;
                    self.slots[v].wake_at = None;
                    self.conv.dirty = true;
                }
            }
            SimEvent::LinkDown { a, b, hold } => {
                let (a, b) = (idx(*a), idx(*b));
                if let Some(h) = hold {
                    self.blocked_until.insert(pair(a, b), self.now + *h);
                }
                if let Some(link) = self.link_between(self.slots[a].id, self.slots[b].id) {
                    let sta = self.link(link).map(|l| l.ends[1]);
                    self.close_link(link, "link_down", [Some(Duration::ZERO); 2]);
                    if let (Some(h), Some(sta)) = (hold, sta) {
                        let parent = self.layout.parent[sta];
                        self.schedule_rejoin(sta, *h, parent);
                    }
                }
            }
            SimEvent::Move { node, parent } => {
                let v = idx(*node);
                if let Some(up) = self.slots[v].uplink {
                    self.close_link(up, "link_down", [Some(Duration::ZERO); 2]);
                }
                self.join(v, Some(idx(*parent)), false, true);
            }
            SimEvent::Partition { nodes } => {
                let side = self.slots.iter().map(|s| s.side).max().unwrap_or(0) + 1;
                for n in nodes {
                    self.slots[idx(*n)].side = side;
                }
                let cut: Vec<LinkId> = self
                    .links
                    .iter()
                    .flatten()
                    .filter(|l| self.slots[l.ends[0]].side != self.slots[l.ends[1]].side)
                    .map(|l| l.id)
                    .collect();
                for link in cut {
                    self.close_link(link, "partition", [Some(Duration::ZERO); 2]);
                }
            }
            SimEvent::Heal => {
                for s in &mut self.slots {
                    s.side = 0;
                }
                for v in 0..self.slots.len() {
                    let s = &self.slots[v];
                    if s.node.is_some() && s.uplink.is_none() && !self.roots[v] {
                        let parent = self.layout.parent[v];
                        self.join(v, parent, false, false);
                    }
                }
            }
            SimEvent::SetLink { between, change } => match between {
                None => {
                    change.apply(&mut self.link_defaults);
                    for l in self.links.iter_mut().flatten() {
                        change.apply(&mut l.params);
                    }
                    for c in self.pair_changes.values_mut() {
                        // A global change overrides earlier per-link values of the same field.
                        if change.loss.is_some() {
                            c.loss = None;
                        }
                        if change.goodput_bytes_per_s.is_some() {
                            c.goodput_bytes_per_s = None;
                        }
                        if change.latency.is_some() {
                            c.latency = None;
                        }
                    }
                }
                Some((a, b)) => {
                    let key = pair(idx(*a), idx(*b));
                    let entry = self.pair_changes.entry(key).or_default();
                    entry.loss = change.loss.or(entry.loss);
                    entry.goodput_bytes_per_s =
                        change.goodput_bytes_per_s.or(entry.goodput_bytes_per_s);
                    entry.latency = change.latency.or(entry.latency);
                    if let Some(link) =
                        self.link_between(self.slots[key.0].id, self.slots[key.1].id)
                    {
                        if let Some(l) = self.links[link.0 as usize].as_mut() {
                            change.apply(&mut l.params);
                        }
                    }
                }
            },
            SimEvent::SetChannel { channel } => self.switch_channel(channel.clone()),
            SimEvent::Action { node, action } => {
                let v = idx(*node);
                if !self.slots[v].hung {
                    let local = self.local(v);
                    if let Some(n) = self.slots[v].node.as_mut() {
                        action(n, local);
                        self.after_input(v);
                    }
                }
            }
        }
        if topo {
            let who = e.nodes();
            let cause = if who.is_empty() || who.len() > 4 {
                e.label().to_owned()
            } else {
                let names: Vec<String> = who.iter().map(u32::to_string).collect();
                format!("{} {}", e.label(), names.join(" "))
            };
            self.conv.pending.push((cause, self.now));
            self.conv.converged = false;
        }
    }

    /// Running, non-hung, in-mesh nodes, for random senders.
    fn pick_node(&mut self, except: Option<usize>) -> Option<usize> {
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|&v| {
                let s = &self.slots[v];
                s.node.is_some() && !s.hung && s.in_mesh && Some(v) != except
            })
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(live[self.traffic_rng.below(live.len() as u64) as usize])
    }

    fn traffic_event(&mut self, i: usize) {
        let t = self.traffic[i].clone();
        let interval = Duration::from_micros((1e6 / t.rate_per_s).round().max(1.0) as u64);
        let next = self.now + interval;
        if next < self.end && t.stop.map_or(true, |s| next < Instant::ZERO + s) {
            self.queue.push(next, Ev::Traffic(i));
        }
        self.refresh_components();
        let from = match t.from {
            Some(n) => Some(n as usize - 1),
            None => self.pick_node(None),
        };
        let Some(from) = from.filter(|&v| self.slots[v].node.is_some() && !self.slots[v].hung)
        else {
            self.app_not_sent += 1;
            return;
        };
        let id = self.msgs.len();
        let mut text = tag(id, self.now);
        while text.len() < t.payload_bytes {
            text.push('.');
        }
        let local = self.local(from);
        let comp = self.conv.comp[from];
        let (ok, broadcast, expected) = match t.kind {
            TrafficKind::Broadcast => {
                let size = self.conv.comp_size.get(comp as usize).copied().unwrap_or(1);
                let Some(node) = self.slots[from].node.as_mut() else {
                    return;
                };
                node.send_broadcast(local, &text);
                (true, true, size - 1)
            }
            TrafficKind::Single { to } => {
                let to = match to {
                    Some(n) => Some(n as usize - 1),
                    None => self.pick_node(Some(from)),
                };
                let Some(to) = to else {
                    self.app_not_sent += 1;
                    return;
                };
                let dest = self.slots[to].id;
                let reachable = u32::from(comp != u32::MAX && self.conv.comp[to] == comp);
                let Some(node) = self.slots[from].node.as_mut() else {
                    return;
                };
                (
                    node.send_single(local, dest, &text).is_ok(),
                    false,
                    reachable,
                )
            }
        };
        if !ok {
            self.app_not_sent += 1;
            return;
        }
        self.app_sent += 1;
        self.window.app_sent += 1;
        self.msgs.push(AppMsg {
            broadcast,
            expected,
            received: 0,
            duplicates: 0,
            seen: vec![0; self.slots.len().div_ceil(64)],
        });
        self.after_input(from);
    }

    fn app_received(&mut self, v: usize, msg: &str, _delivery: Delivery) {
        let Some((id, sent)) = parse_tag(msg) else {
            return;
        };
        let Some(m) = self.msgs.get_mut(id) else {
            return;
        };
        let (w, b) = (v / 64, 1u64 << (v % 64));
        if m.seen[w] & b != 0 {
            m.duplicates += 1;
            return;
        }
        m.seen[w] |= b;
        m.received += 1;
        self.slots[v].app_received += 1;
        self.window.app_delivered += 1;
        self.latencies
            .push(self.now.saturating_since(sent).as_micros());
    }

    // ----- convergence and sampling -----------------------------------------------------

    fn finish_event(&mut self) {
        if self.conv.dirty {
            self.refresh_components();
        }
        self.conv.observe(self.now);
    }

    /// Recomputes the ground-truth components (BFS over open links between running nodes)
    /// and every node's verdict.
    fn refresh_components(&mut self) {
        if !self.conv.dirty {
            return;
        }
        self.conv.dirty = false;
        let n = self.slots.len();
        let running = |s: &Slot| s.node.is_some() && !s.hung;
        self.conv.comp.iter_mut().for_each(|c| *c = u32::MAX);
        self.conv.comp_hash.clear();
        self.conv.comp_size.clear();
        let mut stack = Vec::new();
        let mut alive = 0;
        for start in 0..n {
            if self.conv.comp[start] != u32::MAX || !running(&self.slots[start]) {
                continue;
            }
            let c = self.conv.comp_size.len() as u32;
            let (mut hash, mut size) = (0u64, 0u32);
            self.conv.comp[start] = c;
            stack.push(start);
            while let Some(v) = stack.pop() {
                size += 1;
                hash = hash.wrapping_add(crate::metrics::mix(u64::from(self.slots[v].id.0)));
                for &link in &self.slots[v].links {
                    let Some(l) = self.links[link.0 as usize].as_ref() else {
                        continue;
                    };
                    let u = if l.ends[0] == v { l.ends[1] } else { l.ends[0] };
                    if self.conv.comp[u] == u32::MAX && running(&self.slots[u]) {
                        self.conv.comp[u] = c;
                        stack.push(u);
                    }
                }
            }
            alive += size as usize;
            self.conv.comp_hash.push(hash);
            self.conv.comp_size.push(size);
        }
        self.conv.num_alive = alive;
        self.conv.num_ok = 0;
        for v in 0..n {
            self.conv.ok[v] = false;
            let id = self.slots[v].id;
            self.conv.refresh(v, id);
        }
    }

    fn sample(&mut self) {
        self.refresh_components();
        let w = std::mem::take(&mut self.window);
        self.series.push(Sample {
            t_s: secs(self.now),
            app_sent: w.app_sent,
            app_delivered: w.app_delivered,
            frames_on_air: w.frames,
            bytes_on_air: w.bytes,
            drops: w.drops,
            nodes_alive: self.conv.num_alive as u32,
            nodes_converged: self.conv.num_ok as u32,
            components: self.conv.components() as u32,
            queued_bytes: self.slots.iter().map(|s| s.queued_bytes).sum(),
            time_spread_us: self.mesh_time_spread(),
        });
    }

    // ----- report -----------------------------------------------------------------------

    /// The report so far (call after [`Simulation::run`] or any `run_*`).
    pub fn report(&self) -> SimReport {
        let mut lat = self.latencies.clone();
        lat.sort_unstable();
        let mut app = AppReport {
            sent: self.app_sent,
            not_sent: self.app_not_sent,
            latency: LatencySummary::from_sorted(&lat),
            ..AppReport::default()
        };
        for m in &self.msgs {
            app.expected_deliveries += u64::from(m.expected);
            app.delivered += u64::from(m.received);
            app.duplicates += u64::from(m.duplicates);
            if m.broadcast {
                app.broadcasts += 1;
                if m.received >= m.expected && m.duplicates == 0 {
                    app.broadcasts_complete += 1;
                }
            }
        }
        app.delivery_ratio = if app.expected_deliveries > 0 {
            app.delivered as f64 / app.expected_deliveries as f64
        } else {
            1.0
        };
        let mut mesh = MeshTotals::default();
        let per_node = self
            .slots
            .iter()
            .map(|s| {
                let mut t = s.past.clone();
                if let Some(n) = &s.node {
                    let st = n.stats();
                    t.closed_peer += st.closed_peer;
                    t.closed_timeout += st.closed_timeout;
                    t.closed_invalid += st.closed_invalid;
                    t.layout_changes += st.layout_changes;
                    t.time_adjustments += st.time_adjustments;
                    t.forwarded += st.forwarded;
                }
                mesh.closed_peer += t.closed_peer;
                mesh.closed_timeout += t.closed_timeout;
                mesh.closed_invalid += t.closed_invalid;
                mesh.layout_changes += t.layout_changes;
                mesh.time_adjustments += t.time_adjustments;
                mesh.forwarded += t.forwarded;
                NodeReport {
                    node: s.number,
                    id: s.id.0,
                    up: s.node.is_some() && !s.hung,
                    boots: s.boots,
                    frames_sent: s.frames_sent,
                    bytes_sent: s.bytes_sent,
                    queue_peak_bytes: s.queue_peak_bytes,
                    queue_peak_frames: s.queue_peak_frames,
                    app_received: s.app_received,
                    known_nodes: if s.node.is_some() {
                        self.conv.list_len[s.number as usize - 1]
                    } else {
                        0
                    },
                }
            })
            .collect();
        let per_link = self
            .link_stats
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, l)| LinkReport {
                link: i as u64,
                ap: l.ends[0] as u32 + 1,
                station: l.ends[1] as u32 + 1,
                opened_s: secs(l.opened),
                closed_s: l.closed.map(secs),
                frames_down: l.frames[0],
                bytes_down: l.bytes[0],
                frames_up: l.frames[1],
                bytes_up: l.bytes[1],
                retransmissions: l.retransmissions,
            })
            .collect();
        let mut after_events = self.conv.entries.clone();
        for (cause, at) in &self.conv.pending {
            after_events.push(crate::metrics::ConvergenceEntry {
                cause: cause.clone(),
                at_s: secs(*at),
                converged_after_s: None,
            });
        }
        let end_s = secs(self.now);
        let last_minute: Vec<u64> = self
            .series
            .iter()
            .filter(|s| s.t_s >= end_s - 60.0)
            .filter_map(|s| s.time_spread_us)
            .collect();
        let mut below_from = None;
        for s in &self.series {
            match s.time_spread_us {
                Some(x) if x < 1000 => {
                    below_from.get_or_insert(s.t_s);
                }
                _ => below_from = None,
            }
        }
        SimReport {
            scenario: self.name.clone(),
            seed: self.seed,
            topology: self.topology_label.to_owned(),
            channel: self.channel.label().to_owned(),
            nodes: self.slots.len() as u32,
            virtual_time_s: end_s,
            events_processed: self.events_processed,
            frames_on_air: self.frames_on_air,
            bytes_on_air: self.bytes_on_air,
            app,
            drops: self.drops.clone(),
            link_closes: self.link_closes.clone(),
            convergence: ConvergenceReport {
                formation_done_s: self.conv.formation_done_at.map(secs),
                formation_converged_s: self.conv.formation_converged_at.map(secs),
                after_events,
                converged_at_end: self.conv.all_ok(),
                components_at_end: self.conv.components() as u32,
            },
            time_sync: TimeSyncReport {
                final_spread_us: self.mesh_time_spread(),
                max_spread_last_minute_us: last_minute.iter().copied().max(),
                below_1ms_from_s: below_from,
            },
            mesh,
            per_node,
            per_link,
            series: self.series.clone(),
            latencies_us: lat,
            ota: None,
            rollout: None,
            workloads: BTreeMap::new(),
        }
    }

    /// The link parameters new links get (the scenario's, with every `SetLink` for all
    /// links applied so far).
    pub fn link_defaults(&self) -> &LinkParams {
        &self.link_defaults
    }

    /// The clock drift bound of the run, ppm.
    pub fn drift_ppm(&self) -> f64 {
        self.drift_ppm
    }

    /// Events waiting in the queue (stale wakeups included).
    pub fn pending_events(&self) -> usize {
        self.queue.len()
    }

    /// The channel model in force (the scenario's, or the last [`SimEvent::SetChannel`]).
    pub fn channel(&self) -> &ChannelModel {
        &self.channel
    }

    /// Switches the channel model now: transmissions that start from now on follow
    /// `channel`; those on the air finish their airtime but stop counting for carrier sense,
    /// and frames waiting move to their transmitter under the new model. Links, queues,
    /// loss and everything else stay. Same as scheduling [`SimEvent::SetChannel`] now.
    ///
    /// Used to form a mesh under one model and run a measurement under another (the
    /// benchmarks form big geometric placements under `Independent`, whose formation
    /// traffic does not silence whole neighbourhoods, and measure under `Geometric`).
    ///
    /// # Errors
    ///
    /// The geometric model on a topology without positions, or with an interference range
    /// that is not a positive distance; nothing changes then.
    pub fn set_channel(&mut self, channel: ChannelModel) -> Result<(), InvalidScenario> {
        crate::scenario::check_channel(
            &channel,
            self.layout.positions.is_some(),
            self.topology_label,
        )
        .map_err(|(field, message)| InvalidScenario {
            field: format!("channel.{field}"),
            message,
        })?;
        self.switch_channel(channel);
        Ok(())
    }

    /// Positions of the nodes, if the topology has them (metres, by number order).
    pub fn positions(&self) -> Option<&[(f64, f64)]> {
        self.layout.positions.as_deref()
    }

    /// Distance between two nodes, if the topology has positions.
    pub fn distance(&self, a: NodeId, b: NodeId) -> Option<f64> {
        let p = self.layout.positions.as_ref()?;
        Some(dist(p[self.index(a)?], p[self.index(b)?]))
    }
}
