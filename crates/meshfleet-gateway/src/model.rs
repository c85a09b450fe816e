//! The gateway's data types, as stored and as served (JSON, camelCase; the OpenAPI schemas
//! are derived from these).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::status::StatusReport;

/// Milliseconds since the Unix epoch (the gateway's clock; all timestamps in the API).
pub type UnixMillis = i64;

/// A node's health, by the fleet monitor's rules (`docs/monitoring.md`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Reachable, no active alert above info.
    Healthy,
    /// Reachable, a warning alert is active.
    Warning,
    /// Reachable, a critical alert is active.
    Critical,
    /// Not reachable: out of the mesh for the departure grace, or silent and unanswering.
    Offline,
}

impl Health {
    /// Every value, in order.
    pub const ALL: [Self; 4] = [Self::Healthy, Self::Warning, Self::Critical, Self::Offline];

    /// The lowercase label (as in JSON and metrics).
    pub fn label(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Offline => "offline",
        }
    }

    /// Parses a label.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.label() == s)
    }
}

/// What the gateway knows about one node (the registry's record, `GET /status/{nodeId}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node's id.
    pub node_id: u32,
    /// Health classification.
    pub health: Health,
    /// Whether the node is in the mesh now (presence from node sync).
    pub online: bool,
    /// First time the gateway saw it (ms since the epoch).
    pub first_seen: i64,
    /// Last sign of life: presence or a report (ms since the epoch).
    pub last_seen: i64,
    /// When its last status report arrived (ms since the epoch), if ever.
    pub last_report: Option<i64>,
    /// Its parent in the gateway's view of the tree (`None` for our neighbours' root side).
    pub parent: Option<u32>,
    /// OTA role, if known.
    pub role: Option<String>,
    /// Hardware, if known.
    pub hardware: Option<String>,
    /// Firmware version, if known (from its status reports).
    pub firmware: Option<String>,
    /// Seconds since boot (last report).
    pub uptime: Option<u32>,
    /// Free heap in bytes (last report).
    pub free_memory: Option<u32>,
    /// Status reports received since the gateway first saw it.
    pub reports: u64,
    /// The last status report, whole.
    pub status: Option<StatusReport>,
}

/// One history point at full resolution (one status report) or one hourly rollup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPoint {
    /// Sample time, or the start of the hour (ms since the epoch).
    pub ts: i64,
    /// Samples in this point (1 at full resolution).
    pub samples: u32,
    /// Seconds since boot (the maximum within a rollup).
    pub uptime: u32,
    /// Free heap, KiB (the mean within a rollup).
    pub free_memory_kb: f64,
    /// Smallest free heap, KiB.
    pub free_memory_kb_min: u32,
    /// WiFi quality, % (mean).
    pub wifi_quality: f64,
    /// Latency, ms (mean).
    pub latency_ms: f64,
    /// Packet loss, % (mean).
    pub packet_loss: f64,
    /// Samples with any alert flag set.
    pub alerting: u32,
    /// Messages received per minute, from the 604 counter's increase since the node's
    /// previous report (over the hour for a rollup). A counter that went back (a reboot) counts
    /// from 0, never negative. `None`: no previous report within 2 h to compare with (or a
    /// rollup made before the gateway kept rates).
    pub messages_received_per_min: Option<f64>,
    /// Messages sent per minute (as `messagesReceivedPerMin`).
    pub messages_sent_per_min: Option<f64>,
    /// Messages dropped per minute (as `messagesReceivedPerMin`).
    pub messages_dropped_per_min: Option<f64>,
}

/// The message counters of a history sample that has none (made from telemetry, which
/// carries a rate instead): no message rate is computed across such a sample.
pub const NO_COUNTERS: u32 = u32::MAX;

/// A sample to store: one status report of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The node.
    pub node_id: u32,
    /// When it arrived.
    pub ts: i64,
    /// What it said.
    pub report: StatusReport,
}

/// History resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// Every report (kept for the raw retention, 7 days by default).
    Raw,
    /// Hourly rollups (kept for the rollup retention, 90 days by default).
    Hour,
}

/// `GET /nodes/{id}/history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// The node.
    pub node_id: u32,
    /// Resolution of `points`.
    pub resolution: Resolution,
    /// Range start (ms since the epoch, inclusive).
    pub from: i64,
    /// Range end (ms since the epoch, exclusive).
    pub to: i64,
    /// Points, oldest first.
    pub points: Vec<HistoryPoint>,
    /// Whether the range held more than the point limit (the newest were left out).
    pub truncated: bool,
}

/// What an alert is about (the fleet monitor's alert kinds, `docs/monitoring.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Free heap below the threshold (10 KiB).
    LowMemory,
    /// Latency above the threshold (500 ms).
    HighLatency,
    /// Packet loss above the threshold (10 %).
    PacketLoss,
    /// The node lost its connection to the root.
    LostRoot,
    /// An update failed on the node.
    OtaFailed,
    /// The node reports a sensor error.
    SensorError,
    /// WiFi signal below the threshold (-80 dBm).
    WeakSignal,
    /// The node keeps rebooting.
    RebootLoop,
    /// Free heap falls steadily.
    MemoryLeak,
    /// The node sends far more than it should.
    MessageFlood,
    /// Link quality dropped against the node's own baseline.
    LinkDegraded,
    /// The node stopped reporting (still in the mesh).
    NodeSilent,
    /// The node left the mesh.
    NodeOffline,
    /// The tree keeps changing (the mesh as a whole).
    TopologyChurn,
    /// A subtree was cut off (one alert for the subtree, about its top node).
    Partition,
    /// A kind this gateway does not know by name yet.
    Other,
}

impl AlertKind {
    /// Every kind.
    pub const ALL: [Self; 16] = [
        Self::LowMemory,
        Self::HighLatency,
        Self::PacketLoss,
        Self::LostRoot,
        Self::OtaFailed,
        Self::SensorError,
        Self::WeakSignal,
        Self::RebootLoop,
        Self::MemoryLeak,
        Self::MessageFlood,
        Self::LinkDegraded,
        Self::NodeSilent,
        Self::NodeOffline,
        Self::TopologyChurn,
        Self::Partition,
        Self::Other,
    ];

    /// The snake_case label.
    pub fn label(self) -> &'static str {
        match self {
            Self::LowMemory => "low_memory",
            Self::HighLatency => "high_latency",
            Self::PacketLoss => "packet_loss",
            Self::LostRoot => "lost_root",
            Self::OtaFailed => "ota_failed",
            Self::SensorError => "sensor_error",
            Self::WeakSignal => "weak_signal",
            Self::RebootLoop => "reboot_loop",
            Self::MemoryLeak => "memory_leak",
            Self::MessageFlood => "message_flood",
            Self::LinkDegraded => "link_degraded",
            Self::NodeSilent => "node_silent",
            Self::NodeOffline => "node_offline",
            Self::TopologyChurn => "topology_churn",
            Self::Partition => "partition",
            Self::Other => "other",
        }
    }

    /// Parses a label.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.label() == s)
    }

    /// The monitor's kind as the API's (by its stable name; a kind newer than this
    /// gateway is [`AlertKind::Other`]).
    pub fn from_monitor(k: meshfleet_monitor::AlertKind) -> Self {
        Self::parse(k.name()).unwrap_or(Self::Other)
    }
}

/// Alert severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For the record.
    Info,
    /// Needs a look.
    Warning,
    /// Needs action.
    Critical,
}

impl Severity {
    /// The lowercase label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    /// Parses a label.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "info" => Some(Self::Info),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }

    /// The monitor's severity as the API's.
    pub fn from_monitor(s: meshfleet_monitor::Severity) -> Self {
        match s {
            meshfleet_monitor::Severity::Info => Self::Info,
            meshfleet_monitor::Severity::Warning => Self::Warning,
            meshfleet_monitor::Severity::Critical => Self::Critical,
        }
    }
}

/// An alert (raised, maybe cleared, maybe acknowledged).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Its id.
    pub id: i64,
    /// The node it is about (0: the mesh as a whole; painlessMesh never uses id 0).
    pub node_id: u32,
    /// What it is about.
    pub kind: AlertKind,
    /// How bad.
    pub severity: Severity,
    /// A readable description.
    pub message: String,
    /// When it was raised (ms since the epoch).
    pub raised_at: i64,
    /// When the condition ended, if it has.
    pub cleared_at: Option<i64>,
    /// When someone acknowledged it, if anyone has.
    pub acked_at: Option<i64>,
    /// Who acknowledged it.
    pub acked_by: Option<String>,
    /// Their note.
    pub ack_note: Option<String>,
    /// Who cleared it by hand (`None`: its condition cleared, or it is active).
    pub cleared_by: Option<String>,
    /// Their note.
    pub clear_note: Option<String>,
}

/// An alert about to be raised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAlert {
    /// The node.
    pub node_id: u32,
    /// What about.
    pub kind: AlertKind,
    /// How bad.
    pub severity: Severity,
    /// Description.
    pub message: String,
    /// When.
    pub raised_at: i64,
}

/// A stored firmware artefact's metadata (`GET /firmware`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtefactInfo {
    /// SHA-256 of the whole `.mfw` file, lowercase hex: the artefact's id.
    pub id: String,
    /// OTA role it is for.
    pub role: String,
    /// Hardware it is for.
    pub hardware: String,
    /// Firmware version.
    pub version: String,
    /// Size of the `.mfw` file, bytes.
    pub size: u64,
    /// Size of the image it carries, bytes.
    pub image_size: u64,
    /// SHA-256 of the image, hex.
    pub image_sha256: String,
    /// Id of the key that signed it, hex.
    pub key_id: String,
    /// When it was uploaded (ms since the epoch).
    pub uploaded_at: i64,
    /// Who uploaded it.
    pub uploaded_by: String,
}

impl ArtefactInfo {
    /// What the store lists for a verified artefact: `bytes` is the whole `.mfw` file
    /// (its SHA-256 is the id), `key_id` the key its signature was checked with, stamped
    /// now as uploaded by `uploaded_by`.
    pub fn verified(
        bytes: &[u8],
        manifest: &meshfleet_firmware::Manifest,
        key_id: &meshfleet_firmware::KeyId,
        uploaded_by: &str,
    ) -> Self {
        Self {
            id: meshfleet_firmware::Sha256Digest::of(bytes).to_hex(),
            role: manifest.role.clone(),
            hardware: manifest.hardware.clone(),
            version: manifest.version.to_string(),
            size: bytes.len() as u64,
            image_size: manifest.size,
            image_sha256: manifest.sha256.to_string(),
            key_id: key_id.to_string(),
            uploaded_at: crate::now_millis(),
            uploaded_by: uploaded_by.to_owned(),
        }
    }
}

/// One audit log entry: who did what, when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// When (ms since the epoch).
    pub ts: i64,
    /// Who (the token's name and the client address).
    pub actor: String,
    /// What (`alert.ack`, `firmware.upload`, `firmware.delete`).
    pub action: String,
    /// On what (an alert or artefact id).
    pub target: String,
}
