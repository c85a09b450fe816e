//! The OpenAPI 3 document, generated from the handlers' annotations and the types' schemas
//! (utoipa), so it cannot drift from the code without a test noticing.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::paths::*;
use crate::api::{
    AckRequest, AlertList, AlertState, ArtefactList, CampaignList, ClearRequest, EventTicket,
    FleetHealth, Order, Probe, Problem, QueryAnswer, QueryRequest, SkipRequest, SortKey,
    StatusList, Topology, TopologyNode,
};
use crate::campaign::{
    Campaign, CampaignAction, CampaignId, CampaignNode, CampaignNodeEvent, CampaignSpec,
    CampaignState, CampaignStrategy, NodeState, TargetsJson,
};
use crate::campaign_rollback::{
    CampaignRollback, RollbackNode, RollbackRequest, RollbackState, RollbackVia,
};
use crate::campaign_schedule::WindowJson;
use crate::events::GatewayEvent;
use crate::model::{
    Alert, AlertKind, ArtefactInfo, Health, History, HistoryPoint, NodeStatus, Resolution, Severity,
};
use crate::rollout::{
    Rollout, RolloutAction, RolloutDecision, RolloutDecisionEvent, RolloutId, RolloutList,
    RolloutNode, RolloutSpec, RolloutWave,
};
use crate::status::StatusReport;

/// The API's description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "meshfleet gateway",
        description = "Fleet status, history, alerts, firmware artefacts and events of a \
            painlessMesh-compatible mesh. Mutating requests need `Authorization: Bearer <token>`. \
            Errors are application/problem+json. Timestamps are milliseconds since the Unix epoch."
    ),
    paths(
        status_list, status_one, query_now, fleet_health, topology, history, alerts, ack_alert, clear_alert,
        upload_firmware, list_firmware, delete_firmware, create_campaign, list_campaigns,
        get_campaign, campaign_action, rollback_campaign, create_rollout, list_rollouts, get_rollout,
        rollout_action, events, event_ticket, metrics_text, healthz, readyz, openapi_json
    ),
    components(schemas(
        StatusList, NodeStatus, StatusReport, Health, FleetHealth, Topology, TopologyNode,
        History, HistoryPoint, Resolution, Alert, AlertKind, Severity, AlertList, AlertState,
        AckRequest, ClearRequest, QueryRequest, QueryAnswer, EventTicket, ArtefactInfo, ArtefactList, GatewayEvent, Probe, Problem, SortKey, Order,
        Campaign, CampaignList, CampaignSpec, CampaignId, CampaignNode, CampaignNodeEvent,
        CampaignState, CampaignStrategy, CampaignAction, NodeState, TargetsJson, WindowJson,
        CampaignRollback, RollbackNode, RollbackRequest, RollbackState, RollbackVia,
        Rollout, RolloutList, RolloutSpec, RolloutAction, RolloutWave, RolloutNode,
        RolloutDecision, RolloutDecisionEvent, RolloutId, SkipRequest
    )),
    modifiers(&Bearer),
    tags(
        (name = "fleet", description = "The status service: nodes, health, tree, history"),
        (name = "alerts", description = "Alerts and their acknowledgement"),
        (name = "firmware", description = "Firmware artefacts (.mfw), stored by content hash"),
        (name = "campaigns", description = "Firmware campaigns: an artefact offered to a set \
            of nodes, one state per node"),
        (name = "rollouts", description = "Progressive rollouts: waves of campaigns with \
            health gates, abort and automatic rollback"),
        (name = "events", description = "Server-sent events"),
        (name = "ops", description = "Metrics, probes, this document")
    )
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as JSON.
pub fn document_json() -> String {
    ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into())
}
