//! What the runtime tells its subscribers: the node's events in owned, serializable form,
//! plus link-level events the node does not see (listening, connecting, TCP up/down).

use std::fmt;
use std::net::SocketAddr;

use std::sync::Arc;

use meshfleet_mesh::{CloseReason, DropReason, LinkId, LinkRole, NodeId, PluginEvent};
use serde::{Deserialize, Serialize};

/// Whether a received application message was unicast or broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// SINGLE (type 9).
    Single,
    /// BROADCAST (type 8).
    Broadcast,
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Single => "single",
            Self::Broadcast => "broadcast",
        })
    }
}

/// One event, as broadcast by [`crate::MeshHandle::subscribe`].
///
/// The JSON form is stable: `{"event":"<snake_case variant>", <camelCase fields>}`, for
/// example `{"event":"received","from":1001,"msg":"hello","kind":"single"}`. Node ids are
/// plain integers, link ids integers, reasons a stable snake_case label plus a readable
/// `detail`. [`fmt::Display`] gives a one-line human form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "event",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum RuntimeEvent {
    /// The listener is bound (the first event of a runtime that listens).
    Listening {
        /// The bound address (the real port when port 0 was asked for).
        addr: SocketAddr,
        /// `addr`'s port, for consumers that only want that.
        port: u16,
    },
    /// A connection attempt to a configured target starts.
    Connecting {
        /// The target, as configured.
        target: String,
        /// 1 for the first attempt since the runtime started.
        attempt: u32,
    },
    /// A connection attempt failed; another follows after a backoff delay.
    ConnectFailed {
        /// The target, as configured.
        target: String,
        /// What went wrong.
        error: String,
        /// Milliseconds until the next attempt.
        retry_in_ms: u64,
    },
    /// A TCP connection is up. The node starts syncing on it; [`RuntimeEvent::NewConnection`]
    /// follows once the peer has identified itself.
    Connected {
        /// The runtime's id for this connection (never reused).
        #[serde(with = "link_id")]
        link: LinkId,
        /// The peer's address (or the label given to an attached stream).
        peer: String,
        /// Who connected: `station` (we did) or `access_point` (they did).
        #[serde(with = "link_role")]
        role: LinkRole,
    },
    /// A TCP connection is gone, for whatever reason (see `reason`).
    Disconnected {
        /// The connection.
        #[serde(with = "link_id")]
        link: LinkId,
        /// The peer's address.
        peer: String,
        /// The neighbour's node id, if it had synced.
        #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_node_id")]
        node_id: Option<NodeId>,
        /// Why, typed; serialized as a stable snake_case label (`eof`, `io_error`,
        /// `node_sync_timeout`, ...).
        reason: LinkEnd,
        /// Human-readable detail.
        detail: String,
    },
    /// A neighbour completed its first node sync (`newConnectionCallback`).
    NewConnection {
        /// The neighbour.
        #[serde(with = "node_id")]
        node_id: NodeId,
        /// Its connection.
        #[serde(with = "link_id")]
        link: LinkId,
    },
    /// A synced neighbour went away (`droppedConnectionCallback`).
    DroppedConnection {
        /// The neighbour.
        #[serde(with = "node_id")]
        node_id: NodeId,
        /// Its connection.
        #[serde(with = "link_id")]
        link: LinkId,
        /// Why, as in [`RuntimeEvent::Disconnected`].
        reason: LinkEnd,
        /// Human-readable detail.
        detail: String,
    },
    /// The node list changed (`changedConnectionsCallback`).
    Nodes {
        /// Every other node we can reach, sorted.
        #[serde(with = "node_ids")]
        nodes: Vec<NodeId>,
    },
    /// An application message for us.
    Received {
        /// The sender.
        #[serde(with = "node_id")]
        from: NodeId,
        /// The text.
        msg: String,
        /// Unicast or broadcast.
        kind: MessageKind,
    },
    /// Time sync corrected our clock (`nodeTimeAdjustedCallback`).
    TimeAdjusted {
        /// The correction, in microseconds.
        offset: i32,
        /// Mesh time right after the correction (µs, wrapping u32).
        mesh_time: u32,
    },
    /// A TIME_DELAY measurement finished (`nodeDelayReceivedCallback`).
    Delay {
        /// The node measured.
        #[serde(with = "node_id")]
        node_id: NodeId,
        /// One-way trip delay in microseconds.
        us: i32,
    },
    /// A frame from a peer was dropped (undecodable, too long, no route...); the link
    /// stays up.
    FrameDropped {
        /// Where it came from.
        #[serde(with = "link_id")]
        link: LinkId,
        /// Why, typed; serialized as [`meshfleet_mesh::DropReason::label`].
        reason: DropKind,
        /// Human-readable detail.
        detail: String,
    },
    /// A plugin's event, typed ([`PluginData::downcast_ref`]); its JSON form
    /// ([`meshfleet_mesh::PluginEvent::to_json`]) is made only when it is serialized.
    Plugin {
        /// The plugin's name.
        plugin: String,
        /// Its payload.
        data: PluginData,
    },
}

impl fmt::Display for RuntimeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Listening { addr, .. } => write!(f, "listening on {addr}"),
            Self::Connecting { target, attempt } => {
                write!(f, "connecting to {target} (attempt {attempt})")
            }
            Self::ConnectFailed {
                target,
                error,
                retry_in_ms,
            } => write!(
                f,
                "connecting to {target} failed: {error}; retrying in {:.1} s",
                *retry_in_ms as f64 / 1000.0
            ),
            Self::Connected { link, peer, role } => match role {
                LinkRole::Station => write!(f, "connected to {peer} (link {})", link.0),
                LinkRole::AccessPoint => write!(f, "accepted {peer} (link {})", link.0),
            },
            Self::Disconnected {
                link, peer, detail, ..
            } => write!(f, "disconnected from {peer} (link {}): {detail}", link.0),
            Self::NewConnection { node_id, .. } => write!(f, "link up {node_id}"),
            Self::DroppedConnection {
                node_id, detail, ..
            } => write!(f, "link down {node_id} ({detail})"),
            Self::Nodes { nodes } => {
                f.write_str("nodes changed: ")?;
                write_ids(f, nodes)
            }
            Self::Received { from, msg, kind } => write!(f, "received {kind} from {from}: {msg}"),
            Self::TimeAdjusted { offset, .. } => write!(f, "time adjusted by {offset} us"),
            Self::Delay { node_id, us } => write!(f, "delay to {node_id}: {us} us"),
            Self::FrameDropped { link, detail, .. } => {
                write!(f, "frame dropped on link {}: {detail}", link.0)
            }
            Self::Plugin { plugin, data } => write!(f, "{plugin}: {}", data.to_json()),
        }
    }
}

/// A plugin's event as the runtime hands it to its subscribers: the node's typed event,
/// shared (every subscriber gets the same one). Consumers downcast it to the plugin's event
/// type; its JSON form is made at the output edge ([`PluginData::to_json`], or serializing
/// the [`RuntimeEvent`]). Deserializing gives the JSON form back as a [`JsonEvent`].
#[derive(Clone, Debug)]
pub struct PluginData(Arc<dyn PluginEvent>);

impl PluginData {
    /// Wraps a node's plugin event.
    pub fn new(event: Box<dyn PluginEvent>) -> Self {
        Self(Arc::from(event))
    }

    /// The event as the plugin's own type, if it is one.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        // `*self.0`: the event, not the `Arc` (which is `Any` too).
        meshfleet_mesh::AnyEvent::any_event(&*self.0).downcast_ref::<T>()
    }

    /// The typed event.
    pub fn event(&self) -> &dyn PluginEvent {
        &*self.0
    }

    /// The plugin's JSON form.
    pub fn to_json(&self) -> serde_json::Value {
        self.0.to_json()
    }
}

impl PartialEq for PluginData {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.to_json() == other.to_json()
    }
}

impl Serialize for PluginData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for PluginData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Ok(Self(Arc::new(JsonEvent(v))))
    }
}

/// A plugin event known only by its JSON form (read back from a JSON line).
#[derive(Clone, Debug, PartialEq)]
pub struct JsonEvent(pub serde_json::Value);

impl PluginEvent for JsonEvent {
    fn to_json(&self) -> serde_json::Value {
        self.0.clone()
    }
}

/// Writes `[1, 2, 3]`.
pub(crate) fn write_ids(f: &mut impl fmt::Write, ids: &[NodeId]) -> fmt::Result {
    f.write_char('[')?;
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{id}")?;
    }
    f.write_char(']')
}

/// Why the runtime closed (or lost) a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DisconnectReason {
    /// The peer closed its side (FIN).
    Eof,
    /// Reading or writing failed (reset, broken pipe, ...).
    Io(std::io::ErrorKind),
    /// The node closed the link (node sync timeout, loop, duplicate node, ...).
    Node(CloseReason),
    /// The send queue stayed full for the stall timeout.
    Stalled,
    /// The link had not completed node sync and its slot went to a new connection.
    Evicted,
    /// The runtime is shutting down.
    Shutdown,
}

impl DisconnectReason {
    /// The typed form subscribers get.
    pub(crate) fn end(&self) -> LinkEnd {
        match self {
            Self::Eof => LinkEnd::Eof,
            Self::Io(_) => LinkEnd::IoError,
            Self::Node(r) => LinkEnd::from(r),
            Self::Stalled => LinkEnd::SendQueueStalled,
            Self::Evicted => LinkEnd::EvictedUnsynced,
            Self::Shutdown => LinkEnd::Shutdown,
        }
    }
}

/// Why a connection ended ([`RuntimeEvent::Disconnected`],
/// [`RuntimeEvent::DroppedConnection`]). Serialized as a stable snake_case label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LinkEnd {
    /// The peer closed its side (FIN).
    Eof,
    /// Reading or writing failed (reset, broken pipe, ...).
    IoError,
    /// The peer stopped reading: the send queue stayed full for the stall timeout.
    SendQueueStalled,
    /// Not synced; its slot went to a new connection.
    EvictedUnsynced,
    /// The runtime is shutting down.
    Shutdown,
    /// The node learnt the peer closed ([`CloseReason::PeerClosed`]).
    PeerClosed,
    /// No node sync in time ([`CloseReason::NodeSyncTimeout`]).
    NodeSyncTimeout,
    /// The neighbour's id changed ([`CloseReason::ChangedNodeId`]).
    ChangedNodeId,
    /// A loop ([`CloseReason::SenderInOwnSubtree`]).
    SenderInOwnSubtree,
    /// The node is already reachable another way ([`CloseReason::DuplicateNode`]).
    DuplicateNode,
    /// The peer claims our id ([`CloseReason::ClaimsOurId`]).
    ClaimsOurId,
    /// The application asked ([`CloseReason::Requested`]).
    Requested,
    /// A reason this version does not know (a newer node's JSON line).
    #[serde(other)]
    Other,
}

impl From<&CloseReason> for LinkEnd {
    fn from(r: &CloseReason) -> Self {
        match r {
            CloseReason::PeerClosed => Self::PeerClosed,
            CloseReason::NodeSyncTimeout => Self::NodeSyncTimeout,
            CloseReason::ChangedNodeId { .. } => Self::ChangedNodeId,
            CloseReason::SenderInOwnSubtree(_) => Self::SenderInOwnSubtree,
            CloseReason::DuplicateNode(_) => Self::DuplicateNode,
            CloseReason::ClaimsOurId => Self::ClaimsOurId,
            CloseReason::Requested => Self::Requested,
            _ => Self::Other,
        }
    }
}

/// Why a frame was dropped ([`RuntimeEvent::FrameDropped`]), the kinds of
/// [`DropReason`]. Serialized as [`DropReason::label`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DropKind {
    /// Longer than the frame cap.
    TooLong,
    /// Not a frame we can decode (or a malformed one).
    Decode,
    /// A SINGLE for a node we cannot reach.
    NoRoute,
    /// A package type no plugin claims.
    Unhandled,
    /// A node sync tree that lists our own id.
    TreeContainsUs,
    /// A node sync tree deeper than we relay.
    TreeTooDeep,
    /// A node sync larger than we accept.
    TreeTooLarge,
    /// Time sync from a link that has not completed node sync.
    TimeFromUnsyncedLink,
    /// A time reply that answers no request of ours.
    TimeReplyUnsolicited,
    /// A time request from a neighbour we do not take time from.
    TimeNotOurSource,
    /// A time step too soon after the previous one.
    TimeStepTooSoon,
    /// A reason this version does not know (a newer node's JSON line).
    #[serde(other)]
    Other,
}

impl From<&DropReason> for DropKind {
    fn from(r: &DropReason) -> Self {
        // By label: one source of truth for the names (the mesh crate's labels), checked
        // against the serde names by a test.
        match r.label() {
            "too_long" => Self::TooLong,
            "decode" => Self::Decode,
            "no_route" => Self::NoRoute,
            "unhandled" => Self::Unhandled,
            "tree_contains_us" => Self::TreeContainsUs,
            "tree_too_deep" => Self::TreeTooDeep,
            "tree_too_large" => Self::TreeTooLarge,
            "time_from_unsynced_link" => Self::TimeFromUnsyncedLink,
            "time_reply_unsolicited" => Self::TimeReplyUnsolicited,
            "time_not_our_source" => Self::TimeNotOurSource,
            "time_step_too_soon" => Self::TimeStepTooSoon,
            _ => Self::Other,
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Eof => f.write_str("connection closed by peer"),
            Self::Io(kind) => write!(f, "i/o error: {kind}"),
            Self::Node(r) => fmt::Display::fmt(r, f),
            Self::Stalled => f.write_str("peer stopped reading: send queue full for too long"),
            Self::Evicted => {
                f.write_str("not synced: slot given to a new connection (too many links)")
            }
            Self::Shutdown => f.write_str("runtime shutting down"),
        }
    }
}

// serde adapters: the mesh crate is no_std without serde, so its id types are mapped to
// their integer forms here.

mod node_id {
    use meshfleet_mesh::NodeId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(id: &NodeId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(id.0)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        u32::deserialize(d).map(NodeId)
    }
}

mod opt_node_id {
    use meshfleet_mesh::NodeId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(id: &Option<NodeId>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.serialize_some(&id.0),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NodeId>, D::Error> {
        Ok(Option::<u32>::deserialize(d)?.map(NodeId))
    }
}

mod node_ids {
    use meshfleet_mesh::NodeId;
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(ids: &[NodeId], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(ids.len()))?;
        for id in ids {
            seq.serialize_element(&id.0)?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeId>, D::Error> {
        Ok(Vec::<u32>::deserialize(d)?
            .into_iter()
            .map(NodeId)
            .collect())
    }
}

mod link_id {
    use meshfleet_mesh::LinkId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(id: &LinkId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(id.0)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LinkId, D::Error> {
        u64::deserialize(d).map(LinkId)
    }
}

mod link_role {
    use meshfleet_mesh::LinkRole;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(role: &LinkRole, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match role {
            LinkRole::Station => "station",
            LinkRole::AccessPoint => "access_point",
        })
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LinkRole, D::Error> {
        // Owned: internally tagged enums buffer their fields, so nothing can be borrowed.
        match String::deserialize(d)?.as_str() {
            "station" => Ok(LinkRole::Station),
            "access_point" => Ok(LinkRole::AccessPoint),
            other => Err(D::Error::unknown_variant(
                other,
                &["station", "access_point"],
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// The typed reasons serialize to exactly the mesh crate's labels, so JSON lines are
    /// what they were when the reasons were strings.
    #[test]
    fn typed_reasons_serialize_as_the_mesh_labels() {
        use meshfleet_mesh::{TimeRefusal, TreeRefusal};
        let drops = [
            DropReason::TooLong,
            DropReason::NoRoute(NodeId(3)),
            DropReason::Unhandled(900),
            DropReason::TreeRefused(TreeRefusal::ContainsUs),
            DropReason::TreeRefused(TreeRefusal::TooDeep { depth: 300 }),
            DropReason::TreeRefused(TreeRefusal::TooLarge {
                sync_len: 9,
                max: 1,
            }),
            DropReason::TimeRefused(TimeRefusal::Unsynced),
            DropReason::TimeRefused(TimeRefusal::Unsolicited),
            DropReason::TimeRefused(TimeRefusal::NotOurSource),
            DropReason::TimeRefused(TimeRefusal::TooSoon),
        ];
        for d in &drops {
            let kind = DropKind::from(d);
            assert_ne!(kind, DropKind::Other, "{d:?}");
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(d.label()));
        }
        let closes = [
            CloseReason::PeerClosed,
            CloseReason::NodeSyncTimeout,
            CloseReason::ChangedNodeId {
                was: NodeId(1),
                now: NodeId(2),
            },
            CloseReason::SenderInOwnSubtree(NodeId(1)),
            CloseReason::DuplicateNode(NodeId(1)),
            CloseReason::ClaimsOurId,
            CloseReason::Requested,
        ];
        for c in &closes {
            let end = LinkEnd::from(c);
            assert_ne!(end, LinkEnd::Other, "{c:?}");
            assert_eq!(serde_json::to_value(end).unwrap(), json!(c.label()));
        }
        // A label from a newer version reads back as `Other`, not as an error.
        let back: DropKind = serde_json::from_value(json!("something_new")).unwrap();
        assert_eq!(back, DropKind::Other);
    }

    fn round_trip(e: &RuntimeEvent, expected: serde_json::Value) {
        let v = serde_json::to_value(e).unwrap();
        assert_eq!(v, expected);
        let back: RuntimeEvent = serde_json::from_value(v).unwrap();
        assert_eq!(&back, e);
    }

    #[test]
    fn json_names_are_stable() {
        round_trip(
            &RuntimeEvent::Received {
                from: NodeId(1001),
                msg: "hello".into(),
                kind: MessageKind::Single,
            },
            json!({"event":"received","from":1001,"msg":"hello","kind":"single"}),
        );
        round_trip(
            &RuntimeEvent::NewConnection {
                node_id: NodeId(7),
                link: LinkId(3),
            },
            json!({"event":"new_connection","nodeId":7,"link":3}),
        );
        round_trip(
            &RuntimeEvent::DroppedConnection {
                node_id: NodeId(7),
                link: LinkId(3),
                reason: LinkEnd::Eof,
                detail: "connection closed by peer".into(),
            },
            json!({"event":"dropped_connection","nodeId":7,"link":3,"reason":"eof",
                   "detail":"connection closed by peer"}),
        );
        round_trip(
            &RuntimeEvent::Nodes {
                nodes: vec![NodeId(1), NodeId(4294967295)],
            },
            json!({"event":"nodes","nodes":[1,4294967295u32]}),
        );
        round_trip(
            &RuntimeEvent::TimeAdjusted {
                offset: -123,
                mesh_time: 5,
            },
            json!({"event":"time_adjusted","offset":-123,"meshTime":5}),
        );
        round_trip(
            &RuntimeEvent::Delay {
                node_id: NodeId(2),
                us: 250,
            },
            json!({"event":"delay","nodeId":2,"us":250}),
        );
        round_trip(
            &RuntimeEvent::Listening {
                addr: "127.0.0.1:5555".parse().unwrap(),
                port: 5555,
            },
            json!({"event":"listening","addr":"127.0.0.1:5555","port":5555}),
        );
        round_trip(
            &RuntimeEvent::Connected {
                link: LinkId(1),
                peer: "127.0.0.1:5555".into(),
                role: LinkRole::AccessPoint,
            },
            json!({"event":"connected","link":1,"peer":"127.0.0.1:5555","role":"access_point"}),
        );
        round_trip(
            &RuntimeEvent::Disconnected {
                link: LinkId(1),
                peer: "p".into(),
                node_id: None,
                reason: LinkEnd::Eof,
                detail: "d".into(),
            },
            json!({"event":"disconnected","link":1,"peer":"p","reason":"eof","detail":"d"}),
        );
    }

    #[test]
    fn display_is_one_readable_line() {
        let e = RuntimeEvent::Nodes {
            nodes: vec![NodeId(1001), NodeId(2002)],
        };
        assert_eq!(e.to_string(), "nodes changed: [1001, 2002]");
        let e = RuntimeEvent::DroppedConnection {
            node_id: NodeId(1001),
            link: LinkId(1),
            reason: LinkEnd::NodeSyncTimeout,
            detail: DisconnectReason::Node(CloseReason::NodeSyncTimeout).to_string(),
        };
        assert_eq!(
            e.to_string(),
            "link down 1001 (no node sync reply within the node timeout)"
        );
    }
}
