//! The SQLite store on a real file: rollups, retention, the size cap, migrations, and
//! acknowledged writes surviving a reopen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshfleet_gateway::model::{AlertKind, NewAlert, Resolution, Sample, Severity};
use meshfleet_gateway::status::StatusReport;
use meshfleet_gateway::store::sqlite::Retention;
use meshfleet_gateway::store::{AlertStore, HistoryStore, SqliteStore, StoreError};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn sample(node: u32, ts: i64, mem: u16) -> Sample {
    Sample {
        node_id: node,
        ts,
        report: StatusReport {
            free_memory_kb: mem,
            uptime: 1,
            wifi_quality: 50,
            ..StatusReport::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_retention_and_size_cap() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteStore::open(&dir.path().join("g.db")).unwrap();
    // Ten days of reports every 10 minutes from two nodes, ending now.
    let now = 1_800_000_000_000i64 - 1_800_000_000_000i64 % HOUR + 30 * 60_000;
    let start = now - 10 * DAY;
    let mut batch = Vec::new();
    let mut ts = start;
    while ts < now {
        batch.push(sample(1, ts, 100));
        batch.push(sample(2, ts, 50));
        ts += 10 * 60_000;
    }
    let total = batch.len();
    for chunk in batch.chunks(500) {
        db.append(chunk.to_vec());
    }
    let wide = Retention {
        raw_days: 7,
        rollup_days: 90,
        cap_bytes: 1 << 40,
    };
    let m = db.maintain(now, wide).await.unwrap();
    assert_eq!(
        m.rolled_up,
        2 * 240,
        "10 days x 24 completed hours x 2 nodes"
    );
    assert_eq!(m.samples_deleted, 2 * 3 * 144, "older than 7 days");
    assert_eq!(total, 2 * 10 * 144);
    // Raw history is gone beyond 7 days; the hourly rollups are there.
    let old = db
        .query(1, start, start + DAY, Resolution::Raw, 10_000)
        .await
        .unwrap();
    assert!(old.points.is_empty());
    let old = db
        .query(1, start, start + DAY, Resolution::Hour, 10_000)
        .await
        .unwrap();
    assert_eq!(old.points.len(), 24);
    assert!(old
        .points
        .iter()
        .all(|p| p.samples == 6 && p.free_memory_kb == 100.0));
    let recent = db
        .query(2, now - HOUR, now, Resolution::Raw, 10_000)
        .await
        .unwrap();
    assert_eq!(recent.points.len(), 6);
    let limited = db
        .query(2, now - DAY, now, Resolution::Raw, 10)
        .await
        .unwrap();
    assert_eq!(limited.points.len(), 10);
    assert!(limited.truncated);
    // A second pass finds nothing new to do.
    let again = db.maintain(now, wide).await.unwrap();
    assert_eq!((again.rolled_up, again.samples_deleted), (0, 0));

    // The size cap: the oldest raw history goes first (rollups only once it is all gone).
    let cap = m.used_bytes * 3 / 4;
    let capped = db
        .maintain(
            now,
            Retention {
                cap_bytes: cap,
                ..wide
            },
        )
        .await
        .unwrap();
    assert!(capped.samples_deleted > 0);
    assert!(capped.used_bytes <= cap, "{} > {cap}", capped.used_bytes);
    let newest = db
        .query(1, now - HOUR, now, Resolution::Raw, 10)
        .await
        .unwrap();
    assert!(!newest.points.is_empty(), "the newest history is kept");
    let oldest_raw = db
        .query(1, now - 7 * DAY, now - 6 * DAY, Resolution::Raw, 10)
        .await
        .unwrap();
    assert!(
        oldest_raw.points.is_empty(),
        "the oldest raw history went first"
    );
    let hourly = db
        .query(1, start - HOUR, now, Resolution::Hour, 10_000)
        .await
        .unwrap();
    assert_eq!(hourly.points.len(), 240, "rollups untouched");
    db.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_reopen_and_newer_schemas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let db = SqliteStore::open(&path).unwrap();
    let a = db
        .raise(NewAlert {
            node_id: 9,
            kind: AlertKind::LowMemory,
            severity: Severity::Critical,
            message: "low".into(),
            raised_at: 1,
        })
        .await
        .unwrap();
    let acked = db.ack(a.id, "me".into(), None, 2).await.unwrap().unwrap();
    assert_eq!(acked.acked_by.as_deref(), Some("me"));
    // A second acknowledgement keeps the first.
    let again = db.ack(a.id, "you".into(), None, 3).await.unwrap().unwrap();
    assert_eq!(again.acked_by.as_deref(), Some("me"));
    assert!(db.ack(12345, "me".into(), None, 3).await.unwrap().is_none());
    db.set_severity(a.id, Severity::Warning).await.unwrap();
    // No close(): the file is left as a killed process would leave it (WAL not checkpointed).
    std::mem::forget(db);
    let db = SqliteStore::open(&path).unwrap();
    let list = db.list(false, Some(9), 10).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].acked_at, Some(2));
    assert_eq!(list[0].severity, Severity::Warning);
    db.close();
    drop(db);

    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::SchemaTooNew { found: 99, .. })
    ));
}

/// Campaigns: created, their header updated, node states saved in batches; all of it read
/// back after a reopen without close (as a killed process leaves the file), nodes carried
/// by an update overriding only themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_survive_reopen() {
    use meshfleet_gateway::campaign::{
        Campaign, CampaignId, CampaignNode, CampaignState, CampaignStrategy, NodeState, Targets,
    };
    use meshfleet_gateway::store::CampaignStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let db = SqliteStore::open(&path).unwrap();
    let node = |id, state| CampaignNode {
        node: id,
        state,
        progress: 0.0,
        reason: None,
        from_version: Some("1.0.0".into()),
        updated_at_ms: 5,
    };
    let mut c = Campaign {
        id: CampaignId::from_seq(7),
        name: "x".into(),
        artefact: "a".repeat(64),
        version: "2.0.0".into(),
        strategy: CampaignStrategy::Broadcast,
        state: CampaignState::Created,
        created_at_ms: 1,
        updated_at_ms: 1,
        total_nodes: 2,
        updated_nodes: 0,
        failed_nodes: 0,
        progress: 0.0,
        estimated_completion_ms: None,
        nodes: vec![node(3, NodeState::Queued), node(4, NodeState::Queued)],
        targets: Targets::Role("sensor".into()),
        start_at: None,
        window: None,
        start_on_approval: false,
        rollback: None,
    };
    CampaignStore::create(&db, c.clone()).await.unwrap();
    c.state = CampaignState::Running;
    let mut header = c.summary();
    header.nodes = vec![CampaignNode {
        progress: 0.5,
        ..node(3, NodeState::InProgress)
    }];
    db.update(header).await.unwrap();
    db.save_nodes(
        c.id.clone(),
        vec![CampaignNode {
            reason: Some("hardware".into()),
            ..node(4, NodeState::Rejected)
        }],
    )
    .await
    .unwrap();
    std::mem::forget(db);
    let db = SqliteStore::open(&path).unwrap();
    let back = CampaignStore::load(&db).await.unwrap();
    assert_eq!(back.len(), 1);
    let b = &back[0];
    assert_eq!(b.id, c.id);
    assert_eq!(b.state, CampaignState::Running);
    assert_eq!(b.strategy, CampaignStrategy::Broadcast);
    assert_eq!(b.targets, Targets::Role("sensor".into()));
    assert_eq!(b.nodes.len(), 2);
    assert_eq!(
        (b.nodes[0].state, b.nodes[0].progress),
        (NodeState::InProgress, 0.5)
    );
    assert_eq!(b.nodes[1].state, NodeState::Rejected);
    assert_eq!(b.nodes[1].reason.as_deref(), Some("hardware"));
    assert_eq!(b.failed_nodes, 1, "counts are recomputed from the nodes");
    // An update of a campaign that was never created is an error, not a silent no-op.
    let mut ghost = c.summary();
    ghost.id = CampaignId::from_seq(99);
    assert!(db.update(ghost).await.is_err());
    db.close();
}

/// Message rates from the 604 counters, raw and in hourly rollups, across a reboot that
/// resets the counters (and the uptime): the rate stays the node's real rate, never negative.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rates_from_counters_with_a_reboot_raw_and_hourly() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteStore::open(&dir.path().join("g.db")).unwrap();
    let h0 = 1_800_000_000_000i64 - 1_800_000_000_000i64 % HOUR;
    // A report a minute for three hours; 120 received, 60 sent and 6 dropped per minute.
    // At 90 min the node reboots: uptime 30 s, counters restarted from 0 30 s ago.
    let mut batch = Vec::new();
    for m in 0..180i64 {
        let (uptime, since) = if m < 90 {
            (600 + m * 60, m * 60 + 600)
        } else {
            (30 + (m - 90) * 60, 30 + (m - 90) * 60)
        };
        let mut s = sample(7, h0 + m * 60_000, 100);
        s.report.uptime = uptime as u32;
        s.report.messages_received = (since * 2) as u32;
        s.report.messages_sent = since as u32;
        s.report.messages_dropped = (since / 10) as u32;
        batch.push(s);
    }
    db.append(batch);
    let rates = |p: &serde_json::Value| {
        [
            p["messagesReceivedPerMin"].as_f64(),
            p["messagesSentPerMin"].as_f64(),
            p["messagesDroppedPerMin"].as_f64(),
        ]
    };
    let close = |r: [Option<f64>; 3], want: [f64; 3], what: &str| {
        for (got, want) in r.iter().zip(want) {
            let got = got.unwrap_or_else(|| panic!("{what}: no rate"));
            assert!((got - want).abs() < 1e-6, "{what}: {got} != {want}");
        }
    };
    // Wait for the writer (append is fire-and-forget), then read raw history.
    let mut raw = serde_json::Value::Null;
    for _ in 0..100 {
        let h = db
            .query(7, h0, h0 + 3 * HOUR, Resolution::Raw, 1000)
            .await
            .unwrap();
        raw = serde_json::to_value(&h).unwrap();
        if h.points.len() == 180 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let points = raw["points"].as_array().unwrap();
    assert_eq!(points.len(), 180);
    assert_eq!(
        rates(&points[0]),
        [None; 3],
        "no previous report to compare with"
    );
    for (i, p) in points.iter().enumerate().skip(1) {
        close(rates(p), [120.0, 60.0, 6.0], &format!("raw point {i}"));
    }
    // A range starting mid-way still has a rate for its first point (the report before it).
    let mid = db
        .query(7, h0 + 30 * 60_000, h0 + HOUR, Resolution::Raw, 1000)
        .await
        .unwrap();
    let first = serde_json::to_value(&mid.points[0]).unwrap();
    close(
        rates(&first),
        [120.0, 60.0, 6.0],
        "first point of a later range",
    );

    // Hourly rollups: the same rates per hour, the reboot's hour included; an hour's first
    // report pairs with the previous hour's last.
    let wide = Retention {
        raw_days: 7,
        rollup_days: 90,
        cap_bytes: u64::MAX,
    };
    db.maintain(h0 + 3 * HOUR + 60_000, wide).await.unwrap();
    let hourly = db
        .query(7, h0, h0 + 3 * HOUR, Resolution::Hour, 100)
        .await
        .unwrap();
    let hourly = serde_json::to_value(&hourly).unwrap();
    let points = hourly["points"].as_array().unwrap();
    assert_eq!(points.len(), 3, "{hourly}");
    for (i, p) in points.iter().enumerate() {
        close(rates(p), [120.0, 60.0, 6.0], &format!("hour {i}"));
    }
}

/// A sample made from telemetry has no message counters: no rate is made across it, raw or
/// hourly (a 0 would be a lie).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_without_counters_make_no_rate() {
    use meshfleet_gateway::model::NO_COUNTERS;
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteStore::open(&dir.path().join("g.db")).unwrap();
    let h0 = 1_800_000_000_000i64 - 1_800_000_000_000i64 % HOUR;
    let with = |m: i64, c: u32| {
        let mut s = sample(9, h0 + m * 60_000, 100);
        s.report.uptime = 600 + (m * 60) as u32;
        s.report.messages_received = c;
        s.report.messages_sent = c;
        s.report.messages_dropped = c;
        s
    };
    db.append(vec![
        with(0, 100),
        with(1, NO_COUNTERS),
        with(2, 300),
        with(3, 400),
    ]);
    let mut h = db
        .query(9, h0, h0 + HOUR, Resolution::Raw, 100)
        .await
        .unwrap();
    for _ in 0..100 {
        if h.points.len() == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        h = db
            .query(9, h0, h0 + HOUR, Resolution::Raw, 100)
            .await
            .unwrap();
    }
    let rx: Vec<Option<f64>> = h
        .points
        .iter()
        .map(|p| p.messages_received_per_min)
        .collect();
    assert_eq!(rx, [None, None, None, Some(100.0)]);
    let wide = Retention {
        raw_days: 7,
        rollup_days: 90,
        cap_bytes: u64::MAX,
    };
    db.maintain(h0 + 2 * HOUR, wide).await.unwrap();
    let hour = db
        .query(9, h0, h0 + HOUR, Resolution::Hour, 10)
        .await
        .unwrap();
    assert_eq!(hour.points.len(), 1);
    let r = hour.points[0].messages_received_per_min.unwrap();
    assert!((r - 100.0).abs() < 1e-6, "only the 3 -> 4 pair counts: {r}");
}
