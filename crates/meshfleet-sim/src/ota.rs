//! OTA campaigns in the simulator: the real OTA engine (`meshfleet-ota`) on every node,
//! one firmware image pushed from one source, measured against the lower bound of the
//! simulator's channel model.
//!
//! An [`OtaCampaign`] says what to distribute and how ([`OtaStrategy`]):
//!
//! * [`OtaStrategy::Stock`]: stock painlessMesh OTA. The source runs a
//!   [`StockSender`] (announce at start, then every 60 s, 60 times); every other node a
//!   [`StockReceiver`] with the library's timers (a request every 30 s, 10 tries), fetching
//!   the raw image part by part (1 KiB parts, base64 in JSON), each node on its own.
//! * [`OtaStrategy::StockBroadcasted`]: the library's `broadcasted` mode. Only the mesh root
//!   requests; Data goes out as BROADCAST and every receiver writes the parts in order; a
//!   receiver that sees a part out of sequence falls back to unicast requests, with the
//!   library's bug of asking in the root's name (`gap_request_from_self = false`): such a
//!   node never gets its part. The root is a *receiver* (the library's broadcast mode needs
//!   one that requests), see [`OtaCampaign::broadcast_root`].
//! * [`OtaStrategy::Meshfleet`]: the meshfleet protocol ([`meshfleet_ota::MeshfleetOta`]):
//!   the signed, deflated artefact, hop by hop, pipelined, NAK repair. Every node runs the
//!   node as shipped ([`meshfleet_agent::Agent`], as `meshfleet node` does), with the
//!   boot policy of an ESP ([`BootPolicy::on_restart`]). Each has a [`MemStore`] (A/B
//!   slots, staging, boot record) that the campaign keeps per node number, so a simulated
//!   reboot rebuilds the node over the same "flash" and the transfer resumes.
//!
//! The stock strategies model nodes running the C++ library (its sender and receiver
//! flows), not meshfleet nodes, so they run the engine's stock plugins directly.
//!
//! The campaign is attached to a [`Scenario`] through its node factory
//! ([`OtaCampaign::attach`]), which also schedules the start. [`OtaRun`] observes the run
//! (frame trace and node events) and writes an [`OtaReport`]: per-node update times,
//! makespan, success, bytes on air, bytes sent by the source, per-node OTA memory, the final
//! image of every node (checked in its store: new, old or broken), and the lower bound of
//! `docs/ota-protocol.md` ("Lower bound") computed from the tree formed at the start.
//!
//! `run_scenario` does all of this for a scenario whose `ota` field is set (scenario
//! files: the `[ota]` table). From code:
//!
//! ```no_run
//! use meshfleet_mesh::Duration;
//! use meshfleet_sim::ota::{synthetic_image, OtaCampaign, OtaStrategy};
//! use meshfleet_sim::{Scenario, Simulation, Topology};
//!
//! let campaign = OtaCampaign::new(OtaStrategy::Meshfleet, synthetic_image(64 * 1024, 1))?
//!     .start_at(Duration::from_secs(30));
//! let scenario = Scenario::new(Topology::RandomTree { nodes: 20, max_children: 4 })
//!     .duration(Duration::from_secs(120));
//! let (scenario, run) = campaign.attach(scenario);
//! let mut sim = Simulation::new(scenario);
//! run.install(&mut sim);
//! sim.run();
//! let report = run.report(&sim);
//! assert_eq!(report.updated, report.receivers);
//! # Ok::<(), meshfleet_sim::ota::OtaSetupError>(())
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

use meshfleet_agent::{Agent, AgentConfig, BootAction, BootPolicy, OtaReceiver, ReceiverConfig};
use meshfleet_firmware::{
    pack, Artefact, Codec, PackError, PackOptions, SigningKey, Version, VersionError,
};
use meshfleet_mesh::{
    Ctx, Duration, Event, Instant, LinkId, MeshChange, Node, NodeId, NodeTree, Plugin, Rng,
};
use meshfleet_ota::proto::BINARY_CHUNK_HEADER;
use meshfleet_ota::store::image_info;
use meshfleet_ota::{
    boot, ImageInfo, MemStore, MeshfleetConfig, OfferError, OtaEvent, SharedPages, SlotStore,
    StockOffer, StockReceiver, StockReceiverConfig, StockSender, StockSenderConfig, StockStyle,
};
use meshfleet_wire::{Package, Routing, BINARY_FRAME_MARK};
use serde::Serialize;

use crate::channel::{ChannelModel, LinkParams};
use crate::scenario::{NodeAction, NodeInit, Scenario, SimEvent};
use crate::sim::{FrameTrace, Simulation};
use crate::topology::dist;

/// Version of the firmware every receiver runs before the campaign.
pub const OLD_VERSION: &str = "1.0.0";
/// Version of the firmware the campaign distributes.
pub const NEW_VERSION: &str = "1.1.0";
/// Default node role of a campaign.
pub const DEFAULT_ROLE: &str = "sensor";
/// Default hardware of a campaign (the simulator's links are calibrated on ESP8266).
pub const DEFAULT_HARDWARE: &str = "ESP8266";
/// Boot attempts of a new image before the boot manager rolls it back.
const BOOT_ATTEMPTS: u32 = meshfleet_ota::DEFAULT_MAX_BOOT_ATTEMPTS;
/// Bytes of an MD5 context (`md5_context_t` on the ESP cores: state, count, buffer).
const MD5_CONTEXT_BYTES: u64 = 88;

/// The fixed Ed25519 key campaigns sign with: simulated runs must be reproducible, and
/// nothing here protects a real device.
pub fn test_signing_key() -> SigningKey {
    SigningKey::from_bytes(&[0x5e; 32])
}

/// How the image is distributed. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OtaStrategy {
    /// Stock painlessMesh OTA, unicast (every node fetches every part from the source).
    Stock,
    /// Stock painlessMesh OTA in the Alteriom `broadcasted` mode.
    StockBroadcasted,
    /// The meshfleet protocol.
    Meshfleet,
}

impl OtaStrategy {
    /// Every strategy, in report order.
    pub const ALL: [Self; 3] = [Self::Stock, Self::StockBroadcasted, Self::Meshfleet];

    /// The name used in scenario files and reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Stock => "stock",
            Self::StockBroadcasted => "stock_broadcasted",
            Self::Meshfleet => "meshfleet",
        }
    }

    /// Parses [`OtaStrategy::label`].
    pub fn from_label(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.label() == s)
    }
}

/// A campaign could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtaSetupError {
    /// The image could not be packed into an artefact.
    #[error("cannot pack the image: {0}")]
    Pack(#[from] PackError),
    /// The image cannot be offered to stock nodes.
    #[error("cannot offer the image to stock nodes: {0}")]
    Offer(#[from] OfferError),
    /// The campaign's version does not parse (a constant: never happens).
    #[error(transparent)]
    Version(#[from] VersionError),
}

/// Everything a campaign distributes, packed once and shared by all nodes.
struct Payload {
    image: Vec<u8>,
    artefact: Artefact,
    /// For the stock strategies (the raw image, 1 KiB parts).
    offer: StockOffer,
    new_info: ImageInfo,
    old_image: Vec<u8>,
    old_info: ImageInfo,
    /// The images and the artefact's payload as pages every receiver's store shares,
    /// instead of each holding a copy (host memory per node; the simulated nodes still
    /// each stage, flash and verify their own bytes).
    pages: SharedPages,
}

/// An OTA campaign: one image, one source, one strategy. Build with [`OtaCampaign::new`],
/// adjust with the setters, then [`OtaCampaign::attach`] it to a scenario (or put it in
/// the `ota` field of a [`Scenario`] and use `run_scenario`).
#[derive(Clone)]
pub struct OtaCampaign {
    /// How the image is distributed.
    pub strategy: OtaStrategy,
    /// The node that has the new image (1-based number).
    pub source: u32,
    /// When the source starts distributing (virtual time from 0). `None`: the caller starts
    /// it with [`OtaRun::start`].
    pub start: Option<Duration>,
    /// Timers of the stock sender (the library's `offerOTA`: 60 announces, 60 s apart).
    pub stock_sender: StockSenderConfig,
    /// Period of a stock receiver's request task (the library's 30 s).
    pub stock_retry_interval: Duration,
    /// Requests of a stock receiver's task before it gives up (the library's 10).
    pub stock_max_requests: u32,
    /// [`OtaStrategy::StockBroadcasted`]: the node made mesh root (`setRoot`) if the
    /// scenario names none. Default: node 1, or node 2 if node 1 is the source. Broadcast
    /// mode needs a root that is a receiver: only the root requests parts.
    pub broadcast_root: Option<u32>,
    /// Template of every meshfleet node's configuration (pacing, NAK timers, …). Role,
    /// hardware, running image and the trusted key are filled in per node.
    pub meshfleet: MeshfleetConfig,
    role: String,
    hardware: String,
    payload: Arc<Payload>,
}

impl std::fmt::Debug for OtaCampaign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtaCampaign")
            .field("strategy", &self.strategy)
            .field("source", &self.source)
            .field("start", &self.start)
            .field("image_bytes", &self.payload.image.len())
            .field("payload_bytes", &self.payload.artefact.payload().len())
            .field("role", &self.role)
            .field("hardware", &self.hardware)
            .finish_non_exhaustive()
    }
}

impl OtaCampaign {
    /// A campaign distributing `image` as version [`NEW_VERSION`] to nodes of role
    /// [`DEFAULT_ROLE`] on [`DEFAULT_HARDWARE`] running [`OLD_VERSION`], from node 1,
    /// started by hand ([`OtaRun::start`]) unless [`OtaCampaign::start_at`] is set. The
    /// image is packed once (deflate with the default 32 KiB window, 1 KiB chunks, signed
    /// with [`test_signing_key`]); [`OtaCampaign::with_window`] packs it for smaller
    /// receivers.
    pub fn new(strategy: OtaStrategy, image: Vec<u8>) -> Result<Self, OtaSetupError> {
        Self::for_target(strategy, image, DEFAULT_ROLE, DEFAULT_HARDWARE)
    }

    /// As [`OtaCampaign::new`], for nodes of `role` on `hardware`.
    pub fn for_target(
        strategy: OtaStrategy,
        image: Vec<u8>,
        role: &str,
        hardware: &str,
    ) -> Result<Self, OtaSetupError> {
        let artefact = pack_campaign(&image, role, hardware, meshfleet_firmware::DEFAULT_WINDOW)?;
        let offer = StockOffer::new(image.clone(), role, hardware, StockStyle::ALTERIOM)?;
        // What the receivers run: small (its content is never transferred) and different.
        let old_image: Vec<u8> = b"meshfleet-sim old firmware "
            .iter()
            .copied()
            .cycle()
            .take(4096)
            .collect();
        let payload = Payload {
            new_info: image_info(&image, NEW_VERSION),
            old_info: image_info(&old_image, OLD_VERSION),
            pages: SharedPages::new(&[&image, artefact.payload(), &old_image]),
            image,
            artefact,
            offer,
            old_image,
        };
        Ok(Self {
            strategy,
            source: 1,
            start: None,
            stock_sender: StockSenderConfig::default(),
            stock_retry_interval: StockReceiverConfig::new(role, hardware).retry_interval,
            stock_max_requests: StockReceiverConfig::new(role, hardware).max_requests,
            broadcast_root: None,
            meshfleet: MeshfleetConfig::new(role, hardware),
            role: role.to_owned(),
            hardware: hardware.to_owned(),
            payload: Arc::new(payload),
        })
    }

    /// When the campaign starts, if scheduled ([`OtaCampaign::start_at`]).
    pub fn start_time(&self) -> Option<Duration> {
        self.start
    }

    /// What the receivers run before the campaign ([`OLD_VERSION`]): a rollback names it.
    pub fn old_image_info(&self) -> &ImageInfo {
        &self.payload.old_info
    }

    /// The same image and settings with the artefact packed again with a `window`-byte
    /// DEFLATE window (a power of two from 512 to 32768; see
    /// [`PackOptions::window`](meshfleet_firmware::PackOptions::window)): 8192 is what an
    /// ESP8266 receiver can hold. The per-node memory in the report follows it.
    pub fn with_window(mut self, window: u32) -> Result<Self, OtaSetupError> {
        let p = &self.payload;
        let artefact = pack_campaign(&p.image, &self.role, &self.hardware, window)?;
        self.payload = Arc::new(Payload {
            pages: SharedPages::new(&[&p.image, artefact.payload(), &p.old_image]),
            image: p.image.clone(),
            artefact,
            offer: p.offer.clone(),
            new_info: p.new_info.clone(),
            old_image: p.old_image.clone(),
            old_info: p.old_info.clone(),
        });
        Ok(self)
    }

    /// The same image and settings with another strategy (the artefact is not packed again).
    #[must_use]
    pub fn with_strategy(mut self, strategy: OtaStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the source node.
    #[must_use]
    pub fn source(mut self, node: u32) -> Self {
        self.source = node;
        self
    }

    /// Starts the campaign at `at` (virtual time from 0).
    #[must_use]
    pub fn start_at(mut self, at: Duration) -> Self {
        self.start = Some(at);
        self
    }

    /// The raw image.
    pub fn image(&self) -> &[u8] {
        &self.payload.image
    }

    /// The packed, signed artefact.
    pub fn artefact(&self) -> &Artefact {
        &self.payload.artefact
    }

    /// Target role.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Target hardware.
    pub fn hardware(&self) -> &str {
        &self.hardware
    }

    /// The node made root for [`OtaStrategy::StockBroadcasted`] when the scenario has none.
    pub fn default_broadcast_root(&self) -> u32 {
        self.broadcast_root
            .unwrap_or(if self.source == 1 { 2 } else { 1 })
    }

    /// Checks the campaign against a mesh of `nodes` nodes: `(field, message)`.
    pub(crate) fn check(&self, nodes: u32) -> Result<(), (&'static str, String)> {
        let in_range = |v: u32| (1..=nodes).contains(&v);
        if !in_range(self.source) {
            return Err((
                "source",
                format!(
                    "names node {}, but nodes are numbered 1..={nodes}",
                    self.source
                ),
            ));
        }
        if nodes < 2 {
            return Err(("source", "a campaign needs at least one receiver".into()));
        }
        if let Some(r) = self.broadcast_root {
            if !in_range(r) {
                return Err((
                    "broadcast_root",
                    format!("names node {r}, but nodes are numbered 1..={nodes}"),
                ));
            }
            if r == self.source {
                return Err((
                    "broadcast_root",
                    "the root must be a receiver: in broadcast mode only the root requests".into(),
                ));
            }
        }
        Ok(())
    }

    /// Equips `scenario` for this campaign: its factory adds the OTA plugins to every node
    /// (wrapping the scenario's own factory), the start is scheduled if
    /// [`OtaCampaign::start`] is set, and for [`OtaStrategy::StockBroadcasted`] a root is
    /// named if the scenario has none. The returned [`OtaRun`] observes one run of the
    /// returned scenario: call [`OtaRun::install`] on its [`Simulation`] before running.
    ///
    /// The per-node stores live in the `OtaRun`: attach again for another run.
    pub fn attach(&self, mut scenario: Scenario) -> (Scenario, OtaRun) {
        scenario.ota = None;
        if self.strategy == OtaStrategy::StockBroadcasted && scenario.mesh.root.is_none() {
            scenario.mesh.root = Some(self.default_broadcast_root());
        }
        let shared = Arc::new(Mutex::new(Shared::default()));
        let inner = scenario.factory.clone();
        let campaign = self.clone();
        let s = shared.clone();
        scenario.factory = Arc::new(move |init: NodeInit<'_>| {
            let number = init.number;
            let mut node = inner(init);
            campaign.equip(&mut node, number, &s);
            node
        });
        let air = Rc::new(RefCell::new(Air {
            start: self.start.map(|d| Instant::ZERO + d),
            source: scenario.id_of(self.source),
            ..Air::default()
        }));
        if let Some(at) = self.start {
            let campaign = self.clone();
            let s = shared.clone();
            let action: NodeAction = Arc::new(move |node: &mut Node, now: Instant| {
                campaign.start_on(node, now, &s);
            });
            scenario.events.push((
                at,
                SimEvent::Action {
                    node: self.source,
                    action,
                },
            ));
        }
        let run = OtaRun {
            campaign: self.clone(),
            shared,
            air,
            id_base: scenario.id_base,
            nodes: scenario.topology.node_count(),
            start: self.start.map(|d| Instant::ZERO + d),
        };
        (scenario, run)
    }

    /// Adds this campaign's plugins to a node being built by the factory.
    fn equip(&self, node: &mut Node, number: u32, shared: &Arc<Mutex<Shared>>) {
        let mut sh = lock(shared);
        let p = &self.payload;
        match self.strategy {
            OtaStrategy::Stock | OtaStrategy::StockBroadcasted => {
                if number == self.source {
                    let style = StockStyle::Alteriom {
                        part_size: StockStyle::ALTERIOM.raw_part_size(),
                        broadcasted: self.strategy == OtaStrategy::StockBroadcasted,
                    };
                    let offer = StockOffer::new(p.image.clone(), &self.role, &self.hardware, style)
                        .unwrap_or_else(|_| p.offer.clone());
                    node.add_plugin(Box::new(StockSource {
                        sender: StockSender::new(offer, self.stock_sender.clone()),
                        // The library's setup() calls offerOTA at every boot: a source
                        // rebooted after the start offers again at once.
                        start_pending: sh.started,
                    }))
                    .expect("a fresh node: the campaign's plugin is its first");
                } else {
                    let mut c = StockReceiverConfig::new(&self.role, &self.hardware);
                    // A stock node keeps nothing of a transfer across a reboot; once
                    // updated, it runs the new image.
                    c.current_md5 = Some(if sh.updated_at.contains_key(&number) {
                        p.new_info.md5.clone()
                    } else {
                        p.old_info.md5.clone()
                    });
                    c.retry_interval = self.stock_retry_interval;
                    c.max_requests = self.stock_max_requests;
                    c.keep_image = false;
                    c.gap_request_from_self = false;
                    node.add_plugin(Box::new(StockReceiver::new(c)))
                        .expect("a fresh node: the campaign's plugin is its first");
                }
            }
            OtaStrategy::Meshfleet => {
                let store = sh
                    .stores
                    .entry(number)
                    .or_insert_with(|| {
                        MemStore::with_shared(&p.old_image, OLD_VERSION, p.pages.clone())
                    })
                    .clone();
                // The node as shipped (`meshfleet-agent`), on an ESP: a committed image
                // boots at the next start, and the simulated firmware is healthy by
                // construction, so an image on trial confirms itself at once.
                let mut policy = BootPolicy::on_restart();
                policy.max_boot_attempts = BOOT_ATTEMPTS;
                let mut rc = ReceiverConfig::new(&self.role, &self.hardware, policy);
                rc.meshfleet = Some(self.meshfleet.clone());
                rc.stock = None;
                rc.trusted_key = Some(test_signing_key().verifying_key());
                if number == self.source && sh.started {
                    rc.source = Some((p.artefact.clone(), None));
                }
                match OtaReceiver::open(rc, store.clone(), Box::new(store)) {
                    Ok(mut receiver) => {
                        while let Some(action) = receiver.poll_action() {
                            if matches!(action, BootAction::Failed { .. }) {
                                sh.counters.store_errors += 1;
                            }
                        }
                        Agent::equip(
                            node,
                            AgentConfig {
                                receiver: Some(receiver),
                                extra: Vec::new(),
                            },
                        )
                        .expect("a fresh node: the agent's plugins are its first");
                    }
                    Err(_) => sh.counters.store_errors += 1,
                }
            }
        }
    }

    /// Makes the source start distributing (the scheduled action or [`OtaRun::start`]).
    fn start_on(&self, node: &mut Node, now: Instant, shared: &Arc<Mutex<Shared>>) {
        {
            let mut sh = lock(shared);
            sh.started = true;
            // The source's view of the mesh is the tree the campaign runs on.
            sh.tree = Some(node.topology());
        }
        match self.strategy {
            OtaStrategy::Stock | OtaStrategy::StockBroadcasted => {
                node.with_plugin::<StockSource, _>(now, |s, ctx| {
                    s.start_pending = false;
                    s.sender.start(ctx);
                });
            }
            OtaStrategy::Meshfleet => {
                let artefact = self.payload.artefact.clone();
                node.with_plugin::<OtaReceiver<MemStore>, _>(now, |o, ctx| {
                    o.start_source(ctx, artefact, None)
                });
            }
        }
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // The simulator is single-threaded; a panic elsewhere leaves consistent data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A [`StockSender`] that starts by itself after a reboot (the library's `offerOTA` runs in
/// `setup()`), where the first start is the campaign's.
struct StockSource {
    sender: StockSender,
    start_pending: bool,
}

impl Plugin for StockSource {
    fn name(&self) -> &'static str {
        self.sender.name()
    }
    fn claims(&self) -> meshfleet_mesh::Claims {
        self.sender.claims()
    }
    fn handle_package(&mut self, ctx: &mut Ctx<'_>, link: LinkId, routing: Routing, pkg: &Package) {
        self.sender.handle_package(ctx, link, routing, pkg);
    }
    fn handle_change(&mut self, ctx: &mut Ctx<'_>, change: &MeshChange) {
        self.sender.handle_change(ctx, change);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        // "As soon as possible": the driver clamps a past deadline to now.
        if self.start_pending {
            return Some(Instant::ZERO);
        }
        self.sender.poll_timeout()
    }
    fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        if self.start_pending {
            self.start_pending = false;
            self.sender.start(ctx);
            return;
        }
        self.sender.handle_timeout(ctx);
    }
}

/// State shared by the factory, the start action and the event hook (all may run on any
/// clone of the scenario, hence `Arc<Mutex<_>>`).
#[derive(Default)]
struct Shared {
    started: bool,
    stores: BTreeMap<u32, MemStore>,
    /// First update of each node, global time.
    updated_at: BTreeMap<u32, Instant>,
    tree: Option<NodeTree>,
    counters: OtaCounters,
}

/// What the frame trace counts.
#[derive(Default)]
struct Air {
    start: Option<Instant>,
    source: NodeId,
    ota_frames: u64,
    ota_bytes: u64,
    since_start_bytes: u64,
    source_ota_bytes: u64,
    source_bytes: u64,
    /// `since_start_bytes` when the latest node updated.
    at_last_update: u64,
    max_offer_frame: u64,
    max_data_frame: u64,
}

/// OTA package types: stock 10-12, meshfleet 700-709 (binary chunks are tagged 703).
fn is_ota_type(ty: i64) -> bool {
    (10..=12).contains(&ty) || (700..=709).contains(&ty)
}

/// The package type of a frame on the air: the tag of a binary frame, or the first
/// `"type":` of a JSON frame (every painlessMesh package has it among its first keys).
pub fn frame_type(frame: &[u8]) -> Option<i64> {
    if frame.first() == Some(&BINARY_FRAME_MARK) {
        let t = frame.get(5..7)?;
        return Some(i64::from(u16::from_le_bytes([t[0], t[1]])));
    }
    const KEY: &[u8] = b"\"type\":";
    let head = &frame[..frame.len().min(128)];
    let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'-')
        .count();
    std::str::from_utf8(&frame[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Counts of notable OTA events over the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct OtaCounters {
    /// Stock receivers whose request task gave up.
    pub gave_up: u64,
    /// Stock receivers that saw a broadcast part out of sequence.
    pub broadcast_gaps: u64,
    /// Stock updates that failed (MD5, write).
    pub update_failed: u64,
    /// meshfleet chunks rejected (hash, length, …).
    pub chunks_rejected: u64,
    /// meshfleet complete images that failed verification (or store failures).
    pub verify_failed: u64,
    /// meshfleet offers refused.
    pub offers_rejected: u64,
    /// Store or boot-record operations that failed in the simulator's wrapper.
    pub store_errors: u64,
}

/// Which image a node runs (or boots next) at the end, as its storage says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalImage {
    /// The verified new image (running, or committed and booting next).
    New,
    /// Its old image.
    Old,
    /// Anything else: a slot that does not hash to its record, or an image that is neither.
    Broken,
}

/// One receiver's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct OtaNodeReport {
    /// Node number.
    pub node: u32,
    /// Hops from the source in the tree at the start (`None`: not in the source's mesh).
    pub depth: Option<u32>,
    /// When it first held the verified new image, virtual seconds after the start.
    pub updated_after_s: Option<f64>,
    /// What it runs or boots next at the end.
    pub image: FinalImage,
}

/// The lower bound of `docs/ota-protocol.md` ("Lower bound") for one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LowerBound {
    /// Payload S (the compressed artefact payload), bytes.
    pub payload_bytes: u64,
    /// Largest payload per frame c (the artefact's chunk size), bytes.
    pub chunk_bytes: u32,
    /// Frames per link, ⌈S / c⌉.
    pub frames: u64,
    /// Depth D of the tree rooted at the source (hops to the farthest receiver).
    pub depth: u32,
    /// Most children of one node in that tree.
    pub max_children: u32,
    /// Expected time a full chunk frame holds its link (overhead, bytes, retransmissions
    /// and their timeouts), ms.
    pub frame_link_ms: f64,
    /// Expected time a full chunk frame holds its sender's radio (timeouts excluded), ms.
    pub frame_radio_ms: f64,
    /// (a) store-and-forward pipeline down the deepest path, seconds.
    pub pipeline_s: f64,
    /// (b) a node with k children sends the payload k times on its radio (airtime and
    /// geometric channels), seconds.
    pub airtime_s: Option<f64>,
    /// (c) the transmissions of nodes within half the interference range of a point are
    /// serialized (geometric channel), seconds.
    pub interference_s: Option<f64>,
    /// The bound: the largest of the above (the mean-value bound).
    pub bound_s: f64,
    /// Which term binds: `pipeline`, `airtime` or `interference`.
    pub binding: &'static str,
    /// Segments per link in the stochastic bounds for any protocol, ⌈S / MSS⌉: the fewest
    /// TCP segments S fits in.
    pub segments: u64,
    /// (d) the stochastic pipeline down the deepest path, for any protocol (frames of any
    /// size): the expected completion time of the tandem of D lossy links, stalls
    /// propagating down the path (last-passage percolation over segments × hops), by Monte
    /// Carlo. Bounds the expected makespan.
    pub stochastic_pipeline: MonteCarlo,
    /// (d) the same over the whole tree: the expected time until the *last* receiver is
    /// done, every root-to-node path at once (at least the deepest path's).
    pub stochastic_tree: MonteCarlo,
    /// Segments per link in the stochastic bounds for frames of at most c payload bytes
    /// (the class (a)-(c) bound), ⌈S / min(c, MSS)⌉.
    pub chunk_segments: u64,
    /// (d) down the deepest path for protocols whose frames carry at most c payload bytes:
    /// more segments (each can stall) and one frame overhead per segment.
    pub stochastic_pipeline_chunked: MonteCarlo,
    /// (d) over the whole tree for frames of at most c payload bytes.
    pub stochastic_tree_chunked: MonteCarlo,
    /// The combined bound on the expected makespan of protocols whose frames carry at most
    /// c payload bytes: the largest of `bound_s` and the stochastic estimates.
    pub combined_bound_s: f64,
    /// Which term binds the combined bound: one of `binding`'s, or the name of a
    /// stochastic field (`stochastic_tree_chunked`, …).
    pub combined_binding: &'static str,
}

/// A Monte Carlo estimate of an expectation (fixed seed, so the same inputs always give the
/// same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MonteCarlo {
    /// The sample mean, seconds.
    pub mean_s: f64,
    /// Its standard error (sample standard deviation / √samples), seconds: the 95%
    /// confidence interval is `mean_s ± 1.96·se_s`.
    pub se_s: f64,
    /// Standard deviation of the sampled quantity itself, seconds: how far one run
    /// scatters around the mean. A bound on an expectation can be beaten by one lucky run.
    pub sd_s: f64,
    /// The sampled quantity's 5% quantile, seconds. The bounded makespan is at least the
    /// sampled quantity in every run (`docs/ota-protocol.md` §7.6), so a run shorter than
    /// this happens with probability at most 5%: a bound for single runs.
    pub q05_s: f64,
    /// Samples drawn (fewer when the samples all agree, as without loss).
    pub samples: u32,
}

/// The result of a campaign. In `summary.json` under `ota`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct OtaReport {
    /// `stock`, `stock_broadcasted` or `meshfleet`.
    pub strategy: String,
    /// Source node number.
    pub source: u32,
    /// Raw image size, bytes.
    pub image_bytes: u64,
    /// Compressed, chunked payload size S (meshfleet transfers this), bytes.
    pub payload_bytes: u64,
    /// When the source started, virtual seconds (`None`: never started).
    pub started_s: Option<f64>,
    /// How long the run went on after the start, virtual seconds.
    pub observed_s: Option<f64>,
    /// Receivers: every node but the source.
    pub receivers: u32,
    /// Receivers that got the verified new image.
    pub updated: u32,
    /// `updated / receivers`.
    pub success_ratio: f64,
    /// Time from the start until the last receiver was updated, if all were.
    pub makespan_s: Option<f64>,
    /// Time from the start until the latest update so far.
    pub last_update_s: Option<f64>,
    /// Frames of OTA package types (10-12, 700-709, binary chunks) put on the air.
    pub ota_frames_on_air: u64,
    /// Their bytes.
    pub ota_bytes_on_air: u64,
    /// All bytes put on the air from the start until the latest update (mesh traffic
    /// included).
    pub bytes_on_air_until_last_update: u64,
    /// All bytes put on the air from the start until the end of the run.
    pub bytes_on_air_since_start: u64,
    /// OTA bytes the source put on the air.
    pub source_ota_bytes: u64,
    /// All bytes the source put on the air since the start.
    pub source_bytes: u64,
    /// Peak RAM one receiver needs for the update, bytes (definition in
    /// `docs/ota-protocol.md`, "Lower bound"; largest over the receivers).
    pub peak_node_ota_memory_bytes: u64,
    /// Receivers whose storage ends on the new image / the old one / neither.
    pub final_new: u32,
    /// See `final_new`.
    pub final_old: u32,
    /// See `final_new`.
    pub final_broken: u32,
    /// Notable events.
    pub counters: OtaCounters,
    /// The lower bound for this run's tree and links (`None` before the start).
    pub lower_bound: Option<LowerBound>,
    /// `makespan_s / lower_bound.bound_s` (the mean-value bound).
    pub ratio_to_bound: Option<f64>,
    /// `makespan_s / lower_bound.combined_bound_s` (mean-value and stochastic bounds).
    pub ratio_to_combined_bound: Option<f64>,
    /// Per receiver.
    pub per_node: Vec<OtaNodeReport>,
}

/// The campaign as a workload ([`crate::workload`]): `run_scenario` attaches, installs and
/// reports it like any other, its report in [`crate::SimReport::ota`].
pub struct OtaWorkload {
    campaign: OtaCampaign,
    run: Option<OtaRun>,
}

impl OtaWorkload {
    /// A workload running `campaign`.
    pub fn new(campaign: OtaCampaign) -> Self {
        Self {
            campaign,
            run: None,
        }
    }
}

impl crate::workload::Workload for OtaWorkload {
    fn key(&self) -> &'static str {
        "ota"
    }

    fn attach(&mut self, scenario: Scenario) -> Scenario {
        let (s, run) = self.campaign.attach(scenario);
        self.run = Some(run);
        s
    }

    fn install(&mut self, sim: &mut Simulation) {
        if let Some(run) = &self.run {
            run.install(sim);
        }
    }

    fn report(&mut self, sim: &Simulation) -> serde_json::Value {
        self.run
            .as_ref()
            .and_then(|r| serde_json::to_value(r.report(sim)).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    fn finish(&mut self, sim: &Simulation, report: &mut crate::SimReport) {
        report.ota = self.run.as_ref().map(|r| r.report(sim));
    }
}

/// Observes one run of a scenario equipped by [`OtaCampaign::attach`].
pub struct OtaRun {
    campaign: OtaCampaign,
    shared: Arc<Mutex<Shared>>,
    air: Rc<RefCell<Air>>,
    id_base: u32,
    nodes: u32,
    start: Option<Instant>,
}

impl OtaRun {
    /// Installs the frame trace and the event hook that measure the campaign (replacing
    /// any set before). Call before running.
    pub fn install(&self, sim: &mut Simulation) {
        let air = self.air.clone();
        sim.set_frame_trace(move |f: &FrameTrace<'_>| {
            let mut a = air.borrow_mut();
            let ty = frame_type(f.frame);
            let ota = ty.is_some_and(is_ota_type);
            let bytes = f.bytes as u64;
            if ota {
                a.ota_frames += 1;
                a.ota_bytes += bytes;
                match ty {
                    Some(701) => a.max_offer_frame = a.max_offer_frame.max(bytes),
                    Some(12) => a.max_data_frame = a.max_data_frame.max(bytes),
                    _ => {}
                }
            }
            if a.start.is_some_and(|s| f.start >= s) {
                a.since_start_bytes += bytes;
                if f.from == a.source {
                    a.source_bytes += bytes;
                    if ota {
                        a.source_ota_bytes += bytes;
                    }
                }
            }
        });
        let air = self.air.clone();
        let shared = self.shared.clone();
        let base = self.id_base;
        let strategy = self.campaign.strategy;
        sim.set_event_hook(move |now: Instant, id: NodeId, e: &Event| {
            let Event::Plugin { event, .. } = e else {
                return;
            };
            let Some(ev) = event.downcast_ref::<OtaEvent>() else {
                return;
            };
            let number = id.0.wrapping_sub(base);
            let mut sh = lock(&shared);
            let c = &mut sh.counters;
            let updated = match ev {
                OtaEvent::Updated { .. } => strategy != OtaStrategy::Meshfleet,
                OtaEvent::Applied { .. } => strategy == OtaStrategy::Meshfleet,
                OtaEvent::GaveUp { .. } => {
                    c.gave_up += 1;
                    false
                }
                OtaEvent::BroadcastGap { .. } => {
                    c.broadcast_gaps += 1;
                    false
                }
                OtaEvent::UpdateFailed { .. } => {
                    c.update_failed += 1;
                    false
                }
                OtaEvent::ChunkRejected { .. } => {
                    c.chunks_rejected += 1;
                    false
                }
                OtaEvent::VerifyFailed { .. } => {
                    c.verify_failed += 1;
                    false
                }
                OtaEvent::OfferRejected { .. } => {
                    c.offers_rejected += 1;
                    false
                }
                _ => false,
            };
            if updated && !sh.updated_at.contains_key(&number) {
                sh.updated_at.insert(number, now);
                let mut a = air.borrow_mut();
                a.at_last_update = a.since_start_bytes;
            }
        });
    }

    /// Starts the campaign now (for campaigns without [`OtaCampaign::start`]). Returns
    /// `false` if it had started already or the source is not running.
    pub fn start(&mut self, sim: &mut Simulation) -> bool {
        if self.start.is_some() {
            return false;
        }
        let now = sim.now();
        let campaign = self.campaign.clone();
        let shared = self.shared.clone();
        let id = sim.id_of(self.campaign.source);
        let done = sim
            .with_node(id, move |node, local| {
                campaign.start_on(node, local, &shared)
            })
            .is_some();
        if done {
            self.start = Some(now);
            self.air.borrow_mut().start = Some(now);
        }
        done
    }

    /// When the campaign starts (or started), global virtual time.
    pub fn started_at(&self) -> Option<Instant> {
        self.start
    }

    /// Receivers: every node but the source.
    pub fn receivers(&self) -> u32 {
        self.nodes.saturating_sub(1)
    }

    /// Receivers updated so far.
    pub fn updated(&self) -> u32 {
        lock(&self.shared).updated_at.len() as u32
    }

    /// Receivers updated so far (node numbers) and when, global virtual time.
    pub fn updated_at(&self) -> Vec<(u32, Instant)> {
        lock(&self.shared)
            .updated_at
            .iter()
            .map(|(n, t)| (*n, *t))
            .collect()
    }

    /// Whether every receiver is updated.
    pub fn all_updated(&self) -> bool {
        self.updated() >= self.receivers()
    }

    /// The campaign this run observes.
    pub fn campaign(&self) -> &OtaCampaign {
        &self.campaign
    }

    /// The report so far.
    pub fn report(&self, sim: &Simulation) -> OtaReport {
        let sh = lock(&self.shared);
        let air = self.air.borrow();
        let c = &self.campaign;
        let p = &c.payload;
        let manifest = p.artefact.manifest();
        let start = self.start.filter(|s| *s <= sim.now() && sh.started);
        let since = |t: Instant| start.map(|s| secs(t.saturating_since(s)));
        let shape = sh
            .tree
            .as_ref()
            .map(|t| TreeShape::from_tree(t, self.id_base, self.nodes));
        let mut per_node = Vec::new();
        let (mut new, mut old, mut broken) = (0, 0, 0);
        for number in (1..=self.nodes).filter(|n| *n != c.source) {
            let image = match c.strategy {
                OtaStrategy::Meshfleet => sh
                    .stores
                    .get(&number)
                    .map_or(FinalImage::Old, |s| final_image(s, p)),
                // The library checks the MD5 of the whole image before it switches:
                // a stock node runs the new image or the old one.
                _ if sh.updated_at.contains_key(&number) => FinalImage::New,
                _ => FinalImage::Old,
            };
            match image {
                FinalImage::New => new += 1,
                FinalImage::Old => old += 1,
                FinalImage::Broken => broken += 1,
            }
            per_node.push(OtaNodeReport {
                node: number,
                depth: shape
                    .as_ref()
                    .and_then(|s| s.depth.get(number as usize - 1).copied().flatten()),
                updated_after_s: sh.updated_at.get(&number).and_then(|t| since(*t)),
                image,
            });
        }
        let receivers = self.receivers();
        let updated = sh.updated_at.len() as u32;
        let last = sh.updated_at.values().max().and_then(|t| since(*t));
        let makespan = last.filter(|_| updated >= receivers);
        let lower_bound = shape.as_ref().filter(|_| start.is_some()).map(|s| {
            lower_bound(
                s,
                p.artefact.payload().len() as u64,
                manifest.chunk_size,
                // The links as they are now: a `SetLink` for all links (say, loss applied
                // once the mesh has formed) is what the campaign ran under.
                sim.link_defaults(),
                // Likewise the channel model: a run may form under one and switch.
                sim.channel(),
                sim.positions(),
            )
        });
        let memory = match c.strategy {
            OtaStrategy::Meshfleet => {
                let children = shape.as_ref().map_or(0, |s| {
                    (1..=self.nodes)
                        .filter(|n| *n != c.source)
                        .map(|n| s.children[n as usize - 1])
                        .max()
                        .unwrap_or(0)
                });
                meshfleet_memory(manifest, children, air.max_offer_frame)
            }
            _ => stock_memory(c, air.max_data_frame),
        };
        OtaReport {
            strategy: c.strategy.label().to_owned(),
            source: c.source,
            image_bytes: p.image.len() as u64,
            payload_bytes: p.artefact.payload().len() as u64,
            started_s: start.map(secs_at),
            observed_s: since(sim.now()),
            receivers,
            updated,
            success_ratio: if receivers > 0 {
                f64::from(updated) / f64::from(receivers)
            } else {
                1.0
            },
            makespan_s: makespan,
            last_update_s: last,
            ota_frames_on_air: air.ota_frames,
            ota_bytes_on_air: air.ota_bytes,
            bytes_on_air_until_last_update: air.at_last_update,
            bytes_on_air_since_start: air.since_start_bytes,
            source_ota_bytes: air.source_ota_bytes,
            source_bytes: air.source_bytes,
            peak_node_ota_memory_bytes: memory,
            final_new: new,
            final_old: old,
            final_broken: broken,
            counters: sh.counters.clone(),
            ratio_to_bound: match (&lower_bound, makespan) {
                (Some(b), Some(m)) if b.bound_s > 0.0 => Some(m / b.bound_s),
                _ => None,
            },
            ratio_to_combined_bound: match (&lower_bound, makespan) {
                (Some(b), Some(m)) if b.combined_bound_s > 0.0 => Some(m / b.combined_bound_s),
                _ => None,
            },
            lower_bound,
            per_node,
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e6
}

fn secs_at(t: Instant) -> f64 {
    t.as_micros() as f64 / 1e6
}

/// What a meshfleet node's storage boots next (the boot manager's decision, without
/// counting an attempt), checked against the slot's bytes.
fn final_image(store: &MemStore, p: &Payload) -> FinalImage {
    let mut s = store.clone();
    let Ok(Some(rec)) = s.load_boot() else {
        return FinalImage::Broken;
    };
    let hashes = |s: &mut MemStore, slot, info: &ImageInfo| {
        boot::slot_sha256(s, slot, info.size).is_ok_and(|h| h == info.sha256)
    };
    let mut slot = rec.active;
    if let Some(pending) = rec.pending {
        // `on_boot` boots a pending image that still hashes to its record (with attempts
        // left) and rolls back otherwise.
        if rec.attempts < BOOT_ATTEMPTS
            && rec
                .image(pending)
                .is_some_and(|info| hashes(&mut s, pending, info))
        {
            slot = pending;
        }
    }
    match rec.image(slot) {
        Some(info) if hashes(&mut s, slot, info) => {
            if info.sha256 == p.new_info.sha256 {
                FinalImage::New
            } else if info.sha256 == p.old_info.sha256 {
                FinalImage::Old
            } else {
                FinalImage::Broken
            }
        }
        _ => FinalImage::Broken,
    }
}

/// The campaign's artefact: deflate with `window`, 1 KiB chunks, signed with
/// [`test_signing_key`], created at a fixed time so that the artefact (and every run) is a
/// pure function of the image.
fn pack_campaign(
    image: &[u8],
    role: &str,
    hardware: &str,
    window: u32,
) -> Result<Artefact, OtaSetupError> {
    let key = test_signing_key();
    let mut opts = PackOptions::new(role, hardware, Version::parse(NEW_VERSION)?);
    opts.codec = Codec::Deflate;
    opts.window = window;
    opts.created = Some(1_767_225_600);
    opts.signing_key = Some(&key);
    Ok(pack(image, opts)?)
}

/// RAM a meshfleet receiver needs for the update, bytes: the larger of the OFFER phase (the
/// OFFER frame being parsed: the lean manifest) and the transfer phase (the DEFLATE
/// decoder for the artefact's window: the window and the inflater's tables; one chunk
/// frame, its own unit bitmap and one "wanted" bitmap per downstream neighbour). Staged
/// chunks, the chunk table's hash pages (a chunk is checked against its 16-byte entry read
/// back from flash) and the image go to flash, not RAM.
fn meshfleet_memory(m: &meshfleet_firmware::Manifest, children: u32, offer_frame: u64) -> u64 {
    let units = meshfleet_ota::proto::Layout::of(m).units();
    let bitmap = u64::from(units).div_ceil(8);
    // Codec none passes chunks straight to the slot: no decoder buffers to count.
    let decoder = match m.codec {
        Codec::Deflate => m.decoder_footprint() as u64,
        Codec::None => 0,
    };
    let frame = u64::from(m.chunk_size) + BINARY_CHUNK_HEADER as u64 + 5;
    let transfer = decoder + frame + bitmap * (1 + u64::from(children));
    let offer = offer_frame.max(m.lean().json_len() as u64);
    transfer.max(offer)
}

/// RAM a stock receiver needs for the update, bytes: the Data frame being parsed (JSON with
/// the base64 part), the decoded part handed to `Update.write`, and the MD5 context.
fn stock_memory(c: &OtaCampaign, data_frame: u64) -> u64 {
    let offer = &c.payload.offer;
    let part = u64::from(offer.style().raw_part_size()).min(offer.image().len() as u64);
    let frame = if data_frame > 0 {
        data_frame
    } else {
        // Not seen on the air (no transfer): the frame of part 0 as the library sends it.
        let req = offer.announce(1).request(u32::MAX, 0);
        let reply = req.reply(offer.part_base64(0).unwrap_or_default());
        Package::from_serialize(&reply).map_or(0, |p| p.text().len() as u64 + 1)
    };
    frame + part + MD5_CONTEXT_BYTES
}

/// The tree the campaign runs on, by node index (number − 1): depth from the source,
/// number of children and parent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeShape {
    /// Depth of each node (`None`: not in the tree).
    pub depth: Vec<Option<u32>>,
    /// Children of each node.
    pub children: Vec<u32>,
    /// Parent of each node, by index (`None`: the root, or not in the tree). Only the
    /// stochastic bound over the whole tree reads it; left empty, that bound falls back
    /// to the deepest path.
    pub parent: Vec<Option<u32>>,
}

impl TreeShape {
    /// From a node's view of the mesh (`Node::topology`), which is the tree rooted at it.
    pub fn from_tree(tree: &NodeTree, id_base: u32, nodes: u32) -> Self {
        let n = nodes as usize;
        let mut s = Self {
            depth: vec![None; n],
            children: vec![0; n],
            parent: vec![None; n],
        };
        let mut stack = vec![(tree, 0u32, None)];
        while let Some((t, d, up)) = stack.pop() {
            let Some(i) = t
                .node_id
                .0
                .checked_sub(id_base)
                .and_then(|k| (k as usize).checked_sub(1))
                .filter(|i| *i < n)
            else {
                continue;
            };
            s.depth[i] = Some(d);
            s.children[i] = t.subs.len() as u32;
            s.parent[i] = up;
            for sub in &t.subs {
                stack.push((sub, d + 1, Some(i as u32)));
            }
        }
        s
    }

    /// From the parent of every node by index and the root's index: `parents[root]` is
    /// ignored; other nodes with no parent, or whose parent chain does not reach the root
    /// (a cycle, an index out of range), are outside the tree.
    pub fn from_parents(parents: &[Option<u32>], root: u32) -> Self {
        let n = parents.len();
        let mut s = Self {
            depth: vec![None; n],
            children: vec![0; n],
            parent: vec![None; n],
        };
        for i in 0..n {
            // Walk up to the root; more than n steps is a cycle.
            let mut d = 0u32;
            let mut at = i;
            let reached = loop {
                if at == root as usize {
                    break true;
                }
                match parents[at] {
                    Some(up) if (up as usize) < n && (d as usize) < n => {
                        d += 1;
                        at = up as usize;
                    }
                    _ => break false,
                }
            };
            if reached {
                s.depth[i] = Some(d);
                s.parent[i] = if i == root as usize { None } else { parents[i] };
            }
        }
        for i in 0..n {
            if let (Some(_), Some(up)) = (s.depth[i], s.parent[i]) {
                s.children[up as usize] += 1;
            }
        }
        s
    }

    /// Depth of the tree (hops from the root to the farthest node in it).
    pub fn max_depth(&self) -> u32 {
        self.depth.iter().flatten().copied().max().unwrap_or(0)
    }

    /// Depths of the nodes below the root in depth-first preorder (children by index), or
    /// `None` if `parent` does not describe the tree: the shape the stochastic bound walks.
    fn preorder_depths(&self) -> Option<Vec<u32>> {
        let n = self.depth.len();
        if self.parent.len() != n {
            return None;
        }
        let mut kids: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut roots = Vec::new();
        for i in 0..n {
            match (self.depth[i], self.parent[i]) {
                (Some(0), None) => roots.push(i as u32),
                (Some(_), Some(up)) if (up as usize) < n => kids[up as usize].push(i as u32),
                _ => {}
            }
        }
        let [root] = roots[..] else {
            return None;
        };
        let mut out = Vec::with_capacity(n);
        let mut stack: Vec<(u32, u32)> =
            kids[root as usize].iter().rev().map(|&c| (c, 1)).collect();
        while let Some((v, d)) = stack.pop() {
            // A child's depth must be its parent's plus one; anything else is not a tree.
            if self.depth[v as usize] != Some(d) || out.len() >= n {
                return None;
            }
            out.push(d);
            stack.extend(kids[v as usize].iter().rev().map(|&c| (c, d + 1)));
        }
        Some(out)
    }
}

/// Expected cost of one frame of `bytes` bytes under the simulator's TCP model
/// (`channel::tx_cost`): `(link, radio)` seconds, where `radio` is the transmitter's busy
/// time (overhead, first transmission and retransmitted segments) and `link` adds the
/// retransmission timeouts, during which the connection stalls but the radio is free.
pub fn expected_frame_cost(bytes: u64, p: &LinkParams) -> (f64, f64) {
    let g = p.goodput_bytes_per_s;
    let mut radio = secs(p.frame_overhead) + bytes as f64 / g;
    let mut stall = 0.0;
    if p.loss > 0.0 {
        let mss = p.mss.max(1) as u64;
        let mut left = bytes;
        while left > 0 {
            let seg = left.min(mss);
            left -= seg;
            // The k-th consecutive loss of a segment (k <= max_retransmits) costs its
            // airtime again and the k-th timeout; it happens with probability p^k.
            let mut pk = 1.0;
            let mut rto = secs(p.min_rto);
            for _ in 0..p.max_retransmits {
                pk *= p.loss;
                radio += pk * seg as f64 / g;
                stall += pk * rto;
                rto = (rto * 2.0).min(secs(p.max_rto));
            }
        }
    }
    (radio + stall, radio)
}

/// Seed of the stochastic bounds' Monte Carlo: fixed, so that a bound depends only on the
/// tree and the links, never on the run's seed or on how often it is computed.
const BOUND_SEED: u64 = 0x0053_5441_4c4c_5321;
/// The Monte Carlo stops once its standard error is below this fraction of the mean...
const MC_REL_SE: f64 = 0.0025;
/// ...and has drawn at least this many samples (an SE from fewer is itself unreliable)...
const MC_MIN_SAMPLES: u32 = 200;
/// ...or when it has drawn this many (rounded up to a whole batch),
const MC_MAX_SAMPLES: u32 = 20_000;
/// or this many grid cells (segments × links, ~2-3 ns each): a bound over a big tree must
/// not cost more than a few seconds. The reported standard error says where it stopped.
const MC_CELL_BUDGET: u64 = 2_000_000_000;
/// Samples between two checks of the stopping rule (a multiple of `LANES`).
const MC_BATCH: u32 = 48;
/// Samples computed side by side in one pass over the grid.
const LANES: usize = 4;

/// How long a TCP segment that gets through stalled its link in retransmission timeouts,
/// as a law to sample: `channel::tx_cost`'s loss process (each try lost with probability p;
/// the k-th consecutive loss of a segment costs RTO_k = min(min_rto·2^(k−1), max_rto)). A
/// reset (more than `max_retransmits` losses) is charged as its `max_retransmits` timeouts,
/// less than it costs (the connection is gone and the frame with it).
#[derive(Clone, Debug)]
struct StallLaw {
    /// `more_than[k]` = p^(k+1)·2^64: a uniform 64-bit draw below it means more than k
    /// losses, so P(X ≥ k) = p^k for k ≤ `max_retransmits` as in `tx_cost`.
    more_than: Vec<u64>,
    /// `stall[k]`: seconds of timeouts after k losses, RTO_1 + … + RTO_k.
    stall: Vec<f64>,
}

impl StallLaw {
    fn new(p: &LinkParams) -> Self {
        let mut law = Self {
            more_than: Vec::new(),
            stall: vec![0.0],
        };
        let loss = if p.loss.is_nan() {
            0.0
        } else {
            p.loss.clamp(0.0, 1.0)
        };
        let (mut pk, mut rto, mut total) = (1.0f64, secs(p.min_rto), 0.0);
        for _ in 0..p.max_retransmits {
            pk *= loss;
            // `as` saturates: p = 1 gives u64::MAX (a loss on every draw but one in 2^64).
            let threshold = (pk * 18_446_744_073_709_551_616.0) as u64;
            if threshold == 0 {
                break;
            }
            total += rto;
            rto = (rto * 2.0).min(secs(p.max_rto));
            law.more_than.push(threshold);
            law.stall.push(total);
        }
        law
    }

    /// No loss: every stall is 0.
    fn is_zero(&self) -> bool {
        self.more_than.is_empty()
    }

    /// Mean stall, seconds: Σ_k P(X ≥ k)·RTO_k.
    #[cfg(test)]
    fn mean(&self) -> f64 {
        self.atoms().iter().map(|(pr, s)| pr * s).sum()
    }

    /// The law as (probability, stall) pairs, for exact computations in tests.
    #[cfg(test)]
    fn atoms(&self) -> Vec<(f64, f64)> {
        let two64 = 18_446_744_073_709_551_616.0;
        let at_least = |k: usize| {
            if k == 0 {
                1.0
            } else {
                self.more_than[k - 1] as f64 / two64
            }
        };
        (0..self.stall.len())
            .map(|k| {
                let next = if k + 1 < self.stall.len() {
                    at_least(k + 1)
                } else {
                    0.0
                };
                (at_least(k) - next, self.stall[k])
            })
            .collect()
    }

    #[inline]
    fn sample(&self, rng: &mut Rng) -> f64 {
        let x = rng.next_u64();
        let mut k = 0;
        // Most segments get through at once: one comparison.
        while k < self.more_than.len() && x < self.more_than[k] {
            k += 1;
        }
        self.stall[k]
    }
}

/// E[max over the nodes v of `base_s + d_v·per_hop_s + W_v(jobs)`], by Monte Carlo, where
/// `depths` lists the depth of every node below the root in depth-first preorder (so the
/// parent of a node at depth d is the last node before it at depth d − 1) and W is the
/// last-passage time through the grid of jobs × links on the node's path:
///
/// `W_v(j) = max(W_v(j − 1), W_parent(v)(j)) + R_(v, j)`, `W_root ≡ 0`, `W_v(0) = 0`,
///
/// with every R an independent draw of `law` (one per link and job). A chain `1, 2, …, D`
/// is one path of D links. Deterministic: the same arguments give the same estimate.
fn stall_lpp(
    depths: &[u32],
    jobs: usize,
    law: &StallLaw,
    base_s: f64,
    per_hop_s: f64,
    seed: u64,
) -> MonteCarlo {
    let Some(&deepest) = depths.iter().max() else {
        return MonteCarlo {
            mean_s: 0.0,
            se_s: 0.0,
            sd_s: 0.0,
            q05_s: 0.0,
            samples: 0,
        };
    };
    let fixed = |d: u32| base_s + f64::from(d) * per_hop_s;
    if jobs == 0 || law.is_zero() {
        // Every stall is 0: the value is not random.
        return MonteCarlo {
            mean_s: fixed(deepest),
            se_s: 0.0,
            sd_s: 0.0,
            q05_s: fixed(deepest),
            samples: 1,
        };
    }
    // One row of W per depth: in preorder a node's row is rewritten only after the
    // subtree below its previous owner is done, and its parent's row is the one above.
    // Each cell holds LANES independent samples side by side: the recursion is a chain of
    // dependent max-and-adds, and independent lanes let the CPU overlap them (~1.4x here).
    let mut rows = vec![[0.0f64; LANES]; (deepest as usize + 1) * jobs];
    let cells = (depths.len() * jobs) as u64;
    let max_samples =
        (MC_CELL_BUDGET / cells).clamp(u64::from(MC_MIN_SAMPLES), u64::from(MC_MAX_SAMPLES)) as u32;
    let mut rng = Rng::new(seed);
    // Welford's running mean and sum of squared deviations.
    let (mut n, mut mean, mut m2) = (0u32, 0.0f64, 0.0f64);
    let mut all = Vec::new();
    while n < max_samples {
        for _ in 0..MC_BATCH / LANES as u32 {
            let mut last = [f64::MIN; LANES];
            // Depth 0 is the root itself (W ≡ 0), never a row to compute.
            for &d in depths.iter().filter(|d| **d > 0) {
                let d = d as usize;
                let (above, here) = rows.split_at_mut(d * jobs);
                let above = &above[(d - 1) * jobs..];
                let here = &mut here[..jobs];
                let mut w = [0.0f64; LANES];
                for (h, a) in here.iter_mut().zip(above.iter()) {
                    for l in 0..LANES {
                        w[l] = w[l].max(a[l]) + law.sample(&mut rng);
                    }
                    *h = w;
                }
                let f = fixed(d as u32);
                for l in 0..LANES {
                    last[l] = last[l].max(f + w[l]);
                }
            }
            for x in last {
                all.push(x);
                n += 1;
                let delta = x - mean;
                mean += delta / f64::from(n);
                m2 += delta * (x - mean);
            }
        }
        let se = (m2 / f64::from(n - 1) / f64::from(n)).sqrt();
        if n >= MC_MIN_SAMPLES && se <= MC_REL_SE * mean {
            break;
        }
    }
    let sd = (m2 / f64::from(n.max(2) - 1)).sqrt();
    all.sort_by(f64::total_cmp);
    MonteCarlo {
        mean_s: mean,
        se_s: sd / f64::from(n).sqrt(),
        sd_s: sd,
        q05_s: all[all.len() / 20],
        samples: n,
    }
}

/// The lower bound on the makespan of delivering a payload of `payload` bytes, in frames
/// of at most `chunk` payload bytes, from the root of `tree` to every node in it, under
/// link parameters `p` and `channel` (`docs/ota-protocol.md`, "Lower bound"). Headers are
/// not counted, so every real protocol pays more. With loss it bounds the expected
/// makespan.
pub fn lower_bound(
    tree: &TreeShape,
    payload: u64,
    chunk: u32,
    p: &LinkParams,
    channel: &ChannelModel,
    positions: Option<&[(f64, f64)]>,
) -> LowerBound {
    let c = u64::from(chunk.max(1));
    let frames = payload.div_ceil(c).max(1);
    let last = payload - (frames - 1) * c;
    let (full_link, full_radio) = expected_frame_cost(c, p);
    let (last_link, last_radio) = expected_frame_cost(last, p);
    // All S bytes cross the first link of the deepest path, one frame after the other.
    let all_link = (frames - 1) as f64 * full_link + last_link;
    let all_radio = (frames - 1) as f64 * full_radio + last_radio;
    // The smallest frame: what must still cross each later hop after the last one.
    let (min_link, _) = expected_frame_cost(last.min(c), p);
    let lat = secs(p.latency);
    let depth = tree.max_depth();
    let d = f64::from(depth);
    let pipeline = if depth == 0 {
        0.0
    } else {
        all_link + (d - 1.0) * min_link + d * lat
    };
    let mut bound = pipeline;
    let mut binding = "pipeline";
    let shared_radio = !matches!(channel, ChannelModel::Independent);
    let airtime = shared_radio.then(|| {
        tree.depth
            .iter()
            .zip(&tree.children)
            .filter_map(|(dv, k)| dv.map(|dv| (dv, *k)))
            .filter(|(_, k)| *k > 0)
            .map(|(dv, k)| {
                // The first frame reaches v after dv hops; then v's radio sends the whole
                // payload once per child; the last copy arrives one latency later.
                f64::from(dv) * (min_link + lat) + f64::from(k) * all_radio + lat
            })
            .fold(0.0, f64::max)
    });
    if let Some(a) = airtime {
        if a > bound {
            bound = a;
            binding = "airtime";
        }
    }
    let interference = match (channel, positions) {
        (
            ChannelModel::Geometric {
                interference_range_m,
            },
            Some(pos),
        ) => {
            let r = interference_range_m / 2.0;
            let mut best = 0u64;
            for v in pos {
                // Nodes within r/2 of a point are pairwise within r: no two of them may
                // transmit at once, so their copies of the payload are serialized.
                let k: u64 = pos
                    .iter()
                    .zip(&tree.children)
                    .zip(&tree.depth)
                    .filter(|((u, _), dv)| dv.is_some() && dist(**u, *v) <= r)
                    .map(|((_, k), _)| u64::from(*k))
                    .sum();
                best = best.max(k);
            }
            Some(best as f64 * all_radio + lat)
        }
        _ => None,
    };
    if let Some(i) = interference {
        if i > bound {
            bound = i;
            binding = "interference";
        }
    }
    // (d) the stochastic pipeline (`docs/ota-protocol.md` §7.6): S in segments of at most
    // M bytes, cut-through per segment, one latency per hop, and per segment and hop the
    // timeouts of the simulator's loss process; the random part is the last-passage time of
    // those stalls through the segments × hops grid. Any protocol: M = MSS and one frame
    // overhead per hop. Frames of at most c payload bytes (c ≤ MSS): M = c, and each
    // segment that brings a node c more bytes is in a frame of its own (one overhead each).
    let law = StallLaw::new(p);
    let mss = p.mss.max(1) as u64;
    let g = p.goodput_bytes_per_s;
    let o = secs(p.frame_overhead);
    let segments = payload.div_ceil(mss);
    let chunk_segments = payload.div_ceil(c.min(mss));
    let per_frame = if c <= mss { o } else { 0.0 };
    let (base_any, base_chunked) = if payload == 0 {
        (0.0, 0.0)
    } else {
        let s = payload as f64 / g;
        (s, s + chunk_segments.saturating_sub(1) as f64 * per_frame)
    };
    let per_hop = if payload == 0 { 0.0 } else { o + lat };
    let chain: Vec<u32> = (1..=depth).collect();
    // Every receiver at once: the makespan is the largest completion time, and the links
    // near the source are shared by many paths. Without parents: the deepest path.
    let all = tree.preorder_depths();
    let estimate = |nodes: &[u32], jobs: u64, base: f64| {
        stall_lpp(nodes, jobs as usize, &law, base, per_hop, BOUND_SEED)
    };
    let stochastic_pipeline = estimate(&chain, segments, base_any);
    let stochastic_pipeline_chunked = estimate(&chain, chunk_segments, base_chunked);
    // The same seed: for a chain, the tree estimate is the path's, bit for bit.
    let (stochastic_tree, stochastic_tree_chunked) = match &all {
        Some(nodes) => (
            estimate(nodes, segments, base_any),
            estimate(nodes, chunk_segments, base_chunked),
        ),
        None => (stochastic_pipeline, stochastic_pipeline_chunked),
    };
    let mut combined = bound;
    let mut combined_binding = binding;
    for (v, name) in [
        (stochastic_pipeline.mean_s, "stochastic_pipeline"),
        (stochastic_tree.mean_s, "stochastic_tree"),
        (
            stochastic_pipeline_chunked.mean_s,
            "stochastic_pipeline_chunked",
        ),
        (stochastic_tree_chunked.mean_s, "stochastic_tree_chunked"),
    ] {
        if v > combined {
            combined = v;
            combined_binding = name;
        }
    }
    LowerBound {
        payload_bytes: payload,
        chunk_bytes: chunk,
        frames,
        depth,
        max_children: tree.children.iter().copied().max().unwrap_or(0),
        frame_link_ms: full_link * 1e3,
        frame_radio_ms: full_radio * 1e3,
        pipeline_s: pipeline,
        airtime_s: airtime,
        interference_s: interference,
        bound_s: bound,
        binding,
        segments,
        stochastic_pipeline,
        stochastic_tree,
        chunk_segments,
        stochastic_pipeline_chunked,
        stochastic_tree_chunked,
        combined_bound_s: combined,
        combined_binding,
    }
}

/// A deterministic pseudo-firmware image of `len` bytes that DEFLATE compresses about as
/// well as real ESP8266 firmware (to ~0.65 of its size, `shared/firmware/README.md`):
/// literals from a skewed distribution mixed with short back-references, like machine code
/// and its constant tables. The same `(len, seed)` always gives the same bytes.
pub fn synthetic_image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out: Vec<u8> = Vec::with_capacity(len);
    // ESP8266 images start with the 0xE9 header magic.
    out.push(0xe9);
    while out.len() < len {
        let r = next();
        if out.len() > 64 && r % 100 < 14 {
            // A back-reference: 3..=10 bytes from up to 4 KiB back (tuned so that
            // DEFLATE level 9 keeps 0.65-0.66 of the bytes, as for the real images).
            let n = 3 + (r >> 8) as usize % 8;
            let back = 1 + (r >> 16) as usize % out.len().min(4096);
            let from = out.len() - back;
            for k in 0..n {
                let b = out[from + k];
                out.push(b);
            }
        } else {
            // A literal, skewed toward a few values (opcodes, zeros).
            let v = (r >> 24) as u8;
            out.push(if r % 3 == 0 { v & 0x1f } else { v });
        }
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_types() {
        assert_eq!(
            frame_type(b"{\"from\":1,\"routing\":2,\"type\":10,\"md5\":\"x\"}\0"),
            Some(10)
        );
        assert_eq!(frame_type(b"{\"type\":8,\"dest\":0}\0"), Some(8));
        let bin =
            meshfleet_wire::binary_frame(&meshfleet_ota::proto::encode_binary_chunk(1, 2, b"abc"));
        assert_eq!(frame_type(&bin), Some(703));
        assert_eq!(frame_type(b"garbage"), None);
    }

    #[test]
    fn synthetic_image_compresses_like_firmware() {
        let img = synthetic_image(256 * 1024, 3);
        assert_eq!(img, synthetic_image(256 * 1024, 3));
        let z = meshfleet_firmware::codec::deflate(&img, 9, meshfleet_firmware::MAX_WINDOW)
            .unwrap_or_default();
        let ratio = z.len() as f64 / img.len() as f64;
        assert!((0.62..0.70).contains(&ratio), "{ratio}");
    }

    #[test]
    fn per_node_memory_follows_the_artefact_window() {
        let img = synthetic_image(64 * 1024, 5);
        let wide = OtaCampaign::new(OtaStrategy::Meshfleet, img).unwrap_or_else(|e| panic!("{e}"));
        let narrow = wide
            .clone()
            .with_window(8192)
            .unwrap_or_else(|e| panic!("{e}"));
        let (mw, mn) = (wide.artefact().manifest(), narrow.artefact().manifest());
        assert_eq!((mw.window, mn.window), (32768, 8192));
        assert_eq!(narrow.image(), wide.image());
        // The transfer phase (2 children: 3 bitmaps) dominates for this image: the decoder
        // for the artefact's window, one chunk frame and the unit bitmaps (the chunk table
        // stays in flash).
        for m in [mw, mn] {
            let units = u64::from(m.chunk_count + m.page_count());
            assert_eq!(
                meshfleet_memory(m, 2, 0),
                m.decoder_footprint() as u64 + 1024 + 15 + 3 * units.div_ceil(8),
                "window {}",
                m.window
            );
        }
        assert_eq!(mw.decoder_footprint() - mn.decoder_footprint(), 24_576);
        assert!(
            narrow.clone().with_window(1000).is_err(),
            "not a power of two"
        );
    }

    #[test]
    fn lossless_bound_is_the_pipeline_of_full_frames() {
        // A chain of 3 hops.
        let tree = TreeShape::from_parents(&[None, Some(0), Some(1), Some(2)], 0);
        assert_eq!(tree.depth, vec![Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(tree.children, vec![1, 1, 1, 0]);
        let p = LinkParams::default();
        let b = lower_bound(&tree, 10 * 1024, 1024, &p, &ChannelModel::Independent, None);
        let frame = 1.665e-3 + 1024.0 / 131_000.0;
        let expect = 10.0 * frame + 2.0 * frame + 3.0 * 320e-6;
        assert!((b.pipeline_s - expect).abs() < 1e-9, "{b:?}");
        assert_eq!(b.binding, "pipeline");
        // On a shared radio a node with 3 children sends the payload 3 times.
        let star = TreeShape::from_parents(&[None, Some(0), Some(0), Some(0)], 0);
        let b = lower_bound(&star, 10 * 1024, 1024, &p, &ChannelModel::Airtime, None);
        assert_eq!(b.binding, "airtime");
        assert!((b.bound_s - (30.0 * frame + 320e-6)).abs() < 1e-9);
    }

    #[test]
    fn loss_costs_retransmissions_and_timeouts() {
        let p = LinkParams {
            loss: 0.05,
            ..LinkParams::default()
        };
        let (link, radio) = expected_frame_cost(1000, &p);
        let clean = 1.665e-3 + 1000.0 / 131_000.0;
        assert!(radio > clean && radio < clean * 1.06);
        // ≈ 0.05 * 200 ms + 0.0025 * 400 ms + …
        assert!((link - radio - 0.01111).abs() < 1e-4, "{}", link - radio);
    }

    fn lossy(loss: f64) -> LinkParams {
        LinkParams {
            loss,
            ..LinkParams::default()
        }
    }

    #[test]
    fn tree_shape_from_parents_drops_what_does_not_reach_the_root() {
        // 0 ← 1 ← 2, 3 outside, 4 ↔ 5 a cycle, 6 points out of range.
        let t = TreeShape::from_parents(
            &[None, Some(0), Some(1), None, Some(5), Some(4), Some(99)],
            0,
        );
        assert_eq!(
            t.depth,
            vec![Some(0), Some(1), Some(2), None, None, None, None]
        );
        assert_eq!(t.children, vec![1, 1, 0, 0, 0, 0, 0]);
        assert_eq!(t.preorder_depths(), Some(vec![1, 2]));
        // Preorder: a subtree is finished before the next sibling starts.
        let t = TreeShape::from_parents(&[None, Some(0), Some(0), Some(1), Some(2), Some(3)], 0);
        assert_eq!(t.preorder_depths(), Some(vec![1, 2, 3, 1, 2]));
        // Without parents there is no preorder (the bound falls back to the deepest path).
        let bare = TreeShape {
            depth: vec![Some(0), Some(1)],
            children: vec![1, 0],
            parent: Vec::new(),
        };
        assert_eq!(bare.preorder_depths(), None);
    }

    #[test]
    fn stall_law_matches_the_simulators_loss_process() {
        let p = lossy(0.05);
        let law = StallLaw::new(&p);
        let atoms = law.atoms();
        assert_eq!(atoms.len(), 13);
        assert!((atoms.iter().map(|a| a.0).sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((atoms[0].0 - 0.95).abs() < 1e-12 && atoms[0].1 == 0.0);
        assert!((atoms[1].0 - 0.05 * 0.95).abs() < 1e-12 && (atoms[1].1 - 0.2).abs() < 1e-12);
        assert!((atoms[2].1 - 0.6).abs() < 1e-12 && (atoms[3].1 - 1.4).abs() < 1e-12);
        // The mean stall is the one `expected_frame_cost` charges a segment.
        let (link, radio) = expected_frame_cost(1000, &p);
        assert!((law.mean() - (link - radio)).abs() < 1e-9, "{}", law.mean());
        // And sampling reproduces it (10^6 draws: SE ~5e-5 s).
        let mut rng = Rng::new(5);
        let n = 1_000_000;
        let avg = (0..n).map(|_| law.sample(&mut rng)).sum::<f64>() / f64::from(n);
        assert!((avg - law.mean()).abs() < 3e-4, "{avg} vs {}", law.mean());
        assert!(StallLaw::new(&lossy(0.0)).is_zero());
        // p = 1: every segment is charged the 12 timeouts of a reset.
        let all = StallLaw::new(&lossy(1.0));
        assert_eq!(all.sample(&mut rng), all.stall[12]);
    }

    #[test]
    fn lossless_stochastic_bound_is_the_cut_through_pipeline() {
        // p = 0: no stalls, so the bound is its deterministic part: S/G once (cut-through
        // per segment: the bytes cross the D hops overlapped) plus one frame overhead and
        // one latency per hop.
        let p = LinkParams::default();
        let tree = TreeShape::from_parents(&[None, Some(0), Some(1), Some(2), Some(0)], 0);
        let s = 694_668u64;
        let b = lower_bound(&tree, s, 1024, &p, &ChannelModel::Independent, None);
        let expect = s as f64 / 131_000.0 + 3.0 * (1.665e-3 + 320e-6);
        assert_eq!(b.segments, 476);
        for mc in [b.stochastic_pipeline, b.stochastic_tree] {
            assert!((mc.mean_s - expect).abs() < 1e-9, "{mc:?} vs {expect}");
            assert_eq!(mc.se_s, 0.0);
        }
        // Below the mean-value pipeline, which charges the overhead of all m frames.
        assert!(b.stochastic_pipeline.mean_s < b.pipeline_s);
        // Frames of at most c = 1 KiB: m = 679 segments, one frame overhead each; that is
        // (a) without its store-and-forward term, (D − 1) times the last chunk's bytes.
        assert_eq!(b.chunk_segments, 679);
        let last = (s - 678 * 1024) as f64;
        let chunked = b.pipeline_s - 2.0 * last / 131_000.0;
        for mc in [b.stochastic_pipeline_chunked, b.stochastic_tree_chunked] {
            assert!((mc.mean_s - chunked).abs() < 1e-9, "{mc:?} vs {chunked}");
        }
        assert_eq!(b.combined_bound_s, b.bound_s);
        assert_eq!(b.combined_binding, "pipeline");
    }

    #[test]
    fn tiny_grid_matches_exact_enumeration() {
        // 2 segments (MSS 1000, S = 2000) × 2 hops at p = 0.5 with at most 3 retransmissions
        // (stalls 0, 0.2, 0.6, 1.4 s with probability 1/2, 1/4, 1/8, 1/8):
        // LPP = R11 + max(R12, R21) + R22, so E = 2·E[R] + E[max(R, R')].
        let p = LinkParams {
            loss: 0.5,
            mss: 1000,
            max_retransmits: 3,
            ..LinkParams::default()
        };
        let law = StallLaw::new(&p);
        let atoms = law.atoms();
        assert_eq!(atoms.len(), 4);
        // The exact law of the 2 × 2 LPP, by enumerating the 4^4 stall combinations.
        let mut dist: Vec<(f64, f64)> = Vec::new();
        for a in &atoms {
            for b in &atoms {
                for c in &atoms {
                    for d in &atoms {
                        dist.push((a.0 * b.0 * c.0 * d.0, a.1 + b.1.max(c.1) + d.1));
                    }
                }
            }
        }
        let exact_lpp: f64 = dist.iter().map(|(pr, v)| pr * v).sum();
        let var: f64 = dist
            .iter()
            .map(|(pr, v)| pr * (v - exact_lpp).powi(2))
            .sum();
        // The same mean by the shortcut E = 2·E[R] + E[max(R, R')].
        let mut e_max = 0.0;
        for a in &atoms {
            for b in &atoms {
                e_max += a.0 * b.0 * a.1.max(b.1);
            }
        }
        assert!((exact_lpp - (2.0 * law.mean() + e_max)).abs() < 1e-12);
        dist.sort_by(|x, y| x.1.total_cmp(&y.1));
        let mut cum = 0.0;
        let q05 = dist
            .iter()
            .find(|(pr, _)| {
                cum += pr;
                cum > 0.05
            })
            .map_or(0.0, |d| d.1);
        let mc = stall_lpp(&[1, 2], 2, &law, 0.0, 0.0, 1);
        assert!(
            (mc.mean_s - exact_lpp).abs() < 4.0 * mc.se_s,
            "{mc:?} vs exact {exact_lpp}"
        );
        assert!(
            (mc.sd_s - var.sqrt()).abs() < 0.02 * var.sqrt(),
            "{mc:?} vs sd {}",
            var.sqrt()
        );
        // 0 s has probability 1/16 > 5%: the quantile is exactly 0.
        assert_eq!((q05, mc.q05_s), (0.0, 0.0));
        // So small a grid is noisy (σ ≈ mean): it takes the most samples, and still < 1%.
        assert!(mc.samples >= MC_MAX_SAMPLES, "{mc:?}");
        assert!(mc.se_s <= 0.01 * mc.mean_s, "{mc:?}");
        // Through lower_bound: the same grid plus S/G + 2·(o + L).
        let chain = TreeShape::from_parents(&[None, Some(0), Some(1)], 0);
        let b = lower_bound(&chain, 2000, 1024, &p, &ChannelModel::Independent, None);
        let exact = exact_lpp + 2000.0 / 131_000.0 + 2.0 * (1.665e-3 + 320e-6);
        let est = b.stochastic_pipeline;
        assert!(
            (est.mean_s - exact).abs() < 4.0 * est.se_s,
            "{est:?} vs {exact}"
        );
        // One hop: a sum, no max; E = m·E[R] and Var = m·Var[R] exactly (closed form).
        let one = stall_lpp(&[1], 40, &law, 0.0, 0.0, 2);
        assert!(
            (one.mean_s - 40.0 * law.mean()).abs() < 4.0 * one.se_s,
            "{one:?} vs {}",
            40.0 * law.mean()
        );
        let var_r: f64 = atoms
            .iter()
            .map(|(pr, v)| pr * (v - law.mean()).powi(2))
            .sum();
        let sd = (40.0 * var_r).sqrt();
        assert!((one.sd_s - sd).abs() < 0.03 * sd, "{one:?} vs sd {sd}");
        assert!(one.q05_s < one.mean_s - sd);
    }

    #[test]
    fn stochastic_bound_grows_with_loss_and_depth_and_is_deterministic() {
        let chain = |d: u32| {
            let parents: Vec<Option<u32>> = (0..=d).map(|i| i.checked_sub(1)).collect();
            TreeShape::from_parents(&parents, 0)
        };
        let s = 694_668;
        let at = |loss: f64, d: u32| {
            lower_bound(
                &chain(d),
                s,
                1024,
                &lossy(loss),
                &ChannelModel::Independent,
                None,
            )
        };
        let mut last = 0.0;
        for loss in [0.0, 0.01, 0.05, 0.2] {
            let b = at(loss, 8);
            let v = b.stochastic_pipeline.mean_s;
            assert!(v > last, "{loss}: {v} <= {last}");
            last = v;
            // The standard error is reported and small.
            assert!(b.stochastic_pipeline.se_s <= 0.01 * v, "{b:?}");
        }
        let shallow = at(0.05, 3).stochastic_pipeline.mean_s;
        let deep = at(0.05, 14).stochastic_pipeline.mean_s;
        assert!(deep > shallow + 1.0, "{shallow} {deep}");
        // With loss, stall propagation makes it exceed the mean-value pipeline (a), which
        // charges every frame its expected time but lets stalls overlap; even for frames of
        // any size, which need fewer segments.
        let b = at(0.05, 14);
        assert!(b.stochastic_pipeline.mean_s > b.pipeline_s, "{b:?}");
        // Frames of at most 1 KiB: more segments to stall, so more still.
        assert!(
            b.stochastic_pipeline_chunked.mean_s > b.stochastic_pipeline.mean_s + 1.0,
            "{b:?}"
        );
        assert_eq!(b.combined_binding, "stochastic_pipeline_chunked");
        // Deterministic: the same inputs give bit-identical estimates.
        assert_eq!(at(0.05, 14), b);
    }

    #[test]
    fn whole_tree_bound_is_at_least_the_deepest_path() {
        // A root with 4 chains of 6 hops: E[max of 4 correlated paths] > E[one path].
        let mut parents = vec![None];
        for _ in 0..4 {
            let mut up = 0u32;
            for _ in 0..6 {
                parents.push(Some(up));
                up = parents.len() as u32 - 1;
            }
        }
        let tree = TreeShape::from_parents(&parents, 0);
        assert_eq!(tree.max_depth(), 6);
        let b = lower_bound(
            &tree,
            200_000,
            1024,
            &lossy(0.05),
            &ChannelModel::Independent,
            None,
        );
        let (path, all) = (b.stochastic_pipeline, b.stochastic_tree);
        assert!(
            all.mean_s > path.mean_s + 3.0 * (all.se_s + path.se_s),
            "{path:?} {all:?}"
        );
        assert_eq!(b.combined_binding, "stochastic_tree_chunked");
        assert_eq!(b.combined_bound_s, b.stochastic_tree_chunked.mean_s);
    }
}
