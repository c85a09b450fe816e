//! The bridge task: one MQTT connection, the periodic state topics, Home Assistant
//! discovery, the outbox and the command topics.
//!
//! * **Connections**: each (re)connection is a fresh rumqttc client and event loop (a
//!   "generation") with a clean session; its event loop runs in its own task and forwards
//!   events here. A lost connection is dropped whole (nothing stale is re-sent by rumqttc)
//!   and retried after a back-off that doubles from `reconnect-min-ms` to
//!   `reconnect-max-ms`. The will is `offline` (retained, QoS 1) on `<prefix>/bridge/state`;
//!   every connection starts by publishing `online` there (retained).
//! * **State** (`status/nodes`, `topology`, `metrics`, `alerts`, `node/<id>`): retained,
//!   QoS 0, each on its interval. While the broker is away they wait in a bounded queue:
//!   the oldest go first, counted (`meshfleet_mqtt_state_dropped_total`); a reconnect
//!   publishes every state topic afresh anyway.
//! * **Outbox** (alerts, command replies): QoS 1 from the SQLite outbox, in `seq` order,
//!   at most [`OUTBOX_WINDOW`] unacknowledged; a row is deleted on its PUBACK. rumqttc
//!   numbers QoS 1 publishes in the order it sends them, so the bridge matches each
//!   `Outgoing::Publish(pkid)` with the QoS 1 publish it handed over in the same order.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshfleet_gateway::events::GatewayEvent;
use meshfleet_gateway::model::{Alert, NodeStatus};
use meshfleet_gateway::{now_millis, MetricsSource, Shared, StartHook};
use rumqttc::{
    AsyncClient, Event, Incoming, LastWill, MqttOptions, Outgoing, QoS, TlsConfiguration, Transport,
};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};

use crate::commands::{CommandReply, Commands};
use crate::config::{mask, BrokerUrl, ConfigError, MqttConfig};
use crate::ha;
use crate::outbox::{NewMessage, Outbox, OutboxError};

/// Unacknowledged outbox messages at most.
pub const OUTBOX_WINDOW: usize = 32;

/// Largest packet the bridge accepts from the broker: commands above the configured
/// `max-payload` are still read (to answer them) up to this; the broker's
/// `message_size_limit` should cut below it.
pub const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024 + 64 * 1024;

/// Requests rumqttc queues between the bridge and its event loop.
const REQUEST_CAPACITY: usize = 1024;

/// Why the bridge cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// The outbox could not be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// An operator key could not be read.
    #[error("operator key {path}: {why}")]
    OperatorKey {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
}

/// The bridge's counters (on the gateway's `/metrics`).
#[derive(Debug, Default)]
pub struct BridgeMetrics {
    /// 1 while connected.
    pub connected: AtomicU64,
    /// Connections made.
    pub connects: AtomicU64,
    /// Connections lost or refused.
    pub disconnects: AtomicU64,
    /// Messages handed to the broker connection.
    pub published: AtomicU64,
    /// Bytes (topic + payload) handed to the broker connection.
    pub published_bytes: AtomicU64,
    /// Periodic state messages dropped from the full queue (oldest first).
    pub state_dropped: AtomicU64,
    /// Outbox messages acknowledged by the broker (and deleted).
    pub outbox_acked: AtomicU64,
    /// Outbox messages waiting (at the last look).
    pub outbox_pending: AtomicU64,
    /// Home Assistant discovery configs published.
    pub discovery_published: AtomicU64,
    /// Commands accepted and carried out.
    pub commands_ok: AtomicU64,
    /// Commands refused (error reply).
    pub commands_refused: AtomicU64,
}

impl MetricsSource for BridgeMetrics {
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, kind, help, v) in [
            (
                "meshfleet_mqtt_connected",
                "gauge",
                "1 while the MQTT bridge is connected.",
                g(&self.connected),
            ),
            (
                "meshfleet_mqtt_connects_total",
                "counter",
                "MQTT connections made.",
                g(&self.connects),
            ),
            (
                "meshfleet_mqtt_disconnects_total",
                "counter",
                "MQTT connections lost or refused.",
                g(&self.disconnects),
            ),
            (
                "meshfleet_mqtt_published_total",
                "counter",
                "Messages handed to the MQTT connection.",
                g(&self.published),
            ),
            (
                "meshfleet_mqtt_published_bytes_total",
                "counter",
                "Topic and payload bytes handed to the MQTT connection.",
                g(&self.published_bytes),
            ),
            (
                "meshfleet_mqtt_state_dropped_total",
                "counter",
                "Periodic state messages dropped while the broker was away (oldest first).",
                g(&self.state_dropped),
            ),
            (
                "meshfleet_mqtt_outbox_acked_total",
                "counter",
                "Outbox messages (alerts, replies) acknowledged by the broker.",
                g(&self.outbox_acked),
            ),
            (
                "meshfleet_mqtt_outbox_pending",
                "gauge",
                "Outbox messages waiting for the broker.",
                g(&self.outbox_pending),
            ),
            (
                "meshfleet_mqtt_discovery_published_total",
                "counter",
                "Home Assistant discovery configs published.",
                g(&self.discovery_published),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP meshfleet_mqtt_commands_total MQTT commands by result.\n\
             # TYPE meshfleet_mqtt_commands_total counter\n\
             meshfleet_mqtt_commands_total{{result=\"ok\"}} {}\n\
             meshfleet_mqtt_commands_total{{result=\"refused\"}} {}",
            g(&self.commands_ok),
            g(&self.commands_refused)
        );
    }
}

/// A bridge ready to run: settings checked, secrets and TLS loaded.
#[derive(Clone)]
pub struct Prepared {
    config: MqttConfig,
    url: BrokerUrl,
    username: Option<String>,
    password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    commands: Option<Commands>,
    metrics: Arc<BridgeMetrics>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("url", &mask(&self.config.url))
            .finish_non_exhaustive()
    }
}

fn tls_config(c: &MqttConfig) -> Result<Arc<rustls::ClientConfig>, BridgeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &c.ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| BridgeError::Tls(format!("{}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| BridgeError::Tls(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| BridgeError::Tls(format!("{}: {e}", path.display())))?;
        }
    } else {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            // A system certificate rustls cannot use is skipped, as browsers do.
            let _ = roots.add(cert);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BridgeError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Prepared {
    /// Checks `config`, reads the password file, the CA file and the operator keys.
    pub fn new(config: MqttConfig) -> Result<Self, BridgeError> {
        let url = config.validate()?;
        let username = config.username.clone().or_else(|| url.username.clone());
        let password = config.password(&url)?;
        let tls = if url.tls {
            Some(tls_config(&config)?)
        } else {
            None
        };
        let metrics = Arc::new(BridgeMetrics::default());
        let commands = if config.commands.enabled {
            let c = Commands::new(&config, metrics.clone())?;
            // https:// downloads trust what the broker connection trusts.
            if let Ok(t) = tls_config(&config) {
                c.set_tls(t);
            }
            Some(c)
        } else {
            None
        };
        Ok(Self {
            config,
            url,
            username,
            password,
            tls,
            commands,
            metrics,
        })
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<BridgeMetrics> {
        self.metrics.clone()
    }

    /// The command handler (`None` when commands are off); it reaches the campaign service
    /// through the gateway it runs in.
    pub fn commands(&self) -> Option<&Commands> {
        self.commands.as_ref()
    }

    /// A gateway start hook running this bridge.
    pub fn hook(self) -> StartHook {
        Box::new(move |shared, stop| tokio::spawn(run(shared, self, stop)))
    }
}

/// One message for the broker.
#[derive(Clone, Debug)]
struct Pub {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    qos: QoS,
}

enum Conn {
    Event(u64, Event),
    Down(u64, String),
}

/// What runs while the gateway runs.
struct Bridge {
    shared: Arc<Shared>,
    p: Prepared,
    outbox: Outbox,
    gateway: u32,
    client_id: String,
    // Connection.
    generation: u64,
    client: Option<AsyncClient>,
    connected: bool,
    backoff: Duration,
    reconnect_at: Option<Instant>,
    conn_tx: mpsc::Sender<Conn>,
    // Queues.
    state: VecDeque<Pub>,
    /// Discovery configs and campaign statuses waiting, by topic (latest wins, never
    /// dropped: at most one per node and per campaign).
    discovery: BTreeMap<String, Pub>,
    /// Per-node state topics waiting (latest wins; at most two per node, and the
    /// registry is bounded).
    node_states: BTreeMap<String, Pub>,
    // Outbox tracking for this connection.
    outbox_after: i64,
    outbox_more: bool,
    /// Every QoS 1 publish handed over, in order: `Some(seq)` for outbox messages.
    qos1_order: VecDeque<Option<i64>>,
    inflight: HashMap<u16, Option<i64>>,
    /// Outbox messages acknowledged, to delete.
    acked: Vec<i64>,
    /// Outbox messages from the current batch of events, and their alert watermark.
    pending_out: Vec<NewMessage>,
    pending_watermark: Option<i64>,
    // Home Assistant.
    announced: BTreeSet<u32>,
    /// The role and hardware each node's discovery config was announced with (a node
    /// whose identity becomes known later is announced again).
    announced_with: HashMap<u32, (Option<String>, Option<String>)>,
    removed: BTreeSet<u32>,
    /// Last published per-node state, to publish changes only.
    node_last: HashMap<u32, Vec<u8>>,
    update_last: HashMap<u32, Vec<u8>>,
    replies_rx: mpsc::Receiver<CommandReply>,
    replies_tx: mpsc::Sender<CommandReply>,
}

/// Runs the bridge until `stop` turns true, then publishes `offline` and disconnects.
pub async fn run(shared: Arc<Shared>, p: Prepared, stop: watch::Receiver<bool>) {
    let outbox = match Outbox::open(&shared.config.db) {
        Ok(o) => o,
        Err(e) => {
            warn!(error = %e, "MQTT bridge not started: no outbox");
            return;
        }
    };
    shared.extensions.add_metrics(p.metrics.clone());
    let gateway = shared.mesh.node_id().0;
    let client_id = p
        .config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("meshfleet-gateway-{gateway}"));
    let (conn_tx, mut conn_rx) = mpsc::channel(1024);
    let (replies_tx, replies_rx) = mpsc::channel(256);
    let mut events = shared.bus.subscribe();
    let mut b = Bridge {
        backoff: Duration::from_millis(p.config.reconnect_min_ms.max(10)),
        shared,
        p,
        outbox,
        gateway,
        client_id,
        generation: 0,
        client: None,
        connected: false,
        reconnect_at: None,
        conn_tx,
        state: VecDeque::new(),
        discovery: BTreeMap::new(),
        node_states: BTreeMap::new(),
        outbox_after: 0,
        outbox_more: true,
        qos1_order: VecDeque::new(),
        inflight: HashMap::new(),
        acked: Vec::new(),
        pending_out: Vec::new(),
        pending_watermark: None,
        announced: BTreeSet::new(),
        announced_with: HashMap::new(),
        removed: BTreeSet::new(),
        node_last: HashMap::new(),
        update_last: HashMap::new(),
        replies_rx,
        replies_tx,
    };
    if let Some(c) = &b.p.commands {
        c.attach(b.shared.clone(), b.outbox.clone()).await;
    }
    b.reconcile_alerts().await;
    info!(url = %mask(&b.p.config.url), client = %b.client_id, "MQTT bridge starting");
    b.connect();
    let every = |s: u64| {
        let d = Duration::from_secs(s.max(1));
        let mut i = tokio::time::interval_at(Instant::now() + d, d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        (s > 0, i)
    };
    let (status_on, mut status_tick) = every(b.p.config.status_interval_s);
    // Ticks since `status/nodes` last went out (it skips ticks in big fleets).
    let mut status_ticks = 0u64;
    let (topo_on, mut topo_tick) = every(b.p.config.topology_interval_s);
    let (metrics_on, mut metrics_tick) = every(b.p.config.metrics_interval_s);
    let node_s = b.node_interval();
    let (node_on, mut node_tick) = every(node_s);
    let stopping = wait_stop(stop);
    tokio::pin!(stopping);
    loop {
        let reconnect = b.reconnect_at;
        tokio::select! {
            () = &mut stopping => break,
            Some(c) = conn_rx.recv() => b.on_conn(c).await,
            e = events.recv() => {
                b.on_event(e).await;
                // Whatever else is already there joins it: one outbox transaction for all.
                for _ in 0..511 {
                    match events.try_recv() {
                        Ok(e) => b.on_event(Ok(e)).await,
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            b.on_event(Err(broadcast::error::RecvError::Lagged(n))).await;
                        }
                        Err(_) => break,
                    }
                }
                b.commit_pending().await;
            }
            Some(r) = b.replies_rx.recv() => b.on_reply(r).await,
            _ = status_tick.tick(), if status_on => {
                status_ticks += 1;
                let every = b.cfg().status_nodes_every(b.shared.registry.len());
                if status_ticks >= every {
                    status_ticks = 0;
                    b.publish_status();
                }
                b.publish_alerts().await;
            }
            _ = topo_tick.tick(), if topo_on => b.publish_topology().await,
            _ = metrics_tick.tick(), if metrics_on => b.publish_metrics().await,
            _ = node_tick.tick(), if node_on => b.publish_nodes(false).await,
            _ = async { if let Some(t) = reconnect { sleep_until(t).await } }, if reconnect.is_some() => {
                b.reconnect_at = None;
                b.connect();
            }
        }
        b.flush().await;
    }
    b.goodbye(&mut conn_rx).await;
}

impl Bridge {
    fn cfg(&self) -> &MqttConfig {
        &self.p.config
    }

    /// Per-node topics: their interval, also on when Home Assistant needs them.
    fn node_interval(&self) -> u64 {
        let c = self.cfg();
        match (c.node_interval_s, c.homeassistant.enabled) {
            (0, true) => c.status_interval_s.max(1),
            (s, _) => s,
        }
    }

    fn connect(&mut self) {
        let c = &self.p.config;
        let mut o = MqttOptions::new(
            self.client_id.clone(),
            self.p.url.host.clone(),
            self.p.url.port,
        );
        o.set_keep_alive(c.keep_alive());
        o.set_clean_session(true);
        o.set_max_packet_size(MAX_INCOMING_PACKET, MAX_INCOMING_PACKET);
        o.set_inflight(u16::try_from(OUTBOX_WINDOW * 4).unwrap_or(128));
        o.set_last_will(LastWill::new(
            c.topic("bridge/state"),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(u) = &self.p.username {
            o.set_credentials(u.clone(), self.p.password.clone().unwrap_or_default());
        }
        if let Some(tls) = &self.p.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        let (client, mut eventloop) = AsyncClient::new(o, REQUEST_CAPACITY);
        self.generation += 1;
        let generation = self.generation;
        let tx = self.conn_tx.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(ev) => {
                        if tx.send(Conn::Event(generation, ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Conn::Down(generation, e.to_string())).await;
                        return;
                    }
                }
            }
        });
        self.client = Some(client);
        self.connected = false;
        self.qos1_order.clear();
        self.inflight.clear();
    }

    async fn on_conn(&mut self, c: Conn) {
        match c {
            Conn::Down(g, why) if g == self.generation => {
                if self.connected {
                    warn!(error = %why, "MQTT connection lost");
                } else {
                    debug!(error = %why, "MQTT connection failed");
                }
                self.p.metrics.disconnects.fetch_add(1, Ordering::Relaxed);
                self.p.metrics.connected.store(0, Ordering::Relaxed);
                self.connected = false;
                self.client = None;
                self.qos1_order.clear();
                self.inflight.clear();
                self.reconnect_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(Duration::from_millis(
                    self.cfg().reconnect_max_ms.max(self.cfg().reconnect_min_ms),
                ));
            }
            Conn::Event(g, ev) if g == self.generation => self.on_mqtt(ev).await,
            // From a connection already given up.
            _ => {}
        }
    }

    async fn on_mqtt(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Incoming::ConnAck(_)) => {
                info!("MQTT connected");
                self.connected = true;
                self.backoff = Duration::from_millis(self.cfg().reconnect_min_ms.max(10));
                self.p.metrics.connects.fetch_add(1, Ordering::Relaxed);
                self.p.metrics.connected.store(1, Ordering::Relaxed);
                self.outbox_after = 0;
                self.outbox_more = true;
                // Birth first: it is the first thing the broker sees from us.
                self.send_now(Pub {
                    topic: self.cfg().topic("bridge/state"),
                    payload: b"online".to_vec(),
                    retain: true,
                    qos: QoS::AtLeastOnce,
                });
                self.subscribe();
                // Everything afresh: whatever was queued is older than this.
                self.state.clear();
                self.node_states.clear();
                self.node_last.clear();
                self.update_last.clear();
                if self.cfg().homeassistant.enabled {
                    self.announce_all();
                }
                self.publish_status();
                self.publish_alerts().await;
                self.publish_topology().await;
                self.publish_metrics().await;
                if self.node_interval() > 0 {
                    self.publish_nodes(true).await;
                }
                if let Ok(list) = self.shared.campaigns.list().await {
                    for c in list {
                        self.campaign_status(&c.id).await;
                    }
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                if let Some(seq) = self.qos1_order.pop_front() {
                    self.inflight.insert(pkid, seq);
                }
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(Some(seq)) = self.inflight.remove(&ack.pkid) {
                    // Deleted in one transaction with the others acknowledged meanwhile.
                    self.acked.push(seq);
                }
            }
            Event::Incoming(Incoming::Publish(p)) => self.on_publish(p).await,
            _ => {}
        }
    }

    fn subscribe(&mut self) {
        let Some(client) = &self.client else { return };
        let mut topics = Vec::new();
        if self.cfg().homeassistant.enabled {
            topics.push(format!(
                "{}/status",
                self.cfg().homeassistant.discovery_prefix
            ));
            if self.cfg().homeassistant.allow_install {
                topics.push(self.cfg().topic("ha/install/+"));
            }
        }
        if self.p.commands.is_some() {
            topics.push(self.cfg().topic("ota/request/+"));
        }
        for t in topics {
            if let Err(e) = client.try_subscribe(t, QoS::AtLeastOnce) {
                warn!(error = %e, "cannot subscribe");
            }
        }
    }

    async fn on_publish(&mut self, p: rumqttc::Publish) {
        let ha_status = format!("{}/status", self.cfg().homeassistant.discovery_prefix);
        if p.topic == ha_status {
            if p.payload.as_ref() == b"online" && self.cfg().homeassistant.enabled {
                info!("Home Assistant came online: publishing discovery again");
                self.announce_all();
                self.node_last.clear();
                self.update_last.clear();
                self.publish_nodes(true).await;
            }
            return;
        }
        if let Some(c) = self.p.commands.clone() {
            let request = self.cfg().topic("ota/request/");
            let install = self.cfg().topic("ha/install/");
            let tx = self.replies_tx.clone();
            if let Some(op) = p.topic.strip_prefix(&request) {
                let op = op.to_owned();
                // Commands may take a while (a download); the bridge keeps going.
                tokio::spawn(async move {
                    let reply = c.handle(&op, p.payload.to_vec()).await;
                    let _ = tx.send(reply).await;
                });
            } else if let Some(node) = p.topic.strip_prefix(&install) {
                let node = node.to_owned();
                let allowed = self.cfg().homeassistant.allow_install;
                tokio::spawn(async move {
                    if let Some(reply) = c.ha_install(&node, &p.payload, allowed).await {
                        let _ = tx.send(reply).await;
                    }
                });
            }
        }
    }

    /// A command's reply is in the outbox (the handler put it there): send it.
    async fn on_reply(&mut self, _r: CommandReply) {
        self.outbox_more = true;
    }

    /// The gateway's events: alerts into the outbox, new nodes announced at once.
    async fn on_event(&mut self, e: Result<GatewayEvent, broadcast::error::RecvError>) {
        match e {
            Ok(GatewayEvent::AlertRaised { alert }) => {
                let id = alert.id;
                self.queue_alert("alert_raised", &alert, id, Some(id)).await;
            }
            Ok(GatewayEvent::AlertAcked { alert }) => {
                let id = alert.id;
                self.queue_alert("alert_acked", &alert, id, None).await;
            }
            Ok(GatewayEvent::AlertCleared { id, ts }) => {
                let msg = NewMessage {
                    topic: self.cfg().topic("alerts/events"),
                    payload: json!({"event": "alert_cleared", "id": id, "ts": ts})
                        .to_string()
                        .into_bytes(),
                    retain: false,
                    dedup: Some(format!("alert:{id}:cleared")),
                };
                self.pending_out.push(msg);
            }
            Ok(GatewayEvent::Campaign(c)) => self.campaign_status(&c.id).await,
            Ok(GatewayEvent::Rollout(r)) => {
                // The retained `<prefix>/ota/rollout/<id>` (QoS 1, latest wins).
                if let Some((rest, payload)) =
                    crate::rollout_commands::retained(&self.shared, &r.id)
                {
                    let topic = self.cfg().topic(&rest);
                    let p = Pub {
                        topic: topic.clone(),
                        payload,
                        retain: true,
                        qos: QoS::AtLeastOnce,
                    };
                    self.discovery.insert(topic, p);
                }
            }
            Ok(GatewayEvent::NodeUp { node_id, .. }) => {
                if self.cfg().homeassistant.enabled && !self.announced.contains(&node_id) {
                    if let Some(n) = self.shared.registry.get(node_id) {
                        self.announce(&n);
                    }
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Alerts missed here are still in the store: reconcile from it.
                warn!(missed = n, "MQTT bridge fell behind the gateway's events");
                self.reconcile_alerts().await;
            }
            Err(broadcast::error::RecvError::Closed) => {}
        }
    }

    /// Queues the retained `<prefix>/ota/campaign/<id>` (QoS 1, latest wins, never
    /// dropped): the seeds' fields and the nodes' AWS IoT Jobs states.
    async fn campaign_status(&mut self, id: &meshfleet_gateway::campaign::CampaignId) {
        let Ok(c) = self.shared.campaigns.get(id).await else {
            return;
        };
        let topic = self.cfg().topic(&format!("ota/campaign/{}", c.id));
        let payload = crate::commands::status_json(&c).to_string().into_bytes();
        self.discovery.insert(
            topic.clone(),
            Pub {
                topic,
                payload,
                retain: true,
                qos: QoS::AtLeastOnce,
            },
        );
    }

    async fn queue_alert(&mut self, event: &str, alert: &Alert, id: i64, watermark: Option<i64>) {
        let msg = NewMessage {
            topic: self.cfg().topic("alerts/events"),
            payload: json!({"event": event, "alert": alert})
                .to_string()
                .into_bytes(),
            retain: false,
            dedup: Some(format!("alert:{id}:{event}")),
        };
        self.pending_out.push(msg);
        if watermark.is_some() {
            self.pending_watermark = self.pending_watermark.max(watermark);
        }
    }

    /// Queues what the last events produced, in one transaction.
    async fn commit_pending(&mut self) {
        if self.pending_out.is_empty() {
            return;
        }
        let msgs = std::mem::take(&mut self.pending_out);
        let w = self.pending_watermark.take();
        self.push_outbox(msgs, w).await;
    }

    async fn push_outbox(&mut self, msgs: Vec<NewMessage>, watermark: Option<i64>) {
        let r = self
            .outbox
            .run(move |o| o.push(&msgs, watermark, now_millis()))
            .await;
        match r {
            Ok(_) => self.outbox_more = true,
            Err(e) => warn!(error = %e, "cannot queue an MQTT message"),
        }
    }

    /// Queues alerts the store has but the outbox never saw (raised while the bridge was
    /// down or behind).
    async fn reconcile_alerts(&mut self) {
        let after = match self.outbox.run(|o| o.alert_watermark()).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot read the alert watermark");
                return;
            }
        };
        let alerts = match self.shared.stores.alerts.list(false, None, 100_000).await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "cannot read alerts");
                return;
            }
        };
        let mut missed: Vec<Alert> = alerts.into_iter().filter(|a| a.id > after).collect();
        missed.sort_by_key(|a| a.id);
        if missed.is_empty() {
            return;
        }
        info!(
            alerts = missed.len(),
            "queueing alerts raised while the bridge was away"
        );
        let top = missed.last().map(|a| a.id);
        let topic = self.cfg().topic("alerts/events");
        let msgs = missed
            .iter()
            .map(|a| NewMessage {
                topic: topic.clone(),
                payload: json!({"event": "alert_raised", "alert": a})
                    .to_string()
                    .into_bytes(),
                retain: false,
                dedup: Some(format!("alert:{}:alert_raised", a.id)),
            })
            .collect();
        self.push_outbox(msgs, top).await;
    }

    fn queue_node(&mut self, p: Pub) {
        self.node_states.insert(p.topic.clone(), p);
    }

    fn queue_state(&mut self, p: Pub) {
        if self.state.len() >= self.cfg().state_queue.max(1) {
            self.state.pop_front();
            self.p.metrics.state_dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.state.push_back(p);
    }

    fn state_msg(&self, topic: String, v: &serde_json::Value) -> Pub {
        Pub {
            topic,
            payload: v.to_string().into_bytes(),
            retain: true,
            qos: QoS::AtMostOnce,
        }
    }

    fn publish_status(&mut self) {
        let nodes: Vec<ha::NodeState> = self
            .shared
            .registry
            .all()
            .iter()
            .map(ha::node_state)
            .collect();
        let online = nodes.iter().filter(|n| n.online).count();
        let v = json!({
            "timestamp": now_millis(),
            "totalNodes": nodes.len(),
            "online": online,
            "nodes": nodes,
        });
        let m = self.state_msg(self.cfg().topic("status/nodes"), &v);
        self.queue_state(m);
    }

    async fn publish_alerts(&mut self) {
        match self.shared.stores.alerts.list(true, None, 1000).await {
            Ok(alerts) => {
                let v =
                    json!({"timestamp": now_millis(), "active": alerts.len(), "alerts": alerts});
                let m = self.state_msg(self.cfg().topic("alerts"), &v);
                self.queue_state(m);
            }
            Err(e) => warn!(error = %e, "cannot read alerts"),
        }
    }

    async fn publish_topology(&mut self) {
        match self.shared.mesh.topology().await {
            Ok(tree) => {
                let v = json!({
                    "timestamp": now_millis(),
                    "nodeCount": tree.size(),
                    "tree": tree_json(&tree),
                });
                let m = self.state_msg(self.cfg().topic("topology"), &v);
                self.queue_state(m);
            }
            Err(_) => debug!("mesh stopped: no topology"),
        }
    }

    async fn publish_metrics(&mut self) {
        let mut counts = [0usize; 4];
        let (total, online) = self.shared.registry.with_nodes(|it| {
            let (mut total, mut online) = (0usize, 0usize);
            for n in it {
                total += 1;
                online += usize::from(n.online);
                if let Some(i) = meshfleet_gateway::model::Health::ALL
                    .iter()
                    .position(|h| *h == n.health)
                {
                    counts[i] += 1;
                }
            }
            (total, online)
        });
        let active = self
            .shared
            .stores
            .alerts
            .list(true, None, 100_000)
            .await
            .map(|a| a.len())
            .ok();
        let c = &self.shared.counters;
        let v = json!({
            "timestamp": now_millis(),
            "gatewayNodeId": self.gateway,
            "meshRunning": self.shared.mesh.is_running(),
            "totalNodes": total,
            "online": online,
            "healthy": counts[0],
            "warning": counts[1],
            "critical": counts[2],
            "offline": counts[3],
            "activeAlerts": active,
            "statusFrames": c.status_frames.load(Ordering::Relaxed),
            "statusAccepted": c.status_accepted.load(Ordering::Relaxed),
            "statusRejected": c.status_rejected.load(Ordering::Relaxed),
            "statusRateLimited": c.status_rate_limited.load(Ordering::Relaxed),
            "mqttStateDropped": self.p.metrics.state_dropped.load(Ordering::Relaxed),
        });
        let m = self.state_msg(self.cfg().topic("metrics"), &v);
        self.queue_state(m);
    }

    /// Per-node state (and the update entity's), changed ones only unless `all`; Home
    /// Assistant's new, returning and departed nodes.
    async fn publish_nodes(&mut self, all: bool) {
        let nodes = self.shared.registry.all();
        let ha = self.cfg().homeassistant.enabled;
        let latest = if ha {
            self.latest_versions().await
        } else {
            HashMap::new()
        };
        let progress = match &self.p.commands {
            Some(c) if ha => c.node_progress().await,
            _ => HashMap::new(),
        };
        // Nodes that do not say their role and hardware in telemetry (no `--telemetry-to`,
        // stock nodes): what the gateway knows otherwise (their CAPS, the campaigns that
        // updated them), so the device entry and the update entity are complete.
        let identities = if ha {
            let missing: BTreeSet<u32> = nodes
                .iter()
                .filter(|n| n.role.is_none() || n.hardware.is_none())
                .map(|n| n.node_id)
                .collect();
            meshfleet_gateway::campaign_engine::node_identities(&self.shared, &missing).await
        } else {
            std::collections::BTreeMap::new()
        };
        let now = now_millis();
        let remove_ms = i64::try_from(self.cfg().homeassistant.remove_after_s)
            .unwrap_or(i64::MAX / 2)
            .saturating_mul(1000);
        for n in &nodes {
            let id = n.node_id;
            let filled;
            let n = match identities.get(&id) {
                Some((role, hw)) => {
                    let mut c = n.clone();
                    c.role = c.role.or_else(|| Some(role.clone()));
                    c.hardware = c.hardware.or_else(|| Some(hw.clone()));
                    filled = c;
                    &filled
                }
                None => n,
            };
            if ha {
                let gone = !n.online && now.saturating_sub(n.last_seen) > remove_ms;
                if gone {
                    if !self.removed.contains(&id) {
                        self.remove_device(id);
                    }
                    continue;
                }
                let identity = (n.role.clone(), n.hardware.clone());
                if !self.announced.contains(&id) || self.announced_with.get(&id) != Some(&identity)
                {
                    self.announce(n);
                }
            }
            let state = ha::node_state(n);
            let payload = serde_json::to_vec(&state).unwrap_or_default();
            if all || self.node_last.get(&id) != Some(&payload) {
                self.node_last.insert(id, payload.clone());
                let topic = ha::node_topic(self.cfg(), id);
                self.queue_node(Pub {
                    topic,
                    payload,
                    retain: true,
                    qos: QoS::AtMostOnce,
                });
            }
            if ha {
                // Hardware names are compared without case, as campaigns do (a node
                // reports `esp32` where the artefact says `ESP32`).
                let key = (
                    n.role.clone().unwrap_or_default(),
                    n.hardware.clone().unwrap_or_default().to_ascii_lowercase(),
                );
                let u = ha::update_state(
                    n,
                    latest.get(&key).map(String::as_str),
                    progress.get(&id).copied(),
                );
                let payload = serde_json::to_vec(&u).unwrap_or_default();
                if all || self.update_last.get(&id) != Some(&payload) {
                    self.update_last.insert(id, payload.clone());
                    let topic = ha::update_topic(self.cfg(), id);
                    self.queue_node(Pub {
                        topic,
                        payload,
                        retain: true,
                        qos: QoS::AtMostOnce,
                    });
                }
            }
        }
    }

    /// The newest stored version per (role, hardware).
    async fn latest_versions(&self) -> HashMap<(String, String), String> {
        let mut out: HashMap<(String, String), (meshfleet_firmware::Version, String)> =
            HashMap::new();
        if let Ok(list) = self.shared.stores.artefacts.list().await {
            for a in list {
                let Ok(v) = meshfleet_firmware::Version::parse(&a.version) else {
                    continue;
                };
                let key = (a.role.clone(), a.hardware.to_ascii_lowercase());
                match out.get(&key) {
                    Some((best, _)) if *best >= v => {}
                    _ => {
                        out.insert(key, (v, a.version.clone()));
                    }
                }
            }
        }
        out.into_iter().map(|(k, (_, s))| (k, s)).collect()
    }

    fn announce(&mut self, n: &NodeStatus) {
        let topic = ha::config_topic(self.cfg(), n.node_id);
        let v = ha::discovery(self.cfg(), n, self.gateway);
        self.discovery.insert(
            topic.clone(),
            Pub {
                topic,
                payload: v.to_string().into_bytes(),
                retain: true,
                qos: QoS::AtLeastOnce,
            },
        );
        self.announced.insert(n.node_id);
        self.announced_with
            .insert(n.node_id, (n.role.clone(), n.hardware.clone()));
        self.removed.remove(&n.node_id);
    }

    fn announce_all(&mut self) {
        let topic = format!(
            "{}/device/meshfleet_gateway_{}/config",
            self.cfg().homeassistant.discovery_prefix,
            self.gateway
        );
        let v = ha::gateway_discovery(self.cfg(), self.gateway);
        self.discovery.insert(
            topic.clone(),
            Pub {
                topic,
                payload: v.to_string().into_bytes(),
                retain: true,
                qos: QoS::AtLeastOnce,
            },
        );
        let now = now_millis();
        let remove_ms = i64::try_from(self.cfg().homeassistant.remove_after_s)
            .unwrap_or(i64::MAX / 2)
            .saturating_mul(1000);
        for n in self.shared.registry.all() {
            if !n.online && now.saturating_sub(n.last_seen) > remove_ms {
                continue;
            }
            self.announce(&n);
        }
    }

    /// An empty retained config removes the device from Home Assistant; its retained
    /// state topics go too.
    fn remove_device(&mut self, id: u32) {
        info!(node = id, "node gone: removing it from Home Assistant");
        let topic = ha::config_topic(self.cfg(), id);
        self.discovery.insert(
            topic.clone(),
            Pub {
                topic,
                payload: Vec::new(),
                retain: true,
                qos: QoS::AtLeastOnce,
            },
        );
        for topic in [
            ha::node_topic(self.cfg(), id),
            ha::update_topic(self.cfg(), id),
        ] {
            self.queue_node(Pub {
                topic,
                payload: Vec::new(),
                retain: true,
                qos: QoS::AtMostOnce,
            });
        }
        self.announced.remove(&id);
        self.announced_with.remove(&id);
        self.removed.insert(id);
        self.node_last.remove(&id);
        self.update_last.remove(&id);
    }

    /// Hands `p` to the client now; false if its queue is full.
    fn send_now(&mut self, p: Pub) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        let bytes = (p.topic.len() + p.payload.len()) as u64;
        match client.try_publish(p.topic, p.qos, p.retain, p.payload) {
            Ok(()) => {
                if p.qos != QoS::AtMostOnce {
                    self.qos1_order.push_back(None);
                }
                self.p.metrics.published.fetch_add(1, Ordering::Relaxed);
                self.p
                    .metrics
                    .published_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Moves what waits to the connection: outbox first (it matters most), then discovery,
    /// then state.
    async fn flush(&mut self) {
        // Before anything else, connected or not: a reconnect re-sends what is still there.
        self.delete_acked().await;
        if !self.connected {
            return;
        }
        self.flush_outbox().await;
        while let Some((topic, _)) = self.discovery.first_key_value() {
            let topic = topic.clone();
            let Some(p) = self.discovery.remove(&topic) else {
                break;
            };
            let discovery = !p.payload.is_empty()
                && p.topic
                    .starts_with(&self.cfg().homeassistant.discovery_prefix);
            if !self.send_now(p.clone()) {
                self.discovery.insert(topic, p);
                return;
            }
            if discovery {
                self.p
                    .metrics
                    .discovery_published
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Some((topic, p)) = self.node_states.pop_first() {
            if !self.send_now(p.clone()) {
                self.node_states.insert(topic, p);
                return;
            }
        }
        while let Some(p) = self.state.pop_front() {
            if !self.send_now(p.clone()) {
                self.state.push_front(p);
                return;
            }
        }
    }

    async fn delete_acked(&mut self) {
        if !self.acked.is_empty() {
            let done = std::mem::take(&mut self.acked);
            let n = done.len() as u64;
            match self.outbox.run(move |o| o.delete(&done)).await {
                Ok(()) => {
                    self.p.metrics.outbox_acked.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => warn!(error = %e, "cannot delete delivered outbox messages"),
            }
        }
    }

    async fn flush_outbox(&mut self) {
        let unacked = self.inflight.values().filter(|s| s.is_some()).count()
            + self.qos1_order.iter().filter(|s| s.is_some()).count();
        if !self.outbox_more || unacked >= OUTBOX_WINDOW {
            return;
        }
        let after = self.outbox_after;
        let room = OUTBOX_WINDOW - unacked;
        let rows = match self
            .outbox
            .run(move |o| Ok((o.pending(after, room)?, o.len()?)))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read the outbox");
                return;
            }
        };
        let (rows, pending) = rows;
        self.p
            .metrics
            .outbox_pending
            .store(pending, Ordering::Relaxed);
        if rows.len() < room {
            self.outbox_more = false;
        }
        for m in rows {
            let Some(client) = &self.client else { return };
            let bytes = (m.topic.len() + m.payload.len()) as u64;
            if client
                .try_publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload)
                .is_err()
            {
                self.outbox_more = true;
                return;
            }
            self.qos1_order.push_back(Some(m.seq));
            self.outbox_after = m.seq;
            self.p.metrics.published.fetch_add(1, Ordering::Relaxed);
            self.p
                .metrics
                .published_bytes
                .fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Says `offline` (retained) and disconnects (a clean DISCONNECT: the broker does not
    /// publish the will); waits up to 2 s for the DISCONNECT to go out.
    async fn goodbye(&mut self, conn_rx: &mut mpsc::Receiver<Conn>) {
        self.delete_acked().await;
        if !self.connected {
            return;
        }
        let topic = self.cfg().topic("bridge/state");
        let Some(client) = self.client.clone() else {
            return;
        };
        // rumqttc sends requests in order: `offline` goes out before the DISCONNECT.
        if client
            .try_publish(topic, QoS::AtLeastOnce, true, "offline")
            .is_err()
            || client.try_disconnect().is_err()
        {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            tokio::select! {
                _ = sleep_until(deadline) => break,
                c = conn_rx.recv() => match c {
                    Some(Conn::Event(g, Event::Outgoing(Outgoing::Disconnect))) if g == self.generation => break,
                    Some(Conn::Down(..)) | None => break,
                    _ => {}
                }
            }
        }
        self.p.metrics.connected.store(0, Ordering::Relaxed);
        info!("MQTT bridge stopped");
    }
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: dropped here, before anything awaits.
    let _ = stop.wait_for(|s| *s).await;
}

fn tree_json(t: &meshfleet_mesh::NodeTree) -> serde_json::Value {
    json!({
        "nodeId": t.node_id.0,
        "root": t.root,
        "subs": t.subs.iter().map(tree_json).collect::<Vec<_>>(),
    })
}
