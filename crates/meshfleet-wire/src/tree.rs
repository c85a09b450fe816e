//! The node tree carried by node sync (`NodeTree` in the library's protocol.hpp).

use alloc::vec::Vec;
use core::fmt;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::lenient::{LenientBool, LenientU32};
use crate::NodeId;

/// Deepest node tree accepted, in tree levels below the root of the frame.
///
/// The library stops at JSON nesting 255 (ArduinoJson `NestingLimit`), ~127 tree levels;
/// we stop at JSON nesting 128 (serde_json's recursion limit), i.e. 63 tree levels. Each
/// level is a radio hop, so that is far beyond any real WiFi mesh, and it bounds recursion
/// so `subs` nested 10,000 deep cannot exhaust the stack.
pub const MAX_TREE_DEPTH: usize = 63;

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

/// Parses `subs` arrays with an explicit depth budget.
pub(crate) struct SubsSeed {
    pub(crate) depth_left: usize,
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
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
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
        while let Some(key) = map.next_key::<alloc::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "nodeId" => tree.node_id = NodeId(map.next_value::<LenientU32>()?.0.unwrap_or(0)),
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
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}
