//! Frames whose bytes are partly shared with the node's own state.
//!
//! A node sync is our id and flags, then the tree we hold from each of our other links,
//! then a short tail. The node keeps each link's tree as JSON already, so a node sync can
//! be handed to the driver as those pieces (reference-counted) instead of one fresh copy
//! per link. In a 10,000-node mesh a node sync is ~260 KB and every link direction has one
//! queued or in flight most of the time during formation: copied, that was gigabytes of
//! host memory in the simulator; shared, the frames in flight cost a few pointers each,
//! and only the receiver's reader sees the bytes laid out flat.
//!
//! The bytes are exactly those of the flat frame ([`SharedFrame::to_vec`]); drivers that
//! write to a socket use [`crate::Node::poll_transmit`], which flattens, and see no
//! difference.
//!
//! A driver that also hands the frame over as it is ([`crate::Node::handle_shared_frame`])
//! lets the receiver keep those trees as its own text of the link's tree, shared rather
//! than copied: then every node of the mesh holds pointers to the texts, not a copy of
//! nearly the whole mesh's JSON each.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::node::Priority;
use crate::rope::{join_parts, joined_len, Pieces, TreeText};
use crate::LinkId;

/// One frame (NUL included), either as its bytes or as pieces shared with the node that
/// made it (see the module docs): the same text a node keeps of a link's tree
/// (`TreeText`), flat or joined. Compare frames by [`SharedFrame::to_vec`].
#[derive(Clone, Debug)]
pub struct SharedFrame(TreeText);

/// Below this size a node sync is copied into one buffer: sharing pays only when the trees
/// are large, and small frames then cost one allocation, as before.
pub(crate) const SHARE_FROM: usize = 1024;

impl SharedFrame {
    /// `head`, then `trees` joined by `,`, then `tail`: kept as pieces when large, copied
    /// into one buffer when small.
    pub(crate) fn joined(head: &[u8], trees: Vec<Arc<TreeText>>, tail: &[u8]) -> Self {
        let len = joined_len(head, &trees, tail);
        if len >= SHARE_FROM {
            return Self(TreeText::joined(head, trees, tail));
        }
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(head);
        join_parts(&trees, &mut bytes);
        bytes.extend_from_slice(tail);
        Self(TreeText::Flat(bytes))
    }

    /// Length in bytes, NUL included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame has no bytes (never true for a frame a node made).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first byte (tells a binary frame from a JSON one).
    pub fn first(&self) -> Option<u8> {
        self.0.first()
    }

    /// The head, the shared trees and the tail, if the frame is in pieces: a receiver
    /// keeps the trees as they are instead of a copy of their text
    /// ([`crate::Node::handle_shared_frame`]).
    pub(crate) fn pieces(&self) -> Option<Pieces<'_>> {
        self.0.pieces()
    }

    /// The bytes, if they are held in one piece.
    pub fn as_contiguous(&self) -> Option<&[u8]> {
        match &self.0 {
            TreeText::Flat(b) => Some(b),
            TreeText::Joined(_) => None,
        }
    }

    /// Appends the frame's bytes to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.0.write_to(out);
    }

    /// The frame's bytes in one buffer (no copy when they already are).
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            TreeText::Flat(b) => b,
            TreeText::Joined(_) => self.to_vec(),
        }
    }

    /// A copy of the frame's bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.0.flat().into_owned()
    }
}

impl From<Vec<u8>> for SharedFrame {
    fn from(bytes: Vec<u8>) -> Self {
        Self(TreeText::Flat(bytes))
    }
}

/// A frame to send on a link, its bytes possibly shared ([`SharedFrame`]). Drain with
/// [`crate::Node::poll_transmit_shared`]; [`crate::Transmit`] is the same with the bytes
/// flat.
#[derive(Clone, Debug)]
pub struct SharedTransmit {
    /// The link.
    pub link: LinkId,
    /// One frame, NUL included.
    pub frame: SharedFrame,
    /// Which of the driver's queues for the link it joins ([`Priority`]).
    pub priority: Priority,
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn tree(byte: u8, n: usize) -> Arc<TreeText> {
        Arc::new(TreeText::Flat(vec![byte; n]))
    }

    #[test]
    fn pieces_read_as_the_joined_bytes() {
        for (sizes, shared) in [
            (vec![], false),
            (vec![3], false),
            (vec![3, 4], false),
            (vec![600, 700], true),
            (vec![2000], true),
        ] {
            let trees: Vec<_> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| tree(b'a' + i as u8, n))
                .collect();
            let f = SharedFrame::joined(b"{head[", trees.clone(), b"]tail}\0");
            let mut want = b"{head[".to_vec();
            for (i, t) in trees.iter().enumerate() {
                if i > 0 {
                    want.push(b',');
                }
                t.write_to(&mut want);
            }
            want.extend_from_slice(b"]tail}\0");
            assert_eq!(f.to_vec(), want, "{sizes:?}");
            assert_eq!(f.len(), want.len());
            assert_eq!(f.first(), Some(b'{'));
            assert_eq!(f.as_contiguous().is_none(), shared, "{sizes:?}");
            assert_eq!(f.clone().into_vec(), want);
        }
    }

    #[test]
    fn shared_pieces_are_not_copied() {
        let t = tree(b'x', 4000);
        let f = SharedFrame::joined(b"{", vec![t.clone(), t.clone()], b"}\0");
        // Two references in the frame, one here.
        assert_eq!(Arc::strong_count(&t), 3);
        drop(f);
        assert_eq!(Arc::strong_count(&t), 1);
    }
}
