//! The HTTP API (axum): REST endpoints, the event stream, metrics and probes.
//!
//! Cross-cutting rules, applied to every route:
//! * **Auth**: every mutating request (anything but GET/HEAD) needs
//!   `Authorization: Bearer <token>`; with `read-auth`, reads too (`/healthz` and `/readyz`
//!   stay open for supervisors). No token configured: mutations are refused (403).
//! * **Limits**: JSON bodies ≤ `max-body`, uploads ≤ `max-upload` (413 beyond), every
//!   request but the event stream ≤ `request-timeout` (408 beyond).
//! * **Errors**: `application/problem+json` (RFC 9457) with a stable `code`, for every
//!   error including unknown routes (404), wrong methods (405), malformed JSON and query
//!   strings (400).
//! * **No request reaches the filesystem**: artefacts are stored in the database by content
//!   hash; ids in paths are parsed into numbers or 64-hex-digit hashes before use.
//! * **CORS**: none (no `Access-Control-*` headers), so browsers on other origins cannot
//!   call the API.
//! * **Compression**: gzip when the client accepts it (`Accept-Encoding`), for the API and the
//!   dashboard's assets; never for the event stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use meshfleet_firmware::{Artefact, SignatureCheck};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

use crate::campaign::{Campaign, CampaignAction, CampaignError, CampaignId, CampaignSpec};
use crate::campaign_rollback::RollbackRequest;
use crate::events::GatewayEvent;
use crate::model::{Alert, ArtefactInfo, AuditEntry, Health, History, NodeStatus, Resolution};
use crate::rollout::{Rollout, RolloutAction, RolloutError, RolloutId, RolloutList, RolloutSpec};
use crate::store::StoreError;
use crate::{metrics, now_millis, openapi, Shared};

type AppState = Arc<Shared>;

/// Most nodes one `GET /status` page returns.
pub const MAX_PAGE: usize = 1000;
/// Most points one history query returns.
pub const MAX_POINTS: usize = 10_000;
/// Most alerts one `GET /alerts` returns.
pub const MAX_ALERTS: usize = 1000;
/// Longest acknowledgement note, bytes.
pub const MAX_NOTE: usize = 500;

/// The router, with every middleware.
pub fn router(shared: AppState) -> Router {
    let max_body = shared.config.max_body;
    let max_upload = shared.config.max_upload;
    let firmware = Router::new()
        .route("/firmware", post(upload_firmware).get(list_firmware))
        .route("/firmware/{id}", axum::routing::delete(delete_firmware))
        .layer(DefaultBodyLimit::max(max_upload));
    Router::new()
        .route("/status", get(status_list))
        .route("/status/{node_id}", get(status_one))
        .route("/query", post(query_now))
        .route("/health", get(fleet_health))
        .route("/topology", get(topology))
        .route("/nodes/{node_id}/history", get(history))
        .route("/alerts", get(alerts))
        .route("/alerts/{id}/ack", post(ack_alert))
        .route("/alerts/{id}/clear", post(clear_alert))
        .route("/campaigns", post(create_campaign).get(list_campaigns))
        .route("/campaigns/{id}", get(get_campaign))
        .route("/campaigns/{id}/rollback", post(rollback_campaign))
        .route("/campaigns/{id}/{action}", post(campaign_action))
        .route("/rollouts", post(create_rollout).get(list_rollouts))
        .route("/rollouts/{id}", get(get_rollout))
        .route("/rollouts/{id}/{action}", post(rollout_action))
        .route("/events", get(events))
        .route("/events/ticket", post(event_ticket))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/", get(crate::dashboard::index))
        .route("/assets/{*path}", get(crate::dashboard::asset))
        .layer(DefaultBodyLimit::max(max_body))
        .merge(firmware)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        // Outermost: gzip whatever the client accepts (Accept-Encoding), errors and refusals
        // included. tower-http's default predicate leaves `text/event-stream` alone, so the
        // event stream is never buffered by a compressor (tests/compression.rs), nor are
        // bodies under 32 bytes or raster images.
        .layer(tower_http::compression::CompressionLayer::new())
        .with_state(shared)
}

// ---------------------------------------------------------------------------------------
// Errors

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// `urn:meshfleet:problem:<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// What went wrong, for a program (stable, snake_case).
    pub code: String,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }

    fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Busy => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_busy", e.to_string())
            }
            StoreError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_closed",
                e.to_string(),
            ),
            other => {
                tracing::warn!(error = %other, "store error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    "the database failed; see the gateway's log",
                )
            }
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::bad_request("bad_query", e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        Self::bad_request("bad_path", e.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                status,
                "body_too_large",
                "the request body exceeds the limit",
            )
        } else {
            Self::new(status, "bad_body", e.body_text())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem_response(self.status, self.code, &self.detail)
    }
}

fn problem_response(status: StatusCode, code: &str, detail: &str) -> Response {
    let p = Problem {
        type_: format!("urn:meshfleet:problem:{code}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: detail.to_owned(),
        code: code.to_owned(),
    };
    let body = serde_json::to_vec(&p).unwrap_or_default();
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"meshfleet\""),
        );
    }
    r
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

// ---------------------------------------------------------------------------------------
// Auth, time limit

/// Who made a request (for the audit log).
#[derive(Clone, Debug)]
struct Actor(String);

fn token_matches(given: &str, expected: &str) -> bool {
    // Compare digests, so the time taken does not depend on where the strings differ.
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn guard(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let probe =
        path == "/healthz" || path == "/readyz" || crate::dashboard::is_dashboard_path(path);
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let needs_token = !probe && (!read || s.config.read_auth);
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    if needs_token {
        let Some(expected) = s.token.as_deref() else {
            return count_error(
                &s,
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "no_token_configured",
                    "this gateway has no API token configured, so it accepts no changes; \
                     set `token-file` in the [gateway] config",
                )
                .into_response(),
            );
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // The event stream also takes a single-use ticket (crate::tickets): EventSource
        // cannot send the header. It opens that stream only.
        if given.is_none() && read && path == "/events" {
            if let Some(t) = query_param(req.uri().query(), "ticket") {
                if !s.tickets.redeem(t, std::time::Instant::now()) {
                    s.counters
                        .event_tickets_refused
                        .fetch_add(1, Ordering::Relaxed);
                    return count_error(
                        &s,
                        ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            "bad_ticket",
                            "the ticket is unknown, expired or already used; get a new one \
                             from POST /events/ticket",
                        )
                        .into_response(),
                    );
                }
                s.counters
                    .event_tickets_redeemed
                    .fetch_add(1, Ordering::Relaxed);
                req.extensions_mut().insert(Actor(format!("ticket@{peer}")));
                return count_error(&s, next.run(req).await);
            }
        }
        match given {
            None => {
                return count_error(
                    &s,
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "missing_token",
                        "send `Authorization: Bearer <token>`",
                    )
                    .into_response(),
                )
            }
            Some(t) if !token_matches(t.trim(), expected) => {
                return count_error(
                    &s,
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "bad_token",
                        "the token is not valid",
                    )
                    .into_response(),
                )
            }
            Some(_) => {}
        }
        req.extensions_mut().insert(Actor(format!("token@{peer}")));
    } else {
        req.extensions_mut()
            .insert(Actor(format!("anonymous@{peer}")));
    }
    let response = if req.uri().path() == "/events" {
        next.run(req).await
    } else {
        match tokio::time::timeout(s.config.request_timeout(), next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the request took longer than the gateway's time limit",
            )
            .into_response(),
        }
    };
    count_error(&s, response)
}

/// The first value of `name` in a query string (no percent-decoding: tickets are hex).
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn count_error(s: &Shared, r: Response) -> Response {
    if r.status().is_client_error() || r.status().is_server_error() {
        s.counters.http_errors.fetch_add(1, Ordering::Relaxed);
    }
    r
}

// ---------------------------------------------------------------------------------------
// Fleet status

/// Sort key for `GET /status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum SortKey {
    /// By node id.
    #[default]
    NodeId,
    /// By last sign of life.
    LastSeen,
    /// By uptime.
    Uptime,
    /// By free memory.
    FreeMemory,
    /// By health (healthy first).
    Health,
}

/// Sort order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Ascending.
    #[default]
    Asc,
    /// Descending.
    Desc,
}

/// `GET /status` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Only nodes with this OTA role.
    pub role: Option<String>,
    /// Only nodes with this health.
    pub health: Option<Health>,
    /// Only nodes running this firmware version.
    pub firmware: Option<String>,
    /// Sort key (default `nodeId`).
    pub sort: Option<SortKey>,
    /// Sort order (default `asc`).
    pub order: Option<Order>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<usize>,
    /// Nodes to skip (default 0).
    pub offset: Option<usize>,
}

/// `GET /status`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusList {
    /// This page of nodes.
    pub nodes: Vec<NodeStatus>,
    /// When this was answered (ms since the epoch).
    pub timestamp: i64,
    /// Nodes matching the filters (all pages).
    pub total_nodes: usize,
    /// The page's offset.
    pub offset: usize,
    /// The page size.
    pub limit: usize,
}

/// Every node, filtered, sorted and paginated.
#[utoipa::path(get, path = "/status", tag = "fleet", params(StatusQuery),
    responses((status = 200, body = StatusList),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn status_list(
    State(s): State<AppState>,
    q: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<StatusList>, ApiError> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let offset = q.offset.unwrap_or(0);
    let mut nodes: Vec<NodeStatus> = s.registry.with_nodes(|it| {
        it.filter(|n| q.health.map_or(true, |h| n.health == h))
            .filter(|n| {
                q.role
                    .as_deref()
                    .map_or(true, |r| n.role.as_deref() == Some(r))
            })
            .filter(|n| {
                q.firmware
                    .as_deref()
                    .map_or(true, |f| n.firmware.as_deref() == Some(f))
            })
            .cloned()
            .collect()
    });
    match q.sort.unwrap_or_default() {
        SortKey::NodeId => nodes.sort_by_key(|n| n.node_id),
        SortKey::LastSeen => nodes.sort_by_key(|n| (n.last_seen, n.node_id)),
        SortKey::Uptime => nodes.sort_by_key(|n| (n.uptime, n.node_id)),
        SortKey::FreeMemory => nodes.sort_by_key(|n| (n.free_memory, n.node_id)),
        SortKey::Health => nodes.sort_by_key(|n| (n.health, n.node_id)),
    }
    if q.order == Some(Order::Desc) {
        nodes.reverse();
    }
    let total_nodes = nodes.len();
    let nodes = nodes.into_iter().skip(offset).take(limit).collect();
    Ok(Json(StatusList {
        nodes,
        timestamp: now_millis(),
        total_nodes,
        offset,
        limit,
    }))
}

fn parse_node_id(raw: &str) -> Result<u32, ApiError> {
    match raw.parse::<u32>() {
        Ok(id) if id != 0 => Ok(id),
        _ => Err(ApiError::bad_request(
            "bad_node_id",
            "a node id is a decimal number from 1 to 4294967295",
        )),
    }
}

/// One node.
#[utoipa::path(get, path = "/status/{nodeId}", tag = "fleet",
    params(("nodeId" = u32, Path, description = "The node's id")),
    responses((status = 200, body = NodeStatus),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn status_one(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<NodeStatus>, ApiError> {
    let Path(raw) = p?;
    let id = parse_node_id(&raw)?;
    s.registry
        .get(id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("node {id} has never been seen")))
}

/// `POST /query` body: whom to ask. An empty body asks every node that is not offline.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryRequest {
    /// One node; absent: every node that is not offline.
    pub node_id: Option<u32>,
}

/// `POST /query`: what the nodes said.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryAnswer {
    /// The monitor's query id (the `r` of its telemetry queries on the mesh).
    pub query_id: u32,
    /// Some targets did not answer within the monitor's query timeout.
    pub partial: bool,
    /// Nodes that answered: a telemetry keyframe (meshfleet nodes) or a delay probe (stock).
    pub answered: Vec<u32>,
    /// Nodes whose data was younger than the cache TTL: not asked.
    pub cached: Vec<u32>,
    /// Nodes that did not answer in time.
    pub missing: Vec<u32>,
    /// From the start of the query to its end, milliseconds of the mesh's clock.
    pub duration_ms: u64,
    /// The answered and cached nodes as `GET /status/{nodeId}` shows them now.
    pub nodes: Vec<NodeStatus>,
}

/// Longest an on-demand query may keep its HTTP request open, whatever the monitor's
/// timeout: a stuck ingest task must not hold connections for ever.
const QUERY_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// `POST /query`: ask one node, or every node, for fresh data now.
#[utoipa::path(post, path = "/query", tag = "fleet",
    request_body(content = Option<QueryRequest>, content_type = "application/json",
        description = "`{\"nodeId\": N}` for one node; empty for every node that is not offline"),
    responses((status = 200, body = QueryAnswer,
            description = "Every target answered, or the monitor's query timeout passed (`partial`)"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn query_now(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<QueryAnswer>, ApiError> {
    let body = body?;
    let req: QueryRequest = note_body(&headers, &body)?;
    let target = match req.node_id {
        Some(id) => meshfleet_monitor::QueryTarget::Node(meshfleet_monitor::NodeId(id)),
        None => meshfleet_monitor::QueryTarget::All,
    };
    let stopping = || ApiError::unavailable("the gateway is stopping");
    let (reply, answer) = tokio::sync::oneshot::channel();
    s.to_monitor
        .send(crate::ingest::ToMonitor::Query(crate::ingest::QueryNow {
            target,
            reply,
        }))
        .await
        .map_err(|_| stopping())?;
    let result = tokio::time::timeout(QUERY_WAIT, answer)
        .await
        .map_err(|_| ApiError::unavailable("the query did not finish"))?
        .map_err(|_| stopping())?
        .map_err(|e| match e {
            meshfleet_monitor::QueryError::TooMany => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_queries",
                "the monitor runs as many queries as it allows; try again in a few seconds",
            ),
            meshfleet_monitor::QueryError::UnknownNode(n) => {
                ApiError::not_found(format!("node {n} has never been seen"))
            }
            other => ApiError::unavailable(other.to_string()),
        })?;
    let ids = |v: &[meshfleet_monitor::NodeId]| v.iter().map(|n| n.0).collect::<Vec<u32>>();
    let nodes = result
        .answered
        .iter()
        .chain(&result.cached)
        .filter_map(|n| s.registry.get(n.0))
        .collect();
    Ok(Json(QueryAnswer {
        query_id: result.id.0,
        partial: result.partial,
        answered: ids(&result.answered),
        cached: ids(&result.cached),
        missing: ids(&result.missing),
        duration_ms: result.finished.saturating_since(result.started).as_micros() / 1000,
        nodes,
    }))
}

/// `GET /health`: the fleet summary.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetHealth {
    /// When (ms since the epoch).
    pub timestamp: i64,
    /// The gateway's own node id.
    pub gateway_node_id: u32,
    /// Whether the gateway's mesh node runs.
    pub mesh_running: bool,
    /// Nodes ever seen.
    pub total_nodes: usize,
    /// Nodes in the mesh now.
    pub online: usize,
    /// Nodes per health.
    pub healthy: usize,
    /// Nodes per health.
    pub warning: usize,
    /// Nodes per health.
    pub critical: usize,
    /// Nodes per health.
    pub offline: usize,
    /// Alerts not cleared.
    pub active_alerts: usize,
}

/// The fleet's health summary.
#[utoipa::path(get, path = "/health", tag = "fleet",
    responses((status = 200, body = FleetHealth)))]
async fn fleet_health(State(s): State<AppState>) -> Result<Json<FleetHealth>, ApiError> {
    let mut counts = [0usize; 4];
    let (total, online) = s.registry.with_nodes(|it| {
        let (mut total, mut online) = (0, 0);
        for n in it {
            total += 1;
            online += usize::from(n.online);
            if let Some(i) = Health::ALL.iter().position(|h| *h == n.health) {
                counts[i] += 1;
            }
        }
        (total, online)
    });
    let active = s
        .stores
        .alerts
        .list(true, None, usize::MAX >> 1)
        .await?
        .len();
    Ok(Json(FleetHealth {
        timestamp: now_millis(),
        gateway_node_id: s.mesh.node_id().0,
        mesh_running: s.mesh.is_running(),
        total_nodes: total,
        online,
        healthy: counts[0],
        warning: counts[1],
        critical: counts[2],
        offline: counts[3],
        active_alerts: active,
    }))
}

/// A node in the tree (painlessMesh's `subConnectionJson` shape).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopologyNode {
    /// The node's id.
    pub node_id: u32,
    /// Whether it is the mesh root.
    #[serde(default)]
    pub root: bool,
    /// The nodes reached through it.
    #[schema(no_recursion)]
    pub subs: Vec<Self>,
}

impl TopologyNode {
    fn from_tree(t: &meshfleet_mesh::NodeTree) -> Self {
        Self {
            node_id: t.node_id.0,
            root: t.root,
            subs: t.subs.iter().map(Self::from_tree).collect(),
        }
    }
}

/// `GET /topology`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// When (ms since the epoch).
    pub timestamp: i64,
    /// Nodes in the tree, the gateway included.
    pub node_count: usize,
    /// The tree, rooted at the gateway.
    pub tree: TopologyNode,
}

/// The mesh tree as the gateway sees it (live: from node sync, no extra airtime).
#[utoipa::path(get, path = "/topology", tag = "fleet",
    responses((status = 200, body = Topology),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn topology(State(s): State<AppState>) -> Result<Json<Topology>, ApiError> {
    let tree = s.mesh.topology().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mesh_stopped",
            "the mesh node has stopped",
        )
    })?;
    Ok(Json(Topology {
        timestamp: now_millis(),
        node_count: tree.size(),
        tree: TopologyNode::from_tree(&tree),
    }))
}

// ---------------------------------------------------------------------------------------
// History

/// `GET /nodes/{nodeId}/history` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Range start, ms since the epoch (default: `to` minus 24 h).
    pub from: Option<i64>,
    /// Range end, ms since the epoch, exclusive (default: now).
    pub to: Option<i64>,
    /// `raw` or `hour` (default: raw up to 2 days, hourly beyond).
    pub resolution: Option<Resolution>,
    /// Most points, 1-10000 (default 10000).
    pub limit: Option<usize>,
}

/// A node's telemetry history.
#[utoipa::path(get, path = "/nodes/{nodeId}/history", tag = "fleet",
    params(("nodeId" = u32, Path, description = "The node's id"), HistoryQuery),
    responses((status = 200, body = History),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn history(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let Path(raw) = p?;
    let Query(q) = q?;
    let id = parse_node_id(&raw)?;
    if s.registry.get(id).is_none() {
        return Err(ApiError::not_found(format!(
            "node {id} has never been seen"
        )));
    }
    let to = q.to.unwrap_or_else(now_millis);
    let from = q.from.unwrap_or(to.saturating_sub(24 * 3_600_000));
    if from >= to {
        return Err(ApiError::bad_request(
            "bad_range",
            "`from` must be before `to`",
        ));
    }
    let limit = q.limit.unwrap_or(MAX_POINTS);
    if limit == 0 || limit > MAX_POINTS {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("limit must be 1 to {MAX_POINTS}"),
        ));
    }
    let resolution = q.resolution.unwrap_or(if to - from <= 2 * 24 * 3_600_000 {
        Resolution::Raw
    } else {
        Resolution::Hour
    });
    let h = s
        .stores
        .history
        .query(id, from, to, resolution, limit)
        .await?;
    Ok(Json(h))
}

// ---------------------------------------------------------------------------------------
// Alerts

/// Which alerts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Not cleared.
    #[default]
    Active,
    /// Every alert kept.
    All,
}

/// `GET /alerts` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// `active` (default) or `all`.
    pub state: Option<AlertState>,
    /// Only this node's.
    pub node: Option<u32>,
    /// Most alerts, 1-1000 (default 100).
    pub limit: Option<usize>,
}

/// `GET /alerts`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertList {
    /// Newest first.
    pub alerts: Vec<Alert>,
}

/// Alerts, newest first.
#[utoipa::path(get, path = "/alerts", tag = "alerts", params(AlertQuery),
    responses((status = 200, body = AlertList),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn alerts(
    State(s): State<AppState>,
    q: Result<Query<AlertQuery>, QueryRejection>,
) -> Result<Json<AlertList>, ApiError> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_ALERTS {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("limit must be 1 to {MAX_ALERTS}"),
        ));
    }
    let active = q.state.unwrap_or_default() == AlertState::Active;
    let alerts = s.stores.alerts.list(active, q.node, limit).await?;
    Ok(Json(AlertList { alerts }))
}

/// `POST /alerts/{id}/ack` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Why, for the record (≤ 500 bytes).
    pub note: Option<String>,
}

/// Acknowledges an alert (idempotent: a second acknowledgement keeps the first).
#[utoipa::path(post, path = "/alerts/{id}/ack", tag = "alerts",
    params(("id" = i64, Path, description = "The alert's id")),
    request_body(content = Option<AckRequest>, content_type = "application/json"),
    security(("bearer" = [])),
    responses((status = 200, body = Alert),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json")))]
async fn ack_alert(
    State(s): State<AppState>,
    actor: axum::Extension<Actor>,
    headers: axum::http::HeaderMap,
    p: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Alert>, ApiError> {
    let Path(raw) = p?;
    let body = body?;
    let id = alert_id(&raw)?;
    let req: AckRequest = note_body(&headers, &body)?;
    check_note(req.note.as_deref())?;
    let now = now_millis();
    let alert = s
        .stores
        .alerts
        .ack(id, actor.0 .0.clone(), req.note, now)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no alert {id}")))?;
    audit(&s, &actor.0 .0, "alert.ack", &id.to_string(), now).await?;
    s.bus.publish(GatewayEvent::AlertAcked {
        alert: alert.clone(),
    });
    Ok(Json(alert))
}

/// A JSON body that may be empty (whitespace): the default then.
fn note_body<T: Default + serde::de::DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    json_body(headers, body, "JSON body")
}

/// A request body that must be `application/json` (`415` otherwise) and decode as `T`
/// (`400 bad_json` naming `what` otherwise).
fn json_body<T: serde::de::DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    body: &Bytes,
    what: &str,
) -> Result<T, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_content_type",
            "the body must be application/json",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("invalid {what}: {e}")))
}

/// `201 Created` with `value` as JSON and a `Location` header.
fn created_at<T: Serialize>(value: &T, location: &str) -> Response {
    let mut r = (StatusCode::CREATED, Json(value)).into_response();
    if let Ok(loc) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    r
}

fn check_note(note: Option<&str>) -> Result<(), ApiError> {
    if note.is_some_and(|n| n.len() > MAX_NOTE) {
        return Err(ApiError::bad_request(
            "bad_json",
            format!("note is longer than {MAX_NOTE} bytes"),
        ));
    }
    Ok(())
}

fn alert_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::bad_request("bad_alert_id", "an alert id is a positive number"))
}

/// `POST /alerts/{id}/clear` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClearRequest {
    /// Why, for the record (≤ 500 bytes).
    pub note: Option<String>,
}

/// Clears an active alert by hand. The monitor then keeps the same condition on the same node
/// from raising again until the condition has gone away (as many evaluations without it as
/// clear an alert by itself) or the monitor's `rearm-after-clear-s` (default 24 h) has
/// passed; see `docs/monitoring.md`. Audited (`alert.clear`); the event stream carries
/// `alert_cleared`. An alert that already cleared is a 409 (`alert_not_active`).
#[utoipa::path(post, path = "/alerts/{id}/clear", tag = "alerts",
    params(("id" = i64, Path, description = "The alert's id")),
    request_body(content = Option<ClearRequest>, content_type = "application/json"),
    security(("bearer" = [])),
    responses((status = 200, body = Alert),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json")))]
async fn clear_alert(
    State(s): State<AppState>,
    actor: axum::Extension<Actor>,
    headers: axum::http::HeaderMap,
    p: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Alert>, ApiError> {
    let Path(raw) = p?;
    let body = body?;
    let id = alert_id(&raw)?;
    let req: ClearRequest = note_body(&headers, &body)?;
    check_note(req.note.as_deref())?;
    let not_active = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "alert_not_active",
            format!("alert {id} has already cleared"),
        )
    };
    let found = s.stores.alerts.get(id).await?;
    match found {
        None => return Err(ApiError::not_found(format!("no alert {id}"))),
        Some(a) if a.cleared_at.is_some() => return Err(not_active()),
        Some(_) => {}
    }
    // The monitor first, so the condition cannot raise it again in between; an alert left
    // from a previous run is unknown to it and only the store changes.
    let (reply, answer) = tokio::sync::oneshot::channel();
    s.to_monitor
        .send(crate::ingest::ToMonitor::Clear(
            crate::ingest::ClearByOperator { stored: id, reply },
        ))
        .await
        .map_err(|_| ApiError::unavailable("the gateway is stopping"))?;
    let _in_monitor = answer
        .await
        .map_err(|_| ApiError::unavailable("the gateway is stopping"))?;
    let now = now_millis();
    let (alert, changed) = s
        .stores
        .alerts
        .clear_by(id, actor.0 .0.clone(), req.note, now)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no alert {id}")))?;
    if !changed {
        // Its condition cleared it between our read and our write.
        return Err(not_active());
    }
    audit(&s, &actor.0 .0, "alert.clear", &id.to_string(), now).await?;
    s.bus.publish(GatewayEvent::AlertCleared { id, ts: now });
    Ok(Json(alert))
}

async fn audit(
    s: &Shared,
    actor: &str,
    action: &str,
    target: &str,
    ts: i64,
) -> Result<(), ApiError> {
    s.stores
        .audit
        .record(AuditEntry {
            ts,
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
        })
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Firmware

/// `GET /firmware`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ArtefactList {
    /// Newest first.
    pub artefacts: Vec<ArtefactInfo>,
}

/// Uploads a `.mfw` artefact. It is parsed and fully verified (signature by the gateway's
/// `firmware-key`, every chunk hash, payload and image hashes) before anything is stored;
/// it is stored by the SHA-256 of the file, so uploading it again changes nothing.
#[utoipa::path(post, path = "/firmware", tag = "firmware",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The .mfw file"),
    security(("bearer" = [])),
    responses((status = 201, body = ArtefactInfo, description = "Stored"),
        (status = 200, body = ArtefactInfo, description = "Already stored"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn upload_firmware(
    State(s): State<AppState>,
    actor: axum::Extension<Actor>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let Some(key) = s.firmware_key else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_firmware_key",
            "this gateway has no `firmware-key` configured, so it cannot verify uploads",
        ));
    };
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "send the .mfw file as the body",
        ));
    }
    // Parsing and verifying decode the whole image: CPU work, off the async workers.
    let uploader = actor.0 .0.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let artefact = Artefact::from_bytes(&body).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_artefact",
                format!("not a valid .mfw file: {e}"),
            )
        })?;
        let v = artefact.verify(Some(&key)).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "verification_failed",
                format!("verification failed: {e}"),
            )
        })?;
        let SignatureCheck::Verified(key_id) = v.signature() else {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "verification_failed",
                "the signature was not checked",
            ));
        };
        let info = ArtefactInfo::verified(&body, artefact.manifest(), &key_id, &uploader);
        Ok::<_, ApiError>((info, body))
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "verification task failed",
        )
    })??;
    let (info, body) = verified;
    let (id, now) = (info.id.clone(), info.uploaded_at);
    let created = s.stores.artefacts.put(info.clone(), body.to_vec()).await?;
    if !created {
        let existing = s
            .stores
            .artefacts
            .list()
            .await?
            .into_iter()
            .find(|a| a.id == id)
            .unwrap_or(info);
        return Ok((StatusCode::OK, Json(existing)).into_response());
    }
    audit(&s, &actor.0 .0, "firmware.upload", &id, now).await?;
    s.bus.publish(GatewayEvent::FirmwareAdded {
        artefact: info.clone(),
    });
    Ok(created_at(&info, &format!("/firmware/{id}")))
}

/// Stored artefacts.
#[utoipa::path(get, path = "/firmware", tag = "firmware",
    responses((status = 200, body = ArtefactList)))]
async fn list_firmware(State(s): State<AppState>) -> Result<Json<ArtefactList>, ApiError> {
    Ok(Json(ArtefactList {
        artefacts: s.stores.artefacts.list().await?,
    }))
}

fn parse_artefact_id(raw: &str) -> Result<String, ApiError> {
    if raw.len() == 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::bad_request(
            "bad_artefact_id",
            "an artefact id is the file's SHA-256 in 64 lowercase hex digits",
        ))
    }
}

/// Deletes a stored artefact.
#[utoipa::path(delete, path = "/firmware/{id}", tag = "firmware",
    params(("id" = String, Path, description = "The artefact's id (SHA-256, hex)")),
    security(("bearer" = [])),
    responses((status = 204, description = "Deleted"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A campaign that has not finished uses it", body = Problem, content_type = "application/problem+json")))]
async fn delete_firmware(
    State(s): State<AppState>,
    actor: axum::Extension<Actor>,
    p: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(raw) = p?;
    let id = parse_artefact_id(&raw)?;
    // A campaign that may still offer the image keeps it: deleting it would fail every
    // node of that campaign that has not finished (`artefact_missing`).
    let users: Vec<String> = s
        .campaigns
        .list()
        .await?
        .into_iter()
        .filter(|c| c.artefact == id && !c.state.is_finished())
        .map(|c| c.id.to_string())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "artefact_in_use",
            format!(
                "artefact {id} is used by unfinished campaign(s) {}: cancel them first",
                users.join(", ")
            ),
        ));
    }
    if !s.stores.artefacts.delete(id.clone()).await? {
        return Err(ApiError::not_found(format!("no artefact {id}")));
    }
    audit(&s, &actor.0 .0, "firmware.delete", &id, now_millis()).await?;
    s.bus.publish(GatewayEvent::FirmwareDeleted { id });
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Campaigns

impl From<CampaignError> for ApiError {
    fn from(e: CampaignError) -> Self {
        let detail = e.to_string();
        match e {
            CampaignError::NotFound(_) => Self::not_found(detail),
            CampaignError::Conflict { .. } => {
                Self::new(StatusCode::CONFLICT, "campaign_conflict", detail)
            }
            CampaignError::InvalidTransition { .. } => {
                Self::new(StatusCode::CONFLICT, "invalid_transition", detail)
            }
            CampaignError::UnknownArtefact(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_artefact", detail)
            }
            CampaignError::NoTargets => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "no_targets", detail)
            }
            CampaignError::InvalidSpec(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_campaign", detail)
            }
            CampaignError::Store(e) => e.into(),
            CampaignError::MeshStopped => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "mesh_stopped", detail)
            }
            CampaignError::BadIntent(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_rollback_intent",
                detail,
            ),
            CampaignError::NothingToRollBack => {
                Self::new(StatusCode::CONFLICT, "nothing_to_roll_back", detail)
            }
            #[allow(unreachable_patterns)]
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail),
        }
    }
}

/// `GET /campaigns`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CampaignList {
    /// Newest first, without their nodes.
    pub campaigns: Vec<Campaign>,
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/json")
        })
}

fn campaign_id(raw: &str) -> Result<CampaignId, ApiError> {
    // A malformed id names no campaign: 404, like an unknown one.
    CampaignId::parse(raw).ok_or_else(|| ApiError::not_found(format!("no campaign {raw}")))
}

/// Creates a campaign: an artefact for a set of nodes (`all`, a `role`, a `hardware`, or
/// listed `nodes`). `409` if a targeted node is in another campaign that is not finished.
#[utoipa::path(post, path = "/campaigns", tag = "campaigns",
    request_body(content = CampaignSpec, content_type = "application/json"),
    security(("bearer" = [])),
    responses((status = 201, body = Campaign, description = "Created"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn create_campaign(
    State(s): State<AppState>,
    actor: axum::Extension<Actor>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec: CampaignSpec = json_body(&headers, &body?, "campaign")?;
    let c = s
        .campaigns
        .create(spec, &format!("http:{}", actor.0 .0))
        .await?;
    Ok(created_at(&c, &format!("/campaigns/{}", c.id)))
}

/// Every campaign, newest first (without their nodes).
#[utoipa::path(get, path = "/campaigns", tag = "campaigns",
    responses((status = 200, body = CampaignList)))]
async fn list_campaigns(State(s): State<AppState>) -> Result<Json<CampaignList>, ApiError> {
    Ok(Json(CampaignList {
        campaigns: s.campaigns.list().await?,
    }))
}

/// One campaign with every targeted node's state and reason.
#[utoipa::path(get, path = "/campaigns/{id}", tag = "campaigns",
    params(("id" = String, Path, description = "The campaign's id (`c-000001`)")),
    responses((status = 200, body = Campaign),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_campaign(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Campaign>, ApiError> {
    let Path(raw) = p?;
    Ok(Json(s.campaigns.get(&campaign_id(&raw)?).await?))
}

/// Starts (created), pauses (running), resumes (paused), cancels (not finished) or
/// approves (awaiting_approval, with `require-approval`; it then starts if its creation
/// asked to) a campaign. `409` for a transition its state does not allow.
#[utoipa::path(post, path = "/campaigns/{id}/{action}", tag = "campaigns",
    params(("id" = String, Path, description = "The campaign's id (`c-000001`)"),
        ("action" = CampaignAction, Path, description = "start, pause, resume, cancel or approve")),
    security(("bearer" = [])),
    responses((status = 200, body = Campaign),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn campaign_action(
    State(s): State<AppState>,
    actor: axum::Extension<Actor>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Campaign>, ApiError> {
    let Path((raw, action)) = p?;
    let id = campaign_id(&raw)?;
    let action = CampaignAction::parse(&action).ok_or_else(|| {
        ApiError::not_found("no such endpoint (start, pause, resume, cancel or approve)")
    })?;
    let who = format!("http:{}", actor.0 .0);
    let c = if action == CampaignAction::Approve {
        s.campaigns.approve(&id, &who).await?
    } else {
        s.campaigns.act(&id, action, &who).await?
    };
    Ok(Json(c))
}

/// Rolls back the campaign's updated nodes with the operator's signed rollback intent
/// (`meshfleet firmware intent --rollback`): meshfleet nodes get the signed ROLLBACK,
/// stock nodes the previous artefact again if it is stored. A campaign not finished is
/// cancelled first. The campaign's `rollback` then follows each node. The same intent
/// again changes nothing. `422` for an intent that is not usable, `409` if no node took
/// the update.
#[utoipa::path(post, path = "/campaigns/{id}/rollback", tag = "campaigns",
    params(("id" = String, Path, description = "The campaign's id (`c-000001`)")),
    request_body(content = RollbackRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses((status = 200, body = Campaign),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn rollback_campaign(
    State(s): State<AppState>,
    actor: axum::Extension<Actor>,
    headers: axum::http::HeaderMap,
    p: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Campaign>, ApiError> {
    let Path(raw) = p?;
    let id = campaign_id(&raw)?;
    let req: RollbackRequest = json_body(&headers, &body?, "rollback")?;
    let c = s
        .campaigns
        .rollback(&id, &req.intent, &format!("http:{}", actor.0 .0))
        .await?;
    Ok(Json(c))
}

// ---------------------------------------------------------------------------------------
// Rollouts

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        let detail = e.to_string();
        match e {
            RolloutError::NotFound(_) => Self::not_found(detail),
            RolloutError::UnknownArtefact(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_artefact", detail)
            }
            RolloutError::InvalidSpec(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_rollout", detail)
            }
            RolloutError::BadIntent(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_rollback_intent",
                detail,
            ),
            RolloutError::Plan(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "cannot_plan", detail)
            }
            RolloutError::Command(_) => {
                Self::new(StatusCode::CONFLICT, "command_not_applicable", detail)
            }
            RolloutError::Store(e) => e.into(),
            RolloutError::MeshStopped => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "mesh_stopped", detail)
            }
            #[allow(unreachable_patterns)]
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail),
        }
    }
}

fn rollout_id(raw: &str) -> Result<RolloutId, ApiError> {
    RolloutId::parse(raw).ok_or_else(|| ApiError::not_found(format!("no rollout {raw}")))
}

/// `POST /rollouts/{id}/skip` body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SkipRequest {
    /// The wave to start now (later than the current one).
    pub to: u16,
}

/// Creates a progressive rollout of an artefact over the fleet (or listed `nodes`): waves
/// (5 % canary, 20 %, 75 %, 100 % by default), health gates, automatic rollback with the
/// operator's pre-signed rollback intent. See `docs/rollouts.md`.
#[utoipa::path(post, path = "/rollouts", tag = "rollouts",
    request_body(content = RolloutSpec, content_type = "application/json"),
    security(("bearer" = [])),
    responses((status = 201, body = Rollout, description = "Created and planned"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn create_rollout(
    State(s): State<AppState>,
    actor: axum::Extension<Actor>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec: RolloutSpec = json_body(&headers, &body?, "rollout")?;
    let r = s
        .rollouts
        .create(spec, &format!("http:{}", actor.0 .0))
        .await?;
    Ok(created_at(&r, &format!("/rollouts/{}", r.id)))
}

/// Every rollout, newest first (without waves, nodes and decisions).
#[utoipa::path(get, path = "/rollouts", tag = "rollouts",
    responses((status = 200, body = RolloutList)))]
async fn list_rollouts(State(s): State<AppState>) -> Result<Json<RolloutList>, ApiError> {
    Ok(Json(RolloutList {
        rollouts: s.rollouts.list()?,
    }))
}

/// One rollout: its waves with their counts, every node's state, and the newest
/// decisions with their reasons.
#[utoipa::path(get, path = "/rollouts/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "The rollout's id (`r-000001`)")),
    responses((status = 200, body = Rollout),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_rollout(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Rollout>, ApiError> {
    let Path(raw) = p?;
    Ok(Json(s.rollouts.get(&rollout_id(&raw)?)?))
}

/// An operator's command: `approve` (the next wave, or past a gate's pause), `pause`,
/// `resume`, `skip` (body `{"to": N}`), `abort` (roll the current wave back) or
/// `rollback` (emergency: every node that took the update, from any state). `409` when
/// the command does not apply in the rollout's state.
#[utoipa::path(post, path = "/rollouts/{id}/{action}", tag = "rollouts",
    params(("id" = String, Path, description = "The rollout's id (`r-000001`)"),
        ("action" = RolloutAction, Path, description = "approve, pause, resume, skip, abort or rollback")),
    request_body(content = Option<SkipRequest>, content_type = "application/json",
        description = "`skip` only: the wave to start"),
    security(("bearer" = [])),
    responses((status = 200, body = Rollout),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn rollout_action(
    State(s): State<AppState>,
    actor: axum::Extension<Actor>,
    p: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Rollout>, ApiError> {
    let Path((raw, action)) = p?;
    let id = rollout_id(&raw)?;
    let action = RolloutAction::parse(&action).ok_or_else(|| {
        ApiError::not_found("no such endpoint (approve, pause, resume, skip, abort or rollback)")
    })?;
    let body = body?;
    let to = if action == RolloutAction::Skip {
        let req: SkipRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request("bad_json", format!("skip needs {{\"to\": N}}: {e}"))
        })?;
        Some(req.to)
    } else {
        None
    };
    let command = action
        .command(to)
        .ok_or_else(|| ApiError::bad_request("bad_json", "skip needs a wave"))?;
    let r = s
        .rollouts
        .command(&id, command, &format!("http:{}", actor.0 .0))
        .await?;
    Ok(Json(r))
}

// ---------------------------------------------------------------------------------------
// Events, metrics, probes, the document

/// A stream of [`GatewayEvent`]s (server-sent events; the SSE `event` field is the event's
/// name, `data` its JSON). A client that falls behind gets a `lagged` event with the count
/// it missed. With `read-auth`: the bearer header, or `?ticket=` from `POST /events/ticket`.
#[utoipa::path(get, path = "/events", tag = "events",
    params(("ticket" = Option<String>, Query,
        description = "A single-use ticket from POST /events/ticket (when read-auth is on and the client cannot send the header)")),
    responses((status = 200, content_type = "text/event-stream", body = GatewayEvent,
        description = "One SSE message per event")))]
async fn events(State(s): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.bus.subscribe();
    let stop = s.stopping.clone();
    let stream = futures_util::stream::unfold((rx, stop), |(mut rx, mut stop)| async move {
        {
            let next = tokio::select! {
                r = rx.recv() => r,
                _ = stop.wait_for(|v| *v) => return None,
            };
            let ev = match next {
                Ok(e) => Event::default()
                    .event(e.name())
                    .data(serde_json::to_string(&e).unwrap_or_default()),
                Err(RecvError::Lagged(n)) => Event::default()
                    .event("lagged")
                    .data(format!("{{\"event\":\"lagged\",\"missed\":{n}}}")),
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(ev), (rx, stop)))
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `POST /events/ticket` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTicket {
    /// Open `GET /events?ticket=<this>` within `expiresIn` seconds; good for one stream.
    pub ticket: String,
    /// Seconds it stays valid.
    pub expires_in: u64,
}

/// Trades the bearer token for a short-lived, single-use ticket that opens the event stream
/// (`GET /events?ticket=…`): for browsers, whose `EventSource` cannot send the header, when
/// `read-auth` is on. The token itself never goes into a URL. See `docs/security.md`.
#[utoipa::path(post, path = "/events/ticket", tag = "events",
    security(("bearer" = [])),
    responses((status = 200, body = EventTicket),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn event_ticket(State(s): State<AppState>) -> Result<Json<EventTicket>, ApiError> {
    let ticket = s.tickets.issue(std::time::Instant::now()).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_tickets",
            e.to_string(),
        )
    })?;
    s.counters
        .event_tickets_issued
        .fetch_add(1, Ordering::Relaxed);
    Ok(Json(EventTicket {
        ticket,
        expires_in: crate::tickets::TICKET_TTL.as_secs(),
    }))
}

/// Prometheus text exposition (format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics_text(State(s): State<AppState>) -> Response {
    let active = s
        .stores
        .alerts
        .list(true, None, usize::MAX >> 1)
        .await
        .map(|a| a.len())
        .ok();
    let text = metrics::render(&s, active);
    let mut r = Response::new(Body::from(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// A probe's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Probe {
    /// `ok` or `ready`.
    pub status: String,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Probe)))]
async fn healthz() -> Json<Probe> {
    Json(Probe {
        status: "ok".into(),
    })
}

/// Readiness: the database takes writes and the mesh node runs.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Probe),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn readyz(State(s): State<AppState>) -> Result<Json<Probe>, ApiError> {
    if !s.stores.status.is_open() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_closed",
            "the database is closed",
        ));
    }
    if !s.mesh.is_running() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mesh_stopped",
            "the mesh node has stopped",
        ));
    }
    Ok(Json(Probe {
        status: "ready".into(),
    }))
}

/// The OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    let mut r = Response::new(Body::from(openapi::document_json()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The handlers' path items, for [`openapi`].
pub(crate) mod paths {
    pub(crate) use super::{
        __path_ack_alert, __path_alerts, __path_campaign_action, __path_clear_alert,
        __path_create_campaign, __path_create_rollout, __path_delete_firmware, __path_event_ticket,
        __path_events, __path_fleet_health, __path_get_campaign, __path_get_rollout,
        __path_healthz, __path_history, __path_list_campaigns, __path_list_firmware,
        __path_list_rollouts, __path_metrics_text, __path_openapi_json, __path_query_now,
        __path_readyz, __path_rollback_campaign, __path_rollout_action, __path_status_list,
        __path_status_one, __path_topology, __path_upload_firmware,
    };
}
