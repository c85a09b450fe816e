//! Fleet monitoring for painlessMesh meshes, sans-IO.
//!
//! Everything here is protocol logic: no sockets, files, threads or clock. The caller (a
//! gateway process, the simulator, a test) supplies `now` with every input and drains typed
//! outputs. `no_std + alloc`, so a Rust ESP32 firmware can use the producer side unchanged.
//!
//! * [`status`]: the Alteriom EnhancedStatusPackage (type 604) exactly as the C++ library's
//!   code sends it: decoder (tolerant of unknown keys; wrong types and absurd values dropped
//!   and reported) and encoder for Rust nodes.
#![no_std]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

extern crate alloc;

mod json;
pub mod status;
pub mod telemetry;

pub use json::FieldFault;
pub use meshfleet_mesh::{Duration, Instant};
pub use meshfleet_wire::NodeId;
