//! The campaign contract (the lead's `contract.md` §2-3), as the bridge needs it.
//!
//! The gateway's `CampaignService` is being written in parallel; until it is on main the
//! bridge codes against this small trait, with the contract's JSON types. When the service
//! lands, an `impl Campaigns for CampaignService` (a few lines forwarding each call) plugs it
//! in through [`crate::Commands::set_campaigns`]. Without one, campaign commands get the
//! error reply `no_campaign_service` (status and HA installs likewise): nothing pretends.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// A boxed future (object-safe trait methods).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which nodes a campaign targets (contract §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Targets {
    /// Every node (`{"all": true}`).
    All(bool),
    /// Nodes with this OTA role.
    Role(String),
    /// Nodes with this hardware.
    Hardware(String),
    /// These nodes.
    Nodes(Vec<u32>),
}

/// `POST /campaigns` body (contract §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    /// Firmware id (SHA-256 hex of the `.mfw`).
    pub artefact: String,
    /// Which nodes.
    pub targets: Targets,
    /// `auto`, `stock` or `broadcast`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// A label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Start at once.
    #[serde(default)]
    pub start: bool,
}

/// One targeted node's execution (AWS IoT Jobs' statuses one to one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CampaignNode {
    /// The node.
    pub node: u32,
    /// `QUEUED`, `IN_PROGRESS`, `SUCCEEDED`, `FAILED`, `TIMED_OUT`, `REJECTED`, `CANCELED`.
    pub state: String,
    /// 0..1.
    pub progress: f64,
    /// The OTA engine's typed reason label.
    pub reason: Option<String>,
    /// The version it ran before.
    #[serde(default)]
    pub from_version: Option<String>,
    /// Last change, unix ms.
    #[serde(default)]
    pub updated_at_ms: i64,
}

/// A campaign (contract §3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    /// `c-000001`.
    pub id: String,
    /// Label.
    #[serde(default)]
    pub name: Option<String>,
    /// Firmware id.
    pub artefact: String,
    /// Firmware version.
    pub version: String,
    /// Strategy.
    pub strategy: String,
    /// `created`, `running`, `paused`, `completed`, `failed`, `cancelled`.
    pub state: String,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms.
    pub updated_at_ms: i64,
    /// Nodes targeted.
    pub total_nodes: u32,
    /// Nodes updated.
    pub updated_nodes: u32,
    /// Nodes failed.
    pub failed_nodes: u32,
    /// 0..1, bytes-weighted.
    pub progress: f64,
    /// Unix ms, when known.
    pub estimated_completion_ms: Option<i64>,
    /// Per node (left out in lists).
    #[serde(default)]
    pub nodes: Vec<CampaignNode>,
}

/// What a campaign action can be refused for (contract §2).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CampaignError {
    /// No such campaign.
    #[error("no such campaign")]
    NotFound,
    /// Targeted nodes are in another unfinished campaign.
    #[error("nodes {nodes:?} are in another campaign")]
    Conflict {
        /// Which.
        nodes: Vec<u32>,
    },
    /// The action is not allowed in this state.
    #[error("cannot {action} a campaign that is {from}")]
    InvalidTransition {
        /// The state.
        from: String,
        /// The action.
        action: String,
    },
    /// The artefact is not in the store.
    #[error("unknown artefact")]
    UnknownArtefact,
    /// The targets match no node.
    #[error("the targets match no node")]
    NoTargets,
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// The mesh node stopped.
    #[error("the mesh node has stopped")]
    MeshStopped,
}

impl CampaignError {
    /// A stable code for replies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Conflict { .. } => "conflict",
            Self::InvalidTransition { .. } => "invalid_transition",
            Self::UnknownArtefact => "unknown_artefact",
            Self::NoTargets => "no_targets",
            Self::Store(_) => "store_error",
            Self::MeshStopped => "mesh_stopped",
        }
    }
}

/// The actions after creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start.
    Start,
    /// Pause.
    Pause,
    /// Resume.
    Resume,
    /// Cancel.
    Cancel,
}

impl Action {
    /// The state an action leads to (an action on a campaign already there is a no-op:
    /// commands are idempotent).
    pub fn target_state(self) -> &'static str {
        match self {
            Self::Start | Self::Resume => "running",
            Self::Pause => "paused",
            Self::Cancel => "cancelled",
        }
    }
}

/// The campaign service as the bridge uses it (the gateway's `CampaignService`).
pub trait Campaigns: Send + Sync {
    /// Creates a campaign.
    fn create(
        &self,
        spec: CampaignSpec,
        actor: &str,
    ) -> BoxFuture<'_, Result<Campaign, CampaignError>>;
    /// Starts, pauses, resumes or cancels one.
    fn act(
        &self,
        id: &str,
        action: Action,
        actor: &str,
    ) -> BoxFuture<'_, Result<Campaign, CampaignError>>;
    /// One campaign, with its nodes.
    fn get(&self, id: &str) -> BoxFuture<'_, Result<Campaign, CampaignError>>;
    /// Every campaign, newest first (nodes may be left out).
    fn list(&self) -> BoxFuture<'_, Result<Vec<Campaign>, CampaignError>>;
}
