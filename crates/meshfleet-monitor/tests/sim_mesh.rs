//! The monitor behind a real (simulated) painlessMesh: every node runs the real mesh code in
//! `meshfleet-sim`, sends its telemetry as SINGLE messages to the gateway (node 1), and the
//! gateway feeds what its mesh node receives, its node tree and its delay measurements into the
//! `Monitor`. No simulator change: this drives the simulator's public API from outside.
//!
//! `cargo test -p meshfleet-monitor --test sim_mesh -- --nocapture`
#![allow(missing_docs, clippy::unwrap_used)]

use std::cell::RefCell;
use std::rc::Rc;

use meshfleet_mesh::{Duration, Event, Instant, NodeId, Rng};
use meshfleet_monitor::telemetry::{decode_query, Metric, Producer, ProducerConfig, Values, SLOTS};
use meshfleet_monitor::{
    AlertEvent, AlertKey, AlertKind, Health, Monitor, MonitorConfig, MonitorEvent, Subject,
    Transmit,
};
use meshfleet_sim::{Scenario, SimEvent, Simulation, Topology};

/// What the event hook saw: (time, node, message text, sender) for received messages, and
/// delay measurements at the gateway.
#[derive(Default)]
struct Seen {
    received: Vec<(Instant, NodeId, NodeId, String)>,
    delays: Vec<(Instant, NodeId, i32)>,
    gateway_list_changed: bool,
}

#[test]
fn telemetry_over_the_simulated_mesh_detects_a_crash_and_nothing_else() {
    const NODES: u32 = 30;
    let crash_at = Duration::from_secs(40 * 60);
    let reboot_at = Duration::from_secs(70 * 60);
    let end = Duration::from_secs(2 * 3600);
    let s = Scenario::new(Topology::RandomTree {
        nodes: NODES,
        max_children: 4,
    })
    .seed(7)
    .duration(end)
    // the last node to join has no children: its crash is one node offline, not a partition
    .event(crash_at, SimEvent::Crash { node: NODES })
    .event(reboot_at, SimEvent::Reboot { node: NODES });
    let mut sim = Simulation::new(s);
    let gw = sim.id_of(1);
    let seen: Rc<RefCell<Seen>> = Rc::default();
    let hook = seen.clone();
    sim.set_event_hook(move |t, id, e| {
        let mut s = hook.borrow_mut();
        match e {
            Event::Received { from, msg, .. } => s.received.push((t, id, *from, msg.clone())),
            Event::DelayMeasured { node, delay_us } if id == gw => {
                s.delays.push((t, *node, *delay_us))
            }
            Event::NodeListChanged { .. } if id == gw => s.gateway_list_changed = true,
            _ => {}
        }
    });
    let mut monitor = Monitor::new(MonitorConfig::default(), gw);
    let cfg = ProducerConfig::default();
    let ids: Vec<NodeId> = (2..=NODES).map(|n| sim.id_of(n)).collect();
    let mut producers: Vec<Producer> = ids
        .iter()
        .map(|id| Producer::new(cfg.clone(), Instant::ZERO, u64::from(id.0)))
        .collect();
    let mut was_running = vec![true; ids.len()];
    let mut rng = Rng::new(1);
    let mut bytes = 0u64;
    let mut raised: Vec<(Instant, AlertKey)> = Vec::new();
    let mut step = Instant::ZERO;
    let mut delays_seen = 0u32;
    let mut probe_log = Vec::new();
    let end_at = Instant::ZERO + end;
    while step < end_at {
        step += Duration::from_secs(10);
        sim.run_until(step);
        let now = sim.now();
        // what the gateway's mesh node saw
        let (received, delays, changed) = {
            let mut s = seen.borrow_mut();
            let r = std::mem::take(&mut s.received);
            let d = std::mem::take(&mut s.delays);
            let c = std::mem::replace(&mut s.gateway_list_changed, false);
            (r, d, c)
        };
        if changed {
            let tree = sim.node(gw).unwrap().topology();
            monitor.handle_topology(now, &tree);
        }
        for (t, at, from, msg) in received {
            if at == gw {
                monitor.handle_app_message(t, from, &msg);
            } else if let Some(q) = decode_query(&msg) {
                let i = ids.iter().position(|x| *x == at).unwrap();
                producers[i].handle_query(t, q);
            }
        }
        for (t, node, d) in delays {
            delays_seen += 1;
            monitor.handle_delay(t, node, d);
        }
        // every node samples (healthy noise) and reports
        for (i, id) in ids.iter().enumerate() {
            let running = sim.is_running(*id);
            if running && !was_running[i] {
                producers[i] = Producer::new(cfg.clone(), now, rng.next_u64());
            }
            was_running[i] = running;
            if !running {
                continue;
            }
            let mut v: Values = [None; SLOTS];
            v[Metric::FreeHeap.slot()] = Some(40_000 + rng.below(1_200) as i64);
            v[Metric::Rssi.slot()] = Some(-65 + rng.below(7) as i64);
            v[Metric::Latency.slot()] = Some(60 + rng.below(80) as i64);
            v[Metric::TxPerMin.slot()] = Some(10);
            v[Metric::Flags.slot()] = Some(0);
            let p = &mut producers[i];
            let reachable = sim.node(*id).unwrap().route(gw).is_some();
            p.set_gateway_reachable(now, reachable);
            p.record_all(now, &v);
            while let Some(r) = p.poll_report(now) {
                let text = r.to_json(*id, gw);
                match sim.node_mut(*id).unwrap().send_single(now, gw, &text) {
                    Ok(()) => bytes += text.len() as u64 + 1,
                    Err(_) => p.handle_busy(now, r),
                }
            }
        }
        monitor.handle_timeout(now);
        while let Some(tx) = monitor.poll_transmit() {
            let node = sim.node_mut(gw).unwrap();
            let _ = match tx {
                Transmit::Query { to, text } => node.send_single(now, to, &text),
                Transmit::DelayProbe { to } => {
                    probe_log.push((now, to));
                    node.start_delay_measurement(now, to)
                }
            };
        }
        while let Some(e) = monitor.poll_event() {
            if let MonitorEvent::Alert(AlertEvent::Raised(a)) = e {
                raised.push((now, a.key));
            }
        }
    }
    let crashed = sim.id_of(NODES);
    println!("alerts raised: {raised:?}");
    let hours = end.as_secs_f64() / 3600.0;
    println!(
        "telemetry sent by the nodes: {:.0} B per node-hour (at the source, {} nodes)",
        bytes as f64 / (ids.len() as f64 * hours),
        ids.len()
    );
    println!("monitor stats: {:?}", monitor.stats());
    // probes went to nodes before their first report; during mesh formation most answers
    // took longer than the 10 s probe timeout (counted lost), and all came
    println!(
        "delay probes sent {}, answers {delays_seen}",
        probe_log.len()
    );
    assert_eq!(delays_seen as usize, probe_log.len());
    // exactly one alert: the crashed node offline, within the departure grace (+ a step)
    assert_eq!(raised.len(), 1, "{raised:?}");
    let (t, key) = raised[0];
    assert_eq!(
        key,
        AlertKey {
            subject: Subject::Node(crashed),
            kind: AlertKind::NodeOffline
        }
    );
    let latency = t - (Instant::ZERO + crash_at);
    println!("crash to node_offline: {latency}");
    assert!(latency <= Duration::from_secs(80), "{latency}");
    // it came back: healthy again, every node known, all from telemetry and the topology
    assert_eq!(monitor.len(), ids.len());
    assert_eq!(monitor.alert_count(), 0);
    assert_eq!(monitor.health_summary().healthy, ids.len());
    assert!(monitor.node(crashed).unwrap().reboots >= 1 || monitor.stats().reboots >= 1);
    assert_eq!(monitor.node(ids[0]).unwrap().health, Health::Healthy);
}
