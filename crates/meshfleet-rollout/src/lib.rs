//! A progressive rollout controller (issue 14, the seeds' option 1B), sans-IO.
//!
//! [`Rollout`] decides who gets a firmware image when: waves by percentage or count (5 %
//! canary, 20 %, 75 %, 100 % by default), a seeded, filterable, topology-aware canary
//! (leaves before relays, spread over the mesh tree's branches), a concurrency cap, and per
//! node a state machine that counts a success only after a confirmed boot *and* a health
//! window judged against the node's own pre-update baseline. Per-wave success and failure
//! thresholds advance, pause or abort; an abort orders every node of the failing wave that
//! took the update back to the previous image and tracks each until it is back.
//!
//! It never touches a socket, a file, a thread or a clock: the driver (the gateway, the
//! simulator) passes `now` and typed inputs to `handle_*`, drains typed [`Order`]s and
//! [`RolloutEvent`]s with `poll_*`, and sleeps until [`Rollout::poll_timeout`], which says
//! why it wants to wake. The whole state is serde, so a restarted gateway resumes the
//! rollout where it was. See [`Rollout`] for the run loop and its guarantees, and
//! `docs/rollouts.md` for the decision rules and defaults.
#![no_std]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

extern crate alloc;

mod config;
mod event;
mod fleet;
mod health;
mod plan;
mod rng;
mod rollout;
mod summary;
pub mod time;

pub use config::{
    AfterWave, ConfigError, HealthThresholds, RolloutConfig, StartMode, Target, Threshold,
    Timeouts, WaveSpec, MAX_WAVES,
};
pub use event::{
    AbortReason, Command, CommandError, EventKind, FailureReason, NodeReport, NodeState, Order,
    PauseReason, PhaseKind, RejectReason, RollbackVia, RolloutEvent, Wake, WaveCounts, WaveNo,
};
pub use fleet::{
    ImageVersion, NodeId, NodeInfo, NodeKind, Selector, VersionError, MAX_VERSION_LEN,
};
pub use health::{HealthFailure, HealthSample};
pub use rollout::{
    NodeRecord, Phase, PlanError, RollbackTrack, Rollout, Running, WaveState, MAX_NODES,
};
pub use summary::{RolloutSummary, WaveSummary};
pub use time::{Duration, Instant};
