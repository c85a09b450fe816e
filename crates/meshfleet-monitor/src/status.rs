//! The Alteriom EnhancedStatusPackage (type 604), exactly as the C++ library's code sends it.
//!
//! `../shared/painlessmesh/PROTOCOL.md`, "EnhancedStatusPackage as the library's code produces
//! it (observed)": 19 keys, `from, routing, type` first, then the 16 status keys, all present.
//! It reaches a gateway two ways, both accepted here:
//!
//! 1. as the `msg` string of an ordinary BROADCAST (type 8): what every example does
//!    (`mesh.sendBroadcast(pkg.toJsonString())`);
//! 2. as a top-level plugin package `{"from":..,"routing":2,"type":604,...}`
//!    (`mesh.sendPackage(&pkg)`, what the documentation shows).
//!
//! Either way the caller hands [`decode`] the package's JSON text and trusts the *frame's*
//! `from`: the library's example leaves the package's own `from` uninitialised.
//!
//! Decoding is field by field. A missing key is simply absent (`None`); an unknown key is
//! ignored; a value of the wrong JSON type or out of its range (negative memory, a quality
//! above 100 %, a string beyond its cap) is **dropped and reported** in
//! [`StatusDecode::faults`], never stored: the library's own class would turn it into 0, which
//! a gateway would then read as "no free memory" and raise a false alert.
//!
//! The meanings of some keys differ from the fork's documentation; this module follows the code:
//! `mem` is free heap in KB, `wifi` a 0-100 quality mapped from RSSI -100…-50 dBm, and the
//! alert bits are the code's (see [`AlertFlags`]).

use alloc::string::String;
use core::fmt::{self, Write as _};

use crate::json::{for_each_field, FieldFault, ObjectError, Scalar};
use meshfleet_wire::{Message, MsgText, NodeId, Package, Text};

/// The package type of the EnhancedStatusPackage.
pub const STATUS_TYPE: i64 = 604;

/// Longest status package text accepted, in bytes. The library's package is about 300 bytes
/// with a short firmware string; 2 KiB leaves room for long strings and unknown keys while
/// bounding the work one package can cost.
pub const MAX_STATUS_LEN: usize = 2048;

/// Longest `fw` / `fwMD5` kept, in bytes.
pub const MAX_FIRMWARE_LEN: usize = 64;
/// Longest `lastErr` kept, in bytes.
pub const MAX_LAST_ERROR_LEN: usize = 128;

/// The status package's `alerts` byte.
///
/// Two incompatible meanings exist. The fork's **code** (what nodes really send) sets
/// [`AlertFlags::CODE_LOW_HEAP`] (free heap < 32 KB), [`AlertFlags::CODE_WEAK_WIFI`] (quality
/// < 30 %) and [`AlertFlags::CODE_ISOLATED`] (no other node known). Its **documentation**
/// gives bits 0-7 as low memory (< 10 KB), high latency, packet loss, lost root, OTA failed,
/// sensor error, WiFi < -80 dBm, reboot loop. Bits 0-2 therefore cannot be trusted for either
/// meaning, and the monitor recomputes those conditions from the values; bits 3, 4, 5 and 7
/// exist only in the documented meaning and are taken as the node's own report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AlertFlags(pub u8);

impl AlertFlags {
    /// Code: free heap below 32 KB (documentation: low memory < 10 KB).
    pub const CODE_LOW_HEAP: u8 = 0x01;
    /// Code: WiFi quality below 30 % (documentation: latency > 500 ms).
    pub const CODE_WEAK_WIFI: u8 = 0x02;
    /// Code: the node knows no other node (documentation: packet loss > 10 %).
    pub const CODE_ISOLATED: u8 = 0x04;
    /// Documentation only: lost connection to the root.
    pub const DOC_LOST_ROOT: u8 = 0x08;
    /// Documentation only: the last OTA failed.
    pub const DOC_OTA_FAILED: u8 = 0x10;
    /// Documentation only: a sensor error.
    pub const DOC_SENSOR_ERROR: u8 = 0x20;
    /// Documentation only: WiFi below -80 dBm.
    pub const DOC_WEAK_WIFI: u8 = 0x40;
    /// Documentation only: the node detected a reboot loop.
    pub const DOC_REBOOT_LOOP: u8 = 0x80;

    /// Whether every bit of `mask` is set.
    pub fn has(self, mask: u8) -> bool {
        self.0 & mask == mask
    }
}

/// One status report, typed. Every field is `None` when the key was absent or its value was
/// dropped (see [`StatusDecode::faults`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusReport {
    /// `status`: device status flags (application-defined).
    pub device_status: Option<u8>,
    /// `uptime`: seconds since boot. The library's example computes `millis() / 1000`, which
    /// wraps after 4,294,967 s (49.7 days) without a reboot; the registry tells the two apart.
    pub uptime_s: Option<u32>,
    /// `mem`: free heap, KB.
    pub free_heap_kb: Option<u16>,
    /// `wifi`: link quality 0-100 (RSSI -100 dBm → 0, -50 dBm → 100).
    pub wifi_quality: Option<u8>,
    /// `fw`: firmware version.
    pub firmware: Option<String>,
    /// `fwMD5`: MD5 of the running firmware (a placeholder in the fork's example).
    pub firmware_md5: Option<String>,
    /// `nodes`: other nodes known in the mesh.
    pub nodes: Option<u16>,
    /// `conns`: connections (in practice the node count).
    pub conns: Option<u8>,
    /// `msgRx`: messages received since boot.
    pub msg_rx: Option<u32>,
    /// `msgTx`: messages sent since boot.
    pub msg_tx: Option<u32>,
    /// `msgDrop`: messages dropped since boot.
    pub msg_drop: Option<u32>,
    /// `latency`: average latency, ms (whatever the firmware author measured).
    pub latency_ms: Option<u16>,
    /// `loss`: packet loss, percent.
    pub loss_pct: Option<u8>,
    /// `throughput`: bytes per second.
    pub throughput: Option<u16>,
    /// `alerts`: the node's alert byte.
    pub alerts: Option<AlertFlags>,
    /// `lastErr`: last error text.
    pub last_error: Option<String>,
}

/// The 16 status keys, in the library's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum StatusField {
    /// `status`
    Status,
    /// `uptime`
    Uptime,
    /// `mem`
    Mem,
    /// `wifi`
    Wifi,
    /// `fw`
    Fw,
    /// `fwMD5`
    FwMd5,
    /// `nodes`
    Nodes,
    /// `conns`
    Conns,
    /// `msgRx`
    MsgRx,
    /// `msgTx`
    MsgTx,
    /// `msgDrop`
    MsgDrop,
    /// `latency`
    Latency,
    /// `loss`
    Loss,
    /// `throughput`
    Throughput,
    /// `alerts`
    Alerts,
    /// `lastErr`
    LastErr,
}

impl StatusField {
    /// The JSON key.
    pub fn key(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Uptime => "uptime",
            Self::Mem => "mem",
            Self::Wifi => "wifi",
            Self::Fw => "fw",
            Self::FwMd5 => "fwMD5",
            Self::Nodes => "nodes",
            Self::Conns => "conns",
            Self::MsgRx => "msgRx",
            Self::MsgTx => "msgTx",
            Self::MsgDrop => "msgDrop",
            Self::Latency => "latency",
            Self::Loss => "loss",
            Self::Throughput => "throughput",
            Self::Alerts => "alerts",
            Self::LastErr => "lastErr",
        }
    }

    fn from_key(k: &str) -> Option<Self> {
        Some(match k {
            "status" => Self::Status,
            "uptime" => Self::Uptime,
            "mem" => Self::Mem,
            "wifi" => Self::Wifi,
            "fw" => Self::Fw,
            "fwMD5" => Self::FwMd5,
            "nodes" => Self::Nodes,
            "conns" => Self::Conns,
            "msgRx" => Self::MsgRx,
            "msgTx" => Self::MsgTx,
            "msgDrop" => Self::MsgDrop,
            "latency" => Self::Latency,
            "loss" => Self::Loss,
            "throughput" => Self::Throughput,
            "alerts" => Self::Alerts,
            "lastErr" => Self::LastErr,
            _ => return None,
        })
    }
}

/// A field that was dropped, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusFault {
    /// The field.
    pub field: StatusField,
    /// Why it was dropped.
    pub fault: FieldFault,
}

/// A decoded status package: the report, and the fields that were dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusDecode {
    /// The report (dropped fields are `None`).
    pub report: StatusReport,
    /// Fields dropped for a wrong type, a value out of range or an overlong string (at most
    /// one entry per field; a duplicate key's last value wins, as in the library).
    pub faults: alloc::vec::Vec<StatusFault>,
    /// Keys that are not status keys (and not `from`/`routing`/`type`/`dest`): tolerated.
    pub unknown_keys: u32,
}

/// Why a text is not a usable status package. The package is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusDecodeError {
    /// Longer than [`MAX_STATUS_LEN`]; not parsed at all.
    TooLarge,
    /// Not valid JSON.
    Json,
    /// JSON but not an object.
    NotObject,
    /// An object whose `type` is not 604 (or absent): not a status package. Not a fault:
    /// ordinary application broadcasts arrive this way.
    NotStatus,
    /// A 604 package in which not a single status key survived.
    Empty,
}

impl fmt::Display for StatusDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooLarge => "status package larger than 2 KiB",
            Self::Json => "status package is not valid JSON",
            Self::NotObject => "status package is not a JSON object",
            Self::NotStatus => "not a type 604 package",
            Self::Empty => "type 604 package without one usable status field",
        })
    }
}

/// Decodes a status package's JSON text (the `msg` of a BROADCAST, or a top-level package).
pub fn decode(text: &str) -> Result<StatusDecode, StatusDecodeError> {
    if text.len() > MAX_STATUS_LEN {
        return Err(StatusDecodeError::TooLarge);
    }
    // Cheap pre-filter: most application broadcasts are not status packages; a 604 always
    // spells its number somewhere (as an integer or, converted by ArduinoJson, a string).
    if !text.contains("604") {
        return Err(StatusDecodeError::NotStatus);
    }
    let mut out = StatusDecode::default();
    let mut ty: Option<i64> = None;
    let mut present = 0u32;
    let r = for_each_field(text, |k, v| {
        if k == "type" {
            ty = match &v {
                Scalar::Str(s) => s.trim().parse::<i64>().ok(),
                v => v.int_in(i64::MIN, i64::MAX).ok(),
            };
            return;
        }
        let Some(field) = StatusField::from_key(k) else {
            if !matches!(k, "from" | "routing" | "dest") {
                out.unknown_keys = out.unknown_keys.saturating_add(1);
            }
            return;
        };
        out.faults.retain(|f| f.field != field);
        match store(&mut out.report, field, &v) {
            Ok(()) => present |= 1 << field as u32,
            Err(fault) => {
                clear(&mut out.report, field);
                present &= !(1 << field as u32);
                out.faults.push(StatusFault { field, fault });
            }
        }
    });
    match r {
        Err(ObjectError::Json) => return Err(StatusDecodeError::Json),
        Err(ObjectError::NotObject) => return Err(StatusDecodeError::NotObject),
        Ok(()) => {}
    }
    if ty != Some(STATUS_TYPE) {
        return Err(StatusDecodeError::NotStatus);
    }
    if present == 0 {
        return Err(StatusDecodeError::Empty);
    }
    Ok(out)
}

fn int<T: TryFrom<i64>>(v: &Scalar<'_>, lo: i64, hi: i64) -> Result<Option<T>, FieldFault> {
    let x = v.int_in(lo, hi)?;
    T::try_from(x).map(Some).map_err(|_| FieldFault::OutOfRange)
}

fn store(r: &mut StatusReport, field: StatusField, v: &Scalar<'_>) -> Result<(), FieldFault> {
    use StatusField as F;
    const U8: i64 = u8::MAX as i64;
    const U16: i64 = u16::MAX as i64;
    const U32: i64 = u32::MAX as i64;
    match field {
        F::Status => r.device_status = int(v, 0, U8)?,
        F::Uptime => r.uptime_s = int(v, 0, U32)?,
        F::Mem => r.free_heap_kb = int(v, 0, U16)?,
        F::Wifi => r.wifi_quality = int(v, 0, 100)?,
        F::Fw => r.firmware = Some(v.str_max(MAX_FIRMWARE_LEN)?.into()),
        F::FwMd5 => r.firmware_md5 = Some(v.str_max(MAX_FIRMWARE_LEN)?.into()),
        F::Nodes => r.nodes = int(v, 0, U16)?,
        F::Conns => r.conns = int(v, 0, U8)?,
        F::MsgRx => r.msg_rx = int(v, 0, U32)?,
        F::MsgTx => r.msg_tx = int(v, 0, U32)?,
        F::MsgDrop => r.msg_drop = int(v, 0, U32)?,
        F::Latency => r.latency_ms = int(v, 0, U16)?,
        F::Loss => r.loss_pct = int(v, 0, 100)?,
        F::Throughput => r.throughput = int(v, 0, U16)?,
        F::Alerts => r.alerts = int::<u8>(v, 0, U8)?.map(AlertFlags),
        F::LastErr => r.last_error = Some(v.str_max(MAX_LAST_ERROR_LEN)?.into()),
    }
    Ok(())
}

fn clear(r: &mut StatusReport, field: StatusField) {
    use StatusField as F;
    match field {
        F::Status => r.device_status = None,
        F::Uptime => r.uptime_s = None,
        F::Mem => r.free_heap_kb = None,
        F::Wifi => r.wifi_quality = None,
        F::Fw => r.firmware = None,
        F::FwMd5 => r.firmware_md5 = None,
        F::Nodes => r.nodes = None,
        F::Conns => r.conns = None,
        F::MsgRx => r.msg_rx = None,
        F::MsgTx => r.msg_tx = None,
        F::MsgDrop => r.msg_drop = None,
        F::Latency => r.latency_ms = None,
        F::Loss => r.loss_pct = None,
        F::Throughput => r.throughput = None,
        F::Alerts => r.alerts = None,
        F::LastErr => r.last_error = None,
    }
}

/// RSSI in dBm to the library's 0-100 quality (-100 dBm or less → 0, -50 or more → 100).
pub fn quality_from_rssi(rssi_dbm: i32) -> u8 {
    (2 * (rssi_dbm.clamp(-100, -50) + 100)) as u8
}

/// The library's 0-100 quality back to RSSI in dBm (the middle of its 0.5 dBm step).
pub fn rssi_from_quality(quality: u8) -> i32 {
    i32::from(quality.min(100)) / 2 - 100
}

impl StatusReport {
    /// The package's JSON text, byte for byte as the library's `toJsonString()` writes it:
    /// `from, routing, type` then all 16 keys in its order. An absent number is written as
    /// 0 and an absent string as `""` (the library's fields always have a value), except
    /// `mem` and `wifi`: a node that does not measure them (a Linux node has no heap figure
    /// of an ESP's kind and maybe no WiFi) leaves the key out. A monitor would read a 0 there
    /// as "no free memory, no signal" and raise alerts for a healthy node; ArduinoJson reads
    /// a missing key as 0, so a stock receiver sees what it saw before.
    pub fn to_json(&self, from: NodeId) -> String {
        let mut s = String::with_capacity(320);
        let n = |v: Option<u32>| v.unwrap_or(0);
        // Writing into a String cannot fail.
        let _ = write!(
            s,
            "{{\"from\":{},\"routing\":2,\"type\":{},\"status\":{},\"uptime\":{}",
            from.0,
            STATUS_TYPE,
            n(self.device_status.map(u32::from)),
            n(self.uptime_s),
        );
        if let Some(mem) = self.free_heap_kb {
            let _ = write!(s, ",\"mem\":{mem}");
        }
        if let Some(wifi) = self.wifi_quality {
            let _ = write!(s, ",\"wifi\":{wifi}");
        }
        s.push_str(",\"fw\":");
        json_str(&mut s, self.firmware.as_deref().unwrap_or(""));
        s.push_str(",\"fwMD5\":");
        json_str(&mut s, self.firmware_md5.as_deref().unwrap_or(""));
        let _ = write!(
            s,
            ",\"nodes\":{},\"conns\":{},\"msgRx\":{},\"msgTx\":{},\"msgDrop\":{},\"latency\":{},\"loss\":{},\"throughput\":{},\"alerts\":{},\"lastErr\":",
            n(self.nodes.map(u32::from)),
            n(self.conns.map(u32::from)),
            n(self.msg_rx),
            n(self.msg_tx),
            n(self.msg_drop),
            n(self.latency_ms.map(u32::from)),
            n(self.loss_pct.map(u32::from)),
            n(self.throughput.map(u32::from)),
            n(self.alerts.map(|a| u32::from(a.0))),
        );
        json_str(&mut s, self.last_error.as_deref().unwrap_or(""));
        s.push('}');
        s
    }

    /// The BROADCAST (type 8) carrying the package as its `msg`: how every example of the
    /// library sends it, and what stock example receivers can see.
    pub fn to_broadcast(&self, from: NodeId) -> Message {
        Message::Broadcast(Text {
            dest: NodeId(0),
            from,
            msg: MsgText::Text(self.to_json(from)),
            extra: alloc::vec::Vec::new(),
        })
    }

    /// The top-level package form (`mesh.sendPackage`), routed BROADCAST by its
    /// `"routing":2`.
    pub fn to_package(&self, from: NodeId) -> Message {
        // Our own text always has an integer `type`, so the header always reads back.
        match Package::from_text(self.to_json(from)) {
            Ok(p) => Message::Package(p),
            Err(_) => self.to_broadcast(from),
        }
    }
}

/// Appends `v` as a JSON string (escapes as the library does: `"`, `\`, control chars;
/// non-ASCII raw).
pub(crate) fn json_str(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The package text exactly as the library produced it (PROTOCOL.md, observed).
    pub(crate) const CAPTURED: &str = r#"{"from":1001,"routing":2,"type":604,"status":1,"uptime":1,"mem":128,"wifi":80,"fw":"1.0.0-phase1","fwMD5":"abc123def456","nodes":2,"conns":2,"msgRx":0,"msgTx":1,"msgDrop":1,"latency":50,"loss":1,"throughput":512,"alerts":0,"lastErr":""}"#;

    #[test]
    fn captured_frame_decodes_every_field() {
        let d = decode(CAPTURED).unwrap();
        assert!(d.faults.is_empty());
        assert_eq!(d.unknown_keys, 0);
        let r = d.report;
        assert_eq!(r.device_status, Some(1));
        assert_eq!(r.uptime_s, Some(1));
        assert_eq!(r.free_heap_kb, Some(128));
        assert_eq!(r.wifi_quality, Some(80));
        assert_eq!(r.firmware.as_deref(), Some("1.0.0-phase1"));
        assert_eq!(r.firmware_md5.as_deref(), Some("abc123def456"));
        assert_eq!((r.nodes, r.conns), (Some(2), Some(2)));
        assert_eq!(
            (r.msg_rx, r.msg_tx, r.msg_drop),
            (Some(0), Some(1), Some(1))
        );
        assert_eq!(r.latency_ms, Some(50));
        assert_eq!(r.loss_pct, Some(1));
        assert_eq!(r.throughput, Some(512));
        assert_eq!(r.alerts, Some(AlertFlags(0)));
        assert_eq!(r.last_error.as_deref(), Some(""));
    }

    #[test]
    fn encoder_reproduces_the_captured_bytes() {
        let r = decode(CAPTURED).unwrap().report;
        assert_eq!(r.to_json(NodeId(1001)), CAPTURED);
    }

    #[test]
    fn unmeasured_memory_and_signal_stay_unknown() {
        let mut r = decode(CAPTURED).unwrap().report;
        r.free_heap_kb = None;
        r.wifi_quality = None;
        let text = r.to_json(NodeId(1001));
        assert!(
            !text.contains("\"mem\"") && !text.contains("\"wifi\""),
            "{text}"
        );
        let d = decode(&text).unwrap();
        assert!(d.faults.is_empty());
        assert_eq!((d.report.free_heap_kb, d.report.wifi_quality), (None, None));
        assert_eq!(d.report.firmware.as_deref(), Some("1.0.0-phase1"));
    }

    #[test]
    fn wrong_types_and_absurd_values_are_dropped_not_stored() {
        let t = r#"{"type":604,"mem":-5,"uptime":"12","wifi":180,"loss":3.5,"fw":7,"nodes":70000,"latency":40,"extra":{"a":[1,2]},"lastErr":"x"}"#;
        let d = decode(t).unwrap();
        assert_eq!(d.report.free_heap_kb, None);
        assert_eq!(d.report.uptime_s, None);
        assert_eq!(d.report.wifi_quality, None);
        assert_eq!(d.report.loss_pct, None);
        assert_eq!(d.report.firmware, None);
        assert_eq!(d.report.nodes, None);
        assert_eq!(d.report.latency_ms, Some(40));
        assert_eq!(d.unknown_keys, 1);
        let f = |field| d.faults.iter().find(|f| f.field == field).map(|f| f.fault);
        assert_eq!(f(StatusField::Mem), Some(FieldFault::OutOfRange));
        assert_eq!(f(StatusField::Uptime), Some(FieldFault::WrongType));
        assert_eq!(f(StatusField::Wifi), Some(FieldFault::OutOfRange));
        assert_eq!(f(StatusField::Loss), Some(FieldFault::WrongType));
        assert_eq!(f(StatusField::Fw), Some(FieldFault::WrongType));
        assert_eq!(f(StatusField::Nodes), Some(FieldFault::OutOfRange));
        assert_eq!(d.faults.len(), 6);
    }

    #[test]
    fn duplicate_key_last_wins_and_forgets_an_earlier_fault() {
        let d = decode(r#"{"type":604,"mem":-1,"mem":40}"#).unwrap();
        assert_eq!(d.report.free_heap_kb, Some(40));
        assert!(d.faults.is_empty());
        let d = decode(r#"{"type":604,"mem":40,"mem":-1,"uptime":3}"#).unwrap();
        assert_eq!(d.report.free_heap_kb, None);
        assert_eq!(d.faults.len(), 1);
    }

    #[test]
    fn not_a_status_package() {
        assert_eq!(decode("hello 604"), Err(StatusDecodeError::Json));
        assert_eq!(
            decode(r#"{"type":605,"mem":604}"#),
            Err(StatusDecodeError::NotStatus)
        );
        assert_eq!(decode("[604]"), Err(StatusDecodeError::NotObject));
        assert_eq!(
            decode(r#"{"type":604,"mem":-1}"#),
            Err(StatusDecodeError::Empty)
        );
        assert_eq!(
            decode(r#"{"type":"604","mem":1}"#).map(|d| d.report.free_heap_kb),
            Ok(Some(1))
        );
        let big = alloc::format!(
            r#"{{"type":604,"lastErr":"{}"}}"#,
            "a".repeat(MAX_STATUS_LEN)
        );
        assert_eq!(decode(&big), Err(StatusDecodeError::TooLarge));
    }

    #[test]
    fn rssi_quality_mapping_matches_the_library() {
        assert_eq!(quality_from_rssi(-100), 0);
        assert_eq!(quality_from_rssi(-50), 100);
        assert_eq!(quality_from_rssi(-80), 40);
        assert_eq!(quality_from_rssi(-30), 100);
        assert_eq!(rssi_from_quality(40), -80);
    }
}
