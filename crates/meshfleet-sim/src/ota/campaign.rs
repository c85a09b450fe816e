//! Campaign setup: the image packed once, the node factory that equips every node for the
//! strategy, and the start on the source.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

use meshfleet_agent::{Agent, AgentConfig, BootAction, BootPolicy, OtaReceiver, ReceiverConfig};
use meshfleet_firmware::{pack, Artefact, Codec, PackOptions, Version};
use meshfleet_mesh::{Duration, Instant, Node, NodeTree};
use meshfleet_ota::store::image_info;
use meshfleet_ota::{
    ImageInfo, MemStore, MeshfleetConfig, SharedPages, StockOffer, StockReceiver,
    StockReceiverConfig, StockSender, StockSenderConfig, StockStyle,
};

use super::run::{Air, OtaRun};
use super::stock_source::StockSource;
use super::{
    test_signing_key, OtaCounters, OtaSetupError, OtaStrategy, BOOT_ATTEMPTS, DEFAULT_HARDWARE,
    DEFAULT_ROLE, NEW_VERSION, OLD_VERSION,
};
use crate::scenario::{NodeAction, NodeInit, Scenario, SimEvent};

/// Everything a campaign distributes, packed once and shared by all nodes.
pub(super) struct Payload {
    pub(super) image: Vec<u8>,
    pub(super) artefact: Artefact,
    /// For the stock strategies (the raw image, 1 KiB parts).
    pub(super) offer: StockOffer,
    pub(super) new_info: ImageInfo,
    pub(super) old_image: Vec<u8>,
    pub(super) old_info: ImageInfo,
    /// The images and the artefact's payload as pages every receiver's store shares,
    /// instead of each holding a copy (host memory per node; the simulated nodes still
    /// each stage, flash and verify their own bytes).
    pub(super) pages: SharedPages,
}

/// An OTA campaign: one image, one source, one strategy. Build with [`OtaCampaign::new`],
/// adjust with the setters, then [`OtaCampaign::attach`] it to a scenario (or add it to a
/// [`Scenario`] with [`Scenario::ota`] and use `run_scenario`: it is a workload, its table
/// `[ota]`).
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
    pub(super) payload: Arc<Payload>,
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
    /// named if the scenario has none. The stock strategies run the library's node sync
    /// (`MeshParams::node_sync` = `NodeSyncPolicy::Library`) unless the scenario sets it. The returned [`OtaRun`] observes one run of the
    /// returned scenario: call [`OtaRun::install`] on its [`Simulation`](crate::Simulation) before running.
    ///
    /// The per-node stores live in the `OtaRun`: attach again for another run.
    pub fn attach(&self, mut scenario: Scenario) -> (Scenario, OtaRun) {
        if self.strategy == OtaStrategy::StockBroadcasted && scenario.mesh.root.is_none() {
            scenario.mesh.root = Some(self.default_broadcast_root());
        }
        // A stock campaign runs on stock nodes: the library's node sync too, unless the
        // scenario says otherwise.
        if self.strategy != OtaStrategy::Meshfleet && scenario.mesh.node_sync.is_none() {
            scenario.mesh.node_sync = Some(meshfleet_mesh::NodeSyncPolicy::Library);
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
    pub(super) fn start_on(&self, node: &mut Node, now: Instant, shared: &Arc<Mutex<Shared>>) {
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

pub(super) fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // The simulator is single-threaded; a panic elsewhere leaves consistent data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// State shared by the factory, the start action and the event hook (all may run on any
/// clone of the scenario, hence `Arc<Mutex<_>>`).
#[derive(Default)]
pub(super) struct Shared {
    pub(super) started: bool,
    pub(super) stores: BTreeMap<u32, MemStore>,
    /// First update of each node, global time.
    pub(super) updated_at: BTreeMap<u32, Instant>,
    pub(super) tree: Option<NodeTree>,
    pub(super) counters: OtaCounters,
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
