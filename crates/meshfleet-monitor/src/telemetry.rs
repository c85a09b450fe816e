//! The meshfleet telemetry stream (package types 710-711): keyframes and deltas.
//!
//! A node reports a fixed table of [`Metric`]s to the gateway in one compact JSON package,
//! routed SINGLE (so stock relays forward it by `dest`, PROTOCOL.md §4.7):
//!
//! ```text
//! {"from":N,"routing":1,"type":710,"dest":G,"q":7,"k":[3600,41234,-67,80,0,12,30,0,0,1],"fw":"1.4.2","role":"sensor","hw":"ESP32"}   keyframe
//! {"from":N,"routing":1,"type":710,"dest":G,"q":8,"d":[1,39012]}                                                                         delta
//! {"from":N,"routing":1,"type":710,"dest":G,"q":9}                                                                                       heartbeat
//! ```
//!
//! * `q`: report sequence number (u16, wrapping; 0 at boot, where a keyframe is sent).
//! * `k`: keyframe, every metric by slot index, `null` for one the node does not measure.
//! * `d`: delta, `[slot, value, slot, value, ...]` for the metrics that changed by at least
//!   their threshold since the value last *sent* (absolute values, so a lost delta costs
//!   only that update, never corrupts later ones). No `k`/`d`: a heartbeat.
//! * `a`: age in seconds of a report that waited in the node's buffer (gateway unreachable).
//! * `r`: the id of the query (711) this keyframe answers.
//! * `fw`, `role`, `hw`: the node's identity, in keyframes only.
//!
//! A QUERY (711) `{"from":G,"routing":1,"type":711,"dest":N,"r":5}` (or `"routing":2`
//! without `dest`, to every node) asks for a keyframe now; nodes answer after a random delay
//! below [`ProducerConfig::query_spread_ms`] so that a mesh-wide query does not answer at once.
//!
//! The node side is [`Producer`], a sans-IO state machine: feed it samples with
//! [`Producer::record`] (which says [`Urgency::SendNow`] when a value crosses an alert
//! threshold), call [`Producer::poll_report`] at [`Producer::poll_timeout`] and send what it
//! returns; report a send the mesh refused with [`Producer::handle_busy`] (back-off) and the
//! gateway's reachability with [`Producer::set_gateway_reachable`] (bounded buffering). The
//! gateway side is [`decode`] plus [`StreamState`], which rebuilds each node's snapshot.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};

use meshfleet_mesh::{Duration, Instant, Rng};
use meshfleet_wire::NodeId;

use crate::json::{for_each_field, ObjectError, Scalar};
use crate::status::json_str;
use crate::trend::{push_spaced, trend};

/// Package type of a telemetry report (node -> gateway).
pub const TELEMETRY_TYPE: i64 = 710;
/// Package type of a telemetry query (gateway -> node, or all nodes).
pub const QUERY_TYPE: i64 = 711;
/// Longest telemetry package text accepted, in bytes (a keyframe is about 170).
pub const MAX_TELEMETRY_LEN: usize = 1024;
/// Longest identity string (`fw`, `role`, `hw`) kept, in bytes.
pub const MAX_IDENTITY_LEN: usize = 32;

/// The metrics, by slot index on the wire. Values are integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Metric {
    /// Seconds since boot (keyframes only: it changes every report by definition).
    Uptime = 0,
    /// Free heap, bytes.
    FreeHeap = 1,
    /// RSSI of the node's station link, dBm.
    Rssi = 2,
    /// Round-trip latency to its parent or the gateway, ms.
    Latency = 3,
    /// Packet loss, percent.
    Loss = 4,
    /// Messages sent per minute.
    TxPerMin = 5,
    /// Messages received per minute.
    RxPerMin = 6,
    /// Messages dropped per minute.
    DropPerMin = 7,
    /// Node-reported flags ([`flags`]).
    Flags = 8,
    /// Reason of the last reset (firmware-defined code, keyframes only).
    ResetReason = 9,
}

/// Number of metric slots.
pub const SLOTS: usize = 10;

/// Bits of [`Metric::Flags`].
pub mod flags {
    /// The last OTA failed.
    pub const OTA_FAILED: i64 = 0x01;
    /// A sensor error.
    pub const SENSOR_ERROR: i64 = 0x02;
    /// The node lost its route to the mesh root.
    pub const LOST_ROOT: i64 = 0x04;
    /// The node's own heap samples fall steadily (set by the [`Producer`](super::Producer)
    /// itself, see [`ProducerConfig::leak_window_s`](super::ProducerConfig)).
    pub const MEMORY_LEAK: i64 = 0x08;
}

impl Metric {
    /// Every metric, in slot order.
    pub const ALL: [Self; SLOTS] = [
        Self::Uptime,
        Self::FreeHeap,
        Self::Rssi,
        Self::Latency,
        Self::Loss,
        Self::TxPerMin,
        Self::RxPerMin,
        Self::DropPerMin,
        Self::Flags,
        Self::ResetReason,
    ];

    /// The slot index.
    pub fn slot(self) -> usize {
        self as usize
    }

    /// The metric of a slot index.
    pub fn from_slot(i: usize) -> Option<Self> {
        Self::ALL.get(i).copied()
    }

    /// The plausible range; a value outside it is dropped by the gateway.
    pub fn range(self) -> (i64, i64) {
        match self {
            Self::Uptime => (0, u32::MAX as i64),
            Self::FreeHeap => (0, 64 << 20),
            Self::Rssi => (-127, 0),
            Self::Latency => (0, 600_000),
            Self::Loss => (0, 100),
            Self::TxPerMin | Self::RxPerMin | Self::DropPerMin => (0, 10_000_000),
            Self::Flags | Self::ResetReason => (0, 255),
        }
    }

    /// Whether it only travels in keyframes.
    fn keyframe_only(self) -> bool {
        matches!(self, Self::Uptime | Self::ResetReason)
    }
}

/// One metric snapshot: a value per slot, `None` when unknown.
pub type Values = [Option<i64>; SLOTS];

/// What a report carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Every metric.
    Keyframe(Values),
    /// The metrics that changed (slot, value); empty for a heartbeat.
    Delta(Vec<(Metric, i64)>),
}

/// One telemetry report, as produced by a node or decoded by the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Sequence number.
    pub seq: u16,
    /// Keyframe or delta.
    pub body: Body,
    /// Seconds the report waited in the node's buffer before it was sent.
    pub age_s: u32,
    /// The query this report answers.
    pub reply_to: Option<u32>,
    /// Identity (keyframes only).
    pub identity: Option<Identity>,
}

/// What a node is: firmware version, role, hardware.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Firmware version.
    pub firmware: String,
    /// Role (the OTA role: "sensor", ...).
    pub role: String,
    /// Hardware ("ESP32", "ESP8266", "linux").
    pub hardware: String,
}

impl Report {
    /// The package's JSON text, routed SINGLE from `from` to the gateway `dest`.
    pub fn to_json(&self, from: NodeId, dest: NodeId) -> String {
        let mut s = String::with_capacity(96);
        let _ = write!(
            s,
            "{{\"from\":{},\"routing\":1,\"type\":{},\"dest\":{},\"q\":{}",
            from.0, TELEMETRY_TYPE, dest.0, self.seq
        );
        match &self.body {
            Body::Keyframe(v) => {
                s.push_str(",\"k\":[");
                // Trailing unknown slots are left out: a shorter keyframe reads them as null.
                let n = v.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
                for (i, x) in v[..n].iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    match x {
                        Some(x) => {
                            let _ = write!(s, "{x}");
                        }
                        None => s.push_str("null"),
                    }
                }
                s.push(']');
            }
            Body::Delta(d) if !d.is_empty() => {
                s.push_str(",\"d\":[");
                for (i, (m, x)) in d.iter().enumerate() {
                    let sep = if i > 0 { "," } else { "" };
                    let _ = write!(s, "{sep}{},{x}", m.slot());
                }
                s.push(']');
            }
            Body::Delta(_) => {}
        }
        if self.age_s > 0 {
            let _ = write!(s, ",\"a\":{}", self.age_s);
        }
        if let Some(r) = self.reply_to {
            let _ = write!(s, ",\"r\":{r}");
        }
        if let Some(id) = &self.identity {
            for (k, v) in [
                ("fw", &id.firmware),
                ("role", &id.role),
                ("hw", &id.hardware),
            ] {
                if !v.is_empty() {
                    let _ = write!(s, ",\"{k}\":");
                    json_str(&mut s, v);
                }
            }
        }
        s.push('}');
        s
    }
}

/// A decoded telemetry report and the values that were dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryDecode {
    /// The report; dropped values are absent (keyframe: `None`; delta: left out).
    pub report: Report,
    /// Values dropped as out of range or for an unknown slot, and keys of the wrong type.
    pub faults: u32,
}

/// Why a text is not a usable telemetry report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TelemetryDecodeError {
    /// Longer than [`MAX_TELEMETRY_LEN`].
    TooLarge,
    /// Not valid JSON.
    Json,
    /// JSON but not an object.
    NotObject,
    /// Not a type 710 package.
    NotTelemetry,
    /// No valid `q` (sequence number).
    NoSequence,
}

impl fmt::Display for TelemetryDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooLarge => "telemetry package larger than 1 KiB",
            Self::Json => "telemetry package is not valid JSON",
            Self::NotObject => "telemetry package is not a JSON object",
            Self::NotTelemetry => "not a type 710 package",
            Self::NoSequence => "telemetry package without a valid `q`",
        })
    }
}

fn check(m: Metric, v: i64) -> Option<i64> {
    let (lo, hi) = m.range();
    (lo..=hi).contains(&v).then_some(v)
}

/// Decodes a telemetry package's JSON text.
pub fn decode(text: &str) -> Result<TelemetryDecode, TelemetryDecodeError> {
    if text.len() > MAX_TELEMETRY_LEN {
        return Err(TelemetryDecodeError::TooLarge);
    }
    let mut ty = None;
    let mut seq = None;
    let mut key: Option<Values> = None;
    let mut delta: Vec<(Metric, i64)> = Vec::new();
    let (mut age, mut reply) = (0u32, None);
    let mut id = Identity::default();
    let mut faults = 0u32;
    let r = for_each_field(text, |k, v| match k {
        "type" => ty = v.int_in(i64::MIN, i64::MAX).ok(),
        "q" => match v.int_in(0, u16::MAX as i64) {
            Ok(q) => seq = Some(q as u16),
            Err(_) => faults += 1,
        },
        "k" => match v {
            Scalar::Ints(xs) => {
                let mut vals = [None; SLOTS];
                for (i, x) in xs.into_iter().enumerate() {
                    match (Metric::from_slot(i), x) {
                        (Some(m), Some(x)) => {
                            vals[i] = check(m, x);
                            faults += u32::from(vals[i].is_none());
                        }
                        (Some(_), None) => {}
                        (None, _) => faults += 1,
                    }
                }
                key = Some(vals);
            }
            _ => faults += 1,
        },
        "d" => match v {
            Scalar::Ints(xs) if xs.len() % 2 == 0 => {
                delta.clear();
                for p in xs.chunks_exact(2) {
                    let m = p[0]
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(Metric::from_slot);
                    match (m, p[1]) {
                        (Some(m), Some(x)) if check(m, x).is_some() => {
                            delta.retain(|(d, _)| *d != m);
                            delta.push((m, x));
                        }
                        _ => faults += 1,
                    }
                }
            }
            _ => faults += 1,
        },
        "a" => match v.int_in(0, u32::MAX as i64) {
            Ok(a) => age = a as u32,
            Err(_) => faults += 1,
        },
        "r" => match v.int_in(0, u32::MAX as i64) {
            Ok(r) => reply = Some(r as u32),
            Err(_) => faults += 1,
        },
        "fw" | "role" | "hw" => match v.str_max(MAX_IDENTITY_LEN) {
            Ok(s) => {
                let slot = match k {
                    "fw" => &mut id.firmware,
                    "role" => &mut id.role,
                    _ => &mut id.hardware,
                };
                *slot = s.into();
            }
            Err(_) => faults += 1,
        },
        _ => {}
    });
    match r {
        Err(ObjectError::Json) => return Err(TelemetryDecodeError::Json),
        Err(ObjectError::NotObject) => return Err(TelemetryDecodeError::NotObject),
        Ok(()) => {}
    }
    if ty != Some(TELEMETRY_TYPE) {
        return Err(TelemetryDecodeError::NotTelemetry);
    }
    let seq = seq.ok_or(TelemetryDecodeError::NoSequence)?;
    let body = match key {
        Some(k) => Body::Keyframe(k),
        None => Body::Delta(delta),
    };
    let identity = (matches!(body, Body::Keyframe(_)) && id != Identity::default()).then_some(id);
    Ok(TelemetryDecode {
        report: Report {
            seq,
            body,
            age_s: age,
            reply_to: reply,
            identity,
        },
        faults,
    })
}

/// A decoded query (711).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    /// The query id, echoed in the answer's `r`.
    pub id: u32,
}

/// The JSON text of a query to `dest`, or to every node (`None`: routed BROADCAST).
pub fn query_json(from: NodeId, dest: Option<NodeId>, id: u32) -> String {
    let mut s = String::with_capacity(64);
    match dest {
        Some(d) => {
            let _ = write!(
                s,
                "{{\"from\":{},\"routing\":1,\"type\":{QUERY_TYPE},\"dest\":{},\"r\":{id}}}",
                from.0, d.0
            );
        }
        None => {
            let _ = write!(
                s,
                "{{\"from\":{},\"routing\":2,\"type\":{QUERY_TYPE},\"r\":{id}}}",
                from.0
            );
        }
    }
    s
}

/// Decodes a query's JSON text; `None` if it is not a valid 711.
pub fn decode_query(text: &str) -> Option<Query> {
    if text.len() > MAX_TELEMETRY_LEN {
        return None;
    }
    let (mut ty, mut id) = (None, None);
    for_each_field(text, |k, v| match k {
        "type" => ty = v.int_in(i64::MIN, i64::MAX).ok(),
        "r" => id = v.int_in(0, u32::MAX as i64).ok(),
        _ => {}
    })
    .ok()?;
    (ty == Some(QUERY_TYPE)).then_some(Query { id: id? as u32 })
}

/// How a node reports (every field has a default; `serde` reads a partial config).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerConfig {
    /// Seconds between scheduled reports (heartbeat or delta). The gateway's "silent" verdict
    /// comes after two of these.
    pub report_interval_s: u32,
    /// Every `keyframe_every`-th scheduled report is a keyframe.
    pub keyframe_every: u16,
    /// Per-slot change threshold: a metric goes into a delta when it moved at least this
    /// much from the value last sent (0: any change).
    pub deltas: [i64; SLOTS],
    /// Free heap below this (bytes) is sent at once.
    pub alert_low_heap: i64,
    /// RSSI below this (dBm) is sent at once.
    pub alert_weak_rssi: i64,
    /// Latency above this (ms) is sent at once.
    pub alert_high_latency: i64,
    /// Loss above this (percent) is sent at once.
    pub alert_high_loss: i64,
    /// Messages sent per minute above this are sent at once.
    pub alert_flood_tx_per_min: i64,
    /// Reports kept while the gateway is unreachable; the oldest go first.
    pub buffer_capacity: usize,
    /// First back-off after the mesh refused a send, seconds (doubling up to the max).
    pub backoff_initial_s: u32,
    /// Longest back-off, seconds.
    pub backoff_max_s: u32,
    /// A query is answered after a random delay below this, ms.
    pub query_spread_ms: u32,
    /// The node's own leak check fits its heap samples of the last this many seconds
    /// (0: off). The node samples every few seconds, the gateway sees a value only when it
    /// moved by the heap threshold, so the node sees a leak long before the gateway could:
    /// it sets [`flags::MEMORY_LEAK`] and reports at once.
    pub leak_window_s: u32,
    /// Most heap samples kept for that fit (spread evenly over the window).
    pub leak_samples: usize,
    /// Heap loss rate that is a leak, bytes per hour (the flag clears below half of it).
    pub leak_bytes_per_hour: i64,
    /// Least r² of the fit: noise alone does not reach it, a steady fall does.
    pub leak_min_r2: f64,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            report_interval_s: 300,
            keyframe_every: 12,
            //        up heap  rssi lat  loss tx  rx  drop flags reset
            deltas: [0, 2048, 6, 150, 5, 30, 30, 10, 0, 0],
            alert_low_heap: 10 * 1024,
            alert_weak_rssi: -80,
            alert_high_latency: 500,
            alert_high_loss: 10,
            alert_flood_tx_per_min: 600,
            buffer_capacity: 32,
            backoff_initial_s: 2,
            backoff_max_s: 120,
            query_spread_ms: 2_000,
            leak_window_s: 600,
            leak_samples: 31,
            leak_bytes_per_hour: 8_192,
            leak_min_r2: 0.8,
        }
    }
}

impl ProducerConfig {
    /// Whether `v` is in the alert region of `m` (the region a crossing into is urgent).
    fn alarming(&self, m: Metric, v: i64) -> bool {
        match m {
            Metric::FreeHeap => v < self.alert_low_heap,
            Metric::Rssi => v < self.alert_weak_rssi,
            Metric::Latency => v > self.alert_high_latency,
            Metric::Loss => v > self.alert_high_loss,
            Metric::TxPerMin => v > self.alert_flood_tx_per_min,
            Metric::Flags => v != 0,
            _ => false,
        }
    }

    /// Whether `v` has left the alert region of `m` by a margin (hysteresis), so that a value
    /// hovering at the threshold does not send a report per sample.
    fn clear_of_alarm(&self, m: Metric, v: i64) -> bool {
        let margin = self.deltas[m.slot()].max(1);
        match m {
            Metric::FreeHeap => v >= self.alert_low_heap + margin,
            Metric::Rssi => v >= self.alert_weak_rssi + margin,
            Metric::Latency => v <= self.alert_high_latency - margin,
            Metric::Loss => v <= self.alert_high_loss - margin,
            Metric::TxPerMin => v <= self.alert_flood_tx_per_min - margin,
            Metric::Flags => v == 0,
            _ => true,
        }
    }
}

/// What [`Producer::record`] asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    /// Nothing to do before the next timeout.
    None,
    /// A value crossed an alert threshold: call [`Producer::poll_report`] now.
    SendNow,
}

/// Counters of a producer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Reports handed to the caller.
    pub sent: u64,
    /// Of which keyframes.
    pub keyframes: u64,
    /// Of which sent at once for a threshold crossing.
    pub urgent: u64,
    /// Reports put in the buffer while the gateway was unreachable.
    pub buffered: u64,
    /// Buffered reports dropped because the buffer was full (oldest first).
    pub buffer_dropped: u64,
    /// Times the mesh refused a send (back-off).
    pub busy: u64,
    /// Bytes of JSON handed to the caller by [`Producer::poll_packet`] (NUL excluded).
    pub bytes: u64,
}

struct Buffered {
    created: Instant,
    report: Report,
}

/// The node side of the telemetry stream. See the module docs for the run loop.
pub struct Producer {
    cfg: ProducerConfig,
    seq: u16,
    current: Values,
    last_sent: Values,
    /// Slots in their alert region (a crossing into it was, or is being, sent).
    alarmed: [bool; SLOTS],
    /// Slots that must go into the next report regardless of threshold.
    forced: [bool; SLOTS],
    urgent: bool,
    force_keyframe: bool,
    since_keyframe: u16,
    next_report: Instant,
    reachable: bool,
    buffer: VecDeque<Buffered>,
    backoff: Duration,
    backoff_until: Option<Instant>,
    query: Option<(u32, Instant)>,
    identity: Option<Identity>,
    rng: Rng,
    stats: ProducerStats,
    /// Heap samples for the node's own leak check.
    heap: VecDeque<(Instant, i64)>,
    /// Flags as the application last recorded them.
    app_flags: i64,
    /// Flags the producer sets itself ([`flags::MEMORY_LEAK`]).
    own_flags: i64,
}

impl Producer {
    /// A producer for a node that just booted: its first report (due at once) is a keyframe
    /// with sequence 0, which tells the gateway about the boot.
    pub fn new(cfg: ProducerConfig, now: Instant, seed: u64) -> Self {
        Self {
            cfg,
            seq: 0,
            current: [None; SLOTS],
            last_sent: [None; SLOTS],
            alarmed: [false; SLOTS],
            forced: [false; SLOTS],
            urgent: false,
            force_keyframe: true,
            since_keyframe: 0,
            next_report: now,
            reachable: true,
            buffer: VecDeque::new(),
            backoff: Duration::ZERO,
            backoff_until: None,
            query: None,
            identity: None,
            rng: Rng::new(seed),
            stats: ProducerStats::default(),
            heap: VecDeque::new(),
            app_flags: 0,
            own_flags: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ProducerConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> ProducerStats {
        self.stats
    }

    /// Sets what the node is (sent in keyframes; a change forces one).
    pub fn set_identity(&mut self, identity: Identity) {
        if self.identity.as_ref() != Some(&identity) {
            self.identity = Some(identity);
            self.force_keyframe = true;
        }
    }

    /// Records the current value of a metric. Returns [`Urgency::SendNow`] when the value
    /// crossed into its alert region.
    pub fn record(&mut self, now: Instant, m: Metric, value: i64) -> Urgency {
        let value = if m == Metric::Flags {
            self.app_flags = value;
            value | self.own_flags
        } else {
            value
        };
        let u = self.record_slot(m, value);
        if m == Metric::FreeHeap && self.heap_trend(now, value) == Urgency::SendNow {
            return Urgency::SendNow;
        }
        u
    }

    /// The node's own leak check on a new heap sample: sets or clears
    /// [`flags::MEMORY_LEAK`]; setting it is urgent.
    fn heap_trend(&mut self, now: Instant, heap: i64) -> Urgency {
        if self.cfg.leak_window_s == 0 {
            return Urgency::None;
        }
        let window_us = u64::from(self.cfg.leak_window_s) * 1_000_000;
        let spacing = Duration::from_micros(window_us / (self.cfg.leak_samples.max(2) as u64 - 1));
        push_spaced(&mut self.heap, now, heap, spacing, self.cfg.leak_samples);
        let Some((slope_per_h, r2, span)) =
            trend(&self.heap, now, Duration::from_micros(window_us))
        else {
            return Urgency::None;
        };
        let limit = self.cfg.leak_bytes_per_hour as f64;
        let was = self.own_flags & flags::MEMORY_LEAK != 0;
        let is = if was {
            slope_per_h <= -limit / 2.0
        } else {
            span >= 0.75 * f64::from(self.cfg.leak_window_s)
                && slope_per_h <= -limit
                && r2 >= self.cfg.leak_min_r2
        };
        if is == was {
            return Urgency::None;
        }
        self.own_flags ^= flags::MEMORY_LEAK;
        let i = Metric::Flags.slot();
        let f = self.app_flags | self.own_flags;
        self.current[i] = Some(f);
        self.forced[i] = true;
        self.alarmed[i] = f != 0;
        if is {
            self.urgent = true;
            Urgency::SendNow
        } else {
            Urgency::None
        }
    }

    /// Records `value` into its slot (alert-region crossings are urgent).
    fn record_slot(&mut self, m: Metric, value: i64) -> Urgency {
        let i = m.slot();
        self.current[i] = Some(value);
        if !self.alarmed[i] && self.cfg.alarming(m, value) {
            self.alarmed[i] = true;
            self.forced[i] = true;
            self.urgent = true;
            return Urgency::SendNow;
        }
        if self.alarmed[i] && self.cfg.clear_of_alarm(m, value) {
            // Leaving the alert region is not urgent, but must not wait for the threshold.
            self.alarmed[i] = false;
            self.forced[i] = true;
        }
        Urgency::None
    }

    /// Records a whole sample (`None` leaves a metric unchanged).
    pub fn record_all(&mut self, now: Instant, values: &Values) -> Urgency {
        let mut u = Urgency::None;
        for (m, v) in Metric::ALL.iter().zip(values) {
            if let Some(v) = v {
                if self.record(now, *m, *v) == Urgency::SendNow {
                    u = Urgency::SendNow;
                }
            }
        }
        u
    }

    /// A query (711) arrived: a keyframe answering it is sent after a random delay.
    pub fn handle_query(&mut self, now: Instant, q: Query) {
        let spread = u64::from(self.cfg.query_spread_ms.max(1)) * 1_000;
        let at = now + Duration::from_micros(self.rng.below(spread));
        self.query = Some((q.id, at));
    }

    /// Whether the gateway can be reached (a route to it exists). While it cannot, reports
    /// are buffered (bounded) instead of handed out; once it can, the buffer drains first and
    /// the next scheduled report is a keyframe.
    pub fn set_gateway_reachable(&mut self, _now: Instant, reachable: bool) {
        if reachable && !self.reachable {
            self.force_keyframe = true;
        }
        self.reachable = reachable;
    }

    /// The mesh refused the last report (queue full, medium busy): it is retried after an
    /// exponential back-off; reports due meanwhile merge into one. Urgent reports still go.
    pub fn handle_busy(&mut self, now: Instant, refused: Report) {
        self.stats.busy += 1;
        let init = Duration::from_secs(u64::from(self.cfg.backoff_initial_s.max(1)));
        let max = Duration::from_secs(u64::from(self.cfg.backoff_max_s.max(1)));
        self.backoff = if self.backoff == Duration::ZERO {
            init
        } else {
            Duration::from_micros((self.backoff.as_micros() * 2).min(max.as_micros()))
        };
        self.backoff_until = Some(now + self.backoff);
        // Put the refused report back at the head, so nothing is lost to the refusal.
        self.buffer.push_front(Buffered {
            created: now,
            report: refused,
        });
        self.trim_buffer();
    }

    /// When [`Self::poll_report`] next has something (`None`: only after an input).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.urgent {
            return Some(Instant::ZERO);
        }
        let mut t = self.next_report;
        if let Some((_, at)) = self.query {
            t = t.min(at);
        }
        if self.reachable && !self.buffer.is_empty() {
            t = Instant::ZERO;
        }
        Some(match self.backoff_until {
            Some(b) => t.max(b),
            None => t,
        })
    }

    /// The next report to send, if one is due at `now`.
    pub fn poll_report(&mut self, now: Instant) -> Option<Report> {
        let backing_off = self.backoff_until.is_some_and(|b| now < b);
        if !backing_off {
            self.backoff_until = None;
        }
        if backing_off && !self.urgent {
            return None;
        }
        // An urgent report goes before anything buffered: it is the one that must arrive fast.
        if self.reachable && !self.urgent {
            if let Some(b) = self.buffer.pop_front() {
                let mut r = b.report;
                r.age_s = r.age_s.saturating_add(
                    (now.saturating_since(b.created).as_micros() / 1_000_000) as u32,
                );
                return Some(self.hand_out(r));
            }
        }
        let query = self.query.filter(|(_, at)| now >= *at);
        let scheduled = now >= self.next_report;
        if !(self.urgent || scheduled || query.is_some()) {
            return None;
        }
        let keyframe = query.is_some()
            || (scheduled
                && (self.force_keyframe || self.since_keyframe + 1 >= self.cfg.keyframe_every));
        let report = if keyframe {
            self.keyframe(query.map(|(id, _)| id))
        } else {
            self.delta()
        };
        if query.is_some() {
            self.query = None;
        }
        if self.urgent {
            self.urgent = false;
            self.stats.urgent += 1;
        }
        if scheduled {
            self.next_report =
                now + Duration::from_secs(u64::from(self.cfg.report_interval_s.max(1)));
        }
        if !self.reachable {
            // A heartbeat says nothing once delayed: only changes and keyframes are kept.
            if !matches!(&report.body, Body::Delta(d) if d.is_empty()) {
                self.buffer.push_back(Buffered {
                    created: now,
                    report,
                });
                self.stats.buffered += 1;
                self.trim_buffer();
            }
            return None;
        }
        Some(self.hand_out(report))
    }

    /// [`Self::poll_report`] encoded as the package's JSON text, from `from` to `gateway`.
    pub fn poll_packet(&mut self, now: Instant, from: NodeId, gateway: NodeId) -> Option<String> {
        let r = self.poll_report(now)?;
        let s = r.to_json(from, gateway);
        self.stats.bytes += s.len() as u64;
        Some(s)
    }

    fn hand_out(&mut self, r: Report) -> Report {
        self.stats.sent += 1;
        if matches!(r.body, Body::Keyframe(_)) {
            self.stats.keyframes += 1;
        }
        r
    }

    fn trim_buffer(&mut self) {
        while self.buffer.len() > self.cfg.buffer_capacity {
            self.buffer.pop_front();
            self.stats.buffer_dropped += 1;
        }
    }

    fn next_seq(&mut self) -> u16 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s
    }

    fn keyframe(&mut self, reply_to: Option<u32>) -> Report {
        self.last_sent = self.current;
        self.forced = [false; SLOTS];
        self.force_keyframe = false;
        self.since_keyframe = 0;
        Report {
            seq: self.next_seq(),
            body: Body::Keyframe(self.current),
            age_s: 0,
            reply_to,
            identity: self.identity.clone(),
        }
    }

    fn delta(&mut self) -> Report {
        let mut d = Vec::new();
        for m in Metric::ALL {
            let i = m.slot();
            let Some(v) = self.current[i] else { continue };
            if m.keyframe_only() {
                continue;
            }
            let changed = match self.last_sent[i] {
                None => true,
                Some(old) => {
                    let t = self.cfg.deltas[i];
                    if t == 0 {
                        old != v
                    } else {
                        (v - old).abs() >= t
                    }
                }
            };
            if changed || (self.forced[i] && self.last_sent[i] != Some(v)) {
                d.push((m, v));
                self.last_sent[i] = Some(v);
            }
            self.forced[i] = false;
        }
        self.since_keyframe += 1;
        Report {
            seq: self.next_seq(),
            body: Body::Delta(d),
            age_s: 0,
            reply_to: None,
            identity: None,
        }
    }
}

/// What applying a report to a node's stream found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The node rebooted since its previous report (sequence restarted with a boot keyframe,
    /// or uptime went back).
    pub reboot: bool,
    /// Reports missing between the previous one and this (sequence gap).
    pub lost: u16,
    /// The report is a duplicate or older than one already applied; it was ignored.
    pub stale: bool,
}

/// The gateway's view of one node's stream: the latest value of every metric.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamState {
    /// Latest values (`None`: never received since the last keyframe said unknown).
    pub values: Values,
    /// Sequence of the last applied report.
    pub last_seq: Option<u16>,
    /// When the last report was applied.
    pub last_at: Option<Instant>,
    /// Whether a keyframe has been received (before that, values come from deltas only).
    pub synced: bool,
    /// Uptime at `uptime_at` (from the last keyframe).
    uptime: Option<(u32, Instant)>,
}

impl StreamState {
    /// The node's uptime now, extrapolated from its last keyframe.
    pub fn uptime_at(&self, now: Instant) -> Option<u32> {
        let (u, at) = self.uptime?;
        let secs = now.saturating_since(at).as_micros() / 1_000_000;
        Some(u.saturating_add(secs.min(u32::MAX as u64) as u32))
    }

    /// Applies a report received at `now` (its `age_s` moves its time back).
    pub fn apply(&mut self, now: Instant, r: &Report) -> Applied {
        let at = Instant::from_micros(
            now.as_micros()
                .saturating_sub(u64::from(r.age_s) * 1_000_000),
        );
        let mut out = Applied::default();
        let boot_key = r.seq == 0 && matches!(r.body, Body::Keyframe(_));
        if let Some(last) = self.last_seq {
            let ahead = r.seq.wrapping_sub(last);
            if boot_key {
                // Sequence 0 in a keyframe: a boot, unless the uptime shows the node kept
                // running (the sequence wrapped and a report before it was lost).
                let kept_running = match (&r.body, self.uptime_at(at)) {
                    (Body::Keyframe(v), Some(exp)) => {
                        v[0].is_some_and(|u| u + 10 >= i64::from(exp))
                    }
                    _ => false,
                };
                if kept_running {
                    if ahead <= u16::MAX / 2 {
                        out.lost = ahead.saturating_sub(1);
                    }
                } else {
                    out.reboot = true;
                }
            } else if ahead == 0 || ahead > u16::MAX / 2 {
                // Behind or equal: a duplicate, a late buffered report, or a reboot whose
                // boot keyframe was lost (then the uptime check below tells).
                let uptime_back = match (&r.body, self.uptime_at(at)) {
                    (Body::Keyframe(v), Some(exp)) => v[0].is_some_and(|u| u + 60 < i64::from(exp)),
                    _ => false,
                };
                if !uptime_back && r.seq != 0 {
                    out.stale = true;
                    return out;
                }
                out.reboot = true;
            } else {
                out.lost = ahead - 1;
            }
        }
        if let Body::Keyframe(v) = &r.body {
            if let (Some(u), Some(exp)) = (v[0], self.uptime_at(at)) {
                if !out.reboot && u + 60 < i64::from(exp) {
                    out.reboot = true;
                }
            }
        }
        match &r.body {
            Body::Keyframe(v) => {
                self.values = *v;
                self.synced = true;
                self.uptime = v[0].map(|u| (u as u32, at));
            }
            Body::Delta(d) => {
                if out.reboot {
                    self.uptime = None;
                }
                for (m, x) in d {
                    self.values[m.slot()] = Some(*x);
                }
            }
        }
        self.last_seq = Some(r.seq);
        self.last_at = Some(at);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const N: NodeId = NodeId(3_000_000_002);
    const G: NodeId = NodeId(3_000_000_001);

    fn t(s: u64) -> Instant {
        Instant::from_micros(s * 1_000_000)
    }

    #[test]
    fn keyframe_delta_heartbeat_round_trip() {
        let mut p = Producer::new(ProducerConfig::default(), t(0), 1);
        p.set_identity(Identity {
            firmware: "1.4.2".into(),
            role: "sensor".into(),
            hardware: "ESP32".into(),
        });
        p.record(t(0), Metric::Uptime, 3);
        p.record(t(0), Metric::FreeHeap, 40_000);
        p.record(t(0), Metric::Rssi, -60);
        let k = p.poll_packet(t(0), N, G).unwrap();
        assert_eq!(
            k,
            r#"{"from":3000000002,"routing":1,"type":710,"dest":3000000001,"q":0,"k":[3,40000,-60],"fw":"1.4.2","role":"sensor","hw":"ESP32"}"#
        );
        assert_eq!(p.poll_report(t(1)), None);
        assert_eq!(p.poll_timeout(), Some(t(300)));
        p.record(t(200), Metric::FreeHeap, 39_000); // below the 2 KiB threshold
        p.record(t(200), Metric::Rssi, -70);
        let d = p.poll_packet(t(300), N, G).unwrap();
        assert_eq!(
            d,
            r#"{"from":3000000002,"routing":1,"type":710,"dest":3000000001,"q":1,"d":[2,-70]}"#
        );
        let h = p.poll_packet(t(600), N, G).unwrap();
        assert_eq!(
            h,
            r#"{"from":3000000002,"routing":1,"type":710,"dest":3000000001,"q":2}"#
        );
        // The gateway rebuilds the snapshot.
        let mut s = StreamState::default();
        for (at, txt) in [(0, &k), (300, &d), (600, &h)] {
            let r = decode(txt).unwrap();
            assert_eq!(r.faults, 0);
            let a = s.apply(t(at), &r.report);
            assert_eq!(a, Applied::default());
        }
        assert_eq!(s.values[1], Some(40_000));
        assert_eq!(s.values[2], Some(-70));
        assert_eq!(s.uptime_at(t(600)), Some(603));
    }

    #[test]
    fn the_node_flags_a_steady_heap_fall_at_once_and_noise_never() {
        let cfg = ProducerConfig::default();
        // Noise of ±600 B around a flat heap for 24 h: never flagged.
        let mut p = Producer::new(cfg.clone(), t(0), 1);
        let mut rng = Rng::new(7);
        for s in (0..86_400).step_by(10) {
            let noise = rng.below(1_201) as i64 - 600;
            assert_eq!(
                p.record(t(s), Metric::FreeHeap, 40_000 + noise),
                Urgency::None
            );
        }
        assert_eq!(p.current[Metric::Flags.slot()], None);
        // A 20 KB/h leak starting at 1 h, same noise: flagged within two report periods,
        // urgently, and the application's own flag bits are kept.
        let mut p = Producer::new(cfg, t(0), 1);
        p.record(t(0), Metric::Flags, flags::SENSOR_ERROR);
        let mut flagged = None;
        for s in (0..3 * 3_600u64).step_by(10) {
            let leak = s.saturating_sub(3_600) as i64 * 20_000 / 3_600;
            let noise = rng.below(1_201) as i64 - 600;
            if p.record(t(s), Metric::FreeHeap, 60_000 - leak + noise) == Urgency::SendNow {
                flagged.get_or_insert(s);
            }
        }
        let at = flagged.expect("the leak is flagged");
        assert!((3_600..=3_600 + 600).contains(&at), "flagged at {at} s");
        assert_eq!(
            p.current[Metric::Flags.slot()],
            Some(flags::SENSOR_ERROR | flags::MEMORY_LEAK)
        );
        // The leak stops (a flat heap again): the flag clears, the app's bit stays.
        for s in (3 * 3_600..4 * 3_600).step_by(10) {
            p.record(t(s), Metric::FreeHeap, 20_000);
        }
        assert_eq!(p.current[Metric::Flags.slot()], Some(flags::SENSOR_ERROR));
    }

    #[test]
    fn threshold_crossing_is_sent_at_once_and_only_once() {
        let mut p = Producer::new(ProducerConfig::default(), t(0), 1);
        p.record(t(0), Metric::FreeHeap, 40_000);
        p.poll_report(t(0)).unwrap();
        assert_eq!(p.record(t(10), Metric::FreeHeap, 9_000), Urgency::SendNow);
        assert_eq!(p.poll_timeout(), Some(Instant::ZERO));
        let r = p.poll_report(t(10)).unwrap();
        assert_eq!(r.body, Body::Delta(alloc::vec![(Metric::FreeHeap, 9_000)]));
        // hovering around the threshold: no new urgent report
        for (i, v) in [10_300, 9_900, 10_500, 9_800].into_iter().enumerate() {
            assert_eq!(
                p.record(t(11 + i as u64), Metric::FreeHeap, v),
                Urgency::None
            );
            assert_eq!(p.poll_report(t(11 + i as u64)), None);
        }
        // leaving by the margin re-arms; the next crossing is urgent again
        p.record(t(20), Metric::FreeHeap, 13_000);
        assert_eq!(p.record(t(21), Metric::FreeHeap, 8_000), Urgency::SendNow);
    }

    #[test]
    fn unreachable_gateway_buffers_bounded_oldest_first_out() {
        let cfg = ProducerConfig {
            buffer_capacity: 3,
            ..ProducerConfig::default()
        };
        let mut p = Producer::new(cfg, t(0), 1);
        p.record(t(0), Metric::FreeHeap, 40_000);
        p.poll_report(t(0)).unwrap();
        p.set_gateway_reachable(t(1), false);
        for i in 1..=6u64 {
            p.record(t(i * 300 - 1), Metric::FreeHeap, 40_000 - i as i64 * 3000);
            assert_eq!(p.poll_report(t(i * 300)), None);
        }
        assert_eq!(p.stats().buffered, 6);
        assert_eq!(p.stats().buffer_dropped, 3);
        p.set_gateway_reachable(t(2000), true);
        let got: Vec<Report> = core::iter::from_fn(|| p.poll_report(t(2000))).collect();
        // the three newest, oldest of them first, with their ages; then the keyframe is due
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].seq, 4);
        assert_eq!(got[0].age_s, 2000 - 1200);
        assert_eq!(got[2].seq, 6);
        let k = p.poll_report(t(2100)).unwrap();
        assert!(matches!(k.body, Body::Keyframe(_)));
    }

    #[test]
    fn busy_mesh_backs_off_exponentially_and_merges() {
        let mut p = Producer::new(ProducerConfig::default(), t(0), 1);
        let r = p.poll_report(t(0)).unwrap();
        p.handle_busy(t(0), r);
        assert_eq!(p.poll_report(t(1)), None);
        assert_eq!(p.poll_timeout(), Some(t(2)));
        let r = p.poll_report(t(2)).unwrap();
        p.handle_busy(t(2), r);
        assert_eq!(p.poll_timeout(), Some(t(6)));
        // an urgent crossing is not held back
        assert_eq!(p.record(t(3), Metric::Loss, 50), Urgency::SendNow);
        let u = p.poll_report(t(3)).unwrap();
        assert_eq!(u.body, Body::Delta(alloc::vec![(Metric::Loss, 50)]));
        assert_eq!(p.poll_report(t(6)).unwrap().seq, 0);
        assert_eq!(p.stats().busy, 2);
    }

    #[test]
    fn query_answered_with_a_keyframe_within_the_spread() {
        let mut p = Producer::new(ProducerConfig::default(), t(0), 7);
        p.poll_report(t(0)).unwrap();
        let q = decode_query(&query_json(G, Some(N), 42)).unwrap();
        p.handle_query(t(10), q);
        let at = p.poll_timeout().unwrap();
        assert!(at >= t(10) && at < t(12));
        let r = p.poll_report(at).unwrap();
        assert_eq!(r.reply_to, Some(42));
        assert!(matches!(r.body, Body::Keyframe(_)));
        assert_eq!(decode_query(&query_json(G, None, 9)), Some(Query { id: 9 }));
    }

    #[test]
    fn reboot_and_gaps_seen_by_the_gateway() {
        let mut s = StreamState::default();
        let key = |seq, up| Report {
            seq,
            body: Body::Keyframe([
                Some(up),
                Some(1),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            ]),
            age_s: 0,
            reply_to: None,
            identity: None,
        };
        let hb = |seq| Report {
            seq,
            body: Body::Delta(Vec::new()),
            age_s: 0,
            reply_to: None,
            identity: None,
        };
        assert_eq!(s.apply(t(0), &key(0, 100)), Applied::default());
        assert_eq!(s.apply(t(300), &hb(1)).lost, 0);
        assert_eq!(s.apply(t(1200), &hb(4)).lost, 2);
        assert!(s.apply(t(1200), &hb(4)).stale);
        assert!(s.apply(t(1300), &key(0, 5)).reboot);
        // the sequence wrapping onto a keyframe, the report before it lost: not a reboot
        let mut w = StreamState::default();
        w.apply(t(0), &key(65_533, 50_000));
        let a = w.apply(t(600), &key(0, 50_600));
        assert!(!a.reboot);
        assert_eq!(a.lost, 2);
        // boot keyframe lost: the next keyframe's uptime shows it
        s.apply(t(1600), &hb(1));
        assert!(s.apply(t(1900), &key(7, 20)).reboot);
    }

    #[test]
    fn bad_values_are_dropped_and_counted() {
        let d = decode(r#"{"type":710,"q":3,"k":[1,-5,-60,null,400,1,2,3,0,0,99]}"#).unwrap();
        let Body::Keyframe(v) = d.report.body else {
            panic!()
        };
        assert_eq!(v[1], None); // negative heap
        assert_eq!(v[4], None); // loss 400 %
        assert_eq!(v[2], Some(-60));
        assert_eq!(d.faults, 3); // + an 11th slot
        assert_eq!(
            decode(r#"{"type":710,"k":[1]}"#),
            Err(TelemetryDecodeError::NoSequence)
        );
        let d = decode(r#"{"type":710,"q":1,"d":[1,100,99,4,2,"x"]}"#);
        assert!(d.is_ok());
        assert_eq!(
            decode(r#"{"type":710,"q":1,"d":[1,100,99,4,2,"x"]}"#)
                .unwrap()
                .faults,
            1
        );
    }
}
