//! The channel models, observed through the frame trace: who may transmit at the same
//! time, queue limits, and loss as TCP retransmission.

use std::cell::RefCell;
use std::rc::Rc;

use meshfleet_mesh::{Duration, Instant, NodeId};
use meshfleet_sim::{
    ChannelModel, LinkChange, LinkParams, Run, Scenario, SimEvent, Simulation, Topology, Traffic,
};

type Air = Rc<RefCell<Vec<(Instant, Instant, NodeId, NodeId)>>>;

/// The simulation with the scenario's workloads (its traffic) installed.
fn run_of(s: Scenario) -> Run {
    Run::new(s).expect("a valid scenario")
}

/// Runs and returns every transmission as (start, end of airtime, from, to).
fn on_air(s: Scenario) -> (Air, meshfleet_sim::SimReport) {
    let mut run = run_of(s);
    let air: Air = Rc::default();
    let a = air.clone();
    run.sim_mut().set_frame_trace(move |f| {
        a.borrow_mut()
            .push((f.start, f.start + f.airtime, f.from, f.to))
    });
    let r = run.run();
    (air, r)
}

fn overlaps(air: &Air, pair: impl Fn(NodeId, NodeId) -> bool) -> usize {
    let v = air.borrow();
    let mut n = 0;
    for (i, a) in v.iter().enumerate() {
        for b in &v[i + 1..] {
            if b.0 >= a.1 {
                continue; // sorted by start: b starts after a ends
            }
            if pair(a.2, b.2) && a.0 < b.1 && b.0 < a.1 {
                n += 1;
            }
        }
    }
    n
}

fn star_flood(channel: ChannelModel) -> Scenario {
    Scenario::new(Topology::Star {
        nodes: 5,
        max_children: 4,
    })
    .seed(1)
    .channel(channel)
    .duration(Duration::from_secs(20))
    .traffic(Traffic::broadcast(Some(1), 50.0, Duration::from_secs(2)).payload(2000))
}

#[test]
fn independent_links_overlap_but_one_radio_serialises() {
    let (air, _) = on_air(star_flood(ChannelModel::Independent));
    let same_sender = overlaps(&air, |a, b| a == b);
    assert!(same_sender > 0, "the hub's four links send at once");
    let (air, _) = on_air(star_flood(ChannelModel::Airtime));
    assert_eq!(overlaps(&air, |a, b| a == b), 0, "one radio per node");
    // Different senders still overlap under `airtime`.
    assert!(overlaps(&air, |a, b| a != b) > 0);
}

#[test]
fn geometric_channel_silences_the_neighbourhood_only() {
    // A line 30 m apart with a 40 m interference range: neighbours block each other,
    // nodes two hops apart (60 m) do not.
    let s = Scenario::new(Topology::Line {
        nodes: 5,
        spacing_m: 30.0,
    })
    .seed(1)
    .channel(ChannelModel::Geometric {
        interference_range_m: 40.0,
    })
    .duration(Duration::from_secs(20))
    .traffic(
        Traffic::broadcast(Some(1), 8.0, Duration::from_secs(2))
            .payload(2000)
            .until(Duration::from_secs(18)),
    )
    .traffic(
        Traffic::broadcast(Some(5), 8.0, Duration::from_secs(2))
            .payload(2000)
            .until(Duration::from_secs(18)),
    );
    let mut run = run_of(s.clone());
    let ids: Vec<NodeId> = run.sim().node_ids();
    let pos = |id: NodeId| ids.iter().position(|x| *x == id).unwrap_or(0) as i64;
    let air: Air = Rc::default();
    let a = air.clone();
    run.sim_mut().set_frame_trace(move |f| {
        a.borrow_mut()
            .push((f.start, f.start + f.airtime, f.from, f.to))
    });
    let r = run.run();
    assert_eq!(
        overlaps(&air, |a, b| (pos(a) - pos(b)).abs() <= 1),
        0,
        "neighbours never overlap"
    );
    assert!(
        overlaps(&air, |a, b| (pos(a) - pos(b)).abs() >= 2) > 0,
        "spatial reuse"
    );
    assert_eq!(r.app.broadcasts_complete, r.app.broadcasts);
}

#[test]
fn full_queues_drop_normal_frames() {
    let link = LinkParams {
        queue_cap_bytes: 4096,
        ..LinkParams::default()
    };
    let s = Scenario::new(Topology::Line {
        nodes: 2,
        spacing_m: 30.0,
    })
    .seed(1)
    .link(link)
    .duration(Duration::from_secs(10))
    .traffic(
        Traffic::broadcast(Some(1), 200.0, Duration::from_secs(1))
            .payload(1000)
            .until(Duration::from_secs(8)),
    );
    let r = run_of(s).run();
    let full = r.drops.get("queue_full").copied().unwrap_or(0);
    assert!(full > 0, "{:?}", r.drops);
    assert_eq!(
        r.app.delivered + full,
        r.app.sent,
        "every message delivered or dropped at the queue"
    );
    assert!(r.per_node[0].queue_peak_bytes <= 4096 + 1100);
    assert!(
        r.convergence.converged_at_end,
        "node sync replies are high priority and still pass"
    );
}

#[test]
fn loss_costs_retransmissions_and_time_not_frames() {
    let run = |loss: f64, link: LinkParams| {
        let s = Scenario::new(Topology::Line {
            nodes: 3,
            spacing_m: 30.0,
        })
        .seed(4)
        .link(link)
        .duration(Duration::from_secs(60))
        .event(
            Duration::from_secs(1),
            SimEvent::SetLink {
                between: None,
                change: LinkChange::loss(loss),
            },
        )
        .traffic(
            Traffic::broadcast(Some(1), 5.0, Duration::from_secs(5))
                .payload(3000)
                .until(Duration::from_secs(45)),
        );
        run_of(s).run()
    };
    let clean = run(0.0, LinkParams::default());
    let lossy = run(0.1, LinkParams::default());
    assert_eq!(
        lossy.app.delivered, lossy.app.expected_deliveries,
        "TCP hides loss"
    );
    assert!(
        lossy
            .per_link
            .iter()
            .map(|l| l.retransmissions)
            .sum::<u64>()
            > 0
    );
    assert!(
        lossy.app.latency.p99_ms > clean.app.latency.p99_ms + 150.0,
        "an RTO is 200 ms"
    );
    // Total loss: TCP would take minutes to give up (12 doubling RTOs), so painlessMesh's
    // node-sync timeout closes the link first, and the station reconnects.
    let dead = run(1.0, LinkParams::default());
    assert!(
        dead.link_closes
            .get("node_sync_timeout")
            .is_some_and(|n| *n > 0),
        "{:?}",
        dead.link_closes
    );
    assert!(dead.per_link.len() > 2, "stations reconnect");
    // With a short retransmission limit TCP resets the connection itself.
    let short = LinkParams {
        max_retransmits: 2,
        ..LinkParams::default()
    };
    let reset = run(1.0, short);
    assert!(
        reset.drops.get("tcp_reset").is_some_and(|n| *n > 0),
        "{:?}",
        reset.drops
    );
}

#[test]
fn link_down_with_hold_keeps_the_pair_apart() {
    let s = Scenario::new(Topology::Line {
        nodes: 3,
        spacing_m: 30.0,
    })
    .seed(4)
    .duration(Duration::from_secs(60))
    .event(
        Duration::from_secs(10),
        SimEvent::LinkDown {
            a: 2,
            b: 3,
            hold: Some(Duration::from_secs(20)),
        },
    );
    let mut sim = Simulation::new(s);
    sim.run_until(Instant::ZERO + Duration::from_secs(29));
    assert_eq!(sim.components(), 2);
    assert!(sim.converged());
    sim.run_until(Instant::ZERO + Duration::from_secs(31));
    assert_eq!(sim.components(), 1);
    let r = sim.run();
    let e = r
        .convergence
        .after_events
        .iter()
        .find(|e| e.cause == "link_down 2 3")
        .expect("entry");
    assert!(e.converged_after_s.is_some_and(|s| s < 0.1), "{e:?}");
}

#[test]
fn move_changes_the_parent() {
    let s = Scenario::new(Topology::Star {
        nodes: 4,
        max_children: 4,
    })
    .seed(4)
    .duration(Duration::from_secs(30))
    .event(
        Duration::from_secs(10),
        SimEvent::Move { node: 4, parent: 3 },
    );
    let mut sim = Simulation::new(s);
    let r = sim.run();
    assert!(sim.link_between(sim.id_of(4), sim.id_of(3)).is_some());
    assert!(sim.link_between(sim.id_of(4), sim.id_of(1)).is_none());
    assert!(r.convergence.converged_at_end);
}

/// Pairs of transmissions that overlap in time and satisfy `pair`, counting only those
/// whose both starts lie in `window`.
fn overlaps_in(
    air: &Air,
    window: std::ops::Range<Instant>,
    pair: impl Fn(NodeId, NodeId) -> bool,
) -> usize {
    let v = air.borrow();
    let inside: Vec<_> = v.iter().filter(|t| window.contains(&t.0)).collect();
    let mut n = 0;
    for (i, a) in inside.iter().enumerate() {
        for b in &inside[i + 1..] {
            if pair(a.2, b.2) && a.0 < b.1 && b.0 < a.1 {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn the_channel_model_can_change_during_a_run() {
    // A line 30 m apart, flooded from both ends: independent links for 8 s, then the
    // geometric channel (40 m: neighbours block each other) until 16 s, then independent
    // links again.
    let at = |s: u64| Instant::ZERO + Duration::from_secs(s);
    let s = Scenario::new(Topology::Line {
        nodes: 5,
        spacing_m: 30.0,
    })
    .seed(1)
    .duration(Duration::from_secs(24))
    .event(
        Duration::from_secs(8),
        SimEvent::SetChannel {
            channel: ChannelModel::Geometric {
                interference_range_m: 40.0,
            },
        },
    )
    .event(
        Duration::from_secs(16),
        SimEvent::SetChannel {
            channel: ChannelModel::Independent,
        },
    )
    .traffic(
        Traffic::broadcast(Some(1), 10.0, Duration::from_secs(2))
            .payload(3000)
            .until(Duration::from_secs(22)),
    )
    .traffic(
        Traffic::broadcast(Some(5), 10.0, Duration::from_secs(2))
            .payload(3000)
            .until(Duration::from_secs(22)),
    );
    let mut run = run_of(s);
    let ids: Vec<NodeId> = run.sim().node_ids();
    let pos = |id: NodeId| ids.iter().position(|x| *x == id).unwrap_or(0) as i64;
    let near = |a: NodeId, b: NodeId| (pos(a) - pos(b)).abs() <= 1;
    let air: Air = Rc::default();
    let a = air.clone();
    run.sim_mut().set_frame_trace(move |f| {
        a.borrow_mut()
            .push((f.start, f.start + f.airtime, f.from, f.to))
    });
    assert_eq!(run.sim().channel(), &ChannelModel::Independent);
    run.run_until(at(12));
    assert_eq!(run.sim().channel().label(), "geometric");
    let r = run.run();
    assert!(
        overlaps_in(&air, at(2)..at(8), near) > 0,
        "independent: neighbours overlap"
    );
    assert_eq!(
        overlaps_in(&air, at(8)..at(16), near),
        0,
        "geometric: transmissions started after the switch never overlap a neighbour's"
    );
    assert!(
        overlaps_in(&air, at(8)..at(16), |a, b| (pos(a) - pos(b)).abs() >= 2) > 0,
        "spatial reuse"
    );
    assert!(
        overlaps_in(&air, at(16)..at(24), near) > 0,
        "independent again"
    );
    // Frames that waited for the medium at a switch are sent, not lost.
    assert_eq!(r.app.broadcasts_complete, r.app.broadcasts);
    assert_eq!(r.app.delivered, r.app.expected_deliveries);
    assert_eq!(r.channel, "independent");
}

#[test]
fn set_channel_refuses_the_geometric_model_without_positions() {
    let mut run = run_of(star_flood(ChannelModel::Airtime));
    let sim = run.sim_mut();
    let e = sim
        .set_channel(ChannelModel::Geometric {
            interference_range_m: 100.0,
        })
        .expect_err("a star has no positions");
    assert_eq!(e.field, "channel.model");
    assert_eq!(sim.channel(), &ChannelModel::Airtime);
    // The same event in a scenario is refused up front.
    let bad = star_flood(ChannelModel::Airtime).event(
        Duration::from_secs(1),
        SimEvent::SetChannel {
            channel: ChannelModel::Geometric {
                interference_range_m: 100.0,
            },
        },
    );
    let e = Simulation::try_new(bad).err().expect("invalid");
    assert_eq!(e.field, "events[0].channel.model");
    // Airtime -> independent at once: the hub's links send at the same time again.
    assert!(sim.set_channel(ChannelModel::Independent).is_ok());
    let air: Air = Rc::default();
    let a = air.clone();
    sim.set_frame_trace(move |f| {
        a.borrow_mut()
            .push((f.start, f.start + f.airtime, f.from, f.to))
    });
    run.run();
    assert!(overlaps(&air, |a, b| a == b) > 0);
}
