//! What one controller input costs as the fleet grows: a healthy rollout over the fake fleet
//! of the tests (a health report from every node every 30 s, 60-120 s transfers), timed
//! end to end (fleet and controller together). CPU time is this thread's time on a CPU
//! (`/proc/thread-self/schedstat`), so other load on the machine does not inflate it.
//!
//! `cargo run --release -p meshfleet-rollout --example step_cost [-- 100 1000 5000]`
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Instant as Wall;

use common::{config, tree, Build, Fleet};
use meshfleet_rollout::{Instant, Phase, Rollout};

fn main() {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000, 5000]
    } else {
        sizes
    };
    println!("nodes  max_in_flight  virtual_h  steps  wall_ms  cpu_ms  cpu_ns_per_step  phase");
    for n in sizes {
        // 10 branches of relays with leaves; in-flight cap grows with the fleet like a
        // gateway's would (1 %, at least 10).
        let leaves = (n / 10).saturating_sub(1).max(1);
        let mut fleet = Fleet::new(tree(10, leaves), Build::Good, &BTreeMap::new());
        let mut cfg = config(1);
        cfg.max_in_flight = (n / 100).max(10);
        let cap = cfg.max_in_flight;
        let mut r = Rollout::new(Instant::ZERO, cfg, fleet.infos.clone()).unwrap();
        let mut inputs = 0u64;
        let wall = Wall::now();
        let cpu0 = cpu_ns();
        loop {
            while let Some(o) = r.poll_order() {
                fleet.apply(fleet.now, o);
            }
            while r.poll_event().is_some() {}
            if matches!(r.phase(), Phase::Completed | Phase::Aborted { .. }) {
                break;
            }
            let tr = r.poll_timeout().map(|(t, _)| t);
            let tf = fleet.next_time();
            let Some(next) = [tr, tf].into_iter().flatten().min() else {
                break;
            };
            fleet.now = next;
            inputs += 1;
            if tf == Some(next) {
                fleet.step(next, &mut r);
            } else {
                r.handle_timeout(next);
            }
        }
        let el = wall.elapsed();
        let cpu = cpu_ns().saturating_sub(cpu0);
        println!(
            "{:5}  {:13}  {:9.1}  {:6}  {:7}  {:6}  {:15}  {:?}",
            fleet.infos.len(),
            cap,
            fleet.now.as_micros() as f64 / 3.6e9,
            inputs,
            el.as_millis(),
            cpu / 1_000_000,
            cpu / inputs.max(1),
            r.phase()
        );
    }
}

/// This thread's CPU time in ns (Linux); 0 elsewhere.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
