//! The node's own status and telemetry, sans-IO: [`Telemetry`], a [`Plugin`] the agent
//! composition includes through [`crate::AgentConfig::extra`].
//!
//! It samples what the node itself knows every [`TelemetryConfig::sample_interval`]: uptime,
//! the messages it sent, received and dropped in the last minute (from the node's
//! [`meshfleet_mesh::Stats`]), whether it lost the mesh root it had, and what the driver
//! records with [`Telemetry::record`] (free heap, RSSI, latency, loss: a Linux process or a
//! simulated node knows them, the mesh layer does not). From those it
//!
//! * feeds a [`meshfleet_monitor::telemetry::Producer`] and sends its reports (710, routed
//!   SINGLE) to [`TelemetryConfig::gateway`], or, without one, to the last node that queried
//!   it; a value crossing an alert threshold goes out at once; queries (711) are answered
//!   with a keyframe after the producer's random spread;
//! * broadcasts the library-compatible status package (604) every
//!   [`TelemetryConfig::status_interval`], as the C++ library's example does (the package's
//!   JSON as the `msg` of an ordinary BROADCAST), so stock receivers and gateways see it.
//!
//! The producer's back-off is honoured: a report is *refused* (handed back with
//! [`Producer::handle_busy`]) when the link towards the gateway has more than
//! [`TelemetryConfig::busy_backlog`] bytes queued in the driver, or when the send fails.
//! While no route leads to the gateway the producer buffers (bounded). Randomness comes from
//! the node's seeded PRNG; `now` is the node's.

use std::collections::VecDeque;

use meshfleet_mesh::{Ctx, Duration, Instant, LinkId, MeshChange, NodeId, Plugin, PluginEvent};
use meshfleet_monitor::status::{quality_from_rssi, AlertFlags, StatusReport};
use meshfleet_monitor::telemetry::{
    decode_query, flags, Producer, ProducerStats, Values, QUERY_TYPE, SLOTS,
};
/// The monitor's types a driver needs to configure and feed the plugin.
pub use meshfleet_monitor::telemetry::{Identity, Metric, ProducerConfig};
use meshfleet_ota::SlotStore;
use meshfleet_wire::{Package, Routing};

use crate::OtaReceiver;

/// The window of the per-minute message rates.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Most samples kept for the rate window (bounds memory whatever the sample interval).
const MAX_WINDOW_SAMPLES: usize = 256;
/// Most reports polled in one call (refused ones included; at most one is sent per call,
/// see [`TelemetryConfig::min_report_gap`]).
const MAX_SENDS_PER_CALL: usize = 64;
/// Shortest sample interval accepted.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// How a node reports about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// Where telemetry reports (710) go. `None`: to the last node that sent a query (711),
    /// and nowhere until one does.
    pub gateway: Option<NodeId>,
    /// Broadcast the status package (604) this often; `None`: never.
    pub status_interval: Option<Duration>,
    /// The telemetry producer's settings (report interval, thresholds, buffer, back-off).
    pub producer: ProducerConfig,
    /// How often the node's counters are sampled (a threshold crossing of a sampled value is
    /// seen within this). At least 100 ms.
    pub sample_interval: Duration,
    /// A report is refused (back-off) when the link towards the gateway has more bytes than
    /// this queued in the driver ([`meshfleet_mesh::Node::set_link_backlog`]).
    pub busy_backlog: usize,
    /// Least time between two reports of this node (710 or 604). The monitor drops a report
    /// arriving less than its `min_report_gap_ms` (1 s) after the previous one as a flood,
    /// urgent or not (only buffered reports and query answers are exempt), so a crossing
    /// right after a scheduled report waits this long instead of being lost.
    pub min_report_gap: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            gateway: None,
            status_interval: None,
            producer: ProducerConfig::default(),
            sample_interval: Duration::from_secs(1),
            busy_backlog: 16 * 1024,
            min_report_gap: Duration::from_millis(1_100),
        }
    }
}

/// Counters of the plugin (the producer keeps its own, [`Telemetry::producer_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TelemetryStats {
    /// Samples taken.
    pub samples: u64,
    /// Telemetry packages sent.
    pub reports_sent: u64,
    /// Their bytes (JSON text).
    pub report_bytes: u64,
    /// Reports refused (backlog towards the gateway, or the send failed) and handed back
    /// to the producer's back-off.
    pub refused: u64,
    /// Status packages (604) broadcast.
    pub status_sent: u64,
    /// Their bytes (JSON text of the `msg`).
    pub status_bytes: u64,
    /// Queries (711) taken.
    pub queries: u64,
    /// 711 packages that did not decode.
    pub bad_queries: u64,
}

/// What the plugin tells the application (`meshfleet node --json` prints it).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TelemetryEvent {
    /// A query (711) from `from` will be answered.
    Query {
        /// Who asked.
        from: NodeId,
        /// The query's id.
        id: u32,
    },
}

impl PluginEvent for TelemetryEvent {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Query { from, id } => {
                serde_json::json!({"event": "telemetry_query", "from": from.0, "id": id})
            }
        }
    }
}

/// One sample of the node's counters, for the per-minute rates.
#[derive(Clone, Copy, Debug)]
struct Counters {
    at: Instant,
    tx: u64,
    rx: u64,
    drop: u64,
}

/// The status/telemetry plugin. See the module docs.
pub struct Telemetry {
    cfg: TelemetryConfig,
    identity: Option<Identity>,
    /// Set at the first call (the plugin learns `now` and the seed from its node).
    started: Option<Instant>,
    producer: Option<Producer>,
    /// Where reports go when no gateway is configured: the last querier.
    querier: Option<NodeId>,
    next_sample: Instant,
    next_status: Option<Instant>,
    /// What the driver recorded (heap, RSSI, latency, loss, ...).
    recorded: Values,
    /// Flag bits the node knows itself ([`flags`]).
    own_flags: i64,
    window: VecDeque<Counters>,
    /// Totals since boot (status package counters).
    totals: Option<Counters>,
    had_root: bool,
    lost_root: bool,
    /// The layout changed since the last sample (the root may be gone).
    layout_changed: bool,
    /// When the last report (710 or 604) left.
    last_report: Option<Instant>,
    stats: TelemetryStats,
    /// Seconds added to the uptime the node reports ([`Telemetry::jump_uptime`]).
    uptime_jump_s: i64,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("cfg", &self.cfg)
            .field("destination", &self.destination())
            .field("stats", &self.stats)
            .field("producer", &self.producer.as_ref().map(Producer::stats))
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// A plugin with `cfg`; nothing is sent before the node runs its first timeout.
    pub fn new(cfg: TelemetryConfig) -> Self {
        Self {
            cfg,
            identity: None,
            started: None,
            producer: None,
            querier: None,
            next_sample: Instant::ZERO,
            next_status: None,
            recorded: [None; SLOTS],
            own_flags: 0,
            window: VecDeque::new(),
            totals: None,
            had_root: false,
            lost_root: false,
            layout_changed: false,
            last_report: None,
            stats: TelemetryStats::default(),
            uptime_jump_s: 0,
        }
    }

    /// Takes the node's identity from its OTA receiver: the running firmware version (from
    /// the boot decision), role and hardware; an update rolled back at this boot sets the
    /// OTA-failed flag.
    pub fn with_receiver<S: SlotStore + 'static>(mut self, receiver: &OtaReceiver<S>) -> Self {
        let decision = receiver.current();
        let firmware = decision
            .and_then(|d| d.image.as_ref())
            .map(|i| i.version.clone())
            .unwrap_or_default();
        if decision.is_some_and(|d| d.rolled_back.is_some()) {
            self.own_flags |= flags::OTA_FAILED;
        }
        self.set_identity(Identity {
            firmware,
            role: receiver.role().into(),
            hardware: receiver.hardware().into(),
        });
        self
    }

    /// Sets what the node is (firmware, role, hardware; sent in keyframes and, firmware
    /// only, in the status package). Strings are cut to what the monitor keeps.
    pub fn set_identity(&mut self, identity: Identity) {
        let cut = |s: String| -> String {
            let max = meshfleet_monitor::telemetry::MAX_IDENTITY_LEN;
            if s.len() <= max {
                return s;
            }
            let mut end = max;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].into()
        };
        let identity = Identity {
            firmware: cut(identity.firmware),
            role: cut(identity.role),
            hardware: cut(identity.hardware),
        };
        if let Some(p) = &mut self.producer {
            p.set_identity(identity.clone());
        }
        self.identity = Some(identity);
    }

    /// Records a value the driver knows and the mesh layer does not (free heap, RSSI,
    /// latency, loss, flags). It reaches the producer at once: a threshold crossing is sent
    /// at the node's next timeout, which [`Plugin::poll_timeout`] makes immediate.
    /// Uptime and the message rates are the plugin's own and are overwritten at each sample.
    pub fn record(&mut self, now: Instant, metric: Metric, value: i64) {
        self.recorded[metric.slot()] = Some(value);
        if let Some(p) = &mut self.producer {
            p.record(now, metric, value);
        }
    }

    /// The device's uptime counter jumps by `by_s` seconds (a clock stepped under the
    /// firmware, e.g. an RTC-based uptime corrected by NTP): every uptime reported from now
    /// on (710 and 604) carries it. The simulator's fault injection uses it; the monitor
    /// must not take the jump for a reboot. The mesh's timers are not affected.
    pub fn jump_uptime(&mut self, by_s: i64) {
        self.uptime_jump_s = self.uptime_jump_s.saturating_add(by_s);
    }

    /// Forgets a recorded value (the status package then carries 0 for it, as the library's
    /// does for a field never set).
    pub fn clear(&mut self, metric: Metric) {
        self.recorded[metric.slot()] = None;
    }

    /// Counters.
    pub fn stats(&self) -> TelemetryStats {
        self.stats
    }

    /// The producer's counters (zero before the first timeout).
    pub fn producer_stats(&self) -> ProducerStats {
        self.producer
            .as_ref()
            .map(Producer::stats)
            .unwrap_or_default()
    }

    /// The configuration.
    pub fn config(&self) -> &TelemetryConfig {
        &self.cfg
    }

    /// Where reports go now, if anywhere.
    pub fn destination(&self) -> Option<NodeId> {
        self.cfg.gateway.or(self.querier)
    }

    fn sample_interval(&self) -> Duration {
        self.cfg.sample_interval.max(MIN_SAMPLE_INTERVAL)
    }

    fn start(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        let seed = ctx.rng().next_u64();
        let mut p = Producer::new(self.cfg.producer.clone(), now, seed);
        if let Some(id) = &self.identity {
            p.set_identity(id.clone());
        }
        self.producer = Some(p);
        self.started = Some(now);
        self.next_sample = now;
        self.next_status = self.cfg.status_interval.map(|i| now + i);
        self.update_root(ctx);
    }

    fn update_root(&mut self, ctx: &Ctx<'_>) {
        if ctx.is_root() {
            self.had_root = true;
            self.lost_root = false;
            return;
        }
        // Walk the neighbours' trees in place (no copy of the whole topology).
        let rooted = ctx
            .links()
            .iter()
            .any(|(link, _, _)| ctx.link_tree(*link).is_some_and(|t| t.is_rooted()));
        if rooted {
            self.had_root = true;
        }
        self.lost_root = self.had_root && !rooted;
    }

    /// Reads the node's counters into a sample and hands the whole snapshot to the producer.
    fn sample(&mut self, ctx: &Ctx<'_>) {
        let now = ctx.now();
        if std::mem::take(&mut self.layout_changed) {
            self.update_root(ctx);
        }
        let s = ctx.stats();
        let cur = Counters {
            at: now,
            // The messages the node sent (application SINGLE/BROADCAST, its status
            // broadcasts, its telemetry reports): what a message flood is. Not every frame it originated: mesh
            // control traffic (node sync) passed 10 frames/s on relays while a
            // 1,000-node mesh formed in the simulator, and the monitor's flood rule
            // (600/min) then fired on healthy nodes.
            tx: s.app_sent + self.stats.reports_sent,
            rx: s.frames_in,
            drop: s.dropped_too_long + s.dropped_decode + s.dropped_no_route + s.unhandled_packages,
        };
        self.totals = Some(cur);
        // Keep the newest sample at least RATE_WINDOW old as the base of the rates.
        while self.window.len() >= 2 && self.window[1].at + RATE_WINDOW <= now {
            self.window.pop_front();
        }
        if self.window.len() >= MAX_WINDOW_SAMPLES {
            self.window.pop_front();
        }
        self.window.push_back(cur);
        let base = self.window.front().copied().unwrap_or(cur);
        let rate = |a: u64, b: u64| i64::try_from(a.saturating_sub(b)).unwrap_or(i64::MAX);

        let mut v = self.recorded;
        let started = self.started.unwrap_or(now);
        v[Metric::Uptime.slot()] = Some(
            ((now.saturating_since(started).as_micros() / 1_000_000) as i64)
                .saturating_add(self.uptime_jump_s)
                .max(0),
        );
        v[Metric::TxPerMin.slot()] = Some(rate(cur.tx, base.tx));
        v[Metric::RxPerMin.slot()] = Some(rate(cur.rx, base.rx));
        v[Metric::DropPerMin.slot()] = Some(rate(cur.drop, base.drop));
        let mut f = self.recorded[Metric::Flags.slot()].unwrap_or(0) | self.own_flags;
        if self.lost_root {
            f |= flags::LOST_ROOT;
        }
        v[Metric::Flags.slot()] = Some(f);
        if let Some(p) = &mut self.producer {
            p.record_all(now, &v);
        }
        self.stats.samples += 1;
    }

    /// The status package as the library's example fills it, from what the node knows.
    pub fn status_report(&self, ctx: &Ctx<'_>) -> StatusReport {
        let now = ctx.now();
        let get = |m: Metric| self.recorded[m.slot()];
        let clamp = |v: Option<i64>, hi: i64| v.map(|v| v.clamp(0, hi));
        let uptime = self
            .started
            .map(|s| now.saturating_since(s).as_micros() / 1_000_000)
            .map(|u| {
                let u = i64::try_from(u)
                    .unwrap_or(i64::MAX)
                    .saturating_add(self.uptime_jump_s);
                u.clamp(0, i64::from(u32::MAX)) as u64
            });
        let heap_kb = clamp(get(Metric::FreeHeap).map(|b| b / 1024), i64::from(u16::MAX));
        let quality = get(Metric::Rssi).map(|r| quality_from_rssi(r.clamp(-127, 0) as i32));
        let nodes = ctx.nodes().len();
        let mut alerts = 0u8;
        // The library's code bits (the monitor recomputes these from the values).
        if heap_kb.is_some_and(|k| k < 32) {
            alerts |= AlertFlags::CODE_LOW_HEAP;
        }
        if quality.is_some_and(|q| q < 30) {
            alerts |= AlertFlags::CODE_WEAK_WIFI;
        }
        if nodes == 0 {
            alerts |= AlertFlags::CODE_ISOLATED;
        }
        // The documented bits the monitor takes as the node's own report.
        let f = get(Metric::Flags).unwrap_or(0) | self.own_flags;
        if self.lost_root || f & flags::LOST_ROOT != 0 {
            alerts |= AlertFlags::DOC_LOST_ROOT;
        }
        if f & flags::OTA_FAILED != 0 {
            alerts |= AlertFlags::DOC_OTA_FAILED;
        }
        if f & flags::SENSOR_ERROR != 0 {
            alerts |= AlertFlags::DOC_SENSOR_ERROR;
        }
        let totals = self.totals;
        let u32_of = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        StatusReport {
            device_status: Some(1),
            uptime_s: uptime.map(|u| u as u32),
            free_heap_kb: heap_kb.map(|k| k as u16),
            wifi_quality: quality,
            firmware: self.identity.as_ref().map(|i| i.firmware.clone()),
            firmware_md5: None,
            nodes: Some(u16::try_from(nodes).unwrap_or(u16::MAX)),
            conns: Some(u8::try_from(ctx.links().len()).unwrap_or(u8::MAX)),
            msg_rx: totals.map(|t| u32_of(t.rx)),
            // live, counting the package being sent (the first 604 of a node that has sent
            // nothing else is its first message)
            msg_tx: Some(u32_of(ctx.stats().app_sent + self.stats.reports_sent + 1)),
            msg_drop: totals.map(|t| u32_of(t.drop)),
            latency_ms: clamp(get(Metric::Latency), i64::from(u16::MAX)).map(|v| v as u16),
            loss_pct: clamp(get(Metric::Loss), 100).map(|v| v as u8),
            throughput: None,
            alerts: Some(AlertFlags(alerts)),
            last_error: None,
        }
    }

    /// Before this, no report may leave ([`TelemetryConfig::min_report_gap`]).
    fn gap_until(&self) -> Instant {
        self.last_report
            .map_or(Instant::ZERO, |t| t + self.cfg.min_report_gap)
    }

    fn send_status(&mut self, ctx: &mut Ctx<'_>) {
        let text = self.status_report(ctx).to_json(ctx.node_id());
        self.last_report = Some(ctx.now());
        self.stats.status_sent += 1;
        self.stats.status_bytes += text.len() as u64;
        ctx.send_broadcast_text(&text);
    }

    /// Whether the link towards `dest` is too backed up to take a report.
    fn busy(&self, ctx: &Ctx<'_>, link: LinkId) -> bool {
        ctx.link_backlog(link)
            .is_some_and(|b| b > self.cfg.busy_backlog)
    }

    /// Sends what the producer has due.
    fn drain(&mut self, ctx: &mut Ctx<'_>) {
        let Some(dest) = self.destination() else {
            return;
        };
        let now = ctx.now();
        let me = ctx.node_id();
        for _ in 0..MAX_SENDS_PER_CALL {
            if now < self.gap_until() {
                return;
            }
            let route = ctx.route(dest);
            let Some(p) = &mut self.producer else { return };
            p.set_gateway_reachable(now, route.is_some() || dest == me);
            let Some(report) = p.poll_report(now) else {
                return;
            };
            let refused = match route {
                Some(link) if self.busy(ctx, link) => true,
                Some(_) => {
                    let text = report.to_json(me, dest);
                    let len = text.len() as u64;
                    let sent = Package::from_text(text)
                        .ok()
                        .is_some_and(|pkg| ctx.send(&pkg).is_ok());
                    if sent {
                        self.last_report = Some(now);
                        self.stats.reports_sent += 1;
                        self.stats.report_bytes += len;
                    }
                    !sent
                }
                // A report to ourselves (we are the gateway) has nowhere to go.
                None => false,
            };
            if refused {
                self.stats.refused += 1;
                if let Some(p) = &mut self.producer {
                    p.handle_busy(now, report);
                }
            }
        }
    }
}

impl Plugin for Telemetry {
    fn name(&self) -> &'static str {
        "telemetry"
    }

    fn claims(&self) -> meshfleet_mesh::Claims {
        meshfleet_mesh::Claims::none().ty(QUERY_TYPE)
    }

    fn handle_package(&mut self, ctx: &mut Ctx<'_>, _: LinkId, _: Routing, pkg: &Package) {
        let Some(q) = decode_query(pkg.text()) else {
            self.stats.bad_queries += 1;
            return;
        };
        if self.producer.is_none() {
            self.start(ctx);
        }
        self.stats.queries += 1;
        if self.cfg.gateway.is_none() {
            self.querier = Some(pkg.from());
        }
        if let Some(p) = &mut self.producer {
            p.handle_query(ctx.now(), q);
        }
        ctx.emit(Box::new(TelemetryEvent::Query {
            from: pkg.from(),
            id: q.id,
        }));
    }

    fn handle_change(&mut self, _ctx: &mut Ctx<'_>, _change: &MeshChange) {
        // Looked at in the next sample (at most one walk of the tree per sample, however
        // often a large mesh changes).
        self.layout_changed = true;
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.started.is_none() {
            return Some(Instant::ZERO);
        }
        let gap = self.gap_until();
        let mut t = self.next_sample;
        if let Some(s) = self.next_status {
            t = t.min(s.max(gap));
        }
        if self.destination().is_some() {
            if let Some(p) = self.producer.as_ref().and_then(Producer::poll_timeout) {
                t = t.min(p.max(gap));
            }
        }
        Some(t)
    }

    fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        if self.started.is_none() {
            self.start(ctx);
        }
        if now >= self.next_sample {
            self.sample(ctx);
            self.next_sample = now + self.sample_interval();
        }
        // Telemetry first: a crossing matters more than a periodic status.
        self.drain(ctx);
        if let (Some(at), Some(every)) = (self.next_status, self.cfg.status_interval) {
            if now >= at && now >= self.gap_until() {
                self.send_status(ctx);
                self.next_status = Some(now + every.max(Duration::from_millis(100)));
            }
        }
    }
}
