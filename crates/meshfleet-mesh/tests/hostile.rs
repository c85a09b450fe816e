//! Hostile neighbours against the mesh layer (issue 15, items 7 and 8), in virtual time:
//! forged node syncs must not cut a node off from its honest neighbours, and time may only
//! be taken, in bounded steps, from neighbours that completed node sync.
#![allow(clippy::unwrap_used)]

mod common;

use common::Net;
use meshfleet_mesh::{
    Config, DropReason, Duration, Event, Instant, LinkId, LinkRole, Node, NodeId, TimeRefusal,
    TreeRefusal,
};

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

/// H and V synced in time (V, the lower id, took H's), and M connected to V as a station.
/// With `m_synced`, M's first node sync reaches V; otherwise everything M sends V is lost
/// and the link stays unsynced. Either way, from then on V hears from M only what the test
/// injects. Returns the net, V, M and the wire M-V.
fn timed(m_synced: bool) -> (Net, usize, usize, usize) {
    let mut net = Net::new(Duration::from_millis(2));
    let h = net.add_with_offset(H, 2_000_000_000);
    let v = net.add_with_offset(V, 0);
    let m = net.add_with_offset(M, 0);
    net.connect(v, h);
    net.run_for(Duration::from_secs(5));
    assert!(net.nodes[v].stats().time_adjustments > 0, "V took H's time");
    if !m_synced {
        net.drop_if = Some(Box::new(move |s| s.from == m && s.to == v));
    }
    let wire = net.connect(m, v);
    net.run_for(Duration::from_millis(100));
    net.mute(wire, v);
    net.drop_if = None;
    assert_eq!(net.nodes[v].nodes().contains(&NodeId(M)), m_synced);
    (net, v, m, wire)
}

fn inject(net: &mut Net, wire: usize, v: usize, text: &str) {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    net.inject(wire, v, &bytes);
}

/// A TIME_REPLY from M to V answering `t0`, claiming M's clock is `ahead` µs ahead.
fn reply(t0: u32, ahead: u32) -> String {
    let t1 = t0.wrapping_add(ahead);
    let t2 = t1.wrapping_add(1_000);
    format!(
        r#"{{"type":4,"dest":{V},"from":{M},"msg":{{"type":2,"t0":{t0},"t1":{t1},"t2":{t2}}}}}"#
    )
}

fn time_refusals(net: &Net, v: usize) -> Vec<TimeRefusal> {
    net.events[v]
        .iter()
        .filter_map(|e| match e {
            Event::FrameDropped {
                reason: DropReason::TimeRefused(r),
                ..
            } => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// `t0` of the TIME_REQUESTs V sent M, in order.
fn requests(net: &Net, v: usize, m: usize) -> Vec<u32> {
    net.trace
        .iter()
        .filter(|s| s.from == v && s.to == m && s.ty() == Some(4))
        .filter_map(|s| {
            let msg = &s.json.as_ref()?["msg"];
            (msg["type"] == 1).then(|| msg["t0"].as_u64().map(|t| t as u32))?
        })
        .collect()
}

#[test]
fn an_unsynced_link_cannot_move_mesh_time() {
    let (mut net, v, m, wire) = timed(false);
    let before = net.nodes[v].time_offset();
    let t0 = net.nodes[v].mesh_time(net.now);
    inject(&mut net, wire, v, &reply(t0, 1 << 30));
    // "Ask me for my time" is not answered either.
    inject(
        &mut net,
        wire,
        v,
        &format!(r#"{{"type":4,"dest":{V},"from":{M},"msg":{{"type":0}}}}"#),
    );
    net.run_for(Duration::from_millis(500));
    assert_eq!(net.nodes[v].time_offset(), before);
    assert_eq!(
        time_refusals(&net, v),
        vec![TimeRefusal::Unsynced, TimeRefusal::Unsynced]
    );
    assert!(requests(&net, v, m).is_empty());
}

#[test]
fn a_synced_neighbour_moves_mesh_time_only_when_asked_and_in_bounded_steps() {
    let (mut net, v, m, wire) = timed(true);
    let before = net.nodes[v].time_offset();
    // An unsolicited reply, and a request to be asked from a neighbour whose time V does
    // not take (V's side is the larger): both refused.
    let t0 = net.nodes[v].mesh_time(net.now);
    inject(&mut net, wire, v, &reply(t0, 1 << 30));
    let ask = format!(r#"{{"type":4,"dest":{V},"from":{M},"msg":{{"type":0}}}}"#);
    inject(&mut net, wire, v, &ask);
    net.run_for(Duration::from_millis(10));
    assert_eq!(
        time_refusals(&net, v),
        vec![TimeRefusal::Unsolicited, TimeRefusal::NotOurSource]
    );
    assert_eq!(net.nodes[v].time_offset(), before);

    // M claims time authority: V now takes M's time, and asks for it. M answers every
    // request 2^30 µs (18 minutes) ahead, and asks to be asked again at once, for 2 s.
    inject(
        &mut net,
        wire,
        v,
        &format!(r#"{{"nodeId":{M},"hasTimeAuthority":true,"type":5,"dest":{V},"from":{M}}}"#),
    );
    let start = net.now;
    let mut answered = 0;
    while net.now < start + Duration::from_secs(2) {
        inject(&mut net, wire, v, &ask);
        net.run_for(Duration::from_millis(5));
        let asked = requests(&net, v, m);
        if asked.len() > answered {
            let t0 = asked[asked.len() - 1];
            answered = asked.len();
            inject(&mut net, wire, v, &reply(t0, 1 << 30));
        }
        net.run_for(Duration::from_millis(5));
    }
    assert!(answered > 50, "V asked {answered} times");
    let moved = net.nodes[v].time_offset().wrapping_sub(before) as i32;
    let steps = net.nodes[v].stats().time_steps_bounded;
    // One step of at most `max_time_step` per 200 ms: at most 11 steps in 2 s, each cut
    // below the 2^30 µs the reply claims.
    let max_step = meshfleet_mesh::Config::new(NodeId(V))
        .max_time_step
        .as_micros() as i64;
    assert!(max_step < 1 << 30);
    assert!((1..=11).contains(&steps), "{steps} steps");
    assert!(
        i64::from(moved) <= steps as i64 * max_step && moved > 0,
        "moved {moved} us in {steps} steps"
    );
    assert!(time_refusals(&net, v).contains(&TimeRefusal::TooSoon));
    // A reply to a request already answered is refused.
    let t0 = *requests(&net, v, m).last().unwrap();
    let n = time_refusals(&net, v).len();
    inject(&mut net, wire, v, &reply(t0, 1 << 30));
    assert_eq!(time_refusals(&net, v)[n..], [TimeRefusal::Unsolicited]);
}

/// The library's frames of transcript 01 from B (3000000002), whose time A (1001) adopts.
fn transcript_01_from_b() -> Vec<(f64, serde_json::Value)> {
    let path = format!(
        "{}/../../../shared/painlessmesh/transcripts/01_two_node.jsonl",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot read {path} ({e}): the shared/ folder must sit next to the project root")
    });
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["kind"] == "frame" && l["src"] == "B")
        .map(|l| (l["t"].as_f64().unwrap(), l["json"].clone()))
        .collect()
}

#[test]
fn our_node_still_takes_time_from_the_library() {
    // Our node plays A; B's node sync, "ask me for my time" and TIME_REPLY are the
    // library's frames. The library echoes the t0 it was sent: B's reply carries our t0,
    // with B's t1 and t2 as far from it as in the capture.
    let frames = transcript_01_from_b();
    let start = frames[0].0;
    let mut node = Node::new(Config::new(NodeId(1001)));
    let link = LinkId(1);
    node.handle_link_up(Instant::ZERO, link, LinkRole::AccessPoint);
    let mut our_t0 = None;
    let mut adjusted = Vec::new();
    for (t, mut json) in frames.into_iter().take(3) {
        let now = Instant::from_micros(((t - start) * 1e6) as u64);
        if json["type"] == 4 && json["msg"]["type"] == 2 {
            let msg = &mut json["msg"];
            let (t0, t1, t2) = (
                msg["t0"].as_u64().unwrap(),
                msg["t1"].as_u64().unwrap(),
                msg["t2"].as_u64().unwrap(),
            );
            let ours: u32 = our_t0.expect("our node asked for B's time");
            let shift = |t: u64| u64::from(ours.wrapping_add(t.wrapping_sub(t0) as u32));
            msg["t0"] = ours.into();
            msg["t1"] = shift(t1).into();
            msg["t2"] = shift(t2).into();
        }
        let mut bytes = json.to_string().into_bytes();
        bytes.push(0);
        node.handle_bytes(now, link, &bytes);
        while let Some(tx) = node.poll_transmit() {
            let sent: serde_json::Value =
                serde_json::from_slice(&tx.frame[..tx.frame.len() - 1]).unwrap();
            if sent["type"] == 4 && sent["msg"]["type"] == 1 {
                our_t0 = sent["msg"]["t0"].as_u64().map(|t| t as u32);
            }
        }
        while let Some(e) = node.poll_event() {
            if let Event::TimeAdjusted { offset, .. } = e {
                adjusted.push(offset);
            }
            assert!(!matches!(e, Event::FrameDropped { .. }), "{e:?}");
        }
    }
    // The library's A took +2,099,999,968 µs from the same exchange.
    assert_eq!(adjusted.len(), 1, "{adjusted:?}");
    assert!((adjusted[0] - 2_099_999_968).abs() < 1_000, "{adjusted:?}");
}
