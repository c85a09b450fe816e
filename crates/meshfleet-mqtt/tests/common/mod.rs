//! Test harness: a real Mosquitto (`meshfleet_mqtt::testbroker`), a gateway on a temp
//! SQLite file with a real mesh node, the bridge as its add-on, and an observer client.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshfleet_firmware::{keys, pack, Artefact, PackOptions, Sha256Digest, SigningKey, Version};
use meshfleet_gateway::events::GatewayEvent;
use meshfleet_gateway::model::{Alert, AlertKind, ArtefactInfo, NewAlert, NodeStatus, Severity};
use meshfleet_gateway::status::StatusReport;
use meshfleet_gateway::store::{NodeStore, SqliteStore};
use meshfleet_gateway::{mesh, Gateway, GatewayConfig, Stores};
use meshfleet_mesh::{Config, NodeId};
use meshfleet_mqtt::{MqttConfig, Prepared};
use meshfleet_runtime::{MeshHandle, RuntimeConfig};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
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

    /// The artefacts in the gateway's store.
    pub async fn artefacts(&self) -> Vec<ArtefactInfo> {
        self.shared().stores.artefacts.list().await.unwrap()
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
        self.shut_down().await;
    }

    /// [`Gw::stop`] in place, for a harness that starts the next gateway in its stead.
    async fn shut_down(&mut self) {
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

/// A fresh ed25519 key (a fleet's or an operator's).
pub fn keygen() -> SigningKey {
    keys::keygen(&mut rand_core::OsRng)
}

/// The firmware image of `version` for the tests' (sensor, esp32) artefacts: 20,000 bytes
/// that differ by version, so two versions never share an image hash.
pub fn image(version: &str) -> Vec<u8> {
    (0..20_000u32)
        .map(|i| (i * 7 % 251) as u8 ^ version.len() as u8)
        .chain(version.bytes())
        .collect()
}

/// A (sensor, esp32) artefact of `version` signed by `key`.
pub fn pack_artefact(key: &SigningKey, version: &str) -> Artefact {
    let mut opts = PackOptions::new("sensor", "esp32", Version::parse(version).unwrap());
    opts.signing_key = Some(key);
    pack(&image(version), opts).unwrap()
}

/// [`pack_artefact`] as the `.mfw` bytes an upload or a download carries.
pub fn artefact(key: &SigningKey, version: &str) -> Vec<u8> {
    pack_artefact(key, version).to_bytes()
}

/// Lowercase hex SHA-256 of `b` (an artefact's id, a piece's hash).
pub fn sha_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Stores a signed `version` artefact (see [`pack_artefact`]) in `gw` as an upload would;
/// its id and image hash.
pub async fn store(gw: &Gw, key: &SigningKey, version: &str) -> (String, Sha256Digest) {
    let a = pack_artefact(key, version);
    let bytes = a.to_bytes();
    let m = a.manifest();
    let info = ArtefactInfo::verified(&bytes, m, &keys::key_id(&key.verifying_key()), "test");
    let id = info.id.clone();
    gw.shared().stores.artefacts.put(info, bytes).await.unwrap();
    (id, m.sha256)
}

static NONCE: AtomicU64 = AtomicU64::new(0);

/// An unsigned operator command: `op`, `transaction`, the current time, a nonce unique in
/// this process, and the fields of `args` (an object) beside them.
pub fn command(op: &str, transaction: &str, args: Value) -> Value {
    let n = NONCE.fetch_add(1, Ordering::Relaxed);
    let mut v = json!({
        "op": op,
        "transaction": transaction,
        "ts": meshfleet_gateway::now_millis(),
        "nonce": format!("nonce-{n:08}-{}", std::process::id()),
    });
    if let (Some(m), Value::Object(e)) = (v.as_object_mut(), args) {
        m.extend(e);
    }
    v
}

/// What [`Commanded::start`] sets up besides the defaults.
pub struct Opts {
    /// Node records the gateway restores at start.
    pub nodes: Vec<NodeStatus>,
    /// What the operator's client subscribes to.
    pub topics: &'static [&'static str],
    /// A change to the gateway's config (every start of the gateway, restarts too).
    pub tweak: fn(&mut GatewayConfig),
}

impl Opts {
    /// `n` seeded nodes ([`nodes`]), the operator on `mesh/ota/response/#` and `topics`.
    pub fn nodes(n: u32) -> Self {
        Self {
            nodes: nodes(n, meshfleet_gateway::now_millis()),
            topics: &["mesh/ota/response/#"],
            tweak: |_| {},
        }
    }

    /// With the operator subscribed to `topics` (include `mesh/ota/response/#` for replies).
    pub fn topics(mut self, topics: &'static [&'static str]) -> Self {
        self.topics = topics;
        self
    }

    /// With the gateway's config changed by `tweak`.
    pub fn tweak(mut self, tweak: fn(&mut GatewayConfig)) -> Self {
        self.tweak = tweak;
        self
    }
}

/// A gateway whose bridge takes signed operator commands: a broker, a fleet key
/// (`fleet.pub`, the gateway verifies artefacts with it), an operator key
/// (`operator.pub`, in the bridge's `operator_keys`), seeded nodes, and the operator's
/// client, started once the bridge answers a signed `list`.
pub struct Commanded {
    pub broker: Broker,
    pub gw: Gw,
    pub op: Observer,
    pub op_key: SigningKey,
    pub fleet_key: SigningKey,
    /// The temp dir: the database, the keys, the broker's files.
    pub dir: PathBuf,
    tweak: fn(&mut GatewayConfig),
    // Last, so the directory goes after the gateway and the broker that use it.
    _d: tempfile::TempDir,
}

impl Commanded {
    /// Sets it up and waits until the bridge answers; `None` without Mosquitto (the test
    /// then passes without running, as every broker test here does).
    pub async fn start(opts: Opts) -> Option<Self> {
        let (d, dir) = tempdir();
        let broker = Broker::start(&dir)?;
        let fleet_key = keygen();
        keys::write_public_key(&dir.join("fleet.pub"), &fleet_key.verifying_key()).unwrap();
        let op_key = keygen();
        keys::write_public_key(&dir.join("operator.pub"), &op_key.verifying_key()).unwrap();
        seed_nodes(&dir, opts.nodes);
        let op = Observer::connect(broker.port, "operator", "operator", opts.topics, true).await;
        let cfg = operator_config(&broker, &dir);
        let gw = Gw::start_full(&dir, cfg, |_| {}, opts.tweak).await;
        let s = Self {
            broker,
            gw,
            op,
            op_key,
            fleet_key,
            dir,
            tweak: opts.tweak,
            _d: d,
        };
        s.wait_ready().await;
        Some(s)
    }

    /// `command(op, transaction, args)` signed with the operator's key.
    pub fn sign(&self, op: &str, transaction: &str, args: Value) -> String {
        meshfleet_mqtt::sign_command(&self.op_key, &command(op, transaction, args))
    }

    /// Signs and publishes on `mesh/ota/request/<op>`.
    pub async fn send(&self, op: &str, transaction: &str, args: Value) {
        self.op
            .publish(
                &format!("mesh/ota/request/{op}"),
                self.sign(op, transaction, args),
            )
            .await;
    }

    /// The (last) reply to `transaction`, waited for up to 15 s.
    pub async fn reply(&self, transaction: &str) -> Value {
        self.op.reply(transaction, 15).await
    }

    /// Stops the gateway and starts a new one on the same database and config. It does
    /// not wait for the bridge (the broker may be down): see [`Commanded::wait_ready`].
    pub async fn restart_gateway(&mut self) {
        self.gw.shut_down().await;
        let cfg = operator_config(&self.broker, &self.dir);
        self.gw = Gw::start_full(&self.dir, cfg, |_| {}, self.tweak).await;
    }

    /// Polls until the bridge answers a signed `list` with `ok` (it subscribes after it
    /// connects, so the first commands may go unheard): a new transaction every 100 ms,
    /// any of them answered counts. Panics after 10 s.
    pub async fn wait_ready(&self) {
        static CALL: AtomicU64 = AtomicU64::new(0);
        let tag = format!("t-ready-{}-", CALL.fetch_add(1, Ordering::Relaxed));
        let prefix = format!("mesh/ota/response/{tag}");
        let answered = || {
            self.op
                .messages()
                .iter()
                .any(|m| m.topic.starts_with(&prefix) && m.json()["ok"] == true)
        };
        for i in 0..100 {
            self.send("list", &format!("{tag}{i}"), json!({})).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if answered() {
                return;
            }
        }
        panic!("the bridge did not answer a signed list within 10 s");
    }

    /// Stops the gateway (the broker goes with `self`).
    pub async fn stop(self) {
        self.gw.stop().await;
    }
}

/// [`mqtt_config`] with `dir`'s `operator.pub` as the one operator key.
pub fn operator_config(broker: &Broker, dir: &Path) -> MqttConfig {
    let mut cfg = mqtt_config(broker);
    cfg.commands.operator_keys = vec![dir.join("operator.pub")];
    cfg
}
