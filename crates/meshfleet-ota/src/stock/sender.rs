//! The stock sender: offers a raw image to unmodified painlessMesh nodes.

#[allow(unused_imports)]
use crate::prelude::*;

use alloc::collections::{BTreeMap, BTreeSet};

use meshfleet_mesh::{Claims, Ctx, Duration, Instant, LinkId, MeshChange, NodeId, Plugin};
use meshfleet_wire::ota::DataRequest;
use meshfleet_wire::{types, Package, Routing};

use super::{StockOffer, StockStyle};
use crate::event::{AnnounceReason, OtaEvent};

/// Timers of the stock sender. [`StockSenderConfig::default`] is the library's `offerOTA`.
#[derive(Clone, Debug)]
pub struct StockSenderConfig {
    /// Period of the announce task (60 s).
    pub announce_interval: Duration,
    /// Announces sent by the periodic task, the first one included (60).
    pub announce_count: u32,
    /// Minimum gap between announces triggered by joining nodes (1 s), so a mesh forming
    /// around the sender does not make it announce once per node.
    pub join_announce_gap: Duration,
    /// Most nodes whose progress is tracked; the least recently active is forgotten first.
    /// `from` is whatever a peer writes, so this bounds what a peer can make us keep.
    pub max_tracked_nodes: usize,
}

impl Default for StockSenderConfig {
    fn default() -> Self {
        Self {
            announce_interval: Duration::from_secs(60),
            announce_count: 60,
            join_announce_gap: Duration::from_secs(1),
            max_tracked_nodes: 4096,
        }
    }
}

/// What the sender knows about one requesting node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeProgress {
    /// Data packages sent to it (retries included).
    pub served: u32,
    /// Highest part requested.
    pub highest_part: u32,
    /// Its first request.
    pub first_request: Instant,
    /// Its latest request.
    pub last_request: Instant,
    /// It requested, and got, the last part.
    pub completed: bool,
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StockSenderStats {
    /// Announces sent.
    pub announces: u64,
    /// DataRequests received for this node.
    pub requests: u64,
    /// Data packages sent.
    pub data_sent: u64,
    /// Raw image bytes sent in Data packages.
    pub raw_bytes_sent: u64,
    /// Requests not answered (another image, unknown part, no route).
    pub requests_ignored: u64,
}

/// A [`Plugin`] that offers firmware to stock painlessMesh nodes exactly like the library's
/// sender (PROTOCOL.md §4.3, Q11), for package types 10, 11 and 12.
///
/// * Announce (10, BROADCAST, `"routing":2`) at once on [`StockSender::start`], then every
///   [`StockSenderConfig::announce_interval`] up to [`StockSenderConfig::announce_count`]
///   announces; also at once (at most once per [`StockSenderConfig::join_announce_gap`]) when
///   nodes join, so a node that appears mid-campaign does not wait up to a minute.
/// * DataRequest (11) for our MD5, role and hardware: answered with Data (12), built from the
///   request like the library's `Data::replyTo` (so `"broadcasted":true` requests get a
///   BROADCAST reply, `false` a SINGLE one back to the requester).
///
/// Progress per node and idleness ([`StockSender::idle_for`]) are tracked for the CLI's
/// `--exit-when-idle`.
#[derive(Debug)]
pub struct StockSender {
    offer: StockOffer,
    config: StockSenderConfig,
    started_at: Option<Instant>,
    periodic_left: u32,
    next_periodic: Option<Instant>,
    last_announce: Option<Instant>,
    /// A join announce held back by the rate limit.
    pending_join: Option<Instant>,
    known_nodes: BTreeSet<NodeId>,
    nodes: BTreeMap<NodeId, NodeProgress>,
    last_activity: Option<Instant>,
    stats: StockSenderStats,
}

impl StockSender {
    /// A sender for `offer`; it stays silent until [`StockSender::start`].
    pub fn new(offer: StockOffer, config: StockSenderConfig) -> Self {
        Self {
            offer,
            config,
            started_at: None,
            periodic_left: 0,
            next_periodic: None,
            last_announce: None,
            pending_join: None,
            known_nodes: BTreeSet::new(),
            nodes: BTreeMap::new(),
            last_activity: None,
            stats: StockSenderStats::default(),
        }
    }

    /// Starts offering: announces at once and arms the periodic announce.
    /// Call through `node.with_plugin::<StockSender, _>(now, |s, ctx| s.start(ctx))`.
    pub fn start(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        self.started_at = Some(now);
        self.last_activity = Some(now);
        self.known_nodes = ctx.nodes().into_iter().collect();
        self.periodic_left = self.config.announce_count;
        if self.periodic_left > 0 {
            self.periodic_left -= 1;
            self.announce(ctx, AnnounceReason::Start);
            self.next_periodic =
                (self.periodic_left > 0).then(|| now + self.config.announce_interval);
        }
    }

    /// Stops announcing; requests are still answered (a node in the middle of a transfer
    /// finishes it).
    pub fn stop_announcing(&mut self) {
        self.next_periodic = None;
        self.pending_join = None;
        self.periodic_left = 0;
    }

    /// The offer.
    pub fn offer(&self) -> &StockOffer {
        &self.offer
    }

    /// Whether [`StockSender::start`] was called.
    pub fn is_started(&self) -> bool {
        self.started_at.is_some()
    }

    /// Progress of every node that requested something.
    pub fn progress(&self) -> &BTreeMap<NodeId, NodeProgress> {
        &self.nodes
    }

    /// Nodes that got the last part.
    pub fn completed(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .filter(|(_, p)| p.completed)
            .map(|(id, _)| *id)
    }

    /// Counters.
    pub fn stats(&self) -> &StockSenderStats {
        &self.stats
    }

    /// Time since the last DataRequest we answered (or since the start if none came):
    /// `--exit-when-idle SECS` exits once this exceeds SECS. `None` before the start.
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        self.last_activity.map(|t| now.saturating_since(t))
    }

    fn announce(&mut self, ctx: &mut Ctx<'_>, reason: AnnounceReason) {
        let now = ctx.now();
        self.last_announce = Some(now);
        self.stats.announces += 1;
        let announce = self.offer.announce(ctx.node_id().0);
        // Serializing our own typed package cannot fail; if it ever did, skipping the
        // announce is the safe outcome (the periodic task retries).
        if let Ok(pkg) = Package::from_serialize(&announce) {
            // A broadcast has no route to fail.
            let _ = ctx.send(&pkg);
        }
        ctx.emit(Box::new(OtaEvent::AnnounceSent {
            reason,
            remaining: self.periodic_left,
        }));
    }

    fn on_nodes_joined(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        let nodes: BTreeSet<NodeId> = ctx.nodes().into_iter().collect();
        let joined = nodes.iter().any(|n| !self.known_nodes.contains(n));
        self.known_nodes = nodes;
        if !joined || self.started_at.is_none() || !self.announcing() {
            return;
        }
        let earliest = self
            .last_announce
            .map_or(now, |t| t + self.config.join_announce_gap);
        if earliest <= now {
            self.pending_join = None;
            self.announce(ctx, AnnounceReason::Join);
        } else {
            self.pending_join = Some(earliest);
        }
    }

    /// Whether the campaign still announces (periodic announces left).
    fn announcing(&self) -> bool {
        self.next_periodic.is_some()
    }

    fn handle_request(&mut self, ctx: &mut Ctx<'_>, pkg: &Package) {
        let now = ctx.now();
        let Ok(req) = pkg.parse::<DataRequest>() else {
            self.ignore(ctx, pkg.from(), "malformed");
            return;
        };
        let node = NodeId(req.from);
        if req.dest != ctx.node_id().0 {
            return; // not for us (a SINGLE for us always has our dest; be strict anyway)
        }
        self.stats.requests += 1;
        if !req.md5.eq_ignore_ascii_case(self.offer.md5()) {
            self.ignore(ctx, node, "md5");
            return;
        }
        if req.role != self.offer.role() {
            self.ignore(ctx, node, "role");
            return;
        }
        if req.hardware != self.offer.hardware() {
            self.ignore(ctx, node, "hardware");
            return;
        }
        let Some(data) = self.offer.part_base64(req.part_no) else {
            self.ignore(ctx, node, "part_out_of_range");
            return;
        };
        let raw_len = self.offer.part(req.part_no).map_or(0, <[u8]>::len) as u64;
        let mut reply = req.reply(data);
        if self.offer.style() == StockStyle::V141 {
            // painlessMeshBoost writes neither `broadcasted` nor routing 2 (transcript 06).
            reply.broadcasted = None;
            reply.routing = 1;
        }
        let Ok(out) = Package::from_serialize(&reply) else {
            self.ignore(ctx, node, "malformed");
            return;
        };
        if ctx.send(&out).is_err() {
            self.ignore(ctx, node, "no_route");
            return;
        }
        self.last_activity = Some(now);
        self.stats.data_sent += 1;
        self.stats.raw_bytes_sent += raw_len;
        let no_part = self.offer.no_part();
        self.track(node, now);
        let Some(p) = self.nodes.get_mut(&node) else {
            return;
        };
        p.served = p.served.saturating_add(1);
        p.highest_part = p.highest_part.max(req.part_no);
        let served = p.served;
        let newly_completed = req.part_no + 1 == no_part && !p.completed;
        if newly_completed {
            p.completed = true;
        }
        let took = now.saturating_since(p.first_request);
        ctx.emit(Box::new(OtaEvent::PartServed {
            node,
            part: req.part_no,
            no_part,
            served,
        }));
        if newly_completed {
            ctx.emit(Box::new(OtaEvent::NodeCompleted { node, took }));
        }
    }

    /// Makes sure `node` has a progress entry, evicting the least recently active one if the
    /// table is full.
    fn track(&mut self, node: NodeId, now: Instant) {
        if let Some(p) = self.nodes.get_mut(&node) {
            p.last_request = now;
            return;
        }
        if self.nodes.len() >= self.config.max_tracked_nodes.max(1) {
            if let Some(oldest) = self
                .nodes
                .iter()
                .min_by_key(|(_, p)| p.last_request)
                .map(|(id, _)| *id)
            {
                self.nodes.remove(&oldest);
            }
        }
        self.nodes.insert(
            node,
            NodeProgress {
                served: 0,
                highest_part: 0,
                first_request: now,
                last_request: now,
                completed: false,
            },
        );
    }

    fn ignore(&mut self, ctx: &mut Ctx<'_>, node: NodeId, reason: &'static str) {
        self.stats.requests_ignored += 1;
        ctx.emit(Box::new(OtaEvent::RequestIgnored { node, reason }));
    }
}

impl Plugin for StockSender {
    fn name(&self) -> &'static str {
        "ota-stock-sender"
    }

    fn claims(&self) -> Claims {
        // Announce and Data are claimed too (and ignored) so that a sender without a
        // receiver does not report other senders' packages as unhandled.
        Claims::none()
            .ty(types::OTA_ANNOUNCE)
            .ty(types::OTA_DATA_REQUEST)
            .ty(types::OTA_DATA)
    }

    fn handle_package(
        &mut self,
        ctx: &mut Ctx<'_>,
        _link: LinkId,
        _routing: Routing,
        pkg: &Package,
    ) {
        if pkg.ty() == types::OTA_DATA_REQUEST {
            self.handle_request(ctx, pkg);
        }
    }

    fn handle_change(&mut self, ctx: &mut Ctx<'_>, change: &MeshChange) {
        match change {
            MeshChange::NeighbourUp { .. } | MeshChange::LayoutChanged => {
                self.on_nodes_joined(ctx);
            }
            MeshChange::NeighbourDown { .. } => {
                self.known_nodes = ctx.nodes().into_iter().collect();
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_periodic, self.pending_join) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        if self.next_periodic.is_some_and(|t| t <= now) {
            self.periodic_left = self.periodic_left.saturating_sub(1);
            self.next_periodic =
                (self.periodic_left > 0).then(|| now + self.config.announce_interval);
            // A periodic announce also satisfies a pending join announce.
            self.pending_join = None;
            self.announce(ctx, AnnounceReason::Periodic);
        } else if self.pending_join.is_some_and(|t| t <= now) {
            self.pending_join = None;
            self.announce(ctx, AnnounceReason::Join);
        }
    }
}
