//! The meshfleet gateway: the process next to a mesh that keeps the fleet's state and
//! serves it.
//!
//! ```text
//!  mesh (meshfleet-runtime node + status plugin)      ── MeshPort (mesh.rs)
//!     │ RuntimeEvent: node list, 604 status packages
//!     ▼
//!  ingest task ── Registry (in memory) ── EventBus ──▶ GET /events (SSE)
//!     │ samples, node records, alerts
//!     ▼
//!  stores: NodeStore, HistoryStore, AlertStore, ArtefactStore, AuditLog (store/mod.rs)
//!     │ SqliteStore: one writer thread, batched transactions, WAL
//!     ▼
//!  HTTP API (axum): REST + OpenAPI, /metrics, /healthz, /readyz (api.rs)
//! ```
//!
//! Everything the API and the ingest task share is in [`Shared`]; the stores are trait
//! objects, so a different backend (a NATS JetStream hub, see `docs/gateway.md`) plugs in
//! without touching the API. [`Gateway::start`] wires it all on an already running mesh
//! node and returns a handle; [`run`] is the whole process (`meshfleet gateway`).

pub mod api;
pub mod campaign;
pub mod campaign_engine;
pub mod campaign_rollback;
pub mod campaign_schedule;
pub mod config;
pub mod dashboard;
pub mod events;
pub mod ingest;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod registry;
pub mod rollout;
pub mod status;
pub mod store;
pub mod tickets;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use meshfleet_firmware::VerifyingKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use config::GatewayConfig;

use crate::campaign::CampaignService;
use crate::events::EventBus;
use crate::mesh::MeshPort;
use crate::registry::Registry;
use crate::rollout::RolloutService;
use crate::store::sqlite::Retention;
use crate::store::{
    AlertStore, ArtefactStore, AuditLog, CampaignStore, HistoryStore, NodeStore, RolloutStore,
    SqliteStore, StoreError, StoreStats,
};

/// How often maintenance (rollups, retention, size cap) runs.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(600);

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whether the store can take writes, and its counters (for `/readyz` and `/metrics`).
pub trait StoreStatus: Send + Sync {
    /// Writes are accepted.
    fn is_open(&self) -> bool;
    /// Counters.
    fn stats(&self) -> StoreStats;
}

impl StoreStatus for SqliteStore {
    fn is_open(&self) -> bool {
        Self::is_open(self)
    }

    fn stats(&self) -> StoreStats {
        Self::stats(self)
    }
}

/// The stores, each behind its own interface.
#[derive(Clone)]
pub struct Stores {
    /// Node records.
    pub nodes: Arc<dyn NodeStore>,
    /// Telemetry history.
    pub history: Arc<dyn HistoryStore>,
    /// Alerts.
    pub alerts: Arc<dyn AlertStore>,
    /// Firmware artefacts.
    pub artefacts: Arc<dyn ArtefactStore>,
    /// The audit log.
    pub audit: Arc<dyn AuditLog>,
    /// Campaigns.
    pub campaigns: Arc<dyn CampaignStore>,
    /// Progressive rollouts.
    pub rollouts: Arc<dyn RolloutStore>,
    /// Liveness and counters.
    pub status: Arc<dyn StoreStatus>,
}

impl Stores {
    /// Every store backed by one SQLite database.
    pub fn sqlite(db: Arc<SqliteStore>) -> Self {
        Self {
            nodes: db.clone(),
            history: db.clone(),
            alerts: db.clone(),
            artefacts: db.clone(),
            audit: db.clone(),
            campaigns: db.clone(),
            rollouts: db.clone(),
            status: db,
        }
    }
}

/// Gateway counters (served on `/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Status packages seen.
    pub status_frames: AtomicU64,
    /// Status packages accepted.
    pub status_accepted: AtomicU64,
    /// Status packages rejected (malformed, wrong types, absurd values, registry full).
    pub status_rejected: AtomicU64,
    /// Status packages dropped because their node reported too often.
    pub status_rate_limited: AtomicU64,
    /// HTTP requests answered with an error status.
    pub http_errors: AtomicU64,
    /// Event-stream tickets issued.
    pub event_tickets_issued: AtomicU64,
    /// Event streams opened with a ticket.
    pub event_tickets_redeemed: AtomicU64,
    /// Event-stream tickets refused (unknown, expired or replayed).
    pub event_tickets_refused: AtomicU64,
}

/// What the API and the ingest task share.
pub struct Shared {
    /// The effective configuration.
    pub config: GatewayConfig,
    /// The bearer token mutating requests need (`None`: mutations are refused).
    pub token: Option<String>,
    /// The key uploaded artefacts must be signed with (`None`: uploads are refused).
    pub firmware_key: Option<VerifyingKey>,
    /// The fleet registry.
    pub registry: Registry,
    /// The stores.
    pub stores: Stores,
    /// Change events.
    pub bus: EventBus,
    /// The mesh node.
    pub mesh: Arc<dyn MeshPort>,
    /// Counters.
    pub counters: Counters,
    /// Firmware campaigns.
    pub campaigns: CampaignService,
    /// Progressive rollouts.
    pub rollouts: RolloutService,
    /// Turns true when the gateway shuts down (ends open event streams).
    pub stopping: watch::Receiver<bool>,
    /// Add-ons started on the gateway (the MQTT bridge): their metrics join `/metrics`.
    pub extensions: Extensions,
    /// Operator clears and on-demand queries to the ingest task, which owns the monitor.
    pub(crate) to_monitor: tokio::sync::mpsc::Sender<ingest::ToMonitor>,
    /// Event-stream tickets (`read-auth` with a browser's `EventSource`).
    pub(crate) tickets: tickets::Tickets,
}

/// Something an add-on contributes to `/metrics` (Prometheus text, complete lines).
pub trait MetricsSource: Send + Sync {
    /// Appends this source's series to `out`.
    fn render(&self, out: &mut String);
}

/// Add-ons registered on a running gateway (see [`Gateway::spawn_extension`]).
#[derive(Default)]
pub struct Extensions {
    metrics: std::sync::Mutex<Vec<Arc<dyn MetricsSource>>>,
}

impl Extensions {
    /// Adds a metrics source.
    pub fn add_metrics(&self, m: Arc<dyn MetricsSource>) {
        self.metrics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(m);
    }

    /// Renders every registered source.
    pub fn render_metrics(&self, out: &mut String) {
        let sources = self
            .metrics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for m in sources {
            m.render(out);
        }
    }
}

/// Starts an add-on on a running gateway: gets the shared state and the shutdown signal
/// (turns true when the gateway stops), returns its task, which the gateway's shutdown
/// awaits (bounded) so the add-on can say goodbye (an MQTT bridge publishes `offline`).
pub type StartHook =
    Box<dyn FnOnce(Arc<Shared>, watch::Receiver<bool>) -> JoinHandle<()> + Send + 'static>;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The database could not be opened.
    #[error("cannot open the database {path}: {source}")]
    Store {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The HTTP address could not be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The token file could not be read or is empty.
    #[error("token file {path}: {reason}")]
    Token {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The firmware key could not be read.
    #[error("firmware key: {0}")]
    FirmwareKey(#[from] meshfleet_firmware::keys::KeyFileError),
    /// The mesh node could not start.
    #[error("cannot start the mesh node: {0}")]
    Mesh(#[from] meshfleet_runtime::StartError),
}

/// Reads the token from the config or its file.
pub fn load_token(config: &GatewayConfig) -> Result<Option<String>, GatewayError> {
    if let Some(path) = &config.token_file {
        let text = std::fs::read_to_string(path).map_err(|e| GatewayError::Token {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let token = text.lines().next().unwrap_or("").trim().to_owned();
        if token.len() < 16 {
            return Err(GatewayError::Token {
                path: path.clone(),
                reason: "the token must be at least 16 characters".into(),
            });
        }
        return Ok(Some(token));
    }
    Ok(config.token.clone().filter(|t| !t.is_empty()))
}

/// A running gateway (HTTP server, ingest, maintenance) on a running mesh node.
pub struct Gateway {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Starts serving: restores the registry from `stores`, subscribes to `mesh`, binds
    /// the HTTP listener (`config.http`; port 0 picks one, see [`Gateway::http_addr`]).
    /// `maintain` runs periodic maintenance (rollups, retention, size cap), if given.
    pub async fn start(
        config: GatewayConfig,
        mesh: Arc<dyn MeshPort>,
        stores: Stores,
        maintain: Option<Arc<SqliteStore>>,
    ) -> Result<Self, GatewayError> {
        let token = load_token(&config)?;
        let firmware_key = config
            .firmware_key
            .as_deref()
            .map(meshfleet_firmware::keys::read_public_key)
            .transpose()?;
        let nodes = stores.nodes.load().await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the stored nodes; starting empty");
            Vec::new()
        });
        info!(nodes = nodes.len(), "registry restored");
        let campaigns = stores.campaigns.load().await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the stored campaigns; starting without");
            Vec::new()
        });
        info!(campaigns = campaigns.len(), "campaigns restored");
        // Subscribe before anything can happen on the mesh that we should see.
        let events = mesh.subscribe();
        let listener =
            TcpListener::bind(config.http)
                .await
                .map_err(|source| GatewayError::Bind {
                    addr: config.http,
                    source,
                })?;
        let http_addr = listener.local_addr().map_err(|source| GatewayError::Bind {
            addr: config.http,
            source,
        })?;
        let (shutdown, rx) = watch::channel(false);
        let campaign_store = stores.campaigns.clone();
        let (to_monitor, commands) = tokio::sync::mpsc::channel(ingest::MONITOR_QUEUE);
        let rollout_store = stores.rollouts.clone();
        let shared = Arc::new_cyclic(|weak| Shared {
            registry: Registry::restore(nodes),
            token,
            firmware_key,
            stores,
            bus: EventBus::default(),
            mesh,
            counters: Counters::default(),
            campaigns: CampaignService::new(weak.clone(), campaign_store, campaigns),
            rollouts: RolloutService::new(weak.clone(), rollout_store),
            stopping: rx.clone(),
            config,
            extensions: Extensions::default(),
            to_monitor,
            tickets: tickets::Tickets::default(),
        });
        let mut tasks = vec![tokio::spawn(ingest::run(
            shared.clone(),
            events,
            rx.clone(),
            commands,
        ))];
        tasks.push(tokio::spawn(campaign_engine::run(
            shared.clone(),
            rx.clone(),
        )));
        shared.rollouts.restore().await;
        tasks.push(tokio::spawn(rollout::run(shared.clone(), rx.clone())));
        if let Some(db) = maintain {
            tasks.push(tokio::spawn(maintenance(shared.clone(), db, rx.clone())));
        }
        let app = api::router(shared.clone());
        let mut stop = rx;
        tasks.push(tokio::spawn(async move {
            let serve = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                warn!(error = %e, "the HTTP server failed");
            }
        }));
        info!(addr = %http_addr, "HTTP API listening");
        Ok(Self {
            shared,
            http_addr,
            shutdown,
            tasks,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The shared state (tests, embedding).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts an add-on (see [`StartHook`]); [`Gateway::shutdown`] waits for its task.
    pub fn spawn_extension(&mut self, hook: StartHook) {
        let task = hook(self.shared.clone(), self.shared.stopping.clone());
        self.tasks.push(task);
    }

    /// Stops the HTTP server (open event streams end), the ingest task (flushing what it
    /// holds) and maintenance, and waits for them.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            // A graceful HTTP shutdown waits for open requests; bound it.
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

async fn maintenance(shared: Arc<Shared>, db: Arc<SqliteStore>, mut stop: watch::Receiver<bool>) {
    let c = &shared.config;
    let retention = Retention {
        raw_days: c.raw_retention_days,
        rollup_days: c.rollup_retention_days,
        cap_bytes: c.db_size_cap_mb.saturating_mul(1024 * 1024),
    };
    let mut every = tokio::time::interval(MAINTENANCE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = every.tick() => match db.maintain(now_millis(), retention).await {
                Ok(m) => info!(
                    rolled_up = m.rolled_up,
                    samples_deleted = m.samples_deleted,
                    rollups_deleted = m.rollups_deleted,
                    used_bytes = m.used_bytes,
                    "maintenance done"
                ),
                Err(e) => warn!(error = %e, "maintenance failed"),
            },
        }
    }
}

/// The whole process: opens the database, joins the mesh, serves until `stop` resolves
/// (the CLI passes SIGTERM/Ctrl-C), then shuts everything down in order: HTTP and ingest
/// first (flushing), the mesh node (closing links), the database writer last.
pub async fn run(
    config: GatewayConfig,
    node: meshfleet_mesh::Config,
    runtime: meshfleet_runtime::RuntimeConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), GatewayError> {
    run_with(config, node, runtime, stop, Vec::new()).await
}

/// [`run`] with add-ons started once the gateway serves (the CLI's `--mqtt` bridge).
pub async fn run_with(
    config: GatewayConfig,
    node: meshfleet_mesh::Config,
    runtime: meshfleet_runtime::RuntimeConfig,
    stop: impl std::future::Future<Output = ()>,
    hooks: Vec<StartHook>,
) -> Result<(), GatewayError> {
    let db = Arc::new(
        SqliteStore::open(&config.db).map_err(|source| GatewayError::Store {
            path: config.db.clone(),
            source,
        })?,
    );
    let (mesh, mesh_task) = mesh::join(node, runtime).await?;
    info!(node = %mesh.node_id(), "joined the mesh");
    let gateway = Gateway::start(
        config,
        Arc::new(mesh.clone()),
        Stores::sqlite(db.clone()),
        Some(db.clone()),
    )
    .await;
    let mut gateway = match gateway {
        Ok(g) => g,
        Err(e) => {
            mesh.shutdown().await;
            return Err(e);
        }
    };
    for hook in hooks {
        gateway.spawn_extension(hook);
    }
    stop.await;
    info!("shutting down");
    gateway.shutdown().await;
    mesh.shutdown().await;
    let _ = mesh_task.await;
    let db2 = db.clone();
    let _ = tokio::task::spawn_blocking(move || db2.close()).await;
    info!("stopped");
    Ok(())
}
