//! Firmware campaigns: one artefact offered to a set of nodes, with a state per node.
//!
//! * The types here are the JSON of the REST API, the SSE stream and MQTT alike
//!   (`docs/gateway.md`, "Campaigns").
//! * [`CampaignService`] is the in-process facade (REST, MQTT, rollouts and the demo call
//!   it): create, start, pause, resume, cancel, get, list. It owns the campaigns in memory
//!   (restored from the [`CampaignStore`] at start), serialises every change, writes it
//!   to the store (acknowledged) and to the audit log, and publishes it.
//! * The engine (`campaign_engine.rs`) runs the campaigns that are `running` on the
//!   gateway's own node and reports per-node states back through the service.
//!
//! Campaign state machine:
//!
//! ```text
//!  awaiting_approval ──approve──▶ created ──start──▶ running ──pause──▶ paused
//!  (require-approval)                 │                 │  ▲──resume───────┘ │
//!                                     │                 │ (engine: every node finished)
//!                                     │                 ▼
//!                                     │         completed | failed
//!  cancel (from awaiting_approval, created, running, paused) ──▶ cancelled
//! ```
//!
//! With `require-approval` every campaign is created `awaiting_approval` and nothing can
//! start it before an `approve` (audited `campaign.approve`, with the approver); a
//! creation that asked to start at once starts when approved.
//!
//! A campaign may carry a schedule (`start_at`, a maintenance `window`,
//! [`crate::campaign_schedule`]): while `running` outside it, the engine holds it as if
//! paused (no node starts; nodes mid-transfer keep what they hold and go on when it
//! opens again).
//!
//! Node states are AWS IoT Jobs' execution statuses: `QUEUED`, `IN_PROGRESS`, then one of
//! `SUCCEEDED` (the node runs the new version, as its status report says), `FAILED`,
//! `TIMED_OUT`, `REJECTED` (with the OTA engine's reason label) or `CANCELED`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::campaign_rollback::CampaignRollback;
use crate::campaign_schedule::{Schedule, Window, WindowJson};
use crate::events::GatewayEvent;
use crate::model::{ArtefactInfo, AuditEntry, UnixMillis};
use crate::store::{CampaignStore, StoreError};
use crate::{now_millis, Shared};

/// Most nodes one campaign may list explicitly.
pub const MAX_LISTED_NODES: usize = 10_000;
/// Longest campaign name, bytes.
pub const MAX_NAME: usize = 200;
/// Most campaigns kept in memory and served (the oldest finished ones are dropped from
/// memory beyond this; they stay in the store).
pub const MAX_CAMPAIGNS: usize = 1000;

/// A campaign's id: `c-` and six or more digits (`c-000001`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct CampaignId(pub String);

impl CampaignId {
    /// The id of sequence number `seq`.
    pub fn from_seq(seq: u64) -> Self {
        Self(format!("c-{seq:06}"))
    }

    /// The sequence number, if this is a well-formed id.
    pub fn seq(&self) -> Option<u64> {
        let digits = self.0.strip_prefix("c-")?;
        if digits.len() < 6 || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// Parses a path segment; `None` if it is not a well-formed id.
    pub fn parse(raw: &str) -> Option<Self> {
        let id = Self(raw.to_owned());
        id.seq().map(|_| id)
    }
}

impl std::fmt::Display for CampaignId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which nodes a campaign is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TargetsJson", into = "TargetsJson")]
pub enum Targets {
    /// Every node the artefact is for (its role and hardware, or not known yet).
    All,
    /// Nodes of this OTA role.
    Role(String),
    /// Nodes on this hardware.
    Hardware(String),
    /// These nodes.
    Nodes(Vec<u32>),
}

/// The JSON of [`Targets`]: exactly one of the keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetsJson {
    /// `true`: every node the artefact is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// Nodes of this OTA role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Nodes on this hardware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<String>,
    /// These node ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<u32>>,
}

impl TryFrom<TargetsJson> for Targets {
    type Error = String;

    fn try_from(j: TargetsJson) -> Result<Self, String> {
        match (j.all, j.role, j.hardware, j.nodes) {
            (Some(true), None, None, None) => Ok(Self::All),
            (None, Some(r), None, None) => Ok(Self::Role(r)),
            (None, None, Some(h), None) => Ok(Self::Hardware(h)),
            (None, None, None, Some(n)) => Ok(Self::Nodes(n)),
            (Some(false), None, None, None) => Err("`all` must be true".into()),
            _ => Err("targets take exactly one of `all`, `role`, `hardware`, `nodes`".into()),
        }
    }
}

impl From<Targets> for TargetsJson {
    fn from(t: Targets) -> Self {
        match t {
            Targets::All => Self {
                all: Some(true),
                ..Self::default()
            },
            Targets::Role(r) => Self {
                role: Some(r),
                ..Self::default()
            },
            Targets::Hardware(h) => Self {
                hardware: Some(h),
                ..Self::default()
            },
            Targets::Nodes(n) => Self {
                nodes: Some(n),
                ..Self::default()
            },
        }
    }
}

/// How the artefact is distributed (the agent's `Strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CampaignStrategy {
    /// Both the meshfleet protocol and the stock flow.
    #[default]
    Auto,
    /// The library's stock OTA sender only.
    Stock,
    /// The meshfleet protocol only.
    Broadcast,
}

impl CampaignStrategy {
    /// The agent's strategy.
    pub fn agent(self) -> meshfleet_agent::Strategy {
        match self {
            Self::Auto => meshfleet_agent::Strategy::Auto,
            Self::Stock => meshfleet_agent::Strategy::Stock,
            Self::Broadcast => meshfleet_agent::Strategy::Broadcast,
        }
    }
}

/// `POST /campaigns` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    /// The artefact's id (SHA-256 of the `.mfw`, as `GET /firmware` lists).
    pub artefact: String,
    /// Which nodes.
    #[schema(value_type = TargetsJson)]
    pub targets: Targets,
    /// How (default `auto`).
    #[serde(default)]
    pub strategy: CampaignStrategy,
    /// A label.
    #[serde(default)]
    pub name: Option<String>,
    /// Start at once (default false; with `require-approval`, once approved).
    #[serde(default)]
    pub start: bool,
    /// Serve no node before this (Unix ms).
    #[serde(default)]
    pub start_at: Option<UnixMillis>,
    /// Serve only inside this weekly maintenance window.
    #[serde(default)]
    #[schema(value_type = Option<WindowJson>)]
    pub window: Option<Window>,
}

/// A campaign's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CampaignState {
    /// Created with `require-approval`: waits for an `approve`.
    #[serde(rename = "awaiting_approval")]
    AwaitingApproval,
    /// Created, not started.
    Created,
    /// Offering.
    Running,
    /// Paused: no new offers, the gateway's sending paused.
    Paused,
    /// Every node finished and succeeded.
    Completed,
    /// Every node finished, some did not succeed.
    Failed,
    /// Cancelled by someone.
    Cancelled,
}

impl CampaignState {
    /// The lowercase label.
    pub fn label(self) -> &'static str {
        match self {
            Self::AwaitingApproval => "awaiting_approval",
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Completed, failed or cancelled: nothing happens to it any more.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Something done to a campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CampaignAction {
    /// created → running.
    Start,
    /// running → paused.
    Pause,
    /// paused → running.
    Resume,
    /// created, running, paused → cancelled.
    Cancel,
    /// awaiting_approval → created.
    Approve,
}

impl CampaignAction {
    /// The lowercase label (the REST path's last segment).
    pub fn label(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
            Self::Approve => "approve",
        }
    }

    /// Parses a label.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Start,
            Self::Pause,
            Self::Resume,
            Self::Cancel,
            Self::Approve,
        ]
        .into_iter()
        .find(|a| a.label() == s)
    }

    /// The state `action` leads to from `from`, if allowed.
    pub fn apply(self, from: CampaignState) -> Option<CampaignState> {
        use CampaignState as S;
        match (self, from) {
            (Self::Start, S::Created) | (Self::Resume, S::Paused) => Some(S::Running),
            (Self::Pause, S::Running) => Some(S::Paused),
            (Self::Cancel, S::AwaitingApproval | S::Created | S::Running | S::Paused) => {
                Some(S::Cancelled)
            }
            (Self::Approve, S::AwaitingApproval) => Some(S::Created),
            _ => None,
        }
    }
}

/// A node's state in a campaign (AWS IoT Jobs' execution statuses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// Not offered yet (or not reachable yet).
    Queued,
    /// Offered; transferring, installing or booting.
    InProgress,
    /// It runs the new version (its status report says so).
    Succeeded,
    /// The update failed (verification, store, rollback).
    Failed,
    /// No outcome within the per-node time limit.
    TimedOut,
    /// The node refused the offer or cannot take the artefact (`reason` says why).
    Rejected,
    /// The campaign was cancelled before the node finished.
    Canceled,
}

impl NodeState {
    /// The label (as in JSON).
    pub fn label(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::InProgress => "IN_PROGRESS",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::TimedOut => "TIMED_OUT",
            Self::Rejected => "REJECTED",
            Self::Canceled => "CANCELED",
        }
    }

    /// Parses a label.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::InProgress,
            Self::Succeeded,
            Self::Failed,
            Self::TimedOut,
            Self::Rejected,
            Self::Canceled,
        ]
        .into_iter()
        .find(|n| n.label() == s)
    }

    /// A terminal state: nothing more happens to the node in this campaign.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::InProgress)
    }
}

/// One node of a campaign.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CampaignNode {
    /// The node.
    pub node: u32,
    /// Its state.
    pub state: NodeState,
    /// Transfer progress, 0..1.
    pub progress: f64,
    /// Why it was rejected or failed (the OTA engine's reason label), if it was.
    pub reason: Option<String>,
    /// The version it ran when the campaign was created, if known.
    pub from_version: Option<String>,
    /// Last change (ms since the epoch).
    pub updated_at_ms: UnixMillis,
}

/// A campaign.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Campaign {
    /// Its id.
    pub id: CampaignId,
    /// Its label.
    pub name: String,
    /// The artefact's id.
    pub artefact: String,
    /// The artefact's firmware version.
    pub version: String,
    /// How it is distributed.
    pub strategy: CampaignStrategy,
    /// Its state.
    pub state: CampaignState,
    /// When it was created (ms since the epoch).
    pub created_at_ms: UnixMillis,
    /// Last change.
    pub updated_at_ms: UnixMillis,
    /// Nodes targeted.
    pub total_nodes: u32,
    /// Nodes that run the new version.
    pub updated_nodes: u32,
    /// Nodes that ended otherwise (failed, timed out, rejected).
    pub failed_nodes: u32,
    /// 0..1, bytes-weighted over the targeted nodes (each node weighs the same: one image).
    pub progress: f64,
    /// Unix ms when the campaign is expected to finish, from the rate so far (`null` while
    /// unknown).
    pub estimated_completion_ms: Option<UnixMillis>,
    /// Every targeted node (left out of lists and of the `campaign` event).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<CampaignNode>,
    /// What it targets (kept so that nodes joining later can be picked up).
    #[schema(value_type = TargetsJson)]
    pub targets: Targets,
    /// Serves no node before this (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<UnixMillis>,
    /// Serves only inside this weekly window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<WindowJson>)]
    pub window: Option<Window>,
    /// Awaiting approval, and asked to start at once: starts when approved.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub start_on_approval: bool,
    /// Its rollback, once asked for ([`CampaignService::rollback`]), with a state per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<CampaignRollback>,
}

impl Campaign {
    /// The campaign without its node list (lists, the `campaign` event).
    pub fn summary(&self) -> Self {
        Self {
            nodes: Vec::new(),
            ..self.clone()
        }
    }

    /// Recomputes the counts and progress from the nodes.
    pub fn recount(&mut self) {
        self.total_nodes = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        self.updated_nodes = self
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Succeeded)
            .count() as u32;
        self.failed_nodes = self
            .nodes
            .iter()
            .filter(|n| {
                matches!(
                    n.state,
                    NodeState::Failed | NodeState::TimedOut | NodeState::Rejected
                )
            })
            .count() as u32;
        let done: f64 = self
            .nodes
            .iter()
            .map(|n| {
                if n.state.is_terminal() {
                    1.0
                } else {
                    n.progress.clamp(0.0, 1.0)
                }
            })
            .sum();
        self.progress = if self.nodes.is_empty() {
            0.0
        } else {
            (done / self.nodes.len() as f64).clamp(0.0, 1.0)
        };
    }

    /// Whether every node is in a terminal state.
    pub fn all_finished(&self) -> bool {
        self.nodes.iter().all(|n| n.state.is_terminal())
    }

    /// Its schedule (`start_at`, `window`).
    pub fn schedule(&self) -> Schedule<'_> {
        Schedule {
            start_at: self.start_at,
            window: self.window.as_ref(),
        }
    }

    /// Whether the engine may serve it at `now` (Unix ms): running and inside its schedule.
    pub fn serving_at(&self, now: UnixMillis) -> bool {
        self.state == CampaignState::Running && self.schedule().allows(now)
    }
}

/// The `campaign_node` event: one node's change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CampaignNodeEvent {
    /// The campaign.
    pub campaign: CampaignId,
    /// The node.
    pub node: u32,
    /// Its state.
    pub state: NodeState,
    /// Its progress, 0..1.
    pub progress: f64,
    /// Why, if rejected or failed.
    pub reason: Option<String>,
}

/// Why a campaign operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CampaignError {
    /// No such campaign (404).
    #[error("no campaign {0}")]
    NotFound(CampaignId),
    /// Targeted nodes are in another unfinished campaign (409).
    #[error("nodes {nodes:?} are in campaign {campaign}, which is not finished")]
    Conflict {
        /// The nodes.
        nodes: Vec<u32>,
        /// The other campaign.
        campaign: CampaignId,
    },
    /// The action is not allowed in the campaign's state (409).
    #[error("cannot {} a campaign that is {}", action.label(), from.label())]
    InvalidTransition {
        /// The campaign's state.
        from: CampaignState,
        /// What was asked.
        action: CampaignAction,
    },
    /// No stored artefact has this id (422).
    #[error("no stored artefact {0}")]
    UnknownArtefact(String),
    /// The targets match no node (422).
    #[error("the targets match no node")]
    NoTargets,
    /// The spec is not valid (422): an empty or oversized node list, a name too long.
    #[error("invalid campaign: {0}")]
    InvalidSpec(String),
    /// The store failed (503 when busy or closed, 500 otherwise).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gateway's mesh node has stopped (503).
    #[error("the mesh node has stopped")]
    MeshStopped,
    /// The rollback intent is not usable (422): not signed by the fleet key, not a
    /// rollback, for another role or hardware, expired, or not covering the nodes.
    #[error("rollback intent: {0}")]
    BadIntent(String),
    /// No node of the campaign took its update (409).
    #[error("no node of the campaign runs its version; nothing to roll back")]
    NothingToRollBack,
}

/// The in-process facade; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct CampaignService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CampaignService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CampaignService").finish_non_exhaustive()
    }
}

struct Inner {
    shared: Weak<Shared>,
    store: Arc<dyn CampaignStore>,
    /// Every campaign by sequence number (the authority while the gateway runs).
    campaigns: Mutex<BTreeMap<u64, Campaign>>,
    /// Serialises changes (check, store write, apply), so two creations for the same nodes
    /// cannot both pass the conflict check.
    ops: tokio::sync::Mutex<()>,
    /// Wakes the engine after a change.
    wake: Notify,
}

impl CampaignService {
    /// A service over `store`, holding `restored` (from [`CampaignStore::load`]).
    pub(crate) fn new(
        shared: Weak<Shared>,
        store: Arc<dyn CampaignStore>,
        restored: Vec<Campaign>,
    ) -> Self {
        let campaigns = restored
            .into_iter()
            .filter_map(|c| c.id.seq().map(|s| (s, c)))
            .collect();
        Self {
            inner: Arc::new(Inner {
                shared,
                store,
                campaigns: Mutex::new(campaigns),
                ops: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
            }),
        }
    }

    pub(crate) fn shared(&self) -> Result<Arc<Shared>, CampaignError> {
        self.inner
            .shared
            .upgrade()
            .ok_or(CampaignError::MeshStopped)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Campaign>> {
        self.inner
            .campaigns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a campaign (state `created`, or `running` with `spec.start`).
    pub async fn create(&self, spec: CampaignSpec, actor: &str) -> Result<Campaign, CampaignError> {
        let shared = self.shared()?;
        if let Some(n) = &spec.name {
            if n.len() > MAX_NAME {
                return Err(CampaignError::InvalidSpec(format!(
                    "name is longer than {MAX_NAME} bytes"
                )));
            }
        }
        if let Targets::Nodes(n) = &spec.targets {
            if n.is_empty() {
                return Err(CampaignError::InvalidSpec("`nodes` is empty".into()));
            }
            if n.len() > MAX_LISTED_NODES {
                return Err(CampaignError::InvalidSpec(format!(
                    "more than {MAX_LISTED_NODES} nodes"
                )));
            }
            if n.contains(&0) {
                return Err(CampaignError::InvalidSpec("node id 0 is not a node".into()));
            }
        }
        let artefact = shared
            .stores
            .artefacts
            .list()
            .await?
            .into_iter()
            .find(|a| a.id == spec.artefact)
            .ok_or_else(|| CampaignError::UnknownArtefact(spec.artefact.clone()))?;
        let guard = self.inner.ops.lock().await;
        let now = now_millis();
        let nodes = resolve(&shared, &spec.targets, &artefact);
        if nodes.is_empty() {
            return Err(CampaignError::NoTargets);
        }
        let (seq, conflict) = {
            let map = self.map();
            let seq = map.keys().next_back().map_or(1, |s| s + 1);
            let conflict = map
                .values()
                .filter(|c| !c.state.is_finished())
                .find_map(|c| {
                    let clash: Vec<u32> = c
                        .nodes
                        .iter()
                        .map(|n| n.node)
                        .filter(|n| nodes.contains(n))
                        .collect();
                    (!clash.is_empty()).then(|| (clash, c.id.clone()))
                });
            (seq, conflict)
        };
        if let Some((nodes, campaign)) = conflict {
            return Err(CampaignError::Conflict { nodes, campaign });
        }
        let id = CampaignId::from_seq(seq);
        let approval = shared.config.require_approval;
        let mut c = Campaign {
            name: spec.name.clone().unwrap_or_else(|| {
                format!(
                    "{} {} {}",
                    artefact.role, artefact.hardware, artefact.version
                )
            }),
            id: id.clone(),
            artefact: artefact.id.clone(),
            version: artefact.version.clone(),
            strategy: spec.strategy,
            state: if approval {
                CampaignState::AwaitingApproval
            } else {
                CampaignState::Created
            },
            created_at_ms: now,
            updated_at_ms: now,
            total_nodes: 0,
            updated_nodes: 0,
            failed_nodes: 0,
            progress: 0.0,
            estimated_completion_ms: None,
            nodes: nodes
                .iter()
                .map(|&node| CampaignNode {
                    node,
                    state: NodeState::Queued,
                    progress: 0.0,
                    reason: None,
                    from_version: shared.registry.get(node).and_then(|n| n.firmware),
                    updated_at_ms: now,
                })
                .collect(),
            targets: spec.targets.clone(),
            start_at: spec.start_at,
            window: spec.window.clone(),
            start_on_approval: approval && spec.start,
            rollback: None,
        };
        c.recount();
        self.inner.store.create(c.clone()).await?;
        self.map().insert(seq, c.clone());
        self.trim();
        audit(&shared, actor, "campaign.create", &id, now).await;
        shared.bus.publish(GatewayEvent::Campaign(c.summary()));
        info!(campaign = %id, nodes = c.total_nodes, version = %c.version, "campaign created");
        drop(guard);
        if spec.start && !approval {
            return self.act(&id, CampaignAction::Start, actor).await;
        }
        Ok(c)
    }

    /// Approves a campaign awaiting approval (`require-approval`): it becomes `created`,
    /// or `running` if its creation asked to start at once.
    pub async fn approve(&self, id: &CampaignId, actor: &str) -> Result<Campaign, CampaignError> {
        let c = self.act(id, CampaignAction::Approve, actor).await?;
        if c.start_on_approval {
            return self.act(id, CampaignAction::Start, actor).await;
        }
        Ok(c)
    }

    /// Starts a created campaign.
    pub async fn start(&self, id: &CampaignId, actor: &str) -> Result<Campaign, CampaignError> {
        self.act(id, CampaignAction::Start, actor).await
    }

    /// Pauses a running campaign.
    pub async fn pause(&self, id: &CampaignId, actor: &str) -> Result<Campaign, CampaignError> {
        self.act(id, CampaignAction::Pause, actor).await
    }

    /// Resumes a paused campaign.
    pub async fn resume(&self, id: &CampaignId, actor: &str) -> Result<Campaign, CampaignError> {
        self.act(id, CampaignAction::Resume, actor).await
    }

    /// Cancels a campaign that is not finished; its unfinished nodes become `CANCELED`.
    pub async fn cancel(&self, id: &CampaignId, actor: &str) -> Result<Campaign, CampaignError> {
        self.act(id, CampaignAction::Cancel, actor).await
    }

    /// One campaign, with its nodes.
    pub async fn get(&self, id: &CampaignId) -> Result<Campaign, CampaignError> {
        self.copy_of(id).map(|(_, c)| c)
    }

    /// Campaign `id`'s key in the map and a copy of it (changes are made on the copy, written
    /// to the store, then put back), or `NotFound`.
    fn copy_of(&self, id: &CampaignId) -> Result<(u64, Campaign), CampaignError> {
        let not_found = || CampaignError::NotFound(id.clone());
        let seq = id.seq().ok_or_else(not_found)?;
        let c = self.map().get(&seq).cloned().ok_or_else(not_found)?;
        Ok((seq, c))
    }

    /// Every campaign, newest first, without nodes.
    pub async fn list(&self) -> Result<Vec<Campaign>, CampaignError> {
        Ok(self.map().values().rev().map(Campaign::summary).collect())
    }

    /// Does `action` to campaign `id`.
    pub async fn act(
        &self,
        id: &CampaignId,
        action: CampaignAction,
        actor: &str,
    ) -> Result<Campaign, CampaignError> {
        let shared = self.shared()?;
        let guard = self.inner.ops.lock().await;
        let (seq, mut c) = self.copy_of(id)?;
        let to = action
            .apply(c.state)
            .ok_or(CampaignError::InvalidTransition {
                from: c.state,
                action,
            })?;
        if action == CampaignAction::Start && !shared.mesh.is_running() {
            return Err(CampaignError::MeshStopped);
        }
        let now = now_millis();
        let mut changed = Vec::new();
        if to == CampaignState::Cancelled {
            for n in c.nodes.iter_mut().filter(|n| !n.state.is_terminal()) {
                n.state = NodeState::Canceled;
                n.updated_at_ms = now;
                changed.push(n.clone());
            }
            c.estimated_completion_ms = None;
        }
        c.state = to;
        c.updated_at_ms = now;
        c.recount();
        // The header and the nodes that changed, in one acknowledged write.
        let mut write = c.summary();
        write.nodes = changed.clone();
        self.inner.store.update(write).await?;
        if let Some(slot) = self.map().get_mut(&seq) {
            // The engine may have changed node progress meanwhile; keep its node values
            // for nodes this action did not change.
            slot.state = c.state;
            slot.updated_at_ms = now;
            for n in &changed {
                if let Some(m) = slot.nodes.iter_mut().find(|m| m.node == n.node) {
                    *m = n.clone();
                }
            }
            slot.recount();
            if to == CampaignState::Cancelled {
                slot.estimated_completion_ms = None;
            }
            c = slot.clone();
        }
        drop(guard);
        audit(
            &shared,
            actor,
            &format!("campaign.{}", action.label()),
            id,
            now,
        )
        .await;
        for n in &changed {
            shared
                .bus
                .publish(GatewayEvent::CampaignNode(CampaignNodeEvent {
                    campaign: id.clone(),
                    node: n.node,
                    state: n.state,
                    progress: n.progress,
                    reason: n.reason.clone(),
                }));
        }
        shared.bus.publish(GatewayEvent::Campaign(c.summary()));
        info!(campaign = %id, action = action.label(), state = c.state.label(), "campaign changed");
        self.inner.wake.notify_one();
        Ok(c)
    }

    /// Adds `nodes` to an unfinished campaign for listed nodes (a rollout's offers, see
    /// `rollout.rs`): new ones are `QUEUED`, ones that ended (a retry) are `QUEUED` again.
    /// The engine offers them with the campaign's scope, so only they take the image.
    /// Refused for a finished campaign or one that targets `all`, a role or a hardware
    /// (`InvalidTransition` / `InvalidSpec`), or nodes of another unfinished campaign.
    pub async fn add_nodes(
        &self,
        id: &CampaignId,
        nodes: &[u32],
        actor: &str,
    ) -> Result<Campaign, CampaignError> {
        self.edit_nodes(id, nodes, actor, true).await
    }

    /// Cancels `nodes` of an unfinished campaign (`CANCELED`): the engine takes them out of
    /// its scope, so nothing more is offered or sent to them (a rollout's `Cancel` order).
    pub async fn cancel_nodes(
        &self,
        id: &CampaignId,
        nodes: &[u32],
        actor: &str,
    ) -> Result<Campaign, CampaignError> {
        self.edit_nodes(id, nodes, actor, false).await
    }

    async fn edit_nodes(
        &self,
        id: &CampaignId,
        nodes: &[u32],
        actor: &str,
        add: bool,
    ) -> Result<Campaign, CampaignError> {
        let shared = self.shared()?;
        let seq = id
            .seq()
            .ok_or_else(|| CampaignError::NotFound(id.clone()))?;
        if nodes.contains(&0) {
            return Err(CampaignError::InvalidSpec("node id 0 is not a node".into()));
        }
        let guard = self.inner.ops.lock().await;
        let now = now_millis();
        let (c, changed) = {
            let mut map = self.map();
            if add {
                let clash = map
                    .iter()
                    .filter(|(s, c)| **s != seq && !c.state.is_finished())
                    .find_map(|(_, c)| {
                        let clash: Vec<u32> = c
                            .nodes
                            .iter()
                            .map(|n| n.node)
                            .filter(|n| nodes.contains(n))
                            .collect();
                        (!clash.is_empty()).then(|| (clash, c.id.clone()))
                    });
                if let Some((nodes, campaign)) = clash {
                    return Err(CampaignError::Conflict { nodes, campaign });
                }
            }
            let c = map
                .get_mut(&seq)
                .ok_or_else(|| CampaignError::NotFound(id.clone()))?;
            if c.state.is_finished() {
                return Err(CampaignError::InvalidTransition {
                    from: c.state,
                    action: if add {
                        CampaignAction::Start
                    } else {
                        CampaignAction::Cancel
                    },
                });
            }
            let Targets::Nodes(listed) = &mut c.targets else {
                return Err(CampaignError::InvalidSpec(
                    "only a campaign for listed nodes takes nodes one by one".into(),
                ));
            };
            if add && listed.len() + nodes.len() > MAX_LISTED_NODES {
                return Err(CampaignError::InvalidSpec(format!(
                    "more than {MAX_LISTED_NODES} nodes"
                )));
            }
            let mut changed = Vec::new();
            for &node in nodes {
                if add && !listed.contains(&node) {
                    listed.push(node);
                }
                match c.nodes.iter_mut().find(|n| n.node == node) {
                    Some(n) if add && n.state.is_terminal() => {
                        n.state = NodeState::Queued;
                        n.progress = 0.0;
                        n.reason = None;
                        n.updated_at_ms = now;
                        changed.push(n.clone());
                    }
                    Some(n) if !add && !n.state.is_terminal() => {
                        n.state = NodeState::Canceled;
                        n.updated_at_ms = now;
                        changed.push(n.clone());
                    }
                    Some(_) => {}
                    None if add => {
                        let n = CampaignNode {
                            node,
                            state: NodeState::Queued,
                            progress: 0.0,
                            reason: None,
                            from_version: shared.registry.get(node).and_then(|n| n.firmware),
                            updated_at_ms: now,
                        };
                        c.nodes.push(n.clone());
                        changed.push(n);
                    }
                    None => {}
                }
            }
            c.nodes.sort_by_key(|n| n.node);
            c.updated_at_ms = now;
            c.recount();
            (c.clone(), changed)
        };
        let mut write = c.summary();
        write.nodes.clone_from(&changed);
        self.inner.store.update(write).await?;
        drop(guard);
        let action = if add {
            "campaign.add_nodes"
        } else {
            "campaign.cancel_nodes"
        };
        audit(&shared, actor, action, id, now).await;
        for n in &changed {
            shared
                .bus
                .publish(GatewayEvent::CampaignNode(CampaignNodeEvent {
                    campaign: id.clone(),
                    node: n.node,
                    state: n.state,
                    progress: n.progress,
                    reason: n.reason.clone(),
                }));
        }
        shared.bus.publish(GatewayEvent::Campaign(c.summary()));
        self.inner.wake.notify_one();
        Ok(c)
    }

    /// Runs `f` over the campaigns in memory.
    pub(crate) fn with_campaigns<R>(
        &self,
        f: impl FnOnce(std::collections::btree_map::Values<'_, u64, Campaign>) -> R,
    ) -> R {
        f(self.map().values())
    }

    /// Changes campaign `id`'s rollback view under the change lock: `f` returns whether it
    /// changed it; then the header is written (acknowledged) and the campaign published.
    pub(crate) async fn set_rollback(
        &self,
        id: &CampaignId,
        f: impl FnOnce(&mut Option<CampaignRollback>) -> bool,
    ) -> Result<Campaign, CampaignError> {
        let shared = self.shared()?;
        let guard = self.inner.ops.lock().await;
        let (seq, mut c) = self.copy_of(id)?;
        if !f(&mut c.rollback) {
            return Ok(c);
        }
        c.updated_at_ms = now_millis();
        self.inner.store.update(c.summary()).await?;
        if let Some(slot) = self.map().get_mut(&seq) {
            slot.rollback.clone_from(&c.rollback);
            slot.updated_at_ms = c.updated_at_ms;
            c = slot.clone();
        }
        drop(guard);
        shared.bus.publish(GatewayEvent::Campaign(c.summary()));
        Ok(c)
    }

    /// Drops the oldest finished campaigns from memory beyond [`MAX_CAMPAIGNS`].
    fn trim(&self) {
        let mut map = self.map();
        while map.len() > MAX_CAMPAIGNS {
            let Some(old) = map
                .iter()
                .find(|(_, c)| c.state.is_finished())
                .map(|(s, _)| *s)
            else {
                break;
            };
            map.remove(&old);
        }
    }

    // ----------------------------------------------------------------- engine side

    /// Waits until a change may need the engine's attention.
    pub(crate) async fn changed(&self) {
        self.inner.wake.notified().await;
    }

    /// Wakes the engine.
    pub(crate) fn poke(&self) {
        self.inner.wake.notify_one();
    }

    /// Campaigns not finished (created, running, paused), with nodes.
    pub(crate) fn unfinished(&self) -> Vec<Campaign> {
        self.map()
            .values()
            .filter(|c| !c.state.is_finished())
            .cloned()
            .collect()
    }

    /// The engine's change to campaign `id`: `f` gets the campaign and the nodes of the
    /// other unfinished campaigns, under the change lock (so it never races a cancel);
    /// what changed is written before the lock is released: node state changes and new
    /// nodes always, the progress of every unfinished node when `save_progress`.
    /// Returns (finished by this change, nodes that changed, the campaign after); `None`
    /// if the campaign is not there or already finished.
    pub(crate) async fn engine_update(
        &self,
        id: &CampaignId,
        save_progress: bool,
        f: impl FnOnce(&mut Campaign, &BTreeSet<u32>),
    ) -> Option<(bool, Vec<CampaignNode>, Campaign)> {
        let seq = id.seq()?;
        let _guard = self.inner.ops.lock().await;
        let (before, after) = {
            let mut map = self.map();
            let others: BTreeSet<u32> = map
                .iter()
                .filter(|(s, c)| **s != seq && !c.state.is_finished())
                .flat_map(|(_, c)| c.nodes.iter().map(|n| n.node))
                .collect();
            let c = map.get_mut(&seq)?;
            if c.state.is_finished() {
                return None;
            }
            let before = c.clone();
            f(c, &others);
            c.recount();
            (before, c.clone())
        };
        let old: BTreeMap<u32, &CampaignNode> = before.nodes.iter().map(|n| (n.node, n)).collect();
        let mut changed = Vec::new();
        let mut write = Vec::new();
        for n in &after.nodes {
            let prev = old.get(&n.node);
            let state_changed = prev.map_or(true, |p| p.state != n.state || p.reason != n.reason);
            let progress_changed = prev.is_some_and(|p| (p.progress - n.progress).abs() > 1e-9);
            if state_changed || progress_changed {
                changed.push(n.clone());
            }
            if state_changed || (save_progress && !n.state.is_terminal()) {
                write.push(n.clone());
            }
        }
        let finished = after.state.is_finished();
        let header_changed = before.state != after.state
            || before.total_nodes != after.total_nodes
            || (before.progress - after.progress).abs() > 1e-9;
        let mut after = after;
        if !changed.is_empty() || finished {
            after.updated_at_ms = now_millis();
            if let Some(c) = self.map().get_mut(&seq) {
                c.updated_at_ms = after.updated_at_ms;
            }
        }
        if !write.is_empty() || (header_changed && (save_progress || finished)) {
            let mut c = after.summary();
            c.nodes = write;
            if let Err(e) = self.inner.store.update(c).await {
                warn!(campaign = %id, error = %e, "cannot store the campaign's progress");
            }
        }
        Some((finished, changed, after))
    }
}

/// The nodes `targets` resolves to now: from the registry (every node ever seen), the
/// gateway excluded. `all`, `role` and `hardware` leave out nodes known to be of another
/// role or hardware than the artefact's; listed nodes are taken as given (one the
/// artefact is not for ends `REJECTED`).
pub(crate) fn resolve(
    shared: &Shared,
    targets: &Targets,
    artefact: &ArtefactInfo,
) -> BTreeSet<u32> {
    let me = shared.mesh.node_id().0;
    if let Targets::Nodes(ids) = targets {
        return ids.iter().copied().filter(|&n| n != me && n != 0).collect();
    }
    shared.registry.with_nodes(|it| {
        it.filter(|n| n.node_id != me)
            .filter(|n| matches(targets, artefact, n))
            .map(|n| n.node_id)
            .collect()
    })
}

/// Whether registry node `n` is a target of `targets` for `artefact`.
pub(crate) fn matches(
    targets: &Targets,
    artefact: &ArtefactInfo,
    n: &crate::model::NodeStatus,
) -> bool {
    let fits = n.role.as_deref().map_or(true, |r| r == artefact.role)
        && n.hardware
            .as_deref()
            .map_or(true, |h| h.eq_ignore_ascii_case(&artefact.hardware));
    match targets {
        Targets::All => fits,
        Targets::Role(r) => n.role.as_deref() == Some(r.as_str()) && fits,
        Targets::Hardware(h) => {
            n.hardware
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(h))
                && fits
        }
        Targets::Nodes(ids) => ids.contains(&n.node_id),
    }
}

pub(crate) async fn audit(
    shared: &Shared,
    actor: &str,
    action: &str,
    id: &CampaignId,
    ts: UnixMillis,
) {
    let entry = AuditEntry {
        ts,
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: id.0.clone(),
    };
    if let Err(e) = shared.stores.audit.record(entry).await {
        warn!(error = %e, campaign = %id, action, "cannot write the audit log");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn targets_json_takes_exactly_one_key() {
        let t: Targets = serde_json::from_str(r#"{"all":true}"#).unwrap();
        assert_eq!(t, Targets::All);
        let t: Targets = serde_json::from_str(r#"{"nodes":[3,42]}"#).unwrap();
        assert_eq!(t, Targets::Nodes(vec![3, 42]));
        assert_eq!(
            serde_json::to_string(&Targets::Role("sensor".into())).unwrap(),
            r#"{"role":"sensor"}"#
        );
        for bad in [
            r#"{}"#,
            r#"{"all":false}"#,
            r#"{"all":true,"role":"x"}"#,
            r#"{"colour":"red"}"#,
            r#"{"nodes":"3"}"#,
        ] {
            assert!(serde_json::from_str::<Targets>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn state_machine() {
        use CampaignAction as A;
        use CampaignState as S;
        assert_eq!(A::Start.apply(S::Created), Some(S::Running));
        assert_eq!(A::Pause.apply(S::Running), Some(S::Paused));
        assert_eq!(A::Resume.apply(S::Paused), Some(S::Running));
        assert_eq!(A::Cancel.apply(S::Paused), Some(S::Cancelled));
        assert_eq!(A::Start.apply(S::Running), None);
        assert_eq!(A::Resume.apply(S::Running), None);
        assert_eq!(A::Pause.apply(S::Created), None);
        // The approval gate: only approve or cancel leave awaiting_approval.
        assert_eq!(A::Approve.apply(S::AwaitingApproval), Some(S::Created));
        assert_eq!(A::Cancel.apply(S::AwaitingApproval), Some(S::Cancelled));
        assert_eq!(A::Start.apply(S::AwaitingApproval), None);
        assert_eq!(A::Approve.apply(S::Created), None);
        assert_eq!(
            serde_json::to_string(&S::AwaitingApproval).unwrap(),
            "\"awaiting_approval\""
        );
        for done in [S::Completed, S::Failed, S::Cancelled] {
            for a in [A::Start, A::Pause, A::Resume, A::Cancel, A::Approve] {
                assert_eq!(a.apply(done), None);
            }
        }
    }

    #[test]
    fn ids_and_labels() {
        assert_eq!(CampaignId::from_seq(1).0, "c-000001");
        assert_eq!(
            CampaignId::parse("c-000042").and_then(|i| i.seq()),
            Some(42)
        );
        for bad in ["c-1", "x-000001", "c-00000a", "c-", "../etc"] {
            assert!(CampaignId::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&NodeState::TimedOut).unwrap(),
            "\"TIMED_OUT\""
        );
        assert_eq!(NodeState::parse("CANCELED"), Some(NodeState::Canceled));
    }
}
