//! OTA campaigns under faults, in the simulator: reboots mid-transfer (the node is rebuilt
//! from the factory over the same store), a partition that heals, a node joining late and
//! the source restarting mid-campaign. Whatever happens, every receiver ends on the
//! verified new image or its old one, never on a broken one; and, where the protocol can
//! do it, every receiver ends updated.
//!
//! Small images (16-64 KiB) and at most 25 nodes, so that this runs in debug CI. meshfleet
//! runs are slowed down (pacing at 8 KB/s per link) so that the faults land mid-transfer.

use meshfleet_mesh::Duration;
use meshfleet_sim::ota::{synthetic_image, FinalImage, OtaCampaign, OtaReport, OtaStrategy};
use meshfleet_sim::{Scenario, SimEvent, Simulation, Topology};

const START: u64 = 20;

fn campaign(strategy: OtaStrategy, kib: usize) -> OtaCampaign {
    let mut c = OtaCampaign::new(strategy, synthetic_image(kib * 1024, 9))
        .expect("packs")
        .start_at(Duration::from_secs(START));
    // ~8 chunks/s per link: a 64 KiB image (~42 chunks) takes ~5 s per hop.
    c.meshfleet.link_rate = 8_000;
    c
}

fn tree(nodes: u32, seed: u64) -> Scenario {
    Scenario::new(Topology::RandomTree {
        nodes,
        max_children: 3,
    })
    .seed(seed)
    .duration(Duration::from_secs(300))
}

fn at(s: f64) -> Duration {
    Duration::from_micros((s * 1e6) as u64)
}

fn updated_after(r: &OtaReport, node: u32) -> f64 {
    r.per_node
        .iter()
        .find(|n| n.node == node)
        .and_then(|n| n.updated_after_s)
        .unwrap_or(f64::NAN)
}

fn run(c: &OtaCampaign, scenario: Scenario) -> OtaReport {
    let (scenario, run) = c.attach(scenario);
    let mut sim = Simulation::new(scenario);
    run.install(&mut sim);
    sim.run();
    run.report(&sim)
}

/// Nobody is left on a broken image, and the report adds up.
fn never_broken(r: &OtaReport) {
    assert_eq!(r.final_broken, 0, "{r:#?}");
    assert_eq!(r.final_new + r.final_old, r.receivers);
    assert_eq!(r.counters.verify_failed, 0);
    assert_eq!(r.counters.store_errors, 0);
    for n in &r.per_node {
        // Reported updated <=> its storage says new.
        assert_eq!(
            n.updated_after_s.is_some(),
            n.image == FinalImage::New,
            "node {}",
            n.node
        );
    }
}

fn all_updated(r: &OtaReport) {
    never_broken(r);
    assert_eq!(r.updated, r.receivers, "{r:#?}");
    assert_eq!(r.final_new, r.receivers);
}

/// A node with children in the random tree of `tree(nodes, seed)`: parents are earlier
/// numbers, and node 2's parent is 1, so node 2 relays for someone in any tree this size.
const RELAY: u32 = 2;

#[test]
fn meshfleet_nodes_rebooted_mid_transfer_resume_and_end_on_the_new_image() {
    let c = campaign(OtaStrategy::Meshfleet, 64);
    let s = tree(20, 3)
        // Mid-transfer (an undisturbed node finishes ~5 s after the start): a relay (its
        // subtree loses its upstream) and a node four hops down.
        .event(at(START as f64 + 3.0), SimEvent::Reboot { node: RELAY })
        .event(at(START as f64 + 5.0), SimEvent::Reboot { node: 11 })
        // After they finished: an updated node reboots into its new image (on trial,
        // confirmed) and must stay there.
        .event(at(START as f64 + 9.0), SimEvent::Reboot { node: RELAY })
        .event(at(START as f64 + 12.0), SimEvent::Reboot { node: 17 });
    let r = run(&c, s);
    all_updated(&r);
    // The reboots did land mid-transfer: both finished after theirs (+ the rejoin).
    assert!(updated_after(&r, RELAY) > 5.0, "{r:#?}");
    assert!(updated_after(&r, 11) > 6.0, "{r:#?}");
    // Resume, not restart: far less than a second copy of the payload per reboot.
    let copies = r.ota_bytes_on_air as f64 / r.payload_bytes as f64;
    assert!(
        copies < f64::from(r.receivers) * 1.3,
        "{copies} payload copies"
    );
}

#[test]
fn stock_nodes_rebooted_mid_transfer_start_over_and_still_update() {
    let c = campaign(OtaStrategy::Stock, 16);
    let s = tree(12, 4)
        .event(at(START as f64 + 0.4), SimEvent::Reboot { node: 5 })
        .event(at(START as f64 + 0.5), SimEvent::Reboot { node: RELAY });
    let r = run(&c, s);
    all_updated(&r);
    // Mid-transfer: the library keeps nothing, the nodes start over once the rejoin makes
    // the source announce again (an undisturbed node here takes < 1 s).
    assert!(updated_after(&r, 5) > 1.0, "{r:#?}");
    assert!(updated_after(&r, RELAY) > 1.0, "{r:#?}");
}

#[test]
fn a_partition_that_heals_mid_transfer() {
    let c = campaign(OtaStrategy::Meshfleet, 64);
    // Cut node 2 (a relay) and a few others off for 30 s while they are receiving.
    let s = tree(20, 5)
        .event(
            at(START as f64 + 4.0),
            SimEvent::Partition {
                nodes: vec![2, 7, 13],
            },
        )
        .event(at(START as f64 + 34.0), SimEvent::Heal);
    let r = run(&c, s);
    all_updated(&r);
    // The cut nodes were mid-transfer: they finished after the heal.
    for node in [2, 7, 13] {
        assert!(updated_after(&r, node) > 34.0, "node {node}: {r:#?}");
    }
}

#[test]
fn a_node_joining_late_gets_the_update() {
    let c = campaign(OtaStrategy::Meshfleet, 32);
    // Node 15 joins after everyone else has finished (the campaign takes ~10 s).
    let s = tree(16, 6).event(
        at(START as f64 + 60.0),
        SimEvent::Join {
            node: 15,
            parent: None,
        },
    );
    let r = run(&c, s);
    all_updated(&r);
    let late = r.per_node.iter().find(|n| n.node == 15).expect("node 15");
    assert!(late.updated_after_s.is_some_and(|t| t > 60.0), "{late:?}");
}

#[test]
fn a_late_joiner_in_stock_broadcast_mode_stays_on_its_old_image() {
    // The library's broadcast mode: only the root requests, so a node that joins after the
    // root finished waits for broadcasts that never come. It must stay on its old image
    // (the faithful outcome), never a broken one; everyone else updates.
    let c = campaign(OtaStrategy::StockBroadcasted, 16);
    let s = tree(12, 7).event(
        at(START as f64 + 60.0),
        SimEvent::Join {
            node: 9,
            parent: None,
        },
    );
    let r = run(&c, s);
    never_broken(&r);
    let late = r.per_node.iter().find(|n| n.node == 9).expect("node 9");
    assert_eq!(late.image, FinalImage::Old);
    assert_eq!(r.updated, r.receivers - 1);
}

#[test]
fn the_source_restarting_mid_campaign() {
    for strategy in [OtaStrategy::Meshfleet, OtaStrategy::Stock] {
        let kib = if strategy == OtaStrategy::Stock {
            16
        } else {
            64
        };
        let c = campaign(strategy, kib);
        // Stock: ~0.25 s per node for 16 parts, so 0.5 s is mid-campaign.
        let t = if strategy == OtaStrategy::Stock {
            0.5
        } else {
            4.0
        };
        let s = tree(15, 8).event(at(START as f64 + t), SimEvent::Reboot { node: 1 });
        let r = run(&c, s);
        all_updated(&r);
        // Someone was still receiving when the source went down.
        let last = r.last_update_s.unwrap_or(0.0);
        assert!(last > t + 1.0, "{strategy:?}: {r:#?}");
    }
}
