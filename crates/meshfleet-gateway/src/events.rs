//! The gateway's event flow: changes (node up/down, status, health, alerts, artefacts) go to
//! every subscriber (the SSE stream, later an MQTT bridge or a hub's stream). A bounded
//! broadcast ring: a slow subscriber loses the oldest events and is told how many.

use serde::Serialize;
use tokio::sync::broadcast;
use utoipa::ToSchema;

use crate::campaign::{Campaign, CampaignNodeEvent};
use crate::model::{Alert, ArtefactInfo, Health};
use crate::rollout::{Rollout, RolloutDecisionEvent};

/// Events buffered per subscriber.
pub const EVENT_CAPACITY: usize = 1024;

/// One change. JSON: `{"event":"<snake_case>", ...camelCase fields}`; in the SSE stream the
/// SSE `event:` field carries the same name.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(
    tag = "event",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum GatewayEvent {
    /// A node joined the mesh.
    #[serde(rename_all = "camelCase")]
    NodeUp {
        /// The node.
        node_id: u32,
        /// When.
        ts: i64,
    },
    /// A node left the mesh.
    #[serde(rename_all = "camelCase")]
    NodeDown {
        /// The node.
        node_id: u32,
        /// When.
        ts: i64,
    },
    /// A status report was stored.
    #[serde(rename_all = "camelCase")]
    Status {
        /// The node.
        node_id: u32,
        /// When.
        ts: i64,
        /// Its health after the report.
        health: Health,
    },
    /// A node's health changed.
    #[serde(rename_all = "camelCase")]
    Health {
        /// The node.
        node_id: u32,
        /// Before.
        from: Health,
        /// After.
        to: Health,
    },
    /// An alert was raised.
    #[serde(rename_all = "camelCase")]
    AlertRaised {
        /// The alert.
        alert: Alert,
    },
    /// An alert's condition ended.
    #[serde(rename_all = "camelCase")]
    AlertCleared {
        /// The alert's id.
        id: i64,
        /// When.
        ts: i64,
    },
    /// Someone acknowledged an alert.
    #[serde(rename_all = "camelCase")]
    AlertAcked {
        /// The alert.
        alert: Alert,
    },
    /// A firmware artefact was stored.
    #[serde(rename_all = "camelCase")]
    FirmwareAdded {
        /// Its metadata.
        artefact: ArtefactInfo,
    },
    /// A firmware artefact was deleted.
    #[serde(rename_all = "camelCase")]
    FirmwareDeleted {
        /// Its id.
        id: String,
    },
    /// A campaign changed (created, its state, its counts or progress); the campaign
    /// without its nodes.
    Campaign(Campaign),
    /// A node of a campaign changed (at most 4 per second per node).
    CampaignNode(CampaignNodeEvent),
    /// A rollout changed (created, a decision, a command); the rollout without its waves,
    /// nodes and decisions.
    Rollout(Rollout),
    /// A rollout's controller decided something (the decision log, live).
    RolloutDecision(RolloutDecisionEvent),
}

impl GatewayEvent {
    /// The snake_case name (the SSE `event:` field).
    pub fn name(&self) -> &'static str {
        match self {
            Self::NodeUp { .. } => "node_up",
            Self::NodeDown { .. } => "node_down",
            Self::Status { .. } => "status",
            Self::Health { .. } => "health",
            Self::AlertRaised { .. } => "alert_raised",
            Self::AlertCleared { .. } => "alert_cleared",
            Self::AlertAcked { .. } => "alert_acked",
            Self::FirmwareAdded { .. } => "firmware_added",
            Self::FirmwareDeleted { .. } => "firmware_deleted",
            Self::Campaign(_) => "campaign",
            Self::CampaignNode(_) => "campaign_node",
            Self::Rollout(_) => "rollout",
            Self::RolloutDecision(_) => "rollout_decision",
        }
    }
}

/// Publishes [`GatewayEvent`]s. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventBus {
    tx: broadcast::Sender<GatewayEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(EVENT_CAPACITY).0,
        }
    }
}

impl EventBus {
    /// Publishes (no subscriber: nothing happens).
    pub fn publish(&self, e: GatewayEvent) {
        let _ = self.tx.send(e);
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<GatewayEvent> {
        self.tx.subscribe()
    }
}
