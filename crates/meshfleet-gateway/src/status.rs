//! The Alteriom EnhancedStatusPackage (type 604), as the C++ library's code sends it
//! (`../shared/painlessmesh/PROTOCOL.md`, "EnhancedStatusPackage as the library's code
//! produces it"), and the mesh plugin that catches it when it travels as a top-level package.
//!
//! It arrives two ways, and both are accepted: as the `msg` text of an ordinary BROADCAST
//! (what every example does) and as a top-level frame with `"type":604` (what the
//! documentation shows; [`StatusPlugin`] claims those).
//!
//! Unknown keys are ignored. A known key with the wrong type or an absurd value rejects the
//! whole package ([`StatusError`]): it is counted and dropped, never stored. The sender is
//! the *frame's* `from`; the package's own `from` is uninitialised in the library's example.
//!
//! The fleet monitor ([`meshfleet_monitor::Monitor`]) decides whether a package is accepted
//! (decoding, plausibility, flood limits) and computes health and alerts; this decoder only
//! turns an accepted package into the [`StatusReport`] the API shows whole and the history
//! stores.

use meshfleet_mesh::{Ctx, LinkId, Plugin, PluginEvent};
use meshfleet_wire::{NodeId, Package, Routing};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The package type.
pub const STATUS_TYPE: i64 = 604;

/// Largest status package accepted, bytes (the library's are ~300).
pub const MAX_STATUS_LEN: usize = 4096;

/// Longest string field accepted (firmware version, MD5, last error), bytes.
pub const MAX_STATUS_TEXT: usize = 128;

/// The plugin's name in [`meshfleet_runtime::RuntimeEvent::Plugin`] events.
pub const STATUS_PLUGIN: &str = "gateway-status";

/// One decoded status report (field names as the library's JSON keys, spelled out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// Device status flags (`status`).
    pub device_status: u8,
    /// Seconds since boot (`uptime`).
    pub uptime: u32,
    /// Free heap in KiB (`mem`).
    pub free_memory_kb: u16,
    /// WiFi quality, 0-100 % (`wifi`; the library maps RSSI -100..-50 dBm onto it).
    pub wifi_quality: u8,
    /// Firmware version (`fw`).
    pub firmware: String,
    /// MD5 of the running firmware as the node reports it (`fwMD5`).
    pub firmware_md5: String,
    /// Nodes known to the sender (`nodes`).
    pub node_count: u16,
    /// Connections (`conns`).
    pub connections: u8,
    /// Messages received (`msgRx`).
    pub messages_received: u32,
    /// Messages sent (`msgTx`).
    pub messages_sent: u32,
    /// Messages dropped (`msgDrop`).
    pub messages_dropped: u32,
    /// Average latency, ms (`latency`).
    pub latency_ms: u16,
    /// Packet loss, % (`loss`).
    pub packet_loss: u8,
    /// Throughput, bytes/s (`throughput`).
    pub throughput: u16,
    /// Alert flags (`alerts`).
    pub alert_flags: u8,
    /// Last error text (`lastErr`).
    pub last_error: String,
}

/// Why a status package was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// Longer than [`MAX_STATUS_LEN`].
    #[error("status package of {0} bytes exceeds the {MAX_STATUS_LEN}-byte limit")]
    TooLong(usize),
    /// Not a JSON object.
    #[error("not a JSON object")]
    NotAnObject,
    /// `type` is not 604.
    #[error("not a status package (type {0:?})")]
    WrongType(Option<i64>),
    /// A known key holds the wrong type or an out-of-range value.
    #[error("key `{0}` has a wrong type or an out-of-range value")]
    BadField(&'static str),
}

/// Whether `text` could be a status package, cheaply (before parsing it).
pub fn looks_like_status(text: &str) -> bool {
    text.starts_with('{') && text.contains("604")
}

/// Decodes a status package's JSON text.
pub fn decode(text: &str) -> Result<StatusReport, StatusError> {
    if text.len() > MAX_STATUS_LEN {
        return Err(StatusError::TooLong(text.len()));
    }
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return Err(StatusError::NotAnObject);
    };
    let ty = map.get("type").and_then(Value::as_i64);
    if ty != Some(STATUS_TYPE) {
        return Err(StatusError::WrongType(ty));
    }
    let f = Fields(&map);
    Ok(StatusReport {
        device_status: f.uint("status", 255)? as u8,
        uptime: f.uint("uptime", u64::from(u32::MAX))? as u32,
        free_memory_kb: f.uint("mem", u64::from(u16::MAX))? as u16,
        wifi_quality: f.uint("wifi", 100)? as u8,
        firmware: f.text("fw")?,
        firmware_md5: f.text("fwMD5")?,
        node_count: f.uint("nodes", u64::from(u16::MAX))? as u16,
        connections: f.uint("conns", 255)? as u8,
        messages_received: f.uint("msgRx", u64::from(u32::MAX))? as u32,
        messages_sent: f.uint("msgTx", u64::from(u32::MAX))? as u32,
        messages_dropped: f.uint("msgDrop", u64::from(u32::MAX))? as u32,
        latency_ms: f.uint("latency", u64::from(u16::MAX))? as u16,
        packet_loss: f.uint("loss", 100)? as u8,
        throughput: f.uint("throughput", u64::from(u16::MAX))? as u16,
        alert_flags: f.uint("alerts", 255)? as u8,
        last_error: f.text("lastErr")?,
    })
}

/// Typed access to the package's keys: missing keys read as 0 or "" (as the library's
/// class does), present ones must have the right type and range.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn uint(&self, key: &'static str, max: u64) -> Result<u64, StatusError> {
        match self.0.get(key) {
            None => Ok(0),
            Some(v) => v
                .as_u64()
                .filter(|n| *n <= max)
                .ok_or(StatusError::BadField(key)),
        }
    }

    fn text(&self, key: &'static str) -> Result<String, StatusError> {
        match self.0.get(key) {
            None => Ok(String::new()),
            Some(Value::String(s)) if s.len() <= MAX_STATUS_TEXT => Ok(s.clone()),
            Some(_) => Err(StatusError::BadField(key)),
        }
    }
}

/// The meshfleet telemetry package type (`meshfleet_monitor::telemetry`).
pub const TELEMETRY_TYPE: i64 = meshfleet_monitor::telemetry::TELEMETRY_TYPE;

/// A monitoring package (status 604 or telemetry 710) that arrived as a top-level frame, as
/// the plugin reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusFrame {
    /// The package type.
    pub ty: i64,
    /// The frame's sender.
    pub from: NodeId,
    /// The package's JSON text.
    pub text: String,
}

impl PluginEvent for StatusFrame {
    fn to_json(&self) -> Value {
        serde_json::json!({ "type": self.ty, "from": self.from.0, "text": self.text })
    }
}

/// Claims top-level type-604 and 710 packages (the node has already flooded broadcasts on) and
/// reports them as [`StatusFrame`] events; decoding happens in the gateway, off the node's
/// task.
#[derive(Debug, Default)]
pub struct StatusPlugin;

impl Plugin for StatusPlugin {
    fn name(&self) -> &'static str {
        STATUS_PLUGIN
    }

    fn claims(&self) -> meshfleet_mesh::Claims {
        meshfleet_mesh::Claims::none()
            .ty(STATUS_TYPE)
            .ty(TELEMETRY_TYPE)
    }

    fn handle_package(
        &mut self,
        ctx: &mut Ctx<'_>,
        _link: LinkId,
        _routing: Routing,
        pkg: &Package,
    ) {
        if pkg.text().len() <= MAX_STATUS_LEN {
            ctx.emit(Box::new(StatusFrame {
                ty: pkg.ty(),
                from: pkg.from(),
                text: pkg.text().to_owned(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The package exactly as the library produced it (PROTOCOL.md).
    const CAPTURED: &str = r#"{"from":1001,"routing":2,"type":604,"status":1,"uptime":1,"mem":128,"wifi":80,"fw":"1.0.0-phase1","fwMD5":"abc123def456","nodes":2,"conns":2,"msgRx":0,"msgTx":1,"msgDrop":1,"latency":50,"loss":1,"throughput":512,"alerts":0,"lastErr":""}"#;

    #[test]
    fn decodes_the_captured_package() {
        let r = decode(CAPTURED).expect("decodes");
        assert_eq!(r.device_status, 1);
        assert_eq!(r.free_memory_kb, 128);
        assert_eq!(r.wifi_quality, 80);
        assert_eq!(r.firmware, "1.0.0-phase1");
        assert_eq!(r.node_count, 2);
        assert_eq!(r.messages_dropped, 1);
        assert_eq!(r.throughput, 512);
    }

    #[test]
    fn rejects_bad_input() {
        let cases: &[(&str, StatusError)] = &[
            ("[1]", StatusError::NotAnObject),
            ("{", StatusError::NotAnObject),
            (r#"{"type":8}"#, StatusError::WrongType(Some(8))),
            (r#"{"type":604,"mem":-1}"#, StatusError::BadField("mem")),
            (r#"{"type":604,"mem":70000}"#, StatusError::BadField("mem")),
            (r#"{"type":604,"loss":101}"#, StatusError::BadField("loss")),
            (r#"{"type":604,"fw":7}"#, StatusError::BadField("fw")),
            (
                r#"{"type":604,"uptime":"12"}"#,
                StatusError::BadField("uptime"),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(decode(text).as_ref(), Err(want), "{text}");
        }
        let long = format!(
            r#"{{"type":604,"lastErr":"{}"}}"#,
            "x".repeat(MAX_STATUS_LEN)
        );
        assert!(matches!(decode(&long), Err(StatusError::TooLong(_))));
    }

    #[test]
    fn tolerates_unknown_and_missing_keys() {
        let r = decode(r#"{"type":604,"uptime":5,"extra":{"a":1}}"#).expect("decodes");
        assert_eq!(r.uptime, 5);
        assert_eq!(r.firmware, "");
    }
}
