//! Departure detection (PROTOCOL.md §4.9): a crashed node's neighbours notice at once and
//! the rest of the mesh within milliseconds; a hung node is only found by the node-sync
//! timeout, 10 s after the next request that it leaves unanswered.

use std::cell::RefCell;
use std::rc::Rc;

use meshfleet_mesh::{CloseReason, Duration, Event, Instant, NodeId};
use meshfleet_sim::{Scenario, SimEvent, Simulation, Topology};

type Log = Rc<RefCell<Vec<(Instant, NodeId, String)>>>;

fn logged(s: Scenario) -> (Simulation, Log) {
    let mut sim = Simulation::new(s);
    let log: Log = Rc::default();
    let l = log.clone();
    sim.set_event_hook(move |t, id, e| {
        let what = match e {
            Event::LinkClosed { reason, .. } => format!("closed {}", reason.label()),
            Event::NodeListChanged { nodes } => format!("list {}", nodes.len()),
            _ => return,
        };
        l.borrow_mut().push((t, id, what));
    });
    (sim, log)
}

fn first(log: &Log, id: NodeId, after: Instant, what: &str) -> Option<Instant> {
    log.borrow()
        .iter()
        .find(|(t, n, w)| *n == id && *t >= after && w == what)
        .map(|(t, _, _)| *t)
}

#[test]
fn crash_of_a_middle_node_is_seen_at_once_nearby_and_in_ms_far_away() {
    let crash_at = Duration::from_secs(30);
    let s = Scenario::new(Topology::Line {
        nodes: 5,
        spacing_m: 30.0,
    })
    .seed(2)
    .duration(Duration::from_secs(40))
    .event(crash_at, SimEvent::Crash { node: 3 });
    let (mut sim, log) = logged(s);
    let r = sim.run();
    let t0 = Instant::ZERO + crash_at;
    let id = |n| sim.id_of(n);
    for n in [2, 4] {
        let t = first(&log, id(n), t0, "closed peer_closed").expect("neighbour notices");
        // The RST arrives one link latency after the crash (the library: ~2 ms).
        assert!(t - t0 <= Duration::from_millis(1), "node {n}: {}", t - t0);
    }
    for (n, left) in [(1, 1), (5, 1)] {
        let t = first(&log, id(n), t0, &format!("list {left}")).expect("far node updates");
        println!("node {n} dropped the far side after {}", t - t0);
        // The library: 5-9 ms (one forced node sync over one hop).
        assert!(t - t0 < Duration::from_millis(20), "node {n}: {}", t - t0);
    }
    let entry = r
        .convergence
        .after_events
        .iter()
        .find(|e| e.cause == "crash 3")
        .expect("entry");
    assert!(
        entry.converged_after_s.is_some_and(|s| s < 0.05),
        "{entry:?}"
    );
    // Node 4 and 5 lost their access point; with node 3 gone they have no other in range.
    assert_eq!(r.convergence.components_at_end, 2);
}

#[test]
fn hung_node_is_found_by_the_node_sync_timeout() {
    let hang_at = Duration::from_secs(30);
    let s = Scenario::new(Topology::Line {
        nodes: 3,
        spacing_m: 30.0,
    })
    .seed(4)
    .duration(Duration::from_secs(130))
    .event(hang_at, SimEvent::Hang { node: 2 });
    let (mut sim, log) = logged(s);
    let requests: Rc<RefCell<Vec<(Instant, NodeId, NodeId)>>> = Rc::default();
    let q = requests.clone();
    // Node-sync requests: whole (type 5) or, between meshfleet nodes, digests (type 95).
    sim.set_frame_trace(move |f| {
        let whole =
            f.frame.starts_with(b"{\"nodeId\"") && f.frame.windows(8).any(|w| w == b"\"type\":5");
        let digest = f.frame.starts_with(b"{\"type\":95")
            && f.frame.windows(16).any(|w| w == b"\"sync\":\"request\"");
        if whole || digest {
            q.borrow_mut().push((f.start, f.from, f.to));
        }
    });
    sim.run();
    let t0 = Instant::ZERO + hang_at;
    let hung = sim.id_of(2);
    for n in [1, 3] {
        let me = sim.id_of(n);
        let closed = first(
            &log,
            me,
            t0,
            &format!("closed {}", CloseReason::NodeSyncTimeout.label()),
        )
        .expect("timeout detects the hang");
        let request = requests
            .borrow()
            .iter()
            .filter(|(t, from, to)| *from == me && *to == hung && *t >= t0 && *t < closed)
            .map(|(t, _, _)| *t)
            .next()
            .expect("a request after the hang");
        let waited = closed - request;
        println!(
            "node {n}: request {}s after the hang, closed {} later",
            (request - t0).as_secs_f64(),
            waited
        );
        // NODE_TIMEOUT 10 s on the node's own clock (±20 ppm: ±0.2 ms).
        assert!(
            waited >= Duration::from_millis(9_999) && waited <= Duration::from_millis(10_001),
            "{waited}"
        );
        // Steady state: at most one node-sync period (60 s) + 10 s after the hang.
        assert!(closed - t0 <= Duration::from_secs(70));
    }
}

#[test]
fn reboot_rebuilds_the_node_and_keeps_its_store() {
    let s = Scenario::new(Topology::Line {
        nodes: 3,
        spacing_m: 30.0,
    })
    .seed(9)
    .duration(Duration::from_secs(60))
    .node_factory(|init| {
        // What an OTA engine does with its bitmap: read it back, then keep writing.
        let boots = init.store.get("boots").map_or(0, |v| v[0]);
        assert_eq!(u32::from(boots), init.boot_count);
        init.store.put("boots", [boots + 1]);
        meshfleet_mesh::Node::new(init.config)
    })
    .event(Duration::from_secs(20), SimEvent::Reboot { node: 2 });
    let mut sim = Simulation::new(s);
    let r = sim.run();
    assert_eq!(r.per_node[1].boots, 2);
    assert_eq!(
        sim.store(sim.id_of(2)).and_then(|s| s.get("boots")),
        Some(vec![2])
    );
    assert!(r.convergence.converged_at_end, "{:?}", r.convergence);
    let entry = r
        .convergence
        .after_events
        .iter()
        .find(|e| e.cause == "reboot 2")
        .expect("entry");
    println!(
        "reboot of the middle node: lists right again after {:?} s",
        entry.converged_after_s
    );
    assert!(
        entry.converged_after_s.is_some_and(|s| s < 5.0),
        "{entry:?}"
    );
}
