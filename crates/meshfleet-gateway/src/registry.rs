//! The fleet registry: every node ever seen, its presence, its last status report and its
//! health, in memory (persisted through [`crate::store::NodeStore`]).
//!
//! Health rules (until the fleet monitoring crate's classification is merged):
//! * **offline**: not in the mesh now (presence from node sync);
//! * **critical**: last report says free memory < 10 KiB;
//! * **warning**: last report has alert flags set, or the node has reported before and its
//!   last report is older than the report timeout (stale: in the mesh but not reporting);
//! * **healthy**: otherwise (present, and either fresh reports without flags or a node that
//!   sends no reports: presence is all we know).
//!
//! All methods take `now` from the caller, so the rules are tested without a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{PoisonError, RwLock};

use crate::model::{Health, NodeStatus, UnixMillis};
use crate::status::StatusReport;

/// Free heap below this (KiB) is critical (the seeds' low-memory flag: < 10 KB).
pub const CRITICAL_MEMORY_KB: u16 = 10;

/// A change worth telling subscribers about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A node joined (or re-joined) the mesh.
    Up(u32),
    /// A node left the mesh.
    Down(u32),
    /// A node's health changed.
    Health {
        /// The node.
        node: u32,
        /// Before.
        from: Health,
        /// After.
        to: Health,
    },
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
    pub fn set_present(&self, present: &[u32], now: UnixMillis, timeout_ms: i64) -> Vec<Change> {
        let mut inner = self.write();
        let mut changes = Vec::new();
        let present: BTreeSet<u32> = present.iter().copied().collect();
        for &id in &present {
            let n = inner.nodes.entry(id).or_insert_with(|| new_node(id, now));
            n.last_seen = now;
            if !n.online {
                n.online = true;
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
        changes.extend(inner.reclassify(now, timeout_ms));
        changes
    }

    /// Records a status report from `node`.
    pub fn report(
        &self,
        node: u32,
        report: StatusReport,
        now: UnixMillis,
        timeout_ms: i64,
    ) -> Vec<Change> {
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
        inner.reclassify(now, timeout_ms)
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

    /// Re-applies the health rules (time passing makes reports stale).
    pub fn tick(&self, now: UnixMillis, timeout_ms: i64) -> Vec<Change> {
        self.write().reclassify(now, timeout_ms)
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

impl Inner {
    fn reclassify(&mut self, now: UnixMillis, timeout_ms: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        for n in self.nodes.values_mut() {
            let h = classify(n, now, timeout_ms);
            if h != n.health {
                changes.push(Change::Health {
                    node: n.node_id,
                    from: n.health,
                    to: h,
                });
                n.health = h;
                self.dirty.insert(n.node_id);
            }
        }
        changes
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

/// The health rules (see the module docs).
pub fn classify(n: &NodeStatus, now: UnixMillis, timeout_ms: i64) -> Health {
    // Presence decides: the mesh's own node sync notices a dead link (and the node list
    // changes) well before a report period would.
    if !n.online {
        return Health::Offline;
    }
    let Some(report) = &n.status else {
        return Health::Healthy;
    };
    if report.free_memory_kb < CRITICAL_MEMORY_KB {
        return Health::Critical;
    }
    let stale = n.last_report.is_some_and(|t| now - t > timeout_ms);
    if report.alert_flags != 0 || stale {
        return Health::Warning;
    }
    Health::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 90_000;

    fn report(mem: u16, alerts: u8) -> StatusReport {
        StatusReport {
            free_memory_kb: mem,
            alert_flags: alerts,
            firmware: "1.0".into(),
            ..StatusReport::default()
        }
    }

    #[test]
    fn presence_up_and_down() {
        let r = Registry::default();
        let c = r.set_present(&[1, 2], 0, T);
        assert!(c.contains(&Change::Up(1)) && c.contains(&Change::Up(2)));
        assert_eq!(r.get(1).map(|n| n.health), Some(Health::Healthy));
        let c = r.set_present(&[2], 10, T);
        assert!(c.contains(&Change::Down(1)));
        assert_eq!(r.get(1).map(|n| n.health), Some(Health::Offline));
        assert_eq!(r.get(2).map(|n| n.health), Some(Health::Healthy));
    }

    #[test]
    fn health_from_reports() {
        let r = Registry::default();
        r.set_present(&[1], 0, T);
        r.report(1, report(5, 0), 1, T);
        assert_eq!(r.get(1).map(|n| n.health), Some(Health::Critical));
        r.report(1, report(100, 1), 2, T);
        assert_eq!(r.get(1).map(|n| n.health), Some(Health::Warning));
        r.report(1, report(100, 0), 3, T);
        assert_eq!(r.get(1).map(|n| n.health), Some(Health::Healthy));
        assert_eq!(r.get(1).and_then(|n| n.free_memory), Some(100 * 1024));
        // Stale report: warning (the node is still in the mesh); out of the mesh: offline.
        let c = r.tick(3 + T + 1, T);
        assert_eq!(
            c,
            vec![Change::Health {
                node: 1,
                from: Health::Healthy,
                to: Health::Warning
            }]
        );
        r.set_present(&[], 3 + 2 * T, T);
        assert_eq!(r.get(1).map(|n| n.health), Some(Health::Offline));
    }

    #[test]
    fn restored_nodes_start_offline_and_dirty_is_drained() {
        let r = Registry::default();
        r.set_present(&[7], 0, T);
        assert_eq!(r.take_dirty().len(), 1);
        assert!(r.take_dirty().is_empty());
        let back = Registry::restore(r.all());
        let n = back.get(7).expect("restored");
        assert!(!n.online);
        assert_eq!(n.health, Health::Offline);
    }
}
