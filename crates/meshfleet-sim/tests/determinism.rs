//! One seed, one run: the whole `summary.json` is reproducible bit for bit, and another
//! seed gives another run.

use meshfleet_mesh::Duration;
use meshfleet_sim::{ChannelModel, LinkChange, Run, Scenario, SimEvent, Topology, Traffic};

fn scenario(seed: u64) -> Scenario {
    Scenario::new(Topology::Grid {
        rows: 4,
        cols: 4,
        spacing_m: 30.0,
        max_children: 4,
    })
    .seed(seed)
    .channel(ChannelModel::Geometric {
        interference_range_m: 60.0,
    })
    .duration(Duration::from_secs(120))
    .event(
        Duration::from_secs(20),
        SimEvent::SetLink {
            between: None,
            change: LinkChange::loss(0.05),
        },
    )
    .event(Duration::from_secs(40), SimEvent::Crash { node: 6 })
    .event(Duration::from_secs(70), SimEvent::Reboot { node: 6 })
    .event(Duration::from_secs(80), SimEvent::Hang { node: 11 })
    .traffic(Traffic::broadcast(None, 2.0, Duration::from_secs(5)))
    .traffic(Traffic::single(None, None, 3.0, Duration::from_secs(5)))
}

#[test]
fn same_seed_same_summary_other_seed_other_summary() {
    let run = |seed| Run::new(scenario(seed)).expect("valid").run().to_json();
    let a = run(42);
    let b = run(42);
    assert_eq!(a, b);
    let c = run(43);
    assert_ne!(a, c);
}

#[test]
fn stepping_and_running_agree() {
    // The traffic runs on the simulation's own timers: stepping the simulation runs it.
    let mut stepped = Run::new(scenario(7)).expect("valid");
    let sim = stepped.sim_mut();
    while sim.now() < sim.end() && sim.step() {}
    let mut run = Run::new(scenario(7)).expect("valid");
    let end = run.sim().end();
    run.run_until(end);
    // `step` may run past the end by the events at the end time; both stop at the end.
    assert_eq!(stepped.report().frames_on_air, run.report().frames_on_air);
}
