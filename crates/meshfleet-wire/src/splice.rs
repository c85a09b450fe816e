//! Re-reading a changed node sync against the previous one from the same link.
//!
//! painlessMesh resends a node's whole tree on every layout change, and a change is almost
//! always local: a node joins or leaves somewhere, and the text of the tree differs from
//! the previous one from that link in one short region. [`reread_changed`] finds that
//! region by comparing the two texts from both ends (memcmp, a fraction of an instruction
//! per byte), reads only the nodes in it, and keeps the nodes before and after it from the
//! previous tree. The result is the tree a full read of the new text gives (a proptest
//! holds the two to that), at a cost that grows with the change, not with the mesh.
//!
//! Only canonical text takes this path: the tree as [`FlatTree::write_json`] writes it
//! (which is how the library writes it). In that text every `{` opens a node, every node
//! but the top one is an element of a `subs` array, and the nesting depth at a position can
//! be counted from either end. So a node whose text lies in the common prefix keeps its id,
//! flags and level, and so does a node whose text (up to the end) lies in the common suffix,
//! provided the read of the changed region ends at that node's start at that node's level.
//! Anything else (text that is not canonical, a change touching the top node, a region
//! that does not end on such a boundary) returns `None` and the caller reads the whole
//! frame as before.

use alloc::vec::Vec;

use crate::tree::{FlatTree, AUTHORITY_BIT, LEVEL_MASK, ROOT_BIT};
use crate::NodeId;

/// Where every node of a canonical tree's JSON starts (the offset of its `{`), in the
/// tree's pre-order: in canonical text every `{` opens a node. `json` must be what
/// [`FlatTree::write_json`] writes (or a received text it accepted as canonical); the
/// result then has one entry per node.
pub fn node_offsets(json: &[u8], out: &mut Vec<u32>) {
    out.clear();
    out.extend(
        json.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'{')
            .map(|(i, _)| i as u32),
    );
}

/// Length of the common prefix of `a` and `b`.
pub fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 256;
    let n = a.len().min(b.len());
    let mut i = 0;
    // Whole blocks by memcmp (vectorised), then the first differing block bytewise.
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Length of the common suffix of `a` and `b`, at most `max`.
pub fn common_suffix(a: &[u8], b: &[u8], max: usize) -> usize {
    const BLOCK: usize = 256;
    let n = a.len().min(b.len()).min(max);
    let (la, lb) = (a.len(), b.len());
    let mut i = 0;
    while i + BLOCK <= n && a[la - i - BLOCK..la - i] == b[lb - i - BLOCK..lb - i] {
        i += BLOCK;
    }
    while i < n && a[la - i - 1] == b[lb - i - 1] {
        i += 1;
    }
    i
}

/// A changed tree read by [`reread_changed`].
#[derive(Debug)]
pub struct Reread {
    /// The new tree, exactly as a full read of the new text gives it.
    pub tree: FlatTree,
    /// Where each of its nodes starts in the new text ([`node_offsets`] of it).
    pub offsets: Vec<u32>,
    /// The old tree's nodes (pre-order indices) that were re-read: everything else of the
    /// old tree is in the new one as it was.
    pub replaced: core::ops::Range<usize>,
    /// The new tree's nodes that replaced them.
    pub inserted: core::ops::Range<usize>,
}

/// Reads a node sync's tree text `new` (from the top node's `{` to the closing `]` of its
/// `subs`: the tree's JSON without its last `}`) given the previous tree from the same
/// link: `old` with its text `old_text` (same form) and `old_offsets` ([`node_offsets`]).
/// `old_text` must be canonical and `old` what it reads as.
///
/// Returns `None` (the caller then reads the whole text) unless the change lies below the
/// top node and `new` is canonical wherever it differs; `max_depth` bounds `subs` the same
/// way the full reader does ([`MAX_TREE_DEPTH`](crate::MAX_TREE_DEPTH) for a node sync), so
/// a tree the full reader refuses is never returned.
pub fn reread_changed(
    old: &FlatTree,
    old_offsets: &[u32],
    old_text: &[u8],
    new: &[u8],
    max_depth: usize,
) -> Option<Reread> {
    let n_old = old.size();
    if n_old < 2 || old_offsets.len() != n_old {
        return None;
    }
    let p = common_prefix(old_text, new);
    if p == old_text.len() && p == new.len() {
        return None; // unchanged: the caller's own business
    }
    let s = common_suffix(old_text, new, old_text.len().min(new.len()) - p);
    // The node the changed region starts in: the last one starting at or before `p` (its
    // `{` and everything before it are unchanged, so its level is). The top node's header
    // must be unchanged: node 1 must start inside the common prefix.
    let r = old_offsets
        .partition_point(|&o| o as usize <= p)
        .checked_sub(1)?;
    if r == 0 {
        return None;
    }
    // Old nodes whose text up to the end lies in the common suffix: from `m_min` on.
    let suffix_start = old_text.len() - s;
    let m_min = old_offsets.partition_point(|&o| (o as usize) < suffix_start);
    let delta = new.len() as i64 - old_text.len() as i64;
    let shifted = |m: usize| (i64::from(old_offsets[m]) + delta) as usize;

    let ids = old.ids();
    let meta = old.meta();
    let mut tree = FlatTree::with_capacity(n_old + 8);
    let mut offsets: Vec<u32> = Vec::with_capacity(n_old + 8);
    tree.extend_raw(&ids[..r], &meta[..r]);
    offsets.extend_from_slice(&old_offsets[..r]);

    // Read canonical nodes from node r's `{` until the next element start is an old
    // suffix node's, shifted, at its level (splice there) or the top's `subs` closes.
    let b = new;
    let mut i = old_offsets[r] as usize;
    let mut level = usize::from(meta[r] & LEVEL_MASK);
    let mut m = m_min;
    loop {
        // At an element start (a `{` of a node at `level`), or where one must be.
        while m < n_old && shifted(m) < i {
            m += 1;
        }
        if m < n_old && shifted(m) == i && usize::from(meta[m] & LEVEL_MASK) == level {
            let inserted = r..tree.size();
            tree.extend_raw(&ids[m..], &meta[m..]);
            offsets.extend(
                old_offsets[m..]
                    .iter()
                    .map(|&o| (i64::from(o) + delta) as u32),
            );
            return Some(Reread {
                tree,
                offsets,
                replaced: r..m,
                inserted,
            });
        }
        let start = i;
        let (id, len) = node_header(b.get(i..)?)?;
        i += len;
        let mut bits = level as u16;
        for (lit, bit) in [
            (&br#","root":true"#[..], ROOT_BIT),
            (&br#","hasTimeAuthority":true"#[..], AUTHORITY_BIT),
        ] {
            if b.get(i..)?.starts_with(lit) {
                i += lit.len();
                bits |= bit;
            }
        }
        tree.push_raw(id, bits);
        offsets.push(u32::try_from(start).ok()?);
        const SUBS: &[u8] = br#","subs":["#;
        if b.get(i..)?.starts_with(SUBS) {
            // The full reader refuses `subs` on a node `max_depth` levels down.
            if level >= max_depth {
                return None;
            }
            i += SUBS.len();
            level += 1;
            continue; // canonical `subs` are never empty: a node follows
        }
        if b.get(i) != Some(&b'}') {
            return None;
        }
        i += 1;
        // After a node's `}`: `,` and a sibling, or `]}` closing the parent (repeatedly).
        loop {
            match b.get(i) {
                Some(b',') => {
                    i += 1;
                    break;
                }
                Some(b']') if level == 1 => {
                    // The top node's `subs` closed: that is the end of the text.
                    let inserted = r..tree.size();
                    return (i + 1 == b.len()).then_some(Reread {
                        tree,
                        offsets,
                        replaced: r..n_old,
                        inserted,
                    });
                }
                Some(b']') if b.get(i + 1) == Some(&b'}') => {
                    i += 2;
                    level -= 1;
                }
                _ => return None,
            }
        }
    }
}

/// `{"nodeId":` and a canonical u32 (1-10 digits, no leading zero) followed by `,` or `}`:
/// the id and the length read.
fn node_header(rest: &[u8]) -> Option<(NodeId, usize)> {
    const KEY: &[u8] = br#"{"nodeId":"#;
    let digits = rest.strip_prefix(KEY)?;
    let n = digits
        .iter()
        .take(11)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if n == 0 || n > 10 || (n > 1 && digits[0] == b'0') {
        return None;
    }
    if !matches!(digits.get(n), Some(b',' | b'}')) {
        return None;
    }
    let v = digits[..n]
        .iter()
        .fold(0u64, |v, b| v * 10 + u64::from(b - b'0'));
    Some((NodeId(u32::try_from(v).ok()?), KEY.len() + n))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::{NodeTree, MAX_TREE_DEPTH};
    use alloc::string::String;
    use alloc::vec;
    use proptest::prelude::*;

    /// The tree's JSON without its last `}` (the form `reread_changed` takes) and its
    /// node offsets.
    fn text(t: &FlatTree) -> (Vec<u8>, Vec<u32>) {
        let mut json = Vec::new();
        t.write_json(&mut json);
        let mut offs = Vec::new();
        node_offsets(&json, &mut offs);
        json.pop();
        (json, offs)
    }

    /// What the full reader makes of `body` (the tree's JSON without its last `}`):
    /// `None` if it refuses it.
    fn full_read(body: &[u8], max_depth: usize) -> Option<FlatTree> {
        let s = core::str::from_utf8(body).unwrap();
        let at = s.find(r#","subs":"#)?;
        let head = &s[..at];
        let id: u32 = head["{\"nodeId\":".len()..]
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut t = FlatTree::single(
            NodeId(id),
            head.contains(r#""root":true"#),
            head.contains(r#""hasTimeAuthority":true"#),
        );
        let canonical = t
            .parse_subs_into(&s[at + r#","subs":"#.len()..], max_depth)
            .ok()?;
        assert!(canonical);
        Some(t)
    }

    fn leaf(id: u32) -> NodeTree {
        NodeTree::leaf(NodeId(id))
    }

    /// Calls `f` on the node at pre-order index `k` (0 = the top); true if found.
    fn at_nth(t: &mut NodeTree, k: &mut usize, f: &mut dyn FnMut(&mut NodeTree)) -> bool {
        if *k == 0 {
            f(t);
            return true;
        }
        *k -= 1;
        t.subs.iter_mut().any(|s| at_nth(s, k, f))
    }

    /// Applies one edit at pre-order node `k % size`: 0 adds a leaf last, 1 adds one
    /// first, 2 removes the node's last sub, 3 toggles its `root`, 4 moves its first sub
    /// to be the top's last.
    fn edit(t: &mut NodeTree, k: usize, op: u8, id: u32) {
        let mut k = k % t.size();
        let mut moved = None;
        at_nth(t, &mut k, &mut |node| match op % 5 {
            0 => node.subs.push(leaf(id)),
            1 => node.subs.insert(0, leaf(id)),
            2 => {
                node.subs.pop();
            }
            3 => node.root = !node.root,
            _ => {
                if !node.subs.is_empty() {
                    moved = Some(node.subs.remove(0));
                }
            }
        });
        t.subs.extend(moved);
    }

    fn arb_tree() -> impl Strategy<Value = NodeTree> {
        let node = any::<u32>().prop_map(|id| NodeTree {
            node_id: NodeId(id % 3 * 1_000_000_000 + id % 1000),
            root: false,
            has_time_authority: id % 7 == 0,
            subs: Vec::new(),
        });
        node.clone()
            .prop_recursive(8, 120, 5, move |inner| {
                (node.clone(), prop::collection::vec(inner, 0..5)).prop_map(|(mut n, subs)| {
                    n.subs = subs;
                    n
                })
            })
            .prop_map(|mut t| {
                // `reread_changed` needs a held tree with subs.
                t.subs.push(leaf(1));
                t
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Whatever the edits, a re-read tree (and its offsets) is what a full read of the
        /// new text gives; and it is `None` only when it cannot splice, never wrong.
        #[test]
        fn reread_is_the_full_read(
            old in arb_tree(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u32>()), 1..4),
            max_depth in 1usize..10,
        ) {
            let mut new = old.clone();
            // One leaf joining anywhere is the common case: it must be re-read.
            let one_join = edits.len() == 1 && edits[0].1 % 5 < 2;
            for &(k, op, id) in &edits {
                edit(&mut new, k, op, id);
            }
            let old_flat = FlatTree::from_tree(&old).unwrap();
            let new_flat = FlatTree::from_tree(&new).unwrap();
            let (old_text, old_offs) = text(&old_flat);
            let (new_text, new_offs) = text(&new_flat);
            prop_assume!(old_flat.depth() <= max_depth + 1);
            let got = reread_changed(&old_flat, &old_offs, &old_text, &new_text, max_depth);
            let too_deep = new_flat.depth() > max_depth + 1;
            prop_assert!(got.is_some() || !one_join || too_deep);
            if let Some(r) = got {
                let full = full_read(&new_text, max_depth);
                prop_assert_eq!(Some(&r.tree), full.as_ref());
                prop_assert_eq!(&r.tree, &new_flat);
                prop_assert_eq!(&r.offsets, &new_offs);
                // Outside the ranges, the trees are the same nodes.
                let (o, n) = (old_flat.ids(), new_flat.ids());
                prop_assert_eq!(&o[..r.replaced.start], &n[..r.inserted.start]);
                prop_assert_eq!(&o[r.replaced.end..], &n[r.inserted.end..]);
            }
        }
    }

    #[test]
    fn a_joined_leaf_is_read_alone_and_a_too_deep_one_is_not_read() {
        // 1 -> 2 -> 3 -> ... a chain of `MAX_TREE_DEPTH` levels below the top, and a leaf.
        let mut chain = leaf(1000);
        for id in (1..MAX_TREE_DEPTH as u32).rev() {
            let mut n = leaf(id);
            n.subs.push(chain);
            chain = n;
        }
        let mut old = leaf(7);
        old.subs = vec![chain, leaf(500)];
        let old_flat = FlatTree::from_tree(&old).unwrap();
        assert_eq!(old_flat.depth(), MAX_TREE_DEPTH + 1);
        let (old_text, old_offs) = text(&old_flat);
        // A leaf joins the shallow node: read, and the same as a full read.
        let mut new = old.clone();
        new.subs[1].subs.push(leaf(501));
        let (new_text, _) = text(&FlatTree::from_tree(&new).unwrap());
        let r = reread_changed(&old_flat, &old_offs, &old_text, &new_text, MAX_TREE_DEPTH)
            .expect("a local change is re-read");
        assert_eq!(Some(r.tree), full_read(&new_text, MAX_TREE_DEPTH));
        // A leaf below the deepest node: the full reader refuses it, so must this.
        let mut deep = old.clone();
        let mut at = &mut deep.subs[0];
        while !at.subs.is_empty() {
            at = &mut at.subs[0];
        }
        at.subs.push(leaf(9999));
        let (deep_text, _) = text(&FlatTree::from_tree(&deep).unwrap());
        assert_eq!(full_read(&deep_text, MAX_TREE_DEPTH), None);
        assert!(
            reread_changed(&old_flat, &old_offs, &old_text, &deep_text, MAX_TREE_DEPTH).is_none()
        );
        // Text that is not canonical where it changed is left to the full reader.
        let spaced = String::from_utf8(new_text.clone())
            .unwrap()
            .replace(r#"{"nodeId":501}"#, r#"{ "nodeId":501}"#);
        assert!(reread_changed(
            &old_flat,
            &old_offs,
            &old_text,
            spaced.as_bytes(),
            MAX_TREE_DEPTH
        )
        .is_none());
    }

    #[test]
    fn unbalanced_text_is_not_spliced() {
        // Node 2 gains a `subs` that never closes: the old suffix node 4 is met at level
        // 2 where the old text had it at 1. Splicing there would return a tree for text
        // that is not JSON; the full reader refuses it.
        let old = br#"{"nodeId":1,"subs":[{"nodeId":2},{"nodeId":4}]"#;
        let new = br#"{"nodeId":1,"subs":[{"nodeId":2,"subs":[{"nodeId":4}]"#;
        let mut old_tree = FlatTree::single(NodeId(1), false, false);
        old_tree.push_raw(NodeId(2), 1);
        old_tree.push_raw(NodeId(4), 1);
        let mut offs = Vec::new();
        node_offsets(old, &mut offs);
        assert_eq!(full_read(new, MAX_TREE_DEPTH), None);
        assert!(reread_changed(&old_tree, &offs, old, new, MAX_TREE_DEPTH).is_none());
    }

    #[test]
    fn common_ends() {
        let a: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut b = a.clone();
        b[700] = 255;
        assert_eq!(common_prefix(&a, &b), 700);
        assert_eq!(common_suffix(&a, &b, 1000), 299);
        assert_eq!(common_suffix(&a, &b, 10), 10);
        assert_eq!(common_prefix(&a, &a[..10]), 10);
    }
}
