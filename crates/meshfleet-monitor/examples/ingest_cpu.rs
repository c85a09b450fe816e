//! Gateway-side ingest throughput per CPU-second, for a loaded shared machine where wall-clock
//! benchmarks mostly measure the other tenants. Same work as `benches/ingest.rs`: frame bytes
//! -> wire decode -> 604 decode -> registry -> detectors -> events drained; 1,000 nodes, each
//! reporting every 30 s of virtual time. CPU time is this thread's, from
//! `/proc/thread-self/schedstat` (Linux). The baseline (two `serde_json::Value` parses of the
//! same frame) runs in the same process, for a ratio.
//!
//! `cargo run --release -p meshfleet-monitor --example ingest_cpu`
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant as Wall;

use meshfleet_monitor::status::{AlertFlags, StatusReport};
use meshfleet_monitor::{Instant, Monitor, MonitorConfig, NodeId};
use meshfleet_wire::NodeTree;

const NODES: u64 = 1_000;
const FRAMES: u64 = 100_000;

fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

fn node_id(i: u64) -> NodeId {
    NodeId(3_000_000_000 + i as u32)
}

fn frame(k: u64) -> Vec<u8> {
    let (i, round) = (k % NODES, k / NODES);
    let noise = (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as u16;
    StatusReport {
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
    }
    .to_broadcast(node_id(i))
    .encode()
}

fn measure(name: &str, frames: &[Vec<u8>], mut f: impl FnMut(u64, &[u8])) -> f64 {
    let (c0, w0) = (cpu_ns(), Wall::now());
    for (k, fr) in frames.iter().enumerate() {
        f(k as u64, fr);
    }
    let cpu = (cpu_ns() - c0) as f64 / 1e9;
    let wall = w0.elapsed().as_secs_f64();
    let per_cpu = frames.len() as f64 / cpu;
    println!(
        "{name:<34} {:>8.0} frames per CPU-second ({:.2} µs CPU each; wall {:.0}/s, CPU share {:.0} %)",
        per_cpu,
        cpu * 1e6 / frames.len() as f64,
        frames.len() as f64 / wall,
        100.0 * cpu / wall
    );
    per_cpu
}

fn main() {
    let frames: Vec<Vec<u8>> = (0..FRAMES).map(frame).collect();
    let bytes: usize = frames.iter().map(Vec::len).sum();
    println!(
        "{FRAMES} status frames from {NODES} nodes, {} B each on average",
        bytes / frames.len()
    );
    for round in 0..3 {
        let mut m = Monitor::new(MonitorConfig::default(), NodeId(1));
        let mut g = NodeTree::leaf(NodeId(1));
        g.root = true;
        g.subs = (0..NODES).map(|i| NodeTree::leaf(node_id(i))).collect();
        m.handle_topology(Instant::ZERO, &g);
        while m.poll_event().is_some() {}
        let full = measure("full ingest (decode+registry+detect)", &frames, |k, fr| {
            let msg = meshfleet_wire::decode(fr).unwrap();
            let r = m.handle_frame(Instant::from_micros(k * 30_000), &msg);
            while let Some(e) = m.poll_event() {
                black_box(e);
            }
            black_box(r);
        });
        assert_eq!(m.stats().status_accepted, FRAMES);
        let base = measure("baseline: 2 x serde_json::Value", &frames, |_, fr| {
            let v: serde_json::Value = serde_json::from_slice(fr).unwrap();
            let inner: serde_json::Value =
                serde_json::from_str(v["msg"].as_str().unwrap()).unwrap();
            black_box(inner);
        });
        println!(
            "round {round}: full ingest / baseline throughput ratio {:.2}",
            full / base
        );
    }
}
