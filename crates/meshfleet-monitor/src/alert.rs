//! Alerts: what is wrong, how badly, and its lifecycle.
//!
//! One active alert per [`AlertKey`] (subject + kind): a condition that keeps firing updates
//! the alert (deduplication), it does not raise another. A condition must hold for
//! `datapoints_to_alarm` consecutive evaluations to raise and be absent for
//! `datapoints_to_clear` to clear (AWS Device Defender's consecutive-datapoint hysteresis);
//! the detectors add value hysteresis on top (separate raise and clear thresholds). An
//! acknowledged alert stays active until it clears; if the condition returns later, that is
//! a new alert with a new id.
//!
//! An operator can also clear an active alert by hand ([`ClearReason::Operator`]). Its key is
//! then *disarmed*: the condition still holding does not raise it again on the next
//! evaluation. It re-arms when the condition has been absent for `datapoints_to_clear`
//! evaluations (the same rule that clears an alert by itself; for event detectors, when the
//! detector itself would clear it), or when `rearm_after_clear_s` has passed, whichever comes
//! first. After that a condition that is (still or again) present raises a new alert.

use alloc::collections::{BTreeMap, VecDeque};
use core::fmt;

use meshfleet_mesh::Instant;
use meshfleet_wire::NodeId;

/// How bad an alert is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Degraded: look at it.
    Warning,
    /// Broken or about to break.
    Critical,
}

/// What an alert is about.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlertKind {
    /// Free heap below the threshold (default 10 KB).
    LowMemory,
    /// Latency above the threshold (default 500 ms).
    HighLatency,
    /// Packet loss above the threshold (default 10 %).
    PacketLoss,
    /// The mesh has no root any more, or a node reports it lost its route to the root.
    LostRoot,
    /// An OTA update failed on the node.
    OtaFailed,
    /// The node reports a sensor error.
    SensorError,
    /// WiFi signal below the threshold (default -80 dBm).
    WeakSignal,
    /// Several reboots in a short window.
    RebootLoop,
    /// Free heap falling steadily (a leak), before it is low.
    MemoryLeak,
    /// The node sends far more than it should (status reports or messages).
    MessageFlood,
    /// Link quality well below the node's own baseline.
    LinkDegraded,
    /// The node is in the mesh but its reports stopped (or it stopped answering probes).
    NodeSilent,
    /// The node left the mesh and did not come back.
    NodeOffline,
    /// The topology changes too often.
    TopologyChurn,
    /// A whole subtree was cut off (one alert for it, keyed by its top node).
    Partition,
}

impl AlertKind {
    /// Every kind.
    pub const ALL: [Self; 15] = [
        Self::LowMemory,
        Self::HighLatency,
        Self::PacketLoss,
        Self::LostRoot,
        Self::OtaFailed,
        Self::SensorError,
        Self::WeakSignal,
        Self::RebootLoop,
        Self::MemoryLeak,
        Self::MessageFlood,
        Self::LinkDegraded,
        Self::NodeSilent,
        Self::NodeOffline,
        Self::TopologyChurn,
        Self::Partition,
    ];

    /// A stable snake_case name (metrics labels, MQTT topics).
    pub fn name(self) -> &'static str {
        match self {
            Self::LowMemory => "low_memory",
            Self::HighLatency => "high_latency",
            Self::PacketLoss => "packet_loss",
            Self::LostRoot => "lost_root",
            Self::OtaFailed => "ota_failed",
            Self::SensorError => "sensor_error",
            Self::WeakSignal => "weak_signal",
            Self::RebootLoop => "reboot_loop",
            Self::MemoryLeak => "memory_leak",
            Self::MessageFlood => "message_flood",
            Self::LinkDegraded => "link_degraded",
            Self::NodeSilent => "node_silent",
            Self::NodeOffline => "node_offline",
            Self::TopologyChurn => "topology_churn",
            Self::Partition => "partition",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whom an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// One node (for a partition: the top node of the cut-off subtree).
    Node(NodeId),
    /// The mesh as a whole.
    Mesh,
}

/// The identity of an alert: at most one is active per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlertKey {
    /// Whom.
    pub subject: Subject,
    /// What.
    pub kind: AlertKind,
}

/// An active alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// Unique id (increasing); acknowledge by it.
    pub id: u64,
    /// Subject and kind.
    pub key: AlertKey,
    /// Current severity.
    pub severity: Severity,
    /// When it was raised.
    pub raised_at: Instant,
    /// The last time its condition was seen.
    pub last_at: Instant,
    /// The value that raised it, updated while it stays active (bytes, ms, %, dBm, count of
    /// nodes for a partition; see [`AlertKind`]).
    pub value: i64,
    /// How many evaluations found the condition since it was raised.
    pub occurrences: u32,
    /// Whether an operator acknowledged it.
    pub acknowledged: bool,
}

/// Why an alert cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClearReason {
    /// Its condition was absent long enough (the detector's own clear).
    Resolved,
    /// Its node was forgotten (evicted from the registry or removed by the caller).
    Forgotten,
    /// An operator cleared it by hand; the key stays disarmed until it re-arms (module docs).
    Operator,
}

/// A change in the alert set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlertEvent {
    /// A new alert.
    Raised(Alert),
    /// An active alert's severity changed.
    SeverityChanged {
        /// The alert.
        id: u64,
        /// Its key.
        key: AlertKey,
        /// The new severity.
        severity: Severity,
    },
    /// An alert cleared (its condition was absent long enough, its node was forgotten, or an
    /// operator cleared it).
    Cleared {
        /// The alert.
        id: u64,
        /// Its key.
        key: AlertKey,
        /// When.
        at: Instant,
        /// Why.
        reason: ClearReason,
    },
    /// An operator acknowledged it.
    Acknowledged {
        /// The alert.
        id: u64,
        /// Its key.
        key: AlertKey,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    fired: u16,
    quiet: u16,
}

/// A key an operator cleared by hand: no alert for it until it re-arms.
#[derive(Clone, Copy, Debug)]
struct Disarmed {
    /// It re-arms at this time even if the condition never went away.
    until: Instant,
    /// Consecutive evaluations without the condition.
    quiet: u16,
}

/// The set of active alerts with their lifecycle. Bounded: keys exist only for known nodes
/// (the registry's cap) and the mesh.
#[derive(Debug, Default)]
pub(crate) struct AlertEngine {
    active: BTreeMap<AlertKey, Alert>,
    pending: BTreeMap<AlertKey, Pending>,
    disarmed: BTreeMap<AlertKey, Disarmed>,
    next_id: u64,
    pub(crate) events: VecDeque<AlertEvent>,
    pub(crate) raised_total: u64,
}

impl AlertEngine {
    /// One evaluation of a condition. `firing` must already include value hysteresis.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        key: AlertKey,
        firing: bool,
        severity: Severity,
        value: i64,
        to_alarm: u16,
        to_clear: u16,
    ) {
        if let Some(d) = self.disarmed.get_mut(&key) {
            if now < d.until {
                if firing {
                    d.quiet = 0;
                    return;
                }
                d.quiet = d.quiet.saturating_add(1);
                if d.quiet >= to_clear.max(1) {
                    // The condition went away: the next occurrence is a new alert.
                    self.disarmed.remove(&key);
                }
                return;
            }
            // The re-arm time passed: evaluate as usual (a persisting condition raises).
            self.disarmed.remove(&key);
        }
        if let Some(a) = self.active.get_mut(&key) {
            let p = self.pending.entry(key).or_default();
            if firing {
                p.quiet = 0;
                a.last_at = now;
                a.value = value;
                a.occurrences = a.occurrences.saturating_add(1);
                if a.severity != severity {
                    a.severity = severity;
                    self.events.push_back(AlertEvent::SeverityChanged {
                        id: a.id,
                        key,
                        severity,
                    });
                }
                self.pending.remove(&key);
            } else {
                p.quiet += 1;
                if p.quiet >= to_clear.max(1) {
                    self.clear_as(now, key, ClearReason::Resolved);
                }
            }
            return;
        }
        if !firing {
            self.pending.remove(&key);
            return;
        }
        let p = self.pending.entry(key).or_default();
        p.fired += 1;
        if p.fired >= to_alarm.max(1) {
            self.pending.remove(&key);
            self.raise(now, key, severity, value);
        }
    }

    /// Raises (or refreshes) an alert at once: for event detectors (a partition, a reboot
    /// loop) whose condition is already a conclusion.
    pub(crate) fn raise(&mut self, now: Instant, key: AlertKey, severity: Severity, value: i64) {
        if let Some(d) = self.disarmed.get(&key) {
            if now < d.until {
                return;
            }
            self.disarmed.remove(&key);
        }
        if self.active.contains_key(&key) {
            self.observe(now, key, true, severity, value, 1, 1);
            return;
        }
        self.next_id += 1;
        self.raised_total += 1;
        let a = Alert {
            id: self.next_id,
            key,
            severity,
            raised_at: now,
            last_at: now,
            value,
            occurrences: 1,
            acknowledged: false,
        };
        self.events.push_back(AlertEvent::Raised(a.clone()));
        self.active.insert(key, a);
    }

    /// The detector found its condition gone: clears the alert if active, and re-arms the
    /// key if an operator had cleared it.
    pub(crate) fn clear(&mut self, now: Instant, key: AlertKey) {
        self.disarmed.remove(&key);
        self.clear_as(now, key, ClearReason::Resolved);
    }

    fn clear_as(&mut self, now: Instant, key: AlertKey, reason: ClearReason) {
        self.pending.remove(&key);
        if let Some(a) = self.active.remove(&key) {
            self.events.push_back(AlertEvent::Cleared {
                id: a.id,
                key,
                at: now,
                reason,
            });
        }
    }

    /// An operator clears the active alert `id`: it clears now and its key stays disarmed
    /// until the condition goes away or `rearm_after` passes. `None` if no active alert has
    /// this id.
    pub(crate) fn clear_by_operator(
        &mut self,
        now: Instant,
        id: u64,
        rearm_after: meshfleet_mesh::Duration,
    ) -> Option<AlertKey> {
        let key = self.active.values().find(|a| a.id == id)?.key;
        self.clear_as(now, key, ClearReason::Operator);
        self.disarmed.insert(
            key,
            Disarmed {
                until: now + rearm_after,
                quiet: 0,
            },
        );
        Some(key)
    }

    /// Forgets everything about a subject (its node was evicted).
    pub(crate) fn forget(&mut self, now: Instant, subject: Subject) {
        for kind in AlertKind::ALL {
            let key = AlertKey { subject, kind };
            self.disarmed.remove(&key);
            self.clear_as(now, key, ClearReason::Forgotten);
        }
    }

    pub(crate) fn is_active(&self, key: &AlertKey) -> bool {
        self.active.contains_key(key)
    }

    /// Active, or cleared by an operator and not re-armed: detectors judge such a key by its
    /// clear threshold (value hysteresis), so a value hovering at the raise threshold does
    /// not re-arm it.
    pub(crate) fn is_held(&self, key: &AlertKey) -> bool {
        self.active.contains_key(key) || self.disarmed.contains_key(key)
    }

    pub(crate) fn get(&self, key: &AlertKey) -> Option<&Alert> {
        self.active.get(key)
    }

    /// The worst severity among a node's active alerts.
    pub(crate) fn worst_for(&self, node: NodeId) -> Option<Severity> {
        let lo = AlertKey {
            subject: Subject::Node(node),
            kind: AlertKind::ALL[0],
        };
        let hi = AlertKey {
            subject: Subject::Node(node),
            kind: AlertKind::ALL[AlertKind::ALL.len() - 1],
        };
        self.active.range(lo..=hi).map(|(_, a)| a.severity).max()
    }

    pub(crate) fn acknowledge(&mut self, id: u64) -> bool {
        let Some(a) = self.active.values_mut().find(|a| a.id == id) else {
            return false;
        };
        if !a.acknowledged {
            a.acknowledged = true;
            self.events
                .push_back(AlertEvent::Acknowledged { id, key: a.key });
        }
        true
    }

    pub(crate) fn active(&self) -> impl Iterator<Item = &Alert> {
        self.active.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.active.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Instant {
        Instant::from_micros(s * 1_000_000)
    }

    #[test]
    fn consecutive_datapoints_dedup_clear_ack() {
        let mut e = AlertEngine::default();
        let key = AlertKey {
            subject: Subject::Node(NodeId(5)),
            kind: AlertKind::LowMemory,
        };
        e.observe(t(0), key, true, Severity::Critical, 9000, 2, 2);
        assert!(!e.is_active(&key));
        e.observe(t(1), key, false, Severity::Critical, 20000, 2, 2);
        e.observe(t(2), key, true, Severity::Critical, 9000, 2, 2);
        assert!(!e.is_active(&key), "not consecutive");
        e.observe(t(3), key, true, Severity::Critical, 8000, 2, 2);
        assert!(e.is_active(&key));
        e.observe(t(4), key, true, Severity::Critical, 7000, 2, 2);
        assert_eq!(e.events.len(), 1, "deduplicated");
        assert_eq!(
            e.get(&key).map(|a| (a.value, a.occurrences)),
            Some((7000, 2))
        );
        let id = e.get(&key).map(|a| a.id).unwrap_or_default();
        assert!(e.acknowledge(id));
        e.observe(t(5), key, false, Severity::Critical, 20000, 2, 2);
        assert!(e.is_active(&key));
        e.observe(t(6), key, false, Severity::Critical, 20000, 2, 2);
        assert!(!e.is_active(&key));
        assert_eq!(e.worst_for(NodeId(5)), None);
        let kinds: alloc::vec::Vec<_> = e
            .events
            .iter()
            .map(|ev| match ev {
                AlertEvent::Raised(_) => 'r',
                AlertEvent::Acknowledged { .. } => 'a',
                AlertEvent::Cleared { .. } => 'c',
                AlertEvent::SeverityChanged { .. } => 's',
            })
            .collect();
        assert_eq!(kinds, ['r', 'a', 'c']);
    }

    /// The re-arm rule: an alert cleared by hand stays cleared while its condition persists,
    /// comes back as a new alert once the condition has gone away (`to_clear` quiet
    /// evaluations) and returned, and comes back after the re-arm time if it never went away.
    #[test]
    fn operator_clear_holds_until_the_condition_goes_away_or_the_rearm_time() {
        let day = meshfleet_mesh::Duration::from_secs(86_400);
        let mut e = AlertEngine::default();
        let key = AlertKey {
            subject: Subject::Node(NodeId(7)),
            kind: AlertKind::LowMemory,
        };
        e.observe(t(0), key, true, Severity::Critical, 9000, 1, 2);
        let first = e.get(&key).map(|a| a.id).unwrap_or_default();
        assert_eq!(e.clear_by_operator(t(1), first, day), Some(key));
        assert_eq!(
            e.clear_by_operator(t(1), first, day),
            None,
            "no longer active"
        );
        assert!(!e.is_active(&key));
        assert!(matches!(
            e.events.back(),
            Some(AlertEvent::Cleared {
                reason: ClearReason::Operator,
                ..
            })
        ));
        // The condition persists: no new alert on the next evaluations.
        for s in 2..10 {
            e.observe(t(s), key, true, Severity::Critical, 9000, 1, 2);
            assert!(!e.is_active(&key), "re-raised at {s} s");
        }
        // One quiet evaluation is not "gone away" (to_clear = 2), and a return resets it.
        e.observe(t(10), key, false, Severity::Critical, 20000, 1, 2);
        e.observe(t(11), key, true, Severity::Critical, 9000, 1, 2);
        assert!(!e.is_active(&key));
        // Gone away for two evaluations: re-armed; the next occurrence is a new alert.
        e.observe(t(12), key, false, Severity::Critical, 20000, 1, 2);
        e.observe(t(13), key, false, Severity::Critical, 20000, 1, 2);
        assert!(!e.is_held(&key));
        e.observe(t(14), key, true, Severity::Critical, 9000, 1, 2);
        let second = e.get(&key).map(|a| a.id).unwrap_or_default();
        assert!(second > first, "a new alert with a new id");
        // Cleared by hand again, the condition never goes away: back after the re-arm time,
        // and not before. Event detectors (`raise`) follow the same rule.
        assert!(e.clear_by_operator(t(15), second, day).is_some());
        e.raise(t(15 + 86_399), key, Severity::Critical, 9000);
        assert!(!e.is_active(&key));
        e.observe(t(15 + 86_400), key, true, Severity::Critical, 9000, 1, 2);
        assert!(e.is_active(&key), "re-armed by time");
        // A detector's own clear re-arms an event-style key at once.
        let third = e.get(&key).map(|a| a.id).unwrap_or_default();
        assert!(e.clear_by_operator(t(100_000), third, day).is_some());
        e.clear(t(100_001), key);
        e.raise(t(100_002), key, Severity::Critical, 1);
        assert!(e.is_active(&key));
        let reasons: alloc::vec::Vec<_> = e
            .events
            .iter()
            .filter_map(|ev| match ev {
                AlertEvent::Cleared { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect();
        assert_eq!(reasons, [ClearReason::Operator; 3]);
    }
}
