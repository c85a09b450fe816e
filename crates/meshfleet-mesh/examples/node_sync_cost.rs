//! The `node_sync_4_links` benchmark's work, a fixed number of times, for instruction
//! counts that a busy machine cannot skew (criterion measures time):
//!
//! ```text
//! cargo build --release -p meshfleet-mesh --example node_sync_cost
//! valgrind --tool=callgrind target/release/examples/node_sync_cost 1000 0    # setup only
//! valgrind --tool=callgrind target/release/examples/node_sync_cost 1000 200  # + 200 syncs
//! ```
//!
//! (instructions of the second run - the first) / 200 = instructions per handled change.
//! A node with four synced links gets a changed tree of `NODES` nodes on one of them,
//! handles it and sends its new tree on the three others, as in `benches/node.rs`.
#![allow(clippy::unwrap_used)]

use meshfleet_mesh::{Config, Duration, Instant, LinkId, LinkRole, Node, NodeId, NodeTree};
use meshfleet_wire::{Message, NodeSync};

/// A tree of `n` nodes, up to 4 children each, ids from `base` (as in the benchmark).
fn tree(base: u32, n: u32) -> NodeTree {
    fn build(next: &mut u32, left: &mut u32, depth: u32) -> NodeTree {
        let mut t = NodeTree::leaf(NodeId(*next));
        *next += 1;
        *left -= 1;
        for _ in 0..4 {
            if *left == 0 || depth > 12 {
                break;
            }
            t.subs.push(build(next, left, depth + 1));
        }
        t
    }
    let (mut next, mut left) = (base, n);
    build(&mut next, &mut left, 0)
}

/// A NODE_SYNC_REPLY as the library writes it (keys in its order, compact).
fn reply_frame(t: &NodeTree, dest: u32) -> Vec<u8> {
    Message::NodeSyncReply(NodeSync {
        tree: t.clone(),
        dest: NodeId(dest),
        from: t.node_id,
        extra: Vec::new(),
    })
    .encode_frame()
}

fn main() {
    let arg = |i: usize, d: u32| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (n, iterations) = (arg(1, 1000), arg(2, 100));
    let a = tree(3_000_000_000, n);
    let mut b = a.clone();
    b.subs.push(NodeTree::leaf(NodeId(3_999_999_999)));
    let frames = [reply_frame(&a, 1), reply_frame(&b, 1)];
    let mut node = Node::new(Config::new(NodeId(1)));
    for l in 1..4u32 {
        let t = tree(3_100_000_000 + 100_000 * l, 20);
        node.handle_link_up(Instant::ZERO, LinkId(u64::from(l)), LinkRole::AccessPoint);
        node.handle_bytes(Instant::ZERO, LinkId(u64::from(l)), &reply_frame(&t, 1));
    }
    node.handle_link_up(Instant::ZERO, LinkId(0), LinkRole::AccessPoint);
    let now = Instant::ZERO + Duration::from_secs(1);
    node.handle_bytes(now, LinkId(0), &frames[1]);
    node.handle_timeout(now);
    while node.poll_transmit().is_some() {}
    while node.poll_event().is_some() {}
    let (mut frames_out, mut bytes_out) = (0usize, 0usize);
    for i in 0..iterations as usize {
        node.handle_bytes(now, LinkId(0), &frames[i % 2]);
        node.handle_timeout(now);
        while let Some(t) = node.poll_transmit() {
            frames_out += 1;
            bytes_out += t.frame.len();
        }
        while node.poll_event().is_some() {}
    }
    assert_eq!(
        frames_out,
        3 * iterations as usize,
        "every change re-syncs 3 links"
    );
    println!("{iterations} changes of a {n}-node tree: {frames_out} frames, {bytes_out} bytes out");
}
