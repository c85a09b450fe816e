//! Gateway benchmark: fills a real SQLite file with N nodes x D days of status history (one
//! report per node every 5 minutes), measures ingest into SQLite in status frames per second,
//! then serves the REST API on loopback and measures latency percentiles at a fixed request
//! rate (open loop: latency counts from each request's scheduled time) for `/status`,
//! `/status/{id}`, `/topology` and a 24-hour history query; and the process's RSS.
//!
//! ```sh
//! cargo run --release -p meshfleet-gateway --example bench -- [nodes] [days] [rate] [secs]
//! # defaults: 1000 nodes, 7 days, 200 requests/s, 10 s per endpoint
//! ```
//!
//! The mesh side is a fixed tree of the N nodes (a benchmark harness implementing
//! `MeshPort`), so the numbers are the gateway's own.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshfleet_gateway::mesh::MeshPort;
use meshfleet_gateway::model::Sample;
use meshfleet_gateway::status::StatusReport;
use meshfleet_gateway::store::sqlite::Retention;
use meshfleet_gateway::store::{HistoryStore, SqliteStore};
use meshfleet_gateway::{now_millis, Gateway, GatewayConfig, Stores};
use meshfleet_mesh::{NodeId, NodeTree};
use meshfleet_runtime::{RuntimeEvent, SendError, Stopped};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

/// A mesh of `n` nodes below the gateway: 10 neighbours, the rest spread below them.
struct FixedMesh {
    tree: NodeTree,
    ids: Vec<NodeId>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl FixedMesh {
    fn new(n: u32) -> Self {
        let mut root = NodeTree::leaf(NodeId(1));
        let ids: Vec<NodeId> = (0..n).map(|i| NodeId(1000 + i)).collect();
        let branches = 10.min(n as usize);
        let mut subs: Vec<NodeTree> = ids[..branches]
            .iter()
            .map(|id| NodeTree::leaf(*id))
            .collect();
        for (i, id) in ids[branches..].iter().enumerate() {
            subs[i % branches].subs.push(NodeTree::leaf(*id));
        }
        root.subs = subs;
        Self {
            tree: root,
            ids,
            events: broadcast::channel(16).0,
        }
    }
}

type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl MeshPort for FixedMesh {
    fn node_id(&self) -> NodeId {
        NodeId(1)
    }
    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
    fn topology(&self) -> Fut<'_, Result<NodeTree, Stopped>> {
        let t = self.tree.clone();
        Box::pin(async move { Ok(t) })
    }
    fn nodes(&self) -> Fut<'_, Result<Vec<NodeId>, Stopped>> {
        let ids = self.ids.clone();
        Box::pin(async move { Ok(ids) })
    }
    fn send_single(&self, _dest: NodeId, _text: String) -> Fut<'_, Result<(), SendError>> {
        Box::pin(async { Ok(()) })
    }
    fn probe_delay(&self, _dest: NodeId) -> Fut<'_, Result<(), SendError>> {
        Box::pin(async { Ok(()) })
    }
    fn is_running(&self) -> bool {
        true
    }
    fn shutdown(&self) -> Fut<'_, ()> {
        Box::pin(async {})
    }
    fn run_on_node(&self, _job: meshfleet_gateway::mesh::NodeJob) -> Fut<'_, Result<(), Stopped>> {
        // No node here: campaigns are not part of the benchmark.
        Box::pin(async { Err(Stopped) })
    }
}

fn report(i: u64) -> StatusReport {
    StatusReport {
        device_status: 1,
        uptime: (i * 300) as u32,
        free_memory_kb: 100 + (i % 50) as u16,
        wifi_quality: 60 + (i % 30) as u8,
        firmware: "1.4.2".into(),
        firmware_md5: "abc123def456".into(),
        node_count: 999,
        connections: 2,
        messages_received: i as u32,
        messages_sent: i as u32,
        messages_dropped: 0,
        latency_ms: 40,
        packet_loss: 1,
        throughput: 512,
        alert_flags: 0,
        last_error: String::new(),
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, usize) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let status = std::str::from_utf8(&raw[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, raw.len())
}

/// Open-loop load: `rate` requests per second for `secs`; returns sorted latencies (ms),
/// the number of non-200 answers, and the mean response size.
async fn load(
    addr: SocketAddr,
    paths: Vec<String>,
    rate: u32,
    secs: u32,
) -> (Vec<f64>, usize, usize) {
    let total = (rate * secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let path = paths[i % paths.len()].clone();
        tasks.push(tokio::spawn(async move {
            let (status, size) = get(addr, &path).await;
            (due.elapsed().as_secs_f64() * 1000.0, status, size)
        }));
    }
    let mut lat = Vec::with_capacity(total);
    let (mut errors, mut bytes) = (0, 0);
    for t in tasks {
        let (ms, status, size) = t.await.unwrap();
        lat.push(ms);
        errors += usize::from(status != 200);
        bytes += size;
    }
    lat.sort_by(f64::total_cmp);
    (lat, errors, bytes / total.max(1))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let nodes = args.first().copied().unwrap_or(1000) as u32;
    let days = args.get(1).copied().unwrap_or(7);
    let rate = args.get(2).copied().unwrap_or(200) as u32;
    let secs = args.get(3).copied().unwrap_or(10) as u32;
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(SqliteStore::open(&dir.path().join("bench.db")).unwrap());

    // Ingest: every node reports every 5 minutes for `days` days, in the order they arrive
    // (all nodes' reports of one interval together), in batches of one interval.
    let now = now_millis();
    let steps = days * 24 * 12;
    let t0 = Instant::now();
    let mut frames = 0u64;
    for step in 0..steps {
        let ts = now - ((steps - step) as i64) * 300_000;
        let batch: Vec<Sample> = (0..nodes)
            .map(|n| Sample {
                node_id: 1000 + n,
                ts: ts + i64::from(n),
                report: report(step),
            })
            .collect();
        frames += batch.len() as u64;
        db.append(batch);
        if step % 64 == 63 {
            // The writer's queue is bounded (the gateway drops when it is full): wait for it
            // to catch up; an acknowledged write returns after every write queued before it.
            // This is also the periodic maintenance (rollups), as in the gateway.
            db.maintain(now - (steps - step) as i64 * 300_000, far())
                .await
                .unwrap();
        }
    }
    db.maintain(now, far()).await.unwrap();
    let ingest_s = t0.elapsed().as_secs_f64();
    let st = db.stats();
    let file = std::fs::metadata(dir.path().join("bench.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "ingest: {frames} status frames in {ingest_s:.1} s = {:.0} frames/s ({} dropped, {} batches); db {:.0} MiB",
        (frames - st.dropped) as f64 / ingest_s,
        st.dropped,
        st.batches,
        file as f64 / 1048576.0
    );

    // Serve: the registry knows every node with a last report.
    let mesh = Arc::new(FixedMesh::new(nodes));
    let cfg = GatewayConfig {
        http: "127.0.0.1:0".parse().unwrap(),
        db: dir.path().join("bench.db"),
        ..GatewayConfig::default()
    };
    let gw = Gateway::start(cfg, mesh, Stores::sqlite(db.clone()), None)
        .await
        .unwrap();
    let reg = &gw.shared().registry;
    let ids: Vec<u32> = (0..nodes).map(|n| 1000 + n).collect();
    reg.set_present(&ids, now);
    for id in &ids {
        reg.report(*id, report(steps), now);
    }
    let addr = gw.http_addr();
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("rss after fill: {} MiB", rss_kib() / 1024);

    let day_ago = now - 24 * 3_600_000;
    let endpoints: Vec<(&str, Vec<String>)> = vec![
        ("GET /status (page of 100)", vec!["/status".into()]),
        (
            "GET /status/{id}",
            ids.iter().map(|i| format!("/status/{i}")).collect(),
        ),
        ("GET /topology", vec!["/topology".into()]),
        (
            "GET /nodes/{id}/history (24 h raw, 288 points)",
            ids.iter()
                .map(|i| format!("/nodes/{i}/history?from={day_ago}&to={now}&resolution=raw"))
                .collect(),
        ),
        (
            "GET /nodes/{id}/history (7 d hourly, 168 points)",
            ids.iter()
                .map(|i| {
                    format!(
                        "/nodes/{i}/history?from={}&to={now}&resolution=hour",
                        now - 7 * 86_400_000
                    )
                })
                .collect(),
        ),
    ];
    println!("\n{nodes} nodes, {days} days of history, {rate} req/s for {secs} s per endpoint (open loop)");
    println!("| endpoint | requests | non-200 | mean size | p50 ms | p90 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, paths) in endpoints {
        let (lat, errors, size) = load(addr, paths, rate, secs).await;
        println!(
            "| {name} | {} | {errors} | {size} B | {:.2} | {:.2} | {:.2} | {:.2} |",
            lat.len(),
            pct(&lat, 0.50),
            pct(&lat, 0.90),
            pct(&lat, 0.99),
            lat.last().copied().unwrap_or(0.0)
        );
    }
    println!("\nrss after load: {} MiB", rss_kib() / 1024);
    gw.shutdown().await;
}

fn far() -> Retention {
    Retention {
        raw_days: 3650,
        rollup_days: 3650,
        cap_bytes: u64::MAX / 2,
    }
}
