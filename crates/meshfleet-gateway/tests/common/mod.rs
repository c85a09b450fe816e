//! Shared test harness: a gateway on loopback with a real SQLite file in a temp dir, real
//! mesh nodes (`meshfleet-runtime`) joining it over TCP, and a minimal HTTP/1.1 client (so
//! the tests need no HTTP client crate).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshfleet_firmware::{keys, pack, PackOptions, SigningKey, Version};
use meshfleet_gateway::store::SqliteStore;
use meshfleet_gateway::{mesh, Gateway, GatewayConfig, Stores};
use meshfleet_mesh::{Config, NodeId};
use meshfleet_runtime::{MeshHandle, Runtime, RuntimeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-token-0123456789abcdef";
pub const GATEWAY_ID: u32 = 4242;

/// A running gateway with its mesh node and database.
pub struct Fixture {
    pub dir: PathBuf,
    pub gateway: Option<Gateway>,
    pub mesh: MeshHandle,
    pub mesh_task: Option<JoinHandle<()>>,
    pub db: Arc<SqliteStore>,
    pub http: SocketAddr,
    pub mesh_addr: SocketAddr,
    pub key: SigningKey,
}

pub fn config(dir: &std::path::Path) -> GatewayConfig {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    GatewayConfig {
        http: "127.0.0.1:0".parse().unwrap(),
        db: dir.join("gateway.db"),
        token_file: Some(token_file),
        firmware_key: Some(dir.join("fleet.pub")),
        max_upload: 1024 * 1024,
        // Offline one second after leaving the mesh (default 60 s), so tests are quick.
        monitor: meshfleet_monitor::MonitorConfig {
            departure_grace_s: 1,
            ..meshfleet_monitor::MonitorConfig::default()
        },
        ..GatewayConfig::default()
    }
}

impl Fixture {
    /// A gateway in `dir` (created by the caller; reused across restarts).
    pub async fn start(dir: PathBuf, key: SigningKey) -> Self {
        Self::start_with(dir, key, |_| {}).await
    }

    pub async fn start_with(
        dir: PathBuf,
        key: SigningKey,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let any_port = "127.0.0.1:0".parse().unwrap();
        Self::start_listening(dir, key, any_port, tweak).await
    }

    /// With the gateway's mesh node listening on `listen` (a fixed port: nodes reconnect
    /// to it after a restart).
    pub async fn start_listening(
        dir: PathBuf,
        key: SigningKey,
        listen: SocketAddr,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let pub_file = dir.join("fleet.pub");
        if !pub_file.exists() {
            keys::write_public_key(&pub_file, &key.verifying_key()).unwrap();
        }
        let mut cfg = config(&dir);
        tweak(&mut cfg);
        let db = Arc::new(SqliteStore::open(&cfg.db).unwrap());
        let (mesh, mesh_task) = mesh::join(
            Config::new(NodeId(GATEWAY_ID)),
            RuntimeConfig::default().with_listen(listen),
        )
        .await
        .unwrap();
        let mesh_addr = mesh.listen_addr().unwrap();
        let gateway = Gateway::start(
            cfg,
            Arc::new(mesh.clone()),
            Stores::sqlite(db.clone()),
            None,
        )
        .await
        .unwrap();
        let http = gateway.http_addr();
        Self {
            dir,
            gateway: Some(gateway),
            mesh,
            mesh_task: Some(mesh_task),
            db,
            http,
            mesh_addr,
            key,
        }
    }

    /// Clean shutdown: HTTP and ingest, the mesh node, the database writer.
    pub async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
        self.mesh.shutdown().await;
        if let Some(t) = self.mesh_task.take() {
            let _ = t.await;
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.close())
            .await
            .unwrap();
    }

    /// The audit log, newest first.
    pub async fn db_audit(&self) -> Vec<meshfleet_gateway::model::AuditEntry> {
        use meshfleet_gateway::store::AuditLog;
        self.db.recent(100).await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Resp {
        request(self.http, "GET", path, &[], &[]).await
    }

    pub async fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        request(
            self.http,
            "POST",
            path,
            &[("Authorization", &auth), ("Content-Type", content_type)],
            body,
        )
        .await
    }

    /// Uploads an artefact (`POST /firmware`) and returns its id.
    pub async fn upload(&self, mfw: &[u8]) -> String {
        let r = self
            .post("/firmware", "application/octet-stream", mfw)
            .await;
        r.json()["id"]
            .as_str()
            .unwrap_or_else(|| panic!("upload refused: {} {}", r.status, r.json()))
            .to_owned()
    }

    pub async fn delete(&self, path: &str) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        request(self.http, "DELETE", path, &[("Authorization", &auth)], &[]).await
    }
}

/// A mesh node joining the gateway.
pub async fn node(id: u32, gateway: SocketAddr) -> (MeshHandle, JoinHandle<()>) {
    Runtime::start_with(
        Config::new(NodeId(id)),
        RuntimeConfig::default().with_connect(gateway.to_string()),
    )
    .await
    .unwrap()
}

/// A status package as the C++ library's example sends it.
pub fn status_text(from: u32, mem_kb: u32, alerts: u32, fw: &str) -> String {
    format!(
        r#"{{"from":{from},"routing":2,"type":604,"status":1,"uptime":100,"mem":{mem_kb},"wifi":80,"fw":"{fw}","fwMD5":"abc123def456","nodes":2,"conns":2,"msgRx":0,"msgTx":1,"msgDrop":1,"latency":50,"loss":1,"throughput":512,"alerts":{alerts},"lastErr":""}}"#
    )
}

/// Polls `f` every 50 ms until it holds; fails after 30 s of wall time. The conditions are
/// positive (something arrives), so the bound only matters when it never does: it was 10 s,
/// which a loaded CI machine running every test binary at once overran (e2e.rs, once).
pub async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if f().await {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the gateway lists node `id` and `n` has learned the gateway's id. The two
/// happen in that order (the gateway learns the node from its sync request, the node learns
/// the gateway from the reply), and a node floods a broadcast only to links whose peer it
/// knows: a status broadcast sent in between reaches nobody, and a test that sends it once
/// then waits for it times out (openapi.rs did, once, in CI).
pub async fn joined(f: &Fixture, n: &MeshHandle, id: u32) {
    let gateway = NodeId(GATEWAY_ID);
    wait_until("node joined", || async {
        f.get(&format!("/status/{id}")).await.status == 200
            && n.nodes().await.is_ok_and(|v| v.contains(&gateway))
    })
    .await;
}

/// Opens `GET /events` and reads up to the end of the response head, which it returns (with
/// any bytes after it). The handler subscribes to the event bus before it answers, so once
/// the head is here no later event can be missed; writing the request and going straight on
/// raced the subscription (e2e.rs missed `node_up` on a loaded machine).
pub async fn open_events(f: &Fixture) -> (TcpStream, String) {
    let mut sse = TcpStream::connect(f.http).await.unwrap();
    sse.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), sse.read(&mut buf))
            .await
            .expect("the event stream's head in time")
            .unwrap();
        assert!(n > 0, "the event stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (sse, seen)
}

pub fn keygen() -> SigningKey {
    keys::keygen(&mut rand_core::OsRng)
}

/// A packed artefact, signed by `key` if given.
pub fn artefact(key: Option<&SigningKey>, version: &str) -> Vec<u8> {
    let image: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut opts = PackOptions::new("sensor", "ESP32", Version::parse(version).unwrap());
    opts.signing_key = key;
    pack(&image, opts).unwrap().to_bytes()
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request over a fresh connection (`Connection: close`), read to the end.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) and close before reading a large body.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw)).await;
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let end = (start + size).min(b.len());
        out.extend_from_slice(&b[start..end]);
        b = &b[(end + 2).min(b.len())..];
    }
    out
}
