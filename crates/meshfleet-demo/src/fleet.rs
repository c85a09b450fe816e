//! The demo's nodes, built by the simulator's factory at every boot: the gateway's node
//! (node 1, the mesh root, with the gateway's status plugin), meshfleet nodes (the node as
//! shipped: [`Agent`] with its OTA receiver and the [`Telemetry`] plugin reporting to the
//! gateway) and modelled stock nodes (what the C++ library runs: its OTA receiver flow and the
//! status package broadcast every report period, nothing else).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use meshfleet_agent::telemetry::{Identity, Metric};
use meshfleet_agent::{
    Agent, AgentConfig, BootPolicy, OtaReceiver, QuietOta, ReceiverConfig, Telemetry,
    TelemetryConfig,
};
use meshfleet_firmware::VerifyingKey;
use meshfleet_gateway::status::StatusPlugin;
use meshfleet_mesh::{Ctx, Duration, Instant, LinkId, MeshChange, Node, NodeId, Plugin, Rng};
use meshfleet_ota::store::image_info;
use meshfleet_ota::{MemStore, MeshfleetConfig, SharedPages, StockReceiver, StockReceiverConfig};
use meshfleet_sim::{NodeFactory, NodeInit, PersistentStore};
use meshfleet_wire::{Package, Routing};

/// OTA role of every demo node.
pub const ROLE: &str = "sensor";
/// Hardware of every demo node (the simulator's links are calibrated on ESP8266).
pub const HARDWARE: &str = "ESP8266";
/// The version every node runs at start.
pub const OLD_VERSION: &str = "1.0.0";
/// The version of the demo artefact.
pub const NEW_VERSION: &str = "1.1.0";
/// Size of the simulated firmware images.
pub const IMAGE_BYTES: usize = 64 * 1024;

/// Key in a stock node's persistent store: the firmware it runs (`"<version> <md5>"`).
const STOCK_FW_KEY: &str = "demo.stock-firmware";

/// What node number `n` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Node 1: the gateway's own node.
    Gateway,
    /// The node as shipped.
    Meshfleet,
    /// A modelled stock painlessMesh node (every third node).
    Stock,
}

/// The kind of node number `n`.
pub fn kind_of(n: u32) -> Kind {
    match n {
        1 => Kind::Gateway,
        n if n % 3 == 0 => Kind::Stock,
        _ => Kind::Meshfleet,
    }
}

/// The firmware images of the demo.
pub(crate) struct Images {
    /// What every node runs at start.
    pub(crate) old: Vec<u8>,
    /// The demo artefact's image.
    pub(crate) new: Vec<u8>,
    /// Flash pages shared between the nodes' simulated stores (the same image is held once).
    pub(crate) pages: SharedPages,
}

/// Free heap and RSSI a node has when healthy (bytes, dBm): fixed per node number.
pub(crate) fn baseline(seed: u64, n: u32) -> (i64, i64) {
    let mut r = Rng::new(seed ^ u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let heap = 30_000 + (r.next_u64() % 12_000) as i64;
    let rssi = -50 - (r.next_u64() % 24) as i64;
    (heap, rssi)
}

/// Everything the factory needs, shared with the driver.
pub(crate) struct Fleet {
    pub(crate) seed: u64,
    pub(crate) gateway: NodeId,
    pub(crate) images: Images,
    pub(crate) key: VerifyingKey,
    /// How often nodes report.
    pub(crate) report_interval: Duration,
    /// Each meshfleet node's flash, by node number (survives reboots).
    stores: Mutex<BTreeMap<u32, MemStore>>,
}

impl Fleet {
    pub(crate) fn new(
        seed: u64,
        gateway: NodeId,
        images: Images,
        key: VerifyingKey,
        report_interval: Duration,
    ) -> Self {
        Self {
            seed,
            gateway,
            images,
            key,
            report_interval,
            stores: Mutex::new(BTreeMap::new()),
        }
    }

    fn stores(&self) -> MutexGuard<'_, BTreeMap<u32, MemStore>> {
        // Only the simulation thread uses it; a panic there leaves consistent data.
        self.stores.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The simulator's node factory.
    pub(crate) fn factory(self: &Arc<Self>) -> NodeFactory {
        let me = self.clone();
        Arc::new(move |init: NodeInit<'_>| me.build(init))
    }

    fn build(&self, init: NodeInit<'_>) -> Node {
        let n = init.number;
        let mut node = Node::new(init.config);
        match kind_of(n) {
            Kind::Gateway => {
                // As `meshfleet_gateway::mesh::join` equips the gateway's own node.
                node.add_plugin(Box::new(StatusPlugin))
                    .expect("a fresh node: the status plugin is the first");
                meshfleet_gateway::campaign_engine::equip(&mut node)
                    .expect("status (604, 711) and OTA (10-12, 700-709) types are disjoint");
            }
            Kind::Meshfleet => self.equip_meshfleet(&mut node, n),
            Kind::Stock => self.equip_stock(&mut node, n, &init.store),
        }
        node
    }

    fn telemetry_config(&self, gateway: Option<NodeId>, status: bool) -> TelemetryConfig {
        let mut c = TelemetryConfig {
            gateway,
            status_interval: status.then_some(self.report_interval),
            ..TelemetryConfig::default()
        };
        c.producer.report_interval_s =
            u32::try_from(self.report_interval.as_micros() / 1_000_000).unwrap_or(u32::MAX);
        c
    }

    fn baseline_values(&self, t: &mut Telemetry, n: u32) {
        let (heap, rssi) = baseline(self.seed, n);
        // Before the node's first timeout the plugin only keeps the values.
        t.record(Instant::ZERO, Metric::FreeHeap, heap);
        t.record(Instant::ZERO, Metric::Rssi, rssi);
    }

    fn equip_meshfleet(&self, node: &mut Node, n: u32) {
        let store = self
            .stores()
            .entry(n)
            .or_insert_with(|| {
                MemStore::with_shared(&self.images.old, OLD_VERSION, self.images.pages.clone())
            })
            .clone();
        // An ESP: a committed image boots at the next start; the simulated firmware is
        // healthy by construction, so an image on trial confirms itself at once.
        let mut rc = ReceiverConfig::new(ROLE, HARDWARE, BootPolicy::on_restart());
        rc.meshfleet = Some(MeshfleetConfig::new(ROLE, HARDWARE));
        rc.stock = None;
        rc.trusted_key = Some(self.key);
        let mut telemetry = Telemetry::new(self.telemetry_config(Some(self.gateway), false));
        self.baseline_values(&mut telemetry, n);
        match OtaReceiver::open(rc, store.clone(), Box::new(store)) {
            Ok(mut receiver) => {
                while receiver.poll_action().is_some() {}
                let telemetry = telemetry.with_receiver(&receiver);
                Agent::equip(
                    node,
                    AgentConfig {
                        receiver: Some(receiver),
                        extra: vec![Box::new(telemetry)],
                    },
                )
                .expect("OTA and telemetry claim disjoint types");
            }
            Err(e) => {
                tracing::warn!(node = n, error = %e, "cannot open the simulated flash");
                node.add_plugin(Box::new(QuietOta::default()))
                    .expect("a fresh node");
                node.add_plugin(Box::new(telemetry))
                    .expect("OTA and telemetry claim disjoint types");
            }
        }
    }

    fn equip_stock(&self, node: &mut Node, n: u32, store: &PersistentStore) {
        let (version, md5) = stock_firmware(store).unwrap_or_else(|| {
            (
                OLD_VERSION.to_owned(),
                image_info(&self.images.old, OLD_VERSION).md5,
            )
        });
        let mut c = StockReceiverConfig::new(ROLE, HARDWARE);
        c.current_md5 = Some(md5);
        // The library keeps nothing of a transfer across a reboot.
        c.keep_image = false;
        node.add_plugin(Box::new(StockReceiver::new(c)))
            .expect("a fresh node");
        let mut t = Telemetry::new(self.telemetry_config(None, true));
        t.set_identity(Identity {
            firmware: version,
            role: ROLE.into(),
            hardware: HARDWARE.into(),
        });
        self.baseline_values(&mut t, n);
        node.add_plugin(Box::new(StockStatus(t)))
            .expect("the stock status plugin claims no type");
    }

    /// A stock node fetched an image with `md5`: it runs it from its next boot.
    pub(crate) fn stock_updated(&self, store: &PersistentStore, md5: &str) {
        let new = image_info(&self.images.new, NEW_VERSION);
        let version = if new.md5 == md5 {
            NEW_VERSION.to_owned()
        } else {
            meshfleet_agent::receiver::stock_version(md5)
        };
        store.put(STOCK_FW_KEY, format!("{version} {md5}"));
    }
}

fn stock_firmware(store: &PersistentStore) -> Option<(String, String)> {
    let raw = store.get(STOCK_FW_KEY)?;
    let text = String::from_utf8(raw).ok()?;
    let (v, m) = text.split_once(' ')?;
    Some((v.to_owned(), m.to_owned()))
}

/// A stock node's status: the library's example broadcasts the status package (604) every
/// period and knows nothing of telemetry queries (711) or reports (710). The agent's
/// [`Telemetry`] builds the package; this wrapper takes no package type, so queries stay
/// unanswered as on a stock node.
pub(crate) struct StockStatus(pub(crate) Telemetry);

impl Plugin for StockStatus {
    fn name(&self) -> &'static str {
        "stock-status"
    }

    fn claims(&self) -> meshfleet_mesh::Claims {
        meshfleet_mesh::Claims::none()
    }

    fn handle_package(&mut self, _: &mut Ctx<'_>, _: LinkId, _: Routing, _: &Package) {}

    fn handle_change(&mut self, ctx: &mut Ctx<'_>, change: &MeshChange) {
        self.0.handle_change(ctx, change);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }

    fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        self.0.handle_timeout(ctx);
    }
}

/// Records `metric` on whichever status plugin the node has.
pub(crate) fn record(node: &mut Node, now: Instant, metric: Metric, value: i64) {
    if let Some(t) = node.plugin_mut::<Telemetry>() {
        t.record(now, metric, value);
    } else if let Some(s) = node.plugin_mut::<StockStatus>() {
        s.0.record(now, metric, value);
    }
}
