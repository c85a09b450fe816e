//! A campaign's frames are the lowest class in the driver's queues, and the mesh's own
//! upkeep the highest (issue 9: node-sync and time-sync frames ahead of OTA in every queue
//! a node controls; under meshfleet's node-sync policy every node sync is a control frame,
//! under the library's a node's own requests are while it sends bulk data), observed
//! through the frame trace of a real campaign.

use std::cell::RefCell;
use std::rc::Rc;

use meshfleet_mesh::{Duration, NodeId, NodeSyncPolicy, Priority};
use meshfleet_sim::ota::{synthetic_image, OtaCampaign, OtaStrategy};
use meshfleet_sim::{ChannelModel, Scenario, Simulation, Topology};

/// (priority, JSON type or `None` for a binary frame, sender, start on the air in s) of
/// every frame put on the air.
type Seen = Rc<RefCell<Vec<(Priority, Option<i64>, NodeId, f64)>>>;

fn frame_type(frame: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(frame.strip_suffix(&[0]).unwrap_or(frame)).ok()?;
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("type")?.as_i64()
}

/// Runs a meshfleet campaign on a 6-node tree (airtime channel) under `policy` and
/// returns every frame put on the air.
fn observe(policy: NodeSyncPolicy) -> Vec<(Priority, Option<i64>, NodeId, f64)> {
    // Big enough that chunks still flow when the links' periodic node syncs come due, a
    // minute after they first synced.
    let c = OtaCampaign::new(OtaStrategy::Meshfleet, synthetic_image(1024 * 1024, 5))
        .expect("packs")
        .start_at(Duration::from_secs(45));
    let mut scenario = Scenario::new(Topology::RandomTree {
        nodes: 6,
        max_children: 2,
    })
    .seed(3)
    .channel(ChannelModel::Airtime)
    .duration(Duration::from_secs(200));
    scenario.mesh.node_sync = Some(policy);
    let (scenario, run) = c.attach(scenario);
    let mut sim = Simulation::new(scenario);
    run.install(&mut sim);
    // After the campaign's own trace: this one replaces it (the report is not read).
    let seen: Seen = Rc::default();
    let s = seen.clone();
    sim.set_frame_trace(move |f| {
        let ty = if f.frame.first() == Some(&meshfleet_mesh::wire::BINARY_FRAME_MARK) {
            None
        } else {
            frame_type(f.frame)
        };
        s.borrow_mut()
            .push((f.priority, ty, f.from, f.start.as_micros() as f64 / 1e6));
    });
    sim.run();
    assert!(run.all_updated(), "the campaign completes");
    let seen = seen.borrow().clone();
    // Every binary frame here is an OTA chunk: all bulk, and there were many.
    let count = |p: Priority, f: &dyn Fn(Option<i64>) -> bool| {
        seen.iter().filter(|(q, t, _, _)| *q == p && f(*t)).count()
    };
    let binary = |t: Option<i64>| t.is_none();
    assert!(count(Priority::Bulk, &binary) > 100);
    assert_eq!(
        count(Priority::Control, &binary) + count(Priority::Normal, &binary),
        0
    );
    // Time sync (4) and node-sync replies (6): all control frames.
    let upkeep = |t: Option<i64>| matches!(t, Some(4 | 6));
    assert!(count(Priority::Control, &upkeep) > 10);
    assert_eq!(
        count(Priority::Normal, &upkeep) + count(Priority::Bulk, &upkeep),
        0
    );
    seen
}

#[test]
fn chunks_go_as_bulk_and_node_and_time_sync_ahead_of_them() {
    // meshfleet's policy: every node sync (requests, replies, digests: 5, 6, 95) is a
    // control frame, before the campaign and during it.
    let seen = observe(NodeSyncPolicy::Meshfleet);
    let sync = |t: Option<i64>| matches!(t, Some(5 | 95));
    let of = |p: Priority| {
        seen.iter()
            .filter(|(q, t, _, _)| *q == p && sync(*t))
            .count()
    };
    assert!(of(Priority::Control) > 10, "{}", of(Priority::Control));
    assert_eq!(of(Priority::Normal) + of(Priority::Bulk), 0);
    // Digests were among them: the periodic syncs of the minute after formation.
    assert!(seen.iter().any(|(_, t, _, _)| *t == Some(95)));
}

#[test]
fn under_the_library_policy_requests_are_control_frames_while_the_node_sends_bulk() {
    let seen = observe(NodeSyncPolicy::Library);
    let request = |t: Option<i64>| t == Some(5);
    // Requests (5): never bulk; normal frames, as the library queues them, until the node
    // sends bulk data, then control frames (see `meshfleet_mesh::Priority`).
    assert!(!seen
        .iter()
        .any(|(q, t, _, _)| *q == Priority::Bulk && request(*t)));
    assert!(!seen.iter().any(|(_, t, _, _)| *t == Some(95)));
    let requests = |p: Priority| {
        seen.iter()
            .filter(move |(q, t, _, _)| *q == p && request(*t))
            .map(|(_, _, from, at)| (*from, *at))
    };
    let before = |at: f64| at < 45.0;
    assert!(
        requests(Priority::Normal)
            .filter(|(_, at)| before(*at))
            .count()
            > 5
    );
    assert_eq!(
        requests(Priority::Control)
            .filter(|(_, at)| before(*at))
            .count(),
        0
    );
    let bulk_senders: Vec<NodeId> = seen
        .iter()
        .filter(|(q, _, _, _)| *q == Priority::Bulk)
        .map(|(_, _, from, _)| *from)
        .collect();
    let control: Vec<(NodeId, f64)> = requests(Priority::Control).collect();
    assert!(!control.is_empty(), "requests of nodes sending chunks");
    assert!(control.iter().all(|(from, _)| bulk_senders.contains(from)));
}
