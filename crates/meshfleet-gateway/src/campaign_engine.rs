//! The campaign engine: runs the `running` campaign on the gateway's own node.
//!
//! * **The node's side** is [`GatewayOta`], a plugin put on the gateway's node when it
//!   joins ([`equip`]): a meshfleet OTA engine that is there from the first link (so the
//!   neighbours' CAPS are known when a campaign starts: [`MeshfleetOta::start_source`]),
//!   plus the stock sender of the campaign being run (the agent's
//!   [`Source::stock_sender`]). While no campaign runs it answers offers like any node that
//!   is not a target (it is of role `gateway`) and serves nothing.
//! * **One campaign at a time** is offered by the node: the oldest `running` one. Others
//!   that are `running` wait with their nodes `QUEUED` (the node holds one artefact).
//! * **Outcomes** come from the OTA engine's typed events ([`OtaEvent`], through
//!   [`MeshPort::subscribe`](crate::mesh::MeshPort::subscribe)) and from periodic snapshots of the sending plugins, both fed
//!   to the agent's [`OfferTracker`]; typed refusals keep their [`Refusal`] label. A node
//!   is `SUCCEEDED` only once its status reports the new version (the registry's
//!   `firmware`): an image installed but not booted stays `IN_PROGRESS` at progress 1.
//!   A node with no change for the per-node timeout (`campaign-node-timeout`) while the
//!   campaign runs is `TIMED_OUT`.
//! * **Pause** stops the node serving: NAKs and stock data requests are dropped and the
//!   sending plugins' timers (offers, announces, pacing) are held, so nothing new is
//!   offered or sent; receivers keep what they hold and resume on the next offer (resume,
//!   or a gateway restart).
//! * **Late nodes**: while running, nodes that joined and match the targets (`all`, `role`,
//!   `hardware`) are added as `QUEUED`, unless another unfinished campaign has them.
//! * **Persistence**: node state changes are written at once (acknowledged, batched by the
//!   store's writer with whatever else is queued), progress every few seconds.
//!
//! The meshfleet protocol is a broadcast down the tree: every meshfleet node of the
//! artefact's role and hardware that runs an older version takes it, targeted or not.
//! Targets say which nodes the campaign waits for and reports on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use meshfleet_agent::{OfferTracker, Offering, Outcome, Snapshot, Source, SourceConfig};
use meshfleet_agent::{StopCause, Targets as OfferTargets};
use meshfleet_firmware::Artefact;
use meshfleet_mesh::{AddPluginError, Ctx, Instant, LinkId, MeshChange, Node, NodeId, Plugin};
use meshfleet_ota::{
    ImageInfo, MemStore, MeshfleetConfig, MeshfleetOta, NodeOutcome, OtaEvent, Refusal, StockSender,
};
use meshfleet_runtime::RuntimeEvent;
use meshfleet_wire::{types, Package, Routing};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::campaign::{
    matches, Campaign, CampaignId, CampaignNode, CampaignNodeEvent, CampaignState, NodeState,
    Targets,
};
use crate::events::GatewayEvent;
use crate::model::{AuditEntry, UnixMillis};
use crate::{now_millis, Shared};

/// The plugin's name (`RuntimeEvent::Plugin { plugin, .. }`).
pub const GATEWAY_OTA_PLUGIN: &str = "gateway-ota";

/// How often the engine looks at the sending plugins and updates node states (so a
/// node's `campaign_node` events come at most twice a second).
pub const TICK: Duration = Duration::from_millis(500);

/// Progress-only changes are written this often.
const PROGRESS_SAVE: Duration = Duration::from_secs(5);

/// The meshfleet package types and the binary chunk tag.
const MESHFLEET_TYPES: std::ops::RangeInclusive<i64> = 700..=709;
const NAK: i64 = 704;
const CHUNK_TAG: u16 = 703;

/// The gateway node's OTA plugin; see the module docs.
pub struct GatewayOta {
    meshfleet: MeshfleetOta,
    stock: Option<StockSender>,
    /// The nodes a campaign for named nodes is for: the stock sender serves no one else.
    stock_scope: Option<BTreeSet<u32>>,
    /// Stock packages (data requests) from nodes outside the campaign, not served.
    pub out_of_scope: u64,
    /// A campaign was loaded (before that, the meshfleet engine runs as a plain receiver).
    loaded: bool,
    /// Serving is held (paused, or no campaign running).
    held: bool,
    /// NAKs and data requests dropped while held.
    pub dropped: u64,
}

impl std::fmt::Debug for GatewayOta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayOta")
            .field("loaded", &self.loaded)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl Default for GatewayOta {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayOta {
    /// A plugin with no campaign.
    pub fn new() -> Self {
        // Role `gateway`: offers from elsewhere in the mesh are refused as not for us.
        let config = MeshfleetConfig::new("gateway", "gateway");
        let meshfleet = MeshfleetOta::new(config, Box::new(MemStore::new()))
            .unwrap_or_else(|_| unreachable_store());
        Self {
            meshfleet,
            stock: None,
            stock_scope: None,
            out_of_scope: 0,
            loaded: false,
            held: false,
            dropped: 0,
        }
    }

    /// Starts offering `artefact` (verified) with `stock` (its stock sender, if the
    /// strategy has one). `false` if the meshfleet engine refused (it is receiving
    /// another campaign, which a `gateway` node never accepts).
    ///
    /// `scope`: the only nodes the meshfleet campaign is for (`docs/ota-protocol.md`
    /// 2.3.2), or `None` for every node that lacks the image. With a scope each of them is
    /// offered at once, a node that is not a neighbour through the mesh (a remote peer).
    fn start(
        &mut self,
        ctx: &mut Ctx<'_>,
        artefact: Artefact,
        stock: Option<StockSender>,
        meshfleet: bool,
        scope: Option<BTreeSet<u32>>,
        stock_scope: Option<BTreeSet<u32>>,
    ) -> bool {
        self.loaded = true;
        self.held = false;
        let info: ImageInfo = Source::image_info(artefact.manifest());
        let mut ok = true;
        if meshfleet {
            self.meshfleet.set_running(Some(info), false);
            self.meshfleet.set_source_scope(scope.clone());
            ok = self.meshfleet.start_source(ctx, artefact, None);
            for id in scope.iter().flatten() {
                // No route now: the node is offered when its CAPS arrive (a neighbour) or
                // not at all (stock nodes get the stock flow, if the strategy has one).
                self.meshfleet.target(ctx, NodeId(*id));
            }
        }
        // The stock announce is a broadcast every stock node of the role and hardware acts on
        // (the library has no addressing); with a scope only its nodes' data requests are
        // answered, so a stock node outside the campaign never gets a part.
        self.stock_scope = stock_scope;
        self.stock = stock;
        if let Some(s) = &mut self.stock {
            s.start(ctx);
        }
        ok
    }

    /// Nodes the stock sender has sent parts to in the current campaign.
    pub fn stock_served(&self) -> Vec<u32> {
        self.stock.as_ref().map_or_else(Vec::new, |s| {
            s.progress()
                .iter()
                .filter(|(_, p)| p.served > 0)
                .map(|(n, _)| n.0)
                .collect()
        })
    }

    /// The nodes whose stock data requests are answered (`None`: every node's).
    fn set_stock_scope(&mut self, scope: Option<BTreeSet<u32>>) {
        self.stock_scope = scope;
    }

    /// Brings the scope of a campaign for listed nodes to `want`: offers the nodes not
    /// offered yet (or re-queued for a retry), takes out the ones that ended or were
    /// cancelled. Returns the scope.
    fn retarget(
        &mut self,
        ctx: &mut Ctx<'_>,
        targeted: &BTreeSet<u32>,
        want: &BTreeSet<u32>,
    ) -> BTreeSet<u32> {
        for gone in targeted.difference(want) {
            self.meshfleet.untarget(NodeId(*gone));
        }
        for add in want.difference(targeted) {
            // `false` (no route now) still puts it in the scope: it is offered when its
            // CAPS arrive, as the nodes listed at the start are.
            self.meshfleet.target(ctx, NodeId(*add));
        }
        want.clone()
    }

    /// Sends the operator's signed rollback command to `node` (`docs/ota-protocol.md`
    /// 2.9); `false` if there is no route to it now.
    pub fn send_rollback(
        &mut self,
        ctx: &mut Ctx<'_>,
        node: u32,
        command: &meshfleet_firmware::Intent,
    ) -> bool {
        self.meshfleet.send_rollback(ctx, NodeId(node), command)
    }

    /// Role and hardware of the meshfleet peers whose CAPS this node holds (what they
    /// said they run), by node id.
    pub fn peer_identities(&self) -> Vec<(u32, String, String)> {
        self.meshfleet
            .peers()
            .into_iter()
            .filter_map(|p| Some((p.peer.0, p.role?, p.hardware?)))
            .filter(|(_, r, h)| !r.is_empty() && !h.is_empty())
            .collect()
    }

    /// Holds or releases serving.
    fn hold(&mut self, held: bool) {
        self.held = held;
    }

    /// The sending plugins' counters and the node list, for the tracker.
    fn snapshot(&self, node: &Node) -> Snapshot {
        Snapshot {
            meshfleet: self
                .loaded
                .then(|| (self.meshfleet.stats().clone(), self.meshfleet.peers())),
            stock: self.stock.as_ref().map(|s| {
                let progress = s.progress().iter().map(|(n, p)| (*n, p.clone())).collect();
                (s.stats().clone(), progress)
            }),
            nodes: node.nodes(),
            neighbours: node.neighbours().into_iter().map(|(_, p)| p).collect(),
        }
    }
}

/// `MeshfleetOta::new` over an empty memory store has nothing to restore and cannot fail;
/// this keeps `unwrap` out.
fn unreachable_store() -> MeshfleetOta {
    MeshfleetOta::source(
        MeshfleetConfig::new("gateway", "gateway"),
        Box::new(MemStore::new()),
        placeholder_artefact(),
        None,
    )
}

fn placeholder_artefact() -> Artefact {
    let opts = meshfleet_firmware::PackOptions::new(
        "gateway",
        "gateway",
        meshfleet_firmware::Version::new(0, 0, 0),
    );
    match meshfleet_firmware::pack(b"", opts) {
        Ok(a) => a,
        Err(e) => panic!("packing an empty image cannot fail: {e}"),
    }
}

impl Plugin for GatewayOta {
    fn name(&self) -> &'static str {
        GATEWAY_OTA_PLUGIN
    }

    fn claims(&self) -> meshfleet_mesh::Claims {
        meshfleet_mesh::Claims::none()
            .types(MESHFLEET_TYPES)
            .types(types::OTA_ANNOUNCE..=types::OTA_DATA)
            .tag(CHUNK_TAG)
    }

    fn handle_package(&mut self, ctx: &mut Ctx<'_>, link: LinkId, routing: Routing, pkg: &Package) {
        let ty = pkg.ty();
        if MESHFLEET_TYPES.contains(&ty) {
            if self.held && self.loaded && ty == NAK {
                self.dropped += 1;
                return;
            }
            self.meshfleet.handle_package(ctx, link, routing, pkg);
            return;
        }
        if self
            .stock_scope
            .as_ref()
            .is_some_and(|scope| !scope.contains(&pkg.from().0))
        {
            self.out_of_scope += 1;
            return;
        }
        match &mut self.stock {
            Some(s) if !self.held => s.handle_package(ctx, link, routing, pkg),
            _ => self.dropped += 1,
        }
    }

    fn handle_binary(&mut self, ctx: &mut Ctx<'_>, link: LinkId, payload: &[u8]) {
        self.meshfleet.handle_binary(ctx, link, payload);
    }

    fn handle_change(&mut self, ctx: &mut Ctx<'_>, change: &MeshChange) {
        self.meshfleet.handle_change(ctx, change);
        if let Some(s) = &mut self.stock {
            s.handle_change(ctx, change);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.held && self.loaded {
            return None;
        }
        let a = self.meshfleet.poll_timeout();
        let b = self.stock.as_ref().and_then(|s| s.poll_timeout());
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        if self.meshfleet.poll_timeout().is_some_and(|t| t <= now) {
            self.meshfleet.handle_timeout(ctx);
        }
        if let Some(s) = &mut self.stock {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(ctx);
            }
        }
    }
}

/// Puts the campaign plugin on the gateway's node (before it joins the mesh, so the OTA
/// capability exchange happens on every link). `mesh::join` does it; a `MeshPort` over
/// another node (the demo's simulated gateway) should too.
///
/// Fails when the node already has a plugin for the OTA package types.
pub fn equip(node: &mut Node) -> Result<(), AddPluginError> {
    node.add_plugin(Box::new(GatewayOta::new())).map(drop)
}

/// Runs `f` on the gateway's node (its [`GatewayOta`] added first if it lacks one) and
/// returns its result; `None` if the node has stopped.
pub(crate) async fn on_node<R: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&mut Node, Instant) -> R + Send + 'static,
) -> Option<R> {
    let (tx, rx) = oneshot::channel();
    let job = Box::new(move |node: &mut Node, now: Instant| {
        if node.plugin::<GatewayOta>().is_none() {
            // A node built without `equip`: neighbours already linked never exchanged
            // CAPS with it and look like stock nodes until they reconnect.
            if let Err(e) = equip(node) {
                // Another OTA plugin owns the types: the campaign's start reports that
                // the node cannot offer.
                tracing::error!(error = %e, "cannot add the campaign plugin to the gateway's node");
            }
        }
        let _ = tx.send(f(node, now));
    });
    shared.mesh.run_on_node(job).await.ok()?;
    rx.await.ok()
}

/// How many of the newest campaigns [`node_identities`] looks through.
const IDENTITY_CAMPAIGNS: usize = 20;

/// Role and hardware of the nodes in `wanted`, for nodes that do not say them in telemetry
/// (Home Assistant's device entry and `update` entity, its install button): first what a
/// meshfleet node said in its CAPS to the gateway's node, then the artefact of the newest
/// campaign (of the last `IDENTITY_CAMPAIGNS`) in which the node `SUCCEEDED` (it runs
/// that artefact). Nodes neither source knows are left out.
pub async fn node_identities(
    shared: &Shared,
    wanted: &BTreeSet<u32>,
) -> BTreeMap<u32, (String, String)> {
    let mut out = BTreeMap::new();
    if wanted.is_empty() {
        return out;
    }
    let caps = on_node(shared, |node, _| {
        node.plugin::<GatewayOta>()
            .map(GatewayOta::peer_identities)
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    for (node, role, hw) in caps {
        if wanted.contains(&node) {
            out.insert(node, (role, hw));
        }
    }
    if out.len() == wanted.len() {
        return out;
    }
    let Ok(list) = shared.campaigns.list().await else {
        return out;
    };
    let Ok(artefacts) = shared.stores.artefacts.list().await else {
        return out;
    };
    for summary in list.iter().take(IDENTITY_CAMPAIGNS) {
        let Some(a) = artefacts.iter().find(|a| a.id == summary.artefact) else {
            continue;
        };
        let Ok(c) = shared.campaigns.get(&summary.id).await else {
            continue;
        };
        for n in c.nodes.iter().filter(|n| n.state == NodeState::Succeeded) {
            if wanted.contains(&n.node) && !out.contains_key(&n.node) {
                out.insert(n.node, (a.role.clone(), a.hardware.clone()));
            }
        }
        if out.len() == wanted.len() {
            break;
        }
    }
    out
}

/// What one node's outcome says, as a campaign node state.
#[derive(Clone, Debug, PartialEq)]
struct Verdict {
    state: NodeState,
    progress: f64,
    reason: Option<String>,
}

/// The campaign being offered by the node.
struct Active {
    id: CampaignId,
    version: String,
    /// The artefact's role and hardware (late nodes must fit them).
    role: String,
    hardware: String,
    tracker: OfferTracker,
    stock_flow: bool,
    /// The campaign's nodes as last given to the stock sender's scope.
    stock_scope: BTreeSet<u32>,
    /// Final outcomes the engine reported with a typed reason, by node.
    typed: BTreeMap<u32, (NodeState, &'static str)>,
    /// Transient refusals (busy, on trial), by node: the offer is retried.
    transient: BTreeMap<u32, &'static str>,
    /// Serving is held (the campaign is paused).
    held: bool,
    /// A campaign for listed nodes: the nodes in the OTA engine's scope now (nodes can be
    /// added and cancelled while it runs: a rollout's offers).
    targeted: Option<BTreeSet<u32>>,
    /// When it started running in this process (ETA and timeouts count from here).
    since: UnixMillis,
    last_progress_save: std::time::Instant,
}

/// Where a refusal leaves a node: a final state with the label, or a retry.
fn classify(r: Refusal) -> Option<(NodeState, &'static str)> {
    match r {
        Refusal::Busy | Refusal::OnTrial => None,
        Refusal::StoreFailed => Some((NodeState::Failed, r.label())),
        other => Some((NodeState::Rejected, other.label())),
    }
}

struct Engine {
    shared: Arc<Shared>,
    start: std::time::Instant,
    active: Option<Active>,
    /// Campaigns whose artefact could not be loaded (not retried every tick).
    broken: BTreeSet<CampaignId>,
}

/// Runs until `shutdown` turns true.
pub(crate) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut events = shared.mesh.subscribe();
    let mut e = Engine {
        shared,
        start: std::time::Instant::now(),
        active: None,
        broken: BTreeSet::new(),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            () = e.shared.campaigns.changed() => e.reconcile().await,
            _ = tick.tick() => {
                e.reconcile().await;
                e.step().await;
                e.shared.campaigns.refresh_rollbacks().await;
            }
            ev = events.recv() => match ev {
                Ok(RuntimeEvent::Plugin { plugin, data }) if plugin == GATEWAY_OTA_PLUGIN => {
                    if let Some(ev) = data.downcast_ref::<OtaEvent>() {
                        e.on_event(ev);
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => debug!(missed = n, "campaign engine lagged"),
                Err(RecvError::Closed) => return,
            },
        }
    }
}

impl Engine {
    fn now(&self) -> Instant {
        let us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        Instant::from_micros(us)
    }

    fn on_event(&mut self, ev: &OtaEvent) {
        let now = self.now();
        let Some(a) = &mut self.active else {
            return;
        };
        a.tracker.on_event(now, ev, &mut ());
        let mut final_ = |node: NodeId, v: (NodeState, &'static str)| {
            a.typed.insert(node.0, v);
        };
        match ev {
            OtaEvent::PeerRefused {
                peer,
                kind: Some(r),
                ..
            } => match classify(*r) {
                Some(v) => final_(*peer, v),
                None => {
                    a.transient.insert(peer.0, r.label());
                }
            },
            OtaEvent::NodeReport { node, outcome, .. } => match outcome {
                NodeOutcome::Refused(r) | NodeOutcome::Incompatible(r) => match classify(*r) {
                    Some(v) => final_(*node, v),
                    None => {
                        a.transient.insert(node.0, r.label());
                    }
                },
                NodeOutcome::Failed => final_(*node, (NodeState::Failed, "failed")),
                NodeOutcome::RolledBack => final_(*node, (NodeState::Failed, "rolled_back")),
                _ => {}
            },
            OtaEvent::PeerCannotDecode { peer, .. } if !a.stock_flow => {
                final_(*peer, (NodeState::Rejected, "cannot_decode"));
            }
            _ => {}
        }
    }

    /// Makes the node offer what should be offered: the oldest running campaign; holds
    /// serving while the active one is paused or none runs.
    async fn reconcile(&mut self) {
        let unfinished = self.shared.campaigns.unfinished();
        let now = now_millis();
        // Running and inside its schedule (`start_at`, maintenance window).
        let running = unfinished
            .iter()
            .filter(|c| c.serving_at(now) && !self.broken.contains(&c.id))
            .min_by_key(|c| c.id.seq());
        if let Some((id, was_held)) = self.active.as_ref().map(|a| (a.id.clone(), a.held)) {
            let current = unfinished.iter().find(|c| c.id == id);
            let state = current.map(|c| c.state);
            let serving = current.is_some_and(|c| c.serving_at(now));
            let keep = match state {
                Some(CampaignState::Running) if serving => true,
                // Paused, or running outside its schedule: kept (held; it goes on when
                // resumed or when its window opens) unless another campaign serves.
                Some(CampaignState::Paused | CampaignState::Running) => running.is_none(),
                _ => false,
            };
            if keep {
                let held = !serving;
                if held != was_held {
                    let ok = on_node(&self.shared, move |node, _| {
                        if let Some(p) = node.plugin_mut::<GatewayOta>() {
                            p.hold(held);
                        }
                    })
                    .await;
                    if ok.is_some() {
                        if let Some(a) = &mut self.active {
                            a.held = held;
                            if !held {
                                a.since = now_millis();
                            }
                        }
                        let outside = state == Some(CampaignState::Running) && held;
                        info!(campaign = %id, held, outside_schedule = outside,
                              "campaign serving held or resumed");
                    }
                }
                return;
            }
            info!(campaign = %id, "campaign no longer offered");
            self.active = None;
            let _ = on_node(&self.shared, |node, _| {
                if let Some(p) = node.plugin_mut::<GatewayOta>() {
                    p.hold(true);
                }
            })
            .await;
        }
        if let Some(c) = running {
            let c = c.clone();
            self.activate(c).await;
        }
    }

    /// Loads campaign `c`'s artefact and starts offering it.
    async fn activate(&mut self, c: Campaign) {
        let loaded = self.load(&c).await;
        let (artefact, image) = match loaded {
            Ok(x) => x,
            Err(reason) => {
                warn!(campaign = %c.id, reason, "cannot load the campaign's artefact");
                self.broken.insert(c.id.clone());
                self.fail_all(&c.id, reason).await;
                return;
            }
        };
        let config = SourceConfig::new(c.strategy.agent());
        let m = artefact.manifest().clone();
        let image_len = image.len() as u64;
        let stock = match Source::stock_sender(&m, image, &config) {
            Ok(s) => s,
            Err(e) => {
                warn!(campaign = %c.id, error = %e, "the stock flow cannot offer this image");
                self.broken.insert(c.id.clone());
                self.fail_all(&c.id, "stock_offer").await;
                return;
            }
        };
        let offering: Offering = Source::offering(m, image_len, stock.as_ref(), &config);
        let meshfleet = config.strategy.meshfleet();
        // A campaign for named nodes reaches those nodes only: without a scope every node of
        // the role and hardware that lacks the image would take it from the first holder.
        let scope = match &c.targets {
            Targets::Nodes(ids) => Some(ids.iter().copied().collect::<BTreeSet<u32>>()),
            _ => None,
        };
        // Stock nodes are served only if the campaign has them (whatever its targets: a role
        // campaign leaves out stock nodes, which report no role, yet they act on the announce);
        // `step` widens it as late nodes join the campaign.
        let stock_scope: BTreeSet<u32> = c.nodes.iter().map(|n| n.node).collect();
        let first_scope = stock_scope.clone();
        let started = on_node(&self.shared, move |node, now| {
            node.with_plugin::<GatewayOta, _>(now, |p, ctx| {
                p.start(ctx, artefact, stock, meshfleet, scope, Some(first_scope))
            })
        })
        .await;
        match started {
            Some(Some(true)) => {}
            Some(_) => {
                warn!(campaign = %c.id, "the node's OTA engine refused to offer");
                return;
            }
            None => {
                debug!(campaign = %c.id, "the mesh node has stopped");
                return;
            }
        }
        info!(campaign = %c.id, version = %c.version, strategy = c.strategy.agent().label(), "offering");
        self.active = Some(Active {
            id: c.id.clone(),
            version: c.version.clone(),
            role: offering.manifest.role.clone(),
            hardware: offering.manifest.hardware.clone(),
            tracker: OfferTracker::new(offering, self.now()),
            stock_flow: config.strategy.stock(),
            typed: BTreeMap::new(),
            transient: BTreeMap::new(),
            held: false,
            targeted: match &c.targets {
                Targets::Nodes(ids) => Some(ids.iter().copied().collect()),
                _ => None,
            },
            since: now_millis(),
            last_progress_save: std::time::Instant::now(),
            stock_scope,
        });
    }

    /// The artefact of `c`, verified again (it was when uploaded), and its image.
    async fn load(&self, c: &Campaign) -> Result<(Artefact, Vec<u8>), &'static str> {
        let bytes = self
            .shared
            .stores
            .artefacts
            .bytes(c.artefact.clone())
            .await
            .map_err(|_| "artefact_unreadable")?
            .ok_or("artefact_missing")?;
        let key = self.shared.firmware_key;
        tokio::task::spawn_blocking(move || {
            let a = Artefact::from_bytes(&bytes).map_err(|_| "artefact_invalid")?;
            let image = a
                .verify(key.as_ref())
                .map_err(|_| "artefact_invalid")?
                .into_image();
            Ok((a, image))
        })
        .await
        .map_err(|_| "artefact_invalid")?
    }

    /// Marks every unfinished node of `id` FAILED with `reason` (its artefact is gone).
    async fn fail_all(&self, id: &CampaignId, reason: &'static str) {
        let now = now_millis();
        self.commit(id, true, move |c, _| {
            for n in c.nodes.iter_mut().filter(|n| !n.state.is_terminal()) {
                n.state = NodeState::Failed;
                n.reason = Some(reason.to_owned());
                n.updated_at_ms = now;
            }
            // It will never be offered: it ends here (not as the active campaign).
            c.recount();
            if c.state == CampaignState::Running {
                c.state = CampaignState::Failed;
                c.estimated_completion_ms = None;
            }
        })
        .await;
    }

    /// One look at the node and the registry: node states, late nodes, the end.
    async fn step(&mut self) {
        let Some(a) = &self.active else {
            return;
        };
        let id = a.id.clone();
        if a.targeted.is_some() {
            self.retarget(&id).await;
        }
        let snap = on_node(&self.shared, |node, _| {
            node.plugin::<GatewayOta>().map(|p| p.snapshot(node))
        })
        .await
        .flatten();
        let now = self.now();
        let Some(a) = &mut self.active else {
            return;
        };
        if let Some(snap) = snap {
            a.tracker.on_snapshot(now, snap, &mut ());
        }
        let report = a
            .tracker
            .report(now, StopCause::Idle, OfferTargets::default());
        let outcomes: BTreeMap<u32, (Outcome, u32, u32)> = report
            .nodes
            .into_iter()
            .map(|n| (n.node_id, (n.outcome, n.have, n.total)))
            .collect();
        let version = a.version.clone();
        let typed = a.typed.clone();
        let transient = a.transient.clone();
        let since = a.since;
        let held = a.held;
        let save_progress = a.last_progress_save.elapsed() >= PROGRESS_SAVE;
        if save_progress {
            a.last_progress_save = std::time::Instant::now();
        }
        let timeout_ms = i64::try_from(
            self.shared
                .config
                .campaign_node_timeout
                .saturating_mul(1000),
        )
        .unwrap_or(i64::MAX);
        let shared = self.shared.clone();
        let me = shared.mesh.node_id().0;
        let (role, hardware) = (a.role.clone(), a.hardware.clone());
        let finished = self
            .commit(&id, save_progress, move |c, others| {
                let wall = now_millis();
                // Late nodes: joined since, match the targets, in no other campaign.
                if c.state == CampaignState::Running && !matches!(c.targets, Targets::Nodes(_)) {
                    let have: BTreeSet<u32> = c.nodes.iter().map(|n| n.node).collect();
                    let art = crate::model::ArtefactInfo {
                        id: c.artefact.clone(),
                        role,
                        hardware,
                        version: c.version.clone(),
                        size: 0,
                        image_size: 0,
                        image_sha256: String::new(),
                        key_id: String::new(),
                        uploaded_at: 0,
                        uploaded_by: String::new(),
                    };
                    let late: Vec<crate::model::NodeStatus> = shared.registry.with_nodes(|it| {
                        it.filter(|n| n.node_id != me && !have.contains(&n.node_id))
                            .filter(|n| !others.contains(&n.node_id))
                            .filter(|n| n.online)
                            .cloned()
                            .collect()
                    });
                    for n in late {
                        if matches(&c.targets, &art, &n) {
                            c.nodes.push(CampaignNode {
                                node: n.node_id,
                                state: NodeState::Queued,
                                progress: 0.0,
                                reason: None,
                                from_version: n.firmware.clone(),
                                updated_at_ms: wall,
                            });
                        }
                    }
                    c.nodes.sort_by_key(|n| n.node);
                }
                for n in c.nodes.iter_mut().filter(|n| !n.state.is_terminal()) {
                    let reg = shared.registry.get(n.node);
                    let runs_new = reg
                        .as_ref()
                        .and_then(|r| r.firmware.as_deref())
                        .is_some_and(|f| f == version);
                    let v = if runs_new {
                        Verdict {
                            state: NodeState::Succeeded,
                            progress: 1.0,
                            reason: None,
                        }
                    } else if let Some((state, label)) = typed.get(&n.node) {
                        Verdict {
                            state: *state,
                            progress: n.progress,
                            reason: Some((*label).to_owned()),
                        }
                    } else {
                        verdict(n, outcomes.get(&n.node), transient.get(&n.node).copied())
                    };
                    let mut v = v;
                    if !v.state.is_terminal() && c.state == CampaignState::Running && !held {
                        let last = n.updated_at_ms.max(since);
                        if wall.saturating_sub(last) > timeout_ms {
                            v = Verdict {
                                state: NodeState::TimedOut,
                                progress: n.progress,
                                reason: Some("timeout".into()),
                            };
                        }
                    }
                    let state_changed = v.state != n.state || v.reason != n.reason;
                    let progress_changed = (v.progress - n.progress).abs() > 1e-9;
                    if state_changed || progress_changed {
                        n.state = v.state;
                        n.reason = v.reason;
                        n.progress = v.progress;
                        n.updated_at_ms = wall;
                    }
                }
                // The estimate: the rate so far.
                c.recount();
                let elapsed = (wall - since).max(0) as f64;
                c.estimated_completion_ms =
                    (c.progress > 0.0 && c.progress < 1.0 && c.state == CampaignState::Running)
                        .then(|| wall + (elapsed * (1.0 - c.progress) / c.progress) as i64);
                if c.all_finished() && c.state == CampaignState::Running {
                    c.state = if c.updated_nodes == c.total_nodes {
                        CampaignState::Completed
                    } else {
                        CampaignState::Failed
                    };
                    c.estimated_completion_ms = None;
                }
            })
            .await;
        // Late nodes joined the campaign: the stock sender serves them too from now on.
        if finished == Some(false) {
            if let Ok(c) = self.shared.campaigns.get(&id).await {
                let nodes: BTreeSet<u32> = c.nodes.iter().map(|n| n.node).collect();
                if self.active.as_ref().is_some_and(|a| a.stock_scope != nodes) {
                    if let Some(a) = &mut self.active {
                        a.stock_scope = nodes.clone();
                    }
                    let _ = on_node(&self.shared, move |node, _| {
                        if let Some(p) = node.plugin_mut::<GatewayOta>() {
                            p.set_stock_scope(Some(nodes));
                        }
                    })
                    .await;
                }
            }
        }
        if finished == Some(true) {
            info!(campaign = %id, "campaign finished");
            self.active = None;
            let _ = on_node(&self.shared, |node, _| {
                if let Some(p) = node.plugin_mut::<GatewayOta>() {
                    p.hold(true);
                }
            })
            .await;
            self.shared.campaigns.poke();
        }
    }

    /// Keeps the OTA engine's scope equal to the campaign's unfinished nodes (a campaign
    /// for listed nodes can grow and shrink while it runs: `CampaignService::add_nodes`).
    async fn retarget(&mut self, id: &CampaignId) {
        let Ok(c) = self.shared.campaigns.get(id).await else {
            return;
        };
        let want: BTreeSet<u32> = c
            .nodes
            .iter()
            .filter(|n| !n.state.is_terminal())
            .map(|n| n.node)
            .collect();
        let Some(a) = &mut self.active else {
            return;
        };
        let targeted = a.targeted.clone().unwrap_or_default();
        if want == targeted {
            return;
        }
        // A node queued again (a retry) starts over: forget its last attempt's verdict.
        for n in want.difference(&targeted) {
            a.typed.remove(n);
            a.transient.remove(n);
        }
        let done = on_node(&self.shared, move |node, now| {
            node.with_plugin::<GatewayOta, _>(now, |p, ctx| p.retarget(ctx, &targeted, &want))
        })
        .await
        .flatten();
        if let (Some(done), Some(a)) = (done, &mut self.active) {
            a.targeted = Some(done);
        }
    }

    /// Applies `f` to campaign `id` (with the nodes of the other unfinished campaigns),
    /// writes what changed, publishes it. Returns whether the campaign is now finished
    /// (`None`: no such unfinished campaign).
    async fn commit(
        &self,
        id: &CampaignId,
        save_progress: bool,
        f: impl FnOnce(&mut Campaign, &BTreeSet<u32>) + Send,
    ) -> Option<bool> {
        let (finished, changed, c) = self
            .shared
            .campaigns
            .engine_update(id, save_progress, f)
            .await?;
        let s = &self.shared;
        for n in &changed {
            s.bus.publish(GatewayEvent::CampaignNode(CampaignNodeEvent {
                campaign: id.clone(),
                node: n.node,
                state: n.state,
                progress: n.progress,
                reason: n.reason.clone(),
            }));
        }
        if !changed.is_empty() || finished {
            s.bus.publish(GatewayEvent::Campaign(c.summary()));
        }
        if finished {
            let entry = AuditEntry {
                ts: c.updated_at_ms,
                actor: "gateway".into(),
                action: format!("campaign.{}", c.state.label()),
                target: id.0.clone(),
            };
            if let Err(e) = s.stores.audit.record(entry).await {
                warn!(error = %e, "cannot write the audit log");
            }
        }
        Some(finished)
    }
}

/// A node's verdict from the tracker's outcome (`have`/`total` units or parts) and a
/// transient refusal, if any.
fn verdict(
    n: &CampaignNode,
    outcome: Option<&(Outcome, u32, u32)>,
    transient: Option<&str>,
) -> Verdict {
    let keep = Verdict {
        state: n.state,
        progress: n.progress,
        reason: n.reason.clone(),
    };
    let Some((o, have, total)) = outcome else {
        return keep;
    };
    let fraction = if *total > 0 {
        f64::from(*have) / f64::from(*total)
    } else {
        0.0
    };
    match o {
        Outcome::AlreadyCurrent => Verdict {
            state: NodeState::Succeeded,
            progress: 1.0,
            reason: None,
        },
        // Installed: SUCCEEDED once its status reports the new version.
        Outcome::Updated => Verdict {
            state: NodeState::InProgress,
            progress: 1.0,
            reason: None,
        },
        Outcome::InProgress => Verdict {
            state: NodeState::InProgress,
            progress: fraction.max(n.progress).min(1.0),
            reason: transient.map(str::to_owned),
        },
        Outcome::Refused { .. } => match transient {
            Some(t) => Verdict {
                state: NodeState::InProgress,
                progress: n.progress,
                reason: Some(t.to_owned()),
            },
            None => Verdict {
                state: NodeState::Rejected,
                progress: n.progress,
                reason: Some("refused".into()),
            },
        },
        Outcome::Incompatible { kind, .. } => Verdict {
            state: NodeState::Rejected,
            progress: n.progress,
            reason: Some(
                match kind {
                    meshfleet_agent::Incompatibility::Role => "role",
                    meshfleet_agent::Incompatibility::Hardware => "hardware",
                    meshfleet_agent::Incompatibility::Decoder => "cannot_decode",
                }
                .into(),
            ),
        },
        Outcome::Failed { .. } => Verdict {
            state: NodeState::Failed,
            progress: n.progress,
            reason: Some("failed".into()),
        },
        Outcome::RolledBack => Verdict {
            state: NodeState::Failed,
            progress: n.progress,
            reason: Some("rolled_back".into()),
        },
        _ => keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gateway (1) with two receivers (2, 3) of the artefact's role and hardware; the
    /// campaign is started with `scope`; returns whether each took the image.
    fn run_scoped(scope: Option<BTreeSet<u32>>) -> (bool, bool) {
        use meshfleet_firmware::{pack, PackOptions, Version};
        use meshfleet_mesh::Config;
        let mut o = PackOptions::new("sensor", "ESP32", Version::new(2, 0, 0));
        o.chunk_size = 256;
        let image: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
        let Ok(artefact) = pack(&image, o) else {
            panic!("pack")
        };
        let mut net = meshfleet_testkit::Net::new(meshfleet_mesh::Duration::from_millis(2));
        let mut gw = Node::new(Config::new(NodeId(1)));
        let Ok(()) = equip(&mut gw) else {
            panic!("equip")
        };
        net.add(gw);
        for id in [2, 3] {
            let store = MemStore::with_image(b"old firmware", "1.0.0");
            let mut c = MeshfleetConfig::new("sensor", "ESP32");
            c.running = Some(meshfleet_ota::store::image_info(b"old firmware", "1.0.0"));
            let Ok(ota) = MeshfleetOta::new(c, Box::new(store)) else {
                panic!("store")
            };
            let mut n = Node::new(Config::new(NodeId(id)));
            let Ok(_) = n.add_plugin(Box::new(ota)) else {
                panic!("add_plugin")
            };
            let i = net.add(n);
            net.connect(i, 0);
        }
        net.run_for(meshfleet_mesh::Duration::from_secs(5));
        let now = net.now;
        let started = net.nodes[0].with_plugin::<GatewayOta, _>(now, |p, ctx| {
            p.start(ctx, artefact, None, true, scope, None)
        });
        assert_eq!(started, Some(true));
        net.drain(0);
        net.run_for(meshfleet_mesh::Duration::from_secs(30));
        let done = |i: usize| {
            net.nodes[i]
                .plugin::<MeshfleetOta>()
                .is_some_and(MeshfleetOta::is_complete)
        };
        (done(1), done(2))
    }

    /// Gateway (1) offering over the stock flow only to two modelled stock nodes (2, 3) of the
    /// artefact's role and hardware, with `scope`; returns how many updates each installed
    /// and the data requests the gateway left unserved as out of scope.
    fn run_stock_scoped(scope: Option<BTreeSet<u32>>) -> (u32, u32, u64) {
        use meshfleet_firmware::{pack, PackOptions, Version};
        use meshfleet_mesh::Config;
        use meshfleet_ota::{StockReceiver, StockReceiverConfig};
        let mut o = PackOptions::new("sensor", "ESP32", Version::new(2, 0, 0));
        o.chunk_size = 256;
        let image: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
        let Ok(artefact) = pack(&image, o) else {
            panic!("pack")
        };
        let config = SourceConfig::new(meshfleet_agent::Strategy::Stock);
        let Ok(stock) = Source::stock_sender(artefact.manifest(), image, &config) else {
            panic!("stock offer")
        };
        let mut net = meshfleet_testkit::Net::new(meshfleet_mesh::Duration::from_millis(2));
        let mut gw = Node::new(Config::new(NodeId(1)));
        equip(&mut gw).expect("a fresh node");
        net.add(gw);
        for id in [2, 3] {
            let mut n = Node::new(Config::new(NodeId(id)));
            n.add_plugin(Box::new(StockReceiver::new(StockReceiverConfig::new(
                "sensor", "ESP32",
            ))))
            .expect("a fresh node");
            let i = net.add(n);
            net.connect(i, 0);
        }
        net.run_for(meshfleet_mesh::Duration::from_secs(5));
        let now = net.now;
        let started = net.nodes[0].with_plugin::<GatewayOta, _>(now, |p, ctx| {
            p.start(ctx, artefact, stock, false, None, scope)
        });
        assert_eq!(started, Some(true));
        net.drain(0);
        net.run_for(meshfleet_mesh::Duration::from_secs(120));
        let updates = |i: usize| {
            net.nodes[i]
                .plugin::<StockReceiver>()
                .map_or(0, StockReceiver::updates)
        };
        let skipped = net.nodes[0]
            .plugin::<GatewayOta>()
            .map_or(0, |p| p.out_of_scope);
        (updates(1), updates(2), skipped)
    }

    /// Issue 12: stock nodes in `meshfleet demo` took a campaign for named nodes they were not
    /// named in (the stock announce is a broadcast by role).
    #[test]
    fn stock_nodes_outside_a_campaign_for_named_nodes_are_not_served() {
        // Without a scope both stock nodes of the role take the image...
        let (a, b, skipped) = run_stock_scoped(None);
        assert_eq!((a, b, skipped), (1, 1, 0));
        // ...a campaign for node 3 reaches node 3 only; node 2's requests go unanswered.
        let (a, b, skipped) = run_stock_scoped(Some(BTreeSet::from([3])));
        assert_eq!((a, b), (0, 1));
        assert!(skipped > 0, "node 2 asked and was not served");
    }

    #[test]
    fn a_campaign_for_named_nodes_reaches_only_those() {
        // Without a scope both nodes of the role take the image...
        assert_eq!(run_scoped(None), (true, true));
        // ...with the campaign's nodes as its scope only node 3 does.
        assert_eq!(run_scoped(Some(BTreeSet::from([3]))), (false, true));
    }

    fn queued() -> CampaignNode {
        CampaignNode {
            node: 1,
            state: NodeState::Queued,
            progress: 0.0,
            reason: None,
            from_version: None,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn outcomes_map_to_node_states() {
        let n = queued();
        let v = verdict(&n, Some(&(Outcome::InProgress, 25, 100)), None);
        assert_eq!((v.state, v.progress), (NodeState::InProgress, 0.25));
        // Installed is not done: SUCCEEDED waits for the node's report of the version.
        let v = verdict(&n, Some(&(Outcome::Updated, 100, 100)), None);
        assert_eq!((v.state, v.progress), (NodeState::InProgress, 1.0));
        let v = verdict(&n, Some(&(Outcome::AlreadyCurrent, 0, 100)), None);
        assert_eq!(v.state, NodeState::Succeeded);
        let v = verdict(&n, Some(&(Outcome::RolledBack, 100, 100)), None);
        assert_eq!(
            (v.state, v.reason.as_deref()),
            (NodeState::Failed, Some("rolled_back"))
        );
        let refused = Outcome::Refused {
            reason: "busy".into(),
        };
        let v = verdict(&n, Some(&(refused.clone(), 0, 100)), Some("busy"));
        assert_eq!(
            (v.state, v.reason.as_deref()),
            (NodeState::InProgress, Some("busy")),
            "a transient refusal is retried"
        );
        let v = verdict(&n, Some(&(refused, 0, 100)), None);
        assert_eq!(v.state, NodeState::Rejected);
        // No outcome (behind a relay, or gone): unchanged.
        assert_eq!(verdict(&n, None, None).state, NodeState::Queued);
        let v = verdict(&n, Some(&(Outcome::Unknown, 0, 0)), None);
        assert_eq!(v.state, NodeState::Queued);
    }

    #[test]
    fn refusals_keep_their_label() {
        assert_eq!(
            classify(Refusal::Downgrade),
            Some((NodeState::Rejected, "downgrade"))
        );
        assert_eq!(
            classify(Refusal::Signature),
            Some((NodeState::Rejected, "signature"))
        );
        assert_eq!(
            classify(Refusal::StoreFailed),
            Some((NodeState::Failed, "store_failed"))
        );
        assert_eq!(classify(Refusal::Busy), None);
        assert_eq!(classify(Refusal::OnTrial), None);
    }
}
