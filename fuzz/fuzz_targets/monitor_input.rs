//! The gateway's monitoring core on arbitrary peer input: the bytes are read as a sequence
//! of operations (a package of some type from some node with some text, an application
//! message, a topology, a delay answer, an OTA verdict, a query, time passing), each text
//! also given straight to the 604/710/711 decoders.
//!
//! Invariants: no panic; whatever decodes re-encodes (with the crate's encoders) to text that
//! decodes to the same value; the registry never holds more than `max_nodes` nodes, nor more
//! than `max_unconfirmed` nodes never seen in the topology; the event queue stays within
//! `max_events`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshfleet_monitor::status::{self, StatusReport};
use meshfleet_monitor::telemetry;
use meshfleet_monitor::{
    Duration, Instant, Monitor, MonitorConfig, NodeId, NodeQuery, QueryTarget,
};
use meshfleet_wire::NodeTree;

const GATEWAY: NodeId = NodeId(1);

/// Reads the input front to back; every read past the end yields zeros / empty.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// A node id: mostly from a small set so reports, topology and probes meet the same
    /// nodes (and the gateway itself, and node 0), sometimes any 32-bit id.
    fn node(&mut self) -> NodeId {
        match self.byte() {
            b @ 0..=239 => NodeId(u32::from(b % 24)),
            _ => NodeId(self.u32()),
        }
    }

    /// A text: a length byte then that many bytes (lossy UTF-8), or, with length 255, the
    /// rest of the input up to a NUL (long texts: the size limits).
    fn text(&mut self) -> String {
        let n = usize::from(self.byte());
        let take = if n == 255 {
            self.0.iter().position(|b| *b == 0).unwrap_or(self.0.len())
        } else {
            n.min(self.0.len())
        };
        let (t, rest) = self.0.split_at(take);
        self.0 = rest.get(usize::from(n == 255)..).unwrap_or(&[]);
        String::from_utf8_lossy(t).into_owned()
    }

    /// A tree below the gateway: preorder, each node's id then its number of children
    /// (bounded so a short input cannot describe a huge tree).
    fn tree(&mut self, budget: &mut u32, depth: u32) -> NodeTree {
        let mut t = NodeTree::leaf(self.node());
        let b = self.byte();
        t.root = b & 0x80 != 0;
        let kids = if depth >= 12 { 0 } else { u32::from(b & 0x07) };
        for _ in 0..kids {
            if *budget == 0 || self.0.is_empty() {
                break;
            }
            *budget -= 1;
            t.subs.push(self.tree(budget, depth + 1));
        }
        t
    }
}

/// A decoded status report with its absent fields as `to_json` writes them (0 or "";
/// `mem` and `wifi` are left out, so they stay absent).
fn filled(r: &StatusReport) -> StatusReport {
    StatusReport {
        device_status: Some(r.device_status.unwrap_or(0)),
        uptime_s: Some(r.uptime_s.unwrap_or(0)),
        free_heap_kb: r.free_heap_kb,
        wifi_quality: r.wifi_quality,
        firmware: Some(r.firmware.clone().unwrap_or_default()),
        firmware_md5: Some(r.firmware_md5.clone().unwrap_or_default()),
        nodes: Some(r.nodes.unwrap_or(0)),
        conns: Some(r.conns.unwrap_or(0)),
        msg_rx: Some(r.msg_rx.unwrap_or(0)),
        msg_tx: Some(r.msg_tx.unwrap_or(0)),
        msg_drop: Some(r.msg_drop.unwrap_or(0)),
        latency_ms: Some(r.latency_ms.unwrap_or(0)),
        loss_pct: Some(r.loss_pct.unwrap_or(0)),
        throughput: Some(r.throughput.unwrap_or(0)),
        alerts: Some(r.alerts.unwrap_or_default()),
        last_error: Some(r.last_error.clone().unwrap_or_default()),
    }
}

/// Every decoder on `text`; whatever decodes must survive a round trip.
fn round_trips(text: &str, from: NodeId) {
    if let Ok(d) = status::decode(text) {
        let again = status::decode(&d.report.to_json(from)).expect("our 604 text decodes");
        assert!(again.faults.is_empty(), "our 604 text has no faults");
        assert_eq!(again.report, filled(&d.report), "604 round trip");
    }
    if let Ok(d) = telemetry::decode(text) {
        let again =
            telemetry::decode(&d.report.to_json(from, GATEWAY)).expect("our 710 text decodes");
        assert_eq!(again.faults, 0, "our 710 text has no faults");
        assert_eq!(again.report, d.report, "710 round trip");
    }
    if let Some(q) = telemetry::decode_query(text) {
        for dest in [None, Some(from)] {
            let again = telemetry::decode_query(&telemetry::query_json(GATEWAY, dest, q.id));
            assert_eq!(again, Some(q), "711 round trip");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    // Small caps so that eviction and refusal are reached by short inputs.
    let cfg = MonitorConfig {
        max_nodes: 12,
        max_unconfirmed: 5,
        max_events: 64,
        max_queries: 3,
        min_report_gap_ms: 100,
        ..MonitorConfig::default()
    };
    let mut mon = Monitor::new(cfg.clone(), GATEWAY);
    let mut now = Instant::ZERO;
    let mut ops = 0;
    while !input.0.is_empty() && ops < 512 {
        ops += 1;
        let op = input.byte();
        // Virtual time moves by the input: the low bits a few ms, op 7 much further.
        now = now + Duration::from_millis(u64::from(op >> 4) * 37);
        match op % 8 {
            0 => {
                let ty = match input.byte() % 5 {
                    0 => status::STATUS_TYPE,
                    1 | 2 => telemetry::TELEMETRY_TYPE,
                    3 => telemetry::QUERY_TYPE,
                    _ => i64::from(input.u32() as i32),
                };
                let from = input.node();
                let text = input.text();
                round_trips(&text, from);
                mon.handle_package(now, ty, from, &text);
            }
            1 => {
                let from = input.node();
                let text = input.text();
                round_trips(&text, from);
                mon.handle_app_message(now, from, &text);
            }
            2 => {
                let mut budget = 40;
                let mut top = NodeTree::leaf(GATEWAY);
                for _ in 0..(input.byte() % 5) {
                    top.subs.push(input.tree(&mut budget, 1));
                }
                mon.handle_topology(now, &top);
            }
            3 => {
                let node = input.node();
                let delay = input.u32() as i32;
                mon.handle_delay(now, node, delay);
            }
            4 => {
                let node = input.node();
                let ok = input.byte() & 1 == 0;
                mon.handle_ota_result(now, node, ok);
            }
            5 => {
                let target = match input.byte() {
                    0..=127 => QueryTarget::All,
                    _ => QueryTarget::Node(input.node()),
                };
                let _ = mon.start_query(now, target);
            }
            6 => match input.byte() % 3 {
                0 => {
                    let node = input.node();
                    mon.forget(now, node);
                }
                1 => {
                    mon.acknowledge(u64::from(input.byte()));
                }
                _ => {
                    let page = mon.nodes(&NodeQuery::default());
                    assert!(page.total <= cfg.max_nodes);
                }
            },
            _ => {
                // Time passes: up to ~18 hours in one step, in steps of ~4.5 minutes.
                let s = u64::from(input.byte()) * u64::from(input.byte() % 4 + 1) * 67;
                now = now + Duration::from_secs(s);
            }
        }
        if let Some(t) = mon.poll_timeout() {
            if t <= now {
                mon.handle_timeout(now);
            }
        }
        assert!(mon.len() <= cfg.max_nodes, "registry above max_nodes");
        let unconfirmed = mon
            .nodes(&NodeQuery {
                limit: 1_000,
                ..NodeQuery::default()
            })
            .items
            .iter()
            .filter(|r| !r.confirmed)
            .count();
        assert!(
            unconfirmed <= cfg.max_unconfirmed,
            "registry above max_unconfirmed"
        );
        assert!(
            mon.node(GATEWAY).is_none(),
            "the gateway is not in its registry"
        );
        assert!(
            mon.node(NodeId(0)).is_none(),
            "node 0 is not in the registry"
        );
        // Drain now and then, so the event cap is reached too.
        if op & 0x08 != 0 {
            let mut events = 0;
            while mon.poll_event().is_some() {
                events += 1;
            }
            assert!(events <= cfg.max_events, "event queue above max_events");
            while mon.poll_transmit().is_some() {}
        }
    }
});
