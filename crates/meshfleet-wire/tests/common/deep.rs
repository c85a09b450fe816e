//! Deep frames for the nesting tests and the stack measurement (`examples/stack_use.rs`).
// Each includer uses its own subset.
#![allow(dead_code, unreachable_pub)]

use meshfleet_wire::{Message, NodeId, NodeSync, NodeTree};

/// A chain `1 -> 2 -> ... -> levels + 1`: the sender and `levels` levels below it.
pub fn chain(levels: usize) -> NodeTree {
    let mut tree = NodeTree::leaf(NodeId(levels as u32 + 1));
    for id in (1..=levels as u32).rev() {
        tree = NodeTree {
            node_id: NodeId(id),
            subs: vec![tree],
            ..NodeTree::default()
        };
    }
    tree
}

/// A NODE_SYNC_REPLY frame carrying `tree`.
pub fn node_sync_frame(tree: NodeTree) -> Vec<u8> {
    let from = tree.node_id;
    Message::NodeSyncReply(NodeSync {
        tree,
        dest: NodeId(1000),
        from,
        extra: Vec::new(),
    })
    .encode()
}

/// `[[...]]` nested `n` deep.
pub fn nested_array(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}
