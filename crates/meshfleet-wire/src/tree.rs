//! The node tree carried by node sync (`NodeTree` in the library's protocol.hpp).

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::lenient::LenientU32;
use crate::nesting::MAX_JSON_NESTING;
use crate::NodeId;

/// Deepest node tree accepted, in tree levels below the root of the frame: 127, as in the
/// library.
///
/// Not a limit of its own in the library but what its JSON nesting limit
/// ([`MAX_JSON_NESTING`], 255) leaves: the frame's object is nesting level 1 and each tree
/// level adds two (a `subs` array and the object in it), so a node `k` levels below the
/// sender sits at nesting `2k + 1`, at most 255. A chain of 128 nodes (the sender and 127
/// below it) fits, the deepest node a leaf (an empty `subs` there would be level 256: the
/// library omits empty `subs`, and so do we). A frame one level deeper exceeds the nesting
/// limit and is refused as a whole ([`DecodeError::Json`](crate::DecodeError::Json)), as
/// the library drops it with `TooDeep`.
///
/// Each level is a radio hop: a mesh whose tree is more than 128 nodes across cannot sync
/// under the library either. The `subs` parser does not recurse at all; it also counts
/// levels against this budget, and checks the JSON nesting of everything it skips.
pub const MAX_TREE_DEPTH: usize = (MAX_JSON_NESTING - 1) / 2;

/// One node and everything behind it: `{nodeId[,root][,hasTimeAuthority][,subs]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTree {
    /// The node's id.
    pub node_id: NodeId,
    /// Whether this node is the mesh root.
    pub root: bool,
    /// Whether this node has an authoritative clock (RTC, internet).
    pub has_time_authority: bool,
    /// The trees of its links.
    pub subs: Vec<Self>,
}

impl NodeTree {
    /// A leaf.
    pub fn leaf(node_id: NodeId) -> Self {
        Self {
            node_id,
            ..Self::default()
        }
    }

    /// Whether `id` is this node or anywhere below it (depth first, like `layout::contains`).
    pub fn contains(&self, id: NodeId) -> bool {
        self.node_id == id || self.subs.iter().any(|s| s.contains(id))
    }

    /// Number of nodes in the tree, this one included (`layout::size`).
    pub fn size(&self) -> usize {
        1 + self.subs.iter().map(Self::size).sum::<usize>()
    }

    /// Whether any node in the tree is the root (`layout::isRooted`).
    pub fn is_rooted(&self) -> bool {
        self.root || self.subs.iter().any(Self::is_rooted)
    }

    /// Appends every node id below this node (this one excluded), depth first.
    pub fn collect_ids(&self, out: &mut Vec<NodeId>) {
        for s in &self.subs {
            out.push(s.node_id);
            s.collect_ids(out);
        }
    }

    /// A 64-bit digest of the whole tree (FNV-1a over ids, flags and shape), to tell
    /// cheaply whether a tree changed without keeping a copy.
    pub fn digest(&self) -> u64 {
        fn walk(t: &NodeTree, h: &mut u64) {
            let mut eat = |x: u64| {
                for b in x.to_le_bytes() {
                    *h = (*h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
            };
            eat(u64::from(t.node_id.0)
                | u64::from(t.root) << 32
                | u64::from(t.has_time_authority) << 33);
            eat(t.subs.len() as u64);
            for s in &t.subs {
                walk(s, h);
            }
        }
        let mut h = 0xcbf2_9ce4_8422_2325;
        walk(self, &mut h);
        h
    }

    /// Depth in tree levels (a leaf is 1).
    pub fn depth(&self) -> usize {
        1 + self.subs.iter().map(Self::depth).max().unwrap_or(0)
    }

    /// Serializes the `nodeId[,root][,hasTimeAuthority][,subs]` keys into an open map.
    pub(crate) fn serialize_fields<M: SerializeMap>(
        &self,
        map: &mut M,
        with_authority: bool,
    ) -> Result<(), M::Error> {
        map.serialize_entry("nodeId", &self.node_id.0)?;
        if self.root {
            map.serialize_entry("root", &true)?;
        }
        if with_authority && self.has_time_authority {
            map.serialize_entry("hasTimeAuthority", &true)?;
        }
        if !self.subs.is_empty() {
            map.serialize_entry("subs", &self.subs)?;
        }
        Ok(())
    }
}

impl Serialize for NodeTree {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        self.serialize_fields(&mut map, true)?;
        map.end()
    }
}

/// Bits of [`FlatTree`]'s per-node word: the level below the top, and the two flags.
pub(crate) const LEVEL_MASK: u16 = 0x3fff;
pub(crate) const ROOT_BIT: u16 = 1 << 14;
pub(crate) const AUTHORITY_BIT: u16 = 1 << 15;

/// A node tree stored flat: every node in pre-order (as a node sync's text lists them),
/// each with its level below the top node. Two allocations whatever the tree's size,
/// where a [`NodeTree`] takes one per node; parsed straight from a node sync's text
/// ([`Frame::node_sync_tree`](crate::Frame::node_sync_tree)) and written back as JSON
/// without serde ([`FlatTree::write_json`]).
///
/// Invariant: empty, or the top node at level 0 and every later node at a level from 1 to
/// one more than the node before it. Levels are stored in 14 bits: a tree deeper than
/// 16,383 levels (no frame can carry one: [`MAX_TREE_DEPTH`]) does not convert from a
/// [`NodeTree`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlatTree {
    ids: Vec<NodeId>,
    /// Per node: level below the top (bits 0-13), `root` (bit 14), `hasTimeAuthority` (bit 15).
    meta: Vec<u16>,
}

/// A digest of a node-sync tree (ids, root flags, authority flags below the top, and
/// shape) made the way it is sent: the top node, then each subtree one level down, in
/// order. A sender folds the trees it holds without joining them; the receiver gets the
/// same number from the tree it holds ([`FlatTree::sync_digest`]). The top node's
/// `hasTimeAuthority` is left out: the library writes it in requests and not in replies,
/// so the tree a neighbour holds from us depends on which came last.
#[derive(Clone, Copy, Debug)]
pub struct SyncDigest {
    h: u64,
    n: u64,
}

impl SyncDigest {
    /// Starts with the top node.
    pub fn new(top: NodeId, root: bool) -> Self {
        let mut d = Self {
            h: 0x6d65_7368_666c_6565,
            n: 0,
        };
        d.eat(top, if root { ROOT_BIT } else { 0 });
        d
    }

    fn eat(&mut self, id: NodeId, meta: u16) {
        let h = (self.h ^ (u64::from(id.0) | u64::from(meta) << 32))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.h = h ^ h >> 29;
        self.n += 1;
    }

    /// Adds `sub` (a tree we hold from one of our links) as a subtree of the top node.
    pub fn add_sub(&mut self, sub: &FlatTree) {
        for (&id, &m) in sub.ids.iter().zip(&sub.meta) {
            let level = (m & LEVEL_MASK).saturating_add(1) & LEVEL_MASK;
            self.eat(id, (m & !LEVEL_MASK) | level);
        }
    }

    /// The digest.
    pub fn finish(self) -> u64 {
        self.h ^ self.n
    }
}

impl FlatTree {
    /// A tree of one node.
    pub fn single(node_id: NodeId, root: bool, has_time_authority: bool) -> Self {
        let mut t = Self::default();
        t.push(node_id, 0, root, has_time_authority);
        t
    }

    /// An empty tree with room for `n` nodes.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            meta: Vec::with_capacity(n),
        }
    }

    /// The per-node words (level and flags, see [`LEVEL_MASK`]), in pre-order.
    pub(crate) fn meta(&self) -> &[u16] {
        &self.meta
    }

    /// Appends nodes as they are (ids and their words); the caller keeps the invariant.
    pub(crate) fn extend_raw(&mut self, ids: &[NodeId], meta: &[u16]) {
        self.ids.extend_from_slice(ids);
        self.meta.extend_from_slice(meta);
    }

    /// Appends one node with its word; the caller keeps the invariant.
    pub(crate) fn push_raw(&mut self, id: NodeId, meta: u16) {
        self.ids.push(id);
        self.meta.push(meta);
    }

    fn push(&mut self, id: NodeId, level: u16, root: bool, authority: bool) {
        self.ids.push(id);
        let mut m = level & LEVEL_MASK;
        if root {
            m |= ROOT_BIT;
        }
        if authority {
            m |= AUTHORITY_BIT;
        }
        self.meta.push(m);
    }

    /// The same tree, flat; `None` if it is deeper than 16,383 levels.
    pub fn from_tree(tree: &NodeTree) -> Option<Self> {
        let mut out = Self::default();
        // Iterative pre-order walk: (node, level), children pushed in reverse.
        let mut stack = alloc::vec![(tree, 0usize)];
        while let Some((t, level)) = stack.pop() {
            let level16 = u16::try_from(level).ok().filter(|l| *l <= LEVEL_MASK)?;
            out.push(t.node_id, level16, t.root, t.has_time_authority);
            stack.extend(t.subs.iter().rev().map(|s| (s, level + 1)));
        }
        Some(out)
    }

    /// The same tree as nested [`NodeTree`]s (one allocation per node with subs).
    pub fn to_tree(&self) -> NodeTree {
        // The open nodes of the current path, top first.
        let mut path: Vec<NodeTree> = Vec::new();
        for (i, (&id, &m)) in self.ids.iter().zip(&self.meta).enumerate() {
            let level = if i == 0 {
                0
            } else {
                usize::from(m & LEVEL_MASK).max(1)
            };
            while path.len() > level {
                close_last(&mut path);
            }
            path.push(NodeTree {
                node_id: id,
                root: m & ROOT_BIT != 0,
                has_time_authority: m & AUTHORITY_BIT != 0,
                subs: Vec::new(),
            });
        }
        while path.len() > 1 {
            close_last(&mut path);
        }
        path.pop().unwrap_or_default()
    }

    /// The top node's id (0 for an empty tree).
    pub fn node_id(&self) -> NodeId {
        self.ids.first().copied().unwrap_or_default()
    }

    /// Whether the top node is the mesh root.
    pub fn root(&self) -> bool {
        self.meta.first().is_some_and(|m| m & ROOT_BIT != 0)
    }

    /// Whether the top node has an authoritative clock.
    pub fn has_time_authority(&self) -> bool {
        self.meta.first().is_some_and(|m| m & AUTHORITY_BIT != 0)
    }

    /// Number of nodes, the top one included ([`NodeTree::size`]).
    pub fn size(&self) -> usize {
        self.ids.len()
    }

    /// Every node id in pre-order, the top one first.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// Whether `id` is the top node or anywhere below it ([`NodeTree::contains`]).
    pub fn contains(&self, id: NodeId) -> bool {
        self.ids.contains(&id)
    }

    /// Whether `id` is anywhere below the top node.
    pub fn subs_contain(&self, id: NodeId) -> bool {
        self.ids.get(1..).is_some_and(|s| s.contains(&id))
    }

    /// Whether any node is the mesh root ([`NodeTree::is_rooted`]).
    pub fn is_rooted(&self) -> bool {
        self.meta.iter().any(|m| m & ROOT_BIT != 0)
    }

    /// Depth in tree levels, a lone node being 1 ([`NodeTree::depth`]; 0 when empty).
    pub fn depth(&self) -> usize {
        self.meta
            .iter()
            .map(|m| usize::from(m & LEVEL_MASK) + 1)
            .max()
            .unwrap_or(0)
    }

    /// A 64-bit digest of the whole tree (ids, flags and shape), to tell cheaply whether
    /// what we told a neighbour is still current. One multiply per node.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (&id, &m) in self.ids.iter().zip(&self.meta) {
            h = (h ^ (u64::from(id.0) | u64::from(m) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 29;
        }
        h ^ self.ids.len() as u64
    }

    /// The digest of this tree that meshfleet's digest node sync sends
    /// ([`SyncDigest`]): what a neighbour that sent us this tree computes for the tree it
    /// would send now, if nothing changed since.
    pub fn sync_digest(&self) -> u64 {
        let mut d = SyncDigest::new(self.node_id(), self.root());
        for (&id, &m) in self.ids.iter().zip(&self.meta).skip(1) {
            d.eat(id, m);
        }
        d.finish()
    }

    /// Appends the tree's compact JSON as the library writes it
    /// (`{"nodeId":..[,"root":true][,"hasTimeAuthority":true][,"subs":[..]]}` for every
    /// node, empty `subs` omitted) and returns the byte range of the top node's `subs`
    /// array in `out`, if it has subs. Byte-identical to serializing [`Self::to_tree`]
    /// with serde_json (tested).
    pub fn write_json(&self, out: &mut Vec<u8>) -> Option<(usize, usize)> {
        if self.ids.is_empty() {
            return None;
        }
        out.reserve(self.ids.len() * 26 + 16);
        let mut subs_start = None;
        let mut prev = 0usize;
        for (i, (&id, &m)) in self.ids.iter().zip(&self.meta).enumerate() {
            let level = usize::from(m & LEVEL_MASK);
            if i > 0 {
                if level > prev {
                    if i == 1 {
                        subs_start = Some(out.len() + br#","subs":"#.len());
                    }
                    out.extend_from_slice(br#","subs":["#);
                } else {
                    out.push(b'}');
                    for _ in level..prev {
                        out.extend_from_slice(b"]}");
                    }
                    out.push(b',');
                }
            }
            prev = level;
            out.extend_from_slice(br#"{"nodeId":"#);
            write_u32(out, id.0);
            if m & ROOT_BIT != 0 {
                out.extend_from_slice(br#","root":true"#);
            }
            if m & AUTHORITY_BIT != 0 {
                out.extend_from_slice(br#","hasTimeAuthority":true"#);
            }
        }
        out.push(b'}');
        for _ in 0..prev {
            out.extend_from_slice(b"]}");
        }
        // The top node's `subs` array ends just before its closing brace.
        subs_start.map(|s| (s, out.len() - 1))
    }

    /// Parses a node sync's `subs` text into this tree, below its top node (see
    /// [`parse_subs`] for what is read and refused). Returns whether `text` is byte for
    /// byte what [`Self::write_json`] writes for the top node's subs. On error the tree
    /// is left with whatever was read; callers drop it.
    /// [`Self::parse_subs_into`] on a text that may go on after the `subs` value;
    /// also returns the value's length.
    pub(crate) fn parse_subs_prefix(
        &mut self,
        text: &str,
        max_depth: usize,
    ) -> Result<(bool, usize), &'static str> {
        parse_flat_prefix(text, max_depth, self)
    }

    pub(crate) fn parse_subs_into(
        &mut self,
        text: &str,
        max_depth: usize,
    ) -> Result<bool, &'static str> {
        parse_flat(text, max_depth, self)
    }
}

/// Pops the last node of `path` into its parent's subs.
fn close_last(path: &mut Vec<NodeTree>) {
    if let Some(done) = path.pop() {
        if let Some(parent) = path.last_mut() {
            parent.subs.push(done);
        }
    }
}

/// Appends `n` in decimal.
fn write_u32(out: &mut Vec<u8>, mut n: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Parses a node sync's `subs` value into trees, iteratively: stack use does not grow with
/// the tree's depth (a recursive descent needs ~0.65 KiB of stack per tree level in a
/// release build, ~3.3 KiB in a debug build; 127 levels would be 84 / 426 KiB).
///
/// `text` is one JSON value as borrowed from the frame's envelope, which serde_json has
/// already validated; anything unexpected is still an error, never a panic. It reads
/// exactly what the recursive serde parser it replaced read (the tests compare the two on
/// random input), which follows the library's `NodeTree` constructor, leniently:
/// * `subs` that is not an array is empty; elements that are not objects are skipped;
/// * `nodeId` that is not a uint32 is 0; `root` / `hasTimeAuthority` are set only by
///   `true`; other keys are ignored; with duplicate keys the last one wins;
/// * a `subs` array (even empty) on a node `max_depth` levels below the sender is refused
///   ([`MAX_TREE_DEPTH`]), and so is any value nesting deeper than the library's limit
///   ([`MAX_JSON_NESTING`], counting the frame's object as level 1): [`TOO_DEEP`], which
///   [`decode`](crate::decode) reports as a too-deep frame.
pub(crate) fn parse_subs(text: &str, max_depth: usize) -> Result<Vec<NodeTree>, &'static str> {
    let mut flat = FlatTree::single(NodeId(0), false, false);
    parse_flat(text, max_depth, &mut flat)?;
    Ok(flat.to_tree().subs)
}

/// [`parse_subs`] into a flat tree: the nodes are appended to `out` (which holds the
/// sender at level 0) in pre-order, no allocation per node.
///
/// Returns whether `text` is exactly what [`FlatTree::write_json`] writes for the sender's
/// subs (compact, keys in the library's order, nothing else): then it can be kept as the
/// tree's JSON instead of writing it again.
fn parse_flat(text: &str, max_depth: usize, out: &mut FlatTree) -> Result<bool, &'static str> {
    parse_flat_prefix(text, max_depth, out).map(|(canonical, _)| canonical)
}

/// [`parse_flat`], also returning how many bytes of `text` the value took (what follows
/// is not read).
pub(crate) fn parse_flat_prefix(
    text: &str,
    max_depth: usize,
    out: &mut FlatTree,
) -> Result<(bool, usize), &'static str> {
    const MALFORMED: &str = "malformed JSON";
    let mut c = Cursor {
        text,
        i: 0,
        spaced: false,
    };
    c.ws();
    if c.peek() != Some(b'[') {
        c.value(MAX_JSON_NESTING - 1)?; // in the frame's object (level 1)
        return Ok((false, c.i));
    }
    if max_depth == 0 {
        return Err(TOO_DEEP);
    }
    c.i += 1;
    // Index in `out` of the sender (whose subs we collect) and of every open node below
    // it, innermost last; its length - 1 is the innermost node's level below the sender.
    let top = out.ids.len().checked_sub(1).ok_or(MALFORMED)?;
    let mut open: Vec<usize> = alloc::vec![top];
    let base_level = out.meta[top] & LEVEL_MASK;
    // Whether we are in the innermost node's `subs` array (else in its object), and whether
    // the next item is the first of its array/object (else a comma comes first).
    let (mut in_array, mut first) = (true, true);
    // Whether the text so far is as `write_json` writes it, and how far the innermost
    // object has come in the library's key order: 0 opened, 1 nodeId, 2 root,
    // 3 hasTimeAuthority, 4 subs (only its closing brace may follow).
    let mut canonical = true;
    let mut stage = 0u8;
    loop {
        c.ws();
        let close = if in_array { b']' } else { b'}' };
        if c.peek() == Some(close) {
            c.i += 1;
            if in_array {
                canonical &= !first; // `write_json` omits an empty `subs`
                stage = 4;
                if open.len() == 1 {
                    break; // the sender's `subs` is complete
                }
            } else {
                canonical &= stage >= 1;
                open.pop().ok_or(MALFORMED)?;
            }
            in_array = !in_array;
            first = false;
            continue;
        }
        // Fast paths for the text the library (and we) write: each does what the general
        // path below does with the same text.
        if !in_array && !first {
            let rest = c.rest();
            if rest.starts_with(br#","subs":["#) {
                canonical &= (1..4).contains(&stage);
                let node = *open.last().ok_or(MALFORMED)?;
                out.ids.truncate(node + 1);
                out.meta.truncate(node + 1);
                if open.len() > max_depth {
                    return Err(TOO_DEEP);
                }
                c.i += br#","subs":["#.len();
                (in_array, first) = (true, true);
                continue;
            }
            let flag = if rest.starts_with(br#","root":true"#) && stage == 1 {
                Some((ROOT_BIT, br#","root":true"#.len(), 2))
            } else if rest.starts_with(br#","hasTimeAuthority":true"#) && (1..3).contains(&stage) {
                Some((AUTHORITY_BIT, br#","hasTimeAuthority":true"#.len(), 3))
            } else {
                None
            };
            if let Some((bit, len, next)) = flag {
                if let Some(m) = out.meta.last_mut() {
                    *m |= bit;
                }
                c.i += len;
                stage = next;
                continue;
            }
        }
        if !first {
            c.expect(b',')?;
            c.ws();
        }
        first = false;
        if in_array {
            if c.peek() == Some(b'{') {
                c.i += 1;
                // Levels are below MAX_TREE_DEPTH + 1 here (checked when the array opened).
                let level = base_level.saturating_add(open.len() as u16);
                open.push(out.ids.len());
                out.push(NodeId(0), level, false, false);
                (in_array, first) = (false, true);
                stage = 0;
                // Fast path: `"nodeId":` and plain digits, as the library writes them,
                // read as the general path reads them.
                if let Some((id, len, exact)) = plain_node_id(c.rest()) {
                    if let Some(slot) = out.ids.last_mut() {
                        *slot = id;
                    }
                    c.i += len;
                    first = false;
                    stage = 1;
                    canonical &= exact;
                }
            } else {
                canonical = false;
                // Not an object: skipped (the array is at nesting 2L + 2).
                c.value(MAX_JSON_NESTING.saturating_sub(2 * open.len()))?;
            }
            continue;
        }
        canonical = false;
        let (key, escaped) = c.string()?;
        c.expect(b':')?;
        c.ws();
        let level = open.len() - 1;
        // A value in the object of a node L levels below the sender (nesting 2L + 1).
        let budget = MAX_JSON_NESTING.saturating_sub(2 * level + 1);
        let key: Cow<'_, str> = if escaped {
            Cow::Owned(serde_json::from_str::<String>(key).map_err(|_| MALFORMED)?)
        } else {
            Cow::Borrowed(&key[1..key.len() - 1])
        };
        let node = *open.last().ok_or(MALFORMED)?;
        match key.as_ref() {
            "subs" => {
                // A later `subs` replaces an earlier one: drop what the earlier one added.
                out.ids.truncate(node + 1);
                out.meta.truncate(node + 1);
                if c.peek() == Some(b'[') {
                    if level >= max_depth {
                        return Err(TOO_DEEP);
                    }
                    c.i += 1;
                    (in_array, first) = (true, true);
                } else {
                    c.value(budget)?;
                }
            }
            "nodeId" => out.ids[node] = NodeId(lenient_u32(c.value(budget)?).unwrap_or(0)),
            "root" => set_bit(&mut out.meta[node], ROOT_BIT, c.value(budget)? == "true"),
            "hasTimeAuthority" => set_bit(
                &mut out.meta[node],
                AUTHORITY_BIT,
                c.value(budget)? == "true",
            ),
            _ => {
                c.value(budget)?;
            }
        }
    }
    Ok((canonical && !c.spaced, c.i))
}

fn set_bit(m: &mut u16, bit: u16, on: bool) {
    if on {
        *m |= bit;
    } else {
        *m &= !bit;
    }
}

/// The tree parser's error for nesting beyond the library's limits.
pub(crate) const TOO_DEEP: &str = "node tree nested too deep";

/// `"nodeId":` followed by 1-10 digits and `,` or `}`: the id as [`lenient_u32`] reads it
/// (0 when out of range), the length read (up to the delimiter) and whether the digits
/// are what `write_json` writes for that id (not out of range).
fn plain_node_id(rest: &[u8]) -> Option<(NodeId, usize, bool)> {
    const KEY: &[u8] = br#""nodeId":"#;
    let digits = rest.get(KEY.len()..)?;
    if !rest.starts_with(KEY) {
        return None;
    }
    let n = digits
        .iter()
        .take(11)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if n == 0 || n > 10 || !matches!(digits.get(n), Some(b',' | b'}')) {
        return None;
    }
    let v = digits[..n]
        .iter()
        .fold(0u64, |v, b| v * 10 + u64::from(b - b'0'));
    let id = u32::try_from(v).ok();
    // A leading zero is not JSON (serde_json refuses it), so never canonical.
    let exact = id.is_some() && (n == 1 || digits[0] != b'0');
    Some((NodeId(id.unwrap_or(0)), KEY.len() + n, exact))
}

/// `LenientU32` of a scalar's text, with a fast path for plain decimal digits.
fn lenient_u32(v: &str) -> Option<u32> {
    if !v.is_empty() && v.len() <= 10 {
        let mut n: u64 = 0;
        let mut digits = true;
        for b in v.bytes() {
            digits &= b.is_ascii_digit();
            n = n * 10 + u64::from(b.wrapping_sub(b'0'));
        }
        if digits {
            return u32::try_from(n).ok();
        }
    }
    match v.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => serde_json::from_str::<LenientU32>(v).ok().and_then(|x| x.0),
        _ => None, // a string, array, object, bool or null
    }
}

/// A position in JSON text, with the few steps the `subs` parser needs.
struct Cursor<'a> {
    text: &'a str,
    i: usize,
    /// Whether any whitespace was skipped.
    spaced: bool,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        self.text.as_bytes().get(self.i..).unwrap_or_default()
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
            self.spaced = true;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), &'static str> {
        self.ws();
        if self.peek() != Some(b) {
            return Err("malformed JSON");
        }
        self.i += 1;
        Ok(())
    }

    /// The text of the string starting here, quotes included, and whether it holds an
    /// escape.
    fn string(&mut self) -> Result<(&'a str, bool), &'static str> {
        let bytes = self.text.as_bytes();
        let start = self.i;
        if bytes.get(start) != Some(&b'"') {
            return Err("malformed JSON");
        }
        let mut i = start + 1;
        let mut escaped = false;
        loop {
            match bytes.get(i) {
                Some(b'\\') => {
                    escaped = true;
                    i += 2;
                }
                Some(b'"') => break,
                Some(_) => i += 1,
                None => return Err("malformed JSON"),
            }
        }
        self.i = i + 1;
        // Both ends are ASCII quotes, so this slice is on char boundaries.
        let text = self.text.get(start..self.i).ok_or("malformed JSON")?;
        Ok((text, escaped))
    }

    /// Skips one value (iteratively, however deep) and returns its text; refuses
    /// ([`TOO_DEEP`]) a value nesting more than `budget` arrays/objects.
    fn value(&mut self, budget: usize) -> Result<&'a str, &'static str> {
        self.ws();
        let bytes = self.text.as_bytes();
        let start = self.i;
        match self.peek() {
            Some(b'"') => {
                self.string()?;
            }
            Some(b'[' | b'{') => {
                let mut depth = 0usize;
                loop {
                    match self.peek() {
                        Some(b'"') => {
                            self.string()?;
                            continue;
                        }
                        Some(b'[' | b'{') => {
                            depth += 1;
                            if depth > budget {
                                return Err(TOO_DEEP);
                            }
                        }
                        Some(b']' | b'}') => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                break;
                            }
                        }
                        Some(_) => {}
                        None => return Err("malformed JSON"),
                    }
                    self.i += 1;
                }
            }
            _ => {
                while let Some(b) = bytes.get(self.i) {
                    if matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                if self.i == start {
                    return Err("malformed JSON");
                }
            }
        }
        self.text.get(start..self.i).ok_or("malformed JSON")
    }
}

/// The recursive serde parser `parse_subs` replaced, kept as its reference.
#[cfg(test)]
mod reference {
    use super::*;
    use crate::lenient::LenientBool;
    use core::fmt;
    use serde::de::{
        self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
    };

    /// Parses `subs` arrays with an explicit depth budget.
    pub(super) struct SubsSeed {
        pub(super) depth_left: usize,
    }

    impl<'de> DeserializeSeed<'de> for SubsSeed {
        type Value = Vec<NodeTree>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for SubsSeed {
        type Value = Vec<NodeTree>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of node trees")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            if self.depth_left == 0 {
                return Err(de::Error::custom("node tree nested too deep"));
            }
            let mut out = Vec::new();
            while let Some(t) = seq.next_element_seed(TreeSeed {
                depth_left: self.depth_left - 1,
            })? {
                if let Some(t) = t {
                    out.push(t);
                }
            }
            Ok(out)
        }
        // `subs` that is not an array reads as empty, as in the library.
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Vec::new())
        }
        scalars_read_as_default!();
    }

    /// One sub-tree object; a non-object element is skipped.
    struct TreeSeed {
        depth_left: usize,
    }

    impl<'de> DeserializeSeed<'de> for TreeSeed {
        type Value = Option<NodeTree>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for TreeSeed {
        type Value = Option<NodeTree>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a node tree object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut tree = NodeTree::default();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                match key.as_ref() {
                    "nodeId" => {
                        tree.node_id = NodeId(map.next_value::<LenientU32>()?.0.unwrap_or(0))
                    }
                    "root" => tree.root = map.next_value::<LenientBool>()?.0 == Some(true),
                    "hasTimeAuthority" => {
                        tree.has_time_authority = map.next_value::<LenientBool>()?.0 == Some(true)
                    }
                    "subs" => {
                        tree.subs = map.next_value_seed(SubsSeed {
                            depth_left: self.depth_left,
                        })?
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(Some(tree))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        scalars_read_as_default!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;
    use serde::de::DeserializeSeed;

    fn by_reference(text: &str, max_depth: usize) -> Result<Vec<NodeTree>, ()> {
        let mut de = serde_json::Deserializer::from_str(text);
        de.disable_recursion_limit();
        reference::SubsSeed {
            depth_left: max_depth,
        }
        .deserialize(&mut de)
        .map_err(|_| ())
    }

    fn chain_json(levels: usize, leaf_subs: &str) -> String {
        let mut s = String::new();
        for id in 1..=levels {
            s.push_str(&format!(r#"[{{"nodeId":{id},"subs":"#));
        }
        s.push_str(leaf_subs);
        s.push_str(&"}]".repeat(levels));
        s
    }

    #[test]
    fn deep_chains_parse_without_recursion_and_respect_the_budget() {
        for levels in [1, 2, 50, MAX_TREE_DEPTH] {
            let text = chain_json(levels, "7");
            let trees = parse_subs(&text, MAX_TREE_DEPTH).expect("parses");
            assert_eq!(trees.len(), 1);
            assert_eq!(trees[0].depth(), levels);
            assert_eq!(Ok(trees), by_reference(&text, MAX_TREE_DEPTH));
        }
        // A `subs` array one level too deep, even empty, is refused by both.
        let text = chain_json(MAX_TREE_DEPTH, "[]");
        assert_eq!(parse_subs(&text, MAX_TREE_DEPTH), Err(TOO_DEEP));
        assert!(by_reference(&text, MAX_TREE_DEPTH).is_err());
        // Far deeper than any budget: refused at the budget, no stack used for it.
        let text = chain_json(100_000, "[]");
        assert_eq!(parse_subs(&text, MAX_TREE_DEPTH), Err(TOO_DEEP));
        // Junk values are skipped iteratively up to the library's nesting limit: a value
        // in the object of a node one level down (nesting 3) may nest 252 more, an
        // element of the sender's `subs` (nesting 2) 253 more.
        let junk = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let text = format!(r#"[{{"nodeId":5,"x":{}}},{}]"#, junk(252), junk(253));
        assert_eq!(
            parse_subs(&text, MAX_TREE_DEPTH),
            Ok(alloc::vec![NodeTree::leaf(NodeId(5))])
        );
        for text in [
            format!(r#"[{{"nodeId":5,"x":{}}}]"#, junk(253)),
            format!(r#"[{{"nodeId":{}}}]"#, junk(253)),
            format!(r#"[{{"subs":{}}}]"#, junk(253)),
            format!("[{}]", junk(254)),
            junk(255),
            format!(r#"{{"a":{}}}"#, junk(254)),
            // however deep, refused without recursion
            format!(r#"[{{"nodeId":5,"x":{}}}]"#, junk(100_000)),
        ] {
            assert_eq!(
                parse_subs(&text, MAX_TREE_DEPTH),
                Err(TOO_DEEP),
                "{}",
                &text[..20]
            );
        }
        assert!(parse_subs(&junk(254), MAX_TREE_DEPTH).is_ok());
    }

    #[test]
    fn malformed_text_is_an_error_not_a_panic() {
        for text in [
            "",
            "[",
            "[{",
            r#"[{"nodeId""#,
            r#"[{"nodeId":"#,
            r#"[{"nodeId":1"#,
            "[1,",
            "[,]",
            r#"[{"a":1,}]"#,
            r#"[{1:2}]"#,
            r#"[{"a" 1}]"#,
            r#"[{"a":1}"#,
            r#"["x"#,
            r#"[{"\"#,
            "[[[",
            "]",
            "[}",
            r#"[{"subs":[}]"#,
            "[1 2]",
        ] {
            let _ = parse_subs(text, MAX_TREE_DEPTH);
        }
        assert!(parse_subs("[", 5).is_err());
        assert!(parse_subs(r#"[{"nodeId":1}"#, 5).is_err());
    }

    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            "[1-9][0-9]{0,10}",
            Just("0".to_string()),
            Just("-0".to_string()),
            Just("-5".to_string()),
            Just("1e3".to_string()),
            Just("5.0".to_string()),
            Just("4294967295".to_string()),
            Just("4294967296".to_string()),
            Just("18446744073709551616".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("null".to_string()),
            Just(r#""x\"]},{[""#.to_string()),
            Just(r#""5""#.to_string()),
            Just(r#""true""#.to_string()),
        ]
    }

    fn key() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("nodeId"),
            Just("root"),
            Just("hasTimeAuthority"),
            Just("subs"),
            Just(r"node\u0049d"),
            Just(r"sub\u0073"),
            Just(r"\u0072oot"),
            Just("x"),
            Just(r#"s\"ubs"#),
            Just(""),
        ]
    }

    fn ws() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just(""), Just(""), Just(" "), Just("\n\t ")]
    }

    fn json() -> impl Strategy<Value = String> {
        scalar().prop_recursive(8, 200, 6, |inner| {
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..6), ws())
                    .prop_map(|(v, w)| format!("[{w}{}{w}]", v.join(&format!("{w},{w}")))),
                (prop::collection::vec((key(), inner), 0..6), ws())
                    .prop_map(|(kv, w)| object(&kv, w)),
            ]
        })
    }

    fn object(fields: &[(&str, String)], w: &str) -> String {
        let fields: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!(r#"{w}"{k}"{w}:{w}{v}{w}"#))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    /// Tree-shaped text: `subs` arrays of node objects (with junk among them), several
    /// levels deep, plus random other fields.
    fn tree_json() -> impl Strategy<Value = String> {
        let fields = || prop::collection::vec((key(), json()), 0..3);
        let leaf = (fields(), ws()).prop_map(|(f, w)| object(&f, w));
        leaf.prop_recursive(10, 120, 4, move |inner| {
            let element = prop_oneof![4 => inner, 1 => json()];
            (
                fields(),
                prop::collection::vec(element, 0..4),
                0usize..4,
                ws(),
            )
                .prop_map(|(mut f, subs, at, w)| {
                    let subs = format!("[{w}{}{w}]", subs.join(","));
                    f.insert(at.min(f.len()), ("subs", subs));
                    object(&f, w)
                })
        })
        .prop_map(|o| format!("[{o}]"))
    }

    fn arb_tree() -> impl Strategy<Value = NodeTree> {
        let node = (any::<u32>(), any::<bool>(), any::<bool>()).prop_map(|(id, r, a)| NodeTree {
            node_id: NodeId(id % 5 * 1_000_000_000 + id % 1000),
            root: r && id % 5 == 0,
            has_time_authority: a && id % 3 == 0,
            subs: Vec::new(),
        });
        node.clone().prop_recursive(12, 200, 5, move |inner| {
            (node.clone(), prop::collection::vec(inner, 0..5)).prop_map(|(mut n, subs)| {
                n.subs = subs;
                n
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The digest a sender folds from the trees it holds is the one the receiver
        /// computes for the tree it got, whatever the top node's authority flag said;
        /// another tree (one node more, or moved) gives another digest.
        #[test]
        fn sync_digest_folded_by_the_sender_is_the_receivers(
            subs in prop::collection::vec(arb_tree(), 0..4),
            root in any::<bool>(),
            authority in any::<bool>(),
        ) {
            let sent = NodeTree { node_id: NodeId(77), root, has_time_authority: authority, subs };
            let mut d = SyncDigest::new(NodeId(77), root);
            for s in &sent.subs {
                d.add_sub(&FlatTree::from_tree(s).expect("shallow"));
            }
            let held = FlatTree::from_tree(&sent).expect("shallow");
            prop_assert_eq!(d.finish(), held.sync_digest());
            let mut other = sent.clone();
            other.has_time_authority = !authority;
            prop_assert_eq!(FlatTree::from_tree(&other).expect("shallow").sync_digest(), held.sync_digest());
            let mut grown = sent.clone();
            grown.subs.push(NodeTree::leaf(NodeId(78)));
            prop_assert_ne!(FlatTree::from_tree(&grown).expect("shallow").sync_digest(), held.sync_digest());
            if let Some(first) = sent.subs.first() {
                // The same nodes one level deeper: the shape counts.
                let mut deeper = sent.clone();
                deeper.subs = vec![NodeTree { subs: vec![first.clone()], ..NodeTree::leaf(NodeId(79)) }];
                let mut flat = sent.clone();
                flat.subs = vec![NodeTree::leaf(NodeId(79)), first.clone()];
                prop_assert_ne!(
                    FlatTree::from_tree(&deeper).expect("shallow").sync_digest(),
                    FlatTree::from_tree(&flat).expect("shallow").sync_digest()
                );
            }
        }
    }

    #[test]
    fn flat_tree_of_a_deep_chain_and_of_nothing() {
        let text = chain_json(MAX_TREE_DEPTH, "7");
        let mut flat = FlatTree::single(NodeId(9), true, false);
        flat.parse_subs_into(&text, MAX_TREE_DEPTH).expect("parses");
        assert_eq!(flat.depth(), MAX_TREE_DEPTH + 1);
        assert_eq!(flat.size(), MAX_TREE_DEPTH + 1);
        assert!(flat.is_rooted() && flat.root() && !flat.has_time_authority());
        let empty = FlatTree::default();
        assert_eq!(
            (empty.size(), empty.depth(), empty.node_id()),
            (0, 0, NodeId(0))
        );
        assert_eq!(empty.write_json(&mut Vec::new()), None);
        assert_eq!(empty.to_tree(), NodeTree::default());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn flat_tree_is_the_same_tree(tree in arb_tree(), probe in any::<u32>()) {
            let flat = FlatTree::from_tree(&tree).expect("shallow");
            prop_assert_eq!(&flat.to_tree(), &tree);
            prop_assert_eq!(flat.size(), tree.size());
            prop_assert_eq!(flat.depth(), tree.depth());
            prop_assert_eq!(flat.is_rooted(), tree.is_rooted());
            prop_assert_eq!(flat.node_id(), tree.node_id);
            for id in [tree.node_id, NodeId(probe), NodeId(probe % 1000)] {
                prop_assert_eq!(flat.contains(id), tree.contains(id));
                prop_assert_eq!(
                    flat.subs_contain(id),
                    tree.subs.iter().any(|s| s.contains(id))
                );
            }
            // The JSON is serde's, byte for byte, and the range is the `subs` array's.
            let mut json = b"x".to_vec();
            let range = flat.write_json(&mut json);
            prop_assert_eq!(&json[1..], &serde_json::to_vec(&tree).expect("serializes")[..]);
            match range {
                Some((a, b)) => prop_assert_eq!(
                    &json[a..b],
                    &serde_json::to_vec(&tree.subs).expect("serializes")[..]
                ),
                None => prop_assert!(tree.subs.is_empty()),
            }
            // Parsing that JSON's subs gives the tree back.
            let mut again = FlatTree::single(tree.node_id, tree.root, tree.has_time_authority);
            if let Some((a, b)) = range {
                let subs = core::str::from_utf8(&json[a..b]).expect("utf-8");
                let canonical = again.parse_subs_into(subs, MAX_TREE_DEPTH).expect("parses");
                prop_assert!(canonical, "our own JSON reads as canonical");
            }
            prop_assert_eq!(&again, &flat);
            prop_assert_eq!(again.digest(), flat.digest());
            // Any change of one node changes the digest.
            if flat.size() > 1 {
                let mut other = flat.clone();
                other.ids[flat.size() - 1].0 ^= 1;
                prop_assert_ne!(other.digest(), flat.digest());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn reads_exactly_what_the_recursive_parser_read(
            text in prop_oneof![json(), tree_json()],
            budget in 0usize..8,
        ) {
            prop_assert!(serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok(), "{}", text);
            let ours = parse_subs(&text, budget).map_err(|_| ());
            prop_assert_eq!(ours, by_reference(&text, budget), "{}", text);
            // Text read as canonical is exactly what `write_json` writes for what was read.
            let mut flat = FlatTree::single(NodeId(1), false, false);
            if parse_flat(&text, budget, &mut flat) == Ok(true) {
                let mut json = Vec::new();
                let range = flat.write_json(&mut json);
                let written = range.map(|(a, b)| &json[a..b]).unwrap_or_default();
                prop_assert_eq!(written, text.as_bytes(), "{}", text);
            }
        }
    }
}
