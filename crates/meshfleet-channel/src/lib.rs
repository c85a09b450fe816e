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
//! # The state machine
//!
//! [`Channel`] owns the link directions' queues and the transmitters and runs the model:
//! it is fed [`Channel::enqueue`] (a node hands a frame to a link) and
//! [`Channel::handle_timer`] (a wakeup it asked for is due), each with the caller's `now`
//! and the caller's [`Scheduler`] (where the channel puts its wakeups), and answers
//! through [`Channel::poll_output`]: [`Output::Backlog`] (bytes waiting in a link
//! direction, for the sender's pacing), [`Output::Delivered`], [`Output::Dropped`],
//! [`Output::Reset`] and, for tracing, [`Output::Sent`] (a frame went on the air, with its
//! [`TxCost`]). It counts what goes on the air per link direction, per node and in total
//! ([`AirCounters`]). Refusals are typed ([`DropReason`]). It is generic over the frame
//! type ([`Payload`]: only the length matters), so a driver can share frame bodies between
//! links.
//!
//! ```
//! use meshfleet_channel::{Channel, ChannelModel, LinkParams, Output};
//! use meshfleet_mesh::{Duration, Instant, Priority, Rng};
//!
//! let mut ch: Channel<Vec<u8>> = Channel::new(ChannelModel::Independent, 2, None);
//! let link = ch.open_link(0, 1, LinkParams::default(), Rng::new(1));
//! // The simplest driver: a list of pending timers stands in for an event heap.
//! let mut timers = Vec::new();
//! let frame = b"hello\0".to_vec();
//! let queued = ch.enqueue(Instant::ZERO, 1, link, Priority::Normal, frame, &mut timers);
//! assert_eq!(queued, Ok(6)); // an open link with an empty queue takes any frame
//! let mut delivered = None;
//! loop {
//!     while let Some(out) = ch.poll_output() {
//!         if let Output::Delivered { to, frame, .. } = out {
//!             delivered = Some((to, frame));
//!         }
//!     }
//!     // The earliest timer next; among equal times the first scheduled.
//!     let Some(next) = (0..timers.len()).min_by_key(|&i| (timers[i].0, i)) else {
//!         break;
//!     };
//!     let (at, timer) = timers.remove(next);
//!     ch.handle_timer(at, timer, &mut timers);
//! }
//! assert_eq!(delivered, Some((0, b"hello\0".to_vec())));
//! // One frame: 1 665 µs of overhead plus 6 bytes at 131 kB/s (46 µs, rounded up).
//! assert_eq!(ch.air().frames, 1);
//! assert_eq!(ch.air().airtime, Duration::from_micros(1_711));
//! ```
//!
//! # Sans-IO
//!
//! Like str0m's `netem`, this crate reads no clock, opens no socket and keeps no global
//! state: durations are [`meshfleet_mesh::Duration`]s the caller adds to its own (virtual)
//! time, and every random draw comes from a [`meshfleet_mesh::Rng`] the caller seeds and
//! owns (one per link in the simulator, so adding a link does not reshuffle the others).
//! The same inputs give the same outputs, bit for bit. Unlike `netem`, whose single
//! `poll_timeout` suits one emulated path, every wakeup is scheduled on its own
//! ([`Scheduler`]): the simulator puts them into its one event heap beside its nodes'
//! timers, ordered by (time, insertion), which keeps a run's tie order, and so its
//! results, independent of how the channel is packaged.
//!
//! See `docs/simulator.md` for the calibration and what the model leaves out.

mod channel;
mod geometry;
mod link;
mod model;

pub use channel::{
    AirCounters, Channel, ClosedLink, Direction, DropReason, Link, NodeBacklog, Output, Payload,
    Scheduler, Sent, Timer, TimerReason,
};

pub use geometry::{dist, interferers, CellGrid};
pub use link::{expected_frame_cost, tx_cost, LinkChange, LinkParams, TxCost};
pub use model::ChannelModel;
