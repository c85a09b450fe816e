//! Plugins: how OTA, status and other packages plug into a node.
//!
//! A plugin claims package types. The node routes packages as the library does (SINGLE,
//! BROADCAST, NEIGHBOUR by their `routing` key) and hands those addressed to us to the
//! plugin, with a [`Ctx`] through which it sends, reads the mesh layout and reports events.
//! Plugins are sans-IO too: they get `now` in the context and say when they next need
//! [`Plugin::handle_timeout`] through [`Plugin::poll_timeout`].
//!
//! The node keeps a registry of package types: a plugin states its [`Claims`] (package
//! types, binary tags) once, when it is added, and [`crate::Node::add_plugin`] refuses a
//! plugin whose claims overlap another's ([`AddPluginError`]), so every package has at
//! most one owner and dispatch is a table lookup rather than a question to every plugin.
//! `add_plugin` returns a typed [`PluginHandle`] through which the application reaches
//! its plugin again, without downcasting boilerplate in the plugin.
//!
//! A plugin's messages are [`TypedPackage`]s: the header every package carries (`from`,
//! `routing`, `type`, `dest`) once, and a body type ([`PackageBody`]) that names its package
//! type and holds only its own keys. The node has already read the header when it routes
//! a package, so a plugin decodes only the body ([`TypedPackage::decode`]), and a body
//! struct cannot disagree with its type number.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt;
use core::marker::PhantomData;
use core::ops::RangeInclusive;

use meshfleet_wire::{DecodeError, FlatTree, NodeId, NodeTree, Package, Routing};
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use crate::event::{Event, LinkRole, PluginEvent};
use crate::node::{Core, NodeSyncTiming, Priority};
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
            Priority::Normal,
        );
        Ok(())
    }

    /// As [`Ctx::send_on_link`], in the driver's bulk class ([`Priority::Bulk`]): behind
    /// every node-sync, time-sync and application frame queued on the link. For data the
    /// plugin paces itself (OTA chunks). For the node timeout after it, the node's own
    /// node-sync requests are control frames ([`Priority`]: the medium is crowded).
    pub fn send_bulk_on_link(&mut self, link: LinkId, pkg: &Package) -> Result<(), SendError> {
        if !self.core.links.iter().any(|l| l.id == link) {
            return Err(SendError::NoSuchLink(link));
        }
        self.core.last_bulk = Some(self.now);
        self.core.push_transmit(
            link,
            meshfleet_wire::Message::Package(pkg.clone()).encode_frame(),
            Priority::Bulk,
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
        self.core.send_binary(link, payload, Priority::Normal);
        Ok(())
    }

    /// As [`Ctx::send_binary_on_link`], in the driver's bulk class ([`Priority::Bulk`]).
    pub fn send_bulk_binary_on_link(
        &mut self,
        link: LinkId,
        payload: &[u8],
    ) -> Result<(), SendError> {
        if !self.core.links.iter().any(|l| l.id == link) {
            return Err(SendError::NoSuchLink(link));
        }
        self.core.last_bulk = Some(self.now);
        self.core.send_binary(link, payload, Priority::Bulk);
        Ok(())
    }

    /// How our node-sync exchanges on `link` fare ([`NodeSyncTiming`]); `None` for an
    /// unknown link. Pacing reads it to see the load around its neighbours.
    pub fn node_sync_timing(&self, link: LinkId) -> Option<NodeSyncTiming> {
        self.core
            .links
            .iter()
            .find(|l| l.id == link)
            .map(|l| l.sync_timing)
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

/// The package types and binary-frame tags a plugin owns. Built once per plugin:
/// `Claims::none().types(700..=709).tag(707)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    types: Vec<RangeInclusive<i64>>,
    tags: Vec<u16>,
}

impl Claims {
    /// Claims nothing (a plugin that only watches the mesh or sends).
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds the package types in `range`.
    #[must_use]
    pub fn types(mut self, range: RangeInclusive<i64>) -> Self {
        if !range.is_empty() {
            self.types.push(range);
        }
        self
    }

    /// Adds one package type.
    #[must_use]
    pub fn ty(self, ty: i64) -> Self {
        self.types(ty..=ty)
    }

    /// Adds one binary-frame tag (the first two payload bytes, u16 LE).
    #[must_use]
    pub fn tag(mut self, tag: u16) -> Self {
        self.tags.push(tag);
        self
    }

    /// Adds everything `other` claims (for a plugin composed of others).
    #[must_use]
    pub fn with(mut self, other: Self) -> Self {
        self.types.extend(other.types);
        self.tags.extend(other.tags);
        self
    }

    /// Whether package type `ty` is claimed.
    pub fn has_type(&self, ty: i64) -> bool {
        self.types.iter().any(|r| r.contains(&ty))
    }

    /// Whether binary tag `tag` is claimed.
    pub fn has_tag(&self, tag: u16) -> bool {
        self.tags.contains(&tag)
    }

    /// The claimed type ranges.
    pub fn type_ranges(&self) -> &[RangeInclusive<i64>] {
        &self.types
    }

    /// The claimed binary tags.
    pub fn tags(&self) -> &[u16] {
        &self.tags
    }
}

/// Why [`crate::Node::add_plugin`] refused a plugin: one of its claims is already owned.
/// Two owners of one package type would each act on it (two OTA engines answering one
/// offer), so the node refuses the second rather than guess.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddPluginError {
    /// Package type `ty` is already claimed by plugin `owner`.
    TypeClaimed {
        /// The refused plugin.
        plugin: &'static str,
        /// The first type both claim.
        ty: i64,
        /// The plugin that owns it.
        owner: &'static str,
    },
    /// Binary tag `tag` is already claimed by plugin `owner`.
    TagClaimed {
        /// The refused plugin.
        plugin: &'static str,
        /// The tag both claim.
        tag: u16,
        /// The plugin that owns it.
        owner: &'static str,
    },
}

impl fmt::Display for AddPluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TypeClaimed { plugin, ty, owner } => write!(
                f,
                "plugin {plugin} claims package type {ty}, which plugin {owner} already handles"
            ),
            Self::TagClaimed { plugin, tag, owner } => write!(
                f,
                "plugin {plugin} claims binary tag {tag}, which plugin {owner} already handles"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for AddPluginError {}

#[cfg(feature = "std")]
impl std::error::Error for SendError {}

/// A typed handle to a plugin added with [`crate::Node::add_plugin`]: reach it again with
/// [`crate::Node::plugin_at`], [`crate::Node::plugin_at_mut`] or
/// [`crate::Node::with_plugin_at`]. Valid for the node that returned it (plugins are never
/// removed); on another node the lookup returns `None` unless the same slot holds a `P`.
pub struct PluginHandle<P> {
    pub(crate) index: usize,
    _plugin: PhantomData<fn() -> P>,
}

impl<P> PluginHandle<P> {
    pub(crate) fn new(index: usize) -> Self {
        Self {
            index,
            _plugin: PhantomData,
        }
    }
}

impl<P> Clone for PluginHandle<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for PluginHandle<P> {}

impl<P> fmt::Debug for PluginHandle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PluginHandle({})", self.index)
    }
}

impl<P> PartialEq for PluginHandle<P> {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index
    }
}

impl<P> Eq for PluginHandle<P> {}

/// Downcasting support for every plugin, implemented for all types: plugin authors write
/// no `as_any` boilerplate. (Trait upcasting would do without it but needs Rust 1.86; the
/// workspace's MSRV is 1.80.) Use [`crate::Node::plugin_at`] or [`crate::Node::plugin`];
/// these methods are for the node.
#[doc(hidden)]
pub trait AnyPlugin: Any {
    /// `self` as `Any`.
    fn any_plugin(&self) -> &dyn Any;
    /// `self` as `Any`, mutably.
    fn any_plugin_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any> AnyPlugin for T {
    fn any_plugin(&self) -> &dyn Any {
        self
    }

    fn any_plugin_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A handler for one or more package types. See the module docs.
///
/// Implementors write no downcasting code: [`AnyPlugin`] is implemented for every type.
pub trait Plugin: AnyPlugin + Send {
    /// A short name for logs and events.
    fn name(&self) -> &'static str;

    /// The package types and binary tags this plugin handles. Read once, by
    /// [`crate::Node::add_plugin`]; the node hands the plugin exactly these.
    fn claims(&self) -> Claims;

    /// A package of a claimed type reached us. `link` is where it arrived from;
    /// `routing` tells whether it was broadcast (the node has already flooded it on).
    fn handle_package(&mut self, ctx: &mut Ctx<'_>, link: LinkId, routing: Routing, pkg: &Package);

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
}

/// The body of a plugin package: every key after the header, and the package type it is
/// sent as. Implemented by each message struct of a plugin protocol
/// (`impl PackageBody for Caps { const TYPE: i64 = 700; }`).
///
/// The body must not declare `from`, `routing`, `type` or `dest` itself:
/// [`TypedPackage`] writes them, and decoding ignores them in the body (serde skips keys
/// a struct does not name).
pub trait PackageBody: Serialize + DeserializeOwned {
    /// The package type (`type` key) this body is sent as.
    const TYPE: i64;
}

/// A plugin package with a typed body: the painlessMesh package header once, then `B`'s
/// keys, written as `{"from":F,"routing":R,"type":B::TYPE,"dest":D,...body}` (the order
/// the library's `plugin.hpp` packages use, so the bytes are those of a struct declaring
/// all four fields first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypedPackage<B> {
    /// Sender.
    pub from: NodeId,
    /// How it travels.
    pub routing: Routing,
    /// Destination (the neighbour for NEIGHBOUR routing; 0 for BROADCAST).
    pub dest: NodeId,
    /// Everything else.
    pub body: B,
}

impl<B: PackageBody> TypedPackage<B> {
    /// A package of `body` from `from` to `dest`, routed as `routing`.
    pub fn new(from: NodeId, routing: Routing, dest: NodeId, body: B) -> Self {
        Self {
            from,
            routing,
            dest,
            body,
        }
    }

    /// A NEIGHBOUR-routed package (one hop, on a link the sender chooses).
    pub fn neighbour(from: NodeId, dest: NodeId, body: B) -> Self {
        Self::new(from, Routing::Neighbour, dest, body)
    }

    /// A SINGLE-routed package (along the tree to `dest`).
    pub fn single(from: NodeId, dest: NodeId, body: B) -> Self {
        Self::new(from, Routing::Single, dest, body)
    }

    /// The package type.
    pub fn ty(&self) -> i64 {
        B::TYPE
    }

    /// Reads `pkg` as a `B` package: the header is the one the node read when it routed
    /// `pkg` (`from`/`dest` 0 when absent or not a uint32, as the library reads them); only
    /// the body is decoded here. Fails if `pkg` is of another type or its body does not
    /// decode as `B`.
    pub fn decode(pkg: &Package) -> Result<Self, DecodeError> {
        if pkg.ty() != B::TYPE {
            return Err(DecodeError::Field {
                ty: pkg.ty(),
                field: "type",
                reason: alloc::format!("expected {}", B::TYPE),
            });
        }
        Ok(Self {
            from: pkg.from(),
            routing: pkg.routing(),
            dest: pkg.dest(),
            body: pkg.parse::<B>()?,
        })
    }

    /// The package as the node sends it.
    pub fn encode(&self) -> Result<Package, DecodeError> {
        Package::from_serialize(self)
    }
}

impl<B: PackageBody> Serialize for TypedPackage<B> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The header, then the body's keys in the same JSON object.
        #[derive(Serialize)]
        struct Flat<'a, B> {
            from: u32,
            routing: i64,
            #[serde(rename = "type")]
            ty: i64,
            dest: u32,
            #[serde(flatten)]
            body: &'a B,
        }
        Flat {
            from: self.from.0,
            routing: self.routing.code(),
            ty: B::TYPE,
            dest: self.dest.0,
            body: &self.body,
        }
        .serialize(serializer)
    }
}
