//! The agent's status/telemetry plugin against the real gateway-side monitor, in virtual time:
//! a node running [`Telemetry`] next to a gateway node whose received packages feed
//! `meshfleet_monitor::Monitor`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use meshfleet_agent::{
    Agent, AgentConfig, BootPolicy, OtaReceiver, ReceiverConfig, Telemetry, TelemetryConfig,
};
use meshfleet_mesh::{Config, Ctx, Duration, Event, Instant, LinkId, Node, NodeId, Plugin};
use meshfleet_monitor::telemetry::{self, Metric, ProducerConfig};
use meshfleet_monitor::{
    AlertEvent, AlertKind, Ingest, Monitor, MonitorConfig, MonitorEvent, QueryTarget, Transmit,
};
use meshfleet_ota::MemStore;
use meshfleet_testkit::Net;
use meshfleet_wire::{Package, Routing};

type Inbox = Arc<Mutex<Vec<(NodeId, String)>>>;

/// The gateway's tap: takes telemetry packages (710) addressed to it.
struct Tap(Inbox);

impl Plugin for Tap {
    fn name(&self) -> &'static str {
        "tap"
    }
    fn claims(&self) -> meshfleet_mesh::Claims {
        meshfleet_mesh::Claims::none().ty(telemetry::TELEMETRY_TYPE)
    }
    fn handle_package(&mut self, _: &mut Ctx<'_>, _: LinkId, _: Routing, pkg: &Package) {
        self.0
            .lock()
            .unwrap()
            .push((pkg.from(), pkg.text().to_owned()));
    }
}

const GW: NodeId = NodeId(1);
const SENSOR: NodeId = NodeId(2);

struct Bench {
    net: Net,
    inbox: Inbox,
    monitor: Monitor,
    /// Gateway events consumed so far.
    seen_events: usize,
    /// 710 packages handed to the monitor, and how it took them.
    telemetry: Vec<(Instant, String, Ingest)>,
    /// 604 status messages handed to the monitor.
    status: Vec<(Instant, String, Ingest)>,
    monitor_events: Vec<(Instant, MonitorEvent)>,
}

impl Bench {
    fn new(cfg: TelemetryConfig, monitor: MonitorConfig) -> Self {
        let mut net = Net::new(Duration::from_millis(5));
        let inbox: Inbox = Arc::default();
        let mut gw = Node::new(Config::new(GW));
        gw.add_plugin(Box::new(Tap(inbox.clone()))).unwrap();
        net.add(gw);
        // The sensor as shipped: an OTA receiver (its running version is reported) and the
        // telemetry plugin.
        let flash = MemStore::with_image(b"firmware 1.2.3", "1.2.3");
        let rc = ReceiverConfig::new("sensor", "ESP32", BootPolicy::on_restart());
        let receiver = OtaReceiver::open(rc, flash.clone(), Box::new(flash)).unwrap();
        let plugin = Telemetry::new(cfg).with_receiver(&receiver);
        let mut node = Node::new(Config::new(SENSOR));
        Agent::equip(
            &mut node,
            AgentConfig {
                receiver: Some(receiver),
                extra: vec![Box::new(plugin)],
            },
        )
        .unwrap();
        net.add(node);
        net.connect(1, 0);
        Self {
            net,
            inbox,
            monitor: Monitor::new(monitor, GW),
            seen_events: 0,
            telemetry: Vec::new(),
            status: Vec::new(),
            monitor_events: Vec::new(),
        }
    }

    fn telemetry_plugin(&mut self) -> &mut Telemetry {
        self.net.nodes[1].plugin_mut::<Telemetry>().unwrap()
    }

    /// Runs the mesh in 10 ms steps, feeding the monitor what the gateway node received.
    fn run_for(&mut self, d: Duration) {
        let end = self.net.now + d;
        while self.net.now < end {
            self.net.run_for(Duration::from_millis(10));
            let now = self.net.now;
            let texts: Vec<_> = std::mem::take(&mut *self.inbox.lock().unwrap());
            for (from, text) in texts {
                let r = self
                    .monitor
                    .handle_package(now, telemetry::TELEMETRY_TYPE, from, &text);
                self.telemetry.push((now, text, r));
            }
            let mut topology = false;
            for e in &self.net.events[0][self.seen_events..] {
                match e {
                    Event::Received { from, msg, .. } => {
                        let r = self.monitor.handle_app_message(now, *from, msg);
                        self.status.push((now, msg.clone(), r));
                    }
                    Event::NodeListChanged { .. } => topology = true,
                    _ => {}
                }
            }
            self.seen_events = self.net.events[0].len();
            if topology {
                let tree = self.net.nodes[0].topology();
                self.monitor.handle_topology(now, &tree);
            }
            if self.monitor.poll_timeout().is_some_and(|t| t <= now) {
                self.monitor.handle_timeout(now);
            }
            while let Some(t) = self.monitor.poll_transmit() {
                match t {
                    Transmit::Query { text, .. } => {
                        let pkg = Package::from_text(text).unwrap();
                        self.net.nodes[0].send_package(now, &pkg).unwrap();
                    }
                    Transmit::DelayProbe { to } => {
                        let _ = self.net.nodes[0].start_delay_measurement(now, to);
                    }
                }
                self.net.drain(0);
            }
            while let Some(e) = self.monitor.poll_event() {
                self.monitor_events.push((now, e));
            }
        }
    }
}

fn config() -> TelemetryConfig {
    TelemetryConfig {
        gateway: Some(GW),
        status_interval: None,
        producer: ProducerConfig {
            report_interval_s: 30,
            ..ProducerConfig::default()
        },
        ..TelemetryConfig::default()
    }
}

#[test]
fn the_gateway_registry_shows_the_node_a_crossing_arrives_within_a_second_and_queries_are_answered()
{
    // A short cache TTL, so that the monitor's own query at the end is sent, not cached.
    let mut b = Bench::new(
        config(),
        MonitorConfig {
            cache_ttl_s: 2,
            ..MonitorConfig::default()
        },
    );
    b.run_for(Duration::from_secs(3));
    let now = b.net.now;
    b.telemetry_plugin().record(now, Metric::FreeHeap, 200_000);
    b.telemetry_plugin().record(now, Metric::Rssi, -60);
    b.run_for(Duration::from_secs(5));

    // The boot keyframe reached the registry with the node's identity and its own counts.
    assert!(!b.telemetry.is_empty());
    assert!(b.telemetry.iter().all(|(_, _, r)| *r == Ingest::Accepted));
    let rec = b
        .monitor
        .node(SENSOR)
        .expect("the sensor is in the registry");
    assert_eq!(rec.firmware.as_deref(), Some("1.2.3"));
    assert_eq!(rec.role.as_deref(), Some("sensor"));
    assert_eq!(rec.hardware.as_deref(), Some("ESP32"));
    let boot = telemetry::decode(&b.telemetry[0].1).unwrap().report;
    assert_eq!(boot.seq, 0);
    let telemetry::Body::Keyframe(k) = boot.body else {
        panic!("the first report is not a keyframe: {boot:?}")
    };
    // taken right at start: uptime 0, no heap recorded yet, node sync frames already counted
    assert_eq!(k[Metric::Uptime.slot()], Some(0));
    assert_eq!(k[Metric::FreeHeap.slot()], None);
    assert!(k[Metric::TxPerMin.slot()].is_some());

    // A direct query (711) is answered with a keyframe carrying its id and the values since
    // recorded, within the producer's spread (2 s).
    let asked = b.net.now;
    let q = Package::from_text(telemetry::query_json(GW, Some(SENSOR), 77)).unwrap();
    b.net.nodes[0].send_package(asked, &q).unwrap();
    b.net.drain(0);
    let before = b.telemetry.len();
    b.run_for(Duration::from_millis(2_100));
    let answer = b.telemetry[before..]
        .iter()
        .map(|(at, t, _)| (*at, telemetry::decode(t).unwrap().report))
        .find(|(_, r)| r.reply_to == Some(77))
        .expect("the query was answered");
    assert!(answer.0.saturating_since(asked) <= Duration::from_millis(2_100));
    let telemetry::Body::Keyframe(k) = answer.1.body else {
        panic!("the answer is not a keyframe")
    };
    assert_eq!(k[Metric::FreeHeap.slot()], Some(200_000));
    assert_eq!(k[Metric::Rssi.slot()], Some(-60));
    assert!(k[Metric::Uptime.slot()].unwrap() >= 8);
    let rec = b.monitor.node(SENSOR).unwrap();
    assert_eq!(rec.metrics.free_heap_bytes, Some(200_000));
    assert_eq!(rec.metrics.rssi_dbm, Some(-60));
    assert_eq!(b.telemetry_plugin().stats().queries, 1);

    // A threshold crossing (free heap below 10 KB) reaches the gateway's registry in < 1 s
    // and raises the low-memory alert.
    b.run_for(Duration::from_secs(3));
    let at = b.net.now;
    b.telemetry_plugin().record(at, Metric::FreeHeap, 4_000);
    let mut arrived = None;
    for _ in 0..100 {
        b.run_for(Duration::from_millis(10));
        if b.monitor.node(SENSOR).unwrap().metrics.free_heap_bytes == Some(4_000) {
            arrived = Some(b.net.now);
            break;
        }
    }
    let arrived = arrived.expect("the crossing reached the registry within 1 s");
    assert!(arrived.saturating_since(at) < Duration::from_secs(1));
    assert!(
        b.monitor_events.iter().any(|(t, e)| *t <= arrived
            && matches!(e, MonitorEvent::Alert(AlertEvent::Raised(a)) if a.key.kind == AlertKind::LowMemory)),
        "no low-memory alert: {:?}",
        b.monitor_events
    );
    assert!(b.telemetry_plugin().producer_stats().urgent >= 1);

    // The monitor's own on-demand query to the node (data older than the TTL) is answered.
    b.run_for(Duration::from_secs(4));
    let now = b.net.now;
    let id = b
        .monitor
        .start_query(now, QueryTarget::Node(SENSOR))
        .unwrap();
    b.run_for(Duration::from_secs(10));
    let done = b
        .monitor_events
        .iter()
        .find_map(|(_, e)| match e {
            MonitorEvent::QueryDone(r) if r.id == id => Some(r.clone()),
            _ => None,
        })
        .expect("the query finished");
    assert_eq!(done.answered, vec![SENSOR], "{done:?}");
    assert!(!done.partial);
    // ours and the direct one (the monitor may add liveness checks of its own)
    assert!(b.telemetry_plugin().stats().queries >= 2);
    assert_eq!(b.telemetry_plugin().stats().refused, 0);
}

#[test]
fn the_status_package_is_broadcast_and_the_monitor_takes_its_values() {
    let cfg = TelemetryConfig {
        gateway: None,
        status_interval: Some(Duration::from_secs(5)),
        ..TelemetryConfig::default()
    };
    let mut b = Bench::new(cfg, MonitorConfig::default());
    let now = b.net.now;
    b.telemetry_plugin()
        .record(now, Metric::FreeHeap, 100 * 1024);
    b.telemetry_plugin().record(now, Metric::Rssi, -70);
    b.run_for(Duration::from_secs(11));
    // Two broadcasts (at 5 s and 10 s), nothing else: no gateway, nobody asked.
    assert_eq!(b.status.len(), 2, "{:?}", b.status);
    assert!(b.telemetry.is_empty());
    assert!(b.status.iter().all(|(_, _, r)| *r == Ingest::Accepted));
    let d = meshfleet_monitor::status::decode(&b.status[1].1).unwrap();
    assert!(d.faults.is_empty() && d.unknown_keys == 0);
    let r = d.report;
    assert_eq!(r.uptime_s, Some(10));
    assert_eq!(r.free_heap_kb, Some(100));
    assert_eq!(r.wifi_quality, Some(60));
    assert_eq!(r.firmware.as_deref(), Some("1.2.3"));
    assert_eq!((r.nodes, r.conns), (Some(1), Some(1)));
    assert!(r.msg_tx.unwrap() > 0 && r.msg_rx.unwrap() > 0);
    let rec = b.monitor.node(SENSOR).unwrap();
    assert_eq!(rec.firmware.as_deref(), Some("1.2.3"));
    assert_eq!(rec.metrics.free_heap_bytes, Some(100 * 1024));
    assert_eq!(rec.metrics.nodes_known, Some(1));
    assert_eq!(b.telemetry_plugin().stats().status_sent, 2);

    // A query makes the querier the destination of the telemetry stream.
    let q = Package::from_text(telemetry::query_json(GW, Some(SENSOR), 5)).unwrap();
    let now = b.net.now;
    b.net.nodes[0].send_package(now, &q).unwrap();
    b.net.drain(0);
    b.run_for(Duration::from_millis(2_100));
    assert_eq!(b.telemetry_plugin().destination(), Some(GW));
    let answered = b
        .telemetry
        .iter()
        .any(|(_, t, _)| telemetry::decode(t).unwrap().report.reply_to == Some(5));
    assert!(answered);
}

#[test]
fn a_backed_up_link_to_the_gateway_refuses_reports_and_the_producer_backs_off() {
    let mut b = Bench::new(config(), MonitorConfig::default());
    b.run_for(Duration::from_secs(3));
    let sent = b.telemetry.len();
    assert!(sent >= 1);
    // The driver reports 64 KiB queued towards the gateway (the sensor's only link).
    let link = LinkId(1);
    let now = b.net.now;
    b.net.nodes[1].set_link_backlog(link, 64 * 1024);
    b.telemetry_plugin().record(now, Metric::Latency, 900);
    b.run_for(Duration::from_millis(500));
    assert_eq!(b.telemetry.len(), sent, "sent through a backed-up link");
    let refused = b.telemetry_plugin().stats().refused;
    assert!(refused >= 1);
    assert!(b.telemetry_plugin().producer_stats().busy >= 1);
    // Within the back-off (2 s, doubling) nothing is retried.
    b.run_for(Duration::from_secs(1));
    assert_eq!(b.telemetry_plugin().stats().refused, refused);
    // The link drains: the refused report goes out after the back-off, nothing lost.
    b.net.nodes[1].set_link_backlog(link, 0);
    b.run_for(Duration::from_secs(5));
    let got = b.telemetry[sent..]
        .iter()
        .map(|(_, t, _)| telemetry::decode(t).unwrap().report)
        .any(|r| match r.body {
            telemetry::Body::Delta(d) => d.contains(&(Metric::Latency, 900)),
            telemetry::Body::Keyframe(k) => k[Metric::Latency.slot()] == Some(900),
        });
    assert!(got, "the refused report never arrived");
    assert_eq!(
        b.monitor.node(SENSOR).unwrap().metrics.latency_ms,
        Some(900)
    );
}

#[test]
fn a_crossing_right_after_a_scheduled_report_is_held_not_dropped_as_a_flood() {
    let mut b = Bench::new(config(), MonitorConfig::default());
    let now = b.net.now;
    b.telemetry_plugin().record(now, Metric::FreeHeap, 200_000);
    // Up to the first scheduled report after the boot keyframe (30 s).
    b.run_for(Duration::from_secs(29));
    let n = b.telemetry.len();
    let mut scheduled = None;
    for _ in 0..300 {
        b.run_for(Duration::from_millis(10));
        if b.telemetry.len() > n {
            scheduled = Some(b.net.now);
            break;
        }
    }
    let scheduled = scheduled.expect("a scheduled report at 30 s");
    // The crossing, 10-20 ms after it left.
    let at = b.net.now;
    b.telemetry_plugin().record(at, Metric::FreeHeap, 3_000);
    b.run_for(Duration::from_millis(1_500));
    let (t, _, r) = b
        .telemetry
        .iter()
        .find(|(t, _, _)| *t > scheduled)
        .expect("the crossing was sent");
    assert_eq!(*r, Ingest::Accepted, "dropped at the gateway");
    assert!(t.saturating_since(scheduled) >= Duration::from_secs(1));
    assert!(t.saturating_since(at) <= Duration::from_millis(1_200));
    assert_eq!(b.monitor.stats().flooded, 0);
    assert_eq!(
        b.monitor.node(SENSOR).unwrap().metrics.free_heap_bytes,
        Some(3_000)
    );
}

#[test]
fn losing_the_mesh_root_is_flagged_at_once() {
    let mut b = Bench::new(config(), MonitorConfig::default());
    // The mesh root joins through the gateway: root - gateway - sensor.
    let mut c = Config::new(NodeId(3));
    c.root = true;
    let root = b.net.add(Node::new(c));
    let wire = b.net.connect(root, 0);
    b.run_for(Duration::from_secs(5));
    assert!(b.net.nodes[1].topology().is_rooted());
    let flags_of = |b: &Bench| {
        b.telemetry
            .iter()
            .filter_map(
                |(_, t, _)| match telemetry::decode(t).unwrap().report.body {
                    telemetry::Body::Keyframe(k) => k[Metric::Flags.slot()],
                    telemetry::Body::Delta(d) => {
                        d.iter().find(|(m, _)| *m == Metric::Flags).map(|(_, v)| *v)
                    }
                },
            )
            .next_back()
    };
    assert_eq!(flags_of(&b), Some(0));
    let cut = b.net.now;
    b.net.cut(wire);
    b.run_for(Duration::from_millis(1_500));
    assert_eq!(flags_of(&b), Some(telemetry::flags::LOST_ROOT));
    let (at, _) = b
        .monitor_events
        .iter()
        .find(|(_, e)| {
            matches!(e, MonitorEvent::Alert(AlertEvent::Raised(a)) if a.key.kind == AlertKind::LostRoot)
        })
        .expect("a lost-root alert");
    assert!(at.saturating_since(cut) <= Duration::from_millis(1_500));
}
