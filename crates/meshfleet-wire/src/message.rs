//! Typed core messages (types 3-9) and the decoder.

use alloc::borrow::Cow;
use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::lenient::{LenientBool, LenientInt, LenientU32};
use crate::nesting::{nesting_within, MAX_JSON_NESTING};
use crate::package::Package;
use crate::tree::{parse_subs, FlatTree, NodeTree, MAX_TREE_DEPTH, TOO_DEEP};
use crate::{types, NodeId, Routing};

/// Longest `msg` string accepted, in characters: ArduinoJson's limit in the library
/// (`ARDUINOJSON_STRING_LENGTH_SIZE` 2; PROTOCOL.md §4.10). A longer one would be dropped by
/// every C++ node on its path, so we drop it at the edge too.
pub const MAX_STRING_CHARS: usize = 65_535;

/// Keys of a frame that this crate does not model, in arrival order, kept so that
/// forwarding writes them back (the library re-serializes forwarded frames with every key).
pub type Extra = Vec<(String, Box<RawValue>)>;

/// Why a frame could not be decoded. The frame is dropped; the link stays up (as in the
/// library, PROTOCOL.md §4.10).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not valid UTF-8.
    Utf8,
    /// Not valid JSON, or nested deeper than [`MAX_JSON_NESTING`] (the library's
    /// `TooDeep`; this includes node trees deeper than [`MAX_TREE_DEPTH`]).
    Json(String),
    /// Valid JSON but not an object (an array, a number...).
    NotObject,
    /// An object without a usable `type`.
    NoType,
    /// A core message with a malformed field.
    Field {
        /// The message type.
        ty: i64,
        /// The field at fault.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Utf8 => f.write_str("frame is not valid UTF-8"),
            Self::Json(e) => write!(f, "frame is not valid JSON: {e}"),
            Self::NotObject => f.write_str("frame is JSON but not an object"),
            Self::NoType => f.write_str("frame has no integer `type`"),
            Self::Field { ty, field, reason } => {
                write!(f, "type {ty} frame has a bad `{field}`: {reason}")
            }
        }
    }
}

/// The `msg` of TIME_SYNC / TIME_DELAY: `{type[,t0][,t1,t2]}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeMsg {
    /// -1 error, 0 TIME_SYNC_REQUEST, 1 TIME_REQUEST, 2 TIME_REPLY.
    pub kind: i64,
    /// Requester's send time.
    pub t0: Option<u32>,
    /// Responder's receive time.
    pub t1: Option<u32>,
    /// Responder's send time.
    pub t2: Option<u32>,
}

impl TimeMsg {
    /// msg.type -1: the peer reports an error, forcing a retry.
    pub const ERROR: i64 = -1;
    /// msg.type 0: "please ask me for my time".
    pub const SYNC_REQUEST: i64 = 0;
    /// msg.type 1: "tell me your time" (carries t0).
    pub const REQUEST: i64 = 1;
    /// msg.type 2: the answer (t0 echoed, t1, t2).
    pub const REPLY: i64 = 2;
}

impl Serialize for TimeMsg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", &self.kind)?;
        if let Some(t0) = self.t0 {
            m.serialize_entry("t0", &t0)?;
        }
        if let Some(t1) = self.t1 {
            m.serialize_entry("t1", &t1)?;
        }
        if let Some(t2) = self.t2 {
            m.serialize_entry("t2", &t2)?;
        }
        m.end()
    }
}

#[derive(Deserialize)]
struct TimeMsgWire {
    #[serde(rename = "type", default)]
    kind: LenientInt,
    #[serde(default)]
    t0: LenientU32,
    #[serde(default)]
    t1: LenientU32,
    #[serde(default)]
    t2: LenientU32,
}

/// TIME_SYNC (4) or TIME_DELAY (3): `type, dest, from, msg{...}`.
#[derive(Clone, Debug, Default)]
pub struct TimePacket {
    /// Destination node.
    pub dest: NodeId,
    /// Sender.
    pub from: NodeId,
    /// The time payload.
    pub msg: TimeMsg,
    /// Keys we do not model.
    pub extra: Extra,
}

/// NODE_SYNC_REQUEST (5) / NODE_SYNC_REPLY (6): the sender's tree minus the receiver's branch.
#[derive(Clone, Debug, Default)]
pub struct NodeSync {
    /// The sender's view: itself at the top (`nodeId`, `root`, `hasTimeAuthority`, `subs`).
    pub tree: NodeTree,
    /// Destination (0 while the sender does not know us yet).
    pub dest: NodeId,
    /// Sender (the library repeats it as `nodeId`).
    pub from: NodeId,
    /// Keys we do not model.
    pub extra: Extra,
}

/// The `msg` of SINGLE / BROADCAST.
#[derive(Clone, Debug)]
pub enum MsgText {
    /// A JSON string (the normal case).
    Text(String),
    /// Any other JSON value; the library hands its JSON text to the application.
    Json(Box<RawValue>),
    /// No `msg` key; the library hands `"null"` to the application.
    Missing,
}

impl MsgText {
    /// What the library's application callback would receive.
    pub fn as_text(&self) -> Cow<'_, str> {
        match self {
            Self::Text(s) => Cow::Borrowed(s),
            Self::Json(raw) => Cow::Borrowed(raw.get()),
            Self::Missing => Cow::Borrowed("null"),
        }
    }
}

impl PartialEq for MsgText {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Text(a), Self::Text(b)) => a == b,
            (Self::Json(a), Self::Json(b)) => a.get() == b.get(),
            (Self::Missing, Self::Missing) => true,
            _ => false,
        }
    }
}

/// `Extra` equality by key and JSON text (RawValue has no `PartialEq`).
fn extra_eq(a: &Extra, b: &Extra) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && va.get() == vb.get())
}

/// SINGLE (9) or BROADCAST (8): `type, dest, from, msg`.
#[derive(Clone, Debug)]
pub struct Text {
    /// Destination (0 for BROADCAST).
    pub dest: NodeId,
    /// Sender.
    pub from: NodeId,
    /// The payload.
    pub msg: MsgText,
    /// Keys we do not model (including an explicit `routing`).
    pub extra: Extra,
}

impl PartialEq for TimePacket {
    fn eq(&self, o: &Self) -> bool {
        self.dest == o.dest
            && self.from == o.from
            && self.msg == o.msg
            && extra_eq(&self.extra, &o.extra)
    }
}

impl PartialEq for NodeSync {
    fn eq(&self, o: &Self) -> bool {
        self.tree == o.tree
            && self.dest == o.dest
            && self.from == o.from
            && extra_eq(&self.extra, &o.extra)
    }
}

impl PartialEq for Text {
    fn eq(&self, o: &Self) -> bool {
        self.dest == o.dest
            && self.from == o.from
            && self.msg == o.msg
            && extra_eq(&self.extra, &o.extra)
    }
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// Type 3.
    TimeDelay(TimePacket),
    /// Type 4.
    TimeSync(TimePacket),
    /// Type 5.
    NodeSyncRequest(NodeSync),
    /// Type 6.
    NodeSyncReply(NodeSync),
    /// Type 8.
    Broadcast(Text),
    /// Type 9.
    Single(Text),
    /// Any other type (plugins, CONTROL), carried opaquely.
    Package(Package),
}

fn extra_routing(extra: &Extra) -> Option<i64> {
    extra
        .iter()
        .rev()
        .find(|(k, _)| k == "routing")
        .and_then(|(_, v)| serde_json::from_str::<LenientInt>(v.get()).ok())
        .and_then(|r| r.0)
}

impl Message {
    /// The `type` number.
    pub fn ty(&self) -> i64 {
        match self {
            Self::TimeDelay(_) => types::TIME_DELAY,
            Self::TimeSync(_) => types::TIME_SYNC,
            Self::NodeSyncRequest(_) => types::NODE_SYNC_REQUEST,
            Self::NodeSyncReply(_) => types::NODE_SYNC_REPLY,
            Self::Broadcast(_) => types::BROADCAST,
            Self::Single(_) => types::SINGLE,
            Self::Package(p) => p.ty,
        }
    }

    /// Destination as the library reads it (`dest()`: 0 when absent or not a uint32).
    pub fn dest(&self) -> NodeId {
        match self {
            Self::TimeDelay(t) | Self::TimeSync(t) => t.dest,
            Self::NodeSyncRequest(n) | Self::NodeSyncReply(n) => n.dest,
            Self::Broadcast(t) | Self::Single(t) => t.dest,
            Self::Package(p) => p.dest(),
        }
    }

    /// Sender as the library reads it.
    pub fn from(&self) -> NodeId {
        match self {
            Self::TimeDelay(t) | Self::TimeSync(t) => t.from,
            Self::NodeSyncRequest(n) | Self::NodeSyncReply(n) => n.from,
            Self::Broadcast(t) | Self::Single(t) => t.from,
            Self::Package(p) => p.from(),
        }
    }

    /// How this frame is routed: the explicit `routing` key if any, else by type.
    pub fn routing(&self) -> Routing {
        let explicit = match self {
            Self::TimeDelay(t) | Self::TimeSync(t) => extra_routing(&t.extra),
            Self::NodeSyncRequest(n) | Self::NodeSyncReply(n) => extra_routing(&n.extra),
            Self::Broadcast(t) | Self::Single(t) => extra_routing(&t.extra),
            Self::Package(p) => return p.routing(),
        };
        match explicit {
            Some(code) => Routing::from_code(code),
            None => Routing::for_type(self.ty()),
        }
    }

    /// The frame's JSON text (no NUL), keys in the library's order.
    pub fn encode(&self) -> Vec<u8> {
        if let Self::Package(p) = self {
            return p.text().as_bytes().to_vec();
        }
        // Serializing our own types cannot fail: string keys only, RawValue holds
        // validated JSON; an empty frame would be skipped by any receiver anyway.
        serde_json::to_vec(&Encoded(self)).unwrap_or_default()
    }

    /// The frame as sent on the wire: JSON text followed by a NUL.
    pub fn encode_frame(&self) -> Vec<u8> {
        let mut out = self.encode();
        out.push(0);
        out
    }
}

struct Encoded<'a>(&'a Message);

fn write_extra<M: SerializeMap>(m: &mut M, extra: &Extra) -> Result<(), M::Error> {
    for (k, v) in extra {
        m.serialize_entry(k, v)?;
    }
    Ok(())
}

impl Serialize for Encoded<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ty = self.0.ty();
        let mut m = s.serialize_map(None)?;
        match self.0 {
            Message::TimeDelay(t) | Message::TimeSync(t) => {
                m.serialize_entry("type", &ty)?;
                m.serialize_entry("dest", &t.dest.0)?;
                m.serialize_entry("from", &t.from.0)?;
                m.serialize_entry("msg", &t.msg)?;
                write_extra(&mut m, &t.extra)?;
            }
            Message::NodeSyncRequest(n) | Message::NodeSyncReply(n) => {
                let with_authority = matches!(self.0, Message::NodeSyncRequest(_));
                n.tree.serialize_fields(&mut m, with_authority)?;
                m.serialize_entry("type", &ty)?;
                m.serialize_entry("dest", &n.dest.0)?;
                m.serialize_entry("from", &n.from.0)?;
                write_extra(&mut m, &n.extra)?;
            }
            Message::Broadcast(t) | Message::Single(t) => {
                m.serialize_entry("type", &ty)?;
                m.serialize_entry("dest", &t.dest.0)?;
                m.serialize_entry("from", &t.from.0)?;
                match &t.msg {
                    MsgText::Text(s) => m.serialize_entry("msg", s)?,
                    MsgText::Json(raw) => m.serialize_entry("msg", raw)?,
                    MsgText::Missing => {}
                }
                write_extra(&mut m, &t.extra)?;
            }
            Message::Package(_) => unreachable!("packages are written verbatim"),
        }
        m.end()
    }
}

/// Every key of the top-level object, borrowed from the input, in order, each with its
/// value's JSON text (validated: by serde_json, or by the node-sync fast path).
pub(crate) struct Envelope<'a>(pub(crate) Vec<(Cow<'a, str>, &'a str)>);

impl<'a> Envelope<'a> {
    /// The value of `key`; with duplicate keys the last one wins, as in ArduinoJson.
    pub(crate) fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    fn u32(&self, key: &str) -> Option<u32> {
        self.get(key)
            .and_then(|v| serde_json::from_str::<LenientU32>(v).ok())
            .and_then(|v| v.0)
    }

    pub(crate) fn int(&self, key: &str) -> Option<i64> {
        self.get(key)
            .and_then(|v| serde_json::from_str::<LenientInt>(v).ok())
            .and_then(|v| v.0)
    }

    fn bool(&self, key: &str) -> bool {
        self.get(key)
            .and_then(|v| serde_json::from_str::<LenientBool>(v).ok())
            .and_then(|v| v.0)
            .unwrap_or(false)
    }

    /// Keys not in `known`, last occurrence of each, in order of first appearance.
    fn extra(&self, known: &[&str]) -> Extra {
        let mut out: Extra = Vec::new();
        for (i, (k, v)) in self.0.iter().enumerate() {
            if known.contains(&k.as_ref()) {
                continue;
            }
            if self.0[i + 1..].iter().any(|(k2, _)| k2 == k) {
                continue; // a later duplicate wins
            }
            // The text is validated JSON, so this cannot fail.
            if let Ok(raw) = RawValue::from_string((*v).to_string()) {
                out.push((k.to_string(), raw));
            }
        }
        out
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Option<Envelope<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(8);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let value: &'de RawValue = map.next_value()?;
            entries.push((key, value.get()));
        }
        Ok(Some(Envelope(entries)))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    scalars_read_as_default!();
}

struct MaybeEnvelope<'a>(Option<Envelope<'a>>);

impl<'de> Deserialize<'de> for MaybeEnvelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EnvelopeVisitor).map(MaybeEnvelope)
    }
}

/// Parses the first JSON value of `text`; returns it and the text it spans.
///
/// Like ArduinoJson, anything after the first complete value is ignored (trailing
/// garbage, a second object in the same frame).
///
/// A first value nested deeper than [`MAX_JSON_NESTING`] is refused, as the library
/// refuses it (`TooDeep`). That bound is what makes it safe to deserialize parts of a
/// frame later with serde's help; serde_json's own recursion limit (128) would refuse
/// nesting the library accepts.
pub(crate) fn parse_envelope(text: &str) -> Result<(Envelope<'_>, &str), DecodeError> {
    let (env, object_text, checked) = parse_envelope_unchecked(text)?;
    if !checked {
        env.check_nesting(None)?;
    }
    Ok((env, object_text))
}

fn too_deep() -> DecodeError {
    DecodeError::Json(alloc::format!(
        "nested deeper than {MAX_JSON_NESTING} levels (the library's limit)"
    ))
}

/// [`parse_envelope`] without the nesting check of the values: returns whether it was
/// done (true when the text has too few brackets to nest too deep); if not, the caller
/// must [`Envelope::check_nesting`]. Errors are those `parse_envelope` gives.
///
/// The envelope parse itself cannot recurse with the input: the visitor takes the
/// top-level keys and keeps every value as raw text, which serde_json skips without
/// recursion (`ignore_value` keeps its own stack; `tests/depth.rs` parses junk nested a
/// million levels deep on a small stack to hold it to that). Checking nesting per value
/// afterwards lets a node sync's tree, most of a big frame, be checked by the tree parser
/// as it reads it, instead of by a separate pass over the whole frame.
fn parse_envelope_unchecked(text: &str) -> Result<(Envelope<'_>, &str, bool), DecodeError> {
    let checked = within_by_count(text.as_bytes());
    let start = text.len() - text.trim_start().len();
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit(); // see above: values are skipped iteratively
    let mut stream = de.into_iter::<MaybeEnvelope<'_>>();
    let err = match stream.next() {
        Some(Ok(MaybeEnvelope(Some(env)))) => {
            return Ok((env, &text[start..stream.byte_offset()], checked))
        }
        Some(Ok(MaybeEnvelope(None))) => DecodeError::NotObject,
        Some(Err(e)) => DecodeError::Json(e.to_string()),
        None => DecodeError::Json("empty frame".into()),
    };
    // Too deep wins over any other fault, as when the nesting was checked first.
    if !checked && !nesting_within(text.as_bytes(), MAX_JSON_NESTING) {
        return Err(too_deep());
    }
    Err(err)
}

/// Whether `text` has too few brackets to nest deeper than [`MAX_JSON_NESTING`].
fn within_by_count(text: &[u8]) -> bool {
    // Counted a block at a time, so a big frame (a node sync) stops after a few blocks.
    let mut count = 0;
    for block in text.chunks(512) {
        count += block.iter().filter(|b| matches!(b, b'[' | b'{')).count();
        if count > MAX_JSON_NESTING {
            return false;
        }
    }
    true
}

impl Envelope<'_> {
    /// Refuses the frame if a value nests deeper than the library allows inside the
    /// frame's object (which is nesting level 1). The entry at index `deferred`, if any,
    /// is skipped: its reader checks it (a node sync's tree, [`parse_subs`]).
    fn check_nesting(&self, deferred: Option<usize>) -> Result<(), DecodeError> {
        for (i, (_, v)) in self.0.iter().enumerate() {
            if Some(i) != deferred && !nesting_within(v.as_bytes(), MAX_JSON_NESTING - 1) {
                return Err(too_deep());
            }
        }
        Ok(())
    }
}

/// A node sync exactly as the library (and this crate) writes it, read in one pass:
/// `{"nodeId":N[,"root":true][,"hasTimeAuthority":true][,"subs":[..]],"type":5|6,"dest":D,"from":F}`,
/// compact, plain numbers, the tree in the canonical form [`FlatTree::write_json`]
/// writes. That text is valid JSON and within the nesting limit (the tree parser checks
/// as it reads), so the result is what [`parse`] gives through serde_json, the tree
/// included; anything else (another key, a space, an escape, a tree too deep) returns
/// `None` and takes that general path. Most of a big node sync is its tree, which
/// is otherwise scanned twice: once by serde_json to find its end, once to read it.
fn fast_node_sync(text: &str) -> Option<Frame<'_>> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut entries: Vec<(Cow<'_, str>, &str)> = Vec::with_capacity(7);
    entries.push((
        Cow::Borrowed("nodeId"),
        plain_number(text, &mut i, "nodeId", b'{')?,
    ));
    for (lit, key) in [
        (&br#","root":true"#[..], "root"),
        (&br#","hasTimeAuthority":true"#[..], "hasTimeAuthority"),
    ] {
        if b.get(i..)?.starts_with(lit) {
            i += lit.len();
            entries.push((Cow::Borrowed(key), "true"));
        }
    }
    let node_id = NodeId(entries.first()?.1.parse().ok()?);
    let root = entries.iter().any(|(k, _)| k == "root");
    let authority = entries.iter().any(|(k, _)| k == "hasTimeAuthority");
    let mut tree = FlatTree::single(node_id, root, authority);
    const SUBS: &[u8] = br#","subs":["#;
    if b.get(i..)?.starts_with(SUBS) {
        let start = i + SUBS.len() - 1;
        let rest = text.get(start..)?;
        let (canonical, len) = tree.parse_subs_prefix(rest, MAX_TREE_DEPTH).ok()?;
        if !canonical {
            return None;
        }
        entries.push((Cow::Borrowed("subs"), rest.get(..len)?));
        i = start + len;
    }
    for key in ["type", "dest", "from"] {
        entries.push((Cow::Borrowed(key), plain_number(text, &mut i, key, b',')?));
    }
    if b.get(i) != Some(&b'}') {
        return None;
    }
    let ty: i64 = entries.iter().find(|(k, _)| k == "type")?.1.parse().ok()?;
    if ty != types::NODE_SYNC_REQUEST && ty != types::NODE_SYNC_REPLY {
        return None;
    }
    let u32_of = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse().ok())
            .map(NodeId)
    };
    let (dest, from) = (u32_of("dest")?, u32_of("from")?);
    Some(Frame {
        env: Envelope(entries),
        tree: Some(tree),
        text: text.get(..=i)?,
        ty,
        routing: Routing::Neighbour,
        dest,
        from,
    })
}

/// At `i`: `lead` (`{` or `,`), `"key":` and a plain number, which is returned; `i` moves
/// past it. A plain number has 1-10 digits, no leading zero (not JSON) and fits a u32,
/// so every path reads it alike.
fn plain_number<'t>(text: &'t str, i: &mut usize, key: &str, lead: u8) -> Option<&'t str> {
    let b = text.as_bytes();
    let k = key.as_bytes();
    if b.get(*i) != Some(&lead)
        || b.get(*i + 1) != Some(&b'"')
        || b.get(*i + 2..*i + 2 + k.len()) != Some(k)
        || b.get(*i + 2 + k.len()..*i + 4 + k.len()) != Some(b"\":")
    {
        return None;
    }
    let start = *i + 4 + k.len();
    let n = b
        .get(start..)?
        .iter()
        .take(11)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if n == 0 || n > 10 || (n > 1 && b[start] == b'0') {
        return None;
    }
    let v = text.get(start..start + n)?;
    v.parse::<u32>().ok()?;
    *i = start + n;
    Some(v)
}

/// The error for a node sync's `subs` that the tree parser refused: nesting beyond the
/// library's limit is the frame's fault ([`DecodeError::Json`], as any too-deep frame).
fn subs_error(ty: i64, e: &'static str) -> DecodeError {
    if e == TOO_DEEP {
        too_deep()
    } else {
        DecodeError::Field {
            ty,
            field: "subs",
            reason: e.into(),
        }
    }
}

/// Decodes one frame (the bytes between NULs).
pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
    parse(frame)?.message()
}

/// A frame parsed just enough to route it: one pass over the JSON, values kept as
/// borrowed raw text. [`Frame::message`] finishes decoding when the frame is for us;
/// a relay forwards [`Frame::text`] verbatim (every key preserved) without it.
pub struct Frame<'a> {
    env: Envelope<'a>,
    /// A node sync's tree, when the fast path read it with the envelope.
    tree: Option<FlatTree>,
    text: &'a str,
    ty: i64,
    routing: Routing,
    dest: NodeId,
    from: NodeId,
}

/// Parses a frame's envelope (see [`Frame`]).
pub fn parse(frame: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let text = core::str::from_utf8(frame).map_err(|_| DecodeError::Utf8)?;
    if let Some(f) = fast_node_sync(text) {
        return Ok(f);
    }
    parse_general(text)
}

/// [`parse`] through serde_json, for any frame.
fn parse_general(text: &str) -> Result<Frame<'_>, DecodeError> {
    let (env, object_text, checked) = parse_envelope_unchecked(text)?;
    let ty = env.int("type");
    let routing = match (env.int("routing"), ty) {
        (Some(code), _) => Routing::from_code(code),
        (None, Some(ty)) => Routing::for_type(ty),
        (None, None) => Routing::Error,
    };
    if !checked {
        // A node sync's tree (the last `subs`, the one that is read) is checked by the
        // tree parser as it reads it, unless the frame travels on: then it is forwarded
        // as text and must be checked here.
        let node_sync = matches!(ty, Some(types::NODE_SYNC_REQUEST | types::NODE_SYNC_REPLY));
        let deferred = if node_sync && routing == Routing::Neighbour {
            env.0.iter().rposition(|(k, _)| k == "subs")
        } else {
            None
        };
        env.check_nesting(deferred)?;
    }
    let ty = ty.ok_or(DecodeError::NoType)?;
    let dest = NodeId(env.u32("dest").unwrap_or(0));
    let from = NodeId(env.u32("from").unwrap_or(0));
    Ok(Frame {
        env,
        tree: None,
        text: object_text,
        ty,
        routing,
        dest,
        from,
    })
}

impl Frame<'_> {
    /// The `type`.
    pub fn ty(&self) -> i64 {
        self.ty
    }

    /// How it travels (an explicit `routing` key wins over the type's rule).
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// Destination as the library reads it (0 when absent or not a uint32).
    pub fn dest(&self) -> NodeId {
        self.dest
    }

    /// Sender as the library reads it.
    pub fn from(&self) -> NodeId {
        self.from
    }

    /// The JSON object's text exactly as received (leading whitespace and anything after
    /// the object removed): what a relay forwards.
    pub fn text(&self) -> &str {
        self.text
    }

    /// The raw JSON text of top-level key `key` as received (last occurrence wins, as in
    /// the library), for cheap comparisons without decoding.
    pub fn raw_field(&self, key: &str) -> Option<&str> {
        self.env.get(key)
    }

    /// The tree of a node sync (NODE_SYNC_REQUEST / NODE_SYNC_REPLY), flat: what
    /// [`Frame::message`] would put in [`NodeSync::tree`], read the same way and refused
    /// for the same reasons, without an allocation per node. For other types it reads
    /// the same keys (a frame with no `subs` is a lone node).
    ///
    /// The flag says whether the frame's `subs` text ([`Frame::raw_field`]) is byte for
    /// byte what [`FlatTree::write_json`] writes for the tree's subs, as it is when the
    /// library or this crate wrote the frame: a node keeping the tree's JSON can then copy
    /// that text instead of writing it.
    pub fn node_sync_tree(&self) -> Result<(FlatTree, bool), DecodeError> {
        if let Some(tree) = &self.tree {
            return Ok((tree.clone(), true));
        }
        let env = &self.env;
        let mut tree = FlatTree::single(
            // The library falls back to `from` when `nodeId` is not a uint32.
            env.u32("nodeId").map(NodeId).unwrap_or(self.from),
            env.bool("root"),
            env.bool("hasTimeAuthority"),
        );
        let canonical = match env.get("subs") {
            // Iterative, so however deep the tree it takes no stack; nesting is checked
            // as it reads (`parse` left this value to it).
            Some(raw) => tree
                .parse_subs_into(raw, MAX_TREE_DEPTH)
                .map_err(|e| subs_error(self.ty, e))?,
            None => true,
        };
        Ok((tree, canonical))
    }

    /// Decodes the typed message.
    pub fn message(&self) -> Result<Message, DecodeError> {
        let (env, object_text, ty, dest, from) =
            (&self.env, self.text, self.ty, self.dest, self.from);
        Ok(match ty {
            types::TIME_DELAY | types::TIME_SYNC => {
                let raw = env.get("msg").ok_or(DecodeError::Field {
                    ty,
                    field: "msg",
                    reason: "missing".into(),
                })?;
                let wire: TimeMsgWire =
                    serde_json::from_str(raw).map_err(|e| DecodeError::Field {
                        ty,
                        field: "msg",
                        reason: e.to_string(),
                    })?;
                let msg = TimeMsg {
                    kind: wire.kind.0.ok_or(DecodeError::Field {
                        ty,
                        field: "msg.type",
                        reason: "not an integer".into(),
                    })?,
                    t0: wire.t0.0,
                    t1: wire.t1.0,
                    t2: wire.t2.0,
                };
                let p = TimePacket {
                    dest,
                    from,
                    msg,
                    extra: env.extra(&["type", "dest", "from", "msg"]),
                };
                if ty == types::TIME_DELAY {
                    Message::TimeDelay(p)
                } else {
                    Message::TimeSync(p)
                }
            }
            types::NODE_SYNC_REQUEST | types::NODE_SYNC_REPLY => {
                let subs = match env.get("subs") {
                    None => Vec::new(),
                    // Iterative, so however deep the tree it takes no stack; it checks
                    // the nesting as it reads.
                    Some(raw) => parse_subs(raw, MAX_TREE_DEPTH).map_err(|e| subs_error(ty, e))?,
                };
                let tree = NodeTree {
                    // The library falls back to `from` when `nodeId` is not a uint32.
                    node_id: env.u32("nodeId").map(NodeId).unwrap_or(from),
                    root: env.bool("root"),
                    has_time_authority: env.bool("hasTimeAuthority"),
                    subs,
                };
                let n = NodeSync {
                    tree,
                    dest,
                    from,
                    extra: env.extra(&[
                        "nodeId",
                        "root",
                        "hasTimeAuthority",
                        "subs",
                        "type",
                        "dest",
                        "from",
                    ]),
                };
                if ty == types::NODE_SYNC_REQUEST {
                    Message::NodeSyncRequest(n)
                } else {
                    Message::NodeSyncReply(n)
                }
            }
            types::BROADCAST | types::SINGLE => {
                let msg = match env.get("msg") {
                None => MsgText::Missing,
                Some(raw) => match serde_json::from_str::<String>(raw) {
                    Ok(s) if s.chars().count() > MAX_STRING_CHARS => {
                        return Err(DecodeError::Field {
                            ty,
                            field: "msg",
                            reason: alloc::format!(
                                "longer than {MAX_STRING_CHARS} characters (the library's string limit)"
                            ),
                        })
                    }
                    Ok(s) => MsgText::Text(s),
                    // Validated JSON text, so the conversion cannot fail.
                    Err(_) => MsgText::Json(RawValue::from_string(raw.to_string()).map_err(
                        |e| DecodeError::Field {
                            ty,
                            field: "msg",
                            reason: e.to_string(),
                        },
                    )?),
                },
            };
                let t = Text {
                    dest,
                    from,
                    msg,
                    extra: env.extra(&["type", "dest", "from", "msg"]),
                };
                if ty == types::BROADCAST {
                    Message::Broadcast(t)
                } else {
                    Message::Single(t)
                }
            }
            _ => Message::Package(Package::from_parts(
                ty,
                self.routing,
                dest,
                from,
                object_text.into(),
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec;
    use proptest::prelude::*;

    /// A node sync the library would write, from a random tree, optionally mutated.
    fn frame_text() -> impl Strategy<Value = String> {
        let tree = prop::collection::vec((0u32..40, 0u8..8), 1..60).prop_map(|nodes| {
            // Pre-order levels: each node at most one below the previous one.
            let mut t = NodeTree::leaf(NodeId(3_000_000_000));
            let mut path: Vec<Vec<usize>> = vec![vec![]];
            for (i, (id, step)) in nodes.into_iter().enumerate() {
                let depth = (path.len() - 1).min(usize::from(step % 4));
                path.truncate(depth + 1);
                let mut node = &mut t;
                for &k in path.last().into_iter().flatten() {
                    node = &mut node.subs[k];
                }
                node.subs.push(NodeTree {
                    node_id: NodeId(id * 97 + i as u32),
                    root: step == 7,
                    has_time_authority: step == 6,
                    subs: Vec::new(),
                });
                let mut p = path.last().cloned().unwrap_or_default();
                p.push(node.subs.len() - 1);
                path.push(p);
            }
            t
        });
        let mutation = prop_oneof![
            3 => Just(None),
            1 => (any::<prop::sample::Index>(), prop::sample::select(vec![
                "", " ", "0", "00", "\"", ",", "}", "]", "[", "{", "x", "true", "-1", "4294967296",
                "\\u0030", ",\"subs\":[]", ",\"routing\":1",
            ]), 0usize..3).prop_map(Some),
        ];
        (tree, any::<bool>(), any::<bool>(), 5i64..7, mutation).prop_map(
            |(t, root, authority, ty, m)| {
                let n = NodeSync {
                    tree: NodeTree {
                        root,
                        has_time_authority: authority,
                        ..t
                    },
                    dest: NodeId(7),
                    from: NodeId(3_000_000_000),
                    extra: Vec::new(),
                };
                let msg = if ty == 5 {
                    Message::NodeSyncRequest(n)
                } else {
                    Message::NodeSyncReply(n)
                };
                let mut text = String::from_utf8(msg.encode()).unwrap_or_default();
                if let Some((at, insert, remove)) = m {
                    let mut at = at.index(text.len() + 1);
                    while !text.is_char_boundary(at) {
                        at -= 1;
                    }
                    let end = (at + remove).min(text.len());
                    text.replace_range(at..end, insert);
                }
                text
            },
        )
    }

    fn summary(r: &Result<Frame<'_>, DecodeError>) -> String {
        match r {
            Ok(f) => format!(
                "{} {:?} {} {} {:?} {:?} {:?} {:?}",
                f.ty(),
                f.routing(),
                f.dest(),
                f.from(),
                f.text(),
                f.env.0,
                f.node_sync_tree().map(|(t, _)| t),
                f.message(),
            ),
            Err(e) => format!("{e:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The one-pass reading of the library's node syncs gives exactly what the general
        /// path gives, on its own text and on text one edit away from it.
        #[test]
        fn the_node_sync_fast_path_reads_as_the_general_path(text in frame_text()) {
            let fast = fast_node_sync(&text);
            if let Some(f) = &fast {
                // Only valid JSON takes the fast path.
                prop_assert!(serde_json::from_str::<serde::de::IgnoredAny>(f.text()).is_ok(), "{}", text);
            }
            let general = parse_general(&text);
            let chosen = parse(text.as_bytes());
            prop_assert_eq!(summary(&chosen), summary(&general), "{}", text);
            if let Some(f) = fast {
                prop_assert_eq!(summary(&Ok(f)), summary(&general), "{}", text);
            }
        }
    }

    #[test]
    fn the_fast_path_takes_what_we_write() {
        let n = NodeSync {
            tree: NodeTree {
                node_id: NodeId(5),
                root: true,
                has_time_authority: false,
                subs: vec![NodeTree::leaf(NodeId(6))],
            },
            dest: NodeId(7),
            from: NodeId(5),
            extra: Vec::new(),
        };
        let text = String::from_utf8(Message::NodeSyncReply(n).encode()).unwrap_or_default();
        assert!(fast_node_sync(&text).is_some(), "{text}");
        assert!(fast_node_sync(&text.replace("6", "06")).is_none());
        assert!(fast_node_sync(&text.replace(":", ": ")).is_none());
        // Leading zeros (not JSON), out-of-range numbers, a different type: general path.
        for key in ["nodeId", "type", "dest", "from"] {
            for (with, ok) in [("0", false), ("999999999", false), ("", true)] {
                let edited = text.replace(&format!("\"{key}\":"), &format!("\"{key}\":{with}"));
                assert_eq!(fast_node_sync(&edited).is_some(), ok, "{edited}");
                assert_eq!(
                    summary(&parse(edited.as_bytes())),
                    summary(&parse_general(&edited))
                );
            }
        }
        assert!(fast_node_sync(&text.replace(":6,", ":8,")).is_none());
    }
}
