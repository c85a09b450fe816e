//! Telemetry bytes per node-hour at steady state, and the latency of a threshold crossing.
//!
//! `cargo test -p meshfleet-monitor --test telemetry_budget -- --nocapture` prints the
//! figures recorded in docs/benchmarks.md.
#![allow(missing_docs, clippy::unwrap_used)]

use meshfleet_mesh::Rng;
use meshfleet_monitor::telemetry::{
    decode, Identity, Metric, Producer, ProducerConfig, StreamState, Urgency,
};
use meshfleet_monitor::{Instant, NodeId};

// ESP node ids are the last 4 bytes of the MAC: usually 10 decimal digits.
const NODE: NodeId = NodeId(3_000_000_002);
const GATEWAY: NodeId = NodeId(3_000_000_001);

/// A healthy node's readings every 10 s: noise within what real ESP32 nodes show (RSSI
/// ±3 dB, heap jitter ±600 B, latency 60-140 ms, loss 0-3 %, a few messages a minute).
fn steady(rng: &mut Rng, uptime: i64) -> [Option<i64>; 10] {
    let j = |rng: &mut Rng, lo: i64, hi: i64| lo + rng.below((hi - lo + 1) as u64) as i64;
    [
        Some(uptime),
        Some(j(rng, 39_400, 40_600)),
        Some(j(rng, -68, -62)),
        Some(j(rng, 60, 140)),
        Some(j(rng, 0, 3)),
        Some(j(rng, 8, 14)),
        Some(j(rng, 10, 20)),
        Some(j(rng, 0, 2)),
        Some(0),
        Some(1),
    ]
}

struct Run {
    bytes_per_hour: f64,
    reports_per_hour: f64,
    deltas_with_values: u64,
}

fn run(cfg: ProducerConfig, hours: u64, seed: u64) -> Run {
    let mut rng = Rng::new(seed);
    let mut p = Producer::new(cfg, Instant::ZERO, seed);
    p.set_identity(Identity {
        firmware: "1.4.2".into(),
        role: "sensor".into(),
        hardware: "ESP32".into(),
    });
    let mut gw = StreamState::default();
    let (mut bytes, mut reports, mut with_values) = (0u64, 0u64, 0u64);
    let warmup = 3600u64;
    for s in (0..(hours + 1) * 3600).step_by(10) {
        let now = Instant::from_micros(s * 1_000_000);
        let u = p.record_all(now, &steady(&mut rng, s as i64));
        assert_eq!(
            u,
            Urgency::None,
            "steady noise must not cross an alert threshold"
        );
        while let Some(text) = p.poll_packet(now, NODE, GATEWAY) {
            let r = decode(&text).unwrap();
            assert_eq!(r.faults, 0);
            let a = gw.apply(now, &r.report);
            assert!(!a.reboot && a.lost == 0 && !a.stale);
            if s >= warmup {
                bytes += text.len() as u64 + 1; // + the frame's NUL
                reports += 1;
                if text.contains("\"d\":") {
                    with_values += 1;
                }
            }
        }
    }
    Run {
        bytes_per_hour: bytes as f64 / hours as f64,
        reports_per_hour: reports as f64 / hours as f64,
        deltas_with_values: with_values,
    }
}

#[test]
fn steady_state_fits_one_kilobyte_per_node_hour() {
    let r = run(ProducerConfig::default(), 24, 11);
    println!(
        "default config (report every 300 s, keyframe every 12): {:.0} B per node-hour, {:.1} reports/h, {} deltas with values in 24 h",
        r.bytes_per_hour, r.reports_per_hour, r.deltas_with_values
    );
    assert!(r.bytes_per_hour <= 1024.0, "{} B/h", r.bytes_per_hour);
    // every metric sent in a delta needs a change beyond its threshold: changes under it
    // cost nothing (compare a 60 s interval to show what the report period costs)
    let fast = run(
        ProducerConfig {
            report_interval_s: 60,
            keyframe_every: 60,
            ..ProducerConfig::default()
        },
        24,
        11,
    );
    println!(
        "report every 60 s, keyframe every 60: {:.0} B per node-hour, {:.1} reports/h",
        fast.bytes_per_hour, fast.reports_per_hour
    );
}

#[test]
fn a_threshold_crossing_leaves_the_node_in_the_same_instant() {
    let mut rng = Rng::new(3);
    let mut p = Producer::new(ProducerConfig::default(), Instant::ZERO, 3);
    let mut gw = StreamState::default();
    for s in (0..1800u64).step_by(10) {
        let now = Instant::from_micros(s * 1_000_000);
        p.record_all(now, &steady(&mut rng, s as i64));
        while let Some(t) = p.poll_packet(now, NODE, GATEWAY) {
            gw.apply(now, &decode(&t).unwrap().report);
        }
    }
    // the heap falls under 10 KB at t = 1805 s, between two scheduled reports
    let now = Instant::from_micros(1_805_000_000);
    assert_eq!(p.record(now, Metric::FreeHeap, 9_000), Urgency::SendNow);
    let text = p
        .poll_packet(now, NODE, GATEWAY)
        .expect("sent in the same instant");
    gw.apply(now, &decode(&text).unwrap().report);
    assert_eq!(gw.values[Metric::FreeHeap.slot()], Some(9_000));
}
