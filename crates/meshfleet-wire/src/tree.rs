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
/// levels against this budget, so trees stay bounded even without the frame's pre-scan.
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
///   ([`MAX_TREE_DEPTH`]; unreachable through [`decode`](crate::decode), whose nesting
///   pre-scan refuses such frames first).
pub(crate) fn parse_subs(text: &str, max_depth: usize) -> Result<Vec<NodeTree>, &'static str> {
    const MALFORMED: &str = "malformed JSON";
    let mut c = Cursor { text, i: 0 };
    c.ws();
    if c.peek() != Some(b'[') {
        c.value()?;
        return Ok(Vec::new());
    }
    if max_depth == 0 {
        return Err(TOO_DEEP);
    }
    c.i += 1;
    // The sender (whose subs we collect) and every open node below it, innermost last;
    // its length - 1 is the innermost node's level below the sender.
    let mut open = alloc::vec![NodeTree::default()];
    // Whether we are in the innermost node's `subs` array (else in its object), and whether
    // the next item is the first of its array/object (else a comma comes first).
    let (mut in_array, mut first) = (true, true);
    loop {
        c.ws();
        let close = if in_array { b']' } else { b'}' };
        if c.peek() == Some(close) {
            c.i += 1;
            if in_array {
                if open.len() == 1 {
                    break; // the sender's `subs` is complete
                }
            } else {
                let done = open.pop().ok_or(MALFORMED)?;
                open.last_mut().ok_or(MALFORMED)?.subs.push(done);
            }
            in_array = !in_array;
            first = false;
            continue;
        }
        if !first {
            c.expect(b',')?;
            c.ws();
        }
        first = false;
        if in_array {
            if c.peek() == Some(b'{') {
                c.i += 1;
                open.push(NodeTree::default());
                (in_array, first) = (false, true);
            } else {
                c.value()?; // not an object: skipped
            }
            continue;
        }
        let key = c.string()?;
        c.expect(b':')?;
        c.ws();
        let key: Cow<'_, str> = if key.contains('\\') {
            Cow::Owned(serde_json::from_str::<String>(key).map_err(|_| MALFORMED)?)
        } else {
            Cow::Borrowed(&key[1..key.len() - 1])
        };
        let level = open.len() - 1;
        let node = open.last_mut().ok_or(MALFORMED)?;
        match key.as_ref() {
            "subs" => {
                node.subs.clear(); // a later `subs` replaces an earlier one
                if c.peek() == Some(b'[') {
                    if level >= max_depth {
                        return Err(TOO_DEEP);
                    }
                    c.i += 1;
                    (in_array, first) = (true, true);
                } else {
                    c.value()?;
                }
            }
            "nodeId" => node.node_id = NodeId(lenient_u32(c.value()?).unwrap_or(0)),
            "root" => node.root = c.value()? == "true",
            "hasTimeAuthority" => node.has_time_authority = c.value()? == "true",
            _ => {
                c.value()?;
            }
        }
    }
    let sender = open.pop().ok_or(MALFORMED)?;
    Ok(sender.subs)
}

const TOO_DEEP: &str = "node tree nested too deep";

/// `LenientU32` of a scalar's text, with a fast path for plain decimal digits.
fn lenient_u32(v: &str) -> Option<u32> {
    if !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().ok().and_then(|n| u32::try_from(n).ok());
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
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
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

    /// The text of the string starting here, quotes included.
    fn string(&mut self) -> Result<&'a str, &'static str> {
        let bytes = self.text.as_bytes();
        let start = self.i;
        if bytes.get(start) != Some(&b'"') {
            return Err("malformed JSON");
        }
        let mut i = start + 1;
        loop {
            match bytes.get(i) {
                Some(b'\\') => i += 2,
                Some(b'"') => break,
                Some(_) => i += 1,
                None => return Err("malformed JSON"),
            }
        }
        self.i = i + 1;
        // Both ends are ASCII quotes, so this slice is on char boundaries.
        self.text.get(start..self.i).ok_or("malformed JSON")
    }

    /// Skips one value (iteratively, however deep) and returns its text.
    fn value(&mut self) -> Result<&'a str, &'static str> {
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
                        Some(b'[' | b'{') => depth += 1,
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
        // Junk values are skipped iteratively however deep they are.
        let junk = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!(r#"[{{"nodeId":5,"x":{junk}}},{junk}]"#);
        assert_eq!(
            parse_subs(&text, MAX_TREE_DEPTH),
            Ok(alloc::vec![NodeTree::leaf(NodeId(5))])
        );
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
        }
    }
}
