//! The gateway side, scripted: registry, health, detectors and alert lifecycle, queries,
//! probes, topology (partition, churn, lost root).
#![allow(missing_docs, clippy::unwrap_used)]

use meshfleet_monitor::status::{AlertFlags, StatusReport};
use meshfleet_monitor::telemetry::{self, Identity, Metric, Producer, ProducerConfig};
use meshfleet_monitor::{
    AlertEvent, AlertKey, AlertKind, DropReason, Health, Ingest, Monitor, MonitorConfig,
    MonitorEvent, NodeQuery, QueryTarget, Severity, SortKey, Subject, Transmit,
};
use meshfleet_monitor::{Instant, NodeId};
use meshfleet_wire::NodeTree;

const GW: NodeId = NodeId(1);

fn t(s: u64) -> Instant {
    Instant::from_micros(s * 1_000_000)
}

fn status(uptime: u32, mem_kb: u16) -> StatusReport {
    StatusReport {
        device_status: Some(1),
        uptime_s: Some(uptime),
        free_heap_kb: Some(mem_kb),
        wifi_quality: Some(70),
        firmware: Some("1.0.0".into()),
        firmware_md5: Some("abc".into()),
        nodes: Some(3),
        conns: Some(3),
        msg_rx: Some(uptime / 10),
        msg_tx: Some(uptime / 10),
        msg_drop: Some(0),
        latency_ms: Some(50),
        loss_pct: Some(1),
        throughput: Some(512),
        alerts: Some(AlertFlags(0)),
        last_error: Some(String::new()),
    }
}

fn send(m: &mut Monitor, at: u64, from: u32, r: &StatusReport) -> Ingest {
    let frame = r.to_broadcast(NodeId(from));
    m.handle_frame(t(at), &frame)
}

fn alerts_raised(m: &mut Monitor) -> Vec<(AlertKind, Subject)> {
    let mut out = Vec::new();
    while let Some(e) = m.poll_event() {
        if let MonitorEvent::Alert(AlertEvent::Raised(a)) = e {
            out.push((a.key.kind, a.key.subject));
        }
    }
    out
}

fn key(n: u32, kind: AlertKind) -> AlertKey {
    AlertKey {
        subject: Subject::Node(NodeId(n)),
        kind,
    }
}

/// gateway -> 10 -> {11 -> {13, 14}, 12}
fn tree(with_subtree_11: bool) -> NodeTree {
    let mut n10 = NodeTree::leaf(NodeId(10));
    if with_subtree_11 {
        let mut n11 = NodeTree::leaf(NodeId(11));
        n11.subs = vec![NodeTree::leaf(NodeId(13)), NodeTree::leaf(NodeId(14))];
        n10.subs.push(n11);
    }
    n10.subs.push(NodeTree::leaf(NodeId(12)));
    let mut g = NodeTree::leaf(GW);
    g.root = true;
    g.subs = vec![n10];
    g
}

#[test]
fn status_reports_fill_the_registry_and_low_memory_follows_the_lifecycle() {
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    assert_eq!(send(&mut m, 0, 7, &status(100, 40)), Ingest::Accepted);
    let n = m.node(NodeId(7)).unwrap();
    assert_eq!(n.firmware.as_deref(), Some("1.0.0"));
    assert_eq!(n.metrics.free_heap_bytes, Some(40 * 1024));
    assert_eq!(n.metrics.rssi_dbm, Some(-65));
    assert_eq!(n.health, Health::Healthy);
    // 9 KB: critical at once (datapoints_to_alarm = 1)
    send(&mut m, 30, 7, &status(130, 9));
    assert_eq!(m.node(NodeId(7)).unwrap().health, Health::Critical);
    let a = m.alert(&key(7, AlertKind::LowMemory)).unwrap().clone();
    assert_eq!(a.severity, Severity::Critical);
    assert!(alerts_raised(&mut m).contains(&(AlertKind::LowMemory, Subject::Node(NodeId(7)))));
    // 11 KB: above the raise threshold but below the clear threshold (12 KB): stays
    send(&mut m, 60, 7, &status(160, 11));
    assert!(m.alert(&key(7, AlertKind::LowMemory)).is_some());
    assert!(m.acknowledge(a.id));
    assert!(m.alert(&key(7, AlertKind::LowMemory)).unwrap().acknowledged);
    // two reports above 12 KB clear it (datapoints_to_clear = 2)
    send(&mut m, 90, 7, &status(190, 30));
    assert!(m.alert(&key(7, AlertKind::LowMemory)).is_some());
    send(&mut m, 120, 7, &status(220, 30));
    assert!(m.alert(&key(7, AlertKind::LowMemory)).is_none());
    assert_eq!(m.node(NodeId(7)).unwrap().health, Health::Healthy);
    assert_eq!(
        m.alerts_raised(),
        1,
        "deduplicated: one alert for the episode"
    );
}

#[test]
fn uptime_resets_make_a_reboot_loop_and_backwards_uptime_is_dropped() {
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    send(&mut m, 0, 7, &status(5000, 40));
    // going back by far less than the time since the last report could explain: implausible
    assert_eq!(
        send(&mut m, 30, 7, &status(4000, 40)),
        Ingest::Dropped(DropReason::Implausible)
    );
    // ahead of the clock: implausible too
    assert_eq!(
        send(&mut m, 60, 7, &status(90_000, 40)),
        Ingest::Dropped(DropReason::Implausible)
    );
    assert_eq!(m.stats().implausible, 2);
    assert_eq!(m.node(NodeId(7)).unwrap().metrics.uptime_s, Some(5000));
    // real reboots: uptime below the time since the last report, three within 30 minutes
    let mut at = 90;
    for _ in 0..3 {
        at += 120;
        assert_eq!(send(&mut m, at, 7, &status(20, 40)), Ingest::Accepted);
    }
    assert_eq!(m.node(NodeId(7)).unwrap().reboots, 3);
    assert!(m.alert(&key(7, AlertKind::RebootLoop)).is_some());
    // it clears once the window holds fewer reboots (sweep)
    send(&mut m, at + 1000, 7, &status(1020, 40));
    m.handle_timeout(t(at + 1900));
    assert!(m.alert(&key(7, AlertKind::RebootLoop)).is_none());
    // millis()/1000 wrapping at 4,294,967 s is not a reboot
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    send(&mut m, 0, 8, &status(4_294_900, 40));
    assert_eq!(send(&mut m, 100, 8, &status(33, 40)), Ingest::Accepted);
    assert_eq!(m.node(NodeId(8)).unwrap().reboots, 0);
}

#[test]
fn a_node_flooding_status_is_dropped_and_alerted() {
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    send(&mut m, 0, 7, &status(100, 40));
    let mut dropped = 0;
    for i in 1..=50u64 {
        // 50 reports in 5 s
        let at = Instant::from_micros(i * 100_000);
        let r = status(100, 40).to_broadcast(NodeId(7));
        if m.handle_frame(at, &r) == Ingest::Dropped(DropReason::Flood) {
            dropped += 1;
        }
    }
    // one report a second gets through (min_report_gap_ms = 1000)
    assert_eq!(dropped, 45);
    assert_eq!(m.stats().flooded, 45);
    assert!(m.alert(&key(7, AlertKind::MessageFlood)).is_some());
    // other nodes are unaffected
    assert_eq!(send(&mut m, 6, 8, &status(100, 40)), Ingest::Accepted);
    assert_eq!(m.node(NodeId(8)).unwrap().health, Health::Healthy);
}

#[test]
fn partition_is_one_alert_for_the_subtree_and_a_single_death_is_node_offline() {
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    m.handle_topology(t(0), &tree(true));
    assert_eq!(m.len(), 5);
    assert_eq!(m.node(NodeId(13)).unwrap().parent, Some(NodeId(11)));
    assert_eq!(m.node(NodeId(13)).unwrap().depth, Some(3));
    alerts_raised(&mut m);
    // 11 and its two children vanish
    m.handle_topology(t(100), &tree(false));
    assert_eq!(m.node(NodeId(13)).unwrap().health, Health::Offline);
    m.handle_timeout(t(130));
    assert!(alerts_raised(&mut m).is_empty(), "within the grace");
    m.handle_timeout(t(161));
    let raised = alerts_raised(&mut m);
    assert_eq!(
        raised,
        vec![(AlertKind::Partition, Subject::Node(NodeId(11)))]
    );
    assert_eq!(m.alert(&key(11, AlertKind::Partition)).unwrap().value, 3);
    // they come back: cleared
    m.handle_topology(t(200), &tree(true));
    assert!(m.alert(&key(11, AlertKind::Partition)).is_none());
    assert_eq!(m.node(NodeId(13)).unwrap().health, Health::Healthy);
    // a single leaf dies: node_offline after the grace, not a partition
    let mut no12 = tree(true);
    no12.subs[0].subs.pop();
    m.handle_topology(t(300), &no12);
    m.handle_timeout(t(361));
    assert_eq!(
        alerts_raised(&mut m),
        vec![(AlertKind::NodeOffline, Subject::Node(NodeId(12)))]
    );
    // a node that leaves and rejoins within the grace raises nothing
    m.handle_topology(t(400), &tree(true));
    let mut no13 = tree(true);
    no13.subs[0].subs[0].subs.pop();
    m.handle_topology(t(500), &no13);
    m.handle_timeout(t(520));
    m.handle_topology(t(530), &tree(true));
    m.handle_timeout(t(600));
    assert!(alerts_raised(&mut m).is_empty());
}

#[test]
fn lost_root_and_churn_are_mesh_alerts() {
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    m.handle_topology(t(0), &tree(true));
    let mut unrooted = tree(true);
    unrooted.root = false;
    m.handle_topology(t(10), &unrooted);
    let mesh = |kind| AlertKey {
        subject: Subject::Mesh,
        kind,
    };
    assert!(m.alert(&mesh(AlertKind::LostRoot)).is_some());
    m.handle_topology(t(20), &tree(true));
    assert!(m.alert(&mesh(AlertKind::LostRoot)).is_none());
    // 11's subtree (3 nodes) flaps: it leaves and rejoins as one piece, 2 events per cycle
    // (not 6: a subtree that moves together is one event); 30 events in 10 min is churn
    for i in 0..14 {
        m.handle_topology(t(30 + i * 20), &tree(false));
        m.handle_topology(t(40 + i * 20), &tree(true));
    }
    assert!(
        m.alert(&mesh(AlertKind::TopologyChurn)).is_none(),
        "28 events are below the threshold"
    );
    m.handle_topology(t(330), &tree(false));
    m.handle_topology(t(340), &tree(true));
    assert!(m.alert(&mesh(AlertKind::TopologyChurn)).is_some());
    // every event names the subtree's top, node 11
    assert_eq!(m.churn_events().count(), 30);
    assert!(m.churn_events().all(|(_, top)| top == NodeId(11)));
    m.handle_timeout(t(340 + 600));
    assert!(m.alert(&mesh(AlertKind::TopologyChurn)).is_none());
}

#[test]
fn a_mesh_forming_node_by_node_is_discovery_not_churn() {
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    // The gateway's first view has one node; then 60 new nodes join one every 5 s, each
    // below the previous (a line): 60 joins in 5 minutes, twice the churn threshold.
    let mut view = NodeTree::leaf(GW);
    view.root = true;
    let grow = |n: u32| {
        let mut tip = NodeTree::leaf(NodeId(100 + n));
        for i in (0..n).rev() {
            let mut up = NodeTree::leaf(NodeId(100 + i));
            up.subs.push(tip);
            tip = up;
        }
        let mut g = NodeTree::leaf(GW);
        g.root = true;
        g.subs.push(tip);
        g
    };
    m.handle_topology(t(0), &view);
    for n in 0..60u32 {
        view = grow(n);
        m.handle_topology(t(5 + u64::from(n) * 5), &view);
    }
    let churn = AlertKey {
        subject: Subject::Mesh,
        kind: AlertKind::TopologyChurn,
    };
    assert!(m.alert(&churn).is_none(), "new nodes joining raised churn");
    // The same nodes dropping out and coming back, again and again, is instability: churn
    // (each drop and each return of the 59-node line below node 100 is one event).
    for i in 0..15u64 {
        m.handle_topology(t(400 + i * 20), &grow(0));
        m.handle_topology(t(410 + i * 20), &view);
    }
    assert!(m.alert(&churn).is_some(), "rejoins are churn");
}

#[test]
fn a_big_subtree_cut_off_once_is_a_partition_not_churn() {
    // The gateway, a relay 100 under it and a 40-node line below the relay: the link
    // 100 -> 101 breaks (a partition of 40 nodes), heals 5 minutes later, and later a
    // single leaf moves. Counting nodes, the cut alone was 40 "changes" (threshold 30) and
    // raised a mesh-wide churn alert beside the partition alert; it is two events.
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    let line = |with_tail: bool| {
        let mut relay = NodeTree::leaf(NodeId(100));
        if with_tail {
            let mut tip = NodeTree::leaf(NodeId(140));
            for i in (101..140).rev() {
                let mut up = NodeTree::leaf(NodeId(i));
                up.subs.push(tip);
                tip = up;
            }
            relay.subs.push(tip);
        }
        let mut g = NodeTree::leaf(GW);
        g.root = true;
        g.subs.push(relay);
        g
    };
    m.handle_topology(t(0), &NodeTree::leaf(GW));
    m.handle_topology(t(10), &line(true));
    m.handle_topology(t(100), &line(false));
    m.handle_timeout(t(300));
    assert!(
        m.alert(&key(101, AlertKind::Partition)).is_some(),
        "the cut-off subtree is a partition"
    );
    m.handle_topology(t(400), &line(true));
    let churn = AlertKey {
        subject: Subject::Mesh,
        kind: AlertKind::TopologyChurn,
    };
    assert!(
        m.alert(&churn).is_none(),
        "one cut and one heal are not churn"
    );
    let events: Vec<NodeId> = m.churn_events().map(|(_, top)| top).collect();
    assert_eq!(
        events,
        vec![NodeId(101), NodeId(101)],
        "each event names the top"
    );
}

#[test]
fn a_reporter_that_goes_quiet_is_silent_then_offline_when_known_only_by_reports() {
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    // node 7 reports every 30 s and is not in any topology the monitor saw
    for i in 0..10u64 {
        send(&mut m, i * 30, 7, &status(100 + i as u32 * 30, 40));
    }
    assert_eq!(m.node(NodeId(7)).unwrap().report_period_s, Some(30));
    // the driver calls handle_timeout every second; from 1.25 periods on the monitor checks
    // the overdue node (delay probes: it never sent telemetry), here unanswered
    let mut probes = 0;
    for s in 271..=329 {
        m.handle_timeout(t(s));
        probes += std::iter::from_fn(|| m.poll_transmit()).count();
    }
    assert_eq!(probes, 3);
    assert_eq!(m.node(NodeId(7)).unwrap().health, Health::Healthy);
    m.handle_timeout(t(270 + 60));
    assert_eq!(
        m.node(NodeId(7)).unwrap().health,
        Health::Offline,
        "two report periods"
    );
    assert!(m.alert(&key(7, AlertKind::NodeOffline)).is_some());
    send(&mut m, 400, 7, &status(500, 40));
    assert!(m.alert(&key(7, AlertKind::NodeOffline)).is_none());
    // in the topology: silent (critical), not offline
    m.handle_topology(t(401), &{
        let mut g = NodeTree::leaf(GW);
        g.subs.push(NodeTree::leaf(NodeId(7)));
        g
    });
    for s in 401..=459 {
        m.handle_timeout(t(s));
    }
    assert!(m.alert(&key(7, AlertKind::NodeSilent)).is_none());
    m.handle_timeout(t(460));
    assert!(m.alert(&key(7, AlertKind::NodeSilent)).is_some());
    assert_eq!(m.node(NodeId(7)).unwrap().health, Health::Critical);
}

#[test]
fn telemetry_stream_feeds_the_registry_and_queries_complete_partial() {
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    let mut p = Producer::new(ProducerConfig::default(), t(0), 1);
    p.set_identity(Identity {
        firmware: "2.0.0".into(),
        role: "sensor".into(),
        hardware: "ESP32".into(),
    });
    p.record(t(0), Metric::FreeHeap, 50_000);
    p.record(t(0), Metric::Rssi, -60);
    p.record(t(0), Metric::Uptime, 1);
    let text = p.poll_packet(t(0), NodeId(20), GW).unwrap();
    assert_eq!(
        m.handle_package(t(0), telemetry::TELEMETRY_TYPE, NodeId(20), &text),
        Ingest::Accepted
    );
    // the same text as the msg of a SINGLE (firmware without plugin packages) is accepted too
    let single = meshfleet_wire::Message::Single(meshfleet_wire::Text {
        dest: GW,
        from: NodeId(22),
        msg: meshfleet_wire::MsgText::Text(text.clone()),
        extra: Vec::new(),
    });
    assert_eq!(m.handle_frame(t(0), &single), Ingest::Accepted);
    assert_eq!(m.node(NodeId(22)).unwrap().role.as_deref(), Some("sensor"));
    let n = m.node(NodeId(20)).unwrap();
    assert_eq!(n.role.as_deref(), Some("sensor"));
    assert_eq!(n.hardware.as_deref(), Some("ESP32"));
    assert_eq!(n.metrics.free_heap_bytes, Some(50_000));
    // a stock node known from the topology only
    let mut g = NodeTree::leaf(GW);
    g.subs = vec![NodeTree::leaf(NodeId(20)), NodeTree::leaf(NodeId(21))];
    m.handle_topology(t(1), &g);
    // query all at t = 100: both are stale (TTL 60 s): 20 gets a 711, 21 a delay probe
    let q = m.start_query(t(100), QueryTarget::All).unwrap();
    let tx: Vec<Transmit> = std::iter::from_fn(|| m.poll_transmit()).collect();
    assert!(tx.contains(&Transmit::DelayProbe { to: NodeId(21) }));
    let Some(Transmit::Query { to, text }) =
        tx.iter().find(|t| matches!(t, Transmit::Query { .. }))
    else {
        panic!("no 711")
    };
    assert_eq!(*to, NodeId(20));
    // node 20 answers; 21 never does
    let query = telemetry::decode_query(text).unwrap();
    p.handle_query(t(100), query);
    let at = p.poll_timeout().unwrap();
    let answer = p.poll_packet(at, NodeId(20), GW).unwrap();
    m.handle_package(at, telemetry::TELEMETRY_TYPE, NodeId(20), &answer);
    m.handle_timeout(t(109));
    let done = std::iter::from_fn(|| m.poll_event())
        .find_map(|e| match e {
            MonitorEvent::QueryDone(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(done.id, q);
    assert_eq!(done.answered, vec![NodeId(20)]);
    // 21 (probe) and 22 (a 711: it sent telemetry) never answer
    assert_eq!(done.missing, vec![NodeId(21), NodeId(22)]);
    assert!(done.partial);
    // asked again right away: 20 is served from the cache
    m.start_query(t(110), QueryTarget::Node(NodeId(20)))
        .unwrap();
    let done = std::iter::from_fn(|| m.poll_event())
        .find_map(|e| match e {
            MonitorEvent::QueryDone(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(done.cached, vec![NodeId(20)]);
    assert!(!done.partial);
}

#[test]
fn query_concurrency_is_bounded() {
    let cfg = MonitorConfig {
        query_max_in_flight: 3,
        ..MonitorConfig::default()
    };
    let mut m = Monitor::new(cfg, GW);
    let mut g = NodeTree::leaf(GW);
    g.subs = (100..120).map(|i| NodeTree::leaf(NodeId(i))).collect();
    m.handle_topology(t(0), &g);
    m.start_query(t(100), QueryTarget::All).unwrap();
    let first: Vec<Transmit> = std::iter::from_fn(|| m.poll_transmit()).collect();
    assert_eq!(first.len(), 3);
    for tx in &first {
        let Transmit::DelayProbe { to } = tx else {
            panic!()
        };
        m.handle_delay(t(101), *to, 20_000);
    }
    let next: Vec<Transmit> = std::iter::from_fn(|| m.poll_transmit()).collect();
    assert_eq!(next.len(), 3);
    assert_eq!(m.node(NodeId(100)).unwrap().metrics.latency_ms, Some(20));
}

#[test]
fn nodes_that_send_nothing_are_probed_within_budget() {
    let cfg = MonitorConfig {
        probes_per_min: 6,
        ..MonitorConfig::default()
    };
    let mut m = Monitor::new(cfg, GW);
    let mut g = NodeTree::leaf(GW);
    g.subs = (100..130).map(|i| NodeTree::leaf(NodeId(i))).collect();
    m.handle_topology(t(0), &g);
    let mut probed = std::collections::BTreeSet::new();
    for s in 0..600u64 {
        m.handle_timeout(t(s));
        while let Some(tx) = m.poll_transmit() {
            let Transmit::DelayProbe { to } = tx else {
                panic!()
            };
            probed.insert(to);
            m.handle_delay(t(s), to, 5_000);
        }
    }
    // 6 a minute for 10 minutes: 60 probes, every one of the 30 nodes reached
    assert!(m.stats().probes_sent <= 61, "{}", m.stats().probes_sent);
    assert_eq!(probed.len(), 30);
}

#[test]
fn memory_leak_and_link_degradation_against_the_nodes_own_baseline() {
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    // 30 s reports; heap falls 200 B a minute (12 KB/h) from 60 KB with ±300 B of noise
    let mut raised_leak_at = None;
    for i in 0..120u64 {
        let heap_kb =
            ((60_000 - i as i64 * 100 + [0, 300, -300, 150][i as usize % 4]) / 1024) as u16;
        let mut r = status(100 + i as u32 * 30, heap_kb);
        r.wifi_quality = Some(70);
        send(&mut m, i * 30, 7, &r);
        if raised_leak_at.is_none() && m.alert(&key(7, AlertKind::MemoryLeak)).is_some() {
            raised_leak_at = Some(i * 30);
        }
    }
    let at = raised_leak_at.expect("leak detected");
    assert!((1350..=1800).contains(&at), "leak raised at {at} s");
    assert!(
        m.alert(&key(7, AlertKind::LowMemory)).is_none(),
        "before the heap is low"
    );
    // link: quality 70 % (-65 dBm) steady, then -79 dBm (above the absolute -80 rule)
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    for i in 0..20u64 {
        let mut r = status(100 + i as u32 * 30, 40);
        r.wifi_quality = Some(if i % 2 == 0 { 70 } else { 68 });
        send(&mut m, i * 30, 7, &r);
    }
    assert!(m.alert(&key(7, AlertKind::LinkDegraded)).is_none());
    for i in 20..23u64 {
        let mut r = status(100 + i as u32 * 30, 40);
        r.wifi_quality = Some(42);
        send(&mut m, i * 30, 7, &r);
    }
    assert!(m.alert(&key(7, AlertKind::LinkDegraded)).is_some());
    assert!(m.alert(&key(7, AlertKind::WeakSignal)).is_none());
}

#[test]
fn registry_query_filters_sorts_and_pages() {
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    for i in 0..25u32 {
        let mut p = Producer::new(ProducerConfig::default(), t(0), u64::from(i));
        p.set_identity(Identity {
            firmware: if i % 2 == 0 {
                "1.0".into()
            } else {
                "1.1".into()
            },
            role: if i % 5 == 0 {
                "relay".into()
            } else {
                "sensor".into()
            },
            hardware: "ESP32".into(),
        });
        p.record(t(0), Metric::FreeHeap, 20_000 + i64::from(i) * 1000);
        p.record(t(0), Metric::FreeHeap, 20_000 + i64::from(i) * 1000);
        if i == 3 {
            p.record(t(0), Metric::FreeHeap, 5_000);
        }
        let text = p.poll_packet(t(0), NodeId(100 + i), GW).unwrap();
        m.handle_package(t(0), 710, NodeId(100 + i), &text);
    }
    let q = NodeQuery {
        role: Some("sensor".into()),
        firmware: Some("1.1".into()),
        sort: SortKey::FreeHeap,
        descending: true,
        limit: 4,
        ..NodeQuery::default()
    };
    let page = m.nodes(&q);
    // sensors on 1.1: odd ids not divisible by 5: 1,3,7,9,11,13,17,19,21,23 -> 10
    assert_eq!(page.total, 10);
    let ids: Vec<u32> = page.items.iter().map(|n| n.id.0 - 100).collect();
    assert_eq!(ids, vec![23, 21, 19, 17]);
    let page2 = m.nodes(&NodeQuery {
        offset: 8,
        ..q.clone()
    });
    let ids: Vec<u32> = page2.items.iter().map(|n| n.id.0 - 100).collect();
    assert_eq!(ids, vec![1, 3], "node 3 has the least heap");
    let crit = m.nodes(&NodeQuery {
        health: vec![Health::Critical],
        ..NodeQuery::default()
    });
    assert_eq!(
        crit.items.iter().map(|n| n.id.0).collect::<Vec<_>>(),
        vec![103]
    );
    // the query struct is what a REST layer deserialises
    let q: NodeQuery =
        serde_json::from_str(r#"{"role":"relay","sort":"id","descending":true,"limit":2}"#)
            .unwrap();
    let ids: Vec<u32> = m.nodes(&q).items.iter().map(|n| n.id.0 - 100).collect();
    assert_eq!(ids, vec![20, 15]);
    assert_eq!(m.health_summary().critical, 1);
}

#[test]
fn config_deserialises_partially_and_refuses_typos() {
    let c: MonitorConfig =
        serde_json::from_str(r#"{"low_memory_bytes":8192,"max_nodes":50}"#).unwrap();
    assert_eq!(c.low_memory_bytes, 8192);
    assert_eq!(c.max_nodes, 50);
    assert_eq!(c.high_latency_ms, 500);
    assert!(serde_json::from_str::<MonitorConfig>(r#"{"low_memroy_bytes":1}"#).is_err());
}

#[test]
fn an_answered_probe_is_not_counted_lost() {
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    let mut g = NodeTree::leaf(GW);
    g.subs = vec![NodeTree::leaf(NodeId(5))];
    m.handle_topology(t(0), &g);
    for s in 1..=60u64 {
        m.handle_timeout(t(s));
        while let Some(tx) = m.poll_transmit() {
            let Transmit::DelayProbe { to } = tx else {
                panic!()
            };
            m.handle_delay(t(s), to, 3_000);
        }
    }
    assert!(m.stats().probes_sent >= 1);
    assert_eq!(m.stats().probes_lost, 0);
}
