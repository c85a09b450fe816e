//! MQTT bridge benchmark against a real Mosquitto (`docs/benchmarks.md`, "MQTT bridge"):
//!
//! * bytes per topic per cycle for 10, 50 and 1,000 nodes, received by a `#` subscriber
//!   (topic + payload bytes, as the broker forwards them), turned into bytes per hour at the
//!   default intervals;
//! * publish throughput: QoS 1 outbox messages (alerts) and QoS 0 per-node state,
//!   end to end (gateway → broker → subscriber).
//!
//! `cargo run --release -p meshfleet-mqtt --example broker_load`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use meshfleet_gateway::status::StatusReport;

fn class(topic: &str) -> &'static str {
    if topic.starts_with("homeassistant/") {
        "ha discovery"
    } else if topic.ends_with("/update") {
        "node/<id>/update"
    } else if topic.starts_with("mesh/node/") {
        "node/<id>"
    } else if topic == "mesh/status/nodes" {
        "status/nodes"
    } else if topic == "mesh/topology" {
        "topology"
    } else if topic == "mesh/metrics" {
        "metrics"
    } else if topic == "mesh/alerts" {
        "alerts"
    } else if topic.starts_with("mesh/alerts/events") {
        "alerts/events"
    } else {
        "other"
    }
}

fn tally(m: &[Msg]) -> BTreeMap<&'static str, (usize, usize)> {
    let mut t = BTreeMap::new();
    for x in m {
        let e = t.entry(class(&x.topic)).or_insert((0, 0));
        e.0 += 1;
        e.1 += x.topic.len() + x.payload.len();
    }
    t
}

async fn run(n: u32) {
    let (_d, dir) = tempdir();
    let broker = Broker::start(&dir).expect("mosquitto installed");
    seed_nodes(&dir, nodes(n, meshfleet_gateway::now_millis()));
    let obs = Observer::connect(broker.port, "bench", "observer", &["#"], true).await;
    let mut cfg = mqtt_config(&broker);
    cfg.homeassistant.enabled = true;
    cfg.node_interval_s = 1;
    // Every cycle's status/nodes is seen, to measure its size; its rate at the defaults
    // (which scale it with the fleet) is applied below.
    cfg.status_nodes_per_step = 0;
    let gw = Gw::start(&dir, cfg).await;
    let start = Instant::now();
    // The connect burst: discovery and every state topic once.
    obs.wait("the connect burst", 60, |m| {
        m.iter().filter(|x| class(&x.topic) == "node/<id>").count() >= n as usize
            && m.iter()
                .filter(|x| class(&x.topic) == "ha discovery")
                .count()
                > n as usize
    })
    .await;
    let burst = start.elapsed();
    let initial = tally(&obs.messages());
    obs.clear();
    // Cycles: every node reports once a second (its state changes), all intervals 1 s.
    let cycles = 5;
    let reg = &gw.shared().registry;
    for c in 0..cycles {
        let now = meshfleet_gateway::now_millis();
        for i in 0..n {
            reg.report(
                1000 + i,
                StatusReport {
                    uptime: 4000 + c * 10 + i,
                    free_memory_kb: 180,
                    wifi_quality: 70,
                    firmware: "1.4.1".into(),
                    latency_ms: 35,
                    packet_loss: 1,
                    ..StatusReport::default()
                },
                now,
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let per = tally(&obs.messages());
    println!("\n## {n} nodes (connect burst {burst:.2?})");
    println!("| topic | msgs seen | bytes/msg | msgs per interval | default interval | KB/h at default |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut total_fleet = 0.0;
    let mut total_nodes = 0.0;
    for (k, (msgs, bytes)) in &per {
        let bpm = *bytes as f64 / (*msgs).max(1) as f64;
        // One message per interval per topic: per node for node/<id> (each node's state
        // changes between two looks when it reports at least that often).
        let mpc = if *k == "node/<id>" { f64::from(n) } else { 1.0 };
        let defaults = meshfleet_mqtt::MqttConfig::default();
        let interval = match *k {
            "status/nodes" => 30.0 * defaults.status_nodes_every(n as usize) as f64,
            "alerts" | "node/<id>" => 30.0,
            "topology" | "metrics" => 60.0,
            _ => 0.0,
        };
        let kbh = if interval > 0.0 {
            mpc * bpm * 3600.0 / interval / 1000.0
        } else {
            0.0
        };
        if *k == "node/<id>" {
            total_nodes += kbh;
        } else {
            total_fleet += kbh;
        }
        println!("| {k} | {msgs} | {bpm:.0} | {mpc} | {interval} s | {kbh:.1} |");
    }
    let (dmsgs, dbytes) = initial.get("ha discovery").copied().unwrap_or((0, 0));
    println!(
        "fleet topics: {total_fleet:.1} KB/h; with per-node topics: {:.1} KB/h; HA discovery once: {dmsgs} msgs, {:.1} KB",
        total_fleet + total_nodes,
        dbytes as f64 / 1000.0
    );
    gw.stop().await;
}

async fn throughput() {
    let (_d, dir) = tempdir();
    let broker = Broker::start(&dir).expect("mosquitto installed");
    let obs = Observer::connect(
        broker.port,
        "bench-tp",
        "observer",
        &["mesh/alerts/events"],
        true,
    )
    .await;
    let mut cfg = mqtt_config(&broker);
    cfg.status_interval_s = 3600;
    cfg.topology_interval_s = 3600;
    cfg.metrics_interval_s = 3600;
    let gw = Gw::start(&dir, cfg).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let k = 2000;
    let t = Instant::now();
    for i in 0..k {
        gw.raise(1000 + (i % 50), "bench").await;
    }
    let raised = t.elapsed();
    obs.wait("every alert", 120, |m| m.len() >= k as usize)
        .await;
    let all = t.elapsed();
    println!(
        "\nQoS 1 outbox: {k} alerts raised in {raised:.2?} (store commit each), all received after {all:.2?}: {:.0} msgs/s end to end",
        f64::from(k) / all.as_secs_f64()
    );
    gw.stop().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for n in [10, 50, 1000] {
        run(n).await;
    }
    throughput().await;
}
