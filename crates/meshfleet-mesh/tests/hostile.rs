//! Hostile neighbours against the mesh layer (issue 15, items 7 and 8), in virtual time:
//! forged node syncs must not cut a node off from its honest neighbours, and time may only
//! be taken, in bounded steps, from neighbours that completed node sync.
#![allow(clippy::unwrap_used)]

mod common;

use common::Net;
use meshfleet_mesh::{Config, DropReason, Duration, Event, Node, NodeId, TreeRefusal};

const V: u32 = 1; // the victim
const H: u32 = 2; // its honest neighbour
const M: u32 = 66; // the attacker

/// H <- V <- M (V a station of H, M a station of V), synced; then M goes quiet towards V
/// except for what the test injects in its name (so its own honest re-syncs do not undo a
/// forged tree). Returns the net, V, H and the wire M-V.
fn victim(max_frame_len: usize) -> (Net, usize, usize, usize) {
    let mut net = Net::new(Duration::from_millis(2));
    let node = |id| {
        let mut c = Config::new(NodeId(id));
        c.max_frame_len = max_frame_len;
        Node::new(c)
    };
    let h = net.add(node(H));
    let v = net.add(node(V));
    let m = net.add(node(M));
    net.connect(v, h);
    let wire = net.connect(m, v);
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.nodes[h].nodes(), vec![NodeId(V), NodeId(M)]);
    net.mute(wire, v);
    (net, v, h, wire)
}

/// Injects `frame` from M to V, then runs long enough for every consequence: V's re-syncs,
/// H's node-sync timeout (10 s) and a periodic sync (60 s). H's link to V must stay up and
/// H must never have received anything it could not take.
/// Returns the trees V refused and what V and H knew one second after the attack (later,
/// V's link to the quiet attacker times out and M's tree goes with it).
fn attack(net: &mut Net, v: usize, h: usize, wire: usize, frame: &str) -> Outcome {
    let mut bytes = frame.as_bytes().to_vec();
    bytes.push(0);
    net.inject(wire, v, &bytes);
    net.run_for(Duration::from_secs(1));
    let (v_knew, h_knew) = (net.nodes[v].nodes(), net.nodes[h].nodes());
    net.run_for(Duration::from_secs(89));
    let hs = net.nodes[h].stats();
    assert_eq!(
        (hs.dropped_too_long, hs.dropped_decode),
        (0, 0),
        "H got a node sync it could not parse"
    );
    assert!(net.closed(h).is_empty(), "H closed: {:?}", net.closed(h));
    assert!(net.nodes[h].nodes().contains(&NodeId(V)), "H lost V");
    assert!(net.nodes[v].nodes().contains(&NodeId(H)), "V lost H");
    // V's link to the quiet attacker times out; nothing else closes.
    assert!(net
        .closed(v)
        .iter()
        .all(|r| r.label() == "node_sync_timeout"));
    let refused = net.events[v]
        .iter()
        .filter_map(|e| match e {
            Event::FrameDropped {
                reason: DropReason::TreeRefused(r),
                ..
            } => Some(r.clone()),
            _ => None,
        })
        .collect();
    Outcome {
        refused,
        v_knew,
        h_knew,
    }
}

struct Outcome {
    refused: Vec<TreeRefusal>,
    v_knew: Vec<NodeId>,
    h_knew: Vec<NodeId>,
}

#[test]
fn a_forged_tree_listing_the_victim_is_refused() {
    for subs in [
        format!(r#"[{{"nodeId":{V}}}]"#),
        format!(r#"[{{"nodeId":70}},{{"nodeId":71,"subs":[{{"nodeId":{V}}}]}}]"#),
    ] {
        let (mut net, v, h, wire) = victim(meshfleet_wire::DEFAULT_MAX_FRAME_LEN);
        let frame = format!(r#"{{"nodeId":{M},"subs":{subs},"type":5,"dest":{V},"from":{M}}}"#);
        let out = attack(&mut net, v, h, wire, &frame);
        assert_eq!(out.refused, vec![TreeRefusal::ContainsUs], "{subs}");
        assert_eq!(net.nodes[v].stats().refused_trees, 1);
        assert_eq!(out.h_knew, vec![NodeId(V), NodeId(M)], "M's old tree stays");
    }
}

/// A node sync from M whose tree is a chain of `levels` nodes below M.
fn chain(levels: u32) -> String {
    let mut subs = String::new();
    for id in 1..=levels {
        subs.push_str(&format!(r#","subs":[{{"nodeId":{}"#, 1000 + id));
    }
    subs.push_str(&"}]".repeat(levels as usize));
    format!(r#"{{"nodeId":{M}{subs},"type":5,"dest":{V},"from":{M}}}"#)
}

#[test]
fn a_forged_chain_too_deep_to_relay_is_refused() {
    // 127 levels below M: the deepest the decoder takes, but relayed by V it would sit
    // 128 levels below V (JSON nesting 257): H would drop every node sync from V.
    let (mut net, v, h, wire) = victim(meshfleet_wire::DEFAULT_MAX_FRAME_LEN);
    let out = attack(&mut net, v, h, wire, &chain(127));
    assert_eq!(out.refused, vec![TreeRefusal::TooDeep { depth: 128 }]);
    assert_eq!(out.v_knew, vec![NodeId(H), NodeId(M)]);
    assert_eq!(net.nodes[h].stats().refused_trees, 0);

    // 126 levels: V can relay it (127 levels below V), so V takes it; H could not relay
    // V's tree (128 levels below H) and refuses it in turn, keeping V's previous tree.
    let (mut net, v, h, wire) = victim(meshfleet_wire::DEFAULT_MAX_FRAME_LEN);
    let out = attack(&mut net, v, h, wire, &chain(126));
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    assert!(out.v_knew.contains(&NodeId(1126)));
    assert!(net.nodes[h].stats().refused_trees > 0);
    assert_eq!(out.h_knew, vec![NodeId(V), NodeId(M)]);

    // 125 levels fit everywhere: H learns the whole chain.
    let (mut net, v, h, wire) = victim(meshfleet_wire::DEFAULT_MAX_FRAME_LEN);
    let out = attack(&mut net, v, h, wire, &chain(125));
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    assert!(out.h_knew.contains(&NodeId(1125)));
    assert_eq!(net.nodes[h].stats().refused_trees, 0);
}

#[test]
fn a_forged_tree_at_the_frame_cap_is_refused() {
    // A flat tree whose frame is exactly at the cap: V relays it a few bytes larger.
    let cap = 8 * 1024;
    let frame_with = |ids: &[u32]| {
        let subs: Vec<String> = ids.iter().map(|i| format!(r#"{{"nodeId":{i}}}"#)).collect();
        format!(
            r#"{{"nodeId":{M},"subs":[{}],"type":5,"dest":{V},"from":{M}}}"#,
            subs.join(",")
        )
    };
    let mut ids: Vec<u32> = Vec::new();
    while frame_with(&ids).len() + 20 <= cap {
        ids.push(1_000_000 + ids.len() as u32);
    }
    // Each 8-digit id adds one byte.
    let gap = cap - frame_with(&ids).len();
    for id in ids.iter_mut().take(gap) {
        *id += 9_000_000;
    }
    let frame = frame_with(&ids);
    assert_eq!(frame.len(), cap);

    let (mut net, v, h, wire) = victim(cap);
    let out = attack(&mut net, v, h, wire, &frame);
    assert!(
        matches!(out.refused.as_slice(), [TreeRefusal::TooLarge { sync_len, max }]
            if *sync_len > cap && *max == cap),
        "{:?}",
        out.refused
    );
    assert_eq!(out.v_knew, vec![NodeId(H), NodeId(M)]);
    assert_eq!(
        net.nodes[v].stats().dropped_too_long,
        0,
        "the frame itself fits"
    );

    // A tree that leaves room for V's own keys is taken and relayed.
    let (mut net, v, h, wire) = victim(cap);
    let out = attack(&mut net, v, h, wire, &frame_with(&ids[..ids.len() - 3]));
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    assert!(out.h_knew.contains(&NodeId(ids[0])));
}
