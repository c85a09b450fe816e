//! The OTA fault scenarios of issue 15 (`meshfleet_sim::ota_faults`), a few seeds each: every
//! node must end on the verified new image in every run. The full sweep (20+ seeds per
//! fault, with the spread of completion times) is `examples/ota_faults.rs`.

use meshfleet_sim::ota_faults::{run_fault, OtaFault};

const NODES: u32 = 20;
/// The CI subset of the sweep's seeds (the example runs 1..=20 and more).
const SEEDS: [u64; 3] = [1, 7, 13];

fn check(fault: OtaFault) {
    for seed in SEEDS {
        let r = run_fault(fault, seed, NODES);
        assert!(r.all_updated(), "{r:#?}");
        assert!(r.completion_s.is_some(), "{r:#?}");
        match fault {
            OtaFault::RebootStorm | OtaFault::RebootAfterCommit => {
                // Every receiver rebooted after its commit, the storm more.
                assert!(r.reboots >= r.receivers, "{r:#?}");
            }
            OtaFault::QueueFull => assert!(r.queue_full_drops > 0, "no drop happened: {r:#?}"),
            _ => {}
        }
    }
}

#[test]
fn reboot_storm_during_and_after_the_campaign() {
    check(OtaFault::RebootStorm);
}

#[test]
fn every_node_reboots_seconds_after_committing() {
    check(OtaFault::RebootAfterCommit);
}

#[test]
fn full_send_queues_drop_control_messages() {
    check(OtaFault::QueueFull);
}

#[test]
fn a_quarter_of_all_segments_lost() {
    check(OtaFault::Loss25);
}

#[test]
fn the_source_crashes_and_returns() {
    check(OtaFault::SourceCrashReturn);
}
