//! The gateway side: [`Monitor`] = fleet registry + detectors + alerts + queries + probes.
//!
//! # Run loop
//!
//! ```text
//! loop {
//!     // inputs, each with the current time:
//!     monitor.handle_app_message(now, from, &msg);   // BROADCAST/SINGLE text (604 inside)
//!     monitor.handle_package(now, ty, from, &text);  // top-level 604 / 710 packages
//!     monitor.handle_topology(now, &tree);           // the gateway's node tree, on change
//!     monitor.handle_delay(now, node, delay_us);     // a TIME_DELAY answer
//!     monitor.handle_timeout(now);                   // at poll_timeout()
//!     // outputs, drained until empty:
//!     while let Some(t) = monitor.poll_transmit() { /* send a 711 or a delay probe */ }
//!     while let Some(e) = monitor.poll_event() { /* alerts, health changes, query results */ }
//! }
//! ```
//!
//! Every input is bounded work: one report touches one node's state (detectors are O(1) or
//! O(window)); a topology update is linear in the tree; the periodic sweep is linear in the
//! registry and runs at most once a second. Memory is bounded by `max_nodes` and
//! `max_unconfirmed` (fake ids evict each other, never confirmed nodes) and by fixed
//! per-node windows.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use meshfleet_mesh::{Duration, Instant};
use meshfleet_wire::{Message, NodeId, NodeTree};

use crate::alert::{Alert, AlertEngine, AlertEvent, AlertKey, AlertKind, Severity, Subject};
use crate::config::MonitorConfig;
use crate::query::{Method, Queries, QueryError, QueryId, QueryResult, QueryTarget};
use crate::registry::{Health, HealthSummary, NodeQuery, NodeRecord, Page, Sources, MAX_PAGE};
use crate::status::{self, AlertFlags, StatusDecodeError};
use crate::telemetry::{self, flags, Metric, StreamState, TelemetryDecodeError};
use crate::trend::{push_spaced, secs, trend};

/// Telemetry reports per node and minute that may skip the flood check because they say they
/// were buffered (`a`) or answer a query (`r`): a producer's whole buffer (32 by default) and
/// then some.
const EXEMPT_PER_MIN: u16 = 48;

fn dur_s(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

/// What the monitor did with an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingest {
    /// Stored.
    Accepted,
    /// Not a monitoring message (an ordinary application message): nothing to do.
    NotMonitoring,
    /// Dropped and counted.
    Dropped(DropReason),
}

/// Why a report was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// A status package that could not be decoded.
    Status(StatusDecodeError),
    /// A telemetry package that could not be decoded.
    Telemetry(TelemetryDecodeError),
    /// The sender is node 0 (the library's "unknown").
    UnknownSender,
    /// The node sent again sooner than `min_report_gap_ms`.
    Flood,
    /// The uptime is impossible given the node's previous report (backwards without a
    /// reboot, or ahead of the time elapsed): a spoofed `from` or a broken node.
    Implausible,
    /// A telemetry report older than one already applied.
    Stale,
    /// The registry is full of confirmed, reachable nodes.
    RegistryFull,
}

/// Counters (never reset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorStats {
    /// Status packages stored.
    pub status_accepted: u64,
    /// Telemetry reports stored.
    pub telemetry_accepted: u64,
    /// Packages that could not be decoded (status and telemetry).
    pub malformed: u64,
    /// Fields or values dropped inside otherwise accepted packages.
    pub field_faults: u64,
    /// Reports dropped as a flood (too close together).
    pub flooded: u64,
    /// Reports dropped as implausible (uptime).
    pub implausible: u64,
    /// Telemetry reports older than one already applied.
    pub stale: u64,
    /// Telemetry reports lost on the way (sequence gaps).
    pub telemetry_lost: u64,
    /// Reports from node 0.
    pub unknown_sender: u64,
    /// Nodes evicted to make room.
    pub evicted: u64,
    /// New nodes refused because the registry was full.
    pub refused: u64,
    /// Reboots seen.
    pub reboots: u64,
    /// Delay probes sent.
    pub probes_sent: u64,
    /// Delay probes without an answer.
    pub probes_lost: u64,
    /// Liveness checks sent because a report was overdue (711 or delay probe).
    pub verifications: u64,
    /// Events dropped because the caller did not drain them (`max_events`).
    pub events_dropped: u64,
    /// Topology updates handled.
    pub topology_updates: u64,
}

/// Something the caller must send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// A telemetry query (711): send `text` as a package (routed SINGLE to `to`).
    Query {
        /// The node asked.
        to: NodeId,
        /// The package's JSON text.
        text: String,
    },
    /// Measure the delay to `to` with painlessMesh's TIME_DELAY (the answer goes to
    /// [`Monitor::handle_delay`]).
    DelayProbe {
        /// The node probed.
        to: NodeId,
    },
}

/// Something for the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorEvent {
    /// A node was heard of for the first time (or again after eviction).
    NodeDiscovered(NodeId),
    /// A node's health changed.
    HealthChanged {
        /// The node.
        node: NodeId,
        /// Before.
        from: Health,
        /// Now.
        to: Health,
    },
    /// A node was evicted from the registry to make room.
    NodeEvicted(NodeId),
    /// An alert changed.
    Alert(AlertEvent),
    /// An on-demand query finished.
    QueryDone(QueryResult),
}

/// Per-node detector state (fixed size but for the bounded windows).
#[derive(Debug, Default)]
struct Det {
    stream: StreamState,
    /// Uptime anchor from status packages: (uptime, when).
    uptime: Option<(u32, Instant)>,
    /// Implausible uptimes that agree with each other: (first seen, count, last uptime,
    /// last seen).
    candidate: Option<(Instant, u8, u32, Instant)>,
    tx_counter: Option<(u32, Instant)>,
    reboots: VecDeque<Instant>,
    heap: VecDeque<(Instant, i64)>,
    rssi_mean: f64,
    rssi_var: f64,
    rssi_n: u32,
    flood_drops: VecDeque<Instant>,
    probe_out: Option<Instant>,
    /// Last liveness check sent because the node's report was overdue, and how many in a row.
    verify_at: Option<Instant>,
    verify_count: u8,
    /// The sweep found the node quiet and the checks unanswered.
    confirmed_quiet: bool,
    /// Reports exempt from the flood check in the current minute: (minute start, count).
    exempt: (Instant, u16),
    /// Last answer to a delay probe.
    alive_at: Option<Instant>,
    last_probe: Option<Instant>,
    probe_losses: u32,
    partition: Option<NodeId>,
    /// Node-reported alert bits (604 documented bits 3-7, telemetry flags) as alert kinds.
    reported: u16,
    ota_failed_external: bool,
    /// The key of this node in `Monitor::unconfirmed` (while unconfirmed).
    lru: Instant,
}

/// How a node enters the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    /// Present in the topology: confirmed.
    Topology,
    /// Sent a report; `exempt` from the flood check (buffered or answering a query).
    Report { exempt: bool },
}

struct Entry {
    rec: NodeRecord,
    det: Det,
}

struct Partition {
    members: Vec<NodeId>,
    since: Instant,
}

/// The gateway's monitoring core. See the module docs for the run loop.
pub struct Monitor {
    cfg: MonitorConfig,
    nodes: BTreeMap<NodeId, Entry>,
    /// Unconfirmed nodes by last evidence of life, for eviction.
    unconfirmed: BTreeSet<(Instant, NodeId)>,
    alerts: AlertEngine,
    events: VecDeque<MonitorEvent>,
    transmits: VecDeque<Transmit>,
    stats: MonitorStats,
    /// The last topology: node -> parent (the gateway's direct links have parent `None`).
    topo: BTreeMap<NodeId, Option<NodeId>>,
    rooted: bool,
    /// Topology events inside the churn window, oldest first: when, and the top node of the
    /// subtree that left, rejoined or moved (a subtree that moves together is one event).
    churn: VecDeque<(Instant, NodeId)>,
    partitions: BTreeMap<NodeId, Partition>,
    queries: Queries,
    probe_tokens: f64,
    probe_refill_at: Instant,
    probe_cursor: NodeId,
    next_sweep: Instant,
    gateway: NodeId,
}

fn kind_bit(k: AlertKind) -> u16 {
    1 << (k as u16)
}

impl Monitor {
    /// A monitor for the gateway node `gateway` (left out of its own registry).
    pub fn new(cfg: MonitorConfig, gateway: NodeId) -> Self {
        Self {
            cfg,
            nodes: BTreeMap::new(),
            unconfirmed: BTreeSet::new(),
            alerts: AlertEngine::default(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            stats: MonitorStats::default(),
            topo: BTreeMap::new(),
            rooted: false,
            churn: VecDeque::new(),
            partitions: BTreeMap::new(),
            queries: Queries::default(),
            probe_tokens: 0.0,
            probe_refill_at: Instant::ZERO,
            probe_cursor: NodeId(0),
            next_sweep: Instant::ZERO,
            gateway,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MonitorConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &MonitorStats {
        &self.stats
    }

    /// Nodes in the registry.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the registry is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&id).map(|e| &e.rec)
    }

    /// A page of nodes matching `q`.
    pub fn nodes(&self, q: &NodeQuery) -> Page<'_> {
        let mut all: Vec<&NodeRecord> = self
            .nodes
            .values()
            .map(|e| &e.rec)
            .filter(|r| q.matches(r))
            .collect();
        all.sort_by(|a, b| q.compare(a, b));
        let total = all.len();
        let items = all
            .into_iter()
            .skip(q.offset)
            .take(q.limit.min(MAX_PAGE))
            .collect();
        Page {
            total,
            offset: q.offset,
            items,
        }
    }

    /// Node counts by health.
    pub fn health_summary(&self) -> HealthSummary {
        let mut s = HealthSummary::default();
        for e in self.nodes.values() {
            match e.rec.health {
                Health::Healthy => s.healthy += 1,
                Health::Warning => s.warning += 1,
                Health::Critical => s.critical += 1,
                Health::Offline => s.offline += 1,
            }
        }
        s
    }

    /// Active alerts, by subject then kind.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.active()
    }

    /// Number of active alerts.
    pub fn alert_count(&self) -> usize {
        self.alerts.len()
    }

    /// Alerts raised since the start.
    pub fn alerts_raised(&self) -> u64 {
        self.alerts.raised_total
    }

    /// The active alert of a key.
    pub fn alert(&self, key: &AlertKey) -> Option<&Alert> {
        self.alerts.get(key)
    }

    /// Active alerts per kind and severity, across nodes (aggregation for dashboards).
    pub fn alert_summary(&self) -> BTreeMap<(AlertKind, Severity), usize> {
        let mut m = BTreeMap::new();
        for a in self.alerts.active() {
            *m.entry((a.key.kind, a.severity)).or_insert(0) += 1;
        }
        m
    }

    /// Removes a node from the registry at an operator's request (decommissioned hardware);
    /// its alerts clear. It comes back if it is heard of again. `false` if it was not known.
    pub fn forget(&mut self, now: Instant, id: NodeId) -> bool {
        let Some(e) = self.nodes.remove(&id) else {
            return false;
        };
        self.unconfirmed.remove(&(e.det.lru, id));
        self.alerts.forget(now, Subject::Node(id));
        self.flush_alert_events();
        true
    }

    /// Acknowledges an active alert; `false` if no active alert has this id.
    pub fn acknowledge(&mut self, id: u64) -> bool {
        let ok = self.alerts.acknowledge(id);
        self.flush_alert_events();
        ok
    }

    /// An operator clears the active alert `id` by hand ([`crate::alert::ClearReason::Operator`]):
    /// a [`crate::AlertEvent::Cleared`] follows, and the same condition does not raise again
    /// until it has gone away (`datapoints_to_clear` evaluations without it) or
    /// `rearm_after_clear_s` has passed. `None` if no active alert has this id.
    pub fn clear_alert(&mut self, now: Instant, id: u64) -> Option<AlertKey> {
        let rearm = dur_s(self.cfg.rearm_after_clear_s);
        let key = self.alerts.clear_by_operator(now, id, rearm);
        self.flush_alert_events();
        key
    }

    /// The next output event.
    pub fn poll_event(&mut self) -> Option<MonitorEvent> {
        self.events.pop_front()
    }

    /// The next thing to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`Self::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_sweep;
        if let Some(d) = self.queries.next_deadline() {
            t = t.min(d);
        }
        Some(t)
    }

    fn push_event(&mut self, e: MonitorEvent) {
        if self.events.len() >= self.cfg.max_events {
            self.stats.events_dropped += 1;
            return;
        }
        self.events.push_back(e);
    }

    fn flush_alert_events(&mut self) {
        while let Some(e) = self.alerts.events.pop_front() {
            self.push_event(MonitorEvent::Alert(e));
        }
    }

    // ----- inputs -------------------------------------------------------------------------

    /// A decoded frame, dispatched: BROADCAST/SINGLE text (604 inside), top-level packages
    /// (604, 710). Everything else is [`Ingest::NotMonitoring`].
    pub fn handle_frame(&mut self, now: Instant, msg: &Message) -> Ingest {
        match msg {
            Message::Broadcast(t) | Message::Single(t) => {
                self.handle_app_message(now, t.from, &t.msg.as_text())
            }
            Message::Package(p) => self.handle_package(now, p.ty(), p.from(), p.text()),
            _ => Ingest::NotMonitoring,
        }
    }

    /// The text of an application message (what the library's receive callback gets) from
    /// `from`: a status package sent with `sendBroadcast(pkg.toJsonString())` is found here,
    /// and so is a telemetry report sent with `sendSingle(gateway, text)` by a firmware that
    /// cannot send plugin packages.
    pub fn handle_app_message(&mut self, now: Instant, from: NodeId, msg: &str) -> Ingest {
        match self.handle_status(now, from, msg) {
            // cheap pre-filter: most application messages are neither
            Ingest::NotMonitoring if msg.contains("710") => self.handle_telemetry(now, from, msg),
            other => other,
        }
    }

    /// A top-level plugin package of type `ty` from `from` (the frame's `from`).
    pub fn handle_package(&mut self, now: Instant, ty: i64, from: NodeId, text: &str) -> Ingest {
        match ty {
            status::STATUS_TYPE => self.handle_status(now, from, text),
            telemetry::TELEMETRY_TYPE => self.handle_telemetry(now, from, text),
            _ => Ingest::NotMonitoring,
        }
    }

    /// A status package's text from `from`.
    pub fn handle_status(&mut self, now: Instant, from: NodeId, text: &str) -> Ingest {
        let d = match status::decode(text) {
            Ok(d) => d,
            Err(StatusDecodeError::NotStatus) => return Ingest::NotMonitoring,
            Err(e) => {
                self.stats.malformed += 1;
                return Ingest::Dropped(DropReason::Status(e));
            }
        };
        if from == NodeId::UNKNOWN || from == self.gateway {
            self.stats.unknown_sender += 1;
            return Ingest::Dropped(DropReason::UnknownSender);
        }
        self.stats.field_faults += d.faults.len() as u64;
        if let Err(r) = self.admit(now, from, Admit::Report { exempt: false }) {
            return Ingest::Dropped(r);
        }
        let r = d.report;
        let Some(e) = self.nodes.get_mut(&from) else {
            return Ingest::Dropped(DropReason::RegistryFull);
        };
        // Uptime plausibility: a reboot brings uptime below the time since the last report;
        // `millis()/1000` wraps at 4,294,967 s; anything else going back, or running ahead
        // of the clock, is not this node's uptime.
        let mut reboot = false;
        if let (Some(u), Some((pu, pat))) = (r.uptime_s, e.det.uptime) {
            let el = secs(now.saturating_since(pat));
            let slack = 30.0 + el * 0.02;
            let expected = f64::from(pu) + el;
            let u = f64::from(u);
            const WRAP: f64 = 4_294_967.296;
            let ok = if u + slack < expected {
                if abs(u - (expected - WRAP)) <= slack {
                    true // wrapped, not rebooted
                } else if u <= el + slack {
                    reboot = true;
                    true
                } else {
                    false
                }
            } else {
                u <= expected + slack
            };
            if !ok {
                // A node whose clock really jumped keeps reporting from its new value, and
                // its reports agree with each other: after three such reports spanning two
                // report periods with nothing plausible in between, start again from the
                // new value. A spoofer cannot do this while the real node is reporting:
                // every plausible report resets the run.
                let period = e
                    .rec
                    .report_period_s
                    .unwrap_or(self.cfg.report_interval_s)
                    .max(1);
                let agrees = e.det.candidate.is_some_and(|(_, _, lu, lat)| {
                    let el = secs(now.saturating_since(lat));
                    abs(f64::from(lu) + el - u) <= 30.0 + el * 0.02
                });
                let (first_at, run) = match e.det.candidate {
                    Some((first_at, run, _, _)) if agrees => (first_at, run + 1),
                    _ => (now, 1),
                };
                e.det.candidate = Some((first_at, run, u as u32, now));
                let span = now.saturating_since(first_at);
                if run < 3 || span < dur_s(period.saturating_mul(2)) {
                    self.stats.implausible += 1;
                    return Ingest::Dropped(DropReason::Implausible);
                }
            }
        }
        e.det.candidate = None;
        let rec = &mut e.rec;
        rec.sources.0 |= Sources::STATUS;
        if let Some(fw) = &r.firmware {
            if rec.firmware.as_deref() != Some(fw) {
                rec.firmware = Some(fw.clone());
            }
        }
        let m = &mut rec.metrics;
        if let Some(kb) = r.free_heap_kb {
            m.free_heap_bytes = Some(i64::from(kb) * 1024);
        }
        if let Some(q) = r.wifi_quality {
            m.rssi_dbm = Some(i64::from(status::rssi_from_quality(q)));
        }
        if let Some(l) = r.latency_ms {
            m.latency_ms = Some(i64::from(l));
        }
        if let Some(l) = r.loss_pct {
            m.loss_pct = Some(i64::from(l));
        }
        if let Some(n) = r.nodes {
            m.nodes_known = Some(n);
        }
        if let Some(err) = r.last_error {
            m.last_error = Some(err);
        }
        if let Some(u) = r.uptime_s {
            m.uptime_s = Some(u);
            m.uptime_at = Some(now);
            e.det.uptime = Some((u, now));
        }
        if let Some(tx) = r.msg_tx {
            if let Some((ptx, pat)) = e.det.tx_counter {
                let mins = secs(now.saturating_since(pat)) / 60.0;
                if !reboot && tx >= ptx && mins > 0.0 {
                    m.tx_per_min = Some((f64::from(tx - ptx) / mins) as i64);
                }
            }
            e.det.tx_counter = Some((tx, now));
        }
        let mut reported = 0u16;
        if let Some(a) = r.alerts {
            for (bit, kind) in [
                (AlertFlags::DOC_LOST_ROOT, AlertKind::LostRoot),
                (AlertFlags::DOC_OTA_FAILED, AlertKind::OtaFailed),
                (AlertFlags::DOC_SENSOR_ERROR, AlertKind::SensorError),
                (AlertFlags::DOC_REBOOT_LOOP, AlertKind::RebootLoop),
            ] {
                if a.has(bit) {
                    reported |= kind_bit(kind);
                }
            }
        }
        e.det.reported = reported;
        self.stats.status_accepted += 1;
        self.after_report(now, from, reboot, true);
        Ingest::Accepted
    }

    /// A telemetry package's text from `from`.
    pub fn handle_telemetry(&mut self, now: Instant, from: NodeId, text: &str) -> Ingest {
        let d = match telemetry::decode(text) {
            Ok(d) => d,
            Err(TelemetryDecodeError::NotTelemetry) => return Ingest::NotMonitoring,
            Err(e) => {
                self.stats.malformed += 1;
                return Ingest::Dropped(DropReason::Telemetry(e));
            }
        };
        if from == NodeId::UNKNOWN || from == self.gateway {
            self.stats.unknown_sender += 1;
            return Ingest::Dropped(DropReason::UnknownSender);
        }
        self.stats.field_faults += u64::from(d.faults);
        let r = d.report;
        // Buffered reports drain in a burst and query answers follow a request: neither is
        // a flood. But `a` and `r` are the sender's word: at most `EXEMPT_PER_MIN` such reports
        // a minute skip the flood check (a producer's whole buffer and a few answers).
        let mut exempt = r.age_s > 0 || r.reply_to.is_some();
        if exempt {
            if let Some(e) = self.nodes.get_mut(&from) {
                let (start, n) = e.det.exempt;
                let (start, n) = if now.saturating_since(start) >= Duration::from_secs(60) {
                    (now, 1)
                } else {
                    (start, n.saturating_add(1))
                };
                e.det.exempt = (start, n);
                exempt = n <= EXEMPT_PER_MIN;
            }
        }
        if let Err(reason) = self.admit(now, from, Admit::Report { exempt }) {
            return Ingest::Dropped(reason);
        }
        let Some(e) = self.nodes.get_mut(&from) else {
            return Ingest::Dropped(DropReason::RegistryFull);
        };
        let applied = e.det.stream.apply(now, &r);
        if let Some(id) = &r.identity {
            let set = |slot: &mut Option<String>, v: &String| {
                if !v.is_empty() && slot.as_ref() != Some(v) {
                    *slot = Some(v.clone());
                }
            };
            set(&mut e.rec.firmware, &id.firmware);
            set(&mut e.rec.role, &id.role);
            set(&mut e.rec.hardware, &id.hardware);
        }
        if applied.stale {
            self.stats.stale += 1;
            return Ingest::Dropped(DropReason::Stale);
        }
        self.stats.telemetry_lost += u64::from(applied.lost);
        e.rec.sources.0 |= Sources::TELEMETRY;
        let v = &e.det.stream.values;
        let m = &mut e.rec.metrics;
        let get = |k: Metric| v[k.slot()];
        m.free_heap_bytes = get(Metric::FreeHeap).or(m.free_heap_bytes);
        m.rssi_dbm = get(Metric::Rssi).or(m.rssi_dbm);
        m.latency_ms = get(Metric::Latency).or(m.latency_ms);
        m.loss_pct = get(Metric::Loss).or(m.loss_pct);
        m.tx_per_min = get(Metric::TxPerMin).or(m.tx_per_min);
        if let Some(u) = e.det.stream.uptime_at(now) {
            m.uptime_s = Some(u);
            m.uptime_at = Some(now);
        }
        let f = get(Metric::Flags).unwrap_or(0);
        let mut reported = 0u16;
        for (bit, kind) in [
            (flags::OTA_FAILED, AlertKind::OtaFailed),
            (flags::SENSOR_ERROR, AlertKind::SensorError),
            (flags::LOST_ROOT, AlertKind::LostRoot),
            (flags::MEMORY_LEAK, AlertKind::MemoryLeak),
        ] {
            if f & bit != 0 {
                reported |= kind_bit(kind);
            }
        }
        e.det.reported = reported;
        self.stats.telemetry_accepted += 1;
        if let Some(q) = r.reply_to {
            self.queries.answered(from, Some(QueryId(q)));
            self.finish_queries(now);
        }
        // Answers to queries and buffered reports are not the node's rhythm.
        let rhythm = r.reply_to.is_none() && r.age_s == 0;
        self.after_report(now, from, applied.reboot, rhythm);
        Ingest::Accepted
    }

    /// A TIME_DELAY measurement to `node` (one-way delay, µs, as the mesh reports it).
    pub fn handle_delay(&mut self, now: Instant, node: NodeId, delay_us: i32) {
        let Some(e) = self.nodes.get_mut(&node) else {
            return;
        };
        e.det.probe_out = None;
        e.det.probe_losses = 0;
        e.det.alive_at = Some(now);
        e.rec.sources.0 |= Sources::PROBE;
        e.rec.last_seen = now;
        // A node's own latency report wins; a probe fills in for nodes that send nothing.
        // The trip delay comes from mesh times, which jump while time sync converges (the
        // simulator showed 60 s "delays" for 3 s round trips): a value beyond the probe
        // timeout, or negative, proves the node alive but says nothing about latency.
        let plausible =
            delay_us >= 0 && i64::from(delay_us) <= i64::from(self.cfg.probe_timeout_s) * 1_000_000;
        if plausible && !e.rec.sources.any(Sources::STATUS | Sources::TELEMETRY) {
            e.rec.metrics.latency_ms = Some(i64::from(delay_us) / 1000);
        }
        if self.alerts.is_active(&AlertKey {
            subject: Subject::Node(node),
            kind: AlertKind::NodeSilent,
        }) && !e.rec.sources.any(Sources::STATUS | Sources::TELEMETRY)
        {
            self.alerts.clear(
                now,
                AlertKey {
                    subject: Subject::Node(node),
                    kind: AlertKind::NodeSilent,
                },
            );
        }
        self.queries.answered(node, None);
        self.finish_queries(now);
        self.evaluate_thresholds(now, node);
        self.update_health(node);
        self.flush_alert_events();
    }

    /// The OTA engine's verdict for a node: `false` raises `ota_failed`, `true` clears it.
    pub fn handle_ota_result(&mut self, now: Instant, node: NodeId, ok: bool) {
        let Some(e) = self.nodes.get_mut(&node) else {
            return;
        };
        e.det.ota_failed_external = !ok;
        let key = AlertKey {
            subject: Subject::Node(node),
            kind: AlertKind::OtaFailed,
        };
        if ok {
            if e.det.reported & kind_bit(AlertKind::OtaFailed) == 0 {
                self.alerts.clear(now, key);
            }
        } else {
            self.alerts.raise(now, key, Severity::Warning, 1);
        }
        self.update_health(node);
        self.flush_alert_events();
    }

    /// The gateway's node tree (its own `asNodeTree`: itself at the top), whenever it changes.
    pub fn handle_topology(&mut self, now: Instant, tree: &NodeTree) {
        self.stats.topology_updates += 1;
        // Flatten without recursion: node -> (parent, depth).
        let mut new: BTreeMap<NodeId, (Option<NodeId>, u16)> = BTreeMap::new();
        let mut stack: Vec<(&NodeTree, Option<NodeId>, u16)> = Vec::new();
        if tree.node_id == self.gateway || self.gateway == NodeId::UNKNOWN {
            for s in &tree.subs {
                stack.push((s, None, 1));
            }
        } else {
            stack.push((tree, None, 1));
        }
        while let Some((t, parent, depth)) = stack.pop() {
            if t.node_id == NodeId::UNKNOWN || t.node_id == self.gateway {
                continue;
            }
            if new.insert(t.node_id, (parent, depth)).is_some() {
                continue; // a loop or a duplicate: keep the first
            }
            for s in &t.subs {
                stack.push((s, Some(t.node_id), depth.saturating_add(1)));
            }
        }
        let rooted = tree.is_rooted();
        // Rejoins and parent changes. A node never seen in the tree before is discovery
        // (a mesh forming node by node, a new node installed), not instability.
        let mut moved: BTreeSet<NodeId> = BTreeSet::new();
        for (&id, &(parent, depth)) in &new {
            match self.topo.get(&id) {
                None => {
                    let seen_before = self
                        .nodes
                        .get(&id)
                        .is_some_and(|e| e.rec.sources.0 & Sources::TOPOLOGY != 0);
                    if seen_before {
                        moved.insert(id);
                    }
                }
                Some(&p) if p != parent => {
                    moved.insert(id);
                }
                _ => {}
            }
            if self.admit(now, id, Admit::Topology).is_err() {
                continue;
            }
            if let Some(e) = self.nodes.get_mut(&id) {
                if !e.rec.confirmed {
                    self.unconfirmed.remove(&(e.det.lru, id));
                    e.rec.confirmed = true;
                }
                e.rec.sources.0 |= Sources::TOPOLOGY;
                e.rec.in_topology = true;
                e.rec.left_at = None;
                e.rec.last_seen = now;
                e.rec.parent = parent;
                e.rec.depth = Some(depth);
            }
        }
        // Departures, grouped into cut-off subtrees by the old parents.
        let left: BTreeSet<NodeId> = self
            .topo
            .keys()
            .filter(|id| !new.contains_key(id))
            .copied()
            .collect();
        // Churn counts topology events, not nodes: a subtree that rejoins or moves together is
        // one event (its top: a moved node whose new parent did not move with it), as is a
        // subtree that leaves together (below). Counting nodes made one link flap under a
        // 40-node subtree look like 40 changes, and a few injected faults (a relay's reboot,
        // a partition) raised a mesh-wide churn alert on top of their own alerts.
        let mut events: Vec<NodeId> = moved
            .iter()
            .filter(|id| {
                !new.get(id)
                    .and_then(|&(p, _)| p)
                    .is_some_and(|p| moved.contains(&p))
            })
            .copied()
            .collect();
        let mut groups: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
        for &id in &left {
            let mut top = id;
            let mut hops = 0;
            while let Some(Some(p)) = self.topo.get(&top) {
                if !left.contains(p) || hops > self.topo.len() {
                    break;
                }
                top = *p;
                hops += 1;
            }
            groups.entry(top).or_default().push(id);
            if let Some(e) = self.nodes.get_mut(&id) {
                e.rec.in_topology = false;
                e.rec.left_at = Some(now);
                e.rec.parent = None;
                e.rec.depth = None;
            }
        }
        events.extend(groups.keys().copied());
        for (top, members) in groups {
            if members.len() >= self.cfg.partition_min_nodes.max(2) {
                for m in &members {
                    if let Some(e) = self.nodes.get_mut(m) {
                        e.det.partition = Some(top);
                    }
                }
                self.partitions.insert(
                    top,
                    Partition {
                        members,
                        since: now,
                    },
                );
            }
        }
        // Partitions whose members came back.
        let back: Vec<NodeId> = self
            .partitions
            .iter()
            .filter(|(_, p)| {
                p.members.iter().filter(|m| !new.contains_key(m)).count()
                    < self.cfg.partition_min_nodes.max(2)
            })
            .map(|(k, _)| *k)
            .collect();
        for top in back {
            if let Some(p) = self.partitions.remove(&top) {
                for m in p.members {
                    if let Some(e) = self.nodes.get_mut(&m) {
                        if e.det.partition == Some(top) {
                            e.det.partition = None;
                        }
                    }
                }
            }
            self.alerts.clear(
                now,
                AlertKey {
                    subject: Subject::Node(top),
                    kind: AlertKind::Partition,
                },
            );
        }
        // Root lost / regained (mesh level).
        let root_key = AlertKey {
            subject: Subject::Mesh,
            kind: AlertKind::LostRoot,
        };
        if self.rooted && !rooted {
            self.alerts.raise(now, root_key, Severity::Critical, 0);
        } else if rooted {
            self.alerts.clear(now, root_key);
        }
        self.rooted = rooted;
        // Churn.
        let window = dur_s(self.cfg.churn_window_s);
        if self.topo.is_empty() {
            // The first view (gateway start, or the mesh forming): discovery, not churn.
            events.clear();
        }
        let cap = (self.cfg.churn_changes as usize).saturating_mul(2).max(16);
        for top in events.into_iter().take(cap) {
            self.churn.push_back((now, top));
        }
        while self.churn.len() > cap {
            self.churn.pop_front();
        }
        self.evaluate_churn(now, window);
        self.topo = new.into_iter().map(|(k, (p, _))| (k, p)).collect();
        let ids: Vec<NodeId> = self.topo.keys().copied().chain(left).collect();
        for id in ids {
            self.update_health(id);
        }
        self.flush_alert_events();
    }

    /// The topology events the churn rule holds (inside its window, at most twice the
    /// threshold), oldest first: when, and the top node of the subtree that left, rejoined
    /// or moved. What a `topology_churn` alert counts, so an operator (or a test) can see
    /// which parts of the mesh are moving.
    pub fn churn_events(&self) -> impl Iterator<Item = (Instant, NodeId)> + '_ {
        self.churn.iter().copied()
    }

    /// Time-driven work: silence and offline verdicts, partitions after their grace,
    /// reboot-loop and churn clearing, probes, query timeouts. Call at [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.finish_queries(now);
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + Duration::from_secs(1);
        let grace = dur_s(self.cfg.departure_grace_s);
        // Partitions: one alert per cut-off subtree once it stayed away for the grace.
        let due: Vec<(NodeId, usize)> = self
            .partitions
            .iter()
            .filter(|(_, p)| now.saturating_since(p.since) >= grace)
            .map(|(k, p)| (*k, p.members.len()))
            .collect();
        for (top, n) in due {
            self.alerts.raise(
                now,
                AlertKey {
                    subject: Subject::Node(top),
                    kind: AlertKind::Partition,
                },
                Severity::Critical,
                n as i64,
            );
        }
        self.evaluate_churn(now, dur_s(self.cfg.churn_window_s));
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let mut probe_candidates = Vec::new();
        for id in ids {
            self.sweep_node(now, id, &mut probe_candidates);
        }
        self.schedule_probes(now, probe_candidates);
        self.flush_alert_events();
    }

    /// Starts an on-demand query. Results arrive as [`MonitorEvent::QueryDone`].
    pub fn start_query(
        &mut self,
        now: Instant,
        target: QueryTarget,
    ) -> Result<QueryId, QueryError> {
        if self.queries.len() >= self.cfg.max_queries {
            return Err(QueryError::TooMany);
        }
        let ttl = dur_s(self.cfg.cache_ttl_s);
        let plan = |e: &Entry| -> Option<Method> {
            let fresh = e
                .rec
                .last_report
                .max(if e.rec.sources.any(Sources::PROBE) {
                    Some(e.rec.last_seen)
                } else {
                    None
                })
                .is_some_and(|t| now.saturating_since(t) < ttl);
            if fresh {
                None
            } else if e.rec.sources.any(Sources::TELEMETRY) {
                Some(Method::Telemetry)
            } else {
                Some(Method::Probe)
            }
        };
        let targets: Vec<(NodeId, Option<Method>)> = match target {
            QueryTarget::Node(n) => {
                let e = self.nodes.get(&n).ok_or(QueryError::UnknownNode(n))?;
                alloc::vec![(n, plan(e))]
            }
            QueryTarget::All => self
                .nodes
                .iter()
                .filter(|(_, e)| e.rec.health != Health::Offline)
                .map(|(n, e)| (*n, plan(e)))
                .collect(),
        };
        let id = self.queries.start(now, targets);
        self.finish_queries(now);
        Ok(id)
    }

    // ----- internals ----------------------------------------------------------------------

    fn finish_queries(&mut self, now: Instant) {
        let timeout = dur_s(self.cfg.query_timeout_s.clamp(1, 60));
        let gateway = self.gateway;
        let mut reqs = Vec::new();
        self.queries.dispatch(
            now,
            self.cfg.query_max_in_flight.max(1),
            timeout,
            &mut |r| reqs.push(r),
        );
        for r in reqs {
            self.transmits.push_back(match r.method {
                Method::Telemetry => Transmit::Query {
                    to: r.to,
                    text: telemetry::query_json(gateway, Some(r.to), r.id.0),
                },
                Method::Probe => Transmit::DelayProbe { to: r.to },
            });
        }
        let mut done = Vec::new();
        self.queries.poll_done(now, &mut |q| done.push(q));
        let more = !done.is_empty() && self.queries.has_waiting();
        for q in done {
            self.push_event(MonitorEvent::QueryDone(q));
        }
        if more {
            self.finish_queries(now);
        }
    }

    /// Makes sure `id` has an entry, evicting if needed, and applies the report flood check.
    fn admit(&mut self, now: Instant, id: NodeId, how: Admit) -> Result<(), DropReason> {
        if let Some(e) = self.nodes.get_mut(&id) {
            // Rate limit reports (not topology presence).
            if how == (Admit::Report { exempt: false }) {
                let gap = Duration::from_millis(u64::from(self.cfg.min_report_gap_ms));
                if e.rec
                    .last_report
                    .is_some_and(|t| now.saturating_since(t) < gap)
                {
                    self.stats.flooded += 1;
                    e.det.flood_drops.push_back(now);
                    let cap = self.cfg.flood_reports_per_min as usize + 1;
                    while e.det.flood_drops.len() > cap {
                        e.det.flood_drops.pop_front();
                    }
                    self.evaluate_thresholds(now, id);
                    self.update_health(id);
                    self.flush_alert_events();
                    return Err(DropReason::Flood);
                }
            }
            return Ok(());
        }
        // A new node: make room.
        let is_unconfirmed = how != Admit::Topology;
        if is_unconfirmed && self.unconfirmed.len() >= self.cfg.max_unconfirmed {
            self.evict_oldest_unconfirmed(now);
            if self.unconfirmed.len() >= self.cfg.max_unconfirmed {
                // `max_unconfirmed` 0: only nodes of the topology are monitored
                self.stats.refused += 1;
                return Err(DropReason::RegistryFull);
            }
        }
        if self.nodes.len() >= self.cfg.max_nodes && !self.evict_one(now) {
            self.stats.refused += 1;
            return Err(DropReason::RegistryFull);
        }
        let mut rec = NodeRecord::new(id, now);
        rec.confirmed = !is_unconfirmed;
        let det = Det {
            lru: now,
            ..Det::default()
        };
        if is_unconfirmed {
            self.unconfirmed.insert((now, id));
        }
        self.nodes.insert(id, Entry { rec, det });
        self.push_event(MonitorEvent::NodeDiscovered(id));
        Ok(())
    }

    fn evict_oldest_unconfirmed(&mut self, now: Instant) -> bool {
        let Some(&(t, id)) = self.unconfirmed.iter().next() else {
            return false;
        };
        self.unconfirmed.remove(&(t, id));
        self.remove(now, id);
        true
    }

    /// Frees one slot: the least recently heard unconfirmed node, else the offline node
    /// heard of least recently. Confirmed reachable nodes are never evicted.
    fn evict_one(&mut self, now: Instant) -> bool {
        if self.evict_oldest_unconfirmed(now) {
            return true;
        }
        let victim = self
            .nodes
            .values()
            .filter(|e| e.rec.health == Health::Offline)
            .min_by_key(|e| e.rec.last_seen)
            .map(|e| e.rec.id);
        match victim {
            Some(id) => {
                self.remove(now, id);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, now: Instant, id: NodeId) {
        if let Some(e) = self.nodes.remove(&id) {
            self.unconfirmed.remove(&(e.det.lru, id));
            self.stats.evicted += 1;
            self.alerts.forget(now, Subject::Node(id));
            self.push_event(MonitorEvent::NodeEvicted(id));
        }
    }

    /// Book-keeping common to every accepted report, then the detectors.
    fn after_report(&mut self, now: Instant, id: NodeId, reboot: bool, rhythm: bool) {
        let cfg = &self.cfg;
        let Some(e) = self.nodes.get_mut(&id) else {
            return;
        };
        // Learn the report period (EWMA of gaps; clamped so one odd gap cannot make the
        // silence verdict absurdly slow or fast).
        if let (Some(prev), true) = (e.rec.last_report, rhythm) {
            let gap = secs(now.saturating_since(prev)).clamp(1.0, 86_400.0);
            // A gap far beyond the period is an outage, not the node's rhythm.
            let p = match e.rec.report_period_s {
                None => Some(gap),
                Some(p) if gap <= 3.0 * f64::from(p) => Some(0.8 * f64::from(p) + 0.2 * gap),
                Some(_) => None,
            };
            if let Some(p) = p {
                e.rec.report_period_s = Some((p + 0.5) as u32);
            }
        }
        if !e.rec.confirmed {
            self.unconfirmed.remove(&(e.det.lru, id));
            self.unconfirmed.insert((now, id));
            e.det.lru = now;
        }
        e.rec.last_report = Some(now);
        e.rec.last_seen = now;
        e.det.probe_losses = 0;
        e.det.verify_count = 0;
        e.det.confirmed_quiet = false;
        if reboot {
            e.rec.reboots += 1;
            self.stats.reboots += 1;
            e.det.reboots.push_back(now);
            while e.det.reboots.len() > cfg.reboot_loop_count.max(1) as usize {
                e.det.reboots.pop_front();
            }
            e.det.heap.clear();
        }
        // Heap samples spaced so that `leak_samples` of them cover the window.
        let spacing = Duration::from_micros(
            u64::from(cfg.leak_window_s) * 1_000_000 / (cfg.leak_samples.max(2) as u64 - 1),
        );
        if let Some(h) = e.rec.metrics.free_heap_bytes {
            push_spaced(&mut e.det.heap, now, h, spacing, cfg.leak_samples);
        }
        if let Some(rssi) = e.rec.metrics.rssi_dbm {
            link_sample(cfg, &mut e.det, rssi as f64, &mut self.alerts, now, id);
        }
        // The node is talking again.
        self.alerts.clear(
            now,
            AlertKey {
                subject: Subject::Node(id),
                kind: AlertKind::NodeSilent,
            },
        );
        if e.rec.in_topology || e.rec.left_at.is_none() {
            self.alerts.clear(
                now,
                AlertKey {
                    subject: Subject::Node(id),
                    kind: AlertKind::NodeOffline,
                },
            );
        }
        self.evaluate_thresholds(now, id);
        self.update_health(id);
        self.flush_alert_events();
    }

    fn evaluate_thresholds(&mut self, now: Instant, id: NodeId) {
        let cfg = &self.cfg;
        let Some(e) = self.nodes.get(&id) else { return };
        let m = &e.rec.metrics;
        let al = &mut self.alerts;
        let subj = Subject::Node(id);
        let (a, c) = (cfg.datapoints_to_alarm, cfg.datapoints_to_clear);
        let mut rule = |kind,
                        sev,
                        value: Option<i64>,
                        raise: &dyn Fn(i64) -> bool,
                        hold: &dyn Fn(i64) -> bool| {
            let key = AlertKey {
                subject: subj,
                kind,
            };
            let Some(v) = value else { return };
            let firing = if al.is_held(&key) { hold(v) } else { raise(v) };
            al.observe(now, key, firing, sev, v, a, c);
        };
        rule(
            AlertKind::LowMemory,
            Severity::Critical,
            m.free_heap_bytes,
            &|v| v < cfg.low_memory_bytes,
            &|v| v < cfg.low_memory_clear_bytes,
        );
        rule(
            AlertKind::HighLatency,
            Severity::Warning,
            m.latency_ms,
            &|v| v > cfg.high_latency_ms,
            &|v| v > cfg.high_latency_clear_ms,
        );
        rule(
            AlertKind::PacketLoss,
            Severity::Warning,
            m.loss_pct,
            &|v| v > cfg.loss_pct,
            &|v| v > cfg.loss_clear_pct,
        );
        rule(
            AlertKind::WeakSignal,
            Severity::Warning,
            m.rssi_dbm,
            &|v| v < cfg.weak_rssi_dbm,
            &|v| v < cfg.weak_rssi_clear_dbm,
        );
        // Flood: messages per minute, or reports dropped as too frequent in the last minute.
        let minute = Duration::from_secs(60);
        let drops = e
            .det
            .flood_drops
            .iter()
            .filter(|t| now.saturating_since(**t) < minute)
            .count() as i64;
        let flood_value = m.tx_per_min.unwrap_or(0).max(drops * 60);
        let flood = m.tx_per_min.is_some_and(|v| v > cfg.flood_tx_per_min)
            || drops >= i64::from(cfg.flood_reports_per_min.max(1));
        let flood_hold = m.tx_per_min.is_some_and(|v| v > cfg.flood_tx_per_min / 2) || drops > 0;
        let key = AlertKey {
            subject: subj,
            kind: AlertKind::MessageFlood,
        };
        let firing = if al.is_held(&key) { flood_hold } else { flood };
        if firing || al.is_held(&key) {
            al.observe(now, key, firing, Severity::Warning, flood_value, a, c);
        }
        // Node-reported conditions (604 documented bits, telemetry flags, the OTA engine).
        for (kind, sev) in [
            (AlertKind::LostRoot, Severity::Warning),
            (AlertKind::OtaFailed, Severity::Warning),
            (AlertKind::SensorError, Severity::Warning),
        ] {
            let key = AlertKey {
                subject: subj,
                kind,
            };
            let on = e.det.reported & kind_bit(kind) != 0
                || (kind == AlertKind::OtaFailed && e.det.ota_failed_external);
            if on {
                al.raise(now, key, sev, 1);
            } else {
                al.clear(now, key);
            }
        }
        // Reboot loop: the node says so, or we counted the resets.
        let key = AlertKey {
            subject: subj,
            kind: AlertKind::RebootLoop,
        };
        let window = dur_s(cfg.reboot_window_s);
        let recent = e
            .det
            .reboots
            .iter()
            .filter(|t| now.saturating_since(**t) < window)
            .count();
        if recent >= cfg.reboot_loop_count.max(1) as usize
            || e.det.reported & kind_bit(AlertKind::RebootLoop) != 0
        {
            al.raise(now, key, Severity::Critical, recent as i64);
        }
        // Memory leak: a steady fall of the heap (least squares over the window).
        let key = AlertKey {
            subject: subj,
            kind: AlertKind::MemoryLeak,
        };
        let window = dur_s(cfg.leak_window_s);
        // The node's own verdict (telemetry flag, from its 10 s samples: fast) or ours from
        // the reported values (slow with deltas, but it covers stock nodes too).
        let node_says = e.det.reported & kind_bit(AlertKind::MemoryLeak) != 0;
        let fitted = trend(&e.det.heap, now, window);
        // An active alert is observed even without a fit of ours (the node's flag cleared,
        // or a reboot emptied our samples), so it can clear.
        if fitted.is_some() || node_says || al.is_held(&key) {
            let (slope_per_h, ours) = match fitted {
                Some((slope_per_h, r2, span)) => {
                    let leaking = span >= 0.75 * f64::from(cfg.leak_window_s)
                        && slope_per_h <= -(cfg.leak_bytes_per_hour as f64)
                        && r2 >= cfg.leak_min_r2
                        && -slope_per_h * span / 3600.0 >= cfg.leak_min_fall_bytes as f64;
                    let holding = slope_per_h <= -(cfg.leak_bytes_per_hour as f64) / 2.0;
                    let firing = if al.is_held(&key) { holding } else { leaking };
                    (slope_per_h, firing)
                }
                None => (0.0, false),
            };
            al.observe(
                now,
                key,
                ours || node_says,
                Severity::Warning,
                slope_per_h as i64,
                1,
                c,
            );
        }
    }

    fn evaluate_churn(&mut self, now: Instant, window: Duration) {
        while self
            .churn
            .front()
            .is_some_and(|(t, _)| now.saturating_since(*t) >= window)
        {
            self.churn.pop_front();
        }
        let n = self.churn.len() as u32;
        let key = AlertKey {
            subject: Subject::Mesh,
            kind: AlertKind::TopologyChurn,
        };
        let firing = if self.alerts.is_active(&key) {
            n >= self.cfg.churn_changes / 2
        } else {
            n >= self.cfg.churn_changes.max(1)
        };
        if firing || self.alerts.is_active(&key) {
            self.alerts
                .observe(now, key, firing, Severity::Warning, i64::from(n), 1, 1);
        }
    }

    fn sweep_node(&mut self, now: Instant, id: NodeId, probes: &mut Vec<NodeId>) {
        let cfg = &self.cfg;
        let Some(e) = self.nodes.get_mut(&id) else {
            return;
        };
        let subj = Subject::Node(id);
        // Reboot loop clears once the window holds fewer reboots.
        let window = dur_s(cfg.reboot_window_s);
        let key = AlertKey {
            subject: subj,
            kind: AlertKind::RebootLoop,
        };
        if self.alerts.is_active(&key) {
            let recent = e
                .det
                .reboots
                .iter()
                .filter(|t| now.saturating_since(**t) < window)
                .count();
            if recent < cfg.reboot_loop_count.max(1) as usize
                && e.det.reported & kind_bit(AlertKind::RebootLoop) == 0
            {
                self.alerts.clear(now, key);
            }
        }
        // Probe timeouts.
        if let Some(at) = e.det.probe_out {
            if now.saturating_since(at) >= dur_s(cfg.probe_timeout_s) {
                e.det.probe_out = None;
                e.det.probe_losses += 1;
                self.stats.probes_lost += 1;
            }
        }
        // Silence: a reporter in the mesh whose reports stopped, or a node that stopped
        // answering probes.
        let period = e
            .rec
            .report_period_s
            .unwrap_or(cfg.report_interval_s)
            .max(1);
        let silent_after = dur_s(period.saturating_mul(cfg.silent_after_periods.max(1)));
        let reporter = e.rec.sources.any(Sources::STATUS | Sources::TELEMETRY);
        let telemetry = e.rec.sources.any(Sources::TELEMETRY);
        // A 604-only node cannot be asked for a report; a probe answer shows it is alive.
        let heard = if telemetry {
            e.rec.last_report
        } else {
            e.rec.last_report.max(e.det.alive_at.filter(|_| reporter))
        };
        let since = heard.map(|t| now.saturating_since(t));
        let quiet = since.is_some_and(|d| d >= silent_after);
        // An overdue report is checked before anyone is told: one lost report (or two) must
        // not make a node silent. From 1.25 periods on, ask the node (a 711 for telemetry
        // nodes, a delay probe otherwise), at most 3 times, one probe timeout apart; the
        // verdict needs two unanswered checks (so a node that rejoins the mesh after a long
        // absence and whose first report is lost is asked before it is judged).
        let suspect_after = dur_s(period.saturating_add(period / 4));
        let away = !e.rec.in_topology && e.rec.left_at.is_some();
        let timeout = dur_s(cfg.probe_timeout_s.max(1));
        if reporter
            && !away
            && since.is_some_and(|d| d >= suspect_after)
            && e.det.verify_count < 3
            && e.det
                .verify_at
                .map_or(true, |t| now.saturating_since(t) >= timeout)
        {
            e.det.verify_at = Some(now);
            e.det.verify_count += 1;
            self.stats.verifications += 1;
            self.transmits.push_back(if telemetry {
                Transmit::Query {
                    to: id,
                    text: telemetry::query_json(self.gateway, Some(id), 0),
                }
            } else {
                Transmit::DelayProbe { to: id }
            });
        }
        let checked = e.det.verify_count >= 3
            || (e.det.verify_count >= 2
                && e.det
                    .verify_at
                    .is_some_and(|t| now.saturating_since(t) >= timeout));
        let quiet = quiet && checked;
        e.det.confirmed_quiet = quiet;
        let silent_key = AlertKey {
            subject: subj,
            kind: AlertKind::NodeSilent,
        };
        let offline_key = AlertKey {
            subject: subj,
            kind: AlertKind::NodeOffline,
        };
        let offline;
        if e.rec.in_topology {
            offline = false;
            if (reporter && quiet) || e.det.probe_losses >= cfg.probe_losses_silent.max(1) {
                self.alerts
                    .raise(now, silent_key, Severity::Critical, period as i64);
            }
        } else if let Some(left) = e.rec.left_at {
            offline = now.saturating_since(left) >= dur_s(cfg.departure_grace_s);
        } else {
            // Known from reports only: offline when the reports stop.
            offline = quiet;
        }
        if offline {
            self.alerts.clear(now, silent_key);
            if e.det.partition.is_none() {
                self.alerts.raise(now, offline_key, Severity::Critical, 0);
            } else {
                self.alerts.clear(now, offline_key);
            }
        } else {
            self.alerts.clear(now, offline_key);
        }
        // Probe nodes in the mesh that send nothing (or went quiet).
        if e.rec.in_topology
            && (!reporter || quiet)
            && e.det.probe_out.is_none()
            && e.det.last_probe.map_or(true, |t| {
                now.saturating_since(t) >= dur_s(cfg.probe_interval_s)
            })
        {
            probes.push(id);
        }
        self.update_health(id);
    }

    fn schedule_probes(&mut self, now: Instant, candidates: Vec<NodeId>) {
        let per_s = f64::from(self.cfg.probes_per_min) / 60.0;
        let el = secs(now.saturating_since(self.probe_refill_at));
        self.probe_refill_at = now;
        self.probe_tokens =
            (self.probe_tokens + el * per_s).min(f64::from(self.cfg.probes_per_min.max(1)));
        if candidates.is_empty() {
            return;
        }
        // Round robin from the cursor, so a budget smaller than the candidates still
        // reaches every node in turn.
        let start = candidates.partition_point(|n| *n <= self.probe_cursor);
        let order = candidates[start..].iter().chain(&candidates[..start]);
        for &id in order {
            if self.probe_tokens < 1.0 {
                break;
            }
            self.probe_tokens -= 1.0;
            self.probe_cursor = id;
            if let Some(e) = self.nodes.get_mut(&id) {
                e.det.probe_out = Some(now);
                e.det.last_probe = Some(now);
            }
            self.stats.probes_sent += 1;
            self.transmits.push_back(Transmit::DelayProbe { to: id });
        }
    }

    fn update_health(&mut self, id: NodeId) {
        let worst = self.alerts.worst_for(id);
        let Some(e) = self.nodes.get_mut(&id) else {
            return;
        };
        let offline = if e.rec.in_topology {
            false
        } else if e.rec.left_at.is_some() {
            // Away: offline at once for health (unreachable); the alert waits for the grace.
            true
        } else {
            // Known from reports only: offline once the sweep found it quiet and unanswering.
            e.det.confirmed_quiet
        };
        let h = if offline {
            Health::Offline
        } else {
            match worst {
                Some(Severity::Critical) => Health::Critical,
                Some(Severity::Warning) => Health::Warning,
                _ => Health::Healthy,
            }
        };
        if h != e.rec.health {
            let from = e.rec.health;
            e.rec.health = h;
            self.push_event(MonitorEvent::HealthChanged {
                node: id,
                from,
                to: h,
            });
        }
    }
}

/// RSSI baseline (EWMA mean and variance) and the degradation rule: a value well below the
/// node's own baseline fires; the baseline does not learn from values that fire, so a
/// lasting drop cannot become the new normal while it is alerting.
fn link_sample(
    cfg: &MonitorConfig,
    det: &mut Det,
    v: f64,
    alerts: &mut AlertEngine,
    now: Instant,
    id: NodeId,
) {
    let key = AlertKey {
        subject: Subject::Node(id),
        kind: AlertKind::LinkDegraded,
    };
    if det.rssi_n >= cfg.link_min_samples {
        let sd = sqrt(det.rssi_var);
        let drop = det.rssi_mean - v;
        let limit = cfg.link_drop_db.max(cfg.link_drop_sigma * sd);
        let firing = if alerts.is_active(&key) {
            drop >= limit / 2.0
        } else {
            drop >= limit
        };
        alerts.observe(
            now,
            key,
            firing,
            Severity::Warning,
            drop as i64,
            cfg.datapoints_to_alarm.max(2),
            cfg.datapoints_to_clear,
        );
        if firing || alerts.is_active(&key) {
            return;
        }
    }
    let a = if det.rssi_n == 0 {
        1.0
    } else {
        cfg.link_ewma_alpha.clamp(0.001, 1.0)
    };
    let diff = v - det.rssi_mean;
    det.rssi_mean += a * diff;
    det.rssi_var = (1.0 - a) * (det.rssi_var + a * diff * diff);
    det.rssi_n = det.rssi_n.saturating_add(1);
}

/// `|x|` (core has no float `abs` before Rust 1.85).
fn abs(x: f64) -> f64 {
    if x < 0.0 {
        -x
    } else {
        x
    }
}

/// Square root by Newton's method (core has no float `sqrt`); exact enough for a deviation.
fn sqrt(x: f64) -> f64 {
    if x <= 0.0 || x.is_nan() {
        return 0.0;
    }
    let mut g = if x > 1.0 { x / 2.0 } else { 1.0 };
    for _ in 0..40 {
        let n = 0.5 * (g + x / g);
        if abs(n - g) <= 1e-9 * n {
            return n;
        }
        g = n;
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-node memory bound quoted in docs/monitoring.md: the entry itself plus its
    /// bounded windows and strings at their caps.
    #[test]
    fn per_node_memory_is_bounded() {
        let cfg = MonitorConfig::default();
        let inline = core::mem::size_of::<Entry>();
        let windows = cfg.reboot_loop_count as usize * core::mem::size_of::<Instant>()
            + cfg.leak_samples * core::mem::size_of::<(Instant, i64)>()
            + (cfg.flood_reports_per_min as usize + 1) * core::mem::size_of::<Instant>();
        let strings = crate::status::MAX_FIRMWARE_LEN
            + 2 * crate::telemetry::MAX_IDENTITY_LEN
            + crate::status::MAX_LAST_ERROR_LEN;
        let total = inline + windows + strings;
        std::println!("entry {inline} B inline + windows {windows} B + strings {strings} B = {total} B per node (BTreeMap node overhead not included)");
        assert!(total < 2_048, "{total}");
    }
}
