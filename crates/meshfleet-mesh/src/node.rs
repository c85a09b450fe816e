//! The node: links, node sync, routing, time sync, plugin dispatch.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;

use meshfleet_wire::{
    binary_frame, parse, FlatTree, FrameRef, Framer, Message, MsgText, NodeId, NodeTree, Package,
    Routing, SyncDigest, Text, TimeMsg, TimePacket, MAX_TREE_DEPTH,
};

use crate::config::{Config, NodeSyncPolicy};
use crate::event::{
    CloseReason, Delivery, DropReason, Event, LinkRole, Malformed, TimeRefusal, TreeRefusal,
};
use crate::frame::{SharedFrame, SharedTransmit};
use crate::plugin::{AddPluginError, Ctx, MeshChange, Plugin, PluginHandle, SendError};
use crate::rng::Rng;
use crate::rope::{same_parts, TreeText};
use crate::stats::Stats;
use crate::time::{Duration, Instant};
use crate::timesync::{adopt_by_size, clock_offset, trip_delay, TIME_SYNC_ACCURACY};
use crate::LinkId;

/// Bytes to send on a link. Drain with [`Node::poll_transmit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The link.
    pub link: LinkId,
    /// One frame, NUL included.
    pub frame: Vec<u8>,
    /// Which of the driver's queues for the link it joins ([`Priority`]).
    pub priority: Priority,
}

/// The class of a frame in the driver's send queue for its link. A driver sends the oldest
/// frame of the most urgent non-empty class first (never interrupting a frame already being
/// written), so a class never waits behind a later one. Variants are in sending order.
///
/// The library sends NODE_SYNC_REPLY and TIME_SYNC with high priority and everything else
/// (its NODE_SYNC_REQUEST included) in one FIFO. meshfleet adds a third class, local
/// (nothing on the wire changes): bulk transfers (OTA chunks) go last, behind every other
/// frame, so a campaign can never delay the mesh's own upkeep by more than the frame being
/// written.
///
/// Under [`NodeSyncPolicy::Meshfleet`] the node's own NODE_SYNC_REQUESTs are control frames
/// too, so every node sync it sends on a link (request, reply, digest) leaves in the order
/// it was made: the library's reply can overtake its own earlier request, and the peer
/// then ends up holding the older tree of the two while we believe it holds the newer (in
/// the library the next request repairs that; with one request in flight and digests
/// there may be no next request for a minute: `grid_100` converged at 72 s instead of
/// 12 s). With one request in flight they cannot pile up (below).
///
/// Under the library's policy, one more local rule: while the node sends bulk data (it
/// queued a bulk frame within the node timeout), its own NODE_SYNC_REQUESTs are control
/// frames too. Bulk data means a crowded medium, where every frame waits for the air; a
/// request in the normal class then waits behind every control frame of the node's other
/// links (their replies are whole trees) and its exchange overran the 10 s node timeout: at
/// 500 nodes on the geometric channel links closed from 400 s into a campaign on and 3 of
/// 499 nodes were updated in 1,180 s, against 499/499 in 858.5 s with requests as control
/// frames. Without bulk data requests stay normal frames, as the library queues them: as
/// control frames they are never dropped at a full queue, and in formation storms they
/// piled up (the 1,000-node random-tree scenario put 3.6x the bytes on the air).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// NODE_SYNC_REPLY and TIME_SYNC (and NODE_SYNC_REQUEST under meshfleet's policy, or
    /// while the node sends bulk data): the mesh's upkeep. A driver queues these even when
    /// the link's queue is full (evicting bulk, then normal frames if it must).
    Control,
    /// Application messages and everything routed through the node.
    Normal,
    /// Bulk data a plugin paces itself (OTA chunks): sent only when nothing else waits.
    Bulk,
}

/// Per-link timers, one slot each (quinn-style timer table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkTimer {
    /// Send our periodic NODE_SYNC_REQUEST.
    NodeSync = 0,
    /// The peer did not answer our NODE_SYNC_REQUEST: close.
    NodeTimeout = 1,
    /// Start a time sync round.
    TimeSync = 2,
}

const LINK_TIMERS: [LinkTimer; 3] = [
    LinkTimer::NodeTimeout,
    LinkTimer::NodeSync,
    LinkTimer::TimeSync,
];

pub(crate) struct Link {
    pub(crate) id: LinkId,
    pub(crate) role: LinkRole,
    framer: Framer,
    /// 0 until the first node sync.
    pub(crate) peer: NodeId,
    /// What the neighbour last told us: itself and everything behind it (minus us), flat
    /// (two allocations, not one per node: big meshes resend these trees constantly).
    pub(crate) tree: Option<FlatTree>,
    timers: [Option<Instant>; 3],
    /// The time sync task exists once the first node sync is done.
    time_sync_interval: Option<Duration>,
    /// `t0` of our TIME_REQUEST awaiting its reply: only the reply that echoes it is
    /// taken (not in the library, which takes any reply from anyone).
    time_request: Option<u32>,
    /// Bytes the driver says are queued for this link and not yet written.
    pub(crate) backlog: usize,
    /// Digest of the tree we last told this link (request or reply).
    sent_digest: Option<u64>,
    /// `tree` serialized once on receipt: node syncs to our other links embed it as is,
    /// shared (a node sync is handed out as pieces, [`SharedFrame`]), so a layout change
    /// costs a reference per link, not a copy, a clone or a re-serialization. A tree that
    /// arrived in pieces ([`Node::handle_shared_frame`]) is kept as those pieces, shared
    /// with the sender's text ([`TreeText`]), not copied.
    tree_json: Arc<TreeText>,
    /// `tree.digest()`, for [`Core::digest_for`].
    tree_digest: u64,
    /// Where the `subs` array sits in `tree_json`, if the tree has subs: a node sync
    /// whose raw `subs` text equals it carries the tree we hold (see `unchanged_node_sync`).
    subs_range: Option<(usize, usize)>,
    /// Round trips of our node syncs on this link (see [`NodeSyncTiming`]).
    pub(crate) sync_timing: NodeSyncTiming,
    /// A node sync fell due while our request awaited its reply and was held back
    /// ([`NodeSyncPolicy::Meshfleet`]): the reply decides whether it is still needed.
    sync_held: bool,
    /// The peer said it speaks meshfleet's digest sync ([`NodeSyncPolicy::Meshfleet`]).
    digest_peer: bool,
    /// Our last whole tree to this peer was a request: the library writes
    /// `hasTimeAuthority` in requests only, so only then does the peer know our clock is
    /// authoritative.
    told_authority: bool,
    /// Where each node of `tree` starts in `tree_json`, so that the next node sync, which
    /// usually differs in one small region, is read only there (`reread_node_sync`).
    offsets: Vec<u32>,
}

/// How this node's own node-sync exchanges on one link fare: the round trip of our
/// NODE_SYNC_REQUEST to the peer's reply. It is what the library's node timeout (10 s)
/// measures, and it includes waiting for the medium at both ends, so it is a signal of the
/// load around both neighbours that a real node has without any help from the radio.
/// Read it with [`crate::Ctx::node_sync_timing`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeSyncTiming {
    /// When the request now awaiting its reply was queued (`None`: none is pending).
    pub pending_since: Option<Instant>,
    /// The round trip of the last answered request.
    pub last_round_trip: Option<Duration>,
    /// Requests answered so far on this link (tells a new sample from the last one).
    pub answered: u32,
}

impl NodeSyncTiming {
    fn answered_at(&mut self, now: Instant) {
        if let Some(at) = self.pending_since.take() {
            self.last_round_trip = Some(now.saturating_since(at));
            self.answered = self.answered.wrapping_add(1);
        }
    }
}

impl Link {
    fn timer(&self, t: LinkTimer) -> Option<Instant> {
        self.timers[t as usize]
    }
    fn set(&mut self, t: LinkTimer, at: Option<Instant>) {
        self.timers[t as usize] = at;
    }
    fn contains(&self, id: NodeId) -> bool {
        self.tree.as_ref().is_some_and(|t| t.contains(id))
    }
}

/// The kinds of meshfleet's digest sync frame (type 95, `"sync"` key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DigestKind {
    /// "I speak digest sync": sent once on a link when its first node sync is accepted.
    Hello,
    /// A NODE_SYNC_REQUEST whose tree the peer already holds: the digest stands for it.
    Request,
    /// A NODE_SYNC_REPLY likewise.
    Reply,
    /// "The digest did not match what I hold from you: send the whole tree".
    Resend,
}

impl DigestKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Request => "request",
            Self::Reply => "reply",
            Self::Resend => "resend",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Hello, Self::Request, Self::Reply, Self::Resend]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Why the node asks to be woken ([`Node::poll_timeout_reason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wake {
    /// The link's periodic node sync is due.
    NodeSync(LinkId),
    /// The link's peer has not answered a node sync in time: the link closes.
    NodeTimeout(LinkId),
    /// A time sync round on the link is due.
    TimeSync(LinkId),
    /// A TIME_REPLY held back on the link (see [`Config::time_reply_hold`]) goes out.
    HeldTimeReply(LinkId),
    /// The named plugin's timer.
    Plugin(&'static str),
}

/// A TIME_REPLY held back for `time_reply_hold` (see [`Config::time_reply_hold`]).
struct HeldReply {
    at: Instant,
    link: LinkId,
    packet: TimePacket,
}

/// Everything but the plugins, so plugins can borrow it mutably through [`Ctx`].
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) links: Vec<Link>,
    time_offset: u32,
    /// Whether a time step has ever been applied. Until then our clock is local micros
    /// since boot, not mesh time, and the first step may be of any size; after it every
    /// step is bounded by [`Config::max_time_step`].
    clock_set: bool,
    /// When the last time step was applied: steps are at least `time_sync_retry` apart.
    last_time_step: Option<Instant>,
    transmits: VecDeque<SharedTransmit>,
    pub(crate) events: VecDeque<Event>,
    changes: VecDeque<MeshChange>,
    inbox: VecDeque<(LinkId, Routing, Package)>,
    binary_inbox: VecDeque<(LinkId, Vec<u8>)>,
    held_replies: Vec<HeldReply>,
    /// The node list (`nodes()`: every id in the synced links' trees but ours, sorted),
    /// kept up to date from what re-read trees change (a few ids) instead of sorting
    /// every tree on each layout change. `None` when it must be made from scratch.
    node_list: Option<Vec<NodeId>>,
    /// When a plugin last queued a bulk frame: node-sync requests are control frames
    /// within the node timeout of it (see [`Priority`]).
    pub(crate) last_bulk: Option<Instant>,
    pub(crate) rng: Rng,
    pub(crate) stats: Stats,
}

/// A painlessMesh node, sans-IO.
///
/// # Run loop
///
/// The driver owns sockets and a clock; the node owns protocol state. After **every**
/// input the driver drains all outputs:
///
/// ```text
/// loop {
///     // inputs, each with the current time:
///     node.handle_link_up(now, link, role);      // a TCP connection is established
///     node.handle_bytes(now, link, &bytes);      // bytes read from it
///     node.handle_link_down(now, link);          // it closed
///     node.handle_timeout(now);                  // now >= node.poll_timeout()
///     node.send_single(now, dest, text); ...     // application commands
///     // outputs, until each returns None:
///     while let Some(t) = node.poll_transmit() { /* queue t.frame on t.link */ }
///     while let Some(e) = node.poll_event()    { /* LinkClosed => close the socket */ }
///     let wake_at = node.poll_timeout();
/// }
/// ```
///
/// Invariants: the node never blocks, reads a clock, or allocates without bound on a
/// peer's behalf (frames are capped by [`Config::max_frame_len`], trees by depth). Bad
/// input from a peer drops that frame ([`Event::FrameDropped`]) or closes that link
/// ([`Event::LinkClosed`]); it never fails the node. Same inputs, same outputs: all
/// randomness comes from [`Config::seed`].
///
/// Time: every `now` a driver passes must come from one monotonic clock (never a wall
/// clock, which steps) and must never go backwards between calls; the node's timers, its
/// liveness and the mesh time it serves are all measured against it. Calling later than
/// [`Node::poll_timeout`] is allowed (the due timers all run); earlier is harmless.
pub struct Node {
    core: Core,
    plugins: Vec<Box<dyn Plugin>>,
    /// The package-type registry: each claimed type range and the index of its owner in
    /// `plugins`. Ranges never overlap (`add_plugin` refuses overlaps).
    type_owners: Vec<(core::ops::RangeInclusive<i64>, usize)>,
    /// Binary-frame tags and their owners.
    tag_owners: Vec<(u16, usize)>,
}

impl Node {
    /// A node with no links.
    pub fn new(config: Config) -> Self {
        let rng = Rng::new(config.seed);
        Self {
            core: Core {
                time_offset: config.initial_time_offset,
                clock_set: false,
                last_time_step: None,
                config,
                links: Vec::new(),
                transmits: VecDeque::new(),
                events: VecDeque::new(),
                changes: VecDeque::new(),
                inbox: VecDeque::new(),
                binary_inbox: VecDeque::new(),
                held_replies: Vec::new(),
                node_list: None,
                last_bulk: None,
                rng,
                stats: Stats::default(),
            },
            plugins: Vec::new(),
            type_owners: Vec::new(),
            tag_owners: Vec::new(),
        }
    }

    /// Registers a plugin for the package types and binary tags it claims
    /// ([`Plugin::claims`]) and returns a typed handle to it. Refuses (and drops) a plugin
    /// that claims a type or tag another plugin already owns.
    pub fn add_plugin<P: Plugin>(
        &mut self,
        plugin: Box<P>,
    ) -> Result<PluginHandle<P>, AddPluginError> {
        self.add_dyn_plugin(plugin).map(PluginHandle::new)
    }

    /// [`Node::add_plugin`] for a plugin whose type is not known statically. Returns its
    /// slot index.
    pub fn add_dyn_plugin(&mut self, plugin: Box<dyn Plugin>) -> Result<usize, AddPluginError> {
        let claims = plugin.claims();
        let name = plugin.name();
        for r in claims.type_ranges() {
            for (owned, owner) in &self.type_owners {
                let first = (*r.start()).max(*owned.start());
                if first <= (*r.end()).min(*owned.end()) {
                    return Err(AddPluginError::TypeClaimed {
                        plugin: name,
                        ty: first,
                        owner: self.plugins[*owner].name(),
                    });
                }
            }
        }
        // A plugin's own claims may repeat a type; only other owners conflict.
        for &tag in claims.tags() {
            if let Some((_, owner)) = self.tag_owners.iter().find(|(t, _)| *t == tag) {
                return Err(AddPluginError::TagClaimed {
                    plugin: name,
                    tag,
                    owner: self.plugins[*owner].name(),
                });
            }
        }
        let index = self.plugins.len();
        self.type_owners
            .extend(claims.type_ranges().iter().map(|r| (r.clone(), index)));
        self.tag_owners
            .extend(claims.tags().iter().map(|&t| (t, index)));
        self.plugins.push(plugin);
        Ok(index)
    }

    /// The plugin behind `handle`.
    pub fn plugin_at<P: Plugin>(&self, handle: PluginHandle<P>) -> Option<&P> {
        // `**p`: the plugin itself, not the `Box` (which is `Any` too).
        let p: &dyn Plugin = &**self.plugins.get(handle.index)?;
        p.any_plugin().downcast_ref::<P>()
    }

    /// The plugin behind `handle`, mutably.
    pub fn plugin_at_mut<P: Plugin>(&mut self, handle: PluginHandle<P>) -> Option<&mut P> {
        let p: &mut dyn Plugin = &mut **self.plugins.get_mut(handle.index)?;
        p.any_plugin_mut().downcast_mut::<P>()
    }

    /// [`Node::with_plugin`] for the plugin behind `handle`.
    pub fn with_plugin_at<P: Plugin, R>(
        &mut self,
        handle: PluginHandle<P>,
        now: Instant,
        f: impl FnOnce(&mut P, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        self.with_plugin_index(handle.index, now, f)
    }

    /// The first plugin of type `T` (a search by type; [`Node::plugin_at`] with the
    /// handle from [`Node::add_plugin`] goes straight to it).
    pub fn plugin<T: Plugin>(&self) -> Option<&T> {
        self.plugins
            .iter()
            .find_map(|p| (**p).any_plugin().downcast_ref::<T>())
    }

    /// The first plugin of type `T`, mutably.
    pub fn plugin_mut<T: Plugin>(&mut self) -> Option<&mut T> {
        self.plugins
            .iter_mut()
            .find_map(|p| (**p).any_plugin_mut().downcast_mut::<T>())
    }

    /// Runs `f` on plugin `T` with a context, so the application can make it act (for
    /// example start an OTA offer). Returns `None` if there is no such plugin.
    pub fn with_plugin<T: Plugin, R>(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut T, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let index = self
            .plugins
            .iter()
            .position(|p| (**p).any_plugin().is::<T>())?;
        self.with_plugin_index(index, now, f)
    }

    fn with_plugin_index<T: Plugin, R>(
        &mut self,
        index: usize,
        now: Instant,
        f: impl FnOnce(&mut T, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let plugin = self.plugins.get_mut(index)?;
        let name = plugin.name();
        let typed = (**plugin).any_plugin_mut().downcast_mut::<T>()?;
        let mut ctx = Ctx {
            now,
            core: &mut self.core,
            plugin: name,
        };
        let r = f(typed, &mut ctx);
        self.dispatch(now);
        Some(r)
    }

    /// Our id.
    pub fn id(&self) -> NodeId {
        self.core.config.node_id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// Mesh time at `now` (µs; local time + offset, wrapping like the library's uint32).
    pub fn mesh_time(&self, now: Instant) -> u32 {
        self.core.mesh_time(now)
    }

    /// The current time offset.
    pub fn time_offset(&self) -> u32 {
        self.core.time_offset
    }

    /// Every other node we can reach, sorted (`getNodeList`).
    pub fn nodes(&self) -> Vec<NodeId> {
        self.core.nodes()
    }

    /// Our view of the mesh, as `subConnectionJson` (us at the top).
    pub fn topology(&self) -> NodeTree {
        self.core.topology()
    }

    /// Whether we are the root or know one (`isRooted`).
    pub fn contains_root(&self) -> bool {
        self.core.topology().is_rooted()
    }

    /// Synced links: `(link, neighbour)`.
    pub fn neighbours(&self) -> Vec<(LinkId, NodeId)> {
        self.core
            .links
            .iter()
            .filter(|l| l.peer != NodeId::UNKNOWN)
            .map(|l| (l.id, l.peer))
            .collect()
    }

    /// Number of open links (synced or not).
    pub fn link_count(&self) -> usize {
        self.core.links.len()
    }

    /// The link a SINGLE to `dest` would leave on.
    pub fn route(&self, dest: NodeId) -> Option<LinkId> {
        self.core.route(dest)
    }

    /// A TCP connection is up. `role` says who connected.
    pub fn handle_link_up(&mut self, now: Instant, link: LinkId, role: LinkRole) {
        let c = &mut self.core;
        if c.links.iter().any(|l| l.id == link) {
            return;
        }
        let first_sync = match role {
            LinkRole::Station => now,
            LinkRole::AccessPoint => now + c.config.ap_first_sync_delay,
        };
        let mut l = Link {
            id: link,
            role,
            framer: Framer::new(c.config.max_frame_len),
            peer: NodeId::UNKNOWN,
            tree: None,
            timers: [None; 3],
            time_sync_interval: None,
            time_request: None,
            backlog: 0,
            sent_digest: None,
            tree_json: Arc::new(TreeText::default()),
            tree_digest: 0,
            subs_range: None,
            sync_timing: NodeSyncTiming::default(),
            sync_held: false,
            digest_peer: false,
            told_authority: false,
            offsets: Vec::new(),
        };
        l.set(LinkTimer::NodeSync, Some(first_sync));
        c.links.push(l);
        c.stats.links_opened += 1;
        if role == LinkRole::Station {
            // The station's first request goes out at once (PROTOCOL.md §4.4).
            self.handle_timeout(now);
        }
    }

    /// The driver reports how many bytes are queued for `link` and not yet written, so
    /// plugins that pace bulk traffic (OTA) can back off before the queue fills. Drivers
    /// call it after queueing transmits and as the queue drains; it is advisory.
    pub fn set_link_backlog(&mut self, link: LinkId, queued_bytes: usize) {
        if let Some(idx) = self.core.link_index(link) {
            self.core.links[idx].backlog = queued_bytes;
        }
    }

    /// How our node-sync exchanges on `link` fare ([`NodeSyncTiming`]); `None` for an
    /// unknown link. Plugins read the same through [`crate::Ctx::node_sync_timing`].
    pub fn node_sync_timing(&self, link: LinkId) -> Option<NodeSyncTiming> {
        self.core
            .link_index(link)
            .map(|i| self.core.links[i].sync_timing)
    }

    /// The TCP connection closed (or failed). Nothing more will be sent on it.
    pub fn handle_link_down(&mut self, now: Instant, link: LinkId) {
        self.core.close_link(now, link, CloseReason::PeerClosed);
        self.dispatch(now);
    }

    /// The application closes a link.
    pub fn close_link(&mut self, now: Instant, link: LinkId) {
        self.core.close_link(now, link, CloseReason::Requested);
        self.dispatch(now);
    }

    /// Bytes arrived on a link (any split: the node reassembles frames).
    pub fn handle_bytes(&mut self, now: Instant, link: LinkId, bytes: &[u8]) {
        let Some(idx) = self.core.link_index(link) else {
            return;
        };
        // Take the framer out so frames can be handled while it is borrowed.
        let mut framer = core::mem::replace(&mut self.core.links[idx].framer, Framer::new(0));
        // (is_binary, bytes); None = oversized.
        let mut frames: Vec<Option<(bool, Vec<u8>)>> = Vec::new();
        framer.push(bytes, |f| {
            frames.push(match f {
                Ok(FrameRef::Json(j)) => Some((false, j.to_vec())),
                Ok(FrameRef::Binary(b)) => Some((true, b.to_vec())),
                Err(_) => None,
            })
        });
        if let Some(idx) = self.core.link_index(link) {
            self.core.links[idx].framer = framer;
        }
        self.core.stats.bytes_in += bytes.len() as u64;
        for f in frames {
            if self.core.link_index(link).is_none() {
                break; // an earlier frame closed the link
            }
            match f {
                Some((false, frame)) => self.core.handle_frame(now, link, &frame),
                Some((true, payload)) => self.core.handle_binary(link, payload),
                None => self.core.drop_frame(link, DropReason::TooLong),
            }
        }
        self.dispatch(now);
    }

    /// Hands a whole frame (NUL excluded) to the node: for drivers that already framed it.
    pub fn handle_frame(&mut self, now: Instant, link: LinkId, frame: &[u8]) {
        if self.core.link_index(link).is_none() {
            return;
        }
        self.core.stats.bytes_in += frame.len() as u64 + 1;
        if frame.len() > self.core.config.max_frame_len {
            self.core.drop_frame(link, DropReason::TooLong);
        } else if !frame.is_empty() {
            self.core.handle_frame(now, link, frame);
        }
        self.dispatch(now);
    }

    /// Hands a whole frame, as [`Node::poll_transmit_shared`] made it (NUL included), to
    /// the node: for drivers that pass frames on without laying them out (the
    /// simulator). The node does what [`Node::handle_bytes`] does with a binary frame and
    /// [`Node::handle_frame`] with the bytes of a JSON one minus the NUL, except that a
    /// node sync in pieces whose trees it keeps is kept as those pieces, shared with the
    /// sender's text, instead of a copy: in a big mesh every node would otherwise hold
    /// its own copy of nearly the whole mesh's JSON. `scratch` is where the frame is laid
    /// out when it must be read; reuse one across calls.
    pub fn handle_shared_frame(
        &mut self,
        now: Instant,
        link: LinkId,
        frame: &SharedFrame,
        scratch: &mut Vec<u8>,
    ) {
        // Node syncs in pieces end with their NUL (`node_sync_frame`); anything else is
        // read flat, exactly as a socket driver's frames are.
        let in_pieces = frame
            .pieces()
            .is_some_and(|(_, _, tail)| tail.last() == Some(&0));
        if !in_pieces {
            let bytes: &[u8] = match frame.as_contiguous() {
                Some(b) => b,
                None => {
                    scratch.clear();
                    frame.write_to(scratch);
                    scratch
                }
            };
            if bytes.first() == Some(&meshfleet_wire::BINARY_FRAME_MARK) {
                self.handle_bytes(now, link, bytes);
            } else {
                let body = bytes.strip_suffix(&[0]).unwrap_or(bytes);
                self.handle_frame(now, link, body);
            }
            return;
        }
        if self.core.link_index(link).is_none() {
            return;
        }
        // What `handle_frame` counts and checks for the frame's bytes minus the NUL.
        let body_len = frame.len() - 1;
        self.core.stats.bytes_in += body_len as u64 + 1;
        if body_len > self.core.config.max_frame_len {
            self.core.drop_frame(link, DropReason::TooLong);
        } else if body_len > 0 {
            self.core.handle_shared_frame(now, link, frame, scratch);
        }
        self.dispatch(now);
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.run_timers(now);
        self.dispatch(now);
        for i in 0..self.plugins.len() {
            if self.plugins[i].poll_timeout().is_some_and(|t| t <= now) {
                let name = self.plugins[i].name();
                let mut ctx = Ctx {
                    now,
                    core: &mut self.core,
                    plugin: name,
                };
                self.plugins[i].handle_timeout(&mut ctx);
            }
        }
        self.dispatch(now);
    }

    /// The earliest time at which [`Node::handle_timeout`] must be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let core = self.core.poll_timeout();
        let plugins = self.plugins.iter().filter_map(|p| p.poll_timeout()).min();
        match (core, plugins) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// [`Node::poll_timeout`] together with why the node wants to wake then (for traces
    /// and for drivers that schedule wake-ups by kind, like str0m's `Reason`).
    #[must_use]
    pub fn poll_timeout_reason(&self) -> Option<(Instant, Wake)> {
        let mut best: Option<(Instant, Wake)> = None;
        let mut consider = |at: Instant, why: Wake| {
            if best.map_or(true, |(b, _)| at < b) {
                best = Some((at, why));
            }
        };
        for l in &self.core.links {
            for t in LINK_TIMERS {
                if let Some(at) = l.timer(t) {
                    let why = match t {
                        LinkTimer::NodeSync => Wake::NodeSync(l.id),
                        LinkTimer::NodeTimeout => Wake::NodeTimeout(l.id),
                        LinkTimer::TimeSync => Wake::TimeSync(l.id),
                    };
                    consider(at, why);
                }
            }
        }
        for h in &self.core.held_replies {
            consider(h.at, Wake::HeldTimeReply(h.link));
        }
        for p in &self.plugins {
            if let Some(at) = p.poll_timeout() {
                consider(at, Wake::Plugin(p.name()));
            }
        }
        best
    }

    /// The next frame to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.core.transmits.pop_front()?;
        Some(Transmit {
            link: t.link,
            frame: t.frame.into_vec(),
            priority: t.priority,
        })
    }

    /// The next frame to send, its bytes possibly shared with the node's state
    /// ([`SharedFrame`]): for drivers that hold many frames at once (the simulator). Same
    /// frames, in the same order, as [`Node::poll_transmit`]; use one or the other.
    #[must_use]
    pub fn poll_transmit_shared(&mut self) -> Option<SharedTransmit> {
        self.core.transmits.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.core.events.pop_front()
    }

    /// Sends `msg` to `dest` (SINGLE). Fails like the library's `sendSingle` (returns
    /// false) when no link leads there.
    pub fn send_single(&mut self, _now: Instant, dest: NodeId, msg: &str) -> Result<(), SendError> {
        let m = Message::Single(Text {
            dest,
            from: self.core.config.node_id,
            msg: MsgText::Text(msg.into()),
            extra: Vec::new(),
        });
        let r = self.core.send_message_routed(&m, Routing::Single, None);
        if r.is_ok() {
            self.core.stats.app_sent += 1;
        }
        r
    }

    /// Sends `msg` to every node (BROADCAST). Returns how many links it left on.
    pub fn send_broadcast(&mut self, _now: Instant, msg: &str) -> usize {
        let m = Message::Broadcast(Text {
            dest: NodeId(0),
            from: self.core.config.node_id,
            msg: MsgText::Text(msg.into()),
            extra: Vec::new(),
        });
        self.core.stats.app_sent += 1;
        self.core.flood(&m, None)
    }

    /// Sends a plugin package as its `routing` says (BROADCAST floods, SINGLE routes).
    pub fn send_package(&mut self, _now: Instant, pkg: &Package) -> Result<(), SendError> {
        self.core
            .send_message_routed(&Message::Package(pkg.clone()), pkg.routing(), None)
    }

    /// Starts a TIME_DELAY measurement to `dest` (`startDelayMeas`); the result arrives
    /// as [`Event::DelayMeasured`].
    pub fn start_delay_measurement(&mut self, now: Instant, dest: NodeId) -> Result<(), SendError> {
        let p = TimePacket {
            dest,
            from: self.core.config.node_id,
            msg: TimeMsg {
                kind: TimeMsg::REQUEST,
                t0: Some(self.core.mesh_time(now)),
                t1: None,
                t2: None,
            },
            extra: Vec::new(),
        };
        self.core
            .send_message_routed(&Message::TimeDelay(p), Routing::Single, None)
    }

    /// Delivers queued packages and layout changes to plugins.
    fn dispatch(&mut self, now: Instant) {
        // Bounded: plugin calls can send, but only inputs create inbox items or changes.
        while let Some(change) = self.core.changes.pop_front() {
            for p in &mut self.plugins {
                let name = p.name();
                let mut ctx = Ctx {
                    now,
                    core: &mut self.core,
                    plugin: name,
                };
                p.handle_change(&mut ctx, &change);
            }
        }
        while let Some((link, payload)) = self.core.binary_inbox.pop_front() {
            let tag = binary_tag(&payload);
            let owner = self.tag_owners.iter().find(|(t, _)| *t == tag);
            match owner.and_then(|&(_, i)| self.plugins.get_mut(i)) {
                Some(p) => {
                    let name = p.name();
                    let mut ctx = Ctx {
                        now,
                        core: &mut self.core,
                        plugin: name,
                    };
                    p.handle_binary(&mut ctx, link, &payload);
                }
                None => {
                    self.core.stats.unhandled_packages += 1;
                    self.core.events.push_back(Event::FrameDropped {
                        link,
                        reason: DropReason::Unhandled(i64::from(tag)),
                    });
                }
            }
        }
        while let Some((link, routing, pkg)) = self.core.inbox.pop_front() {
            let ty = pkg.ty();
            let owner = self.type_owners.iter().find(|(r, _)| r.contains(&ty));
            if let Some(p) = owner.and_then(|&(_, i)| self.plugins.get_mut(i)) {
                let name = p.name();
                let mut ctx = Ctx {
                    now,
                    core: &mut self.core,
                    plugin: name,
                };
                p.handle_package(&mut ctx, link, routing, &pkg);
            } else {
                self.core.stats.unhandled_packages += 1;
                // Unknown types are silently ignored by the library; we count them and tell.
                self.core.events.push_back(Event::FrameDropped {
                    link,
                    reason: DropReason::Unhandled(pkg.ty()),
                });
            }
        }
    }
}

/// A node sync's `subs` text, and the frame's shared trees if the text is exactly them.
type SubsText<'a> = (&'a [u8], Option<&'a [Arc<TreeText>]>);

/// How a new link tree's JSON is made: from the received `subs` text (canonical: exactly
/// what `write_json` writes), kept as the frame's shared trees when it is exactly those
/// (`[` + the trees + `]`) or else copied; or written.
enum TreeJson<'a> {
    Subs(&'a [u8], Option<&'a [Arc<TreeText>]>),
    Written(Vec<u8>, Option<(usize, usize)>),
}

impl TreeJson<'_> {
    /// The JSON's length for `tree`.
    fn len(&self, tree: &FlatTree) -> usize {
        match self {
            TreeJson::Subs(subs, _) => {
                let mut head = Vec::with_capacity(48);
                FlatTree::single(tree.node_id(), tree.root(), tree.has_time_authority())
                    .write_json(&mut head);
                // The head without its `}`, `,"subs":`, the subs, `}`.
                head.len() - 1 + br#","subs":"#.len() + subs.len() + 1
            }
            TreeJson::Written(json, _) => json.len(),
        }
    }
}

/// How a re-read tree differs from the link's previous one (`meshfleet_wire::Reread`).
struct Splice {
    offsets: Vec<u32>,
    replaced: core::ops::Range<usize>,
    inserted: core::ops::Range<usize>,
}

/// Writes a link tree's compact JSON (`{"nodeId":..[,"root":true][,"hasTimeAuthority":true],"subs":[..]}`,
/// the library's key order) into `out`, reusing its allocation, from `subs`, the received
/// `subs` text, known to be exactly what `write_json` would write
/// (`Frame::node_sync_tree`); returns the byte range of the `subs` array.
fn link_tree_json_into(out: &mut Vec<u8>, tree: &FlatTree, subs: &[u8]) -> (usize, usize) {
    out.clear();
    out.reserve(subs.len() + 64);
    let top = FlatTree::single(tree.node_id(), tree.root(), tree.has_time_authority());
    top.write_json(out);
    out.pop(); // its closing brace
    out.extend_from_slice(br#","subs":"#);
    let start = out.len();
    out.extend_from_slice(subs);
    let end = out.len();
    out.push(b'}');
    (start, end)
}

/// A link tree's JSON as `head`, the received trees `parts`, and `tail` (see
/// `link_tree_json_into` for the text; here the `subs` text is `[` + `parts` joined + `]`):
/// shared with the sender instead of copied. Returns the byte range of the `subs` array.
fn link_tree_json_shared(tree: &FlatTree, parts: &[Arc<TreeText>]) -> (TreeText, (usize, usize)) {
    let mut head = Vec::with_capacity(64);
    FlatTree::single(tree.node_id(), tree.root(), tree.has_time_authority()).write_json(&mut head);
    head.pop(); // its closing brace
    head.extend_from_slice(br#","subs":["#);
    let text = TreeText::joined(&head, parts.to_vec(), b"]}");
    let range = (head.len() - 1, text.len() - 1);
    (text, range)
}

/// The frame's shared trees, if `subs`, a slice of `flat` (the frame laid out, NUL
/// excluded), is exactly `[` + those trees joined + `]`: then the receiver may keep the
/// trees themselves as its text (same bytes).
fn shared_subs<'f>(
    shared: Option<&'f SharedFrame>,
    flat: &[u8],
    subs: &[u8],
) -> Option<&'f [Arc<TreeText>]> {
    let frame = shared?;
    let (head, parts, tail) = frame.pieces()?;
    let start = (subs.as_ptr() as usize).checked_sub(flat.as_ptr() as usize)?;
    let end = start + subs.len();
    let whole = head.last() == Some(&b'[')
        && tail.first() == Some(&b']')
        && !parts.is_empty()
        && end <= flat.len()
        && start + 1 == head.len()
        && end + tail.len() == frame.len() + 1;
    whole.then_some(parts)
}

/// The buffer behind `json` to write a new tree into: its own allocation when no frame
/// still shares it and it is flat, else a new one (the frames keep the old text, which is
/// what they send).
fn unshared(json: &mut Arc<TreeText>) -> &mut Vec<u8> {
    if !matches!(Arc::get_mut(json), Some(TreeText::Flat(_))) {
        *json = Arc::new(TreeText::Flat(Vec::new()));
    }
    match Arc::make_mut(json) {
        TreeText::Flat(buf) => buf,
        // Flat and unshared now (`make_mut` does not copy).
        TreeText::Joined(_) => unreachable!("made flat above"),
    }
}

/// The ids that `added` has and `removed` has not, and the other way round (as multisets).
///
/// A re-read region holds mostly the same ids before and after (the nodes between two
/// changes), so both lists are sorted and what they share cancels: only the ids that
/// really came or went are left to look up.
fn id_delta(removed: &[NodeId], added: &[NodeId]) -> (Vec<NodeId>, Vec<NodeId>) {
    let (mut gone, mut came) = (removed.to_vec(), added.to_vec());
    gone.sort_unstable();
    came.sort_unstable();
    let (mut i, mut j) = (0, 0);
    let (mut net_gone, mut net_came) = (Vec::new(), Vec::new());
    loop {
        match (gone.get(i), came.get(j)) {
            (Some(a), Some(b)) if a == b => (i, j) = (i + 1, j + 1),
            (Some(a), Some(b)) if a < b => {
                net_gone.push(*a);
                i += 1;
            }
            (Some(a), None) => {
                net_gone.push(*a);
                i += 1;
            }
            (_, Some(b)) => {
                net_came.push(*b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (net_gone, net_came)
}

/// The type of a node sync's tail as the library writes it, `,"type":5|6,"dest":D,"from":F}`
/// with plain numbers and nothing after it.
fn node_sync_tail(tail: &[u8]) -> Option<i64> {
    use meshfleet_wire::types::{NODE_SYNC_REPLY, NODE_SYNC_REQUEST};
    let (ty, rest) = match tail.strip_prefix(br#","type":"#)? {
        [b'5', rest @ ..] => (NODE_SYNC_REQUEST, rest),
        [b'6', rest @ ..] => (NODE_SYNC_REPLY, rest),
        _ => return None,
    };
    let rest = plain_u32(rest.strip_prefix(br#","dest":"#)?)?;
    let rest = plain_u32(rest.strip_prefix(br#","from":"#)?)?;
    (rest == b"}").then_some(ty)
}

/// `text` after a JSON number that is plain (1-10 digits, no leading zero) and a u32.
fn plain_u32(text: &[u8]) -> Option<&[u8]> {
    let n = text
        .iter()
        .take(11)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if n == 0 || n > 10 || (n > 1 && text[0] == b'0') {
        return None;
    }
    let v = text[..n]
        .iter()
        .fold(0u64, |v, b| v * 10 + u64::from(b - b'0'));
    u32::try_from(v).ok()?;
    Some(&text[n..])
}

fn with_nul(text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(text.len() + 1);
    v.extend_from_slice(text.as_bytes());
    v.push(0);
    v
}

/// The type tag of a binary frame: its first two bytes, little endian.
pub fn binary_tag(payload: &[u8]) -> u16 {
    match payload {
        [a, b, ..] => u16::from_le_bytes([*a, *b]),
        _ => 0,
    }
}

impl Core {
    pub(crate) fn mesh_time(&self, now: Instant) -> u32 {
        // The library's micros() is a wrapping uint32; so is mesh time.
        (now.as_micros() as u32).wrapping_add(self.time_offset)
    }

    fn link_index(&self, link: LinkId) -> Option<usize> {
        self.links.iter().position(|l| l.id == link)
    }

    pub(crate) fn topology(&self) -> NodeTree {
        NodeTree {
            node_id: self.config.node_id,
            root: self.config.root,
            has_time_authority: self.config.has_time_authority,
            subs: self
                .links
                .iter()
                .filter(|l| l.peer != NodeId::UNKNOWN)
                .filter_map(|l| l.tree.as_ref().map(FlatTree::to_tree))
                .collect(),
        }
    }

    /// Synced links whose tree we tell `peer` (`excludeRoute`: all but its own branch).
    fn subs_for(&self, peer: NodeId) -> impl Iterator<Item = &Link> {
        self.links
            .iter()
            .filter(move |l| l.peer != NodeId::UNKNOWN && l.peer != peer && l.tree.is_some())
    }

    /// A digest of what we tell `peer` (our id and flags, and each included subtree's).
    fn digest_for(&self, peer: NodeId) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        let c = &self.config;
        eat(u64::from(c.node_id.0)
            | u64::from(c.root) << 32
            | u64::from(c.has_time_authority) << 33);
        for l in self.subs_for(peer) {
            eat(l.tree_digest);
        }
        h
    }

    /// Nodes on our side of the link to `peer`, us included (the adoption rule's count).
    fn size_for(&self, peer: NodeId) -> usize {
        1 + self
            .subs_for(peer)
            .map(|l| l.tree.as_ref().map_or(0, FlatTree::size))
            .sum::<usize>()
    }

    /// A NODE_SYNC_REQUEST/REPLY frame for `peer`: our tree minus its branch, keys in the
    /// library's order (`nodeId[,root][,hasTimeAuthority][,subs],type,dest,from`), made of
    /// the per-link JSON kept at receipt (shared, not copied: [`SharedFrame`]).
    fn node_sync_frame(&self, ty: i64, peer: NodeId, with_authority: bool) -> SharedFrame {
        use core::fmt::Write as _;
        let c = &self.config;
        let trees: Vec<Arc<TreeText>> = self
            .subs_for(peer)
            .map(|l| Arc::clone(&l.tree_json))
            .collect();
        let mut head = alloc::string::String::with_capacity(64);
        let _ = write!(head, "{{\"nodeId\":{}", c.node_id.0);
        if c.root {
            head.push_str(",\"root\":true");
        }
        if with_authority && c.has_time_authority {
            head.push_str(",\"hasTimeAuthority\":true");
        }
        let mut tail = alloc::string::String::with_capacity(48);
        if !trees.is_empty() {
            head.push_str(",\"subs\":[");
            tail.push(']');
        }
        let _ = write!(
            tail,
            ",\"type\":{ty},\"dest\":{},\"from\":{}}}\0",
            peer.0, c.node_id.0
        );
        SharedFrame::joined(head.as_bytes(), trees, tail.as_bytes())
    }

    pub(crate) fn nodes(&self) -> Vec<NodeId> {
        if let Some(list) = &self.node_list {
            return list.clone();
        }
        let mut out = Vec::new();
        for l in &self.links {
            if let (Some(t), true) = (&l.tree, l.peer != NodeId::UNKNOWN) {
                out.extend_from_slice(t.ids());
            }
        }
        out.retain(|id| *id != NodeId::UNKNOWN && *id != self.config.node_id);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Brings the node list up to date after the link at `idx` got a re-read tree: `gone`
    /// and `came` (both sorted, as [`id_delta`] makes them) are the ids its re-read region
    /// lost and gained. An id that came is in the list (unless it is us or 0); one that
    /// went stays if a tree still holds it.
    fn update_node_list(&mut self, gone: &[NodeId], came: &[NodeId]) {
        let Some(mut list) = self.node_list.take() else {
            return;
        };
        let me = self.config.node_id;
        let removed = self.gone_for_good(gone);
        let came = came
            .iter()
            .copied()
            .filter(|&id| id != NodeId::UNKNOWN && id != me);
        // A few changes are inserted and removed in place; many (a big re-read region
        // during formation) in one merge pass instead of a memmove of the list each.
        if removed.len() + came.clone().count() <= 8 {
            for id in came {
                if let Err(i) = list.binary_search(&id) {
                    list.insert(i, id);
                }
            }
            for id in removed {
                if let Ok(i) = list.binary_search(&id) {
                    list.remove(i);
                }
            }
        } else {
            let mut merged = Vec::with_capacity(list.len() + came.clone().count());
            let mut came = came.peekable();
            let mut removed = removed.iter().peekable();
            // `came` may repeat an id (a tree can hold one twice for a moment).
            let push = |merged: &mut Vec<NodeId>, id: NodeId| {
                if merged.last() != Some(&id) {
                    merged.push(id);
                }
            };
            for &id in &list {
                while let Some(c) = came.next_if(|c| *c < id) {
                    push(&mut merged, c);
                }
                while came.next_if_eq(&id).is_some() {}
                while removed.next_if(|r| **r < id).is_some() {}
                if removed.next_if(|r| **r == id).is_none() {
                    push(&mut merged, id);
                }
            }
            for c in came {
                push(&mut merged, c);
            }
            list = merged;
        }
        self.node_list = Some(list);
    }

    /// The ids of `gone` (sorted) that no synced link's tree holds any more, once each. A handful is
    /// looked up tree by tree; more in one pass over the trees with a 4,096-bit filter in
    /// front of the lookup (an id per tree per id was the largest single cost of a
    /// 3,000-node formation).
    fn gone_for_good(&self, gone: &[NodeId]) -> Vec<NodeId> {
        let synced = || {
            self.links
                .iter()
                .filter(|l| l.peer != NodeId::UNKNOWN)
                .filter_map(|l| l.tree.as_ref())
        };
        // `gone` may repeat an id (as `came` may): look each up once.
        let mut gone = gone.to_vec();
        gone.dedup();
        if gone.len() <= 4 {
            return gone
                .into_iter()
                .filter(|&id| !synced().any(|t| t.contains(id)))
                .collect();
        }
        let bit = |id: NodeId| (id.0.wrapping_mul(0x9E37_79B1) >> 20) as usize;
        let mut filter = [0u64; 64];
        for &id in &gone {
            let b = bit(id);
            filter[b >> 6] |= 1 << (b & 63);
        }
        let mut held = alloc::vec![false; gone.len()];
        for t in synced() {
            for &id in t.ids() {
                let b = bit(id);
                if filter[b >> 6] >> (b & 63) & 1 != 0 {
                    if let Ok(i) = gone.binary_search(&id) {
                        held[i] = true;
                    }
                }
            }
        }
        gone.iter()
            .zip(held)
            .filter(|(_, h)| !h)
            .map(|(id, _)| *id)
            .collect()
    }

    /// First synced link (in link order) whose tree contains `dest` (`findRoute`).
    pub(crate) fn route(&self, dest: NodeId) -> Option<LinkId> {
        self.links
            .iter()
            .find(|l| l.peer != NodeId::UNKNOWN && l.contains(dest))
            .map(|l| l.id)
    }

    pub(crate) fn push_transmit(&mut self, link: LinkId, frame: Vec<u8>, priority: Priority) {
        self.push_shared(link, frame.into(), priority);
    }

    fn push_shared(&mut self, link: LinkId, frame: SharedFrame, priority: Priority) {
        self.stats.frames_out += 1;
        self.stats.bytes_out += frame.len() as u64;
        self.transmits.push_back(SharedTransmit {
            link,
            frame,
            priority,
        });
    }

    fn send_msg(&mut self, link: LinkId, msg: &Message, priority: Priority) {
        self.push_transmit(link, msg.encode_frame(), priority);
    }

    /// Sends on every synced link except `except`; returns the count.
    fn flood(&mut self, msg: &Message, except: Option<LinkId>) -> usize {
        self.flood_frame(&msg.encode_frame(), except)
    }

    fn flood_frame(&mut self, frame: &[u8], except: Option<LinkId>) -> usize {
        let targets: Vec<LinkId> = self
            .links
            .iter()
            .filter(|l| l.peer != NodeId::UNKNOWN && Some(l.id) != except)
            .map(|l| l.id)
            .collect();
        for &t in &targets {
            self.push_transmit(t, frame.to_vec(), Priority::Normal);
        }
        targets.len()
    }

    pub(crate) fn send_message_routed(
        &mut self,
        msg: &Message,
        routing: Routing,
        except: Option<LinkId>,
    ) -> Result<(), SendError> {
        match routing {
            Routing::Broadcast => {
                self.flood(msg, except);
                Ok(())
            }
            _ => {
                let dest = msg.dest();
                let link = self.route(dest).ok_or(SendError::NoRoute(dest))?;
                self.send_msg(link, msg, Priority::Normal);
                Ok(())
            }
        }
    }

    fn handle_binary(&mut self, link: LinkId, payload: Vec<u8>) {
        self.stats.frames_in += 1;
        if payload.len() < 2 {
            self.drop_frame(link, DropReason::Malformed(Malformed::BinaryWithoutTag));
            return;
        }
        self.binary_inbox.push_back((link, payload));
    }

    /// Sends a binary frame (meshfleet peers only; see `meshfleet_wire::binary_frame`).
    pub(crate) fn send_binary(&mut self, link: LinkId, payload: &[u8], priority: Priority) {
        self.push_transmit(link, binary_frame(payload), priority);
    }

    fn drop_frame(&mut self, link: LinkId, reason: DropReason) {
        self.stats.count_drop(&reason);
        self.events.push_back(Event::FrameDropped { link, reason });
    }

    fn handle_frame(&mut self, now: Instant, link: LinkId, frame: &[u8]) {
        self.handle_frame_from(now, link, frame, None);
    }

    /// A frame in pieces ([`Node::handle_shared_frame`]; NUL included): an unchanged
    /// node sync made of the very trees we keep is recognised by their pointers, without
    /// laying the frame out; anything else is read flat from `scratch`, keeping the
    /// frame's trees if they become our text.
    fn handle_shared_frame(
        &mut self,
        now: Instant,
        link: LinkId,
        frame: &SharedFrame,
        scratch: &mut Vec<u8>,
    ) {
        if let Some((idx, ty)) = self.unchanged_node_sync_pieces(link, frame) {
            self.stats.frames_in += 1;
            self.unchanged_sync(now, idx, ty);
            return;
        }
        scratch.clear();
        frame.write_to(scratch);
        let body = scratch.strip_suffix(&[0]).unwrap_or(scratch);
        self.handle_frame_from(now, link, body, Some(frame));
    }

    /// `frame` (NUL excluded); `shared`: the same frame in pieces, if it came that way.
    fn handle_frame_from(
        &mut self,
        now: Instant,
        link: LinkId,
        frame: &[u8],
        shared: Option<&SharedFrame>,
    ) {
        use meshfleet_wire::types::{NODE_SYNC_REPLY, NODE_SYNC_REQUEST};
        self.stats.frames_in += 1;
        if let Some((idx, ty)) = self.unchanged_node_sync_bytes(link, frame) {
            if let Some(shared) = shared {
                self.adopt_pieces(idx, shared, frame.len());
            }
            self.unchanged_sync(now, idx, ty);
            return;
        }
        if let Some((ty, reread, subs)) = self.reread_node_sync(link, frame) {
            let subs = frame.get(subs.0..subs.1);
            let subs = subs.map(|s| (s, shared_subs(shared, frame, s)));
            let request = ty == NODE_SYNC_REQUEST;
            let meshfleet_wire::Reread {
                tree,
                offsets,
                replaced,
                inserted,
            } = reread;
            let splice = Splice {
                offsets,
                replaced,
                inserted,
            };
            self.handle_node_sync(now, link, tree, subs, Some(splice), request);
            self.after_node_sync(now, link, ty);
            return;
        }
        let parsed = match parse(frame) {
            Ok(p) => p,
            Err(e) => {
                self.drop_frame(link, DropReason::Decode(e));
                return;
            }
        };
        let me = self.config.node_id;
        let routing = parsed.routing();
        // router.hpp routePackage: SINGLE not for us is forwarded without local processing.
        // We forward the received text verbatim (the library re-serializes it; both keep
        // every key, ours skips a decode and an encode on every relay hop).
        if routing == Routing::Single && parsed.dest() != me {
            match self.route(parsed.dest()) {
                Some(out) => {
                    self.stats.forwarded += 1;
                    let bytes = with_nul(parsed.text());
                    self.push_transmit(out, bytes, Priority::Normal);
                }
                None => self.drop_frame(link, DropReason::NoRoute(parsed.dest())),
            }
            return;
        }
        if parsed.ty() == meshfleet_wire::types::MESHFLEET_SYNC
            && self.config.node_sync == NodeSyncPolicy::Meshfleet
        {
            self.handle_digest_sync(now, link, &parsed);
            return;
        }
        if self.unchanged_node_sync(now, link, &parsed) {
            return;
        }
        let ty = parsed.ty();
        if ty == NODE_SYNC_REQUEST || ty == NODE_SYNC_REPLY {
            // Node syncs are read straight into a flat tree: what `message()` would decode,
            // minus a `NodeTree` allocation per node and the keys we do not use.
            let (tree, canonical) = match parsed.node_sync_tree() {
                Ok(t) => t,
                Err(e) => {
                    self.drop_frame(link, DropReason::Decode(e));
                    return;
                }
            };
            if routing == Routing::Broadcast {
                let bytes = with_nul(parsed.text());
                self.stats.forwarded += self.flood_frame(&bytes, Some(link)) as u64;
            }
            let subs_text = if canonical {
                parsed.raw_field("subs").map(str::as_bytes)
            } else {
                None
            };
            let subs_text = subs_text.map(|s| (s, shared_subs(shared, frame, s)));
            let request = ty == NODE_SYNC_REQUEST;
            self.handle_node_sync(now, link, tree, subs_text, None, request);
            self.after_node_sync(now, link, ty);
            return;
        }
        let msg = match parsed.message() {
            Ok(m) => m,
            Err(e) => {
                self.drop_frame(link, DropReason::Decode(e));
                return;
            }
        };
        if routing == Routing::Broadcast {
            let bytes = with_nul(parsed.text());
            self.stats.forwarded += self.flood_frame(&bytes, Some(link)) as u64;
        }
        match msg {
            // Handled above, from the flat tree.
            Message::NodeSyncRequest(_) | Message::NodeSyncReply(_) => {}
            Message::TimeSync(t) => self.handle_time_sync(now, link, t),
            Message::TimeDelay(t) => self.handle_time_delay(now, t),
            Message::Single(t) => {
                self.stats.app_received += 1;
                self.events.push_back(Event::Received {
                    from: t.from,
                    msg: t.msg.as_text().into_owned(),
                    delivery: Delivery::Single,
                });
            }
            Message::Broadcast(t) => {
                self.stats.app_received += 1;
                self.events.push_back(Event::Received {
                    from: t.from,
                    msg: t.msg.as_text().into_owned(),
                    delivery: Delivery::Broadcast,
                });
            }
            Message::Package(p) => self.inbox.push_back((link, routing, p)),
        }
    }

    /// After a node sync of type `ty` on `link` was handled: answer a request, or stop
    /// waiting for the reply.
    fn after_node_sync(&mut self, now: Instant, link: LinkId, ty: i64) {
        use meshfleet_wire::types::NODE_SYNC_REQUEST;
        let Some(idx) = self.link_index(link) else {
            return;
        };
        if ty == NODE_SYNC_REQUEST {
            self.peer_is_syncing(now, idx);
            self.send_reply(idx);
        } else if self.links[idx].peer != NodeId::UNKNOWN {
            // A link whose first tree was refused is not synced: its timeout stays, so
            // a peer that only ever sends refused trees does not keep the link (and
            // its slot) for ever.
            self.reply_arrived(now, idx);
        }
    }

    /// Answers a node-sync request on the link at `idx`: a digest reply when the peer
    /// speaks digest sync and holds our current tree, else the whole tree.
    fn send_reply(&mut self, idx: usize) {
        let (link, peer) = (self.links[idx].id, self.links[idx].peer);
        if self.digest_will_do(idx) {
            self.stats.digest_syncs_sent += 1;
            let frame = self.digest_frame(DigestKind::Reply, peer);
            self.push_transmit(link, frame, Priority::Control);
        } else {
            let ty = meshfleet_wire::types::NODE_SYNC_REPLY;
            let frame = self.node_sync_frame(ty, peer, false);
            self.links[idx].sent_digest = Some(self.digest_for(peer));
            self.links[idx].told_authority = false;
            self.push_shared(link, frame, Priority::Control);
        }
    }

    /// Whether a node sync to the link at `idx` can be a digest: the peer speaks digest
    /// sync and the last whole tree we sent it is still our tree (a peer that holds
    /// something else finds out from the digest and asks for the tree).
    fn digest_will_do(&self, idx: usize) -> bool {
        let l = &self.links[idx];
        self.config.node_sync == NodeSyncPolicy::Meshfleet
            && l.digest_peer
            && l.sent_digest == Some(self.digest_for(l.peer))
    }

    /// `{"type":95,"routing":0,"dest":..,"from":..,"sync":kind[,"digest":"hex"]}`: a
    /// NEIGHBOUR frame of a type the library ignores. Requests and replies carry the
    /// [`SyncDigest`] of the tree we would send `peer`.
    fn digest_frame(&self, kind: DigestKind, peer: NodeId) -> Vec<u8> {
        use core::fmt::Write as _;
        let mut s = alloc::string::String::with_capacity(112);
        let _ = write!(
            s,
            "{{\"type\":{},\"routing\":0,\"dest\":{},\"from\":{},\"sync\":\"{}\"",
            meshfleet_wire::types::MESHFLEET_SYNC,
            peer.0,
            self.config.node_id.0,
            kind.as_str()
        );
        if matches!(kind, DigestKind::Request | DigestKind::Reply) {
            let mut d = SyncDigest::new(self.config.node_id, self.config.root);
            for l in self.subs_for(peer) {
                if let Some(t) = &l.tree {
                    d.add_sub(t);
                }
            }
            let _ = write!(s, ",\"digest\":\"{:016x}\"", d.finish());
        }
        s.push('}');
        with_nul(&s)
    }

    /// A digest sync from a meshfleet neighbour ([`NodeSyncPolicy::Meshfleet`]).
    fn handle_digest_sync(
        &mut self,
        now: Instant,
        link: LinkId,
        parsed: &meshfleet_wire::Frame<'_>,
    ) {
        use meshfleet_wire::types::{NODE_SYNC_REPLY, NODE_SYNC_REQUEST};
        let Some(idx) = self.link_index(link) else {
            return;
        };
        let kind = parsed
            .raw_field("sync")
            .and_then(|k| k.strip_prefix('"')?.strip_suffix('"'))
            .and_then(DigestKind::parse);
        let synced = self.links[idx].peer != NodeId::UNKNOWN;
        match kind {
            Some(DigestKind::Hello) => self.links[idx].digest_peer = true,
            Some(DigestKind::Resend) if synced => {
                // The peer holds something else than what we last sent: the whole tree next.
                let l = &mut self.links[idx];
                l.sent_digest = None;
                l.set(LinkTimer::NodeSync, Some(now));
            }
            Some(k @ (DigestKind::Request | DigestKind::Reply)) if synced => {
                let digest = parsed
                    .raw_field("digest")
                    .and_then(|d| d.strip_prefix('"')?.strip_suffix('"'))
                    .and_then(|h| u64::from_str_radix(h, 16).ok());
                let held = self.links[idx].tree.as_ref().map(FlatTree::sync_digest);
                let request = k == DigestKind::Request;
                if digest.is_some() && digest == held {
                    let ty = if request {
                        NODE_SYNC_REQUEST
                    } else {
                        NODE_SYNC_REPLY
                    };
                    self.unchanged_sync(now, idx, ty);
                    return;
                }
                self.stats.digest_mismatches += 1;
                if request {
                    self.peer_is_syncing(now, idx);
                    self.send_reply(idx);
                } else {
                    self.reply_arrived(now, idx);
                }
                let peer = self.links[idx].peer;
                let resend = self.digest_frame(DigestKind::Resend, peer);
                self.push_transmit(link, resend, Priority::Control);
            }
            _ => self.drop_frame(link, DropReason::Malformed(Malformed::DigestSync)),
        }
    }

    /// The synced peer of the link at `idx` sent us a node-sync request: under
    /// [`NodeSyncPolicy::Meshfleet`] the timeout of our own unanswered request restarts
    /// (the peer is alive, and its reply is queued behind what it is writing).
    fn peer_is_syncing(&mut self, now: Instant, idx: usize) {
        let timeout = self.config.node_timeout;
        let l = &mut self.links[idx];
        if self.config.node_sync == NodeSyncPolicy::Meshfleet
            && l.peer != NodeId::UNKNOWN
            && l.timer(LinkTimer::NodeTimeout).is_some()
        {
            l.set(LinkTimer::NodeTimeout, Some(now + timeout));
        }
    }

    /// Our request on the link at `idx` is answered: stop waiting, and send the node sync
    /// held back meanwhile if the peer still lacks our current tree (its own requests,
    /// which we answered with the current tree, may have told it since).
    fn reply_arrived(&mut self, now: Instant, idx: usize) {
        let peer = self.links[idx].peer;
        let stale = self.links[idx].sent_digest != Some(self.digest_for(peer));
        let l = &mut self.links[idx];
        l.set(LinkTimer::NodeTimeout, None);
        l.sync_timing.answered_at(now);
        if core::mem::take(&mut l.sync_held) {
            let at = if stale {
                now
            } else {
                now + self.config.node_sync_interval
            };
            l.set(LinkTimer::NodeSync, Some(at));
        }
    }

    /// A node sync from a synced link, written the library's way, whose tree differs from
    /// the one we hold from that link: read only where its text differs from our JSON of
    /// the held tree (`meshfleet_wire::reread_changed`), which in a big mesh is a few
    /// nodes of thousands. Returns the type, the tree (what the full reader gives for the
    /// frame) with its node offsets, and where its `subs` text is in `frame`; `None` sends
    /// the frame down the full path.
    fn reread_node_sync(
        &self,
        link: LinkId,
        frame: &[u8],
    ) -> Option<(i64, meshfleet_wire::Reread, (usize, usize))> {
        let idx = self.link_index(link)?;
        let l = &self.links[idx];
        let tree = l.tree.as_ref()?;
        let (subs_start, _) = l.subs_range?;
        // The tail `,"type":5|6,"dest":D,"from":F}` is at most 47 bytes.
        let from = frame.len().saturating_sub(48);
        let body_len = from
            + frame
                .get(from..)?
                .windows(8)
                .rposition(|w| w == br#","type":"#)?;
        let ty = node_sync_tail(frame.get(body_len..)?)?;
        // Laid out for the reread only (transient) when the text is kept in pieces.
        let old = l.tree_json.flat();
        let old = old.get(..old.len().checked_sub(1)?)?;
        let new = frame.get(..body_len)?;
        let reread = meshfleet_wire::reread_changed(tree, &l.offsets, old, new, MAX_TREE_DEPTH)?;
        Some((ty, reread, (subs_start, body_len)))
    }

    /// The common case of node sync: a synced link re-sends exactly the tree we hold.
    /// Both the library and we serialize trees compactly in one key order, so the raw
    /// `subs` text of the frame equals our cached serialization: one memcmp instead of
    /// decoding, comparing and dropping a tree. Does what `handle_node_sync` does for an
    /// unchanged tree and returns true; anything else takes the full path.
    fn unchanged_node_sync(
        &mut self,
        now: Instant,
        link: LinkId,
        parsed: &meshfleet_wire::Frame<'_>,
    ) -> bool {
        use meshfleet_wire::types::{NODE_SYNC_REPLY, NODE_SYNC_REQUEST};
        let ty = parsed.ty();
        if ty != NODE_SYNC_REQUEST && ty != NODE_SYNC_REPLY {
            return false;
        }
        let Some(idx) = self.link_index(link) else {
            return false;
        };
        let l = &self.links[idx];
        let Some(tree) = &l.tree else { return false };
        let flag = |k: &str| parsed.raw_field(k) == Some("true");
        let same_top = parsed
            .raw_field("nodeId")
            .and_then(|v| v.parse::<u32>().ok())
            == Some(l.peer.0)
            && flag("root") == tree.root()
            && flag("hasTimeAuthority") == tree.has_time_authority();
        let same_subs = match (parsed.raw_field("subs"), l.subs_range) {
            (Some(raw), Some((a, b))) => {
                raw.len() == b - a && l.tree_json.flat().get(a..b) == Some(raw.as_bytes())
            }
            (None, None) => true,
            _ => false,
        };
        if !(same_top && same_subs) {
            return false;
        }
        self.unchanged_sync(now, idx, ty);
        true
    }

    /// A node sync that is, byte for byte, the tree we hold from this link as we cached
    /// it (which is how the library writes it) followed by the library's
    /// `,"type":5|6,"dest":D,"from":F}`: recognised before any parsing, so the steady
    /// state's periodic syncs cost a memcmp. Returns the link's index and the type. Such
    /// a frame is valid JSON and `unchanged_node_sync` would accept it; anything else
    /// takes the general path.
    fn unchanged_node_sync_bytes(&self, link: LinkId, frame: &[u8]) -> Option<(usize, i64)> {
        let idx = self.link_index(link)?;
        let l = &self.links[idx];
        l.tree.as_ref()?;
        // Our JSON of the tree without its closing brace (compared piece by piece when it
        // is kept in pieces: no flat copy, and it stops at the first difference).
        let head = l.tree_json.len().checked_sub(1)?;
        if l.tree_json.common_prefix(frame) < head {
            return None;
        }
        let ty = node_sync_tail(frame.get(head..)?)?;
        Some((idx, ty))
    }

    /// `unchanged_node_sync_bytes` for a frame in pieces, from the pieces: our id and
    /// flags, then the very trees we keep (pointer-equal, so equal text), then the
    /// library's tail. Anything else (`None`) is laid out and read flat, which gives the
    /// same answer for the same bytes.
    fn unchanged_node_sync_pieces(
        &self,
        link: LinkId,
        frame: &SharedFrame,
    ) -> Option<(usize, i64)> {
        let (head, parts, tail) = frame.pieces()?;
        let idx = self.link_index(link)?;
        let l = &self.links[idx];
        l.tree.as_ref()?;
        let (kept_head, kept_parts, kept_tail) = l.tree_json.pieces()?;
        if head != kept_head || !same_parts(parts, kept_parts) {
            return None;
        }
        // Our tail is `]}`; the frame's is `]` + the library's tail + NUL.
        let rest = tail.strip_prefix(kept_tail.strip_suffix(b"}")?)?;
        let ty = node_sync_tail(rest.strip_suffix(&[0])?)?;
        Some((idx, ty))
    }

    /// After `unchanged_node_sync_bytes` accepted `frame` (`body_len` bytes without its
    /// NUL) on the link at `idx`: when the frame's trees are other pieces than those we
    /// keep (the same text, as the bytes matched), keep the frame's instead. Ours may be
    /// old versions that the sender has since replaced: holding on to them would keep them
    /// (and whatever they hold) alive, and their pointers would never match the sender's
    /// again, so every later unchanged sync would be laid out to be recognised.
    fn adopt_pieces(&mut self, idx: usize, frame: &SharedFrame, body_len: usize) {
        let Some((head, parts, tail)) = frame.pieces() else {
            return;
        };
        let l = &mut self.links[idx];
        let Some((start, _)) = l.subs_range else {
            return;
        };
        if let Some((_, kept, _)) = l.tree_json.pieces() {
            if same_parts(kept, parts) {
                return;
            }
        }
        // The frame is our text without its `}` (so it starts with our head, `[` included,
        // `start + 1` bytes), then the library's tail; when the frame's head and tail are
        // exactly those, its parts are exactly our `subs` array's contents.
        let ours = l.tree_json.len() - 1;
        let exact = head.len() == start + 1
            && head.last() == Some(&b'[')
            && tail.first() == Some(&b']')
            && !parts.is_empty()
            && tail.len() + ours == body_len + 2;
        if !exact {
            return;
        }
        let text = TreeText::joined(head, parts.to_vec(), b"]}");
        debug_assert_eq!(text.flat(), l.tree_json.flat());
        l.tree_json = Arc::new(text);
    }

    /// What an unchanged node sync of type `ty` on the link at `idx` does.
    fn unchanged_sync(&mut self, now: Instant, idx: usize, ty: i64) {
        use meshfleet_wire::types::NODE_SYNC_REQUEST;
        self.postpone_after_unchanged(now, idx, ty == NODE_SYNC_REQUEST);
        if ty == NODE_SYNC_REQUEST {
            self.peer_is_syncing(now, idx);
            self.send_reply(idx);
        } else {
            self.reply_arrived(now, idx);
        }
    }

    /// The one rule for a node sync whose tree is unchanged (both the byte-level fast path
    /// and the parsing path come here): postpone this link's own periodic sync by a full
    /// interval when the peer already has our current tree, or when this is a request
    /// (the caller answers it with the current tree at once). Otherwise a re-sync is due
    /// (another link changed our layout since we last told this peer, and
    /// `layout_changed` set it to now): postponing it would keep the peer on a stale tree
    /// for a whole interval. In a line whose links all came up at once, that held the far
    /// end's node list back by 10 s per hop.
    fn postpone_after_unchanged(&mut self, now: Instant, idx: usize, request: bool) {
        let peer = self.links[idx].peer;
        let told_current = self.links[idx].sent_digest == Some(self.digest_for(peer));
        if told_current || request {
            let at = now + self.config.node_sync_interval;
            self.links[idx].set(LinkTimer::NodeSync, Some(at));
        }
    }

    /// router.hpp `handleNodeSync`.
    /// `subs_text`: the frame's `subs` text if it is exactly what we would write for the
    /// tree (kept as our JSON of the tree instead of writing it again), with the frame's
    /// shared trees if that text is exactly them (kept instead of a copy); `splice`: how the
    /// tree differs from the link's previous one, when it was read that way.
    fn handle_node_sync(
        &mut self,
        now: Instant,
        link: LinkId,
        tree: FlatTree,
        subs_text: Option<SubsText<'_>>,
        splice: Option<Splice>,
        request: bool,
    ) {
        let Some(idx) = self.link_index(link) else {
            return;
        };
        let me = self.config.node_id;
        let tree_id = tree.node_id();
        let peer = self.links[idx].peer;
        // validSubs: a known link must keep its id and must not appear below itself.
        if peer != NodeId::UNKNOWN {
            if tree_id != peer {
                self.close_link(
                    now,
                    link,
                    CloseReason::ChangedNodeId {
                        was: peer,
                        now: tree_id,
                    },
                );
                return;
            }
            if tree.subs_contain(peer) {
                self.close_link(now, link, CloseReason::SenderInOwnSubtree(peer));
                return;
            }
        }
        // Stricter than the library, which accepts a neighbour with our id: two nodes with
        // one id break routing for both, so refuse at once.
        if tree_id == me {
            self.close_link(now, link, CloseReason::ClaimsOurId);
            return;
        }
        if tree_id == NodeId::UNKNOWN {
            self.drop_frame(link, DropReason::Malformed(Malformed::NodeSyncWithoutId));
            return;
        }
        let l = &self.links[idx];
        // A tree we hold already passed the checks below; only a new one is serialized
        // (received canonical text is kept: as the frame's shared trees when it is exactly
        // them, else copied into the link's buffer).
        let fresh = if l.tree.as_ref() != Some(&tree) {
            let json = match subs_text {
                Some((subs, parts)) if tree.size() > 1 => TreeJson::Subs(subs, parts),
                _ => {
                    let mut json = Vec::new();
                    let range = tree.write_json(&mut json);
                    TreeJson::Written(json, range)
                }
            };
            if let Some(refusal) = self.refusal(idx, &tree, json.len(&tree)) {
                self.drop_frame(link, DropReason::TreeRefused(refusal));
                return;
            }
            Some(json)
        } else {
            None
        };
        if peer == NodeId::UNKNOWN {
            // First sync on this link: refuse a node we already reach another way.
            if self.route(tree_id).is_some() {
                self.close_link(now, link, CloseReason::DuplicateNode(tree_id));
                return;
            }
            let l = &mut self.links[idx];
            l.peer = tree_id;
            l.time_sync_interval = Some(self.config.time_sync_unsynced_interval);
            let first = match l.role {
                LinkRole::Station => now,
                LinkRole::AccessPoint => now + self.config.ap_first_sync_delay,
            };
            l.set(LinkTimer::TimeSync, Some(first));
            // Our layout may have changed while our first request was in flight (another
            // link synced meanwhile): the library waits up to a full interval to tell this
            // peer; we re-sync at once if what we said is stale.
            let sent = self.links[idx].sent_digest;
            if sent.is_some() && sent != Some(self.digest_for(tree_id)) {
                self.links[idx].set(LinkTimer::NodeSync, Some(now));
            }
            if self.config.node_sync == NodeSyncPolicy::Meshfleet {
                let hello = self.digest_frame(DigestKind::Hello, tree_id);
                self.push_transmit(link, hello, Priority::Control);
            }
            self.events.push_back(Event::NewConnection {
                link,
                peer: tree_id,
            });
            self.changes.push_back(MeshChange::NeighbourUp {
                link,
                peer: tree_id,
            });
        }
        if let Some(json) = fresh {
            // The node list changes by what the splice replaced; any other new tree
            // (a first one, one read in full) has it counted again.
            let delta = match (&splice, &self.links[idx].tree) {
                (Some(sp), Some(old)) => {
                    let removed = old.ids().get(sp.replaced.clone()).unwrap_or_default();
                    let added = tree.ids().get(sp.inserted.clone()).unwrap_or_default();
                    Some(id_delta(removed, added))
                }
                _ => None,
            };
            let l = &mut self.links[idx];
            match json {
                TreeJson::Subs(_, Some(parts)) => {
                    let (text, range) = link_tree_json_shared(&tree, parts);
                    l.tree_json = Arc::new(text);
                    l.subs_range = Some(range);
                }
                TreeJson::Subs(subs, None) => {
                    let buf = unshared(&mut l.tree_json);
                    l.subs_range = Some(link_tree_json_into(buf, &tree, subs));
                }
                TreeJson::Written(json, range) => {
                    l.tree_json = Arc::new(TreeText::Flat(json));
                    l.subs_range = range;
                }
            }
            match splice {
                Some(sp) => l.offsets = sp.offsets,
                None => meshfleet_wire::node_offsets(&l.tree_json.flat(), &mut l.offsets),
            }
            l.tree_digest = tree.digest();
            #[cfg(debug_assertions)]
            {
                let mut written = Vec::new();
                tree.write_json(&mut written);
                let kept = l.tree_json.flat();
                debug_assert!(
                    written == *kept,
                    "tree_json drifted from the tree:\n{}\n{}",
                    alloc::string::String::from_utf8_lossy(&written),
                    alloc::string::String::from_utf8_lossy(&kept)
                );
            }
            l.tree = Some(tree);
            match delta {
                Some((gone, came)) => self.update_node_list(&gone, &came),
                None => self.node_list = None,
            }
            let changed = self.links[idx].peer;
            self.layout_changed(now, Some(changed));
        } else {
            self.postpone_after_unchanged(now, idx, request);
        }
    }

    /// Whether to refuse `tree` (serialized: `json_len` bytes) from the link at `idx`: not
    /// in the library, which relays whatever it accepts and so lets one forged tree break
    /// its links to honest neighbours (see [`TreeRefusal`]). The bounds hold for every
    /// node sync we may send, including to a neighbour that connects later, so they do
    /// not depend on which links are up now.
    fn refusal(&self, idx: usize, tree: &FlatTree, json_len: usize) -> Option<TreeRefusal> {
        let me = self.config.node_id;
        if tree.subs_contain(me) {
            return Some(TreeRefusal::ContainsUs);
        }
        // The sender sits one level below us in what we relay: its depth (a leaf is 1)
        // is the number of levels below us the tree reaches.
        let depth = tree.depth();
        if depth > MAX_TREE_DEPTH {
            return Some(TreeRefusal::TooDeep { depth });
        }
        // The longest node sync we could send: every tree we hold, this one instead of
        // the link's current one, as to a neighbour that holds none of them.
        let others: usize = self
            .links
            .iter()
            .enumerate()
            .filter(|(i, l)| *i != idx && l.peer != NodeId::UNKNOWN && l.tree.is_some())
            .map(|(_, l)| l.tree_json.len() + 1)
            .sum();
        let sync_len = self.node_sync_overhead() + others + json_len + 1;
        let max = self.config.max_frame_len;
        if sync_len > max {
            return Some(TreeRefusal::TooLarge { sync_len, max });
        }
        None
    }

    /// Bytes of a node sync we send besides the trees and their separators: our own
    /// keys, `,"subs":[`, `]` and the longest `type`/`dest`/`from` tail (NUL excluded).
    fn node_sync_overhead(&self) -> usize {
        let c = &self.config;
        let digits = |n: u32| n.checked_ilog10().unwrap_or(0) as usize + 1;
        let mut n = r#"{"nodeId":"#.len() + digits(c.node_id.0);
        if c.root {
            n += r#","root":true"#.len();
        }
        if c.has_time_authority {
            n += r#","hasTimeAuthority":true"#.len();
        }
        n += r#","subs":[]"#.len();
        n += r#","type":6,"dest":,"from":}"#.len() + digits(u32::MAX) + digits(c.node_id.0);
        n
    }

    /// changedConnections -> syncLayout: ask every other synced link to re-sync now.
    fn layout_changed(&mut self, now: Instant, except_peer: Option<NodeId>) {
        for l in &mut self.links {
            if l.peer != NodeId::UNKNOWN && Some(l.peer) != except_peer {
                l.set(LinkTimer::NodeSync, Some(now));
            }
        }
        self.stats.layout_changes += 1;
        // The list is kept by hand on a hot path: every debug build (all the tests)
        // checks it against the list made from scratch.
        #[cfg(debug_assertions)]
        if let Some(kept) = self.node_list.take() {
            debug_assert_eq!(kept, self.nodes(), "node list drifted");
            self.node_list = Some(kept);
        }
        let nodes = self.nodes();
        if self.node_list.is_none() {
            self.node_list = Some(nodes.clone());
        }
        self.events.push_back(Event::NodeListChanged { nodes });
        self.changes.push_back(MeshChange::LayoutChanged);
    }

    pub(crate) fn close_link(&mut self, now: Instant, link: LinkId, reason: CloseReason) {
        let Some(idx) = self.link_index(link) else {
            return;
        };
        let l = self.links.remove(idx);
        if l.tree.is_some() {
            self.node_list = None;
        }
        self.held_replies.retain(|h| h.link != link);
        self.stats.count_close(&reason);
        let peer = (l.peer != NodeId::UNKNOWN).then_some(l.peer);
        self.events
            .push_back(Event::LinkClosed { link, peer, reason });
        // onDroppedConnection is not fired for links that never synced.
        if let Some(p) = peer {
            self.changes
                .push_back(MeshChange::NeighbourDown { link, peer: p });
            self.layout_changed(now, Some(p));
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let links = self
            .links
            .iter()
            .flat_map(|l| l.timers.iter().flatten())
            .min()
            .copied();
        let held = self.held_replies.iter().map(|h| h.at).min();
        match (links, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn run_timers(&mut self, now: Instant) {
        // Held time replies first: their t2 must be read as close to `at` as possible.
        let mut i = 0;
        while i < self.held_replies.len() {
            if self.held_replies[i].at <= now {
                let mut h = self.held_replies.swap_remove(i);
                h.packet.msg.t2 = Some(self.mesh_time(now));
                self.send_msg(h.link, &Message::TimeSync(h.packet), Priority::Control);
            } else {
                i += 1;
            }
        }
        let ids: Vec<LinkId> = self.links.iter().map(|l| l.id).collect();
        for id in ids {
            for t in LINK_TIMERS {
                let Some(idx) = self.link_index(id) else {
                    break;
                };
                if !self.links[idx].timer(t).is_some_and(|at| at <= now) {
                    continue;
                }
                match t {
                    LinkTimer::NodeTimeout => {
                        self.close_link(now, id, CloseReason::NodeSyncTimeout);
                    }
                    LinkTimer::NodeSync => {
                        let l = &mut self.links[idx];
                        if self.config.node_sync == NodeSyncPolicy::Meshfleet
                            && l.sync_timing.pending_since.is_some()
                        {
                            l.set(LinkTimer::NodeSync, None);
                            l.sync_held = true;
                            // The timeout restarts as if the request had gone out (the
                            // library's restartDelayed): holding it must not make the
                            // link stricter than the library's. At 1,000 nodes and 20%
                            // loss it did: 1,349 node-sync timeouts and 2,512 s where
                            // the library's took 472 s.
                            l.set(LinkTimer::NodeTimeout, Some(now + self.config.node_timeout));
                        } else {
                            self.send_node_sync_request(now, idx);
                        }
                    }
                    LinkTimer::TimeSync => self.start_time_sync(now, idx),
                }
            }
        }
    }

    fn send_node_sync_request(&mut self, now: Instant, idx: usize) {
        let (link, peer) = (self.links[idx].id, self.links[idx].peer);
        // A time authority whose last whole tree here was a reply (which has no
        // `hasTimeAuthority`) sends the whole tree, so the peer learns it.
        let authority_known = !self.config.has_time_authority || self.links[idx].told_authority;
        let frame = if self.digest_will_do(idx) && authority_known {
            self.stats.digest_syncs_sent += 1;
            SharedFrame::from(self.digest_frame(DigestKind::Request, peer))
        } else {
            let ty = meshfleet_wire::types::NODE_SYNC_REQUEST;
            let frame = self.node_sync_frame(ty, peer, true);
            self.links[idx].sent_digest = Some(self.digest_for(peer));
            self.links[idx].told_authority = true;
            frame
        };
        let l = &mut self.links[idx];
        l.set(
            LinkTimer::NodeSync,
            Some(now + self.config.node_sync_interval),
        );
        // restartDelayed: the timeout counts from the latest request.
        l.set(LinkTimer::NodeTimeout, Some(now + self.config.node_timeout));
        l.sync_timing.pending_since = Some(now);
        // Under the library's policy a normal frame, as the library queues it, unless the
        // node sends bulk data; under meshfleet's always a control frame (see `Priority`).
        let sending_bulk = self
            .last_bulk
            .is_some_and(|t| now.saturating_since(t) < self.config.node_timeout);
        let priority = if sending_bulk || self.config.node_sync == NodeSyncPolicy::Meshfleet {
            Priority::Control
        } else {
            Priority::Normal
        };
        self.push_shared(link, frame, priority);
    }

    /// mesh.hpp `startTimeSync` / ntp.hpp `initTimeSync`.
    fn start_time_sync(&mut self, now: Instant, idx: usize) {
        let l = &self.links[idx];
        let (link, peer) = (l.id, l.peer);
        let interval = l
            .time_sync_interval
            .unwrap_or(self.config.time_sync_unsynced_interval);
        let Some(adopt_from_peer) = self.adopts_from(idx) else {
            // Not synced yet (a TIME_SYNC moved the timer before the first node sync was
            // accepted): nobody knows who adopts whose time. Stop the timer rather than
            // leave it due (the driver would call us at this instant for ever); the first
            // node sync starts it, as the library enables its time-sync task on a new
            // connection.
            self.links[idx].set(LinkTimer::TimeSync, None);
            return;
        };
        self.links[idx].set(LinkTimer::TimeSync, Some(now + interval));
        let msg = if adopt_from_peer {
            let t0 = self.mesh_time(now);
            self.links[idx].time_request = Some(t0);
            TimeMsg {
                kind: TimeMsg::REQUEST,
                t0: Some(t0),
                t1: None,
                t2: None,
            }
        } else {
            TimeMsg {
                kind: TimeMsg::SYNC_REQUEST,
                ..TimeMsg::default()
            }
        };
        let p = TimePacket {
            dest: peer,
            from: self.config.node_id,
            msg,
            extra: Vec::new(),
        };
        self.send_msg(link, &Message::TimeSync(p), Priority::Control);
    }

    /// Whether we take our time from the neighbour on the link at `idx` (the library's
    /// `adopt` rule), or `None` if it has not completed node sync.
    fn adopts_from(&self, idx: usize) -> Option<bool> {
        let l = &self.links[idx];
        let remote = l.tree.as_ref().filter(|_| l.peer != NodeId::UNKNOWN)?;
        let c = &self.config;
        Some(adopt_by_size(
            (c.node_id, c.has_time_authority, self.size_for(l.peer)),
            (remote.node_id(), remote.has_time_authority(), remote.size()),
        ))
    }

    fn refuse_time(&mut self, link: LinkId, why: TimeRefusal) {
        self.drop_frame(link, DropReason::TimeRefused(why));
    }

    fn delay_time_sync(&mut self, link: LinkId, until: Instant) {
        if let Some(idx) = self.link_index(link) {
            self.links[idx].set(LinkTimer::TimeSync, Some(until));
        }
    }

    /// ntp.hpp `handleTimeSync`.
    fn handle_time_sync(&mut self, now: Instant, link: LinkId, t: TimePacket) {
        let received_at = self.mesh_time(now);
        let me = self.config.node_id;
        match t.msg.kind {
            TimeMsg::ERROR => self.delay_time_sync(link, now),
            TimeMsg::SYNC_REQUEST => {
                // "Ask me for my time": the library always does. We ask only a synced
                // neighbour whose time our adoption rule would take anyway, so a peer
                // cannot talk its way past the rule (or past our time authority).
                let Some(idx) = self.link_index(link) else {
                    return;
                };
                match self.adopts_from(idx) {
                    None => return self.refuse_time(link, TimeRefusal::Unsynced),
                    Some(false) => return self.refuse_time(link, TimeRefusal::NotOurSource),
                    Some(true) => {}
                }
                self.links[idx].time_request = Some(received_at);
                let reply = TimePacket {
                    dest: t.from,
                    from: me,
                    msg: TimeMsg {
                        kind: TimeMsg::REQUEST,
                        t0: Some(received_at),
                        t1: None,
                        t2: None,
                    },
                    extra: Vec::new(),
                };
                self.send_msg(link, &Message::TimeSync(reply), Priority::Control);
            }
            TimeMsg::REQUEST => {
                let packet = TimePacket {
                    dest: t.from,
                    from: me,
                    msg: TimeMsg {
                        kind: TimeMsg::REPLY,
                        t0: t.msg.t0,
                        t1: Some(received_at),
                        t2: None,
                    },
                    extra: Vec::new(),
                };
                self.held_replies.push(HeldReply {
                    at: now + self.config.time_reply_hold,
                    link,
                    packet,
                });
                // After answering, the library considers this link synced for a while.
                self.delay_time_sync(link, now + self.config.time_sync_interval);
            }
            TimeMsg::REPLY => {
                let (Some(t0), Some(t1), Some(t2)) = (t.msg.t0, t.msg.t1, t.msg.t2) else {
                    self.drop_frame(link, DropReason::Malformed(Malformed::TimeReplyIncomplete));
                    return;
                };
                let Some(idx) = self.link_index(link) else {
                    return;
                };
                if self.adopts_from(idx).is_none() {
                    return self.refuse_time(link, TimeRefusal::Unsynced);
                }
                // Only the answer to our own outstanding request, once.
                if self.links[idx].time_request != Some(t0) {
                    return self.refuse_time(link, TimeRefusal::Unsolicited);
                }
                self.links[idx].time_request = None;
                if self
                    .last_time_step
                    .is_some_and(|at| now < at + self.config.time_sync_retry)
                {
                    self.delay_time_sync(link, now + self.config.time_sync_retry);
                    return self.refuse_time(link, TimeRefusal::TooSoon);
                }
                // The library's rules (ratio check, softening) decide the sample ...
                let offset = clock_offset(t0, t1, t2, received_at);
                // ... and ours bound the step, once our clock holds mesh time. The bound is
                // never below the library's accuracy, so an accepted sample is never cut.
                let step = if self.clock_set {
                    let max = self
                        .config
                        .max_time_step
                        .as_micros()
                        .clamp(u64::from(TIME_SYNC_ACCURACY), i32::MAX as u64)
                        as i32;
                    if offset.unsigned_abs() > max.unsigned_abs() {
                        self.stats.time_steps_bounded += 1;
                    }
                    offset.clamp(-max, max)
                } else {
                    offset
                };
                self.time_offset = self.time_offset.wrapping_add(step as u32);
                // A held TIME_REPLY took t1 in the old time base and takes t2 when sent:
                // move t1 with the clock so both stay in one base.
                for h in &mut self.held_replies {
                    h.packet.msg.t1 = h.packet.msg.t1.map(|t1| t1.wrapping_add(step as u32));
                }
                if step != 0 {
                    self.clock_set = true;
                    self.last_time_step = Some(now);
                    self.stats.time_adjustments += 1;
                    self.events.push_back(Event::TimeAdjusted {
                        offset: step,
                        mesh_time: self.mesh_time(now),
                    });
                }
                if offset != 0 && offset.unsigned_abs() < TIME_SYNC_ACCURACY {
                    if let Some(idx) = self.link_index(link) {
                        self.links[idx].time_sync_interval = Some(self.config.time_sync_interval);
                    }
                    self.delay_time_sync(link, now + self.config.time_sync_interval);
                    // Our time changed: bring every other link's time sync forward.
                    let peer = self.link_index(link).map(|i| self.links[i].peer);
                    for l in &mut self.links {
                        if Some(l.peer) != peer && l.time_sync_interval.is_some() {
                            l.set(LinkTimer::TimeSync, Some(now));
                        }
                    }
                } else {
                    self.delay_time_sync(link, now + self.config.time_sync_retry);
                }
            }
            _ => self.drop_frame(
                link,
                DropReason::Malformed(Malformed::UnknownTimeSyncKind(t.msg.kind)),
            ),
        }
    }

    /// ntp.hpp `handleTimeDelay` (end to end, routed as SINGLE).
    fn handle_time_delay(&mut self, now: Instant, t: TimePacket) {
        let received_at = self.mesh_time(now);
        match t.msg.kind {
            TimeMsg::REQUEST => {
                let reply = TimePacket {
                    dest: t.from,
                    from: self.config.node_id,
                    msg: TimeMsg {
                        kind: TimeMsg::REPLY,
                        t0: t.msg.t0,
                        t1: Some(received_at),
                        t2: Some(received_at),
                    },
                    extra: Vec::new(),
                };
                if self
                    .send_message_routed(&Message::TimeDelay(reply), Routing::Single, None)
                    .is_err()
                {
                    self.stats.count_drop(&DropReason::NoRoute(t.from));
                }
            }
            TimeMsg::REPLY => {
                if let (Some(t0), Some(t1), Some(t2)) = (t.msg.t0, t.msg.t1, t.msg.t2) {
                    self.events.push_back(Event::DelayMeasured {
                        node: t.from,
                        delay_us: trip_delay(t0, t1, t2, received_at),
                    });
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LinkRole, NodeTree};
    use meshfleet_wire::{Message, NodeSync};

    fn reply(t: &NodeTree, dest: NodeId) -> Vec<u8> {
        Message::NodeSyncReply(NodeSync {
            tree: t.clone(),
            dest,
            from: t.node_id,
            extra: Vec::new(),
        })
        .encode_frame()
    }

    /// `first` with `n - 1` leaves below it.
    fn fan(first: u32, n: u32) -> NodeTree {
        NodeTree {
            node_id: NodeId(first),
            root: false,
            has_time_authority: false,
            subs: (first + 1..first + n)
                .map(|id| NodeTree::leaf(NodeId(id)))
                .collect(),
        }
    }

    fn node(id: u32) -> Node {
        // Library sync: nothing is held back for a reply the fans never send.
        Node::new(Config {
            node_sync: NodeSyncPolicy::Library,
            ..Config::new(NodeId(id))
        })
    }

    /// A relay with two big fans behind it sends its node syncs (in pieces) to two
    /// identical nodes, one fed the flat bytes as a socket driver would, one fed the
    /// pieces: both keep the same text, offsets and counters and answer the same frames,
    /// and the one fed pieces keeps them shared.
    #[test]
    fn a_node_fed_pieces_keeps_the_text_of_a_node_fed_bytes() {
        let relay_id = NodeId(2);
        let mut relay = node(2);
        let (mut flat, mut shared) = (node(1), node(1));
        let t0 = Instant::from_micros(0);
        relay.handle_link_up(t0, LinkId(0), LinkRole::AccessPoint);
        relay.handle_link_up(t0, LinkId(1), LinkRole::AccessPoint);
        relay.handle_link_up(t0, LinkId(2), LinkRole::Station);
        flat.handle_link_up(t0, LinkId(9), LinkRole::AccessPoint);
        shared.handle_link_up(t0, LinkId(9), LinkRole::AccessPoint);
        let mut scratch = Vec::new();
        let mut kept_in_pieces = 0;
        let mut unchanged_pieces = 0;
        for step in 0..60u64 {
            let now = Instant::from_micros(step * 400_000);
            // The fans re-send their trees (keeps the links alive); one changes twice.
            let second = match step {
                0..=7 => fan(2000, 100),
                8..=15 => fan(2000, 130),
                _ => fan(2000, 40),
            };
            relay.handle_bytes(now, LinkId(0), &reply(&fan(1000, 100), relay_id));
            if step == 30 {
                // Changed and back before the relay syncs: its next sync is the text we
                // keep made of new pieces, which the receiver takes over.
                relay.handle_bytes(now, LinkId(1), &reply(&fan(2000, 130), relay_id));
            }
            relay.handle_bytes(now, LinkId(1), &reply(&second, relay_id));
            relay.handle_timeout(now);
            while let Some(t) = relay.poll_transmit_shared() {
                if t.link != LinkId(2) {
                    continue;
                }
                if t.frame.as_contiguous().is_none() {
                    let before = shared.core.stats.frames_in;
                    let fast = shared.core.unchanged_node_sync_pieces(LinkId(9), &t.frame);
                    unchanged_pieces += usize::from(fast.is_some());
                    assert_eq!(shared.core.stats.frames_in, before);
                }
                let bytes = t.frame.to_vec();
                if bytes.first() == Some(&meshfleet_wire::BINARY_FRAME_MARK) {
                    flat.handle_bytes(now, LinkId(9), &bytes);
                } else {
                    flat.handle_frame(now, LinkId(9), &bytes[..bytes.len() - 1]);
                }
                shared.handle_shared_frame(now, LinkId(9), &t.frame, &mut scratch);
            }
            flat.handle_timeout(now);
            shared.handle_timeout(now);
            let (a, b) = (&flat.core.links[0], &shared.core.links[0]);
            assert_eq!(a.tree_json.flat(), b.tree_json.flat(), "step {step}");
            assert_eq!(a.tree_json.len(), b.tree_json.len());
            assert_eq!(a.subs_range, b.subs_range);
            assert_eq!(a.offsets, b.offsets);
            assert_eq!(a.tree, b.tree);
            assert!(a.tree_json.pieces().is_none());
            kept_in_pieces += usize::from(b.tree_json.pieces().is_some());
            assert_eq!(flat.stats(), shared.stats(), "step {step}");
            loop {
                let (x, y) = (flat.poll_transmit(), shared.poll_transmit());
                assert_eq!(x, y, "step {step}");
                let Some(x) = x else { break };
                relay.handle_bytes(now, LinkId(2), &x.frame);
            }
        }
        assert!(
            kept_in_pieces > 10,
            "{kept_in_pieces} steps with the text in pieces"
        );
        assert!(
            unchanged_pieces > 0,
            "no unchanged sync recognised by its pieces"
        );
        let tree = shared.core.links[0].tree.as_ref().expect("synced");
        assert_eq!(tree.size(), 1 + 100 + 40);
        // What the receiver keeps are the relay's current texts, not older versions.
        let (_, kept, _) = shared.core.links[0].tree_json.pieces().expect("in pieces");
        let current: Vec<_> = relay.core.links[..2]
            .iter()
            .map(|l| Arc::clone(&l.tree_json))
            .collect();
        assert!(same_parts(kept, &current));
    }
}
