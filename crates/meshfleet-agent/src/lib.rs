//! The meshfleet node as shipped, composed once, sans-IO.
//!
//! `meshfleet node`, `meshfleet ota offer`, the simulator's campaigns and the coming gateway
//! run the same composition of plugins on a [`meshfleet_mesh::Node`]:
//!
//! * [`Agent::equip`] puts the plugin set on a node: the OTA receiver ([`OtaReceiver`]:
//!   stock/meshfleet arbitration and the boot/confirm policy, [`BootPolicy`]) when the node
//!   receives updates, otherwise [`QuietOta`], which takes the OTA package types without a
//!   word (a plain node is a neighbour of OTA nodes; it must not log every package);
//!   the status/telemetry plugin ([`Telemetry`]: 604 status broadcasts, 710/711 telemetry)
//!   and any other go in [`AgentConfig::extra`].
//! * [`Source::equip`] makes a node offer an artefact ([`Strategy`]: stock, meshfleet, both)
//!   and [`OfferTracker`] turns what it does into one outcome per node of the mesh and an
//!   [`ExitStatus`].
//!
//! Nothing here touches a file, a process or a clock. The store is a
//! [`meshfleet_ota::SlotStore`] the driver chooses (files on Linux, memory in the
//! simulator); a hook that restarts the application is asked for with
//! [`BootAction::RunHook`] and reported back with [`OtaReceiver::hook_finished`]; `now` is
//! the node's. The driver drains [`OtaReceiver::poll_action`] after it ran the node (the
//! CLI every 250 ms and on every receiver event; the simulator reads the store instead).
//!
//! ```
//! use meshfleet_agent::{Agent, AgentConfig, BootPolicy, OtaReceiver, ReceiverConfig};
//! use meshfleet_mesh::{Config, Node, NodeId};
//! use meshfleet_ota::MemStore;
//!
//! // A simulated ESP node: the in-memory "flash" outlives the node across reboots.
//! let flash = MemStore::with_image(b"old firmware", "1.0.0");
//! let config = ReceiverConfig::new("sensor", "ESP8266", BootPolicy::on_restart());
//! let receiver = OtaReceiver::open(config, flash.clone(), Box::new(flash.clone()))?;
//! let mut node = Node::new(Config::new(NodeId(2)));
//! let handle = Agent::equip(&mut node, AgentConfig { receiver: Some(receiver), extra: Vec::new() })
//!     .expect("a fresh node has no conflicting plugins");
//! assert!(handle.is_some_and(|h| node.plugin_at(h).is_some()));
//! # Ok::<(), meshfleet_agent::ReceiverError>(())
//! ```

pub mod receiver;
pub mod report;
pub mod source;
pub mod telemetry;

use meshfleet_mesh::{AddPluginError, Ctx, LinkId, Node, Plugin, PluginHandle};
use meshfleet_ota::SlotStore;
use meshfleet_wire::{types, Package, Routing};

pub use receiver::{
    Applied, ApplyMode, BootAction, BootPolicy, BootReason, BootStep, ConfirmRule, HookRequest,
    OtaReceiver, ReceiverConfig, ReceiverError, ReceiverEvent, SkipReason, Via,
};
pub use report::{
    Attempt, ExitStatus, Incompatibility, Note, OfferReport, OfferTracker, Outcome, ProgressSink,
    Snapshot, StopCause, Targets,
};
pub use source::{Offering, Source, SourceConfig, Strategy};
pub use telemetry::{Telemetry, TelemetryConfig, TelemetryEvent, TelemetryStats};

/// The meshfleet OTA package types (700-709) and the binary chunk tag.
const MESHFLEET_TYPES: std::ops::RangeInclusive<i64> = 700..=709;
const CHUNK_TAG: u16 = 703;

/// What a node runs besides the mesh.
pub struct AgentConfig<S: SlotStore> {
    /// The OTA receiver, if the node receives updates.
    pub receiver: Option<OtaReceiver<S>>,
    /// Further plugins (the status/telemetry plugin, [`Telemetry`]), added after the OTA ones.
    pub extra: Vec<Box<dyn Plugin>>,
}

impl<S: SlotStore> std::fmt::Debug for AgentConfig<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("receiver", &self.receiver.is_some())
            .field("extra", &self.extra.len())
            .finish()
    }
}

/// The composition of the node as shipped.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Puts the plugin set on `node`; see the crate docs. Returns the receiver's handle
    /// (when there is a receiver). Fails when an extra plugin claims a package type the
    /// composition already owns (or `node` already had plugins that do).
    pub fn equip<S: SlotStore + 'static>(
        node: &mut Node,
        config: AgentConfig<S>,
    ) -> Result<Option<PluginHandle<OtaReceiver<S>>>, AddPluginError> {
        let receiver = match config.receiver {
            Some(r) => Some(node.add_plugin(Box::new(r))?),
            None => {
                node.add_plugin(Box::new(QuietOta::default()))?;
                None
            }
        };
        for p in config.extra {
            node.add_dyn_plugin(p)?;
        }
        Ok(receiver)
    }
}

/// The OTA package types on a node that does not take part in OTA: taken and counted, not
/// reported one by one (a plain node next to an OTA source would otherwise report every
/// stock announce and every meshfleet CAPS as a frame nobody handles).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuietOta {
    /// Packages and binary frames ignored.
    pub ignored: u64,
}

impl Plugin for QuietOta {
    fn name(&self) -> &'static str {
        "ota-none"
    }

    fn claims(&self) -> meshfleet_mesh::Claims {
        meshfleet_mesh::Claims::none()
            .types(types::OTA_ANNOUNCE..=types::OTA_DATA)
            .types(MESHFLEET_TYPES)
            .tag(CHUNK_TAG)
    }

    fn handle_package(&mut self, _: &mut Ctx<'_>, _: LinkId, _: Routing, _: &Package) {
        self.ignored += 1;
    }

    fn handle_binary(&mut self, _: &mut Ctx<'_>, _: LinkId, _: &[u8]) {
        self.ignored += 1;
    }
}
