//! Progressive rollouts in the simulator (issue 14): the rollout controller
//! (`meshfleet-rollout`) driven from the simulated gateway node, against the real node on
//! every simulated node (the agent as shipped, the meshfleet OTA engine, A/B stores that
//! survive reboots).
//!
//! The gateway is the campaign's source ([`OtaCampaign`], meshfleet strategy) started with
//! an empty scope (`docs/ota-protocol.md` 2.3.2): `Order::Offer` adds a node with
//! `MeshfleetOta::target`, `Order::Cancel` takes it out, `Order::Rollback` sends the
//! operator's signed rollback command (2.9). What the controller hears is what a gateway can
//! know: the nodes' OTA events (`OfferAccepted`, `Applied`), the version each boots and a
//! health sample every 30 s.
//!
//! The firmware's behaviour is a workload plug-in ([`Firmware`]): it decides when a node
//! reboots (a crash loop) and what its health samples say (a leak); it never touches the OTA
//! layer. An applied image boots 2 s later (an ESP reboots), as does a node sent back by a
//! rollback command.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use meshfleet_agent::{BootAction, OtaReceiver};
use meshfleet_firmware::{Intent, Version};
use meshfleet_mesh::{Duration, Event, Instant, NodeId};
use meshfleet_ota::{MemStore, OtaEvent};
use meshfleet_rollout as ro;
use meshfleet_wire::NodeTree;

use crate::metrics::SimReport;
use crate::ota::{test_signing_key, OtaCampaign, NEW_VERSION, OLD_VERSION};
use crate::scenario::{Scenario, SimEvent};
use crate::sim::Simulation;

/// How the new build behaves once it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// Boots, stays up, heap flat.
    Healthy,
    /// Crashes (the node reboots) `after` every boot.
    CrashLoop {
        /// Time from boot to crash.
        after: Duration,
    },
    /// Loses `bytes_per_min` of free heap while it runs.
    Leak {
        /// Bytes a minute.
        bytes_per_min: u32,
    },
}

/// A rollout run: the build's behaviour and the faults of the scenario.
#[derive(Clone, Debug)]
pub struct RolloutSetup {
    /// The new build's behaviour.
    pub firmware: Firmware,
    /// The controller's configuration (waves, thresholds, seed).
    pub config: ro::RolloutConfig,
    /// Free heap of a node on the old build, bytes.
    pub heap: u32,
    /// The gateway restarts this long after wave `.0` started, and is away for `.2`; its
    /// rollout is persisted as JSON and restored.
    pub gateway_restart: Option<(u16, Duration, Duration)>,
    /// A leaf planned in wave `.0` (the one with the smallest id) is powered off from `.1`
    /// to `.2` after the rollout's start.
    pub offline: Option<(u16, Duration, Duration)>,
    /// Give up after this long from the start.
    pub limit: Duration,
}

impl RolloutSetup {
    /// The default controller (5 % → 20 % → 75 % → 100 %) for `firmware`.
    pub fn new(firmware: Firmware, seed: u64) -> Self {
        let v = |s: &str| ro::ImageVersion::new(s).unwrap_or_else(|_| unreachable_version());
        Self {
            firmware,
            config: ro::RolloutConfig {
                seed,
                ..ro::RolloutConfig::new(v(NEW_VERSION), v(OLD_VERSION))
            },
            heap: 200_000,
            gateway_restart: None,
            offline: None,
            limit: Duration::from_secs(6 * 3600),
        }
    }
}

fn unreachable_version() -> ro::ImageVersion {
    // NEW_VERSION and OLD_VERSION are valid constants; this is never reached.
    ro::ImageVersion::new("0.0.0").unwrap_or_else(|_| std::process::abort())
}

/// What a rollout run ended with.
#[derive(Debug)]
pub struct RolloutOutcome {
    /// The controller's summary (`summary.json`'s `rollout`).
    pub summary: ro::RolloutSummary,
    /// The decision log.
    pub log: Vec<ro::RolloutEvent>,
    /// The version each node (by number) boots at the end, read from its store.
    pub final_versions: BTreeMap<u32, String>,
    /// Nodes (by number) that accepted the new build at any time.
    pub accepted: BTreeSet<u32>,
    /// The node (number) taken offline, if the setup asked for one.
    pub offline_node: Option<u32>,
    /// Virtual seconds from the rollout's start to its last decision.
    pub duration_s: f64,
    /// The simulator's report.
    pub report: SimReport,
}

struct Device {
    number: u32,
    id: NodeId,
    boot_at: Instant,
    boots: u32,
    running: String,
    boot_report: Option<(String, bool)>,
    next_sample: Instant,
    reboot_at: Option<Instant>,
    offline: bool,
}

fn t(now: Instant) -> ro::Instant {
    ro::Instant::from_micros(now.as_micros())
}

/// The controller's view of node `n` in the gateway's tree: its branch (the gateway's
/// child it hangs under) and its subtree size.
fn fleet_info(tree: &NodeTree, role: &str, hardware: &str) -> Vec<ro::NodeInfo> {
    fn size(t: &NodeTree) -> u32 {
        1 + t.subs.iter().map(size).sum::<u32>()
    }
    let mut out = Vec::new();
    for branch in &tree.subs {
        let mut stack = vec![branch];
        while let Some(n) = stack.pop() {
            out.push(ro::NodeInfo {
                role: role.into(),
                hardware: hardware.into(),
                branch: ro::NodeId(branch.node_id.0),
                subtree_size: size(n),
                ..ro::NodeInfo::leaf(ro::NodeId(n.node_id.0))
            });
            stack.extend(n.subs.iter());
        }
    }
    out
}

/// Runs `scenario` with `campaign` (meshfleet strategy; its `start_at` is when the rollout
/// starts) distributed by a rollout as `setup` says.
///
/// A campaign without a start time starts at 30 s. Fails if the controller cannot plan
/// (the gateway saw no node at the start, or the configuration is invalid).
pub fn run_rollout(
    scenario: Scenario,
    campaign: OtaCampaign,
    setup: &RolloutSetup,
) -> Result<RolloutOutcome, ro::PlanError> {
    let mut campaign = campaign;
    // The gateway's source offers nothing until the controller names a node.
    campaign.meshfleet.source_scope = Some(BTreeSet::new());
    let start = campaign.start_time().unwrap_or(Duration::from_secs(30));
    let campaign = campaign.start_at(start);
    let (scenario, _run) = campaign.attach(scenario);
    let mut sim = Simulation::new(scenario);
    let events: Rc<RefCell<Vec<(NodeId, OtaEvent)>>> = Rc::default();
    let sink = events.clone();
    sim.set_event_hook(move |_, id, e: &Event| {
        if let Event::Plugin { event, .. } = e {
            if let Some(ev) = event.downcast_ref::<OtaEvent>() {
                sink.borrow_mut().push((id, ev.clone()));
            }
        }
    });
    let start_at = Instant::ZERO + start;
    sim.run_until(start_at + Duration::from_millis(1));
    let gw = sim.id_of(campaign.source);
    let tree = sim.node(gw).map(meshfleet_mesh::Node::topology);
    let infos = tree
        .as_ref()
        .map(|t| fleet_info(t, campaign.role(), campaign.hardware()))
        .unwrap_or_default();
    let leaves: BTreeSet<u32> = infos
        .iter()
        .filter(|i| i.subtree_size == 1)
        .map(|i| i.id.0)
        .collect();
    // An empty fleet (the gateway saw no mesh at the start) or a bad config: no rollout.
    let mut rollout = ro::Rollout::new(t(sim.now()), setup.config.clone(), infos)?;
    let old = campaign.old_image_info().clone();
    let old_sha = old.sha256.parse().ok();
    let mut devices: Vec<Device> = rollout
        .nodes()
        .filter_map(|(id, _)| {
            let nid = NodeId(id.0);
            let number = sim.number_of(nid)?;
            Some(Device {
                number,
                id: nid,
                boot_at: Instant::ZERO,
                boots: 1,
                running: OLD_VERSION.into(),
                boot_report: None,
                next_sample: sim.now() + Duration::from_secs(1 + u64::from(number % 29)),
                reboot_at: None,
                offline: false,
            })
        })
        .collect();
    let mut log = Vec::new();
    let mut accepted = BTreeSet::new();
    let mut down_until: Option<Instant> = None;
    let mut saved: Option<String> = None;
    let mut restart = setup.gateway_restart;
    let offline_node = setup.offline.and_then(|(wave, _, _)| {
        let id = rollout
            .nodes()
            .filter(|(id, r)| r.planned_wave() == wave && leaves.contains(&id.0))
            .map(|(id, _)| id.0)
            .min()?;
        sim.number_of(NodeId(id))
    });
    let mut offline = setup
        .offline
        .zip(offline_node)
        .map(|((_, a, b), n)| (n, start_at + a, start_at + b));
    let end = start_at + setup.limit;
    let mut issued = 1_000_000u64;
    let mut drive =
        |sim: &mut Simulation, rollout: &mut ro::Rollout, log: &mut Vec<ro::RolloutEvent>| {
            while let Some(o) = rollout.poll_order() {
                let gw_job = |sim: &mut Simulation,
                              f: &mut dyn FnMut(
                    &mut meshfleet_ota::MeshfleetOta,
                    &mut meshfleet_mesh::Ctx<'_>,
                )| {
                    sim.with_node(gw, |node, local| {
                        node.with_plugin::<OtaReceiver<MemStore>, _>(local, |r, ctx| {
                            if let Some(m) = r.meshfleet_mut() {
                                f(m, ctx);
                            }
                        })
                    });
                };
                match o {
                    ro::Order::Offer { node, .. } => {
                        gw_job(sim, &mut |m, ctx| {
                            m.target(ctx, NodeId(node.0));
                        });
                    }
                    ro::Order::Cancel { node } => {
                        gw_job(sim, &mut |m, _| {
                            m.untarget(NodeId(node.0));
                        });
                    }
                    ro::Order::Rollback { node, .. } => {
                        let (Ok(v), Some(sha)) = (Version::parse(OLD_VERSION), old_sha) else {
                            continue;
                        };
                        issued += 1;
                        let mut cmd = Intent::rollback_to(
                            campaign.role(),
                            campaign.hardware(),
                            v,
                            sha,
                            vec![node.0],
                            issued,
                            3600,
                        );
                        cmd.sign(&test_signing_key());
                        gw_job(sim, &mut |m, ctx| {
                            m.send_rollback(ctx, NodeId(node.0), &cmd);
                        });
                    }
                }
            }
            while let Some(e) = rollout.poll_event() {
                log.push(e);
            }
        };
    drive(&mut sim, &mut rollout, &mut log);
    while sim.now() < end {
        sim.run_for(Duration::from_secs(1));
        let now = sim.now();
        let tn = t(now);
        let down = down_until.is_some();
        // OTA events of the nodes.
        let fresh = std::mem::take(&mut *events.borrow_mut());
        for (id, e) in fresh {
            let Some(d) = devices.iter_mut().find(|d| d.id == id) else {
                continue;
            };
            let report = match e {
                OtaEvent::OfferAccepted { .. } => {
                    accepted.insert(d.number);
                    Some(ro::NodeReport::OfferAccepted)
                }
                OtaEvent::Applied { .. } => {
                    d.reboot_at = Some(now + Duration::from_secs(2));
                    Some(ro::NodeReport::Installed)
                }
                OtaEvent::VerifyFailed { .. } => Some(ro::NodeReport::TransferFailed),
                _ => None,
            };
            if let (Some(r), false) = (report, down) {
                rollout.handle_report(tn, ro::NodeId(id.0), r);
            }
        }
        // Offline window.
        if let Some((n, from, to)) = offline {
            if let Some(d) = devices.iter_mut().find(|d| d.number == n) {
                if now >= from && !d.offline && now < to {
                    d.offline = true;
                    sim.schedule(now, SimEvent::Crash { node: n });
                    if !down {
                        rollout.handle_node_offline(tn, ro::NodeId(d.id.0));
                    }
                } else if now >= to && d.offline {
                    d.offline = false;
                    offline = None;
                    d.reboot_at = Some(now);
                }
            }
        }
        for d in &mut devices {
            let restart_asked = sim
                .node_mut(d.id)
                .and_then(|n| n.plugin_mut::<OtaReceiver<MemStore>>())
                .is_some_and(|r| {
                    std::iter::from_fn(|| r.poll_action())
                        .any(|a| matches!(a, BootAction::RestartForRollback { .. }))
                });
            if restart_asked {
                d.reboot_at = Some(now + Duration::from_secs(1));
            }
            if d.offline {
                continue;
            }
            if d.reboot_at.is_some_and(|r| r <= now) {
                d.reboot_at = None;
                sim.schedule(now, SimEvent::Reboot { node: d.number });
                sim.run_until(now);
                d.boots += 1;
                d.boot_at = now;
                let cur = sim
                    .node(d.id)
                    .and_then(|n| n.plugin::<OtaReceiver<MemStore>>())
                    .and_then(|r| r.current().cloned());
                if let Some(cur) = cur {
                    let version = cur.image.map(|i| i.version).unwrap_or_default();
                    d.running.clone_from(&version);
                    d.boot_report = Some((version, !cur.trial));
                }
                if let (Firmware::CrashLoop { after }, true) =
                    (setup.firmware, d.running == NEW_VERSION)
                {
                    d.reboot_at = Some(now + after);
                }
                if !down && d.boots > 1 {
                    rollout.handle_node_online(tn, ro::NodeId(d.id.0));
                }
            }
            if d.next_sample <= now {
                d.next_sample = now + Duration::from_secs(30);
                if down {
                    d.boot_report = None;
                    continue;
                }
                let node = ro::NodeId(d.id.0);
                if let Some((version, confirmed)) = d.boot_report.take() {
                    if let Ok(version) = ro::ImageVersion::new(version) {
                        rollout.handle_report(
                            tn,
                            node,
                            ro::NodeReport::Booted { version, confirmed },
                        );
                    }
                }
                let up = now.saturating_since(d.boot_at);
                let jitter = (now.as_micros() / 1_000_000 * 7 + u64::from(d.number)) % 2000;
                let leak = match setup.firmware {
                    Firmware::Leak { bytes_per_min } if d.running == NEW_VERSION => {
                        up.as_micros() / 60_000_000 * u64::from(bytes_per_min)
                    }
                    _ => 0,
                };
                let sample = ro::HealthSample {
                    uptime: ro::Duration::from_micros(up.as_micros()),
                    reboots: d.boots,
                    free_heap: setup
                        .heap
                        .saturating_sub(u32::try_from(jitter + leak).unwrap_or(u32::MAX)),
                    alerts: 0,
                    app_ok: Some(true),
                };
                rollout.handle_health(tn, node, sample);
            }
        }
        // The gateway's restart.
        if let Some((w, after, downtime)) = restart {
            let started = log.iter().find_map(|e: &ro::RolloutEvent| match e.kind {
                ro::EventKind::WaveStarted { wave, .. } if wave == w => Some(e.at),
                _ => None,
            });
            if started.is_some_and(|s| tn >= s + ro::Duration::from_micros(after.as_micros())) {
                saved = serde_json::to_string(&rollout).ok();
                down_until = Some(now + downtime);
                sim.schedule(
                    now,
                    SimEvent::Reboot {
                        node: campaign.source,
                    },
                );
                restart = None;
            }
        }
        if down_until.is_some_and(|u| u <= now) {
            down_until = None;
            if let Some(back) = saved.take().and_then(|s| serde_json::from_str(&s).ok()) {
                rollout = back;
            }
            rollout.handle_restarted(tn);
            let mut retarget = Vec::new();
            for d in &devices {
                let id = ro::NodeId(d.id.0);
                if d.offline {
                    rollout.handle_node_offline(tn, id);
                    continue;
                }
                rollout.handle_node_online(tn, id);
                match rollout.node(id).map(ro::NodeRecord::state) {
                    Some(ro::NodeState::Installed { .. }) => {
                        if let Ok(version) = ro::ImageVersion::new(d.running.clone()) {
                            rollout.handle_report(
                                tn,
                                id,
                                ro::NodeReport::Booted {
                                    version,
                                    confirmed: true,
                                },
                            );
                        }
                    }
                    Some(ro::NodeState::Offered { .. } | ro::NodeState::Downloading { .. }) => {
                        retarget.push(d.id);
                    }
                    _ => {}
                }
            }
            for id in retarget {
                sim.with_node(gw, |node, local| {
                    node.with_plugin::<OtaReceiver<MemStore>, _>(local, |r, ctx| {
                        r.meshfleet_mut().map(|m| m.target(ctx, id))
                    })
                });
            }
        }
        if down_until.is_some() {
            continue;
        }
        if rollout.poll_timeout().is_some_and(|(at, _)| at <= tn) {
            rollout.handle_timeout(tn);
        }
        drive(&mut sim, &mut rollout, &mut log);
        let done = match rollout.phase() {
            ro::Phase::Completed => rollout
                .nodes()
                .all(|(_, r)| matches!(r.state(), ro::NodeState::Healthy { .. })),
            ro::Phase::Aborted { .. } => rollout.summary().restored_s.is_some(),
            _ => false,
        };
        if done {
            break;
        }
    }
    let duration_s = log.last().map_or(0.0, |e| {
        (e.at.as_micros().saturating_sub(start_at.as_micros())) as f64 / 1e6
    });
    let mut final_versions = BTreeMap::new();
    for d in &devices {
        let v = sim
            .node(d.id)
            .and_then(|n| n.plugin::<OtaReceiver<MemStore>>())
            .and_then(|r| {
                r.current()
                    .and_then(|c| c.image.as_ref().map(|i| i.version.clone()))
            })
            .unwrap_or_else(|| d.running.clone());
        final_versions.insert(d.number, v);
    }
    let report = sim.report();
    Ok(RolloutOutcome {
        summary: rollout.summary(),
        log,
        final_versions,
        accepted,
        offline_node,
        duration_s,
        report,
    })
}
