//! What an offer did to every node of the mesh: one outcome per node, and the exit status
//! it makes.
//!
//! [`OfferTracker`] follows a source node ([`crate::Source`]): feed it the OTA engine's
//! typed events ([`OfferTracker::on_event`]) and, periodically, a [`Snapshot`] of the
//! sending plugins and the node list ([`OfferTracker::on_snapshot`]); it calls back a
//! [`ProgressSink`] when a node's progress changes, and builds the final [`OfferReport`].
//! Time is the caller's (`now`), so the simulator and the CLI track alike.
//!
//! Direct neighbours get their outcome from the engine. Nodes further away are listed from
//! the mesh's node list: without a per-node outcome from the engine (the relays do not
//! report their subtree node by node yet) they are [`Outcome::Unknown`], or
//! [`Outcome::Unreachable`] once they left the mesh.

use std::collections::{BTreeMap, BTreeSet};

use meshfleet_mesh::{Duration, Instant, LinkId, Node, NodeId};
use meshfleet_ota::{
    MeshfleetOta, MeshfleetStats, NodeOutcome, NodeProgress, OtaEvent, PeerProgress, Refusal,
    StockSender, StockSenderStats,
};
use serde::Serialize;

use crate::receiver::Via;
use crate::source::Offering;

/// One node's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// It got the image (a stock node: it fetched the last part and checks the MD5 itself).
    Updated,
    /// It already ran the image.
    AlreadyCurrent,
    /// The transfer had not ended when the offer stopped.
    InProgress,
    /// It refused the offer.
    Refused {
        /// Its reason, for a human.
        reason: String,
    },
    /// It cannot take this artefact.
    Incompatible {
        /// What does not fit.
        kind: Incompatibility,
        /// Why, with the values.
        reason: String,
    },
    /// The transfer failed.
    Failed {
        /// Why.
        reason: String,
    },
    /// It installed the image and went back to the old one.
    RolledBack,
    /// It was in the mesh and left it without an outcome.
    Unreachable,
    /// It is in the mesh, but no outcome reached us (a node behind a relay).
    Unknown,
}

/// The report's outcome for a node's own report of it (`None`: an outcome this build
/// does not know).
fn outcome_of(o: NodeOutcome, version: &str) -> Option<Outcome> {
    let refusal = |r: Refusal| format!("{} (running {version})", r.label().replace('_', " "));
    Some(match o {
        NodeOutcome::Updated => Outcome::Updated,
        NodeOutcome::AlreadyCurrent => Outcome::AlreadyCurrent,
        NodeOutcome::Refused(r) => Outcome::Refused { reason: refusal(r) },
        NodeOutcome::Incompatible(r) => Outcome::Incompatible {
            kind: match r {
                Refusal::Role => Incompatibility::Role,
                Refusal::Hardware => Incompatibility::Hardware,
                _ => Incompatibility::Decoder,
            },
            reason: refusal(r),
        },
        NodeOutcome::Failed => Outcome::Failed {
            reason: format!(
                "the image failed verification or the store failed (running {version})"
            ),
        },
        NodeOutcome::RolledBack => Outcome::RolledBack,
        _ => return None,
    })
}

impl Outcome {
    /// Stable label: `updated`, `already_current`, `in_progress`, `refused`,
    /// `incompatible`, `failed`, `rolled_back`, `unreachable`, `unknown`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Updated => "updated",
            Self::AlreadyCurrent => "already_current",
            Self::InProgress => "in_progress",
            Self::Refused { .. } => "refused",
            Self::Incompatible { .. } => "incompatible",
            Self::Failed { .. } => "failed",
            Self::RolledBack => "rolled_back",
            Self::Unreachable => "unreachable",
            Self::Unknown => "unknown",
        }
    }

    /// The reason, for the outcomes that have one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Refused { reason }
            | Self::Incompatible { reason, .. }
            | Self::Failed { reason } => Some(reason),
            _ => None,
        }
    }

    /// Updated or already current: what a successful offer leaves.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Updated | Self::AlreadyCurrent)
    }

    /// The node said no, or the update went wrong.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Self::Refused { .. }
                | Self::Incompatible { .. }
                | Self::Failed { .. }
                | Self::RolledBack
        )
    }

    /// Which of two outcomes of one node (one per protocol) stands: success over work in
    /// progress over failure over ignorance.
    fn rank(&self) -> u8 {
        match self {
            Self::Updated => 0,
            Self::AlreadyCurrent => 1,
            Self::InProgress => 2,
            Self::RolledBack | Self::Failed { .. } | Self::Refused { .. } => 3,
            Self::Incompatible { .. } => 4,
            Self::Unreachable => 5,
            Self::Unknown => 6,
        }
    }
}

/// What makes a node unable to take an artefact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incompatibility {
    /// Another role: the artefact is not for it (not a target unless every node is).
    Role,
    /// Other hardware: likewise.
    Hardware,
    /// Its decoder (window, codec, staging memory) cannot take the payload: a target that
    /// fails.
    Decoder,
}

impl Incompatibility {
    /// Whether a node with this incompatibility is a target of the offer by default: one
    /// of the artefact's role and hardware is, whatever else keeps it from updating.
    pub fn is_target(self) -> bool {
        self == Self::Decoder
    }
}

/// Why the offer stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// Nothing happened for the idle time.
    Idle,
    /// SIGINT or SIGTERM.
    Signal,
}

impl StopCause {
    /// `idle` or `signal`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Signal => "signal",
        }
    }
}

/// The exit status of an offer; the process exit code is [`ExitStatus::code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: every targeted node ended updated or already current.
    Success,
    /// 3: stopped by a signal before that.
    Interrupted,
    /// 4: never connected to any node.
    NeverConnected,
    /// 5: some targeted node refused, could not take the artefact, failed or rolled back.
    Refused,
    /// 6: some targeted node did not end updated (unfinished, unknown, unreachable), or
    /// fewer nodes than `--expect` ended updated; nothing updated falls here too.
    Incomplete,
}

impl ExitStatus {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Interrupted => 3,
            Self::NeverConnected => 4,
            Self::Refused => 5,
            Self::Incomplete => 6,
        }
    }

    /// Stable label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Interrupted => "interrupted",
            Self::NeverConnected => "never_connected",
            Self::Refused => "refused",
            Self::Incomplete => "incomplete",
        }
    }
}

/// Which nodes must end updated for the offer to succeed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    /// Every node in the mesh counts, not only those with an outcome (`--require-all`).
    pub require_all: bool,
    /// At least this many nodes must end updated or already current (`--expect N`).
    pub expect: Option<u32>,
}

/// One protocol's view of one node being served.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Units (chunks and hash pages) or parts in all.
    pub total: u32,
    /// Held or sent so far, at most `total`.
    pub position: u32,
    /// Payload bytes sent to it.
    pub bytes: u64,
    /// The outcome so far.
    pub outcome: Outcome,
    /// meshfleet: it and every node behind it reported done.
    pub subtree_done: bool,
    started: Instant,
    finished: Option<Instant>,
    /// Exact duration when the sender measured it (stock `node_completed`).
    took: Option<Duration>,
    /// meshfleet: (chunks, bytes) sent per link; a reconnected neighbour has a new link.
    links: BTreeMap<LinkId, (u32, u64)>,
}

impl Attempt {
    fn new(total: u32, now: Instant) -> Self {
        Self {
            total,
            position: 0,
            bytes: 0,
            outcome: Outcome::InProgress,
            subtree_done: false,
            started: now,
            finished: None,
            took: None,
            links: BTreeMap::new(),
        }
    }

    /// Seconds from its first request to its outcome (or to `now`), to the millisecond.
    pub fn seconds(&self, now: Instant) -> f64 {
        let d = self
            .took
            .unwrap_or_else(|| self.finished.unwrap_or(now).saturating_since(self.started));
        (d.as_micros() as f64 / 1000.0).round() / 1000.0
    }

    /// Moves to `outcome`; a node once updated stays updated.
    fn set(&mut self, outcome: Outcome, now: Instant) {
        if self.outcome.is_success() || self.outcome == outcome {
            return;
        }
        if outcome.is_success() {
            self.position = self.total;
        }
        if outcome != Outcome::InProgress {
            self.finished.get_or_insert(now);
        }
        self.outcome = outcome;
    }
}

/// Something worth a line of its own while the offer runs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Note {
    /// A meshfleet neighbour cannot decode the artefact.
    CannotDecode {
        /// The node.
        node: NodeId,
        /// What it lacks, with the values.
        reason: meshfleet_ota::DecodeGap,
        /// The stock flow runs: it serves the node if it accepts stock updates.
        stock_flow: bool,
    },
    /// The mesh as the source sees it changed size: nodes beyond the neighbours get the
    /// image from their relays, and are listed in the report.
    Mesh {
        /// Nodes in the mesh (us excluded).
        nodes: usize,
        /// Our direct neighbours.
        neighbours: usize,
    },
    /// Requests from a node were ignored (once per node and reason).
    RequestsIgnored {
        /// The node.
        node: NodeId,
        /// The stock sender's reason label.
        reason: &'static str,
    },
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CannotDecode {
                node,
                reason,
                stock_flow,
            } => write!(
                f,
                "node {node} cannot decode this artefact ({reason}): {}",
                if *stock_flow {
                    "the stock flow serves it if it accepts stock updates"
                } else {
                    "not offered (--strategy auto would serve it the stock flow)"
                }
            ),
            Self::Mesh { nodes, neighbours } => write!(
                f,
                "mesh: {nodes} node(s), {neighbours} of them neighbours (the others get the \
                 image from their relays)"
            ),
            Self::RequestsIgnored { node, reason } => {
                write!(
                    f,
                    "ota-stock-sender: requests from node {node} ignored ({reason})"
                )
            }
        }
    }
}

/// Where progress goes (bars, lines, nothing).
pub trait ProgressSink {
    /// `node`'s attempt over `via` changed.
    fn update(&mut self, node: NodeId, via: Via, attempt: &Attempt, now: Instant);
    /// A one-off note.
    fn note(&mut self, note: &Note);
}

impl ProgressSink for () {
    fn update(&mut self, _: NodeId, _: Via, _: &Attempt, _: Instant) {}
    fn note(&mut self, _: &Note) {}
}

/// The sending plugins' counters and the node list, read where the node runs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The meshfleet source's counters and neighbours.
    pub meshfleet: Option<(MeshfleetStats, Vec<PeerProgress>)>,
    /// The stock sender's counters and requesters.
    pub stock: Option<(StockSenderStats, Vec<(NodeId, NodeProgress)>)>,
    /// Every other node in the mesh.
    pub nodes: Vec<NodeId>,
    /// Our direct neighbours.
    pub neighbours: Vec<NodeId>,
}

impl Snapshot {
    /// Reads `node`.
    pub fn of(node: &Node) -> Self {
        Self {
            meshfleet: node
                .plugin::<MeshfleetOta>()
                .map(|m| (m.stats().clone(), m.peers())),
            stock: node.plugin::<StockSender>().map(|s| {
                let progress = s.progress().iter().map(|(n, p)| (*n, p.clone())).collect();
                (s.stats().clone(), progress)
            }),
            nodes: node.nodes(),
            neighbours: node
                .neighbours()
                .into_iter()
                .map(|(_, peer)| peer)
                .collect(),
        }
    }
}

/// Most distinct ignored-request notes.
const MAX_IGNORED_NOTES: usize = 256;
/// Most nodes listed from the node list (a mesh can claim any number of nodes).
const MAX_LISTED_NODES: usize = 65_536;

/// Follows an offer; see the module docs.
#[derive(Debug)]
pub struct OfferTracker {
    offering: Offering,
    started: Instant,
    last_activity: Instant,
    attempts: BTreeMap<(NodeId, Via), Attempt>,
    /// Every node ever in the node list, and whether it is in it now.
    listed: BTreeMap<NodeId, bool>,
    neighbours: BTreeSet<NodeId>,
    /// Some neighbour ever synced.
    connected: bool,
    /// (nodes, neighbours) last noted.
    mesh_size: (usize, usize),
    /// (meshfleet chunks sent, NAKs received, stock parts sent): a change is activity.
    counters: (u64, u64, u64),
    bytes_sent: u64,
    ignored: BTreeSet<(NodeId, &'static str)>,
}

impl OfferTracker {
    /// Starts tracking at `now`.
    pub fn new(offering: Offering, now: Instant) -> Self {
        Self {
            offering,
            started: now,
            last_activity: now,
            attempts: BTreeMap::new(),
            listed: BTreeMap::new(),
            neighbours: BTreeSet::new(),
            connected: false,
            mesh_size: (0, 0),
            counters: (0, 0, 0),
            bytes_sent: 0,
            ignored: BTreeSet::new(),
        }
    }

    /// The last OTA activity (a part or chunk served, a NAK, a fetch starting).
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// What is offered.
    pub fn offering(&self) -> &Offering {
        &self.offering
    }

    fn attempt(&mut self, node: NodeId, via: Via, now: Instant) -> &mut Attempt {
        let total = match via {
            Via::Meshfleet => self.offering.units,
            Via::Stock => self.offering.parts,
        };
        self.attempts
            .entry((node, via))
            .or_insert_with(|| Attempt::new(total, now))
    }

    /// Raw bytes of stock part `part`.
    fn part_len(&self, part: u32) -> u64 {
        let size = u64::from(self.offering.part_size);
        self.offering
            .image_len
            .saturating_sub(u64::from(part).saturating_mul(size))
            .min(size)
    }

    /// An event of the sending plugins.
    pub fn on_event(&mut self, now: Instant, ev: &OtaEvent, sink: &mut dyn ProgressSink) {
        // Announces and capability exchanges happen whether or not anybody fetches.
        if !matches!(
            ev,
            OtaEvent::AnnounceSent { .. }
                | OtaEvent::CapsReceived { .. }
                | OtaEvent::NeighbourIsStock { .. }
        ) {
            self.last_activity = now;
        }
        match ev {
            OtaEvent::PartServed { node, part, .. } => {
                let len = self.part_len(*part);
                let a = self.attempt(*node, Via::Stock, now);
                a.bytes += len;
                a.position = a.position.max(part.saturating_add(1)).min(a.total);
                let a = a.clone();
                sink.update(*node, Via::Stock, &a, now);
            }
            OtaEvent::NodeCompleted { node, took } => {
                let a = self.attempt(*node, Via::Stock, now);
                a.took = Some(*took);
                a.set(Outcome::Updated, now);
                let a = a.clone();
                sink.update(*node, Via::Stock, &a, now);
            }
            // A neighbour refused our offer. (`OfferRejected` is this node refusing an
            // offer it received: never a receiver's outcome.)
            OtaEvent::PeerRefused {
                peer, kind, reason, ..
            } => {
                let kind = match kind {
                    Some(Refusal::Role) => Some(Incompatibility::Role),
                    Some(Refusal::Hardware) => Some(Incompatibility::Hardware),
                    Some(Refusal::Codec | Refusal::Window | Refusal::Staging) => {
                        Some(Incompatibility::Decoder)
                    }
                    _ => None,
                };
                let outcome = match kind {
                    Some(kind) => Outcome::Incompatible {
                        kind,
                        reason: reason.clone(),
                    },
                    None => Outcome::Refused {
                        reason: reason.clone(),
                    },
                };
                let a = self.attempt(*peer, Via::Meshfleet, now);
                a.set(outcome, now);
                let a = a.clone();
                sink.update(*peer, Via::Meshfleet, &a, now);
            }
            OtaEvent::PeerCannotDecode { peer, reason, .. } => {
                let a = self.attempt(*peer, Via::Meshfleet, now);
                a.set(
                    Outcome::Incompatible {
                        kind: Incompatibility::Decoder,
                        reason: format!("cannot decode this artefact: {reason}"),
                    },
                    now,
                );
                let a = a.clone();
                sink.update(*peer, Via::Meshfleet, &a, now);
                sink.note(&Note::CannotDecode {
                    node: *peer,
                    reason: reason.clone(),
                    stock_flow: self.offering.stock_flow,
                });
            }
            // A node anywhere in the mesh reported its outcome to us, the origin.
            OtaEvent::NodeReport {
                node,
                outcome,
                version,
                ..
            } => {
                let Some(o) = outcome_of(*outcome, version) else {
                    return;
                };
                let a = self.attempt(*node, Via::Meshfleet, now);
                a.set(o, now);
                let a = a.clone();
                sink.update(*node, Via::Meshfleet, &a, now);
            }
            OtaEvent::PeerDone { peer, .. } => {
                let a = self.attempt(*peer, Via::Meshfleet, now);
                a.set(Outcome::Updated, now);
                let a = a.clone();
                sink.update(*peer, Via::Meshfleet, &a, now);
            }
            // Once per node and reason, and for a bounded number of them: requests come
            // from the network, at whatever rate a peer likes.
            OtaEvent::RequestIgnored { node, reason }
                if self.ignored.len() < MAX_IGNORED_NOTES
                    && self.ignored.insert((*node, reason)) =>
            {
                sink.note(&Note::RequestsIgnored {
                    node: *node,
                    reason,
                });
            }
            _ => {}
        }
    }

    /// A periodic look at the sending plugins and the node list.
    pub fn on_snapshot(&mut self, now: Instant, snap: Snapshot, sink: &mut dyn ProgressSink) {
        let mut counters = self.counters;
        let mut bytes = 0;
        self.connected |= !snap.neighbours.is_empty();
        let mesh = (snap.nodes.len(), snap.neighbours.len());
        if mesh != self.mesh_size && mesh.0 > 0 {
            self.mesh_size = mesh;
            sink.note(&Note::Mesh {
                nodes: mesh.0,
                neighbours: mesh.1,
            });
        }
        self.neighbours.extend(snap.neighbours.iter().copied());
        for present in self.listed.values_mut() {
            *present = false;
        }
        for n in snap.nodes {
            if self.listed.len() < MAX_LISTED_NODES || self.listed.contains_key(&n) {
                self.listed.insert(n, true);
            }
        }
        if let Some((stats, peers)) = snap.meshfleet {
            counters.0 = stats.chunks_sent;
            counters.1 = stats.naks_received;
            bytes += stats.chunk_bytes_sent;
            let m = &self.offering.manifest;
            let (role, hardware, sha) = (m.role.clone(), m.hardware.clone(), m.sha256.to_hex());
            for p in peers {
                if p.stock {
                    continue;
                }
                // What the source does not offer, it says nothing about: its CAPS tell.
                let misfit = match (&p.role, &p.hardware) {
                    (Some(r), _) if *r != role => Some((
                        Incompatibility::Role,
                        format!("role {r}, the artefact is for role {role}"),
                    )),
                    (_, Some(h)) if *h != hardware => Some((
                        Incompatibility::Hardware,
                        format!("hardware {h}, the artefact is for {hardware}"),
                    )),
                    _ => None,
                };
                let current = p
                    .running_sha256
                    .as_ref()
                    .is_some_and(|s| s.eq_ignore_ascii_case(&sha));
                if let Some((kind, reason)) = misfit {
                    let a = self.attempt(p.peer, Via::Meshfleet, now);
                    a.set(Outcome::Incompatible { kind, reason }, now);
                    let a = a.clone();
                    sink.update(p.peer, Via::Meshfleet, &a, now);
                    continue;
                }
                if current && !p.accepted && p.chunks_sent == 0 {
                    let a = self.attempt(p.peer, Via::Meshfleet, now);
                    a.set(Outcome::AlreadyCurrent, now);
                    let a = a.clone();
                    sink.update(p.peer, Via::Meshfleet, &a, now);
                    continue;
                }
                let engaged =
                    p.accepted || p.rejected || p.done || p.cannot_decode || p.chunks_sent > 0;
                if !engaged {
                    continue;
                }
                let a = self.attempt(p.peer, Via::Meshfleet, now);
                a.links.insert(p.link, (p.chunks_sent, p.bytes_sent));
                let (chunks, b) = a.links.values().fold((0u32, 0u64), |(c, b), (c2, b2)| {
                    (c.saturating_add(*c2), b + b2)
                });
                a.bytes = b;
                // What it holds: all but what it asked for and was not sent yet. Before
                // its first NAK `wanted` says nothing; count what we sent.
                let holds = if p.accepted && p.wanted > 0 {
                    a.total.saturating_sub(p.wanted)
                } else {
                    chunks.min(a.total)
                };
                a.position = a.position.max(holds.min(a.total));
                a.subtree_done = p.subtree_done;
                if p.done {
                    // Done without ever asking for a chunk: it ran the image already.
                    let outcome = if !p.accepted && p.chunks_sent == 0 && a.bytes == 0 {
                        Outcome::AlreadyCurrent
                    } else {
                        Outcome::Updated
                    };
                    a.set(outcome, now);
                } else if p.rejected && !a.outcome.is_failure() {
                    a.set(
                        Outcome::Refused {
                            reason: "refused the offer".to_owned(),
                        },
                        now,
                    );
                } else if p.cannot_decode && !a.outcome.is_failure() {
                    a.set(
                        Outcome::Incompatible {
                            kind: Incompatibility::Decoder,
                            reason: "cannot decode this artefact".to_owned(),
                        },
                        now,
                    );
                }
                let a = a.clone();
                sink.update(p.peer, Via::Meshfleet, &a, now);
            }
        }
        if let Some((stats, progress)) = snap.stock {
            counters.2 = stats.data_sent;
            bytes += stats.raw_bytes_sent;
            for (n, p) in progress {
                let a = self.attempt(n, Via::Stock, now);
                let pos = p.highest_part.saturating_add(1).min(a.total);
                a.position = a.position.max(pos);
                if p.completed {
                    a.set(Outcome::Updated, now);
                }
                let a = a.clone();
                sink.update(n, Via::Stock, &a, now);
            }
        }
        if counters != self.counters {
            self.counters = counters;
            self.last_activity = now;
        }
        self.bytes_sent = bytes;
    }

    /// The report at `now`, the offer having stopped for `stop`.
    pub fn report(&self, now: Instant, stop: StopCause, targets: Targets) -> OfferReport {
        let mut nodes: BTreeMap<NodeId, NodeReport> = BTreeMap::new();
        for ((id, via), a) in &self.attempts {
            let row = NodeReport {
                node_id: id.0,
                targeted: match &a.outcome {
                    Outcome::Incompatible { kind, .. } => kind.is_target(),
                    _ => true,
                },
                via: Some(via.label()),
                neighbour: self.neighbours.contains(id),
                status: a.outcome.label(),
                reason: a.outcome.reason().map(str::to_owned),
                have: a.position,
                total: a.total,
                bytes: a.bytes,
                seconds: a.seconds(now),
                subtree_done: (*via == Via::Meshfleet).then_some(a.subtree_done),
                outcome: a.outcome.clone(),
            };
            match nodes.get_mut(id) {
                Some(prev) if prev.outcome.rank() <= row.outcome.rank() => {
                    prev.bytes += row.bytes;
                }
                Some(prev) => {
                    let bytes = prev.bytes + row.bytes;
                    *prev = row;
                    prev.bytes = bytes;
                }
                None => {
                    nodes.insert(*id, row);
                }
            }
        }
        for (id, present) in &self.listed {
            nodes.entry(*id).or_insert_with(|| {
                let outcome = if *present {
                    Outcome::Unknown
                } else {
                    Outcome::Unreachable
                };
                NodeReport {
                    node_id: id.0,
                    targeted: false,
                    via: None,
                    neighbour: self.neighbours.contains(id),
                    status: outcome.label(),
                    reason: None,
                    have: 0,
                    total: 0,
                    bytes: 0,
                    seconds: 0.0,
                    subtree_done: None,
                    outcome,
                }
            });
        }
        let nodes: Vec<NodeReport> = nodes.into_values().collect();
        let targeted: Vec<&NodeReport> = nodes
            .iter()
            .filter(|n| targets.require_all || n.targeted)
            .collect();
        let succeeded = targeted.iter().filter(|n| n.outcome.is_success()).count();
        let all_ok = !targeted.is_empty()
            && succeeded == targeted.len()
            && targets.expect.map_or(true, |e| succeeded >= e as usize);
        let exit = if all_ok {
            ExitStatus::Success
        } else if stop == StopCause::Signal {
            ExitStatus::Interrupted
        } else if !self.connected {
            ExitStatus::NeverConnected
        } else if targeted.iter().any(|n| n.outcome.is_failure()) {
            ExitStatus::Refused
        } else {
            ExitStatus::Incomplete
        };
        let duration = now.saturating_since(self.started);
        OfferReport {
            event: "summary",
            nodes,
            bytes_sent: self.bytes_sent,
            duration_s: (duration.as_micros() as f64 / 1000.0).round() / 1000.0,
            stopped: stop.label(),
            exit: exit.label(),
            exit_code: exit.code(),
            exit_status: exit,
        }
    }
}

/// One node in the final report.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// The node.
    pub node_id: u32,
    /// It counts for the exit status without `--require-all`: it answered, and the
    /// artefact is for its role and hardware.
    pub targeted: bool,
    /// The protocol its outcome comes from (`None`: no outcome from the engine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
    /// A direct neighbour of the source.
    pub neighbour: bool,
    /// [`Outcome::label`].
    pub status: &'static str,
    /// Why (refused, incompatible, failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Units or parts held at the end.
    pub have: u32,
    /// Units or parts in all.
    pub total: u32,
    /// Payload bytes sent to it (all protocols).
    pub bytes: u64,
    /// Seconds from its first request to its outcome.
    pub seconds: f64,
    /// meshfleet: it and every node behind it reported done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtree_done: Option<bool>,
    /// The outcome.
    #[serde(skip)]
    pub outcome: Outcome,
}

/// The final report: `{"event":"summary",...}` in JSON.
#[derive(Clone, Debug, Serialize)]
pub struct OfferReport {
    /// Always `summary`.
    pub event: &'static str,
    /// Every node the offer knows of, by id, with one outcome each.
    pub nodes: Vec<NodeReport>,
    /// Image bytes in stock parts plus payload bytes in meshfleet chunks, retries included.
    pub bytes_sent: u64,
    /// Seconds from the start.
    pub duration_s: f64,
    /// [`StopCause::label`].
    pub stopped: &'static str,
    /// [`ExitStatus::label`].
    pub exit: &'static str,
    /// [`ExitStatus::code`].
    pub exit_code: u8,
    /// The exit status.
    #[serde(skip)]
    pub exit_status: ExitStatus,
}

impl OfferReport {
    /// Nodes with outcome `label`.
    pub fn count(&self, label: &str) -> usize {
        self.nodes.iter().filter(|n| n.status == label).count()
    }

    /// The text form: a table, a count line, the reasons.
    pub fn text(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "{:<12} {:<10} {:<16} {:>11} {:>12} {:>9}",
            "NODE", "VIA", "OUTCOME", "HAVE", "BYTES", "SECONDS"
        )];
        for n in &self.nodes {
            let have = if n.total > 0 {
                format!("{}/{}", n.have, n.total)
            } else {
                "-".to_owned()
            };
            lines.push(format!(
                "{:<12} {:<10} {:<16} {:>11} {:>12} {:>9.1}",
                n.node_id,
                n.via.unwrap_or("-"),
                n.status,
                have,
                n.bytes,
                n.seconds
            ));
        }
        let mut counts = Vec::new();
        for label in [
            "updated",
            "already_current",
            "in_progress",
            "refused",
            "incompatible",
            "failed",
            "rolled_back",
            "unreachable",
            "unknown",
        ] {
            let c = self.count(label);
            if c > 0 || matches!(label, "updated") {
                counts.push(format!("{c} {}", label.replace('_', " ")));
            }
        }
        lines.push(format!(
            "{} node(s): {}; {} bytes sent in {:.1} s",
            self.nodes.len(),
            counts.join(", "),
            self.bytes_sent,
            self.duration_s
        ));
        for n in &self.nodes {
            if let Some(r) = &n.reason {
                lines.push(format!("  node {}: {r}", n.node_id));
            }
        }
        if self.count("unknown") > 0 {
            lines.push(
                "  unknown: in the mesh, behind a relay that reports no per-node outcome"
                    .to_owned(),
            );
        }
        lines.push(format!(
            "exit {} ({})",
            self.exit_code,
            self.exit.replace('_', " ")
        ));
        lines
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn offering() -> Offering {
        let image = vec![7u8; 2500];
        let opts = meshfleet_firmware::PackOptions::new(
            "sensor",
            "ESP32",
            meshfleet_firmware::Version::parse("1.0.0").unwrap(),
        );
        let art = meshfleet_firmware::pack(&image, opts).unwrap();
        let m = art.manifest().clone();
        Offering {
            chunks: m.chunk_count,
            units: meshfleet_ota::proto::Layout::of(&m).units(),
            parts: 3,
            part_size: 1024,
            image_len: 2500,
            stock_flow: true,
            meshfleet: true,
            manifest: m,
        }
    }

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn stock_bytes_follow_the_parts_served() {
        let mut t = OfferTracker::new(offering(), at(0));
        for part in 0..3 {
            let ev = OtaEvent::PartServed {
                node: NodeId(7),
                part,
                no_part: 3,
                served: part + 1,
            };
            t.on_event(at(100), &ev, &mut ());
        }
        let done = OtaEvent::NodeCompleted {
            node: NodeId(7),
            took: Duration::from_millis(1500),
        };
        t.on_event(at(200), &done, &mut ());
        let s = t.report(at(300), StopCause::Idle, Targets::default());
        assert_eq!(s.nodes.len(), 1);
        let n = &s.nodes[0];
        assert_eq!((n.node_id, n.via, n.status), (7, Some("stock"), "updated"));
        assert_eq!(n.bytes, 2500);
        assert!((n.seconds - 1.5).abs() < 1e-9);
        // Never connected as far as the snapshots go, but everybody targeted is updated.
        assert_eq!(s.exit_status, ExitStatus::Success);
    }

    #[test]
    fn refusals_fail_the_offer_and_updates_stick() {
        let mut t = OfferTracker::new(offering(), at(0));
        let snap = Snapshot {
            neighbours: vec![NodeId(3), NodeId(4)],
            nodes: vec![NodeId(3), NodeId(4), NodeId(9)],
            ..Snapshot::default()
        };
        t.on_snapshot(at(1), snap, &mut ());
        let rej = |p| OtaEvent::PeerRefused {
            peer: NodeId(p),
            campaign: 1,
            kind: Some(Refusal::Downgrade),
            reason: "downgrade refused".into(),
        };
        t.on_event(at(2), &rej(3), &mut ());
        t.on_event(
            at(3),
            &OtaEvent::PeerDone {
                peer: NodeId(4),
                campaign: 1,
            },
            &mut (),
        );
        t.on_event(at(4), &rej(4), &mut ());
        let r = t.report(at(5), StopCause::Idle, Targets::default());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["event"], "summary");
        assert_eq!(v["nodes"][0]["nodeId"], 3);
        assert_eq!(v["nodes"][0]["status"], "refused");
        assert_eq!(v["nodes"][0]["reason"], "downgrade refused");
        assert_eq!(v["nodes"][1]["status"], "updated");
        // Node 9 is behind a relay: listed, without an outcome, not targeted by default.
        assert_eq!(v["nodes"][2]["status"], "unknown");
        assert_eq!(r.exit_status, ExitStatus::Refused);
        assert_eq!(v["exit_code"], 5);
    }

    #[test]
    fn outcomes_reported_from_beyond_the_neighbours_are_listed() {
        let mut t = OfferTracker::new(offering(), at(0));
        let snap = Snapshot {
            neighbours: vec![NodeId(3)],
            nodes: vec![NodeId(3), NodeId(9), NodeId(10)],
            ..Snapshot::default()
        };
        t.on_snapshot(at(1), snap, &mut ());
        let report = |node, outcome| OtaEvent::NodeReport {
            node: NodeId(node),
            campaign: 1,
            outcome,
            version: "2.0.0".into(),
        };
        t.on_event(
            at(2),
            &OtaEvent::PeerDone {
                peer: NodeId(3),
                campaign: 1,
            },
            &mut (),
        );
        t.on_event(at(3), &report(9, NodeOutcome::Updated), &mut ());
        t.on_event(
            at(3),
            &report(10, NodeOutcome::Refused(Refusal::Downgrade)),
            &mut (),
        );
        let r = t.report(at(5), StopCause::Idle, Targets::default());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["nodes"][1]["nodeId"], 9);
        assert_eq!(v["nodes"][1]["status"], "updated");
        assert_eq!(v["nodes"][2]["nodeId"], 10);
        assert_eq!(v["nodes"][2]["status"], "refused");
        assert_eq!(v["nodes"][2]["reason"], "downgrade (running 2.0.0)");
        assert_eq!(r.exit_status, ExitStatus::Refused);
    }

    #[test]
    fn exit_codes_follow_the_targets() {
        let mut t = OfferTracker::new(offering(), at(0));
        // Nobody ever connected.
        let r = t.report(at(1), StopCause::Idle, Targets::default());
        assert_eq!(r.exit_status, ExitStatus::NeverConnected);
        let r = t.report(at(1), StopCause::Signal, Targets::default());
        assert_eq!(r.exit_status, ExitStatus::Interrupted);
        let snap = Snapshot {
            neighbours: vec![NodeId(4)],
            nodes: vec![NodeId(4), NodeId(9)],
            ..Snapshot::default()
        };
        t.on_snapshot(at(1), snap, &mut ());
        // Connected, nothing fetched: nothing updated.
        let r = t.report(at(2), StopCause::Idle, Targets::default());
        assert_eq!(r.exit_status, ExitStatus::Incomplete);
        t.on_event(
            at(3),
            &OtaEvent::PeerDone {
                peer: NodeId(4),
                campaign: 1,
            },
            &mut (),
        );
        let r = t.report(at(4), StopCause::Idle, Targets::default());
        assert_eq!(r.exit_status, ExitStatus::Success);
        // Node 9 has no outcome: it fails --require-all and --expect 2.
        let all = Targets {
            require_all: true,
            expect: None,
        };
        assert_eq!(
            t.report(at(4), StopCause::Idle, all).exit_status,
            ExitStatus::Incomplete
        );
        let two = Targets {
            require_all: false,
            expect: Some(2),
        };
        assert_eq!(
            t.report(at(4), StopCause::Idle, two).exit_status,
            ExitStatus::Incomplete
        );
        // A signal after everything was done is still a success.
        let r = t.report(at(4), StopCause::Signal, Targets::default());
        assert_eq!(r.exit_status, ExitStatus::Success);
    }

    #[test]
    fn a_node_skipped_by_meshfleet_and_served_stock_is_one_updated_row() {
        let mut t = OfferTracker::new(offering(), at(0));
        let ev = OtaEvent::PeerCannotDecode {
            peer: NodeId(5),
            campaign: 1,
            reason: meshfleet_ota::DecodeGap::Window {
                needed: 32768,
                offered: 8192,
            },
        };
        t.on_event(at(1), &ev, &mut ());
        for part in 0..3 {
            let ev = OtaEvent::PartServed {
                node: NodeId(5),
                part,
                no_part: 3,
                served: part + 1,
            };
            t.on_event(at(2), &ev, &mut ());
        }
        t.on_event(
            at(3),
            &OtaEvent::NodeCompleted {
                node: NodeId(5),
                took: Duration::from_millis(900),
            },
            &mut (),
        );
        let r = t.report(at(4), StopCause::Idle, Targets::default());
        assert_eq!(r.nodes.len(), 1);
        assert_eq!(
            (r.nodes[0].via, r.nodes[0].status),
            (Some("stock"), "updated")
        );
        assert_eq!(r.nodes[0].bytes, 2500);
    }
}
