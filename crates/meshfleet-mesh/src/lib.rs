//! A painlessMesh node as a sans-IO state machine.
//!
//! [`Node`] speaks the painlessMesh protocol exactly as the C++ library does
//! (`../shared/painlessmesh/PROTOCOL.md`): node sync over every link with the receiving
//! link's branch excluded, SINGLE routed along the tree, BROADCAST flooded, time sync with
//! the library's offset formula and adoption rule, liveness through the node-sync timeout.
//! It never touches a socket, a thread or a clock: drivers (the tokio runtime, the
//! simulator) feed it bytes and `now`, and carry out what it asks. See [`Node`] for the
//! run loop.
//!
//! Plugins ([`Plugin`]) handle other package types (OTA, status) through the same loop.
#![no_std]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod config;
mod event;
mod frame;
mod node;
mod plugin;
mod rng;
mod rope;
mod stats;
pub mod time;
pub mod timesync;

pub use config::{Config, NodeSyncPolicy};
pub use event::{
    AnyEvent, CloseReason, Delivery, DropReason, Event, LinkRole, Malformed, PluginEvent,
    TimeRefusal, TreeRefusal,
};
pub use frame::{SharedFrame, SharedTransmit};
pub use meshfleet_wire as wire;
pub use meshfleet_wire::{FlatTree, NodeId, NodeTree};
pub use node::{binary_tag, Node, NodeSyncTiming, Priority, Transmit, Wake};
pub use plugin::{
    AddPluginError, AnyPlugin, Claims, Ctx, MeshChange, PackageBody, Plugin, PluginHandle,
    SendError, TypedPackage,
};
pub use rng::Rng;
pub use stats::Stats;
pub use time::{Duration, Instant};

/// A driver-chosen handle for one TCP connection (never reused by a driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u64);
