//! Progressive rollouts in the gateway (issue 14): the `meshfleet-rollout` controller driven
//! on the gateway's clock, against the real fleet.
//!
//! ```text
//!  REST / dashboard / MQTT ──command──▶ RolloutService ──orders──▶ campaigns (scoped OFFER)
//!                                        │  ▲                       gateway node (ROLLBACK 707)
//!                     registry (604/710) ─┘  └─ campaign node states
//!                                        ▼
//!                      SQLite: record (controller serde state) + decision log
//! ```
//!
//! * **The clock** is the wall clock in microseconds since the Unix epoch, so the
//!   controller's deadlines mean the same after a restart; [`meshfleet_rollout::Rollout::handle_restarted`]
//!   moves them by the downtime.
//! * **Offers** go through the campaign service: the rollout's open campaign targets listed
//!   nodes, so the meshfleet OFFER carries their ids as its `scope` (`docs/ota-protocol.md`
//!   2.3.2) and only they take the image. More offers join that campaign
//!   ([`CampaignService::add_nodes`](crate::campaign::CampaignService::add_nodes)); a cancel takes a node out of it
//!   ([`CampaignService::cancel_nodes`](crate::campaign::CampaignService::cancel_nodes)); when it has finished, the next offers open a new
//!   one. The campaign's node states become the controller's reports: `IN_PROGRESS` is
//!   `OfferAccepted`, progress 1 or `SUCCEEDED` is `Installed` (never a success by itself),
//!   `FAILED`/`TIMED_OUT` is `TransferFailed`, `REJECTED` is `OfferRejected`.
//! * **Boots and health** come from the registry: a node whose status reports a new
//!   firmware version has booted it (`Booted`; a status package is sent by a running image,
//!   so it is its own confirmation); every new status report is a health sample (uptime,
//!   free heap, alert flags counted, and the application flag if the rollout names its bit).
//!   Presence is the registry's `online`.
//! * **Rollback**: a meshfleet node gets the operator's pre-signed rollback intent (given at
//!   creation; the gateway holds no signing key) as the signed ROLLBACK command, through
//!   the gateway's node; a stock node gets the previous artefact offered again (a campaign
//!   for it). Without an intent or a previous artefact the order is logged as not carried
//!   out (`rollback_unavailable` decision), so nobody believes in a rollback that cannot
//!   happen.
//! * **Persistence**: after every change the whole state (the controller's serde state and
//!   the driver's bookkeeping) is written as one record, and the new decisions appended, in
//!   one acknowledged transaction; a restarted gateway loads them and resumes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration as StdDuration;

use meshfleet_firmware::{Intent, IntentAction, Version};
use meshfleet_rollout as ro;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::campaign::{
    CampaignError, CampaignId, CampaignSpec, CampaignStrategy, NodeState as CampaignNodeState,
    Targets,
};
use crate::campaign_engine::GatewayOta;
use crate::events::GatewayEvent;
use crate::model::{ArtefactInfo, AuditEntry, UnixMillis};
use crate::store::{RolloutStore, StoreError, StoredRollout};
use crate::{now_millis, Shared};

/// How often the driver looks at the registry and the campaigns.
pub const TICK: StdDuration = StdDuration::from_millis(500);
/// Most rollouts kept (the oldest finished ones are dropped from memory beyond it).
pub const MAX_ROLLOUTS: usize = 200;
/// Most decisions of one rollout kept in memory and served (all are stored).
pub const MAX_DECISIONS: usize = 2_000;
/// Longest rollout name, bytes.
pub const MAX_NAME: usize = 200;
/// Most nodes one rollout may list.
pub const MAX_LISTED: usize = 10_000;
/// Decisions a `GET /rollouts/{id}` returns (the newest).
pub const DECISIONS_SERVED: usize = 500;

/// A rollout's id: `r-` and six or more digits (`r-000001`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct RolloutId(pub String);

impl RolloutId {
    /// The id of sequence number `seq`.
    pub fn from_seq(seq: u64) -> Self {
        Self(format!("r-{seq:06}"))
    }

    /// Its sequence number.
    pub fn seq(&self) -> Option<u64> {
        self.0.strip_prefix("r-")?.parse().ok()
    }

    /// Parses an id from a path: `r-` and digits only.
    pub fn parse(raw: &str) -> Option<Self> {
        let digits = raw.strip_prefix("r-")?;
        if digits.len() < 6 || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let id = Self(raw.to_owned());
        id.seq().map(|_| id)
    }
}

impl std::fmt::Display for RolloutId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `POST /rollouts` body.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// The new artefact's id (as `GET /firmware` lists).
    pub artefact: String,
    /// The artefact the nodes run now, if stored: stock nodes are rolled back by offering it
    /// again, and its version is the rollout's `previous_version`.
    #[serde(default)]
    pub previous_artefact: Option<String>,
    /// The version the nodes run now (default: the previous artefact's, else the version
    /// every targeted node reports).
    #[serde(default)]
    pub previous_version: Option<String>,
    /// The operator's signed rollback intent (`meshfleet firmware intent --rollback`, JSON):
    /// lets the gateway roll meshfleet nodes back by itself. Checked at creation: signed by
    /// the fleet key, action `rollback`, the previous version, the artefact's role and
    /// hardware, every targeted node in its scope, not expired.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub rollback_intent: Option<Value>,
    /// These nodes only (default: every node the artefact is for).
    #[serde(default)]
    pub nodes: Option<Vec<u32>>,
    /// A label.
    #[serde(default)]
    pub name: Option<String>,
    /// How the waves' campaigns distribute the image (default `broadcast`: the meshfleet
    /// protocol, whose scoped OFFER keeps a wave to its nodes; the stock announce is a
    /// broadcast every stock node of the role takes, see `docs/rollouts.md`).
    #[serde(default)]
    pub strategy: Option<CampaignStrategy>,
    /// The status package's `status` bits that mean "application healthy" (`None`: the
    /// flag is not used). A report without all of them counts as the flag down.
    #[serde(default)]
    pub app_ok_mask: Option<u8>,
    /// The controller's settings (waves, thresholds, timeouts in microseconds, seed,
    /// `start`), as `docs/rollouts.md` lists them; anything left out keeps its default.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub config: Option<RolloutOptions>,
}

/// Overrides of the controller's defaults (`docs/rollouts.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutOptions {
    /// Seed of the canary selection.
    #[serde(default)]
    pub seed: Option<u64>,
    /// The waves.
    #[serde(default)]
    pub waves: Option<Vec<ro::WaveSpec>>,
    /// Most nodes in flight at once.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Re-offers before a node fails.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Roll a failed node back at once (default true).
    #[serde(default)]
    pub rollback_failed_nodes: Option<bool>,
    /// Per-node deadlines.
    #[serde(default)]
    pub timeouts: Option<ro::Timeouts>,
    /// Health gate thresholds.
    #[serde(default)]
    pub health: Option<ro::HealthThresholds>,
    /// `immediately` or `await_approval`.
    #[serde(default)]
    pub start: Option<ro::StartMode>,
}

/// An operator's command (`POST /rollouts/{id}/{action}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RolloutAction {
    /// Start the next wave (or the first, or override a gate's pause).
    Approve,
    /// Stop offering.
    Pause,
    /// Undo an operator's pause.
    Resume,
    /// Start wave `to` now (body `{"to": N}`).
    Skip,
    /// Abort: roll the current wave's updated nodes back.
    Abort,
    /// Emergency rollback of every node that took the update, from any state.
    Rollback,
}

impl RolloutAction {
    /// The label (as in the path).
    pub fn label(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Skip => "skip",
            Self::Abort => "abort",
            Self::Rollback => "rollback",
        }
    }

    /// Parses a label.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Approve,
            Self::Pause,
            Self::Resume,
            Self::Skip,
            Self::Abort,
            Self::Rollback,
        ]
        .into_iter()
        .find(|a| a.label() == s)
    }

    /// The controller's command (`to` for a skip).
    pub fn command(self, to: Option<u16>) -> Option<ro::Command> {
        Some(match self {
            Self::Approve => ro::Command::Approve,
            Self::Pause => ro::Command::Pause,
            Self::Resume => ro::Command::Resume,
            Self::Skip => ro::Command::SkipTo { to: to? },
            Self::Abort => ro::Command::Abort,
            Self::Rollback => ro::Command::EmergencyRollback,
        })
    }
}

/// One wave of a rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutWave {
    /// Its index (0 = the canary).
    pub wave: u16,
    /// `waiting`, `running`, `passed`, `skipped` or `aborted`.
    pub state: String,
    /// Node counts (planned, members, offered, exposed, healthy, failed, ...).
    #[schema(value_type = Object)]
    pub counts: Value,
}

/// One node of a rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutNode {
    /// The node.
    pub node: u32,
    /// The wave it belongs to now.
    pub wave: u16,
    /// The wave the plan put it in.
    pub planned_wave: u16,
    /// `pending`, `offered`, `downloading`, `installed`, `booted`, `healthy`, `failed` or
    /// `cancelled`.
    pub state: String,
    /// The state's data (deadlines, the failure's reason), if any.
    #[schema(value_type = Option<Object>)]
    pub detail: Option<Value>,
    /// It took the new build.
    pub exposed: bool,
    /// It is in the mesh.
    pub online: bool,
    /// Offers it got.
    pub offers: u32,
    /// `meshfleet` or `stock`.
    pub kind: String,
    /// The version its last status report named.
    pub firmware: Option<String>,
    /// Its way back, once ordered (orders sent, restored when).
    #[schema(value_type = Option<Object>)]
    pub rollback: Option<Value>,
}

/// One decision of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutDecision {
    /// Its number in the rollout's log (from 1).
    pub n: u64,
    /// When (ms since the epoch).
    pub at_ms: UnixMillis,
    /// What (`planned`, `wave_started`, `failed`, `aborted`, `rollback_ordered`, ...; and
    /// the gateway's own `rollback_unavailable`, `offer_refused`).
    pub kind: String,
    /// Its data and reason.
    #[schema(value_type = Option<Object>)]
    pub detail: Option<Value>,
}

/// The `rollout_decision` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutDecisionEvent {
    /// The rollout.
    pub rollout: RolloutId,
    /// The decision.
    pub decision: RolloutDecision,
}

/// A rollout as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    /// Its id.
    pub id: RolloutId,
    /// Its label.
    pub name: String,
    /// The new artefact.
    pub artefact: String,
    /// Its version.
    pub version: String,
    /// The artefact stock nodes go back to, if named.
    pub previous_artefact: Option<String>,
    /// The version the nodes go back to.
    pub previous_version: String,
    /// How its campaigns distribute the image.
    pub strategy: CampaignStrategy,
    /// `running`, `awaiting_approval`, `paused`, `completed` or `aborted`.
    pub state: String,
    /// Why it is paused or aborted, the wave awaiting approval.
    #[schema(value_type = Option<Object>)]
    pub state_detail: Option<Value>,
    /// The wave in progress (0 = the canary).
    pub current_wave: u16,
    /// Nodes that took the new build.
    pub exposed: u32,
    /// Nodes with an update in flight.
    pub in_flight: u32,
    /// Nodes ordered back.
    pub rollback_ordered: u32,
    /// Nodes back on the previous image.
    pub rolled_back: u32,
    /// Seconds from the abort until every exposed node ran the old image again.
    pub restored_s: Option<f64>,
    /// A signed rollback intent was given: meshfleet nodes are rolled back by the gateway.
    pub auto_rollback: bool,
    /// When that intent expires (Unix seconds).
    pub rollback_intent_expires: Option<u64>,
    /// Created (ms since the epoch).
    pub created_at_ms: UnixMillis,
    /// Last change.
    pub updated_at_ms: UnixMillis,
    /// Who created it.
    pub created_by: String,
    /// The campaigns that carried its offers, oldest first.
    pub campaigns: Vec<CampaignId>,
    /// Its waves (left out of lists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<RolloutWave>,
    /// Its nodes (left out of lists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<RolloutNode>,
    /// The newest decisions, oldest first (left out of lists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<RolloutDecision>,
}

/// `GET /rollouts`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutList {
    /// Newest first, without waves, nodes and decisions.
    pub rollouts: Vec<Rollout>,
}

/// Why a rollout operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// No such rollout (404).
    #[error("no rollout {0}")]
    NotFound(RolloutId),
    /// No stored artefact has this id (422).
    #[error("no stored artefact {0}")]
    UnknownArtefact(String),
    /// The spec is not valid (422).
    #[error("invalid rollout: {0}")]
    InvalidSpec(String),
    /// The rollback intent is not usable (422).
    #[error("rollback intent: {0}")]
    BadIntent(String),
    /// The controller cannot plan (no node targeted, a bad configuration) (422).
    #[error("cannot plan the rollout: {0}")]
    Plan(String),
    /// The controller refused the command in the rollout's state (409).
    #[error("{0}")]
    Command(ro::CommandError),
    /// The store failed (503 when busy or closed, 500 otherwise).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gateway's mesh node has stopped (503).
    #[error("the mesh node has stopped")]
    MeshStopped,
}

/// What a node looked like the last time the driver looked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Seen {
    /// The campaign of its current attempt.
    campaign: Option<CampaignId>,
    /// Its state in that campaign.
    cstate: Option<CampaignNodeState>,
    /// `OfferAccepted` was reported for this attempt.
    accepted: bool,
    /// `Installed` was reported for this attempt.
    installed: bool,
    /// The firmware its last status report named.
    fw: Option<String>,
    /// The registry's report counter.
    reports: u64,
    /// Presence.
    online: bool,
    /// Status reports with an alert flag set (the controller's cumulative alert counter).
    alerts: u32,
}

/// The driver's bookkeeping, persisted with the controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Driver {
    /// The campaign that takes the next offers while it runs.
    open: Option<CampaignId>,
    /// Every campaign of the rollout.
    campaigns: Vec<CampaignId>,
    /// The campaign re-offering the previous artefact to stock nodes.
    reoffer: Option<CampaignId>,
    /// Per node.
    nodes: BTreeMap<u32, Seen>,
}

/// Everything about one rollout that is persisted.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    id: RolloutId,
    name: String,
    artefact: String,
    version: String,
    role: String,
    hardware: String,
    previous_artefact: Option<String>,
    previous_version: String,
    strategy: CampaignStrategy,
    app_ok_mask: Option<u8>,
    /// The rollout is for listed nodes only (no late joiners).
    #[serde(default)]
    listed: bool,
    /// The signed rollback intent, JSON text.
    intent: Option<String>,
    intent_expires: Option<u64>,
    created_at_ms: UnixMillis,
    updated_at_ms: UnixMillis,
    created_by: String,
    controller: ro::Rollout,
    driver: Driver,
    /// Decisions logged so far.
    decisions: u64,
}

struct Entry {
    rec: Record,
    /// The newest decisions (all are stored).
    log: Vec<RolloutDecision>,
    /// Loaded from the store: the controller is told once, on the first step.
    restarted: bool,
}

struct Inner {
    shared: Weak<Shared>,
    store: Arc<dyn RolloutStore>,
    rollouts: Mutex<BTreeMap<u64, Entry>>,
    /// Serialises every change (API commands and the driver's steps).
    ops: tokio::sync::Mutex<()>,
    wake: Notify,
}

/// The rollouts of the gateway; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct RolloutService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RolloutService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutService").finish_non_exhaustive()
    }
}

/// The controller's clock: microseconds since the Unix epoch.
fn ro_now() -> ro::Instant {
    let ms = u64::try_from(now_millis()).unwrap_or(0);
    ro::Instant::from_micros(ms.saturating_mul(1000))
}

fn ms_of(t: ro::Instant) -> UnixMillis {
    i64::try_from(t.as_micros() / 1000).unwrap_or(i64::MAX)
}

/// An externally tagged enum's tag and data: `"pending"` → (`pending`, none),
/// `{"failed": {...}}` → (`failed`, the object).
fn tag_and_detail(v: Value) -> (String, Option<Value>) {
    match v {
        Value::String(s) => (s, None),
        Value::Object(m) if m.len() == 1 => {
            let Some((k, v)) = m.into_iter().next() else {
                return (String::new(), None);
            };
            let detail = match v {
                Value::Object(_) => Some(v),
                Value::Null => None,
                other => Some(serde_json::json!({ "value": other })),
            };
            (k, detail)
        }
        other => (String::new(), Some(serde_json::json!({ "value": other }))),
    }
}

fn to_value<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn decision(n: u64, e: &ro::RolloutEvent) -> RolloutDecision {
    let (kind, detail) = tag_and_detail(to_value(&e.kind));
    RolloutDecision {
        n,
        at_ms: ms_of(e.at),
        kind,
        detail,
    }
}

impl Record {
    fn view(
        &self,
        full: bool,
        log: &[RolloutDecision],
        registry: &crate::registry::Registry,
    ) -> Rollout {
        let c = &self.controller;
        let summary = c.summary();
        let (state, state_detail) = tag_and_detail(to_value(&c.phase()));
        let mut out = Rollout {
            id: self.id.clone(),
            name: self.name.clone(),
            artefact: self.artefact.clone(),
            version: self.version.clone(),
            previous_artefact: self.previous_artefact.clone(),
            previous_version: self.previous_version.clone(),
            strategy: self.strategy,
            state,
            state_detail,
            current_wave: c.current_wave(),
            exposed: c.exposed(),
            in_flight: c.in_flight(),
            rollback_ordered: summary.rollback_ordered,
            rolled_back: summary.rolled_back,
            restored_s: summary.restored_s,
            auto_rollback: self.intent.is_some(),
            rollback_intent_expires: self.intent_expires,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            created_by: self.created_by.clone(),
            campaigns: self.driver.campaigns.clone(),
            waves: Vec::new(),
            nodes: Vec::new(),
            decisions: Vec::new(),
        };
        if !full {
            return out;
        }
        out.waves = summary
            .waves
            .iter()
            .map(|w| RolloutWave {
                wave: w.wave,
                state: tag_and_detail(to_value(&w.state)).0,
                counts: to_value(&w.counts),
            })
            .collect();
        out.nodes = c
            .nodes()
            .map(|(id, r)| {
                let (state, detail) = tag_and_detail(to_value(&r.state()));
                RolloutNode {
                    node: id.0,
                    wave: r.wave(),
                    planned_wave: r.planned_wave(),
                    state,
                    detail,
                    exposed: r.exposed(),
                    online: r.online(),
                    offers: r.offers(),
                    kind: tag_and_detail(to_value(&r.kind())).0,
                    firmware: registry.get(id.0).and_then(|n| n.firmware),
                    rollback: r.rollback().map(to_value),
                }
            })
            .collect();
        let skip = log.len().saturating_sub(DECISIONS_SERVED);
        out.decisions = log[skip..].to_vec();
        out
    }

    fn stored(&self, new: &[RolloutDecision]) -> Result<StoredRollout, StoreError> {
        let record = serde_json::to_string(self).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let new_decisions = new
            .iter()
            .map(|d| {
                serde_json::to_string(d)
                    .map(|s| (d.n, s))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StoredRollout {
            seq: self.id.seq().unwrap_or(0),
            id: self.id.0.clone(),
            state: tag_and_detail(to_value(&self.controller.phase())).0,
            created_at: self.created_at_ms,
            updated_at: self.updated_at_ms,
            record,
            new_decisions,
        })
    }

    /// Whether the driver has nothing left to do: aborted with every exposed node back, or
    /// completed with every node decided. (A completed rollout whose deferred nodes come
    /// back later is still driven: they are offered then.)
    fn settled(&self) -> bool {
        let c = &self.controller;
        match c.phase() {
            ro::Phase::Aborted { .. } => {
                let s = c.summary();
                s.rollback_ordered == 0 || s.restored_s.is_some()
            }
            ro::Phase::Completed => c.nodes().all(|(_, r)| {
                matches!(
                    r.state(),
                    ro::NodeState::Healthy { .. } | ro::NodeState::Failed { .. }
                )
            }),
            _ => false,
        }
    }
}

/// The controller's view of the fleet: each node's branch (the gateway's child it hangs
/// under) and subtree size, from the gateway's tree.
fn topology_of(tree: &meshfleet_wire::NodeTree) -> BTreeMap<u32, (u32, u32)> {
    fn size(t: &meshfleet_wire::NodeTree) -> u32 {
        1 + t.subs.iter().map(size).sum::<u32>()
    }
    let mut out = BTreeMap::new();
    for branch in &tree.subs {
        let mut stack = vec![branch];
        while let Some(n) = stack.pop() {
            out.insert(n.node_id.0, (branch.node_id.0, size(n)));
            stack.extend(n.subs.iter());
        }
    }
    out
}

/// Checks the operator's rollback intent against the rollout; returns its JSON text and
/// expiry.
pub(crate) fn check_intent(
    shared: &Shared,
    raw: &Value,
    role: &str,
    hardware: &str,
    previous: Option<&str>,
    previous_sha: Option<&str>,
    nodes: &BTreeSet<u32>,
) -> Result<(String, u64), RolloutError> {
    let bad = |s: String| RolloutError::BadIntent(s);
    let text = serde_json::to_vec(raw).map_err(|e| bad(e.to_string()))?;
    let intent = Intent::from_json(&text).map_err(|e| bad(e.to_string()))?;
    if intent.action != IntentAction::Rollback {
        return Err(bad("it is an install intent; a rollout needs a rollback intent (`meshfleet firmware intent --rollback`)".into()));
    }
    let key = shared.firmware_key.as_ref().ok_or_else(|| {
        bad("the gateway has no firmware key to check it with (`firmware-key`)".into())
    })?;
    intent
        .verify_signature(key)
        .map_err(|e| bad(format!("signature: {e}")))?;
    if intent.role != role || !intent.hardware.eq_ignore_ascii_case(hardware) {
        return Err(bad(format!(
            "it is for {} {}, the artefact for {role} {hardware}",
            intent.role, intent.hardware
        )));
    }
    // A campaign's rollback goes back to whatever the intent names (`None`).
    if let Some(previous) = previous {
        let want = Version::parse(previous).map_err(|e| {
            bad(format!(
                "the previous version {previous:?} is not a version: {e}"
            ))
        })?;
        if intent.version != want {
            return Err(bad(format!(
                "it names version {}, the rollout goes back to {previous}",
                intent.version
            )));
        }
    }
    if let Some(sha) = previous_sha {
        if !intent.sha256.to_string().eq_ignore_ascii_case(sha) {
            return Err(bad(
                "it names another image than the previous artefact".into()
            ));
        }
    }
    if !intent.nodes.is_empty() {
        let scope: BTreeSet<u32> = intent.nodes.iter().copied().collect();
        let missing: Vec<u32> = nodes.difference(&scope).copied().take(10).collect();
        if !missing.is_empty() {
            return Err(bad(format!(
                "targeted nodes outside its scope (first ones: {missing:?})"
            )));
        }
    }
    let now_s = u64::try_from(now_millis() / 1000).unwrap_or(0);
    if intent.expires <= now_s {
        return Err(bad(format!("it expired at Unix time {}", intent.expires)));
    }
    let json = String::from_utf8(intent.to_json()).map_err(|e| bad(e.to_string()))?;
    Ok((json, intent.expires))
}

impl RolloutService {
    /// A service over `store` (nothing loaded yet: [`RolloutService::restore`]).
    pub(crate) fn new(shared: Weak<Shared>, store: Arc<dyn RolloutStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared,
                store,
                rollouts: Mutex::new(BTreeMap::new()),
                ops: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
            }),
        }
    }

    fn shared(&self) -> Result<Arc<Shared>, RolloutError> {
        self.inner.shared.upgrade().ok_or(RolloutError::MeshStopped)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.inner
            .rollouts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads the stored rollouts (at start); the unfinished ones resume on the driver's
    /// first step.
    pub(crate) async fn restore(&self) {
        let stored = match self.inner.store.load().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot read the stored rollouts; starting without");
                return;
            }
        };
        let mut map = self.map();
        for s in stored {
            let rec: Record = match serde_json::from_str(&s.record) {
                Ok(r) => r,
                Err(e) => {
                    warn!(rollout = %s.id, error = %e, "unreadable rollout record skipped");
                    continue;
                }
            };
            let mut log: Vec<RolloutDecision> = s
                .new_decisions
                .iter()
                .filter_map(|(_, d)| serde_json::from_str(d).ok())
                .collect();
            let skip = log.len().saturating_sub(MAX_DECISIONS);
            log.drain(..skip);
            info!(rollout = %rec.id, state = %s.state, "rollout restored");
            map.insert(
                s.seq,
                Entry {
                    rec,
                    log,
                    restarted: true,
                },
            );
        }
        drop(map);
        // Memory holds the newest; the oldest settled ones stay in the store only.
        self.trim();
    }

    /// Creates a rollout and plans it; its first wave starts at once unless its config
    /// says `await_approval`.
    pub async fn create(&self, spec: RolloutSpec, actor: &str) -> Result<Rollout, RolloutError> {
        let shared = self.shared()?;
        if spec.name.as_ref().is_some_and(|n| n.len() > MAX_NAME) {
            return Err(RolloutError::InvalidSpec(format!(
                "name is longer than {MAX_NAME} bytes"
            )));
        }
        if let Some(n) = &spec.nodes {
            if n.is_empty() {
                return Err(RolloutError::InvalidSpec("`nodes` is empty".into()));
            }
            if n.len() > MAX_LISTED {
                return Err(RolloutError::InvalidSpec(format!(
                    "more than {MAX_LISTED} nodes"
                )));
            }
            if n.contains(&0) {
                return Err(RolloutError::InvalidSpec("node id 0 is not a node".into()));
            }
        }
        let artefacts = shared.stores.artefacts.list().await?;
        let find = |id: &str| -> Result<ArtefactInfo, RolloutError> {
            artefacts
                .iter()
                .find(|a| a.id == id)
                .cloned()
                .ok_or_else(|| RolloutError::UnknownArtefact(id.to_owned()))
        };
        let art = find(&spec.artefact)?;
        let prev_art = spec.previous_artefact.as_deref().map(find).transpose()?;
        if let Some(p) = &prev_art {
            if p.role != art.role || !p.hardware.eq_ignore_ascii_case(&art.hardware) {
                return Err(RolloutError::InvalidSpec(
                    "the previous artefact is for another role or hardware".into(),
                ));
            }
        }
        let me = shared.mesh.node_id().0;
        // The fleet: the listed nodes, or every node the artefact is for.
        let nodes: BTreeSet<u32> = match &spec.nodes {
            Some(n) => n.iter().copied().filter(|&n| n != me).collect(),
            None => shared.registry.with_nodes(|it| {
                it.filter(|n| n.node_id != me)
                    .filter(|n| crate::campaign::matches(&Targets::All, &art, n))
                    .map(|n| n.node_id)
                    .collect()
            }),
        };
        if nodes.is_empty() {
            return Err(RolloutError::Plan("no node is targeted".into()));
        }
        let previous_version = match (&spec.previous_version, &prev_art) {
            (Some(v), Some(p)) if *v != p.version => {
                return Err(RolloutError::InvalidSpec(format!(
                    "previous_version {v} is not the previous artefact's {}",
                    p.version
                )))
            }
            (Some(v), _) => v.clone(),
            (None, Some(p)) => p.version.clone(),
            (None, None) => {
                let seen: BTreeSet<String> = nodes
                    .iter()
                    .filter_map(|n| shared.registry.get(*n).and_then(|s| s.firmware))
                    .collect();
                match (seen.len(), seen.into_iter().next()) {
                    (1, Some(v)) => v,
                    _ => {
                        return Err(RolloutError::InvalidSpec(
                            "the targeted nodes do not all report one version: name `previous_version` or `previous_artefact`".into(),
                        ))
                    }
                }
            }
        };
        let version = |s: &str| {
            ro::ImageVersion::new(s).map_err(|e| RolloutError::InvalidSpec(format!("{s:?}: {e}")))
        };
        let mut config =
            ro::RolloutConfig::new(version(&art.version)?, version(&previous_version)?);
        if let Some(o) = spec.config.clone() {
            config.seed = o.seed.unwrap_or(config.seed);
            config.waves = o.waves.unwrap_or(config.waves);
            config.max_in_flight = o.max_in_flight.unwrap_or(config.max_in_flight);
            config.max_retries = o.max_retries.unwrap_or(config.max_retries);
            config.rollback_failed_nodes = o
                .rollback_failed_nodes
                .unwrap_or(config.rollback_failed_nodes);
            config.timeouts = o.timeouts.unwrap_or(config.timeouts);
            config.health = o.health.unwrap_or(config.health);
            config.start = o.start.unwrap_or(config.start);
        }
        config
            .validate()
            .map_err(|e| RolloutError::Plan(e.to_string()))?;
        let intent = spec
            .rollback_intent
            .as_ref()
            .map(|raw| {
                check_intent(
                    &shared,
                    raw,
                    &art.role,
                    &art.hardware,
                    Some(&previous_version),
                    prev_art.as_ref().map(|p| p.image_sha256.as_str()),
                    &nodes,
                )
            })
            .transpose()?;
        let topo = shared
            .mesh
            .topology()
            .await
            .map(|t| topology_of(&t))
            .unwrap_or_default();
        let infos: Vec<ro::NodeInfo> = nodes
            .iter()
            .map(|&id| {
                let reg = shared.registry.get(id);
                let (branch, subtree) = topo.get(&id).copied().unwrap_or((id, 1));
                ro::NodeInfo {
                    // A node that sends meshfleet telemetry names its OTA role; a stock node
                    // sends only the status package.
                    kind: if reg.as_ref().is_some_and(|r| r.role.is_some()) {
                        ro::NodeKind::Meshfleet
                    } else {
                        ro::NodeKind::Stock
                    },
                    role: reg
                        .as_ref()
                        .and_then(|r| r.role.clone())
                        .unwrap_or_default(),
                    hardware: reg
                        .as_ref()
                        .and_then(|r| r.hardware.clone())
                        .unwrap_or_default(),
                    branch: ro::NodeId(branch),
                    subtree_size: subtree,
                    online: reg.as_ref().is_some_and(|r| r.online),
                    ..ro::NodeInfo::leaf(ro::NodeId(id))
                }
            })
            .collect();
        let guard = self.inner.ops.lock().await;
        let now = ro_now();
        let controller =
            ro::Rollout::new(now, config, infos).map_err(|e| RolloutError::Plan(e.to_string()))?;
        let seq = self.map().keys().next_back().map_or(1, |s| s + 1);
        let id = RolloutId::from_seq(seq);
        let driver = Driver {
            nodes: nodes
                .iter()
                .map(|&n| {
                    let reg = shared.registry.get(n);
                    (
                        n,
                        Seen {
                            fw: reg.as_ref().and_then(|r| r.firmware.clone()),
                            reports: reg.as_ref().map_or(0, |r| r.reports),
                            online: reg.as_ref().is_some_and(|r| r.online),
                            ..Seen::default()
                        },
                    )
                })
                .collect(),
            ..Driver::default()
        };
        let wall = now_millis();
        let rec = Record {
            name: spec
                .name
                .clone()
                .unwrap_or_else(|| format!("{} {} {}", art.role, art.hardware, art.version)),
            id: id.clone(),
            artefact: art.id.clone(),
            version: art.version.clone(),
            role: art.role.clone(),
            hardware: art.hardware.clone(),
            previous_artefact: prev_art.map(|p| p.id),
            previous_version,
            strategy: spec.strategy.unwrap_or(CampaignStrategy::Broadcast),
            app_ok_mask: spec.app_ok_mask,
            listed: spec.nodes.is_some(),
            intent_expires: intent.as_ref().map(|i| i.1),
            intent: intent.map(|i| i.0),
            created_at_ms: wall,
            updated_at_ms: wall,
            created_by: actor.to_owned(),
            controller,
            driver,
            decisions: 0,
        };
        let mut entry = Entry {
            rec,
            log: Vec::new(),
            restarted: false,
        };
        self.process(&shared, &mut entry, now).await;
        let view = entry.rec.view(true, &entry.log, &shared.registry);
        self.map().insert(seq, entry);
        if let Err(e) = self.persist(&shared, seq, true).await {
            // Not stored: not created (a campaign it opened meanwhile stays, visible).
            self.map().remove(&seq);
            return Err(e);
        }
        self.trim();
        drop(guard);
        audit(&shared, actor, "rollout.create", &id).await;
        info!(rollout = %id, nodes = nodes.len(), version = %view.version, "rollout created");
        self.inner.wake.notify_one();
        Ok(view)
    }

    /// Every rollout, newest first (without waves, nodes and decisions).
    pub fn list(&self) -> Result<Vec<Rollout>, RolloutError> {
        let shared = self.shared()?;
        Ok(self
            .map()
            .values()
            .rev()
            .map(|e| e.rec.view(false, &[], &shared.registry))
            .collect())
    }

    /// One rollout with its waves, nodes and newest decisions.
    pub fn get(&self, id: &RolloutId) -> Result<Rollout, RolloutError> {
        let shared = self.shared()?;
        let seq = id.seq().ok_or_else(|| RolloutError::NotFound(id.clone()))?;
        self.map()
            .get(&seq)
            .map(|e| e.rec.view(true, &e.log, &shared.registry))
            .ok_or_else(|| RolloutError::NotFound(id.clone()))
    }

    /// An operator's command; refused (409) when it does not apply in the rollout's state.
    pub async fn command(
        &self,
        id: &RolloutId,
        command: ro::Command,
        actor: &str,
    ) -> Result<Rollout, RolloutError> {
        let shared = self.shared()?;
        let seq = id.seq().ok_or_else(|| RolloutError::NotFound(id.clone()))?;
        let guard = self.inner.ops.lock().await;
        let mut work = self
            .checkout(seq)
            .ok_or_else(|| RolloutError::NotFound(id.clone()))?;
        let now = ro_now();
        let result = work.rec.controller.handle_command(now, command);
        let mut saved = Ok(());
        if result.is_ok() {
            self.process(&shared, &mut work, now).await;
            self.checkin(seq, work);
            saved = self.persist(&shared, seq, true).await;
        }
        let view = self.get(id)?;
        drop(guard);
        result.map_err(RolloutError::Command)?;
        saved?;
        let action = match command {
            ro::Command::Approve => "approve",
            ro::Command::Pause => "pause",
            ro::Command::Resume => "resume",
            ro::Command::SkipTo { .. } => "skip",
            ro::Command::Abort => "abort",
            ro::Command::EmergencyRollback => "rollback",
        };
        audit(&shared, actor, &format!("rollout.{action}"), id).await;
        info!(rollout = %id, action, state = %view.state, "rollout command");
        self.inner.wake.notify_one();
        Ok(view)
    }

    fn trim(&self) {
        let mut map = self.map();
        while map.len() > MAX_ROLLOUTS {
            let Some(old) = map.iter().find(|(_, e)| e.rec.settled()).map(|(s, _)| *s) else {
                break;
            };
            map.remove(&old);
        }
    }

    /// A working copy of rollout `seq` for a change: the record, and the newest decision
    /// (numbering goes on from it). The rollout stays readable meanwhile; the caller
    /// holds `ops`, so nothing else changes it.
    fn checkout(&self, seq: u64) -> Option<Entry> {
        let mut map = self.map();
        let e = map.get_mut(&seq)?;
        Some(Entry {
            rec: e.rec.clone(),
            log: e.log.last().cloned().into_iter().collect(),
            restarted: std::mem::take(&mut e.restarted),
        })
    }

    /// Puts a working copy back: its record, and its new decisions after the log.
    fn checkin(&self, seq: u64, work: Entry) {
        let mut map = self.map();
        let Some(e) = map.get_mut(&seq) else {
            return;
        };
        let last = e.log.last().map_or(e.rec.decisions, |d| d.n);
        let stored = e.rec.decisions;
        e.rec = work.rec;
        // The stored count is the map's (a save may have moved it); keep the larger.
        e.rec.decisions = e.rec.decisions.max(stored);
        e.log.extend(work.log.into_iter().filter(|d| d.n > last));
        let skip = e.log.len().saturating_sub(MAX_DECISIONS);
        // Dropped from memory only once stored: keep the unsaved ones.
        let stored_skip = e
            .log
            .iter()
            .take(skip)
            .take_while(|d| d.n <= e.rec.decisions)
            .count();
        e.log.drain(..stored_skip);
    }

    /// Writes rollout `seq`'s record and the decisions not stored yet, in one acknowledged
    /// transaction; publishes the rollout if asked.
    async fn persist(&self, shared: &Shared, seq: u64, publish: bool) -> Result<(), RolloutError> {
        let (stored, last, view) = {
            let mut map = self.map();
            let Some(e) = map.get_mut(&seq) else {
                return Ok(());
            };
            e.rec.updated_at_ms = now_millis();
            let fresh: Vec<RolloutDecision> = e
                .log
                .iter()
                .filter(|d| d.n > e.rec.decisions)
                .cloned()
                .collect();
            let last = fresh.last().map_or(e.rec.decisions, |d| d.n);
            let mut rec = e.rec.clone();
            rec.decisions = last;
            let view = publish.then(|| rec.view(false, &[], &shared.registry));
            (rec.stored(&fresh)?, last, view)
        };
        self.inner.store.put(stored).await?;
        if let Some(e) = self.map().get_mut(&seq) {
            e.rec.decisions = e.rec.decisions.max(last);
        }
        if let Some(v) = view {
            shared.bus.publish(GatewayEvent::Rollout(v));
        }
        Ok(())
    }

    // ------------------------------------------------------------------ the driver

    /// One look at the fleet for every rollout that is not settled.
    async fn step_all(&self, shared: &Arc<Shared>) {
        let _guard = self.inner.ops.lock().await;
        let seqs: Vec<u64> = self
            .map()
            .iter()
            .filter(|(_, e)| e.restarted || !e.rec.settled())
            .map(|(s, _)| *s)
            .collect();
        for seq in seqs {
            let Some(mut entry) = self.checkout(seq) else {
                continue;
            };
            let now = ro_now();
            if entry.restarted {
                entry.rec.controller.handle_restarted(now);
                info!(rollout = %entry.rec.id, "rollout resumed after a restart");
            }
            let before_decisions = entry.log.last().map_or(entry.rec.decisions, |d| d.n);
            let before_driver = entry.rec.driver.clone();
            self.observe(shared, &mut entry, now).await;
            // Deadlines: a few at a time are enough (each call handles all that are due).
            for _ in 0..8 {
                match entry.rec.controller.poll_timeout() {
                    Some((at, _)) if at <= now => entry.rec.controller.handle_timeout(now),
                    _ => break,
                }
            }
            self.process(shared, &mut entry, now).await;
            let after = entry.log.last().map_or(entry.rec.decisions, |d| d.n);
            let changed = after != before_decisions || entry.rec.driver != before_driver;
            let id = entry.rec.id.clone();
            self.checkin(seq, entry);
            if changed {
                if let Err(e) = self.persist(shared, seq, after != before_decisions).await {
                    warn!(rollout = %id, error = %e, "cannot store the rollout");
                }
            }
        }
    }

    /// Feeds the controller what changed: presence, campaign node states, boots, health.
    async fn observe(&self, shared: &Shared, entry: &mut Entry, now: ro::Instant) {
        let rec = &mut entry.rec;
        // Only the campaigns of the nodes' current attempts matter.
        let wanted: BTreeSet<CampaignId> = rec
            .driver
            .nodes
            .values()
            .filter_map(|s| s.campaign.clone())
            .collect();
        let mut campaigns: BTreeMap<CampaignId, crate::campaign::Campaign> = BTreeMap::new();
        for id in wanted {
            if let Ok(c) = shared.campaigns.get(&id).await {
                campaigns.insert(id, c);
            }
        }
        if !rec.listed {
            Self::late_joiners(shared, rec, now).await;
        }
        let ids: Vec<ro::NodeId> = rec.controller.nodes().map(|(id, _)| id).collect();
        let target = rec.version.clone();
        let previous = rec.previous_version.clone();
        for id in ids {
            let reg = shared.registry.get(id.0);
            let seen = rec.driver.nodes.entry(id.0).or_default();
            let c = &mut rec.controller;
            let online = reg.as_ref().is_some_and(|r| r.online);
            if online != seen.online {
                seen.online = online;
                if online {
                    c.handle_node_online(now, id);
                } else {
                    c.handle_node_offline(now, id);
                }
            }
            // The attempt's campaign.
            if let Some(cn) = seen
                .campaign
                .as_ref()
                .and_then(|cid| campaigns.get(cid))
                .and_then(|camp| camp.nodes.iter().find(|n| n.node == id.0))
            {
                // A transient refusal (busy, still on trial after its last update) leaves
                // the node IN_PROGRESS with that reason: not accepted; the offer deadline
                // retries it.
                let transient = matches!(cn.reason.as_deref(), Some("busy" | "on_trial"));
                let accept = match cn.state {
                    CampaignNodeState::InProgress => !transient || cn.progress > 0.0,
                    CampaignNodeState::Succeeded => true,
                    _ => false,
                };
                if accept && !seen.accepted {
                    seen.accepted = true;
                    c.handle_report(now, id, ro::NodeReport::OfferAccepted);
                }
                let installed = cn.state == CampaignNodeState::Succeeded
                    || (cn.state == CampaignNodeState::InProgress && cn.progress >= 1.0);
                if installed && !seen.installed {
                    seen.installed = true;
                    c.handle_report(now, id, ro::NodeReport::Installed);
                }
                if seen.cstate != Some(cn.state) {
                    match cn.state {
                        // The node's OTA engine reported that it went back to its previous
                        // image by itself (the new one did not confirm its boot): a boot of
                        // the previous version, which the controller judges a fall-back.
                        CampaignNodeState::Failed
                            if seen.installed && cn.reason.as_deref() == Some("rolled_back") =>
                        {
                            if let Ok(version) = ro::ImageVersion::new(previous.clone()) {
                                c.handle_report(
                                    now,
                                    id,
                                    ro::NodeReport::Booted {
                                        version,
                                        confirmed: true,
                                    },
                                );
                            }
                        }
                        CampaignNodeState::Failed | CampaignNodeState::TimedOut => {
                            c.handle_report(now, id, ro::NodeReport::TransferFailed);
                        }
                        CampaignNodeState::Rejected => {
                            let reason = if cn.reason.as_deref() == Some("busy") {
                                ro::RejectReason::Busy
                            } else {
                                ro::RejectReason::Incompatible
                            };
                            c.handle_report(now, id, ro::NodeReport::OfferRejected { reason });
                        }
                        _ => {}
                    }
                    seen.cstate = Some(cn.state);
                }
            }
            // Its status reports: a new version is a boot, every report a health sample.
            let Some(reg) = reg else {
                continue;
            };
            if reg.reports == seen.reports {
                continue;
            }
            seen.reports = reg.reports;
            if reg.firmware.is_some() && reg.firmware != seen.fw {
                seen.fw.clone_from(&reg.firmware);
                if let Some(version) = reg
                    .firmware
                    .as_deref()
                    .and_then(|v| ro::ImageVersion::new(v).ok())
                {
                    // The new version without an "installed" seen (the campaign's state
                    // was missed): the boot says it took the image.
                    if version.as_str() == target && !seen.installed {
                        seen.installed = true;
                    }
                    c.handle_report(
                        now,
                        id,
                        ro::NodeReport::Booted {
                            version,
                            confirmed: true,
                        },
                    );
                }
            }
            if let Some(s) = &reg.status {
                if s.alert_flags != 0 {
                    seen.alerts = seen.alerts.saturating_add(1);
                }
                let sample = ro::HealthSample {
                    uptime: ro::Duration::from_secs(u64::from(s.uptime)),
                    // The status package has no boot counter: uptime resets are the signal.
                    reboots: 0,
                    free_heap: u32::from(s.free_memory_kb).saturating_mul(1024),
                    alerts: seen.alerts,
                    app_ok: rec.app_ok_mask.map(|m| s.device_status & m == m),
                };
                c.handle_health(now, id, sample);
            }
        }
    }

    /// Nodes that appeared since the rollout was planned and that the artefact is for: told
    /// to the controller once each (it adds them to the last wave if that wave reaches
    /// 100 %, so a newcomer is never exposed before the full rollout is).
    async fn late_joiners(shared: &Shared, rec: &mut Record, now: ro::Instant) {
        let me = shared.mesh.node_id().0;
        let fits = |v: &Option<String>, want: &str, ci: bool| {
            v.as_deref().map_or(true, |x| {
                if ci {
                    x.eq_ignore_ascii_case(want)
                } else {
                    x == want
                }
            })
        };
        let new: Vec<crate::model::NodeStatus> = shared.registry.with_nodes(|it| {
            it.filter(|n| n.node_id != me && n.online)
                .filter(|n| !rec.driver.nodes.contains_key(&n.node_id))
                .filter(|n| {
                    fits(&n.role, &rec.role, false) && fits(&n.hardware, &rec.hardware, true)
                })
                .take(256)
                .cloned()
                .collect()
        });
        if new.is_empty() {
            return;
        }
        let topo = shared
            .mesh
            .topology()
            .await
            .map(|t| topology_of(&t))
            .unwrap_or_default();
        for n in new {
            let (branch, subtree) = topo.get(&n.node_id).copied().unwrap_or((n.node_id, 1));
            rec.driver.nodes.insert(
                n.node_id,
                Seen {
                    fw: n.firmware.clone(),
                    reports: n.reports,
                    online: n.online,
                    ..Seen::default()
                },
            );
            rec.controller.handle_node_joined(
                now,
                ro::NodeInfo {
                    kind: if n.role.is_some() {
                        ro::NodeKind::Meshfleet
                    } else {
                        ro::NodeKind::Stock
                    },
                    role: n.role.clone().unwrap_or_default(),
                    hardware: n.hardware.clone().unwrap_or_default(),
                    branch: ro::NodeId(branch),
                    subtree_size: subtree,
                    online: n.online,
                    ..ro::NodeInfo::leaf(ro::NodeId(n.node_id))
                },
            );
        }
    }

    /// Carries out the controller's orders and logs its decisions.
    async fn process(&self, shared: &Shared, entry: &mut Entry, now: ro::Instant) {
        let mut offers = Vec::new();
        let mut cancels = Vec::new();
        let mut rollbacks = Vec::new();
        while let Some(o) = entry.rec.controller.poll_order() {
            match o {
                ro::Order::Offer { node, .. } => offers.push(node.0),
                ro::Order::Cancel { node } => cancels.push(node.0),
                ro::Order::Rollback { node, via } => rollbacks.push((node.0, via)),
            }
        }
        let mut notes: Vec<(String, Value)> = Vec::new();
        if !cancels.is_empty() {
            let mut by: BTreeMap<CampaignId, Vec<u32>> = BTreeMap::new();
            for n in cancels {
                if let Some(cid) = entry
                    .rec
                    .driver
                    .nodes
                    .get(&n)
                    .and_then(|s| s.campaign.clone())
                {
                    by.entry(cid).or_default().push(n);
                }
            }
            for (cid, nodes) in by {
                if let Err(e) = shared.campaigns.cancel_nodes(&cid, &nodes, "rollout").await {
                    // A campaign that has finished has nothing left to cancel.
                    info!(campaign = %cid, error = %e, "rollout cancel not applied");
                }
            }
        }
        // Offers after cancels: a retry is a cancel of the attempt and a new offer of the same
        // node, in that order.
        if !offers.is_empty() {
            self.offer(shared, entry, &offers, now, &mut notes).await;
        }
        for (node, via) in rollbacks {
            self.rollback(shared, entry, node, via, &mut notes).await;
        }
        // Decisions: the controller's, then the driver's notes.
        let mut n = entry.log.last().map_or(entry.rec.decisions, |d| d.n);
        let mut fresh = Vec::new();
        while let Some(e) = entry.rec.controller.poll_event() {
            n += 1;
            fresh.push(decision(n, &e));
        }
        for (kind, detail) in notes {
            n += 1;
            fresh.push(RolloutDecision {
                n,
                at_ms: ms_of(now),
                kind,
                detail: Some(detail),
            });
        }
        for d in fresh {
            shared
                .bus
                .publish(GatewayEvent::RolloutDecision(RolloutDecisionEvent {
                    rollout: entry.rec.id.clone(),
                    decision: d.clone(),
                }));
            entry.log.push(d);
        }
    }

    /// Offers `nodes`: into the rollout's open campaign while it runs, else a new one.
    async fn offer(
        &self,
        shared: &Shared,
        entry: &mut Entry,
        nodes: &[u32],
        now: ro::Instant,
        notes: &mut Vec<(String, Value)>,
    ) {
        let rec = &mut entry.rec;
        let actor = format!("rollout:{}", rec.id);
        let mut placed = None;
        if let Some(open) = rec.driver.open.clone() {
            match shared.campaigns.add_nodes(&open, nodes, &actor).await {
                Ok(_) => placed = Some(open),
                Err(CampaignError::InvalidTransition { .. }) => {}
                Err(e) => {
                    info!(campaign = %open, error = %e, "cannot add the offers; opening a new campaign")
                }
            }
        }
        if placed.is_none() {
            let spec = CampaignSpec {
                artefact: rec.artefact.clone(),
                targets: Targets::Nodes(nodes.to_vec()),
                strategy: rec.strategy,
                name: Some(format!("rollout {} {}", rec.id, rec.name)),
                start: true,
                start_at: None,
                window: None,
            };
            match create_wave_campaign(shared, spec, &actor).await {
                Ok(c) => {
                    rec.driver.campaigns.push(c.id.clone());
                    rec.driver.open = Some(c.id.clone());
                    placed = Some(c.id);
                }
                Err(e) => {
                    // The nodes are busy elsewhere (another campaign) or the mesh is down:
                    // the controller retries them later, up to its limit.
                    warn!(rollout = %rec.id, error = %e, "cannot offer");
                    notes.push((
                        "offer_refused".into(),
                        serde_json::json!({ "nodes": nodes, "reason": e.to_string() }),
                    ));
                    for &n in nodes {
                        rec.controller.handle_report(
                            now,
                            ro::NodeId(n),
                            ro::NodeReport::OfferRejected {
                                reason: ro::RejectReason::Busy,
                            },
                        );
                    }
                    return;
                }
            }
        }
        for &n in nodes {
            let seen = rec.driver.nodes.entry(n).or_default();
            seen.campaign.clone_from(&placed);
            seen.cstate = Some(CampaignNodeState::Queued);
            seen.accepted = false;
            seen.installed = false;
        }
    }

    /// Sends `node` back: the signed ROLLBACK (meshfleet) or the previous artefact (stock).
    async fn rollback(
        &self,
        shared: &Shared,
        entry: &mut Entry,
        node: u32,
        via: ro::RollbackVia,
        notes: &mut Vec<(String, Value)>,
    ) {
        let rec = &mut entry.rec;
        // Its transfer of the new build, if any, stops first.
        if let Some(cid) = rec.driver.nodes.get(&node).and_then(|s| s.campaign.clone()) {
            let _ = shared
                .campaigns
                .cancel_nodes(&cid, &[node], "rollout")
                .await;
        }
        match via {
            ro::RollbackVia::PreviousSlot => {
                let Some(cmd) = rec
                    .intent
                    .as_deref()
                    .and_then(|t| Intent::from_json(t.as_bytes()).ok())
                else {
                    notes.push((
                        "rollback_unavailable".into(),
                        serde_json::json!({ "node": node, "reason": "no rollback intent was given at creation" }),
                    ));
                    return;
                };
                let sent = crate::campaign_engine::on_node(shared, move |n, now| {
                    n.with_plugin::<GatewayOta, _>(now, |p, ctx| p.send_rollback(ctx, node, &cmd))
                })
                .await
                .flatten();
                if sent != Some(true) {
                    // No route now: the controller orders again after `rollback_retry` and
                    // when the node rejoins.
                    info!(rollout = %rec.id, node, "rollback command not sent (no route)");
                }
            }
            ro::RollbackVia::Reoffer { .. } => {
                let Some(prev) = rec.previous_artefact.clone() else {
                    notes.push((
                        "rollback_unavailable".into(),
                        serde_json::json!({ "node": node, "reason": "no previous artefact was named at creation" }),
                    ));
                    return;
                };
                let actor = format!("rollout:{}", rec.id);
                if let Some(cid) = rec.driver.reoffer.clone() {
                    if shared
                        .campaigns
                        .add_nodes(&cid, &[node], &actor)
                        .await
                        .is_ok()
                    {
                        return;
                    }
                }
                let spec = CampaignSpec {
                    artefact: prev,
                    targets: Targets::Nodes(vec![node]),
                    strategy: CampaignStrategy::Auto,
                    name: Some(format!("rollback of {}", rec.id)),
                    start: true,
                    start_at: None,
                    window: None,
                };
                match create_wave_campaign(shared, spec, &actor).await {
                    Ok(c) => {
                        rec.driver.campaigns.push(c.id.clone());
                        rec.driver.reoffer = Some(c.id);
                    }
                    Err(e) => notes.push((
                        "rollback_unavailable".into(),
                        serde_json::json!({ "node": node, "reason": e.to_string() }),
                    )),
                }
            }
        }
    }
}

/// Creates and starts a campaign for a rollout's offers. With `require-approval` on, the
/// campaign is approved at once: the rollout has its own approvals (the operator created it
/// and approves each wave), so a second gate per wave would only stall it. The approval is
/// audited under the rollout's actor like every other step.
pub(crate) async fn create_wave_campaign(
    shared: &Shared,
    spec: CampaignSpec,
    actor: &str,
) -> Result<crate::campaign::Campaign, CampaignError> {
    let c = shared.campaigns.create(spec, actor).await?;
    if c.state == crate::campaign::CampaignState::AwaitingApproval {
        return shared.campaigns.approve(&c.id, actor).await;
    }
    Ok(c)
}

async fn audit(shared: &Shared, actor: &str, action: &str, id: &RolloutId) {
    let entry = AuditEntry {
        ts: now_millis(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: id.0.clone(),
    };
    if let Err(e) = shared.stores.audit.record(entry).await {
        warn!(error = %e, "cannot write the audit log");
    }
}

/// The driver task: restores the stored rollouts, then steps them every [`TICK`] (and at
/// once after a command), until `shutdown` turns true.
pub(crate) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let service = shared.rollouts.clone();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            () = service.inner.wake.notified() => service.step_all(&shared).await,
            _ = tick.tick() => service.step_all(&shared).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_strictly() {
        assert_eq!(RolloutId::parse("r-000001"), Some(RolloutId::from_seq(1)));
        for bad in ["r-1", "c-000001", "r-00000x", "r-0000001/..", ""] {
            assert_eq!(RolloutId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn tags_split_from_their_data() {
        assert_eq!(
            tag_and_detail(Value::String("pending".into())),
            ("pending".into(), None)
        );
        let (t, d) = tag_and_detail(serde_json::json!({"failed": {"at": 1}}));
        assert_eq!(t, "failed");
        assert_eq!(d, Some(serde_json::json!({"at": 1})));
    }

    #[test]
    fn actions_map_to_commands() {
        assert_eq!(
            RolloutAction::parse("skip").and_then(|a| a.command(Some(2))),
            Some(ro::Command::SkipTo { to: 2 })
        );
        assert_eq!(RolloutAction::Skip.command(None), None);
        assert_eq!(
            RolloutAction::parse("rollback").and_then(|a| a.command(None)),
            Some(ro::Command::EmergencyRollback)
        );
        assert_eq!(RolloutAction::parse("start"), None);
    }
}
