//! The meshfleet gateway's MQTT bridge (`[mqtt]` in the gateway's config, or
//! `meshfleet gateway --mqtt mqtt://[user:pass@]host:port`).
//!
//! ```text
//!  gateway Shared (registry, stores, event bus, mesh)
//!     │                                 ▲ commands → the gateway's CampaignService
//!     ▼                                 │
//!  bridge task ── state topics (retained, QoS 0, bounded queue) ──▶ broker
//!     │        ── HA discovery (retained, QoS 1)                  ──▶
//!     │        ── outbox (SQLite, QoS 1, deleted on PUBACK)       ──▶ alerts, replies
//!     └──────────◀── <prefix>/ota/request/<op>, homeassistant/status
//! ```
//!
//! Topics, payloads, Home Assistant, security and a broker ACL: `docs/mqtt.md`.

pub mod bridge;
pub mod commands;
pub mod config;
pub mod fetch;
pub mod ha;
pub mod outbox;
pub mod rollout_commands;
pub mod testbroker;
pub mod testclient;
pub mod upload;

pub use bridge::{run, BridgeError, BridgeMetrics, Prepared};
pub use commands::{sign_command, Commands};
pub use config::MqttConfig;
