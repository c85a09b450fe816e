//! Mesh → registry → store → events: the task that turns the node's events into fleet state.
//!
//! * Node list changes give presence (every node is monitored, reporting or not) and trigger
//!   a topology read for parents.
//! * Status packages (604), as broadcast text or as top-level frames, are decoded, rate
//!   limited per node (one per [`MIN_REPORT_INTERVAL_MS`]), recorded in the registry,
//!   queued as history samples and published.
//! * Alerts: one active alert per (node, kind), raised and cleared by the conditions in
//!   [`crate::model::AlertKind`]; raising waits for the store, so an alert the API shows
//!   exists on disk.
//! * Every second: health re-evaluation (reports go stale), dirty node records and queued
//!   samples written in one batch each.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use meshfleet_mesh::NodeTree;
use meshfleet_runtime::RuntimeEvent;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use crate::events::GatewayEvent;
use crate::model::{AlertKind, NewAlert, Sample, Severity, UnixMillis};
use crate::registry::{Change, CRITICAL_MEMORY_KB};
use crate::status::{self, StatusFrame, STATUS_PLUGIN};
use crate::{now_millis, Shared};

/// Reports from one node closer together than this are dropped (counted): a node flooding
/// status cannot flood the database.
pub const MIN_REPORT_INTERVAL_MS: i64 = 1000;

/// Most nodes the registry tracks: reports from further unknown ids are dropped (counted),
/// so spoofed ids cannot grow memory without bound.
pub const MAX_NODES: usize = 10_000;

struct Ingest {
    shared: Arc<Shared>,
    /// Active alert ids by (node, kind).
    active: HashMap<(u32, AlertKind), i64>,
    samples: Vec<Sample>,
    last_report: HashMap<u32, UnixMillis>,
}

/// Runs until `shutdown` turns true or the mesh stops.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut events: broadcast::Receiver<RuntimeEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut me = Ingest {
        active: HashMap::new(),
        samples: Vec::new(),
        last_report: HashMap::new(),
        shared,
    };
    match me
        .shared
        .stores
        .alerts
        .list(true, None, MAX_NODES * 3)
        .await
    {
        Ok(alerts) => {
            for a in alerts {
                me.active.insert((a.node_id, a.kind), a.id);
            }
        }
        Err(e) => warn!(error = %e, "cannot read active alerts"),
    }
    me.resync().await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => me.tick(),
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
    }
    me.tick();
}

impl Ingest {
    fn timeout_ms(&self) -> i64 {
        i64::try_from(self.shared.config.report_timeout().as_millis()).unwrap_or(i64::MAX)
    }

    async fn handle(&mut self, e: RuntimeEvent) {
        match e {
            RuntimeEvent::Nodes { nodes } => {
                let ids: Vec<u32> = nodes.iter().map(|n| n.0).collect();
                self.present(&ids).await;
            }
            RuntimeEvent::Received { from, msg, .. } if status::looks_like_status(&msg) => {
                self.status(from.0, &msg).await;
            }
            RuntimeEvent::Plugin { plugin, data } if plugin == STATUS_PLUGIN => {
                if let Some(f) = StatusFrame::from_json(&data) {
                    self.status(f.from.0, &f.text).await;
                }
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
        let now = now_millis();
        let changes = self
            .shared
            .registry
            .set_present(ids, now, self.timeout_ms());
        if let Ok(tree) = self.shared.mesh.topology().await {
            self.shared.registry.set_parents(&parents(&tree));
        }
        self.changes(changes, now).await;
    }

    async fn status(&mut self, from: u32, text: &str) {
        let c = &self.shared.counters;
        c.status_frames.fetch_add(1, Ordering::Relaxed);
        let report = match status::decode(text) {
            Ok(r) => r,
            Err(e) => {
                c.status_rejected.fetch_add(1, Ordering::Relaxed);
                debug!(from, error = %e, "status package dropped");
                return;
            }
        };
        let now = now_millis();
        if self
            .last_report
            .get(&from)
            .is_some_and(|t| now - t < MIN_REPORT_INTERVAL_MS)
        {
            c.status_rate_limited.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.shared.registry.get(from).is_none() && self.shared.registry.len() >= MAX_NODES {
            c.status_rejected.fetch_add(1, Ordering::Relaxed);
            debug!(from, "status from a new node dropped: registry full");
            return;
        }
        self.last_report.insert(from, now);
        let mem = report.free_memory_kb;
        let flags = report.alert_flags;
        self.samples.push(Sample {
            node_id: from,
            ts: now,
            report: report.clone(),
        });
        let changes = self
            .shared
            .registry
            .report(from, report, now, self.timeout_ms());
        c.status_accepted.fetch_add(1, Ordering::Relaxed);
        let health = self
            .shared
            .registry
            .get(from)
            .map_or(crate::model::Health::Offline, |n| n.health);
        self.shared.bus.publish(GatewayEvent::Status {
            node_id: from,
            ts: now,
            health,
        });
        self.changes(changes, now).await;
        let flags_msg = format!("status alert flags 0x{flags:02x}");
        self.condition(
            from,
            AlertKind::StatusFlags,
            flags != 0,
            Severity::Warning,
            flags_msg,
            now,
        )
        .await;
        let mem_msg = format!("free memory {mem} KiB < {CRITICAL_MEMORY_KB} KiB");
        self.condition(
            from,
            AlertKind::LowMemory,
            mem < CRITICAL_MEMORY_KB,
            Severity::Critical,
            mem_msg,
            now,
        )
        .await;
    }

    async fn changes(&mut self, changes: Vec<Change>, now: UnixMillis) {
        for ch in changes {
            match ch {
                Change::Up(id) => {
                    self.shared.bus.publish(GatewayEvent::NodeUp {
                        node_id: id,
                        ts: now,
                    });
                    self.condition(
                        id,
                        AlertKind::NodeOffline,
                        false,
                        Severity::Critical,
                        String::new(),
                        now,
                    )
                    .await;
                }
                Change::Down(id) => {
                    self.shared.bus.publish(GatewayEvent::NodeDown {
                        node_id: id,
                        ts: now,
                    });
                    let msg = format!("node {id} left the mesh");
                    self.condition(
                        id,
                        AlertKind::NodeOffline,
                        true,
                        Severity::Critical,
                        msg,
                        now,
                    )
                    .await;
                }
                Change::Health { node, from, to } => {
                    self.shared.bus.publish(GatewayEvent::Health {
                        node_id: node,
                        from,
                        to,
                    });
                }
            }
        }
    }

    /// Raises the (node, kind) alert when `on` and none is active; clears it when not.
    async fn condition(
        &mut self,
        node: u32,
        kind: AlertKind,
        on: bool,
        severity: Severity,
        message: String,
        now: UnixMillis,
    ) {
        let active = self.active.get(&(node, kind)).copied();
        let alerts = &self.shared.stores.alerts;
        match (on, active) {
            (true, None) => {
                let new = NewAlert {
                    node_id: node,
                    kind,
                    severity,
                    message,
                    raised_at: now,
                };
                match alerts.raise(new).await {
                    Ok(alert) => {
                        self.active.insert((node, kind), alert.id);
                        self.shared.bus.publish(GatewayEvent::AlertRaised { alert });
                    }
                    Err(e) => warn!(node, ?kind, error = %e, "cannot store an alert"),
                }
            }
            (false, Some(id)) => match alerts.clear(id, now).await {
                Ok(()) => {
                    self.active.remove(&(node, kind));
                    self.shared
                        .bus
                        .publish(GatewayEvent::AlertCleared { id, ts: now });
                }
                Err(e) => warn!(node, ?kind, error = %e, "cannot clear an alert"),
            },
            _ => {}
        }
    }

    fn tick(&mut self) {
        let now = now_millis();
        let changes = self.shared.registry.tick(now, self.timeout_ms());
        for ch in changes {
            if let Change::Health { node, from, to } = ch {
                self.shared.bus.publish(GatewayEvent::Health {
                    node_id: node,
                    from,
                    to,
                });
            }
        }
        self.shared
            .stores
            .nodes
            .save(self.shared.registry.take_dirty());
        self.shared
            .stores
            .history
            .append(std::mem::take(&mut self.samples));
        // Forget rate-limit stamps that can no longer matter.
        self.last_report
            .retain(|_, t| now - *t < MIN_REPORT_INTERVAL_MS);
    }
}

/// `child -> parent` for every node below the gateway in its view of the tree (the
/// gateway's own neighbours have the gateway as parent).
pub fn parents(tree: &NodeTree) -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
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
