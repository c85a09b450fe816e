//! OTA storage at the edge, for Linux nodes.
//!
//! `meshfleet-ota` is sans-IO: its engines talk to a [`meshfleet_ota::SlotStore`] and never
//! see a file, a path or an `io::Error`. This crate holds what does:
//!
//! * [`FileStore`]: the store in a directory (image slots, staging, transfer state and boot
//!   record; records replaced atomically with write-temp + fsync + rename + fsync of the
//!   directory). OS errors are mapped to the core's typed [`meshfleet_ota::StoreError::Io`]
//!   (which operation, which kind of fault); opening reports the path and the OS error
//!   ([`OpenError`]), because that is when a user can act on them.
//! * [`WorkerStore`]: runs any store on its own thread behind a bounded FIFO queue, so the
//!   fsync a chunk write costs does not stall the runtime's owner task (every link and
//!   timer of the node). See its docs for the ordering and error guarantees.
//!
//! The simulator keeps using the core's in-memory [`meshfleet_ota::MemStore`].

mod file;
mod worker;

pub use file::{FileStore, OpenError};
pub use worker::{WorkerConfig, WorkerStore};
