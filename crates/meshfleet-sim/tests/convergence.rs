//! The mesh forms through real node sync: node lists converge, broadcasts reach every node
//! exactly once, singles arrive, and time sync brings mesh times together.

use meshfleet_mesh::Duration;
use meshfleet_sim::{Formation, Run, Scenario, SimReport, Topology, Traffic, ESP8266_MAX_CONN};

/// Runs the scenario with its workloads (its traffic).
fn run(s: Scenario) -> SimReport {
    Run::new(s).expect("a valid scenario").run()
}

fn check_traffic(r: &SimReport) {
    assert!(r.convergence.converged_at_end, "{:#?}", r.convergence);
    assert_eq!(r.convergence.components_at_end, 1);
    assert!(r.convergence.formation_converged_s.is_some());
    assert_eq!(r.app.not_sent, 0, "{:#?}", r.app);
    assert_eq!(r.app.duplicates, 0, "{:#?}", r.app);
    assert_eq!(r.app.delivered, r.app.expected_deliveries, "{:#?}", r.app);
    assert_eq!(r.app.broadcasts_complete, r.app.broadcasts, "{:#?}", r.app);
    assert!(r.app.broadcasts > 0);
}

fn with_traffic(s: Scenario, n: u32, start: Duration) -> Scenario {
    s.traffic(Traffic::broadcast(Some(1), 1.0, start).payload(100))
        .traffic(Traffic::broadcast(Some(n), 0.5, start))
        .traffic(Traffic::single(Some(n), Some(1), 2.0, start))
        .traffic(Traffic::single(None, None, 2.0, start))
}

#[test]
fn three_chain_converges_and_delivers() {
    let s = Scenario::new(Topology::Line {
        nodes: 3,
        spacing_m: 30.0,
    })
    .seed(3)
    .duration(Duration::from_secs(240));
    let r = run(with_traffic(s, 3, Duration::from_secs(5)));
    check_traffic(&r);
    // One and two hops at the calibrated 2.49 ms per hop.
    assert!(
        r.app.latency.p50_ms > 2.0 && r.app.latency.p50_ms < 6.0,
        "{:?}",
        r.app.latency
    );
    assert!(r.app.latency.max_ms < 50.0, "{:?}", r.app.latency);
    // The library's own transcripts converge three nodes in 25-40 ms (PROTOCOL.md §3).
    let formed = r.convergence.after_events[0]
        .converged_after_s
        .expect("formed");
    assert!(formed < 0.3, "{formed}");
}

#[test]
fn time_sync_without_drift_agrees_within_a_millisecond() {
    let s = Scenario::new(Topology::Line {
        nodes: 3,
        spacing_m: 30.0,
    })
    .seed(11)
    .drift_ppm(0.0)
    .duration(Duration::from_secs(180));
    let r = run(s);
    let spread = r.time_sync.max_spread_last_minute_us.expect("sampled");
    println!("3-chain, no drift: mesh-time spread over the last minute {spread} us");
    assert!(spread < 1_000, "{spread}");
}

#[test]
fn time_sync_with_drift_is_bounded_by_drift_between_syncs() {
    // ±20 ppm per node: two nodes drift apart by up to 40 µs per second, and the library
    // corrects once a minute, so spreads of a few ms are the protocol's real behaviour.
    let s = Scenario::new(Topology::Line {
        nodes: 3,
        spacing_m: 30.0,
    })
    .seed(11)
    .duration(Duration::from_secs(300));
    let r = run(s);
    let spread = r.time_sync.max_spread_last_minute_us.expect("sampled");
    println!("3-chain, ±20 ppm: mesh-time spread over the last minute {spread} us");
    assert!(spread < 5_000, "{spread}");
}

#[test]
fn grid_converges_and_delivers() {
    let s = Scenario::new(Topology::Grid {
        rows: 5,
        cols: 5,
        spacing_m: 30.0,
        max_children: ESP8266_MAX_CONN,
    })
    .seed(5)
    .drift_ppm(0.0)
    .duration(Duration::from_secs(200));
    let r = run(with_traffic(s, 25, Duration::from_secs(10)));
    check_traffic(&r);
    // Over several hops the spread is set by the channel, not by drift: a TIME_SYNC request
    // stamped with t0 when queued waits behind the node-sync frame on the air (the timers
    // of both align every minute, PROTOCOL.md Q9), and NTP's offset formula turns that
    // one-way asymmetry into an error of half the wait. With an ideal channel the same
    // run agrees to the microsecond (see `ideal_channel_time_sync_is_exact`).
    let spread = r.time_sync.max_spread_last_minute_us.expect("sampled");
    println!(
        "grid 5x5, no drift: spread {spread} us, formed after {:?} s",
        r.convergence.formation_converged_s
    );
    assert!(spread < 20_000, "{spread}");
}

#[test]
fn ideal_channel_time_sync_is_exact() {
    let link = meshfleet_sim::LinkParams {
        goodput_bytes_per_s: 1e10,
        frame_overhead: Duration::ZERO,
        ..Default::default()
    };
    let s = Scenario::new(Topology::Grid {
        rows: 5,
        cols: 5,
        spacing_m: 30.0,
        max_children: ESP8266_MAX_CONN,
    })
    .seed(5)
    .drift_ppm(0.0)
    .link(link)
    .duration(Duration::from_secs(150));
    let r = run(s);
    let spread = r.time_sync.max_spread_last_minute_us.expect("sampled");
    println!("grid 5x5, ideal channel, no drift: spread {spread} us");
    assert!(spread < 100, "{spread}");
}

#[test]
fn random_tree_200_converges_and_delivers() {
    let s = Scenario::new(Topology::RandomTree {
        nodes: 200,
        max_children: ESP8266_MAX_CONN,
    })
    .seed(8)
    .formation(Formation {
        start: Duration::ZERO,
        interval: Duration::from_millis(20),
        jitter: Duration::ZERO,
    })
    .duration(Duration::from_secs(90));
    let r = run(with_traffic(s, 200, Duration::from_secs(30)));
    check_traffic(&r);
    println!(
        "random tree 200: formed after {:?} s, spread {:?} us, latency p50 {} ms p99 {} ms",
        r.convergence.formation_converged_s,
        r.time_sync.final_spread_us,
        r.app.latency.p50_ms,
        r.app.latency.p99_ms
    );
}
