//! A small deterministic fake fleet that carries out the controller's orders with virtual
//! time: transfers take a minute or two, nodes reboot into what they installed, send a health
//! report every 30 s, and behave as the build under test makes them.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use meshfleet_rollout::{
    Duration, EventKind, HealthSample, ImageVersion, Instant, NodeId, NodeInfo, NodeKind,
    NodeReport, NodeState, Order, Phase, Rollout, RolloutConfig, RolloutEvent,
};

pub const OLD: &str = "1.0.0";
pub const NEW: &str = "1.1.0";
pub const HEAP: u32 = 200_000;

pub fn v(s: &str) -> ImageVersion {
    ImageVersion::new(s).unwrap()
}

pub fn config(seed: u64) -> RolloutConfig {
    RolloutConfig {
        seed,
        ..RolloutConfig::new(v(NEW), v(OLD))
    }
}

/// How the new build behaves on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Boots, confirms, stays healthy.
    Good,
    /// Boots and confirms, then crashes 40 s after every boot.
    CrashLoop,
    /// Boots, never confirms; the bootloader falls back to the old image after 3 tries.
    NoConfirm,
    /// Loses `bytes_per_min` of heap while running.
    Leak { bytes_per_min: u32 },
    /// Installs and never comes back.
    Brick,
}

/// Per-node quirks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    /// Offline during `[from, to)` seconds.
    pub offline: Option<(u64, u64)>,
    /// Transfers take 40 min (past the download timeout).
    pub slow: bool,
    /// The first transfer fails.
    pub flaky: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Image {
    Old,
    New,
}

#[derive(Clone, Debug)]
struct FakeNode {
    kind: NodeKind,
    quirks: Quirks,
    online: bool,
    running: Image,
    boot_at: Instant,
    boots: u32,
    gen: u64,
    transfers: u32,
    noise: u64,
    trial_boots: u32,
    /// The generation of a re-offer of the old image in progress: a repeated order for it is
    /// the same campaign, not a new transfer (as the OTA layer treats a repeated offer).
    reoffer_gen: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Accept(u32, u64),
    Installed(u32, u64, Image),
    Fail(u32, u64),
    Boot(u32, Image),
    Crash(u32, u64),
    Sample(u32),
    Offline(u32),
    Online(u32),
}

/// The fake fleet.
#[derive(Clone, Debug)]
pub struct Fleet {
    build: Build,
    nodes: BTreeMap<u32, FakeNode>,
    queue: BTreeSet<(Instant, u64, Ev)>,
    seq: u64,
    pub infos: Vec<NodeInfo>,
    /// The driver's clock: the time of the latest step.
    pub now: Instant,
}

/// A tree: `branches` relays under the root, each with `leaves` leaves; node ids are
/// `branch * 100 + k` (k = 0 is the relay).
pub fn tree(branches: u32, leaves: u32) -> Vec<NodeInfo> {
    let mut out = Vec::new();
    for b in 1..=branches {
        let relay = NodeId(b * 100);
        out.push(NodeInfo {
            branch: relay,
            subtree_size: leaves + 1,
            ..NodeInfo::leaf(relay)
        });
        for k in 1..=leaves {
            out.push(NodeInfo {
                branch: relay,
                ..NodeInfo::leaf(NodeId(b * 100 + k))
            });
        }
    }
    out
}

impl Fleet {
    pub fn new(infos: Vec<NodeInfo>, build: Build, quirks: &BTreeMap<u32, Quirks>) -> Self {
        let mut f = Self {
            build,
            nodes: BTreeMap::new(),
            queue: BTreeSet::new(),
            seq: 0,
            infos: Vec::new(),
            now: Instant::ZERO,
        };
        for (i, info) in infos.iter().enumerate() {
            let q = quirks.get(&info.id.0).copied().unwrap_or_default();
            f.nodes.insert(
                info.id.0,
                FakeNode {
                    kind: info.kind,
                    quirks: q,
                    online: true,
                    running: Image::Old,
                    boot_at: Instant::ZERO,
                    boots: 1,
                    gen: 0,
                    transfers: 0,
                    noise: i as u64 * 7919,
                    trial_boots: 0,
                    reoffer_gen: None,
                },
            );
            // Spread the health reports over the 30 s period.
            f.push(
                Instant::from_secs(1 + (i as u64 % 29)),
                Ev::Sample(info.id.0),
            );
            if let Some((from, to)) = q.offline {
                f.push(Instant::from_secs(from), Ev::Offline(info.id.0));
                f.push(Instant::from_secs(to), Ev::Online(info.id.0));
            }
        }
        f.infos = infos
            .into_iter()
            .map(|mut i| {
                i.online = !f.nodes[&i.id.0]
                    .quirks
                    .offline
                    .is_some_and(|(from, _)| from == 0);
                i
            })
            .collect();
        // A node offline from t = 0 starts offline.
        for n in f.nodes.values_mut() {
            if n.quirks.offline.is_some_and(|(from, _)| from == 0) {
                n.online = false;
            }
        }
        f
    }

    fn push(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq, ev));
    }

    pub fn next_time(&self) -> Option<Instant> {
        self.queue.first().map(|(t, _, _)| *t)
    }

    /// Which image a node runs (for assertions).
    pub fn runs_new(&self, id: NodeId) -> bool {
        self.nodes[&id.0].running == Image::New
    }

    pub fn is_online(&self, id: NodeId) -> bool {
        self.nodes[&id.0].online
    }

    /// Carries out one order.
    pub fn apply(&mut self, now: Instant, order: Order) {
        match order {
            Order::Offer { node, version } => {
                assert_eq!(version.as_str(), NEW);
                let Some(n) = self.nodes.get_mut(&node.0) else {
                    return;
                };
                if !n.online {
                    return;
                }
                n.gen += 1;
                n.transfers += 1;
                let (gen, q, t) = (n.gen, n.quirks, n.transfers);
                let dl = if q.slow {
                    40 * 60
                } else {
                    60 + (n.noise + u64::from(t) * 13) % 60
                };
                self.push(now + Duration::from_secs(2), Ev::Accept(node.0, gen));
                if q.flaky && t == 1 {
                    self.push(now + Duration::from_secs(30), Ev::Fail(node.0, gen));
                } else {
                    self.push(
                        now + Duration::from_secs(2 + dl),
                        Ev::Installed(node.0, gen, Image::New),
                    );
                }
            }
            Order::Cancel { node } => {
                if let Some(n) = self.nodes.get_mut(&node.0) {
                    n.gen += 1;
                }
            }
            Order::Rollback { node, via } => {
                let Some(n) = self.nodes.get_mut(&node.0) else {
                    return;
                };
                if !n.online || n.reoffer_gen == Some(n.gen) {
                    return;
                }
                n.gen += 1;
                let gen = n.gen;
                match via {
                    meshfleet_rollout::RollbackVia::PreviousSlot => {
                        // Reboot into the other slot.
                        n.online = false;
                        self.push(now + Duration::from_secs(10), Ev::Boot(node.0, Image::Old));
                    }
                    meshfleet_rollout::RollbackVia::Reoffer { version } => {
                        assert_eq!(version.as_str(), OLD);
                        n.reoffer_gen = Some(gen);
                        self.push(
                            now + Duration::from_secs(90),
                            Ev::Installed(node.0, gen, Image::Old),
                        );
                    }
                }
            }
        }
    }

    /// Runs the next fleet event (at `now`), feeding the controller.
    pub fn step(&mut self, now: Instant, r: &mut Rollout) {
        let Some((t, s, ev)) = self.queue.first().cloned() else {
            return;
        };
        assert_eq!(t, now);
        self.queue.remove(&(t, s, ev.clone()));
        match ev {
            Ev::Accept(id, gen) => {
                if self.nodes[&id].gen == gen && self.nodes[&id].online {
                    r.handle_report(now, NodeId(id), NodeReport::OfferAccepted);
                }
            }
            Ev::Fail(id, gen) => {
                if self.nodes[&id].gen == gen && self.nodes[&id].online {
                    r.handle_report(now, NodeId(id), NodeReport::TransferFailed);
                }
            }
            Ev::Installed(id, gen, image) => {
                let n = self.nodes.get_mut(&id).unwrap();
                if n.gen != gen || !n.online {
                    return;
                }
                if image == Image::New {
                    r.handle_report(now, NodeId(id), NodeReport::Installed);
                }
                // Reboot into it.
                n.online = false;
                r.handle_node_offline(now, NodeId(id));
                if image == Image::New && self.build == Build::Brick {
                    return;
                }
                self.push(now + Duration::from_secs(15), Ev::Boot(id, image));
            }
            Ev::Boot(id, image) => {
                let build = self.build;
                let n = self.nodes.get_mut(&id).unwrap();
                if n.quirks.offline.is_some_and(|(from, to)| {
                    now >= Instant::from_secs(from) && now < Instant::from_secs(to)
                }) {
                    // Powered off in the meantime: it boots when it comes back.
                    n.running = image;
                    return;
                }
                n.online = true;
                n.running = image;
                n.boot_at = now;
                n.boots += 1;
                n.gen += 1;
                let gen = n.gen;
                r.handle_node_online(now, NodeId(id));
                let version = v(if image == Image::New { NEW } else { OLD });
                match (image, build) {
                    (Image::New, Build::NoConfirm) => {
                        n.trial_boots += 1;
                        r.handle_report(
                            now,
                            NodeId(id),
                            NodeReport::Booted {
                                version,
                                confirmed: false,
                            },
                        );
                        // The trial image dies 20 s in; after 3 tries the bootloader
                        // falls back (see `Ev::Crash`).
                        self.push(now + Duration::from_secs(20), Ev::Crash(id, gen));
                    }
                    (Image::New, Build::CrashLoop) => {
                        r.handle_report(
                            now,
                            NodeId(id),
                            NodeReport::Booted {
                                version,
                                confirmed: true,
                            },
                        );
                        self.push(now + Duration::from_secs(40), Ev::Crash(id, gen));
                    }
                    _ => r.handle_report(
                        now,
                        NodeId(id),
                        NodeReport::Booted {
                            version,
                            confirmed: true,
                        },
                    ),
                }
            }
            Ev::Crash(id, gen) => {
                let build = self.build;
                let n = self.nodes.get_mut(&id).unwrap();
                if n.gen != gen || !n.online || n.running != Image::New {
                    return;
                }
                n.online = false;
                r.handle_node_offline(now, NodeId(id));
                let next = if build == Build::NoConfirm && n.trial_boots >= 3 {
                    Image::Old
                } else {
                    Image::New
                };
                self.push(now + Duration::from_secs(10), Ev::Boot(id, next));
            }
            Ev::Sample(id) => {
                self.push(now + Duration::from_secs(30), Ev::Sample(id));
                let build = self.build;
                let n = self.nodes.get_mut(&id).unwrap();
                if !n.online {
                    return;
                }
                n.noise = n
                    .noise
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let jitter = ((n.noise >> 33) % 2_000) as u32;
                let up = now.saturating_since(n.boot_at);
                let leak = match (n.running, build) {
                    (Image::New, Build::Leak { bytes_per_min }) => {
                        (up.as_secs() * u64::from(bytes_per_min) / 60) as u32
                    }
                    _ => 0,
                };
                let sample = HealthSample {
                    uptime: up,
                    reboots: n.boots,
                    free_heap: HEAP.saturating_sub(jitter).saturating_sub(leak),
                    alerts: 0,
                    app_ok: Some(true),
                };
                r.handle_health(now, NodeId(id), sample);
            }
            Ev::Offline(id) => {
                let n = self.nodes.get_mut(&id).unwrap();
                n.online = false;
                n.gen += 1;
                r.handle_node_offline(now, NodeId(id));
            }
            Ev::Online(id) => {
                let n = self.nodes.get_mut(&id).unwrap();
                n.online = true;
                n.boot_at = now;
                n.boots += 1;
                let running = n.running;
                r.handle_node_online(now, NodeId(id));
                r.handle_report(
                    now,
                    NodeId(id),
                    NodeReport::Booted {
                        version: v(if running == Image::New { NEW } else { OLD }),
                        confirmed: true,
                    },
                );
            }
        }
    }
}

/// Drives controller and fleet until `until`, or until the rollout has nothing left to do
/// (aborted with no timer left, or completed with no node left to update); `check` runs
/// after every step. Returns the decision log.
pub fn run(
    r: &mut Rollout,
    fleet: &mut Fleet,
    until: Instant,
    check: impl FnMut(&Rollout, &Fleet, &[RolloutEvent]),
) -> Vec<RolloutEvent> {
    let mut log = Vec::new();
    run_into(r, fleet, until, &mut log, check);
    log
}

/// [`run`], appending to `log` (which `check` sees whole).
pub fn run_into(
    r: &mut Rollout,
    fleet: &mut Fleet,
    until: Instant,
    log: &mut Vec<RolloutEvent>,
    mut check: impl FnMut(&Rollout, &Fleet, &[RolloutEvent]),
) {
    loop {
        drain(r, fleet, fleet.now, log);
        check(r, fleet, log);
        if finished(r) {
            break;
        }
        let tr = r.poll_timeout().map(|(t, _)| t);
        let tf = fleet.next_time();
        let next = match (tr, tf) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => break,
            },
        };
        if next > until {
            break;
        }
        fleet.now = next;
        if tf == Some(next) {
            fleet.step(next, r);
        } else {
            r.handle_timeout(next);
        }
    }
}

/// Nothing left for the controller to do.
pub fn finished(r: &Rollout) -> bool {
    match r.phase() {
        Phase::Aborted { .. } => r.poll_timeout().is_none(),
        Phase::Completed => {
            r.poll_timeout().is_none()
                && r.nodes().all(|(_, n)| {
                    !matches!(
                        n.state(),
                        NodeState::Pending
                            | NodeState::Offered { .. }
                            | NodeState::Downloading { .. }
                            | NodeState::Installed { .. }
                            | NodeState::Booted { .. }
                    )
                })
        }
        _ => false,
    }
}

pub fn drain(r: &mut Rollout, fleet: &mut Fleet, now: Instant, log: &mut Vec<RolloutEvent>) {
    loop {
        let mut any = false;
        while let Some(o) = r.poll_order() {
            any = true;
            fleet.apply(now, o);
        }
        while let Some(e) = r.poll_event() {
            any = true;
            log.push(e);
        }
        if !any {
            break;
        }
    }
}

/// True if the healthy-node rule holds for every node: `Healthy` only after a confirmed
/// boot event and a full window.
pub fn successes_are_earned(r: &Rollout, log: &[RolloutEvent]) -> Result<(), String> {
    let window = r.config().health.window;
    let confirmed: BTreeSet<NodeId> = log
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::BootConfirmed { node, .. } => Some(node),
            _ => None,
        })
        .collect();
    for (id, rec) in r.nodes() {
        if let NodeState::Healthy { booted, at } = rec.state() {
            if !confirmed.contains(&id) {
                return Err(format!("{id} healthy without a confirmed boot"));
            }
            if at.saturating_since(booted) < window {
                return Err(format!("{id} healthy before its window ended"));
            }
            if rec.health_reports() < r.config().health.min_samples {
                return Err(format!("{id} healthy with too few reports"));
            }
        }
    }
    Ok(())
}
