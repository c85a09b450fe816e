//! The controller: [`Rollout`].

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::config::{AfterWave, ConfigError, RolloutConfig, StartMode, Target};
use crate::event::{
    AbortReason, Command, CommandError, EventKind, FailureReason, NodeReport, NodeState, Order,
    PauseReason, PhaseKind, RejectReason, RollbackVia, RolloutEvent, Wake, WaveCounts, WaveNo,
};
use crate::fleet::{ImageVersion, NodeId, NodeInfo, NodeKind};
use crate::health::{HealthFailure, HealthSample, HealthTrack};
use crate::plan;
use crate::rng::Rng;
use crate::summary::{RolloutSummary, WaveSummary};
use crate::time::{Duration, Instant};

/// Most nodes one rollout tracks (planned plus joined later).
pub const MAX_NODES: usize = 65_536;

/// The rollout's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Offering and judging the current wave.
    Running,
    /// Waiting for an operator's `Approve` to start wave `next`.
    AwaitingApproval {
        /// The wave that starts on approval.
        next: WaveNo,
    },
    /// No new offers; nodes in flight are still judged and the failure gate still aborts.
    Paused {
        /// Why.
        reason: PauseReason,
    },
    /// Every wave passed. Returning deferred nodes are still offered.
    Completed,
    /// Aborted: transfers cancelled, rollback orders tracked until every node is restored.
    Aborted {
        /// Why.
        reason: AbortReason,
    },
}

impl Phase {
    /// The phase without its data.
    pub fn kind(&self) -> PhaseKind {
        match self {
            Self::Running => PhaseKind::Running,
            Self::AwaitingApproval { .. } => PhaseKind::AwaitingApproval,
            Self::Paused { .. } => PhaseKind::Paused,
            Self::Completed => PhaseKind::Completed,
            Self::Aborted { .. } => PhaseKind::Aborted,
        }
    }
}

/// Where a wave is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveState {
    /// Not started.
    Waiting,
    /// Started and not decided.
    Running,
    /// Passed its gate (or an operator overrode it).
    Passed,
    /// Skipped by the operator.
    Skipped,
    /// The rollout was aborted during it.
    Aborted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WaveRecord {
    planned: u32,
    state: WaveState,
    started: Option<Instant>,
}

/// The image a node last said it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Running {
    /// The rollout's target.
    Target,
    /// The previous image.
    Previous,
    /// Something else.
    Other,
}

/// A node's way back to the previous image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackTrack {
    /// First order.
    pub ordered_at: Instant,
    /// Orders sent.
    pub orders: u32,
    /// When the order is repeated (None: when the node rejoins).
    pub next_retry: Option<Instant>,
    /// When the node was seen on the previous image again.
    pub restored_at: Option<Instant>,
    /// `max_rollback_orders` went unanswered.
    pub stuck: bool,
    /// When the latest order went out.
    pub last_sent: Option<Instant>,
}

/// What the controller tracks about one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    kind: NodeKind,
    branch: NodeId,
    subtree_size: u32,
    planned_wave: WaveNo,
    wave: WaveNo,
    online: bool,
    away_since: Option<Instant>,
    state: NodeState,
    offers: u32,
    exposed: bool,
    deferred: bool,
    running: Option<Running>,
    baseline: Option<HealthSample>,
    health: HealthTrack,
    rollback: Option<RollbackTrack>,
}

impl NodeRecord {
    /// Its update state.
    pub fn state(&self) -> NodeState {
        self.state
    }
    /// The wave the plan put it in.
    pub fn planned_wave(&self) -> WaveNo {
        self.planned_wave
    }
    /// The wave it belongs to now (a later one if it joined late).
    pub fn wave(&self) -> WaveNo {
        self.wave
    }
    /// Whether it took the update (installed the new image).
    pub fn exposed(&self) -> bool {
        self.exposed
    }
    /// Offers sent to it.
    pub fn offers(&self) -> u32 {
        self.offers
    }
    /// Whether it is in the mesh, as last reported.
    pub fn online(&self) -> bool {
        self.online
    }
    /// How it is updated and rolled back.
    pub fn kind(&self) -> NodeKind {
        self.kind
    }
    /// The branch it hangs under and its subtree size, as last reported.
    pub fn topology(&self) -> (NodeId, u32) {
        (self.branch, self.subtree_size)
    }
    /// The image it last reported running.
    pub fn running(&self) -> Option<Running> {
        self.running
    }
    /// Its rollback, if it was ordered back.
    pub fn rollback(&self) -> Option<&RollbackTrack> {
        self.rollback.as_ref()
    }
    /// Health reports received in its window.
    pub fn health_reports(&self) -> u32 {
        self.health.samples
    }
}

/// Why a rollout could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// More than [`MAX_NODES`] nodes targeted.
    TooManyNodes {
        /// Nodes targeted.
        count: usize,
    },
}

impl core::fmt::Display for PlanError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "invalid rollout config: {e}"),
            Self::TooManyNodes { count } => {
                write!(
                    f,
                    "{count} nodes targeted, at most {MAX_NODES} are supported"
                )
            }
        }
    }
}

impl From<ConfigError> for PlanError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

/// A progressive rollout: waves, gates, rollback, as a sans-IO state machine.
///
/// # Run loop
///
/// ```text
/// let mut r = Rollout::new(now, config, fleet)?;      // plans, starts the canary
/// loop {
///     // feed what happened, each with the current time:
///     r.handle_report(now, node, report);             // OTA progress, boots
///     r.handle_health(now, node, sample);             // status packages
///     r.handle_node_online(now, node) / handle_node_offline / handle_node_joined;
///     r.handle_command(now, command)?;                // operator
///     r.handle_timeout(now);                          // when poll_timeout() is due
///     // then drain every output:
///     while let Some(order) = r.poll_order() { ota.apply(order) }
///     while let Some(event) = r.poll_event() { log(event) }
///     sleep_until(r.poll_timeout());                  // (Instant, Wake): when and why
/// }
/// ```
///
/// # Guarantees
///
/// - A node counts as a success only in [`NodeState::Healthy`], reached only from a
///   confirmed boot of the target image followed by a full health window with enough
///   reports. "Downloaded" and "installed" are never successes.
/// - Every in-flight state has a deadline; a missed one is a retry (transfer) or a failure
///   (boot, health). No node stays "in progress" forever.
/// - At most `max_in_flight` nodes have an update in flight, counting only offers this
///   controller made (a late report of an attempt it already gave up on shows reality and
///   may exceed it).
/// - Only nodes of started waves are offered, so the nodes exposed never exceed the waves'
///   cumulative planned sizes.
/// - On abort, in-flight transfers are cancelled and every node of the failing wave that
///   took the update is ordered back, and tracked until it reports the previous image.
/// - The whole state, output queues included, is serde: persist it after draining (or not),
///   restore it, call [`Rollout::handle_restarted`], and it continues exactly where it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    config: RolloutConfig,
    phase: Phase,
    current: WaveNo,
    waves: Vec<WaveRecord>,
    nodes: BTreeMap<NodeId, NodeRecord>,
    order: Vec<NodeId>,
    aborted_at: Option<Instant>,
    all_restored_at: Option<Instant>,
    last_now: Instant,
    ignored_reports: u64,
    orders: VecDeque<Order>,
    events: VecDeque<RolloutEvent>,
    /// `poll_timeout`'s answer, kept current by every input that can change it, so the
    /// common input (a health report outside a window) and the poll cost no pass over the
    /// fleet.
    next_wake: Option<(Instant, Wake)>,
}

impl Rollout {
    /// Plans a rollout over `fleet` and, unless the config says to wait for approval, starts
    /// the canary wave.
    pub fn new(
        now: Instant,
        config: RolloutConfig,
        fleet: impl IntoIterator<Item = NodeInfo>,
    ) -> Result<Self, PlanError> {
        config.validate()?;
        let mut all: BTreeMap<NodeId, NodeInfo> = BTreeMap::new();
        for n in fleet {
            all.insert(n.id, n);
        }
        let total = all.len();
        let targeted: Vec<&NodeInfo> = all
            .values()
            .filter(|n| config.selector.matches(n))
            .collect();
        if targeted.len() > MAX_NODES {
            return Err(PlanError::TooManyNodes {
                count: targeted.len(),
            });
        }
        let mut rng = Rng::new(config.seed);
        let order = plan::order(&targeted, &mut rng);
        let n = u32::try_from(order.len()).unwrap_or(u32::MAX);
        let bounds = plan::bounds(&config.waves, n);
        let mut waves = Vec::with_capacity(bounds.len());
        let mut prev = 0u32;
        for &b in &bounds {
            waves.push(WaveRecord {
                planned: b - prev,
                state: WaveState::Waiting,
                started: None,
            });
            prev = b;
        }
        let last = last_wave(&waves);
        let mut nodes = BTreeMap::new();
        for (pos, id) in order.iter().enumerate() {
            let pos = u32::try_from(pos).unwrap_or(u32::MAX);
            // Positions past the last bound (a plan that stops short of 100 %) are never
            // offered: they stay in no started wave.
            let wave = bounds
                .iter()
                .position(|&b| pos < b)
                .map_or(WaveNo::MAX, |w| w as WaveNo);
            let Some(info) = all.get(id) else { continue };
            if wave == WaveNo::MAX {
                continue;
            }
            nodes.insert(*id, NodeRecord::new(info, wave.min(last)));
        }
        let order: Vec<NodeId> = order
            .into_iter()
            .filter(|id| nodes.contains_key(id))
            .collect();
        let mut r = Self {
            config,
            phase: Phase::AwaitingApproval { next: 0 },
            current: 0,
            waves,
            nodes,
            order,
            aborted_at: None,
            all_restored_at: None,
            last_now: now,
            ignored_reports: 0,
            orders: VecDeque::new(),
            events: VecDeque::new(),
            next_wake: None,
        };
        r.log(
            now,
            EventKind::Planned {
                sizes: r.waves.iter().map(|w| w.planned).collect(),
                targeted: n,
                excluded: u32::try_from(total.saturating_sub(targeted.len())).unwrap_or(u32::MAX),
            },
        );
        match r.config.start {
            StartMode::Immediately => r.start_wave(now, 0),
            StartMode::AwaitApproval => r.log(now, EventKind::AwaitingApproval { wave: 0 }),
        }
        r.evaluate(now);
        Ok(r)
    }

    // ----- inputs -----

    /// A report from a node's OTA layer.
    pub fn handle_report(&mut self, now: Instant, node: NodeId, report: NodeReport) {
        let now = self.clock(now);
        let Some(rec) = self.nodes.get(&node) else {
            self.ignored_reports += 1;
            return;
        };
        let state = rec.state;
        match report {
            NodeReport::OfferAccepted => {
                if let NodeState::Offered { .. } = state {
                    self.set_state(
                        node,
                        NodeState::Downloading {
                            deadline: now + self.config.timeouts.download,
                        },
                    );
                } else {
                    self.ignored_reports += 1;
                }
            }
            NodeReport::OfferRejected { reason } => {
                if matches!(
                    state,
                    NodeState::Offered { .. } | NodeState::Downloading { .. }
                ) {
                    match reason {
                        RejectReason::Busy => self.attempt_failed(now, node, FailureReason::Busy),
                        RejectReason::Incompatible => {
                            self.fail(now, node, FailureReason::Incompatible)
                        }
                    }
                } else {
                    self.ignored_reports += 1;
                }
            }
            NodeReport::TransferFailed => {
                if matches!(
                    state,
                    NodeState::Offered { .. } | NodeState::Downloading { .. }
                ) {
                    self.attempt_failed(now, node, FailureReason::TransferFailed);
                } else {
                    self.ignored_reports += 1;
                }
            }
            NodeReport::Installed => self.on_installed(now, node),
            NodeReport::Booted { version, confirmed } => {
                self.on_booted(now, node, &version, confirmed)
            }
        }
        self.evaluate(now);
    }

    /// A health report (status package) from a node.
    pub fn handle_health(&mut self, now: Instant, node: NodeId, sample: HealthSample) {
        let now = self.clock(now);
        let aborted = matches!(self.phase, Phase::Aborted { .. });
        let th = self.config.health;
        let Some(rec) = self.nodes.get_mut(&node) else {
            self.ignored_reports += 1;
            return;
        };
        match rec.state {
            NodeState::Pending | NodeState::Offered { .. } | NodeState::Downloading { .. }
                if !rec.exposed =>
            {
                // The node's own pre-update baseline: its latest report before it took the
                // image.
                rec.baseline = Some(sample);
            }
            NodeState::Booted { at, .. } if !aborted => {
                if let Some(f) = rec.health.observe(now, at, sample, rec.baseline, &th) {
                    self.fail(now, node, FailureReason::Health(f));
                    self.evaluate(now);
                } else {
                    // Its report count may now allow success at the window's end.
                    self.next_wake = self.compute_wake();
                }
            }
            // Nothing else a report changes can move a gate: the common case (every node
            // reporting every 30 s) costs no pass over the fleet.
            _ => {}
        }
    }

    /// A node (re)joined the mesh. Nodes the plan left out (a plan short of 100 %) stay
    /// out.
    pub fn handle_node_online(&mut self, now: Instant, node: NodeId) {
        let now = self.clock(now);
        let Some(rec) = self.nodes.get_mut(&node) else {
            self.ignored_reports += 1;
            return;
        };
        rec.online = true;
        rec.away_since = None;
        // A node on its way back gets its order again when it rejoins, but at most once per
        // `rollback_retry`, however often it flaps.
        let retry = self.config.timeouts.rollback_retry;
        let resend = rec.rollback.is_some_and(|rb| {
            rb.restored_at.is_none() && rb.last_sent.map_or(true, |t| t + retry <= now)
        });
        if resend {
            self.send_rollback(now, node);
        }
        self.evaluate(now);
    }

    /// A node left the mesh.
    pub fn handle_node_offline(&mut self, now: Instant, node: NodeId) {
        let now = self.clock(now);
        let Some(rec) = self.nodes.get_mut(&node) else {
            self.ignored_reports += 1;
            return;
        };
        if rec.online {
            rec.online = false;
            rec.away_since = Some(now);
        }
        self.evaluate(now);
    }

    /// A node appeared (or its description changed). A node the plan did not know joins the
    /// last wave if the selector targets it and the last wave reaches `Percent(100)` (up to
    /// [`MAX_NODES`]); a known node updates its topology and presence.
    pub fn handle_node_joined(&mut self, now: Instant, info: NodeInfo) {
        let now = self.clock(now);
        if let Some(rec) = self.nodes.get_mut(&info.id) {
            rec.branch = info.branch;
            rec.subtree_size = info.subtree_size;
            if info.online {
                self.handle_node_online(now, info.id);
            } else {
                self.handle_node_offline(now, info.id);
            }
            return;
        }
        // A plan that stops short of 100 % takes no newcomers: they are part of the rest
        // the operator chose not to update.
        let open_ended = self
            .config
            .waves
            .last()
            .is_some_and(|w| w.until == Target::Percent(100));
        if !open_ended || !self.config.selector.matches(&info) || self.nodes.len() >= MAX_NODES {
            self.ignored_reports += 1;
            return;
        }
        let last = last_wave(&self.waves);
        self.nodes.insert(info.id, NodeRecord::new(&info, last));
        self.order.push(info.id);
        if let Some(w) = self.waves.get_mut(usize::from(last)) {
            w.planned += 1;
        }
        self.log(
            now,
            EventKind::NodeAdded {
                node: info.id,
                wave: last,
            },
        );
        self.evaluate(now);
    }

    /// An operator command.
    /// A refused command changes nothing, not even the controller's clock.
    pub fn handle_command(&mut self, now: Instant, command: Command) -> Result<(), CommandError> {
        let now = now.max(self.last_now);
        let refuse = |phase: &Phase| CommandError::NotApplicable {
            command,
            phase: phase.kind(),
        };
        match (command, self.phase) {
            (Command::Approve, Phase::AwaitingApproval { next }) => {
                self.log(now, EventKind::Command { command });
                self.start_wave(now, next);
            }
            (
                Command::Approve,
                Phase::Paused {
                    reason: PauseReason::InsufficientSuccess { .. } | PauseReason::NoNodesReached,
                },
            ) => {
                self.log(now, EventKind::Command { command });
                self.phase = Phase::Running;
                self.pass(now, true);
                // The approval covers the next wave too: no second approval needed.
                if let Phase::AwaitingApproval { next } = self.phase {
                    self.start_wave(now, next);
                }
            }
            (Command::Pause, Phase::Running) => {
                self.log(now, EventKind::Command { command });
                self.pause(now, PauseReason::Operator);
            }
            (
                Command::Resume,
                Phase::Paused {
                    reason: PauseReason::Operator,
                },
            ) => {
                self.log(now, EventKind::Command { command });
                self.phase = Phase::Running;
                self.log(now, EventKind::Resumed);
            }
            (
                Command::SkipTo { to },
                Phase::Running | Phase::Paused { .. } | Phase::AwaitingApproval { .. },
            ) => {
                let first = match self.phase {
                    Phase::AwaitingApproval { next } => next,
                    _ => self.current.saturating_add(1),
                };
                let waves = self.waves.len() as WaveNo;
                if to < first || to >= waves {
                    return Err(CommandError::BadWave {
                        to,
                        current: self.current,
                        waves,
                    });
                }
                self.log(now, EventKind::Command { command });
                self.skip_to(now, to);
            }
            (
                Command::Abort,
                Phase::Running | Phase::Paused { .. } | Phase::AwaitingApproval { .. },
            ) => {
                self.log(now, EventKind::Command { command });
                self.abort(now, AbortReason::Operator);
            }
            (Command::EmergencyRollback, _) => {
                self.log(now, EventKind::Command { command });
                self.abort(now, AbortReason::Emergency);
            }
            (_, phase) => return Err(refuse(&phase)),
        }
        self.last_now = now;
        self.evaluate(now);
        Ok(())
    }

    /// Time passed: handles every deadline due at `now` (see [`Rollout::poll_timeout`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock(now);
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let aborted = matches!(self.phase, Phase::Aborted { .. });
        for id in ids {
            let Some(rec) = self.nodes.get(&id) else {
                continue;
            };
            match rec.state {
                NodeState::Offered { deadline } if deadline <= now => {
                    self.attempt_failed(now, id, FailureReason::OfferTimeout)
                }
                NodeState::Downloading { deadline } if deadline <= now => {
                    self.attempt_failed(now, id, FailureReason::DownloadTimeout)
                }
                NodeState::Installed { deadline, .. } if deadline <= now => {
                    self.fail(now, id, FailureReason::NoConfirmedBoot)
                }
                NodeState::Booted { at, window_end } if !aborted => {
                    self.check_window(now, id, at, window_end)
                }
                _ => {}
            }
            self.rollback_timer(now, id);
        }
        self.evaluate(now);
    }

    /// Resume after the rollout was restored from persisted state: every pending deadline
    /// moves by the time the controller did not run, so the gateway's own downtime fails no
    /// node (their reports were lost with it). Call once, before any other input.
    pub fn handle_restarted(&mut self, now: Instant) {
        let gap = now.saturating_since(self.last_now);
        self.last_now = now;
        for rec in self.nodes.values_mut() {
            rec.state = match rec.state {
                NodeState::Offered { deadline } => NodeState::Offered {
                    deadline: deadline + gap,
                },
                NodeState::Downloading { deadline } => NodeState::Downloading {
                    deadline: deadline + gap,
                },
                NodeState::Installed { at, deadline } => NodeState::Installed {
                    at: at + gap,
                    deadline: deadline + gap,
                },
                NodeState::Booted { at, window_end } => NodeState::Booted {
                    at: at + gap,
                    window_end: window_end + gap,
                },
                s => s,
            };
            rec.away_since = rec.away_since.map(|t| t + gap);
            if let Some(rb) = &mut rec.rollback {
                rb.next_retry = rb.next_retry.map(|t| t + gap);
            }
        }
        for w in &mut self.waves {
            w.started = w.started.map(|t| t + gap);
        }
        self.log(now, EventKind::Restarted { gap });
        self.evaluate(now);
    }

    // ----- outputs -----

    /// The next order for the OTA layer.
    #[must_use]
    pub fn poll_order(&mut self) -> Option<Order> {
        self.orders.pop_front()
    }

    /// The next entry of the decision log.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<RolloutEvent> {
        self.events.pop_front()
    }

    /// When the controller next needs [`Rollout::handle_timeout`], and why. O(1).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Wake)> {
        debug_assert_eq!(
            self.next_wake,
            self.compute_wake(),
            "cached wake-up out of date"
        );
        self.next_wake
    }

    fn compute_wake(&self) -> Option<(Instant, Wake)> {
        let th = &self.config.health;
        let aborted = matches!(self.phase, Phase::Aborted { .. });
        let mut best: Option<(Instant, Wake)> = None;
        let mut consider = |at: Instant, why: Wake| {
            if best.map_or(true, |(b, _)| at < b) {
                best = Some((at, why));
            }
        };
        for (&id, rec) in &self.nodes {
            match rec.state {
                NodeState::Offered { deadline } => consider(deadline, Wake::OfferTimeout(id)),
                NodeState::Downloading { deadline } => {
                    consider(deadline, Wake::DownloadTimeout(id))
                }
                NodeState::Installed { deadline, .. } => consider(deadline, Wake::BootTimeout(id)),
                NodeState::Booted { window_end, .. } if !aborted => {
                    if let Some(away) = rec.away_since.filter(|_| !rec.online) {
                        consider(away + th.max_rejoin, Wake::AwayTooLong(id));
                    } else if rec.health.samples >= th.min_samples {
                        consider(window_end, Wake::HealthWindowEnd(id));
                    } else {
                        // Too few reports for success yet: a report that changes that
                        // refreshes this; until then only the failure deadline matters.
                        consider(
                            window_end + self.config.timeouts.health_reports,
                            Wake::HealthReportsDue(id),
                        );
                    }
                }
                _ => {}
            }
            if let Some(t) = rec
                .rollback
                .filter(|rb| rb.restored_at.is_none())
                .and_then(|rb| rb.next_retry)
            {
                consider(t, Wake::RollbackRetry(id));
            }
        }
        if matches!(self.phase, Phase::Running) {
            if let Some(grace_end) = self.grace_end() {
                let waiting = self.nodes.values().any(|r| {
                    r.wave == self.current
                        && r.state == NodeState::Pending
                        && !r.online
                        && !r.deferred
                });
                // Even if already past: a due deadline must still wake the controller
                // (another input at the same instant may have come first).
                if waiting {
                    consider(grace_end, Wake::OfflineGrace(self.current));
                }
            }
        }
        best
    }

    // ----- read-only views -----

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The current wave (the last one started).
    pub fn current_wave(&self) -> WaveNo {
        self.current
    }

    /// The configuration.
    pub fn config(&self) -> &RolloutConfig {
        &self.config
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    /// Every node, by id.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &NodeRecord)> {
        self.nodes.iter().map(|(&id, r)| (id, r))
    }

    /// The rollout order of the plan (late joiners at the end).
    pub fn plan_order(&self) -> &[NodeId] {
        &self.order
    }

    /// Nodes with an update in flight.
    pub fn in_flight(&self) -> u32 {
        self.nodes.values().filter(|r| r.state.in_flight()).count() as u32
    }

    /// Nodes that took the update.
    pub fn exposed(&self) -> u32 {
        self.nodes.values().filter(|r| r.exposed).count() as u32
    }

    /// The most nodes the started waves allow to take the update (their planned sizes).
    pub fn exposure_cap(&self) -> u32 {
        self.waves
            .iter()
            .filter(|w| w.started.is_some())
            .map(|w| w.planned)
            .sum()
    }

    /// Wave `w`'s state and counts.
    pub fn wave(&self, w: WaveNo) -> Option<(WaveState, WaveCounts)> {
        let rec = self.waves.get(usize::from(w))?;
        Some((rec.state, self.counts(w)))
    }

    /// Reports that did not apply (unknown node, or not expected in the node's state).
    pub fn ignored_reports(&self) -> u64 {
        self.ignored_reports
    }

    /// The outcome as the scenario `summary.json` carries it under `rollout`.
    pub fn summary(&self) -> RolloutSummary {
        let rollback_ordered = self.nodes.values().filter(|r| r.rollback.is_some()).count();
        let rolled_back = self
            .nodes
            .values()
            .filter(|r| r.rollback.is_some_and(|rb| rb.restored_at.is_some()))
            .count();
        RolloutSummary {
            state: self.phase.kind(),
            exposed: self.exposed(),
            rollback_ordered: rollback_ordered as u32,
            rolled_back: rolled_back as u32,
            restored_s: match (self.aborted_at, self.all_restored_at) {
                (Some(a), Some(r)) => Some(r.saturating_since(a).as_secs_f64()),
                _ => None,
            },
            waves: (0..self.waves.len() as WaveNo)
                .map(|w| WaveSummary {
                    wave: w,
                    state: self.waves[usize::from(w)].state,
                    counts: self.counts(w),
                })
                .collect(),
        }
    }

    // ----- internals -----

    fn clock(&mut self, now: Instant) -> Instant {
        // Time never runs backwards inside the controller, whatever the driver passes.
        let now = now.max(self.last_now);
        self.last_now = now;
        now
    }

    fn log(&mut self, at: Instant, kind: EventKind) {
        self.events.push_back(RolloutEvent { at, kind });
    }

    fn set_state(&mut self, id: NodeId, state: NodeState) {
        if let Some(rec) = self.nodes.get_mut(&id) {
            rec.state = state;
        }
    }

    fn spec(&self, w: WaveNo) -> crate::config::WaveSpec {
        let i = usize::from(w).min(self.config.waves.len().saturating_sub(1));
        self.config.waves[i]
    }

    fn grace_end(&self) -> Option<Instant> {
        self.waves
            .get(usize::from(self.current))?
            .started
            .map(|s| s + self.config.timeouts.offline_grace)
    }

    fn counts(&self, w: WaveNo) -> WaveCounts {
        let mut c = WaveCounts {
            planned: self.waves.get(usize::from(w)).map_or(0, |r| r.planned),
            ..WaveCounts::default()
        };
        for r in self.nodes.values().filter(|r| r.wave == w) {
            c.members += 1;
            c.offered += u32::from(r.offers > 0);
            c.exposed += u32::from(r.exposed);
            c.deferred += u32::from(r.deferred && r.state == NodeState::Pending);
            match r.state {
                NodeState::Healthy { .. } => c.healthy += 1,
                NodeState::Failed { .. } => c.failed += 1,
                NodeState::Cancelled { .. } => c.cancelled += 1,
                _ => {}
            }
            if let Some(rb) = r.rollback {
                c.rollback_ordered += 1;
                c.rolled_back += u32::from(rb.restored_at.is_some());
            }
        }
        c
    }

    fn classify(&self, v: &ImageVersion) -> Running {
        if *v == self.config.target {
            Running::Target
        } else if *v == self.config.previous {
            Running::Previous
        } else {
            Running::Other
        }
    }

    fn on_installed(&mut self, now: Instant, id: NodeId) {
        let aborted = matches!(self.phase, Phase::Aborted { .. });
        let reboot = self.config.timeouts.reboot;
        let Some(rec) = self.nodes.get_mut(&id) else {
            return;
        };
        if rec.offers == 0 {
            // Never offered by this rollout: not ours to count.
            self.ignored_reports += 1;
            return;
        }
        let newly = !rec.exposed;
        rec.exposed = true;
        // It reboots into the new image: what it ran before says nothing any more (a
        // rollback ordered now must not count it as already restored).
        rec.running = None;
        let cancelled = matches!(rec.state, NodeState::Cancelled { .. });
        if !aborted
            && matches!(
                rec.state,
                NodeState::Pending | NodeState::Offered { .. } | NodeState::Downloading { .. }
            )
        {
            rec.state = NodeState::Installed {
                at: now,
                deadline: now + reboot,
            };
        }
        // Stopped, cancelled, or already failed (a transfer it was given up on completed
        // after all): it must not keep the new build.
        let failed =
            matches!(rec.state, NodeState::Failed { .. }) && self.config.rollback_failed_nodes;
        let needs_rollback = (aborted || cancelled || failed) && rec.rollback.is_none();
        if newly {
            self.log(now, EventKind::Installed { node: id });
        }
        if needs_rollback {
            self.order_rollback(now, id);
        }
    }

    fn on_booted(&mut self, now: Instant, id: NodeId, version: &ImageVersion, confirmed: bool) {
        let running = self.classify(version);
        let aborted = matches!(self.phase, Phase::Aborted { .. });
        let (window, max_rejoin, reboot) = (
            self.config.health.window,
            self.config.health.max_rejoin,
            self.config.timeouts.reboot,
        );
        let Some(rec) = self.nodes.get_mut(&id) else {
            return;
        };
        rec.running = Some(running);
        rec.online = true;
        rec.away_since = None;
        // A node on its way back.
        if let Some(rb) = &mut rec.rollback {
            match (running, rb.restored_at) {
                (Running::Previous, None) => {
                    rb.restored_at = Some(now);
                    rb.next_retry = None;
                    let after = now.saturating_since(rb.ordered_at);
                    self.log(now, EventKind::Restored { node: id, after });
                    self.check_all_restored(now);
                }
                (Running::Target, Some(_)) => {
                    // Back on the new build after all: track it again.
                    rb.restored_at = None;
                    rb.next_retry = Some(now);
                    self.all_restored_at = None;
                }
                _ => {}
            }
            return;
        }
        match running {
            Running::Target => {
                if rec.offers == 0 {
                    self.ignored_reports += 1;
                    return;
                }
                let newly = !rec.exposed;
                rec.exposed = true;
                if newly {
                    self.log(now, EventKind::Installed { node: id });
                }
                let Some(rec) = self.nodes.get_mut(&id) else {
                    return;
                };
                if aborted || matches!(rec.state, NodeState::Cancelled { .. }) {
                    self.order_rollback(now, id);
                    return;
                }
                match rec.state {
                    NodeState::Pending
                    | NodeState::Offered { .. }
                    | NodeState::Downloading { .. }
                    | NodeState::Installed { .. } => {
                        let installed_at = match rec.state {
                            NodeState::Installed { at, .. } => at,
                            _ => now,
                        };
                        if !confirmed {
                            // A trial boot: the confirmation must still come before the
                            // boot deadline.
                            if !matches!(rec.state, NodeState::Installed { .. }) {
                                rec.state = NodeState::Installed {
                                    at: now,
                                    deadline: now + reboot,
                                };
                            }
                            return;
                        }
                        rec.state = NodeState::Booted {
                            at: now,
                            window_end: now + window,
                        };
                        rec.health = HealthTrack::default();
                        let rejoin = now.saturating_since(installed_at);
                        self.log(now, EventKind::BootConfirmed { node: id, rejoin });
                        if rejoin > max_rejoin {
                            self.fail(
                                now,
                                id,
                                FailureReason::Health(HealthFailure::SlowRejoin { took: rejoin }),
                            );
                        }
                    }
                    // A repeated boot report (a driver mapping every status package to one)
                    // changes nothing: reboots are judged from the health reports' uptime
                    // and boot counter, which a repeat cannot fake.
                    _ => {}
                }
            }
            Running::Previous => {
                if rec.exposed
                    && matches!(
                        rec.state,
                        NodeState::Offered { .. }
                            | NodeState::Downloading { .. }
                            | NodeState::Installed { .. }
                            | NodeState::Booted { .. }
                    )
                {
                    self.fail(now, id, FailureReason::FellBack);
                }
            }
            Running::Other => {
                if matches!(
                    rec.state,
                    NodeState::Installed { .. } | NodeState::Booted { .. }
                ) {
                    self.fail(now, id, FailureReason::UnexpectedVersion);
                }
            }
        }
    }

    fn check_window(&mut self, now: Instant, id: NodeId, booted: Instant, window_end: Instant) {
        let th = self.config.health;
        let grace = self.config.timeouts.health_reports;
        let Some(rec) = self.nodes.get(&id) else {
            return;
        };
        if !rec.online {
            if let Some(away) = rec.away_since {
                if away + th.max_rejoin <= now {
                    let away = now.saturating_since(away);
                    self.fail(
                        now,
                        id,
                        FailureReason::Health(HealthFailure::LostAfterUpdate { away }),
                    );
                }
            }
            return;
        }
        if window_end > now {
            return;
        }
        if rec.health.samples >= th.min_samples {
            let wave = rec.wave;
            self.set_state(id, NodeState::Healthy { booted, at: now });
            self.log(now, EventKind::Healthy { node: id, wave });
        } else if window_end + grace <= now {
            let received = rec.health.samples;
            self.fail(
                now,
                id,
                FailureReason::Health(HealthFailure::NoHealthReports {
                    received,
                    needed: th.min_samples,
                }),
            );
        }
    }

    fn rollback_timer(&mut self, now: Instant, id: NodeId) {
        let Some(rec) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(rb) = &mut rec.rollback else { return };
        if rb.restored_at.is_some() || rb.next_retry.map_or(true, |t| t > now) {
            return;
        }
        if rec.online {
            self.send_rollback(now, id);
        } else {
            // Repeated when it rejoins.
            rb.next_retry = None;
        }
    }

    fn attempt_failed(&mut self, now: Instant, id: NodeId, reason: FailureReason) {
        let max_retries = self.config.max_retries;
        let Some(rec) = self.nodes.get_mut(&id) else {
            return;
        };
        self.orders.push_back(Order::Cancel { node: id });
        if rec.offers > max_retries {
            self.fail(now, id, reason);
        } else {
            rec.state = NodeState::Pending;
            let retry = rec.offers;
            self.log(
                now,
                EventKind::Retry {
                    node: id,
                    reason,
                    retry,
                },
            );
        }
    }

    fn fail(&mut self, now: Instant, id: NodeId, reason: FailureReason) {
        let auto = self.config.rollback_failed_nodes;
        let Some(rec) = self.nodes.get_mut(&id) else {
            return;
        };
        rec.state = NodeState::Failed { at: now, reason };
        let wave = rec.wave;
        let roll = auto && rec.exposed && rec.rollback.is_none();
        self.log(
            now,
            EventKind::Failed {
                node: id,
                wave,
                reason,
            },
        );
        if roll {
            self.order_rollback(now, id);
        }
    }

    fn order_rollback(&mut self, now: Instant, id: NodeId) {
        let Some(rec) = self.nodes.get_mut(&id) else {
            return;
        };
        if rec.rollback.is_some() {
            return;
        }
        if rec.running == Some(Running::Previous) {
            // Its bootloader already fell back: nothing to order.
            rec.rollback = Some(RollbackTrack {
                ordered_at: now,
                orders: 0,
                next_retry: None,
                restored_at: Some(now),
                stuck: false,
                last_sent: None,
            });
            self.log(
                now,
                EventKind::Restored {
                    node: id,
                    after: Duration::ZERO,
                },
            );
            self.check_all_restored(now);
            return;
        }
        rec.rollback = Some(RollbackTrack {
            ordered_at: now,
            orders: 0,
            next_retry: None,
            restored_at: None,
            stuck: false,
            last_sent: None,
        });
        // The all-restored time is measured again from here.
        self.all_restored_at = None;
        if rec.online {
            self.send_rollback(now, id);
        }
    }

    fn send_rollback(&mut self, now: Instant, id: NodeId) {
        let retry = self.config.timeouts.rollback_retry;
        let max = self.config.max_rollback_orders;
        let previous = self.config.previous.clone();
        let Some(rec) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(rb) = &mut rec.rollback else { return };
        rb.orders = rb.orders.saturating_add(1);
        rb.last_sent = Some(now);
        let order = rb.orders;
        let became_stuck = order >= max && !rb.stuck;
        if became_stuck {
            rb.stuck = true;
        }
        rb.next_retry = if rb.stuck { None } else { Some(now + retry) };
        let via = match rec.kind {
            NodeKind::Meshfleet => RollbackVia::PreviousSlot,
            NodeKind::Stock => RollbackVia::Reoffer { version: previous },
        };
        self.orders.push_back(Order::Rollback {
            node: id,
            via: via.clone(),
        });
        self.log(
            now,
            EventKind::RollbackOrdered {
                node: id,
                via,
                order,
            },
        );
        if became_stuck {
            self.log(now, EventKind::RollbackStuck { node: id });
        }
    }

    fn check_all_restored(&mut self, now: Instant) {
        let Some(aborted_at) = self.aborted_at else {
            return;
        };
        if self.all_restored_at.is_some() {
            return;
        }
        let pending = self
            .nodes
            .values()
            .any(|r| r.rollback.is_some_and(|rb| rb.restored_at.is_none()));
        if !pending {
            self.all_restored_at = Some(now);
            self.log(
                now,
                EventKind::AllRestored {
                    after: now.saturating_since(aborted_at),
                },
            );
        }
    }

    fn start_wave(&mut self, now: Instant, w: WaveNo) {
        self.current = w;
        self.phase = Phase::Running;
        let planned = match self.waves.get_mut(usize::from(w)) {
            Some(rec) => {
                rec.state = WaveState::Running;
                rec.started = Some(now);
                rec.planned
            }
            None => 0,
        };
        self.log(now, EventKind::WaveStarted { wave: w, planned });
    }

    fn skip_to(&mut self, now: Instant, to: WaveNo) {
        let from = match self.phase {
            Phase::AwaitingApproval { next } => next,
            _ => self.current,
        };
        for w in from..to {
            if let Some(rec) = self.waves.get_mut(usize::from(w)) {
                if matches!(rec.state, WaveState::Waiting | WaveState::Running) {
                    rec.state = WaveState::Skipped;
                    rec.started.get_or_insert(now);
                    self.log(now, EventKind::WaveSkipped { wave: w });
                }
            }
        }
        // Undecided members of the skipped waves are judged with the wave they skip to.
        for rec in self.nodes.values_mut() {
            let undecided = matches!(
                rec.state,
                NodeState::Offered { .. }
                    | NodeState::Downloading { .. }
                    | NodeState::Installed { .. }
                    | NodeState::Booted { .. }
            );
            if rec.wave >= from && rec.wave < to && undecided {
                rec.wave = to;
            }
        }
        self.start_wave(now, to);
    }

    fn pause(&mut self, now: Instant, reason: PauseReason) {
        self.phase = Phase::Paused { reason };
        self.log(now, EventKind::Paused { reason });
    }

    fn pass(&mut self, now: Instant, overridden: bool) {
        let w = self.current;
        if let Some(rec) = self.waves.get_mut(usize::from(w)) {
            rec.state = WaveState::Passed;
        }
        let counts = self.counts(w);
        self.log(
            now,
            EventKind::WavePassed {
                wave: w,
                counts,
                overridden,
            },
        );
        let next = w + 1;
        if usize::from(next) >= self.waves.len() {
            self.phase = Phase::Completed;
            self.log(now, EventKind::Completed);
            return;
        }
        match self.spec(w).then {
            AfterWave::Continue => self.start_wave(now, next),
            AfterWave::PauseForApproval => {
                self.phase = Phase::AwaitingApproval { next };
                self.log(now, EventKind::AwaitingApproval { wave: next });
            }
        }
    }

    fn abort(&mut self, now: Instant, reason: AbortReason) {
        let emergency = matches!(reason, AbortReason::Emergency);
        if let Some(rec) = self.waves.get_mut(usize::from(self.current)) {
            if rec.state == WaveState::Running {
                rec.state = WaveState::Aborted;
            }
        }
        self.phase = Phase::Aborted { reason };
        self.aborted_at.get_or_insert(now);
        self.log(now, EventKind::Aborted { reason });
        let current = self.current;
        // A wave that already passed keeps its nodes on an operator's abort (the operator
        // stops the rollout; an emergency rollback is the way to undo passed waves).
        let current_passed = self
            .waves
            .get(usize::from(current))
            .is_some_and(|w| w.state == WaveState::Passed);
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let Some(rec) = self.nodes.get_mut(&id) else {
                continue;
            };
            let undecided = matches!(
                rec.state,
                NodeState::Offered { .. }
                    | NodeState::Downloading { .. }
                    | NodeState::Installed { .. }
                    | NodeState::Booted { .. }
            );
            if undecided {
                if matches!(
                    rec.state,
                    NodeState::Offered { .. } | NodeState::Downloading { .. }
                ) {
                    self.orders.push_back(Order::Cancel { node: id });
                }
                rec.state = NodeState::Cancelled { at: now };
                self.log(now, EventKind::Cancelled { node: id });
            }
            let Some(rec) = self.nodes.get(&id) else {
                continue;
            };
            if rec.exposed && (emergency || undecided || (rec.wave == current && !current_passed)) {
                self.order_rollback(now, id);
            }
        }
        self.check_all_restored(now);
    }

    /// Applies the gates and fills free slots. Called after every input; bounded by the
    /// number of waves (each pass either stops or moves to a later wave).
    fn evaluate(&mut self, now: Instant) {
        self.apply_gates(now);
        self.next_wake = self.compute_wake();
    }

    fn apply_gates(&mut self, now: Instant) {
        for _ in 0..=self.waves.len() {
            match self.phase {
                Phase::Running | Phase::Paused { .. } => {
                    let w = self.current;
                    let spec = self.spec(w);
                    let c = self.counts(w);
                    let limit = spec.failure.of(c.members).max(1);
                    if c.failed >= limit {
                        self.abort(
                            now,
                            AbortReason::FailureThreshold {
                                wave: w,
                                failed: c.failed,
                                limit,
                            },
                        );
                        return;
                    }
                    if self.phase != Phase::Running {
                        return;
                    }
                    self.dispatch(now);
                    if !self.wave_settled(now) {
                        return;
                    }
                    let c = self.counts(w);
                    let reached = c.healthy + c.failed;
                    if c.members == 0 {
                        // An empty wave (a small fleet) passes without a verdict.
                        self.pass(now, false);
                    } else if reached == 0 {
                        self.pause(now, PauseReason::NoNodesReached);
                        return;
                    } else {
                        let needed = spec.success.of(reached);
                        if c.healthy >= needed {
                            self.pass(now, false);
                        } else {
                            self.pause(
                                now,
                                PauseReason::InsufficientSuccess {
                                    healthy: c.healthy,
                                    needed,
                                },
                            );
                            return;
                        }
                    }
                }
                Phase::Completed => {
                    self.dispatch(now);
                    return;
                }
                Phase::Aborted { .. } => {
                    self.check_all_restored(now);
                    return;
                }
                Phase::AwaitingApproval { .. } => return,
            }
        }
    }

    /// Whether every member of the current wave is decided (healthy, failed, cancelled) or
    /// deferred (offline past the grace, marked here).
    fn wave_settled(&mut self, now: Instant) -> bool {
        let w = self.current;
        let grace_over = self.grace_end().is_some_and(|g| g <= now);
        let mut settled = true;
        let mut newly_deferred = Vec::new();
        for (&id, rec) in &mut self.nodes {
            if rec.wave != w {
                continue;
            }
            match rec.state {
                NodeState::Healthy { .. }
                | NodeState::Failed { .. }
                | NodeState::Cancelled { .. } => {}
                NodeState::Pending if !rec.online => {
                    if rec.deferred {
                        continue;
                    }
                    if grace_over {
                        rec.deferred = true;
                        newly_deferred.push(id);
                    } else {
                        settled = false;
                    }
                }
                _ => settled = false,
            }
        }
        for id in newly_deferred {
            self.log(now, EventKind::Deferred { node: id, wave: w });
        }
        settled
    }

    /// Offers the target to pending, online nodes of started waves, in plan order, up to
    /// the concurrency cap. A node from an earlier wave joins the current one.
    fn dispatch(&mut self, now: Instant) {
        let cap = self.config.max_in_flight;
        let mut in_flight = self.in_flight();
        if in_flight >= cap {
            return;
        }
        let current = self.current;
        let offer_timeout = self.config.timeouts.offer;
        let mut offered = Vec::new();
        for &id in &self.order {
            if in_flight >= cap {
                break;
            }
            let Some(rec) = self.nodes.get_mut(&id) else {
                continue;
            };
            let started = self
                .waves
                .get(usize::from(rec.planned_wave))
                .is_some_and(|w| w.started.is_some());
            if rec.state != NodeState::Pending
                || !rec.online
                || !started
                || rec.rollback.is_some()
                || rec.planned_wave > current
            {
                continue;
            }
            let from = rec.wave;
            rec.wave = current;
            rec.deferred = false;
            rec.state = NodeState::Offered {
                deadline: now + offer_timeout,
            };
            let retry = rec.offers;
            rec.offers = rec.offers.saturating_add(1);
            in_flight += 1;
            offered.push((id, from, retry));
        }
        for (id, from, retry) in offered {
            if from != current {
                self.log(
                    now,
                    EventKind::JoinedWave {
                        node: id,
                        from,
                        wave: current,
                    },
                );
            }
            self.orders.push_back(Order::Offer {
                node: id,
                version: self.config.target.clone(),
            });
            self.log(
                now,
                EventKind::Offered {
                    node: id,
                    wave: current,
                    retry,
                },
            );
        }
    }
}

impl NodeRecord {
    fn new(info: &NodeInfo, wave: WaveNo) -> Self {
        Self {
            kind: info.kind,
            branch: info.branch,
            subtree_size: info.subtree_size,
            planned_wave: wave,
            wave,
            online: info.online,
            away_since: None,
            state: NodeState::Pending,
            offers: 0,
            exposed: false,
            deferred: false,
            running: None,
            baseline: None,
            health: HealthTrack::default(),
            rollback: None,
        }
    }
}

fn last_wave(waves: &[WaveRecord]) -> WaveNo {
    waves.len().saturating_sub(1) as WaveNo
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{Target, Threshold, WaveSpec};
    use alloc::string::ToString;
    use alloc::vec;

    fn t(s: u64) -> Instant {
        Instant::from_secs(s)
    }

    fn ver(s: &str) -> ImageVersion {
        ImageVersion::new(s).unwrap()
    }

    /// Leaves 1..=n, each on its own branch.
    fn fleet(n: u32) -> Vec<NodeInfo> {
        (1..=n).map(|i| NodeInfo::leaf(NodeId(i))).collect()
    }

    /// One wave of everything unless told otherwise, cap 3, 1 report needed, 60 s window.
    fn cfg(waves: Vec<WaveSpec>) -> RolloutConfig {
        let mut c = RolloutConfig::new(ver("2"), ver("1"));
        c.waves = waves;
        c.max_in_flight = 3;
        c.health.min_samples = 1;
        c.health.window = Duration::from_secs(60);
        c
    }

    fn all() -> Vec<WaveSpec> {
        vec![WaveSpec::default()]
    }

    fn counts(n: u32) -> Vec<WaveSpec> {
        vec![
            WaveSpec {
                until: Target::Count(n),
                ..WaveSpec::default()
            },
            WaveSpec::default(),
        ]
    }

    fn orders(r: &mut Rollout) -> Vec<Order> {
        core::iter::from_fn(|| r.poll_order()).collect()
    }

    fn events(r: &mut Rollout) -> Vec<EventKind> {
        core::iter::from_fn(|| r.poll_event())
            .map(|e| e.kind)
            .collect()
    }

    fn offered(os: &[Order]) -> Vec<NodeId> {
        os.iter()
            .filter_map(|o| match o {
                Order::Offer { node, .. } => Some(*node),
                _ => None,
            })
            .collect()
    }

    fn booted(v: &str) -> NodeReport {
        NodeReport::Booted {
            version: ver(v),
            confirmed: true,
        }
    }

    fn sample() -> HealthSample {
        HealthSample {
            uptime: Duration::from_secs(30),
            reboots: 1,
            free_heap: 100_000,
            alerts: 0,
            app_ok: Some(true),
        }
    }

    /// Takes `id` from offered to healthy starting at `s` seconds; returns the end time.
    fn succeed(r: &mut Rollout, id: NodeId, s: u64) -> u64 {
        r.handle_report(t(s), id, NodeReport::OfferAccepted);
        r.handle_report(t(s + 10), id, NodeReport::Installed);
        r.handle_report(t(s + 20), id, booted("2"));
        r.handle_health(t(s + 50), id, sample());
        r.handle_timeout(t(s + 80));
        s + 80
    }

    #[test]
    fn installed_and_booted_are_not_success_only_the_window_is() {
        let mut r = Rollout::new(t(0), cfg(all()), fleet(1)).unwrap();
        let id = NodeId(1);
        assert_eq!(offered(&orders(&mut r)), [id]);
        r.handle_report(t(1), id, NodeReport::OfferAccepted);
        r.handle_report(t(60), id, NodeReport::Installed);
        assert!(matches!(
            r.node(id).unwrap().state(),
            NodeState::Installed { .. }
        ));
        assert_eq!(r.phase(), Phase::Running);
        assert_eq!(r.poll_timeout(), Some((t(60 + 600), Wake::BootTimeout(id))));
        r.handle_report(t(80), id, booted("2"));
        assert_eq!(
            r.node(id).unwrap().state(),
            NodeState::Booted {
                at: t(80),
                window_end: t(140)
            }
        );
        // The window ends without a health report: not healthy; the report grace starts.
        r.handle_timeout(t(140));
        assert!(matches!(
            r.node(id).unwrap().state(),
            NodeState::Booted { .. }
        ));
        assert_eq!(
            r.poll_timeout(),
            Some((t(140 + 300), Wake::HealthReportsDue(id)))
        );
        r.handle_health(t(150), id, sample());
        r.handle_timeout(t(150));
        assert_eq!(
            r.node(id).unwrap().state(),
            NodeState::Healthy {
                booted: t(80),
                at: t(150)
            }
        );
        assert_eq!(r.phase(), Phase::Completed);
        let ev = events(&mut r);
        assert!(ev.contains(&EventKind::BootConfirmed {
            node: id,
            rejoin: Duration::from_secs(20)
        }));
        assert!(ev.contains(&EventKind::Completed));
    }

    #[test]
    fn an_unconfirmed_boot_never_succeeds_and_the_boot_deadline_fails_it() {
        let mut c = cfg(all());
        c.rollback_failed_nodes = true;
        let mut r = Rollout::new(t(0), c, fleet(1)).unwrap();
        let id = NodeId(1);
        let _ = orders(&mut r);
        r.handle_report(t(1), id, NodeReport::OfferAccepted);
        r.handle_report(t(10), id, NodeReport::Installed);
        r.handle_report(
            t(30),
            id,
            NodeReport::Booted {
                version: ver("2"),
                confirmed: false,
            },
        );
        r.handle_health(t(40), id, sample());
        r.handle_timeout(t(609));
        assert!(matches!(
            r.node(id).unwrap().state(),
            NodeState::Installed { .. }
        ));
        r.handle_timeout(t(610));
        assert!(matches!(
            r.node(id).unwrap().state(),
            NodeState::Failed {
                reason: FailureReason::NoConfirmedBoot,
                ..
            }
        ));
        // One failure of one member aborts; the exposed node is ordered back.
        assert_eq!(r.phase().kind(), PhaseKind::Aborted);
        assert!(orders(&mut r).contains(&Order::Rollback {
            node: id,
            via: RollbackVia::PreviousSlot
        }));
    }

    #[test]
    fn the_concurrency_cap_holds_and_a_finished_node_frees_its_slot() {
        let mut r = Rollout::new(t(0), cfg(all()), fleet(10)).unwrap();
        let first = offered(&orders(&mut r));
        assert_eq!(first.len(), 3);
        assert_eq!(r.in_flight(), 3);
        // Booted (in its window) no longer uses airtime: the slot is free.
        r.handle_report(t(1), first[0], NodeReport::OfferAccepted);
        r.handle_report(t(5), first[0], NodeReport::Installed);
        assert!(orders(&mut r).is_empty());
        r.handle_report(t(9), first[0], booted("2"));
        let next = offered(&orders(&mut r));
        assert_eq!(next.len(), 1);
        assert!(!first.contains(&next[0]));
        assert_eq!(r.in_flight(), 3);
    }

    #[test]
    fn timeouts_retry_with_a_cancel_then_fail() {
        let mut c = cfg(counts(1));
        c.max_retries = 1;
        let mut r = Rollout::new(t(0), c, fleet(3)).unwrap();
        let id = offered(&orders(&mut r))[0];
        assert_eq!(r.poll_timeout(), Some((t(120), Wake::OfferTimeout(id))));
        r.handle_timeout(t(120));
        // Cancelled and offered again at once (a free slot, still online).
        assert_eq!(
            orders(&mut r),
            [
                Order::Cancel { node: id },
                Order::Offer {
                    node: id,
                    version: ver("2")
                }
            ]
        );
        r.handle_report(t(121), id, NodeReport::OfferAccepted);
        assert_eq!(
            r.poll_timeout(),
            Some((t(121 + 1800), Wake::DownloadTimeout(id)))
        );
        r.handle_timeout(t(121 + 1800));
        assert_eq!(
            r.node(id).unwrap().state(),
            NodeState::Failed {
                at: t(1921),
                reason: FailureReason::DownloadTimeout
            }
        );
        assert!(!r.node(id).unwrap().exposed());
        // One failure in a wave of one: the gate aborts; nothing was exposed.
        assert_eq!(r.phase().kind(), PhaseKind::Aborted);
        assert_eq!(r.summary().restored_s, Some(0.0));
    }

    #[test]
    fn pause_resume_and_refused_commands() {
        let mut r = Rollout::new(t(0), cfg(all()), fleet(6)).unwrap();
        let first = offered(&orders(&mut r));
        r.handle_command(t(1), Command::Pause).unwrap();
        assert_eq!(
            r.handle_command(t(1), Command::Pause),
            Err(CommandError::NotApplicable {
                command: Command::Pause,
                phase: PhaseKind::Paused
            })
        );
        assert_eq!(
            r.handle_command(t(1), Command::Approve),
            Err(CommandError::NotApplicable {
                command: Command::Approve,
                phase: PhaseKind::Paused
            })
        );
        // A node finishing while paused does not free a slot for a new offer...
        let end = succeed(&mut r, first[0], 2);
        assert!(matches!(
            r.node(first[0]).unwrap().state(),
            NodeState::Healthy { .. }
        ));
        assert!(offered(&orders(&mut r)).is_empty());
        // ...until resumed.
        r.handle_command(t(end), Command::Resume).unwrap();
        assert_eq!(offered(&orders(&mut r)).len(), 1);
    }

    #[test]
    fn the_failure_gate_aborts_even_while_paused() {
        let mut r = Rollout::new(t(0), cfg(counts(2)), fleet(6)).unwrap();
        let first = offered(&orders(&mut r));
        r.handle_command(t(1), Command::Pause).unwrap();
        r.handle_report(
            t(2),
            first[0],
            NodeReport::OfferRejected {
                reason: RejectReason::Incompatible,
            },
        );
        assert!(matches!(
            r.phase(),
            Phase::Aborted {
                reason: AbortReason::FailureThreshold {
                    wave: 0,
                    failed: 1,
                    limit: 1
                }
            }
        ));
        // The other canary node's transfer is cancelled.
        assert!(orders(&mut r).contains(&Order::Cancel { node: first[1] }));
    }

    #[test]
    fn await_approval_then_gate_pause_then_override() {
        let mut c = cfg(vec![
            WaveSpec {
                until: Target::Count(2),
                success: Threshold::Percent(100),
                failure: Threshold::Count(2),
                then: AfterWave::PauseForApproval,
                ..WaveSpec::default()
            },
            WaveSpec::default(),
        ]);
        c.start = StartMode::AwaitApproval;
        let mut r = Rollout::new(t(0), c, fleet(4)).unwrap();
        assert_eq!(r.phase(), Phase::AwaitingApproval { next: 0 });
        assert!(orders(&mut r).is_empty());
        r.handle_command(t(1), Command::Approve).unwrap();
        let first = offered(&orders(&mut r));
        assert_eq!(first.len(), 2);
        let end = succeed(&mut r, first[0], 2);
        r.handle_report(
            t(end),
            first[1],
            NodeReport::OfferRejected {
                reason: RejectReason::Incompatible,
            },
        );
        // 1 healthy of 2 reached is under 100 %, 1 failure under the limit of 2: pause.
        assert_eq!(
            r.phase(),
            Phase::Paused {
                reason: PauseReason::InsufficientSuccess {
                    healthy: 1,
                    needed: 2
                }
            }
        );
        assert_eq!(
            r.handle_command(t(end), Command::Resume),
            Err(CommandError::NotApplicable {
                command: Command::Resume,
                phase: PhaseKind::Paused
            })
        );
        r.handle_command(t(end + 1), Command::Approve).unwrap();
        assert_eq!(r.current_wave(), 1);
        assert_eq!(offered(&orders(&mut r)).len(), 2);
        assert!(events(&mut r).iter().any(|e| matches!(
            e,
            EventKind::WavePassed {
                wave: 0,
                overridden: true,
                ..
            }
        )));
    }

    #[test]
    fn skip_to_a_later_wave_moves_undecided_nodes_with_it() {
        let waves = vec![
            WaveSpec {
                until: Target::Count(1),
                ..WaveSpec::default()
            },
            WaveSpec {
                until: Target::Count(2),
                ..WaveSpec::default()
            },
            WaveSpec::default(),
        ];
        let mut r = Rollout::new(t(0), cfg(waves), fleet(5)).unwrap();
        let canary = offered(&orders(&mut r));
        assert_eq!(canary.len(), 1);
        assert_eq!(
            r.handle_command(t(1), Command::SkipTo { to: 0 }),
            Err(CommandError::BadWave {
                to: 0,
                current: 0,
                waves: 3
            })
        );
        assert!(r.handle_command(t(1), Command::SkipTo { to: 3 }).is_err());
        r.handle_command(t(1), Command::SkipTo { to: 2 }).unwrap();
        assert_eq!(r.current_wave(), 2);
        assert_eq!(r.node(canary[0]).unwrap().wave(), 2);
        // The wave-1 node joins wave 2; two more slots fill with wave-2 nodes.
        assert_eq!(offered(&orders(&mut r)).len(), 2);
        assert_eq!(r.wave(1).unwrap().0, WaveState::Skipped);
        assert_eq!(r.exposure_cap(), 5);
    }

    #[test]
    fn operator_abort_rolls_back_the_current_wave_stock_by_reoffer() {
        let mut nodes = fleet(4);
        for n in &mut nodes {
            n.kind = NodeKind::Stock;
        }
        let mut r = Rollout::new(t(0), cfg(counts(3)), nodes).unwrap();
        let first = offered(&orders(&mut r));
        r.handle_report(t(1), first[0], NodeReport::OfferAccepted);
        r.handle_report(t(5), first[0], NodeReport::Installed);
        r.handle_report(t(9), first[0], booted("2"));
        r.handle_report(t(9), first[1], NodeReport::OfferAccepted);
        r.handle_command(t(10), Command::Abort).unwrap();
        let os = orders(&mut r);
        assert!(os.contains(&Order::Rollback {
            node: first[0],
            via: RollbackVia::Reoffer { version: ver("1") }
        }));
        assert!(os.contains(&Order::Cancel { node: first[1] }));
        assert!(os.contains(&Order::Cancel { node: first[2] }));
        assert_eq!(r.summary().restored_s, None);
        // Not back yet: the order is repeated each minute.
        assert_eq!(
            r.poll_timeout(),
            Some((t(70), Wake::RollbackRetry(first[0])))
        );
        r.handle_timeout(t(70));
        assert_eq!(orders(&mut r).len(), 1);
        r.handle_report(t(100), first[0], booted("1"));
        assert_eq!(r.summary().restored_s, Some(90.0));
        assert_eq!(r.summary().rolled_back, 1);
        assert_eq!(r.poll_timeout(), None);
        // A late "installed" from a cancelled transfer is exposure too: ordered back.
        r.handle_report(t(120), first[1], NodeReport::Installed);
        assert!(matches!(
            orders(&mut r).as_slice(),
            [Order::Rollback { node, .. }] if *node == first[1]
        ));
        assert_eq!(r.summary().restored_s, None);
        assert_eq!(
            r.handle_command(t(130), Command::Resume),
            Err(CommandError::NotApplicable {
                command: Command::Resume,
                phase: PhaseKind::Aborted
            })
        );
    }

    #[test]
    fn a_new_node_joins_the_last_wave_and_strangers_are_ignored() {
        let mut c = cfg(counts(1));
        c.selector.hardware = vec!["ESP32".to_string()];
        let mut nodes = fleet(3);
        for n in &mut nodes {
            n.hardware = "ESP32".to_string();
        }
        nodes[2].hardware = "ESP8266".to_string();
        let mut r = Rollout::new(t(0), c, nodes).unwrap();
        assert!(matches!(
            events(&mut r)[0],
            EventKind::Planned {
                targeted: 2,
                excluded: 1,
                ..
            }
        ));
        assert!(r.node(NodeId(3)).is_none());
        r.handle_report(t(1), NodeId(3), NodeReport::Installed);
        r.handle_health(t(1), NodeId(99), sample());
        assert_eq!(r.ignored_reports(), 2);
        let mut newcomer = NodeInfo::leaf(NodeId(50));
        newcomer.hardware = "ESP32".to_string();
        r.handle_node_joined(t(2), newcomer);
        assert_eq!(r.node(NodeId(50)).unwrap().planned_wave(), 1);
        assert_eq!(r.wave(1).unwrap().1.planned, 2);
        let mut stranger = NodeInfo::leaf(NodeId(51));
        stranger.hardware = "ESP8266".to_string();
        r.handle_node_joined(t(2), stranger);
        assert!(r.node(NodeId(51)).is_none());
    }

    #[test]
    fn a_restart_moves_deadlines_by_the_downtime() {
        let mut r = Rollout::new(t(0), cfg(all()), fleet(1)).unwrap();
        let id = offered(&orders(&mut r))[0];
        let json = serde_json::to_string(&r).unwrap();
        let mut back: Rollout = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        back.handle_restarted(t(3600));
        assert_eq!(back.poll_timeout(), Some((t(3720), Wake::OfferTimeout(id))));
        back.handle_timeout(t(3700));
        assert!(matches!(
            back.node(id).unwrap().state(),
            NodeState::Offered { .. }
        ));
    }

    #[test]
    fn health_failure_in_the_window_fails_and_orders_the_node_back_at_once() {
        // A big wave: one failure is under its limit, but the failed node still goes back.
        let mut r = Rollout::new(t(0), cfg(all()), fleet(20)).unwrap();
        let id = offered(&orders(&mut r))[0];
        r.handle_health(t(0), id, sample());
        r.handle_report(t(1), id, NodeReport::OfferAccepted);
        r.handle_report(t(5), id, NodeReport::Installed);
        r.handle_report(t(9), id, booted("2"));
        let mut low = sample();
        low.free_heap = 50_000;
        r.handle_health(t(20), id, low);
        assert!(matches!(
            r.node(id).unwrap().state(),
            NodeState::Failed {
                reason: FailureReason::Health(HealthFailure::MemoryRegression {
                    baseline: 100_000,
                    free: 50_000
                }),
                ..
            }
        ));
        assert_eq!(r.phase(), Phase::Running);
        assert!(orders(&mut r).contains(&Order::Rollback {
            node: id,
            via: RollbackVia::PreviousSlot
        }));
    }

    #[test]
    fn leaving_in_the_window_for_too_long_is_a_failure() {
        let mut r = Rollout::new(t(0), cfg(all()), fleet(1)).unwrap();
        let id = offered(&orders(&mut r))[0];
        r.handle_report(t(1), id, NodeReport::OfferAccepted);
        r.handle_report(t(5), id, NodeReport::Installed);
        r.handle_report(t(9), id, booted("2"));
        r.handle_node_offline(t(10), id);
        assert_eq!(r.poll_timeout(), Some((t(190), Wake::AwayTooLong(id))));
        r.handle_timeout(t(190));
        assert!(matches!(
            r.node(id).unwrap().state(),
            NodeState::Failed {
                reason: FailureReason::Health(HealthFailure::LostAfterUpdate { .. }),
                ..
            }
        ));
    }

    #[test]
    fn a_flapping_node_gets_at_most_one_rollback_order_per_interval() {
        let mut r = Rollout::new(t(0), cfg(counts(1)), fleet(3)).unwrap();
        let id = offered(&orders(&mut r))[0];
        r.handle_report(t(1), id, NodeReport::OfferAccepted);
        r.handle_report(t(5), id, NodeReport::Installed);
        r.handle_report(t(9), id, booted("2"));
        r.handle_command(t(10), Command::Abort).unwrap();
        assert_eq!(orders(&mut r).len(), 1);
        for s in 11..50 {
            r.handle_node_offline(t(s), id);
            r.handle_node_online(t(s), id);
        }
        assert!(orders(&mut r).is_empty());
        r.handle_node_offline(t(69), id);
        r.handle_node_online(t(70), id);
        assert_eq!(orders(&mut r).len(), 1);
    }

    #[test]
    fn a_late_install_after_the_node_failed_is_ordered_back() {
        let mut c = cfg(all());
        c.max_retries = 0;
        let mut r = Rollout::new(t(0), c, fleet(20)).unwrap();
        let id = offered(&orders(&mut r))[0];
        r.handle_timeout(t(120));
        assert!(matches!(
            r.node(id).unwrap().state(),
            NodeState::Failed {
                reason: FailureReason::OfferTimeout,
                ..
            }
        ));
        let _ = orders(&mut r);
        r.handle_report(t(130), id, NodeReport::Installed);
        assert!(r.node(id).unwrap().exposed());
        assert!(orders(&mut r).contains(&Order::Rollback {
            node: id,
            via: RollbackVia::PreviousSlot
        }));
    }

    #[test]
    fn an_empty_fleet_completes_at_once_and_a_partial_plan_leaves_the_rest_alone() {
        let r = Rollout::new(t(0), cfg(all()), fleet(0)).unwrap();
        assert_eq!(r.phase(), Phase::Completed);
        assert_eq!(r.poll_timeout(), None);

        let half = vec![WaveSpec {
            until: Target::Percent(50),
            ..WaveSpec::default()
        }];
        let mut r = Rollout::new(t(0), cfg(half), fleet(10)).unwrap();
        assert_eq!(r.nodes().count(), 5);
        let left_out = (1..=10)
            .map(NodeId)
            .find(|id| r.node(*id).is_none())
            .unwrap();
        r.handle_node_joined(t(1), NodeInfo::leaf(left_out));
        r.handle_node_joined(t(1), NodeInfo::leaf(NodeId(77)));
        assert!(r.node(left_out).is_none());
        assert!(r.node(NodeId(77)).is_none());
        assert_eq!(r.exposure_cap(), 5);
    }

    #[test]
    fn repeated_boot_reports_are_not_reboots_but_an_uptime_reset_is() {
        let mut r = Rollout::new(t(0), cfg(all()), fleet(20)).unwrap();
        let id = offered(&orders(&mut r))[0];
        r.handle_report(t(1), id, NodeReport::OfferAccepted);
        r.handle_report(t(5), id, NodeReport::Installed);
        for s in [9, 20, 30, 40] {
            r.handle_report(t(s), id, booted("2"));
        }
        assert!(matches!(r.node(id).unwrap().state(), NodeState::Booted { at, .. } if at == t(9)));
        let mut s1 = sample();
        s1.uptime = Duration::from_secs(30);
        r.handle_health(t(39), id, s1);
        let mut s2 = sample();
        s2.uptime = Duration::from_secs(3);
        r.handle_health(t(45), id, s2);
        assert!(matches!(
            r.node(id).unwrap().state(),
            NodeState::Failed {
                reason: FailureReason::Health(HealthFailure::RebootLoop { reboots: 1 }),
                ..
            }
        ));
    }
}
