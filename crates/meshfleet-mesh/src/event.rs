//! What the node tells its driver and application.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt;

use meshfleet_wire::NodeId;

use crate::LinkId;

/// Which side of the TCP connection we are (the library's `station` flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkRole {
    /// We connected out (WiFi station -> its AP): we sync at once.
    Station,
    /// We accepted the connection (we are the AP): we wait 10 s before our first sync.
    AccessPoint,
}

/// Why a link was closed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The driver reported the connection gone (FIN, reset, error).
    PeerClosed,
    /// No NODE_SYNC_REPLY within the node timeout.
    NodeSyncTimeout,
    /// A node sync announced a different id than the link's.
    ChangedNodeId {
        /// The id the link had.
        was: NodeId,
        /// The id it now claimed.
        now: NodeId,
    },
    /// A node sync listed the sender inside its own sub-tree (a loop).
    SenderInOwnSubtree(NodeId),
    /// The first node sync announced a node we already reach through another link.
    DuplicateNode(NodeId),
    /// The peer claimed our own node id.
    ClaimsOurId,
    /// The application asked.
    Requested,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerClosed => f.write_str("connection closed by peer"),
            Self::NodeSyncTimeout => f.write_str("no node sync reply within the node timeout"),
            Self::ChangedNodeId { was, now } => {
                write!(f, "node sync changed the link's id from {was} to {now}")
            }
            Self::SenderInOwnSubtree(id) => {
                write!(f, "node sync lists sender {id} inside its own subtree")
            }
            Self::DuplicateNode(id) => {
                write!(f, "node {id} is already reachable through another link")
            }
            Self::ClaimsOurId => f.write_str("peer claims our own node id"),
            Self::Requested => f.write_str("closed by the application"),
        }
    }
}

impl CloseReason {
    /// A short stable label for counters and JSON.
    pub fn label(&self) -> &'static str {
        match self {
            Self::PeerClosed => "peer_closed",
            Self::NodeSyncTimeout => "node_sync_timeout",
            Self::ChangedNodeId { .. } => "changed_node_id",
            Self::SenderInOwnSubtree(_) => "sender_in_own_subtree",
            Self::DuplicateNode(_) => "duplicate_node",
            Self::ClaimsOurId => "claims_our_id",
            Self::Requested => "requested",
        }
    }
}

/// Why a single frame was dropped (the link stays up).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Larger than the frame cap.
    TooLong,
    /// Could not be decoded: the wire crate's typed error, kept whole so consumers can
    /// tell bad UTF-8 from bad JSON from a malformed field.
    Decode(meshfleet_wire::DecodeError),
    /// Decoded, but not usable as the library's protocol defines it.
    Malformed(Malformed),
    /// A SINGLE for a node we have no route to.
    NoRoute(NodeId),
    /// A package type nobody handles.
    Unhandled(i64),
    /// A node sync whose tree we refuse to take on (the link stays up and keeps the tree
    /// it had): accepting it would break our own node syncs to the rest of the mesh.
    TreeRefused(TreeRefusal),
    /// A time sync message we do not act on (see [`TimeRefusal`]).
    TimeRefused(TimeRefusal),
}

/// A frame that decoded but lacks what its type needs ([`DropReason::Malformed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformed {
    /// A binary (meshfleet) frame with no type tag byte.
    BinaryWithoutTag,
    /// A node sync whose tree has no node id.
    NodeSyncWithoutId,
    /// A TIME_REPLY missing one of t0, t1, t2.
    TimeReplyIncomplete,
    /// A time sync message of a kind the library does not define.
    UnknownTimeSyncKind(i64),
    /// A meshfleet digest sync (type 95) of no known kind, or a request or reply from a
    /// link that has not completed node sync.
    DigestSync,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BinaryWithoutTag => f.write_str("binary frame without a type tag"),
            Self::NodeSyncWithoutId => f.write_str("node sync without a node id"),
            Self::TimeReplyIncomplete => f.write_str("TIME_REPLY without t0/t1/t2"),
            Self::UnknownTimeSyncKind(k) => write!(f, "unknown time sync type {k}"),
            Self::DigestSync => f.write_str("digest sync of no known kind, or before node sync"),
        }
    }
}

/// Why a time sync message was not acted on ([`DropReason::TimeRefused`]). The library
/// takes a TIME_REPLY from anyone, at any time, for any offset; we take time only as
/// answers to our own requests, from neighbours that completed node sync, in bounded
/// steps ([`crate::Config::max_time_step`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeRefusal {
    /// The link has not completed node sync: we do not know who the peer is, nor whether
    /// its time is ours to take.
    Unsynced,
    /// A TIME_REPLY that answers no request of ours on this link (its `t0` is not the one
    /// we sent, or it was answered already).
    Unsolicited,
    /// "Ask me for my time" from a neighbour whose time our adoption rule does not take
    /// (we are the larger side, or have time authority and it has not).
    NotOurSource,
    /// A time step came less than `time_sync_retry` (200 ms) after the last one; the
    /// sync is retried then.
    TooSoon,
}

impl TimeRefusal {
    /// A short stable label for counters and JSON.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unsynced => "time_from_unsynced_link",
            Self::Unsolicited => "time_reply_unsolicited",
            Self::NotOurSource => "time_not_our_source",
            Self::TooSoon => "time_step_too_soon",
        }
    }
}

impl fmt::Display for TimeRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unsynced => "time sync from a link that has not completed node sync",
            Self::Unsolicited => "time reply that answers no request of ours",
            Self::NotOurSource => "time sync request from a neighbour we do not take time from",
            Self::TooSoon => "time step too soon after the previous one",
        })
    }
}

/// Why a neighbour's node tree was refused ([`DropReason::TreeRefused`]).
///
/// Every tree we accept is relayed, one level deeper, in the node syncs we send to our
/// other neighbours. A tree that lists us, or that would make those syncs deeper than
/// [`meshfleet_wire::MAX_TREE_DEPTH`] or longer than the frame cap, would make honest
/// neighbours close or time out their links to us; so it is refused at the door.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TreeRefusal {
    /// The tree lists our own node id below the sender: a loop, or a forgery. Relayed,
    /// it would make every other neighbour see itself inside our subtree and close its
    /// link (`sender_in_own_subtree`).
    ContainsUs,
    /// Relayed by us, the tree's deepest node would sit `depth` levels below us, more than
    /// [`meshfleet_wire::MAX_TREE_DEPTH`]: our node syncs would exceed the JSON nesting
    /// limit and be dropped by every neighbour (the library's too).
    TooDeep {
        /// Levels below us the tree would reach.
        depth: usize,
    },
    /// With this tree, the node sync we would send a new neighbour (every tree we hold)
    /// would be `sync_len` bytes, more than the frame cap `max`.
    TooLarge {
        /// Length of that node sync, NUL excluded.
        sync_len: usize,
        /// The frame cap ([`crate::Config::max_frame_len`]).
        max: usize,
    },
}

impl TreeRefusal {
    /// A short stable label for counters and JSON.
    pub fn label(&self) -> &'static str {
        match self {
            Self::ContainsUs => "tree_contains_us",
            Self::TooDeep { .. } => "tree_too_deep",
            Self::TooLarge { .. } => "tree_too_large",
        }
    }
}

impl fmt::Display for TreeRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ContainsUs => f.write_str("node sync tree lists our own node id"),
            Self::TooDeep { depth } => write!(
                f,
                "node sync tree would reach {depth} levels below us (at most {})",
                meshfleet_wire::MAX_TREE_DEPTH
            ),
            Self::TooLarge { sync_len, max } => write!(
                f,
                "node sync tree would make our node syncs {sync_len} bytes (cap {max})"
            ),
        }
    }
}

impl DropReason {
    /// A short stable label for counters and JSON.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::Decode(_) | Self::Malformed(_) => "decode",
            Self::NoRoute(_) => "no_route",
            Self::Unhandled(_) => "unhandled",
            Self::TreeRefused(r) => r.label(),
            Self::TimeRefused(r) => r.label(),
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong => f.write_str("frame exceeds the size cap"),
            Self::Decode(e) => fmt::Display::fmt(e, f),
            Self::Malformed(m) => fmt::Display::fmt(m, f),
            Self::NoRoute(id) => write!(f, "no route to node {id}"),
            Self::Unhandled(ty) => write!(f, "no handler for package type {ty}"),
            Self::TreeRefused(r) => fmt::Display::fmt(r, f),
            Self::TimeRefused(r) => fmt::Display::fmt(r, f),
        }
    }
}

/// An event a plugin reports to the application.
///
/// `Sync` so that a driver can hand one event to several subscribers without copying it
/// into another form (the runtime shares it behind an `Arc`).
///
/// Downcast with `<dyn PluginEvent>::downcast_ref` (implementors write no downcasting
/// code: [`AnyEvent`] is implemented for every type).
pub trait PluginEvent: AnyEvent + fmt::Debug + Send + Sync {
    /// A JSON form for `--json` output and logs.
    fn to_json(&self) -> serde_json::Value;
}

/// Downcasting support for every event type (see [`crate::AnyPlugin`] for why it is a
/// blanket trait). Use `<dyn PluginEvent>::downcast_ref`.
#[doc(hidden)]
pub trait AnyEvent: Any {
    /// `self` as `Any`.
    fn any_event(&self) -> &dyn Any;
}

impl<T: Any> AnyEvent for T {
    fn any_event(&self) -> &dyn Any {
        self
    }
}

impl dyn PluginEvent {
    /// The event as the plugin's own event type, if it is one.
    pub fn downcast_ref<T: PluginEvent>(&self) -> Option<&T> {
        self.any_event().downcast_ref::<T>()
    }
}

/// Whether a received application message was unicast or broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// SINGLE (9).
    Single,
    /// BROADCAST (8).
    Broadcast,
}

/// Something the driver or application should know. Drain with [`crate::Node::poll_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The first node sync on a link succeeded: the peer is now part of the mesh
    /// (`newConnectionCallback`).
    NewConnection {
        /// The link.
        link: LinkId,
        /// The neighbour's id.
        peer: NodeId,
    },
    /// The node closed a link or learnt that it closed. The driver must close the socket
    /// (unless it reported the closure itself) and send nothing more on it.
    LinkClosed {
        /// The link.
        link: LinkId,
        /// The neighbour's id, if it had synced.
        peer: Option<NodeId>,
        /// Why.
        reason: CloseReason,
    },
    /// The mesh layout changed (`changedConnectionsCallback`); `nodes` is the new node list
    /// (all nodes but us, sorted).
    NodeListChanged {
        /// Every other node we can reach.
        nodes: Vec<NodeId>,
    },
    /// An application message for us.
    Received {
        /// Sender.
        from: NodeId,
        /// Text (what the library's receive callback gets).
        msg: String,
        /// Unicast or broadcast.
        delivery: Delivery,
    },
    /// Time sync changed our offset (`nodeTimeAdjustedCallback`).
    TimeAdjusted {
        /// The correction applied, in microseconds.
        offset: i32,
        /// Mesh time after the correction.
        mesh_time: u32,
    },
    /// A TIME_DELAY measurement completed (`nodeDelayReceivedCallback`).
    DelayMeasured {
        /// The node measured.
        node: NodeId,
        /// One-way trip delay in microseconds.
        delay_us: i32,
    },
    /// A frame was dropped; the link stays up.
    FrameDropped {
        /// Where it came from.
        link: LinkId,
        /// Why.
        reason: DropReason,
    },
    /// A plugin's event.
    Plugin {
        /// The plugin's name.
        plugin: &'static str,
        /// Its payload.
        event: Box<dyn PluginEvent>,
    },
}
