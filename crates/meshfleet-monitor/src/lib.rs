//! Fleet monitoring for painlessMesh meshes, sans-IO.
//!
//! Everything here is protocol logic: no sockets, files, threads or clock. The caller (a
//! gateway process, the simulator, a test) supplies `now` with every input and drains typed
//! outputs. `no_std + alloc`, so a Rust ESP32 firmware can use the producer side unchanged.
//!
//! * [`status`]: the Alteriom EnhancedStatusPackage (type 604) exactly as the C++ library's
//!   code sends it: decoder (tolerant of unknown keys; wrong types and absurd values dropped
//!   and reported) and encoder for Rust nodes.
//! * [`telemetry`]: the meshfleet telemetry stream (types 710/711): keyframes and thresholded
//!   deltas, urgent threshold crossings, bounded buffering, back-off. [`telemetry::Producer`]
//!   runs on the node; [`telemetry::decode`] and [`telemetry::StreamState`] on the gateway.
//! * [`Monitor`]: the gateway side: the fleet registry (every node ever seen, bounded),
//!   health classification, anomaly detectors and the alert lifecycle, on-demand queries and
//!   delay probes for nodes that send nothing. Inputs carry `now`; outputs are typed
//!   ([`MonitorEvent`], [`Transmit`]); [`Monitor::poll_timeout`] says when to call again.
//! * [`MonitorConfig`]: every threshold, `serde`-deserialisable with defaults.
//!
//! `docs/monitoring.md` documents the health and alert rules, their defaults and the telemetry
//! package format for firmware authors.
#![no_std]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod alert;
pub mod config;
mod json;
mod monitor;
pub mod query;
pub mod registry;
pub mod status;
pub mod telemetry;
mod trend;

pub use alert::{Alert, AlertEvent, AlertKey, AlertKind, ClearReason, Severity, Subject};
pub use config::MonitorConfig;
pub use monitor::{DropReason, Ingest, Monitor, MonitorEvent, MonitorStats, Transmit};
pub use query::{QueryError, QueryId, QueryResult, QueryTarget};
pub use registry::{Health, HealthSummary, Metrics, NodeQuery, NodeRecord, Page, SortKey, Sources};

pub use json::FieldFault;
pub use meshfleet_mesh::{Duration, Instant};
pub use meshfleet_wire::NodeId;
