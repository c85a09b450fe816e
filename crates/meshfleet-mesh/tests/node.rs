//! The node against the library's observed behaviour, in virtual time (no sockets).
#![allow(clippy::unwrap_used)]

mod common;

use common::Net;
use meshfleet_mesh::wire::{Package, Routing};
use meshfleet_mesh::{
    Claims, CloseReason, Config, Ctx, Delivery, Duration, Event, Instant, LinkId, LinkRole, Node,
    NodeId, NodeSyncPolicy, Plugin, Priority,
};
use serde_json::Value;

const MS: Duration = Duration::from_millis(1);

fn transcript(name: &str) -> Vec<Value> {
    let path = format!(
        "{}/../../../shared/painlessmesh/transcripts/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot read {path} ({e}): the shared/ folder must sit next to the project root")
    });
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Replaces time stamps (which depend on each run's clocks) with 0.
fn mask(mut v: Value) -> Value {
    if let Some(msg) = v.get_mut("msg").and_then(Value::as_object_mut) {
        for k in ["t0", "t1", "t2"] {
            if let Some(t) = msg.get_mut(k) {
                assert!(t.is_u64(), "{k} must be an unsigned integer");
                *t = Value::from(0);
            }
        }
    }
    v
}

/// Plays one side of transcript 01's connection opening against our node, which plays
/// the other side; our node must send exactly the frames the library sent, plus one:
/// meshfleet's digest-sync hello (type 95, NEIGHBOUR), which the library ignores
/// (PROTOCOL.md §4.7: unknown types are routed by `routing`, then silently dropped). It
/// is checked and set aside here.
fn replay_opening(ours: &str) {
    let frames: Vec<Value> = transcript("01_two_node.jsonl")
        .into_iter()
        .filter(|l| l["kind"] == "frame")
        .take(5)
        .collect();
    let t_start = frames[0]["t"].as_f64().unwrap();
    let (id, role) = if ours == "A" {
        (1001, LinkRole::AccessPoint)
    } else {
        (3_000_000_002, LinkRole::Station)
    };
    let mut node = Node::new(Config::new(NodeId(id)));
    let link = LinkId(1);
    let mut now = Instant::ZERO;
    let mut hellos = 0;
    let mut next_frame = |node: &mut Node| {
        while let Some(t) = node.poll_transmit() {
            let v: Value = serde_json::from_slice(&t.frame[..t.frame.len() - 1]).unwrap();
            if v["type"] == 95 {
                assert_eq!(v["routing"], 0, "{v}");
                assert_eq!(v["sync"], "hello", "{v}");
                hellos += 1;
                continue;
            }
            return Some(t);
        }
        None
    };
    node.handle_link_up(now, link, role);
    for f in &frames {
        now = now.max(Instant::from_micros(
            ((f["t"].as_f64().unwrap() - t_start) * 1e6) as u64,
        ));
        if f["src"] == ours {
            // Let timers due by now (and the 1 ms reply hold) run, then expect the frame.
            let deadline = now + Duration::from_millis(2);
            let sent = loop {
                if let Some(t) = next_frame(&mut node) {
                    break t;
                }
                let at = node.poll_timeout().expect("a timer is pending");
                assert!(
                    at <= deadline,
                    "our node sends nothing where the library sent {}",
                    f["text"]
                );
                now = now.max(at);
                node.handle_timeout(now);
            };
            assert_eq!(*sent.frame.last().unwrap(), 0, "frames end with NUL");
            let ours_json: Value =
                serde_json::from_slice(&sent.frame[..sent.frame.len() - 1]).unwrap();
            assert_eq!(mask(ours_json), mask(f["json"].clone()), "as {ours}");
        } else {
            let mut bytes = f["text"].as_str().unwrap().as_bytes().to_vec();
            bytes.push(0);
            node.handle_bytes(now, link, &bytes);
        }
    }
    assert!(next_frame(&mut node).is_none());
    assert_eq!(node.nodes().len(), 1);
    assert_eq!(hellos, 1, "one hello once the link is synced");
}

#[test]
fn opening_sequence_of_transcript_01_as_access_point() {
    replay_opening("A");
}

#[test]
fn opening_sequence_of_transcript_01_as_station() {
    replay_opening("B");
}

fn chain() -> Net {
    // A <- B <- C as in 02_three_chain (ids 1, 2, 3), 2.5 ms per hop.
    let mut net = Net::new(Duration::from_micros(2_500));
    let a = net.add_with_offset(1, 100_000_000);
    let b = net.add_with_offset(2, 1_200_000_000);
    let c = net.add_with_offset(3, 2_700_000_000);
    net.connect(b, a);
    net.run_for(Duration::from_millis(100));
    net.connect(c, b);
    net.run_for(Duration::from_secs(1));
    net
}

#[test]
fn node_lists_converge_in_a_chain() {
    let net = chain();
    assert_eq!(net.nodes[0].nodes(), vec![NodeId(2), NodeId(3)]);
    assert_eq!(net.nodes[1].nodes(), vec![NodeId(1), NodeId(3)]);
    assert_eq!(net.nodes[2].nodes(), vec![NodeId(1), NodeId(2)]);
    let topo = serde_json::to_value(net.nodes[0].topology()).unwrap();
    assert_eq!(
        topo,
        serde_json::json!({"nodeId":1,"subs":[{"nodeId":2,"subs":[{"nodeId":3}]}]})
    );
}

#[test]
fn single_and_broadcast_route_through_the_middle() {
    let mut net = chain();
    let now = net.now;
    net.nodes[2].send_single(now, NodeId(1), "C to A").unwrap();
    net.drain(2);
    net.nodes[0].send_single(now, NodeId(3), "A to C").unwrap();
    net.drain(0);
    net.nodes[0].send_broadcast(now, "from A");
    net.drain(0);
    net.nodes[1].send_broadcast(now, "from B");
    net.drain(1);
    assert!(
        net.nodes[0]
            .send_single(now, NodeId(4242), "nowhere")
            .is_err(),
        "unknown dest refused"
    );
    net.run_for(Duration::from_millis(50));
    let got = |i: usize| net.received(i);
    let a = got(0);
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(a.contains(&(NodeId(3), "C to A".into(), Delivery::Single)));
    assert!(a.contains(&(NodeId(2), "from B".into(), Delivery::Broadcast)));
    // B relays the singles but does not deliver them, and gets A's broadcast once.
    assert_eq!(
        got(1),
        vec![(NodeId(1), "from A".into(), Delivery::Broadcast)]
    );
    let c = got(2);
    assert_eq!(c.len(), 3, "{c:?}");
    assert!(c.contains(&(NodeId(1), "A to C".into(), Delivery::Single)));
    assert!(c.contains(&(NodeId(1), "from A".into(), Delivery::Broadcast)));
    assert!(c.contains(&(NodeId(2), "from B".into(), Delivery::Broadcast)));
    assert!(net.nodes[1].stats().forwarded >= 3);
}

fn spread(net: &Net) -> u32 {
    let times: Vec<u32> = net.nodes.iter().map(|n| n.mesh_time(net.now)).collect();
    let mut worst = 0;
    for a in &times {
        for b in &times {
            worst = worst.max(a.wrapping_sub(*b).min(b.wrapping_sub(*a)));
        }
    }
    worst
}

#[test]
fn time_sync_converges_within_a_millisecond_and_the_right_node_adopts() {
    // Two nodes: the lower id adopts the higher id's time (01_two_node: A 1001 took B's).
    let mut net = Net::new(Duration::from_micros(2_500));
    let a = net.add_with_offset(1001, 100_000_000);
    let b = net.add_with_offset(3_000_000_002, 2_200_000_000);
    net.connect(b, a);
    net.run_for(Duration::from_secs(5));
    assert!(spread(&net) < 1_000, "spread {} us", spread(&net));
    assert_eq!(
        net.nodes[b].time_offset(),
        2_200_000_000,
        "B keeps its time"
    );
    assert_ne!(net.nodes[a].time_offset(), 100_000_000, "A adopted");

    // Chain: the middle node has the larger side on both links, so A and C take B's time.
    let mut net = chain();
    net.run_for(Duration::from_secs(120));
    assert!(spread(&net) < 1_000, "spread {} us", spread(&net));
    assert_eq!(net.nodes[1].time_offset(), 1_200_000_000, "B is the source");
}

#[test]
fn killed_peer_is_noticed_and_far_nodes_update() {
    let mut net = chain();
    net.cut(1); // C's link to B resets
    net.run_for(Duration::from_millis(20));
    assert_eq!(net.nodes[1].nodes(), vec![NodeId(1)]);
    assert_eq!(
        net.nodes[0].nodes(),
        vec![NodeId(2)],
        "B re-syncs A at once"
    );
}

#[test]
fn silent_peers_are_dropped_after_the_library_timeouts() {
    // A station whose AP never answers closes after NODE_TIMEOUT (10 s).
    let mut net = Net::new(MS);
    let ap = net.add_with_offset(10, 0);
    let sta = net.add_with_offset(23, 0);
    let w = net.connect(sta, ap);
    net.mute(w, sta);
    net.run_for(Duration::from_millis(9_990));
    assert!(net.closed(sta).is_empty());
    net.run_for(Duration::from_millis(20));
    assert_eq!(net.closed(sta), vec![CloseReason::NodeSyncTimeout]);

    // An AP whose station never talks: request at +10 s, closed at +20 s.
    let mut net = Net::new(MS);
    let ap = net.add_with_offset(21, 0);
    let sta = net.add_with_offset(7, 0);
    let w = net.connect(sta, ap);
    net.mute(w, ap);
    net.run_for(Duration::from_millis(19_990));
    assert!(net.closed(ap).is_empty());
    net.run_for(Duration::from_millis(20));
    assert_eq!(net.closed(ap), vec![CloseReason::NodeSyncTimeout]);

    // A synced peer that hangs (03_stalled_node): detected by the next request + 10 s.
    let mut net = Net::new(MS);
    let a = net.add_with_offset(1, 0);
    let b = net.add_with_offset(2, 0);
    let w = net.connect(b, a);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.nodes[a].nodes(), vec![NodeId(2)]);
    net.mute(w, a);
    net.run_for(Duration::from_secs(19));
    assert_eq!(
        net.closed(a),
        vec![CloseReason::NodeSyncTimeout],
        "A's first request at +10 s, timeout +10 s"
    );
}

/// A node with one accepted link from a scripted peer.
fn scripted(id: u32) -> (Node, LinkId) {
    let mut n = Node::new(Config::new(NodeId(id)));
    n.handle_link_up(Instant::ZERO, LinkId(1), LinkRole::AccessPoint);
    (n, LinkId(1))
}

fn feed(n: &mut Node, link: LinkId, text: &str) -> Vec<Event> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    n.handle_bytes(Instant::from_micros(1_000), link, &bytes);
    std::iter::from_fn(|| n.poll_event()).collect()
}

fn closed_with(events: &[Event]) -> Option<CloseReason> {
    events.iter().find_map(|e| match e {
        Event::LinkClosed { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

#[test]
fn duplicate_ids_and_forged_node_syncs_close_the_link() {
    // Second link announcing a node we already reach.
    let (mut n, l1) = scripted(21);
    feed(&mut n, l1, r#"{"nodeId":22,"type":5,"dest":0,"from":22}"#);
    n.handle_link_up(Instant::ZERO, LinkId(2), LinkRole::AccessPoint);
    let ev = feed(
        &mut n,
        LinkId(2),
        r#"{"nodeId":22,"type":5,"dest":0,"from":22}"#,
    );
    assert_eq!(
        closed_with(&ev),
        Some(CloseReason::DuplicateNode(NodeId(22)))
    );
    assert_eq!(n.nodes(), vec![NodeId(22)], "the first link survives");

    // A node sync changing the link's id.
    let (mut n, l) = scripted(21);
    feed(&mut n, l, r#"{"nodeId":7,"type":5,"dest":0,"from":7}"#);
    let ev = feed(&mut n, l, r#"{"nodeId":8,"type":5,"dest":21,"from":8}"#);
    assert_eq!(
        closed_with(&ev),
        Some(CloseReason::ChangedNodeId {
            was: NodeId(7),
            now: NodeId(8)
        })
    );

    // A node sync listing the sender inside its own subtree.
    let (mut n, l) = scripted(21);
    feed(&mut n, l, r#"{"nodeId":9,"type":5,"dest":0,"from":9}"#);
    let ev = feed(
        &mut n,
        l,
        r#"{"nodeId":9,"type":5,"dest":21,"from":9,"subs":[{"nodeId":56,"subs":[{"nodeId":9}]}]}"#,
    );
    assert_eq!(
        closed_with(&ev),
        Some(CloseReason::SenderInOwnSubtree(NodeId(9)))
    );

    // A peer claiming our own id.
    let (mut n, l) = scripted(21);
    let ev = feed(&mut n, l, r#"{"nodeId":21,"type":5,"dest":0,"from":21}"#);
    assert_eq!(closed_with(&ev), Some(CloseReason::ClaimsOurId));
    assert_eq!(n.stats().closed_invalid, 1);
}

/// Reads the counter a bad input must bump.
type Counter = fn(&meshfleet_mesh::Stats) -> u64;

/// Each bad input drops the frame (counted, reported) while the link and node carry on:
/// a valid SINGLE right after it is still delivered, and a second link is unaffected.
#[test]
fn bad_input_drops_the_frame_and_nothing_else() {
    let deep = format!(
        r#"{{"nodeId":5,"type":5,"dest":0,"from":5,"subs":{}{}}}"#,
        r#"[{"nodeId":1,"subs":"#.repeat(10_000),
        "]}".repeat(10_000)
    );
    let huge_string = format!(
        r#"{{"type":9,"dest":21,"from":7,"msg":"{}"}}"#,
        "x".repeat(1_000_000)
    );
    let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
        (
            "invalid utf-8",
            b"{\"type\":9,\"msg\":\"\xff\xfe\"}".to_vec(),
            |s| s.dropped_decode,
        ),
        ("invalid json", b"{not json}".to_vec(), |s| s.dropped_decode),
        (
            "truncated json",
            br#"{"type":9,"dest":21,"from":7,"msg":"tr"#.to_vec(),
            |s| s.dropped_decode,
        ),
        (
            "wrong field types",
            br#"{"type":4,"dest":21,"from":7,"msg":"not an object"}"#.to_vec(),
            |s| s.dropped_decode,
        ),
        ("array", b"[1,2,3]".to_vec(), |s| s.dropped_decode),
        (
            "unknown type",
            br#"{"type":99,"dest":21,"from":7}"#.to_vec(),
            |s| s.unhandled_packages,
        ),
        ("subs nested 10,000 deep", deep.into_bytes(), |s| {
            s.dropped_decode
        }),
        ("a 1 MB string", huge_string.into_bytes(), |s| {
            s.dropped_decode
        }),
        (
            "string over the library's 65,535 chars",
            format!(
                r#"{{"type":9,"dest":21,"from":7,"msg":"{}"}}"#,
                "y".repeat(65_536)
            )
            .into_bytes(),
            |s| s.dropped_decode,
        ),
        (
            "no route",
            br#"{"type":9,"dest":999,"from":7,"msg":"lost"}"#.to_vec(),
            |s| s.dropped_no_route,
        ),
    ];
    for (name, bad, counter) in cases {
        let (mut n, l) = scripted(21);
        feed(&mut n, l, r#"{"nodeId":7,"type":5,"dest":0,"from":7}"#);
        n.handle_link_up(Instant::ZERO, LinkId(2), LinkRole::AccessPoint);
        feed(
            &mut n,
            LinkId(2),
            r#"{"nodeId":8,"type":5,"dest":0,"from":8}"#,
        );
        let before = counter(n.stats());
        let mut bytes = bad.clone();
        bytes.push(0);
        n.handle_bytes(Instant::from_micros(2_000), l, &bytes);
        let ev: Vec<Event> = std::iter::from_fn(|| n.poll_event()).collect();
        assert!(
            ev.iter().any(|e| matches!(e, Event::FrameDropped { .. })),
            "{name}: no drop event"
        );
        assert!(closed_with(&ev).is_none(), "{name}: link closed");
        assert_eq!(counter(n.stats()), before + 1, "{name}: counter");
        let ev = feed(&mut n, l, r#"{"type":9,"dest":21,"from":7,"msg":"alive"}"#);
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::Received { msg, .. } if msg == "alive")),
            "{name}: link dead"
        );
        let ev = feed(
            &mut n,
            LinkId(2),
            r#"{"type":9,"dest":21,"from":8,"msg":"other"}"#,
        );
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::Received { msg, .. } if msg == "other")),
            "{name}"
        );
        assert_eq!(n.nodes(), vec![NodeId(7), NodeId(8)], "{name}");
    }
}

#[test]
fn oversized_and_endless_frames_are_capped() {
    let mut config = Config::new(NodeId(21));
    config.max_frame_len = 4_096;
    let mut n = Node::new(config);
    let l = LinkId(1);
    n.handle_link_up(Instant::ZERO, l, LinkRole::AccessPoint);
    feed(&mut n, l, r#"{"nodeId":7,"type":5,"dest":0,"from":7}"#);
    // 10 MB without a NUL, in 1 KB reads.
    let chunk = [b'x'; 1024];
    for _ in 0..10_000 {
        n.handle_bytes(Instant::from_micros(5_000), l, &chunk);
    }
    assert_eq!(n.stats().dropped_too_long, 1, "reported once");
    // The stream resynchronises at the next NUL.
    n.handle_bytes(Instant::from_micros(5_000), l, b"\0");
    let ev = feed(&mut n, l, r#"{"type":9,"dest":21,"from":7,"msg":"after"}"#);
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Received { msg, .. } if msg == "after")));
    // A whole oversized frame in one read.
    let big = format!(
        r#"{{"type":9,"dest":21,"from":7,"msg":"{}"}}"#,
        "z".repeat(5_000)
    );
    feed(&mut n, l, &big);
    assert_eq!(n.stats().dropped_too_long, 2);
}

#[test]
fn a_layout_change_during_a_first_sync_reaches_the_new_peer_at_once() {
    // B joins A while C joins B at the same instant: C's sync with B completes while B's
    // first request to A is still in flight. B must re-sync A as soon as A answers, not a
    // full interval later.
    let mut net = Net::new(Duration::from_micros(2_500));
    let a = net.add_with_offset(1, 0);
    let b = net.add_with_offset(2, 0);
    let c = net.add_with_offset(3, 0);
    net.connect(b, a);
    net.connect(c, b);
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.nodes[a].nodes(), vec![NodeId(2), NodeId(3)]);
    assert_eq!(net.nodes[c].nodes(), vec![NodeId(1), NodeId(2)]);
}

#[test]
fn a_time_sync_before_the_first_node_sync_does_not_spin_the_timer() {
    // A TIME_SYNC can arrive on a link whose first node sync has not been accepted (one
    // that was slow, or refused: a tree deeper than MAX_TREE_DEPTH). It moves the link's
    // time-sync timer; when that timer comes due there is no peer tree to decide who
    // adopts whose time. The timer must not stay due with nothing to do, or a driver that
    // calls handle_timeout when poll_timeout says so spins at that instant for ever.
    for msg in [
        r#"{"type":-1}"#,
        r#"{"type":1,"t0":5}"#,
        r#"{"type":2,"t0":5,"t1":6,"t2":7}"#,
    ] {
        let (mut n, l) = scripted(21);
        feed(
            &mut n,
            l,
            &format!(r#"{{"type":4,"dest":21,"from":7,"msg":{msg}}}"#),
        );
        let mut now = Instant::from_micros(1_000);
        let mut calls = 0;
        while let Some(at) = n.poll_timeout() {
            if at > now + Duration::from_secs(3600) {
                break;
            }
            assert!(calls < 100, "{msg}: the timer never moves past {at:?}");
            now = now.max(at);
            n.handle_timeout(now);
            while n.poll_transmit().is_some() {}
            calls += 1;
        }
        // The link is still open and its first node sync still works (the AP's own
        // request is due after ap_first_sync_delay; a silent peer is closed later).
        assert!(calls > 0, "{msg}");
    }
}

/// A node-sync frame from `from` whose tree is a chain of `levels` nodes below it.
fn chain_node_sync(from: u32, dest: u32, levels: u32) -> String {
    let mut subs = String::new();
    for id in 1..=levels {
        subs.push_str(&format!(r#","subs":[{{"nodeId":{}"#, 1000 + id));
    }
    subs.push_str(&"}]".repeat(levels as usize));
    format!(r#"{{"nodeId":{from}{subs},"type":5,"dest":{dest},"from":{from}}}"#)
}

#[test]
fn a_node_accepts_node_syncs_as_deep_as_it_can_relay() {
    // A geometric 1,000-node mesh is 73-93 hops across; the library accepts trees up to
    // 127 levels below the sender (JSON nesting 255). We take them up to 126 levels below
    // the sender: relayed one level deeper, that is the most our neighbours can parse.
    // On a small stack: parsing the tree takes none; serializing it again (the node
    // caches each link tree's JSON) recurses, between 128 and 192 KiB for 127 levels in
    // a debug build.
    let handle = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| {
            for levels in [100, meshfleet_wire::MAX_TREE_DEPTH as u32 - 1] {
                let (mut n, l) = scripted(21);
                let ev = feed(&mut n, l, &chain_node_sync(7, 21, levels));
                assert_eq!(n.stats().dropped_decode, 0, "{levels}: {ev:?}");
                assert_eq!(closed_with(&ev), None);
                let mut expected = vec![NodeId(7)];
                expected.extend((1..=levels).map(|i| NodeId(1000 + i)));
                assert_eq!(n.nodes(), expected, "{levels}");
                assert_eq!(n.route(NodeId(1000 + levels)), Some(l));
                // It answers with its own tree (without the asker's branch).
                let reply = std::iter::from_fn(|| n.poll_transmit())
                    .find(|t| t.frame.windows(8).any(|w| w == br#""type":6"#))
                    .expect("a NODE_SYNC_REPLY");
                assert_eq!(reply.link, l);
            }
            // 127 levels below the sender parse, but we could not relay them: refused,
            // the link stays.
            let (mut n, l) = scripted(21);
            let ev = feed(&mut n, l, &chain_node_sync(7, 21, 127));
            assert_eq!(n.stats().refused_trees, 1);
            assert_eq!(closed_with(&ev), None);
            assert!(n.nodes().is_empty());
            // One level deeper than the library's limit is refused like any frame the
            // library cannot parse: dropped, the link stays.
            let (mut n, l) = scripted(21);
            let deeper = meshfleet_wire::MAX_TREE_DEPTH as u32 + 1;
            let ev = feed(&mut n, l, &chain_node_sync(7, 21, deeper));
            assert_eq!(n.stats().dropped_decode, 1);
            assert_eq!(closed_with(&ev), None);
            assert!(n.nodes().is_empty());
        })
        .expect("spawn");
    handle.join().expect("no panic");
}

#[test]
fn a_line_of_110_nodes_converges() {
    // The far ends' node syncs describe 109 levels: beyond what meshfleet parsed before
    // (63), within the library's 127.
    let mut net = Net::new(Duration::from_micros(2_500));
    let ids: Vec<usize> = (1..=110).map(|i| net.add_id(i)).collect();
    for w in ids.windows(2) {
        net.connect(w[1], w[0]);
        net.run_for(Duration::from_millis(50));
    }
    net.run_for(Duration::from_secs(2));
    for (i, &n) in ids.iter().enumerate() {
        let known = net.nodes[n].nodes();
        assert_eq!(known.len(), 109, "node {} knows {}", i + 1, known.len());
        assert_eq!(net.nodes[n].stats().dropped_decode, 0);
        assert!(net.closed(n).is_empty());
    }
}

#[test]
fn a_line_whose_links_all_come_up_at_once_converges_quickly() {
    // Every link's first sync runs at once. A node that learns something new from one side
    // must tell the other side even when that side's reply to our previous (older) sync
    // arrives at the same moment; postponing the re-sync by the periodic interval held the
    // far end's node list back 10 s per hop.
    let mut net = Net::new(Duration::from_micros(2_500));
    let ids: Vec<usize> = (1..=8).map(|i| net.add_id(i)).collect();
    for w in ids.windows(2) {
        net.connect(w[1], w[0]);
    }
    net.run_for(Duration::from_secs(2));
    for (i, &n) in ids.iter().enumerate() {
        let known = net.nodes[n].nodes();
        assert_eq!(known.len(), 7, "node {} knows {known:?}", i + 1);
    }
}

#[test]
fn the_wake_reason_names_the_timer_poll_timeout_reports() {
    let net = chain();
    for node in &net.nodes {
        let (at, why) = node
            .poll_timeout_reason()
            .expect("a synced node has timers");
        assert_eq!(Some(at), node.poll_timeout());
        // With links up and no plugins, the earliest wake is one of a link's timers.
        match why {
            meshfleet_mesh::Wake::NodeSync(l)
            | meshfleet_mesh::Wake::NodeTimeout(l)
            | meshfleet_mesh::Wake::TimeSync(l)
            | meshfleet_mesh::Wake::HeldTimeReply(l) => {
                assert!(
                    node.neighbours().iter().any(|(link, _)| *link == l),
                    "{why:?}"
                );
            }
            other => panic!("unexpected wake reason {other:?}"),
        }
    }
    // A node without links has nothing to wake for.
    let lone = Node::new(Config::new(NodeId(9)));
    assert_eq!(lone.poll_timeout_reason(), None);
}

#[test]
fn node_sync_replies_are_control_frames_and_the_round_trip_is_timed() {
    // Under meshfleet's policy requests are control frames too (see `Priority`).
    let mut ours = Node::new(Config::new(NodeId(5)));
    ours.handle_link_up(Instant::ZERO, LinkId(1), LinkRole::Station);
    assert_eq!(ours.poll_transmit().unwrap().priority, Priority::Control);
    let mut n = Node::new(Config {
        node_sync: NodeSyncPolicy::Library,
        ..Config::new(NodeId(5))
    });
    let link = LinkId(1);
    // A station sends its first NODE_SYNC_REQUEST at once: under the library's policy a
    // normal frame, as the library queues it (ahead of bulk data; see `Priority`).
    n.handle_link_up(Instant::ZERO, link, LinkRole::Station);
    let t = n.poll_transmit().unwrap();
    let v: Value = serde_json::from_slice(&t.frame[..t.frame.len() - 1]).unwrap();
    assert_eq!(v["type"], 5);
    assert_eq!(t.priority, Priority::Normal);
    let pending = n.node_sync_timing(link).unwrap();
    assert_eq!(pending.pending_since, Some(Instant::ZERO));
    assert_eq!(pending.answered, 0);
    // The reply comes 300 ms later: one sample, nothing pending.
    n.handle_bytes(
        Instant::from_micros(300_000),
        link,
        b"{\"nodeId\":9,\"type\":6,\"dest\":5,\"from\":9}\0",
    );
    let done = n.node_sync_timing(link).unwrap();
    assert_eq!(done.pending_since, None);
    assert_eq!(done.last_round_trip, Some(Duration::from_millis(300)));
    assert_eq!(done.answered, 1);
    // The peer's own request is answered with a control frame too.
    n.handle_bytes(
        Instant::from_micros(400_000),
        link,
        b"{\"nodeId\":9,\"type\":5,\"dest\":5,\"from\":9}\0",
    );
    let replies: Vec<_> = std::iter::from_fn(|| n.poll_transmit()).collect();
    assert!(!replies.is_empty());
    assert!(replies.iter().all(|t| t.priority == Priority::Control));
    assert_eq!(n.node_sync_timing(LinkId(2)), None);
}

/// A plugin that only sends bulk frames when told to.
struct Bulk;

impl Plugin for Bulk {
    fn name(&self) -> &'static str {
        "bulk"
    }

    fn claims(&self) -> Claims {
        Claims::none()
    }

    fn handle_package(&mut self, _: &mut Ctx<'_>, _: LinkId, _: Routing, _: &Package) {}
}

/// Runs the node's timers, answering each node-sync request 300 ms later, until it sends
/// its next request; returns when and in which class.
fn next_request(n: &mut Node, link: LinkId) -> (Instant, Priority) {
    for _ in 0..10_000 {
        let t = n.poll_timeout().unwrap();
        n.handle_timeout(t);
        while let Some(tx) = n.poll_transmit() {
            if tx.frame.first() == Some(&0x01) {
                continue;
            }
            let v: Value = serde_json::from_slice(&tx.frame[..tx.frame.len() - 1]).unwrap();
            if v["type"] == 5 {
                n.handle_bytes(
                    t + Duration::from_millis(300),
                    link,
                    b"{\"nodeId\":9,\"type\":6,\"dest\":5,\"from\":9}\0",
                );
                while n.poll_transmit().is_some() {}
                return (t, tx.priority);
            }
        }
    }
    panic!("no node-sync request");
}

#[test]
fn node_sync_requests_are_control_frames_while_the_node_sends_bulk_data() {
    // The library's policy (under meshfleet's, requests are always control frames).
    let mut n = Node::new(Config {
        node_sync: NodeSyncPolicy::Library,
        ..Config::new(NodeId(5))
    });
    n.add_plugin(Box::new(Bulk)).unwrap();
    let link = LinkId(1);
    n.handle_link_up(Instant::ZERO, link, LinkRole::Station);
    let first = n.poll_transmit().unwrap();
    assert_eq!(first.priority, Priority::Normal);
    n.handle_bytes(
        Instant::from_micros(300_000),
        link,
        b"{\"nodeId\":9,\"type\":6,\"dest\":5,\"from\":9}\0",
    );
    while n.poll_transmit().is_some() {}
    // No bulk data: requests are normal frames, as the library queues them.
    let (t1, p1) = next_request(&mut n, link);
    assert_eq!(p1, Priority::Normal);
    // A bulk frame 5 s before the next request (60 s later): that request is a control
    // frame.
    let bulk_at = t1 + Duration::from_secs(55);
    n.with_plugin::<Bulk, _>(bulk_at, |_, ctx| {
        ctx.send_bulk_binary_on_link(link, &[0x99, 0x03, 1, 2, 3])
            .unwrap();
    })
    .unwrap();
    let bulk = n.poll_transmit().unwrap();
    assert_eq!(bulk.priority, Priority::Bulk);
    let (t2, p2) = next_request(&mut n, link);
    assert!(
        t2.saturating_since(bulk_at) < Duration::from_secs(10),
        "{t2:?}"
    );
    assert_eq!(p2, Priority::Control);
    // More than the node timeout (10 s) after the last bulk frame: normal again.
    let (t3, p3) = next_request(&mut n, link);
    assert!(
        t3.saturating_since(bulk_at) >= Duration::from_secs(10),
        "{t3:?}"
    );
    assert_eq!(p3, Priority::Normal);
}

/// The NODE_SYNC_REQUESTs node 5 sent on `link` among its queued frames, as trees.
fn requests_on(n: &mut Node, link: LinkId) -> Vec<Value> {
    std::iter::from_fn(|| n.poll_transmit())
        .filter(|t| t.link == link && t.frame.first() != Some(&0x01))
        .map(|t| serde_json::from_slice::<Value>(&t.frame[..t.frame.len() - 1]).unwrap())
        .filter(|v| v["type"] == 5)
        .collect()
}

/// Node 5 with a synced link to node 9 (link 1, our request pending there) and a link 2
/// whose peer (node 20) sends growing trees.
fn hub(one_in_flight: bool) -> Node {
    let mut n = Node::new(Config {
        node_sync: if one_in_flight {
            NodeSyncPolicy::Meshfleet
        } else {
            NodeSyncPolicy::Library
        },
        ..Config::new(NodeId(5))
    });
    n.handle_link_up(Instant::ZERO, LinkId(1), LinkRole::Station);
    n.handle_bytes(
        Instant::ZERO,
        LinkId(1),
        b"{\"nodeId\":9,\"type\":6,\"dest\":5,\"from\":9}\0",
    );
    n.handle_link_up(Instant::ZERO, LinkId(2), LinkRole::Station);
    while n.poll_transmit().is_some() {}
    n
}

/// Node 20's reply on link 2 with leaves 21..21+k below it.
fn grown(k: u32) -> Vec<u8> {
    let subs: Vec<String> = (21..21 + k)
        .map(|i| format!("{{\"nodeId\":{i}}}"))
        .collect();
    let subs = if subs.is_empty() {
        String::new()
    } else {
        format!(",\"subs\":[{}]", subs.join(","))
    };
    format!("{{\"nodeId\":20{subs},\"type\":6,\"dest\":5,\"from\":20}}\0").into_bytes()
}

#[test]
fn a_link_carries_one_unanswered_request_and_then_the_newest_tree() {
    let ms = |m: u64| Instant::ZERO + Duration::from_millis(m);
    let mut n = hub(true);
    // Link 2 syncs: the layout changed, link 1 gets a request with node 20 in it.
    n.handle_bytes(ms(10), LinkId(2), &grown(0));
    n.handle_timeout(ms(10));
    let first = requests_on(&mut n, LinkId(1));
    assert_eq!(first.len(), 1);
    // Three more changes before node 9 answers: nothing more goes to link 1.
    for k in 1..=3 {
        n.handle_bytes(ms(10 + 100 * k as u64), LinkId(2), &grown(k));
        n.handle_timeout(ms(10 + 100 * k as u64));
        assert!(requests_on(&mut n, LinkId(1)).is_empty(), "change {k}");
    }
    // Node 9's reply: one request follows at once, with the newest tree (leaves 21-23).
    n.handle_bytes(
        ms(500),
        LinkId(1),
        b"{\"nodeId\":9,\"type\":6,\"dest\":5,\"from\":9}\0",
    );
    n.handle_timeout(ms(500));
    let next = requests_on(&mut n, LinkId(1));
    assert_eq!(next.len(), 1);
    assert_eq!(next[0]["subs"][0]["subs"].as_array().unwrap().len(), 3);
    // The library's way sends one per change.
    let mut stock = hub(false);
    stock.handle_bytes(ms(10), LinkId(2), &grown(0));
    stock.handle_timeout(ms(10));
    let mut sent = requests_on(&mut stock, LinkId(1)).len();
    for k in 1..=3 {
        stock.handle_bytes(ms(10 + 100 * k as u64), LinkId(2), &grown(k));
        stock.handle_timeout(ms(10 + 100 * k as u64));
        sent += requests_on(&mut stock, LinkId(1)).len();
    }
    assert_eq!(sent, 4);
}

#[test]
fn a_held_sync_is_dropped_when_answering_the_peer_told_it_already() {
    let ms = |m: u64| Instant::ZERO + Duration::from_millis(m);
    let mut n = hub(true);
    n.handle_bytes(ms(10), LinkId(2), &grown(0));
    n.handle_timeout(ms(10));
    assert_eq!(requests_on(&mut n, LinkId(1)).len(), 1);
    n.handle_bytes(ms(100), LinkId(2), &grown(1));
    n.handle_timeout(ms(100));
    assert!(requests_on(&mut n, LinkId(1)).is_empty());
    // Node 9 asks first: our reply carries the newest tree...
    n.handle_bytes(
        ms(200),
        LinkId(1),
        b"{\"nodeId\":9,\"type\":5,\"dest\":5,\"from\":9}\0",
    );
    let replies: Vec<Value> = std::iter::from_fn(|| n.poll_transmit())
        .filter(|t| t.link == LinkId(1))
        .map(|t| serde_json::from_slice(&t.frame[..t.frame.len() - 1]).unwrap())
        .collect();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["type"], 6);
    assert_eq!(replies[0]["subs"][0]["subs"].as_array().unwrap().len(), 1);
    // ...so its answer to our old request sends nothing more, and the periodic sync
    // comes a full interval later.
    n.handle_bytes(
        ms(300),
        LinkId(1),
        b"{\"nodeId\":9,\"type\":6,\"dest\":5,\"from\":9}\0",
    );
    n.handle_timeout(ms(300));
    assert!(requests_on(&mut n, LinkId(1)).is_empty());
    let at = loop {
        let t = n.poll_timeout().unwrap();
        n.handle_timeout(t);
        if !requests_on(&mut n, LinkId(1)).is_empty() {
            break t;
        }
    };
    assert_eq!(at, ms(300) + Duration::from_secs(60));
}

/// Node 5's link to node 9, synced; node 5's request goes out at 60 s and node 9, busy,
/// sends its own requests at 65 s and 72 s and answers at 79 s. Returns whether the link
/// was still up at the answer.
fn busy_peer_answers_late(policy: NodeSyncPolicy) -> bool {
    let s = |x: u64| Instant::ZERO + Duration::from_secs(x);
    let mut n = Node::new(Config {
        node_sync: policy,
        ..Config::new(NodeId(5))
    });
    let link = LinkId(1);
    n.handle_link_up(Instant::ZERO, link, LinkRole::Station);
    let reply = b"{\"nodeId\":9,\"type\":6,\"dest\":5,\"from\":9}\0";
    let request = b"{\"nodeId\":9,\"type\":5,\"dest\":5,\"from\":9}\0";
    n.handle_bytes(Instant::ZERO, link, reply);
    let mut closed = false;
    let mut run_to = |n: &mut Node, t: Instant| {
        while let Some(at) = n.poll_timeout().filter(|at| *at <= t) {
            n.handle_timeout(at);
        }
        while n.poll_transmit().is_some() {}
        closed |=
            std::iter::from_fn(|| n.poll_event()).any(|e| matches!(e, Event::LinkClosed { .. }));
    };
    run_to(&mut n, s(60));
    assert!(n.node_sync_timing(link).unwrap().pending_since.is_some());
    for at in [65, 72] {
        run_to(&mut n, s(at));
        n.handle_bytes(s(at), link, request);
    }
    run_to(&mut n, s(79));
    let up = !closed && n.node_sync_timing(link).is_some();
    if up {
        n.handle_bytes(s(79), link, reply);
        assert_eq!(
            n.node_sync_timing(link).unwrap().last_round_trip,
            Some(Duration::from_secs(19))
        );
    }
    up
}

#[test]
fn a_peer_that_keeps_syncing_keeps_the_link_past_the_node_timeout() {
    // meshfleet: each of node 9's requests restarts the 10 s; the library closes at 70 s.
    assert!(busy_peer_answers_late(NodeSyncPolicy::Meshfleet));
    assert!(!busy_peer_answers_late(NodeSyncPolicy::Library));
}
