//! The paced driver: the simulator's engine on a thread of its own, its virtual time kept at
//! `speed ×` the wall-clock time since the start, in small steps; the gateway's node reached
//! through commands ([`SimMesh`], the gateway's [`MeshPort`]); the fault script played at its
//! virtual times.
//!
//! The simulation is single-threaded by design (its hooks are plain closures), so it is built
//! on the driver thread and never leaves it; everything else talks to it over a channel.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration as WallDuration;

use meshfleet_agent::telemetry::Metric;
use meshfleet_agent::ReceiverEvent;
use meshfleet_gateway::mesh::{MeshClock, MeshPort, NodeJob};
use meshfleet_mesh::{Delivery, Duration, Event, Instant, NodeId, NodeTree};
use meshfleet_ota::OtaEvent;
use meshfleet_runtime::{MessageKind, PluginData, RuntimeEvent, SendError, Stopped};
use meshfleet_sim::{SimEvent, Simulation};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use crate::faults::{Fault, FaultKind};
use crate::fleet::{baseline, kind_of, record, Fleet, Kind};

/// Largest virtual step between two looks at the command channel and the fault script.
const STEP: Duration = Duration::from_millis(100);
/// Most wall time spent simulating before commands are served again.
const BUDGET: WallDuration = WallDuration::from_millis(40);
/// Longest virtual time the driver runs at start waiting for the gateway's node to boot
/// (it boots at 0).
const BOOT_WAIT: Instant = Instant::from_micros(1_000_000);
/// Wall time the driver waits for a command when the simulation has caught up.
const IDLE: WallDuration = WallDuration::from_millis(10);
/// How often a leaking node's heap is re-recorded (virtual).
const LEAK_TICK: Duration = Duration::from_secs(10);
/// How often every node's heap wanders a little (virtual).
const JITTER_TICK: Duration = Duration::from_secs(60);
/// A meshfleet node that committed an image restarts this long after (virtual).
const RESTART_DELAY: Duration = Duration::from_secs(2);
/// Capacity of the gateway node's event channel.
const EVENT_CAPACITY: usize = 16_384;

/// What the demo tells its user (`meshfleet demo --json` prints these).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DemoEvent {
    /// A scripted fault started.
    Fault {
        /// Virtual seconds since the start.
        t_s: f64,
        /// Node number.
        node: u32,
        /// Node id.
        node_id: u32,
        /// `leak`, `reboot_loop`, `partition`, `death`.
        kind: &'static str,
        /// Nodes cut off (a partition), the node itself otherwise.
        nodes: usize,
    },
    /// A scripted fault names a node the demo does not have.
    FaultSkipped {
        /// Node number.
        node: u32,
        /// The fault.
        kind: &'static str,
    },
    /// A partition healed.
    Healed {
        /// Virtual seconds since the start.
        t_s: f64,
    },
    /// A node committed a new image and restarts into it.
    Updated {
        /// Virtual seconds since the start.
        t_s: f64,
        /// Node id.
        node_id: u32,
    },
}

/// Virtual time as the driver publishes it.
pub(crate) struct SimClock {
    now_us: AtomicU64,
    speed: f64,
}

impl MeshClock for SimClock {
    fn now(&self) -> Instant {
        Instant::from_micros(self.now_us.load(Ordering::Acquire))
    }

    fn speed(&self) -> f64 {
        self.speed
    }
}

/// Counters of the driver.
#[derive(Debug, Default)]
pub struct DriverStats {
    /// Virtual time, µs.
    pub virtual_us: AtomicU64,
    /// How far virtual time is behind `speed × wall`, µs (0 when it keeps up).
    pub lag_us: AtomicU64,
    /// Nodes booted and not hung.
    pub running: AtomicU64,
}

type Reply<T> = oneshot::Sender<T>;

enum Command {
    Job(NodeJob, Reply<Result<(), Stopped>>),
    Topology(Reply<Result<NodeTree, Stopped>>),
    Nodes(Reply<Result<Vec<NodeId>, Stopped>>),
    Send(NodeId, String, Reply<Result<(), SendError>>),
    Probe(NodeId, Reply<Result<(), SendError>>),
    Stop,
}

/// The gateway's [`MeshPort`] on the simulated gateway node.
#[derive(Clone)]
pub struct SimMesh {
    id: NodeId,
    events: broadcast::Sender<RuntimeEvent>,
    commands: mpsc::Sender<Command>,
    clock: Arc<SimClock>,
    running: Arc<AtomicBool>,
}

impl std::fmt::Debug for SimMesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMesh")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl SimMesh {
    fn ask<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
        stopped: T,
    ) -> impl Future<Output = T> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.commands.send(make(tx)).is_ok();
        async move {
            if !sent {
                return stopped;
            }
            rx.await.unwrap_or(stopped)
        }
    }
}

impl MeshPort for SimMesh {
    fn node_id(&self) -> NodeId {
        self.id
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    fn topology(&self) -> Fut<'_, Result<NodeTree, Stopped>> {
        Box::pin(self.ask(Command::Topology, Err(Stopped)))
    }

    fn nodes(&self) -> Fut<'_, Result<Vec<NodeId>, Stopped>> {
        Box::pin(self.ask(Command::Nodes, Err(Stopped)))
    }

    fn send_single(&self, dest: NodeId, text: String) -> Fut<'_, Result<(), SendError>> {
        Box::pin(self.ask(
            move |r| Command::Send(dest, text, r),
            Err(SendError::Stopped(Stopped)),
        ))
    }

    fn probe_delay(&self, dest: NodeId) -> Fut<'_, Result<(), SendError>> {
        Box::pin(self.ask(
            move |r| Command::Probe(dest, r),
            Err(SendError::Stopped(Stopped)),
        ))
    }

    fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    fn shutdown(&self) -> Fut<'_, ()> {
        let _ = self.commands.send(Command::Stop);
        Box::pin(async {})
    }

    fn run_on_node(&self, job: NodeJob) -> Fut<'_, Result<(), Stopped>> {
        Box::pin(self.ask(move |r| Command::Job(job, r), Err(Stopped)))
    }

    fn clock(&self) -> Option<Arc<dyn MeshClock>> {
        Some(self.clock.clone())
    }
}

/// Something the driver does at a virtual time.
enum Action {
    Fault(Fault),
    LeakTick,
    JitterTick,
    /// A scheduled heal ran: tell the user.
    Healed,
}

/// What the node hooks noticed, for the driver to act on after the step.
enum Noticed {
    /// A meshfleet node committed an image.
    Committed(NodeId),
    /// A stock node fetched an image.
    StockUpdated(NodeId, String),
}

/// What the driver thread needs to build and run the simulation.
pub(crate) struct DriverSetup {
    pub(crate) scenario: meshfleet_sim::Scenario,
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) faults: Vec<Fault>,
    pub(crate) speed: f64,
    pub(crate) stats: Arc<DriverStats>,
    pub(crate) demo_events: broadcast::Sender<DemoEvent>,
}

/// Starts the driver thread; returns the gateway's port and the thread.
pub(crate) fn start(setup: DriverSetup) -> std::io::Result<(SimMesh, std::thread::JoinHandle<()>)> {
    let (commands, rx) = mpsc::channel();
    let events = broadcast::channel(EVENT_CAPACITY).0;
    let clock = Arc::new(SimClock {
        now_us: AtomicU64::new(0),
        speed: setup.speed.max(1.0),
    });
    let running = Arc::new(AtomicBool::new(true));
    let mesh = SimMesh {
        id: setup.fleet.gateway,
        events: events.clone(),
        commands,
        clock: clock.clone(),
        running: running.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("meshfleet-demo-sim".into())
        .spawn(move || {
            let mut d = Driver::new(setup, events, clock);
            d.run(&rx);
            running.store(false, Ordering::Release);
        })?;
    Ok((mesh, thread))
}

struct Driver {
    sim: Simulation,
    fleet: Arc<Fleet>,
    gateway: NodeId,
    speed: f64,
    actions: BTreeMap<(Instant, u64), Action>,
    seq: u64,
    /// Leaking nodes: since when, bytes per minute.
    leaks: BTreeMap<u32, (Instant, u32)>,
    noticed: std::rc::Rc<std::cell::RefCell<Vec<Noticed>>>,
    clock: Arc<SimClock>,
    stats: Arc<DriverStats>,
    demo_events: broadcast::Sender<DemoEvent>,
    jitter: meshfleet_mesh::Rng,
}

fn gateway_event(e: &Event) -> Option<RuntimeEvent> {
    Some(match e {
        Event::NewConnection { link, peer } => RuntimeEvent::NewConnection {
            node_id: *peer,
            link: *link,
        },
        Event::LinkClosed {
            link,
            peer: Some(peer),
            reason,
        } => RuntimeEvent::DroppedConnection {
            node_id: *peer,
            link: *link,
            reason: meshfleet_runtime::LinkEnd::from(reason),
            detail: reason.to_string(),
        },
        Event::NodeListChanged { nodes } => RuntimeEvent::Nodes {
            nodes: nodes.clone(),
        },
        Event::Received {
            from,
            msg,
            delivery,
        } => RuntimeEvent::Received {
            from: *from,
            msg: msg.clone(),
            kind: match delivery {
                Delivery::Single => MessageKind::Single,
                Delivery::Broadcast => MessageKind::Broadcast,
            },
        },
        Event::TimeAdjusted { offset, mesh_time } => RuntimeEvent::TimeAdjusted {
            offset: *offset,
            mesh_time: *mesh_time,
        },
        Event::DelayMeasured { node, delay_us } => RuntimeEvent::Delay {
            node_id: *node,
            us: *delay_us,
        },
        Event::FrameDropped { link, reason } => RuntimeEvent::FrameDropped {
            link: *link,
            reason: meshfleet_runtime::DropKind::from(reason),
            detail: reason.to_string(),
        },
        _ => return None,
    })
}

impl Driver {
    fn new(
        setup: DriverSetup,
        events: broadcast::Sender<RuntimeEvent>,
        clock: Arc<SimClock>,
    ) -> Self {
        let gateway = setup.fleet.gateway;
        let mut sim = Simulation::new(setup.scenario);
        let tx = events.clone();
        sim.set_event_hook(move |_, id, e| {
            if id == gateway {
                if let Some(ev) = gateway_event(e) {
                    let _ = tx.send(ev);
                }
            }
        });
        let noticed = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let seen = noticed.clone();
        let base = sim.id_of(0).0;
        sim.set_plugin_sink(move |_, id, plugin, event| {
            if id == gateway {
                let _ = events.send(RuntimeEvent::Plugin {
                    plugin: plugin.to_owned(),
                    data: PluginData::new(event),
                });
                return;
            }
            // The event, not its `Box` (which is `Any` too).
            let any = meshfleet_mesh::AnyEvent::any_event(&*event);
            match kind_of(id.0.wrapping_sub(base)) {
                Kind::Meshfleet => {
                    // The meshfleet engine's commit (`OtaEvent::Applied`: "the driver runs its
                    // post-update hook (reboot)"), or the receiver's own for a stock image.
                    let committed = matches!(any.downcast_ref(), Some(OtaEvent::Applied { .. }))
                        || matches!(any.downcast_ref(), Some(ReceiverEvent::Applied { .. }));
                    if committed {
                        seen.borrow_mut().push(Noticed::Committed(id));
                    }
                }
                Kind::Stock => {
                    if let Some(OtaEvent::Updated { md5, .. }) = any.downcast_ref() {
                        seen.borrow_mut()
                            .push(Noticed::StockUpdated(id, md5.clone()));
                    }
                }
                Kind::Gateway => {}
            }
        });
        let mut d = Self {
            sim,
            gateway,
            speed: setup.speed.max(1.0),
            actions: BTreeMap::new(),
            seq: 0,
            leaks: BTreeMap::new(),
            noticed,
            clock,
            stats: setup.stats,
            demo_events: setup.demo_events,
            jitter: meshfleet_mesh::Rng::new(setup.fleet.seed ^ 0x4A17),
            fleet: setup.fleet,
        };
        let nodes = d.sim.node_count();
        for f in setup.faults {
            if f.node > nodes {
                let _ = d.demo_events.send(DemoEvent::FaultSkipped {
                    node: f.node,
                    kind: f.kind.label(),
                });
                continue;
            }
            let at = Instant::from_micros((f.at_s * 1e6) as u64);
            d.push(at, Action::Fault(f));
        }
        d.push(Instant::ZERO + JITTER_TICK, Action::JitterTick);
        d
    }

    fn push(&mut self, at: Instant, a: Action) {
        self.seq += 1;
        self.actions.insert((at, self.seq), a);
    }

    fn t_s(&self) -> f64 {
        self.sim.now().as_micros() as f64 / 1e6
    }

    fn run(&mut self, rx: &mpsc::Receiver<Command>) {
        // Boot the gateway's node before serving any command: the gateway's first calls
        // (ingest's node list, an early GET /topology) are queued before this thread has run
        // the simulation at all, and were answered `Stopped` (a 503 `mesh_stopped` at start).
        while self.sim.node(self.gateway).is_none() && self.sim.now() < BOOT_WAIT {
            let next = self.sim.now() + Duration::from_millis(1);
            self.sim.run_until(next);
        }
        let wall0 = std::time::Instant::now();
        loop {
            loop {
                match rx.try_recv() {
                    Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                    Ok(c) => self.serve(c),
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            let target = Instant::from_micros(
                (wall0.elapsed().as_secs_f64() * self.speed * 1e6).min(u64::MAX as f64 / 2.0)
                    as u64,
            );
            let budget = std::time::Instant::now() + BUDGET;
            while self.sim.now() < target && std::time::Instant::now() < budget {
                let mut until = (self.sim.now() + STEP).min(target);
                if let Some(((at, _), _)) = self.actions.first_key_value() {
                    until = until.min((*at).max(self.sim.now()));
                }
                self.sim.run_until(until);
                self.act();
                let now_us = self.sim.now().as_micros();
                self.clock.now_us.store(now_us, Ordering::Release);
                // Per step, not per batch: a fault told at 40 s and a stop right after it
                // must not report 39.8 virtual seconds.
                self.stats.virtual_us.store(now_us, Ordering::Relaxed);
            }
            let now = self.sim.now();
            self.stats
                .lag_us
                .store(target.saturating_since(now).as_micros(), Ordering::Relaxed);
            if self.sim.now() >= target {
                match rx.recv_timeout(IDLE) {
                    Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    Ok(c) => self.serve(c),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
        }
    }

    fn serve(&mut self, c: Command) {
        let gw = self.gateway;
        match c {
            Command::Job(job, r) => {
                let done = self.sim.with_node(gw, job);
                let _ = r.send(done.ok_or(Stopped));
            }
            Command::Topology(r) => {
                let _ = r.send(self.sim.node(gw).map(|n| n.topology()).ok_or(Stopped));
            }
            Command::Nodes(r) => {
                let _ = r.send(self.sim.node(gw).map(|n| n.nodes()).ok_or(Stopped));
            }
            Command::Send(dest, text, r) => {
                let res = self
                    .sim
                    .with_node(gw, |n, now| n.send_single(now, dest, &text))
                    .unwrap_or(Err(meshfleet_mesh::SendError::NoRoute(dest)));
                let _ = r.send(res.map_err(|e| match e {
                    meshfleet_mesh::SendError::NoRoute(d) => SendError::NoRoute(d),
                    other => SendError::Refused(other),
                }));
            }
            Command::Probe(dest, r) => {
                let res = self
                    .sim
                    .with_node(gw, |n, now| n.start_delay_measurement(now, dest))
                    .unwrap_or(Err(meshfleet_mesh::SendError::NoRoute(dest)));
                let _ = r.send(res.map_err(|e| match e {
                    meshfleet_mesh::SendError::NoRoute(d) => SendError::NoRoute(d),
                    other => SendError::Refused(other),
                }));
            }
            Command::Stop => {}
        }
    }

    /// Runs the actions that are due and acts on what the hooks noticed.
    fn act(&mut self) {
        let now = self.sim.now();
        while let Some(entry) = self.actions.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let a = entry.remove();
            match a {
                Action::Fault(f) => self.fault(f),
                Action::LeakTick => self.leak_tick(),
                Action::JitterTick => self.jitter_tick(),
                Action::Healed => {
                    let _ = self.demo_events.send(DemoEvent::Healed { t_s: self.t_s() });
                }
            }
        }
        let noticed = std::mem::take(&mut *self.noticed.borrow_mut());
        for n in noticed {
            let (id, number) = match &n {
                Noticed::Committed(id) | Noticed::StockUpdated(id, _) => {
                    (*id, self.sim.number_of(*id))
                }
            };
            let Some(number) = number else { continue };
            if let Noticed::StockUpdated(_, md5) = &n {
                if let Some(store) = self.sim.store(id) {
                    self.fleet.stock_updated(store, md5);
                }
            }
            let _ = self.demo_events.send(DemoEvent::Updated {
                t_s: self.t_s(),
                node_id: id.0,
            });
            self.sim
                .schedule(now + RESTART_DELAY, SimEvent::Reboot { node: number });
        }
        self.stats
            .running
            .store(self.running_count(), Ordering::Relaxed);
    }

    fn running_count(&self) -> u64 {
        self.sim
            .node_ids()
            .into_iter()
            .filter(|id| self.sim.is_running(*id))
            .count() as u64
    }

    fn fault(&mut self, f: Fault) {
        let now = self.sim.now();
        let id = self.sim.id_of(f.node);
        let mut affected = 1;
        match f.kind {
            FaultKind::Leak { bytes_per_min } => {
                if self.leaks.is_empty() {
                    self.push(now + LEAK_TICK, Action::LeakTick);
                }
                self.leaks.insert(f.node, (now, bytes_per_min));
            }
            FaultKind::RebootLoop { every_s, count } => {
                for k in 0..count {
                    let at = now + Duration::from_micros((f64::from(k) * every_s * 1e6) as u64);
                    self.sim.schedule(at, SimEvent::Reboot { node: f.node });
                }
            }
            FaultKind::Partition { duration_s } => {
                let nodes = self.subtree(id);
                affected = nodes.len();
                self.sim.schedule(now, SimEvent::Partition { nodes });
                let heal = now + Duration::from_micros((duration_s * 1e6) as u64);
                self.sim.schedule(heal, SimEvent::Heal);
                self.push(heal, Action::Healed);
            }
            FaultKind::Death => {
                self.sim.schedule(now, SimEvent::Crash { node: f.node });
            }
        }
        let _ = self.demo_events.send(DemoEvent::Fault {
            t_s: self.t_s(),
            node: f.node,
            node_id: id.0,
            kind: f.kind.label(),
            nodes: affected,
        });
    }

    /// `id` and every node below it, as the gateway's node sees the tree (just `id` when the
    /// gateway does not reach it).
    fn subtree(&self, id: NodeId) -> Vec<u32> {
        let mut out = Vec::new();
        if let Some(tree) = self.sim.node(self.gateway).map(|n| n.topology()) {
            let mut stack = vec![&tree];
            while let Some(t) = stack.pop() {
                if t.node_id == id {
                    out.push(id);
                    t.collect_ids(&mut out);
                    break;
                }
                stack.extend(t.subs.iter());
            }
        }
        if out.is_empty() {
            out.push(id);
        }
        out.iter().filter_map(|i| self.sim.number_of(*i)).collect()
    }

    fn heap_now(&self, n: u32, now: Instant) -> i64 {
        let (heap, _) = baseline(self.fleet.seed, n);
        let lost = self.leaks.get(&n).map_or(0, |(since, rate)| {
            (now.saturating_since(*since).as_secs_f64() / 60.0 * f64::from(*rate)) as i64
        });
        (heap - lost).max(2_048)
    }

    fn leak_tick(&mut self) {
        let now = self.sim.now();
        let leaking: Vec<u32> = self.leaks.keys().copied().collect();
        for n in leaking {
            let v = self.heap_now(n, now);
            let id = self.sim.id_of(n);
            self.sim
                .with_node(id, |node, local| record(node, local, Metric::FreeHeap, v));
        }
        self.push(now + LEAK_TICK, Action::LeakTick);
    }

    fn jitter_tick(&mut self) {
        let now = self.sim.now();
        for n in 2..=self.sim.node_count() {
            if self.leaks.contains_key(&n) {
                continue;
            }
            let v = self.heap_now(n, now) + (self.jitter.next_u64() % 1_024) as i64 - 512;
            let id = self.sim.id_of(n);
            self.sim
                .with_node(id, |node, local| record(node, local, Metric::FreeHeap, v));
        }
        self.push(now + JITTER_TICK, Action::JitterTick);
    }
}
