//! The outcome as a scenario's `summary.json` carries it under `rollout`.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::event::{PhaseKind, WaveCounts, WaveNo};
use crate::rollout::WaveState;

/// The rollout's outcome: `state`, `exposed`, `rolled_back`, `restored_s` and per-wave
/// counts (issue 14's `summary.json` fields).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutSummary {
    /// `completed`, `aborted`, or the phase it is still in.
    pub state: PhaseKind,
    /// Nodes that took (installed, and so ran) the new build.
    pub exposed: u32,
    /// Nodes ordered back to the previous image.
    pub rollback_ordered: u32,
    /// Nodes seen back on the previous image.
    pub rolled_back: u32,
    /// Seconds from the abort until every node ordered back ran the previous image again;
    /// `None` if the rollout was not aborted or some node is not back yet.
    pub restored_s: Option<f64>,
    /// Per-wave state and counts.
    pub waves: Vec<WaveSummary>,
}

/// One wave in the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveSummary {
    /// Wave index (0 = canary).
    pub wave: WaveNo,
    /// Where it ended.
    pub state: WaveState,
    /// Its counts.
    #[serde(flatten)]
    pub counts: WaveCounts,
}
