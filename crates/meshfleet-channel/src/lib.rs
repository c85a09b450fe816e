//! The link and channel model of meshfleet's simulator: how long a frame takes over
//! painlessMesh's TCP-over-WiFi, and which transmissions share the air.
//!
//! painlessMesh runs TCP over WiFi, so the application never sees a lost frame: radio loss
//! becomes retransmissions (extra delay, less goodput) and, past the retransmission limit,
//! a reset connection. Each direction of a link is a send queue with one FIFO per
//! `meshfleet_mesh::Priority` (control frames before normal ones, bulk OTA chunks last,
//! never interrupting the one being sent) feeding a transmitter. The
//! channel model ([`ChannelModel`]) decides what a transmitter is:
//!
//! * [`ChannelModel::Independent`]: every link direction is its own transmitter.
//! * [`ChannelModel::Airtime`]: one transmitter per node; its links take turns (round robin),
//!   so a broadcast to k neighbours costs k transmissions of that node's airtime.
//! * [`ChannelModel::Geometric`]: as `Airtime`, and a transmission also keeps every node
//!   within the interference range of the sender from starting one (carrier sense, with
//!   FIFO arbitration among the waiting nodes); [`interferers`] computes who silences whom.
//!
//! The service time of one frame of `b` bytes is `frame_overhead + b / goodput` plus, for
//! each lost TCP segment, its retransmission and a retransmission timeout ([`tx_cost`]);
//! [`expected_frame_cost`] is its expectation in closed form, for lower bounds.
//!
//! # Sans-IO
//!
//! Like str0m's `netem`, this crate reads no clock, opens no socket and keeps no global
//! state: durations are [`meshfleet_mesh::Duration`]s the caller adds to its own (virtual)
//! time, and every random draw comes from a [`meshfleet_mesh::Rng`] the caller seeds and
//! owns (one per link in the simulator, so adding a link does not reshuffle the others).
//! The same inputs give the same outputs, bit for bit. The driver (the simulator's event
//! loop in `meshfleet-sim`) owns the queues and the event heap and asks this crate what a
//! frame costs and who may transmit.
//!
//! See `docs/simulator.md` for the calibration and what the model leaves out.

mod geometry;
mod link;
mod model;

pub use geometry::{dist, interferers, CellGrid};
pub use link::{expected_frame_cost, tx_cost, LinkChange, LinkParams, TxCost};
pub use model::ChannelModel;
