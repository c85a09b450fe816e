//! Node syncs handed out in pieces (`Node::poll_transmit_shared`) are byte for byte the
//! frames `Node::poll_transmit` hands out, in the same order, and big ones really are
//! shared rather than copied.
#![allow(clippy::unwrap_used)]

use meshfleet_mesh::{Config, Instant, LinkId, LinkRole, Node, NodeId, NodeSyncPolicy, NodeTree};
use meshfleet_wire::{Message, NodeSync};

fn reply(t: &NodeTree, dest: NodeId) -> Vec<u8> {
    Message::NodeSyncReply(NodeSync {
        tree: t.clone(),
        dest,
        from: t.node_id,
        extra: Vec::new(),
    })
    .encode_frame()
}

/// `first` with `n - 1` leaves below it.
fn fan(first: u32, n: u32) -> NodeTree {
    NodeTree {
        node_id: NodeId(first),
        root: false,
        has_time_authority: false,
        subs: (first + 1..first + n)
            .map(|id| NodeTree::leaf(NodeId(id)))
            .collect(),
    }
}

/// Runs the same inputs on a node and returns every frame it sent, with whether it came
/// in pieces, drained the shared way or the flat way.
fn run(shared: bool) -> Vec<(LinkId, Vec<u8>, bool)> {
    let me = NodeId(1);
    // The peers here never answer: without this the node would hold its re-syncs behind
    // the first unanswered request (`NodeSyncPolicy::Meshfleet`), and few frames
    // would be left to compare.
    let mut n = Node::new(Config {
        node_sync: NodeSyncPolicy::Library,
        ..Config::new(me)
    });
    let mut out = Vec::new();
    let mut drain = |n: &mut Node| {
        if shared {
            while let Some(t) = n.poll_transmit_shared() {
                let pieces = t.frame.as_contiguous().is_none();
                let bytes = t.frame.to_vec();
                assert_eq!(bytes.len(), t.frame.len());
                out.push((t.link, bytes, pieces));
            }
        } else {
            while let Some(t) = n.poll_transmit() {
                out.push((t.link, t.frame, false));
            }
        }
    };
    // Three links with 100-node trees (~2.5 KB each), then one of them changes twice.
    for k in 0..3u64 {
        let now = Instant::from_micros(k * 1000);
        n.handle_link_up(now, LinkId(k), LinkRole::AccessPoint);
        n.handle_bytes(now, LinkId(k), &reply(&fan(1000 * (k as u32 + 1), 100), me));
        n.handle_timeout(now);
        drain(&mut n);
    }
    for (i, size) in [101, 40].into_iter().enumerate() {
        let now = Instant::from_micros(10_000 + i as u64 * 1000);
        n.handle_bytes(now, LinkId(2), &reply(&fan(3000, size), me));
        n.handle_timeout(now);
        drain(&mut n);
    }
    out
}

#[test]
fn shared_node_syncs_are_the_flat_frames() {
    let flat = run(false);
    let shared = run(true);
    assert!(flat.len() >= 6, "{} frames", flat.len());
    let strip = |v: &[(LinkId, Vec<u8>, bool)]| {
        v.iter()
            .map(|(l, f, _)| (*l, f.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&flat), strip(&shared));
    // Node syncs carrying other links' trees are over the sharing threshold: in pieces.
    let pieces = shared.iter().filter(|(_, _, p)| *p).count();
    assert!(pieces >= 4, "{pieces} frames in pieces");
    // Independently of how the node lays them out: each frame is the message that the
    // serde encoder writes for what it decodes to (the library's compact form), NUL included.
    for (_, f, _) in &shared {
        let msg = meshfleet_wire::parse(&f[..f.len() - 1])
            .unwrap()
            .message()
            .unwrap();
        assert_eq!(&msg.encode_frame(), f);
    }
}
