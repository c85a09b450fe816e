//! The painlessMesh wire protocol: framing and typed messages.
//!
//! painlessMesh speaks plain TCP; every frame is one JSON object followed by a NUL byte
//! (`../shared/painlessmesh/PROTOCOL.md` §4.1). This crate turns bytes into typed
//! [`Message`]s and back, and nothing else: no sockets, no clock, `no_std + alloc`, so an
//! ESP32 firmware written in Rust could use it unchanged.
//!
//! * [`Framer`] splits a byte stream at NULs and rejects an oversized frame *before*
//!   buffering it (the C++ library has no limit; we do, see [`DEFAULT_MAX_FRAME_LEN`]).
//! * [`decode`] parses one frame into a [`Message`]. It is as tolerant as the library where
//!   real nodes depend on it (`"type":"9"`, trailing garbage after the object, duplicate
//!   keys: last wins, `msg` that is not a string) and strict where that protects us (invalid
//!   UTF-8, numbers out of the unsigned 32-bit range read as 0 exactly like the library's
//!   `is<uint32_t>()`). Nesting is limited exactly as in the library: a frame nested deeper
//!   than [`MAX_JSON_NESTING`] (255) is refused, so node trees go [`MAX_TREE_DEPTH`] (127)
//!   levels deep. Non-recursive scans (and the node-tree parser) enforce it before any
//!   value is deserialized, so no input can make a parse recurse deeper than that (stack
//!   use: see [`MAX_JSON_NESTING`]).
//! * [`Message::encode`] writes the exact key order the library writes, so frames are
//!   byte-identical to the library's for everything it would send (`package_samples.jsonl`).
//!   Keys we do not know are kept and written back, so forwarding preserves them (Q7).
//! * [`Package`] carries every other message type (plugins: OTA 10/11/12, status, ...)
//!   opaquely; [`ota`] has the typed OTA packages.
#![no_std]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

extern crate alloc;

/// Inside a serde `Visitor` whose `Value: Default`: every JSON scalar (number, string,
/// bool, null) reads as the default, as ArduinoJson reads a value of the wrong type.
macro_rules! scalars_read_as_default {
    () => {
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

mod framer;
mod lenient;
mod message;
mod nesting;
pub mod ota;
mod package;
mod splice;
mod tree;

pub use framer::{binary_frame, FrameError, FrameRef, Framer, BINARY_FRAME_MARK};
pub use message::{
    decode, parse, DecodeError, Extra, Frame, Message, MsgText, NodeSync, Text, TimeMsg,
    TimePacket, MAX_STRING_CHARS,
};
pub use nesting::MAX_JSON_NESTING;
pub use package::Package;
pub use splice::{common_prefix, common_suffix, node_offsets, reread_changed, Reread};
pub use tree::{FlatTree, NodeTree, SyncDigest, MAX_TREE_DEPTH};

/// Default cap on one frame, NUL excluded: 1 MiB.
///
/// The largest legitimate frames are node syncs of big meshes (about 33 bytes per node:
/// 10,000 nodes = ~330 KB) and SINGLE/BROADCAST messages up to the library's 65,535-char
/// string limit (~256 KB if every char is 4-byte UTF-8). 1 MiB covers both with margin; the
/// library itself has no cap (its buffer grows until the NUL), which is how a peer could
/// make it allocate without bound.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 20;

/// A painlessMesh node id (unsigned 32-bit; 0 means "unknown").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The "unknown node" id the library uses for links that have not synced yet.
    pub const UNKNOWN: Self = Self(0);
}

impl core::fmt::Display for NodeId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(&self.0, f)
    }
}

/// Message type numbers of the core protocol (PROTOCOL.md §4.3).
pub mod types {
    /// End-to-end delay measurement (routed SINGLE).
    pub const TIME_DELAY: i64 = 3;
    /// Neighbour time sync.
    pub const TIME_SYNC: i64 = 4;
    /// Node sync request.
    pub const NODE_SYNC_REQUEST: i64 = 5;
    /// Node sync reply.
    pub const NODE_SYNC_REPLY: i64 = 6;
    /// Deprecated CONTROL (no handler in the library).
    pub const CONTROL: i64 = 7;
    /// Application broadcast.
    pub const BROADCAST: i64 = 8;
    /// Application unicast.
    pub const SINGLE: i64 = 9;
    /// OTA announce (plugin).
    pub const OTA_ANNOUNCE: i64 = 10;
    /// OTA data request (plugin).
    pub const OTA_DATA_REQUEST: i64 = 11;
    /// OTA data (plugin).
    pub const OTA_DATA: i64 = 12;
    /// meshfleet's digest node sync between meshfleet neighbours (NEIGHBOUR-routed; the
    /// library ignores a type it does not know). See `meshfleet_mesh::NodeSyncPolicy`.
    pub const MESHFLEET_SYNC: i64 = 95;
}

/// How a frame travels (the library's `routing()`; an explicit `"routing"` key wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Routing {
    /// Processed by the direct neighbour only (0).
    Neighbour,
    /// Forwarded along the tree towards `dest` (1).
    Single,
    /// Delivered locally and flooded to every other link (2).
    Broadcast,
    /// No routing known: type without a rule and no `routing` key (-1).
    Error,
}

impl Routing {
    /// The library's number for this routing.
    pub fn code(self) -> i64 {
        match self {
            Self::Neighbour => 0,
            Self::Single => 1,
            Self::Broadcast => 2,
            Self::Error => -1,
        }
    }

    /// From the library's number; anything unknown is [`Routing::Error`].
    pub fn from_code(code: i64) -> Self {
        match code {
            0 => Self::Neighbour,
            1 => Self::Single,
            2 => Self::Broadcast,
            _ => Self::Error,
        }
    }

    /// The routing the library derives from the type alone (router.hpp `routing()`).
    pub fn for_type(ty: i64) -> Self {
        match ty {
            types::SINGLE | types::TIME_DELAY => Self::Single,
            types::BROADCAST => Self::Broadcast,
            types::TIME_SYNC | types::NODE_SYNC_REQUEST | types::NODE_SYNC_REPLY => Self::Neighbour,
            _ => Self::Error,
        }
    }
}
