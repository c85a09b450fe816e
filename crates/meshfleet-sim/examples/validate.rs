//! Regenerates the validation table of `docs/simulator.md`: the simulator's one-hop delay,
//! message rate and goodput against the published painlessMesh measurements it is
//! calibrated to (Yoppy et al., "Performance Evaluation of ESP8266 Mesh Networks",
//! J. Phys.: Conf. Ser. 1230 (2019) 012023), and multi-hop delay.
//!
//! ```text
//! cargo run -p meshfleet-sim --release --example validate
//! ```

use std::cell::RefCell;
use std::rc::Rc;

use meshfleet_mesh::{Duration, Event, Instant, NodeId};
use meshfleet_sim::{ChannelModel, LinkParams, MeshParams, Scenario, Simulation, Topology};

type Rx = Rc<RefCell<Vec<(Instant, NodeId, String)>>>;

fn sim(
    topology: Topology,
    channel: ChannelModel,
    seed: u64,
    sync: Option<Duration>,
) -> (Simulation, Rx) {
    let link = LinkParams {
        // Offered load above capacity must queue, not drop, to measure the ceiling.
        queue_cap_bytes: 64 << 20,
        ..LinkParams::default()
    };
    let s = Scenario::new(topology)
        .seed(seed)
        .channel(channel)
        .link(link)
        .mesh(MeshParams {
            node_sync_interval: sync,
            ..MeshParams::default()
        })
        .duration(Duration::from_secs(3600));
    let mut sim = Simulation::new(s);
    let rx: Rx = Rc::default();
    let r = rx.clone();
    sim.set_event_hook(move |t, id, e| {
        if let Event::Received { msg, .. } = e {
            r.borrow_mut().push((t, id, msg.clone()));
        }
    });
    (sim, rx)
}

/// Mean and 99th percentile one-way delay of isolated `payload`-byte singles from node
/// `from` to node `to`, one per second for `count` seconds, after a 30 s warm-up.
fn delay(
    topology: Topology,
    channel: ChannelModel,
    sync: Option<Duration>,
    from: u32,
    to: u32,
    payload: usize,
    count: u32,
) -> (f64, f64) {
    let (mut sim, rx) = sim(topology, channel, 5, sync);
    let (src, dst) = (sim.id_of(from), sim.id_of(to));
    let mut sent = Vec::new();
    let mut t = Instant::ZERO + Duration::from_secs(30);
    for k in 0..count {
        // An odd offset so that messages do not always coincide with the minute timers.
        t += Duration::from_micros(1_000_000 + 7_919 * u64::from(k % 13));
        sim.run_until(t);
        let text = format!("{k:0>width$}", width = payload);
        sim.with_node(src, |n, now| n.send_single(now, dst, &text))
            .and_then(Result::ok)
            .expect("route");
        sent.push((t, text));
    }
    sim.run_for(Duration::from_secs(5));
    let rx = rx.borrow();
    let mut d: Vec<f64> = sent
        .iter()
        .filter_map(|(t, text)| {
            rx.iter()
                .find(|(_, id, m)| *id == dst && m == text)
                .map(|(r, _, _)| (*r - *t).as_micros() as f64 / 1e3)
        })
        .collect();
    d.sort_by(f64::total_cmp);
    let mean = d.iter().sum::<f64>() / d.len().max(1) as f64;
    (
        mean,
        d[((d.len() as f64 * 0.99).ceil() as usize).clamp(1, d.len()) - 1],
    )
}

/// Messages per second node 2 receives from node 1 when node 1 offers `offered` per second.
fn rate(payload: usize, offered: f64) -> f64 {
    let (mut sim, rx) = sim(
        Topology::Line {
            nodes: 2,
            spacing_m: 30.0,
        },
        ChannelModel::Independent,
        3,
        None,
    );
    let (src, dst) = (sim.id_of(1), sim.id_of(2));
    let text = "x".repeat(payload);
    let start = Instant::ZERO + Duration::from_secs(30);
    let step = Duration::from_micros((1e6 / offered) as u64);
    let mut t = start;
    while t < start + Duration::from_secs(20) {
        sim.run_until(t);
        sim.with_node(src, |n, now| n.send_single(now, dst, &text))
            .and_then(Result::ok)
            .expect("route");
        t += step;
    }
    // Count receptions in a window where the queue is saturated.
    let (w0, w1) = (
        start + Duration::from_secs(5),
        start + Duration::from_secs(15),
    );
    sim.run_until(w1);
    let n = rx
        .borrow()
        .iter()
        .filter(|(t, _, _)| *t >= w0 && *t < w1)
        .count();
    n as f64 / 10.0
}

fn main() {
    let line = |n| Topology::Line {
        nodes: n,
        spacing_m: 30.0,
    };
    println!("### One-hop delay (2 nodes, 10-byte SINGLE)\n");
    let (m, p99) = delay(line(2), ChannelModel::Independent, None, 1, 2, 10, 200);
    println!("| | published | simulated mean | simulated p99 |\n|---|---|---|---|");
    println!("| one-way delay | 2.49 ms | {m:.2} ms | {p99:.2} ms |\n");

    println!("### Message rate and goodput vs payload (2 nodes, sender saturating the link)\n");
    println!(
        "| payload | published max rate | simulated rate | simulated goodput |\n|---|---|---|---|"
    );
    for (payload, published) in [
        (10, "461 msg/s"),
        (100, "–"),
        (1000, "–"),
        (4400, "28 msg/s (123 KB/s)"),
        (5000, "errors above 4400 B"),
        (10_000, "errors above 4400 B"),
    ] {
        let offered = 2.0 * 131_000.0 / (payload as f64 + 60.0) + 20.0;
        let r = rate(payload, offered.min(1200.0));
        println!(
            "| {payload} B | {published} | {r:.1} msg/s | {:.1} KB/s |",
            r * payload as f64 / 1e3
        );
    }

    println!("\n### Multi-hop delay (line, 10-byte SINGLE from the far end to node 1)\n");
    println!(
        "| hops | simulated mean | simulated p99 | k x published one-hop |\n|---|---|---|---|"
    );
    for hops in [1u32, 2, 3, 5, 8] {
        let (m, p99) = delay(
            line(hops + 1),
            ChannelModel::Independent,
            None,
            hops + 1,
            1,
            10,
            100,
        );
        println!(
            "| {hops} | {m:.2} ms | {p99:.2} ms | {:.2} ms |",
            2.49 * f64::from(hops)
        );
    }

    println!("\n### One hop in larger meshes (star, airtime channel: the hub's radio is shared)\n");
    println!(
        "Published: delay grows with the node count at equal hop distance (2, 3, 10, 16 nodes).\n"
    );
    println!("| nodes | node sync every 60 s (library 1.10): mean / p99 | every 3 s (library 1.0.1, as measured): mean / p99 |\n|---|---|---|");
    for n in [2u32, 3, 10, 16] {
        let star = || Topology::Star {
            nodes: n,
            max_children: 16,
        };
        let (m, p99) = delay(star(), ChannelModel::Airtime, None, 1, 2, 10, 300);
        let (m3, p3) = delay(
            star(),
            ChannelModel::Airtime,
            Some(Duration::from_secs(3)),
            1,
            2,
            10,
            300,
        );
        println!("| {n} | {m:.2} / {p99:.2} ms | {m3:.2} / {p3:.2} ms |");
    }
}
