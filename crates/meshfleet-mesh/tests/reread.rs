//! A node that reads changed node syncs only where they differ from the previous one
//! (`meshfleet_wire::reread_changed`) ends up exactly where a node that read each of them
//! in full does: same node list, same topology, same routes, and byte for byte the same
//! node syncs sent on its other links.
#![allow(clippy::unwrap_used)]

use meshfleet_mesh::{
    Config, Event, Instant, LinkId, LinkRole, Node, NodeId, NodeSyncPolicy, NodeTree,
};
use meshfleet_wire::{Message, NodeSync};
use proptest::prelude::*;

fn reply(t: &NodeTree) -> Vec<u8> {
    Message::NodeSyncReply(NodeSync {
        tree: t.clone(),
        dest: NodeId(1),
        from: t.node_id,
        extra: Vec::new(),
    })
    .encode_frame()
}

/// A node with two links: link 1 holds a fixed three-node tree, link 0 is where the
/// changing trees arrive.
fn node() -> Node {
    // Link 1's peer never answers our requests here: with one request in flight the
    // node would hold every re-sync after the first, and there would be nothing to compare.
    let mut n = Node::new(Config {
        node_sync: NodeSyncPolicy::Library,
        ..Config::new(NodeId(1))
    });
    let fixed = NodeTree {
        node_id: NodeId(900),
        root: false,
        has_time_authority: false,
        subs: vec![NodeTree::leaf(NodeId(901)), NodeTree::leaf(NodeId(902))],
    };
    n.handle_link_up(Instant::ZERO, LinkId(1), LinkRole::AccessPoint);
    n.handle_bytes(Instant::ZERO, LinkId(1), &reply(&fixed));
    n.handle_link_up(Instant::ZERO, LinkId(0), LinkRole::AccessPoint);
    n
}

/// Hands `frame` to the node on link 0, runs its timers, and returns the last node sync
/// it sent on link 1 and the last node list it reported.
fn feed(n: &mut Node, frame: &[u8], t: u64) -> (Option<Vec<u8>>, Option<Vec<NodeId>>) {
    let now = Instant::from_micros(t);
    n.handle_bytes(now, LinkId(0), frame);
    n.handle_timeout(now);
    let mut sent = None;
    while let Some(tx) = n.poll_transmit() {
        if tx.link == LinkId(1) {
            sent = Some(tx.frame);
        }
    }
    let mut list = None;
    while let Some(e) = n.poll_event() {
        if let Event::NodeListChanged { nodes } = e {
            list = Some(nodes);
        }
    }
    (sent, list)
}

fn arb_tree() -> impl Strategy<Value = NodeTree> {
    let node = (0u32..60).prop_map(|id| NodeTree::leaf(NodeId(1000 + id)));
    node.clone().prop_recursive(6, 60, 4, move |inner| {
        (node.clone(), prop::collection::vec(inner, 0..4)).prop_map(|(mut n, subs)| {
            n.subs = subs;
            n
        })
    })
}

/// Adds a leaf under the node at pre-order index `k`, or removes that node's last sub.
fn edit(t: &mut NodeTree, k: &mut usize, add: Option<u32>) -> bool {
    if *k == 0 {
        match add {
            Some(id) => t.subs.push(NodeTree::leaf(NodeId(id))),
            None => {
                t.subs.pop();
            }
        }
        return true;
    }
    *k -= 1;
    t.subs.iter_mut().any(|s| edit(s, k, add))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn rereading_changed_trees_is_reading_them(
        first in arb_tree(),
        edits in prop::collection::vec((any::<usize>(), prop::option::of(2000u32..2100)), 1..12),
    ) {
        // The peer on link 0 is node 500; its tree's subs are `first`, edited step by step.
        let mut tree = NodeTree { node_id: NodeId(500), root: false, has_time_authority: false, subs: vec![first] };
        let mut a = node();
        feed(&mut a, &reply(&tree), 1);
        for (step, (k, add)) in edits.into_iter().enumerate() {
            let mut k = k % tree.size();
            edit(&mut tree, &mut k, add);
            let frame = reply(&tree);
            let t = 2 + step as u64;
            let (sent_a, list_a) = feed(&mut a, &frame, t);
            // A fresh node reads this tree as its first (the full reader).
            let mut b = node();
            let (sent_b, list_b) = feed(&mut b, &frame, t);
            prop_assert_eq!(a.topology(), b.topology());
            prop_assert_eq!(a.nodes(), b.nodes());
            // When the tree changed, both re-sync link 1 with the same bytes and lists.
            if list_a.is_some() {
                prop_assert_eq!(list_a, list_b);
                prop_assert_eq!(sent_a, sent_b);
            }
            for id in a.nodes() {
                prop_assert_eq!(a.route(id), b.route(id));
            }
        }
    }
}

/// Trees with ids that repeat and that overlap link 1's fixed tree (900-902).
fn arb_overlapping_tree() -> impl Strategy<Value = NodeTree> {
    let node = (0u32..40).prop_map(|id| NodeTree::leaf(NodeId(895 + id)));
    node.clone().prop_recursive(5, 50, 5, move |inner| {
        (node.clone(), prop::collection::vec(inner, 0..5)).prop_map(|(mut n, subs)| {
            n.subs = subs;
            n
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whole trees replaced at once: re-read regions holding many ids that come and go
    /// (the node list's merge pass and its filtered lookup of ids other trees still hold).
    #[test]
    fn replacing_whole_trees_keeps_the_node_list(
        trees in prop::collection::vec(prop::collection::vec(arb_overlapping_tree(), 1..4), 2..6),
    ) {
        let mut a = node();
        for (step, subs) in trees.into_iter().enumerate() {
            let tree = NodeTree { node_id: NodeId(500), root: false, has_time_authority: false, subs };
            let frame = reply(&tree);
            let t = 1 + step as u64;
            let (sent_a, list_a) = feed(&mut a, &frame, t);
            let mut b = node();
            let (sent_b, list_b) = feed(&mut b, &frame, t);
            prop_assert_eq!(a.nodes(), b.nodes());
            if list_a.is_some() {
                prop_assert_eq!(list_a, list_b);
                prop_assert_eq!(sent_a, sent_b);
            }
        }
    }
}
