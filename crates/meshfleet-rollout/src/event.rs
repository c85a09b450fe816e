//! The controller's typed inputs and outputs: node reports, operator commands, orders for
//! the OTA layer, the decision log, and why the controller wants to be woken.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::fleet::{ImageVersion, NodeId};
use crate::health::HealthFailure;
use crate::time::{Duration, Instant};

/// A wave index (0 = the canary).
pub type WaveNo = u16;

/// What a node's OTA layer reported (the driver maps OTA engine events onto these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeReport {
    /// The node accepted the offer and starts fetching.
    OfferAccepted,
    /// The node refused the offer.
    OfferRejected {
        /// Why.
        reason: RejectReason,
    },
    /// The transfer failed (verification, storage, the node gave up).
    TransferFailed,
    /// The image is written and verified; the node reboots into it. This is *not* a
    /// success: the node has yet to boot it and survive the health window.
    Installed,
    /// The node booted and runs `version`. `confirmed` is the meshfleet boot confirmation
    /// (the image passed its self-test); a stock node rejoining with the new version is its
    /// own confirmation, so drivers report `true` for it.
    Booted {
        /// The running version.
        version: ImageVersion,
        /// Whether the boot is confirmed.
        confirmed: bool,
    },
}

/// Why a node refused an offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Busy (another transfer, low battery): worth a retry.
    Busy,
    /// The image does not fit the node (hardware, role, signature): retrying is useless.
    Incompatible,
}

/// An operator command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Start the next wave (or the first, or override a gate's pause).
    Approve,
    /// Stop offering; nodes in flight finish and are still judged (an abort still fires).
    Pause,
    /// Undo an operator's pause.
    Resume,
    /// Close the current wave and start wave `to` now; nodes of skipped waves join it.
    SkipTo {
        /// The wave to start.
        to: WaveNo,
    },
    /// Abort: cancel transfers and undecided updates, roll back the current wave's updated
    /// nodes (unless that wave already passed: use `EmergencyRollback` to undo it).
    Abort,
    /// Roll back every node that took the update, in every wave, from any state.
    EmergencyRollback,
}

/// Why a command was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CommandError {
    /// The command does not apply in the rollout's current phase.
    NotApplicable {
        /// The command.
        command: Command,
        /// The phase it was sent in.
        phase: PhaseKind,
    },
    /// `SkipTo` names the current or an earlier wave, or no wave at all.
    BadWave {
        /// The wave asked for.
        to: WaveNo,
        /// The current wave.
        current: WaveNo,
        /// Waves in the plan.
        waves: WaveNo,
    },
}

impl core::fmt::Display for CommandError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotApplicable { command, phase } => {
                write!(
                    f,
                    "{command:?} does not apply while the rollout is {phase:?}"
                )
            }
            Self::BadWave { to, current, waves } => write!(
                f,
                "cannot skip to wave {to}: the current wave is {current}, the plan has {waves}"
            ),
        }
    }
}

/// The rollout's phase, without data (for errors and summaries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    /// Offering and judging the current wave.
    Running,
    /// Waiting for an operator's approval to start a wave.
    AwaitingApproval,
    /// Paused by the operator or by a gate.
    Paused,
    /// Every wave passed.
    Completed,
    /// Aborted; rollback orders are being tracked.
    Aborted,
}

/// Why a rollout paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// The operator paused it.
    Operator,
    /// The wave finished with too few healthy nodes (but under its failure threshold).
    InsufficientSuccess {
        /// Healthy nodes.
        healthy: u32,
        /// Healthy nodes needed.
        needed: u32,
    },
    /// No member of the wave could be reached (all offline past the grace).
    NoNodesReached,
}

/// Why a rollout was aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// The wave's failures reached its failure threshold.
    FailureThreshold {
        /// The failing wave.
        wave: WaveNo,
        /// Failed nodes.
        failed: u32,
        /// The threshold.
        limit: u32,
    },
    /// The operator aborted.
    Operator,
    /// The operator ordered an emergency rollback.
    Emergency,
}

/// Why a node failed its update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureReason {
    /// No answer to the offer in time, retries exhausted.
    OfferTimeout,
    /// The transfer did not finish in time, retries exhausted.
    DownloadTimeout,
    /// The transfer failed, retries exhausted.
    TransferFailed,
    /// The node refused the image as incompatible.
    Incompatible,
    /// The node was busy every time, retries exhausted.
    Busy,
    /// Installed but never came back with a confirmed boot of the new image.
    NoConfirmedBoot,
    /// Booted the previous image after installing: its bootloader fell back.
    FellBack,
    /// Booted a version that is neither the target nor the previous one.
    UnexpectedVersion,
    /// Failed its health gate.
    Health(HealthFailure),
}

/// Where a node is in its update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Not offered yet (waiting for its wave, a free slot, or to come online), or re-queued
    /// for a retry.
    Pending,
    /// Offered; waiting for acceptance until `deadline`.
    Offered {
        /// Offer deadline.
        deadline: Instant,
    },
    /// Fetching the image until `deadline`.
    Downloading {
        /// Transfer deadline.
        deadline: Instant,
    },
    /// Installed and rebooting; the confirmed boot must come by `deadline`.
    Installed {
        /// When it reported "installed".
        at: Instant,
        /// Boot deadline.
        deadline: Instant,
    },
    /// Confirmed boot of the new image; in its health window until `window_end`.
    Booted {
        /// When the boot was confirmed.
        at: Instant,
        /// End of the health window.
        window_end: Instant,
    },
    /// Success: confirmed boot and a passed health window.
    Healthy {
        /// Confirmed boot.
        booted: Instant,
        /// When the window passed.
        at: Instant,
    },
    /// Failure.
    Failed {
        /// When.
        at: Instant,
        /// Why.
        reason: FailureReason,
    },
    /// The rollout stopped before this node's outcome was decided.
    Cancelled {
        /// When.
        at: Instant,
    },
}

impl NodeState {
    /// Whether an update is in flight (counted against `max_in_flight`).
    pub fn in_flight(&self) -> bool {
        matches!(
            self,
            Self::Offered { .. } | Self::Downloading { .. } | Self::Installed { .. }
        )
    }
}

/// How a node goes back to the previous image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackVia {
    /// meshfleet node: the (signed) rollback command to its previous slot.
    PreviousSlot,
    /// Stock node: offer the previous image again.
    Reoffer {
        /// The previous image.
        version: ImageVersion,
    },
}

/// An order for the OTA layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Offer `version` to `node`.
    Offer {
        /// The node.
        node: NodeId,
        /// The image.
        version: ImageVersion,
    },
    /// Stop serving `node` its transfer (timed out, or the rollout stopped).
    Cancel {
        /// The node.
        node: NodeId,
    },
    /// Take `node` back to the previous image.
    Rollback {
        /// The node.
        node: NodeId,
        /// How.
        via: RollbackVia,
    },
}

/// Per-wave node counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveCounts {
    /// Nodes the plan put in this wave.
    pub planned: u32,
    /// Nodes that belong to it now (planned, minus those that moved on, plus late joiners).
    pub members: u32,
    /// Members that got at least one offer.
    pub offered: u32,
    /// Members that took the update (installed it).
    pub exposed: u32,
    /// Members healthy (confirmed boot + health window).
    pub healthy: u32,
    /// Members failed.
    pub failed: u32,
    /// Members cancelled by an abort.
    pub cancelled: u32,
    /// Members offline past the wave's grace, not offered yet.
    pub deferred: u32,
    /// Members ordered back to the previous image.
    pub rollback_ordered: u32,
    /// Members back on the previous image.
    pub rolled_back: u32,
}

/// Why the controller wants to be woken (see `Rollout::poll_timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wake {
    /// A node's offer deadline.
    OfferTimeout(NodeId),
    /// A node's transfer deadline.
    DownloadTimeout(NodeId),
    /// A node's confirmed-boot deadline.
    BootTimeout(NodeId),
    /// The end of a node's health window.
    HealthWindowEnd(NodeId),
    /// The grace for a node's missing health reports ran out.
    HealthReportsDue(NodeId),
    /// A node away in its health window for `max_rejoin`.
    AwayTooLong(NodeId),
    /// Time to repeat a rollback order.
    RollbackRetry(NodeId),
    /// The wave's grace for offline members ran out.
    OfflineGrace(WaveNo),
}

/// One entry of the decision log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// When it was decided.
    pub at: Instant,
    /// What, and why.
    pub kind: EventKind,
}

/// A decision and its reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The plan: wave sizes and how many nodes the selector left out.
    Planned {
        /// Nodes per wave.
        sizes: Vec<u32>,
        /// Nodes targeted.
        targeted: u32,
        /// Nodes the selector excluded.
        excluded: u32,
    },
    /// A wave started.
    WaveStarted {
        /// The wave.
        wave: WaveNo,
        /// Its planned size.
        planned: u32,
    },
    /// A wave was skipped by the operator.
    WaveSkipped {
        /// The wave.
        wave: WaveNo,
    },
    /// A wave passed its gate.
    WavePassed {
        /// The wave.
        wave: WaveNo,
        /// Its counts.
        counts: WaveCounts,
        /// Whether an operator's approval overrode a failed gate.
        overridden: bool,
    },
    /// Waiting for the operator before `wave`.
    AwaitingApproval {
        /// The next wave.
        wave: WaveNo,
    },
    /// Paused.
    Paused {
        /// Why.
        reason: PauseReason,
    },
    /// Resumed after an operator's pause.
    Resumed,
    /// Every wave passed.
    Completed,
    /// Aborted.
    Aborted {
        /// Why.
        reason: AbortReason,
    },
    /// A node that was not in the plan joined the fleet and was added to the last wave.
    NodeAdded {
        /// The node.
        node: NodeId,
        /// Its wave.
        wave: WaveNo,
    },
    /// An offer went out.
    Offered {
        /// The node.
        node: NodeId,
        /// Its wave.
        wave: WaveNo,
        /// 0 for the first offer.
        retry: u32,
    },
    /// A node from an earlier wave (offline then) joined the wave in progress.
    JoinedWave {
        /// The node.
        node: NodeId,
        /// Its planned wave.
        from: WaveNo,
        /// The wave it joined.
        wave: WaveNo,
    },
    /// A node's attempt failed and it will be offered again.
    Retry {
        /// The node.
        node: NodeId,
        /// Why the attempt failed.
        reason: FailureReason,
        /// Retries used so far, this one included.
        retry: u32,
    },
    /// A node installed the image (it is now exposed).
    Installed {
        /// The node.
        node: NodeId,
    },
    /// A node confirmed its boot of the new image; its health window starts.
    BootConfirmed {
        /// The node.
        node: NodeId,
        /// Time from "installed" to the confirmed boot.
        rejoin: Duration,
    },
    /// A node passed its health window: a success.
    Healthy {
        /// The node.
        node: NodeId,
        /// Its wave.
        wave: WaveNo,
    },
    /// A node failed.
    Failed {
        /// The node.
        node: NodeId,
        /// Its wave.
        wave: WaveNo,
        /// Why.
        reason: FailureReason,
    },
    /// A wave member stayed offline past the grace: decided without it, offered when back.
    Deferred {
        /// The node.
        node: NodeId,
        /// Its wave.
        wave: WaveNo,
    },
    /// An in-flight update was cancelled.
    Cancelled {
        /// The node.
        node: NodeId,
    },
    /// A rollback order went out.
    RollbackOrdered {
        /// The node.
        node: NodeId,
        /// How.
        via: RollbackVia,
        /// Orders sent to this node so far, this one included.
        order: u32,
    },
    /// A node is back on the previous image.
    Restored {
        /// The node.
        node: NodeId,
        /// Time since its first rollback order.
        after: Duration,
    },
    /// A node ignored `max_rollback_orders` orders; a new one goes out when it rejoins.
    RollbackStuck {
        /// The node.
        node: NodeId,
    },
    /// Every node ordered back is on the previous image.
    AllRestored {
        /// Time since the abort.
        after: Duration,
    },
    /// The driver resumed a persisted rollout; deadlines moved by the gateway's downtime.
    Restarted {
        /// The time the controller did not run.
        gap: Duration,
    },
    /// An operator command was applied.
    Command {
        /// The command.
        command: Command,
    },
}
