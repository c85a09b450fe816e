//! Plugins: how OTA, status and other packages plug into a node.
//!
//! A plugin claims package types. The node routes packages as the library does (SINGLE,
//! BROADCAST, NEIGHBOUR by their `routing` key) and hands those addressed to us to the
//! plugin, with a [`Ctx`] through which it sends, reads the mesh layout and reports events.
//! Plugins are sans-IO too: they get `now` in the context and say when they next need
//! [`Plugin::handle_timeout`] through [`Plugin::poll_timeout`].

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::any::Any;

use meshfleet_wire::{FlatTree, NodeId, NodeTree, Package, Routing};

use crate::event::{Event, LinkRole, PluginEvent};
use crate::node::Core;
use crate::rng::Rng;
use crate::time::Instant;
use crate::LinkId;

/// A mesh-layer happening that plugins may care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshChange {
    /// A neighbour completed its first node sync.
    NeighbourUp {
        /// The link.
        link: LinkId,
        /// Its id.
        peer: NodeId,
    },
    /// A synced neighbour went away.
    NeighbourDown {
        /// The link.
        link: LinkId,
        /// Its id.
        peer: NodeId,
    },
    /// The layout changed (node list or tree shape).
    LayoutChanged,
}

/// The node as a plugin sees it during one call.
pub struct Ctx<'a> {
    pub(crate) now: Instant,
    pub(crate) core: &'a mut Core,
    pub(crate) plugin: &'static str,
}

/// Why a send failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// No link leads to the destination.
    NoRoute(NodeId),
    /// The link does not exist (any more).
    NoSuchLink(LinkId),
}

impl core::fmt::Display for SendError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRoute(id) => write!(f, "no route to node {id}"),
            Self::NoSuchLink(l) => write!(f, "no link {l:?}"),
        }
    }
}

impl Ctx<'_> {
    /// The current time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Our node id.
    pub fn node_id(&self) -> NodeId {
        self.core.config.node_id
    }

    /// Mesh time now (µs, wraps every ~71.6 min).
    pub fn mesh_time(&self) -> u32 {
        self.core.mesh_time(self.now)
    }

    /// Sends a package the way its `routing` says: SINGLE towards `dest`, BROADCAST to
    /// every synced link. NEIGHBOUR packages need [`Ctx::send_on_link`].
    pub fn send(&mut self, pkg: &Package) -> Result<(), SendError> {
        self.core.send_message_routed(
            &meshfleet_wire::Message::Package(pkg.clone()),
            pkg.routing(),
            None,
        )
    }

    /// Sends a package on one link, whatever its routing (hop-by-hop protocols).
    pub fn send_on_link(&mut self, link: LinkId, pkg: &Package) -> Result<(), SendError> {
        if !self.core.links.iter().any(|l| l.id == link) {
            return Err(SendError::NoSuchLink(link));
        }
        self.core.push_transmit(
            link,
            meshfleet_wire::Message::Package(pkg.clone()).encode_frame(),
            false,
        );
        Ok(())
    }

    /// Sends a binary frame on one link. `payload` starts with the plugin's u16 LE type
    /// tag. Only for peers that said they accept binary frames (a stock node would drop
    /// it as unparsable JSON).
    pub fn send_binary_on_link(&mut self, link: LinkId, payload: &[u8]) -> Result<(), SendError> {
        if !self.core.links.iter().any(|l| l.id == link) {
            return Err(SendError::NoSuchLink(link));
        }
        self.core.send_binary(link, payload);
        Ok(())
    }

    /// Sends `msg` to every node as an ordinary BROADCAST (type 8), like the application's
    /// `sendBroadcast`: what stock example receivers see in their receive callback (how the
    /// library's examples send their status package). Counted as an application message.
    pub fn send_broadcast_text(&mut self, msg: &str) {
        let m = meshfleet_wire::Message::Broadcast(meshfleet_wire::Text {
            dest: NodeId(0),
            from: self.core.config.node_id,
            msg: meshfleet_wire::MsgText::Text(msg.into()),
            extra: Vec::new(),
        });
        self.core.stats.app_sent += 1;
        // BROADCAST routing floods and cannot fail.
        let _ = self.core.send_message_routed(&m, Routing::Broadcast, None);
    }

    /// The node's counters so far (what a status plugin reports about its node).
    pub fn stats(&self) -> &crate::Stats {
        &self.core.stats
    }

    /// Synced links: `(link, neighbour id, role)`, in link order.
    pub fn links(&self) -> Vec<(LinkId, NodeId, LinkRole)> {
        self.core
            .links
            .iter()
            .filter(|l| l.peer != NodeId::UNKNOWN)
            .map(|l| (l.id, l.peer, l.role))
            .collect()
    }

    /// Bytes queued for `link` in the driver, as last reported with
    /// [`crate::Node::set_link_backlog`] (0 if the driver does not report it).
    pub fn link_backlog(&self, link: LinkId) -> Option<usize> {
        self.core
            .links
            .iter()
            .find(|l| l.id == link)
            .map(|l| l.backlog)
    }

    /// Whether this node is the mesh root.
    pub fn is_root(&self) -> bool {
        self.core.config.root
    }

    /// The link a SINGLE to `dest` would leave on.
    pub fn route(&self, dest: NodeId) -> Option<LinkId> {
        self.core.route(dest)
    }

    /// The neighbour's tree on `link` (everything reachable through it), flat
    /// ([`FlatTree::to_tree`] gives the nested form).
    pub fn link_tree(&self, link: LinkId) -> Option<&FlatTree> {
        self.core
            .links
            .iter()
            .find(|l| l.id == link)
            .and_then(|l| l.tree.as_ref())
    }

    /// Our view of the whole mesh.
    pub fn topology(&self) -> NodeTree {
        self.core.topology()
    }

    /// Every other node we can reach, sorted.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.core.nodes()
    }

    /// This node's PRNG (seeded; deterministic in the simulator).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.core.rng
    }

    /// Reports an event to the application.
    pub fn emit(&mut self, event: Box<dyn PluginEvent>) {
        self.core.events.push_back(Event::Plugin {
            plugin: self.plugin,
            event,
        });
    }
}

/// A handler for one or more package types. See the module docs.
pub trait Plugin: Any + Send {
    /// A short name for logs and events.
    fn name(&self) -> &'static str;

    /// Whether this plugin handles package type `ty`.
    fn handles(&self, ty: i64) -> bool;

    /// A package of a claimed type reached us. `link` is where it arrived from;
    /// `routing` tells whether it was broadcast (the node has already flooded it on).
    fn handle_package(&mut self, ctx: &mut Ctx<'_>, link: LinkId, routing: Routing, pkg: &Package);

    /// Whether this plugin handles binary frames tagged `tag` (first two payload bytes).
    fn handles_binary(&self, _tag: u16) -> bool {
        false
    }

    /// A binary frame with a claimed tag arrived on `link` (tag included in `payload`).
    fn handle_binary(&mut self, _ctx: &mut Ctx<'_>, _link: LinkId, _payload: &[u8]) {}

    /// The mesh changed.
    fn handle_change(&mut self, _ctx: &mut Ctx<'_>, _change: &MeshChange) {}

    /// When this plugin next needs [`Plugin::handle_timeout`].
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Called when `now` reaches [`Plugin::poll_timeout`].
    fn handle_timeout(&mut self, _ctx: &mut Ctx<'_>) {}

    /// For downcasting (`Node::plugin::<T>()`).
    fn as_any(&self) -> &dyn Any;

    /// For downcasting (`Node::plugin_mut::<T>()`).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}
