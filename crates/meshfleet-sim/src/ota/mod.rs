//! OTA campaigns in the simulator: the real OTA engine (`meshfleet-ota`) on every node,
//! one firmware image pushed from one source, measured against the lower bound of the
//! simulator's channel model.
//!
//! An [`OtaCampaign`] says what to distribute and how ([`OtaStrategy`]):
//!
//! * [`OtaStrategy::Stock`]: stock painlessMesh OTA. The source runs a
//!   [`StockSender`](meshfleet_ota::StockSender) (announce at start, then every 60 s, 60 times); every other node a
//!   [`StockReceiver`](meshfleet_ota::StockReceiver) with the library's timers (a request every 30 s, 10 tries), fetching
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
//!   boot policy of an ESP
//!   ([`BootPolicy::on_restart`](meshfleet_agent::BootPolicy::on_restart)). Each has a
//!   [`MemStore`](meshfleet_ota::MemStore) (A/B slots, staging, boot record) that the
//!   campaign keeps per node number, so a simulated reboot rebuilds the node over the same
//!   "flash" and the transfer resumes.
//!
//! The stock strategies model nodes running the C++ library (its sender and receiver
//! flows), not meshfleet nodes, so they run the engine's stock plugins directly.
//!
//! The campaign is attached to a [`Scenario`](crate::Scenario) through its node factory
//! ([`OtaCampaign::attach`]), which also schedules the start. [`OtaRun`] observes the run
//! (frame trace and node events) and writes an [`OtaReport`]: per-node update times,
//! makespan, success, bytes on air, bytes sent by the source, per-node OTA memory, the final
//! image of every node (checked in its store: new, old or broken), and the lower bound of
//! `docs/ota-protocol.md` ("Lower bound") computed from the tree formed at the start.
//!
//! The campaign is a workload ([`crate::workload`]): `run_scenario` does all of this for a
//! scenario given one with [`Scenario::workload`](crate::Scenario::workload) (find it again with [`campaign`]) (scenario files: the
//! `[ota]` table, parsed here). By hand, from code:
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
//!
//! The module is split along its seams: `campaign` (what to distribute and how, the node
//! factory and the start), `stock_source` (the stock sender as the library runs it),
//! `run` (what a run measures: the frame trace, the event hook, the workload), `table`
//! (the workload's spec and its `[ota]` table), `report`
//! (the report and the per-node memory model), `bound` (the lower bound: the mean-value
//! terms and the stochastic last-passage Monte Carlo) and `image` (synthetic firmware).

use meshfleet_firmware::{PackError, SigningKey, VersionError};
use meshfleet_mesh::{Duration, Instant};
use meshfleet_ota::OfferError;

mod bound;
mod campaign;
mod image;
mod report;
mod run;
mod stock_source;
mod table;

pub use bound::{lower_bound, LowerBound, MonteCarlo, TreeShape};
pub use campaign::OtaCampaign;
pub use image::synthetic_image;
pub use meshfleet_channel::expected_frame_cost;
pub use report::{FinalImage, OtaCounters, OtaNodeReport, OtaReport};
pub use run::{frame_type, progress_plot, OtaRun, OtaWorkload};
pub(crate) use table::parse_table;
pub use table::{campaign, KEY};

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

fn secs(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e6
}

fn secs_at(t: Instant) -> f64 {
    t.as_micros() as f64 / 1e6
}
