//! The issue's bad-input table: each row is counted, dropped, bounded, and leaves every other
//! node exactly as it was.
#![allow(missing_docs, clippy::unwrap_used)]

use meshfleet_monitor::status::{AlertFlags, StatusDecodeError, StatusReport, MAX_STATUS_LEN};
use meshfleet_monitor::telemetry::TelemetryDecodeError;
use meshfleet_monitor::{
    AlertKind, DropReason, Health, Ingest, Monitor, MonitorConfig, NodeRecord,
};
use meshfleet_monitor::{Instant, NodeId};
use meshfleet_wire::{Message, MsgText, NodeTree, Text};

const GW: NodeId = NodeId(1);
const REAL: NodeId = NodeId(500);

fn t(ms: u64) -> Instant {
    Instant::from_micros(ms * 1_000)
}

fn report(uptime: u32, mem: u16) -> StatusReport {
    StatusReport {
        uptime_s: Some(uptime),
        free_heap_kb: Some(mem),
        wifi_quality: Some(70),
        firmware: Some("1.0.0".into()),
        msg_tx: Some(10),
        latency_ms: Some(40),
        loss_pct: Some(0),
        alerts: Some(AlertFlags(0)),
        ..StatusReport::default()
    }
}

fn broadcast(from: NodeId, msg: &str) -> Message {
    Message::Broadcast(Text {
        dest: NodeId(0),
        from,
        msg: MsgText::Text(msg.into()),
        extra: Vec::new(),
    })
}

/// A monitor with one healthy real node (in the topology, reporting).
fn setup() -> (Monitor, NodeRecord) {
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    let mut g = NodeTree::leaf(GW);
    g.subs.push(NodeTree::leaf(REAL));
    m.handle_topology(t(0), &g);
    assert_eq!(
        m.handle_frame(t(0), &report(1000, 40).to_broadcast(REAL)),
        Ingest::Accepted
    );
    let rec = m.node(REAL).unwrap().clone();
    (m, rec)
}

fn unaffected(m: &Monitor, before: &NodeRecord) {
    assert_eq!(m.node(REAL), Some(before), "the real node changed");
    assert_eq!(
        m.alerts()
            .filter(|a| a.key.subject == meshfleet_monitor::Subject::Node(REAL))
            .count(),
        0
    );
}

#[test]
fn malformed_status_packages() {
    let (mut m, before) = setup();
    let cases: [(&str, DropReason); 4] = [
        (
            r#"{"type":604,"mem":4"#,
            DropReason::Status(StatusDecodeError::Json),
        ),
        (
            r#"{"type":604 "mem":4}"#,
            DropReason::Status(StatusDecodeError::Json),
        ),
        (
            r#"{"type":604}"#,
            DropReason::Status(StatusDecodeError::Empty),
        ),
        (
            r#"{"type":604,"mem":"a","uptime":-3}"#,
            DropReason::Status(StatusDecodeError::Empty),
        ),
    ];
    for (i, (text, why)) in cases.iter().enumerate() {
        assert_eq!(
            m.handle_frame(t(10 + i as u64), &broadcast(NodeId(600), text)),
            Ingest::Dropped(*why),
            "{text}"
        );
    }
    assert_eq!(m.stats().malformed, 4);
    assert!(
        m.node(NodeId(600)).is_none(),
        "nothing stored for a sender of garbage"
    );
    // an application broadcast that is not a 604 at all is not a drop
    assert_eq!(
        m.handle_frame(t(20), &broadcast(NodeId(600), "temperature=21.5")),
        Ingest::NotMonitoring
    );
    unaffected(&m, &before);
}

#[test]
fn oversized_status_package() {
    let (mut m, before) = setup();
    let big = format!(
        r#"{{"type":604,"mem":40,"lastErr":"{}"}}"#,
        "x".repeat(MAX_STATUS_LEN)
    );
    assert_eq!(
        m.handle_frame(t(10), &broadcast(NodeId(600), &big)),
        Ingest::Dropped(DropReason::Status(StatusDecodeError::TooLarge))
    );
    // an overlong string inside a package of legal size: that field only
    let long_fw = format!(
        r#"{{"type":604,"mem":40,"uptime":5,"fw":"{}"}}"#,
        "v".repeat(100)
    );
    assert_eq!(
        m.handle_frame(t(10), &broadcast(NodeId(601), &long_fw)),
        Ingest::Accepted
    );
    assert_eq!(m.node(NodeId(601)).unwrap().firmware, None);
    assert_eq!(m.stats().field_faults, 1);
    let big_tele = format!(r#"{{"type":710,"q":1,"fw":"{}"}}"#, "x".repeat(2000));
    assert_eq!(
        m.handle_package(t(11), 710, NodeId(602), &big_tele),
        Ingest::Dropped(DropReason::Telemetry(TelemetryDecodeError::TooLarge))
    );
    unaffected(&m, &before);
}

#[test]
fn wrong_types_and_negative_memory_are_not_stored_and_raise_nothing() {
    let (mut m, before) = setup();
    // The library's class would read mem -5 as 0 (and a string as 0): a gateway storing that
    // would raise a false low-memory alert.
    let text = r#"{"from":9,"routing":2,"type":604,"mem":-5,"uptime":"77","wifi":true,"latency":[1],"loss":{"a":1},"fw":"2.0"}"#;
    assert_eq!(
        m.handle_frame(t(10), &broadcast(NodeId(600), text)),
        Ingest::Accepted
    );
    let n = m.node(NodeId(600)).unwrap();
    assert_eq!(n.metrics.free_heap_bytes, None);
    assert_eq!(n.metrics.uptime_s, None);
    assert_eq!(n.metrics.rssi_dbm, None);
    assert_eq!(n.metrics.latency_ms, None);
    assert_eq!(n.metrics.loss_pct, None);
    assert_eq!(n.firmware.as_deref(), Some("2.0"));
    assert_eq!(n.health, Health::Healthy);
    assert_eq!(m.stats().field_faults, 5);
    assert!(m.alerts().all(|a| a.key.kind != AlertKind::LowMemory));
    // telemetry: negative heap and an unknown slot are dropped, the rest applied
    let tele = r#"{"type":710,"q":0,"k":[10,-1,-60],"d":[1,5]}"#;
    assert_eq!(
        m.handle_package(t(10), 710, NodeId(601), tele),
        Ingest::Accepted
    );
    assert_eq!(m.node(NodeId(601)).unwrap().metrics.free_heap_bytes, None);
    assert_eq!(m.node(NodeId(601)).unwrap().metrics.rssi_dbm, Some(-60));
    unaffected(&m, &before);
}

#[test]
fn uptime_going_backwards_is_dropped_then_re_anchored_if_it_persists() {
    let (mut m, before) = setup();
    m.handle_frame(t(0), &report(9000, 40).to_broadcast(NodeId(600)));
    let back = |m: &mut Monitor, at: u64, up: u32| {
        m.handle_frame(t(at * 1000), &report(up, 40).to_broadcast(NodeId(600)))
    };
    assert_eq!(
        back(&mut m, 30, 5000),
        Ingest::Dropped(DropReason::Implausible)
    );
    assert_eq!(
        back(&mut m, 60, 5030),
        Ingest::Dropped(DropReason::Implausible)
    );
    assert_eq!(m.node(NodeId(600)).unwrap().metrics.uptime_s, Some(9000));
    // reports that agree with each other over two report periods (the default 300 s: one
    // accepted report teaches no period): the node's clock is what it is
    assert_eq!(
        back(&mut m, 90, 5060),
        Ingest::Dropped(DropReason::Implausible)
    );
    assert_eq!(back(&mut m, 630, 5600), Ingest::Accepted);
    assert_eq!(m.node(NodeId(600)).unwrap().metrics.uptime_s, Some(5600));
    assert_eq!(m.node(NodeId(600)).unwrap().reboots, 0);
    assert_eq!(m.stats().implausible, 3);
    unaffected(&m, &before);
}

#[test]
fn a_spoofed_from_cannot_rewrite_a_real_node() {
    let (mut m, before) = setup();
    // The package's own `from` is ignored (the library's example leaves it uninitialised);
    // the frame's `from` is the sender.
    let mut r = report(1000, 2);
    r.firmware = Some("evil".into());
    let text = r.to_json(REAL); // claims to be REAL inside
    assert_eq!(
        m.handle_frame(t(5000), &broadcast(NodeId(601), &text)),
        Ingest::Accepted
    );
    assert_eq!(
        m.node(NodeId(601)).unwrap().firmware.as_deref(),
        Some("evil")
    );
    // A frame whose `from` is forged as REAL: its uptime contradicts REAL's (1000 s at
    // t = 0): neither a reboot (500 s ago, but REAL reported 1 s ago) nor the elapsed time.
    let forged = report(500, 2).to_broadcast(REAL);
    assert_eq!(
        m.handle_frame(t(1000), &forged),
        Ingest::Dropped(DropReason::Implausible)
    );
    let forged = report(50_000, 2).to_broadcast(REAL);
    assert_eq!(
        m.handle_frame(t(2000), &forged),
        Ingest::Dropped(DropReason::Implausible)
    );
    // node 0 and the gateway's own id are never senders of status
    assert_eq!(
        m.handle_frame(t(3000), &report(1, 40).to_broadcast(NodeId(0))),
        Ingest::Dropped(DropReason::UnknownSender)
    );
    assert_eq!(
        m.handle_frame(t(3000), &report(1, 40).to_broadcast(GW)),
        Ingest::Dropped(DropReason::UnknownSender)
    );
    unaffected(&m, &before);
}

#[test]
fn a_node_flooding_status_costs_only_itself() {
    let (mut m, before) = setup();
    let mut dropped = 0;
    for i in 0..10_000u64 {
        let at = t(10_000 + i); // one every millisecond for 10 s
        if let Ingest::Dropped(DropReason::Flood) = m.handle_frame(
            at,
            &report(1010 + (i / 1000) as u32, 40).to_broadcast(NodeId(600)),
        ) {
            dropped += 1;
        }
    }
    assert!(dropped >= 9_989, "{dropped}");
    assert!(m
        .alert(&meshfleet_monitor::AlertKey {
            subject: meshfleet_monitor::Subject::Node(NodeId(600)),
            kind: AlertKind::MessageFlood
        })
        .is_some());
    unaffected(&m, &before);
}

#[test]
fn telemetry_claiming_to_be_buffered_cannot_flood() {
    let (mut m, before) = setup();
    let mut accepted = 0;
    for i in 0..1_000u64 {
        let text = format!(
            r#"{{"type":710,"q":{},"d":[1,{}],"a":5}}"#,
            i + 1,
            40_000 + i
        );
        if m.handle_package(t(10_000 + i * 10), 710, NodeId(600), &text) == Ingest::Accepted {
            accepted += 1;
        }
    }
    // 10 s of reports every 10 ms: 48 pass as "buffered", then one a second
    assert!(accepted <= 48 + 11, "{accepted}");
    assert!(m.stats().flooded >= 900);
    unaffected(&m, &before);
}

#[test]
fn a_hundred_thousand_fake_ids_stay_bounded() {
    let cfg = MonitorConfig {
        max_nodes: 2_000,
        max_unconfirmed: 1_000,
        ..MonitorConfig::default()
    };
    let mut m = Monitor::new(cfg, GW);
    // 1,500 real nodes in the topology
    let mut g = NodeTree::leaf(GW);
    g.subs = (10_000..11_500)
        .map(|i| NodeTree::leaf(NodeId(i)))
        .collect();
    m.handle_topology(t(0), &g);
    m.handle_frame(t(0), &report(1000, 40).to_broadcast(NodeId(10_000)));
    let real_before = m.node(NodeId(10_000)).unwrap().clone();
    let mut peak = 0;
    for i in 0..100_000u32 {
        let id = NodeId(1_000_000 + i);
        let r = m.handle_frame(t(1 + u64::from(i) / 100), &report(5, 40).to_broadcast(id));
        assert_eq!(r, Ingest::Accepted);
        peak = peak.max(m.len());
        while m.poll_event().is_some() {}
    }
    assert!(peak <= 2_000, "{peak}");
    assert_eq!(
        m.len(),
        2_000,
        "1,500 real + 500 fakes: the total cap binds first"
    );
    assert!(m.stats().evicted >= 99_000);
    // every real node is still there, untouched
    for i in 10_000..11_500 {
        assert!(m.node(NodeId(i)).is_some(), "real node {i} evicted");
    }
    assert_eq!(m.node(NodeId(10_000)), Some(&real_before));
    // the most recent fakes are the ones kept
    assert!(m.node(NodeId(1_099_999)).is_some());
    assert!(m.node(NodeId(1_000_000)).is_none());
    assert_eq!(m.alerts().map(|a| a.key).collect::<Vec<_>>(), vec![]);
}

#[test]
fn registry_full_of_real_nodes_refuses_newcomers_rather_than_evict_them() {
    let cfg = MonitorConfig {
        max_nodes: 10,
        max_unconfirmed: 5,
        ..MonitorConfig::default()
    };
    let mut m = Monitor::new(cfg, GW);
    let mut g = NodeTree::leaf(GW);
    g.subs = (100..110).map(|i| NodeTree::leaf(NodeId(i))).collect();
    m.handle_topology(t(0), &g);
    assert_eq!(
        m.handle_frame(t(1), &report(5, 40).to_broadcast(NodeId(7))),
        Ingest::Dropped(DropReason::RegistryFull)
    );
    assert_eq!(m.stats().refused, 1);
    assert_eq!(m.len(), 10);
    // max_unconfirmed 0: only topology nodes are monitored
    let mut m = Monitor::new(
        MonitorConfig {
            max_unconfirmed: 0,
            ..MonitorConfig::default()
        },
        GW,
    );
    assert_eq!(
        m.handle_frame(t(1), &report(5, 40).to_broadcast(NodeId(7))),
        Ingest::Dropped(DropReason::RegistryFull)
    );
    assert!(m.is_empty());
}
