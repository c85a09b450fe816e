//! The outbox: alerts and command replies that must reach the broker (QoS 1), kept in the
//! gateway's SQLite file (table `mqtt_outbox`, schema migration 3) until the broker's
//! PUBACK.
//!
//! * A message is written (committed) before it is handed to the MQTT client, so a broker
//!   outage or a gateway restart (even SIGKILL) loses none: after (re)connecting the bridge
//!   sends every row still there, in `seq` order, and deletes each on its PUBACK.
//! * Alerts are also reconciled from the `alerts` table at start (`meta` key
//!   [`ALERT_WATERMARK`]: the last alert id queued), so an alert committed by the gateway just
//!   before it was killed, but not yet queued here, still goes out.
//! * `dedup` keys (`alert:<id>:raised`, `reply:<transaction>`) keep one message from being
//!   queued twice.
//!
//! The bridge has its own connection to the file (WAL: the gateway's writer thread and this
//! one take turns; the busy timeout covers the wait). Calls are blocking and short; the
//! bridge runs them on `spawn_blocking`.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

/// The `meta` key holding the id of the last alert queued.
pub const ALERT_WATERMARK: &str = "mqtt_alert_watermark";

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The database failed.
    #[error("outbox database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// The gateway's schema has no outbox table (a database older than migration 3).
    #[error("the database has no mqtt_outbox table (schema older than migration 3)")]
    NoTable,
    /// A blocking task failed.
    #[error("outbox task failed: {0}")]
    Task(String),
}

/// One queued message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Delivery order.
    pub seq: i64,
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Retained on the broker.
    pub retain: bool,
}

/// A message to queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Retained on the broker.
    pub retain: bool,
    /// Queued at most once under this key (`None`: always queued).
    pub dedup: Option<String>,
}

/// The outbox on the gateway's database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    conn: Arc<Mutex<Connection>>,
}

impl Outbox {
    /// Opens the outbox in the gateway's database file (which the gateway has already
    /// opened and migrated).
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // As the gateway's own connection: WAL (set by the gateway, kept in the file) with
        // `synchronous=NORMAL`, so a committed row survives SIGKILL without an fsync per
        // commit (only an OS crash or power loss can lose the last few).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let has: Option<String> = conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'mqtt_outbox'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if has.is_none() {
            return Err(OutboxError::NoTable);
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, OutboxError>,
    ) -> Result<T, OutboxError> {
        let mut c = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut c)
    }

    /// Runs `f` on a blocking thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T, OutboxError>
    where
        T: Send + 'static,
        F: FnOnce(&Self) -> Result<T, OutboxError> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| OutboxError::Task(e.to_string()))?
    }

    /// Queues messages in one transaction; returns how many were new (not deduplicated).
    /// `alert_watermark`: also raise the alert watermark to this id.
    pub fn push(
        &self,
        messages: &[NewMessage],
        alert_watermark: Option<i64>,
        now: i64,
    ) -> Result<usize, OutboxError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut added = 0;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO mqtt_outbox (topic, payload, retain, dedup, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for m in messages {
                    added += stmt.execute(params![m.topic, m.payload, m.retain, m.dedup, now])?;
                }
            }
            if let Some(w) = alert_watermark {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                    params![ALERT_WATERMARK, w],
                )?;
            }
            tx.commit()?;
            Ok(added)
        })
    }

    /// The id of the last alert queued (0: none).
    pub fn alert_watermark(&self) -> Result<i64, OutboxError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![ALERT_WATERMARK],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
        })
    }

    /// Up to `limit` messages after `after`, in order.
    pub fn pending(&self, after: i64, limit: usize) -> Result<Vec<OutboxMessage>, OutboxError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, topic, payload, retain FROM mqtt_outbox WHERE seq > ?1
                 ORDER BY seq LIMIT ?2",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![after, limit], |r| {
                Ok(OutboxMessage {
                    seq: r.get(0)?,
                    topic: r.get(1)?,
                    payload: r.get(2)?,
                    retain: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Deletes delivered messages (their PUBACK arrived).
    pub fn delete(&self, seqs: &[i64]) -> Result<(), OutboxError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached("DELETE FROM mqtt_outbox WHERE seq = ?1")?;
                for s in seqs {
                    stmt.execute(params![s])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Messages waiting.
    pub fn len(&self) -> Result<u64, OutboxError> {
        self.with(|c| {
            let n: i64 = c.query_row("SELECT count(*) FROM mqtt_outbox", [], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> Result<bool, OutboxError> {
        Ok(self.len()? == 0)
    }

    /// Records `nonce` (a command's, sent at `ts`) unless it is there already; forgets
    /// nonces older than `forget_before` first. `false`: seen before (a replay).
    pub fn remember_nonce(
        &self,
        nonce: &str,
        ts: i64,
        forget_before: i64,
    ) -> Result<bool, OutboxError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM mqtt_nonces WHERE ts < ?1", [forget_before])?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO mqtt_nonces (nonce, ts) VALUES (?1, ?2)",
                params![nonce, ts],
            )?;
            tx.commit()?;
            Ok(n == 1)
        })
    }

    /// Nonces sent at or after `since`, with their `ts`.
    pub fn nonces(&self, since: i64) -> Result<Vec<(String, i64)>, OutboxError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT nonce, ts FROM mqtt_nonces WHERE ts >= ?1")?;
            let rows = st.query_map([since], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Keeps the first reply of `transaction` (later ones are ignored), and only the
    /// newest `keep` transactions.
    pub fn remember_reply(
        &self,
        transaction: &str,
        reply: &str,
        at: i64,
        keep: usize,
    ) -> Result<(), OutboxError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT OR IGNORE INTO mqtt_transactions (txn, reply, at) VALUES (?1, ?2, ?3)",
                params![transaction, reply, at],
            )?;
            tx.execute(
                "DELETE FROM mqtt_transactions WHERE seq <= (SELECT max(seq) FROM mqtt_transactions) - ?1",
                [i64::try_from(keep).unwrap_or(i64::MAX)],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The remembered replies, oldest first: (transaction, reply JSON).
    pub fn replies(&self) -> Result<Vec<(String, String)>, OutboxError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT txn, reply FROM mqtt_transactions ORDER BY seq")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshfleet_gateway::store::SqliteStore;

    fn msg(t: &str, dedup: Option<&str>) -> NewMessage {
        NewMessage {
            topic: t.into(),
            payload: t.as_bytes().to_vec(),
            retain: false,
            dedup: dedup.map(str::to_owned),
        }
    }

    #[test]
    fn queue_dedup_order_delete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let store = SqliteStore::open(&path).unwrap();
        let o = Outbox::open(&path).unwrap();
        assert_eq!(
            o.push(&[msg("a", Some("k1")), msg("b", None)], Some(7), 1)
                .unwrap(),
            2
        );
        assert_eq!(
            o.push(&[msg("a", Some("k1"))], Some(3), 2).unwrap(),
            0,
            "deduplicated"
        );
        assert_eq!(
            o.alert_watermark().unwrap(),
            7,
            "the watermark never goes back"
        );
        let p = o.pending(0, 10).unwrap();
        assert_eq!(
            p.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(o.pending(p[0].seq, 10).unwrap().len(), 1);
        o.delete(&[p[0].seq]).unwrap();
        assert_eq!(o.len().unwrap(), 1);
        drop(o);
        // Survives a reopen.
        let o = Outbox::open(&path).unwrap();
        assert_eq!(o.pending(0, 10).unwrap()[0].topic, "b");
        store.close();
    }

    #[test]
    fn nonces_and_replies_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let store = SqliteStore::open(&path).unwrap();
        let o = Outbox::open(&path).unwrap();
        assert!(o.remember_nonce("n-1", 100, 0).unwrap());
        assert!(!o.remember_nonce("n-1", 100, 0).unwrap(), "a replay");
        assert!(o.remember_nonce("n-2", 200, 0).unwrap());
        for i in 0..5 {
            o.remember_reply(&format!("t-{i}"), &format!("{{\"i\":{i}}}"), i, 3)
                .unwrap();
        }
        o.remember_reply("t-4", "second", 9, 3).unwrap();
        drop(o);
        let o = Outbox::open(&path).unwrap();
        assert_eq!(o.nonces(150).unwrap(), vec![("n-2".to_owned(), 200)]);
        // Forgetting old ones: n-1 (ts 100) goes, so it could be used again.
        assert!(o.remember_nonce("n-3", 300, 150).unwrap());
        assert_eq!(o.nonces(0).unwrap().len(), 2);
        let r = o.replies().unwrap();
        assert_eq!(
            r.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
            ["t-2", "t-3", "t-4"]
        );
        assert_eq!(r[2].1, "{\"i\":4}", "the first reply is kept");
        store.close();
    }

    #[test]
    fn refuses_a_database_without_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        Connection::open(&path).unwrap();
        assert!(matches!(Outbox::open(&path), Err(OutboxError::NoTable)));
    }
}
