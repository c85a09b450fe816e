//! The rollout controller (`meshfleet-rollout`) driving real nodes on the virtual-time
//! harness: a gateway node holding the new build as a scoped source (`docs/ota-protocol.md`
//! 2.3.2) offers it wave by wave to the nodes the controller names; every node runs the
//! agent as shipped (OTA receiver, ESP boot policy, A/B store); an abort sends the exposed
//! nodes back with the signed rollback command (2.9). The firmware's behaviour (healthy, or
//! crashing 40 s after every boot) is the test's model of the application: it decides when
//! a node reboots and what its health reports say, never what the OTA layer does.
//!
//! Scenarios: a healthy build with a gateway restart 4 minutes into wave 2 (the rollout
//! saved as JSON, 5 minutes away with every report lost, restored); a crash-looping build;
//! a leaking one (2 KB/min).
//!
//! What the controller hears is what a gateway can know: OTA events of the nodes (in the
//! field, their REPORTs), the version each node boots (its status package), health samples
//! every 30 s (uptime, boot counter, free heap, application flag).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use meshfleet_agent::{Agent, AgentConfig, BootAction, BootPolicy, OtaReceiver, ReceiverConfig};
use meshfleet_firmware::{pack, Artefact, Intent, PackOptions, SigningKey, Version};
use meshfleet_mesh::{Config, Duration, Instant, Node, NodeId};
use meshfleet_ota::store::image_info;
use meshfleet_ota::{BootManager, MemStore, MeshfleetConfig, MeshfleetOta, OtaEvent, SlotStore};
use meshfleet_rollout as ro;
use meshfleet_testkit::Net;

const ROLE: &str = "sensor";
const HW: &str = "ESP32";
const OLD: &str = "1.0.0";
const NEW: &str = "2.0.0";
const HEAP: u32 = 200_000;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn image_of(version: &str) -> Vec<u8> {
    let v = Version::parse(version).unwrap();
    let mut x = 100 + v.major() * 100 + v.minor() * 10 + v.patch();
    (0..8_000)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i / 512) % 2 == 0 {
                (i % 61) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

fn artefact(version: &str) -> Artefact {
    let k = key();
    let mut o = PackOptions::new(ROLE, HW, Version::parse(version).unwrap());
    o.signing_key = Some(&k);
    o.chunk_size = 512;
    pack(&image_of(version), o).unwrap()
}

/// What the new build does once it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Build {
    Healthy,
    /// Crashes (the node reboots) 40 s after every boot.
    CrashLoop,
    /// Loses 2 KB of heap a minute while it runs.
    Leak,
}

/// One node of the fleet and the test's model of its application.
struct Device {
    idx: usize,
    id: u32,
    parent: usize,
    store: MemStore,
    boot_at: Instant,
    boots: u32,
    running: String,
    /// The boot not reported to the controller yet: (version, confirmed).
    boot_report: Option<(String, bool)>,
    next_sample: Instant,
    reboot_at: Option<Instant>,
    ever_accepted: bool,
    /// Out of the mesh (its link cut) until then.
    offline_until: Option<Instant>,
}

fn build_node(id: u32, store: &MemStore) -> Node {
    let mut rc = ReceiverConfig::new(ROLE, HW, BootPolicy::on_restart());
    rc.stock = None;
    rc.trusted_key = Some(key().verifying_key());
    let r = OtaReceiver::open(rc, store.clone(), Box::new(store.clone())).unwrap();
    let mut n = Node::new(Config::new(NodeId(id)));
    Agent::equip(
        &mut n,
        AgentConfig {
            receiver: Some(r),
            extra: Vec::new(),
        },
    )
    .unwrap();
    n
}

/// The controller's clock is the mesh's (one `meshfleet_time` type).
fn now_ro(net: &Net) -> ro::Instant {
    net.now
}

struct World {
    net: Net,
    devices: Vec<Device>,
    build: Build,
    rollout: ro::Rollout,
    log: Vec<ro::RolloutEvent>,
    old_sha: meshfleet_firmware::Sha256Digest,
    /// The gateway is down until then: the controller hears nothing, orders nothing.
    down_until: Option<Instant>,
    /// The persisted rollout while the gateway is down.
    saved: Option<String>,
}

impl World {
    /// Gateway (id 1) with two relays (100, 200) of four leaves each.
    fn new(build: Build, seed: u64) -> Self {
        let mut net = Net::new(Duration::from_millis(5));
        let new = artefact(NEW);
        let mut gw = Node::new(Config::new(NodeId(1)));
        let mut c = MeshfleetConfig::new(ROLE, HW);
        c.running = Some(image_info(&image_of(NEW), NEW));
        let mut src = MeshfleetOta::source(c, Box::new(MemStore::new()), new, None);
        // Nobody gets the build until the controller names them.
        assert!(src.set_scope(Some(BTreeSet::new())));
        gw.add_plugin(Box::new(src)).unwrap();
        net.add(gw);
        let mut devices = Vec::new();
        let mut infos = Vec::new();
        for b in [100u32, 200] {
            let relay_idx = net.nodes.len();
            for id in std::iter::once(b).chain(b + 1..=b + 4) {
                let store = MemStore::with_image(&image_of(OLD), OLD);
                let idx = net.add(build_node(id, &store));
                let parent = if id == b { 0 } else { relay_idx };
                net.connect(idx, parent);
                devices.push(Device {
                    idx,
                    id,
                    parent,
                    store,
                    boot_at: Instant::ZERO,
                    boots: 1,
                    running: OLD.into(),
                    // The plan knows what runs; a boot is reported when one happens.
                    boot_report: None,
                    next_sample: Instant::ZERO + Duration::from_secs(5 + u64::from(id % 7)),
                    reboot_at: None,
                    ever_accepted: false,
                    offline_until: None,
                });
                infos.push(ro::NodeInfo {
                    role: ROLE.into(),
                    hardware: HW.into(),
                    branch: ro::NodeId(b),
                    subtree_size: if id == b { 5 } else { 1 },
                    ..ro::NodeInfo::leaf(ro::NodeId(id))
                });
            }
        }
        net.run_for(Duration::from_secs(10));
        let config = ro::RolloutConfig {
            seed,
            ..ro::RolloutConfig::new(
                ro::ImageVersion::new(NEW).unwrap(),
                ro::ImageVersion::new(OLD).unwrap(),
            )
        };
        let rollout = ro::Rollout::new(now_ro(&net), config, infos).unwrap();
        Self {
            net,
            devices,
            build,
            rollout,
            log: Vec::new(),
            old_sha: artefact(OLD).manifest().sha256,
            down_until: None,
            saved: None,
        }
    }

    fn gateway<R>(
        &mut self,
        f: impl FnOnce(&mut MeshfleetOta, &mut meshfleet_mesh::Ctx<'_>) -> R,
    ) -> R {
        let now = self.net.now;
        let r = self.net.nodes[0]
            .with_plugin::<MeshfleetOta, _>(now, f)
            .unwrap();
        self.net.drain(0);
        r
    }

    /// Carries out the controller's orders through the gateway's node.
    fn orders(&mut self) {
        while let Some(o) = self.rollout.poll_order() {
            match o {
                ro::Order::Offer { node, .. } => {
                    // No route now: the controller's offer deadline retries it.
                    self.gateway(|g, ctx| g.target(ctx, NodeId(node.0)));
                }
                ro::Order::Cancel { node } => {
                    self.gateway(|g, _| g.untarget(NodeId(node.0)));
                }
                ro::Order::Rollback { node, via } => {
                    assert!(matches!(via, ro::RollbackVia::PreviousSlot), "{via:?}");
                    let issued = 1_000_000 + self.net.now.as_micros() / 1_000_000;
                    let mut cmd = Intent::rollback_to(
                        ROLE,
                        HW,
                        Version::parse(OLD).unwrap(),
                        self.old_sha,
                        vec![node.0],
                        issued,
                        3600,
                    );
                    cmd.sign(&key());
                    self.gateway(|g, ctx| g.send_rollback(ctx, NodeId(node.0), &cmd));
                }
            }
        }
        while let Some(e) = self.rollout.poll_event() {
            self.log.push(e);
        }
    }

    /// Rebuilds device `k` from its flash (a reboot) and re-links it and its children.
    fn reboot(&mut self, k: usize) {
        let (idx, id, parent) = (
            self.devices[k].idx,
            self.devices[k].id,
            self.devices[k].parent,
        );
        let store = self.devices[k].store.clone();
        self.net.replace(idx, build_node(id, &store));
        self.net.connect(idx, parent);
        let children: Vec<usize> = self
            .devices
            .iter()
            .filter(|d| d.parent == idx)
            .map(|d| d.idx)
            .collect();
        for c in children {
            self.net.connect(c, idx);
        }
        let now = self.net.now;
        let d = &mut self.devices[k];
        d.reboot_at = None;
        d.boots += 1;
        d.boot_at = now;
        let r = self.net.nodes[idx]
            .plugin_mut::<OtaReceiver<MemStore>>()
            .unwrap();
        while r.poll_action().is_some() {}
        let cur = r.current().unwrap().clone();
        let version = cur.image.map(|i| i.version).unwrap_or_default();
        d.running.clone_from(&version);
        d.boot_report = Some((version.clone(), !cur.trial));
        // The application: a crash-looping build goes down 40 s after every boot.
        if version == NEW && self.build == Build::CrashLoop {
            d.reboot_at = Some(now + Duration::from_secs(40));
        }
    }

    /// One second of the world.
    fn step(&mut self) {
        self.net.run_for(Duration::from_secs(1));
        self.net.trace.clear();
        self.net.events[0].clear();
        let now = self.net.now;
        let t = now_ro(&self.net);
        for k in 0..self.devices.len() {
            let (idx, id) = (self.devices[k].idx, self.devices[k].id);
            let node = ro::NodeId(id);
            if let Some(until) = self.devices[k].offline_until {
                if until > now {
                    continue;
                }
                // Back: its station joins its parent again.
                self.devices[k].offline_until = None;
                let parent = self.devices[k].parent;
                self.net.connect(idx, parent);
                if self.down_until.is_none() {
                    self.rollout.handle_node_online(t, node);
                }
            }
            // Taken, not copied: the harness keeps every event (and frame) otherwise.
            let fresh: Vec<OtaEvent> = std::mem::take(&mut self.net.events[idx])
                .iter()
                .filter_map(|e| match e {
                    meshfleet_mesh::Event::Plugin { event, .. } => {
                        event.downcast_ref::<OtaEvent>().cloned()
                    }
                    _ => None,
                })
                .collect();
            let down = self.down_until.is_some();
            for e in fresh.into_iter().filter(|_| !down) {
                let report = match e {
                    OtaEvent::OfferAccepted { .. } => {
                        self.devices[k].ever_accepted = true;
                        Some(ro::NodeReport::OfferAccepted)
                    }
                    OtaEvent::Applied { .. } => {
                        // An ESP reboots into the committed image right away.
                        self.devices[k].reboot_at = Some(now + Duration::from_secs(2));
                        Some(ro::NodeReport::Installed)
                    }
                    OtaEvent::VerifyFailed { .. } => Some(ro::NodeReport::TransferFailed),
                    _ => None,
                };
                if let Some(r) = report {
                    self.rollout.handle_report(t, node, r);
                }
            }
            let restart = {
                let r = self.net.nodes[idx]
                    .plugin_mut::<OtaReceiver<MemStore>>()
                    .unwrap();
                std::iter::from_fn(|| r.poll_action())
                    .any(|a| matches!(a, BootAction::RestartForRollback { .. }))
            };
            if restart {
                self.devices[k].reboot_at = Some(now + Duration::from_secs(1));
            }
            if self.devices[k].reboot_at.is_some_and(|r| r <= now) {
                self.reboot(k);
            }
            let d = &mut self.devices[k];
            if d.next_sample <= now && down {
                // Lost with the gateway: the node's reports reach nobody.
                d.next_sample = now + Duration::from_secs(30);
                d.boot_report = None;
            } else if d.next_sample <= now {
                d.next_sample = now + Duration::from_secs(30);
                if let Some((version, confirmed)) = d.boot_report.take() {
                    self.rollout.handle_report(
                        t,
                        node,
                        ro::NodeReport::Booted {
                            version: ro::ImageVersion::new(version).unwrap(),
                            confirmed,
                        },
                    );
                }
                let jitter = (now.as_micros() / 1_000_000 * 7 + u64::from(d.id)) % 2000;
                let leak = if d.running == NEW && self.build == Build::Leak {
                    now.saturating_since(d.boot_at).as_micros() / 1_000_000 * 2_000 / 60
                } else {
                    0
                };
                let sample = ro::HealthSample {
                    uptime: now.saturating_since(d.boot_at),
                    reboots: d.boots,
                    free_heap: HEAP.saturating_sub((jitter + leak) as u32),
                    alerts: 0,
                    app_ok: Some(true),
                };
                self.rollout.handle_health(t, node, sample);
            }
        }
        if self.down_until.is_some_and(|u| u <= now) {
            self.come_back();
        }
        if self.down_until.is_some() {
            return;
        }
        if self.rollout.poll_timeout().is_some_and(|(at, _)| at <= t) {
            self.rollout.handle_timeout(t);
        }
        self.orders();
    }

    /// The gateway process stops for `downtime`: its rollout is persisted (serde), its
    /// node and everything it served go away with it.
    fn go_down(&mut self, downtime: Duration) {
        self.saved = Some(serde_json::to_string(&self.rollout).unwrap());
        self.down_until = Some(self.net.now + downtime);
        // The gateway's node restarts too: a fresh source, empty scope.
        let mut gw = Node::new(Config::new(NodeId(1)));
        let mut c = MeshfleetConfig::new(ROLE, HW);
        c.running = Some(image_info(&image_of(NEW), NEW));
        let mut src = MeshfleetOta::source(c, Box::new(MemStore::new()), artefact(NEW), None);
        assert!(src.set_scope(Some(BTreeSet::new())));
        gw.add_plugin(Box::new(src)).unwrap();
        self.net.replace(0, gw);
        for d in self.devices.iter().filter(|d| d.parent == 0) {
            self.net.connect(d.idx, 0);
        }
    }

    /// The gateway is back: the rollout is restored from its saved form, told how long it
    /// was away, and re-told what the driver learns from the mesh (presence, and the
    /// version the nodes it had in flight run now); transfers it had in flight are
    /// offered again (the source restarted with an empty scope).
    fn come_back(&mut self) {
        self.down_until = None;
        let t = now_ro(&self.net);
        self.rollout = serde_json::from_str(&self.saved.take().unwrap()).unwrap();
        self.rollout.handle_restarted(t);
        for k in 0..self.devices.len() {
            let id = ro::NodeId(self.devices[k].id);
            if self.devices[k].offline_until.is_some() {
                self.rollout.handle_node_offline(t, id);
                continue;
            }
            self.rollout.handle_node_online(t, id);
            let state = self.rollout.node(id).map(ro::NodeRecord::state);
            match state {
                Some(ro::NodeState::Installed { .. }) => {
                    let version = ro::ImageVersion::new(self.devices[k].running.clone()).unwrap();
                    self.rollout.handle_report(
                        t,
                        id,
                        ro::NodeReport::Booted {
                            version,
                            confirmed: true,
                        },
                    );
                }
                Some(ro::NodeState::Offered { .. } | ro::NodeState::Downloading { .. }) => {
                    self.gateway(|g, ctx| g.target(ctx, NodeId(id.0)));
                }
                _ => {}
            }
        }
        self.orders();
    }

    fn run(&mut self, limit: Duration, restart: Option<(u16, Duration, Duration)>) {
        let end = self.net.now + limit;
        let mut restart = restart;
        self.orders();
        while self.net.now < end {
            self.step();
            // Restart `after` into wave `w`, for `downtime`.
            if let Some((w, after, downtime)) = restart {
                let started = self.log.iter().find_map(|e| match e.kind {
                    ro::EventKind::WaveStarted { wave, .. } if wave == w => Some(e.at),
                    _ => None,
                });
                if started.is_some_and(|s| now_ro(&self.net) >= s + after) {
                    self.go_down(downtime);
                    restart = None;
                }
            }
            let done = match self.rollout.phase() {
                ro::Phase::Completed => self
                    .rollout
                    .nodes()
                    .all(|(_, r)| matches!(r.state(), ro::NodeState::Healthy { .. })),
                ro::Phase::Aborted { .. } => self.rollout.summary().restored_s.is_some(),
                _ => false,
            };
            if done {
                break;
            }
        }
    }

    /// Takes the leaf planned in wave `wave` with the smallest id out of the mesh for
    /// `away`, from now. Returns its id.
    fn take_offline(&mut self, wave: u16, away: Duration) -> u32 {
        let id = self
            .rollout
            .nodes()
            .filter(|(id, r)| r.planned_wave() == wave && id.0 % 100 != 0)
            .map(|(id, _)| id.0)
            .min()
            .unwrap();
        let k = self.devices.iter().position(|d| d.id == id).unwrap();
        for wire in self.net.wires_of(self.devices[k].idx) {
            self.net.cut(wire);
        }
        self.devices[k].offline_until = Some(self.net.now + away);
        self.rollout
            .handle_node_offline(now_ro(&self.net), ro::NodeId(id));
        id
    }

    fn boots_into(&self, k: usize) -> String {
        let d = BootManager::new(self.devices[k].store.clone(), 3)
            .on_boot()
            .unwrap();
        d.image.unwrap().version
    }
}

#[test]
fn a_healthy_build_reaches_every_node_wave_by_wave() {
    let mut w = World::new(Build::Healthy, 1);
    // A wave-2 leaf is away for 55 minutes from the start: past its wave's grace (15 min
    // from the wave's start, moved by the gateway's downtime).
    let away = w.take_offline(2, Duration::from_secs(55 * 60));
    // The gateway restarts 4 minutes into wave 2 and is away for 5 minutes.
    w.run(
        Duration::from_secs(3 * 3600),
        Some((2, Duration::from_secs(240), Duration::from_secs(300))),
    );
    let s = w.rollout.summary();
    eprintln!(
        "healthy: done at {} s: {}",
        w.net.now.as_micros() / 1_000_000,
        serde_json::to_string(&s).unwrap()
    );
    for e in &w.log {
        if matches!(
            e.kind,
            ro::EventKind::Failed { .. } | ro::EventKind::Aborted { .. }
        ) {
            eprintln!("{e:?}");
        }
    }
    assert_eq!(w.rollout.phase(), ro::Phase::Completed, "{s:?}");
    assert_eq!(s.exposed, 10);
    for k in 0..w.devices.len() {
        assert_eq!(w.boots_into(k), NEW, "device {}", w.devices[k].id);
    }
    // Waves in order, and nobody took the build before its wave started.
    let started: Vec<u16> = w
        .log
        .iter()
        .filter_map(|e| match e.kind {
            ro::EventKind::WaveStarted { wave, .. } => Some(wave),
            _ => None,
        })
        .collect();
    assert!(started.len() >= 3, "{started:?}");
    assert!(started.windows(2).all(|p| p[0] < p[1]));
    // The offline node: its wave went on without it, and it was updated when back.
    assert!(w.log.iter().any(|e| matches!(
        e.kind,
        ro::EventKind::Deferred { node, .. } if node.0 == away
    )));
    assert!(w.log.iter().any(|e| matches!(
        e.kind,
        ro::EventKind::JoinedWave { node, .. } if node.0 == away
    )));
    assert!(w.log.iter().any(|e| matches!(
        e.kind,
        ro::EventKind::Healthy { node, .. } if node.0 == away
    )));
    // The gateway restart mid wave 2 cost no node.
    assert!(w
        .log
        .iter()
        .any(|e| matches!(e.kind, ro::EventKind::Restarted { .. })));
    assert!(s.waves.iter().all(|x| x.counts.failed == 0), "{s:?}");
}

#[test]
fn a_leaking_build_is_caught_in_the_first_waves_and_rolled_back() {
    let mut w = World::new(Build::Leak, 3);
    w.run(Duration::from_secs(2 * 3600), None);
    let s = w.rollout.summary();
    eprintln!(
        "leak: done at {} s: {}",
        w.net.now.as_micros() / 1_000_000,
        serde_json::to_string(&s).unwrap()
    );
    let ro::Phase::Aborted {
        reason: ro::AbortReason::FailureThreshold { wave, .. },
    } = w.rollout.phase()
    else {
        panic!("{:?}", w.rollout.phase())
    };
    assert!(wave <= 1, "caught in wave {wave}");
    assert!(w.log.iter().any(|e| matches!(
        e.kind,
        ro::EventKind::Failed {
            reason: ro::FailureReason::Health(
                ro::HealthFailure::MemoryLeak { .. } | ro::HealthFailure::MemoryRegression { .. }
            ),
            ..
        }
    )));
    assert_eq!(s.rolled_back, s.exposed, "{s:?}");
    for k in 0..w.devices.len() {
        assert_eq!(w.boots_into(k), OLD, "device {}", w.devices[k].id);
    }
}

#[test]
fn a_crash_looping_build_is_contained_to_the_canary_and_sent_back_by_the_signed_command() {
    let mut w = World::new(Build::CrashLoop, 2);
    w.run(Duration::from_secs(2 * 3600), None);
    let s = w.rollout.summary();
    eprintln!(
        "crash loop: done at {} s: {}",
        w.net.now.as_micros() / 1_000_000,
        serde_json::to_string(&s).unwrap()
    );
    assert!(
        matches!(
            w.rollout.phase(),
            ro::Phase::Aborted {
                reason: ro::AbortReason::FailureThreshold { wave: 0, .. }
            }
        ),
        "{:?}",
        w.rollout.phase()
    );
    // Contained: at most max(5 % of 10, 3) nodes ever took the build.
    assert!(s.exposed >= 1 && s.exposed <= 3, "{s:?}");
    let accepted = w.devices.iter().filter(|d| d.ever_accepted).count() as u32;
    assert!(accepted <= 3, "{accepted} nodes accepted the build");
    // Every exposed node back on the old image within 10 virtual minutes of the abort, by
    // the rollback command (not by its bootloader: the build confirms before it crashes).
    assert_eq!(s.rolled_back, s.exposed, "{s:?}");
    assert!(s.restored_s.is_some_and(|r| r <= 600.0), "{s:?}");
    for k in 0..w.devices.len() {
        assert_eq!(w.boots_into(k), OLD, "device {}", w.devices[k].id);
    }
    let bad = artefact(NEW).manifest().sha256.to_string();
    for d in w.devices.iter().filter(|d| d.ever_accepted) {
        let rec = d.store.clone().load_boot().unwrap().unwrap();
        assert!(
            rec.refused.contains(&bad),
            "{} keeps the bad build out",
            d.id
        );
    }
}
