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
//!
//! The rollout is a workload ([`crate::workload`]): [`RolloutSetup`] is its spec (the
//! `[rollout]` table; it needs the scenario's meshfleet `[ota]` campaign, which it takes
//! over: the campaign runs under the controller, not on its own), [`RolloutWorkload`] the
//! running controller, a tick state machine: at the start (the campaign's start time plus
//! 1 ms) it plans the waves from the gateway's view of the mesh, then once a virtual second
//! it feeds the controller what the gateway heard and carries out its orders, until the
//! rollout completes or is rolled back (the run ends there) or `limit` passes. Its
//! outcome goes to [`SimReport::rollout`]. [`run_rollout`] runs one from code.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use meshfleet_agent::{BootAction, OtaReceiver};
use meshfleet_firmware::{Intent, Version};
use meshfleet_mesh::{Duration, Event, Instant, NodeId};
use meshfleet_ota::{MemStore, OtaEvent};
use meshfleet_rollout as ro;
use meshfleet_wire::NodeTree;

use serde::Deserialize;
use toml::Spanned;

use crate::metrics::SimReport;
use crate::ota::{test_signing_key, OtaCampaign, OtaStrategy, NEW_VERSION, OLD_VERSION};
use crate::scenario::{Scenario, SimEvent};
use crate::sim::Simulation;
use crate::workload::{check, TableError, TableSource, Workload, WorkloadSpec};

/// The workload's key: the `[rollout]` table, `summary.json`'s `rollout`.
pub const KEY: &str = "rollout";

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

impl WorkloadSpec for RolloutSetup {
    fn key(&self) -> &'static str {
        KEY
    }

    fn validate(&self, scenario: &Scenario) -> Result<(), String> {
        match crate::ota::campaign(scenario) {
            Some(c) if c.strategy == OtaStrategy::Meshfleet => Ok(()),
            _ => Err(format!("rollout: {NEEDS_CAMPAIGN}")),
        }
    }

    fn build(&self, scenario: &Scenario) -> Box<dyn Workload> {
        match crate::ota::campaign(scenario) {
            Some(c) => Box::new(RolloutWorkload::new(c.clone(), self.clone())),
            // `validate` refuses this before a run; built anyway, the run fails.
            None => Box::new(NoCampaign),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn describe(&self) -> Vec<String> {
        let firmware = match self.firmware {
            Firmware::Healthy => "a healthy build".to_owned(),
            Firmware::CrashLoop { after } => {
                format!(
                    "a build that crashes {:.0} s after boot",
                    after.as_secs_f64()
                )
            }
            Firmware::Leak { bytes_per_min } => {
                format!("a build leaking {bytes_per_min} bytes of heap a minute")
            }
        };
        vec![format!(
            "rollout: the OTA campaign's build goes out in waves under the rollout controller on the gateway ({firmware})"
        )]
    }

    fn takes_over(&self) -> &'static [&'static str] {
        &[crate::ota::KEY]
    }
}

/// A rollout built from a scenario without its campaign: fails the run.
struct NoCampaign;

impl Workload for NoCampaign {
    fn key(&self) -> &'static str {
        KEY
    }

    fn report(&mut self, _sim: &Simulation) -> serde_json::Value {
        serde_json::Value::Null
    }

    fn finish(&mut self, _sim: &Simulation, _report: &mut SimReport) {}

    fn take_error(&mut self) -> Option<crate::RunError> {
        Some(crate::RunError::Invalid(crate::InvalidScenario {
            field: KEY.to_owned(),
            message: NEEDS_CAMPAIGN.to_owned(),
        }))
    }
}

const NEEDS_CAMPAIGN: &str = "a rollout needs an `[ota]` table with strategy = \"meshfleet\"";

/// The rollout of `scenario`, if it has one.
pub fn setup(scenario: &Scenario) -> Option<&RolloutSetup> {
    scenario
        .workloads
        .iter()
        .find_map(|w| w.as_any().downcast_ref::<RolloutSetup>())
}

impl Scenario {
    /// Rolls the OTA campaign's build ([`Scenario::ota`], meshfleet strategy) out under
    /// the rollout controller as `setup` says (one rollout per scenario).
    pub fn rollout(mut self, setup: RolloutSetup) -> Self {
        self.workloads.retain(|w| w.key() != KEY);
        self.workloads.push(Arc::new(setup));
        self
    }
}

/// `[rollout]`: a progressive rollout of the `[ota]` campaign's build (meshfleet strategy).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    /// `healthy`, `crashloop` or `leak`.
    firmware: Spanned<String>,
    crash_after_s: Option<Spanned<f64>>,
    leak_bytes_per_min: Option<Spanned<i64>>,
    seed: Option<Spanned<i64>>,
    limit_s: Option<Spanned<f64>>,
    gateway_restart_wave: Option<Spanned<i64>>,
    gateway_restart_after_s: Option<Spanned<f64>>,
    gateway_restart_down_s: Option<Spanned<f64>>,
    offline_wave: Option<Spanned<i64>>,
    offline_from_s: Option<Spanned<f64>>,
    offline_to_s: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
struct File {
    rollout: RawRollout,
}

/// Parses the `[rollout]` table (after `[ota]`: the campaign must be a meshfleet one).
pub(crate) fn parse_table(src: &TableSource<'_>) -> Result<Arc<dyn WorkloadSpec>, TableError> {
    let File { rollout: r } = src.deserialize()?;
    let meshfleet = src.earlier.iter().any(|w| {
        w.as_any()
            .downcast_ref::<OtaCampaign>()
            .is_some_and(|c| c.strategy == OtaStrategy::Meshfleet)
    });
    if !meshfleet {
        return Err(TableError::at(r.firmware.span(), "", NEEDS_CAMPAIGN));
    }
    let secs = check::secs;
    let firmware = match r.firmware.get_ref().as_str() {
        "healthy" => Firmware::Healthy,
        "crashloop" => Firmware::CrashLoop {
            after: match &r.crash_after_s {
                Some(v) => secs(check::positive("crash_after_s", v)?),
                None => Duration::from_secs(40),
            },
        },
        "leak" => Firmware::Leak {
            bytes_per_min: match &r.leak_bytes_per_min {
                Some(v) => check::count("leak_bytes_per_min", v, 1)?,
                None => 2_000,
            },
        },
        other => {
            return Err(TableError::at(
                r.firmware.span(),
                "firmware",
                format!("unknown firmware behaviour `{other}` (healthy, crashloop, leak)"),
            ))
        }
    };
    let seed = match &r.seed {
        Some(v) => u64::from(check::count("seed", v, 0)?),
        None => 1,
    };
    let mut setup = RolloutSetup::new(firmware, seed);
    if let Some(v) = &r.limit_s {
        setup.limit = secs(check::positive("limit_s", v)?);
    }
    let wave = |field: &str, v: &Spanned<i64>| -> Result<u16, TableError> {
        let w = check::count(field, v, 0)?;
        u16::try_from(w)
            .ok()
            .filter(|w| usize::from(*w) < ro::MAX_WAVES)
            .ok_or_else(|| TableError::at(v.span(), field, "not a wave of the plan"))
    };
    if let Some(w) = &r.gateway_restart_wave {
        let after = match &r.gateway_restart_after_s {
            Some(v) => secs(check::non_negative("gateway_restart_after_s", v)?),
            None => Duration::from_secs(240),
        };
        let down = match &r.gateway_restart_down_s {
            Some(v) => secs(check::positive("gateway_restart_down_s", v)?),
            None => Duration::from_secs(300),
        };
        setup.gateway_restart = Some((wave("gateway_restart_wave", w)?, after, down));
    }
    if let Some(w) = &r.offline_wave {
        let from = match &r.offline_from_s {
            Some(v) => secs(check::non_negative("offline_from_s", v)?),
            None => Duration::ZERO,
        };
        let to = match &r.offline_to_s {
            Some(v) => secs(check::positive("offline_to_s", v)?),
            None => Duration::from_secs(3300),
        };
        setup.offline = Some((wave("offline_wave", w)?, from, to));
    }
    Ok(Arc::new(setup))
}

/// The controller and what it drives, once planned.
struct Active {
    gw: NodeId,
    rollout: ro::Rollout,
    old_sha: Option<meshfleet_firmware::Sha256Digest>,
    devices: Vec<Device>,
    log: Vec<ro::RolloutEvent>,
    accepted: BTreeSet<u32>,
    down_until: Option<Instant>,
    saved: Option<String>,
    restart: Option<(u16, Duration, Duration)>,
    offline_node: Option<u32>,
    offline: Option<(u32, Instant, Instant)>,
    issued: u64,
}

/// A running rollout: a tick state machine (see the module docs).
pub struct RolloutWorkload {
    setup: RolloutSetup,
    /// The campaign as the gateway runs it: empty scope, a start time.
    campaign: OtaCampaign,
    start_at: Instant,
    /// `start_at + limit`.
    end: Instant,
    events: Rc<RefCell<Vec<(NodeId, OtaEvent)>>>,
    next: Option<Instant>,
    active: Option<Box<Active>>,
    error: Option<ro::PlanError>,
    finished: bool,
}

impl RolloutWorkload {
    /// A rollout of `campaign`'s build (meshfleet strategy; its start time is when the
    /// rollout starts, 30 s if it has none) as `setup` says.
    pub fn new(campaign: OtaCampaign, setup: RolloutSetup) -> Self {
        let mut campaign = campaign;
        // The gateway's source offers nothing until the controller names a node.
        campaign.meshfleet.source_scope = Some(BTreeSet::new());
        let start = campaign.start_time().unwrap_or(Duration::from_secs(30));
        let campaign = campaign.start_at(start);
        let start_at = Instant::ZERO + start;
        Self {
            end: start_at + setup.limit,
            setup,
            campaign,
            start_at,
            events: Rc::default(),
            // The plan is made once the start has run.
            next: Some(start_at + Duration::from_millis(1)),
            active: None,
            error: None,
            finished: false,
        }
    }

    /// Plans the waves from the gateway's view of the mesh and carries out the first
    /// orders.
    fn plan(&self, sim: &mut Simulation) -> Result<Box<Active>, ro::PlanError> {
        let setup = &self.setup;
        let campaign = &self.campaign;
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
        let rollout = ro::Rollout::new(sim.now(), setup.config.clone(), infos)?;
        let old = campaign.old_image_info().clone();
        let devices: Vec<Device> = rollout
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
        let offline_node = setup.offline.and_then(|(wave, _, _)| {
            let id = rollout
                .nodes()
                .filter(|(id, r)| r.planned_wave() == wave && leaves.contains(&id.0))
                .map(|(id, _)| id.0)
                .min()?;
            sim.number_of(NodeId(id))
        });
        let start_at = self.start_at;
        let mut a = Box::new(Active {
            gw,
            rollout,
            old_sha: old.sha256.parse().ok(),
            devices,
            log: Vec::new(),
            accepted: BTreeSet::new(),
            down_until: None,
            saved: None,
            restart: setup.gateway_restart,
            offline_node,
            offline: setup
                .offline
                .zip(offline_node)
                .map(|((_, a, b), n)| (n, start_at + a, start_at + b)),
            issued: 1_000_000,
        });
        a.carry_out(sim, campaign);
        Ok(a)
    }

    /// What `a` ended with (after the run).
    fn outcome(&self, a: &Active, sim: &Simulation, report: SimReport) -> RolloutOutcome {
        let duration_s = a.log.last().map_or(0.0, |e| {
            (e.at.as_micros().saturating_sub(self.start_at.as_micros())) as f64 / 1e6
        });
        let mut final_versions = BTreeMap::new();
        for d in &a.devices {
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
        RolloutOutcome {
            summary: a.rollout.summary(),
            log: a.log.clone(),
            final_versions,
            accepted: a.accepted.clone(),
            offline_node: a.offline_node,
            duration_s,
            report,
        }
    }
}

impl Active {
    /// Carries out the controller's orders on the gateway's OTA engine and keeps its log.
    fn carry_out(&mut self, sim: &mut Simulation, campaign: &OtaCampaign) {
        let gw = self.gw;
        while let Some(o) = self.rollout.poll_order() {
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
                    let (Ok(v), Some(sha)) = (Version::parse(OLD_VERSION), self.old_sha) else {
                        continue;
                    };
                    self.issued += 1;
                    let mut cmd = Intent::rollback_to(
                        campaign.role(),
                        campaign.hardware(),
                        v,
                        sha,
                        vec![node.0],
                        self.issued,
                        3600,
                    );
                    cmd.sign(&test_signing_key());
                    gw_job(sim, &mut |m, ctx| {
                        m.send_rollback(ctx, NodeId(node.0), &cmd);
                    });
                }
            }
        }
        while let Some(e) = self.rollout.poll_event() {
            self.log.push(e);
        }
    }

    /// One virtual second of the rollout: what the gateway heard, the firmware's
    /// behaviour, the gateway's restart, the controller's timers and orders. Returns
    /// whether the rollout is over (completed and healthy, or rolled back).
    fn second(
        &mut self,
        sim: &mut Simulation,
        setup: &RolloutSetup,
        campaign: &OtaCampaign,
        events: &RefCell<Vec<(NodeId, OtaEvent)>>,
    ) -> bool {
        let now = sim.now();
        let tn = now;
        let down = self.down_until.is_some();
        let rollout = &mut self.rollout;
        // OTA events of the nodes.
        let fresh = std::mem::take(&mut *events.borrow_mut());
        for (id, e) in fresh {
            let Some(d) = self.devices.iter_mut().find(|d| d.id == id) else {
                continue;
            };
            let report = match e {
                OtaEvent::OfferAccepted { .. } => {
                    self.accepted.insert(d.number);
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
        if let Some((n, from, to)) = self.offline {
            if let Some(d) = self.devices.iter_mut().find(|d| d.number == n) {
                if now >= from && !d.offline && now < to {
                    d.offline = true;
                    sim.schedule(now, SimEvent::Crash { node: n });
                    if !down {
                        rollout.handle_node_offline(tn, ro::NodeId(d.id.0));
                    }
                } else if now >= to && d.offline {
                    d.offline = false;
                    self.offline = None;
                    d.reboot_at = Some(now);
                }
            }
        }
        for d in &mut self.devices {
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
                    uptime: up,
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
        if let Some((w, after, downtime)) = self.restart {
            let started = self
                .log
                .iter()
                .find_map(|e: &ro::RolloutEvent| match e.kind {
                    ro::EventKind::WaveStarted { wave, .. } if wave == w => Some(e.at),
                    _ => None,
                });
            if started.is_some_and(|s| tn >= s + after) {
                self.saved = serde_json::to_string(&*rollout).ok();
                self.down_until = Some(now + downtime);
                sim.schedule(
                    now,
                    SimEvent::Reboot {
                        node: campaign.source,
                    },
                );
                self.restart = None;
            }
        }
        if self.down_until.is_some_and(|u| u <= now) {
            self.down_until = None;
            if let Some(back) = self
                .saved
                .take()
                .and_then(|s| serde_json::from_str(&s).ok())
            {
                *rollout = back;
            }
            rollout.handle_restarted(tn);
            let mut retarget = Vec::new();
            for d in &self.devices {
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
            let gw = self.gw;
            for id in retarget {
                sim.with_node(gw, |node, local| {
                    node.with_plugin::<OtaReceiver<MemStore>, _>(local, |r, ctx| {
                        r.meshfleet_mut().map(|m| m.target(ctx, id))
                    })
                });
            }
        }
        if self.down_until.is_some() {
            return false;
        }
        if rollout.poll_timeout().is_some_and(|(at, _)| at <= tn) {
            rollout.handle_timeout(tn);
        }
        self.carry_out(sim, campaign);
        match self.rollout.phase() {
            ro::Phase::Completed => self
                .rollout
                .nodes()
                .all(|(_, r)| matches!(r.state(), ro::NodeState::Healthy { .. })),
            ro::Phase::Aborted { .. } => self.rollout.summary().restored_s.is_some(),
            _ => false,
        }
    }
}

impl Workload for RolloutWorkload {
    fn key(&self) -> &'static str {
        KEY
    }

    fn attach(&mut self, scenario: Scenario) -> Scenario {
        // The campaign runs under the controller: its own workload is not built
        // (`takes_over`), and its report is not kept.
        let (scenario, _run) = self.campaign.attach(scenario);
        scenario
    }

    fn install(&mut self, sim: &mut Simulation) {
        let sink = self.events.clone();
        sim.set_event_hook(move |_, id, e: &Event| {
            if let Event::Plugin { event, .. } = e {
                if let Some(ev) = event.downcast_ref::<OtaEvent>() {
                    sink.borrow_mut().push((id, ev.clone()));
                }
            }
        });
    }

    fn next_tick(&self) -> Option<Instant> {
        self.next
    }

    fn tick(&mut self, sim: &mut Simulation) {
        let now = sim.now();
        let Some(a) = self.active.as_mut() else {
            match self.plan(sim) {
                Ok(a) => {
                    self.active = Some(a);
                    self.next = Some(now + Duration::from_secs(1));
                }
                Err(e) => {
                    // No rollout: the run ends here and `run_scenario` says why.
                    self.error = Some(e);
                    self.finished = true;
                    self.next = None;
                }
            }
            return;
        };
        let done = a.second(sim, &self.setup, &self.campaign, &self.events);
        // The rollout's verdict, or its time limit, ends the run.
        if done || now >= self.end {
            self.finished = true;
            self.next = None;
        } else {
            self.next = Some(now + Duration::from_secs(1));
        }
    }

    fn report(&mut self, _sim: &Simulation) -> serde_json::Value {
        self.active
            .as_ref()
            .and_then(|a| serde_json::to_value(a.rollout.summary()).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    fn finish(&mut self, sim: &Simulation, report: &mut SimReport) {
        report.rollout = self.active.is_some().then(|| self.report(sim));
    }

    fn finished(&self) -> bool {
        self.finished
    }

    fn take_error(&mut self) -> Option<crate::RunError> {
        self.error.take().map(crate::RunError::Rollout)
    }
}

/// Runs `scenario` with `campaign` (meshfleet strategy; its `start_at` is when the rollout
/// starts) distributed by a rollout as `setup` says: the [`RolloutWorkload`] alone, with
/// its outcome in full.
///
/// A campaign without a start time starts at 30 s. Fails if the controller cannot plan
/// (the gateway saw no node at the start, or the configuration is invalid).
pub fn run_rollout(
    scenario: Scenario,
    campaign: OtaCampaign,
    setup: &RolloutSetup,
) -> Result<RolloutOutcome, ro::PlanError> {
    let mut w = RolloutWorkload::new(campaign, setup.clone());
    let scenario = w.attach(scenario);
    let mut sim = Simulation::new(scenario);
    w.install(&mut sim);
    // The workload's ticks, driven by hand to keep the controller at hand: the plan once
    // the start has run, then a second at a time until the verdict or the limit.
    sim.run_until(w.start_at + Duration::from_millis(1));
    let mut a = w.plan(&mut sim)?;
    while sim.now() < w.end {
        sim.run_for(Duration::from_secs(1));
        if a.second(&mut sim, &w.setup, &w.campaign, &w.events) {
            break;
        }
    }
    let report = sim.report();
    Ok(w.outcome(&a, &sim, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::synthetic_image;
    use crate::topology::Topology;

    fn scenario(setup: RolloutSetup) -> Scenario {
        let campaign = OtaCampaign::new(OtaStrategy::Meshfleet, synthetic_image(4096, 1))
            .expect("packs")
            .start_at(Duration::from_secs(30));
        Scenario::new(Topology::Line {
            nodes: 3,
            spacing_m: 30.0,
        })
        .duration(Duration::from_secs(8 * 3600))
        .ota(campaign)
        .rollout(setup)
    }

    #[test]
    fn a_rollout_that_cannot_plan_stops_the_run_with_the_planners_error() {
        let mut setup = RolloutSetup::new(Firmware::Healthy, 1);
        setup.config.max_in_flight = 0;
        let r = crate::run_scenario(scenario(setup), None, |_| {});
        assert!(
            matches!(r, Err(crate::RunError::Rollout(_))),
            "{:?}",
            r.map(|r| r.virtual_time_s)
        );
    }

    #[test]
    fn the_rollout_takes_over_the_campaign_and_ends_the_run_at_its_verdict() {
        let s = scenario(RolloutSetup::new(Firmware::Healthy, 1));
        assert_eq!(setup(&s).map(|r| r.firmware), Some(Firmware::Healthy));
        let r = crate::run_scenario(s, None, |_| {}).expect("runs");
        // The campaign ran under the controller, not as its own workload.
        assert!(r.ota.is_none());
        let summary = r.rollout.expect("the rollout's summary");
        assert_eq!(summary["state"], "completed", "{summary}");
        // A ten-minute health window after the start at 30 s at least, then the verdict
        // ends the run long before the scenario's eight hours.
        assert!(
            r.virtual_time_s > 630.0 && r.virtual_time_s < 3.0 * 3600.0,
            "{}",
            r.virtual_time_s
        );
    }
}
