//! `GET /metrics`: Prometheus text exposition format 0.0.4.
//!
//! Conventions (ANCHORS.md section 3): base units (seconds, bytes, ratios 0-1), `_total`
//! for counters, `_info` gauges with value 1 for strings, one `node` label on per-node
//! series and never a label per link, message or firmware hash on value metrics. Per node:
//! 14 series at most (9 values + `_info` + 4 health states), under the 25.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::model::Health;
use crate::Shared;

/// Series per node, at most (checked by a test).
pub const SERIES_PER_NODE: usize = 14;

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every metric. `active_alerts` is `None` if the store could not be read.
pub fn render(s: &Shared, active_alerts: Option<usize>) -> String {
    let mut out = String::with_capacity(4096 + s.registry.len() * 1200);
    let c = &s.counters;
    header(
        &mut out,
        "meshfleet_gateway_info",
        "gauge",
        "The gateway's version and node id.",
    );
    let _ = writeln!(
        out,
        "meshfleet_gateway_info{{version=\"{}\",node=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        s.mesh.node_id().0
    );
    for (name, help, v) in [
        (
            "meshfleet_gateway_status_frames_total",
            "Status packages received.",
            &c.status_frames,
        ),
        (
            "meshfleet_gateway_status_accepted_total",
            "Status packages stored.",
            &c.status_accepted,
        ),
        (
            "meshfleet_gateway_status_rejected_total",
            "Status packages dropped as malformed or absurd.",
            &c.status_rejected,
        ),
        (
            "meshfleet_gateway_status_rate_limited_total",
            "Status packages dropped because their node reported too often.",
            &c.status_rate_limited,
        ),
        (
            "meshfleet_gateway_http_errors_total",
            "HTTP requests answered with an error.",
            &c.http_errors,
        ),
        (
            "meshfleet_gateway_event_tickets_issued_total",
            "Event-stream tickets issued (POST /events/ticket).",
            &c.event_tickets_issued,
        ),
        (
            "meshfleet_gateway_event_tickets_redeemed_total",
            "Event streams opened with a ticket.",
            &c.event_tickets_redeemed,
        ),
        (
            "meshfleet_gateway_event_tickets_refused_total",
            "Event-stream tickets refused: unknown, expired or already used.",
            &c.event_tickets_refused,
        ),
    ] {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
    }
    let st = s.stores.status.stats();
    header(
        &mut out,
        "meshfleet_gateway_store_writes_total",
        "counter",
        "Writes committed to the store.",
    );
    let _ = writeln!(out, "meshfleet_gateway_store_writes_total {}", st.written);
    header(
        &mut out,
        "meshfleet_gateway_store_dropped_total",
        "counter",
        "Writes dropped because the store's queue was full.",
    );
    let _ = writeln!(out, "meshfleet_gateway_store_dropped_total {}", st.dropped);
    if let Some(n) = active_alerts {
        header(
            &mut out,
            "meshfleet_gateway_alerts_active",
            "gauge",
            "Alerts not cleared.",
        );
        let _ = writeln!(out, "meshfleet_gateway_alerts_active {n}");
    }
    let nodes = s.registry.all();
    header(
        &mut out,
        "meshfleet_gateway_nodes",
        "gauge",
        "Nodes ever seen, by health.",
    );
    for h in Health::ALL {
        let n = nodes.iter().filter(|n| n.health == h).count();
        let _ = writeln!(
            out,
            "meshfleet_gateway_nodes{{health=\"{}\"}} {n}",
            h.label()
        );
    }

    // Per node, grouped by metric (the format wants one family together).
    type Value = fn(&crate::model::NodeStatus) -> Option<f64>;
    let families: [(&str, &str, &str, Value); 9] = [
        (
            "meshfleet_node_up",
            "gauge",
            "1 if the node is in the mesh now.",
            |n| Some(f64::from(u8::from(n.online))),
        ),
        (
            "meshfleet_node_last_seen_timestamp_seconds",
            "gauge",
            "Last sign of life, Unix time.",
            |n| Some(n.last_seen as f64 / 1000.0),
        ),
        (
            "meshfleet_node_uptime_seconds",
            "gauge",
            "Seconds since the node booted (last report).",
            |n| n.uptime.map(f64::from),
        ),
        (
            "meshfleet_node_free_memory_bytes",
            "gauge",
            "Free heap (last report).",
            |n| n.free_memory.map(f64::from),
        ),
        (
            "meshfleet_node_wifi_quality_ratio",
            "gauge",
            "WiFi quality 0-1 (last report).",
            |n| n.status.as_ref().map(|r| f64::from(r.wifi_quality) / 100.0),
        ),
        (
            "meshfleet_node_latency_seconds",
            "gauge",
            "Average latency the node reports.",
            |n| n.status.as_ref().map(|r| f64::from(r.latency_ms) / 1000.0),
        ),
        (
            "meshfleet_node_packet_loss_ratio",
            "gauge",
            "Packet loss 0-1 the node reports.",
            |n| n.status.as_ref().map(|r| f64::from(r.packet_loss) / 100.0),
        ),
        (
            "meshfleet_node_alert_flags",
            "gauge",
            "The alert flags of the last report (bit field).",
            |n| n.status.as_ref().map(|r| f64::from(r.alert_flags)),
        ),
        (
            "meshfleet_node_status_reports_total",
            "counter",
            "Status reports received from the node.",
            |n| Some(n.reports as f64),
        ),
    ];
    for (name, kind, help, value) in families {
        header(&mut out, name, kind, help);
        for n in &nodes {
            if let Some(v) = value(n) {
                let _ = writeln!(out, "{name}{{node=\"{}\"}} {v}", n.node_id);
            }
        }
    }
    header(
        &mut out,
        "meshfleet_node_health",
        "gauge",
        "1 for the node's health state, 0 for the others.",
    );
    for n in &nodes {
        for h in Health::ALL {
            let _ = writeln!(
                out,
                "meshfleet_node_health{{node=\"{}\",state=\"{}\"}} {}",
                n.node_id,
                h.label(),
                u8::from(n.health == h)
            );
        }
    }
    header(
        &mut out,
        "meshfleet_node_info",
        "gauge",
        "The node's role, hardware and firmware, value 1.",
    );
    for n in &nodes {
        let _ = writeln!(
            out,
            "meshfleet_node_info{{node=\"{}\",role=\"{}\",hardware=\"{}\",firmware=\"{}\"}} 1",
            n.node_id,
            label(n.role.as_deref().unwrap_or("")),
            label(n.hardware.as_deref().unwrap_or("")),
            label(n.firmware.as_deref().unwrap_or(""))
        );
    }
    s.extensions.render_metrics(&mut out);
    out
}
