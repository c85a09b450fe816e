//! The fleet registry's public view: one [`NodeRecord`] per node ever seen, health, and the
//! query API (filter by role, health, firmware, hardware; sort; paginate).

use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Ordering;

use meshfleet_mesh::Instant;
use meshfleet_wire::NodeId;

/// A node's health, worst last (`Ord` sorts healthy first).
///
/// Rules (`docs/monitoring.md`): **offline** when the node is not reachable: it left the
/// topology more than `departure_grace_s` ago, or (known from reports only) nothing was heard
/// for `silent_after_periods` report periods; otherwise **critical** when it has an active
/// critical alert, **warning** with an active warning alert, else **healthy**.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Reachable, no alert above info.
    Healthy,
    /// Reachable, a warning alert is active.
    Warning,
    /// Reachable, a critical alert is active.
    Critical,
    /// Not reachable.
    Offline,
}

/// Where the registry heard of a node (bit set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sources(pub u8);

impl Sources {
    /// In a node sync tree (topology).
    pub const TOPOLOGY: u8 = 0x01;
    /// Sent a status package (604).
    pub const STATUS: u8 = 0x02;
    /// Sent telemetry (710).
    pub const TELEMETRY: u8 = 0x04;
    /// Answered a delay probe.
    pub const PROBE: u8 = 0x08;

    /// Whether any of `mask` is set.
    pub fn any(self, mask: u8) -> bool {
        self.0 & mask != 0
    }
}

/// The latest values known for a node (from 604, telemetry or probes; `None`: unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Free heap, bytes (604 sends KB: multiplied by 1024).
    pub free_heap_bytes: Option<i64>,
    /// Station RSSI, dBm (604 sends a 0-100 quality: converted back).
    pub rssi_dbm: Option<i64>,
    /// Latency, ms (reported by the node, or measured by a probe: round trip / 2).
    pub latency_ms: Option<i64>,
    /// Packet loss, percent.
    pub loss_pct: Option<i64>,
    /// Messages sent per minute (telemetry, or from 604 counters between two reports).
    pub tx_per_min: Option<i64>,
    /// Uptime at `uptime_at`, seconds.
    pub uptime_s: Option<u32>,
    /// When `uptime_s` was true.
    pub uptime_at: Option<Instant>,
    /// Nodes the node knows (604).
    pub nodes_known: Option<u16>,
    /// Last error text (604).
    pub last_error: Option<String>,
}

/// Everything the registry knows about one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRecord {
    /// The node.
    pub id: NodeId,
    /// First heard of.
    pub first_seen: Instant,
    /// Last evidence of life (report, probe answer, presence in a topology update).
    pub last_seen: Instant,
    /// Last status or telemetry report.
    pub last_report: Option<Instant>,
    /// How it was heard of.
    pub sources: Sources,
    /// Whether it is in the current topology.
    pub in_topology: bool,
    /// Whether it was ever in the topology (nodes only known from reports are evicted first).
    pub confirmed: bool,
    /// When it left the topology (while it is away).
    pub left_at: Option<Instant>,
    /// Its parent in the gateway's tree (`None`: root of the tree, or unknown).
    pub parent: Option<NodeId>,
    /// Hops from the gateway.
    pub depth: Option<u16>,
    /// Role (telemetry identity).
    pub role: Option<String>,
    /// Hardware (telemetry identity).
    pub hardware: Option<String>,
    /// Firmware version (604 `fw` or telemetry identity).
    pub firmware: Option<String>,
    /// Latest values.
    pub metrics: Metrics,
    /// Current health.
    pub health: Health,
    /// Reboots seen (uptime resets, boot keyframes).
    pub reboots: u32,
    /// Learnt report period, seconds (EWMA of report gaps).
    pub report_period_s: Option<u32>,
}

impl NodeRecord {
    pub(crate) fn new(id: NodeId, now: Instant) -> Self {
        Self {
            id,
            first_seen: now,
            last_seen: now,
            last_report: None,
            sources: Sources::default(),
            in_topology: false,
            confirmed: false,
            left_at: None,
            parent: None,
            depth: None,
            role: None,
            hardware: None,
            firmware: None,
            metrics: Metrics::default(),
            health: Health::Healthy,
            reboots: 0,
            report_period_s: None,
        }
    }
}

/// How to order a page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// Node id.
    #[default]
    Id,
    /// Last evidence of life.
    LastSeen,
    /// Health (healthy first).
    Health,
    /// Free heap (unknown last).
    FreeHeap,
    /// RSSI (unknown last).
    Rssi,
    /// Uptime (unknown last).
    Uptime,
    /// Firmware version (text order; unknown last).
    Firmware,
}

/// A registry query: filters (all must match), order, page.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeQuery {
    /// Only nodes with this role.
    pub role: Option<String>,
    /// Only nodes in one of these health states (empty: any).
    pub health: Vec<Health>,
    /// Only nodes running this firmware version.
    pub firmware: Option<String>,
    /// Only nodes on this hardware.
    pub hardware: Option<String>,
    /// Order.
    pub sort: SortKey,
    /// Reverse the order.
    pub descending: bool,
    /// Items to skip.
    pub offset: usize,
    /// Most items returned (capped at [`MAX_PAGE`]).
    pub limit: usize,
}

/// Largest page.
pub const MAX_PAGE: usize = 1_000;

impl Default for NodeQuery {
    fn default() -> Self {
        Self {
            role: None,
            health: Vec::new(),
            firmware: None,
            hardware: None,
            sort: SortKey::Id,
            descending: false,
            offset: 0,
            limit: 100,
        }
    }
}

impl NodeQuery {
    pub(crate) fn matches(&self, n: &NodeRecord) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().map_or(true, |w| have.as_ref() == Some(w))
        };
        eq(&self.role, &n.role)
            && eq(&self.firmware, &n.firmware)
            && eq(&self.hardware, &n.hardware)
            && (self.health.is_empty() || self.health.contains(&n.health))
    }

    pub(crate) fn compare(&self, a: &NodeRecord, b: &NodeRecord) -> Ordering {
        // Unknown values sort last in both directions.
        fn opt<T: Ord>(a: Option<T>, b: Option<T>, desc: bool) -> Ordering {
            match (a, b) {
                (Some(x), Some(y)) if desc => y.cmp(&x),
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            }
        }
        let d = self.descending;
        let flip = |o: Ordering| if d { o.reverse() } else { o };
        let o = match self.sort {
            SortKey::Id => flip(a.id.cmp(&b.id)),
            SortKey::LastSeen => flip(a.last_seen.cmp(&b.last_seen)),
            SortKey::Health => flip(a.health.cmp(&b.health)),
            SortKey::FreeHeap => opt(a.metrics.free_heap_bytes, b.metrics.free_heap_bytes, d),
            SortKey::Rssi => opt(a.metrics.rssi_dbm, b.metrics.rssi_dbm, d),
            SortKey::Uptime => opt(a.metrics.uptime_s, b.metrics.uptime_s, d),
            SortKey::Firmware => opt(a.firmware.as_ref(), b.firmware.as_ref(), d),
        };
        o.then(a.id.cmp(&b.id))
    }
}

/// One page of a query's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<'a> {
    /// Nodes matching the filters, in all pages.
    pub total: usize,
    /// The offset asked for.
    pub offset: usize,
    /// This page.
    pub items: Vec<&'a NodeRecord>,
}

/// Counts by health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthSummary {
    /// Healthy nodes.
    pub healthy: usize,
    /// Nodes with a warning.
    pub warning: usize,
    /// Critical nodes.
    pub critical: usize,
    /// Offline nodes.
    pub offline: usize,
}
