//! The meshfleet OTA wire messages (package types 700-709, `docs/ota-protocol.md`) and the
//! chunk bitmap.
//!
//! Each message struct is a package *body* ([`PackageBody`]): it holds its own keys only
//! and travels in a [`TypedPackage`](meshfleet_mesh::TypedPackage), which writes the
//! header (`from`, `routing`, `type`, `dest`) once and takes `type` from the body. The
//! bytes are those of a struct declaring the four header fields first, as these did
//! before the envelope.

#[allow(unused_imports)]
use crate::prelude::*;

use meshfleet_firmware::Manifest;
use meshfleet_mesh::PackageBody;
use serde::{Deserialize, Serialize};

/// First package type of the meshfleet OTA range (700-709). The range avoids the Alteriom
/// types 10-12, 200-205, 400, 600-605, 610-614 and 620-622.
pub const TYPE_FIRST: i64 = 700;
/// Last package type of the range.
pub const TYPE_LAST: i64 = 709;
/// CAPS: what a node can take and what it runs (NEIGHBOUR).
pub const CAPS: i64 = 700;
/// OFFER: a signed manifest (NEIGHBOUR).
pub const OFFER: i64 = 701;
/// CHUNK: one payload chunk (NEIGHBOUR JSON, or binary frame tag 703).
pub const CHUNK: i64 = 703;
/// NAK: missing chunk ranges (NEIGHBOUR, one hop upstream).
pub const NAK: i64 = 704;
/// STATUS: progress / done / refusal (NEIGHBOUR, one hop upstream).
pub const STATUS: i64 = 705;
/// REPORT: a node's outcome, SINGLE-routed to the campaign's origin.
pub const REPORT: i64 = 706;
/// ROLLBACK: the operator's signed rollback command ([`meshfleet_firmware::Intent`] with
/// action `rollback`), SINGLE-routed to each node it orders back.
pub const ROLLBACK: i64 = 707;
/// ROLLBACK_RESULT: a node's answer to a ROLLBACK, SINGLE-routed to the command's origin.
pub const ROLLBACK_RESULT: i64 = 708;
/// The protocol version this build speaks. 2: CHUNK, NAK and STATUS count transfer units
/// (hash pages interleaved with chunks, [`Layout`]) and OFFER carries the lean manifest
/// (format 2). A neighbour advertising another version is served as a stock node.
pub const PROTOCOL_VERSION: u32 = 2;

/// Most ranges in one NAK. A NAK lists the *first* missing ranges; the rest are asked for
/// in later intervals, so a peer can never make us walk an unbounded list.
pub const MAX_NAK_RANGES: usize = 64;
/// Most node ids in a campaign's scope (`Offer::scope`): 4,096 ids is ~45 KB of JSON per
/// OFFER; a larger fleet is served without a scope, or in waves.
pub const MAX_SCOPE: usize = 4096;
/// Most codec names in a CAPS.
pub const MAX_CODECS: usize = 8;
/// Longest string field we keep from a peer's CAPS (role, hardware, version, hash).
pub const MAX_CAPS_TEXT: usize = 80;

// Each message's package type, so `TypedPackage<Caps>` is always sent as 700.
macro_rules! body {
    ($($t:ty => $ty:expr),* $(,)?) => {$(
        impl PackageBody for $t {
            const TYPE: i64 = $ty;
        }
    )*};
}

body! {
    Caps => CAPS,
    Offer => OFFER,
    ChunkJson => CHUNK,
    Nak => NAK,
    Status => STATUS,
    Report => REPORT,
    Rollback => ROLLBACK,
    RollbackResult => ROLLBACK_RESULT,
}

/// Bytes before the chunk data in a binary CHUNK payload: tag u16, campaign u32, index u32
/// (all little endian).
pub const BINARY_CHUNK_HEADER: usize = 10;

/// CAPS (700), NEIGHBOUR-routed to the neighbour (SINGLE to a remote peer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    /// Protocol version.
    pub v: u32,
    /// Payload codecs it decodes ("none", "deflate").
    pub codecs: Vec<String>,
    /// Largest decompression window it can hold, bytes.
    pub window: u32,
    /// Bytes it can stage for a transfer.
    pub mem: u64,
    /// Accepts binary frames.
    pub bin: bool,
    /// Its role.
    pub role: String,
    /// Its hardware.
    pub hardware: String,
    /// Running firmware version ("" if unknown).
    pub fw: String,
    /// SHA-256 of the running image, hex ("" if unknown).
    pub sha256: String,
    /// The sender already holds our CAPS. A CAPS with `ack: false` is answered with ours
    /// (`ack: true`), so a CAPS lost on the way (a full send queue) is sent again instead of
    /// leaving the link looking like one to a stock node.
    #[serde(default)]
    pub ack: bool,
}

/// OFFER (701), NEIGHBOUR-routed to the neighbour offered to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// Campaign id (see [`campaign_id`]).
    pub campaign: u32,
    /// The operator's signed intent ([`meshfleet_firmware::Intent`]) for this image, if the
    /// campaign has one: the only thing that lets a receiver install an image that is not
    /// newer than what it runs, or that it rolled back. There is no unsigned "forced" flag:
    /// a `forced` key from an older sender is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<serde_json::Value>,
    /// The node the campaign started from (its source). A receiver takes as its upstream
    /// the neighbour on its mesh route to this node, so upstream links follow the tree
    /// toward the source and never form a cycle. 0: not given.
    #[serde(default)]
    pub origin: u32,
    /// The nodes the campaign is for (at most [`MAX_SCOPE`]); absent: every node that lacks
    /// the image. Not signed: a rule of cooperating nodes (a receiver outside it refuses,
    /// a relay offers only to nodes in it), so a progressive rollout reaches only the
    /// nodes of the waves it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Vec<u32>>,
    /// The manifest, as a JSON object.
    pub manifest: serde_json::Value,
}

/// CHUNK (703) as JSON, for neighbours without binary frames; NEIGHBOUR-routed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkJson {
    /// Campaign id.
    pub campaign: u32,
    /// Chunk index.
    pub index: u32,
    /// Base64 (standard, padded) of the chunk.
    pub data: String,
}

/// NAK (704), NEIGHBOUR-routed to the upstream neighbour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nak {
    /// Campaign id.
    pub campaign: u32,
    /// Missing chunks as half-open ranges `[start, end)`, ascending, at most
    /// [`MAX_NAK_RANGES`].
    pub missing: Vec<[u32; 2]>,
}

/// STATUS (705), NEIGHBOUR-routed to the upstream neighbour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Campaign id.
    pub campaign: u32,
    /// Chunks held.
    pub have: u32,
    /// Chunks in the payload.
    pub chunks: u32,
    /// The sender holds and verified the whole image.
    pub done: bool,
    /// The sender and everything downstream of it are done.
    #[serde(default)]
    pub subtree_done: bool,
    /// The offer was refused, and why (no chunks will be wanted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject: Option<String>,
    /// With `reject`: the refusal's kind ([`crate::Refusal::label`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

/// REPORT (706): a node's outcome of a campaign, SINGLE-routed to the campaign's origin
/// (`from` is the reporting node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Campaign id.
    pub campaign: u32,
    /// `updated`, `already_current`, `refused`, `incompatible`, `failed`, `rolled_back`.
    pub outcome: String,
    /// With `refused` / `incompatible`: the refusal's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The running version of the node reported on.
    #[serde(default)]
    pub version: String,
    /// The node reported on, if not the sender: a relay accounts for a neighbour it did not
    /// offer the campaign to (already current, incompatible, not older). 0: the sender.
    #[serde(default)]
    pub node: u32,
}

/// ROLLBACK (707): "boot your previous slot", signed by the operator, SINGLE-routed from the
/// node that issues it (the gateway's) to each node in its scope (`dest`: the node ordered
/// back).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    /// Where the ROLLBACK_RESULT goes (0 or absent: `from`). Not signed: it only says
    /// where the answer goes.
    #[serde(default)]
    pub origin: u32,
    /// The signed command: an intent with `"action":"rollback"`.
    pub command: serde_json::Value,
}

/// ROLLBACK_RESULT (708): what a node did with a ROLLBACK, SINGLE-routed from the node
/// ordered back to the command's origin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackResult {
    /// The command's `issued` (which command this answers).
    pub issued: u64,
    /// `reverted`, `already_there` or `refused`.
    pub outcome: String,
    /// With `refused`: why ([`crate::RollbackRefusal::label`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The version the node will run after its next start (reverted) or runs.
    #[serde(default)]
    pub version: String,
}

/// One transfer unit of a campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Hash page `k` of the chunk table ([`Manifest::page_bytes`]).
    Page(u32),
    /// Payload chunk `i`.
    Chunk(u32),
}

/// The unit index space of a campaign: every CHUNK, NAK range, STATUS count and bitmap
/// counts *units*, the manifest's hash pages interleaved with the payload chunks they
/// cover: page 0, chunks 0..H, page 1, chunks H..2H, ... (H = [`Manifest::hashes_per_page`]).
///
/// Sent in index order, each page travels just ahead of the chunks it vouches for, so a
/// relay can check and forward chunk `i` as soon as page `i / H` and chunk `i` arrived:
/// the chunk table costs each hop one page of delay instead of arriving whole with the
/// OFFER, and it is repaired and resumed like any chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    chunks: u32,
    pages: u32,
    per_page: u32,
}

impl Layout {
    /// The layout of `m`'s campaign.
    pub fn of(m: &Manifest) -> Self {
        Self {
            chunks: m.chunk_count,
            pages: m.page_count(),
            per_page: m.hashes_per_page(),
        }
    }

    /// Units in the campaign: pages plus chunks.
    pub fn units(&self) -> u32 {
        self.chunks.saturating_add(self.pages)
    }

    /// What unit `u` is, or `None` past the end.
    pub fn unit(&self, u: u32) -> Option<Unit> {
        let stride = self.per_page + 1;
        let (page, r) = (u / stride, u % stride);
        if page >= self.pages {
            return None;
        }
        if r == 0 {
            return Some(Unit::Page(page));
        }
        let chunk = page * self.per_page + (r - 1);
        (chunk < self.chunks).then_some(Unit::Chunk(chunk))
    }

    /// The unit index of payload chunk `i`.
    pub fn of_chunk(&self, i: u32) -> u32 {
        let page = i / self.per_page;
        page * (self.per_page + 1) + 1 + i % self.per_page
    }

    /// The unit index of hash page `k`.
    pub fn of_page(&self, k: u32) -> u32 {
        k * (self.per_page + 1)
    }

    /// The unit index of the page that covers payload chunk `i`.
    pub fn page_of_chunk(&self, i: u32) -> u32 {
        self.of_page(i / self.per_page)
    }
}

/// The campaign id of a payload: its `payload_sha256`'s first four bytes, little endian.
/// Every node holding the same artefact derives the same id, so a transfer resumes from any
/// of them.
pub fn campaign_id(manifest: &meshfleet_firmware::Manifest) -> u32 {
    let b = manifest.payload_sha256.0;
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A binary CHUNK payload (tag included).
pub fn encode_binary_chunk(campaign: u32, index: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BINARY_CHUNK_HEADER + data.len());
    out.extend_from_slice(&u16::try_from(CHUNK).unwrap_or(703).to_le_bytes());
    out.extend_from_slice(&campaign.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Splits a binary CHUNK payload into (campaign, index, data).
pub fn decode_binary_chunk(payload: &[u8]) -> Option<(u32, u32, &[u8])> {
    let (head, data) = payload.split_at_checked(BINARY_CHUNK_HEADER)?;
    let c = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
    let i = u32::from_le_bytes([head[6], head[7], head[8], head[9]]);
    Some((c, i, data))
}

/// A fixed-size set of chunk indexes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u32,
    ones: u32,
}

impl Bitmap {
    /// All clear, `len` bits.
    pub fn new(len: u32) -> Self {
        Self {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            ones: 0,
        }
    }

    /// All set, `len` bits.
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        b.set_range(0, len);
        b
    }

    /// Number of bits.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether it has no bits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bits set.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// Whether every bit is set.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// Bit `i` (false past the end).
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; returns whether it was clear. Ignores `i` past the end.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] |= 1 << (i % 64);
        self.ones += 1;
        true
    }

    /// Clears bit `i`.
    pub fn clear(&mut self, i: u32) {
        if self.get(i) {
            self.words[(i / 64) as usize] &= !(1 << (i % 64));
            self.ones -= 1;
        }
    }

    /// Clears every bit.
    pub fn clear_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.ones = 0;
    }

    /// Sets `[start, end)`, clipped to the bitmap.
    pub fn set_range(&mut self, start: u32, end: u32) {
        for i in start..end.min(self.len) {
            self.set(i);
        }
    }

    /// The first index `>= from` that is set here and in `other` (same length).
    pub fn first_common(&self, other: &Self, from: u32) -> Option<u32> {
        let mut w = (from / 64) as usize;
        let mut mask = u64::MAX.checked_shl(from % 64).unwrap_or(0);
        while w < self.words.len() {
            let x = self.words[w] & other.words.get(w).copied().unwrap_or(0) & mask;
            if x != 0 {
                let i = (w as u32) * 64 + x.trailing_zeros();
                return (i < self.len).then_some(i);
            }
            w += 1;
            mask = u64::MAX;
        }
        None
    }

    /// The first clear ranges `[start, end)`, at most `limit` of them.
    pub fn missing_ranges(&self, limit: usize) -> Vec<[u32; 2]> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.len && out.len() < limit {
            if self.get(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < self.len && !self.get(i) {
                i += 1;
            }
            out.push([start, i]);
        }
        out
    }

    /// Lowercase hex of the bytes (bit i = byte i/8, bit i%8), for persistence.
    pub fn to_hex(&self) -> String {
        let bytes: Vec<u8> = self
            .words
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .take((self.len as usize).div_ceil(8))
            .collect();
        crate::stock::hex(&bytes)
    }

    /// Parses [`Bitmap::to_hex`] for `len` bits.
    pub fn from_hex(hex: &str, len: u32) -> Option<Self> {
        let nbytes = (len as usize).div_ceil(8);
        if hex.len() != nbytes * 2 {
            return None;
        }
        let mut b = Self::new(len);
        for (k, pair) in hex.as_bytes().chunks(2).enumerate() {
            let s = core::str::from_utf8(pair).ok()?;
            let byte = u8::from_str_radix(s, 16).ok()?;
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    let i = (k * 8 + bit) as u32;
                    if i >= len {
                        return None;
                    }
                    b.set(i);
                }
            }
        }
        Some(b)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use meshfleet_mesh::{NodeId, TypedPackage};
    use meshfleet_wire::{Package, Routing};
    use proptest::prelude::*;

    #[test]
    fn ranges_and_common() {
        let mut b = Bitmap::new(130);
        b.set_range(0, 10);
        b.set_range(64, 70);
        assert_eq!(b.missing_ranges(10), vec![[10, 64], [70, 130]]);
        assert_eq!(b.missing_ranges(1), vec![[10, 64]]);
        let f = Bitmap::full(130);
        assert_eq!(b.first_common(&f, 5), Some(5));
        assert_eq!(b.first_common(&f, 10), Some(64));
        assert_eq!(b.first_common(&f, 70), None);
        assert!(Bitmap::full(130).is_full());
    }

    /// Encodes `body` from node 1 to node 2 and decodes it back through the wire crate.
    fn round_trip<B: PackageBody + PartialEq + core::fmt::Debug>(
        routing: Routing,
        body: B,
    ) -> String {
        let msg = TypedPackage::new(NodeId(1), routing, NodeId(2), body);
        let pkg = msg.encode().unwrap();
        assert_eq!(
            (pkg.ty(), pkg.routing(), pkg.from(), pkg.dest()),
            (B::TYPE, routing, NodeId(1), NodeId(2))
        );
        assert_eq!(TypedPackage::<B>::decode(&pkg).unwrap(), msg);
        pkg.text().to_string()
    }

    /// The envelope writes exactly the bytes the structs wrote when each declared
    /// `from, routing, type, dest` itself (the strings below are that encoding, key by
    /// key): nodes of either build understand each other.
    #[test]
    fn envelope_bytes_are_unchanged() {
        let s = |x: &str| x.to_string();
        let caps = Caps {
            v: 2,
            codecs: vec![s("none"), s("deflate")],
            window: 8192,
            mem: 1 << 20,
            bin: true,
            role: s("sensor"),
            hardware: s("ESP32"),
            fw: s("1.0.0"),
            sha256: s("ab"),
            ack: false,
        };
        assert_eq!(
            round_trip(Routing::Neighbour, caps),
            r#"{"from":1,"routing":0,"type":700,"dest":2,"v":2,"codecs":["none","deflate"],"window":8192,"mem":1048576,"bin":true,"role":"sensor","hardware":"ESP32","fw":"1.0.0","sha256":"ab","ack":false}"#
        );
        let offer = Offer {
            campaign: 7,
            intent: None,
            origin: 1,
            scope: Some(vec![2, 3]),
            manifest: serde_json::json!({"format": 2}),
        };
        assert_eq!(
            round_trip(Routing::Neighbour, offer),
            r#"{"from":1,"routing":0,"type":701,"dest":2,"campaign":7,"origin":1,"scope":[2,3],"manifest":{"format":2}}"#
        );
        let chunk = ChunkJson {
            campaign: 7,
            index: 3,
            data: s("AAE="),
        };
        assert_eq!(
            round_trip(Routing::Neighbour, chunk),
            r#"{"from":1,"routing":0,"type":703,"dest":2,"campaign":7,"index":3,"data":"AAE="}"#
        );
        let nak = Nak {
            campaign: 7,
            missing: vec![[0, 4], [9, 10]],
        };
        assert_eq!(
            round_trip(Routing::Neighbour, nak),
            r#"{"from":1,"routing":0,"type":704,"dest":2,"campaign":7,"missing":[[0,4],[9,10]]}"#
        );
        let status = Status {
            campaign: 7,
            have: 0,
            chunks: 0,
            done: false,
            subtree_done: false,
            reject: Some(s("busy")),
            refusal: Some(s("busy")),
        };
        assert_eq!(
            round_trip(Routing::Neighbour, status),
            r#"{"from":1,"routing":0,"type":705,"dest":2,"campaign":7,"have":0,"chunks":0,"done":false,"subtree_done":false,"reject":"busy","refusal":"busy"}"#
        );
        let report = Report {
            campaign: 7,
            outcome: s("updated"),
            refusal: None,
            version: s("1.1.0"),
            node: 0,
        };
        assert_eq!(
            round_trip(Routing::Single, report),
            r#"{"from":1,"routing":1,"type":706,"dest":2,"campaign":7,"outcome":"updated","version":"1.1.0","node":0}"#
        );
        let rollback = Rollback {
            origin: 1,
            command: serde_json::json!({"action": "rollback"}),
        };
        assert_eq!(
            round_trip(Routing::Single, rollback),
            r#"{"from":1,"routing":1,"type":707,"dest":2,"origin":1,"command":{"action":"rollback"}}"#
        );
        let result = RollbackResult {
            issued: 5,
            outcome: s("refused"),
            refusal: Some(s("replayed")),
            version: s("1.0.0"),
        };
        assert_eq!(
            round_trip(Routing::Single, result),
            r#"{"from":1,"routing":1,"type":708,"dest":2,"issued":5,"outcome":"refused","refusal":"replayed","version":"1.0.0"}"#
        );
    }

    /// The header is the one the wire crate read; a package of another type is not
    /// taken for this one.
    #[test]
    fn decode_checks_the_type_and_reads_the_header_once() {
        let text = r#"{"from":4,"routing":0,"type":704,"dest":9,"campaign":7,"missing":[]}"#;
        let pkg = Package::from_text(text.to_string()).unwrap();
        let nak = TypedPackage::<Nak>::decode(&pkg).unwrap();
        assert_eq!(
            (nak.from, nak.dest, nak.routing),
            (NodeId(4), NodeId(9), Routing::Neighbour)
        );
        assert!(TypedPackage::<Status>::decode(&pkg).is_err());
        // A body key of the wrong type is a decode error, not a default.
        let bad = r#"{"from":4,"routing":0,"type":704,"dest":9,"campaign":"x","missing":[]}"#;
        let pkg = Package::from_text(bad.to_string()).unwrap();
        assert!(TypedPackage::<Nak>::decode(&pkg).is_err());
    }

    #[test]
    fn binary_chunk_round_trip() {
        let p = encode_binary_chunk(7, 9, b"abc");
        assert_eq!(&p[..2], &703u16.to_le_bytes());
        assert_eq!(decode_binary_chunk(&p), Some((7, 9, &b"abc"[..])));
        assert_eq!(decode_binary_chunk(&p[..9]), None);
    }

    proptest! {
        /// Every unit is exactly one page or one chunk, each page comes just before the
        /// chunks it covers, and the index maps invert each other.
        #[test]
        fn layout_is_a_bijection(chunks in 1u32..2000, per_page in 1u32..70) {
            let l = Layout { chunks, pages: chunks.div_ceil(per_page), per_page };
            let (mut seen_chunks, mut seen_pages) = (0u32, 0u32);
            for u in 0..l.units() {
                match l.unit(u) {
                    Some(Unit::Page(k)) => {
                        prop_assert_eq!(k, seen_pages);
                        prop_assert_eq!(l.of_page(k), u);
                        seen_pages += 1;
                    }
                    Some(Unit::Chunk(i)) => {
                        prop_assert_eq!(i, seen_chunks);
                        prop_assert_eq!(l.of_chunk(i), u);
                        prop_assert!(l.page_of_chunk(i) < u);
                        prop_assert_eq!(l.unit(l.page_of_chunk(i)), Some(Unit::Page(i / per_page)));
                        seen_chunks += 1;
                    }
                    None => prop_assert!(false, "unit {} of {} unmapped", u, l.units()),
                }
            }
            prop_assert_eq!((seen_chunks, seen_pages), (chunks, l.pages));
            prop_assert_eq!(l.unit(l.units()), None);
        }

        #[test]
        fn hex_round_trip(len in 0u32..300, bits in proptest::collection::vec(0u32..300, 0..50)) {
            let mut b = Bitmap::new(len);
            for i in bits { b.set(i); }
            let h = b.to_hex();
            prop_assert_eq!(Bitmap::from_hex(&h, len).unwrap(), b);
        }
    }
}
