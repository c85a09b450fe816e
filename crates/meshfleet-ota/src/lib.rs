//! The meshfleet OTA engine, sans-IO.
//!
//! [`meshfleet_mesh::Plugin`]s that ride on a [`meshfleet_mesh::Node`]:
//!
//! * [`StockSender`]: offers a raw image to unmodified painlessMesh nodes exactly like the
//!   library's sender (package types 10, 11, 12; Alteriom 1024-byte parts or v1.4.1 style).
//! * [`StockReceiver`]: the library's receive flow (timers, broadcast mode and its gap
//!   fallback, give-up): the simulator's model of a stock node.
//! * [`MeshfleetOta`]: the meshfleet protocol (types 700-709, `docs/ota-protocol.md`): signed,
//!   compressed, hop-by-hop store-and-forward with NAK repair, pacing and resume. Source,
//!   relay and receiver in one type.
//!
//! Receiving ends in [`store`] (a [`SlotStore`]: [`MemStore`] for the simulator,
//! `meshfleet-store-fs`'s file store for Linux, at the edge) and [`boot`] (commit, trial boot, confirm, rollback:
//! [`BootManager`]).
//!
//! Like the node, the plugins never read a clock, open a socket or spawn a task: `now` comes
//! from the [`meshfleet_mesh::Ctx`], randomness from the node's seeded PRNG (NAK timers), and
//! timers are reported through `poll_timeout`. Drivers run them with the node's run loop.
//!
//! # A stock source
//!
//! ```
//! use meshfleet_mesh::{Config, Instant, Node, NodeId};
//! use meshfleet_ota::{StockOffer, StockSender, StockSenderConfig, StockStyle};
//!
//! let image = vec![0xe9; 2500];
//! let offer = StockOffer::new(image, "sensor", "ESP32", StockStyle::ALTERIOM)?;
//! let mut node = Node::new(Config::new(NodeId(1)));
//! // The handle reaches the plugin again; a second plugin for types 10-12 is refused.
//! let sender = node.add_plugin(Box::new(StockSender::new(offer, StockSenderConfig::default())))?;
//! node.with_plugin_at(sender, Instant::ZERO, |s, ctx| s.start(ctx));
//! # Ok::<(), meshfleet_ota::OfferError>(())
//! ```
//!
//! # A meshfleet receiver (simulator: in-memory store kept across reboots)
//!
//! ```
//! use meshfleet_mesh::{Config, Node, NodeId};
//! use meshfleet_ota::{BootManager, MemStore, MeshfleetConfig, MeshfleetOta};
//!
//! // The simulator keeps `flash` for the node's whole life; a reboot drops the Node and
//! // builds a new one from a clone of it.
//! let flash = MemStore::with_image(b"old firmware", "1.0.0");
//! let boot = BootManager::new(flash.clone(), 3).on_boot()?;
//! let mut config = MeshfleetConfig::new("sensor", "ESP32");
//! config.running = boot.image.clone();
//! config.on_trial = boot.trial;
//! let mut node = Node::new(Config::new(NodeId(2)));
//! node.add_plugin(Box::new(MeshfleetOta::new(config, Box::new(flash.clone()))?))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A meshfleet source is `MeshfleetOta::source(config, store, artefact, intent)`; it offers
//! to every meshfleet neighbour after the CAPS exchange. Put a [`StockSender`] for the same
//! image on the same node to serve stock nodes.
//!
//! # `no_std`
//!
//! The crate is `#![no_std]` with `alloc` (`cargo build -p meshfleet-ota
//! --no-default-features --target thumbv7em-none-eabihf`, run by
//! `scripts/check-core-deps.sh`). Its `std` feature, on by default, adds [`MemStore`] and
//! [`SharedPages`] (in-memory stores shared between threads, for the simulator and tests);
//! a device implements [`SlotStore`] on its flash.
#![no_std]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

/// What the std prelude would give every module.
mod prelude {
    pub(crate) use alloc::borrow::ToOwned;
    pub(crate) use alloc::boxed::Box;
    pub(crate) use alloc::format;
    pub(crate) use alloc::string::{String, ToString};
    pub(crate) use alloc::vec;
    pub(crate) use alloc::vec::Vec;
}

pub mod boot;
mod event;
pub mod meshfleet;
mod pacing;
pub mod proto;
pub mod stock;
pub mod store;

pub use boot::{BootDecision, BootManager, RevertError, Reverted, DEFAULT_MAX_BOOT_ATTEMPTS};
pub use event::{
    AbandonReason, AnnounceReason, DecodeGap, NodeOutcome, OtaEvent, Refusal, RollbackOutcome,
    RollbackRefusal, UpdateFailure, VerifyFailure,
};
pub use meshfleet::{MeshfleetConfig, MeshfleetOta, MeshfleetStats, OpenError, PeerProgress};
pub use stock::{
    md5_hex, NodeProgress, OfferError, StockOffer, StockReceiver, StockReceiverConfig, StockSender,
    StockSenderConfig, StockSenderStats, StockStyle,
};
pub use store::{BootRecord, Corruption, ImageInfo, IoFault, Slot, SlotStore, StoreError, StoreOp};
#[cfg(feature = "std")]
pub use store::{MemStore, SharedPages};
