//! The embedded SQLite backend.
//!
//! * **One writer thread** owns the only writing connection. Writes arrive over a bounded
//!   channel; the thread takes the first, then whatever else is queued (up to
//!   [`MAX_BATCH`]), applies them in **one transaction** and commits, and only then
//!   answers the acknowledged ones. The async runtime never waits on the disk.
//! * **Readers**: a few read-only connections used from `spawn_blocking`; WAL lets them
//!   read while the writer writes.
//! * **WAL, `synchronous=NORMAL`**: a committed transaction survives the process being
//!   killed (SIGKILL); only an OS crash or power loss can lose the last few.
//! * **Migrations**: `PRAGMA user_version` is the schema version; [`MIGRATIONS`] are applied
//!   in order, each in its own transaction. A newer file than this program is refused.
//! * **Maintenance** ([`SqliteStore::maintain`]): hourly rollups of completed hours, the
//!   retention windows, and the size cap (oldest raw history first, then oldest rollups).

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{
    AlertStore, ArtefactStore, AuditLog, CampaignStore, HistoryStore, NodeStore, RolloutStore,
    StoreError, StoreFuture, StoreStats, StoredRollout,
};
use crate::campaign::{Campaign, CampaignId, CampaignNode, NodeState};
use crate::model::{
    Alert, AlertKind, ArtefactInfo, AuditEntry, History, HistoryPoint, NewAlert, NodeStatus,
    Resolution, Sample, Severity, UnixMillis,
};

/// Most writes committed in one transaction.
pub const MAX_BATCH: usize = 2048;

/// Writes queued for the writer thread before fire-and-forget ones are dropped and
/// acknowledged ones refused ([`StoreError::Busy`]).
pub const QUEUE_CAPACITY: usize = 4096;

/// Read connections.
const READERS: usize = 2;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The `dash` migration (issue 12): who cleared an alert by hand, and their note (an alert its
/// condition cleared keeps both NULL); message counter increases per hourly rollup and the
/// seconds they cover, so rollups serve message rates (NULL in rollups made before it).
const DASH_CLEARED_BY_AND_RATES: &str = "ALTER TABLE alerts ADD COLUMN cleared_by TEXT;
     ALTER TABLE alerts ADD COLUMN clear_note TEXT;
     ALTER TABLE rollups ADD COLUMN rx_inc REAL;
     ALTER TABLE rollups ADD COLUMN tx_inc REAL;
     ALTER TABLE rollups ADD COLUMN drop_inc REAL;
     ALTER TABLE rollups ADD COLUMN rate_span_s REAL;";

// The rollup SQL spells NO_COUNTERS as a literal.
const _: () = assert!(crate::model::NO_COUNTERS == 4_294_967_295);

/// A sample is paired with the previous one of its node for a message rate only if that one
/// is at most this old (a longer gap says nothing about the rate in between).
const RATE_GAP_MS: i64 = 2 * HOUR_MS;

/// The schema, one entry per version (`user_version` = number applied).
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
     CREATE TABLE nodes (
        node_id INTEGER PRIMARY KEY,
        updated_at INTEGER NOT NULL,
        record TEXT NOT NULL
     );
     CREATE TABLE samples (
        node_id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        uptime INTEGER NOT NULL,
        mem_kb INTEGER NOT NULL,
        wifi INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        loss INTEGER NOT NULL,
        msg_rx INTEGER NOT NULL,
        msg_tx INTEGER NOT NULL,
        msg_drop INTEGER NOT NULL,
        nodes INTEGER NOT NULL,
        alerts INTEGER NOT NULL,
        PRIMARY KEY (node_id, ts)
     ) WITHOUT ROWID;
     CREATE INDEX samples_ts ON samples (ts);
     CREATE TABLE rollups (
        node_id INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        n INTEGER NOT NULL,
        uptime_max INTEGER NOT NULL,
        mem_avg REAL NOT NULL,
        mem_min INTEGER NOT NULL,
        wifi_avg REAL NOT NULL,
        latency_avg REAL NOT NULL,
        loss_avg REAL NOT NULL,
        alerting INTEGER NOT NULL,
        PRIMARY KEY (node_id, bucket)
     ) WITHOUT ROWID;
     CREATE INDEX rollups_bucket ON rollups (bucket);
     CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        node_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        message TEXT NOT NULL,
        raised_at INTEGER NOT NULL,
        cleared_at INTEGER,
        acked_at INTEGER,
        acked_by TEXT,
        ack_note TEXT
     );
     CREATE INDEX alerts_open ON alerts (cleared_at, id);
     CREATE TABLE artefacts (
        id TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        hardware TEXT NOT NULL,
        version TEXT NOT NULL,
        size INTEGER NOT NULL,
        image_size INTEGER NOT NULL,
        image_sha256 TEXT NOT NULL,
        key_id TEXT NOT NULL,
        uploaded_at INTEGER NOT NULL,
        uploaded_by TEXT NOT NULL
     );
     CREATE TABLE artefact_blobs (
        id TEXT PRIMARY KEY REFERENCES artefacts (id) ON DELETE CASCADE,
        bytes BLOB NOT NULL
     );
     -- Campaign state, ready for the campaign endpoints (not served yet: they need the
     -- agent's OTA source).
     CREATE TABLE campaigns (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        artefact_id TEXT NOT NULL REFERENCES artefacts (id),
        targets TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE TABLE campaign_nodes (
        campaign_id INTEGER NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
        node_id INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (campaign_id, node_id)
     ) WITHOUT ROWID;
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL
     );",
    // 2: campaigns (the tables of version 1 were placeholders, never written).
    "DROP TABLE campaign_nodes;
     DROP TABLE campaigns;
     CREATE TABLE campaigns (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        artefact_id TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        record TEXT NOT NULL
     );
     CREATE TABLE campaign_nodes (
        campaign_seq INTEGER NOT NULL REFERENCES campaigns (seq) ON DELETE CASCADE,
        node_id INTEGER NOT NULL,
        state TEXT NOT NULL,
        progress REAL NOT NULL,
        reason TEXT,
        from_version TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (campaign_seq, node_id)
     ) WITHOUT ROWID;",
    // 3: the MQTT outbox (contract §4): alerts and command replies the MQTT bridge must deliver at QoS 1, kept
    // until the broker's PUBACK, so a broker outage or a gateway restart loses none.
    // `seq` orders delivery; `dedup` keeps a message from being queued twice.
    "CREATE TABLE mqtt_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        retain INTEGER NOT NULL DEFAULT 0,
        dedup TEXT UNIQUE,
        created_at INTEGER NOT NULL
     );",
    // 4: the MQTT bridge's command memory (issue 13).
    MQTT_COMMAND_MEMORY,
    // 5: alerts cleared by hand; message rates in rollups (issue 12).
    DASH_CLEARED_BY_AND_RATES,
    // 6: progressive rollouts (issue 14).
    MIGRATION_ROLLOUTS,
];

/// The MQTT bridge's command memory: every nonce seen within the replay window (so a
/// command replayed right after a gateway restart is still refused) and the first reply of
/// each recent transaction (so a retry after a restart gets that reply, not a second
/// action). Written and pruned by `meshfleet-mqtt` on its own connection.
const MQTT_COMMAND_MEMORY: &str = "CREATE TABLE mqtt_nonces (
        nonce TEXT PRIMARY KEY,
        ts INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX mqtt_nonces_ts ON mqtt_nonces (ts);
     CREATE TABLE mqtt_transactions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        txn TEXT NOT NULL UNIQUE,
        reply TEXT NOT NULL,
        at INTEGER NOT NULL
     );";

/// Progressive rollouts (`rollout.rs`): one row per rollout with its whole state as JSON
/// (the controller's serde state, the driver's bookkeeping), rewritten after every change,
/// and its decision log, appended. A gateway restart reads both and resumes.
const MIGRATION_ROLLOUTS: &str = "CREATE TABLE rollouts (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        record TEXT NOT NULL
     );
     CREATE TABLE rollout_decisions (
        rollout_seq INTEGER NOT NULL REFERENCES rollouts (seq) ON DELETE CASCADE,
        n INTEGER NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (rollout_seq, n)
     ) WITHOUT ROWID;";

/// Retention and size settings for [`SqliteStore::maintain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Full-resolution history kept, days.
    pub raw_days: u32,
    /// Rollups kept, days.
    pub rollup_days: u32,
    /// Size cap of the live data, bytes.
    pub cap_bytes: u64,
}

/// What one maintenance pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Rollup rows written.
    pub rolled_up: u64,
    /// Raw samples deleted (retention and cap).
    pub samples_deleted: u64,
    /// Rollups deleted (retention and cap).
    pub rollups_deleted: u64,
    /// Bytes in use afterwards.
    pub used_bytes: u64,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write for the writer thread.
enum Op {
    Nodes(Vec<NodeStatus>),
    Samples(Vec<Sample>),
    Raise(NewAlert, Reply<Alert>),
    Clear(i64, UnixMillis, Reply<()>),
    Severity(i64, Severity, Reply<()>),
    Ack {
        id: i64,
        actor: String,
        note: Option<String>,
        at: UnixMillis,
        reply: Reply<Option<Alert>>,
    },
    ClearBy {
        id: i64,
        actor: String,
        note: Option<String>,
        at: UnixMillis,
        reply: Reply<Option<(Alert, bool)>>,
    },
    PutArtefact(Box<ArtefactInfo>, Vec<u8>, Reply<bool>),
    DeleteArtefact(String, Reply<bool>),
    Audit(AuditEntry, Reply<()>),
    CampaignPut(Box<Campaign>, bool, Reply<()>),
    CampaignNodes(CampaignId, Vec<CampaignNode>, Reply<()>),
    Maintain(UnixMillis, Retention, Reply<Maintenance>),
    RolloutPut(Box<StoredRollout>, Reply<()>),
}

/// An answer held until the transaction it belongs to has committed.
type Pending = Box<dyn FnOnce(Option<&str>) + Send>;

fn hold<T: Send + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Pending {
    Box::new(move |commit_error| {
        let result = match commit_error {
            Some(e) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
            None => result,
        };
        // The caller may have gone away (request cancelled); nothing to do then.
        let _ = reply.send(result);
    })
}

#[derive(Default)]
struct Counters {
    dropped: AtomicU64,
    written: AtomicU64,
    batches: AtomicU64,
}

/// The SQLite store; implements every store trait. Cheap to share (`Arc`).
pub struct SqliteStore {
    tx: Mutex<Option<SyncSender<Op>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Vec<Arc<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, migrates it, and starts the
    /// writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            r.busy_timeout(std::time::Duration::from_secs(5))?;
            readers.push(Arc::new(Mutex::new(r)));
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let writer = std::thread::Builder::new()
            .name("gateway-sqlite-writer".into())
            .spawn(move || write_loop(conn, rx, &c))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers,
            next_reader: AtomicUsize::new(0),
            counters,
        })
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            written: self.counters.written.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
        }
    }

    /// Whether the writer is accepting writes.
    pub fn is_open(&self) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// One maintenance pass: rollups, retention, size cap (acknowledged).
    pub fn maintain(&self, now: UnixMillis, retention: Retention) -> StoreFuture<'_, Maintenance> {
        self.acked(|r| Op::Maintain(now, retention, r))
    }

    /// Stops the writer after everything queued so far is committed, and waits for it.
    pub fn close(&self) {
        drop(
            self.tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = writer {
            if w.join().is_err() {
                warn!("the SQLite writer thread panicked");
            }
        }
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        let guard = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = guard.as_ref() else {
            return Err(StoreError::Closed);
        };
        tx.try_send(op).map_err(|e| match e {
            TrySendError::Full(_) => StoreError::Busy,
            TrySendError::Disconnected(_) => StoreError::Closed,
        })
    }

    fn fire(&self, op: Op) {
        if let Err(e) = self.send(op) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            debug!(error = %e, "write dropped");
        }
    }

    fn acked<T: Send + 'static>(&self, op: impl FnOnce(Reply<T>) -> Op) -> StoreFuture<'_, T> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(op(tx));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn read<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len().max(1);
        let conn = self.readers.get(i).cloned();
        Box::pin(async move {
            let conn = conn.ok_or(StoreError::Closed)?;
            tokio::task::spawn_blocking(move || {
                let c = conn.lock().unwrap_or_else(PoisonError::into_inner);
                f(&c)
            })
            .await
            .map_err(|e| StoreError::Corrupt(format!("reader task failed: {e}")))?
        })
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        debug!(version = i + 1, "database migrated");
    }
    Ok(())
}

fn write_loop(mut conn: Connection, rx: Receiver<Op>, counters: &Counters) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let n = ops.len() as u64;
        let mut pending = Vec::new();
        let commit = conn.transaction().map_err(StoreError::from).and_then(|tx| {
            for op in ops {
                pending.push(apply(&tx, op));
            }
            tx.commit().map_err(StoreError::from)
        });
        let error = commit.err().map(|e| e.to_string());
        if let Some(e) = &error {
            warn!(error = %e, writes = n, "SQLite batch failed");
        } else {
            counters.written.fetch_add(n, Ordering::Relaxed);
            counters.batches.fetch_add(1, Ordering::Relaxed);
        }
        for p in pending {
            p(error.as_deref());
        }
    }
}

fn apply(tx: &Transaction<'_>, op: Op) -> Pending {
    match op {
        Op::Nodes(nodes) => {
            if let Err(e) = save_nodes(tx, &nodes) {
                warn!(error = %e, "saving nodes failed");
            }
            Box::new(|_| {})
        }
        Op::Samples(samples) => {
            if let Err(e) = insert_samples(tx, &samples) {
                warn!(error = %e, "saving samples failed");
            }
            Box::new(|_| {})
        }
        Op::Raise(a, reply) => hold(reply, raise(tx, a)),
        Op::Clear(id, at, reply) => hold(
            reply,
            tx.execute(
                "UPDATE alerts SET cleared_at = ?2 WHERE id = ?1 AND cleared_at IS NULL",
                params![id, at],
            )
            .map(|_| ())
            .map_err(StoreError::from),
        ),
        Op::Severity(id, severity, reply) => hold(
            reply,
            tx.execute(
                "UPDATE alerts SET severity = ?2 WHERE id = ?1",
                params![id, severity.label()],
            )
            .map(|_| ())
            .map_err(StoreError::from),
        ),
        Op::Ack {
            id,
            actor,
            note,
            at,
            reply,
        } => hold(reply, ack(tx, id, &actor, note.as_deref(), at)),
        Op::ClearBy {
            id,
            actor,
            note,
            at,
            reply,
        } => hold(reply, clear_by(tx, id, &actor, note.as_deref(), at)),
        Op::PutArtefact(info, bytes, reply) => hold(reply, put_artefact(tx, &info, &bytes)),
        Op::DeleteArtefact(id, reply) => hold(
            reply,
            tx.execute("DELETE FROM artefacts WHERE id = ?1", params![id])
                .map(|n| n > 0)
                .map_err(StoreError::from),
        ),
        Op::Audit(e, reply) => hold(
            reply,
            tx.execute(
                "INSERT INTO audit (ts, actor, action, target) VALUES (?1, ?2, ?3, ?4)",
                params![e.ts, e.actor, e.action, e.target],
            )
            .map(|_| ())
            .map_err(StoreError::from),
        ),
        Op::CampaignPut(c, create, reply) => hold(reply, put_campaign(tx, &c, create)),
        Op::CampaignNodes(id, nodes, reply) => hold(reply, put_campaign_nodes(tx, &id, &nodes)),
        Op::Maintain(now, retention, reply) => hold(reply, maintain(tx, now, retention)),
        Op::RolloutPut(r, reply) => hold(reply, put_rollout(tx, &r)),
    }
}

/// Writes a rollout's record (insert or replace) and appends its new decisions.
fn put_rollout(tx: &Transaction<'_>, r: &StoredRollout) -> Result<(), StoreError> {
    let seq = i64::try_from(r.seq).map_err(|_| StoreError::Corrupt(format!("rollout {}", r.id)))?;
    tx.execute(
        "INSERT INTO rollouts (seq, id, state, created_at, updated_at, record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (seq) DO UPDATE SET state = excluded.state,
         updated_at = excluded.updated_at, record = excluded.record",
        params![seq, r.id, r.state, r.created_at, r.updated_at, r.record],
    )?;
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO rollout_decisions (rollout_seq, n, record) VALUES (?1, ?2, ?3)",
    )?;
    for (n, d) in &r.new_decisions {
        let n = i64::try_from(*n).unwrap_or(i64::MAX);
        stmt.execute(params![seq, n, d])?;
    }
    Ok(())
}

fn load_rollouts(c: &Connection) -> Result<Vec<StoredRollout>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT seq, id, state, created_at, updated_at, record FROM rollouts ORDER BY seq",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(StoredRollout {
                seq: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
                id: r.get(1)?,
                state: r.get(2)?,
                created_at: r.get(3)?,
                updated_at: r.get(4)?,
                record: r.get(5)?,
                new_decisions: Vec::new(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut d =
        c.prepare("SELECT n, record FROM rollout_decisions WHERE rollout_seq = ?1 ORDER BY n")?;
    let mut out = Vec::with_capacity(rows.len());
    for mut r in rows {
        let seq = i64::try_from(r.seq).unwrap_or(i64::MAX);
        r.new_decisions = d
            .query_map(params![seq], |row| {
                Ok((row.get::<_, i64>(0)?.try_into().unwrap_or(0), row.get(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        out.push(r);
    }
    Ok(out)
}

fn campaign_seq(id: &CampaignId) -> Result<i64, StoreError> {
    id.seq()
        .and_then(|s| i64::try_from(s).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("campaign id {id}")))
}

/// Writes a campaign's header (its JSON without nodes) and the nodes it carries.
fn put_campaign(tx: &Transaction<'_>, c: &Campaign, create: bool) -> Result<(), StoreError> {
    let seq = campaign_seq(&c.id)?;
    let record =
        serde_json::to_string(&c.summary()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if create {
        tx.execute(
            "INSERT INTO campaigns (seq, id, artefact_id, state, created_at, updated_at, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                seq,
                c.id.0,
                c.artefact,
                c.state.label(),
                c.created_at_ms,
                c.updated_at_ms,
                record
            ],
        )?;
    } else {
        let n = tx.execute(
            "UPDATE campaigns SET state = ?2, updated_at = ?3, record = ?4 WHERE seq = ?1",
            params![seq, c.state.label(), c.updated_at_ms, record],
        )?;
        if n == 0 {
            return Err(StoreError::Corrupt(format!("no stored campaign {}", c.id)));
        }
    }
    put_campaign_nodes(tx, &c.id, &c.nodes)
}

fn put_campaign_nodes(
    tx: &Transaction<'_>,
    id: &CampaignId,
    nodes: &[CampaignNode],
) -> Result<(), StoreError> {
    let seq = campaign_seq(id)?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO campaign_nodes (campaign_seq, node_id, state, progress, reason,
         from_version, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (campaign_seq, node_id) DO UPDATE SET state = excluded.state,
         progress = excluded.progress, reason = excluded.reason,
         from_version = excluded.from_version, updated_at = excluded.updated_at",
    )?;
    for n in nodes {
        stmt.execute(params![
            seq,
            n.node,
            n.state.label(),
            n.progress,
            n.reason,
            n.from_version,
            n.updated_at_ms
        ])?;
    }
    Ok(())
}

fn load_campaigns(c: &Connection) -> Result<Vec<Campaign>, StoreError> {
    let mut stmt = c.prepare("SELECT seq, record FROM campaigns ORDER BY seq")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut nodes_stmt = c.prepare(
        "SELECT node_id, state, progress, reason, from_version, updated_at
         FROM campaign_nodes WHERE campaign_seq = ?1 ORDER BY node_id",
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (seq, record) in rows {
        let mut campaign: Campaign = match serde_json::from_str(&record) {
            Ok(c) => c,
            Err(e) => {
                warn!(seq, error = %e, "unreadable campaign record skipped");
                continue;
            }
        };
        let nodes = nodes_stmt
            .query_map(params![seq], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, f64>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        campaign.nodes = nodes
            .into_iter()
            .map(|(node, state, progress, reason, from_version, at)| {
                let state = NodeState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("node state {state:?}")))?;
                Ok(CampaignNode {
                    node,
                    state,
                    progress,
                    reason,
                    from_version,
                    updated_at_ms: at,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        campaign.recount();
        out.push(campaign);
    }
    Ok(out)
}

fn save_nodes(tx: &Transaction<'_>, nodes: &[NodeStatus]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO nodes (node_id, updated_at, record) VALUES (?1, ?2, ?3)
         ON CONFLICT (node_id) DO UPDATE SET updated_at = excluded.updated_at,
         record = excluded.record",
    )?;
    for n in nodes {
        let record = serde_json::to_string(n).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        stmt.execute(params![n.node_id, n.last_seen, record])?;
    }
    Ok(())
}

fn insert_samples(tx: &Transaction<'_>, samples: &[Sample]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO samples (node_id, ts, uptime, mem_kb, wifi, latency_ms, loss,
         msg_rx, msg_tx, msg_drop, nodes, alerts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for s in samples {
        let r = &s.report;
        stmt.execute(params![
            s.node_id,
            s.ts,
            r.uptime,
            r.free_memory_kb,
            r.wifi_quality,
            r.latency_ms,
            r.packet_loss,
            r.messages_received,
            r.messages_sent,
            r.messages_dropped,
            r.node_count,
            r.alert_flags
        ])?;
    }
    Ok(())
}

const ALERT_COLUMNS: &str = "id, node_id, kind, severity, message, raised_at, cleared_at, acked_at,
     acked_by, ack_note, cleared_by, clear_note";

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Alert, StoreError>> {
    let kind: String = r.get(2)?;
    let severity: String = r.get(3)?;
    let (Some(kind), Some(severity)) = (AlertKind::parse(&kind), Severity::parse(&severity)) else {
        return Ok(Err(StoreError::Corrupt(format!(
            "alert kind {kind:?} / severity {severity:?}"
        ))));
    };
    Ok(Ok(Alert {
        id: r.get(0)?,
        node_id: r.get(1)?,
        kind,
        severity,
        message: r.get(4)?,
        raised_at: r.get(5)?,
        cleared_at: r.get(6)?,
        acked_at: r.get(7)?,
        acked_by: r.get(8)?,
        ack_note: r.get(9)?,
        cleared_by: r.get(10)?,
        clear_note: r.get(11)?,
    }))
}

fn alert_by_id(conn: &Connection, id: i64) -> Result<Option<Alert>, StoreError> {
    conn.query_row(
        &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"),
        params![id],
        alert_row,
    )
    .optional()?
    .transpose()
}

fn raise(tx: &Transaction<'_>, a: NewAlert) -> Result<Alert, StoreError> {
    tx.execute(
        "INSERT INTO alerts (node_id, kind, severity, message, raised_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![a.node_id, a.kind.label(), a.severity.label(), a.message, a.raised_at],
    )?;
    Ok(Alert {
        id: tx.last_insert_rowid(),
        node_id: a.node_id,
        kind: a.kind,
        severity: a.severity,
        message: a.message,
        raised_at: a.raised_at,
        cleared_at: None,
        acked_at: None,
        acked_by: None,
        ack_note: None,
        cleared_by: None,
        clear_note: None,
    })
}

fn ack(
    tx: &Transaction<'_>,
    id: i64,
    actor: &str,
    note: Option<&str>,
    at: UnixMillis,
) -> Result<Option<Alert>, StoreError> {
    // Acknowledging twice keeps the first acknowledgement (idempotent).
    tx.execute(
        "UPDATE alerts SET acked_at = ?2, acked_by = ?3, ack_note = ?4
         WHERE id = ?1 AND acked_at IS NULL",
        params![id, at, actor, note],
    )?;
    alert_by_id(tx, id)
}

fn clear_by(
    tx: &Transaction<'_>,
    id: i64,
    actor: &str,
    note: Option<&str>,
    at: UnixMillis,
) -> Result<Option<(Alert, bool)>, StoreError> {
    // Only an active alert is cleared; one that already cleared keeps how and when it did.
    let n = tx.execute(
        "UPDATE alerts SET cleared_at = ?2, cleared_by = ?3, clear_note = ?4
         WHERE id = ?1 AND cleared_at IS NULL",
        params![id, at, actor, note],
    )?;
    Ok(alert_by_id(tx, id)?.map(|a| (a, n > 0)))
}

/// One raw sample's fields needed for message rates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct MsgCounters {
    /// When (ms since the epoch).
    pub ts: i64,
    /// Seconds since boot.
    pub uptime: u32,
    /// `msgRx`, `msgTx`, `msgDrop`.
    pub msgs: [u32; 3],
}

/// The counters' increases from `prev` to `cur` and the seconds they cover, or `None` if
/// `prev` is not earlier or more than [`RATE_GAP_MS`] earlier, or either has no counters
/// ([`crate::model::NO_COUNTERS`], a sample made from telemetry). A counter or the uptime going
/// back is a reboot: the counters restarted from 0, so each increase is the new value, over at
/// most the uptime (at least 1 s); an increase is never negative. The rollup SQL in
/// `maintain` applies the same rule.
pub(crate) fn counter_interval(prev: MsgCounters, cur: MsgCounters) -> Option<([f64; 3], f64)> {
    let dt = cur.ts - prev.ts;
    let none = crate::model::NO_COUNTERS;
    if dt <= 0 || dt > RATE_GAP_MS || prev.msgs[0] == none || cur.msgs[0] == none {
        return None;
    }
    let secs = dt as f64 / 1000.0;
    let reset = cur.uptime < prev.uptime || cur.msgs.iter().zip(prev.msgs).any(|(c, p)| *c < p);
    if reset {
        let span = secs.min(f64::from(cur.uptime)).max(1.0);
        return Some((cur.msgs.map(f64::from), span));
    }
    let mut inc = [0.0; 3];
    for (i, v) in inc.iter_mut().enumerate() {
        *v = f64::from(cur.msgs[i] - prev.msgs[i]);
    }
    Some((inc, secs))
}

/// Raw history with message rates: every sample in the range and the one before it (for the
/// first sample's rate).
fn raw_history(
    c: &Connection,
    node: u32,
    from: UnixMillis,
    to: UnixMillis,
    fetch: i64,
) -> Result<Vec<HistoryPoint>, StoreError> {
    let counters = |r: &rusqlite::Row<'_>, at: usize| -> rusqlite::Result<MsgCounters> {
        Ok(MsgCounters {
            ts: r.get(at)?,
            uptime: r.get(at + 1)?,
            msgs: [r.get(at + 2)?, r.get(at + 3)?, r.get(at + 4)?],
        })
    };
    let mut prev: Option<MsgCounters> = c
        .prepare_cached(
            "SELECT ts, uptime, msg_rx, msg_tx, msg_drop FROM samples
             WHERE node_id = ?1 AND ts < ?2 AND ts >= ?3 ORDER BY ts DESC LIMIT 1",
        )?
        .query_row(params![node, from, from - RATE_GAP_MS], |r| counters(r, 0))
        .optional()?;
    let mut stmt = c.prepare_cached(
        "SELECT ts, uptime, msg_rx, msg_tx, msg_drop, mem_kb, wifi, latency_ms, loss, alerts != 0
         FROM samples WHERE node_id = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY ts LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![node, from, to, fetch], |r| {
        Ok((
            counters(r, 0)?,
            HistoryPoint {
                ts: r.get(0)?,
                samples: 1,
                uptime: r.get(1)?,
                free_memory_kb: r.get(5)?,
                free_memory_kb_min: r.get(5)?,
                wifi_quality: r.get(6)?,
                latency_ms: r.get(7)?,
                packet_loss: r.get(8)?,
                alerting: r.get(9)?,
                messages_received_per_min: None,
                messages_sent_per_min: None,
                messages_dropped_per_min: None,
            },
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (cur, mut p) = row?;
        if let Some((inc, secs)) = prev.and_then(|pr| counter_interval(pr, cur)) {
            let per_min = |i: f64| i * 60.0 / secs;
            p.messages_received_per_min = Some(per_min(inc[0]));
            p.messages_sent_per_min = Some(per_min(inc[1]));
            p.messages_dropped_per_min = Some(per_min(inc[2]));
        }
        prev = Some(cur);
        out.push(p);
    }
    Ok(out)
}

fn put_artefact(tx: &Transaction<'_>, a: &ArtefactInfo, bytes: &[u8]) -> Result<bool, StoreError> {
    let n = tx.execute(
        "INSERT OR IGNORE INTO artefacts (id, role, hardware, version, size, image_size,
         image_sha256, key_id, uploaded_at, uploaded_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            a.id,
            a.role,
            a.hardware,
            a.version,
            i64::try_from(a.size).unwrap_or(i64::MAX),
            i64::try_from(a.image_size).unwrap_or(i64::MAX),
            a.image_sha256,
            a.key_id,
            a.uploaded_at,
            a.uploaded_by
        ],
    )?;
    if n == 0 {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO artefact_blobs (id, bytes) VALUES (?1, ?2)",
        params![a.id, bytes],
    )?;
    Ok(true)
}

fn meta(tx: &Connection, key: &str) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()?)
}

fn used_bytes(tx: &Connection) -> Result<u64, StoreError> {
    let pages: i64 = tx.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let free: i64 = tx.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    let size: i64 = tx.pragma_query_value(None, "page_size", |r| r.get(0))?;
    Ok(u64::try_from((pages - free).max(0) * size).unwrap_or(0))
}

fn maintain(
    tx: &Transaction<'_>,
    now: UnixMillis,
    ret: Retention,
) -> Result<Maintenance, StoreError> {
    let mut m = Maintenance::default();
    // Roll up every completed hour not rolled up yet.
    let this_hour = now.div_euclid(HOUR_MS) * HOUR_MS;
    let done = match meta(tx, "rollup_until")? {
        Some(t) => t,
        None => {
            let oldest: Option<i64> =
                tx.query_row("SELECT min(ts) FROM samples", [], |r| r.get(0))?;
            oldest.map_or(this_hour, |t| t.div_euclid(HOUR_MS) * HOUR_MS)
        }
    };
    if done < this_hour {
        m.rolled_up = tx.execute(
            // Message counters: the increase between a sample and the previous one of its
            // node (up to RATE_GAP_MS before, so an hour's first sample pairs with the
            // previous hour's last). A counter or the uptime going back is a reboot: the
            // counters restarted from 0, so the increase is the new value, over at most the
            // uptime; never negative. Same rule as `counter_interval` for raw history.
            "INSERT OR REPLACE INTO rollups (node_id, bucket, n, uptime_max, mem_avg, mem_min,
             wifi_avg, latency_avg, loss_avg, alerting, rx_inc, tx_inc, drop_inc, rate_span_s)
             SELECT node_id, (ts / 3600000) * 3600000, count(*), max(uptime), avg(mem_kb),
             min(mem_kb), avg(wifi), avg(latency_ms), avg(loss), sum(alerts != 0),
             sum(CASE reset WHEN 1 THEN msg_rx WHEN 0 THEN msg_rx - p_rx END),
             sum(CASE reset WHEN 1 THEN msg_tx WHEN 0 THEN msg_tx - p_tx END),
             sum(CASE reset WHEN 1 THEN msg_drop WHEN 0 THEN msg_drop - p_drop END),
             sum(CASE reset WHEN 1 THEN max(1.0, min((ts - p_ts) / 1000.0, uptime))
                            WHEN 0 THEN (ts - p_ts) / 1000.0 END)
             FROM (
               SELECT *, CASE WHEN p_ts IS NULL OR ts - p_ts > ?3
                   OR msg_rx = 4294967295 OR p_rx = 4294967295 THEN NULL
                 ELSE (msg_rx < p_rx OR msg_tx < p_tx OR msg_drop < p_drop OR uptime < p_up)
                 END AS reset
               FROM (
                 SELECT node_id, ts, uptime, mem_kb, wifi, latency_ms, loss, alerts,
                   msg_rx, msg_tx, msg_drop,
                   lag(ts) OVER w AS p_ts, lag(uptime) OVER w AS p_up,
                   lag(msg_rx) OVER w AS p_rx, lag(msg_tx) OVER w AS p_tx,
                   lag(msg_drop) OVER w AS p_drop
                 FROM samples WHERE ts >= ?1 - ?3 AND ts < ?2
                 WINDOW w AS (PARTITION BY node_id ORDER BY ts)
               )
             )
             WHERE ts >= ?1 GROUP BY node_id, ts / 3600000",
            params![done, this_hour, RATE_GAP_MS],
        )? as u64;
    }
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('rollup_until', ?1)",
        params![this_hour.max(done)],
    )?;
    // Retention.
    let raw_limit = now - i64::from(ret.raw_days) * DAY_MS;
    let rollup_limit = now - i64::from(ret.rollup_days) * DAY_MS;
    m.samples_deleted +=
        tx.execute("DELETE FROM samples WHERE ts < ?1", params![raw_limit])? as u64;
    m.rollups_deleted += tx.execute(
        "DELETE FROM rollups WHERE bucket < ?1",
        params![rollup_limit],
    )? as u64;
    tx.execute(
        "DELETE FROM alerts WHERE cleared_at IS NOT NULL AND cleared_at < ?1",
        params![rollup_limit],
    )?;
    // Size cap: the oldest raw history first (six hours at a time; those hours are rolled
    // up already), then the oldest rollups (a day at a time).
    for _ in 0..10_000 {
        if used_bytes(tx)? <= ret.cap_bytes {
            break;
        }
        let oldest: Option<i64> = tx.query_row("SELECT min(ts) FROM samples", [], |r| r.get(0))?;
        if let Some(t) = oldest {
            m.samples_deleted += tx.execute(
                "DELETE FROM samples WHERE ts < ?1",
                params![t + 6 * HOUR_MS],
            )? as u64;
            continue;
        }
        let oldest: Option<i64> =
            tx.query_row("SELECT min(bucket) FROM rollups", [], |r| r.get(0))?;
        match oldest {
            Some(b) => {
                m.rollups_deleted += tx
                    .execute("DELETE FROM rollups WHERE bucket < ?1", params![b + DAY_MS])?
                    as u64;
            }
            None => break,
        }
    }
    m.used_bytes = used_bytes(tx)?;
    Ok(m)
}

impl NodeStore for SqliteStore {
    fn save(&self, nodes: Vec<NodeStatus>) {
        if !nodes.is_empty() {
            self.fire(Op::Nodes(nodes));
        }
    }

    fn load(&self) -> StoreFuture<'_, Vec<NodeStatus>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT record FROM nodes ORDER BY node_id")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for row in rows {
                let text = row?;
                match serde_json::from_str(&text) {
                    Ok(n) => out.push(n),
                    Err(e) => warn!(error = %e, "unreadable node record skipped"),
                }
            }
            Ok(out)
        })
    }
}

impl HistoryStore for SqliteStore {
    fn append(&self, samples: Vec<Sample>) {
        if !samples.is_empty() {
            self.fire(Op::Samples(samples));
        }
    }

    fn query(
        &self,
        node: u32,
        from: UnixMillis,
        to: UnixMillis,
        resolution: Resolution,
        limit: usize,
    ) -> StoreFuture<'_, History> {
        self.read(move |c| {
            let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
            let mut points = match resolution {
                Resolution::Raw => raw_history(c, node, from, to, fetch)?,
                Resolution::Hour => {
                    let mut stmt = c.prepare_cached(
                        "SELECT bucket, n, uptime_max, mem_avg, mem_min, wifi_avg, latency_avg,
                         loss_avg, alerting, rx_inc, tx_inc, drop_inc, rate_span_s
                         FROM rollups WHERE node_id = ?1 AND bucket >= ?2 AND bucket < ?3
                         ORDER BY bucket LIMIT ?4",
                    )?;
                    let rows = stmt.query_map(params![node, from, to, fetch], |r| {
                        let span: Option<f64> = r.get(12)?;
                        let per_min = |inc: Option<f64>| match (inc, span) {
                            (Some(i), Some(s)) if s > 0.0 => Some(i.max(0.0) * 60.0 / s),
                            _ => None,
                        };
                        Ok(HistoryPoint {
                            ts: r.get(0)?,
                            samples: r.get(1)?,
                            uptime: r.get(2)?,
                            free_memory_kb: r.get(3)?,
                            free_memory_kb_min: r.get(4)?,
                            wifi_quality: r.get(5)?,
                            latency_ms: r.get(6)?,
                            packet_loss: r.get(7)?,
                            alerting: r.get(8)?,
                            messages_received_per_min: per_min(r.get(9)?),
                            messages_sent_per_min: per_min(r.get(10)?),
                            messages_dropped_per_min: per_min(r.get(11)?),
                        })
                    })?;
                    rows.collect::<Result<Vec<_>, _>>()?
                }
            };
            let truncated = points.len() > limit;
            points.truncate(limit);
            Ok(History {
                node_id: node,
                resolution,
                from,
                to,
                points,
                truncated,
            })
        })
    }
}

impl AlertStore for SqliteStore {
    fn raise(&self, alert: NewAlert) -> StoreFuture<'_, Alert> {
        self.acked(|r| Op::Raise(alert, r))
    }

    fn clear(&self, id: i64, at: UnixMillis) -> StoreFuture<'_, ()> {
        self.acked(|r| Op::Clear(id, at, r))
    }

    fn set_severity(&self, id: i64, severity: Severity) -> StoreFuture<'_, ()> {
        self.acked(|r| Op::Severity(id, severity, r))
    }

    fn ack(
        &self,
        id: i64,
        actor: String,
        note: Option<String>,
        at: UnixMillis,
    ) -> StoreFuture<'_, Option<Alert>> {
        self.acked(|reply| Op::Ack {
            id,
            actor,
            note,
            at,
            reply,
        })
    }

    fn get(&self, id: i64) -> StoreFuture<'_, Option<Alert>> {
        self.read(move |c| alert_by_id(c, id))
    }

    fn clear_by(
        &self,
        id: i64,
        actor: String,
        note: Option<String>,
        at: UnixMillis,
    ) -> StoreFuture<'_, Option<(Alert, bool)>> {
        self.acked(|reply| Op::ClearBy {
            id,
            actor,
            note,
            at,
            reply,
        })
    }

    fn list(
        &self,
        active_only: bool,
        node: Option<u32>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Alert>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {ALERT_COLUMNS} FROM alerts
                 WHERE (?1 = 0 OR cleared_at IS NULL) AND (?2 IS NULL OR node_id = ?2)
                 ORDER BY id DESC LIMIT ?3"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![active_only, node, limit], alert_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok(out)
        })
    }
}

impl ArtefactStore for SqliteStore {
    fn put(&self, info: ArtefactInfo, bytes: Vec<u8>) -> StoreFuture<'_, bool> {
        self.acked(|r| Op::PutArtefact(Box::new(info), bytes, r))
    }

    fn list(&self) -> StoreFuture<'_, Vec<ArtefactInfo>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, role, hardware, version, size, image_size, image_sha256, key_id,
                 uploaded_at, uploaded_by FROM artefacts ORDER BY uploaded_at DESC, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(ArtefactInfo {
                    id: r.get(0)?,
                    role: r.get(1)?,
                    hardware: r.get(2)?,
                    version: r.get(3)?,
                    size: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                    image_size: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                    image_sha256: r.get(6)?,
                    key_id: r.get(7)?,
                    uploaded_at: r.get(8)?,
                    uploaded_by: r.get(9)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn bytes(&self, id: String) -> StoreFuture<'_, Option<Vec<u8>>> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT bytes FROM artefact_blobs WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn delete(&self, id: String) -> StoreFuture<'_, bool> {
        self.acked(|r| Op::DeleteArtefact(id, r))
    }
}

impl AuditLog for SqliteStore {
    fn record(&self, entry: AuditEntry) -> StoreFuture<'_, ()> {
        self.acked(|r| Op::Audit(entry, r))
    }

    fn recent(&self, limit: usize) -> StoreFuture<'_, Vec<AuditEntry>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT ts, actor, action, target FROM audit ORDER BY id DESC LIMIT ?1",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![limit], |r| {
                Ok(AuditEntry {
                    ts: r.get(0)?,
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

impl CampaignStore for SqliteStore {
    fn create(&self, campaign: Campaign) -> StoreFuture<'_, ()> {
        self.acked(|r| Op::CampaignPut(Box::new(campaign), true, r))
    }

    fn update(&self, campaign: Campaign) -> StoreFuture<'_, ()> {
        self.acked(|r| Op::CampaignPut(Box::new(campaign), false, r))
    }

    fn save_nodes(&self, id: CampaignId, nodes: Vec<CampaignNode>) -> StoreFuture<'_, ()> {
        self.acked(|r| Op::CampaignNodes(id, nodes, r))
    }

    fn load(&self) -> StoreFuture<'_, Vec<Campaign>> {
        self.read(load_campaigns)
    }
}

impl RolloutStore for SqliteStore {
    fn put(&self, rollout: StoredRollout) -> StoreFuture<'_, ()> {
        self.acked(|r| Op::RolloutPut(Box::new(rollout), r))
    }

    fn load(&self) -> StoreFuture<'_, Vec<StoredRollout>> {
        self.read(load_rollouts)
    }
}
