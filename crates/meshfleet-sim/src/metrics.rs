//! Counters, the app-message ledger, convergence tracking and the final report.

use std::collections::BTreeMap;

use meshfleet_mesh::{Instant, NodeId};
use serde::Serialize;

/// splitmix64 finaliser: spreads node ids so that sums of them make a set fingerprint.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An order-independent fingerprint of a set of node ids (wrapping sum of mixed ids).
/// Comparing two fingerprints and the set sizes tells equal sets apart from unequal ones
/// except with probability ~2^-64, in O(1) instead of O(n) per comparison.
pub(crate) fn set_hash(ids: &[NodeId]) -> u64 {
    ids.iter()
        .fold(0u64, |h, id| h.wrapping_add(mix(u64::from(id.0))))
}

/// Per-node convergence bookkeeping against the ground truth (connected components of
/// the simulator's open links among running, non-hung nodes).
#[derive(Default)]
pub(crate) struct Convergence {
    pub(crate) list_hash: Vec<u64>,
    pub(crate) list_len: Vec<u32>,
    /// Component index per node, `u32::MAX` when not running.
    pub(crate) comp: Vec<u32>,
    pub(crate) comp_hash: Vec<u64>,
    pub(crate) comp_size: Vec<u32>,
    pub(crate) ok: Vec<bool>,
    pub(crate) num_ok: usize,
    pub(crate) num_alive: usize,
    pub(crate) dirty: bool,
    pub(crate) converged: bool,
    pub(crate) pending: Vec<(String, Instant)>,
    pub(crate) entries: Vec<ConvergenceEntry>,
    pub(crate) formation_done_at: Option<Instant>,
    pub(crate) formation_converged_at: Option<Instant>,
}

impl Convergence {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            list_hash: vec![0; n],
            list_len: vec![0; n],
            comp: vec![u32::MAX; n],
            ok: vec![false; n],
            ..Self::default()
        }
    }

    fn expected(&self, v: usize, id: NodeId) -> bool {
        let c = self.comp[v];
        if c == u32::MAX {
            return false;
        }
        let c = c as usize;
        self.list_len[v] + 1 == self.comp_size[c]
            && self.list_hash[v].wrapping_add(mix(u64::from(id.0))) == self.comp_hash[c]
    }

    pub(crate) fn refresh(&mut self, v: usize, id: NodeId) {
        let now_ok = self.expected(v, id);
        if now_ok != self.ok[v] {
            self.ok[v] = now_ok;
            if now_ok {
                self.num_ok += 1;
            } else {
                self.num_ok -= 1;
            }
        }
    }

    pub(crate) fn set_list(&mut self, v: usize, id: NodeId, nodes: &[NodeId]) {
        self.list_hash[v] = set_hash(nodes);
        self.list_len[v] = nodes.len() as u32;
        self.refresh(v, id);
    }

    /// Whether every running node's list matches its component.
    pub(crate) fn all_ok(&self) -> bool {
        self.num_alive > 0 && self.num_ok == self.num_alive
    }

    pub(crate) fn components(&self) -> usize {
        self.comp_size.len()
    }

    /// Called after each simulator event: records convergence transitions.
    pub(crate) fn observe(&mut self, now: Instant) {
        let all = self.all_ok();
        if all && !self.converged {
            for (cause, at) in self.pending.drain(..) {
                self.entries.push(ConvergenceEntry {
                    cause,
                    at_s: secs(at),
                    converged_after_s: Some(secs(now) - secs(at)),
                });
            }
        }
        self.converged = all;
        if all
            && self.components() == 1
            && self.formation_converged_at.is_none()
            && self.formation_done_at.is_some_and(|t| t <= now)
        {
            self.formation_converged_at = Some(now);
        }
    }
}

pub(crate) fn secs(t: Instant) -> f64 {
    t.as_micros() as f64 / 1e6
}

/// Running totals between two samples.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Window {
    pub(crate) frames: u64,
    pub(crate) bytes: u64,
    pub(crate) drops: u64,
}

/// One row of the time series.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Sample {
    /// Virtual time at the end of the interval, seconds.
    pub t_s: f64,
    /// App messages sent in the interval (filled in by the traffic workload,
    /// [`crate::traffic`]).
    pub app_sent: u64,
    /// App message deliveries in the interval (the traffic workload's).
    pub app_delivered: u64,
    /// Frames put on the air in the interval.
    pub frames_on_air: u64,
    /// Bytes put on the air in the interval.
    pub bytes_on_air: u64,
    /// Frames dropped in the interval (all reasons).
    pub drops: u64,
    /// Running nodes (booted, not crashed, not hung).
    pub nodes_alive: u32,
    /// Running nodes whose node list is right.
    pub nodes_converged: u32,
    /// Connected components among running nodes.
    pub components: u32,
    /// Bytes waiting in all send queues.
    pub queued_bytes: u64,
    /// Largest mesh-time difference between two nodes of the largest component, µs.
    pub time_spread_us: Option<u64>,
}

/// Latency distribution of app message deliveries.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Deliveries measured.
    pub count: u64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

impl LatencySummary {
    /// From sorted latencies in µs (nearest-rank percentiles).
    pub fn from_sorted(us: &[u64]) -> Self {
        if us.is_empty() {
            return Self::default();
        }
        let pct = |p: f64| {
            let rank = ((p * us.len() as f64).ceil() as usize).clamp(1, us.len());
            us[rank - 1] as f64 / 1e3
        };
        Self {
            count: us.len() as u64,
            mean_ms: us.iter().sum::<u64>() as f64 / us.len() as f64 / 1e3,
            p50_ms: pct(0.5),
            p90_ms: pct(0.9),
            p99_ms: pct(0.99),
            max_ms: us[us.len() - 1] as f64 / 1e3,
        }
    }
}

/// Application traffic results.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct AppReport {
    /// Messages handed to a node.
    pub sent: u64,
    /// Messages a sender could not send (down, or `sendSingle` found no route).
    pub not_sent: u64,
    /// Deliveries the ground truth expects: for each message, the nodes connected to the
    /// sender when it was sent (broadcast) or 1 if the destination was (single).
    pub expected_deliveries: u64,
    /// Distinct deliveries.
    pub delivered: u64,
    /// Deliveries of a message a node had already received.
    pub duplicates: u64,
    /// `delivered / expected_deliveries`.
    pub delivery_ratio: f64,
    /// Broadcasts that reached every node expected, each exactly once.
    pub broadcasts_complete: u64,
    /// Broadcasts sent.
    pub broadcasts: u64,
    /// Delivery latency.
    pub latency: LatencySummary,
}

impl AppReport {
    /// A run without application traffic: nothing sent, nothing expected, so every
    /// expected delivery happened (ratio 1).
    pub(crate) fn none() -> Self {
        Self {
            delivery_ratio: 1.0,
            ..Self::default()
        }
    }
}

/// Traffic on one link (both directions), over its whole life.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LinkReport {
    /// The link id (never reused).
    pub link: u64,
    /// The access point's node number.
    pub ap: u32,
    /// The station's node number.
    pub station: u32,
    /// Opened, virtual seconds.
    pub opened_s: f64,
    /// Closed, virtual seconds (`None`: still open at the end).
    pub closed_s: Option<f64>,
    /// Frames AP → station.
    pub frames_down: u64,
    /// Bytes AP → station.
    pub bytes_down: u64,
    /// Frames station → AP.
    pub frames_up: u64,
    /// Bytes station → AP.
    pub bytes_up: u64,
    /// Segments retransmitted (both directions).
    pub retransmissions: u64,
}

/// Per-node results.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct NodeReport {
    /// Node number.
    pub node: u32,
    /// Mesh id.
    pub id: u32,
    /// Running at the end.
    pub up: bool,
    /// Boots (1 = never rebooted).
    pub boots: u32,
    /// Frames it put on the air.
    pub frames_sent: u64,
    /// Bytes it put on the air.
    pub bytes_sent: u64,
    /// Peak of the bytes waiting in all its send queues together.
    pub queue_peak_bytes: u64,
    /// Peak of the frames waiting in all its send queues together.
    pub queue_peak_frames: u64,
    /// App messages it received.
    pub app_received: u64,
    /// Other nodes in its node list at the end.
    pub known_nodes: u32,
}

/// One topology event and how long the node lists took to catch up.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ConvergenceEntry {
    /// What happened (`formation`, `crash 4`, …).
    pub cause: String,
    /// When, virtual seconds.
    pub at_s: f64,
    /// Until every running node's list matched its component again (`None`: never).
    pub converged_after_s: Option<f64>,
}

/// Node-list convergence.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ConvergenceReport {
    /// When the last node of the initial formation joined.
    pub formation_done_s: Option<f64>,
    /// First time after that when all running nodes formed one mesh and every node list
    /// equalled the set of all other running nodes.
    pub formation_converged_s: Option<f64>,
    /// After each timeline event.
    pub after_events: Vec<ConvergenceEntry>,
    /// Whether all lists were right at the end.
    pub converged_at_end: bool,
    /// Connected components among running nodes at the end.
    pub components_at_end: u32,
}

/// Mesh-time agreement.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TimeSyncReport {
    /// Largest pairwise mesh-time difference in the largest component at the end, µs.
    pub final_spread_us: Option<u64>,
    /// Largest such difference over the samples of the last 60 virtual seconds, µs.
    pub max_spread_last_minute_us: Option<u64>,
    /// First sample from which the spread stayed below 1 ms to the end, seconds.
    pub below_1ms_from_s: Option<f64>,
}

/// Sums of the nodes' own counters (`meshfleet_mesh::Stats`), crashed boots included.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MeshTotals {
    /// Links closed because the peer went away.
    pub closed_peer: u64,
    /// Links closed by the node-sync timeout.
    pub closed_timeout: u64,
    /// Links closed for invalid node syncs (loops, duplicates).
    pub closed_invalid: u64,
    /// Layout changes seen.
    pub layout_changes: u64,
    /// Time corrections applied.
    pub time_adjustments: u64,
    /// Frames forwarded for others.
    pub forwarded: u64,
}

/// The result of a run. `summary.json` is this, serialized: it holds no wall-clock value,
/// so one seed gives one file, byte for byte.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SimReport {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Topology kind.
    pub topology: String,
    /// Channel model.
    pub channel: String,
    /// Node count.
    pub nodes: u32,
    /// Virtual time simulated, seconds.
    pub virtual_time_s: f64,
    /// Events processed (stale wakeups excluded).
    pub events_processed: u64,
    /// Frames put on the air.
    pub frames_on_air: u64,
    /// Bytes put on the air.
    pub bytes_on_air: u64,
    /// App traffic.
    pub app: AppReport,
    /// Frames dropped, by reason (simulator: `queue_full`, `link_closed`, `node_crash`,
    /// `node_hung`, `partition`, `tcp_reset`, …; node: `no_route`, `decode`, …).
    pub drops: BTreeMap<String, u64>,
    /// Links closed by nodes, by `CloseReason` label.
    pub link_closes: BTreeMap<String, u64>,
    /// Node-list convergence.
    pub convergence: ConvergenceReport,
    /// Time sync.
    pub time_sync: TimeSyncReport,
    /// Node counters.
    pub mesh: MeshTotals,
    /// Per node.
    pub per_node: Vec<NodeReport>,
    /// Per link.
    pub per_link: Vec<LinkReport>,
    /// The time series (written as CSV, not in `summary.json`).
    #[serde(skip)]
    pub series: Vec<Sample>,
    /// Every delivery latency in µs, sorted (for the CDF plot).
    #[serde(skip)]
    pub latencies_us: Vec<u64>,
    /// Bytes on the air by traffic class, one entry per sample of `series` (filled in by
    /// `run_scenario`; empty when the simulation was driven from code). Not in
    /// `summary.json`: written to `timeseries.csv` and plotted.
    #[serde(skip)]
    pub air_by_class: Vec<crate::air::ClassBytes>,
    /// The OTA campaign's results, if the scenario ran one (`run_scenario` fills it in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ota: Option<crate::ota::OtaReport>,
    /// The progressive rollout's outcome (`state`, `exposed`, `rolled_back`,
    /// `restored_s`, per-wave counts: `meshfleet_rollout::RolloutSummary`), when the
    /// scenario ran one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<serde_json::Value>,
    /// Each workload's metrics under its key ([`crate::workload`]; `run_scenario` fills it
    /// in), flattened into `summary.json` (`"telemetry": {...}`).
    #[serde(flatten)]
    pub workloads: BTreeMap<String, serde_json::Value>,
}

impl SimReport {
    /// `summary.json` contents: pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s =
            serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        let s = LatencySummary::from_sorted(&v);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p90_ms, 90.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
    }

    #[test]
    fn set_hash_ignores_order() {
        let a = [NodeId(1), NodeId(2), NodeId(3)];
        let b = [NodeId(3), NodeId(1), NodeId(2)];
        assert_eq!(set_hash(&a), set_hash(&b));
        assert_ne!(set_hash(&a), set_hash(&a[..2]));
    }
}
