//! Storage behind narrow interfaces, one per concern, so that another backend (a NATS
//! JetStream hub: key-value, object store, streams; see `docs/gateway.md`) is a new
//! implementation, not a rewrite.
//!
//! Two kinds of writes:
//! * **fire-and-forget** (`append`, `save`): telemetry and registry snapshots. They return at
//!   once; a full write queue drops them and counts it ([`StoreStats::dropped`]), so a slow
//!   disk never stalls the mesh.
//! * **acknowledged** (everything returning a [`StoreFuture`] that changes state): the future
//!   resolves only once the change is durable (committed), so what the API confirmed
//!   survives a SIGKILL.

pub mod sqlite;

use std::future::Future;
use std::pin::Pin;

use crate::campaign::{Campaign, CampaignId, CampaignNode};
use crate::model::{
    Alert, ArtefactInfo, AuditEntry, History, NewAlert, NodeStatus, Resolution, Sample, Severity,
    UnixMillis,
};

pub use sqlite::SqliteStore;

/// What the store's async methods return.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The write queue is full: try again later (HTTP 503).
    #[error("the store is busy; try again")]
    Busy,
    /// The store has shut down.
    #[error("the store has shut down")]
    Closed,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// A stored value did not read back (a corrupt or foreign database).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The database's schema is newer than this program.
    #[error("database schema version {found} is newer than this program's {known}")]
    SchemaTooNew {
        /// In the file.
        found: i64,
        /// Known to us.
        known: i64,
    },
}

/// Counters of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Fire-and-forget writes dropped because the queue was full.
    pub dropped: u64,
    /// Writes committed.
    pub written: u64,
    /// Transactions committed (writes are batched).
    pub batches: u64,
}

/// The fleet registry's persistence: every node ever seen.
pub trait NodeStore: Send + Sync {
    /// Saves node records (fire-and-forget).
    fn save(&self, nodes: Vec<NodeStatus>);
    /// Every node stored.
    fn load(&self) -> StoreFuture<'_, Vec<NodeStatus>>;
}

/// Per-node telemetry history.
pub trait HistoryStore: Send + Sync {
    /// Appends samples (fire-and-forget).
    fn append(&self, samples: Vec<Sample>);
    /// Points of `node` in `[from, to)`, at most `limit`, oldest first.
    fn query(
        &self,
        node: u32,
        from: UnixMillis,
        to: UnixMillis,
        resolution: Resolution,
        limit: usize,
    ) -> StoreFuture<'_, History>;
}

/// Alerts and their lifecycle.
pub trait AlertStore: Send + Sync {
    /// Raises an alert; returns it with its id (acknowledged).
    fn raise(&self, alert: NewAlert) -> StoreFuture<'_, Alert>;
    /// Marks an alert cleared (acknowledged).
    fn clear(&self, id: i64, at: UnixMillis) -> StoreFuture<'_, ()>;
    /// Changes an active alert's severity (acknowledged).
    fn set_severity(&self, id: i64, severity: Severity) -> StoreFuture<'_, ()>;
    /// Acknowledges an alert; `None` if there is no such alert (acknowledged).
    fn ack(
        &self,
        id: i64,
        actor: String,
        note: Option<String>,
        at: UnixMillis,
    ) -> StoreFuture<'_, Option<Alert>>;
    /// One alert by id.
    fn get(&self, id: i64) -> StoreFuture<'_, Option<Alert>>;
    /// An operator clears an alert by hand, with an optional note; `None` if there is no
    /// such alert, else the alert and whether this call cleared it (`false`: it had already
    /// cleared, and keeps how and when) (acknowledged).
    fn clear_by(
        &self,
        id: i64,
        actor: String,
        note: Option<String>,
        at: UnixMillis,
    ) -> StoreFuture<'_, Option<(Alert, bool)>>;
    /// Alerts, newest first: only active ones (not cleared) or all; at most `limit`.
    fn list(
        &self,
        active_only: bool,
        node: Option<u32>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Alert>>;
}

/// Firmware artefacts, stored by content hash.
pub trait ArtefactStore: Send + Sync {
    /// Stores an artefact (already verified) and its bytes; `false` if it was already
    /// there (acknowledged).
    fn put(&self, info: ArtefactInfo, bytes: Vec<u8>) -> StoreFuture<'_, bool>;
    /// Every artefact's metadata, newest first.
    fn list(&self) -> StoreFuture<'_, Vec<ArtefactInfo>>;
    /// One artefact's bytes.
    fn bytes(&self, id: String) -> StoreFuture<'_, Option<Vec<u8>>>;
    /// Deletes an artefact; `false` if there was none (acknowledged).
    fn delete(&self, id: String) -> StoreFuture<'_, bool>;
}

/// Who did what, when.
pub trait AuditLog: Send + Sync {
    /// Records an action (acknowledged).
    fn record(&self, entry: AuditEntry) -> StoreFuture<'_, ()>;
    /// The newest entries, newest first.
    fn recent(&self, limit: usize) -> StoreFuture<'_, Vec<AuditEntry>>;
}

/// Campaigns and their nodes' states.
///
/// The campaign service keeps every campaign in memory and is the only writer; the store
/// makes it durable. A NATS backend maps it onto a key-value bucket (`docs/gateway.md`).
pub trait CampaignStore: Send + Sync {
    /// Stores a new campaign with its nodes (acknowledged).
    fn create(&self, campaign: Campaign) -> StoreFuture<'_, ()>;
    /// Stores a campaign's header (state, counts, times) and the nodes it carries; nodes
    /// not carried keep what is stored (acknowledged).
    fn update(&self, campaign: Campaign) -> StoreFuture<'_, ()>;
    /// Stores node states of campaign `id` (acknowledged; the writer batches them with
    /// whatever else is queued).
    fn save_nodes(&self, id: CampaignId, nodes: Vec<CampaignNode>) -> StoreFuture<'_, ()>;
    /// Every campaign with its nodes, oldest first.
    fn load(&self) -> StoreFuture<'_, Vec<Campaign>>;
}

/// A rollout as stored: its state as one opaque JSON record (the store does not read it)
/// and its decision log as numbered JSON records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRollout {
    /// Sequence number (the id's digits).
    pub seq: u64,
    /// Its id (`r-000001`).
    pub id: String,
    /// Its phase label (for queries by hand).
    pub state: String,
    /// Created (ms since the epoch).
    pub created_at: UnixMillis,
    /// Last change.
    pub updated_at: UnixMillis,
    /// The whole state, JSON.
    pub record: String,
    /// Writing: decisions to append, by number. Loading: every stored decision, in order.
    pub new_decisions: Vec<(u64, String)>,
}

/// Progressive rollouts (`rollout.rs`).
pub trait RolloutStore: Send + Sync {
    /// Writes the rollout's record (created or replaced) and appends its new decisions,
    /// in one acknowledged transaction.
    fn put(&self, rollout: StoredRollout) -> StoreFuture<'_, ()>;
    /// Every stored rollout with its decisions, oldest first.
    fn load(&self) -> StoreFuture<'_, Vec<StoredRollout>>;
}
