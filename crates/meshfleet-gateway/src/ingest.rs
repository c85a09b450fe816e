//! Mesh → fleet monitor → registry → store → events: the task that turns the node's events
//! into fleet state.
//!
//! It owns the sans-IO [`Monitor`] (no lock: only this task touches it) and drives it as its
//! run loop says: every input with `now`, then its transmits (on-demand queries, delay
//! probes) and events (health changes, alerts) drained until empty, and
//! [`Monitor::handle_timeout`] at [`Monitor::poll_timeout`].
//!
//! * Node list changes give presence (online/offline, `node_up`/`node_down`) and a topology
//!   read: parents for the registry, the tree for the monitor.
//! * Status packages (604, as broadcast text or top-level) and telemetry (710, top-level) go to
//!   the monitor; what it accepts is recorded (the report whole, a history sample) and
//!   published; what it drops is counted by reason.
//! * The monitor's alerts are stored (raising waits for the store, so an alert the API shows
//!   exists on disk) and published; the monitor's health goes to the registry.
//! * Every second: dirty node records and queued samples are written, one batch each.
//!
//! At start, alerts left active by a previous run are cleared: the monitor starts with no
//! alerts and raises again whatever still holds.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use meshfleet_mesh::{Instant, NodeId, NodeTree};
use meshfleet_monitor::{
    AlertEvent, ClearReason, DropReason, Ingest as Verdict, Monitor, MonitorEvent, QueryError,
    QueryId, QueryResult, QueryTarget, Subject, Transmit,
};
use meshfleet_runtime::RuntimeEvent;
use meshfleet_wire::Package;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::events::GatewayEvent;
use crate::mesh::MeshClock;
use crate::model::{AlertKind, NewAlert, Sample, Severity, UnixMillis};
use crate::registry::{health_of, Change};
use crate::status::{self, StatusFrame, STATUS_PLUGIN, STATUS_TYPE};
use crate::{now_millis, Shared};

/// An operator clears a stored alert by hand (from the API): the monitor closes it and keeps
/// the condition from raising it again until it re-arms. The reply says whether the monitor
/// had it active (`false`: it had already cleared, or it is left from a previous run).
#[derive(Debug)]
pub(crate) struct ClearByOperator {
    /// The stored alert's id.
    pub(crate) stored: i64,
    /// The answer.
    pub(crate) reply: oneshot::Sender<bool>,
}

/// An on-demand query from the API: ask nodes for fresh data now (meshfleet nodes with a
/// telemetry query, stock nodes with painlessMesh's delay probe; data younger than the
/// monitor's cache TTL is answered from the cache). The reply comes when every target
/// answered or the monitor's query timeout passed (then it is partial).
#[derive(Debug)]
pub(crate) struct QueryNow {
    /// Whom to ask.
    pub(crate) target: QueryTarget,
    /// The answer, or why the query did not start.
    pub(crate) reply: oneshot::Sender<Result<QueryResult, QueryError>>,
}

/// What the API asks of the ingest task, which owns the monitor.
#[derive(Debug)]
pub(crate) enum ToMonitor {
    /// An operator clears an alert by hand.
    Clear(ClearByOperator),
    /// An on-demand query.
    Query(QueryNow),
}

/// Most API requests queued for the ingest task (the API waits for each).
pub(crate) const MONITOR_QUEUE: usize = 64;

/// Most alerts read back at start (to clear those a previous run left active).
const MAX_STALE_ALERTS: usize = 100_000;

/// The monitor's clock: microseconds since the task started, with the wall-clock time of
/// that start, so its instants convert to the API's milliseconds since the epoch. A mesh
/// with its own clock ([`MeshClock`]: a simulated mesh paced faster than real time) gives
/// the monitor its time instead, converted to the wall clock at its speed.
struct Clock {
    start: tokio::time::Instant,
    start_unix: UnixMillis,
    mesh: Option<Arc<dyn MeshClock>>,
}

impl Clock {
    fn now(&self) -> Instant {
        match &self.mesh {
            Some(m) => m.now(),
            None => Instant::from_micros(
                u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX),
            ),
        }
    }

    /// Wall-clock microseconds from `i` to now at the mesh's speed (negative: `i` is ahead).
    fn wall_ago(m: &dyn MeshClock, i: Instant) -> f64 {
        let now = m.now().as_micros() as f64;
        (now - i.as_micros() as f64) / m.speed().max(1.0)
    }

    fn unix(&self, i: Instant) -> UnixMillis {
        match &self.mesh {
            Some(m) => now_millis() - (Self::wall_ago(&**m, i) / 1000.0) as i64,
            None => self.start_unix + i64::try_from(i.as_micros() / 1000).unwrap_or(i64::MAX / 2),
        }
    }

    fn at(&self, i: Instant) -> tokio::time::Instant {
        match &self.mesh {
            Some(m) => {
                let ahead = (-Self::wall_ago(&**m, i)).clamp(0.0, 3.6e9);
                tokio::time::Instant::now() + Duration::from_micros(ahead as u64)
            }
            None => self.start + Duration::from_micros(i.as_micros()),
        }
    }
}

struct Ingest {
    shared: Arc<Shared>,
    monitor: Monitor,
    clock: Clock,
    /// Stored alert ids by the monitor's alert ids.
    alert_ids: HashMap<u64, i64>,
    samples: Vec<Sample>,
    /// Running on-demand queries, answered when the monitor finishes them.
    queries: HashMap<QueryId, oneshot::Sender<Result<QueryResult, QueryError>>>,
}

/// Runs until `shutdown` turns true or the mesh stops.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut events: broadcast::Receiver<RuntimeEvent>,
    mut shutdown: watch::Receiver<bool>,
    mut commands: mpsc::Receiver<ToMonitor>,
) {
    let monitor = Monitor::new(shared.config.monitor.clone(), shared.mesh.node_id());
    let mut me = Ingest {
        monitor,
        clock: Clock {
            start: tokio::time::Instant::now(),
            start_unix: now_millis(),
            mesh: shared.mesh.clock(),
        },
        alert_ids: HashMap::new(),
        samples: Vec::new(),
        queries: HashMap::new(),
        shared,
    };
    me.clear_stale_alerts().await;
    me.resync().await;
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = me
            .monitor
            .poll_timeout()
            .map(|t| me.clock.at(t))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = flush.tick() => me.flush(),
            Some(c) = commands.recv() => me.command(c),
            _ = tokio::time::sleep_until(wake) => {
                let now = me.clock.now();
                me.monitor.handle_timeout(now);
            }
            e = events.recv() => match e {
                Ok(e) => me.handle(e).await,
                Err(RecvError::Lagged(n)) => {
                    warn!(missed = n, "mesh events lagged; re-reading the node list");
                    me.resync().await;
                }
                Err(RecvError::Closed) => {
                    info!("the mesh node stopped");
                    break;
                }
            },
        }
        me.drain().await;
    }
    me.flush();
}

impl Ingest {
    fn command(&mut self, c: ToMonitor) {
        let now = self.clock.now();
        match c {
            ToMonitor::Clear(c) => {
                let monitor_id = self
                    .alert_ids
                    .iter()
                    .find(|(_, stored)| **stored == c.stored)
                    .map(|(m, _)| *m);
                let cleared =
                    monitor_id.is_some_and(|m| self.monitor.clear_alert(now, m).is_some());
                // The API writes the store (with who and why) and publishes the event; the
                // monitor's own `Cleared { reason: Operator }` only drops the id mapping.
                let _ = c.reply.send(cleared);
            }
            ToMonitor::Query(q) => match self.monitor.start_query(now, q.target) {
                // Registered before `drain` runs: a query answered from the cache alone is
                // finished at once and its `QueryDone` is among the events drained next.
                Ok(id) => {
                    self.queries.insert(id, q.reply);
                }
                Err(e) => {
                    let _ = q.reply.send(Err(e));
                }
            },
        }
    }

    async fn clear_stale_alerts(&mut self) {
        let alerts = &self.shared.stores.alerts;
        match alerts.list(true, None, MAX_STALE_ALERTS).await {
            Ok(stale) => {
                let now = now_millis();
                for a in stale {
                    if let Err(e) = alerts.clear(a.id, now).await {
                        warn!(id = a.id, error = %e, "cannot clear an alert of a previous run");
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read active alerts"),
        }
    }

    async fn handle(&mut self, e: RuntimeEvent) {
        match e {
            RuntimeEvent::Nodes { nodes } => {
                let ids: Vec<u32> = nodes.iter().map(|n| n.0).collect();
                self.present(&ids).await;
            }
            RuntimeEvent::Received { from, msg, .. } => {
                let now = self.clock.now();
                let verdict = self.monitor.handle_app_message(now, from, &msg);
                self.verdict(verdict, STATUS_TYPE, from, &msg);
            }
            RuntimeEvent::Plugin { plugin, data } if plugin == STATUS_PLUGIN => {
                if let Some(f) = data.downcast_ref::<StatusFrame>() {
                    let now = self.clock.now();
                    let verdict = self.monitor.handle_package(now, f.ty, f.from, &f.text);
                    self.verdict(verdict, f.ty, f.from, &f.text);
                }
            }
            RuntimeEvent::Delay { node_id, us } => {
                let now = self.clock.now();
                self.monitor.handle_delay(now, node_id, us);
            }
            _ => {}
        }
    }

    async fn resync(&mut self) {
        match self.shared.mesh.nodes().await {
            Ok(nodes) => {
                let ids: Vec<u32> = nodes.iter().map(|n| n.0).collect();
                self.present(&ids).await;
            }
            Err(e) => debug!(error = %e, "cannot read the node list"),
        }
    }

    async fn present(&mut self, ids: &[u32]) {
        let unix = now_millis();
        for ch in self.shared.registry.set_present(ids, unix) {
            self.shared.bus.publish(match ch {
                Change::Up(id) => GatewayEvent::NodeUp {
                    node_id: id,
                    ts: unix,
                },
                Change::Down(id) => GatewayEvent::NodeDown {
                    node_id: id,
                    ts: unix,
                },
            });
        }
        if let Ok(tree) = self.shared.mesh.topology().await {
            self.shared.registry.set_parents(&parents(&tree));
            let now = self.clock.now();
            self.monitor.handle_topology(now, &tree);
        }
    }

    /// What the monitor said about a package.
    fn verdict(&mut self, verdict: Verdict, ty: i64, from: NodeId, text: &str) {
        let c = &self.shared.counters;
        match verdict {
            Verdict::NotMonitoring => return,
            Verdict::Dropped(reason) => {
                c.status_frames.fetch_add(1, Ordering::Relaxed);
                let counter = match reason {
                    DropReason::Flood => &c.status_rate_limited,
                    _ => &c.status_rejected,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                debug!(from = %from, ?reason, "monitoring package dropped");
                return;
            }
            Verdict::Accepted => {
                c.status_frames.fetch_add(1, Ordering::Relaxed);
                c.status_accepted.fetch_add(1, Ordering::Relaxed);
            }
            #[allow(unreachable_patterns)]
            _ => return,
        }
        let unix = now_millis();
        if ty == STATUS_TYPE {
            // The monitor accepted it, so it decodes; a disagreement is only logged.
            match status::decode(text) {
                Ok(report) => {
                    self.samples.push(Sample {
                        node_id: from.0,
                        ts: unix,
                        report: report.clone(),
                    });
                    self.shared.registry.report(from.0, report, unix);
                }
                Err(e) => debug!(from = %from, error = %e, "accepted status package not decoded"),
            }
        } else if ty == meshfleet_monitor::telemetry::TELEMETRY_TYPE {
            // A meshfleet node's telemetry: its latest values as a history sample, so its
            // charts are not empty (the demo's meshfleet nodes send no 604). No message
            // counters: telemetry carries a rate, not the 604 counters.
            if let Some(r) = self.monitor.node(from) {
                self.samples.push(Sample {
                    node_id: from.0,
                    ts: unix,
                    report: telemetry_report(&r.metrics),
                });
            }
        }
        if let Some(r) = self.monitor.node(from) {
            self.shared.registry.apply(r, self.clock.unix(r.last_seen));
        }
        let health = self
            .shared
            .registry
            .get(from.0)
            .map_or(crate::model::Health::Offline, |n| n.health);
        self.shared.bus.publish(GatewayEvent::Status {
            node_id: from.0,
            ts: unix,
            health,
        });
    }

    /// Sends the monitor's telemetry query (711) as a package of its own, routed SINGLE to
    /// `to`: the agent's telemetry plugin claims type 711 packages, so the query's text sent
    /// as the message of a SINGLE (type 9) never reached it, and a quiet meshfleet node's
    /// verification went unanswered (found by the simulator's telemetry workload).
    async fn send_query(&self, to: NodeId, text: String) {
        let pkg = match Package::from_text(text) {
            Ok(p) => p,
            Err(e) => {
                warn!(to = %to, error = %e, "the monitor's query is not a package; not sent");
                return;
            }
        };
        let job = Box::new(move |node: &mut meshfleet_mesh::Node, now: Instant| {
            if let Err(e) = node.send_package(now, &pkg) {
                debug!(to = %to, error = %e, "telemetry query not sent");
            }
        });
        if self.shared.mesh.run_on_node(job).await.is_err() {
            debug!(to = %to, "telemetry query not sent: the mesh has stopped");
        }
    }

    /// Carries out the monitor's transmits and events.
    async fn drain(&mut self) {
        while let Some(t) = self.monitor.poll_transmit() {
            let result = match t {
                Transmit::Query { to, text } => {
                    self.send_query(to, text).await;
                    Ok(())
                }
                Transmit::DelayProbe { to } => self.shared.mesh.probe_delay(to).await,
                #[allow(unreachable_patterns)]
                _ => Ok(()),
            };
            if let Err(e) = result {
                debug!(error = %e, "monitor transmit not sent");
            }
        }
        while let Some(e) = self.monitor.poll_event() {
            match e {
                MonitorEvent::HealthChanged { node, from, to } => {
                    self.shared.registry.set_health(node.0, health_of(to));
                    self.shared.bus.publish(GatewayEvent::Health {
                        node_id: node.0,
                        from: health_of(from),
                        to: health_of(to),
                    });
                }
                MonitorEvent::NodeDiscovered(id) => {
                    if let Some(r) = self.monitor.node(id) {
                        self.shared.registry.apply(r, self.clock.unix(r.last_seen));
                    }
                }
                MonitorEvent::Alert(a) => self.alert(a).await,
                MonitorEvent::QueryDone(r) => {
                    if let Some(reply) = self.queries.remove(&r.id) {
                        // The caller may have gone (a closed HTTP request): nothing to do.
                        let _ = reply.send(Ok(r));
                    }
                }
                _ => {}
            }
        }
    }

    async fn alert(&mut self, event: AlertEvent) {
        let alerts = &self.shared.stores.alerts;
        match event {
            AlertEvent::Raised(a) => {
                let node_id = match a.key.subject {
                    Subject::Node(n) => n.0,
                    Subject::Mesh => 0,
                };
                let kind = AlertKind::from_monitor(a.key.kind);
                let new = NewAlert {
                    node_id,
                    kind,
                    severity: Severity::from_monitor(a.severity),
                    message: describe(kind, node_id, a.value),
                    raised_at: self.clock.unix(a.raised_at),
                };
                match alerts.raise(new).await {
                    Ok(stored) => {
                        self.alert_ids.insert(a.id, stored.id);
                        self.shared
                            .bus
                            .publish(GatewayEvent::AlertRaised { alert: stored });
                    }
                    Err(e) => warn!(node_id, ?kind, error = %e, "cannot store an alert"),
                }
            }
            AlertEvent::SeverityChanged { id, severity, .. } => {
                let Some(&stored) = self.alert_ids.get(&id) else {
                    return;
                };
                if let Err(e) = alerts
                    .set_severity(stored, Severity::from_monitor(severity))
                    .await
                {
                    warn!(id = stored, error = %e, "cannot change an alert's severity");
                }
            }
            AlertEvent::Cleared {
                reason: ClearReason::Operator,
                id,
                ..
            } => {
                self.alert_ids.remove(&id);
            }
            AlertEvent::Cleared { id, at, .. } => {
                let Some(stored) = self.alert_ids.remove(&id) else {
                    return;
                };
                let ts = self.clock.unix(at);
                match alerts.clear(stored, ts).await {
                    Ok(()) => self
                        .shared
                        .bus
                        .publish(GatewayEvent::AlertCleared { id: stored, ts }),
                    Err(e) => warn!(id = stored, error = %e, "cannot clear an alert"),
                }
            }
            _ => {}
        }
    }

    fn flush(&mut self) {
        self.shared
            .stores
            .nodes
            .save(self.shared.registry.take_dirty());
        self.shared
            .stores
            .history
            .append(std::mem::take(&mut self.samples));
    }
}

/// A history sample's report from a node's latest telemetry values: unknown values stay 0,
/// and the message counters are [`crate::model::NO_COUNTERS`] so no rate is made of them.
fn telemetry_report(m: &meshfleet_monitor::Metrics) -> status::StatusReport {
    let clamp = |v: Option<i64>, max: i64| v.map_or(0, |v| v.clamp(0, max));
    status::StatusReport {
        uptime: m.uptime_s.unwrap_or(0),
        free_memory_kb: clamp(m.free_heap_bytes.map(|b| b / 1024), i64::from(u16::MAX)) as u16,
        wifi_quality: m.rssi_dbm.map_or(0, |r| {
            meshfleet_monitor::status::quality_from_rssi(r.clamp(-200, 0) as i32)
        }),
        latency_ms: clamp(m.latency_ms, i64::from(u16::MAX)) as u16,
        packet_loss: clamp(m.loss_pct, 100) as u8,
        messages_received: crate::model::NO_COUNTERS,
        messages_sent: crate::model::NO_COUNTERS,
        messages_dropped: crate::model::NO_COUNTERS,
        ..status::StatusReport::default()
    }
}

/// A readable description of an alert; `value` is the monitor's (see `AlertKind` in
/// `docs/monitoring.md` for its unit per kind).
fn describe(kind: AlertKind, node: u32, value: i64) -> String {
    let who = if node == 0 {
        "the mesh".to_owned()
    } else {
        format!("node {node}")
    };
    match kind {
        AlertKind::LowMemory => format!("{who}: free memory {value} bytes"),
        AlertKind::HighLatency => format!("{who}: latency {value} ms"),
        AlertKind::PacketLoss => format!("{who}: packet loss {value} %"),
        AlertKind::WeakSignal => format!("{who}: WiFi signal {value} dBm"),
        AlertKind::Partition => format!("{who}: subtree of {value} nodes cut off"),
        AlertKind::RebootLoop => format!("{who}: {value} reboots within the reboot window"),
        AlertKind::MemoryLeak => format!(
            "{who}: free memory falling steadily ({} bytes/h)",
            value.unsigned_abs()
        ),
        AlertKind::MessageFlood => format!("{who}: sending {value} messages/min"),
        AlertKind::TopologyChurn => {
            format!("{who}: {value} joins, departures or parent changes within the churn window")
        }
        AlertKind::LostRoot if node == 0 => "the mesh has lost its root".to_owned(),
        AlertKind::LostRoot => format!("{who}: reports it has lost its route to the root"),
        AlertKind::OtaFailed => format!("{who}: a firmware update failed"),
        AlertKind::SensorError => format!("{who}: reports a sensor error"),
        AlertKind::LinkDegraded => format!("{who}: link quality well below its own baseline"),
        AlertKind::NodeSilent => format!("{who}: in the mesh but its reports stopped"),
        AlertKind::NodeOffline => format!("{who}: left the mesh and has not come back"),
        other => format!("{who}: {} ({value})", other.label()),
    }
}

/// `child -> parent` for every node below the gateway in its view of the tree (the
/// gateway's own neighbours have the gateway as parent).
pub fn parents(tree: &NodeTree) -> std::collections::BTreeMap<u32, u32> {
    let mut out = std::collections::BTreeMap::new();
    // Iterative: trees may be 127 levels deep.
    let mut stack: Vec<&NodeTree> = vec![tree];
    while let Some(t) = stack.pop() {
        for s in &t.subs {
            out.insert(s.node_id.0, t.node_id.0);
            stack.push(s);
        }
    }
    out
}
