//! Gateway-side ingest: frame bytes as received -> wire decode -> status/telemetry decode ->
//! registry update -> detectors -> alerts, for a fleet of 1,000 nodes each reporting every
//! 30 s (virtual time advances 30 ms per frame, so every report is plausible and none is
//! rate-limited). Baseline in the same run: parsing the same frame into `serde_json::Value`
//! twice (frame, then the status text in `msg`) and nothing else.
//!
//! `cargo bench -p meshfleet-monitor --bench ingest`
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meshfleet_monitor::status::{AlertFlags, StatusReport};
use meshfleet_monitor::telemetry::{Metric, Producer, ProducerConfig};
use meshfleet_monitor::{Instant, Monitor, MonitorConfig, NodeId};
use meshfleet_wire::NodeTree;

const NODES: u64 = 1_000;
const GW: NodeId = NodeId(1);

fn node_id(i: u64) -> NodeId {
    NodeId(3_000_000_000 + i as u32)
}

/// The k-th status frame of the stream: node k % NODES, round k / NODES.
fn status_frame(k: u64) -> (Instant, Vec<u8>) {
    let (i, round) = (k % NODES, k / NODES);
    let noise = (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as u16; // 0..15
    let r = StatusReport {
        device_status: Some(1),
        uptime_s: Some(1_000 + (round * 30) as u32),
        free_heap_kb: Some(40 + noise % 4),
        wifi_quality: Some(60 + (noise % 5) as u8),
        firmware: Some("1.4.2".into()),
        firmware_md5: Some("d41d8cd98f00b204e9800998ecf8427e".into()),
        nodes: Some(NODES as u16),
        conns: Some(3),
        msg_rx: Some((round * 40) as u32),
        msg_tx: Some((round * 20) as u32),
        msg_drop: Some(0),
        latency_ms: Some(60 + noise),
        loss_pct: Some((noise % 3) as u8),
        throughput: Some(512),
        alerts: Some(AlertFlags(0)),
        last_error: Some(String::new()),
    };
    let mut bytes = r.to_broadcast(node_id(i)).encode();
    bytes.push(0);
    (Instant::from_micros(k * 30_000), bytes)
}

fn monitor() -> Monitor {
    let mut m = Monitor::new(MonitorConfig::default(), GW);
    let mut g = NodeTree::leaf(GW);
    g.root = true;
    g.subs = (0..NODES).map(|i| NodeTree::leaf(node_id(i))).collect();
    m.handle_topology(Instant::ZERO, &g);
    while m.poll_event().is_some() {}
    m
}

fn ingest(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1));

    let mut m = monitor();
    let mut k = 0u64;
    g.bench_function("status_604_full", |b| {
        b.iter_batched(
            || {
                k += 1;
                status_frame(k)
            },
            |(now, bytes)| {
                let frame = &bytes[..bytes.len() - 1];
                let msg = meshfleet_wire::decode(frame).unwrap();
                let r = m.handle_frame(now, &msg);
                // Accepted; events drained as a gateway would
                while let Some(e) = m.poll_event() {
                    black_box(e);
                }
                black_box(r)
            },
            BatchSize::SmallInput,
        )
    });
    assert_eq!(m.stats().implausible + m.stats().flooded, 0);
    assert!(m.stats().status_accepted > 0);

    let mut k = 0u64;
    g.bench_function("baseline_value_parse_only", |b| {
        b.iter_batched(
            || {
                k += 1;
                status_frame(k)
            },
            |(_, bytes)| {
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes[..bytes.len() - 1]).unwrap();
                let inner: serde_json::Value =
                    serde_json::from_str(v["msg"].as_str().unwrap()).unwrap();
                black_box(inner)
            },
            BatchSize::SmallInput,
        )
    });

    // Telemetry deltas (every report carries a changed heap), 1,000 nodes every 30 s.
    let mut m = monitor();
    let cfg = ProducerConfig {
        report_interval_s: 30,
        ..ProducerConfig::default()
    };
    let mut producers: Vec<Producer> = (0..NODES)
        .map(|i| Producer::new(cfg.clone(), Instant::ZERO, i))
        .collect();
    let mut k = 0u64;
    g.bench_function("telemetry_710_full", |b| {
        b.iter_batched(
            || {
                k += 1;
                let i = (k % NODES) as usize;
                let now = Instant::from_micros(k * 30_000);
                let p = &mut producers[i];
                p.record(
                    now,
                    Metric::FreeHeap,
                    40_000 + ((k / NODES) as i64 % 2) * 4_000,
                );
                p.record(now, Metric::Rssi, -60);
                (now, i, p.poll_packet(now, node_id(i as u64), GW))
            },
            |(now, i, text)| {
                if let Some(text) = text {
                    let r = m.handle_package(now, 710, node_id(i as u64), &text);
                    while let Some(e) = m.poll_event() {
                        black_box(e);
                    }
                    black_box(r);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
