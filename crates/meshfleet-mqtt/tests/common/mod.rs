//! Test harness: a real Mosquitto (`meshfleet_mqtt::testbroker`), a gateway on a temp
//! SQLite file with a real mesh node, the bridge as its add-on, and an observer client.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshfleet_gateway::events::GatewayEvent;
use meshfleet_gateway::model::{Alert, AlertKind, NewAlert, NodeStatus, Severity};
use meshfleet_gateway::status::StatusReport;
use meshfleet_gateway::store::{NodeStore, SqliteStore};
use meshfleet_gateway::{mesh, Gateway, GatewayConfig, Stores};
use meshfleet_mesh::{Config, NodeId};
use meshfleet_mqtt::{MqttConfig, Prepared};
use meshfleet_runtime::{MeshHandle, RuntimeConfig};
use tokio::task::JoinHandle;

pub use meshfleet_mqtt::testbroker::Broker;

pub const GATEWAY_ID: u32 = 4242;

/// A gateway with the bridge.
pub struct Gw {
    pub gateway: Option<Gateway>,
    pub mesh: MeshHandle,
    pub mesh_task: Option<JoinHandle<()>>,
    pub db: Arc<SqliteStore>,
    pub metrics: Arc<meshfleet_mqtt::BridgeMetrics>,
    pub commands: Option<meshfleet_mqtt::Commands>,
}

pub fn gateway_config(dir: &Path) -> GatewayConfig {
    GatewayConfig {
        http: "127.0.0.1:0".parse().unwrap(),
        db: dir.join("gateway.db"),
        firmware_key: dir
            .join("fleet.pub")
            .exists()
            .then(|| dir.join("fleet.pub")),
        ..GatewayConfig::default()
    }
}

/// Node records to restore at start (`n` nodes, ids from 1000), as a gateway that saw them.
pub fn nodes(n: u32, now: i64) -> Vec<NodeStatus> {
    (0..n)
        .map(|i| NodeStatus {
            node_id: 1000 + i,
            health: meshfleet_gateway::model::Health::Healthy,
            online: true,
            first_seen: now - 3_600_000,
            last_seen: now,
            last_report: Some(now),
            parent: Some(GATEWAY_ID),
            role: Some("sensor".into()),
            hardware: Some("esp32".into()),
            firmware: Some("1.4.1".into()),
            uptime: Some(3600 + i),
            free_memory: Some(180 * 1024),
            reports: 120,
            status: Some(StatusReport {
                uptime: 3600 + i,
                free_memory_kb: 180,
                wifi_quality: 70,
                firmware: "1.4.1".into(),
                latency_ms: 35,
                packet_loss: 1,
                ..StatusReport::default()
            }),
        })
        .collect()
}

impl Gw {
    /// Starts a gateway on `dir`'s database (nodes restored from it) with the bridge.
    pub async fn start(dir: &Path, mqtt: MqttConfig) -> Self {
        Self::start_with(dir, mqtt, |_| {}).await
    }

    pub async fn start_with(dir: &Path, mqtt: MqttConfig, before: impl FnOnce(&Prepared)) -> Self {
        Self::start_full(dir, mqtt, before, |_| {}).await
    }

    /// With the gateway's config changed by `tweak`.
    pub async fn start_full(
        dir: &Path,
        mqtt: MqttConfig,
        before: impl FnOnce(&Prepared),
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let mut cfg = gateway_config(dir);
        tweak(&mut cfg);
        let db = Arc::new(SqliteStore::open(&cfg.db).unwrap());
        let (mesh, mesh_task) = mesh::join(
            Config::new(NodeId(GATEWAY_ID)),
            RuntimeConfig::default().with_listen("127.0.0.1:0".parse().unwrap()),
        )
        .await
        .unwrap();
        let mut gateway = Gateway::start(
            cfg,
            Arc::new(mesh.clone()),
            Stores::sqlite(db.clone()),
            None,
        )
        .await
        .unwrap();
        let prepared = Prepared::new(mqtt).unwrap();
        before(&prepared);
        let metrics = prepared.metrics();
        let commands = prepared.commands().cloned();
        gateway.spawn_extension(prepared.hook());
        Self {
            gateway: Some(gateway),
            mesh,
            mesh_task: Some(mesh_task),
            db,
            metrics,
            commands,
        }
    }

    pub fn shared(&self) -> &Arc<meshfleet_gateway::Shared> {
        self.gateway.as_ref().unwrap().shared()
    }

    /// Raises an alert as the ingest task does: stored, then published.
    pub async fn raise(&self, node: u32, message: &str) -> Alert {
        let s = self.shared();
        let a = s
            .stores
            .alerts
            .raise(NewAlert {
                node_id: node,
                kind: AlertKind::LowMemory,
                severity: Severity::Warning,
                message: message.into(),
                raised_at: meshfleet_gateway::now_millis(),
            })
            .await
            .unwrap();
        s.bus
            .publish(GatewayEvent::AlertRaised { alert: a.clone() });
        a
    }

    /// Graceful stop: bridge says offline, database closed.
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
}

/// Writes node records into a fresh database in `dir` (restored by the next gateway).
pub fn seed_nodes(dir: &Path, nodes: Vec<NodeStatus>) {
    let db = SqliteStore::open(&dir.join("gateway.db")).unwrap();
    db.save(nodes);
    db.close();
}

#[allow(unused_imports)]
pub use meshfleet_mqtt::testclient::{Msg, Observer};

/// A bridge config for `broker` as user `gateway`, 1 s intervals.
pub fn mqtt_config(broker: &Broker) -> MqttConfig {
    MqttConfig {
        status_interval_s: 1,
        topology_interval_s: 1,
        metrics_interval_s: 1,
        reconnect_min_ms: 100,
        reconnect_max_ms: 500,
        ..MqttConfig::from_url(&broker.url("gateway"))
    }
}

pub fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_owned();
    (d, p)
}
