//! The simulation engine: virtual time, the event loop, nodes, links and transmitters.

use std::collections::BTreeMap;

use meshfleet_channel::{
    dist, AirCounters, Channel, ChannelModel, DropReason, LinkChange, LinkParams, Output, Sent,
    Timer,
};
use meshfleet_mesh::{
    Config, Duration, Event, Instant, LinkId, LinkRole, Node, NodeId, PluginEvent, Priority, Rng,
    SharedFrame, SharedTransmit,
};

use crate::clock::LocalClock;
use crate::metrics::{
    secs, AppReport, Convergence, ConvergenceReport, LinkReport, MeshTotals, NodeReport, Sample,
    SimReport, TimeSyncReport, Window,
};
use crate::scenario::{InvalidScenario, NodeFactory, NodeInit, Scenario, SimEvent};
use crate::store::PersistentStore;
use crate::topology::Layout;

mod channel_io;
mod nodes;
mod report;
mod timeline;

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
    /// The queue class the node gave it.
    pub priority: Priority,
    /// TCP segments retransmitted for it.
    pub retransmissions: u32,
}

type ProgressFn = Box<dyn FnMut(f64)>;
type TraceFn = Box<dyn FnMut(&FrameTrace<'_>)>;
type EventHookFn = Box<dyn FnMut(Instant, NodeId, &Event)>;
type PluginSinkFn = Box<dyn FnMut(Instant, NodeId, &'static str, Box<dyn PluginEvent>)>;
type TimerFn = Box<dyn FnMut(&mut Simulation, u64)>;
type SampleHookFn = Box<dyn FnMut(&mut Sample)>;

/// A timer hook installed with [`Simulation::add_timer_hook`]: what
/// [`Simulation::set_timer`] wakes up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerHook(u32);

/// Internal events.
enum Ev {
    /// A node's timer (stale unless `gen` matches).
    Wake { node: usize, gen: u64 },
    /// A wakeup the channel asked for (a transmitter free, a frame sent or arriving, a
    /// TCP reset).
    Channel(Timer),
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
    /// A workload's timer: its hook runs with the token.
    Timer { hook: u32, token: u64 },
    /// A time-series sample.
    Sample,
}

/// A frame in the channel's queues, as the node made it: a node sync's trees stay shared
/// with the sender's state ([`SharedFrame`]) until the receiver reads the bytes, so the
/// frames queued and in flight of a big mesh cost pointers, not copies.
pub(super) struct Frame(SharedFrame);

impl meshfleet_channel::Payload for Frame {
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl Frame {
    /// The frame's bytes: in place when they are in one piece, else laid out in `scratch`.
    fn bytes<'a>(&'a self, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        match self.0.as_contiguous() {
            Some(b) => b,
            None => {
                scratch.clear();
                self.0.write_to(scratch);
                scratch
            }
        }
    }
}

/// Why a link closed, as the simulator counts the frames it took with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CloseCause {
    /// TCP gave up after its retransmissions ([`Output::Reset`]).
    TcpReset,
    /// One end closed the socket (the node's `LinkClosed`).
    NodeClosed,
    /// A timeline `LinkDown` or `Move`.
    LinkDown,
    /// A timeline `Partition` cut it.
    Partition,
    /// One end crashed or was powered off.
    NodeCrash,
}

/// Why frames are lost; the report's `drops` count them by [`Loss::label`] (next to the
/// nodes' own [`meshfleet_mesh::DropReason`] labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    /// Refused or lost by the channel (`queue_full`, `link_closed`).
    Channel(DropReason),
    /// Queued or being sent when its link closed.
    Closed(CloseCause),
    /// Arrived at a hung node.
    NodeHung,
    /// Arrived at a node that is powered off.
    NodeDown,
}

impl Loss {
    fn label(self) -> &'static str {
        match self {
            Self::Channel(r) => r.label(),
            Self::Closed(CloseCause::TcpReset) => "tcp_reset",
            Self::Closed(CloseCause::NodeClosed) => "link_closed",
            Self::Closed(CloseCause::LinkDown) => "link_down",
            Self::Closed(CloseCause::Partition) => "partition",
            Self::Closed(CloseCause::NodeCrash) => "node_crash",
            Self::NodeHung => "node_hung",
            Self::NodeDown => "node_down",
        }
    }
}

struct LinkStat {
    ends: [usize; 2],
    opened: Instant,
    closed: Option<Instant>,
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
    /// Counters of crashed boots, so totals survive reboots.
    past: MeshTotals,
}

/// A running simulation. See the crate docs for the model and the run loop.
pub struct Simulation {
    name: String,
    seed: u64,
    topology_label: &'static str,
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
    /// The links' queues, the transmitters and the air (`meshfleet-channel`).
    channel: Channel<Frame>,
    /// By link id, closed links included.
    link_stats: Vec<LinkStat>,
    factory: NodeFactory,
    config_template: Box<dyn Fn(NodeId) -> Config>,
    rejoin_scan: Duration,
    rejoin_rescan: Duration,
    timeline: Vec<SimEvent>,
    sample_interval: Duration,
    drift_ppm: f64,
    // Metrics.
    events_processed: u64,
    /// The channel's totals at the last sample (the window counts from there).
    air_mark: AirCounters,
    window: Window,
    drops: BTreeMap<String, u64>,
    link_closes: BTreeMap<String, u64>,
    conv: Convergence,
    series: Vec<Sample>,
    // Hooks.
    progress: Option<ProgressFn>,
    next_progress: Instant,
    traces: Vec<TraceFn>,
    event_hooks: Vec<EventHookFn>,
    plugin_sink: Option<PluginSinkFn>,
    /// Taken out while one runs (it gets the simulation).
    timer_hooks: Vec<Option<TimerFn>>,
    sample_hooks: Vec<SampleHookFn>,
    // Scratch buffers reused across inputs.
    scratch_tx: Vec<SharedTransmit>,
    /// A frame in pieces is laid out here for its receiver (and for frame traces).
    scratch_frame: Vec<u8>,
    /// How node syncs reach their receivers ([`crate::TreeText`]).
    tree_text: crate::TreeText,
    scratch_ev: Vec<Event>,
}

const LINK_SALT: u64 = 0x4C49_4E4B;
const NODE_SALT: u64 = 0x4E4F_4445;

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
        Self::try_new_with(scenario, |_| {})
    }

    /// [`Simulation::try_new`], running `before_start` once everything of the scenario is
    /// scheduled and before the first sample is ([`crate::workload::Run`] installs the
    /// workloads there).
    pub(crate) fn try_new_with(
        scenario: Scenario,
        before_start: impl FnOnce(&mut Self),
    ) -> Result<Self, InvalidScenario> {
        scenario.validate()?;
        let mut master = Rng::new(scenario.seed);
        let mut topo_rng = master.derive(1);
        let mut clock_rng = master.derive(2);
        let mut formation_rng = master.derive(3);
        // The fourth child stream (`derive(4)`) belongs to the traffic workload, which
        // derives it from the seed itself.
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
        let channel = Channel::new(scenario.channel.clone(), n, layout.positions.as_deref());
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
            if let Some(policy) = mesh.node_sync {
                c.node_sync = policy;
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
            channel,
            link_stats: vec![LinkStat {
                ends: [0, 0],
                opened: Instant::ZERO,
                closed: None,
            }],
            factory: scenario.factory.clone(),
            config_template,
            rejoin_scan: scenario.rejoin.scan_delay,
            rejoin_rescan: scenario.rejoin.rescan_interval,
            timeline: Vec::new(),
            sample_interval: scenario.sample_interval,
            drift_ppm: scenario.clock.drift_ppm,
            events_processed: 0,
            air_mark: AirCounters::default(),
            window: Window::default(),
            drops: BTreeMap::new(),
            link_closes: BTreeMap::new(),
            conv: Convergence::new(n),
            series: Vec::new(),
            progress: None,
            next_progress: Instant::ZERO,
            traces: Vec::new(),
            event_hooks: Vec::new(),
            plugin_sink: None,
            timer_hooks: Vec::new(),
            sample_hooks: Vec::new(),
            scratch_tx: Vec::new(),
            scratch_ev: Vec::new(),
            scratch_frame: Vec::new(),
            tree_text: scenario.mesh.tree_text,
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
        // Workloads install their hooks and first timers before the first sample is
        // scheduled: a timer at the first sample's time runs before it.
        before_start(&mut sim);
        sim.queue
            .push(Instant::ZERO + sim.sample_interval, Ev::Sample);
        Ok(sim)
    }

    // ----- public API -------------------------------------------------------------------

    /// Calls `f` with the fraction of virtual time done (0..=1), about 200 times a run.
    pub fn set_progress(&mut self, f: impl FnMut(f64) + 'static) {
        self.progress = Some(Box::new(f));
    }

    /// Calls `f` for every frame put on the air. Traces add up (the OTA workload counts its
    /// frames, the readable report splits the air by traffic class) and run in the order
    /// they were set.
    pub fn set_frame_trace(&mut self, f: impl FnMut(&FrameTrace<'_>) + 'static) {
        self.traces.push(Box::new(f));
        self.channel.set_sent_outputs(true);
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

    /// Installs a timer hook: `f(sim, token)` runs at each time [`Simulation::set_timer`]
    /// sets for it, as an event among the others of that instant (in scheduling order).
    /// For workloads that act at exact times (the traffic workload's sends).
    pub fn add_timer_hook(&mut self, f: impl FnMut(&mut Self, u64) + 'static) -> TimerHook {
        self.timer_hooks.push(Some(Box::new(f)));
        TimerHook(self.timer_hooks.len() as u32 - 1)
    }

    /// Wakes `hook` with `token` at `at` (now, if `at` has passed).
    pub fn set_timer(&mut self, hook: TimerHook, at: Instant, token: u64) {
        self.queue.push(
            at.max(self.now),
            Ev::Timer {
                hook: hook.0,
                token,
            },
        );
    }

    /// Calls `f` on every sample of the time series before it is stored: a workload fills
    /// in its columns (the traffic workload's `app_sent`, `app_delivered`).
    pub fn set_sample_hook(&mut self, f: impl FnMut(&mut Sample) + 'static) {
        self.sample_hooks.push(Box::new(f));
    }

    /// Running nodes that are in a mesh (a root, or a station with an access point), in
    /// number order: who an application may pick to send.
    pub fn mesh_members(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|s| s.node.is_some() && !s.hung && s.in_mesh)
            .map(|s| s.id)
            .collect()
    }

    /// The running node's connected component in the ground truth (open links between
    /// running nodes): (its index, its size). Two nodes can reach each other exactly when
    /// they are in the same component.
    pub fn component_of(&mut self, id: NodeId) -> Option<(u32, u32)> {
        self.refresh_components();
        let c = *self.conv.comp.get(self.index(id)?)?;
        let size = *self.conv.comp_size.get(c as usize)?;
        Some((c, size))
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
            .find(|l| self.link(*l).is_some_and(|s| s.ends().contains(&b)))
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
        self.stop()
    }

    /// Ends the run now (a workload reached its verdict before the scenario's end): the
    /// progress callback hears 100 %, and the report covers the run up to now.
    pub fn stop(&mut self) -> SimReport {
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

    fn lose(&mut self, loss: Loss, n: u64) {
        self.drop_frame(loss.label(), n);
    }

    fn drop_frame(&mut self, reason: &'static str, n: u64) {
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

    fn link(&self, id: LinkId) -> Option<&meshfleet_channel::Link<Frame>> {
        self.channel.link(id)
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
            Ev::Channel(timer) => {
                let mut timers = channel_io::Timers(&mut self.queue);
                self.channel.handle_timer(self.now, timer, &mut timers);
                self.drain_channel();
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
            Ev::Timer { hook, token } => {
                let slot = self.timer_hooks.get_mut(hook as usize);
                if let Some(mut f) = slot.and_then(Option::take) {
                    f(self, token);
                    self.timer_hooks[hook as usize] = Some(f);
                }
            }
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
            while let Some(t) = node.poll_transmit_shared() {
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
                    .map(|l| l.params().latency)
                    .unwrap_or_default();
                let ends = self.link(link).map(|l| l.ends());
                if let Some(ends) = ends {
                    let notify = ends.map(|e| (e != v).then_some(lat));
                    self.close_link(link, CloseCause::NodeClosed, notify);
                }
            }
            Event::NodeListChanged { nodes } => {
                let id = self.slots[v].id;
                self.conv.set_list(v, id, &nodes);
            }
            Event::FrameDropped { reason, .. } => self.drop_frame(reason.label(), 1),
            Event::Plugin { plugin, event } => {
                if let Some(sink) = &mut self.plugin_sink {
                    sink(self.now, self.slots[v].id, plugin, event);
                }
            }
            _ => {}
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
        self.channel.model()
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
