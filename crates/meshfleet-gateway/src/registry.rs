//! The gateway's fleet registry: every node ever seen (persisted through
//! [`crate::store::NodeStore`], restored at start), its presence, its last status report, and
//! the health and values the fleet monitor ([`meshfleet_monitor::Monitor`]) computes.
//!
//! The monitor is the authority on health and alerts (its rules: `docs/monitoring.md`); this
//! registry adds what the API needs on top: nodes from before a restart, wall-clock times,
//! the last status report whole, report counts. Nodes restored from the store are offline
//! until the mesh shows them again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{PoisonError, RwLock};

use crate::model::{Health, NodeStatus, UnixMillis};
use crate::status::StatusReport;

/// A change worth telling subscribers about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A node joined (or re-joined) the mesh.
    Up(u32),
    /// A node left the mesh.
    Down(u32),
}

/// The registry (interior mutability: shared by the ingest task and the API).
#[derive(Debug, Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    nodes: BTreeMap<u32, NodeStatus>,
    /// Changed since the last [`Registry::take_dirty`].
    dirty: BTreeSet<u32>,
}

impl Registry {
    /// A registry holding `nodes` (from the store), all marked offline until seen again.
    pub fn restore(nodes: Vec<NodeStatus>) -> Self {
        let nodes = nodes
            .into_iter()
            .map(|mut n| {
                n.online = false;
                n.health = Health::Offline;
                (n.node_id, n)
            })
            .collect();
        Self {
            inner: RwLock::new(Inner {
                nodes,
                dirty: BTreeSet::new(),
            }),
        }
    }

    /// Sets who is present: `present` is the mesh's whole node list now.
    pub fn set_present(&self, present: &[u32], now: UnixMillis) -> Vec<Change> {
        let mut inner = self.write();
        let mut changes = Vec::new();
        let present: BTreeSet<u32> = present.iter().copied().collect();
        for &id in &present {
            let n = inner.nodes.entry(id).or_insert_with(|| new_node(id, now));
            n.last_seen = now;
            if !n.online {
                n.online = true;
                if n.health == Health::Offline {
                    // Until the monitor says more: present and nothing known against it.
                    n.health = Health::Healthy;
                }
                changes.push(Change::Up(id));
            }
            inner.dirty.insert(id);
        }
        let gone: Vec<u32> = inner
            .nodes
            .values()
            .filter(|n| n.online && !present.contains(&n.node_id))
            .map(|n| n.node_id)
            .collect();
        for id in gone {
            if let Some(n) = inner.nodes.get_mut(&id) {
                n.online = false;
                changes.push(Change::Down(id));
            }
            inner.dirty.insert(id);
        }
        changes
    }

    /// Records a status report from `node`.
    pub fn report(&self, node: u32, report: StatusReport, now: UnixMillis) {
        let mut inner = self.write();
        let n = inner
            .nodes
            .entry(node)
            .or_insert_with(|| new_node(node, now));
        n.last_seen = now;
        n.last_report = Some(now);
        n.reports += 1;
        n.uptime = Some(report.uptime);
        n.free_memory = Some(u32::from(report.free_memory_kb) * 1024);
        if !report.firmware.is_empty() {
            n.firmware = Some(report.firmware.clone());
        }
        n.status = Some(report);
        inner.dirty.insert(node);
    }

    /// Takes what the monitor knows of a node: health, parent, identity, latest values.
    /// `last_seen` is the monitor's last evidence of life, in wall-clock ms.
    pub fn apply(&self, r: &meshfleet_monitor::NodeRecord, last_seen: UnixMillis) {
        let mut inner = self.write();
        let id = r.id.0;
        let n = inner
            .nodes
            .entry(id)
            .or_insert_with(|| new_node(id, last_seen));
        n.health = health_of(r.health);
        n.last_seen = n.last_seen.max(last_seen);
        if r.parent.is_some() {
            n.parent = r.parent.map(|p| p.0);
        }
        for (mine, theirs) in [
            (&mut n.role, &r.role),
            (&mut n.hardware, &r.hardware),
            (&mut n.firmware, &r.firmware),
        ] {
            if theirs.is_some() {
                mine.clone_from(theirs);
            }
        }
        if let Some(u) = r.metrics.uptime_s {
            n.uptime = Some(u);
        }
        if let Some(b) = r.metrics.free_heap_bytes {
            n.free_memory = u32::try_from(b).ok();
        }
        inner.dirty.insert(id);
    }

    /// Sets a node's health (the monitor's verdict).
    pub fn set_health(&self, node: u32, health: Health) {
        let mut inner = self.write();
        let Inner { nodes, dirty } = &mut *inner;
        if let Some(n) = nodes.get_mut(&node) {
            if n.health != health {
                n.health = health;
                dirty.insert(node);
            }
        }
    }

    /// Sets each node's parent from the gateway's view of the tree (`child -> parent`).
    pub fn set_parents(&self, parents: &BTreeMap<u32, u32>) {
        let mut inner = self.write();
        let Inner { nodes, dirty } = &mut *inner;
        for n in nodes.values_mut() {
            let p = parents.get(&n.node_id).copied();
            if n.online && n.parent != p {
                n.parent = p;
                dirty.insert(n.node_id);
            }
        }
    }

    /// Records changed since the last call (to persist them).
    pub fn take_dirty(&self) -> Vec<NodeStatus> {
        let mut inner = self.write();
        let dirty = std::mem::take(&mut inner.dirty);
        dirty
            .into_iter()
            .filter_map(|id| inner.nodes.get(&id).cloned())
            .collect()
    }

    /// One node.
    pub fn get(&self, node: u32) -> Option<NodeStatus> {
        self.read().nodes.get(&node).cloned()
    }

    /// Every node, by id.
    pub fn all(&self) -> Vec<NodeStatus> {
        self.read().nodes.values().cloned().collect()
    }

    /// Runs `f` over every node without copying them (metrics, summaries).
    pub fn with_nodes<R>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &NodeStatus>) -> R) -> R {
        let inner = self.read();
        let mut it = inner.nodes.values();
        f(&mut it)
    }

    /// Nodes known.
    pub fn len(&self) -> usize {
        self.read().nodes.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn new_node(id: u32, now: UnixMillis) -> NodeStatus {
    NodeStatus {
        node_id: id,
        health: Health::Offline,
        online: false,
        first_seen: now,
        last_seen: now,
        last_report: None,
        parent: None,
        role: None,
        hardware: None,
        firmware: None,
        uptime: None,
        free_memory: None,
        reports: 0,
        status: None,
    }
}

/// The monitor's health as the API's.
pub fn health_of(h: meshfleet_monitor::Health) -> Health {
    match h {
        meshfleet_monitor::Health::Healthy => Health::Healthy,
        meshfleet_monitor::Health::Warning => Health::Warning,
        meshfleet_monitor::Health::Critical => Health::Critical,
        meshfleet_monitor::Health::Offline => Health::Offline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_up_and_down() {
        let r = Registry::default();
        let c = r.set_present(&[1, 2], 0);
        assert!(c.contains(&Change::Up(1)) && c.contains(&Change::Up(2)));
        assert_eq!(r.get(1).map(|n| n.health), Some(Health::Healthy));
        let c = r.set_present(&[2], 10);
        assert_eq!(c, vec![Change::Down(1)]);
        assert_eq!(r.get(1).map(|n| n.online), Some(false));
        r.set_health(1, Health::Offline);
        assert_eq!(r.get(1).map(|n| n.health), Some(Health::Offline));
    }

    #[test]
    fn reports_are_kept_whole() {
        let r = Registry::default();
        r.set_present(&[1], 0);
        let report = StatusReport {
            free_memory_kb: 100,
            firmware: "1.0".into(),
            ..StatusReport::default()
        };
        r.report(1, report.clone(), 5);
        let n = r.get(1).expect("known");
        assert_eq!(n.reports, 1);
        assert_eq!(n.last_report, Some(5));
        assert_eq!(n.free_memory, Some(100 * 1024));
        assert_eq!(n.firmware.as_deref(), Some("1.0"));
        assert_eq!(n.status, Some(report));
    }

    #[test]
    fn restored_nodes_start_offline_and_dirty_is_drained() {
        let r = Registry::default();
        r.set_present(&[7], 0);
        assert_eq!(r.take_dirty().len(), 1);
        assert!(r.take_dirty().is_empty());
        let back = Registry::restore(r.all());
        let n = back.get(7).expect("restored");
        assert!(!n.online);
        assert_eq!(n.health, Health::Offline);
    }
}
